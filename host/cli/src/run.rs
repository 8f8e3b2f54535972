//! `weft generate` and `weft chat`: load a model, run the engine, print tokens.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use clap::Args;
use weft_engine::chat_template::ChatMessage;
use weft_engine::model::synthetic::{Shape, random_model};
use weft_engine::tokenizer::Tokenizer;
use weft_engine::{Backend, Engine, EngineConfig, GenerationRequest, LoadedModel};
use weft_types::SamplingParams;

use weft_plugin_runtime::{Limits, PluginRuntime};

use crate::device::Placement;
use crate::{ModelArgs, SamplerKind};
use crate::store::Store;

/// Sampling options shared by `generate` and `chat`.
#[derive(Args, Clone, Debug)]
pub struct SamplingArgs {
    /// 0 means greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 0)]
    pub top_k: u32,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = 256)]
    pub max_tokens: u32,
}

#[derive(Args, Clone, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// The prompt.
    #[arg(long)]
    pub prompt: String,
    /// Wrap the prompt as a user message in the model's chat template.
    #[arg(long)]
    pub chat: bool,
}

#[derive(Args, Clone, Debug)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// A system message to start the conversation with.
    #[arg(long)]
    pub system: Option<String>,
}

fn params(s: &SamplingArgs) -> Result<SamplingParams> {
    if !(0.0..=100.0).contains(&s.temperature) || !(s.top_p > 0.0 && s.top_p <= 1.0) {
        return Err(anyhow!("--temperature must be in [0, 100] and --top-p in (0, 1]"));
    }
    Ok(SamplingParams {
        temperature: s.temperature,
        top_k: s.top_k,
        top_p: s.top_p,
        seed: s.seed,
        max_tokens: s.max_tokens,
        ..SamplingParams::default()
    })
}

pub fn load(store: &Store, args: &ModelArgs) -> Result<(LoadedModel, Engine)> {
    let opened = open(store, args, 256 << 20)?;
    let engine = engine(&opened.loaded, opened.backend, opened.config, args.sampler, &plugin_runtime(store)?)?;
    Ok((opened.loaded, engine))
}

/// The plugin runtime, keeping compiled components in the store's cache.
pub fn plugin_runtime(store: &Store) -> Result<PluginRuntime> {
    Ok(PluginRuntime::new(Limits::default())?.with_cache(&store.plugin_cache())?)
}

/// A model loaded and placed on its device, with engine defaults.
pub struct Opened {
    pub path: PathBuf,
    pub loaded: LoadedModel,
    pub backend: Box<dyn Backend>,
    pub config: EngineConfig,
}

/// Load the model `args` names onto the device it names, with engine
/// defaults for a KV cache of `kv_cache_bytes`.
pub fn open(store: &Store, args: &ModelArgs, kv_cache_bytes: usize) -> Result<Opened> {
    if let Some(n) = args.threads {
        weft_kernels_cpu::pool::set_threads(n);
    }
    let path = store.resolve(args.model.as_deref())?;
    let loaded = LoadedModel::open(&path).with_context(|| format!("loading {}", path.display()))?;
    place(path, loaded, args.placement(store), kv_cache_bytes)
}

/// A model of `shape` with random BF16 weights (for benchmarks), placed
/// like [`open`] places a real one.
pub fn open_synthetic(store: &Store, args: &ModelArgs, shape: Shape, kv_cache_bytes: usize) -> Result<Opened> {
    if let Some(n) = args.threads {
        weft_kernels_cpu::pool::set_threads(n);
    }
    let model = random_model(shape, 0x5eed).with_context(|| format!("making a random {shape} model"))?;
    let loaded = LoadedModel {
        // The name scripts/gpu/hf_bench.py reports for the same shape.
        name: format!("random {shape} (BF16)"),
        model: Arc::new(model),
        tokenizer: Arc::new(Tokenizer::placeholder()),
        template: None,
    };
    place(PathBuf::new(), loaded, args.placement(store), kv_cache_bytes)
}

fn place(path: PathBuf, loaded: LoadedModel, placement: Placement, kv_cache_bytes: usize) -> Result<Opened> {
    let backend = crate::device::backend(&loaded.model, placement)?;
    let config = EngineConfig::for_backend(&*backend, kv_cache_bytes);
    Ok(Opened { path, loaded, backend, config })
}

/// An engine running `loaded` on `backend` whose default sampler is
/// `sampler` (loaded through `runtime` when it is the builtin plugin).
pub fn engine(
    loaded: &LoadedModel,
    backend: Box<dyn Backend>,
    config: EngineConfig,
    sampler: SamplerKind,
    runtime: &PluginRuntime,
) -> Result<Engine> {
    let mut engine = Engine::with_backend(backend, Arc::clone(&loaded.tokenizer), config)
        .context("allocating the KV cache")?;
    if sampler == SamplerKind::Builtin {
        let component = runtime.load_sampler("builtin:sampler@0.1.0", weft_plugin_artifacts::SAMPLER)?;
        engine.set_sampler(Box::new(component.sampler(Vec::new())?));
    }
    Ok(engine)
}

/// Run one request to completion, streaming its text to stdout.
fn stream(engine: &mut Engine, prompt: Vec<u32>, params: SamplingParams) -> Result<String> {
    engine
        .add_request(GenerationRequest::new(prompt, params))
        .map_err(|e| anyhow!("{e}"))?;
    let mut text = String::new();
    let mut stdout = std::io::stdout().lock();
    while engine.has_work() {
        for out in engine.step() {
            stdout.write_all(out.text.as_bytes())?;
            stdout.flush()?;
            text.push_str(&out.text);
        }
    }
    writeln!(stdout)?;
    Ok(text)
}

pub fn generate(store: &Store, args: GenerateArgs) -> Result<()> {
    let (loaded, mut engine) = load(store, &args.model)?;
    let prompt = if args.chat {
        let template = loaded.template.as_ref().context("this model has no chat template")?;
        template.encode(&loaded.tokenizer, &[ChatMessage::new("user", &args.prompt)], true)?
    } else {
        loaded.tokenizer.encode(&args.prompt, false)?
    };
    stream(&mut engine, prompt, params(&args.sampling)?)?;
    Ok(())
}

pub fn chat(store: &Store, args: ChatArgs) -> Result<()> {
    let (loaded, mut engine) = load(store, &args.model)?;
    let template = loaded.template.as_ref().context("this model has no chat template")?;
    let mut history: Vec<ChatMessage> = args.system.iter().map(|s| ChatMessage::new("system", s)).collect();
    eprintln!("weft: chatting with {} (Ctrl-D to quit)", loaded.name);
    let stdin = std::io::stdin();
    loop {
        eprint!("> ");
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            return Ok(());
        }
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        history.push(ChatMessage::new("user", line));
        let prompt = template.encode(&loaded.tokenizer, &history, true)?;
        let reply = stream(&mut engine, prompt, params(&args.sampling)?)?;
        history.push(ChatMessage::new("assistant", &reply));
    }
}
