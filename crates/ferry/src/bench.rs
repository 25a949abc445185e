//! `ferry bench upstream`: generate a sample ERP, push it through the real pipeline one stage at a time
//! (extract+CSV+hash+bzip2, SFTP upload, relay+verify+import) and print per stage seconds, MB/s, rows/s and peak
//! RSS — then run the standard tools on the same data in the same run, where they are installed (`bzip2`,
//! `lbzip2`, `pbzip2`, `md5sum`, `sha256sum`, OpenSSH `sftp -b`, `sqlite3 .import`), and print ours beside
//! theirs. A tool, not a test.
//!
//! Everything runs in this process on loopback ([`crate::cluster`]). The working folder holds the ERP, the
//! servers' data and `bench/`: a plain copy of the batch's largest CSV (decompressed from the spool before
//! `send` removes it, MD5 checked against the manifest), the tools' outputs and the upload test file (that CSV
//! repeated up to 64 MB, or 256 MB for `--size medium`). Peak RSS is `VmHWM`, reset before each stage through
//! `/proc/self/clear_refs` where the kernel allows it (else it is the peak since the start); it includes the
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
use ferry_connector::sample::{SampleSize, generate_sample_erp};
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
        /// Sample ERP size: small (~200k sales lines; 64 MB upload test) or medium (~2M; 256 MB).
        #[arg(long, default_value = "small", value_parser = ["small", "medium"])]
        size: String,
        /// Working folder, new or empty, kept afterwards (default: a temporary folder, removed).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

pub async fn run(cmd: BenchCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        BenchCmd::Upstream { size, dir } => upstream(&size, dir).await,
    }
}

const TENANT: &str = "bench";
/// Remote folder of the upload comparison, under the tenant's SFTP root at the Comms server.
const REMOTE_DIR: &str = "/bench";

async fn upstream(size_name: &str, dir: Option<PathBuf>) -> anyhow::Result<ExitCode> {
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
    println!("ferry bench upstream --size {size_name} in {} ({cores} cores)", dir.display());
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
        mib(rss.peak())
    );

    let cluster = Cluster::start(&dir).await?;
    let result = with_cluster(&cluster, &erp, &bench, upload_target, &mut rss).await;
    cluster.stop().await;
    let (lines, ok) = result?;

    println!();
    print_table(&lines);
    println!();
    println!("process peak RSS {} (max over stages; includes the in-process Comms and App servers)", mib(rss.max_kib));
    match &tmp {
        Some(_) => println!("removing {}", dir.display()),
        None => println!("kept {}", dir.display()),
    }
    if !ok {
        println!("some checks failed: see above");
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// The bench proper, while the cluster runs; returns the table and whether every check passed.
async fn with_cluster(
    cluster: &Cluster,
    erp: &Path,
    bench: &Path,
    upload_target: u64,
    rss: &mut PeakRss,
) -> anyhow::Result<(Vec<Line>, bool)> {
    let token = cluster.add_tenant(TENANT).await?;
    let connector = cluster.connector(TENANT, erp, &token).await?;
    println!(
        "cluster: comms sftp {}, app sftp {}; tenant {TENANT}, connector registered",
        cluster.comms.ssh_addr, cluster.app.ssh_addr
    );
    let mut lines = Vec::new();
    let mut ok = true;

    // 1. extract + CSV + hash + compress, pipelined: one stage.
    rss.start();
    let t = Instant::now();
    let manifest = connector.extract_to_spool(&|line: &str| println!("      {line}")).await.context("extract")?;
    let secs = t.elapsed().as_secs_f64();
    let csv_bytes: u64 = manifest.files.iter().map(|f| f.bytes).sum();
    let bz_bytes: u64 = manifest.files.iter().map(|f| f.compressed_bytes).sum();
    let rows: u64 = manifest.files.iter().map(|f| f.rows).sum();
    let extract = Timed { secs, bytes: csv_bytes };
    let extract_rss = rss.peak();
    println!(
        "[extract+csv+hash+bz2] {:.2} s, {} csv ({}) -> {} bz2, {} rows; peak RSS {}",
        secs,
        mb(csv_bytes),
        extract.rate(),
        mb(bz_bytes),
        int(rows),
        mib(extract_rss)
    );
    lines.push(Line::ours(
        "extract+csv+hash+bz2",
        format!("{} files, {} csv", manifest.files.len(), mb(csv_bytes)),
        extract,
        extract_rss,
        format!("{} rows -> {} bz2", int(rows), mb(bz_bytes)),
    ));

    // The spool is removed by `send`: keep a plain copy of the largest standard file first.
    let big = manifest
        .files
        .iter()
        .filter(|f| spec::file_spec(&f.name).is_some())
        .max_by_key(|f| f.bytes)
        .context("the batch holds no standard file")?
        .clone();
    let columns = spec::file_spec(&big.name).map_or(0, |s| s.columns.len());
    let plain = bench.join(&big.name);
    {
        let (src, dst, f) =
            (connector.spool_dir(&manifest.batch_id).join(big.compressed_name()), plain.clone(), big.clone());
        tokio::task::spawn_blocking(move || unpack(&src, &dst, &f)).await??;
    }
    println!(
        "      bench copy: {} ({}, {} rows, MD5 as in the manifest)",
        plain.display(),
        mb(big.bytes),
        int(big.rows)
    );

    // 2. upload, 3. relay + verify + import: one `send`, timed inside.
    let (upload, upload_rss, relay, relay_rss) = send(&connector, &manifest, rss).await?;
    let imported = imported_rows(cluster, &manifest).await?;
    let rows_ok = imported == rows;
    ok &= rows_ok;
    println!(
        "[upload] {:.2} s, {} bz2 ({}); peak RSS {}",
        upload.secs,
        mb(upload.bytes),
        upload.rate(),
        mib(upload_rss)
    );
    println!(
        "[relay+verify+import] {:.2} s, {} csv ({}), {} rows/s; peak RSS {}; rows in the instance: {} {}",
        relay.secs,
        mb(relay.bytes),
        relay.rate(),
        int(per_sec(rows, relay.secs)),
        mib(relay_rss),
        int(imported),
        if rows_ok { "(all)" } else { "(MISMATCH)" }
    );
    lines.push(Line::ours(
        "upload batch (sftp)",
        format!("{} bz2", mb(upload.bytes)),
        upload,
        upload_rss,
        String::new(),
    ));

    // 4. import vs sqlite3 .import of the largest file (ours: every file, relayed, verified, typed).
    let sqlite = sqlite_import(bench, &big, columns).await;
    let note = match &sqlite {
        Theirs::Ran(t) => format!(
            "{} rows/s (all files) vs sqlite3 {} rows/s ({} only, text columns)",
            int(per_sec(rows, relay.secs)),
            int(per_sec(big.rows, t.secs)),
            big.name
        ),
        _ => format!("{} rows/s", int(per_sec(rows, relay.secs))),
    };
    lines.push(Line {
        tool: "sqlite3 .import".into(),
        theirs: sqlite,
        ..Line::ours(
            "relay+verify+import",
            format!("{} files, {} csv", manifest.files.len(), mb(csv_bytes)),
            relay,
            relay_rss,
            note,
        )
    });

    // 5. compression, 6. digests, 7. upload, on the same data.
    let (more, more_ok) = compression(&plain, bench, rss).await?;
    lines.extend(more);
    ok &= more_ok;
    let (more, more_ok) = digests(&plain, &big, rss).await?;
    lines.extend(more);
    ok &= more_ok;
    let (more, more_ok) = upload_vs_openssh(cluster, &connector, &plain, bench, upload_target, rss).await?;
    lines.extend(more);
    ok &= more_ok;
    Ok((lines, ok))
}

/// `send` (upload, complete, wait for the verdict), split into its two timed stages with a peak RSS each.
///
/// `SyncReport.timings.relay_import` polls for the verdict with a backoff of up to 2 s; the Comms server stamps
/// the verdict (`updated_at`), so relay+verify+import is measured as verdict time - send start - upload time.
async fn send(
    connector: &Connector,
    manifest: &Manifest,
    rss: &mut PeakRss,
) -> anyhow::Result<(Timed, Option<u64>, Timed, Option<u64>)> {
    // The upload's peak is taken (and reset) at the progress line `upload` prints once every file is sent.
    let upload_peak: Mutex<Option<Option<u64>>> = Mutex::new(None);
    let progress = |line: &str| {
        println!("      {line}");
        if line.starts_with("uploaded ")
            && let Ok(mut slot) = upload_peak.lock()
            && slot.is_none()
        {
            *slot = Some(vm_hwm_kib());
            reset_hwm();
        }
    };
    rss.start();
    let started = chrono::Utc::now();
    let report = connector.send(manifest, &progress).await.context("send")?;
    let s = &report.status;
    if s.state != BatchState::Imported {
        bail!("batch {} {}: {}", s.batch_id, s.state.as_str(), s.detail.as_deref().unwrap_or(""));
    }
    let upload = Timed { secs: report.timings.upload.as_secs_f64(), bytes: report.bytes_sent };
    let polled = report.timings.relay_import.as_secs_f64();
    let stamped = (s.updated_at - started).to_std().map(|d| d.as_secs_f64() - upload.secs);
    let secs = match stamped {
        Ok(secs) if secs > 0.0 && secs <= polled + 0.5 => {
            println!("      relay+verify+import {secs:.2} s by the verdict's timestamp ({polled:.2} s by polling)");
            secs
        }
        _ => polled,
    };
    let relay = Timed { secs, bytes: manifest.files.iter().map(|f| f.bytes).sum() };
    let relay_rss = rss.peak();
    // Without the progress line to split on, the relay figure covers the whole send.
    let upload_rss = upload_peak.into_inner().ok().flatten().flatten().or(relay_rss);
    rss.note(upload_rss);
    Ok((upload, upload_rss, relay, relay_rss))
}

/// Rows the tenant's instance holds, over the manifest's standard files.
async fn imported_rows(cluster: &Cluster, manifest: &Manifest) -> anyhow::Result<u64> {
    let inst = cluster.app.state.instance(TENANT).await?.context("the tenant's instance is missing")?;
    let mut n = 0;
    for f in &manifest.files {
        if let Some(s) = spec::file_spec(&f.name) {
            n += inst.0.count_rows(s.table).await?;
        }
    }
    Ok(n)
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
            "{}: decompressed {} bytes, MD5 {}; the manifest says {} bytes, MD5 {}",
            src.display(),
            d.bytes,
            d.md5,
            f.bytes,
            f.md5
        );
    }
    Ok(())
}

/// `ferry_io::bz::compress_file` (all cores, level 9) vs `bzip2`, `lbzip2`, `pbzip2`.
async fn compression(plain: &Path, bench: &Path, rss: &mut PeakRss) -> anyhow::Result<(Vec<Line>, bool)> {
    let size = std::fs::metadata(plain)?.len();
    let name = file_name(plain);
    rss.start();
    let (src, dst) = (plain.to_path_buf(), bench.join("ferry.bz2"));
    let t = Instant::now();
    let bz = tokio::task::spawn_blocking(move || ferry_io::bz::compress_file(&src, &dst, 9, 0)).await??;
    let ours = Timed { secs: t.elapsed().as_secs_f64(), bytes: size };
    let ours_rss = rss.peak();
    println!(
        "[compress -9] ours {:.2} s ({}, ratio {:.2}, incl. fsync); peak RSS {}",
        ours.secs,
        ours.rate(),
        ratio(size, bz),
        mib(ours_rss)
    );
    let mut lines = Vec::new();
    let mut ok = true;
    let mut notes = vec![format!("ratio {:.2}", ratio(size, bz))];
    for (prog, args) in [("bzip2", &["-9", "-k", "-c"][..]), ("lbzip2", &["-9", "-c"]), ("pbzip2", &["-9", "-c"])] {
        let out = bench.join(format!("{prog}.bz2"));
        let mut full: Vec<&str> = args.to_vec();
        full.push(&name);
        let theirs = tool(prog, &full, bench, None, Some(&out), size).await;
        let label = format!("{prog} {}", args.join(" "));
        match &theirs {
            Theirs::Ran(t) => {
                let their_bz = std::fs::metadata(&out)?.len();
                notes.push(format!("{prog} {:.2}", ratio(size, their_bz)));
                println!("      {label}: {:.2} s ({}, ratio {:.2})", t.secs, t.rate(), ratio(size, their_bz));
            }
            other => {
                ok &= !matches!(other, Theirs::Failed(_));
                println!("      {label}: {}", other.short());
            }
        }
        lines.push(Line::tool(label, theirs));
    }
    if let Some(first) = lines.first_mut() {
        first.set_ours("compress bzip2 -9", format!("{name} {}", mb(size)), ours, ours_rss, notes.join(", "));
    }
    Ok((lines, ok))
}

/// Our MD5+SHA-256 in one streamed pass vs `md5sum` and `sha256sum` (two passes); digests must agree.
async fn digests(plain: &Path, f: &ManifestFile, rss: &mut PeakRss) -> anyhow::Result<(Vec<Line>, bool)> {
    let name = file_name(plain);
    rss.start();
    let src = plain.to_path_buf();
    let t = Instant::now();
    let d: Digests = tokio::task::spawn_blocking(move || -> io::Result<Digests> {
        let mut file = File::open(&src)?;
        let mut buf = vec![0u8; 1 << 20];
        let mut dg = Digester::new();
        loop {
            match file.read(&mut buf)? {
                0 => return Ok(dg.finish()),
                n => dg.update(&buf[..n]),
            }
        }
    })
    .await??;
    let ours = Timed { secs: t.elapsed().as_secs_f64(), bytes: d.bytes };
    let ours_rss = rss.peak();
    let mut ok = d.md5 == f.md5 && d.sha256 == f.sha256;
    println!("[md5+sha256] ours {:.3} s ({}); peak RSS {}", ours.secs, ours.rate(), mib(ours_rss));
    let mut lines = Vec::new();
    let mut total = Some(0.0);
    let mut agree = ok;
    for (prog, want) in [("md5sum", &d.md5), ("sha256sum", &d.sha256)] {
        let (theirs, stdout) =
            tool_output(prog, &[&name], plain.parent().unwrap_or(Path::new(".")), None, d.bytes).await;
        if let Theirs::Ran(t) = &theirs {
            agree &= stdout.split_whitespace().next() == Some(want.as_str());
            total = total.map(|s| s + t.secs);
            println!("      {prog}: {:.3} s ({})", t.secs, t.rate());
        } else {
            ok &= !matches!(theirs, Theirs::Failed(_));
            total = None;
            println!("      {prog}: {}", theirs.short());
        }
        lines.push(Line::tool(prog.into(), theirs));
    }
    if let Some(secs) = total {
        lines.push(Line::tool("md5sum + sha256sum".into(), Theirs::Ran(Timed { secs, bytes: d.bytes })));
    }
    ok &= agree;
    let verdict = if agree { "digests agree, = manifest" } else { "DIGESTS DIFFER" };
    println!("      {verdict}");
    if let Some(first) = lines.first_mut() {
        first.set_ours("md5+sha256 (1 pass)", format!("{name} {}", mb(d.bytes)), ours, ours_rss, verdict.into());
    }
    Ok((lines, ok))
}

/// Our SFTP client vs OpenSSH `sftp -b`, same file, same Comms server, same key; both timed from connect to
/// disconnect. OpenSSH is given our cipher (aes256-gcm) so the two compare like for like.
async fn upload_vs_openssh(
    cluster: &Cluster,
    connector: &Connector,
    plain: &Path,
    bench: &Path,
    target: u64,
    rss: &mut PeakRss,
) -> anyhow::Result<(Vec<Line>, bool)> {
    let file = bench.join("upload.bin");
    let size = {
        let (src, dst) = (plain.to_path_buf(), file.clone());
        tokio::task::spawn_blocking(move || repeat_into(&src, &dst, target)).await??
    };
    let ours_remote = format!("{REMOTE_DIR}/ferry.bin");
    let openssh_remote = format!("{REMOTE_DIR}/openssh.bin");

    rss.start();
    let t = Instant::now();
    let sftp = connector.sftp().await?;
    sftp.mkdir_all(REMOTE_DIR).await?;
    let tx = Instant::now();
    let sent = sftp.upload_file(&file, &ours_remote).await.context("uploading the test file")?;
    let transfer = Timed { secs: tx.elapsed().as_secs_f64(), bytes: sent };
    sftp.close().await?;
    let ours = Timed { secs: t.elapsed().as_secs_f64(), bytes: sent };
    let ours_rss = rss.peak();
    println!(
        "[upload sftp] ours {:.2} s ({}; transfer alone {}); peak RSS {} (client and server)",
        ours.secs,
        ours.rate(),
        transfer.rate(),
        mib(ours_rss)
    );

    let addr = cluster.comms.ssh_addr;
    let key = connector.cfg.key_path();
    let user = connector.registration()?.tenant;
    std::fs::write(bench.join("sftp.batch"), format!("put upload.bin {openssh_remote}\n"))?;
    let port = addr.port().to_string();
    let key_s = key.display().to_string();
    let dest = format!("{user}@{}", addr.ip());
    let args = [
        "-b",
        "sftp.batch",
        "-i",
        &key_s,
        "-P",
        &port,
        "-c",
        "aes256-gcm@openssh.com",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "LogLevel=ERROR",
        &dest,
    ];
    let theirs = tool("sftp", &args, bench, None, None, size).await;
    println!("      OpenSSH sftp -b: {}", theirs.short());

    // Both files must have arrived whole; then free the space.
    let check = connector.sftp().await?;
    let mut ok = true;
    for (who, remote, ran) in
        [("ferry", &ours_remote, true), ("openssh", &openssh_remote, matches!(theirs, Theirs::Ran(_)))]
    {
        if !ran {
            continue;
        }
        let got = check.stat_size(remote).await?;
        if got != Some(size) {
            ok = false;
            println!("      {who}: the server holds {got:?} bytes of {size}");
        }
        check.remove(remote).await?;
    }
    check.close().await?;
    ok &= !matches!(theirs, Theirs::Failed(_));

    let note = format!("connect..disconnect; ours transfer alone {}", transfer.rate());
    let line = Line {
        tool: "sftp -b (OpenSSH, aes256-gcm)".into(),
        theirs,
        ..Line::ours("upload sftp", format!("{} test file", mb(size)), ours, ours_rss, note)
    };
    Ok((vec![line], ok))
}

/// Writes `src` again and again into `dst` up to exactly `target` bytes (or `src` once if larger); streamed.
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

/// `sqlite3 import.db` with `.mode csv` and `.import` of `f` into a table of `columns` text columns created first
/// (so the first line is data, not a header).
async fn sqlite_import(bench: &Path, f: &ManifestFile, columns: usize) -> Theirs {
    let db = bench.join("import.db");
    let _ = std::fs::remove_file(&db);
    let cols: Vec<String> = (1..=columns).map(|i| format!("c{i} TEXT")).collect();
    let script =
        format!("CREATE TABLE t({});\n.mode csv\n.import {} t\nSELECT count(*) FROM t;\n", cols.join(", "), f.name);
    let (theirs, stdout) = tool_output("sqlite3", &["-bail", "import.db"], bench, Some(&script), f.bytes).await;
    let count = stdout.trim().parse::<u64>().ok();
    match theirs {
        Theirs::Ran(t) if count == Some(f.rows) => {
            println!(
                "[import] sqlite3 .import {}: {:.2} s ({}), {} rows/s",
                f.name,
                t.secs,
                t.rate(),
                int(per_sec(f.rows, t.secs))
            );
            Theirs::Ran(t)
        }
        Theirs::Ran(_) => {
            let why = format!("imported {:?} rows of {}", count, f.rows);
            println!("[import] sqlite3 .import {}: {why}", f.name);
            Theirs::Failed(why)
        }
        other => {
            println!("[import] sqlite3 .import: {}", other.short());
            other
        }
    }
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

/// Runs `prog` (stdout into `out`) and times it from spawn to exit; `bytes` is the data it works on.
async fn tool(prog: &str, args: &[&str], cwd: &Path, stdin: Option<&str>, out: Option<&Path>, bytes: u64) -> Theirs {
    match run_tool(prog, args, cwd, stdin, out, bytes).await {
        Ok(Some((t, _))) => Theirs::Ran(t),
        Ok(None) => Theirs::Missing,
        Err(e) => Theirs::Failed(format!("{e:#}")),
    }
}

/// [`tool`] keeping its standard output.
async fn tool_output(prog: &str, args: &[&str], cwd: &Path, stdin: Option<&str>, bytes: u64) -> (Theirs, String) {
    match run_tool(prog, args, cwd, stdin, None, bytes).await {
        Ok(Some((t, stdout))) => (Theirs::Ran(t), stdout),
        Ok(None) => (Theirs::Missing, String::new()),
        Err(e) => (Theirs::Failed(format!("{e:#}")), String::new()),
    }
}

async fn run_tool(
    prog: &str,
    args: &[&str],
    cwd: &Path,
    stdin: Option<&str>,
    out: Option<&Path>,
    bytes: u64,
) -> anyhow::Result<Option<(Timed, String)>> {
    let Some(path) = which(prog) else {
        return Ok(None);
    };
    let mut cmd = tokio::process::Command::new(&path);
    cmd.args(args)
        .current_dir(cwd)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    match out {
        Some(p) => cmd.stdout(Stdio::from(File::create(p)?)),
        None => cmd.stdout(Stdio::piped()),
    };
    let t = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("cannot start {}", path.display()))?;
    if let (Some(script), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(script.as_bytes()).await?;
    }
    let output = child.wait_with_output().await?;
    let secs = t.elapsed().as_secs_f64();
    if !output.status.success() {
        let err = String::from_utf8_lossy(&output.stderr);
        bail!("{prog} {}: {}", output.status, err.trim());
    }
    Ok(Some((Timed { secs, bytes }, String::from_utf8_lossy(&output.stdout).into_owned())))
}

// ---- measurements and the table ----

#[derive(Debug, Clone, Copy)]
struct Timed {
    secs: f64,
    bytes: u64,
}

impl Timed {
    fn mb_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.secs.max(1e-9)
    }

    fn rate(&self) -> String {
        format!("{:.1} MB/s", self.mb_s())
    }
}

#[derive(Debug)]
enum Theirs {
    /// No tool for this stage.
    NoTool,
    Missing,
    Failed(String),
    Ran(Timed),
}

impl Theirs {
    fn short(&self) -> String {
        match self {
            Theirs::NoTool => String::new(),
            Theirs::Missing => "not installed".into(),
            Theirs::Failed(e) => format!("failed: {e}"),
            Theirs::Ran(t) => format!("{:.2} s ({})", t.secs, t.rate()),
        }
    }
}

/// One row of the final table: our figure and one tool's, on the same data.
struct Line {
    stage: String,
    data: String,
    ours: Option<Timed>,
    rss: Option<u64>,
    tool: String,
    theirs: Theirs,
    note: String,
}

impl Line {
    fn ours(stage: &str, data: String, t: Timed, rss: Option<u64>, note: String) -> Line {
        Line { stage: stage.into(), data, ours: Some(t), rss, tool: "-".into(), theirs: Theirs::NoTool, note }
    }

    fn tool(tool: String, theirs: Theirs) -> Line {
        Line { stage: String::new(), data: String::new(), ours: None, rss: None, tool, theirs, note: String::new() }
    }

    /// Puts our figure on a tool's line.
    fn set_ours(&mut self, stage: &str, data: String, t: Timed, rss: Option<u64>, note: String) {
        (self.stage, self.data, self.ours, self.rss, self.note) = (stage.into(), data, Some(t), rss, note);
    }
}

fn print_table(lines: &[Line]) {
    const HEAD: [&str; 9] =
        ["stage", "data", "ours s", "ours MB/s", "peak RSS", "tool", "tool s", "tool MB/s", "notes"];
    const RIGHT: [bool; 9] = [false, false, true, true, true, false, true, true, false];
    let rows: Vec<[String; 9]> = lines
        .iter()
        .map(|l| {
            let (ts, tr) = match &l.theirs {
                Theirs::Ran(t) => (format!("{:.2}", t.secs), format!("{:.1}", t.mb_s())),
                Theirs::NoTool => (String::new(), String::new()),
                other => (other.short(), String::new()),
            };
            [
                l.stage.clone(),
                l.data.clone(),
                l.ours.map(|t| format!("{:.2}", t.secs)).unwrap_or_default(),
                l.ours.map(|t| format!("{:.1}", t.mb_s())).unwrap_or_default(),
                l.rss.map(|k| mib(Some(k))).unwrap_or_default(),
                l.tool.clone(),
                ts,
                tr,
                l.note.clone(),
            ]
        })
        .collect();
    let mut width = HEAD.map(str::len);
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let fmt = |cells: [&str; 9]| {
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

/// Peak resident set size per stage: `VmHWM`, reset before each stage when the kernel lets us.
struct PeakRss {
    resets: bool,
    /// Highest peak seen over all stages (KiB).
    max_kib: Option<u64>,
}

impl PeakRss {
    fn new() -> Self {
        PeakRss { resets: reset_hwm(), max_kib: None }
    }

    fn start(&self) {
        if self.resets {
            reset_hwm();
        }
    }

    /// The peak since [`start`](Self::start) (KiB).
    fn peak(&mut self) -> Option<u64> {
        let now = vm_hwm_kib();
        self.note(now);
        now
    }

    /// Counts a peak read elsewhere into the overall maximum.
    fn note(&mut self, kib: Option<u64>) {
        self.max_kib = self.max_kib.max(kib);
    }
}

/// Resets the kernel's peak RSS of this process to its current RSS (Linux >= 4.0).
fn reset_hwm() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// `VmHWM` of /proc/self/status, in KiB.
fn vm_hwm_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?;
    line.trim().trim_end_matches("kB").trim().parse().ok()
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

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or_else(|| "?".into(), |k| format!("{} MiB", k / 1024))
}

fn ratio(plain: u64, compressed: u64) -> f64 {
    plain as f64 / compressed.max(1) as f64
}

fn per_sec(n: u64, secs: f64) -> u64 {
    (n as f64 / secs.max(1e-9)) as u64
}

/// `1234567` -> `1,234,567`.
fn int(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}
