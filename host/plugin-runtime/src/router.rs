//! Router components: [`WasmRouter`] asks a `router-plugin` component
//! which backends a request should go to, in order, and checks the answer.
//!
//! Failure policy: a router that faults (trap, deadline, memory), refuses,
//! or answers something unusable (an unknown or unhealthy backend, a
//! duplicate, nothing) does not fail the request: [`WasmRouter::route`]
//! falls back to the default route (the healthy backends in the order
//! given), counts the fault, and rebuilds the instance for the next call.

use std::sync::{Arc, Mutex};

use crate::bindings::router::{RouterPlugin, RouterPluginPre};
use crate::bindings::router::exports::weft::plugin::router::{BackendState, RouteRequest};
use crate::bindings::weft::plugin::types::{ConfigEntry, ConfigValue};
use crate::error::PluginError;
use crate::health::Health;
use crate::rebuilt::Rebuilt;
use crate::runtime::{RouterComponent, deadline_ticks};
use crate::sandbox::StoreState;

/// One backend as the router sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Backend {
    pub name: String,
    pub healthy: bool,
    pub queue_depth: u32,
    pub running: u32,
    /// KV cache use in [0, 1].
    pub kv_usage: f32,
    /// Prompt tokens this backend holds cached for the request's prefix.
    pub cached_prefix_tokens: u32,
}

/// Where a request goes, and whether the router chose it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// Backend names, first choice first.
    pub backends: Vec<String>,
    /// Why the router's own answer was not used, if it was not.
    pub fallback: Option<String>,
}

/// A live router instance (rebuilt after any fault).
pub struct WasmRouter {
    live: Mutex<Rebuilt<RouterPluginPre<StoreState>, RouterPlugin>>,
    name: String,
    health: Arc<Health>,
}

impl std::fmt::Debug for WasmRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmRouter").field("plugin", &self.name).field("health", &self.health).finish()
    }
}

impl WasmRouter {
    /// Instantiate `component` and hand `config` to its `init` (a refused
    /// configuration is [`PluginError::Refused`]).
    pub fn new(component: RouterComponent, config: Vec<(String, ConfigValue)>) -> Result<Self, PluginError> {
        let config: Vec<ConfigEntry> = config.into_iter().map(|(key, value)| ConfigEntry { key, value }).collect();
        let name = component.name.clone();
        let mut live = Rebuilt::new(component, move |c| {
            c.instance(c.limits.call_deadline, |pre, store| pre.instantiate(store), |plugin, store| {
                plugin.weft_plugin_router().call_init(store, &config)
            })
        });
        live.live()?;
        Ok(Self { live: Mutex::new(live), name, health: Arc::default() })
    }

    pub fn health(&self) -> Arc<Health> {
        Arc::clone(&self.health)
    }

    /// The backends for a request from `tenant` for `model` with
    /// `prompt_tokens` tokens: the router's order, or the default route
    /// when the router fails (see the module docs).
    pub fn route(&self, tenant: &str, model: &str, prompt_tokens: u32, backends: &[Backend]) -> Route {
        self.health.record_call();
        match self.ask(tenant, model, prompt_tokens, backends) {
            Ok(order) => Route { backends: order, fallback: None },
            Err(why) => {
                self.health.record_fault();
                let default = backends.iter().filter(|b| b.healthy).map(|b| b.name.clone()).collect();
                Route { backends: default, fallback: Some(why) }
            }
        }
    }

    fn ask(&self, tenant: &str, model: &str, prompt_tokens: u32, backends: &[Backend]) -> Result<Vec<String>, String> {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let deadline = live.component.limits.call_deadline;
        let (store, plugin) = live.live().map_err(|e| e.to_string())?;
        store.set_epoch_deadline(deadline_ticks(deadline));
        let request = RouteRequest { tenant: tenant.into(), model: model.into(), prompt_tokens };
        let states: Vec<BackendState> = backends
            .iter()
            .map(|b| BackendState {
                name: b.name.clone(),
                healthy: b.healthy,
                queue_depth: b.queue_depth,
                running: b.running,
                kv_usage: b.kv_usage,
                cached_prefix_tokens: b.cached_prefix_tokens,
            })
            .collect();
        let answer = match plugin.weft_plugin_router().call_route(&mut *store, &request, &states) {
            Ok(Ok(order)) => order,
            Ok(Err(e)) => return Err(format!("the router refused: {}: {}", e.code, e.message)),
            Err(e) => {
                let error = live.component.call_error("route", &e, deadline).to_string();
                live.discard();
                return Err(error);
            }
        };
        checked(answer, backends)
    }
}

/// The router's order, if every name is a distinct healthy backend.
fn checked(order: Vec<String>, backends: &[Backend]) -> Result<Vec<String>, String> {
    if order.is_empty() {
        return Err("the router chose no backend".into());
    }
    for (i, name) in order.iter().enumerate() {
        match backends.iter().find(|b| &b.name == name) {
            None => return Err(format!("the router chose {name:?}, which is not a backend")),
            Some(b) if !b.healthy => return Err(format!("the router chose {name:?}, which is unhealthy")),
            Some(_) if order[..i].contains(name) => return Err(format!("the router chose {name:?} twice")),
            Some(_) => {}
        }
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(name: &str, healthy: bool) -> Backend {
        Backend { name: name.into(), healthy, queue_depth: 0, running: 0, kv_usage: 0.0, cached_prefix_tokens: 0 }
    }

    #[test]
    fn unusable_answers_are_refused() {
        let backends = [backend("a", true), backend("b", true), backend("c", false)];
        let names = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(checked(names(&["b", "a"]), &backends), Ok(names(&["b", "a"])));
        assert!(checked(Vec::new(), &backends).unwrap_err().contains("no backend"));
        assert!(checked(names(&["z"]), &backends).unwrap_err().contains("not a backend"));
        assert!(checked(names(&["c"]), &backends).unwrap_err().contains("unhealthy"));
        assert!(checked(names(&["a", "a"]), &backends).unwrap_err().contains("twice"));
    }
}
