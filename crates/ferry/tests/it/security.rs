//! Security controls that are not attacks (those are in the attack suite, `tests/attack/`): the tamper-evident audit log and the
//! events it must hold, one port for HTTPS and SSH, key rotation without downtime.

use std::time::Duration;

use crate::common::*;
use ferry_io::httpsig;
use ferry_io::keys::{self, KeyAlgorithm};
use ferry_proto::api::BatchState;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn audit_log_detects_edits_and_removals() {
    let (_dir, c) = cluster().await;
    let a = tenant(&c, "alpha").await;
    let _ = tenant(&c, "beta").await;
    let s = a.send(&spool_batch(&a, &good_files()), &quiet).await.unwrap().status;
    assert_eq!(s.state, BatchState::Imported);
    let db = &c.comms.state.db;
    let n = ferry_comms::db::verify_audit(db).await.unwrap().expect("intact chain");
    assert!(n >= 6, "tenant_added, token_issued, registered x2, batch_completed, batch_imported: {n}");
    let events: Vec<String> = ferry_comms::db::recent_audit(db, 100).await.unwrap().into_iter().map(|e| e.3).collect();
    for e in ["tenant_added", "token_issued", "registered", "batch_completed", "batch_imported"] {
        assert!(events.iter().any(|x| x == e), "{e} missing from {events:?}");
    }

    // Edit one entry's detail.
    ferry_comms::db::on!(db, p => {
        sqlx::query("UPDATE audit SET detail = 'nothing to see' WHERE id = 3").execute(p).await.unwrap();
    });
    let why = ferry_comms::db::verify_audit(db).await.unwrap().expect_err("edit must be detected");
    assert!(why.contains("entry 3") && why.contains("edited"), "{why}");
    // Remove an entry instead (after restoring a consistent chain is impossible without the hashes).
    ferry_comms::db::on!(db, p => {
        sqlx::query("DELETE FROM audit WHERE id = 3").execute(p).await.unwrap();
    });
    let why = ferry_comms::db::verify_audit(db).await.unwrap().expect_err("removal must be detected");
    assert!(why.contains("entry 3 is missing"), "{why}");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_port_serves_https_and_sftp() {
    let dir = tempfile::tempdir().unwrap();
    let c = ferry::cluster::Cluster::start_one_port(dir.path()).await.unwrap();
    assert_eq!(c.comms.https_addr, c.comms.ssh_addr);
    let a = tenant(&c, "alpha").await;
    let reg = a.registration().unwrap();
    assert!(reg.ssh_addr.ends_with(&format!(":{}", c.comms.https_addr.port())), "{}", reg.ssh_addr);
    let s = a.send(&spool_batch(&a, &good_files()), &quiet).await.unwrap().status;
    assert_eq!(s.state, BatchState::Imported, "{:?}", s.detail);
    assert_eq!(a.status(5).await.unwrap().len(), 1);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn key_rotation_has_no_downtime_and_retires_the_old_key() {
    let (_dir, c) = cluster().await;
    let a = tenant(&c, "alpha").await;
    let old_key = keys::load_private_key(a.cfg.key_path()).unwrap();
    let reg = a.registration().unwrap();
    let http = ferry_io::tls::http_client(Some(&reg.tls_fingerprint), Duration::from_secs(10)).unwrap();
    let whoami_with = async |k: &russh::keys::PrivateKey| {
        let h = httpsig::sign(k, "GET", "/v1/whoami", b"", httpsig::unix_now()).unwrap();
        signed_get(&http, &format!("{}/v1/whoami", reg.comms_url), &h).await
    };

    // Server side of a rotation that the connector has not finished yet: both keys work.
    let new_key = keys::generate(KeyAlgorithm::Ed25519).unwrap();
    let api = a.api().unwrap();
    let _: ferry_proto::api::WhoAmI = api
        .post(
            "/v1/keys/rotate",
            &ferry_proto::api::RotateKey { public_key: keys::public_key_openssh(new_key.public_key()).unwrap() },
        )
        .await
        .unwrap();
    assert_eq!(whoami_with(&old_key).await.status().as_u16(), 200, "old key still valid mid-rotation");
    // First use of the new key retires the old one.
    assert_eq!(whoami_with(&new_key).await.status().as_u16(), 200);
    assert_eq!(whoami_with(&old_key).await.status().as_u16(), 401, "old key retired after the new one was used");

    // The connector's own rotate-key (its current key was retired above, so start from a fresh tenant).
    let mut b = tenant(&c, "beta").await;
    let before = b.key_fingerprint();
    let after = b.rotate_key(KeyAlgorithm::Rsa2048).await.unwrap();
    assert_ne!(before, after);
    assert_eq!(b.key_fingerprint(), after);
    let s = b.send(&spool_batch(&b, &good_files()), &quiet).await.unwrap().status;
    assert_eq!(s.state, BatchState::Imported, "sync works with the rotated key");
    let states = ferry_comms::db::tenant_keys(&c.comms.state.db, "beta").await.unwrap();
    assert!(states.iter().any(|(fp, st, ..)| fp == &before && st == "retired"), "{states:?}");

    c.stop().await;
}

const PO: &str = "order_number,line,item,location,supplier,qty,unit_cost,order_date,due_date,comment\nREC-1,1,A1,L1,S1,24,1.20,2026/11/28,2026/12/05,\n";

async fn events(c: &ferry::cluster::Cluster) -> Vec<(Option<String>, String, String)> {
    ferry_comms::db::recent_audit(&c.comms.state.db, 10_000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.2, e.3, e.4))
        .collect()
}

/// Wait (5 s at most) for an audit entry some background task writes.
async fn wait_for(c: &ferry::cluster::Cluster, event: &str, detail: &str) -> bool {
    let seen = async || events(c).await.iter().any(|(_, e, d)| e == event && d.contains(detail));
    eventually(Duration::from_secs(5), seen).await.is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_security_event_is_audited() {
    let (dir, c) = cluster().await;
    let erp = dir.path().join("erp.db");
    let token = c.add_tenant("alpha").await.unwrap();
    let mut a = c.connector_with_write_back("alpha", &erp, &token).await.unwrap();
    let reg = a.registration().unwrap();

    // The key registered from 127.0.0.1; logging in from 127.0.0.2 is a new address (once).
    let from_other_address = async |ip: &str| {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(format!("{ip}:0").parse().unwrap()).unwrap();
        let stream = sock.connect(reg.ssh_addr.parse().unwrap()).await.unwrap();
        let cfg = ferry_sftp::client::ClientConfig {
            user: "connector".into(),
            key: std::sync::Arc::new(keys::load_private_key(a.cfg.key_path()).unwrap()),
            host_key_fingerprint: reg.ssh_host_key_fingerprint.clone(),
            connect_timeout: Duration::from_secs(20),
            io_timeout: Duration::from_secs(20),
        };
        ferry_sftp::client::SftpClient::connect_stream(&cfg, stream).await.unwrap().close().await.unwrap();
    };
    from_other_address("127.0.0.2").await;
    assert!(wait_for(&c, "key_new_address", "127.0.0.2 (ssh)").await);
    from_other_address("127.0.0.2").await;
    a.sftp().await.unwrap().close().await.unwrap();
    // The logins are noted in the order they came; once a later one from a third address is audited, the ones
    // before it were noted too.
    from_other_address("127.0.0.3").await;
    assert!(wait_for(&c, "key_new_address", "127.0.0.3 (ssh)").await);
    let new_addr: Vec<_> = events(&c).await.into_iter().filter(|(_, e, _)| e == "key_new_address").collect();
    assert_eq!(new_addr.len(), 2, "only the first use from an address is audited: {new_addr:?}");

    // Failed authentication, over SSH and HTTPS.
    let stranger = keys::generate(KeyAlgorithm::Ed25519).unwrap();
    let cfg = ferry_sftp::client::ClientConfig {
        user: "alpha".into(),
        key: std::sync::Arc::new(stranger),
        host_key_fingerprint: reg.ssh_host_key_fingerprint.clone(),
        connect_timeout: Duration::from_secs(20),
        io_timeout: Duration::from_secs(20),
    };
    assert!(ferry_sftp::client::SftpClient::connect(&cfg, &reg.ssh_addr).await.is_err());
    assert!(wait_for(&c, "auth_failed", "ssh login refused").await);

    // Rotation, a batch, a downstream file delivered.
    a.rotate_key(KeyAlgorithm::Ed25519).await.unwrap();
    let s = a.send(&spool_batch(&a, &good_files()), &quiet).await.unwrap().status;
    assert_eq!(s.state, BatchState::Imported, "{:?}", s.detail);
    let inst = c.app.state.instance("alpha").await.unwrap().unwrap();
    let src = c.dir.join("po.csv");
    std::fs::write(&src, PO).unwrap();
    ferry_app::outbox::publish(&inst.0, "alpha", &c.app.state.sftp_root(), &src, "po_000001.csv").await.unwrap();
    c.app.state.announce_wakeup.notify_one();
    let mut delivered = false;
    for _ in 0..10 {
        let out = a.receive(5, &quiet).await.unwrap();
        if out.iter().any(|o| matches!(o, ferry_connector::receive::Outcome::Applied { .. })) {
            delivered = true;
            break;
        }
    }
    assert!(delivered);

    // A quota refusal, a limit change, a disabled tenant with an open session, a revoked key.
    let admin = c.admin().await.unwrap();
    admin.set_limits("alpha", &[(ferry_comms::limits::Limit::MaxBatchFiles, Some(1))]).await.unwrap();
    let reloaded = async || c.comms.state.limits.of("alpha").max_batch_files == 1;
    assert!(eventually(ferry_comms::ACCESS_RELOAD_BOUND, reloaded).await.is_some(), "the new limit is not in force");
    assert!(a.send(&spool_batch(&a, &good_files()), &quiet).await.is_err());
    let open = a.sftp().await.unwrap();
    admin.set_enabled("alpha", false).await.unwrap();
    assert!(wait_for(&c, "session_closed", "access withdrawn").await);
    drop(open);
    admin.set_enabled("alpha", true).await.unwrap();
    admin.revoke_key("alpha", &a.key_fingerprint()).await.unwrap();

    let ev = events(&c).await;
    for e in [
        "tenant_added",
        "token_issued",
        "registered",
        "key_new_address",
        "auth_failed",
        "key_rotated",
        "key_retired",
        "batch_completed",
        "batch_imported",
        "file_delivered",
        "quota_refused",
        "limits_changed",
        "tenant_disabled",
        "session_closed",
        "tenant_enabled",
        "key_revoked",
    ] {
        assert!(ev.iter().any(|(_, x, _)| x == e), "{e} missing from the audit log");
    }
    // Operator actions say who acted.
    assert!(ev.iter().any(|(_, e, d)| e == "tenant_disabled" && d == "by cli"));
    assert!(ferry_comms::db::verify_audit(&c.comms.state.db).await.unwrap().is_ok());
    c.stop().await;
}

/// `comms init` / `app init` with `--config` elsewhere: the data folder (and with it the admin token, keys and
/// certificates) is created next to the config file, never in whatever folder the operator happened to be in.
#[test]
fn server_data_lives_next_to_the_config_file_not_in_the_current_folder() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let etc = dir.path().join("etc");
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::create_dir_all(&elsewhere).unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(args)
            .current_dir(&elsewhere)
            .output()
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "ferry {args:?}: {text}");
        text
    };
    let comms = etc.join("comms.toml").display().to_string();
    let app = etc.join("app.toml").display().to_string();
    let out = run(&["comms", "init", "--config", &comms]);
    let token = etc.join("ferry-data/comms/admin.token");
    assert!(out.contains(&token.display().to_string()), "init names the token it wrote: {out}");
    assert_eq!(std::fs::metadata(&token).unwrap().permissions().mode() & 0o777, 0o600);
    run(&["comms", "info", "--config", &comms]);
    run(&["app", "init", "--config", &app]);
    run(&["app", "info", "--config", &app]);
    assert!(etc.join("ferry-data/app").is_dir());
    let left: Vec<_> = std::fs::read_dir(&elsewhere).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "nothing is written to the current folder: {left:?}");
}
