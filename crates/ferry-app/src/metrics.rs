//! Prometheus metrics of the App server, served at `GET /metrics` on the App's admin listener (`listen_admin`,
//! HTTPS with the App's certificate, loopback by default, bearer token from `<data_dir>/admin.token` — as the
//! Comms server's admin listener). Everything is kept in memory since the server started: counters and
//! histograms as events happen, the outbox depth per tenant each time a tenant's outbox is announced or
//! acknowledged (the announcer reads every instance at start and hourly), the time of each tenant's last import.
//! Label sets are bounded: results and stages are fixed lists; tenants are capped at [`MAX_TENANT_LABELS`] (the
//! longest-unimported first, so a stale tenant is never the one left out).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Most tenants given their own label value in `ferry_app_last_import_age_seconds`.
pub const MAX_TENANT_LABELS: usize = 1000;

/// A stage of a batch at the App (the `stage` label of `ferry_app_stage_seconds`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Reading and bzip2-decompressing the files (summed over the batch's files).
    Decompress,
    /// Hashing the plain CSV (MD5 + SHA-256) to check it against the manifest.
    Verify,
    /// The whole import call: decompress, verify, parse and insert, in one transaction (they overlap).
    Import,
    /// The planner run after an import (and its automatic release).
    Plan,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Decompress => "decompress",
            Stage::Verify => "verify",
            Stage::Import => "import",
            Stage::Plan => "plan",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabel {
    stage: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantLabel {
    tenant: String,
}

/// The live metrics of one App server.
pub struct Metrics {
    imports: Family<ResultLabel, Counter>,
    import_bytes: Counter,
    import_rows: Counter,
    stage_seconds: Family<StageLabel, Histogram>,
    plans: Family<ResultLabel, Counter>,
    releases: Counter,
    /// Files not yet delivered in each tenant's outbox, as last read.
    outbox: Mutex<HashMap<String, i64>>,
    /// When each tenant's last batch was imported (this process).
    last_import: Mutex<HashMap<String, Instant>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            imports: Family::default(),
            import_bytes: Counter::default(),
            import_rows: Counter::default(),
            // 1 ms .. ~4.6 h
            stage_seconds: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.001, 4.0, 12))),
            plans: Family::default(),
            releases: Counter::default(),
            outbox: Mutex::new(HashMap::new()),
            last_import: Mutex::new(HashMap::new()),
        }
    }
}

impl Metrics {
    /// One import call's outcome: `imported`, `duplicate`, `rejected` or `failed` (infrastructure, retried).
    pub fn import(&self, result: &'static str) {
        self.imports.get_or_create(&ResultLabel { result }).inc();
    }

    /// A batch was imported: its plain CSV bytes and rows, and the tenant's last-import time.
    pub fn imported(&self, tenant: &str, bytes: u64, rows: u64) {
        self.import_bytes.inc_by(bytes);
        self.import_rows.inc_by(rows);
        if let Ok(mut m) = self.last_import.lock() {
            m.insert(tenant.to_string(), Instant::now());
        }
    }

    pub fn stage(&self, stage: Stage, took: Duration) {
        self.stage_seconds.get_or_create(&StageLabel { stage: stage.as_str() }).observe(took.as_secs_f64());
    }

    /// A planner run: `ok` or `failed`.
    pub fn planned(&self, result: &'static str) {
        self.plans.get_or_create(&ResultLabel { result }).inc();
    }

    /// `n` releases (one file per supplier) were written, by a buyer or automatically.
    pub fn released(&self, n: usize) {
        self.releases.inc_by(n as u64);
    }

    /// `tenant`'s outbox now holds `pending` files not yet delivered.
    pub fn outbox_depth(&self, tenant: &str, pending: i64) {
        if let Ok(mut m) = self.outbox.lock() {
            if pending == 0 {
                m.remove(tenant);
            } else {
                m.insert(tenant.to_string(), pending);
            }
        }
    }

    /// The exposition text (OpenMetrics, which Prometheus scrapes).
    pub fn render(&self) -> anyhow::Result<String> {
        let mut reg = Registry::with_prefix("ferry_app");
        reg.register("imports", "Import calls by result", self.imports.clone());
        reg.register("import_bytes", "Plain CSV bytes of the batches imported", self.import_bytes.clone());
        reg.register("import_rows", "Rows of the batches imported", self.import_rows.clone());
        reg.register("stage_seconds", "Duration of each stage of a batch at the App", self.stage_seconds.clone());
        reg.register("plans", "Planner runs after an import, by result", self.plans.clone());
        reg.register("releases", "Releases written (one file per supplier), by buyers or automatically", {
            self.releases.clone()
        });

        let depth: Gauge = Gauge::default();
        depth.set(self.outbox.lock().map(|m| m.values().sum()).unwrap_or(0));
        reg.register("outbox_queue_depth", "Downstream files not yet delivered to their Connector", depth);

        let ages: Family<TenantLabel, Gauge<f64, std::sync::atomic::AtomicU64>> = Family::default();
        let now = Instant::now();
        let mut last: Vec<(String, Instant)> =
            self.last_import.lock().map(|m| m.iter().map(|(t, at)| (t.clone(), *at)).collect()).unwrap_or_default();
        last.sort_by_key(|(_, at)| *at);
        for (tenant, at) in last.into_iter().take(MAX_TENANT_LABELS) {
            ages.get_or_create(&TenantLabel { tenant }).set(now.duration_since(at).as_secs_f64());
        }
        reg.register(
            "last_import_age_seconds",
            "Seconds since each tenant's last imported batch (since this server started)",
            ages,
        );

        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg)?;
        Ok(out)
    }
}
