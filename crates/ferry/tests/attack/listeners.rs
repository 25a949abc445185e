//! Issue 15, the listeners: idle TLS connections (HTTP/1.1, HTTP/2 before and after the preface) on every HTTPS
//! listener, a flood of 1,000 connections against a Comms server whose open-file limit is 256, accept when the
//! process is out of file descriptors, and the shared port's sniffer with a slow TLS client.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::procs::*;
use ferry::cluster::Cluster;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

fn connector(pin: &str, alpn: &[u8]) -> tokio_rustls::TlsConnector {
    let mut cfg = ferry_io::tls::client_config(Some(pin)).unwrap();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

/// A TCP connection to `to` from the loopback address `from` (the tests' other "clients").
async fn tcp_from(from: [u8; 4], to: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let s = tokio::net::TcpSocket::new_v4()?;
    s.bind(SocketAddr::from((from, 0)))?;
    tokio::time::timeout(Duration::from_secs(10), s.connect(to)).await.map_err(std::io::Error::other)?
}

async fn tls(to: SocketAddr, pin: &str, alpn: &[u8]) -> std::io::Result<Tls> {
    let tcp = tokio::net::TcpStream::connect(to).await?;
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("ferry").unwrap();
    tokio::time::timeout(Duration::from_secs(10), connector(pin, alpn).connect(name, tcp))
        .await
        .map_err(std::io::Error::other)?
}

/// How long until the server closes `s` (EOF or reset), reading and discarding what it sends; `None` if it is
/// still open after `limit`.
async fn closed_within<S: tokio::io::AsyncRead + Unpin>(s: &mut S, limit: Duration) -> Option<Duration> {
    let t = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(limit.saturating_sub(t.elapsed()), s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(t.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

fn idle_limits(idle: u64, handshake: u64) -> impl Fn(&mut ferry_io::accept::ConnectionLimits) {
    move |l| {
        l.idle_secs = idle;
        l.handshake_secs = handshake;
    }
}

/// Idle TLS connections are closed on the Comms public port, the admin port and the App's HTTPS port: one that
/// never sends a request (HTTP/1.1), one that sends only the HTTP/2 preface, one idle after a request on a
/// kept-alive HTTP/1.1 connection; a long-poll longer than the idle deadline is not cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_connections_are_closed_on_every_https_listener_but_long_polls_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let set = idle_limits(2, 5);
    let c = Cluster::start_with(dir.path(), |a| set(&mut a.connections), |m| set(&mut m.connections)).await.unwrap();
    let comms_pin = c.comms.state.identity.tls_fingerprint.clone();
    let app_pin = c.app.state.identity.tls_fingerprint.clone();
    let admin = c.comms.admin_addr.expect("admin listener");
    let limit = Duration::from_secs(2 + 5 + 4);
    for (what, addr, pin) in
        [("comms", c.comms.https_addr, &comms_pin), ("admin", admin, &comms_pin), ("app", c.app.https_addr, &app_pin)]
    {
        let mut silent = tls(addr, pin, b"http/1.1").await.unwrap();
        let mut preface = tls(addr, pin, b"h2").await.unwrap();
        preface.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00").await.unwrap();
        let mut kept = tls(addr, pin, b"http/1.1").await.unwrap();
        kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: ferry\r\n\r\n").await.unwrap();
        // any answer (the admin API has no /healthz): the connection is kept alive after it
        let mut head = [0u8; 9];
        kept.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"HTTP/1.1 ", "{what}");
        for (kind, s) in
            [("no request", &mut silent), ("h2 preface only", &mut preface), ("after a request", &mut kept)]
        {
            let t = closed_within(s, limit).await;
            assert!(t.is_some(), "{what}: an idle connection ({kind}) is still open after {limit:?}");
        }
    }
    // a long-poll (5 s) outlives the idle deadline (2 s): a request in progress is not idle
    let token = c.add_tenant("acme").await.unwrap();
    let conn = c.connector("acme", &c.dir.join("erp.db"), &token).await.unwrap();
    let t = Instant::now();
    let got = conn.receive(5, &quiet).await.expect("a long-poll longer than the idle deadline");
    assert!(got.is_empty() && t.elapsed() >= Duration::from_secs(4), "{got:?} after {:?}", t.elapsed());
}

/// On the shared HTTPS+SSH port, a TLS client whose hello comes 4 s after connecting (more than the 3 s the old
/// sniffer waited) is still served as TLS; a client that sends nothing is closed at the handshake deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_shared_port_waits_for_a_slow_tls_hello_and_closes_a_silent_client() {
    let dir = tempfile::tempdir().unwrap();
    let set = idle_limits(30, 6);
    let c = Cluster::start_one_port_with(dir.path(), |a| set(&mut a.connections), |m| set(&mut m.connections))
        .await
        .unwrap();
    let pin = c.comms.state.identity.tls_fingerprint.clone();
    let addr = c.comms.https_addr;
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("ferry").unwrap();
    let mut s = connector(&pin, b"http/1.1").connect(name, tcp).await.expect("a slow client hello is TLS");
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: ferry\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let t = closed_within(&mut silent, Duration::from_secs(15)).await.expect("a silent client is closed");
    assert!(t >= Duration::from_secs(5), "closed after {t:?}, before the 6 s handshake deadline");
}

/// The Comms server of a whole system (separate processes), restarted with an open-file limit of 256 (soft and
/// hard) and `[connections] idle_secs = 4`.
async fn system_with_file_limit(
    dir: &std::path::Path,
    connections: &[(&str, i64)],
) -> (System, Node, Node, [Proxy; 3]) {
    let proxies = [Proxy::unrouted().await, Proxy::unrouted().await, Proxy::unrouted().await];
    let (d, p) = (dir.to_path_buf(), Arc::new(proxies));
    let p2 = p.clone();
    let (sys, app, mut comms) = tokio::task::spawn_blocking(move || setup(&d, &p2, |_| {})).await.unwrap();
    let proxies = Arc::try_unwrap(p).unwrap_or_else(|_| panic!("proxies still shared"));
    comms.term();
    assert!(comms.wait_exit(Duration::from_secs(30)).is_some(), "comms did not stop");
    edit_toml(&sys.comms_cfg, |t| {
        let c = section(t, "connections");
        for (k, v) in connections {
            c.insert((*k).into(), (*v).into());
        }
    });
    comms.file_limit = Some(256);
    comms.start();
    let pin = comms_pin(&sys);
    let up = async || tls(sys.addrs.comms, &pin, b"http/1.1").await.is_ok();
    assert!(eventually(Duration::from_secs(30), up).await.is_some(), "comms did not come back:\n{}", comms.log_text());
    (sys, app, comms, proxies)
}

fn comms_pin(sys: &System) -> String {
    let pem = std::fs::read_to_string(sys.dir.join("comms/data/tls/cert.pem")).unwrap();
    ferry_io::tls::cert_fingerprint(&pem).unwrap()
}

async fn ferry_async(args: Vec<String>) -> String {
    tokio::task::spawn_blocking(move || ferry(&args.iter().map(String::as_str).collect::<Vec<_>>())).await.unwrap()
}

/// 1,000 connections from one address, each completing its TLS handshake and then saying nothing, against a
/// Comms server limited to 256 open files: at most 64 (the per-address cap) are served, the rest closed at once;
/// meanwhile a Connector (another address) syncs and gets its status; the served ones are closed once idle; the
/// server never runs out of file descriptors.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idle_flood_leaves_connectors_working_under_a_256_file_limit() {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let dir = tempfile::tempdir().unwrap();
    let (sys, _app, comms, _proxies) = system_with_file_limit(dir.path(), &[("idle_secs", 4)]).await;
    let pin = comms_pin(&sys);
    let to = sys.addrs.comms;
    let attempts = (0..1000).map(|_| {
        let pin = pin.clone();
        async move {
            let tcp = tcp_from([127, 0, 0, 2], to).await.ok()?;
            let name = tokio_rustls::rustls::pki_types::ServerName::try_from("ferry").unwrap();
            tokio::time::timeout(Duration::from_secs(15), connector(&pin, b"http/1.1").connect(name, tcp))
                .await
                .ok()?
                .ok()
        }
    });
    let mut served: Vec<Tls> = futures::future::join_all(attempts).await.into_iter().flatten().collect();
    assert!(!served.is_empty() && served.len() <= 64, "{} of 1,000 flood connections were served", served.len());

    // the Connector, through its proxy from 127.0.0.1, while the flood's connections are open
    let out = ferry_async(sys.conn_args("sync")).await;
    assert!(out.contains("imported"), "{out}");
    let out = ferry_async(sys.conn_args("status")).await;
    assert!(out.contains("imported"), "{out}");

    for s in &mut served {
        assert!(closed_within(s, Duration::from_secs(15)).await.is_some(), "an idle flood connection stays open");
    }
    let log = comms.log_text();
    assert!(log.contains("connection refused"), "no refusal logged:\n{log}");
    assert!(!log.contains("Too many open files"), "the server ran out of file descriptors:\n{log}");
}

/// CPU time (user + system, in clock ticks) of a process so far.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// With caps set above the open-file limit (256), a flood of 400 connections makes accept fail with EMFILE: the
/// server waits instead of spinning (its CPU stays low, one log line rather than hundreds) and serves the
/// Connector again once the flood's connections are closed at the handshake deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn accept_backs_off_when_the_server_is_out_of_file_descriptors() {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let dir = tempfile::tempdir().unwrap();
    let caps = [("max_connections", 2000), ("max_per_address", 2000), ("handshake_secs", 4)];
    let (sys, _app, comms, _proxies) = system_with_file_limit(dir.path(), &caps).await;
    let to = sys.addrs.comms;
    let flood: Vec<_> = futures::future::join_all((0..400).map(|_| tcp_from([127, 0, 0, 3], to))).await;
    let flood: Vec<_> = flood.into_iter().flatten().collect();
    assert!(flood.len() >= 300, "only {} flood connections", flood.len());
    let pid = comms.pid().unwrap();
    let before = cpu_ticks(pid);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let used = cpu_ticks(pid) - before;
    assert!(used < 150, "the server used {used} ticks of CPU in 3 s while out of file descriptors (spinning)");
    drop(flood);
    let out = ferry_async(sys.conn_args("status")).await;
    assert!(out.contains("no batches") || out.contains("batch"), "{out}");
    let log = comms.log_text();
    let lines = log.lines().filter(|l| l.contains("accept failed")).count();
    assert!((1..=3).contains(&lines), "{lines} accept-failure lines:\n{log}");
}
