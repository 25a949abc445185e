//! The pipeline bench's child processes, measured from outside: a run to completion with its stdout lines
//! timestamped as they arrive and its CPU time and peak RSS from `wait4` (the child and every descendant it
//! waited for), and long-running servers read through /proc (CPU from `stat`, peak RSS from `VmHWM`, reset
//! through `clear_refs`).

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// CPU seconds (user + system) and peak resident set size (KiB) of a process (tree).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Usage {
    pub(super) cpu: f64,
    pub(super) rss_kib: Option<u64>,
}

/// A child run to completion.
pub(super) struct Finished {
    pub(super) wall: f64,
    pub(super) status: ExitStatus,
    /// The child and every descendant it waited for (`wait4`'s `RUSAGE_BOTH` semantics on Linux).
    pub(super) usage: Usage,
    /// Standard output lines with the seconds since the start at which each arrived.
    pub(super) lines: Vec<(f64, String)>,
    pub(super) stderr: String,
}

impl Finished {
    /// When the first line satisfying `f` arrived.
    pub(super) fn at(&self, f: impl Fn(&str) -> bool) -> Option<f64> {
        self.lines.iter().find(|(_, l)| f(l)).map(|(t, _)| *t)
    }

    pub(super) fn stdout(&self) -> String {
        self.lines.iter().map(|(_, l)| format!("{l}\n")).collect()
    }
}

/// Runs `cmd` to its end, its stdout read line by line as it comes (stdin closed, stderr kept).
pub(super) fn run_timed(cmd: &mut Command) -> anyhow::Result<Finished> {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("cannot start {:?}", cmd.get_program()))?;
    let lines: Arc<Mutex<Vec<(f64, String)>>> = Arc::default();
    let out = child.stdout.take().context("no stdout pipe")?;
    let mut err = child.stderr.take().context("no stderr pipe")?;
    let sink = lines.clone();
    let out_reader = std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if let Ok(mut v) = sink.lock() {
                v.push((start.elapsed().as_secs_f64(), line));
            }
        }
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let (status, usage) = wait4(child)?;
    let wall = start.elapsed().as_secs_f64();
    let _ = out_reader.join();
    let stderr = err_reader.join().unwrap_or_default();
    let lines = std::mem::take(&mut *lines.lock().map_err(|_| anyhow::anyhow!("line reader panicked"))?);
    Ok(Finished { wall, status, usage, lines, stderr })
}

/// Waits for `child` (consumed: it is reaped here, not through std) and returns its resource usage.
fn wait4(child: Child) -> io::Result<(ExitStatus, Usage)> {
    use std::os::unix::process::ExitStatusExt;
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: `rusage` is plain old data, for which all-zero bytes are a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: both pointers are to live locals; `pid` is our own child, not yet reaped (std never waited).
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
        if r == pid {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    drop(child);
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let usage = Usage { cpu: tv(ru.ru_utime) + tv(ru.ru_stime), rss_kib: Some(ru.ru_maxrss as u64) };
    Ok((ExitStatus::from_raw(status), usage))
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// User + system CPU seconds of a running process from /proc/PID/stat; with `children`, plus those of the
/// children it waited for (an sshd's per-connection processes).
pub(in crate::bench) fn proc_cpu(pid: u32, children: bool) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After "pid (comm) " come the fields from `state` (3) on: utime 14, stime 15, cutime 16, cstime 17.
    let fields: Vec<&str> = stat.get(stat.rfind(')')? + 2..)?.split_whitespace().collect();
    let hz = clock_ticks();
    let ticks = |field: usize| fields.get(field - 3)?.parse::<f64>().ok().map(|t| t / hz);
    let own = ticks(14)? + ticks(15)?;
    Some(if children { own + ticks(16)? + ticks(17)? } else { own })
}

/// The peak RSS (KiB) of a running process since its start or its last [`reset_peak`].
pub(in crate::bench) fn proc_peak_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?;
    line.trim().trim_end_matches("kB").trim().parse().ok()
}

/// Resets a process's peak RSS to its current RSS (Linux >= 4.0, our own child); whether it could.
pub(in crate::bench) fn reset_peak(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// Free ports of 127.0.0.1, chosen up front (the servers' configs name each other's addresses).
pub(super) fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let ls = (0..n).map(|_| TcpListener::bind("127.0.0.1:0")).collect::<io::Result<Vec<_>>>()?;
    Ok(ls.iter().map(|l| l.local_addr().map(|a| a.port())).collect::<io::Result<Vec<_>>>()?)
}

/// A long-running child (a Ferry server, an sshd) with stdout and stderr in a log file.
pub(super) struct Server {
    pub(super) name: String,
    child: Option<Child>,
    pub(super) log: PathBuf,
}

impl Server {
    pub(super) fn start(name: &str, cmd: &mut Command, log: PathBuf) -> anyhow::Result<Server> {
        let out = File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        let err = out.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("cannot start {name} ({:?})", cmd.get_program()))?;
        Ok(Server { name: name.into(), child: Some(child), log })
    }

    pub(super) fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub(super) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The first log line containing `needle`, waiting up to `limit` for it; an error (with the log) if the
    /// process exits or the time runs out.
    pub(super) fn wait_for_line(&mut self, needle: &str, from: usize, limit: Duration) -> anyhow::Result<String> {
        let t = Instant::now();
        loop {
            let text = self.log_text();
            if let Some(l) = text.get(from..).unwrap_or_default().lines().find(|l| l.contains(needle)) {
                return Ok(l.to_string());
            }
            if let Some(c) = &mut self.child
                && let Some(status) = c.try_wait()?
            {
                bail!("{} exited ({status}) before logging {needle:?}:\n{}", self.name, tail(&text));
            }
            if t.elapsed() > limit {
                bail!("{} did not log {needle:?} within {limit:?}:\n{}", self.name, tail(&text));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited within 15 s; reaped either way.
    pub(super) fn stop(&mut self) {
        let Some(mut c) = self.child.take() else { return };
        // SAFETY: kill has no memory preconditions; the pid is our unreaped child.
        unsafe {
            libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
        }
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(15) {
            if matches!(c.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The last 30 lines of a log.
pub(super) fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// `prog` on `PATH`, or in the sbin folders (`sshd` is not on a normal user's `PATH`).
pub(in crate::bench) fn find_program(prog: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|d| d.join(prog))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Runs a short command to completion; its stdout, or an error with its stderr.
pub(super) fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("cannot start {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{:?} {:?} failed ({}): {}{}",
            cmd.get_program(),
            cmd.get_args().collect::<Vec<_>>(),
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `'text'` for a POSIX shell.
pub(super) fn sh_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}
