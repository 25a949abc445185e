//! Downstream worker (tenants concurrently, [`ferry_web::worker`]): fetches each file the App announced over
//! SFTP from the App server the tenant is placed on, verifies its SHA-256, compresses it with bzip2 into the tenant's `download/<id>/` folder (temporary
//! name, then rename) and puts it on the tenant's download list, waking long-polling Connectors. It also tells
//! the App how each file progresses (relayed, delivered), retrying until the App has heard. State lives in the
//! `downloads` table: a restart resumes.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use chrono::Utc;
use ferry_proto::api::{FileProgress, FileProgressOf, FileState, FilesProgress, MAX_FILES_PER_CALL};

use ferry_web::worker::{Worker, partly_done};

use crate::{CommsState, db};

pub async fn run(st: Arc<CommsState>, shutdown: impl Future<Output = ()> + Send + 'static) {
    let worker = Worker::new("downstream work", st.cfg.max_concurrent_tenants);
    // one job per tenant: all its files needing work, handled in one pass
    let list = || async {
        let rows = db::downloads_needing_work(&st.db).await?;
        let mut jobs: Vec<(String, Vec<db::DownloadRow>)> = Vec::new();
        for r in rows {
            match jobs.iter_mut().find(|(t, _)| *t == r.tenant) {
                Some((_, v)) => v.push(r),
                None => jobs.push((r.tenant.clone(), vec![r])),
            }
        }
        anyhow::Ok(jobs.into_iter().map(|(t, rows)| (t.clone(), (t, rows))).collect::<Vec<_>>())
    };
    let work = |(tenant, rows): (String, Vec<db::DownloadRow>)| {
        let st = st.clone();
        async move { tenant_pass(&st, &tenant, rows).await }
    };
    worker.run(&st.downstream_wakeup, shutdown, list, work).await
}

/// Files fetched from the App at once within one pass (on one SFTP session), each compressed as it arrives.
const FETCH_CONCURRENCY: usize = 4;
/// Files put on the download list together (one transaction, one wake-up of the long-polls): the Connector
/// starts on the first ones while the rest are fetched.
const READY_GROUP: usize = 32;

/// One pass over a tenant's files: fetch and compress every file still to fetch over one SFTP session
/// ([`FETCH_CONCURRENCY`] at a time), put them on the download list in groups, then tell the App how its files
/// progressed in batched calls. A file that fails is noted with its error (for `tenant files`) and retried by the
/// next pass; the others go on.
#[tracing::instrument(name = "downstream", skip_all, fields(tenant = %tenant))]
async fn tenant_pass(st: &CommsState, tenant: &str, rows: Vec<db::DownloadRow>) -> anyhow::Result<()> {
    // Replicas on one PostgreSQL: exactly one works on a tenant's files at a time; the others back off. The
    // list may be stale once claimed: fetch only what is still to fetch.
    let Some(claim) = db::claim_downstream(&st.db, tenant).await? else {
        bail!("another Comms replica is fetching this tenant's files");
    };
    let r = async {
        let still = db::fetching_file_ids(&st.db, tenant).await?;
        let fetching: Vec<db::DownloadRow> = rows
            .into_iter()
            .filter(|r| r.state == FileState::Fetching && still.contains(r.file.file_id.as_str()))
            .collect();
        let fetched = if fetching.is_empty() { Ok(()) } else { fetch_all(st, tenant, fetching).await };
        let mut told = 0;
        let told_result = tell_app(st, tenant, &mut told).await;
        match fetched.and(told_result) {
            // what the App was told is done: the tenant is not backed off for the rest
            Err(e) if told > 0 => Err(partly_done(e)),
            r => r,
        }
    }
    .await;
    claim.release().await;
    r
}

async fn fetch_all(st: &CommsState, tenant: &str, rows: Vec<db::DownloadRow>) -> anyhow::Result<()> {
    use futures::StreamExt;
    // the tenant's own App server: one that is down delays only the tenants placed on it
    let session = async {
        let (name, app) = st.apps.for_tenant(&st.db, tenant).await?;
        let s = app.fetch_session().await.with_context(|| format!("App server {name}"))?;
        anyhow::Ok((app, s))
    };
    let (app, (sftp, reused)) = match session.await {
        Ok(s) => s,
        Err(e) => {
            let msg = format!("{e:#}");
            for r in &rows {
                db::note_download_error(&st.db, tenant, &r.file.file_id, &msg).await?;
            }
            return Err(e);
        }
    };
    let total = rows.len();
    let (session, app) = (&sftp, &*app);
    let jobs: Vec<_> = rows
        .into_iter()
        .map(|r| async move {
            let res = fetch_one(st, app, session, &r).await;
            (r, res)
        })
        .collect();
    let mut results = futures::stream::iter(jobs).buffer_unordered(FETCH_CONCURRENCY);
    let mut ready: Vec<(ferry_proto::api::FileId, u64)> = Vec::new();
    let (mut failed, mut first_error) = (0usize, None);
    while let Some((row, r)) = results.next().await {
        match r {
            Ok(compressed) => {
                tracing::info!(file = %row.file.file_id, name = %row.file.name, bytes = row.file.bytes, compressed, "file ready for download");
                ready.push((row.file.file_id.clone(), compressed));
                if ready.len() >= READY_GROUP {
                    publish_ready(st, tenant, std::mem::take(&mut ready)).await?;
                }
            }
            Err(e) => {
                let msg = format!("{e:#}");
                tracing::debug!(file = %row.file.file_id, "{msg}");
                db::note_download_error(&st.db, tenant, &row.file.file_id, &msg).await?;
                failed += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    drop(results);
    publish_ready(st, tenant, ready).await?;
    // a session on which everything failed is not trusted again (a reused one may have gone stale)
    app.release_session(sftp, failed < total).await;
    match first_error {
        None => Ok(()),
        Some(e) if reused && failed == total => {
            Err(e.context("every fetch failed on a reused SFTP session; the next pass logs in again"))
        }
        // the others are on the download list: the tenant is not backed off for the few that failed
        Some(e) if failed < total => {
            Err(partly_done(e.context(format!("{failed} of {total} file(s) not fetched (retried)"))))
        }
        Some(e) => Err(e.context(format!("{failed} of {total} file(s) not fetched (retried)"))),
    }
}

/// Put fetched files on the download list and wake the long-polls.
async fn publish_ready(
    st: &CommsState,
    tenant: &str,
    ready: Vec<(ferry_proto::api::FileId, u64)>,
) -> anyhow::Result<()> {
    if ready.is_empty() {
        return Ok(());
    }
    db::set_downloads_ready(&st.db, tenant, &ready).await?;
    st.downloads_changed.send_modify(|v| *v += 1);
    Ok(())
}

/// Fetch one file over `sftp`, check and compress it into the tenant's `download/<id>/` folder. Returns the
/// compressed size.
async fn fetch_one(
    st: &CommsState,
    app: &crate::appclient::AppClient,
    sftp: &ferry_sftp::client::SftpClient,
    row: &db::DownloadRow,
) -> anyhow::Result<u64> {
    let f = &row.file;
    let tmp_dir = st.cfg.data_dir.join("tenants").join(&row.tenant).join("tmp");
    let out_dir = st.sftp_root(&row.tenant).join("download").join(f.file_id.as_str());
    let plain = tmp_dir.join(format!("{}.download", f.file_id));
    async {
        std::fs::create_dir_all(&tmp_dir).with_context(|| format!("cannot create {}", tmp_dir.display()))?;
        // A fetch cut off earlier continues from its `.part`; the SHA-256 check below catches any mix-up.
        app.fetch_on(sftp, f, &plain).await?;
        std::fs::create_dir_all(&out_dir).with_context(|| format!("cannot create {}", out_dir.display()))?;
        let final_path = out_dir.join(format!("{}.bz2", f.name));
        let part = out_dir.join(format!(".{}.bz2.part", f.name));
        let expected = f.clone();
        let (p, fp) = (plain.clone(), part.clone());
        let compressed =
            tokio::task::spawn_blocking(move || compress_verified(&p, &fp, expected.bytes, &expected.sha256))
                .await
                .context("compression task failed")?;
        // Fetched or not, a plain copy that did not make it is not kept for a later resume: only a cut-off
        // transfer (a `.part`) is.
        let _ = std::fs::remove_file(&plain);
        let compressed = compressed?;
        if let Some(b) = st.files.bucket() {
            // the object appears complete or not at all; the local copy goes
            let key =
                crate::store::sftp_key(b, &row.tenant, &["download", f.file_id.as_str(), &format!("{}.bz2", f.name)]);
            let put = crate::store::put_file(b, &part, &key).await;
            let _ = std::fs::remove_file(&part);
            let _ = std::fs::remove_dir(&out_dir);
            put?;
            return anyhow::Ok(compressed);
        }
        std::fs::rename(&part, &final_path)
            .with_context(|| format!("cannot move the compressed file into {}", out_dir.display()))?;
        anyhow::Ok(compressed)
    }
    .await
    .map_err(|e| ferry_io::retry::disk_full(e, &st.cfg.data_dir))
}

/// Compress `plain` into `out` while checking it is the file the App announced. Returns the compressed size.
fn compress_verified(plain: &Path, out: &Path, bytes: u64, sha256: &str) -> anyhow::Result<u64> {
    let r = compress_checked(plain, out, bytes, sha256);
    if r.is_err() {
        let _ = std::fs::remove_file(out);
    }
    r
}

fn compress_checked(plain: &Path, out: &Path, bytes: u64, sha256: &str) -> anyhow::Result<u64> {
    let mut input = std::fs::File::open(plain)?;
    let file = std::fs::File::create(out)?;
    let mut w = ferry_io::digest::HashingWriter::new(ferry_io::bz::ParallelBzWriter::new(file, 9, 0));
    std::io::copy(&mut input, &mut w)?;
    let (bz, d) = w.finish();
    let file = bz.finish()?;
    file.sync_all()?;
    if d.bytes != bytes || d.sha256 != sha256 {
        let _ = std::fs::remove_file(out);
        bail!(
            "the file fetched from the App does not match what it announced ({} bytes, sha256 {}); fetching again",
            d.bytes,
            d.sha256
        );
    }
    Ok(std::fs::metadata(out)?.len())
}

/// Tell the App the progress of every file of `tenant` it has not heard of (relayed, delivered), up to
/// [`MAX_FILES_PER_CALL`] files per call, and record what it heard. A file the App does not hold is an error
/// (retried with backoff), after the others were recorded.
async fn tell_app(st: &CommsState, tenant: &str, told: &mut usize) -> anyhow::Result<()> {
    let rows: Vec<db::DownloadRow> = db::downloads_needing_work(&st.db)
        .await?
        .into_iter()
        .filter(|r| r.tenant == tenant && r.state != FileState::Fetching && r.app_notified != r.state.as_str())
        .collect();
    if rows.is_empty() {
        return Ok(());
    }
    let (_, app) = st.apps.for_tenant(&st.db, tenant).await?;
    let mut unknown = Vec::new();
    for chunk in rows.chunks(MAX_FILES_PER_CALL) {
        let files = chunk
            .iter()
            .map(|r| {
                let at = match r.state {
                    FileState::Delivered => r.delivered_at.unwrap_or_else(Utc::now),
                    _ => Utc::now(),
                };
                FileProgressOf {
                    file_id: r.file.file_id.clone(),
                    progress: FileProgress { state: r.state, at, detail: None },
                }
            })
            .collect();
        let answer = match app.files_progress(tenant, &FilesProgress { files }).await {
            Ok(a) => a,
            Err(e) => {
                let msg = format!("telling the App: {e:#}");
                for r in chunk {
                    db::note_download_error(&st.db, tenant, &r.file.file_id, &msg).await?;
                }
                return Err(e);
            }
        };
        let heard: Vec<_> = chunk
            .iter()
            .filter(|r| answer.updated.contains(&r.file.file_id))
            .map(|r| (r.file.file_id.clone(), r.state))
            .collect();
        db::set_apps_notified(&st.db, tenant, &heard).await?;
        *told += heard.len();
        unknown.extend(answer.unknown);
    }
    if let Some(first) = unknown.first() {
        bail!("the App's outbox does not hold {} file(s) Comms relays, first {first} (retried)", unknown.len());
    }
    Ok(())
}
