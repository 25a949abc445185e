//! `ferry bench downstream`: the downstream path at volume, in this process on loopback ([`crate::cluster`]).
//! A Connector (inbound folder + SQL write-back of `po_` files into a SQLite ERP table, as the demo) is already
//! long-polling when the App publishes N order files (default 350, about what one plan on the medium sample
//! makes) for its tenant, the way a release does (`outbox::publish` each, then one wake-up of the announcer).
//! Timed from the first publish until the Connector has delivered the last file into its inbound folder; the
//! figures per hop: the App's announcements to Comms, Comms' SFTP logins and calls to the App, the Connector's
//! SFTP logins, list and ack calls to Comms. [`measure`] is also what the integration test runs.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ferry_connector::agent::Connector;
use ferry_connector::receive::{Outcome, ReceiveTimes};

use crate::cluster::Cluster;

const TENANT: &str = "bench";
/// Longest the bench waits for every file.
const LIMIT: Duration = Duration::from_secs(600);

/// What one run measured.
#[derive(Debug, Clone)]
pub struct Figures {
    pub files: usize,
    /// Writing the N files into the outbox (the App's own work before anything goes down).
    pub publish: Duration,
    /// From the first publish until the first file was delivered, and until the last one was.
    pub first: Duration,
    pub all: Duration,
    /// Every outcome the Connector reported, in order.
    pub outcomes: Vec<Outcome>,
    /// `POST /v1/app/files` calls the App made (announcements).
    pub announce_calls: u64,
    /// SFTP logins Comms made at the App, and signed calls to it (progress reports).
    pub app_logins: u64,
    pub app_calls: u64,
    /// SFTP logins Connectors made at Comms, and their list and ack calls.
    pub connector_logins: u64,
    pub list_calls: u64,
    pub ack_calls: u64,
    /// Seconds until the App heard of every file as delivered (receipts), from the first publish.
    pub receipts: Option<Duration>,
    /// Where the Connector's receive passes spent their time.
    pub steps: ReceiveTimes,
}

/// An order file of the App's layout with `lines` lines.
pub fn order_file(n: usize, lines: usize) -> String {
    let mut s = String::from("order_number,line,item,location,supplier,qty,unit_cost,order_date,due_date,comment\n");
    for l in 1..=lines {
        s.push_str(&format!(
            "REC-{n:06},{l},ITEM-{:05},DC1,SUP-{n:04},{},1.25,2026/12/03,2026/12/10,\"rop=3, ss=1\"\n",
            n * 7 + l,
            10 + l
        ));
    }
    s
}

/// Start a cluster under `dir`, publish `files` order files for one tenant while its Connector long-polls, and
/// time their delivery. The inbound folder is checked: every file once, byte for byte.
pub async fn measure(dir: &Path, files: usize) -> anyhow::Result<Figures> {
    let c = Cluster::start(dir).await?;
    let r = measure_on(&c, files).await;
    c.stop().await;
    r
}

async fn measure_on(c: &Cluster, files: usize) -> anyhow::Result<Figures> {
    let token = c.add_tenant(TENANT).await?;
    let erp = c.dir.join("erp.db");
    let conn = c.connector_with_write_back(TENANT, &erp, &token).await?;
    // with the ERP's ledger, as docs/sources.md recommends: the journal then records a page's files in one commit
    let cfg_path = conn.cfg.base.join("connector.toml");
    let text = std::fs::read_to_string(&cfg_path)?
        .replace("\n[delivery]\n", "\n[delivery]\nledger_table = \"ferry_applied\"\n");
    std::fs::write(&cfg_path, text)?;
    let inst = c.app.state.instance(TENANT).await?.context("the bench tenant has no instance")?;
    let src_dir = c.dir.join("orders");
    std::fs::create_dir_all(&src_dir)?;
    let names: Vec<String> = (0..files).map(|i| format!("po_{:06}.csv", i + 1)).collect();
    for (i, name) in names.iter().enumerate() {
        std::fs::write(src_dir.join(name), order_file(i + 1, 1 + i % 12))?;
    }

    // the Connector polls continuously until it has every file (as `connector run` does)
    let receiver = Connector::load(&cfg_path)?;
    let started = Instant::now() + Duration::from_secs(3600); // replaced below, once publishing starts
    let (t0_tx, t0_rx) = tokio::sync::oneshot::channel::<Instant>();
    let want = files;
    let receiving = tokio::spawn(async move {
        let mut out = Vec::new();
        let first = std::sync::OnceLock::new();
        let begun = Instant::now();
        let done = |o: &[Outcome]| o.iter().filter(|o| !matches!(o, Outcome::Failed { .. })).count();
        // the first file's progress line says it was delivered
        let note = |line: &str| {
            if line.contains(": delivered") {
                let _ = first.set(Instant::now());
            }
        };
        while done(&out) < want && begun.elapsed() < LIMIT {
            out.extend(receiver.receive(5, &note).await?);
        }
        let first = first.get().copied();
        let t0 = t0_rx.await.unwrap_or(started);
        let last = Instant::now();
        anyhow::Ok((out, first.map(|f| f - t0), last - t0, receiver.receive_times()))
    });
    // publish only once the long-poll waits
    let t = Instant::now();
    while c.comms.state.metrics.waiting() == 0 {
        if t.elapsed() > Duration::from_secs(30) {
            bail!("the Connector's long-poll never started");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let m = &c.comms.state.metrics;
    let base = (
        m.downstream_calls("announce"),
        c.comms.state.apps.sftp_logins(),
        c.comms.state.apps.api_calls(),
        m.ssh_logins(),
        m.downstream_calls("list"),
        m.downstream_calls("ack"),
    );

    let t0 = Instant::now();
    let sftp_root = c.app.state.sftp_root();
    for name in &names {
        ferry_app::outbox::publish(&inst.0, TENANT, &sftp_root, &src_dir.join(name), name).await?;
    }
    c.app.state.announce_wakeup.notify_one();
    let publish = t0.elapsed();
    let _ = t0_tx.send(t0);
    let (outcomes, first, all, steps) = receiving.await.context("the receiving task failed")??;

    let delivered = async || {
        ferry_app::outbox::receipts(&inst.0)
            .await
            .is_ok_and(|r| r.len() == files && r.iter().all(|f| f.state == ferry_proto::api::FileState::Delivered))
    };
    let mut receipts = None;
    while t0.elapsed() < all + Duration::from_secs(60) {
        if delivered().await {
            receipts = Some(t0.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let figures = Figures {
        files,
        publish,
        first: first.unwrap_or(all),
        all,
        outcomes,
        announce_calls: m.downstream_calls("announce") - base.0,
        app_logins: c.comms.state.apps.sftp_logins() - base.1,
        app_calls: c.comms.state.apps.api_calls() - base.2,
        connector_logins: m.ssh_logins() - base.3,
        list_calls: m.downstream_calls("list") - base.4,
        ack_calls: m.downstream_calls("ack") - base.5,
        receipts,
        steps,
    };
    check_inbound(&conn.cfg.base.join("from_cloud"), &src_dir, &names, &figures)?;
    Ok(figures)
}

/// Every file delivered once, byte for byte, and nothing else in the inbound folder.
fn check_inbound(inbound: &Path, src: &Path, names: &[String], f: &Figures) -> anyhow::Result<()> {
    let applied: Vec<&str> = f
        .outcomes
        .iter()
        .filter_map(|o| match o {
            Outcome::Applied { name, .. } => Some(name.as_str()),
            _ => None,
        })
        .collect();
    if applied.len() != names.len() {
        bail!("{} files applied of {} (outcomes: {:?})", applied.len(), names.len(), f.outcomes);
    }
    let mut seen = std::collections::HashSet::new();
    for n in &applied {
        if !seen.insert(*n) {
            bail!("{n} was applied twice");
        }
    }
    let there = std::fs::read_dir(inbound)?.count();
    if there != names.len() {
        bail!("{there} files in {} for {} published", inbound.display(), names.len());
    }
    for n in names {
        let (got, sent) = (std::fs::read(inbound.join(n)), std::fs::read(src.join(n))?);
        if got.ok().as_ref() != Some(&sent) {
            bail!("{n} in the inbound folder differs from what the App published");
        }
    }
    Ok(())
}

/// `ferry bench downstream`: run [`measure`] `runs` times and print each run's figures.
pub async fn run(files: usize, runs: u32, dir: Option<std::path::PathBuf>) -> anyhow::Result<std::process::ExitCode> {
    if files == 0 {
        bail!("--files must be at least 1");
    }
    let (tmp, dir) = super::work_dir(dir)?;
    println!("ferry bench downstream --files {files} --runs {runs} in {}", dir.display());
    println!("load average {}", super::measure::load_average());
    for run in 1..=runs {
        let f = measure(&dir.join(format!("run{run}")), files).await?;
        let secs = |d: Duration| format!("{:.2}", d.as_secs_f64());
        println!();
        println!("run {run}: {files} order files published -> delivered into the Connector's inbound folder");
        println!("  all delivered       {} s (first after {} s)", secs(f.all), secs(f.first));
        println!("  of which publishing {} s (the App writing its outbox)", secs(f.publish));
        match f.receipts {
            Some(r) => println!("  App saw delivered   {} s", secs(r)),
            None => println!("  App saw delivered   not within 60 s of the last delivery"),
        }
        println!("  App -> Comms        {} announce calls", f.announce_calls);
        println!("  Comms -> App        {} SFTP logins, {} calls (progress)", f.app_logins, f.app_calls);
        println!(
            "  Connector -> Comms  {} SFTP logins, {} list calls, {} ack calls",
            f.connector_logins, f.list_calls, f.ack_calls
        );
        let s = &f.steps;
        println!("  Connector's steps   {} files delivered; time in each step, summed:", s.files);
        println!("    waiting for downloads {} s (download + decompress + verify, fetched ahead)", secs(s.fetch_wait));
        println!("    inbound copy          {} s (written and synced as a hidden part file)", secs(s.delivery.stage));
        println!("    SQL write-back        {} s (one ERP connection per page)", secs(s.delivery.write_back));
        println!("    inbound rename        {} s", secs(s.delivery.publish));
        println!("    journal               {} s in {} commits", secs(s.journal), s.journal_commits);
        println!("    ack calls             {} s", secs(s.ack));
    }
    println!();
    println!("load average {}", super::measure::load_average());
    if tmp.is_some() {
        println!("removing {}", dir.display());
    }
    Ok(std::process::ExitCode::SUCCESS)
}
