//! The full cluster (issue 12, item 5), every server a separate OS process ([`ferry::bench::cluster::harness`]):
//! Debian's haproxy in TCP mode in front of three `ferry comms serve` replicas on one PostgreSQL database (and the
//! storage of `harness::storage_toml`: the shared data folder, or object storage when that is wired in), two
//! `ferry app serve` processes registered with `ferry comms app add`, twenty tenants placed over both, their
//! Connectors registered and working through haproxy. Upstream and downstream end to end; then the replica
//! holding a tenant's relay claim is killed with `kill -9` while it relays (its SFTP link to the App stalled, so
//! it is caught mid-way): another replica takes the claim over; every batch imported once, every file applied
//! once. Skips without haproxy or a test PostgreSQL (`FERRY_TEST_POSTGRES_URL`), fails under `FERRY_CI=1`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::comms_postgres::scratch_database;
use crate::procs::{Proxy, ferry, ferry_bin, query};
use crate::replicas::haproxy_bin;
use ferry::bench::cluster::harness::{self, Options, ProcCluster};
use ferry_connector::agent::{Connector, SyncOptions};
use ferry_proto::api::BatchState;

const TENANTS: usize = 20;

/// The App server (index) whose data folder holds the tenant's instance.
fn app_of(c: &ProcCluster, tenant: &str) -> Option<usize> {
    (0..c.apps.len()).find(|&i| instance(c, i, tenant).exists())
}

fn instance(c: &ProcCluster, app: usize, tenant: &str) -> PathBuf {
    c.dir.join(format!("app{app}/data/instances/{tenant}.db"))
}

/// Syncs every Connector at once (tasks of this process, through haproxy); each must end `imported`.
async fn sync_all(cfgs: &[(String, PathBuf)]) {
    let mut tasks = Vec::new();
    for (t, cfg) in cfgs {
        let (t, cfg) = (t.clone(), cfg.clone());
        tasks.push(tokio::spawn(async move {
            let c = Connector::load(&cfg).unwrap();
            let opts = SyncOptions { full: true, allow_warnings: false, today: None };
            let r = c.sync_with(&opts, &|_: &str| {}).await.unwrap_or_else(|e| panic!("{t}: sync failed: {e:#}"));
            assert_eq!(r.status.state, BatchState::Imported, "{t}: {:?}", r.status);
            r.manifest.batch_id.to_string()
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// The rows of `batch_log` of an instance: (batch id, state).
fn imported_batches(db: &Path) -> Vec<(String, String)> {
    query(db, "SELECT batch_id, state FROM batch_log ORDER BY batch_id")
        .into_iter()
        .map(|r| (r[0].clone(), r[1].clone()))
        .collect()
}

/// Lines of `log` holding every one of `words`.
fn count(log: &str, words: &[&str]) -> usize {
    log.lines().filter(|l| words.iter().all(|w| l.contains(w))).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_tenants_two_apps_three_replicas_and_a_relay_taken_over_mid_way() {
    let Some(haproxy) = haproxy_bin() else { return };
    let Some(database) = scratch_database().await else { return };
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    // Comms -> App 0's SFTP goes through this proxy: stalled, it holds a relay mid-way
    let link = Proxy::unrouted().await;
    let link_port = link.port;
    let o = Options {
        exe: ferry_bin().into(),
        dir: dir.clone(),
        database_url: database.url.clone(),
        password_env: database.password_env.clone(),
        replicas: 3,
        apps: 2,
        haproxy,
        max_per_address: 4000,
        log_filter: "info,sqlx=error".into(),
    };
    let (mut c, app0_ssh) = tokio::task::spawn_blocking(move || {
        let mut ssh = String::new();
        let c = ProcCluster::start(&o, |i, info| {
            if i == 0 {
                let a = harness::section(info, "app");
                ssh = a["ssh_addr"].as_str().unwrap().to_string();
                a.insert("ssh_addr".into(), format!("127.0.0.1:{link_port}").into());
            }
        })
        .unwrap();
        (c, ssh)
    })
    .await
    .unwrap();
    link.route(app0_ssh.parse().unwrap());
    println!("cluster up in {:.0} s", started.elapsed().as_secs_f64());

    // one small sample ERP (a slice of its sales history), read by every Connector
    let erp = dir.join("erp.db");
    ferry(&["sample-erp", &erp.display().to_string()]);
    harness::shrink_erp(&erp, 50).await.unwrap();

    // twenty tenants, placed on the App server with the fewest tenants: ten each
    let names: Vec<String> = (0..TENANTS).map(|i| format!("t{i:02}")).collect();
    let cfgs: Vec<(String, PathBuf)> = {
        let (c, names, erp) = (&c, &names, &erp);
        tokio::task::block_in_place(|| {
            names
                .iter()
                .map(|t| {
                    let token = c.add_tenant(t, None).unwrap();
                    (t.clone(), c.add_connector(t, &token, erp).unwrap())
                })
                .collect()
        })
    };
    let placed: Vec<usize> =
        names.iter().map(|t| app_of(&c, t).unwrap_or_else(|| panic!("{t}: no instance"))).collect();
    assert_eq!(placed.iter().filter(|&&a| a == 0).count(), TENANTS / 2, "placement over two App servers: {placed:?}");
    let db = ferry_comms::db::open_postgres(&database).await.unwrap();
    for row in ferry_comms::db::list_tenants(&db).await.unwrap() {
        let i = names.iter().position(|n| *n == row.name).unwrap();
        assert_eq!(row.app.as_deref(), Some(c.app_names[placed[i]].as_str()), "{}", row.name);
    }
    println!("{TENANTS} tenants and Connectors in {:.0} s", started.elapsed().as_secs_f64());

    // upstream: all twenty sync at once through haproxy, each batch imported once on its own App server
    sync_all(&cfgs).await;
    for (i, t) in names.iter().enumerate() {
        let b = ferry_comms::db::list_batches(&db, t, 10).await.unwrap();
        assert!(b.len() == 1 && b[0].state == BatchState::Imported, "{t}: {b:?}");
        let got = imported_batches(&instance(&c, placed[i], t));
        assert_eq!(got, vec![(b[0].batch_id.to_string(), "imported".to_string())], "{t} at app{}", placed[i]);
        assert!(!instance(&c, 1 - placed[i], t).exists(), "{t} has an instance on the other App server too");
    }
    // the Connectors were spread over the replicas
    for (i, r) in c.replicas.iter().enumerate() {
        assert!(count(&r.log_text(), &["batch completed"]) > 0, "replica {i} completed no batch");
    }
    println!("upstream done in {:.0} s", started.elapsed().as_secs_f64());

    // downstream: each App server publishes a file for each of its tenants; each Connector applies it once
    let po = |t: &str| {
        format!(
            "order_number,line,item,location,supplier,qty,unit_cost,order_date,due_date,comment\nR-{t},1,A1,L1,S1,5,\
             1.0,2026/11/28,2026/12/05,\n"
        )
    };
    for (i, t) in names.iter().enumerate() {
        let src = dir.join(format!("po-{t}.csv"));
        std::fs::write(&src, po(t)).unwrap();
        let app_cfg = c.app_cfgs[placed[i]].display().to_string();
        ferry(&["app", "publish", t, &src.display().to_string(), "--name", "po_000001.csv", "--config", &app_cfg]);
    }
    let mut tasks = Vec::new();
    for (t, cfg) in cfgs.clone() {
        tasks.push(tokio::spawn(async move {
            let conn = Connector::load(&cfg).unwrap();
            let file = cfg.parent().unwrap().join("from_cloud/po_000001.csv");
            let t0 = Instant::now();
            while !file.exists() {
                assert!(t0.elapsed() < Duration::from_secs(120), "{t}: the file never arrived");
                if let Err(e) = conn.receive(10, &|_: &str| {}).await {
                    println!("{t}: receive: {e:#} (retried)");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
            (t, conn)
        }));
    }
    for task in tasks {
        let (t, conn) = task.await.unwrap();
        let dir = conn.cfg.base.join("from_cloud");
        let files: Vec<String> =
            std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(files, vec!["po_000001.csv".to_string()], "{t}");
        assert_eq!(std::fs::read_to_string(dir.join("po_000001.csv")).unwrap(), po(&t), "{t}");
        let acked = async || {
            let r = conn.received(10).await.unwrap();
            r.len() == 1 && r[0].state.as_str() == "acked"
        };
        assert!(crate::common::eventually(Duration::from_secs(30), acked).await.is_some(), "{t}: not applied once");
    }
    println!("downstream done in {:.0} s", started.elapsed().as_secs_f64());

    // the relay of a tenant on App 0 held mid-way (its SFTP link stalled); the replica holding the claim killed
    let ti = placed.iter().position(|&a| a == 0).unwrap();
    let (t, cfg) = cfgs[ti].clone();
    let tenant = format!("tenant={t} ");
    let before: Vec<usize> = c.replicas.iter().map(|r| count(&r.log_text(), &["relay claimed", &tenant])).collect();
    link.stall(true);
    let sync = {
        let cfgs = vec![(t.clone(), cfg.clone())];
        tokio::spawn(async move { sync_all(&cfgs).await })
    };
    let t0 = Instant::now();
    let (victim, second) = loop {
        let now: Vec<usize> = c.replicas.iter().map(|r| count(&r.log_text(), &["relay claimed", &tenant])).collect();
        if let Some(i) = (0..3).find(|&i| now[i] > before[i]) {
            let log = c.replicas[i].log_text();
            let line = log.lines().rfind(|l| l.contains("relay claimed") && l.contains(&tenant)).unwrap();
            // the event's own field (the span's prefix `relay{tenant=.. batch=..}:` holds it too)
            let id = line.split_whitespace().filter_map(|w| w.strip_prefix("batch=")).next_back().unwrap();
            let id = id.trim_end_matches(['}', ':']).to_string();
            break (i, id);
        }
        assert!(t0.elapsed() < Duration::from_secs(120), "no replica claimed {t}'s relay");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let batch = format!("batch={second}");
    // it is relaying now, stuck in the stalled SFTP copy to the App
    tokio::time::sleep(Duration::from_millis(500)).await;
    let victim_log = c.replicas[victim].log_text();
    assert_eq!(count(&victim_log, &["batch relayed", &batch]), 0, "the relay finished before the kill");
    c.replicas[victim].kill9();
    link.stall(false);
    tokio::time::timeout(Duration::from_secs(180), sync).await.expect("the sync after the kill").unwrap();
    let b = ferry_comms::db::list_batches(&db, &t, 10).await.unwrap();
    assert!(b.len() == 2 && b.iter().all(|b| b.state == BatchState::Imported), "{t}: {b:?}");
    let got = imported_batches(&instance(&c, 0, &t));
    let want: Vec<(String, String)> = {
        let mut w: Vec<(String, String)> = b.iter().map(|b| (b.batch_id.to_string(), "imported".into())).collect();
        w.sort();
        w
    };
    assert_eq!(got, want, "{t}: each batch imported once");
    // another replica took the claim over and relayed it
    assert!(b.iter().any(|b| b.batch_id.to_string() == second), "{second} in {b:?}");
    let takers: Vec<usize> = (0..3)
        .filter(|&i| i != victim && count(&c.replicas[i].log_text(), &["relay claimed", &tenant, &batch]) > 0)
        .collect();
    assert!(!takers.is_empty(), "no other replica claimed the relay of {second}");
    let verdicts = c.replicas_logging(&["batch verdict", &tenant, &batch]);
    assert!(verdicts.iter().all(|&i| i != victim) && !verdicts.is_empty(), "verdict logged by {verdicts:?}");
    // every other tenant's batch and file still once
    for (i, t) in names.iter().enumerate().filter(|(i, _)| *i != ti) {
        assert_eq!(imported_batches(&instance(&c, placed[i], t)).len(), 1, "{t}");
    }
    for r in &c.replicas {
        assert!(!r.log_text().contains("panicked"), "{} panicked", r.name);
    }
    println!("relay taken over from replica {victim} by {takers:?}; {:.0} s in all", started.elapsed().as_secs_f64());
    c.stop();
    db.close().await;
}
