//! What every server listener does before a connection gets to speak: the connection caps (all connections of
//! a listener, and per client address), an accept that backs off when the process runs out of file
//! descriptors instead of spinning, and the open-file limit raised at start.
//!
//! A connection over a cap is closed at once, before any handshake (a refused client costs no TLS or SSH work),
//! and the refusal is logged with the reason, at most once a minute per reason.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};

use crate::proxy_protocol::TrustedProxies;

/// `[connections]` of comms.toml and app.toml: how many connections a listener serves, and for how long a
/// connection may stay quiet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectionLimits {
    /// Connections one listener serves at once (all clients); further ones are closed at once. 0: three
    /// quarters of the process's open-file limit, shared by the listeners (at least 64).
    pub max_connections: usize,
    /// Connections one client address may hold on one listener; further ones are closed at once.
    pub max_per_address: usize,
    /// Seconds a client has to finish the TLS handshake (and, on a port shared by HTTPS and SSH, to send its
    /// first byte).
    pub handshake_secs: u64,
    /// Seconds an HTTPS connection may stay open with no request in progress (before its first request, and
    /// between requests on a kept-alive HTTP/1.1 or HTTP/2 connection).
    pub idle_secs: u64,
    /// Addresses or CIDR blocks of load balancers that send the PROXY protocol (v1 or v2, e.g. haproxy's
    /// `send-proxy-v2`) on the public listeners: a connection from one of them must start with a PROXY header,
    /// and the client it names is the connection's address (caps, throttles, logs, audit). Empty (the default):
    /// off. A header from any other address is not trusted (it is taken as the protocol's first bytes, and fails).
    pub proxy_protocol_from: Vec<String>,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 0,
            max_per_address: 64,
            handshake_secs: 10,
            idle_secs: 30,
            proxy_protocol_from: Vec::new(),
        }
    }
}

impl ConnectionLimits {
    pub fn handshake(&self) -> Duration {
        Duration::from_secs(self.handshake_secs.max(1))
    }

    pub fn idle(&self) -> Duration {
        Duration::from_secs(self.idle_secs.max(1))
    }

    /// The cap of one listener: `max_connections`, or with 0 three quarters of the open-file limit divided
    /// among `listeners` (at least 64).
    pub fn effective_max(&self, listeners: usize) -> usize {
        if self.max_connections > 0 {
            return self.max_connections;
        }
        let files = open_file_limit().unwrap_or(1024);
        let share = files.saturating_mul(3) / 4 / u64::try_from(listeners.max(1)).unwrap_or(1);
        usize::try_from(share).unwrap_or(usize::MAX).max(64)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if self.max_per_address == 0 {
            anyhow::bail!("[connections] max_per_address must be at least 1");
        }
        if self.idle_secs == 0 || self.handshake_secs == 0 {
            anyhow::bail!("[connections] handshake_secs and idle_secs must be at least 1");
        }
        TrustedProxies::parse(&self.proxy_protocol_from)?;
        Ok(())
    }
}

/// The soft open-file limit of this process (`ulimit -n`), where there is one.
pub fn open_file_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        rlimit::Resource::NOFILE.get().ok().map(|(soft, _)| soft)
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Raise the soft open-file limit to the hard limit (servers call this at start): many distributions start
/// processes with 1,024. Returns the limit now in force.
pub fn raise_open_file_limit() -> std::io::Result<u64> {
    #[cfg(unix)]
    {
        rlimit::increase_nofile_limit(u64::MAX)
    }
    #[cfg(not(unix))]
    {
        Ok(u64::MAX)
    }
}

/// Why a connection was closed unheard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("{limit} connections are open, the listener's limit ([connections] max_connections)")]
    Total { limit: usize },
    #[error("this address holds {limit} connections, the limit per address ([connections] max_per_address)")]
    PerAddress { limit: usize },
}

/// The caps of one listener. Cheap to clone; every clone counts the same connections.
#[derive(Clone)]
pub struct Gate {
    inner: Arc<GateInner>,
}

struct GateInner {
    name: &'static str,
    max: usize,
    per_address: usize,
    counts: Mutex<Counts>,
    last_refusal_log: Mutex<Option<Instant>>,
    refused: AtomicU64,
    /// Load balancers whose connections start with a PROXY header, and how long they have to send it.
    proxies: TrustedProxies,
    header_wait: Duration,
    last_header_log: Mutex<Option<Instant>>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

/// One admitted connection; dropping it frees its place.
pub struct Permit {
    gate: Arc<GateInner>,
    addr: IpAddr,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Ok(mut c) = self.gate.counts.lock() {
            c.total = c.total.saturating_sub(1);
            if let Some(n) = c.by_address.get_mut(&self.addr) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    c.by_address.remove(&self.addr);
                }
            }
        }
    }
}

/// A connection past the accept loop ([`Gate::admit_accepted`]): admitted already, or from a load balancer whose
/// PROXY header is still to be read. Move it into the connection's task and call [`Admitting::finish`] first.
pub struct Admitting {
    gate: Gate,
    peer: SocketAddr,
    permit: Option<Permit>,
}

impl Admitting {
    /// The connection's place and its client's address (the balancer's header read first, exactly), or None:
    /// close the connection.
    pub async fn finish(self, stream: &mut TcpStream) -> Option<(Permit, SocketAddr)> {
        match self.permit {
            Some(p) => Some((p, self.peer)),
            None => self.gate.admit_proxied(stream, self.peer).await,
        }
    }
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("name", &self.inner.name)
            .field("max", &self.inner.max)
            .field("per_address", &self.inner.per_address)
            .field("open", &self.open())
            .finish()
    }
}

impl Gate {
    /// `name` (e.g. "https", "sftp") goes into the refusal log lines.
    pub fn new(name: &'static str, max: usize, per_address: usize) -> Gate {
        Gate {
            inner: Arc::new(GateInner {
                name,
                max: max.max(1),
                per_address: per_address.max(1),
                counts: Mutex::new(Counts::default()),
                last_refusal_log: Mutex::new(None),
                refused: AtomicU64::new(0),
                proxies: TrustedProxies::default(),
                header_wait: Duration::from_secs(10),
                last_header_log: Mutex::new(None),
            }),
        }
    }

    /// A gate of `limits` (PROXY protocol off: see [`Gate::from_public_limits`]).
    pub fn from_limits(name: &'static str, limits: &ConnectionLimits, listeners: usize) -> Gate {
        Gate::new(name, limits.effective_max(listeners), limits.max_per_address)
    }

    /// A gate of `limits` for a public listener, which a load balancer may front: connections from
    /// `proxy_protocol_from` start with a PROXY header ([`Gate::client_of`]). The list was checked by
    /// [`ConnectionLimits::validate`]; an invalid one here is logged and trusts nobody.
    pub fn from_public_limits(name: &'static str, limits: &ConnectionLimits, listeners: usize) -> Gate {
        let proxies = TrustedProxies::parse(&limits.proxy_protocol_from).unwrap_or_else(|e| {
            tracing::error!("{e:#}: the PROXY protocol is off");
            TrustedProxies::default()
        });
        Gate::new(name, limits.effective_max(listeners), limits.max_per_address)
            .with_proxies(proxies, limits.handshake())
    }

    /// This gate, with connections from `proxies` starting with a PROXY header (sent within `wait`).
    pub fn with_proxies(self, proxies: TrustedProxies, wait: Duration) -> Gate {
        let i = Arc::try_unwrap(self.inner).unwrap_or_else(|shared| GateInner {
            name: shared.name,
            max: shared.max,
            per_address: shared.per_address,
            counts: Mutex::new(Counts::default()),
            last_refusal_log: Mutex::new(None),
            refused: AtomicU64::new(0),
            proxies: TrustedProxies::default(),
            header_wait: shared.header_wait,
            last_header_log: Mutex::new(None),
        });
        Gate { inner: Arc::new(GateInner { proxies, header_wait: wait, ..i }) }
    }

    /// Whether connections from `peer` must start with a PROXY header (`proxy_protocol_from`).
    pub fn expects_proxy_header(&self, peer: SocketAddr) -> bool {
        !self.inner.proxies.is_empty() && self.inner.proxies.contains(peer.ip())
    }

    /// The accept loop's half of admitting a connection. From anyone but a trusted load balancer, the caps are
    /// checked here, before the next accept (a flood is refused as fast as it arrives, and costs no task); None:
    /// over a cap, close it. From a load balancer, the client is named by its PROXY header, read in the
    /// connection's own task ([`Admitting::finish`]) so that a slow balancer never holds the loop.
    pub fn admit_accepted(&self, peer: SocketAddr) -> Option<Admitting> {
        let permit = if self.expects_proxy_header(peer) { None } else { Some(self.admit(peer).ok()?) };
        Some(Admitting { gate: self.clone(), peer, permit })
    }

    /// Read a trusted load balancer's PROXY header (exactly: the protocol's bytes stay in `stream`) and admit the
    /// client it names. None: no or a bad header (logged at most once a minute), or over a cap.
    async fn admit_proxied(&self, stream: &mut TcpStream, peer: SocketAddr) -> Option<(Permit, SocketAddr)> {
        let client = match crate::proxy_protocol::read_header(stream, self.inner.header_wait).await {
            // a header naming no client (LOCAL/UNKNOWN: a health check) is the balancer's own connection
            Ok(client) => client.unwrap_or(peer),
            Err(e) => {
                self.inner.refused.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut last) = self.inner.last_header_log.lock()
                    && last.is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
                {
                    *last = Some(Instant::now());
                    tracing::warn!(
                        listener = self.inner.name,
                        %peer,
                        "connection from a PROXY protocol sender ([connections] proxy_protocol_from) closed: {e}"
                    );
                }
                return None;
            }
        };
        self.admit(client).ok().map(|p| (p, client))
    }

    /// The listener's cap.
    pub fn max(&self) -> usize {
        self.inner.max
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.inner.counts.lock().map(|c| c.total).unwrap_or(0)
    }

    /// Connections refused so far.
    pub fn refused(&self) -> u64 {
        self.inner.refused.load(Ordering::Relaxed)
    }

    /// A place for a connection from `peer`, or why there is none (logged, at most once a minute).
    pub fn admit(&self, peer: SocketAddr) -> Result<Permit, Refused> {
        let addr = peer.ip().to_canonical();
        let refusal = {
            let Ok(mut c) = self.inner.counts.lock() else { return Err(Refused::Total { limit: self.inner.max }) };
            let mine = c.by_address.get(&addr).copied().unwrap_or(0);
            if c.total >= self.inner.max {
                Refused::Total { limit: self.inner.max }
            } else if mine >= self.inner.per_address {
                Refused::PerAddress { limit: self.inner.per_address }
            } else {
                c.total += 1;
                *c.by_address.entry(addr).or_insert(0) += 1;
                return Ok(Permit { gate: self.inner.clone(), addr });
            }
        };
        let n = self.inner.refused.fetch_add(1, Ordering::Relaxed) + 1;
        if let Ok(mut last) = self.inner.last_refusal_log.lock()
            && last.is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
        {
            *last = Some(Instant::now());
            tracing::warn!(listener = self.inner.name, %peer, refused_so_far = n, "connection refused: {refusal}");
        }
        Err(refusal)
    }
}

/// Accept the next connection; when the process is out of file descriptors (EMFILE/ENFILE) or memory, wait
/// (50 ms doubling to 1 s, logged at most once a minute) instead of retrying in a busy loop. Other accept
/// errors concern one connection and are skipped.
pub async fn accept(listener: &TcpListener, what: &'static str) -> (TcpStream, SocketAddr) {
    // one line a minute for the whole process: out of descriptors, every listener fails at once
    static LAST_LOG: Mutex<Option<Instant>> = Mutex::new(None);
    let mut wait = Duration::from_millis(50);
    loop {
        match listener.accept().await {
            Ok(x) => return x,
            Err(e) => {
                let exhausted = matches!(e.raw_os_error(), Some(23 | 24 | 12 | 105));
                if !exhausted {
                    tracing::debug!(listener = what, "accept failed: {e}");
                    continue;
                }
                let log_now = LAST_LOG.lock().is_ok_and(|mut last| {
                    let due = last.is_none_or(|t| t.elapsed() >= Duration::from_secs(60));
                    if due {
                        *last = Some(Instant::now());
                    }
                    due
                });
                if log_now {
                    tracing::warn!(
                        listener = what,
                        "accept failed: {e}; waiting for connections to close (raise the open-file limit: \
                         LimitNOFILE in the systemd unit, [connections] max_connections)"
                    );
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(1));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_caps_count_per_listener_and_per_address_and_free_on_drop() {
        let g = Gate::new("t", 3, 2);
        let a1 = g.admit(addr("10.0.0.1:1")).unwrap();
        let _a2 = g.admit(addr("10.0.0.1:2")).unwrap();
        assert_eq!(g.admit(addr("10.0.0.1:3")).err(), Some(Refused::PerAddress { limit: 2 }));
        // an IPv4-mapped IPv6 address is the same client
        assert_eq!(g.admit(addr("[::ffff:10.0.0.1]:4")).err(), Some(Refused::PerAddress { limit: 2 }));
        let _b = g.admit(addr("10.0.0.2:1")).unwrap();
        assert_eq!(g.admit(addr("10.0.0.3:1")).err(), Some(Refused::Total { limit: 3 }));
        assert_eq!(g.open(), 3);
        drop(a1);
        assert_eq!(g.open(), 2);
        let _c = g.admit(addr("10.0.0.3:1")).unwrap();
        assert_eq!(g.refused(), 3);
    }

    #[test]
    fn an_automatic_cap_follows_the_open_file_limit() {
        let l = ConnectionLimits::default();
        let files = open_file_limit().unwrap();
        assert_eq!(l.effective_max(1) as u64, (files * 3 / 4).max(64));
        assert!(l.effective_max(4) <= l.effective_max(1));
        assert_eq!(ConnectionLimits { max_connections: 10, ..l.clone() }.effective_max(4), 10);
    }

    /// The accept loop refuses over-cap connections itself (no task, no read), while a trusted balancer's
    /// connection is let through to have its PROXY header read in its task, and the client it names is what
    /// the caps count; a balancer connection without a header is closed.
    #[tokio::test]
    async fn the_accept_loop_refuses_over_the_cap_and_a_balancers_header_names_the_client() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let proxies = TrustedProxies::parse(&["127.0.0.2".to_string()]).unwrap();
        let g = Gate::new("t", 2, 1).with_proxies(proxies, Duration::from_secs(5));
        let first = g.admit_accepted(addr("10.0.0.1:1")).expect("under the caps");
        assert!(g.admit_accepted(addr("10.0.0.1:2")).is_none(), "over the per-address cap, refused in the loop");
        assert_eq!(g.open(), 1, "admitted in the loop, before any task");

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let at = listener.local_addr().unwrap();
        let mut balancer = TcpStream::connect(at).await.unwrap();
        let (mut conn, _) = listener.accept().await.unwrap();
        let pending = g.admit_accepted(addr("127.0.0.2:9")).expect("a balancer's connection waits for its header");
        assert_eq!(g.open(), 1, "a balancer's connection is not counted before its header names the client");
        balancer.write_all(b"PROXY TCP4 192.0.2.7 127.0.0.1 5000 22\r\nSSH-2.0-x\r\n").await.unwrap();
        let (permit, client) = pending.finish(&mut conn).await.expect("admitted");
        assert_eq!(client, addr("192.0.2.7:5000"));
        let mut rest = [0u8; 9];
        conn.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"SSH-2.0-x", "the protocol's bytes stay in the stream");
        assert_eq!(g.open(), 2);
        drop(permit);

        let mut silent = TcpStream::connect(at).await.unwrap();
        let (mut conn, _) = listener.accept().await.unwrap();
        silent.write_all(b"SSH-2.0-no-header\r\n").await.unwrap();
        let pending = g.admit_accepted(addr("127.0.0.2:10")).unwrap();
        assert!(pending.finish(&mut conn).await.is_none(), "a balancer's connection without a header is closed");
        let (p, _) = first.finish(&mut conn).await.expect("admitted in the loop");
        drop(p);
        assert_eq!(g.open(), 0);
    }
}
