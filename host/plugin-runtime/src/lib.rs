//! Weft's plugin runtime: WebAssembly components under wasmtime, each call
//! inside a time and memory budget, behind the engine's decision traits.
//!
//! [`PluginRuntime`] owns the one `wasmtime::Engine` (pooling allocator,
//! epoch interruption driven by a ticker thread) and the linker. A
//! component is checked and compiled once ([`PluginRuntime::load_sampler`]:
//! size cap, world, imports against the grants), then instantiated from its
//! pre-linked template; with [`PluginRuntime::with_cache`] the compiled
//! code is kept on disk ([`CompiledCache`]) so a restart maps it back in.
//! [`WasmSampler`] implements `weft_types::Sampler`: one guest call per
//! engine step for the whole batch, its logits kept by the host where the
//! backend left them behind the `batch` resource ([`batch`]), its answer
//! checked by the engine.
//! [`WasmGuide`] is a guide component set up once for the model's
//! vocabulary; each [`GuidedSequence`] implements `weft_types::Guide` for
//! one constrained sequence. [`WasmAuth`] asks an auth component who a
//! request comes from, [`WasmRouter`] a router component where it goes,
//! and [`WasmToolParser`] a tool-parser component how the model writes tool
//! calls (and, through a [`ToolStream`], which calls an answer made).
//!
//! A trap, a deadline overrun or an exhausted memory fails only the call
//! (and so only the requests in it); the instance is discarded and rebuilt
//! for the next call, never re-entered.
//!
//! Architecture invariant: this is the only crate that links wasmtime, and
//! [`bindings`] is the only module that generates bindings from `wit/`.

mod auth;
pub mod batch;
pub mod bindings;
mod cache;
pub mod conformance;
mod error;
mod guide;
mod health;
mod rebuilt;
pub mod limits;
mod router;
mod runtime;
mod sampler;
mod sandbox;
mod tool_parser;

pub use auth::{AuthDecision, MAX_PRINCIPAL_BYTES, Principal, WasmAuth};
pub use cache::CompiledCache;
pub use error::PluginError;
pub use limits::{Grants, Limits};
pub use guide::{GuidedSequence, Tokenize, WasmGuide};
pub use health::Health;
pub use router::{Backend, Route, WasmRouter};
pub use runtime::{AuthComponent, EPOCH_TICK, GuideComponent, Loaded, PluginRuntime, RouterComponent, SamplerComponent, ToolParserComponent};
pub use sampler::WasmSampler;
pub use tool_parser::{Call, EVENT_SLACK_BYTES, MAX_RENDERED_BYTES, Tool, ToolEvent, ToolStream, WasmToolParser};
