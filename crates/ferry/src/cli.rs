//! Command-line surface. `--config` defaults to the file name in the current folder.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use ferry_connector::agent::{self, Connector};

#[cfg(unix)]
mod cloud;
mod service;
#[cfg(unix)]
pub use cloud::{AppCmd, CommsCmd};

#[derive(Parser)]
#[command(name = "ferry", version, about = "Carries ERP data to a cloud inventory-planning service and orders back.")]
pub struct Cli {
    /// Log filter (e.g. info, debug, ferry_comms=debug); FERRY_LOG overrides.
    #[arg(long, global = true)]
    pub log: Option<String>,
    /// Log lines on stderr: `text` or `json` (one object per line). Default: text on a terminal, JSON otherwise
    /// (a service's log file); colours only on a terminal.
    #[arg(long, global = true, env = "FERRY_LOG_FORMAT", value_parser = ["text", "json"])]
    pub log_format: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// The agent on the ERP server.
    #[command(subcommand)]
    Connector(ConnectorCmd),
    /// The multi-tenant relay in the cloud.
    #[cfg(unix)]
    #[command(subcommand)]
    Comms(CommsCmd),
    /// The App server hosting one instance per customer.
    #[cfg(unix)]
    #[command(subcommand)]
    App(AppCmd),
    /// The whole system on loopback: sample ERP, Comms, App, Connector; one full upstream cycle.
    #[cfg(unix)]
    Demo(ferry::demo::DemoArgs),
    /// Write a sample distributor ERP database (SQLite) to try a Connector against.
    SampleErp {
        path: PathBuf,
        /// small, medium or large
        #[arg(long, default_value = "small")]
        size: String,
    },
    /// Benchmarks against the standard tools.
    #[cfg(unix)]
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
        /// ERP database for `[erp] url`: a SQLite file path (any form, e.g. `C:\ERP\data.db`), or with
        /// --erp-kind a PostgreSQL/MySQL URL, an ODBC connection string or a CSV folder (docs/sources.md).
        #[arg(long, default_value = "erp.db")]
        erp: String,
        /// `[erp] kind`: sqlite, postgres, mysql, odbc or csv.
        #[arg(long, default_value = "sqlite")]
        erp_kind: String,
        /// Read the ERP database's password from standard input (one line) and write it into connector.toml,
        /// which is then readable by its owner only. Safer: `password_env` or `password_file` (docs/sources.md).
        #[arg(long)]
        erp_password_stdin: bool,
        /// rsa2048 (default), rsa3072, rsa4096 or ed25519.
        #[arg(long, default_value = "rsa2048")]
        key_type: String,
        /// Replace an existing key (it must then be registered again).
        #[arg(long)]
        force_key: bool,
        /// Write the sample ERP's worked mapping (for `ferry sample-erp`'s database) instead of the commented
        /// blank mapping for a real ERP.
        #[arg(long)]
        sample: bool,
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
    ///
    /// It extracts at start when no batch was ever sent, or when today's `[schedule] daily_at` has passed and no
    /// batch extracted since then was sent (a manual `sync` counts); then each day once `daily_at` has passed.
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
    /// The Connector as a Windows service: install, uninstall, start, stop, status (Windows only).
    #[command(subcommand)]
    Service(service::ServiceCmd),
    /// Check everything a sync depends on (config, key, ERP and each query, proxy, DNS, TCP, TLS and SSH pins,
    /// login, a signed call, clock skew, free disk): one line each with the fix. Exit code 0 only if all pass.
    Doctor {
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

fn path_or(c: &ConfigArg, default: &str) -> PathBuf {
    c.config.clone().unwrap_or_else(|| PathBuf::from(default))
}

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
        #[cfg(unix)]
        Command::Comms(c) => cloud::comms(c).await,
        #[cfg(unix)]
        Command::App(c) => cloud::app(c).await,
        #[cfg(unix)]
        Command::Demo(a) => ferry::demo::run(a).await,
        Command::SampleErp { path, size } => {
            let size = size.parse().map_err(anyhow::Error::msg)?;
            let s = ferry_sample::generate_sample_erp(&path, size).await?;
            println!(
                "sample ERP written to {} ({} rows); its mapping is what `ferry connector init` writes",
                path.display(),
                s.total_rows()
            );
            Ok(ExitCode::SUCCESS)
        }
        #[cfg(unix)]
        Command::Bench(b) => ferry::bench::run(b).await,
    }
}

async fn connector(cmd: ConnectorCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        ConnectorCmd::Init { dir, erp, erp_kind, erp_password_stdin, key_type, force_key, sample } => {
            let alg = key_type.parse().map_err(|e| anyhow::anyhow!("--key-type: {e}"))?;
            ferry_connector::erp::ErpKind::parse(&erp_kind).map_err(|e| anyhow::anyhow!("--erp-kind: {e}"))?;
            let password = if erp_password_stdin {
                let mut line = String::new();
                std::io::stdin().read_line(&mut line)?;
                Some(line.trim_end_matches(['\r', '\n']).to_string())
            } else {
                None
            };
            let init = ferry_connector::config::InitErp { kind: erp_kind, url: erp, password };
            let blank;
            let mapping = if sample {
                ferry_sample::MAPPING
            } else {
                blank = ferry_connector::mapping::blank_mapping(&init.kind);
                &blank
            };
            let r = agent::init(&dir, &init, mapping, alg, force_key)?;
            println!("config:      {}", r.config.display());
            println!("private key: {} (mode 0600; never leaves this machine)", r.key.display());
            println!("public key:  {}", r.public_key);
            println!("fingerprint: {}", r.fingerprint);
            if sample {
                println!(
                    "next: mapping.toml reads the sample ERP (`ferry sample-erp`); test it with `ferry connector \
                     check`, then `ferry connector register --token <token>`"
                );
            } else {
                println!(
                    "next: fill in mapping.toml for your ERP (every standard file is listed there, commented out; \
                     docs/mapping.md), test it with `ferry connector check`, then `ferry connector register --token \
                     <token>`"
                );
            }
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
            let live = ferry::progress::Progress::stderr();
            let checked = agent::check(&cfg, limits, &|f: &str, rows: u64, bytes: u64| live.tick(f, rows, bytes)).await;
            live.finish();
            let (mapping, report) = checked?;
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
            let mut c = Connector::load(&path_or(&config, "connector.toml"))?;
            let live = std::sync::Arc::new(ferry::progress::Progress::stderr());
            let ticks = live.clone();
            c.set_file_progress(std::sync::Arc::new(move |f: &str, rows: u64, bytes: u64| ticks.tick(f, rows, bytes)));
            // files uploaded while the extract goes on are told on their own progress lines
            let uploads = live.clone();
            c.set_upload_progress(std::sync::Arc::new(move |f: &str, bytes: u64| uploads.uploaded(f, bytes)));
            let opts = agent::SyncOptions { full, allow_warnings, today: None };
            let r = c
                .sync_with(&opts, &|line: &str| {
                    // the extract's files are done when the connector reports on the batch
                    live.finish();
                    live.println(line)
                })
                .await;
            live.finish();
            let r = r?;
            let s = &r.status;
            match (s.state, &s.detail) {
                (ferry_proto::api::BatchState::Rejected, d) => {
                    println!("batch {} rejected: {}", s.batch_id, d.as_deref().unwrap_or("no detail"));
                    return Ok(ExitCode::from(2));
                }
                (state, _) => println!("batch {}: {} ({} files, {} rows)", s.batch_id, state.as_str(), s.files, s.rows),
            }
        }
        ConnectorCmd::Service(cmd) => return service::service(cmd).await,
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
        ConnectorCmd::Doctor { config } => {
            let report = ferry_connector::doctor::doctor(&path_or(&config, "connector.toml")).await;
            print!("{}", report.render());
            if !report.passed() {
                return Ok(ExitCode::from(1));
            }
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
            let (list, unreachable) = match c.status(limit).await {
                Ok(list) => (list, None),
                Err(e) => (Vec::new(), Some(e)),
            };
            if list.is_empty() && pending.is_empty() && unreachable.is_none() && c.registration().is_ok() {
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
            if let Some(e) = unreachable {
                // The local part above is still shown; the exit status says the picture is incomplete.
                eprintln!(
                    "error: cannot reach the Comms server for the batch list: {e:#}\n\
                     the state of the batches at the server is unknown; check the network and the server, then run \
                     `ferry connector status` again"
                );
                return Ok(ExitCode::from(2));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
