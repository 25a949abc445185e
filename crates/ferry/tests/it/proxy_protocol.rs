//! The PROXY protocol on the Comms server's public port (`[connections] proxy_protocol_from`): with 127.0.0.1
//! trusted, a sender that claims 10.9.8.7 in a v2 (or v1) header is 10.9.8.7 for the per-address cap, the key's
//! address record, the audit (`key_new_address`, `auth_failed`) — over HTTPS and SFTP; a trusted sender without a
//! header is refused; a header from an untrusted address (127.0.0.2) is not believed (the connection fails), while
//! the same address without a header is served. And Debian's haproxy with `send-proxy-v2` in front of the server:
//! register, sync and receive end to end.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::*;
use ferry::cluster::Cluster;
use ferry_connector::receive::Outcome;
use ferry_io::proxy_protocol::{v1_header, v2_header};
use ferry_proto::api::BatchState;
use ferry_sample::{SampleSize, generate_sample_erp};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the forwarder puts before each connection: nothing, or a v1/v2 header claiming an address.
#[derive(Clone, Copy)]
enum Header {
    None,
    V1(IpAddr),
    V2(IpAddr),
}

/// A tiny load balancer for tests: connections to `addr` are forwarded from `source` (a local address) to the
/// target, each opened with the header set now.
struct Forwarder {
    addr: SocketAddr,
    target: Arc<Mutex<Option<SocketAddr>>>,
    header: Arc<Mutex<Header>>,
    task: tokio::task::JoinHandle<()>,
}

impl Forwarder {
    async fn start(source: IpAddr) -> Forwarder {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let target: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let header = Arc::new(Mutex::new(Header::None));
        let (t, h) = (target.clone(), header.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, peer)) = l.accept().await else { return };
                let (Some(to), hdr) = (*t.lock().unwrap(), *h.lock().unwrap()) else { continue };
                tokio::spawn(async move {
                    let s = tokio::net::TcpSocket::new_v4().unwrap();
                    s.bind(SocketAddr::new(source, 0)).unwrap();
                    let Ok(mut out) = s.connect(to).await else { return };
                    let bytes = match hdr {
                        Header::None => Vec::new(),
                        Header::V1(ip) => v1_header(SocketAddr::new(ip, peer.port()), to),
                        Header::V2(ip) => v2_header(SocketAddr::new(ip, peer.port()), to),
                    };
                    if out.write_all(&bytes).await.is_err() {
                        return;
                    }
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                });
            }
        });
        Forwarder { addr, target, header, task }
    }

    fn route(&self, to: SocketAddr) {
        *self.target.lock().unwrap() = Some(to);
    }

    fn claim(&self, h: Header) {
        *self.header.lock().unwrap() = h;
    }

    fn url(&self) -> String {
        format!("https://{}", self.addr)
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// An HTTPS client pinned to the Comms certificate that connects from `source`.
fn probe_client(c: &Cluster, source: IpAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_backend_preconfigured(ferry_io::tls::client_config(Some(&c.comms.state.identity.tls_fingerprint)).unwrap())
        .local_address(source)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Whether the server closes a fresh connection (EOF or reset) within `limit`.
async fn closed_within(stream: &mut tokio::net::TcpStream, limit: Duration) -> bool {
    let mut b = [0u8; 256];
    let t = std::time::Instant::now();
    while t.elapsed() < limit {
        match tokio::time::timeout(limit.saturating_sub(t.elapsed()), stream.read(&mut b)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue, // an SSH banner: the server may speak first
            Err(_) => return false,
        }
    }
    false
}

async fn audit(c: &Cluster) -> Vec<(String, String)> {
    ferry_comms::db::recent_audit(&c.comms.state.db, 1000).await.unwrap().into_iter().map(|e| (e.3, e.4)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_trusted_proxy_names_the_client_and_nobody_else_can() {
    let dir = tempfile::tempdir().unwrap();
    let fwd = Forwarder::start(ip("127.0.0.1")).await;
    let (f_url, f_addr) = (fwd.url(), fwd.addr);
    let c = Cluster::start_one_port_with(
        dir.path(),
        // the App reaches Comms through the forwarder too (a direct connection from 127.0.0.1 is refused)
        |a| a.comms.api_url = f_url.clone(),
        |cfg| {
            cfg.connections.proxy_protocol_from = vec!["127.0.0.1".into()];
            cfg.connections.max_per_address = 6;
            cfg.public_url = f_url.clone();
            cfg.public_ssh_addr = f_addr.to_string();
        },
    )
    .await
    .unwrap();
    let comms = c.comms.https_addr;
    fwd.route(comms);

    // registered as 10.9.8.6, then syncs (HTTPS and SFTP) as 10.9.8.7 — v2 headers
    fwd.claim(Header::V2(ip("10.9.8.6")));
    let erp = dir.path().join("erp.db");
    generate_sample_erp(&erp, SampleSize::Small).await.unwrap();
    let token = c.admin().await.unwrap().add_tenant("acme", &fwd.url()).await.unwrap();
    let conn = c.connector("acme", &erp, &token).await.unwrap();
    fwd.claim(Header::V2(ip("10.9.8.7")));
    let r = conn.sync(&quiet).await.unwrap();
    assert_eq!(r.status.state, BatchState::Imported, "{:?}", r.status);
    let addresses: Vec<String> = ferry_comms::db::on!(&c.comms.state.db, p => {
        sqlx::query_scalar("SELECT address FROM key_addresses ORDER BY address").fetch_all(p).await.unwrap()
    });
    assert_eq!(addresses, ["10.9.8.6", "10.9.8.7"], "the key's addresses are the clients, not the proxy");
    let new_from = async |what: &str| {
        let seen = async || audit(&c).await.iter().any(|(e, d)| e == "key_new_address" && d.contains(what));
        assert!(eventually(Duration::from_secs(10), seen).await.is_some(), "{what}: {:?}", audit(&c).await);
    };
    new_from("from 10.9.8.7").await;
    // a long-poll alone (HTTPS only) as 10.9.8.8
    fwd.claim(Header::V2(ip("10.9.8.8")));
    conn.receive(1, &quiet).await.unwrap();
    new_from("from 10.9.8.8 (https)").await;

    // a failed authentication through a v1 header is audited with the claimed client
    fwd.claim(Header::V1(ip("10.9.8.5")));
    let r = probe_client(&c, ip("127.0.0.1")).get(format!("{}/v1/files", fwd.url())).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let failed = async || audit(&c).await.iter().any(|(e, d)| e == "auth_failed" && d.contains("from 10.9.8.5"));
    assert!(eventually(Duration::from_secs(10), failed).await.is_some(), "{:?}", audit(&c).await);

    // the per-address cap counts the claimed client: six connections of 10.9.8.9 fill it, a seventh is closed,
    // while 10.9.8.10 (same proxy, same source address) still gets in
    let mut held = Vec::new();
    for i in 0..6u16 {
        let mut s = tokio::net::TcpStream::connect(comms).await.unwrap();
        s.write_all(&v2_header(SocketAddr::new(ip("10.9.8.9"), 5000 + i), comms)).await.unwrap();
        held.push(s);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut seventh = tokio::net::TcpStream::connect(comms).await.unwrap();
    seventh.write_all(&v2_header(SocketAddr::new(ip("10.9.8.9"), 5006), comms)).await.unwrap();
    assert!(closed_within(&mut seventh, Duration::from_secs(3)).await, "a 7th connection of 10.9.8.9 was served");
    let mut other = tokio::net::TcpStream::connect(comms).await.unwrap();
    other.write_all(&v1_header(SocketAddr::new(ip("10.9.8.10"), 5000), comms)).await.unwrap();
    assert!(!closed_within(&mut other, Duration::from_millis(500)).await, "10.9.8.10 was refused too");
    drop((held, other));

    // a trusted sender without a header: refused (HTTPS and SSH alike)
    let e = probe_client(&c, ip("127.0.0.1")).get(format!("https://{comms}/v1/files")).send().await;
    assert!(e.is_err(), "served without a PROXY header: {e:?}");
    let mut ssh = tokio::net::TcpStream::connect(comms).await.unwrap();
    ssh.write_all(b"SSH-2.0-OpenSSH_9.2\r\n").await.unwrap();
    assert!(closed_within(&mut ssh, Duration::from_secs(3)).await, "an SSH client without a header was served");
    // an untrusted sender (127.0.0.2) with a header: not believed, the connection fails; without one: served
    let untrusted = Forwarder::start(ip("127.0.0.2")).await;
    untrusted.route(comms);
    untrusted.claim(Header::V2(ip("10.9.8.7")));
    let e = probe_client(&c, ip("127.0.0.1")).get(format!("{}/v1/files", untrusted.url())).send().await;
    assert!(e.is_err(), "a PROXY header from an untrusted address was accepted: {e:?}");
    let r = probe_client(&c, ip("127.0.0.2")).get(format!("https://{comms}/v1/files")).send().await.unwrap();
    assert_eq!(r.status(), 401, "an untrusted address without a header is served as itself");
    let own = async || audit(&c).await.iter().any(|(e, d)| e == "auth_failed" && d.contains("from 127.0.0.2"));
    assert!(eventually(Duration::from_secs(10), own).await.is_some(), "{:?}", audit(&c).await);
    c.stop().await;
}

/// Debian's haproxy in TCP mode with `send-proxy-v2` in front of a Comms server that trusts it: a Connector
/// registers, syncs and receives through it, and the App announces through it; a direct connection is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn haproxy_with_send_proxy_v2_in_front_of_a_replica_works_end_to_end() {
    use crate::replicas::haproxy_bin;
    let Some(haproxy) = haproxy_bin() else { return };
    let dir = tempfile::tempdir().unwrap();
    let lb = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let lb_url = format!("https://{lb}");
    let c = Cluster::start_one_port_with(
        dir.path(),
        |a| a.comms.api_url = lb_url.clone(),
        |cfg| {
            cfg.connections.proxy_protocol_from = vec!["127.0.0.0/8".into()];
            cfg.public_url = lb_url.clone();
            cfg.public_ssh_addr = lb.to_string();
        },
    )
    .await
    .unwrap();
    let servers = [format!("{} send-proxy-v2", c.comms.https_addr)];
    let _haproxy =
        ferry::bench::cluster::harness::start_haproxy(&haproxy, lb, "roundrobin", &servers, dir.path(), dir.path())
            .expect("start haproxy");

    let erp = dir.path().join("erp.db");
    generate_sample_erp(&erp, SampleSize::Small).await.unwrap();
    let token = c.admin().await.unwrap().add_tenant("acme", &lb_url).await.unwrap();
    let inst = c.app.state.instance("acme").await.unwrap().unwrap();
    ferry_app::release::set_policy(&inst.0, ferry_app::release::Policy::Auto).await.unwrap();
    let conn = c.connector_with_write_back("acme", &erp, &token).await.unwrap();
    let r = conn.sync(&quiet).await.unwrap();
    assert_eq!(r.status.state, BatchState::Imported, "{:?}", r.status);
    // downstream: the App announces through haproxy, the Connector long-polls and downloads through it
    let mut applied = 0;
    let t = std::time::Instant::now();
    while applied == 0 && t.elapsed() < Duration::from_secs(90) {
        let out = conn.receive(5, &quiet).await.unwrap();
        applied += out.iter().filter(|o| matches!(o, Outcome::Applied { .. })).count();
    }
    assert!(applied > 0, "no downstream file arrived through haproxy");
    // every connection came with a header: a direct one (no header) from the trusted range is refused
    let e = probe_client(&c, ip("127.0.0.1")).get(format!("{}/v1/files", c.comms.url())).send().await;
    assert!(e.is_err(), "served without a PROXY header: {e:?}");
    c.stop().await;
}
