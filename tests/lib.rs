//! Shared helpers for the end-to-end tests: where the model and the
//! fixtures are, small drivers around the engine, and a real server on
//! loopback ([`TestServer`]).

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use weft_engine::kv_cache::KvStorage;
use weft_engine::model::{BatchToken, ForwardBatch, LlamaModel};
use weft_engine::{Engine, EngineConfig, GenerationRequest, LoadedModel, Output};
use weft_plugin_runtime::bindings::weft::plugin::types::ConfigValue;
use weft_types::SamplingParams;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// A file under `tests/data/`.
pub fn data(rel: &str) -> PathBuf {
    repo_root().join("tests/data").join(rel)
}

/// Path of the default model: `$WEFT_TEST_MODEL`, else the store's copy
/// (`$WEFT_HOME`, else the XDG cache), which `weft pull` puts there.
pub fn default_model_path() -> PathBuf {
    if let Some(p) = std::env::var_os("WEFT_TEST_MODEL") {
        return PathBuf::from(p);
    }
    let root = match std::env::var_os("WEFT_HOME") {
        Some(h) if !h.is_empty() => PathBuf::from(h),
        _ => std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .expect("HOME or XDG_CACHE_HOME is set")
            .join("weft"),
    };
    let path = root.join("models/smollm2-135m-instruct-q4_1.gguf");
    assert!(path.is_file(), "{} is missing: run `cargo run --release -p weft -- pull` first", path.display());
    path
}

/// The default model, loaded once per test binary.
pub fn default_model() -> &'static LoadedModel {
    static MODEL: OnceLock<LoadedModel> = OnceLock::new();
    MODEL.get_or_init(|| LoadedModel::open(&default_model_path()).expect("default model loads"))
}

/// An engine over the default model with the given pool size and step budget.
pub fn engine_with(num_blocks: usize, max_batch_tokens: usize) -> Engine {
    engine_tuned(|config| {
        config.num_blocks = num_blocks;
        config.max_batch_tokens = max_batch_tokens;
        // A budget holds a decode token for each running sequence (the
        // engine would raise a smaller one).
        config.max_running = config.max_running.min(max_batch_tokens);
    })
}

/// An engine over the default model with its configuration adjusted by `tune`.
pub fn engine_tuned(tune: impl FnOnce(&mut EngineConfig)) -> Engine {
    let m = default_model();
    let mut config = EngineConfig::for_model(&m.model, 64 << 20);
    tune(&mut config);
    Engine::new(Arc::clone(&m.model), Arc::clone(&m.tokenizer), config)
}

/// A request for `prompt` with `params`.
pub fn request(prompt: &[u32], params: SamplingParams) -> GenerationRequest {
    GenerationRequest::new(prompt.to_vec(), params)
}

/// Drive `engine` until idle; returns every output in order.
pub fn run_to_completion(engine: &mut Engine) -> Vec<Output> {
    let mut all = Vec::new();
    let mut guard = 0;
    while engine.has_work() {
        all.extend(engine.step());
        guard += 1;
        assert!(guard < 100_000, "engine did not finish");
    }
    all
}

/// Tokens generated for request `id`, concatenated across steps.
pub fn tokens_of(outputs: &[Output], id: u64) -> Vec<u32> {
    outputs.iter().filter(|o| o.id == id).flat_map(|o| o.tokens.clone()).collect()
}

/// Logits at every position of `tokens` in one single-sequence pass.
pub fn all_logits(model: &LlamaModel, tokens: &[u32]) -> Vec<f32> {
    let bs = 16;
    let blocks = tokens.len().div_ceil(bs);
    let mut kv = KvStorage::new(model.config.layers, blocks, bs, model.config.kv_dim(), model.config.kv_precision());
    let table: Vec<u32> = (0..blocks as u32).collect();
    let batch = ForwardBatch {
        tokens: tokens.iter().enumerate().map(|(pos, &token)| BatchToken { token, pos, seq: 0, logits: true }).collect(),
        block_tables: vec![&table],
    };
    model.forward(&batch, &mut kv)
}

/// A real `weft-server` on a free loopback port, serving the default model
/// from its own runtime thread; stopped (drained) when dropped.
pub struct TestServer {
    pub base: String,
    pub addr: std::net::SocketAddr,
    /// The gRPC listener (always on for tests, on a free port).
    pub grpc_addr: std::net::SocketAddr,
    pub engine: weft_server::EngineHandle,
    agent: ureq::Agent,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A response as the tests look at it.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The `data:` payloads of an SSE body, in order.
    pub fn sse_data(&self) -> Vec<String> {
        self.body.lines().filter_map(|l| l.strip_prefix("data: ")).map(str::to_string).collect()
    }
}

impl TestServer {
    /// Start with the default engine sizing.
    pub fn start() -> Self {
        Self::start_with(|_| {}, weft_server::ServerConfig::default())
    }

    /// Start with the builtin guide plugin enabled (guided generation).
    pub fn start_guided() -> Self {
        Self::start_guided_with(weft_server::ServerConfig::default())
    }

    /// [`Self::start_guided`] with `config`.
    pub fn start_guided_with(config: weft_server::ServerConfig) -> Self {
        Self::launch(|_| {}, config, Some((weft_plugin_artifacts::GUIDE_NAME, weft_plugin_artifacts::GUIDE)), None)
    }

    /// Start with the builtin auth plugin configured by `config`.
    pub fn start_with_auth(config: Vec<(String, ConfigValue)>) -> Self {
        Self::start_with_auth_and(config, weft_server::ServerConfig::default())
    }

    /// [`Self::start_with_auth`] with the server configured by `server`.
    pub fn start_with_auth_and(config: Vec<(String, ConfigValue)>, server: weft_server::ServerConfig) -> Self {
        Self::launch(|_| {}, server, None, Some(config))
    }

    /// Start with the guide component at `path` (a test fixture) enabled.
    pub fn start_with_guide(path: &str) -> Self {
        let bytes: &'static [u8] = Box::leak(std::fs::read(path).expect("the fixture was built").into_boxed_slice());
        Self::launch(|_| {}, weft_server::ServerConfig::default(), Some(("test:guide", bytes)), None)
    }

    /// Start with the engine config adjusted by `tune` and `config` (whose
    /// address is replaced by a free loopback port).
    pub fn start_with(tune: impl FnOnce(&mut EngineConfig), config: weft_server::ServerConfig) -> Self {
        Self::launch(tune, config, None, None)
    }

    fn launch(
        tune: impl FnOnce(&mut EngineConfig),
        mut config: weft_server::ServerConfig,
        guide: Option<(&'static str, &'static [u8])>,
        auth: Option<Vec<(String, ConfigValue)>>,
    ) -> Self {
        config.http_addr = ([127, 0, 0, 1], 0).into();
        config.grpc_addr = Some(([127, 0, 0, 1], 0).into());
        let loaded = LoadedModel::open(&default_model_path()).expect("default model loads");
        let mut engine_config = EngineConfig::for_model(&loaded.model, 64 << 20);
        tune(&mut engine_config);
        // The production path: tokens are chosen by the builtin sampler plugin.
        let mut engine = Engine::new(Arc::clone(&loaded.model), Arc::clone(&loaded.tokenizer), engine_config);
        let plugins = Arc::new(plugin_runtime());
        engine.set_sampler(Box::new(builtin_sampler_in(&plugins)));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            runtime.block_on(async move {
                let mut server = weft_server::Server::bind(loaded, engine, plugins, config).await.expect("server binds");
                if let Some((name, bytes)) = guide {
                    server.enable_guide(name, bytes);
                }
                server.enable_tool_parsers(weft_plugin_artifacts::TOOL_PARSER).expect("the builtin tool parsers start");
                if let Some(config) = auth {
                    server.enable_auth(weft_plugin_artifacts::AUTH_NAME, weft_plugin_artifacts::AUTH, config).expect("the auth plugin starts");
                }
                let grpc = server.grpc_local_addr().expect("gRPC is on");
                ready_tx.send((server.local_addr().unwrap(), grpc, server.engine())).unwrap();
                server.serve(async move { stopped.await.ok(); }).await.expect("server runs");
            });
        });
        let (addr, grpc_addr, engine) = ready_rx.recv().expect("server started");
        let agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        Self { base: format!("http://{addr}"), addr, grpc_addr, engine, agent, stop: Some(stop), thread: Some(thread) }
    }

    fn reply(result: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Reply {
        let mut resp = result.expect("the server answers");
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        let status = resp.status().as_u16();
        let body = resp.body_mut().read_to_string().expect("a readable body");
        Reply { status, headers, body }
    }

    /// POST a JSON value.
    pub fn post(&self, path: &str, body: &serde_json::Value) -> Reply {
        self.post_raw(path, "application/json", body.to_string().as_bytes())
    }

    /// POST raw bytes with a content type.
    pub fn post_raw(&self, path: &str, content_type: &str, body: &[u8]) -> Reply {
        self.post_with(path, &[("content-type", content_type)], body)
    }

    /// POST raw bytes with extra headers.
    pub fn post_with(&self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
        let mut req = self.agent.post(format!("{}{path}", self.base));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        Self::reply(req.send(body))
    }

    pub fn get(&self, path: &str) -> Reply {
        Self::reply(self.agent.get(format!("{}{path}", self.base)).call())
    }

    /// GET with extra headers.
    pub fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        let mut req = self.agent.get(format!("{}{path}", self.base));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        Self::reply(req.call())
    }

    /// DELETE with extra headers.
    pub fn delete_with(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        let mut req = self.agent.delete(format!("{}{path}", self.base));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        Self::reply(req.call())
    }

    /// Deploy `component` with its TOML `manifest` through the admin API
    /// (a `multipart/form-data` body), with the admin bearer `token`.
    pub fn deploy_manifest(&self, token: &str, manifest: &str, component: &[u8]) -> Reply {
        let boundary = "weft-test-boundary-4c1f";
        let mut body = format!("--{boundary}\r\ncontent-disposition: form-data; name=\"manifest\"\r\n\r\n{manifest}\r\n--{boundary}\r\ncontent-disposition: form-data; name=\"component\"\r\n\r\n").into_bytes();
        body.extend(component);
        body.extend(format!("\r\n--{boundary}--\r\n").bytes());
        let auth = format!("Bearer {token}");
        let content_type = format!("multipart/form-data; boundary={boundary}");
        self.post_with("/admin/v1/plugins", &[("authorization", &auth), ("content-type", &content_type)], &body)
    }

    /// POST without a body, with extra headers.
    pub fn post_empty_with(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.post_with(path, headers, &[])
    }

    /// Wait until `done` holds for the engine's gauges, up to `timeout`.
    pub fn wait_for(&self, timeout: std::time::Duration, done: impl Fn(&weft_server::EngineGauges) -> bool) -> bool {
        let start = std::time::Instant::now();
        while start.elapsed() < timeout {
            if done(self.engine.gauges()) {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        done(self.engine.gauges())
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The builtin sampler plugin (the component built from `plugins/sampler`),
/// ready to give to an engine.
pub fn builtin_sampler() -> weft_plugin_runtime::WasmSampler {
    builtin_sampler_in(&plugin_runtime())
}

/// A plugin runtime with the production limits and no compiled cache.
pub fn plugin_runtime() -> weft_plugin_runtime::PluginRuntime {
    weft_plugin_runtime::PluginRuntime::new(weft_plugin_runtime::Limits::default()).expect("the plugin runtime starts")
}

fn builtin_sampler_in(runtime: &weft_plugin_runtime::PluginRuntime) -> weft_plugin_runtime::WasmSampler {
    let component = runtime.load_sampler("builtin:sampler@0.1.0", weft_plugin_artifacts::SAMPLER).expect("the builtin sampler loads");
    component.sampler(Vec::new()).expect("the builtin sampler starts")
}
