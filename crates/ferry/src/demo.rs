//! `ferry demo`: the whole system on loopback with embedded defaults. Generates a sample distributor ERP,
//! starts App and Comms servers, adds a tenant, sets up and registers a Connector, runs one upstream sync and
//! prints what arrived; then releases the App's first plan as a buyer would and delivers the orders to the ERP. Exit status 0 only if the batch was imported and every file's rows arrived.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use ferry_proto::api::BatchState;
use ferry_proto::spec;
use ferry_sample::{SampleSize, generate_sample_erp};

use crate::cluster::Cluster;

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Working folder (default: a fresh temporary folder, removed afterwards unless --keep-running).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Leave the servers running after the cycle (Ctrl-C to stop).
    #[arg(long)]
    pub keep_running: bool,
    /// Sample ERP size: small (~300 items) or medium (~3,000 items, millions of sales lines).
    #[arg(long, default_value = "small")]
    pub size: String,
}

pub fn parse_size(s: &str) -> anyhow::Result<SampleSize> {
    s.parse().map_err(anyhow::Error::msg)
}

pub async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let size = parse_size(&args.size)?;
    let tmp;
    let dir = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            tmp = tempfile::Builder::new().prefix("ferry-demo-").tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    println!("ferry demo in {}", dir.display());

    let t = Instant::now();
    let erp = dir.join("erp").join("erp.db");
    std::fs::create_dir_all(erp.parent().unwrap_or(&dir))?;
    if erp.exists() {
        std::fs::remove_file(&erp)?;
    }
    let summary = generate_sample_erp(&erp, size).await.context("generating the sample ERP")?;
    println!("[1/6] sample ERP generated in {:.2}s: {summary:?}", t.elapsed().as_secs_f64());

    let cluster = Cluster::start(&dir).await?;
    println!("[2/6] app server  https://{}  sftp {}", cluster.app.https_addr, cluster.app.ssh_addr);
    println!("      comms server https://{}  sftp {}", cluster.comms.https_addr, cluster.comms.ssh_addr);

    let tenant = "demo-distributor";
    let token = cluster.add_tenant(tenant).await?;
    println!("[3/6] tenant {tenant} added; registration token {}…", &token[..token.len().min(24)]);

    let connector = cluster.connector_with_write_back(tenant, &erp, &token).await?;
    println!("[4/6] connector initialised and registered (key {})", connector.key_fingerprint());

    println!("[5/6] sync (upstream)");
    let report = connector.sync(&|line: &str| println!("      {line}")).await?;
    let inst = cluster.app.state.instance(tenant).await?.context("the tenant's instance is missing")?;

    println!();
    println!(
        "{:<18} {:>10} {:>10} {:>12} {:>10}  md5 (plain csv)",
        "file", "rows sent", "imported", "csv bytes", "bz2 bytes"
    );
    let mut all_match = true;
    for f in &report.manifest.files {
        let imported = match spec::file_spec(&f.name) {
            Some(s) => inst.0.count_rows(s.table).await.unwrap_or(0),
            None => 0,
        };
        all_match &= imported == f.rows;
        println!(
            "{:<18} {:>10} {:>10} {:>12} {:>10}  {}",
            f.name, f.rows, imported, f.bytes, f.compressed_bytes, f.md5
        );
    }
    let tm = &report.timings;
    let mb = report.manifest.files.iter().map(|f| f.bytes).sum::<u64>() as f64 / 1e6;
    println!();
    println!(
        "stages: extract+compress {:.2}s ({:.1} MB csv) | upload {:.2}s ({} bytes) | relay+verify+import {:.2}s",
        tm.extract.as_secs_f64(),
        mb,
        tm.upload.as_secs_f64(),
        report.bytes_sent,
        tm.relay_import.as_secs_f64()
    );
    let ok = report.status.state == BatchState::Imported && all_match;
    match report.status.state {
        BatchState::Imported => println!(
            "batch {} imported: MD5 and SHA-256 of every file verified by the App server",
            report.status.batch_id
        ),
        s => println!(
            "batch {} {}: {}",
            report.status.batch_id,
            s.as_str(),
            report.status.detail.as_deref().unwrap_or("")
        ),
    }
    // Downstream: the App planned after the import; under the default `review` policy nothing goes down until a
    // buyer releases, so the demo releases the first plan as a buyer would (the web page's code path).
    println!();
    println!("[6/6] downstream: the App planned after the import; a buyer releases the plan; the orders travel back");
    let t = Instant::now();
    let mut plan = None;
    while t.elapsed() < std::time::Duration::from_secs(60) {
        plan = ferry_app::release::current_plan(&inst.0).await?;
        if plan.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let plan = plan.context("the App made no plan within 60 s of the import")?;
    let policy = ferry_app::release::policy(&inst.0).await?;
    println!("      plan {}: {} recommended lines, release policy {policy}", plan.id, plan.lines);
    if policy == ferry_app::release::Policy::Review {
        let ids = ferry_app::release::proposed_ids(&inst.0, plan.id).await?;
        if !ids.is_empty() {
            let today = chrono::Utc::now().date_naive();
            let sftp_root = cluster.app.state.sftp_root();
            let released = ferry_app::release::release(&inst.0, tenant, &sftp_root, &ids, "demo buyer", today).await?;
            cluster.app.state.announce_wakeup.notify_one();
            for r in &released {
                println!("      released {} to supplier {}: {} lines", r.file_name, r.supplier, r.lines);
            }
        }
    }
    let mut receipts = Vec::new();
    while t.elapsed() < std::time::Duration::from_secs(60) {
        receipts = ferry_app::outbox::receipts(&inst.0).await?;
        if !receipts.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let mut delivered = 0;
    while delivered < receipts.len() && t.elapsed() < std::time::Duration::from_secs(120) {
        for o in connector.receive(5, &|l: &str| println!("      {l}")).await? {
            if let ferry_connector::receive::Outcome::Applied { name, inbound, sql_rows } = o {
                delivered += 1;
                let at = inbound.map(|p| p.display().to_string()).unwrap_or_default();
                println!("      {name}: {sql_rows} rows into ERP table recommended_orders, file at {at}");
            }
        }
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    for r in ferry_app::outbox::receipts(&inst.0).await? {
        let at = r.delivered_at.map(|d| d.format("%H:%M:%S%.3f").to_string()).unwrap_or_else(|| "-".into());
        println!("      app receipt: {} {} (delivered at {at})", r.name, r.state.as_str());
    }
    println!(
        "downstream: {delivered}/{} order files delivered in {:.2}s after the import",
        receipts.len(),
        t.elapsed().as_secs_f64()
    );
    let ok = ok && !receipts.is_empty() && delivered == receipts.len();

    if args.keep_running {
        // a buyer of the demo tenant, to try the web page
        let users = ferry_app::web::users::Users::open(&cluster.app.state.cfg.data_dir).await?;
        let email = "buyer@demo.example";
        let password = ferry_app::web::users::random_token()[..16].to_string();
        let token = users.add(tenant, email).await?;
        users.set_password(&token, &password).await?;
        users.close().await;
        if let Some(url) = cluster.app.web_url() {
            println!("buyer's web page: {url}/login  (self-signed certificate: accept it in the browser)");
            println!("      log in as {email} with password {password}");
        }
        println!("servers keep running (Ctrl-C to stop); data in {}", dir.display());
        let _ = tokio::signal::ctrl_c().await;
    }
    cluster.stop().await;
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
