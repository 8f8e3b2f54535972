//! The decision traits the engine calls: policy that plugins (or native
//! stand-ins) provide, behind interfaces that know nothing of how they are
//! implemented.
//!
//! The engine calls each decision once per step for the whole batch; the
//! implementation's answer is validated by the engine like user input.

use thiserror::Error;

use crate::{SamplingParams, TokenId};

/// One sequence that needs its next token this step.
#[derive(Clone, Copy, Debug)]
pub struct SampleRow<'a> {
    /// The model's raw logits for the next token (one per vocabulary entry).
    pub logits: &'a [f32],
    pub params: &'a SamplingParams,
    /// The prompt followed by the tokens generated so far.
    pub tokens: &'a [TokenId],
    pub prompt_len: usize,
}

impl SampleRow<'_> {
    /// Tokens generated so far: the index of the token being chosen.
    pub fn position(&self) -> u64 {
        (self.tokens.len() - self.prompt_len) as u64
    }
}

/// A sampler that could not decide. It fails the rows it was asked about,
/// never the rest of the batch.
#[derive(Clone, Debug, Error, PartialEq)]
pub enum SamplerError {
    /// The sampler broke (a plugin trapped, overran its deadline or memory,
    /// or returned something invalid).
    #[error("sampler {sampler} failed: {message}")]
    Fault { sampler: String, message: String },
    /// The sampler refused (its own error, e.g. no candidates).
    #[error("sampler {sampler} refused: {code}: {message}")]
    Refused { sampler: String, code: String, message: String },
}

/// Chooses the next token of every row of a batch in one call.
pub trait Sampler: Send {
    /// A name for errors and metrics (`builtin:sampler@0.1.0`, `native`).
    fn name(&self) -> &str;

    /// One token per row, in row order. `eos` are the end-of-generation
    /// tokens (for `ignore_eos`).
    fn sample(&mut self, rows: &[SampleRow<'_>], eos: &[TokenId]) -> Result<Vec<TokenId>, SamplerError>;
}

/// What a guide allows a sequence to do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GuideStep {
    /// Bit `t % 32` of word `t / 32` allows token `t`.
    Mask(Vec<u32>),
    /// Append these tokens without sampling (at least one).
    Force(Vec<TokenId>),
    /// The constraint is satisfied and allows nothing more: end the sequence.
    Stop,
}

/// A guide that could not answer. It fails its own sequence only.
#[derive(Clone, Debug, Error, PartialEq)]
pub enum GuideError {
    /// The guide broke (a plugin trapped, overran its deadline or memory,
    /// or answered something invalid).
    #[error("guide {guide} failed: {message}")]
    Fault { guide: String, message: String },
    /// The guide refused (its own error, e.g. the constraint allows no
    /// token, or rejected the committed one).
    #[error("guide {guide} refused: {code}: {message}")]
    Refused { guide: String, code: String, message: String },
}

/// One sequence's constraint (JSON schema, regex, grammar): asked for the
/// next step's allowed tokens while the forward pass runs, told every token
/// the sequence commits.
pub trait Guide: Send + std::fmt::Debug {
    /// The allowed next tokens, forced tokens, or the end.
    fn next(&mut self) -> Result<GuideStep, GuideError>;

    /// The token the sequence committed (sampled from the mask, or forced).
    fn commit(&mut self, token: TokenId) -> Result<(), GuideError>;
}

/// Why a sequence failed during a step: a plugin decision, or the backend.
#[derive(Clone, Debug, Error, PartialEq)]
pub enum DecisionError {
    #[error(transparent)]
    Sampler(#[from] SamplerError),
    #[error(transparent)]
    Guide(#[from] GuideError),
    /// The device running the model failed the step (not a plugin's fault).
    #[error("the model backend failed: {0}")]
    Backend(String),
}
