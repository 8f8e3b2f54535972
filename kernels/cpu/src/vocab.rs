//! Passes over one row of logits, a value per vocabulary entry, that
//! choosing a token makes every step: the largest logit and where it is,
//! sampling weights `exp(l / T − top)` in double precision, and how deep
//! below the top each logit lies (the bins the top-k and top-p cuts use).
//!
//! They are written as plain loops the compiler vectorises, compiled once
//! per instruction set. Only IEEE basic operations are used (no fused
//! multiply-add, no libm), so every instruction set computes the same bits
//! and a seeded draw is the same on every machine.

use crate::dot::{Isa, detect};

/// Lanes the reductions keep apart: enough independent chains to hide the
/// latency of a compare-and-select at any vector width.
const LANES: usize = 32;

/// `pub fn $name(isa, args)`: `$body` (an `#[inline(always)]` loop)
/// compiled for AVX-512, for AVX2 and for the baseline, run on the best of
/// `isa` this CPU has.
macro_rules! per_isa {
    ($(#[$doc:meta])* pub fn $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)? = $body:ident;) => {
        $(#[$doc])*
        pub fn $name(isa: Isa, $($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2")]
            fn avx2($($arg: $ty),*) $(-> $ret)? {
                $body($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f")]
            fn avx512($($arg: $ty),*) $(-> $ret)? {
                $body($($arg),*)
            }
            match isa {
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2Fma | Isa::Avx512Vnni if detect() < Isa::Avx2Fma => $body($($arg),*),
                // SAFETY: the instruction set was detected on this CPU.
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512Vnni if detect() >= Isa::Avx512Vnni => unsafe { avx512($($arg),*) },
                // SAFETY: as above.
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2Fma | Isa::Avx512Vnni => unsafe { avx2($($arg),*) },
                _ => $body($($arg),*),
            }
        }
    };
}

per_isa! {
    /// The largest logit, ignoring NaN; `-inf` for a row without a number.
    pub fn max_with(logits: &[f32]) -> f32 = max_portable;
}

/// [`max_with`] on the process's instruction set.
pub fn max(logits: &[f32]) -> f32 {
    max_with(Isa::current(), logits)
}

/// The index of the largest logit, the lowest among ties; NaN is never
/// chosen, and a row of NaN alone gives 0.
pub fn argmax_with(isa: Isa, logits: &[f32]) -> usize {
    let top = max_with(isa, logits);
    // The first block holding the maximum, found a block at a time so the
    // comparison vectorises, then the place inside it.
    let block = logits.chunks(LANES).position(|c| c.iter().fold(false, |found, &v| found | (v == top)));
    block.map_or(0, |b| b * LANES + logits[b * LANES..].iter().position(|&v| v == top).unwrap_or(0))
}

/// [`argmax_with`] on the process's instruction set.
pub fn argmax(logits: &[f32]) -> usize {
    argmax_with(Isa::current(), logits)
}

#[inline(always)]
fn max_portable(logits: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let blocks = logits.chunks_exact(LANES);
    let tail = blocks.remainder();
    for block in blocks {
        for (m, &v) in lanes.iter_mut().zip(block) {
            // `v > m` is false for NaN: the select keeps the maximum.
            *m = if v > *m { v } else { *m };
        }
    }
    for (m, &v) in lanes.iter_mut().zip(tail) {
        *m = if v > *m { v } else { *m };
    }
    lanes.into_iter().fold(f32::NEG_INFINITY, |a, b| if b > a { b } else { a })
}

/// Arguments below this give weight 0 (`e^-708` is about the smallest
/// normal double; a token that far below the top never matters).
const EXP_FLOOR: f64 = -708.0;

/// `eˣ` in double precision for `x ≤ 0`, within 2 ulp of the exact value,
/// 0 below [`EXP_FLOOR`] and for NaN: `x = k·ln2 + r` with `k` rounded to
/// nearest and `|r| ≤ ln2/2` (Cody and Waite's two-part `ln2`, exact for
/// `|k| < 2¹¹`), `eʳ` by its Taylor series to degree 13 (truncation below
/// 10⁻¹⁷), scaled by `2ᵏ` built in the exponent bits.
#[inline(always)]
pub fn exp_nonpositive(x: f64) -> f64 {
    /// 1.5·2⁵²: adding it rounds to an integer held in the low mantissa bits.
    const SHIFT: f64 = 6_755_399_441_055_744.0;
    const LOG2_E: f64 = std::f64::consts::LOG2_E;
    const LN2_HI: f64 = f64::from_bits(0x3fe6_2e42_fee0_0000);
    const LN2_LO: f64 = f64::from_bits(0x3dea_39ef_3579_3c76);
    // 1/n! for n = 13 down to 2.
    const C: [f64; 12] = [
        1.0 / 6_227_020_800.0,
        1.0 / 479_001_600.0,
        1.0 / 39_916_800.0,
        1.0 / 3_628_800.0,
        1.0 / 362_880.0,
        1.0 / 40_320.0,
        1.0 / 5_040.0,
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
    ];
    let clamped = if x > EXP_FLOOR { x } else { EXP_FLOOR };
    let clamped = if clamped < 0.0 { clamped } else { 0.0 };
    let shifted = clamped * LOG2_E + SHIFT;
    let k = shifted - SHIFT;
    let r = (clamped - k * LN2_HI) - k * LN2_LO;
    let mut p = C[0];
    for c in &C[1..] {
        p = p * r + c;
    }
    let p = (p * r + 1.0) * r + 1.0;
    // k sits in the low bits of `shifted`; 2ᵏ is (k + 1023) in the exponent.
    let k_bits = shifted.to_bits().wrapping_sub(SHIFT.to_bits());
    let scale = f64::from_bits(k_bits.wrapping_add(1023) << 52);
    // NaN compares false: it weighs 0, like anything below the floor.
    if x >= EXP_FLOOR { p * scale } else { 0.0 }
}

per_isa! {
    /// `Σ exp(l − top)` over the row in double precision, for `top` at
    /// least every logit: eight lane sums added in a fixed order, so every
    /// instruction set gives the same bits (NaN and `-inf` weigh 0).
    pub fn sum_exp_with(logits: &[f32], top: f64) -> f64 = sum_exp_portable;
}

#[inline(always)]
fn sum_exp_portable(logits: &[f32], top: f64) -> f64 {
    // Weights a block at a time in the plain loop the compiler vectorises
    // (as `exp_weights`), then added into eight lanes by index.
    let mut acc = [0.0f64; 8];
    let mut block = [0.0f64; 64];
    for c in logits.chunks(64) {
        let w = &mut block[..c.len()];
        for (w, &l) in w.iter_mut().zip(c) {
            *w = exp_nonpositive(l as f64 - top);
        }
        for (i, &v) in w.iter().enumerate() {
            acc[i % 8] += v;
        }
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
}

/// `log Σ exp(l)` over a row, stably (the largest logit subtracted first),
/// on the best instruction set this CPU has.
pub fn log_sum_exp(logits: &[f32]) -> f32 {
    let top = max(logits);
    if top == f32::INFINITY {
        return top;
    }
    let sum = sum_exp_with(Isa::current(), logits, top as f64);
    (top as f64 + sum.ln()) as f32
}

per_isa! {
    /// `out[i] = exp(logits[i]·inv_t − top)` for every entry of `out` (as
    /// long as `logits`), where `top` is the largest logit times `inv_t` (so
    /// every weight is at most 1, the top one exactly 1). `-inf` logits
    /// weigh 0.
    pub fn exp_weights_into(logits: &[f32], inv_t: f64, top: f64, out: &mut [f64]) = exp_weights_portable;
}

/// [`exp_weights_into`] a buffer sized to `logits`.
pub fn exp_weights_with(isa: Isa, logits: &[f32], inv_t: f64, top: f64, out: &mut Vec<f64>) {
    out.clear();
    out.resize(logits.len(), 0.0);
    exp_weights_into(isa, logits, inv_t, top, out);
}

/// [`exp_weights_with`] on the process's instruction set.
pub fn exp_weights(logits: &[f32], inv_t: f64, top: f64, out: &mut Vec<f64>) {
    exp_weights_with(Isa::current(), logits, inv_t, top, out)
}

#[inline(always)]
fn exp_weights_portable(logits: &[f32], inv_t: f64, top: f64, out: &mut [f64]) {
    for (w, &l) in out.iter_mut().zip(logits) {
        *w = exp_nonpositive(l as f64 * inv_t - top);
    }
}

/// Bins of [`depth_bins_with`]: `1/64` nat wide over the first 64 nats
/// below the top (anything deeper, `-inf` and NaN share the last one).
pub const DEPTH_BINS: usize = 64 * 64;

per_isa! {
    /// `out[i]`: how far `logits[i]·inv_t` lies below `top`, in bins of
    /// `1/64` nat. Depth is the negated exponent of [`exp_weights_into`]'s
    /// weight, so a lower weight never lands in a lower bin.
    pub fn depth_bins_into(logits: &[f32], inv_t: f64, top: f64, out: &mut [u16]) = depth_bins_portable;
}

/// [`depth_bins_into`] a buffer sized to `logits`.
pub fn depth_bins_with(isa: Isa, logits: &[f32], inv_t: f64, top: f64, out: &mut Vec<u16>) {
    out.clear();
    out.resize(logits.len(), 0);
    depth_bins_into(isa, logits, inv_t, top, out);
}

/// [`depth_bins_with`] on the process's instruction set.
pub fn depth_bins(logits: &[f32], inv_t: f64, top: f64, out: &mut Vec<u16>) {
    depth_bins_with(Isa::current(), logits, inv_t, top, out)
}

#[inline(always)]
fn depth_bins_portable(logits: &[f32], inv_t: f64, top: f64, out: &mut [u16]) {
    const LAST: f64 = (DEPTH_BINS - 1) as f64;
    for (b, &l) in out.iter_mut().zip(logits) {
        let depth = (top - l as f64 * inv_t) * 64.0;
        // NaN fails the compare and lands in the last bin.
        let depth = if depth < LAST { depth } else { LAST };
        let depth = if depth > 0.0 { depth } else { 0.0 };
        // SAFETY: clamped to [0, LAST] above, so it fits (a checked
        // conversion would not vectorise).
        *b = unsafe { depth.to_int_unchecked::<i32>() } as u16;
    }
}
