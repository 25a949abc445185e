//! Brute-force SSH authentication is slowed down: each refused login from an address waits longer than the
//! one before (its own test binary, because the throttle is per process and per source address).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use ferry_io::keys::{self, KeyAlgorithm};
use ferry_sftp::client::{ClientConfig, ClientError, SftpClient};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refused_ssh_logins_get_slower_and_a_good_key_still_gets_in() {
    let (_dir, c) = cluster().await;
    let a = tenant(&c, "alpha").await;
    let reg = a.registration().unwrap();
    let mut times = Vec::new();
    for _ in 0..6 {
        let cfg = ClientConfig {
            user: "alpha".into(),
            key: Arc::new(keys::generate(KeyAlgorithm::Ed25519).unwrap()),
            host_key_fingerprint: reg.ssh_host_key_fingerprint.clone(),
            connect_timeout: Duration::from_secs(30),
            io_timeout: Duration::from_secs(30),
        };
        let t = Instant::now();
        let r = SftpClient::connect(&cfg, &reg.ssh_addr).await;
        assert!(matches!(r, Err(ClientError::AuthRejected)), "{:?}", r.err());
        times.push(t.elapsed());
    }
    // 100, 200, 400, 800, 1600, 3200 ms of added delay (under russh's fixed 500 ms rejection time at first).
    assert!(times[5] >= Duration::from_millis(3000), "{times:?}");
    assert!(times[5] > times[0] * 4 && times[5] > times[4], "{times:?}");
    // The registered key logs in without waiting, and resets the count for this address.
    let t = Instant::now();
    a.sftp().await.unwrap().close().await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    c.stop().await;
}
