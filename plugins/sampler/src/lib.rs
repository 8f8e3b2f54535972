//! The builtin sampler plugin: greedy, temperature with top-k / min-p /
//! top-p, logit bias, repetition / presence / frequency penalties and EOS
//! suppression, seeded and reproducible, for a whole batch per call.
//!
//! The policy lives here: which adjustments each row gets, in which order,
//! and how it is chosen. The O(vocabulary) work (adjusting logits, the
//! nucleus and the draw from it) is asked of the host through the `batch`
//! resource, with the batch-wide calls where there are some, so a step
//! costs a few host calls and short lists, never a full row.

wit_bindgen::generate!({
    path: "../../wit",
    world: "sampler-plugin",
});

use exports::weft::plugin::sampler::Guest;
use weft::plugin::sampling::{Batch, Cuts};
use weft::plugin::types::{ConfigEntry, PluginError};

struct Standard;

impl Guest for Standard {
    fn init(_config: Vec<ConfigEntry>) -> Result<(), PluginError> {
        Ok(())
    }

    fn choose(batch: &Batch) -> Result<Vec<u32>, PluginError> {
        // A handful of host calls a step, whatever the batch size: the
        // parameters of every row in one, an edit call for each adjustment
        // a row asks for, and every row's choice in one.
        let mut eos = None;
        let choices: Vec<(u32, Cuts)> = (0..)
            .zip(batch.all_params())
            .map(|(row, p)| {
                if p.ignore_eos {
                    batch.ban(row, eos.get_or_insert_with(|| batch.eos_tokens()));
                }
                if !p.logit_bias.is_empty() {
                    batch.adjust(row, &p.logit_bias);
                }
                if p.repetition_penalty != 1.0 || p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
                    batch.penalize_repeats(row, p.repetition_penalty, p.presence_penalty, p.frequency_penalty);
                }
                (row, Cuts { temperature: p.temperature, top_k: p.top_k, top_p: p.top_p, min_p: p.min_p })
            })
            .collect();
        Ok(batch.choose_rows(&choices))
    }
}

export!(Standard);
