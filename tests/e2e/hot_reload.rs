//! Sampler plugins deployed into a running server through the admin API:
//! a new version takes new requests at once, requests in flight finish on
//! the version they started with, a broken version fails only the requests
//! that chose it, and rollback is one call.

use std::io::BufRead;

use serde_json::{Value, json};
use weft_server::ServerConfig;
use weft_tests::{Reply, TestServer};

const AUTH: (&str, &str) = ("authorization", "Bearer admin-secret");

fn server() -> TestServer {
    TestServer::start_with(|_| {}, ServerConfig { admin_token: Some("admin-secret".into()), ..ServerConfig::default() })
}

fn faulty_component() -> Vec<u8> {
    std::fs::read(weft_plugin_artifacts::FAULTY_SAMPLER_PATH).unwrap()
}

fn deploy(server: &TestServer, name: &str, version: &str, fault: &str) -> Reply {
    server.post_with(
        &format!("/admin/v1/plugins/{name}/{version}?fault={fault}"),
        &[AUTH, ("content-type", "application/wasm")],
        &faulty_component(),
    )
}

fn deploy_canary(server: &TestServer, name: &str, version: &str, fault: &str, share: &str) -> Reply {
    server.post_with(
        &format!("/admin/v1/plugins/{name}/{version}?fault={fault}&canary={share}"),
        &[AUTH, ("content-type", "application/wasm")],
        &faulty_component(),
    )
}

fn complete(server: &TestServer, sampler: Option<&str>) -> Reply {
    let mut body = json!({"prompt": "The capital of France is", "max_tokens": 8, "temperature": 0});
    if let Some(s) = sampler {
        body["weft"] = json!({"sampler": s});
    }
    server.post("/v1/completions", &body)
}

fn text(r: &Reply) -> String {
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["choices"][0]["text"].as_str().unwrap().to_string()
}

#[test]
fn deployed_versions_take_new_requests_and_roll_back() {
    let server = server();
    let greedy = text(&complete(&server, None));
    assert_eq!(text(&complete(&server, Some("native"))), greedy, "the native sampler agrees with the builtin plugin");

    // v1 is a well-behaved greedy sampler.
    let r = deploy(&server, "custom", "1.0.0", "none");
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.json()["active_version"], "1.0.0");
    let r = complete(&server, Some("custom"));
    assert_eq!(text(&r), greedy);
    // The answer says which version chose its tokens.
    assert_eq!(r.header("x-weft-sampler"), Some("custom@1.0.0"));
    assert_eq!(complete(&server, None).header("x-weft-sampler"), Some("default"));

    // v2 traps: requests that choose it fail with a plugin error that SDKs
    // must not retry; everyone else is served.
    assert_eq!(deploy(&server, "custom", "2.0.0", "trap").status, 201);
    let failed = complete(&server, Some("custom"));
    assert_eq!(failed.status, 500, "{}", failed.body);
    assert_eq!(failed.json()["error"]["code"], "plugin_failed");
    assert_eq!(failed.header("x-should-retry"), Some("false"));
    assert_eq!(text(&complete(&server, None)), greedy, "other requests are untouched");

    // Rollback is one call.
    let r = server.post_empty_with("/admin/v1/plugins/custom/rollback", &[AUTH]);
    assert_eq!((r.status, r.json()["active_version"].as_str()), (200, Some("1.0.0")));
    assert_eq!(text(&complete(&server, Some("custom"))), greedy);

    let list = server.get_with("/admin/v1/plugins", &[AUTH]).json();
    let custom = list.as_array().unwrap().iter().find(|p| p["name"] == "custom").unwrap();
    assert_eq!(custom["versions"], json!(["1.0.0", "2.0.0"]));

    // History stays linear: deploying after a rollback drops the version
    // rolled back from, so the next rollback returns to 1.0.0, never to the
    // broken 2.0.0.
    assert_eq!(deploy(&server, "custom", "3.0.0", "none").status, 201);
    let r = server.post_empty_with("/admin/v1/plugins/custom/rollback", &[AUTH]);
    assert_eq!(r.json()["active_version"], "1.0.0");
    assert_eq!(r.json()["versions"], json!(["1.0.0", "3.0.0"]));
}

#[test]
fn a_request_in_flight_finishes_on_the_version_it_started_with() {
    let server = server();
    assert_eq!(deploy(&server, "swap", "1.0.0", "none").status, 201);
    // A long stream on v1 ...
    let body = json!({"prompt": "Once upon a time", "max_tokens": 60, "ignore_eos": true, "stream": true, "weft": {"sampler": "swap"}}).to_string();
    let mut s = std::net::TcpStream::connect(server.addr).unwrap();
    use std::io::Write;
    write!(s, "POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len()).unwrap();
    let mut reader = std::io::BufReader::new(s);
    let mut line = String::new();
    while !line.starts_with("data: ") {
        line.clear();
        reader.read_line(&mut line).unwrap();
    }
    // ... while v2, which traps, takes over the name.
    assert_eq!(deploy(&server, "swap", "2.0.0", "trap").status, 201);
    assert_eq!(complete(&server, Some("swap")).status, 500, "new requests get v2");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut reader, &mut rest).unwrap();
    let tokens: usize = rest
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter(|c| c.get("error").is_none())
        .count();
    assert!(!rest.contains("\"error\""), "the stream on v1 never fails: {rest}");
    assert!(rest.contains("data: [DONE]") && tokens > 10, "it runs to its end: {rest}");
}

#[test]
fn bad_deploys_and_unknown_plugins_get_clear_errors() {
    let server = server();
    let code = |r: &Reply| r.json()["error"]["code"].as_str().unwrap_or("").to_string();
    // Extractor failures answer OpenAI-style bodies too.
    let r = server.post_with("/admin/v1/plugins/big/1.0.0", &[AUTH], &vec![0u8; (32 << 20) + 1]);
    assert_eq!((r.status, r.json()["error"]["type"].as_str()), (413, Some("invalid_request_error")), "{}", r.body);
    let r = server.post_with("/admin/v1/plugins", &[AUTH, ("content-type", "multipart/form-data")], b"no boundary");
    assert_eq!((r.status, r.json()["error"]["param"].as_str()), (400, Some("body")), "{}", r.body);
    let r = server.post_with("/admin/v1/plugins/junk/1.0.0", &[AUTH], b"not a component");
    assert_eq!((r.status, code(&r).as_str()), (400, "plugin_rejected"), "{}", r.body);
    let r = server.post_with("/admin/v1/plugins/x/not-semver", &[AUTH], &faulty_component());
    assert_eq!((r.status, code(&r).as_str()), (400, "invalid_value"));
    let r = server.post_with("/admin/v1/plugins/native/1.0.0", &[AUTH], &faulty_component());
    assert_eq!((r.status, code(&r).as_str()), (400, "invalid_value"), "builtin names are reserved");
    let r = deploy(&server, "x", "1.0.0", "no-such-fault");
    assert_eq!((r.status, code(&r).as_str()), (400, "plugin_rejected"), "init refused: {}", r.body);
    assert_eq!(deploy(&server, "x", "1.0.0", "none").status, 201);
    let r = deploy(&server, "x", "1.0.0", "none");
    assert_eq!((r.status, code(&r).as_str()), (409, "conflict"));
    let r = server.post_with("/admin/v1/plugins/x/2.0.0", &[], &faulty_component());
    assert_eq!(r.status, 401, "deploys need the admin token");
    for r in [
        server.get_with("/admin/v1/plugins/nobody", &[AUTH]),
        server.post_empty_with("/admin/v1/plugins/nobody/rollback", &[AUTH]),
        server.delete_with("/admin/v1/plugins/nobody", &[AUTH]),
    ] {
        assert_eq!((r.status, code(&r).as_str()), (404, "plugin_not_found"), "{}", r.body);
    }
    let r = complete(&server, Some("nobody"));
    assert_eq!((r.status, code(&r).as_str()), (400, "unknown_plugin"));
    assert_eq!(r.json()["error"]["param"], "weft.sampler");
    // The header works as well as the field.
    let r = server.post_with(
        "/v1/completions",
        &[("content-type", "application/json"), ("x-weft-sampler", "nobody")],
        json!({"prompt": "hi", "max_tokens": 2}).to_string().as_bytes(),
    );
    assert_eq!(r.status, 400);
}

#[test]
fn deploys_and_rollbacks_survive_a_restart_with_a_state_directory() {
    let dir = tempfile::tempdir().unwrap();
    let with_state = || {
        TestServer::start_with(
            |_| {},
            ServerConfig {
                admin_token: Some("admin-secret".into()),
                state_dir: Some(dir.path().to_path_buf()),
                ..ServerConfig::default()
            },
        )
    };
    let greedy;
    {
        let server = with_state();
        greedy = text(&complete(&server, None));
        assert_eq!(deploy(&server, "kept", "1.0.0", "none").status, 201);
        assert_eq!(deploy(&server, "kept", "2.0.0", "trap").status, 201);
        let r = server.post_empty_with("/admin/v1/plugins/kept/rollback", &[AUTH]);
        assert_eq!(r.json()["active_version"], "1.0.0");
    }
    // A new server over the same directory comes back with both versions
    // loaded, 1.0.0 active and serving, and its configuration kept (2.0.0
    // still traps when rolled forward to by a new deploy's history).
    let server = with_state();
    let list = server.get_with("/admin/v1/plugins", &[AUTH]).json();
    let kept = list.as_array().unwrap().iter().find(|p| p["name"] == "kept").expect("the plugin is back").clone();
    assert_eq!(kept["versions"], json!(["1.0.0", "2.0.0"]));
    assert_eq!(kept["active_version"], "1.0.0");
    assert_eq!(text(&complete(&server, Some("kept"))), greedy);
    // A deploy after the restart is persisted the same way.
    assert_eq!(deploy(&server, "kept", "3.0.0", "trap").status, 201);
    drop(server);
    let server = with_state();
    let failed = complete(&server, Some("kept"));
    assert_eq!(failed.status, 500, "3.0.0 came back with its `fault=trap` configuration: {}", failed.body);
    let list = server.get_with("/admin/v1/plugins", &[AUTH]).json();
    let kept = list.as_array().unwrap().iter().find(|p| p["name"] == "kept").unwrap().clone();
    assert_eq!(kept["versions"], json!(["1.0.0", "3.0.0"]), "linear history is what was stored");
}

fn server_with_breaker(faults: usize, cooldown_ms: u64) -> TestServer {
    let breaker = weft_server::plugins::BreakerPolicy {
        faults,
        window: std::time::Duration::from_secs(60),
        cooldown: std::time::Duration::from_millis(cooldown_ms),
    };
    TestServer::start_with(|_| {}, ServerConfig { admin_token: Some("admin-secret".into()), breaker, ..ServerConfig::default() })
}

fn info(server: &TestServer, name: &str) -> Value {
    let r = server.get_with(&format!("/admin/v1/plugins/{name}"), &[AUTH]);
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

#[test]
fn a_version_that_keeps_faulting_is_rolled_back_automatically() {
    let server = server_with_breaker(3, 60_000);
    let greedy = text(&complete(&server, None));
    assert_eq!(deploy(&server, "auto", "1.0.0", "none").status, 201);
    assert_eq!(deploy(&server, "auto", "2.0.0", "trap").status, 201);
    for _ in 0..3 {
        assert_eq!(complete(&server, Some("auto")).status, 500);
    }
    // The third fault tripped 2.0.0: the next request is served by 1.0.0.
    assert_eq!(text(&complete(&server, Some("auto"))), greedy);
    let auto = info(&server, "auto");
    assert_eq!(auto["active_version"], "1.0.0");
    assert!(auto["last_event"].as_str().unwrap().contains("auto@2.0.0 faulted 3 times"), "{auto}");
    let health = auto["health"].as_array().unwrap();
    assert_eq!((health[1]["version"].as_str(), health[1]["faults"].as_u64()), (Some("2.0.0"), Some(3)));
    assert_eq!(health[1]["breaker"], "open");
    assert_eq!((health[0]["requests"].as_u64(), health[0]["faults"].as_u64()), (Some(1), Some(0)));
    // Each failed sampler call is counted at /metrics.
    let metrics = server.get("/metrics").body;
    assert!(metrics.lines().any(|l| l == "weft_sampler_failures 3"), "{metrics}");
}

#[test]
fn a_breaker_with_nothing_to_fall_back_to_answers_503_until_a_trial_succeeds() {
    let server = server_with_breaker(2, 300);
    let greedy = text(&complete(&server, None));
    assert_eq!(deploy(&server, "lonely", "1.0.0", "trap").status, 201);
    for _ in 0..2 {
        assert_eq!(complete(&server, Some("lonely")).status, 500);
    }
    let r = complete(&server, Some("lonely"));
    assert_eq!((r.status, r.json()["error"]["code"].as_str()), (503, Some("plugin_unavailable")), "{}", r.body);
    assert!(r.header("retry-after").is_some());
    assert_eq!(text(&complete(&server, None)), greedy, "everyone else is served");
    // After the cooldown one trial goes through; it faults, so the breaker
    // opens again at once.
    std::thread::sleep(std::time::Duration::from_millis(400));
    assert_eq!(complete(&server, Some("lonely")).status, 500, "the trial request reaches the plugin");
    assert_eq!(complete(&server, Some("lonely")).status, 503);
    // A fixed version takes over immediately.
    assert_eq!(deploy(&server, "lonely", "1.0.1", "none").status, 201);
    assert_eq!(text(&complete(&server, Some("lonely"))), greedy);
}

#[test]
fn a_canary_takes_its_share_and_is_promoted_withdrawn_or_removed() {
    let server = server();
    let greedy = text(&complete(&server, None));
    assert_eq!(deploy(&server, "canary", "1.0.0", "none").status, 201);
    let r = deploy_canary(&server, "canary", "2.0.0", "none", "0.25");
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!((r.json()["active_version"].as_str(), r.json()["canary"]["share"].as_f64()), (Some("1.0.0"), Some(0.25)));
    for _ in 0..8 {
        assert_eq!(text(&complete(&server, Some("canary"))), greedy);
    }
    let requests = |v: &Value| -> Vec<u64> { v["health"].as_array().unwrap().iter().map(|h| h["requests"].as_u64().unwrap()).collect() };
    assert_eq!(requests(&info(&server, "canary")), vec![6, 2], "exactly a quarter went to the canary");
    // Promoted, the canary takes everything.
    let r = server.post_empty_with("/admin/v1/plugins/canary/promote", &[AUTH]);
    assert_eq!((r.status, r.json()["active_version"].as_str()), (200, Some("2.0.0")));
    assert!(r.json()["canary"].is_null());
    // A new canary that traps is withdrawn by rollback, and bad shares are refused.
    assert_eq!(deploy_canary(&server, "canary", "3.0.0", "trap", "0.5").status, 201);
    let r = server.post_empty_with("/admin/v1/plugins/canary/rollback", &[AUTH]);
    assert_eq!((r.json()["active_version"].as_str(), r.json()["canary"].is_null()), (Some("2.0.0"), true));
    for share in ["0", "1", "x"] {
        let r = deploy_canary(&server, "canary", "4.0.0", "none", share);
        assert_eq!((r.status, r.json()["error"]["param"].as_str()), (400, Some("canary")), "{share}: {}", r.body);
    }
    let r = deploy_canary(&server, "fresh", "1.0.0", "none", "0.5");
    assert_eq!(r.status, 400, "a canary needs an active version: {}", r.body);
    // Removing a name unloads it; requests naming it are then a 400.
    let r = server.delete_with("/admin/v1/plugins/canary", &[AUTH]);
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(complete(&server, Some("canary")).json()["error"]["code"], "unknown_plugin");
    assert_eq!(server.get_with("/admin/v1/plugins/canary", &[AUTH]).status, 404);
}

/// A deploy of `manifest` with the faulty sampler.
fn deploy_manifest(server: &TestServer, manifest: &str) -> Reply {
    server.deploy_manifest("admin-secret", manifest, &faulty_component())
}

#[test]
fn a_manifest_deploy_carries_typed_config_and_tighter_limits() {
    let server = server();
    let greedy = text(&complete(&server, None));
    let r = deploy_manifest(&server, "name = \"declared\"\nversion = \"1.0.0\"\nkind = \"sampler\"\n[config]\nfault = \"none\"\nunused = 3\n");
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(text(&complete(&server, Some("declared"))), greedy);
    // Its own, tighter deadline is the one that stops it.
    let r = deploy_manifest(&server, "name = \"declared\"\nversion = \"2.0.0\"\n[config]\nfault = \"loop\"\n[limits]\ncall-deadline-ms = 20\n");
    assert_eq!(r.status, 201, "{}", r.body);
    let failed = complete(&server, Some("declared"));
    assert_eq!(failed.status, 500);
    assert!(failed.json()["error"]["message"].as_str().unwrap().contains("deadline of 20 ms"), "{}", failed.body);
    // Bad manifests are a 400 naming the field, and nothing changes.
    for (manifest, param) in [
        ("name = \"declared\"\nversion = \"3.0.0\"\n[limits]\nmemory-mib = 100000\n", "limits.memory-mib"),
        ("name = \"declared\"\nversion = \"3.0.0\"\n[limits]\ncall-deadline-ms = 60000\n", "limits.call-deadline-ms"),
        ("name = \"declared\"\nversion = \"3.0.0\"\nkind = \"router\"\n", "kind"),
        ("name = \"declared\"\nversion = \"3.0.0\"\n[grants]\nfilesystem = true\n", "manifest"),
        ("version = \"3.0.0\"\n", "manifest"),
    ] {
        let r = deploy_manifest(&server, manifest);
        assert_eq!((r.status, r.json()["error"]["param"].as_str()), (400, Some(param)), "{manifest}: {}", r.body);
    }
    let r = server.post_with("/admin/v1/plugins", &[AUTH, ("content-type", "multipart/form-data; boundary=x")], b"--x\r\ncontent-disposition: form-data; name=\"manifest\"\r\n\r\nname = \"y\"\nversion = \"1.0.0\"\r\n--x--\r\n");
    assert_eq!((r.status, r.json()["error"]["param"].as_str()), (400, Some("component")), "{}", r.body);
    assert_eq!(info(&server, "declared")["versions"], json!(["1.0.0", "2.0.0"]));
}

#[test]
fn plugins_dropped_into_the_watched_folder_are_deployed_once_complete() {
    let dir = tempfile::tempdir().unwrap();
    let put = |name: &str, bytes: &[u8]| {
        // Write-then-rename, as the folder expects.
        let tmp = dir.path().join(format!("{name}.tmp"));
        std::fs::write(&tmp, bytes).unwrap();
        std::fs::rename(&tmp, dir.path().join(name)).unwrap();
    };
    // One plugin is there before the server starts.
    put("early.wasm", &faulty_component());
    put("early.toml", b"name = \"early\"\nversion = \"1.0.0\"\ncomponent = \"early.wasm\"\n[config]\nfault = \"none\"\n");
    let config = ServerConfig { admin_token: Some("admin-secret".into()), plugin_dir: Some(dir.path().to_path_buf()), ..ServerConfig::default() };
    let server = TestServer::start_with(|_| {}, config);
    let deployed = |name: &str| server.get_with(&format!("/admin/v1/plugins/{name}"), &[AUTH]).status == 200;
    let wait_until = |what: &dyn Fn() -> bool| {
        let start = std::time::Instant::now();
        while !what() && start.elapsed() < std::time::Duration::from_secs(20) {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        what()
    };
    assert!(wait_until(&|| deployed("early")), "the plugin present at startup is deployed");
    let greedy = text(&complete(&server, None));
    assert_eq!(text(&complete(&server, Some("early"))), greedy);

    // Junk is ignored: a manifest that does not parse, one whose component
    // is random bytes, and a half-written file under a temporary name.
    put("junk.toml", b"name = \"junk\"\nversion = ");
    put("noise.wasm", b"\0asm random bytes");
    put("noise.toml", b"name = \"noise\"\nversion = \"1.0.0\"\ncomponent = \"noise.wasm\"\n");
    std::fs::write(dir.path().join("late.toml.tmp"), b"name = \"late\"\nversion = \"1.0.0\"\ncomponent = \"late.wasm\"\n").unwrap();
    put("late.wasm", &faulty_component());
    std::thread::sleep(std::time::Duration::from_millis(800));
    assert!(!deployed("junk") && !deployed("noise") && !deployed("late"));
    assert_eq!(text(&complete(&server, Some("early"))), greedy, "the server keeps serving");

    // The rename completes the manifest, and it is deployed; so is a fixed
    // component for the manifest that failed.
    std::fs::rename(dir.path().join("late.toml.tmp"), dir.path().join("late.toml")).unwrap();
    assert!(wait_until(&|| deployed("late")));
    put("noise.wasm", &faulty_component());
    assert!(wait_until(&|| deployed("noise")), "a failed manifest is retried once its component changes");
    // A new version is a new manifest; the old one stays deployed.
    put("early-2.toml", b"name = \"early\"\nversion = \"2.0.0\"\ncomponent = \"early.wasm\"\n[config]\nfault = \"trap\"\n");
    assert!(wait_until(&|| info(&server, "early")["active_version"] == "2.0.0"));
    assert_eq!(complete(&server, Some("early")).status, 500);
}
