//! Native token sampling: logit adjustments (bias, presence / frequency /
//! repetition penalties, EOS suppression) as sparse edits, then greedy or
//! temperature with top-k, min-p and top-p, with seeded, position-keyed
//! randomness; the log-probabilities reported to clients; and
//! [`HostRows`], a step's logits in host memory, where those choices run.
//!
//! The random draw for a sequence's `i`-th generated token is a pure
//! function of `(seed, i)`, so a sequence replays identically after
//! preemption, alone or inside any batch. The native sampler and the
//! sampler plugin's `choose-rows` both describe a choice as a
//! [`Pick`] and hand it to the rows' owner, so on any backend the builtin
//! plugin chooses exactly the native sampler's tokens.

use std::borrow::Cow;

use weft_types::logits::edited_row;
use weft_types::{Cuts, LogProbs, LogitEdit, LogitsError, LogitsRows, Pick, SampleRow, Sampler, SamplerError, SamplingParams, TokenId, choose_across};

/// The host's own sampler: the reference the builtin sampler plugin is
/// checked against, and the engine's default until one is set.
#[derive(Debug, Default, Clone, Copy)]
pub struct NativeSampler;

impl Sampler for NativeSampler {
    fn name(&self) -> &str {
        "native"
    }

    fn sample(&mut self, rows: &[SampleRow<'_>], eos: &[TokenId]) -> Result<Vec<TokenId>, SamplerError> {
        let edits: Vec<Vec<(TokenId, LogitEdit)>> = rows
            .iter()
            .map(|r| if r.params.adjusts_logits() { param_edits(r.params, r.tokens, r.prompt_len, eos, r.vocab()) } else { Vec::new() })
            .collect();
        let picks: Vec<(&dyn LogitsRows, Pick<'_>)> = rows
            .iter()
            .zip(&edits)
            .map(|(r, e)| (r.logits, r.pick(e, Cuts::of(r.params), uniform(r.params.seed, r.position()))))
            .collect();
        Ok(choose_across(&picks)?)
    }
}

/// One step's logits rows in host memory (the CPU backend's, or a row
/// kept for a later step).
#[derive(Clone, Debug)]
pub struct HostRows {
    data: Vec<f32>,
    vocab: usize,
}

impl HostRows {
    /// `data` holds whole rows of `vocab` logits.
    pub fn new(data: Vec<f32>, vocab: usize) -> Self {
        assert!(vocab > 0 && data.len().is_multiple_of(vocab), "{} logits are not rows of {vocab}", data.len());
        Self { data, vocab }
    }

    /// One row.
    pub fn one(row: Vec<f32>) -> Self {
        let vocab = row.len();
        Self::new(row, vocab)
    }

    fn slice(&self, i: usize) -> &[f32] {
        &self.data[i * self.vocab..(i + 1) * self.vocab]
    }

    /// `f` of row `i` with `mask` and then `edits` applied: the row itself
    /// when there are none, else an edited copy in the thread's scratch.
    fn edited<T>(&self, i: usize, mask: Option<&[u32]>, edits: &[(TokenId, LogitEdit)], f: impl FnOnce(&[f32]) -> T) -> T {
        let raw = self.slice(i);
        if mask.is_none() && edits.is_empty() {
            return f(raw);
        }
        EDITED.with_borrow_mut(|row| {
            edited_row(row, raw, mask, edits);
            f(row)
        })
    }
}

impl LogitsRows for HostRows {
    fn vocab(&self) -> usize {
        self.vocab
    }

    fn len(&self) -> usize {
        self.data.len() / self.vocab
    }

    fn row(&self, i: usize) -> Result<Cow<'_, [f32]>, LogitsError> {
        Ok(Cow::Borrowed(self.slice(i)))
    }

    fn choose(&self, picks: &[Pick<'_>]) -> Result<Vec<TokenId>, LogitsError> {
        Ok(picks.iter().map(|p| self.edited(p.row, p.mask, p.edits, |row| choose(row, p.cuts, p.uniform))).collect())
    }

    fn top_k(&self, i: usize, mask: Option<&[u32]>, edits: &[(TokenId, LogitEdit)], k: usize) -> Result<Vec<(TokenId, f32)>, LogitsError> {
        Ok(self.edited(i, mask, edits, |row| largest(row, k)))
    }

    fn log_probs(&self, i: usize, token: TokenId, top: usize) -> Result<LogProbs, LogitsError> {
        let row = self.slice(i);
        let lse = log_sum_exp(row);
        let top = if top == 0 { Vec::new() } else { largest(row, top).into_iter().map(|(t, v)| (t, v - lse)).collect() };
        Ok(LogProbs { token: row[token as usize] - lse, top })
    }
}

thread_local! {
    /// The edited copy of the row being chosen on this thread, kept
    /// between rows so a step allocates nothing.
    static EDITED: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

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

/// Index of the largest logit (the lowest index among ties; NaN is never
/// chosen).
pub fn argmax(logits: &[f32]) -> u32 {
    weft_kernels_cpu::vocab::argmax(logits) as u32
}

/// `log softmax(logits)[token]`.
pub fn logprob_of(logits: &[f32], token: u32) -> f32 {
    logits[token as usize] - log_sum_exp(logits)
}

/// `log Σ exp(l)` over a row: what every log-probability subtracts.
pub fn log_sum_exp(logits: &[f32]) -> f32 {
    weft_kernels_cpu::vocab::log_sum_exp(logits)
}

/// The `k` largest logits, largest first, ties by lower id: an argmax for
/// one, a linear scan for a few, a sort otherwise.
pub fn largest(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    let k = k.min(logits.len());
    if k == 1 {
        // Greedy decoding's hot path: a plain argmax is twice as fast.
        let best = argmax(logits);
        return vec![(best, logits[best as usize])];
    }
    if k > 64 {
        let mut all: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, l)).collect();
        all.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        all.truncate(k);
        return all;
    }
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
    for (i, &v) in logits.iter().enumerate() {
        if best.len() == k && best.last().is_none_or(|&(_, w)| v <= w) {
            continue;
        }
        let at = best.partition_point(|&(_, w)| w >= v);
        best.insert(at, (i as u32, v));
        best.truncate(k);
    }
    best
}

/// The edits a sequence's own parameters make, in the order they apply:
/// EOS banned (`ignore_eos`), `logit_bias`, then [`repeat_edits`] with its
/// penalties. Ids at or past `vocab` are left out. `tokens` is the prompt
/// followed by the generated tokens.
pub fn param_edits(params: &SamplingParams, tokens: &[u32], prompt_len: usize, eog: &[u32], vocab: usize) -> Vec<(TokenId, LogitEdit)> {
    let mut edits = Vec::new();
    if params.ignore_eos {
        edits.extend(eog.iter().map(|&t| (t, LogitEdit::Ban)));
    }
    edits.extend(params.logit_bias.iter().map(|&(t, bias)| (t, LogitEdit::Add(bias))));
    repeat_edits(params.repetition_penalty, params.presence_penalty, params.frequency_penalty, tokens, prompt_len, &mut edits);
    edits.retain(|e| (e.0 as usize) < vocab);
    edits
}

/// The penalties for repeating a sequence's tokens, as edits onto `edits`:
/// CTRL's `repetition` on each distinct token of `tokens`, then
/// `-(presence + frequency × count)` on each distinct token generated
/// (after `prompt_len`). 1, 0 and 0 add nothing.
pub fn repeat_edits(repetition: f32, presence: f32, frequency: f32, tokens: &[u32], prompt_len: usize, edits: &mut Vec<(TokenId, LogitEdit)>) {
    if repetition != 1.0 {
        let mut seen: Vec<u32> = tokens.to_vec();
        seen.sort_unstable();
        seen.dedup();
        edits.extend(seen.into_iter().map(|t| (t, LogitEdit::Penalize(repetition))));
    }
    if presence != 0.0 || frequency != 0.0 {
        let mut generated: Vec<u32> = tokens[prompt_len.min(tokens.len())..].to_vec();
        generated.sort_unstable();
        edits.extend(generated.chunk_by(|a, b| a == b).map(|run| (run[0], LogitEdit::Add(-(presence + frequency * run.len() as f32)))));
    }
}

/// The candidates a sampled (non-greedy) choice draws from: logits scaled
/// by `1 / temperature`, cut to the `top_k` most likely (0: no cut), then
/// to tokens weighing at least `min_p` of the top one, then to the
/// smallest most-likely-first prefix holding `top_p` of the mass; returned
/// most likely first (ties by lower id). Each comes with its unnormalised
/// weight `exp(scaled - top)`, so the top weighs 1. The sampler plugin's
/// `nucleus` host call is this function.
///
/// Only the kept candidates are sorted: the cuts themselves take linear
/// time (top-k and top-p by binning, min-p by a compare).
pub fn nucleus(logits: &[f32], temperature: f32, top_k: u32, top_p: f32, min_p: f32) -> Vec<(u32, f64)> {
    CUTS.with_borrow_mut(|scratch| {
        cut(logits, temperature, top_k, top_p, min_p, scratch);
        let mut kept: Vec<(u32, f64)> =
            scratch.weights.iter().enumerate().filter(|c| *c.1 >= 0.0).map(|(id, &w)| (id as u32, w)).collect();
        kept.sort_unstable_by(most_likely_first);
        kept
    })
}

/// The buffers the cuts work in for the row being sampled on a thread,
/// kept between rows so a step allocates nothing.
#[derive(Default)]
struct CutScratch {
    /// Each token's weight, [`CUT`] once cut.
    weights: Vec<f64>,
    /// Each token's depth bin below the top.
    bins: Vec<u16>,
    /// The measure of each bin.
    mass: Vec<f64>,
    /// The tokens of the bin a cut falls in.
    boundary: Vec<(u32, f64)>,
}

thread_local! {
    static CUTS: std::cell::RefCell<CutScratch> = std::cell::RefCell::new(CutScratch::default());
}

/// The weight of a token outside the nucleus (real weights are ≥ 0).
const CUT: f64 = -1.0;

/// Highest weight first; ties by lower id, so the order is total.
fn most_likely_first(a: &(u32, f64), b: &(u32, f64)) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// Every token's weight into `scratch.weights`, [`CUT`] for those outside
/// the nucleus.
fn cut(logits: &[f32], temperature: f32, top_k: u32, top_p: f32, min_p: f32, scratch: &mut CutScratch) {
    let CutScratch { weights, bins, mass, boundary } = scratch;
    use weft_kernels_cpu::vocab;
    let inv_t = 1.0 / temperature as f64;
    let top = vocab::max(logits) as f64 * inv_t;
    vocab::exp_weights(logits, inv_t, top, weights);
    // Tokens still kept: counted only after min-p, the one cut that does
    // not know how many it leaves.
    let mut kept = weights.len();
    if min_p > 0.0 {
        let floor = min_p as f64;
        kept = 0;
        for w in weights.iter_mut() {
            if *w < floor {
                *w = CUT;
            } else {
                kept += 1;
            }
        }
    }
    let cut_k = top_k > 0 && kept > top_k as usize;
    let cut_p = top_p < 1.0;
    if cut_k || cut_p {
        vocab::depth_bins(logits, inv_t, top, bins);
    }
    if cut_k {
        // Counting tokens is exact: exactly top_k stay.
        keep_most_likely(weights, bins, mass, boundary, |_| 1.0, |_| top_k as f64);
        kept = top_k as usize;
    }
    if cut_p && kept > 1 {
        keep_most_likely(weights, bins, mass, boundary, |w| w, |total| top_p as f64 * total);
    }
}

/// Cut the kept tokens to the smallest most-likely-first prefix whose
/// `measure` (1 a token for top-k, the weight for top-p) reaches `goal`
/// (of the kept tokens' total), in linear time: tokens are binned by how
/// far below the top they are (`bins`; a lower weight never lands in a
/// lower bin), and the bin where the running measure reaches the goal is
/// the only one sorted (`mass` and `boundary` are scratch).
fn keep_most_likely(
    weights: &mut [f64],
    bins: &[u16],
    mass: &mut Vec<f64>,
    boundary: &mut Vec<(u32, f64)>,
    measure: impl Fn(f64) -> f64,
    goal: impl FnOnce(f64) -> f64,
) {
    mass.clear();
    mass.resize(weft_kernels_cpu::vocab::DEPTH_BINS, 0.0);
    for (&b, &w) in bins.iter().zip(weights.iter()) {
        if w >= 0.0 {
            mass[b as usize] += measure(w);
        }
    }
    let goal = goal(mass.iter().sum());
    let mut below = 0.0;
    let Some(edge) = mass.iter().position(|&m| {
        let reached = below + m >= goal;
        if !reached {
            below += m;
        }
        reached
    }) else {
        // Rounding can leave the goal just out of reach: everything stays.
        return;
    };
    // One pass cuts every bin past the edge and gathers the edge's
    // tokens; the ones past the cut point inside it go after the sort.
    let edge = edge as u16;
    boundary.clear();
    for (id, (&b, w)) in (0..).zip(bins.iter().zip(weights.iter_mut())) {
        if b > edge {
            *w = CUT;
        } else if b == edge && *w >= 0.0 {
            boundary.push((id, *w));
        }
    }
    boundary.sort_unstable_by(most_likely_first);
    let mut keep = boundary.len();
    for (i, c) in boundary.iter().enumerate() {
        below += measure(c.1);
        if below >= goal {
            keep = i + 1;
            break;
        }
    }
    for &(id, _) in &boundary[keep..] {
        weights[id as usize] = CUT;
    }
}

/// Draw a token from the nucleus (the same cuts as [`nucleus`]) with a
/// uniform `u`: the kept candidates in token-id order, the first whose
/// cumulative weight exceeds `u × total` (what a guest computes from
/// `nucleus` sorted by id, bit for bit). No sort at all: the weights are summed in place
/// over the whole row, cut tokens adding nothing. The sampler plugin's
/// `sample` host call is this function.
pub fn sample_nucleus(logits: &[f32], temperature: f32, top_k: u32, top_p: f32, min_p: f32, u: f64) -> u32 {
    CUTS.with_borrow_mut(|scratch| {
        cut(logits, temperature, top_k, top_p, min_p, scratch);
        let weights = &mut scratch.weights;
        let last_kept = weights.iter().rposition(|&w| w >= 0.0).unwrap_or(0);
        // Running sums replace the weights; they never decrease, so the
        // first one past the target is found by bisection.
        let mut total = 0.0;
        for w in weights.iter_mut() {
            total += w.max(0.0);
            *w = total;
        }
        let target = u * total;
        match weights.partition_point(|&sum| sum <= target) {
            i if i < weights.len() => i as u32,
            _ => last_kept as u32,
        }
    })
}

/// Choose the next token for a sequence from its logits.
pub fn sample(logits: &[f32], params: &SamplingParams, index: u64) -> u32 {
    choose(logits, Cuts::of(params), uniform(params.seed, index))
}

/// The token `cuts` choose from `logits` with the draw `u`: the most
/// likely one when the choice is greedy ([`Cuts::is_greedy`]), else the
/// nucleus draw. Every choice on the host ends here.
pub fn choose(logits: &[f32], cuts: Cuts, u: f64) -> u32 {
    if cuts.is_greedy() {
        return argmax(logits);
    }
    sample_nucleus(logits, cuts.temperature, cuts.top_k, cuts.top_p, cuts.min_p, u)
}

/// Deterministic pseudo-random logits in [-6, 6) (xorshift from `seed`):
/// the synthetic rows sampler benchmarks and tests run on.
pub fn synthetic_logits(seed: u64, vocab: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..vocab)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 12.0 - 6.0
        })
        .collect()
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

    /// The cuts done the obvious way: sort everything, then cut in order.
    fn nucleus_by_full_sort(logits: &[f32], temperature: f32, top_k: u32, top_p: f32, min_p: f32) -> Vec<u32> {
        let inv_t = 1.0 / temperature as f64;
        let mut all: Vec<(u32, f64)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, l as f64 * inv_t)).collect();
        all.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let top = all[0].1;
        all.iter_mut().for_each(|c| c.1 = (c.1 - top).exp());
        if top_k > 0 {
            all.truncate(top_k as usize);
        }
        all.retain(|c| c.1 >= min_p as f64);
        let total: f64 = all.iter().map(|c| c.1).sum();
        if top_p < 1.0 {
            let mut mass = 0.0;
            let keep = all.iter().position(|c| {
                mass += c.1;
                mass >= top_p as f64 * total
            });
            all.truncate(keep.map_or(all.len(), |i| i + 1));
        }
        all.into_iter().map(|c| c.0).collect()
    }

    #[test]
    fn the_partial_sorts_keep_exactly_the_full_sorts_nucleus() {
        for seed in 0..6u64 {
            // Flat rows (the whole vocabulary in the nucleus) and peaked ones.
            let flat = synthetic_logits(seed, 5000);
            let peaked: Vec<f32> = flat.iter().map(|l| l * 3.0).collect();
            for logits in [&flat, &peaked] {
                for (t, k, p, m) in [(1.0, 0, 1.0, 0.0), (0.7, 0, 0.9, 0.0), (1.3, 40, 0.95, 0.0), (1.0, 0, 0.5, 0.05), (1.0, 3000, 0.999, 0.0)] {
                    let ours: Vec<u32> = nucleus(logits, t, k, p, m).into_iter().map(|c| c.0).collect();
                    assert_eq!(ours, nucleus_by_full_sort(logits, t, k, p, m), "seed {seed}, t {t}, k {k}, p {p}, min-p {m}");
                }
            }
        }
    }

    /// Draw from weighted candidates with a uniform `u` in `[0, 1)`: the first
    /// whose cumulative weight exceeds `u × total`, summing in list order.
    fn draw(candidates: &[(u32, f64)], u: f64) -> u32 {
        let total: f64 = candidates.iter().map(|c| c.1).sum();
        let target = u * total;
        let mut acc = 0.0;
        for c in candidates {
            acc += c.1;
            if target < acc {
                return c.0;
            }
        }
        candidates.last().map_or(0, |c| c.0)
    }

    #[test]
    fn the_draw_sums_the_nucleus_in_token_order() {
        let mut logits = synthetic_logits(9, 3000);
        logits[17] = f32::NEG_INFINITY;
        for (t, k, p, m) in [(0.8, 0, 0.9, 0.0), (1.0, 0, 1.0, 0.0), (1.2, 50, 0.95, 0.0), (0.6, 0, 1.0, 0.02), (1.0, 700, 0.8, 0.001)] {
            let mut by_id = nucleus(&logits, t, k, p, m);
            by_id.sort_unstable_by_key(|c| c.0);
            for i in 0..50 {
                let u = uniform(5, i);
                assert_eq!(sample_nucleus(&logits, t, k, p, m, u), draw(&by_id, u), "t {t}, k {k}, p {p}, min-p {m}");
            }
        }
    }

    #[test]
    fn min_p_drops_tokens_far_below_the_top() {
        // Probabilities 0.6, 0.3, 0.1: min_p 0.4 keeps only ids 0 and 1.
        let logits = [0.6f32.ln(), 0.3f32.ln(), 0.1f32.ln()];
        let params = SamplingParams { temperature: 1.0, min_p: 0.4, seed: 1, ..SamplingParams::default() };
        let mut counts = [0usize; 3];
        for i in 0..3000 {
            counts[sample(&logits, &params, i) as usize] += 1;
        }
        assert_eq!(counts[2], 0);
        assert!(counts[1] > 800, "id 1 keeps a third of the mass: {counts:?}");
    }

    #[test]
    fn penalties_and_bias_move_the_logits_they_name() {
        let params = SamplingParams {
            presence_penalty: 0.5,
            frequency_penalty: 0.25,
            repetition_penalty: 2.0,
            logit_bias: vec![(3, -100.0)],
            ignore_eos: true,
            ..SamplingParams::default()
        };
        let mut logits = [1.0f32, -1.0, 2.0, 4.0, 0.5];
        // Prompt [0], generated [1, 1, 2]; token 4 is end-of-generation.
        let edits = param_edits(&params, &[0, 1, 1, 2], 1, &[4], logits.len());
        weft_types::logits::apply_edits(&mut logits, &edits);
        assert_eq!(logits[0], 0.5, "prompt token: repetition penalty only");
        assert_eq!(logits[1], -2.0 - 0.5 - 0.5, "generated twice: both penalties");
        assert_eq!(logits[2], 1.0 - 0.5 - 0.25);
        assert_eq!(logits[3], -96.0);
        assert_eq!(logits[4], f32::NEG_INFINITY);
    }

    #[test]
    fn top_logprobs_are_sorted_normalised_and_tie_stable() {
        let logits = [0.0f32, 2.0, 2.0, -1.0, 1.0];
        let rows = HostRows::one(logits.to_vec());
        let lp = rows.log_probs(0, 1, 3).unwrap();
        assert_eq!(lp.top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 2, 4]);
        let all: f32 = rows.log_probs(0, 0, 5).unwrap().top.iter().map(|t| t.1.exp()).sum();
        assert!((all - 1.0).abs() < 1e-6);
        assert!((lp.top[0].1 - logprob_of(&logits, 1)).abs() < 1e-7);
        assert_eq!(lp.token, lp.top[0].1);
        assert!(rows.log_probs(0, 3, 0).unwrap().top.is_empty());
    }

    #[test]
    fn draws_depend_only_on_seed_and_index() {
        assert_eq!(uniform(42, 5), uniform(42, 5));
        assert_ne!(uniform(42, 5), uniform(42, 6));
        assert_ne!(uniform(42, 5), uniform(43, 5));
    }
}
