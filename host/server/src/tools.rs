//! OpenAI tool calling for chat completions. A [`ToolFormat`] is how a
//! model family writes calls (Hermes `<tool_call>` blocks, Llama 3 JSON,
//! Mistral `[TOOL_CALLS]`): tools are declared to the model in a system
//! message in that format, and [`CallParser`] turns the model's text (whole,
//! or delta by delta while streaming) back into OpenAI tool calls.
//!
//! `tool_choice: "required"` or a named function also constrains generation
//! (a Lark grammar over the declared tools' JSON schemas, through the guide
//! plugin), so even a small model always produces a well-formed call of a
//! declared tool with arguments valid against its schema.
//!
//! `tests/data/tool-parsers/corpus.json` is the parsers' conformance kit:
//! model outputs with the events they must give, replayed whole and split at
//! every boundary (`cargo test -p weft-server --lib tool_parser_conformance`).

use serde_json::{Value, json};

use crate::error::ApiError;
use crate::guides::Constraint;

/// Most tools one request may declare (OpenAI's limit).
pub const MAX_TOOLS: usize = 128;

const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";
const MISTRAL: &str = "[TOOL_CALLS]";
const PYTHON_TAG: &str = "<|python_tag|>";

/// How a model family writes tool calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToolFormat {
    /// `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>` blocks,
    /// anywhere in the text (Hermes, Qwen, and the default).
    Hermes,
    /// The whole answer is one `{"name": ..., "parameters": {...}}` object,
    /// optionally after `<|python_tag|>` (Llama 3.x).
    Llama3Json,
    /// `[TOOL_CALLS]` then a JSON list of `{"name", "arguments"}` (Mistral).
    Mistral,
}

impl ToolFormat {
    /// The format a chat template was written for.
    pub fn for_template(source: Option<&str>) -> Self {
        match source {
            Some(s) if s.contains(MISTRAL) => Self::Mistral,
            Some(s) if s.contains(PYTHON_TAG) || s.contains("ipython") => Self::Llama3Json,
            _ => Self::Hermes,
        }
    }

    /// A format by its request name (`weft.tool_format`).
    pub fn named(name: &str) -> Option<Self> {
        match name {
            "hermes" => Some(Self::Hermes),
            "llama3_json" => Some(Self::Llama3Json),
            "mistral" => Some(Self::Mistral),
            _ => None,
        }
    }

    /// What a call looks like, for the system prompt.
    fn example(self) -> &'static str {
        match self {
            Self::Hermes => "<tool_call>\n{\"name\": \"function-name\", \"arguments\": {...}}\n</tool_call>",
            Self::Llama3Json => "{\"name\": \"function-name\", \"parameters\": {...}}",
            Self::Mistral => "[TOOL_CALLS] [{\"name\": \"function-name\", \"arguments\": {...}}]",
        }
    }

    /// The key holding a call's arguments.
    fn arguments_key(self) -> &'static str {
        if self == Self::Llama3Json { "parameters" } else { "arguments" }
    }

    /// Calls as this format writes them (for the conversation history).
    fn render(self, calls: &[(String, Value)]) -> String {
        let object = |(name, arguments): &(String, Value)| json!({"name": name, self.arguments_key(): arguments});
        match self {
            Self::Hermes => calls.iter().map(|c| format!("{OPEN}\n{}\n{CLOSE}", object(c))).collect::<Vec<_>>().join("\n"),
            Self::Llama3Json => calls.iter().map(|c| object(c).to_string()).collect::<Vec<_>>().join("\n"),
            Self::Mistral => format!("{MISTRAL} {}", Value::Array(calls.iter().map(object).collect())),
        }
    }
}

/// A declared function.
#[derive(Clone, Debug, PartialEq)]
pub struct Tool {
    pub name: String,
    pub description: String,
    /// JSON Schema of the arguments object.
    pub parameters: Value,
}

/// Whether and how the model calls tools.
#[derive(Clone, Debug, PartialEq)]
pub enum ToolChoice {
    /// Tools are not offered.
    None,
    /// The model may answer text or calls.
    Auto,
    /// The model must call at least one tool.
    Required,
    /// The model must call this tool.
    Named(String),
}

/// A request's checked `tools`, `tool_choice` and `parallel_tool_calls`.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidTools {
    pub tools: Vec<Tool>,
    pub choice: ToolChoice,
    pub parallel: bool,
    pub format: ToolFormat,
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Check `tools` / `tool_choice` / `parallel_tool_calls`; `None` when the
/// request declares no tools and does not ask for calls. `format` is how the
/// model writes calls.
pub fn validate(
    tools: Option<&Value>,
    choice: Option<&Value>,
    parallel: Option<bool>,
    format: ToolFormat,
) -> Result<Option<ValidTools>, ApiError> {
    let list = match tools {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items.clone(),
        Some(_) => return Err(ApiError::invalid("tools", "`tools` must be a list of tools")),
    };
    if list.len() > MAX_TOOLS {
        return Err(ApiError::invalid("tools", format!("at most {MAX_TOOLS} tools are allowed; given {}", list.len())));
    }
    let mut declared: Vec<Tool> = Vec::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        let param = format!("tools[{i}]");
        if item.get("type").and_then(Value::as_str) != Some("function") {
            return Err(ApiError::invalid(format!("{param}.type"), "every tool must have `type: \"function\"`"));
        }
        let function = item
            .get("function")
            .and_then(Value::as_object)
            .ok_or_else(|| ApiError::invalid(format!("{param}.function"), "a tool needs a `function` object"))?;
        let name = function.get("name").and_then(Value::as_str).unwrap_or_default();
        if !valid_name(name) {
            return Err(ApiError::invalid(
                format!("{param}.function.name"),
                "a function `name` must be 1 to 64 characters of a-z, A-Z, 0-9, _ and -",
            ));
        }
        if declared.iter().any(|t| t.name == name) {
            return Err(ApiError::invalid(format!("{param}.function.name"), format!("the function name {name:?} is declared twice")));
        }
        let parameters = match function.get("parameters") {
            None | Some(Value::Null) => json!({"type": "object", "properties": {}}),
            Some(p @ Value::Object(_)) => p.clone(),
            Some(_) => {
                return Err(ApiError::invalid(format!("{param}.function.parameters"), "`parameters` must be a JSON Schema object"));
            }
        };
        let description = function.get("description").and_then(Value::as_str).unwrap_or_default().to_string();
        declared.push(Tool { name: name.to_string(), description, parameters });
    }
    let choice = match choice {
        None | Some(Value::Null) => {
            if declared.is_empty() {
                ToolChoice::None
            } else {
                ToolChoice::Auto
            }
        }
        Some(Value::String(s)) => match s.as_str() {
            "none" => ToolChoice::None,
            "auto" => ToolChoice::Auto,
            "required" => ToolChoice::Required,
            other => {
                return Err(ApiError::invalid(
                    "tool_choice",
                    format!("`tool_choice` must be `none`, `auto`, `required` or a function; given {other:?}"),
                ));
            }
        },
        Some(Value::Object(o)) => {
            let name = o.get("function").and_then(|f| f.get("name")).and_then(Value::as_str);
            match (o.get("type").and_then(Value::as_str), name) {
                (Some("function"), Some(name)) => ToolChoice::Named(name.to_string()),
                _ => {
                    return Err(ApiError::invalid(
                        "tool_choice",
                        "a named `tool_choice` is `{\"type\": \"function\", \"function\": {\"name\": ...}}`",
                    ));
                }
            }
        }
        Some(_) => return Err(ApiError::invalid("tool_choice", "`tool_choice` must be a string or an object")),
    };
    match &choice {
        ToolChoice::Required | ToolChoice::Named(_) if declared.is_empty() => {
            return Err(ApiError::invalid("tool_choice", "`tool_choice` asks for a call, but `tools` declares none"));
        }
        ToolChoice::Named(name) if !declared.iter().any(|t| &t.name == name) => {
            return Err(ApiError::invalid("tool_choice", format!("`tool_choice` names {name:?}, which `tools` does not declare")));
        }
        _ => {}
    }
    if declared.is_empty() && choice == ToolChoice::None {
        return Ok(None);
    }
    Ok(Some(ValidTools { tools: declared, choice, parallel: parallel.unwrap_or(true), format }))
}

impl ValidTools {
    /// Whether the model is offered the tools at all.
    pub fn offered(&self) -> bool {
        self.choice != ToolChoice::None
    }

    /// The system-prompt fragment declaring the tools and the call format.
    pub fn system_prompt(&self) -> String {
        let listed: Vec<String> = self
            .tools
            .iter()
            .map(|t| json!({"type": "function", "function": {"name": t.name, "description": t.description, "parameters": t.parameters}}).to_string())
            .collect();
        format!(
            "You can call functions. Their signatures are listed inside <tools></tools>:\n<tools>\n{}\n</tools>\n\
             To call a function, answer with its name and arguments like this:\n{}",
            listed.join("\n"),
            self.format.example()
        )
    }

    /// The constraint a `required` or named choice puts on generation: one
    /// call (or, with parallel calls, several) of the allowed tools, each
    /// with arguments valid against the tool's schema.
    pub fn constraint(&self) -> Option<Constraint> {
        let allowed: Vec<&Tool> = match &self.choice {
            ToolChoice::None | ToolChoice::Auto => return None,
            ToolChoice::Required => self.tools.iter().collect(),
            ToolChoice::Named(name) => self.tools.iter().filter(|t| &t.name == name).collect(),
        };
        let key = self.format.arguments_key();
        let calls: Vec<Value> = allowed
            .iter()
            .map(|t| {
                json!({
                    "type": "object",
                    "properties": {"name": {"const": t.name}, key: t.parameters},
                    "required": ["name", key],
                    "additionalProperties": false,
                })
            })
            .collect();
        let compact = json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "});
        let call = json!({"anyOf": calls, "x-guidance": compact});
        let source = match self.format {
            ToolFormat::Hermes => {
                let start = if self.parallel { "start: call (\"\\n\" call)*" } else { "start: call" };
                format!("{start}\ncall: \"{OPEN}\\n\" body \"\\n{CLOSE}\"\nbody: %json {call}\n")
            }
            // Llama 3 writes one call per answer.
            ToolFormat::Llama3Json => format!("start: %json {call}\n"),
            ToolFormat::Mistral => {
                let mut list = json!({"type": "array", "minItems": 1, "items": call, "x-guidance": compact});
                if !self.parallel {
                    list["maxItems"] = json!(1);
                }
                format!("start: \"{MISTRAL} \" body\nbody: %json {list}\n")
            }
        };
        Some(Constraint { kind: "lark", source, param: "tools" })
    }
}

/// Declare `tools` to the model: appended to the conversation's system
/// message, or as a new first system message.
pub fn declare(messages: &mut Vec<weft_engine::chat_template::ChatMessage>, tools: &ValidTools) {
    let prompt = tools.system_prompt();
    match messages.first_mut() {
        Some(first) if first.role == "system" => {
            first.content = format!("{}\n\n{prompt}", first.content);
        }
        _ => messages.insert(0, weft_engine::chat_template::ChatMessage::new("system", &prompt)),
    }
}

/// An assistant message's earlier `tool_calls`, as the model wrote them.
pub fn render_history_calls(calls: &Value, param: &str, format: ToolFormat) -> Result<String, ApiError> {
    let list = calls.as_array().ok_or_else(|| ApiError::invalid(param, "`tool_calls` must be a list"))?;
    let mut parsed = Vec::with_capacity(list.len());
    for (i, call) in list.iter().enumerate() {
        let function = call.get("function");
        let name = function.and_then(|f| f.get("name")).and_then(Value::as_str);
        let arguments = function.and_then(|f| f.get("arguments")).and_then(Value::as_str);
        let (Some(name), Some(arguments)) = (name, arguments) else {
            return Err(ApiError::invalid(
                format!("{param}[{i}].function"),
                "a call needs `function.name` and `function.arguments` (JSON text)",
            ));
        };
        let arguments: Value = serde_json::from_str(arguments).map_err(|e| {
            ApiError::invalid(format!("{param}[{i}].function.arguments"), format!("`arguments` is not JSON: {e}"))
        })?;
        parsed.push((name.to_string(), arguments));
    }
    Ok(if parsed.is_empty() { String::new() } else { format.render(&parsed) })
}

/// A `tool` message's content, as the model reads tool results.
pub fn render_tool_result(content: &str) -> String {
    format!("<tool_response>\n{content}\n</tool_response>")
}

/// A parsed call.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolCall {
    pub name: String,
    /// The arguments object as JSON text.
    pub arguments: String,
}

/// What a piece of model text turned into.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    Content(String),
    Call(ToolCall),
}

/// Incremental parser of one answer: feed text deltas, get content and
/// complete calls. Text that might be the start of a call marker, and
/// whitespace that might precede one, is held back until it is known; a
/// call that is not valid JSON or names an undeclared tool stays content.
/// Parsing a whole answer at once gives exactly the events its deltas give.
#[derive(Debug)]
pub struct CallParser {
    format: ToolFormat,
    names: Vec<String>,
    held: String,
    /// Inside a call (Hermes: after `<tool_call>`; Mistral: after
    /// `[TOOL_CALLS]`; Llama 3: the answer began as JSON).
    in_call: bool,
    /// Llama 3: whether the answer's first visible character was seen.
    decided: bool,
    calls: usize,
}

impl CallParser {
    pub fn new(format: ToolFormat, tools: &[Tool]) -> Self {
        let names = tools.iter().map(|t| t.name.clone()).collect();
        Self { format, names, held: String::new(), in_call: false, decided: false, calls: 0 }
    }

    /// Calls emitted so far.
    pub fn calls(&self) -> usize {
        self.calls
    }

    pub fn push(&mut self, delta: &str) -> Vec<Event> {
        self.held.push_str(delta);
        let mut events = Vec::new();
        match self.format {
            ToolFormat::Hermes => self.push_hermes(&mut events),
            ToolFormat::Mistral => {
                if !self.in_call {
                    self.before_marker(MISTRAL, &mut events);
                }
            }
            ToolFormat::Llama3Json => {
                if !self.decided {
                    let visible = self.held.trim_start();
                    let undecided = visible.is_empty() || (PYTHON_TAG.starts_with(visible) && visible.len() < PYTHON_TAG.len());
                    if !undecided {
                        self.decided = true;
                        self.in_call = visible.starts_with('{') || visible.starts_with(PYTHON_TAG);
                    }
                }
                if self.decided && !self.in_call && !self.held.is_empty() {
                    events.push(Event::Content(std::mem::take(&mut self.held)));
                }
            }
        }
        events
    }

    /// Emit content up to `marker` (entering the call) or up to what could
    /// still become it.
    fn before_marker(&mut self, marker: &str, events: &mut Vec<Event>) -> bool {
        if let Some(start) = self.held.find(marker) {
            let before = self.held[..start].trim_end().to_string();
            if !before.is_empty() {
                events.push(Event::Content(before));
            }
            self.held.replace_range(..start + marker.len(), "");
            self.in_call = true;
            return true;
        }
        let keep = (1..marker.len()).rev().find(|&k| self.held.ends_with(&marker[..k])).unwrap_or(0);
        let safe = self.held[..self.held.len() - keep].trim_end().len();
        if safe > 0 {
            events.push(Event::Content(self.held[..safe].to_string()));
            self.held.replace_range(..safe, "");
        }
        false
    }

    fn push_hermes(&mut self, events: &mut Vec<Event>) {
        loop {
            if !self.in_call {
                if self.before_marker(OPEN, events) {
                    continue;
                }
                return;
            }
            let Some(end) = self.held.find(CLOSE) else { return };
            let body = self.held[..end].to_string();
            self.held.replace_range(..end + CLOSE.len(), "");
            self.in_call = false;
            match self.call(&body) {
                Some(call) => {
                    self.calls += 1;
                    events.push(Event::Call(call));
                    let rest = self.held.trim_start().len();
                    self.held.replace_range(..self.held.len() - rest, "");
                }
                None => events.push(Event::Content(format!("{OPEN}{body}{CLOSE}"))),
            }
        }
    }

    /// The text ended: what is held becomes calls or content; held
    /// whitespace is content unless a call was made.
    pub fn finish(&mut self) -> Vec<Event> {
        let held = std::mem::take(&mut self.held);
        if self.in_call {
            self.in_call = false;
            match self.format {
                ToolFormat::Hermes => return vec![Event::Content(format!("{OPEN}{held}"))],
                ToolFormat::Mistral => {
                    let calls = serde_json::from_str::<Vec<Value>>(held.trim())
                        .ok()
                        .and_then(|list| list.iter().map(|c| self.call_value(c)).collect::<Option<Vec<_>>>())
                        .filter(|calls| !calls.is_empty());
                    return match calls {
                        Some(calls) => {
                            self.calls += calls.len();
                            calls.into_iter().map(Event::Call).collect()
                        }
                        None => vec![Event::Content(format!("{MISTRAL}{held}"))],
                    };
                }
                ToolFormat::Llama3Json => {
                    let body = held.trim_start();
                    let body = body.strip_prefix(PYTHON_TAG).unwrap_or(body);
                    return match self.call(body) {
                        Some(call) => {
                            self.calls += 1;
                            vec![Event::Call(call)]
                        }
                        None => vec![Event::Content(held)],
                    };
                }
            }
        }
        if held.is_empty() || (self.calls > 0 && held.trim().is_empty()) {
            return Vec::new();
        }
        vec![Event::Content(held)]
    }

    fn call(&self, body: &str) -> Option<ToolCall> {
        self.call_value(&serde_json::from_str(body.trim()).ok()?)
    }

    fn call_value(&self, value: &Value) -> Option<ToolCall> {
        let name = value.get("name")?.as_str()?;
        if !self.names.iter().any(|n| n == name) {
            return None;
        }
        let arguments = match value.get(self.format.arguments_key()) {
            None | Some(Value::Null) => "{}".to_string(),
            Some(a @ Value::Object(_)) => a.to_string(),
            Some(_) => return None,
        };
        Some(ToolCall { name: name.to_string(), arguments })
    }
}

/// A fresh call id (`call_` and 24 hex digits).
pub fn call_id() -> String {
    format!("call_{:024x}", rand::random::<u128>() >> 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Adjacent content events joined: how a client sees the text.
    fn merge(events: Vec<Event>) -> Vec<Event> {
        let mut out: Vec<Event> = Vec::new();
        for e in events {
            match (out.last_mut(), e) {
                (Some(Event::Content(a)), Event::Content(b)) => a.push_str(&b),
                (_, e) => out.push(e),
            }
        }
        out
    }

    fn replay(format: ToolFormat, tools: &[Tool], pieces: &[&str]) -> Vec<Event> {
        let mut parser = CallParser::new(format, tools);
        let mut events: Vec<Event> = pieces.iter().flat_map(|p| parser.push(p)).collect();
        events.extend(parser.finish());
        merge(events)
    }

    fn expected(case: &Value) -> Vec<Event> {
        case["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| match (e.get("content"), e.get("call")) {
                (Some(text), _) => Event::Content(text.as_str().unwrap().to_string()),
                (_, Some(call)) => Event::Call(ToolCall {
                    name: call["name"].as_str().unwrap().to_string(),
                    arguments: call["arguments"].to_string(),
                }),
                _ => panic!("an event is {{content}} or {{call}}: {e}"),
            })
            .collect()
    }

    /// The conformance kit: every corpus answer, whole, in pieces of 1 to 7
    /// characters, and cut in two at every character boundary, must give
    /// the expected events.
    #[test]
    fn tool_parser_conformance() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/data/tool-parsers/corpus.json");
        let corpus: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let tools: Vec<Tool> = corpus["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| Tool { name: n.as_str().unwrap().into(), description: String::new(), parameters: json!({"type": "object"}) })
            .collect();
        let cases = corpus["cases"].as_array().unwrap();
        let mut formats = std::collections::BTreeSet::new();
        for case in cases {
            let format = ToolFormat::named(case["format"].as_str().unwrap()).unwrap();
            formats.insert(format!("{format:?}"));
            let text = case["text"].as_str().unwrap();
            let want = expected(case);
            let name = case["name"].as_str().unwrap();
            assert_eq!(replay(format, &tools, &[text]), want, "{name}: whole");
            let chars: Vec<char> = text.chars().collect();
            for size in 1..8 {
                let pieces: Vec<String> = chars.chunks(size).map(|c| c.iter().collect()).collect();
                let pieces: Vec<&str> = pieces.iter().map(String::as_str).collect();
                assert_eq!(replay(format, &tools, &pieces), want, "{name}: pieces of {size}");
            }
            for (cut, _) in text.char_indices().skip(1) {
                assert_eq!(replay(format, &tools, &[&text[..cut], &text[cut..]]), want, "{name}: cut at byte {cut}");
            }
        }
        assert_eq!(formats.len(), 3, "every builtin format is covered");
    }

    #[test]
    fn constraints_and_history_round_trip_through_the_parser() {
        let tools = vec![Tool { name: "f".into(), description: String::new(), parameters: json!({"type": "object"}) }];
        for format in [ToolFormat::Hermes, ToolFormat::Llama3Json, ToolFormat::Mistral] {
            let text = format.render(&[("f".into(), json!({"x": 1}))]);
            let call = Event::Call(ToolCall { name: "f".into(), arguments: r#"{"x":1}"#.into() });
            assert_eq!(replay(format, &tools, &[&text]), vec![call], "{format:?}: {text}");
        }
    }
}
