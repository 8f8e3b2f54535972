//! The one wasmtime engine for all plugins, its linker, and loading a
//! component: size cap, compile, import check, pre-link.

use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::bindings::auth::AuthPluginPre;
use crate::bindings::guide::GuidePluginPre;
use crate::bindings::router::RouterPluginPre;
use crate::cache::CompiledCache;
use crate::bindings::{SamplerPlugin, SamplerPluginPre};
use crate::error::PluginError;
use crate::limits::Limits;
use crate::sandbox::{StoreState, import_allowed};
use crate::sampler::WasmSampler;

/// How often the epoch advances: the granularity of call deadlines. A
/// 1 ms tick cost ~5% of decode throughput on 2 cores (a thousand wake-ups
/// a second preempting the compute threads); 10 ms costs nothing
/// measurable and still stops a runaway call within 10 ms of its deadline.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Owns the wasmtime engine and the linker. The epoch ticker thread runs
/// for as long as the engine lives (the runtime or any component loaded by
/// it), so deadlines keep working after the runtime itself is dropped.
pub struct PluginRuntime {
    engine: Engine,
    linker: Arc<Linker<StoreState>>,
    limits: Limits,
    cache: Option<CompiledCache>,
}

impl std::fmt::Debug for PluginRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginRuntime").field("limits", &self.limits).field("cache", &self.cache).finish()
    }
}

fn setup(what: &str, e: impl std::fmt::Display) -> PluginError {
    PluginError::Call { plugin: "(runtime)".into(), phase: "setup", reason: format!("{what}: {e}") }
}

impl PluginRuntime {
    pub fn new(limits: Limits) -> Result<Self, PluginError> {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(64)
            .total_core_instances(512)
            .total_memories(128)
            .total_tables(128)
            .max_memory_size(limits.memory_bytes)
            .table_elements(limits.table_elements);
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .max_wasm_stack(1 << 20)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(|e| setup("engine", e))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(|e| setup("WASI", e))?;
        SamplerPlugin::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s).map_err(|e| setup("sampler world", e))?;
        let ticker_engine = engine.weak();
        std::thread::Builder::new()
            .name("weft-plugin-epoch".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(EPOCH_TICK);
                    match ticker_engine.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })
            .map_err(|e| setup("epoch ticker", e))?;
        Ok(Self { engine, linker: Arc::new(linker), limits, cache: None })
    }

    /// Keep compiled components in `dir` ([`CompiledCache`]), so loading
    /// the same bytes again (after a restart) skips compilation.
    pub fn with_cache(mut self, dir: &std::path::Path) -> Result<Self, PluginError> {
        self.cache = Some(CompiledCache::open(dir, &self.engine).map_err(|e| setup(&format!("the compiled-plugin cache {}", dir.display()), e))?);
        Ok(self)
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Check and compile a sampler component (this is the slow part: do it
    /// at deploy, never on the request path).
    pub fn load_sampler(&self, name: &str, bytes: &[u8]) -> Result<SamplerComponent, PluginError> {
        self.load_sampler_with(name, bytes, self.limits.clone())
    }

    /// [`Self::load_sampler`] with its own `limits` (a manifest's, at most
    /// the runtime's: the pool's instances are sized by those) and grants.
    pub fn load_sampler_with(&self, name: &str, bytes: &[u8], limits: Limits) -> Result<SamplerComponent, PluginError> {
        let over = |what, asked: u64, limit: u64| PluginError::OverLimit { plugin: name.into(), what, asked, limit };
        if limits.memory_bytes > self.limits.memory_bytes {
            return Err(over("memory bytes", limits.memory_bytes as u64, self.limits.memory_bytes as u64));
        }
        if limits.call_deadline > self.limits.call_deadline {
            let ms = |d: Duration| d.as_millis() as u64;
            return Err(over("a call deadline in ms of", ms(limits.call_deadline), ms(self.limits.call_deadline)));
        }
        let component = self.compile(name, bytes, limits.grants)?;
        let link = |e: wasmtime::Error| PluginError::Link { plugin: name.into(), world: "sampler-plugin", reason: format!("{e:#}") };
        let pre = self.linker.instantiate_pre(&component).map_err(link)?;
        let pre = SamplerPluginPre::new(pre).map_err(link)?;
        Ok(SamplerComponent { name: name.into(), pre, engine: self.engine.clone(), limits })
    }

    /// Check and compile a guide component (slow: at startup or deploy).
    pub fn load_guide(&self, name: &str, bytes: &[u8]) -> Result<GuideComponent, PluginError> {
        let component = self.compile(name, bytes, self.limits.grants)?;
        let link = |e: wasmtime::Error| PluginError::Link { plugin: name.into(), world: "guide-plugin", reason: format!("{e:#}") };
        let pre = self.linker.instantiate_pre(&component).map_err(link)?;
        let pre = GuidePluginPre::new(pre).map_err(link)?;
        Ok(GuideComponent { name: name.into(), pre, engine: self.engine.clone(), limits: self.limits.clone() })
    }

    /// Check and compile an auth component, to run under `limits` (an auth
    /// plugin that checks token expiry needs the `clock` grant).
    pub fn load_auth(&self, name: &str, bytes: &[u8], limits: Limits) -> Result<AuthComponent, PluginError> {
        let component = self.compile(name, bytes, limits.grants)?;
        let link = |e: wasmtime::Error| PluginError::Link { plugin: name.into(), world: "auth-plugin", reason: format!("{e:#}") };
        let pre = self.linker.instantiate_pre(&component).map_err(link)?;
        let pre = AuthPluginPre::new(pre).map_err(link)?;
        Ok(AuthComponent { name: name.into(), pre, engine: self.engine.clone(), limits })
    }

    /// Check and compile a router component.
    pub fn load_router(&self, name: &str, bytes: &[u8]) -> Result<RouterComponent, PluginError> {
        let component = self.compile(name, bytes, self.limits.grants)?;
        let link = |e: wasmtime::Error| PluginError::Link { plugin: name.into(), world: "router-plugin", reason: format!("{e:#}") };
        let pre = self.linker.instantiate_pre(&component).map_err(link)?;
        let pre = RouterPluginPre::new(pre).map_err(link)?;
        Ok(RouterComponent { name: name.into(), pre, engine: self.engine.clone(), limits: self.limits.clone() })
    }

    /// The size cap, compilation and the import check every kind shares.
    fn compile(&self, name: &str, bytes: &[u8], grants: crate::limits::Grants) -> Result<Component, PluginError> {
        let plugin = name.to_string();
        if bytes.len() > self.limits.component_bytes {
            return Err(PluginError::TooLarge { plugin, size: bytes.len(), limit: self.limits.component_bytes });
        }
        let compiled = match &self.cache {
            Some(cache) => cache.get_or_compile(&self.engine, bytes),
            None => Component::new(&self.engine, bytes),
        };
        let component = compiled.map_err(|e| PluginError::Compile { plugin: plugin.clone(), reason: format!("{e:#}") })?;
        for (import, _) in component.component_type().imports(&self.engine) {
            if !import_allowed(import, grants) {
                return Err(PluginError::ForbiddenImport { plugin, import: import.to_string() });
            }
        }
        Ok(component)
    }
}

/// A compiled, pre-linked auth plugin: instantiate it with
/// [`crate::WasmAuth::new`].
#[derive(Clone)]
pub struct AuthComponent {
    pub(crate) name: String,
    pub(crate) pre: AuthPluginPre<StoreState>,
    pub(crate) engine: Engine,
    pub(crate) limits: Limits,
}

impl std::fmt::Debug for AuthComponent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthComponent").field("name", &self.name).finish()
    }
}

/// A compiled, pre-linked router: instantiate it with
/// [`crate::WasmRouter::new`].
#[derive(Clone)]
pub struct RouterComponent {
    pub(crate) name: String,
    pub(crate) pre: RouterPluginPre<StoreState>,
    pub(crate) engine: Engine,
    pub(crate) limits: Limits,
}

impl std::fmt::Debug for RouterComponent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouterComponent").field("name", &self.name).finish()
    }
}

/// A compiled, pre-linked guide: instantiate it with [`WasmGuide::new`].
#[derive(Clone)]
pub struct GuideComponent {
    pub(crate) name: String,
    pub(crate) pre: GuidePluginPre<StoreState>,
    pub(crate) engine: Engine,
    pub(crate) limits: Limits,
}

impl std::fmt::Debug for GuideComponent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuideComponent").field("name", &self.name).finish()
    }
}

/// A compiled, pre-linked sampler: cheap to instantiate.
#[derive(Clone)]
pub struct SamplerComponent {
    name: String,
    pre: SamplerPluginPre<StoreState>,
    engine: Engine,
    limits: Limits,
}

impl std::fmt::Debug for SamplerComponent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SamplerComponent").field("name", &self.name).finish()
    }
}

impl SamplerComponent {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A sampler running this component with `config` handed to its `init`.
    pub fn sampler(&self, config: Vec<(String, crate::bindings::weft::plugin::types::ConfigValue)>) -> Result<WasmSampler, PluginError> {
        WasmSampler::new(self.clone(), config)
    }

    pub(crate) fn parts(&self) -> (&str, &SamplerPluginPre<StoreState>, &Engine, &Limits) {
        (&self.name, &self.pre, &self.engine, &self.limits)
    }
}
