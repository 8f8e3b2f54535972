//! `POST /v1/completions`: raw prompts (text or token ids, one or several),
//! with `echo` and prompt log-probabilities for log-likelihood evaluation.

use std::collections::BTreeMap;

use axum::Extension;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use weft_engine::tokenizer::Tokenizer;
use weft_engine::Output;

use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::{self, JsonBody};
use crate::generate::{self, ChunkWriter, Collected, StreamContext, finish_reason};
use crate::error::ErrorBody;
use crate::openai::{Completion, CompletionChoice, CompletionLogprobs, CompletionRequest, Usage};
use crate::{prepare, validate};

/// Create a completion of raw prompts (text or token ids), with `echo`
/// and prompt log-probabilities for log-likelihood evaluation.
#[utoipa::path(post, path = "/v1/completions", tag = "OpenAI", request_body = CompletionRequest, responses(
        (status = 200, description = "The completions: JSON, or with `stream: true` server-sent events of chunks ending in `data: [DONE]`", content(
            (Completion = "application/json"),
            (Completion = "text/event-stream"),
        )),
        (status = 400, description = "A field is missing, malformed or out of range, or not supported yet", body = ErrorBody),
        (status = 404, description = "Unknown model", body = ErrorBody),
        (status = 413, description = "Body over the size limit", body = ErrorBody),
        (status = 415, description = "Body is not JSON", body = ErrorBody),
        (status = 500, description = "The sampler plugin the request chose failed (`plugin_failed`, not retryable)", body = ErrorBody),
        (status = 429, description = "The tenant's rate limit (`rate_limit_exceeded`, with `retry-after`)", body = ErrorBody),
        (status = 503, description = "At capacity (with `retry-after`) or not ready", body = ErrorBody),
        (status = 504, description = "The request's own deadline passed (`deadline_exceeded`)", body = ErrorBody),
))]
pub async fn completions(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let arrived = tokio::time::Instant::now();
    let req: CompletionRequest = extract::generation_view(&body)?;
    drop(body);
    let sampling = &req.sampling;
    state.check_model(sampling.model.as_deref(), caller.principal())?;
    if req.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::Unsupported { param: "suffix".into(), why: "fill-in-the-middle needs a model trained for it" });
    }
    if req.best_of.is_some_and(|b| b != 1) {
        return Err(ApiError::Unsupported { param: "best_of".into(), why: "use `n` and pick on the client" });
    }
    let logprobs = req.logprobs.map(|k| prepare::top_logprobs("logprobs", k)).transpose()?;
    let echo = req.echo.unwrap_or(false);
    let mut valid = validate::sampling(sampling, ("max_tokens", sampling.max_tokens), logprobs.unwrap_or(0), state.limits())?;
    valid.params.logprobs = logprobs.is_some();
    let tools_given = sampling.tools.as_ref().is_some_and(|t| !t.is_null() && !t.as_array().is_some_and(Vec::is_empty));
    if tools_given || sampling.tool_choice.is_some() || sampling.parallel_tool_calls.is_some() {
        let param = if tools_given { "tools" } else if sampling.tool_choice.is_some() { "tool_choice" } else { "parallel_tool_calls" };
        return Err(ApiError::Unsupported { param: param.into(), why: "tool calling is for /v1/chat/completions" });
    }
    if echo && valid.stream {
        return Err(ApiError::Unsupported { param: "echo".into(), why: "`echo` is available without `stream`" });
    }
    let sampler_version;
    (valid.sampler, sampler_version) = super::chat::select_sampler(&state, sampling, &headers, &caller)?;
    valid.guide = super::chat::select_guide(&state, sampling, &headers, &caller)?;
    valid.tenant = caller.tenant();
    let prompts = validate::prompts(&req.prompt, valid.n, state.limits())?;
    let (prompts, choices) = prepare::prompts(&state, prompts, &valid, echo && logprobs.is_some()).await?;
    let deadline = super::chat::deadline(&valid, &headers, arrived)?;
    let running = generate::start(&state, choices).await?;
    let ctx = StreamContext {
        id: generate::response_id("cmpl-"),
        created: crate::unix_now(),
        model: state.model.name.clone(),
        tokenizer: state.tokenizer.clone(),
    };
    if valid.stream {
        let writer = CompletionChunks { ctx, logprobs: logprobs.is_some(), offsets: BTreeMap::new() };
        return Ok(super::chat::with_sampler(generate::stream_choices(running, writer, valid.include_usage, deadline), &sampler_version));
    }
    let done = generate::collect_all(running, deadline).await?;
    let usage = generate::usage(done.iter().map(|(c, all)| (c.prompt_index, all)));
    let mut choices = Vec::with_capacity(done.len());
    for (choice, all) in done {
        let prompt = &prompts[choice.prompt_index];
        let prefix = if echo { state.tokenizer.decode(prompt, false).map_err(|e| ApiError::Internal(e.to_string()))? } else { String::new() };
        let logprobs = logprobs.map(|_| completion_logprobs(&ctx.tokenizer, echo.then_some(prompt.as_slice()), &all, 0));
        choices.push(CompletionChoice {
            index: choice.index,
            text: prefix + &all.text,
            logprobs,
            finish_reason: finish_reason(all.finish),
        });
    }
    let body = Completion {
        id: ctx.id,
        object: "text_completion",
        created: ctx.created,
        model: ctx.model,
        choices,
        usage: Some(usage),
        system_fingerprint: crate::SYSTEM_FINGERPRINT,
    };
    Ok(super::chat::with_sampler(axum::Json(body).into_response(), &sampler_version))
}

/// Legacy logprobs for a choice: the echoed prompt's tokens first (the very
/// first has no log-probability), then the generated ones. `offset` is the
/// text offset the first token starts at.
fn completion_logprobs(tokenizer: &Tokenizer, prompt: Option<&[u32]>, all: &Collected, mut offset: usize) -> CompletionLogprobs {
    let mut lp = CompletionLogprobs::default();
    let text_of = |t: u32| String::from_utf8_lossy(&tokenizer.token_bytes(t)).into_owned();
    let mut push = |lp: &mut CompletionLogprobs, token: u32, logprob: Option<f32>, top: Option<BTreeMap<String, f32>>| {
        let text = text_of(token);
        lp.text_offset.push(offset);
        offset += text.len();
        lp.tokens.push(text);
        lp.token_logprobs.push(logprob);
        lp.top_logprobs.push(top);
    };
    if let Some(prompt) = prompt {
        for (i, &token) in prompt.iter().enumerate() {
            let score = i.checked_sub(1).and_then(|j| all.prompt_scores.get(j));
            let top = score.map(|s| BTreeMap::from([(text_of(s.argmax), s.argmax_logprob)]));
            push(&mut lp, token, score.map(|s| s.logprob), top);
        }
    }
    for (i, &token) in all.tokens.iter().enumerate() {
        let top = all.top_logprobs.get(i).map(|alts| alts.iter().map(|&(t, l)| (text_of(t), l)).collect());
        push(&mut lp, token, all.logprobs.get(i).copied(), top);
    }
    lp
}

struct CompletionChunks {
    ctx: StreamContext,
    logprobs: bool,
    /// Text offset reached by each choice so far.
    offsets: BTreeMap<usize, usize>,
}

impl ChunkWriter for CompletionChunks {
    fn output(&mut self, index: usize, out: &Output, chunks: &mut Vec<axum::body::Bytes>) -> Result<(), ApiError> {
        let offset = self.offsets.entry(index).or_insert(0);
        let logprobs = self.logprobs.then(|| {
            let all = Collected {
                tokens: out.tokens.clone(),
                logprobs: out.logprobs.clone(),
                top_logprobs: out.top_logprobs.clone(),
                ..Collected::default()
            };
            completion_logprobs(&self.ctx.tokenizer, None, &all, *offset)
        });
        *offset += out.text.len();
        let choice = CompletionChoice { index, text: out.text.clone(), logprobs, finish_reason: finish_reason(out.finished) };
        let chunk = Completion {
            id: self.ctx.id.clone(),
            object: "text_completion",
            created: self.ctx.created,
            model: self.ctx.model.clone(),
            choices: vec![choice],
            usage: None,
            system_fingerprint: crate::SYSTEM_FINGERPRINT,
        };
        chunks.push(generate::sse_data(&chunk));
        Ok(())
    }

    fn usage(&self, usage: Usage) -> axum::body::Bytes {
        generate::sse_data(&Completion {
            id: self.ctx.id.clone(),
            object: "text_completion",
            created: self.ctx.created,
            model: self.ctx.model.clone(),
            choices: Vec::new(),
            usage: Some(usage),
            system_fingerprint: crate::SYSTEM_FINGERPRINT,
        })
    }
}
