//! Types shared by every Weft crate.
//!
//! This crate is deliberately tiny and dependency-free (serde aside): the
//! engine, the plugin runtime and the server all speak these types, so none of
//! them has to depend on another to exchange a request or a decision. It holds
//! data and traits only — no model code, no I/O.

pub mod decide;
pub mod logits;
pub mod sampling;

pub use decide::{DecisionError, Guide, GuideError, GuideStep, SampleRow, Sampler, SamplerError};
pub use logits::{Cuts, LogProbs, LogitEdit, LogitsError, LogitsRows, Pick, choose_across};
pub use sampling::{SamplingParams, StopReason, TokenId, is_greedy_choice};
