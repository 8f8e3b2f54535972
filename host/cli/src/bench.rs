//! `weft bench`: engine-level throughput on the loaded model, or with
//! `--url` the serving-level load generator ([`crate::loadgen`]), or with
//! `--plugins` the sampler plugin's cost ([`crate::plugin_bench`]).
//!
//! Prefill: one request of N prompt tokens, timed to its first output.
//! Decode at batch B: B requests with short distinct prompts generate
//! `--decode-tokens` tokens each (end-of-sequence ignored); tokens/s counts
//! only steps in which every sequence was decoding. Each figure is the
//! median of `--rounds` runs. Prompts come from a fixed public-domain text,
//! so runs are repeatable.

use std::time::Instant;

use anyhow::{Result, anyhow};
use clap::Args;
use serde_json::json;
use weft_engine::{Engine, GenerationRequest};
use weft_types::SamplingParams;

use crate::ModelArgs;
use crate::store::Store;

#[derive(Args, Clone, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt lengths to time prefill at.
    #[arg(long, value_delimiter = ',', default_value = "128,512")]
    pub prefill: Vec<usize>,
    /// Batch sizes to time decode at.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64")]
    pub batch: Vec<usize>,
    /// Tokens each sequence decodes.
    #[arg(long, default_value_t = 64)]
    pub decode_tokens: u32,
    /// Runs per figure (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Benchmark a model of this shape with random BF16 weights instead of
    /// --model: llama3-8b, smollm2-135m or tiny. Prompts are random token ids.
    #[arg(long, value_name = "SHAPE")]
    pub synthetic: Option<weft_engine::model::synthetic::Shape>,
    /// Most tokens one engine step computes (prompts longer than this are
    /// prefilled in chunks); at least the largest --batch [default: the
    /// backend's (256 on the CPU, 512 on a GPU), raised to the largest
    /// --batch].
    #[arg(long)]
    pub max_batch_tokens: Option<usize>,
    /// KV cache size (the largest decode batch needs room for every sequence).
    #[arg(long, default_value_t = 256)]
    pub kv_cache_mib: usize,
    /// Measure the sampler plugin against the native sampler instead.
    #[arg(long)]
    pub plugins: bool,
    /// With --plugins: measure this sampler component (granted a language
    /// runtime's inert WASI imports) instead of the builtin one.
    #[arg(long, value_name = "FILE", requires = "plugins")]
    pub component: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub load: crate::loadgen::LoadArgs,
}

const TEXT: &str = include_str!("../../../tests/data/ppl-text.txt");

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn request(prompt: Vec<u32>, max_tokens: u32, tenant: String) -> GenerationRequest {
    GenerationRequest {
        prompt,
        params: SamplingParams { ignore_eos: true, ..SamplingParams::greedy(max_tokens) },
        tenant,
        ..GenerationRequest::new(Vec::new(), SamplingParams::default())
    }
}

/// `n` token ids in `0..vocab` from a fixed xorshift stream (prompts for
/// random-weight models).
fn random_tokens(vocab: usize, n: usize) -> Vec<u32> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % vocab as u64) as u32
        })
        .collect()
}

fn prefill_tps(engine: &mut Engine, tokens: &[u32], round: usize) -> Result<f64> {
    // A fresh tenant per round: nothing comes from the prefix cache.
    engine.add_request(request(tokens.to_vec(), 1, format!("bench-prefill-{round}"))).map_err(|e| anyhow!("{e}"))?;
    let start = Instant::now();
    while engine.has_work() {
        engine.step();
    }
    Ok(tokens.len() as f64 / start.elapsed().as_secs_f64())
}

fn decode_tps(engine: &mut Engine, corpus: &[u32], batch: usize, n: u32, round: usize) -> Result<f64> {
    for b in 0..batch {
        let start = (b * 37 + round * 11) % (corpus.len() - 32);
        let prompt = corpus[start..start + 32].to_vec();
        engine.add_request(request(prompt, n, format!("bench-decode-{round}-{b}"))).map_err(|e| anyhow!("{e}"))?;
    }
    // Run prefill (and the first sampled token) outside the timed region.
    while engine.num_waiting() > 0 {
        engine.step();
    }
    engine.step();
    let start = Instant::now();
    let mut tokens = 0usize;
    while engine.has_work() {
        tokens += engine.step().iter().map(|o| o.tokens.len()).sum::<usize>();
    }
    Ok(tokens as f64 / start.elapsed().as_secs_f64())
}

pub fn bench(store: &Store, args: BenchArgs) -> Result<()> {
    if let Some(url) = &args.load.url {
        return crate::loadgen::run(url, &args.load, args.json);
    }
    if args.plugins {
        return crate::plugin_bench::run(&args.batch, args.json, args.component.as_deref());
    }
    let opened = match args.synthetic {
        Some(shape) => crate::run::open_synthetic(store, &args.model, shape, args.kv_cache_mib << 20)?,
        None => crate::run::open(store, &args.model, args.kv_cache_mib << 20)?,
    };
    let loaded = opened.loaded;
    let corpus = match args.synthetic {
        Some(_) => random_tokens(loaded.model.config.vocab_size, 1 << 14),
        None => loaded.tokenizer.encode(TEXT, false)?,
    };
    let device = opened.backend.name();
    let mut config = opened.config;
    let largest_batch = args.batch.iter().copied().max().unwrap_or(1);
    config.max_running = config.max_running.max(largest_batch);
    // Every sequence of the largest batch decodes in each step.
    if let Some(tokens) = args.max_batch_tokens {
        anyhow::ensure!(tokens >= largest_batch, "--max-batch-tokens ({tokens}) must be at least the largest batch ({largest_batch})");
        config.max_running = largest_batch;
        config.max_batch_tokens = tokens;
    }
    let mut engine = crate::run::engine(&loaded, opened.backend, config, args.model.sampler, &crate::run::plugin_runtime(store)?)?;
    let weight_bytes = loaded.model.matrix_bytes();
    let threads = weft_kernels_cpu::pool::threads();
    let mut rows = Vec::new();
    for &n in &args.prefill {
        let tokens = &corpus[..n.min(corpus.len())];
        prefill_tps(&mut engine, tokens, usize::MAX)?; // warm-up
        let runs = (0..args.rounds).map(|r| prefill_tps(&mut engine, tokens, r)).collect::<Result<Vec<_>>>()?;
        rows.push((format!("prefill {n}"), median(runs)));
    }
    for &b in &args.batch {
        let runs = (0..args.rounds).map(|r| decode_tps(&mut engine, &corpus, b, args.decode_tokens, r)).collect::<Result<Vec<_>>>()?;
        rows.push((format!("decode batch {b}"), median(runs)));
    }
    if args.json {
        let figures: serde_json::Map<String, serde_json::Value> = rows.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
        println!(
            "{}",
            json!({ "model": loaded.name, "device": device, "threads": threads, "weight_bytes": weight_bytes, "tokens_per_second": figures })
        );
    } else {
        println!(
            "model {} · {device} · {threads} threads · {:.3} GB of weight matrices · median of {} rounds",
            loaded.name,
            weight_bytes as f64 / 1e9,
            args.rounds
        );
        println!("{:<20} {:>12}", "figure", "tokens/s");
        for (k, v) in rows {
            println!("{k:<20} {v:>12.1}");
        }
    }
    Ok(())
}
