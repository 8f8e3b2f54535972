//! The OpenAPI document: generated from the code, committed under
//! `docs/api/openapi.json`, served at `/openapi.json`, and kept in step.
//! Regenerate the committed copy with `UPDATE_EXPECT=1 cargo test openapi`.

use weft_tests::{TestServer, repo_root};

#[test]
fn openapi_document_matches_the_committed_copy() {
    let generated = weft_server::openapi::document() + "\n";
    let path = repo_root().join("docs/api/openapi.json");
    if std::env::var_os("UPDATE_EXPECT").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(committed == generated, "docs/api/openapi.json is stale: regenerate it with `UPDATE_EXPECT=1 cargo test --release -p weft-tests --test e2e openapi`");
}

#[test]
fn openapi_document_is_served_and_covers_every_route() {
    let server = TestServer::start();
    let doc = server.get("/openapi.json").json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    let paths: Vec<&str> = doc["paths"].as_object().unwrap().keys().map(String::as_str).collect();
    for route in [
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/models",
        "/v1/models/{id}",
        "/tokenize",
        "/detokenize",
        "/health",
        "/ready",
        "/metrics",
        "/openapi.json",
    ] {
        assert!(paths.contains(&route), "{route} is missing from the document: {paths:?}");
    }
    let schemas = &doc["components"]["schemas"];
    let chat = schemas["ChatCompletionRequest"].to_string();
    assert!(chat.contains("#/components/schemas/SamplingFields") && chat.contains("messages"), "{chat}");
    assert!(schemas["SamplingFields"]["properties"]["temperature"].is_object(), "the shared sampling fields are documented");
}
