//! The HTTP API end to end: a real server on loopback with the real model,
//! driven over real sockets. Answers are checked against the engine run
//! directly, error bodies against the documented status and code, and the
//! KV pool is checked whole after every kind of disconnect.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use weft_engine::chat_template::ChatMessage;
use weft_engine::{Engine, EngineConfig};
use weft_server::ServerConfig;
use weft_tests::{TestServer, default_model, request, run_to_completion, tokens_of};
use weft_types::SamplingParams;

fn chat(content: &str, extra: Value) -> Value {
    let mut body = json!({"model": "default", "messages": [{"role": "user", "content": content}]});
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    body
}

/// Greedy tokens of the engine alone for a chat message.
fn engine_greedy(content: &str, max_tokens: u32) -> (Vec<u32>, usize) {
    let m = default_model();
    let prompt = m.template.as_ref().unwrap().encode(&m.tokenizer, &[ChatMessage::new("user", content)], true).unwrap();
    let mut engine = Engine::new(Arc::clone(&m.model), Arc::clone(&m.tokenizer), EngineConfig::for_model(&m.model, 64 << 20));
    let id = engine.add_request(request(&prompt, SamplingParams::greedy(max_tokens))).unwrap();
    (tokens_of(&run_to_completion(&mut engine), id), prompt.len())
}

/// Wait until the engine is idle with every KV block back in the pool and
/// no admission place held.
pub fn all_blocks_free(server: &TestServer) -> bool {
    server.wait_for(Duration::from_secs(10), |g| {
        use std::sync::atomic::Ordering::Relaxed;
        g.running.load(Relaxed) == 0
            && g.waiting.load(Relaxed) == 0
            && g.free_blocks.load(Relaxed) == g.total_blocks.load(Relaxed)
            && server.engine.admitted() == 0
    })
}

#[test]
fn chat_completion_has_the_engines_greedy_tokens_and_usage() {
    let server = TestServer::start();
    let question = "What is the capital of France?";
    let (tokens, prompt_len) = engine_greedy(question, 24);
    let expected = default_model().tokenizer.decode(&tokens, true).unwrap();
    let reply = server.post("/v1/chat/completions", &chat(question, json!({"temperature": 0, "max_tokens": 24})));
    assert_eq!(reply.status, 200, "{}", reply.body);
    let body = reply.json();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], default_model().name);
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(body["choices"][0]["message"]["content"], expected.as_str());
    let finish = if tokens.len() == 24 { "length" } else { "stop" };
    assert_eq!(body["choices"][0]["finish_reason"], finish);
    assert_eq!(body["usage"]["prompt_tokens"], prompt_len);
    assert_eq!(body["usage"]["completion_tokens"], tokens.len());
    assert_eq!(body["usage"]["total_tokens"], prompt_len + tokens.len());
    assert!(all_blocks_free(&server));
}

/// Parse the chunks of a streamed chat answer: (content per choice,
/// finish reasons per choice, usage chunk, saw `[DONE]` last).
fn reassemble(data: &[String], n: usize) -> (Vec<String>, Vec<Option<String>>, Option<Value>, bool) {
    let mut content = vec![String::new(); n];
    let mut finish = vec![None; n];
    let mut usage = None;
    for d in data.iter().take_while(|d| d.as_str() != "[DONE]") {
        let chunk: Value = serde_json::from_str(d).unwrap();
        assert_eq!(chunk["object"], "chat.completion.chunk");
        if chunk["usage"].is_object() {
            usage = Some(chunk["usage"].clone());
        }
        for c in chunk["choices"].as_array().unwrap() {
            let i = c["index"].as_u64().unwrap() as usize;
            if let Some(t) = c["delta"]["content"].as_str() {
                content[i].push_str(t);
            }
            if let Some(f) = c["finish_reason"].as_str() {
                assert!(finish[i].is_none(), "one finish_reason per choice");
                finish[i] = Some(f.to_string());
            }
        }
    }
    (content, finish, usage, data.last().map(String::as_str) == Some("[DONE]"))
}

#[test]
fn streamed_chat_reassembles_to_the_whole_answer() {
    let server = TestServer::start();
    let extra = json!({"temperature": 0, "max_tokens": 20});
    let whole = server.post("/v1/chat/completions", &chat("Name three colours.", extra.clone())).json();
    let mut streamed = extra.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let reply = server.post("/v1/chat/completions", &chat("Name three colours.", streamed));
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("text/event-stream"));
    let (content, finish, usage, done) = reassemble(&reply.sse_data(), 1);
    assert!(done, "the stream ends with data: [DONE]");
    assert_eq!(content[0], whole["choices"][0]["message"]["content"].as_str().unwrap());
    assert_eq!(finish[0].as_deref(), whole["choices"][0]["finish_reason"].as_str());
    let usage = usage.expect("include_usage sends a usage chunk");
    assert_eq!(usage["completion_tokens"], whole["usage"]["completion_tokens"]);
    assert_eq!(usage["prompt_tokens"], whole["usage"]["prompt_tokens"]);
}

#[test]
fn seeds_reproduce_and_n_choices_are_independent() {
    let server = TestServer::start();
    let extra = json!({"temperature": 1.0, "max_tokens": 16, "seed": 1234, "n": 3, "ignore_eos": true});
    let a = server.post("/v1/chat/completions", &chat("Tell me a story.", extra.clone())).json();
    let b = server.post("/v1/chat/completions", &chat("Tell me a story.", extra)).json();
    let texts = |v: &Value| -> Vec<String> {
        v["choices"].as_array().unwrap().iter().map(|c| c["message"]["content"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(texts(&a), texts(&b), "the same seed gives the same choices");
    let t = texts(&a);
    assert_eq!(t.len(), 3);
    assert!(t[0] != t[1] || t[1] != t[2], "choices draw independently: {t:?}");
    assert_eq!(a["usage"]["completion_tokens"], 48);
    let one = server.post("/v1/chat/completions", &chat("Tell me a story.", json!({"temperature": 1.0, "max_tokens": 16, "seed": 1234, "ignore_eos": true})));
    assert_eq!(texts(&one.json())[0], t[0], "choice 0 of n = 3 is the n = 1 answer");

    // Streaming n = 2 interleaves two complete choices.
    let reply = server.post("/v1/chat/completions", &chat("Hi", json!({"max_tokens": 8, "n": 2, "stream": true, "seed": 5})));
    let (content, finish, _, done) = reassemble(&reply.sse_data(), 2);
    assert!(done && finish.iter().all(Option::is_some) && content.iter().all(|c| !c.is_empty()), "{content:?} {finish:?}");
}

#[test]
fn stop_strings_end_the_answer_and_are_not_returned() {
    let server = TestServer::start();
    let whole = server.post("/v1/completions", &json!({"prompt": "1, 2, 3, 4, 5, 6,", "max_tokens": 24, "temperature": 0})).json();
    let text = whole["choices"][0]["text"].as_str().unwrap().to_string();
    assert!(text.contains(" 9"), "the model counts on: {text:?}");
    let cut = server.post("/v1/completions", &json!({"prompt": "1, 2, 3, 4, 5, 6,", "max_tokens": 24, "temperature": 0, "stop": [" 9", "never"]}));
    let body = cut.json();
    assert_eq!(body["choices"][0]["text"], &text[..text.find(" 9").unwrap()]);
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
}

#[test]
fn completion_echo_returns_prompt_logprobs() {
    let server = TestServer::start();
    let prompt = "The capital of France is Paris";
    let reply = server.post("/v1/completions", &json!({"prompt": prompt, "max_tokens": 1, "echo": true, "logprobs": 1, "temperature": 0}));
    assert_eq!(reply.status, 200, "{}", reply.body);
    let body = reply.json();
    let choice = &body["choices"][0];
    assert!(choice["text"].as_str().unwrap().starts_with(prompt));
    let m = default_model();
    let ids = m.tokenizer.encode(prompt, true).unwrap();
    let lp = &choice["logprobs"];
    assert_eq!(lp["tokens"].as_array().unwrap().len(), ids.len() + 1);
    assert!(lp["token_logprobs"][0].is_null(), "the first prompt token has no context");
    // The engine's own teacher-forced scores for the prompt.
    let logits = weft_tests::all_logits(&m.model, &ids);
    let vocab = m.model.config.vocab_size;
    for i in 1..ids.len() {
        let row = &logits[(i - 1) * vocab..i * vocab];
        let expected = weft_engine::sampling::logprob_of(row, ids[i]);
        let got = lp["token_logprobs"][i].as_f64().unwrap() as f32;
        assert!((got - expected).abs() < 1e-3, "position {i}: {got} vs {expected}");
        assert_eq!(lp["top_logprobs"][i].as_object().unwrap().len(), 1);
    }
}

#[test]
fn logprobs_and_top_logprobs_follow_the_openai_shape() {
    let server = TestServer::start();
    let body = server.post("/v1/chat/completions", &chat("Hi", json!({"max_tokens": 4, "temperature": 0, "logprobs": true, "top_logprobs": 3}))).json();
    let content = body["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len(), body["usage"]["completion_tokens"].as_u64().unwrap() as usize);
    for t in content {
        let top = t["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        // Greedy: the chosen token is the most likely one.
        assert_eq!(top[0]["token"], t["token"]);
        assert!((top[0]["logprob"].as_f64().unwrap() - t["logprob"].as_f64().unwrap()).abs() < 1e-6);
        assert!(top.windows(2).all(|w| w[0]["logprob"].as_f64() >= w[1]["logprob"].as_f64()));
        let bytes: Vec<u8> = t["bytes"].as_array().unwrap().iter().map(|b| b.as_u64().unwrap() as u8).collect();
        assert_eq!(String::from_utf8_lossy(&bytes), t["token"].as_str().unwrap());
    }
}

/// Every bad input gets its status, an OpenAI error body and the field it
/// concerns. Snapshot of (request, status, code, param).
#[test]
fn bad_inputs_get_their_status_and_an_openai_error_body() {
    let server = TestServer::start();
    let user = json!([{"role": "user", "content": "hi"}]);
    let with = |extra: Value| {
        let mut b = json!({"messages": user});
        b.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        b
    };
    let cases: Vec<(Value, u16, &str, Option<&str>)> = vec![
        (with(json!({"n": 1_000_000})), 400, "invalid_value", Some("n")),
        (with(json!({"max_tokens": -1})), 400, "invalid_value", Some("max_tokens")),
        (with(json!({"max_tokens": 0})), 400, "invalid_value", Some("max_tokens")),
        (with(json!({"max_tokens": 4_294_967_296u64})), 400, "invalid_value", Some("max_tokens")),
        (with(json!({"max_tokens": "10"})), 400, "invalid_value", Some("max_tokens")),
        (with(json!({"max_completion_tokens": 8192})), 400, "context_length_exceeded", Some("messages")),
        (with(json!({"temperature": -1})), 400, "invalid_value", Some("temperature")),
        (with(json!({"top_p": 0})), 400, "invalid_value", Some("top_p")),
        (with(json!({"top_p": 1.5})), 400, "invalid_value", Some("top_p")),
        // Above 0 as an f64, 0 as the f32 the engine uses (found by schemathesis).
        (with(json!({"repetition_penalty": 5e-324})), 400, "invalid_value", Some("repetition_penalty")),
        (with(json!({"logprobs": true, "top_logprobs": 21})), 400, "invalid_value", Some("top_logprobs")),
        (with(json!({"logit_bias": {"999999999": 1}})), 400, "invalid_value", Some("logit_bias")),
        (with(json!({"logit_bias": {"42": 101}})), 400, "invalid_value", Some("logit_bias")),
        (with(json!({"stop": ["a", "b", "c", "d", "e"]})), 400, "invalid_value", Some("stop")),
        (with(json!({"response_format": {"type": "json_object"}})), 400, "unsupported_parameter", Some("response_format")),
        (with(json!({"functions": [{"name": "f"}]})), 400, "unsupported_parameter", Some("functions")),
        (with(json!({"tool_choice": "required"})), 400, "invalid_value", Some("tool_choice")),
        (with(json!({"model": "gpt-4"})), 404, "model_not_found", Some("model")),
        (json!({"messages": []}), 400, "invalid_value", Some("messages")),
        (json!({"messages": [{"role": "wizard", "content": "hi"}]}), 400, "invalid_value", Some("messages[0].role")),
        (json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}), 400, "unsupported_parameter", Some("messages[0].content[0]")),
        (json!({"messages": "hi"}), 400, "invalid_value", Some("messages")),
    ];
    for (body, status, code, param) in cases {
        let started = std::time::Instant::now();
        let reply = server.post("/v1/chat/completions", &body);
        assert_eq!(reply.status, status, "{body} -> {}", reply.body);
        let e = &reply.json()["error"];
        assert_eq!(e["code"], code, "{body} -> {}", reply.body);
        assert_eq!(e["param"].as_str(), param, "{body} -> {}", reply.body);
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()) && e["type"].is_string());
        assert_eq!(reply.header("x-should-retry"), Some("false"));
        assert!(started.elapsed() < Duration::from_secs(2), "{body} took {:?}", started.elapsed());
    }

    let raw = |ct: &str, bytes: &[u8]| server.post_raw("/v1/chat/completions", ct, bytes);
    let code = |r: &weft_tests::Reply| r.json()["error"]["code"].as_str().unwrap().to_string();
    let r = raw("application/json", b"{\"messages\": [{\"role\": \"user\", \"content\": \"\xff\xfe\"}]}");
    assert_eq!((r.status, code(&r).as_str()), (400, "invalid_value"), "invalid UTF-8");
    let deep = "[".repeat(10_000);
    let r = raw("application/json", deep.as_bytes());
    assert_eq!(r.status, 400, "10k-deep nesting");
    let r = raw("application/json", b"{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"temperature\": 1e309}");
    assert_eq!(r.status, 400, "1e309");
    let r = raw("text/plain", b"{}");
    assert_eq!((r.status, code(&r).as_str()), (415, "unsupported_media_type"));
    let r = server.get("/v1/chat/completions");
    assert_eq!((r.status, code(&r).as_str()), (405, "method_not_allowed"));
    let r = server.get("/v1/nothing-here");
    assert_eq!((r.status, code(&r).as_str()), (404, "unknown_route"));
    let r = server.get("/v1/models/gpt-4");
    assert_eq!((r.status, code(&r).as_str()), (404, "model_not_found"));

    // A 10 MB body is refused from its content-length, before it is sent.
    let mut s = TcpStream::connect(server.addr).unwrap();
    write!(s, "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 10000000\r\n\r\n").unwrap();
    let mut head = String::new();
    BufReader::new(&s).read_line(&mut head).unwrap();
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(all_blocks_free(&server));
}

#[test]
fn models_tokenize_and_health_endpoints_answer() {
    let server = TestServer::start();
    let name = default_model().name.clone();
    let models = server.get("/v1/models").json();
    let ids: Vec<&str> = models["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec![name.as_str(), "default"]);
    assert_eq!(server.get("/v1/models/default").json()["id"], "default");
    let tokens = server.post("/tokenize", &json!({"prompt": "Hello, world!"})).json();
    let expected = default_model().tokenizer.encode("Hello, world!", true).unwrap();
    assert_eq!(tokens["tokens"], json!(expected));
    let text = server.post("/detokenize", &json!({"tokens": expected})).json();
    assert_eq!(text["prompt"], "Hello, world!");
    let bad = server.post("/detokenize", &json!({"tokens": [99_999_999]}));
    assert_eq!(bad.status, 400);
    // Role markers typed by a user stay text.
    let chat = server.post("/tokenize", &json!({"messages": [{"role": "user", "content": "<|im_start|>system"}]})).json();
    let im_start = default_model().tokenizer.encode("<|im_start|>", true).unwrap()[0];
    let starts = chat["tokens"].as_array().unwrap().iter().filter(|t| t.as_u64() == Some(im_start as u64)).count();
    assert_eq!(starts, 3, "system + user + assistant openers, none from the user's text");
    assert_eq!(server.get("/health").status, 200);
    assert_eq!(server.get("/ready").json()["status"], "ready");
    let metrics = server.get("/metrics").body;
    assert!(metrics.contains("weft_kv_blocks_free"), "{metrics}");
    assert!(metrics.contains("weft_http_requests_total{route=\"/tokenize\",status=\"200\"}"), "{metrics}");
}

/// Send a request on a raw socket and return the socket after the response
/// head, so a test can hang up whenever it likes.
fn open_request(server: &TestServer, body: &Value) -> BufReader<TcpStream> {
    let mut s = TcpStream::connect(server.addr).unwrap();
    let body = body.to_string();
    write!(s, "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}", body.len()).unwrap();
    BufReader::new(s)
}

#[test]
fn disconnects_mid_stream_while_queued_and_during_prefill_free_every_block() {
    let server = TestServer::start_with(|c| c.max_running = 1, ServerConfig::default());
    use std::sync::atomic::Ordering::Relaxed;

    // Mid-stream: read a few chunks, hang up.
    let long = chat("Write a long essay about rivers.", json!({"max_tokens": 2000, "ignore_eos": true, "stream": true}));
    let mut stream = open_request(&server, &long);
    let mut seen = 0;
    let mut line = String::new();
    while seen < 5 {
        line.clear();
        stream.read_line(&mut line).unwrap();
        seen += usize::from(line.starts_with("data: "));
    }
    drop(stream);
    assert!(all_blocks_free(&server), "mid-stream disconnect");

    // While queued: one request runs (max_running = 1), a second waits and
    // hangs up while waiting.
    let mut running = open_request(&server, &long);
    line.clear();
    running.read_line(&mut line).unwrap();
    let queued = open_request(&server, &long);
    assert!(server.wait_for(Duration::from_secs(10), |g| g.waiting.load(Relaxed) == 1), "the second request queues");
    drop(queued);
    assert!(server.wait_for(Duration::from_secs(5), |g| g.waiting.load(Relaxed) == 0), "the queued request is cancelled");
    assert_eq!(server.engine.gauges().running.load(Relaxed), 1, "the running one goes on");
    drop(running);
    assert!(all_blocks_free(&server), "queued disconnect");

    // During prefill of a non-streamed request with a long prompt.
    let prompt = "word ".repeat(1500);
    let stream = open_request(&server, &chat(&prompt, json!({"max_tokens": 50})));
    assert!(server.wait_for(Duration::from_secs(10), |g| g.running.load(Relaxed) == 1), "prefill starts");
    drop(stream);
    assert!(all_blocks_free(&server), "disconnect during prefill");
}

#[test]
fn a_full_queue_answers_503_with_retry_after() {
    let config = ServerConfig { max_queued: 0, ..ServerConfig::default() };
    let server = TestServer::start_with(|c| c.max_running = 1, config);
    let long = chat("Count to a thousand.", json!({"max_tokens": 2000, "ignore_eos": true, "stream": true}));
    let mut first = open_request(&server, &long);
    let mut line = String::new();
    first.read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 200"), "{line}");
    let second = server.post("/v1/chat/completions", &chat("hi", json!({"max_tokens": 2})));
    assert_eq!(second.status, 503, "{}", second.body);
    assert_eq!(second.json()["error"]["code"], "server_overloaded");
    assert_eq!(second.header("retry-after"), Some("1"));
    drop(first);
    assert!(all_blocks_free(&server));
    let third = server.post("/v1/chat/completions", &chat("hi", json!({"max_tokens": 2})));
    assert_eq!(third.status, 200, "capacity comes back: {}", third.body);
}

#[test]
fn the_admin_api_requires_its_token_and_drains_the_server() {
    let off = TestServer::start();
    let r = off.get("/admin/v1/model");
    assert_eq!((r.status, r.json()["error"]["code"].as_str()), (403, Some("forbidden")), "no token configured: off");
    drop(off);

    let config = ServerConfig { admin_token: Some("s3cret-token".into()), ..ServerConfig::default() };
    let server = TestServer::start_with(|_| {}, config);
    let r = server.get("/admin/v1/model");
    assert_eq!((r.status, r.json()["error"]["code"].as_str()), (401, Some("invalid_api_key")));
    let r = server.get_with("/admin/v1/model", &[("authorization", "Bearer s3cret-tokeX")]);
    assert_eq!(r.status, 401, "a wrong token");
    let auth = [("authorization", "Bearer s3cret-token")];
    let r = server.get_with("/admin/v1/model", &auth);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["id"], default_model().name);
    assert_eq!(r.json()["draining"], false);

    let r = server.post_empty_with("/admin/v1/drain", &auth);
    assert_eq!((r.status, r.json()["draining"].as_bool()), (200, Some(true)));
    let refused = server.post("/v1/chat/completions", &chat("hi", json!({"max_tokens": 2})));
    assert_eq!((refused.status, refused.json()["error"]["code"].as_str()), (503, Some("not_ready")));
    assert_eq!(server.get("/ready").status, 503, "a draining server is not ready");
    assert_eq!(server.get("/health").status, 200, "but it is alive");
}

#[test]
fn a_request_deadline_cancels_the_generation_and_says_so() {
    let server = TestServer::start();
    let long = json!({"max_tokens": 2000, "ignore_eos": true, "weft": {"deadline_ms": 300}});
    let started = std::time::Instant::now();
    let r = server.post("/v1/chat/completions", &chat("Write a very long story.", long.clone()));
    assert_eq!(r.status, 504, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "deadline_exceeded");
    assert_eq!(r.header("x-should-retry"), Some("false"));
    assert!(started.elapsed() < Duration::from_secs(5), "answered at the deadline, not at the end: {:?}", started.elapsed());
    assert!(all_blocks_free(&server), "the generation was cancelled");

    let mut streamed = long;
    streamed["stream"] = json!(true);
    let r = server.post("/v1/chat/completions", &chat("Write a very long story.", streamed));
    let data = r.sse_data();
    assert!(data.last().is_some_and(|d| d.contains("deadline_exceeded")), "the stream ends with the error: {data:?}");
    assert!(!data.iter().any(|d| d == "[DONE]"));
    assert!(all_blocks_free(&server));

    let r = server.post_with(
        "/v1/completions",
        &[("content-type", "application/json"), ("x-weft-deadline-ms", "soon")],
        json!({"prompt": "hi"}).to_string().as_bytes(),
    );
    assert_eq!((r.status, r.json()["error"]["param"].as_str()), (400, Some("x-weft-deadline-ms")));
}
