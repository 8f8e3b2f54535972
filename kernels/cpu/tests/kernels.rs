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
        let expected: Vec<f32> =
            fixture(ty.name(), "f32").chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
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
    let cols = 576;
    // 31 tokens cover every token tile (16 + 8 + 4 + 2 + 1); an odd row
    // count leaves one row outside the row pairs.
    let n = 31;
    let xs = random(n * cols, 77);
    for ty in [WeightType::Q8_0, WeightType::Q4_1, WeightType::Q4_0, WeightType::F16] {
        for rows in [48, 47] {
            let data: Vec<u8> = if ty == WeightType::F16 {
                random(rows * cols, 9).iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect()
            } else {
                (0..rows).flat_map(|r| random_row(ty, cols / 32, 1000 + r as u64)).collect()
            };
            let w = Matrix { ty, rows, cols, data: &data };
            let mut batched = vec![0f32; n * rows];
            matmul(&w, &xs, n, &mut batched);
            for t in 0..n {
                let mut single = vec![0f32; rows];
                matmul(&w, &xs[t * cols..(t + 1) * cols], 1, &mut single);
                assert_eq!(&batched[t * rows..(t + 1) * rows], &single[..], "{ty:?} {rows} rows, token {t}");
            }
        }
    }
}

/// Random Q4_0 / Q4_1 / Q8_0 rows with finite scales.
fn random_row(ty: WeightType, blocks: usize, seed: u64) -> Vec<u8> {
    let noise = random(blocks * ty.block_bytes(), seed);
    let mut row: Vec<u8> = noise.iter().map(|v| ((v + 1.0) * 127.5) as u8).collect();
    for (b, block) in row.chunks_exact_mut(ty.block_bytes()).enumerate() {
        block[..2].copy_from_slice(&half::f16::from_f32(0.01 + 0.001 * b as f32).to_le_bytes());
        if ty == WeightType::Q4_1 {
            block[2..4].copy_from_slice(&half::f16::from_f32(-0.05).to_le_bytes());
        }
    }
    row
}

#[test]
fn integer_kernels_agree_across_instruction_sets_tiles_and_a_float64_reference() {
    use weft_kernels_cpu::qdot::{BlockQ8, block_sums, dot_row_pair, dot_rows, quantize_row};
    let blocks = 48;
    for ty in [WeightType::Q4_0, WeightType::Q4_1, WeightType::Q8_0] {
        let row = random_row(ty, blocks, ty.block_bytes() as u64);
        let mut w = vec![0f32; blocks * 32];
        dequantize(ty, &row, &mut w);
        let acts: Vec<Vec<BlockQ8>> = (0..16)
            .map(|t| {
                let x = random(blocks * 32, 500 + t);
                let mut q = vec![BlockQ8::default(); blocks];
                quantize_row(&x, &mut q);
                q
            })
            .collect();
        let all: [&[BlockQ8]; 16] = std::array::from_fn(|t| &acts[t][..]);
        let refs = [all[0], all[1], all[2], all[3]];
        let mut results = Vec::new();
        for isa in Isa::available() {
            let tiled = dot_rows::<1, 4>(isa, ty, [&row], refs);
            let single: Vec<f32> = refs.iter().map(|a| dot_rows::<1, 1>(isa, ty, [&row], [a])[0][0]).collect();
            assert_eq!(tiled[0].to_vec(), single, "{ty:?} {isa:?}: tiling changes nothing");
            let other = random_row(ty, blocks, 99);
            let paired = dot_rows::<2, 1>(isa, ty, [&row, &other], [refs[2]]);
            assert_eq!(paired[0][0], single[2], "{ty:?} {isa:?}: pairing rows changes nothing");
            assert_eq!(paired[1][0], dot_rows::<1, 1>(isa, ty, [&other], [refs[2]])[0][0]);
            // Two rows to a register, in every token tile: the same bits.
            let other_single: Vec<f32> = all.iter().map(|a| dot_rows::<1, 1>(isa, ty, [&other], [a])[0][0]).collect();
            let single16: Vec<f32> = all.iter().map(|a| dot_rows::<1, 1>(isa, ty, [&row], [a])[0][0]).collect();
            let pair16 = dot_row_pair::<16>(isa, ty, [&row, &other], all, &block_sums(all));
            assert_eq!((pair16[0].to_vec(), pair16[1].to_vec()), (single16.clone(), other_single.clone()), "{ty:?} {isa:?}: pair x 16");
            let first8: [&[BlockQ8]; 8] = std::array::from_fn(|t| all[t]);
            let pair8 = dot_row_pair::<8>(isa, ty, [&row, &other], first8, &block_sums(first8));
            assert_eq!((pair8[0].to_vec(), pair8[1].to_vec()), (single16[..8].to_vec(), other_single[..8].to_vec()), "{ty:?} {isa:?}: pair x 8");
            let pair2 = dot_row_pair::<2>(isa, ty, [&other, &row], [all[5], all[6]], &block_sums([all[5], all[6]]));
            assert_eq!(pair2, [[other_single[5], other_single[6]], [single16[5], single16[6]]], "{ty:?} {isa:?}: pair x 2");
            let pair1 = dot_row_pair::<1>(isa, ty, [&row, &other], [all[7]], &block_sums([all[7]]));
            assert_eq!(pair1, [[single16[7]], [other_single[7]]], "{ty:?} {isa:?}: pair x 1");
            results.push((isa, single));
        }
        for (t, a) in acts.iter().take(4).enumerate() {
            // What the integer kernel computes exactly: dequantised weights
            // times dequantised 8-bit activations, with Q4_1's offset applied
            // through the block's stored activation sum (as in ggml).
            let exact: f64 = a
                .iter()
                .enumerate()
                .map(|(b, blk)| {
                    let m = if ty == WeightType::Q4_1 {
                        let at = b * ty.block_bytes() + 2;
                        half::f16::from_le_bytes([row[at], row[at + 1]]).to_f32() as f64
                    } else {
                        0.0
                    };
                    let body: f64 = (0..32).map(|j| (w[b * 32 + j] as f64 - m) * blk.q[j] as f64 * blk.d as f64).sum();
                    body + m * blk.sum as f64
                })
                .sum();
            let scale: f64 = w.iter().map(|v| v.abs() as f64).sum::<f64>() * 0.05;
            for (isa, r) in &results {
                assert!(((r[t] as f64) - exact).abs() <= 1e-5 * scale, "{ty:?} {isa:?} token {t}: {} vs {exact}", r[t]);
            }
        }
        // Every path, the portable one included, is bit-identical.
        for pair in results.windows(2) {
            assert_eq!(pair[0].1, pair[1].1, "{ty:?}: {:?} vs {:?}", pair[0].0, pair[1].0);
        }
    }
}

#[test]
fn attention_matches_an_exact_softmax_to_f16_precision_on_every_path() {
    use weft_kernels_cpu::attention::{attend_exact, attend_llama_cpp};
    let (hd, ctx) = (64, 37);
    let round = |v: f32| half::f16::from_f32(v).to_f32();
    let q = random(hd, 1);
    let keys: Vec<half::f16> = random(hd * ctx, 2).into_iter().map(|v| half::f16::from_f32(v * 3.0)).collect();
    let values: Vec<half::f16> = random(hd * ctx, 3).into_iter().map(half::f16::from_f32).collect();
    let scale = 1.0 / (hd as f32).sqrt();
    // Exact reference in f64 on the same (f16-rounded) inputs.
    let scores: Vec<f64> = (0..ctx)
        .map(|p| (0..hd).map(|j| round(q[j]) as f64 * keys[p * hd + j].to_f64()).sum::<f64>() * scale as f64)
        .collect();
    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
    let total: f64 = weights.iter().sum();
    let exact: Vec<f64> =
        (0..hd).map(|j| (0..ctx).map(|p| weights[p] * values[p * hd + j].to_f64()).sum::<f64>() / total).collect();
    let mut first: Option<Vec<f32>> = None;
    for isa in Isa::available() {
        let mut out = vec![f32::NAN; hd];
        attend_llama_cpp(
            isa,
            &q,
            ctx,
            scale,
            |p| &keys[p * hd..(p + 1) * hd],
            |p| &values[p * hd..(p + 1) * hd],
            &mut out,
        );
        let err: f64 = out.iter().zip(&exact).map(|(o, e)| (*o as f64 - e).powi(2)).sum::<f64>().sqrt();
        let norm: f64 = exact.iter().map(|e| e * e).sum::<f64>().sqrt();
        assert!(err / norm < 2e-3, "{isa:?}: relative error {}", err / norm);
        // Same arithmetic in the same order on every instruction set.
        match &first {
            Some(f) => assert_eq!(&out, f, "{isa:?} differs from the portable path"),
            None => first = Some(out),
        }
    }
    // The exact path on f32 inputs (the q used by the reference is rounded).
    let qr: Vec<f32> = q.iter().map(|v| round(*v)).collect();
    let k32: Vec<f32> = keys.iter().map(|v| v.to_f32()).collect();
    let v32: Vec<f32> = values.iter().map(|v| v.to_f32()).collect();
    let mut out = vec![f32::NAN; hd];
    attend_exact(&qr, ctx, scale, |p| &k32[p * hd..(p + 1) * hd], |p| &v32[p * hd..(p + 1) * hd], &mut out);
    let err: f64 = out.iter().zip(&exact).map(|(o, e)| (*o as f64 - e).powi(2)).sum::<f64>().sqrt();
    let norm: f64 = exact.iter().map(|e| e * e).sum::<f64>().sqrt();
    assert!(err / norm < 1e-6, "exact path: relative error {}", err / norm);
}

#[test]
fn vector_activation_quantisation_matches_the_portable_one() {
    use weft_kernels_cpu::qdot::{BlockQ8, quantize_row, quantize_row_portable};
    // Includes exact halves (x · 127/amax = k + 0.5) to pin the tie rule.
    let mut x = random(32 * 64, 4242);
    for (i, v) in x.iter_mut().enumerate().take(64) {
        *v = if i % 32 == 0 { 127.0 } else { (i % 7) as f32 + 0.5 };
    }
    let (mut a, mut b) = (vec![BlockQ8::default(); 64], vec![BlockQ8::default(); 64]);
    quantize_row(&x, &mut a);
    quantize_row_portable(&x, &mut b);
    for (i, (p, q)) in a.iter().zip(&b).enumerate() {
        assert_eq!((p.q, p.d, p.sum), (q.q, q.d, q.sum), "block {i}");
    }
    assert_eq!(b[0].q[1], 2, "1.5 rounds to even");
    assert_eq!(b[0].q[3], 4, "3.5 rounds to even");
}

#[test]
fn grouped_query_heads_attend_exactly_as_they_do_alone() {
    use weft_kernels_cpu::attention::{attend_group_llama_cpp, attend_llama_cpp};
    fn check<const G: usize>(hd: usize, ctx: usize, seed: u64) {
        let qs: Vec<Vec<f32>> = (0..G).map(|g| random(hd, seed + g as u64)).collect();
        let keys: Vec<half::f16> = random(hd * ctx, seed + 10).into_iter().map(|v| half::f16::from_f32(v * 3.0)).collect();
        let values: Vec<half::f16> = random(hd * ctx, seed + 11).into_iter().map(half::f16::from_f32).collect();
        let scale = 1.0 / (hd as f32).sqrt();
        let key = |p: usize| &keys[p * hd..(p + 1) * hd];
        let value = |p: usize| &values[p * hd..(p + 1) * hd];
        for isa in Isa::available() {
            let mut grouped = vec![vec![f32::NAN; hd]; G];
            let mut outs = grouped.iter_mut();
            let outs: [&mut [f32]; G] = std::array::from_fn(|_| outs.next().unwrap().as_mut_slice());
            attend_group_llama_cpp(isa, std::array::from_fn(|g| qs[g].as_slice()), ctx, scale, key, value, outs);
            for (g, q) in qs.iter().enumerate() {
                let mut alone = vec![f32::NAN; hd];
                attend_llama_cpp(isa, q, ctx, scale, key, value, &mut alone);
                assert_eq!(grouped[g], alone, "{isa:?}: head {g} of {G}, head_dim {hd}, {ctx} positions");
            }
        }
    }
    for (hd, ctx) in [(64, 1), (64, 37), (64, 300), (128, 45), (80, 20)] {
        check::<1>(hd, ctx, 7);
        check::<2>(hd, ctx, 17);
        check::<3>(hd, ctx, 27);
        check::<4>(hd, ctx, 37);
    }
}
