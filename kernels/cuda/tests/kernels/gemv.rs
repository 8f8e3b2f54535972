//! GEMV (single and batched) for every weight format against an f64
//! product of the exactly dequantised weights.
//!
//! Both sides see the same quantised values, so the only error is f32
//! accumulation: the bound is 1e-5 for every format, the 16-bit ones
//! included (their values are converted exactly; no operand is rounded).

use weft_kernels_cuda::{GemvPath, WeightType};

use crate::common::{Rng, check, dequant_row, gpu, par_map, poisoned, random_matrix};

/// `batch × rows` products of the exactly dequantised weights, in f64.
pub fn reference(
    ty: WeightType,
    w: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    batch: usize,
) -> Vec<f64> {
    let rb = ty.row_bytes(cols);
    // rows × batch, computed per row in parallel, then transposed to batch × rows.
    let per_row: Vec<Vec<f64>> = par_map(rows, |r| {
        let wr = dequant_row(ty, &w[r * rb..(r + 1) * rb], cols);
        (0..batch)
            .map(|b| {
                wr.iter()
                    .zip(&x[b * cols..(b + 1) * cols])
                    .map(|(&a, &v)| a * v as f64)
                    .sum()
            })
            .collect()
    });
    let mut y = vec![0.0; batch * rows];
    for (r, vals) in per_row.iter().enumerate() {
        for (b, &v) in vals.iter().enumerate() {
            y[b * rows + r] = v;
        }
    }
    y
}

fn run_case(rng: &mut Rng, ty: WeightType, rows: usize, cols: usize, batch: usize) {
    run_case_path(rng, ty, rows, cols, batch, GemvPath::Auto);
}

fn run_case_path(
    rng: &mut Rng,
    ty: WeightType,
    rows: usize,
    cols: usize,
    batch: usize,
    path: GemvPath,
) {
    let k = crate::common::gpu("gemv").expect("checked by caller");
    let w = random_matrix(rng, ty, rows, cols);
    let x = rng.vec(batch * cols, 1.0);
    let wd = k.upload_matrix(ty, rows, cols, &w).unwrap();
    let xd = k.upload(&x).unwrap();
    let mut y = poisoned(k, batch * rows);
    k.gemv_with_path(&wd, &xd, &mut y, batch, path).unwrap();
    let got = k.download(&y).unwrap();
    let want = reference(ty, &w, rows, cols, &x, batch);
    let how = match path {
        GemvPath::Auto => "",
        GemvPath::Staged => " staged",
        GemvPath::Direct => " direct",
    };
    check(
        "gemv",
        &format!("{ty:?} {rows}x{cols} batch{batch}{how}"),
        &got,
        &want,
        1e-5,
    );
}

#[test]
fn gemv_matches_f64_reference_at_smollm_shapes() {
    if gpu("gemv_matches_f64_reference_at_smollm_shapes").is_none() {
        return;
    }
    let mut rng = Rng::new(0x5EED_0010);
    // SmolLM2-135M: hidden 576, ffn 1536, kv 3 × 64, vocab 49152. K-quants
    // need rows of 256 multiples and do not apply to 576 columns.
    let shapes = [
        (1536usize, 576usize, 1usize),
        (576, 1536, 3),
        (192, 576, 8),
        (576, 576, 5),
        (49_152, 576, 2),
    ];
    for ty in WeightType::ALL.into_iter().filter(|t| t.block_len() <= 32) {
        for &(rows, cols, batch) in &shapes {
            run_case(&mut rng, ty, rows, cols, batch);
        }
    }
}

#[test]
fn gemv_matches_f64_reference_at_8b_shapes() {
    if gpu("gemv_matches_f64_reference_at_8b_shapes").is_none() {
        return;
    }
    let mut rng = Rng::new(0x5EED_0011);
    // Llama-3-8B: hidden 4096, ffn 14336, 8 kv heads × 128. Batches 11 (= 8 +
    // 2 + 1) and 4 cover every batched kernel; the row counts cover 1, 2 and 4
    // rows per warp; 1280 columns end in a partial shared-memory step (and
    // are not 16-byte aligned rows for Q6_K, which then takes the direct path).
    let shapes = [
        (4096usize, 4096usize, 1usize),
        (14_336, 4096, 11),
        (4096, 14_336, 4),
        (1024, 4096, 1),
        (512, 1280, 2),
    ];
    for ty in WeightType::ALL {
        for &(rows, cols, batch) in &shapes {
            run_case(&mut rng, ty, rows, cols, batch);
        }
    }
    // Both implementations stay correct whichever one Auto prefers.
    for ty in WeightType::ALL
        .into_iter()
        .filter(|&t| t != WeightType::F32)
    {
        for path in [GemvPath::Direct, GemvPath::Staged] {
            run_case_path(&mut rng, ty, 4096, 4096, 1, path);
            run_case_path(&mut rng, ty, 14_336, 4096, 11, path);
        }
    }
}

#[test]
fn gemv_rejects_mismatched_buffers() {
    let Some(k) = gpu("gemv_rejects_mismatched_buffers") else {
        return;
    };
    let mut rng = Rng::new(0x5EED_0012);
    let w = random_matrix(&mut rng, WeightType::Q8_0, 64, 64);
    assert!(
        k.upload_matrix(WeightType::Q8_0, 64, 64, &w[1..]).is_err(),
        "short weight bytes must be rejected"
    );
    assert!(
        k.upload_matrix(WeightType::Q8_0, 64, 48, &w).is_err(),
        "48 columns is not whole Q8_0 blocks"
    );
    let wd = k.upload_matrix(WeightType::Q8_0, 64, 64, &w).unwrap();
    let x = k.upload(&rng.vec(64, 1.0)).unwrap();
    let mut y = poisoned(k, 64);
    assert!(
        k.gemv(&wd, &x, &mut y, 2).is_err(),
        "batch 2 needs 128 inputs"
    );
}
