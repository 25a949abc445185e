//! The Comms server with the tenants' files in S3-compatible object storage (`[storage] url = "s3://..."`),
//! against a real S3 server on 127.0.0.1 (moto's server mode, `scripts/test-s3.sh`): upstream and downstream end
//! to end (on PostgreSQL too when a test PostgreSQL is there), an SFTP upload cut midway resumes from the parts
//! stored and is invisible until complete, a batch whose upload was cut imports once, downloads use range reads,
//! and one tenant cannot reach another's keys. Runs whenever `FERRY_TEST_S3_ENDPOINT` is set; skips without it,
//! fails under `FERRY_CI=1`.

use std::time::Duration;

use crate::common::*;
use crate::procs::Proxy;
use ferry::cluster::Cluster;
use ferry_comms::store::{Bucket, Files, StorageConfig};
use ferry_connector::agent::Connector;
use ferry_connector::receive::Outcome;
use ferry_proto::api::{BatchState, FileState};
use ferry_sample::{SampleSize, generate_sample_erp};
use object_store::ObjectStoreExt;

/// `[storage]` on the test S3 server under a fresh prefix; None (skipped) without one.
fn storage() -> Option<StorageConfig> {
    if std::env::var("FERRY_TEST_S3_ENDPOINT").is_err() {
        assert!(
            !std::env::var("FERRY_CI").is_ok_and(|v| v == "1"),
            "FERRY_CI=1 but FERRY_TEST_S3_ENDPOINT is not set (scripts/test-s3.sh)"
        );
        eprintln!("FERRY_TEST_S3_ENDPOINT not set: skipped (start a server with scripts/test-s3.sh)");
        return None;
    }
    Some(ferry::cluster::test_s3_storage().unwrap())
}

fn bucket(c: &Cluster) -> Bucket {
    match &c.comms.state.files {
        Files::Object(b) => b.clone(),
        Files::Local => panic!("the cluster must keep its files in the object store here"),
    }
}

/// Every key under the cluster's prefix.
async fn keys(b: &Bucket) -> Vec<String> {
    use futures::StreamExt;
    let mut out = Vec::new();
    let mut l = b.os.list(Some(&b.prefix));
    while let Some(m) = l.next().await {
        out.push(m.unwrap().location.to_string());
    }
    out.sort();
    out
}

/// Deterministic bytes that do not compress.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut data = vec![0u8; len];
    let mut x: u64 = 0x9E3779B97F4A7C15 ^ seed;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    data
}

/// Points a connector's SFTP at another address (a cutting proxy).
fn reroute_ssh(conn: &Connector, ssh: String) -> Connector {
    let mut reg = conn.registration().expect("registration");
    reg.ssh_addr = ssh;
    reg.save(conn.cfg.registration_path()).expect("save");
    Connector::load(&conn.cfg.base.join("connector.toml")).expect("reload")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn comms_on_s3_upstream_and_downstream_end_to_end() {
    let Some(storage) = storage() else { return };
    let dir = tempfile::tempdir().unwrap();
    // on PostgreSQL as well when the test server is there (the deployment of docs/scale-out.md)
    let pg = match std::env::var("FERRY_TEST_POSTGRES_URL") {
        Ok(url) => Some(ferry_comms::db::create_scratch_postgres(&url).await.unwrap()),
        Err(_) => None,
    };
    let c = Cluster::start_with(
        dir.path(),
        |_| {},
        move |cfg| {
            cfg.storage = storage;
            if let Some(url) = pg {
                cfg.database.url = url;
            }
        },
    )
    .await
    .unwrap();
    let b = bucket(&c);

    let erp = dir.path().join("erp.db");
    generate_sample_erp(&erp, SampleSize::Small).await.unwrap();
    let token = c.add_tenant("acme").await.unwrap();
    let inst = c.app.state.instance("acme").await.unwrap().unwrap();
    ferry_app::release::set_policy(&inst.0, ferry_app::release::Policy::Auto).await.unwrap();
    let conn = c.connector_with_write_back("acme", &erp, &token).await.unwrap();
    let r = conn.sync(&quiet).await.unwrap();
    assert_eq!(r.status.state, BatchState::Imported, "{:?}", r.status);
    assert!(counts(&c, "acme").await.values().any(|n| *n > 0), "nothing imported");
    // the files went through the store: nothing of the batch on the local disk, nothing left in the store
    let local = c.comms.state.cfg.data_dir.join("tenants/acme/batches");
    assert!(!local.exists(), "batch files on the local disk: {}", local.display());
    // (the `upload` folder itself stays, as on disk: its marker)
    let left = keys(&b).await;
    let batch_left =
        |k: &String| k.contains("/batches/") || (k.contains("/upload/") && !k.ends_with("/upload/.ferry-dir"));
    assert!(!left.iter().any(batch_left), "left behind: {left:?}");

    // Downstream: the plan's files are compressed into the store and fetched from there with range reads.
    let published = async || !ferry_app::outbox::receipts(&inst.0).await.unwrap().is_empty();
    assert!(eventually(Duration::from_secs(60), published).await.is_some(), "nothing published");
    let ready = async || keys(&b).await.iter().any(|k| k.contains("/sftp/download/") && k.ends_with(".bz2"));
    assert!(eventually(Duration::from_secs(60), ready).await.is_some(), "no downstream file in the store");
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
    // an acknowledged file is removed from the store
    let gone = async || {
        let all = ferry_comms::db::tenant_downloads(&c.comms.state.db, "acme", 100).await.unwrap();
        let keys = keys(&b).await;
        all.iter().filter(|f| f.2 == "delivered").all(|f| !keys.iter().any(|k| k.contains(&*f.0)))
    };
    assert!(eventually(Duration::from_secs(10), gone).await.is_some(), "delivered files stay in the store");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cut_upload_to_s3_resumes_from_its_stored_parts_and_is_invisible_until_complete() {
    let Some(storage) = storage() else { return };
    let dir = tempfile::tempdir().unwrap();
    let c = Cluster::start_with(dir.path(), |_| {}, move |cfg| cfg.storage = storage).await.unwrap();
    let b = bucket(&c);
    let conn = tenant(&c, "acme").await;
    let proxy = Proxy::start(c.comms.ssh_addr).await;
    let conn = reroute_ssh(&conn, format!("127.0.0.1:{}", proxy.port));
    const PART: u64 = 5 * 1024 * 1024;
    const LEN: u64 = 13 * 1024 * 1024;
    let data = noise(LEN as usize, 7);
    let local = c.dir.join("big.bin");
    std::fs::write(&local, &data).unwrap();

    // Cut once 12 MiB went up: two parts (10 MiB) are stored, the rest was only in memory.
    let sftp = conn.sftp().await.unwrap();
    sftp.mkdir_all("/upload").await.unwrap();
    proxy.cut_after(Some(12 * 1024 * 1024), None);
    let err = sftp.upload_file_resuming(&local, "/upload/big.bin").await.expect_err("the cut stops the upload");
    println!("upload cut: {err}");
    proxy.cut_after(None, None);
    let sftp = conn.sftp().await.unwrap();
    // the upload in progress answers stat with the bytes of its stored parts, and is listed nowhere
    let kept = sftp.stat_size("/upload/.big.bin.part").await.unwrap().expect("the cut upload is known");
    assert_eq!(kept, 2 * PART, "the stored parts");
    assert!(sftp.list("/upload").await.unwrap().is_empty(), "an incomplete file is listed");
    assert!(!keys(&b).await.iter().any(|k| k.contains("/sftp/upload/.big.bin.part")), "an incomplete object exists");

    // Resumed: only the rest goes up, and the object is the file.
    let before = proxy.up.load(std::sync::atomic::Ordering::SeqCst);
    let sent = sftp.upload_file_resuming(&local, "/upload/big.bin").await.unwrap();
    let on_wire = proxy.up.load(std::sync::atomic::Ordering::SeqCst) - before;
    println!("upload resumed: {sent} bytes sent ({on_wire} on the wire) after {kept} kept, of {LEN}");
    assert_eq!(sent, LEN - kept, "only what the store lacks is sent");
    assert_eq!(sftp.list("/upload").await.unwrap(), vec![("big.bin".to_string(), LEN)]);
    let key = ferry_comms::store::sftp_key(&b, "acme", &["upload", "big.bin"]);
    let stored = b.os.get(&key).await.unwrap().bytes().await.unwrap();
    assert!(stored.as_ref() == data.as_slice(), "the stored object differs from the file");
    assert!(!keys(&b).await.iter().any(|k| k.contains("/uploads/")), "the upload state stays");

    // Range reads: a download through SFTP fetches windows of the object, and a cut download resumes.
    let dst = c.dir.join("got.bin");
    proxy.cut_after(None, Some(6 * 1024 * 1024));
    sftp.download_file_resuming("/upload/big.bin", &dst).await.expect_err("the cut stops the download");
    proxy.cut_after(None, None);
    let sftp = conn.sftp().await.unwrap();
    let got = sftp.download_file_resuming("/upload/big.bin", &dst).await.unwrap();
    assert!(got < LEN, "the download resumed ({got} of {LEN} fetched again)");
    assert!(std::fs::read(&dst).unwrap() == data, "the downloaded file differs");

    // Out-of-order writes are refused with a message, not stored wrong.
    sftp.close().await.unwrap();
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_whose_upload_to_s3_was_cut_imports_once() {
    let Some(storage) = storage() else { return };
    let dir = tempfile::tempdir().unwrap();
    let c = Cluster::start_with(dir.path(), |_| {}, move |cfg| cfg.storage = storage).await.unwrap();
    let erp = dir.path().join("erp.db");
    generate_sample_erp(&erp, SampleSize::Small).await.unwrap();
    let token = c.add_tenant("acme").await.unwrap();
    let conn = c.connector("acme", &erp, &token).await.unwrap();
    let proxy = Proxy::start(c.comms.ssh_addr).await;
    let conn = reroute_ssh(&conn, format!("127.0.0.1:{}", proxy.port));
    // the first sync's upload is cut early, and so is every retry of it (the Connector retries a cut upload
    // within the sync: a single cut does not fail a sync)
    proxy.cut_after_and_keep_cutting(Some(64 * 1024), None);
    let first = conn.sync(&quiet).await;
    assert!(first.is_err(), "the cut must fail the first sync");
    assert!(
        ferry_comms::db::list_batches(&c.comms.state.db, "acme", 10).await.unwrap().is_empty(),
        "a batch was completed out of a cut upload"
    );
    proxy.cut_after(None, None);
    let r = conn.sync(&quiet).await.unwrap();
    assert!(r.resumed, "the second sync resumes the extracted batch");
    assert_eq!(r.status.state, BatchState::Imported, "{:?}", r.status);
    let listed = ferry_comms::db::list_batches(&c.comms.state.db, "acme", 10).await.unwrap();
    assert_eq!(listed.len(), 1, "one batch: {listed:?}");
    let imported = counts(&c, "acme").await;
    // a third sync sends nothing new and imports nothing twice
    let _ = conn.sync(&quiet).await.unwrap();
    assert_eq!(counts(&c, "acme").await, imported, "imported twice");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenant_cannot_reach_another_tenants_keys_in_s3() {
    let Some(storage) = storage() else { return };
    let dir = tempfile::tempdir().unwrap();
    let c = Cluster::start_with(dir.path(), |_| {}, move |cfg| cfg.storage = storage).await.unwrap();
    let b = bucket(&c);
    let acme = tenant(&c, "acme").await;
    let other = tenant(&c, "other").await;
    let local = c.dir.join("secret.bin");
    std::fs::write(&local, b"acme's secret").unwrap();
    let a = acme.sftp().await.unwrap();
    a.mkdir_all("/upload").await.unwrap();
    a.upload_file(&local, "/upload/secret.bin").await.unwrap();
    assert!(keys(&b).await.iter().any(|k| k.ends_with("tenants/acme/sftp/upload/secret.bin")));

    let o = other.sftp().await.unwrap();
    assert!(o.list("/").await.unwrap().is_empty(), "the other tenant sees files at its root");
    for p in ["/upload/secret.bin", "upload/secret.bin"] {
        assert_eq!(o.stat_size(p).await.unwrap(), None, "{p}");
    }
    for p in ["/../acme/sftp/upload/secret.bin", "../../acme/sftp/upload/secret.bin", "/upload/..%2F..%2Facme"] {
        assert!(o.stat_size(p).await.is_err() || o.stat_size(p).await.unwrap().is_none(), "{p}");
        let dst = c.dir.join("stolen.bin");
        assert!(o.download_file(p, &dst).await.is_err(), "{p} was readable");
        assert!(!dst.exists());
    }
    // writes land under the writer's own prefix only
    o.mkdir_all("/upload").await.unwrap();
    o.upload_file(&local, "/upload/mine.bin").await.unwrap();
    let all = keys(&b).await;
    assert!(all.iter().any(|k| k.ends_with("tenants/other/sftp/upload/mine.bin")), "{all:?}");
    assert!(!all.iter().any(|k| k.contains("tenants/acme/") && k.ends_with("mine.bin")), "{all:?}");
    // and the other tenant cannot complete a batch out of acme's files (its own upload area is looked at)
    a.close().await.unwrap();
    o.close().await.unwrap();
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn max_files_holds_on_s3_as_on_disk() {
    let Some(storage) = storage() else { return };
    let dir = tempfile::tempdir().unwrap();
    let c = Cluster::start_with(dir.path(), |_| {}, move |cfg| cfg.storage = storage).await.unwrap();
    let acme = tenant(&c, "acme").await;
    let admin = c.admin().await.unwrap();
    admin.set_limits("acme", &[(ferry_comms::limits::Limit::MaxFiles, Some(3))]).await.unwrap();
    let reloaded = async || c.comms.state.limits.of("acme").max_files == 3;
    assert!(eventually(ferry_comms::ACCESS_RELOAD_BOUND, reloaded).await.is_some(), "the new limit is not in force");
    let local = c.dir.join("f.bin");
    std::fs::write(&local, b"some bytes").unwrap();
    let s = acme.sftp().await.unwrap();
    // the folder and two files: three entries
    s.mkdir_all("/upload").await.unwrap();
    s.upload_file(&local, "/upload/a.bin").await.unwrap();
    s.upload_file(&local, "/upload/b.bin").await.unwrap();
    let e = s.upload_file(&local, "/upload/c.bin").await.expect_err("a fourth entry");
    assert!(format!("{e:#}").contains("max_files"), "{e:#}");
    let e = s.mkdir_all("/upload/more").await.expect_err("a fourth entry");
    assert!(format!("{e:#}").contains("max_files"), "{e:#}");
    let mut names: Vec<String> = s.list("/upload").await.unwrap().into_iter().map(|(n, _)| n).collect();
    names.sort();
    assert_eq!(names, vec!["a.bin".to_string(), "b.bin".to_string()], "nothing of the refused file is listed");
    // room again once a file goes
    s.remove("/upload/a.bin").await.unwrap();
    s.upload_file(&local, "/upload/c.bin").await.unwrap();
    s.close().await.unwrap();
    c.stop().await;
}
