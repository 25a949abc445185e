//! Downstream worker (tenants concurrently, [`ferry_web::worker`]): fetches each file the App announced over
//! SFTP, verifies its SHA-256, compresses it with bzip2 into the tenant's `download/<id>/` folder (temporary
//! name, then rename) and puts it on the tenant's download list, waking long-polling Connectors. It also tells
//! the App how each file progresses (relayed, delivered), retrying until the App has heard. State lives in the
//! `downloads` table: a restart resumes.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use chrono::Utc;
use ferry_proto::api::{FileProgress, FileState};

use ferry_web::worker::Worker;

use crate::{CommsState, db};

pub async fn run(st: Arc<CommsState>, shutdown: impl Future<Output = ()> + Send + 'static) {
    let worker = Worker::new("downstream work", st.cfg.max_concurrent_tenants);
    let list = || async {
        let rows = db::downloads_needing_work(&st.db).await?;
        anyhow::Ok(rows.into_iter().map(|r| (r.tenant.clone(), r)).collect::<Vec<_>>())
    };
    let work = |row: db::DownloadRow| {
        let st = st.clone();
        async move { work_or_note(&st, &row).await }
    };
    worker.run(&st.downstream_wakeup, shutdown, list, work).await
}

/// One step of one file (fetch it, or tell the App how it went); a failure is noted with the file (for `tenant
/// files`) and returned.
#[tracing::instrument(name = "download", skip_all, fields(tenant = %row.tenant, file = %row.file.file_id))]
async fn work_or_note(st: &CommsState, row: &db::DownloadRow) -> anyhow::Result<()> {
    let r = if row.state == FileState::Fetching { fetch(st, row).await } else { tell_app(st, row).await };
    let Err(e) = r else { return Ok(()) };
    let msg = format!("{e:#}");
    // kept with the file for `tenant files`; the worker loop logs failures, rate-limited
    tracing::debug!(tenant = %row.tenant, file = %row.file.file_id, "{msg}");
    db::note_download_error(&st.db, &row.tenant, &row.file.file_id, &msg).await?;
    Err(e)
}

async fn fetch(st: &CommsState, row: &db::DownloadRow) -> anyhow::Result<()> {
    let f = &row.file;
    let tmp_dir = st.cfg.data_dir.join("tenants").join(&row.tenant).join("tmp");
    let out_dir = st.sftp_root(&row.tenant).join("download").join(f.file_id.as_str());
    let plain = tmp_dir.join(format!("{}.download", f.file_id));
    let compressed = async {
        std::fs::create_dir_all(&tmp_dir).with_context(|| format!("cannot create {}", tmp_dir.display()))?;
        // A fetch cut off earlier continues from its `.part`; the SHA-256 check below catches any mix-up.
        st.app.fetch_file(f, &plain).await?;
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
        std::fs::rename(&part, &final_path)
            .with_context(|| format!("cannot move the compressed file into {}", out_dir.display()))?;
        anyhow::Ok(compressed)
    }
    .await
    .map_err(|e| ferry_io::retry::disk_full(e, &st.cfg.data_dir))?;
    db::set_download_ready(&st.db, &row.tenant, &f.file_id, compressed).await?;
    tracing::info!(tenant = %row.tenant, file = %f.file_id, name = %f.name, bytes = f.bytes, compressed, "file ready for download");
    st.downloads_changed.send_modify(|v| *v += 1);
    // The App hears "relayed" on the next pass.
    st.downstream_wakeup.notify_one();
    Ok(())
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

async fn tell_app(st: &CommsState, row: &db::DownloadRow) -> anyhow::Result<()> {
    let at = match row.state {
        FileState::Delivered => row.delivered_at.unwrap_or_else(Utc::now),
        _ => Utc::now(),
    };
    let p = FileProgress { state: row.state, at, detail: None };
    st.app.file_progress(&row.tenant, row.file.file_id.as_str(), &p).await?;
    db::set_app_notified(&st.db, &row.tenant, &row.file.file_id, row.state).await?;
    Ok(())
}
