//! The builtin router plugin's policies on synthetic backend states (the
//! cluster issue brings real peers; the policy logic is tested now), and
//! the fallback to the default route when a router's answer is unusable.

use weft_plugin_runtime::bindings::weft::plugin::types::ConfigValue;
use weft_plugin_runtime::{Backend, WasmRouter};

fn router(config: &[(&str, ConfigValue)]) -> Result<WasmRouter, weft_plugin_runtime::PluginError> {
    let runtime = weft_tests::plugin_runtime();
    let component = runtime.load_router("builtin:router", weft_plugin_artifacts::ROUTER).expect("the router loads");
    WasmRouter::new(component, config.iter().map(|(k, v)| (k.to_string(), v.clone())).collect())
}

fn policy(name: &str) -> WasmRouter {
    router(&[("policy", ConfigValue::Text(name.into()))]).unwrap()
}

fn backend(name: &str, queue_depth: u32, running: u32, kv_usage: f32, cached: u32) -> Backend {
    Backend { name: name.into(), healthy: true, queue_depth, running, kv_usage, cached_prefix_tokens: cached }
}

fn order(router: &WasmRouter, backends: &[Backend]) -> Vec<String> {
    let route = router.route("tenant", "model", 100, backends);
    assert_eq!(route.fallback, None, "the router's own answer is used");
    route.backends
}

#[test]
fn least_loaded_orders_by_queue_then_kv_then_running_and_skips_the_unhealthy() {
    let r = policy("least-loaded");
    let mut down = backend("d", 0, 0, 0.0, 0);
    down.healthy = false;
    let states = [backend("a", 3, 1, 0.1, 0), backend("b", 1, 9, 0.9, 0), backend("c", 1, 2, 0.2, 0), down];
    assert_eq!(order(&r, &states), ["c", "b", "a"]);
    // Ties all the way down are broken by name, so the order is total.
    let tied = [backend("y", 0, 0, 0.0, 0), backend("x", 0, 0, 0.0, 0)];
    assert_eq!(order(&r, &tied), ["x", "y"]);
}

#[test]
fn round_robin_starts_one_further_each_call() {
    let r = policy("round-robin");
    let states = [backend("c", 0, 0, 0.0, 0), backend("a", 9, 9, 0.9, 0), backend("b", 0, 0, 0.0, 0)];
    let firsts: Vec<String> = (0..6).map(|_| order(&r, &states)[0].clone()).collect();
    assert_eq!(firsts, ["a", "b", "c", "a", "b", "c"]);
    assert_eq!(order(&r, &states), ["a", "b", "c"]);
}

#[test]
fn prefix_affinity_prefers_the_warm_cache_unless_its_queue_is_too_long() {
    let r = router(&[
        ("policy", ConfigValue::Text("prefix-affinity".into())),
        ("min-cached-tokens", ConfigValue::Integer(32)),
        ("max-queue-skew", ConfigValue::Integer(2)),
    ])
    .unwrap();
    // b holds 64 cached tokens with a queue 2 longer than a's: b first.
    let states = [backend("a", 1, 0, 0.1, 0), backend("b", 3, 0, 0.1, 64), backend("c", 2, 0, 0.1, 16)];
    assert_eq!(order(&r, &states), ["b", "a", "c"]);
    // Three longer is too long: least-loaded instead.
    let states = [backend("a", 1, 0, 0.1, 0), backend("b", 4, 0, 0.1, 64), backend("c", 2, 0, 0.1, 16)];
    assert_eq!(order(&r, &states), ["a", "c", "b"]);
    // Below min-cached-tokens a cache does not count.
    let states = [backend("a", 1, 0, 0.1, 0), backend("c", 1, 0, 0.2, 31)];
    assert_eq!(order(&r, &states), ["a", "c"]);
}

#[test]
fn no_healthy_backend_or_a_bad_config_is_handled() {
    let r = policy("least-loaded");
    let mut down = backend("a", 0, 0, 0.0, 0);
    down.healthy = false;
    let route = r.route("tenant", "model", 1, &[down]);
    assert!(route.backends.is_empty());
    assert!(route.fallback.unwrap().contains("no-healthy-backend"));
    assert_eq!(r.health().faults(), 1, "a refusal counts as a fault and the default route is used");
    for (key, value, says) in [
        ("policy", ConfigValue::Text("random".into()), "unknown policy"),
        ("max-queue-skew", ConfigValue::Integer(-1), "max-queue-skew"),
        ("weight", ConfigValue::Integer(1), "weight"),
    ] {
        let e = router(&[(key, value)]).unwrap_err();
        assert!(e.to_string().contains(says), "{key}: {e}");
    }
}
