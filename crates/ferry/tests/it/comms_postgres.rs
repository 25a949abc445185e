//! The Comms server with its metadata on PostgreSQL (`[database] url = "postgres://..."`): upstream and
//! downstream end to end, the audit chain appended from two "replicas" (two pools) at once and verified, tamper
//! detection, and an operator change seen through the access counter. Runs whenever a test PostgreSQL is
//! available (`FERRY_TEST_POSTGRES_URL`, from `scripts/test-databases.sh`); skips without one, fails under
//! `FERRY_CI=1`. The password goes through `password_env`, TLS through `sslrootcert` when the test CA exists.

use std::time::Duration;

use crate::common::*;
use ferry::cluster::Cluster;
use ferry_comms::config::DatabaseConfig;
use ferry_connector::receive::Outcome;
use ferry_proto::api::{BatchState, FileState};
use ferry_sample::{SampleSize, generate_sample_erp};

/// `[database]` for a fresh database on the test server: password from `password_env`, TLS verified against the
/// test CA when there is one. None (test skipped) without a test server.
pub(crate) async fn scratch_database() -> Option<DatabaseConfig> {
    let Ok(url) = std::env::var("FERRY_TEST_POSTGRES_URL") else {
        assert!(
            !std::env::var("FERRY_CI").is_ok_and(|v| v == "1"),
            "FERRY_CI=1 but FERRY_TEST_POSTGRES_URL is not set (scripts/test-databases.sh)"
        );
        eprintln!("FERRY_TEST_POSTGRES_URL not set: skipped (start one with scripts/test-databases.sh)");
        return None;
    };
    let scratch = ferry_comms::db::create_scratch_postgres(&url).await.unwrap();
    let mut u = url::Url::parse(&scratch).unwrap();
    let mut cfg = DatabaseConfig::default();
    if std::env::var("FERRY_TEST_POSTGRES_PASSWORD").is_ok() {
        u.set_password(None).unwrap();
        cfg.password_env = Some("FERRY_TEST_POSTGRES_PASSWORD".into());
    }
    if let Ok(ca) = std::env::var("FERRY_TEST_DB_CA") {
        u.query_pairs_mut().append_pair("sslmode", "verify-full").append_pair("sslrootcert", &ca);
    }
    cfg.url = u.to_string();
    cfg.validate().unwrap();
    Some(cfg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn comms_on_postgres_upstream_downstream_and_one_audit_chain() {
    let Some(database) = scratch_database().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = database.clone();
    let c = Cluster::start_with(dir.path(), |_| {}, move |cfg| cfg.database = d).await.unwrap();
    assert!(c.comms.state.db.is_postgres(), "the cluster must run on PostgreSQL here");

    // Upstream: register, sync, imported.
    let erp = dir.path().join("erp.db");
    generate_sample_erp(&erp, SampleSize::Small).await.unwrap();
    let token = c.add_tenant("acme").await.unwrap();
    let inst = c.app.state.instance("acme").await.unwrap().unwrap();
    ferry_app::release::set_policy(&inst.0, ferry_app::release::Policy::Auto).await.unwrap();
    let conn = c.connector_with_write_back("acme", &erp, &token).await.unwrap();
    let r = conn.sync(&quiet).await.unwrap();
    assert_eq!(r.status.state, BatchState::Imported, "{:?}", r.status);
    let listed = ferry_comms::db::list_batches(&c.comms.state.db, "acme", 10).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].state, BatchState::Imported);

    // Downstream: the plan's files reach the connector and are acknowledged (state in PostgreSQL).
    let published = async || !ferry_app::outbox::receipts(&inst.0).await.unwrap().is_empty();
    assert!(eventually(Duration::from_secs(60), published).await.is_some(), "nothing published");
    let mut applied = 0;
    let t = std::time::Instant::now();
    while applied == 0 && t.elapsed() < Duration::from_secs(60) {
        let out = conn.receive(5, &quiet).await.unwrap();
        applied += out.iter().filter(|o| matches!(o, Outcome::Applied { .. })).count();
    }
    assert!(applied > 0, "no downstream file applied");
    let delivered = async || {
        let r = ferry_app::outbox::receipts(&inst.0).await.unwrap();
        r.iter().any(|f| f.state == FileState::Delivered)
    };
    assert!(eventually(Duration::from_secs(30), delivered).await.is_some(), "the App never heard of a delivery");
    let files = ferry_comms::db::tenant_downloads(&c.comms.state.db, "acme", 100).await.unwrap();
    assert!(files.iter().any(|f| f.2 == "delivered"), "{files:?}");

    // An operator change from another process (another pool) bumps the access counter every replica polls.
    let db = &c.comms.state.db;
    let before = ferry_comms::db::access_version(db).await.unwrap();
    let other = ferry_comms::db::open_postgres(&database).await.unwrap();
    assert!(ferry_comms::db::add_tenant(&other, "beta").await.unwrap());
    assert!(ferry_comms::db::set_tenant_status(&other, "beta", "disabled").await.unwrap());
    assert!(ferry_comms::db::access_version(db).await.unwrap() > before);
    let listed = ferry_comms::db::list_tenants(db).await.unwrap();
    assert!(listed.iter().any(|t| t.name == "beta" && t.status == "disabled"), "{listed:?}");

    // The audit chain: appends from two pools at once (two replicas) stay one chain.
    let n0 = ferry_comms::db::verify_audit(db).await.unwrap().expect("intact chain after the syncs");
    assert!(n0 >= 5, "{n0}");
    let mut tasks = Vec::new();
    for i in 0..40 {
        let pool = if i % 2 == 0 { db.clone() } else { other.clone() };
        tasks.push(tokio::spawn(async move {
            ferry_comms::db::audit(&pool, Some("acme"), "test_append", &format!("append {i}")).await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let n = ferry_comms::db::verify_audit(db).await.unwrap().expect("one chain after concurrent appends");
    let ours = ferry_comms::db::recent_audit(db, 10_000).await.unwrap();
    assert_eq!(ours.iter().filter(|e| e.3 == "test_append").count(), 40);
    assert!(n >= n0 + 40, "{n} < {n0} + 40");

    // Tampering is detected on PostgreSQL as on SQLite.
    ferry_comms::db::on!(db, p => {
        sqlx::query("UPDATE audit SET detail = 'nothing to see' WHERE id = 2").execute(p).await.unwrap();
    });
    let why = ferry_comms::db::verify_audit(db).await.unwrap().expect_err("edit must be detected");
    assert!(why.contains("entry 2") && why.contains("edited"), "{why}");
    other.close().await;
    c.stop().await;
}

#[tokio::test]
async fn a_missing_database_password_is_named_and_a_wrong_one_never_shown() {
    let Some(mut database) = scratch_database().await else { return };
    database.password_env = Some("FERRY_TEST_NO_SUCH_VARIABLE_S12".into());
    database.password_file = None;
    let e = ferry_comms::db::open_postgres(&database).await.unwrap_err().to_string();
    assert!(e.contains("FERRY_TEST_NO_SUCH_VARIABLE_S12"), "{e}");

    let pw_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(pw_file.path(), "wrong-secret-s12\n").unwrap();
    let mut u = url::Url::parse(&database.url).unwrap();
    u.set_password(None).unwrap();
    database.url = u.to_string();
    database.password_env = None;
    database.password_file = Some(pw_file.path().to_path_buf());
    let e = ferry_comms::db::open_postgres(&database).await.unwrap_err().to_string();
    assert!(!e.contains("wrong-secret-s12"), "{e}");
    assert!(e.contains("cannot open the comms database"), "{e}");
    let shown = format!("{database:?}");
    assert!(!shown.contains("wrong-secret"), "{shown}");
}

/// Replicas sharing one PostgreSQL: exactly one holds a tenant's relay at a time; a released claim, or one whose
/// replica went away (its connection closed), can be taken by another.
#[tokio::test]
async fn exactly_one_replica_claims_a_tenants_relay() {
    let Some(database) = scratch_database().await else { return };
    let (a, b) = (
        ferry_comms::db::open_postgres(&database).await.unwrap(),
        ferry_comms::db::open_postgres(&database).await.unwrap(),
    );
    let claim = ferry_comms::db::claim_relay(&a, "acme").await.unwrap().expect("free claim");
    assert!(ferry_comms::db::claim_relay(&b, "acme").await.unwrap().is_none(), "two replicas relay one tenant");
    let other = ferry_comms::db::claim_relay(&b, "beta").await.unwrap().expect("other tenants are free");
    claim.release().await;
    let taken = ferry_comms::db::claim_relay(&b, "acme").await.unwrap().expect("released claim");
    assert!(ferry_comms::db::claim_relay(&a, "acme").await.unwrap().is_none());
    drop(taken); // a replica gone: its connection closes and the lock with it
    let t = std::time::Instant::now();
    loop {
        if ferry_comms::db::claim_relay(&a, "acme").await.unwrap().is_some() {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "a dropped claim was never released");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    other.release().await;
    a.close().await;
    b.close().await;
}
