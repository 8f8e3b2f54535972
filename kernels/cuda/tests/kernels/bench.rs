//! GEMV timing harness at the Llama-3-8B shapes (ignored by default; run
//! with `--ignored gemv_bandwidth` on a GPU). Both implementations are timed
//! for every format; `GemvPath::Auto` picks between them from these numbers.
//!
//! Reports achieved bandwidth (weight + activation bytes per call ÷ kernel
//! time) against the device-to-device copy bandwidth measured in the same
//! run (2 × bytes copied ÷ time). Each round first enqueues a 1 GiB copy
//! (~0.7 ms on an H100) and then, behind a start event, one launch per
//! weight copy: the host finishes enqueueing while the copy runs, so the
//! launches execute back to back and the event pair measures GPU time, not
//! host launch cost. Each shape rotates through enough distinct weight
//! copies (≥ 256 MiB, 5× a 50 MB L2) that weights come from DRAM, as in a
//! real decode step.

use weft_kernels_cuda::cudarc::driver::sys::CUevent_flags;
use weft_kernels_cuda::{GemvPath, WeightType};

use crate::common::{Rng, gpu, random_matrix};

const ROUNDS: usize = 20;

fn time_ms(k: &weft_kernels_cuda::CudaKernels, mut f: impl FnMut()) -> f64 {
    let s = k.stream();
    let a = s
        .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
        .unwrap();
    f();
    let b = s
        .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
        .unwrap();
    a.elapsed_ms(&b).unwrap() as f64
}

#[test]
#[ignore = "timing harness: run with --ignored on a GPU machine"]
fn gemv_bandwidth_at_8b_shapes() {
    let Some(k) = gpu("gemv_bandwidth_at_8b_shapes") else {
        return;
    };
    // Copy bandwidth: 1 GiB device-to-device, best of 5.
    let n = 256usize << 20;
    let src = k.zeros::<f32>(n).unwrap();
    let mut dst = k.zeros::<f32>(n).unwrap();
    k.stream().memcpy_dtod(&src, &mut dst).unwrap();
    let copy_ms = (0..5)
        .map(|_| time_ms(k, || k.stream().memcpy_dtod(&src, &mut dst).unwrap()))
        .fold(f64::INFINITY, f64::min);
    let copy_gbs = 2.0 * (n * 4) as f64 / (copy_ms * 1e-3) / 1e9;
    println!(
        "BENCH copy device={} bytes={} ms={copy_ms:.3} GB/s={copy_gbs:.1}",
        k.device_name(),
        2 * n * 4
    );

    let mut rng = Rng::new(0xBE7C);
    let shapes = [
        (4096usize, 4096usize, "q/o 4096x4096"),
        (14_336, 4096, "gate/up 14336x4096"),
        (4096, 14_336, "down 4096x14336"),
    ];
    let types = [
        WeightType::Q4_1,
        WeightType::Q8_0,
        WeightType::BF16,
        WeightType::Q4_0,
        WeightType::Q4K,
        WeightType::Q6K,
        WeightType::F16,
    ];
    println!("| type | shape | batch | path | µs/call | GB/s | % of copy BW |");
    println!("|---|---|---|---|---|---|---|");
    for ty in types {
        for &(rows, cols, label) in &shapes {
            let bytes = random_matrix(&mut rng, ty, rows, cols);
            let copies = (256usize << 20).div_ceil(bytes.len()).clamp(2, 32);
            let ws: Vec<_> = (0..copies)
                .map(|_| k.upload_matrix(ty, rows, cols, &bytes).unwrap())
                .collect();
            let paths: &[GemvPath] = if ty != WeightType::F32 {
                &[GemvPath::Staged, GemvPath::Direct]
            } else {
                &[GemvPath::Direct]
            };
            for batch in [1usize, 4, 8] {
                for &path in paths {
                    let x = k.upload(&rng.vec(batch * cols, 1.0)).unwrap();
                    let mut y = k.zeros::<f32>(batch * rows).unwrap();
                    for w in &ws {
                        k.gemv_with_path(w, &x, &mut y, batch, path).unwrap(); // warm-up (and module load)
                    }
                    k.synchronize().unwrap();
                    let mut total = 0.0;
                    for _ in 0..ROUNDS {
                        k.stream().memcpy_dtod(&src, &mut dst).unwrap(); // host runs ahead during this
                        total += time_ms(k, || {
                            for w in &ws {
                                k.gemv_with_path(w, &x, &mut y, batch, path).unwrap();
                            }
                        });
                    }
                    k.synchronize().unwrap();
                    let per_call_s = total * 1e-3 / (ROUNDS * copies) as f64;
                    let moved = bytes.len() + batch * (rows + cols) * 4;
                    let gbs = moved as f64 / per_call_s / 1e9;
                    let p = if path == GemvPath::Direct {
                        "direct"
                    } else {
                        "staged"
                    };
                    println!(
                        "| {ty:?} | {label} | {batch} | {p} | {:.2} | {gbs:.0} | {:.1}% |",
                        per_call_s * 1e6,
                        100.0 * gbs / copy_gbs
                    );
                    println!(
                        "BENCH gemv type={ty:?} rows={rows} cols={cols} batch={batch} path={p} bytes={moved} us={:.2} GB/s={gbs:.1} pct_copy={:.1}",
                        per_call_s * 1e6,
                        100.0 * gbs / copy_gbs
                    );
                }
            }
        }
    }

    // Decode-step sweep at batch 1: the seven projections (q, k, v, o, gate,
    // up, down) of 4 distinct Llama-3-8B layers, launched back to back; this
    // includes the gaps between launches that a real step pays (no graphs).
    let layer = [
        (4096usize, 4096usize),
        (1024, 4096),
        (1024, 4096),
        (4096, 4096),
        (14_336, 4096),
        (14_336, 4096),
        (4096, 14_336),
    ];
    for ty in [WeightType::BF16, WeightType::Q8_0, WeightType::Q4_1] {
        // Three distinct shapes, generated once and uploaded per layer.
        let host: Vec<Vec<u8>> = layer
            .iter()
            .map(|&(r, c)| random_matrix(&mut rng, ty, r, c))
            .collect();
        let mut mats = Vec::new();
        for _ in 0..4 {
            for (&(rows, cols), bytes) in layer.iter().zip(&host) {
                mats.push(k.upload_matrix(ty, rows, cols, bytes).unwrap());
            }
        }
        for path in [GemvPath::Staged, GemvPath::Direct] {
            let x = k.upload(&rng.vec(14_336, 1.0)).unwrap();
            let mut y = k.zeros::<f32>(14_336).unwrap();
            let moved: usize = mats
                .iter()
                .map(|m| m.bytes() + 4 * (m.rows() + m.cols()))
                .sum();
            for m in &mats {
                k.gemv_with_path(m, &x, &mut y, 1, path).unwrap();
            }
            k.synchronize().unwrap();
            let mut total = 0.0;
            for _ in 0..ROUNDS {
                k.stream().memcpy_dtod(&src, &mut dst).unwrap();
                total += time_ms(k, || {
                    for m in &mats {
                        k.gemv_with_path(m, &x, &mut y, 1, path).unwrap();
                    }
                });
            }
            let per_layer_s = total * 1e-3 / (ROUNDS * 4) as f64;
            let gbs = moved as f64 / 4.0 / per_layer_s / 1e9;
            let p = if path == GemvPath::Direct {
                "direct"
            } else {
                "staged"
            };
            println!(
                "| {ty:?} | layer sweep (7 GEMVs, per layer) | 1 | {p} | {:.2} | {gbs:.0} | {:.1}% |",
                per_layer_s * 1e6,
                100.0 * gbs / copy_gbs
            );
            println!(
                "BENCH sweep type={ty:?} path={p} bytes_per_layer={} us_per_layer={:.2} GB/s={gbs:.1} pct_copy={:.1}",
                moved / 4,
                per_layer_s * 1e6,
                100.0 * gbs / copy_gbs
            );
        }
    }
}
