//! The seam between the scheduler and the hardware that runs the model.
//!
//! The engine decides *what* to compute each step (which tokens, which
//! positions, which KV blocks); a [`Backend`] computes it and owns what that
//! needs: the weights in the form its kernels read, and the storage behind
//! the KV blocks the engine's pool hands out. [`CpuBackend`] is the model's
//! own forward pass over host memory; the CUDA backend lives in its own crate
//! (`weft-backend-cuda`), so this crate never links a GPU library.

use std::sync::Arc;

use thiserror::Error;
use weft_types::LogitsRows;

use crate::kv_cache::KvStorage;
use crate::model::{ForwardBatch, LlamaModel, ModelConfig};
use crate::sampling::HostRows;

/// A failure of the device under a step (the CPU backend has none).
#[derive(Debug, Error)]
#[error("{backend}: {message}")]
pub struct BackendError {
    pub backend: String,
    pub message: String,
}

impl BackendError {
    pub fn new(backend: impl Into<String>, message: impl ToString) -> Self {
        Self { backend: backend.into(), message: message.to_string() }
    }
}

/// Runs a model's forward pass over the paged KV cache.
///
/// The engine calls [`Backend::allocate_kv`] once, before any step, with the
/// pool's geometry; block ids in every later [`ForwardBatch`] are below
/// `num_blocks`, every token id is below the vocabulary and every block table
/// covers its token's position.
pub trait Backend: Send {
    /// What runs the model, for logs and `/admin`: "cpu", "cuda:0 (NVIDIA H100 …)".
    fn name(&self) -> String;

    fn config(&self) -> &ModelConfig;

    /// Bytes one token's keys and values take across all layers.
    fn kv_bytes_per_token(&self) -> usize;

    /// Tokens one engine step computes unless the operator says otherwise
    /// ([`EngineConfig::max_batch_tokens`](crate::EngineConfig)): enough
    /// that this backend's matrix products run at full speed, few enough
    /// that a step carrying a prompt chunk does not stall the sequences
    /// decoding beside it.
    fn default_step_tokens(&self) -> usize;

    /// Reserve storage for `num_blocks` blocks of `block_size` token slots.
    fn allocate_kv(&mut self, num_blocks: usize, block_size: usize) -> Result<(), BackendError>;

    /// Run one step: write the batch's keys and values into their slots,
    /// then return the logits of the tokens marked `logits`, in batch order,
    /// `vocab_size` each, where this backend keeps them (the samplers'
    /// choices run there too).
    fn forward(&mut self, batch: &ForwardBatch) -> Result<Box<dyn LogitsRows>, BackendError>;
}

/// The model on the host's cores ([`LlamaModel::forward`]).
pub struct CpuBackend {
    model: Arc<LlamaModel>,
    kv: Option<KvStorage>,
}

impl CpuBackend {
    pub fn new(model: Arc<LlamaModel>) -> Self {
        Self { model, kv: None }
    }

    /// Bytes one token's keys and values take in host storage for `config`.
    pub fn bytes_per_token(config: &ModelConfig) -> usize {
        KvStorage::bytes_per_token(config.layers, config.kv_dim(), config.kv_precision())
    }

    /// The CPU's step budget (docs/performance.md, "The step token
    /// budget"; 2 cores, the default model): a step of 512 prompt tokens
    /// holds every decoding sequence's next token for most of a second,
    /// while prefill runs as fast per token in smaller chunks; below 256,
    /// with many sequences decoding, nearly every step carries a chunk and
    /// the median inter-token latency doubles.
    pub const STEP_TOKENS: usize = 256;
}

impl Backend for CpuBackend {
    fn name(&self) -> String {
        "cpu".into()
    }

    fn config(&self) -> &ModelConfig {
        &self.model.config
    }

    fn kv_bytes_per_token(&self) -> usize {
        Self::bytes_per_token(&self.model.config)
    }

    fn default_step_tokens(&self) -> usize {
        Self::STEP_TOKENS
    }

    fn allocate_kv(&mut self, num_blocks: usize, block_size: usize) -> Result<(), BackendError> {
        let c = &self.model.config;
        self.kv = Some(KvStorage::new(c.layers, num_blocks, block_size, c.kv_dim(), c.kv_precision()));
        Ok(())
    }

    fn forward(&mut self, batch: &ForwardBatch) -> Result<Box<dyn LogitsRows>, BackendError> {
        let kv = self.kv.as_mut().ok_or_else(|| BackendError::new("cpu", "forward before allocate_kv"))?;
        Ok(Box::new(HostRows::new(self.model.forward(batch, kv), self.model.config.vocab_size)))
    }
}
