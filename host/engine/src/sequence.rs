//! One request's state inside the engine: its tokens, its blocks, how far
//! its KV cache is computed, and the text it has produced so far.

use weft_types::{SamplingParams, StopReason};

use crate::kv_cache::{BlockHash, BlockPool};
use crate::tokenizer::StreamDecoder;

/// Identifies a request for its whole life in the engine.
pub type RequestId = u64;

/// Scores of one prompt position under teacher forcing.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PromptScore {
    /// `log p(prompt[i + 1] | prompt[..=i])`.
    pub logprob: f32,
    /// The model's most likely token after `prompt[..=i]`.
    pub argmax: u32,
    /// Its log-probability.
    pub argmax_logprob: f32,
}

pub(crate) struct Sequence {
    pub id: RequestId,
    /// Prompt followed by generated tokens.
    pub tokens: Vec<u32>,
    pub prompt_len: usize,
    /// Tokens whose keys and values are in the cache.
    pub computed: usize,
    pub blocks: Vec<u32>,
    /// Hash of each full block in `blocks` registered so far.
    pub hashes: Vec<BlockHash>,
    pub root: BlockHash,
    pub params: SamplingParams,
    /// Score every prompt position (disables prefix reuse for this request).
    pub score_prompt: bool,
    /// Which of the engine's samplers chooses its tokens.
    pub sampler: crate::engine::SamplerId,
    /// The constraint on its tokens, if any (taken out while a guide
    /// worker computes its next step).
    pub guide: Option<Box<dyn weft_types::Guide>>,
    /// Its guide missed a step's deadline and is still computing: the
    /// sequence sits out steps (never planned, never preempted) until the
    /// answer comes.
    pub awaiting_guide: bool,
    /// The logits row its next token is chosen from, kept while its guide
    /// is late.
    pub held_row: Option<Vec<f32>>,
    /// The late guide's answer, applied to `held_row` in the next step.
    pub guide_answer: Option<Result<weft_types::GuideStep, weft_types::GuideError>>,
    pub scored: usize,
    pub decoder: StreamDecoder,
    /// Generated text so far (stop strings cut it).
    pub text: String,
    /// Bytes of `text` already handed to the client.
    pub emitted: usize,
    pub finished: Option<StopReason>,
}

impl Sequence {
    /// Whether preempting it is safe: not while a late guide holds its
    /// next step (its kept row and answer belong to the computed state).
    pub fn preemptible(&self) -> bool {
        !self.awaiting_guide && self.held_row.is_none() && self.guide_answer.is_none()
    }

    pub fn generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }

    /// Give every block back and forget the computed state (preemption,
    /// completion or cancellation).
    pub fn release_blocks(&mut self, pool: &mut BlockPool) {
        for b in self.blocks.drain(..) {
            pool.release(b);
        }
        self.hashes.clear();
        self.computed = 0;
    }

    /// Append newly decoded text, apply stop strings, and return the text
    /// that is safe to emit now. Sets `finished` when a stop string matched.
    pub fn push_text(&mut self, delta: &str) -> String {
        self.text.push_str(delta);
        let longest = self.params.stop.iter().map(String::len).max().unwrap_or(0);
        if longest > 0 {
            let mut start = self.emitted.saturating_sub(longest);
            while !self.text.is_char_boundary(start) {
                start -= 1;
            }
            let hit = self.params.stop.iter().filter_map(|s| self.text[start..].find(s.as_str()).map(|i| start + i)).min();
            if let Some(cut) = hit {
                self.text.truncate(cut);
                self.finished = Some(StopReason::Stop);
                return self.flush();
            }
        }
        // Hold back a tail that could still grow into a stop string.
        let hold = self
            .params
            .stop
            .iter()
            .map(|s| {
                (1..s.len()).rev().filter(|&k| s.is_char_boundary(k)).find(|&k| self.text.ends_with(&s[..k])).unwrap_or(0)
            })
            .max()
            .unwrap_or(0);
        let mut safe = self.text.len() - hold;
        while !self.text.is_char_boundary(safe) {
            safe -= 1;
        }
        let safe = safe.max(self.emitted);
        let out = self.text[self.emitted..safe].to_string();
        self.emitted = safe;
        out
    }

    /// Everything not yet emitted.
    pub fn flush(&mut self) -> String {
        let out = self.text[self.emitted..].to_string();
        self.emitted = self.text.len();
        out
    }
}
