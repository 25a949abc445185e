//! The Comms server: the multi-tenant relay in the cloud. HTTPS web services for Connectors (registration,
//! batch completion, status), an SFTP server where each tenant's key is confined to that tenant's root, and a
//! relay worker that moves completed batches to the tenant's instance on the App server.
//!
//! Invariant: the tenant of a request or SFTP session comes only from the authenticated key ([`KeyCache`]).
//! Invariant: the relay never parses CSV; it moves bytes and lets the App judge them.
//! Invariant: who may log in, and with which limits, is decided by the database alone; every change to it (by
//! this process, the CLI or anyone) reaches the running server within [`ACCESS_RELOAD_BOUND`], and the open
//! SFTP sessions of a key or tenant that lost its access are closed then.

pub mod admin;
pub mod admin_api;
pub mod api;
pub mod appclient;
pub mod config;
pub mod db;
pub mod downstream;
pub mod limits;
pub mod relay;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use ferry_web::auth::SignatureVerifier;
use ferry_web::identity::ServerIdentity;
use russh::keys::PublicKey;
use sqlx::SqlitePool;
use tokio::sync::{Notify, watch};

pub use config::CommsConfig;

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

    pub async fn reload(&self, pool: &SqlitePool) -> anyhow::Result<()> {
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

pub struct CommsState {
    pub cfg: CommsConfig,
    pub db: SqlitePool,
    pub keys: KeyCache,
    /// Effective limits per tenant (defaults from `[limits]` + overrides from the database).
    pub limits: limits::TenantLimits,
    /// Bytes uploaded per tenant today.
    pub usage: limits::Usage,
    /// The live SFTP sessions (closed when their key or tenant loses access) and the SSH login throttle.
    pub sessions: ferry_sftp::Sessions,
    /// Failed logins (SSH, signatures, admin token) audited per source address at most once a minute.
    pub auth_failures: Coalescer<IpAddr>,
    /// Other repeated refusals (a downstream file over the limit, announced again and again).
    pub refusals: Coalescer<String>,
    /// (key fingerprint, address) pairs already recorded in `key_addresses`.
    known_addresses: Mutex<HashSet<(String, IpAddr)>>,
    pub verifier: SignatureVerifier,
    pub identity: Arc<ServerIdentity>,
    pub app: appclient::AppClient,
    pub relay_wakeup: Notify,
    pub downstream_wakeup: Notify,
    /// Bumped whenever a file lands on some tenant's download list (long-polls wait on it).
    pub downloads_changed: watch::Sender<u64>,
    /// The App's service key, which signs its downstream announcements.
    pub app_service_key: Option<PublicKey>,
    /// Where Connectors dial SFTP (given to them at registration).
    pub public_ssh_addr: String,
}

impl CommsState {
    /// A tenant's SFTP root: everything its key can see.
    pub fn sftp_root(&self, tenant: &str) -> PathBuf {
        tenant_sftp_root(&self.cfg.data_dir, tenant)
    }

    /// Completed batches, moved out of the SFTP root so the Connector can no longer change them.
    pub fn batch_dir(&self, tenant: &str, batch_id: &str) -> PathBuf {
        self.cfg.data_dir.join("tenants").join(tenant).join("batches").join(batch_id)
    }
}

impl CommsState {
    /// Reload keys and limits from the database and close the SFTP sessions whose key is no longer an active
    /// key of their tenant (revoked, tenant disabled, deleted). Sessions of a key retired by a rotation are
    /// left to finish: new logins with it are refused, but a sync in progress is not cut.
    pub async fn refresh_access(&self) {
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
    fn audit_later(&self, tenant: Option<&str>, event: &'static str, detail: String) {
        let (db, tenant) = (self.db.clone(), tenant.map(str::to_string));
        tokio::spawn(async move { db::audit(&db, tenant.as_deref(), event, &detail).await });
    }

    /// A failed authentication from `peer` (`what`: over which door and why), audited at most once a minute per
    /// source address.
    pub fn auth_failed(&self, peer: Option<SocketAddr>, what: &str) {
        let ip = peer.map(|p| p.ip()).unwrap_or(IpAddr::from([0, 0, 0, 0]));
        if let Some(skipped) = self.auth_failures.admit(ip) {
            let more = if skipped > 0 {
                format!(" ({skipped} more failures from there since the last entry)")
            } else {
                String::new()
            };
            self.audit_later(None, "auth_failed", format!("from {ip}: {what}{more}"));
        }
    }

    /// Key `fp` of `tenant` was used from `peer`: audit the first use from an address the key was not used from
    /// before. A key's registration address counts as known.
    pub async fn note_key_use(&self, tenant: &str, fp: &str, peer: Option<SocketAddr>, via: &str) {
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

    /// A limit refused something: audit it and return the message for the sender.
    pub async fn refuse(&self, tenant: &str, limit: limits::Limit, what: &str, attempted: u64) -> String {
        let value = limit.get(&self.limits.of(tenant));
        let msg = limit.refusal(tenant, value, what, attempted);
        db::audit(&self.db, Some(tenant), "quota_refused", &msg).await;
        tracing::info!(%tenant, limit = limit.key(), value, attempted, "refused by a limit");
        msg
    }
}

pub fn tenant_sftp_root(data_dir: &Path, tenant: &str) -> PathBuf {
    data_dir.join("tenants").join(tenant).join("sftp")
}

/// Confines each tenant key to its own SFTP root, applies the tenant's upload limits while it writes, and
/// reports logins for the audit log.
struct TenantAuthorizer(Arc<CommsState>);

impl ferry_sftp::server::Authorizer for TenantAuthorizer {
    fn authorize(&self, _user: &str, key: &PublicKey) -> Option<ferry_sftp::server::Principal> {
        let fp = ferry_io::keys::fingerprint(key);
        let (tenant, known) = self.0.keys.tenant_of(&fp)?;
        if known.key_data() != key.key_data() {
            return None;
        }
        let root = self.0.sftp_root(&tenant);
        std::fs::create_dir_all(&root).ok()?;
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

    fn logged_in(&self, p: &ferry_sftp::server::Principal, key: &PublicKey, peer: Option<SocketAddr>) {
        let (st, tenant, fp) = (self.0.clone(), p.name.clone(), ferry_io::keys::fingerprint(key));
        tokio::spawn(async move { st.note_key_use(&tenant, &fp, peer, "ssh").await });
    }

    fn refused(&self, user: &str, key: &PublicKey, peer: Option<SocketAddr>) {
        let user: String = user.chars().take(64).collect();
        self.0.auth_failed(
            peer,
            &format!("ssh login refused for key {} (user {:?})", ferry_io::keys::fingerprint(key), user),
        );
    }
}

/// A running Comms server.
pub struct CommsHandle {
    pub https_addr: SocketAddr,
    pub ssh_addr: SocketAddr,
    /// The admin API (HTTPS), if `listen_admin` is set.
    pub admin_addr: Option<SocketAddr>,
    /// The plain-HTTP redirect listener, if `listen_http_redirect` is set.
    pub http_redirect_addr: Option<SocketAddr>,
    pub state: Arc<CommsState>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl CommsHandle {
    pub fn url(&self) -> String {
        format!("https://{}", self.https_addr)
    }

    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }
}

fn shutdown_signal(rx: &watch::Receiver<bool>) -> impl std::future::Future<Output = ()> + Send + 'static {
    let mut rx = rx.clone();
    async move {
        let _ = rx.wait_for(|v| *v).await;
    }
}

/// Open the data directory (database, keys, certificate), start HTTPS, SFTP and the relay on the given listeners.
/// How the Comms server listens.
pub enum Listeners {
    /// HTTPS and SSH on their own ports.
    Separate { https: std::net::TcpListener, ssh: tokio::net::TcpListener },
    /// HTTPS and SSH on one port (443 in production): each connection is told apart by its first byte, so an
    /// ERP site needs one outbound port only.
    Shared(tokio::net::TcpListener),
}

/// Open the data directory (database, keys, certificate), start HTTPS, SFTP and the relay on the given listeners.
pub async fn start(
    cfg: CommsConfig,
    https: std::net::TcpListener,
    ssh: tokio::net::TcpListener,
) -> anyhow::Result<CommsHandle> {
    start_on(cfg, Listeners::Separate { https, ssh }).await
}

pub async fn start_on(cfg: CommsConfig, listeners: Listeners) -> anyhow::Result<CommsHandle> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("cannot create the data directory {}", cfg.data_dir.display()))?;
    let identity = Arc::new(cfg.identity()?);
    let db = db::open(&cfg.db_path()).await?;
    let admin_token = admin::load_or_create_admin_token(&cfg.admin_token_path())?;
    let (https_addr, ssh_addr) = match &listeners {
        Listeners::Separate { https, ssh } => (https.local_addr()?, ssh.local_addr()?),
        Listeners::Shared(l) => (l.local_addr()?, l.local_addr()?),
    };
    let public_ssh_addr = if cfg.public_ssh_addr.is_empty() {
        let host = url_host(&cfg.public_url).unwrap_or_else(|| ssh_addr.ip().to_string());
        format!("{host}:{}", ssh_addr.port())
    } else {
        cfg.public_ssh_addr.clone()
    };
    let app_service_key = if cfg.app.service_key.is_empty() {
        None
    } else {
        Some(ferry_io::keys::parse_public_key(&cfg.app.service_key).context("[app] service_key")?)
    };
    let app = appclient::AppClient::new(&cfg.app, identity.service_key.clone())?;
    let tls = ferry_io::tls::server_config(&identity.tls)?;
    let ssh_cfg = ferry_sftp::server::ServerConfig {
        host_key: identity.ssh_host_key.clone(),
        auth_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(600),
        max_auth_attempts: 6,
    };
    let admin_listener = match cfg.listen_admin {
        Some(a) => {
            Some(std::net::TcpListener::bind(a).with_context(|| format!("cannot listen on {a} (listen_admin)"))?)
        }
        None => None,
    };
    let redirect_listener = match cfg.listen_http_redirect {
        Some(a) => Some(
            tokio::net::TcpListener::bind(a)
                .await
                .with_context(|| format!("cannot listen on {a} (listen_http_redirect)"))?,
        ),
        None => None,
    };
    let admin_addr = admin_listener.as_ref().map(|l| l.local_addr()).transpose()?;
    let http_redirect_addr = redirect_listener.as_ref().map(|l| l.local_addr()).transpose()?;
    let state = Arc::new(CommsState {
        verifier: SignatureVerifier::new(cfg.signature_max_age_secs),
        limits: limits::TenantLimits::new(cfg.limits),
        usage: limits::Usage::default(),
        sessions: ferry_sftp::Sessions::new(),
        auth_failures: Coalescer::new(Duration::from_secs(60)),
        refusals: Coalescer::new(Duration::from_secs(3600)),
        known_addresses: Mutex::new(HashSet::new()),
        cfg,
        db,
        keys: KeyCache::default(),
        identity,
        app,
        relay_wakeup: Notify::new(),
        downstream_wakeup: Notify::new(),
        downloads_changed: watch::channel(0).0,
        app_service_key,
        public_ssh_addr,
    });
    state.keys.reload(&state.db).await?;
    state.limits.reload(&state.db).await?;
    state.usage.load(&state.db).await?;
    let (tx, rx) = watch::channel(false);
    let mut tasks = Vec::new();
    let router = api::router(state.clone());
    let auth = Arc::new(TenantAuthorizer(state.clone()));
    let sessions = state.sessions.clone();
    if let Some(l) = admin_listener {
        let (router, tls, sd) = (admin_api::router(state.clone(), admin_token), tls.clone(), shutdown_signal(&rx));
        tasks.push(tokio::spawn(async move {
            if let Err(e) = ferry_web::serve::serve_https(l, router, tls, sd).await {
                tracing::error!("admin api stopped: {e}");
            }
        }));
    }
    if let Some(l) = redirect_listener {
        let (base, sd) = (state.cfg.public_base_url(), shutdown_signal(&rx));
        tasks.push(tokio::spawn(async move {
            if let Err(e) = ferry_web::serve::serve_redirect(l, base, sd).await {
                tracing::error!("http redirect listener stopped: {e}");
            }
        }));
    }
    match listeners {
        Listeners::Separate { https, ssh } => {
            let sd = shutdown_signal(&rx);
            tasks.push(tokio::spawn(async move {
                if let Err(e) = ferry_web::serve::serve_https(https, router, tls, sd).await {
                    tracing::error!("https server stopped: {e}");
                }
            }));
            let sd = shutdown_signal(&rx);
            tasks.push(tokio::spawn(async move {
                if let Err(e) = ferry_sftp::server::serve_with(ssh_cfg, ssh, auth, sessions, sd).await {
                    tracing::error!("sftp server stopped: {e:#}");
                }
            }));
        }
        Listeners::Shared(listener) => {
            tasks.push(tokio::spawn(serve_shared(
                listener,
                router,
                tls,
                ssh_cfg,
                auth,
                sessions,
                shutdown_signal(&rx),
            )));
        }
    }
    tasks.push(tokio::spawn(downstream::run(state.clone(), shutdown_signal(&rx))));
    tasks.push(tokio::spawn(relay::run(state.clone(), shutdown_signal(&rx))));

    tasks.push(tokio::spawn(watch_access(state.clone(), shutdown_signal(&rx))));
    tracing::info!(%https_addr, %ssh_addr, ?admin_addr, ?http_redirect_addr, "comms server listening");
    Ok(CommsHandle { https_addr, ssh_addr, admin_addr, http_redirect_addr, state, shutdown: tx, tasks })
}

/// Operator actions (`tenant disable`, `revoke-key`, `limits`) may come from another process on the same
/// database: a trigger bumps `access_version` on every such change; poll it and reload at once. Also saves the
/// upload counts.
async fn watch_access(st: Arc<CommsState>, shutdown: impl std::future::Future<Output = ()>) {
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

/// One port, two protocols: peek at each connection's first byte and hand it to HTTPS or SSH.
async fn serve_shared(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    tls: Arc<rustls::ServerConfig>,
    ssh_cfg: ferry_sftp::server::ServerConfig,
    auth: Arc<TenantAuthorizer>,
    sessions: ferry_sftp::Sessions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    tokio::pin!(shutdown);
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let russh_cfg = ssh_cfg.russh_config();
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let (router, acceptor, russh_cfg, auth, sessions) =
            (router.clone(), acceptor.clone(), russh_cfg.clone(), auth.clone(), sessions.clone());
        tokio::spawn(async move {
            match ferry_web::serve::sniff_is_tls(&stream, Duration::from_secs(3)).await {
                Ok(true) => ferry_web::serve::serve_https_connection(stream, peer, router, acceptor).await,
                Ok(false) => {
                    if let Err(e) =
                        ferry_sftp::server::serve_stream(russh_cfg, stream, auth, sessions, Some(peer)).await
                    {
                        tracing::debug!(%peer, "ssh session ended: {e:#}");
                    }
                }
                Err(e) => tracing::debug!(%peer, "connection closed before it spoke: {e}"),
            }
        });
    }
}

/// The loop every background worker runs: do a pass; if it moved something, go again at once; if not, wait
/// for a wake-up (or 30 s); if it failed, retry with exponential backoff and jitter (0.5 s growing to 60 s,
/// [`ferry_io::retry::Backoff`]), logging the same error once a minute with a count. Returns when `shutdown`
/// resolves.
pub(crate) async fn worker_loop<F, Fut>(
    name: &str,
    wakeup: &Notify,
    shutdown: impl std::future::Future<Output = ()>,
    mut pass: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    use ferry_io::retry::{Backoff, FailureLog};
    tokio::pin!(shutdown);
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(60));
    let mut failures = FailureLog::new(name, Duration::from_secs(60));
    loop {
        let idle = match pass().await {
            Ok(moved) => {
                backoff.reset();
                if let Some(line) = failures.success() {
                    tracing::info!("{line}");
                }
                if moved {
                    continue;
                }
                Duration::from_secs(30)
            }
            Err(e) => {
                let wait = backoff.next_delay();
                if let Some(line) = failures.failure(&format!("{e:#}"), wait) {
                    tracing::warn!("{line}");
                }
                wait
            }
        };
        tokio::select! {
            _ = &mut shutdown => return,
            _ = wakeup.notified() => {}
            _ = tokio::time::sleep(idle) => {}
        }
    }
}

fn url_host(url: &str) -> Option<String> {
    let rest = url.strip_prefix("https://")?;
    let hostport = rest.split('/').next()?;
    if let Some(v6) = hostport.strip_prefix('[') {
        return v6.split(']').next().map(|h| format!("[{h}]"));
    }
    Some(hostport.rsplit_once(':').map(|(h, _)| h).unwrap_or(hostport).to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn url_host_parses() {
        assert_eq!(super::url_host("https://comms.example:443/x").as_deref(), Some("comms.example"));
        assert_eq!(super::url_host("https://10.0.0.1").as_deref(), Some("10.0.0.1"));
        assert_eq!(super::url_host("http://x"), None);
    }
}
