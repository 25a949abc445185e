//! The Connector through a real HTTP CONNECT proxy (Debian's tinyproxy, installed by `.ci/run`): registration,
//! SFTP upload and the signed calls all go through it; a proxy that needs credentials works with them and gives
//! a clear error without; a proxy that refuses the tunnel gives a clear error.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use ferry::cluster::Cluster;
use ferry_connector::agent::{self, Connector};
use ferry_io::keys::KeyAlgorithm;
use ferry_proto::api::BatchState;

struct Tinyproxy {
    child: Child,
    port: u16,
    log: std::path::PathBuf,
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tinyproxy(dir: &std::path::Path, name: &str, extra: &str) -> Option<Tinyproxy> {
    let bin = ["/usr/bin/tinyproxy", "/usr/sbin/tinyproxy"].into_iter().find(|p| std::path::Path::new(p).exists());
    let Some(bin) = bin else {
        eprintln!("SKIPPED: tinyproxy is not installed (apt-get install tinyproxy; .ci/run installs it)");
        return None;
    };
    // tinyproxy needs a fixed port and cannot be given a socket: try ports below the ephemeral range (where the
    // kernel hands out no port 0) until the tinyproxy started is the one listening, never binding one for it.
    let log = dir.join(format!("{name}.log"));
    let conf = dir.join(format!("{name}.conf"));
    let user = if unsafe_is_root() { "User nobody\nGroup nogroup\n" } else { "" };
    for _ in 0..20 {
        let port: u16 = rand::random::<u16>() % 12_000 + 20_000;
        std::fs::write(
            &conf,
            format!("{user}Port {port}\nListen 127.0.0.1\nTimeout 60\nAllow 127.0.0.1\nLogFile \"{}\"\nLogLevel Info\nMaxClients 20\n{extra}\n", log.display()),
        )
        .unwrap();
        // The log must be writable by the user tinyproxy drops to.
        std::fs::write(&log, "").unwrap();
        let _ = Command::new("chmod").arg("666").arg(&log).status();
        let mut child = Command::new(bin)
            .arg("-d")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let t = Instant::now();
        loop {
            if listens(child.id(), port) {
                return Some(Tinyproxy { child, port, log });
            }
            if child.try_wait().ok().flatten().is_some() {
                break; // the port is taken: another one
            }
            assert!(t.elapsed() < Duration::from_secs(10), "tinyproxy did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    panic!("tinyproxy found no free port in 20 tries");
}

/// Whether process `pid` listens on TCP port `port` of 127.0.0.1 (Linux: its socket inodes in `/proc/<pid>/fd`
/// against the LISTEN entries of `/proc/net/tcp`).
fn listens(pid: u32, port: u16) -> bool {
    let Ok(tcp) = std::fs::read_to_string("/proc/net/tcp") else { return false };
    let sockets: Vec<String> = tcp
        .lines()
        .skip(1)
        .filter_map(|l| {
            // sl local_address rem_address st ... inode: `0: 0100007F:4E21 00000000:0000 0A ... 12345`
            let f: Vec<&str> = l.split_whitespace().collect();
            let local = u16::from_str_radix(f.get(1)?.rsplit(':').next()?, 16).ok()?;
            (local == port && *f.get(3)? == "0A").then(|| format!("socket:[{}]", f.get(9).unwrap_or(&"")))
        })
        .collect();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
    fds.flatten()
        .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| sockets.iter().any(|s| t.as_os_str() == s.as_str())))
}

fn unsafe_is_root() -> bool {
    std::env::var("USER").map(|u| u == "root").unwrap_or(false)
        || std::fs::read_to_string("/proc/self/status")
            .map(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0")))
            .unwrap_or(false)
}

/// `connector init` with a proxy set, then register with a fresh token.
async fn connector_via(c: &Cluster, name: &str, proxy: &str) -> anyhow::Result<Connector> {
    let token = c.add_tenant(name).await?;
    let dir = c.dir.join("connectors").join(name);
    agent::init(
        &dir,
        &ferry_connector::config::InitErp::sqlite("erp.db"),
        ferry_sample::MAPPING,
        KeyAlgorithm::Ed25519,
        false,
    )?;
    let cfg = dir.join("connector.toml");
    let text = std::fs::read_to_string(&cfg)?.replace("proxy = \"\"", &format!("proxy = \"{proxy}\""));
    std::fs::write(&cfg, text)?;
    let conn = Connector::load(&cfg)?;
    conn.register(&token).await?;
    Ok(conn)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connector_works_through_a_proxy_with_and_without_credentials() {
    let (dir, c) = cluster().await;
    let Some(open) = tinyproxy(dir.path(), "open", "") else { return };
    let conn = match connector_via(&c, "alpha", &format!("http://127.0.0.1:{}", open.port)).await {
        Ok(c) => c,
        Err(e) => panic!("register via proxy: {e:#}\n{}", std::fs::read_to_string(&open.log).unwrap_or_default()),
    };
    let s = conn.send(&spool_batch(&conn, &good_files()), &quiet).await.expect("send via proxy").status;
    assert_eq!(s.state, BatchState::Imported, "{:?}", s.detail);
    let log = std::fs::read_to_string(&open.log).unwrap();
    let https = format!("127.0.0.1:{}", c.comms.https_addr.port());
    let ssh = format!("127.0.0.1:{}", c.comms.ssh_addr.port());
    assert!(log.contains(&https) && log.contains(&ssh), "both HTTPS and SSH must go through the proxy:\n{log}");

    // A proxy that needs credentials.
    let Some(auth) = tinyproxy(dir.path(), "auth", "BasicAuth ferry s3cret") else { return };
    let conn =
        connector_via(&c, "beta", &format!("http://ferry:s3cret@127.0.0.1:{}", auth.port)).await.expect("with creds");
    let s = conn.send(&spool_batch(&conn, &good_files()), &quiet).await.expect("send with creds").status;
    assert_eq!(s.state, BatchState::Imported);
    let err = connector_via(&c, "gamma", &format!("http://ferry:wrong@127.0.0.1:{}", auth.port))
        .await
        .err()
        .expect("bad creds");
    assert!(format!("{err:#}").contains("requires credentials"), "{err:#}");
    // SSH through the proxy with wrong credentials: a clear message, and the password is never printed.
    let mut cfg_text = std::fs::read_to_string(conn.cfg.base.join("connector.toml")).unwrap();
    cfg_text = cfg_text.replace("ferry:s3cret@", "ferry:wrong@");
    std::fs::write(conn.cfg.base.join("connector.toml"), cfg_text).unwrap();
    let conn = Connector::load(&conn.cfg.base.join("connector.toml")).unwrap();
    let err = conn.sftp().await.err().expect("bad creds over ssh");
    let msg = format!("{err:#}");
    assert!(msg.contains("requires credentials") && !msg.contains("wrong"), "{msg}");

    // A proxy that refuses tunnels to our ports.
    let Some(refusing) = tinyproxy(dir.path(), "refusing", "ConnectPort 1") else { return };
    let err = connector_via(&c, "delta", &format!("http://127.0.0.1:{}", refusing.port)).await.err().expect("refused");
    assert!(format!("{err:#}").contains("403") || format!("{err:#}").to_lowercase().contains("refused"), "{err:#}");
    c.stop().await;
}
