//! The Connector's local journal (SQLite): each batch's progress, so `sync` after a crash resumes the batch it
//! had extracted instead of extracting a new one, and never completes the same batch twice; and each downstream
//! file received ([`ReceivedFile`]), so a file applied to the ERP is never applied again, only acknowledged.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ferry_proto::batch::BatchId;
use ferry_proto::manifest::Manifest;
use serde::Serialize;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{Row, SqlitePool};

pub struct Journal {
    pool: SqlitePool,
}

#[derive(Debug, Clone)]
pub struct JournalBatch {
    pub manifest: Manifest,
    pub state: String,
    pub detail: Option<String>,
}

impl Journal {
    pub async fn open(path: &Path) -> anyhow::Result<Journal> {
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d)?;
        }
        let opts = SqliteConnectOptions::from_str("sqlite:")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(opts)
            .await
            .map_err(|e| anyhow::anyhow!("cannot open the connector journal {}: {e}", path.display()))?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Journal { pool })
    }

    pub async fn record(&self, m: &Manifest, state: &str, detail: Option<&str>) -> anyhow::Result<()> {
        let now = Utc::now().to_rfc3339();
        sqlx::query(
            "INSERT INTO batches(batch_id, state, detail, manifest, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)
             ON CONFLICT(batch_id) DO UPDATE SET state = excluded.state, detail = excluded.detail,
             updated_at = excluded.updated_at",
        )
        .bind(m.batch_id.as_str())
        .bind(state)
        .bind(detail)
        .bind(serde_json::to_string(m)?)
        .bind(&now)
        .bind(&now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The oldest batch extracted but not yet accepted by the Comms server.
    pub async fn unfinished(&self) -> anyhow::Result<Option<JournalBatch>> {
        let row = sqlx::query(
            "SELECT manifest, state, detail FROM batches WHERE state = 'extracted' ORDER BY batch_id LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| to_batch(&r)).transpose()
    }

    pub async fn recent(&self, limit: i64) -> anyhow::Result<Vec<JournalBatch>> {
        let rows = sqlx::query("SELECT manifest, state, detail FROM batches ORDER BY batch_id DESC LIMIT ?")
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(to_batch).collect()
    }

    pub async fn get(&self, id: &BatchId) -> anyhow::Result<Option<JournalBatch>> {
        let row = sqlx::query("SELECT manifest, state, detail FROM batches WHERE batch_id = ?")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| to_batch(&r)).transpose()
    }
}

/// Where a downstream file stands on this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReceivedState {
    /// Delivered into the ERP; the acknowledgement to the Comms server is still due.
    Applied,
    /// Delivered and acknowledged.
    Acked,
    /// Delivery failed (see `error`); it will be tried again.
    Failed,
}

impl ReceivedState {
    pub fn as_str(self) -> &'static str {
        match self {
            ReceivedState::Applied => "applied",
            ReceivedState::Acked => "acked",
            ReceivedState::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Option<ReceivedState> {
        match s {
            "applied" => Some(ReceivedState::Applied),
            "acked" => Some(ReceivedState::Acked),
            "failed" => Some(ReceivedState::Failed),
            _ => None,
        }
    }
}

/// So `file.state == "applied"` reads naturally; prefer [`ReceivedFile::is_applied`] for the never-twice rule.
impl PartialEq<&str> for ReceivedState {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// One downstream file in the journal (table `received`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReceivedFile {
    pub file_id: String,
    pub name: String,
    /// SHA-256 of the plain file (as applied, once applied).
    pub sha256: String,
    pub state: ReceivedState,
    /// Delivery attempts so far, the successful one included.
    pub attempts: i64,
    /// The last delivery error, while the state is `failed`.
    pub error: Option<String>,
    pub applied_at: Option<DateTime<Utc>>,
    pub acked_at: Option<DateTime<Utc>>,
}

impl ReceivedFile {
    /// Applied or acked: this file must never be applied again, only (re-)acknowledged.
    pub fn is_applied(&self) -> bool {
        matches!(self.state, ReceivedState::Applied | ReceivedState::Acked)
    }
}

const RECEIVED_COLUMNS: &str = "file_id, name, sha256, state, attempts, error, applied_at, acked_at";

impl Journal {
    /// The journal entry of downstream file `id`, if it was ever tried.
    pub async fn received(&self, id: &str) -> anyhow::Result<Option<ReceivedFile>> {
        let row =
            sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {RECEIVED_COLUMNS} FROM received WHERE file_id = ?")))
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        row.map(|r| to_received(&r)).transpose()
    }

    /// Records that file `id` was delivered into the ERP (counts as one more attempt and clears the error). A file
    /// already applied or acked keeps its entry unchanged: it is never applied twice.
    pub async fn mark_applied(&self, id: &str, name: &str, sha256: &str) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO received(file_id, name, sha256, state, attempts, error, applied_at)
             VALUES (?, ?, ?, 'applied', 1, NULL, ?)
             ON CONFLICT(file_id) DO UPDATE SET name = excluded.name, sha256 = excluded.sha256,
                 state = 'applied', attempts = received.attempts + 1, error = NULL,
                 applied_at = excluded.applied_at
             WHERE received.state = 'failed'",
        )
        .bind(id)
        .bind(name)
        .bind(sha256)
        .bind(Utc::now().to_rfc3339())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records that the Comms server accepted the acknowledgement of file `id`. Acking an acked file changes
    /// nothing; acking a file that was never applied is an error (it would be lost).
    pub async fn mark_acked(&self, id: &str) -> anyhow::Result<()> {
        let done =
            sqlx::query("UPDATE received SET state = 'acked', acked_at = ? WHERE file_id = ? AND state = 'applied'")
                .bind(Utc::now().to_rfc3339())
                .bind(id)
                .execute(&self.pool)
                .await?;
        if done.rows_affected() == 0 {
            match self.received(id).await? {
                Some(f) if f.state == ReceivedState::Acked => {}
                Some(f) => anyhow::bail!(
                    "cannot mark downstream file {id} ({}) acknowledged: it is {}, not applied; deliver it first",
                    f.name,
                    f.state.as_str()
                ),
                None => anyhow::bail!(
                    "cannot mark downstream file {id} acknowledged: the journal has no record of it; deliver it first"
                ),
            }
        }
        Ok(())
    }

    /// Records a failed delivery attempt of file `id` (one more attempt, `error` kept for `status`). A file
    /// already applied or acked is left as it is: a later failure (e.g. of the acknowledgement) must not make
    /// it look undelivered.
    pub async fn mark_failed(&self, id: &str, name: &str, sha256: &str, error: &str) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO received(file_id, name, sha256, state, attempts, error)
             VALUES (?, ?, ?, 'failed', 1, ?)
             ON CONFLICT(file_id) DO UPDATE SET name = excluded.name, sha256 = excluded.sha256,
                 attempts = received.attempts + 1, error = excluded.error
             WHERE received.state = 'failed'",
        )
        .bind(id)
        .bind(name)
        .bind(sha256)
        .bind(error)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The `limit` most recent downstream files (by file id, newest first).
    pub async fn recent_received(&self, limit: i64) -> anyhow::Result<Vec<ReceivedFile>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {RECEIVED_COLUMNS} FROM received ORDER BY file_id DESC LIMIT ?"
        )))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(to_received).collect()
    }

    /// Files applied to the ERP whose acknowledgement the Comms server has not accepted yet (oldest first).
    pub async fn pending_acks(&self) -> anyhow::Result<Vec<ReceivedFile>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {RECEIVED_COLUMNS} FROM received WHERE state = 'applied' ORDER BY file_id"
        )))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(to_received).collect()
    }
}

fn to_received(r: &sqlx::sqlite::SqliteRow) -> anyhow::Result<ReceivedFile> {
    let file_id: String = r.get(0);
    let state: String = r.get(3);
    let time = |i: usize| -> anyhow::Result<Option<DateTime<Utc>>> {
        r.get::<Option<String>, _>(i)
            .map(|t| {
                DateTime::parse_from_rfc3339(&t)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|e| anyhow::anyhow!("the journal entry of file {file_id} has a bad time {t:?}: {e}"))
            })
            .transpose()
    };
    Ok(ReceivedFile {
        state: ReceivedState::parse(&state)
            .ok_or_else(|| anyhow::anyhow!("the journal entry of file {file_id} has an unknown state {state:?}"))?,
        name: r.get(1),
        sha256: r.get(2),
        attempts: r.get(4),
        error: r.get(5),
        applied_at: time(6)?,
        acked_at: time(7)?,
        file_id,
    })
}

fn to_batch(r: &sqlx::sqlite::SqliteRow) -> anyhow::Result<JournalBatch> {
    let m: String = r.get(0);
    Ok(JournalBatch { manifest: serde_json::from_str(&m)?, state: r.get(1), detail: r.get(2) })
}
