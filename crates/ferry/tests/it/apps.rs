//! Several App servers behind one Comms server (issue 12, item 4), on real servers on 127.0.0.1: tenants placed
//! by least load (or `--app`), upstream and downstream routed to each tenant's own App server and nowhere else,
//! an App server's announcements refused for tenants not placed on it, and an App server that is down delaying
//! only its own tenants. Run on PostgreSQL too with `FERRY_TEST_COMMS_DB` (see docs/scale-out.md).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use ferry::cluster::Cluster;
use ferry_app::server::AppHandle;
use ferry_connector::agent::Connector;
use ferry_connector::receive::Outcome;
use ferry_proto::api::{BatchState, FileReady, FilesAnnounced, FilesReady};
use ferry_proto::batch::BatchId;

const DEFAULT: &str = ferry_comms::appclient::DEFAULT_APP;
const EAST: &str = "east";

/// Add tenants t1..t4 by least load: `default` and `east` alternate (ties by name: `default` first).
async fn place_four(c: &Cluster) -> Vec<(String, String, String)> {
    let admin = c.admin().await.unwrap();
    let mut out = Vec::new();
    for t in ["t1", "t2", "t3", "t4"] {
        let (app, token) = admin.add_tenant_on(t, None, &c.comms.url()).await.unwrap();
        out.push((t.to_string(), app, token));
    }
    out
}

fn app_of<'a>(c: &'a Cluster, east: &'a AppHandle, app: &str) -> &'a AppHandle {
    if app == EAST { east } else { &c.app }
}

async fn has_instance(app: &AppHandle, tenant: &str) -> bool {
    app.state.instance(tenant).await.unwrap().is_some()
}

async fn receive_applied(conn: &Connector, n: usize) -> Vec<Outcome> {
    let mut all = Vec::new();
    let t = Instant::now();
    while all.iter().filter(|o| matches!(o, Outcome::Applied { .. })).count() < n
        && t.elapsed() < Duration::from_secs(60)
    {
        all.extend(conn.receive(5, &quiet).await.expect("receive"));
    }
    all
}

async fn publish_on(app: &AppHandle, dir: &std::path::Path, tenant: &str, name: &str, text: &str) {
    let inst = app.state.instance(tenant).await.unwrap().unwrap();
    let src = dir.join(format!("src-{tenant}-{name}"));
    std::fs::write(&src, text).unwrap();
    ferry_app::outbox::publish(&inst.0, tenant, &app.state.sftp_root(), &src, name).await.unwrap();
    app.state.announce_wakeup.notify_one();
}

/// A signed client of the Comms server's API with an App server's service key (what the App announces with).
fn as_app(c: &Cluster, app: &AppHandle) -> ferry_io::client::ApiClient {
    let key = Arc::new(app.state.identity.service_key.clone());
    let pin = c.comms.state.identity.tls_fingerprint.clone();
    ferry_io::client::ApiClient::new(&c.comms.url(), Some(&pin), Some(key), Duration::from_secs(30)).unwrap()
}

fn file_for(tenant: &str) -> FileReady {
    FileReady {
        tenant: tenant.into(),
        file_id: BatchId::new(chrono::Utc::now()),
        name: "po_999999.csv".into(),
        bytes: 3,
        md5: "0".repeat(32),
        sha256: "a".repeat(64),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tenants_are_placed_by_load_and_routed_to_their_own_app_server_only() {
    let (_dir, c) = cluster().await;
    let east = c.start_app(EAST).await.unwrap();
    let dir = c.dir.clone();

    // placement: 2/2 by least load, ties by name; --app is honoured even against the load
    let placed = place_four(&c).await;
    let apps: Vec<&str> = placed.iter().map(|(_, a, _)| a.as_str()).collect();
    assert_eq!(apps, [DEFAULT, EAST, DEFAULT, EAST]);
    let admin = c.admin().await.unwrap();
    let (app5, _) = admin.add_tenant_on("t5", Some(EAST), &c.comms.url()).await.unwrap();
    assert_eq!(app5, EAST, "--app names the App server");
    let err = admin.add_tenant_on("t6", Some("nowhere"), &c.comms.url()).await.unwrap_err();
    assert!(format!("{err:#}").contains("no App server named"), "{err:#}");
    // adding t1 again keeps its App server; asking to move it that way is refused
    assert_eq!(admin.add_tenant_on("t1", None, &c.comms.url()).await.unwrap().0, DEFAULT);
    let err = admin.add_tenant_on("t1", Some(EAST), &c.comms.url()).await.unwrap_err();
    assert!(format!("{err:#}").contains("is placed on App server"), "{err:#}");
    let rows = ferry_comms::db::list_apps(&c.comms.state.db).await.unwrap();
    let counts: Vec<(String, i64)> = rows.iter().map(|r| (r.name.clone(), r.tenants)).collect();
    assert_eq!(counts, [(DEFAULT.to_string(), 2), (EAST.to_string(), 3)]);
    // the registry of every App server holds its client; the default one is [app] of comms.toml
    assert_eq!(rows[0].endpoint, c.comms.state.cfg.app);
    let tenants = ferry_comms::db::list_tenants(&c.comms.state.db).await.unwrap();
    for (t, app, _) in &placed {
        let row = tenants.iter().find(|r| r.name == *t).unwrap();
        assert_eq!(row.app.as_deref(), Some(app.as_str()), "{t}: the placement is stored");
        // the instance exists on its App server only
        let (mine, other) = if app == EAST { (&east, &c.app) } else { (&c.app, &east) };
        assert!(has_instance(mine, t).await, "{t} has no instance on {app}");
        assert!(!has_instance(other, t).await, "{t} has an instance on the other App server");
    }
    // an App server with tenants is not removed
    let err = admin.remove_app(EAST).await.unwrap_err();
    assert!(format!("{err:#}").contains("placed on App server east"), "{err:#}");
    // the last step of a move changes the placement; an unknown App server is refused
    let err = admin.place_tenant("t5", "nowhere").await.unwrap_err();
    assert!(format!("{err:#}").contains("no App server named"), "{err:#}");
    admin.place_tenant("t5", DEFAULT).await.unwrap();
    assert_eq!(ferry_comms::db::tenant_app(&c.comms.state.db, "t5").await.unwrap(), Some(Some(DEFAULT.into())));

    // upstream: each tenant's batch is imported by its own App server, and the other holds nothing of it
    let mut conns = Vec::new();
    for (t, app, token) in &placed {
        let erp = dir.join(format!("{t}-erp.db"));
        let conn = c.connector_with_write_back(t, &erp, token).await.unwrap();
        let m = spool_batch(&conn, &good_files());
        let s = conn.send(&m, &quiet).await.unwrap().status;
        assert_eq!(s.state, BatchState::Imported, "{t}: {:?}", s.detail);
        let mine = app_of(&c, &east, app);
        let inst = mine.state.instance(t).await.unwrap().unwrap();
        assert_eq!(inst.0.count_rows("sales").await.unwrap(), 3, "{t} on {app}");
        assert_eq!(inst.0.batches().await.unwrap().len(), 1, "{t} on {app}");
        let other = if app == EAST { &c.app } else { &east };
        assert!(!has_instance(other, t).await, "{t} reached the other App server");
        let incoming = other.state.sftp_root().join(t);
        assert!(!incoming.exists(), "{t}'s batch was copied to the other App server: {}", incoming.display());
        conns.push((t.clone(), app.clone(), conn));
    }

    // downstream: a file published on each App server reaches its tenant only
    for (t, app, _) in &placed {
        let body = format!(
            "order_number,line,item,location,supplier,qty,unit_cost,order_date,due_date,comment\nREC-{t},1,A1,L1,S1,24,1.20,2026/11/28,2026/12/05,\n"
        );
        publish_on(app_of(&c, &east, app), &dir, t, "po_000001.csv", &body).await;
    }
    for (t, _, conn) in &conns {
        let out = receive_applied(conn, 1).await;
        assert!(matches!(&out[..], [Outcome::Applied { name, .. }] if name == "po_000001.csv"), "{t}: {out:?}");
        let got = std::fs::read_to_string(conn.cfg.base.join("from_cloud/po_000001.csv")).unwrap();
        assert!(got.contains(&format!("REC-{t},")), "{t} received another tenant's file: {got}");
    }

    // an App server may not announce for a tenant placed on the other one (single and batched calls)
    for (app, foreign) in [(&east, "t1"), (&c.app, "t2")] {
        let client = as_app(&c, app);
        let f = file_for(foreign);
        let err = client.post::<_, serde_json::Value>("/v1/app/files", &f).await.unwrap_err();
        assert_eq!(err.status(), Some(404), "{err}");
        assert!(err.to_string().contains("placed on App server"), "{err}");
        let f = file_for(foreign);
        let answer: FilesAnnounced =
            client.post("/v1/app/files", &FilesReady { files: vec![f.clone()] }).await.unwrap();
        assert!(answer.accepted.is_empty(), "{answer:?}");
        assert_eq!(answer.refused.len(), 1, "{answer:?}");
        let known = ferry_comms::db::download(&c.comms.state.db, foreign, &f.file_id).await.unwrap();
        assert!(known.is_none(), "a refused announcement was recorded");
    }
    // ... while announcing for its own tenant is taken (the App's own key, the App's own tenant)
    let answer: FilesAnnounced =
        as_app(&c, &east).post("/v1/app/files", &FilesReady { files: vec![file_for("t2")] }).await.unwrap();
    assert_eq!((answer.accepted.len(), answer.refused.len()), (1, 0), "{answer:?}");

    east.stop().await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_app_server_that_is_down_delays_only_its_own_tenants() {
    let (_dir, c) = cluster().await;
    let east = c.start_app(EAST).await.unwrap();
    let placed = place_four(&c).await;
    let mut conns = Vec::new();
    for (t, app, token) in &placed {
        let erp = c.dir.join(format!("{t}-erp.db"));
        conns.push((t.clone(), app.clone(), c.connector(t, &erp, token).await.unwrap()));
    }
    // east goes down
    let (https, ssh) = (east.https_addr, east.ssh_addr);
    east.stop().await;

    // every tenant sends a batch; east's tenants wait (their sends run on), the others' are imported
    let mut waiting = Vec::new();
    let mut batches = Vec::new();
    for (t, app, conn) in conns {
        let m = spool_batch(&conn, &good_files());
        batches.push((t.clone(), m.batch_id.clone()));
        if app == EAST {
            waiting.push((t, tokio::spawn(async move { conn.send(&m, &quiet).await.map(|r| r.status) })));
        } else {
            let s = tokio::time::timeout(Duration::from_secs(60), conn.send(&m, &quiet)).await.unwrap().unwrap();
            assert_eq!(s.status.state, BatchState::Imported, "{t}: {:?}", s.status.detail);
        }
    }
    for (t, id) in &batches {
        let st = ferry_comms::db::batch_status(&c.comms.state.db, t, id).await.unwrap();
        let on_east = placed.iter().any(|(p, a, _)| p == t && a == EAST);
        if on_east {
            // uploaded and completed, tried and failed against east, still waiting to be relayed
            let failed = async || {
                let s = ferry_comms::db::batch_status(&c.comms.state.db, t, id).await.unwrap();
                s.is_some_and(|s| {
                    s.state == BatchState::Uploaded && s.detail.as_deref().unwrap_or("").contains("App server east")
                })
            };
            assert!(eventually(Duration::from_secs(30), failed).await.is_some(), "{t}: {st:?}");
        } else {
            let st = st.unwrap();
            assert_eq!(st.state, BatchState::Imported, "{t}");
        }
    }

    // east comes back (same data, same addresses): its tenants' batches are relayed and imported
    let east = c.restart_app(EAST, https, ssh).await.unwrap();
    for (t, h) in waiting {
        let s = tokio::time::timeout(Duration::from_secs(120), h).await.unwrap().unwrap().unwrap();
        assert_eq!(s.state, BatchState::Imported, "{t}: {:?}", s.detail);
        assert_eq!(east.state.instance(&t).await.unwrap().unwrap().0.count_rows("sales").await.unwrap(), 3);
    }
    east.stop().await;
    c.stop().await;
}

/// The command line, as an operator runs it: `ferry comms app add NAME --info FILE` with the output of `ferry app
/// info`, `app list` (endpoint, tenants, up or down), `tenant add` placing by load or `--app`, `tenant show` and
/// `list` printing the placement, `app remove` refused while tenants are placed.
#[test]
fn the_command_line_registers_app_servers_and_places_tenants() {
    use crate::procs::{Node, edit_toml, ferry, ferry_output};
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let s = |p: &std::path::Path| p.display().to_string();
    let ports: Vec<u16> = {
        let ls: Vec<std::net::TcpListener> =
            (0..6).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
        ls.iter().map(|l| l.local_addr().unwrap().port()).collect()
    };
    let comms_cfg = dir.join("comms/comms.toml");
    std::fs::create_dir_all(dir.join("comms")).unwrap();
    let mut app_cfgs = Vec::new();
    for (i, name) in ["a1", "a2"].into_iter().enumerate() {
        std::fs::create_dir_all(dir.join(name)).unwrap();
        let cfg = dir.join(name).join("app.toml");
        ferry(&["app", "init", "--config", &s(&cfg)]);
        edit_toml(&cfg, |t| {
            t.insert("listen_https".into(), format!("127.0.0.1:{}", ports[2 * i]).into());
            t.insert("listen_ssh".into(), format!("127.0.0.1:{}", ports[2 * i + 1]).into());
            t.insert("plan_after_import".into(), false.into());
            t.insert("listen_web".into(), "off".into());
            t.insert("listen_admin".into(), "127.0.0.1:0".into());
        });
        let info = ferry(&["app", "info", "--config", &s(&cfg)]);
        std::fs::write(dir.join(format!("{name}-info.toml")), info).unwrap();
        app_cfgs.push(cfg);
    }
    // the first App server is [app] (`default`), the second is added by name
    ferry(&["comms", "init", "--config", &s(&comms_cfg), "--app-info", &s(&dir.join("a1-info.toml"))]);
    edit_toml(&comms_cfg, |t| {
        t.insert("listen_https".into(), format!("127.0.0.1:{}", ports[4]).into());
        t.insert("listen_ssh".into(), format!("127.0.0.1:{}", ports[4]).into());
        t.insert("listen_admin".into(), format!("127.0.0.1:{}", ports[5]).into());
    });
    let c = s(&comms_cfg);
    let out = ferry(&["comms", "app", "add", "east", "--info", &s(&dir.join("a2-info.toml")), "--config", &c]);
    assert!(out.contains("App server east registered"), "{out}");
    // the same App server again (another name, same service key), a bad name, the reserved name: refused
    for (name, want) in [("west", "already registered as \"east\""), ("Bad_Name", "not valid"), ("default", "[app]")] {
        let out = ferry_output(&["comms", "app", "add", name, "--info", &s(&dir.join("a2-info.toml")), "--config", &c]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(want), "{name}: {err}");
    }
    // nothing listens yet: both listed, down
    let list = ferry(&["comms", "app", "list", "--config", &c]);
    assert_eq!(list.lines().filter(|l| l.contains("down: ")).count(), 2, "{list}");
    assert!(list.contains(&format!("https://127.0.0.1:{}", ports[2])), "{list}");

    let comms_info = ferry(&["comms", "info", "--config", &c]);
    std::fs::write(dir.join("comms-info.toml"), comms_info).unwrap();
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let mut nodes = Vec::new();
    let mut comms = Node::new("comms", &["comms", "serve", "--config", &c], &logs);
    comms.start();
    comms.logged_addr("comms server listening", "https_addr", Duration::from_secs(30));
    for (i, cfg) in app_cfgs.iter().enumerate() {
        ferry(&["app", "init", "--config", &s(cfg), "--comms-info", &s(&dir.join("comms-info.toml"))]);
        let mut app = Node::new(&format!("app{i}"), &["app", "serve", "--config", &s(cfg)], &logs);
        app.start();
        app.logged_addr("app server listening", "https_addr", Duration::from_secs(30));
        nodes.push(app);
    }
    let list = ferry(&["comms", "app", "list", "--config", &c]);
    assert_eq!(list.lines().filter(|l| l.ends_with(" up")).count(), 2, "{list}");

    // least load, ties by name: default, east, default; then --app east
    for (t, want) in [("t1", "default"), ("t2", "east"), ("t3", "default")] {
        let out = ferry(&["comms", "tenant", "add", t, "--config", &c]);
        assert!(out.contains(&format!("ready on App server {want}")) && out.contains("ferry1."), "{t}: {out}");
    }
    let out = ferry(&["comms", "tenant", "add", "t4", "--app", "east", "--config", &c]);
    assert!(out.contains("ready on App server east"), "{out}");
    assert!(app_instance_exists(&app_cfgs[1], "t4"), "t4's instance is on east");
    assert!(!app_instance_exists(&app_cfgs[0], "t4"), "t4's instance is on east only");
    let show = ferry(&["comms", "tenant", "show", "t2", "--config", &c]);
    assert!(show.lines().any(|l| l.starts_with("app server") && l.ends_with("east")), "{show}");
    let tl = ferry(&["comms", "tenant", "list", "--config", &c]);
    assert!(tl.lines().any(|l| l.starts_with("t3 ") && l.contains(" default ")), "{tl}");
    let list = ferry(&["comms", "app", "list", "--config", &c]);
    let east = list.lines().find(|l| l.starts_with("east ")).unwrap();
    assert!(east.split_whitespace().nth(3) == Some("2"), "{list}");

    let out = ferry_output(&["comms", "app", "remove", "east", "--config", &c]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("2 tenant(s) are placed on App server east"), "{err}");

    for n in nodes.iter_mut().chain([&mut comms]) {
        n.term();
        n.wait_exit(Duration::from_secs(20));
    }
}

/// Whether the App server of `cfg` (app.toml) holds an instance for `tenant`.
fn app_instance_exists(cfg: &std::path::Path, tenant: &str) -> bool {
    let app = ferry_app::AppConfig::load(cfg).unwrap();
    app.data_dir.join("instances").join(format!("{tenant}.db")).exists()
}
