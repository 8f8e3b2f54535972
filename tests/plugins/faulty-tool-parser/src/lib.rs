//! A tool parser that misbehaves on purpose, the way its `fault` config
//! key says, when it parses text: `trap`, `loop` (never returns),
//! `undeclared` (a call of a tool nobody declared), `out-of-order` (call 1
//! before call 0), `orphan-arguments` (arguments of a call never started),
//! `flood` (far more text than it was given), `bad-arguments` (arguments
//! that are not a JSON object), `refuse` (a plugin error), or `none`
//! (every text is content, well behaved). Rendering `render-tools` with
//! `fault = "huge-render"` answers 2 MiB. The fault-isolation tests load it
//! to prove each failure stays inside its own request.

wit_bindgen::generate!({
    path: "../../../wit",
    world: "tool-parser-plugin",
});

use std::sync::atomic::{AtomicU8, Ordering};

use exports::weft::plugin::tool_parser::{Call, Event, Guest, GuestParser, Tool};
use weft::plugin::types::{ConfigEntry, ConfigValue, PluginError};

static FAULT: AtomicU8 = AtomicU8::new(0);
const FAULTS: [&str; 10] =
    ["none", "trap", "loop", "undeclared", "out-of-order", "orphan-arguments", "flood", "bad-arguments", "refuse", "huge-render"];

fn fault() -> &'static str {
    FAULTS[FAULT.load(Ordering::Relaxed) as usize]
}

struct Faulty;

impl Guest for Faulty {
    type Parser = Parser;

    fn init(config: Vec<ConfigEntry>) -> Result<(), PluginError> {
        for entry in config {
            if let ("fault", ConfigValue::Text(name)) = (entry.key.as_str(), &entry.value) {
                let index = FAULTS.iter().position(|f| f == name).ok_or_else(|| PluginError {
                    code: "bad-config".into(),
                    message: format!("unknown fault {name:?}"),
                })?;
                FAULT.store(index as u8, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    fn render_tools(_tools: Vec<Tool>) -> Result<String, PluginError> {
        Ok(if fault() == "huge-render" { "x".repeat(2 << 20) } else { "Tools are available.".into() })
    }

    fn render_calls(_calls: Vec<Call>) -> Result<String, PluginError> {
        Ok(String::new())
    }

    fn render_result(content: String) -> Result<String, PluginError> {
        Ok(content)
    }

    fn call_grammar(_tools: Vec<Tool>, _parallel: bool) -> Result<Option<String>, PluginError> {
        Ok(None)
    }
}

struct Parser {
    first_tool: String,
}

impl GuestParser for Parser {
    fn new(tools: Vec<Tool>) -> Self {
        Parser { first_tool: tools.into_iter().next().map(|t| t.name).unwrap_or_default() }
    }

    fn push(&self, text: String) -> Result<Vec<Event>, PluginError> {
        Ok(match fault() {
            "trap" => unreachable!("a deliberate trap"),
            "loop" => loop {
                std::hint::black_box(text.len());
            },
            "undeclared" => vec![Event::CallStart((0, "not_declared".into()))],
            "out-of-order" => vec![Event::CallStart((1, self.first_tool.clone()))],
            "orphan-arguments" => vec![Event::CallArguments((0, "{}".into()))],
            "flood" => vec![Event::Content("x".repeat(64 << 10))],
            "bad-arguments" => vec![Event::CallStart((0, self.first_tool.clone())), Event::CallArguments((0, "{not json".into()))],
            "refuse" => return Err(PluginError { code: "refused".into(), message: "a deliberate refusal".into() }),
            _ => vec![Event::Content(text)],
        })
    }

    fn finish(&self) -> Result<Vec<Event>, PluginError> {
        Ok(Vec::new())
    }
}

export!(Faulty);
