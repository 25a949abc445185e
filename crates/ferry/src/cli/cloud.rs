//! The cloud side of the command line: `ferry comms ...` and `ferry app ...`. Unix only: the Comms and App
//! servers run on Linux; the Connector (the rest of the CLI) also builds for Windows ERP servers.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use ferry_app::AppConfig;
use ferry_comms::CommsConfig;
use ferry_comms::admin::Admin;

use super::{ConfigArg, path_or, sigterm_or_ctrl_c};

#[derive(Subcommand)]
pub enum CommsCmd {
    /// Write a default comms.toml; with --app-info, fill its [app] section (in a new or an existing comms.toml).
    Init {
        #[command(flatten)]
        config: ConfigArg,
        /// The output of `ferry app info` saved to a file: the App server's address, pins and service key.
        #[arg(long)]
        app_info: Option<PathBuf>,
    },
    /// Run the Comms server (HTTPS + SFTP + relay).
    Serve {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Print this server's identity as TOML (URL, TLS pin, service key) for `ferry app init --comms-info FILE`.
    Info {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Tenants (customers).
    #[command(subcommand)]
    Tenant(Box<TenantCmd>),
    /// App servers hosting the tenants' instances (the [app] section of comms.toml is the one named `default`).
    #[command(subcommand)]
    App(AppServerCmd),
    /// The tamper-evident audit log.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Operator accounts of the console (`https://<listen_admin>/console/`).
    #[command(subcommand)]
    Operator(OperatorCmd),
    /// The metadata database.
    #[command(subcommand)]
    Db(DbCmd),
}

#[derive(Subcommand)]
pub enum DbCmd {
    /// Move this server's metadata from SQLite (`<data_dir>/comms.db`) into an EMPTY PostgreSQL database, with the
    /// Comms server stopped: schema, every table in one transaction, row counts and the audit chain verified.
    Migrate {
        #[command(flatten)]
        config: ConfigArg,
        /// The target: `postgres://user@host:5432/database` (TLS as in `[database]`: `?sslmode=verify-full&sslrootcert=...`).
        #[arg(long)]
        to: String,
        /// The name of an environment variable holding the target's password (as `[database] password_env`).
        #[arg(long, conflicts_with = "password_file")]
        password_env: Option<String>,
        /// A file holding the target's password, first line (as `[database] password_file`).
        #[arg(long)]
        password_file: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub enum OperatorCmd {
    /// Add an operator (an email) and print a one-time set-password link for the console (valid 72 h). Again for
    /// an existing operator: a new link (the old one is void).
    Add {
        email: String,
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Subcommand)]
pub enum AppServerCmd {
    /// Register an App server from the output of `ferry app info` on it (saved to FILE). New tenants are placed
    /// on the App server with the fewest tenants.
    Add {
        name: String,
        /// The output of `ferry app info` saved to a file: the App server's address, pins and service key.
        #[arg(long)]
        info: PathBuf,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Every App server: name, endpoint, tenants placed on it, and whether it answers now.
    List {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Remove an App server (refused while tenants are placed on it).
    Remove {
        name: String,
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Subcommand)]
pub enum AuditCmd {
    /// Check that no entry was edited, inserted or removed.
    Verify {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Print the most recent entries.
    Show {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
}

#[derive(Subcommand)]
pub enum TenantCmd {
    /// Create a tenant and its instance on an App server (the one with the fewest tenants, or --app); print a
    /// registration token.
    Add {
        name: String,
        /// The App server to place it on (see `ferry comms app list`).
        #[arg(long)]
        app: Option<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// A tenant's status, App server, keys and batches.
    Show {
        name: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Place a tenant on another App server: only the last step of moving it, after its instance was copied
    /// there (docs/scale-out.md, "Moving a tenant to another App server").
    Place {
        name: String,
        #[arg(long)]
        app: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Print a new registration token for an existing tenant.
    Token {
        name: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    List {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// A tenant's downstream files: fetching, relayed (waiting for the ERP), delivered, and the last error.
    Files {
        name: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// List a tenant's keys (active, retired, revoked).
    Keys {
        name: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Show a tenant's limits, or change some (a size like 500M or 10G, a count, or `default`).
    Limits {
        name: String,
        /// Largest batch, sum of its compressed files.
        #[arg(long)]
        max_batch_bytes: Option<String>,
        /// Most files in one batch.
        #[arg(long)]
        max_batch_files: Option<String>,
        /// Most bytes uploaded over SFTP per UTC day.
        #[arg(long)]
        upload_bytes_per_day: Option<String>,
        /// Largest file uploaded over SFTP.
        #[arg(long)]
        max_upload_file_bytes: Option<String>,
        /// Largest downstream file the App may send.
        #[arg(long)]
        max_download_file_bytes: Option<String>,
        /// Most SFTP sessions of the tenant at once.
        #[arg(long)]
        max_sftp_sessions: Option<String>,
        /// Most open file and directory handles per SFTP session.
        #[arg(long)]
        max_open_handles: Option<String>,
        /// Most files and directories in the tenant's SFTP area.
        #[arg(long)]
        max_files: Option<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Revoke one of a tenant's keys at once (by fingerprint, from `tenant keys`); its open sessions are closed.
    RevokeKey {
        name: String,
        fingerprint: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Refuse the tenant's keys at SSH and HTTPS and close its open sessions (within a second on a running
    /// server).
    Disable {
        name: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    Enable {
        name: String,
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Subcommand)]
pub enum AppCmd {
    /// Write a default app.toml; with --comms-info, fill its [comms] section and comms_keys (in a new or an
    /// existing app.toml).
    Init {
        #[command(flatten)]
        config: ConfigArg,
        /// The output of `ferry comms info` saved to a file: the Comms server's URL, TLS pin and service key.
        #[arg(long)]
        comms_info: Option<PathBuf>,
    },
    /// Run the App server (HTTPS + SFTP).
    Serve {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Print this server's identity as TOML (the [app] section of comms.toml) for `ferry comms init --app-info
    /// FILE`.
    Info {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Plan a tenant's instance now (a new plan supersedes the previous one's proposed lines); under the `auto`
    /// policy its orders (po_NNNNNN.csv) go down to the ERP at once, under `review` a buyer releases them.
    Plan {
        tenant: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Send any file (a report...) down to a tenant's ERP.
    Publish {
        tenant: String,
        file: PathBuf,
        /// Name in the ERP's inbound folder (default: the file's own name).
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Files sent to a tenant and their receipts: created -> relayed -> delivered.
    Files {
        tenant: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Users of the buyer's web page.
    #[command(subcommand)]
    User(UserCmd),
    /// A tenant's settings on this App server.
    #[command(subcommand)]
    Tenant(AppTenantCmd),
}

#[derive(Subcommand)]
pub enum UserCmd {
    /// Add a user (an email) to a tenant and print a one-time set-password link (valid 72 h). Again for an
    /// existing user: a new link (the old one is void).
    Add {
        tenant: String,
        email: String,
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Subcommand)]
pub enum AppTenantCmd {
    /// Show or set how a tenant's plans go down: `review` (the default: a buyer releases lines) or `auto`
    /// (every line of each plan is released at once).
    Policy {
        tenant: String,
        /// review | auto (omit to show the current policy)
        policy: Option<ferry_app::release::Policy>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Every tenant on this App server with its release policy and current plan.
    List {
        #[command(flatten)]
        config: ConfigArg,
    },
}

fn comms_config(c: &ConfigArg) -> anyhow::Result<CommsConfig> {
    CommsConfig::load(&path_or(c, "comms.toml"))
}

fn app_config(c: &ConfigArg) -> anyhow::Result<AppConfig> {
    AppConfig::load(&path_or(c, "app.toml"))
}

fn write_new(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    if path.exists() {
        anyhow::bail!("{} already exists; edit it or remove it first", path.display());
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// `ferry comms info`, as TOML: the `[comms]` table is what `ferry app init --comms-info` reads.
#[derive(serde::Serialize, serde::Deserialize)]
struct CommsInfo {
    comms: CommsIdentity,
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CommsIdentity {
    /// The URL the App server calls (`public_url`).
    api_url: String,
    tls_fingerprint: String,
    /// Signs the Comms server's calls to the App server (app.toml `comms_keys`).
    service_key: String,
    ssh_host_key_fingerprint: String,
}

/// `ferry app info`, as TOML: exactly the `[app]` section of comms.toml.
#[derive(serde::Serialize, serde::Deserialize)]
struct AppInfo {
    app: ferry_comms::config::AppEndpoint,
}

fn read_info<T: serde::de::DeserializeOwned>(path: &std::path::Path, from: &str) -> anyhow::Result<T> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("{} is not the output of `{from}`", path.display()))
}

/// Writes `path` (new: the defaults `default_text`; existing: its own keys) after `fill` changed its table, then
/// checks the result loads. Only the keys `fill` sets change; the rest of an existing file is kept.
fn fill_config(
    path: &std::path::Path,
    default_text: &str,
    fill: impl FnOnce(&mut toml::Table),
    load: impl FnOnce(&std::path::Path) -> anyhow::Result<()>,
) -> anyhow::Result<bool> {
    let existed = path.exists();
    let text = if existed {
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?
    } else {
        default_text.to_string()
    };
    let mut table: toml::Table =
        toml::from_str(&text).with_context(|| format!("{} is not valid TOML", path.display()))?;
    fill(&mut table);
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, toml::to_string_pretty(&table)?).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    load(path)?;
    Ok(existed)
}

async fn open_instance(cfg: &AppConfig, tenant: &str) -> anyhow::Result<ferry_app::instance::Instance> {
    let path = cfg.data_dir.join("instances").join(format!("{tenant}.db"));
    if !ferry_proto::api::valid_tenant_name(tenant) || !path.exists() {
        anyhow::bail!("no instance for tenant {tenant:?} in {}", cfg.data_dir.display());
    }
    Ok(ferry_app::instance::Instance::open(&path).await?)
}

/// Tell Comms about new outbox files now; if it cannot be reached, the running App server retries.
async fn announce(cfg: &AppConfig, inst: &ferry_app::instance::Instance, tenant: &str) -> anyhow::Result<()> {
    let id = ferry_app::server::identity(cfg)?;
    match ferry_app::downstream::comms_client(cfg, &id.service_key)? {
        None => println!(
            "no [comms] configured in the app config: files stay in the outbox; fill it with `ferry app init \
             --comms-info FILE` (FILE: the output of `ferry comms info`)"
        ),
        Some(c) => match ferry_app::downstream::announce_pending(&c, inst, tenant).await {
            Ok(n) => println!("{n} file(s) announced to the Comms server"),
            Err(e) => println!("could not reach the Comms server now ({e:#}); the App server will retry"),
        },
    }
    Ok(())
}

/// Resolves at the first SIGTERM/Ctrl-C so the current step can finish; a second signal stops the process at
/// once (everything on disk is written under temporary names and journaled, so that is still safe).
pub(super) async fn comms(cmd: CommsCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        CommsCmd::Init { config, app_info } => {
            let p = path_or(&config, "comms.toml");
            let defaults = toml::to_string_pretty(&CommsConfig::default())?;
            match app_info {
                None => {
                    write_new(&p, &defaults)?;
                    println!(
                        "wrote {}: fill its [app] section with `ferry comms init --app-info FILE` (FILE: the output \
                         of `ferry app info`), then `ferry comms serve`",
                        p.display()
                    );
                }
                Some(info) => {
                    let info: AppInfo = read_info(&info, "ferry app info")?;
                    let app = toml::Table::try_from(&info.app)?;
                    let existed = fill_config(
                        &p,
                        &defaults,
                        |t| {
                            t.insert("app".into(), toml::Value::Table(app));
                        },
                        |p| CommsConfig::load(p).map(drop),
                    )?;
                    let what = if existed { "updated the [app] section of" } else { "wrote" };
                    println!("{what} {} (App server {}), then `ferry comms serve`", p.display(), info.app.api_url);
                }
            }
            // read back, so the data folder is taken from the config file's folder as `serve` will
            let token = CommsConfig::load(&p)?.admin_token_path();
            ferry_comms::admin::load_or_create_admin_token(&token)?;
            println!("admin api token (mode 0600): {} — send it as `Authorization: Bearer <token>`", token.display());
        }
        CommsCmd::Serve { config } => {
            let cfg = comms_config(&config)?;
            let no_app = cfg.app.api_url.is_empty() || cfg.app.service_key.is_empty() || cfg.app.ssh_addr.is_empty();
            if no_app && ferry_comms::db::list_apps(&Admin::open(cfg.clone()).await?.db).await?.is_empty() {
                anyhow::bail!(
                    "the [app] section of {} is not filled in and no App server is registered: the Comms server \
                     cannot reach an App server. On the App server run `ferry app info > app-info.toml`, then here \
                     `ferry comms init --config {} --app-info app-info.toml` (or `ferry comms app add NAME --info \
                     app-info.toml`)",
                    path_or(&config, "comms.toml").display(),
                    path_or(&config, "comms.toml").display()
                );
            }
            let listeners = if cfg.listen_https == cfg.listen_ssh {
                let l = tokio::net::TcpListener::bind(cfg.listen_https)
                    .await
                    .with_context(|| format!("cannot listen on {} (listen_https = listen_ssh)", cfg.listen_https))?;
                ferry_comms::Listeners::Shared(l)
            } else {
                let https = std::net::TcpListener::bind(cfg.listen_https)
                    .with_context(|| format!("cannot listen on {} (listen_https)", cfg.listen_https))?;
                let ssh = tokio::net::TcpListener::bind(cfg.listen_ssh)
                    .await
                    .with_context(|| format!("cannot listen on {} (listen_ssh)", cfg.listen_ssh))?;
                ferry_comms::Listeners::Separate { https, ssh }
            };
            let h = ferry_comms::start_on(cfg, listeners).await?;
            println!("comms server: https://{}  sftp {}  (Ctrl-C to stop)", h.https_addr, h.ssh_addr);
            sigterm_or_ctrl_c().await;
            h.stop().await;
        }
        CommsCmd::Info { config } => {
            let a = Admin::open(comms_config(&config)?).await?;
            let info = CommsInfo {
                comms: CommsIdentity {
                    api_url: a.public_url(),
                    tls_fingerprint: a.identity.tls_fingerprint.clone(),
                    service_key: ferry_io::keys::public_key_openssh(a.identity.service_key.public_key())?,
                    ssh_host_key_fingerprint: a.identity.ssh_host_key_fingerprint(),
                },
            };
            println!("# This Comms server's identity. Save it (`ferry comms info > comms-info.toml`) and on the App");
            println!("# server run `ferry app init --comms-info comms-info.toml`: it fills [comms] and comms_keys.");
            match a.cfg.listen_admin {
                Some(addr) => {
                    println!("# admin api: https://{addr}/admin/v1/ (token in {})", a.cfg.admin_token_path().display())
                }
                None => println!("# admin api: off (listen_admin is not set)"),
            }
            print!("{}", toml::to_string_pretty(&info)?);
        }
        CommsCmd::Tenant(t) => tenant(*t).await?,
        CommsCmd::App(AppServerCmd::Add { name, info, config }) => {
            let a = Admin::open(comms_config(&config)?).await?;
            let info: AppInfo = read_info(&info, "ferry app info")?;
            a.add_app(&name, &info.app).await?;
            println!(
                "App server {name} registered ({}); new tenants go to the App server with the fewest tenants \
                 (or `ferry comms tenant add NAME --app {name}`)",
                info.app.api_url
            );
        }
        CommsCmd::App(AppServerCmd::List { config }) => {
            let a = Admin::open(comms_config(&config)?).await?;
            println!("{:<16} {:<32} {:<24} {:>7}  status", "name", "api", "sftp", "tenants");
            for (row, status) in a.apps_with_status().await? {
                let status = match status {
                    Ok(()) => "up".to_string(),
                    Err(e) => format!("down: {e}"),
                };
                println!(
                    "{:<16} {:<32} {:<24} {:>7}  {status}",
                    row.name, row.endpoint.api_url, row.endpoint.ssh_addr, row.tenants
                );
            }
        }
        CommsCmd::App(AppServerCmd::Remove { name, config }) => {
            Admin::open(comms_config(&config)?).await?.remove_app(&name).await?;
            println!("App server {name} removed");
        }
        CommsCmd::Operator(OperatorCmd::Add { email, config }) => {
            let a = Admin::open(comms_config(&config)?).await?;
            let Some(addr) = a.cfg.listen_admin else {
                anyhow::bail!(
                    "the console is served on the admin listener, which is off: set listen_admin in comms.toml \
                     (e.g. \"127.0.0.1:8444\") first"
                );
            };
            let (email, token) = ferry_comms::console::operators::add(&a.db, &email, "cli").await?;
            println!("operator {email}: send this link to set the password (valid 72 h, once):");
            println!("https://{addr}/console/set-password?token={token}");
        }
        CommsCmd::Db(DbCmd::Migrate { config, to, password_env, password_file }) => {
            let cfg = comms_config(&config)?;
            if cfg.database.is_postgres() {
                anyhow::bail!(
                    "{} already keeps its metadata in PostgreSQL ([database] url = {}): nothing to migrate",
                    path_or(&config, "comms.toml").display(),
                    ferry_comms::db::redact_url(&cfg.database.url)
                );
            }
            let target = ferry_comms::db::DatabaseConfig {
                url: to,
                password_env,
                password_file: password_file.map(|p| std::path::absolute(&p).unwrap_or(p)),
                max_connections: 0,
            };
            let sqlite = cfg.db_path();
            println!("copying {} into {}", sqlite.display(), ferry_comms::db::redact_url(&target.url));
            let r = ferry_comms::db_move::sqlite_to_postgres(&sqlite, &target, &mut |line| println!("{line}")).await?;
            println!(
                "done: {} tables, {} rows copied and counted again; audit chain verified on PostgreSQL ({} entries)",
                r.tables.len(),
                r.rows(),
                r.audit_entries
            );
            println!("\nNow, in {}, set:\n", path_or(&config, "comms.toml").display());
            println!("[database]\nurl = {:?}", ferry_comms::db::redact_url(&target.url));
            if let Some(v) = &target.password_env {
                println!("password_env = {v:?}");
            }
            if let Some(f) = &target.password_file {
                println!("password_file = {:?}", f.display().to_string());
            }
            println!(
                "\n(the URL is shown without its password: keep the password in password_env or password_file), then \
                 start the server(s). Keep {} as a backup; the server no longer reads it.",
                sqlite.display()
            );
        }
        CommsCmd::Audit(AuditCmd::Verify { config }) => {
            let a = Admin::open(comms_config(&config)?).await?;
            match ferry_comms::db::verify_audit(&a.db).await? {
                Ok(n) => println!("audit log intact: {n} entries, chain verified"),
                Err(why) => {
                    println!("audit log TAMPERED: {why}");
                    return Ok(ExitCode::from(3));
                }
            }
        }
        CommsCmd::Audit(AuditCmd::Show { config, limit }) => {
            let a = Admin::open(comms_config(&config)?).await?;
            for e in ferry_comms::db::recent_audit(&a.db, limit).await? {
                println!("{:>6} {} {:<20} {:<18} {}", e.0, e.1, e.2.unwrap_or_default(), e.3, e.4);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn tenant(cmd: TenantCmd) -> anyhow::Result<()> {
    match cmd {
        TenantCmd::Add { name, app, config } => {
            let a = Admin::open(comms_config(&config)?).await?;
            let url = a.public_url();
            let (app, token) = a.add_tenant_on(&name, app.as_deref(), &url).await?;
            println!("tenant {name} created; its instance is ready on App server {app}.");
            println!("registration token (single use, expires in {} h):\n{token}", a.cfg.token_ttl_hours);
        }
        TenantCmd::Show { name, config } => {
            let a = Admin::open(comms_config(&config)?).await?;
            let Some(t) = ferry_comms::db::list_tenants(&a.db).await?.into_iter().find(|t| t.name == name) else {
                anyhow::bail!("no tenant named {name:?} (see `ferry comms tenant list`)");
            };
            println!("tenant      {}", t.name);
            println!("status      {}", t.status);
            println!("app server  {}", t.app.as_deref().unwrap_or("(not placed)"));
            println!("created     {}", t.created_at);
            println!("keys        {} active", t.keys);
            println!("batches     {} (last {})", t.batches, t.last_batch.as_deref().unwrap_or("-"));
        }
        TenantCmd::Place { name, app, config } => {
            Admin::open(comms_config(&config)?).await?.place_tenant(&name, &app).await?;
            println!("tenant {name} placed on App server {app}: its batches and files go there from now on");
        }
        TenantCmd::Token { name, config } => {
            let a = Admin::open(comms_config(&config)?).await?;
            let url = a.public_url();
            println!("{}", a.token(&name, &url).await?);
        }
        TenantCmd::List { config } => {
            let a = Admin::open(comms_config(&config)?).await?;
            println!(
                "{:<24} {:<9} {:<16} {:>4} {:>8}  last batch",
                "tenant", "status", "app server", "keys", "batches"
            );
            for t in ferry_comms::db::list_tenants(&a.db).await? {
                println!(
                    "{:<24} {:<9} {:<16} {:>4} {:>8}  {}",
                    t.name,
                    t.status,
                    t.app.as_deref().unwrap_or("-"),
                    t.keys,
                    t.batches,
                    t.last_batch.unwrap_or_default()
                );
            }
        }
        TenantCmd::Files { name, config } => {
            let a = Admin::open(comms_config(&config)?).await?;
            for f in ferry_comms::db::tenant_downloads(&a.db, &name, 100).await? {
                let err = f.5.map(|e| format!("\n    last error: {e}")).unwrap_or_default();
                println!("{}  {:<18} {:<10} attempts {}  {}{err}", f.0, f.1, f.2, f.3, f.4);
            }
        }
        TenantCmd::Keys { name, config } => {
            let a = Admin::open(comms_config(&config)?).await?;
            for (fp, status, created, host) in ferry_comms::db::tenant_keys(&a.db, &name).await? {
                println!("{fp}  {status:<8} {created}  {host}");
            }
        }
        TenantCmd::RevokeKey { name, fingerprint, config } => {
            Admin::open(comms_config(&config)?).await?.revoke_key(&name, &fingerprint).await?;
            println!(
                "key {fingerprint} of {name} revoked (a running server refuses it and closes its sessions within a second)"
            );
        }
        TenantCmd::Limits {
            name,
            max_batch_bytes,
            max_batch_files,
            upload_bytes_per_day,
            max_upload_file_bytes,
            max_download_file_bytes,
            max_sftp_sessions,
            max_open_handles,
            max_files,
            config,
        } => {
            use ferry_comms::limits::{Limit, parse_size};
            let a = Admin::open(comms_config(&config)?).await?;
            let mut changes = Vec::new();
            for (limit, value) in [
                (Limit::MaxBatchBytes, max_batch_bytes),
                (Limit::MaxBatchFiles, max_batch_files),
                (Limit::UploadBytesPerDay, upload_bytes_per_day),
                (Limit::MaxUploadFileBytes, max_upload_file_bytes),
                (Limit::MaxDownloadFileBytes, max_download_file_bytes),
                (Limit::MaxSftpSessions, max_sftp_sessions),
                (Limit::MaxOpenHandles, max_open_handles),
                (Limit::MaxFiles, max_files),
            ] {
                let Some(v) = value else { continue };
                let v = if v == "default" {
                    None
                } else {
                    Some(parse_size(&v).map_err(|e| anyhow::anyhow!("--{}: {e}", limit.key().replace('_', "-")))?)
                };
                changes.push((limit, v));
            }
            let view = if changes.is_empty() { a.limits(&name).await? } else { a.set_limits(&name, &changes).await? };
            for limit in Limit::ALL {
                let set = if view.overrides.contains(&limit.key()) { "set for this tenant" } else { "default" };
                println!("{:<24} {:>16} {:<6} {set}", limit.key(), limit.get(&view.limits), limit.unit());
            }
        }
        TenantCmd::Disable { name, config } => {
            Admin::open(comms_config(&config)?).await?.set_enabled(&name, false).await?;
            println!("tenant {name} disabled (a running server refuses it and closes its sessions within a second)");
        }
        TenantCmd::Enable { name, config } => {
            Admin::open(comms_config(&config)?).await?.set_enabled(&name, true).await?;
            println!("tenant {name} enabled");
        }
    }
    Ok(())
}

pub(super) async fn app(cmd: AppCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        AppCmd::Init { config, comms_info } => {
            let p = path_or(&config, "app.toml");
            let defaults = toml::to_string_pretty(&AppConfig::default())?;
            match comms_info {
                None => {
                    write_new(&p, &defaults)?;
                    println!(
                        "wrote {}: give `ferry app info` to the Comms server (`ferry comms init --app-info FILE`), \
                         then fill [comms] and comms_keys here with `ferry app init --comms-info FILE` (FILE: the \
                         output of `ferry comms info`), then `ferry app serve`",
                        p.display()
                    );
                }
                Some(info) => {
                    let info: CommsInfo = read_info(&info, "ferry comms info")?;
                    let c = info.comms;
                    ferry_io::keys::parse_public_key(&c.service_key)
                        .map_err(|e| anyhow::anyhow!("service_key of the comms info: {e}"))?;
                    let existed = fill_config(
                        &p,
                        &defaults,
                        |t| {
                            let mut s = match t.remove("comms") {
                                Some(toml::Value::Table(s)) => s,
                                _ => toml::Table::new(),
                            };
                            s.insert("api_url".into(), c.api_url.clone().into());
                            s.insert("tls_fingerprint".into(), c.tls_fingerprint.clone().into());
                            t.insert("comms".into(), toml::Value::Table(s));
                            let keys =
                                t.entry("comms_keys".to_string()).or_insert_with(|| toml::Value::Array(Vec::new()));
                            if !keys.is_array() {
                                *keys = toml::Value::Array(Vec::new());
                            }
                            if let toml::Value::Array(keys) = keys {
                                let same = |k: &toml::Value| {
                                    k.as_str()
                                        .and_then(|k| ferry_io::keys::parse_public_key(k).ok())
                                        .map(|k| ferry_io::keys::fingerprint(&k))
                                        == ferry_io::keys::parse_public_key(&c.service_key)
                                            .ok()
                                            .map(|k| ferry_io::keys::fingerprint(&k))
                                };
                                if !keys.iter().any(same) {
                                    keys.push(c.service_key.clone().into());
                                }
                            }
                        },
                        |p| AppConfig::load(p).map(drop),
                    )?;
                    let what = if existed { "updated [comms] and comms_keys in" } else { "wrote" };
                    println!("{what} {} (Comms server {}), then `ferry app serve`", p.display(), c.api_url);
                }
            }
        }
        AppCmd::Serve { config } => {
            let cfg = app_config(&config)?;
            if cfg.comms.api_url.is_empty() || cfg.comms_keys.is_empty() {
                anyhow::bail!(
                    "the [comms] section or comms_keys of {} is not filled in: the App server could not announce \
                     files nor accept the Comms server's calls. On the Comms server run `ferry comms info > \
                     comms-info.toml`, then here `ferry app init --config {} --comms-info comms-info.toml`",
                    path_or(&config, "app.toml").display(),
                    path_or(&config, "app.toml").display()
                );
            }
            let https = std::net::TcpListener::bind(cfg.listen_https)
                .with_context(|| format!("cannot listen on {} (listen_https)", cfg.listen_https))?;
            let ssh = tokio::net::TcpListener::bind(cfg.listen_ssh)
                .await
                .with_context(|| format!("cannot listen on {} (listen_ssh)", cfg.listen_ssh))?;
            let web = match cfg.listen_web {
                Some(a) => {
                    Some(std::net::TcpListener::bind(a).with_context(|| format!("cannot listen on {a} (listen_web)"))?)
                }
                None => None,
            };
            let admin = match cfg.listen_admin {
                Some(a) => Some(
                    std::net::TcpListener::bind(a).with_context(|| format!("cannot listen on {a} (listen_admin)"))?,
                ),
                None => None,
            };
            let token_path = cfg.admin_token_path();
            let mut h = ferry_app::web::start_with_web(cfg, https, ssh, web).await?;
            if let Some(admin) = admin
                && let Err(e) = h.serve_admin(admin)
            {
                h.stop().await;
                return Err(e.context("starting the admin listener (listen_admin)"));
            }
            println!("app server: https://{}  sftp {}  (Ctrl-C to stop)", h.https_addr, h.ssh_addr);
            match h.admin_addr {
                Some(a) => {
                    println!("app server: metrics at https://{a}/metrics (bearer token in {})", token_path.display())
                }
                None => println!("app server: metrics off (listen_admin)"),
            }
            match h.web_url() {
                Some(u) => println!("app server: buyer's web page {u}"),
                None => println!("app server: buyer's web page off (listen_web)"),
            }
            sigterm_or_ctrl_c().await;
            h.stop().await;
        }
        AppCmd::Plan { tenant, config } => {
            let cfg = app_config(&config)?;
            let inst = open_instance(&cfg, &tenant).await?;
            let today = chrono::Utc::now().date_naive();
            let p = ferry_app::downstream::plan_and_publish(&cfg, &inst, &tenant, today).await?;
            println!("plan {} for {tenant}: {} recommended lines (policy {})", p.plan.id, p.plan.lines, p.policy);
            if p.released.is_empty() {
                match p.policy {
                    ferry_app::release::Policy::Review => println!("nothing released: a buyer reviews and releases"),
                    ferry_app::release::Policy::Auto => println!("nothing to release"),
                }
            }
            for r in &p.released {
                println!("  released {} to {}: {} lines", r.file_name, r.supplier, r.lines);
            }
            if !p.released.is_empty() {
                announce(&cfg, &inst, &tenant).await?;
            }
        }
        AppCmd::Publish { tenant, file, name, config } => {
            let cfg = app_config(&config)?;
            let inst = open_instance(&cfg, &tenant).await?;
            let name = match name {
                Some(n) => n,
                None => file.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string(),
            };
            let f = ferry_app::outbox::publish(&inst, &tenant, &cfg.data_dir.join("sftp"), &file, &name).await?;
            println!("published {} as file {}", f.name, f.file_id);
            announce(&cfg, &inst, &tenant).await?;
        }
        AppCmd::Files { tenant, config } => {
            let cfg = app_config(&config)?;
            let inst = open_instance(&cfg, &tenant).await?;
            let t = |d: Option<chrono::DateTime<chrono::Utc>>| {
                d.map(|d| d.format("%Y-%m-%d %H:%M:%S").to_string()).unwrap_or_else(|| "-".into())
            };
            println!("{:<26} {:<18} {:<10} {:<20} {:<20} delivered", "file id", "name", "state", "created", "relayed");
            for r in ferry_app::outbox::receipts(&inst).await? {
                println!(
                    "{:<26} {:<18} {:<10} {:<20} {:<20} {}",
                    r.file_id.as_str(),
                    r.name,
                    r.state.as_str(),
                    t(Some(r.created_at)),
                    t(r.relayed_at),
                    t(r.delivered_at)
                );
            }
        }
        AppCmd::User(UserCmd::Add { tenant, email, config }) => {
            let cfg = app_config(&config)?;
            open_instance(&cfg, &tenant).await?.close().await;
            ferry_io::private::create_dir(&cfg.data_dir)?;
            let users = ferry_app::web::users::Users::open(&cfg.data_dir).await?;
            let token = users.add(&tenant, &email).await?;
            users.close().await;
            let email = ferry_app::web::users::normalize_email(&email)?;
            let Some(base) = cfg.web_base() else {
                anyhow::bail!(
                    "user {email} added, but the web page is off (listen_web); turn it on and add the user again for a link"
                );
            };
            println!("user {email} of tenant {tenant}: send this link to set the password (valid 72 h, once):");
            println!("{base}/set-password?token={token}");
        }
        AppCmd::Tenant(AppTenantCmd::Policy { tenant, policy, config }) => {
            let cfg = app_config(&config)?;
            let inst = open_instance(&cfg, &tenant).await?;
            if let Some(p) = policy {
                ferry_app::release::set_policy(&inst, p).await?;
            }
            println!("{tenant}: release policy {}", ferry_app::release::policy(&inst).await?);
        }
        AppCmd::Tenant(AppTenantCmd::List { config }) => {
            let cfg = app_config(&config)?;
            let dir = cfg.data_dir.join("instances");
            let mut tenants: Vec<String> = match std::fs::read_dir(&dir) {
                Ok(entries) => entries
                    .flatten()
                    .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_suffix(".db")).map(str::to_owned))
                    .filter(|t| ferry_proto::api::valid_tenant_name(t))
                    .collect(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                Err(e) => return Err(anyhow::Error::new(e).context(format!("cannot list {}", dir.display()))),
            };
            tenants.sort();
            println!("{:<32} {:<8} {:>8} {:>6}  planned at", "tenant", "policy", "plan", "lines");
            for t in tenants {
                let inst = open_instance(&cfg, &t).await?;
                let policy = ferry_app::release::policy(&inst).await?;
                let plan = ferry_app::release::current_plan(&inst).await?;
                let (id, lines, at) = match plan {
                    Some(p) => (p.id.to_string(), p.lines.to_string(), p.created_at),
                    None => ("-".into(), "-".into(), "-".into()),
                };
                println!("{t:<32} {:<8} {id:>8} {lines:>6}  {at}", policy.as_str());
                inst.close().await;
            }
        }
        AppCmd::Info { config } => {
            let cfg = app_config(&config)?;
            let id = ferry_app::server::identity(&cfg)?;
            let info = AppInfo {
                app: ferry_comms::config::AppEndpoint {
                    api_url: format!("https://{}", cfg.listen_https),
                    tls_fingerprint: id.tls_fingerprint.clone(),
                    ssh_addr: cfg.listen_ssh.to_string(),
                    ssh_host_key_fingerprint: id.ssh_host_key_fingerprint(),
                    service_key: ferry_io::keys::public_key_openssh(id.service_key.public_key())?,
                },
            };
            println!("# This App server's identity: the [app] section of comms.toml. Save it (`ferry app info >");
            println!("# app-info.toml`) and on the Comms server run `ferry comms init --app-info app-info.toml`.");
            print!("{}", toml::to_string_pretty(&info)?);
        }
    }
    Ok(ExitCode::SUCCESS)
}
