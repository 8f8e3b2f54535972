//! Validation: loose request bodies in, `Valid*` values out.
//!
//! Every bound is checked here, before anything proportional to a value is
//! allocated, and every error names the field, the limit and what was given.
//! Past this module the rest of the server handles only values that are in
//! range; the engine receives nothing else.

use serde_json::Value;
use weft_types::SamplingParams;

use crate::error::ApiError;
pub use crate::guides::Constraint;
use crate::openai::{ChatMessageIn, MessageContent, Prompt, SamplingFields, Stop};

/// OpenAI's limits, which clients are written against.
pub const MAX_STOP_STRINGS: usize = 4;
pub const MAX_STOP_BYTES: usize = 256;
pub const MAX_TOP_LOGPROBS: i64 = 20;
pub const MAX_LOGIT_BIAS: usize = 300;
pub const MAX_MESSAGES: usize = 2048;

/// What the sampling fields of a request mean once checked.
#[derive(Clone, Debug)]
pub struct ValidSampling {
    /// Parameters for the first choice; `max_tokens` is settled against the
    /// prompt later ([`settle_max_tokens`]) and each further choice gets its
    /// own seed ([`choice_seed`]).
    pub params: SamplingParams,
    pub max_tokens: Option<u32>,
    pub n: usize,
    pub stream: bool,
    pub include_usage: bool,
    /// Milliseconds the request may take (`weft.deadline_ms`), if bounded.
    pub deadline_ms: Option<u64>,
    /// The engine sampler the request's choices use (resolved from the
    /// plugin name by the caller; the default sampler otherwise).
    pub sampler: weft_engine::SamplerId,
    /// The constraint every choice is guided by, if any.
    pub constraint: Option<Constraint>,
    /// The deployed guide that compiles it (chosen by the caller); `None`:
    /// the server's builtin guide.
    pub guide: Option<weft_plugin_runtime::WasmGuide>,
    /// The caller's tenant (set by the caller after authentication; the
    /// prefix cache is shared only within a tenant).
    pub tenant: String,
}

/// What the request needs to know about the model to check a request.
#[derive(Clone, Copy, Debug)]
pub struct ModelLimits {
    pub vocab: usize,
    pub context: usize,
    /// Most output tokens one choice may ask for (≤ `context`).
    pub max_output: usize,
    pub max_choices: usize,
}

fn range_f(param: &str, value: Option<f64>, default: f64, lo: f64, hi: f64, lo_open: bool) -> Result<f32, ApiError> {
    let Some(v) = value else { return Ok(default as f32) };
    // Checked as the f32 the engine will use: 5e-324 is above 0 as an f64
    // but is 0 once narrowed.
    let narrowed = v as f32 as f64;
    let above_lo = if lo_open { narrowed > lo } else { narrowed >= lo };
    if !(v.is_finite() && above_lo && v <= hi) {
        let open = if lo_open { "(" } else { "[" };
        return Err(ApiError::invalid(param, format!("`{param}` must be in {open}{lo}, {hi}]; given {v}")));
    }
    Ok(v as f32)
}

fn range_i(param: &str, value: i64, lo: i64, hi: i64) -> Result<i64, ApiError> {
    if value < lo || value > hi {
        return Err(ApiError::invalid(param, format!("`{param}` must be in [{lo}, {hi}]; given {value}")));
    }
    Ok(value)
}

/// Check the sampling fields. `max_tokens` is the effective field
/// (`max_completion_tokens` wins over `max_tokens` for chat);
/// `top_logprobs` is the number of alternatives asked for, if any.
pub fn sampling(
    f: &SamplingFields,
    max_tokens: (&str, Option<i64>),
    top_logprobs: u32,
    limits: ModelLimits,
) -> Result<ValidSampling, ApiError> {
    refuse_unsupported(f)?;
    let n = range_i("n", f.n.unwrap_or(1), 1, limits.max_choices as i64)? as usize;
    let max_tokens = match max_tokens.1 {
        None => None,
        Some(v) => Some(range_i(max_tokens.0, v, 1, limits.max_output as i64)? as u32),
    };
    let top_k = match f.top_k {
        None | Some(-1) | Some(0) => 0,
        Some(k) => range_i("top_k", k, 1, limits.vocab as i64)? as u32,
    };
    let stop = match &f.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s.clone()],
        Some(Stop::Many(v)) => v.clone(),
    };
    if stop.len() > MAX_STOP_STRINGS {
        return Err(ApiError::invalid("stop", format!("at most {MAX_STOP_STRINGS} stop strings are allowed; given {}", stop.len())));
    }
    if let Some(s) = stop.iter().find(|s| s.is_empty() || s.len() > MAX_STOP_BYTES) {
        return Err(ApiError::invalid(
            "stop",
            format!("each stop string must be 1 to {MAX_STOP_BYTES} bytes long; given one of {} bytes", s.len()),
        ));
    }
    let logit_bias = match &f.logit_bias {
        None => Vec::new(),
        Some(map) => {
            if map.len() > MAX_LOGIT_BIAS {
                return Err(ApiError::invalid(
                    "logit_bias",
                    format!("`logit_bias` may name at most {MAX_LOGIT_BIAS} tokens; given {}", map.len()),
                ));
            }
            let mut bias = Vec::with_capacity(map.len());
            for (key, &value) in map {
                let id: u32 = key
                    .parse()
                    .ok()
                    .filter(|&id: &u32| (id as usize) < limits.vocab)
                    .ok_or_else(|| {
                        ApiError::invalid(
                            "logit_bias",
                            format!("`logit_bias` keys must be token ids below the vocabulary size {}; given {key:?}", limits.vocab),
                        )
                    })?;
                if !(-100.0..=100.0).contains(&value) {
                    return Err(ApiError::invalid(
                        "logit_bias",
                        format!("`logit_bias` values must be in [-100, 100]; given {value} for token {id}"),
                    ));
                }
                bias.push((id, value as f32));
            }
            bias
        }
    };
    let params = SamplingParams {
        temperature: range_f("temperature", f.temperature, 1.0, 0.0, 2.0, false)?,
        top_k,
        top_p: range_f("top_p", f.top_p, 1.0, 0.0, 1.0, true)?,
        min_p: range_f("min_p", f.min_p, 0.0, 0.0, 1.0, false)?,
        presence_penalty: range_f("presence_penalty", f.presence_penalty, 0.0, -2.0, 2.0, false)?,
        frequency_penalty: range_f("frequency_penalty", f.frequency_penalty, 0.0, -2.0, 2.0, false)?,
        repetition_penalty: range_f("repetition_penalty", f.repetition_penalty, 1.0, 0.0, 10.0, true)?,
        logit_bias,
        top_logprobs,
        // Set by the route, which knows whether logprobs are reported.
        logprobs: false,
        seed: f.seed.map_or_else(rand::random, |s| s as u64),
        max_tokens: 0,
        stop,
        ignore_eos: f.ignore_eos.unwrap_or(false),
    };
    let stream = f.stream.unwrap_or(false);
    let include_usage = f.stream_options.as_ref().and_then(|o| o.include_usage).unwrap_or(false);
    if f.stream_options.is_some() && !stream {
        return Err(ApiError::invalid("stream_options", "`stream_options` is only allowed with `stream: true`"));
    }
    let deadline_ms = match f.weft.as_ref().and_then(|w| w.deadline_ms) {
        None => None,
        Some(ms) => Some(range_i("weft.deadline_ms", ms, 1, 3_600_000)? as u64),
    };
    let constraint = constraint(f)?;
    Ok(ValidSampling {
        params,
        max_tokens,
        n,
        stream,
        include_usage,
        deadline_ms,
        sampler: weft_engine::DEFAULT_SAMPLER,
        constraint,
        guide: None,
        tenant: String::new(),
    })
}

/// The output constraint a request asks for: `response_format`, or Weft's
/// `weft.regex` / `weft.lark`, at most one of them.
fn constraint(f: &SamplingFields) -> Result<Option<Constraint>, ApiError> {
    let mut found = Vec::new();
    if let Some(format) = &f.response_format {
        let kind = format.get("type").and_then(Value::as_str).ok_or_else(|| {
            ApiError::invalid("response_format", "`response_format` must be an object with a string `type`")
        })?;
        match kind {
            "text" => {}
            "json_object" => found.push(Constraint { kind: "json-object", source: String::new(), param: "response_format" }),
            "json_schema" => {
                let spec = format.get("json_schema").and_then(Value::as_object).ok_or_else(|| {
                    ApiError::invalid("response_format.json_schema", "`json_schema` must be an object with a `schema`")
                })?;
                if let Some(name) = spec.get("name") {
                    let ok = name.as_str().is_some_and(|n| {
                        (1..=64).contains(&n.len()) && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                    });
                    if !ok {
                        return Err(ApiError::invalid(
                            "response_format.json_schema.name",
                            "`name` must be 1 to 64 characters of a-z, A-Z, 0-9, _ and -",
                        ));
                    }
                }
                let schema = match spec.get("schema") {
                    None => Value::Object(Default::default()),
                    Some(s @ (Value::Object(_) | Value::Bool(_))) => s.clone(),
                    Some(_) => {
                        return Err(ApiError::invalid(
                            "response_format.json_schema.schema",
                            "`schema` must be a JSON Schema (an object or a boolean)",
                        ));
                    }
                };
                found.push(Constraint {
                    kind: "json-schema",
                    source: schema.to_string(),
                    param: "response_format.json_schema.schema",
                });
            }
            other => {
                return Err(ApiError::invalid(
                    "response_format.type",
                    format!("`response_format.type` must be `text`, `json_object` or `json_schema`; given {other:?}"),
                ));
            }
        }
    }
    if let Some(weft) = &f.weft {
        if let Some(regex) = &weft.regex {
            found.push(Constraint { kind: "regex", source: regex.clone(), param: "weft.regex" });
        }
        if let Some(lark) = &weft.lark {
            found.push(Constraint { kind: "lark", source: lark.clone(), param: "weft.lark" });
        }
    }
    match found.len() {
        0 | 1 => Ok(found.pop()),
        _ => Err(ApiError::invalid(
            found[1].param,
            "give at most one output constraint (`response_format`, `weft.regex` or `weft.lark`)",
        )),
    }
}

fn refuse_unsupported(f: &SamplingFields) -> Result<(), ApiError> {
    const WHY: &str = "the legacy function-calling fields are not supported; use `tools` and `tool_choice`";
    if f.functions.is_some() || f.function_call.is_some() {
        return Err(ApiError::Unsupported { param: "functions".into(), why: WHY });
    }
    Ok(())
}

/// The `max_tokens` a request runs with: as given, or all the context the
/// prompt leaves (`default = None`) or `default` tokens, never more than
/// `cap` (the server's output limit) unless given, and never more than
/// fits.
pub fn settle_max_tokens(
    given: Option<u32>,
    default: Option<u32>,
    prompt_tokens: usize,
    context: usize,
    cap: usize,
) -> Result<u32, ApiError> {
    let room = context.saturating_sub(prompt_tokens);
    let too_long = |max_tokens: usize| {
        ApiError::ContextLengthExceeded(format!(
            "prompt tokens + max_tokens must be ≤ {context}, the model's context length; given {prompt_tokens} prompt tokens and {max_tokens} max_tokens"
        ))
    };
    match given {
        Some(m) if m as usize > room => Err(too_long(m as usize)),
        Some(m) => Ok(m),
        None if room == 0 => Err(too_long(1)),
        None => Ok(default.map_or(room, |d| d as usize).min(room).min(cap) as u32),
    }
}

/// The seed of choice `index`: the request's seed for the first, and an
/// independent stream for each further one.
pub fn choice_seed(seed: u64, index: usize) -> u64 {
    if index == 0 { seed } else { seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17) }
}

/// A chat message as the template sees it.
/// A conversation, checked; earlier tool calls and tool results are
/// written the way `parser` says the model reads them.
pub fn chat_messages(
    messages: &[ChatMessageIn],
    parser: Option<&weft_plugin_runtime::WasmToolParser>,
) -> Result<Vec<weft_engine::chat_template::ChatMessage>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid("messages", "`messages` must contain at least one message"));
    }
    if messages.len() > MAX_MESSAGES {
        return Err(ApiError::invalid("messages", format!("at most {MAX_MESSAGES} messages are allowed; given {}", messages.len())));
    }
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let param = format!("messages[{i}]");
            let role = match m.role.as_str() {
                "system" | "developer" => "system",
                "user" => "user",
                "assistant" => "assistant",
                // A tool's answer reaches the model as a user turn, written
                // the way the tool parser says (see `tools.rs`).
                "tool" => "tool",
                "function" => {
                    return Err(ApiError::Unsupported {
                        param: format!("{param}.role"),
                        why: "the legacy `function` role is not supported; use `tool`",
                    });
                }
                other => {
                    return Err(ApiError::invalid(
                        format!("{param}.role"),
                        format!("unknown role {other:?}; use system, developer, user, assistant or tool"),
                    ));
                }
            };
            let calls = match (&m.tool_calls, role) {
                (None, _) => String::new(),
                (Some(calls), "assistant") => {
                    let param = format!("{param}.tool_calls");
                    crate::tools::render_history_calls(calls, &param, crate::tools::needed(parser)?)?
                }
                (Some(_), _) => {
                    return Err(ApiError::invalid(format!("{param}.tool_calls"), "only assistant messages carry `tool_calls`"));
                }
            };
            let content = match &m.content {
                Some(MessageContent::Text(t)) => t.clone(),
                Some(MessageContent::Parts(parts)) => {
                    let mut text = String::new();
                    for (j, part) in parts.iter().enumerate() {
                        match (part.kind.as_str(), &part.text) {
                            ("text", Some(t)) => text.push_str(t),
                            ("text", None) => {
                                return Err(ApiError::invalid(format!("{param}.content[{j}].text"), "a text part needs `text`"));
                            }
                            (kind, _) => {
                                return Err(ApiError::Unsupported {
                                    param: format!("{param}.content[{j}]"),
                                    why: if kind == "image_url" || kind == "input_audio" {
                                        "this model reads text only"
                                    } else {
                                        "only `text` content parts are understood"
                                    },
                                });
                            }
                        }
                    }
                    text
                }
                None if role == "assistant" => String::new(),
                None => return Err(ApiError::invalid(format!("{param}.content"), format!("a {role} message needs `content`"))),
            };
            if role == "tool" {
                let result = crate::tools::render_tool_result(&content, &format!("{param}.content"), crate::tools::needed(parser)?)?;
                return Ok(weft_engine::chat_template::ChatMessage::new("user", &result));
            }
            let text = match (content.is_empty(), calls.is_empty()) {
                (_, true) => content,
                (true, false) => calls,
                (false, false) => format!("{content}\n{calls}"),
            };
            Ok(weft_engine::chat_template::ChatMessage::new(role, &text))
        })
        .collect()
}

/// A completions prompt, checked: either texts to tokenize or token ids.
#[derive(Debug)]
pub enum ValidPrompt {
    Text(String),
    Tokens(Vec<u32>),
}

pub fn prompts(prompt: &Prompt, n: usize, limits: ModelLimits) -> Result<Vec<ValidPrompt>, ApiError> {
    let tokens = |ids: &[i64]| -> Result<ValidPrompt, ApiError> {
        ids.iter()
            .map(|&t| {
                u32::try_from(t).ok().filter(|&t| (t as usize) < limits.vocab).ok_or_else(|| {
                    ApiError::invalid("prompt", format!("token ids must be in [0, {}); given {t}", limits.vocab))
                })
            })
            .collect::<Result<Vec<u32>, _>>()
            .map(ValidPrompt::Tokens)
    };
    let list = match prompt {
        Prompt::Text(t) => vec![ValidPrompt::Text(t.clone())],
        Prompt::Texts(ts) => ts.iter().cloned().map(ValidPrompt::Text).collect(),
        Prompt::Tokens(ids) => vec![tokens(ids)?],
        Prompt::TokenLists(lists) => lists.iter().map(|l| tokens(l)).collect::<Result<_, _>>()?,
    };
    if list.is_empty() {
        return Err(ApiError::invalid("prompt", "`prompt` must not be an empty list"));
    }
    if list.len() * n > limits.max_choices {
        return Err(ApiError::invalid(
            "n",
            format!("prompts × n must be ≤ {}; given {} prompts and n = {n}", limits.max_choices, list.len()),
        ));
    }
    Ok(list)
}
