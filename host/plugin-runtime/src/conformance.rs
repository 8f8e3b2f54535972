//! The tool-parser conformance kit: a corpus of model answers, each with
//! the events it must give, replayed through a tool parser whole, in pieces
//! of 1 to 7 characters, and cut in two at every character boundary. Every
//! replay must give the expected events, so streaming and non-streaming
//! parsing agree by construction. `weft plugin conformance` runs it on any
//! tool-parser component; the test suite runs it on every builtin format.
//!
//! A corpus is JSON: `{"tools": [NAME, ...], "cases": [CASE, ...]}`, where
//! a case is `{"name", "format"?, "text", "events": [EVENT, ...]}` and an
//! event is `{"content": TEXT}` or `{"call": {"name", "arguments": {...}}}`.
//! Adjacent content is compared joined (how a client reads it), arguments
//! as JSON values. `format` lets one corpus hold cases for several parsers.

use serde_json::Value;

use crate::tool_parser::{Tool, ToolEvent, WasmToolParser};

/// What an answer must turn into.
#[derive(Clone, Debug, PartialEq)]
pub enum Expected {
    Content(String),
    Call { name: String, arguments: Value },
}

/// One answer and its events.
#[derive(Clone, Debug)]
pub struct Case {
    pub name: String,
    pub format: Option<String>,
    pub text: String,
    pub events: Vec<Expected>,
}

/// The tools every case may call, and the cases.
#[derive(Clone, Debug)]
pub struct Corpus {
    pub tools: Vec<Tool>,
    pub cases: Vec<Case>,
}

/// A replay that gave other events than expected.
#[derive(Clone, Debug)]
pub struct Failure {
    pub case: String,
    /// How the text was fed (`whole`, `pieces of 3`, `cut at byte 17`).
    pub replay: String,
    pub detail: String,
}

/// What a run checked and what failed.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub cases: usize,
    pub replays: usize,
    pub failures: Vec<Failure>,
}

impl Corpus {
    /// Read a corpus (see the module docs for its shape).
    pub fn parse(json: &str) -> Result<Self, String> {
        let root: Value = serde_json::from_str(json).map_err(|e| format!("the corpus is not JSON: {e}"))?;
        let tools = root["tools"]
            .as_array()
            .ok_or("the corpus needs `tools`, a list of tool names")?
            .iter()
            .map(|n| {
                let name = n.as_str().ok_or("every tool is a name")?;
                Ok(Tool { name: name.into(), description: String::new(), parameters: r#"{"type": "object"}"#.into() })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let cases = root["cases"]
            .as_array()
            .ok_or("the corpus needs `cases`, a list")?
            .iter()
            .enumerate()
            .map(|(i, c)| case(c).map_err(|e| format!("case {i}: {e}")))
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Self { tools, cases })
    }
}

fn case(c: &Value) -> Result<Case, String> {
    let text = |key: &str| c[key].as_str().map(str::to_string).ok_or(format!("`{key}` must be text"));
    let events = c["events"]
        .as_array()
        .ok_or("`events` must be a list")?
        .iter()
        .map(|e| match (e.get("content"), e.get("call")) {
            (Some(Value::String(t)), None) => Ok(Expected::Content(t.clone())),
            (None, Some(call)) => match (call["name"].as_str(), call.get("arguments")) {
                (Some(name), Some(arguments)) => Ok(Expected::Call { name: name.into(), arguments: arguments.clone() }),
                _ => Err(format!("a call event needs `name` and `arguments`: {e}")),
            },
            _ => Err(format!("an event is {{\"content\": ...}} or {{\"call\": ...}}: {e}")),
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(Case { name: text("name")?, format: c["format"].as_str().map(str::to_string), text: text("text")?, events: merged(events) })
}

/// Adjacent content joined; empty content dropped.
fn merged(events: Vec<Expected>) -> Vec<Expected> {
    let mut out: Vec<Expected> = Vec::with_capacity(events.len());
    for e in events {
        match (out.last_mut(), e) {
            (_, Expected::Content(t)) if t.is_empty() => {}
            (Some(Expected::Content(a)), Expected::Content(b)) => a.push_str(&b),
            (_, e) => out.push(e),
        }
    }
    out
}

/// Run every case of `corpus` whose `format` is `format` (cases without
/// one always run) through `parser`.
pub fn check(parser: &WasmToolParser, corpus: &Corpus, format: Option<&str>) -> Report {
    let mut report = Report::default();
    for case in corpus.cases.iter().filter(|c| c.format.is_none() || c.format.as_deref() == format) {
        report.cases += 1;
        let chars: Vec<char> = case.text.chars().collect();
        let mut replays: Vec<(String, Vec<String>)> = vec![("whole".into(), vec![case.text.clone()])];
        for size in 1..8 {
            replays.push((format!("pieces of {size}"), chars.chunks(size).map(|c| c.iter().collect()).collect()));
        }
        for (cut, _) in case.text.char_indices().skip(1) {
            replays.push((format!("cut at byte {cut}"), vec![case.text[..cut].into(), case.text[cut..].into()]));
        }
        for (replay, pieces) in replays {
            report.replays += 1;
            let detail = match run(parser, &corpus.tools, &pieces) {
                Ok(got) if got == case.events => continue,
                Ok(got) => format!("expected {:?}, got {got:?}", case.events),
                Err(e) => e,
            };
            report.failures.push(Failure { case: case.name.clone(), replay, detail });
        }
    }
    report
}

/// Feed `pieces` to a fresh stream: the events, normalised.
fn run(parser: &WasmToolParser, tools: &[Tool], pieces: &[String]) -> Result<Vec<Expected>, String> {
    let mut stream = parser.stream(tools).map_err(|e| e.to_string())?;
    let mut events = Vec::new();
    for piece in pieces {
        events.extend(stream.push(piece).map_err(|e| e.to_string())?);
    }
    events.extend(stream.finish().map_err(|e| e.to_string())?);
    let mut out = Vec::new();
    let mut arguments: Vec<(usize, String)> = Vec::new();
    for event in events {
        match event {
            ToolEvent::Content(text) => out.push(Expected::Content(text)),
            ToolEvent::CallStart { name, .. } => {
                arguments.push((out.len(), String::new()));
                out.push(Expected::Call { name, arguments: Value::Null });
            }
            ToolEvent::CallArguments { index, text } => arguments[index as usize].1.push_str(&text),
        }
    }
    for (at, text) in arguments {
        let parsed: Value = serde_json::from_str(&text).map_err(|e| format!("call arguments {text:?} are not JSON: {e}"))?;
        if let Expected::Call { arguments, .. } = &mut out[at] {
            *arguments = parsed;
        }
    }
    Ok(merged(out))
}
