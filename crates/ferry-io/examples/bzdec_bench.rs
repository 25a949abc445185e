//! Per-core bzip2 decompression: our decoder (`ferry_io::bzdec`) against libbz2's pure-Rust port (the `bzip2`
//! crate), Debian's `bunzip2` and `lbzip2 -d -n1`, on the same input in the same run, CPU seconds and MB/s.
//!
//! ```sh
//! cargo run --release -p ferry-io --example bzdec_bench -- FILE.csv [MEGABYTES] [ROUNDS]
//! ```
//!
//! The first MEGABYTES (default: all) of FILE are compressed as Ferry does (`ParallelBzWriter`, level 9, one stream
//! per 900 kB) into a temporary folder; each decoder then decompresses that file on one thread, ROUNDS times
//! (default 1), interleaved; the best CPU time of each is printed. Every output is checked against the input.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use ferry_io::bz::{CHUNK_SIZE, ParallelBzWriter};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let Some(path) = args.get(1) else {
        anyhow::bail!("usage: bzdec_bench FILE [MEGABYTES] [ROUNDS]");
    };
    let mut data = std::fs::read(path)?;
    if let Some(mb) = args.get(2).and_then(|s| s.parse::<usize>().ok()).filter(|&m| m > 0) {
        data.truncate(mb * 1_000_000);
    }
    let rounds = args.get(3).and_then(|s| s.parse::<usize>().ok()).unwrap_or(1).max(1);
    let mb = data.len() as f64 / 1e6;

    // Compress as Ferry does, noting where each stream starts (one per CHUNK_SIZE of input).
    let mut streams: Vec<Vec<u8>> = Vec::new();
    for piece in data.chunks(CHUNK_SIZE * 16) {
        let mut w = ParallelBzWriter::new(Vec::new(), 9, 0);
        w.write_all(piece)?;
        let bz = w.finish()?;
        // each piece holds up to 16 streams; cut them where the next "BZh9" + block magic starts
        let starts: Vec<usize> = (0..bz.len().saturating_sub(9)).filter(|&i| &bz[i..i + 10] == b"BZh91AY&SY").collect();
        for (k, &s) in starts.iter().enumerate() {
            let e = starts.get(k + 1).copied().unwrap_or(bz.len());
            streams.push(bz[s..e].to_vec());
        }
    }
    let bz: Vec<u8> = streams.concat();
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("in.bz2");
    std::fs::write(&file, &bz)?;
    println!(
        "input: {} MB of {path}, compressed by ours (level 9, {} streams) to {:.1} MB; machine load {}",
        fmt(mb),
        streams.len(),
        bz.len() as f64 / 1e6,
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );

    let mut best: Vec<(String, f64, f64)> = Vec::new();
    let mut keep = |name: &str, cpu: f64, wall: f64| match best.iter_mut().find(|b| b.0 == name) {
        Some(b) => {
            b.1 = b.1.min(cpu);
            b.2 = b.2.min(wall);
        }
        None => best.push((name.to_string(), cpu, wall)),
    };
    for _ in 0..rounds {
        // ours, stream by stream on this thread
        let (c0, t0) = (thread_cpu(), Instant::now());
        let mut out = Vec::with_capacity(data.len());
        for s in &streams {
            out.extend_from_slice(&ferry_io::bzdec::decode_stream(s, usize::MAX)?);
        }
        keep("ours (ferry_io::bzdec)", thread_cpu() - c0, t0.elapsed().as_secs_f64());
        anyhow::ensure!(out == data, "ours: wrong output");
        drop(out);

        // libbz2's pure-Rust port
        let (c0, t0) = (thread_cpu(), Instant::now());
        let mut out = Vec::with_capacity(data.len());
        #[allow(clippy::disallowed_methods)] // the reference decoder, measured
        bzip2::read::MultiBzDecoder::new(&bz[..]).read_to_end(&mut out)?;
        keep("bzip2 crate 0.6 (libbz2-rs)", thread_cpu() - c0, t0.elapsed().as_secs_f64());
        anyhow::ensure!(out == data, "bzip2 crate: wrong output");
        drop(out);

        for (name, prog, argv) in
            [("bunzip2", "bunzip2", &["-c"][..]), ("lbzip2 -d -n1", "lbzip2", &["-d", "-n1", "-c"][..])]
        {
            if let Some((cpu, wall, ok)) = child(prog, argv, &file, &data) {
                anyhow::ensure!(ok, "{prog}: wrong output");
                keep(name, cpu, wall);
            }
        }
    }
    let base = best.iter().find(|b| b.0.starts_with("lbzip2")).map(|b| b.1);
    for (name, cpu, wall) in &best {
        let vs = base.map(|b| format!(", {:.2}x lbzip2's CPU", cpu / b)).unwrap_or_default();
        println!("{name:<30} CPU {cpu:6.2} s ({:6.1} MB/s per core), wall {wall:6.2} s{vs}", mb / cpu);
    }
    Ok(())
}

fn fmt(x: f64) -> String {
    format!("{x:.1}")
}

/// This thread's CPU seconds (user + system).
fn thread_cpu() -> f64 {
    let mut ts = libc_timespec();
    // SAFETY: clock_gettime writes one timespec into the pointer we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

fn libc_timespec() -> libc::timespec {
    libc::timespec { tv_sec: 0, tv_nsec: 0 }
}

/// Children's CPU seconds so far.
fn children_cpu() -> f64 {
    // SAFETY: an all-zero rusage is a valid value; getrusage fills it in.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes one rusage into the pointer we pass.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Runs `prog ARGS FILE`, returns its CPU and wall seconds and whether its output is `want`; None if not installed.
fn child(prog: &str, args: &[&str], file: &Path, want: &[u8]) -> Option<(f64, f64, bool)> {
    let (c0, t0) = (children_cpu(), Instant::now());
    let out = Command::new(prog).args(args).arg(file).stdin(Stdio::null()).output().ok()?;
    let (cpu, wall) = (children_cpu() - c0, t0.elapsed().as_secs_f64());
    Some((cpu, wall, out.status.success() && out.stdout == want))
}
