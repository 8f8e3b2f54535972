//! Weft's inference engine.
//!
//! It turns a model on disk into tokens: [`gguf`] and [`model`] load weights
//! without copying them, [`tokenizer`] and [`chat_template`] turn
//! conversations into token ids, and [`engine`] runs continuous batching over
//! a paged, prefix-sharing KV cache ([`kv_cache`]).
//!
//! Architecture invariant: this crate knows nothing of HTTP, gRPC or
//! WebAssembly. Policy decisions that plugins will make arrive through
//! traits in `weft-types`; a test checks from `cargo metadata` that wasmtime,
//! hyper, tonic and axum are not in this crate's dependency closure.

pub mod backend;
pub mod chat_template;
pub mod engine;
pub mod gguf;
mod guide_workers;
pub mod kv_cache;
pub mod loader;
pub mod model;
pub mod perplexity;
pub mod sampling;
mod sequence;
pub mod tokenizer;

pub use backend::{Backend, BackendError, CpuBackend};
pub use engine::{DEFAULT_SAMPLER, Engine, EngineConfig, EngineError, EngineStats, GenerationRequest, Output, SamplerId, StepTiming};
pub use loader::{LoadError, LoadedModel};
pub use sequence::{PromptScore, RequestId};
