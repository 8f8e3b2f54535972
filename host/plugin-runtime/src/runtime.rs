//! The one wasmtime engine for all plugins, its linker, and loading a
//! component: size cap, compile, import check, pre-link.

use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::{Component, HasSelf, InstancePre, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap};

use crate::bindings::auth::AuthPluginPre;
use crate::bindings::guide::GuidePluginPre;
use crate::bindings::router::RouterPluginPre;
use crate::bindings::tool_parser::ToolParserPluginPre;
use crate::bindings::{SamplerPlugin, SamplerPluginPre};
use crate::cache::CompiledCache;
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
        crate::bindings::guide::weft::plugin::tokenizing::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .map_err(|e| setup("guide world", e))?;
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
        self.load(name, bytes, limits, "sampler-plugin", SamplerPluginPre::new)
    }

    /// Check and compile a guide component (slow: at startup or deploy).
    pub fn load_guide(&self, name: &str, bytes: &[u8]) -> Result<GuideComponent, PluginError> {
        self.load_guide_with(name, bytes, self.limits.clone())
    }

    /// [`Self::load_guide`] with a manifest's `limits` and grants.
    pub fn load_guide_with(&self, name: &str, bytes: &[u8], limits: Limits) -> Result<GuideComponent, PluginError> {
        self.load(name, bytes, limits, "guide-plugin", GuidePluginPre::new)
    }

    /// Check and compile an auth component, to run under `limits` (an auth
    /// plugin that checks token expiry needs the `clock` grant).
    pub fn load_auth(&self, name: &str, bytes: &[u8], limits: Limits) -> Result<AuthComponent, PluginError> {
        self.load(name, bytes, limits, "auth-plugin", AuthPluginPre::new)
    }

    /// Check and compile a router component.
    pub fn load_router(&self, name: &str, bytes: &[u8]) -> Result<RouterComponent, PluginError> {
        self.load(name, bytes, self.limits.clone(), "router-plugin", RouterPluginPre::new)
    }

    /// Check and compile a tool-parser component, to run under `limits`.
    pub fn load_tool_parser(&self, name: &str, bytes: &[u8], limits: Limits) -> Result<ToolParserComponent, PluginError> {
        self.load(name, bytes, limits, "tool-parser-plugin", ToolParserPluginPre::new)
    }

    /// What every kind's loading shares: `limits` checked against the
    /// runtime's (they may only tighten), the component compiled and its
    /// imports checked, then pre-linked for `world` (`typed`: the world's
    /// bindings over the linked template).
    fn load<Pre>(
        &self,
        name: &str,
        bytes: &[u8],
        limits: Limits,
        world: &'static str,
        typed: impl FnOnce(InstancePre<StoreState>) -> wasmtime::Result<Pre>,
    ) -> Result<Loaded<Pre>, PluginError> {
        let over = |what, asked: u64, limit: u64| PluginError::OverLimit { plugin: name.into(), what, asked, limit };
        if limits.memory_bytes > self.limits.memory_bytes {
            return Err(over("memory bytes", limits.memory_bytes as u64, self.limits.memory_bytes as u64));
        }
        if limits.call_deadline > self.limits.call_deadline {
            let ms = |d: Duration| d.as_millis() as u64;
            return Err(over("a call deadline in ms of", ms(limits.call_deadline), ms(self.limits.call_deadline)));
        }
        let component = self.compile(name, bytes, limits.grants)?;
        let link = |e: wasmtime::Error| PluginError::Link { plugin: name.into(), world, reason: format!("{e:#}") };
        let pre = self.linker.instantiate_pre(&component).map_err(link)?;
        let pre = typed(pre).map_err(link)?;
        Ok(Loaded { name: name.into(), pre, engine: self.engine.clone(), limits })
    }

    /// Compile `bytes` (or map them from the cache) on a thread of its own,
    /// waiting at most the compile budget.
    fn compile_within_budget(&self, plugin: &str, bytes: &[u8]) -> Result<Component, PluginError> {
        let (engine, cache, bytes) = (self.engine.clone(), self.cache.clone(), bytes.to_vec());
        let (done, result) = std::sync::mpsc::channel();
        let failed = |reason: String| PluginError::Compile { plugin: plugin.to_string(), reason };
        std::thread::Builder::new()
            .name("weft-plugin-compile".into())
            .spawn(move || {
                let compiled = match &cache {
                    Some(cache) => cache.get_or_compile(&engine, &bytes),
                    None => Component::new(&engine, &bytes),
                };
                let _ = done.send(compiled);
            })
            .map_err(|e| failed(format!("could not start compiling: {e}")))?;
        let budget = self.limits.compile_budget;
        match result.recv_timeout(budget) {
            Ok(compiled) => compiled.map_err(|e| failed(format!("{e:#}"))),
            Err(_) => Err(failed(format!("compilation ran past its budget of {} ms", budget.as_millis()))),
        }
    }

    /// The size cap, compilation and the import check every kind shares.
    fn compile(&self, name: &str, bytes: &[u8], grants: crate::limits::Grants) -> Result<Component, PluginError> {
        let plugin = name.to_string();
        if bytes.len() > self.limits.component_bytes {
            return Err(PluginError::TooLarge { plugin, size: bytes.len(), limit: self.limits.component_bytes });
        }
        let component = self.compile_within_budget(&plugin, bytes)?;
        for (import, _) in component.component_type().imports(&self.engine) {
            if !import_allowed(import, grants) {
                return Err(PluginError::ForbiddenImport { plugin, import: import.to_string() });
            }
        }
        Ok(component)
    }
}

/// A compiled, pre-linked component of one plugin world: cheap to
/// instantiate, shared by every instance of that plugin version.
#[derive(Clone)]
pub struct Loaded<Pre> {
    pub(crate) name: String,
    pub(crate) pre: Pre,
    pub(crate) engine: Engine,
    pub(crate) limits: Limits,
}

/// A sampler: run it with [`SamplerComponent::sampler`].
pub type SamplerComponent = Loaded<SamplerPluginPre<StoreState>>;
/// A guide: instantiate it with [`crate::WasmGuide::new`].
pub type GuideComponent = Loaded<GuidePluginPre<StoreState>>;
/// An auth plugin: instantiate it with [`crate::WasmAuth::new`].
pub type AuthComponent = Loaded<AuthPluginPre<StoreState>>;
/// A router: instantiate it with [`crate::WasmRouter::new`].
pub type RouterComponent = Loaded<RouterPluginPre<StoreState>>;
/// A tool parser: instantiate it with [`crate::WasmToolParser::new`].
pub type ToolParserComponent = Loaded<ToolParserPluginPre<StoreState>>;

impl<Pre> std::fmt::Debug for Loaded<Pre> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded").field("name", &self.name).finish()
    }
}

/// Epoch ticks that make up `deadline` (at least one).
pub(crate) fn deadline_ticks(deadline: Duration) -> u64 {
    (deadline.as_micros().div_ceil(EPOCH_TICK.as_micros()) as u64).max(1)
}

impl<Pre> Loaded<Pre> {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A fresh store for one instance: memory limits, and the epoch
    /// deadline `deadline` from now (a trap when it passes).
    pub(crate) fn store(&self, deadline: Duration) -> Store<StoreState> {
        let mut store = Store::new(&self.engine, StoreState::new(&self.limits));
        store.limiter(|s| &mut s.limits);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(deadline_ticks(deadline));
        store
    }

    /// A new instance, set up: instantiated and `init`ed under `deadline`
    /// each (`instantiate`: the world's instantiation; `init`: its `init`
    /// call with the plugin's config).
    pub(crate) fn instance<P>(
        &self,
        deadline: Duration,
        instantiate: impl FnOnce(&Pre, &mut Store<StoreState>) -> wasmtime::Result<P>,
        init: impl FnOnce(&P, &mut Store<StoreState>) -> wasmtime::Result<Result<(), crate::bindings::weft::plugin::types::PluginError>>,
    ) -> Result<(Store<StoreState>, P), PluginError> {
        let mut store = self.store(deadline);
        let plugin = instantiate(&self.pre, &mut store).map_err(|e| self.call_error("instantiate", &e, deadline))?;
        store.set_epoch_deadline(deadline_ticks(deadline));
        self.init_result(init(&plugin, &mut store), deadline)?;
        Ok((store, plugin))
    }

    /// A failed call of `phase`, described for people.
    pub(crate) fn call_error(&self, phase: &'static str, e: &wasmtime::Error, deadline: Duration) -> PluginError {
        PluginError::Call { plugin: self.name.clone(), phase, reason: describe(e, deadline.as_millis()) }
    }

    /// The answer of a guest's `init`: a refusal or a fault is an error.
    fn init_result(
        &self,
        result: wasmtime::Result<Result<(), crate::bindings::weft::plugin::types::PluginError>>,
        deadline: Duration,
    ) -> Result<(), PluginError> {
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(PluginError::Refused { plugin: self.name.clone(), phase: "init", code: e.code, message: e.message }),
            Err(e) => Err(self.call_error("init", &e, deadline)),
        }
    }
}

impl SamplerComponent {
    /// A sampler running this component with `config` handed to its `init`.
    pub fn sampler(&self, config: Vec<(String, crate::bindings::weft::plugin::types::ConfigValue)>) -> Result<WasmSampler, PluginError> {
        WasmSampler::new(self.clone(), config)
    }
}

/// Describe a failed call for people.
pub(crate) fn describe(e: &wasmtime::Error, deadline_ms: u128) -> String {
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => format!("ran past its deadline of {deadline_ms} ms"),
        Some(Trap::StackOverflow) => "overflowed its stack".into(),
        Some(Trap::UnreachableCodeReached) => "trapped (it panicked or aborted, e.g. when out of memory)".into(),
        Some(trap) => format!("trapped: {trap}"),
        None => {
            // Host errors (a limit, a bad argument to a host call) are the
            // root cause; the wasm backtrace above it says nothing to people.
            let root: String = e.root_cause().to_string().chars().take(500).collect();
            if root.contains("growing memory") { format!("exceeded its memory limit: {root}") } else { root }
        }
    }
}
