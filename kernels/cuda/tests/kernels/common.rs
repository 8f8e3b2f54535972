//! Shared test helpers: the GPU handle (or a skip), a seeded RNG, poisoned
//! outputs, GGUF block generation and f64 dequantisation, and the error check.

use std::sync::OnceLock;

use half::{bf16, f16};
use weft_kernels_cuda::cudarc::driver::CudaSlice;
use weft_kernels_cuda::{CudaKernels, WeightType};

fn require_gpu() -> bool {
    std::env::var("WEFT_REQUIRE_GPU").is_ok_and(|v| v == "1")
}

/// The device-0 handle, or None (after printing why) when this machine has
/// no usable CUDA. A CUDA installation that is present but broken fails.
pub fn gpu(test: &str) -> Option<&'static CudaKernels> {
    static GPU: OnceLock<Result<CudaKernels, String>> = OnceLock::new();
    let res = GPU.get_or_init(|| match CudaKernels::new(0) {
        Ok(k) => {
            eprintln!(
                "using {} ({}, {} SMs)",
                k.device_name(),
                k.arch(),
                k.sm_count()
            );
            Ok(k)
        }
        Err(e) if e.is_unavailable() => Err(e.to_string()),
        Err(e) => panic!("CUDA is present but unusable: {e}"),
    });
    match res {
        Ok(k) => Some(k),
        Err(why) if require_gpu() => panic!("{test}: WEFT_REQUIRE_GPU=1 but {why}"),
        Err(why) => {
            eprintln!("skipping {test}: {why}");
            None
        }
    }
}

/// SplitMix64: small, seeded, good enough for test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform in [-a, a), never exactly zero.
    pub fn sym(&mut self, a: f64) -> f32 {
        loop {
            let v = ((self.unit() * 2.0 - 1.0) * a) as f32;
            if v != 0.0 {
                return v;
            }
        }
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.u64() % n as u64) as usize
    }
    pub fn vec(&mut self, n: usize, a: f64) -> Vec<f32> {
        (0..n).map(|_| self.sym(a)).collect()
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.u64().to_le_bytes());
        }
        v.truncate(n);
        v
    }
    /// A random f16 scale with magnitude in [lo, hi) and random sign.
    pub fn f16_scale(&mut self, lo: f64, hi: f64) -> [u8; 2] {
        let mag = lo + self.unit() * (hi - lo);
        let v = if self.u64() & 1 == 0 { mag } else { -mag };
        f16::from_f64(v).to_le_bytes()
    }
}

/// A device buffer of `n` NaNs, so that unwritten outputs cannot pass.
pub fn poisoned(k: &CudaKernels, n: usize) -> CudaSlice<f32> {
    k.upload(&vec![f32::NAN; n]).expect("upload poison")
}

/// ‖out − ref‖ / ‖ref‖, or infinity when any output is not finite.
pub fn rel_err(out: &[f32], reference: &[f64]) -> f64 {
    assert_eq!(
        out.len(),
        reference.len(),
        "output and reference lengths differ"
    );
    if out.iter().any(|v| !v.is_finite()) {
        return f64::INFINITY;
    }
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&o, &r) in out.iter().zip(reference) {
        num += (o as f64 - r) * (o as f64 - r);
        den += r * r;
    }
    assert!(
        den > 0.0,
        "reference is all zeros; the test data is degenerate"
    );
    (num / den).sqrt()
}

/// Assert the relative error is below `tol` and print a RESULT line.
pub fn check(kernel: &str, case: &str, out: &[f32], reference: &[f64], tol: f64) {
    let nan = out.iter().filter(|v| !v.is_finite()).count();
    let err = rel_err(out, reference);
    println!(
        "RESULT kernel={kernel} case={case} rel_err={err:.3e} tol={tol:.0e} unwritten_or_nonfinite={nan}"
    );
    assert!(
        err < tol,
        "{kernel} {case}: relative error {err:e} ≥ {tol:e} ({nan} non-finite outputs)"
    );
}

// ------------------------------------------------------------ GGUF blocks

/// Random bytes for a `rows × cols` matrix of `ty` with sane scales.
pub fn random_matrix(rng: &mut Rng, ty: WeightType, rows: usize, cols: usize) -> Vec<u8> {
    let blocks = rows * cols / ty.block_len();
    let mut out = Vec::with_capacity(blocks * ty.block_bytes());
    match ty {
        WeightType::F32 => {
            for _ in 0..rows * cols {
                out.extend_from_slice(&rng.sym(1.0).to_le_bytes());
            }
        }
        WeightType::F16 => {
            for _ in 0..rows * cols {
                out.extend_from_slice(&f16::from_f32(rng.sym(1.0)).to_le_bytes());
            }
        }
        WeightType::BF16 => {
            for _ in 0..rows * cols {
                out.extend_from_slice(&bf16::from_f32(rng.sym(1.0)).to_le_bytes());
            }
        }
        WeightType::Q8_0 => {
            for _ in 0..blocks {
                out.extend_from_slice(&rng.f16_scale(1e-3, 2e-2));
                out.extend(rng.bytes(32));
            }
        }
        WeightType::Q4_0 => {
            for _ in 0..blocks {
                out.extend_from_slice(&rng.f16_scale(1e-2, 1e-1));
                out.extend(rng.bytes(16));
            }
        }
        WeightType::Q4_1 => {
            for _ in 0..blocks {
                out.extend_from_slice(&rng.f16_scale(1e-2, 1e-1));
                out.extend_from_slice(&rng.f16_scale(1e-2, 5e-1));
                out.extend(rng.bytes(16));
            }
        }
        WeightType::Q4K => {
            for _ in 0..blocks {
                out.extend_from_slice(&rng.f16_scale(1e-3, 1e-2));
                out.extend_from_slice(&rng.f16_scale(1e-3, 1e-2));
                out.extend(rng.bytes(12 + 128));
            }
        }
        WeightType::Q6K => {
            for _ in 0..blocks {
                out.extend(rng.bytes(128 + 64 + 16));
                out.extend_from_slice(&rng.f16_scale(1e-4, 1e-3));
            }
        }
    }
    assert_eq!(out.len(), rows * ty.row_bytes(cols));
    out
}

fn f16_at(b: &[u8], i: usize) -> f64 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f64()
}

/// Dequantise one row (`cols` elements) in f64, written from the GGUF block
/// definitions independently of the kernels.
pub fn dequant_row(ty: WeightType, row: &[u8], cols: usize) -> Vec<f64> {
    let mut y = Vec::with_capacity(cols);
    match ty {
        WeightType::F32 => y.extend(
            row.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64),
        ),
        WeightType::F16 => y.extend(
            row.chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f64()),
        ),
        WeightType::BF16 => y.extend(
            row.chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f64()),
        ),
        WeightType::Q8_0 => {
            for b in row.chunks_exact(34) {
                let d = f16_at(b, 0);
                y.extend(b[2..34].iter().map(|&q| (q as i8) as f64 * d));
            }
        }
        WeightType::Q4_0 => {
            for b in row.chunks_exact(18) {
                let d = f16_at(b, 0);
                let qs = &b[2..18];
                y.extend(qs.iter().map(|&q| ((q & 15) as f64 - 8.0) * d));
                y.extend(qs.iter().map(|&q| ((q >> 4) as f64 - 8.0) * d));
            }
        }
        WeightType::Q4_1 => {
            for b in row.chunks_exact(20) {
                let (d, m) = (f16_at(b, 0), f16_at(b, 2));
                let qs = &b[4..20];
                y.extend(qs.iter().map(|&q| (q & 15) as f64 * d + m));
                y.extend(qs.iter().map(|&q| (q >> 4) as f64 * d + m));
            }
        }
        WeightType::Q4K => {
            for b in row.chunks_exact(144) {
                let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
                let sc = &b[4..16];
                let scale_min = |j: usize| -> (f64, f64) {
                    if j < 4 {
                        ((sc[j] & 63) as f64, (sc[j + 4] & 63) as f64)
                    } else {
                        (
                            ((sc[j + 4] & 15) | ((sc[j - 4] >> 6) << 4)) as f64,
                            ((sc[j + 4] >> 4) | ((sc[j] >> 6) << 4)) as f64,
                        )
                    }
                };
                for j in 0..4 {
                    let q = &b[16 + 32 * j..16 + 32 * j + 32];
                    let (s1, m1) = scale_min(2 * j);
                    let (s2, m2) = scale_min(2 * j + 1);
                    y.extend(q.iter().map(|&v| d * s1 * (v & 15) as f64 - dmin * m1));
                    y.extend(q.iter().map(|&v| d * s2 * (v >> 4) as f64 - dmin * m2));
                }
            }
        }
        WeightType::Q6K => {
            for b in row.chunks_exact(210) {
                let d = f16_at(b, 208);
                for half in 0..2 {
                    let ql = &b[64 * half..64 * half + 64];
                    let qh = &b[128 + 32 * half..128 + 32 * half + 32];
                    let sc = &b[192 + 8 * half..192 + 8 * half + 8];
                    let mut v = [0f64; 128];
                    for l in 0..32 {
                        let is = l / 16;
                        let q1 = ((ql[l] & 15) | ((qh[l] & 3) << 4)) as i32 - 32;
                        let q2 = ((ql[l + 32] & 15) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                        let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                        let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                        v[l] = d * (sc[is] as i8) as f64 * q1 as f64;
                        v[l + 32] = d * (sc[is + 2] as i8) as f64 * q2 as f64;
                        v[l + 64] = d * (sc[is + 4] as i8) as f64 * q3 as f64;
                        v[l + 96] = d * (sc[is + 6] as i8) as f64 * q4 as f64;
                    }
                    y.extend_from_slice(&v);
                }
            }
        }
    }
    assert_eq!(y.len(), cols);
    y
}

/// Run `f(i)` for i < n on all cores and collect the results in order.
pub fn par_map<T: Send>(n: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |p| p.get())
        .min(n.max(1));
    let per = n.div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let f = &f;
                s.spawn(move || (t * per..((t + 1) * per).min(n)).map(f).collect::<Vec<T>>())
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("reference thread panicked"))
            .collect()
    })
}
