//! Running a request's choices on the engine, and the pieces both
//! OpenAI endpoints build their responses from.
//!
//! A request with `n` choices (times its prompts) becomes that many engine
//! requests, admitted together or not at all. Non-streaming responses
//! [`collect`] each choice to its end; streaming ones [`merge`] the choices'
//! outputs in the order they are produced. Either way the engine requests
//! live inside the returned values: dropping them — because the client went
//! away — cancels the requests and frees their KV blocks.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, header};
use axum::response::Response;
use futures_util::stream::{self, BoxStream, Stream, StreamExt};
use weft_engine::tokenizer::Tokenizer;
use weft_engine::{GenerationRequest, Output, PromptScore};
use weft_types::StopReason;

use crate::AppState;
use crate::engine_task::{Event, Submission};
use crate::error::ApiError;
use crate::openai::{TokenLogprob, TopLogprob, Usage};

/// One choice to run.
#[derive(Debug)]
pub struct ChoiceRequest {
    /// Position in the response's `choices`.
    pub index: usize,
    /// Which prompt it continues (completions may send several).
    pub prompt_index: usize,
    pub request: GenerationRequest,
}

/// A choice the engine has accepted.
#[derive(Debug)]
pub struct RunningChoice {
    pub index: usize,
    pub prompt_index: usize,
    submission: Submission,
}

/// Admit all choices at once (or none), then hand them to the engine.
pub async fn start(state: &AppState, choices: Vec<ChoiceRequest>) -> Result<Vec<RunningChoice>, ApiError> {
    let tickets = state.engine.admit(choices.len())?;
    let mut running = Vec::with_capacity(choices.len());
    for (choice, ticket) in choices.into_iter().zip(tickets) {
        let submission = state.engine.submit(choice.request, ticket).await?;
        running.push(RunningChoice { index: choice.index, prompt_index: choice.prompt_index, submission });
    }
    Ok(running)
}

/// Everything one choice produced.
#[derive(Debug, Default)]
pub struct Collected {
    pub text: String,
    pub tokens: Vec<u32>,
    pub logprobs: Vec<f32>,
    pub top_logprobs: Vec<Vec<(u32, f32)>>,
    pub prompt_scores: Vec<PromptScore>,
    pub finish: Option<StopReason>,
    pub prompt_tokens: usize,
    pub cached_tokens: usize,
}

impl Collected {
    fn absorb(&mut self, out: Output) {
        self.text.push_str(&out.text);
        self.tokens.extend(out.tokens);
        self.logprobs.extend(out.logprobs);
        self.top_logprobs.extend(out.top_logprobs);
        self.prompt_scores.extend(out.prompt_scores);
        self.prompt_tokens = out.prompt_tokens;
        self.cached_tokens = out.cached_tokens;
        self.finish = self.finish.or(out.finished);
    }
}

fn lost() -> ApiError {
    ApiError::Internal("the engine dropped a request without finishing it".into())
}

/// Wait for a choice to finish.
pub async fn collect(mut choice: RunningChoice) -> Result<(RunningChoice, Collected), ApiError> {
    let mut all = Collected::default();
    loop {
        match choice.submission.events.recv().await {
            Some(Ok(out)) => {
                all.absorb(out);
                if all.finish.is_some() {
                    return Ok((choice, all));
                }
            }
            Some(Err(e)) => return Err(e),
            None => return Err(lost()),
        }
    }
}

/// When a request must be finished, if it set a deadline.
#[derive(Clone, Copy, Debug)]
pub struct Deadline {
    pub at: tokio::time::Instant,
    pub ms: u64,
}

impl Deadline {
    /// `ms` milliseconds after `arrived`.
    pub fn after(arrived: tokio::time::Instant, ms: u64) -> Self {
        Self { at: arrived + std::time::Duration::from_millis(ms), ms }
    }
}

/// Collect every choice concurrently, in `index` order. Past the deadline
/// the choices are dropped, which cancels them in the engine.
pub async fn collect_all(choices: Vec<RunningChoice>, deadline: Option<Deadline>) -> Result<Vec<(RunningChoice, Collected)>, ApiError> {
    let all = futures_util::future::try_join_all(choices.into_iter().map(collect));
    let mut done = match deadline {
        Some(d) => tokio::time::timeout_at(d.at, all).await.map_err(|_| ApiError::DeadlineExceeded(d.ms))??,
        None => all.await?,
    };
    done.sort_by_key(|(c, _)| c.index);
    Ok(done)
}

/// One step's output of one choice, as it streams.
#[derive(Debug)]
pub struct Tagged {
    pub index: usize,
    pub prompt_index: usize,
    pub event: Event,
}

/// The outputs of all choices, interleaved as the engine produces them.
/// Each choice's stream ends after its finishing output or its error.
pub fn merge(choices: Vec<RunningChoice>) -> impl Stream<Item = Tagged> + Send + 'static {
    let streams: Vec<BoxStream<'static, Tagged>> = choices
        .into_iter()
        .map(|choice| {
            stream::unfold(Some(choice), |state| async move {
                let mut choice = state?;
                let event = choice.submission.events.recv().await.unwrap_or_else(|| Err(lost()));
                let last = event.as_ref().map_or(true, |o| o.finished.is_some());
                let tagged = Tagged { index: choice.index, prompt_index: choice.prompt_index, event };
                Some((tagged, if last { None } else { Some(choice) }))
            })
            .boxed()
        })
        .collect();
    stream::select_all(streams)
}

pub fn finish_reason(reason: Option<StopReason>) -> Option<&'static str> {
    reason.map(|r| match r {
        StopReason::Stop => "stop",
        StopReason::Length => "length",
        StopReason::Cancelled => "cancelled",
        StopReason::Error => "error",
    })
}

/// Token usage over choices: each prompt counts once, whatever `n` is.
pub fn usage<'a>(per_choice: impl IntoIterator<Item = (usize, &'a Collected)>) -> Usage {
    let mut usage = Usage::default();
    let mut seen_prompts = std::collections::BTreeSet::new();
    for (prompt_index, c) in per_choice {
        if seen_prompts.insert(prompt_index) {
            usage.prompt_tokens += c.prompt_tokens;
            usage.prompt_tokens_details.cached_tokens += c.cached_tokens;
        }
        usage.completion_tokens += c.tokens.len();
    }
    usage.total_tokens = usage.prompt_tokens + usage.completion_tokens;
    usage
}

/// A token as OpenAI's chat logprobs show it.
pub fn token_logprob(tokenizer: &Tokenizer, token: u32, logprob: f32, top: &[(u32, f32)]) -> TokenLogprob {
    let bytes = tokenizer.token_bytes(token);
    TokenLogprob {
        token: String::from_utf8_lossy(&bytes).into_owned(),
        logprob,
        top_logprobs: top
            .iter()
            .map(|&(t, lp)| {
                let bytes = tokenizer.token_bytes(t);
                TopLogprob { token: String::from_utf8_lossy(&bytes).into_owned(), logprob: lp, bytes }
            })
            .collect(),
        bytes,
    }
}

/// A random response id with OpenAI's prefixes (`chatcmpl-`, `cmpl-`).
pub fn response_id(prefix: &str) -> String {
    format!("{prefix}{:032x}", rand::random::<u128>())
}

/// `data: <json>\n\n`.
pub fn sse_data(json: &impl serde::Serialize) -> Bytes {
    let mut line = b"data: ".to_vec();
    serde_json::to_writer(&mut line, json).expect("response types serialize");
    line.extend_from_slice(b"\n\n");
    Bytes::from(line)
}

pub fn sse_done() -> Bytes {
    Bytes::from_static(b"data: [DONE]\n\n")
}

/// An SSE response over `events`.
pub fn sse_response(events: impl Stream<Item = Bytes> + Send + 'static) -> Response {
    let body = Body::from_stream(events.map(Ok::<_, std::convert::Infallible>));
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// Shared read-only context a streaming response needs after its handler
/// has returned.
#[derive(Clone, Debug)]
pub struct StreamContext {
    pub id: String,
    pub created: u64,
    pub model: String,
    pub tokenizer: Arc<Tokenizer>,
}

/// How an endpoint turns engine outputs into its stream's chunks.
pub trait ChunkWriter: Send + 'static {
    /// Chunks sent before any output (chat's role deltas).
    fn start(&mut self, _chunks: &mut Vec<Bytes>) {}
    /// Chunks for one output of choice `index`; an error (a tool parser
    /// that failed) ends the stream with it.
    fn output(&mut self, index: usize, out: &Output, chunks: &mut Vec<Bytes>) -> Result<(), ApiError>;
    /// The closing usage chunk (`stream_options.include_usage`).
    fn usage(&self, usage: Usage) -> Bytes;
}

/// How often a stream that has nothing to say writes an SSE comment, so
/// that a client that left is noticed (the write fails) and its request
/// cancelled even while it is queued or prefilling.
const HEARTBEAT: std::time::Duration = std::time::Duration::from_millis(250);

struct StreamState<W> {
    merged: BoxStream<'static, Tagged>,
    writer: W,
    pending: std::collections::VecDeque<Bytes>,
    include_usage: bool,
    prompt_tokens: std::collections::BTreeMap<usize, (usize, usize)>,
    completion_tokens: usize,
    done: bool,
}

/// Stream all choices as SSE: the writer's chunks, then the usage chunk if
/// asked for, then `data: [DONE]`. An engine failure ends the stream with
/// an `{"error": ...}` event instead, never a silent cut.
pub fn stream_choices(choices: Vec<RunningChoice>, writer: impl ChunkWriter, include_usage: bool, deadline: Option<Deadline>) -> Response {
    let mut state = StreamState {
        merged: merge(choices).boxed(),
        writer,
        pending: Default::default(),
        include_usage,
        prompt_tokens: Default::default(),
        completion_tokens: 0,
        done: false,
    };
    let mut first = Vec::new();
    state.writer.start(&mut first);
    state.pending.extend(first);
    let events = stream::unfold(state, move |mut s| async move {
        loop {
            if let Some(chunk) = s.pending.pop_front() {
                return Some((chunk, s));
            }
            if s.done {
                return None;
            }
            if let Some(d) = deadline
                && tokio::time::Instant::now() >= d.at
            {
                // Dropping the merged stream cancels the choices now.
                s.merged = stream::empty().boxed();
                s.pending.push_back(sse_data(&ApiError::DeadlineExceeded(d.ms).body()));
                s.done = true;
                continue;
            }
            let wait = deadline.map_or(HEARTBEAT, |d| HEARTBEAT.min(d.at.saturating_duration_since(tokio::time::Instant::now())));
            let next = match tokio::time::timeout(wait, s.merged.next()).await {
                Ok(next) => next,
                Err(_) if deadline.is_some_and(|d| tokio::time::Instant::now() >= d.at) => continue,
                Err(_) => return Some((Bytes::from_static(b": waiting\n\n"), s)),
            };
            match next {
                Some(Tagged { index, prompt_index, event: Ok(out) }) => {
                    s.prompt_tokens.insert(prompt_index, (out.prompt_tokens, out.cached_tokens));
                    s.completion_tokens += out.tokens.len();
                    let mut chunks = Vec::new();
                    let written = s.writer.output(index, &out, &mut chunks);
                    s.pending.extend(chunks);
                    if let Err(e) = written {
                        // Dropping the merged stream cancels the choices now.
                        s.merged = stream::empty().boxed();
                        s.pending.push_back(sse_data(&e.body()));
                        s.done = true;
                    }
                }
                Some(Tagged { event: Err(e), .. }) => {
                    s.pending.push_back(sse_data(&e.body()));
                    s.done = true;
                }
                None => {
                    if s.include_usage {
                        let (prompt, cached) =
                            s.prompt_tokens.values().fold((0, 0), |(p, c), &(pp, cc)| (p + pp, c + cc));
                        let usage = Usage {
                            prompt_tokens: prompt,
                            completion_tokens: s.completion_tokens,
                            total_tokens: prompt + s.completion_tokens,
                            prompt_tokens_details: crate::openai::PromptTokensDetails { cached_tokens: cached },
                        };
                        s.pending.push_back(s.writer.usage(usage));
                    }
                    s.pending.push_back(sse_done());
                    s.done = true;
                }
            }
        }
    });
    sse_response(events)
}
