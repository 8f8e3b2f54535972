//! `weft serve`: load a model and serve the OpenAI-compatible HTTP API and
//! the gRPC API until Ctrl-C or SIGTERM, then drain in-flight requests.

use std::net::{IpAddr, SocketAddr};

use anyhow::{Context, Result};
use clap::Args;
use weft_server::{Server, ServerConfig};

use crate::ModelArgs;
use crate::store::Store;

#[derive(Args, Clone, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Address to listen on.
    #[arg(long, env = "WEFT_HOST", default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// HTTP port; 0 picks a free one (the bound address is printed).
    #[arg(long, env = "WEFT_PORT", default_value_t = 8080)]
    pub port: u16,
    /// gRPC port; 0 picks a free one.
    #[arg(long, env = "WEFT_GRPC_PORT", default_value_t = 50051)]
    pub grpc_port: u16,
    /// Serve HTTP only.
    #[arg(long, env = "WEFT_NO_GRPC")]
    pub no_grpc: bool,
    /// KV cache size in MiB (pages become resident only when used).
    #[arg(long, env = "WEFT_KV_CACHE_MIB", default_value_t = 256)]
    pub kv_cache_mib: usize,
    /// Most output tokens a request may ask for (default: the context length).
    #[arg(long, env = "WEFT_MAX_OUTPUT_TOKENS")]
    pub max_output_tokens: Option<usize>,
    /// Most sequences decoding at once.
    #[arg(long, env = "WEFT_MAX_RUNNING", default_value_t = 64)]
    pub max_running: usize,
    /// Requests waiting beyond the running ones before new ones get 503.
    #[arg(long, env = "WEFT_MAX_QUEUED", default_value_t = 256)]
    pub max_queued: usize,
}

pub fn serve(store: &Store, args: ServeArgs) -> Result<()> {
    let (path, mut loaded, mut engine_config) = crate::run::open(store, &args.model, args.kv_cache_mib << 20)?;
    // The API's model id is the store name (`smollm2-135m-instruct-q4_1`),
    // which clients can type, rather than the file's free-text title.
    if let Some(stem) = path.file_stem().and_then(|s| s.to_str()) {
        loaded.name = stem.to_string();
    }
    engine_config.max_running = args.max_running.max(1);
    let engine = crate::run::engine(&loaded, engine_config, args.model.sampler)?;
    let config = ServerConfig {
        http_addr: SocketAddr::new(args.host, args.port),
        grpc_addr: (!args.no_grpc).then(|| SocketAddr::new(args.host, args.grpc_port)),
        max_queued: args.max_queued,
        max_output_tokens: args.max_output_tokens,
        ..ServerConfig::default()
    };
    let name = loaded.name.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("weft-http")
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let server = Server::bind(loaded, engine, config).await.context("binding the listeners")?;
        let addr = server.local_addr()?;
        println!("weft: serving {name} on http://{addr}");
        if let Some(grpc) = server.grpc_local_addr() {
            println!("weft: gRPC (weft.v1.Generation, health, reflection) on {grpc}");
        }
        println!("weft: try  curl http://{addr}/v1/chat/completions -H 'content-type: application/json' \\");
        println!("             -d '{{\"model\": \"default\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hello!\"}}]}}'");
        server.serve(shutdown_signal()).await.context("serving")?;
        eprintln!("weft: stopped");
        Ok(())
    })
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    eprintln!("weft: shutting down; draining in-flight requests");
}
