//! Tool-parser components: [`WasmToolParser`] is one instance of a
//! `tool-parser-plugin` component, shared by every request that chose it
//! (its calls take microseconds; a mutex serialises them), and
//! [`ToolStream`] is one answer's parser, a resource in that instance.
//!
//! Everything the guest answers is checked before the server uses it:
//! rendered text and grammars are at most [`MAX_RENDERED_BYTES`]; a
//! stream's calls start in order and name declared tools, its arguments
//! pieces join into one JSON object per call, and it emits at most twice
//! the text it was given (plus [`EVENT_SLACK_BYTES`]). A trap, a deadline
//! overrun, an exhausted memory or a broken answer is a fault: the
//! instance is discarded (streams opened on it fail their next call, and so
//! their requests), and the next call builds a fresh one.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard};

use wasmtime::Store;
use wasmtime::component::ResourceAny;

pub use crate::bindings::tool_parser::exports::weft::plugin::tool_parser::{Call, Tool};
use crate::bindings::tool_parser::{ToolParserPlugin, ToolParserPluginPre};
use crate::bindings::tool_parser::exports::weft::plugin::tool_parser::Event;
use crate::bindings::weft::plugin::types::{ConfigEntry, ConfigValue, PluginError as GuestError};
use crate::error::PluginError;
use crate::health::Health;
use crate::rebuilt::Rebuilt;
use crate::runtime::{ToolParserComponent, deadline_ticks};
use crate::sandbox::StoreState;

/// Most bytes a rendered prompt fragment or a call grammar may have.
pub const MAX_RENDERED_BYTES: usize = 1 << 20;

/// What a stream may emit beyond twice the text it was given.
pub const EVENT_SLACK_BYTES: usize = 4096;

/// What a piece of an answer turned into, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToolEvent {
    /// Plain assistant text.
    Content(String),
    /// Call `index` (0, 1, ... in order) of the declared tool `name` begins.
    CallStart { index: u32, name: String },
    /// More of call `index`'s arguments (JSON text).
    CallArguments { index: u32, text: String },
}

/// The parser's instance, rebuilt after a fault.
type Instance = Rebuilt<ToolParserPluginPre<StoreState>, ToolParserPlugin>;

/// A live tool-parser instance (rebuilt after any fault).
#[derive(Clone)]
pub struct WasmToolParser {
    shared: Arc<Mutex<Instance>>,
    health: Arc<Health>,
    name: String,
}

impl std::fmt::Debug for WasmToolParser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmToolParser").field("plugin", &self.name).field("health", &self.health).finish()
    }
}

fn lock(instance: &Mutex<Instance>) -> MutexGuard<'_, Instance> {
    // Nothing is left half-updated by a panic: a fault rebuilds the instance.
    instance.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl WasmToolParser {
    /// Instantiate `component` and hand `config` to its `init` (a refused
    /// configuration is [`PluginError::Refused`]).
    pub fn new(component: ToolParserComponent, config: Vec<(String, ConfigValue)>) -> Result<Self, PluginError> {
        let name = component.name.clone();
        let config: Vec<ConfigEntry> = config.into_iter().map(|(key, value)| ConfigEntry { key, value }).collect();
        let mut instance = Instance::new(component, move |c| {
            c.instance(c.limits.call_deadline, |pre, store| pre.instantiate(store), |plugin, store| {
                plugin.weft_plugin_tool_parser().call_init(store, &config)
            })
        });
        instance.live()?;
        Ok(Self { shared: Arc::new(Mutex::new(instance)), health: Arc::default(), name })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// This instance's calls and faults.
    pub fn health(&self) -> Arc<Health> {
        Arc::clone(&self.health)
    }

    /// One guest call under the deadline: a refusal is
    /// [`PluginError::Refused`]; a fault discards the instance.
    fn call<T>(
        &self,
        instance: &mut Instance,
        phase: &'static str,
        f: impl FnOnce(&ToolParserPlugin, &mut Store<StoreState>) -> wasmtime::Result<Result<T, GuestError>>,
    ) -> Result<T, PluginError> {
        self.health.record_call();
        let deadline = instance.component.limits.call_deadline;
        let result = match instance.live() {
            Ok((store, plugin)) => {
                store.set_epoch_deadline(deadline_ticks(deadline));
                std::panic::catch_unwind(AssertUnwindSafe(|| f(plugin, store)))
            }
            Err(e) => {
                self.health.record_fault();
                return Err(e);
            }
        };
        match result {
            Ok(Ok(Ok(value))) => Ok(value),
            Ok(Ok(Err(e))) => Err(PluginError::Refused { plugin: self.name.clone(), phase, code: e.code, message: e.message }),
            Ok(Err(e)) => Err(self.fault(instance, instance.component.call_error(phase, &e, deadline))),
            Err(_) => {
                let reason = "a host call panicked (a bug in Weft); the instance is discarded".to_string();
                Err(self.fault(instance, PluginError::Call { plugin: self.name.clone(), phase, reason }))
            }
        }
    }

    fn fault(&self, instance: &mut Instance, error: PluginError) -> PluginError {
        self.health.record_fault();
        instance.discard();
        error
    }

    /// A broken answer: a fault like a trap.
    fn broken(&self, instance: &mut Instance, phase: &'static str, reason: String) -> PluginError {
        self.fault(instance, PluginError::Call { plugin: self.name.clone(), phase, reason })
    }

    fn rendered(&self, instance: &mut Instance, phase: &'static str, text: String) -> Result<String, PluginError> {
        if text.len() > MAX_RENDERED_BYTES {
            return Err(self.broken(instance, phase, format!("answered {} bytes, over {MAX_RENDERED_BYTES}", text.len())));
        }
        Ok(text)
    }

    /// The system-prompt fragment declaring `tools`.
    pub fn render_tools(&self, tools: &[Tool]) -> Result<String, PluginError> {
        let mut instance = lock(&self.shared);
        let text = self.call(&mut instance, "render-tools", |p, s| p.weft_plugin_tool_parser().call_render_tools(s, tools))?;
        self.rendered(&mut instance, "render-tools", text)
    }

    /// An assistant turn's earlier `calls`, as the model writes them.
    pub fn render_calls(&self, calls: &[Call]) -> Result<String, PluginError> {
        let mut instance = lock(&self.shared);
        let text = self.call(&mut instance, "render-calls", |p, s| p.weft_plugin_tool_parser().call_render_calls(s, calls))?;
        self.rendered(&mut instance, "render-calls", text)
    }

    /// A tool's result, as the model reads it.
    pub fn render_result(&self, content: &str) -> Result<String, PluginError> {
        let mut instance = lock(&self.shared);
        let text = self.call(&mut instance, "render-result", |p, s| p.weft_plugin_tool_parser().call_render_result(s, content))?;
        self.rendered(&mut instance, "render-result", text)
    }

    /// The Lark grammar forcing a call of one of `tools` (several with
    /// `parallel`); `None` when the format cannot be constrained.
    pub fn call_grammar(&self, tools: &[Tool], parallel: bool) -> Result<Option<String>, PluginError> {
        let mut instance = lock(&self.shared);
        let grammar =
            self.call(&mut instance, "call-grammar", |p, s| p.weft_plugin_tool_parser().call_call_grammar(s, tools, parallel))?;
        grammar.map(|g| self.rendered(&mut instance, "call-grammar", g)).transpose()
    }

    /// A parser for one answer that may call `tools`.
    pub fn stream(&self, tools: &[Tool]) -> Result<ToolStream, PluginError> {
        let mut instance = lock(&self.shared);
        let resource = self.call(&mut instance, "parser", |p, s| p.weft_plugin_tool_parser().parser().call_constructor(s, tools).map(Ok))?;
        Ok(ToolStream {
            parser: self.clone(),
            resource: Some(resource),
            generation: instance.generation(),
            names: tools.iter().map(|t| t.name.clone()).collect(),
            arguments: Vec::new(),
            given: 0,
            emitted: 0,
        })
    }
}

/// One answer's parser: text deltas in, checked events out.
pub struct ToolStream {
    parser: WasmToolParser,
    resource: Option<ResourceAny>,
    generation: u64,
    names: Vec<String>,
    /// Per started call, its arguments so far.
    arguments: Vec<String>,
    given: usize,
    emitted: usize,
}

impl std::fmt::Debug for ToolStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToolStream").field("plugin", &self.parser.name).field("calls", &self.arguments.len()).finish()
    }
}

impl ToolStream {
    /// Calls started so far.
    pub fn calls(&self) -> usize {
        self.arguments.len()
    }

    /// Feed the next text delta.
    pub fn push(&mut self, text: &str) -> Result<Vec<ToolEvent>, PluginError> {
        self.given += text.len();
        self.events("push", |p, s, r| p.weft_plugin_tool_parser().parser().call_push(s, r, text))
    }

    /// The answer ended: the last events; every call's arguments must now
    /// be a JSON object.
    pub fn finish(&mut self) -> Result<Vec<ToolEvent>, PluginError> {
        let events = self.events("finish", |p, s, r| p.weft_plugin_tool_parser().parser().call_finish(s, r))?;
        let unfinished = self.arguments.iter().position(|a| !serde_json::from_str::<serde_json::Value>(a).is_ok_and(|v| v.is_object()));
        if let Some(index) = unfinished {
            let mut instance = lock(&self.parser.shared);
            return Err(self.parser.broken(&mut instance, "finish", format!("call {index}'s arguments are not one JSON object")));
        }
        Ok(events)
    }

    fn events(
        &mut self,
        phase: &'static str,
        f: impl FnOnce(&ToolParserPlugin, &mut Store<StoreState>, ResourceAny) -> wasmtime::Result<Result<Vec<Event>, GuestError>>,
    ) -> Result<Vec<ToolEvent>, PluginError> {
        let parser = self.parser.clone();
        let mut instance = lock(&parser.shared);
        let gone = |reason: &str| PluginError::Call { plugin: parser.name.clone(), phase, reason: reason.into() };
        let resource = self.resource.ok_or_else(|| gone("the answer's parser is gone"))?;
        if instance.generation() != self.generation {
            self.resource = None;
            return Err(gone("the tool-parser instance faulted earlier and was discarded with this answer's state"));
        }
        let events = parser.call(&mut instance, phase, |p, s| f(p, s, resource)).inspect_err(|_| {
            if instance.generation() != self.generation {
                self.resource = None;
            }
        })?;
        let mut checked = Vec::with_capacity(events.len());
        for event in events {
            match self.check(event) {
                Ok(event) => checked.push(event),
                Err(why) => {
                    self.resource = None;
                    return Err(parser.broken(&mut instance, phase, why));
                }
            }
        }
        Ok(checked)
    }

    /// The event as the server may use it, or why it is broken.
    fn check(&mut self, event: Event) -> Result<ToolEvent, String> {
        let size = match &event {
            Event::Content(text) | Event::CallStart((_, text)) | Event::CallArguments((_, text)) => text.len(),
        };
        self.emitted += size;
        if self.emitted > 2 * self.given + EVENT_SLACK_BYTES {
            return Err(format!("emitted {} bytes for {} bytes of text", self.emitted, self.given));
        }
        Ok(match event {
            Event::Content(text) => ToolEvent::Content(text),
            Event::CallStart((index, name)) => {
                if index as usize != self.arguments.len() {
                    return Err(format!("started call {index} after {} calls", self.arguments.len()));
                }
                if !self.names.contains(&name) {
                    return Err(format!("started a call of {name:?}, which the request does not declare"));
                }
                self.arguments.push(String::new());
                ToolEvent::CallStart { index, name }
            }
            Event::CallArguments((index, text)) => {
                let arguments = self.arguments.get_mut(index as usize).ok_or_else(|| format!("gave arguments of call {index}, which has not started"))?;
                arguments.push_str(&text);
                ToolEvent::CallArguments { index, text }
            }
        })
    }
}

impl Drop for ToolStream {
    fn drop(&mut self) {
        let Some(resource) = self.resource.take() else { return };
        lock(&self.parser.shared).drop_resource(resource, self.generation);
    }
}
