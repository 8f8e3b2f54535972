//! HTTPS: the API served over rustls. The certificate chain and key are
//! read once at startup (a bad file stops the server with its path);
//! ALPN offers HTTP/2 and HTTP/1.1, and each accepted connection is served
//! by hyper-util's automatic HTTP/1.1 + HTTP/2 server, with graceful
//! shutdown: on stop no new connection is accepted and open ones finish
//! their requests.

use std::sync::Arc;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};

use crate::config::TlsFiles;

fn invalid(what: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, what)
}

/// The TLS acceptor for `files`.
pub fn acceptor(files: &TlsFiles) -> std::io::Result<TlsAcceptor> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| invalid(format!("reading the TLS certificate {}: {e}", files.cert.display())))?;
    if certs.is_empty() {
        return Err(invalid(format!("{} holds no PEM certificate", files.cert.display())));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| invalid(format!("reading the TLS private key {}: {e}", files.key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(format!("TLS versions: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| invalid(format!("the TLS certificate and key do not go together: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serve `router` over TLS on `listener` until `stop` resolves, then wait
/// for open connections to finish.
pub async fn serve(listener: TcpListener, acceptor: TlsAcceptor, router: Router, stop: impl Future<Output = ()>) -> std::io::Result<()> {
    let graceful = GracefulShutdown::new();
    tokio::pin!(stop);
    loop {
        let (tcp, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                // A failed accept (e.g. out of file descriptors) must not
                // end the server; the next one may succeed.
                Err(_) => continue,
            },
            () = &mut stop => break,
        };
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(router.clone());
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            // A client that fails the handshake is simply dropped.
            let Ok(tls) = acceptor.accept(tcp).await else { return };
            let builder = auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
            let _ = watcher.watch(conn.into_owned()).await;
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
