//! The Connector-facing web services (`/v1/...`). Registration is authenticated by the single-use token; every
//! other call by an RFC 9421 signature whose key decides the tenant ([`Signed`]). Nothing admin-like is served
//! here: operator actions live on the admin listener ([`crate::admin_api`]).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use std::time::Duration;

use ferry_proto::api::{
    BatchStatus, DownloadFile, FileAck, FileAcks, FileError, FileId, FileReady, FileRefused, FileState, FilesAcked,
    FilesAnnounced, FilesReady, MAX_FILES_PER_CALL, RegisterRequest, RegisterResponse, RotateKey, WhoAmI,
    valid_file_name, valid_tenant_name,
};
use ferry_proto::batch::BatchId;
use ferry_proto::manifest::Manifest;
use ferry_web::auth::SignatureVerifier;
use ferry_web::{ApiError, Signed, SignedBy};
use russh::keys::PublicKey;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::limits::Limit;
use crate::{CommsState, db};

type St = State<Arc<CommsState>>;

/// Largest JSON body accepted (a manifest is a few kB).
const MAX_BODY: usize = ferry_web::signed::MAX_SIGNED_BODY;

pub fn router(state: Arc<CommsState>) -> Router {
    let timeout = Duration::from_secs(state.cfg.request_timeout_secs);
    let routes = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/openapi.json", get(openapi))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/register", post(register))
        .route("/v1/whoami", get(whoami))
        .route("/v1/keys/rotate", post(rotate_key))
        .route("/v1/batches", get(list_batches))
        .route("/v1/batches/{id}", get(get_batch))
        .route("/v1/batches/{id}/complete", post(complete_batch))
        .route("/v1/files", get(list_files))
        .route("/v1/files/ack", post(ack_files))
        .route("/v1/files/{id}/ack", post(ack_file))
        .route("/v1/files/{id}/error", post(file_error))
        .route("/v1/app/files", post(app_file_ready))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(state);
    ferry_web::error::json_errors(ferry_web::serve::with_request_timeout(routes, timeout))
}

/// The authenticated caller of a signed request: a tenant's Connector, known by the key that signed.
pub struct Caller {
    pub tenant: String,
    pub key_fingerprint: String,
}

/// An App server, known by its service key (registered with it: `[app] service_key` or `ferry comms app add`);
/// it announces downstream files, and only for the tenants placed on it.
pub struct AppService {
    /// The App server's registered name.
    pub name: String,
}

/// Connectors' requests: the tenant comes from the signing key alone; a refused signature is audited
/// (`auth_failed`, coalesced per address).
impl SignedBy<Caller> for CommsState {
    fn verifier(&self) -> &SignatureVerifier {
        &self.verifier
    }

    fn key(&self, keyid: &str) -> Option<PublicKey> {
        self.keys.tenant_of(keyid).map(|(_, k)| k)
    }

    async fn caller(&self, keyid: String, peer: Option<SocketAddr>) -> Result<Caller, ApiError> {
        let (tenant, _) = self
            .keys
            .tenant_of(&keyid)
            .ok_or_else(|| ApiError::Unauthorized("this key is not registered (or was revoked)".into()))?;
        // The first use of a rotated-in key retires the key it replaced.
        if let Some(old) = db::retire_replaced(&self.db, &keyid).await.map_err(ApiError::internal)? {
            self.keys.remove(&old);
            db::audit(&self.db, Some(&tenant), "key_retired", &format!("{old} replaced by {keyid}")).await;
        }
        self.note_key_use(&tenant, &keyid, peer, "https").await;
        Ok(Caller { tenant, key_fingerprint: keyid })
    }

    fn refused(&self, peer: Option<SocketAddr>, what: &str) {
        self.auth_failed(peer, crate::metrics::Refusal::Signature, what);
    }

    async fn first_use(&self, keyid: &str, nonce: &str, until: i64) -> Result<(), ApiError> {
        CommsState::first_use(self, keyid, nonce, until).await
    }
}

/// The App's announcements, signed by its service key.
impl SignedBy<AppService> for CommsState {
    fn verifier(&self) -> &SignatureVerifier {
        &self.verifier
    }

    fn ready(&self) -> Result<(), ApiError> {
        if self.apps.any_key() {
            Ok(())
        } else {
            Err(ApiError::Unauthorized("this Comms server has no App server with a service key registered".into()))
        }
    }

    fn key(&self, keyid: &str) -> Option<PublicKey> {
        self.apps.by_key(keyid).map(|(_, k)| k)
    }

    async fn caller(&self, keyid: String, _peer: Option<SocketAddr>) -> Result<AppService, ApiError> {
        let (name, _) =
            self.apps.by_key(&keyid).ok_or_else(|| ApiError::Unauthorized("this App server was removed".into()))?;
        Ok(AppService { name })
    }

    async fn first_use(&self, keyid: &str, nonce: &str, until: i64) -> Result<(), ApiError> {
        CommsState::first_use(self, keyid, nonce, until).await
    }
}

pub fn secret_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

async fn register(
    State(st): St,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Result<Json<RegisterRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<RegisterResponse>, ApiError> {
    // Unauthenticated: an address past its refusals is turned away before any work, and refusals are audited
    // coalesced per address (`register_refused`), so a flood grows neither the audit log nor the server log.
    if let Some(wait) = st.unauth_limit.limited(peer.ip()) {
        return Err(ApiError::TooManyRequests(format!(
            "too many refused registrations from {}; wait {} s, then register with a valid token",
            peer.ip(),
            wait.as_secs().max(1)
        )));
    }
    let checked = match body {
        Err(e) => Err(("bad_body", ferry_web::error::json_rejection(e))),
        Ok(Json(req)) => match ferry_io::keys::parse_public_key(&req.public_key) {
            Err(e) => Err(("bad_key", ApiError::BadRequest(format!("public_key is not an OpenSSH public key: {e}")))),
            Ok(key) => match check_key_strength(&key) {
                Err(e) => Err(("weak_key", e)),
                Ok(()) => Ok((req, key)),
            },
        },
    };
    let (req, key) = match checked {
        Ok(v) => v,
        Err((kind, e)) => {
            if let ApiError::BadRequest(m) | ApiError::Unprocessable(m) | ApiError::TooLarge(m) = &e {
                st.register_refused(peer, kind, m).await;
            }
            return Err(e);
        }
    };
    let fp = ferry_io::keys::fingerprint(&key);
    let openssh = ferry_io::keys::public_key_openssh(&key).map_err(ApiError::internal)?;
    let hostname: String = req.hostname.chars().filter(|c| !c.is_control()).take(255).collect();
    let tenant = match db::register_key(&st.db, &secret_hash(&req.token_secret), &fp, &openssh, &hostname).await {
        Ok(t) => t,
        Err(db::RegisterError::Db(e)) => return Err(ApiError::internal(e)),
        Err(e) => {
            let kind = match e {
                db::RegisterError::UnknownToken => "unknown_token",
                db::RegisterError::UsedToken => "used_token",
                db::RegisterError::ExpiredToken => "expired_token",
                db::RegisterError::TenantDisabled => "tenant_disabled",
                _ => "key_taken",
            };
            st.register_refused(peer, kind, &e.to_string()).await;
            return Err(match e {
                db::RegisterError::KeyTaken => ApiError::Conflict(e.to_string()),
                _ => ApiError::Unauthorized(e.to_string()),
            });
        }
    };
    std::fs::create_dir_all(st.sftp_root(&tenant)).map_err(ApiError::internal)?;
    st.keys.insert(fp.clone(), tenant.clone(), key);
    db::audit(&st.db, Some(&tenant), "registered", &format!("key {fp} host {hostname:?} from {peer}")).await;
    st.note_key_use(&tenant, &fp, Some(peer), "registration").await;
    tracing::info!(%tenant, key = %fp, "connector registered");
    Ok(Json(RegisterResponse {
        tenant,
        key_fingerprint: fp,
        ssh_addr: st.public_ssh_addr.clone(),
        ssh_host_key_fingerprint: st.identity.ssh_host_key_fingerprint(),
    }))
}

fn check_key_strength(key: &russh::keys::PublicKey) -> Result<(), ApiError> {
    use russh::keys::ssh_key::public::KeyData;
    match key.key_data() {
        KeyData::Ed25519(_) => Ok(()),
        KeyData::Rsa(rsa) => {
            let bits = rsa.n().as_positive_bytes().map(|b| b.len() * 8).unwrap_or(0);
            if bits >= 2048 {
                Ok(())
            } else {
                Err(ApiError::BadRequest(format!("RSA keys must have at least 2048 bits (this one has {bits})")))
            }
        }
        _ => Err(ApiError::BadRequest("only RSA (2048 bits or more) and Ed25519 keys are accepted".into())),
    }
}

/// `POST /v1/keys/rotate`, signed with the current key, body: the new public key. The new key works at once;
/// the old one keeps working until the new one is first used, so no sync fails during a rotation.
async fn rotate_key(
    State(st): St,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Signed { caller: c, body }: Signed<Caller>,
) -> Result<Json<WhoAmI>, ApiError> {
    let req: RotateKey = serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("bad body: {e}")))?;
    let key = ferry_io::keys::parse_public_key(&req.public_key)
        .map_err(|e| ApiError::BadRequest(format!("public_key is not an OpenSSH public key: {e}")))?;
    check_key_strength(&key)?;
    let fp = ferry_io::keys::fingerprint(&key);
    let openssh = ferry_io::keys::public_key_openssh(&key).map_err(ApiError::internal)?;
    match db::add_rotated_key(&st.db, &c.tenant, &c.key_fingerprint, &fp, &openssh).await {
        Ok(()) => {}
        Err(db::RegisterError::Db(e)) => return Err(ApiError::internal(e)),
        Err(e) => return Err(ApiError::Conflict(e.to_string())),
    }
    st.keys.insert(fp.clone(), c.tenant.clone(), key);
    db::audit(&st.db, Some(&c.tenant), "key_rotated", &format!("{} -> {fp} from {peer}", c.key_fingerprint)).await;
    st.note_key_use(&c.tenant, &fp, Some(peer), "rotation").await;
    Ok(Json(WhoAmI { tenant: c.tenant, key_fingerprint: fp, server_time: None, signature_max_age_secs: None }))
}

async fn whoami(State(st): St, Signed { caller: c, .. }: Signed<Caller>) -> Result<Json<WhoAmI>, ApiError> {
    Ok(Json(WhoAmI {
        tenant: c.tenant,
        key_fingerprint: c.key_fingerprint,
        server_time: Some(chrono::Utc::now()),
        signature_max_age_secs: Some(st.cfg.signature_max_age_secs),
    }))
}

#[derive(Deserialize)]
struct ListQuery {
    limit: Option<i64>,
}

async fn list_batches(
    State(st): St,
    Query(q): Query<ListQuery>,
    Signed { caller: c, .. }: Signed<Caller>,
) -> Result<Json<Vec<BatchStatus>>, ApiError> {
    let limit = q.limit.unwrap_or(20).clamp(1, 1000);
    Ok(Json(db::list_batches(&st.db, &c.tenant, limit).await.map_err(ApiError::internal)?))
}

fn parse_batch_id(id: &str) -> Result<BatchId, ApiError> {
    BatchId::parse(id).map_err(|e| ApiError::BadRequest(e.to_string()))
}

async fn get_batch(
    State(st): St,
    Path(id): Path<String>,
    Signed { caller: c, .. }: Signed<Caller>,
) -> axum::response::Response {
    in_batch_span(&c.tenant.clone(), &id.clone(), get_batch_in(st, id, c)).await
}

/// Runs a handler about one batch in a span with its `tenant` and `batch`, its answer (and so the line that logs
/// a refusal) made inside the span.
async fn in_batch_span<T: axum::response::IntoResponse>(
    tenant: &str,
    batch: &str,
    f: impl std::future::Future<Output = Result<T, ApiError>>,
) -> axum::response::Response {
    use tracing::Instrument;
    let span = tracing::info_span!("batch", tenant = %tenant, batch = %batch);
    async move { axum::response::IntoResponse::into_response(f.await) }.instrument(span).await
}

async fn get_batch_in(st: Arc<CommsState>, id: String, c: Caller) -> Result<Json<BatchStatus>, ApiError> {
    let id = parse_batch_id(&id)?;
    db::batch_status(&st.db, &c.tenant, &id)
        .await
        .map_err(ApiError::internal)?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("batch {id} is not known for this connector")))
}

/// `POST /v1/batches/{id}/complete`: the Connector has uploaded every file of the batch under
/// `upload/<id>/`; check they are all there with the announced sizes, take them out of the SFTP root, record
/// the batch and wake the relay. Completing the same batch again returns its current status.
async fn complete_batch(
    State(st): St,
    Path(id): Path<String>,
    Signed { caller: c, body }: Signed<Caller>,
) -> axum::response::Response {
    in_batch_span(&c.tenant.clone(), &id.clone(), complete_batch_in(st, id, c, body)).await
}

async fn complete_batch_in(
    st: Arc<CommsState>,
    id: String,
    c: Caller,
    body: axum::body::Bytes,
) -> Result<Json<BatchStatus>, ApiError> {
    let id = parse_batch_id(&id)?;
    let manifest = Manifest::parse(&body).map_err(|e| ApiError::Unprocessable(e.to_string()))?;
    manifest.check_batch(&id).map_err(|e| ApiError::Unprocessable(e.to_string()))?;
    if let Some(existing) = db::batch_status(&st.db, &c.tenant, &id).await.map_err(ApiError::internal)? {
        return Ok(Json(existing));
    }
    let limits = st.limits.of(&c.tenant);
    let files = manifest.files.len() as u64;
    if files > limits.max_batch_files {
        let msg = st.refuse(&c.tenant, Limit::MaxBatchFiles, &format!("batch {id} has"), files).await;
        return Err(ApiError::Unprocessable(msg));
    }
    let manifest = match st.files.bucket() {
        None => freeze_local(&st, &c, &id, manifest, &limits).await?,
        Some(b) => freeze_in_store(&st, b, &c, &id, manifest, &limits).await?,
    };
    let status = db::insert_batch(&st.db, &c.tenant, &manifest).await.map_err(ApiError::Internal)?;
    db::audit(&st.db, Some(&c.tenant), "batch_completed", &format!("{id} ({} files)", manifest.files.len())).await;
    tracing::info!(tenant = %c.tenant, batch = %id, files = manifest.files.len(), "batch completed");
    st.metrics.uploaded(manifest.files.iter().map(|f| f.compressed_bytes).sum());
    st.relay_wakeup.notify_one();
    Ok(Json(status))
}

/// The batch's files in the local folder: checked, moved out of the SFTP root, measured; the manifest with the
/// measured SHA-256s is written beside them and returned.
async fn freeze_local(
    st: &CommsState,
    c: &Caller,
    id: &BatchId,
    manifest: Manifest,
    limits: &crate::limits::Limits,
) -> Result<Manifest, ApiError> {
    let upload = st.sftp_root(&c.tenant).join("upload").join(id.as_str());
    let dest = st.batch_dir(&c.tenant, id.as_str());
    // A completion that moved the files but failed before recording the batch is finished on retry.
    let have = if dest.exists() { dest.clone() } else { upload.clone() };
    for f in &manifest.files {
        let name = f.compressed_name();
        let size = match std::fs::symlink_metadata(have.join(&name)) {
            Ok(m) if m.is_file() => m.len(),
            _ => {
                return Err(ApiError::Unprocessable(format!(
                    "{name} is missing from upload/{id}/: upload every file of the batch, then complete it"
                )));
            }
        };
        if size != f.compressed_bytes {
            return Err(ApiError::Unprocessable(format!(
                "{name} is {size} bytes at the server but the manifest says {} — the upload is incomplete; upload it again",
                f.compressed_bytes
            )));
        }
    }
    // Freeze first: once the files are out of the SFTP root, writes and size changes through handles opened
    // before fail (ferry-sftp refuses a handle whose file moved); then measure what was frozen.
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).map_err(ApiError::internal)?;
    }
    if !dest.exists() {
        std::fs::rename(&upload, &dest).map_err(ApiError::internal)?;
    }
    let mut manifest = manifest;
    let measured = match measure_batch(&dest, &manifest).await {
        Ok(m) => m,
        Err(why) => {
            // Give the files back so the Connector can upload them again.
            if !upload.exists()
                && let Err(e) = std::fs::rename(&dest, &upload)
            {
                tracing::warn!(tenant = %c.tenant, batch = %id, "cannot give a refused batch back to the SFTP area: {e}");
            }
            return Err(why);
        }
    };
    let bytes: u64 = measured.iter().map(|(n, _)| *n).sum();
    if bytes > limits.max_batch_bytes {
        if !upload.exists() {
            let _ = std::fs::rename(&dest, &upload);
        }
        let msg = st.refuse(&c.tenant, Limit::MaxBatchBytes, &format!("batch {id} is (compressed)"), bytes).await;
        return Err(ApiError::Unprocessable(msg));
    }
    for (f, (_, sha)) in manifest.files.iter_mut().zip(measured) {
        f.compressed_sha256 = Some(sha);
    }
    let body = serde_json::to_vec(&manifest).map_err(ApiError::internal)?;
    std::fs::write(dest.join(ferry_proto::manifest::MANIFEST_NAME), &body).map_err(ApiError::internal)?;
    Ok(manifest)
}

/// [`freeze_local`] in the object store: every file must be a complete object under `upload/<id>/` (an
/// upload still in progress is no object yet); they are moved to `batches/<id>/` (out of the tenant's SFTP
/// reach: an SFTP handle opened before can only ever complete a new object in the upload area), measured by
/// reading them back, and given back on refusal.
async fn freeze_in_store(
    st: &CommsState,
    b: &crate::store::Bucket,
    c: &Caller,
    id: &BatchId,
    manifest: Manifest,
    limits: &crate::limits::Limits,
) -> Result<Manifest, ApiError> {
    use crate::store::{batch_key, sftp_key};
    use object_store::ObjectStoreExt as _;
    let t = c.tenant.as_str();
    let names: Vec<String> = manifest.files.iter().map(|f| f.compressed_name()).collect();
    let up = |n: &str| sftp_key(b, t, &["upload", id.as_str(), n]);
    let frozen = |n: &str| batch_key(b, t, id.as_str(), &[n]);
    for (f, name) in manifest.files.iter().zip(&names) {
        // A completion that moved a file but failed before recording the batch is finished on retry.
        let size = match crate::store::size_of(b, &frozen(name)).await.map_err(ApiError::Internal)? {
            Some(s) => Some(s),
            None => crate::store::size_of(b, &up(name)).await.map_err(ApiError::Internal)?,
        };
        let Some(size) = size else {
            return Err(ApiError::Unprocessable(format!(
                "{name} is missing from upload/{id}/: upload every file of the batch, then complete it"
            )));
        };
        if size != f.compressed_bytes {
            return Err(ApiError::Unprocessable(format!(
                "{name} is {size} bytes at the server but the manifest says {} — the upload is incomplete; upload it again",
                f.compressed_bytes
            )));
        }
    }
    for name in &names {
        if crate::store::size_of(b, &up(name)).await.map_err(ApiError::Internal)?.is_some() {
            crate::store::move_object(b, &up(name), &frozen(name)).await.map_err(ApiError::Internal)?;
        }
    }
    let give_back = || async {
        for name in &names {
            if let Err(e) = crate::store::move_object(b, &frozen(name), &up(name)).await {
                tracing::warn!(tenant = %t, batch = %id, "cannot give a refused batch back to the SFTP area: {e:#}");
            }
        }
    };
    let mut manifest = manifest;
    let mut bytes = 0u64;
    let mut measured = Vec::with_capacity(names.len());
    for (f, name) in manifest.files.iter().zip(&names) {
        let (size, sha) = match crate::store::sha256_of(b, &frozen(name)).await {
            Ok(m) => m,
            Err(e) => {
                give_back().await;
                return Err(ApiError::Unprocessable(format!(
                    "{name} cannot be read at the server ({e:#}); upload it again"
                )));
            }
        };
        if size != f.compressed_bytes || f.compressed_sha256.as_ref().is_some_and(|h| *h != sha) {
            give_back().await;
            return Err(ApiError::Unprocessable(format!(
                "{name} at the server ({size} bytes, SHA-256 {sha}) differs from the manifest ({} bytes, SHA-256 \
                 {}); the file changed or the upload is incomplete: upload it again",
                f.compressed_bytes,
                f.compressed_sha256.as_deref().unwrap_or("not given")
            )));
        }
        bytes += size;
        measured.push(sha);
    }
    if bytes > limits.max_batch_bytes {
        give_back().await;
        let msg = st.refuse(&c.tenant, Limit::MaxBatchBytes, &format!("batch {id} is (compressed)"), bytes).await;
        return Err(ApiError::Unprocessable(msg));
    }
    for (f, sha) in manifest.files.iter_mut().zip(measured) {
        f.compressed_sha256 = Some(sha);
    }
    let body = serde_json::to_vec(&manifest).map_err(ApiError::internal)?;
    let mkey = batch_key(b, t, id.as_str(), &[ferry_proto::manifest::MANIFEST_NAME]);
    b.os.put(&mkey, object_store::PutPayload::from(body))
        .await
        .map_err(|e| ApiError::Internal(anyhow::anyhow!(ferry_sftp::store::describe("write the manifest", &e))))?;
    // the rest of the upload folder (its directory marker)
    if let Err(e) = crate::store::delete_prefix(b, &sftp_key(b, t, &["upload", id.as_str()])).await {
        tracing::warn!(tenant = %t, batch = %id, "cannot clean the upload folder: {e:#}");
    }
    Ok(manifest)
}

/// Size and SHA-256 of every file of a frozen batch in `dir`, checked against the manifest (size always, the
/// SHA-256 when the manifest carries one). Err: the 422 to answer.
async fn measure_batch(dir: &std::path::Path, m: &Manifest) -> Result<Vec<(u64, String)>, ApiError> {
    let (dir, m) = (dir.to_path_buf(), m.clone());
    tokio::task::spawn_blocking(move || {
        let mut out = Vec::with_capacity(m.files.len());
        for f in &m.files {
            let name = f.compressed_name();
            let (size, sha) = ferry_io::digest::file_sha256(&dir.join(&name)).map_err(|e| {
                ApiError::Unprocessable(format!("{name} cannot be read at the server ({e}); upload it again"))
            })?;
            if size != f.compressed_bytes || f.compressed_sha256.as_ref().is_some_and(|h| *h != sha) {
                return Err(ApiError::Unprocessable(format!(
                    "{name} at the server ({size} bytes, SHA-256 {sha}) differs from the manifest ({} bytes, SHA-256 \
                     {}); the file changed or the upload is incomplete: upload it again",
                    f.compressed_bytes,
                    f.compressed_sha256.as_deref().unwrap_or("not given")
                )));
            }
            out.push((size, sha));
        }
        Ok(out)
    })
    .await
    .map_err(ApiError::internal)?
}

/// Longest a `GET /v1/files?wait=N` may wait.
pub const MAX_LONG_POLL_SECS: u64 = 60;

#[derive(Deserialize)]
struct FilesQuery {
    wait: Option<u64>,
}

/// `GET /v1/files?wait=N`: the caller's download list; with `wait`, returns as soon as a file is waiting or
/// after N seconds with an empty list.
async fn list_files(
    State(st): St,
    Query(q): Query<FilesQuery>,
    Signed { caller: c, .. }: Signed<Caller>,
) -> Result<Json<Vec<DownloadFile>>, ApiError> {
    st.metrics.downstream_call("list");
    let wait = Duration::from_secs(q.wait.unwrap_or(0).min(MAX_LONG_POLL_SECS));
    let deadline = tokio::time::Instant::now() + wait;
    let mut changed = st.downloads_changed.subscribe();
    let _waiting = (!wait.is_zero()).then(|| st.metrics.long_poll());
    loop {
        changed.mark_unchanged();
        let files = db::ready_downloads(&st.db, &c.tenant).await.map_err(ApiError::internal)?;
        if !files.is_empty() || tokio::time::Instant::now() >= deadline {
            return Ok(Json(files));
        }
        if tokio::time::timeout_at(deadline, changed.changed()).await.is_err() {
            return Ok(Json(Vec::new()));
        }
    }
}

fn parse_file_id(id: &str) -> Result<FileId, ApiError> {
    FileId::parse(id).map_err(|e| ApiError::BadRequest(e.to_string().replace("batch id", "file id")))
}

/// `POST /v1/files/{id}/ack`: the Connector applied the file. Idempotent.
async fn ack_file(
    State(st): St,
    Path(id): Path<String>,
    Signed { caller: c, body }: Signed<Caller>,
) -> Result<Json<serde_json::Value>, ApiError> {
    st.metrics.downstream_call("ack");
    let id = parse_file_id(&id)?;
    let ack: FileAck = serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("bad ack body: {e}")))?;
    let row = db::download(&st.db, &c.tenant, &id)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::NotFound(format!("file {id} is not on this connector's download list")))?;
    if row.file.sha256 != ack.sha256 {
        return Err(ApiError::Unprocessable(format!(
            "file {id}: the acknowledged sha256 differs from the file's; download it again"
        )));
    }
    if !db::set_download_delivered(&st.db, &c.tenant, &id).await.map_err(ApiError::internal)? {
        return Err(ApiError::Conflict(format!("file {id} is not ready yet")));
    }
    if row.state != FileState::Delivered {
        remove_delivered(&st, &c.tenant, &id).await;
        db::audit(&st.db, Some(&c.tenant), "file_delivered", &format!("{id} {}", row.file.name)).await;
        tracing::info!(tenant = %c.tenant, file = %id, name = %row.file.name, "file delivered");
        st.downstream_wakeup.notify_one();
    }
    Ok(Json(serde_json::json!({ "id": id, "state": "delivered" })))
}

/// `POST /v1/files/ack` ([`FileAcks`], up to [`MAX_FILES_PER_CALL`]): many applied files acknowledged in one
/// call, recorded in one transaction. Idempotent; a file refused (not this caller's, not ready, another SHA-256)
/// is listed with its reason in [`FilesAcked`], the others are delivered.
async fn ack_files(State(st): St, Signed { caller: c, body }: Signed<Caller>) -> Result<Json<FilesAcked>, ApiError> {
    st.metrics.downstream_call("ack");
    let acks: FileAcks =
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("bad ack body: {e}")))?;
    if acks.files.len() > MAX_FILES_PER_CALL {
        return Err(ApiError::TooLarge(format!(
            "{} files in one acknowledgement; send at most {MAX_FILES_PER_CALL} per call",
            acks.files.len()
        )));
    }
    let mut answer = FilesAcked::default();
    let mut rows = Vec::new();
    for a in acks.files {
        let refuse = |error: String| FileRefused { file_id: a.id.clone(), error };
        match db::download(&st.db, &c.tenant, &a.id).await.map_err(ApiError::internal)? {
            None => answer.refused.push(refuse("not on this connector's download list".into())),
            Some(row) if row.file.sha256 != a.sha256 => {
                answer.refused.push(refuse("the acknowledged sha256 differs from the file's; download it again".into()))
            }
            Some(row) => rows.push(row),
        }
    }
    let ids: Vec<FileId> = rows.iter().map(|r| r.file.file_id.clone()).collect();
    let done = db::set_downloads_delivered(&st.db, &c.tenant, &ids).await.map_err(ApiError::internal)?;
    let mut newly = Vec::new();
    let mut remove = Vec::new();
    for (row, ok) in rows.into_iter().zip(done) {
        let id = row.file.file_id.clone();
        if !ok {
            answer.refused.push(FileRefused { file_id: id, error: "not ready yet".into() });
            continue;
        }
        if row.state != FileState::Delivered {
            remove.push(id.clone());
            tracing::info!(tenant = %c.tenant, file = %id, name = %row.file.name, "file delivered");
            newly.push(("file_delivered", format!("{id} {}", row.file.name)));
        }
        answer.delivered.push(id);
    }
    if !newly.is_empty() {
        // One audit commit for the call, not one per file (each is a sync of the Comms database).
        db::audit_many(&st.db, Some(&c.tenant), &newly).await;
        st.downstream_wakeup.notify_one();
    }
    if !remove.is_empty() {
        // The delivered copies are removed after the answer, off the request (a few ms each on a busy disk);
        // the files are `delivered` already, a copy left behind is only disk space.
        let (st, tenant) = (st.clone(), c.tenant.clone());
        tokio::spawn(async move {
            for id in remove {
                remove_delivered(&st, &tenant, &id).await;
            }
        });
    }
    Ok(Json(answer))
}

/// Removes a delivered file's `download/<id>/` folder (local or in the object store); a failure is logged and
/// left to retention.
async fn remove_delivered(st: &CommsState, tenant: &str, id: &FileId) {
    let r = match st.files.bucket() {
        None => std::fs::remove_dir_all(st.sftp_root(tenant).join("download").join(id.as_str())).map_err(Into::into),
        Some(b) => crate::store::delete_prefix(b, &crate::store::sftp_key(b, tenant, &["download", id.as_str()]))
            .await
            .map(|_| ()),
    };
    if let Err(e) = r {
        tracing::warn!(tenant = %tenant, file = %id, "cannot remove the delivered file: {e:#}");
    }
}

/// `POST /v1/files/{id}/error`: the Connector could not apply the file; it will retry. Kept for operators.
async fn file_error(
    State(st): St,
    Path(id): Path<String>,
    Signed { caller: c, body }: Signed<Caller>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = parse_file_id(&id)?;
    let e: FileError = serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("bad body: {e}")))?;
    let msg: String = e.error.chars().filter(|c| !c.is_control()).take(500).collect();
    if !db::note_download_error(&st.db, &c.tenant, &id, &format!("connector: {msg}"))
        .await
        .map_err(ApiError::internal)?
    {
        return Err(ApiError::NotFound(format!("file {id} is not on this connector's download list")));
    }
    tracing::warn!(tenant = %c.tenant, file = %id, "connector could not deliver: {msg}");
    Ok(Json(serde_json::json!({ "id": id, "recorded": true })))
}

/// `POST /v1/app/files` (signed by the App's service key): files are waiting in tenants' outboxes. The body is
/// one [`FileReady`] (answer: `{file_id, state}`, or the refusal as the error) or [`FilesReady`], up to
/// [`MAX_FILES_PER_CALL`] files recorded in one transaction (answer: [`FilesAnnounced`], refused files listed
/// with their reason, the others taken).
async fn app_file_ready(
    State(st): St,
    Signed { caller: app, body }: Signed<AppService>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    st.metrics.downstream_call("announce");
    let value: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("bad body: {e}")))?;
    if value.get("files").is_none() {
        let f: FileReady = serde_json::from_value(value).map_err(|e| ApiError::BadRequest(format!("bad body: {e}")))?;
        check_announced(&st, &f).await?;
        check_placed(&st, &app, &f.tenant, &mut Default::default()).await?;
        if !db::insert_download(&st.db, &f).await.map_err(ApiError::internal)? {
            return Err(ApiError::NotFound(format!("no tenant {:?} on this Comms server", f.tenant)));
        }
        tracing::info!(tenant = %f.tenant, file = %f.file_id, name = %f.name, "file announced by the App");
        st.downstream_wakeup.notify_one();
        return Ok(Json(serde_json::json!({ "file_id": f.file_id, "state": "fetching" })).into_response());
    }
    let batch: FilesReady =
        serde_json::from_value(value).map_err(|e| ApiError::BadRequest(format!("bad body: {e}")))?;
    if batch.files.len() > MAX_FILES_PER_CALL {
        return Err(ApiError::TooLarge(format!(
            "{} files in one announcement; send at most {MAX_FILES_PER_CALL} per call",
            batch.files.len()
        )));
    }
    let mut answer = FilesAnnounced::default();
    let mut take = Vec::with_capacity(batch.files.len());
    let mut placed = Default::default();
    for f in batch.files {
        let checked = match check_announced(&st, &f).await {
            Ok(()) => check_placed(&st, &app, &f.tenant, &mut placed).await,
            Err(e) => Err(e),
        };
        match checked {
            Ok(()) => take.push(f),
            Err(e) => answer.refused.push(FileRefused { file_id: f.file_id, error: refusal_text(e) }),
        }
    }
    let known = db::insert_downloads(&st.db, &take).await.map_err(ApiError::internal)?;
    for (f, known) in take.into_iter().zip(known) {
        if known {
            tracing::info!(tenant = %f.tenant, file = %f.file_id, name = %f.name, "file announced by the App");
            answer.accepted.push(f.file_id);
        } else {
            let error = format!("no tenant {:?} on this Comms server", f.tenant);
            answer.refused.push(FileRefused { file_id: f.file_id, error });
        }
    }
    if !answer.accepted.is_empty() {
        st.downstream_wakeup.notify_one();
    }
    Ok(Json(answer).into_response())
}

/// What a refused file of a batched call is told (the checks refuse with a message, never an internal error).
fn refusal_text(e: ApiError) -> String {
    match e {
        ApiError::BadRequest(m) | ApiError::Unprocessable(m) | ApiError::NotFound(m) => m,
        _ => "refused".into(),
    }
}

/// An App server announces files only for the tenants placed on it (`placed`: the tenants of this call
/// already looked up). The answer is the same for a tenant placed elsewhere and for no tenant at all.
async fn check_placed(
    st: &CommsState,
    app: &AppService,
    tenant: &str,
    placed: &mut std::collections::HashMap<String, bool>,
) -> Result<(), ApiError> {
    let ok = match placed.get(tenant) {
        Some(ok) => *ok,
        None => {
            let on = db::tenant_app(&st.db, tenant).await.map_err(ApiError::internal)?;
            let ok = on.flatten().as_deref() == Some(app.name.as_str());
            placed.insert(tenant.to_string(), ok);
            if !ok {
                tracing::warn!(app = %app.name, %tenant, "announcement refused: the tenant is not placed on this App server");
            }
            ok
        }
    };
    if ok {
        Ok(())
    } else {
        Err(ApiError::NotFound(format!("no tenant {tenant:?} placed on App server {:?}", app.name)))
    }
}

/// The checks of an announced file: names, digest, the tenant's size limit (a refusal audited once an hour).
async fn check_announced(st: &CommsState, f: &FileReady) -> Result<(), ApiError> {
    if !valid_tenant_name(&f.tenant) || !valid_file_name(&f.name) {
        return Err(ApiError::BadRequest("invalid tenant or file name".into()));
    }
    if f.sha256.len() != 64 || !f.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::BadRequest("sha256 must be 64 hex digits".into()));
    }
    let max = st.limits.of(&f.tenant).max_download_file_bytes;
    if f.bytes > max {
        // The App retries its announcements: audit a refused file once an hour, not at every retry.
        let what = format!("downstream file {} ({}) is", f.file_id, f.name);
        let msg = match st.refusals.admit(format!("{}/{}", f.tenant, f.file_id)) {
            Some(_) => st.refuse(&f.tenant, Limit::MaxDownloadFileBytes, &what, f.bytes).await,
            None => Limit::MaxDownloadFileBytes.refusal(&f.tenant, max, &what, f.bytes),
        };
        return Err(ApiError::Unprocessable(msg));
    }
    Ok(())
}

async fn openapi() -> Json<serde_json::Value> {
    Json(serde_json::from_str(OPENAPI).unwrap_or_default())
}

const OPENAPI: &str = include_str!("openapi.json");

#[cfg(test)]
pub(crate) mod tests {
    /// `(path, method)` of every route call (`route` with a path and its method routers) in a router's source.
    pub(crate) fn routes_in(source: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for chunk in source.split(".route(\"").skip(1) {
            let Some((path, rest)) = chunk.split_once('"') else { continue };
            // the methods: up to the end of this route's call (the next line that starts a new call)
            let call: String = rest.lines().take_while(|l| !l.trim_start().starts_with('.')).collect();
            let call = call + rest.lines().next().unwrap_or("");
            for m in ["get", "post", "put", "delete", "patch"] {
                if call.contains(&format!("{m}(")) {
                    out.push((path.to_string(), m.to_string()));
                }
            }
        }
        out
    }

    /// Every route of the router is described with its method, and the document is valid OpenAPI 3.1.
    pub(crate) fn check_doc(doc_text: &str, source: &str, skip: &[&str]) {
        let doc: serde_json::Value = serde_json::from_str(doc_text).expect("valid JSON");
        assert_eq!(doc["openapi"], "3.1.0");
        let spec = oas3::from_json(doc_text).expect("a valid OpenAPI 3.1 document");
        let paths = spec.paths.expect("paths");
        let routes = routes_in(source);
        assert!(routes.len() >= 5, "{routes:?}");
        for (path, method) in routes.iter().filter(|(p, _)| !skip.contains(&p.as_str())) {
            assert!(doc["paths"][path].get(method).is_some(), "{method} {path} is not described");
            assert!(paths.contains_key(path.as_str()));
        }
        for path in doc["paths"].as_object().unwrap().keys() {
            assert!(routes.iter().any(|(p, _)| p == path), "{path} is described but not routed");
        }
    }

    #[test]
    fn openapi_describes_every_route_and_is_valid_3_1() {
        check_doc(super::OPENAPI, include_str!("api.rs"), &[]);
        // the batched downstream bodies are described: announcements of one file or many, acks of many
        let doc: serde_json::Value = serde_json::from_str(super::OPENAPI).unwrap();
        let body =
            |path: &str| doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"].clone();
        let announce = body("/v1/app/files");
        assert_eq!(announce["oneOf"].as_array().map(Vec::len), Some(2), "{announce}");
        assert!(announce["oneOf"][1]["properties"]["files"]["maxItems"].as_u64() == Some(200));
        assert_eq!(ferry_proto::api::MAX_FILES_PER_CALL, 200);
        assert!(body("/v1/files/ack")["properties"]["files"]["items"]["required"].is_array());
    }
}
