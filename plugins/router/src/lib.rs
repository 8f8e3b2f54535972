//! The builtin router plugin: given a request and the live state of every
//! backend, the backends to try in order (first choice, then fallbacks).
//! Unhealthy backends are never offered.
//!
//! Policies (config `policy`, text):
//!
//! - `least-loaded` (the default): fewest queued requests, then lowest KV
//!   cache use, then fewest running sequences, then name;
//! - `round-robin`: healthy backends in turn, each call starting one
//!   further along;
//! - `prefix-affinity`: the backend holding the most of this request's
//!   prefix in its cache (at least `min-cached-tokens`, integer, default
//!   16), unless its queue is longer than the least-loaded backend's by
//!   more than `max-queue-skew` (integer, default 4); then least-loaded.
//!   Fallbacks follow least-loaded order.

wit_bindgen::generate!({
    path: "../../wit",
    world: "router-plugin",
});

use std::cell::Cell;
use std::cmp::Ordering;

use exports::weft::plugin::router::{BackendState, Guest, RouteRequest};
use weft::plugin::types::{ConfigEntry, ConfigValue, PluginError};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Policy {
    LeastLoaded,
    RoundRobin,
    PrefixAffinity { min_cached: u32, max_skew: u32 },
}

thread_local! {
    static POLICY: Cell<Policy> = const { Cell::new(Policy::LeastLoaded) };
    static TURN: Cell<usize> = const { Cell::new(0) };
}

fn bad_config(message: String) -> PluginError {
    PluginError { code: "bad-config".into(), message }
}

fn parse(entries: &[ConfigEntry]) -> Result<Policy, PluginError> {
    let (mut name, mut min_cached, mut max_skew) = ("least-loaded".to_string(), 16u32, 4u32);
    for ConfigEntry { key, value } in entries {
        match (key.as_str(), value) {
            ("policy", ConfigValue::Text(p)) => name = p.clone(),
            ("min-cached-tokens", ConfigValue::Integer(n)) => {
                min_cached = u32::try_from(*n).map_err(|_| bad_config(format!("`min-cached-tokens` must be ≥ 0; given {n}")))?;
            }
            ("max-queue-skew", ConfigValue::Integer(n)) => {
                max_skew = u32::try_from(*n).map_err(|_| bad_config(format!("`max-queue-skew` must be ≥ 0; given {n}")))?;
            }
            (key, _) => return Err(bad_config(format!("unknown setting or wrong type: `{key}`"))),
        }
    }
    match name.as_str() {
        "least-loaded" => Ok(Policy::LeastLoaded),
        "round-robin" => Ok(Policy::RoundRobin),
        "prefix-affinity" => Ok(Policy::PrefixAffinity { min_cached, max_skew }),
        other => Err(bad_config(format!("unknown policy {other:?} (least-loaded, round-robin, prefix-affinity)"))),
    }
}

fn by_load(a: &BackendState, b: &BackendState) -> Ordering {
    a.queue_depth
        .cmp(&b.queue_depth)
        .then(a.kv_usage.total_cmp(&b.kv_usage))
        .then(a.running.cmp(&b.running))
        .then(a.name.cmp(&b.name))
}

struct Router;

impl Guest for Router {
    fn init(config: Vec<ConfigEntry>) -> Result<(), PluginError> {
        let policy = parse(&config)?;
        POLICY.with(|p| p.set(policy));
        Ok(())
    }

    fn route(_request: RouteRequest, backends: Vec<BackendState>) -> Result<Vec<String>, PluginError> {
        let mut healthy: Vec<BackendState> = backends.into_iter().filter(|b| b.healthy).collect();
        if healthy.is_empty() {
            return Err(PluginError { code: "no-healthy-backend".into(), message: "no backend is healthy".into() });
        }
        let names = |list: Vec<BackendState>| list.into_iter().map(|b| b.name).collect();
        match POLICY.with(Cell::get) {
            Policy::RoundRobin => {
                healthy.sort_by(|a, b| a.name.cmp(&b.name));
                let start = TURN.with(|t| {
                    let turn = t.get();
                    t.set(turn.wrapping_add(1));
                    turn % healthy.len()
                });
                healthy.rotate_left(start);
                Ok(names(healthy))
            }
            Policy::LeastLoaded => {
                healthy.sort_by(by_load);
                Ok(names(healthy))
            }
            Policy::PrefixAffinity { min_cached, max_skew } => {
                healthy.sort_by(by_load);
                let lightest = healthy[0].queue_depth;
                let warmest = healthy
                    .iter()
                    .enumerate()
                    .filter(|(_, b)| b.cached_prefix_tokens >= min_cached && b.queue_depth <= lightest.saturating_add(max_skew))
                    .max_by(|(_, a), (_, b)| a.cached_prefix_tokens.cmp(&b.cached_prefix_tokens).then(by_load(b, a)))
                    .map(|(i, _)| i);
                if let Some(i) = warmest {
                    let chosen = healthy.remove(i);
                    healthy.insert(0, chosen);
                }
                Ok(names(healthy))
            }
        }
    }
}

export!(Router);
