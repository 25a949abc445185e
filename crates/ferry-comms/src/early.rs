//! Early relay: each file of a batch is copied to the App server as soon as the Connector's upload of it is
//! complete (renamed into `upload/<batch>/<name>.bz2`), while the Connector is still extracting and uploading
//! the batch's other files. At `complete` the relay ([`crate::relay`]) then finds those files already at the App
//! (same size) and sends only what is missing, so the relay stage overlaps the upload.
//!
//! This only moves bytes earlier; it decides nothing. The batch is still frozen and measured at `complete`,
//! checked unchanged before and after the relay, and verified by the App against the manifest (MD5 and row
//! counts) before anything is imported; a file that changed after its early copy is caught there. An early
//! copy that fails or is dropped (queue full, App down) is simply sent again by the relay. With the files in an
//! object store, the SFTP server reports the rename the same way and the copy reads the object through a
//! temporary file. A copy at the App
//! whose batch is never completed is removed by the App's retention.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_proto::batch::BatchId;
use tokio::sync::{Notify, mpsc};

use crate::CommsState;

/// Files waiting for an early copy; past this, arrivals are left to the relay at `complete`.
const QUEUE: usize = 1024;
/// Early copies running at once (over the App client's pooled SFTP sessions).
const AT_ONCE: usize = 4;

/// One uploaded file, complete in the tenant's SFTP area.
#[derive(Debug, Clone)]
pub struct Arrived {
    pub tenant: String,
    pub batch: BatchId,
    /// `<name>.bz2`, as in the manifest.
    pub name: String,
    pub path: PathBuf,
}

/// The queue of arrived files and the count of early copies not yet finished, per (tenant, batch).
pub struct EarlyRelay {
    tx: Option<mpsc::Sender<Arrived>>,
    rx: Mutex<Option<mpsc::Receiver<Arrived>>>,
    pending: Mutex<HashMap<(String, String), usize>>,
    settled: Notify,
}

impl EarlyRelay {
    /// `enabled = false` (`relay_early = false` in comms.toml): arrivals are ignored.
    pub fn new(enabled: bool) -> Self {
        let (tx, rx) = if enabled {
            let (tx, rx) = mpsc::channel(QUEUE);
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        EarlyRelay { tx, rx: Mutex::new(rx), pending: Mutex::default(), settled: Notify::new() }
    }

    /// Queue an early copy of `a` (never blocks; a full queue leaves the file to the relay).
    pub fn offer(&self, a: Arrived) {
        let Some(tx) = &self.tx else { return };
        let key = (a.tenant.clone(), a.batch.as_str().to_string());
        *self.lock().entry(key.clone()).or_default() += 1;
        if tx.try_send(a).is_err() {
            self.done(&key);
        }
    }

    /// Wait until no early copy of the batch is queued or running (at most `max`), so the relay never sends a
    /// file at the same time as an early copy of it.
    pub async fn settled(&self, tenant: &str, batch: &str, max: Duration) {
        let key = (tenant.to_string(), batch.to_string());
        let _ = tokio::time::timeout(max, async {
            loop {
                let notified = self.settled.notified();
                if !self.lock().contains_key(&key) {
                    return;
                }
                notified.await;
            }
        })
        .await;
    }

    fn done(&self, key: &(String, String)) {
        let mut pending = self.lock();
        if let Some(n) = pending.get_mut(key) {
            *n -= 1;
            if *n == 0 {
                pending.remove(key);
            }
        }
        drop(pending);
        self.settled.notify_waiters();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), usize>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The file `to` (absolute, below `root`) if it is a complete upload of a batch: `<root>/upload/<batch>/<name>.bz2`.
pub fn arrived(tenant: &str, root: &Path, to: &Path) -> Option<Arrived> {
    let rel = to.strip_prefix(root).ok()?;
    let parts: Vec<&str> = rel.iter().map(|c| c.to_str()).collect::<Option<_>>()?;
    let [upload, batch, name] = parts.as_slice() else { return None };
    if *upload != "upload" || name.starts_with('.') || !name.ends_with(".bz2") {
        return None;
    }
    let batch = BatchId::parse(batch).ok()?;
    Some(Arrived { tenant: tenant.to_string(), batch, name: name.to_string(), path: to.to_path_buf() })
}

/// Copies arrived files to the App, [`AT_ONCE`] at a time, until shutdown.
pub async fn run(st: Arc<CommsState>, shutdown: impl Future<Output = ()> + Send + 'static) {
    let Some(mut rx) = st.early.rx.lock().unwrap_or_else(|p| p.into_inner()).take() else { return };
    let gate = Arc::new(tokio::sync::Semaphore::new(AT_ONCE));
    let mut running = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let a = tokio::select! {
            _ = &mut shutdown => break,
            a = rx.recv() => match a { Some(a) => a, None => break },
        };
        let Ok(permit) = gate.clone().acquire_owned().await else { break };
        while running.try_join_next().is_some() {}
        let st = st.clone();
        running.spawn(async move {
            copy(&st, &a).await;
            st.early.done(&(a.tenant.clone(), a.batch.as_str().to_string()));
            drop(permit);
        });
    }
    running.shutdown().await;
}

async fn copy(st: &CommsState, a: &Arrived) {
    let t = std::time::Instant::now();
    let pushed = async {
        let (_, app) = st.apps.for_tenant(&st.db, &a.tenant).await?;
        match st.files.bucket() {
            None => app.push_file(&a.tenant, &a.batch, &a.path, &a.name).await,
            Some(b) => {
                // in an object store: spooled to a local file first, as the relay does
                let spool = spool_arrived(st, b, a).await?;
                app.push_file(&a.tenant, &a.batch, &spool.path().join(&a.name), &a.name).await
            }
        }
    };
    match pushed.await {
        Ok(bytes) => {
            st.metrics.early_relayed(bytes);
            tracing::debug!(tenant = %a.tenant, batch = %a.batch, file = %a.name, bytes,
                secs = t.elapsed().as_secs_f64(), "file relayed as it arrived");
        }
        // Not an error of the batch: the relay at `complete` sends what is missing.
        Err(e) => tracing::info!(tenant = %a.tenant, batch = %a.batch, file = %a.name,
            "early relay of a file failed; the relay sends it at completion: {e:#}"),
    }
}

/// Copies an arrived file from the object store into a temporary folder under `<data_dir>/tmp/` (removed when
/// the guard drops): from the tenant's upload area, or from the batch if `complete` already moved it there.
async fn spool_arrived(st: &CommsState, b: &crate::store::Bucket, a: &Arrived) -> anyhow::Result<tempfile::TempDir> {
    let base = st.cfg.data_dir.join("tmp");
    std::fs::create_dir_all(&base)?;
    let spool = tempfile::Builder::new().prefix("early-").tempdir_in(&base)?;
    let local = spool.path().join(&a.name);
    let batch = a.batch.as_str();
    let uploaded = crate::store::sftp_key(b, &a.tenant, &["upload", batch, &a.name]);
    let key = if crate::store::size_of(b, &uploaded).await?.is_some() {
        uploaded
    } else {
        crate::store::batch_key(b, &a.tenant, batch, &[&a.name])
    };
    crate::store::get_file(b, &key, &local).await?;
    Ok(spool)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_complete_batch_files_count_as_arrived() {
        let root = Path::new("/d/tenants/acme/sftp");
        let id = "20261203T120000Z-0a1b2c3d";
        let a = arrived("acme", root, &root.join(format!("upload/{id}/sales.csv.bz2"))).expect("a complete upload");
        assert_eq!((a.tenant.as_str(), a.batch.as_str(), a.name.as_str()), ("acme", id, "sales.csv.bz2"));
        for bad in [
            format!("upload/{id}/.sales.csv.bz2.part"),
            format!("upload/{id}/sales.csv"),
            format!("upload/{id}/x/sales.csv.bz2"),
            format!("download/{id}/sales.csv.bz2"),
            "upload/not a batch/sales.csv.bz2".to_string(),
            "upload/sales.csv.bz2".to_string(),
        ] {
            assert!(arrived("acme", root, &root.join(&bad)).is_none(), "{bad}");
        }
        assert!(arrived("acme", root, Path::new("/elsewhere/upload/b/f.bz2")).is_none());
    }

    #[tokio::test]
    async fn settled_waits_for_every_offered_copy_of_the_batch() {
        let e = Arc::new(EarlyRelay::new(true));
        let root = Path::new("/r");
        let id = BatchId::new(chrono::Utc::now());
        let a = arrived("acme", root, &root.join(format!("upload/{id}/a.csv.bz2"))).unwrap();
        e.offer(a.clone());
        e.offer(a);
        let waiter = {
            let e = e.clone();
            let id = id.to_string();
            tokio::spawn(async move { e.settled("acme", &id, Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "two copies are pending");
        let key = ("acme".to_string(), id.to_string());
        e.done(&key);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "one copy is still pending");
        e.done(&key);
        tokio::time::timeout(Duration::from_secs(1), waiter).await.expect("settled").unwrap();
        // another batch never waits
        tokio::time::timeout(Duration::from_millis(100), e.settled("acme", "other", Duration::from_secs(5)))
            .await
            .expect("nothing pending");
    }
}
