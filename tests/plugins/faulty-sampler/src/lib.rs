//! A sampler that misbehaves on purpose, the way its `fault` config key
//! says: `trap`, `loop` (never returns), `memory` (allocates without end),
//! `stack` (unbounded recursion), `bad-token` (a token outside the
//! vocabulary), `wrong-count` (one token too few), `refuse` (a plugin
//! error), `edit-flood` (adjusts one row without end), or `none` (greedy,
//! well behaved). The fault-isolation tests deploy it to prove each
//! failure stays inside its own request. `revisit` is no fault: it bans
//! each row's two top tokens in two passes over the batch, then chooses
//! every row greedily (its third token), so the host must rebuild rows
//! from their edits.

wit_bindgen::generate!({
    path: "../../../wit",
    world: "sampler-plugin",
});

use std::sync::atomic::{AtomicU8, Ordering};

use exports::weft::plugin::sampler::Guest;
use weft::plugin::sampling::Batch;
use weft::plugin::types::{ConfigEntry, ConfigValue, PluginError};

static FAULT: AtomicU8 = AtomicU8::new(0);
const FAULTS: [&str; 11] =
    ["none", "trap", "loop", "memory", "stack", "bad-token", "wrong-count", "refuse", "too-many-rows", "edit-flood", "revisit"];

struct Faulty;

fn recurse(depth: u64) -> u64 {
    // Keep the frame alive so the recursion is not turned into a loop.
    let frame = [depth; 64];
    if std::hint::black_box(depth) == u64::MAX { frame[0] } else { recurse(depth + 1) + std::hint::black_box(frame[1]) }
}

impl Guest for Faulty {
    fn init(config: Vec<ConfigEntry>) -> Result<(), PluginError> {
        for entry in config {
            if let ("fault", ConfigValue::Text(name)) = (entry.key.as_str(), &entry.value) {
                let index = FAULTS.iter().position(|f| f == name).ok_or_else(|| PluginError {
                    code: "bad-config".into(),
                    message: format!("unknown fault {name:?}"),
                })?;
                FAULT.store(index as u8, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    fn choose(batch: &Batch) -> Result<Vec<u32>, PluginError> {
        let greedy = || (0..batch.size()).map(|row| batch.top_k(row, 1)[0].token).collect::<Vec<_>>();
        match FAULTS[FAULT.load(Ordering::Relaxed) as usize] {
            "trap" => unreachable!("a deliberate trap"),
            "loop" => loop {
                std::hint::black_box(batch.size());
            },
            "memory" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "stack" => Ok(vec![recurse(0) as u32]),
            "bad-token" => Ok(vec![u32::MAX; batch.size() as usize]),
            "wrong-count" => {
                let mut tokens = greedy();
                tokens.pop();
                Ok(tokens)
            }
            "too-many-rows" => Ok(batch.sample_by_params(&(0..=batch.size()).collect::<Vec<_>>())),
            "edit-flood" => loop {
                let deltas: Vec<(u32, f32)> = (0..4096).map(|t| (t % batch.vocab_size(), 0.5)).collect();
                batch.adjust(0, &deltas);
            },
            "revisit" => {
                for row in 0..batch.size() {
                    batch.ban(row, &[batch.top_k(row, 1)[0].token]);
                }
                // Each row is read (built from its edit), banned again
                // while it is built, and then read again after the others.
                for row in 0..batch.size() {
                    batch.ban(row, &[batch.top_k(row, 1)[0].token]);
                }
                Ok(greedy())
            }
            "refuse" => Err(PluginError { code: "refused".into(), message: "this sampler refuses on purpose".into() }),
            _ => Ok(greedy()),
        }
    }
}

export!(Faulty);
