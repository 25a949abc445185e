//! The Comms server's clients for its App servers: web services signed with the Comms service key and pinned to
//! each App's TLS certificate, and SFTP pinned to each App's SSH host key. [`Apps`] holds one [`AppClient`]
//! (its own connection pool and idle SFTP sessions) per App server registered in the database, and routes each
//! tenant to the App server it is placed on.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use ferry_io::client::ApiClient;
use ferry_proto::api::{
    CreateInstance, FileProgress, FileReady, FilesProgress, FilesProgressed, ImportReport, InstanceCreated,
};
use ferry_proto::manifest::Manifest;
use ferry_sftp::client::{ClientConfig, SftpClient};
use russh::keys::{PrivateKey, PublicKey};

use crate::config::AppEndpoint;
use crate::db::{self, Db};

/// The name of the App server of comms.toml's `[app]` section.
pub const DEFAULT_APP: &str = "default";

/// The registered App servers (table `app_servers`), each with its client, and their service keys (which sign
/// their downstream announcements). Reloaded from the database with every access change
/// ([`crate::ACCESS_RELOAD_BOUND`]) and whenever a tenant is placed on an App server not known yet.
pub struct Apps {
    service_key: PrivateKey,
    inner: std::sync::RwLock<AppsInner>,
}

#[derive(Default)]
struct AppsInner {
    by_name: std::collections::HashMap<String, (AppEndpoint, Arc<AppClient>)>,
    /// service key fingerprint -> (App server name, key)
    by_key: std::collections::HashMap<String, (String, PublicKey)>,
}

impl Apps {
    /// No App server known until [`Apps::reload`].
    pub fn new(service_key: PrivateKey) -> Self {
        Apps { service_key, inner: Default::default() }
    }

    /// Read the App servers from the database; a client whose endpoint did not change is kept (with its
    /// sessions), one that did is replaced. An App server whose entry cannot be used is skipped with a warning.
    pub async fn reload(&self, db: &Db) -> anyhow::Result<()> {
        let rows = db::list_apps(db).await?;
        let old = {
            let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
            inner.by_name.clone()
        };
        let mut next = AppsInner::default();
        for row in rows {
            let client = match old.get(&row.name) {
                Some((ep, c)) if *ep == row.endpoint => c.clone(),
                _ => match AppClient::new(&row.endpoint, self.service_key.clone()) {
                    Ok(c) => Arc::new(c),
                    Err(e) => {
                        tracing::warn!(app = %row.name, "App server skipped: {e:#}");
                        continue;
                    }
                },
            };
            if !row.endpoint.service_key.is_empty() {
                match ferry_io::keys::parse_public_key(&row.endpoint.service_key) {
                    Ok(k) => {
                        next.by_key.insert(ferry_io::keys::fingerprint(&k), (row.name.clone(), k));
                    }
                    Err(e) => tracing::warn!(app = %row.name, "the App server's service key is unusable: {e:#}"),
                }
            }
            next.by_name.insert(row.name, (row.endpoint, client));
        }
        *self.inner.write().unwrap_or_else(|p| p.into_inner()) = next;
        Ok(())
    }

    /// The client of the App server `name`, if registered (as of the last reload).
    pub fn get(&self, name: &str) -> Option<Arc<AppClient>> {
        self.inner.read().unwrap_or_else(|p| p.into_inner()).by_name.get(name).map(|(_, c)| c.clone())
    }

    /// The App server a tenant is placed on (read from the database each time, so a placement made by any
    /// process is followed at once), and its client.
    pub async fn for_tenant(&self, db: &Db, tenant: &str) -> anyhow::Result<(String, Arc<AppClient>)> {
        let name = match db::tenant_app(db, tenant).await? {
            None => anyhow::bail!("no tenant {tenant:?}"),
            Some(None) => anyhow::bail!(
                "tenant {tenant} is not placed on any App server: fill [app] in comms.toml or add one with \
                 `ferry comms app add`"
            ),
            Some(Some(n)) => n,
        };
        if let Some(c) = self.get(&name) {
            return Ok((name, c));
        }
        // registered since the last reload
        self.reload(db).await?;
        let c = self.get(&name).with_context(|| {
            format!(
                "tenant {tenant} is placed on App server {name:?}, which is not registered (see `ferry comms app list`)"
            )
        })?;
        Ok((name, c))
    }

    /// The App server whose service key has this fingerprint (the keyid of a signed call): (name, key).
    pub fn by_key(&self, keyid: &str) -> Option<(String, PublicKey)> {
        self.inner.read().unwrap_or_else(|p| p.into_inner()).by_key.get(keyid).cloned()
    }

    /// Whether any App server with a service key is known (announcements can be verified).
    pub fn any_key(&self) -> bool {
        !self.inner.read().unwrap_or_else(|p| p.into_inner()).by_key.is_empty()
    }

    fn sum(&self, f: impl Fn(&AppClient) -> u64) -> u64 {
        self.inner.read().unwrap_or_else(|p| p.into_inner()).by_name.values().map(|(_, c)| f(c)).sum()
    }

    /// SFTP logins to every App server since the start (of the clients in use).
    pub fn sftp_logins(&self) -> u64 {
        self.sum(AppClient::sftp_logins)
    }

    /// Signed calls to every App server since the start (of the clients in use).
    pub fn api_calls(&self) -> u64 {
        self.sum(AppClient::api_calls)
    }
}

/// Register comms.toml's `[app]` section as the App server [`DEFAULT_APP`] (or bring it up to date), and place
/// on it every tenant not placed yet (all tenants of a deployment from before several App servers). Nothing
/// when `[app]` is empty. Run at every start and by every `ferry comms ...` command.
pub async fn register_default(db: &Db, ep: &AppEndpoint) -> anyhow::Result<()> {
    if ep.api_url.is_empty() {
        return Ok(());
    }
    let fp = if ep.service_key.is_empty() {
        // no key: it cannot announce; a placeholder that no keyid matches keeps the column unique
        format!("(none: {DEFAULT_APP})")
    } else {
        ferry_io::keys::fingerprint(&ferry_io::keys::parse_public_key(&ep.service_key).context("[app] service_key")?)
    };
    if let Some(other) = db::list_apps(db).await?.into_iter().find(|a| a.key_fingerprint == fp && a.name != DEFAULT_APP)
    {
        anyhow::bail!(
            "the [app] section of comms.toml names the App server registered as {:?} (same service key): empty \
             [app], or remove that App server with `ferry comms app remove`",
            other.name
        );
    }
    db::put_app(db, DEFAULT_APP, ep, &fp).await?;
    let n = db::place_unplaced(db, DEFAULT_APP).await?;
    if n > 0 {
        tracing::info!(tenants = n, "tenants placed on App server {DEFAULT_APP} ([app] of comms.toml)");
    }
    Ok(())
}

pub struct AppClient {
    api: Option<ApiClient>,
    sftp: ClientConfig,
    ssh_addr: String,
    /// SFTP sessions to the App kept open between downstream fetches (a login per file was most of a small
    /// file's cost): at most [`IDLE_SESSIONS`], each reused only within [`IDLE_FOR`].
    idle: std::sync::Mutex<Vec<(SftpClient, Instant)>>,
    /// SFTP logins to the App and signed calls made to it since the start (`ferry_comms_app_sftp_logins_total`,
    /// `ferry_comms_app_calls_total`; the downstream bench prints them per hop).
    logins: AtomicU64,
    calls: AtomicU64,
}

const IDLE_SESSIONS: usize = 4;
const IDLE_FOR: Duration = Duration::from_secs(30);

impl AppClient {
    pub fn new(ep: &AppEndpoint, service_key: PrivateKey) -> anyhow::Result<Self> {
        let key = Arc::new(service_key);
        let pin = (!ep.tls_fingerprint.is_empty()).then_some(ep.tls_fingerprint.as_str());
        // Imports of large batches run inside the call: allow it time.
        let api = if ep.api_url.is_empty() {
            None
        } else {
            Some(ApiClient::new(&ep.api_url, pin, Some(key.clone()), Duration::from_secs(3600))?)
        };
        Ok(AppClient {
            api,
            sftp: ClientConfig {
                user: "ferry-comms".into(),
                key,
                host_key_fingerprint: ep.ssh_host_key_fingerprint.clone(),
                connect_timeout: Duration::from_secs(20),
                io_timeout: Duration::from_secs(120),
            },
            ssh_addr: ep.ssh_addr.clone(),
            idle: std::sync::Mutex::default(),
            logins: AtomicU64::new(0),
            calls: AtomicU64::new(0),
        })
    }

    /// Whether the App server answers: an SFTP login (host key pinned, this server's key) within 5 seconds.
    pub async fn probe(&self) -> anyhow::Result<()> {
        let cfg = ClientConfig {
            connect_timeout: Duration::from_secs(5),
            io_timeout: Duration::from_secs(5),
            ..self.sftp.clone()
        };
        let s = tokio::time::timeout(Duration::from_secs(6), SftpClient::connect(&cfg, &self.ssh_addr))
            .await
            .map_err(|_| anyhow::anyhow!("no answer from {} within 5 s", self.ssh_addr))?
            .with_context(|| format!("cannot open SFTP at {}", self.ssh_addr))?;
        let _ = s.close().await;
        Ok(())
    }

    /// SFTP logins to the App since the start.
    pub fn sftp_logins(&self) -> u64 {
        self.logins.load(Ordering::Relaxed)
    }

    /// Signed calls to the App's web services since the start.
    pub fn api_calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// A new SFTP session to the App (a login).
    async fn connect_sftp(&self) -> anyhow::Result<SftpClient> {
        self.logins.fetch_add(1, Ordering::Relaxed);
        SftpClient::connect(&self.sftp, &self.ssh_addr)
            .await
            .with_context(|| format!("cannot open SFTP to the App server at {}", self.ssh_addr))
    }

    fn api(&self) -> anyhow::Result<&ApiClient> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.api.as_ref().context("this App server has no api_url: register it again with `ferry comms app add` (or fill [app] in comms.toml) from the output of `ferry app info`")
    }

    pub async fn create_instance(&self, tenant: &str) -> anyhow::Result<InstanceCreated> {
        Ok(self.api()?.post("/v1/instances", &CreateInstance { tenant: tenant.to_string() }).await?)
    }

    /// Copy a completed batch to `/<tenant>/incoming/<batch>/` on the App server. Returns bytes sent.
    pub async fn push_batch(&self, tenant: &str, dir: &Path, m: &Manifest) -> anyhow::Result<u64> {
        let sftp = self.connect_sftp().await?;
        let remote_dir = format!("/{tenant}/incoming/{}", m.batch_id);
        sftp.mkdir_all(&remote_dir).await?;
        let mut sent = 0;
        for f in &m.files {
            let name = f.compressed_name();
            // Resume a relay cut short: a file already complete at the App is not sent again.
            let remote = format!("{remote_dir}/{name}");
            if sftp.stat_size(&remote).await? == Some(f.compressed_bytes) {
                continue;
            }
            sent += sftp
                .upload_file_resuming(&dir.join(&name), &remote)
                .await
                .with_context(|| format!("relaying {name}"))?;
        }
        sftp.close().await?;
        Ok(sent)
    }

    /// Copy one uploaded file of a batch not yet completed to `/<tenant>/incoming/<batch>/<name>` on the App
    /// (written beside and renamed into place, replacing an earlier copy), over a pooled session. Returns
    /// bytes sent. See [`crate::early`].
    pub async fn push_file(
        &self,
        tenant: &str,
        batch: &ferry_proto::batch::BatchId,
        local: &Path,
        name: &str,
    ) -> anyhow::Result<u64> {
        self.api()?;
        let (sftp, _) = self.fetch_session().await?;
        let remote_dir = format!("/{tenant}/incoming/{batch}");
        let r = async {
            sftp.mkdir_all(&remote_dir).await?;
            anyhow::Ok(sftp.upload_file_replacing(local, &format!("{remote_dir}/{name}")).await?)
        }
        .await;
        self.release_session(sftp, r.is_ok()).await;
        r
    }

    pub async fn import(&self, tenant: &str, m: &Manifest) -> anyhow::Result<ImportReport> {
        let path = format!("/v1/instances/{tenant}/batches/{}/import", m.batch_id);
        Ok(self.api()?.post(&path, m).await?)
    }

    /// Download a file the App announced (`/<tenant>/outbox/<id>/<name>`) to `local`, continuing a download
    /// that was cut off earlier (see [`SftpClient::download_file_resuming`]). Returns bytes received now.
    /// An idle session (the newest one still fresh) reuses a login; a session that fails is closed and the
    /// fetch is tried once more on a new one.
    pub async fn fetch_file(&self, f: &FileReady, local: &Path) -> anyhow::Result<u64> {
        let remote = format!("/{}/outbox/{}/{}", f.tenant, f.file_id, f.name);
        let mut reused = self.take_idle();
        loop {
            let was_reused = reused.is_some();
            let sftp = match reused.take() {
                Some(s) => s,
                None => self.connect_sftp().await?,
            };
            match sftp.download_file_resuming(&remote, local).await {
                Ok(n) => {
                    self.put_idle(sftp).await;
                    return Ok(n);
                }
                Err(e) => {
                    let _ = sftp.close().await;
                    if !was_reused {
                        return Err(anyhow::Error::from(e).context(format!("fetching {remote}")));
                    }
                }
            }
        }
    }

    /// An SFTP session for a worker pass that fetches many files (the newest fresh idle one, or a new login),
    /// and whether it was reused. Give it back with [`AppClient::release_session`].
    pub async fn fetch_session(&self) -> anyhow::Result<(SftpClient, bool)> {
        match self.take_idle() {
            Some(s) => Ok((s, true)),
            None => Ok((self.connect_sftp().await?, false)),
        }
    }

    /// Download a file the App announced over `sftp` (a session of [`AppClient::fetch_session`]), continuing
    /// a download that was cut off earlier. Several may run at once on one session.
    pub async fn fetch_on(&self, sftp: &SftpClient, f: &FileReady, local: &Path) -> anyhow::Result<u64> {
        let remote = format!("/{}/outbox/{}/{}", f.tenant, f.file_id, f.name);
        sftp.download_file_resuming(&remote, local).await.with_context(|| format!("fetching {remote}"))
    }

    /// Keep a session of [`AppClient::fetch_session`] for the next pass (`healthy`), or close it.
    pub async fn release_session(&self, sftp: SftpClient, healthy: bool) {
        if healthy {
            self.put_idle(sftp).await;
        } else {
            let _ = sftp.close().await;
        }
    }

    fn take_idle(&self) -> Option<SftpClient> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some((s, since)) = idle.pop() {
            if since.elapsed() < IDLE_FOR {
                return Some(s);
            }
            // too old to trust: dropped (the connection closes with it)
            drop(s);
        }
        None
    }

    async fn put_idle(&self, s: SftpClient) {
        let extra = {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            if idle.len() < IDLE_SESSIONS {
                idle.push((s, Instant::now()));
                None
            } else {
                Some(s)
            }
        };
        if let Some(s) = extra {
            let _ = s.close().await;
        }
    }

    /// Tell the App how far many files of a tenant have got, in one call (at most
    /// [`ferry_proto::api::MAX_FILES_PER_CALL`]).
    pub async fn files_progress(&self, tenant: &str, p: &FilesProgress) -> anyhow::Result<FilesProgressed> {
        let path = format!("/v1/instances/{tenant}/files/state");
        Ok(self.api()?.post(&path, p).await?)
    }

    /// Tell the App how far a file it created has got.
    pub async fn file_progress(&self, tenant: &str, id: &str, p: &FileProgress) -> anyhow::Result<()> {
        let path = format!("/v1/instances/{tenant}/files/{id}/state");
        let _: serde_json::Value = self.api()?.post(&path, p).await?;
        Ok(())
    }
}
