//! Fault injection: the real `ferry` binary as three kinds of OS processes — `app serve`, `comms serve` and the
//! Connector (`connector run` for files from the cloud, `connector sync` per upstream cycle) — with TCP proxies
//! between Connector -> Comms and Comms -> App. Through many cycles of upstream (the ERP changes, a sync runs,
//! the App imports) and downstream (the App publishes a file, the Connector applies it to an ERP table and its
//! inbound folder) it `kill -9`s a random process at a random moment and restarts it, and cuts or stalls the
//! proxied connections; meanwhile it watches the inbound folder and the instance for anything partial. Then it
//! checks the invariants: every batch imported exactly once, every file applied exactly once, nothing partial
//! ever visible, every process recovered (the last cycle runs without faults).
//!
//! `FERRY_FAULT_CYCLES` (default 20) sets the number of cycles and `FERRY_FAULT_SEED` replays a run (the seed
//! is printed at the start). See "Reliability tests" in the README.
//!
//! **Cluster mode** (`FERRY_FAULT_CLUSTER=1`, and always in [`cluster_replicas_killed_anywhere_lose_nothing`]):
//! Comms is three `ferry comms serve` replicas on one PostgreSQL database (`FERRY_TEST_POSTGRES_URL`) behind
//! Debian's haproxy in TCP mode (the Connector -> Comms proxy and the App's announcements go to haproxy), and the
//! random kills hit one replica or another (three times as often as a single Comms server is hit). The same
//! invariants are checked, the Comms side's on PostgreSQL. With `FERRY_TEST_COMMS_STORAGE=s3` the replicas keep
//! their files in the test S3 server (scripts/test-s3.sh), as the cluster tests do.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::net::SocketAddr;

use crate::common::eventually;
use crate::procs::*;
use ferry::bench::cluster::harness;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The processes the harness may kill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    App,
    /// A Comms server (replica `n` in cluster mode; 0 otherwise).
    Comms(usize),
    /// `connector run` (downstream).
    Run,
    /// The `connector sync` of the current cycle.
    Sync,
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    Kill(Target),
    /// Cut every open connection through proxy `n` (0: Connector->Comms, 1: Comms->App HTTPS, 2: Comms->App SSH).
    Cut(usize),
    /// Stop all bytes through proxy `n` for this long.
    Stall(usize, Duration),
}

struct Nodes {
    app: Node,
    /// One Comms server, or the replicas in cluster mode.
    comms: Vec<Node>,
    run: Node,
    /// The sync of the moment: reaped only under this lock, so a kill never reaches a recycled pid.
    sync: Option<Node>,
}

impl Nodes {
    fn get(&mut self, t: Target) -> Option<&mut Node> {
        match t {
            Target::App => Some(&mut self.app),
            Target::Comms(i) => self.comms.get_mut(i),
            Target::Run => Some(&mut self.run),
            Target::Sync => None,
        }
    }
}

/// What the watcher saw that must never be seen.
type Violations = Arc<Mutex<Vec<String>>>;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// The downstream file of cycle `c`: a few order lines with numbers unique to the cycle.
fn po_file(c: u64) -> (String, String) {
    let mut text = String::from("order_number,line,item,location,supplier,qty,due_date\n");
    for line in 1..=(1 + c % 3) {
        text.push_str(&format!("F{c:05},{line},A{line},L1,S1,{}.5,2026/12/01\n", c * 10 + line));
    }
    (format!("po_f{c:05}.csv"), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_and_cut_anywhere_lose_nothing_import_nothing_twice() {
    let cluster = std::env::var("FERRY_FAULT_CLUSTER").is_ok_and(|v| v == "1");
    run(cluster, env_u64("FERRY_FAULT_CYCLES").unwrap_or(20)).await;
}

/// Cluster mode at CI size: a few cycles with the kills hitting Comms replicas behind haproxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_replicas_killed_anywhere_lose_nothing() {
    run(true, env_u64("FERRY_FAULT_CLUSTER_CYCLES").unwrap_or(6)).await;
}

/// Where the Comms metadata lives: the SQLite file of the one server, or the cluster's PostgreSQL database.
enum CommsDb {
    Sqlite(PathBuf),
    Postgres(ferry_comms::config::DatabaseConfig),
}

impl CommsDb {
    /// Rows of a query, every column as text.
    fn rows(&self, sql: &str) -> Vec<Vec<String>> {
        let cfg = match self {
            CommsDb::Sqlite(p) => return query(p, sql),
            CommsDb::Postgres(cfg) => cfg.clone(),
        };
        let sql = sql.to_owned();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
            rt.block_on(async move {
                use sqlx::{Connection, Row};
                use std::str::FromStr;
                let mut opts = sqlx::postgres::PgConnectOptions::from_str(&cfg.url).expect("the database URL");
                if let Some(env) = &cfg.password_env {
                    opts = opts.password(&std::env::var(env).expect("the database password"));
                }
                let mut c = sqlx::PgConnection::connect_with(&opts).await.expect("connect to PostgreSQL");
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_all(&mut c).await.expect("query");
                rows.iter()
                    .map(|r| {
                        (0..r.len())
                            .map(|i| {
                                r.try_get::<String, _>(i)
                                    .or_else(|_| r.try_get::<i64, _>(i).map(|v| v.to_string()))
                                    .unwrap_or_default()
                            })
                            .collect()
                    })
                    .collect()
            })
        })
        .join()
        .expect("query thread")
    }
}

/// Comms replicas 1.. (the first is setup's own server) on the config of `comms_cfg`, each on a port of its own
/// (its own copy of the config, so that a restart listens there again), and haproxy in TCP mode in front of all;
/// returns the replicas, haproxy's address and its process.
fn start_replicas(
    comms_cfg: &Path,
    first: SocketAddr,
    logs: &Path,
    haproxy: &Path,
) -> (Vec<Node>, SocketAddr, harness::Proc) {
    let mut nodes = Vec::new();
    let mut addrs = vec![first];
    for i in 1..3 {
        let cfg = comms_cfg.with_file_name(format!("comms-{i}.toml"));
        std::fs::copy(comms_cfg, &cfg).expect("copy comms.toml");
        edit_toml(&cfg, |t| {
            t.insert("listen_https".into(), "127.0.0.1:0".into());
            t.insert("listen_ssh".into(), "127.0.0.1:0".into());
        });
        let c = cfg.display().to_string();
        let mut n = Node::new(&format!("comms-{i}"), &["comms", "serve", "--config", &c], logs);
        n.start();
        let addr = n.logged_addr("comms server listening", "https_addr", Duration::from_secs(60));
        edit_toml(&cfg, |t| {
            t.insert("listen_https".into(), addr.to_string().into());
            t.insert("listen_ssh".into(), addr.to_string().into());
        });
        nodes.push(n);
        addrs.push(addr);
    }
    let lb = std::net::TcpListener::bind("127.0.0.1:0").expect("a port").local_addr().expect("addr");
    let servers: Vec<String> = addrs.iter().map(|a| format!("{a} check inter 300ms fall 2 rise 1")).collect();
    let p = harness::start_haproxy(haproxy, lb, "roundrobin", &servers, logs, logs).expect("start haproxy");
    (nodes, lb, p)
}

async fn run(cluster: bool, cycles: u64) {
    // cluster mode needs haproxy and a test PostgreSQL (skipped without; a failure under FERRY_CI=1)
    let pg = if cluster {
        let Some(haproxy) = crate::replicas::haproxy_bin() else { return };
        let Some(db) = crate::comms_postgres::scratch_database().await else { return };
        Some((haproxy, db))
    } else {
        None
    };
    let seed = env_u64("FERRY_FAULT_SEED").unwrap_or_else(|| rand::thread_rng().r#gen());
    let cycles = cycles.max(2);
    println!("fault injection: FERRY_FAULT_SEED={seed} FERRY_FAULT_CYCLES={cycles} cluster mode: {cluster}");
    let mut rng = StdRng::seed_from_u64(seed);
    // Kept when the test fails (the logs of every process are in `<dir>/logs`); removed when it passes.
    let dir = tempfile::Builder::new().prefix("ferry-faults-").tempdir().expect("tempdir").keep();
    println!("fault injection: working in {}", dir.display());

    // Connector -> Comms, Comms -> App (HTTPS), Comms -> App (SSH); routed once the servers are up.
    let proxies = Arc::new([Proxy::unrouted().await, Proxy::unrouted().await, Proxy::unrouted().await]);
    let (d, p) = (dir.clone(), proxies.clone());
    let database = pg.as_ref().map(|(_, db)| db.clone());
    // in cluster mode the replicas' files go where the cluster tests put them (`FERRY_TEST_COMMS_STORAGE=s3`: the
    // test S3 server; the shared folder otherwise)
    let storage: Option<toml::Table> = match cluster {
        true => Some(toml::from_str(&harness::storage_toml().expect("the test storage")).expect("[storage] TOML")),
        false => None,
    };
    let (sys, app, comms) = tokio::task::spawn_blocking(move || {
        let connector = |t: &mut toml::Table| {
            // short limits, so that a stalled connection is given up and retried within a cycle
            let n = section(t, "network");
            n.insert("connect_timeout_secs".into(), 5.into());
            n.insert("timeout_secs".into(), 5.into());
        };
        setup_with(&d, &p, connector, |t| {
            if let Some(storage) = storage {
                t.extend(storage);
            }
            if let Some(db) = database {
                let d = section(t, "database");
                d.insert("url".into(), db.url.into());
                if let Some(env) = db.password_env {
                    d.insert("password_env".into(), env.into());
                }
            }
        })
    })
    .await
    .expect("setup");
    let sys = Arc::new(sys);
    let logs = dir.join("logs");
    let mut comms = vec![comms];
    let mut app = app;
    let mut _haproxy = None;
    let comms_db = match &pg {
        None => CommsDb::Sqlite(sys.comms_db()),
        Some((haproxy, db)) => {
            let (cfg, first, l, h) = (sys.comms_cfg.clone(), sys.addrs.comms, logs.clone(), haproxy.clone());
            let (more, lb, hp) =
                tokio::task::spawn_blocking(move || start_replicas(&cfg, first, &l, &h)).await.expect("replicas");
            comms.extend(more);
            _haproxy = Some(hp);
            // the Connector reaches the replicas through haproxy; the App announces its files there too
            proxies[0].route(lb);
            edit_toml(&sys.app_cfg, |t| {
                section(t, "comms").insert("api_url".into(), format!("https://{lb}").into());
            });
            app.kill9();
            app.start();
            CommsDb::Postgres(db.clone())
        }
    };
    let n_comms = comms.len();
    let run_args = sys.conn_args("run");
    let mut run = Node::new("connector-run", &run_args.iter().map(String::as_str).collect::<Vec<_>>(), &logs);
    run.start();
    let nodes = Arc::new(Mutex::new(Nodes { app, comms, run, sync: None }));

    // Watch the inbound folder and the instance for anything partial, all through the run.
    let expected: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    let violations: Violations = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (sys, expected, violations, stop) = (sys.clone(), expected.clone(), violations.clone(), stop.clone());
        std::thread::spawn(move || watch(&sys, &expected, &violations, &stop))
    };

    let started = Instant::now();
    let mut faults_done = Vec::new();
    let mut last_imported = String::new();
    for c in 1..=cycles {
        let faulty = c < cycles;
        // The ERP changes: a new sale today.
        run_sql(
            &sys.erp,
            &format!(
                "INSERT INTO sales_lines(invoice_no, line_no, sku, wh_code, cust_no, order_date, invoice_date, qty,
                     unit_cost, unit_price, net_amount)
                 SELECT 'FAULT-{c}', 1, sku, wh_code, NULL, date('now'), date('now'), {c}, 1, 2, 2 * {c}
                 FROM item_warehouse LIMIT 1"
            ),
        );
        // The App publishes a file for the ERP.
        let (name, text) = po_file(c);
        expected.lock().expect("lock").insert(name.clone(), text.clone());
        let s2 = sys.clone();
        tokio::task::spawn_blocking(move || s2.publish(&name, &text)).await.expect("publish");

        // Faults at random moments while the sync runs.
        let plan: Vec<(Duration, Fault)> = if faulty {
            (0..rng.gen_range(0..=3))
                .map(|_| {
                    let at = Duration::from_millis(rng.gen_range(0..4000));
                    // cluster mode: three more chances of a replica kill (plain runs keep their seeds' plans)
                    let fault = match rng.gen_range(0..if cluster { 13 } else { 10 }) {
                        0 => Fault::Kill(Target::App),
                        1 | 10..=12 => Fault::Kill(Target::Comms(rng.gen_range(0..n_comms))),
                        2 | 3 => Fault::Kill(Target::Run),
                        4 | 5 => Fault::Kill(Target::Sync),
                        6 | 7 => Fault::Cut(rng.gen_range(0..3)),
                        _ => Fault::Stall(rng.gen_range(0..3), Duration::from_millis(rng.gen_range(200..6000))),
                    };
                    (at, fault)
                })
                .collect()
        } else {
            Vec::new()
        };
        let restart_delay = Duration::from_millis(rng.gen_range(0..800));
        faults_done.extend(plan.iter().map(|(at, f)| format!("cycle {c} +{at:?}: {f:?}")));
        let chaos = {
            let (nodes, proxies) = (nodes.clone(), proxies.clone());
            tokio::spawn(async move {
                let t0 = tokio::time::Instant::now();
                let mut plan = plan;
                plan.sort_by_key(|(at, _)| *at);
                for (at, fault) in plan {
                    tokio::time::sleep_until(t0 + at).await;
                    inject(&nodes, &proxies, fault, restart_delay).await;
                }
            })
        };

        // Upstream: sync until this cycle's batch is imported (a killed or failed sync is simply run again,
        // as cron or an operator would).
        let mut attempt = 0;
        loop {
            attempt += 1;
            assert!(attempt <= 12, "cycle {c}: no sync succeeded after {} attempts (seed {seed})", attempt - 1);
            let args = sys.conn_args("sync");
            let mut sync =
                Node::new(&format!("sync-{c}-{attempt}"), &args.iter().map(String::as_str).collect::<Vec<_>>(), &logs);
            sync.start();
            nodes.lock().expect("lock").sync = Some(sync);
            let waited = Instant::now();
            let status = loop {
                if let Some(s) = nodes.lock().expect("lock").sync.as_mut().and_then(Node::exited) {
                    break Some(s);
                }
                if waited.elapsed() > Duration::from_secs(240) {
                    break None;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            let sync = nodes.lock().expect("lock").sync.take().expect("the sync node");
            let Some(status) = status else {
                panic!("cycle {c}: a sync hung for 4 minutes (seed {seed}); log {}", sync.log_path().display())
            };
            let out = sync.log_text();
            if let Some(id) = imported_batch(&out) {
                last_imported = id;
                break;
            }
            assert!(!out.contains("rejected"), "cycle {c}: a batch was rejected (seed {seed}):\n{out}");
            let _ = status;
            // a pause between attempts, as cron or an operator would leave (not a wait for anything)
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        chaos.await.expect("chaos task");
        ensure_running(&nodes);
        for p in proxies.iter() {
            p.stall(false);
        }
        println!(
            "cycle {c}/{cycles}: imported after {attempt} sync(s), {:.0} s so far",
            started.elapsed().as_secs_f64()
        );
    }
    println!("faults injected ({}):\n  {}", faults_done.len(), faults_done.join("\n  "));

    // The last cycle ran without faults: everything published must now arrive.
    let names: Vec<String> = expected.lock().expect("lock").keys().cloned().collect();
    let all_acked = async || names.iter().all(|n| acked(&sys, n));
    if eventually(Duration::from_secs(180), all_acked).await.is_none() {
        let missing: Vec<&String> = names.iter().filter(|n| !acked(&sys, n)).collect();
        let log = nodes.lock().expect("lock").run.log_path().display().to_string();
        panic!("files never applied (seed {seed}): {missing:?}\nconnector log: {log}");
    }
    // Comms and the App hear about every delivery.
    let states =
        || (comms_db.rows("SELECT state FROM downloads"), query(&sys.instance_db(), "SELECT state FROM outbox"));
    let all = |rows: &Vec<Vec<String>>| rows.len() == names.len() && rows.iter().all(|r| r[0] == "delivered");
    let confirmed = async || {
        let (comms, app) = states();
        all(&comms) && all(&app)
    };
    if eventually(Duration::from_secs(120), confirmed).await.is_none() {
        let (comms_states, receipts) = states();
        panic!("deliveries not confirmed (seed {seed}): comms {comms_states:?}, app {receipts:?}");
    }

    // Every process is still up (none died by itself); the Connector stops cleanly on SIGTERM.
    {
        let mut guard = nodes.lock().expect("lock");
        let n = &mut *guard;
        for node in [&mut n.app, &mut n.run].into_iter().chain(n.comms.iter_mut()) {
            assert!(node.is_running(), "{} died by itself (seed {seed}); log {}", node.name, node.log_path().display());
        }
        n.run.term();
        let status = n.run.wait_exit(Duration::from_secs(60)).expect("connector run stops after SIGTERM");
        assert!(status.success(), "connector run exited with {status} after SIGTERM");
    }
    stop.store(true, Ordering::SeqCst);
    watcher.join().expect("watcher");

    check_upstream(&sys, &comms_db, &last_imported, seed);
    check_downstream(&sys, &expected.lock().expect("lock"), seed);
    let seen = violations.lock().expect("lock");
    assert!(seen.is_empty(), "seen during the run (seed {seed}):\n{}", seen.join("\n"));
    let logs_text: String = std::fs::read_dir(&logs)
        .expect("logs")
        .flatten()
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect();
    assert!(!logs_text.contains("panicked"), "a process panicked (seed {seed}); see {}", logs.display());
    // a kill between the ERP's commit and the journal entry: the ledger recognised the file on the next attempt
    let ledger_saves = logs_text.matches("already in the ERP's ledger").count();
    println!(
        "fault injection passed: {cycles} cycles, {} faults, {:.0} s; files the ERP's ledger kept from being \
         written back twice after a crash between the ERP commit and the journal entry: {ledger_saves}",
        faults_done.len(),
        started.elapsed().as_secs_f64()
    );
    drop(nodes);
    let _ = std::fs::remove_dir_all(&dir);
}

async fn inject(nodes: &Mutex<Nodes>, proxies: &[Proxy; 3], fault: Fault, restart_delay: Duration) {
    match fault {
        Fault::Kill(Target::Sync) => {
            if let Some(n) = nodes.lock().expect("lock").sync.as_mut() {
                n.kill_unreaped();
            }
        }
        Fault::Kill(t) => {
            if let Some(n) = nodes.lock().expect("lock").get(t) {
                n.kill9();
            }
            // the process stays down this long (part of the fault)
            tokio::time::sleep(restart_delay).await;
            if let Some(n) = nodes.lock().expect("lock").get(t)
                && !n.is_running()
            {
                n.start();
            }
        }
        Fault::Cut(i) => proxies[i].cut(),
        Fault::Stall(i, d) => {
            proxies[i].stall(true);
            // the stall lasts this long (part of the fault)
            tokio::time::sleep(d).await;
            proxies[i].stall(false);
        }
    }
}

fn ensure_running(nodes: &Mutex<Nodes>) {
    let mut guard = nodes.lock().expect("lock");
    let n = &mut *guard;
    for node in [&mut n.app, &mut n.run].into_iter().chain(n.comms.iter_mut()) {
        if !node.is_running() {
            let _ = node.exited();
            node.start();
        }
    }
}

/// The batch id of `batch <id>: imported (...)` in a sync's output.
fn imported_batch(out: &str) -> Option<String> {
    out.lines().rev().find_map(|l| {
        let rest = l.strip_prefix("batch ")?;
        let (id, state) = rest.split_once(": ")?;
        state.starts_with("imported (").then(|| id.to_string())
    })
}

/// Whether the Connector's journal has the file `name` applied and acknowledged.
fn acked(sys: &System, name: &str) -> bool {
    let rows = query(&sys.journal_db(), &format!("SELECT state FROM received WHERE name = '{name}'"));
    rows.len() == 1 && rows[0][0] == "acked"
}

/// Polls the inbound folder and the instance until `stop`: a visible file must be one that was published,
/// complete; the instance's tables must always hold exactly the rows of the last batch it logged as imported.
fn watch(sys: &System, expected: &Mutex<BTreeMap<String, String>>, violations: &Violations, stop: &AtomicBool) {
    let inbound = sys.inbound();
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        if let Ok(entries) = std::fs::read_dir(&inbound) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') {
                    continue; // a temporary name, hidden from the ERP's jobs
                }
                let want = expected.lock().expect("lock").get(&name).cloned();
                let got = std::fs::read_to_string(e.path()).unwrap_or_default();
                match want {
                    None => {
                        violations.lock().expect("lock").push(format!("unexpected file in the inbound folder: {name}"))
                    }
                    Some(w) if w != got => violations.lock().expect("lock").push(format!(
                        "{name} visible with {} of {} bytes or other content",
                        got.len(),
                        w.len()
                    )),
                    Some(_) => {}
                }
            }
        }
        n += 1;
        if n.is_multiple_of(8)
            && let Err(why) = instance_consistent(&sys.instance_db())
        {
            violations.lock().expect("lock").push(why);
        }
        // the watcher's sampling interval
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// In one read transaction: the rows of every standard table equal the rows of the last imported batch.
fn instance_consistent(db: &Path) -> Result<(), String> {
    let url = format!("sqlite:{}?mode=ro", db.display());
    std::thread::scope(|s| {
        s.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
            rt.block_on(async {
                use sqlx::Connection;
                let Ok(mut c) = sqlx::SqliteConnection::connect(&url).await else { return Ok(()) };
                let Ok(mut tx) = c.begin().await else { return Ok(()) };
                let last: Option<(String, String)> = sqlx::query_as(
                    "SELECT batch_id, files_json FROM batch_log WHERE state = 'imported' ORDER BY rowid DESC LIMIT 1",
                )
                .fetch_optional(&mut *tx)
                .await
                .unwrap_or(None);
                let Some((batch, files)) = last else { return Ok(()) };
                let files: Vec<ferry_proto::api::FileRows> = serde_json::from_str(&files).unwrap_or_default();
                for f in files {
                    let Some(spec) = ferry_proto::spec::STANDARD_FILES.iter().find(|s| s.name == f.name) else {
                        continue;
                    };
                    let n: i64 =
                        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM \"{}\"", spec.table)))
                            .fetch_one(&mut *tx)
                            .await
                            .map_err(|e| format!("count {}: {e}", spec.table))?;
                    if n as u64 != f.rows {
                        return Err(format!(
                            "the instance shows {n} rows in {} while its last imported batch {batch} has {}",
                            spec.table, f.rows
                        ));
                    }
                }
                Ok(())
            })
        })
        .join()
        .expect("instance check")
    })
}

/// Every batch the Connector completed was imported once, none was rejected, the App holds nothing the
/// Connector did not send, and the instance holds the last batch.
fn check_upstream(sys: &System, comms_db: &CommsDb, last_imported: &str, seed: u64) {
    let journal: BTreeMap<String, String> = query(&sys.journal_db(), "SELECT batch_id, state FROM batches")
        .into_iter()
        .map(|r| (r[0].clone(), r[1].clone()))
        .collect();
    let app: BTreeMap<String, String> = query(&sys.instance_db(), "SELECT batch_id, state FROM batch_log")
        .into_iter()
        .map(|r| (r[0].clone(), r[1].clone()))
        .collect();
    let comms: BTreeMap<String, String> = comms_db
        .rows("SELECT batch_id, state FROM batches")
        .into_iter()
        .map(|r| (r[0].clone(), r[1].clone()))
        .collect();
    for (id, state) in &app {
        assert_eq!(state, "imported", "batch {id} is {state} at the App (seed {seed})");
        assert!(journal.contains_key(id), "the App imported {id}, which the Connector never journaled (seed {seed})");
        assert_eq!(comms.get(id).map(String::as_str), Some("imported"), "batch {id} at Comms (seed {seed})");
    }
    for (id, state) in &journal {
        if state != "extracted" {
            assert!(
                app.contains_key(id),
                "batch {id} is {state} in the journal but the App never imported it (seed {seed})"
            );
        }
    }
    for (id, state) in &comms {
        assert_eq!(state, "imported", "batch {id} is {state} at Comms (seed {seed})");
    }
    let latest = query(&sys.instance_db(), "SELECT batch_id FROM batch_log ORDER BY rowid DESC LIMIT 1");
    assert_eq!(latest[0][0], last_imported, "the instance does not hold the last batch (seed {seed})");
    instance_consistent(&sys.instance_db()).unwrap_or_else(|e| panic!("{e} (seed {seed})"));
    println!("upstream: {} batches imported once each, {} journaled", app.len(), journal.len());
}

/// Every published file is in the inbound folder, complete, once; its order lines are in the ERP table once;
/// the write-back ran once for it (`applied_log` has no key: a second run would show) and the ERP's ledger holds
/// it once; the journal has it acked once; no temporary file is left.
fn check_downstream(sys: &System, expected: &BTreeMap<String, String>, seed: u64) {
    let inbound = sys.inbound();
    let mut present: Vec<PathBuf> = std::fs::read_dir(&inbound).expect("inbound").flatten().map(|e| e.path()).collect();
    present.sort();
    let names: Vec<String> =
        present.iter().map(|p| p.file_name().expect("name").to_string_lossy().into_owned()).collect();
    assert_eq!(names, expected.keys().cloned().collect::<Vec<_>>(), "inbound folder (seed {seed})");
    for (name, text) in expected {
        assert_eq!(&std::fs::read_to_string(inbound.join(name)).expect("read"), text, "{name} (seed {seed})");
        let order = name.trim_start_matches("po_f").trim_end_matches(".csv");
        let lines = text.lines().count() as i64 - 1;
        let rows = query(&sys.erp, &format!("SELECT COUNT(*) FROM recommended_orders WHERE order_number = 'F{order}'"));
        assert_eq!(rows[0][0], lines.to_string(), "order lines of {name} in the ERP (seed {seed})");
        let applied = query(&sys.erp, &format!("SELECT COUNT(*) FROM applied_log WHERE order_number = 'F{order}'"));
        let times: i64 = applied[0][0].parse().expect("count");
        assert_eq!(times, lines, "{name}: the write-back ran more than once (seed {seed})");
        let journal = query(&sys.journal_db(), &format!("SELECT state FROM received WHERE name = '{name}'"));
        assert_eq!(journal, vec![vec!["acked".to_string()]], "journal entry of {name} (seed {seed})");
    }
    let ledger = query(&sys.erp, "SELECT COUNT(*), COUNT(DISTINCT file_id) FROM ferry_applied");
    let n = expected.len().to_string();
    assert_eq!(ledger, vec![vec![n.clone(), n]], "the ERP's ledger holds every file once (seed {seed})");
    println!("downstream: {} files applied, each once in the inbound folder and the ERP table", expected.len());
}
