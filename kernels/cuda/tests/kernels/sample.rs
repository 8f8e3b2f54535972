//! GPU top-k with log-softmax against a sorted f64 reference.

use crate::common::{Rng, check, gpu};

fn case(rows: usize, vocab: usize, k_top: usize, seed: u64) {
    let k = gpu("top_k").expect("checked by caller");
    let mut rng = Rng::new(seed);
    let mut logits = rng.vec(rows * vocab, 12.0);
    // Masked entries (logit bias −inf) in row 0 must not break the softmax;
    // they stay out of the top k (whose log-probabilities must be finite).
    if k_top + 100 < vocab {
        for _ in 0..100 {
            logits[rng.below(vocab)] = f32::NEG_INFINITY;
        }
    }
    let dev = k.upload(&logits).unwrap();
    let got = k.top_k_logprobs(&dev, 0..rows, vocab, k_top).unwrap();
    assert_eq!(got.len(), rows);
    // A later range reads the same rows.
    assert_eq!(k.top_k_logprobs(&dev, rows - 1..rows, vocab, k_top).unwrap()[0], got[rows - 1]);
    let (mut got_lp, mut want_lp) = (Vec::new(), Vec::new());
    for r in 0..rows {
        let row = &logits[r * vocab..(r + 1) * vocab];
        let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
        let lse = m + row.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
        let mut idx: Vec<usize> = (0..vocab).collect();
        idx.sort_by(|&a, &b| row[b].partial_cmp(&row[a]).unwrap().then(a.cmp(&b)));
        let want_ids: Vec<u32> = idx[..k_top].iter().map(|&i| i as u32).collect();
        assert_eq!(got[r].ids, want_ids, "row {r}: top-{k_top} ids differ");
        let want_logits: Vec<f32> = idx[..k_top].iter().map(|&i| row[i]).collect();
        assert_eq!(
            got[r].logits, want_logits,
            "row {r}: logits must be copied exactly"
        );
        let lse_err = (got[r].logsumexp as f64 - lse).abs() / lse.abs();
        assert!(
            lse_err < 1e-6,
            "row {r}: logsumexp {} vs {lse} (rel {lse_err:e})",
            got[r].logsumexp
        );
        got_lp.extend_from_slice(&got[r].logprobs);
        want_lp.extend(idx[..k_top].iter().map(|&i| row[i] as f64 - lse));
    }
    check(
        "top_k_logprobs",
        &format!("rows{rows} vocab{vocab} k{k_top}"),
        &got_lp,
        &want_lp,
        1e-5,
    );
}

#[test]
fn top_k_logprobs_match_sorted_f64_reference() {
    if gpu("top_k_logprobs_match_sorted_f64_reference").is_none() {
        return;
    }
    case(3, 49_152, 20, 0x5EED_0030); // SmolLM2 vocabulary, OpenAI's top_logprobs maximum
    case(2, 49_152, 64, 0x5EED_0031);
    case(2, 128_256, 256, 0x5EED_0032); // Llama 3 vocabulary, the largest k
    case(1, 256, 256, 0x5EED_0033); // k = vocab: a full sort
}
