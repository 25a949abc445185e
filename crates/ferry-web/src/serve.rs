//! Serve an axum router over HTTPS (rustls, ring) on a listener the caller bound — port 0 in tests — until the
//! shutdown future resolves; open connections get a short grace period.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum_server::tls_rustls::RustlsConfig;

pub async fn serve_https(
    listener: std::net::TcpListener,
    router: Router,
    tls: Arc<rustls::ServerConfig>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let handle = axum_server::Handle::new();
    let h = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        h.graceful_shutdown(Some(Duration::from_secs(5)));
    });
    axum_server::from_tcp_rustls(listener, RustlsConfig::from_config(tls))?
        .handle(handle)
        .serve(router.into_make_service_with_connect_info::<SocketAddr>())
        .await
}

/// Serve one accepted TCP connection as HTTPS with the router (used when a listener is shared with SSH and
/// the caller has already decided, from the first bytes, that this connection speaks TLS).
pub async fn serve_https_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    router: Router,
    acceptor: tokio_rustls::TlsAcceptor,
) {
    use axum::extract::ConnectInfo;
    use tower::ServiceExt;
    let tls = match tokio::time::timeout(Duration::from_secs(30), acceptor.accept(stream)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(%peer, "tls handshake failed: {e}");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "tls handshake timed out");
            return;
        }
    };
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        router.clone().oneshot(req)
    });
    let builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    if let Err(e) = builder.serve_connection(hyper_util::rt::TokioIo::new(tls), svc).await {
        tracing::debug!(%peer, "https connection ended: {e}");
    }
}

/// What a new connection on a shared port speaks, from its first byte: a TLS handshake starts with 0x16, an
/// SSH client with `SSH-`. A client that sends nothing within `wait` is treated as SSH (some SSH clients wait
/// for the server's banner first).
pub async fn sniff_is_tls(stream: &tokio::net::TcpStream, wait: Duration) -> std::io::Result<bool> {
    let mut b = [0u8; 1];
    match tokio::time::timeout(wait, stream.peek(&mut b)).await {
        Ok(Ok(0)) => Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed")),
        Ok(Ok(_)) => Ok(b[0] == 0x16),
        Ok(Err(e)) => Err(e),
        Err(_) => Ok(false),
    }
}
