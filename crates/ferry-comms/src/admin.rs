//! Operator actions, the same for the local command line (`ferry comms tenant ...`, against the data
//! directory) and the admin API ([`crate::admin_api`], loopback by default): add a tenant (creating its
//! instance on the App server and printing a registration token), issue a new token, disable and enable
//! tenants, revoke keys, set per-tenant limits. Each action is audited with who did it. Never over the public
//! port.
//!
//! Also the admin API's credential: a random bearer token in `<data_dir>/admin.token` (mode 0600).

use std::path::Path;
use std::sync::Arc;

use crate::db::Db;
use anyhow::{Context, bail};
use chrono::{Duration, Utc};
use ferry_proto::api::valid_tenant_name;
use ferry_proto::token::RegistrationToken;
use ferry_web::identity::ServerIdentity;
use serde::Serialize;

use crate::limits::{Limit, Limits};
use crate::{CommsConfig, db};

pub struct Admin {
    pub cfg: CommsConfig,
    pub db: Db,
    pub identity: Arc<ServerIdentity>,
    /// Who acts, for the audit log: `cli` or `admin api from <address>`.
    pub actor: String,
}

/// A tenant's limits: the effective values and which of them are overrides of the defaults.
#[derive(Debug, Clone, Serialize)]
pub struct TenantLimitsView {
    pub tenant: String,
    pub limits: Limits,
    /// Names of the limits set for this tenant (the others are the server's defaults).
    pub overrides: Vec<&'static str>,
}

impl Admin {
    pub async fn open(cfg: CommsConfig) -> anyhow::Result<Admin> {
        let identity = Arc::new(cfg.identity()?);
        let db = db::open(&cfg.database, &cfg.db_path()).await?;
        Ok(Admin { cfg, db, identity, actor: "cli".into() })
    }

    /// The URL that goes into tokens.
    pub fn public_url(&self) -> String {
        self.cfg.public_base_url()
    }

    async fn audit(&self, tenant: &str, event: &str, detail: &str) {
        let by = format!("by {}", self.actor);
        let detail = if detail.is_empty() { by } else { format!("{detail} ({by})") };
        db::audit(&self.db, Some(tenant), event, &detail).await;
    }

    async fn known(&self, name: &str) -> anyhow::Result<()> {
        if !valid_tenant_name(name) || !db::tenant_exists(&self.db, name).await? {
            bail!("no tenant named {name:?} (see `ferry comms tenant list`)");
        }
        Ok(())
    }

    /// Create the tenant here and its instance on the App server; return a registration token.
    pub async fn add_tenant(&self, name: &str, public_url: &str) -> anyhow::Result<String> {
        if !valid_tenant_name(name) {
            bail!(
                "tenant name {:?} is not valid: use 1-32 lowercase letters, digits and '-', starting with a letter",
                name.chars().take(64).collect::<String>()
            );
        }
        let app = crate::appclient::AppClient::new(&self.cfg.app, self.identity.service_key.clone())?;
        app.create_instance(name)
            .await
            .with_context(|| format!("cannot create the instance for {name} on the App server"))?;
        if !db::add_tenant(&self.db, name).await? {
            tracing::info!(tenant = name, "tenant already existed; issuing a new token");
        }
        self.audit(name, "tenant_added", "").await;
        self.token(name, public_url).await
    }

    /// A new single-use registration token for an existing tenant.
    pub async fn token(&self, name: &str, public_url: &str) -> anyhow::Result<String> {
        self.known(name)
            .await
            .map_err(|_| anyhow::anyhow!("no tenant named {name:?}: add it with `ferry comms tenant add {name}`"))?;
        let token = RegistrationToken::generate(public_url, &self.identity.tls_fingerprint);
        let expires = Utc::now() + Duration::hours(self.cfg.token_ttl_hours);
        db::add_token(&self.db, &crate::api::secret_hash(&token.secret), name, expires).await?;
        self.audit(name, "token_issued", &format!("expires {}", expires.to_rfc3339())).await;
        Ok(token.encode())
    }

    /// Disable (refused at SSH and HTTPS, open sessions closed, within [`crate::ACCESS_RELOAD_BOUND`] on a
    /// running server) or enable a tenant.
    pub async fn set_enabled(&self, name: &str, enabled: bool) -> anyhow::Result<()> {
        let status = if enabled { "active" } else { "disabled" };
        if !db::set_tenant_status(&self.db, name, status).await? {
            bail!("no tenant named {name:?} (see `ferry comms tenant list`)");
        }
        self.audit(name, if enabled { "tenant_enabled" } else { "tenant_disabled" }, "").await;
        Ok(())
    }

    /// Revoke one key of a tenant at once (its open sessions are closed too).
    pub async fn revoke_key(&self, name: &str, fingerprint: &str) -> anyhow::Result<()> {
        if !db::revoke_key(&self.db, name, fingerprint).await? {
            bail!("tenant {name} has no active key {fingerprint} (see `ferry comms tenant keys {name}`)");
        }
        self.audit(name, "key_revoked", fingerprint).await;
        Ok(())
    }

    /// The effective limits of a tenant.
    pub async fn limits(&self, name: &str) -> anyhow::Result<TenantLimitsView> {
        self.known(name).await?;
        let mut limits = self.cfg.limits;
        let mut overrides = Vec::new();
        for (tenant, key, value) in db::all_tenant_limits(&self.db).await? {
            if let (true, Some(l)) = (tenant == name, Limit::parse(&key)) {
                l.set(&mut limits, u64::try_from(value).unwrap_or(0));
                overrides.push(l.key());
            }
        }
        Ok(TenantLimitsView { tenant: name.to_string(), limits, overrides })
    }

    /// Set (Some) or reset to the default (None) some limits of a tenant; returns the effective limits.
    pub async fn set_limits(&self, name: &str, changes: &[(Limit, Option<u64>)]) -> anyhow::Result<TenantLimitsView> {
        self.known(name).await?;
        let mut said = Vec::new();
        for (limit, value) in changes {
            db::set_tenant_limit(&self.db, name, limit.key(), *value).await?;
            said.push(match value {
                Some(v) => format!("{} = {v}", limit.key()),
                None => format!("{} = default", limit.key()),
            });
        }
        if !said.is_empty() {
            self.audit(name, "limits_changed", &said.join(", ")).await;
        }
        self.limits(name).await
    }
}

/// The admin API token: read it, or create a random one (256 bits, hex, mode 0600) if there is none. A token
/// file that group or others may read is refused. (Shared with the App's admin listener: `ferry_web::admin_token`.)
pub fn load_or_create_admin_token(path: &Path) -> anyhow::Result<String> {
    ferry_web::admin_token::load_or_create(path)
}
