//! Operator actions run from the local command line against the Comms data directory (never over the public
//! port): add a tenant (creating its instance on the App server and printing a registration token), issue a new
//! token, list, disable and enable tenants.

use anyhow::{Context, bail};
use chrono::{Duration, Utc};
use ferry_proto::api::valid_tenant_name;
use ferry_proto::token::RegistrationToken;
use ferry_web::identity::ServerIdentity;
use sqlx::SqlitePool;

use crate::{CommsConfig, db};

pub struct Admin {
    pub cfg: CommsConfig,
    pub db: SqlitePool,
    pub identity: ServerIdentity,
}

impl Admin {
    pub async fn open(cfg: CommsConfig) -> anyhow::Result<Admin> {
        let identity = cfg.identity()?;
        let db = db::open(&cfg.db_path()).await?;
        Ok(Admin { cfg, db, identity })
    }

    /// The URL that goes into tokens.
    pub fn public_url(&self) -> String {
        if self.cfg.public_url.is_empty() {
            format!("https://{}", self.cfg.listen_https)
        } else {
            self.cfg.public_url.clone()
        }
    }

    /// Create the tenant here and its instance on the App server; return a registration token.
    pub async fn add_tenant(&self, name: &str, public_url: &str) -> anyhow::Result<String> {
        if !valid_tenant_name(name) {
            bail!(
                "tenant name {name:?} is not valid: use 1-32 lowercase letters, digits and '-', starting with a letter"
            );
        }
        let app = crate::appclient::AppClient::new(&self.cfg.app, self.identity.service_key.clone())?;
        app.create_instance(name)
            .await
            .with_context(|| format!("cannot create the instance for {name} on the App server"))?;
        if !db::add_tenant(&self.db, name).await? {
            tracing::info!(tenant = name, "tenant already existed; issuing a new token");
        }
        db::audit(&self.db, Some(name), "tenant_added", "").await;
        self.token(name, public_url).await
    }

    /// A new single-use registration token for an existing tenant.
    pub async fn token(&self, name: &str, public_url: &str) -> anyhow::Result<String> {
        let known = db::list_tenants(&self.db).await?.into_iter().any(|t| t.name == name);
        if !known {
            bail!("no tenant named {name:?}: add it with `ferry comms tenant add {name}`");
        }
        let token = RegistrationToken::generate(public_url, &self.identity.tls_fingerprint);
        let expires = Utc::now() + Duration::hours(self.cfg.token_ttl_hours);
        db::add_token(&self.db, &crate::api::secret_hash(&token.secret), name, expires).await?;
        db::audit(&self.db, Some(name), "token_issued", &format!("expires {}", expires.to_rfc3339())).await;
        Ok(token.encode())
    }

    pub async fn set_enabled(&self, name: &str, enabled: bool) -> anyhow::Result<()> {
        let status = if enabled { "active" } else { "disabled" };
        if !db::set_tenant_status(&self.db, name, status).await? {
            bail!("no tenant named {name:?}");
        }
        db::audit(&self.db, Some(name), if enabled { "tenant_enabled" } else { "tenant_disabled" }, "").await;
        Ok(())
    }
}
