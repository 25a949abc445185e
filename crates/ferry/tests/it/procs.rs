//! The real `ferry` binary as separate OS processes, for the reliability tests: an App, a Comms server and a
//! Connector, each with its own folder and config written by the CLI's own `init` commands, with in-test TCP
//! proxies ([`Proxy`]) between Connector -> Comms and Comms -> App that can cut or stall every connection.
//!
//! Nothing binds a port for another to bind again: a proxy listens on port 0 from the start and is routed to
//! its target later; a server process listens on port 0, its address is read from the line it logs at start
//! (`... listening https_addr=...`), and only then written into its config, so that a process killed with
//! `kill -9` restarts on the same address.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

pub fn ferry_bin() -> &'static str {
    env!("CARGO_BIN_EXE_ferry")
}

/// Runs `ferry args...` to completion; panics with its output if it fails.
pub fn ferry(args: &[&str]) -> String {
    let out = ferry_output(args);
    assert!(
        out.status.success(),
        "ferry {args:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every child runs under umask 022 (the common default), whatever the test runner's: the programs must make
/// their data private themselves (`attack/rest.rs` checks the modes).
fn under_umask_022(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: umask is async-signal-safe and touches only the child's own process state.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0o022);
            Ok(())
        })
    }
}

pub fn ferry_output(args: &[&str]) -> Output {
    under_umask_022(&mut Command::new(ferry_bin()))
        .args(args)
        .env("FERRY_LOG", "warn,sqlx=error")
        .stdin(Stdio::null())
        .output()
        .expect("run ferry")
}

/// A long-running `ferry` process that can be killed and started again with the same arguments.
pub struct Node {
    pub name: String,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
    pub starts: u32,
    /// The open-file limit (soft and hard) the process starts with, when set.
    pub file_limit: Option<u64>,
    /// `FERRY_LOG_FORMAT` of the process (default `text`); None: the program's own default.
    pub log_format: Option<&'static str>,
}

impl Node {
    pub fn new(name: &str, args: &[&str], log_dir: &Path) -> Node {
        Node {
            name: name.to_owned(),
            args: args.iter().map(|a| a.to_string()).collect(),
            log: log_dir.join(format!("{name}.log")),
            child: None,
            starts: 0,
            file_limit: None,
            log_format: Some("text"),
        }
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} already running", self.name);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("log file");
        let err = log.try_clone().expect("log clone");
        let mut cmd = Command::new(ferry_bin());
        under_umask_022(&mut cmd);
        cmd.args(&self.args).env("FERRY_LOG", "info,sqlx=error").stdin(Stdio::null()).stdout(log).stderr(err);
        match self.log_format {
            Some(f) => cmd.env("FERRY_LOG_FORMAT", f),
            // the program's default: JSON, stderr being a file
            None => cmd.env_remove("FERRY_LOG_FORMAT"),
        };
        if let Some(n) = self.file_limit {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                cmd.pre_exec(move || rlimit::setrlimit(rlimit::Resource::NOFILE, n, n));
            }
        }
        let child = cmd.spawn().expect("spawn ferry");
        self.child = Some(child);
        self.starts += 1;
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `kill -9`, and reap it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGKILL without reaping (a later [`Node::exited`] does); nothing is sent to a child already reaped.
    pub fn kill_unreaped(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
        }
    }

    /// Sends SIGTERM (the process keeps running until it exits by itself).
    pub fn term(&self) {
        if let Some(pid) = self.pid() {
            signal(pid, "TERM");
        }
    }

    /// Whether it has exited (and with what), without waiting.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(status)
    }

    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Waits up to `limit` for it to exit by itself.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let t = Instant::now();
        while t.elapsed() < limit {
            if let Some(s) = self.exited() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The address in `field=` of the first log line containing `what` (a server's `... listening` line),
    /// waiting up to `limit` for it to be written.
    pub fn logged_addr(&mut self, what: &str, field: &str, limit: Duration) -> SocketAddr {
        let t = Instant::now();
        loop {
            let log = strip_ansi(&self.log_text());
            let value = log.lines().filter(|l| l.contains(what)).find_map(|l| {
                if l.starts_with('{') {
                    // a JSON line: {"fields":{"message":..., "https_addr":"..."}, ...}
                    let v: serde_json::Value = serde_json::from_str(l).ok()?;
                    return v["fields"][field].as_str()?.parse::<SocketAddr>().ok();
                }
                let rest = &l[l.find(&format!("{field}="))? + field.len() + 1..];
                rest.split_whitespace().next()?.parse::<SocketAddr>().ok()
            });
            if let Some(addr) = value {
                return addr;
            }
            assert!(self.is_running(), "{} exited before logging {what:?}:\n{log}", self.name);
            assert!(t.elapsed() < limit, "{} did not log {what:?} with {field}= within {limit:?}:\n{log}", self.name);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// `text` without terminal colour codes (`ESC [ ... m`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status();
}

/// Edits a TOML file in place.
pub fn edit_toml(path: &Path, f: impl FnOnce(&mut toml::Table)) {
    let text = std::fs::read_to_string(path).expect("read toml");
    let mut t: toml::Table = text.parse().expect("parse toml");
    f(&mut t);
    std::fs::write(path, toml::to_string(&t).expect("toml")).expect("write toml");
}

pub fn section<'a>(t: &'a mut toml::Table, name: &str) -> &'a mut toml::Table {
    t.entry(name.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new())).as_table_mut().expect("a table")
}

/// The value after `prefix` on the first line of `text` that starts with it.
pub fn line_value<'a>(text: &'a str, prefix: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?} in:\n{text}"))
        .trim()
}

/// Where the servers of one system listen, as they reported it at their first start.
#[derive(Debug, Clone, Copy)]
pub struct Addrs {
    pub app_https: SocketAddr,
    pub app_ssh: SocketAddr,
    /// Comms serves HTTPS and SSH on this one address.
    pub comms: SocketAddr,
}

/// Folders and configs of an App, a Comms server (one port) and a registered Connector whose ERP is the sample
/// database, all written with the CLI. Nothing is left running.
pub struct System {
    pub dir: PathBuf,
    pub addrs: Addrs,
    pub app_cfg: PathBuf,
    pub comms_cfg: PathBuf,
    pub conn_dir: PathBuf,
    pub conn_cfg: PathBuf,
    pub erp: PathBuf,
    pub tenant: String,
}

impl System {
    pub fn conn_args(&self, cmd: &str) -> Vec<String> {
        vec!["connector".into(), cmd.into(), "--config".into(), self.conn_cfg.display().to_string()]
    }

    pub fn inbound(&self) -> PathBuf {
        self.conn_dir.join("from_cloud")
    }

    pub fn instance_db(&self) -> PathBuf {
        self.dir.join("app/data/instances").join(format!("{}.db", self.tenant))
    }

    pub fn journal_db(&self) -> PathBuf {
        self.conn_dir.join("data/journal.db")
    }

    pub fn comms_db(&self) -> PathBuf {
        self.dir.join("comms/data/comms.db")
    }

    /// `ferry app publish` of `text` as `name`.
    pub fn publish(&self, name: &str, text: &str) -> String {
        let src = self.dir.join("publish").join(name);
        std::fs::create_dir_all(src.parent().expect("parent")).expect("mkdir");
        std::fs::write(&src, text).expect("write");
        let cfg = self.app_cfg.display().to_string();
        ferry(&["app", "publish", &self.tenant, &src.display().to_string(), "--name", name, "--config", &cfg])
    }
}

/// Write the three configs (App, Comms on one port, Connector with an inbound folder and SQL write-back of
/// `po_` files; `tweak_connector` edits connector.toml last), start the Comms and App processes on port 0, route
/// `proxies` (Connector -> Comms, Comms -> App HTTPS, Comms -> App SSH; listening, not yet routed) to them, add
/// the tenant and register the Connector. Returns the system and the running App and Comms nodes.
pub fn setup(dir: &Path, proxies: &[Proxy; 3], tweak_connector: impl FnOnce(&mut toml::Table)) -> (System, Node, Node) {
    setup_with(dir, proxies, tweak_connector, |_| {})
}

/// [`setup`], with `tweak_comms` editing comms.toml before the Comms server first starts (e.g. `[database]`).
pub fn setup_with(
    dir: &Path,
    proxies: &[Proxy; 3],
    tweak_connector: impl FnOnce(&mut toml::Table),
    tweak_comms: impl FnOnce(&mut toml::Table),
) -> (System, Node, Node) {
    let app_dir = dir.join("app");
    let comms_dir = dir.join("comms");
    let conn_dir = dir.join("connector");
    for d in [&app_dir, &comms_dir, &conn_dir] {
        std::fs::create_dir_all(d).expect("mkdir");
    }
    let app_cfg = app_dir.join("app.toml");
    let comms_cfg = comms_dir.join("comms.toml");
    let (app_c, comms_c) = (app_cfg.display().to_string(), comms_cfg.display().to_string());
    ferry(&["app", "init", "--config", &app_c]);
    ferry(&["comms", "init", "--config", &comms_c]);
    let via = |p: &Proxy| format!("127.0.0.1:{}", p.port);
    edit_toml(&app_cfg, |t| {
        t.insert("data_dir".into(), app_dir.join("data").display().to_string().into());
        t.insert("listen_https".into(), "127.0.0.1:0".into());
        t.insert("listen_ssh".into(), "127.0.0.1:0".into());
        // no buyer's web page: systems of tests running at once must not clash on the default 9444
        t.insert("listen_web".into(), "off".into());
        // nor on the admin listener's default 9445
        t.insert("listen_admin".into(), "127.0.0.1:0".into());
        // the tests publish their own downstream files
        t.insert("plan_after_import".into(), false.into());
    });
    edit_toml(&comms_cfg, |t| {
        t.insert("data_dir".into(), comms_dir.join("data").display().to_string().into());
        // one port for both (equal addresses)
        t.insert("listen_https".into(), "127.0.0.1:0".into());
        t.insert("listen_ssh".into(), "127.0.0.1:0".into());
        t.insert("public_url".into(), format!("https://{}", via(&proxies[0])).into());
        t.insert("public_ssh_addr".into(), via(&proxies[0]).into());
        // a port of its own: systems of tests running at once must not clash on the default 8444
        t.insert("listen_admin".into(), "127.0.0.1:0".into());
        tweak_comms(t);
    });
    // Each side learns the other's identity from the `info` commands, as an operator would.
    let comms_info = ferry(&["comms", "info", "--config", &comms_c]);
    let app_info = ferry(&["app", "info", "--config", &app_c]);
    let app_section: toml::Table = toml::from_str::<toml::Table>(&app_info).expect("`ferry app info` is TOML")["app"]
        .as_table()
        .expect("the [app] section printed by `ferry app info`")
        .clone();
    let comms_info: toml::Table = toml::from_str(&comms_info).expect("`ferry comms info` is TOML");
    let comms_value = |k: &str| comms_info["comms"][k].as_str().expect("a [comms] value").to_string();
    edit_toml(&comms_cfg, |t| {
        let mut a = app_section.clone();
        a.insert("api_url".into(), format!("https://{}", via(&proxies[1])).into());
        a.insert("ssh_addr".into(), via(&proxies[2]).into());
        t.insert("app".into(), toml::Value::Table(a));
    });

    // Comms first: the App's config names its address. Each server's address, once known, goes into its config
    // so that a restart listens there again.
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).expect("logs");
    let started = Duration::from_secs(30);
    let mut comms = Node::new("comms", &["comms", "serve", "--config", &comms_c], &logs);
    comms.start();
    let comms_addr = comms.logged_addr("comms server listening", "https_addr", started);
    edit_toml(&comms_cfg, |t| {
        t.insert("listen_https".into(), comms_addr.to_string().into());
        t.insert("listen_ssh".into(), comms_addr.to_string().into());
    });
    proxies[0].route(comms_addr);
    edit_toml(&app_cfg, |t| {
        let key = comms_value("service_key");
        t.insert("comms_keys".into(), toml::Value::Array(vec![key.into()]));
        let c = section(t, "comms");
        c.insert("api_url".into(), format!("https://{comms_addr}").into());
        c.insert("tls_fingerprint".into(), comms_value("tls_fingerprint").into());
    });
    let mut app = Node::new("app", &["app", "serve", "--config", &app_c], &logs);
    app.start();
    let app_https = app.logged_addr("app server listening", "https_addr", started);
    let app_ssh = app.logged_addr("app server listening", "ssh_addr", started);
    edit_toml(&app_cfg, |t| {
        t.insert("listen_https".into(), app_https.to_string().into());
        t.insert("listen_ssh".into(), app_ssh.to_string().into());
    });
    proxies[1].route(app_https);
    proxies[2].route(app_ssh);
    let addrs = Addrs { app_https, app_ssh, comms: comms_addr };

    let tenant = "acme".to_string();
    let added = ferry(&["comms", "tenant", "add", &tenant, "--config", &comms_c]);
    let token = added.lines().find(|l| l.starts_with("ferry1.")).expect("a token").trim().to_string();

    let erp = conn_dir.join("erp.db");
    ferry(&["sample-erp", &erp.display().to_string()]);
    shrink_erp(&erp);
    ferry(&["connector", "init", "--dir", &conn_dir.display().to_string(), "--erp", "erp.db", "--sample"]);
    // Full extracts only: the invariants compare the instance with the last batch's row counts, which a window
    // (incremental sales.csv, tested in incremental.rs) does not carry.
    let mapping = conn_dir.join("mapping.toml");
    let text = std::fs::read_to_string(&mapping).expect("mapping.toml");
    let full: Vec<&str> = text.lines().filter(|l| !l.trim_start().starts_with("incremental")).collect();
    std::fs::write(&mapping, full.join("\n") + "\n").expect("write mapping.toml");
    let conn_cfg = conn_dir.join("connector.toml");
    edit_toml(&conn_cfg, |t| {
        let s = section(t, "schedule");
        s.insert("daily_at".into(), "".into());
        s.insert("poll_wait_secs".into(), 5.into());
        let x = section(t, "extract");
        x.insert("level".into(), 1.into());
        x.insert("wait_secs".into(), 120.into());
        let d = section(t, "delivery");
        d.insert("inbound_dir".into(), "from_cloud".into());
        d.insert("only".into(), toml::Value::Array(vec!["po_".into()]));
        // The ERP's ledger makes the write-back exactly once even when a kill lands between the ERP's commit and
        // the journal entry; a plain log without a key shows any second application.
        d.insert("ledger_table".into(), "ferry_applied".into());
        let sql = |stmt: &str| {
            let mut s = toml::Table::new();
            s.insert("statement".into(), stmt.into());
            s.insert("params".into(), toml::Value::Array(vec!["order_number".into(), "line".into(), "qty".into()]));
            toml::Value::Table(s)
        };
        d.insert(
            "sql".into(),
            toml::Value::Array(vec![
                sql("INSERT INTO recommended_orders(order_number, line, qty) VALUES (?, ?, ?)"),
                sql("INSERT INTO applied_log(order_number, line, qty) VALUES (?, ?, ?)"),
            ]),
        );
        tweak_connector(t);
    });
    ferry(&["connector", "register", "--config", &conn_cfg.display().to_string(), "--token", &token]);
    let sys = System { dir: dir.to_path_buf(), addrs, app_cfg, comms_cfg, conn_dir, conn_cfg, erp, tenant };
    (sys, app, comms)
}

/// Keeps the sample ERP's shape but only a slice of its history, so one sync takes a moment, and adds the
/// tables the write-back fills.
fn shrink_erp(erp: &Path) {
    run_sql(
        erp,
        "DELETE FROM sales_lines WHERE line_id % 20 != 0;
         CREATE TABLE recommended_orders (order_number TEXT NOT NULL, line INTEGER NOT NULL, qty REAL NOT NULL,
             PRIMARY KEY (order_number, line));
         CREATE TABLE applied_log (order_number TEXT NOT NULL, line INTEGER NOT NULL, qty REAL NOT NULL);",
    );
}

/// Runs SQL on a SQLite file through sqlx (statements separated by `;`).
pub fn run_sql(db: &Path, sql: &str) {
    let url = format!("sqlite:{}", db.display());
    let sql = sql.to_owned();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
        rt.block_on(async move {
            use sqlx::Connection;
            let mut c = sqlx::SqliteConnection::connect(&url).await.expect("open sqlite");
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut c).await.expect("sql");
        })
    })
    .join()
    .expect("sql thread");
}

/// Rows of a query on a SQLite file, every column as text.
pub fn query(db: &Path, sql: &str) -> Vec<Vec<String>> {
    let url = format!("sqlite:{}?mode=ro", db.display());
    let sql = sql.to_owned();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
        rt.block_on(async move {
            use sqlx::{Connection, Row};
            let mut c = sqlx::SqliteConnection::connect(&url).await.expect("open sqlite");
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_all(&mut c).await.expect("query");
            rows.iter()
                .map(|r| {
                    (0..r.len())
                        .map(|i| {
                            r.try_get::<String, _>(i)
                                .or_else(|_| r.try_get::<i64, _>(i).map(|v| v.to_string()))
                                .or_else(|_| r.try_get::<f64, _>(i).map(|v| v.to_string()))
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

/// What a [`Proxy`] does to the bytes it forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mode {
    /// Bumped to cut every open connection.
    generation: u64,
    stalled: bool,
}

/// A TCP proxy on 127.0.0.1 that forwards to a fixed target and, on command, cuts every open connection or
/// stalls them all (bytes stop flowing both ways; connections stay open) until resumed.
pub struct Proxy {
    pub port: u16,
    /// Where connections go; until set ([`Proxy::route`]), connections are closed at once.
    target: Arc<std::sync::Mutex<Option<SocketAddr>>>,
    mode: Arc<watch::Sender<Mode>>,
    /// Bytes forwarded towards the target / back from it.
    pub up: Arc<AtomicU64>,
    pub down: Arc<AtomicU64>,
    /// Cut everything once this many bytes went up / came down (u64::MAX: never).
    up_limit: Arc<AtomicU64>,
    down_limit: Arc<AtomicU64>,
    /// A limit once reached stays (every later connection is cut at once) instead of being lifted.
    sticky: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// A proxy on a port of its own (127.0.0.1:0) forwarding to `target`.
    pub async fn start(target: SocketAddr) -> Proxy {
        let proxy = Proxy::unrouted().await;
        proxy.route(target);
        proxy
    }

    /// A proxy listening on a port of its own, forwarding nowhere until [`Proxy::route`]d.
    pub async fn unrouted() -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("proxy bind");
        let port = listener.local_addr().expect("proxy addr").port();
        let target: Arc<std::sync::Mutex<Option<SocketAddr>>> = Arc::default();
        let to = target.clone();
        let mode = Arc::new(watch::channel(Mode { generation: 0, stalled: false }).0);
        let (up, down) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (up_limit, down_limit) = (Arc::new(AtomicU64::new(u64::MAX)), Arc::new(AtomicU64::new(u64::MAX)));
        let sticky = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (m, u, d) = (
            mode.clone(),
            (up.clone(), up_limit.clone(), sticky.clone()),
            (down.clone(), down_limit.clone(), sticky.clone()),
        );
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else { continue };
                let target = *to.lock().expect("proxy target");
                let Some(target) = target else { continue };
                let (m, u, d) = (m.clone(), u.clone(), d.clone());
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(target).await else { return };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let generation = m.borrow().generation;
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    let a = tokio::spawn(pump(cr, sw, m.clone(), generation, u));
                    let b = tokio::spawn(pump(sr, cw, m.clone(), generation, d));
                    // when one direction ends (closed or cut), end the other too
                    tokio::select! {
                        _ = a => {}
                        _ = b => {}
                    }
                });
            }
        });
        Proxy { port, target, mode, up, down, up_limit, down_limit, sticky, task }
    }

    /// Forward new connections to `target`.
    pub fn route(&self, target: SocketAddr) {
        *self.target.lock().expect("proxy target") = Some(target);
    }

    /// Cut every connection as soon as `up` more bytes went towards the target, or `down` more came back.
    pub fn cut_after(&self, up: Option<u64>, down: Option<u64>) {
        self.sticky.store(false, Ordering::SeqCst);
        let at = |n: Option<u64>, sofar: &AtomicU64| n.map_or(u64::MAX, |n| sofar.load(Ordering::SeqCst) + n);
        self.up_limit.store(at(up, &self.up), Ordering::SeqCst);
        self.down_limit.store(at(down, &self.down), Ordering::SeqCst);
    }

    /// Like [`Proxy::cut_after`], but once cut, every later connection is cut too (before it forwards a byte
    /// in that direction) until the next `cut_after`.
    pub fn cut_after_and_keep_cutting(&self, up: Option<u64>, down: Option<u64>) {
        self.cut_after(up, down);
        self.sticky.store(true, Ordering::SeqCst);
    }

    /// Closes every connection open now (new ones go through).
    pub fn cut(&self) {
        self.mode.send_modify(|m| m.generation += 1);
    }

    pub fn stall(&self, stalled: bool) {
        self.mode.send_modify(|m| m.stalled = stalled);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut();
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    modes: Arc<watch::Sender<Mode>>,
    generation: u64,
    (count, limit, sticky): (Arc<AtomicU64>, Arc<AtomicU64>, Arc<std::sync::atomic::AtomicBool>),
) {
    let mut mode = modes.subscribe();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            r = mode.changed() => {
                if r.is_err() || mode.borrow().generation != generation {
                    return;
                }
                continue;
            }
        };
        // stalled: hold the bytes until resumed (or cut)
        loop {
            let m = *mode.borrow_and_update();
            if m.generation != generation {
                return;
            }
            if !m.stalled {
                break;
            }
            if mode.changed().await.is_err() {
                return;
            }
        }
        // a byte budget: forward up to it, then cut everything
        let sofar = count.load(Ordering::SeqCst);
        let room = limit.load(Ordering::SeqCst).saturating_sub(sofar);
        let n_now = (n as u64).min(room) as usize;
        if to.write_all(buf.get(..n_now).unwrap_or_default()).await.is_err() {
            return;
        }
        count.fetch_add(n_now as u64, Ordering::SeqCst);
        if n_now < n || count.load(Ordering::SeqCst) >= limit.load(Ordering::SeqCst) {
            if !sticky.load(Ordering::SeqCst) {
                limit.store(u64::MAX, Ordering::SeqCst);
            }
            modes.send_modify(|m| m.generation += 1);
            return;
        }
    }
}

/// A listener that accepts connections and never answers (a stalled peer).
pub async fn black_hole() -> (u16, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    (port, task)
}
