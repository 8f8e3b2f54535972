//! Sampling parameters and the reasons a sequence stops.
//!
//! These are *validated* values: whoever builds them (the CLI today, the
//! server's validation layer later) has already checked the bounds stated on
//! each field. The engine trusts them.

use serde::{Deserialize, Serialize};

/// A token id in the model's vocabulary.
pub type TokenId = u32;

/// How the next token is chosen for one sequence.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    /// Softmax temperature; `0.0` means greedy (argmax). Range `[0, 100]`.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; `0` disables. Default `0`.
    pub top_k: u32,
    /// Nucleus sampling mass in `(0, 1]`; `1.0` disables. Default `1.0`.
    pub top_p: f32,
    /// Drop tokens whose probability is below `min_p` × the top token's, in
    /// `[0, 1]`; `0.0` disables. Default `0.0`.
    pub min_p: f32,
    /// OpenAI's presence penalty, in `[-2, 2]`: subtracted once from the
    /// logit of every token already generated. Default `0.0`.
    pub presence_penalty: f32,
    /// OpenAI's frequency penalty, in `[-2, 2]`: subtracted from a token's
    /// logit once per time it was generated. Default `0.0`.
    pub frequency_penalty: f32,
    /// The CTRL / Hugging Face repetition penalty, in `(0, 10]`: logits of
    /// tokens seen in the prompt or the output are divided by it when
    /// positive and multiplied when negative. `1.0` disables. Default `1.0`.
    pub repetition_penalty: f32,
    /// Added to the logits of the given token ids before sampling, each value
    /// in `[-100, 100]`, ids inside the vocabulary, at most 300 entries
    /// (OpenAI's limits). Default empty.
    pub logit_bias: Vec<(TokenId, f32)>,
    /// Return the log-probabilities of this many most likely alternatives
    /// with every generated token, at most 20. Default `0`.
    pub top_logprobs: u32,
    /// The request reports each token's log-probability. A guide's forced
    /// run then comes one token per step (each needs its own logits row);
    /// without it the whole run is appended at once. Default `false`.
    #[serde(default)]
    pub logprobs: bool,
    /// Seed for this sequence's random draws. The draw for the `i`-th generated
    /// token depends only on `(seed, i)`, so a sequence replays identically
    /// after preemption or inside any batch.
    pub seed: u64,
    /// Generate at most this many tokens. Default `256`.
    pub max_tokens: u32,
    /// Stop when one of these strings appears in the output (the string is not
    /// emitted). At most 4 strings of at most 256 bytes each.
    pub stop: Vec<String>,
    /// Never end on an end-of-sequence token: such tokens are excluded from
    /// sampling (llama.cpp's semantics), so exactly `max_tokens` tokens of
    /// text come out unless a stop string matches. Default `false`.
    pub ignore_eos: bool,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            repetition_penalty: 1.0,
            logit_bias: Vec::new(),
            top_logprobs: 0,
            logprobs: false,
            seed: 0,
            max_tokens: 256,
            stop: Vec::new(),
            ignore_eos: false,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding of at most `max_tokens` tokens.
    pub fn greedy(max_tokens: u32) -> Self {
        Self { max_tokens, ..Self::default() }
    }

    /// Whether this sequence picks the argmax at every step.
    pub fn is_greedy(&self) -> bool {
        is_greedy_choice(self.temperature, self.top_k)
    }

    /// Whether the request reports log-probabilities (its own, or the top
    /// alternatives'), which costs a pass over the vocabulary per token.
    pub fn reports_logprobs(&self) -> bool {
        self.logprobs || self.top_logprobs > 0
    }

    /// Whether the logits are changed before the choice (bias or a penalty),
    /// which needs a private copy of the sequence's logits row.
    pub fn adjusts_logits(&self) -> bool {
        !self.logit_bias.is_empty()
            || self.presence_penalty != 0.0
            || self.frequency_penalty != 0.0
            || self.repetition_penalty != 1.0
            || self.ignore_eos
    }
}

/// Why a sequence finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The model produced an end-of-sequence token, or a stop string matched.
    Stop,
    /// `max_tokens` or the context length was reached.
    Length,
    /// The request was cancelled by its client.
    Cancelled,
    /// A decision for the request failed (a plugin fault); the output
    /// carries the error.
    Error,
}

/// Whether a choice at `temperature` among the `top_k` most likely tokens
/// (0: all) is the single most likely token: the one statement of the
/// greedy rule, for parameters and for a sampler's own cuts alike.
pub fn is_greedy_choice(temperature: f32, top_k: u32) -> bool {
    temperature == 0.0 || top_k == 1
}
