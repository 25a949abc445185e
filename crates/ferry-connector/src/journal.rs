//! The Connector's local journal (SQLite): each batch's progress, so `sync` after a crash resumes the batch it
//! had extracted instead of extracting a new one, and never completes the same batch twice.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use chrono::Utc;
use ferry_proto::batch::BatchId;
use ferry_proto::manifest::Manifest;
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
            .map_err(|e| {
                anyhow::anyhow!("cannot open the connector journal {}: {e}", path.display())
            })?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Journal { pool })
    }

    pub async fn record(
        &self,
        m: &Manifest,
        state: &str,
        detail: Option<&str>,
    ) -> anyhow::Result<()> {
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
        let row = sqlx::query("SELECT manifest, state, detail FROM batches WHERE state = 'extracted' ORDER BY batch_id LIMIT 1")
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| to_batch(&r)).transpose()
    }

    pub async fn recent(&self, limit: i64) -> anyhow::Result<Vec<JournalBatch>> {
        let rows = sqlx::query(
            "SELECT manifest, state, detail FROM batches ORDER BY batch_id DESC LIMIT ?",
        )
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

fn to_batch(r: &sqlx::sqlite::SqliteRow) -> anyhow::Result<JournalBatch> {
    let m: String = r.get(0);
    Ok(JournalBatch {
        manifest: serde_json::from_str(&m)?,
        state: r.get(1),
        detail: r.get(2),
    })
}
