//! Comms metadata store: SQLite (the default, one server) or PostgreSQL (shared by replicas), through sqlx with
//! migrations embedded per engine (`migrations/sqlite`, `migrations/postgres`, same numbering). Every statement is
//! written once, in SQL both engines accept (`$1` parameters, `ON CONFLICT`, `RETURNING`), and runs on either pool
//! through [`on!`]; every statement binds its values; no SQL is built from strings. Tenants, keys, single-use
//! registration tokens, the batch state machine and an audit trail.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::bail;
use chrono::{DateTime, Utc};
use ferry_proto::api::{BatchState, BatchStatus};
use ferry_proto::batch::BatchId;
use ferry_proto::manifest::Manifest;
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Row, SqlitePool};

/// The metadata database: one pool of either engine. Cheap to clone.
#[derive(Debug, Clone)]
pub enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Run `$body` with `$p` bound to the pool of whichever engine `$db` is (the body is compiled once per engine,
/// written once).
#[macro_export]
macro_rules! db_on {
    ($db:expr, $p:ident => $body:block) => {
        match $db {
            $crate::db::Db::Sqlite($p) => $body,
            $crate::db::Db::Postgres($p) => $body,
        }
    };
}
pub use crate::db_on as on;

/// How a transaction that will write begins. SQLite: `BEGIN IMMEDIATE`, which takes the write lock at once
/// (waiting up to the busy timeout); a plain `BEGIN` that reads first and writes later fails at once with
/// SQLITE_BUSY when another connection committed in between (the snapshot cannot be upgraded), which callers
/// saw as an internal error. PostgreSQL: a plain `BEGIN`.
pub trait WriteTx: sqlx::Database {
    const BEGIN: &'static str;
}
impl WriteTx for sqlx::Sqlite {
    const BEGIN: &'static str = "BEGIN IMMEDIATE";
}
impl WriteTx for sqlx::Postgres {
    const BEGIN: &'static str = "BEGIN";
}

/// A transaction that will write ([`WriteTx`]).
pub async fn begin_write<D: WriteTx>(pool: &sqlx::Pool<D>) -> sqlx::Result<sqlx::Transaction<'static, D>> {
    pool.begin_with(D::BEGIN).await
}

impl Db {
    pub fn is_postgres(&self) -> bool {
        matches!(self, Db::Postgres(_))
    }

    /// `sqlite` or `postgres` (for messages and metrics).
    pub fn engine(&self) -> &'static str {
        if self.is_postgres() { "postgres" } else { "sqlite" }
    }

    pub async fn close(&self) {
        on!(self, p => { p.close().await })
    }
}

/// Open the metadata database `cfg` names (`[database]`; SQLite at `sqlite_path` when its url is empty) and
/// bring its schema up to date.
pub async fn open(cfg: &DatabaseConfig, sqlite_path: &Path) -> anyhow::Result<Db> {
    if cfg.is_postgres() { open_postgres(cfg).await } else { open_sqlite(sqlite_path).await }
}

/// The SQLite file at `path` (created if missing).
pub async fn open_sqlite(path: &Path) -> anyhow::Result<Db> {
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
    sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
    Ok(Db::Sqlite(pool))
}

/// The PostgreSQL database of `cfg.url`, with the password of `password_env` / `password_file` if set. Messages
/// name the server as `host:port/database`, never with the password.
pub async fn open_postgres(cfg: &DatabaseConfig) -> anyhow::Result<Db> {
    // each relay and downstream claim holds a connection while it works (2 x max_concurrent_tenants, 8 each by
    // default), and the listener has its own: the rest serves queries
    let max = if cfg.max_connections == 0 { 24 } else { cfg.max_connections };
    let pool = connect_postgres(cfg, max).await?;
    sqlx::migrate!("./migrations/postgres").run(&pool).await.map_err(|e| {
        anyhow::anyhow!("cannot migrate the comms database {}: {}", redact_url(&cfg.url), scrub(cfg, &e))
    })?;
    Ok(Db::Postgres(pool))
}

/// `e` as text with the password of `cfg` (from the URL, `password_env` or `password_file`) replaced by `***`.
fn scrub(cfg: &DatabaseConfig, e: &dyn std::fmt::Display) -> String {
    let mut m = e.to_string();
    let password = cfg.password().ok().flatten();
    for p in password.iter().chain(password_in_url(&cfg.url).iter()).filter(|p| !p.is_empty()) {
        m = m.replace(p.as_str(), "***");
    }
    m
}

/// A pool of `max` connections to the PostgreSQL database of `cfg`, schema untouched.
pub async fn connect_postgres(cfg: &DatabaseConfig, max: u32) -> anyhow::Result<PgPool> {
    let password = cfg.password()?;
    let shown = redact_url(&cfg.url);
    let mut opts = PgConnectOptions::from_str(&cfg.url)
        .map_err(|e| anyhow::anyhow!("[database] url {shown} is not a valid PostgreSQL URL: {}", scrub(cfg, &e)))?;
    if let Some(pw) = &password {
        opts = opts.password(pw);
    }
    let opts = opts.application_name("ferry-comms");
    PgPoolOptions::new().max_connections(max).acquire_timeout(Duration::from_secs(30)).connect_with(opts).await.map_err(
        |e| {
            let hint = if e.to_string().contains("certificate") {
                " (is the server's CA in sslrootcert=... of the URL?)"
            } else {
                ""
            };
            anyhow::anyhow!("cannot open the comms database {shown}: {}{hint}", scrub(cfg, &e))
        },
    )
}

/// `[database]`: the Comms metadata store. Empty `url`: SQLite in `<data_dir>/comms.db` (one server). A
/// `postgres://user@host:5432/db` URL: PostgreSQL, which several Comms replicas can share (see docs/scale-out.md).
/// TLS as for the Connector's PostgreSQL source: `?sslmode=verify-full&sslrootcert=/etc/ferry/db-ca.crt` in the URL.
/// The password is best kept out of the URL: `password_env` or `password_file` (at most one of them).
#[derive(Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// Empty (SQLite in `data_dir`), or `postgres://` / `postgresql://` URL.
    pub url: String,
    /// The name of an environment variable holding the database password.
    pub password_env: Option<String>,
    /// A file holding the database password (its first line); relative to the config file's folder.
    pub password_file: Option<PathBuf>,
    /// Connections in the pool (default 8 for SQLite, 24 for PostgreSQL: 0 means the default; on PostgreSQL at least
    /// 2 x `max_concurrent_tenants` + 8, as every relay or downstream claim holds one while it works).
    pub max_connections: u32,
}

impl std::fmt::Debug for DatabaseConfig {
    // the URL may carry a password: never shown
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &redact_url(&self.url))
            .field("password_env", &self.password_env)
            .field("password_file", &self.password_file)
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

impl DatabaseConfig {
    /// Whether this is PostgreSQL (else SQLite in the data directory).
    pub fn is_postgres(&self) -> bool {
        self.url.starts_with("postgres://") || self.url.starts_with("postgresql://")
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if !self.url.is_empty() && !self.is_postgres() {
            bail!(
                "[database] url must be empty (SQLite in data_dir) or a postgres:// URL (got {:?})",
                redact_url(&self.url)
            );
        }
        if self.password_env.is_some() && self.password_file.is_some() {
            bail!("set only one of [database] password_env and password_file");
        }
        if !self.is_postgres() && (self.password_env.is_some() || self.password_file.is_some()) {
            bail!("[database] password_env / password_file apply to a postgres:// url only");
        }
        Ok(())
    }

    /// The password from `password_env` or `password_file`, if one is set. The error never holds the password.
    pub fn password(&self) -> anyhow::Result<Option<String>> {
        if let Some(var) = &self.password_env {
            return match std::env::var(var) {
                Ok(v) => Ok(Some(v)),
                Err(_) => bail!(
                    "[database] password_env names the environment variable {var:?}, which is not set (or not \
                     UTF-8); set it for the Comms server's service"
                ),
            };
        }
        if let Some(path) = &self.password_file {
            return match std::fs::read_to_string(path) {
                Ok(text) => Ok(Some(text.lines().next().unwrap_or("").to_string())),
                Err(e) => bail!(
                    "cannot read the password file {} ([database] password_file): {e}; check the path and its \
                     permissions",
                    path.display()
                ),
            };
        }
        Ok(None)
    }
}

/// A database URL fit for messages and logs: the password of `scheme://user:password@host/...` and a
/// `password=` parameter replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let mut s = url.to_string();
    if let Some(scheme_end) = s.find("://") {
        let rest_start = scheme_end + 3;
        let auth_end = s[rest_start..].find(['/', '?']).map_or(s.len(), |i| rest_start + i);
        if let Some(at) = s[rest_start..auth_end].rfind('@').map(|i| rest_start + i)
            && let Some(colon) = s[rest_start..at].find(':').map(|i| rest_start + i)
        {
            s.replace_range(colon + 1..at, "***");
        }
    }
    if let Some(q) = s.find('?') {
        let (head, query) = s.split_at(q + 1);
        let query: Vec<String> =
            query
                .split('&')
                .map(|kv| {
                    if kv.to_ascii_lowercase().starts_with("password=") {
                        "password=***".to_string()
                    } else {
                        kv.into()
                    }
                })
                .collect();
        s = format!("{head}{}", query.join("&"));
    }
    s
}

/// The password written in a URL (to scrub it out of driver messages).
fn password_in_url(url: &str) -> Option<String> {
    url::Url::parse(url).ok()?.password().map(percent_decode)
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
        {
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Column reads shared by both engines' rows, for the row-to-struct helpers written once.
trait Get {
    fn text(&self, col: &str) -> sqlx::Result<String>;
    fn opt_text(&self, col: &str) -> sqlx::Result<Option<String>>;
    fn int(&self, col: &str) -> sqlx::Result<i64>;
}

macro_rules! impl_get {
    ($row:ty) => {
        impl Get for $row {
            fn text(&self, col: &str) -> sqlx::Result<String> {
                self.try_get(col)
            }
            fn opt_text(&self, col: &str) -> sqlx::Result<Option<String>> {
                self.try_get(col)
            }
            fn int(&self, col: &str) -> sqlx::Result<i64> {
                self.try_get(col)
            }
        }
    };
}
impl_get!(sqlx::sqlite::SqliteRow);
impl_get!(sqlx::postgres::PgRow);

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
pub async fn active_keys(db: &Db) -> sqlx::Result<Vec<KeyRow>> {
    on!(db, pool => {
        let rows = sqlx::query(
            "SELECT k.fingerprint, k.tenant, k.public_key FROM keys k JOIN tenants t ON t.name = k.tenant
             WHERE k.status = 'active' AND t.status = 'active'",
        )
        .fetch_all(pool)
        .await?;
        Ok(rows.into_iter().map(|r| KeyRow { fingerprint: r.get(0), tenant: r.get(1), public_key: r.get(2) }).collect())
    })
}

/// Keys retired by a rotation, of tenants still active: their open sessions may finish.
pub async fn retired_keys_of_active_tenants(db: &Db) -> sqlx::Result<std::collections::HashSet<String>> {
    on!(db, pool => {
        let rows = sqlx::query(
            "SELECT k.fingerprint FROM keys k JOIN tenants t ON t.name = k.tenant
             WHERE k.status = 'retired' AND t.status = 'active'",
        )
        .fetch_all(pool)
        .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    })
}

pub async fn add_tenant(db: &Db, name: &str) -> sqlx::Result<bool> {
    on!(db, pool => {
        let r = sqlx::query("INSERT INTO tenants(name, status, created_at) VALUES ($1, 'active', $2) ON CONFLICT DO NOTHING")
            .bind(name)
            .bind(now())
            .execute(pool)
            .await?;
        Ok(r.rows_affected() == 1)
    })
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct TenantRow {
    pub name: String,
    pub status: String,
    pub created_at: String,
    pub keys: i64,
    pub batches: i64,
    pub last_batch: Option<String>,
    /// The App server the tenant is placed on (`None`: not placed).
    pub app: Option<String>,
}

pub async fn list_tenants(db: &Db) -> sqlx::Result<Vec<TenantRow>> {
    on!(db, pool => {
        let rows = sqlx::query(
            "SELECT t.name, t.status, t.created_at,
                    (SELECT COUNT(*) FROM keys k WHERE k.tenant = t.name AND k.status = 'active'),
                    (SELECT COUNT(*) FROM batches b WHERE b.tenant = t.name),
                    (SELECT MAX(batch_id) FROM batches b WHERE b.tenant = t.name), t.app
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
                app: r.get(6),
            })
            .collect())
    })
}

pub async fn set_tenant_status(db: &Db, name: &str, status: &str) -> sqlx::Result<bool> {
    on!(db, pool => {
        let r = sqlx::query("UPDATE tenants SET status = $1 WHERE name = $2").bind(status).bind(name).execute(pool).await?;
        Ok(r.rows_affected() == 1)
    })
}

pub async fn tenant_exists(db: &Db, name: &str) -> sqlx::Result<bool> {
    on!(db, pool => {
        Ok(sqlx::query("SELECT 1 FROM tenants WHERE name = $1").bind(name).fetch_optional(pool).await?.is_some())
    })
}

/// Changes with every change to tenants, keys or limits (by any process): see migration 0005.
pub async fn access_version(db: &Db) -> sqlx::Result<i64> {
    on!(db, pool => {
        sqlx::query_scalar("SELECT v FROM access_version WHERE id = 1").fetch_one(pool).await
    })
}

/// Every per-tenant limit override: (tenant, limit name, value).
pub async fn all_tenant_limits(db: &Db) -> sqlx::Result<Vec<(String, String, i64)>> {
    on!(db, pool => {
        let rows = sqlx::query("SELECT tenant, name, value FROM tenant_limits").fetch_all(pool).await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
    })
}

/// Set (Some) or remove (None: back to the default) one limit override of a tenant.
pub async fn set_tenant_limit(db: &Db, tenant: &str, name: &str, value: Option<u64>) -> sqlx::Result<()> {
    on!(db, pool => {
        match value {
            Some(v) => {
                sqlx::query(
                    "INSERT INTO tenant_limits(tenant, name, value) VALUES ($1, $2, $3)
                     ON CONFLICT(tenant, name) DO UPDATE SET value = excluded.value",
                )
                .bind(tenant)
                .bind(name)
                .bind(i64::try_from(v).unwrap_or(i64::MAX))
                .execute(pool)
                .await?;
            }
            None => {
                sqlx::query("DELETE FROM tenant_limits WHERE tenant = $1 AND name = $2")
                    .bind(tenant)
                    .bind(name)
                    .execute(pool)
                    .await?;
            }
        }
        Ok(())
    })
}

/// Bytes uploaded per tenant on `day` (`YYYY-MM-DD`).
pub async fn upload_usage_on(db: &Db, day: &str) -> sqlx::Result<Vec<(String, i64)>> {
    on!(db, pool => {
        let rows = sqlx::query("SELECT tenant, bytes FROM upload_usage WHERE day = $1").bind(day).fetch_all(pool).await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    })
}

pub async fn add_upload_usage(db: &Db, tenant: &str, day: &str, bytes: u64) -> sqlx::Result<()> {
    on!(db, pool => {
        sqlx::query(
            "INSERT INTO upload_usage(tenant, day, bytes) VALUES ($1, $2, $3)
             ON CONFLICT(tenant, day) DO UPDATE SET bytes = bytes + excluded.bytes",
        )
        .bind(tenant)
        .bind(day)
        .bind(i64::try_from(bytes).unwrap_or(i64::MAX))
        .execute(pool)
        .await?;
        Ok(())
    })
}

/// Remember that key `fp` was used from `address`. Returns whether the address is new for this key, and
/// whether the key had been seen from any address before.
pub async fn note_key_address(db: &Db, fp: &str, address: &str) -> sqlx::Result<(bool, bool)> {
    on!(db, pool => {
        let seen_before =
            sqlx::query("SELECT 1 FROM key_addresses WHERE fingerprint = $1 LIMIT 1").bind(fp).fetch_optional(pool).await?;
        let r = sqlx::query(
            "INSERT INTO key_addresses(fingerprint, address, first_seen) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(fp)
        .bind(address)
        .bind(now())
        .execute(pool)
        .await?;
        Ok((r.rows_affected() == 1, seen_before.is_some()))
    })
}

pub async fn add_token(db: &Db, secret_hash: &str, tenant: &str, expires: DateTime<Utc>) -> sqlx::Result<()> {
    on!(db, pool => {
        sqlx::query("INSERT INTO tokens(secret_hash, tenant, expires_at) VALUES ($1, $2, $3)")
            .bind(secret_hash)
            .bind(tenant)
            .bind(expires.to_rfc3339())
            .execute(pool)
            .await?;
        Ok(())
    })
}

/// Add `new_key` for the tenant of `old_fp`, marked as replacing it. The old key stays valid until the new
/// one is first used ([`retire_replaced`]).
pub async fn add_rotated_key(
    db: &Db,
    tenant: &str,
    old_fp: &str,
    new_fp: &str,
    new_key: &str,
) -> Result<(), RegisterError> {
    on!(db, pool => {
        let taken = sqlx::query("SELECT 1 FROM keys WHERE fingerprint = $1").bind(new_fp).fetch_optional(pool).await?;
        if taken.is_some() {
            return Err(RegisterError::KeyTaken);
        }
        sqlx::query(
            "INSERT INTO keys(fingerprint, tenant, public_key, hostname, status, created_at, replaces)
             SELECT $1, tenant, $2, hostname, 'active', $3, fingerprint FROM keys WHERE fingerprint = $4 AND tenant = $5",
        )
        .bind(new_fp)
        .bind(new_key)
        .bind(now())
        .bind(old_fp)
        .bind(tenant)
        .execute(pool)
        .await?;
        Ok(())
    })
}

/// `fp` was just used: retire the key it replaced, if that one is still active. Returns the retired key.
pub async fn retire_replaced(db: &Db, fp: &str) -> sqlx::Result<Option<String>> {
    on!(db, pool => {
        let row = sqlx::query(
            "SELECT o.fingerprint FROM keys n JOIN keys o ON o.fingerprint = n.replaces
             WHERE n.fingerprint = $1 AND o.status = 'active'",
        )
        .bind(fp)
        .fetch_optional(pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let old: String = row.get(0);
        sqlx::query("UPDATE keys SET status = 'retired' WHERE fingerprint = $1").bind(&old).execute(pool).await?;
        Ok(Some(old))
    })
}

/// Revoke a tenant's key at once. Returns false if the tenant has no such active key.
pub async fn revoke_key(db: &Db, tenant: &str, fp: &str) -> sqlx::Result<bool> {
    on!(db, pool => {
        let r =
            sqlx::query("UPDATE keys SET status = 'revoked' WHERE tenant = $1 AND fingerprint = $2 AND status = 'active'")
                .bind(tenant)
                .bind(fp)
                .execute(pool)
                .await?;
        Ok(r.rows_affected() == 1)
    })
}

/// A tenant's keys: (fingerprint, status, created_at, hostname).
pub async fn tenant_keys(db: &Db, tenant: &str) -> sqlx::Result<Vec<(String, String, String, String)>> {
    on!(db, pool => {
        let rows =
            sqlx::query("SELECT fingerprint, status, created_at, hostname FROM keys WHERE tenant = $1 ORDER BY created_at")
                .bind(tenant)
                .fetch_all(pool)
                .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))).collect())
    })
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
    db: &Db,
    secret_hash: &str,
    fingerprint: &str,
    public_key: &str,
    hostname: &str,
) -> Result<String, RegisterError> {
    on!(db, pool => {
        let mut tx = begin_write(pool).await?;
        let row = sqlx::query(
            "SELECT t.tenant, t.expires_at, t.used_at, n.status FROM tokens t JOIN tenants n ON n.name = t.tenant
             WHERE t.secret_hash = $1",
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
            sqlx::query("SELECT 1 FROM keys WHERE fingerprint = $1").bind(fingerprint).fetch_optional(&mut *tx).await?;
        if taken.is_some() {
            return Err(RegisterError::KeyTaken);
        }
        let used = sqlx::query("UPDATE tokens SET used_at = $1 WHERE secret_hash = $2 AND used_at IS NULL")
            .bind(now())
            .bind(secret_hash)
            .execute(&mut *tx)
            .await?;
        if used.rows_affected() != 1 {
            return Err(RegisterError::UsedToken);
        }
        sqlx::query("INSERT INTO keys(fingerprint, tenant, public_key, hostname, status, created_at) VALUES ($1, $2, $3, $4, 'active', $5)")
            .bind(fingerprint)
            .bind(&tenant)
            .bind(public_key)
            .bind(hostname)
            .bind(now())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(tenant)
    })
}

/// Append a security-relevant event to the audit log. Each entry's hash covers the previous entry's hash, so
/// an edited, inserted or removed entry breaks the chain (`ferry comms audit verify`).
pub async fn audit(db: &Db, tenant: Option<&str>, event: &str, detail: &str) {
    if let Err(e) = append_audit(db, tenant, event, detail).await {
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

/// [`audit`] for many entries of one tenant, appended in order in one transaction (one commit, not one per
/// entry: a batched call audits each of its files without a sync each).
pub async fn audit_many(db: &Db, tenant: Option<&str>, entries: &[(&str, String)]) {
    if entries.is_empty() {
        return;
    }
    if let Err(e) = append_audit_many(db, tenant, entries).await {
        tracing::error!(entries = entries.len(), "cannot write the audit log: {e}");
    }
}

async fn append_audit(db: &Db, tenant: Option<&str>, event: &str, detail: &str) -> sqlx::Result<()> {
    append_audit_many(db, tenant, &[(event, detail.to_string())]).await
}

/// Appends entries after the last one, inside a transaction that no other appender (any process, any replica)
/// can interleave with: SQLite's `BEGIN IMMEDIATE` (the write lock), PostgreSQL's `LOCK TABLE audit IN EXCLUSIVE
/// MODE` (other appenders wait; readers do not). So the chain never forks.
async fn append_audit_many(db: &Db, tenant: Option<&str>, entries: &[(&str, String)]) -> sqlx::Result<()> {
    macro_rules! append_in {
        ($conn:expr) => {{
            let last = sqlx::query("SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1").fetch_optional(&mut *$conn).await?;
            let (mut id, mut prev) = match last {
                Some(r) => (r.try_get::<i64, _>(0)? + 1, r.try_get::<String, _>(1)?),
                None => (1, String::new()),
            };
            let at = now();
            for (event, detail) in entries {
                let hash = audit_hash(&prev, id, &at, tenant, event, detail);
                sqlx::query(
                    "INSERT INTO audit(id, at, tenant, event, detail, prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(id)
                .bind(&at)
                .bind(tenant)
                .bind(*event)
                .bind(detail.as_str())
                .bind(&prev)
                .bind(&hash)
                .execute(&mut *$conn)
                .await?;
                prev = hash;
                id += 1;
            }
            sqlx::Result::<()>::Ok(())
        }};
    }
    match db {
        Db::Sqlite(pool) => {
            let mut conn = pool.acquire().await?;
            // IMMEDIATE: two processes appending at once must not fork the chain.
            sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
            let r: sqlx::Result<()> = async { append_in!(&mut *conn) }.await;
            match r {
                Ok(()) => sqlx::query("COMMIT").execute(&mut *conn).await.map(|_| ()),
                Err(e) => {
                    let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
                    Err(e)
                }
            }
        }
        Db::Postgres(pool) => {
            let mut tx = begin_write(pool).await?;
            sqlx::query("LOCK TABLE audit IN EXCLUSIVE MODE").execute(&mut *tx).await?;
            append_in!(&mut *tx)?;
            tx.commit().await
        }
    }
}

/// The latest audit entries: (id, at, tenant, event, detail), newest first.
pub async fn recent_audit(db: &Db, limit: i64) -> sqlx::Result<Vec<(i64, String, Option<String>, String, String)>> {
    on!(db, pool => {
        let rows = sqlx::query("SELECT id, at, tenant, event, detail FROM audit ORDER BY id DESC LIMIT $1")
            .bind(limit)
            .fetch_all(pool)
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4))).collect())
    })
}

/// Walk the audit log and check the chain. Returns the number of entries, or the first broken one.
pub async fn verify_audit(db: &Db) -> anyhow::Result<Result<u64, String>> {
    on!(db, pool => {
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
    })
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

fn status_from_row(r: &impl Get) -> anyhow::Result<BatchStatus> {
    let id: String = r.text("batch_id")?;
    let corrupt = |what: String| CorruptBatch { batch: id.chars().take(64).collect(), what };
    let state: String = r.text("state")?;
    let updated: String = r.text("updated_at")?;
    Ok(BatchStatus {
        batch_id: BatchId::parse(&id).map_err(|e| corrupt(e.to_string()))?,
        state: parse_state(&id, &state)?,
        detail: r.opt_text("detail")?,
        files: r.int("files")? as u32,
        rows: r.int("rows")? as u64,
        updated_at: DateTime::parse_from_rfc3339(&updated)
            .map(|d| d.with_timezone(&Utc))
            .map_err(|e| corrupt(format!("updated_at {updated:?}: {e}")))?,
    })
}

/// Record a completed batch; a second completion of the same id changes nothing. Returns the current status.
pub async fn insert_batch(db: &Db, tenant: &str, m: &Manifest) -> anyhow::Result<BatchStatus> {
    on!(db, pool => {
        let rows: u64 = m.total_rows();
        sqlx::query(
            "INSERT INTO batches(tenant, batch_id, state, manifest, files, rows, created_at, updated_at)
             VALUES ($1, $2, 'uploaded', $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
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
        batch_status(db, tenant, &m.batch_id).await?.ok_or_else(|| anyhow::anyhow!("batch vanished after insert"))
    })
}

pub async fn batch_status(db: &Db, tenant: &str, id: &BatchId) -> anyhow::Result<Option<BatchStatus>> {
    on!(db, pool => {
        let row = sqlx::query("SELECT * FROM batches WHERE tenant = $1 AND batch_id = $2")
            .bind(tenant)
            .bind(id.as_str())
            .fetch_optional(pool)
            .await?;
        row.as_ref().map(status_from_row).transpose()
    })
}

pub async fn list_batches(db: &Db, tenant: &str, limit: i64) -> anyhow::Result<Vec<BatchStatus>> {
    on!(db, pool => {
        let rows = sqlx::query("SELECT * FROM batches WHERE tenant = $1 ORDER BY batch_id DESC LIMIT $2")
            .bind(tenant)
            .bind(limit)
            .fetch_all(pool)
            .await?;
        rows.iter().map(status_from_row).collect()
    })
}

/// A batch the relay still has to move: (tenant, manifest, state).
pub struct PendingBatch {
    pub tenant: String,
    pub manifest: Manifest,
    pub state: BatchState,
    pub attempts: i64,
}

pub async fn pending_batches(db: &Db) -> anyhow::Result<Vec<PendingBatch>> {
    on!(db, pool => {
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
    })
}

pub async fn set_batch_state(
    db: &Db,
    tenant: &str,
    id: &BatchId,
    state: BatchState,
    detail: Option<&str>,
) -> sqlx::Result<()> {
    on!(db, pool => {
        // the end of each stage is kept for the console's timings: relayed_at, judged_at (imported or rejected)
        let at = now();
        let relayed = (state == BatchState::Relayed).then_some(at.as_str());
        let judged = matches!(state, BatchState::Imported | BatchState::Rejected).then_some(at.as_str());
        sqlx::query(
            "UPDATE batches SET state = $1, detail = $2, updated_at = $3, relayed_at = COALESCE($4, relayed_at),
             judged_at = COALESCE($5, judged_at) WHERE tenant = $6 AND batch_id = $7",
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
    })
}

/// This replica's right to relay one tenant's batches (they go in order, so the unit is the tenant). On SQLite
/// there is one server and the claim is free. On PostgreSQL it is a session advisory lock held on a connection
/// of its own: exactly one replica holds it; released by [`RelayClaim::release`], or by the connection closing
/// when the claim is dropped any other way (a crashed or stopped replica's claims end with its connections).
pub enum RelayClaim {
    Local,
    Postgres(sqlx::pool::PoolConnection<sqlx::Postgres>, i64),
}

impl RelayClaim {
    pub async fn release(self) {
        if let RelayClaim::Postgres(mut conn, key) = self {
            let unlocked = sqlx::query_scalar::<_, bool>("SELECT pg_advisory_unlock($1)")
                .bind(key)
                .fetch_one(&mut *conn)
                .await
                .unwrap_or(false);
            if unlocked {
                conn.return_to_pool().await;
            } // else: close_on_drop closes it, which releases the lock
        }
    }
}

/// The advisory-lock key of a tenant's work of one kind (`space`: `relay` or `downstream`, separate key spaces so
/// one replica may relay a tenant while another fetches for it): the first 8 bytes of
/// SHA-256("ferry " space NUL tenant).
fn lock_key(space: &str, tenant: &str) -> i64 {
    use sha2::{Digest, Sha256};
    let d = Sha256::new()
        .chain_update(b"ferry ")
        .chain_update(space.as_bytes())
        .chain_update(b"\0")
        .chain_update(tenant.as_bytes())
        .finalize();
    i64::from_be_bytes(d[..8].try_into().unwrap_or([0; 8]))
}

/// Claim the relay of `tenant`'s batches for this replica; None while another replica holds it.
pub async fn claim_relay(db: &Db, tenant: &str) -> sqlx::Result<Option<RelayClaim>> {
    claim(db, "relay", tenant).await
}

/// Take `tenant`'s session advisory lock in `space` on a connection kept with the claim.
async fn claim(db: &Db, space: &str, tenant: &str) -> sqlx::Result<Option<RelayClaim>> {
    let Db::Postgres(pool) = db else { return Ok(Some(RelayClaim::Local)) };
    let key = lock_key(space, tenant);
    let mut conn = pool.acquire().await?;
    let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(key).fetch_one(&mut *conn).await?;
    if !got {
        return Ok(None);
    }
    conn.close_on_drop();
    Ok(Some(RelayClaim::Postgres(conn, key)))
}

/// A relay attempt failed: keep the state, note why, count the attempt.
pub async fn note_batch_failure(db: &Db, tenant: &str, id: &BatchId, detail: &str) -> sqlx::Result<()> {
    on!(db, pool => {
        sqlx::query(
            "UPDATE batches SET detail = $1, attempts = attempts + 1, updated_at = $2 WHERE tenant = $3 AND batch_id = $4",
        )
        .bind(detail)
        .bind(now())
        .bind(tenant)
        .bind(id.as_str())
        .execute(pool)
        .await?;
        Ok(())
    })
}

// ---- App servers (several App servers behind one Comms service; migration 0007) ----------------------------

/// An App server's endpoint: what `ferry app info` prints, the `[app]` section of comms.toml
/// ([`crate::config::CommsConfig::app`]) and a row of `app_servers`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AppEndpoint {
    /// `https://app.internal:9443`
    pub api_url: String,
    /// `sha256:<hex>` of the App server's TLS certificate (from `ferry app info`); empty = CA-verified.
    pub tls_fingerprint: String,
    /// `host:port` of the App server's SFTP endpoint.
    pub ssh_addr: String,
    /// `SHA256:...` of the App server's SSH host key (from `ferry app info`).
    pub ssh_host_key_fingerprint: String,
    /// The App server's service public key (OpenSSH line, from `ferry app info`): it signs the App's calls
    /// announcing downstream files.
    pub service_key: String,
}

/// A registered App server, with the number of tenants placed on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AppRow {
    pub name: String,
    pub endpoint: AppEndpoint,
    /// Fingerprint of the App's service key: the keyid of its signed calls to Comms.
    pub key_fingerprint: String,
    pub tenants: i64,
}

/// Register an App server; false if one of that name exists (nothing changed). A service key another App
/// server already has is refused by the database (unique `key_fingerprint`).
pub async fn add_app(db: &Db, name: &str, ep: &AppEndpoint, key_fingerprint: &str) -> sqlx::Result<bool> {
    on!(db, pool => {
        let r = sqlx::query(
            "INSERT INTO app_servers(name, api_url, tls_fingerprint, ssh_addr, ssh_host_key_fingerprint, service_key,
                                     key_fingerprint, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(&ep.api_url)
        .bind(&ep.tls_fingerprint)
        .bind(&ep.ssh_addr)
        .bind(&ep.ssh_host_key_fingerprint)
        .bind(&ep.service_key)
        .bind(key_fingerprint)
        .bind(now())
        .execute(pool)
        .await?;
        Ok(r.rows_affected() == 1)
    })
}

/// Register an App server or bring its endpoint up to date (the `[app]` section of comms.toml, at every start).
/// Unchanged values write nothing (no access-version bump at every start of every replica).
pub async fn put_app(db: &Db, name: &str, ep: &AppEndpoint, key_fingerprint: &str) -> sqlx::Result<()> {
    on!(db, pool => {
        sqlx::query(
            "INSERT INTO app_servers(name, api_url, tls_fingerprint, ssh_addr, ssh_host_key_fingerprint, service_key,
                                     key_fingerprint, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (name) DO UPDATE SET api_url = excluded.api_url, tls_fingerprint = excluded.tls_fingerprint,
                 ssh_addr = excluded.ssh_addr, ssh_host_key_fingerprint = excluded.ssh_host_key_fingerprint,
                 service_key = excluded.service_key, key_fingerprint = excluded.key_fingerprint
             WHERE app_servers.api_url <> excluded.api_url OR app_servers.tls_fingerprint <> excluded.tls_fingerprint
                OR app_servers.ssh_addr <> excluded.ssh_addr
                OR app_servers.ssh_host_key_fingerprint <> excluded.ssh_host_key_fingerprint
                OR app_servers.service_key <> excluded.service_key
                OR app_servers.key_fingerprint <> excluded.key_fingerprint",
        )
        .bind(name)
        .bind(&ep.api_url)
        .bind(&ep.tls_fingerprint)
        .bind(&ep.ssh_addr)
        .bind(&ep.ssh_host_key_fingerprint)
        .bind(&ep.service_key)
        .bind(key_fingerprint)
        .bind(now())
        .execute(pool)
        .await?;
        Ok(())
    })
}

/// Every registered App server with its tenant count, by name.
pub async fn list_apps(db: &Db) -> sqlx::Result<Vec<AppRow>> {
    on!(db, pool => {
        let rows = sqlx::query(
            "SELECT a.name, a.api_url, a.tls_fingerprint, a.ssh_addr, a.ssh_host_key_fingerprint, a.service_key,
                    a.key_fingerprint, (SELECT COUNT(*) FROM tenants t WHERE t.app = a.name)
             FROM app_servers a ORDER BY a.name",
        )
        .fetch_all(pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| AppRow {
                name: r.get(0),
                endpoint: AppEndpoint {
                    api_url: r.get(1),
                    tls_fingerprint: r.get(2),
                    ssh_addr: r.get(3),
                    ssh_host_key_fingerprint: r.get(4),
                    service_key: r.get(5),
                },
                key_fingerprint: r.get(6),
                tenants: r.get(7),
            })
            .collect())
    })
}

/// The name of the App server with the fewest tenants (ties: the first by name), if any is registered.
pub async fn least_loaded_app(db: &Db) -> sqlx::Result<Option<String>> {
    on!(db, pool => {
        sqlx::query_scalar(
            "SELECT a.name FROM app_servers a
             ORDER BY (SELECT COUNT(*) FROM tenants t WHERE t.app = a.name), a.name LIMIT 1",
        )
        .fetch_optional(pool)
        .await
    })
}

/// Remove an App server that has no tenant placed on it. `Ok(true)` removed; `Ok(false)` no such App;
/// `Err(n)`: `n` tenants are placed on it (nothing removed).
pub async fn remove_app(db: &Db, name: &str) -> sqlx::Result<Result<bool, i64>> {
    on!(db, pool => {
        let r = sqlx::query(
            "DELETE FROM app_servers WHERE name = $1 AND NOT EXISTS (SELECT 1 FROM tenants WHERE app = $1)",
        )
        .bind(name)
        .execute(pool)
        .await?;
        if r.rows_affected() == 1 {
            return Ok(Ok(true));
        }
        let placed: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM tenants WHERE app = $1").bind(name).fetch_one(pool).await?;
        Ok(if placed > 0 { Err(placed) } else { Ok(false) })
    })
}

/// Create a tenant placed on App server `app`; false if it existed (its placement is kept).
pub async fn add_tenant_on(db: &Db, name: &str, app: &str) -> sqlx::Result<bool> {
    on!(db, pool => {
        let r = sqlx::query(
            "INSERT INTO tenants(name, status, created_at, app) VALUES ($1, 'active', $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(name)
        .bind(now())
        .bind(app)
        .execute(pool)
        .await?;
        Ok(r.rows_affected() == 1)
    })
}

/// The App server a tenant is placed on: `None` no such tenant, `Some(None)` not placed.
pub async fn tenant_app(db: &Db, tenant: &str) -> sqlx::Result<Option<Option<String>>> {
    on!(db, pool => {
        let row = sqlx::query("SELECT app FROM tenants WHERE name = $1").bind(tenant).fetch_optional(pool).await?;
        Ok(row.map(|r| r.get::<Option<String>, _>(0)))
    })
}

/// Place a tenant on App server `app` (the last step of moving it, see docs/scale-out.md); false if there is
/// no such tenant.
pub async fn set_tenant_app(db: &Db, tenant: &str, app: &str) -> sqlx::Result<bool> {
    on!(db, pool => {
        let r = sqlx::query("UPDATE tenants SET app = $1 WHERE name = $2").bind(app).bind(tenant).execute(pool).await?;
        Ok(r.rows_affected() == 1)
    })
}

/// Place one tenant on `app` if it is not placed yet.
pub async fn place_unplaced_tenant(db: &Db, tenant: &str, app: &str) -> sqlx::Result<()> {
    on!(db, pool => {
        sqlx::query("UPDATE tenants SET app = $1 WHERE name = $2 AND app IS NULL")
            .bind(app)
            .bind(tenant)
            .execute(pool)
            .await?;
        Ok(())
    })
}

/// Place every tenant not placed yet (created before migration 0007, or by a bare [`add_tenant`]) on `app`.
pub async fn place_unplaced(db: &Db, app: &str) -> sqlx::Result<u64> {
    on!(db, pool => {
        let r = sqlx::query("UPDATE tenants SET app = $1 WHERE app IS NULL").bind(app).execute(pool).await?;
        Ok(r.rows_affected())
    })
}

// ---- downstream -------------------------------------------------------------------------------------------

use ferry_proto::api::{DownloadFile, FileId, FileReady, FileState};

/// Record a file the App announced; announcing it again changes nothing. Returns false if the tenant is unknown.
pub async fn insert_download(db: &Db, f: &FileReady) -> sqlx::Result<bool> {
    on!(db, pool => {
        let known = sqlx::query("SELECT 1 FROM tenants WHERE name = $1").bind(&f.tenant).fetch_optional(pool).await?;
        if known.is_none() {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO downloads(tenant, file_id, name, state, bytes, md5, sha256, created_at)
             VALUES ($1, $2, $3, 'fetching', $4, $5, $6, $7) ON CONFLICT DO NOTHING",
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
    })
}

/// [`insert_download`] for many files in one transaction (one commit, not one per file). Returns, per file,
/// whether its tenant is known.
pub async fn insert_downloads(db: &Db, files: &[FileReady]) -> sqlx::Result<Vec<bool>> {
    on!(db, pool => {
        let mut tx = begin_write(pool).await?;
        let mut out = Vec::with_capacity(files.len());
        let at = now();
        for f in files {
            // Write first: a transaction that read before its first write cannot take SQLite's write lock once
            // another connection has committed meanwhile (SQLITE_BUSY_SNAPSHOT, not retried by busy_timeout).
            let r = sqlx::query(
                "INSERT INTO downloads(tenant, file_id, name, state, bytes, md5, sha256, created_at)
                 SELECT $1, $2, $3, 'fetching', $4, $5, $6, $7 WHERE EXISTS (SELECT 1 FROM tenants WHERE name = $1)
                 ON CONFLICT DO NOTHING",
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
            let known = r.rows_affected() == 1
                || sqlx::query("SELECT 1 FROM tenants WHERE name = $1").bind(&f.tenant).fetch_optional(&mut *tx).await?.is_some();
            out.push(known);
        }
        tx.commit().await?;
        Ok(out)
    })
}

/// [`set_download_ready`] for many files of a tenant in one transaction.
pub async fn set_downloads_ready(db: &Db, tenant: &str, files: &[(FileId, u64)]) -> sqlx::Result<()> {
    on!(db, pool => {
        let mut tx = begin_write(pool).await?;
        let at = now();
        for (id, compressed) in files {
            sqlx::query(
                "UPDATE downloads SET state = 'relayed', compressed_bytes = $1, ready_at = $2, last_error = NULL
                 WHERE tenant = $3 AND file_id = $4 AND state = 'fetching'",
            )
            .bind(*compressed as i64)
            .bind(&at)
            .bind(tenant)
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await
    })
}

/// [`set_download_delivered`] for many files of a tenant in one transaction; per file, whether it is delivered.
pub async fn set_downloads_delivered(db: &Db, tenant: &str, ids: &[FileId]) -> sqlx::Result<Vec<bool>> {
    on!(db, pool => {
        let mut tx = begin_write(pool).await?;
        let at = now();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let r = sqlx::query(
                "UPDATE downloads SET state = 'delivered', delivered_at = COALESCE(delivered_at, $1), last_error = NULL
                 WHERE tenant = $2 AND file_id = $3 AND state IN ('relayed', 'delivered')",
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
    })
}

/// [`set_app_notified`] for many files of a tenant in one transaction.
pub async fn set_apps_notified(db: &Db, tenant: &str, files: &[(FileId, FileState)]) -> sqlx::Result<()> {
    on!(db, pool => {
        let mut tx = begin_write(pool).await?;
        for (id, state) in files {
            sqlx::query("UPDATE downloads SET app_notified = $1 WHERE tenant = $2 AND file_id = $3")
                .bind(state.as_str())
                .bind(tenant)
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await
    })
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

fn download_row(r: &impl Get) -> Option<DownloadRow> {
    let id: String = r.text("file_id").ok()?;
    let state: String = r.text("state").ok()?;
    let tenant: String = r.text("tenant").ok()?;
    Some(DownloadRow {
        file: FileReady {
            tenant: tenant.clone(),
            file_id: FileId::parse(&id).ok()?,
            name: r.text("name").ok()?,
            bytes: r.int("bytes").ok()? as u64,
            md5: r.text("md5").ok()?,
            sha256: r.text("sha256").ok()?,
        },
        tenant,
        state: FileState::parse(&state)?,
        compressed_bytes: r.int("compressed_bytes").ok()? as u64,
        attempts: r.int("attempts").ok()?,
        app_notified: r.text("app_notified").ok()?,
        created_at: parse_time(r.opt_text("created_at").ok()?).unwrap_or_default(),
        delivered_at: parse_time(r.opt_text("delivered_at").ok()?),
    })
}

/// Files still to fetch from the App, and files whose progress the App has not heard of yet.
pub async fn downloads_needing_work(db: &Db) -> sqlx::Result<Vec<DownloadRow>> {
    on!(db, pool => {
        let rows = sqlx::query(
            "SELECT * FROM downloads WHERE state = 'fetching' OR app_notified != state ORDER BY file_id LIMIT 200",
        )
        .fetch_all(pool)
        .await?;
        Ok(rows.iter().filter_map(download_row).collect())
    })
}

pub async fn download(db: &Db, tenant: &str, id: &FileId) -> sqlx::Result<Option<DownloadRow>> {
    on!(db, pool => {
        let row = sqlx::query("SELECT * FROM downloads WHERE tenant = $1 AND file_id = $2")
            .bind(tenant)
            .bind(id.as_str())
            .fetch_optional(pool)
            .await?;
        Ok(row.as_ref().and_then(download_row))
    })
}

/// The tenant's download list: files ready and not yet acknowledged, oldest first.
pub async fn ready_downloads(db: &Db, tenant: &str) -> sqlx::Result<Vec<DownloadFile>> {
    on!(db, pool => {
        let rows = sqlx::query("SELECT * FROM downloads WHERE tenant = $1 AND state = 'relayed' ORDER BY file_id LIMIT 100")
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
    })
}

/// Where a ready file sits in the tenant's SFTP root.
pub fn download_path(id: &FileId, name: &str) -> String {
    format!("/download/{id}/{name}.bz2")
}

pub async fn set_download_ready(db: &Db, tenant: &str, id: &FileId, compressed: u64) -> sqlx::Result<()> {
    on!(db, pool => {
        sqlx::query(
            "UPDATE downloads SET state = 'relayed', compressed_bytes = $1, ready_at = $2, last_error = NULL
             WHERE tenant = $3 AND file_id = $4 AND state = 'fetching'",
        )
        .bind(compressed as i64)
        .bind(now())
        .bind(tenant)
        .bind(id.as_str())
        .execute(pool)
        .await?;
        Ok(())
    })
}

/// Mark delivered (idempotent). Returns false if the file is not this tenant's or not yet ready.
/// Whether downstream file `id` of `tenant` was delivered (acknowledged by the Connector).
pub async fn download_delivered(db: &Db, tenant: &str, id: &str) -> sqlx::Result<bool> {
    on!(db, pool => {
        let n: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM downloads WHERE tenant = $1 AND file_id = $2 AND state = 'delivered'")
                .bind(tenant)
                .bind(id)
                .fetch_one(pool)
                .await?;
        Ok(n > 0)
    })
}

pub async fn set_download_delivered(db: &Db, tenant: &str, id: &FileId) -> sqlx::Result<bool> {
    on!(db, pool => {
        let r = sqlx::query(
            "UPDATE downloads SET state = 'delivered', delivered_at = COALESCE(delivered_at, $1), last_error = NULL
             WHERE tenant = $2 AND file_id = $3 AND state IN ('relayed', 'delivered')",
        )
        .bind(now())
        .bind(tenant)
        .bind(id.as_str())
        .execute(pool)
        .await?;
        Ok(r.rows_affected() == 1)
    })
}

pub async fn note_download_error(db: &Db, tenant: &str, id: &FileId, error: &str) -> sqlx::Result<bool> {
    on!(db, pool => {
        let r =
            sqlx::query("UPDATE downloads SET last_error = $1, attempts = attempts + 1 WHERE tenant = $2 AND file_id = $3")
                .bind(error)
                .bind(tenant)
                .bind(id.as_str())
                .execute(pool)
                .await?;
        Ok(r.rows_affected() == 1)
    })
}

pub async fn set_app_notified(db: &Db, tenant: &str, id: &FileId, state: FileState) -> sqlx::Result<()> {
    on!(db, pool => {
        sqlx::query("UPDATE downloads SET app_notified = $1 WHERE tenant = $2 AND file_id = $3")
            .bind(state.as_str())
            .bind(tenant)
            .bind(id.as_str())
            .execute(pool)
            .await?;
        Ok(())
    })
}

/// Last error of a file (operators' view).
pub async fn download_error(db: &Db, tenant: &str, id: &FileId) -> sqlx::Result<Option<String>> {
    on!(db, pool => {
        let row = sqlx::query("SELECT last_error FROM downloads WHERE tenant = $1 AND file_id = $2")
            .bind(tenant)
            .bind(id.as_str())
            .fetch_optional(pool)
            .await?;
        Ok(row.and_then(|r| r.get(0)))
    })
}

/// A tenant's downstream files, newest first: (file id, name, state, attempts, created, last error).
pub async fn tenant_downloads(
    db: &Db,
    tenant: &str,
    limit: i64,
) -> sqlx::Result<Vec<(String, String, String, i64, String, Option<String>)>> {
    on!(db, pool => {
        let rows = sqlx::query(
            "SELECT file_id, name, state, attempts, created_at, last_error FROM downloads WHERE tenant = $1
             ORDER BY file_id DESC LIMIT $2",
        )
        .bind(tenant)
        .bind(limit)
        .fetch_all(pool)
        .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5))).collect())
    })
}

// ---- operators' view (the console) -------------------------------------------------------------------------

/// Key `fp` was used just now (written at most once a minute per key by the caller).
pub async fn touch_key(db: &Db, fp: &str) -> sqlx::Result<()> {
    on!(db, pool => {
        sqlx::query("UPDATE keys SET last_used_at = $1 WHERE fingerprint = $2").bind(now()).bind(fp).execute(pool).await?;
        Ok(())
    })
}

/// Each tenant's last contact: the latest use of any of its keys (SSH login or signed call), to the minute.
pub async fn last_contacts(db: &Db) -> sqlx::Result<Vec<(String, DateTime<Utc>)>> {
    on!(db, pool => {
        let rows = sqlx::query("SELECT tenant, MAX(last_used_at) FROM keys WHERE last_used_at IS NOT NULL GROUP BY tenant")
            .fetch_all(pool)
            .await?;
        Ok(rows.iter().filter_map(|r| Some((r.get(0), parse_time(r.get(1))?))).collect())
    })
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

fn batch_detail(r: &impl Get) -> sqlx::Result<BatchDetail> {
    let manifest: String = r.text("manifest")?;
    // lenient: an odd manifest shows blanks, never an error page
    let m: serde_json::Value = serde_json::from_str(&manifest).unwrap_or_default();
    let time = |k: &str| m.get(k).and_then(|v| v.as_str()).map(str::to_string);
    let compressed_bytes = m
        .get("files")
        .and_then(|f| f.as_array())
        .map(|f| f.iter().filter_map(|f| f.get("compressed_bytes").and_then(|b| b.as_u64())).sum())
        .unwrap_or(0);
    Ok(BatchDetail {
        tenant: r.text("tenant")?,
        batch_id: r.text("batch_id")?,
        state: r.text("state")?,
        detail: r.opt_text("detail")?,
        files: r.int("files")?,
        rows: r.int("rows")?,
        attempts: r.int("attempts")?,
        compressed_bytes,
        connector_version: m.get("connector_version").and_then(|v| v.as_str()).unwrap_or("").chars().take(64).collect(),
        extract_started: parse_time(time("extract_started")),
        extract_finished: parse_time(time("extract_finished")),
        completed_at: parse_time(r.opt_text("created_at")?),
        relayed_at: parse_time(r.opt_text("relayed_at")?),
        judged_at: parse_time(r.opt_text("judged_at")?),
        updated_at: parse_time(r.opt_text("updated_at")?),
    })
}

/// The latest batch of every tenant that has one.
pub async fn last_batches(db: &Db) -> sqlx::Result<Vec<BatchDetail>> {
    on!(db, pool => {
        let rows = sqlx::query(
            "SELECT * FROM batches b WHERE b.batch_id = (SELECT MAX(batch_id) FROM batches WHERE tenant = b.tenant)",
        )
        .fetch_all(pool)
        .await?;
        rows.iter().map(batch_detail).collect()
    })
}

/// A tenant's batches, newest first.
pub async fn batch_details(db: &Db, tenant: &str, limit: i64) -> sqlx::Result<Vec<BatchDetail>> {
    on!(db, pool => {
        let rows = sqlx::query("SELECT * FROM batches WHERE tenant = $1 ORDER BY batch_id DESC LIMIT $2")
            .bind(tenant)
            .bind(limit)
            .fetch_all(pool)
            .await?;
        rows.iter().map(batch_detail).collect()
    })
}

// ---- metrics ----------------------------------------------------------------------------------------------

/// Batches per state: (state, count).
pub async fn batch_state_counts(db: &Db) -> sqlx::Result<Vec<(String, i64)>> {
    on!(db, pool => {
        sqlx::query_as::<_, (String, i64)>("SELECT state, COUNT(*) AS n FROM batches GROUP BY state").fetch_all(pool).await
    })
}

/// (downstream files not yet delivered, compressed bytes of those delivered).
pub async fn download_totals(db: &Db) -> sqlx::Result<(i64, i64)> {
    // CAST: PostgreSQL sums BIGINTs as NUMERIC
    on!(db, pool => {
        sqlx::query_as::<_, (i64, i64)>(
            "SELECT CAST(COALESCE(SUM(CASE WHEN state != 'delivered' THEN 1 ELSE 0 END), 0) AS BIGINT) AS waiting,
                    CAST(COALESCE(SUM(CASE WHEN state = 'delivered' THEN compressed_bytes ELSE 0 END), 0) AS BIGINT)
                    AS down
             FROM downloads",
        )
        .fetch_one(pool)
        .await
    })
}

/// Each tenant's last imported batch time (RFC 3339), oldest first, at most `limit` tenants.
pub async fn last_imports(db: &Db, limit: i64) -> sqlx::Result<Vec<(String, String)>> {
    on!(db, pool => {
        sqlx::query_as::<_, (String, String)>(
            "SELECT tenant, MAX(updated_at) AS last FROM batches WHERE state = 'imported' GROUP BY tenant
             ORDER BY last ASC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(pool)
        .await
    })
}

// ---- several replicas on one PostgreSQL (docs/scale-out.md) -------------------------------------------------

/// Claim the downstream work of `tenant` (fetching its files from the App, telling the App their progress) for
/// this replica, as [`claim_relay`] does for the relay: None while another replica holds it. Released with
/// [`RelayClaim::release`], or when the replica stops or dies (its connection closes).
pub async fn claim_downstream(db: &Db, tenant: &str) -> sqlx::Result<Option<RelayClaim>> {
    claim(db, "downstream", tenant).await
}

/// The ids of `tenant`'s files still to fetch, read again after a claim (the worker's list may be stale: another
/// replica may have fetched some meanwhile).
pub async fn fetching_file_ids(db: &Db, tenant: &str) -> sqlx::Result<std::collections::HashSet<String>> {
    on!(db, pool => {
        let ids: Vec<String> = sqlx::query_scalar("SELECT file_id FROM downloads WHERE tenant = $1 AND state = 'fetching'")
            .bind(tenant)
            .fetch_all(pool)
            .await?;
        Ok(ids.into_iter().collect())
    })
}

/// The replay cache of signed calls shared by every replica: records (signing key, nonce) until `expires_at`
/// (unix seconds) and says whether this is its first use. One atomic insert: of two replicas shown the same
/// signed call at once, exactly one sees `true`.
pub async fn first_use_of_nonce(db: &Db, keyid: &str, nonce: &str, expires_at: i64) -> sqlx::Result<bool> {
    on!(db, pool => {
        let r = sqlx::query("INSERT INTO used_nonces(keyid, nonce, expires_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
            .bind(keyid)
            .bind(nonce)
            .bind(expires_at)
            .execute(pool)
            .await?;
        Ok(r.rows_affected() == 1)
    })
}

/// Forget the nonces whose signatures can no longer be accepted anyway. Returns how many were removed.
pub async fn sweep_nonces(db: &Db, now: i64) -> sqlx::Result<u64> {
    on!(db, pool => {
        let r = sqlx::query("DELETE FROM used_nonces WHERE expires_at < $1").bind(now).execute(pool).await?;
        Ok(r.rows_affected())
    })
}

/// The PostgreSQL channel on which a file put on a download list is announced (payload: the tenant), by the
/// trigger of migration 0008.
pub const DOWNLOADS_CHANNEL: &str = "ferry_downloads";

/// A listener on [`DOWNLOADS_CHANNEL`] over a connection of its own (not one of the pool's: a LISTEN must not
/// follow a connection back into the pool). None on SQLite (one server: its own worker wakes its long-polls).
pub async fn listen_downloads(db: &Db) -> sqlx::Result<Option<sqlx::postgres::PgListener>> {
    let Db::Postgres(pool) = db else { return Ok(None) };
    let own = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        .connect_lazy_with((*pool.connect_options()).clone());
    let mut l = sqlx::postgres::PgListener::connect_with(&own).await?;
    l.listen(DOWNLOADS_CHANNEL).await?;
    Ok(Some(l))
}

// ---- scratch databases (tests, benchmarks) ------------------------------------------------------------------

/// Create a new, empty PostgreSQL database `ferry_comms_<random>` on the server of `url` (whose role needs
/// CREATEDB) and return the URL of it (same role, password and TLS settings). For tests and benchmarks that each
/// want a clean Comms database: `FERRY_TEST_COMMS_DB=postgres://...` makes the in-process cluster use one.
pub async fn create_scratch_postgres(url: &str) -> anyhow::Result<String> {
    use sqlx::Connection;
    let shown = redact_url(url);
    let mut conn = sqlx::PgConnection::connect(url)
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to {shown} to create a scratch database: {e}"))?;
    // identifiers cannot be bound: the name is made of [0-9a-f_] only, here
    let name = format!("ferry_comms_{}", hex::encode(rand::random::<[u8; 8]>()));
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .map_err(|e| anyhow::anyhow!("cannot create a scratch database on {shown}: {e}"))?;
    conn.close().await.ok();
    let mut u = url::Url::parse(url)?;
    u.set_path(&format!("/{name}"));
    Ok(u.to_string())
}
