//! The gRPC API with a tonic client over loopback: the same answers as
//! HTTP, streams that add up to the unary answer, cancellation that frees
//! the KV cache, and status codes mapped from the shared error enum.

use serde_json::json;
use tonic::Code;
use weft_server::grpc::proto::generate_request::Input;
use weft_server::grpc::proto::generation_client::GenerationClient;
use weft_server::grpc::proto::{FinishReason, GenerateRequest, SamplingParameters};
use weft_tests::TestServer;

use crate::server::all_blocks_free;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

async fn client(server: &TestServer) -> GenerationClient<tonic::transport::Channel> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.grpc_addr)).unwrap().connect().await.unwrap();
    GenerationClient::new(channel)
}

fn prompt(text: &str, sampling: SamplingParameters) -> GenerateRequest {
    GenerateRequest { model: "default".into(), input: Some(Input::Prompt(text.into())), sampling: Some(sampling), ..GenerateRequest::default() }
}

#[test]
fn grpc_answers_equal_http_answers_and_streams_add_up() {
    let server = TestServer::start();
    let greedy = SamplingParameters { max_tokens: Some(12), temperature: Some(0.0), ..Default::default() };
    let http = server.post("/v1/completions", &json!({"prompt": "The capital of France is", "max_tokens": 12, "temperature": 0})).json();
    runtime().block_on(async {
        let mut c = client(&server).await;
        let unary = c.generate(prompt("The capital of France is", greedy.clone())).await.unwrap().into_inner();
        assert_eq!(unary.choices[0].text, http["choices"][0]["text"].as_str().unwrap());
        assert_eq!(unary.usage.unwrap().completion_tokens, http["usage"]["completion_tokens"].as_u64().unwrap());
        assert_eq!(unary.choices[0].finish_reason, FinishReason::Length as i32);

        let mut stream = c.generate_stream(prompt("The capital of France is", greedy)).await.unwrap().into_inner();
        let (mut text, mut tokens, mut usage) = (String::new(), Vec::new(), None);
        while let Some(chunk) = stream.message().await.unwrap() {
            text.push_str(&chunk.text);
            tokens.extend(chunk.tokens);
            usage = chunk.usage.or(usage);
        }
        assert_eq!(text, unary.choices[0].text);
        assert_eq!(tokens, unary.choices[0].tokens);
        assert_eq!(usage.unwrap().completion_tokens, tokens.len() as u64);
    });
}

#[test]
fn cancelling_a_grpc_stream_frees_its_kv_blocks() {
    let server = TestServer::start();
    runtime().block_on(async {
        let mut c = client(&server).await;
        let long = SamplingParameters { max_tokens: Some(2000), ignore_eos: true, ..Default::default() };
        let mut stream = c.generate_stream(prompt("Once upon a time", long)).await.unwrap().into_inner();
        for _ in 0..3 {
            stream.message().await.unwrap().unwrap();
        }
        drop(stream);
        drop(c);
    });
    assert!(all_blocks_free(&server));
}

#[test]
fn grpc_errors_carry_mapped_codes_and_the_stable_error_code() {
    let server = TestServer::start();
    runtime().block_on(async {
        let mut c = client(&server).await;
        let bad = SamplingParameters { top_p: Some(1.5), ..Default::default() };
        let e = c.generate(prompt("hi", bad)).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert_eq!(e.metadata().get("weft-error-code").unwrap(), "invalid_value");
        assert_eq!(e.metadata().get("weft-error-param").unwrap(), "top_p");
        let e = c.generate(GenerateRequest { model: "nope".into(), ..prompt("hi", Default::default()) }).await.unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
        let long = SamplingParameters { max_tokens: Some(8192), ..Default::default() };
        let e = c.generate(prompt("hi", long)).await.unwrap_err();
        assert_eq!(e.code(), Code::OutOfRange, "{e:?}");
    });
}
