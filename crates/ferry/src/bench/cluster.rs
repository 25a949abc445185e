//! `ferry bench cluster`: the scaled-out cloud side under load (issue 12, item 6). Separate OS processes for the
//! cloud: `--replicas` `ferry comms serve` (default 3) on one PostgreSQL database, Debian's haproxy in TCP mode in
//! front of them, `--apps` `ferry app serve` (default 2) — see [`harness`]. The Connectors are tasks of this
//! process (one `Connector` each, its own key, journal and connections): 200 `connector sync` processes would
//! measure process start-up and fight the servers for the same 2 cores; as tasks they share one runtime, and the
//! servers' figures are read from /proc of their own processes, so the Connectors' CPU is never counted in them.
//!
//! Phase 1: `--connectors` Connectors (default 200) sync the small sample ERP at once (full extracts) through
//! haproxy; each sync is timed from its start to the `imported` verdict. Printed: batches per minute, p50/p95 of
//! that time, CPU seconds and peak RSS of every replica and App server over the phase.
//!
//! Phase 2: `--idle` long-polls (default 1,000; `GET /v1/files?wait=60`, each on an HTTPS connection of its own,
//! re-issued when answered) held by one replica, straight to its port; its RSS before and after, and the
//! difference per connection. The replicas' `[connections] max_per_address` is raised for this, since every
//! connection comes from 127.0.0.1.
//!
//! PostgreSQL: `--database URL` (default `$FERRY_TEST_POSTGRES_URL`, which `scripts/test-databases.sh` prints);
//! the bench creates a fresh database on that server (the role needs `CREATEDB`) and leaves it there.

pub mod harness;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ferry_connector::agent::{Connector, SyncOptions};
use ferry_proto::api::BatchState;

use super::pipeline::procs::{find_program, proc_cpu, proc_peak_kib, reset_peak};
use harness::{Options, ProcCluster};

#[derive(clap::Args, Debug)]
pub struct ClusterArgs {
    /// Connectors syncing at once (tasks of this process, each with its own tenant, key and journal).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    connectors: u32,
    /// Idle long-polling connections held by one replica in the second phase (0: skip it).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(0..=50_000))]
    idle: u32,
    /// Comms replicas behind haproxy.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=16))]
    replicas: u32,
    /// App servers (tenants are placed on the least loaded).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=16))]
    apps: u32,
    /// Keep every Nth sales line of the small sample (1: all of it, ~150k lines).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    sales_every: u32,
    /// A PostgreSQL server for the Comms metadata (a fresh database is created on it). Default:
    /// $FERRY_TEST_POSTGRES_URL (scripts/test-databases.sh).
    #[arg(long)]
    database: Option<String>,
    /// Working folder, new or empty, kept afterwards (default: a temporary folder, removed).
    #[arg(long)]
    dir: Option<PathBuf>,
}

pub async fn run(a: ClusterArgs) -> anyhow::Result<ExitCode> {
    let haproxy = find_program("haproxy").context("haproxy is not installed (apt-get install haproxy)")?;
    let server = match a.database.clone().or_else(|| std::env::var("FERRY_TEST_POSTGRES_URL").ok()) {
        Some(u) => u,
        None => bail!(
            "no PostgreSQL: give --database postgres://USER:PASSWORD@HOST:PORT/DB (a role with CREATEDB), or start \
             one with `eval \"$(scripts/test-databases.sh)\"`"
        ),
    };
    let database_url = ferry_comms::db::create_scratch_postgres(&server).await?;
    let (tmp, dir) = super::work_dir(a.dir.clone())?;
    let exe = std::env::current_exe().context("cannot find the ferry binary")?;
    let build = if cfg!(debug_assertions) { "debug" } else { "release" };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "ferry bench cluster --connectors {} --idle {} --replicas {} --apps {} --sales-every {} ({build} build, {cores} \
         cores, load average {}) in {}",
        a.connectors,
        a.idle,
        a.replicas,
        a.apps,
        a.sales_every,
        super::measure::load_average(),
        dir.display()
    );
    println!("database: {}", ferry_comms::db::redact_url(&database_url));

    let erp = dir.join("erp.db");
    ferry_sample::generate_sample_erp(&erp, ferry_sample::SampleSize::Small).await.context("the sample ERP")?;
    if a.sales_every > 1 {
        harness::shrink_erp(&erp, a.sales_every).await?;
    }
    let opts = Options {
        exe,
        dir: dir.clone(),
        database_url,
        password_env: None,
        replicas: a.replicas as usize,
        apps: a.apps as usize,
        haproxy,
        max_per_address: u64::from(a.idle) + 8 * u64::from(a.connectors) + 256,
        log_filter: "info,sqlx=error".into(),
    };
    let mut cluster = tokio::task::spawn_blocking(move || ProcCluster::start(&opts, |_, _| {})).await??;
    let r = phases(&a, &cluster, &erp).await;
    cluster.stop();
    if tmp.is_some() {
        println!("removing {}", dir.display());
    } else {
        println!("kept {} (logs in logs/)", dir.display());
    }
    r
}

/// A server process's usage between two readings.
struct Usage {
    name: String,
    pid: u32,
    cpu0: f64,
}

async fn phases(a: &ClusterArgs, cluster: &ProcCluster, erp: &std::path::Path) -> anyhow::Result<ExitCode> {
    // the Connectors, registered through haproxy
    let t = Instant::now();
    let mut cfgs = Vec::new();
    for i in 0..a.connectors {
        let tenant = format!("bench{i:05}");
        let cfg = tokio::task::block_in_place(|| {
            let token = cluster.add_tenant(&tenant, None)?;
            cluster.add_connector(&tenant, &token, erp)
        })?;
        cfgs.push(cfg);
    }
    println!("{} tenants added and Connectors registered in {:.1} s", a.connectors, t.elapsed().as_secs_f64());

    // phase 1: every Connector syncs at once
    let servers: Vec<(String, u32)> =
        cluster.replicas.iter().chain(cluster.apps.iter()).map(|p| (p.name.clone(), p.pid().unwrap_or(0))).collect();
    let mut usage = Vec::new();
    for (name, pid) in servers {
        reset_peak(pid);
        usage.push(Usage { name, pid, cpu0: proc_cpu(pid, false).unwrap_or(0.0) });
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for cfg in &cfgs {
        let cfg = cfg.clone();
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let c = Connector::load(&cfg)?;
            let opts = SyncOptions { full: true, allow_warnings: false, today: None };
            let r = c.sync_with(&opts, &|_: &str| {}).await?;
            anyhow::Ok((r.status.state, t.elapsed().as_secs_f64()))
        }));
    }
    let mut times = Vec::new();
    let mut failed = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        match t.await? {
            Ok((BatchState::Imported, secs)) => times.push(secs),
            Ok((state, _)) => failed.push(format!("connector {i}: batch {}", state.as_str())),
            Err(e) => failed.push(format!("connector {i}: {e:#}")),
        }
    }
    let wall = started.elapsed().as_secs_f64();
    times.sort_by(f64::total_cmp);
    let pct = |p: f64| times.get(((times.len() as f64 * p).ceil() as usize).saturating_sub(1)).copied();
    println!();
    println!("phase 1: {} Connectors sync at once through haproxy", a.connectors);
    println!("row | value");
    println!("batches imported | {}", times.len());
    println!("wall time s | {wall:.1}");
    println!("batches per minute | {:.1}", times.len() as f64 / (wall / 60.0).max(1e-9));
    println!("sync start to imported p50 s | {}", pct(0.5).map_or("-".into(), |v| format!("{v:.2}")));
    println!("sync start to imported p95 s | {}", pct(0.95).map_or("-".into(), |v| format!("{v:.2}")));
    println!("process | CPU s | peak RSS MiB");
    for u in &usage {
        let cpu = proc_cpu(u.pid, false).map_or("-".into(), |c| format!("{:.1}", c - u.cpu0));
        let rss = proc_peak_kib(u.pid).map_or("-".into(), |k| format!("{:.1}", k as f64 / 1024.0));
        println!("{} | {cpu} | {rss}", u.name);
    }
    for f in &failed {
        println!("FAILED: {f}");
    }

    // phase 2: idle long-polls held by replica 0
    if a.idle > 0 {
        idle_phase(a.idle as usize, cluster, &cfgs).await?;
    }
    Ok(if failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// VmRSS of a process, KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().trim_end_matches("kB").trim().parse().ok()
}

/// Open sockets of a process.
fn sockets(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().starts_with("socket:")))
                .count()
        })
        .unwrap_or(0)
}

async fn idle_phase(idle: usize, cluster: &ProcCluster, cfgs: &[PathBuf]) -> anyhow::Result<()> {
    let (replica, addr) = (&cluster.replicas[0], cluster.replica_addrs[0]);
    let pid = replica.pid().context("replica 0 is not running")?;
    // the Connectors call replica 0 straight (not through haproxy): one replica holds them all
    let mut conns = Vec::new();
    for cfg in cfgs {
        let c = Connector::load(cfg)?;
        let mut reg = c.registration()?;
        reg.comms_url = format!("https://{addr}");
        reg.save(c.cfg.registration_path())?;
        conns.push(Arc::new(Connector::load(cfg)?));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss0, sock0) = (rss_kib(pid).unwrap_or(0), sockets(pid));
    let mut tasks = Vec::new();
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    for i in 0..idle {
        let c = conns[i % conns.len()].clone();
        let errors = errors.clone();
        tasks.push(tokio::spawn(async move {
            // a client of its own: its own HTTPS connection, kept for the re-issued polls
            let Ok(api) = c.api_with_timeout(Duration::from_secs(90)) else {
                errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return;
            };
            loop {
                let r = api.get::<Vec<ferry_proto::api::DownloadFile>>("/v1/files?wait=60").await;
                if r.is_err() {
                    errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }));
        // a steady stream of new connections rather than a burst (the accept queue is finite)
        if i % 50 == 49 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // held: every poll's connection open at the replica
    let t = Instant::now();
    while sockets(pid) < sock0 + idle && t.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (rss1, sock1) = (rss_kib(pid).unwrap_or(0), sockets(pid));
    for t in tasks {
        t.abort();
    }
    // the polls' connections (other sockets of the replica, to the database say, may come and go meanwhile)
    let held = sock1.saturating_sub(sock0).min(idle);
    println!();
    println!("phase 2: {idle} idle long-polls (GET /v1/files?wait=60) held by {}", replica.name);
    println!("row | value");
    println!("connections held | {held}");
    println!("replica sockets | {sock0} -> {sock1}");
    println!("RSS before MiB | {:.1}", rss0 as f64 / 1024.0);
    println!("RSS after MiB | {:.1}", rss1 as f64 / 1024.0);
    println!("RSS per connection KiB | {:.1}", rss1.saturating_sub(rss0) as f64 / held.max(1) as f64);
    println!("poll errors | {}", errors.load(std::sync::atomic::Ordering::Relaxed));
    Ok(())
}
