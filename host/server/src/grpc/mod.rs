//! The gRPC API (`proto/weft/v1/generation.proto`): the same generation as
//! the HTTP API through the same validation and engine paths, plus standard
//! gRPC health checking and server reflection.
//!
//! Only the transport differs from HTTP: requests become the same
//! `SamplingFields` the HTTP body produces, so every bound and message is
//! shared; errors leave through [`status::to_status`], the one mapping from
//! `ApiError` to gRPC codes.

mod service;
pub mod status;

use std::future::Future;

use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

use crate::AppState;

/// The generated messages, server and client.
pub mod proto {
    tonic::include_proto!("weft.v1");
}

/// The encoded descriptor set of our protos, served by reflection.
pub const DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/weft_descriptor.bin"));

/// Serve gRPC on `listener` until `shutdown` resolves.
/// Serve the gRPC services on `listener` (over TLS with `tls`, a PEM
/// certificate chain and key) until `shutdown` resolves.
pub(crate) async fn serve(
    listener: TcpListener,
    state: AppState,
    tls: Option<(Vec<u8>, Vec<u8>)>,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let io = |e: &dyn std::fmt::Display| std::io::Error::other(format!("gRPC: {e}"));
    let generation = proto::generation_server::GenerationServer::new(service::GenerationService::new(state));
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<proto::generation_server::GenerationServer<service::GenerationService>>().await;
    // Both reflection versions: v1 for current clients, v1alpha for the
    // many tools (grpcurl, grpcio-reflection) that still ask for it.
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| io(&e))?;
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| io(&e))?;
    let mut builder = tonic::transport::Server::builder();
    if let Some((cert, key)) = tls {
        let identity = tonic::transport::Identity::from_pem(cert, key);
        builder = builder.tls_config(tonic::transport::ServerTlsConfig::new().identity(identity)).map_err(|e| io(&e))?;
    }
    builder
        .add_service(health)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(generation)
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), shutdown)
        .await
        .map_err(|e| io(&e))
}
