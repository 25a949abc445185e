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
#[command(
    name = "ferry",
    version,
    about = "Carries ERP data to a cloud inventory-planning service and orders back."
)]
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
    /// Extract, compress, upload and import one batch now.
    Sync {
        #[command(flatten)]
        config: ConfigArg,
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
        anyhow::bail!(
            "{} already exists; edit it or remove it first",
            path.display()
        );
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

async fn ctrl_c() {
    let _ = tokio::signal::ctrl_c().await;
}

async fn sigterm_or_ctrl_c() {
    #[cfg(unix)]
    {
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
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
        Command::Bench(b) => ferry::bench::run(b).await,
    }
}

async fn connector(cmd: ConnectorCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        ConnectorCmd::Init {
            dir,
            erp,
            key_type,
            force_key,
        } => {
            let alg = key_type
                .parse()
                .map_err(|e| anyhow::anyhow!("--key-type: {e}"))?;
            let r = agent::init(&dir, &erp, alg, force_key)?;
            println!("config:      {}", r.config.display());
            println!(
                "private key: {} (mode 0600; never leaves this machine)",
                r.key.display()
            );
            println!("public key:  {}", r.public_key);
            println!("fingerprint: {}", r.fingerprint);
            println!(
                "next: edit mapping.toml for your ERP, then `ferry connector register --token <token>`"
            );
        }
        ConnectorCmd::Register { config, token } => {
            let c = Connector::load(&path_or(&config, "connector.toml"))?;
            let r = c.register(&token).await?;
            println!(
                "registered as tenant {} (key {})",
                r.tenant, r.key_fingerprint
            );
            println!(
                "comms: {}  sftp: {}  ssh host key pinned: {}",
                r.comms_url, r.ssh_addr, r.ssh_host_key_fingerprint
            );
        }
        ConnectorCmd::Sync { config } => {
            let c = Connector::load(&path_or(&config, "connector.toml"))?;
            let r = c.sync(&|line: &str| println!("{line}")).await?;
            let s = &r.status;
            match (s.state, &s.detail) {
                (ferry_proto::api::BatchState::Rejected, d) => {
                    println!(
                        "batch {} rejected: {}",
                        s.batch_id,
                        d.as_deref().unwrap_or("no detail")
                    );
                    return Ok(ExitCode::from(2));
                }
                (state, _) => println!(
                    "batch {}: {} ({} files, {} rows)",
                    s.batch_id,
                    state.as_str(),
                    s.files,
                    s.rows
                ),
            }
        }
        ConnectorCmd::Status { config, limit } => {
            let c = Connector::load(&path_or(&config, "connector.toml"))?;
            let list = c.status(limit).await?;
            if list.is_empty() {
                println!("no batches yet: run `ferry connector sync`");
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
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn comms(cmd: CommsCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        CommsCmd::Init { config } => {
            let p = path_or(&config, "comms.toml");
            write_new(&p, &toml::to_string_pretty(&CommsConfig::default())?)?;
            println!(
                "wrote {}: fill in [app] from `ferry app info`, then `ferry comms serve`",
                p.display()
            );
        }
        CommsCmd::Serve { config } => {
            let cfg = comms_config(&config)?;
            let https = std::net::TcpListener::bind(cfg.listen_https)
                .with_context(|| format!("cannot listen on {} (listen_https)", cfg.listen_https))?;
            let ssh = tokio::net::TcpListener::bind(cfg.listen_ssh)
                .await
                .with_context(|| format!("cannot listen on {} (listen_ssh)", cfg.listen_ssh))?;
            let h = ferry_comms::start(cfg, https, ssh).await?;
            println!(
                "comms server: https://{}  sftp {}  (Ctrl-C to stop)",
                h.https_addr, h.ssh_addr
            );
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
        }
        CommsCmd::Tenant(t) => tenant(t).await?,
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
            println!(
                "registration token (single use, expires in {} h):\n{token}",
                a.cfg.token_ttl_hours
            );
        }
        TenantCmd::Token { name, config } => {
            let a = Admin::open(comms_config(&config)?).await?;
            let url = a.public_url();
            println!("{}", a.token(&name, &url).await?);
        }
        TenantCmd::List { config } => {
            let a = Admin::open(comms_config(&config)?).await?;
            println!(
                "{:<24} {:<9} {:>4} {:>8}  last batch",
                "tenant", "status", "keys", "batches"
            );
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
        TenantCmd::Disable { name, config } => {
            Admin::open(comms_config(&config)?)
                .await?
                .set_enabled(&name, false)
                .await?;
            println!("tenant {name} disabled");
        }
        TenantCmd::Enable { name, config } => {
            Admin::open(comms_config(&config)?)
                .await?
                .set_enabled(&name, true)
                .await?;
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
            println!(
                "app server: https://{}  sftp {}  (Ctrl-C to stop)",
                h.https_addr, h.ssh_addr
            );
            sigterm_or_ctrl_c().await;
            h.stop().await;
        }
        AppCmd::Info { config } => {
            let cfg = app_config(&config)?;
            let id = ferry_app::server::identity(&cfg)?;
            println!("[app] section for comms.toml:");
            println!("api_url = \"https://{}\"", cfg.listen_https);
            println!("tls_fingerprint = \"{}\"", id.tls_fingerprint);
            println!("ssh_addr = \"{}\"", cfg.listen_ssh);
            println!(
                "ssh_host_key_fingerprint = \"{}\"",
                id.ssh_host_key_fingerprint()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
