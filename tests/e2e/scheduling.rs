//! Continuous batching on the real model: prefix caching, preemption,
//! chunked prefill, cancellation and batch invariance.

use weft_engine::Engine;
use weft_types::{LogProbs, LogitEdit, LogitsError, LogitsRows, Pick, SamplingParams, StopReason};
use weft_tests::{default_model, engine_with, request, run_to_completion, tokens_of};

const PROMPTS: [&str; 9] = [
    "The capital of France is",
    "def fibonacci(n):\n    ",
    "Once upon a time, in a small village by the sea,",
    "List three colors:\n1.",
    "The quick brown fox",
    "In 1969, the first humans",
    "Water boils at",
    "My favourite programming language is",
    "To make a cup of tea, first",
];

fn encode(text: &str) -> Vec<u32> {
    default_model().tokenizer.encode(text, false).unwrap()
}

fn sampled(seed: u64) -> SamplingParams {
    SamplingParams { temperature: 0.9, top_p: 0.95, seed, max_tokens: 20, ignore_eos: true, ..SamplingParams::default() }
}

/// Run `prompts` together through `engine`; returns each one's tokens.
fn run_all(engine: &mut Engine, prompts: &[(Vec<u32>, SamplingParams)]) -> Vec<Vec<u32>> {
    let ids: Vec<u64> = prompts.iter().map(|(p, s)| engine.add_request(request(p, s.clone())).unwrap()).collect();
    let outputs = run_to_completion(engine);
    assert_eq!(engine.free_blocks(), engine.config().num_blocks, "every block returns to the pool");
    ids.iter().map(|&id| tokens_of(&outputs, id)).collect()
}

fn alone(prompt: &[u32], params: &SamplingParams) -> Vec<u32> {
    run_all(&mut engine_with(256, 512), &[(prompt.to_vec(), params.clone())]).remove(0)
}

#[test]
fn a_seeded_request_gives_the_same_tokens_alone_and_at_any_position_in_a_batch() {
    let target = (encode("Tell me a story about a dragon who"), sampled(1234));
    let expected = alone(&target.0, &target.1);
    assert_eq!(expected.len(), 20);
    let others: Vec<_> = PROMPTS[..8].iter().enumerate().map(|(i, p)| (encode(p), sampled(i as u64))).collect();
    for position in [0, 3, 8] {
        let mut batch = others.clone();
        batch.insert(position, target.clone());
        let got = run_all(&mut engine_with(256, 512), &batch);
        assert_eq!(got[position], expected, "target at batch position {position}");
    }
}

#[test]
fn chunked_prefill_and_preemption_do_not_change_any_tokens() {
    let batch: Vec<_> = PROMPTS.iter().enumerate().map(|(i, p)| (encode(p), sampled(100 + i as u64))).collect();
    let reference = run_all(&mut engine_with(256, 512), &batch);

    // A 7-token step budget cuts every prompt into chunks.
    let chunked = run_all(&mut engine_with(256, 7), &batch);
    assert_eq!(chunked, reference, "chunked prefill");

    // Six blocks of 16 tokens cannot hold nine sequences: the scheduler must
    // preempt and recompute, and still produce the same tokens.
    let mut tiny = engine_with(6, 512);
    let preempted = run_all(&mut tiny, &batch);
    assert!(tiny.stats().preemptions > 0, "the tiny pool forced preemption");
    assert_eq!(preempted, reference, "after preemption");
}

#[test]
fn a_shared_prefix_is_computed_once_per_tenant() {
    let prefix = encode(&"The history of the printing press begins in the fifteenth century. ".repeat(4));
    assert!(prefix.len() >= 48);
    let mut first = prefix.clone();
    first.extend(encode(" What came first?"));
    let mut second = prefix.clone();
    second.extend(encode(" Who was Gutenberg?"));

    let mut engine = engine_with(256, 512);
    engine.add_request(request(&first, SamplingParams::greedy(4))).unwrap();
    run_to_completion(&mut engine);
    let before = engine.stats().prompt_tokens_computed;

    let id = engine.add_request(request(&second, SamplingParams::greedy(8))).unwrap();
    let outputs = run_to_completion(&mut engine);
    let computed = engine.stats().prompt_tokens_computed - before;
    let shared_blocks = prefix.len() / 16;
    assert_eq!(computed as usize, second.len() - shared_blocks * 16, "only the tokens after the cached blocks are computed");
    assert_eq!(outputs.iter().find(|o| o.id == id).unwrap().cached_tokens, shared_blocks * 16);
    assert_eq!(tokens_of(&outputs, id), alone(&second, &SamplingParams::greedy(8)), "cached prefix gives the same tokens");

    // Another tenant shares nothing.
    let before = engine.stats().prompt_tokens_computed;
    let mut other = request(&second, SamplingParams::greedy(1));
    other.tenant = "someone-else".into();
    engine.add_request(other).unwrap();
    run_to_completion(&mut engine);
    assert_eq!((engine.stats().prompt_tokens_computed - before) as usize, second.len());
}

#[test]
fn cancelling_frees_blocks_at_once_whether_running_or_waiting() {
    let mut engine = engine_with(64, 512);
    let running = engine.add_request(request(&encode(PROMPTS[2]), SamplingParams::greedy(200))).unwrap();
    engine.step();
    engine.step();
    assert!(engine.free_blocks() < 64);
    assert!(engine.cancel(running));
    assert_eq!(engine.free_blocks(), 64);
    let waiting = engine.add_request(request(&encode(PROMPTS[3]), SamplingParams::greedy(5))).unwrap();
    assert!(engine.cancel(waiting));
    assert!(!engine.has_work());
    assert!(!engine.cancel(waiting), "a request is cancelled once");
}

#[test]
fn stop_strings_are_found_across_token_boundaries_and_never_emitted() {
    let tokenizer = &default_model().tokenizer;
    let prompt = encode(PROMPTS[2]);
    let tokens = alone(&prompt, &SamplingParams::greedy(30));
    let full = tokenizer.decode(&tokens, true).unwrap();
    // A stop string made of the end of one token and the start of the next.
    let mut boundary = 0;
    let mut stop = String::new();
    for i in 3..tokens.len() - 1 {
        let a = tokenizer.decode(&tokens[..i], true).unwrap();
        let (left, right) = (tokenizer.decode(&tokens[i - 1..i], true).unwrap(), tokenizer.decode(&tokens[i..i + 1], true).unwrap());
        if left.trim().len() >= 2 && right.trim().len() >= 2 && left.is_ascii() && right.is_ascii() {
            boundary = a.len();
            stop = format!("{}{}", &left[left.len() - 2..], &right[..2]);
            break;
        }
    }
    assert!(!stop.is_empty(), "found a boundary in {full:?}");
    let expected = &full[..full.find(&stop).unwrap()];
    assert!(expected.len() <= boundary);

    let mut engine = engine_with(64, 512);
    let params = SamplingParams { stop: vec!["never-appears".into(), stop.clone()], ..SamplingParams::greedy(30) };
    let id = engine.add_request(request(&prompt, params)).unwrap();
    let outputs = run_to_completion(&mut engine);
    let text: String = outputs.iter().filter(|o| o.id == id).map(|o| o.text.as_str()).collect();
    assert_eq!(text, expected, "stop string {stop:?}");
    assert_eq!(outputs.last().unwrap().finished, Some(StopReason::Stop));
}

#[test]
fn max_tokens_and_end_of_sequence_set_the_finish_reason() {
    let mut engine = engine_with(64, 512);
    let id = engine.add_request(request(&encode(PROMPTS[0]), SamplingParams::greedy(3))).unwrap();
    let outputs = run_to_completion(&mut engine);
    assert_eq!(tokens_of(&outputs, id).len(), 3);
    assert_eq!(outputs.last().unwrap().finished, Some(StopReason::Length));

    // The instruct model ends a short chat answer with its end-of-turn token.
    let m = default_model();
    let chat = m.template.as_ref().unwrap().render(&[weft_engine::chat_template::ChatMessage::new("user", "Say hi.")], true).unwrap();
    let id = engine.add_request(request(&m.tokenizer.encode(&chat, true).unwrap(), SamplingParams::greedy(200))).unwrap();
    let outputs = run_to_completion(&mut engine);
    let last = outputs.iter().rfind(|o| o.id == id).unwrap();
    assert_eq!(last.finished, Some(StopReason::Stop));
    assert!(m.tokenizer.is_eog(*tokens_of(&outputs, id).last().unwrap()));
    assert!(!outputs.iter().any(|o| o.text.contains("<|im_end|>")), "the end token's text is not emitted");
}

#[test]
fn a_step_budget_below_the_running_sequences_is_raised_to_them() {
    // Every running sequence decodes a token each step: a budget of none
    // (which would never compute anything) is raised to max_running.
    let mut engine = weft_tests::engine_tuned(|c| {
        c.max_batch_tokens = 0;
        c.max_running = 4;
    });
    assert_eq!(engine.config().max_batch_tokens, 4);
    let ids: Vec<_> = PROMPTS[..4].iter().map(|p| engine.add_request(request(&encode(p), SamplingParams::greedy(3))).unwrap()).collect();
    let outputs = run_to_completion(&mut engine);
    assert!(ids.iter().all(|&id| tokens_of(&outputs, id).len() == 3));
}

#[test]
fn requests_beyond_the_context_or_vocabulary_are_refused_with_both_numbers() {
    let mut engine = engine_with(64, 512);
    let err = engine.add_request(request(&[1, 2, 3], SamplingParams::greedy(9000))).unwrap_err().to_string();
    assert!(err.contains("8192") && err.contains("3 prompt tokens") && err.contains("9000"), "{err}");
    let err = engine.add_request(request(&[1, 49152], SamplingParams::greedy(1))).unwrap_err().to_string();
    assert!(err.contains("49152"), "{err}");
    assert!(engine.add_request(request(&[], SamplingParams::greedy(1))).is_err());
}

/// Where a [`FailingBackend`]'s planted fault strikes.
#[derive(Clone, Copy)]
enum Fault {
    /// The forward pass fails.
    Forward,
    /// The forward pass succeeds, but choosing from its rows fails.
    Choose,
}

/// A CPU backend whose `fail_at`-th step fails. A fake for the faults the
/// CPU cannot produce: a GPU failing mid-run, in its forward pass or under
/// the samplers' choices.
struct FailingBackend {
    inner: weft_engine::CpuBackend,
    calls: usize,
    fail_at: usize,
    fault: Fault,
}

impl weft_engine::Backend for FailingBackend {
    fn name(&self) -> String {
        "failing-cpu".into()
    }
    fn config(&self) -> &weft_engine::model::ModelConfig {
        self.inner.config()
    }
    fn kv_bytes_per_token(&self) -> usize {
        self.inner.kv_bytes_per_token()
    }
    fn default_step_tokens(&self) -> usize {
        self.inner.default_step_tokens()
    }
    fn allocate_kv(&mut self, num_blocks: usize, block_size: usize) -> Result<(), weft_engine::BackendError> {
        self.inner.allocate_kv(num_blocks, block_size)
    }
    fn forward(&mut self, batch: &weft_engine::model::ForwardBatch) -> Result<Box<dyn LogitsRows>, weft_engine::BackendError> {
        self.calls += 1;
        let rows = match self.fault {
            Fault::Forward if self.calls == self.fail_at => {
                return Err(weft_engine::BackendError::new("failing-cpu", "an illegal memory access (planted)"));
            }
            Fault::Choose if self.calls == self.fail_at => Box::new(FailingRows(self.inner.forward(batch)?)),
            _ => self.inner.forward(batch)?,
        };
        Ok(rows)
    }
}

/// Rows whose choices fail, as a device failing under the sampler would.
struct FailingRows(Box<dyn LogitsRows>);

impl LogitsRows for FailingRows {
    fn vocab(&self) -> usize {
        self.0.vocab()
    }
    fn len(&self) -> usize {
        self.0.len()
    }
    fn row(&self, i: usize) -> Result<std::borrow::Cow<'_, [f32]>, LogitsError> {
        self.0.row(i)
    }
    fn choose(&self, _: &[Pick<'_>]) -> Result<Vec<u32>, LogitsError> {
        Err(LogitsError("an illegal memory access while choosing (planted)".into()))
    }
    fn log_probs(&self, i: usize, token: u32, top: usize) -> Result<LogProbs, LogitsError> {
        self.0.log_probs(i, token, top)
    }
    fn top_k(&self, i: usize, mask: Option<&[u32]>, edits: &[(u32, LogitEdit)], k: usize) -> Result<Vec<(u32, f32)>, LogitsError> {
        self.0.top_k(i, mask, edits, k)
    }
}

/// An engine over the default model whose backend fails as `fault` says
/// at its `fail_at`-th step, with 64 blocks.
fn failing_engine(fault: Fault, fail_at: usize) -> Engine {
    let m = default_model();
    let mut config = weft_engine::EngineConfig::for_model(&m.model, 64 << 20);
    config.num_blocks = 64;
    let backend = FailingBackend { inner: weft_engine::CpuBackend::new(m.model.clone()), calls: 0, fail_at, fault };
    Engine::with_backend(Box::new(backend), m.tokenizer.clone(), config).unwrap()
}

/// Two requests run until `engine`'s planted fault; both end with the
/// backend's error, their blocks return, and the engine then serves a
/// third request as a fresh engine would.
fn fails_both_and_serves_on(mut engine: Engine) {
    let greedy = SamplingParams { temperature: 0.0, max_tokens: 8, ignore_eos: true, ..SamplingParams::default() };
    let first = engine.add_request(request(&encode(PROMPTS[0]), greedy.clone())).unwrap();
    let second = engine.add_request(request(&encode(PROMPTS[1]), greedy.clone())).unwrap();
    let outputs = run_to_completion(&mut engine);
    for id in [first, second] {
        let last = outputs.iter().rfind(|o| o.id == id).unwrap();
        assert_eq!(last.finished, Some(StopReason::Error), "request {id} ends with the failed step");
        let why = last.error.as_ref().unwrap().to_string();
        assert!(why.contains("planted") && why.contains("backend"), "{why}");
        assert!(matches!(last.error, Some(weft_types::DecisionError::Backend(_))), "{why}");
    }
    assert_eq!(engine.stats().backend_failures, 1);
    assert_eq!(engine.stats().sampler_failures, 0, "the device's failure is not the sampler's");
    assert_eq!(engine.free_blocks(), 64, "the failed step's blocks return to the pool");

    // The engine serves on, with the tokens a fresh engine gives.
    let prompt = encode(PROMPTS[2]);
    let again = engine.add_request(request(&prompt, greedy.clone())).unwrap();
    let outputs = run_to_completion(&mut engine);
    assert_eq!(tokens_of(&outputs, again), alone(&prompt, &greedy));
    assert_eq!(engine.free_blocks(), 64);
}

#[test]
fn a_failed_forward_pass_fails_its_step_and_the_engine_serves_on() {
    fails_both_and_serves_on(failing_engine(Fault::Forward, 3));
}

#[test]
fn a_device_failing_under_the_samplers_fails_their_rows_as_the_backends() {
    // The native sampler, then the builtin sampler plugin: the plugin's
    // call traps on the failed host call, which is not counted against it.
    fails_both_and_serves_on(failing_engine(Fault::Choose, 3));
    let mut engine = failing_engine(Fault::Choose, 3);
    let plugin = weft_tests::builtin_sampler();
    let health = plugin.health();
    engine.set_sampler(Box::new(plugin));
    fails_both_and_serves_on(engine);
    assert_eq!(health.faults(), 0);
    assert!(health.calls() > 1);
}
