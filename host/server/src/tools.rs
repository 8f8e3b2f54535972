//! OpenAI tool calling for chat completions, in the Hermes format: tools are
//! declared to the model in a system message, the model answers a call as
//! `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`, and
//! [`CallParser`] turns that text (whole, or delta by delta while
//! streaming) back into OpenAI tool calls.
//!
//! `tool_choice: "required"` or a named function also constrains generation
//! (a Lark grammar over the declared tools' JSON schemas, through the guide
//! plugin), so even a small model always produces a well-formed call of a
//! declared tool with arguments valid against its schema.

use serde_json::{Value, json};

use crate::error::ApiError;
use crate::guides::Constraint;

/// Most tools one request may declare (OpenAI's limit).
pub const MAX_TOOLS: usize = 128;

const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";

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
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Check `tools` / `tool_choice` / `parallel_tool_calls`; `None` when the
/// request declares no tools and does not ask for calls.
pub fn validate(tools: Option<&Value>, choice: Option<&Value>, parallel: Option<bool>) -> Result<Option<ValidTools>, ApiError> {
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
    Ok(Some(ValidTools { tools: declared, choice, parallel: parallel.unwrap_or(true) }))
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
             To call a function, answer with a JSON object holding its name and arguments inside <tool_call></tool_call> tags:\n\
             <tool_call>\n{{\"name\": \"function-name\", \"arguments\": {{...}}}}\n</tool_call>",
            listed.join("\n")
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
        let calls: Vec<Value> = allowed
            .iter()
            .map(|t| {
                json!({
                    "type": "object",
                    "properties": {"name": {"const": t.name}, "arguments": t.parameters},
                    "required": ["name", "arguments"],
                    "additionalProperties": false,
                })
            })
            .collect();
        let schema = json!({
            "anyOf": calls,
            "x-guidance": {"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "},
        });
        let start = if self.parallel { "start: call (\"\\n\" call)*" } else { "start: call" };
        let source = format!("{start}\ncall: \"{OPEN}\\n\" body \"\\n{CLOSE}\"\nbody: %json {schema}\n");
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
pub fn render_history_calls(calls: &Value, param: &str) -> Result<String, ApiError> {
    let list = calls.as_array().ok_or_else(|| ApiError::invalid(param, "`tool_calls` must be a list"))?;
    let mut text = String::new();
    for (i, call) in list.iter().enumerate() {
        let function = call.get("function");
        let name = function.and_then(|f| f.get("name")).and_then(Value::as_str);
        let arguments = function.and_then(|f| f.get("arguments")).and_then(Value::as_str);
        let (Some(name), Some(arguments)) = (name, arguments) else {
            return Err(ApiError::invalid(format!("{param}[{i}].function"), "a call needs `function.name` and `function.arguments` (JSON text)"));
        };
        let arguments: Value = serde_json::from_str(arguments)
            .map_err(|e| ApiError::invalid(format!("{param}[{i}].function.arguments"), format!("`arguments` is not JSON: {e}")))?;
        text.push_str(&format!("\n{OPEN}\n{}\n{CLOSE}", json!({"name": name, "arguments": arguments})));
    }
    Ok(text.trim_start().to_string())
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

/// Incremental Hermes-format parser: feed text deltas, get content and
/// complete calls. Text that might be the start of a `<tool_call>` tag, and
/// whitespace that might precede one, is held back until it is known; a
/// block that is not a call of a declared tool stays content. Parsing a
/// whole answer at once gives exactly the events its deltas give.
#[derive(Debug)]
pub struct CallParser {
    names: Vec<String>,
    held: String,
    in_call: bool,
    calls: usize,
}

impl CallParser {
    pub fn new(tools: &[Tool]) -> Self {
        Self { names: tools.iter().map(|t| t.name.clone()).collect(), held: String::new(), in_call: false, calls: 0 }
    }

    /// Calls emitted so far.
    pub fn calls(&self) -> usize {
        self.calls
    }

    pub fn push(&mut self, delta: &str) -> Vec<Event> {
        self.held.push_str(delta);
        let mut events = Vec::new();
        loop {
            if self.in_call {
                let Some(end) = self.held.find(CLOSE) else { break };
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
                continue;
            }
            if let Some(start) = self.held.find(OPEN) {
                let before = self.held[..start].trim_end().to_string();
                if !before.is_empty() {
                    events.push(Event::Content(before));
                }
                self.held.replace_range(..start + OPEN.len(), "");
                self.in_call = true;
                continue;
            }
            // Emit what can no longer become a tag or precede one.
            let keep = (1..OPEN.len()).rev().find(|&k| self.held.ends_with(&OPEN[..k])).unwrap_or(0);
            let safe = self.held.len() - keep;
            let safe = self.held[..safe].trim_end().len();
            if safe > 0 {
                events.push(Event::Content(self.held[..safe].to_string()));
                self.held.replace_range(..safe, "");
            }
            break;
        }
        events
    }

    /// The text ended: an unfinished call is content; held whitespace is
    /// content unless a call was made.
    pub fn finish(&mut self) -> Vec<Event> {
        let held = std::mem::take(&mut self.held);
        if self.in_call {
            self.in_call = false;
            return vec![Event::Content(format!("{OPEN}{held}"))];
        }
        if held.is_empty() || (self.calls > 0 && held.trim().is_empty()) {
            return Vec::new();
        }
        vec![Event::Content(held)]
    }

    fn call(&self, body: &str) -> Option<ToolCall> {
        let value: Value = serde_json::from_str(body.trim()).ok()?;
        let name = value.get("name")?.as_str()?;
        if !self.names.iter().any(|n| n == name) {
            return None;
        }
        let arguments = match value.get("arguments") {
            None | Some(Value::Null) => "{}".to_string(),
            Some(a) => a.to_string(),
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

    fn tools() -> Vec<Tool> {
        vec![Tool { name: "get_weather".into(), description: String::new(), parameters: json!({"type": "object"}) }]
    }

    fn events_of(text: &str, split: usize) -> Vec<Event> {
        let mut p = CallParser::new(&tools());
        let mut all = Vec::new();
        let bytes: Vec<char> = text.chars().collect();
        for piece in bytes.chunks(split.max(1)) {
            all.extend(p.push(&piece.iter().collect::<String>()));
        }
        all.extend(p.finish());
        merge(all)
    }

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

    #[test]
    fn streamed_and_whole_parsing_agree_at_every_split() {
        let corpus = [
            "Sure.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris \\\"Ville\\\" ☀\"}}\n</tool_call>",
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>",
            "No call here, just <b>text</b> and a < sign.",
            "<tool_call>{\"name\": \"unknown\", \"arguments\": {}}</tool_call> trailing",
            "<tool_call>\n{\"name\": \"get_weather\", \"argu",
            "text then spaces   ",
        ];
        for text in corpus {
            let whole = events_of(text, usize::MAX);
            for split in 1..8 {
                assert_eq!(events_of(text, split), whole, "{text:?} split every {split} chars");
            }
        }
        assert_eq!(
            events_of(corpus[0], usize::MAX),
            vec![
                Event::Content("Sure.".into()),
                Event::Call(ToolCall { name: "get_weather".into(), arguments: r#"{"city":"Paris \"Ville\" ☀"}"#.into() })
            ]
        );
        assert_eq!(events_of(corpus[1], 3).len(), 2);
        assert_eq!(events_of(corpus[2], 2), vec![Event::Content(corpus[2].into())]);
        assert_eq!(events_of(corpus[3], 1), vec![Event::Content(corpus[3].into())]);
        assert_eq!(events_of(corpus[4], 5), vec![Event::Content(corpus[4].into())]);
        assert_eq!(events_of(corpus[5], 4), vec![Event::Content(corpus[5].into())]);
    }
}
