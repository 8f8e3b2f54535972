//! CPU kernels against independent references.
//!
//! Dequantisation is checked against the `gguf` Python package's own
//! dequantisers on random blocks (fixtures made by
//! `scripts/fixtures/make_dequant_fixtures.py`); dot products on every
//! instruction-set path against a float64 sum; matrix products for batch
//! invariance.

use std::path::Path;

use weft_kernels_cpu::dequant::dequantize;
use weft_kernels_cpu::dot::{Isa, dot_portable, dot_with};
use weft_kernels_cpu::{Matrix, WeightType, matmul};

fn fixture(name: &str, ext: &str) -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/dequant").join(format!("{name}.{ext}"));
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn every_block_type_dequantises_like_the_gguf_reference() {
    for ty in WeightType::ALL.into_iter().filter(|t| *t != WeightType::F32) {
        let blocks = fixture(ty.name(), "blocks");
        let expected: Vec<f32> = fixture(ty.name(), "f32").chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
        assert_eq!(blocks.len() / ty.block_bytes() * ty.block_len(), expected.len(), "{}: fixture sizes", ty.name());
        let mut got = vec![f32::NAN; expected.len()];
        dequantize(ty, &blocks, &mut got);
        for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
            let tol = 1e-6 * e.abs().max(1.0);
            assert!((g - e).abs() <= tol, "{} element {i}: got {g}, gguf says {e}", ty.name());
        }
        assert!(expected.iter().any(|v| *v != 0.0), "{}: fixture is not all zeros", ty.name());
    }
}

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

#[test]
fn dot_products_agree_with_a_float64_sum_on_every_path() {
    for n in [1, 7, 8, 31, 64, 576, 1536, 4099] {
        let (a, b) = (random(n, n as u64), random(n, 1000 + n as u64));
        let exact: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
        let scale: f64 = a.iter().zip(&b).map(|(x, y)| (*x as f64 * *y as f64).abs()).sum();
        for isa in [Isa::Portable, Isa::Avx2Fma] {
            let got = dot_with(isa, &a, &b) as f64;
            assert!((got - exact).abs() <= 1e-5 * scale.max(1.0), "{isa:?} n={n}: {got} vs {exact}");
        }
        assert_eq!(dot_with(Isa::Portable, &a, &b), dot_portable(&a, &b));
    }
}

#[test]
fn a_rows_result_does_not_depend_on_the_rest_of_the_batch() {
    let (rows, cols) = (48, 576);
    // Q8_0 blocks with varied scales and quants.
    let mut data = Vec::new();
    for (i, v) in random(rows * cols / 32 * 34, 9).iter().enumerate() {
        data.push((v * 127.0) as i8 as u8 ^ (i as u8));
    }
    for block in data.chunks_exact_mut(34) {
        block[..2].copy_from_slice(&half::f16::from_f32(0.01).to_le_bytes());
    }
    let w = Matrix { ty: WeightType::Q8_0, rows, cols, data: &data };
    let xs = random(9 * cols, 77);
    let mut batched = vec![0f32; 9 * rows];
    matmul(&w, &xs, 9, &mut batched);
    for t in 0..9 {
        let mut single = vec![0f32; rows];
        matmul(&w, &xs[t * cols..(t + 1) * cols], 1, &mut single);
        assert_eq!(&batched[t * rows..(t + 1) * rows], &single[..], "token {t}");
    }
}
