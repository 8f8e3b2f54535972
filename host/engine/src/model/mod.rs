//! Decoder-only transformer models (the Llama family) and their weights.
//!
//! `config` turns GGUF metadata or a Hugging Face `config.json` into one
//! [`ModelConfig`]; `weights` loads tensors from either source without
//! copying (both are memory-mapped); `rope` holds rotary position encoding;
//! `llama` is the forward pass over a batch of tokens with a paged KV cache;
//! `synthetic` makes models of a real shape with random weights (benchmarks);
//! `export` writes a loaded model as a Hugging Face directory.

pub mod config;
pub mod export;
pub mod llama;
pub mod rope;
pub mod synthetic;
pub mod weights;

use std::path::PathBuf;

use thiserror::Error;

use crate::gguf::GgufError;

pub use config::{ModelConfig, Numerics, RopeLayout, RopeScaling};
pub use llama::{BatchToken, ForwardBatch, LlamaModel};
pub use weights::Weight;

/// What can go wrong turning files into a model.
#[derive(Debug, Error)]
pub enum ModelError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("unsupported model: {0}")]
    Unsupported(String),
    #[error("tensor {name:?}: {reason}")]
    Tensor { name: String, reason: String },
    #[error("safetensors file {path}: {reason}")]
    Safetensors { path: PathBuf, reason: String },
}
