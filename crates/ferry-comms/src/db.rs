//! Comms metadata store (SQLite through sqlx; migrations embedded). Every statement binds its values; no SQL is
//! built from strings. Tenants, keys, single-use registration tokens, the batch state machine and an audit trail.

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ferry_proto::api::{BatchState, BatchStatus};
use ferry_proto::batch::BatchId;
use ferry_proto::manifest::Manifest;
use sqlx::{Row, SqlitePool};

pub async fn open(path: &Path) -> anyhow::Result<SqlitePool> {
    let options = ferry_io::sqlite::Options {
        max_connections: 8,
        busy_timeout: Duration::from_secs(10),
        foreign_keys: true,
        create_folder: true,
        ..Default::default()
    };
    let pool = ferry_io::sqlite::open(path, &options)
        .await
        .map_err(|e| anyhow::anyhow!("cannot open the comms database {}: {e}", path.display()))?;
    sqlx::migrate!("./migrations").run(&pool).await?;
    Ok(pool)
}

fn now() -> String {
    Utc::now().to_rfc3339()
}

#[derive(Debug, Clone)]
pub struct KeyRow {
    pub fingerprint: String,
    pub tenant: String,
    pub public_key: String,
}

/// Active keys of active tenants: what may log in and sign.
pub async fn active_keys(pool: &SqlitePool) -> sqlx::Result<Vec<KeyRow>> {
    let rows = sqlx::query(
        "SELECT k.fingerprint, k.tenant, k.public_key FROM keys k JOIN tenants t ON t.name = k.tenant
         WHERE k.status = 'active' AND t.status = 'active'",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|r| KeyRow { fingerprint: r.get(0), tenant: r.get(1), public_key: r.get(2) }).collect())
}

/// Keys retired by a rotation, of tenants still active: their open sessions may finish.
pub async fn retired_keys_of_active_tenants(pool: &SqlitePool) -> sqlx::Result<std::collections::HashSet<String>> {
    let rows = sqlx::query(
        "SELECT k.fingerprint FROM keys k JOIN tenants t ON t.name = k.tenant
         WHERE k.status = 'retired' AND t.status = 'active'",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

pub async fn add_tenant(pool: &SqlitePool, name: &str) -> sqlx::Result<bool> {
    let r = sqlx::query("INSERT INTO tenants(name, status, created_at) VALUES (?, 'active', ?) ON CONFLICT DO NOTHING")
        .bind(name)
        .bind(now())
        .execute(pool)
        .await?;
    Ok(r.rows_affected() == 1)
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct TenantRow {
    pub name: String,
    pub status: String,
    pub created_at: String,
    pub keys: i64,
    pub batches: i64,
    pub last_batch: Option<String>,
}

pub async fn list_tenants(pool: &SqlitePool) -> sqlx::Result<Vec<TenantRow>> {
    let rows = sqlx::query(
        "SELECT t.name, t.status, t.created_at,
                (SELECT COUNT(*) FROM keys k WHERE k.tenant = t.name AND k.status = 'active'),
                (SELECT COUNT(*) FROM batches b WHERE b.tenant = t.name),
                (SELECT MAX(batch_id) FROM batches b WHERE b.tenant = t.name)
         FROM tenants t ORDER BY t.name",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| TenantRow {
            name: r.get(0),
            status: r.get(1),
            created_at: r.get(2),
            keys: r.get(3),
            batches: r.get(4),
            last_batch: r.get(5),
        })
        .collect())
}

pub async fn set_tenant_status(pool: &SqlitePool, name: &str, status: &str) -> sqlx::Result<bool> {
    let r = sqlx::query("UPDATE tenants SET status = ? WHERE name = ?").bind(status).bind(name).execute(pool).await?;
    Ok(r.rows_affected() == 1)
}

pub async fn tenant_exists(pool: &SqlitePool, name: &str) -> sqlx::Result<bool> {
    Ok(sqlx::query("SELECT 1 FROM tenants WHERE name = ?").bind(name).fetch_optional(pool).await?.is_some())
}

/// Changes with every change to tenants, keys or limits (by any process): see migration 0005.
pub async fn access_version(pool: &SqlitePool) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT v FROM access_version WHERE id = 1").fetch_one(pool).await
}

/// Every per-tenant limit override: (tenant, limit name, value).
pub async fn all_tenant_limits(pool: &SqlitePool) -> sqlx::Result<Vec<(String, String, i64)>> {
    let rows = sqlx::query("SELECT tenant, name, value FROM tenant_limits").fetch_all(pool).await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
}

/// Set (Some) or remove (None: back to the default) one limit override of a tenant.
pub async fn set_tenant_limit(pool: &SqlitePool, tenant: &str, name: &str, value: Option<u64>) -> sqlx::Result<()> {
    match value {
        Some(v) => {
            sqlx::query(
                "INSERT INTO tenant_limits(tenant, name, value) VALUES (?, ?, ?)
                 ON CONFLICT(tenant, name) DO UPDATE SET value = excluded.value",
            )
            .bind(tenant)
            .bind(name)
            .bind(i64::try_from(v).unwrap_or(i64::MAX))
            .execute(pool)
            .await?;
        }
        None => {
            sqlx::query("DELETE FROM tenant_limits WHERE tenant = ? AND name = ?")
                .bind(tenant)
                .bind(name)
                .execute(pool)
                .await?;
        }
    }
    Ok(())
}

/// Bytes uploaded per tenant on `day` (`YYYY-MM-DD`).
pub async fn upload_usage_on(pool: &SqlitePool, day: &str) -> sqlx::Result<Vec<(String, i64)>> {
    let rows = sqlx::query("SELECT tenant, bytes FROM upload_usage WHERE day = ?").bind(day).fetch_all(pool).await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

pub async fn add_upload_usage(pool: &SqlitePool, tenant: &str, day: &str, bytes: u64) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO upload_usage(tenant, day, bytes) VALUES (?, ?, ?)
         ON CONFLICT(tenant, day) DO UPDATE SET bytes = bytes + excluded.bytes",
    )
    .bind(tenant)
    .bind(day)
    .bind(i64::try_from(bytes).unwrap_or(i64::MAX))
    .execute(pool)
    .await?;
    Ok(())
}

/// Remember that key `fp` was used from `address`. Returns whether the address is new for this key, and
/// whether the key had been seen from any address before.
pub async fn note_key_address(pool: &SqlitePool, fp: &str, address: &str) -> sqlx::Result<(bool, bool)> {
    let seen_before =
        sqlx::query("SELECT 1 FROM key_addresses WHERE fingerprint = ? LIMIT 1").bind(fp).fetch_optional(pool).await?;
    let r = sqlx::query(
        "INSERT INTO key_addresses(fingerprint, address, first_seen) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
    )
    .bind(fp)
    .bind(address)
    .bind(now())
    .execute(pool)
    .await?;
    Ok((r.rows_affected() == 1, seen_before.is_some()))
}

pub async fn add_token(pool: &SqlitePool, secret_hash: &str, tenant: &str, expires: DateTime<Utc>) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO tokens(secret_hash, tenant, expires_at) VALUES (?, ?, ?)")
        .bind(secret_hash)
        .bind(tenant)
        .bind(expires.to_rfc3339())
        .execute(pool)
        .await?;
    Ok(())
}

/// Add `new_key` for the tenant of `old_fp`, marked as replacing it. The old key stays valid until the new
/// one is first used ([`retire_replaced`]).
pub async fn add_rotated_key(
    pool: &SqlitePool,
    tenant: &str,
    old_fp: &str,
    new_fp: &str,
    new_key: &str,
) -> Result<(), RegisterError> {
    let taken = sqlx::query("SELECT 1 FROM keys WHERE fingerprint = ?").bind(new_fp).fetch_optional(pool).await?;
    if taken.is_some() {
        return Err(RegisterError::KeyTaken);
    }
    sqlx::query(
        "INSERT INTO keys(fingerprint, tenant, public_key, hostname, status, created_at, replaces)
         SELECT ?, tenant, ?, hostname, 'active', ?, fingerprint FROM keys WHERE fingerprint = ? AND tenant = ?",
    )
    .bind(new_fp)
    .bind(new_key)
    .bind(now())
    .bind(old_fp)
    .bind(tenant)
    .execute(pool)
    .await?;
    Ok(())
}

/// `fp` was just used: retire the key it replaced, if that one is still active. Returns the retired key.
pub async fn retire_replaced(pool: &SqlitePool, fp: &str) -> sqlx::Result<Option<String>> {
    let row = sqlx::query(
        "SELECT o.fingerprint FROM keys n JOIN keys o ON o.fingerprint = n.replaces
         WHERE n.fingerprint = ? AND o.status = 'active'",
    )
    .bind(fp)
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let old: String = row.get(0);
    sqlx::query("UPDATE keys SET status = 'retired' WHERE fingerprint = ?").bind(&old).execute(pool).await?;
    Ok(Some(old))
}

/// Revoke a tenant's key at once. Returns false if the tenant has no such active key.
pub async fn revoke_key(pool: &SqlitePool, tenant: &str, fp: &str) -> sqlx::Result<bool> {
    let r =
        sqlx::query("UPDATE keys SET status = 'revoked' WHERE tenant = ? AND fingerprint = ? AND status = 'active'")
            .bind(tenant)
            .bind(fp)
            .execute(pool)
            .await?;
    Ok(r.rows_affected() == 1)
}

/// A tenant's keys: (fingerprint, status, created_at, hostname).
pub async fn tenant_keys(pool: &SqlitePool, tenant: &str) -> sqlx::Result<Vec<(String, String, String, String)>> {
    let rows =
        sqlx::query("SELECT fingerprint, status, created_at, hostname FROM keys WHERE tenant = ? ORDER BY created_at")
            .bind(tenant)
            .fetch_all(pool)
            .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))).collect())
}

/// Why a registration was refused.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error(
        "registration token is not known here: ask the operator for a new one (`ferry comms tenant add` or `tenant token`)"
    )]
    UnknownToken,
    #[error("registration token was already used: each token registers one connector; ask the operator for a new one")]
    UsedToken,
    #[error("registration token expired: ask the operator for a new one")]
    ExpiredToken,
    #[error("tenant is disabled: contact the operator")]
    TenantDisabled,
    #[error("this public key is already registered: generate a new key (`ferry connector init --force-key`)")]
    KeyTaken,
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Consume a token and store the key for the token's tenant, atomically. Returns the tenant.
pub async fn register_key(
    pool: &SqlitePool,
    secret_hash: &str,
    fingerprint: &str,
    public_key: &str,
    hostname: &str,
) -> Result<String, RegisterError> {
    let mut tx = pool.begin().await?;
    let row = sqlx::query(
        "SELECT t.tenant, t.expires_at, t.used_at, n.status FROM tokens t JOIN tenants n ON n.name = t.tenant
         WHERE t.secret_hash = ?",
    )
    .bind(secret_hash)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(RegisterError::UnknownToken)?;
    let tenant: String = row.get(0);
    let expires: String = row.get(1);
    let used: Option<String> = row.get(2);
    let status: String = row.get(3);
    if used.is_some() {
        return Err(RegisterError::UsedToken);
    }
    let expires = DateTime::parse_from_rfc3339(&expires).map(|d| d.with_timezone(&Utc)).unwrap_or_default();
    if expires <= Utc::now() {
        return Err(RegisterError::ExpiredToken);
    }
    if status != "active" {
        return Err(RegisterError::TenantDisabled);
    }
    let taken =
        sqlx::query("SELECT 1 FROM keys WHERE fingerprint = ?").bind(fingerprint).fetch_optional(&mut *tx).await?;
    if taken.is_some() {
        return Err(RegisterError::KeyTaken);
    }
    let used = sqlx::query("UPDATE tokens SET used_at = ? WHERE secret_hash = ? AND used_at IS NULL")
        .bind(now())
        .bind(secret_hash)
        .execute(&mut *tx)
        .await?;
    if used.rows_affected() != 1 {
        return Err(RegisterError::UsedToken);
    }
    sqlx::query("INSERT INTO keys(fingerprint, tenant, public_key, hostname, status, created_at) VALUES (?, ?, ?, ?, 'active', ?)")
        .bind(fingerprint)
        .bind(&tenant)
        .bind(public_key)
        .bind(hostname)
        .bind(now())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(tenant)
}

/// Append a security-relevant event to the audit log. Each entry's hash covers the previous entry's hash, so
/// an edited, inserted or removed entry breaks the chain (`ferry comms audit verify`).
pub async fn audit(pool: &SqlitePool, tenant: Option<&str>, event: &str, detail: &str) {
    if let Err(e) = append_audit(pool, tenant, event, detail).await {
        tracing::error!(event, "cannot write the audit log: {e}");
    }
}

fn audit_hash(prev: &str, id: i64, at: &str, tenant: Option<&str>, event: &str, detail: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for part in [prev, &id.to_string(), at, tenant.unwrap_or(""), event, detail] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    hex::encode(h.finalize())
}

async fn append_audit(pool: &SqlitePool, tenant: Option<&str>, event: &str, detail: &str) -> sqlx::Result<()> {
    let mut conn = pool.acquire().await?;
    // IMMEDIATE: two processes appending at once must not fork the chain.
    sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
    let r: sqlx::Result<()> = async {
        let last =
            sqlx::query("SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1").fetch_optional(&mut *conn).await?;
        let (id, prev) = match last {
            Some(r) => (r.get::<i64, _>(0) + 1, r.get::<String, _>(1)),
            None => (1, String::new()),
        };
        let at = now();
        let hash = audit_hash(&prev, id, &at, tenant, event, detail);
        sqlx::query("INSERT INTO audit(id, at, tenant, event, detail, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?)")
            .bind(id)
            .bind(&at)
            .bind(tenant)
            .bind(event)
            .bind(detail)
            .bind(&prev)
            .bind(&hash)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }
    .await;
    match r {
        Ok(()) => sqlx::query("COMMIT").execute(&mut *conn).await.map(|_| ()),
        Err(e) => {
            let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
            Err(e)
        }
    }
}

/// The latest audit entries: (id, at, tenant, event, detail), newest first.
pub async fn recent_audit(
    pool: &SqlitePool,
    limit: i64,
) -> sqlx::Result<Vec<(i64, String, Option<String>, String, String)>> {
    let rows = sqlx::query("SELECT id, at, tenant, event, detail FROM audit ORDER BY id DESC LIMIT ?")
        .bind(limit)
        .fetch_all(pool)
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4))).collect())
}

/// Walk the audit log and check the chain. Returns the number of entries, or the first broken one.
pub async fn verify_audit(pool: &SqlitePool) -> anyhow::Result<Result<u64, String>> {
    let rows = sqlx::query("SELECT id, at, tenant, event, detail, prev_hash, hash FROM audit ORDER BY id")
        .fetch_all(pool)
        .await?;
    let mut prev = String::new();
    for (expected_id, r) in (1i64..).zip(rows.iter()) {
        let id: i64 = r.get(0);
        let tenant: Option<String> = r.get(2);
        let (at, event, detail, prev_hash, hash): (String, String, String, String, String) =
            (r.get(1), r.get(3), r.get(4), r.get(5), r.get(6));
        if id != expected_id {
            return Ok(Err(format!("entry {expected_id} is missing (next entry is {id})")));
        }
        if prev_hash != prev {
            return Ok(Err(format!("entry {id} does not follow entry {}: an entry was removed or replaced", id - 1)));
        }
        if audit_hash(&prev, id, &at, tenant.as_deref(), &event, &detail) != hash {
            return Ok(Err(format!("entry {id} ({event}) was edited: its hash does not match its content")));
        }
        prev = hash;
    }
    Ok(Ok(rows.len() as u64))
}

/// A `batches` row the database holds but this build cannot read: an error, never a row silently skipped.
#[derive(Debug, thiserror::Error)]
#[error("the comms database holds an unreadable batch record {batch:?}: {what}")]
pub struct CorruptBatch {
    pub batch: String,
    pub what: String,
}

/// A batch state as stored, or [`CorruptBatch`] for one this build does not know.
fn parse_state(batch: &str, state: &str) -> Result<BatchState, CorruptBatch> {
    BatchState::parse(state).ok_or_else(|| CorruptBatch {
        batch: batch.chars().take(64).collect(),
        what: format!("unknown state {state:?}"),
    })
}

fn status_from_row(r: &sqlx::sqlite::SqliteRow) -> anyhow::Result<BatchStatus> {
    let id: String = r.try_get("batch_id")?;
    let corrupt = |what: String| CorruptBatch { batch: id.chars().take(64).collect(), what };
    let state: String = r.try_get("state")?;
    let updated: String = r.try_get("updated_at")?;
    Ok(BatchStatus {
        batch_id: BatchId::parse(&id).map_err(|e| corrupt(e.to_string()))?,
        state: parse_state(&id, &state)?,
        detail: r.try_get("detail")?,
        files: r.try_get::<i64, _>("files")? as u32,
        rows: r.try_get::<i64, _>("rows")? as u64,
        updated_at: DateTime::parse_from_rfc3339(&updated)
            .map(|d| d.with_timezone(&Utc))
            .map_err(|e| corrupt(format!("updated_at {updated:?}: {e}")))?,
    })
}

/// Record a completed batch; a second completion of the same id changes nothing. Returns the current status.
pub async fn insert_batch(pool: &SqlitePool, tenant: &str, m: &Manifest) -> anyhow::Result<BatchStatus> {
    let rows: u64 = m.total_rows();
    sqlx::query(
        "INSERT INTO batches(tenant, batch_id, state, manifest, files, rows, created_at, updated_at)
         VALUES (?, ?, 'uploaded', ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
    )
    .bind(tenant)
    .bind(m.batch_id.as_str())
    .bind(serde_json::to_string(m)?)
    .bind(m.files.len() as i64)
    .bind(rows as i64)
    .bind(now())
    .bind(now())
    .execute(pool)
    .await?;
    batch_status(pool, tenant, &m.batch_id).await?.ok_or_else(|| anyhow::anyhow!("batch vanished after insert"))
}

pub async fn batch_status(pool: &SqlitePool, tenant: &str, id: &BatchId) -> anyhow::Result<Option<BatchStatus>> {
    let row = sqlx::query("SELECT * FROM batches WHERE tenant = ? AND batch_id = ?")
        .bind(tenant)
        .bind(id.as_str())
        .fetch_optional(pool)
        .await?;
    row.as_ref().map(status_from_row).transpose()
}

pub async fn list_batches(pool: &SqlitePool, tenant: &str, limit: i64) -> anyhow::Result<Vec<BatchStatus>> {
    let rows = sqlx::query("SELECT * FROM batches WHERE tenant = ? ORDER BY batch_id DESC LIMIT ?")
        .bind(tenant)
        .bind(limit)
        .fetch_all(pool)
        .await?;
    rows.iter().map(status_from_row).collect()
}

/// A batch the relay still has to move: (tenant, manifest, state).
pub struct PendingBatch {
    pub tenant: String,
    pub manifest: Manifest,
    pub state: BatchState,
    pub attempts: i64,
}

pub async fn pending_batches(pool: &SqlitePool) -> anyhow::Result<Vec<PendingBatch>> {
    let rows = sqlx::query(
        "SELECT tenant, manifest, state, attempts FROM batches WHERE state IN ('uploaded', 'relayed')
         ORDER BY batch_id LIMIT 100",
    )
    .fetch_all(pool)
    .await?;
    let mut out = Vec::new();
    for r in rows {
        let manifest: String = r.try_get(1)?;
        let state: String = r.try_get(2)?;
        let manifest: Manifest = serde_json::from_str(&manifest)?;
        let state = parse_state(manifest.batch_id.as_str(), &state)?;
        out.push(PendingBatch { tenant: r.try_get(0)?, manifest, state, attempts: r.try_get(3)? });
    }
    Ok(out)
}

pub async fn set_batch_state(
    pool: &SqlitePool,
    tenant: &str,
    id: &BatchId,
    state: BatchState,
    detail: Option<&str>,
) -> sqlx::Result<()> {
    // the end of each stage is kept for the console's timings: relayed_at, judged_at (imported or rejected)
    let at = now();
    let relayed = (state == BatchState::Relayed).then_some(at.as_str());
    let judged = matches!(state, BatchState::Imported | BatchState::Rejected).then_some(at.as_str());
    sqlx::query(
        "UPDATE batches SET state = ?, detail = ?, updated_at = ?, relayed_at = COALESCE(?, relayed_at),
         judged_at = COALESCE(?, judged_at) WHERE tenant = ? AND batch_id = ?",
    )
    .bind(state.as_str())
    .bind(detail)
    .bind(&at)
    .bind(relayed)
    .bind(judged)
    .bind(tenant)
    .bind(id.as_str())
    .execute(pool)
    .await?;
    Ok(())
}

/// A relay attempt failed: keep the state, note why, count the attempt.
pub async fn note_batch_failure(pool: &SqlitePool, tenant: &str, id: &BatchId, detail: &str) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE batches SET detail = ?, attempts = attempts + 1, updated_at = ? WHERE tenant = ? AND batch_id = ?",
    )
    .bind(detail)
    .bind(now())
    .bind(tenant)
    .bind(id.as_str())
    .execute(pool)
    .await?;
    Ok(())
}

// ---- downstream -------------------------------------------------------------------------------------------

use ferry_proto::api::{DownloadFile, FileId, FileReady, FileState};

/// Record a file the App announced; announcing it again changes nothing. Returns false if the tenant is unknown.
pub async fn insert_download(pool: &SqlitePool, f: &FileReady) -> sqlx::Result<bool> {
    let known = sqlx::query("SELECT 1 FROM tenants WHERE name = ?").bind(&f.tenant).fetch_optional(pool).await?;
    if known.is_none() {
        return Ok(false);
    }
    sqlx::query(
        "INSERT INTO downloads(tenant, file_id, name, state, bytes, md5, sha256, created_at)
         VALUES (?, ?, ?, 'fetching', ?, ?, ?, ?) ON CONFLICT DO NOTHING",
    )
    .bind(&f.tenant)
    .bind(f.file_id.as_str())
    .bind(&f.name)
    .bind(f.bytes as i64)
    .bind(&f.md5)
    .bind(&f.sha256)
    .bind(now())
    .execute(pool)
    .await?;
    Ok(true)
}

/// [`insert_download`] for many files in one transaction (one commit, not one per file). Returns, per file,
/// whether its tenant is known.
pub async fn insert_downloads(pool: &SqlitePool, files: &[FileReady]) -> sqlx::Result<Vec<bool>> {
    let mut tx = pool.begin().await?;
    let mut out = Vec::with_capacity(files.len());
    let at = now();
    for f in files {
        let known =
            sqlx::query("SELECT 1 FROM tenants WHERE name = ?").bind(&f.tenant).fetch_optional(&mut *tx).await?;
        if known.is_some() {
            sqlx::query(
                "INSERT INTO downloads(tenant, file_id, name, state, bytes, md5, sha256, created_at)
                 VALUES (?, ?, ?, 'fetching', ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            )
            .bind(&f.tenant)
            .bind(f.file_id.as_str())
            .bind(&f.name)
            .bind(f.bytes as i64)
            .bind(&f.md5)
            .bind(&f.sha256)
            .bind(&at)
            .execute(&mut *tx)
            .await?;
        }
        out.push(known.is_some());
    }
    tx.commit().await?;
    Ok(out)
}

/// [`set_download_ready`] for many files of a tenant in one transaction.
pub async fn set_downloads_ready(pool: &SqlitePool, tenant: &str, files: &[(FileId, u64)]) -> sqlx::Result<()> {
    let mut tx = pool.begin().await?;
    let at = now();
    for (id, compressed) in files {
        sqlx::query(
            "UPDATE downloads SET state = 'relayed', compressed_bytes = ?, ready_at = ?, last_error = NULL
             WHERE tenant = ? AND file_id = ? AND state = 'fetching'",
        )
        .bind(*compressed as i64)
        .bind(&at)
        .bind(tenant)
        .bind(id.as_str())
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}

/// [`set_download_delivered`] for many files of a tenant in one transaction; per file, whether it is delivered.
pub async fn set_downloads_delivered(pool: &SqlitePool, tenant: &str, ids: &[FileId]) -> sqlx::Result<Vec<bool>> {
    let mut tx = pool.begin().await?;
    let at = now();
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let r = sqlx::query(
            "UPDATE downloads SET state = 'delivered', delivered_at = COALESCE(delivered_at, ?), last_error = NULL
             WHERE tenant = ? AND file_id = ? AND state IN ('relayed', 'delivered')",
        )
        .bind(&at)
        .bind(tenant)
        .bind(id.as_str())
        .execute(&mut *tx)
        .await?;
        out.push(r.rows_affected() == 1);
    }
    tx.commit().await?;
    Ok(out)
}

/// [`set_app_notified`] for many files of a tenant in one transaction.
pub async fn set_apps_notified(pool: &SqlitePool, tenant: &str, files: &[(FileId, FileState)]) -> sqlx::Result<()> {
    let mut tx = pool.begin().await?;
    for (id, state) in files {
        sqlx::query("UPDATE downloads SET app_notified = ? WHERE tenant = ? AND file_id = ?")
            .bind(state.as_str())
            .bind(tenant)
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await
}

/// A download row, as the workers need it.
#[derive(Debug, Clone)]
pub struct DownloadRow {
    pub tenant: String,
    pub file: FileReady,
    pub state: FileState,
    pub compressed_bytes: u64,
    pub attempts: i64,
    pub app_notified: String,
    pub created_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
}

fn parse_time(s: Option<String>) -> Option<DateTime<Utc>> {
    s.and_then(|s| DateTime::parse_from_rfc3339(&s).ok()).map(|d| d.with_timezone(&Utc))
}

fn download_row(r: &sqlx::sqlite::SqliteRow) -> Option<DownloadRow> {
    let id: String = r.get("file_id");
    let state: String = r.get("state");
    let tenant: String = r.get("tenant");
    Some(DownloadRow {
        file: FileReady {
            tenant: tenant.clone(),
            file_id: FileId::parse(&id).ok()?,
            name: r.get("name"),
            bytes: r.get::<i64, _>("bytes") as u64,
            md5: r.get("md5"),
            sha256: r.get("sha256"),
        },
        tenant,
        state: FileState::parse(&state)?,
        compressed_bytes: r.get::<i64, _>("compressed_bytes") as u64,
        attempts: r.get("attempts"),
        app_notified: r.get("app_notified"),
        created_at: parse_time(r.get("created_at")).unwrap_or_default(),
        delivered_at: parse_time(r.get("delivered_at")),
    })
}

/// Files still to fetch from the App, and files whose progress the App has not heard of yet.
pub async fn downloads_needing_work(pool: &SqlitePool) -> sqlx::Result<Vec<DownloadRow>> {
    let rows = sqlx::query(
        "SELECT * FROM downloads WHERE state = 'fetching' OR app_notified != state ORDER BY file_id LIMIT 200",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.iter().filter_map(download_row).collect())
}

pub async fn download(pool: &SqlitePool, tenant: &str, id: &FileId) -> sqlx::Result<Option<DownloadRow>> {
    let row = sqlx::query("SELECT * FROM downloads WHERE tenant = ? AND file_id = ?")
        .bind(tenant)
        .bind(id.as_str())
        .fetch_optional(pool)
        .await?;
    Ok(row.as_ref().and_then(download_row))
}

/// The tenant's download list: files ready and not yet acknowledged, oldest first.
pub async fn ready_downloads(pool: &SqlitePool, tenant: &str) -> sqlx::Result<Vec<DownloadFile>> {
    let rows = sqlx::query("SELECT * FROM downloads WHERE tenant = ? AND state = 'relayed' ORDER BY file_id LIMIT 100")
        .bind(tenant)
        .fetch_all(pool)
        .await?;
    Ok(rows
        .iter()
        .filter_map(download_row)
        .map(|d| DownloadFile {
            path: download_path(&d.file.file_id, &d.file.name),
            id: d.file.file_id,
            name: d.file.name,
            bytes: d.file.bytes,
            md5: d.file.md5,
            sha256: d.file.sha256,
            compressed_bytes: d.compressed_bytes,
            created_at: d.created_at,
        })
        .collect())
}

/// Where a ready file sits in the tenant's SFTP root.
pub fn download_path(id: &FileId, name: &str) -> String {
    format!("/download/{id}/{name}.bz2")
}

pub async fn set_download_ready(pool: &SqlitePool, tenant: &str, id: &FileId, compressed: u64) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE downloads SET state = 'relayed', compressed_bytes = ?, ready_at = ?, last_error = NULL
         WHERE tenant = ? AND file_id = ? AND state = 'fetching'",
    )
    .bind(compressed as i64)
    .bind(now())
    .bind(tenant)
    .bind(id.as_str())
    .execute(pool)
    .await?;
    Ok(())
}

/// Mark delivered (idempotent). Returns false if the file is not this tenant's or not yet ready.
/// Whether downstream file `id` of `tenant` was delivered (acknowledged by the Connector).
pub async fn download_delivered(pool: &SqlitePool, tenant: &str, id: &str) -> sqlx::Result<bool> {
    let n: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM downloads WHERE tenant = ? AND file_id = ? AND state = 'delivered'")
            .bind(tenant)
            .bind(id)
            .fetch_one(pool)
            .await?;
    Ok(n > 0)
}

pub async fn set_download_delivered(pool: &SqlitePool, tenant: &str, id: &FileId) -> sqlx::Result<bool> {
    let r = sqlx::query(
        "UPDATE downloads SET state = 'delivered', delivered_at = COALESCE(delivered_at, ?), last_error = NULL
         WHERE tenant = ? AND file_id = ? AND state IN ('relayed', 'delivered')",
    )
    .bind(now())
    .bind(tenant)
    .bind(id.as_str())
    .execute(pool)
    .await?;
    Ok(r.rows_affected() == 1)
}

pub async fn note_download_error(pool: &SqlitePool, tenant: &str, id: &FileId, error: &str) -> sqlx::Result<bool> {
    let r =
        sqlx::query("UPDATE downloads SET last_error = ?, attempts = attempts + 1 WHERE tenant = ? AND file_id = ?")
            .bind(error)
            .bind(tenant)
            .bind(id.as_str())
            .execute(pool)
            .await?;
    Ok(r.rows_affected() == 1)
}

pub async fn set_app_notified(pool: &SqlitePool, tenant: &str, id: &FileId, state: FileState) -> sqlx::Result<()> {
    sqlx::query("UPDATE downloads SET app_notified = ? WHERE tenant = ? AND file_id = ?")
        .bind(state.as_str())
        .bind(tenant)
        .bind(id.as_str())
        .execute(pool)
        .await?;
    Ok(())
}

/// Last error of a file (operators' view).
pub async fn download_error(pool: &SqlitePool, tenant: &str, id: &FileId) -> sqlx::Result<Option<String>> {
    let row = sqlx::query("SELECT last_error FROM downloads WHERE tenant = ? AND file_id = ?")
        .bind(tenant)
        .bind(id.as_str())
        .fetch_optional(pool)
        .await?;
    Ok(row.and_then(|r| r.get(0)))
}

/// A tenant's downstream files, newest first: (file id, name, state, attempts, created, last error).
pub async fn tenant_downloads(
    pool: &SqlitePool,
    tenant: &str,
    limit: i64,
) -> sqlx::Result<Vec<(String, String, String, i64, String, Option<String>)>> {
    let rows = sqlx::query(
        "SELECT file_id, name, state, attempts, created_at, last_error FROM downloads WHERE tenant = ?
         ORDER BY file_id DESC LIMIT ?",
    )
    .bind(tenant)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5))).collect())
}

// ---- operators' view (the console) -------------------------------------------------------------------------

/// Key `fp` was used just now (written at most once a minute per key by the caller).
pub async fn touch_key(pool: &SqlitePool, fp: &str) -> sqlx::Result<()> {
    sqlx::query("UPDATE keys SET last_used_at = ? WHERE fingerprint = ?").bind(now()).bind(fp).execute(pool).await?;
    Ok(())
}

/// Each tenant's last contact: the latest use of any of its keys (SSH login or signed call), to the minute.
pub async fn last_contacts(pool: &SqlitePool) -> sqlx::Result<Vec<(String, DateTime<Utc>)>> {
    let rows = sqlx::query("SELECT tenant, MAX(last_used_at) FROM keys WHERE last_used_at IS NOT NULL GROUP BY tenant")
        .fetch_all(pool)
        .await?;
    Ok(rows.iter().filter_map(|r| Some((r.get(0), parse_time(r.get(1))?))).collect())
}

/// A batch as operators see it: state, size, and when each stage ended.
#[derive(Debug, Clone)]
pub struct BatchDetail {
    pub tenant: String,
    pub batch_id: String,
    pub state: String,
    /// The rejection reason, or why the last relay attempt failed.
    pub detail: Option<String>,
    pub files: i64,
    pub rows: i64,
    pub attempts: i64,
    /// Sum of the compressed files (from the manifest).
    pub compressed_bytes: u64,
    /// The version of the Connector that sent it (from the manifest).
    pub connector_version: String,
    pub extract_started: Option<DateTime<Utc>>,
    pub extract_finished: Option<DateTime<Utc>>,
    /// Completed at this server (the upload ended).
    pub completed_at: Option<DateTime<Utc>>,
    pub relayed_at: Option<DateTime<Utc>>,
    pub judged_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
}

fn batch_detail(r: &sqlx::sqlite::SqliteRow) -> sqlx::Result<BatchDetail> {
    let manifest: String = r.try_get("manifest")?;
    // lenient: an odd manifest shows blanks, never an error page
    let m: serde_json::Value = serde_json::from_str(&manifest).unwrap_or_default();
    let time = |k: &str| m.get(k).and_then(|v| v.as_str()).map(str::to_string);
    let compressed_bytes = m
        .get("files")
        .and_then(|f| f.as_array())
        .map(|f| f.iter().filter_map(|f| f.get("compressed_bytes").and_then(|b| b.as_u64())).sum())
        .unwrap_or(0);
    Ok(BatchDetail {
        tenant: r.try_get("tenant")?,
        batch_id: r.try_get("batch_id")?,
        state: r.try_get("state")?,
        detail: r.try_get("detail")?,
        files: r.try_get("files")?,
        rows: r.try_get("rows")?,
        attempts: r.try_get("attempts")?,
        compressed_bytes,
        connector_version: m.get("connector_version").and_then(|v| v.as_str()).unwrap_or("").chars().take(64).collect(),
        extract_started: parse_time(time("extract_started")),
        extract_finished: parse_time(time("extract_finished")),
        completed_at: parse_time(r.try_get("created_at")?),
        relayed_at: parse_time(r.try_get("relayed_at")?),
        judged_at: parse_time(r.try_get("judged_at")?),
        updated_at: parse_time(r.try_get("updated_at")?),
    })
}

/// The latest batch of every tenant that has one.
pub async fn last_batches(pool: &SqlitePool) -> sqlx::Result<Vec<BatchDetail>> {
    let rows = sqlx::query(
        "SELECT * FROM batches b WHERE b.batch_id = (SELECT MAX(batch_id) FROM batches WHERE tenant = b.tenant)",
    )
    .fetch_all(pool)
    .await?;
    rows.iter().map(batch_detail).collect()
}

/// A tenant's batches, newest first.
pub async fn batch_details(pool: &SqlitePool, tenant: &str, limit: i64) -> sqlx::Result<Vec<BatchDetail>> {
    let rows = sqlx::query("SELECT * FROM batches WHERE tenant = ? ORDER BY batch_id DESC LIMIT ?")
        .bind(tenant)
        .bind(limit)
        .fetch_all(pool)
        .await?;
    rows.iter().map(batch_detail).collect()
}
