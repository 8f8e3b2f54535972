//! The builtin tool-parser plugin: how the common model families write
//! tool calls, chosen by the config `format` (text):
//!
//! - `hermes` (the default): `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`
//!   blocks, anywhere in the answer (Hermes, Qwen, SmolLM2);
//! - `llama3_json`: the whole answer is one `{"name": ..., "parameters": {...}}`
//!   object, optionally after `<|python_tag|>` (Llama 3.x);
//! - `mistral`: `[TOOL_CALLS]` then a JSON list of `{"name", "arguments"}`.
//!
//! The parser holds back text that might still become a call marker (and
//! whitespace that might precede one) until it is known, so an answer parsed
//! whole gives exactly the events its deltas give. A call that is not valid
//! JSON or names an undeclared tool stays content. A call is emitted once it
//! is complete, as its start and its whole arguments.

wit_bindgen::generate!({
    path: "../../wit",
    world: "tool-parser-plugin",
});

mod format;

use std::cell::{Cell, RefCell};

use exports::weft::plugin::tool_parser::{Call, Event, Guest, GuestParser, Tool};
use format::{CallParser, Format, Parsed};
use weft::plugin::types::{ConfigEntry, ConfigValue, PluginError};

thread_local! {
    static FORMAT: Cell<Format> = const { Cell::new(Format::Hermes) };
}

fn format() -> Format {
    FORMAT.with(Cell::get)
}

fn error(code: &str, message: String) -> PluginError {
    PluginError { code: code.into(), message }
}

struct ToolParser;

impl Guest for ToolParser {
    type Parser = Parser;

    fn init(config: Vec<ConfigEntry>) -> Result<(), PluginError> {
        let mut chosen = Format::Hermes;
        for ConfigEntry { key, value } in config {
            match (key.as_str(), value) {
                ("format", ConfigValue::Text(name)) => {
                    chosen = Format::named(&name).ok_or_else(|| {
                        error("bad-config", format!("`format` is `hermes`, `llama3_json` or `mistral`; given {name:?}"))
                    })?;
                }
                (key, _) => return Err(error("bad-config", format!("unknown setting or wrong type: `{key}`"))),
            }
        }
        FORMAT.with(|f| f.set(chosen));
        Ok(())
    }

    fn render_tools(tools: Vec<Tool>) -> Result<String, PluginError> {
        let listed = tools.iter().map(declaration).collect::<Result<Vec<_>, _>>()?;
        Ok(format!(
            "You can call functions. Their signatures are listed inside <tools></tools>:\n<tools>\n{}\n</tools>\n\
             To call a function, answer with its name and arguments like this:\n{}",
            listed.join("\n"),
            format().example()
        ))
    }

    fn render_calls(calls: Vec<Call>) -> Result<String, PluginError> {
        let parsed = calls
            .into_iter()
            .map(|c| {
                let arguments = serde_json::from_str(&c.arguments)
                    .map_err(|e| error("bad-call", format!("the arguments of a call of {:?} are not JSON: {e}", c.name)))?;
                Ok((c.name, arguments))
            })
            .collect::<Result<Vec<_>, PluginError>>()?;
        Ok(if parsed.is_empty() { String::new() } else { format().render(&parsed) })
    }

    fn render_result(content: String) -> Result<String, PluginError> {
        Ok(format!("<tool_response>\n{content}\n</tool_response>"))
    }

    fn call_grammar(tools: Vec<Tool>, parallel: bool) -> Result<Option<String>, PluginError> {
        let schemas = tools
            .iter()
            .map(|t| Ok((t.name.as_str(), parameters(t)?)))
            .collect::<Result<Vec<_>, PluginError>>()?;
        Ok(Some(format().grammar(&schemas, parallel)))
    }
}

/// A tool's parameters schema as JSON.
fn parameters(tool: &Tool) -> Result<serde_json::Value, PluginError> {
    serde_json::from_str(&tool.parameters)
        .map_err(|e| error("bad-tool", format!("the parameters of {:?} are not JSON: {e}", tool.name)))
}

/// One tool as the system prompt lists it (OpenAI's own shape).
fn declaration(tool: &Tool) -> Result<String, PluginError> {
    let function = serde_json::json!({"name": tool.name, "description": tool.description, "parameters": parameters(tool)?});
    Ok(serde_json::json!({"type": "function", "function": function}).to_string())
}

struct Parser {
    state: RefCell<CallParser>,
    /// Calls emitted so far (the next call's index).
    calls: Cell<u32>,
}

impl Parser {
    fn events(&self, parsed: Vec<Parsed>) -> Vec<Event> {
        let mut events = Vec::with_capacity(parsed.len());
        for p in parsed {
            match p {
                Parsed::Content(text) => events.push(Event::Content(text)),
                Parsed::Call { name, arguments } => {
                    let index = self.calls.get();
                    self.calls.set(index + 1);
                    events.push(Event::CallStart((index, name)));
                    events.push(Event::CallArguments((index, arguments)));
                }
            }
        }
        events
    }
}

impl GuestParser for Parser {
    fn new(tools: Vec<Tool>) -> Self {
        let names = tools.into_iter().map(|t| t.name).collect();
        Parser { state: RefCell::new(CallParser::new(format(), names)), calls: Cell::new(0) }
    }

    fn push(&self, text: String) -> Result<Vec<Event>, PluginError> {
        let parsed = self.state.borrow_mut().push(&text);
        Ok(self.events(parsed))
    }

    fn finish(&self) -> Result<Vec<Event>, PluginError> {
        let parsed = self.state.borrow_mut().finish();
        Ok(self.events(parsed))
    }
}

export!(ToolParser);
