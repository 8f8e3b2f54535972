//! The `batch` resource: one engine step's rows as a sampler sees them.
//!
//! The rows stay where the engine's backend left them (host memory, or the
//! GPU); the store holds a [`StepView`] onto them only for the duration of
//! one `choose` call. The raw logits (which log-probabilities are reported
//! from) are never changed: a row's adjustments are kept as a list of
//! sparse edits. A choice (`choose-rows`, `sample-by-params`, `sample`)
//! and `top-k` hand the edits, the guide's mask (and the cuts) to the
//! rows' owner, which applies them to its own copy of the row where the
//! row is: on the CUDA backend no row crosses to the host. Reads of a
//! whole row (`logits`, `nucleus`) build the edited row on the host, in
//! one scratch buffer shared by all rows; going back to an earlier row
//! rebuilds it. Every
//! argument from the guest is checked: a row or token out of range, a
//! non-finite temperature or an oversized list traps the call.

use std::borrow::Cow;

use wasmtime::component::Resource;
use wasmtime::{Result, bail};
use weft_engine::sampling::{param_edits, repeat_edits, uniform};
use weft_types::logits::{edit_row, edited_row};
use weft_types::{LogitEdit, LogitsError, LogitsRows, Pick, SampleRow, TokenId, choose_across};

use crate::bindings::weft::plugin::sampling::{Candidate, Cuts, Host, HostBatch, Params};
use crate::sandbox::StoreState;

/// The resource's representation; its data is the store's [`StepView`].
#[derive(Debug)]
pub struct BatchHandle;

/// Edits a row may collect in one call, per token of the vocabulary: a
/// policy that bans, biases and penalises every token once (the standard
/// penalties count one edit per distinct token they touch) stays well
/// inside; a guest that loops on `adjust` traps instead of growing the
/// host's memory.
const EDITS_PER_VOCAB_ENTRY: usize = 4;

/// The buffers a view works in, kept by the store between calls so a step
/// allocates nothing once the first has run.
#[derive(Debug, Default)]
pub struct StepBuffers {
    edits: Vec<Vec<(TokenId, LogitEdit)>>,
    scratch: Vec<f32>,
}

/// The rows of the call in progress.
pub struct StepView {
    rows: *const SampleRow<'static>,
    len: usize,
    eos: Vec<u32>,
    vocab: usize,
    /// Each row's edits so far, in order; none: the raw row.
    edits: Vec<Vec<(TokenId, LogitEdit)>>,
    /// The row `built` names on the host: its logits with its mask and
    /// edits applied.
    scratch: Vec<f32>,
    built: Option<u32>,
    /// The device holding the logits failed during this call (the guest
    /// trapped because of it, through no fault of its own).
    device_error: Option<LogitsError>,
}

// SAFETY: the pointer is only dereferenced on the thread running the
// plugin call, while the engine's borrow of the rows is alive (see
// `StepView::new`).
unsafe impl Send for StepView {}

impl StepView {
    /// A view of `rows` for one call, working in `buffers`.
    ///
    /// # Safety
    /// The caller must remove the view from the store before `rows` is
    /// dropped or mutated, on every path (including traps).
    pub unsafe fn new(rows: &[SampleRow<'_>], eos: &[u32], buffers: StepBuffers) -> Self {
        let vocab = rows.first().map_or(0, |r| r.vocab());
        // Only ids the guest may hand back to `ban` without trapping.
        let eos = eos.iter().copied().filter(|&t| (t as usize) < vocab).collect();
        let StepBuffers { mut edits, scratch } = buffers;
        edits.iter_mut().for_each(Vec::clear);
        edits.resize_with(rows.len(), Vec::new);
        Self { rows: rows.as_ptr().cast(), len: rows.len(), eos, vocab, edits, scratch, built: None, device_error: None }
    }

    /// The buffers, for the next call's view, and the device's failure if
    /// one ended the call.
    pub fn finish(self) -> (StepBuffers, Option<LogitsError>) {
        (StepBuffers { edits: self.edits, scratch: self.scratch }, self.device_error)
    }

    fn row(&self, row: u32) -> Result<&SampleRow<'static>> {
        if row as usize >= self.len {
            bail!("row {row} is out of range: the batch has {} rows", self.len);
        }
        // SAFETY: in bounds, and alive for the call (`new`'s contract).
        Ok(unsafe { &*self.rows.add(row as usize) })
    }

    /// Remember the device's failure and trap the call with it.
    fn device_failed(&mut self, e: LogitsError) -> wasmtime::Error {
        self.device_error = Some(e.clone());
        wasmtime::Error::msg(e)
    }

    /// The row's logits on the host, with its mask and edits applied.
    fn logits(&mut self, row: u32) -> Result<&[f32]> {
        if self.built == Some(row) {
            return Ok(&self.scratch);
        }
        let r = *self.row(row)?;
        let raw = r.logits.row(r.row).map_err(|e| self.device_failed(e))?;
        let edits = &self.edits[row as usize];
        match raw {
            Cow::Borrowed(raw) if edits.is_empty() && r.mask.is_none() => return Ok(raw),
            Cow::Borrowed(raw) => edited_row(&mut self.scratch, raw, r.mask, edits),
            // A row copied from the device is edited where it landed.
            Cow::Owned(mut copied) => {
                edit_row(&mut copied, r.mask, edits);
                self.scratch = copied;
            }
        }
        self.built = Some(row);
        Ok(&self.scratch)
    }

    /// Record `edits` to `row`, applying them now only if the scratch
    /// holds it: a policy that edits every row before choosing any builds
    /// no row at all when it chooses with `choose-rows`.
    fn edit(&mut self, row: u32, edits: impl ExactSizeIterator<Item = (TokenId, LogitEdit)>) -> Result<()> {
        let limit = EDITS_PER_VOCAB_ENTRY * self.vocab.max(1);
        self.row(row)?;
        let log = &mut self.edits[row as usize];
        if log.len() + edits.len() > limit {
            bail!("more than {limit} edits to row {row} in one call");
        }
        let built = self.built == Some(row);
        for (t, edit) in edits {
            if built {
                self.scratch[t as usize] = edit.apply(self.scratch[t as usize]);
            }
            log.push((t, edit));
        }
        Ok(())
    }

    /// The row's `k` largest logits with its mask and edits applied: from
    /// the scratch when it holds the row, else where the rows are.
    fn top_k(&mut self, row: u32, k: usize) -> Result<Vec<(TokenId, f32)>> {
        if self.built == Some(row) {
            return Ok(weft_engine::sampling::largest(&self.scratch, k));
        }
        let r = *self.row(row)?;
        r.logits.top_k(r.row, r.mask, &self.edits[row as usize], k).map_err(|e| self.device_failed(e))
    }

    /// One token per `(row, cuts)`, chosen where the rows are (on the
    /// device for the CUDA backend) with each row's edits and draw.
    fn choose(&mut self, choices: &[(u32, weft_types::Cuts)]) -> Result<Vec<u32>> {
        let mut picks: Vec<(&dyn LogitsRows, Pick<'_>)> = Vec::with_capacity(choices.len());
        for &(row, cuts) in choices {
            let r = self.row(row)?;
            let u = uniform(r.params.seed, r.position());
            picks.push((r.logits, r.pick(&self.edits[row as usize], cuts, u)));
        }
        match choose_across(&picks) {
            Ok(tokens) => Ok(tokens),
            Err(e) => Err(self.device_failed(e)),
        }
    }

    /// A batch-wide call takes at most one entry per row of the batch.
    fn check_rows(&self, n: usize) -> Result<()> {
        if n > self.len {
            bail!("{n} rows in one call; the batch has {}", self.len);
        }
        Ok(())
    }

    fn check_tokens(&self, tokens: impl IntoIterator<Item = u32>, count: usize, limit: usize) -> Result<()> {
        if count > limit {
            bail!("{count} entries in one call; the limit is {limit}");
        }
        if let Some(t) = tokens.into_iter().find(|&t| t as usize >= self.vocab) {
            bail!("token {t} is outside the vocabulary of {}", self.vocab);
        }
        Ok(())
    }
}

impl StoreState {
    fn view(&self) -> Result<&StepView> {
        match &self.step {
            Some(v) => Ok(v),
            None => bail!("the batch is used outside its call"),
        }
    }

    fn view_mut(&mut self) -> Result<&mut StepView> {
        match &mut self.step {
            Some(v) => Ok(v),
            None => bail!("the batch is used outside its call"),
        }
    }
}

impl Host for StoreState {}

impl crate::bindings::weft::plugin::types::Host for StoreState {}

impl HostBatch for StoreState {
    fn size(&mut self, _: Resource<BatchHandle>) -> Result<u32> {
        Ok(self.view()?.len as u32)
    }

    fn vocab_size(&mut self, _: Resource<BatchHandle>) -> Result<u32> {
        Ok(self.view()?.vocab as u32)
    }

    fn params(&mut self, _: Resource<BatchHandle>, row: u32) -> Result<Params> {
        Ok(params_of(self.view()?.row(row)?))
    }

    fn all_params(&mut self, _: Resource<BatchHandle>) -> Result<Vec<Params>> {
        let view = self.view()?;
        (0..view.len as u32).map(|row| Ok(params_of(view.row(row)?))).collect()
    }

    fn position(&mut self, _: Resource<BatchHandle>, row: u32) -> Result<u64> {
        Ok(self.view()?.row(row)?.position())
    }

    fn uniform(&mut self, _: Resource<BatchHandle>, row: u32) -> Result<f64> {
        let r = self.view()?.row(row)?;
        Ok(uniform(r.params.seed, r.position()))
    }

    fn history(&mut self, _: Resource<BatchHandle>, row: u32, max: u32, output_only: bool) -> Result<Vec<u32>> {
        let r = self.view()?.row(row)?;
        let tokens = if output_only { &r.tokens[r.prompt_len.min(r.tokens.len())..] } else { r.tokens };
        Ok(tokens[tokens.len().saturating_sub(max as usize)..].to_vec())
    }

    fn eos_tokens(&mut self, _: Resource<BatchHandle>) -> Result<Vec<u32>> {
        Ok(self.view()?.eos.clone())
    }

    fn adjust(&mut self, _: Resource<BatchHandle>, row: u32, deltas: Vec<(u32, f32)>) -> Result<()> {
        // Penalties name each distinct token of the sequence once, so the
        // sequence's length bounds a legitimate list too.
        let limit = self.host_list_entries.max(self.view()?.row(row)?.tokens.len());
        let view = self.view_mut()?;
        view.check_tokens(deltas.iter().map(|d| d.0), deltas.len(), limit)?;
        if let Some((t, d)) = deltas.iter().find(|d| !d.1.is_finite()) {
            bail!("adjustment {d} for token {t} is not finite");
        }
        view.edit(row, deltas.into_iter().map(|(t, d)| (t, LogitEdit::Add(d))))
    }

    fn penalize(&mut self, _: Resource<BatchHandle>, row: u32, tokens: Vec<u32>, penalty: f32) -> Result<()> {
        if !(penalty.is_finite() && penalty > 0.0) {
            bail!("the penalty must be finite and positive; given {penalty}");
        }
        let limit = self.host_list_entries.max(self.view()?.row(row)?.tokens.len());
        let view = self.view_mut()?;
        view.check_tokens(tokens.iter().copied(), tokens.len(), limit)?;
        view.edit(row, tokens.into_iter().map(|t| (t, LogitEdit::Penalize(penalty))))
    }

    fn penalize_repeats(&mut self, _: Resource<BatchHandle>, row: u32, repetition: f32, presence: f32, frequency: f32) -> Result<()> {
        if !(repetition.is_finite() && repetition > 0.0) {
            bail!("the repetition penalty must be finite and positive; given {repetition}");
        }
        if !(presence.is_finite() && frequency.is_finite()) {
            bail!("the presence and frequency penalties must be finite; given {presence} and {frequency}");
        }
        let view = self.view_mut()?;
        let r = *view.row(row)?;
        let mut edits = Vec::new();
        repeat_edits(repetition, presence, frequency, r.tokens, r.prompt_len, &mut edits);
        // The sequence's tokens are the engine's, inside the vocabulary.
        view.edit(row, edits.into_iter())
    }

    fn ban(&mut self, _: Resource<BatchHandle>, row: u32, tokens: Vec<u32>) -> Result<()> {
        let limit = self.host_list_entries;
        let view = self.view_mut()?;
        view.check_tokens(tokens.iter().copied(), tokens.len(), limit)?;
        view.edit(row, tokens.into_iter().map(|t| (t, LogitEdit::Ban)))
    }

    fn top_k(&mut self, _: Resource<BatchHandle>, row: u32, k: u32) -> Result<Vec<Candidate>> {
        let top = self.view_mut()?.top_k(row, k as usize)?;
        let max = top.first().map_or(0.0, |c| c.1 as f64);
        Ok(top.into_iter().map(|(token, logit)| Candidate { token, logit, weight: (logit as f64 - max).exp() }).collect())
    }

    fn nucleus(&mut self, _: Resource<BatchHandle>, row: u32, temperature: f32, top_k: u32, top_p: f32, min_p: f32) -> Result<Vec<Candidate>> {
        check_cuts(temperature, top_p, min_p)?;
        let logits = self.view_mut()?.logits(row)?;
        Ok(weft_engine::sampling::nucleus(logits, temperature, top_k, top_p, min_p)
            .into_iter()
            .map(|(token, weight)| Candidate { token, logit: logits[token as usize], weight })
            .collect())
    }

    fn sample(&mut self, _: Resource<BatchHandle>, row: u32, temperature: f32, top_k: u32, top_p: f32, min_p: f32) -> Result<u32> {
        check_cuts(temperature, top_p, min_p)?;
        let cuts = weft_types::Cuts { temperature, top_k, top_p, min_p };
        Ok(self.view_mut()?.choose(&[(row, cuts)])?[0])
    }

    fn choose_rows(&mut self, _: Resource<BatchHandle>, choices: Vec<(u32, Cuts)>) -> Result<Vec<u32>> {
        let view = self.view_mut()?;
        view.check_rows(choices.len())?;
        let choices = choices
            .into_iter()
            .map(|(row, c)| {
                if !weft_types::is_greedy_choice(c.temperature, c.top_k) {
                    check_cuts(c.temperature, c.top_p, c.min_p)?;
                }
                Ok((row, c.into()))
            })
            .collect::<Result<Vec<_>>>()?;
        view.choose(&choices)
    }

    fn sample_by_params(&mut self, _: Resource<BatchHandle>, rows: Vec<u32>) -> Result<Vec<u32>> {
        let view = self.view_mut()?;
        view.check_rows(rows.len())?;
        let mut choices = Vec::with_capacity(rows.len());
        for row in rows {
            let r = *view.row(row)?;
            if r.params.adjusts_logits() {
                let edits = param_edits(r.params, r.tokens, r.prompt_len, &view.eos, view.vocab);
                view.edit(row, edits.into_iter())?;
            }
            choices.push((row, weft_types::Cuts::of(r.params)));
        }
        view.choose(&choices)
    }

    fn logits(&mut self, _: Resource<BatchHandle>, row: u32) -> Result<Vec<f32>> {
        Ok(self.view_mut()?.logits(row)?.to_vec())
    }

    fn drop(&mut self, handle: Resource<BatchHandle>) -> Result<()> {
        self.table.delete(handle)?;
        Ok(())
    }
}

impl From<Cuts> for weft_types::Cuts {
    fn from(c: Cuts) -> Self {
        Self { temperature: c.temperature, top_k: c.top_k, top_p: c.top_p, min_p: c.min_p }
    }
}

fn params_of(r: &SampleRow<'_>) -> Params {
    let p = r.params;
    Params {
        temperature: p.temperature,
        top_k: p.top_k,
        top_p: p.top_p,
        min_p: p.min_p,
        presence_penalty: p.presence_penalty,
        frequency_penalty: p.frequency_penalty,
        repetition_penalty: p.repetition_penalty,
        logit_bias: p.logit_bias.clone(),
        seed: p.seed,
        ignore_eos: p.ignore_eos,
    }
}

/// The sampling cuts a guest passes, checked like user input.
fn check_cuts(temperature: f32, top_p: f32, min_p: f32) -> Result<()> {
    if !(temperature.is_finite() && temperature > 0.0) {
        bail!("temperature must be finite and positive; given {temperature}");
    }
    if !(top_p > 0.0 && top_p <= 1.0 && (0.0..=1.0).contains(&min_p)) {
        bail!("top-p must be in (0, 1] and min-p in [0, 1]; given {top_p} and {min_p}");
    }
    Ok(())
}
