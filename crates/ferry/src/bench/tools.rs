//! Ours beside the standard tools on the same data, where they are installed: `bzip2`, `lbzip2`, `pbzip2`,
//! `md5sum`, `sha256sum`, OpenSSH `sftp -b` and `sqlite3 .import`. Each comparison runs `--runs` times, ours and
//! the tools taking turns, and keeps each side's fastest run.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, bail};
use ferry_connector::agent::Connector;
use ferry_io::digest::{Digester, Digests};
use ferry_proto::manifest::ManifestFile;
use ferry_proto::spec;
use tokio::io::AsyncWriteExt;

use super::REMOTE_DIR;
use super::measure::{Clock, PeakRss, Timed, fastest};
use super::report::{Line, file_name, int, mb, per_sec, ratio, show};
use super::stages::Bench;

impl Bench<'_> {
    /// `sqlite3 import.db` with `.mode csv` and `.import` of `f` into a table of text columns created first (so
    /// the first line is data, not a header); every run must import every row.
    pub(super) async fn sqlite_import(&self, f: &ManifestFile) -> (Theirs, bool) {
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

    /// `ferry_io::bz::compress_file` (all cores, level 9) vs `bzip2`, `lbzip2`, `pbzip2`; then per core: ours on
    /// one thread vs `lbzip2 -n1`.
    pub(super) async fn compression(&self, plain: &Path, rss: &mut PeakRss) -> anyhow::Result<(Vec<Line>, bool)> {
        const TOOLS: [(&str, &[&str]); 3] =
            [("bzip2", &["-9", "-k", "-c"]), ("lbzip2", &["-9", "-c"]), ("pbzip2", &["-9", "-c"])];
        const ONE_CORE: (&str, &[&str]) = ("lbzip2", &["-n1", "-9", "-c"]);
        let size = std::fs::metadata(plain)?.len();
        let name = file_name(plain);
        let ours_out = self.bench.join("ferry.bz2");
        let ours1_out = self.bench.join("ferry-1.bz2");
        let out_of = |i: usize, prog: &str| self.bench.join(format!("{prog}-{i}.bz2"));
        let mut ours = None;
        let mut ours1 = None;
        let mut theirs: Vec<Theirs> = TOOLS.iter().map(|_| Theirs::NoTool).collect();
        let mut theirs1 = Theirs::NoTool;
        rss.start();
        for _ in 0..self.runs {
            let (src, dst) = (plain.to_path_buf(), ours_out.clone());
            let clock = Clock::start();
            tokio::task::spawn_blocking(move || ferry_io::bz::compress_file(&src, &dst, 9, 0)).await??;
            ours = fastest(ours, clock.ours(size));
            for (i, ((prog, args), best)) in TOOLS.iter().zip(theirs.iter_mut()).enumerate() {
                let mut argv = args.to_vec();
                argv.push(&name);
                let run = tool(prog, &argv, self.bench, Some(&out_of(i, prog)), size).await;
                *best = std::mem::replace(best, Theirs::NoTool).keep_best(run);
            }
            let (src, dst) = (plain.to_path_buf(), ours1_out.clone());
            let clock = Clock::start();
            tokio::task::spawn_blocking(move || ferry_io::bz::compress_file(&src, &dst, 9, 1)).await??;
            ours1 = fastest(ours1, clock.ours(size));
            let mut argv = ONE_CORE.1.to_vec();
            argv.push(&name);
            let run = tool(ONE_CORE.0, &argv, self.bench, Some(&out_of(TOOLS.len(), ONE_CORE.0)), size).await;
            theirs1 = theirs1.keep_best(run);
        }
        let ours = ours.context("no run")?;
        let ours1 = ours1.context("no run")?;
        let ours_rss = rss.peak();
        let our_ratio = ratio(size, std::fs::metadata(&ours_out)?.len());
        println!(
            "[compress -9] ours {} ({}, ratio {our_ratio:.2}, incl. fsync); peak RSS {}",
            ours.time(),
            ours.rate(),
            show(ours_rss)
        );
        println!("      ours: bzip2 level 9 (900 kB blocks), one independent stream per 900 kB chunk, all cores");
        let mut notes = vec![format!("ratio {our_ratio:.2}")];
        let mut lines = Vec::new();
        let mut ok = true;
        for (i, ((prog, args), best)) in TOOLS.iter().zip(theirs).enumerate() {
            let label = format!("{prog} {}", args.join(" "));
            let mut extra = String::new();
            if matches!(best, Theirs::Ran(_)) {
                let r = ratio(size, std::fs::metadata(out_of(i, prog))?.len());
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
        // Per core: CPU seconds on one thread, ours against lbzip2's.
        let label1 = format!("{} {}", ONE_CORE.0, ONE_CORE.1.join(" "));
        let per_core = match (&theirs1, ours1.cpu) {
            (Theirs::Ran(t), Some(c)) => match t.cpu {
                Some(tc) if tc > 0.0 => format!(", CPU {:.2}x lbzip2's", c / tc),
                _ => String::new(),
            },
            _ => String::new(),
        };
        println!(
            "[compress -9, 1 thread] ours {} ({}){per_core}; {label1}: {}",
            ours1.time(),
            ours1.rate(),
            theirs1.short()
        );
        ok &= !matches!(theirs1, Theirs::Failed(_));
        let note1 = format!("level 9, 900 kB blocks, 1 thread{per_core}");
        lines.push(
            Line::ours("compress, 1 core", format!("{name} {}", mb(size)), ours1, None, note1)
                .with_tool(&label1, theirs1),
        );
        let (line, dec_ok) = self.decompression_one_core(&ours1_out, size).await?;
        lines.push(line);
        Ok((lines, ok && dec_ok))
    }

    /// Per core, decompression: ours (`ferry_io::bzdec` through the parallel decoder, one thread) against
    /// `lbzip2 -d -n1`, both reading our level-9 output `bz` of `size` plain bytes.
    async fn decompression_one_core(&self, bz: &Path, size: u64) -> anyhow::Result<(Line, bool)> {
        const ONE_CORE: (&str, &[&str]) = ("lbzip2", &["-d", "-n1", "-c"]);
        let name = file_name(bz);
        let plain_out = self.bench.join("decompressed.out");
        let mut ours = None;
        let mut theirs = Theirs::NoTool;
        for _ in 0..self.runs {
            let src = bz.to_path_buf();
            let clock = Clock::start();
            let n = tokio::task::spawn_blocking(move || -> io::Result<u64> {
                let mut d = ferry_io::bz::parallel_decoder(File::open(src)?, u64::MAX, 1);
                io::copy(&mut d, &mut io::sink())
            })
            .await??;
            anyhow::ensure!(n == size, "our decoder produced {n} bytes of {size}");
            ours = fastest(ours, clock.ours(size));
            let mut argv = ONE_CORE.1.to_vec();
            argv.push(&name);
            theirs = theirs.keep_best(tool(ONE_CORE.0, &argv, self.bench, Some(&plain_out), size).await);
        }
        let _ = std::fs::remove_file(&plain_out);
        let ours = ours.context("no run")?;
        let label = format!("{} {}", ONE_CORE.0, ONE_CORE.1.join(" "));
        let vs = match (&theirs, ours.cpu) {
            (Theirs::Ran(Timed { cpu: Some(tc), .. }), Some(c)) if *tc > 0.0 => {
                format!(", CPU {:.2}x lbzip2's", c / tc)
            }
            _ => String::new(),
        };
        println!("[decompress, 1 thread] ours {} ({}){vs}; {label}: {}", ours.time(), ours.rate(), theirs.short());
        let ok = !matches!(theirs, Theirs::Failed(_));
        let note = format!("our level-9 streams, ferry_io::bzdec, 1 thread{vs}");
        Ok((
            Line::ours("decompress, 1 core", format!("{name} {}", mb(size)), ours, None, note)
                .with_tool(&label, theirs),
            ok,
        ))
    }

    /// Our MD5+SHA-256 in one streamed pass vs `md5sum` and `sha256sum` (a pass each); the digests must agree
    /// with each other and with the manifest.
    pub(super) async fn digests(
        &self,
        plain: &Path,
        f: &ManifestFile,
        rss: &mut PeakRss,
    ) -> anyhow::Result<(Vec<Line>, bool)> {
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
    pub(super) async fn upload(
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

/// A tool's side of a comparison.
#[derive(Debug)]
pub(super) enum Theirs {
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

    pub(super) fn short(&self) -> String {
        match self {
            Theirs::NoTool => String::new(),
            Theirs::Missing => "not installed".into(),
            Theirs::Failed(e) => format!("failed: {e}"),
            Theirs::Ran(t) => format!("{} ({})", t.time(), t.rate()),
        }
    }
}
