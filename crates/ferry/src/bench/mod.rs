//! `ferry bench pipeline`: the whole upstream, Ferry's three processes against the shell pipeline (see
//! [`pipeline`]).
//!
//! `ferry bench downstream`: the downstream path at volume (see [`downstream`]).
//!
//! `ferry bench import`: the App's import against `sqlite3 .import` of the same files (see [`import`]).
//! `ferry bench extract`: reading the ERP, the Connector's SQLite source against `sqlite3 -csv` (see [`extract`]).
//!
//! `ferry bench cluster`: N Connectors through Comms replicas behind haproxy (see [`cluster`]).
//!
//! `ferry bench upstream`: generate a sample ERP, push it through the real pipeline one stage at a time
//! (extract+CSV+hash+bzip2, SFTP upload, relay+verify+import) and print per stage seconds, MB/s, rows/s and peak
//! RSS — then run the standard tools on the same data in the same run, where they are installed (`bzip2`,
//! `lbzip2`, `pbzip2`, `md5sum`, `sha256sum`, OpenSSH `sftp -b`, `sqlite3 .import`), and print ours beside
//! theirs. A tool, not a test.
//!
//! Everything runs in this process on loopback ([`crate::cluster`]). The working folder holds the ERP, the
//! servers' data and `bench/`: a plain copy of the batch's largest CSV (decompressed from the spool before
//! `send` removes it, size and MD5 checked against the manifest), the tools' outputs and the upload test file
//! (that CSV repeated up to 64 MB, or 256 MB for `--size medium`).
//!
//! The pipeline stages run once. Each comparison runs `--runs` times, ours and the tools taking turns, and keeps
//! each side's fastest run (the machine may be busy; the 1-minute load average is printed before and after).
//! Beside wall time goes CPU time (user + system, from /proc): ours is this whole process (every thread, the
//! in-process servers included), a tool's is its process tree, plus our SFTP server's for the `sftp` comparison.
//! Peak RSS is `VmHWM`, reset before each stage through `/proc/self/clear_refs` where the kernel allows it (else
//! the peak since the start), printed with its growth over the RSS at the stage's start; it includes the
//! in-process Comms and App servers, never the external tools. Files are streamed: nothing is read whole into
//! memory on our side. MB are 10^6 bytes; RSS is in MiB.

pub mod cluster;
pub mod downstream;
mod extract;
mod import;
mod measure;
mod pipeline;
mod report;
mod stages;
mod tools;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use ferry_sample::{SampleSize, generate_sample_erp};

use crate::cluster::Cluster;
use measure::{PeakRss, RssSample, load_average};
use report::{int, print_table, show};
use stages::Bench;

#[derive(clap::Subcommand, Debug)]
pub enum BenchCmd {
    /// The upstream path: extract, compress, upload, relay, verify+import; then the standard tools on the
    /// same data.
    Upstream {
        /// Sample ERP size: small (~150k sales lines; 64 MB upload test) or medium (~2M; 256 MB).
        #[arg(long, default_value = "small", value_parser = ["small", "medium"])]
        size: String,
        /// Working folder, new or empty, kept afterwards (default: a temporary folder, removed).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Runs of each comparison with the standard tools; the fastest run of each side is kept.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
        runs: u32,
    },
    /// The whole upstream of Ferry as deployed (comms serve, app serve, connector sync --full: three processes
    /// on loopback) against the shell pipeline (sqlite3 -csv, md5sum, bzip2 -9 or lbzip2, sftp to a relay sshd
    /// and on to an app sshd, decompress, md5sum -c, sqlite3 .import), taking turns for N rounds.
    Pipeline(pipeline::PipelineArgs),
    /// The downstream path at volume: N order files published by the App while the Connector long-polls,
    /// timed until all are in its inbound folder, with the logins and calls at each hop (in-process servers).
    Downstream {
        /// Order files to publish (one plan on the medium sample makes about 350).
        #[arg(long, default_value_t = 350, value_parser = clap::value_parser!(u64).range(1..=100_000))]
        files: u64,
        /// Runs (each on a fresh cluster).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=20))]
        runs: u32,
        /// Working folder, new or empty, kept afterwards (default: a temporary folder, removed).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// The App's import of the sample's batch (decompress on every core, verify, parse, insert in one
    /// transaction) against `sqlite3 .import` of the same CSV files into same-schema tables, taking turns.
    Import {
        /// Sample ERP size: small (~150k sales lines) or medium (~2.7M).
        #[arg(long, default_value = "small", value_parser = ["small", "medium", "large"])]
        size: String,
        /// Working folder, new or empty, kept afterwards (default: a temporary folder, removed).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Rounds; each side's median is compared.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
        runs: u32,
    },
    /// Reading the ERP: `sqlite3 -csv` on the mapping queries against the Connector's SQLite source (rows only,
    /// then read + convert + validate as `connector check` does), taking turns for N rounds.
    Extract(extract::ExtractArgs),
    /// The scaled-out cloud side: N Connectors syncing at once through 3 Comms replicas behind haproxy (on
    /// PostgreSQL) and 2 App servers, all separate processes: batches per minute, p50/p95 time to imported, CPU
    /// and peak RSS per process; then one replica holding many idle long-polls (memory per connection).
    Cluster(cluster::ClusterArgs),
}

pub async fn run(cmd: BenchCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        BenchCmd::Upstream { size, dir, runs } => upstream(&size, dir, runs).await,
        BenchCmd::Pipeline(args) => pipeline::run(args).await,
        BenchCmd::Downstream { files, runs, dir } => downstream::run(files as usize, runs, dir).await,
        BenchCmd::Import { size, dir, runs } => import::run(&size, dir, runs).await,
        BenchCmd::Extract(args) => extract::run(args).await,
        BenchCmd::Cluster(args) => cluster::run(args).await,
    }
}

pub(super) const TENANT: &str = "bench";
/// Remote folder of the upload comparison, under the tenant's SFTP root at the Comms server.
pub(super) const REMOTE_DIR: &str = "/bench";

async fn upstream(size_name: &str, dir: Option<PathBuf>, runs: u32) -> anyhow::Result<ExitCode> {
    let size = crate::demo::parse_size(size_name)?;
    let upload_target: u64 = match size {
        SampleSize::Small => 64_000_000,
        SampleSize::Medium | SampleSize::Large => 256_000_000,
    };
    let (tmp, dir) = work_dir(dir)?;
    let bench = dir.join("bench");
    std::fs::create_dir_all(&bench)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut rss = PeakRss::new();
    println!("ferry bench upstream --size {size_name} --runs {runs} in {}", dir.display());
    println!("{cores} cores, load average {}", load_average());
    if !rss.resets {
        println!("note: /proc/self/clear_refs is not writable: peak RSS figures are peaks since the start");
    }

    rss.start();
    let t = Instant::now();
    let erp = dir.join("erp").join("erp.db");
    std::fs::create_dir_all(dir.join("erp"))?;
    let summary = generate_sample_erp(&erp, size).await.context("generating the sample ERP")?;
    println!(
        "sample ERP: {} rows in {:.2} s; peak RSS {}",
        int(summary.total_rows()),
        t.elapsed().as_secs_f64(),
        show(rss.peak())
    );

    let cluster = Cluster::start(&dir).await?;
    let bench_run = Bench { cluster: &cluster, bench: &bench, runs: runs as usize };
    let result = bench_run.all(&erp, upload_target, &mut rss).await;
    cluster.stop().await;
    let (lines, ok) = result?;

    println!();
    print_table(&lines);
    println!();
    println!(
        "pipeline stages: one run; comparisons: fastest of {runs} run(s) per side; load average {}",
        load_average()
    );
    println!(
        "process peak RSS {} (max over stages; includes the in-process Comms and App servers)",
        show(rss.max_kib.map(|k| RssSample { peak: k, base: None }))
    );
    match &tmp {
        Some(_) => println!("removing {}", dir.display()),
        None => println!("kept {}", dir.display()),
    }
    if !ok {
        println!("some checks failed: see above");
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn work_dir(dir: Option<PathBuf>) -> anyhow::Result<(Option<tempfile::TempDir>, PathBuf)> {
    match dir {
        Some(d) => {
            std::fs::create_dir_all(&d).with_context(|| format!("cannot create {}", d.display()))?;
            if std::fs::read_dir(&d)?.next().is_some() {
                bail!("{} is not empty: give a new or empty folder (the bench starts a fresh cluster)", d.display());
            }
            Ok((None, std::fs::canonicalize(&d)?))
        }
        None => {
            let tmp = tempfile::Builder::new().prefix("ferry-bench-").tempdir()?;
            let path = std::fs::canonicalize(tmp.path())?;
            Ok((Some(tmp), path))
        }
    }
}
