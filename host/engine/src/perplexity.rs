//! Perplexity the way llama.cpp's `llama-perplexity` measures it.
//!
//! The text's tokens are cut into `n_tokens / ctx` chunks of `ctx` tokens;
//! each chunk is evaluated from an empty cache and only its second half is
//! scored (every scored token has at least `ctx / 2` tokens of context).
//! When the tokenizer adds a BOS token, each chunk's first token is replaced
//! by it.

use crate::engine::{Engine, GenerationRequest};
use crate::sequence::PromptScore;
use weft_types::SamplingParams;

/// Result of a perplexity run.
#[derive(Clone, Debug, PartialEq)]
pub struct Perplexity {
    pub chunks: usize,
    pub scored_tokens: usize,
    /// `exp(mean negative log-likelihood)`.
    pub value: f64,
}

/// Score `tokens` in chunks of `ctx` with `engine`.
pub fn perplexity(engine: &mut Engine, tokens: &[u32], ctx: usize, max_chunks: Option<usize>) -> Perplexity {
    perplexity_of(&chunk_scores(engine, tokens, ctx, max_chunks), ctx)
}

/// The perplexity of chunks already scored by [`chunk_scores`] with `ctx`.
pub fn perplexity_of(chunks: &[Vec<PromptScore>], ctx: usize) -> Perplexity {
    let first = ctx / 2;
    let mut nll = 0f64;
    let mut count = 0usize;
    for scores in chunks {
        // scores[i] predicts token i + 1; llama.cpp scores tokens first+1..ctx.
        for s in &scores[first..ctx - 1] {
            nll -= s.logprob as f64;
            count += 1;
        }
    }
    Perplexity { chunks: chunks.len(), scored_tokens: count, value: (nll / count.max(1) as f64).exp() }
}

/// The prompt scores of every chunk of `ctx` tokens (at most `max_chunks`),
/// each chunk from an empty cache with its first token replaced by BOS when
/// the tokenizer adds one: `ctx - 1` scores per chunk, position i predicting
/// token i + 1.
pub fn chunk_scores(engine: &mut Engine, tokens: &[u32], ctx: usize, max_chunks: Option<usize>) -> Vec<Vec<PromptScore>> {
    let bos = engine.tokenizer().adds_bos().then(|| engine.tokenizer().bos_token()).flatten();
    let mut chunks = tokens.len() / ctx;
    if let Some(m) = max_chunks {
        chunks = chunks.min(m);
    }
    (0..chunks)
        .map(|c| {
            let mut chunk = tokens[c * ctx..(c + 1) * ctx].to_vec();
            if let Some(b) = bos {
                chunk[0] = b;
            }
            let req = GenerationRequest {
                prompt: chunk,
                params: SamplingParams::greedy(1),
                tenant: format!("perplexity-{c}"),
                score_prompt: true,
                ..GenerationRequest::new(Vec::new(), SamplingParams::greedy(1))
            };
            let id = engine.add_request(req).expect("chunk fits the context");
            let mut scores = Vec::new();
            while engine.has_work() {
                for out in engine.step() {
                    if out.id == id {
                        scores.extend(out.prompt_scores);
                    }
                }
            }
            scores
        })
        .collect()
}
