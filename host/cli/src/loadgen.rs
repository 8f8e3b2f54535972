//! `weft bench --url`: a serving-level load generator for any
//! OpenAI-compatible server (Weft, llama.cpp's server, vLLM, ...).
//!
//! `--concurrency` client threads send `--requests` streaming chat
//! completions between them, each prompt drawn from a fixed seeded set of
//! about `--prompt-tokens` tokens, each asking for exactly `--max-tokens`
//! tokens (`ignore_eos`) so servers are compared on the same work. It
//! reports requests/s, output tokens/s (all output tokens / wall time),
//! TTFT, inter-token latency (between content-carrying chunks) and
//! end-to-end latency, p50 and p99. Output tokens come from the server's
//! `usage` chunk when it sends one, else from the count of content chunks.
//! Blocking threads are plenty here: the clients wait on sockets, and the
//! server under test does the work.

use std::io::{BufRead, BufReader};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::{Value, json};

#[derive(Args, Clone, Debug)]
pub struct LoadArgs {
    /// Base URL of an OpenAI-compatible server; turns `weft bench` into the
    /// serving-level load generator.
    #[arg(long)]
    pub url: Option<String>,
    /// The `model` field to send.
    #[arg(long, default_value = "default")]
    pub api_model: String,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Requests in all.
    #[arg(long, default_value_t = 64)]
    pub requests: usize,
    /// Output tokens per request.
    #[arg(long, default_value_t = 128)]
    pub max_tokens: u32,
    /// Approximate prompt length in tokens.
    #[arg(long, default_value_t = 220)]
    pub prompt_tokens: usize,
    /// Seed of the prompt set.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// A JSON file holding a `response_format` object sent with every
    /// request (measures guided generation).
    #[arg(long)]
    pub response_format: Option<std::path::PathBuf>,
}

const WORDS: &[&str] = &[
    "apple", "anchor", "breeze", "candle", "copper", "desert", "echo", "ember", "falcon", "garnet", "harvest", "horizon",
    "island", "jasper", "kettle", "lantern", "meadow", "nectar", "orbit", "pebble", "quartz", "raven", "saffron", "timber",
    "umber", "velvet", "willow", "yonder", "zephyr", "amber", "basin", "cedar", "delta", "fable", "glacier", "hollow",
    "indigo", "juniper", "kelp", "lagoon", "marble", "north", "opal", "prairie", "quiver", "ridge", "summit", "tundra",
];

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The fixed prompt set: the same on every machine and version. A common
/// word and a space are about 1.3 tokens in BPE vocabularies.
fn prompts(count: usize, approx_tokens: usize, seed: u64) -> Vec<String> {
    let mut state = seed;
    let words = ((approx_tokens as f64 / 1.3) as usize).max(1);
    (0..count)
        .map(|i| {
            let body: Vec<&str> = (0..words).map(|_| WORDS[(splitmix64(&mut state) % WORDS.len() as u64) as usize]).collect();
            format!("Story {i}. Continue this list of words with more words: {}", body.join(" "))
        })
        .collect()
}

/// What one request measured, in seconds.
struct Sample {
    ttft: Option<f64>,
    itl: Vec<f64>,
    e2e: f64,
    tokens: usize,
}

fn one_request(agent: &ureq::Agent, args: &LoadArgs, format: Option<&Value>, url: &str, prompt: &str) -> Result<Sample> {
    let mut body = json!({
        "model": args.api_model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": args.max_tokens,
        "temperature": 0,
        "ignore_eos": true,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    if let Some(format) = format {
        body["response_format"] = format.clone();
    }
    let sent = Instant::now();
    let resp = agent.post(format!("{url}/v1/chat/completions")).send_json(&body).with_context(|| format!("POST {url}"))?;
    if resp.status() != 200 {
        bail!("{url} answered {}", resp.status());
    }
    let mut stamps = Vec::new();
    let mut usage_tokens = None;
    for line in BufReader::new(resp.into_body().into_reader()).lines() {
        let line = line.context("reading the stream")?;
        let Some(data) = line.strip_prefix("data: ") else { continue };
        if data == "[DONE]" {
            break;
        }
        let chunk: Value = serde_json::from_str(data).with_context(|| format!("a chunk that is not JSON: {data}"))?;
        if let Some(n) = chunk["usage"]["completion_tokens"].as_u64() {
            usage_tokens = Some(n as usize);
        }
        let has_content = chunk["choices"]
            .as_array()
            .is_some_and(|cs| cs.iter().any(|c| c["delta"]["content"].as_str().is_some_and(|t| !t.is_empty())));
        if has_content {
            stamps.push(sent.elapsed().as_secs_f64());
        }
    }
    Ok(Sample {
        ttft: stamps.first().copied(),
        itl: stamps.windows(2).map(|w| w[1] - w[0]).collect(),
        e2e: sent.elapsed().as_secs_f64(),
        tokens: usage_tokens.unwrap_or(stamps.len()),
    })
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let k = (v.len() - 1) as f64 * p / 100.0;
    let (lo, hi) = (k.floor() as usize, (k.ceil() as usize).min(v.len() - 1));
    v[lo] + (v[hi] - v[lo]) * (k - lo as f64)
}

pub fn run(url: &str, args: &LoadArgs, as_json: bool) -> Result<()> {
    let url = url.trim_end_matches('/');
    let todo = prompts(args.requests, args.prompt_tokens, args.seed);
    let format: Option<Value> = match &args.response_format {
        None => None,
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            Some(serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?)
        }
    };
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let next = AtomicUsize::new(0);
    let samples = Mutex::new(Vec::with_capacity(todo.len()));
    let start = Instant::now();
    std::thread::scope(|scope| -> Result<()> {
        let workers: Vec<_> = (0..args.concurrency.max(1))
            .map(|_| {
                scope.spawn(|| -> Result<()> {
                    while let Some(prompt) = todo.get(next.fetch_add(1, Ordering::Relaxed)) {
                        let sample = one_request(&agent, args, format.as_ref(), url, prompt)?;
                        samples.lock().expect("no worker panics holding the lock").push(sample);
                    }
                    Ok(())
                })
            })
            .collect();
        for w in workers {
            w.join().map_err(|_| anyhow::anyhow!("a client thread panicked"))??;
        }
        Ok(())
    })?;
    let wall = start.elapsed().as_secs_f64();
    let samples = samples.into_inner().expect("workers are done");
    let tokens: usize = samples.iter().map(|s| s.tokens).sum();
    let ms = |v: f64| v * 1000.0;
    let ttft: Vec<f64> = samples.iter().filter_map(|s| s.ttft).collect();
    let itl: Vec<f64> = samples.iter().flat_map(|s| s.itl.iter().copied()).collect();
    let e2e: Vec<f64> = samples.iter().map(|s| s.e2e).collect();
    let figures = [
        ("requests_per_s", samples.len() as f64 / wall),
        ("output_tokens_per_s", tokens as f64 / wall),
        ("ttft_ms_p50", ms(percentile(ttft.clone(), 50.0))),
        ("ttft_ms_p99", ms(percentile(ttft, 99.0))),
        ("itl_ms_p50", ms(percentile(itl.clone(), 50.0))),
        ("itl_ms_p99", ms(percentile(itl, 99.0))),
        ("e2e_ms_p50", ms(percentile(e2e.clone(), 50.0))),
        ("e2e_ms_p99", ms(percentile(e2e, 99.0))),
    ];
    if as_json {
        let mut out = serde_json::Map::new();
        out.insert("url".into(), json!(url));
        out.insert("concurrency".into(), json!(args.concurrency));
        out.insert("requests".into(), json!(samples.len()));
        out.insert("output_tokens".into(), json!(tokens));
        out.insert("wall_s".into(), json!(wall));
        for (k, v) in figures {
            out.insert(k.into(), json!(v));
        }
        println!("{}", Value::Object(out));
    } else {
        println!("{url} · {} requests · concurrency {} · {tokens} output tokens in {wall:.1} s", samples.len(), args.concurrency);
        for (k, v) in figures {
            println!("{k:<22} {v:>10.1}");
        }
    }
    Ok(())
}
