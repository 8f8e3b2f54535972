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
