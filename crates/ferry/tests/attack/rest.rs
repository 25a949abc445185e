//! Issue 15 attacks: see main.rs. Unauthenticated audit growth, data-at-rest modes, error bodies, manifest
//! arithmetic, `connector status` exit codes.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::procs::{self, Proxy};
use ferry::cluster::Cluster;
use ferry_io::keys::{self, KeyAlgorithm};
use ferry_proto::api::{BatchStatus, ErrorBody};

fn pinned(fingerprint: &str) -> reqwest::Client {
    ferry_io::tls::http_client(Some(fingerprint), Duration::from_secs(20)).unwrap()
}

async fn audit_count(c: &Cluster, event: &str) -> usize {
    ferry_comms::db::recent_audit(&c.comms.state.db, 100_000).await.unwrap().iter().filter(|e| e.3 == event).count()
}

fn db_bytes(db: &Path) -> u64 {
    let wal = PathBuf::from(format!("{}-wal", db.display()));
    std::fs::metadata(db).map(|m| m.len()).unwrap_or(0) + std::fs::metadata(wal).map(|m| m.len()).unwrap_or(0)
}

/// The body of an error answer, which must be our JSON shape whatever produced it.
async fn json_error(r: reqwest::Response) -> (u16, String) {
    let status = r.status().as_u16();
    let ct = r.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let text = r.text().await.unwrap();
    assert!(ct.starts_with("application/json"), "{status}: content-type {ct:?}, body {text:?}");
    let body: ErrorBody = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{status}: {text:?}: {e}"));
    assert!(!body.error.is_empty(), "{status}: empty message");
    (status, body.error)
}

/// Finding 1: 1,000 registrations with made-up tokens from one address cost at most a few audit entries and a
/// few kB: after `max_refused_registrations_per_minute` (10) refusals the address gets 429 without any check,
/// and the refusals are audited once per minute per reason, with the count of the ones left out.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_bad_registrations_is_throttled_and_coalesced_in_the_audit_log() {
    let (_dir, c) = cluster().await;
    let http = pinned(&c.comms.state.identity.tls_fingerprint);
    let url = format!("{}/v1/register", c.comms.url());
    let db = c.comms.state.cfg.db_path();
    let key = keys::generate(KeyAlgorithm::Ed25519).unwrap();
    let public_key = keys::public_key_openssh(key.public_key()).unwrap();
    let (audit_before, bytes_before) = (audit_count(&c, "register_refused").await, db_bytes(&db));
    let t = Instant::now();
    let (mut unauthorized, mut throttled) = (0, 0);
    for i in 0..1000 {
        let r = http
            .post(&url)
            .json(&serde_json::json!({ "token_secret": format!("made-up-{i}"), "public_key": public_key, "hostname": "x" }))
            .send()
            .await
            .unwrap();
        match json_error(r).await {
            (401, m) => {
                assert!(m.contains("not known"), "{m}");
                unauthorized += 1;
            }
            (429, m) => {
                assert!(m.contains("too many refused registrations") && m.contains("wait"), "{m}");
                throttled += 1;
            }
            other => panic!("unexpected answer {other:?}"),
        }
    }
    let elapsed = t.elapsed();
    let audited = audit_count(&c, "register_refused").await - audit_before;
    let grown = db_bytes(&db).saturating_sub(bytes_before);
    println!(
        "1000 bad registrations in {elapsed:.1?}: {unauthorized} x 401, {throttled} x 429, {audited} audit entries, \
         database +{grown} bytes"
    );
    assert_eq!(unauthorized, 10, "the default limit is 10 refusals per minute per address");
    assert_eq!(throttled, 990);
    assert_eq!(audited, 1, "one entry per address and reason per minute");
    assert!(grown < 64 * 1024, "the database grew by {grown} bytes");
    // A good token from another address is not affected (the limit is per address): the in-process limiter
    // says so directly, as every test client is 127.0.0.1.
    assert!(c.comms.state.unauth_limit.limited("127.0.0.2".parse().unwrap()).is_none());
    assert!(c.comms.state.unauth_limit.limited("127.0.0.1".parse().unwrap()).is_some());
    c.stop().await;
}

/// Finding 3: every error answer is `{"error": "..."}`, including the ones axum writes itself (a body over the
/// limit, a JSON body that does not parse or lacks fields, an unknown route or method), on Comms and the App.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_error_body_is_json() {
    let (_dir, c) = cluster().await;
    let http = pinned(&c.comms.state.identity.tls_fingerprint);
    let url = format!("{}/v1/register", c.comms.url());
    let post = |body: Vec<u8>| http.post(&url).header("content-type", "application/json").body(body).send();
    let (s, m) = json_error(post(b"{".to_vec()).await.unwrap()).await;
    assert_eq!(s, 400, "{m}");
    assert!(m.contains("not valid JSON"), "{m}");
    let (s, m) = json_error(post(b"{}".to_vec()).await.unwrap()).await;
    assert_eq!(s, 422, "{m}");
    assert!(m.contains("expected fields") && m.contains("token_secret"), "{m}");
    let (s, m) = json_error(post(vec![b' '; 2 << 20]).await.unwrap()).await;
    assert_eq!(s, 413, "{m}");
    assert!(m.contains("larger than"), "{m}");
    let (s, m) = json_error(http.post(&url).body("{}").send().await.unwrap()).await;
    assert_eq!(s, 400, "{m}");
    assert!(m.contains("Content-Type: application/json"), "{m}");
    let (s, _) = json_error(http.get(format!("{}/v1/nothing", c.comms.url())).send().await.unwrap()).await;
    assert_eq!(s, 404);
    let (s, _) = json_error(http.post(format!("{}/healthz", c.comms.url())).send().await.unwrap()).await;
    assert_eq!(s, 405);
    // The App server: an oversize body (refused before the signature is checked) and an unknown route.
    let app = pinned(&c.app.state.identity.tls_fingerprint);
    let (s, m) =
        json_error(app.post(format!("{}/v1/instances", c.app.url())).body(vec![b' '; 2 << 20]).send().await.unwrap())
            .await;
    assert_eq!(s, 413, "{m}");
    assert!(m.contains("larger than"), "{m}");
    let (s, _) = json_error(app.get(format!("{}/v1/nothing", c.app.url())).send().await.unwrap()).await;
    assert_eq!(s, 404);
    c.stop().await;
}

/// Finding 3: sizes that add up beyond what a SQLite integer holds are refused with the sizes as announced,
/// never a wrapped-around total, at Comms (422) and in the parser the App uses.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn manifest_sizes_that_would_wrap_are_refused_with_checked_sums() {
    let (_dir, c) = cluster().await;
    let a = tenant(&c, "alpha").await;
    let m = spool_batch(&a, &good_files());
    let api = a.api().unwrap();
    let complete = async |m: &ferry_proto::manifest::Manifest| {
        api.post::<_, BatchStatus>(&format!("/v1/batches/{}/complete", m.batch_id), m).await.expect_err("refused")
    };
    let big = ferry_proto::manifest::MAX_TOTAL;
    for field in ["rows", "bytes", "compressed_bytes"] {
        for (first, second) in [(u64::MAX, 1), (big, big), (u64::MAX - 1, u64::MAX)] {
            let mut bad = m.clone();
            for (f, v) in bad.files.iter_mut().zip([first, second]) {
                match field {
                    "rows" => f.rows = v,
                    "bytes" => f.bytes = v,
                    _ => f.compressed_bytes = v,
                }
            }
            let err = complete(&bad).await;
            let text = err.to_string();
            assert_eq!(err.status(), Some(422), "{field}: {text}");
            assert!(text.contains(&format!("manifest's {field} add up to more than {big}")), "{text}");
            assert!(!text.contains("18446744073709551614") || first == u64::MAX - 1, "{text}");
            let json = serde_json::to_vec(&bad).unwrap();
            assert!(ferry_proto::manifest::Manifest::parse(&json).is_err());
        }
    }
    // The honest manifest still goes through.
    a.send(&m, &quiet).await.unwrap();
    c.stop().await;
}

/// Finding 4: `ferry connector status` exits 0 when it could list the batches, and 2 (saying so on stderr) when
/// the Comms server cannot be reached.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connector_status_exits_non_zero_when_the_server_is_unreachable() {
    let (_dir, c) = cluster().await;
    let a = tenant(&c, "alpha").await;
    let cfg = a.cfg.base.join("connector.toml").display().to_string();
    let status = {
        let cfg = cfg.clone();
        move || procs::ferry_output(&["connector", "status", "--config", &cfg])
    };
    let out = tokio::task::spawn_blocking(status.clone()).await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("no batches at the Comms server yet"));
    c.stop().await;
    let t = Instant::now();
    let out = tokio::task::spawn_blocking(status).await.unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(2), "{stdout}\n{stderr}");
    assert!(stderr.contains("cannot reach the Comms server"), "{stderr}");
    assert!(!stdout.contains("no batches at the Comms server yet"), "{stdout}");
    assert!(t.elapsed() < Duration::from_secs(60));
}

/// Every file and folder under `dir` with its mode, failing on any group or world bit.
fn assert_private(dir: &Path, seen: &mut BTreeSet<String>) {
    let meta = std::fs::symlink_metadata(dir).unwrap();
    let mode = meta.permissions().mode() & 0o777;
    assert_eq!(mode & 0o077, 0, "{} is {mode:o}", dir.display());
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        let meta = std::fs::symlink_metadata(&p).unwrap();
        if meta.is_dir() {
            assert_private(&p, seen);
        } else if p.extension().is_some_and(|x| x == "pub") {
            // a public key is public by design (0644)
        } else {
            let mode = meta.permissions().mode() & 0o777;
            assert_eq!(mode & 0o077, 0, "{} is {mode:o}", p.display());
            seen.insert(p.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
}

/// Finding 2: the real programs, started under umask 022 (`procs`), keep their data to their owner: after an
/// upstream batch and a downstream file, every file under the App's, the Comms server's and the Connector's data
/// folders (SQLite databases with their -wal and -shm, downstream files, the outbox, the journal, certificates
/// and keys) and the Connector's inbound folder is 0600 or stricter, every folder 0700.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn data_at_rest_is_private_under_umask_022() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let proxies = [Proxy::unrouted().await, Proxy::unrouted().await, Proxy::unrouted().await];
    let (sys, mut app, mut comms) = tokio::task::block_in_place(|| procs::setup(&dir, &proxies, |_| {}));
    let args = sys.conn_args("sync");
    let out =
        tokio::task::spawn_blocking(move || procs::ferry_output(&args.iter().map(String::as_str).collect::<Vec<_>>()))
            .await
            .unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let text = "order_number,line,item,location,supplier,qty,due_date\nR1,1,A1,L1,S1,2.5,2026/12/01\n";
    sys.publish("po_rest.csv", text);
    let journal = sys.journal_db();
    let mut args = sys.conn_args("receive");
    args.extend(["--wait".into(), "5".into()]);
    let applied = eventually(Duration::from_secs(60), async || {
        let args = args.clone();
        tokio::task::spawn_blocking(move || procs::ferry_output(&args.iter().map(String::as_str).collect::<Vec<_>>()))
            .await
            .unwrap();
        procs::query(&journal, "SELECT state FROM received WHERE name = 'po_rest.csv'")
            .first()
            .is_some_and(|r| r[0] == "acked")
    })
    .await;
    assert!(applied.is_some(), "the downstream file did not arrive");

    let mut seen = BTreeSet::new();
    for d in [
        sys.dir.join("app/data"),
        sys.dir.join("comms/data"),
        sys.conn_dir.join("data"),
        sys.conn_dir.join("keys"),
        sys.inbound(),
    ] {
        assert_private(&d, &mut seen);
    }
    let mode = std::fs::metadata(&sys.conn_cfg).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode & 0o077, 0, "{} is {mode:o}", sys.conn_cfg.display());
    println!("{} private files: {seen:?}", seen.len());
    for want in ["comms.db", "comms.db-wal", "comms.db-shm", "acme.db", "acme.db-wal", "journal.db", "journal.db-wal"] {
        assert!(seen.contains(want), "{want} not among {seen:?}");
    }
    // The downstream file (outbox, inbound folder; Comms' compressed copy is removed once delivered).
    assert!(seen.contains("po_rest.csv"), "no po_rest.csv among {seen:?}");
    app.term();
    comms.term();
    app.wait_exit(Duration::from_secs(20));
    comms.wait_exit(Duration::from_secs(20));
}

/// Finding 5: with `[retention] keep_secs = 3` (swept every second) on both servers, a rejected batch's files
/// are kept at first, then removed from the App's incoming area and from Comms; the imported data, the batch's
/// verdict (Comms `batches`, the App's batch log) and the audit trail stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retention_removes_the_files_of_finished_batches_and_keeps_data_and_verdicts() {
    use ferry_proto::api::BatchState;
    let dir = tempfile::tempdir().unwrap();
    let ret = ferry_web::retention::Retention { keep_secs: 3, sweep_every_secs: 1 };
    let c = Cluster::start_with(dir.path(), |a| a.retention = ret, |m| m.retention = ret).await.unwrap();
    let a = tenant(&c, "alpha").await;
    let good = spool_batch(&a, &good_files());
    assert_eq!(a.send(&good, &quiet).await.unwrap().status.state, BatchState::Imported);
    let before = counts(&c, "alpha").await;
    let bad_files: Vec<_> = good_files()
        .into_iter()
        .map(|(n, t)| (n, if n == "stock.csv" { t.replace("2024/01/05", "2024/13/45") } else { t }))
        .collect();
    let bad = spool_batch(&a, &bad_files);
    let s = a.send(&bad, &quiet).await.unwrap().status;
    assert_eq!(s.state, BatchState::Rejected, "{:?}", s.detail);
    let app_dir = c.app.state.sftp_root().join("alpha").join("incoming").join(bad.batch_id.as_str());
    let comms_dir = c.comms.state.batch_dir("alpha", bad.batch_id.as_str());
    assert!(app_dir.is_dir() && comms_dir.is_dir(), "a rejected batch's files are kept for the retention period");
    let t = Instant::now();
    let gone = eventually(Duration::from_secs(20), async || !app_dir.exists() && !comms_dir.exists()).await;
    println!("rejected batch's files removed {:.1?} after its verdict (keep 3 s, sweep every 1 s)", t.elapsed());
    assert!(gone.is_some(), "app {} comms {}", app_dir.exists(), comms_dir.exists());
    assert!(t.elapsed() >= Duration::from_secs(1), "removed before its retention ran out");
    // The data and the verdicts stay.
    assert_eq!(counts(&c, "alpha").await, before);
    let list = a.status(10).await.unwrap();
    let verdict = list.iter().find(|b| b.batch_id == bad.batch_id).expect("the rejected batch is still listed");
    assert_eq!(verdict.state, BatchState::Rejected);
    assert!(verdict.detail.as_deref().unwrap_or_default().contains("stock.csv"), "{verdict:?}");
    let ev = ferry_comms::db::recent_audit(&c.comms.state.db, 1000).await.unwrap();
    assert!(ev.iter().any(|e| e.3 == "batch_rejected" && e.4.contains(bad.batch_id.as_str())));
    ferry_comms::db::verify_audit(&c.comms.state.db).await.unwrap().expect("audit chain intact");
    c.stop().await;
}
