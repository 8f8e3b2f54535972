//! The `weft.v1.Generation` service: proto requests in, the shared
//! validation, preparation and generation paths, proto responses out.

use std::collections::BTreeMap;

use futures_util::stream::{self, BoxStream, StreamExt};
use tonic::{Request, Response, Status};
use weft_engine::Output;
use weft_plugin_runtime::Principal;
use weft_types::StopReason;

use super::proto::generate_request::Input;
use super::proto::{self, generation_server::Generation};
use super::status::to_status;
use crate::AppState;
use crate::error::ApiError;
use crate::generate::{self, RunningChoice, Tagged};
use crate::guides::Constraint;
use crate::openai::{ChatMessageIn, MessageContent, Prompt, SamplingFields, Stop};
use crate::tools::ValidTools;
use serde_json::{Value, json};
use weft_plugin_runtime::{ToolEvent, ToolStream};
use crate::validate::{self, ValidPrompt};
use crate::prepare;

pub struct GenerationService {
    state: AppState,
}

/// A request's output constraint, named by its proto field for errors.
fn constraint(c: proto::generate_request::Constraint) -> Option<Constraint> {
    use proto::generate_request::Constraint as C;
    let (kind, source, param) = match c {
        C::JsonObject(false) => return None,
        C::JsonObject(true) => ("json-object", String::new(), "json_object"),
        C::JsonSchema(schema) => ("json-schema", schema, "json_schema"),
        C::Regex(regex) => ("regex", regex, "regex"),
        C::Lark(lark) => ("lark", lark, "lark"),
    };
    Some(Constraint { kind, source, param })
}

impl GenerationService {
    pub fn new(state: AppState) -> Self {
        Self { state }
    }

    /// The caller of a gRPC call, from its metadata (`authorization`).
    async fn authenticate<T>(&self, request: &Request<T>, path: &str) -> Result<Option<Principal>, Status> {
        let metadata = request.metadata().clone().into_headers();
        let headers = crate::auth::headers_of(metadata.iter().map(|(k, v)| (k.as_str(), v.as_bytes())));
        crate::auth::authenticate(&self.state, "POST", path, headers).await.map_err(to_status)
    }

    /// Validate, prepare and admit a request; returns its running choices,
    /// whether logprobs were asked for, and the tools offered (whose
    /// answers are parsed for calls).
    async fn start(
        &self,
        req: proto::GenerateRequest,
        metadata: Metadata,
        principal: Option<Principal>,
    ) -> Result<(Vec<RunningChoice>, bool, Option<ValidTools>), ApiError> {
        let state = &self.state;
        let model = (!req.model.is_empty()).then_some(req.model.as_str());
        state.check_model(model, principal.as_ref())?;
        let s = req.sampling.unwrap_or_default();
        let fields = SamplingFields {
            n: req.n,
            max_tokens: s.max_tokens,
            temperature: s.temperature,
            top_p: s.top_p,
            top_k: s.top_k,
            min_p: s.min_p,
            presence_penalty: s.presence_penalty,
            frequency_penalty: s.frequency_penalty,
            repetition_penalty: s.repetition_penalty,
            logit_bias: (!s.logit_bias.is_empty()).then(|| s.logit_bias.iter().map(|(k, v)| (k.to_string(), *v)).collect()),
            seed: s.seed,
            stop: (!s.stop.is_empty()).then(|| Stop::Many(s.stop.clone())),
            ignore_eos: Some(s.ignore_eos),
            ..SamplingFields::default()
        };
        let top = s.top_logprobs.map(|k| prepare::top_logprobs("top_logprobs", k)).transpose()?;
        let mut valid = validate::sampling(&fields, ("max_tokens", fields.max_tokens), top.unwrap_or(0), state.limits())?;
        valid.params.logprobs = top.is_some();
        valid.sampler = state.select_sampler(None, metadata.sampler.as_deref(), principal.as_ref())?.0;
        valid.constraint = req.constraint.and_then(constraint);
        valid.guide = state.select_guide(None, metadata.guide.as_deref(), principal.as_ref())?;
        let named_parser = (!req.tool_parser.is_empty()).then_some(req.tool_parser.as_str());
        let parser = state.select_tool_parser(named_parser, metadata.tool_parser.as_deref(), principal.as_ref())?;
        valid.tenant = principal.map(|p| p.tenant).unwrap_or_default();
        let (tools, tool_choice) = tool_values(&req.tools, req.tool_use)?;
        let tools = crate::tools::validate(tools.as_ref(), tool_choice.as_ref(), req.parallel_tool_calls, parser.as_ref())?;
        if tools.is_some() && !matches!(req.input, Some(Input::Chat(_))) {
            return Err(ApiError::Unsupported { param: "tools".into(), why: "tools are for `chat` input" });
        }
        let mut offered = None;
        let choices = match req.input {
            Some(Input::Prompt(text)) => prepare::prompts(state, vec![ValidPrompt::Text(text)], &valid, false).await?.1,
            Some(Input::Tokens(t)) => {
                let ids = Prompt::Tokens(t.ids.iter().map(|&i| i64::from(i)).collect());
                prepare::prompts(state, validate::prompts(&ids, valid.n, state.limits())?, &valid, false).await?.1
            }
            Some(Input::Chat(m)) => {
                let (messages, tools) = crate::tools::apply(tools, &mut valid, &messages_in(m), parser.as_ref())?;
                offered = tools;
                prepare::chat(state, messages, &valid).await?
            }
            None => return Err(ApiError::invalid("input", "set one of `prompt`, `chat` or `tokens`")),
        };
        Ok((generate::start(state, choices).await?, top.is_some(), offered))
    }

    fn logprobs(&self, tokens: &[u32], logprobs: &[f32], top: &[Vec<(u32, f32)>]) -> Vec<proto::TokenLogprob> {
        let tk = &self.state.tokenizer;
        let entry = |token: u32, logprob: f32, top: Vec<proto::TokenLogprob>| proto::TokenLogprob {
            token,
            bytes: tk.token_bytes(token),
            logprob,
            top,
        };
        tokens
            .iter()
            .enumerate()
            .map(|(i, &t)| {
                let alts = top.get(i).map_or(&[][..], Vec::as_slice).iter().map(|&(a, l)| entry(a, l, Vec::new())).collect();
                entry(t, logprobs.get(i).copied().unwrap_or(f32::NAN), alts)
            })
            .collect()
    }
}

/// The plugins a call names in its metadata (`x-weft-sampler`,
/// `x-weft-guide`, `x-weft-tool-parser`).
struct Metadata {
    sampler: Option<String>,
    guide: Option<String>,
    tool_parser: Option<String>,
}

fn metadata<T>(request: &Request<T>) -> Metadata {
    let get = |key| request.metadata().get(key).and_then(|v| v.to_str().ok()).map(str::to_string);
    Metadata { sampler: get("x-weft-sampler"), guide: get("x-weft-guide"), tool_parser: get("x-weft-tool-parser") }
}

/// Proto messages as the HTTP body's messages, for the shared validation.
fn messages_in(m: proto::Messages) -> Vec<ChatMessageIn> {
    m.messages
        .into_iter()
        .map(|m| {
            let calls = m
                .tool_calls
                .into_iter()
                .map(|c| json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}))
                .collect::<Vec<_>>();
            ChatMessageIn {
                role: m.role,
                content: Some(MessageContent::Text(m.content)),
                name: None,
                tool_calls: (!calls.is_empty()).then_some(Value::Array(calls)),
                tool_call_id: (!m.tool_call_id.is_empty()).then_some(m.tool_call_id),
            }
        })
        .collect()
}

/// The proto's tools and tool choice in the HTTP body's shape, for the
/// shared validation (`parameters` must be JSON text).
fn tool_values(tools: &[proto::Tool], choice: Option<proto::generate_request::ToolUse>) -> Result<(Option<Value>, Option<Value>), ApiError> {
    use proto::generate_request::ToolUse;
    let mut list = Vec::with_capacity(tools.len());
    for (i, t) in tools.iter().enumerate() {
        let parameters: Value = match t.parameters.as_str() {
            "" => Value::Null,
            text => serde_json::from_str(text)
                .map_err(|e| ApiError::invalid(format!("tools[{i}].parameters"), format!("`parameters` is not JSON: {e}")))?,
        };
        list.push(json!({"type": "function", "function": {"name": t.name, "description": t.description, "parameters": parameters}}));
    }
    let choice = match choice {
        None => None,
        Some(ToolUse::ToolFunction(name)) => Some(json!({"type": "function", "function": {"name": name}})),
        Some(ToolUse::ToolChoice(mode)) => match proto::ToolChoice::try_from(mode) {
            Ok(proto::ToolChoice::Unspecified) => None,
            Ok(proto::ToolChoice::None) => Some(json!("none")),
            Ok(proto::ToolChoice::Auto) => Some(json!("auto")),
            Ok(proto::ToolChoice::Required) => Some(json!("required")),
            Err(_) => return Err(ApiError::invalid("tool_choice", format!("unknown tool choice {mode}"))),
        },
    };
    Ok(((!list.is_empty()).then_some(Value::Array(list)), choice))
}

fn finish_reason(reason: Option<StopReason>, called: bool) -> i32 {
    (match reason {
        None | Some(StopReason::Cancelled) | Some(StopReason::Error) => proto::FinishReason::Unspecified,
        Some(StopReason::Stop) if called => proto::FinishReason::ToolCalls,
        Some(StopReason::Stop) => proto::FinishReason::Stop,
        Some(StopReason::Length) => proto::FinishReason::Length,
    }) as i32
}

type ChunkStream = BoxStream<'static, Result<proto::GenerateChunk, Status>>;

struct StreamState {
    merged: BoxStream<'static, Tagged>,
    service: GenerationService,
    logprobs: bool,
    /// Per choice index, when tools were offered: its tool-call parser.
    parsers: Option<Vec<ToolStream>>,
    prompts: BTreeMap<usize, (usize, usize)>,
    completion_tokens: usize,
    done: bool,
}

impl StreamState {
    fn chunk(&mut self, index: usize, prompt_index: usize, out: Output) -> Result<proto::GenerateChunk, ApiError> {
        self.prompts.insert(prompt_index, (out.prompt_tokens, out.cached_tokens));
        self.completion_tokens += out.tokens.len();
        let logprobs = if self.logprobs { self.service.logprobs(&out.tokens, &out.logprobs, &out.top_logprobs) } else { Vec::new() };
        let (text, tool_calls, called) = match self.parsers.as_mut().map(|p| &mut p[index]) {
            None => (out.text, Vec::new(), false),
            Some(parser) => {
                let mut events = parser.push(&out.text).map_err(crate::tools::parser_failed)?;
                if out.finished.is_some() {
                    events.extend(parser.finish().map_err(crate::tools::parser_failed)?);
                }
                let (mut text, mut calls) = (String::new(), Vec::new());
                for event in events {
                    match event {
                        ToolEvent::Content(t) => text.push_str(&t),
                        ToolEvent::CallStart { index, name } => {
                            calls.push(proto::ToolCall { index, id: crate::tools::call_id(), name, arguments: String::new() });
                        }
                        ToolEvent::CallArguments { index, text } => {
                            calls.push(proto::ToolCall { index, id: String::new(), name: String::new(), arguments: text });
                        }
                    }
                }
                (text, calls, parser.calls() > 0)
            }
        };
        Ok(proto::GenerateChunk {
            index: index as u32,
            text,
            tokens: out.tokens,
            finish_reason: finish_reason(out.finished, called),
            logprobs,
            usage: None,
            tool_calls,
        })
    }

    fn usage(&self) -> proto::Usage {
        let (prompt, cached) = self.prompts.values().fold((0, 0), |(p, c), &(pp, cc)| (p + pp, c + cc));
        proto::Usage { prompt_tokens: prompt as u64, completion_tokens: self.completion_tokens as u64, cached_tokens: cached as u64 }
    }
}

#[tonic::async_trait]
impl Generation for GenerationService {
    async fn generate(&self, request: Request<proto::GenerateRequest>) -> Result<Response<proto::GenerateResponse>, Status> {
        let principal = self.authenticate(&request, "/weft.v1.Generation/Generate").await?;
        let metadata = metadata(&request);
        let (running, logprobs, tools) = self.start(request.into_inner(), metadata, principal).await.map_err(to_status)?;
        // gRPC deadlines travel in `grpc-timeout`, which tonic enforces by
        // dropping the call (and so cancelling the generation).
        let done = generate::collect_all(running, None).await.map_err(to_status)?;
        let usage = generate::usage(done.iter().map(|(c, all)| (c.prompt_index, all)));
        let choices = done
            .into_iter()
            .map(|(c, all)| {
                let (text, calls) = match &tools {
                    Some(tools) => tools.parse_answer(&all.text)?,
                    None => (all.text, Vec::new()),
                };
                let tool_calls: Vec<proto::ToolCall> = calls
                    .into_iter()
                    .enumerate()
                    .map(|(i, call)| proto::ToolCall { index: i as u32, id: call.id, name: call.name, arguments: call.arguments })
                    .collect();
                Ok(proto::Choice {
                    index: c.index as u32,
                    logprobs: if logprobs { self.logprobs(&all.tokens, &all.logprobs, &all.top_logprobs) } else { Vec::new() },
                    text,
                    tokens: all.tokens,
                    finish_reason: finish_reason(all.finish, !tool_calls.is_empty()),
                    tool_calls,
                })
            })
            .collect::<Result<_, ApiError>>()
            .map_err(to_status)?;
        Ok(Response::new(proto::GenerateResponse {
            id: generate::response_id("gen-"),
            model: self.state.model.name.clone(),
            choices,
            usage: Some(proto::Usage {
                prompt_tokens: usage.prompt_tokens as u64,
                completion_tokens: usage.completion_tokens as u64,
                cached_tokens: usage.prompt_tokens_details.cached_tokens as u64,
            }),
        }))
    }

    type GenerateStreamStream = ChunkStream;

    async fn generate_stream(&self, request: Request<proto::GenerateRequest>) -> Result<Response<ChunkStream>, Status> {
        let principal = self.authenticate(&request, "/weft.v1.Generation/GenerateStream").await?;
        let metadata = metadata(&request);
        let (running, logprobs, tools) = self.start(request.into_inner(), metadata, principal).await.map_err(to_status)?;
        let parsers = tools.as_ref().map(|t| t.streams(running.len())).transpose().map_err(to_status)?;
        let state = StreamState {
            merged: generate::merge(running).boxed(),
            service: GenerationService::new(self.state.clone()),
            logprobs,
            parsers,
            prompts: BTreeMap::new(),
            completion_tokens: 0,
            done: false,
        };
        // Dropping this stream (the client cancelled) drops the running
        // choices, which cancels them in the engine.
        let chunks = stream::unfold(state, |mut s| async move {
            if s.done {
                return None;
            }
            let item = match s.merged.next().await {
                Some(Tagged { index, prompt_index, event: Ok(out) }) => s.chunk(index, prompt_index, out).map_err(|e| {
                    // Dropping the merged stream cancels the other choices.
                    s.merged = stream::empty().boxed();
                    s.done = true;
                    to_status(e)
                }),
                Some(Tagged { event: Err(e), .. }) => {
                    s.done = true;
                    Err(to_status(e))
                }
                None => {
                    s.done = true;
                    Ok(proto::GenerateChunk { usage: Some(s.usage()), ..Default::default() })
                }
            };
            Some((item, s))
        });
        Ok(Response::new(chunks.boxed()))
    }

    async fn tokenize(&self, request: Request<proto::TokenizeRequest>) -> Result<Response<proto::TokenizeResponse>, Status> {
        let principal = self.authenticate(&request, "/weft.v1.Generation/Tokenize").await?;
        let req = request.into_inner();
        let state = &self.state;
        state.check_model((!req.model.is_empty()).then_some(req.model.as_str()), principal.as_ref()).map_err(to_status)?;
        let tokenizer = state.tokenizer.clone();
        let tokens = match req.input {
            Some(proto::tokenize_request::Input::Prompt(text)) => {
                state.blocking(move || prepare::encode_prompt(&tokenizer, &text)).await.map_err(to_status)?.map_err(to_status)?
            }
            Some(proto::tokenize_request::Input::Chat(m)) => {
                let parser = self.state.select_tool_parser(None, None, principal.as_ref()).map_err(to_status)?;
                let messages = validate::chat_messages(&messages_in(m), parser.as_ref()).map_err(to_status)?;
                let template = state
                    .template
                    .clone()
                    .ok_or_else(|| to_status(ApiError::invalid("chat", "this model has no chat template")))?;
                state
                    .blocking(move || template.encode(&tokenizer, &messages, true))
                    .await
                    .map_err(to_status)?
                    .map_err(|e| to_status(ApiError::invalid("chat", e.to_string())))?
            }
            None => return Err(to_status(ApiError::invalid("input", "set one of `prompt` or `chat`"))),
        };
        Ok(Response::new(proto::TokenizeResponse { tokens, max_model_len: state.model.context as u64 }))
    }

    async fn list_models(&self, request: Request<proto::ListModelsRequest>) -> Result<Response<proto::ListModelsResponse>, Status> {
        self.authenticate(&request, "/weft.v1.Generation/ListModels").await?;
        let card = |id: &str| proto::Model { id: id.to_string(), max_model_len: self.state.model.context as u64 };
        Ok(Response::new(proto::ListModelsResponse { models: vec![card(&self.state.model.name), card("default")] }))
    }
}
