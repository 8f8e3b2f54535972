//! `weft bench --plugins`: what the sampler plugin costs, measured against
//! the native sampler on the same synthetic batches.
//!
//! It times one `sample` call for a batch of B rows of the default model's
//! vocabulary size (the builtin sampler, or `--component FILE`): greedy,
//! greedy with repetition, presence and frequency penalties, temperature
//! sampling with OpenAI's defaults, and top-p over a flat row (the nucleus
//! is most of the vocabulary, the worst case). It reports the plugin's
//! extra cost per call as the median of plugin − native over alternating
//! pairs of calls, and how long instantiating a fresh instance takes. It
//! also times loading each builtin component compiled from scratch and from
//! the compiled-component cache (what a restart pays).

use std::time::Instant;

use anyhow::{Context, Result};
use serde_json::json;
use weft_engine::sampling::{HostRows, NativeSampler};
use weft_plugin_runtime::{Grants, Limits, PluginRuntime};
use weft_types::{SampleRow, Sampler, SamplingParams};

const VOCAB: usize = 49_152;
const CALLS: usize = 400;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn logits(seed: u64) -> Vec<f32> {
    weft_engine::sampling::synthetic_logits(seed, VOCAB)
}

/// Microseconds of one call of `sampler` on `rows`.
fn time_call(sampler: &mut dyn Sampler, rows: &[SampleRow<'_>]) -> Result<f64> {
    let start = Instant::now();
    sampler.sample(rows, &[0, 2]).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(start.elapsed().as_secs_f64() * 1e6)
}

/// Median microseconds of a call of `plugin`, of `native`, and of the
/// difference between the two calls of each pair: the calls alternate, so
/// the machine's drift between minutes cancels out of the difference.
fn time_pairs(plugin: &mut dyn Sampler, native: &mut dyn Sampler, rows: &[SampleRow<'_>]) -> Result<(f64, f64, f64)> {
    let (mut ours, mut reference, mut overhead) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..CALLS {
        // Which goes first alternates too: the second call finds the rows
        // in cache.
        let (p, n) = if i % 2 == 0 {
            let p = time_call(plugin, rows)?;
            (p, time_call(native, rows)?)
        } else {
            let n = time_call(native, rows)?;
            (time_call(plugin, rows)?, n)
        };
        ours.push(p);
        reference.push(n);
        overhead.push(p - n);
    }
    Ok((median(ours), median(reference), median(overhead)))
}

pub fn run(batches: &[usize], as_json: bool, other: Option<&std::path::Path>) -> Result<()> {
    let runtime = PluginRuntime::new(Limits::default())?;
    let component = match other {
        None => runtime.load_sampler("builtin:sampler@0.1.0", weft_plugin_artifacts::SAMPLER)?,
        Some(path) => {
            let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            let limits = Limits { grants: Grants { language_runtime: true, ..Grants::default() }, ..Limits::default() };
            runtime.load_sampler_with(&path.display().to_string(), &bytes, limits)?
        }
    };
    let mut plugin = component.sampler(Vec::new())?;
    let mut native = NativeSampler;
    let history: Vec<u32> = (0..64).collect();
    let mut rows_out = Vec::new();
    for (label, params) in [
        ("greedy", SamplingParams::greedy(16)),
        (
            "greedy, penalties",
            SamplingParams { repetition_penalty: 1.1, presence_penalty: 0.5, frequency_penalty: 0.3, ..SamplingParams::greedy(16) },
        ),
        ("temperature", SamplingParams { temperature: 1.0, ..SamplingParams::default() }),
        ("top-p", SamplingParams { temperature: 0.8, top_p: 0.95, ..SamplingParams::default() }),
    ] {
        for &b in batches {
            let step = HostRows::new((0..b as u64).flat_map(logits).collect(), VOCAB);
            let rows: Vec<SampleRow<'_>> = (0..b)
                .map(|row| SampleRow { logits: &step, row, mask: None, params: &params, tokens: &history, prompt_len: 32 })
                .collect();
            let (ours, reference, overhead) = time_pairs(&mut plugin, &mut native, &rows)?;
            rows_out.push((format!("{label} batch {b}"), ours, reference, overhead));
        }
    }
    let mut instantiate = Vec::new();
    for _ in 0..50 {
        let start = Instant::now();
        drop(component.sampler(Vec::new())?);
        instantiate.push(start.elapsed().as_secs_f64() * 1e6);
    }
    let instantiate = median(instantiate);
    let loads = load_times()?;
    if as_json {
        let calls: Vec<_> = rows_out
            .iter()
            .map(|(k, p, n, o)| json!({"case": k, "plugin_us": p, "native_us": n, "overhead_us": o}))
            .collect();
        let loads: Vec<_> = loads.iter().map(|(k, c, h)| json!({"component": k, "compile_ms": c, "cached_ms": h})).collect();
        println!("{}", json!({"calls": calls, "instantiate_us": instantiate, "loads": loads}));
    } else {
        println!("{:<24} {:>12} {:>12} {:>12}", "sample call", "plugin µs", "native µs", "overhead µs");
        for (k, p, n, o) in rows_out {
            println!("{k:<24} {p:>12.1} {n:>12.1} {o:>12.1}");
        }
        println!("instantiate + init: {instantiate:.1} µs (median of 50)");
        println!("{:<20} {:>12} {:>12}", "load component", "compile ms", "cached ms");
        for (k, c, h) in loads {
            println!("{k:<20} {c:>12.1} {h:>12.2}");
        }
    }
    Ok(())
}

/// Milliseconds to load each builtin component compiled from scratch, and
/// from the compiled cache by a fresh runtime (the restart path; median
/// of 20).
fn load_times() -> Result<Vec<(&'static str, f64, f64)>> {
    let dir = tempfile::tempdir()?;
    let ms = |start: Instant| start.elapsed().as_secs_f64() * 1e3;
    let mut out = Vec::new();
    for (label, bytes, guide) in
        [("sampler", weft_plugin_artifacts::SAMPLER, false), ("guide", weft_plugin_artifacts::GUIDE, true)]
    {
        let load = |runtime: &PluginRuntime| -> Result<()> {
            if guide {
                runtime.load_guide(label, bytes).map(drop)?;
            } else {
                runtime.load_sampler(label, bytes).map(drop)?;
            }
            Ok(())
        };
        let start = Instant::now();
        load(&PluginRuntime::new(Limits::default())?.with_cache(dir.path())?)?;
        let compile = ms(start);
        let mut cached = Vec::new();
        for _ in 0..20 {
            let runtime = PluginRuntime::new(Limits::default())?.with_cache(dir.path())?;
            let start = Instant::now();
            load(&runtime)?;
            cached.push(ms(start));
        }
        out.push((label, compile, median(cached)));
    }
    Ok(out)
}
