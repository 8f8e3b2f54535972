//! The second half of a step: turning its logits rows into each
//! sequence's outcome. Prompt scores are read, late guides' sequences keep
//! their row, guides' answers are applied (a mask narrows the row, forced
//! tokens and the end skip the sampler), and each sampler is asked once for
//! all of its rows; every answer is checked like user input, and a failure
//! (the sampler's, a guide's, or the device's) ends only the sequences it
//! touched.

use weft_types::{DecisionError, GuideError, GuideStep, LogitsError, LogitsRows, SampleRow, SamplerError, SamplingParams, StopReason, TokenId};

use super::{Engine, Output, SamplerId, TokenFlags};
use crate::sampling::HostRows;
use crate::sequence::{PromptScore, Sequence};

impl Engine {
    /// Each planned sequence's output for a step whose forward pass left
    /// `logits` (the rows `flags` marks), its guides having been `asked`
    /// (slots of `plan`) for this step's answers.
    pub(super) fn decide(&mut self, plan: &[(usize, usize)], asked: &[usize], flags: TokenFlags, logits: &dyn LogitsRows) -> Vec<Output> {
        let mut guide_steps: Vec<Option<Result<GuideStep, GuideError>>> = (0..plan.len()).map(|_| None).collect();
        // Rows kept for sequences whose late guide has answered since.
        let mut held_rows: Vec<(usize, HostRows)> = Vec::new();
        let mut late: Vec<usize> = Vec::new();
        for (slot, &(i, n)) in plan.iter().enumerate() {
            let seq = &mut self.running[i];
            if asked.contains(&slot) && seq.guide_answer.is_none() {
                seq.awaiting_guide = true;
                self.stats.guide_stalls += 1;
                late.push(slot);
            } else if n == 0
                && let Some(row) = seq.held_row.take()
            {
                held_rows.push((slot, HostRows::one(row)));
            }
            if !late.contains(&slot) {
                guide_steps[slot] = seq.guide_answer.take();
            }
        }

        // Prompt scores, and which logits row each sampling sequence uses:
        // one of this step's, or the one it held for its late guide. A row
        // the device fails to hand over fails its sequence.
        let vocab = self.backend.config().vocab_size;
        let mut next_row = 0;
        let mut flags = flags.into_iter();
        let mut outputs = Vec::with_capacity(plan.len());
        let mut sample_rows: Vec<(usize, &dyn LogitsRows, usize)> = Vec::new();
        for (slot, &(i, n)) in plan.iter().enumerate() {
            let seq = &mut self.running[i];
            let mut out = Output { id: seq.id, prompt_tokens: seq.prompt_len, ..Output::default() };
            let last = seq.tokens.len() - 1;
            for (pos, has_logits) in flags.by_ref().take(n) {
                if !has_logits {
                    continue;
                }
                let row = next_row;
                next_row += 1;
                if seq.finished.is_some() {
                    continue;
                }
                if seq.score_prompt && pos + 1 < seq.prompt_len && pos >= seq.scored {
                    match logits.log_probs(row, seq.tokens[pos + 1], 1) {
                        Ok(lp) => out.prompt_scores.push(PromptScore { logprob: lp.token, argmax: lp.top[0].0, argmax_logprob: lp.top[0].1 }),
                        Err(e) => {
                            self.stats.backend_failures += 1;
                            fail_sequence(seq, &mut out, e.into());
                            continue;
                        }
                    }
                    seq.scored = pos + 1;
                }
                if pos == last {
                    if !late.contains(&slot) {
                        sample_rows.push((slot, logits, row));
                        continue;
                    }
                    match logits.row(row) {
                        Ok(logits) => seq.held_row = Some(logits.into_owned()),
                        Err(e) => {
                            self.stats.backend_failures += 1;
                            fail_sequence(seq, &mut out, e.into());
                        }
                    }
                }
            }
            if let Some((_, held)) = held_rows.iter().find(|(s, _)| *s == slot) {
                sample_rows.push((slot, held, 0));
            }
            outputs.push(out);
        }

        // Apply each guide's answer: a mask rules tokens out of the row the
        // sampler sees; a forced token or the end skips the sampler.
        let mut masks: Vec<(usize, Vec<u32>)> = Vec::new();
        let mut unsampled: Vec<usize> = Vec::new();
        for &(slot, rows, row) in &sample_rows {
            let Some(step) = guide_steps[slot].take() else { continue };
            let seq = &mut self.running[plan[slot].0];
            match step.and_then(|step| checked_step(step, vocab)) {
                Ok(GuideStep::Mask(words)) => masks.push((slot, words)),
                Ok(GuideStep::Force(tokens)) => {
                    // The whole forced run is appended now (the next step
                    // computes it like a prefill chunk), unless the request
                    // reports log-probabilities: only the first token has
                    // its row here.
                    let out = &mut outputs[slot];
                    unsampled.push(slot);
                    let reported = seq.params.reports_logprobs();
                    if reported && let Err(e) = report_logprobs(rows, row, tokens[0], &seq.params, out) {
                        self.stats.backend_failures += 1;
                        fail_sequence(seq, out, e.into());
                        continue;
                    }
                    let run = if reported { &tokens[..1] } else { &tokens[..] };
                    out.tokens.extend_from_slice(run);
                    out.logprobs.resize(run.len(), f32::NAN);
                }
                Ok(GuideStep::Stop) => {
                    seq.finished = Some(StopReason::Stop);
                    outputs[slot].text = seq.flush();
                    outputs[slot].finished = seq.finished;
                    unsampled.push(slot);
                }
                Err(e) => {
                    self.stats.guide_failures += 1;
                    fail_sequence(seq, &mut outputs[slot], e.into());
                    unsampled.push(slot);
                }
            }
        }
        sample_rows.retain(|(slot, ..)| !unsampled.contains(slot));

        // One call per sampler for all of its rows in the batch; its answer
        // is checked like user input, and a failure fails only the rows it
        // was asked about.
        let mut sampler_ids: Vec<SamplerId> = sample_rows.iter().map(|&(slot, ..)| self.running[plan[slot].0].sampler).collect();
        sampler_ids.sort_unstable();
        sampler_ids.dedup();
        for sampler_id in sampler_ids {
            let mine: Vec<(usize, &dyn LogitsRows, usize)> =
                sample_rows.iter().copied().filter(|&(slot, ..)| self.running[plan[slot].0].sampler == sampler_id).collect();
            let rows: Vec<SampleRow<'_>> = mine
                .iter()
                .map(|&(slot, logits, row)| {
                    let seq = &self.running[plan[slot].0];
                    let mask = masks.iter().find(|(s, _)| *s == slot).map(|(_, words)| words.as_slice());
                    SampleRow { logits, row, mask, params: &seq.params, tokens: &seq.tokens, prompt_len: seq.prompt_len }
                })
                .collect();
            let chosen = match self.samplers[sampler_id].as_mut() {
                Some(sampler) => sampler
                    .sample(&rows, self.tokenizer.eog_tokens())
                    .and_then(|tokens| validate_choice(sampler.name(), tokens, rows.len(), vocab)),
                None => Err(SamplerError::Fault { sampler: format!("#{sampler_id}"), message: "the sampler was dropped".into() }),
            };
            drop(rows);
            match chosen {
                Ok(tokens) => {
                    for (&(slot, rows, row), token) in mine.iter().zip(tokens) {
                        let seq = &mut self.running[plan[slot].0];
                        let out = &mut outputs[slot];
                        // Log-probabilities come from the model's own
                        // distribution, a pass over the vocabulary per row:
                        // only when asked.
                        if seq.params.reports_logprobs() {
                            if let Err(e) = report_logprobs(rows, row, token, &seq.params, out) {
                                self.stats.backend_failures += 1;
                                fail_sequence(seq, out, e.into());
                                continue;
                            }
                        } else {
                            out.logprobs.push(f32::NAN);
                        }
                        out.tokens.push(token);
                    }
                }
                Err(e) => {
                    if matches!(e, SamplerError::Logits(_)) {
                        self.stats.backend_failures += 1;
                    } else {
                        self.stats.sampler_failures += 1;
                    }
                    for &(slot, ..) in &mine {
                        fail_sequence(&mut self.running[plan[slot].0], &mut outputs[slot], e.clone().into());
                    }
                }
            }
        }
        outputs
    }
}

/// Report `token`'s log-probability (and the top alternatives' when asked)
/// from row `row` of `rows`: the model's own distribution, before any mask
/// or edit.
fn report_logprobs(rows: &dyn LogitsRows, row: usize, token: TokenId, params: &SamplingParams, out: &mut Output) -> Result<(), LogitsError> {
    let lp = rows.log_probs(row, token, params.top_logprobs as usize)?;
    out.logprobs.push(lp.token);
    if params.top_logprobs > 0 {
        out.top_logprobs.push(lp.top);
    }
    Ok(())
}

/// End `seq` with `error` (its guide's, its sampler's, or the device's that
/// holds its logits).
fn fail_sequence(seq: &mut Sequence, out: &mut Output, error: DecisionError) {
    seq.finished = Some(StopReason::Error);
    out.finished = seq.finished;
    out.error = Some(error);
}

/// Check a sampler's answer: one token per row, each in the vocabulary.
fn validate_choice(sampler: &str, tokens: Vec<u32>, rows: usize, vocab: usize) -> Result<Vec<u32>, SamplerError> {
    let fault = |message: String| SamplerError::Fault { sampler: sampler.to_string(), message };
    if tokens.len() != rows {
        return Err(fault(format!("returned {} tokens for {rows} rows", tokens.len())));
    }
    if let Some(&t) = tokens.iter().find(|&&t| t as usize >= vocab) {
        return Err(fault(format!("returned token {t}, outside the vocabulary of {vocab}")));
    }
    Ok(tokens)
}

/// Check a guide's answer like user input: a mask of the vocabulary's
/// length that allows something, forced tokens that exist.
fn checked_step(step: GuideStep, vocab: usize) -> Result<GuideStep, GuideError> {
    let fault = |message: String| GuideError::Fault { guide: "guide".into(), message };
    match &step {
        GuideStep::Mask(words) if words.len() != vocab.div_ceil(32) => {
            Err(fault(format!("returned a mask of {} words for a vocabulary of {vocab}", words.len())))
        }
        GuideStep::Mask(words) if (0..vocab).all(|t| words[t / 32] >> (t % 32) & 1 == 0) => {
            Err(fault("returned a mask that allows no token".into()))
        }
        GuideStep::Force(tokens) if tokens.is_empty() => Err(fault("forced an empty list of tokens".into())),
        GuideStep::Force(tokens) if tokens.iter().any(|&t| t as usize >= vocab) => {
            Err(fault(format!("forced a token outside the vocabulary of {vocab}")))
        }
        _ => Ok(step),
    }
}
