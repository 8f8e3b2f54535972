//! The guide plugin behind guided generation: loaded in the background at
//! startup (compiling a component takes seconds; serving must not wait for
//! it), then asked to compile each guided choice's constraint on the
//! blocking pool, off the engine thread.

use std::sync::{Arc, OnceLock};

use weft_engine::tokenizer::Tokenizer;
use weft_plugin_runtime::{GuidedSequence, PluginRuntime, WasmGuide};

use crate::error::ApiError;

/// A constraint a request asked for, checked for shape but not compiled.
#[derive(Clone, Debug, PartialEq)]
pub struct Constraint {
    /// `json-schema`, `json-object`, `regex` or `lark`.
    pub kind: &'static str,
    pub source: String,
    /// The request field it came from, for errors.
    pub param: &'static str,
}

/// The server's guide plugin, once loaded.
#[derive(Debug, Default)]
pub struct GuidePlugin {
    loaded: OnceLock<Result<WasmGuide, String>>,
}

impl GuidePlugin {
    /// Start loading `bytes` as the guide for `tokenizer`'s vocabulary on a
    /// background thread.
    pub fn load(runtime: Arc<PluginRuntime>, name: String, bytes: &'static [u8], tokenizer: Arc<Tokenizer>) -> Arc<Self> {
        let plugin = Arc::new(Self::default());
        let target = plugin.clone();
        let spawned = std::thread::Builder::new().name("weft-guide-load".into()).spawn(move || {
            let loaded = runtime
                .load_guide(&name, bytes)
                .and_then(|component| {
                    let (vocab, eos) = (vocabulary(&tokenizer), tokenizer.eog_tokens().to_vec());
                    WasmGuide::with_tokenizer(component, vocab, eos, Vec::new(), Some(tokenize(&tokenizer)))
                })
                .map_err(|e| e.to_string());
            if let Err(e) = &loaded {
                eprintln!("weft: the guide plugin did not load, guided generation is unavailable: {e}");
            }
            let _ = target.loaded.set(loaded);
        });
        if let Err(e) = spawned {
            let _ = plugin.loaded.set(Err(format!("could not start loading the guide plugin: {e}")));
        }
        plugin
    }

    /// Compile `constraint` once per choice (blocks until the plugin has
    /// loaded). A constraint the guide rejects is a 400 naming the field.
    pub fn compile(&self, constraint: &Constraint, choices: usize) -> Result<Vec<GuidedSequence>, ApiError> {
        let guide = self.loaded.wait().as_ref().map_err(|e| ApiError::NotReady(format!("guided generation is unavailable: {e}")))?;
        compile_on(guide, constraint, choices)
    }
}

/// Compile `constraint` once per choice on `guide` (the builtin or a
/// deployed one). A constraint the guide rejects is a 400 naming the field.
pub fn compile_on(guide: &WasmGuide, constraint: &Constraint, choices: usize) -> Result<Vec<GuidedSequence>, ApiError> {
    (0..choices)
        .map(|_| {
            guide.sequence(constraint.kind, &constraint.source).map_err(|e| match e {
                weft_plugin_runtime::PluginError::Refused { message, .. } => ApiError::invalid(
                    constraint.param,
                    format!("the {} constraint cannot be used: {message}", constraint.kind),
                ),
                // Only the checking instance ran it: the constraint
                // itself is too big or too slow for the guide's limits.
                weft_plugin_runtime::PluginError::Call { phase: "compile", reason, .. } => ApiError::invalid(
                    constraint.param,
                    format!("the {} constraint exceeds the guide's limits: the compilation {reason}", constraint.kind),
                ),
                other => ApiError::PluginFailed(other.to_string()),
            })
        })
        .collect()
}

/// A deployed guide component, configured with `config`, set up for
/// `tokenizer`'s vocabulary (slow:
/// builds the guide's tables; at deploy, on the blocking pool).
pub fn deployed(
    runtime: &PluginRuntime,
    label: &str,
    bytes: &[u8],
    limits: weft_plugin_runtime::Limits,
    config: Vec<(String, weft_plugin_runtime::bindings::weft::plugin::types::ConfigValue)>,
    tokenizer: &Arc<Tokenizer>,
) -> Result<WasmGuide, weft_plugin_runtime::PluginError> {
    let component = runtime.load_guide_with(label, bytes, limits)?;
    let (vocab, eos) = (vocabulary(tokenizer), tokenizer.eog_tokens().to_vec());
    WasmGuide::with_tokenizer(component, vocab, eos, config, Some(tokenize(tokenizer)))
}

/// The model's tokenizer behind a guide's `tokenize` import.
fn tokenize(tokenizer: &Arc<Tokenizer>) -> weft_plugin_runtime::Tokenize {
    let tokenizer = Arc::clone(tokenizer);
    Arc::new(move |text: &str| tokenizer.encode(text, false).unwrap_or_default())
}

/// Every token's bytes as the guide sees them: special tokens as `0xFF`
/// followed by their text, so no constraint can produce one as text.
fn vocabulary(tokenizer: &Tokenizer) -> Vec<Vec<u8>> {
    let special = tokenizer.special_tokens();
    (0..tokenizer.vocab_size() as u32)
        .map(|t| {
            if special.binary_search(&t).is_ok() {
                let mut bytes = vec![0xFF];
                bytes.extend(tokenizer.token_text(t).unwrap_or_default().bytes());
                bytes
            } else {
                tokenizer.token_bytes(t)
            }
        })
        .collect()
}
