//! GPU top-k with log-softmax against a sorted f64 reference.

use weft_kernels_cuda::TopK;

use crate::common::{Rng, check, gpu};

/// `rows × vocab` random logits; where the vocabulary leaves room, 100
/// entries are masked (logit bias −inf): they must not break the softmax
/// and stay out of the top `k_top` (whose log-probabilities must be finite).
pub fn random_logits(rng: &mut Rng, rows: usize, vocab: usize, k_top: usize) -> Vec<f32> {
    let mut logits = rng.vec(rows * vocab, 12.0);
    if k_top + 100 < vocab {
        for _ in 0..100 {
            logits[rng.below(vocab)] = f32::NEG_INFINITY;
        }
    }
    logits
}

/// Check `got` (one [`TopK`] per row of `logits`) against a sorted f64
/// reference: the same ids and logits exactly, log-sum-exp within 1e-6 and
/// log-probabilities within 1e-5 (relative).
pub fn check_top_k(case: &str, logits: &[f32], vocab: usize, k_top: usize, got: &[TopK]) {
    let rows = logits.len() / vocab;
    assert_eq!(got.len(), rows);
    let (mut got_lp, mut want_lp) = (Vec::new(), Vec::new());
    for r in 0..rows {
        let row = &logits[r * vocab..(r + 1) * vocab];
        let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
        let lse = m + row.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
        let mut idx: Vec<usize> = (0..vocab).collect();
        idx.sort_by(|&a, &b| row[b].partial_cmp(&row[a]).unwrap().then(a.cmp(&b)));
        let want_ids: Vec<u32> = idx[..k_top].iter().map(|&i| i as u32).collect();
        assert_eq!(got[r].ids, want_ids, "{case} row {r}: top-{k_top} ids differ");
        let want_logits: Vec<f32> = idx[..k_top].iter().map(|&i| row[i]).collect();
        assert_eq!(got[r].logits, want_logits, "{case} row {r}: logits must be copied exactly");
        let lse_err = (got[r].logsumexp as f64 - lse).abs() / lse.abs();
        assert!(lse_err < 1e-6, "{case} row {r}: logsumexp {} vs {lse} (rel {lse_err:e})", got[r].logsumexp);
        got_lp.extend_from_slice(&got[r].logprobs);
        want_lp.extend(idx[..k_top].iter().map(|&i| row[i] as f64 - lse));
    }
    check("top_k_logprobs", case, &got_lp, &want_lp, 1e-5);
}

fn case(rows: usize, vocab: usize, k_top: usize, seed: u64) {
    let k = gpu("top_k").expect("checked by caller");
    let mut rng = Rng::new(seed);
    let logits = random_logits(&mut rng, rows, vocab, k_top);
    let dev = k.upload(&logits).unwrap();
    let got = k.top_k_logprobs(&dev, 0..rows, vocab, k_top).unwrap();
    // A later range reads the same rows.
    assert_eq!(k.top_k_logprobs(&dev, rows - 1..rows, vocab, k_top).unwrap()[0], got[rows - 1]);
    check_top_k(&format!("rows{rows} vocab{vocab} k{k_top}"), &logits, vocab, k_top, &got);
}

#[test]
fn top_k_logprobs_match_sorted_f64_reference() {
    if gpu("top_k_logprobs_match_sorted_f64_reference").is_none() {
        return;
    }
    case(3, 49_152, 20, 0x5EED_0030); // SmolLM2 vocabulary, OpenAI's top_logprobs maximum
    case(2, 49_152, 64, 0x5EED_0031);
    case(2, 128_256, 256, 0x5EED_0032); // Llama 3 vocabulary, the largest k
    case(1, 128_256, 192, 0x5EED_0034); // 48 KB of candidates in chunks of 4096: takes 8192
    case(1, 256, 256, 0x5EED_0033); // k = vocab: a full sort
}
