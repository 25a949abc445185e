//! The Comms server: the multi-tenant relay in the cloud. HTTPS web services for Connectors (registration,
//! batch completion, status), an SFTP server where each tenant's key is confined to that tenant's root, and a
//! relay worker that moves completed batches to the tenant's instance on the App server.
//!
//! Invariant: the tenant of a request or SFTP session comes only from the authenticated key ([`KeyCache`]).
//! Invariant: the relay never parses CSV; it moves bytes and lets the App judge them.

pub mod admin;
pub mod api;
pub mod appclient;
pub mod config;
pub mod db;
pub mod downstream;
pub mod relay;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use ferry_web::auth::SignatureVerifier;
use ferry_web::identity::ServerIdentity;
use russh::keys::PublicKey;
use sqlx::SqlitePool;
use tokio::sync::{Notify, watch};

pub use config::CommsConfig;

/// How soon a running server sees keys and tenants changed by `ferry comms tenant ...`.
pub const KEY_RELOAD_INTERVAL: Duration = Duration::from_secs(3);

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

pub struct CommsState {
    pub cfg: CommsConfig,
    pub db: SqlitePool,
    pub keys: KeyCache,
    pub verifier: SignatureVerifier,
    pub identity: ServerIdentity,
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

pub fn tenant_sftp_root(data_dir: &Path, tenant: &str) -> PathBuf {
    data_dir.join("tenants").join(tenant).join("sftp")
}

/// Confines each tenant key to its own SFTP root.
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
}

/// A running Comms server.
pub struct CommsHandle {
    pub https_addr: SocketAddr,
    pub ssh_addr: SocketAddr,
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
    let identity = cfg.identity()?;
    let db = db::open(&cfg.db_path()).await?;
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
    let state = Arc::new(CommsState {
        verifier: SignatureVerifier::new(cfg.signature_max_age_secs),
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
    let (tx, rx) = watch::channel(false);
    let mut tasks = Vec::new();
    let router = api::router(state.clone());
    let auth = Arc::new(TenantAuthorizer(state.clone()));
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
                if let Err(e) = ferry_sftp::server::serve(ssh_cfg, ssh, auth, sd).await {
                    tracing::error!("sftp server stopped: {e:#}");
                }
            }));
        }
        Listeners::Shared(listener) => {
            tasks.push(tokio::spawn(serve_shared(listener, router, tls, ssh_cfg, auth, shutdown_signal(&rx))));
        }
    }
    tasks.push(tokio::spawn(downstream::run(state.clone(), shutdown_signal(&rx))));
    tasks.push(tokio::spawn(relay::run(state.clone(), shutdown_signal(&rx))));

    // Operator actions (`tenant disable`, key changes) are made by another process on the same database:
    // pick them up within seconds.
    let (st, sd) = (state.clone(), shutdown_signal(&rx));
    tasks.push(tokio::spawn(async move {
        tokio::pin!(sd);
        loop {
            tokio::select! {
                _ = &mut sd => return,
                _ = tokio::time::sleep(KEY_RELOAD_INTERVAL) => {}
            }
            if let Err(e) = st.keys.reload(&st.db).await {
                tracing::warn!("cannot reload keys from the database: {e:#}");
            }
        }
    }));
    tracing::info!(%https_addr, %ssh_addr, "comms server listening");
    Ok(CommsHandle { https_addr, ssh_addr, state, shutdown: tx, tasks })
}

/// One port, two protocols: peek at each connection's first byte and hand it to HTTPS or SSH.
async fn serve_shared(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    tls: Arc<rustls::ServerConfig>,
    ssh_cfg: ferry_sftp::server::ServerConfig,
    auth: Arc<TenantAuthorizer>,
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
        let (router, acceptor, russh_cfg, auth) = (router.clone(), acceptor.clone(), russh_cfg.clone(), auth.clone());
        tokio::spawn(async move {
            match ferry_web::serve::sniff_is_tls(&stream, Duration::from_secs(3)).await {
                Ok(true) => ferry_web::serve::serve_https_connection(stream, peer, router, acceptor).await,
                Ok(false) => {
                    if let Err(e) = ferry_sftp::server::serve_stream(russh_cfg, stream, auth, Some(peer)).await {
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
