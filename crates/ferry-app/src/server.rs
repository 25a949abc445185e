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
use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use ferry_proto::api::{
    CreateInstance, FilesProgress, FilesProgressed, ImportReport, InstanceCreated, MAX_FILES_PER_CALL,
    valid_tenant_name,
};
use ferry_proto::batch::BatchId;
use ferry_proto::manifest::Manifest;
use ferry_web::auth::SignatureVerifier;
use ferry_web::identity::ServerIdentity;
use ferry_web::worker::Worker;
use ferry_web::{ApiError, Signed, SignedBy};
use russh::keys::PublicKey;
use tokio::sync::{Mutex, OnceCell};

use crate::config::AppConfig;
use crate::import::{ImportLimits, StageClock, import_batch_timed};
use crate::instance::Instance;
use crate::metrics::Stage;

/// An open instance and the lock that serialises imports into it.
pub type SharedInstance = Arc<(Instance, Mutex<()>)>;

/// A tenant's place in the cache: opened once, by the first request that needs it, while later requests for
/// the same tenant wait on the cell (not on the map).
type Slot = Arc<OnceCell<SharedInstance>>;

pub struct AppState {
    pub cfg: AppConfig,
    pub identity: ServerIdentity,
    /// The Comms service keys allowed to call, by fingerprint (`comms_keys`, parsed at load).
    comms_keys: HashMap<String, PublicKey>,
    verifier: SignatureVerifier,
    /// Open instances with the time of their last use; at most `max_open_instances` are kept (see
    /// [`AppState::instance`]). The map's lock is only ever held to look up, insert or remove a slot — never
    /// while an instance opens or closes (that happens in the slot, [`Slot`]).
    instances: std::sync::Mutex<HashMap<String, (Slot, std::time::Instant)>>,
    /// Signed client for the Comms server (downstream announcements), if configured.
    comms: Option<ferry_io::client::ApiClient>,
    /// Wakes the announcer (a file was published).
    pub announce_wakeup: tokio::sync::Notify,
    /// Prometheus metrics (`GET /metrics` on the admin listener).
    pub metrics: crate::metrics::Metrics,
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
        let path = self.instance_path(tenant);
        let slot = {
            let mut map = self.lock_instances();
            let now = std::time::Instant::now();
            match map.get_mut(tenant) {
                Some((slot, used)) => {
                    *used = now;
                    slot.clone()
                }
                None => {
                    if !create && !path.exists() {
                        return Ok(None);
                    }
                    let slot = Slot::default();
                    map.insert(tenant.to_string(), (slot.clone(), now));
                    slot
                }
            }
        };
        let opened = slot
            .get_or_try_init(|| async { anyhow::Ok(Arc::new((Instance::open(&path).await?, Mutex::new(())))) })
            .await;
        let inst = match opened {
            Ok(inst) => inst.clone(),
            Err(e) => {
                // Forget the slot (if it is still ours) so that the next request tries again.
                let mut map = self.lock_instances();
                if map.get(tenant).is_some_and(|(s, _)| Arc::ptr_eq(s, &slot) && s.get().is_none()) {
                    map.remove(tenant);
                }
                return Err(e);
            }
        };
        self.close_idle().await;
        Ok(Some(inst))
    }

    fn lock_instances(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Slot, std::time::Instant)>> {
        // The map holds no invariant a panicking holder could break half-way.
        self.instances.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Close least recently used instances until at most `max_open_instances` are open. An instance someone
    /// holds (an import, a request, one being opened) stays open: the map may exceed the cap until it is
    /// released. The idle ones are taken out of the map under its lock and closed after it is released.
    async fn close_idle(&self) {
        let closing: Vec<SharedInstance> = {
            let mut map = self.lock_instances();
            let mut out = Vec::new();
            while map.len() > self.cfg.max_open_instances {
                let idle = map
                    .iter()
                    .filter(|(_, (slot, _))| {
                        Arc::strong_count(slot) == 1 && slot.get().is_some_and(|i| Arc::strong_count(i) == 1)
                    })
                    .min_by_key(|(_, (_, used))| *used)
                    .map(|(t, _)| t.clone());
                let Some((slot, _)) = idle.and_then(|t| map.remove(&t)) else { break };
                out.extend(slot.get().cloned());
            }
            out
        };
        for inst in closing {
            inst.0.close().await;
        }
    }

    /// How many instances are open (or opening) now.
    pub async fn open_instances(&self) -> usize {
        self.lock_instances().len()
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
    /// The buyer's web page, if served.
    pub web_addr: Option<SocketAddr>,
    /// The admin listener (`/metrics`), if served ([`AppHandle::serve_admin`]).
    pub admin_addr: Option<SocketAddr>,
    pub state: Arc<AppState>,
    tasks: ferry_web::serve::Tasks,
}

impl AppHandle {
    pub fn url(&self) -> String {
        format!("https://{}", self.https_addr)
    }

    /// `https://<addr>` of the buyer's web page, if served.
    pub fn web_url(&self) -> Option<String> {
        self.web_addr.map(|a| format!("https://{a}"))
    }

    pub async fn stop(self) {
        self.tasks.stop().await;
    }

    /// Serve the admin listener: `GET /metrics` (Prometheus exposition text) behind the bearer token of
    /// `<data_dir>/admin.token` (created, mode 0600, if missing).
    pub fn serve_admin(&mut self, listener: std::net::TcpListener) -> anyhow::Result<()> {
        let addr = listener.local_addr()?;
        if !addr.ip().is_loopback() {
            tracing::warn!(
                "listen_admin = {addr} is not a loopback address: the metrics are reachable from the network (they \
                 still need the admin token)"
            );
        }
        let token = ferry_web::admin_token::load_or_create(&self.state.cfg.admin_token_path())?;
        self.serve_https("admin listener", listener, admin_router(self.state.clone(), token))?;
        self.admin_addr = Some(addr);
        tracing::info!(%addr, "app admin listener (metrics) listening");
        Ok(())
    }

    /// Serve `router` over HTTPS on one more listener (the App's certificate, the `[connections]` caps), until
    /// the server stops.
    pub fn serve_https(
        &mut self,
        what: &'static str,
        listener: std::net::TcpListener,
        router: Router,
    ) -> anyhow::Result<()> {
        let tls = ferry_io::tls::server_config(&self.state.identity.tls)?;
        let limits = self.state.cfg.connections.clone();
        let gate = ferry_io::accept::Gate::from_limits(what, &limits, 3);
        let sd = self.tasks.shutdown_signal();
        self.tasks.spawn_logged(what, ferry_web::serve::serve_https(listener, router, tls, gate, limits, sd));
        Ok(())
    }
}

/// Load the identity only (for `ferry app info`).
pub fn identity(cfg: &AppConfig) -> anyhow::Result<ServerIdentity> {
    ServerIdentity::load_or_create(&cfg.data_dir, cfg.tls_cert.as_deref().zip(cfg.tls_key.as_deref()), &cfg.tls_names)
}

/// Start the App server on the listeners given (the buyer's web page is added by `web::start_with_web`).
pub async fn start(
    cfg: AppConfig,
    https: std::net::TcpListener,
    ssh: tokio::net::TcpListener,
) -> anyhow::Result<AppHandle> {
    ferry_io::private::create_dir(&cfg.data_dir)
        .with_context(|| format!("cannot create the data directory {}", cfg.data_dir.display()))?;
    let identity = identity(&cfg)?;
    let comms_keys: HashMap<String, PublicKey> =
        cfg.comms_keys.iter().map(|k| (k.fingerprint.clone(), k.key.clone())).collect();
    if comms_keys.is_empty() {
        tracing::warn!("no comms_keys configured: no Comms server can call this App server yet");
    }
    let tls = ferry_io::tls::server_config(&identity.tls)?;
    let comms = crate::downstream::comms_client(&cfg, &identity.service_key)?;
    if comms.is_none() {
        tracing::warn!(
            "no [comms] api_url configured: downstream files stay in the outbox, never announced; fill it with \
             `ferry app init --comms-info FILE` (FILE: the output of `ferry comms info`)"
        );
    }
    let conn_limits = cfg.connections.clone();
    let ssh_cfg = ferry_sftp::server::ServerConfig {
        host_key: identity.ssh_host_key.clone(),
        auth_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(600),
        max_auth_attempts: 6,
        gate: ferry_io::accept::Gate::from_public_limits("sftp", &conn_limits, 2),
    };
    let https_addr = https.local_addr()?;
    let ssh_addr = ssh.local_addr()?;
    let state = Arc::new(AppState {
        verifier: SignatureVerifier::new(cfg.signature_max_age_secs),
        cfg,
        identity,
        comms_keys,
        instances: std::sync::Mutex::new(HashMap::new()),
        comms,
        announce_wakeup: tokio::sync::Notify::new(),
        metrics: crate::metrics::Metrics::default(),
    });
    let mut tasks = ferry_web::serve::Tasks::default();
    let router = router(state.clone());
    let sd = tasks.shutdown_signal();
    let gate = ferry_io::accept::Gate::from_public_limits("https", &conn_limits, 2);
    tasks.spawn_logged("https server", ferry_web::serve::serve_https(https, router, tls, gate, conn_limits, sd));
    let auth = Arc::new(CommsAuthorizer(state.clone()));
    let sd = tasks.shutdown_signal();
    tasks.spawn_logged("sftp server", ferry_sftp::server::serve(ssh_cfg, ssh, auth, sd));
    tasks.spawn(announcer(state.clone(), tasks.shutdown_signal()));
    let st = state.clone();
    tasks.spawn(st.cfg.retention.run("batches (App incoming area)", tasks.shutdown_signal(), move || {
        let st = st.clone();
        async move { sweep_batches(&st).await }
    }));
    tracing::info!(%https_addr, %ssh_addr, "app server listening");
    Ok(AppHandle { https_addr, ssh_addr, web_addr: None, admin_addr: None, state, tasks })
}

type St = State<Arc<AppState>>;

/// The admin listener's routes: `/metrics`, bearer token required.
fn admin_router(state: Arc<AppState>, token: String) -> Router {
    let token = Arc::new(token);
    let routes = Router::new().route("/metrics", get(metrics)).layer(axum::middleware::from_fn(
        move |req: axum::extract::Request, next: axum::middleware::Next| {
            let token = token.clone();
            async move {
                let header = req.headers().get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
                if !ferry_web::admin_token::bearer_matches(header, &token) {
                    tracing::warn!(path = req.uri().path(), "app admin listener: missing or wrong admin token");
                    return axum::response::IntoResponse::into_response(ApiError::Unauthorized(
                        "missing or wrong admin token: send `Authorization: Bearer <token>` with the token from \
                         admin.token in the App server's data directory"
                            .into(),
                    ));
                }
                next.run(req).await
            }
        },
    ));
    ferry_web::error::json_errors(routes.with_state(state))
}

/// `GET /metrics`: Prometheus exposition text (OpenMetrics).
async fn metrics(State(st): St) -> Result<axum::response::Response, ApiError> {
    let text = st.metrics.render().map_err(ApiError::internal)?;
    Ok(axum::response::IntoResponse::into_response((
        [(axum::http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        text,
    )))
}

fn router(state: Arc<AppState>) -> Router {
    let routes = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/v1/instances", post(create))
        .route("/v1/instances/{tenant}/batches", get(list))
        .route("/v1/instances/{tenant}/batches/{id}/import", post(import))
        .route("/v1/instances/{tenant}/files", get(files))
        .route("/v1/instances/{tenant}/files/state", post(files_state))
        .route("/v1/instances/{tenant}/files/{id}/state", post(file_state))
        .layer(axum::extract::DefaultBodyLimit::max(ferry_web::signed::MAX_SIGNED_BODY))
        .with_state(state);
    ferry_web::error::json_errors(routes)
}

/// The caller of every App route: a Comms server, known by one of the `comms_keys` that signed the request.
pub struct CommsService {
    pub key_fingerprint: String,
}

impl SignedBy<CommsService> for AppState {
    fn verifier(&self) -> &SignatureVerifier {
        &self.verifier
    }

    fn key(&self, keyid: &str) -> Option<PublicKey> {
        self.comms_keys.get(keyid).cloned()
    }

    async fn caller(&self, keyid: String, _peer: Option<SocketAddr>) -> Result<CommsService, ApiError> {
        Ok(CommsService { key_fingerprint: keyid })
    }
}

async fn create(State(st): St, Signed { body, .. }: Signed<CommsService>) -> Result<Json<InstanceCreated>, ApiError> {
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
    _: Signed<CommsService>,
) -> Result<Json<Vec<ImportReport>>, ApiError> {
    let inst = open_instance(&st, &tenant).await?;
    Ok(Json(inst.0.batches().await.map_err(|e| ApiError::Internal(e.into()))?))
}

#[tracing::instrument(name = "import", skip_all, fields(tenant = %tenant, batch = %id))]
async fn import(
    State(st): St,
    Path((tenant, id)): Path<(String, String)>,
    Signed { body, .. }: Signed<CommsService>,
) -> Result<Json<ImportReport>, ApiError> {
    let id = BatchId::parse(&id).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let manifest = Manifest::parse(&body).map_err(|e| ApiError::Unprocessable(e.to_string()))?;
    manifest.check_batch(&id).map_err(|e| ApiError::Unprocessable(e.to_string()))?;
    let inst = open_instance(&st, &tenant).await?;
    let _one_at_a_time = inst.1.lock().await;
    let dir = st.sftp_root().join(&tenant).join("incoming").join(id.as_str());
    let limits = ImportLimits { max_decompressed_per_file: st.cfg.max_decompressed_bytes, ..ImportLimits::default() };
    let t = std::time::Instant::now();
    let plain_bytes = manifest.files.iter().fold(0u64, |a, f| a.saturating_add(f.bytes));
    let clock = Arc::new(StageClock::default());
    // In its own task: a client that disconnects must not cancel an import half-way (it would roll back).
    let (inst2, dir2, clock2) = (inst.clone(), dir.clone(), clock.clone());
    // (the task keeps this span: its log lines carry the tenant and the batch)
    let work = async move { import_batch_timed(&inst2.0, &dir2, &manifest, &limits, &clock2).await };
    let report = tokio::spawn(tracing::Instrument::in_current_span(work))
        .await
        .map_err(ApiError::internal)
        .and_then(|r| r.map_err(ApiError::internal));
    let m = &st.metrics;
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            m.import("failed");
            return Err(e);
        }
    };
    m.stage(Stage::Import, t.elapsed());
    if !report.duplicate {
        m.stage(Stage::Decompress, clock.decompress());
        m.stage(Stage::Verify, clock.verify());
    }
    match (report.state, report.duplicate) {
        (_, true) => m.import("duplicate"),
        (ferry_proto::api::BatchState::Imported, false) => {
            m.import("imported");
            m.imported(&tenant, plain_bytes, report.files.iter().fold(0u64, |a, f| a.saturating_add(f.rows)));
        }
        _ => m.import("rejected"),
    }
    tracing::info!(
        state = report.state.as_str(),
        secs = t.elapsed().as_secs_f64(),
        duplicate = report.duplicate,
        detail = report.detail.as_deref().unwrap_or(""),
        "import finished"
    );
    if report.state == ferry_proto::api::BatchState::Imported {
        let _ = std::fs::remove_dir_all(&dir);
        if !report.duplicate && st.cfg.plan_after_import {
            // Planning is the App's own business: it must not delay or fail the import's answer.
            let (st2, inst2, tenant2) = (st.clone(), inst.clone(), tenant.clone());
            let plan = async move {
                let today = chrono::Utc::now().date_naive();
                let t = std::time::Instant::now();
                let planned = crate::downstream::plan_and_publish(&st2.cfg, &inst2.0, &tenant2, today).await;
                st2.metrics.stage(Stage::Plan, t.elapsed());
                match planned {
                    Ok(p) => {
                        st2.metrics.planned("ok");
                        st2.metrics.released(p.released.len());
                        tracing::info!(plan = p.plan.id, lines = p.plan.lines, policy = %p.policy, files = p.released.len(), "planned after import");
                        if !p.released.is_empty() {
                            st2.announce_wakeup.notify_one();
                        }
                    }
                    Err(e) => {
                        st2.metrics.planned("failed");
                        tracing::error!("planning after import failed: {e:#}")
                    }
                }
            };
            // the plan's log lines carry the tenant and the batch that triggered it
            tokio::spawn(tracing::Instrument::in_current_span(plan));
        }
    }
    Ok(Json(report))
}

/// Announces outbox files to Comms, per tenant, tenants concurrently (at most `max_concurrent_tenants`,
/// [`ferry_web::worker`]): at once when woken (this process published a file), every 2 s for the instances that
/// left a marker (`outbox::announce_marker`, also written by `ferry app publish` in another process), and every
/// instance at start and once an hour as a safety net. A tenant whose announcement failed tries again with
/// backoff and jitter (1 s growing to 5 min); the same error is logged once per 5 minutes with a count.
async fn announcer(st: Arc<AppState>, shutdown: impl std::future::Future<Output = ()> + Send + 'static) {
    let worker = Worker {
        idle: Duration::from_secs(2),
        backoff_base: Duration::from_secs(1),
        backoff_max: Duration::from_secs(300),
        log_interval: Duration::from_secs(300),
        ..Worker::new("announcing downstream files to the Comms server", st.cfg.max_concurrent_tenants)
    };
    let next_full = std::sync::Mutex::new(tokio::time::Instant::now());
    let list = || async {
        let now = tokio::time::Instant::now();
        let full = next_full.lock().map(|n| now >= *n).unwrap_or(true);
        let tenants = tenants_to_announce(&st, full);
        if full && let Ok(mut n) = next_full.lock() {
            *n = now + FULL_ANNOUNCE_SCAN;
        }
        anyhow::Ok(tenants.into_iter().map(|t| (t.clone(), t)).collect::<Vec<_>>())
    };
    let work = |tenant: String| {
        let st = st.clone();
        async move { announce_tenant(&st, &tenant).await }
    };
    worker.run(&st.announce_wakeup, shutdown, list, work).await
}

const FULL_ANNOUNCE_SCAN: Duration = Duration::from_secs(3600);

/// The tenants to announce: those that left a marker (`full`: every instance). None without a Comms server.
fn tenants_to_announce(st: &AppState, full: bool) -> Vec<String> {
    if st.comms.is_none() {
        return Vec::new();
    }
    let dir = st.cfg.data_dir.join("instances");
    let (listed, suffix) = if full { (dir.clone(), ".db") } else { (dir.join("announce"), "") };
    let Ok(entries) = std::fs::read_dir(&listed) else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_suffix(suffix)).map(str::to_owned))
        .filter(|t| valid_tenant_name(t))
        .collect()
}

/// Announce what `tenant`'s instance has not announced yet. Its marker is removed before the instance is read and
/// left again if announcing fails, so a file published meanwhile is never missed.
#[tracing::instrument(name = "announce", skip_all, fields(tenant = %tenant))]
async fn announce_tenant(st: &AppState, tenant: &str) -> anyhow::Result<()> {
    let Some(comms) = &st.comms else { return Ok(()) };
    let path = st.instance_path(tenant);
    if let Some(m) = crate::outbox::announce_marker(&path) {
        let _ = std::fs::remove_file(m);
    }
    let result = async {
        if let Some(inst) = st.instance(tenant).await? {
            let announced = crate::downstream::announce_pending(comms, &inst.0, tenant).await;
            if let Ok(n) = crate::outbox::pending(&inst.0).await {
                st.metrics.outbox_depth(tenant, n);
            }
            announced?;
        }
        anyhow::Ok(())
    }
    .await;
    if result.is_err() {
        let _ = crate::outbox::mark_for_announcement(&path);
    }
    result
}

async fn files(
    State(st): St,
    Path(tenant): Path<String>,
    _: Signed<CommsService>,
) -> Result<Json<Vec<ferry_proto::api::FileReceipt>>, ApiError> {
    let inst = open_instance(&st, &tenant).await?;
    Ok(Json(crate::outbox::receipts(&inst.0).await.map_err(ApiError::Internal)?))
}

async fn file_state(
    State(st): St,
    Path((tenant, id)): Path<(String, String)>,
    Signed { body, .. }: Signed<CommsService>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = ferry_proto::api::FileId::parse(&id).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let p: ferry_proto::api::FileProgress =
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("bad body: {e}")))?;
    let inst = open_instance(&st, &tenant).await?;
    if !crate::outbox::set_progress(&inst.0, &id, &p).await.map_err(ApiError::Internal)? {
        return Err(ApiError::NotFound(format!("no file {id} in this instance's outbox")));
    }
    if let Ok(n) = crate::outbox::pending(&inst.0).await {
        st.metrics.outbox_depth(&tenant, n);
    }
    Ok(Json(serde_json::json!({ "file_id": id, "state": p.state })))
}

/// `POST /v1/instances/{tenant}/files/state` ([`FilesProgress`], up to [`MAX_FILES_PER_CALL`] files): the progress
/// of many files recorded in one transaction; files the outbox does not hold are listed as `unknown`.
async fn files_state(
    State(st): St,
    Path(tenant): Path<String>,
    Signed { body, .. }: Signed<CommsService>,
) -> Result<Json<FilesProgressed>, ApiError> {
    let req: FilesProgress =
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("bad body: {e}")))?;
    if req.files.len() > MAX_FILES_PER_CALL {
        return Err(ApiError::TooLarge(format!(
            "{} files in one call; send at most {MAX_FILES_PER_CALL}",
            req.files.len()
        )));
    }
    let inst = open_instance(&st, &tenant).await?;
    let files: Vec<_> = req.files.into_iter().map(|f| (f.file_id, f.progress)).collect();
    let known = crate::outbox::set_progress_many(&inst.0, &files).await.map_err(ApiError::Internal)?;
    let mut answer = FilesProgressed::default();
    for ((id, _), known) in files.into_iter().zip(known) {
        if known { answer.updated.push(id) } else { answer.unknown.push(id) }
    }
    if let Ok(n) = crate::outbox::pending(&inst.0).await {
        st.metrics.outbox_depth(&tenant, n);
    }
    Ok(Json(answer))
}

/// Retention: removes `sftp/<tenant>/incoming/<batch>/` of every batch the tenant's batch log has a verdict for
/// (imported or rejected: final) once the folder is older than `[retention] keep_secs`. The batch log row stays.
/// A folder without a verdict (being relayed, or files the Comms server copied early for a batch that was never
/// completed) is removed only when nothing in it changed for twice `keep_secs`; a batch completed after that
/// is simply relayed again in full.
pub async fn sweep_batches(st: &AppState) -> anyhow::Result<usize> {
    let keep = st.cfg.retention.keep();
    let mut removed = 0;
    for (tenant, tdir) in ferry_web::retention::subdirs(&st.sftp_root()) {
        let old: Vec<_> = ferry_web::retention::subdirs(&tdir.join("incoming"))
            .into_iter()
            .filter(|(_, d)| ferry_web::retention::age(d) >= keep)
            .collect();
        if old.is_empty() {
            continue;
        }
        let Some(inst) = st.instance(&tenant).await? else { continue };
        for (id, dir) in old {
            let Ok(id) = BatchId::parse(&id) else { continue };
            let _one_at_a_time = inst.1.lock().await;
            let judged = inst.0.batch(&id).await?.is_some();
            if judged || newest_change_age(&dir) >= keep * 2 {
                std::fs::remove_dir_all(&dir)
                    .with_context(|| format!("cannot remove {} (retention)", dir.display()))?;
                if judged {
                    tracing::info!(%tenant, batch = %id, "retention: removed the batch's files");
                } else {
                    tracing::info!(%tenant, batch = %id, "retention: removed the files of a batch never completed");
                }
                removed += 1;
            }
        }
    }
    Ok(removed)
}

/// How long ago the folder or any file in it last changed.
fn newest_change_age(dir: &std::path::Path) -> std::time::Duration {
    let files = std::fs::read_dir(dir).into_iter().flatten().flatten().map(|e| e.path());
    std::iter::once(dir.to_path_buf()).chain(files).map(|p| ferry_web::retention::age(&p)).min().unwrap_or_default()
}
