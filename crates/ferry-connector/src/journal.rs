//! The Connector's local journal (SQLite): each batch's progress, so `sync` after a crash resumes the batch it
//! had extracted instead of extracting a new one, and never completes the same batch twice; each downstream
//! file received ([`ReceivedFile`]), so a file applied to the ERP is never applied again, only acknowledged; and
//! the watermark of each incremental file ([`Watermark`]): how far the App's instance is known to be complete.
//!
//! **Invariant**: a watermark moves only when the App has imported a batch carrying the file. A batch journals
//! the watermarks it would set ([`PlannedWatermark`]) when it is extracted; [`Journal::advance_watermarks`] applies
//! them once its verdict is `imported`, never for a batch that failed, was refused or is still on its way, and
//! never moves a watermark back to an older batch.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use ferry_proto::batch::BatchId;
use ferry_proto::manifest::Manifest;
use serde::{Deserialize, Serialize};
use sqlx::{Row, SqlitePool};

pub use crate::mapping::Watermark;

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
        let options = ferry_io::sqlite::Options {
            max_connections: 2,
            busy_timeout: Duration::from_secs(10),
            create_folder: true,
            ..Default::default()
        };
        let pool = ferry_io::sqlite::open(path, &options)
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

    /// When the newest batch the Comms server accepted was extracted (its `created_at`: journaled right after the
    /// extract), whether a manual `sync` or `run` sent it; `None` if no batch was ever sent. A batch only
    /// extracted (`extracted`: not yet accepted) does not count; one the App rejected does — it was sent. `run`
    /// decides from this whether the day's extract is done ([`crate::receive`]).
    pub async fn last_sent_extract(&self) -> anyhow::Result<Option<DateTime<Utc>>> {
        let row: Option<String> = sqlx::query_scalar(
            "SELECT created_at FROM batches WHERE state <> 'extracted' ORDER BY batch_id DESC LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        row.map(|t| {
            DateTime::parse_from_rfc3339(&t)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| anyhow::anyhow!("the journal has a batch with a bad time {t:?}: {e}"))
        })
        .transpose()
    }

    pub async fn get(&self, id: &BatchId) -> anyhow::Result<Option<JournalBatch>> {
        let row = sqlx::query("SELECT manifest, state, detail FROM batches WHERE batch_id = ?")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| to_batch(&r)).transpose()
    }
}

/// The watermark one incremental file gets when the App imports the batch that carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedWatermark {
    pub file: String,
    pub column: String,
    pub fingerprint: String,
    /// The date of the extract.
    pub through: NaiveDate,
    /// Was the file extracted whole (then it also becomes the date of the last full extract)?
    pub full: bool,
}

impl Journal {
    /// The watermark of every incremental file the App has imported at least once, by file name.
    pub async fn watermarks(&self) -> anyhow::Result<BTreeMap<String, Watermark>> {
        let rows = sqlx::query("SELECT file, column_name, fingerprint, through, last_full FROM watermarks")
            .fetch_all(&self.pool)
            .await?;
        let mut out = BTreeMap::new();
        for r in rows {
            let file: String = r.try_get(0)?;
            let date = |i: usize| -> anyhow::Result<NaiveDate> {
                let t: String = r.try_get(i)?;
                NaiveDate::parse_from_str(&t, "%Y-%m-%d").map_err(|e| {
                    anyhow::anyhow!("the journal's watermark of {file} has a bad date {t:?}: {e}; run `sync --full`")
                })
            };
            let wm =
                Watermark { column: r.try_get(1)?, fingerprint: r.try_get(2)?, through: date(3)?, last_full: date(4)? };
            out.insert(file, wm);
        }
        Ok(out)
    }

    /// Remember the watermarks batch `id` sets once imported. The batch must be journaled already.
    pub async fn plan_watermarks(&self, id: &BatchId, plan: &[PlannedWatermark]) -> anyhow::Result<()> {
        let json = (!plan.is_empty()).then(|| serde_json::to_string(plan)).transpose()?;
        let done = sqlx::query("UPDATE batches SET watermarks = ? WHERE batch_id = ?")
            .bind(json)
            .bind(id.as_str())
            .execute(&self.pool)
            .await?;
        anyhow::ensure!(done.rows_affected() == 1, "batch {id} is not in the journal; journal it before its plan");
        Ok(())
    }

    /// The App imported batch `id`: move the watermarks it planned (in one transaction). A file whose watermark
    /// was set by a batch extracted later keeps it. Returns the files whose watermark moved.
    pub async fn advance_watermarks(&self, id: &BatchId) -> anyhow::Result<Vec<String>> {
        let mut tx = self.pool.begin().await?;
        let row: Option<(Option<String>, String)> =
            sqlx::query_as("SELECT watermarks, manifest FROM batches WHERE batch_id = ?")
                .bind(id.as_str())
                .fetch_optional(&mut *tx)
                .await?;
        let Some((Some(plan), manifest)) = row else {
            return Ok(Vec::new());
        };
        let damaged = |e: serde_json::Error| anyhow::anyhow!("the journal's record of batch {id} is damaged: {e}");
        let plan: Vec<PlannedWatermark> = serde_json::from_str(&plan).map_err(damaged)?;
        let manifest: Manifest = serde_json::from_str(&manifest).map_err(damaged)?;
        // Fixed width, so that text order is time order.
        let extracted_at = manifest.extract_started.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
        let now = Utc::now().to_rfc3339();
        let mut moved = Vec::new();
        for p in &plan {
            let through = p.through.format("%Y-%m-%d").to_string();
            let done = sqlx::query(
                "INSERT INTO watermarks(file, column_name, fingerprint, through, last_full, batch_id, extracted_at,
                     updated_at)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                 ON CONFLICT(file) DO UPDATE SET column_name = excluded.column_name,
                     fingerprint = excluded.fingerprint, through = excluded.through,
                     last_full = CASE WHEN ? THEN excluded.last_full ELSE watermarks.last_full END,
                     batch_id = excluded.batch_id, extracted_at = excluded.extracted_at,
                     updated_at = excluded.updated_at
                 WHERE excluded.extracted_at > watermarks.extracted_at",
            )
            .bind(&p.file)
            .bind(&p.column)
            .bind(&p.fingerprint)
            .bind(&through)
            .bind(&through)
            .bind(id.as_str())
            .bind(&extracted_at)
            .bind(&now)
            .bind(p.full)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() > 0 {
                moved.push(p.file.clone());
            }
        }
        tx.commit().await?;
        Ok(moved)
    }

    /// Batches the Comms server accepted whose final verdict (imported or rejected) this journal has not seen.
    pub async fn awaiting_verdict(&self) -> anyhow::Result<Vec<JournalBatch>> {
        let rows = sqlx::query(
            "SELECT manifest, state, detail FROM batches WHERE state = 'completed' ORDER BY batch_id LIMIT 20",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(to_batch).collect()
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
        self.mark_applied_many(&[(id.to_string(), name.to_string(), sha256.to_string())]).await
    }

    /// [`mark_applied`](Self::mark_applied) for several files `(id, name, sha256)` in **one** transaction (one
    /// commit instead of one per file). Call it only for files delivered already, before their acknowledgement.
    pub async fn mark_applied_many(&self, files: &[(String, String, String)]) -> anyhow::Result<()> {
        if files.is_empty() {
            return Ok(());
        }
        let now = Utc::now().to_rfc3339();
        let mut tx = self.pool.begin().await?;
        for (id, name, sha256) in files {
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
            .bind(&now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// [`mark_acked`](Self::mark_acked) for several files in **one** transaction: all of them or (on an error,
    /// e.g. a file that was never applied) none.
    pub async fn mark_acked_many(&self, ids: &[String]) -> anyhow::Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let now = Utc::now().to_rfc3339();
        let mut tx = self.pool.begin().await?;
        for id in ids {
            let done = sqlx::query(
                "UPDATE received SET state = 'acked', acked_at = ? WHERE file_id = ? AND state = 'applied'",
            )
            .bind(&now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() == 0 {
                let state: Option<String> = sqlx::query_scalar("SELECT state FROM received WHERE file_id = ?")
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?;
                match state.as_deref() {
                    Some("acked") => {}
                    Some(other) => anyhow::bail!(
                        "cannot mark downstream file {id} acknowledged: it is {other}, not applied; deliver it first"
                    ),
                    None => anyhow::bail!(
                        "cannot mark downstream file {id} acknowledged: the journal has no record of it; deliver it \
                         first"
                    ),
                }
            }
        }
        tx.commit().await?;
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
    let file_id: String = r.try_get(0)?;
    let state: String = r.try_get(3)?;
    let time = |i: usize| -> anyhow::Result<Option<DateTime<Utc>>> {
        r.try_get::<Option<String>, _>(i)?
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
        name: r.try_get(1)?,
        sha256: r.try_get(2)?,
        attempts: r.try_get(4)?,
        error: r.try_get(5)?,
        applied_at: time(6)?,
        acked_at: time(7)?,
        file_id,
    })
}

fn to_batch(r: &sqlx::sqlite::SqliteRow) -> anyhow::Result<JournalBatch> {
    let m: String = r.try_get(0)?;
    Ok(JournalBatch { manifest: serde_json::from_str(&m)?, state: r.try_get(1)?, detail: r.try_get(2)? })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 3, d).unwrap()
    }

    fn manifest(n: u32) -> Manifest {
        let now = Utc::now();
        Manifest {
            batch_id: BatchId::parse(&format!("20260310T0{n}0000Z-0000000{n}")).unwrap(),
            tenant: String::new(),
            spec_version: ferry_proto::SPEC_VERSION.into(),
            connector_version: "test".into(),
            mode: ferry_proto::manifest::Mode::Full,
            extract_started: now,
            extract_finished: now,
            files: Vec::new(),
        }
    }

    fn plan(through: NaiveDate, full: bool) -> Vec<PlannedWatermark> {
        vec![PlannedWatermark {
            file: "sales.csv".into(),
            column: "invoice_date".into(),
            fingerprint: "fp".into(),
            through,
            full,
        }]
    }

    #[tokio::test]
    async fn a_page_is_journaled_applied_then_acked_in_one_commit_each() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(&dir.path().join("journal.db")).await.unwrap();
        let file = |n: u32| (format!("F{n}"), format!("po_{n:06}.csv"), format!("sha{n}"));
        // F2 failed once before: applying it counts the attempt and clears the error
        j.mark_failed("F2", "po_000002.csv", "sha2", "locked").await.unwrap();
        j.mark_applied_many(&[file(1), file(2), file(3)]).await.unwrap();
        for id in ["F1", "F2", "F3"] {
            assert_eq!(j.received(id).await.unwrap().unwrap().state, ReceivedState::Applied, "{id}");
        }
        let f2 = j.received("F2").await.unwrap().unwrap();
        assert_eq!((f2.attempts, f2.error), (2, None));
        assert_eq!(j.pending_acks().await.unwrap().len(), 3);
        // an ack of a file never applied fails the whole group: nothing of it is recorded
        let e = j.mark_acked_many(&["F1".into(), "F9".into()]).await.unwrap_err().to_string();
        assert!(e.contains("F9") && e.contains("no record"), "{e}");
        assert_eq!(j.received("F1").await.unwrap().unwrap().state, ReceivedState::Applied);
        j.mark_acked_many(&["F1".into(), "F2".into(), "F3".into()]).await.unwrap();
        assert!(j.pending_acks().await.unwrap().is_empty());
        // acking again changes nothing; an acked file never goes back to applied
        j.mark_acked_many(&["F1".into()]).await.unwrap();
        j.mark_applied_many(&[file(1)]).await.unwrap();
        let f1 = j.received("F1").await.unwrap().unwrap();
        assert_eq!((f1.state, f1.attempts), (ReceivedState::Acked, 1));
        j.mark_applied_many(&[]).await.unwrap();
        j.mark_acked_many(&[]).await.unwrap();
    }

    #[tokio::test]
    async fn watermarks_move_only_on_import_and_never_back() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(&dir.path().join("journal.db")).await.unwrap();
        assert!(j.watermarks().await.unwrap().is_empty());

        // batch 1: full on day 10, extracted and sent: nothing moves until it is imported
        let (m1, m2, m3) = (manifest(1), manifest(2), manifest(3));
        j.record(&m1, "extracted", None).await.unwrap();
        j.plan_watermarks(&m1.batch_id, &plan(day(10), true)).await.unwrap();
        j.record(&m1, "completed", None).await.unwrap();
        assert!(j.watermarks().await.unwrap().is_empty());
        assert_eq!(j.awaiting_verdict().await.unwrap().len(), 1);
        assert_eq!(j.advance_watermarks(&m1.batch_id).await.unwrap(), vec!["sales.csv"]);
        let wm = &j.watermarks().await.unwrap()["sales.csv"];
        assert_eq!((wm.through, wm.last_full, wm.column.as_str()), (day(10), day(10), "invoice_date"));

        // batch 3 (a window on day 12) is imported before the older batch 2 (a full on day 11) reports back
        j.record(&m2, "extracted", None).await.unwrap();
        j.plan_watermarks(&m2.batch_id, &plan(day(11), true)).await.unwrap();
        j.record(&m3, "extracted", None).await.unwrap();
        j.plan_watermarks(&m3.batch_id, &plan(day(12), false)).await.unwrap();
        assert_eq!(j.advance_watermarks(&m3.batch_id).await.unwrap(), vec!["sales.csv"]);
        let wm = &j.watermarks().await.unwrap()["sales.csv"];
        assert_eq!((wm.through, wm.last_full), (day(12), day(10)), "a window keeps the date of the last full");
        assert!(j.advance_watermarks(&m2.batch_id).await.unwrap().is_empty(), "an older batch never moves it back");
        assert_eq!(j.watermarks().await.unwrap()["sales.csv"].through, day(12));

        // a batch without a plan, or unknown, moves nothing; a plan needs a journaled batch
        let m4 = manifest(4);
        j.record(&m4, "extracted", None).await.unwrap();
        j.plan_watermarks(&m4.batch_id, &[]).await.unwrap();
        assert!(j.advance_watermarks(&m4.batch_id).await.unwrap().is_empty());
        assert!(j.advance_watermarks(&manifest(5).batch_id).await.unwrap().is_empty());
        assert!(j.plan_watermarks(&manifest(6).batch_id, &plan(day(13), true)).await.is_err());
    }
}
