//! The attack suite of issue 5: every attack against real servers on 127.0.0.1, each asserting refusal (or
//! that the attack lands harmlessly inside the attacker's own tenant), and that the database is intact after.
//!
//! - cross-tenant SFTP login / read / write / rename, path escapes (`..`, absolute, symlink, unicode look-alikes,
//!   very long names)
//! - forged, expired, replayed and re-targeted signatures; reused, expired and unknown registration tokens
//! - a disabled tenant and a revoked key: refused at SSH and HTTPS, open sessions closed at once
//! - oversize uploads and the other limits; bzip2 bombs; manifests naming files outside the batch
//! - SQL metacharacters in every identifier that reaches SQL
//! - brute-force SSH authentication; admin paths on the public port; plain HTTP serving anything but a redirect

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use ferry::cluster::Cluster;
use ferry_comms::limits::Limit;
use ferry_connector::agent::Connector;
use ferry_io::httpsig;
use ferry_io::keys::{self, KeyAlgorithm};
use ferry_proto::api::{BatchState, BatchStatus};
use ferry_proto::manifest::Manifest;
use ferry_proto::token::RegistrationToken;
use ferry_sftp::client::{ClientConfig, ClientError, SftpClient};
use russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg};
use russh_sftp::client::RawSftpSession;
use russh_sftp::protocol::{FileAttributes, OpenFlags, StatusCode};

const EVIL: &[&str] = &["'; DROP TABLE tenants; --", "\"", "\0", "%", "_", "x' OR '1'='1", "a\"; DELETE FROM keys; --"];

fn pinned_http(c: &Cluster) -> reqwest::Client {
    ferry_io::tls::http_client(Some(&c.comms.state.identity.tls_fingerprint), Duration::from_secs(20)).unwrap()
}

/// An SFTP client with this connector's key (or another) and any user name.
fn sftp_config(conn: &Connector, user: &str, key: Option<PrivateKey>) -> ClientConfig {
    let reg = conn.registration().unwrap();
    ClientConfig {
        user: user.into(),
        key: Arc::new(key.unwrap_or_else(|| keys::load_private_key(conn.cfg.key_path()).unwrap())),
        host_key_fingerprint: reg.ssh_host_key_fingerprint,
        connect_timeout: Duration::from_secs(30),
        io_timeout: Duration::from_secs(30),
    }
}

struct AnyHost;

impl russh::client::Handler for AnyHost {
    type Error = russh::Error;
    async fn check_server_key(&mut self, _key: &russh::keys::PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

/// A raw SFTP session (every request by hand, every status visible) as `conn`'s tenant.
async fn raw_sftp(conn: &Connector) -> (russh::client::Handle<AnyHost>, RawSftpSession) {
    let reg = conn.registration().unwrap();
    let key = Arc::new(keys::load_private_key(conn.cfg.key_path()).unwrap());
    let mut ssh = russh::client::connect(Arc::new(russh::client::Config::default()), reg.ssh_addr.as_str(), AnyHost)
        .await
        .unwrap();
    let hash = match ssh.best_supported_rsa_hash().await {
        Ok(Some(h)) => h,
        _ => Some(HashAlg::Sha256),
    };
    let hash = if key.algorithm().is_rsa() { hash } else { None };
    let auth = ssh.authenticate_publickey("connector", PrivateKeyWithHashAlg::new(key, hash)).await.unwrap();
    assert!(matches!(auth, russh::client::AuthResult::Success));
    let ch = ssh.channel_open_session().await.unwrap();
    ch.request_subsystem(true, "sftp").await.unwrap();
    let raw = RawSftpSession::new(ch.into_stream());
    raw.init().await.unwrap();
    raw.set_timeout(20);
    (ssh, raw)
}

fn status_of<T: std::fmt::Debug>(r: Result<T, russh_sftp::client::error::Error>) -> (StatusCode, String) {
    match r {
        Err(russh_sftp::client::error::Error::Status(s)) => (s.status_code, s.error_message),
        other => panic!("expected an SFTP status error, got {other:?}"),
    }
}

async fn audit_events(c: &Cluster) -> Vec<(Option<String>, String, String)> {
    ferry_comms::db::recent_audit(&c.comms.state.db, 10_000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.2, e.3, e.4))
        .collect()
}

/// The database is whole: SQLite's own check, every table still there, the audit chain intact.
async fn db_intact(c: &Cluster, tenants: i64) {
    let ferry_comms::db::Db::Sqlite(db) = &c.comms.state.db else { panic!("these attacks run on SQLite") };
    let check: String = sqlx::query_scalar("PRAGMA integrity_check").fetch_one(db).await.unwrap();
    assert_eq!(check, "ok");
    for table in ["tenants", "keys", "tokens", "batches", "audit", "downloads", "tenant_limits"] {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?")
            .bind(table)
            .fetch_one(db)
            .await
            .unwrap();
        assert_eq!(n, 1, "table {table} is gone");
    }
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tenants").fetch_one(db).await.unwrap();
    assert_eq!(n, tenants, "tenant rows changed");
    let active: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM tenants WHERE status = 'active'").fetch_one(db).await.unwrap();
    assert_eq!(active, tenants, "a tenant was disabled");
    ferry_comms::db::verify_audit(&c.comms.state.db).await.unwrap().expect("audit chain intact");
}

/// `/v1/...` path segment with every byte that is not a letter or digit percent-encoded.
fn enc(s: &str) -> String {
    s.bytes().map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}

async fn set_limit(c: &Cluster, tenant: &str, limit: Limit, value: u64) {
    let admin = c.admin().await.unwrap();
    admin.set_limits(tenant, &[(limit, Some(value))]).await.unwrap();
    let st = &c.comms.state;
    assert!(
        eventually(Duration::from_secs(3), async || limit.get(&st.limits.of(tenant)) == value).await.is_some(),
        "the server did not pick up the new limit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cross_tenant_sftp_and_path_escapes_are_refused() {
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
    let a_root = ferry_comms::tenant_sftp_root(&c.comms.state.cfg.data_dir, "alpha");
    std::os::unix::fs::symlink(&a_root, b_root.join("link")).unwrap();
    assert!(sb.download_file(&format!("/link{a_file}"), &c.dir.join("stolen2")).await.is_err());
    assert!(sb.stat_size(&format!("/link{a_file}")).await.unwrap_or(None).is_none());
    // B cannot write into A's tree, nor rename A's files out of it or its own files into it.
    let junk = c.dir.join("junk.bz2");
    std::fs::write(&junk, b"junk").unwrap();
    assert!(sb.upload_file(&junk, &format!("../alpha/sftp{remote}/evil.bz2")).await.is_err());
    assert!(sb.upload_file(&junk, &format!("/link{remote}/evil.bz2")).await.is_err());
    assert!(sb.rename("/link/upload", "/stolen-upload").await.is_err());
    assert!(sb.rename(&format!("/link{a_file}"), "/stolen.bz2").await.is_err());
    sb.upload_file(&junk, "/mine.bz2").await.unwrap();
    assert!(sb.rename("/mine.bz2", &format!("/link{remote}/planted.bz2")).await.is_err());
    assert!(sb.rename("/mine.bz2", &format!("../alpha/sftp{remote}/planted.bz2")).await.is_err());
    assert!(
        !a_root.join(&remote[1..]).join("planted.bz2").exists() && !a_root.join(&remote[1..]).join("evil.bz2").exists()
    );
    sb.close().await.unwrap();

    // B's key, presenting itself as user "alpha", still lands in B's root.
    let as_alpha =
        SftpClient::connect(&sftp_config(&b, "alpha", None), &b.registration().unwrap().ssh_addr).await.unwrap();
    assert!(as_alpha.stat_size(&a_file).await.unwrap_or(None).is_none());
    assert!(as_alpha.stat_size("/mine.bz2").await.unwrap().is_some(), "beta's own root");
    as_alpha.close().await.unwrap();
    // A key nobody registered cannot log in, whatever the user name.
    let stranger = keys::generate(KeyAlgorithm::Ed25519).unwrap();
    let r = SftpClient::connect(&sftp_config(&b, "alpha", Some(stranger)), &b.registration().unwrap().ssh_addr).await;
    assert!(matches!(r, Err(ClientError::AuthRejected)), "{:?}", r.err());

    // Unicode look-alikes, control characters and overlong names: refused with a clear status, nothing
    // created anywhere.
    let (_ssh, raw) = raw_sftp(&b).await;
    let before: Vec<_> = std::fs::read_dir(&tenants_dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    for (p, says) in [
        ("\u{FF0E}\u{FF0E}/\u{FF0E}\u{FF0E}/alpha/sftp/x", "U+FF0E"),
        ("..\u{FF0F}..\u{FF0F}alpha", "U+FF0F"),
        ("..\u{2215}..\u{2215}alpha", "U+2215"),
        ("\u{2024}\u{2024}/x", "U+2024"),
        ("invoice\u{202E}fdp.exe", "U+202E"),
        ("a\u{200B}", "U+200B"),
        ("line\nbreak", "control character"),
        ("..\\..\\alpha", "backslash"),
    ] {
        let (code, msg) = status_of(raw.open(p, OpenFlags::CREATE | OpenFlags::WRITE, FileAttributes::default()).await);
        assert_eq!(code, StatusCode::PermissionDenied, "{p:?}: {msg}");
        assert!(msg.contains(says), "{p:?}: {msg}");
        let (_, msg) = status_of(raw.mkdir(p, FileAttributes::default()).await);
        assert!(msg.contains(says), "{p:?}: {msg}");
    }
    let long_name = "n".repeat(256);
    let (_, msg) = status_of(raw.mkdir(long_name.as_str(), FileAttributes::default()).await);
    assert!(msg.contains("longer than 255 bytes"), "{msg}");
    let long_path = "d/".repeat(2100);
    let (_, msg) = status_of(raw.open(long_path.as_str(), OpenFlags::READ, FileAttributes::default()).await);
    assert!(msg.contains("longer than 4096 bytes"), "{msg}");
    // One spelling per name (issue 15): the NFC spelling is a plain name inside beta's root, NFD is refused.
    let h = raw.open("caf\u{e9}.txt", OpenFlags::CREATE | OpenFlags::WRITE, FileAttributes::default()).await.unwrap();
    raw.close(h.handle).await.unwrap();
    assert!(b_root.join("caf\u{e9}.txt").is_file());
    let (_, msg) =
        status_of(raw.open("cafe\u{301}.txt", OpenFlags::CREATE | OpenFlags::WRITE, FileAttributes::default()).await);
    assert!(msg.contains("NFC"), "{msg}");
    let after: Vec<_> = std::fs::read_dir(&tenants_dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(before, after, "nothing appeared next to the tenants");
    assert!(!c.comms.state.cfg.data_dir.join("x").exists());

    // B cannot complete A's batch (B has no such files), nor read its status.
    let err = b
        .api()
        .unwrap()
        .post::<_, BatchStatus>(&format!("/v1/batches/{}/complete", m.batch_id), &m)
        .await
        .expect_err("beta completing alpha's batch");
    assert_eq!(err.status(), Some(422), "{err}");
    let s = a.send(&m, &quiet).await.unwrap().status;
    assert_eq!(s.state, BatchState::Imported);
    let err = b.api().unwrap().get::<BatchStatus>(&format!("/v1/batches/{}", m.batch_id)).await.expect_err("read");
    assert_eq!(err.status(), Some(404));
    assert!(b.status(10).await.unwrap().is_empty());
    assert_eq!(counts(&c, "alpha").await["stock"], 2);
    assert_eq!(counts(&c, "beta").await["stock"], 0);
    sa.close().await.unwrap();
    db_intact(&c, 2).await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forged_unsigned_expired_replayed_and_retargeted_signatures_are_refused() {
    let (_dir, c) = cluster().await;
    let a = tenant(&c, "alpha").await;
    let b = tenant(&c, "beta").await;
    let reg = a.registration().unwrap();
    let http = pinned_http(&c);
    let url = |p: &str| format!("{}{p}", reg.comms_url);

    // Unsigned.
    let r = http.get(url("/v1/whoami")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = http.post(url("/v1/batches/20261128T000000Z-00000000/complete")).body("{}").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);

    // Signed by a key nobody registered.
    let stranger = keys::generate(KeyAlgorithm::Ed25519).unwrap();
    let h = httpsig::sign(&stranger, "GET", "/v1/whoami", b"", httpsig::unix_now()).unwrap();
    assert_eq!(signed_get(&http, &url("/v1/whoami"), &h).await.status().as_u16(), 401);

    // Forged: a real signature with one byte changed, or with another tenant's key id put in.
    let key_a = keys::load_private_key(a.cfg.key_path()).unwrap();
    let mut h = httpsig::sign(&key_a, "GET", "/v1/whoami", b"", httpsig::unix_now()).unwrap();
    let flip = "sig1=:".len() + 10;
    let c0 = h.signature.as_bytes()[flip];
    h.signature.replace_range(flip..flip + 1, if c0 == b'A' { "B" } else { "A" });
    assert_eq!(signed_get(&http, &url("/v1/whoami"), &h).await.status().as_u16(), 401);
    let mut h = httpsig::sign(&key_a, "GET", "/v1/whoami", b"", httpsig::unix_now()).unwrap();
    h.signature_input = h.signature_input.replace(&a.key_fingerprint(), &b.key_fingerprint());
    assert_eq!(signed_get(&http, &url("/v1/whoami"), &h).await.status().as_u16(), 401, "A's signature as B's");

    // A properly signed call works once; the same signature again is a replay.
    let h = httpsig::sign(&key_a, "GET", "/v1/whoami", b"", httpsig::unix_now()).unwrap();
    let first = signed_get(&http, &url("/v1/whoami"), &h).await;
    assert_eq!(first.status().as_u16(), 200);
    assert_eq!(first.json::<ferry_proto::api::WhoAmI>().await.unwrap().tenant, "alpha");
    let replay = signed_get(&http, &url("/v1/whoami"), &h).await;
    assert_eq!(replay.status().as_u16(), 401);
    assert!(replay.text().await.unwrap().contains("replay"));

    // Re-targeted: a signature made for one path does not work on another...
    let h = httpsig::sign(&key_a, "GET", "/v1/batches", b"", httpsig::unix_now()).unwrap();
    assert_eq!(signed_get(&http, &url("/v1/whoami"), &h).await.status().as_u16(), 401);
    // ...and B signing a request for A's batch reaches only B's data.
    let s = a.send(&spool_batch(&a, &good_files()), &quiet).await.unwrap().status;
    let path = format!("/v1/batches/{}", s.batch_id);
    let key_b = keys::load_private_key(b.cfg.key_path()).unwrap();
    let h = httpsig::sign(&key_b, "GET", &path, b"", httpsig::unix_now()).unwrap();
    assert_eq!(signed_get(&http, &url(&path), &h).await.status().as_u16(), 404);

    // Expired (older than the server's window) and future-dated signatures.
    for at in [httpsig::unix_now() - 3600, httpsig::unix_now() + 3600] {
        let h = httpsig::sign(&key_a, "GET", "/v1/whoami", b"", at).unwrap();
        assert_eq!(signed_get(&http, &url("/v1/whoami"), &h).await.status().as_u16(), 401);
    }
    // Every refusal was audited (coalesced: at least one entry for this address).
    let audited = async || audit_events(&c).await.iter().any(|(_, e, d)| e == "auth_failed" && d.contains("https"));
    assert!(eventually(Duration::from_secs(10), audited).await.is_some(), "the refused calls were not audited");
    db_intact(&c, 2).await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reused_expired_unknown_and_foreign_registration_tokens_are_refused() {
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
    // A token of a disabled tenant.
    let t = admin.token("alpha", &c.comms.url()).await.unwrap();
    admin.set_enabled("alpha", false).await.unwrap();
    let err = c.connector("sixth", &erp, &t).await.err().expect("disabled tenant must fail");
    assert!(format!("{err:#}").contains("disabled"), "{err:#}");
    admin.set_enabled("alpha", true).await.unwrap();

    // The registered connector's private key is 0600.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(conn.cfg.key_path()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let refused = audit_events(&c).await.iter().filter(|(_, e, _)| e == "register_refused").count();
    assert_eq!(refused, 4, "reused, expired, unknown, disabled");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_disabled_tenant_and_a_revoked_key_are_cut_off_at_once() {
    let (_dir, c) = cluster().await;
    let a = tenant(&c, "alpha").await;
    let b = tenant(&c, "beta").await;
    // The design bound, plus slack for a loaded CI machine running the whole suite at once.
    let bound = ferry_comms::ACCESS_RELOAD_BOUND + Duration::from_secs(2);

    // An open session of each tenant, busy listing its root.
    let sa = a.sftp().await.unwrap();
    let sb = b.sftp().await.unwrap();
    assert!(sa.list("/").await.is_ok() && sb.list("/").await.is_ok());
    assert!(a.status(1).await.is_ok());
    assert_eq!(c.comms.state.sessions.len(), 2);

    // The operator disables alpha from the command line: another process, another database connection.
    let cli = ferry_comms::admin::Admin::open(c.comms.state.cfg.clone()).await.unwrap();
    let t = Instant::now();
    cli.set_enabled("alpha", false).await.unwrap();
    let cut = eventually(bound, async || sa.list("/").await.is_err()).await;
    assert!(cut.is_some(), "alpha's open sftp session was not closed within {bound:?}");
    let err = a.status(1).await.expect_err("disabled tenant over HTTPS");
    assert!(format!("{err:#}").contains("401"), "{err:#}");
    assert!(t.elapsed() < bound + Duration::from_secs(2), "{:?}", t.elapsed());
    let err = a.sftp().await.err().expect("disabled tenant over SSH");
    assert!(format!("{err:#}").contains("refused this key"), "{err:#}");
    // beta is untouched.
    assert!(sb.list("/").await.is_ok());
    assert!(b.status(1).await.is_ok());
    let ev = audit_events(&c).await;
    assert!(
        ev.iter().any(|(t, e, d)| t.as_deref() == Some("alpha") && e == "session_closed" && d.contains("withdrawn")),
        "{ev:?}"
    );
    assert!(ev.iter().any(|(t, e, d)| t.as_deref() == Some("alpha") && e == "tenant_disabled" && d.contains("by cli")));

    // Enabled again: back in.
    cli.set_enabled("alpha", true).await.unwrap();
    assert!(eventually(bound, async || a.status(1).await.is_ok()).await.is_some());
    assert!(a.sftp().await.is_ok());

    // Revoking beta's key cuts its session and refuses it everywhere.
    cli.revoke_key("beta", &b.key_fingerprint()).await.unwrap();
    assert!(
        eventually(bound, async || sb.list("/").await.is_err()).await.is_some(),
        "revoked key's session still open"
    );
    assert!(b.status(1).await.is_err());
    assert!(b.sftp().await.is_err());
    let _ = sa.close().await;
    db_intact(&c, 2).await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oversize_uploads_and_batches_over_the_limits_are_refused_and_leave_nothing() {
    let (_dir, c) = cluster().await;
    let a = tenant(&c, "alpha").await;
    let root = ferry_comms::tenant_sftp_root(&c.comms.state.cfg.data_dir, "alpha");
    std::fs::create_dir_all(root.join("upload")).unwrap();

    // Per-file cap, enforced while writing: the write that passes it is refused with the limit's name and value,
    // and the file is removed (nothing partial stays visible).
    set_limit(&c, "alpha", Limit::MaxUploadFileBytes, 1 << 20).await;
    let big = c.dir.join("big.bin");
    std::fs::write(&big, vec![7u8; 3 << 20]).unwrap();
    let sftp = a.sftp().await.unwrap();
    assert!(sftp.upload_file(&big, "/upload/big.bin").await.is_err());
    sftp.close().await.ok();
    assert!(!root.join("upload/big.bin").exists() && !root.join("upload/.big.bin.part").exists());
    let (_ssh, raw) = raw_sftp(&a).await;
    let h = raw.open("/upload/raw.bin", OpenFlags::CREATE | OpenFlags::WRITE, FileAttributes::default()).await.unwrap();
    raw.write(h.handle.as_str(), 0, vec![1u8; 200_000]).await.unwrap();
    let (code, msg) = status_of(raw.write(h.handle.as_str(), (1 << 20) - 1000, vec![1u8; 2000]).await);
    assert_eq!(code, StatusCode::Failure);
    assert!(msg.contains("max_upload_file_bytes = 1048576 bytes") && msg.contains("split the data"), "{msg}");
    assert!(msg.contains("ferry comms tenant limits alpha --max-upload-file-bytes"), "{msg}");
    assert!(!root.join("upload/raw.bin").exists(), "the refused file was removed");
    // Growing a file past the cap by setting its size is refused the same way.
    let h =
        raw.open("/upload/sparse.bin", OpenFlags::CREATE | OpenFlags::WRITE, FileAttributes::default()).await.unwrap();
    let attrs = FileAttributes { size: Some(1 << 40), ..FileAttributes::default() };
    let (_, msg) = status_of(raw.fsetstat(h.handle.as_str(), attrs).await);
    assert!(msg.contains("max_upload_file_bytes"), "{msg}");
    assert!(!root.join("upload/sparse.bin").exists());

    // Bytes per day (a fresh tenant, so the uploads above do not count): summed across sessions.
    set_limit(&c, "alpha", Limit::MaxUploadFileBytes, 10 << 20).await;
    let b = tenant(&c, "beta").await;
    let b_root = ferry_comms::tenant_sftp_root(&c.comms.state.cfg.data_dir, "beta");
    set_limit(&c, "beta", Limit::UploadBytesPerDay, 1 << 20).await;
    let (_ssh1, raw1) = raw_sftp(&b).await;
    let h = raw1.open("/day1.bin", OpenFlags::CREATE | OpenFlags::WRITE, FileAttributes::default()).await.unwrap();
    for i in 0..4u64 {
        raw1.write(h.handle.as_str(), i * 200_000, vec![2u8; 200_000]).await.unwrap();
    }
    raw1.close(h.handle).await.unwrap();
    let (_ssh2, raw2) = raw_sftp(&b).await;
    let h = raw2.open("/day2.bin", OpenFlags::CREATE | OpenFlags::WRITE, FileAttributes::default()).await.unwrap();
    let (_, msg) = status_of(raw2.write(h.handle.as_str(), 0, vec![3u8; 250_000]).await);
    assert!(msg.contains("upload_bytes_per_day = 1048576 bytes") && msg.contains("next UTC day"), "{msg}");
    assert!(b_root.join("day1.bin").exists() && !b_root.join("day2.bin").exists());

    // Files per batch and bytes per batch, at completion.
    set_limit(&c, "alpha", Limit::MaxBatchFiles, 3).await;
    let m = spool_batch(&a, &good_files());
    let err = a.send(&m, &quiet).await.expect_err("too many files");
    let e = format!("{err:#}");
    assert!(e.contains("6 files") && e.contains("max_batch_files = 3 files"), "{e}");
    set_limit(&c, "alpha", Limit::MaxBatchFiles, 200).await;
    set_limit(&c, "alpha", Limit::MaxBatchBytes, 100).await;
    let m = spool_batch(&a, &good_files());
    let err = a.send(&m, &quiet).await.expect_err("too many bytes");
    assert!(format!("{err:#}").contains("max_batch_bytes = 100 bytes"), "{err:#}");
    assert!(a.status(10).await.unwrap().is_empty(), "no batch was recorded");
    assert_eq!(counts(&c, "alpha").await["stock"], 0);

    // Downstream file size: the App's announcement of a file over the limit is refused.
    set_limit(&c, "alpha", Limit::MaxDownloadFileBytes, 10).await;
    let inst = c.app.state.instance("alpha").await.unwrap().unwrap();
    let src = c.dir.join("report.csv");
    std::fs::write(&src, "a,b\n1,2\n3,4\n").unwrap();
    ferry_app::outbox::publish(&inst.0, "alpha", &c.app.state.sftp_root(), &src, "report.csv").await.unwrap();
    c.app.state.announce_wakeup.notify_one();
    let refused = eventually(Duration::from_secs(20), async || {
        audit_events(&c)
            .await
            .iter()
            .any(|(_, e, d)| e == "quota_refused" && d.contains("max_download_file_bytes = 10"))
    })
    .await;
    assert!(refused.is_some(), "the oversize downstream file was not refused");
    assert!(ferry_comms::db::tenant_downloads(&c.comms.state.db, "alpha", 10).await.unwrap().is_empty());

    // Every refusal is in the audit log, once per refused file or batch.
    let ev = audit_events(&c).await;
    for key in ["max_upload_file_bytes", "upload_bytes_per_day", "max_batch_files", "max_batch_bytes"] {
        assert!(ev.iter().any(|(_, e, d)| e == "quota_refused" && d.contains(key)), "{key}");
    }
    assert!(ev.iter().any(|(_, e, d)| e == "limits_changed" && d.contains("max_batch_files = 3")));
    db_intact(&c, 2).await;
    c.stop().await;
}

/// A bzip2 stream of `plain` zero bytes, repeated `times` (a multi-stream file: every decoder must read it all).
fn bomb(plain: usize, times: usize) -> Vec<u8> {
    use std::io::Write;
    let mut enc = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::best());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..plain / zeros.len() {
        enc.write_all(&zeros).unwrap();
    }
    let one = enc.finish().unwrap();
    one.repeat(times)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bzip2_bombs_are_stopped_by_the_caps_and_nothing_is_imported() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cluster::start_with(dir.path(), |app| app.max_decompressed_bytes = 1 << 30, |_| {}).await.unwrap();
    let a = tenant(&c, "alpha").await;
    // 32 MiB of zeros compress to a few dozen bytes; 128 copies: 4 GiB from a few kB.
    let bz = bomb(32 << 20, 128);
    assert!(bz.len() < 64 * 1024, "{} bytes", bz.len());
    let good = spool_batch(&a, &good_files());
    assert_eq!(a.send(&good, &quiet).await.unwrap().status.state, BatchState::Imported);
    let before = counts(&c, "alpha").await;

    let planted = |announce: u64| {
        let mut m = spool_batch(&a, &good_files());
        std::fs::write(a.spool_dir(&m.batch_id).join("stock.csv.bz2"), &bz).unwrap();
        let f = m.files.iter_mut().find(|f| f.name == "stock.csv").unwrap();
        f.compressed_bytes = bz.len() as u64;
        f.compressed_sha256 = Some(ferry_io::digest::Digests::of(&bz).sha256);
        f.bytes = announce;
        write_manifest(&a, &m);
        m
    };
    // 1. The manifest lies (a small file): decompression stops just past the announced size.
    let t = Instant::now();
    let s = a.send(&planted(300), &quiet).await.unwrap().status;
    assert_eq!(s.state, BatchState::Rejected);
    let d = s.detail.unwrap_or_default();
    assert!(d.contains("stock.csv") && d.contains("exceeds the cap") && d.contains("bomb"), "{d}");
    // 2. The manifest tells the truth (4 GiB): more than this App accepts per file, refused unopened.
    let s = a.send(&planted(4 << 30), &quiet).await.unwrap().status;
    assert_eq!(s.state, BatchState::Rejected);
    let d = s.detail.unwrap_or_default();
    assert!(d.contains("stock.csv") && d.contains("more than this server accepts per file"), "{d}");
    // 3. Under the per-file cap (512 MiB announced): the CSV line limit stops it at 1 MiB of zeros.
    let s = a.send(&planted(512 << 20), &quiet).await.unwrap().status;
    assert_eq!(s.state, BatchState::Rejected, "{:?}", s.detail);
    assert!(t.elapsed() < Duration::from_secs(60), "the bombs were defused quickly: {:?}", t.elapsed());
    assert_eq!(counts(&c, "alpha").await, before, "nothing of a bomb batch was imported");
    db_intact(&c, 1).await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn manifests_naming_files_outside_the_batch_are_refused() {
    let (_dir, c) = cluster().await;
    let a = tenant(&c, "alpha").await;
    let b = tenant(&c, "beta").await;
    // beta has a batch uploaded (not completed): alpha must not be able to claim its files.
    let mb = spool_batch(&b, &good_files());
    let sb = b.sftp().await.unwrap();
    let remote = format!("/upload/{}", mb.batch_id);
    sb.mkdir_all(&remote).await.unwrap();
    for f in &mb.files {
        let n = f.compressed_name();
        sb.upload_file(&b.spool_dir(&mb.batch_id).join(&n), &format!("{remote}/{n}")).await.unwrap();
    }
    sb.close().await.unwrap();

    let m = spool_batch(&a, &good_files());
    let sa = a.sftp().await.unwrap();
    let up = format!("/upload/{}", m.batch_id);
    sa.mkdir_all(&up).await.unwrap();
    for f in &m.files {
        let n = f.compressed_name();
        sa.upload_file(&a.spool_dir(&m.batch_id).join(&n), &format!("{up}/{n}")).await.unwrap();
    }
    sa.close().await.unwrap();
    let api = a.api().unwrap();
    let complete = async |m: &Manifest, id: &str| {
        api.post::<_, BatchStatus>(&format!("/v1/batches/{id}/complete"), m).await.expect_err("must be refused")
    };
    let b_path = format!("../../beta/sftp/upload/{}/stock.csv", mb.batch_id);
    for name in
        ["../x.csv", "/etc/passwd", "../stock.csv", b_path.as_str(), "ut_1/../../x.csv", "stock.csv/..", "./stock.csv"]
    {
        let mut bad = m.clone();
        bad.files[0].name = name.into();
        let err = complete(&bad, m.batch_id.as_str()).await;
        assert_eq!(err.status(), Some(422), "{name}: {err}");
        assert!(err.to_string().contains("not a standard file"), "{name}: {err}");
    }
    // beta's batch id under alpha's key: alpha has no such files.
    let err = complete(&mb, mb.batch_id.as_str()).await;
    assert_eq!(err.status(), Some(422), "{err}");
    assert!(err.to_string().contains("missing from upload"), "{err}");
    // A manifest for another batch than the one in the URL.
    let err = complete(&mb, m.batch_id.as_str()).await;
    assert!(err.to_string().contains("sent as batch"), "{err}");
    // A batch id that is a path.
    for id in ["..%2F..%2Fbeta", "20261128T000000Z-0000000%2F", "%00"] {
        let err = api.post::<_, BatchStatus>(&format!("/v1/batches/{id}/complete"), &m).await.expect_err(id);
        assert_eq!(err.status(), Some(400), "{id}: {err}");
    }
    // Nothing moved: both uploads are where they were, no batch recorded, beta's files untouched.
    let a_root = ferry_comms::tenant_sftp_root(&c.comms.state.cfg.data_dir, "alpha");
    let b_root = ferry_comms::tenant_sftp_root(&c.comms.state.cfg.data_dir, "beta");
    assert_eq!(std::fs::read_dir(a_root.join(&up[1..])).unwrap().count(), m.files.len());
    assert_eq!(std::fs::read_dir(b_root.join(&remote[1..])).unwrap().count(), mb.files.len());
    assert!(a.status(10).await.unwrap().is_empty() && b.status(10).await.unwrap().is_empty());
    // The honest manifest still works.
    assert_eq!(a.send(&m, &quiet).await.unwrap().status.state, BatchState::Imported);
    db_intact(&c, 2).await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sql_metacharacters_in_every_identifier_are_refused_or_stored_literally() {
    let (_dir, c) = cluster().await;
    let a = tenant(&c, "alpha").await;
    let _b = tenant(&c, "beta").await;
    let admin = c.admin().await.unwrap();
    let http = pinned_http(&c);
    let token = std::fs::read_to_string(c.comms.state.cfg.admin_token_path()).unwrap();
    let admin_url = format!("https://{}", c.comms.admin_addr.unwrap());

    for evil in EVIL {
        // tenant names at `tenant add` (CLI and admin API), and every operator command that names a tenant
        let err = admin.add_tenant(evil, &c.comms.url()).await.expect_err("evil tenant name");
        assert!(format!("{err:#}").contains("is not valid"), "{err:#}");
        let r = http
            .post(format!("{admin_url}/admin/v1/tenants"))
            .bearer_auth(token.trim())
            .json(&serde_json::json!({ "name": evil }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400, "{evil:?}");
        assert!(admin.set_enabled(evil, false).await.is_err(), "{evil:?} disabled something");
        assert!(admin.token(evil, &c.comms.url()).await.is_err());
        assert!(admin.set_limits(evil, &[(Limit::MaxBatchFiles, Some(1))]).await.is_err());
        assert!(admin.revoke_key(evil, &a.key_fingerprint()).await.is_err());
        assert!(admin.revoke_key("alpha", evil).await.is_err(), "{evil:?} as a fingerprint revoked a key");
        assert!(ferry_comms::db::tenant_keys(&admin.db, evil).await.unwrap().is_empty(), "{evil:?} matched keys");
        // batch ids and file ids in URLs
        let api = a.api().unwrap();
        let err = api.get::<BatchStatus>(&format!("/v1/batches/{}", enc(evil))).await.expect_err("evil batch id");
        assert_eq!(err.status(), Some(400), "{evil:?}: {err}");
        let err = api
            .post::<_, serde_json::Value>(&format!("/v1/files/{}/ack", enc(evil)), &serde_json::json!({"sha256": evil}))
            .await
            .expect_err("evil file id");
        assert_eq!(err.status(), Some(400), "{evil:?}: {err}");
        // file names in manifests
        let mut m = spool_batch(&a, &good_files());
        m.files[0].name = format!("{evil}.csv");
        let err =
            api.post::<_, BatchStatus>(&format!("/v1/batches/{}/complete", m.batch_id), &m).await.expect_err("name");
        assert_eq!(err.status(), Some(422), "{evil:?}: {err}");
    }

    // Key comments and host names at registration: stored literally (control characters dropped).
    let evil_host = EVIL.join(" ");
    let t = RegistrationToken::decode(&admin.token("alpha", &c.comms.url()).await.unwrap()).unwrap();
    let key = keys::generate(KeyAlgorithm::Ed25519).unwrap();
    let public_key = format!("{} {}", keys::public_key_openssh(key.public_key()).unwrap(), EVIL[0]);
    let r = http
        .post(format!("{}/v1/register", c.comms.url()))
        .json(&serde_json::json!({ "token_secret": t.secret, "public_key": public_key, "hostname": evil_host }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
    let stored = ferry_comms::db::tenant_keys(&admin.db, "alpha").await.unwrap();
    let literal = evil_host.replace('\0', "");
    assert!(
        stored.iter().any(|(fp, _, _, host)| fp == &keys::fingerprint(key.public_key()) && host == &literal),
        "{stored:?}"
    );
    let ev = audit_events(&c).await;
    assert!(
        ev.iter().any(|(_, e, d)| e == "registered" && d.contains("DROP TABLE tenants")),
        "audit keeps it literally"
    );

    // User names at SSH login: ignored for the tenant, logged escaped.
    for evil in EVIL {
        let s = SftpClient::connect(&sftp_config(&a, evil, None), &a.registration().unwrap().ssh_addr).await.unwrap();
        assert!(s.list("/").await.is_ok());
        s.close().await.unwrap();
        let stranger = keys::generate(KeyAlgorithm::Ed25519).unwrap();
        let r = SftpClient::connect(&sftp_config(&a, evil, Some(stranger)), &a.registration().unwrap().ssh_addr).await;
        assert!(matches!(r, Err(ClientError::AuthRejected)));
    }
    // The connector's error report (free text) is stored as sent, cut and without control characters.
    let api = a.api().unwrap();
    let err = api
        .post::<_, serde_json::Value>(
            "/v1/files/20261128T000000Z-00000000/error",
            &serde_json::json!({ "error": EVIL.join("") }),
        )
        .await
        .expect_err("unknown file");
    assert_eq!(err.status(), Some(404));

    db_intact(&c, 2).await;
    assert_eq!(a.status(1).await.unwrap().len(), 0, "alpha still works");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn brute_force_ssh_logins_get_slower_and_a_good_key_still_gets_in() {
    // Its own cluster: the throttle belongs to one server, so other tests' refusals do not count here.
    let (_dir, c) = cluster().await;
    let a = tenant(&c, "alpha").await;
    let addr = a.registration().unwrap().ssh_addr;
    let mut times = Vec::new();
    for _ in 0..6 {
        let cfg = sftp_config(&a, "alpha", Some(keys::generate(KeyAlgorithm::Ed25519).unwrap()));
        let t = Instant::now();
        let r = SftpClient::connect(&cfg, &addr).await;
        assert!(matches!(r, Err(ClientError::AuthRejected)), "{:?}", r.err());
        times.push(t.elapsed());
    }
    // 100, 200, 400, 800, 1600, 3200 ms of added delay (under russh's fixed 500 ms rejection time at first).
    assert!(times[5] >= Duration::from_millis(3000), "{times:?}");
    assert!(times[5] >= times[0] + Duration::from_secs(2) && times[5] > times[4], "{times:?}");
    // The registered key logs in without waiting, and resets the count for this address.
    let t = Instant::now();
    a.sftp().await.unwrap().close().await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    // The failures are audited, coalesced per address (not one entry per attempt).
    let ssh_failures =
        async || audit_events(&c).await.iter().filter(|(_, e, d)| e == "auth_failed" && d.contains("ssh")).count();
    eventually(Duration::from_secs(10), async || ssh_failures().await > 0).await;
    let n = ssh_failures().await;
    assert!((1..=2).contains(&n), "{n} auth_failed entries for 6 attempts");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nothing_admin_like_on_the_public_port_and_the_admin_api_needs_its_token() {
    let (_dir, c) = cluster().await;
    let a = tenant(&c, "alpha").await;
    let http = pinned_http(&c);
    let token = std::fs::read_to_string(c.comms.state.cfg.admin_token_path()).unwrap().trim().to_string();
    let admin_addr = c.comms.admin_addr.expect("admin api listening");
    assert!(admin_addr.ip().is_loopback());
    assert_ne!(admin_addr.port(), c.comms.https_addr.port());
    let admin = |p: &str| format!("https://{admin_addr}{p}");

    // The public port has no admin routes at all, token or not.
    for p in ["/admin", "/admin/v1/tenants", "/admin/v1/audit/verify", "/admin/v1/sessions", "/v1/admin/tenants"] {
        let r = http.get(format!("{}{p}", c.comms.url())).bearer_auth(&token).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 404, "{p} on the public port");
        let r = http.post(format!("{}{p}", c.comms.url())).bearer_auth(&token).send().await.unwrap();
        assert!(matches!(r.status().as_u16(), 404 | 405), "{p} on the public port");
    }
    // The admin API refuses a missing, wrong or almost-right token.
    let r = http.get(admin("/admin/v1/tenants")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    for wrong in ["nope", &token[..token.len() - 1], &format!("{token}x"), &token.to_uppercase()] {
        let r = http.get(admin("/admin/v1/tenants")).bearer_auth(wrong).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 401, "{wrong}");
    }
    let r = http
        .post(admin("/admin/v1/tenants/alpha/disable"))
        .header("authorization", token.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401, "the token without `Bearer`");
    assert!(a.status(1).await.is_ok(), "nothing was disabled");
    // audited from a background task: give it a moment on a loaded machine
    let audited = async || audit_events(&c).await.iter().any(|(_, e, d)| e == "auth_failed" && d.contains("admin api"));
    assert!(eventually(Duration::from_secs(10), audited).await.is_some(), "the refused admin calls were not audited");

    // With the token: list, live sessions, disable (sessions closed at once), audit verify.
    let r = http.get(admin("/admin/v1/tenants")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let list: Vec<serde_json::Value> = r.json().await.unwrap();
    assert_eq!(list[0]["name"], "alpha");
    let sftp = a.sftp().await.unwrap();
    let live: Vec<serde_json::Value> =
        http.get(admin("/admin/v1/sessions")).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
    assert_eq!(live.len(), 1);
    assert_eq!(live[0]["tenant"], "alpha");
    let r = http.post(admin("/admin/v1/tenants/alpha/disable")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let cut = eventually(Duration::from_secs(2), async || sftp.list("/").await.is_err()).await;
    assert!(cut.is_some(), "the admin api closes the session at once");
    assert!(a.status(1).await.is_err());
    let r = http
        .put(admin("/admin/v1/tenants/alpha/limits"))
        .bearer_auth(&token)
        .json(&serde_json::json!({ "max_batch_files": 7, "nonsense": 1 }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400, "unknown limit names are refused");
    let r = http
        .put(admin("/admin/v1/tenants/alpha/limits"))
        .bearer_auth(&token)
        .json(&serde_json::json!({ "max_batch_files": 7 }))
        .send()
        .await
        .unwrap();
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["limits"]["max_batch_files"], 7);
    let r = http.post(admin("/admin/v1/tenants/nobody/enable")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let v: serde_json::Value =
        http.get(admin("/admin/v1/audit/verify")).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["intact"], true);
    let ev = audit_events(&c).await;
    assert!(ev.iter().any(|(_, e, d)| e == "tenant_disabled" && d.contains("by admin api from 127.0.0.1")), "{ev:?}");
    assert!(ev.iter().any(|(_, e, d)| e == "limits_changed" && d.contains("by admin api")));
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plain_http_only_redirects_to_https() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cluster::start_with(
        dir.path(),
        |_| {},
        |cfg| cfg.listen_http_redirect = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
    )
    .await
    .unwrap();
    let addr = c.comms.http_redirect_addr.expect("redirect listener");
    for (method, path) in [
        ("GET", "/"),
        ("GET", "/healthz"),
        ("GET", "/v1/whoami?x=1"),
        ("POST", "/v1/register"),
        ("GET", "/admin/v1/tenants"),
        ("GET", "//evil.example/x"),
    ] {
        // by hand, as a browser or curl would send it (and without following the redirect)
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: comms.example\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).await.unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 308"), "{method} {path}: {head}");
        let location = head.lines().find_map(|l| l.strip_prefix("location: ")).unwrap_or_default();
        assert_eq!(location, format!("{}{path}", c.comms.url()), "{method} {path}");
        assert!(body.is_empty(), "a redirect carries no content: {body:?}");
    }
    c.stop().await;
}
