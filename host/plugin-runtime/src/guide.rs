//! Guide components: [`WasmGuide`] is one instance, set up once for the
//! model's vocabulary and shared by every sequence it constrains;
//! [`GuidedSequence`] is one sequence's compiled constraint behind the
//! engine's `Guide` trait.
//!
//! Calls into the instance are serialised by a mutex (a compile on a
//! request thread, masks on the engine's guide workers). A fault (trap,
//! deadline, memory) fails the sequence whose call it was and discards the
//! instance. The other sequences that lived in it lose nothing: each keeps
//! its constraint and the tokens it committed, and its next call rebuilds
//! its state on a fresh instance (compile, then replay the commits; the
//! guide is deterministic, so the state is the same).

use std::sync::{Arc, Mutex, MutexGuard};

use wasmtime::Store;
use wasmtime::component::ResourceAny;
use weft_types::{Guide, GuideError, GuideStep, TokenId};

use crate::bindings::guide::{GuidePlugin, GuidePluginPre};
use crate::bindings::guide::weft::plugin::tokenizing;
use crate::bindings::guide::exports::weft::plugin::guide::{Constraint, Step};
use crate::bindings::weft::plugin::types::{ConfigEntry, ConfigValue};
use crate::error::PluginError;
use crate::health::Health;
use crate::rebuilt::Rebuilt;
use crate::runtime::{GuideComponent, deadline_ticks, describe};
use crate::sandbox::StoreState;

/// A guide for one model's vocabulary: a live instance holding the
/// sequences' states, and a second one that compiles each constraint first,
/// so a constraint that traps or exhausts its limits discards only that
/// checking instance, never the live sequences.
#[derive(Clone)]
pub struct WasmGuide {
    shared: Arc<Mutex<Instance>>,
    checker: Arc<Mutex<Instance>>,
    name: String,
    /// Calls and faults of its sequences (a constraint refused or too big
    /// for the limits is the request's problem, not a fault).
    health: Arc<Health>,
}

impl std::fmt::Debug for WasmGuide {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmGuide").field("plugin", &self.name).finish()
    }
}

/// The model's tokenizer as a guide calls it: text to token ids, without
/// special tokens.
pub type Tokenize = Arc<dyn Fn(&str) -> Vec<TokenId> + Send + Sync>;

/// The longest text a guide may have tokenized in one call.
const MAX_TOKENIZE_BYTES: usize = 64 << 10;

impl tokenizing::Host for StoreState {
    fn tokenize(&mut self, text: Vec<u8>) -> Option<Vec<TokenId>> {
        let tokenize = self.tokenize.as_ref()?;
        if text.len() > MAX_TOKENIZE_BYTES {
            return None;
        }
        Some(tokenize(std::str::from_utf8(&text).ok()?))
    }
}

/// The guide's instance, rebuilt after a fault.
type Instance = Rebuilt<GuidePluginPre<StoreState>, GuidePlugin>;

/// How to build a guide instance for this vocabulary: instantiated with the
/// tokenizer in its store (`init` asks whether the host can tokenize), then
/// `init`ed with the vocabulary.
fn build(
    vocab: Vec<Vec<u8>>,
    eos: Vec<TokenId>,
    config: Vec<ConfigEntry>,
    tokenize: Option<Tokenize>,
) -> impl Fn(&GuideComponent) -> Result<(Store<StoreState>, GuidePlugin), PluginError> + Send + Sync + 'static {
    move |c| {
        let instantiate = |pre: &GuidePluginPre<StoreState>, store: &mut Store<StoreState>| {
            store.data_mut().tokenize = tokenize.clone();
            pre.instantiate(store)
        };
        c.instance(c.limits.setup_deadline, instantiate, |plugin, store| plugin.weft_plugin_guide().call_init(store, &config, &vocab, &eos))
    }
}

impl WasmGuide {
    /// Instantiate `component` for a vocabulary: `vocab[t]` is token `t`'s
    /// bytes (special tokens as `0xFF` followed by their text, so no
    /// constraint can match them as text), `eos` the end-of-generation ids.
    pub fn new(component: GuideComponent, vocab: Vec<Vec<u8>>, eos: Vec<TokenId>) -> Result<Self, PluginError> {
        Self::with_config(component, vocab, eos, Vec::new())
    }

    /// [`Self::new`] with `config` handed to the guide's `init` (a deployed
    /// guide's manifest configuration).
    pub fn with_config(
        component: GuideComponent,
        vocab: Vec<Vec<u8>>,
        eos: Vec<TokenId>,
        config: Vec<(String, ConfigValue)>,
    ) -> Result<Self, PluginError> {
        Self::with_tokenizer(component, vocab, eos, config, None)
    }

    /// [`Self::with_config`] with the model's tokenizer behind the guide's
    /// `tokenize` import (without it the import answers `none`), so a run
    /// the constraint determines is forced as the model would tokenize it.
    pub fn with_tokenizer(
        component: GuideComponent,
        vocab: Vec<Vec<u8>>,
        eos: Vec<TokenId>,
        config: Vec<(String, ConfigValue)>,
        tokenize: Option<Tokenize>,
    ) -> Result<Self, PluginError> {
        let name = component.name.clone();
        let config: Vec<ConfigEntry> = config.into_iter().map(|(key, value)| ConfigEntry { key, value }).collect();
        let mut checker = Instance::new(component.clone(), build(vocab.clone(), eos.clone(), config.clone(), tokenize.clone()));
        let mut instance = Instance::new(component, build(vocab, eos, config, tokenize));
        instance.live()?;
        checker.live()?;
        Ok(Self { shared: Arc::new(Mutex::new(instance)), checker: Arc::new(Mutex::new(checker)), name, health: Arc::default() })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its sequences' calls and faults.
    pub fn health(&self) -> Arc<Health> {
        Arc::clone(&self.health)
    }

    /// Compile a constraint (`kind`: `json-schema`, `json-object`, `regex`,
    /// `lark`) into a guide for one sequence. A constraint the plugin
    /// rejects is [`PluginError::Refused`] with its reason; one that makes it
    /// fault is [`PluginError::Call`] in phase `compile`.
    pub fn sequence(&self, kind: &str, source: &str) -> Result<GuidedSequence, PluginError> {
        let constraint = Constraint { kind: kind.into(), source: source.into() };
        // The same compilation on the checking instance first: it is
        // deterministic, so what passes there passes on the live one.
        let (resource, _) = compile(&mut lock(&self.checker), &self.name, &constraint)?;
        let mut checker = lock(&self.checker);
        let generation = checker.generation();
        checker.drop_resource(resource, generation);
        drop(checker);
        let (resource, generation) = compile(&mut lock(&self.shared), &self.name, &constraint)?;
        Ok(GuidedSequence {
            shared: self.shared.clone(),
            health: Arc::clone(&self.health),
            name: self.name.clone(),
            constraint,
            committed: Vec::new(),
            resource: Some(resource),
            generation,
            failed: false,
        })
    }
}

fn lock(instance: &Mutex<Instance>) -> MutexGuard<'_, Instance> {
    // A panic while holding the lock leaves nothing half-updated that the
    // next caller relies on: the instance is rebuilt on a fault.
    instance.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Compile `constraint` on `instance`: the sequence resource and the
/// instance generation it belongs to.
fn compile(instance: &mut Instance, name: &str, constraint: &Constraint) -> Result<(ResourceAny, u64), PluginError> {
    let setup = instance.component.limits.setup_deadline;
    let generation = instance.generation();
    let (store, plugin) = instance.live()?;
    store.set_epoch_deadline(deadline_ticks(setup));
    let compiled = plugin.weft_plugin_guide().sequence().call_constructor(&mut *store, constraint).and_then(|resource| {
        store.set_epoch_deadline(deadline_ticks(setup));
        let error = plugin.weft_plugin_guide().sequence().call_error(&mut *store, resource)?;
        Ok((resource, error))
    });
    match compiled {
        Ok((resource, None)) => Ok((resource, generation)),
        Ok((resource, Some(e))) => {
            instance.drop_resource(resource, generation);
            Err(PluginError::Refused { plugin: name.into(), phase: "compile", code: e.code, message: e.message })
        }
        Err(e) => {
            let error = instance.component.call_error("compile", &e, setup);
            instance.discard();
            Err(error)
        }
    }
}

/// One sequence's compiled constraint, and what rebuilds it: the
/// constraint and the tokens committed so far.
pub struct GuidedSequence {
    shared: Arc<Mutex<Instance>>,
    health: Arc<Health>,
    name: String,
    constraint: Constraint,
    committed: Vec<TokenId>,
    /// Its state in the instance of `generation`.
    resource: Option<ResourceAny>,
    generation: u64,
    /// One of its own calls faulted: it is never rebuilt.
    failed: bool,
}

impl std::fmt::Debug for GuidedSequence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

impl GuidedSequence {
    fn call<T>(
        &mut self,
        phase: &'static str,
        f: impl FnOnce(&GuidePlugin, &mut Store<StoreState>, ResourceAny) -> wasmtime::Result<Result<T, crate::bindings::weft::plugin::types::PluginError>>,
    ) -> Result<T, GuideError> {
        let shared = Arc::clone(&self.shared);
        let mut instance = lock(&shared);
        self.health.record_call();
        let name = self.name.clone();
        let fault = |message: String| GuideError::Fault { guide: name.clone(), message };
        if self.failed {
            return Err(fault("the sequence's guide faulted earlier".into()));
        }
        if (instance.generation() != self.generation || self.resource.is_none())
            && let Err(e) = self.restore(&mut instance)
        {
            self.health.record_fault();
            self.failed = true;
            return Err(fault(format!("rebuilding its state after the instance was discarded: {e}")));
        }
        let resource = self.resource.expect("restored above");
        let deadline = instance.component.limits.call_deadline;
        let (store, plugin) = instance.live().expect("restored above, on this generation");
        store.set_epoch_deadline(deadline_ticks(deadline));
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(plugin, store, resource)));
        match result {
            Ok(Ok(Ok(value))) => Ok(value),
            Ok(Ok(Err(e))) => Err(GuideError::Refused { guide: self.name.clone(), code: e.code, message: e.message }),
            Ok(Err(e)) => {
                let message = format!("{phase}: {}", describe(&e, deadline.as_millis()));
                instance.discard();
                self.resource = None;
                self.failed = true;
                self.health.record_fault();
                Err(fault(message))
            }
            Err(_) => {
                instance.discard();
                self.resource = None;
                self.failed = true;
                self.health.record_fault();
                Err(fault(format!("{phase}: a host call panicked (a bug in Weft); the instance is discarded")))
            }
        }
    }

    /// This sequence's state on the current instance (a fresh one if need
    /// be): its constraint compiled again and its commits replayed.
    fn restore(&mut self, instance: &mut Instance) -> Result<(), PluginError> {
        self.resource = None;
        let (resource, generation) = compile(instance, &self.name, &self.constraint)?;
        let deadline = instance.component.limits.call_deadline;
        let (store, plugin) = instance.live()?;
        for &token in &self.committed {
            store.set_epoch_deadline(deadline_ticks(deadline));
            let replayed = plugin.weft_plugin_guide().sequence().call_commit(&mut *store, resource, token);
            let error = match replayed {
                Ok(Ok(())) => continue,
                Ok(Err(e)) => PluginError::Refused { plugin: self.name.clone(), phase: "replay", code: e.code, message: e.message },
                Err(e) => instance.component.call_error("replay", &e, deadline),
            };
            instance.discard();
            return Err(error);
        }
        self.resource = Some(resource);
        self.generation = generation;
        Ok(())
    }
}

impl Guide for GuidedSequence {
    fn next(&mut self) -> Result<GuideStep, GuideError> {
        let step = self.call("next", |plugin, store, resource| plugin.weft_plugin_guide().sequence().call_next(store, resource))?;
        Ok(match step {
            Step::Mask(words) => GuideStep::Mask(words),
            Step::Force(tokens) => GuideStep::Force(tokens),
            Step::Stop => GuideStep::Stop,
        })
    }

    fn commit(&mut self, token: TokenId) -> Result<(), GuideError> {
        self.call("commit", |plugin, store, resource| plugin.weft_plugin_guide().sequence().call_commit(store, resource, token))?;
        self.committed.push(token);
        Ok(())
    }
}

impl Drop for GuidedSequence {
    fn drop(&mut self) {
        let Some(resource) = self.resource.take() else { return };
        lock(&self.shared).drop_resource(resource, self.generation);
    }
}
