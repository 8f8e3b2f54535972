//! Auth components: [`WasmAuth`] asks an `auth-plugin` component who a
//! request is, once per request, and checks what it answers.
//!
//! One long-lived instance serves every request (an auth call takes
//! microseconds; a mutex serialises them). A fault (trap, deadline, memory,
//! an answer over its size limits) discards the instance and is an error:
//! the server fails closed and refuses the request; the next call gets a
//! fresh instance.

use std::sync::{Arc, Mutex};

use crate::bindings::auth::{AuthPlugin, AuthPluginPre};
use crate::bindings::auth::exports::weft::plugin::auth::{Decision, RequestHead};
use crate::bindings::weft::plugin::types::{ConfigEntry, ConfigValue};
use crate::error::PluginError;
use crate::health::Health;
use crate::rebuilt::Rebuilt;
use crate::runtime::{AuthComponent, deadline_ticks};
use crate::sandbox::StoreState;

/// Most bytes of text a principal may carry (tenant, scopes, lists).
pub const MAX_PRINCIPAL_BYTES: usize = 64 << 10;

/// Who a request comes from and what it may do, as the auth plugin says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Principal {
    pub tenant: String,
    /// Empty: every scope.
    pub scopes: Vec<String>,
    /// Empty: every model.
    pub allowed_models: Vec<String>,
    /// Empty: every plugin.
    pub allowed_plugins: Vec<String>,
    pub rate_limit_class: String,
    /// (kind, plugin name): the plugin of that kind the tenant's requests
    /// use when they name none.
    pub default_plugins: Vec<(String, String)>,
}

impl Principal {
    /// The tenant's default plugin of `kind` (`sampler`, `tool-parser`).
    pub fn default_plugin(&self, kind: &str) -> Option<&str> {
        self.default_plugins.iter().find(|(k, _)| k == kind).map(|(_, name)| name.as_str())
    }
}

/// The auth plugin's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthDecision {
    Allow(Principal),
    /// No or bad credentials (401).
    Unauthenticated(String),
    /// Valid credentials without the right (403).
    Forbidden(String),
}

/// A live auth instance (rebuilt after any fault).
pub struct WasmAuth {
    live: Mutex<Rebuilt<AuthPluginPre<StoreState>, AuthPlugin>>,
    name: String,
    health: Arc<Health>,
}

impl std::fmt::Debug for WasmAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmAuth").field("plugin", &self.name).field("health", &self.health).finish()
    }
}

impl WasmAuth {
    /// Instantiate `component` and hand `config` to its `init` (a refused
    /// configuration is [`PluginError::Refused`]).
    pub fn new(component: AuthComponent, config: Vec<(String, ConfigValue)>) -> Result<Self, PluginError> {
        let config: Vec<ConfigEntry> = config.into_iter().map(|(key, value)| ConfigEntry { key, value }).collect();
        let name = component.name.clone();
        let mut live = Rebuilt::new(component, move |c| {
            c.instance(c.limits.call_deadline, |pre, store| pre.instantiate(store), |plugin, store| {
                plugin.weft_plugin_auth().call_init(store, &config)
            })
        });
        live.live()?;
        Ok(Self { live: Mutex::new(live), name, health: Arc::default() })
    }

    pub fn health(&self) -> Arc<Health> {
        Arc::clone(&self.health)
    }

    /// Who sends a request with this method, path and headers (names
    /// lower-case). An error is a fault: the caller must refuse the request.
    pub fn authenticate(&self, method: &str, path: &str, headers: Vec<(String, String)>) -> Result<AuthDecision, PluginError> {
        self.health.record_call();
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let result = (|| {
            let deadline = live.component.limits.call_deadline;
            let (store, plugin) = live.live()?;
            store.set_epoch_deadline(deadline_ticks(deadline));
            let head = RequestHead { method: method.into(), path: path.into(), headers };
            let decision = plugin.weft_plugin_auth().call_authenticate(&mut *store, &head);
            let decision = decision.map_err(|e| live.component.call_error("authenticate", &e, deadline))?;
            checked(&self.name, decision)
        })();
        if result.is_err() {
            self.health.record_fault();
            live.discard();
        }
        result
    }
}

/// The guest's answer as host values, refused if it is larger than a
/// principal may be or names no tenant.
fn checked(plugin: &str, decision: Decision) -> Result<AuthDecision, PluginError> {
    let bad = |reason: String| PluginError::Call { plugin: plugin.to_string(), phase: "authenticate", reason };
    Ok(match decision {
        Decision::Allow(p) => {
            let size = p.tenant.len()
                + p.rate_limit_class.len()
                + [&p.scopes, &p.allowed_models, &p.allowed_plugins].iter().flat_map(|l| l.iter()).map(|s| s.len() + 1).sum::<usize>()
                + p.default_plugins.iter().map(|(k, v)| k.len() + v.len() + 2).sum::<usize>();
            if size > MAX_PRINCIPAL_BYTES {
                return Err(bad(format!("answered a principal of {size} bytes, over {MAX_PRINCIPAL_BYTES}")));
            }
            if p.tenant.is_empty() {
                return Err(bad("answered a principal without a tenant".into()));
            }
            AuthDecision::Allow(Principal {
                tenant: p.tenant,
                scopes: p.scopes,
                allowed_models: p.allowed_models,
                allowed_plugins: p.allowed_plugins,
                rate_limit_class: p.rate_limit_class,
                default_plugins: p.default_plugins,
            })
        }
        Decision::Unauthenticated(why) => AuthDecision::Unauthenticated(truncate(why)),
        Decision::Forbidden(why) => AuthDecision::Forbidden(truncate(why)),
    })
}

/// A guest's message, cut to a length fit for an error body.
fn truncate(mut message: String) -> String {
    if message.len() > 500 {
        let mut end = 500;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
    }
    message
}
