//! Who may log in, and with which limits, on a running Comms server: the key cache and the tenants' limits
//! reloaded from the database whenever it changes ([`watch_access`], bound [`ACCESS_RELOAD_BOUND`]), the SFTP
//! sessions closed when their key or tenant loses access, the SFTP authorizer (tenant from the key, upload
//! limits on every write, logins reported), and the security events this produces for the audit log
//! (`auth_failed` coalesced per address, `key_new_address`, `quota_refused`, `session_closed`).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::db::Db;
use russh::keys::PublicKey;

use crate::{CommsState, db, limits};

/// How often a running server looks for changes to tenants, keys and limits (one single-row query).
pub const ACCESS_POLL_INTERVAL: Duration = Duration::from_millis(250);
/// A change to tenants, keys or limits made by any process (`ferry comms tenant ...`, the admin API) takes
/// effect on a running server — refusals at SSH and HTTPS, open SFTP sessions closed — within this time.
pub const ACCESS_RELOAD_BOUND: Duration = Duration::from_secs(1);
/// Even without a change, everything is reloaded this often.
const ACCESS_FULL_RELOAD: Duration = Duration::from_secs(30);
/// Upload counts are written to the database this often.
const USAGE_SAVE_INTERVAL: Duration = Duration::from_secs(2);

/// Active keys by fingerprint -> (tenant, key). Loaded from the database at start, updated on registration.
#[derive(Default)]
pub struct KeyCache(RwLock<HashMap<String, (String, PublicKey)>>);

impl KeyCache {
    pub fn tenant_of(&self, fingerprint: &str) -> Option<(String, PublicKey)> {
        self.0.read().ok()?.get(fingerprint).cloned()
    }

    pub fn remove(&self, fingerprint: &str) {
        if let Ok(mut m) = self.0.write() {
            m.remove(fingerprint);
        }
    }

    pub fn insert(&self, fingerprint: String, tenant: String, key: PublicKey) {
        if let Ok(mut m) = self.0.write() {
            m.insert(fingerprint, (tenant, key));
        }
    }

    /// Whether `fingerprint` is an active key of `tenant`.
    pub fn is_active_for(&self, fingerprint: &str, tenant: &str) -> bool {
        self.0.read().ok().is_some_and(|m| m.get(fingerprint).is_some_and(|(t, _)| t == tenant))
    }

    pub async fn reload(&self, pool: &Db) -> anyhow::Result<()> {
        let mut fresh = HashMap::new();
        for row in db::active_keys(pool).await? {
            match ferry_io::keys::parse_public_key(&row.public_key) {
                Ok(k) => {
                    fresh.insert(row.fingerprint, (row.tenant, k));
                }
                Err(e) => {
                    tracing::error!(tenant = %row.tenant, "stored key cannot be parsed, ignoring it: {e}")
                }
            }
        }
        if let Ok(mut m) = self.0.write() {
            *m = fresh;
        }
        Ok(())
    }
}

/// Audits a repeated event (failed logins from one address, one refused file) at most once per window, with
/// the number of repeats left out in between, so an attacker cannot flood the audit log.
pub struct Coalescer<K> {
    window: Duration,
    last: Mutex<HashMap<K, (Instant, u32)>>,
}

impl<K: std::hash::Hash + Eq + Clone> Coalescer<K> {
    const MAX_KEYS: usize = 10_000;

    pub fn new(window: Duration) -> Self {
        Coalescer { window, last: Mutex::new(HashMap::new()) }
    }

    /// Some(repeats left out since the last audited one) if this occurrence should be audited.
    pub fn admit(&self, key: K) -> Option<u32> {
        let Ok(mut m) = self.last.lock() else { return Some(0) };
        let now = Instant::now();
        if m.len() >= Self::MAX_KEYS {
            let window = self.window;
            m.retain(|_, (at, _)| now.duration_since(*at) < window);
        }
        match m.get_mut(&key) {
            Some((at, skipped)) if now.duration_since(*at) < self.window => {
                *skipped = skipped.saturating_add(1);
                None
            }
            Some((at, skipped)) => {
                *at = now;
                Some(std::mem::take(skipped))
            }
            None => {
                if m.len() < Self::MAX_KEYS {
                    m.insert(key, (now, 0));
                }
                Some(0)
            }
        }
    }
}

/// Refusals of unauthenticated requests per source address: after `max` in one `window`, the address is
/// answered 429 without any work (no database, no audit entry) until the window ends.
pub struct RefusalLimiter {
    window: Duration,
    max: u32,
    counts: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl RefusalLimiter {
    const MAX_KEYS: usize = 10_000;

    pub fn new(window: Duration, max: u32) -> Self {
        RefusalLimiter { window, max, counts: Mutex::new(HashMap::new()) }
    }

    /// Some(how long to wait) if `ip` has used up its refusals of the current window.
    pub fn limited(&self, ip: IpAddr) -> Option<Duration> {
        let m = self.counts.lock().ok()?;
        let (start, n) = m.get(&ip)?;
        let elapsed = start.elapsed();
        (elapsed < self.window && *n >= self.max).then(|| self.window.saturating_sub(elapsed))
    }

    /// One more refusal for `ip`.
    pub fn refused(&self, ip: IpAddr) {
        let Ok(mut m) = self.counts.lock() else { return };
        let now = Instant::now();
        if m.len() >= Self::MAX_KEYS {
            let window = self.window;
            m.retain(|_, (at, _)| now.duration_since(*at) < window);
        }
        let full = m.len() >= Self::MAX_KEYS;
        match m.get_mut(&ip) {
            Some((start, n)) if now.duration_since(*start) < self.window => *n = n.saturating_add(1),
            Some(entry) => *entry = (now, 1),
            None if !full => {
                m.insert(ip, (now, 1));
            }
            None => {}
        }
    }
}

impl CommsState {
    /// Reload keys and limits from the database and close the SFTP sessions whose key is no longer an active
    /// key of their tenant (revoked, tenant disabled, deleted). Sessions of a key retired by a rotation are
    /// left to finish: new logins with it are refused, but a sync in progress is not cut.
    pub async fn refresh_access(&self) {
        if let Err(e) = self.apps.reload(&self.db).await {
            tracing::warn!("cannot reload the App servers from the database: {e:#}");
        }
        if let Err(e) = self.keys.reload(&self.db).await {
            tracing::warn!("cannot reload keys from the database: {e:#}");
            return;
        }
        if let Err(e) = self.limits.reload(&self.db).await {
            tracing::warn!("cannot reload tenant limits from the database: {e:#}");
        }
        let retired = match db::retired_keys_of_active_tenants(&self.db).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("cannot read retired keys: {e:#}");
                return;
            }
        };
        let closed = self.sessions.close_where(|s| {
            !self.keys.is_active_for(&s.key_fingerprint, &s.principal) && !retired.contains(&s.key_fingerprint)
        });
        for s in closed {
            let peer = s.peer.map(|p| p.to_string()).unwrap_or_default();
            tracing::info!(tenant = %s.principal, key = %s.key_fingerprint, %peer, "sftp session closed: access withdrawn");
            db::audit(
                &self.db,
                Some(&s.principal),
                "session_closed",
                &format!("sftp session of key {} from {peer} closed: access withdrawn", s.key_fingerprint),
            )
            .await;
        }
    }

    /// Audit from code that cannot wait (the SFTP handler's hooks).
    pub(crate) fn audit_later(&self, tenant: Option<&str>, event: &'static str, detail: String) {
        let (db, tenant) = (self.db.clone(), tenant.map(str::to_string));
        tokio::spawn(async move { db::audit(&db, tenant.as_deref(), event, &detail).await });
    }

    /// A failed authentication from `peer` (`what`: over which door and why), audited at most once a minute per
    /// source address.
    pub fn auth_failed(&self, peer: Option<SocketAddr>, reason: crate::metrics::Refusal, what: &str) {
        self.metrics.refused(reason);
        let ip = peer.map(|p| p.ip()).unwrap_or(IpAddr::from([0, 0, 0, 0]));
        if let Some(skipped) = self.auth_failures.admit(ip) {
            let more = if skipped > 0 {
                format!(" ({skipped} more failures from there since the last entry)")
            } else {
                String::new()
            };
            tracing::info!(%ip, "authentication failed: {what}{more}");
            self.audit_later(None, "auth_failed", format!("from {ip}: {what}{more}"));
        }
    }

    /// A refused registration from `peer` (`kind`: a fixed name of the reason, `why`: the message): audited
    /// (`register_refused`) and logged at most once a minute per source address and kind, with the count of the
    /// ones left out; counted for the per-address limit.
    pub async fn register_refused(&self, peer: SocketAddr, kind: &'static str, why: &str) {
        let ip = peer.ip();
        self.metrics.refused(crate::metrics::Refusal::Registration);
        self.unauth_limit.refused(ip);
        if let Some(skipped) = self.register_refusals.admit((ip, kind)) {
            let more = if skipped > 0 {
                format!(" ({skipped} more refused registrations from there since the last entry)")
            } else {
                String::new()
            };
            tracing::info!(%ip, "registration refused: {why}{more}");
            db::audit(&self.db, None, "register_refused", &format!("from {peer}: {why}{more}")).await;
        }
    }

    /// Key `fp` of `tenant` was used from `peer`: audit the first use from an address the key was not used from
    /// before. A key's registration address counts as known.
    pub async fn note_key_use(&self, tenant: &str, fp: &str, peer: Option<SocketAddr>, via: &str) {
        self.note_contact(fp).await;
        let Some(ip) = peer.map(|p| p.ip()) else { return };
        let pair = (fp.to_string(), ip);
        if self.known_addresses.lock().is_ok_and(|k| k.contains(&pair)) {
            return;
        }
        match db::note_key_address(&self.db, fp, &ip.to_string()).await {
            Ok((new, seen_before)) => {
                if new && seen_before {
                    db::audit(&self.db, Some(tenant), "key_new_address", &format!("key {fp} used from {ip} ({via})"))
                        .await;
                    tracing::info!(%tenant, key = %fp, %ip, "key used from a new address");
                }
                if let Ok(mut k) = self.known_addresses.lock() {
                    if k.len() > 100_000 {
                        k.clear();
                    }
                    k.insert(pair);
                }
            }
            Err(e) => tracing::warn!("cannot record the address of a key: {e}"),
        }
    }

    /// The tenant's last contact, for the console: `keys.last_used_at`, written at most once a minute per key.
    async fn note_contact(&self, fp: &str) {
        let due = match self.contact_saved.lock() {
            Ok(mut m) => {
                let due = m.get(fp).is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(60));
                if due {
                    if m.len() > 100_000 {
                        m.clear();
                    }
                    m.insert(fp.to_string(), std::time::Instant::now());
                }
                due
            }
            Err(_) => false,
        };
        if due && let Err(e) = db::touch_key(&self.db, fp).await {
            tracing::warn!("cannot record the last use of a key: {e}");
        }
    }

    /// A limit refused something: audit it and return the message for the sender.
    pub async fn refuse(&self, tenant: &str, limit: limits::Limit, what: &str, attempted: u64) -> String {
        let value = limit.get(&self.limits.of(tenant));
        self.metrics.refused(crate::metrics::Refusal::Limit);
        let msg = limit.refusal(tenant, value, what, attempted);
        db::audit(&self.db, Some(tenant), "quota_refused", &msg).await;
        tracing::info!(%tenant, limit = limit.key(), value, attempted, "refused by a limit");
        msg
    }
}

/// Confines each tenant key to its own SFTP root, applies the tenant's upload limits while it writes, and
/// reports logins for the audit log.
pub(crate) struct TenantAuthorizer(pub(crate) Arc<CommsState>);

impl ferry_sftp::server::Authorizer for TenantAuthorizer {
    fn authorize(&self, _user: &str, key: &PublicKey) -> Option<ferry_sftp::server::Principal> {
        let fp = ferry_io::keys::fingerprint(key);
        let (tenant, known) = self.0.keys.tenant_of(&fp)?;
        if known.key_data() != key.key_data() {
            return None;
        }
        let root = self.0.sftp_root(&tenant);
        if self.0.files.bucket().is_none() {
            std::fs::create_dir_all(&root).ok()?;
        }
        Some(ferry_sftp::server::Principal { name: tenant, root })
    }

    fn admit_write(&self, p: &ferry_sftp::server::Principal, size_after: u64, bytes: u64) -> Result<(), String> {
        use limits::Limit;
        let l = self.0.limits.of(&p.name);
        let (limit, what, attempted) = if size_after > l.max_upload_file_bytes {
            (Limit::MaxUploadFileBytes, "this write makes the file at least", size_after)
        } else {
            match self.0.usage.charge(&p.name, bytes, l.upload_bytes_per_day) {
                Ok(()) => return Ok(()),
                Err(so_far) => (Limit::UploadBytesPerDay, "today's uploads would reach", so_far.saturating_add(bytes)),
            }
        };
        let msg = format!("{}; the file was removed", limit.refusal(&p.name, limit.get(&l), what, attempted));
        self.0.audit_later(Some(&p.name), "quota_refused", msg.clone());
        Err(msg)
    }

    fn renamed(&self, p: &ferry_sftp::server::Principal, to: &std::path::Path) {
        if let Some(a) = crate::early::arrived(&p.name, &p.root, to) {
            self.0.early.offer(a);
        }
    }

    fn admit_create(&self, p: &ferry_sftp::server::Principal) -> Result<(), String> {
        let max = self.0.limits.of(&p.name).max_files;
        let have = count_entries(&p.root, max.saturating_add(1));
        self.admit_create_counted(p, have)
    }

    fn max_entries(&self, p: &ferry_sftp::server::Principal) -> Option<u64> {
        Some(self.0.limits.of(&p.name).max_files)
    }

    /// `max_files`: on disk counted by [`count_entries`], in an object store by the SFTP server.
    fn admit_create_counted(&self, p: &ferry_sftp::server::Principal, have: u64) -> Result<(), String> {
        use limits::Limit;
        let max = self.0.limits.of(&p.name).max_files;
        if have < max {
            return Ok(());
        }
        let msg = Limit::MaxFiles.refusal(&p.name, max, "your SFTP area would hold", have.saturating_add(1));
        if self.0.refusals.admit(format!("{}/max_files", p.name)).is_some() {
            self.0.audit_later(Some(&p.name), "quota_refused", msg.clone());
        }
        Err(msg)
    }

    fn store(&self, p: &ferry_sftp::server::Principal) -> Option<ferry_sftp::store::StoreRoot> {
        self.0.files.bucket().map(|b| crate::store::tenant_root(b, &p.name))
    }

    fn max_open_handles(&self, p: &ferry_sftp::server::Principal) -> usize {
        usize::try_from(self.0.limits.of(&p.name).max_open_handles).unwrap_or(usize::MAX)
    }

    fn admit_handle(&self, p: &ferry_sftp::server::Principal, open: usize) -> Result<(), String> {
        use limits::Limit;
        let max = self.0.limits.of(&p.name).max_open_handles;
        if (open as u64) < max {
            return Ok(());
        }
        let msg = Limit::MaxOpenHandles.refusal(&p.name, max, "this session would hold", open as u64 + 1);
        if self.0.refusals.admit(format!("{}/max_open_handles", p.name)).is_some() {
            self.0.audit_later(Some(&p.name), "quota_refused", msg.clone());
        }
        Err(msg)
    }

    fn admit_session(&self, p: &ferry_sftp::server::Principal, open: usize) -> Result<(), String> {
        use limits::Limit;
        let max = self.0.limits.of(&p.name).max_sftp_sessions;
        if (open as u64) < max {
            return Ok(());
        }
        let msg = Limit::MaxSftpSessions.refusal(&p.name, max, "this login would make", open as u64 + 1);
        if self.0.refusals.admit(format!("{}/max_sftp_sessions", p.name)).is_some() {
            self.0.audit_later(Some(&p.name), "quota_refused", msg.clone());
        }
        Err(msg)
    }

    fn logged_in(&self, p: &ferry_sftp::server::Principal, key: &PublicKey, peer: Option<SocketAddr>) {
        let (st, tenant, fp) = (self.0.clone(), p.name.clone(), ferry_io::keys::fingerprint(key));
        st.metrics.ssh_login();
        tokio::spawn(async move { st.note_key_use(&tenant, &fp, peer, "ssh").await });
    }

    fn refused(&self, user: &str, key: &PublicKey, peer: Option<SocketAddr>) {
        let user: String = user.chars().take(64).collect();
        self.0.auth_failed(
            peer,
            crate::metrics::Refusal::SshKey,
            &format!("ssh login refused for key {} (user {:?})", ferry_io::keys::fingerprint(key), user),
        );
    }
}

/// Files and directories under `root` (not counting `root`, never following links), counting at most `stop`.
fn count_entries(root: &std::path::Path, stop: u64) -> u64 {
    let mut n = 0u64;
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            n += 1;
            if n >= stop {
                return n;
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push(e.path());
            }
        }
    }
    n
}

/// Operator actions (`tenant disable`, `revoke-key`, `limits`) may come from another process on the same
/// database: a trigger bumps `access_version` on every such change; poll it and reload at once. Also saves the
/// upload counts.
pub(crate) async fn watch_access(st: Arc<CommsState>, shutdown: impl std::future::Future<Output = ()>) {
    tokio::pin!(shutdown);
    let mut seen = db::access_version(&st.db).await.ok();
    let (mut last_full, mut last_save) = (Instant::now(), Instant::now());
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep(ACCESS_POLL_INTERVAL) => {}
        }
        let now = db::access_version(&st.db).await.ok();
        if now != seen || last_full.elapsed() >= ACCESS_FULL_RELOAD {
            seen = now;
            last_full = Instant::now();
            st.refresh_access().await;
        }
        if last_save.elapsed() >= USAGE_SAVE_INTERVAL {
            last_save = Instant::now();
            if let Err(e) = st.usage.save(&st.db).await {
                tracing::warn!("cannot save upload counts: {e}");
            }
        }
    }
    if let Err(e) = st.usage.save(&st.db).await {
        tracing::warn!("cannot save upload counts: {e}");
    }
}
