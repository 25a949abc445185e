//! The App's side of downstream: plan recommended orders for an instance and publish them (or any file) to the
//! tenant's outbox, then announce them to the Comms server with a call signed by the App's service key. Used
//! by the running server (after each import, and a retry worker) and by the local CLI (`ferry app plan`,
//! `ferry app publish`), which work on the same files.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use ferry_io::client::ApiClient;
use ferry_proto::api::FileReady;
use russh::keys::PrivateKey;

use crate::config::AppConfig;
use crate::instance::Instance;
use crate::{outbox, planner};

/// A signed client for the configured Comms server, or None if none is configured.
pub fn comms_client(cfg: &AppConfig, service_key: &PrivateKey) -> anyhow::Result<Option<ApiClient>> {
    if cfg.comms.api_url.is_empty() {
        return Ok(None);
    }
    let pin = (!cfg.comms.tls_fingerprint.is_empty()).then_some(cfg.comms.tls_fingerprint.as_str());
    Ok(Some(ApiClient::new(
        &cfg.comms.api_url,
        pin,
        Some(std::sync::Arc::new(service_key.clone())),
        Duration::from_secs(30),
    )?))
}

/// Announce every not-yet-announced file of an instance. Returns how many were announced.
pub async fn announce_pending(comms: &ApiClient, inst: &Instance, tenant: &str) -> anyhow::Result<usize> {
    let mut n = 0;
    for f in outbox::unannounced(inst, tenant).await? {
        let _: serde_json::Value = comms
            .post("/v1/app/files", &f)
            .await
            .with_context(|| format!("cannot announce {} to the Comms server (will retry)", f.name))?;
        outbox::mark_announced(inst, &f.file_id).await?;
        n += 1;
    }
    Ok(n)
}

/// Plan the instance and publish one `po_NNNNNN.csv` per supplier with lines. Returns the published files.
pub async fn plan_and_publish(
    cfg: &AppConfig,
    inst: &Instance,
    tenant: &str,
    today: chrono::NaiveDate,
) -> anyhow::Result<(planner::Plan, Vec<FileReady>)> {
    let mut params = planner::PlanParams::new(today);
    params.service_level = cfg.service_level;
    let plan = planner::plan(inst, &params).await.context("planning failed")?;
    let suppliers = plan.lines.iter().map(|l| &l.supplier).collect::<std::collections::BTreeSet<_>>().len() as u64;
    if suppliers == 0 {
        return Ok((plan, Vec::new()));
    }
    let first = outbox::reserve_sequence(inst, "po", suppliers).await?;
    let tmp = tempfile_dir(&cfg.data_dir)?;
    let written = planner::write_po_files(&plan, tmp.path(), first, today)?;
    let mut published = Vec::new();
    let sftp_root = cfg.data_dir.join("sftp");
    for (path, _lines) in written {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        published.push(outbox::publish(inst, tenant, &sftp_root, &path, &name).await?);
    }
    Ok((plan, published))
}

fn tempfile_dir(data_dir: &Path) -> anyhow::Result<tempfile::TempDir> {
    let base = data_dir.join("tmp");
    std::fs::create_dir_all(&base)?;
    Ok(tempfile::Builder::new().prefix("plan-").tempdir_in(base)?)
}
