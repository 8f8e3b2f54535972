//! The three call formats: how each writes calls, the grammar that forces
//! one, and the incremental parser that finds them in an answer.

use serde_json::{Value, json};

const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";
const MISTRAL: &str = "[TOOL_CALLS]";
const PYTHON_TAG: &str = "<|python_tag|>";

/// How a model family writes tool calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Hermes,
    Llama3Json,
    Mistral,
}

impl Format {
    pub fn named(name: &str) -> Option<Self> {
        match name {
            "hermes" => Some(Self::Hermes),
            "llama3_json" => Some(Self::Llama3Json),
            "mistral" => Some(Self::Mistral),
            _ => None,
        }
    }

    /// What a call looks like, for the system prompt.
    pub fn example(self) -> &'static str {
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

    /// Calls as this format writes them.
    pub fn render(self, calls: &[(String, Value)]) -> String {
        let object = |(name, arguments): &(String, Value)| json!({"name": name, self.arguments_key(): arguments});
        match self {
            Self::Hermes => calls.iter().map(|c| format!("{OPEN}\n{}\n{CLOSE}", object(c))).collect::<Vec<_>>().join("\n"),
            Self::Llama3Json => calls.iter().map(|c| object(c).to_string()).collect::<Vec<_>>().join("\n"),
            Self::Mistral => format!("{MISTRAL} {}", Value::Array(calls.iter().map(object).collect())),
        }
    }

    /// A Lark grammar admitting a call (with `parallel`, one or more) of
    /// the `(name, parameters schema)` tools, written compactly in this
    /// format, each call's arguments valid against its tool's schema.
    pub fn grammar(self, tools: &[(&str, Value)], parallel: bool) -> String {
        let key = self.arguments_key();
        let calls: Vec<Value> = tools
            .iter()
            .map(|(name, parameters)| {
                json!({
                    "type": "object",
                    "properties": {"name": {"const": name}, key: parameters},
                    "required": ["name", key],
                    "additionalProperties": false,
                })
            })
            .collect();
        let compact = json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "});
        let call = json!({"anyOf": calls, "x-guidance": compact});
        match self {
            Self::Hermes => {
                let start = if parallel { "start: call (\"\\n\" call)*" } else { "start: call" };
                format!("{start}\ncall: \"{OPEN}\\n\" body \"\\n{CLOSE}\"\nbody: %json {call}\n")
            }
            // Llama 3 writes one call per answer.
            Self::Llama3Json => format!("start: %json {call}\n"),
            Self::Mistral => {
                let mut list = json!({"type": "array", "minItems": 1, "items": call, "x-guidance": compact});
                if !parallel {
                    list["maxItems"] = json!(1);
                }
                format!("start: \"{MISTRAL} \" body\nbody: %json {list}\n")
            }
        }
    }
}

/// What a piece of an answer turned into.
#[derive(Clone, Debug, PartialEq)]
pub enum Parsed {
    Content(String),
    /// A complete call; `arguments` is a JSON object's text.
    Call { name: String, arguments: String },
}

/// Incremental parser of one answer (see the crate docs).
#[derive(Debug)]
pub struct CallParser {
    format: Format,
    names: Vec<String>,
    held: String,
    /// Inside a call (Hermes: after `<tool_call>`; Mistral: after
    /// `[TOOL_CALLS]`; Llama 3: the answer began as JSON).
    in_call: bool,
    /// Llama 3: whether the answer's first visible character was seen.
    decided: bool,
    /// Hermes: a call just ended, so whitespace after it is dropped until
    /// text arrives (however the deltas split it).
    after_call: bool,
    calls: usize,
}

impl CallParser {
    pub fn new(format: Format, names: Vec<String>) -> Self {
        Self { format, names, held: String::new(), in_call: false, decided: false, after_call: false, calls: 0 }
    }

    pub fn push(&mut self, delta: &str) -> Vec<Parsed> {
        self.held.push_str(delta);
        let mut out = Vec::new();
        match self.format {
            Format::Hermes => self.push_hermes(&mut out),
            Format::Mistral => {
                if !self.in_call {
                    self.before_marker(MISTRAL, &mut out);
                }
            }
            Format::Llama3Json => {
                if !self.decided {
                    let visible = self.held.trim_start();
                    let undecided = visible.is_empty() || (PYTHON_TAG.starts_with(visible) && visible.len() < PYTHON_TAG.len());
                    if !undecided {
                        self.decided = true;
                        self.in_call = visible.starts_with('{') || visible.starts_with(PYTHON_TAG);
                    }
                }
                if self.decided && !self.in_call && !self.held.is_empty() {
                    out.push(Parsed::Content(std::mem::take(&mut self.held)));
                }
            }
        }
        out
    }

    /// Emit content up to `marker` (entering the call) or up to what could
    /// still become it.
    fn before_marker(&mut self, marker: &str, out: &mut Vec<Parsed>) -> bool {
        if let Some(start) = self.held.find(marker) {
            let before = self.held[..start].trim_end().to_string();
            if !before.is_empty() {
                out.push(Parsed::Content(before));
            }
            self.held.replace_range(..start + marker.len(), "");
            self.in_call = true;
            return true;
        }
        let keep = (1..marker.len()).rev().find(|&k| self.held.ends_with(&marker[..k])).unwrap_or(0);
        let safe = self.held[..self.held.len() - keep].trim_end().len();
        if safe > 0 {
            out.push(Parsed::Content(self.held[..safe].to_string()));
            self.held.replace_range(..safe, "");
        }
        false
    }

    fn push_hermes(&mut self, out: &mut Vec<Parsed>) {
        loop {
            if self.after_call {
                let rest = self.held.trim_start().len();
                self.held.replace_range(..self.held.len() - rest, "");
                self.after_call = self.held.is_empty();
            }
            if !self.in_call {
                if self.before_marker(OPEN, out) {
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
                    out.push(call);
                    self.after_call = true;
                }
                None => out.push(Parsed::Content(format!("{OPEN}{body}{CLOSE}"))),
            }
        }
    }

    /// The text ended: what is held becomes calls or content; held
    /// whitespace is content unless a call was made.
    pub fn finish(&mut self) -> Vec<Parsed> {
        let held = std::mem::take(&mut self.held);
        if self.in_call {
            self.in_call = false;
            match self.format {
                Format::Hermes => return vec![Parsed::Content(format!("{OPEN}{held}"))],
                Format::Mistral => {
                    let calls = serde_json::from_str::<Vec<Value>>(held.trim())
                        .ok()
                        .and_then(|list| list.iter().map(|c| self.call_value(c)).collect::<Option<Vec<_>>>())
                        .filter(|calls| !calls.is_empty());
                    return match calls {
                        Some(calls) => {
                            self.calls += calls.len();
                            calls
                        }
                        None => vec![Parsed::Content(format!("{MISTRAL}{held}"))],
                    };
                }
                Format::Llama3Json => {
                    let body = held.trim_start();
                    let body = body.strip_prefix(PYTHON_TAG).unwrap_or(body);
                    return match self.call(body) {
                        Some(call) => {
                            self.calls += 1;
                            vec![call]
                        }
                        None => vec![Parsed::Content(held)],
                    };
                }
            }
        }
        if held.is_empty() || (self.calls > 0 && held.trim().is_empty()) {
            return Vec::new();
        }
        vec![Parsed::Content(held)]
    }

    fn call(&self, body: &str) -> Option<Parsed> {
        self.call_value(&serde_json::from_str(body.trim()).ok()?)
    }

    fn call_value(&self, value: &Value) -> Option<Parsed> {
        let name = value.get("name")?.as_str()?;
        if !self.names.iter().any(|n| n == name) {
            return None;
        }
        let arguments = match value.get(self.format.arguments_key()) {
            None | Some(Value::Null) => "{}".to_string(),
            Some(a @ Value::Object(_)) => a.to_string(),
            Some(_) => return None,
        };
        Some(Parsed::Call { name: name.to_string(), arguments })
    }
}
