//! The builtin auth plugin in front of the API: hashed API keys per tenant
//! (with rotation), JWTs (HS256, RS256, ES256; expiry, not-before,
//! audience, issuer), scopes, allowed models and plugins, tenant-separated
//! prefix caches, and the open operational routes. The JWTs are fixtures
//! signed by tests/data/auth/make.py with test-only keys.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use weft_plugin_runtime::bindings::weft::plugin::types::ConfigValue;
use weft_tests::{Reply, TestServer, repo_root};

fn text(s: &str) -> ConfigValue {
    ConfigValue::Text(s.to_string())
}

fn hashed(key: &str) -> ConfigValue {
    text(&format!("sha256:{}", hex::encode(Sha256::digest(key.as_bytes()))))
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(repo_root().join("tests/data/auth").join(name)).unwrap()
}

fn tokens() -> Value {
    serde_json::from_str(&fixture("tokens.json")).unwrap()
}

fn server() -> TestServer {
    TestServer::start_with_auth(vec![
        ("key.acme.primary".into(), hashed("acme-key-1")),
        ("key.acme.next".into(), hashed("acme-key-2")),
        ("tenant.acme.scopes".into(), text("completions,models")),
        ("key.umbrella.only".into(), hashed("umbrella-key")),
        ("tenant.umbrella.plugins".into(), text("native")),
        ("key.hooli.only".into(), hashed("hooli-key")),
        ("tenant.hooli.models".into(), text("some-other-model")),
        ("key.initech.only".into(), hashed("initech-key")),
        ("tenant.initech.sampler".into(), text("native")),
        ("key.pied.only".into(), hashed("pied-key")),
        ("tenant.pied.sampler".into(), text("not-deployed")),
        ("tenant.pied.tool-parser".into(), text("not-deployed-either")),
        ("jwt.hs256-secret".into(), text("weft-test-hs256-secret")),
        ("jwt.rs256-public-key".into(), text(&fixture("rs256-public.pem"))),
        ("jwt.es256-public-key".into(), text(&fixture("es256-public.pem"))),
        ("jwt.audience".into(), text("weft")),
        ("jwt.issuer".into(), text("https://issuer.test")),
    ])
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn complete(server: &TestServer, token: Option<&str>, extra: Value) -> Reply {
    let mut body = json!({"prompt": "The capital of France is", "max_tokens": 4, "temperature": 0});
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    let auth = token.map(bearer);
    let mut headers = vec![("content-type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("authorization", a));
    }
    server.post_with("/v1/completions", &headers, body.to_string().as_bytes())
}

fn chat(server: &TestServer, token: &str) -> Reply {
    let body = json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "temperature": 0});
    server.post_with("/v1/chat/completions", &[("content-type", "application/json"), ("authorization", &bearer(token))], body.to_string().as_bytes())
}

fn code(r: &Reply) -> String {
    r.json()["error"]["code"].as_str().unwrap_or_default().to_string()
}

#[test]
fn api_keys_tenants_scopes_and_allowed_lists_are_enforced() {
    let server = server();
    let r = complete(&server, None, json!({}));
    assert_eq!((r.status, code(&r).as_str()), (401, "invalid_api_key"), "{}", r.body);
    assert_eq!(complete(&server, Some("acme-key-0"), json!({})).status, 401, "an unknown key");
    assert_eq!(complete(&server, Some("acme-key-1"), json!({})).status, 200);
    assert_eq!(complete(&server, Some("acme-key-2"), json!({})).status, 200, "the rotated key works too");
    // acme's scopes: completions and models, not chat or tokenize.
    let r = chat(&server, "acme-key-1");
    assert_eq!((r.status, code(&r).as_str()), (403, "forbidden"), "{}", r.body);
    assert_eq!(server.get_with("/v1/models", &[("authorization", &bearer("acme-key-1"))]).status, 200);
    let r = server.post_with("/tokenize", &[("content-type", "application/json"), ("authorization", &bearer("acme-key-1"))], br#"{"prompt": "hi"}"#);
    assert_eq!(r.status, 403);
    // umbrella may use the native sampler only (and the default, unnamed).
    assert_eq!(complete(&server, Some("umbrella-key"), json!({})).status, 200);
    assert_eq!(complete(&server, Some("umbrella-key"), json!({"weft": {"sampler": "native"}})).status, 200);
    let r = complete(&server, Some("umbrella-key"), json!({"weft": {"sampler": "default"}}));
    assert_eq!((r.status, code(&r).as_str()), (403, "forbidden"), "{}", r.body);
    // hooli may not use this server's model.
    let r = complete(&server, Some("hooli-key"), json!({}));
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("hooli"));
    // Operations stay open.
    for path in ["/health", "/ready", "/metrics", "/openapi.json"] {
        assert_eq!(server.get(path).status, 200, "{path}");
    }
}

#[test]
fn a_tenant_s_default_plugins_apply_when_a_request_names_none() {
    let server = server();
    // initech's requests use the native sampler: the same tokens as the
    // builtin plugin's, so only a broken default shows which one is taken.
    let greedy = complete(&server, Some("acme-key-1"), json!({})).json()["choices"][0]["text"].clone();
    let r = complete(&server, Some("initech-key"), json!({}));
    assert_eq!((r.status, r.json()["choices"][0]["text"].clone()), (200, greedy));
    // pied's defaults name nothing deployed: its requests say so, naming
    // the field a request would set to choose another.
    let r = complete(&server, Some("pied-key"), json!({}));
    assert_eq!((r.status, code(&r).as_str(), r.json()["error"]["param"].as_str()), (400, "unknown_plugin", Some("weft.sampler")), "{}", r.body);
    let r = complete(&server, Some("pied-key"), json!({"weft": {"sampler": "default"}}));
    assert_eq!(r.status, 200, "a request's own choice comes first: {}", r.body);
    let body = json!({
        "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4,
        "tools": [{"type": "function", "function": {"name": "f"}}], "weft": {"sampler": "default"},
    });
    let headers = [("content-type", "application/json"), ("authorization", &bearer("pied-key"))];
    let r = server.post_with("/v1/chat/completions", &headers, body.to_string().as_bytes());
    assert_eq!((r.status, r.json()["error"]["param"].as_str()), (400, Some("weft.tool_parser")), "{}", r.body);
}

#[test]
fn a_rate_limit_class_bounds_its_tenants_requests_per_minute() {
    let limits = [("tiny".to_string(), weft_server::rate_limit::RateLimit { requests_per_minute: 2 })].into();
    let server = TestServer::start_with_auth_and(
        vec![
            ("key.small.only".into(), hashed("small-key")),
            ("tenant.small.rate-limit-class".into(), text("tiny")),
            ("key.other.only".into(), hashed("other-key")),
            ("tenant.other.rate-limit-class".into(), text("tiny")),
            ("key.big.only".into(), hashed("big-key")),
            ("tenant.big.rate-limit-class".into(), text("unlisted")),
        ],
        weft_server::ServerConfig { rate_limits: limits, ..weft_server::ServerConfig::default() },
    );
    for _ in 0..2 {
        assert_eq!(complete(&server, Some("small-key"), json!({})).status, 200);
    }
    let r = complete(&server, Some("small-key"), json!({}));
    assert_eq!((r.status, code(&r).as_str(), r.json()["error"]["type"].as_str()), (429, "rate_limit_exceeded", Some("requests")), "{}", r.body);
    let wait: u32 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=30).contains(&wait), "{wait}");
    // Buckets are per tenant; a class the server does not list is unlimited.
    assert_eq!(complete(&server, Some("other-key"), json!({})).status, 200);
    for _ in 0..4 {
        assert_eq!(complete(&server, Some("big-key"), json!({})).status, 200);
    }
}

#[test]
fn jwts_are_verified_and_their_claims_checked() {
    let server = server();
    let t = tokens();
    let token = |name: &str| t[name].as_str().unwrap().to_string();
    assert_eq!(complete(&server, Some(&token("hs256")), json!({})).status, 200);
    assert_eq!(complete(&server, Some(&token("es256")), json!({})).status, 200);
    // The RS256 token's own claims: scopes chat and models, model `default`.
    assert_eq!(chat(&server, &token("rs256")).status, 200);
    assert_eq!(complete(&server, Some(&token("rs256")), json!({})).status, 403, "no completions scope");
    for bad in ["expired", "not_yet", "wrong_audience", "wrong_issuer", "no_exp", "none_alg", "tampered"] {
        let r = complete(&server, Some(&token(bad)), json!({}));
        assert_eq!((r.status, code(&r).as_str()), (401, "invalid_api_key"), "{bad}: {}", r.body);
    }
    let r = complete(&server, Some(&token("expired")), json!({}));
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("expired"), "{}", r.body);
}

#[test]
fn tenants_never_share_cached_prompts() {
    let server = server();
    let prompt = "A long shared prefix that fills more than one KV block of sixteen tokens, so that a cache hit is visible in usage.";
    let cached = |token: &str| {
        let r = complete(&server, Some(token), json!({"prompt": prompt}));
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap()
    };
    assert_eq!(cached("acme-key-1"), 0);
    assert!(cached("acme-key-2") > 0, "the same tenant hits its cache");
    assert_eq!(cached("umbrella-key"), 0, "another tenant does not");
}

#[test]
fn a_bad_auth_configuration_is_refused_at_startup() {
    let runtime = weft_tests::plugin_runtime();
    let mut limits = runtime.limits().clone();
    limits.grants.clock = true;
    let component = runtime.load_auth("auth", weft_plugin_artifacts::AUTH, limits).unwrap();
    for (key, value, says) in [
        ("key.acme.primary", "plaintext-key", "sha256"),
        ("tenant.acme.colour", "blue", "colour"),
        ("jwt.rs256-public-key", "not a PEM", "rs256"),
        ("nonsense", "1", "nonsense"),
    ] {
        let e = weft_plugin_runtime::WasmAuth::new(component.clone(), vec![(key.into(), text(value))]).unwrap_err();
        assert!(e.to_string().contains(says), "{key}: {e}");
    }
}

const ADMIN: (&str, &str) = ("authorization", "Bearer admin-secret");

/// A manifest deploying the builtin auth component as `name@version` with
/// one API key for `acme`.
fn auth_manifest(name: &str, version: &str, key: &str) -> String {
    let ConfigValue::Text(hash) = hashed(key) else { unreachable!() };
    format!("name = \"{name}\"\nversion = \"{version}\"\nkind = \"auth\"\n[config]\n\"key.acme.primary\" = \"{hash}\"\n")
}

fn status(server: &TestServer, key: Option<&str>) -> u16 {
    complete(server, key, json!({})).status
}

#[test]
fn a_new_auth_version_takes_over_rolls_back_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let start = || {
        let config = weft_server::ServerConfig {
            admin_token: Some("admin-secret".into()),
            state_dir: Some(dir.path().to_path_buf()),
            ..Default::default()
        };
        TestServer::start_with_auth_and(vec![("key.acme.primary".into(), hashed("acme-key-1"))], config)
    };
    let server = start();
    assert_eq!((status(&server, Some("acme-key-1")), status(&server, Some("acme-key-3"))), (200, 401));

    // A new version with another key authenticates every new request.
    let r = server.deploy_manifest("admin-secret", &auth_manifest("auth", "0.2.0", "acme-key-3"), weft_plugin_artifacts::AUTH);
    assert_eq!((r.status, r.json()["kind"].as_str()), (201, Some("auth")), "{}", r.body);
    assert_eq!((status(&server, Some("acme-key-1")), status(&server, Some("acme-key-3"))), (401, 200));

    // One auth name per server, and it cannot be removed.
    let r = server.deploy_manifest("admin-secret", &auth_manifest("other-auth", "1.0.0", "x"), weft_plugin_artifacts::AUTH);
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("authenticates with `auth`"), "{}", r.body);
    let r = server.delete_with("/admin/v1/plugins/auth", &[ADMIN]);
    assert_eq!(r.status, 409, "{}", r.body);
    // Routers are not deployable until the server has peers to route to.
    let r = server.deploy_manifest("admin-secret", "name = \"r\"\nversion = \"1.0.0\"\nkind = \"router\"\n", weft_plugin_artifacts::AUTH);
    assert_eq!((r.status, r.json()["error"]["param"].as_str()), (400, Some("kind")), "{}", r.body);

    // A configuration the plugin refuses is a 400; the active version stays.
    let bad = "name = \"auth\"\nversion = \"0.9.0\"\nkind = \"auth\"\n[config]\n\"key.acme.primary\" = \"plaintext\"\n";
    let r = server.deploy_manifest("admin-secret", bad, weft_plugin_artifacts::AUTH);
    assert_eq!((r.status, code(&r)), (400, "plugin_rejected".to_string()), "{}", r.body);
    assert_eq!(status(&server, Some("acme-key-3")), 200);

    // Rollback returns to the startup version at once.
    let r = server.post_empty_with("/admin/v1/plugins/auth/rollback", &[ADMIN]);
    assert_eq!(r.json()["active_version"], "0.1.0", "{}", r.body);
    assert_eq!((status(&server, Some("acme-key-1")), status(&server, Some("acme-key-3"))), (200, 401));

    let r = server.deploy_manifest("admin-secret", &auth_manifest("auth", "0.3.0", "acme-key-3"), weft_plugin_artifacts::AUTH);
    assert_eq!(r.status, 201, "{}", r.body);
    drop(server);

    // After a restart with the same startup configuration, the deployed
    // version is back and active over the startup one.
    let server = start();
    let info = server.get_with("/admin/v1/plugins/auth", &[ADMIN]).json();
    assert_eq!((&info["versions"], &info["active_version"]), (&json!(["0.1.0", "0.3.0"]), &json!("0.3.0")), "{info}");
    assert_eq!((status(&server, Some("acme-key-1")), status(&server, Some("acme-key-3"))), (401, 200));
    // The rollback target is the startup version, with its configuration.
    server.post_empty_with("/admin/v1/plugins/auth/rollback", &[ADMIN]);
    assert_eq!(status(&server, Some("acme-key-1")), 200);
}

#[test]
fn an_auth_plugin_deployed_on_an_open_server_turns_authentication_on_for_good() {
    let dir = tempfile::tempdir().unwrap();
    let start = || {
        TestServer::start_with(|_| {}, weft_server::ServerConfig {
            admin_token: Some("admin-secret".into()),
            state_dir: Some(dir.path().to_path_buf()),
            ..Default::default()
        })
    };
    let server = start();
    assert_eq!(status(&server, None), 200);
    let r = server.deploy_manifest("admin-secret", &auth_manifest("gate", "1.0.0", "gate-key"), weft_plugin_artifacts::AUTH);
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!((status(&server, None), status(&server, Some("gate-key"))), (401, 200));
    drop(server);
    let server = start();
    assert_eq!((status(&server, None), status(&server, Some("gate-key"))), (401, 200), "authentication is still on");
}
