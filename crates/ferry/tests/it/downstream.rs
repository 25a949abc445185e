//! Downstream end to end against real servers: the planner's orders reach the ERP's inbound folder and an ERP
//! table exactly once; a lost ack never re-applies; long-poll delivers within seconds; tenants never see each
//! other's files; a corrupt file is refused, reported and fetched again.

use std::time::{Duration, Instant};

use crate::common::*;
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
    sqlx::query("UPDATE downloads SET state = 'relayed' WHERE file_id = ?")
        .bind(f.file_id.as_str())
        .execute(&c.comms.state.db)
        .await
        .unwrap();
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
    let good = std::fs::read(&path).unwrap();
    let mut bad = Vec::new();
    {
        use std::io::Write;
        let mut w = ferry_io::bz::ParallelBzWriter::new(&mut bad, 9, 1);
        w.write_all(PO.replace("24", "99").as_bytes()).unwrap();
        w.finish().unwrap();
    }
    std::fs::write(&path, &bad).unwrap();
    let out = a.receive(0, &quiet).await.unwrap();
    assert!(matches!(&out[..], [Outcome::Failed { .. }]), "{out:?}");
    assert!(!a.cfg.base.join("from_cloud/po_000001.csv").exists());
    assert_eq!(erp_rows(&dir.path().join("a.db")).await, 0);
    let err = ferry_comms::db::download_error(&c.comms.state.db, "alpha", &f.file_id).await.unwrap().unwrap();
    assert!(err.contains("connector:"), "{err}");
    // Fixed at the source: the next poll fetches it again and delivers it once.
    std::fs::write(&path, &good).unwrap();
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
