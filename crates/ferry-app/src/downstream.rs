//! The App's side of downstream: plan recommended orders for an instance and publish them (or any file) to the
//! tenant's outbox, then announce them to the Comms server with a call signed by the App's service key. Used
//! by the running server (after each import, and a retry worker) and by the local CLI (`ferry app plan`,
//! `ferry app publish`), which work on the same files.

use std::time::Duration;

use anyhow::Context;
use ferry_io::client::ApiClient;
use ferry_proto::api::{FilesAnnounced, FilesReady, MAX_FILES_PER_CALL};
use russh::keys::PrivateKey;

use crate::config::AppConfig;
use crate::instance::Instance;
use crate::{outbox, planner, release};

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

/// Announce every not-yet-announced file of an instance, up to [`MAX_FILES_PER_CALL`] files per signed call
/// (`POST /v1/app/files` with a [`FilesReady`] body). Returns how many were announced. A file Comms refuses
/// (e.g. over the tenant's size limit) stays unannounced and makes this an error, after the others of its call
/// were recorded as announced: the announcer retries it with backoff.
pub async fn announce_pending(comms: &ApiClient, inst: &Instance, tenant: &str) -> anyhow::Result<usize> {
    let mut n = 0;
    let mut refused = Vec::new();
    let pending = outbox::unannounced(inst, tenant).await?;
    for chunk in pending.chunks(MAX_FILES_PER_CALL) {
        let body = FilesReady { files: chunk.to_vec() };
        let answer: FilesAnnounced = comms
            .post("/v1/app/files", &body)
            .await
            .with_context(|| format!("cannot announce {} file(s) to the Comms server (will retry)", chunk.len()))?;
        outbox::mark_announced_many(inst, &answer.accepted).await?;
        n += answer.accepted.len();
        refused.extend(answer.refused);
    }
    if let Some(first) = refused.first() {
        let name = pending.iter().find(|f| f.file_id == first.file_id).map_or("?", |f| f.name.as_str());
        anyhow::bail!("the Comms server refused {} file(s) (will retry), first {name}: {}", refused.len(), first.error);
    }
    Ok(n)
}

/// What one planning run did.
#[derive(Debug, Clone)]
pub struct Planned {
    /// The new current plan (its proposed lines superseded the previous plan's).
    pub plan: release::PlanInfo,
    pub policy: release::Policy,
    /// What went down: every line of the plan under `auto`, nothing under `review` (a buyer releases).
    pub released: Vec<release::Release>,
}

/// Plan the instance and store the result as its new plan (superseding the previous one's proposed lines); under
/// the `auto` policy, release every line at once (one `po_NNNNNN.csv` per supplier, [`release::release`]).
/// Released quantities the ERP does not show yet count as on order, so a plan never repeats a released line.
pub async fn plan_and_publish(
    cfg: &AppConfig,
    inst: &Instance,
    tenant: &str,
    today: chrono::NaiveDate,
) -> anyhow::Result<Planned> {
    let sftp_root = cfg.data_dir.join("sftp");
    // a release whose file a crash left unwritten goes down before anything else
    release::publish_pending(inst, tenant, &sftp_root).await?;
    let mut params = planner::PlanParams::new(today);
    params.service_level = cfg.service_level;
    let plan = release::new_plan(inst, &params, cfg.planner.release_expiry_days).await?;
    let policy = release::policy(inst).await?;
    let mut released = Vec::new();
    if policy == release::Policy::Auto {
        let ids = release::proposed_ids(inst, plan.id).await?;
        if !ids.is_empty() {
            match release::release(inst, tenant, &sftp_root, &ids, "auto", today).await {
                Ok(r) => released = r,
                // a newer plan (another import, `ferry app plan`) replaced this one meanwhile: it releases its own
                Err(release::ReleaseError::Superseded) => {
                    tracing::info!(tenant, plan = plan.id, "plan superseded before its automatic release")
                }
                Err(e) => return Err(anyhow::Error::new(e).context("automatic release failed")),
            }
        }
    }
    Ok(Planned { plan, policy, released })
}
