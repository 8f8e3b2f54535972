//! cuBLAS SGEMM (linear layer over many tokens) against an f64 product.

use crate::common::{Rng, check, gpu, par_map, poisoned};

#[test]
fn gemm_f32_matches_f64_reference() {
    let Some(k) = gpu("gemm_f32_matches_f64_reference") else {
        return;
    };
    let mut rng = Rng::new(0x5EED_0040);
    for &(n, m, kk) in &[
        (7usize, 1536usize, 576usize),
        (64, 4096, 4096),
        (33, 576, 1536),
    ] {
        let x = rng.vec(n * kk, 1.0);
        let w = rng.vec(m * kk, 1.0);
        let (xd, wd) = (k.upload(&x).unwrap(), k.upload(&w).unwrap());
        let mut y = poisoned(k, n * m);
        k.gemm_f32(&xd, &wd, &mut y, n, m, kk).unwrap();
        let got = k.download(&y).unwrap();
        let want: Vec<f64> = par_map(n, |i| {
            (0..m)
                .map(|j| {
                    x[i * kk..(i + 1) * kk]
                        .iter()
                        .zip(&w[j * kk..(j + 1) * kk])
                        .map(|(&a, &b)| a as f64 * b as f64)
                        .sum()
                })
                .collect::<Vec<f64>>()
        })
        .concat();
        check(
            "gemm_f32 (cuBLAS)",
            &format!("{n}x{m}x{kk}"),
            &got,
            &want,
            1e-5,
        );
    }
}

/// `x · wᵀ` in f64 for row-major `x` (n × k) and `w` (m × k).
fn product(x: &[f64], w: &[f64], n: usize, m: usize, k: usize) -> Vec<f64> {
    par_map(n, |i| (0..m).map(|j| (0..k).map(|t| x[i * k + t] * w[j * k + t]).sum()).collect::<Vec<f64>>()).concat()
}

#[test]
fn gemm_half_matches_f64_reference_for_bf16_and_f16_weights() {
    use half::{bf16, f16};
    use weft_kernels_cuda::WeightType;
    let Some(k) = gpu("gemm_half_matches_f64_reference_for_bf16_and_f16_weights") else {
        return;
    };
    let mut rng = Rng::new(0x5EED_0041);
    for ty in [WeightType::BF16, WeightType::F16] {
        for &(n, m, kk) in &[(33usize, 576usize, 1536usize), (64, 4096, 4096)] {
            let x = rng.vec(n * kk, 1.0);
            let w = rng.vec(m * kk, 1.0);
            // The 16-bit values, as stored and as the GEMM's x operand.
            let round = |v: f32| match ty {
                WeightType::BF16 => bf16::from_f32(v).to_f64(),
                _ => f16::from_f32(v).to_f64(),
            };
            let bytes: Vec<u8> = w
                .iter()
                .flat_map(|&v| match ty {
                    WeightType::BF16 => bf16::from_f32(v).to_le_bytes(),
                    _ => f16::from_f32(v).to_le_bytes(),
                })
                .collect();
            let wd = k.upload_matrix(ty, m, kk, &bytes).unwrap();
            let xd = k.upload(&x).unwrap();
            let mut scratch = k.zeros::<u16>(n * kk).unwrap();
            let mut y = poisoned(k, n * m);
            k.gemm_half(&xd, &wd, &mut y, n, &mut scratch).unwrap();
            let got = k.download(&y).unwrap();
            let w16: Vec<f64> = w.iter().map(|&v| round(v)).collect();
            // Against the product of the 16-bit operands: only the f32
            // accumulation differs.
            let exact = product(&x.iter().map(|&v| round(v)).collect::<Vec<_>>(), &w16, n, m, kk);
            check("gemm_half (cuBLAS GemmEx)", &format!("{ty:?} {n}x{m}x{kk} vs 16-bit operands"), &got, &exact, 1e-5);
            // Against the f32 product: the operands' rounding, within the
            // issue's bound for 16-bit operands.
            let full = product(&x.iter().map(|&v| v as f64).collect::<Vec<_>>(), &w16, n, m, kk);
            check("gemm_half (cuBLAS GemmEx)", &format!("{ty:?} {n}x{m}x{kk} vs f32 x"), &got, &full, 1e-2);
        }
    }
}

#[test]
fn gemm_dequantized_covers_every_column_in_panels() {
    use weft_kernels_cuda::WeightType;
    let Some(k) = gpu("gemm_dequantized_covers_every_column_in_panels") else {
        return;
    };
    let mut rng = Rng::new(0x5EED_0042);
    let (n, m, kk) = (40usize, 1000usize, 256usize);
    let x = rng.vec(n * kk, 1.0);
    let w = rng.vec(m * kk, 1.0);
    let bytes: Vec<u8> = w.iter().flat_map(|v| v.to_le_bytes()).collect();
    let wd = k.upload_matrix(WeightType::F32, m, kk, &bytes).unwrap();
    let xd = k.upload(&x).unwrap();
    let want = product(&x.iter().map(|&v| v as f64).collect::<Vec<_>>(), &w.iter().map(|&v| v as f64).collect::<Vec<_>>(), n, m, kk);
    // Panels of 300 rows (the last one 100), then the whole matrix at once.
    for panel_rows in [300usize, m] {
        let mut scratch = poisoned(k, panel_rows * kk);
        let mut y = poisoned(k, n * m);
        k.gemm_dequantized(&xd, &wd, &mut y, n, &mut scratch).unwrap();
        check("gemm_dequantized", &format!("{n}x{m}x{kk} in panels of {panel_rows}"), &k.download(&y).unwrap(), &want, 1e-5);
    }
    let mut too_small = poisoned(k, kk - 1);
    let mut y = poisoned(k, n * m);
    assert!(k.gemm_dequantized(&xd, &wd, &mut y, n, &mut too_small).is_err(), "a scratch must hold one row");
}
