//! The OpenAI wire format: request bodies as clients send them and the
//! response bodies and stream chunks we send back.
//!
//! Request types are deliberately loose (numbers as `i64`/`f64`, unknown
//! fields ignored) so that a wrong value reaches [`crate::validate`] and gets
//! an error naming the field and the limit, instead of a generic parse
//! failure. Nothing here is trusted; nothing here is checked.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// Sampling fields shared by `/v1/chat/completions` and `/v1/completions`
/// (flattened into both request types; see [`crate::extract::generation_view`]).
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct SamplingFields {
    /// The served model's id, or `default`.
    #[schema(example = "default")]
    pub model: Option<String>,
    /// Choices to generate.
    #[schema(minimum = 1, maximum = 16)]
    pub n: Option<i64>,
    /// Output tokens per choice; prompt + this must fit the context.
    #[schema(minimum = 1)]
    pub max_tokens: Option<i64>,
    #[schema(minimum = 0, maximum = 2)]
    pub temperature: Option<f64>,
    #[schema(exclusive_minimum = 0, maximum = 1)]
    pub top_p: Option<f64>,
    /// 0 or -1 disable.
    #[schema(minimum = -1)]
    pub top_k: Option<i64>,
    #[schema(minimum = 0, maximum = 1)]
    pub min_p: Option<f64>,
    #[schema(minimum = -2, maximum = 2)]
    pub presence_penalty: Option<f64>,
    #[schema(minimum = -2, maximum = 2)]
    pub frequency_penalty: Option<f64>,
    #[schema(exclusive_minimum = 0, maximum = 10)]
    pub repetition_penalty: Option<f64>,
    /// Token id (as a string) to a bias in [-100, 100]; at most 300 entries.
    pub logit_bias: Option<std::collections::BTreeMap<String, f64>>,
    pub seed: Option<i64>,
    /// At most 4 strings of 1 to 256 bytes.
    pub stop: Option<Stop>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    /// Exclude end-of-sequence tokens from sampling.
    pub ignore_eos: Option<bool>,
    pub user: Option<String>,
    /// `{"type": "text"}` (the default), `{"type": "json_object"}` (any JSON
    /// object), or `{"type": "json_schema", "json_schema": {"name": ...,
    /// "schema": {...}, "strict": ...}}` (JSON valid against the schema).
    #[schema(value_type = Option<Object>)]
    pub response_format: Option<Value>,
    /// Chat only: at most 128 `{"type": "function", "function": {"name",
    /// "description", "parameters"}}` the model may call.
    #[schema(value_type = Option<Vec<Object>>)]
    pub tools: Option<Value>,
    /// Chat only: `none`, `auto` (the default with tools), `required`, or
    /// `{"type": "function", "function": {"name": ...}}`.
    #[schema(value_type = Option<Object>)]
    pub tool_choice: Option<Value>,
    /// Chat only: allow several calls in one answer (default true).
    pub parallel_tool_calls: Option<bool>,
    #[schema(value_type = Option<Object>)]
    pub functions: Option<Value>,
    /// Weft's extensions.
    pub weft: Option<WeftExtension>,
    #[schema(value_type = Option<Object>)]
    pub function_call: Option<Value>,
}

/// Weft's request extensions (the `weft` field).
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct WeftExtension {
    /// The deployed sampler to choose tokens with (`default`, `native`, or a
    /// plugin deployed through the admin API). Also settable with the
    /// `x-weft-sampler` header; the field wins.
    pub sampler: Option<String>,
    /// Give up (504 `deadline_exceeded`, the generation cancelled) if the
    /// request has not finished this many milliseconds after it arrived,
    /// 1 to 3,600,000. Also settable with the `x-weft-deadline-ms` header;
    /// the field wins.
    #[schema(minimum = 1, maximum = 3_600_000)]
    pub deadline_ms: Option<i64>,
    /// Constrain the output to match this regular expression (guided
    /// generation; not together with `response_format` or `weft.lark`).
    pub regex: Option<String>,
    /// Constrain the output to this Lark-style context-free grammar
    /// (llguidance's dialect; not together with `response_format` or
    /// `weft.regex`).
    pub lark: Option<String>,
    /// A deployed guide plugin to compile this request's constraint with
    /// (default: the builtin guide; also the `x-weft-guide` header).
    pub guide: Option<String>,
    /// The tool-parser plugin that writes and reads this request's tool
    /// calls: a builtin format (`hermes`, `llama3_json`, `mistral`) or a
    /// deployed parser (default: the format of the model's chat template;
    /// also the `x-weft-tool-parser` header).
    pub tool_parser: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct StreamOptions {
    pub include_usage: Option<bool>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct ChatCompletionRequest {
    pub messages: Vec<ChatMessageIn>,
    #[schema(minimum = 1)]
    pub max_completion_tokens: Option<i64>,
    pub logprobs: Option<bool>,
    #[schema(minimum = 0, maximum = 20)]
    pub top_logprobs: Option<i64>,
    #[serde(flatten)]
    pub sampling: SamplingFields,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct ChatMessageIn {
    pub role: String,
    pub content: Option<MessageContent>,
    pub name: Option<String>,
    /// An assistant message's earlier calls (`[{"id", "type": "function",
    /// "function": {"name", "arguments"}}]`).
    #[schema(value_type = Option<Vec<Object>>)]
    pub tool_calls: Option<Value>,
    /// A `tool` message's answer to this call.
    pub tool_call_id: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct CompletionRequest {
    pub prompt: Prompt,
    pub echo: Option<bool>,
    /// Legacy completions: the number of alternatives per token (0–20).
    #[schema(minimum = 0, maximum = 20)]
    pub logprobs: Option<i64>,
    pub suffix: Option<String>,
    pub best_of: Option<i64>,
    #[serde(flatten)]
    pub sampling: SamplingFields,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<i64>),
    TokenLists(Vec<Vec<i64>>),
}

// ---- responses ----

#[derive(Debug, Serialize, Clone, Copy, Default, ToSchema)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    pub prompt_tokens_details: PromptTokensDetails,
}

#[derive(Debug, Serialize, Clone, Copy, Default, ToSchema)]
pub struct PromptTokensDetails {
    pub cached_tokens: usize,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ChatCompletion {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChoice>,
    pub usage: Usage,
    pub system_fingerprint: &'static str,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ChatChoice {
    pub index: usize,
    pub message: AssistantMessage,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<&'static str>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AssistantMessage {
    pub role: &'static str,
    /// The text; `null` when the answer is only tool calls.
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallOut>>,
}

/// One tool call of an answer.
#[derive(Debug, Serialize, Clone, ToSchema)]
pub struct ToolCallOut {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: FunctionCallOut,
}

#[derive(Debug, Serialize, Clone, ToSchema)]
pub struct FunctionCallOut {
    pub name: String,
    /// The arguments object as JSON text.
    pub arguments: String,
}

/// A tool call in a stream, as OpenAI streams them: the call's first delta
/// has its `id`, `type` and `function.name`; later ones carry only more
/// `function.arguments` text for the same `index`.
#[derive(Debug, Serialize, Clone, ToSchema)]
pub struct ToolCallDelta {
    pub index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    pub function: FunctionCallDelta,
}

#[derive(Debug, Serialize, Clone, ToSchema)]
pub struct FunctionCallDelta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// More of the arguments object's JSON text.
    pub arguments: String,
}

#[derive(Debug, Serialize, Default, Clone, ToSchema)]
pub struct ChatLogprobs {
    pub content: Vec<TokenLogprob>,
}

#[derive(Debug, Serialize, Clone, ToSchema)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<TopLogprob>,
}

#[derive(Debug, Serialize, Clone, ToSchema)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ChatCompletionChunk {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChunkChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    pub system_fingerprint: &'static str,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ChatChunkChoice {
    pub index: usize,
    pub delta: ChatDelta,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<&'static str>,
}

#[derive(Debug, Serialize, Default, ToSchema)]
pub struct ChatDelta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallDelta>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Completion {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<CompletionChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    pub system_fingerprint: &'static str,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CompletionChoice {
    pub index: usize,
    pub text: String,
    pub logprobs: Option<CompletionLogprobs>,
    pub finish_reason: Option<&'static str>,
}

/// Legacy completions logprobs: parallel arrays, one entry per token.
#[derive(Debug, Serialize, Default, Clone, ToSchema)]
pub struct CompletionLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<Option<f32>>,
    pub top_logprobs: Vec<Option<std::collections::BTreeMap<String, f32>>>,
    pub text_offset: Vec<usize>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ModelList {
    pub object: &'static str,
    pub data: Vec<ModelCard>,
}

#[derive(Debug, Serialize, Clone, ToSchema)]
pub struct ModelCard {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'static str,
    /// Context length in tokens (a common extension: vLLM's `max_model_len`).
    pub max_model_len: usize,
}
