//! The downstream outbox of an instance: files the App created for its tenant's ERP (recommended orders from
//! the planner, reports, files an operator publishes). Each file is copied under
//! `<data_dir>/sftp/<tenant>/outbox/<file_id>/<name>` (where the Comms server fetches it over SFTP) and recorded
//! in the instance's `outbox` table with its digests; its receipt then moves `created -> relayed -> delivered`
//! as the Comms server reports back. Announcing a file to Comms is retried until it succeeds.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use ferry_proto::api::{FileId, FileProgress, FileReady, FileReceipt, FileState, valid_file_name};
use sqlx::Row;

use crate::instance::Instance;

pub(crate) async fn ensure_schema(inst: &Instance) -> sqlx::Result<()> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS outbox (
            file_id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, bytes INTEGER NOT NULL, md5 TEXT NOT NULL,
            sha256 TEXT NOT NULL, state TEXT NOT NULL, announced INTEGER NOT NULL DEFAULT 0,
            created_at TEXT NOT NULL, relayed_at TEXT, delivered_at TEXT, detail TEXT)",
    )
    .execute(inst.pool())
    .await?;
    sqlx::query("CREATE TABLE IF NOT EXISTS sequences (prefix TEXT PRIMARY KEY, next INTEGER NOT NULL)")
        .execute(inst.pool())
        .await?;
    Ok(())
}

/// Reserve `count` consecutive numbers of the per-tenant sequence `prefix` (`po`, `rp`...); returns the first.
pub async fn reserve_sequence(inst: &Instance, prefix: &str, count: u64) -> anyhow::Result<u64> {
    ensure_schema(inst).await?;
    let mut tx = inst.pool().begin().await?;
    let first = reserve_sequence_in(&mut tx, prefix, count).await?;
    tx.commit().await?;
    Ok(first)
}

/// [`reserve_sequence`] inside the caller's transaction (the schema must exist: [`ensure_schema`]).
pub(crate) async fn reserve_sequence_in(
    conn: &mut sqlx::SqliteConnection,
    prefix: &str,
    count: u64,
) -> anyhow::Result<u64> {
    sqlx::query("INSERT INTO sequences(prefix, next) VALUES (?, 1) ON CONFLICT DO NOTHING")
        .bind(prefix)
        .execute(&mut *conn)
        .await?;
    let first: i64 =
        sqlx::query_scalar("SELECT next FROM sequences WHERE prefix = ?").bind(prefix).fetch_one(&mut *conn).await?;
    sqlx::query("UPDATE sequences SET next = next + ? WHERE prefix = ?")
        .bind(i64::try_from(count)?)
        .bind(prefix)
        .execute(&mut *conn)
        .await?;
    Ok(u64::try_from(first)?)
}

/// The id of the outbox file named `name`, if one was published.
pub(crate) async fn file_id_by_name(inst: &Instance, name: &str) -> anyhow::Result<Option<String>> {
    ensure_schema(inst).await?;
    Ok(sqlx::query_scalar("SELECT file_id FROM outbox WHERE name = ?").bind(name).fetch_optional(inst.pool()).await?)
}

/// Copy `src` into the outbox as `name` and record it (`created`). The caller then announces it to Comms.
pub async fn publish(
    inst: &Instance,
    tenant: &str,
    sftp_root: &Path,
    src: &Path,
    name: &str,
) -> anyhow::Result<FileReady> {
    if !valid_file_name(name) {
        bail!("{name:?} is not a valid downstream file name: use 1-64 of a-z, 0-9, '_', '-', '.'");
    }
    ensure_schema(inst).await?;
    let exists = sqlx::query("SELECT 1 FROM outbox WHERE name = ?").bind(name).fetch_optional(inst.pool()).await?;
    if exists.is_some() {
        bail!("a file named {name} was already published to this tenant; give it another name");
    }
    let file_id = FileId::new(Utc::now());
    let dir = outbox_dir(sftp_root, tenant).join(file_id.as_str());
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let (src2, dst, part) = (src.to_path_buf(), dir.join(name), dir.join(format!(".{name}.part")));
    let digests = tokio::task::spawn_blocking(move || -> anyhow::Result<ferry_io::digest::Digests> {
        let mut input = std::fs::File::open(&src2).with_context(|| format!("cannot read {}", src2.display()))?;
        let mut w = ferry_io::digest::HashingWriter::new(std::fs::File::create(&part)?);
        std::io::copy(&mut input, &mut w)?;
        w.flush()?;
        let (f, d) = w.finish();
        f.sync_all()?;
        std::fs::rename(&part, &dst)?;
        Ok(d)
    })
    .await?
    .map_err(|e| {
        let _ = std::fs::remove_file(dir.join(format!(".{name}.part")));
        ferry_io::retry::disk_full(e, &dir)
    })?;
    // the announcer's marker, before the row (a crash after the commit still leaves it) and again after it (an
    // announcer that took the first marker before the row was there must look again)
    let mark = |when: &str| {
        if let Err(e) = mark_for_announcement(inst.path()) {
            tracing::warn!("cannot leave the announcement marker {when} {name}: {e}; the hourly scan announces it");
        }
    };
    mark("before recording");
    sqlx::query(
        "INSERT INTO outbox(file_id, name, bytes, md5, sha256, state, created_at) VALUES (?, ?, ?, ?, ?, 'created', ?)",
    )
    .bind(file_id.as_str())
    .bind(name)
    .bind(digests.bytes as i64)
    .bind(&digests.md5)
    .bind(&digests.sha256)
    .bind(Utc::now().to_rfc3339())
    .execute(inst.pool())
    .await?;
    mark("after recording");
    Ok(FileReady {
        tenant: tenant.to_string(),
        file_id,
        name: name.to_string(),
        bytes: digests.bytes,
        md5: digests.md5,
        sha256: digests.sha256,
    })
}

/// The marker that says the instance at `instance_path` has files to announce: `<instances>/announce/<tenant>`.
/// The announcer lists only this folder, so thousands of quiet instances cost nothing between full scans.
pub fn announce_marker(instance_path: &Path) -> Option<PathBuf> {
    let tenant = instance_path.file_stem()?;
    Some(instance_path.parent()?.join("announce").join(tenant))
}

pub fn mark_for_announcement(instance_path: &Path) -> std::io::Result<()> {
    let Some(marker) = announce_marker(instance_path) else { return Ok(()) };
    if let Some(dir) = marker.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(marker, b"")
}

pub fn outbox_dir(sftp_root: &Path, tenant: &str) -> PathBuf {
    sftp_root.join(tenant).join("outbox")
}

/// Files not yet announced to Comms.
pub async fn unannounced(inst: &Instance, tenant: &str) -> anyhow::Result<Vec<FileReady>> {
    ensure_schema(inst).await?;
    let rows = sqlx::query("SELECT file_id, name, bytes, md5, sha256 FROM outbox WHERE announced = 0 ORDER BY file_id")
        .fetch_all(inst.pool())
        .await?;
    let mut out = Vec::new();
    for r in rows {
        let id: String = r.get(0);
        out.push(FileReady {
            tenant: tenant.to_string(),
            file_id: FileId::parse(&id)?,
            name: r.get(1),
            bytes: r.get::<i64, _>(2) as u64,
            md5: r.get(3),
            sha256: r.get(4),
        });
    }
    Ok(out)
}

/// Files of the outbox not yet delivered to the Connector (the App's `outbox_queue_depth` metric).
pub async fn pending(inst: &Instance) -> anyhow::Result<i64> {
    ensure_schema(inst).await?;
    Ok(sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE state != 'delivered'").fetch_one(inst.pool()).await?)
}

pub async fn mark_announced(inst: &Instance, id: &FileId) -> anyhow::Result<()> {
    sqlx::query("UPDATE outbox SET announced = 1 WHERE file_id = ?").bind(id.as_str()).execute(inst.pool()).await?;
    Ok(())
}

/// [`mark_announced`] for many files in one transaction.
pub async fn mark_announced_many(inst: &Instance, ids: &[FileId]) -> anyhow::Result<()> {
    let mut tx = inst.pool().begin().await?;
    for id in ids {
        sqlx::query("UPDATE outbox SET announced = 1 WHERE file_id = ?").bind(id.as_str()).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Record progress reported by Comms. Returns false if the file is unknown.
pub async fn set_progress(inst: &Instance, id: &FileId, p: &FileProgress) -> anyhow::Result<bool> {
    ensure_schema(inst).await?;
    let mut conn = inst.pool().acquire().await?;
    set_progress_in(&mut conn, id, p).await
}

/// [`set_progress`] for many files in one transaction; per file, whether the outbox holds it.
pub async fn set_progress_many(inst: &Instance, files: &[(FileId, FileProgress)]) -> anyhow::Result<Vec<bool>> {
    ensure_schema(inst).await?;
    let mut tx = inst.pool().begin().await?;
    let mut out = Vec::with_capacity(files.len());
    for (id, p) in files {
        out.push(set_progress_in(&mut tx, id, p).await?);
    }
    tx.commit().await?;
    Ok(out)
}

async fn set_progress_in(conn: &mut sqlx::SqliteConnection, id: &FileId, p: &FileProgress) -> anyhow::Result<bool> {
    let at = p.at.to_rfc3339();
    let q = match p.state {
        FileState::Relayed => {
            "UPDATE outbox SET state = CASE WHEN state = 'delivered' THEN state ELSE 'relayed' END, relayed_at = COALESCE(relayed_at, ?), announced = 1 WHERE file_id = ?"
        }
        FileState::Delivered => {
            "UPDATE outbox SET state = 'delivered', delivered_at = COALESCE(delivered_at, ?), announced = 1 WHERE file_id = ?"
        }
        _ => "UPDATE outbox SET announced = 1, detail = COALESCE(?, detail) WHERE file_id = ?",
    };
    let bind_at =
        if matches!(p.state, FileState::Relayed | FileState::Delivered) { Some(at) } else { p.detail.clone() };
    let r = sqlx::query(q).bind(bind_at).bind(id.as_str()).execute(&mut *conn).await?;
    Ok(r.rows_affected() == 1)
}

fn time(s: Option<String>) -> Option<DateTime<Utc>> {
    s.and_then(|s| DateTime::parse_from_rfc3339(&s).ok()).map(|d| d.with_timezone(&Utc))
}

/// Receipts of every file this instance created, newest first.
pub async fn receipts(inst: &Instance) -> anyhow::Result<Vec<FileReceipt>> {
    ensure_schema(inst).await?;
    let rows = sqlx::query(
        "SELECT file_id, name, state, created_at, relayed_at, delivered_at, detail FROM outbox ORDER BY file_id DESC",
    )
    .fetch_all(inst.pool())
    .await?;
    let mut out = Vec::new();
    for r in rows {
        let id: String = r.get(0);
        let state: String = r.get(2);
        out.push(FileReceipt {
            file_id: FileId::parse(&id)?,
            name: r.get(1),
            state: FileState::parse(&state).unwrap_or(FileState::Created),
            created_at: time(r.get(3)).unwrap_or_default(),
            relayed_at: time(r.get(4)),
            delivered_at: time(r.get(5)),
            detail: r.get(6),
        });
    }
    Ok(out)
}
