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
        crate::appclient::register_default(&db, &cfg.app).await?;
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

    /// Create the tenant here and its instance on the App server; return a registration token. The tenant is
    /// placed on `app`, or on the App server with the fewest tenants (ties: the first by name); an existing tenant
    /// keeps its App server (its instance is created there again, which changes nothing, and a new token issued).
    pub async fn add_tenant(&self, name: &str, public_url: &str) -> anyhow::Result<String> {
        self.add_tenant_on(name, None, public_url).await.map(|(_, token)| token)
    }

    /// [`Admin::add_tenant`], on App server `app` if given; returns the App server's name and the token.
    pub async fn add_tenant_on(
        &self,
        name: &str,
        app: Option<&str>,
        public_url: &str,
    ) -> anyhow::Result<(String, String)> {
        if !valid_tenant_name(name) {
            bail!(
                "tenant name {:?} is not valid: use 1-32 lowercase letters, digits and '-', starting with a letter",
                name.chars().take(64).collect::<String>()
            );
        }
        let placed = db::tenant_app(&self.db, name).await?.flatten();
        let app_name = match (placed, app) {
            (Some(p), Some(a)) if p != a => bail!(
                "tenant {name} exists and is placed on App server {p:?}; moving it to {a:?} is a manual procedure \
                 (docs/scale-out.md, \"Moving a tenant to another App server\")"
            ),
            (Some(p), _) => p,
            (None, Some(a)) => a.to_string(),
            (None, None) => db::least_loaded_app(&self.db).await?.with_context(|| {
                "no App server is registered: fill [app] in comms.toml or add one with `ferry comms app add NAME \
                 --info FILE` (FILE: the output of `ferry app info`)"
            })?,
        };
        let apps = db::list_apps(&self.db).await?;
        let Some(row) = apps.iter().find(|a| a.name == app_name) else {
            bail!("no App server named {app_name:?} (see `ferry comms app list`)");
        };
        let client = crate::appclient::AppClient::new(&row.endpoint, self.identity.service_key.clone())?;
        client
            .create_instance(name)
            .await
            .with_context(|| format!("cannot create the instance for {name} on App server {app_name}"))?;
        if !db::add_tenant_on(&self.db, name, &app_name).await? {
            // an existing tenant from before its placement was stored: placed now
            db::place_unplaced_tenant(&self.db, name, &app_name).await?;
            tracing::info!(tenant = name, "tenant already existed; issuing a new token");
        }
        self.audit(name, "tenant_added", &format!("on App server {app_name}")).await;
        let token = self.token(name, public_url).await?;
        Ok((app_name, token))
    }

    /// Register an App server from what `ferry app info` printed (its `[app]` table). Every field is required;
    /// a name or a service key already registered is refused.
    pub async fn add_app(&self, name: &str, ep: &crate::config::AppEndpoint) -> anyhow::Result<()> {
        if !valid_tenant_name(name) {
            bail!(
                "App server name {:?} is not valid: use 1-32 lowercase letters, digits and '-', starting with a letter",
                name.chars().take(64).collect::<String>()
            );
        }
        if name == crate::appclient::DEFAULT_APP {
            bail!("the App server {name:?} is the [app] section of comms.toml: edit it there, or pick another name");
        }
        for (field, v) in [
            ("api_url", &ep.api_url),
            ("tls_fingerprint", &ep.tls_fingerprint),
            ("ssh_addr", &ep.ssh_addr),
            ("ssh_host_key_fingerprint", &ep.ssh_host_key_fingerprint),
            ("service_key", &ep.service_key),
        ] {
            if v.trim().is_empty() {
                bail!("{field} is empty: give the complete output of `ferry app info`");
            }
        }
        if !ep.api_url.starts_with("https://") {
            bail!("api_url must start with https:// (got {:?})", ep.api_url);
        }
        let key = ferry_io::keys::parse_public_key(&ep.service_key).context("service_key")?;
        let fp = ferry_io::keys::fingerprint(&key);
        // the client must build (URL, pin) before anything is stored
        crate::appclient::AppClient::new(ep, self.identity.service_key.clone())?;
        let apps = db::list_apps(&self.db).await?;
        if let Some(same) = apps.iter().find(|a| a.key_fingerprint == fp) {
            bail!("this App server (service key {fp}) is already registered as {:?}", same.name);
        }
        if !db::add_app(&self.db, name, ep, &fp).await? {
            bail!("an App server named {name:?} is already registered (see `ferry comms app list`)");
        }
        db::audit(&self.db, None, "app_added", &format!("{name} {} (by {})", ep.api_url, self.actor)).await;
        Ok(())
    }

    /// Remove an App server no tenant is placed on.
    pub async fn remove_app(&self, name: &str) -> anyhow::Result<()> {
        if name == crate::appclient::DEFAULT_APP && !self.cfg.app.api_url.is_empty() {
            bail!("the App server {name:?} is the [app] section of comms.toml: empty that section instead");
        }
        match db::remove_app(&self.db, name).await? {
            Ok(true) => {}
            Ok(false) => bail!("no App server named {name:?} (see `ferry comms app list`)"),
            Err(n) => bail!(
                "{n} tenant(s) are placed on App server {name}: move them first (docs/scale-out.md, \"Moving a \
                 tenant to another App server\")"
            ),
        }
        db::audit(&self.db, None, "app_removed", &format!("{name} (by {})", self.actor)).await;
        Ok(())
    }

    /// The registered App servers, each with its tenant count and whether it answers now (an SFTP login with
    /// this server's key, pinned to the App's host key, within a few seconds).
    pub async fn apps_with_status(&self) -> anyhow::Result<Vec<(db::AppRow, Result<(), String>)>> {
        let rows = db::list_apps(&self.db).await?;
        let probes = rows.iter().map(|r| async {
            match crate::appclient::AppClient::new(&r.endpoint, self.identity.service_key.clone()) {
                Ok(c) => c.probe().await.map_err(|e| format!("{e:#}")),
                Err(e) => Err(format!("{e:#}")),
            }
        });
        let status = futures::future::join_all(probes).await;
        Ok(rows.into_iter().zip(status).collect())
    }

    /// Place an existing tenant on another App server: the last step of moving it, after its instance was
    /// copied there (docs/scale-out.md).
    pub async fn place_tenant(&self, name: &str, app: &str) -> anyhow::Result<()> {
        self.known(name).await?;
        if !db::list_apps(&self.db).await?.iter().any(|a| a.name == app) {
            bail!("no App server named {app:?} (see `ferry comms app list`)");
        }
        db::set_tenant_app(&self.db, name, app).await?;
        self.audit(name, "tenant_placed", &format!("on App server {app}")).await;
        Ok(())
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
