//! The App server process: HTTPS web services for its Comms server (create an instance, import a relayed
//! batch, list batches) and an SFTP server where only the trusted Comms service keys may log in, confined to
//! the relay area `<data_dir>/sftp/<tenant>/incoming/<batch>/`.
//!
//! Invariant: each tenant's data lives in its own SQLite file; no query ever spans two instances.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, Uri};
use axum::routing::{get, post};
use axum::{Json, Router};
use ferry_proto::api::{CreateInstance, ImportReport, InstanceCreated, valid_tenant_name};
use ferry_proto::batch::BatchId;
use ferry_proto::manifest::Manifest;
use ferry_web::ApiError;
use ferry_web::auth::SignatureVerifier;
use ferry_web::identity::ServerIdentity;
use russh::keys::PublicKey;
use tokio::sync::Mutex;

use crate::config::AppConfig;
use crate::import::{ImportLimits, import_batch};
use crate::instance::Instance;

/// An open instance and the lock that serialises imports into it.
pub type SharedInstance = Arc<(Instance, Mutex<()>)>;

pub struct AppState {
    pub cfg: AppConfig,
    pub identity: ServerIdentity,
    comms_keys: HashMap<String, PublicKey>,
    verifier: SignatureVerifier,
    /// Open instances with the time of their last use; at most `max_open_instances` are kept (see
    /// [`AppState::instance`]).
    instances: Mutex<HashMap<String, (SharedInstance, std::time::Instant)>>,
    /// Signed client for the Comms server (downstream announcements), if configured.
    comms: Option<ferry_web::client::ApiClient>,
    /// Wakes the announcer (a file was published).
    pub announce_wakeup: tokio::sync::Notify,
}

impl AppState {
    pub fn instance_path(&self, tenant: &str) -> PathBuf {
        self.cfg.data_dir.join("instances").join(format!("{tenant}.db"))
    }

    pub fn sftp_root(&self) -> PathBuf {
        self.cfg.data_dir.join("sftp")
    }

    /// An existing instance (None if the tenant has none on this server). Opened on first use and kept open;
    /// beyond `max_open_instances` the least recently used instance nobody is using is closed.
    pub async fn instance(&self, tenant: &str) -> anyhow::Result<Option<SharedInstance>> {
        self.cached_instance(tenant, false).await
    }

    /// The open instance of `tenant`, opening it (with `create`, creating it) if needed.
    async fn cached_instance(&self, tenant: &str, create: bool) -> anyhow::Result<Option<SharedInstance>> {
        if !valid_tenant_name(tenant) {
            return Ok(None);
        }
        let mut map = self.instances.lock().await;
        let now = std::time::Instant::now();
        if let Some((i, used)) = map.get_mut(tenant) {
            *used = now;
            return Ok(Some(i.clone()));
        }
        let path = self.instance_path(tenant);
        if !create && !path.exists() {
            return Ok(None);
        }
        let inst = Arc::new((Instance::open(&path).await?, Mutex::new(())));
        map.insert(tenant.to_string(), (inst.clone(), now));
        self.close_idle(&mut map).await;
        Ok(Some(inst))
    }

    /// Close least recently used instances until at most `max_open_instances` are open. An instance someone
    /// holds (an import, a request) stays open: the map may exceed the cap until it is released.
    async fn close_idle(&self, map: &mut HashMap<String, (SharedInstance, std::time::Instant)>) {
        while map.len() > self.cfg.max_open_instances {
            let idle = map
                .iter()
                .filter(|(_, (i, _))| Arc::strong_count(i) == 1)
                .min_by_key(|(_, (_, used))| *used)
                .map(|(t, _)| t.clone());
            let Some((inst, _)) = idle.and_then(|t| map.remove(&t)) else { break };
            inst.0.close().await;
        }
    }

    /// How many instances are open now.
    pub async fn open_instances(&self) -> usize {
        self.instances.lock().await.len()
    }

    async fn create_instance(&self, tenant: &str) -> anyhow::Result<bool> {
        let path = self.instance_path(tenant);
        let created = !path.exists();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::create_dir_all(self.sftp_root().join(tenant).join("incoming"))?;
        self.cached_instance(tenant, true).await?;
        Ok(created)
    }
}

struct CommsAuthorizer(Arc<AppState>);

impl ferry_sftp::server::Authorizer for CommsAuthorizer {
    fn authorize(&self, _user: &str, key: &PublicKey) -> Option<ferry_sftp::server::Principal> {
        let fp = ferry_io::keys::fingerprint(key);
        let known = self.0.comms_keys.get(&fp)?;
        if known.key_data() != key.key_data() {
            return None;
        }
        let root = self.0.sftp_root();
        std::fs::create_dir_all(&root).ok()?;
        Some(ferry_sftp::server::Principal { name: "comms".into(), root })
    }
}

pub struct AppHandle {
    pub https_addr: SocketAddr,
    pub ssh_addr: SocketAddr,
    pub state: Arc<AppState>,
    tasks: ferry_web::serve::Tasks,
}

impl AppHandle {
    pub fn url(&self) -> String {
        format!("https://{}", self.https_addr)
    }

    pub async fn stop(self) {
        self.tasks.stop().await;
    }
}

/// Load the identity only (for `ferry app info`).
pub fn identity(cfg: &AppConfig) -> anyhow::Result<ServerIdentity> {
    ServerIdentity::load_or_create(&cfg.data_dir, cfg.tls_cert.as_deref().zip(cfg.tls_key.as_deref()), &cfg.tls_names)
}

pub async fn start(
    cfg: AppConfig,
    https: std::net::TcpListener,
    ssh: tokio::net::TcpListener,
) -> anyhow::Result<AppHandle> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("cannot create the data directory {}", cfg.data_dir.display()))?;
    let identity = identity(&cfg)?;
    let mut comms_keys = HashMap::new();
    for k in &cfg.comms_keys {
        let k = ferry_io::keys::parse_public_key(k)?;
        comms_keys.insert(ferry_io::keys::fingerprint(&k), k);
    }
    if comms_keys.is_empty() {
        tracing::warn!("no comms_keys configured: no Comms server can call this App server yet");
    }
    let tls = ferry_io::tls::server_config(&identity.tls)?;
    let comms = crate::downstream::comms_client(&cfg, &identity.service_key)?;
    let ssh_cfg = ferry_sftp::server::ServerConfig {
        host_key: identity.ssh_host_key.clone(),
        auth_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(600),
        max_auth_attempts: 6,
    };
    let https_addr = https.local_addr()?;
    let ssh_addr = ssh.local_addr()?;
    let state = Arc::new(AppState {
        verifier: SignatureVerifier::new(cfg.signature_max_age_secs),
        cfg,
        identity,
        comms_keys,
        instances: Mutex::new(HashMap::new()),
        comms,
        announce_wakeup: tokio::sync::Notify::new(),
    });
    let mut tasks = ferry_web::serve::Tasks::default();
    let router = router(state.clone());
    let sd = tasks.shutdown_signal();
    tasks.spawn_logged("https server", ferry_web::serve::serve_https(https, router, tls, sd));
    let auth = Arc::new(CommsAuthorizer(state.clone()));
    let sd = tasks.shutdown_signal();
    tasks.spawn_logged("sftp server", ferry_sftp::server::serve(ssh_cfg, ssh, auth, sd));
    tasks.spawn(announcer(state.clone(), tasks.shutdown_signal()));
    tracing::info!(%https_addr, %ssh_addr, "app server listening");
    Ok(AppHandle { https_addr, ssh_addr, state, tasks })
}

type St = State<Arc<AppState>>;

fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/v1/instances", post(create))
        .route("/v1/instances/{tenant}/batches", get(list))
        .route("/v1/instances/{tenant}/batches/{id}/import", post(import))
        .route("/v1/instances/{tenant}/files", get(files))
        .route("/v1/instances/{tenant}/files/{id}/state", post(file_state))
        .layer(axum::extract::DefaultBodyLimit::max(1024 * 1024))
        .with_state(state)
}

fn authenticate(st: &AppState, method: &Method, uri: &Uri, headers: &HeaderMap, body: &[u8]) -> Result<(), ApiError> {
    st.verifier.verify(method, uri, headers, body, |keyid| st.comms_keys.get(keyid).cloned())?;
    Ok(())
}

async fn create(
    State(st): St,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<InstanceCreated>, ApiError> {
    authenticate(&st, &method, &uri, &headers, &body)?;
    let req: CreateInstance =
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("bad request body: {e}")))?;
    if !valid_tenant_name(&req.tenant) {
        return Err(ApiError::BadRequest("tenant name must be 1-32 of a-z, 0-9, '-', starting with a letter".into()));
    }
    let created = st.create_instance(&req.tenant).await.map_err(ApiError::Internal)?;
    tracing::info!(tenant = %req.tenant, created, "instance ready");
    Ok(Json(InstanceCreated { tenant: req.tenant, created }))
}

async fn open_instance(st: &AppState, tenant: &str) -> Result<SharedInstance, ApiError> {
    st.instance(tenant)
        .await
        .map_err(ApiError::Internal)?
        .ok_or_else(|| ApiError::NotFound(format!("no instance for tenant {tenant:?} on this App server")))
}

async fn list(
    State(st): St,
    Path(tenant): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Vec<ImportReport>>, ApiError> {
    authenticate(&st, &method, &uri, &headers, &body)?;
    let inst = open_instance(&st, &tenant).await?;
    Ok(Json(inst.0.batches().await.map_err(|e| ApiError::Internal(e.into()))?))
}

async fn import(
    State(st): St,
    Path((tenant, id)): Path<(String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<ImportReport>, ApiError> {
    authenticate(&st, &method, &uri, &headers, &body)?;
    let id = BatchId::parse(&id).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let manifest = Manifest::parse(&body).map_err(|e| ApiError::Unprocessable(e.to_string()))?;
    manifest.check_batch(&id).map_err(|e| ApiError::Unprocessable(e.to_string()))?;
    let inst = open_instance(&st, &tenant).await?;
    let _one_at_a_time = inst.1.lock().await;
    let dir = st.sftp_root().join(&tenant).join("incoming").join(id.as_str());
    let limits = ImportLimits { max_decompressed_per_file: st.cfg.max_decompressed_bytes, ..ImportLimits::default() };
    let t = std::time::Instant::now();
    // In its own task: a client that disconnects must not cancel an import half-way (it would roll back).
    let (inst2, dir2) = (inst.clone(), dir.clone());
    let report = tokio::spawn(async move { import_batch(&inst2.0, &dir2, &manifest, &limits).await })
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    tracing::info!(%tenant, batch = %id, state = report.state.as_str(), secs = t.elapsed().as_secs_f64(), duplicate = report.duplicate, detail = report.detail.as_deref().unwrap_or(""), "import finished");
    if report.state == ferry_proto::api::BatchState::Imported {
        let _ = std::fs::remove_dir_all(&dir);
        if !report.duplicate && st.cfg.plan_after_import {
            // Planning is the App's own business: it must not delay or fail the import's answer.
            let (st2, inst2, tenant2) = (st.clone(), inst.clone(), tenant.clone());
            tokio::spawn(async move {
                let today = chrono::Utc::now().date_naive();
                match crate::downstream::plan_and_publish(&st2.cfg, &inst2.0, &tenant2, today).await {
                    Ok((plan, files)) => {
                        tracing::info!(tenant = %tenant2, lines = plan.lines.len(), files = files.len(), "planned after import");
                        st2.announce_wakeup.notify_one();
                    }
                    Err(e) => tracing::error!(tenant = %tenant2, "planning after import failed: {e:#}"),
                }
            });
        }
    }
    Ok(Json(report))
}

/// Announces outbox files to Comms: at once when woken (this process published a file), every 2 s for the
/// instances that left a marker (`outbox::announce_marker`, also written by `ferry app publish` in another
/// process), and every instance at start and once an hour as a safety net. After a failure it tries again with
/// backoff and jitter (1 s growing to 5 min); the same error is logged once per 5 minutes with a count.
async fn announcer(st: Arc<AppState>, shutdown: impl std::future::Future<Output = ()> + Send + 'static) {
    use ferry_io::retry::{Backoff, FailureLog};
    tokio::pin!(shutdown);
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(300));
    let mut failures = FailureLog::new("announcing downstream files to the Comms server", Duration::from_secs(300));
    let mut next_full = tokio::time::Instant::now();
    loop {
        let full = tokio::time::Instant::now() >= next_full;
        let wait = match announce_all(&st, full).await {
            Ok(()) => {
                backoff.reset();
                if full {
                    next_full = tokio::time::Instant::now() + FULL_ANNOUNCE_SCAN;
                }
                if let Some(line) = failures.success() {
                    tracing::info!("{line}");
                }
                Duration::from_secs(2)
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
            _ = st.announce_wakeup.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

const FULL_ANNOUNCE_SCAN: Duration = Duration::from_secs(3600);

/// Announce what the marked instances (`full`: all instances) have not announced yet. A marker is removed before
/// its instance is read and left again if announcing fails, so a file published meanwhile is never missed.
async fn announce_all(st: &AppState, full: bool) -> anyhow::Result<()> {
    let Some(comms) = &st.comms else { return Ok(()) };
    let dir = st.cfg.data_dir.join("instances");
    let (listed, suffix) = if full { (dir.clone(), ".db") } else { (dir.join("announce"), "") };
    let Ok(entries) = std::fs::read_dir(&listed) else { return Ok(()) };
    let tenants: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_suffix(suffix)).map(str::to_owned))
        .filter(|t| valid_tenant_name(t))
        .collect();
    for tenant in tenants {
        let path = st.instance_path(&tenant);
        let marker = crate::outbox::announce_marker(&path);
        if let Some(m) = &marker {
            let _ = std::fs::remove_file(m);
        }
        let result = async {
            if let Some(inst) = st.instance(&tenant).await? {
                crate::downstream::announce_pending(comms, &inst.0, &tenant).await?;
            }
            anyhow::Ok(())
        }
        .await;
        if let Err(e) = result {
            let _ = crate::outbox::mark_for_announcement(&path);
            return Err(e);
        }
    }
    Ok(())
}

async fn files(
    State(st): St,
    Path(tenant): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Vec<ferry_proto::api::FileReceipt>>, ApiError> {
    authenticate(&st, &method, &uri, &headers, &body)?;
    let inst = open_instance(&st, &tenant).await?;
    Ok(Json(crate::outbox::receipts(&inst.0).await.map_err(ApiError::Internal)?))
}

async fn file_state(
    State(st): St,
    Path((tenant, id)): Path<(String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    authenticate(&st, &method, &uri, &headers, &body)?;
    let id = ferry_proto::api::FileId::parse(&id).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let p: ferry_proto::api::FileProgress =
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("bad body: {e}")))?;
    let inst = open_instance(&st, &tenant).await?;
    if !crate::outbox::set_progress(&inst.0, &id, &p).await.map_err(ApiError::Internal)? {
        return Err(ApiError::NotFound(format!("no file {id} in this instance's outbox")));
    }
    Ok(Json(serde_json::json!({ "file_id": id, "state": p.state })))
}
