//! Shared helpers for the end-to-end tests: where the model and the
//! fixtures are, and small drivers around the engine.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use weft_engine::kv_cache::KvStorage;
use weft_engine::model::{BatchToken, ForwardBatch, LlamaModel};
use weft_engine::{Engine, EngineConfig, GenerationRequest, LoadedModel, Output};
use weft_types::SamplingParams;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// A file under `tests/data/`.
pub fn data(rel: &str) -> PathBuf {
    repo_root().join("tests/data").join(rel)
}

/// Path of the default model: `$WEFT_TEST_MODEL`, else the store's copy
/// (`$WEFT_HOME`, else the XDG cache), which `weft pull` puts there.
pub fn default_model_path() -> PathBuf {
    if let Some(p) = std::env::var_os("WEFT_TEST_MODEL") {
        return PathBuf::from(p);
    }
    let root = match std::env::var_os("WEFT_HOME") {
        Some(h) if !h.is_empty() => PathBuf::from(h),
        _ => std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .expect("HOME or XDG_CACHE_HOME is set")
            .join("weft"),
    };
    let path = root.join("models/smollm2-135m-instruct-q4_1.gguf");
    assert!(path.is_file(), "{} is missing: run `cargo run --release -p weft -- pull` first", path.display());
    path
}

/// The default model, loaded once per test binary.
pub fn default_model() -> &'static LoadedModel {
    static MODEL: OnceLock<LoadedModel> = OnceLock::new();
    MODEL.get_or_init(|| LoadedModel::open(&default_model_path()).expect("default model loads"))
}

/// An engine over the default model with the given pool size and step budget.
pub fn engine_with(num_blocks: usize, max_batch_tokens: usize) -> Engine {
    let m = default_model();
    let mut config = EngineConfig::for_model(&m.model, 64 << 20);
    config.num_blocks = num_blocks;
    config.max_batch_tokens = max_batch_tokens;
    Engine::new(Arc::clone(&m.model), Arc::clone(&m.tokenizer), config)
}

/// A request for `prompt` with `params`.
pub fn request(prompt: &[u32], params: SamplingParams) -> GenerationRequest {
    GenerationRequest { prompt: prompt.to_vec(), params, tenant: String::new(), score_prompt: false }
}

/// Drive `engine` until idle; returns every output in order.
pub fn run_to_completion(engine: &mut Engine) -> Vec<Output> {
    let mut all = Vec::new();
    let mut guard = 0;
    while engine.has_work() {
        all.extend(engine.step());
        guard += 1;
        assert!(guard < 100_000, "engine did not finish");
    }
    all
}

/// Tokens generated for request `id`, concatenated across steps.
pub fn tokens_of(outputs: &[Output], id: u64) -> Vec<u32> {
    outputs.iter().filter(|o| o.id == id).flat_map(|o| o.tokens.clone()).collect()
}

/// Logits at every position of `tokens` in one single-sequence pass.
pub fn all_logits(model: &LlamaModel, tokens: &[u32]) -> Vec<f32> {
    let bs = 16;
    let blocks = tokens.len().div_ceil(bs);
    let mut kv = KvStorage::new(model.config.layers, blocks, bs, model.config.kv_dim(), model.config.kv_precision());
    let table: Vec<u32> = (0..blocks as u32).collect();
    let batch = ForwardBatch {
        tokens: tokens.iter().enumerate().map(|(pos, &token)| BatchToken { token, pos, seq: 0, logits: true }).collect(),
        block_tables: vec![&table],
    };
    model.forward(&batch, &mut kv)
}
