//! OpenAI tool calling for chat completions: the request's `tools` and
//! `tool_choice` checked, then handed to the request's tool-parser plugin
//! ([`crate::tool_parsers`]), which declares the tools to the model, writes
//! earlier calls and tool results into the conversation, gives the grammar
//! that forces a call, and parses the answer (whole, or delta by delta while
//! streaming) back into calls.
//!
//! `tool_choice: "required"` or a named function also constrains generation
//! (the parser's grammar over the declared tools' JSON schemas, through the
//! guide plugin), so even a small model always produces a well-formed call
//! of a declared tool with arguments valid against its schema.

use serde_json::{Value, json};
use weft_plugin_runtime::WasmToolParser;

use crate::error::ApiError;
use crate::guides::Constraint;
use crate::tool_parsers::api_error;

/// Most tools one request may declare (OpenAI's limit).
pub const MAX_TOOLS: usize = 128;

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

/// A request's checked `tools`, `tool_choice` and `parallel_tool_calls`,
/// with the tool parser that writes and reads its calls.
#[derive(Clone, Debug)]
pub struct ValidTools {
    pub tools: Vec<Tool>,
    pub choice: ToolChoice,
    pub parallel: bool,
    pub parser: WasmToolParser,
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Check `tools` / `tool_choice` / `parallel_tool_calls`; `None` when the
/// request declares no tools and does not ask for calls. `parser` is how the
/// model writes calls (`None`: the server has no tool parser).
pub fn validate(
    tools: Option<&Value>,
    choice: Option<&Value>,
    parallel: Option<bool>,
    parser: Option<&WasmToolParser>,
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
    let parser = needed(parser)?.clone();
    Ok(Some(ValidTools { tools: declared, choice, parallel: parallel.unwrap_or(true), parser }))
}

/// The tool parser, where the request needs one.
pub fn needed(parser: Option<&WasmToolParser>) -> Result<&WasmToolParser, ApiError> {
    parser.ok_or_else(|| ApiError::NotReady("tool calling is unavailable: this server has no tool-parser plugin".into()))
}

impl ValidTools {
    /// Whether the model is offered the tools at all.
    pub fn offered(&self) -> bool {
        self.choice != ToolChoice::None
    }

    /// The tools as the parser plugin takes them.
    pub fn specs(&self) -> Vec<weft_plugin_runtime::Tool> {
        self.tools.iter().map(Tool::spec).collect()
    }

    /// The constraint a `required` or named choice puts on generation: one
    /// call (or, with parallel calls, several) of the allowed tools, each
    /// with arguments valid against the tool's schema, as the parser's
    /// grammar says. A parser without a grammar leaves the answer free.
    pub fn constraint(&self) -> Result<Option<Constraint>, ApiError> {
        let allowed: Vec<weft_plugin_runtime::Tool> = match &self.choice {
            ToolChoice::None | ToolChoice::Auto => return Ok(None),
            ToolChoice::Required => self.specs(),
            ToolChoice::Named(name) => self.tools.iter().filter(|t| &t.name == name).map(Tool::spec).collect(),
        };
        let grammar = self.parser.call_grammar(&allowed, self.parallel).map_err(|e| api_error(e, "tools"))?;
        Ok(grammar.map(|source| Constraint { kind: "lark", source, param: "tools" }))
    }

    /// Declare the tools to the model: appended to the conversation's
    /// system message, or as a new first system message.
    pub fn declare(&self, messages: &mut Vec<weft_engine::chat_template::ChatMessage>) -> Result<(), ApiError> {
        let prompt = self.parser.render_tools(&self.specs()).map_err(|e| api_error(e, "tools"))?;
        match messages.first_mut() {
            Some(first) if first.role == "system" => {
                first.content = format!("{}\n\n{prompt}", first.content);
            }
            _ => messages.insert(0, weft_engine::chat_template::ChatMessage::new("system", &prompt)),
        }
        Ok(())
    }
}

impl Tool {
    fn spec(&self) -> weft_plugin_runtime::Tool {
        weft_plugin_runtime::Tool {
            name: self.name.clone(),
            description: self.description.clone(),
            parameters: self.parameters.to_string(),
        }
    }
}

/// An assistant message's earlier `tool_calls`, as the model wrote them.
pub fn render_history_calls(calls: &Value, param: &str, parser: &WasmToolParser) -> Result<String, ApiError> {
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
        if let Err(e) = serde_json::from_str::<Value>(arguments) {
            return Err(ApiError::invalid(format!("{param}[{i}].function.arguments"), format!("`arguments` is not JSON: {e}")));
        }
        parsed.push(weft_plugin_runtime::Call { name: name.to_string(), arguments: arguments.to_string() });
    }
    if parsed.is_empty() {
        return Ok(String::new());
    }
    parser.render_calls(&parsed).map_err(|e| api_error(e, param))
}

/// A `tool` message's content, as the model reads tool results.
pub fn render_tool_result(content: &str, param: &str, parser: &WasmToolParser) -> Result<String, ApiError> {
    parser.render_result(content).map_err(|e| api_error(e, param))
}

/// A chat request's tool use applied, for any transport: a forced call's
/// constraint set on `valid` (it cannot be combined with another), the
/// conversation checked with earlier calls and results written by
/// `parser`, and the tools declared in it. Returns the conversation for the
/// template and the tools offered (whose answers are to be parsed).
pub fn apply(
    tools: Option<ValidTools>,
    valid: &mut crate::validate::ValidSampling,
    messages: &[crate::openai::ChatMessageIn],
    parser: Option<&WasmToolParser>,
) -> Result<(Vec<weft_engine::chat_template::ChatMessage>, Option<ValidTools>), ApiError> {
    if let Some(call) = tools.as_ref().map(ValidTools::constraint).transpose()?.flatten() {
        if let Some(other) = &valid.constraint {
            return Err(ApiError::invalid(
                other.param,
                "`tool_choice` `required` or a named function already constrains the answer to a call; drop this constraint",
            ));
        }
        valid.constraint = Some(call);
    }
    let tools = tools.filter(ValidTools::offered);
    let mut messages = crate::validate::chat_messages(messages, parser)?;
    if let Some(tools) = &tools {
        tools.declare(&mut messages)?;
    }
    Ok((messages, tools))
}

/// A call of an answer.
#[derive(Clone, Debug, PartialEq)]
pub struct ParsedCall {
    pub id: String,
    pub name: String,
    /// The arguments object as JSON text.
    pub arguments: String,
}

/// A parser failing mid-answer: the request fails.
pub fn parser_failed(e: weft_plugin_runtime::PluginError) -> ApiError {
    ApiError::PluginFailed(e.to_string())
}

impl ValidTools {
    /// A whole answer through the parser: its text besides the calls, and
    /// the calls.
    pub fn parse_answer(&self, text: &str) -> Result<(String, Vec<ParsedCall>), ApiError> {
        let mut stream = self.parser.stream(&self.specs()).map_err(parser_failed)?;
        let mut events = stream.push(text).map_err(parser_failed)?;
        events.extend(stream.finish().map_err(parser_failed)?);
        let (mut content, mut calls) = (String::new(), Vec::<ParsedCall>::new());
        for event in events {
            match event {
                weft_plugin_runtime::ToolEvent::Content(t) => content.push_str(&t),
                weft_plugin_runtime::ToolEvent::CallStart { name, .. } => {
                    calls.push(ParsedCall { id: call_id(), name, arguments: String::new() });
                }
                // Indices are checked by the runtime: they name started calls.
                weft_plugin_runtime::ToolEvent::CallArguments { index, text } => calls[index as usize].arguments.push_str(&text),
            }
        }
        Ok((content, calls))
    }

    /// One streaming parser per choice.
    pub fn streams(&self, choices: usize) -> Result<Vec<weft_plugin_runtime::ToolStream>, ApiError> {
        let specs = self.specs();
        (0..choices).map(|_| self.parser.stream(&specs).map_err(parser_failed)).collect()
    }
}

/// A fresh call id (`call_` and 24 hex digits).
pub fn call_id() -> String {
    format!("call_{:024x}", rand::random::<u128>() >> 32)
}
