//! Guided generation: the engine's guide contract (masks applied before
//! sampling, forced tokens, stops, a broken guide failing only its own
//! sequence) with small in-test guides, and the builtin guide plugin over
//! HTTP (choices each with their own guide, every KV block returned).
//!
//! The in-test guides are real implementations of the `Guide` trait, not
//! stand-ins for the plugin: they pin the engine's side of the contract,
//! including faults (a mask of the wrong length) the builtin plugin never
//! produces.

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use weft_engine::GenerationRequest;
use weft_tests::{TestServer, default_model, engine_tuned, engine_with, request, run_to_completion, tokens_of};
use weft_types::{Guide, GuideError, GuideStep, SamplingParams, StopReason};

use crate::server::all_blocks_free;

/// Allows `allowed` only; stops after `stop_after` tokens; forces `force`
/// at step `force_at`; answers a malformed mask at step `broken_at`.
#[derive(Debug, Default)]
struct Scripted {
    allowed: Vec<u32>,
    stop_after: Option<usize>,
    force: Option<(usize, u32)>,
    broken_at: Option<usize>,
    committed: Vec<u32>,
}

impl Guide for Scripted {
    fn next(&mut self) -> Result<GuideStep, GuideError> {
        let step = self.committed.len();
        if self.stop_after == Some(step) {
            return Ok(GuideStep::Stop);
        }
        if let Some((at, token)) = self.force
            && at == step
        {
            return Ok(GuideStep::Force(vec![token]));
        }
        let vocab = default_model().model.config.vocab_size;
        if self.broken_at == Some(step) {
            return Ok(GuideStep::Mask(vec![u32::MAX; 3]));
        }
        let mut words = vec![0u32; vocab.div_ceil(32)];
        for &t in &self.allowed {
            words[t as usize / 32] |= 1 << (t % 32);
        }
        Ok(GuideStep::Mask(words))
    }

    fn commit(&mut self, token: u32) -> Result<(), GuideError> {
        self.committed.push(token);
        Ok(())
    }
}

fn guided(prompt: &[u32], params: SamplingParams, guide: Scripted) -> GenerationRequest {
    GenerationRequest { guide: Some(Box::new(guide)), ..request(prompt, params) }
}

#[test]
fn the_engine_samples_inside_the_mask_forces_and_stops() {
    let tk = &default_model().tokenizer;
    let prompt = tk.encode("The capital of France is", false).unwrap();
    let allowed: Vec<u32> = tk.encode(" one two three four", false).unwrap();
    let mut engine = engine_with(256, 512);
    let sampled = SamplingParams { temperature: 1.0, seed: 7, ..SamplingParams::greedy(12) };
    let masked = engine.add_request(guided(&prompt, sampled.clone(), Scripted { allowed: allowed.clone(), ..Default::default() })).unwrap();
    let forced = engine
        .add_request(guided(
            &prompt,
            SamplingParams::greedy(5),
            Scripted { allowed: allowed.clone(), force: Some((2, 42)), stop_after: Some(4), ..Default::default() },
        ))
        .unwrap();
    let broken = engine
        .add_request(guided(&prompt, SamplingParams::greedy(8), Scripted { allowed: allowed.clone(), broken_at: Some(1), ..Default::default() }))
        .unwrap();
    let free = engine.add_request(request(&prompt, SamplingParams::greedy(6))).unwrap();
    let outputs = run_to_completion(&mut engine);
    let finish = |id| outputs.iter().filter(|o| o.id == id).find_map(|o| o.finished).unwrap();

    let tokens = tokens_of(&outputs, masked);
    assert_eq!(tokens.len(), 12);
    assert!(tokens.iter().all(|t| allowed.contains(t)), "every sampled token is inside the mask: {tokens:?}");

    let tokens = tokens_of(&outputs, forced);
    assert_eq!(tokens.len(), 4, "the guide stopped the sequence after four tokens");
    assert_eq!(tokens[2], 42, "the forced token is appended as is");
    assert_eq!(finish(forced), StopReason::Stop);

    assert_eq!(tokens_of(&outputs, broken).len(), 1, "the malformed mask fails the sequence at its second step");
    assert_eq!(finish(broken), StopReason::Error);
    let error = outputs.iter().find_map(|o| (o.id == broken).then_some(o.error.clone()).flatten()).unwrap();
    assert!(error.to_string().contains("mask of 3 words"), "{error}");

    assert_eq!(tokens_of(&outputs, free).len(), 6, "unguided neighbours are untouched");
    assert_eq!(finish(free), StopReason::Length);
    assert_eq!(engine.free_blocks(), 256, "every block is back in the pool");
}

fn chat(content: &str, extra: Value) -> Value {
    let mut body = json!({"messages": [{"role": "user", "content": content}], "max_tokens": 64, "temperature": 0.7, "seed": 3});
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    body
}

#[test]
fn every_choice_gets_its_own_guide_and_every_block_comes_back() {
    let server = TestServer::start_guided();
    let schema = json!({
        "type": "object",
        "properties": {"colour": {"enum": ["red", "green", "blue"]}, "count": {"type": "integer", "minimum": 1, "maximum": 9}},
        "required": ["colour", "count"],
        "additionalProperties": false
    });
    let format = json!({"type": "json_schema", "json_schema": {"name": "pick", "schema": schema}});
    let r = server.post("/v1/chat/completions", &chat("Pick a colour and a count.", json!({"n": 3, "response_format": format})));
    assert_eq!(r.status, 200, "{}", r.body);
    let body = r.json();
    let choices = body["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3);
    for c in choices {
        assert_eq!(c["finish_reason"], "stop", "{c}");
        let value: Value = serde_json::from_str(c["message"]["content"].as_str().unwrap()).unwrap();
        assert!(["red", "green", "blue"].contains(&value["colour"].as_str().unwrap()), "{value}");
        let count = value["count"].as_i64().unwrap();
        assert!((1..=9).contains(&count), "{value}");
        assert_eq!(value.as_object().unwrap().len(), 2, "{value}");
    }

    // A streamed regex-guided completion on /v1/completions.
    let r = server.post(
        "/v1/completions",
        &json!({"prompt": "The year was", "max_tokens": 16, "stream": true, "weft": {"regex": " [12][0-9]{3}\\."}}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let text: String = r
        .sse_data()
        .iter()
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str::<Value>(d).unwrap()["choices"][0]["text"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(text.len(), 6, "{text:?}");
    assert!(text.starts_with(' ') && text.ends_with('.') && text[1..5].chars().all(|c| c.is_ascii_digit()), "{text:?}");

    // Refused constraints cost no blocks either.
    let r = server.post("/v1/chat/completions", &chat("x", json!({"weft": {"regex": "foo**"}})));
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["param"], "weft.regex");
    assert!(all_blocks_free(&server));
}

/// Forces what is left of `run`, then stops.
#[derive(Debug)]
struct ForcedRun {
    run: Vec<u32>,
    committed: usize,
}

impl Guide for ForcedRun {
    fn next(&mut self) -> Result<GuideStep, GuideError> {
        if self.committed == self.run.len() {
            return Ok(GuideStep::Stop);
        }
        Ok(GuideStep::Force(self.run[self.committed..].to_vec()))
    }

    fn commit(&mut self, token: u32) -> Result<(), GuideError> {
        assert_eq!(token, self.run[self.committed], "the forced tokens are committed in order");
        self.committed += 1;
        Ok(())
    }
}

#[test]
fn a_forced_run_is_appended_in_one_step_unless_logprobs_are_reported() {
    let tk = &default_model().tokenizer;
    let prompt = tk.encode("The answer is", false).unwrap();
    let run = tk.encode(" forty-two, said the machine", false).unwrap();
    assert!(run.len() >= 5);
    let generate = |params: SamplingParams| {
        let mut engine = engine_with(64, 512);
        let guide = ForcedRun { run: run.clone(), committed: 0 };
        let id = engine.add_request(GenerationRequest { guide: Some(Box::new(guide)), ..request(&prompt, params) }).unwrap();
        let outputs = run_to_completion(&mut engine);
        let text: String = outputs.iter().filter(|o| o.id == id).map(|o| o.text.as_str()).collect();
        let logprobs: Vec<f32> = outputs.iter().filter(|o| o.id == id).flat_map(|o| o.logprobs.clone()).collect();
        assert_eq!(engine.free_blocks(), 64);
        (tokens_of(&outputs, id), text, logprobs, engine.stats().steps)
    };
    let (tokens, text, _, steps) = generate(SamplingParams::greedy(32));
    assert_eq!(tokens, run);
    assert_eq!(text, " forty-two, said the machine");
    assert_eq!(steps, 2, "the prompt with the run forced, then the run computed and the stop");
    // Reporting log-probabilities needs each token's row: one per step.
    let (tokens, _, logprobs, steps) = generate(SamplingParams { logprobs: true, ..SamplingParams::greedy(32) });
    assert_eq!(tokens, run);
    assert!(logprobs.iter().all(|l| l.is_finite() && *l <= 0.0), "{logprobs:?}");
    assert_eq!(steps as usize, run.len() + 1);
    // max_tokens cuts a run short.
    let (tokens, _, _, _) = generate(SamplingParams::greedy(3));
    assert_eq!(tokens, run[..3]);
}

#[test]
fn a_guide_that_faults_fails_only_its_own_request() {
    let server = TestServer::start_with_guide(weft_plugin_artifacts::FAULTY_GUIDE_PATH);
    let guided = |source: &str, max_tokens: u32| chat("Count.", json!({"max_tokens": max_tokens, "weft": {"regex": source}}));
    let digits_only = |r: &weft_tests::Reply| {
        let body = r.json();
        let text = body["choices"][0]["message"]["content"].as_str().unwrap().to_string();
        assert!(!text.is_empty() && text.chars().all(|c| c.is_ascii_digit()), "{text:?}");
        body["choices"][0]["finish_reason"].as_str().unwrap().to_string()
    };
    let r = server.post("/v1/chat/completions", &guided("digits", 32));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(digits_only(&r), "stop", "the fixture stops after ten tokens");

    std::thread::scope(|scope| {
        // A long guided generation runs on the live instance while
        // constraints that trap, loop and exhaust memory are compiled.
        let long = scope.spawn(|| server.post("/v1/chat/completions", &guided("digits-forever", 300)));
        if !server.wait_for(Duration::from_secs(10), |g| g.running.load(Relaxed) == 1) {
            panic!("the long request does not run: {:?}", long.join().unwrap());
        }
        for fault in ["trap-on-compile", "loop-on-compile", "memory-on-compile"] {
            let started = Instant::now();
            let r = server.post("/v1/chat/completions", &guided(fault, 8));
            assert_eq!(r.status, 400, "{fault}: {}", r.body);
            assert_eq!(r.json()["error"]["param"], "weft.regex", "{fault}");
            let budget = weft_plugin_runtime::Limits::default().setup_deadline + Duration::from_secs(5);
            assert!(started.elapsed() < budget, "{fault} took {:?}", started.elapsed());
        }
        let r = long.join().unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(digits_only(&r), "length", "the running sequence never noticed");
    });

    // A guide that traps mid-generation fails its request with a plugin
    // error; a sequence that shared the instance is rebuilt on a fresh one
    // and never notices; the next request is served.
    std::thread::scope(|scope| {
        let long = scope.spawn(|| server.post("/v1/chat/completions", &guided("digits-forever", 120)));
        if !server.wait_for(Duration::from_secs(10), |g| g.running.load(Relaxed) == 1) {
            panic!("the long request does not run: {:?}", long.join().unwrap());
        }
        let r = server.post("/v1/chat/completions", &guided("trap-on-next", 16));
        assert_eq!(r.status, 500, "{}", r.body);
        assert_eq!(r.json()["error"]["code"], "plugin_failed");
        let r = long.join().unwrap();
        assert_eq!(r.status, 200, "the co-resident sequence survives: {}", r.body);
        assert_eq!(digits_only(&r), "length");
    });
    let r = server.post("/v1/chat/completions", &guided("digits", 32));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(digits_only(&r), "stop");
    assert!(all_blocks_free(&server));
}

/// The fixture guide over a vocabulary of the ten digits and a letter.
fn fixture_guide() -> weft_plugin_runtime::WasmGuide {
    let runtime = weft_tests::plugin_runtime();
    let bytes = std::fs::read(weft_plugin_artifacts::FAULTY_GUIDE_PATH).unwrap();
    let component = runtime.load_guide("faulty-guide", &bytes).unwrap();
    let vocab: Vec<Vec<u8>> = (b'0'..=b'9').chain([b'a']).map(|b| vec![b]).collect();
    weft_plugin_runtime::WasmGuide::new(component, vocab, vec![10]).unwrap()
}

#[test]
fn a_determined_run_is_forced_as_the_model_tokenizes_it() {
    let server = TestServer::start_guided();
    let sentence = "Paris is the capital of France, and Berlin is the capital of Germany.";
    let pattern = regex_syntax_escape(sentence);
    let canonical = server.post("/tokenize", &json!({"prompt": sentence})).json()["tokens"].clone();
    for logprobs in [false, true] {
        let body = json!({"prompt": "Tell me a fact.", "max_tokens": 40, "logprobs": if logprobs { json!(1) } else { Value::Null },
            "weft": {"regex": pattern}});
        let r = server.post("/v1/completions", &body);
        assert_eq!(r.status, 200, "{}", r.body);
        let answer = r.json();
        assert_eq!(answer["choices"][0]["text"], sentence, "{}", r.body);
        // The whole sentence is determined: forced in the model's own
        // tokenization (llguidance's fast-forward through `tokenize`), not
        // spelt in whatever pieces the mask allowed one step at a time.
        assert_eq!(answer["usage"]["completion_tokens"], canonical.as_array().unwrap().len(), "{}", r.body);
    }
    // Every guided step's masks and its wait for them are measured.
    let metrics = server.get("/metrics").body;
    let count = |name: &str| -> u64 {
        let line = metrics.lines().find(|l| l.starts_with(&format!("{name}_count "))).unwrap_or_else(|| panic!("{name} in {metrics}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert!(count("weft_step_guide_masks_seconds") > 0);
    assert_eq!(count("weft_step_guide_wait_seconds"), count("weft_step_guide_masks_seconds"));
    assert!(count("weft_step_forward_seconds") >= count("weft_step_guide_masks_seconds"));
}

/// `text` as a regular expression matching exactly it.
fn regex_syntax_escape(text: &str) -> String {
    text.chars().map(|c| if c.is_ascii_punctuation() { format!("\\{c}") } else { c.to_string() }).collect()
}

/// Run the fixture's `slow-digits` guide (tens of milliseconds a step)
/// beside an unguided request in one engine whose steps wait `grace` for
/// guides. Returns both requests' tokens, how many steps the unguided one
/// ran without getting a token, and the guide stalls counted.
fn beside_a_slow_guide(grace: Duration) -> (Vec<u32>, Vec<u32>, usize, u64) {
    let tk = &default_model().tokenizer;
    let limits = weft_plugin_runtime::Limits { call_deadline: Duration::from_secs(5), ..Default::default() };
    let runtime = weft_plugin_runtime::PluginRuntime::new(limits).unwrap();
    let component = runtime.load_guide("faulty-guide", &std::fs::read(weft_plugin_artifacts::FAULTY_GUIDE_PATH).unwrap()).unwrap();
    let vocab = (0..tk.vocab_size() as u32).map(|t| tk.token_bytes(t)).collect();
    let guide = weft_plugin_runtime::WasmGuide::new(component, vocab, tk.eog_tokens().to_vec()).unwrap();
    let mut engine = engine_tuned(|c| c.guide_grace = grace);
    let prompt = tk.encode("Count from one to ten:", false).unwrap();
    let slow_seq = guide.sequence("regex", "slow-digits").unwrap();
    let slow = engine.add_request(GenerationRequest { guide: Some(Box::new(slow_seq)), ..request(&prompt, SamplingParams::greedy(5)) }).unwrap();
    let bystander = engine.add_request(request(&prompt, SamplingParams::greedy(12))).unwrap();
    let (mut outputs, mut idle_steps, mut bystander_done) = (Vec::new(), 0, false);
    let mut guard = 0;
    while engine.has_work() {
        let step = engine.step();
        if !bystander_done && !step.iter().any(|o| o.id == bystander && !o.tokens.is_empty()) {
            idle_steps += 1;
        }
        bystander_done |= step.iter().any(|o| o.id == bystander && o.finished.is_some());
        outputs.extend(step);
        guard += 1;
        assert!(guard < 10_000, "the engine does not finish");
    }
    assert_eq!(engine.free_blocks(), engine.config().num_blocks, "every block returns");
    (tokens_of(&outputs, slow), tokens_of(&outputs, bystander), idle_steps, engine.stats().guide_stalls)
}

#[test]
fn a_late_guide_stalls_only_its_own_sequence_and_changes_none_of_its_tokens() {
    // Waiting for every guide: nothing stalls, and the unguided request
    // waits for the slow guide at every step they share.
    let (slow_waited, bystander_waited, _, stalls) = beside_a_slow_guide(Duration::from_secs(10));
    assert_eq!(stalls, 0);
    assert_eq!(slow_waited.len(), 5);
    // No grace: the slow guide misses every step's deadline. The unguided
    // request gets a token every step; the guided one sits steps out and
    // ends with exactly the same tokens.
    let (slow, bystander, idle_steps, stalls) = beside_a_slow_guide(Duration::ZERO);
    assert!(stalls > 0, "the slow guide was late");
    assert_eq!(idle_steps, 0, "the unguided request never waited for the guide");
    assert_eq!((slow, bystander), (slow_waited, bystander_waited));
}

#[test]
fn a_sequence_whose_instance_another_one_crashed_is_rebuilt_with_its_commits() {
    let guide = fixture_guide();
    let mut counting = guide.sequence("regex", "digits").unwrap();
    for token in [1, 2, 3, 4] {
        assert!(matches!(counting.next(), Ok(GuideStep::Mask(_))));
        counting.commit(token).unwrap();
    }
    // Another sequence traps on its third step: the shared instance goes.
    let mut crashing = guide.sequence("regex", "trap-on-next").unwrap();
    assert!(crashing.next().is_ok() && crashing.next().is_ok());
    assert!(matches!(crashing.next(), Err(GuideError::Fault { .. })));
    assert!(matches!(crashing.next(), Err(GuideError::Fault { .. })), "a faulted sequence stays failed");
    // The counting sequence is rebuilt with its four commits replayed: the
    // fixture stops after ten, so six more reach the stop, not ten.
    for token in [5, 6, 7, 8, 9, 0] {
        assert!(matches!(counting.next(), Ok(GuideStep::Mask(_))));
        counting.commit(token).unwrap();
    }
    assert!(matches!(counting.next(), Ok(GuideStep::Stop)));
}

#[test]
fn guides_deploy_through_the_admin_api_and_requests_choose_them() {
    const AUTH: (&str, &str) = ("authorization", "Bearer admin-secret");
    let server =
        TestServer::start_guided_with(weft_server::ServerConfig { admin_token: Some("admin-secret".into()), ..Default::default() });
    let manifest = "name = \"digits\"\nversion = \"1.0.0\"\nkind = \"guide\"\n";
    let r = server.deploy_manifest("admin-secret", manifest, &std::fs::read(weft_plugin_artifacts::FAULTY_GUIDE_PATH).unwrap());
    assert_eq!((r.status, r.json()["kind"].as_str()), (201, Some("guide")), "{}", r.body);

    let ask = |guide: &str, source: &str| chat("Count.", json!({"max_tokens": 24, "weft": {"guide": guide, "regex": source}}));
    let r = server.post("/v1/chat/completions", &ask("digits", "digits"));
    let body = r.json();
    let text = body["choices"][0]["message"]["content"].as_str().unwrap_or_default();
    assert!(!text.is_empty() && text.chars().all(|c| c.is_ascii_digit()), "the fixture's digits: {}", r.body);
    assert_eq!(body["choices"][0]["finish_reason"], "stop", "it stops after ten tokens: {}", r.body);
    // The same source through the builtin guide is a regex: the literal word.
    let r = server.post("/v1/chat/completions", &chat("Count.", json!({"max_tokens": 24, "weft": {"regex": "digits"}})));
    assert_eq!(r.json()["choices"][0]["message"]["content"], "digits", "{}", r.body);
    // A header chooses it too; an unknown name is a 400 naming the field.
    let r = server.post_with(
        "/v1/chat/completions",
        &[("content-type", "application/json"), ("x-weft-guide", "nope")],
        chat("Count.", json!({"max_tokens": 4, "weft": {"regex": "a"}})).to_string().as_bytes(),
    );
    assert_eq!((r.status, r.json()["error"]["param"].as_str()), (400, Some("weft.guide")), "{}", r.body);
    // A fault in the deployed guide fails its request and counts.
    let r = server.post("/v1/chat/completions", &ask("digits", "trap-on-next"));
    assert_eq!((r.status, r.json()["error"]["code"].as_str()), (500, Some("plugin_failed")), "{}", r.body);
    let info = server.get_with("/admin/v1/plugins/digits", &[AUTH]).json();
    assert_eq!(info["health"][0]["faults"], 1, "{info}");
    assert!(all_blocks_free(&server));
}
