//! Errors of loading and running plugins, naming the plugin and the phase.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum PluginError {
    #[error("plugin {plugin}: the component is {size} bytes, over the limit of {limit}")]
    TooLarge { plugin: String, size: usize, limit: usize },
    #[error("plugin {plugin}: asks for {what} {asked}, over the server's {limit}")]
    OverLimit { plugin: String, what: &'static str, asked: u64, limit: u64 },
    #[error("plugin {plugin}: compile failed: {reason}")]
    Compile { plugin: String, reason: String },
    #[error("plugin {plugin}: imports {import}, which it is not granted (a plugin gets Weft's interfaces and no ambient capability)")]
    ForbiddenImport { plugin: String, import: String },
    #[error("plugin {plugin}: link failed (is it a component for the {world} world?): {reason}")]
    Link { plugin: String, world: &'static str, reason: String },
    #[error("plugin {plugin}: {phase} failed: {reason}")]
    Call { plugin: String, phase: &'static str, reason: String },
    #[error("plugin {plugin}: {phase} refused: {code}: {message}")]
    Refused { plugin: String, phase: &'static str, code: String, message: String },
}
