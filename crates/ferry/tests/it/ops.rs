//! Operations (issue 13): setup from each side's `info` output with no key pasted by hand, the blank mapping of
//! `connector init`, and the checks `serve` makes before starting.

use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use crate::procs::{Node, edit_toml, ferry, ferry_output};

/// Free ports of 127.0.0.1, chosen up front: each side's `info` names its addresses before its server starts.
fn free_ports(n: usize) -> Vec<u16> {
    let ls: Vec<TcpListener> = (0..n).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    ls.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn setup_from_info_files_with_no_hand_edited_keys() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let ports = free_ports(4);
    let (app_cfg, comms_cfg) = (dir.join("app/app.toml"), dir.join("comms/comms.toml"));
    std::fs::create_dir_all(dir.join("app")).unwrap();
    std::fs::create_dir_all(dir.join("comms")).unwrap();

    // App first: its defaults, on ports of this test (addresses are the operator's choice; no key is edited)
    ferry(&["app", "init", "--config", &s(&app_cfg)]);
    edit_toml(&app_cfg, |t| {
        t.insert("listen_https".into(), format!("127.0.0.1:{}", ports[0]).into());
        t.insert("listen_ssh".into(), format!("127.0.0.1:{}", ports[1]).into());
        t.insert("plan_after_import".into(), false.into());
        // the buyer's page is not under test here: no clash on its default port with other tests
        t.insert("listen_web".into(), "off".into());
        t.insert("listen_admin".into(), "127.0.0.1:0".into());
    });
    // an App with no Comms server refuses to start, naming the command that fills the section
    let out = ferry_output(&["app", "serve", "--config", &s(&app_cfg)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--comms-info"), "{err}");

    let app_info = ferry(&["app", "info", "--config", &s(&app_cfg)]);
    let app_info_file = dir.join("app-info.toml");
    std::fs::write(&app_info_file, &app_info).unwrap();
    assert!(app_info.contains("[app]") && app_info.contains("service_key = "), "{app_info}");

    // Comms: a new comms.toml with [app] filled from the App's info
    let out = ferry(&["comms", "init", "--config", &s(&comms_cfg), "--app-info", &s(&app_info_file)]);
    assert!(out.contains("wrote"), "{out}");
    edit_toml(&comms_cfg, |t| {
        t.insert("listen_https".into(), format!("127.0.0.1:{}", ports[2]).into());
        t.insert("listen_ssh".into(), format!("127.0.0.1:{}", ports[2]).into());
        t.insert("listen_admin".into(), format!("127.0.0.1:{}", ports[3]).into());
    });
    let written: toml::Table = toml::from_str(&std::fs::read_to_string(&comms_cfg).unwrap()).unwrap();
    let app_section: toml::Table = toml::from_str(&app_info).unwrap();
    assert_eq!(written["app"], app_section["app"], "the [app] section is the App's info");

    // a comms.toml without [app] refuses to serve, naming the command
    let bare = dir.join("comms/bare.toml");
    ferry(&["comms", "init", "--config", &s(&bare)]);
    let out = ferry_output(&["comms", "serve", "--config", &s(&bare)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--app-info"), "{err}");

    // the App's existing app.toml gets [comms] and comms_keys from the Comms server's info; the rest is kept
    let comms_info = ferry(&["comms", "info", "--config", &s(&comms_cfg)]);
    let comms_info_file = dir.join("comms-info.toml");
    std::fs::write(&comms_info_file, &comms_info).unwrap();
    let out = ferry(&["app", "init", "--config", &s(&app_cfg), "--comms-info", &s(&comms_info_file)]);
    assert!(out.contains("updated"), "{out}");
    // twice is harmless: the key is not added again
    ferry(&["app", "init", "--config", &s(&app_cfg), "--comms-info", &s(&comms_info_file)]);
    let app_t: toml::Table = toml::from_str(&std::fs::read_to_string(&app_cfg).unwrap()).unwrap();
    assert_eq!(app_t["comms_keys"].as_array().unwrap().len(), 1);
    assert_eq!(app_t["listen_https"].as_str().unwrap(), format!("127.0.0.1:{}", ports[0]));
    assert_eq!(app_t["comms"]["api_url"].as_str().unwrap(), format!("https://127.0.0.1:{}", ports[2]));

    // both serve, and work together: tenant add (Comms -> App) and an announced file (App -> Comms)
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let mut comms = Node::new("comms", &["comms", "serve", "--config", &s(&comms_cfg)], &logs);
    comms.start();
    comms.logged_addr("comms server listening", "https_addr", Duration::from_secs(30));
    let mut app = Node::new("app", &["app", "serve", "--config", &s(&app_cfg)], &logs);
    app.log_format = None; // the default for a log file: JSON
    app.start();
    app.logged_addr("app server listening", "https_addr", Duration::from_secs(30));
    let added = ferry(&["comms", "tenant", "add", "acme", "--config", &s(&comms_cfg)]);
    assert!(added.contains("ferry1."), "{added}");
    let report = dir.join("report.txt");
    std::fs::write(&report, "hello\n").unwrap();
    let out = ferry(&["app", "publish", "acme", &s(&report), "--config", &s(&app_cfg)]);
    assert!(out.contains("1 file(s) announced"), "{out}");
    let files = ferry(&["comms", "tenant", "files", "acme", "--config", &s(&comms_cfg)]);
    assert!(files.contains("report.txt"), "{files}");

    // Logs: no terminal escapes in either file; the App's (default format, not a terminal) is JSON lines, with
    // the tenant as a span field on the lines of the announcement
    app.term();
    comms.term();
    app.wait_exit(Duration::from_secs(20));
    comms.wait_exit(Duration::from_secs(20));
    for n in [&app, &comms] {
        let text = n.log_text();
        assert!(!text.contains('\x1b'), "{}: escape codes in the log file:\n{text}", n.name);
    }
    let text = app.log_text();
    let json: Vec<serde_json::Value> = text
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(json.len() >= 2, "{text}");
    assert!(json.iter().all(|v| v["level"].is_string() && v["fields"]["message"].is_string()), "{text}");
    assert!(json.iter().any(|v| v["fields"]["message"].as_str().unwrap_or("").contains("listening")), "{text}");
    // every line on stderr is JSON; the only others are the program's own stdout lines
    for l in text.lines().filter(|l| !l.starts_with('{')) {
        assert!(
            l.starts_with("app server: ") || l.starts_with("buyer's web page: "),
            "a stderr line that is not JSON: {l}"
        );
    }
}

#[test]
fn connector_init_writes_a_blank_mapping_and_the_sample_only_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let blank = dir.path().join("blank");
    let out =
        ferry(&["connector", "init", "--dir", &s(&blank), "--erp-kind", "postgres", "--erp", "postgres://erp@db/erp"]);
    assert!(out.contains("fill in mapping.toml"), "{out}");
    let text = std::fs::read_to_string(blank.join("mapping.toml")).unwrap();
    let m: ferry_connector::mapping::Mapping = toml::from_str(&text).unwrap();
    assert!(m.files.is_empty(), "every block is commented out");
    for f in ferry_proto::spec::STANDARD_FILES {
        assert!(text.contains(&format!("[files.\"{}\"]", f.name)), "{} is listed", f.name);
    }
    assert!(!text.contains("FROM warehouses"), "not the sample's mapping");
    // `check` says what to do first
    let out = ferry_output(&["connector", "check", "--config", &s(&blank.join("connector.toml"))]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("location.csv"), "{err}");

    let sample = dir.path().join("sample");
    ferry(&["connector", "init", "--dir", &s(&sample), "--sample"]);
    let text = std::fs::read_to_string(sample.join("mapping.toml")).unwrap();
    assert_eq!(text, ferry_sample::MAPPING);
}

/// `ferry connector doctor --config cfg`: (exit code, output).
fn doctor(cfg: &Path) -> (i32, String) {
    let out = ferry_output(&["connector", "doctor", "--config", &s(cfg)]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

/// The line of check `name` in a doctor report, and whether it passed.
fn line<'a>(report: &'a str, name: &str) -> (&'a str, bool) {
    let l = report
        .lines()
        .find(|l| l.starts_with(&format!("[ ok ] {name}:")) || l.starts_with(&format!("[FAIL] {name}:")))
        .unwrap_or_else(|| panic!("no line for {name:?} in:\n{report}"));
    (l, l.starts_with("[ ok ]"))
}

/// A proxy that answers every CONNECT with 403 (as a corporate proxy does for a port it does not allow).
async fn refusing_proxy() -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let mut head = Vec::new();
                while !head.ends_with(b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s.write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n").await;
            });
        }
    });
    port
}

fn edit_json(path: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(path, serde_json::to_string(&v).unwrap()).unwrap();
}

async fn registered(c: &ferry::cluster::Cluster, name: &str) -> std::path::PathBuf {
    let erp = c.dir.join(format!("{name}-erp.db"));
    ferry_sample::generate_sample_erp(&erp, ferry_sample::SampleSize::Small).await.unwrap();
    let token = c.add_tenant(name).await.unwrap();
    let conn = c.connector(name, &erp, &token).await.unwrap();
    conn.cfg.base.join("connector.toml")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_passes_then_names_each_fault_with_its_fix() {
    let (_dir, c) = crate::common::cluster().await;
    let cfg = registered(&c, "acme").await;
    let conn = ferry_connector::agent::Connector::load(&cfg).unwrap();

    let (code, out) = tokio::task::spawn_blocking({
        let cfg = cfg.clone();
        move || doctor(&cfg)
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}");
    println!("{out}");
    for name in [
        "config",
        "key",
        "erp",
        "query location.csv",
        "query sales.csv",
        "disk",
        "registration",
        "proxy",
        "dns",
        "tcp",
        "tls",
        "ssh host key",
        "login",
        "signed call",
        "clock",
    ] {
        assert!(line(&out, name).1, "{name} passes:\n{out}");
    }
    let run = |cfg: &Path| {
        let cfg = cfg.to_path_buf();
        tokio::task::spawn_blocking(move || doctor(&cfg))
    };

    // key readable by others
    use std::os::unix::fs::PermissionsExt;
    let key = conn.cfg.key_path().to_path_buf();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, out) = run(&cfg).await.unwrap();
    let (l, ok) = line(&out, "key");
    assert!(code == 1 && !ok && l.contains("0644") && out.contains("chmod 600"), "{out}");
    assert!(line(&out, "login").0.contains("not checked: the key check failed"), "{out}");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();

    // a broken query
    let mapping = conn.cfg.mapping_path().to_path_buf();
    let good = std::fs::read_to_string(&mapping).unwrap();
    std::fs::write(&mapping, good.replace("FROM vendors", "FROM no_such_table")).unwrap();
    let (code, out) = run(&cfg).await.unwrap();
    assert!(code == 1 && !line(&out, "query supplier.csv").1 && line(&out, "query stock.csv").1, "{out}");
    std::fs::write(&mapping, &good).unwrap();

    // wrong TLS pin, then wrong SSH host key pin
    let reg = conn.cfg.registration_path().to_path_buf();
    let saved = std::fs::read_to_string(&reg).unwrap();
    edit_json(&reg, |v| v["tls_fingerprint"] = format!("sha256:{}", "ab".repeat(32)).into());
    let (code, out) = run(&cfg).await.unwrap();
    assert!(code == 1 && !line(&out, "tls").1 && line(&out, "tcp").1 && out.contains("register again"), "{out}");
    std::fs::write(&reg, &saved).unwrap();
    edit_json(&reg, |v| v["ssh_host_key_fingerprint"] = conn.key_fingerprint().into());
    let (code, out) = run(&cfg).await.unwrap();
    let (l, ok) = line(&out, "ssh host key");
    assert!(code == 1 && !ok && l.contains("does not match") && line(&out, "tls").1, "{out}");
    std::fs::write(&reg, &saved).unwrap();

    // a proxy that refuses the tunnel
    let port = refusing_proxy().await;
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replace("proxy = \"\"", &format!("proxy = \"http://127.0.0.1:{port}\""))).unwrap();
    let (code, out) = run(&cfg).await.unwrap();
    let (l, ok) = line(&out, "tcp");
    assert!(code == 1 && !ok && l.contains("403") && line(&out, "proxy").1, "{out}");
    std::fs::write(&cfg, text).unwrap();
    assert_eq!(run(&cfg).await.unwrap().0, 0, "all faults repaired");

    // the server stopped
    c.stop().await;
    let (code, out) = run(&cfg).await.unwrap();
    assert!(code == 1 && !line(&out, "tcp").1 && line(&out, "dns").1, "{out}");
    assert!(!line(&out, "signed call").1, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_fails_the_clock_when_the_skew_allowance_is_used_up() {
    // A real clock cannot be moved in a test: a server that accepts signatures only 4 s old leaves no room for
    // the skew allowance, exactly as a clock 296 s off would against the default 300 s.
    let dir = tempfile::tempdir().unwrap();
    let c = ferry::cluster::Cluster::start_with(dir.path(), |_| {}, |cc| cc.signature_max_age_secs = 4).await.unwrap();
    let cfg = registered(&c, "acme").await;
    let (code, out) = tokio::task::spawn_blocking(move || doctor(&cfg)).await.unwrap();
    let (l, ok) = line(&out, "clock");
    assert!(code == 1 && !ok && l.contains("up to 4 s") && out.contains("NTP"), "{out}");
    assert!(line(&out, "signed call").1, "{out}");
    c.stop().await;
}

/// `GET https://addr/path` pinned to `pin`, with the bearer `token` (or none): (status, body).
async fn admin_get(addr: std::net::SocketAddr, pin: &str, token: Option<&str>, path: &str) -> (u16, String) {
    let http = ferry_io::tls::http_client(Some(pin), Duration::from_secs(30)).unwrap();
    let mut req = http.get(format!("https://{addr}{path}"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

fn sample<'a>(
    scrape: &'a prometheus_parse::Scrape,
    metric: &str,
    label: Option<(&str, &str)>,
) -> &'a prometheus_parse::Sample {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == metric && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
        .unwrap_or_else(|| panic!("no sample {metric} {label:?}"))
}

fn value(s: &prometheus_parse::Sample) -> f64 {
    match &s.value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => *v,
        other => panic!("{}: not a number: {other:?}", s.metric),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn comms_metrics_scrape_and_parse() {
    use crate::common::*;
    let (_dir, c) = cluster().await;
    let conn = tenant(&c, "acme").await;
    let status = conn.send(&spool_batch(&conn, &good_files()), &quiet).await.unwrap().status;
    assert_eq!(status.state, ferry_proto::api::BatchState::Imported, "{:?}", status.detail);
    let addr = c.comms.admin_addr.unwrap();
    let pin = c.comms.state.identity.tls_fingerprint.clone();
    let token = std::fs::read_to_string(c.comms.state.cfg.admin_token_path()).unwrap();
    // the metrics need the admin token, and a wrong one is counted
    let (code, _) = admin_get(addr, &pin, Some("wrong"), "/metrics").await;
    assert_eq!(code, 401);
    let (code, text) = admin_get(addr, &pin, Some(token.trim()), "/metrics").await;
    assert_eq!(code, 200, "{text}");
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    assert_eq!(value(sample(&scrape, "ferry_comms_batches", Some(("state", "imported")))), 1.0, "{text}");
    assert_eq!(value(sample(&scrape, "ferry_comms_batches", Some(("state", "rejected")))), 0.0);
    assert_eq!(value(sample(&scrape, "ferry_comms_relay_queue_depth", None)), 0.0);
    assert_eq!(value(sample(&scrape, "ferry_comms_download_queue_depth", None)), 0.0);
    assert!(value(sample(&scrape, "ferry_comms_upload_bytes_total", None)) > 0.0, "{text}");
    assert!(value(sample(&scrape, "ferry_comms_refused_total", Some(("reason", "admin_token")))) >= 1.0);
    sample(&scrape, "ferry_comms_sftp_sessions", None);
    sample(&scrape, "ferry_comms_long_polls_waiting", None);
    sample(&scrape, "ferry_comms_download_bytes_total", None);
    let age = value(sample(&scrape, "ferry_comms_last_import_age_seconds", Some(("tenant", "acme"))));
    assert!((0.0..60.0).contains(&age), "{age}");
    for stage in ["relay", "import"] {
        let h = sample(&scrape, "ferry_comms_stage_seconds", Some(("stage", stage)));
        match &h.value {
            prometheus_parse::Value::Histogram(buckets) => {
                assert!(buckets.iter().any(|b| b.count >= 1.0), "{stage}: {buckets:?}")
            }
            other => panic!("{stage}: not a histogram: {other:?}"),
        }
    }
    // a long-poll waiting shows while it waits
    let waiting = tokio::spawn({
        let api = conn.api().unwrap();
        async move { api.get::<serde_json::Value>("/v1/files?wait=3").await }
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (_, text) = admin_get(addr, &pin, Some(token.trim()), "/metrics").await;
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    assert_eq!(value(sample(&scrape, "ferry_comms_long_polls_waiting", None)), 1.0, "{text}");
    waiting.await.unwrap().unwrap();
    c.stop().await;
}

fn histogram_count(scrape: &prometheus_parse::Scrape, metric: &str, stage: &str) -> f64 {
    match &sample(scrape, metric, Some(("stage", stage))).value {
        prometheus_parse::Value::Histogram(buckets) => buckets.iter().map(|b| b.count).fold(0.0, f64::max),
        other => panic!("{stage}: not a histogram: {other:?}"),
    }
}

/// The App's `/metrics` on its admin listener, after a real sync of the sample ERP whose plan is released at once
/// (`auto`): imports by result, bytes, the four stage histograms, plans, releases, the outbox depth (as many
/// files as suppliers until the Connector takes them, then 0) and the tenant's last-import age.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn app_metrics_scrape_and_parse() {
    use crate::common::*;
    let (dir, c) = cluster().await;
    let erp = dir.path().join("erp.db");
    ferry_sample::generate_sample_erp(&erp, ferry_sample::SampleSize::Small).await.unwrap();
    let token = c.add_tenant("acme").await.unwrap();
    let inst = c.app.state.instance("acme").await.unwrap().unwrap();
    ferry_app::release::set_policy(&inst.0, ferry_app::release::Policy::Auto).await.unwrap();
    let conn = c.connector_with_write_back("acme", &erp, &token).await.unwrap();
    let r = conn.sync(&quiet).await.unwrap();
    assert_eq!(r.status.state, ferry_proto::api::BatchState::Imported, "{:?}", r.status.detail);

    let addr = c.app.admin_addr.expect("the cluster serves the App's admin listener");
    let pin = c.app.state.identity.tls_fingerprint.clone();
    let token = std::fs::read_to_string(c.app.state.cfg.admin_token_path()).unwrap();
    assert_eq!(admin_get(addr, &pin, None, "/metrics").await.0, 401);
    assert_eq!(admin_get(addr, &pin, Some("wrong"), "/metrics").await.0, 401);
    let scrape = async || {
        let (code, text) = admin_get(addr, &pin, Some(token.trim()), "/metrics").await;
        assert_eq!(code, 200, "{text}");
        (prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap(), text)
    };
    // the plan runs after the import's answer; its files are announced to Comms
    let released = async || {
        let (s, _) = scrape().await;
        value(sample(&s, "ferry_app_releases_total", None)) >= 1.0
            && value(sample(&s, "ferry_app_outbox_queue_depth", None)) >= 1.0
    };
    assert!(eventually(Duration::from_secs(60), released).await.is_some(), "a release in the outbox");
    let (s, text) = scrape().await;
    let releases = value(sample(&s, "ferry_app_releases_total", None));
    let depth = value(sample(&s, "ferry_app_outbox_queue_depth", None));
    assert_eq!(value(sample(&s, "ferry_app_imports_total", Some(("result", "imported")))), 1.0, "{text}");
    let rows = conn.status(1).await.unwrap()[0].rows;
    assert_eq!(value(sample(&s, "ferry_app_import_rows_total", None)), rows as f64, "{text}");
    let imported = value(sample(&s, "ferry_app_import_bytes_total", None));
    assert!(imported > 10.0 * rows as f64, "plain CSV bytes of {rows} rows: {imported}: {text}");
    assert_eq!(value(sample(&s, "ferry_app_plans_total", Some(("result", "ok")))), 1.0, "{text}");
    assert_eq!(depth, releases, "one file per release, none delivered yet: {text}");
    for stage in ["decompress", "verify", "import", "plan"] {
        assert_eq!(histogram_count(&s, "ferry_app_stage_seconds", stage), 1.0, "{stage}: {text}");
    }
    let age = value(sample(&s, "ferry_app_last_import_age_seconds", Some(("tenant", "acme"))));
    assert!((0.0..120.0).contains(&age), "{age}");

    // the Connector takes the files: the outbox drains
    let mut applied = 0;
    let t = std::time::Instant::now();
    while applied < releases as usize && t.elapsed() < Duration::from_secs(60) {
        let got = conn.receive(5, &quiet).await.unwrap();
        applied += got.iter().filter(|o| matches!(o, ferry_connector::receive::Outcome::Applied { .. })).count();
    }
    let drained = async || {
        let (s, _) = scrape().await;
        value(sample(&s, "ferry_app_outbox_queue_depth", None)) == 0.0
    };
    assert!(eventually(Duration::from_secs(30), drained).await.is_some(), "the outbox depth went back to 0");
    c.stop().await;
}

/// The JSON log lines of a file written after byte `from` (the process's stdout shares the file: its own lines,
/// like `comms server: https://…`, are not log lines, and no log line is in the text format).
fn json_lines(log: &str, from: usize, who: &str) -> Vec<serde_json::Value> {
    let lines = log[from..].lines().filter(|l| !l.trim().is_empty());
    let (json, other): (Vec<&str>, Vec<&str>) = lines.partition(|l| l.starts_with('{'));
    for l in other {
        assert!(
            ![" INFO ", " WARN ", " ERROR ", " DEBUG "].iter().any(|lv| l.contains(lv)),
            "{who}: a text log line: {l}"
        );
    }
    json.into_iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{who}: not a JSON line ({e}): {l}")))
        .collect()
}

/// `key` of a JSON log line: among the event's fields, else in its span.
fn log_field<'a>(line: &'a serde_json::Value, key: &str) -> Option<&'a str> {
    line["fields"][key].as_str().or_else(|| line["span"][key].as_str())
}

/// Issue 13 item 5: servers started with their log on a file (not a terminal) write no escape codes; in JSON
/// (`FERRY_LOG_FORMAT=json`, and the default when stderr is not a terminal) every line about a batch — the
/// Comms server's upload and relay, the App's import and its plan — carries `tenant` and `batch` as fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_tenant_and_batch_and_no_escape_codes() {
    use crate::common::eventually;
    use crate::procs::{Proxy, query, setup};
    let dir = tempfile::tempdir().unwrap();
    let proxies = std::sync::Arc::new([Proxy::unrouted().await, Proxy::unrouted().await, Proxy::unrouted().await]);
    let (d, p) = (dir.path().to_path_buf(), proxies.clone());
    let (sys, mut app, mut comms) = tokio::task::spawn_blocking(move || setup(&d, &p, |_| {})).await.unwrap();
    // the App plans after the import, so its plan's lines are checked too
    crate::procs::edit_toml(&sys.app_cfg, |t| {
        t.insert("plan_after_import".into(), true.into());
    });
    // both again in JSON: the App by FERRY_LOG_FORMAT, the Comms server by default (its stderr is a file)
    let (app_from, comms_from) = (app.log_text().len(), comms.log_text().len());
    let sync = tokio::task::spawn_blocking(move || {
        comms.kill9();
        comms.log_format = None;
        comms.start();
        app.kill9();
        app.log_format = Some("json");
        app.start();
        for (node, from, what) in
            [(&comms, comms_from, "comms server listening"), (&app, app_from, "app server listening")]
        {
            let t = std::time::Instant::now();
            while !node.log_text()[from..].contains(what) {
                assert!(t.elapsed() < Duration::from_secs(30), "{} did not start:\n{}", node.name, node.log_text());
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let out = ferry_output(&sys.conn_args("sync").iter().map(String::as_str).collect::<Vec<_>>());
        assert!(out.status.success(), "sync: {}", String::from_utf8_lossy(&out.stderr));
        (sys, app, comms)
    });
    let (sys, app, comms) = sync.await.unwrap();
    let ids = query(&sys.comms_db(), "SELECT batch_id FROM batches WHERE state = 'imported'");
    assert_eq!(ids.len(), 1, "{ids:?}");
    let batch = ids[0][0].clone();
    // the plan runs after the import's answer
    let planned = async || app.log_text()[app_from..].contains("planned after import");
    assert!(eventually(Duration::from_secs(60), planned).await.is_some(), "{}", app.log_text());

    for (node, from, want) in [
        (&comms, comms_from, &["batch completed", "batch relayed", "batch verdict"][..]),
        (&app, app_from, &["batch imported", "import finished", "planned after import"][..]),
    ] {
        let log = node.log_text();
        assert!(!log.contains('\u{1b}'), "{}: escape codes in a log file: {log:?}", node.name);
        let lines = json_lines(&log, from, &node.name);
        // the lines about this batch: its id anywhere in the line, or a message of the batch's own
        let about: Vec<&serde_json::Value> = lines
            .iter()
            .filter(|l| {
                l.to_string().contains(&batch)
                    || want.iter().any(|w| l["fields"]["message"].as_str().is_some_and(|m| m.contains(w)))
            })
            .collect();
        for w in want {
            assert!(
                about.iter().any(|l| l["fields"]["message"].as_str().is_some_and(|m| m.contains(w))),
                "{}: no line {w:?} in {log}",
                node.name
            );
        }
        for l in &about {
            assert_eq!(log_field(l, "tenant"), Some("acme"), "{}: no tenant field: {l}", node.name);
            assert_eq!(log_field(l, "batch"), Some(batch.as_str()), "{}: no batch field: {l}", node.name);
        }
    }
    drop((app, comms));
}

/// `(path, method)` of every `.route("PATH", get(..).post(..))` call in a router's source.
fn routes_in(source: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for chunk in source.split(".route(\"").skip(1) {
        let Some((path, rest)) = chunk.split_once('"') else { continue };
        let call: String = rest.lines().take_while(|l| !l.trim_start().starts_with('.')).collect();
        let call = call + rest.lines().next().unwrap_or("");
        for m in ["get", "post", "put", "delete", "patch"] {
            if call.contains(&format!("{m}(")) {
                out.push((path.to_string(), m.to_string()));
            }
        }
    }
    out
}

/// Issue 13 item 4, over the network: a running Comms server serves `/v1/openapi.json` (Connector API) and
/// `/admin/v1/openapi.json` (admin listener, no token needed) over HTTPS; both parse as OpenAPI 3.1 (`oas3`),
/// describe every route of their router's source, and every operation they describe is answered by the server
/// (a real status, not the router's 404/405).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_documents_are_served_valid_and_complete() {
    use crate::common::*;
    let (_dir, c) = cluster().await;
    c.add_tenant("acme").await.unwrap();
    let pin = c.comms.state.identity.tls_fingerprint.clone();
    let http = ferry_io::tls::http_client(Some(&pin), Duration::from_secs(30)).unwrap();
    let token = std::fs::read_to_string(c.comms.state.cfg.admin_token_path()).unwrap();
    let api = c.comms.https_addr;
    let admin = c.comms.admin_addr.expect("admin listener");
    let sources = [
        (api, "/v1/openapi.json", include_str!("../../../ferry-comms/src/api.rs"), None),
        (admin, "/admin/v1/openapi.json", include_str!("../../../ferry-comms/src/admin_api.rs"), Some(token.trim())),
    ];
    for (addr, doc_path, source, bearer) in sources {
        let resp = http.get(format!("https://{addr}{doc_path}")).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 200, "{doc_path}");
        let ct = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        assert!(ct.starts_with("application/json"), "{doc_path}: {ct}");
        let text = resp.text().await.unwrap();
        let spec = oas3::from_json(&text).unwrap_or_else(|e| panic!("{doc_path} is not OpenAPI 3.1: {e}"));
        assert!(spec.openapi.starts_with("3.1"), "{doc_path}: {}", spec.openapi);
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        let described = doc["paths"].as_object().expect("paths");
        let routes = routes_in(source);
        assert!(routes.len() >= 5, "{routes:?}");
        for (path, method) in &routes {
            assert!(described.get(path).and_then(|p| p.get(method)).is_some(), "{doc_path}: {method} {path} missing");
        }
        for (path, ops) in described {
            let methods = ops
                .as_object()
                .unwrap()
                .keys()
                .filter(|m| ["get", "post", "put", "delete", "patch"].contains(&m.as_str()));
            for method in methods {
                assert!(routes.iter().any(|(p, m)| p == path && m == method), "{doc_path}: {method} {path} not routed");
                // the server answers the operation: an unsigned call is refused (401), a bad body is refused
                // (400/422), an admin call with the token runs; never the router's "no such route"
                let url = format!("https://{addr}{}", path.replace("{name}", "acme").replace("{id}", "x"));
                let mut req = match method.as_str() {
                    "get" => http.get(&url),
                    "post" => http.post(&url).json(&serde_json::json!({})),
                    "put" => http.put(&url).json(&serde_json::json!({})),
                    other => panic!("{doc_path}: unexpected method {other}"),
                };
                if let Some(t) = bearer {
                    req = req.bearer_auth(t);
                }
                let resp = req.send().await.unwrap();
                let code = resp.status().as_u16();
                let body = resp.text().await.unwrap_or_default();
                assert!(code != 405 && !body.contains("no such route"), "{method} {url}: {code} {body}");
            }
        }
    }
    c.stop().await;
}

/// Issue 13 item 8: every command of README.md's ```sh blocks runs as written (`scripts/readme-commands.sh`: the
/// setup of both servers from each other's `info` output, the servers started and stopped, a tenant, the
/// Connector's setup, check, register, sync, doctor, status, key rotation, agent, and the downstream commands;
/// `cargo …` lines are skipped and say so). The servers use their default ports: when one is taken (a developer's
/// own server) the test says SKIPPED, except in CI.
#[test]
fn readme_commands_run_as_written() {
    let busy: Vec<u16> = [9443, 9444, 9445, 2223, 8443, 8444, 2222]
        .into_iter()
        .filter(|p| TcpListener::bind(("127.0.0.1", *p)).is_err())
        .collect();
    if !busy.is_empty() {
        assert!(std::env::var_os("FERRY_CI").is_none(), "the README's default ports {busy:?} are taken");
        eprintln!("SKIPPED: readme_commands_run_as_written: the README's default ports {busy:?} are taken");
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/readme-commands.sh");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .env("FERRY_BIN", env!("CARGO_BIN_EXE_ferry"))
        .env_remove("FERRY_LOG_FORMAT")
        .output()
        .expect("run scripts/readme-commands.sh");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert!(text.contains("SKIP (a cargo build") && text.contains("+ ferry connector sync"), "{text}");
    assert!(text.contains("imported (") && text.contains("checks passed"), "{text}");
    let ran: usize = text
        .lines()
        .find_map(|l| l.strip_prefix("readme-commands: all ")?.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("{text}"));
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md")).unwrap();
    let mut in_block = false;
    let mut in_readme = 0;
    for l in readme.lines().map(str::trim_start) {
        if l.starts_with("```") {
            in_block = l == "```sh";
        } else if in_block && l.starts_with("ferry ") {
            in_readme += 1;
        }
    }
    assert_eq!(ran, in_readme, "every `ferry` command of the README ran: {text}");
}
