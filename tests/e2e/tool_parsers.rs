//! Tool-parser plugins: every builtin format passes the conformance kit
//! through the Wasm component, what a parser writes into the conversation
//! parses back, a parser that faults or answers something broken fails only
//! its own call (and request), and tool parsers deploy through the admin API
//! like any plugin.

use serde_json::{Value, json};
use weft_plugin_runtime::bindings::weft::plugin::types::ConfigValue;
use weft_plugin_runtime::conformance::{self, Corpus};
use weft_plugin_runtime::{Call, PluginError, Tool, ToolEvent, WasmToolParser};
use weft_server::ServerConfig;
use weft_server::tool_parsers::BUILTIN_FORMATS;
use weft_tests::{Reply, TestServer, plugin_runtime};

fn parser(bytes: &[u8], key: &str, value: &str) -> WasmToolParser {
    let runtime = plugin_runtime();
    let component = runtime.load_tool_parser("tool-parser", bytes, runtime.limits().clone()).expect("the component loads");
    WasmToolParser::new(component, vec![(key.into(), ConfigValue::Text(value.into()))]).expect("the parser starts")
}

fn builtin(format: &str) -> WasmToolParser {
    parser(weft_plugin_artifacts::TOOL_PARSER, "format", format)
}

fn faulty(fault: &str) -> WasmToolParser {
    parser(&std::fs::read(weft_plugin_artifacts::FAULTY_TOOL_PARSER_PATH).unwrap(), "fault", fault)
}

fn tools() -> Vec<Tool> {
    ["get_weather", "get_time"]
        .map(|name| Tool { name: name.into(), description: String::new(), parameters: r#"{"type": "object"}"#.into() })
        .to_vec()
}

#[test]
fn every_builtin_format_passes_the_conformance_kit() {
    let corpus = Corpus::parse(&std::fs::read_to_string(weft_tests::data("tool-parsers/corpus.json")).unwrap()).unwrap();
    for format in BUILTIN_FORMATS {
        let report = conformance::check(&builtin(format), &corpus, Some(format));
        assert!(report.cases >= 4, "{format}: {} cases", report.cases);
        assert!(report.failures.is_empty(), "{format}: {:#?}", &report.failures[..report.failures.len().min(3)]);
    }
    // The kit can fail: the Hermes parser does not read Mistral's calls.
    let report = conformance::check(&builtin("hermes"), &corpus, Some("mistral"));
    assert!(!report.failures.is_empty());
}

#[test]
fn calls_written_into_the_history_parse_back_in_every_format() {
    for format in BUILTIN_FORMATS {
        let parser = builtin(format);
        let call = Call { name: "get_weather".into(), arguments: r#"{"city":"Paris"}"#.into() };
        let text = parser.render_calls(&[call]).unwrap();
        let mut stream = parser.stream(&tools()).unwrap();
        let mut events = stream.push(&text).unwrap();
        events.extend(stream.finish().unwrap());
        assert_eq!(
            events,
            [
                ToolEvent::CallStart { index: 0, name: "get_weather".into() },
                ToolEvent::CallArguments { index: 0, text: r#"{"city":"Paris"}"#.into() },
            ],
            "{format}: {text}"
        );
        // The grammar that forces a call names every tool.
        let grammar = parser.call_grammar(&tools(), true).unwrap().expect("the builtin formats can be forced");
        assert!(grammar.contains("get_weather") && grammar.contains("get_time"), "{format}: {grammar}");
    }
}

/// Parse `text` whole: the first error, if any.
fn parse(parser: &WasmToolParser, text: &str) -> Result<Vec<ToolEvent>, PluginError> {
    let mut stream = parser.stream(&tools())?;
    let mut events = stream.push(text)?;
    events.extend(stream.finish()?);
    Ok(events)
}

#[test]
fn a_broken_tool_parser_fails_only_its_call_and_is_rebuilt() {
    let cases = [
        ("trap", "trapped"),
        ("loop", "deadline"),
        ("undeclared", "does not declare"),
        ("out-of-order", "started call 1 after 0 calls"),
        ("orphan-arguments", "has not started"),
        ("flood", "bytes for 5 bytes"),
        ("bad-arguments", "not one JSON object"),
    ];
    for (fault, why) in cases {
        let parser = faulty(fault);
        match parse(&parser, "hello") {
            Err(PluginError::Call { reason, .. }) => assert!(reason.contains(why), "{fault}: {reason}"),
            other => panic!("{fault}: {other:?}"),
        }
        assert_eq!(parser.health().faults(), 1, "{fault}");
        // The next call gets a fresh instance.
        assert_eq!(parser.render_result("ok").unwrap(), "ok", "{fault}");
    }
    // A refusal is the parser's answer, not a fault.
    let parser = faulty("refuse");
    assert!(matches!(parse(&parser, "hello"), Err(PluginError::Refused { .. })));
    assert_eq!(parser.health().faults(), 0);
    // What it renders is bounded.
    match faulty("huge-render").render_tools(&tools()) {
        Err(PluginError::Call { reason, .. }) => assert!(reason.contains("over"), "{reason}"),
        other => panic!("{other:?}"),
    }
    // A fault discards the instance with every answer's state in it: the
    // other open streams fail too, never read another instance's state.
    let parser = faulty("trap");
    let mut first = parser.stream(&tools()).unwrap();
    let mut second = parser.stream(&tools()).unwrap();
    assert!(first.push("a").is_err());
    match second.push("b") {
        Err(PluginError::Call { reason, .. }) => assert!(reason.contains("discarded"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert!(parser.stream(&tools()).is_ok(), "a fresh instance serves new answers");
}

const AUTH: (&str, &str) = ("authorization", "Bearer admin-secret");

fn deploy(server: &TestServer, manifest: &str, component: &[u8]) -> Reply {
    server.deploy_manifest("admin-secret", manifest, component)
}

fn ask(server: &TestServer, parser: &str, choice: &str, stream: bool) -> Reply {
    let tool = json!({"type": "function", "function": {"name": "get_time", "parameters": {
        "type": "object", "properties": {"zone": {"type": "string", "maxLength": 20}}, "required": ["zone"], "additionalProperties": false}}});
    server.post(
        "/v1/chat/completions",
        &json!({
            "messages": [{"role": "user", "content": "What time is it in Tokyo?"}],
            "tools": [tool], "tool_choice": choice, "parallel_tool_calls": false,
            "max_tokens": 48, "temperature": 0, "stream": stream,
            "weft": {"tool_parser": parser},
        }),
    )
}

#[test]
fn tool_parsers_deploy_through_the_admin_api_and_a_broken_one_fails_only_its_requests() {
    let server = TestServer::start_guided_with(ServerConfig { admin_token: Some("admin-secret".into()), ..ServerConfig::default() });
    let r = deploy(
        &server,
        "name = \"my-mistral\"\nversion = \"1.0.0\"\nkind = \"tool-parser\"\n[config]\nformat = \"mistral\"\n",
        weft_plugin_artifacts::TOOL_PARSER,
    );
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.json()["kind"], "tool-parser");
    let r = ask(&server, "my-mistral", "required", false);
    assert_eq!(r.status, 200, "{}", r.body);
    let choice = &r.json()["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{choice}");
    assert_eq!(choice["message"]["tool_calls"][0]["function"]["name"], "get_time");
    let kinds: Vec<(String, String)> = server.get_with("/admin/v1/plugins", &[AUTH]).json().as_array().unwrap().iter()
        .map(|p| (p["name"].as_str().unwrap().to_string(), p["kind"].as_str().unwrap().to_string()))
        .collect();
    for name in ["hermes", "llama3_json", "mistral", "my-mistral"] {
        assert!(kinds.contains(&(name.to_string(), "tool-parser".to_string())), "{name}: {kinds:?}");
    }
    // A name belongs to one kind.
    let r = deploy(&server, "name = \"my-mistral\"\nversion = \"2.0.0\"\nkind = \"sampler\"\n", weft_plugin_artifacts::SAMPLER);
    assert_eq!(r.status, 409, "{}", r.body);

    // A parser that traps fails its own requests, whole or streamed.
    let faulty = std::fs::read(weft_plugin_artifacts::FAULTY_TOOL_PARSER_PATH).unwrap();
    let r = deploy(&server, "name = \"broken\"\nversion = \"1.0.0\"\nkind = \"tool-parser\"\n[config]\nfault = \"trap\"\n", &faulty);
    assert_eq!(r.status, 201, "{}", r.body);
    let r = ask(&server, "broken", "auto", false);
    assert_eq!((r.status, r.json()["error"]["code"].clone()), (500, json!("plugin_failed")), "{}", r.body);
    let r = ask(&server, "broken", "auto", true);
    assert_eq!(r.status, 200);
    let events = r.sse_data();
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "plugin_failed", "{events:?}");
    assert_eq!(server.get_with("/admin/v1/plugins/broken", &[AUTH]).json()["health"][0]["faults"], 2);
    // Everyone else is served.
    let r = ask(&server, "hermes", "required", false);
    assert_eq!(r.json()["choices"][0]["finish_reason"], "tool_calls", "{}", r.body);

    // Removed, its name is unknown again.
    assert_eq!(server.delete_with("/admin/v1/plugins/my-mistral", &[AUTH]).status, 204);
    let r = ask(&server, "my-mistral", "required", false);
    assert_eq!(r.status, 400);
    assert_eq!((r.json()["error"]["code"].clone(), r.json()["error"]["param"].clone()), (json!("unknown_plugin"), json!("weft.tool_parser")));
}

#[test]
fn a_deployed_tool_parser_and_its_config_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let with_state = || {
        TestServer::start_guided_with(ServerConfig {
            admin_token: Some("admin-secret".into()),
            state_dir: Some(dir.path().to_path_buf()),
            ..ServerConfig::default()
        })
    };
    {
        let server = with_state();
        let manifest = "name = \"kept-mistral\"\nversion = \"1.0.0\"\nkind = \"tool-parser\"\n[config]\nformat = \"mistral\"\n";
        assert_eq!(deploy(&server, manifest, weft_plugin_artifacts::TOOL_PARSER).status, 201);
        // Builtin names are reserved.
        let manifest = "name = \"hermes\"\nversion = \"0.2.0\"\nkind = \"tool-parser\"\n";
        assert_eq!(deploy(&server, manifest, weft_plugin_artifacts::TOOL_PARSER).status, 400);
    }
    let server = with_state();
    let info = server.get_with("/admin/v1/plugins/kept-mistral", &[AUTH]).json();
    assert_eq!((info["kind"].as_str(), info["active_version"].as_str()), (Some("tool-parser"), Some("1.0.0")), "{info}");
    let r = ask(&server, "kept-mistral", "required", false);
    assert_eq!(r.json()["choices"][0]["finish_reason"], "tool_calls", "{}", r.body);
    let info = server.get_with("/admin/v1/plugins/hermes", &[AUTH]).json();
    assert_eq!(info["versions"], json!(["0.1.0"]), "{info}");
}
