//! The Comms server: the multi-tenant relay in the cloud. HTTPS web services for Connectors (registration,
//! batch completion, status), an SFTP server where each tenant's key is confined to that tenant's root, and a
//! relay worker that moves completed batches to the tenant's instance on the App server it is placed on.
//!
//! Invariant: the tenant of a request or SFTP session comes only from the authenticated key ([`KeyCache`]).
//! Invariant: a tenant's batches and files go to and come from only the App server it is placed on
//! (`tenants.app`); an App server's announcements are taken only for tenants placed on it.
//! Invariant: the relay never parses CSV; it moves bytes and lets the App judge them.
//! Invariant: who may log in, and with which limits, is decided by the database alone; every change to it (by
//! this process, the CLI or anyone) reaches the running server within [`ACCESS_RELOAD_BOUND`], and the open
//! SFTP sessions of a key or tenant that lost its access are closed then.

mod access;
pub mod admin;
pub mod admin_api;
pub mod api;
pub mod appclient;
pub mod config;
pub mod console;
pub mod db;
pub mod db_move;
pub mod downstream;
pub mod early;
pub mod limits;
pub mod metrics;
pub mod relay;
pub mod replicas;
pub mod store;

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use ferry_web::auth::SignatureVerifier;
use ferry_web::identity::ServerIdentity;

use tokio::sync::{Notify, watch};

use crate::db::Db;

pub use access::{ACCESS_POLL_INTERVAL, ACCESS_RELOAD_BOUND, Coalescer, KeyCache, RefusalLimiter};
pub use config::CommsConfig;

pub struct CommsState {
    pub cfg: CommsConfig,
    pub db: Db,
    pub keys: KeyCache,
    /// Effective limits per tenant (defaults from `[limits]` + overrides from the database).
    pub limits: limits::TenantLimits,
    /// Bytes uploaded per tenant today.
    pub usage: limits::Usage,
    /// The live SFTP sessions (closed when their key or tenant loses access) and the SSH login throttle.
    pub sessions: ferry_sftp::Sessions,
    /// Failed logins (SSH, signatures, admin token) audited per source address at most once a minute.
    pub auth_failures: Coalescer<IpAddr>,
    /// Refused registrations audited per source address and reason at most once a minute.
    pub register_refusals: Coalescer<(IpAddr, &'static str)>,
    /// Refused unauthenticated requests (registrations) per source address: past the limit, 429 at once.
    pub unauth_limit: RefusalLimiter,
    /// Other repeated refusals (a downstream file over the limit, announced again and again).
    pub refusals: Coalescer<String>,
    /// (key fingerprint, address) pairs already recorded in `key_addresses`.
    known_addresses: Mutex<HashSet<(String, IpAddr)>>,
    /// When each key's last use was last written to the database (at most once a minute).
    contact_saved: Mutex<std::collections::HashMap<String, std::time::Instant>>,
    pub verifier: SignatureVerifier,
    pub identity: Arc<ServerIdentity>,
    /// The App servers and their clients; each tenant is routed to the one it is placed on.
    pub apps: appclient::Apps,
    pub relay_wakeup: Notify,
    /// Files copied to the App as they arrive, before their batch is completed ([`early`]).
    pub early: early::EarlyRelay,
    pub downstream_wakeup: Notify,
    /// Bumped whenever a file lands on some tenant's download list (long-polls wait on it).
    pub downloads_changed: watch::Sender<u64>,
    /// Where Connectors dial SFTP (given to them at registration).
    pub public_ssh_addr: String,
    /// Prometheus metrics (`GET /metrics` on the admin listener).
    pub metrics: metrics::Metrics,
    /// Where tenants' files live: the local folder or an object store (`[storage]`).
    pub files: store::Files,
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

/// A running Comms server.
pub struct CommsHandle {
    pub https_addr: SocketAddr,
    pub ssh_addr: SocketAddr,
    /// The admin API (HTTPS), if `listen_admin` is set.
    pub admin_addr: Option<SocketAddr>,
    /// The plain-HTTP redirect listener, if `listen_http_redirect` is set.
    pub http_redirect_addr: Option<SocketAddr>,
    pub state: Arc<CommsState>,
    tasks: ferry_web::serve::Tasks,
}

impl CommsHandle {
    pub fn url(&self) -> String {
        format!("https://{}", self.https_addr)
    }

    pub async fn stop(self) {
        self.tasks.stop().await;
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
    ferry_io::private::create_dir(&cfg.data_dir)
        .with_context(|| format!("cannot create the data directory {}", cfg.data_dir.display()))?;
    let identity = Arc::new(cfg.identity()?);
    let db = db::open(&cfg.database, &cfg.db_path()).await?;
    let files = store::Files::open(&cfg.storage).await?;
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
    // [app] of comms.toml is the App server `default`; the others were added with `ferry comms app add`
    appclient::register_default(&db, &cfg.app).await?;
    let apps = appclient::Apps::new(identity.service_key.clone());
    apps.reload(&db).await?;
    let tls = ferry_io::tls::server_config(&identity.tls)?;
    // the open-file budget is shared by the listeners configured: public HTTPS and SSH (or the one shared port),
    // admin, redirect
    let conn_limits = cfg.connections.clone();
    let n = match &listeners {
        Listeners::Separate { .. } => 2,
        Listeners::Shared(_) => 1,
    } + usize::from(cfg.listen_admin.is_some())
        + usize::from(cfg.listen_http_redirect.is_some());
    let ssh_cfg = ferry_sftp::server::ServerConfig {
        host_key: identity.ssh_host_key.clone(),
        auth_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(600),
        max_auth_attempts: 6,
        // public listeners: a load balancer in front may send the PROXY protocol (proxy_protocol_from)
        gate: ferry_io::accept::Gate::from_public_limits("sftp", &conn_limits, n),
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
    let relay_early = cfg.relay_early;
    let state = Arc::new(CommsState {
        verifier: SignatureVerifier::new(cfg.signature_max_age_secs),
        limits: limits::TenantLimits::new(cfg.limits),
        usage: limits::Usage::default(),
        sessions: ferry_sftp::Sessions::new(),
        auth_failures: Coalescer::new(Duration::from_secs(60)),
        register_refusals: Coalescer::new(Duration::from_secs(60)),
        unauth_limit: RefusalLimiter::new(Duration::from_secs(60), cfg.max_refused_registrations_per_minute),
        refusals: Coalescer::new(Duration::from_secs(3600)),
        known_addresses: Mutex::new(HashSet::new()),
        contact_saved: Mutex::new(Default::default()),
        cfg,
        db,
        keys: KeyCache::default(),
        identity,
        apps,
        relay_wakeup: Notify::new(),
        early: early::EarlyRelay::new(relay_early),
        downstream_wakeup: Notify::new(),
        downloads_changed: watch::channel(0).0,
        public_ssh_addr,
        metrics: metrics::Metrics::default(),
        files,
    });
    state.keys.reload(&state.db).await?;
    state.limits.reload(&state.db).await?;
    state.usage.load(&state.db).await?;
    let mut tasks = ferry_web::serve::Tasks::default();
    let router = api::router(state.clone());
    let auth = Arc::new(access::TenantAuthorizer(state.clone()));
    let sessions = state.sessions.clone();
    if let Some(l) = admin_listener {
        // the admin API and the operator console (/console/) share the admin listener
        let router =
            admin_api::router(state.clone(), admin_token.clone()).merge(console::router(state.clone(), &admin_token));
        let sd = tasks.shutdown_signal();
        let gate = ferry_io::accept::Gate::from_limits("admin", &conn_limits, n);
        let admin = ferry_web::serve::serve_https(l, router, tls.clone(), gate, conn_limits.clone(), sd);
        tasks.spawn_logged("admin api", admin);
    }
    if let Some(l) = redirect_listener {
        let sd = tasks.shutdown_signal();
        tasks.spawn_logged(
            "http redirect listener",
            ferry_web::serve::serve_redirect(
                l,
                state.cfg.public_base_url(),
                ferry_io::accept::Gate::from_limits("http redirect", &conn_limits, n),
                conn_limits.clone(),
                sd,
            ),
        );
    }
    match listeners {
        Listeners::Separate { https, ssh } => {
            let sd = tasks.shutdown_signal();
            let gate = ferry_io::accept::Gate::from_public_limits("https", &conn_limits, n);
            let public = ferry_web::serve::serve_https(https, router, tls, gate, conn_limits.clone(), sd);
            tasks.spawn_logged("https server", public);
            let sd = tasks.shutdown_signal();
            tasks.spawn_logged("sftp server", ferry_sftp::server::serve_with(ssh_cfg, ssh, auth, sessions, sd));
        }
        Listeners::Shared(listener) => {
            let sd = tasks.shutdown_signal();
            tasks.spawn(serve_shared(listener, router, tls, ssh_cfg, auth, sessions, conn_limits.clone(), sd));
        }
    }
    tasks.spawn(downstream::run(state.clone(), tasks.shutdown_signal()));
    tasks.spawn(relay::run(state.clone(), tasks.shutdown_signal()));
    tasks.spawn(early::run(state.clone(), tasks.shutdown_signal()));
    let st = state.clone();
    tasks.spawn(state.cfg.retention.run("batches and downstream files (Comms)", tasks.shutdown_signal(), move || {
        let st = st.clone();
        async move { sweep_retention(&st).await }
    }));
    tasks.spawn(access::watch_access(state.clone(), tasks.shutdown_signal()));
    // several replicas on one PostgreSQL: long-polls woken from any replica, the shared replay cache swept
    tasks.spawn(replicas::watch_downloads(state.clone(), tasks.shutdown_signal()));
    tasks.spawn(replicas::sweep_nonces(state.clone(), tasks.shutdown_signal()));
    tracing::info!(%https_addr, %ssh_addr, ?admin_addr, ?http_redirect_addr, "comms server listening");
    Ok(CommsHandle { https_addr, ssh_addr, admin_addr, http_redirect_addr, state, tasks })
}

/// One port, two protocols: peek at each connection's first byte and hand it to HTTPS or SSH. Both share the
/// port's caps (the SSH server's gate, as the port's one listener).
#[allow(clippy::too_many_arguments)]
async fn serve_shared(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    tls: Arc<rustls::ServerConfig>,
    ssh_cfg: ferry_sftp::server::ServerConfig,
    auth: Arc<access::TenantAuthorizer>,
    sessions: ferry_sftp::Sessions,
    limits: ferry_io::accept::ConnectionLimits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    tokio::pin!(shutdown);
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let russh_cfg = ssh_cfg.russh_config();
    let gate = ssh_cfg.gate.clone();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            c = ferry_io::accept::accept(&listener, "shared https+ssh") => c,
        };
        let _ = stream.set_nodelay(true);
        // over a cap: closed here, before any handshake and before the next accept (a load balancer's connection:
        // after its PROXY header, read in the connection's task, names the client)
        let Some(admitting) = gate.admit_accepted(peer) else { continue };
        let (router, acceptor, russh_cfg, auth, sessions, limits, stop) = (
            router.clone(),
            acceptor.clone(),
            russh_cfg.clone(),
            auth.clone(),
            sessions.clone(),
            limits.clone(),
            stop_rx.clone(),
        );
        conns.spawn(async move {
            let mut stream = stream;
            // a load balancer's PROXY header first (read exactly, before the demux), naming the real client
            let Some((permit, peer)) = admitting.finish(&mut stream).await else { return };
            // a slow client's first byte (a TLS client hello under load) gets the whole handshake deadline
            match ferry_web::serve::sniff_is_tls(&stream, limits.handshake()).await {
                Ok(Some(true)) => {
                    ferry_web::serve::serve_https_connection(stream, peer, router, acceptor, limits, stop, permit).await
                }
                Ok(Some(false)) => {
                    if let Err(e) =
                        ferry_sftp::server::serve_stream(russh_cfg, stream, auth, sessions, Some(peer)).await
                    {
                        tracing::debug!(%peer, "ssh session ended: {e:#}");
                    }
                    drop(permit);
                }
                Ok(None) => {
                    tracing::debug!(%peer, "closed a connection that sent nothing within the handshake deadline")
                }
                Err(e) => tracing::debug!(%peer, "connection closed before it spoke: {e}"),
            }
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    // SSH sessions end with the server's tasks; HTTPS connections get their grace period
    let _ = tokio::time::timeout(Duration::from_secs(10), async { while conns.join_next().await.is_some() {} }).await;
    conns.abort_all();
}

fn url_host(url: &str) -> Option<String> {
    let rest = url.strip_prefix("https://")?;
    let hostport = rest.split('/').next()?;
    if let Some(v6) = hostport.strip_prefix('[') {
        return v6.split(']').next().map(|h| format!("[{h}]"));
    }
    Some(hostport.rsplit_once(':').map(|(h, _)| h).unwrap_or(hostport).to_string())
}

/// Retention: removes `tenants/<t>/batches/<batch>/` of every batch in a final state (imported or rejected)
/// last changed more than `[retention] keep_secs` ago, and `tenants/<t>/sftp/download/<file>/` of every
/// delivered file as old. The rows and the audit log stay; a batch or file still in progress is left alone.
pub async fn sweep_retention(st: &CommsState) -> anyhow::Result<usize> {
    use ferry_proto::api::BatchState;
    let keep = st.cfg.retention.keep();
    let cutoff = chrono::Utc::now() - chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::MAX);
    if let Some(b) = st.files.bucket() {
        return sweep_retention_in_store(st, b, cutoff).await;
    }
    let mut removed = 0;
    for (tenant, tdir) in ferry_web::retention::subdirs(&st.cfg.data_dir.join("tenants")) {
        for (id, dir) in ferry_web::retention::subdirs(&tdir.join("batches")) {
            let Ok(bid) = ferry_proto::batch::BatchId::parse(&id) else { continue };
            let Some(b) = db::batch_status(&st.db, &tenant, &bid).await? else { continue };
            if matches!(b.state, BatchState::Imported | BatchState::Rejected) && b.updated_at <= cutoff {
                std::fs::remove_dir_all(&dir)
                    .with_context(|| format!("cannot remove {} (retention)", dir.display()))?;
                tracing::info!(%tenant, batch = %id, state = b.state.as_str(), "retention: removed the batch's files");
                removed += 1;
            }
        }
        // A delivered file is removed at its acknowledgement; one whose removal failed goes here.
        for (id, dir) in ferry_web::retention::subdirs(&tdir.join("sftp").join("download")) {
            if ferry_web::retention::age(&dir) >= keep && db::download_delivered(&st.db, &tenant, &id).await? {
                std::fs::remove_dir_all(&dir)
                    .with_context(|| format!("cannot remove {} (retention)", dir.display()))?;
                removed += 1;
            }
        }
    }
    Ok(removed)
}

/// [`sweep_retention`] in the object store: the same rules on `tenants/<t>/batches/<batch>/` and
/// `tenants/<t>/sftp/download/<file>/` (age: the newest object under the folder), and SFTP uploads left
/// unfinished for as long are aborted (their parts are not kept forever).
async fn sweep_retention_in_store(
    st: &CommsState,
    b: &store::Bucket,
    cutoff: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<usize> {
    use ferry_proto::api::BatchState;
    let mut removed = 0;
    for tenant in store::subfolders(b, &b.key(["tenants"])).await? {
        for id in store::subfolders(b, &b.key(["tenants", tenant.as_str(), "batches"])).await? {
            let Ok(bid) = ferry_proto::batch::BatchId::parse(&id) else { continue };
            let Some(s) = db::batch_status(&st.db, &tenant, &bid).await? else { continue };
            if matches!(s.state, BatchState::Imported | BatchState::Rejected) && s.updated_at <= cutoff {
                store::delete_prefix(b, &store::batch_key(b, &tenant, &id, &[])).await?;
                tracing::info!(%tenant, batch = %id, state = s.state.as_str(), "retention: removed the batch's files");
                removed += 1;
            }
        }
        for id in store::subfolders(b, &store::sftp_key(b, &tenant, &["download"])).await? {
            let dir = store::sftp_key(b, &tenant, &["download", id.as_str()]);
            if store::newest(b, &dir).await?.is_some_and(|t| t <= cutoff)
                && db::download_delivered(&st.db, &tenant, &id).await?
            {
                store::delete_prefix(b, &dir).await?;
                removed += 1;
            }
        }
        removed += store::sweep_stale_uploads(b, &tenant, cutoff).await?;
    }
    Ok(removed)
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
