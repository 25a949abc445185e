//! What the bench measures: wall and CPU time (from /proc: this process, or a tool's process tree) and peak RSS
//! per stage (`VmHWM`, reset through `/proc/self/clear_refs` where the kernel allows it).

use std::time::Instant;

use super::report::secs;

/// A measured run: wall seconds, CPU seconds (ours: every thread of this process; a tool: its process tree) and
/// the bytes it handled.
#[derive(Debug, Clone, Copy)]
pub(super) struct Timed {
    pub(super) secs: f64,
    pub(super) cpu: Option<f64>,
    pub(super) bytes: u64,
}

impl Timed {
    /// `1.23 s (CPU 2.10 s)`.
    pub(super) fn time(&self) -> String {
        match self.cpu {
            Some(cpu) => format!("{} s (CPU {} s)", secs(self.secs), secs(cpu)),
            None => format!("{} s", secs(self.secs)),
        }
    }

    pub(super) fn mb_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.secs.max(1e-9)
    }

    pub(super) fn rate(&self) -> String {
        format!("{:.1} MB/s", self.mb_s())
    }
}

/// A wall clock, and this process's CPU times when it started.
pub(super) struct Clock {
    wall: Instant,
    cpu: Option<CpuTimes>,
}

impl Clock {
    pub(super) fn start() -> Clock {
        Clock { wall: Instant::now(), cpu: CpuTimes::read() }
    }

    /// Work done in this process (every thread, the in-process servers included).
    pub(super) fn ours(&self, bytes: u64) -> Timed {
        let cpu = self.cpu.zip(CpuTimes::read()).map(|(a, b)| b.own - a.own);
        Timed { secs: self.wall.elapsed().as_secs_f64(), cpu, bytes }
    }

    /// Work done by child processes that exited and were waited for since the start.
    pub(super) fn children(&self, bytes: u64) -> Timed {
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
pub(super) fn fastest(best: Option<Timed>, run: Timed) -> Option<Timed> {
    Some(match best {
        Some(b) if b.secs <= run.secs => b,
        _ => run,
    })
}

/// A stage's peak RSS and the RSS it started from (KiB).
#[derive(Debug, Clone, Copy)]
pub(super) struct RssSample {
    pub(super) peak: u64,
    pub(super) base: Option<u64>,
}

impl RssSample {
    pub(super) fn read(base: Option<u64>) -> Option<RssSample> {
        Some(RssSample { peak: proc_status_kib("VmHWM:")?, base })
    }
}

/// Peak resident set size per stage: `VmHWM`, reset before each stage when the kernel lets us.
pub(super) struct PeakRss {
    pub(super) resets: bool,
    /// RSS when the current stage started (KiB).
    base: Option<u64>,
    /// Highest peak seen over all stages (KiB).
    pub(super) max_kib: Option<u64>,
}

impl PeakRss {
    pub(super) fn new() -> Self {
        PeakRss { resets: Self::reset().is_some(), base: None, max_kib: None }
    }

    /// Resets the kernel's peak RSS of this process to its current RSS (Linux >= 4.0); returns that RSS.
    pub(super) fn reset() -> Option<u64> {
        std::fs::write("/proc/self/clear_refs", "5").ok()?;
        proc_status_kib("VmRSS:")
    }

    /// A stage starts; returns the RSS it starts from.
    pub(super) fn start(&mut self) -> Option<u64> {
        self.base = if self.resets { Self::reset() } else { proc_status_kib("VmRSS:") };
        self.base
    }

    /// The peak since [`start`](Self::start).
    pub(super) fn peak(&mut self) -> Option<RssSample> {
        self.peak_since(self.base)
    }

    pub(super) fn peak_since(&mut self, base: Option<u64>) -> Option<RssSample> {
        let s = RssSample::read(base);
        self.note(s);
        s
    }

    /// Counts a peak read elsewhere into the overall maximum.
    pub(super) fn note(&mut self, s: Option<RssSample>) {
        self.max_kib = self.max_kib.max(s.map(|s| s.peak));
    }
}

/// A `kB` field of /proc/self/status (`VmHWM:`, `VmRSS:`).
fn proc_status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix(field))?;
    line.trim().trim_end_matches("kB").trim().parse().ok()
}

pub(super) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}
