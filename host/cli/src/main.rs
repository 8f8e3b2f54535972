//! The `weft` command line: a thin shell over the engine.
//!
//! `weft pull` fetches the default model (or imports a local one),
//! `weft generate` completes a prompt, `weft chat` holds a conversation in
//! the terminal, `weft serve` serves the HTTP API, `weft admin` and `weft
//! plugin` talk to a running server. Argument parsing and
//! printing live here; everything else is in the library crates.

mod admin;
mod bench;
mod conformance;
mod device;
mod loadgen;
mod plugin_bench;
mod run;
mod serve;
mod store;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::store::Store;

#[derive(Parser)]
#[command(name = "weft", version, about = "Weft: a programmable LLM serving platform")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fetch the default model, or import a local .gguf file or Hugging Face directory.
    Pull {
        /// A .gguf file or a directory with config.json, *.safetensors and tokenizer.json.
        path: Option<PathBuf>,
    },
    /// Complete a prompt and print the completion.
    Generate(run::GenerateArgs),
    /// Chat with the model in the terminal.
    Chat(run::ChatArgs),
    /// Serve the OpenAI-compatible HTTP API and the gRPC API.
    Serve(serve::ServeArgs),
    /// A running server's model status and draining, through its admin API.
    Admin(admin::AdminArgs),
    /// Deploy, inspect, promote, roll back and remove a running server's plugins.
    Plugin(admin::PluginArgs),
    /// Check a tool-parser plugin against a corpus of answers, whole and streamed.
    Conformance(conformance::ConformanceArgs),
    /// Measure the engine's prefill and decode throughput, or (with --url) load-test an OpenAI-compatible server.
    Bench(bench::BenchArgs),
    /// Write a model as a Hugging Face directory (config.json, F32 model.safetensors, tokenizer.json).
    Export {
        /// A model path, a pulled model's name, or `default`.
        #[arg(long, env = "WEFT_MODEL")]
        model: Option<String>,
        /// The directory to write (created if missing).
        #[arg(long, value_name = "DIR")]
        hf: PathBuf,
    },
}

/// Options shared by the commands that run a model.
#[derive(Args, Clone, Debug)]
pub struct ModelArgs {
    /// A model path, a pulled model's name, or `default`.
    #[arg(long, env = "WEFT_MODEL")]
    pub model: Option<String>,
    /// Compute threads (default: all cores).
    #[arg(long, env = "WEFT_THREADS")]
    pub threads: Option<usize>,
    /// Who chooses tokens: the builtin sampler plugin (WebAssembly, the
    /// default) or the host's native sampler (the reference it matches).
    #[arg(long, env = "WEFT_SAMPLER", value_enum, default_value_t = SamplerKind::Builtin)]
    pub sampler: SamplerKind,
    /// Where the model runs: cpu, cuda or cuda:N (CUDA needs a weft built
    /// with `--features cuda`). Default cpu.
    #[arg(long, env = "WEFT_DEVICE")]
    pub device: Option<device::Device>,
    /// How a GPU's KV cache stores keys and values.
    #[arg(long, env = "WEFT_KV_CACHE_TYPE", value_enum)]
    pub kv_cache_type: Option<device::KvCacheType>,
    /// Run every decode step's launches one by one instead of replaying
    /// them as a CUDA graph.
    #[arg(long, env = "WEFT_NO_CUDA_GRAPHS")]
    pub no_cuda_graphs: bool,
}

impl ModelArgs {
    /// Where and how the model runs; compiled GPU kernels are kept in `store`.
    pub fn placement(&self, store: &Store) -> device::Placement {
        device::Placement {
            device: self.device.unwrap_or_default(),
            kv: self.kv_cache_type.unwrap_or_default(),
            graphs: !self.no_cuda_graphs,
            // $WEFT_CUDA_CACHE, when set, chooses (the kernels crate reads it).
            kernel_cache: std::env::var_os("WEFT_CUDA_CACHE").is_none().then(|| store.cuda_cache()),
        }
    }
}

/// The samplers `--sampler` can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SamplerKind {
    Builtin,
    Native,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let store = Store::from_env()?;
    match cli.command {
        Command::Pull { path: None } => {
            let path = store.pull_default()?;
            println!("{}", path.display());
        }
        Command::Pull { path: Some(p) } => {
            let name = store.import(&p)?;
            println!("imported as {name:?}; use it with --model {name}");
        }
        Command::Generate(args) => run::generate(&store, args)?,
        Command::Chat(args) => run::chat(&store, args)?,
        Command::Serve(args) => serve::serve(&store, args)?,
        Command::Admin(args) => admin::admin(args)?,
        Command::Plugin(args) => admin::plugin(args)?,
        Command::Bench(args) => bench::bench(&store, args)?,
        Command::Conformance(args) => conformance::conformance(args)?,
        Command::Export { model, hf } => {
            let path = store.resolve(model.as_deref())?;
            let loaded = weft_engine::LoadedModel::open(&path).with_context(|| format!("loading {}", path.display()))?;
            weft_engine::model::export::export_hf(&loaded, &hf).with_context(|| format!("exporting to {}", hf.display()))?;
            println!("{}", hf.display());
        }
    }
    Ok(())
}
