//! `weft serve`: load a model and serve the OpenAI-compatible HTTP API and
//! the gRPC API until Ctrl-C or SIGTERM, then drain in-flight requests.
//! Settings come from flags, then `WEFT_*` variables, then a TOML config
//! file (`--config`), then the defaults stated on each flag.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use serde::Deserialize;
use weft_plugin_runtime::bindings::weft::plugin::types::ConfigValue;
use weft_server::{Server, ServerConfig};

use crate::ModelArgs;
use crate::store::Store;

#[derive(Args, Clone, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// A TOML file with any of the settings below (kebab-case keys, plus
    /// `model` and `threads`); flags and WEFT_* variables win over it.
    #[arg(long, env = "WEFT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1].
    #[arg(long, env = "WEFT_HOST")]
    pub host: Option<IpAddr>,
    /// HTTP port; 0 picks a free one (the bound address is printed) [default: 8080].
    #[arg(long, env = "WEFT_PORT")]
    pub port: Option<u16>,
    /// gRPC port; 0 picks a free one [default: 50051].
    #[arg(long, env = "WEFT_GRPC_PORT")]
    pub grpc_port: Option<u16>,
    /// Serve HTTP only.
    #[arg(long, env = "WEFT_NO_GRPC")]
    pub no_grpc: bool,
    /// KV cache size in MiB; pages become resident only when used [default: 256].
    #[arg(long, env = "WEFT_KV_CACHE_MIB")]
    pub kv_cache_mib: Option<usize>,
    /// Most output tokens a request may ask for [default: the context length].
    #[arg(long, env = "WEFT_MAX_OUTPUT_TOKENS")]
    pub max_output_tokens: Option<usize>,
    /// Most sequences decoding at once [default: 64].
    #[arg(long, env = "WEFT_MAX_RUNNING")]
    pub max_running: Option<usize>,
    /// Most tokens one engine step computes, prefill chunks included: a
    /// smaller budget shortens the steps that carry a prompt (a steadier
    /// inter-token latency for the sequences decoding beside it) at some
    /// cost in prefill throughput. At least --max-running [default: 256 on
    /// the CPU, 512 on a GPU; raised to --max-running].
    #[arg(long, env = "WEFT_MAX_BATCH_TOKENS")]
    pub max_batch_tokens: Option<usize>,
    /// Requests waiting beyond the running ones before new ones get 503 [default: 256].
    #[arg(long, env = "WEFT_MAX_QUEUED")]
    pub max_queued: Option<usize>,
    /// Bearer token of the admin API (`/admin/v1`); without one the admin
    /// API refuses everyone.
    #[arg(long, env = "WEFT_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Keep deployed plugins in this directory, so a restart comes back
    /// with them [default: deploys last until the server stops].
    #[arg(long, env = "WEFT_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Deploy the plugins whose manifests (`*.toml`) appear in this folder,
    /// watching it while serving.
    #[arg(long, env = "WEFT_PLUGIN_DIR")]
    pub plugin_dir: Option<PathBuf>,
    /// Authenticate API requests with the builtin auth plugin configured by
    /// this TOML file (API key hashes per tenant, JWT keys; see
    /// docs/api/http.md) [default: the API is open].
    #[arg(long, env = "WEFT_AUTH")]
    pub auth: Option<PathBuf>,
    /// Serve HTTPS with this PEM certificate chain (with --tls-key).
    #[arg(long, env = "WEFT_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "WEFT_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

/// The config file: every key optional, unknown keys refused (a typo
/// should not silently fall back to a default).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ServeFile {
    model: Option<String>,
    threads: Option<usize>,
    /// "cpu", "cuda" or "cuda:N".
    device: Option<String>,
    kv_cache_type: Option<crate::device::KvCacheType>,
    host: Option<IpAddr>,
    port: Option<u16>,
    grpc_port: Option<u16>,
    no_grpc: Option<bool>,
    kv_cache_mib: Option<usize>,
    max_output_tokens: Option<usize>,
    max_running: Option<usize>,
    max_batch_tokens: Option<usize>,
    max_queued: Option<usize>,
    admin_token: Option<String>,
    state_dir: Option<PathBuf>,
    plugin_dir: Option<PathBuf>,
    auth: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    /// Requests per minute per tenant, by rate-limit class (config file
    /// only: `[rate-limits.gold]` / `requests-per-minute = 600`).
    rate_limits: Option<std::collections::BTreeMap<String, RateLimitFile>>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RateLimitFile {
    requests_per_minute: u32,
}

impl ServeArgs {
    /// Fill what flags and environment left unset from the config file;
    /// also the settings only the file has.
    fn merge_file(mut self) -> Result<(Self, FileOnly)> {
        let Some(path) = &self.config else { return Ok((self, FileOnly::default())) };
        let text = std::fs::read_to_string(path).with_context(|| format!("reading the config file {}", path.display()))?;
        let file: ServeFile = toml::from_str(&text).with_context(|| format!("in the config file {}", path.display()))?;
        self.model.model = self.model.model.or(file.model);
        self.model.threads = self.model.threads.or(file.threads);
        if self.model.device.is_none()
            && let Some(device) = &file.device
        {
            let device = device.parse().map_err(|e: String| anyhow::anyhow!("in the config file {}: device: {e}", path.display()))?;
            self.model.device = Some(device);
        }
        self.model.kv_cache_type = self.model.kv_cache_type.or(file.kv_cache_type);
        self.host = self.host.or(file.host);
        self.port = self.port.or(file.port);
        self.grpc_port = self.grpc_port.or(file.grpc_port);
        self.no_grpc = self.no_grpc || file.no_grpc.unwrap_or(false);
        self.kv_cache_mib = self.kv_cache_mib.or(file.kv_cache_mib);
        self.max_output_tokens = self.max_output_tokens.or(file.max_output_tokens);
        self.max_running = self.max_running.or(file.max_running);
        self.max_batch_tokens = self.max_batch_tokens.or(file.max_batch_tokens);
        self.max_queued = self.max_queued.or(file.max_queued);
        self.admin_token = self.admin_token.or(file.admin_token);
        self.state_dir = self.state_dir.or(file.state_dir);
        self.plugin_dir = self.plugin_dir.or(file.plugin_dir);
        self.auth = self.auth.or(file.auth);
        self.tls_cert = self.tls_cert.or(file.tls_cert);
        self.tls_key = self.tls_key.or(file.tls_key);
        let mut rate_limits = std::collections::BTreeMap::new();
        for (class, limit) in file.rate_limits.unwrap_or_default() {
            if limit.requests_per_minute == 0 {
                anyhow::bail!("in the config file {}: rate-limits.{class}.requests-per-minute must be at least 1", path.display());
            }
            rate_limits.insert(class, weft_server::rate_limit::RateLimit { requests_per_minute: limit.requests_per_minute });
        }
        Ok((self, FileOnly { rate_limits }))
    }
}

/// Settings only the config file has.
#[derive(Debug, Default)]
struct FileOnly {
    rate_limits: std::collections::BTreeMap<String, weft_server::rate_limit::RateLimit>,
}

pub fn serve(store: &Store, args: ServeArgs) -> Result<()> {
    let (args, file_only) = args.merge_file()?;
    let host = args.host.unwrap_or(IpAddr::from([127, 0, 0, 1]));
    let kv_cache_mib = args.kv_cache_mib.unwrap_or(256);
    let crate::run::Opened { path, mut loaded, backend, config: mut engine_config } =
        crate::run::open(store, &args.model, kv_cache_mib << 20)?;
    // The API's model id is the store name (`smollm2-135m-instruct-q4_1`),
    // which clients can type, rather than the file's free-text title.
    if let Some(stem) = path.file_stem().and_then(|s| s.to_str()) {
        loaded.name = stem.to_string();
    }
    engine_config.max_running = args.max_running.unwrap_or(64).max(1);
    // Every running sequence decodes one token a step: a smaller budget
    // given is refused (the engine raises its default to max-running).
    if let Some(tokens) = args.max_batch_tokens {
        anyhow::ensure!(
            tokens >= engine_config.max_running,
            "max-batch-tokens ({tokens}) must be at least max-running ({}): every running sequence decodes a token each step",
            engine_config.max_running
        );
        engine_config.max_batch_tokens = tokens;
    }
    let plugins = std::sync::Arc::new(crate::run::plugin_runtime(store)?);
    eprintln!("weft: running on {}", backend.name());
    let engine = crate::run::engine(&loaded, backend, engine_config, args.model.sampler, &plugins)?;
    let config = ServerConfig {
        http_addr: SocketAddr::new(host, args.port.unwrap_or(8080)),
        grpc_addr: (!args.no_grpc).then(|| SocketAddr::new(host, args.grpc_port.unwrap_or(50051))),
        max_queued: args.max_queued.unwrap_or(256),
        max_output_tokens: args.max_output_tokens,
        admin_token: args.admin_token.clone(),
        state_dir: args.state_dir.clone(),
        plugin_dir: args.plugin_dir.clone(),
        tls: match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => Some(weft_server::TlsFiles { cert: cert.clone(), key: key.clone() }),
            (None, None) => None,
            _ => anyhow::bail!("TLS needs both a certificate (tls-cert) and a key (tls-key)"),
        },
        rate_limits: file_only.rate_limits,
        ..ServerConfig::default()
    };
    let name = loaded.name.clone();
    let tls = config.tls.is_some();
    let auth = args.auth.as_deref().map(auth_config).transpose()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("weft-http")
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let mut server = Server::bind(loaded, engine, plugins, config).await.context("binding the listeners")?;
        server.enable_guide(weft_plugin_artifacts::GUIDE_NAME, weft_plugin_artifacts::GUIDE);
        server.enable_tool_parsers(weft_plugin_artifacts::TOOL_PARSER).context("starting the builtin tool parsers")?;
        if let Some(config) = auth {
            server
                .enable_auth(weft_plugin_artifacts::AUTH_NAME, weft_plugin_artifacts::AUTH, config)
                .context("starting the auth plugin (check the --auth file)")?;
        }
        let addr = server.local_addr()?;
        let scheme = if tls { "https" } else { "http" };
        println!("weft: serving {name} on {scheme}://{addr}");
        if let Some(grpc) = server.grpc_local_addr() {
            println!("weft: gRPC (weft.v1.Generation, health, reflection) on {grpc}");
        }
        println!("weft: try  curl {scheme}://{addr}/v1/chat/completions -H 'content-type: application/json' \\");
        println!("             -d '{{\"model\": \"default\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hello!\"}}]}}'");
        server.serve(shutdown_signal()).await.context("serving")?;
        eprintln!("weft: stopped");
        Ok(())
    })
}

/// The auth plugin's configuration from a TOML file: nested tables flatten
/// to dotted keys (`[key.acme] primary = "sha256:…"` is `key.acme.primary`).
fn auth_config(path: &std::path::Path) -> Result<Vec<(String, ConfigValue)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading the auth file {}", path.display()))?;
    let table: toml::Table = toml::from_str(&text).with_context(|| format!("in the auth file {}", path.display()))?;
    let mut out = Vec::new();
    flatten("", &table, &mut out).with_context(|| format!("in the auth file {}", path.display()))?;
    Ok(out)
}

fn flatten(prefix: &str, table: &toml::Table, out: &mut Vec<(String, ConfigValue)>) -> Result<()> {
    for (key, value) in table {
        let key = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
        let value = match value {
            toml::Value::Table(t) => {
                flatten(&key, t, out)?;
                continue;
            }
            toml::Value::String(s) => ConfigValue::Text(s.clone()),
            toml::Value::Integer(i) => ConfigValue::Integer(*i),
            toml::Value::Float(f) => ConfigValue::Number(*f),
            toml::Value::Boolean(b) => ConfigValue::Boolean(*b),
            _ => anyhow::bail!("`{key}` must be text, a number or a boolean"),
        };
        out.push((key, value));
    }
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    eprintln!("weft: shutting down; draining in-flight requests");
}
