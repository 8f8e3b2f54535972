//! Tokens chosen where the logits are (on the GPU) against the host's
//! choice over the same rows: the same token for every greedy pick, with
//! or without a guide's mask and edits; for sampled picks, always a token
//! of the host's nucleus, and the host's own token in at least 99% of
//! draws (the device sums weights in another order, so a draw that lands
//! within rounding of a boundary may move). The same holds on synthetic
//! rows full of exact ties and signed zeros, and the device gives the
//! same tokens every time. Log-probabilities read on the device, and a
//! plugin's top-k over an edited row, match the host's.

use weft_engine::sampling::{HostRows, param_edits, synthetic_logits, uniform};
use weft_types::{Cuts, LogitEdit, LogitsRows, Pick, SamplingParams, TokenId};

use crate::common::{CUTS, all_logits_rows, check_against_host, cuda, default_model, have_gpu, on_host};

/// The default model's logits at every position of `text` on the GPU, the
/// same rows on the host, and the tokens; None (after saying why) without
/// a GPU.
fn rows_of(test: &str, text: &str) -> Option<(Box<dyn LogitsRows>, HostRows, Vec<TokenId>)> {
    if !have_gpu(test) {
        return None;
    }
    let m = default_model();
    let mut backend = cuda(test, &m.model, None)?;
    let tokens = m.tokenizer.encode(text, false).unwrap();
    let device = all_logits_rows(&mut backend, &tokens);
    let host = HostRows::new(on_host(&*device), m.model.config.vocab_size);
    assert_eq!(device.len(), tokens.len());
    Some((device, host, tokens))
}

#[test]
fn device_choices_match_the_hosts_over_the_parameter_grid() {
    let Some((device, host, tokens)) = rows_of("sampling::grid", "The quick brown fox jumps over the lazy dog, and then it") else {
        return;
    };
    let m = default_model();
    let vocab = m.model.config.vocab_size;

    // Edits as a sequence's own parameters make them, and a guide's mask
    // that allows every other token (so the top token is often ruled out).
    let penalised = SamplingParams {
        presence_penalty: 0.5,
        frequency_penalty: 0.3,
        repetition_penalty: 1.3,
        logit_bias: vec![(tokens[1], 4.0), (tokens[2], -100.0)],
        ignore_eos: true,
        ..SamplingParams::default()
    };
    let edits: Vec<(TokenId, LogitEdit)> = param_edits(&penalised, &tokens, 4, m.tokenizer.eog_tokens(), vocab);
    assert!(edits.len() > 10);
    let mask: Vec<u32> = (0..vocab.div_ceil(32)).map(|w| if w % 3 == 0 { 0x5555_5555 } else { 0xaaaa_aaaa }).collect();
    let mut picks = Vec::new();
    for row in 0..device.len() {
        for &(temperature, top_k, top_p, min_p) in &CUTS {
            for with_edits in [false, true] {
                for masked in [false, true] {
                    for draw in 0..4u64 {
                        picks.push(Pick {
                            row,
                            mask: masked.then_some(mask.as_slice()),
                            edits: if with_edits { &edits } else { &[] },
                            cuts: Cuts { temperature, top_k, top_p, min_p },
                            uniform: uniform(row as u64, draw),
                        });
                    }
                }
            }
        }
    }
    let ours = device.choose(&picks).unwrap();
    let (sampled, same) = check_against_host(&host, &picks, &ours);
    let greedy = picks.len() - sampled;
    println!("RESULT device sampling: {greedy}/{greedy} greedy picks exact, {same}/{sampled} sampled picks the host's token, all inside its nucleus");
}

#[test]
fn device_log_probabilities_match_the_hosts() {
    let text = "Log-probabilities of a short sentence, read where the logits are.";
    let Some((logits, host, tokens)) = rows_of("sampling::log_probs", text) else { return };
    let vocab = host.vocab();
    let mut worst = 0.0f32;
    for row in 0..logits.len() {
        // The next token (often among the top 5), and a token far down the row.
        for token in [tokens.get(row + 1).copied().unwrap_or(0), (vocab - 1) as TokenId] {
            let ours = logits.log_probs(row, token, 5).unwrap();
            let reference = host.log_probs(row, token, 5).unwrap();
            assert_eq!(ours.top.iter().map(|t| t.0).collect::<Vec<_>>(), reference.top.iter().map(|t| t.0).collect::<Vec<_>>(), "row {row}");
            for (a, b) in std::iter::once((ours.token, reference.token)).chain(ours.top.iter().zip(&reference.top).map(|(a, b)| (a.1, b.1))) {
                worst = worst.max((a - b).abs());
            }
        }
    }
    println!("RESULT device sampling: log-probabilities of {} rows within {worst:.1e} of the host's", logits.len());
    assert!(worst < 1e-4, "largest difference {worst}");
}

/// Rows whose logits take few distinct values (ties at every cut, and
/// zeros of both signs), from the engine's synthetic generator.
fn tied_rows(rows: usize, vocab: usize) -> Vec<f32> {
    (0..rows as u64)
        .flat_map(|r| synthetic_logits(r + 1, vocab))
        .enumerate()
        .map(|(i, l)| {
            let v = (l * 2.0).round() / 2.0;
            if v == 0.0 && i % 2 == 1 { -0.0 } else { v }
        })
        .collect()
}

#[test]
fn device_choices_on_tied_rows_are_the_hosts_and_repeat_exactly() {
    if !have_gpu("sampling::ties") {
        return;
    }
    let k = weft_kernels_cuda::CudaKernels::new(0).unwrap();
    let (rows, vocab) = (8usize, 49_152usize);
    let data = tied_rows(rows, vocab);
    assert!(data.iter().any(|v| v.to_bits() == (-0.0f32).to_bits()) && data.iter().any(|v| v.to_bits() == 0), "zeros of both signs");
    let host = HostRows::new(data.clone(), vocab);
    let device = k.upload(&data).unwrap();
    let mut picks = Vec::new();
    for row in 0..rows {
        for &(temperature, top_k, top_p, min_p) in &CUTS {
            for draw in 0..8u64 {
                picks.push(Pick { row, mask: None, edits: &[], cuts: Cuts { temperature, top_k, top_p, min_p }, uniform: uniform(99 + row as u64, draw) });
            }
        }
    }
    let ours = k.choose_tokens(&device, rows, vocab, &picks).unwrap();
    assert_eq!(k.choose_tokens(&device, rows, vocab, &picks).unwrap(), ours, "the same picks give the same tokens");
    let (sampled, same) = check_against_host(&host, &picks, &ours);
    println!("RESULT device sampling: tied rows, {same}/{sampled} sampled picks the host's token, all inside its nucleus, repeated exactly");
}

#[test]
fn a_plugins_top_k_runs_on_the_device_as_on_the_host() {
    let Some((device, host, tokens)) = rows_of("sampling::top_k", "A sampler plugin asks for the most likely tokens of a row.") else {
        return;
    };
    let vocab = host.vocab();
    let params = SamplingParams { repetition_penalty: 1.5, logit_bias: vec![(tokens[0], 50.0)], ..SamplingParams::default() };
    let edits = param_edits(&params, &tokens, 2, &[], vocab);
    let mask: Vec<u32> = (0..vocab.div_ceil(32)).map(|w| if w % 2 == 0 { u32::MAX } else { 0x0000_ffff }).collect();
    for row in 0..device.len() {
        for (mask, edits) in [(None, &[][..]), (Some(&mask[..]), &edits[..])] {
            for k in [1, 5, 40, 300] {
                let ours = device.top_k(row, mask, edits, k).unwrap();
                let reference = host.top_k(row, mask, edits, k).unwrap();
                assert_eq!(ours.iter().map(|t| t.0).collect::<Vec<_>>(), reference.iter().map(|t| t.0).collect::<Vec<_>>(), "row {row}, k {k}");
                assert!(ours.iter().zip(&reference).all(|(a, b)| a.1 == b.1), "the edited logits themselves, row {row}, k {k}");
            }
        }
    }
    println!("RESULT device sampling: a plugin's top-k over {} rows, raw and masked-and-edited, k up to 300, the host's tokens and logits", device.len());
}
