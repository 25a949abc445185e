//! Downstream on the ERP side: ask the Comms server for waiting files (long-poll), download each over SFTP,
//! decompress and verify it, deliver it into the ERP exactly once (`delivery`), record it in the journal, and
//! acknowledge it. A file the journal shows as applied is only acknowledged again, never re-applied; a failed
//! delivery is reported to Comms and retried on the next poll. `run` is the long-running agent: continuous
//! downstream plus the daily extract.
//!
//! **When `run` extracts** (`[schedule] daily_at` set; an empty `daily_at` means never): when [`extract_due`]
//! says so, checked at start and before every poll. That is when no batch was ever sent (a fresh install: at
//! once, whatever the time), or when today's `daily_at` has passed and no batch extracted since then was sent
//! — by `run` itself or by a manual `ferry connector sync`, which counts the same: both go through
//! [`Connector::sync_with`], and the journal's batches ([`Journal::last_sent_extract`]) are the one record of
//! what was sent. So `sync` at 10:00 then `run` makes no second extract that day (with `daily_at` at or before
//! 10:00); a `sync` at 01:00 with `daily_at = "02:00"` does not stand in for the 02:00 extract. A failed attempt
//! is retried with backoff while the extract stays due; an attempt that failed after the Comms server accepted
//! its batch (e.g. the wait for the verdict) is not repeated.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Local, NaiveTime};
use ferry_io::client::ApiClient;
use ferry_proto::api::{DownloadFile, FileAckOf, FileAcks, FileError, FileId, FilesAcked, MAX_FILES_PER_CALL};

use crate::agent::Connector;
use crate::delivery;
use crate::journal::Journal;
use crate::pending::Pending;
use ferry_io::retry::{Backoff, FailureLog};
use ferry_sftp::client::SftpClient;

/// Files of a page downloaded, decompressed and verified ahead of the one being delivered.
const PREFETCH: usize = 16;

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
        self.receive_until(wait_secs, progress, &mut std::future::pending()).await
    }

    /// Like [`Connector::receive`], but when `stop` resolves the long-poll ends at once and no further file is
    /// started; a file being applied is finished (applied, journaled and acknowledged) first.
    pub async fn receive_until(
        &self,
        wait_secs: u64,
        progress: &(dyn Fn(&str) + Sync),
        stop: &mut (impl Future<Output = ()> + Unpin),
    ) -> anyhow::Result<Vec<Outcome>> {
        let api = self.api()?;
        let journal = Journal::open(self.cfg.journal_path()).await?;
        let lost: Vec<(String, String)> =
            journal.pending_acks().await?.into_iter().map(|r| (r.file_id, r.sha256)).collect();
        let mut times = ReceiveTimes::default();
        let resent = ack_many(&api, &journal, &lost, &mut times).await;
        self.add_times(&times);
        resent?;
        // The long-poll holds the call open for `wait_secs`: allow that on top of the usual limit.
        let poll = self.api_with_timeout(Duration::from_secs(wait_secs) + self.cfg.network.timeout())?;
        let path = format!("/v1/files?wait={wait_secs}");
        let mut files: Vec<DownloadFile> = tokio::select! {
            r = poll.get(&path) => r?,
            _ = &mut *stop => return Ok(Vec::new()),
        };
        let mut out = Vec::new();
        let mut stopping = false;
        // The list comes a page at a time (the server's page size): ask again, without waiting, until a page
        // brings no file this round has not seen (a file that failed stays listed until it is delivered).
        let mut seen = std::collections::HashSet::new();
        loop {
            files.retain(|f| seen.insert(f.id.to_string()));
            if files.is_empty() || stopping {
                break;
            }
            self.receive_page(&api, &journal, std::mem::take(&mut files), progress, stop, &mut stopping, &mut out)
                .await?;
            if stopping {
                break;
            }
            files = api.get("/v1/files?wait=0").await?;
        }
        Ok(out)
    }

    /// What the receive passes of this Connector spent in each step so far (`ferry bench downstream` prints it).
    pub fn receive_times(&self) -> ReceiveTimes {
        self.receive_times.lock().map(|t| *t).unwrap_or_default()
    }

    fn add_times(&self, t: &ReceiveTimes) {
        if let Ok(mut all) = self.receive_times.lock() {
            all.add(t);
        }
    }

    /// Apply the files of one page of the download list, in order, over one SFTP session and one ERP write-back
    /// connection; journal them as applied (one commit for the page where a repeat is harmless, see
    /// [`group_applied`]), then acknowledge them together (one call per [`MAX_FILES_PER_CALL`] files, journaled as
    /// acked in one commit), before the next page is asked for.
    #[allow(clippy::too_many_arguments)]
    async fn receive_page(
        &self,
        api: &ApiClient,
        journal: &Journal,
        files: Vec<DownloadFile>,
        progress: &(dyn Fn(&str) + Sync),
        stop: &mut (impl Future<Output = ()> + Unpin),
        stopping: &mut bool,
        out: &mut Vec<Outcome>,
    ) -> anyhow::Result<()> {
        let mut page = Page {
            sftp: None,
            delivery: delivery::Delivery::page(&self.cfg.delivery, Some(&self.cfg.erp)),
            delivered: Vec::new(),
            acks: Vec::new(),
            times: ReceiveTimes::default(),
        };
        let applied = self.apply_page(journal, api, files, progress, stop, stopping, out, &mut page).await;
        let Page { sftp, mut delivery, mut delivered, mut acks, mut times } = page;
        if let Some(s) = sftp {
            let _ = s.close().await;
        }
        // The page's write-backs commit together (page mode): only then is anything journaled as applied. A
        // file the commit did not take is failed, as if its own delivery had failed.
        let not_delivered = delivery.commit_page().await;
        times.delivery = delivery.times;
        delivery.close().await;
        let mut journal_failed = Ok(());
        for (id, error) in not_delivered {
            let Some(at) = delivered.iter().position(|(d, _, _)| *d == id) else { continue };
            let (id, name, sha256) = delivered.remove(at);
            if let Some(o) = out.iter_mut().rev().find(
                |o| matches!(o, Outcome::Applied { name: n, .. } | Outcome::AlreadyApplied { name: n } if *n == name),
            ) {
                *o = Outcome::Failed { name: name.clone(), error: error.clone() };
            }
            let t = Instant::now();
            if let Err(e) = journal.mark_failed(&id, &name, &sha256, &error).await {
                journal_failed = Err(e);
            }
            times.journal += t.elapsed();
            times.journal_commits += 1;
            let _: Result<serde_json::Value, _> =
                api.post(&format!("/v1/files/{id}/error"), &FileError { error: error.clone() }).await;
            progress(&format!("{name}: not delivered, will retry: {error}"));
        }
        // What was delivered is journaled and acknowledged even if a later file of the page broke off the loop.
        let journaled = journal_applied(journal, delivered, &mut acks, &mut times).await;
        let acked = match journaled {
            Ok(()) => ack_many(api, journal, &acks, &mut times).await,
            Err(e) => Err(e),
        };
        self.add_times(&times);
        applied.and(journal_failed).and(acked)
    }

    /// Download, decompress and verify up to [`PREFETCH`] files ahead over the page's one SFTP session while the
    /// files are delivered strictly in the list's order; each delivered file goes to `page.delivered`, journaled
    /// as applied at once unless [`group_applied`] allows one commit for the page.
    #[allow(clippy::too_many_arguments)]
    async fn apply_page(
        &self,
        journal: &Journal,
        api: &ApiClient,
        files: Vec<DownloadFile>,
        progress: &(dyn Fn(&str) + Sync),
        stop: &mut (impl Future<Output = ()> + Unpin),
        stopping: &mut bool,
        out: &mut Vec<Outcome>,
        page: &mut Page<'_>,
    ) -> anyhow::Result<()> {
        use futures::StreamExt;
        let work = self.cfg.data_dir().join("incoming");
        let group = group_applied(&self.cfg.delivery);
        // what the journal already shows as applied is only acknowledged again, never fetched
        let mut todo = Vec::with_capacity(files.len());
        for f in files {
            let id = f.id.to_string();
            if let Some(r) = journal.received(&id).await?
                && r.is_applied()
            {
                page.acks.push((id, f.sha256.clone()));
                progress(&format!("{}: already applied earlier; acknowledged again", f.name));
                out.push(Outcome::AlreadyApplied { name: f.name });
            } else {
                todo.push(f);
            }
        }
        if todo.is_empty() {
            return Ok(());
        }
        if page.sftp.is_none() {
            page.sftp = Some(self.sftp().await?);
        }
        let sftp = page.sftp.as_ref().context("no SFTP session")?;
        let work_ref = &work;
        let fetches: Vec<_> = todo
            .into_iter()
            .map(|f| async move {
                let r =
                    self.fetch_verified(&f, work_ref, sftp).await.map_err(|e| ferry_io::retry::disk_full(e, work_ref));
                (f, r)
            })
            .collect();
        let mut fetched = futures::stream::iter(fetches).buffered(PREFETCH);
        loop {
            // Stop between files, never inside one.
            if *stopping || futures::FutureExt::now_or_never(&mut *stop).is_some() {
                *stopping = true;
                break;
            }
            let waited = Instant::now();
            let Some((f, plain)) = fetched.next().await else { break };
            page.times.fetch_wait += waited.elapsed();
            let id = f.id.to_string();
            match async { self.deliver_one(&mut page.delivery, &f, &plain?).await }.await {
                Ok(report) => {
                    page.times.files += 1;
                    page.delivered.push((id, f.name.clone(), f.sha256.clone()));
                    if !group {
                        // a repeat would do harm: the journal must hold this file before the next is delivered
                        journal_applied(journal, std::mem::take(&mut page.delivered), &mut page.acks, &mut page.times)
                            .await?;
                    }
                    if report.already_in_ledger {
                        // the ERP committed it before a crash took the journal entry with it
                        progress(&format!("{}: already in the ERP's ledger, not written back again", f.name));
                        out.push(Outcome::AlreadyApplied { name: f.name });
                    } else {
                        progress(&format!("{}: delivered ({} bytes)", f.name, f.bytes));
                        out.push(Outcome::Applied {
                            name: f.name,
                            inbound: report.inbound_path,
                            sql_rows: report.sql_rows,
                        });
                    }
                }
                Err(e) => {
                    let error = format!("{e:#}");
                    let t = Instant::now();
                    journal.mark_failed(&id, &f.name, &f.sha256, &error).await?;
                    page.times.journal += t.elapsed();
                    page.times.journal_commits += 1;
                    let _: Result<serde_json::Value, _> =
                        api.post(&format!("/v1/files/{id}/error"), &FileError { error: error.clone() }).await;
                    progress(&format!("{}: not delivered, will retry: {error}", f.name));
                    out.push(Outcome::Failed { name: f.name, error });
                }
            }
        }
        drop(fetched);
        // files fetched ahead but not delivered (a stop) leave nothing behind but resumable parts
        Ok(())
    }

    /// Deliver a verified plain file (`work/<id>/<name>`), then remove it. An error caused by a full disk says
    /// which folder's disk it is.
    async fn deliver_one(
        &self,
        session: &mut delivery::Delivery<'_>,
        f: &DownloadFile,
        plain: &std::path::Path,
    ) -> anyhow::Result<delivery::DeliveryReport> {
        let work = self.cfg.data_dir().join("incoming");
        let (cfg, erp) = (&self.cfg.delivery, &self.cfg.erp);
        let report = session.deliver(plain, &f.name, Some(f.id.as_str())).await.map_err(|e| {
            // which disk: the ERP database's for the SQL write-back, else the inbound folder's
            let target = match &e {
                delivery::DeliveryError::Database { .. } | delivery::DeliveryError::WriteBack { .. } => {
                    PathBuf::from(&erp.url)
                }
                _ => cfg.inbound_dir.clone().unwrap_or_else(|| work.clone()),
            };
            ferry_io::retry::disk_full(e.into(), &target)
        })?;
        if let Some(dir) = plain.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
        Ok(report)
    }

    /// The plain, verified file under `work/<id>/<name>`, downloaded over `sftp` (continuing a download cut off
    /// earlier: the SHA-256 check catches any mix-up).
    async fn fetch_verified(
        &self,
        f: &DownloadFile,
        work: &std::path::Path,
        sftp: &SftpClient,
    ) -> anyhow::Result<PathBuf> {
        std::fs::create_dir_all(work).with_context(|| format!("cannot create {}", work.display()))?;
        let bz2 = work.join(format!("{}.bz2", f.id));
        sftp.download_file_resuming(&f.path, &bz2).await.with_context(|| format!("downloading {}", f.name))?;
        let plain_dir = work.join(f.id.as_str());
        std::fs::create_dir_all(&plain_dir).with_context(|| format!("cannot create {}", plain_dir.display()))?;
        let plain = plain_dir.join(&f.name);
        let (b, p, bytes, sha) = (bz2.clone(), plain.clone(), f.bytes, f.sha256.clone());
        let verified = tokio::task::spawn_blocking(move || delivery::decompress_verified(&b, &p, bytes, &sha)).await?;
        let _ = std::fs::remove_file(&bz2);
        verified?;
        Ok(plain)
    }

    /// The long-running agent: downstream continuously, the daily extract at `schedule.daily_at`, until
    /// `shutdown` resolves. Then the current step is finished (a file being applied, a running sync) and
    /// nothing new starts; a long-poll that is only waiting ends at once.
    pub async fn run(
        self: Arc<Self>,
        shutdown: impl Future<Output = ()> + Send + 'static,
        log: Arc<dyn Fn(&str) + Send + Sync>,
    ) -> anyhow::Result<()> {
        let daily = self.cfg.schedule.daily_at;
        let wait = self.cfg.schedule.poll_wait_secs.clamp(0, 60);
        let journal = Journal::open(self.cfg.journal_path()).await?;
        // earlier versions kept their own stamp of the last daily sync here; the journal is the record now
        let _ = std::fs::remove_file(self.cfg.data_dir().join("last_sync"));
        let pending = Pending::new(self.cfg.data_dir());
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });
        let is_stopped = stop_rx.clone();
        let stopped = move || {
            let mut rx = stop_rx.clone();
            Box::pin(async move {
                let _ = rx.wait_for(|s| *s).await;
            })
        };
        let mut sync_task: Option<tokio::task::JoinHandle<Option<anyhow::Error>>> = None;
        // A failed daily sync is retried with backoff (1 min growing to 1 h) while the extract is still due,
        // without holding up a shutdown; a batch refused by validation only after an hour (`sync_retry_delay`).
        let mut retry_at: Option<tokio::time::Instant> = None;
        let mut sync_backoff = Backoff::new(Duration::from_secs(60), Duration::from_secs(3600));
        let mut sync_log = FailureLog::new("daily sync", Duration::from_secs(600));
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(300));
        let mut poll_log = FailureLog::new("downstream poll", Duration::from_secs(300));
        let last = journal.last_sent_extract().await?.map(|t| t.with_timezone(&Local));
        log(&format!(
            "connector running: files from the cloud as they come; {}",
            schedule_note(daily, last, Local::now())
        ));
        loop {
            if let Some(h) = sync_task.take_if(|h| h.is_finished()) {
                match h.await.unwrap_or_else(|e| Some(anyhow::anyhow!("the sync task failed: {e}"))) {
                    None => {
                        sync_backoff.reset();
                        retry_at = None;
                        if let Some(l) = sync_log.success() {
                            log(&l);
                        }
                    }
                    Some(e) => {
                        let delay = sync_retry_delay(&e, &mut sync_backoff);
                        retry_at = Some(tokio::time::Instant::now() + delay);
                        pending.retry_in("sync", delay);
                        if let Some(l) = sync_log.failure(&format!("{e:#}"), delay) {
                            log(&l);
                        }
                    }
                }
            }
            if let Some(t) = daily
                && sync_task.is_none()
                && retry_at.is_none_or(|r| tokio::time::Instant::now() >= r)
                && extract_due_now(&journal, t).await
            {
                let (me, log2) = (self.clone(), log.clone());
                sync_task = Some(tokio::spawn(async move {
                    let l = log2.clone();
                    match me.sync(&move |s: &str| l(s)).await {
                        Ok(r) => {
                            log2(&format!("daily sync: batch {} {}", r.status.batch_id, r.status.state.as_str()));
                            None
                        }
                        Err(e) => Some(e),
                    }
                }));
            }
            let l = log.clone();
            let progress = move |s: &str| l(s);
            if *is_stopped.borrow() {
                break;
            }
            let mut stop = stopped();
            match self.receive_until(wait, &progress, &mut stop).await {
                Ok(_) => {
                    backoff.reset();
                    pending.succeeded("receive");
                    if let Some(l) = poll_log.success() {
                        log(&l);
                    }
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    pending.failed("receive", &e, Some(delay));
                    if let Some(l) = poll_log.failure(&format!("{e:#}"), delay) {
                        log(&l);
                    }
                    tokio::select! {
                        _ = stopped() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        if let Some(t) = sync_task
            && !t.is_finished()
        {
            log("waiting for the running sync to finish (send the signal again to stop at once)");
            if let Ok(Some(e)) = t.await {
                log(&format!("daily sync failed: {e:#}"));
            }
        }
        log("connector stopped");
        Ok(())
    }
}

/// Whether `run` extracts now (see the [module docs](self)): `last` is when the newest batch sent was extracted
/// (`None`: never), `at` the daily time. Due when nothing was ever sent, or when today's `at` has passed and
/// nothing extracted since then was sent. Local wall-clock times.
pub fn extract_due(last: Option<DateTime<Local>>, at: NaiveTime, now: DateTime<Local>) -> bool {
    let Some(last) = last else { return true };
    let scheduled = now.date_naive().and_time(at);
    now.naive_local() >= scheduled && last.naive_local() < scheduled
}

/// [`extract_due`] from the journal; a journal that cannot be read makes nothing due (the poll reports it).
async fn extract_due_now(journal: &Journal, at: NaiveTime) -> bool {
    match journal.last_sent_extract().await {
        Ok(last) => extract_due(last.map(|t| t.with_timezone(&Local)), at, Local::now()),
        Err(e) => {
            tracing::warn!("cannot read the last extract from the journal: {e:#}");
            false
        }
    }
}

/// What `run` says about the daily extract when it starts.
fn schedule_note(daily: Option<NaiveTime>, last: Option<DateTime<Local>>, now: DateTime<Local>) -> String {
    let Some(at) = daily else {
        return "no daily extract ([schedule] daily_at is empty; extract with `ferry connector sync`)".into();
    };
    let hm = at.format("%H:%M");
    let Some(l) = last else { return format!("daily extract at {hm}; no extract was sent yet: extracting now") };
    let sent = format!("the last extract sent was made {}", l.format("%Y-%m-%d %H:%M"));
    if extract_due(Some(l), at, now) {
        format!("daily extract at {hm}; {sent}, before today's {hm}: extracting now")
    } else if now.time() < at {
        format!("daily extract at {hm}; {sent}: the next today at {hm}")
    } else {
        format!("daily extract at {hm}; {sent}, so today's is done: the next tomorrow at {hm}")
    }
}

/// Acknowledge applied files `(id, sha256)` to Comms, [`MAX_FILES_PER_CALL`] per call (`POST /v1/files/ack`), and
/// journal those it accepted as acknowledged, one commit per call. A file Comms refuses makes this an error (its
/// ack is sent again next round).
async fn ack_many(
    api: &ApiClient,
    journal: &Journal,
    acks: &[(String, String)],
    times: &mut ReceiveTimes,
) -> anyhow::Result<()> {
    let mut refused = Vec::new();
    for chunk in acks.chunks(MAX_FILES_PER_CALL) {
        let files = chunk
            .iter()
            .map(|(id, sha256)| Ok(FileAckOf { id: FileId::parse(id)?, sha256: sha256.clone() }))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let t = Instant::now();
        let answer: FilesAcked = api
            .post("/v1/files/ack", &FileAcks { files })
            .await
            .with_context(|| format!("acknowledging {} file(s)", chunk.len()))?;
        times.ack += t.elapsed();
        let t = Instant::now();
        let ids: Vec<String> = answer.delivered.iter().map(|id| id.to_string()).collect();
        journal.mark_acked_many(&ids).await?;
        times.journal += t.elapsed();
        times.journal_commits += u64::from(!ids.is_empty());
        refused.extend(answer.refused);
    }
    if let Some(first) = refused.first() {
        anyhow::bail!(
            "the Comms server refused {} acknowledgement(s), first file {}: {}",
            refused.len(),
            first.file_id,
            first.error
        );
    }
    Ok(())
}

/// Journal the `delivered` files `(id, name, sha256)` as applied in one commit; then, and only then, they are due
/// for acknowledgement (`acks`).
async fn journal_applied(
    journal: &Journal,
    delivered: Vec<(String, String, String)>,
    acks: &mut Vec<(String, String)>,
    times: &mut ReceiveTimes,
) -> anyhow::Result<()> {
    if delivered.is_empty() {
        return Ok(());
    }
    let t = Instant::now();
    journal.mark_applied_many(&delivered).await?;
    times.journal += t.elapsed();
    times.journal_commits += 1;
    acks.extend(delivered.into_iter().map(|(id, _, sha256)| (id, sha256)));
    Ok(())
}

/// Whether the files of a page may be journaled as applied together, in one commit after the last of them, rather
/// than each right after its delivery. Per file the order of steps is the same either way (delivered, then
/// journaled, then acknowledged, then journaled as acked); what grows is the number of files a crash can catch
/// delivered but not journaled, which the next pass delivers again. That is harmless when every step of a
/// delivery is idempotent: the inbound folder (the same bytes renamed over the same name), and the SQL write-back
/// only with `ledger_table` (the ERP's ledger, committed with the file's rows, refuses the repeat). A delivery
/// command, or a write-back without the ledger, would run again: then each file is journaled at once, as before.
pub fn group_applied(cfg: &delivery::DeliveryConfig) -> bool {
    cfg.command.is_none() && (cfg.sql.is_empty() || cfg.ledger_table.is_some())
}

/// One page's connections and the files it delivered, until they are journaled and acknowledged.
struct Page<'a> {
    /// One SFTP session for the page's files (opened on the first download).
    sftp: Option<SftpClient>,
    /// One ERP write-back connection for the page's files (opened by the first file that needs it).
    delivery: delivery::Delivery<'a>,
    /// Delivered, not journaled yet.
    delivered: Vec<(String, String, String)>,
    /// Journaled as applied, to be acknowledged `(id, sha256)`.
    acks: Vec<(String, String)>,
    times: ReceiveTimes,
}

pub use crate::delivery::ReceiveTimes;

/// How long `run` waits before extracting again after a failed sync. Network and server trouble: the backoff
/// (1 min growing to 1 h). A batch refused by validation is bad ERP data or a bad mapping, which does not mend
/// itself within a minute: the next attempt is an hour away (the admin runs `ferry connector check`, fixes the
/// cause and `ferry connector sync`s at once), so the ERP is not queried again and again for nothing.
pub(crate) fn sync_retry_delay(e: &anyhow::Error, backoff: &mut Backoff) -> Duration {
    let refused = e.chain().any(|c| matches!(c.downcast_ref(), Some(crate::extract::ExtractError::Invalid { .. })));
    let delay = backoff.next_delay();
    if refused { VALIDATION_RETRY.max(delay) } else { delay }
}

const VALIDATION_RETRY: Duration = Duration::from_secs(3600);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_daily_extract_is_due_when_never_sent_or_none_sent_since_todays_time() {
        use chrono::TimeZone;
        let t = |d: u32, h: u32, m: u32| Local.with_ymd_and_hms(2026, 12, d, h, m, 0).single().unwrap();
        let at = NaiveTime::from_hms_opt(2, 0, 0).unwrap();
        // a fresh install extracts at once, whatever the time
        assert!(extract_due(None, at, t(3, 1, 0)));
        assert!(extract_due(None, at, t(3, 10, 0)));
        // a manual sync at 10:00 is today's extract: `run` at 10:05 does not extract again, nor later today
        assert!(!extract_due(Some(t(3, 10, 0)), at, t(3, 10, 5)));
        assert!(!extract_due(Some(t(3, 10, 0)), at, t(3, 23, 59)));
        // ... but tomorrow's 02:00 does
        assert!(!extract_due(Some(t(3, 10, 0)), at, t(4, 1, 59)));
        assert!(extract_due(Some(t(3, 10, 0)), at, t(4, 2, 0)));
        // yesterday's extract: due once today's time has passed
        assert!(extract_due(Some(t(2, 2, 1)), at, t(3, 9, 0)));
        assert!(!extract_due(Some(t(2, 2, 1)), at, t(3, 1, 0)));
        // an extract before today's time does not stand in for it
        assert!(extract_due(Some(t(3, 1, 0)), at, t(3, 2, 0)));
        let note = schedule_note(Some(at), Some(t(3, 10, 0)), t(3, 10, 5));
        assert!(note.contains("today's is done") && note.contains("tomorrow at 02:00"), "{note}");
        assert!(schedule_note(Some(at), None, t(3, 1, 0)).contains("extracting now"));
        assert!(schedule_note(None, None, t(3, 1, 0)).contains("no daily extract"));
    }

    #[test]
    fn a_batch_refused_by_validation_is_retried_after_an_hour_other_failures_with_backoff() {
        let mut b = Backoff::new(Duration::from_secs(60), Duration::from_secs(3600));
        let net = anyhow::anyhow!("connection refused").context("batch x was not sent");
        let d = sync_retry_delay(&net, &mut b);
        assert!(d >= Duration::from_secs(30) && d <= Duration::from_secs(60), "{d:?}");
        let invalid =
            anyhow::Error::new(crate::extract::ExtractError::Invalid { report: Box::default(), allow_warnings: false })
                .context("batch y was not sent");
        assert_eq!(sync_retry_delay(&invalid, &mut b), VALIDATION_RETRY);
        // the backoff still counts the failure, so a later network failure waits longer
        assert_eq!(b.failures(), 2);
    }
}
