//! End-to-end tests: a real Ferry SFTP server on 127.0.0.1 with the Ferry client and, when it
//! is installed, OpenSSH's `sftp`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_sftp::server::{KeyList, Principal, ServerConfig, host_key_fingerprint, serve};
use ferry_sftp::{ClientConfig, ClientError, SftpClient};
use russh::keys::ssh_key::LineEnding;
use russh::keys::ssh_key::private::RsaKeypair;
use russh::keys::{Algorithm, PrivateKey};

fn ed25519() -> PrivateKey {
    PrivateKey::random(&mut russh::keys::key::safe_rng(), Algorithm::Ed25519).expect("ed25519 key")
}

fn rsa2048() -> PrivateKey {
    let pair = RsaKeypair::random(&mut russh::keys::key::safe_rng(), 2048).expect("rsa key");
    PrivateKey::from(pair)
}

struct TestServer {
    addr: SocketAddr,
    fingerprint: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl TestServer {
    async fn start(keys: KeyList) -> Self {
        Self::start_with(keys, |_| {}).await
    }

    async fn start_with(keys: KeyList, tune: impl FnOnce(&mut ServerConfig)) -> Self {
        let host_key = ed25519();
        let fingerprint = host_key_fingerprint(&host_key);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let mut cfg = ServerConfig::new(host_key);
        tune(&mut cfg);
        let task = tokio::spawn(serve(cfg, listener, Arc::new(keys), async move {
            let _ = stopped.await;
        }));
        Self { addr, fingerprint, stop: Some(stop), task }
    }

    fn client_config(&self, key: PrivateKey) -> ClientConfig {
        ClientConfig {
            user: "connector".to_owned(),
            key: Arc::new(key),
            host_key_fingerprint: self.fingerprint.clone(),
            connect_timeout: Duration::from_secs(20),
            io_timeout: Duration::from_secs(30),
        }
    }

    async fn connect(&self, key: PrivateKey) -> Result<SftpClient, ClientError> {
        SftpClient::connect(&self.client_config(key), &self.addr.to_string()).await
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let ended = tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("server stops within the grace period");
        ended.expect("server task").expect("server result");
    }
}

/// Writes `len` pseudo-random bytes (xorshift; incompressible enough) to `path`.
fn random_file(path: &Path, len: usize, seed: u64) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("create"));
    let mut x = seed | 1;
    let mut left = len;
    let mut block = [0u8; 8];
    while left > 0 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        block.copy_from_slice(&x.to_le_bytes());
        let n = left.min(8);
        f.write_all(&block[..n]).expect("write");
        left -= n;
    }
    f.flush().expect("flush");
}

fn same_bytes(a: &Path, b: &Path) -> bool {
    std::fs::read(a).expect("read a") == std::fs::read(b).expect("read b")
}

fn principal(name: &str, root: &Path) -> Principal {
    Principal { name: name.to_owned(), root: root.to_owned() }
}

fn mb_per_s(bytes: u64, t: Duration) -> f64 {
    bytes as f64 / 1e6 / t.as_secs_f64().max(1e-9)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upload_download_round_trip_rename_list() {
    let root = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let key = ed25519();
    let server = TestServer::start(KeyList::new().with(key.public_key().clone(), principal("acme", root.path()))).await;
    let client = server.connect(key).await.expect("connect");

    client.mkdir_all("/in/batch-1").await.expect("mkdir_all");
    client.mkdir_all("in/batch-1").await.expect("mkdir_all is idempotent");
    assert!(root.path().join("in/batch-1").is_dir());

    let src = work.path().join("src.bin");
    let len = 24 * 1024 * 1024 + 12_345;
    random_file(&src, len, 0x5eed);

    let t = Instant::now();
    let sent = client.upload_file(&src, "/in/batch-1/data.bin").await.expect("upload");
    let up = t.elapsed();
    assert_eq!(sent, len as u64);
    assert!(same_bytes(&src, &root.path().join("in/batch-1/data.bin")));

    // the temporary name is gone, only the final file is listed
    let listed = client.list("in/batch-1").await.expect("list");
    assert_eq!(listed, vec![("data.bin".to_owned(), len as u64)]);
    assert!(!root.path().join("in/batch-1/.data.bin.part").exists());

    let back = work.path().join("back.bin");
    let t = Instant::now();
    let got = client.download_file("in/batch-1/data.bin", &back).await.expect("download");
    let down = t.elapsed();
    assert_eq!(got, len as u64);
    assert!(same_bytes(&src, &back));
    assert!(!work.path().join(".back.bin.part").exists());
    eprintln!(
        "ferry client <-> ferry server, {len} bytes: upload {:.0} MB/s, download {:.0} MB/s (this build profile)",
        mb_per_s(sent, up),
        mb_per_s(got, down)
    );

    // rename does not replace; upload_file refuses an existing target, the replacing form works
    client.rename("in/batch-1/data.bin", "/in/batch-1/renamed.bin").await.expect("rename");
    assert_eq!(client.stat_size("in/batch-1/renamed.bin").await.unwrap(), Some(len as u64));
    assert_eq!(client.stat_size("in/batch-1/data.bin").await.unwrap(), None);
    let small = work.path().join("small.txt");
    std::fs::write(&small, b"hello\n").unwrap();
    client.upload_file(&small, "in/batch-1/small.txt").await.unwrap();
    let again = client.upload_file(&small, "in/batch-1/renamed.bin").await;
    assert!(again.is_err(), "upload over an existing file must fail");
    assert!(client.rename("in/batch-1/small.txt", "in/batch-1/renamed.bin").await.is_err());
    client.upload_file_replacing(&small, "in/batch-1/renamed.bin").await.expect("replacing upload");
    assert_eq!(
        client.list("in/batch-1").await.unwrap(),
        vec![("renamed.bin".to_owned(), 6), ("small.txt".to_owned(), 6)]
    );

    // an empty file round-trips too
    let empty = work.path().join("empty");
    std::fs::write(&empty, b"").unwrap();
    assert_eq!(client.upload_file(&empty, "empty").await.unwrap(), 0);
    assert_eq!(client.download_file("/empty", &work.path().join("empty2")).await.unwrap(), 0);

    client.remove("in/batch-1/small.txt").await.expect("remove");
    assert_eq!(client.stat_size("in/batch-1/small.txt").await.unwrap(), None);
    assert!(client.remove("in/batch-1/small.txt").await.unwrap_err().is_not_found());

    client.close().await.expect("close");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn principals_are_confined_to_their_roots() {
    let base = tempfile::tempdir().unwrap();
    let root_a = base.path().join("A");
    let root_b = base.path().join("B");
    std::fs::create_dir_all(root_a.join("private")).unwrap();
    std::fs::create_dir_all(&root_b).unwrap();
    std::fs::write(root_a.join("secret.txt"), b"tenant A only").unwrap();
    std::fs::write(root_a.join("private/more.txt"), b"tenant A only").unwrap();
    // planted by someone on the host: links inside B's root pointing at A's data
    std::os::unix::fs::symlink(&root_a, root_b.join("to_a")).unwrap();
    std::os::unix::fs::symlink(root_a.join("secret.txt"), root_b.join("secret_link")).unwrap();

    let key_a = ed25519();
    let key_b = rsa2048(); // also exercises rsa-sha2 signature selection
    let server = TestServer::start(
        KeyList::new()
            .with(key_a.public_key().clone(), principal("A", &root_a))
            .with(key_b.public_key().clone(), principal("B", &root_b)),
    )
    .await;

    let b = server.connect(key_b.clone()).await.expect("B connects");
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("stolen");
    for path in [
        "../A/secret.txt",
        "/../A/secret.txt",
        "../../A/secret.txt",
        "A/secret.txt",
        "/A/secret.txt",
        &format!("{}", root_a.join("secret.txt").display()),
        "to_a/secret.txt",
        "/to_a/private/more.txt",
        "secret_link",
        "to_a/../B/../A/secret.txt",
    ] {
        let r = b.download_file(path, &out).await;
        assert!(r.is_err(), "B must not read {path:?}");
        assert!(!out.exists(), "nothing written for {path:?}");
    }
    assert!(b.list("../A").await.is_err());
    assert!(b.list("to_a").await.is_err());
    assert!(b.stat_size("to_a/secret.txt").await.is_err());
    assert!(b.rename("to_a/secret.txt", "mine.txt").await.is_err());
    assert!(b.remove("to_a/secret.txt").await.is_err());
    assert!(b.mkdir_all("to_a/new").await.is_err());
    assert!(root_a.join("secret.txt").exists());
    assert!(!root_a.join("new").exists());

    // B's listing shows neither the links nor anything of A
    let small = work.path().join("b.txt");
    std::fs::write(&small, b"tenant B").unwrap();
    b.upload_file(&small, "/b.txt").await.unwrap();
    assert_eq!(b.list("/").await.unwrap(), vec![("b.txt".to_owned(), 8)]);
    assert_eq!(b.list(".").await.unwrap(), b.list("/").await.unwrap());
    // B cannot write through the link either
    assert!(b.upload_file(&small, "to_a/planted.txt").await.is_err());
    assert!(!root_a.join("planted.txt").exists());
    b.close().await.unwrap();

    // A sees only its own files
    let a = server.connect(key_a).await.expect("A connects");
    assert_eq!(a.list("/").await.unwrap(), vec![("secret.txt".to_owned(), 13)]);
    assert_eq!(a.stat_size("b.txt").await.unwrap(), None);
    a.close().await.unwrap();

    // an unknown key is refused
    let stranger = server.connect(ed25519()).await;
    assert!(matches!(stranger, Err(ClientError::AuthRejected)), "unknown key: {:?}", stranger.err());

    // a wrong pinned host key is refused, and the error names both fingerprints
    let mut cfg = server.client_config(key_b);
    let other = host_key_fingerprint(&ed25519());
    cfg.host_key_fingerprint = other.clone();
    match SftpClient::connect(&cfg, &server.addr.to_string()).await {
        Err(ClientError::HostKeyMismatch { expected, got }) => {
            assert_eq!(expected, other);
            assert_eq!(got, server.fingerprint);
            let msg = ClientError::HostKeyMismatch { expected, got }.to_string();
            assert!(msg.contains("does not match the pinned one"), "{msg}");
        }
        other => panic!("expected a host key mismatch, got {:?}", other.err()),
    }
    cfg.host_key_fingerprint = "not-a-fingerprint".to_owned();
    assert!(matches!(SftpClient::connect(&cfg, &server.addr.to_string()).await, Err(ClientError::BadFingerprint(_))));

    server.stop().await;
}

/// Reads until the server closes the connection; returns how long that took.
async fn time_until_closed(stream: &mut tokio::net::TcpStream) -> Duration {
    use tokio::io::AsyncReadExt;
    let t = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return t.elapsed(),
            Ok(Ok(_)) => {}
            Err(_) => panic!("the server kept a silent connection open for 10 s"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_clients_are_dropped_after_the_auth_timeout() {
    use tokio::io::AsyncWriteExt;
    let server = TestServer::start_with(KeyList::new(), |cfg| {
        cfg.auth_timeout = Duration::from_secs(1);
    })
    .await;
    // sends nothing at all
    let mut silent = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    assert!(time_until_closed(&mut silent).await < Duration::from_secs(5));
    // sends its version string, then nothing (no key exchange, no login)
    let mut stalled = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    stalled.write_all(b"SSH-2.0-stalled\r\n").await.unwrap();
    assert!(time_until_closed(&mut stalled).await < Duration::from_secs(5));
    server.stop().await;
}

fn openssh_sftp() -> Option<PathBuf> {
    let p = PathBuf::from("/usr/bin/sftp");
    p.exists().then_some(p)
}

/// Runs OpenSSH `sftp -b batch` against the test server, with a deadline: a hang is a failure.
async fn run_openssh(
    sftp: &Path,
    key_file: &Path,
    port: u16,
    extra: &[&str],
    batch: &Path,
    cwd: &Path,
) -> std::process::Output {
    let mut cmd = tokio::process::Command::new(sftp);
    cmd.args(extra)
        .arg("-b")
        .arg(batch)
        .args(["-F", "/dev/null", "-i"])
        .arg(key_file)
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "IdentityAgent=none",
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
            "-P",
        ])
        .arg(port.to_string())
        .arg("acme@127.0.0.1")
        .current_dir(cwd)
        .kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("sftp finished in time (a hang here means the pipelining deadlock is back)")
        .expect("run sftp")
}

fn assert_ok(out: &std::process::Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn openssh_sftp_put_and_get_with_deep_pipelining() {
    let Some(sftp) = openssh_sftp() else {
        eprintln!("SKIPPED openssh_sftp_put_and_get_with_deep_pipelining: /usr/bin/sftp is not installed");
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let key = ed25519();
    let key_file = work.path().join("id_ed25519");
    key.write_openssh_file(&key_file, LineEnding::LF).expect("write key");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "ssh refuses keys readable by others");
    }
    let server = TestServer::start(KeyList::new().with(key.public_key().clone(), principal("acme", root.path()))).await;
    let port = server.addr.port();

    let src = work.path().join("src.bin");
    let len = 20 * 1024 * 1024 + 777;
    random_file(&src, len, 42);

    // 1. OpenSSH defaults: 64 requests in flight, 255 KiB each (from limits@openssh.com)
    let back = work.path().join("back.bin");
    let batch = work.path().join("batch1");
    std::fs::write(
        &batch,
        format!(
            "mkdir up\nput {} up/big.bin\nls -l up\nget up/big.bin {}\nrename up/big.bin up/moved.bin\nrm up/moved.bin\nrmdir up\n",
            src.display(),
            back.display()
        ),
    )
    .unwrap();
    let t = Instant::now();
    let out = run_openssh(&sftp, &key_file, port, &[], &batch, work.path()).await;
    let took = t.elapsed();
    assert_ok(&out, "sftp put/get");
    assert!(same_bytes(&src, &back), "bytes differ after put + get");
    assert!(String::from_utf8_lossy(&out.stdout).contains("big.bin"), "ls shows the file");
    assert!(!root.path().join("up").exists(), "rmdir ran");
    eprintln!(
        "openssh sftp put + get of {len} bytes: {:.2} s ({:.0} MB/s both ways, incl. login)",
        took.as_secs_f64(),
        mb_per_s(2 * len as u64, took)
    );

    // 2. Deep pipelining: 512 requests of 16 KiB in flight. Without the pump (russh-sftp's own
    // runner, channel_buffer_size 100) this hangs forever; measured while writing this test.
    let back2 = work.path().join("back2.bin");
    let batch = work.path().join("batch2");
    std::fs::write(&batch, format!("put {} deep.bin\nget deep.bin {}\n", src.display(), back2.display())).unwrap();
    let t = Instant::now();
    let out = run_openssh(&sftp, &key_file, port, &["-R", "512", "-B", "16384"], &batch, work.path()).await;
    assert_ok(&out, "sftp -R 512 put/get");
    assert!(same_bytes(&src, &back2), "bytes differ after deep put + get");
    eprintln!("openssh sftp -R 512 -B 16384 put + get: {:.2} s", t.elapsed().as_secs_f64());

    // 3. Escapes fail through OpenSSH too
    let batch = work.path().join("batch3");
    std::fs::write(&batch, "get ../../etc/hostname\n").unwrap();
    let out = run_openssh(&sftp, &key_file, port, &[], &batch, work.path()).await;
    assert!(!out.status.success(), "the escape must fail");
    assert!(!work.path().join("hostname").exists());

    server.stop().await;
}
