//! Server settings, each with its default, unit and reason.
//!
//! The `weft serve` command fills these from flags, environment variables
//! and defaults; embedders and tests build them directly.

use std::net::SocketAddr;

/// How the server listens and how much work it admits.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Where the HTTP API listens. Default `127.0.0.1:8080`; port 0 picks a
    /// free port (the bound address is reported by [`crate::Server::local_addr`]).
    pub http_addr: SocketAddr,
    /// Where the gRPC API listens; `None` turns it off. Default
    /// `127.0.0.1:50051` (gRPC's customary port).
    pub grpc_addr: Option<SocketAddr>,
    /// Largest request body accepted, in bytes. Default 4 MiB: a full 8k
    /// context of text is ~40 KB, so this leaves room for long prompts while
    /// a 10 MB body is refused (413) before it is read.
    pub max_body_bytes: usize,
    /// Requests waiting for a running slot beyond `max_running` before new
    /// ones are refused with 503 and `retry-after`. Default 256.
    pub max_queued: usize,
    /// Most output tokens one choice may ask for, and the `max_tokens` a chat
    /// request runs with when it names none. Default `None`: the model's
    /// context length. Operators lower it to bound the work one request can
    /// ask for.
    pub max_output_tokens: Option<usize>,
    /// The bearer token the admin API (`/admin/v1/...`) requires. Default
    /// `None`: the admin API answers 403 to everyone until one is set.
    pub admin_token: Option<String>,
    /// Most choices one request may ask for (`n` × prompts). Default 16.
    pub max_choices: usize,
    /// Tokenization and chat-template jobs running at once on blocking
    /// workers; further jobs wait for a slot. Default 4.
    pub tokenizer_workers: usize,
    /// Where deployed plugins are kept (a sled database), so a restarted
    /// server comes back with the same plugins and active versions.
    /// Default `None`: deploys last until the server stops.
    pub state_dir: Option<std::path::PathBuf>,
    /// Serve HTTPS instead of HTTP with this certificate chain and private
    /// key (PEM files). Default `None`: plain HTTP.
    pub tls: Option<TlsFiles>,
    /// A folder of plugin manifests and components to deploy from, watched
    /// while the server runs ([`crate::plugin_dir`]). Default `None`.
    pub plugin_dir: Option<std::path::PathBuf>,
    /// When a plugin version counts as broken (see [`crate::plugins`]).
    pub breaker: crate::plugins::BreakerPolicy,
    /// Requests per minute per tenant, by the rate-limit class the auth
    /// plugin gives it ([`crate::rate_limit`]). Default: none (unlimited).
    pub rate_limits: std::collections::BTreeMap<String, crate::rate_limit::RateLimit>,
}

/// A certificate chain and its private key, PEM-encoded.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            http_addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            grpc_addr: Some(SocketAddr::from(([127, 0, 0, 1], 50051))),
            max_body_bytes: 4 << 20,
            max_queued: 256,
            max_output_tokens: None,
            admin_token: None,
            max_choices: 16,
            tokenizer_workers: 4,
            state_dir: None,
            tls: None,
            plugin_dir: None,
            breaker: crate::plugins::BreakerPolicy::default(),
            rate_limits: Default::default(),
        }
    }
}
