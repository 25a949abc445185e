//! What one server remembers across its connections: the live sessions, so that the moment a principal or a
//! key loses its access its open sessions can be closed ([`Sessions::close_where`]), and the refused logins per
//! source address, for a growing delay against brute force.
//!
//! One [`Sessions`] belongs to one server (pass the same one to every [`super::serve_with`] /
//! [`super::serve_stream`] call of that server); clones share it.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio_util::sync::CancellationToken;

/// How long a source address's refused logins are remembered.
pub const THROTTLE_FORGET: Duration = Duration::from_secs(600);
/// The delay before answering a refused login grows from this, doubling per failure...
pub const THROTTLE_BASE: Duration = Duration::from_millis(100);
/// ...up to this.
pub const THROTTLE_MAX: Duration = Duration::from_secs(8);
/// Source addresses remembered at most (the oldest are forgotten first), so a flood of addresses cannot
/// grow memory without bound.
const THROTTLE_MAX_ADDRESSES: usize = 100_000;

/// One logged-in SSH connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    pub id: u64,
    /// [`super::Principal::name`] of the login.
    pub principal: String,
    /// `SHA256:…` of the key that logged in.
    pub key_fingerprint: String,
    pub peer: Option<SocketAddr>,
    pub since: SystemTime,
}

#[derive(Default)]
struct Inner {
    next_id: AtomicU64,
    live: Mutex<HashMap<u64, (SessionInfo, CancellationToken)>>,
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

/// The live sessions and the login throttle of one server. Cheap to clone; clones share the state.
#[derive(Clone, Default)]
pub struct Sessions(Arc<Inner>);

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").field("live", &self.len()).finish()
    }
}

impl Sessions {
    pub fn new() -> Self {
        Self::default()
    }

    /// The logged-in sessions, oldest first.
    pub fn list(&self) -> Vec<SessionInfo> {
        let mut out: Vec<SessionInfo> = match self.0.live.lock() {
            Ok(m) => m.values().map(|(i, _)| i.clone()).collect(),
            Err(_) => Vec::new(),
        };
        out.sort_by_key(|i| i.id);
        out
    }

    /// How many sessions are logged in.
    pub fn len(&self) -> usize {
        self.0.live.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// How many sessions `principal` has logged in.
    pub fn count_of(&self, principal: &str) -> usize {
        self.0.live.lock().map(|m| m.values().filter(|(i, _)| i.principal == principal).count()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Close every session for which `doomed` is true, at once: the client is sent a disconnect message and
    /// the connection is cut a moment later whatever it is doing. Returns the sessions closed.
    pub fn close_where(&self, doomed: impl Fn(&SessionInfo) -> bool) -> Vec<SessionInfo> {
        let Ok(live) = self.0.live.lock() else { return Vec::new() };
        let mut closed = Vec::new();
        for (info, token) in live.values() {
            if doomed(info) && !token.is_cancelled() {
                token.cancel();
                closed.push(info.clone());
            }
        }
        closed
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.0.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub(crate) fn insert(&self, info: SessionInfo, revoke: CancellationToken) {
        if let Ok(mut m) = self.0.live.lock() {
            m.insert(info.id, (info, revoke));
        }
    }

    pub(crate) fn remove(&self, id: u64) {
        if let Ok(mut m) = self.0.live.lock() {
            m.remove(&id);
        }
    }

    /// Record a refused login from `peer`; returns how long to wait before answering it.
    pub(crate) fn throttle_failure(&self, peer: Option<SocketAddr>) -> Duration {
        let Some(ip) = peer.map(|p| p.ip()) else { return THROTTLE_BASE };
        let Ok(mut m) = self.0.failures.lock() else { return THROTTLE_BASE };
        let now = Instant::now();
        m.retain(|_, (_, last)| now.duration_since(*last) < THROTTLE_FORGET);
        if m.len() >= THROTTLE_MAX_ADDRESSES
            && !m.contains_key(&ip)
            && let Some(oldest) = m.iter().min_by_key(|(_, (_, last))| *last).map(|(ip, _)| *ip)
        {
            m.remove(&oldest);
        }
        let e = m.entry(ip).or_insert((0, now));
        e.0 = e.0.saturating_add(1);
        e.1 = now;
        THROTTLE_BASE.saturating_mul(1u32 << e.0.saturating_sub(1).min(10)).min(THROTTLE_MAX)
    }

    /// A login from `peer` succeeded: forget its refused ones.
    pub(crate) fn throttle_success(&self, peer: Option<SocketAddr>) {
        if let (Some(p), Ok(mut m)) = (peer, self.0.failures.lock()) {
            m.remove(&p.ip());
        }
    }
}

/// Removes a session from the table when its connection task ends, however it ends.
pub(crate) struct Deregister {
    pub(crate) sessions: Sessions,
    pub(crate) id: u64,
}

impl Drop for Deregister {
    fn drop(&mut self) {
        self.sessions.remove(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delay_doubles_per_failure_and_is_capped() {
        let s = Sessions::new();
        let peer = Some(SocketAddr::from(([127, 0, 0, 9], 1)));
        let delays: Vec<_> = (0..12).map(|_| s.throttle_failure(peer)).collect();
        assert_eq!(delays[0], THROTTLE_BASE);
        assert_eq!(delays[1], THROTTLE_BASE * 2);
        assert_eq!(delays[11], THROTTLE_MAX);
        s.throttle_success(peer);
        assert_eq!(s.throttle_failure(peer), THROTTLE_BASE);
        // another server's table is its own
        assert_eq!(Sessions::new().throttle_failure(peer), THROTTLE_BASE);
    }

    #[test]
    fn close_where_cancels_only_the_matching_sessions_once() {
        let s = Sessions::new();
        let mk = |principal: &str, key: &str| {
            let info = SessionInfo {
                id: s.next_id(),
                principal: principal.into(),
                key_fingerprint: key.into(),
                peer: None,
                since: SystemTime::now(),
            };
            let t = CancellationToken::new();
            s.insert(info, t.clone());
            t
        };
        let (a1, a2, b) = (mk("a", "k1"), mk("a", "k2"), mk("b", "k3"));
        assert_eq!(s.close_where(|i| i.key_fingerprint == "k2").len(), 1);
        assert!(a2.is_cancelled() && !a1.is_cancelled() && !b.is_cancelled());
        assert_eq!(s.close_where(|i| i.principal == "a").len(), 1, "k2 was already closed");
        assert!(a1.is_cancelled() && !b.is_cancelled());
        assert_eq!(s.len(), 3, "entries leave when their connection ends");
    }
}
