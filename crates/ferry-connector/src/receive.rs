//! Downstream on the ERP side: ask the Comms server for waiting files (long-poll), download each over SFTP,
//! decompress and verify it, deliver it into the ERP exactly once (`delivery`), record it in the journal, and
//! acknowledge it. A file the journal shows as applied is only acknowledged again, never re-applied; a failed
//! delivery is reported to Comms and retried on the next poll. `run` is the long-running agent: continuous
//! downstream plus the daily extract.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::{Local, NaiveDate};
use ferry_proto::api::{DownloadFile, FileAck, FileError};
use ferry_web::client::ApiClient;

use crate::agent::Connector;
use crate::delivery;
use crate::journal::Journal;

/// What happened to one offered file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Applied now, and acknowledged.
    Applied { name: String, inbound: Option<PathBuf>, sql_rows: u64 },
    /// Already applied before (e.g. the ack was lost): acknowledged again, not re-applied.
    AlreadyApplied { name: String },
    /// Could not be applied; reported to Comms, will be retried.
    Failed { name: String, error: String },
}

impl Connector {
    /// One round: re-send lost acks, wait up to `wait_secs` for files, apply and acknowledge each.
    pub async fn receive(&self, wait_secs: u64, progress: &(dyn Fn(&str) + Sync)) -> anyhow::Result<Vec<Outcome>> {
        let api = self.api()?;
        let journal = Journal::open(&self.cfg.journal_path()).await?;
        for r in journal.pending_acks().await? {
            ack(&api, &r.file_id, &r.sha256).await?;
            journal.mark_acked(&r.file_id).await?;
        }
        let files: Vec<DownloadFile> = api.get(&format!("/v1/files?wait={wait_secs}")).await?;
        let mut out = Vec::new();
        for f in files {
            let id = f.id.to_string();
            if let Some(r) = journal.received(&id).await?
                && r.is_applied()
            {
                ack(&api, &id, &f.sha256).await?;
                journal.mark_acked(&id).await?;
                progress(&format!("{}: already applied earlier; acknowledged again", f.name));
                out.push(Outcome::AlreadyApplied { name: f.name });
                continue;
            }
            match self.apply_one(&f).await {
                Ok(report) => {
                    journal.mark_applied(&id, &f.name, &f.sha256).await?;
                    ack(&api, &id, &f.sha256).await?;
                    journal.mark_acked(&id).await?;
                    progress(&format!("{}: delivered ({} bytes)", f.name, f.bytes));
                    out.push(Outcome::Applied {
                        name: f.name,
                        inbound: report.inbound_path,
                        sql_rows: report.sql_rows,
                    });
                }
                Err(e) => {
                    let error = format!("{e:#}");
                    journal.mark_failed(&id, &f.name, &f.sha256, &error).await?;
                    let _: Result<serde_json::Value, _> =
                        api.post(&format!("/v1/files/{id}/error"), &FileError { error: error.clone() }).await;
                    progress(&format!("{}: not delivered, will retry: {error}", f.name));
                    out.push(Outcome::Failed { name: f.name, error });
                }
            }
        }
        Ok(out)
    }

    async fn apply_one(&self, f: &DownloadFile) -> anyhow::Result<delivery::DeliveryReport> {
        let work = self.cfg.data_dir().join("incoming");
        std::fs::create_dir_all(&work)?;
        let bz2 = work.join(format!("{}.bz2", f.id));
        let sftp = self.sftp().await?;
        let got = sftp.download_file(&f.path, &bz2).await.with_context(|| format!("downloading {}", f.name));
        let _ = sftp.close().await;
        got?;
        let plain_dir = work.join(f.id.as_str());
        std::fs::create_dir_all(&plain_dir)?;
        let plain = plain_dir.join(&f.name);
        let (b, p, bytes, sha) = (bz2.clone(), plain.clone(), f.bytes, f.sha256.clone());
        let verified = tokio::task::spawn_blocking(move || delivery::decompress_verified(&b, &p, bytes, &sha)).await?;
        let _ = std::fs::remove_file(&bz2);
        verified?;
        let mut cfg = self.cfg.delivery.clone();
        cfg.inbound_dir = cfg.inbound_dir.map(|d| self.cfg.resolve(&d));
        let erp = self.cfg.erp_write_url()?;
        let report = delivery::deliver(&cfg, Some(&erp), &plain, &f.name).await?;
        let _ = std::fs::remove_dir_all(&plain_dir);
        Ok(report)
    }

    /// The long-running agent: downstream continuously, the daily extract at `schedule.daily_at`, until
    /// `shutdown` resolves (the current step finishes first).
    pub async fn run(
        self: Arc<Self>,
        shutdown: impl Future<Output = ()> + Send + 'static,
        log: Arc<dyn Fn(&str) + Send + Sync>,
    ) -> anyhow::Result<()> {
        let daily = self.cfg.schedule.daily_time()?;
        let wait = self.cfg.schedule.poll_wait_secs.clamp(0, 60);
        let stamp = self.cfg.data_dir().join("last_sync");
        tokio::pin!(shutdown);
        let mut sync_task: Option<tokio::task::JoinHandle<bool>> = None;
        // After a failed daily sync, the next attempt waits a minute (without holding up a shutdown).
        let mut retry_at: Option<tokio::time::Instant> = None;
        let mut backoff = Duration::from_secs(1);
        log(&format!(
            "connector running: files from the cloud as they come; daily extract at {}",
            self.cfg.schedule.daily_at
        ));
        loop {
            if let Some(h) = sync_task.take_if(|h| h.is_finished())
                && !h.await.unwrap_or(false)
            {
                retry_at = Some(tokio::time::Instant::now() + Duration::from_secs(60));
            }
            if let Some(t) = daily
                && sync_task.is_none()
                && retry_at.is_none_or(|r| tokio::time::Instant::now() >= r)
                && sync_due(&stamp, t)
            {
                let (me, log2, stamp2) = (self.clone(), log.clone(), stamp.clone());
                let _ = std::fs::write(&stamp, Local::now().date_naive().to_string());
                sync_task = Some(tokio::spawn(async move {
                    let l = log2.clone();
                    match me.sync(&move |s: &str| l(s)).await {
                        Ok(r) => {
                            log2(&format!("daily sync: batch {} {}", r.status.batch_id, r.status.state.as_str()));
                            true
                        }
                        Err(e) => {
                            log2(&format!("daily sync failed (will retry in a minute): {e:#}"));
                            let _ = std::fs::remove_file(&stamp2);
                            false
                        }
                    }
                }));
            }
            let l = log.clone();
            let progress = move |s: &str| l(s);
            tokio::select! {
                _ = &mut shutdown => break,
                r = self.receive(wait, &progress) => match r {
                    Ok(_) => backoff = Duration::from_secs(1),
                    Err(e) => {
                        log(&format!("downstream poll failed, retrying in {}s: {e:#}", backoff.as_secs()));
                        tokio::select! {
                            _ = &mut shutdown => break,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(300));
                    }
                }
            }
        }
        if let Some(t) = sync_task
            && !t.is_finished()
        {
            log("waiting for the running sync to finish (Ctrl-C again to stop at once)");
            let _ = t.await;
        }
        log("connector stopped");
        Ok(())
    }
}

fn sync_due(stamp: &std::path::Path, at: chrono::NaiveTime) -> bool {
    let now = Local::now();
    let last: Option<NaiveDate> = std::fs::read_to_string(stamp).ok().and_then(|s| s.trim().parse().ok());
    now.time() >= at && last.is_none_or(|d| d < now.date_naive())
}

async fn ack(api: &ApiClient, id: &str, sha256: &str) -> anyhow::Result<()> {
    let _: serde_json::Value = api
        .post(&format!("/v1/files/{id}/ack"), &FileAck { sha256: sha256.to_string() })
        .await
        .with_context(|| format!("acknowledging file {id}"))?;
    Ok(())
}
