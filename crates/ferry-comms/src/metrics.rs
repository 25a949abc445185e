//! Prometheus metrics of the Comms server, served at `GET /metrics` on the admin listener (bearer token as the
//! admin API). Counters and histograms are kept live; the gauges (batches by state, queue depths, sessions,
//! per-tenant age of the last import) are read from the database and the session table at each scrape. Label
//! sets are bounded: states and reasons are fixed lists, tenants are capped at [`MAX_TENANT_LABELS`] (the
//! longest-unimported first, so a stale tenant is never the one left out).

use std::sync::atomic::{AtomicI64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::CommsState;

/// Most tenants given their own label value in `ferry_comms_last_import_age_seconds`.
pub const MAX_TENANT_LABELS: i64 = 1000;

/// Why a login or call was refused (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// SSH login with an unknown, revoked or disabled key.
    SshKey,
    /// A web-service call with a missing, bad, old or unknown signature.
    Signature,
    /// The admin API without the right token.
    AdminToken,
    /// `/v1/register` with a bad token or body.
    Registration,
    /// A tenant's limit (batch size, files, daily bytes...).
    Limit,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::SshKey => "ssh_key",
            Refusal::Signature => "signature",
            Refusal::AdminToken => "admin_token",
            Refusal::Registration => "registration",
            Refusal::Limit => "limit",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabel {
    stage: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabel {
    call: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantLabel {
    tenant: String,
}

/// The live metrics of one Comms server.
pub struct Metrics {
    refused: Family<ReasonLabel, Counter>,
    stage_seconds: Family<StageLabel, Histogram>,
    bytes_up: Counter,
    early_files: Counter,
    early_bytes: Counter,
    ssh_logins: Counter,
    downstream_calls: Family<CallLabel, Counter>,
    long_polls: Gauge,
    waiting: AtomicI64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            refused: Family::default(),
            // 10 ms .. ~11 h
            stage_seconds: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.01, 4.0, 12))),
            bytes_up: Counter::default(),
            early_files: Counter::default(),
            early_bytes: Counter::default(),
            ssh_logins: Counter::default(),
            downstream_calls: Family::default(),
            long_polls: Gauge::default(),
            waiting: AtomicI64::new(0),
        }
    }
}

/// Held while a long-poll waits; the gauge goes down when it is dropped.
pub struct Waiting<'a>(&'a Metrics);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.long_polls.dec();
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Metrics {
    pub fn refused(&self, why: Refusal) {
        self.refused.get_or_create(&ReasonLabel { reason: why.as_str() }).inc();
    }

    /// `stage`: `relay` (copy to the App) or `import` (the App's verdict).
    pub fn stage(&self, stage: &'static str, secs: f64) {
        self.stage_seconds.get_or_create(&StageLabel { stage }).observe(secs);
    }

    /// An SFTP login accepted (each costs a key exchange: Connectors reuse one session for many files).
    pub fn ssh_login(&self) {
        self.ssh_logins.inc();
    }

    /// SFTP logins accepted since the start.
    pub fn ssh_logins(&self) -> u64 {
        self.ssh_logins.get()
    }

    /// A downstream web-service call answered: `announce` (the App's `POST /v1/app/files`), `list` (a
    /// Connector's `GET /v1/files`), `ack` (`POST /v1/files/{id}/ack` or `/v1/files/ack`).
    pub fn downstream_call(&self, call: &'static str) {
        self.downstream_calls.get_or_create(&CallLabel { call }).inc();
    }

    /// Downstream calls of one kind since the start ([`Metrics::downstream_call`]).
    pub fn downstream_calls(&self, call: &'static str) -> u64 {
        self.downstream_calls.get_or_create(&CallLabel { call }).get()
    }

    /// A file copied to the App as it arrived, before its batch was completed ([`crate::early`]).
    pub fn early_relayed(&self, bytes: u64) {
        self.early_files.inc();
        self.early_bytes.inc_by(bytes);
    }

    /// Files copied to the App as they arrived, since the start.
    pub fn early_relayed_files(&self) -> u64 {
        self.early_files.get()
    }

    pub fn uploaded(&self, bytes: u64) {
        self.bytes_up.inc_by(bytes);
    }

    pub fn long_poll(&self) -> Waiting<'_> {
        self.long_polls.inc();
        self.waiting.fetch_add(1, Ordering::Relaxed);
        Waiting(self)
    }

    /// Long-polls waiting now.
    pub fn waiting(&self) -> i64 {
        self.waiting.load(Ordering::Relaxed)
    }
}

/// The exposition text (OpenMetrics, which Prometheus scrapes) of everything, gauges read now.
pub async fn render(st: &CommsState) -> anyhow::Result<String> {
    let m = &st.metrics;
    let mut reg = Registry::with_prefix("ferry_comms");
    reg.register("refused", "Logins and calls refused, by reason", m.refused.clone());
    reg.register("stage_seconds", "Duration of each stage of a batch at the Comms server", m.stage_seconds.clone());
    reg.register("ssh_logins", "SFTP logins accepted", m.ssh_logins.clone());
    let app_logins: Counter = Counter::default();
    app_logins.inc_by(st.apps.sftp_logins());
    reg.register("app_sftp_logins", "SFTP logins to the App server (relay and downstream fetches)", app_logins);
    let app_calls: Counter = Counter::default();
    app_calls.inc_by(st.apps.api_calls());
    reg.register("app_calls", "Signed web-service calls to the App server", app_calls);
    reg.register("downstream_calls", "Downstream web-service calls answered, by call", m.downstream_calls.clone());
    reg.register(
        "early_relayed_files",
        "Uploaded files copied to the App before their batch was completed",
        m.early_files.clone(),
    );
    reg.register(
        "early_relayed_bytes",
        "Bytes of the files copied to the App before their batch was completed",
        m.early_bytes.clone(),
    );
    reg.register("upload_bytes", "Compressed bytes of the batches Connectors completed", m.bytes_up.clone());
    reg.register("long_polls_waiting", "Connector long-polls (GET /v1/files?wait=) waiting now", m.long_polls.clone());

    let by_state: Family<StateLabel, Gauge> = Family::default();
    for s in ["uploaded", "relayed", "imported", "rejected"] {
        by_state.get_or_create(&StateLabel { state: s.into() }).set(0);
    }
    let mut queue = 0;
    let counts = crate::db::batch_state_counts(&st.db).await?;
    for (state, n) in counts {
        if matches!(state.as_str(), "uploaded" | "relayed") {
            queue += n;
        }
        by_state.get_or_create(&StateLabel { state }).set(n);
    }
    reg.register("batches", "Batches by state", by_state);
    let relay_queue: Gauge = Gauge::default();
    relay_queue.set(queue);
    reg.register("relay_queue_depth", "Batches completed and not yet judged by the App", relay_queue);

    let (waiting, down_bytes) = crate::db::download_totals(&st.db).await?;
    let download_queue: Gauge = Gauge::default();
    download_queue.set(waiting);
    reg.register("download_queue_depth", "Downstream files not yet delivered to their Connector", download_queue);
    let down: Counter = Counter::default();
    down.inc_by(u64::try_from(down_bytes).unwrap_or(0));
    reg.register("download_bytes", "Compressed bytes of the downstream files delivered", down);

    let sessions: Gauge = Gauge::default();
    sessions.set(i64::try_from(st.sessions.len()).unwrap_or(i64::MAX));
    reg.register("sftp_sessions", "Open SFTP sessions", sessions);

    let ages: Family<TenantLabel, Gauge<f64, std::sync::atomic::AtomicU64>> = Family::default();
    let now = chrono::Utc::now();
    let rows = crate::db::last_imports(&st.db, MAX_TENANT_LABELS).await?;
    for (tenant, last) in rows {
        let Ok(at) = chrono::DateTime::parse_from_rfc3339(&last) else { continue };
        let age = (now - at.with_timezone(&chrono::Utc)).num_milliseconds() as f64 / 1000.0;
        ages.get_or_create(&TenantLabel { tenant }).set(age.max(0.0));
    }
    reg.register("last_import_age_seconds", "Seconds since each tenant's last imported batch", ages);

    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &reg)?;
    Ok(out)
}
