//! Serve an axum router over HTTPS (rustls, ring) on a listener the caller bound — port 0 in tests — until the
//! shutdown future resolves; open connections get a short grace period. Also: the plain-HTTP listener that only
//! redirects to HTTPS, and the per-request time limit.
//!
//! Time limits of every HTTPS connection: TLS handshake [`TLS_HANDSHAKE_TIMEOUT`], request head
//! [`HEADER_READ_TIMEOUT`] (also while a kept-alive connection is idle); the whole request, body included, is
//! bounded by [`with_request_timeout`] where the router applies it.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum_server::tls_rustls::RustlsConfig;

/// A client must finish its TLS handshake within this time.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A client must send a whole request head within this time (slowloris).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

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
    let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(RustlsConfig::from_config(tls))
        .handshake_timeout(TLS_HANDSHAKE_TIMEOUT);
    let mut server = axum_server::from_tcp(listener)?.acceptor(acceptor).handle(handle);
    server.http_builder().http1().header_read_timeout(HEADER_READ_TIMEOUT);
    server.serve(router.into_make_service_with_connect_info::<SocketAddr>()).await
}

/// Answer every request on `listener` (plain HTTP, e.g. port 80) with `308 Permanent Redirect` to the same
/// path and query under `https_base` (`https://comms.example`), and nothing else: no route, no body.
pub async fn serve_redirect(
    listener: tokio::net::TcpListener,
    https_base: String,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let base: Arc<str> = https_base.trim_end_matches('/').into();
    let router = Router::new().fallback(move |uri: axum::http::Uri| {
        let base = base.clone();
        async move {
            let path = uri.path_and_query().map(|p| p.as_str()).filter(|p| p.starts_with('/')).unwrap_or("/");
            let location = axum::http::HeaderValue::from_str(&format!("{base}{path}"))
                .or_else(|_| axum::http::HeaderValue::from_str(&format!("{base}/")))
                .unwrap_or_else(|_| axum::http::HeaderValue::from_static("/"));
            (axum::http::StatusCode::PERMANENT_REDIRECT, [(axum::http::header::LOCATION, location)])
        }
    });
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await
}

/// Answer `408` to any request not finished within `limit` (reading its body included).
pub fn with_request_timeout(router: Router, limit: Duration) -> Router {
    router.layer(axum::middleware::from_fn(
        move |req: axum::extract::Request, next: axum::middleware::Next| async move {
            match tokio::time::timeout(limit, next.run(req)).await {
                Ok(r) => r,
                Err(_) => axum::response::IntoResponse::into_response(crate::ApiError::Timeout(format!(
                    "the request took longer than {} s; retry (and send the body without pausing)",
                    limit.as_secs()
                ))),
            }
        },
    ))
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
    let tls = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
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
    let mut builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder.http1().timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    builder.http2().timer(hyper_util::rt::TokioTimer::new());
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

/// The long-running tasks of a server (listeners, relays, watchers) and the one signal that stops them all.
pub struct Tasks {
    shutdown: tokio::sync::watch::Sender<bool>,
    handles: Vec<tokio::task::JoinHandle<()>>,
}

impl Default for Tasks {
    fn default() -> Self {
        Tasks { shutdown: tokio::sync::watch::channel(false).0, handles: Vec::new() }
    }
}

impl Tasks {
    /// A future that resolves once [`Tasks::stop`] is called; hand one to every task.
    pub fn shutdown_signal(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.shutdown.subscribe();
        async move {
            let _ = rx.wait_for(|v| *v).await;
        }
    }

    pub fn spawn(&mut self, task: impl Future<Output = ()> + Send + 'static) {
        self.handles.push(tokio::spawn(task));
    }

    /// Spawn a task whose error (it stopped serving) is logged as `<what> stopped: <error>`.
    pub fn spawn_logged<E: std::fmt::Display>(
        &mut self,
        what: &'static str,
        task: impl Future<Output = Result<(), E>> + Send + 'static,
    ) {
        self.spawn(async move {
            if let Err(e) = task.await {
                tracing::error!("{what} stopped: {e:#}");
            }
        });
    }

    /// Signal every task to stop and wait for each (at most 10 s apiece: open connections get a grace period).
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for t in self.handles {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    #[tokio::test]
    async fn a_request_over_the_time_limit_is_answered_408() {
        let router = axum::Router::new().route("/fast", axum::routing::get(|| async { "ok" })).route(
            "/slow",
            axum::routing::get(|| async { tokio::time::sleep(std::time::Duration::from_secs(5)).await }),
        );
        let router = super::with_request_timeout(router, std::time::Duration::from_millis(100));
        let fast = router.clone().oneshot(Request::get("/fast").body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(fast.status(), StatusCode::OK);
        let slow = router.oneshot(Request::get("/slow").body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(slow.status(), StatusCode::REQUEST_TIMEOUT);
    }

    #[tokio::test]
    async fn the_redirect_listener_answers_308_to_the_same_path_and_nothing_else() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(super::serve_redirect(l, "https://comms.example:443/".into(), async move {
            let _ = rx.await;
        }));
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /v1/files?wait=5 HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 308"), "{answer}");
        assert!(answer.contains("location: https://comms.example:443/v1/files?wait=5\r\n"), "{answer}");
        let _ = tx.send(());
        task.await.unwrap().unwrap();
    }
}
