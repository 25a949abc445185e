//! The pipeline stages of the bench, run once each on the sample ERP's batch: extract+CSV+hash+bzip2, the SFTP
//! upload and relay+verify+import (both inside one `send`, split by its progress lines and the verdict's
//! timestamp); then the comparisons of [`super::tools`].

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
use std::sync::Mutex;

use anyhow::{Context, bail};
use ferry_connector::agent::Connector;
use ferry_io::digest::HashingWriter;
use ferry_proto::api::BatchState;
use ferry_proto::manifest::{Manifest, ManifestFile};
use ferry_proto::spec;

use super::TENANT;
use super::measure::{Clock, PeakRss, RssSample, Timed};
use super::report::{Line, int, mb, per_sec, show};
use super::tools::Theirs;
use crate::cluster::Cluster;

/// What every stage needs while the cluster runs.
pub(super) struct Bench<'a> {
    pub(super) cluster: &'a Cluster,
    /// The `bench/` folder.
    pub(super) bench: &'a Path,
    pub(super) runs: usize,
}

impl Bench<'_> {
    /// Every stage and comparison; returns the table and whether every check passed.
    pub(super) async fn all(
        &self,
        erp: &Path,
        upload_target: u64,
        rss: &mut PeakRss,
    ) -> anyhow::Result<(Vec<Line>, bool)> {
        let token = self.cluster.add_tenant(TENANT).await?;
        let mut connector = self.cluster.connector(TENANT, erp, &token).await?;
        let live = std::sync::Arc::new(crate::progress::Progress::stderr());
        let ticks = live.clone();
        connector
            .set_file_progress(std::sync::Arc::new(move |f: &str, rows: u64, bytes: u64| ticks.tick(f, rows, bytes)));
        println!(
            "cluster: comms sftp {}, app sftp {}; tenant {TENANT}, connector registered",
            self.cluster.comms.ssh_addr, self.cluster.app.ssh_addr
        );
        let mut lines = Vec::new();

        // 1. extract + CSV + hash + compress, pipelined: one stage.
        rss.start();
        let clock = Clock::start();
        let say = |line: &str| {
            live.finish(); // the files are done when the connector lists them
            live.println(&format!("      {line}"))
        };
        let manifest = connector.extract_to_spool(&say).await;
        live.finish();
        let manifest = manifest.context("extract")?;
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
