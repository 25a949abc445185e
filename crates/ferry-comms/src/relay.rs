//! The relay worker: takes completed batches in order (tenants concurrently, each tenant's batches one after
//! another: [`ferry_web::worker`]), copies them to the App server the tenant is placed on over SFTP (`uploaded -> relayed`), asks the
//! App to import them and records the verdict (`imported` or `rejected: why`). A failure leaves the batch where
//! it was, notes the reason and retries with exponential backoff; a restart resumes from the state in the
//! database.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use ferry_proto::api::BatchState;

use ferry_web::worker::Worker;

use crate::{CommsState, db};

pub async fn run(st: Arc<CommsState>, shutdown: impl Future<Output = ()> + Send + 'static) {
    let worker = Worker::new("relay", st.cfg.max_concurrent_tenants);
    let list = || async {
        let pending = db::pending_batches(&st.db).await?;
        anyhow::Ok(pending.into_iter().map(|b| (b.tenant.clone(), b)).collect::<Vec<_>>())
    };
    let work = |b: db::PendingBatch| {
        let st = st.clone();
        async move { relay_or_note(&st, &b).await }
    };
    worker.run(&st.relay_wakeup, shutdown, list, work).await
}

/// Move one pending batch a step forward; a failure is noted with the batch (for `status`) and returned.
#[tracing::instrument(name = "relay", skip_all, fields(tenant = %b.tenant, batch = %b.manifest.batch_id))]
async fn relay_or_note(st: &CommsState, b: &db::PendingBatch) -> anyhow::Result<()> {
    // Replicas on one PostgreSQL: exactly one relays a tenant's batches at a time; the others back off.
    let Some(claim) = db::claim_relay(&st.db, &b.tenant).await? else {
        anyhow::bail!("another Comms replica is relaying this tenant's batches");
    };
    // The list may be stale: relay only what is still pending in the state it was listed in.
    let current = db::batch_status(&st.db, &b.tenant, &b.manifest.batch_id).await?;
    if current.is_none_or(|s| s.state != b.state) {
        claim.release().await;
        return Ok(());
    }
    // which replica holds a tenant's relay claim shows in its log (the cluster tests stop that one mid-relay)
    tracing::info!(tenant = %b.tenant, batch = %b.manifest.batch_id, state = b.state.as_str(), "relay claimed");
    let r = relay_one(st, b).await;
    claim.release().await;
    let Err(e) = r else { return Ok(()) };
    let msg = format!("relay to the App server failed (attempt {}), will retry: {e:#}", b.attempts + 1);
    db::note_batch_failure(&st.db, &b.tenant, &b.manifest.batch_id, &msg).await?;
    Err(e)
}

async fn relay_one(st: &CommsState, b: &db::PendingBatch) -> anyhow::Result<()> {
    let id = &b.manifest.batch_id;
    let mut dir = st.batch_dir(&b.tenant, id.as_str());
    // the tenant's own App server (an App server that is down delays only the tenants placed on it)
    let (app_name, app) = st.apps.for_tenant(&st.db, &b.tenant).await?;
    // In an object store, the batch is first copied to a local spool (the App is sent what was checked).
    let _spool = match st.files.bucket() {
        Some(bucket) if b.state == BatchState::Uploaded => {
            let spool = spool_batch(st, bucket, b).await?;
            dir = spool.path().to_path_buf();
            Some(spool)
        }
        _ => None,
    };
    if b.state == BatchState::Uploaded {
        let t = std::time::Instant::now();
        // Send exactly what was measured at completion: check before (nothing sent if the files changed) and
        // after (a change while sending is caught before the App is asked to import).
        if let Err(why) = check_frozen(&dir, &b.manifest).await? {
            return refuse_changed(st, b, &why).await;
        }
        // Early copies of this batch's files still on their way to the App finish first (see `early`).
        st.early.settled(&b.tenant, id.as_str(), std::time::Duration::from_secs(120)).await;
        let bytes =
            app.push_batch(&b.tenant, &dir, &b.manifest).await.with_context(|| format!("App server {app_name}"))?;
        if let Err(why) = check_frozen(&dir, &b.manifest).await? {
            return refuse_changed(st, b, &why).await;
        }
        db::set_batch_state(&st.db, &b.tenant, id, BatchState::Relayed, None).await?;
        st.metrics.stage("relay", t.elapsed().as_secs_f64());
        tracing::info!(tenant = %b.tenant, batch = %id, app = %app_name, bytes, secs = t.elapsed().as_secs_f64(), "batch relayed");
    }
    let t = std::time::Instant::now();
    let report = app.import(&b.tenant, &b.manifest).await.with_context(|| format!("App server {app_name}"))?;
    st.metrics.stage("import", t.elapsed().as_secs_f64());
    let state = if report.state == BatchState::Imported { BatchState::Imported } else { BatchState::Rejected };
    db::set_batch_state(&st.db, &b.tenant, id, state, report.detail.as_deref()).await?;
    db::audit(
        &st.db,
        Some(&b.tenant),
        if state == BatchState::Imported { "batch_imported" } else { "batch_rejected" },
        &format!("{id} {}", state.as_str()),
    )
    .await;
    tracing::info!(tenant = %b.tenant, batch = %id, state = state.as_str(), detail = report.detail.as_deref().unwrap_or(""), "batch verdict");
    if state == BatchState::Imported {
        // The App holds the data now; keep the Comms copy only for rejected batches (for inspection).
        let removed = match st.files.bucket() {
            None => std::fs::remove_dir_all(&dir).map_err(Into::into),
            Some(bucket) => {
                crate::store::delete_prefix(bucket, &crate::store::batch_key(bucket, &b.tenant, id.as_str(), &[]))
                    .await
                    .map(|_| ())
            }
        };
        if let Err(e) = removed {
            tracing::warn!(batch = %id, "cannot clean up the relayed batch: {e:#}");
        }
    }
    Ok(())
}

/// Copies a completed batch's files from the object store into a temporary folder under `<data_dir>/tmp/`
/// (removed when the returned guard drops), streaming.
async fn spool_batch(
    st: &CommsState,
    bucket: &crate::store::Bucket,
    b: &db::PendingBatch,
) -> anyhow::Result<tempfile::TempDir> {
    let base = st.cfg.data_dir.join("tmp");
    std::fs::create_dir_all(&base)?;
    let spool = tempfile::Builder::new().prefix("relay-").tempdir_in(&base)?;
    for f in &b.manifest.files {
        let name = f.compressed_name();
        let key = crate::store::batch_key(bucket, &b.tenant, b.manifest.batch_id.as_str(), &[&name]);
        crate::store::get_file(bucket, &key, &spool.path().join(&name))
            .await
            .map_err(|e| ferry_io::retry::disk_full(e.context(format!("cannot read {name} of the batch")), &base))?;
    }
    Ok(spool)
}

/// Whether every file of the batch in `dir` still has the size and SHA-256 measured at completion. The outer
/// error: the files could not be read (retried); the inner one: what changed (the batch is refused).
async fn check_frozen(
    dir: &std::path::Path,
    m: &ferry_proto::manifest::Manifest,
) -> anyhow::Result<Result<(), String>> {
    let (dir, m) = (dir.to_path_buf(), m.clone());
    tokio::task::spawn_blocking(move || {
        for f in &m.files {
            let name = f.compressed_name();
            let (size, sha) = ferry_io::digest::file_sha256(&dir.join(&name))
                .map_err(|e| anyhow::anyhow!("cannot read {name} of the batch: {e}"))?;
            let sha_ok = f.compressed_sha256.as_ref().is_none_or(|h| *h == sha);
            if size != f.compressed_bytes || !sha_ok {
                return Ok(Err(format!(
                    "{name} changed after the batch was completed ({size} bytes now, {} measured at completion); \
                     the batch is not relayed: send a new batch",
                    f.compressed_bytes
                )));
            }
        }
        Ok(Ok(()))
    })
    .await?
}

/// A completed batch whose files changed: refused for good (not retried), audited.
async fn refuse_changed(st: &CommsState, b: &db::PendingBatch, why: &str) -> anyhow::Result<()> {
    let id = &b.manifest.batch_id;
    tracing::warn!(tenant = %b.tenant, batch = %id, "{why}");
    db::set_batch_state(&st.db, &b.tenant, id, BatchState::Rejected, Some(why)).await?;
    db::audit(&st.db, Some(&b.tenant), "batch_rejected", &format!("{id} rejected: {why}")).await;
    Ok(())
}
