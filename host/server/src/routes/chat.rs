//! `POST /v1/chat/completions`: a conversation through the model's chat
//! template, answered whole or as a stream of deltas.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use weft_engine::Output;

use crate::AppState;
use crate::error::ApiError;
use crate::extract::{self, JsonBody};
use crate::generate::{self, ChunkWriter, StreamContext, finish_reason, token_logprob};
use crate::error::ErrorBody;
use crate::openai::{
    AssistantMessage, ChatChoice, ChatChunkChoice, ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, ChatDelta,
    ChatLogprobs, SamplingFields, Usage,
};
use crate::{prepare, validate};

/// Create a chat completion: the conversation through the model's chat
/// template, answered whole or streamed.
#[utoipa::path(post, path = "/v1/chat/completions", tag = "OpenAI", request_body = ChatCompletionRequest, responses(
        (status = 200, description = "The answer: JSON, or with `stream: true` server-sent events of chunks ending in `data: [DONE]`", content(
            (ChatCompletion = "application/json"),
            (ChatCompletionChunk = "text/event-stream"),
        )),
        (status = 400, description = "A field is missing, malformed or out of range, or not supported yet", body = ErrorBody),
        (status = 404, description = "Unknown model", body = ErrorBody),
        (status = 413, description = "Body over the size limit", body = ErrorBody),
        (status = 415, description = "Body is not JSON", body = ErrorBody),
        (status = 500, description = "The sampler plugin the request chose failed (`plugin_failed`, not retryable)", body = ErrorBody),
        (status = 503, description = "At capacity (with `retry-after`) or not ready", body = ErrorBody),
        (status = 504, description = "The request's own deadline passed (`deadline_exceeded`)", body = ErrorBody),
))]
pub async fn chat_completions(State(state): State<AppState>, headers: HeaderMap, JsonBody(body): JsonBody) -> Result<Response, ApiError> {
    let arrived = tokio::time::Instant::now();
    let req: ChatCompletionRequest = extract::generation_view(&body)?;
    drop(body);
    let sampling = &req.sampling;
    state.check_model(sampling.model.as_deref())?;
    let logprobs = req.logprobs.unwrap_or(false);
    let top_logprobs = match (logprobs, req.top_logprobs) {
        (_, None) => 0,
        (true, Some(k)) => prepare::top_logprobs("top_logprobs", k)?,
        (false, Some(_)) => return Err(ApiError::invalid("top_logprobs", "`top_logprobs` needs `logprobs: true`")),
    };
    let max_tokens = match req.max_completion_tokens {
        Some(v) => ("max_completion_tokens", Some(v)),
        None => ("max_tokens", sampling.max_tokens),
    };
    let mut valid = validate::sampling(sampling, max_tokens, top_logprobs, state.limits())?;
    valid.sampler = select_sampler(&state, sampling, &headers)?;
    let messages = validate::chat_messages(&req.messages)?;
    let choices = prepare::chat(&state, messages, &valid).await?;
    let deadline = deadline(&valid, &headers, arrived)?;
    let running = generate::start(&state, choices).await?;
    let ctx = StreamContext {
        id: generate::response_id("chatcmpl-"),
        created: crate::unix_now(),
        model: state.model.name.clone(),
        tokenizer: state.tokenizer.clone(),
    };
    if valid.stream {
        let writer = ChatChunks { ctx, n: valid.n, logprobs };
        return Ok(generate::stream_choices(running, writer, valid.include_usage, deadline));
    }
    let done = generate::collect_all(running, deadline).await?;
    let usage = generate::usage(done.iter().map(|(c, all)| (c.prompt_index, all)));
    let choices = done
        .into_iter()
        .map(|(choice, all)| ChatChoice {
            index: choice.index,
            logprobs: logprobs.then(|| ChatLogprobs {
                content: (0..all.tokens.len())
                    .map(|i| {
                        let top = all.top_logprobs.get(i).map_or(&[][..], Vec::as_slice);
                        token_logprob(&ctx.tokenizer, all.tokens[i], all.logprobs[i], top)
                    })
                    .collect(),
            }),
            message: AssistantMessage { role: "assistant", content: all.text },
            finish_reason: finish_reason(all.finish),
        })
        .collect();
    let body = ChatCompletion {
        id: ctx.id,
        object: "chat.completion",
        created: ctx.created,
        model: ctx.model,
        choices,
        usage,
        system_fingerprint: crate::SYSTEM_FINGERPRINT,
    };
    Ok(axum::Json(body).into_response())
}

struct ChatChunks {
    ctx: StreamContext,
    n: usize,
    logprobs: bool,
}

impl ChatChunks {
    fn chunk(&self, choices: Vec<ChatChunkChoice>, usage: Option<Usage>) -> ChatCompletionChunk {
        ChatCompletionChunk {
            id: self.ctx.id.clone(),
            object: "chat.completion.chunk",
            created: self.ctx.created,
            model: self.ctx.model.clone(),
            choices,
            usage,
            system_fingerprint: crate::SYSTEM_FINGERPRINT,
        }
    }
}

impl ChunkWriter for ChatChunks {
    fn start(&mut self, chunks: &mut Vec<axum::body::Bytes>) {
        for index in 0..self.n {
            let delta = ChatDelta { role: Some("assistant"), content: Some(String::new()) };
            let choice = ChatChunkChoice { index, delta, logprobs: None, finish_reason: None };
            chunks.push(generate::sse_data(&self.chunk(vec![choice], None)));
        }
    }

    fn output(&mut self, index: usize, out: &Output, chunks: &mut Vec<axum::body::Bytes>) {
        let logprobs = (self.logprobs && !out.tokens.is_empty()).then(|| ChatLogprobs {
            content: (0..out.tokens.len())
                .map(|i| {
                    let top = out.top_logprobs.get(i).map_or(&[][..], Vec::as_slice);
                    token_logprob(&self.ctx.tokenizer, out.tokens[i], out.logprobs[i], top)
                })
                .collect(),
        });
        if !out.text.is_empty() || logprobs.is_some() {
            let delta = ChatDelta { role: None, content: Some(out.text.clone()) };
            let choice = ChatChunkChoice { index, delta, logprobs, finish_reason: None };
            chunks.push(generate::sse_data(&self.chunk(vec![choice], None)));
        }
        if out.finished.is_some() {
            let choice = ChatChunkChoice { index, delta: ChatDelta::default(), logprobs: None, finish_reason: finish_reason(out.finished) };
            chunks.push(generate::sse_data(&self.chunk(vec![choice], None)));
        }
    }

    fn usage(&self, usage: Usage) -> axum::body::Bytes {
        generate::sse_data(&self.chunk(Vec::new(), Some(usage)))
    }
}

/// The sampler a request names in `weft.sampler` or `x-weft-sampler`.
pub(crate) fn select_sampler(state: &AppState, sampling: &SamplingFields, headers: &HeaderMap) -> Result<weft_engine::SamplerId, ApiError> {
    let field = sampling.weft.as_ref().and_then(|w| w.sampler.as_deref());
    let header = headers.get("x-weft-sampler").and_then(|v| v.to_str().ok());
    state.select_sampler(field, header)
}

/// The request's deadline: `weft.deadline_ms`, else the `x-weft-deadline-ms`
/// header, counted from when the request arrived.
pub(crate) fn deadline(valid: &validate::ValidSampling, headers: &HeaderMap, arrived: tokio::time::Instant) -> Result<Option<generate::Deadline>, ApiError> {
    let header = match headers.get("x-weft-deadline-ms") {
        None => None,
        Some(v) => {
            let ms = v.to_str().ok().and_then(|s| s.parse::<u64>().ok()).filter(|ms| (1..=3_600_000).contains(ms));
            Some(ms.ok_or_else(|| ApiError::invalid("x-weft-deadline-ms", "`x-weft-deadline-ms` must be an integer in [1, 3600000]"))?)
        }
    };
    Ok(valid.deadline_ms.or(header).map(|ms| generate::Deadline::after(arrived, ms)))
}
