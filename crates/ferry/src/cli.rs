//! Command-line surface. `--config` defaults to the file name in the current folder.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use ferry_app::AppConfig;
use ferry_comms::CommsConfig;
use ferry_comms::admin::Admin;
use ferry_connector::agent::{self, Connector};

#[derive(Parser)]
#[command(name = "ferry", version, about = "Carries ERP data to a cloud inventory-planning service and orders back.")]
pub struct Cli {
    /// Log filter (e.g. info, debug, ferry_comms=debug); FERRY_LOG overrides.
    #[arg(long, global = true)]
    pub log: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// The agent on the ERP server.
    #[command(subcommand)]
    Connector(ConnectorCmd),
    /// The multi-tenant relay in the cloud.
    #[command(subcommand)]
    Comms(CommsCmd),
    /// The App server hosting one instance per customer.
    #[command(subcommand)]
    App(AppCmd),
    /// The whole system on loopback: sample ERP, Comms, App, Connector; one full upstream cycle.
    Demo(ferry::demo::DemoArgs),
    /// Write a sample distributor ERP database (SQLite) to try a Connector against.
    SampleErp {
        path: PathBuf,
        /// small or medium
        #[arg(long, default_value = "small")]
        size: String,
    },
    /// Benchmarks against the standard tools.
    #[command(subcommand)]
    Bench(ferry::bench::BenchCmd),
}

#[derive(Args)]
pub struct ConfigArg {
    /// Configuration file.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum ConnectorCmd {
    /// Write connector.toml and mapping.toml and generate the key pair (private key mode 0600).
    Init {
        /// Folder for the connector's files.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// ERP database (SQLite file path for now).
        #[arg(long, default_value = "erp.db")]
        erp: String,
        /// rsa2048 (default), rsa3072, rsa4096 or ed25519.
        #[arg(long, default_value = "rsa2048")]
        key_type: String,
        /// Replace an existing key (it must then be registered again).
        #[arg(long)]
        force_key: bool,
    },
    /// Register this connector's public key with a token from the operator.
    Register {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long, env = "FERRY_TOKEN", hide_env_values = true)]
        token: String,
    },
    /// Run every query of the mapping and validate the rows against DATA-SPEC.md; send nothing. Exit code 1 when
    /// there are errors, 2 when there are warnings that `sync` would refuse.
    Check {
        #[command(flatten)]
        config: ConfigArg,
        /// Problems printed per file (the rest are counted).
        #[arg(long, default_value_t = 20)]
        max_problems: usize,
        /// Sample rows printed per file.
        #[arg(long, default_value_t = 3)]
        samples: usize,
        /// Treat warnings as `sync --allow-warnings` would (exit code 0 if there are no errors).
        #[arg(long)]
        allow_warnings: bool,
    },
    /// Extract, validate, compress, upload and import one batch now (incremental files as a window when due).
    Sync {
        #[command(flatten)]
        config: ConfigArg,
        /// Extract every file whole, incremental ones too.
        #[arg(long)]
        full: bool,
        /// Send the batch even if validation found warnings (unknown codes, duplicate keys); errors always block.
        #[arg(long)]
        allow_warnings: bool,
    },
    /// The long-running agent: files from the cloud as they come, plus the daily extract (SIGTERM/Ctrl-C stops).
    Run {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Fetch and apply files waiting in the cloud once (waiting up to --wait seconds for one).
    Receive {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long, default_value_t = 0)]
        wait: u64,
    },
    /// Replace the key pair without downtime (the new key is registered by a call signed with the old one).
    RotateKey {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long, default_value = "rsa2048")]
        key_type: String,
    },
    /// Show recent batches and their state at the Comms server.
    Status {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long, default_value_t = 10)]
        limit: i64,
    },
}

#[derive(Subcommand)]
pub enum CommsCmd {
    /// Write a default comms.toml to edit.
    Init {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Run the Comms server (HTTPS + SFTP + relay).
    Serve {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Print this server's identity: service public key (for app.toml), TLS and SSH fingerprints.
    Info {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Tenants (customers).
    #[command(subcommand)]
    Tenant(TenantCmd),
    /// The tamper-evident audit log.
    #[command(subcommand)]
    Audit(AuditCmd),
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
    /// Create a tenant and its instance on the App server; print a registration token.
    Add {
        name: String,
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
    /// Write a default app.toml to edit.
    Init {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Run the App server (HTTPS + SFTP).
    Serve {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Print this server's TLS and SSH fingerprints (for comms.toml).
    Info {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Plan a tenant's instance now and send the recommended orders (po_NNNNNN.csv) down to its ERP.
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
}

fn path_or(c: &ConfigArg, default: &str) -> PathBuf {
    c.config.clone().unwrap_or_else(|| PathBuf::from(default))
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
        None => println!("no [comms] configured in the app config: files stay in the outbox"),
        Some(c) => match ferry_app::downstream::announce_pending(&c, inst, tenant).await {
            Ok(n) => println!("{n} file(s) announced to the Comms server"),
            Err(e) => println!("could not reach the Comms server now ({e:#}); the App server will retry"),
        },
    }
    Ok(())
}

/// Resolves at the first SIGTERM/Ctrl-C so the current step can finish; a second signal stops the process at
/// once (everything on disk is written under temporary names and journaled, so that is still safe).
async fn first_signal_then_hard_stop() {
    sigterm_or_ctrl_c().await;
    eprintln!("stopping after the current step (send the signal again to stop at once)");
    tokio::spawn(async {
        sigterm_or_ctrl_c().await;
        eprintln!("stopping now");
        std::process::exit(130);
    });
}

async fn ctrl_c() {
    let _ = tokio::signal::ctrl_c().await;
}

async fn sigterm_or_ctrl_c() {
    #[cfg(unix)]
    {
        if let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            tokio::select! { _ = ctrl_c() => {}, _ = term.recv() => {} }
            return;
        }
    }
    ctrl_c().await
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Connector(c) => connector(c).await,
        Command::Comms(c) => comms(c).await,
        Command::App(c) => app(c).await,
        Command::Demo(a) => ferry::demo::run(a).await,
        Command::SampleErp { path, size } => {
            let s = ferry_connector::sample::generate_sample_erp(&path, ferry::demo::parse_size(&size)?).await?;
            println!(
                "sample ERP written to {} ({} rows); its mapping is what `ferry connector init` writes",
                path.display(),
                s.total_rows()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(b) => ferry::bench::run(b).await,
    }
}

async fn connector(cmd: ConnectorCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        ConnectorCmd::Init { dir, erp, key_type, force_key } => {
            let alg = key_type.parse().map_err(|e| anyhow::anyhow!("--key-type: {e}"))?;
            let r = agent::init(&dir, &erp, alg, force_key)?;
            println!("config:      {}", r.config.display());
            println!("private key: {} (mode 0600; never leaves this machine)", r.key.display());
            println!("public key:  {}", r.public_key);
            println!("fingerprint: {}", r.fingerprint);
            println!(
                "next: edit mapping.toml for your ERP (docs/mapping.md), test it with `ferry connector check`, then \
                 `ferry connector register --token <token>`"
            );
        }
        ConnectorCmd::Register { config, token } => {
            let c = Connector::load(&path_or(&config, "connector.toml"))?;
            let r = c.register(&token).await?;
            println!("registered as tenant {} (key {})", r.tenant, r.key_fingerprint);
            println!(
                "comms: {}  sftp: {}  ssh host key pinned: {}",
                r.comms_url, r.ssh_addr, r.ssh_host_key_fingerprint
            );
        }
        ConnectorCmd::Check { config, max_problems, samples, allow_warnings } => {
            let cfg = ferry_connector::config::ConnectorConfig::load(&path_or(&config, "connector.toml"))?;
            println!(
                "checking the mapping {} against the ERP database ({}); nothing is sent",
                cfg.mapping_path().display(),
                cfg.erp.kind
            );
            let limits = ferry_connector::check::CheckLimits { max_problems, samples };
            let (mapping, report) = agent::check(&cfg, limits, &|_: &str, _: u64| {}).await?;
            let allow = allow_warnings || mapping.allow_warnings;
            print!("{}", report.render(allow));
            if report.errors() > 0 {
                return Ok(ExitCode::from(1));
            }
            if report.blocks(allow) {
                return Ok(ExitCode::from(2));
            }
        }
        ConnectorCmd::Sync { config, full, allow_warnings } => {
            let c = Connector::load(&path_or(&config, "connector.toml"))?;
            let opts = agent::SyncOptions { full, allow_warnings, today: None };
            let r = c.sync_with(&opts, &|line: &str| println!("{line}")).await?;
            let s = &r.status;
            match (s.state, &s.detail) {
                (ferry_proto::api::BatchState::Rejected, d) => {
                    println!("batch {} rejected: {}", s.batch_id, d.as_deref().unwrap_or("no detail"));
                    return Ok(ExitCode::from(2));
                }
                (state, _) => println!("batch {}: {} ({} files, {} rows)", s.batch_id, state.as_str(), s.files, s.rows),
            }
        }
        ConnectorCmd::Run { config } => {
            let c = std::sync::Arc::new(Connector::load(&path_or(&config, "connector.toml"))?);
            let log: std::sync::Arc<dyn Fn(&str) + Send + Sync> = std::sync::Arc::new(|l: &str| {
                println!("{} {l}", chrono::Local::now().format("%Y-%m-%d %H:%M:%S"));
            });
            c.run(first_signal_then_hard_stop(), log).await?;
        }
        ConnectorCmd::Receive { config, wait } => {
            let c = Connector::load(&path_or(&config, "connector.toml"))?;
            let out = c.receive(wait, &|l: &str| println!("{l}")).await?;
            if out.is_empty() {
                println!("no files waiting");
            }
        }
        ConnectorCmd::RotateKey { config, key_type } => {
            let alg = key_type.parse().map_err(|e| anyhow::anyhow!("--key-type: {e}"))?;
            let mut c = Connector::load(&path_or(&config, "connector.toml"))?;
            let old = c.key_fingerprint();
            let new = c.rotate_key(alg).await?;
            println!("key rotated: {old} -> {new} (the old key is retired)");
        }
        ConnectorCmd::Status { config, limit } => {
            let c = Connector::load(&path_or(&config, "connector.toml"))?;
            let pending = c.pending().await?;
            if !pending.is_empty() {
                println!("pending:");
                for p in &pending {
                    println!("  {p}");
                }
            }
            let list = match c.status(limit).await {
                Ok(list) => list,
                Err(e) => {
                    println!("cannot reach the Comms server for the batch list: {e:#}");
                    Vec::new()
                }
            };
            if list.is_empty() && pending.is_empty() && c.registration().is_ok() {
                println!("no batches at the Comms server yet: run `ferry connector sync`");
            }
            for s in list {
                let detail = s.detail.map(|d| format!("\n    {d}")).unwrap_or_default();
                println!(
                    "{}  {:<9} {:>3} files {:>10} rows  {}{}",
                    s.batch_id,
                    s.state.as_str(),
                    s.files,
                    s.rows,
                    s.updated_at.format("%Y-%m-%d %H:%M:%S"),
                    detail
                );
            }
            let marks = c.watermarks().await?;
            if !marks.is_empty() {
                println!("incremental files (the next window starts overlap_days before `through`):");
            }
            for (file, w) in marks {
                println!(
                    "  {file:<18} on {:<14} through {}  last full {}",
                    w.column,
                    w.through.format("%Y/%m/%d"),
                    w.last_full.format("%Y/%m/%d")
                );
            }
            let received = c.received(limit).await?;
            if !received.is_empty() {
                println!("files from the cloud:");
            }
            for r in received {
                let when =
                    r.acked_at.or(r.applied_at).map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string()).unwrap_or_default();
                let err = r.error.map(|e| format!("\n    last error: {e}")).unwrap_or_default();
                println!("{}  {:<18} {:<8} attempts {}  {when}{err}", r.file_id, r.name, r.state.as_str(), r.attempts);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn comms(cmd: CommsCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        CommsCmd::Init { config } => {
            let p = path_or(&config, "comms.toml");
            write_new(&p, &toml::to_string_pretty(&CommsConfig::default())?)?;
            // read back, so the data folder is taken from the config file's folder as `serve` will
            let token = CommsConfig::load(&p)?.admin_token_path();
            ferry_comms::admin::load_or_create_admin_token(&token)?;
            println!("wrote {}: fill in [app] from `ferry app info`, then `ferry comms serve`", p.display());
            println!("admin api token (mode 0600): {} — send it as `Authorization: Bearer <token>`", token.display());
        }
        CommsCmd::Serve { config } => {
            let cfg = comms_config(&config)?;
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
            println!(
                "service key (put in app.toml comms_keys): {}",
                ferry_io::keys::public_key_openssh(a.identity.service_key.public_key())?
            );
            println!("tls fingerprint: {}", a.identity.tls_fingerprint);
            println!("ssh host key:    {}", a.identity.ssh_host_key_fingerprint());
            match a.cfg.listen_admin {
                Some(addr) => {
                    println!(
                        "admin api:       https://{addr}/admin/v1/ (token in {})",
                        a.cfg.admin_token_path().display()
                    )
                }
                None => println!("admin api:       off (listen_admin is not set)"),
            }
        }
        CommsCmd::Tenant(t) => tenant(t).await?,
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
        TenantCmd::Add { name, config } => {
            let a = Admin::open(comms_config(&config)?).await?;
            let url = a.public_url();
            let token = a.add_tenant(&name, &url).await?;
            println!("tenant {name} created; its instance is ready on the App server.");
            println!("registration token (single use, expires in {} h):\n{token}", a.cfg.token_ttl_hours);
        }
        TenantCmd::Token { name, config } => {
            let a = Admin::open(comms_config(&config)?).await?;
            let url = a.public_url();
            println!("{}", a.token(&name, &url).await?);
        }
        TenantCmd::List { config } => {
            let a = Admin::open(comms_config(&config)?).await?;
            println!("{:<24} {:<9} {:>4} {:>8}  last batch", "tenant", "status", "keys", "batches");
            for t in ferry_comms::db::list_tenants(&a.db).await? {
                println!(
                    "{:<24} {:<9} {:>4} {:>8}  {}",
                    t.name,
                    t.status,
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

async fn app(cmd: AppCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        AppCmd::Init { config } => {
            let p = path_or(&config, "app.toml");
            write_new(&p, &toml::to_string_pretty(&AppConfig::default())?)?;
            println!(
                "wrote {}: add the Comms service key to comms_keys (`ferry comms info`), then `ferry app serve`",
                p.display()
            );
        }
        AppCmd::Serve { config } => {
            let cfg = app_config(&config)?;
            let https = std::net::TcpListener::bind(cfg.listen_https)
                .with_context(|| format!("cannot listen on {} (listen_https)", cfg.listen_https))?;
            let ssh = tokio::net::TcpListener::bind(cfg.listen_ssh)
                .await
                .with_context(|| format!("cannot listen on {} (listen_ssh)", cfg.listen_ssh))?;
            let h = ferry_app::server::start(cfg, https, ssh).await?;
            println!("app server: https://{}  sftp {}  (Ctrl-C to stop)", h.https_addr, h.ssh_addr);
            sigterm_or_ctrl_c().await;
            h.stop().await;
        }
        AppCmd::Plan { tenant, config } => {
            let cfg = app_config(&config)?;
            let inst = open_instance(&cfg, &tenant).await?;
            let today = chrono::Utc::now().date_naive();
            let (plan, files) = ferry_app::downstream::plan_and_publish(&cfg, &inst, &tenant, today).await?;
            println!("{} order lines for {tenant}", plan.lines.len());
            for f in &files {
                println!("  {} ({} bytes)", f.name, f.bytes);
            }
            announce(&cfg, &inst, &tenant).await?;
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
        AppCmd::Info { config } => {
            let cfg = app_config(&config)?;
            let id = ferry_app::server::identity(&cfg)?;
            println!("[app] section for comms.toml:");
            println!("api_url = \"https://{}\"", cfg.listen_https);
            println!("tls_fingerprint = \"{}\"", id.tls_fingerprint);
            println!("ssh_addr = \"{}\"", cfg.listen_ssh);
            println!("ssh_host_key_fingerprint = \"{}\"", id.ssh_host_key_fingerprint());
            println!("service_key = \"{}\"", ferry_io::keys::public_key_openssh(id.service_key.public_key())?);
        }
    }
    Ok(ExitCode::SUCCESS)
}
