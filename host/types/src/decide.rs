//! The decision traits the engine calls: policy that plugins (or native
//! stand-ins) provide, behind interfaces that know nothing of how they are
//! implemented.
//!
//! The engine calls each decision once per step for the whole batch; the
//! implementation's answer is validated by the engine like user input.

use thiserror::Error;

use crate::logits::{Cuts, LogitEdit, LogitsError, LogitsRows, Pick};
use crate::{SamplingParams, TokenId};

/// One sequence that needs its next token this step.
#[derive(Clone, Copy)]
pub struct SampleRow<'a> {
    /// The step's logits rows, wherever the backend keeps them.
    pub logits: &'a dyn LogitsRows,
    /// Which of them holds the model's raw logits for this sequence's next
    /// token.
    pub row: usize,
    /// The tokens the sequence's guide allows (bit `t % 32` of word
    /// `t / 32`), if it is guided: the sampler sees the row with the rest
    /// ruled out.
    pub mask: Option<&'a [u32]>,
    pub params: &'a SamplingParams,
    /// The prompt followed by the tokens generated so far.
    pub tokens: &'a [TokenId],
    pub prompt_len: usize,
}

impl<'a> SampleRow<'a> {
    /// Tokens generated so far: the index of the token being chosen.
    pub fn position(&self) -> u64 {
        (self.tokens.len() - self.prompt_len) as u64
    }

    pub fn vocab(&self) -> usize {
        self.logits.vocab()
    }

    /// This row's choice with `edits`, by `cuts`, drawn with `uniform`.
    pub fn pick<'e>(&self, edits: &'e [(TokenId, LogitEdit)], cuts: Cuts, uniform: f64) -> Pick<'e>
    where
        'a: 'e,
    {
        Pick { row: self.row, mask: self.mask, edits, cuts, uniform }
    }
}

impl std::fmt::Debug for SampleRow<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SampleRow")
            .field("row", &self.row)
            .field("masked", &self.mask.is_some())
            .field("params", self.params)
            .field("tokens", &self.tokens.len())
            .field("prompt_len", &self.prompt_len)
            .finish()
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
    /// The device holding the logits failed (not the sampler's fault).
    #[error(transparent)]
    Logits(#[from] LogitsError),
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
    Sampler(SamplerError),
    #[error(transparent)]
    Guide(#[from] GuideError),
    /// The device running the model failed the step (not a plugin's fault).
    #[error("the model backend failed: {0}")]
    Backend(String),
}

impl From<LogitsError> for DecisionError {
    /// The device holding a step's logits failed to hand them over or to
    /// choose from them: the backend's failure.
    fn from(e: LogitsError) -> Self {
        Self::Backend(e.to_string())
    }
}

impl From<SamplerError> for DecisionError {
    /// A sampler's own failure, or the backend's when the device holding
    /// the logits failed under it.
    fn from(e: SamplerError) -> Self {
        match e {
            SamplerError::Logits(e) => e.into(),
            e => Self::Sampler(e),
        }
    }
}
