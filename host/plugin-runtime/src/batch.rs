//! The `batch` resource: one engine step's rows as a sampler sees them.
//!
//! The rows stay where the engine has them (its logits buffer, its
//! sequences' tokens); the store holds a [`StepView`] onto them only for
//! the duration of one `choose` call. Adjustments copy a row on first
//! write, so the engine's raw logits (which log-probabilities are reported
//! from) are never changed. Every argument from the guest is checked: a row
//! or token out of range, a non-finite temperature or an oversized list
//! traps the call.

use wasmtime::component::Resource;
use wasmtime::{Result, bail};
use weft_types::SampleRow;

use crate::bindings::weft::plugin::sampling::{Candidate, Host, HostBatch, Params};
use crate::sandbox::StoreState;

/// The resource's representation; its data is the store's [`StepView`].
#[derive(Debug)]
pub struct BatchHandle;

/// The rows of the call in progress.
pub struct StepView {
    rows: *const SampleRow<'static>,
    len: usize,
    eos: Vec<u32>,
    vocab: usize,
    /// Copy-on-write adjusted logits per row.
    adjusted: Vec<Option<Vec<f32>>>,
    /// Buffers to copy rows into before allocating new ones.
    spare: Vec<Vec<f32>>,
}

// SAFETY: the pointer is only dereferenced on the thread running the
// plugin call, while the engine's borrow of the rows is alive (see
// `StepView::new`).
unsafe impl Send for StepView {}

impl StepView {
    /// A view of `rows` for one call, copying adjusted rows into `spare`
    /// buffers first.
    ///
    /// # Safety
    /// The caller must remove the view from the store before `rows` is
    /// dropped or mutated, on every path (including traps).
    pub unsafe fn new(rows: &[SampleRow<'_>], eos: &[u32], spare: Vec<Vec<f32>>) -> Self {
        let vocab = rows.first().map_or(0, |r| r.logits.len());
        // Only ids the guest may hand back to `ban` without trapping.
        let eos = eos.iter().copied().filter(|&t| (t as usize) < vocab).collect();
        Self { rows: rows.as_ptr().cast(), len: rows.len(), eos, vocab, adjusted: vec![None; rows.len()], spare }
    }

    /// The row buffers, for the next call's view.
    pub fn into_spare(self) -> Vec<Vec<f32>> {
        let mut spare = self.spare;
        spare.extend(self.adjusted.into_iter().flatten());
        spare
    }

    fn row(&self, row: u32) -> Result<&SampleRow<'static>> {
        if row as usize >= self.len {
            bail!("row {row} is out of range: the batch has {} rows", self.len);
        }
        // SAFETY: in bounds, and alive for the call (`new`'s contract).
        Ok(unsafe { &*self.rows.add(row as usize) })
    }

    fn logits(&self, row: u32) -> Result<&[f32]> {
        let raw = self.row(row)?.logits;
        Ok(self.adjusted[row as usize].as_deref().unwrap_or(raw))
    }

    fn logits_mut(&mut self, row: u32) -> Result<&mut Vec<f32>> {
        let raw = self.row(row)?.logits;
        let spare = &mut self.spare;
        Ok(self.adjusted[row as usize].get_or_insert_with(|| copy_into(spare.pop(), raw)))
    }

    /// Apply the row's own adjustments (the native sampler's), copying the
    /// row only when it has some.
    fn apply_params(&mut self, row: u32) -> Result<()> {
        let &SampleRow { params, tokens, prompt_len, .. } = self.row(row)?;
        if params.adjusts_logits() {
            let eos = std::mem::take(&mut self.eos);
            weft_engine::sampling::adjust_logits(self.logits_mut(row)?, params, tokens, prompt_len, &eos);
            self.eos = eos;
        }
        Ok(())
    }

    /// A batch-wide call takes at most one entry per row of the batch.
    fn check_rows(&self, n: usize) -> Result<()> {
        if n > self.len {
            bail!("{n} rows in one call; the batch has {}", self.len);
        }
        Ok(())
    }

    fn check_tokens(&self, tokens: &[u32], limit: usize) -> Result<()> {
        if tokens.len() > limit {
            bail!("{} entries in one call; the limit is {limit}", tokens.len());
        }
        if let Some(t) = tokens.iter().find(|&&t| t as usize >= self.vocab) {
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

    fn position(&mut self, _: Resource<BatchHandle>, row: u32) -> Result<u64> {
        Ok(self.view()?.row(row)?.position())
    }

    fn uniform(&mut self, _: Resource<BatchHandle>, row: u32) -> Result<f64> {
        let r = self.view()?.row(row)?;
        Ok(weft_engine::sampling::uniform(r.params.seed, r.position()))
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
        let tokens: Vec<u32> = deltas.iter().map(|d| d.0).collect();
        view.check_tokens(&tokens, limit)?;
        if let Some((t, d)) = deltas.iter().find(|d| !d.1.is_finite()) {
            bail!("adjustment {d} for token {t} is not finite");
        }
        let logits = view.logits_mut(row)?;
        for (t, d) in deltas {
            logits[t as usize] += d;
        }
        Ok(())
    }

    fn penalize(&mut self, _: Resource<BatchHandle>, row: u32, tokens: Vec<u32>, penalty: f32) -> Result<()> {
        if !(penalty.is_finite() && penalty > 0.0) {
            bail!("the penalty must be finite and positive; given {penalty}");
        }
        let limit = self.host_list_entries.max(self.view()?.row(row)?.tokens.len());
        let view = self.view_mut()?;
        view.check_tokens(&tokens, limit)?;
        let logits = view.logits_mut(row)?;
        for t in tokens {
            let l = &mut logits[t as usize];
            *l = if *l > 0.0 { *l / penalty } else { *l * penalty };
        }
        Ok(())
    }

    fn ban(&mut self, _: Resource<BatchHandle>, row: u32, tokens: Vec<u32>) -> Result<()> {
        let limit = self.host_list_entries;
        let view = self.view_mut()?;
        view.check_tokens(&tokens, limit)?;
        let logits = view.logits_mut(row)?;
        for t in tokens {
            logits[t as usize] = f32::NEG_INFINITY;
        }
        Ok(())
    }

    fn top_k(&mut self, _: Resource<BatchHandle>, row: u32, k: u32) -> Result<Vec<Candidate>> {
        let logits = self.view()?.logits(row)?;
        let top = weft_engine::sampling::largest(logits, k as usize);
        let max = top.first().map_or(0.0, |c| c.1 as f64);
        Ok(top.into_iter().map(|(token, logit)| Candidate { token, logit, weight: (logit as f64 - max).exp() }).collect())
    }

    fn nucleus(&mut self, _: Resource<BatchHandle>, row: u32, temperature: f32, top_k: u32, top_p: f32, min_p: f32) -> Result<Vec<Candidate>> {
        check_cuts(temperature, top_p, min_p)?;
        let logits = self.view()?.logits(row)?;
        Ok(weft_engine::sampling::nucleus(logits, temperature, top_k, top_p, min_p)
            .into_iter()
            .map(|(token, weight)| Candidate { token, logit: logits[token as usize], weight })
            .collect())
    }

    fn sample(&mut self, _: Resource<BatchHandle>, row: u32, temperature: f32, top_k: u32, top_p: f32, min_p: f32) -> Result<u32> {
        check_cuts(temperature, top_p, min_p)?;
        let r = self.view()?.row(row)?;
        let u = weft_engine::sampling::uniform(r.params.seed, r.position());
        let logits = self.view()?.logits(row)?;
        Ok(weft_engine::sampling::sample_nucleus(logits, temperature, top_k, top_p, min_p, u))
    }

    fn sample_by_params(&mut self, _: Resource<BatchHandle>, rows: Vec<u32>) -> Result<Vec<u32>> {
        let view = self.view_mut()?;
        view.check_rows(rows.len())?;
        rows.into_iter()
            .map(|row| {
                view.apply_params(row)?;
                let r = view.row(row)?;
                Ok(weft_engine::sampling::sample(view.logits(row)?, r.params, r.position()))
            })
            .collect()
    }

    fn logits(&mut self, _: Resource<BatchHandle>, row: u32) -> Result<Vec<f32>> {
        Ok(self.view()?.logits(row)?.to_vec())
    }

    fn drop(&mut self, handle: Resource<BatchHandle>) -> Result<()> {
        self.table.delete(handle)?;
        Ok(())
    }
}

/// `raw` copied into `buffer` (reused when given).
fn copy_into(buffer: Option<Vec<f32>>, raw: &[f32]) -> Vec<f32> {
    let mut buffer = buffer.unwrap_or_default();
    buffer.clear();
    buffer.extend_from_slice(raw);
    buffer
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
