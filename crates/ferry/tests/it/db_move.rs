//! `ferry comms db migrate --to postgres://...`: a Comms server that ran on SQLite (tenants, keys, batches,
//! downloads, limits, an operator, the audit log) is stopped, its metadata moved into an empty PostgreSQL
//! database with the command line, and started again on PostgreSQL: the data is there, the audit chain verifies,
//! a Connector syncs and receives. A second run into the now non-empty database is refused. Runs on the test
//! PostgreSQL (`FERRY_TEST_POSTGRES_URL`); skips without it, fails under `FERRY_CI=1`.

use std::time::Duration;

use crate::common::*;
use crate::comms_postgres::scratch_database;
use crate::procs::{ferry, ferry_output};
use ferry::cluster::Cluster;
use ferry_connector::agent::Connector;
use ferry_connector::receive::Outcome;
use ferry_proto::api::BatchState;
use ferry_sample::{SampleSize, generate_sample_erp};

const PO: &str = "order_number,line,item,location,supplier,qty,unit_cost,order_date,due_date,comment\nMOVE-1,1,A1,L1,S1,24,1.20,2026/11/28,2026/12/05,\n";

/// Sync once, publish an order file for the tenant, and receive until a downstream file is applied.
async fn sync_and_receive(c: &Cluster, tenant: &str, conn: &Connector, round: u32) {
    let r = conn.sync(&quiet).await.unwrap();
    assert_eq!(r.status.state, BatchState::Imported, "{tenant}: {:?}", r.status);
    let inst = c.app.state.instance(tenant).await.unwrap().unwrap();
    let (name, src) = (format!("po_90000{round}.csv"), c.dir.join(format!("src-{tenant}-{round}.csv")));
    std::fs::write(&src, PO).unwrap();
    ferry_app::outbox::publish(&inst.0, tenant, &c.app.state.sftp_root(), &src, &name).await.unwrap();
    c.app.state.announce_wakeup.notify_one();
    let mut applied = 0;
    let t = std::time::Instant::now();
    while applied == 0 && t.elapsed() < Duration::from_secs(120) {
        let out = conn.receive(5, &quiet).await.unwrap();
        applied += out.iter().filter(|o| matches!(o, Outcome::Applied { .. })).count();
    }
    assert!(applied > 0, "{tenant}: no downstream file applied");
}

async fn table_counts(db: &ferry_comms::db::Db) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    for t in ["tenants", "keys", "tokens", "batches", "downloads", "tenant_limits", "key_addresses", "operators"] {
        // fixed table names of this test only
        let sql = format!("SELECT count(*) FROM {t}");
        let n: i64 = ferry_comms::db::on!(db, p => {
            sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_one(p).await.unwrap()
        });
        out.push((t.to_string(), n));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sqlite_deployment_moves_to_postgres_and_goes_on() {
    let Some(database) = scratch_database().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let c = Cluster::start(dir.path()).await.unwrap();
    assert!(!c.comms.state.db.is_postgres());

    // a deployment with history: two tenants with keys, batches and downloads, a limit, an operator
    let mut conns = Vec::new();
    for t in ["acme", "beta"] {
        let erp = dir.path().join(format!("{t}-erp.db"));
        generate_sample_erp(&erp, SampleSize::Small).await.unwrap();
        let token = c.add_tenant(t).await.unwrap();
        let conn = c.connector_with_write_back(t, &erp, &token).await.unwrap();
        sync_and_receive(&c, t, &conn, 1).await;
        conns.push((t, conn));
    }
    let admin = c.admin().await.unwrap();
    admin.set_limits("beta", &[(ferry_comms::limits::Limit::MaxBatchFiles, Some(50))]).await.unwrap();
    ferry_comms::console::operators::add(&c.comms.state.db, "ops@example.com", "test").await.unwrap();
    let sqlite_db = c.comms.state.db.clone();
    let before = table_counts(&sqlite_db).await;
    let audit_before = ferry_comms::db::verify_audit(&sqlite_db).await.unwrap().expect("intact chain on SQLite");
    assert!(before.iter().all(|(t, n)| *n > 0 || t == "tokens"), "{before:?}");

    // the Comms server stopped (the App server keeps running), its config as a file for the command line
    let Cluster { dir: cdir, app, comms } = c;
    let mut cfg = comms.state.cfg.clone();
    let (https, ssh) = (comms.https_addr, comms.ssh_addr);
    comms.stop().await;
    let cfg_path = dir.path().join("comms.toml");
    std::fs::write(&cfg_path, toml::to_string(&cfg).unwrap()).unwrap();
    let cfg_arg = cfg_path.display().to_string();
    let mut args = vec!["comms", "db", "migrate", "--config", &cfg_arg, "--to", &database.url];
    if let Some(env) = &database.password_env {
        args.extend(["--password-env", env.as_str()]);
    }
    let out = ferry(&args);
    for want in ["tenants: 2 rows", "batches: 2 rows", "audit: ", "downloads: ", "app_servers: 1 rows", "[database]"] {
        assert!(out.contains(want), "{want:?} not in:\n{out}");
    }
    assert!(out.contains("audit chain verified"), "{out}");
    // the password is never printed
    if let Ok(pw) = std::env::var("FERRY_TEST_POSTGRES_PASSWORD") {
        assert!(!out.contains(&pw), "{out}");
    }
    // the target is no longer empty: a second run is refused, and changes nothing
    let again = ferry_output(&args);
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(!again.status.success() && err.contains("is not empty"), "{err}");

    // started again on PostgreSQL, on the same addresses
    cfg.database = database.clone();
    let listeners = ferry_comms::Listeners::Separate {
        https: std::net::TcpListener::bind(https).unwrap(),
        ssh: tokio::net::TcpListener::bind(ssh).await.unwrap(),
    };
    let comms = ferry_comms::start_on(cfg, listeners).await.unwrap();
    let c = Cluster { dir: cdir, app, comms };
    let pg = c.comms.state.db.clone();
    assert!(pg.is_postgres());
    assert_eq!(table_counts(&pg).await, before, "every row is there");
    let audit_after = ferry_comms::db::verify_audit(&pg).await.unwrap().expect("the chain verifies on PostgreSQL");
    assert!(audit_after >= audit_before, "{audit_after} < {audit_before}");
    // figures for the sizing in docs/scale-out.md: rows and bytes per batch of the small sample on PostgreSQL
    let batches = ferry_comms::db::last_batches(&pg).await.unwrap();
    let sizes: Vec<(String, i64)> = ferry_comms::db::on!(&pg, p => {
        sqlx::query_as(
            "SELECT relname::text, pg_total_relation_size(oid) FROM pg_class
             WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace ORDER BY 2 DESC",
        )
        .fetch_all(p)
        .await
        .unwrap()
    });
    eprintln!(
        "sizing: {} batches, compressed bytes {:?}; rows {before:?}, audit {audit_before}; table bytes {sizes:?}",
        batches.len(),
        batches.iter().map(|b| b.compressed_bytes).collect::<Vec<_>>()
    );
    let limits = c.admin().await.unwrap().limits("beta").await.unwrap();
    assert_eq!(limits.limits.max_batch_files, 50);

    // the Connectors go on: their keys, the batch history and the download list came along
    for (t, conn) in &conns {
        sync_and_receive(&c, t, conn, 2).await;
        let b = ferry_comms::db::list_batches(&pg, t, 10).await.unwrap();
        assert_eq!(b.len(), 2, "{t}: {b:?}");
        assert!(b.iter().all(|b| b.state == BatchState::Imported), "{t}: {b:?}");
    }
    let n = ferry_comms::db::verify_audit(&pg).await.unwrap().expect("the chain goes on on PostgreSQL");
    assert!(n > audit_after, "nothing audited after the move: {n}");
    c.stop().await;
}

#[tokio::test]
async fn a_missing_sqlite_file_or_a_postgres_source_is_refused_clearly() {
    let Some(database) = scratch_database().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nothing-here/comms.db");
    let e = ferry_comms::db_move::sqlite_to_postgres(&missing, &database, &mut |_| {}).await.unwrap_err();
    assert!(e.to_string().contains("does not exist"), "{e:#}");
    let mut not_pg = database.clone();
    not_pg.url = "mysql://x@127.0.0.1/y".into();
    not_pg.password_env = None;
    let e = ferry_comms::db_move::sqlite_to_postgres(&missing, &not_pg, &mut |_| {}).await.unwrap_err();
    assert!(e.to_string().contains("postgres://"), "{e:#}");
}
