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

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{Context, bail};
use ferry_connector::agent::Connector;
use ferry_sample::{SampleSize, generate_sample_erp};
use ferry_io::digest::{Digester, Digests, HashingWriter};
use ferry_proto::api::BatchState;
use ferry_proto::manifest::{Manifest, ManifestFile};
use ferry_proto::spec;
use tokio::io::AsyncWriteExt;

use crate::cluster::Cluster;

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
}

pub async fn run(cmd: BenchCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        BenchCmd::Upstream { size, dir, runs } => upstream(&size, dir, runs).await,
    }
}

const TENANT: &str = "bench";
/// Remote folder of the upload comparison, under the tenant's SFTP root at the Comms server.
const REMOTE_DIR: &str = "/bench";

async fn upstream(size_name: &str, dir: Option<PathBuf>, runs: u32) -> anyhow::Result<ExitCode> {
    let size = crate::demo::parse_size(size_name)?;
    let upload_target: u64 = match size {
        SampleSize::Small => 64_000_000,
        SampleSize::Medium => 256_000_000,
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

/// What every stage needs while the cluster runs.
struct Bench<'a> {
    cluster: &'a Cluster,
    /// The `bench/` folder.
    bench: &'a Path,
    runs: usize,
}

impl Bench<'_> {
    /// Every stage and comparison; returns the table and whether every check passed.
    async fn all(&self, erp: &Path, upload_target: u64, rss: &mut PeakRss) -> anyhow::Result<(Vec<Line>, bool)> {
        let token = self.cluster.add_tenant(TENANT).await?;
        let connector = self.cluster.connector(TENANT, erp, &token).await?;
        println!(
            "cluster: comms sftp {}, app sftp {}; tenant {TENANT}, connector registered",
            self.cluster.comms.ssh_addr, self.cluster.app.ssh_addr
        );
        let mut lines = Vec::new();

        // 1. extract + CSV + hash + compress, pipelined: one stage.
        rss.start();
        let clock = Clock::start();
        let manifest = connector.extract_to_spool(&|line: &str| println!("      {line}")).await.context("extract")?;
        let csv_bytes: u64 = manifest.files.iter().map(|f| f.bytes).sum();
        let bz_bytes: u64 = manifest.files.iter().map(|f| f.compressed_bytes).sum();
        let rows: u64 = manifest.files.iter().map(|f| f.rows).sum();
        let extract = clock.ours(csv_bytes);
        let extract_rss = rss.peak();
        println!(
            "[extract+csv+hash+bz2] {}, {} csv ({}) -> {} bz2, {} rows; peak RSS {}",
            extract.time(),
            mb(csv_bytes),
            extract.rate(),
            mb(bz_bytes),
            int(rows),
            show(extract_rss)
        );
        let all_csv = format!("{} files, {} csv", manifest.files.len(), mb(csv_bytes));
        let note = format!("{} rows -> {} bz2", int(rows), mb(bz_bytes));
        lines.push(Line::ours("extract+csv+hash+bz2", all_csv.clone(), extract, extract_rss, note));

        // `send` removes the spool: keep a plain copy of the largest standard file first.
        let big = manifest
            .files
            .iter()
            .filter(|f| spec::file_spec(&f.name).is_some())
            .max_by_key(|f| f.bytes)
            .context("the batch holds no standard file")?
            .clone();
        let plain = self.bench.join(&big.name);
        let (src, dst, f) =
            (connector.spool_dir(&manifest.batch_id).join(big.compressed_name()), plain.clone(), big.clone());
        tokio::task::spawn_blocking(move || unpack(&src, &dst, &f)).await??;
        println!(
            "      bench copy: {} ({}, {} rows, size and MD5 as in the manifest)",
            plain.display(),
            mb(big.bytes),
            int(big.rows)
        );

        // 2. upload and 3. relay + verify + import: one `send`, timed inside.
        let sent = send(&connector, &manifest, rss).await?;
        let imported = self.imported_rows(&manifest).await?;
        let mut ok = imported == rows;
        println!(
            "[upload] {}, {} bz2 ({}); peak RSS {}",
            sent.upload.time(),
            mb(sent.upload.bytes),
            sent.upload.rate(),
            show(sent.upload_rss)
        );
        println!(
            "[relay+verify+import] {}, {} csv ({}), {} rows/s; peak RSS {}; rows in the instance: {} {}",
            sent.relay.time(),
            mb(sent.relay.bytes),
            sent.relay.rate(),
            int(per_sec(rows, sent.relay.secs)),
            show(sent.relay_rss),
            int(imported),
            if ok { "(all)" } else { "(MISMATCH)" }
        );
        let bz = format!("{} bz2", mb(sent.upload.bytes));
        lines.push(Line::ours("upload batch (sftp)", bz, sent.upload, sent.upload_rss, String::new()));

        // Ours is the relay+verify+import of every file; sqlite3 imports the largest file as text.
        let (sqlite, sqlite_ok) = self.sqlite_import(&big).await;
        let note = match &sqlite {
            Theirs::Ran(t) => format!(
                "{} rows/s, all files; sqlite3 {} rows/s, {} only, as text",
                int(per_sec(rows, sent.relay.secs)),
                int(per_sec(big.rows, t.secs)),
                big.name
            ),
            _ => format!("{} rows/s", int(per_sec(rows, sent.relay.secs))),
        };
        lines.push(
            Line::ours("relay+verify+import", all_csv, sent.relay, sent.relay_rss, note)
                .with_tool("sqlite3 .import", sqlite),
        );
        ok &= sqlite_ok;

        // Compression, digests and upload, ours against the tools on the same file.
        for (more, more_ok) in [
            self.compression(&plain, rss).await?,
            self.digests(&plain, &big, rss).await?,
            self.upload(&connector, &plain, upload_target, rss).await?,
        ] {
            lines.extend(more);
            ok &= more_ok;
        }
        Ok((lines, ok))
    }

    /// Rows the tenant's instance holds, over the manifest's standard files.
    async fn imported_rows(&self, manifest: &Manifest) -> anyhow::Result<u64> {
        let inst = self.cluster.app.state.instance(TENANT).await?.context("the tenant's instance is missing")?;
        let mut n = 0;
        for f in &manifest.files {
            if let Some(s) = spec::file_spec(&f.name) {
                n += inst.0.count_rows(s.table).await?;
            }
        }
        Ok(n)
    }

    /// `sqlite3 import.db` with `.mode csv` and `.import` of `f` into a table of text columns created first (so
    /// the first line is data, not a header); every run must import every row.
    async fn sqlite_import(&self, f: &ManifestFile) -> (Theirs, bool) {
        let columns = spec::file_spec(&f.name).map_or(1, |s| s.columns.len());
        let cols: Vec<String> = (1..=columns).map(|i| format!("c{i} TEXT")).collect();
        let script =
            format!("CREATE TABLE t({});\n.mode csv\n.import {} t\nSELECT count(*) FROM t;\n", cols.join(", "), f.name);
        let mut best = Theirs::NoTool;
        for _ in 0..self.runs {
            let _ = std::fs::remove_file(self.bench.join("import.db"));
            let (theirs, stdout) =
                tool_output("sqlite3", &["-bail", "import.db"], self.bench, Some(&script), f.bytes).await;
            let theirs = match (theirs, stdout.trim().parse::<u64>().ok()) {
                (Theirs::Ran(t), Some(n)) if n == f.rows => Theirs::Ran(t),
                (Theirs::Ran(_), n) => Theirs::Failed(format!("imported {n:?} rows of {}", f.rows)),
                (other, _) => other,
            };
            best = best.keep_best(theirs);
        }
        let rows = match &best {
            Theirs::Ran(t) => format!(", {} rows/s", int(per_sec(f.rows, t.secs))),
            _ => String::new(),
        };
        println!("[import] sqlite3 .import {}: {}{rows}", f.name, best.short());
        let ok = !matches!(best, Theirs::Failed(_));
        (best, ok)
    }

    /// `ferry_io::bz::compress_file` (all cores, level 9) vs `bzip2`, `lbzip2`, `pbzip2`.
    async fn compression(&self, plain: &Path, rss: &mut PeakRss) -> anyhow::Result<(Vec<Line>, bool)> {
        const TOOLS: [(&str, &[&str]); 3] =
            [("bzip2", &["-9", "-k", "-c"]), ("lbzip2", &["-9", "-c"]), ("pbzip2", &["-9", "-c"])];
        let size = std::fs::metadata(plain)?.len();
        let name = file_name(plain);
        let ours_out = self.bench.join("ferry.bz2");
        let mut ours = None;
        let mut theirs: Vec<Theirs> = TOOLS.iter().map(|_| Theirs::NoTool).collect();
        rss.start();
        for _ in 0..self.runs {
            let (src, dst) = (plain.to_path_buf(), ours_out.clone());
            let clock = Clock::start();
            tokio::task::spawn_blocking(move || ferry_io::bz::compress_file(&src, &dst, 9, 0)).await??;
            ours = fastest(ours, clock.ours(size));
            for ((prog, args), best) in TOOLS.iter().zip(theirs.iter_mut()) {
                let mut argv = args.to_vec();
                argv.push(&name);
                let out = self.bench.join(format!("{prog}.bz2"));
                let run = tool(prog, &argv, self.bench, Some(&out), size).await;
                *best = std::mem::replace(best, Theirs::NoTool).keep_best(run);
            }
        }
        let ours = ours.context("no run")?;
        let ours_rss = rss.peak();
        let our_ratio = ratio(size, std::fs::metadata(&ours_out)?.len());
        println!(
            "[compress -9] ours {} ({}, ratio {our_ratio:.2}, incl. fsync); peak RSS {}",
            ours.time(),
            ours.rate(),
            show(ours_rss)
        );
        let mut notes = vec![format!("ratio {our_ratio:.2}")];
        let mut lines = Vec::new();
        let mut ok = true;
        for ((prog, args), best) in TOOLS.iter().zip(theirs) {
            let label = format!("{prog} {}", args.join(" "));
            let mut extra = String::new();
            if matches!(best, Theirs::Ran(_)) {
                let r = ratio(size, std::fs::metadata(self.bench.join(format!("{prog}.bz2")))?.len());
                notes.push(format!("{prog} {r:.2}"));
                extra = format!(", ratio {r:.2}");
            }
            ok &= !matches!(best, Theirs::Failed(_));
            println!("      {label}: {}{extra}", best.short());
            lines.push(Line::tool(&label, best));
        }
        if let Some(first) = lines.first_mut() {
            first.set_ours("compress bzip2 -9", format!("{name} {}", mb(size)), ours, ours_rss, notes.join(", "));
        }
        Ok((lines, ok))
    }

    /// Our MD5+SHA-256 in one streamed pass vs `md5sum` and `sha256sum` (a pass each); the digests must agree
    /// with each other and with the manifest.
    async fn digests(&self, plain: &Path, f: &ManifestFile, rss: &mut PeakRss) -> anyhow::Result<(Vec<Line>, bool)> {
        let name = file_name(plain);
        let mut ours = None;
        let mut digests = None;
        let mut md5sum = Theirs::NoTool;
        let mut sha256sum = Theirs::NoTool;
        let mut agree = true;
        rss.start();
        for _ in 0..self.runs {
            let src = plain.to_path_buf();
            let clock = Clock::start();
            let d = tokio::task::spawn_blocking(move || digest_file(&src)).await??;
            ours = fastest(ours, clock.ours(d.bytes));
            for (prog, want, best) in [("md5sum", &d.md5, &mut md5sum), ("sha256sum", &d.sha256, &mut sha256sum)] {
                let (run, stdout) = tool_output(prog, &[&name], self.bench, None, d.bytes).await;
                if matches!(run, Theirs::Ran(_)) {
                    agree &= stdout.split_whitespace().next() == Some(want.as_str());
                }
                *best = std::mem::replace(best, Theirs::NoTool).keep_best(run);
            }
            digests = Some(d);
        }
        let (ours, d) = ours.zip(digests).context("no run")?;
        let ours_rss = rss.peak();
        agree &= d.md5 == f.md5 && d.sha256 == f.sha256;
        let verdict = if agree { "digests agree, = manifest" } else { "DIGESTS DIFFER" };
        println!("[md5+sha256] ours {} ({}); peak RSS {}; {verdict}", ours.time(), ours.rate(), show(ours_rss));
        let mut ok = agree;
        let total = match (&md5sum, &sha256sum) {
            (Theirs::Ran(a), Theirs::Ran(b)) => {
                let cpu = a.cpu.zip(b.cpu).map(|(a, b)| a + b);
                Some(Timed { secs: a.secs + b.secs, cpu, bytes: d.bytes })
            }
            _ => None,
        };
        let mut lines = Vec::new();
        for (prog, best) in [("md5sum", md5sum), ("sha256sum", sha256sum)] {
            ok &= !matches!(best, Theirs::Failed(_));
            println!("      {prog}: {}", best.short());
            lines.push(Line::tool(prog, best));
        }
        if let Some(t) = total {
            lines.push(Line::tool("md5sum + sha256sum", Theirs::Ran(t)));
        }
        if let Some(first) = lines.first_mut() {
            first.set_ours("md5+sha256 (1 pass)", format!("{name} {}", mb(d.bytes)), ours, ours_rss, verdict.into());
        }
        Ok((lines, ok))
    }

    /// Our SFTP client vs OpenSSH `sftp -b`: the same file to the same Comms server with the same key, each
    /// timed from connect to disconnect, CPU of client and server together. OpenSSH is given our cipher
    /// (aes256-gcm) to compare like for like.
    /// Every upload must arrive whole; it is removed before the next run.
    async fn upload(
        &self,
        connector: &Connector,
        plain: &Path,
        target: u64,
        rss: &mut PeakRss,
    ) -> anyhow::Result<(Vec<Line>, bool)> {
        let file = self.bench.join("upload.bin");
        let (src, dst) = (plain.to_path_buf(), file.clone());
        let size = tokio::task::spawn_blocking(move || repeat_into(&src, &dst, target)).await??;
        let ours_remote = format!("{REMOTE_DIR}/ferry.bin");
        let openssh_remote = format!("{REMOTE_DIR}/openssh.bin");
        let check = connector.sftp().await?;
        check.mkdir_all(REMOTE_DIR).await?;

        let addr = self.cluster.comms.ssh_addr;
        std::fs::write(self.bench.join("sftp.batch"), format!("put upload.bin {openssh_remote}\n"))?;
        let (port, key) = (addr.port().to_string(), connector.cfg.key_path().display().to_string());
        let dest = format!("{}@{}", connector.registration()?.tenant, addr.ip());
        #[rustfmt::skip]
        let args = [
            "-b", "sftp.batch", "-i", &key, "-P", &port, "-c", "aes256-gcm@openssh.com",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
            "-o", "IdentitiesOnly=yes", "-o", "LogLevel=ERROR", &dest,
        ];

        let mut ours = None;
        let mut transfer = None;
        let mut openssh = Theirs::NoTool;
        let mut ok = true;
        rss.start();
        for _ in 0..self.runs {
            let clock = Clock::start();
            let sftp = connector.sftp().await?;
            let tx = Clock::start();
            let sent = sftp.upload_file(&file, &ours_remote).await.context("uploading the test file")?;
            transfer = fastest(transfer, tx.ours(sent));
            sftp.close().await?;
            ours = fastest(ours, clock.ours(sent));
            ok &= arrived(&check, "ferry", &ours_remote, size).await?;

            let server = Clock::start();
            let mut run = tool("sftp", &args, self.bench, None, size).await;
            if let Theirs::Ran(t) = &mut run {
                // Like ours, count the server's CPU (in this process) with the client's.
                t.cpu = t.cpu.zip(server.ours(0).cpu).map(|(client, server)| client + server);
                ok &= arrived(&check, "openssh", &openssh_remote, size).await?;
            }
            openssh = openssh.keep_best(run);
        }
        check.close().await?;
        let (ours, transfer) = ours.zip(transfer).context("no run")?;
        let ours_rss = rss.peak();
        ok &= !matches!(openssh, Theirs::Failed(_));
        println!(
            "[upload sftp] ours {} ({}; transfer alone {}); peak RSS {} (client and server)",
            ours.time(),
            ours.rate(),
            transfer.rate(),
            show(ours_rss)
        );
        println!("      OpenSSH sftp -b: {}", openssh.short());
        let note = format!("connect..disconnect, CPU of client+server; ours transfer alone {}", transfer.rate());
        let line = Line::ours("upload sftp", format!("{} test file", mb(size)), ours, ours_rss, note)
            .with_tool("sftp -b (OpenSSH, aes256-gcm)", openssh);
        Ok((vec![line], ok))
    }
}

/// The figures of one `send`.
struct Sent {
    upload: Timed,
    upload_rss: Option<RssSample>,
    relay: Timed,
    relay_rss: Option<RssSample>,
}

/// The upload's CPU time and peak RSS when it was done, and the RSS the relay starts from.
struct UploadDone {
    cpu: Option<f64>,
    rss: Option<RssSample>,
    relay_base: Option<u64>,
}

/// `send` (upload, complete, wait for the verdict), split into its two timed stages with a peak RSS each.
///
/// `SyncReport.timings.relay_import` polls for the verdict with a backoff of up to 2 s; the Comms server stamps
/// the verdict (`updated_at`), so relay+verify+import is measured as verdict time - send start - upload time.
async fn send(connector: &Connector, manifest: &Manifest, rss: &mut PeakRss) -> anyhow::Result<Sent> {
    // The upload's CPU time and peak RSS are taken, and the peak reset, at the progress line `upload` prints
    // once all is sent.
    let split: Mutex<Option<UploadDone>> = Mutex::new(None);
    let base = rss.start();
    let clock = Clock::start();
    let progress = |line: &str| {
        println!("      {line}");
        if line.starts_with("uploaded ")
            && let Ok(mut slot) = split.lock()
            && slot.is_none()
        {
            *slot =
                Some(UploadDone { cpu: clock.ours(0).cpu, rss: RssSample::read(base), relay_base: PeakRss::reset() });
        }
    };
    let started = chrono::Utc::now();
    let report = connector.send(manifest, &progress).await.context("send")?;
    let s = &report.status;
    if s.state != BatchState::Imported {
        bail!("batch {} {}: {}", s.batch_id, s.state.as_str(), s.detail.as_deref().unwrap_or(""));
    }
    let mut upload = Timed { secs: report.timings.upload.as_secs_f64(), cpu: None, bytes: report.bytes_sent };
    let polled = report.timings.relay_import.as_secs_f64();
    let stamped = (s.updated_at - started).to_std().map(|d| d.as_secs_f64() - upload.secs);
    let secs = match stamped {
        Ok(secs) if secs > 0.0 && secs <= polled + 0.5 => {
            println!("      relay+verify+import {secs:.2} s by the verdict's timestamp ({polled:.2} s by polling)");
            secs
        }
        _ => polled,
    };
    let total_cpu = clock.ours(0).cpu;
    let mut relay = Timed { secs, cpu: total_cpu, bytes: manifest.files.iter().map(|f| f.bytes).sum() };
    let (upload_rss, relay_rss) = match split.into_inner().ok().flatten() {
        Some(done) => {
            upload.cpu = done.cpu;
            relay.cpu = total_cpu.zip(done.cpu).map(|(total, up)| total - up);
            rss.note(done.rss);
            (done.rss, rss.peak_since(done.relay_base))
        }
        // No progress line to split on: the relay's figures cover the whole send.
        None => {
            let whole = rss.peak();
            (whole, whole)
        }
    };
    Ok(Sent { upload, upload_rss, relay, relay_rss })
}

/// Decompresses the spooled `src` into `dst`, checking size and MD5 against the manifest entry.
fn unpack(src: &Path, dst: &Path, f: &ManifestFile) -> anyhow::Result<()> {
    let file = File::open(src).with_context(|| format!("cannot open {}", src.display()))?;
    let mut input = ferry_io::bz::capped_decoder(file, f.bytes);
    let mut out = HashingWriter::new(io::BufWriter::new(File::create(dst)?));
    io::copy(&mut input, &mut out).with_context(|| format!("decompressing {}", src.display()))?;
    let (mut w, d) = out.finish();
    w.flush()?;
    if d.bytes != f.bytes || d.md5 != f.md5 {
        bail!(
            "{}: {} bytes, MD5 {}; the manifest says {} bytes, MD5 {}",
            src.display(),
            d.bytes,
            d.md5,
            f.bytes,
            f.md5
        );
    }
    Ok(())
}

/// MD5 and SHA-256 of a file in one pass, 1 MiB at a time.
fn digest_file(path: &Path) -> io::Result<Digests> {
    let mut file = File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut d = Digester::new();
    loop {
        match file.read(&mut buf)? {
            0 => return Ok(d.finish()),
            n => d.update(&buf[..n]),
        }
    }
}

/// Writes `src` again and again into `dst` up to exactly `target` bytes; streamed, synced.
fn repeat_into(src: &Path, dst: &Path, target: u64) -> io::Result<u64> {
    let mut out = io::BufWriter::new(File::create(dst)?);
    let mut written = 0;
    while written < target {
        let n = io::copy(&mut File::open(src)?.take(target - written), &mut out)?;
        if n == 0 {
            break;
        }
        written += n;
    }
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok(written)
}

/// Whether `remote` holds `size` bytes at the server; removes it either way.
async fn arrived(sftp: &ferry_sftp::client::SftpClient, who: &str, remote: &str, size: u64) -> anyhow::Result<bool> {
    let got = sftp.stat_size(remote).await?;
    if got.is_some() {
        sftp.remove(remote).await?;
    }
    if got != Some(size) {
        println!("      {who}: the server holds {got:?} bytes of {size} in {remote}");
    }
    Ok(got == Some(size))
}

// ---- external tools ----

/// `prog`'s path on `PATH`, as `which` finds it.
fn which(prog: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(prog)).find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    }
    #[cfg(not(unix))]
    {
        p.is_file()
    }
}

/// Runs `prog` in `cwd` with its standard output into `out` (or discarded), timed from spawn to exit; `bytes` is
/// the size of the data it works on.
async fn tool(prog: &str, args: &[&str], cwd: &Path, out: Option<&Path>, bytes: u64) -> Theirs {
    match run_tool(prog, args, cwd, None, out, bytes).await {
        Ok(Some((t, _))) => Theirs::Ran(t),
        Ok(None) => Theirs::Missing,
        Err(e) => Theirs::Failed(format!("{e:#}")),
    }
}

/// [`tool`] with a script on its standard input, keeping its standard output.
async fn tool_output(prog: &str, args: &[&str], cwd: &Path, stdin: Option<&str>, bytes: u64) -> (Theirs, String) {
    match run_tool(prog, args, cwd, stdin, None, bytes).await {
        Ok(Some((t, stdout))) => (Theirs::Ran(t), stdout),
        Ok(None) => (Theirs::Missing, String::new()),
        Err(e) => (Theirs::Failed(format!("{e:#}")), String::new()),
    }
}

/// `None` if `prog` is not installed; an error if it fails.
async fn run_tool(
    prog: &str,
    args: &[&str],
    cwd: &Path,
    stdin: Option<&str>,
    out: Option<&Path>,
    bytes: u64,
) -> anyhow::Result<Option<(Timed, String)>> {
    let Some(path) = which(prog) else { return Ok(None) };
    let mut cmd = tokio::process::Command::new(&path);
    cmd.args(args)
        .current_dir(cwd)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(match out {
            Some(p) => Stdio::from(File::create(p)?),
            None => Stdio::piped(),
        })
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let clock = Clock::start();
    let mut child = cmd.spawn().with_context(|| format!("cannot start {}", path.display()))?;
    if let (Some(script), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(script.as_bytes()).await?;
    }
    let output = child.wait_with_output().await?;
    let timed = clock.children(bytes);
    if !output.status.success() {
        bail!("{prog} {}: {}", output.status, String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(Some((timed, String::from_utf8_lossy(&output.stdout).into_owned())))
}

// ---- measurements and the table ----

/// A measured run: wall seconds, CPU seconds (ours: every thread of this process; a tool: its process tree) and
/// the bytes it handled.
#[derive(Debug, Clone, Copy)]
struct Timed {
    secs: f64,
    cpu: Option<f64>,
    bytes: u64,
}

impl Timed {
    /// `1.23 s (CPU 2.10 s)`.
    fn time(&self) -> String {
        match self.cpu {
            Some(cpu) => format!("{} s (CPU {} s)", secs(self.secs), secs(cpu)),
            None => format!("{} s", secs(self.secs)),
        }
    }

    fn mb_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.secs.max(1e-9)
    }

    fn rate(&self) -> String {
        format!("{:.1} MB/s", self.mb_s())
    }
}

/// A wall clock, and this process's CPU times when it started.
struct Clock {
    wall: Instant,
    cpu: Option<CpuTimes>,
}

impl Clock {
    fn start() -> Clock {
        Clock { wall: Instant::now(), cpu: CpuTimes::read() }
    }

    /// Work done in this process (every thread, the in-process servers included).
    fn ours(&self, bytes: u64) -> Timed {
        let cpu = self.cpu.zip(CpuTimes::read()).map(|(a, b)| b.own - a.own);
        Timed { secs: self.wall.elapsed().as_secs_f64(), cpu, bytes }
    }

    /// Work done by child processes that exited and were waited for since the start.
    fn children(&self, bytes: u64) -> Timed {
        let cpu = self.cpu.zip(CpuTimes::read()).map(|(a, b)| b.children - a.children);
        Timed { secs: self.wall.elapsed().as_secs_f64(), cpu, bytes }
    }
}

/// User + system CPU seconds of this process and of its waited-for children, from /proc/self/stat.
#[derive(Debug, Clone, Copy)]
struct CpuTimes {
    own: f64,
    children: f64,
}

impl CpuTimes {
    fn read() -> Option<CpuTimes> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // After "pid (comm) " come the fields from `state` (3) on: utime is field 14, cstime field 17.
        let fields: Vec<&str> = stat.get(stat.rfind(')')? + 2..)?.split_whitespace().collect();
        // In ticks of USER_HZ, which is 100 on Linux.
        let ticks = |field: usize| fields.get(field - 3)?.parse::<f64>().ok().map(|t| t / 100.0);
        Some(CpuTimes { own: ticks(14)? + ticks(15)?, children: ticks(16)? + ticks(17)? })
    }
}

/// The faster of `best` and `run`.
fn fastest(best: Option<Timed>, run: Timed) -> Option<Timed> {
    Some(match best {
        Some(b) if b.secs <= run.secs => b,
        _ => run,
    })
}

/// A tool's side of a comparison.
#[derive(Debug)]
enum Theirs {
    /// No tool for this stage (or not run yet).
    NoTool,
    Missing,
    Failed(String),
    Ran(Timed),
}

impl Theirs {
    /// Folds one more run in: the fastest run wins, a failure sticks.
    fn keep_best(self, run: Theirs) -> Theirs {
        match (self, run) {
            (Theirs::Failed(e), _) | (_, Theirs::Failed(e)) => Theirs::Failed(e),
            (Theirs::Ran(a), Theirs::Ran(b)) => Theirs::Ran(if a.secs <= b.secs { a } else { b }),
            (Theirs::NoTool, run) => run,
            (kept, _) => kept,
        }
    }

    fn short(&self) -> String {
        match self {
            Theirs::NoTool => String::new(),
            Theirs::Missing => "not installed".into(),
            Theirs::Failed(e) => format!("failed: {e}"),
            Theirs::Ran(t) => format!("{} ({})", t.time(), t.rate()),
        }
    }
}

/// One row of the final table: our figure and one tool's, on the same data (the notes say when not).
struct Line {
    stage: String,
    data: String,
    ours: Option<Timed>,
    rss: Option<RssSample>,
    tool: String,
    theirs: Theirs,
    note: String,
}

impl Line {
    fn ours(stage: &str, data: String, t: Timed, rss: Option<RssSample>, note: String) -> Line {
        Line { stage: stage.into(), data, ours: Some(t), rss, tool: "-".into(), theirs: Theirs::NoTool, note }
    }

    fn tool(tool: &str, theirs: Theirs) -> Line {
        Line {
            stage: String::new(),
            data: String::new(),
            ours: None,
            rss: None,
            tool: tool.into(),
            theirs,
            note: String::new(),
        }
    }

    fn with_tool(self, tool: &str, theirs: Theirs) -> Line {
        Line { tool: tool.into(), theirs, ..self }
    }

    /// Puts our figure on a tool's line.
    fn set_ours(&mut self, stage: &str, data: String, t: Timed, rss: Option<RssSample>, note: String) {
        (self.stage, self.data, self.ours, self.rss, self.note) = (stage.into(), data, Some(t), rss, note);
    }
}

fn print_table(lines: &[Line]) {
    const N: usize = 11;
    const HEAD: [&str; N] = [
        "stage",
        "data",
        "ours s",
        "ours CPU s",
        "ours MB/s",
        "peak RSS (+stage)",
        "tool",
        "tool s",
        "tool CPU s",
        "tool MB/s",
        "notes",
    ];
    const RIGHT: [bool; N] = [false, false, true, true, true, true, false, true, true, true, false];
    let figures = |t: Option<&Timed>| match t {
        Some(t) => [secs(t.secs), t.cpu.map(secs).unwrap_or_default(), format!("{:.1}", t.mb_s())],
        None => Default::default(),
    };
    let rows: Vec<[String; N]> = lines
        .iter()
        .map(|l| {
            let [os, oc, or] = figures(l.ours.as_ref());
            let [ts, tc, tr] = match &l.theirs {
                Theirs::Ran(t) => figures(Some(t)),
                Theirs::NoTool => Default::default(),
                other => [other.short(), String::new(), String::new()],
            };
            let rss = l.rss.map(|r| show(Some(r))).unwrap_or_default();
            [l.stage.clone(), l.data.clone(), os, oc, or, rss, l.tool.clone(), ts, tc, tr, l.note.clone()]
        })
        .collect();
    let mut width = HEAD.map(str::len);
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let fmt = |cells: [&str; N]| {
        let parts: Vec<String> = cells
            .iter()
            .zip(width)
            .zip(RIGHT)
            .map(|((c, w), right)| if right { format!("{c:>w$}") } else { format!("{c:<w$}") })
            .collect();
        parts.join(" | ").trim_end().to_string()
    };
    println!("{}", fmt(HEAD));
    println!("{}", width.map(|w| "-".repeat(w)).join("-|-"));
    for r in &rows {
        println!("{}", fmt(r.each_ref().map(String::as_str)));
    }
}

/// A stage's peak RSS and the RSS it started from (KiB).
#[derive(Debug, Clone, Copy)]
struct RssSample {
    peak: u64,
    base: Option<u64>,
}

impl RssSample {
    fn read(base: Option<u64>) -> Option<RssSample> {
        Some(RssSample { peak: proc_status_kib("VmHWM:")?, base })
    }
}

/// Peak resident set size per stage: `VmHWM`, reset before each stage when the kernel lets us.
struct PeakRss {
    resets: bool,
    /// RSS when the current stage started (KiB).
    base: Option<u64>,
    /// Highest peak seen over all stages (KiB).
    max_kib: Option<u64>,
}

impl PeakRss {
    fn new() -> Self {
        PeakRss { resets: Self::reset().is_some(), base: None, max_kib: None }
    }

    /// Resets the kernel's peak RSS of this process to its current RSS (Linux >= 4.0); returns that RSS.
    fn reset() -> Option<u64> {
        std::fs::write("/proc/self/clear_refs", "5").ok()?;
        proc_status_kib("VmRSS:")
    }

    /// A stage starts; returns the RSS it starts from.
    fn start(&mut self) -> Option<u64> {
        self.base = if self.resets { Self::reset() } else { proc_status_kib("VmRSS:") };
        self.base
    }

    /// The peak since [`start`](Self::start).
    fn peak(&mut self) -> Option<RssSample> {
        self.peak_since(self.base)
    }

    fn peak_since(&mut self, base: Option<u64>) -> Option<RssSample> {
        let s = RssSample::read(base);
        self.note(s);
        s
    }

    /// Counts a peak read elsewhere into the overall maximum.
    fn note(&mut self, s: Option<RssSample>) {
        self.max_kib = self.max_kib.max(s.map(|s| s.peak));
    }
}

/// A `kB` field of /proc/self/status (`VmHWM:`, `VmRSS:`).
fn proc_status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix(field))?;
    line.trim().trim_end_matches("kB").trim().parse().ok()
}

/// `123 MiB (+45)`: the peak, and how far it rose over the stage's starting RSS.
fn show(s: Option<RssSample>) -> String {
    match s {
        None => "?".into(),
        Some(RssSample { peak, base: None }) => format!("{} MiB", peak / 1024),
        Some(RssSample { peak, base: Some(b) }) => format!("{} MiB (+{})", peak / 1024, peak.saturating_sub(b) / 1024),
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

// ---- small helpers ----

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

/// Seconds with three decimals below 1 s, two above.
fn secs(s: f64) -> String {
    if s < 1.0 { format!("{s:.3}") } else { format!("{s:.2}") }
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

fn ratio(plain: u64, compressed: u64) -> f64 {
    plain as f64 / compressed.max(1) as f64
}

fn per_sec(n: u64, secs: f64) -> u64 {
    (n as f64 / secs.max(1e-9)) as u64
}

/// `1234567` -> `1,234,567`.
fn int(n: u64) -> String {
    ferry_connector::check::thousands(n)
}
