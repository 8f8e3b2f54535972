//! The builtin sampler plugin: greedy, temperature with top-k / min-p /
//! top-p, logit bias, repetition / presence / frequency penalties and EOS
//! suppression, seeded and reproducible, for a whole batch per call.
//!
//! The policy lives here; the O(vocabulary) work (adjusting logits, the
//! nucleus and the draw from it) is asked of the host through the `batch`
//! resource, so a call moves a few short lists, never a full row.

wit_bindgen::generate!({
    path: "../../wit",
    world: "sampler-plugin",
});

use exports::weft::plugin::sampler::Guest;
use weft::plugin::sampling::Batch;
use weft::plugin::types::{ConfigEntry, PluginError};

struct Standard;

impl Guest for Standard {
    fn init(_config: Vec<ConfigEntry>) -> Result<(), PluginError> {
        Ok(())
    }

    fn choose(batch: &Batch) -> Result<Vec<u32>, PluginError> {
        (0..batch.size()).map(|row| choose_row(batch, row)).collect()
    }
}

fn choose_row(batch: &Batch, row: u32) -> Result<u32, PluginError> {
    let p = batch.params(row);
    if p.ignore_eos {
        batch.ban(row, &batch.eos_tokens());
    }
    if !p.logit_bias.is_empty() {
        batch.adjust(row, &p.logit_bias);
    }
    if p.repetition_penalty != 1.0 {
        let mut seen = batch.history(row, u32::MAX, false);
        seen.sort_unstable();
        seen.dedup();
        batch.penalize(row, &seen, p.repetition_penalty);
    }
    if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
        let mut generated = batch.history(row, u32::MAX, true);
        generated.sort_unstable();
        let deltas: Vec<(u32, f32)> = generated
            .chunk_by(|a, b| a == b)
            .map(|run| (run[0], -(p.presence_penalty + p.frequency_penalty * run.len() as f32)))
            .collect();
        batch.adjust(row, &deltas);
    }
    if p.temperature == 0.0 || p.top_k == 1 {
        return batch.top_k(row, 1).first().map(|c| c.token).ok_or_else(|| empty(row));
    }
    Ok(batch.sample(row, p.temperature, p.top_k, p.top_p, p.min_p))
}

fn empty(row: u32) -> PluginError {
    PluginError { code: "no-candidates".into(), message: format!("row {row} has no token left to choose") }
}

export!(Standard);
