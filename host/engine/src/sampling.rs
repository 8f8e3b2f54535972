//! Native token sampling: greedy, temperature, top-k and top-p with seeded,
//! position-keyed randomness.
//!
//! The random draw for a sequence's `i`-th generated token is a pure
//! function of `(seed, i)`, so a sequence replays identically after
//! preemption, alone or inside any batch. (The plugin issue moves sampling
//! policy into Wasm; this stays as the reference implementation.)

use weft_types::SamplingParams;

/// A SplitMix64 step: a fast, well-mixed 64-bit hash.
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A uniform draw in `[0, 1)` for token `index` of a sequence seeded `seed`.
pub fn uniform(seed: u64, index: u64) -> f64 {
    let bits = splitmix64(splitmix64(seed) ^ index.wrapping_mul(0xD1B5_4A32_D192_ED03));
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// Index of the largest logit (the lowest index among ties).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// `log softmax(logits)[token]`.
pub fn logprob_of(logits: &[f32], token: u32) -> f32 {
    logits[token as usize] - weft_kernels_cpu::ops::log_sum_exp(logits)
}

/// Choose the next token for a sequence from its logits.
pub fn sample(logits: &[f32], params: &SamplingParams, index: u64) -> u32 {
    if params.is_greedy() {
        return argmax(logits);
    }
    let inv_t = 1.0 / params.temperature as f64;
    let mut candidates: Vec<(u32, f64)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, l as f64 * inv_t)).collect();
    // Highest first; ties by lower id, so the order is total and stable.
    candidates.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    if params.top_k > 0 {
        candidates.truncate(params.top_k as usize);
    }
    let max = candidates[0].1;
    let mut total = 0.0;
    for c in candidates.iter_mut() {
        c.1 = (c.1 - max).exp();
        total += c.1;
    }
    if params.top_p < 1.0 {
        let mut mass = 0.0;
        let mut keep = candidates.len();
        for (i, c) in candidates.iter().enumerate() {
            mass += c.1 / total;
            if mass >= params.top_p as f64 {
                keep = i + 1;
                break;
            }
        }
        candidates.truncate(keep);
        total = candidates.iter().map(|c| c.1).sum();
    }
    let target = uniform(params.seed, index) * total;
    let mut acc = 0.0;
    for c in &candidates {
        acc += c.1;
        if target < acc {
            return c.0;
        }
    }
    candidates.last().map_or(0, |c| c.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_sampling_follows_the_distribution() {
        // Logits for probabilities 0.5, 0.3, 0.2.
        let logits = [0.5f32.ln(), 0.3f32.ln(), 0.2f32.ln()];
        let params = SamplingParams { temperature: 1.0, seed: 7, ..SamplingParams::default() };
        let mut counts = [0usize; 3];
        for i in 0..20_000 {
            counts[sample(&logits, &params, i) as usize] += 1;
        }
        let freq: Vec<f64> = counts.iter().map(|&c| c as f64 / 20_000.0).collect();
        for (f, p) in freq.iter().zip([0.5, 0.3, 0.2]) {
            assert!((f - p).abs() < 0.015, "frequency {f} vs probability {p}");
        }
    }

    #[test]
    fn top_k_and_top_p_cut_the_tail() {
        let logits = [3.0f32, 2.0, 1.0, 0.0];
        let k1 = SamplingParams { temperature: 1.0, top_k: 1, ..SamplingParams::default() };
        assert!((0..100).all(|i| sample(&logits, &k1, i) == 0));
        let p = SamplingParams { temperature: 1.0, top_p: 0.5, seed: 3, ..SamplingParams::default() };
        assert!((0..200).all(|i| sample(&logits, &p, i) == 0), "the top token alone holds > 50% of the mass");
        let k2 = SamplingParams { temperature: 1.0, top_k: 2, seed: 3, ..SamplingParams::default() };
        assert!((0..200).all(|i| sample(&logits, &k2, i) < 2));
    }

    #[test]
    fn draws_depend_only_on_seed_and_index() {
        assert_eq!(uniform(42, 5), uniform(42, 5));
        assert_ne!(uniform(42, 5), uniform(42, 6));
        assert_ne!(uniform(42, 5), uniform(43, 5));
    }
}
