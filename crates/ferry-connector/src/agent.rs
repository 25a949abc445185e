//! What the Connector does, command by command: `init` (config skeleton + key pair), `register` (send the
//! public key with a registration token, pin the server's identity), `check` (validate every query's rows, send
//! nothing), `sync` (plan full files and windows -> extract + validate -> compress -> upload over SFTP -> complete
//! -> wait for the verdict -> move the watermarks of incremental files, resuming an unfinished batch first) and
//! `status`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ferry_io::client::ApiClient;
use ferry_io::keys::{self, KeyAlgorithm};
use ferry_proto::api::{BatchStatus, RegisterRequest, RegisterResponse};
use ferry_proto::batch::BatchId;
use ferry_proto::manifest::{MANIFEST_NAME, Manifest};
use ferry_proto::token::RegistrationToken;
use ferry_sftp::client::{ClientConfig, SftpClient};
use russh::keys::PrivateKey;

use crate::check::{CheckLimits, CheckReport};
use crate::config::{ConnectorConfig, Registration};
use crate::erp::source::Source;
use crate::extract::{ExtractOptions, ExtractPlan, ReadyFile, check_mapping, extract_announcing};
use crate::journal::{Journal, PlannedWatermark};
use crate::mapping::{Decision, Mapping};
use ferry_io::retry::Backoff;

/// The choices of one `sync`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncOptions {
    /// Extract every file whole, incremental ones too (`sync --full`).
    pub full: bool,
    /// Send a batch whose only problems are warnings (`sync --allow-warnings`; also `allow_warnings` in the
    /// mapping).
    pub allow_warnings: bool,
    /// The date of the extract: the watermark it sets and the base of the windows. Default: today (local time).
    pub today: Option<chrono::NaiveDate>,
}

/// Read and validate the mapping named by the config.
pub fn load_mapping(cfg: &ConnectorConfig) -> anyhow::Result<Mapping> {
    let mapping_path = cfg.mapping_path();
    let text = std::fs::read_to_string(mapping_path)
        .with_context(|| format!("cannot read the mapping {}", mapping_path.display()))?;
    Mapping::from_toml(&text).with_context(|| format!("mapping {}", mapping_path.display()))
}

/// The ERP database the config names, as a [`Source`].
pub async fn open_source(cfg: &ConnectorConfig) -> anyhow::Result<Box<dyn Source>> {
    Ok(crate::erp::source::open_source(&cfg.erp).await?)
}

/// `ferry connector check`: run every query of the mapping and validate its rows; nothing is written or sent, and
/// neither a key nor a registration is needed. Returns the mapping (for its `allow_warnings`) and the report.
pub async fn check(
    cfg: &ConnectorConfig,
    limits: CheckLimits,
    progress: &(dyn Fn(&str, u64, u64) + Sync),
) -> anyhow::Result<(Mapping, CheckReport)> {
    let mapping = load_mapping(cfg)?;
    let source = open_source(cfg).await?;
    let report = check_mapping(source.as_ref(), &mapping, limits, progress).await;
    Ok((mapping, report))
}

/// What `init` created.
pub struct InitReport {
    pub config: PathBuf,
    pub key: PathBuf,
    pub public_key: String,
    pub fingerprint: String,
}

/// Create `dir/connector.toml` (if absent, with `erp` as its `[erp]` section), `dir/mapping.toml` (if absent:
/// `mapping`, the text to start from) and a new key pair under `dir/keys/`.
pub fn init(
    dir: &Path,
    erp: &crate::config::InitErp,
    mapping: &str,
    alg: KeyAlgorithm,
    force_key: bool,
) -> anyhow::Result<InitReport> {
    std::fs::create_dir_all(dir.join("keys")).with_context(|| format!("cannot create {}", dir.display()))?;
    let config = dir.join("connector.toml");
    if !config.exists() {
        // readable by its owner only: it may hold the ERP's password
        keys::write_owner_only(&config, crate::config::skeleton(erp).as_bytes())
            .with_context(|| format!("cannot write {}", config.display()))?;
    }
    let mapping_path = dir.join("mapping.toml");
    if !mapping_path.exists() {
        std::fs::write(&mapping_path, mapping)?;
    }
    let cfg = ConnectorConfig::load(&config)?;
    let key_path = cfg.key_path().to_path_buf();
    if key_path.exists() && !force_key {
        let key = keys::load_private_key(&key_path)?;
        let public = keys::public_key_openssh(key.public_key())?;
        return Ok(InitReport {
            config,
            fingerprint: keys::fingerprint(key.public_key()),
            key: key_path,
            public_key: public,
        });
    }
    let key = keys::generate(alg)?;
    keys::write_private_key(&key_path, &key, force_key)?;
    keys::write_public_key(&key_path.with_extension("pub"), key.public_key(), "ferry-connector")?;
    Ok(InitReport {
        config,
        fingerprint: keys::fingerprint(key.public_key()),
        public_key: keys::public_key_openssh(key.public_key())?,
        key: key_path,
    })
}

/// Called per file of an extract with (file, rows, CSV bytes) so far; see [`extract_planned`].
pub type FileProgress = Arc<dyn Fn(&str, u64, u64) + Send + Sync>;

/// Called with (compressed file name, bytes) when `sync` has uploaded a file while the extract still runs (the
/// extract is then on a later file, whose progress this must not close).
pub type UploadProgress = Arc<dyn Fn(&str, u64) + Send + Sync>;

pub struct Connector {
    pub cfg: ConnectorConfig,
    key: Arc<PrivateKey>,
    /// Live per-file counts of the extract (`sync`, `bench` show them); `None`: not reported.
    file_progress: Option<FileProgress>,
    /// Files uploaded during the extract; `None`: said on the progress lines instead.
    upload_progress: Option<UploadProgress>,
    /// What the receive passes so far spent in each step ([`Connector::receive_times`]).
    pub(crate) receive_times: Arc<std::sync::Mutex<crate::delivery::ReceiveTimes>>,
}

impl Connector {
    /// Report each file's rows and bytes while the extract runs (a terminal progress bar, or plain lines).
    pub fn set_file_progress(&mut self, f: FileProgress) {
        self.file_progress = Some(f);
    }

    /// Report each file `sync` uploads while the extract still runs through `f` rather than as a progress line.
    pub fn set_upload_progress(&mut self, f: UploadProgress) {
        self.upload_progress = Some(f);
    }

    pub fn load(config: &Path) -> anyhow::Result<Connector> {
        let cfg = ConnectorConfig::load(config)?;
        let key = keys::load_private_key(cfg.key_path())?;
        Ok(Connector {
            cfg,
            key: Arc::new(key),
            file_progress: None,
            upload_progress: None,
            receive_times: Arc::default(),
        })
    }

    pub fn key_fingerprint(&self) -> String {
        keys::fingerprint(self.key.public_key())
    }

    /// Send our public key with the token; keep the server's pins.
    pub async fn register(&self, token: &str) -> anyhow::Result<Registration> {
        let token = RegistrationToken::decode(token)?;
        let pin = (!token.tls.is_empty()).then_some(token.tls.as_str());
        let proxy = self.proxy_for_url(&token.url)?;
        let api = ApiClient::via(&token.url, pin, None, Duration::from_secs(30), proxy.as_ref().map(|p| p.url()))?;
        let hostname = std::env::var("HOSTNAME").or_else(|_| std::env::var("COMPUTERNAME")).unwrap_or_default();
        let resp: Result<RegisterResponse, _> = api
            .post(
                "/v1/register",
                &RegisterRequest {
                    token_secret: token.secret.clone(),
                    public_key: keys::public_key_openssh(self.key.public_key())?,
                    hostname,
                },
            )
            .await
            .map_err(anyhow::Error::from);
        let resp = match (resp, &proxy) {
            (Ok(r), _) => r,
            (Err(e), Some(p)) => {
                // reqwest hides why a proxy refused a tunnel: ask the proxy ourselves for a precise reason.
                let target = url::Url::parse(&token.url)
                    .ok()
                    .and_then(|u| Some(format!("{}:{}", u.host_str()?, u.port_or_known_default()?)))
                    .unwrap_or_default();
                let why = match crate::proxy::connect(p, &target, Duration::from_secs(15)).await {
                    Ok(_) => e,
                    Err(probe) => e.context(format!("{probe:#}")),
                };
                return Err(why.context("registration refused"));
            }
            (Err(e), None) => return Err(e.context("registration refused")),
        };
        if resp.key_fingerprint != self.key_fingerprint() {
            bail!("the server registered a different key than ours; refusing to continue");
        }
        let reg = Registration {
            comms_url: token.url,
            tls_fingerprint: token.tls,
            tenant: resp.tenant,
            key_fingerprint: resp.key_fingerprint,
            ssh_addr: resp.ssh_addr,
            ssh_host_key_fingerprint: resp.ssh_host_key_fingerprint,
            registered_at: chrono::Utc::now(),
        };
        ferry_io::private::create_dir(self.cfg.data_dir())?;
        reg.save(self.cfg.registration_path())?;
        Ok(reg)
    }

    /// A signed client for this connector's Comms server.
    pub fn api(&self) -> anyhow::Result<ApiClient> {
        self.api_for(&self.registration()?)
    }

    /// The spool folder of a batch.
    pub fn spool_dir(&self, id: &BatchId) -> PathBuf {
        self.cfg.spool_dir().join(id.as_str())
    }

    /// An SFTP session to the Comms server with this connector's key and pins.
    pub async fn sftp(&self) -> anyhow::Result<SftpClient> {
        let reg = self.registration()?;
        self.open_sftp(&reg).await
    }

    fn proxy_for_url(&self, url: &str) -> anyhow::Result<Option<crate::proxy::Proxy>> {
        let host = url::Url::parse(url).ok().and_then(|u| u.host_str().map(str::to_string)).unwrap_or_default();
        crate::proxy::for_host(&self.cfg.proxy, &host)
    }

    /// SFTP to the Comms server, through the proxy if one applies; the host key is always pinned.
    async fn open_sftp(&self, reg: &Registration) -> anyhow::Result<SftpClient> {
        let cfg = self.sftp_config(reg);
        let host = reg.ssh_addr.rsplit_once(':').map(|(h, _)| h.trim_matches(['[', ']'])).unwrap_or(&reg.ssh_addr);
        match crate::proxy::for_host(&self.cfg.proxy, host)? {
            Some(p) => {
                let tunnel = crate::proxy::connect(&p, &reg.ssh_addr, cfg.connect_timeout).await?;
                Ok(SftpClient::connect_stream(&cfg, tunnel).await?)
            }
            None => Ok(SftpClient::connect(&cfg, &reg.ssh_addr).await?),
        }
    }

    pub fn registration(&self) -> anyhow::Result<Registration> {
        Registration::load(self.cfg.registration_path())
    }

    pub fn api_for(&self, reg: &Registration) -> anyhow::Result<ApiClient> {
        self.api_for_with_timeout(reg, self.cfg.network.timeout())
    }

    /// A signed client whose calls may take up to `timeout` (a long-poll needs its wait on top of the usual).
    pub fn api_with_timeout(&self, timeout: Duration) -> anyhow::Result<ApiClient> {
        self.api_for_with_timeout(&self.registration()?, timeout)
    }

    fn api_for_with_timeout(&self, reg: &Registration, timeout: Duration) -> anyhow::Result<ApiClient> {
        let pin = (!reg.tls_fingerprint.is_empty()).then_some(reg.tls_fingerprint.as_str());
        let proxy = self.proxy_for_url(&reg.comms_url)?;
        ApiClient::via(&reg.comms_url, pin, Some(self.key.clone()), timeout, proxy.as_ref().map(|p| p.url()))
    }

    fn sftp_config(&self, reg: &Registration) -> ClientConfig {
        ClientConfig {
            user: reg.tenant.clone(),
            key: self.key.clone(),
            host_key_fingerprint: reg.ssh_host_key_fingerprint.clone(),
            connect_timeout: self.cfg.network.connect_timeout(),
            io_timeout: self.cfg.network.timeout(),
        }
    }

    /// Replace this connector's key without downtime: register a new key with a call signed by the current one,
    /// switch the key files, then use the new key once so the server retires the old. Returns the new fingerprint.
    pub async fn rotate_key(&mut self, alg: KeyAlgorithm) -> anyhow::Result<String> {
        let path = self.cfg.key_path().to_path_buf();
        let new_path = path.with_extension("new");
        let new_key = keys::generate(alg)?;
        keys::write_private_key(&new_path, &new_key, true)?;
        let api = self.api()?;
        let who: ferry_proto::api::WhoAmI = api
            .post(
                "/v1/keys/rotate",
                &ferry_proto::api::RotateKey { public_key: keys::public_key_openssh(new_key.public_key())? },
            )
            .await
            .context("the Comms server refused the new key; the current key stays in use")?;
        std::fs::rename(&new_path, &path).with_context(|| format!("cannot replace {}", path.display()))?;
        keys::write_public_key(&path.with_extension("pub"), new_key.public_key(), "ferry-connector")?;
        self.key = Arc::new(new_key);
        let _: ferry_proto::api::WhoAmI = self.api()?.get("/v1/whoami").await.context("first use of the new key")?;
        Ok(who.key_fingerprint)
    }

    /// Files received from the cloud, newest first, from the local journal (works offline).
    pub async fn received(&self, limit: i64) -> anyhow::Result<Vec<crate::journal::ReceivedFile>> {
        Journal::open(self.cfg.journal_path()).await?.recent_received(limit).await
    }

    /// What this connector still has to do and why, from its own files (works while the Comms server is
    /// unreachable): batches not yet accepted, files not delivered or not acknowledged, steps that keep failing
    /// with their last error and next retry.
    pub async fn pending(&self) -> anyhow::Result<Vec<String>> {
        let journal = Journal::open(self.cfg.journal_path()).await?;
        let mut out = Vec::new();
        for b in journal.recent(100).await?.iter().rev().filter(|b| b.state == "extracted") {
            out.push(format!(
                "batch {}: extracted, not yet accepted by the Comms server (the next sync sends it)",
                b.manifest.batch_id
            ));
        }
        for r in journal.recent_received(100).await?.iter().rev() {
            match r.state {
                crate::journal::ReceivedState::Failed => out.push(format!(
                    "file {} ({}): not delivered after {} attempts, retried on the next poll; last error: {}",
                    r.name,
                    r.file_id,
                    r.attempts,
                    r.error.as_deref().unwrap_or("unknown")
                )),
                crate::journal::ReceivedState::Applied => out.push(format!(
                    "file {} ({}): applied; its acknowledgement to the Comms server is sent on the next poll",
                    r.name, r.file_id
                )),
                crate::journal::ReceivedState::Acked => {}
            }
        }
        for f in crate::pending::Pending::new(self.cfg.data_dir()).list() {
            let next = match f.next_retry {
                Some(t) => format!("next retry at {}", t.with_timezone(&chrono::Local).format("%Y-%m-%d %H:%M:%S")),
                None => "retried when it runs again".to_owned(),
            };
            out.push(format!(
                "{}: failing since {} ({} times in a row), {next}; last error: {}",
                f.step,
                f.since.with_timezone(&chrono::Local).format("%Y-%m-%d %H:%M:%S"),
                f.failures,
                f.last_error
            ));
        }
        Ok(out)
    }

    /// The watermark of each incremental file (from the local journal; works offline).
    pub async fn watermarks(&self) -> anyhow::Result<std::collections::BTreeMap<String, crate::journal::Watermark>> {
        Journal::open(self.cfg.journal_path()).await?.watermarks().await
    }

    /// Batches as the Comms server sees them (newest first).
    pub async fn status(&self, limit: i64) -> anyhow::Result<Vec<BatchStatus>> {
        let reg = self.registration()?;
        Ok(self.api_for(&reg)?.get(&format!("/v1/batches?limit={limit}")).await?)
    }

    /// One upstream run with the default [`SyncOptions`] (incremental files as windows when due, warnings
    /// allowed only if the mapping says so).
    pub async fn sync(&self, progress: &(dyn Fn(&str) + Sync)) -> anyhow::Result<SyncReport> {
        self.sync_with(&SyncOptions::default(), progress).await
    }

    /// One upstream run. Resumes a batch that was extracted but not completed before extracting a new one. A new
    /// batch that fails validation is not sent (its spooled files are removed) and the error says why. A failure
    /// is recorded for `status` (see [`crate::pending`]) until a sync succeeds.
    pub async fn sync_with(&self, opts: &SyncOptions, progress: &(dyn Fn(&str) + Sync)) -> anyhow::Result<SyncReport> {
        let pending = crate::pending::Pending::new(self.cfg.data_dir());
        let r = self.sync_once(opts, progress).await.map_err(|e| ferry_io::retry::disk_full(e, self.cfg.data_dir()));
        match &r {
            Ok(_) => pending.succeeded("sync"),
            Err(e) => pending.failed("sync", e, None),
        }
        r
    }

    async fn sync_once(&self, opts: &SyncOptions, progress: &(dyn Fn(&str) + Sync)) -> anyhow::Result<SyncReport> {
        let journal = Journal::open(self.cfg.journal_path()).await?;
        self.collect_verdicts(&journal, progress).await;
        let spool = self.cfg.spool_dir();
        let mut extract_time = Duration::ZERO;
        let mut early_bytes = 0;
        let (manifest, resumed) = match journal.unfinished().await? {
            Some(b) if spool.join(b.manifest.batch_id.as_str()).join(MANIFEST_NAME).exists() => {
                progress(&format!("resuming batch {} (extracted earlier, not yet sent)", b.manifest.batch_id));
                (b.manifest, true)
            }
            _ => {
                let t = Instant::now();
                let (m, sent) = self.extract_uploading(opts, progress).await?;
                extract_time = t.elapsed();
                early_bytes = sent;
                (m, false)
            }
        };
        let mut report = self.send(&manifest, progress).await?;
        report.bytes_sent += early_bytes;
        report.resumed = resumed;
        report.timings.extract = extract_time;
        Ok(report)
    }

    /// Extract a new batch (default options) into the spool folder and journal it as `extracted`.
    pub async fn extract_to_spool(&self, progress: &(dyn Fn(&str) + Sync)) -> anyhow::Result<Manifest> {
        self.extract_to_spool_with(&SyncOptions::default(), progress).await
    }

    /// Extract a new batch into the spool folder and journal it as `extracted`, with the watermarks it sets once
    /// imported.
    pub async fn extract_to_spool_with(
        &self,
        opts: &SyncOptions,
        progress: &(dyn Fn(&str) + Sync),
    ) -> anyhow::Result<Manifest> {
        let journal = Journal::open(self.cfg.journal_path()).await?;
        let spool = self.cfg.spool_dir();
        let (m, planned) = self
            .extract(spool, &journal, opts, progress, None)
            .await
            .map_err(|e| ferry_io::retry::disk_full(e, spool))?;
        journal.record(&m, "extracted", None).await?;
        journal.plan_watermarks(&m.batch_id, &planned).await?;
        Ok(m)
    }

    /// [`Connector::extract_to_spool_with`], uploading each file to `upload/<batch>/` at the Comms server as soon
    /// as it is complete in the spool, while the next files are extracted. Returns the manifest and the bytes sent
    /// so far. The batch is not completed here: [`Connector::send`] uploads what is missing (a file already at the
    /// server with its final size is skipped, a cut one resumed), then completes it. Uploading early is best
    /// effort: if it fails, `send` does the upload. A batch that fails validation is never completed, and the
    /// files it uploaded are removed again (best effort; the Comms server ignores an upload folder that is never
    /// completed).
    async fn extract_uploading(
        &self,
        opts: &SyncOptions,
        progress: &(dyn Fn(&str) + Sync),
    ) -> anyhow::Result<(Manifest, u64)> {
        let Ok(reg) = self.registration() else {
            return Ok((self.extract_to_spool_with(opts, progress).await?, 0));
        };
        let journal = Journal::open(self.cfg.journal_path()).await?;
        let spool = self.cfg.spool_dir();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let extract = async {
            let r = self.extract(spool, &journal, opts, progress, Some(&tx)).await;
            drop(tx);
            r
        };
        let (extracted, early) = tokio::join!(extract, self.upload_ready(&reg, rx, progress));
        let (m, planned) = match extracted {
            Ok(x) => x,
            Err(e) => {
                early.discard().await;
                return Err(ferry_io::retry::disk_full(e, spool));
            }
        };
        let sent = early.finish(progress).await;
        journal.record(&m, "extracted", None).await?;
        journal.plan_watermarks(&m.batch_id, &planned).await?;
        Ok((m, sent))
    }

    /// Upload each file announced on `rx` while the extract goes on; stops trying at the first failure (the
    /// batch's `send` uploads the rest) but keeps draining `rx`.
    async fn upload_ready(
        &self,
        reg: &Registration,
        mut rx: tokio::sync::mpsc::UnboundedReceiver<ReadyFile>,
        progress: &(dyn Fn(&str) + Sync),
    ) -> EarlyUpload {
        let mut up = EarlyUpload::default();
        while let Some(f) = rx.recv().await {
            if up.failed.is_some() {
                continue;
            }
            let remote = format!("/upload/{}", f.batch_id);
            if up.sftp.is_none() {
                let opened = async {
                    let sftp = self.open_sftp(reg).await?;
                    sftp.mkdir_all(&remote).await?;
                    anyhow::Ok(sftp)
                };
                match opened.await {
                    Ok(sftp) => up.sftp = Some(sftp),
                    Err(e) => {
                        up.failed = Some(format!("{e:#}"));
                        continue;
                    }
                }
            }
            let Some(sftp) = &up.sftp else { continue };
            let target = format!("{remote}/{}", f.name);
            match sftp.upload_file_resuming(&f.path, &target).await {
                Ok(n) => {
                    up.bytes += n;
                    up.uploaded.push(target);
                    match &self.upload_progress {
                        Some(report) => report(&f.name, f.compressed_bytes),
                        None => progress(&format!(
                            "  {} uploaded ({} bytes) while the extract goes on",
                            f.name, f.compressed_bytes
                        )),
                    }
                }
                Err(e) => {
                    // keep the session: a batch refused later removes what it can of this file's part
                    up.failed = Some(format!("uploading {}: {e}", f.name));
                    up.uploaded.push(format!("{remote}/.{}.part", f.name));
                }
            }
        }
        up
    }

    /// Ask the Comms server for the verdict of batches sent earlier whose verdict this journal has not seen (the
    /// wait ran out, or `wait_secs = 0`), so the watermarks of imported ones move. Best effort: offline, it leaves
    /// them for next time (windows then simply start earlier).
    async fn collect_verdicts(&self, journal: &Journal, progress: &(dyn Fn(&str) + Sync)) {
        let Ok(pending) = journal.awaiting_verdict().await else { return };
        if pending.is_empty() {
            return;
        }
        let Ok(api) = self.api() else { return };
        for b in pending {
            let id = &b.manifest.batch_id;
            let Ok(s) = api.get::<BatchStatus>(&format!("/v1/batches/{id}")).await else { continue };
            if !s.state.is_final() {
                continue;
            }
            if journal.record(&b.manifest, s.state.as_str(), s.detail.as_deref()).await.is_ok()
                && s.state == ferry_proto::api::BatchState::Imported
            {
                match journal.advance_watermarks(id).await {
                    Ok(moved) if !moved.is_empty() => {
                        progress(&format!("batch {id} was imported: watermarks of {} moved", moved.join(", ")))
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!("cannot move the watermarks of batch {id}: {e:#}"),
                }
            }
        }
    }

    /// Upload a spooled batch over SFTP, complete it, and wait for the verdict (`extract.wait_secs`).
    pub async fn send(&self, manifest: &Manifest, progress: &(dyn Fn(&str) + Sync)) -> anyhow::Result<SyncReport> {
        let reg = self.registration()?;
        let journal = Journal::open(self.cfg.journal_path()).await?;
        let mut timings = Timings::default();
        let id = manifest.batch_id.clone();
        let dir = self.cfg.spool_dir().join(id.as_str());

        let api = self.api_for(&reg)?;
        let (api_ref, id_ref) = (&api, &id);
        // A run that died after the server accepted the batch but before the journal said so: nothing to send.
        let known: Option<BatchStatus> = api.get(&format!("/v1/batches/{id}")).await.ok();
        let (sent, status) = match known {
            Some(status) => {
                progress(&format!("batch {id} was already accepted by the Comms server"));
                (0, status)
            }
            None => {
                // A cut connection is retried at once with backoff, resuming the upload where it stopped.
                let t = Instant::now();
                let (reg_ref, dir_ref) = (&reg, dir.as_path());
                let sent = self
                    .retrying("upload", progress, move || self.upload(reg_ref, dir_ref, manifest, progress))
                    .await?;
                timings.upload = t.elapsed();
                let status: BatchStatus = self
                    .retrying("completing the batch", progress, move || async move {
                        api_ref
                            .post(&format!("/v1/batches/{id_ref}/complete"), manifest)
                            .await
                            .with_context(|| format!("the Comms server did not accept batch {id_ref}"))
                    })
                    .await?;
                (sent, status)
            }
        };
        journal.record(manifest, "completed", None).await?;
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!("cannot remove the spooled batch {}: {e}", dir.display());
        }
        progress(&format!("batch {id} complete at the Comms server: {}", status.state.as_str()));

        let t = Instant::now();
        let wait = Duration::from_secs(self.cfg.extract.wait_secs);
        let final_status = if wait.is_zero() { status } else { self.wait_verdict(&api, &id, wait, progress).await? };
        timings.relay_import = t.elapsed();
        if final_status.state.is_final() {
            journal.record(manifest, final_status.state.as_str(), final_status.detail.as_deref()).await?;
        }
        if final_status.state == ferry_proto::api::BatchState::Imported {
            let moved = journal.advance_watermarks(&id).await?;
            if !moved.is_empty() {
                progress(&format!("batch imported: the watermarks of {} moved", moved.join(", ")));
            }
        }
        Ok(SyncReport { manifest: manifest.clone(), resumed: false, bytes_sent: sent, status: final_status, timings })
    }

    /// Plan (full file or window per incremental file, from the journal's watermarks), extract and validate.
    async fn extract(
        &self,
        spool: &Path,
        journal: &Journal,
        opts: &SyncOptions,
        progress: &(dyn Fn(&str) + Sync),
        ready: Option<&tokio::sync::mpsc::UnboundedSender<ReadyFile>>,
    ) -> anyhow::Result<(Manifest, Vec<PlannedWatermark>)> {
        let mapping = load_mapping(&self.cfg)?;
        let today = opts.today.unwrap_or_else(|| chrono::Local::now().date_naive());
        let marks = journal.watermarks().await?;
        let mut plan =
            ExtractPlan { allow_warnings: opts.allow_warnings || mapping.allow_warnings, ..ExtractPlan::default() };
        let mut planned = Vec::new();
        let id = BatchId::new(chrono::Utc::now());
        progress(&format!("extracting batch {id}"));
        for (name, fm) in mapping.ordered() {
            let Some(inc) = &fm.incremental else { continue };
            let fingerprint = fm.fingerprint();
            let last = marks.get(name);
            let decision = inc.decide(&fingerprint, last, today, opts.full);
            match &decision {
                Decision::Window { from } => {
                    let since = last.map(|w| w.through.format("%Y/%m/%d").to_string()).unwrap_or_default();
                    progress(&format!(
                        "  {name}: window from {} on {} (last imported extract {since}, overlap {} days)",
                        from.format("%Y/%m/%d"),
                        inc.column,
                        inc.overlap_days
                    ));
                    plan.windows.insert(name.to_string(), *from);
                }
                Decision::Full(reason) => progress(&format!("  {name}: full ({reason})")),
            }
            planned.push(PlannedWatermark {
                file: name.to_string(),
                column: inc.column.clone(),
                fingerprint,
                through: today,
                full: matches!(decision, Decision::Full(_)),
            });
        }
        let source = open_source(&self.cfg).await?;
        let xopts = ExtractOptions { level: self.cfg.extract.level, threads: self.cfg.extract.threads };
        let none = |_: &str, _: u64, _: u64| {};
        let file_progress: &(dyn Fn(&str, u64, u64) + Sync) = match &self.file_progress {
            Some(f) => f.as_ref(),
            None => &none,
        };
        let extracted = extract_announcing(source.as_ref(), &mapping, spool, &id, &xopts, &plan, file_progress, ready)
            .await
            .with_context(|| format!("batch {id} was not sent"))?;
        let mut manifest = extracted.manifest;
        if let Ok(reg) = self.registration() {
            manifest.tenant = reg.tenant;
        }
        // one line per file, with its exact counts (`ferry bench pipeline` reads them)
        for f in &manifest.files {
            progress(&format!(
                "  {:<18} {:>9} rows {:>12} bytes -> {:>10} bz2",
                f.name, f.rows, f.bytes, f.compressed_bytes
            ));
        }
        let warnings = extracted.check.warnings();
        if warnings > 0 {
            progress(&format!("  sending with {warnings} warning(s), as allowed:"));
            for p in extracted.check.problems().take(10) {
                progress(&format!("    {p}"));
            }
        }
        Ok((manifest, planned))
    }

    async fn upload(
        &self,
        reg: &Registration,
        dir: &Path,
        m: &Manifest,
        progress: &(dyn Fn(&str) + Sync),
    ) -> anyhow::Result<u64> {
        let sftp = self
            .open_sftp(reg)
            .await
            .with_context(|| format!("cannot open SFTP to the Comms server at {}", reg.ssh_addr))?;
        let remote = format!("/upload/{}", m.batch_id);
        sftp.mkdir_all(&remote).await?;
        let mut sent = 0;
        for f in &m.files {
            let name = f.compressed_name();
            let target = format!("{remote}/{name}");
            if sftp.stat_size(&target).await? == Some(f.compressed_bytes) {
                progress(&format!("  {name} already at the server"));
                continue;
            }
            sent += sftp
                .upload_file_resuming(&dir.join(&name), &target)
                .await
                .with_context(|| format!("uploading {name}"))?;
        }
        sftp.close().await?;
        progress(&format!("uploaded {sent} bytes over SFTP"));
        Ok(sent)
    }

    async fn wait_verdict(
        &self,
        api: &ApiClient,
        id: &BatchId,
        wait: Duration,
        progress: &(dyn Fn(&str) + Sync),
    ) -> anyhow::Result<BatchStatus> {
        let deadline = Instant::now() + wait;
        let mut last = None;
        let mut delay = Duration::from_millis(100);
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        loop {
            let s: BatchStatus = match api.get(&format!("/v1/batches/{id}")).await {
                Ok(s) => s,
                // the batch is safely at the Comms server: a lost status call is only retried
                Err(e) if web_transient(&e) && Instant::now() < deadline => {
                    let d = backoff.next_delay();
                    progress(&format!("batch {id}: status unavailable, asking again in {:.1} s: {e}", d.as_secs_f64()));
                    tokio::time::sleep(d).await;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            if last != Some(s.state) {
                progress(&format!("batch {id}: {}", s.state.as_str()));
                last = Some(s.state);
            }
            if s.state.is_final() || Instant::now() >= deadline {
                return Ok(s);
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }
}

/// How many times `sync` tries a network step before it gives up (the running agent tries again later).
const SEND_ATTEMPTS: u32 = 4;

impl Connector {
    /// Run `step` up to [`SEND_ATTEMPTS`] times with backoff and jitter while it fails for a reason that may
    /// pass (a cut or stalled connection, a server error), saying so on `progress` each time.
    async fn retrying<T, F, Fut>(&self, what: &str, progress: &(dyn Fn(&str) + Sync), mut step: F) -> anyhow::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<T>>,
    {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(15));
        let mut attempt = 1;
        loop {
            match step().await {
                Ok(v) => return Ok(v),
                Err(e) if attempt < SEND_ATTEMPTS && transient(&e) => {
                    let d = backoff.next_delay();
                    progress(&format!(
                        "{what} failed (attempt {attempt} of {SEND_ATTEMPTS}), retrying in {:.1} s: {e:#}",
                        d.as_secs_f64()
                    ));
                    tokio::time::sleep(d).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Whether a failed web-service call may work if tried again (no answer, or a server-side error).
/// What uploading files during the extract did.
#[derive(Default)]
struct EarlyUpload {
    sftp: Option<SftpClient>,
    /// Remote paths of the files uploaded (and the part of one whose upload failed).
    uploaded: Vec<String>,
    bytes: u64,
    /// Why uploading stopped, if it did.
    failed: Option<String>,
}

impl EarlyUpload {
    /// The extract succeeded: close the session; the bytes sent.
    async fn finish(self, progress: &(dyn Fn(&str) + Sync)) -> u64 {
        if let Some(e) = &self.failed {
            progress(&format!("uploading during the extract stopped ({e}); the rest is uploaded now"));
        }
        if let Some(sftp) = self.sftp {
            let _ = sftp.close().await;
        }
        self.bytes
    }

    /// The batch will never be completed: remove what was uploaded (best effort).
    async fn discard(self) {
        let Some(sftp) = self.sftp else { return };
        for path in &self.uploaded {
            if let Err(e) = sftp.remove(path).await {
                tracing::debug!("cannot remove {path} of a batch that was not sent: {e}");
            }
        }
        let _ = sftp.close().await;
    }
}

fn web_transient(e: &ferry_io::client::ClientError) -> bool {
    e.status().is_none_or(|s| s >= 500 || s == 408 || s == 429)
}

/// Whether an error may pass by itself: network trouble and server errors yes; a refused key, a changed host
/// key, a rejected request or a full local disk no.
pub fn transient(e: &anyhow::Error) -> bool {
    use ferry_sftp::client::ClientError as Sftp;
    if ferry_io::retry::is_disk_full(e) {
        return false;
    }
    for cause in e.chain() {
        if let Some(w) = cause.downcast_ref::<ferry_io::client::ClientError>() {
            return web_transient(w);
        }
        if let Some(s) = cause.downcast_ref::<Sftp>() {
            return matches!(s, Sftp::Connect { .. } | Sftp::Timeout { .. } | Sftp::Ssh(_) | Sftp::Transfer { .. })
                || matches!(s, Sftp::SizeMismatch { .. })
                || matches!(s, Sftp::Remote { .. } if !s.is_not_found());
        }
        if cause.downcast_ref::<std::io::Error>().is_some() {
            return true;
        }
    }
    false
}

#[derive(Debug, Default, Clone)]
pub struct Timings {
    pub extract: Duration,
    pub upload: Duration,
    pub relay_import: Duration,
}

#[derive(Debug)]
pub struct SyncReport {
    pub manifest: Manifest,
    pub resumed: bool,
    pub bytes_sent: u64,
    pub status: BatchStatus,
    pub timings: Timings,
}
