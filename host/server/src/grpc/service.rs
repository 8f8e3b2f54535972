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

    /// Validate, prepare and admit a request; returns its running choices
    /// and whether logprobs were asked for.
    async fn start(
        &self,
        req: proto::GenerateRequest,
        sampler: Option<String>,
        principal: Option<Principal>,
    ) -> Result<(Vec<RunningChoice>, bool), ApiError> {
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
        valid.sampler = state.select_sampler(None, sampler.as_deref(), principal.as_ref())?;
        valid.tenant = principal.map(|p| p.tenant).unwrap_or_default();
        valid.constraint = req.constraint.and_then(constraint);
        let choices = match req.input {
            Some(Input::Prompt(text)) => prepare::prompts(state, vec![ValidPrompt::Text(text)], &valid, false).await?.1,
            Some(Input::Tokens(t)) => {
                let ids = Prompt::Tokens(t.ids.iter().map(|&i| i64::from(i)).collect());
                prepare::prompts(state, validate::prompts(&ids, valid.n, state.limits())?, &valid, false).await?.1
            }
            Some(Input::Chat(m)) => {
                prepare::chat(state, validate::chat_messages(&messages_in(m), state.select_tool_parser(None, None, None)?.as_ref())?, &valid).await?
            }
            None => return Err(ApiError::invalid("input", "set one of `prompt`, `chat` or `tokens`")),
        };
        Ok((generate::start(state, choices).await?, top.is_some()))
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

/// The sampler a call names in its `x-weft-sampler` metadata.
fn sampler_metadata<T>(request: &Request<T>) -> Option<String> {
    request.metadata().get("x-weft-sampler").and_then(|v| v.to_str().ok()).map(str::to_string)
}

/// Proto messages as the HTTP body's messages, for the shared validation.
fn messages_in(m: proto::Messages) -> Vec<ChatMessageIn> {
    m.messages
        .into_iter()
        .map(|m| ChatMessageIn { role: m.role, content: Some(MessageContent::Text(m.content)), name: None, tool_calls: None, tool_call_id: None })
        .collect()
}

fn finish_reason(reason: Option<StopReason>) -> i32 {
    (match reason {
        None | Some(StopReason::Cancelled) | Some(StopReason::Error) => proto::FinishReason::Unspecified,
        Some(StopReason::Stop) => proto::FinishReason::Stop,
        Some(StopReason::Length) => proto::FinishReason::Length,
    }) as i32
}

type ChunkStream = BoxStream<'static, Result<proto::GenerateChunk, Status>>;

struct StreamState {
    merged: BoxStream<'static, Tagged>,
    service: GenerationService,
    logprobs: bool,
    prompts: BTreeMap<usize, (usize, usize)>,
    completion_tokens: usize,
    done: bool,
}

impl StreamState {
    fn chunk(&mut self, index: usize, prompt_index: usize, out: Output) -> proto::GenerateChunk {
        self.prompts.insert(prompt_index, (out.prompt_tokens, out.cached_tokens));
        self.completion_tokens += out.tokens.len();
        let logprobs = if self.logprobs { self.service.logprobs(&out.tokens, &out.logprobs, &out.top_logprobs) } else { Vec::new() };
        proto::GenerateChunk {
            index: index as u32,
            text: out.text,
            tokens: out.tokens,
            finish_reason: finish_reason(out.finished),
            logprobs,
            usage: None,
        }
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
        let sampler = sampler_metadata(&request);
        let (running, logprobs) = self.start(request.into_inner(), sampler, principal).await.map_err(to_status)?;
        // gRPC deadlines travel in `grpc-timeout`, which tonic enforces by
        // dropping the call (and so cancelling the generation).
        let done = generate::collect_all(running, None).await.map_err(to_status)?;
        let usage = generate::usage(done.iter().map(|(c, all)| (c.prompt_index, all)));
        let choices = done
            .into_iter()
            .map(|(c, all)| proto::Choice {
                index: c.index as u32,
                logprobs: if logprobs { self.logprobs(&all.tokens, &all.logprobs, &all.top_logprobs) } else { Vec::new() },
                text: all.text,
                tokens: all.tokens,
                finish_reason: finish_reason(all.finish),
            })
            .collect();
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
        let sampler = sampler_metadata(&request);
        let (running, logprobs) = self.start(request.into_inner(), sampler, principal).await.map_err(to_status)?;
        let state = StreamState {
            merged: generate::merge(running).boxed(),
            service: GenerationService::new(self.state.clone()),
            logprobs,
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
                Some(Tagged { index, prompt_index, event: Ok(out) }) => Ok(s.chunk(index, prompt_index, out)),
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
                let messages = validate::chat_messages(&messages_in(m), self.state.select_tool_parser(None, None, None).map_err(to_status)?.as_ref()).map_err(to_status)?;
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
