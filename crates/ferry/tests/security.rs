//! Isolation and authentication against real servers: tenants cannot cross, SFTP paths cannot escape the
//! tenant root, unsigned / unknown-key / replayed / re-targeted calls are refused, registration tokens work once
//! and only against the pinned server.

mod common;

use std::time::Duration;

use common::*;
use ferry_io::httpsig;
use ferry_io::keys::{self, KeyAlgorithm};
use ferry_proto::api::BatchState;
use ferry_proto::token::RegistrationToken;

/// GET `url` carrying the given signature headers (possibly made for another request: that is the point).
async fn signed_get(http: &reqwest::Client, url: &str, h: &httpsig::SignedHeaders) -> reqwest::Response {
    http.get(url)
        .header("content-digest", &h.content_digest)
        .header("signature-input", &h.signature_input)
        .header("signature", &h.signature)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tenants_cannot_cross_and_paths_cannot_escape() {
    let (_dir, c) = cluster().await;
    let a = tenant(&c, "alpha").await;
    let b = tenant(&c, "beta").await;

    // A uploads a batch but has not completed it yet.
    let m = spool_batch(&a, &good_files());
    let sa = a.sftp().await.unwrap();
    let remote = format!("/upload/{}", m.batch_id);
    sa.mkdir_all(&remote).await.unwrap();
    for f in &m.files {
        let n = f.compressed_name();
        sa.upload_file(&a.spool_dir(&m.batch_id).join(&n), &format!("{remote}/{n}")).await.unwrap();
    }
    let a_file = format!("{remote}/stock.csv.bz2");
    assert!(sa.stat_size(&a_file).await.unwrap().is_some());

    // B sees only its own (empty) root, however it names A's file.
    let sb = b.sftp().await.unwrap();
    assert!(sb.list("/").await.unwrap().is_empty(), "beta must see an empty root");
    let tenants_dir = c.comms.state.cfg.data_dir.join("tenants");
    for p in [
        a_file.clone(),
        format!("../alpha/sftp{a_file}"),
        format!("/../../alpha/sftp{a_file}"),
        format!("/upload/../../../alpha/sftp{a_file}"),
        format!("{}/alpha/sftp{a_file}", tenants_dir.display()),
    ] {
        assert!(sb.stat_size(&p).await.unwrap_or(None).is_none(), "beta reached {p}");
        let dst = c.dir.join("stolen");
        assert!(sb.download_file(&p, &dst).await.is_err(), "beta downloaded {p}");
        assert!(!dst.exists());
    }
    // A symlink planted inside B's root (by someone with shell access) still cannot lead out of it.
    let b_root = ferry_comms::tenant_sftp_root(&c.comms.state.cfg.data_dir, "beta");
    std::os::unix::fs::symlink(
        ferry_comms::tenant_sftp_root(&c.comms.state.cfg.data_dir, "alpha"),
        b_root.join("link"),
    )
    .unwrap();
    assert!(sb.download_file(&format!("/link{a_file}"), &c.dir.join("stolen2")).await.is_err());
    assert!(sb.stat_size(&format!("/link{a_file}")).await.unwrap_or(None).is_none());
    // B cannot write into A's tree either.
    let junk = c.dir.join("junk.bz2");
    std::fs::write(&junk, b"junk").unwrap();
    assert!(sb.upload_file(&junk, &format!("../alpha/sftp{remote}/evil.bz2")).await.is_err());
    assert!(sb.rename("/link/upload", "/stolen-upload").await.is_err());
    sb.close().await.unwrap();

    // B's key, presenting itself as user "alpha", still lands in B's root.
    let reg = b.registration().unwrap();
    let cfg = ferry_sftp::client::ClientConfig {
        user: "alpha".into(),
        key: std::sync::Arc::new(keys::load_private_key(&b.cfg.key_path()).unwrap()),
        host_key_fingerprint: reg.ssh_host_key_fingerprint.clone(),
        connect_timeout: Duration::from_secs(10),
        io_timeout: Duration::from_secs(10),
    };
    let as_alpha = ferry_sftp::client::SftpClient::connect(&cfg, &reg.ssh_addr).await.unwrap();
    assert!(as_alpha.stat_size(&a_file).await.unwrap_or(None).is_none());
    as_alpha.close().await.unwrap();

    // B cannot complete A's batch (B has no such files), nor read its status.
    let err = b
        .api()
        .unwrap()
        .post::<_, ferry_proto::api::BatchStatus>(&format!("/v1/batches/{}/complete", m.batch_id), &m)
        .await
        .expect_err("beta completing alpha's batch");
    assert_eq!(err.status(), Some(422), "{err}");
    // A completes it and it lands in A's instance only.
    let s = a.send(&m, &quiet).await.unwrap().status;
    assert_eq!(s.state, BatchState::Imported);
    let err = b
        .api()
        .unwrap()
        .get::<ferry_proto::api::BatchStatus>(&format!("/v1/batches/{}", m.batch_id))
        .await
        .expect_err("beta reading alpha's batch");
    assert_eq!(err.status(), Some(404));
    assert!(b.status(10).await.unwrap().is_empty());
    assert_eq!(counts(&c, "alpha").await["stock"], 2);
    assert_eq!(counts(&c, "beta").await["stock"], 0);
    sa.close().await.unwrap();
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unsigned_unknown_replayed_and_retargeted_calls_are_refused() {
    let (_dir, c) = cluster().await;
    let a = tenant(&c, "alpha").await;
    let reg = a.registration().unwrap();
    let http = ferry_io::tls::http_client(Some(&reg.tls_fingerprint), Duration::from_secs(10)).unwrap();
    let url = |p: &str| format!("{}{p}", reg.comms_url);

    // Unsigned.
    let r = http.get(url("/v1/whoami")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = http.post(url("/v1/batches/20261128T000000Z-00000000/complete")).body("{}").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);

    // Signed by a key nobody registered.
    let stranger = keys::generate(KeyAlgorithm::Ed25519).unwrap();
    let h = httpsig::sign(&stranger, "GET", "/v1/whoami", b"", httpsig::unix_now()).unwrap();
    let r = signed_get(&http, &url("/v1/whoami"), &h).await;
    assert_eq!(r.status().as_u16(), 401);

    // A properly signed call works once; the same signature again is a replay.
    let key = keys::load_private_key(&a.cfg.key_path()).unwrap();
    let h = httpsig::sign(&key, "GET", "/v1/whoami", b"", httpsig::unix_now()).unwrap();
    let first = signed_get(&http, &url("/v1/whoami"), &h).await;
    assert_eq!(first.status().as_u16(), 200);
    let who: ferry_proto::api::WhoAmI = first.json().await.unwrap();
    assert_eq!(who.tenant, "alpha");
    let replay = signed_get(&http, &url("/v1/whoami"), &h).await;
    assert_eq!(replay.status().as_u16(), 401);
    assert!(replay.text().await.unwrap().contains("replay"));

    // A signature made for one path does not work on another.
    let h = httpsig::sign(&key, "GET", "/v1/batches", b"", httpsig::unix_now()).unwrap();
    let r = signed_get(&http, &url("/v1/whoami"), &h).await;
    assert_eq!(r.status().as_u16(), 401);

    // A stale signature (older than the server's window) is refused.
    let h = httpsig::sign(&key, "GET", "/v1/whoami", b"", httpsig::unix_now() - 3600).unwrap();
    let r = signed_get(&http, &url("/v1/whoami"), &h).await;
    assert_eq!(r.status().as_u16(), 401);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn registration_tokens_are_single_use_expiring_and_pinned() {
    let (_dir, c) = cluster().await;
    let token = c.add_tenant("alpha").await.unwrap();
    let erp = c.dir.join("erp.db");

    // A token whose TLS pin is not this server's certificate: refused before anything is sent.
    let mut wrong = RegistrationToken::decode(&token).unwrap();
    wrong.tls = format!("sha256:{}", "ab".repeat(32));
    let err = c.connector("first", &erp, &wrong.encode()).await.err().expect("pin mismatch must fail");
    assert!(format!("{err:#}").contains("does not match the pinned fingerprint"), "{err:#}");

    // The real token works once...
    let conn = c.connector("second", &erp, &token).await.expect("first use");
    assert_eq!(conn.registration().unwrap().tenant, "alpha");
    // ...and not twice.
    let err = c.connector("third", &erp, &token).await.err().expect("reuse must fail");
    assert!(format!("{err:#}").contains("already used"), "{err:#}");

    // An expired token.
    let admin = c.admin().await.unwrap();
    let t = RegistrationToken::generate(&c.comms.url(), &c.comms.state.identity.tls_fingerprint);
    ferry_comms::db::add_token(
        &admin.db,
        &ferry_comms::api::secret_hash(&t.secret),
        "alpha",
        chrono::Utc::now() - chrono::Duration::minutes(1),
    )
    .await
    .unwrap();
    let err = c.connector("fourth", &erp, &t.encode()).await.err().expect("expired must fail");
    assert!(format!("{err:#}").contains("expired"), "{err:#}");

    // A made-up token.
    let t = RegistrationToken::generate(&c.comms.url(), &c.comms.state.identity.tls_fingerprint);
    let err = c.connector("fifth", &erp, &t.encode()).await.err().expect("unknown must fail");
    assert!(format!("{err:#}").contains("not known"), "{err:#}");

    // The registered connector's private key is 0600.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(conn.cfg.key_path()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    c.stop().await;
}

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
    sqlx::query("UPDATE audit SET detail = 'nothing to see' WHERE id = 3").execute(db).await.unwrap();
    let why = ferry_comms::db::verify_audit(db).await.unwrap().expect_err("edit must be detected");
    assert!(why.contains("entry 3") && why.contains("edited"), "{why}");
    // Remove an entry instead (after restoring a consistent chain is impossible without the hashes).
    sqlx::query("DELETE FROM audit WHERE id = 3").execute(db).await.unwrap();
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
async fn a_disabled_tenant_is_refused_at_https_and_ssh() {
    let (_dir, c) = cluster().await;
    let a = tenant(&c, "alpha").await;
    assert!(a.status(1).await.is_ok());
    let admin = c.admin().await.unwrap();
    admin.set_enabled("alpha", false).await.unwrap();
    tokio::time::sleep(ferry_comms::KEY_RELOAD_INTERVAL + Duration::from_secs(1)).await;
    let err = a.status(1).await.expect_err("disabled tenant must be refused over HTTPS");
    assert!(format!("{err:#}").contains("401"), "{err:#}");
    let err = a.sftp().await.err().expect("disabled tenant must be refused over SSH");
    assert!(format!("{err:#}").contains("refused this key"), "{err:#}");
    admin.set_enabled("alpha", true).await.unwrap();
    tokio::time::sleep(ferry_comms::KEY_RELOAD_INTERVAL + Duration::from_secs(1)).await;
    assert!(a.status(1).await.is_ok());
    assert!(a.sftp().await.is_ok());
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn key_rotation_has_no_downtime_and_retires_the_old_key_and_revocation_is_immediate() {
    let (_dir, c) = cluster().await;
    let a = tenant(&c, "alpha").await;
    let old_key = keys::load_private_key(&a.cfg.key_path()).unwrap();
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

    // Revocation: the operator revokes beta's key; within seconds it is refused at HTTPS and SSH.
    assert!(ferry_comms::db::revoke_key(&c.comms.state.db, "beta", &after).await.unwrap());
    tokio::time::sleep(ferry_comms::KEY_RELOAD_INTERVAL + Duration::from_secs(1)).await;
    assert!(b.status(1).await.is_err());
    assert!(b.sftp().await.is_err());
    c.stop().await;
}
