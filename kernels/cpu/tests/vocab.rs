//! The passes over a vocabulary row against plain references, on every
//! instruction set the machine has: the same bits everywhere, since a
//! seeded draw must not depend on the machine.

use weft_kernels_cpu::dot::Isa;
use weft_kernels_cpu::vocab::{
    DEPTH_BINS, argmax_with, depth_bins_with, exp_nonpositive, exp_weights_with, log_sum_exp, max_with, sum_exp_with,
};

/// Deterministic logits in [-8, 8) with repeats and special values mixed in.
fn row(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|i| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            match i % 97 {
                5 => f32::NEG_INFINITY,
                11 => 3.25, // a value that repeats
                _ => ((s >> 40) as f32 / (1u64 << 24) as f32) * 16.0 - 8.0,
            }
        })
        .collect()
}

#[test]
fn exp_is_within_two_ulp_of_libm_and_zero_below_its_floor() {
    let ulp = |x: f64| f64::from_bits(x.to_bits() + 1) - x;
    let mut worst = 0f64;
    for i in 0..=2_000_000u64 {
        // Dense near 0 (where the top tokens' weights live) and over the
        // whole range, crossing every power-of-two boundary.
        let x = if i % 2 == 0 { -(i as f64) * 3.54e-4 } else { -(i as f64 / 2e6).powi(3) * 2.0 };
        let (ours, exact) = (exp_nonpositive(x), x.exp());
        worst = worst.max((ours - exact).abs() / ulp(exact));
    }
    assert!(worst <= 2.0, "worst error {worst} ulp");
    assert_eq!(exp_nonpositive(0.0), 1.0);
    assert_eq!(exp_nonpositive(-708.5), 0.0);
    assert_eq!(exp_nonpositive(f64::NEG_INFINITY), 0.0);
    assert_eq!(exp_nonpositive(f64::NAN), 0.0);
}

#[test]
fn weights_and_bins_are_the_same_bits_on_every_instruction_set() {
    for (n, seed) in [(1usize, 1u64), (31, 2), (1000, 3), (49_152, 4)] {
        let logits = row(n, seed);
        for inv_t in [1.0, 1.0 / 0.7, 1.0 / 1.3] {
            let top = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64 * inv_t;
            let expected: Vec<f64> = logits.iter().map(|&l| exp_nonpositive(l as f64 * inv_t - top)).collect();
            let expected_bins: Vec<u16> = logits
                .iter()
                .map(|&l| ((top - l as f64 * inv_t) * 64.0).min((DEPTH_BINS - 1) as f64) as u16)
                .collect();
            for isa in Isa::available() {
                let mut weights = vec![f64::NAN; 3];
                exp_weights_with(isa, &logits, inv_t, top, &mut weights);
                assert!(weights.iter().zip(&expected).all(|(a, b)| a.to_bits() == b.to_bits()), "{isa:?} n {n}");
                let mut bins = vec![7u16; 5];
                depth_bins_with(isa, &logits, inv_t, top, &mut bins);
                assert_eq!(bins, expected_bins, "{isa:?} n {n}");
            }
        }
    }
}

#[test]
fn the_largest_logit_is_found_first_among_ties_and_nan_never_wins() {
    let naive = |x: &[f32]| {
        let mut best: Option<usize> = None;
        for (i, &v) in x.iter().enumerate() {
            if !v.is_nan() && best.is_none_or(|b| v > x[b]) {
                best = Some(i);
            }
        }
        best.unwrap_or(0)
    };
    let mut cases: Vec<Vec<f32>> = [1usize, 7, 32, 33, 1000, 49_152].iter().map(|&n| row(n, n as u64)).collect();
    // Ties for the top, in and across blocks of the reduction.
    let mut tied = row(500, 9);
    tied[40] = 9.0;
    tied[41] = 9.0;
    tied[470] = 9.0;
    cases.push(tied);
    let mut nan = row(300, 10);
    nan[0] = f32::NAN;
    nan[100] = f32::NAN;
    cases.push(nan);
    cases.push(vec![f32::NEG_INFINITY; 40]);
    cases.push(vec![f32::NAN; 3]);
    cases.push(vec![f32::NAN, f32::NEG_INFINITY, -1.0]);
    for x in &cases {
        for isa in Isa::available() {
            assert_eq!(argmax_with(isa, x), naive(x), "{isa:?} on {} entries", x.len());
            let top = max_with(isa, x);
            let expected = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(top.to_bits(), expected.to_bits(), "{isa:?}");
        }
    }
}

#[test]
fn log_sum_exp_matches_a_libm_reference_with_the_same_bits_everywhere() {
    for (n, seed) in [(49_152usize, 1u64), (257, 2), (7, 3), (1, 4)] {
        let logits = row(n, seed);
        let top = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let exact = top + logits.iter().map(|&l| (l as f64 - top).exp()).sum::<f64>().ln();
        let ours = log_sum_exp(&logits);
        assert!((ours as f64 - exact).abs() <= 1e-6 * exact.abs().max(1.0), "n={n}: {ours} vs {exact}");
        let sums: Vec<u64> = Isa::available().into_iter().map(|isa| sum_exp_with(isa, &logits, top).to_bits()).collect();
        assert!(sums.windows(2).all(|w| w[0] == w[1]), "n={n}: sums differ across instruction sets");
    }
    assert_eq!(log_sum_exp(&[f32::NEG_INFINITY; 3]), f32::NEG_INFINITY);
    assert_eq!(log_sum_exp(&[0.0, f32::INFINITY]), f32::INFINITY);
    assert_eq!(log_sum_exp(&[2.0]), 2.0);
}

