//! Tool parsers: `tool-parser` plugin instances ([`WasmToolParser`]) that
//! say how a model family writes tool calls, deployed by name like any
//! plugin ([`crate::plugins::Plugins::tool_parsers`]).
//!
//! The builtin component serves three names, one per format it knows
//! (`hermes`, `llama3_json`, `mistral`); the model's chat template chooses
//! the default ([`default_for_template`]), and a request may name another,
//! builtin or deployed (`weft.tool_parser` or the `x-weft-tool-parser`
//! header). Tool calling is unavailable (503) on a server that loaded no
//! tool parser.

use weft_plugin_runtime::bindings::weft::plugin::types::ConfigValue;
use weft_plugin_runtime::{PluginError, PluginRuntime, WasmToolParser};

use crate::error::ApiError;

/// The formats the builtin tool-parser component knows, each served under
/// its own name.
pub const BUILTIN_FORMATS: [&str; 3] = ["hermes", "llama3_json", "mistral"];

/// The builtin format a chat template was written for: Mistral's
/// `[TOOL_CALLS]`, Llama 3's `<|python_tag|>`/`ipython`, else Hermes'
/// `<tool_call>` blocks (Qwen, SmolLM2 and most others).
pub fn default_for_template(source: Option<&str>) -> &'static str {
    match source {
        Some(s) if s.contains("[TOOL_CALLS]") => "mistral",
        Some(s) if s.contains("<|python_tag|>") || s.contains("ipython") => "llama3_json",
        _ => "hermes",
    }
}

/// The builtin component `bytes` as one parser per [`BUILTIN_FORMATS`]
/// entry, named after it.
pub fn builtin(runtime: &PluginRuntime, bytes: &[u8]) -> Result<Vec<(&'static str, WasmToolParser)>, PluginError> {
    let component = runtime.load_tool_parser("builtin:tool-parser@0.1.0", bytes, runtime.limits().clone())?;
    BUILTIN_FORMATS
        .into_iter()
        .map(|format| {
            let config = vec![("format".into(), ConfigValue::Text(format.into()))];
            Ok((format, WasmToolParser::new(component.clone(), config)?))
        })
        .collect()
}

/// A tool parser's failure as the client sees it: a refusal of what the
/// request gave it is a 400 on `param`; a fault is `plugin_failed`.
pub fn api_error(e: PluginError, param: &str) -> ApiError {
    match e {
        PluginError::Refused { message, .. } => ApiError::invalid(param, format!("the tool parser refused it: {message}")),
        other => ApiError::PluginFailed(other.to_string()),
    }
}
