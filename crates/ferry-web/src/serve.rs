//! Serve an axum router over HTTPS (rustls, ring) on a listener the caller bound — port 0 in tests — until the
//! shutdown future resolves; open connections get a short grace period. Also: the plain-HTTP listener that only
//! redirects to HTTPS, and the per-request time limit.
//!
//! Every connection of every listener passes the listener's [`Gate`] (a cap on all connections and one per
//! client address, refused before any handshake), then has [`ConnectionLimits::handshake`] to finish its TLS
//! handshake, [`HEADER_READ_TIMEOUT`] to send a request head, and is closed once it has had no request in
//! progress for [`ConnectionLimits::idle`] (before its first request, and between requests, HTTP/1.1 and
//! HTTP/2 alike). The whole request, body included, is bounded by [`with_request_timeout`] where the router
//! applies it. Accept backs off when the process is out of file descriptors ([`ferry_io::accept::accept`]).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
pub use ferry_io::accept::{ConnectionLimits, Gate, Permit};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

/// A client must send a whole request head within this time (slowloris).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// After the shutdown signal (or an idle close), how long a connection may take to finish its requests.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Serve `router` over HTTPS on `listener` until `shutdown` resolves, within `gate` and `limits`.
pub async fn serve_https(
    listener: std::net::TcpListener,
    router: Router,
    tls: Arc<rustls::ServerConfig>,
    gate: Gate,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    serve_loop(listener, "https", gate, shutdown, move |stream, peer, permit, stop| {
        serve_https_connection(stream, peer, router.clone(), acceptor.clone(), limits.clone(), stop, permit)
    })
    .await
}

/// Accept on `listener` until `shutdown`, admitting each connection through `gate` and serving it with
/// `serve`; then ask open connections to finish (they get [`CLOSE_GRACE`]) and wait for them.
async fn serve_loop<F, Fut>(
    listener: tokio::net::TcpListener,
    what: &'static str,
    gate: Gate,
    shutdown: impl Future<Output = ()> + Send + 'static,
    serve: F,
) -> std::io::Result<()>
where
    F: Fn(tokio::net::TcpStream, SocketAddr, Permit, tokio::sync::watch::Receiver<bool>) -> Fut
        + Clone
        + Send
        + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut conns = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            (stream, peer) = ferry_io::accept::accept(&listener, what) => {
                let _ = stream.set_nodelay(true);
                // over a cap: the stream is dropped (closed) here, before any handshake (a load balancer's
                // connection: its PROXY header, read in the connection's task, names the client)
                let Some(admitting) = gate.admit_accepted(peer) else { continue };
                let (serve, stop) = (serve.clone(), stop_rx.clone());
                conns.spawn(async move {
                    let mut stream = stream;
                    let Some((permit, client)) = admitting.finish(&mut stream).await else { return };
                    serve(stream, client, permit, stop).await
                });
            }
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(CLOSE_GRACE * 2, async { while conns.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        conns.abort_all();
    }
    Ok(())
}

/// Answer every request on `listener` (plain HTTP, e.g. port 80) with `308 Permanent Redirect` to the same
/// path and query under `https_base` (`https://comms.example`), and nothing else: no route, no body.
pub async fn serve_redirect(
    listener: tokio::net::TcpListener,
    https_base: String,
    gate: Gate,
    limits: ConnectionLimits,
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
    serve_loop(listener, "http redirect", gate, shutdown, move |stream, peer, permit, stop| {
        let (router, idle) = (router.clone(), limits.idle());
        async move {
            serve_http(stream, peer, router, idle, stop).await;
            drop(permit);
        }
    })
    .await
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

/// Serve one accepted TCP connection as HTTPS with the router: the TLS handshake within
/// [`ConnectionLimits::handshake`], then HTTP/1.1 or HTTP/2 until the client leaves, the connection has been
/// idle for [`ConnectionLimits::idle`], or `stop` turns true. `permit` (the connection's place under the
/// listener's caps) is held until the connection ends. Also used when a listener is shared with SSH and the
/// caller has decided, from the first byte, that this connection speaks TLS.
pub async fn serve_https_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    router: Router,
    acceptor: tokio_rustls::TlsAcceptor,
    limits: ConnectionLimits,
    stop: tokio::sync::watch::Receiver<bool>,
    permit: Permit,
) {
    let tls = match tokio::time::timeout(limits.handshake(), acceptor.accept(stream)).await {
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
    serve_http(tls, peer, router, limits.idle(), stop).await;
    drop(permit);
}

/// Requests in progress on one connection, and when the last one ended.
struct Activity {
    in_flight: AtomicUsize,
    last_end: Mutex<Instant>,
}

impl Activity {
    fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(self.clone())
    }

    /// When the connection becomes idle if nothing starts: `None` while a request is in progress.
    fn idle_at(&self, idle: Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return None;
        }
        self.last_end.lock().ok().map(|t| *t + idle)
    }
}

/// One request in progress, until its response body has been sent (or dropped).
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Ok(mut t) = self.0.last_end.lock() {
            *t = Instant::now();
        }
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body that keeps its request counted as in progress until it has been sent.
struct TrackedBody {
    body: axum::body::Body,
    _in_flight: InFlight,
}

impl axum::body::HttpBody for TrackedBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// HTTP/1.1 or HTTP/2 (by the client's choice) on `io` until the client leaves, no request has been in
/// progress for `idle`, or `stop` turns true; the last two close gracefully, then after [`CLOSE_GRACE`] hard.
async fn serve_http<IO>(
    io: IO,
    peer: SocketAddr,
    router: Router,
    idle: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    use axum::extract::ConnectInfo;
    use tower::ServiceExt;
    let activity = Arc::new(Activity { in_flight: AtomicUsize::new(0), last_end: Mutex::new(Instant::now()) });
    let tracker = activity.clone();
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        let in_flight = tracker.start();
        let call = router.clone().oneshot(req);
        async move {
            let resp = call.await?;
            Ok::<_, std::convert::Infallible>(
                resp.map(|body| axum::body::Body::new(TrackedBody { body, _in_flight: in_flight })),
            )
        }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder.http1().timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    builder.http2().timer(hyper_util::rt::TokioTimer::new());
    let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(io), svc);
    tokio::pin!(conn);
    let mut closing: Option<Instant> = None;
    loop {
        let idle_at = activity.idle_at(idle);
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, "http connection ended: {e}");
                }
                return;
            }
            () = sleep_until_opt(idle_at), if closing.is_none() => {
                if activity.idle_at(idle).is_some_and(|t| t <= Instant::now()) {
                    tracing::debug!(%peer, "closing an idle connection");
                    conn.as_mut().graceful_shutdown();
                    closing = Some(Instant::now() + CLOSE_GRACE);
                }
            }
            _ = stop.wait_for(|s| *s), if closing.is_none() => {
                conn.as_mut().graceful_shutdown();
                closing = Some(Instant::now() + CLOSE_GRACE);
            }
            () = sleep_until_opt(closing), if closing.is_some() => {
                tracing::debug!(%peer, "connection did not close in time; cut");
                return;
            }
        }
    }
}

/// Sleep until `at`, or forever with `None` (a request in progress is re-checked when it ends: the select
/// loop wakes on the connection's own progress).
async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => tokio::time::sleep(Duration::from_secs(1)).await,
    }
}

/// What a new connection on a shared port speaks, from its first byte: a TLS handshake starts with 0x16, an
/// SSH client with `SSH-` (SSH clients send their banner without waiting for the server's). `None`: nothing
/// arrived within `wait` (the connection should be closed: it speaks neither).
pub async fn sniff_is_tls(stream: &tokio::net::TcpStream, wait: Duration) -> std::io::Result<Option<bool>> {
    let mut b = [0u8; 1];
    match tokio::time::timeout(wait, stream.peek(&mut b)).await {
        Ok(Ok(0)) => Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed")),
        Ok(Ok(_)) => Ok(Some(b[0] == 0x16)),
        Ok(Err(e)) => Err(e),
        Err(_) => Ok(None),
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
        let limits = super::ConnectionLimits::default();
        let gate = super::Gate::new("test", 8, 8);
        let task =
            tokio::spawn(super::serve_redirect(l, "https://comms.example:443/".into(), gate, limits, async move {
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
