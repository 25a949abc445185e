//! Issue 15 attacks on the SFTP side of the Comms server (see main.rs), by a malicious tenant with a raw SFTP
//! session: directory and handle exhaustion, sessions and files per tenant, quota bypasses (SETSTAT, sparse
//! writes), changing a batch after `complete`, look-alike and invisible characters in names.
//!
//! The tests of this module run one at a time (`SERIAL`): one of them measures the process's memory.

use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use ferry::cluster::Cluster;
use ferry_comms::limits::Limit;
use ferry_connector::agent::Connector;
use ferry_io::keys;
use ferry_proto::api::{BatchState, BatchStatus};
use russh::keys::{HashAlg, PrivateKeyWithHashAlg};
use russh_sftp::client::RawSftpSession;
use russh_sftp::protocol::{FileAttributes, OpenFlags, StatusCode};

/// Held by each test of this module for its whole run (tokio's mutex: it is held across awaits, and each test
/// has its own runtime).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct AnyHost;

impl russh::client::Handler for AnyHost {
    type Error = russh::Error;
    async fn check_server_key(&mut self, _key: &russh::keys::PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

/// A raw SFTP session as `conn`'s tenant, or None if the login is refused.
async fn try_raw_sftp(conn: &Connector) -> Option<(russh::client::Handle<AnyHost>, RawSftpSession)> {
    let reg = conn.registration().unwrap();
    let key = Arc::new(keys::load_private_key(conn.cfg.key_path()).unwrap());
    let mut ssh = russh::client::connect(Arc::new(russh::client::Config::default()), reg.ssh_addr.as_str(), AnyHost)
        .await
        .unwrap();
    let hash = if key.algorithm().is_rsa() { Some(HashAlg::Sha256) } else { None };
    let auth = ssh.authenticate_publickey("connector", PrivateKeyWithHashAlg::new(key, hash)).await.unwrap();
    if !matches!(auth, russh::client::AuthResult::Success) {
        return None;
    }
    let ch = ssh.channel_open_session().await.unwrap();
    ch.request_subsystem(true, "sftp").await.unwrap();
    let raw = RawSftpSession::new(ch.into_stream());
    raw.init().await.unwrap();
    raw.set_timeout(30);
    Some((ssh, raw))
}

async fn raw_sftp(conn: &Connector) -> (russh::client::Handle<AnyHost>, RawSftpSession) {
    try_raw_sftp(conn).await.expect("login")
}

fn status_of<T: std::fmt::Debug>(r: Result<T, russh_sftp::client::error::Error>) -> (StatusCode, String) {
    match r {
        Err(russh_sftp::client::error::Error::Status(s)) => (s.status_code, s.error_message),
        other => panic!("expected an SFTP status error, got {other:?}"),
    }
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

/// Resident memory of this process (the servers run in it), in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

fn create() -> OpenFlags {
    OpenFlags::CREATE | OpenFlags::WRITE
}

/// Finding 2: 5,000 empty files in one folder, then as many directory handles as a session may hold, each
/// listing started: memory stays bounded (listings are streamed), the handle after the cap is refused with the
/// limit's wording, and so are one session too many and one file too many.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn directory_handles_sessions_and_files_are_capped_and_listings_are_streamed() {
    let _one = SERIAL.lock().await;
    let (_dir, c) = cluster().await;
    let a = tenant(&c, "alpha").await;
    let root = ferry_comms::tenant_sftp_root(&c.comms.state.cfg.data_dir, "alpha");
    let folder = root.join("upload/many");
    std::fs::create_dir_all(&folder).unwrap();
    // Names as long as allowed make the old whole-listing cost visible: 5,000 x 255 bytes per handle.
    for i in 0..5000 {
        std::fs::File::create(folder.join(format!("{i:05}-{}", "x".repeat(240)))).unwrap();
    }
    let max_handles = c.comms.state.limits.of("alpha").max_open_handles;
    assert_eq!(max_handles, 64, "the default of max_open_handles");

    let (_ssh, raw) = raw_sftp(&a).await;
    let before = rss();
    let mut handles = Vec::new();
    for _ in 0..max_handles {
        let h = raw.opendir("/upload/many").await.unwrap().handle;
        let page = raw.readdir(h.as_str()).await.unwrap();
        assert!(!page.files.is_empty() && page.files.len() <= ferry_sftp::server::READDIR_BATCH);
        handles.push(h);
    }
    let grown = rss().saturating_sub(before);
    eprintln!("RSS growth with {max_handles} directory handles on 5,000 entries: {} KiB", grown >> 10);
    // Before the fix each handle held the whole listing (5,000 names of 255 bytes and their attributes):
    // 64 handles took well over 100 MB. Streamed, a handle holds one directory stream.
    assert!(grown < 40 << 20, "RSS grew by {} MB with {max_handles} directory handles", grown >> 20);
    let (code, msg) = status_of(raw.opendir("/upload/many").await);
    assert_eq!(code, StatusCode::Failure);
    assert!(msg.contains("max_open_handles = 64 handles") && msg.contains("--max-open-handles"), "{msg}");
    let (_, msg) = status_of(raw.open("/upload/x", OpenFlags::READ, FileAttributes::default()).await);
    assert!(msg.contains("max_open_handles"), "file handles count too: {msg}");
    // One listing read to its end gives every entry once.
    let mut seen = 0;
    loop {
        match raw.readdir(handles[0].as_str()).await {
            Ok(page) => seen += page.files.len(),
            Err(e) => {
                assert!(matches!(&e, russh_sftp::client::error::Error::Status(s) if s.status_code == StatusCode::Eof));
                break;
            }
        }
    }
    assert_eq!(seen + ferry_sftp::server::READDIR_BATCH, 5000, "every entry listed once");
    for h in handles {
        raw.close(h).await.unwrap();
    }

    // Sessions per tenant: the one past the limit is refused at login.
    set_limit(&c, "alpha", Limit::MaxSftpSessions, 2).await;
    let (_ssh2, _raw2) = raw_sftp(&a).await;
    assert!(try_raw_sftp(&a).await.is_none(), "a third session was let in");

    // Files per tenant: the folder above already holds more than the limit, so nothing new can be created.
    set_limit(&c, "alpha", Limit::MaxFiles, 5000).await;
    let (code, msg) = status_of(raw.open("/upload/one-more", create(), FileAttributes::default()).await);
    assert_eq!(code, StatusCode::Failure);
    assert!(msg.contains("max_files = 5000 files") && msg.contains("--max-files"), "{msg}");
    let (_, msg) = status_of(raw.mkdir("/upload/d", FileAttributes::default()).await);
    assert!(msg.contains("max_files"), "{msg}");
    assert!(!root.join("upload/one-more").exists() && !root.join("upload/d").exists());
    // Existing files can still be opened and written.
    let existing = format!("/upload/many/00000-{}", "x".repeat(240));
    let h = raw.open(existing, create(), FileAttributes::default()).await.unwrap();
    raw.close(h.handle).await.unwrap();
    c.stop().await;
}

/// Finding 3: with the daily quota nearly used up, growing a file by SETSTAT/FSETSTAT or by one byte written far
/// past its end is charged the growth, so it is refused; the refused file is removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn setstat_and_sparse_writes_are_charged_what_they_make_the_server_store() {
    let _one = SERIAL.lock().await;
    let (_dir, c) = cluster().await;
    let a = tenant(&c, "alpha").await;
    let root = ferry_comms::tenant_sftp_root(&c.comms.state.cfg.data_dir, "alpha");
    set_limit(&c, "alpha", Limit::UploadBytesPerDay, 1 << 20).await;
    let (_ssh, raw) = raw_sftp(&a).await;
    const GIB: u64 = 1 << 30;

    let h = raw.open("/fset.bin", create(), FileAttributes::default()).await.unwrap().handle;
    let attrs = FileAttributes { size: Some(5 * GIB), ..FileAttributes::default() };
    let (code, msg) = status_of(raw.fsetstat(h.as_str(), attrs).await);
    assert_eq!(code, StatusCode::Failure);
    assert!(msg.contains("upload_bytes_per_day = 1048576 bytes") && msg.contains("next UTC day"), "{msg}");
    assert!(!root.join("fset.bin").exists(), "the refused file was removed");

    let h = raw.open("/set.bin", create(), FileAttributes::default()).await.unwrap().handle;
    raw.close(h).await.unwrap();
    let attrs = FileAttributes { size: Some(GIB), ..FileAttributes::default() };
    let (_, msg) = status_of(raw.setstat("/set.bin", attrs).await);
    assert!(msg.contains("upload_bytes_per_day"), "{msg}");
    assert!(!root.join("set.bin").exists());

    let h = raw.open("/sparse.bin", create(), FileAttributes::default()).await.unwrap().handle;
    let (_, msg) = status_of(raw.write(h.as_str(), GIB - 1, vec![1u8]).await);
    assert!(msg.contains("upload_bytes_per_day") && msg.contains(&format!("reach {GIB} bytes")), "{msg}");
    assert!(!root.join("sparse.bin").exists());

    // What fits is accepted and counted: 600 KiB by SETSTAT, then 2 x 250 kB more written would pass 1 MiB.
    let h = raw.open("/ok.bin", create(), FileAttributes::default()).await.unwrap().handle;
    let attrs = FileAttributes { size: Some(600 << 10), ..FileAttributes::default() };
    raw.fsetstat(h.as_str(), attrs).await.unwrap();
    // Rewriting bytes inside the file costs what is written, not the file's size.
    raw.write(h.as_str(), 0, vec![2u8; 1000]).await.unwrap();
    raw.close(h).await.unwrap();
    let h = raw.open("/more.bin", create(), FileAttributes::default()).await.unwrap().handle;
    raw.write(h.as_str(), 0, vec![3u8; 250_000]).await.unwrap();
    let (_, msg) = status_of(raw.write(h.as_str(), 250_000, vec![3u8; 250_000]).await);
    assert!(msg.contains("upload_bytes_per_day"), "{msg}");
    assert_eq!(std::fs::metadata(root.join("ok.bin")).unwrap().len(), 600 << 10);
    c.stop().await;
}

/// Finding 4: a write handle kept open on a batch file, `complete`, then writes and FSETSTAT through the handle:
/// refused, and the batch is relayed and imported exactly as completed. A manifest whose compressed SHA-256
/// does not match the uploaded file is refused at completion.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_completed_batch_cannot_be_changed_through_handles_opened_before() {
    let _one = SERIAL.lock().await;
    let (_dir, c) = cluster().await;
    let a = tenant(&c, "alpha").await;
    let m = spool_batch(&a, &good_files());
    let (_ssh, raw) = raw_sftp(&a).await;
    let remote = format!("/upload/{}", m.batch_id);
    raw.mkdir("/upload", FileAttributes::default()).await.unwrap();
    raw.mkdir(remote.as_str(), FileAttributes::default()).await.unwrap();
    for f in &m.files {
        let n = f.compressed_name();
        let data = std::fs::read(a.spool_dir(&m.batch_id).join(&n)).unwrap();
        let h = raw.open(format!("{remote}/{n}"), create(), FileAttributes::default()).await.unwrap().handle;
        raw.write(h.as_str(), 0, data).await.unwrap();
        raw.close(h).await.unwrap();
    }
    let target = &m.files[0];
    let kept = raw
        .open(format!("{remote}/{}", target.compressed_name()), OpenFlags::WRITE, FileAttributes::default())
        .await
        .unwrap()
        .handle;

    // A lying manifest (another file's SHA-256) is refused, and the files stay in the SFTP area.
    let mut lie = m.clone();
    lie.files[0].compressed_sha256 = Some("0".repeat(64));
    let err = a
        .api()
        .unwrap()
        .post::<_, BatchStatus>(&format!("/v1/batches/{}/complete", m.batch_id), &lie)
        .await
        .expect_err("a manifest that does not match the files");
    assert_eq!(err.status(), Some(422), "{err}");
    assert!(format!("{err}").contains("differs from the manifest"), "{err}");

    let done: BatchStatus = a.api().unwrap().post(&format!("/v1/batches/{}/complete", m.batch_id), &m).await.unwrap();
    assert!(matches!(done.state, BatchState::Uploaded | BatchState::Relayed | BatchState::Imported));
    let (code, msg) = status_of(raw.write(kept.as_str(), target.compressed_bytes, vec![9u8; 1000]).await);
    assert_eq!(code, StatusCode::Failure);
    assert!(msg.contains("moved or removed") && msg.contains("completed batch cannot be changed"), "{msg}");
    let attrs = FileAttributes { size: Some(5 << 30), ..FileAttributes::default() };
    let (_, msg) = status_of(raw.fsetstat(kept.as_str(), attrs).await);
    assert!(msg.contains("moved or removed"), "{msg}");

    let st = &c.comms.state;
    let imported = eventually(Duration::from_secs(60), async || {
        ferry_comms::db::batch_status(&st.db, "alpha", &m.batch_id)
            .await
            .unwrap()
            .is_some_and(|s| s.state == BatchState::Imported)
    })
    .await;
    assert!(imported.is_some(), "the batch was not imported as completed");
    let incoming = c.app.state.sftp_root().join("alpha/incoming").join(m.batch_id.as_str());
    if let Ok(meta) = std::fs::metadata(incoming.join(target.compressed_name())) {
        assert_eq!(meta.len(), target.compressed_bytes, "the App received exactly the completed bytes");
    }
    assert_eq!(counts(&c, "alpha").await["stock"], 2);
    c.stop().await;
}

/// Finding 6: invisible and look-alike characters, and U+FFFD (what invalid UTF-8 becomes), are refused in SFTP
/// names; NFD spellings too (one spelling per name); letters of other scripts are fine.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lookalike_invisible_and_invalid_characters_are_refused_in_names() {
    let _one = SERIAL.lock().await;
    let (_dir, c) = cluster().await;
    let a = tenant(&c, "alpha").await;
    let root = ferry_comms::tenant_sftp_root(&c.comms.state.cfg.data_dir, "alpha");
    let (_ssh, raw) = raw_sftp(&a).await;
    let refused: &[u32] = &[
        0x2061, 0x2062, 0x2063, 0x2064, 0x206A, 0x206B, 0x206C, 0x206D, 0x206E, 0x206F, 0x00AD, 0x180E, 0x3164, 0x115F,
        0xFFF9, 0xE0041, 0x034F, 0x2028, 0x2029, 0x0338, 0x2571, 0x29F5, 0x2F03, 0x3002, 0x0589, 0x06D4, 0x00B7,
        0x2027, 0xFE0F, 0x200D, 0xE000,
    ];
    for &cp in refused {
        let ch = char::from_u32(cp).unwrap();
        for name in [format!("sales{ch}.csv"), format!("..{ch}..{ch}x"), format!("{ch}")] {
            let (code, msg) = status_of(raw.open(name.as_str(), create(), FileAttributes::default()).await);
            assert_eq!(code, StatusCode::PermissionDenied, "U+{cp:04X}: {msg}");
            assert!(msg.contains(&format!("U+{cp:04X}")), "U+{cp:04X}: {msg}");
            let (_, msg) = status_of(raw.mkdir(name.as_str(), FileAttributes::default()).await);
            assert!(msg.contains(&format!("U+{cp:04X}")), "U+{cp:04X}: {msg}");
        }
    }
    let (code, msg) = status_of(raw.open("bad\u{FFFD}.csv", create(), FileAttributes::default()).await);
    assert_eq!(code, StatusCode::PermissionDenied);
    assert!(msg.contains("UTF-8"), "{msg}");
    let (_, msg) = status_of(raw.open("cafe\u{301}.txt", create(), FileAttributes::default()).await);
    assert!(msg.contains("NFC"), "{msg}");
    for name in
        ["caf\u{e9}.txt", "\u{434}\u{430}\u{43d}\u{43d}\u{44b}\u{435}.csv", "\u{6570}\u{636e} 1.csv", "a-b_c(1)~.csv"]
    {
        let h = raw.open(name, create(), FileAttributes::default()).await.unwrap();
        raw.close(h.handle).await.unwrap();
        assert!(root.join(name).is_file(), "{name:?}");
    }
    let names: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| e.file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 4, "only the four good names were created: {names:?}");
    c.stop().await;
}

/// Finding 4, the relay's side: a completed batch whose file changed afterwards (by whatever way) is not sent to
/// the App: the relay re-measures size and SHA-256 before copying and refuses the batch for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_relay_refuses_a_completed_batch_whose_files_changed() {
    let _one = SERIAL.lock().await;
    let (_dir, c) = cluster().await;
    let a = tenant(&c, "alpha").await;
    let m = spool_batch(&a, &good_files());
    let st = &c.comms.state;
    // The batch as `complete` leaves it (files out of the SFTP root, measured), then one file grows.
    let dest = st.batch_dir("alpha", m.batch_id.as_str());
    std::fs::create_dir_all(&dest).unwrap();
    for f in &m.files {
        let n = f.compressed_name();
        std::fs::copy(a.spool_dir(&m.batch_id).join(&n), dest.join(&n)).unwrap();
    }
    let grown = dest.join(m.files[0].compressed_name());
    std::fs::OpenOptions::new().write(true).open(&grown).unwrap().set_len(1 << 30).unwrap();
    ferry_comms::db::insert_batch(&st.db, "alpha", &m).await.unwrap();
    st.relay_wakeup.notify_one();
    let verdict = eventually(Duration::from_secs(30), async || {
        ferry_comms::db::batch_status(&st.db, "alpha", &m.batch_id)
            .await
            .unwrap()
            .is_some_and(|s| s.state == BatchState::Rejected)
    })
    .await;
    assert!(verdict.is_some(), "the changed batch was not refused");
    let s = ferry_comms::db::batch_status(&st.db, "alpha", &m.batch_id).await.unwrap().unwrap();
    let d = s.detail.unwrap_or_default();
    assert!(d.contains("changed after the batch was completed") && d.contains("1073741824 bytes now"), "{d}");
    let incoming = c.app.state.sftp_root().join("alpha/incoming").join(m.batch_id.as_str());
    assert!(!incoming.join(m.files[0].compressed_name()).exists(), "nothing of it reached the App");
    assert_eq!(counts(&c, "alpha").await["stock"], 0);
    c.stop().await;
}
