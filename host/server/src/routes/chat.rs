//! `POST /v1/chat/completions`: a conversation through the model's chat
//! template, answered whole or as a stream of deltas.

use axum::Extension;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use weft_engine::Output;
use weft_types::StopReason;

use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::{self, JsonBody};
use crate::generate::{self, ChunkWriter, StreamContext, finish_reason, token_logprob};
use crate::error::ErrorBody;
use crate::openai::{
    AssistantMessage, ChatChoice, ChatChunkChoice, ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, ChatDelta,
    ChatLogprobs, FunctionCallDelta, FunctionCallOut, SamplingFields, ToolCallDelta, ToolCallOut, Usage,
};
use crate::tools::{self, ValidTools};
use weft_plugin_runtime::{ToolEvent, ToolStream};
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
        (status = 429, description = "The tenant's rate limit (`rate_limit_exceeded`, with `retry-after`)", body = ErrorBody),
        (status = 503, description = "At capacity (with `retry-after`) or not ready", body = ErrorBody),
        (status = 504, description = "The request's own deadline passed (`deadline_exceeded`)", body = ErrorBody),
))]
pub async fn chat_completions(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let arrived = tokio::time::Instant::now();
    let req: ChatCompletionRequest = extract::generation_view(&body)?;
    drop(body);
    let sampling = &req.sampling;
    state.check_model(sampling.model.as_deref(), caller.principal())?;
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
    valid.params.logprobs = logprobs;
    let sampler_version;
    (valid.sampler, sampler_version) = select_sampler(&state, sampling, &headers, &caller)?;
    valid.guide = select_guide(&state, sampling, &headers, &caller)?;
    valid.tenant = caller.tenant();
    let parser = select_tool_parser(&state, sampling, &headers, &caller)?;
    let tools = tools::validate(sampling.tools.as_ref(), sampling.tool_choice.as_ref(), sampling.parallel_tool_calls, parser.as_ref())?;
    let (messages, tools) = tools::apply(tools, &mut valid, &req.messages, parser.as_ref())?;
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
        let parsers = tools.as_ref().map(|t| t.streams(running.len())).transpose()?;
        let writer = ChatChunks { ctx, n: valid.n, logprobs, parsers };
        return Ok(with_sampler(generate::stream_choices(running, writer, valid.include_usage, deadline), &sampler_version));
    }
    let done = generate::collect_all(running, deadline).await?;
    let usage = generate::usage(done.iter().map(|(c, all)| (c.prompt_index, all)));
    let choices = done
        .into_iter()
        .map(|(choice, all)| {
            let (message, called) = answer(&all.text, tools.as_ref())?;
            Ok(ChatChoice {
            index: choice.index,
            logprobs: logprobs.then(|| ChatLogprobs {
                content: (0..all.tokens.len())
                    .map(|i| {
                        let top = all.top_logprobs.get(i).map_or(&[][..], Vec::as_slice);
                        token_logprob(&ctx.tokenizer, all.tokens[i], all.logprobs[i], top)
                    })
                    .collect(),
            }),
            message,
            finish_reason: finish(all.finish, called),
        })})
        .collect::<Result<_, ApiError>>()?;
    let body = ChatCompletion {
        id: ctx.id,
        object: "chat.completion",
        created: ctx.created,
        model: ctx.model,
        choices,
        usage,
        system_fingerprint: crate::SYSTEM_FINGERPRINT,
    };
    Ok(with_sampler(axum::Json(body).into_response(), &sampler_version))
}

/// `response` with the `x-weft-sampler` header: the sampler version that
/// chose its tokens (`name@version`, or `default`).
pub(crate) fn with_sampler(mut response: Response, version: &str) -> Response {
    if let Ok(value) = axum::http::HeaderValue::from_str(version) {
        response.headers_mut().insert("x-weft-sampler", value);
    }
    response
}

/// The assistant message of a whole answer (its tool calls parsed out when
/// tools were offered), and whether it called any.
fn answer(text: &str, tools: Option<&ValidTools>) -> Result<(AssistantMessage, bool), ApiError> {
    let Some(tools) = tools else {
        return Ok((AssistantMessage { role: "assistant", content: Some(text.to_string()), tool_calls: None }, false));
    };
    let (content, calls) = tools.parse_answer(text)?;
    let calls: Vec<ToolCallOut> = calls
        .into_iter()
        .map(|c| ToolCallOut { id: c.id, kind: "function", function: FunctionCallOut { name: c.name, arguments: c.arguments } })
        .collect();
    let called = !calls.is_empty();
    let content = (!called || !content.is_empty()).then_some(content);
    Ok((AssistantMessage { role: "assistant", content, tool_calls: called.then_some(calls) }, called))
}

/// `tool_calls` when an answer that ended by itself made calls.
fn finish(reason: Option<StopReason>, called: bool) -> Option<&'static str> {
    if called && reason == Some(StopReason::Stop) { Some("tool_calls") } else { finish_reason(reason) }
}

struct ChatChunks {
    ctx: StreamContext,
    n: usize,
    logprobs: bool,
    /// Per choice index, when tools were offered: the stream's tool-call parser.
    parsers: Option<Vec<ToolStream>>,
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
            let delta = ChatDelta { role: Some("assistant"), content: Some(String::new()), tool_calls: None };
            let choice = ChatChunkChoice { index, delta, logprobs: None, finish_reason: None };
            chunks.push(generate::sse_data(&self.chunk(vec![choice], None)));
        }
    }

    fn output(&mut self, index: usize, out: &Output, chunks: &mut Vec<axum::body::Bytes>) -> Result<(), ApiError> {
        let logprobs = (self.logprobs && !out.tokens.is_empty()).then(|| ChatLogprobs {
            content: (0..out.tokens.len())
                .map(|i| {
                    let top = out.top_logprobs.get(i).map_or(&[][..], Vec::as_slice);
                    token_logprob(&self.ctx.tokenizer, out.tokens[i], out.logprobs[i], top)
                })
                .collect(),
        });
        let mut deltas = Vec::new();
        let mut called = false;
        match self.parsers.as_mut().map(|p| &mut p[index]) {
            None => {
                if !out.text.is_empty() {
                    deltas.push(ChatDelta { content: Some(out.text.clone()), ..ChatDelta::default() });
                }
            }
            Some(parser) => {
                let mut events = parser.push(&out.text).map_err(tools::parser_failed)?;
                if out.finished.is_some() {
                    events.extend(parser.finish().map_err(tools::parser_failed)?);
                }
                for event in events {
                    let call = |index: u32, id, kind, name, arguments| ToolCallDelta {
                        index: index as usize,
                        id,
                        kind,
                        function: FunctionCallDelta { name, arguments },
                    };
                    deltas.push(match event {
                        ToolEvent::Content(text) => ChatDelta { content: Some(text), ..ChatDelta::default() },
                        ToolEvent::CallStart { index, name } => ChatDelta {
                            tool_calls: Some(vec![call(index, Some(tools::call_id()), Some("function"), Some(name), String::new())]),
                            ..ChatDelta::default()
                        },
                        ToolEvent::CallArguments { index, text } => {
                            ChatDelta { tool_calls: Some(vec![call(index, None, None, None, text)]), ..ChatDelta::default() }
                        }
                    });
                }
                called = parser.calls() > 0;
            }
        }
        if deltas.is_empty() && logprobs.is_some() {
            deltas.push(ChatDelta { content: Some(String::new()), ..ChatDelta::default() });
        }
        let mut logprobs = logprobs;
        for delta in deltas {
            let choice = ChatChunkChoice { index, delta, logprobs: logprobs.take(), finish_reason: None };
            chunks.push(generate::sse_data(&self.chunk(vec![choice], None)));
        }
        if out.finished.is_some() {
            let choice = ChatChunkChoice { index, delta: ChatDelta::default(), logprobs: None, finish_reason: finish(out.finished, called) };
            chunks.push(generate::sse_data(&self.chunk(vec![choice], None)));
        }
        Ok(())
    }

    fn usage(&self, usage: Usage) -> axum::body::Bytes {
        generate::sse_data(&self.chunk(Vec::new(), Some(usage)))
    }
}

/// The deployed guide a request names in `weft.guide` or `x-weft-guide`;
/// `None`: the builtin guide.
pub(crate) fn select_guide(
    state: &AppState,
    sampling: &SamplingFields,
    headers: &HeaderMap,
    caller: &Caller,
) -> Result<Option<weft_plugin_runtime::WasmGuide>, ApiError> {
    let field = sampling.weft.as_ref().and_then(|w| w.guide.as_deref());
    let header = headers.get("x-weft-guide").and_then(|v| v.to_str().ok());
    state.select_guide(field, header, caller.principal())
}

/// The tool parser a request names in `weft.tool_parser` or
/// `x-weft-tool-parser`, else the server's default.
fn select_tool_parser(
    state: &AppState,
    sampling: &SamplingFields,
    headers: &HeaderMap,
    caller: &Caller,
) -> Result<Option<weft_plugin_runtime::WasmToolParser>, ApiError> {
    let field = sampling.weft.as_ref().and_then(|w| w.tool_parser.as_deref());
    let header = headers.get("x-weft-tool-parser").and_then(|v| v.to_str().ok());
    state.select_tool_parser(field, header, caller.principal())
}

/// The sampler a request names in `weft.sampler` or `x-weft-sampler`, and
/// the `name@version` it resolved to.
pub(crate) fn select_sampler(
    state: &AppState,
    sampling: &SamplingFields,
    headers: &HeaderMap,
    caller: &Caller,
) -> Result<(weft_engine::SamplerId, String), ApiError> {
    let field = sampling.weft.as_ref().and_then(|w| w.sampler.as_deref());
    let header = headers.get("x-weft-sampler").and_then(|v| v.to_str().ok());
    state.select_sampler(field, header, caller.principal())
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
