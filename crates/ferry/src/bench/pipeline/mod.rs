//! `ferry bench pipeline`: the whole upstream of Ferry as deployed — three separate `ferry` processes on
//! loopback (`comms serve`, `app serve`, and per round `connector sync --full`, which waits for the `imported`
//! verdict) — against the shell pipeline an integrator would write with the standard tools and two real
//! OpenSSH servers ([`shell_side`]), once with `bzip2 -9` and once with `lbzip2` on every core, taking turns
//! for `--rounds` rounds on the same ERP: the sample ERP (`--size`) or any SQLite or PostgreSQL ERP with its
//! mapping (`--erp`, `--mapping`).
//!
//! Printed: each contender's median wall time and rounds, the ratios Ferry / shell, Ferry's time per stage
//! (the Connector's progress lines as they arrive, and the servers' own timings from their logs: `batch
//! relayed secs=` at the Comms server, `import finished secs=` at the App), the shell's per stage, and CPU
//! seconds and peak RSS per process: `wait4` for the processes run to completion (a tree for the shell
//! script), /proc (`stat`, `VmHWM` reset through `clear_refs` each round) for the servers; the sshd figures are
//! the CPU of their per-connection processes. A missing tool skips its contender with a line saying what to
//! install. Benchmark figures, never a pass/fail on a ratio.

mod ferry_side;
pub(super) mod procs;
mod shell_side;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use ferry_sample::generate_sample_erp;

use super::measure::load_average;
use super::report::{int, print_grid, secs};
use ferry_side::FerrySide;
use procs::{Usage, find_program};
use shell_side::{Codec, Export, ShellSide};

#[derive(clap::Args, Debug)]
pub struct PipelineArgs {
    /// Sample ERP size: small (~150k sales lines), medium (~2.4M) or large (~12M).
    #[arg(long, default_value = "small", value_parser = ["small", "medium", "large"], conflicts_with = "erp")]
    size: String,
    /// Any ERP instead of the sample: an SQLite file (path or `sqlite:` URL) or a `postgres://` URL; the shell
    /// side exports the mapping's queries with `sqlite3` or `psql`.
    #[arg(long, requires = "mapping")]
    erp: Option<String>,
    /// The mapping.toml of `--erp`.
    #[arg(long, requires = "erp")]
    mapping: Option<PathBuf>,
    /// Rounds; the contenders take turns in each.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=50))]
    rounds: u32,
    /// Working folder, new or empty, kept afterwards (default: a temporary folder, removed).
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// The ERP both sides read.
struct Erp {
    kind: ErpKind,
    /// How it is named in the output (no password).
    shown: String,
}

enum ErpKind {
    Sqlite(PathBuf),
    Postgres(String),
}

impl Erp {
    fn parse(url: &str) -> anyhow::Result<Erp> {
        let lower = url.to_ascii_lowercase();
        if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
            return Ok(Erp { kind: ErpKind::Postgres(url.into()), shown: ferry_connector::erp::redact_url(url) });
        }
        if lower.starts_with("mysql://") || lower.starts_with("mariadb://") {
            bail!("--erp: MySQL/MariaDB ERPs are not supported yet by `bench pipeline` (SQLite and PostgreSQL are)");
        }
        if ferry_connector::erp::is_odbc_connection_string(url) {
            bail!("--erp: ODBC sources are not supported yet by `bench pipeline` (SQLite and PostgreSQL are)");
        }
        let path = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")).unwrap_or(url);
        let path = path.split('?').next().unwrap_or(path);
        let p = Path::new(path);
        if p.is_dir() {
            bail!("--erp {path}: a CSV folder is not supported yet by `bench pipeline` (SQLite and PostgreSQL are)");
        }
        let p = std::fs::canonicalize(p).with_context(|| format!("--erp {path}: no such SQLite file"))?;
        Ok(Erp { shown: p.display().to_string(), kind: ErpKind::Sqlite(p) })
    }
}

/// One contender's figures in one round.
struct Measured {
    wall: f64,
    /// Stages in the order they run (None: not seen in this round).
    stages: Vec<(&'static str, Option<f64>)>,
    /// CPU and peak RSS per process.
    procs: Vec<(String, Usage)>,
    /// CSV bytes carried, rows loaded.
    bytes: u64,
    rows: u64,
}

struct Contender {
    label: String,
    codec: Option<Codec>,
    rounds: Vec<Measured>,
    /// Not run, and why (a missing tool).
    skipped: Option<String>,
    failed: Option<String>,
}

impl Contender {
    fn new(label: String, codec: Option<Codec>, skipped: Option<String>) -> Contender {
        Contender { label, codec, rounds: Vec::new(), skipped, failed: None }
    }

    fn runs(&self) -> bool {
        self.skipped.is_none() && self.failed.is_none()
    }

    fn median_wall(&self) -> Option<f64> {
        median(self.rounds.iter().map(|m| m.wall).collect())
    }
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 })
}

pub async fn run(args: PipelineArgs) -> anyhow::Result<ExitCode> {
    let (tmp, dir) = super::work_dir(args.dir.clone())?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (erp, mapping, what) = match (&args.erp, &args.mapping) {
        (Some(url), Some(m)) => {
            let text = std::fs::read_to_string(m).with_context(|| format!("cannot read {}", m.display()))?;
            let erp = Erp::parse(url)?;
            let what = format!("--erp {} --mapping {}", erp.shown, m.display());
            (erp, text, what)
        }
        _ => {
            let size = crate::demo::parse_size(&args.size)?;
            let path = dir.join("erp.db");
            let t = std::time::Instant::now();
            let summary = generate_sample_erp(&path, size).await.context("generating the sample ERP")?;
            println!(
                "sample ERP ({}): {} rows in {:.1} s",
                args.size,
                int(summary.total_rows()),
                t.elapsed().as_secs_f64()
            );
            let erp = Erp { shown: path.display().to_string(), kind: ErpKind::Sqlite(path) };
            (erp, ferry_sample::MAPPING.to_string(), format!("--size {}", args.size))
        }
    };
    println!("ferry bench pipeline {what} --rounds {} in {}", args.rounds, dir.display());
    println!("{cores} cores, load average {}", load_average());
    let rounds = args.rounds;
    let code = tokio::task::spawn_blocking(move || bench(&dir, &erp, &mapping, rounds, cores)).await??;
    if let Some(t) = tmp {
        println!("removing {}", t.path().display());
    }
    Ok(code)
}

fn bench(dir: &Path, erp: &Erp, mapping: &str, rounds: u32, cores: usize) -> anyhow::Result<ExitCode> {
    let parsed = ferry_connector::mapping::Mapping::from_toml(mapping).context("the mapping")?;
    let exports: Vec<Export> =
        parsed.ordered().into_iter().map(|(n, f)| Export { name: n.to_string(), query: f.query.clone() }).collect();
    if exports.is_empty() {
        bail!("the mapping has no files");
    }
    let exe = std::env::current_exe().context("cannot find this program's path")?;
    let mut ferry = FerrySide::start(&exe, &dir.join("ferry"), erp, mapping).context("starting Ferry")?;
    println!("ferry: comms serve and app serve running; connector registered");

    let mut contenders = vec![Contender::new("ferry (3 processes)".into(), None, None)];
    let shell_missing = shell_side::missing(erp);
    let lbzip2 = Codec::Lbzip2(cores);
    let tool_missing = |progs: &[&str], pkg: &str| {
        shell_missing.clone().or_else(|| {
            let gone: Vec<&str> = progs.iter().copied().filter(|p| find_program(p).is_none()).collect();
            (!gone.is_empty()).then(|| format!("{} not found (apt-get install {pkg})", gone.join(", ")))
        })
    };
    contenders.push(Contender::new(lbzip2.label(), Some(lbzip2), tool_missing(&["lbzip2"], "lbzip2")));
    contenders.push(Contender::new(
        Codec::Bzip2.label(),
        Some(Codec::Bzip2),
        tool_missing(&["bzip2", "bunzip2"], "bzip2"),
    ));
    let shell = if contenders.iter().any(|c| c.codec.is_some() && c.skipped.is_none()) {
        match ShellSide::start(&dir.join("shell"), exports) {
            Ok(s) => {
                println!("shell: relay and app sshd running on 127.0.0.1");
                Some(s)
            }
            Err(e) => {
                for c in contenders.iter_mut().filter(|c| c.codec.is_some()) {
                    c.failed = Some(format!("cannot set up the shell side: {e:#}"));
                }
                None
            }
        }
    } else {
        None
    };
    for c in contenders.iter().filter(|c| c.skipped.is_some()) {
        println!("{}: skipped: {}", c.label, c.skipped.as_deref().unwrap_or_default());
    }
    if let ErpKind::Sqlite(p) = &erp.kind {
        // the first contender must not be the one that reads the ERP from disk
        let _ = std::fs::File::open(p).and_then(|mut f| std::io::copy(&mut f, &mut std::io::sink()));
    }

    let mut reference: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for round in 1..=rounds {
        for c in contenders.iter_mut().filter(|c| c.runs()) {
            let result = match (c.codec, &shell) {
                (None, _) => ferry.round().map(|r| {
                    reference = r.files;
                    r.measured
                }),
                (Some(codec), Some(sh)) => sh.round(erp, codec).and_then(|r| {
                    check_rows(&r.files, &reference)?;
                    Ok(r.measured)
                }),
                (Some(_), None) => continue,
            };
            match result {
                Ok(m) => {
                    let cpu: f64 = m.procs.iter().map(|(_, u)| u.cpu).sum();
                    println!(
                        "round {round}/{rounds}: {:<20} {:>8} s  CPU {:>7} s  {} rows",
                        c.label,
                        secs(m.wall),
                        secs(cpu),
                        int(m.rows)
                    );
                    c.rounds.push(m);
                }
                Err(e) => {
                    println!("round {round}/{rounds}: {} FAILED: {e:#}", c.label);
                    c.failed = Some(format!("{e:#}"));
                }
            }
        }
    }
    ferry.stop();
    if let Some(s) = shell {
        s.stop();
    }
    report(&contenders, rounds);
    println!("load average {}", load_average());
    let failed = contenders.iter().any(|c| c.failed.is_some());
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// The shell side must load as many rows per file as Ferry imported from the same queries.
fn check_rows(shell: &BTreeMap<String, (u64, u64)>, ferry: &BTreeMap<String, (u64, u64)>) -> anyhow::Result<()> {
    let wrong: Vec<String> = shell
        .iter()
        .filter_map(|(name, (rows, _))| {
            let want = ferry.get(name).map(|(r, _)| *r)?;
            (want != *rows).then(|| format!("{name}: {rows} rows loaded, Ferry imported {want}"))
        })
        .collect();
    if !wrong.is_empty() {
        bail!("row counts differ: {}", wrong.join("; "));
    }
    Ok(())
}

fn report(contenders: &[Contender], rounds: u32) {
    println!();
    println!("contenders (wall time from start to the data committed at the app side; medians of {rounds} round(s)):");
    let mut rows = Vec::new();
    for c in contenders {
        let Some(wall) = c.median_wall().filter(|_| c.failed.is_none()) else {
            let why = match (&c.skipped, &c.failed) {
                (Some(s), _) => format!("skipped: {s}"),
                (_, Some(f)) => format!("FAILED: {}", f.lines().next().unwrap_or_default()),
                _ => "no round".into(),
            };
            rows.push(vec![c.label.clone(), "-".into(), why]);
            continue;
        };
        let cpu = median(c.rounds.iter().map(|m| m.procs.iter().map(|(_, u)| u.cpu).sum()).collect()).unwrap_or(0.0);
        let last = c.rounds.last();
        let mb = last.map_or(0.0, |m| m.bytes as f64 / 1e6);
        let peak = c.rounds.iter().flat_map(|m| m.procs.iter().filter_map(|(_, u)| u.rss_kib)).max();
        rows.push(vec![
            c.label.clone(),
            secs(wall),
            c.rounds.iter().map(|m| secs(m.wall)).collect::<Vec<_>>().join(" / "),
            secs(cpu),
            format!("{:.3}", cpu / mb.max(1e-9)),
            format!("{mb:.1}"),
            int(last.map_or(0, |m| m.rows)),
            peak.map_or("-".into(), |k| format!("{} MiB", k / 1024)),
        ]);
    }
    print_grid(
        &["contender", "median s", "rounds s", "CPU s", "CPU s/MB", "CSV MB", "rows", "peak RSS (largest process)"],
        &[false, true, false, true, true, true, true, true],
        &rows,
    );
    let ferry = contenders.first().and_then(Contender::median_wall);
    let ratios: Vec<String> = contenders
        .iter()
        .skip(1)
        .filter(|c| c.failed.is_none())
        .filter_map(|c| Some(format!("Ferry / {}: {:.2}x", c.label, ferry? / c.median_wall()?)))
        .collect();
    if !ratios.is_empty() {
        println!("{}  (medians; below 1 means Ferry is faster)", ratios.join("   "));
    }

    for c in contenders.iter().filter(|c| !c.rounds.is_empty()) {
        println!();
        println!("{} per stage (medians):", c.label);
        let wall = c.median_wall().unwrap_or(0.0);
        let names: Vec<&str> = c.rounds[0].stages.iter().map(|(n, _)| *n).collect();
        let rows: Vec<Vec<String>> = names
            .iter()
            .map(|name| {
                let v: Vec<f64> = c
                    .rounds
                    .iter()
                    .filter_map(|m| m.stages.iter().find(|(n, _)| n == name).and_then(|(_, s)| *s))
                    .collect();
                match median(v) {
                    Some(s) => vec![name.to_string(), secs(s), format!("{:.0}%", 100.0 * s / wall.max(1e-9))],
                    None => vec![name.to_string(), "-".into(), String::new()],
                }
            })
            .collect();
        print_grid(&["stage", "s", "of wall"], &[false, true, true], &rows);
    }

    println!();
    println!("processes (CPU: median user+sys s; peak RSS: highest over the rounds):");
    let mut rows = Vec::new();
    for c in contenders.iter().filter(|c| !c.rounds.is_empty()) {
        for (i, (name, _)) in c.rounds[0].procs.iter().enumerate() {
            let cpu = median(c.rounds.iter().filter_map(|m| m.procs.get(i).map(|(_, u)| u.cpu)).collect());
            let peak = c.rounds.iter().filter_map(|m| m.procs.get(i).and_then(|(_, u)| u.rss_kib)).max();
            rows.push(vec![
                c.label.clone(),
                name.clone(),
                cpu.map_or("-".into(), secs),
                peak.map_or("-".into(), |k| format!("{} MiB", k / 1024)),
            ]);
        }
    }
    print_grid(&["contender", "process", "CPU s", "peak RSS"], &[false, false, true, true], &rows);
}
