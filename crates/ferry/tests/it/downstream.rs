//! Downstream end to end against real servers: the planner's orders reach the ERP's inbound folder and an ERP
//! table exactly once; a lost ack never re-applies; long-poll delivers within seconds; tenants never see each
//! other's files; a corrupt file is refused, reported and fetched again.

use std::time::{Duration, Instant};

use crate::common::*;
use crate::procs::{query, run_sql};
use ferry::cluster::Cluster;
use ferry_connector::agent::Connector;
use ferry_connector::receive::Outcome;
use ferry_proto::api::{BatchState, FileState};
use ferry_sample::{SampleSize, generate_sample_erp};
use sqlx::Connection;

/// A connector whose config delivers into `from_cloud/` and writes `po_` files into `recommended_orders`; the
/// tenant's plans are released as soon as they are made (`auto`; `release.rs` tests the buyer's `review`).
async fn connector_with_write_back(c: &Cluster, tenant: &str, erp: &std::path::Path) -> Connector {
    let token = c.add_tenant(tenant).await.unwrap();
    let inst = c.app.state.instance(tenant).await.unwrap().unwrap();
    ferry_app::release::set_policy(&inst.0, ferry_app::release::Policy::Auto).await.unwrap();
    c.connector_with_write_back(tenant, erp, &token).await.unwrap()
}

async fn erp_rows(erp: &std::path::Path) -> i64 {
    let mut db = sqlx::SqliteConnection::connect(&format!("sqlite:{}", erp.display())).await.unwrap();
    sqlx::query_scalar("SELECT COUNT(*) FROM recommended_orders").fetch_one(&mut db).await.unwrap()
}

/// Receive until `n` files were applied (or time runs out).
async fn receive_applied(conn: &Connector, n: usize) -> Vec<Outcome> {
    let mut all = Vec::new();
    let t = Instant::now();
    while all.iter().filter(|o| matches!(o, Outcome::Applied { .. })).count() < n
        && t.elapsed() < Duration::from_secs(60)
    {
        all.extend(conn.receive(5, &quiet).await.expect("receive"));
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn planned_orders_reach_the_erp_once_and_the_app_sees_them_delivered() {
    let (dir, c) = cluster().await;
    let erp = dir.path().join("erp.db");
    generate_sample_erp(&erp, SampleSize::Small).await.unwrap();
    let conn = connector_with_write_back(&c, "acme", &erp).await;
    let r = conn.sync(&quiet).await.unwrap();
    assert_eq!(r.status.state, BatchState::Imported);

    // The App plans after the import and publishes one po file per supplier of the plan: the same plan, made
    // here, says how many to wait for.
    let inst = c.app.state.instance("acme").await.unwrap().unwrap();
    let mut params = ferry_app::planner::PlanParams::new(chrono::Utc::now().date_naive());
    params.service_level = c.app.state.cfg.service_level;
    let plan = ferry_app::planner::plan(&inst.0, &params).await.unwrap();
    let suppliers = plan.lines.iter().map(|l| &l.supplier).collect::<std::collections::BTreeSet<_>>().len();
    assert!(suppliers > 0, "the planner produced no orders for the sample ERP");
    let all_published = async || ferry_app::outbox::receipts(&inst.0).await.unwrap().len() == suppliers;
    assert!(eventually(Duration::from_secs(60), all_published).await.is_some(), "not {suppliers} files published");
    let receipts = ferry_app::outbox::receipts(&inst.0).await.unwrap();
    let outcomes = receive_applied(&conn, receipts.len()).await;
    let applied: Vec<_> = outcomes.iter().filter(|o| matches!(o, Outcome::Applied { .. })).collect();
    assert_eq!(applied.len(), receipts.len(), "{outcomes:?}");

    // Inbound folder holds exactly what the planner wrote; the ERP table holds every order line.
    let inbound = conn.cfg.base.join("from_cloud");
    let mut lines = 0;
    for r in &receipts {
        let produced = c.app.state.cfg.data_dir.join("sftp/acme/outbox").join(r.file_id.as_str()).join(&r.name);
        let delivered = inbound.join(&r.name);
        assert_eq!(std::fs::read(&delivered).unwrap(), std::fs::read(&produced).unwrap(), "{}", r.name);
        lines += std::fs::read_to_string(&delivered).unwrap().lines().count() - 1;
    }
    assert!(std::fs::read_dir(&inbound).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().starts_with('.')));
    assert_eq!(erp_rows(&erp).await, lines as i64);

    // The App sees every file delivered.
    let delivered = async || {
        let r = ferry_app::outbox::receipts(&inst.0).await.unwrap();
        r.iter().all(|f| f.state == FileState::Delivered && f.delivered_at.is_some())
    };
    if eventually(Duration::from_secs(30), delivered).await.is_none() {
        panic!("not all delivered: {:?}", ferry_app::outbox::receipts(&inst.0).await.unwrap());
    }
    c.stop().await;
}

async fn publish(c: &Cluster, tenant: &str, name: &str, text: &str) -> ferry_proto::api::FileReady {
    let inst = c.app.state.instance(tenant).await.unwrap().unwrap();
    let src = c.dir.join(format!("src-{name}"));
    std::fs::write(&src, text).unwrap();
    let f = ferry_app::outbox::publish(&inst.0, tenant, &c.app.state.sftp_root(), &src, name).await.unwrap();
    c.app.state.announce_wakeup.notify_one();
    f
}

const PO: &str = "order_number,line,item,location,supplier,qty,unit_cost,order_date,due_date,comment\nREC-1,1,A1,L1,S1,24,1.20,2026/11/28,2026/12/05,\"rop=3, ss=1\"\nREC-1,2,B2,L1,S1,10,0.40,2026/11/28,2026/12/05,\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_ack_never_applies_twice_and_long_poll_is_fast() {
    let (dir, c) = cluster().await;
    let erp = dir.path().join("erp.db");
    let conn = connector_with_write_back(&c, "acme", &erp).await;

    // Long-poll: the connector is already waiting when the file is published (its request watches the download
    // lists).
    let watchers = c.comms.state.downloads_changed.receiver_count();
    let waiting = {
        let conn = Connector::load(&conn.cfg.base.join("connector.toml")).unwrap();
        tokio::spawn(async move { conn.receive(20, &quiet).await })
    };
    let polling = async || c.comms.state.downloads_changed.receiver_count() > watchers;
    assert!(eventually(Duration::from_secs(10), polling).await.is_some(), "the long-poll never started");
    let t = Instant::now();
    let f = publish(&c, "acme", "po_000001.csv", PO).await;
    let out = waiting.await.unwrap().unwrap();
    let took = t.elapsed();
    assert!(matches!(&out[..], [Outcome::Applied { .. }]), "{out:?}");
    assert!(took < Duration::from_secs(2), "long-poll delivery took {took:?}");
    assert_eq!(erp_rows(&erp).await, 2);

    // The ack is lost: Comms still offers the file. The connector acknowledges again but does not re-apply.
    ferry_comms::db::on!(&c.comms.state.db, p => {
        sqlx::query("UPDATE downloads SET state = 'relayed' WHERE file_id = $1")
            .bind(f.file_id.as_str())
            .execute(p)
            .await
            .unwrap();
    });
    let conn2 = Connector::load(&conn.cfg.base.join("connector.toml")).unwrap(); // "restarted"
    let out = conn2.receive(0, &quiet).await.unwrap();
    assert_eq!(out, vec![Outcome::AlreadyApplied { name: "po_000001.csv".into() }]);
    assert_eq!(erp_rows(&erp).await, 2);
    let row = ferry_comms::db::download(&c.comms.state.db, "acme", &f.file_id).await.unwrap().unwrap();
    assert_eq!(row.state, FileState::Delivered);
    assert!(conn2.receive(0, &quiet).await.unwrap().is_empty());
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tenants_never_see_or_ack_each_others_files_and_corrupt_files_are_refetched() {
    let (dir, c) = cluster().await;
    let a = connector_with_write_back(&c, "alpha", &dir.path().join("a.db")).await;
    let b = connector_with_write_back(&c, "beta", &dir.path().join("b.db")).await;
    let f = publish(&c, "alpha", "po_000001.csv", PO).await;
    // Wait until alpha's file is on alpha's list.
    let listed = async || !ferry_comms::db::ready_downloads(&c.comms.state.db, "alpha").await.unwrap().is_empty();
    assert!(eventually(Duration::from_secs(20), listed).await.is_some(), "alpha's file is not on its list");
    // Beta sees nothing and cannot acknowledge alpha's file.
    assert!(b.receive(1, &quiet).await.unwrap().is_empty());
    let err = b
        .api()
        .unwrap()
        .post::<_, serde_json::Value>(
            &format!("/v1/files/{}/ack", f.file_id),
            &ferry_proto::api::FileAck { sha256: f.sha256.clone() },
        )
        .await
        .expect_err("beta acking alpha's file");
    assert_eq!(err.status(), Some(404));

    // Corrupt the compressed file at Comms: a valid bzip2 of other content.
    let path = ferry_comms::tenant_sftp_root(&c.comms.state.cfg.data_dir, "alpha")
        .join("download")
        .join(f.file_id.as_str())
        .join("po_000001.csv.bz2");
    // (in the object store under FERRY_TEST_COMMS_STORAGE=s3)
    let store = c.comms.state.files.bucket().map(|b| {
        let key = ferry_comms::store::sftp_key(b, "alpha", &["download", f.file_id.as_str(), "po_000001.csv.bz2"]);
        (b.clone(), key)
    });
    let read = async || match &store {
        Some((b, key)) => {
            use object_store::ObjectStoreExt;
            b.os.get(key).await.unwrap().bytes().await.unwrap().to_vec()
        }
        None => std::fs::read(&path).unwrap(),
    };
    let write = async |data: &[u8]| match &store {
        Some((b, key)) => {
            use object_store::ObjectStoreExt;
            b.os.put(key, object_store::PutPayload::from(data.to_vec())).await.unwrap();
        }
        None => std::fs::write(&path, data).unwrap(),
    };
    let good = read().await;
    let mut bad = Vec::new();
    {
        use std::io::Write;
        let mut w = ferry_io::bz::ParallelBzWriter::new(&mut bad, 9, 1);
        w.write_all(PO.replace("24", "99").as_bytes()).unwrap();
        w.finish().unwrap();
    }
    write(&bad).await;
    let out = a.receive(0, &quiet).await.unwrap();
    assert!(matches!(&out[..], [Outcome::Failed { .. }]), "{out:?}");
    assert!(!a.cfg.base.join("from_cloud/po_000001.csv").exists());
    assert_eq!(erp_rows(&dir.path().join("a.db")).await, 0);
    let err = ferry_comms::db::download_error(&c.comms.state.db, "alpha", &f.file_id).await.unwrap().unwrap();
    assert!(err.contains("connector:"), "{err}");
    // Fixed at the source: the next poll fetches it again and delivers it once.
    write(&good).await;
    let out = a.receive(0, &quiet).await.unwrap();
    assert!(matches!(&out[..], [Outcome::Applied { .. }]), "{out:?}");
    assert_eq!(std::fs::read_to_string(a.cfg.base.join("from_cloud/po_000001.csv")).unwrap(), PO);
    assert_eq!(erp_rows(&dir.path().join("a.db")).await, 2);
    c.stop().await;
}

/// An App server for many tenants keeps only `max_open_instances` open, and a file published by another process
/// (`ferry app publish` opens the instance itself and cannot wake the server) still reaches the download list.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_tenants_keep_few_instances_open_and_files_published_elsewhere_are_announced() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cluster::start_with(dir.path(), |a| a.max_open_instances = 2, |_| {}).await.unwrap();
    let tenants = ["t1", "t2", "t3", "t4", "t5"];
    for t in tenants {
        c.add_tenant(t).await.unwrap();
        assert!(c.app.state.open_instances().await <= 2);
    }
    // Another process publishes to t1 (long closed by now), straight into the instance file.
    let other = ferry_app::instance::Instance::open(&c.app.state.instance_path("t1")).await.unwrap();
    let src = c.dir.join("src-po");
    std::fs::write(&src, PO).unwrap();
    let f = ferry_app::outbox::publish(&other, "t1", &c.app.state.sftp_root(), &src, "po_000001.csv").await.unwrap();
    other.close().await;
    let announced = async || {
        let ready = ferry_comms::db::ready_downloads(&c.comms.state.db, "t1").await.unwrap();
        ready.iter().any(|d| d.id == f.file_id)
    };
    let took = eventually(Duration::from_secs(10), announced).await;
    let took = took.expect("the file published by another process was not announced");
    println!("announced after {took:?}");
    assert!(c.app.state.open_instances().await <= 2);
    assert!(!c.app.state.cfg.data_dir.join("instances/announce/t1").exists(), "the marker is consumed");
    // every tenant's instance still answers (closed ones are opened again)
    for t in tenants {
        let inst = c.app.state.instance(t).await.unwrap().expect("instance");
        ferry_app::outbox::receipts(&inst.0).await.unwrap();
    }
    for t in ["t2", "t3", "t4", "t5"] {
        assert!(ferry_comms::db::ready_downloads(&c.comms.state.db, t).await.unwrap().is_empty(), "{t}");
    }
    c.stop().await;
}

/// A crash after the ERP committed a file's write-back but before the Connector journaled it: with
/// `ledger_table`, the next attempt finds the file in the ERP's ledger and acknowledges it without writing it back
/// a second time (the table has no key that would refuse a repeat).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_between_the_erp_commit_and_the_journal_applies_nothing_twice_with_a_ledger() {
    let (dir, c) = cluster().await;
    let erp = dir.path().join("erp.db");
    let conn = connector_with_write_back(&c, "acme", &erp).await;
    let cfg_path = conn.cfg.base.join("connector.toml");
    let text = std::fs::read_to_string(&cfg_path).unwrap();
    let text = text.replace("\n[delivery]\n", "\n[delivery]\nledger_table = \"ferry_applied\"\n");
    assert!(text.contains("ledger_table"));
    std::fs::write(&cfg_path, text).unwrap();
    let conn = Connector::load(&cfg_path).unwrap();
    let f = publish(&c, "acme", "po_000001.csv", PO).await;

    // What the crashed attempt left: the ERP committed this file (same content, same id), the journal has nothing.
    let copy = dir.path().join("crashed-copy.csv");
    std::fs::write(&copy, PO).unwrap();
    let mut erp_cfg = conn.cfg.erp.clone();
    erp_cfg.url = conn.cfg.erp_url();
    let delivery = ferry_connector::delivery::DeliveryConfig { inbound_dir: None, ..conn.cfg.delivery.clone() };
    let id = Some(f.file_id.as_str());
    let r = ferry_connector::delivery::deliver_file(&delivery, Some(&erp_cfg), &copy, "po_000001.csv", id);
    assert_eq!(r.await.unwrap().sql_rows, 2);

    let mut out = Vec::new();
    let t = Instant::now();
    while out.is_empty() && t.elapsed() < Duration::from_secs(30) {
        out.extend(conn.receive(5, &quiet).await.expect("receive"));
    }
    assert!(matches!(&out[..], [Outcome::AlreadyApplied { name }] if name == "po_000001.csv"), "{out:?}");
    assert_eq!(erp_rows(&erp).await, 2, "the order lines are in the ERP once");
    assert_eq!(std::fs::read_to_string(conn.cfg.base.join("from_cloud/po_000001.csv")).unwrap(), PO);
    assert!(ferry_comms::db::ready_downloads(&c.comms.state.db, "acme").await.unwrap().is_empty(), "acknowledged");
    // nothing more is offered or applied
    assert!(conn.receive(1, &quiet).await.unwrap().is_empty());
    assert_eq!(erp_rows(&erp).await, 2);
    c.stop().await;
}

/// `[delivery] date_format = "iso"`: the order file reaches the inbound folder with ISO dates and every other byte
/// as the App wrote it, the size and SHA-256 having been checked on the file as received; the command gets the
/// file's absolute path as `{file}` and its id as `{id}` and `FERRY_FILE_ID`. Without an inbound folder the
/// command gets an ISO copy, removed afterwards. The SQL write-back binds the values as received.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn iso_dates_reach_the_inbound_folder_and_the_command_gets_an_absolute_file_and_the_id() {
    use crate::procs::{edit_toml, section};
    use sha2::Digest;
    let (dir, c) = cluster().await;
    let erp = dir.path().join("erp.db");
    let conn = connector_with_write_back(&c, "acme", &erp).await;
    let cfg_path = conn.cfg.base.join("connector.toml");
    let calls = dir.path().join("calls.txt");
    let copies = dir.path().join("copies");
    std::fs::create_dir_all(&copies).unwrap();
    // the command records its arguments and environment and keeps a copy of what it was given
    let script = format!(
        "printf '%s|%s|%s\\n' \"$1\" \"$2\" \"$FERRY_FILE_ID\" >> '{}' && cp \"$1\" '{}'/\"$2\"",
        calls.display(),
        copies.display()
    );
    edit_toml(&cfg_path, |t| {
        let d = section(t, "delivery");
        d.insert("date_format".into(), "iso".into());
        let argv = ["/bin/sh", "-c", &script, "sh", "{file}", "{id}"];
        d.insert("command".into(), toml::Value::Array(argv.iter().map(|a| (*a).into()).collect()));
    });
    let conn = Connector::load(&cfg_path).unwrap();
    let iso_po = PO.replace("2026/11/28", "2026-11-28").replace("2026/12/05", "2026-12-05");
    assert_ne!(iso_po, PO);

    let f = publish(&c, "acme", "po_000001.csv", PO).await;
    // the file list promises the bytes the App wrote; they are what was checked
    assert_eq!(f.sha256, hex::encode(sha2::Sha256::digest(PO.as_bytes())));
    let out = receive_applied(&conn, 1).await;
    assert!(matches!(&out[..], [Outcome::Applied { .. }]), "{out:?}");
    let inbound = conn.cfg.base.join("from_cloud").join("po_000001.csv");
    assert_eq!(std::fs::read_to_string(&inbound).unwrap(), iso_po, "ISO dates, every other byte unchanged");
    let id = f.file_id.as_str();
    let lines = std::fs::read_to_string(&calls).unwrap();
    let call: Vec<&str> = lines.lines().next().unwrap().split('|').collect();
    assert!(std::path::Path::new(call[0]).is_absolute(), "{{file}} is not absolute: {lines}");
    assert_eq!(std::path::Path::new(call[0]), inbound.as_path(), "{{file}} is the inbound copy");
    assert_eq!(call[1..], [id, id], "{{id}} and FERRY_FILE_ID are the file's id");
    assert_eq!(std::fs::read_to_string(copies.join(id)).unwrap(), iso_po);
    let due = crate::procs::query(&erp, "SELECT DISTINCT due_date FROM recommended_orders");
    assert_eq!(due, vec![vec!["2026/12/05".to_string()]], "the SQL write-back binds the values as received");

    // No inbound folder: the command gets an absolute path to an ISO copy, which is gone afterwards.
    edit_toml(&cfg_path, |t| {
        section(t, "delivery").remove("inbound_dir");
    });
    let conn = Connector::load(&cfg_path).unwrap();
    let f2 = publish(&c, "acme", "po_000002.csv", PO).await;
    let out = receive_applied(&conn, 1).await;
    assert!(matches!(&out[..], [Outcome::Applied { inbound: None, .. }]), "{out:?}");
    let lines = std::fs::read_to_string(&calls).unwrap();
    let call: Vec<&str> = lines.lines().nth(1).unwrap().split('|').collect();
    let id2 = f2.file_id.as_str();
    assert!(std::path::Path::new(call[0]).is_absolute() && call[0].ends_with("/po_000002.csv"), "{lines}");
    assert_eq!(call[1..], [id2, id2]);
    assert_eq!(std::fs::read_to_string(copies.join(id2)).unwrap(), iso_po);
    assert!(!std::path::Path::new(call[0]).exists(), "the ISO copy is removed after the command");
    let incoming = conn.cfg.data_dir().join("incoming");
    let left: Vec<_> = std::fs::read_dir(&incoming).map(|d| d.map(|e| e.unwrap().path()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "left behind: {left:?}");
    c.stop().await;
}

/// Runs `run` in this process until the returned sender is dropped or sent; its log lines are collected.
fn start_run(
    conn: Connector,
) -> (tokio::sync::oneshot::Sender<()>, std::sync::Arc<std::sync::Mutex<Vec<String>>>, tokio::task::JoinHandle<()>) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let l = lines.clone();
    let log: std::sync::Arc<dyn Fn(&str) + Send + Sync> = std::sync::Arc::new(move |s: &str| {
        println!("run: {s}");
        l.lock().unwrap().push(s.to_string());
    });
    let task = tokio::spawn(async move {
        let shutdown = async move {
            let _ = stopped.await;
        };
        std::sync::Arc::new(conn).run(shutdown, log).await.expect("run");
    });
    (stop, lines, task)
}

fn sent_batches(conn: &Connector) -> usize {
    if !conn.cfg.journal_path().exists() {
        return 0;
    }
    crate::procs::query(conn.cfg.journal_path(), "SELECT batch_id FROM batches WHERE state <> 'extracted'").len()
}

/// `sync` and `run` agree: after a manual `sync` today (past `daily_at`), `run` makes no second extract that day —
/// neither the journal nor the Comms server sees another batch; and `run` on a fresh install extracts at once, even
/// before the day's `daily_at`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_manual_sync_is_the_days_extract_for_run_and_a_fresh_install_extracts_at_start() {
    use crate::procs::{edit_toml, section};
    let (dir, c) = cluster().await;
    let erp = dir.path().join("erp.db");
    generate_sample_erp(&erp, SampleSize::Small).await.unwrap();
    let schedule = |conn: &Connector, at: &str| {
        let path = conn.cfg.base.join("connector.toml");
        edit_toml(&path, |t| {
            let s = section(t, "schedule");
            s.insert("daily_at".into(), at.into());
            s.insert("poll_wait_secs".into(), 1.into());
        });
        Connector::load(&path).unwrap()
    };

    // 1. `sync`, then `run` with today's daily_at passed: no second extract.
    let token = c.add_tenant("acme").await.unwrap();
    let conn = schedule(&c.connector("acme", &erp, &token).await.unwrap(), "00:00");
    let r = conn.sync(&quiet).await.unwrap();
    assert_eq!(r.status.state, BatchState::Imported);
    assert_eq!(sent_batches(&conn), 1);
    let (stop, lines, task) = start_run(Connector::load(&conn.cfg.base.join("connector.toml")).unwrap());
    // a file published now arrives through run's loop, so the extract check before each poll has run
    publish(&c, "acme", "rp_000901.csv", "a,b\n1,2\n").await;
    let arrived = async || conn.cfg.base.join("from_cloud/rp_000901.csv").exists();
    assert!(eventually(Duration::from_secs(30), arrived).await.is_some(), "run did not receive the file");
    tokio::time::sleep(Duration::from_secs(3)).await; // a few more polls (1 s each)
    stop.send(()).unwrap();
    task.await.unwrap();
    let log = lines.lock().unwrap().join("\n");
    assert!(log.contains("so today's is done"), "{log}");
    assert!(!log.contains("extracting batch") && !log.contains("daily sync"), "run extracted again:\n{log}");
    assert_eq!(sent_batches(&conn), 1, "the journal holds one extract");
    assert_eq!(conn.status(100).await.unwrap().len(), 1, "the Comms server saw one batch");

    // 2. A fresh install: `run` extracts at start, though today's daily_at is still ahead.
    let token = c.add_tenant("beta").await.unwrap();
    let later = (chrono::Local::now() + chrono::Duration::hours(2)).format("%H:%M").to_string();
    let fresh = schedule(&c.connector("beta", &erp, &token).await.unwrap(), &later);
    assert_eq!(sent_batches(&fresh), 0);
    let (stop, lines, task) = start_run(Connector::load(&fresh.cfg.base.join("connector.toml")).unwrap());
    let synced = async || lines.lock().unwrap().iter().any(|l| l.starts_with("daily sync: batch"));
    assert!(eventually(Duration::from_secs(120), synced).await.is_some(), "{:?}", lines.lock().unwrap());
    stop.send(()).unwrap();
    task.await.unwrap();
    let log = lines.lock().unwrap().join("\n");
    assert!(log.contains("no extract was sent yet: extracting now"), "{log}");
    assert!(log.contains("imported"), "{log}");
    assert_eq!(sent_batches(&fresh), 1);
    assert_eq!(fresh.status(100).await.unwrap().len(), 1);
    // ... and a restart the same day does not extract again
    let (stop, lines, task) = start_run(Connector::load(&fresh.cfg.base.join("connector.toml")).unwrap());
    let started = async || !lines.lock().unwrap().is_empty();
    assert!(eventually(Duration::from_secs(10), started).await.is_some());
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.send(()).unwrap();
    task.await.unwrap();
    let log = lines.lock().unwrap().join("\n");
    // ("today's is done" when `later` wrapped past midnight)
    assert!(log.contains("the next today at") || log.contains("today's is done"), "{log}");
    assert!(!log.contains("extracting batch"), "{log}");
    assert_eq!(sent_batches(&fresh), 1);
    c.stop().await;
}

/// More files waiting than one page of the download list (100): one `receive` delivers them all, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_receive_delivers_every_waiting_file_beyond_one_page() {
    let (dir, c) = cluster().await;
    let erp = dir.path().join("erp.db");
    let conn = connector_with_write_back(&c, "acme", &erp).await;
    const N: usize = 130;
    for i in 0..N {
        let name = format!("rp_{:06}.csv", 1000 + i);
        publish(&c, "acme", &name, &format!("n\n{i}\n")).await;
    }
    let relayed = async || {
        let n: i64 = ferry_comms::db::on!(&c.comms.state.db, p => {
            sqlx::query_scalar("SELECT COUNT(*) FROM downloads WHERE tenant = 'acme' AND state = 'relayed'")
                .fetch_one(p)
                .await
                .unwrap()
        });
        n as usize == N
    };
    assert!(eventually(Duration::from_secs(180), relayed).await.is_some(), "not all {N} files relayed");
    let logins = c.comms.state.metrics.ssh_logins();
    let out = conn.receive(0, &quiet).await.unwrap();
    // one SFTP session per page of the list, not a login per file
    let sessions = c.comms.state.metrics.ssh_logins() - logins;
    assert!((1..=2).contains(&sessions), "{sessions} SFTP logins for {N} files");
    let mut applied: Vec<&str> = out
        .iter()
        .filter_map(|o| match o {
            Outcome::Applied { name, .. } => Some(name.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(applied.len(), N, "{out:?}");
    applied.sort_unstable();
    let expected: Vec<String> = (0..N).map(|i| format!("rp_{:06}.csv", 1000 + i)).collect();
    assert_eq!(applied, expected, "each file once");
    let inbound = conn.cfg.base.join("from_cloud");
    assert_eq!(std::fs::read_to_string(inbound.join("rp_001129.csv")).unwrap(), "n\n129\n");
    assert!(conn.receive(0, &quiet).await.unwrap().is_empty(), "nothing left");
    c.stop().await;
}

/// Downstream at volume (issue 11): the 350 order files of one plan on the medium sample, published while the
/// Connector long-polls, all reach its inbound folder exactly once, byte for byte (`ferry bench downstream`'s
/// measurement, which checks the folder), in batches at every hop: a handful of SFTP logins and calls, not one
/// per file. The time is printed, not asserted (a benchmark figure).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_hundred_fifty_order_files_arrive_once_with_few_logins_and_calls_per_hop() {
    let dir = tempfile::tempdir().unwrap();
    const N: usize = 350;
    let f = ferry::bench::downstream::measure(dir.path(), N).await.expect("every file delivered once");
    println!("{N} files in {:?} (first after {:?}); {f:?}", f.all, f.first);
    let applied = f.outcomes.iter().filter(|o| matches!(o, Outcome::Applied { .. })).count();
    assert_eq!(applied, N);
    assert!(f.outcomes.iter().all(|o| matches!(o, Outcome::Applied { .. })), "{:?}", f.outcomes);
    // Connector -> Comms: one SFTP session and one ack call per page of the list (100 files), and the lists
    assert!(f.connector_logins <= 10, "{} Connector logins for {N} files", f.connector_logins);
    assert!(f.ack_calls <= 10, "{} ack calls for {N} files", f.ack_calls);
    // Comms -> App: the kept sessions and batched progress reports
    assert!(f.app_logins <= 4, "{} logins at the App for {N} files", f.app_logins);
    assert!(f.app_calls <= 30, "{} progress calls to the App for {N} files", f.app_calls);
    // App -> Comms: announcements of many files per call
    assert!(f.announce_calls < (N / 5) as u64, "{} announce calls for {N} files", f.announce_calls);
    assert!(f.receipts.is_some(), "the App heard of every file as delivered");
}

/// The single-file announcement body of earlier versions is still accepted, and a batched one answers per file:
/// a file over the tenant's size limit is refused by itself while the others are taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn announcements_take_one_file_or_many_and_refuse_files_one_by_one() {
    let (_dir, c) = cluster().await;
    c.add_tenant("acme").await.unwrap();
    let app = &c.app.state;
    let comms = ferry_app::downstream::comms_client(&app.cfg, &app.identity.service_key).unwrap().unwrap();
    let f1 = publish(&c, "acme", "rp_000001.csv", "a\n1\n").await;
    let one: serde_json::Value = comms.post("/v1/app/files", &f1).await.unwrap();
    assert_eq!(one["state"], "fetching", "{one}");
    assert_eq!(one["file_id"], f1.file_id.as_str());

    let f2 = publish(&c, "acme", "rp_000002.csv", "a\n2\n").await;
    let mut big = publish(&c, "acme", "rp_000003.csv", "a\n3\n").await;
    big.bytes = u64::MAX / 2;
    let mut ghost = f2.clone();
    ghost.tenant = "nobody".into();
    let body = ferry_proto::api::FilesReady { files: vec![f1.clone(), f2.clone(), big.clone(), ghost] };
    let many: ferry_proto::api::FilesAnnounced = comms.post("/v1/app/files", &body).await.unwrap();
    assert_eq!(many.accepted, vec![f1.file_id.clone(), f2.file_id.clone()], "{many:?}");
    assert_eq!(many.refused.len(), 2, "{many:?}");
    assert!(many.refused.iter().any(|r| r.file_id == big.file_id && r.error.contains("max_download_file_bytes")));
    assert!(many.refused.iter().any(|r| r.error.contains("no tenant")), "{many:?}");
    let too_many = ferry_proto::api::FilesReady { files: vec![f1.clone(); ferry_proto::api::MAX_FILES_PER_CALL + 1] };
    let err = comms.post::<_, serde_json::Value>("/v1/app/files", &too_many).await.expect_err("too many");
    assert_eq!(err.status(), Some(413));
    c.stop().await;
}

/// One pass delivers a page of files over one ERP connection and journals them together (issue 11): a file the
/// ERP refuses in the middle (a trigger) is reported and left for the next pass while the files before and after
/// it are delivered, each exactly once; with the refusal gone, the next pass delivers that file alone, and no
/// other is written back again (the ERP's ledger and order rows count every file once).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pass_with_a_refused_file_in_the_middle_delivers_the_others_once_and_retries_it() {
    let (dir, c) = cluster().await;
    let erp = dir.path().join("erp.db");
    let conn = connector_with_write_back(&c, "acme", &erp).await;
    let cfg_path = conn.cfg.base.join("connector.toml");
    let text = std::fs::read_to_string(&cfg_path).unwrap();
    std::fs::write(&cfg_path, text.replace("\n[delivery]\n", "\n[delivery]\nledger_table = \"ferry_applied\"\n"))
        .unwrap();
    let conn = Connector::load(&cfg_path).unwrap();
    assert!(ferry_connector::receive::group_applied(&conn.cfg.delivery), "a page is journaled in one commit");
    run_sql(
        &erp,
        "CREATE TRIGGER refuse_five BEFORE INSERT ON recommended_orders WHEN NEW.order_number = 'REC-000005'
         BEGIN SELECT RAISE(ABORT, 'order REC-000005 is locked by the ERP'); END",
    );
    const N: usize = 12;
    let names: Vec<String> = (1..=N).map(|i| format!("po_{i:06}.csv")).collect();
    for (i, name) in names.iter().enumerate() {
        publish(&c, "acme", name, &ferry::bench::downstream::order_file(i + 1, 2 + i % 3)).await;
    }
    let relayed = async || ferry_comms::db::ready_downloads(&c.comms.state.db, "acme").await.unwrap().len() == N;
    assert!(eventually(Duration::from_secs(120), relayed).await.is_some(), "not all {N} files relayed");

    let out = conn.receive(0, &quiet).await.unwrap();
    let failed: Vec<&str> = out
        .iter()
        .filter_map(|o| match o {
            Outcome::Failed { name, error } => {
                assert!(error.contains("locked by the ERP"), "{error}");
                Some(name.as_str())
            }
            _ => None,
        })
        .collect();
    assert_eq!(failed, ["po_000005.csv"], "{out:?}");
    let applied = out.iter().filter(|o| matches!(o, Outcome::Applied { .. })).count();
    assert_eq!(applied, N - 1, "{out:?}");
    let state = |name: &str| {
        query(conn.cfg.journal_path(), &format!("SELECT state FROM received WHERE name = '{name}'"))[0][0].clone()
    };
    for name in &names {
        assert_eq!(state(name), if name == "po_000005.csv" { "failed" } else { "acked" }, "{name}");
    }
    let lines = |order: usize| 2 + (order - 1) % 3;
    let rows_of = |order: usize| {
        query(&erp, &format!("SELECT COUNT(*) FROM recommended_orders WHERE order_number = 'REC-{order:06}'"))[0][0]
            .clone()
    };
    for order in 1..=N {
        let want = if order == 5 { 0 } else { lines(order) };
        assert_eq!(rows_of(order), want.to_string(), "rows of order {order} after the first pass");
    }
    assert!(!conn.cfg.base.join("from_cloud/po_000005.csv").exists(), "a refused file is not in the inbound folder");

    // the ERP takes it now: the next pass delivers the refused file, and only it
    run_sql(&erp, "DROP TRIGGER refuse_five");
    let mut again = Vec::new();
    let t = Instant::now();
    while again.is_empty() && t.elapsed() < Duration::from_secs(60) {
        again.extend(conn.receive(2, &quiet).await.unwrap());
    }
    assert!(matches!(&again[..], [Outcome::Applied { name, .. }] if name == "po_000005.csv"), "{again:?}");
    for order in 1..=N {
        assert_eq!(rows_of(order), lines(order).to_string(), "rows of order {order}: written back once");
    }
    assert_eq!(state("po_000005.csv"), "acked");
    let ledger = query(&erp, "SELECT COUNT(*), COUNT(DISTINCT file_id) FROM ferry_applied");
    assert_eq!(ledger, vec![vec![N.to_string(), N.to_string()]], "every file once in the ERP's ledger");
    for (i, name) in names.iter().enumerate() {
        let got = std::fs::read_to_string(conn.cfg.base.join("from_cloud").join(name)).unwrap();
        assert_eq!(got, ferry::bench::downstream::order_file(i + 1, 2 + i % 3), "{name}");
    }
    assert!(ferry_comms::db::ready_downloads(&c.comms.state.db, "acme").await.unwrap().is_empty(), "all acked");
    assert!(conn.receive(0, &quiet).await.unwrap().is_empty(), "nothing left");
    c.stop().await;
}
