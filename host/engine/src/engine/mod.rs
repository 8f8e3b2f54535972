//! The engine: continuous batching over a paged KV cache.
//!
//! Each [`Engine::step`] plans one forward pass for the whole running set:
//! every decoding sequence contributes its next token first, then prefilling
//! sequences contribute chunks of their prompt while the step's token budget
//! lasts (chunked prefill, so a long prompt never stalls running decodes),
//! then waiting requests are admitted, reusing cached prefix blocks where
//! their hash chain matches. When the pool runs out of blocks the most
//! recently admitted sequence is preempted: its blocks are released and it
//! goes back to the front of the queue to be recomputed later, which yields
//! the same tokens because sampling depends only on `(seed, index)`.
//!
//! Guided sequences get their masks from guide worker threads during the
//! forward pass ([`crate::guide_workers`]); a guide late past the step's
//! grace period stalls only its sequence, which keeps its logits row and
//! sits out steps until the answer comes (its tokens are the same, only
//! later). Otherwise the engine is a plain single-owner state machine; the
//! server drives it from one task.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;
use weft_types::{DecisionError, Guide, LogitsRows, Sampler, SamplingParams, StopReason};

mod decide;

use crate::guide_workers::{Answer, GuideWorkers};
use crate::backend::{Backend, BackendError, CpuBackend};
use crate::kv_cache::{BlockPool, chain_next, chain_root};
use crate::model::{BatchToken, ForwardBatch, LlamaModel, ModelConfig};
use crate::sampling::{HostRows, NativeSampler};
use crate::sequence::{PromptScore, RequestId, Sequence};
use crate::tokenizer::Tokenizer;

/// `(position, has logits)` of every token of a step, in batch order.
type TokenFlags = Vec<(usize, bool)>;

/// How long a step with nothing to compute waits for a late guide.
const GUIDE_POLL: Duration = Duration::from_millis(10);

/// Engine sizing. Every field documents its default.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Token slots per KV block. Default 16.
    pub block_size: usize,
    /// Blocks in the pool. Default: as many as fit in the byte budget given
    /// to [`EngineConfig::for_model`].
    pub num_blocks: usize,
    /// Most tokens computed in one step, prefill chunks included; at least
    /// `max_running` (the engine raises it), since every running sequence
    /// decodes one token a step. Default: the backend's ([`Backend::default_step_tokens`]: 256
    /// on the CPU, 512 on a GPU).
    pub max_batch_tokens: usize,
    /// Most sequences running at once. Default 64.
    pub max_running: usize,
    /// How long a step waits after its forward pass for guides still
    /// computing masks; a guide later than that stalls only its own
    /// sequence, which sits out steps until the answer comes. Default 20 ms.
    pub guide_grace: Duration,
    /// Threads computing guides' masks. Default 2.
    pub guide_threads: usize,
}

impl EngineConfig {
    /// Defaults for `model` on the CPU, with a KV cache of `kv_cache_bytes`.
    pub fn for_model(model: &LlamaModel, kv_cache_bytes: usize) -> Self {
        Self::for_kv(CpuBackend::bytes_per_token(&model.config), CpuBackend::STEP_TOKENS, kv_cache_bytes)
    }

    /// Defaults for `backend`, with a KV cache of `kv_cache_bytes`.
    pub fn for_backend(backend: &dyn Backend, kv_cache_bytes: usize) -> Self {
        Self::for_kv(backend.kv_bytes_per_token(), backend.default_step_tokens(), kv_cache_bytes)
    }

    fn for_kv(per_token: usize, step_tokens: usize, kv_cache_bytes: usize) -> Self {
        let block_size = 16;
        Self {
            block_size,
            num_blocks: (kv_cache_bytes / (per_token * block_size)).max(1),
            max_batch_tokens: step_tokens,
            max_running: 64,
            guide_grace: Duration::from_millis(20),
            guide_threads: 2,
        }
    }
}

/// A request as the engine accepts it: already tokenized and validated.
#[derive(Debug)]
pub struct GenerationRequest {
    pub prompt: Vec<u32>,
    pub params: SamplingParams,
    /// Salt for prefix-cache hashes: requests share cached blocks only with
    /// the same tenant.
    pub tenant: String,
    /// Return a [`PromptScore`] for every prompt position.
    pub score_prompt: bool,
    /// Which of the engine's samplers chooses this request's tokens
    /// ([`DEFAULT_SAMPLER`] unless one was added with [`Engine::add_sampler`]).
    pub sampler: SamplerId,
    /// Constrains which tokens may come next (guided generation).
    pub guide: Option<Box<dyn Guide>>,
}

/// Names one of the engine's samplers.
pub type SamplerId = usize;

/// The sampler every engine starts with ([`NativeSampler`] unless replaced
/// with [`Engine::set_sampler`]).
pub const DEFAULT_SAMPLER: SamplerId = 0;

impl GenerationRequest {
    /// A request for `prompt` with `params`, default tenant and sampler.
    pub fn new(prompt: Vec<u32>, params: SamplingParams) -> Self {
        Self { prompt, params, tenant: String::new(), score_prompt: false, sampler: DEFAULT_SAMPLER, guide: None }
    }
}

/// What one step produced for one request.
#[derive(Clone, Debug, Default)]
pub struct Output {
    pub id: RequestId,
    pub tokens: Vec<u32>,
    /// Log-probability of each token in `tokens` under the model's raw
    /// distribution (before bias, penalties or temperature) when the
    /// request asked for log-probabilities; NaN otherwise (computing it is a
    /// pass over the vocabulary per token).
    pub logprobs: Vec<f32>,
    /// For each token in `tokens`, the `top_logprobs` most likely tokens and
    /// their log-probabilities; empty unless the request asked for them.
    pub top_logprobs: Vec<Vec<(u32, f32)>>,
    /// Text completed by these tokens (valid UTF-8; stop strings removed).
    pub text: String,
    pub prompt_scores: Vec<PromptScore>,
    pub finished: Option<StopReason>,
    /// Why the request failed, when `finished` is [`StopReason::Error`].
    pub error: Option<DecisionError>,
    pub prompt_tokens: usize,
    /// Prompt tokens served from the prefix cache at admission.
    pub cached_tokens: usize,
}

/// A request the engine refuses.
#[derive(Clone, Debug, Error, PartialEq)]
pub enum EngineError {
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("token id {token} at prompt position {position} is outside the vocabulary of {vocab} tokens")]
    TokenOutOfRange { token: u32, position: usize, vocab: usize },
    #[error("prompt tokens + max_tokens must be ≤ {limit} ({what}); given {prompt} prompt tokens and {max_tokens} max_tokens")]
    TooLong { prompt: usize, max_tokens: u32, limit: usize, what: &'static str },
    #[error("no sampler {0} in this engine")]
    UnknownSampler(SamplerId),
}

/// Counters for tests, metrics and benchmarks.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EngineStats {
    /// Prompt tokens run through the model (prefix-cache hits excluded).
    pub prompt_tokens_computed: u64,
    /// Prompt tokens served from the prefix cache.
    pub prompt_tokens_cached: u64,
    pub preemptions: u64,
    pub steps: u64,
    /// Sampler calls that failed (each failed the rows it was asked about).
    pub sampler_failures: u64,
    /// Guide calls that failed (each failed its own sequence).
    pub guide_failures: u64,
    /// Steps a sequence sat out because its guide was late.
    pub guide_stalls: u64,
    /// Forward passes the backend failed (each failed its step's sequences).
    pub backend_failures: u64,
}

/// How long a step's parts took, and how much it computed.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepTiming {
    /// Tokens the forward pass computed: one per decoding sequence, and the
    /// prompt chunks (at most [`EngineConfig::max_batch_tokens`]).
    pub tokens: usize,
    /// The forward pass.
    pub forward: Duration,
    /// From handing the step's guides out to having every answer the step
    /// used (to the grace deadline when one was late); `None` when no guide
    /// was asked. Within `forward`, the masks cost the batch nothing.
    pub masks: Option<Duration>,
    /// How long the step waited after its forward pass for those answers
    /// (zero when the masks were hidden under it).
    pub masks_wait: Option<Duration>,
}

/// Continuous-batching inference over one model.
pub struct Engine {
    backend: Box<dyn Backend>,
    tokenizer: Arc<Tokenizer>,
    config: EngineConfig,
    pool: BlockPool,
    waiting: VecDeque<Sequence>,
    running: Vec<Sequence>,
    next_id: RequestId,
    stats: EngineStats,
    cached_at_admission: std::collections::HashMap<RequestId, usize>,
    /// By id; `None` once a retired sampler's last sequence has ended.
    samplers: Vec<Option<Box<dyn Sampler>>>,
    /// Samplers that take no new requests and are dropped when unused.
    retired: Vec<SamplerId>,
    /// Started with the first guided step.
    guide_workers: Option<GuideWorkers>,
    last_step: Option<StepTiming>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("config", &self.config).field("stats", &self.stats).finish()
    }
}

impl Engine {
    /// An engine running `model` on the CPU.
    pub fn new(model: Arc<LlamaModel>, tokenizer: Arc<Tokenizer>, config: EngineConfig) -> Self {
        Self::with_backend(Box::new(CpuBackend::new(model)), tokenizer, config)
            .expect("the CPU backend allocates its KV cache lazily and cannot fail")
    }

    /// An engine running its model on `backend`, whose KV storage is
    /// allocated here for the configured pool. A step budget below
    /// `max_running` is raised to it: every running sequence decodes a
    /// token each step.
    pub fn with_backend(mut backend: Box<dyn Backend>, tokenizer: Arc<Tokenizer>, mut config: EngineConfig) -> Result<Self, BackendError> {
        config.max_running = config.max_running.max(1);
        config.max_batch_tokens = config.max_batch_tokens.max(config.max_running);
        backend.allocate_kv(config.num_blocks, config.block_size)?;
        let pool = BlockPool::new(config.num_blocks);
        Ok(Self {
            backend,
            tokenizer,
            config,
            pool,
            waiting: VecDeque::new(),
            running: Vec::new(),
            next_id: 1,
            stats: EngineStats::default(),
            cached_at_admission: Default::default(),
            samplers: vec![Some(Box::new(NativeSampler))],
            retired: Vec::new(),
            guide_workers: None,
            last_step: None,
        })
    }

    /// Drop every request and forget the prefix cache, keeping the model,
    /// the configuration and the samplers: the way back to a known state
    /// after a step failed with a bug.
    pub fn reset(&mut self) {
        self.waiting.clear();
        self.running.clear();
        self.cached_at_admission.clear();
        self.pool = BlockPool::new(self.config.num_blocks);
        self.drop_unused_samplers();
    }

    /// Replace the default sampler ([`NativeSampler`] to begin with).
    pub fn set_sampler(&mut self, sampler: Box<dyn Sampler>) {
        self.samplers[DEFAULT_SAMPLER] = Some(sampler);
    }

    /// Add a sampler that requests can choose by the returned id.
    pub fn add_sampler(&mut self, sampler: Box<dyn Sampler>) -> SamplerId {
        self.samplers.push(Some(sampler));
        self.samplers.len() - 1
    }

    /// Take no new requests for sampler `id`; it is dropped once the last
    /// sequence using it ends (in-flight requests finish on it).
    pub fn retire_sampler(&mut self, id: SamplerId) {
        if id != DEFAULT_SAMPLER && !self.retired.contains(&id) {
            self.retired.push(id);
        }
        self.drop_unused_samplers();
    }

    /// Whether sampler `id` exists (not yet dropped).
    pub fn has_sampler(&self, id: SamplerId) -> bool {
        self.samplers.get(id).is_some_and(Option::is_some)
    }

    fn drop_unused_samplers(&mut self) {
        let in_use = |id: SamplerId, e: &Self| e.running.iter().chain(&e.waiting).any(|s| s.sampler == id);
        let unused: Vec<SamplerId> = self.retired.iter().copied().filter(|&id| !in_use(id, self)).collect();
        for id in unused {
            if let Some(slot) = self.samplers.get_mut(id) {
                *slot = None;
            }
            self.retired.retain(|&r| r != id);
        }
    }

    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.tokenizer
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    /// How long the last step took, part by part; `None` when it ran no
    /// model (nothing to compute).
    pub fn last_step_timing(&self) -> Option<StepTiming> {
        self.last_step
    }

    /// Blocks not referenced by any sequence.
    pub fn free_blocks(&self) -> usize {
        self.pool.num_free()
    }

    /// Whether any request is waiting or running.
    pub fn has_work(&self) -> bool {
        !self.waiting.is_empty() || !self.running.is_empty()
    }

    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Queue a request. It starts running at a later [`Engine::step`].
    pub fn add_request(&mut self, req: GenerationRequest) -> Result<RequestId, EngineError> {
        let vocab = self.backend.config().vocab_size;
        if req.prompt.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        if let Some((position, &token)) = req.prompt.iter().enumerate().find(|(_, t)| **t as usize >= vocab) {
            return Err(EngineError::TokenOutOfRange { token, position, vocab });
        }
        let total = req.prompt.len() + req.params.max_tokens as usize;
        let context = self.backend.config().context_length;
        let capacity = self.config.num_blocks * self.config.block_size;
        for (limit, what) in [(context, "the model's context length"), (capacity, "the KV cache capacity")] {
            if total > limit {
                return Err(EngineError::TooLong { prompt: req.prompt.len(), max_tokens: req.params.max_tokens, limit, what });
            }
        }
        if !self.has_sampler(req.sampler) || self.retired.contains(&req.sampler) {
            return Err(EngineError::UnknownSampler(req.sampler));
        }
        let id = self.next_id;
        self.next_id += 1;
        self.waiting.push_back(Sequence {
            id,
            prompt_len: req.prompt.len(),
            tokens: req.prompt,
            computed: 0,
            blocks: Vec::new(),
            hashes: Vec::new(),
            root: chain_root(&req.tenant),
            params: req.params,
            score_prompt: req.score_prompt,
            sampler: req.sampler,
            guide: req.guide,
            awaiting_guide: false,
            held_row: None,
            guide_answer: None,
            scored: 0,
            decoder: self.tokenizer.stream(),
            text: String::new(),
            emitted: 0,
            finished: None,
        });
        Ok(id)
    }

    /// Stop a request now and free its blocks. Returns whether it existed.
    pub fn cancel(&mut self, id: RequestId) -> bool {
        let found = if let Some(i) = self.running.iter().position(|s| s.id == id) {
            let mut seq = self.running.remove(i);
            seq.release_blocks(&mut self.pool);
            true
        } else if let Some(i) = self.waiting.iter().position(|s| s.id == id) {
            self.waiting.remove(i);
            true
        } else {
            false
        };
        if found {
            self.cached_at_admission.remove(&id);
            if !self.retired.is_empty() {
                self.drop_unused_samplers();
            }
        }
        found
    }

    /// Run one forward pass for the running batch and return what each
    /// request produced.
    pub fn step(&mut self) -> Vec<Output> {
        self.last_step = None;
        self.take_guide_answers(Instant::now());
        let plan = self.plan();
        if plan.is_empty() {
            // Everyone left is waiting for a late guide: wait for one.
            if self.running.iter().any(|s| s.awaiting_guide) {
                self.take_guide_answers(Instant::now() + GUIDE_POLL);
            }
            return Vec::new();
        }
        self.stats.steps += 1;

        // The guides of sequences that choose a token this step compute
        // their masks on the guide workers while the forward pass runs.
        let mut asked: Vec<usize> = Vec::new();
        let asking = Instant::now();
        for (slot, &(i, n)) in plan.iter().enumerate() {
            let seq = &mut self.running[i];
            if n > 0
                && seq.computed + n == seq.tokens.len()
                && seq.guide_answer.is_none()
                && let Some(g) = seq.guide.take()
            {
                let id = seq.id;
                self.guide_workers().ask(id, g);
                asked.push(slot);
            }
        }
        let forward_start = Instant::now();
        let (flags, logits) = match self.forward(&plan) {
            Ok(done) => done,
            Err(e) => return self.fail_step(&plan, &e),
        };
        let forward_end = Instant::now();
        let forward = forward_end - forward_start;
        // Wait for this step's answers, up to the grace period.
        let deadline = Instant::now() + self.config.guide_grace;
        let mut outstanding: Vec<RequestId> = asked.iter().map(|&slot| self.running[plan[slot].0].id).collect();
        let mut masks_done = asking;
        while !outstanding.is_empty() {
            let Some(answer) = self.guide_workers.as_ref().and_then(|w| w.answer_by(deadline)) else { break };
            if outstanding.contains(&answer.id) {
                outstanding.retain(|&id| id != answer.id);
                masks_done = masks_done.max(answer.done);
            }
            self.take_guide_answer(answer);
        }
        if !outstanding.is_empty() {
            masks_done = deadline;
        }
        let guided = !asked.is_empty();
        self.last_step = Some(StepTiming {
            tokens: plan.iter().map(|&(_, n)| n).sum(),
            forward,
            masks: guided.then(|| masks_done - asking),
            masks_wait: guided.then(|| masks_done.saturating_duration_since(forward_end)),
        });
        let mut outputs = self.decide(&plan, &asked, flags, &*logits);
        drop(logits);

        for (slot, &(i, n)) in plan.iter().enumerate() {
            let seq = &mut self.running[i];
            let out = &mut outputs[slot];
            seq.computed += n;
            for b in seq.hashes.len()..seq.computed / self.config.block_size {
                let bs = self.config.block_size;
                let prev = seq.hashes.last().copied().unwrap_or(seq.root);
                let h = chain_next(&prev, &seq.tokens[b * bs..(b + 1) * bs]);
                self.pool.register(seq.blocks[b], h);
                seq.hashes.push(h);
            }
            // One token, or a guide's forced run: each committed and
            // accepted in turn, up to the one that finishes the sequence.
            let mut accepted = 0;
            while accepted < out.tokens.len() && seq.finished.is_none() {
                let token = out.tokens[accepted];
                if let Some(Err(e)) = seq.guide.as_mut().map(|g| g.commit(token)) {
                    self.stats.guide_failures += 1;
                    seq.finished = Some(StopReason::Error);
                    out.finished = seq.finished;
                    out.error = Some(e.into());
                    out.tokens.clear();
                    break;
                }
                Self::accept_token(&self.tokenizer, self.backend.config(), seq, token, out);
                accepted += 1;
            }
            if out.error.is_none() {
                out.tokens.truncate(accepted);
                out.logprobs.truncate(accepted);
                out.top_logprobs.truncate(accepted);
            }
            if let Some(cached) = self.cached_at_admission.get(&seq.id) {
                out.cached_tokens = *cached;
            }
        }

        self.retire_finished();
        outputs.retain(|o| o.finished.is_some() || !o.tokens.is_empty() || !o.prompt_scores.is_empty());
        outputs
    }

    /// End every sequence of a step whose forward pass failed: their
    /// blocks go back to the pool (none of this step's blocks were named
    /// for the prefix cache) and the rest of the engine keeps serving.
    fn fail_step(&mut self, plan: &[(usize, usize)], e: &BackendError) -> Vec<Output> {
        self.stats.backend_failures += 1;
        let outputs = plan
            .iter()
            .map(|&(i, _)| {
                let seq = &mut self.running[i];
                seq.finished = Some(StopReason::Error);
                Output {
                    id: seq.id,
                    prompt_tokens: seq.prompt_len,
                    finished: seq.finished,
                    error: Some(DecisionError::Backend(e.to_string())),
                    ..Output::default()
                }
            })
            .collect();
        self.retire_finished();
        outputs
    }

    fn retire_finished(&mut self) {
        let mut k = 0;
        while k < self.running.len() {
            if self.running[k].finished.is_some() {
                let mut seq = self.running.remove(k);
                seq.release_blocks(&mut self.pool);
                self.cached_at_admission.remove(&seq.id);
            } else {
                k += 1;
            }
        }
        if !self.retired.is_empty() {
            self.drop_unused_samplers();
        }
    }

    /// The forward pass for `plan`: `(position, has logits)` of every token
    /// in the batch, and the logits (none when every planned sequence only
    /// takes a late guide's answer).
    fn forward(&mut self, plan: &[(usize, usize)]) -> Result<(TokenFlags, Box<dyn LogitsRows>), BackendError> {
        let mut batch = ForwardBatch::default();
        for (slot, &(i, n)) in plan.iter().enumerate() {
            let seq = &self.running[i];
            batch.block_tables.push(&seq.blocks);
            let last = seq.tokens.len() - 1;
            for pos in seq.computed..seq.computed + n {
                let scores = seq.score_prompt && pos + 1 < seq.prompt_len && pos >= seq.scored;
                batch.tokens.push(BatchToken { token: seq.tokens[pos], pos, seq: slot, logits: pos == last || scores });
                if pos < seq.prompt_len {
                    self.stats.prompt_tokens_computed += 1;
                }
            }
        }
        let flags = batch.tokens.iter().map(|t| (t.pos, t.logits)).collect();
        if batch.tokens.is_empty() {
            return Ok((flags, Box::new(HostRows::new(Vec::new(), self.backend.config().vocab_size))));
        }
        Ok((flags, self.backend.forward(&batch)?))
    }

    fn guide_workers(&mut self) -> &GuideWorkers {
        let threads = self.config.guide_threads;
        self.guide_workers.get_or_insert_with(|| GuideWorkers::new(threads).expect("the guide threads start"))
    }

    /// Take the guide answers that arrive by `deadline`.
    fn take_guide_answers(&mut self, deadline: Instant) {
        while let Some(answer) = self.guide_workers.as_ref().and_then(|w| w.answer_by(deadline)) {
            self.take_guide_answer(answer);
        }
    }

    /// Hand a guide and its answer back to its sequence (gone if it was
    /// cancelled meanwhile).
    fn take_guide_answer(&mut self, answer: Answer) {
        if let Some(seq) = self.running.iter_mut().find(|s| s.id == answer.id) {
            seq.guide = Some(answer.guide);
            seq.guide_answer = Some(answer.step);
            seq.awaiting_guide = false;
        }
    }

    fn accept_token(tokenizer: &Tokenizer, model: &ModelConfig, seq: &mut Sequence, token: u32, out: &mut Output) {
        let eog = tokenizer.is_eog(token);
        seq.tokens.push(token);
        if eog {
            seq.finished = Some(StopReason::Stop);
            out.text.push_str(&seq.flush());
        } else {
            let delta = seq.decoder.push(tokenizer, token).unwrap_or_default();
            out.text.push_str(&seq.push_text(&delta));
            if seq.finished.is_none()
                && (seq.generated() >= seq.params.max_tokens as usize || seq.tokens.len() >= model.context_length)
            {
                seq.finished = Some(StopReason::Length);
                out.text.push_str(&seq.flush());
            }
        }
        out.finished = seq.finished;
    }

    /// Decide which sequences run this step and how many tokens each
    /// computes, allocating (and if need be preempting for) their blocks.
    /// Returns `(index into running, token count)` pairs.
    fn plan(&mut self) -> Vec<(usize, usize)> {
        loop {
            let plan = self.try_plan();
            if !plan.is_empty() || self.running.len() <= 1 {
                return plan;
            }
            // Nobody could get blocks: keep only the oldest sequence, which
            // always fits alone (admission checks the pool's capacity), and
            // those waiting for a late guide (never preempted).
            let mut preempted = false;
            while let Some(v) = (1..self.running.len()).rev().find(|&v| self.running[v].preemptible()) {
                self.preempt(v);
                preempted = true;
            }
            if !preempted {
                return plan;
            }
        }
    }

    fn try_plan(&mut self) -> Vec<(usize, usize)> {
        let bs = self.config.block_size;
        let mut budget = self.config.max_batch_tokens;
        let mut plan: Vec<(usize, usize)> = Vec::new();
        // Decodes first, then prefill chunks.
        for decode_pass in [true, false] {
            let mut i = 0;
            while i < self.running.len() && budget > 0 {
                let seq = &self.running[i];
                let remaining = seq.tokens.len() - seq.computed;
                // A sequence with a late guide's answer takes it with no
                // tokens to compute (in the second pass); one still waiting
                // sits the step out.
                if (remaining == 1) != decode_pass || seq.awaiting_guide || plan.iter().any(|&(j, _)| j == i) {
                    i += 1;
                    continue;
                }
                let n = remaining.min(budget);
                let needed = (seq.computed + n).div_ceil(bs).saturating_sub(seq.blocks.len());
                while self.pool.num_free() < needed {
                    // Preempt the newest unplanned sequence other than this one.
                    let victim = (0..self.running.len())
                        .rev()
                        .find(|&v| v != i && self.running[v].preemptible() && !plan.iter().any(|&(j, _)| j == v));
                    match victim {
                        Some(v) if v > i => {
                            self.preempt(v);
                            for entry in plan.iter_mut().filter(|(j, _)| *j > v) {
                                entry.0 -= 1;
                            }
                        }
                        _ => break,
                    }
                }
                if self.pool.num_free() < needed {
                    i += 1;
                    continue;
                }
                for _ in 0..needed {
                    let b = self.pool.allocate().expect("free block counted above");
                    self.running[i].blocks.push(b);
                }
                plan.push((i, n));
                budget -= n;
                i += 1;
            }
        }
        // Admit waiting requests while budget and blocks last.
        while budget > 0 && self.running.len() < self.config.max_running {
            let Some(mut seq) = self.waiting.pop_front() else { break };
            let cached = if seq.score_prompt { 0 } else { self.reuse_prefix(&mut seq) };
            let n = (seq.tokens.len() - seq.computed).min(budget);
            let needed = (seq.computed + n).div_ceil(bs).saturating_sub(seq.blocks.len());
            if self.pool.num_free() < needed {
                seq.release_blocks(&mut self.pool);
                self.waiting.push_front(seq);
                break;
            }
            for _ in 0..needed {
                let b = self.pool.allocate().expect("free block counted above");
                seq.blocks.push(b);
            }
            self.stats.prompt_tokens_cached += cached.min(seq.prompt_len) as u64;
            self.cached_at_admission.entry(seq.id).or_insert(cached.min(seq.prompt_len));
            self.running.push(seq);
            plan.push((self.running.len() - 1, n));
            budget -= n;
        }
        plan
    }

    /// Attach cached blocks for the longest matching full-block prefix,
    /// always leaving at least one token to compute. Returns tokens reused.
    fn reuse_prefix(&mut self, seq: &mut Sequence) -> usize {
        let bs = self.config.block_size;
        let full = (seq.tokens.len() - 1) / bs;
        let mut prev = seq.root;
        for b in 0..full {
            let h = chain_next(&prev, &seq.tokens[b * bs..(b + 1) * bs]);
            match self.pool.acquire_cached(&h) {
                Some(block) => {
                    seq.blocks.push(block);
                    seq.hashes.push(h);
                    seq.computed += bs;
                    prev = h;
                }
                None => break,
            }
        }
        seq.computed
    }

    fn preempt(&mut self, index: usize) {
        let mut seq = self.running.remove(index);
        seq.release_blocks(&mut self.pool);
        self.stats.preemptions += 1;
        self.waiting.push_front(seq);
    }

}
