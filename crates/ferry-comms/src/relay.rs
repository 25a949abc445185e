//! The relay worker: takes completed batches in order, copies them to the App server over SFTP (`uploaded ->
//! relayed`), asks the App to import them and records the verdict (`imported` or `rejected: why`). A failure
//! leaves the batch where it was, notes the reason and retries with exponential backoff; a restart resumes
//! from the state in the database.

use std::future::Future;
use std::sync::Arc;

use ferry_proto::api::BatchState;

use crate::{CommsState, db};

pub async fn run(st: Arc<CommsState>, shutdown: impl Future<Output = ()> + Send + 'static) {
    crate::worker_loop("relay", &st.relay_wakeup, shutdown, || relay_pending(&st)).await
}

/// Move every pending batch one step forward. Ok(true) if something moved.
async fn relay_pending(st: &CommsState) -> anyhow::Result<bool> {
    let pending = db::pending_batches(&st.db).await?;
    let mut moved = false;
    let mut failure = None;
    for b in pending {
        let id = b.manifest.batch_id.clone();
        match relay_one(st, &b).await {
            Ok(()) => moved = true,
            Err(e) => {
                let msg = format!("relay to the App server failed (attempt {}), will retry: {e:#}", b.attempts + 1);
                db::note_batch_failure(&st.db, &b.tenant, &id, &msg).await?;
                failure = Some(e);
            }
        }
    }
    match failure {
        Some(e) if !moved => Err(e),
        _ => Ok(moved),
    }
}

async fn relay_one(st: &CommsState, b: &db::PendingBatch) -> anyhow::Result<()> {
    let id = &b.manifest.batch_id;
    let dir = st.batch_dir(&b.tenant, id.as_str());
    if b.state == BatchState::Uploaded {
        let t = std::time::Instant::now();
        let bytes = st.app.push_batch(&b.tenant, &dir, &b.manifest).await?;
        db::set_batch_state(&st.db, &b.tenant, id, BatchState::Relayed, None).await?;
        tracing::info!(tenant = %b.tenant, batch = %id, bytes, secs = t.elapsed().as_secs_f64(), "batch relayed");
    }
    let report = st.app.import(&b.tenant, &b.manifest).await?;
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
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!(batch = %id, "cannot clean up the relayed batch: {e}");
        }
    }
    Ok(())
}
