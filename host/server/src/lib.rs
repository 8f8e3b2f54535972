//! Weft's serving layer as a library: the OpenAI-compatible HTTP API over
//! the engine.
//!
//! [`Server::bind`] takes a loaded model and a [`ServerConfig`], starts the
//! engine thread ([`engine_task`]) and listens; [`Server::serve`] runs until
//! the shutdown future resolves, then drains. The `weft serve` command is a
//! thin shell over this, and tests and embedders use it directly.
//!
//! An HTTP request goes: [`extract`] (media type, size, JSON) →
//! [`validate`] (`Valid*` values) → [`prepare`] (tokenization on a bounded
//! blocking pool, choices) → [`engine_task`] admission → [`generate`]
//! (collect or stream) → the [`openai`] response types. A gRPC request
//! ([`grpc`]) becomes the same validated values and takes the same path.
//! Every failure is an [`ApiError`], mapped to HTTP in one place
//! ([`error`]) and to gRPC status in one place ([`grpc::status`]).
//!
//! The admin API ([`routes`]'s `/admin/v1`) and the watched plugin folder
//! ([`plugin_dir`]) deploy sampler plugins ([`plugins`], described by a
//! [`manifest`]); requests choose them by name. Not here yet: TLS and
//! authentication (the auth plugin).

pub mod auth;
pub mod config;
pub mod engine_task;
pub mod error;
pub mod extract;
pub mod generate;
pub mod grpc;
pub mod guides;
pub mod manifest;
pub mod plugin_dir;
pub mod metrics;
pub mod openai;
pub mod openapi;
pub mod plugin_store;
pub mod plugins;
pub mod prepare;
pub mod rate_limit;
mod routes;
mod tls;
pub mod tool_parsers;
pub mod tools;
pub mod validate;

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use weft_engine::chat_template::ChatTemplate;
use weft_engine::tokenizer::Tokenizer;
use weft_engine::{Engine, LoadedModel};

pub use config::{ServerConfig, TlsFiles};
pub use engine_task::{EngineGauges, EngineHandle};
pub use error::ApiError;

/// Sent as `system_fingerprint`: the Weft version that produced a response.
pub(crate) const SYSTEM_FINGERPRINT: &str = concat!("weft-", env!("CARGO_PKG_VERSION"));

/// The model a server answers for.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    /// The model's name; `default` is accepted as an alias.
    pub name: String,
    pub created: u64,
    pub context: usize,
    pub vocab: usize,
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub(crate) engine: EngineHandle,
    pub(crate) model: Arc<ModelInfo>,
    pub(crate) tokenizer: Arc<Tokenizer>,
    pub(crate) template: Option<Arc<ChatTemplate>>,
    pub(crate) config: Arc<ServerConfig>,
    pub(crate) metrics: Arc<metrics::Metrics>,
    pub(crate) plugins: Arc<plugins::Plugins>,
    pub(crate) runtime: Arc<weft_plugin_runtime::PluginRuntime>,
    /// The tool parser requests get when they name none (the format of the
    /// model's chat template); `None` until the builtins are enabled.
    pub(crate) default_tool_parser: Option<&'static str>,
    /// The guide plugin for guided generation, if the server has one.
    pub(crate) guide: Option<Arc<guides::GuidePlugin>>,
    /// Where deploys are persisted, if the server has a state directory.
    pub(crate) plugin_store: Option<Arc<plugin_store::PluginStore>>,
    /// The name (in `plugins.auths`) of the auth plugin every API request
    /// is authenticated with; unset leaves the API open ([`auth`]). Set
    /// once, at startup or by the first auth deploy, and never unset.
    pub(crate) auth: Arc<std::sync::OnceLock<String>>,
    /// Requests per minute per tenant, by rate-limit class.
    pub(crate) rate_limiter: Arc<rate_limit::RateLimiter>,
    blocking: Arc<Semaphore>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").field("model", &self.model).finish()
    }
}

impl AppState {
    /// Run blocking work (tokenizing, templating) on the blocking pool,
    /// at most `tokenizer_workers` jobs at once.
    pub(crate) async fn blocking<T: Send + 'static>(&self, job: impl FnOnce() -> T + Send + 'static) -> Result<T, ApiError> {
        let _permit = self.blocking.acquire().await.map_err(|_| ApiError::NotReady("shutting down".into()))?;
        tokio::task::spawn_blocking(job).await.map_err(|e| ApiError::Internal(format!("a tokenizer job failed: {e}")))
    }

    /// Resolve the `model` field of a request, for `principal` if the
    /// request was authenticated.
    pub(crate) fn check_model(&self, requested: Option<&str>, principal: Option<&weft_plugin_runtime::Principal>) -> Result<(), ApiError> {
        match requested {
            None | Some("default") => auth::check_model(principal, "default", &self.model.name),
            Some(name) if name == self.model.name => auth::check_model(principal, name, &self.model.name),
            Some(other) => Err(ApiError::ModelNotFound(other.to_string())),
        }
    }

    /// The deployed guide a request names (body field first, then the
    /// `x-weft-guide` header), else its tenant's default; `None`: the
    /// server's builtin guide.
    pub(crate) fn select_guide(
        &self,
        field: Option<&str>,
        header: Option<&str>,
        principal: Option<&weft_plugin_runtime::Principal>,
    ) -> Result<Option<weft_plugin_runtime::WasmGuide>, ApiError> {
        let Some(name) = field.or(header).or_else(|| principal.and_then(|p| p.default_plugin("guide"))) else { return Ok(None) };
        auth::check_plugin(principal, name)?;
        let resolved = self.plugins.guides.resolve(name)?;
        if resolved.rolled_back {
            self.rolled_back(name);
        }
        Ok(Some(resolved.handle))
    }

    /// The tool parser a request names (body field first, then the
    /// `x-weft-tool-parser` header), else its tenant's default, else the
    /// server's; `None` when the server has none and nobody names one.
    pub(crate) fn select_tool_parser(
        &self,
        field: Option<&str>,
        header: Option<&str>,
        principal: Option<&weft_plugin_runtime::Principal>,
    ) -> Result<Option<weft_plugin_runtime::WasmToolParser>, ApiError> {
        let named = field.or(header).or_else(|| principal.and_then(|p| p.default_plugin("tool-parser")));
        if let Some(name) = named {
            auth::check_plugin(principal, name)?;
        }
        let Some(name) = named.or(self.default_tool_parser) else { return Ok(None) };
        let resolved = self.plugins.tool_parsers.resolve(name)?;
        if resolved.rolled_back {
            self.rolled_back(name);
        }
        Ok(Some(resolved.handle))
    }

    /// Report and persist an automatic rollback of `name`.
    fn rolled_back(&self, name: &str) {
        eprintln!("weft: {}", self.plugins.get(name).ok().and_then(|i| i.last_event).unwrap_or_default());
        if let Some(store) = &self.plugin_store
            && let Err(e) = self.plugins.stored(name).and_then(|s| store.save(name, &s, None).map_err(|e| ApiError::Internal(e.to_string())))
        {
            eprintln!("weft: the automatic rollback of {name} was not persisted: {e}");
        }
    }

    /// The engine sampler a request names (body field first, then the
    /// `x-weft-sampler` header), else its tenant's default, else the
    /// server's; with the `name@version` it resolved to (for the response's
    /// `x-weft-sampler` header).
    pub(crate) fn select_sampler(
        &self,
        field: Option<&str>,
        header: Option<&str>,
        principal: Option<&weft_plugin_runtime::Principal>,
    ) -> Result<(weft_engine::SamplerId, String), ApiError> {
        let tenant_default = principal.and_then(|p| p.default_plugin("sampler"));
        let Some(name) = field.or(header).or(tenant_default) else { return Ok((weft_engine::DEFAULT_SAMPLER, "default".into())) };
        auth::check_plugin(principal, name)?;
        let resolved = self.plugins.samplers.resolve(name)?;
        if resolved.rolled_back {
            self.rolled_back(name);
        }
        Ok((resolved.handle, format!("{name}@{}", resolved.version)))
    }

    pub(crate) fn limits(&self) -> validate::ModelLimits {
        let context = self.model.context;
        validate::ModelLimits {
            vocab: self.model.vocab,
            context,
            max_output: self.config.max_output_tokens.map_or(context, |m| m.clamp(1, context)),
            max_choices: self.config.max_choices,
        }
    }
}


/// Why [`Server::enable_auth`] failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    #[error(transparent)]
    Plugin(#[from] weft_plugin_runtime::PluginError),
    #[error("the server already authenticates with `{0}`")]
    AlreadyEnabled(String),
}

/// A name's stored versions with their components, as the store loads them.
type StoredPlugin = (String, plugin_store::StoredName, Vec<Vec<u8>>);

/// Load the stored deploys back: every kept version (samplers into the
/// engine), in deploy order, then each name's active version. A version
/// that no longer loads is reported and skipped. The auth plugin's name is
/// returned, not loaded: its startup version (if the server has one) must
/// come first ([`Server::enable_auth`]).
fn restore_plugins(
    store: &plugin_store::PluginStore,
    runtime: &weft_plugin_runtime::PluginRuntime,
    engine: &mut Engine,
    plugins: &plugins::Plugins,
    tokenizer: &Arc<Tokenizer>,
) -> Option<StoredPlugin> {
    let mut auth = None;
    for stored in store.load() {
        if stored.1.versions.first().is_some_and(|v| v.kind == manifest::PluginKind::Auth) {
            auth = Some(stored);
            continue;
        }
        restore_name(stored, runtime, Some(&mut *engine), plugins, tokenizer);
    }
    auth
}

/// Load one stored name's versions and make its stored active version
/// active again. Samplers need the `engine`.
fn restore_name(
    (name, stored, components): StoredPlugin,
    runtime: &weft_plugin_runtime::PluginRuntime,
    mut engine: Option<&mut Engine>,
    plugins: &plugins::Plugins,
    tokenizer: &Arc<Tokenizer>,
) {
    for (v, component) in stored.versions.iter().zip(components) {
        let label = format!("{name}@{}", v.version);
        let restored = semver::Version::parse(&v.version).map_err(|e| e.to_string()).and_then(|version| {
            let manifest = v.manifest(&name, version);
            let limits = manifest.limits(runtime.limits()).map_err(|e| e.to_string())?;
            let config = manifest.init_config();
            match manifest.kind {
                manifest::PluginKind::Guide => {
                    let guide = guides::deployed(runtime, &label, &component, limits, config, tokenizer).map_err(|e| e.to_string())?;
                    let deployed = plugins::Deployed { manifest, health: Some(guide.health()), handle: guide, canary: None };
                    plugins.guides.activate(&name, deployed).map(drop).map_err(|e| e.to_string())
                }
                manifest::PluginKind::ToolParser => {
                    let parser = runtime
                        .load_tool_parser(&label, &component, limits)
                        .and_then(|c| weft_plugin_runtime::WasmToolParser::new(c, config))
                        .map_err(|e| e.to_string())?;
                    let deployed = plugins::Deployed { manifest, health: Some(parser.health()), handle: parser, canary: None };
                    plugins.tool_parsers.activate(&name, deployed).map(drop).map_err(|e| e.to_string())
                }
                manifest::PluginKind::Auth => {
                    let auth = runtime
                        .load_auth(&label, &component, limits)
                        .and_then(|c| weft_plugin_runtime::WasmAuth::new(c, config))
                        .map_err(|e| e.to_string())?;
                    let deployed = plugins::Deployed { manifest, health: Some(auth.health()), handle: Arc::new(auth), canary: None };
                    plugins.auths.activate(&name, deployed).map(drop).map_err(|e| e.to_string())
                }
                _ => {
                    let engine = engine.as_deref_mut().ok_or("a sampler needs the engine")?;
                    let sampler = runtime.load_sampler_with(&label, &component, limits).and_then(|c| c.sampler(config)).map_err(|e| e.to_string())?;
                    let health = Some(sampler.health());
                    let handle = engine.add_sampler(Box::new(sampler));
                    let retired = plugins.samplers.activate(&name, plugins::Deployed { manifest, handle, health, canary: None });
                    retired.map(|ids| ids.into_iter().for_each(|id| engine.retire_sampler(id))).map_err(|e| e.to_string())
                }
            }
        });
        if let Err(e) = restored {
            eprintln!("weft: the stored plugin {label} was not restored: {e}");
        }
    }
    if let Ok(active) = semver::Version::parse(&stored.active) {
        let _ = plugins.set_active(&name, &active, stored.canary);
    }
}

/// A bound, not yet serving, HTTP server.
pub struct Server {
    listener: TcpListener,
    grpc_listener: Option<TcpListener>,
    /// Set when the HTTP API is served over TLS.
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// The PEM certificate chain and key, for gRPC over TLS.
    tls_pem: Option<(Vec<u8>, Vec<u8>)>,
    /// The auth plugin's stored deploys, loaded by [`Server::enable_auth`]
    /// over its startup version, or by [`Server::serve`] on their own.
    stored_auth: Option<StoredPlugin>,
    state: AppState,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("http", &self.listener.local_addr().ok()).field("tls", &self.tls.is_some()).finish()
    }
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Server {
    /// Serve `loaded` through `engine` (built over the same model, with its
    /// samplers set), loading plugins through `runtime`, and bind the
    /// listeners.
    pub async fn bind(
        loaded: LoadedModel,
        mut engine: Engine,
        runtime: Arc<weft_plugin_runtime::PluginRuntime>,
        config: ServerConfig,
    ) -> std::io::Result<Self> {
        // Requests may name `default` (the engine's default sampler) or
        // `native` (the host's reference sampler); deploys add more.
        let native = engine.add_sampler(Box::new(weft_engine::sampling::NativeSampler));
        let plugins = plugins::Plugins::new(config.breaker.clone());
        for (name, handle) in [("default", weft_engine::DEFAULT_SAMPLER), ("native", native)] {
            let manifest = manifest::Manifest::plain(name, semver::Version::new(0, 1, 0), Default::default());
            let builtin = plugins::Deployed { manifest, handle, health: None, canary: None };
            plugins.samplers.activate(name, builtin).map_err(std::io::Error::other)?;
        }
        let (plugin_store, stored_auth) = match &config.state_dir {
            None => (None, None),
            Some(dir) => {
                let store = plugin_store::PluginStore::open(dir).map_err(std::io::Error::other)?;
                let auth = restore_plugins(&store, &runtime, &mut engine, &plugins, &loaded.tokenizer);
                (Some(Arc::new(store)), auth)
            }
        };
        let model = ModelInfo {
            name: loaded.name.clone(),
            created: unix_now(),
            context: loaded.model.config.context_length,
            vocab: loaded.model.config.vocab_size,
        };
        let config_tls = config.tls.clone();
        let handle = EngineHandle::spawn(engine, config.max_queued)?;
        let listener = TcpListener::bind(config.http_addr).await?;
        let grpc_listener = match config.grpc_addr {
            Some(addr) => Some(TcpListener::bind(addr).await?),
            None => None,
        };
        let state = AppState {
            metrics: Arc::new(metrics::Metrics::new(handle.clone())),
            engine: handle,
            model: Arc::new(model),
            tokenizer: loaded.tokenizer,
            template: loaded.template.map(Arc::new),
            plugins: Arc::new(plugins),
            runtime,
            guide: None,
            plugin_store,
            auth: Arc::default(),
            rate_limiter: Arc::new(rate_limit::RateLimiter::new(config.rate_limits.clone())),
            default_tool_parser: None,
            blocking: Arc::new(Semaphore::new(config.tokenizer_workers.max(1))),
            config: Arc::new(config),
        };
        let tls = config_tls.as_ref().map(tls::acceptor).transpose()?;
        let tls_pem = match &config_tls {
            Some(files) => Some((std::fs::read(&files.cert)?, std::fs::read(&files.key)?)),
            None => None,
        };
        Ok(Self { listener, grpc_listener, tls, tls_pem, stored_auth, state })
    }

    /// Serve guided generation (`response_format`, `weft.regex`,
    /// `weft.lark`) with the guide component `bytes`, which loads in the
    /// background; guided requests wait for it, others never do.
    pub fn enable_guide(&mut self, name: &str, bytes: &'static [u8]) {
        let plugin = guides::GuidePlugin::load(self.state.runtime.clone(), name.into(), bytes, self.state.tokenizer.clone());
        self.state.guide = Some(plugin);
    }

    /// Serve tool calling with the builtin tool-parser component `bytes`
    /// (one parser per format it knows; the model's chat template chooses
    /// the default).
    pub fn enable_tool_parsers(&mut self, bytes: &[u8]) -> Result<(), weft_plugin_runtime::PluginError> {
        // Their names are reserved: no deploy (and so no stored one) has them.
        for (name, parser) in tool_parsers::builtin(&self.state.runtime, bytes)? {
            let manifest = manifest::Manifest::plain(name, semver::Version::new(0, 1, 0), Default::default());
            let builtin = plugins::Deployed { manifest, health: Some(parser.health()), handle: parser, canary: None };
            if let Err(e) = self.state.plugins.tool_parsers.activate(name, builtin) {
                eprintln!("weft: the builtin tool parser {name} is unavailable: {e}");
            }
        }
        self.state.default_tool_parser =
            Some(tool_parsers::default_for_template(self.state.template.as_ref().map(|t| t.source())));
        Ok(())
    }

    /// Authenticate every API request with the auth component `bytes`,
    /// configured with `config` (it gets the real clock, for token expiry),
    /// as the startup version of `name`. Versions of `name` deployed at
    /// run time and kept in the state directory load over it, with the
    /// version that was active. Loaded now: a server with auth never serves
    /// before it is ready.
    pub fn enable_auth(
        &mut self,
        name: &str,
        bytes: &[u8],
        config: Vec<(String, weft_plugin_runtime::bindings::weft::plugin::types::ConfigValue)>,
    ) -> Result<(), AuthSetupError> {
        let state = &self.state;
        if let Some(current) = state.auth.get() {
            return Err(AuthSetupError::AlreadyEnabled(current.clone()));
        }
        let mut limits = state.runtime.limits().clone();
        limits.grants.clock = true;
        let component = state.runtime.load_auth(&format!("{name}@0.1.0"), bytes, limits)?;
        let auth = weft_plugin_runtime::WasmAuth::new(component, config.clone())?;
        let mut manifest = manifest::Manifest::plain(name, semver::Version::new(0, 1, 0), Default::default());
        manifest.kind = manifest::PluginKind::Auth;
        let deployed = plugins::Deployed { manifest, health: Some(auth.health()), handle: Arc::new(auth), canary: None };
        state.plugins.auths.activate_startup(name, deployed).map_err(|e| AuthSetupError::AlreadyEnabled(format!("{name} ({e})")))?;
        let _ = state.auth.set(name.to_string());
        match self.stored_auth.take() {
            Some(stored) if stored.0 == name => self.restore_auth(stored),
            Some((other, ..)) => eprintln!("weft: the stored auth plugin `{other}` is not loaded: the server authenticates with `{name}`"),
            None => {}
        }
        Ok(())
    }

    /// Load the auth plugin's stored deploys and authenticate with them.
    fn restore_auth(&self, stored: StoredPlugin) {
        let state = &self.state;
        let name = stored.0.clone();
        restore_name(stored, &state.runtime, None, &state.plugins, &state.tokenizer);
        if state.plugins.auths.contains(&name) {
            let _ = state.auth.set(name);
        }
    }

    /// Where the HTTP API listens.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Where the gRPC API listens, if it is enabled.
    pub fn grpc_local_addr(&self) -> Option<SocketAddr> {
        self.grpc_listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The engine's live figures (tests assert KV blocks come back).
    pub fn engine(&self) -> EngineHandle {
        self.state.engine.clone()
    }

    /// Serve HTTP (and gRPC) until `shutdown` resolves, then stop
    /// accepting and let in-flight requests finish.
    pub async fn serve(mut self, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        // An auth plugin deployed at run time, on a server started without
        // one: it keeps authenticating after the restart.
        if let Some(stored) = self.stored_auth.take() {
            self.restore_auth(stored);
        }
        let (stop, stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop.send(true);
        });
        let until_stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stopped| *stopped).await;
        };
        if let Some(dir) = self.state.config.plugin_dir.clone() {
            plugin_dir::watch(dir.clone(), self.state.clone())
                .map_err(|e| std::io::Error::other(format!("watching the plugin folder {}: {e}", dir.display())))?;
        }
        let router = routes::router(self.state.clone());
        let http: std::pin::Pin<Box<dyn Future<Output = std::io::Result<()>> + Send>> = match self.tls {
            Some(acceptor) => Box::pin(tls::serve(self.listener, acceptor, router, until_stopped(stopped.clone()))),
            None => Box::pin(axum::serve(self.listener, router).with_graceful_shutdown(until_stopped(stopped.clone())).into_future()),
        };
        match self.grpc_listener {
            Some(listener) => {
                let grpc = grpc::serve(listener, self.state, self.tls_pem, until_stopped(stopped));
                tokio::try_join!(http, grpc).map(|_| ())
            }
            None => http.await,
        }
    }
}
