//! [`WasmSampler`]: a sampler component behind the engine's `Sampler`
//! trait. One guest call per step for the whole batch; a fault fails that
//! call only, and the instance is rebuilt before the next one.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use wasmtime::component::Resource;
use wasmtime::Store;
use weft_types::{SampleRow, Sampler, SamplerError, TokenId};

use crate::batch::{BatchHandle, StepView};
use crate::bindings::SamplerPlugin;
use crate::bindings::weft::plugin::types::{ConfigEntry, ConfigValue};
use crate::error::PluginError;
use crate::health::Health;
use crate::runtime::{SamplerComponent, deadline_ticks, describe};
use crate::sandbox::StoreState;

/// A live sampler instance (rebuilt after any fault).
pub struct WasmSampler {
    component: SamplerComponent,
    config: Vec<ConfigEntry>,
    label: String,
    live: Option<(Store<StoreState>, SamplerPlugin)>,
    health: Arc<Health>,
}

impl std::fmt::Debug for WasmSampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmSampler").field("plugin", &self.label).field("health", &self.health).finish()
    }
}

impl WasmSampler {
    pub(crate) fn new(component: SamplerComponent, config: Vec<(String, ConfigValue)>) -> Result<Self, PluginError> {
        let label = component.name().to_string();
        let config = config.into_iter().map(|(key, value)| ConfigEntry { key, value }).collect();
        let mut sampler = Self { component, config, label, live: None, health: Arc::default() };
        sampler.instance()?;
        Ok(sampler)
    }

    /// This instance's calls and faults, shared: the handle stays valid
    /// after the sampler moves into the engine.
    pub fn health(&self) -> Arc<Health> {
        Arc::clone(&self.health)
    }

    fn instance(&mut self) -> Result<&mut (Store<StoreState>, SamplerPlugin), PluginError> {
        if self.live.is_none() {
            let c = &self.component;
            let config = &self.config;
            let live = c.instance(c.limits.call_deadline, |pre, store| pre.instantiate(store), |plugin, store| {
                plugin.weft_plugin_sampler().call_init(store, config)
            })?;
            self.live = Some(live);
        }
        Ok(self.live.as_mut().expect("set above"))
    }

    fn fault(&mut self, message: String) -> SamplerError {
        self.health.record_fault();
        self.live = None;
        SamplerError::Fault { sampler: self.label.clone(), message }
    }
}

impl Sampler for WasmSampler {
    fn name(&self) -> &str {
        &self.label
    }

    fn sample(&mut self, rows: &[SampleRow<'_>], eos: &[TokenId]) -> Result<Vec<TokenId>, SamplerError> {
        self.health.record_call();
        let deadline = self.component.limits.call_deadline;
        let (store, plugin) = match self.instance() {
            Ok(live) => live,
            Err(e) => return Err(self.fault(e.to_string())),
        };
        // SAFETY: the view is taken out of the store right after the call,
        // before `rows` can go away, whatever the call returned.
        let buffers = std::mem::take(&mut store.data_mut().step_buffers);
        store.data_mut().step = Some(unsafe { StepView::new(rows, eos, buffers) });
        let handle = match store.data_mut().table.push(BatchHandle) {
            Ok(h) => h,
            Err(e) => {
                store.data_mut().step = None;
                let message = format!("could not create the batch: {e}");
                return Err(self.fault(message));
            }
        };
        store.set_epoch_deadline(deadline_ticks(deadline));
        // A host call that panicked would unwind through the guest call;
        // catch it here so the view is still cleared and the instance it
        // went through is discarded like any other fault.
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
            plugin.weft_plugin_sampler().call_choose(&mut *store, Resource::new_borrow(handle.rep()))
        }));
        let state = store.data_mut();
        let (buffers, device_error) = state.step.take().map(StepView::finish).unwrap_or_default();
        state.step_buffers = buffers;
        let _ = state.table.delete(handle);
        if let Some(e) = device_error {
            // The guest trapped because the device failed under a host
            // call: not the plugin's fault, but its instance is discarded
            // like after any trap.
            self.live = None;
            return Err(SamplerError::Logits(e));
        }
        match result {
            Ok(Ok(Ok(tokens))) => match invalid_answer(&tokens, rows) {
                None => Ok(tokens),
                Some(why) => Err(self.fault(why)),
            },
            Ok(Ok(Err(e))) => Err(SamplerError::Refused { sampler: self.label.clone(), code: e.code, message: e.message }),
            Ok(Err(e)) => {
                let message = describe(&e, deadline.as_millis());
                Err(self.fault(message))
            }
            Err(_) => Err(self.fault("a host call panicked (a bug in Weft); the instance is discarded".into())),
        }
    }
}

/// Why a sampler's answer cannot be used, if it cannot: one token per row,
/// each inside the vocabulary. (The engine checks again, for any sampler;
/// here it also counts as this plugin's fault.)
fn invalid_answer(tokens: &[TokenId], rows: &[SampleRow<'_>]) -> Option<String> {
    if tokens.len() != rows.len() {
        return Some(format!("returned {} tokens for {} rows", tokens.len(), rows.len()));
    }
    let (token, row) = tokens.iter().zip(rows).find(|(t, r)| **t as usize >= r.vocab())?;
    Some(format!("returned token {token}, outside the vocabulary of {}", row.vocab()))
}
