//! Several Comms replicas sharing one PostgreSQL database and one data folder (issue 12, item 3): a long-poll on
//! one replica woken by a file another made ready (`LISTEN ferry_downloads`, also after the listener's connection
//! was cut), a signed call replayed to another replica refused (the shared replay cache), exactly one replica
//! working on a tenant's downstream files and another taking over from one that stopped, and one audit chain
//! under concurrent admin actions on two replicas. The replicas are in-process Comms servers started on the
//! cluster's configuration (same data folder, same database). Runs whenever a test PostgreSQL is available
//! (`FERRY_TEST_POSTGRES_URL`); skips without one, fails under `FERRY_CI=1`.

use std::time::{Duration, Instant};

use crate::common::*;
use crate::comms_postgres::scratch_database;
use ferry::cluster::Cluster;
use ferry_comms::CommsHandle;
use ferry_connector::agent::Connector;
use ferry_connector::receive::Outcome;
use ferry_proto::api::{DownloadFile, FileId, FileReady, FileState};

/// A cluster whose Comms metadata is on a fresh PostgreSQL database; None (skipped) without a test server.
async fn pg_cluster(dir: &std::path::Path) -> Option<Cluster> {
    let database = scratch_database().await?;
    let c = Cluster::start_with(dir, |_| {}, move |cfg| cfg.database = database).await.unwrap();
    assert!(c.comms.state.db.is_postgres());
    Some(c)
}

/// Another replica of the cluster's Comms server: the same configuration (data folder, database, identity), HTTPS
/// and SSH on one new port, its own admin port.
async fn replica(c: &Cluster) -> CommsHandle {
    let mut cfg = c.comms.state.cfg.clone();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    cfg.listen_https = l.local_addr().unwrap();
    cfg.listen_ssh = cfg.listen_https;
    cfg.listen_admin = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    ferry_comms::start_on(cfg, ferry_comms::Listeners::Shared(l)).await.unwrap()
}

/// Point a registered connector at replica `r` (as a load balancer would send it there).
fn use_replica(conn: &Connector, r: &CommsHandle) -> Connector {
    let mut reg = conn.registration().unwrap();
    reg.comms_url = r.url();
    reg.ssh_addr = r.ssh_addr.to_string();
    reg.save(conn.cfg.registration_path()).unwrap();
    Connector::load(&conn.cfg.base.join("connector.toml")).unwrap()
}

fn file(tenant: &str, n: u32) -> FileReady {
    FileReady {
        tenant: tenant.into(),
        file_id: FileId::new(chrono::Utc::now()),
        name: format!("po_{n:06}.csv"),
        bytes: 3,
        md5: "0".repeat(32),
        sha256: "0".repeat(64),
    }
}

/// Long-poll `GET /v1/files?wait=20` on `r` as `conn`; returns the list and when the answer came.
fn long_poll(conn: &Connector, r: &CommsHandle) -> tokio::task::JoinHandle<(Vec<DownloadFile>, Instant)> {
    let c = use_replica(conn, r);
    tokio::spawn(async move {
        let api = c.api_with_timeout(Duration::from_secs(40)).unwrap();
        let files: Vec<DownloadFile> = api.get("/v1/files?wait=20").await.unwrap();
        (files, Instant::now())
    })
}

/// Wait until `r` has `n` more long-polls waiting than `before`.
async fn polls_waiting(r: &CommsHandle, before: usize) {
    let waiting = async || r.state.downloads_changed.receiver_count() > before;
    assert!(eventually(Duration::from_secs(10), waiting).await.is_some(), "the long-poll never started");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_file_made_ready_on_one_replica_wakes_a_long_poll_on_another() {
    let dir = tempfile::tempdir().unwrap();
    let Some(c) = pg_cluster(dir.path()).await else { return };
    let b = replica(&c).await;
    let conn = tenant(&c, "acme").await;
    let db_a = c.comms.state.db.clone();
    // wait for B's listener (it starts with the server)
    tokio::time::sleep(Duration::from_millis(500)).await;

    for round in 0..2 {
        let f = file("acme", round);
        assert!(ferry_comms::db::insert_download(&db_a, &f).await.unwrap());
        let before = b.state.downloads_changed.receiver_count();
        let poll = long_poll(&conn, &b);
        polls_waiting(&b, before).await;
        // replica A (its database connection) makes the file ready; B's own worker has nothing to do with it
        let t = Instant::now();
        ferry_comms::db::set_downloads_ready(&db_a, "acme", &[(f.file_id.clone(), 10)]).await.unwrap();
        let (files, at) = poll.await.unwrap();
        let took = at.duration_since(t);
        assert!(files.iter().any(|x| x.id == f.file_id), "round {round}: {files:?}");
        assert!(took < Duration::from_secs(1), "round {round}: the long-poll on replica B woke after {took:?}");
        ferry_comms::db::set_downloads_delivered(&db_a, "acme", &[f.file_id]).await.unwrap();

        if round == 0 {
            // cut every listener's database connection: B re-opens its own and still wakes within a second
            ferry_comms::db::on!(&db_a, p => {
                let n: Vec<i32> = sqlx::query_scalar(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN%'",
                )
                .fetch_all(p)
                .await
                .unwrap();
                assert!(n.len() >= 2, "one listener per replica: {n:?}");
                for pid in n {
                    sqlx::query("SELECT pg_terminate_backend($1)").bind(pid).execute(p).await.unwrap();
                }
            });
            let relistening = async || {
                ferry_comms::db::on!(&db_a, p => {
                    let n: i64 = sqlx::query_scalar(
                        "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN%'",
                    )
                    .fetch_one(p)
                    .await
                    .unwrap();
                    n >= 2
                })
            };
            assert!(eventually(Duration::from_secs(10), relistening).await.is_some(), "listeners never came back");
        }
    }
    b.stop().await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_signed_call_replayed_to_another_replica_is_refused() {
    use ferry_io::httpsig;
    let dir = tempfile::tempdir().unwrap();
    let Some(c) = pg_cluster(dir.path()).await else { return };
    let b = replica(&c).await;
    let conn = tenant(&c, "acme").await;
    let key = ferry_io::keys::load_private_key(conn.cfg.key_path()).unwrap();
    // a key registered through A is known to B within a second (the access counter)
    let fp = conn.key_fingerprint();
    let known = async || b.state.keys.tenant_of(&fp).is_some();
    assert!(eventually(Duration::from_secs(1), known).await.is_some(), "replica B never learnt the new key");
    let reg = conn.registration().unwrap();
    let http = ferry_io::tls::http_client(Some(&reg.tls_fingerprint), Duration::from_secs(10)).unwrap();
    let h = httpsig::sign(&key, "GET", "/v1/whoami", b"", httpsig::unix_now()).unwrap();
    let first = signed_get(&http, &format!("{}/v1/whoami", c.comms.url()), &h).await;
    assert_eq!(first.status().as_u16(), 200);
    let replayed = signed_get(&http, &format!("{}/v1/whoami", b.url()), &h).await;
    assert_eq!(replayed.status().as_u16(), 401, "a replay to another replica must be refused");
    let why = replayed.text().await.unwrap();
    assert!(why.contains("replay"), "{why}");
    // a fresh signature works on either
    let h = httpsig::sign(&key, "GET", "/v1/whoami", b"", httpsig::unix_now()).unwrap();
    assert_eq!(signed_get(&http, &format!("{}/v1/whoami", b.url()), &h).await.status().as_u16(), 200);
    // and the same call shown to both at once: exactly one accepts it
    let h = httpsig::sign(&key, "GET", "/v1/whoami", b"", httpsig::unix_now()).unwrap();
    let (ua, ub) = (format!("{}/v1/whoami", c.comms.url()), format!("{}/v1/whoami", b.url()));
    let (ra, rb) = tokio::join!(signed_get(&http, &ua, &h), signed_get(&http, &ub, &h));
    let ok = [ra.status().as_u16(), rb.status().as_u16()];
    assert!(ok.contains(&200) && ok.contains(&401), "{ok:?}");

    // expired entries are swept; live ones are kept
    let db = &c.comms.state.db;
    let now = chrono::Utc::now().timestamp();
    assert_eq!(ferry_comms::db::sweep_nonces(db, now).await.unwrap(), 0, "nothing has expired yet");
    assert!(ferry_comms::db::sweep_nonces(db, now + 3600).await.unwrap() >= 3);
    b.stop().await;
    c.stop().await;
}

/// Exactly one replica works on a tenant's downstream files: while another holds the claim (a replica in the
/// middle of fetching), nobody else fetches; when that replica goes away (here: its connection closes; below:
/// the cluster's own replica is stopped), another takes over, and every file reaches the Connector once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_replica_fetches_a_tenants_files_and_another_takes_over() {
    let dir = tempfile::tempdir().unwrap();
    let Some(c) = pg_cluster(dir.path()).await else { return };
    let erp = dir.path().join("erp.db");
    let token = c.add_tenant("acme").await.unwrap();
    let conn = c.connector_with_write_back("acme", &erp, &token).await.unwrap();
    let b = replica(&c).await;
    let conn = use_replica(&conn, &b);
    let db = c.comms.state.db.clone();

    // a third replica (this test) is "fetching": it holds the tenant's claim
    let holder = ferry_comms::db::open_postgres(&c.comms.state.cfg.database).await.unwrap();
    let claim = ferry_comms::db::claim_downstream(&holder, "acme").await.unwrap().expect("free claim");
    assert!(ferry_comms::db::claim_downstream(&db, "acme").await.unwrap().is_none(), "two replicas fetch one tenant");

    let inst = c.app.state.instance("acme").await.unwrap().unwrap();
    let mut published = Vec::new();
    for n in 1..=3 {
        let src = c.dir.join(format!("src-{n}"));
        let text = format!(
            "order_number,line,item,location,supplier,qty,unit_cost,order_date,due_date,comment\nR-{n},1,A1,L1,S1,{n},1.0,2026/11/28,2026/12/05,\n"
        );
        std::fs::write(&src, text).unwrap();
        let name = format!("po_{n:06}.csv");
        published
            .push(ferry_app::outbox::publish(&inst.0, "acme", &c.app.state.sftp_root(), &src, &name).await.unwrap());
    }
    c.app.state.announce_wakeup.notify_one();
    let announced = async || ferry_comms::db::tenant_downloads(&db, "acme", 10).await.unwrap().len() == 3;
    assert!(eventually(Duration::from_secs(20), announced).await.is_some(), "the App never announced the files");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rows = ferry_comms::db::tenant_downloads(&db, "acme", 10).await.unwrap();
    assert!(rows.iter().all(|r| r.2 == "fetching"), "fetched while another replica held the claim: {rows:?}");

    // the replica that held it stops, and so does the cluster's own replica (A): B takes over
    let ferry::cluster::Cluster { app, comms: a, .. } = c;
    a.stop().await;
    drop(claim);
    holder.close().await;
    b.state.downstream_wakeup.notify_one();
    let ready = async || {
        let rows = ferry_comms::db::tenant_downloads(&db, "acme", 10).await.unwrap();
        rows.iter().all(|r| r.2 != "fetching")
    };
    assert!(eventually(Duration::from_secs(60), ready).await.is_some(), "replica B never took over");

    let mut applied = Vec::new();
    let t = Instant::now();
    while applied.len() < 3 && t.elapsed() < Duration::from_secs(60) {
        for o in conn.receive(5, &quiet).await.unwrap() {
            if let Outcome::Applied { .. } = o {
                applied.push(o);
            }
        }
    }
    assert_eq!(applied.len(), 3, "{applied:?}");
    let delivered = async || {
        let r = ferry_app::outbox::receipts(&inst.0).await.unwrap();
        r.len() == 3 && r.iter().all(|f| f.state == FileState::Delivered)
    };
    assert!(eventually(Duration::from_secs(30), delivered).await.is_some(), "the App never heard of every delivery");
    // nothing twice: each file fetched once (no failed attempt), applied once
    let rows = ferry_comms::db::tenant_downloads(&db, "acme", 10).await.unwrap();
    assert!(rows.iter().all(|r| r.2 == "delivered" && r.3 == 0), "{rows:?}");
    assert_eq!(conn.received(10).await.unwrap().len(), 3);
    assert_eq!(erp_orders(&erp).await, 3);
    b.stop().await;
    app.stop().await;
}

async fn erp_orders(erp: &std::path::Path) -> i64 {
    use sqlx::Connection;
    let mut db = sqlx::SqliteConnection::connect(&format!("sqlite:{}", erp.display())).await.unwrap();
    sqlx::query_scalar("SELECT COUNT(*) FROM recommended_orders").fetch_one(&mut db).await.unwrap()
}

/// Admin actions on two replicas at once append to one audit chain, which verifies (through either replica's
/// admin API, as `ferry comms audit verify` does).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_admin_actions_on_two_replicas_keep_one_audit_chain() {
    let dir = tempfile::tempdir().unwrap();
    let Some(c) = pg_cluster(dir.path()).await else { return };
    let b = replica(&c).await;
    let _ = c.add_tenant("acme").await.unwrap();
    let token = std::fs::read_to_string(c.comms.state.cfg.admin_token_path()).unwrap().trim().to_string();
    let pin = c.comms.state.identity.tls_fingerprint.clone();
    let http = ferry_io::tls::http_client(Some(&pin), Duration::from_secs(30)).unwrap();
    let admins = [c.comms.admin_addr.unwrap(), b.admin_addr.unwrap()];
    let mut calls = Vec::new();
    for i in 0..30 {
        let (http, token, addr) = (http.clone(), token.clone(), admins[i % 2]);
        calls.push(tokio::spawn(async move {
            let path = match i % 3 {
                0 => "/admin/v1/tenants/acme/token",
                1 => "/admin/v1/tenants/acme/disable",
                _ => "/admin/v1/tenants/acme/enable",
            };
            let r = http.post(format!("https://{addr}{path}")).bearer_auth(&token).send().await.unwrap();
            assert!(r.status().is_success(), "{path}: {}", r.text().await.unwrap());
        }));
    }
    for call in calls {
        call.await.unwrap();
    }
    for addr in admins {
        let r = http.get(format!("https://{addr}/admin/v1/audit/verify")).bearer_auth(&token).send().await.unwrap();
        let text = r.text().await.unwrap();
        assert!(text.contains("\"intact\":true"), "{text}");
    }
    let n = ferry_comms::db::verify_audit(&c.comms.state.db).await.unwrap().expect("one chain");
    let entries = ferry_comms::db::recent_audit(&c.comms.state.db, 10_000).await.unwrap();
    assert_eq!(entries.len() as u64, n);
    assert!(entries.iter().filter(|e| e.3 == "token_issued").count() >= 10, "{entries:?}");
    b.stop().await;
    c.stop().await;
}

// ---- three `ferry comms serve` processes behind Debian's haproxy (issue 12, item 5) ---------------------------

/// haproxy's path, or None (test skipped; a failure under `FERRY_CI=1`, where `.ci/run` installs it).
pub(crate) fn haproxy_bin() -> Option<std::path::PathBuf> {
    let found =
        ["/usr/sbin/haproxy", "/usr/bin/haproxy"].into_iter().map(std::path::PathBuf::from).find(|p| p.exists());
    if found.is_none() {
        assert!(!std::env::var("FERRY_CI").is_ok_and(|v| v == "1"), "FERRY_CI=1 but haproxy is not installed");
        eprintln!("haproxy not installed: skipped (apt-get install haproxy)");
    }
    found
}

/// The replicas (by index) whose log has a line holding every one of `words`.
fn logged_by(nodes: &[crate::procs::Node], words: &[&str]) -> Vec<usize> {
    (0..nodes.len()).filter(|&i| nodes[i].log_text().lines().any(|l| words.iter().all(|w| l.contains(w)))).collect()
}

/// Debian's haproxy in TCP mode on one port in front of three `ferry comms serve` processes (HTTPS and SSH on the
/// shared port of each; metadata on PostgreSQL, one data folder), one App server, three tenants: every connector
/// registers, syncs and receives through haproxy; a batch's upload and its `complete` call land on different
/// replicas; a replica killed with `kill -9` while a connector uploads to it: the connector goes on through
/// another and the batch is imported once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_behind_haproxy_sync_end_to_end_and_survive_a_kill() {
    use crate::procs::{Node, edit_toml, ferry, section};
    let Some(haproxy) = haproxy_bin() else { return };
    let Some(database) = scratch_database().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let (app_dir, comms_dir, logs) = (dir.path().join("app"), dir.path().join("comms"), dir.path().join("logs"));
    for d in [&app_dir, &comms_dir, &logs] {
        std::fs::create_dir_all(d).unwrap();
    }
    let (app_cfg, comms_cfg) = (app_dir.join("app.toml"), comms_dir.join("comms.toml"));
    let (app_c, comms_c) = (app_cfg.display().to_string(), comms_cfg.display().to_string());
    // the load balancer's port: taken now, given to haproxy below
    let lb = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();

    ferry(&["comms", "init", "--config", &comms_c]);
    edit_toml(&comms_cfg, |t| {
        t.insert("data_dir".into(), comms_dir.join("data").display().to_string().into());
        t.insert("listen_https".into(), "127.0.0.1:0".into());
        t.insert("listen_ssh".into(), "127.0.0.1:0".into());
        t.insert("public_url".into(), format!("https://{lb}").into());
        t.insert("public_ssh_addr".into(), lb.to_string().into());
        t.insert("listen_admin".into(), "127.0.0.1:0".into());
        let d = section(t, "database");
        d.insert("url".into(), database.url.clone().into());
        if let Some(env) = &database.password_env {
            d.insert("password_env".into(), env.clone().into());
        }
    });
    let comms_info: toml::Table = toml::from_str(&ferry(&["comms", "info", "--config", &comms_c])).unwrap();
    let comms_value = |k: &str| comms_info["comms"][k].as_str().unwrap().to_string();
    ferry(&["app", "init", "--config", &app_c]);
    edit_toml(&app_cfg, |t| {
        t.insert("data_dir".into(), app_dir.join("data").display().to_string().into());
        t.insert("listen_https".into(), "127.0.0.1:0".into());
        t.insert("listen_ssh".into(), "127.0.0.1:0".into());
        t.insert("listen_web".into(), "off".into());
        t.insert("listen_admin".into(), "127.0.0.1:0".into());
        t.insert("plan_after_import".into(), false.into());
        t.insert("comms_keys".into(), toml::Value::Array(vec![comms_value("service_key").into()]));
        // the App announces downstream files through the load balancer too
        let c = section(t, "comms");
        c.insert("api_url".into(), format!("https://{lb}").into());
        c.insert("tls_fingerprint".into(), comms_value("tls_fingerprint").into());
    });
    let started = Duration::from_secs(60);
    let mut app = Node::new("app", &["app", "serve", "--config", &app_c], &logs);
    app.start();
    let app_https = app.logged_addr("app server listening", "https_addr", started);
    let app_ssh = app.logged_addr("app server listening", "ssh_addr", started);
    let app_info: toml::Table = toml::from_str(&ferry(&["app", "info", "--config", &app_c])).unwrap();
    edit_toml(&comms_cfg, |t| {
        let mut a = app_info["app"].as_table().unwrap().clone();
        a.insert("api_url".into(), format!("https://{app_https}").into());
        a.insert("ssh_addr".into(), app_ssh.to_string().into());
        t.insert("app".into(), toml::Value::Table(a));
    });

    // three replicas of one config (port 0 each); the first creates the schema
    let mut replicas: Vec<Node> = Vec::new();
    let mut addrs = Vec::new();
    for i in 0..3 {
        let mut n = Node::new(&format!("comms-{i}"), &["comms", "serve", "--config", &comms_c], &logs);
        n.start();
        addrs.push(n.logged_addr("comms server listening", "https_addr", started));
        replicas.push(n);
    }
    let servers: Vec<String> = addrs.iter().map(|a| format!("{a} check inter 300ms fall 2 rise 1")).collect();
    let _haproxy =
        ferry::bench::cluster::harness::start_haproxy(&haproxy, lb, "roundrobin", &servers, dir.path(), &logs)
            .expect("start haproxy");

    // three tenants, each connector registered through haproxy
    let tenants = ["t0", "t1", "t2"];
    let mut conns = Vec::new();
    for t in tenants {
        let added = ferry(&["comms", "tenant", "add", t, "--config", &comms_c]);
        let token = added.lines().find(|l| l.starts_with("ferry1.")).expect("a token").trim().to_string();
        let cdir = dir.path().join(format!("conn-{t}"));
        std::fs::create_dir_all(&cdir).unwrap();
        let erp = cdir.join("erp.db");
        ferry(&["sample-erp", &erp.display().to_string()]);
        crate::procs::run_sql(
            &erp,
            "DELETE FROM sales_lines WHERE line_id % 20 != 0;
             CREATE TABLE recommended_orders (order_number TEXT NOT NULL, line INTEGER NOT NULL, qty REAL NOT NULL);",
        );
        ferry(&["connector", "init", "--dir", &cdir.display().to_string(), "--erp", "erp.db", "--sample"]);
        let ccfg = cdir.join("connector.toml");
        edit_toml(&ccfg, |t| {
            section(t, "schedule").insert("daily_at".into(), "".into());
            section(t, "extract").insert("level".into(), 1.into());
            let d = section(t, "delivery");
            d.insert("inbound_dir".into(), "from_cloud".into());
            d.insert("only".into(), toml::Value::Array(vec!["po_".into()]));
        });
        let c = ccfg.display().to_string();
        ferry(&["connector", "register", "--config", &c, "--token", &token]);
        let reg: serde_json::Value =
            serde_json::from_slice(&std::fs::read(cdir.join("data/registration.json")).unwrap()).unwrap();
        assert_eq!(reg["ssh_addr"].as_str(), Some(lb.to_string().as_str()), "SFTP through haproxy: {reg}");
        conns.push((t, cdir, c));
    }

    // upstream: the three sync at once, through haproxy
    let mut syncs = Vec::new();
    for (_, _, c) in &conns {
        let c = c.clone();
        syncs.push(tokio::task::spawn_blocking(move || ferry(&["connector", "sync", "--config", &c])));
    }
    for s in syncs {
        s.await.unwrap();
    }
    let db = ferry_comms::db::open_postgres(&database).await.unwrap();
    for t in tenants {
        let b = ferry_comms::db::list_batches(&db, t, 10).await.unwrap();
        assert!(b.len() == 1 && b[0].state == ferry_proto::api::BatchState::Imported, "{t}: {b:?}");
    }
    // each connection went to a replica of haproxy's choosing: some batch was uploaded through one replica and
    // completed through another
    let split = tenants.iter().any(|t| {
        let tenant = format!("tenant={t}");
        let uploads = logged_by(&replicas, &["sftp login", &tenant]);
        let completes = logged_by(&replicas, &["batch completed", &tenant]);
        completes.iter().any(|c| uploads.iter().any(|u| u != c))
    });
    assert!(split, "no batch was uploaded and completed on different replicas");

    // downstream: a file per tenant, announced by the App through haproxy, received through haproxy
    for (t, _, c) in &conns {
        let src = dir.path().join(format!("po-{t}.csv"));
        std::fs::write(&src, format!("order_number,line,item,location,supplier,qty,unit_cost,order_date,due_date,comment\nR-{t},1,A1,L1,S1,5,1.0,2026/11/28,2026/12/05,\n")).unwrap();
        ferry(&["app", "publish", t, &src.display().to_string(), "--name", "po_000001.csv", "--config", &app_c]);
        let (c, cdir) = (c.clone(), conns.iter().find(|x| x.0 == *t).unwrap().1.clone());
        let got = tokio::task::spawn_blocking(move || {
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(60) {
                ferry(&["connector", "receive", "--wait", "10", "--config", &c]);
                if cdir.join("from_cloud/po_000001.csv").exists() {
                    return true;
                }
            }
            false
        });
        assert!(got.await.unwrap(), "{t}: the downstream file never arrived");
    }

    // kill -9 of the replica a connector is uploading to: it resumes through another, imported once
    let (t, _, c) = conns[1].clone();
    let tenant = format!("tenant={t}");
    let seen: Vec<usize> = replicas
        .iter()
        .map(|n| n.log_text().lines().filter(|l| l.contains("sftp login") && l.contains(&tenant)).count())
        .collect();
    let mut sync = Node::new("sync-kill", &["connector", "sync", "--full", "--config", &c], &logs);
    sync.start();
    let victim = {
        let t0 = Instant::now();
        loop {
            let now: Vec<usize> = replicas
                .iter()
                .map(|n| n.log_text().lines().filter(|l| l.contains("sftp login") && l.contains(&tenant)).count())
                .collect();
            if let Some(i) = (0..3).find(|&i| now[i] > seen[i]) {
                break i;
            }
            assert!(t0.elapsed() < Duration::from_secs(120), "the connector never logged in over SFTP");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    replicas[victim].kill9();
    let (status, sync) =
        tokio::task::spawn_blocking(move || (sync.wait_exit(Duration::from_secs(240)), sync)).await.unwrap();
    let log = sync.log_text();
    assert!(status.is_some_and(|s| s.success()), "the sync did not survive the kill of replica {victim}: {log}");
    // the kill cut the upload (made while extracting, or after): the connector went on through another replica
    assert!(
        log.contains("uploading during the extract stopped") || log.contains("upload failed (attempt 1"),
        "the kill did not interrupt the upload: {log}"
    );
    let b = ferry_comms::db::list_batches(&db, t, 10).await.unwrap();
    assert_eq!(b.len(), 2, "{b:?}");
    assert!(b.iter().all(|b| b.state == ferry_proto::api::BatchState::Imported), "{b:?}");
    let inst = app_dir.join("data/instances").join(format!("{t}.db"));
    let imported = crate::procs::query(&inst, "SELECT batch_id, state FROM batch_log ORDER BY batch_id");
    assert_eq!(imported.len(), 2, "each batch imported once: {imported:?}");
    // the second batch was completed through a surviving replica
    let completes = logged_by(&replicas, &["batch completed", &tenant]);
    assert!(completes.iter().any(|&i| i != victim), "{completes:?}");

    for r in &mut replicas {
        r.kill9();
    }
    app.kill9();
    db.close().await;
}
