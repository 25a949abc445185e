//! A cloud side of separate OS processes for the cluster tests and `ferry bench cluster`: N `ferry comms serve`
//! replicas on one PostgreSQL database and one comms.toml identity, Debian's haproxy in TCP mode in front of them
//! on one port, and M `ferry app serve` processes registered with `ferry comms app add`. Every config is written
//! by the CLI's own `init` commands; every server listens on 127.0.0.1.
//!
//! Each replica has its own copy of comms.toml (`comms-<i>.toml`, the same but for the listen addresses: replicas
//! on one machine need their own ports), so that a replica killed with `kill -9` restarts on its address and
//! haproxy finds it there again.
//!
//! The Comms file storage is switched in one place, [`storage_toml`]: the extra comms.toml it returns (empty: the
//! shared local data folder).

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// The extra comms.toml that selects the Comms file storage of a cluster. Empty: the shared local data folder
/// (every replica on this machine uses the same `data_dir`). `FERRY_TEST_COMMS_STORAGE=s3`: a `[storage]` section
/// on the test S3 server of `scripts/test-s3.sh` (`FERRY_TEST_S3_ENDPOINT`, `FERRY_TEST_S3_BUCKET`; the
/// credentials stay in the environment the servers inherit), under a fresh prefix. The one place that switches
/// the cluster tests and the bench.
pub fn storage_toml() -> anyhow::Result<String> {
    match std::env::var(crate::cluster::TEST_COMMS_STORAGE).unwrap_or_default().as_str() {
        "" | "local" => Ok(String::new()),
        "s3" => {
            #[derive(serde::Serialize)]
            struct Section {
                storage: ferry_comms::store::StorageConfig,
            }
            let storage = crate::cluster::test_s3_storage().context("FERRY_TEST_COMMS_STORAGE=s3")?;
            toml::to_string(&Section { storage }).context("cannot write the [storage] section")
        }
        other => bail!("FERRY_TEST_COMMS_STORAGE={other:?}: `local` (the default) or `s3`"),
    }
}

/// What to start.
#[derive(Debug, Clone)]
pub struct Options {
    /// The `ferry` binary.
    pub exe: PathBuf,
    /// A new or empty folder: configs, data and `logs/`.
    pub dir: PathBuf,
    /// The Comms metadata database (`postgres://...`), created already.
    pub database_url: String,
    /// `[database] password_env`, if the password is not in the URL.
    pub password_env: Option<String>,
    pub replicas: usize,
    pub apps: usize,
    pub haproxy: PathBuf,
    /// `[connections] max_per_address` of the replicas (every connection through haproxy comes from one address).
    pub max_per_address: u64,
    /// `FERRY_LOG` of the servers.
    pub log_filter: String,
}

/// A long-running child with stdout and stderr appended to a log file; it can be killed and started again.
pub struct Proc {
    pub name: String,
    program: PathBuf,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    pub log: PathBuf,
    child: Option<Child>,
    pub starts: u32,
}

impl Proc {
    pub fn new(name: &str, program: &Path, args: &[&str], log: PathBuf) -> Proc {
        Proc {
            name: name.into(),
            program: program.to_path_buf(),
            args: args.iter().map(|a| a.to_string()).collect(),
            envs: Vec::new(),
            log,
            child: None,
            starts: 0,
        }
    }

    pub fn env(mut self, k: &str, v: &str) -> Proc {
        self.envs.push((k.into(), v.into()));
        self
    }

    pub fn start(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            bail!("{} is running already", self.name);
        }
        let out = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("cannot open {}", self.log.display()))?;
        let err = out.try_clone()?;
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args).stdin(Stdio::null()).stdout(out).stderr(err);
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().with_context(|| format!("cannot start {} ({:?})", self.name, self.program))?);
        self.starts += 1;
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// `kill -9`, and reap it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited within 10 s; reaped either way.
    pub fn stop(&mut self) {
        let Some(mut c) = self.child.take() else { return };
        // SAFETY: kill has no memory preconditions; the pid is our own unreaped child.
        unsafe {
            libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
        }
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10) {
            if matches!(c.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The value of `field=` on the first log line containing `what` (after byte `from`), waiting up to `limit`.
    pub fn logged(&mut self, what: &str, field: &str, from: usize, limit: Duration) -> anyhow::Result<String> {
        let t = Instant::now();
        loop {
            let text = self.log_text();
            let found = text.get(from..).unwrap_or_default().lines().filter(|l| l.contains(what)).find_map(|l| {
                let rest = &l[l.find(&format!("{field}="))? + field.len() + 1..];
                rest.split_whitespace().next().map(|v| v.trim_matches('"').to_string())
            });
            if let Some(v) = found {
                return Ok(v);
            }
            if !self.is_running() {
                bail!("{} exited before logging {what:?}:\n{}", self.name, tail(&text));
            }
            if t.elapsed() > limit {
                bail!("{} did not log {what:?} within {limit:?}:\n{}", self.name, tail(&text));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The last 30 lines of a log.
pub fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Runs `ferry args...` to completion: its stdout, or an error with its output.
pub fn ferry(exe: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(exe)
        .args(args)
        .env("FERRY_LOG", "warn,sqlx=error")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", exe.display()))?;
    if !out.status.success() {
        bail!(
            "ferry {args:?} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Edits a TOML file in place.
pub fn edit_toml(path: &Path, f: impl FnOnce(&mut toml::Table)) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut t: toml::Table = text.parse().with_context(|| format!("{} is not TOML", path.display()))?;
    f(&mut t);
    std::fs::write(path, toml::to_string(&t)?).with_context(|| format!("cannot write {}", path.display()))
}

/// The table `name` of `t`, created if missing.
pub fn section<'a>(t: &'a mut toml::Table, name: &str) -> &'a mut toml::Table {
    let v = t.entry(name.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if !v.is_table() {
        *v = toml::Value::Table(toml::Table::new());
    }
    v.as_table_mut().expect("a table: made one just above")
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// A free port of 127.0.0.1 (for haproxy, which cannot report the port it bound).
fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Debian's haproxy in TCP mode on `lb` in front of `servers` (each `ADDR [OPTIONS]`, e.g. `127.0.0.1:4000 check
/// inter 300ms fall 2 rise 1` or `127.0.0.1:4000 send-proxy-v2`), balanced by `balance` (`roundrobin`,
/// `leastconn`), retrying a refused connection on another server; its config in `dir/haproxy.cfg`, its output in
/// `logs/haproxy.log`. Returns once it listens (stopped when dropped).
pub fn start_haproxy(
    haproxy: &Path,
    lb: SocketAddr,
    balance: &str,
    servers: &[String],
    dir: &Path,
    logs: &Path,
) -> anyhow::Result<Proc> {
    let servers: String = servers.iter().enumerate().map(|(i, a)| format!("    server comms{i} {a}\n")).collect();
    let hcfg = dir.join("haproxy.cfg");
    std::fs::write(
        &hcfg,
        format!(
            "global\n    maxconn 8000\ndefaults\n    mode tcp\n    timeout connect 2s\n    timeout client 5m\n    \
             timeout server 5m\n    retries 2\n    option redispatch\nfrontend ferry\n    bind {lb}\n    \
             default_backend comms\nbackend comms\n    balance {balance}\n{servers}"
        ),
    )?;
    let mut p = Proc::new("haproxy", haproxy, &["-db", "-f", &s(&hcfg)], logs.join("haproxy.log"));
    p.start()?;
    let t = Instant::now();
    while std::net::TcpStream::connect(lb).is_err() {
        if t.elapsed() > Duration::from_secs(10) || !p.is_running() {
            bail!("haproxy never listened on {lb}:\n{}", tail(&p.log_text()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(p)
}

/// The running cloud side.
pub struct ProcCluster {
    pub exe: PathBuf,
    pub dir: PathBuf,
    /// haproxy's address: the one address Connectors and App servers know.
    pub lb: SocketAddr,
    /// The shared comms.toml (the CLI's `ferry comms ...` commands use it).
    pub comms_cfg: PathBuf,
    pub replicas: Vec<Proc>,
    /// Where each replica listens (HTTPS and SSH on one port).
    pub replica_addrs: Vec<SocketAddr>,
    pub apps: Vec<Proc>,
    pub app_cfgs: Vec<PathBuf>,
    /// The App servers' names at Comms (`app0`, `app1`, ...).
    pub app_names: Vec<String>,
    pub haproxy: Proc,
    pub logs: PathBuf,
}

impl ProcCluster {
    /// Writes every config, starts the App servers, the replicas and haproxy, and registers the App servers with
    /// `ferry comms app add` (`app_info` may edit each one's `ferry app info` first, e.g. to put a proxy between
    /// Comms and it).
    pub fn start(o: &Options, mut app_info: impl FnMut(usize, &mut toml::Table)) -> anyhow::Result<ProcCluster> {
        let (comms_dir, logs) = (o.dir.join("comms"), o.dir.join("logs"));
        for d in [&comms_dir, &logs] {
            std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
        }
        let exe = o.exe.as_path();
        let comms_cfg = comms_dir.join("comms.toml");
        let lb = free_addr()?;
        let started = Duration::from_secs(60);

        ferry(exe, &["comms", "init", "--config", &s(&comms_cfg)])?;
        let storage: toml::Table = storage_toml()?.parse().context("storage_toml() is not TOML")?;
        edit_toml(&comms_cfg, |t| {
            t.insert("data_dir".into(), s(&comms_dir.join("data")).into());
            t.insert("listen_https".into(), "127.0.0.1:0".into());
            t.insert("listen_ssh".into(), "127.0.0.1:0".into());
            t.insert("listen_admin".into(), "127.0.0.1:0".into());
            t.insert("public_url".into(), format!("https://{lb}").into());
            t.insert("public_ssh_addr".into(), lb.to_string().into());
            let d = section(t, "database");
            d.insert("url".into(), o.database_url.clone().into());
            if let Some(env) = &o.password_env {
                d.insert("password_env".into(), env.clone().into());
            }
            section(t, "connections").insert("max_per_address".into(), (o.max_per_address as i64).into());
            for (k, v) in storage {
                t.insert(k, v);
            }
        })?;
        let comms_info = comms_dir.join("comms-info.toml");
        std::fs::write(&comms_info, ferry(exe, &["comms", "info", "--config", &s(&comms_cfg)])?)?;

        // the App servers: announce downstream files through haproxy
        let (mut apps, mut app_cfgs, mut app_infos) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..o.apps {
            let app_dir = o.dir.join(format!("app{i}"));
            std::fs::create_dir_all(&app_dir)?;
            let cfg = app_dir.join("app.toml");
            ferry(exe, &["app", "init", "--config", &s(&cfg)])?;
            ferry(exe, &["app", "init", "--config", &s(&cfg), "--comms-info", &s(&comms_info)])?;
            edit_toml(&cfg, |t| {
                t.insert("data_dir".into(), s(&app_dir.join("data")).into());
                t.insert("listen_https".into(), "127.0.0.1:0".into());
                t.insert("listen_ssh".into(), "127.0.0.1:0".into());
                t.insert("listen_web".into(), "off".into());
                t.insert("listen_admin".into(), "127.0.0.1:0".into());
                t.insert("plan_after_import".into(), false.into());
                section(t, "comms").insert("api_url".into(), format!("https://{lb}").into());
            })?;
            let mut p = Proc::new(
                &format!("app{i}"),
                exe,
                &["app", "serve", "--config", &s(&cfg)],
                logs.join(format!("app{i}.log")),
            )
            .env("FERRY_LOG", &o.log_filter)
            .env("FERRY_LOG_FORMAT", "text")
            .env("NO_COLOR", "1");
            p.start()?;
            let https = p.logged("app server listening", "https_addr", 0, started)?;
            let ssh = p.logged("app server listening", "ssh_addr", 0, started)?;
            edit_toml(&cfg, |t| {
                t.insert("listen_https".into(), https.clone().into());
                t.insert("listen_ssh".into(), ssh.clone().into());
            })?;
            let mut info: toml::Table = ferry(exe, &["app", "info", "--config", &s(&cfg)])?.parse()?;
            {
                let a = section(&mut info, "app");
                a.insert("api_url".into(), format!("https://{https}").into());
                a.insert("ssh_addr".into(), ssh.into());
            }
            app_info(i, &mut info);
            let info_file = app_dir.join("app-info.toml");
            std::fs::write(&info_file, toml::to_string(&info)?)?;
            apps.push(p);
            app_cfgs.push(cfg);
            app_infos.push(info_file);
        }

        // registered before any replica starts (the command creates the schema)
        let app_names: Vec<String> = (0..o.apps).map(|i| format!("app{i}")).collect();
        for (name, info) in app_names.iter().zip(&app_infos) {
            ferry(exe, &["comms", "app", "add", name, "--info", &s(info), "--config", &s(&comms_cfg)])?;
        }

        // the replicas: one config each (its own port)
        let (mut replicas, mut replica_addrs) = (Vec::new(), Vec::new());
        for i in 0..o.replicas {
            let cfg = comms_dir.join(format!("comms-{i}.toml"));
            std::fs::copy(&comms_cfg, &cfg)?;
            let mut p = Proc::new(
                &format!("comms-{i}"),
                exe,
                &["comms", "serve", "--config", &s(&cfg)],
                logs.join(format!("comms-{i}.log")),
            )
            .env("FERRY_LOG", &o.log_filter)
            .env("FERRY_LOG_FORMAT", "text")
            .env("NO_COLOR", "1");
            p.start()?;
            let addr: SocketAddr = p.logged("comms server listening", "https_addr", 0, started)?.parse()?;
            edit_toml(&cfg, |t| {
                t.insert("listen_https".into(), addr.to_string().into());
                t.insert("listen_ssh".into(), addr.to_string().into());
            })?;
            replicas.push(p);
            replica_addrs.push(addr);
        }

        let servers: Vec<String> =
            replica_addrs.iter().map(|a| format!("{a} check inter 300ms fall 2 rise 1")).collect();
        let haproxy = start_haproxy(&o.haproxy, lb, "leastconn", &servers, &o.dir, &logs)?;
        Ok(ProcCluster {
            exe: o.exe.clone(),
            dir: o.dir.clone(),
            lb,
            comms_cfg,
            replicas,
            replica_addrs,
            apps,
            app_cfgs,
            app_names,
            haproxy,
            logs,
        })
    }

    /// `ferry comms tenant add NAME [--app APP]`: the registration token.
    pub fn add_tenant(&self, name: &str, app: Option<&str>) -> anyhow::Result<String> {
        let cfg = s(&self.comms_cfg);
        let mut args = vec!["comms", "tenant", "add", name, "--config", &cfg];
        if let Some(a) = app {
            args.extend(["--app", a]);
        }
        let out = ferry(&self.exe, &args)?;
        Ok(out.lines().find(|l| l.starts_with("ferry1.")).context("`tenant add` printed no token")?.trim().to_string())
    }

    /// A Connector in `<dir>/conn-<tenant>` reading `erp` (a sample ERP, absolute path; only read, so several
    /// Connectors may share it), full extracts, files from the cloud into `from_cloud/`; registered through
    /// haproxy with `token`. Returns its connector.toml.
    pub fn add_connector(&self, tenant: &str, token: &str, erp: &Path) -> anyhow::Result<PathBuf> {
        let cdir = self.dir.join(format!("conn-{tenant}"));
        std::fs::create_dir_all(&cdir)?;
        ferry(&self.exe, &["connector", "init", "--dir", &s(&cdir), "--erp", &s(erp), "--sample"])?;
        // full extracts only: each batch stands alone
        let mapping = cdir.join("mapping.toml");
        let text = std::fs::read_to_string(&mapping)?;
        let full: Vec<&str> = text.lines().filter(|l| !l.trim_start().starts_with("incremental")).collect();
        std::fs::write(&mapping, full.join("\n") + "\n")?;
        let cfg = cdir.join("connector.toml");
        edit_toml(&cfg, |t| {
            section(t, "schedule").insert("daily_at".into(), "".into());
            let x = section(t, "extract");
            x.insert("level".into(), 1.into());
            x.insert("wait_secs".into(), 600.into());
            let d = section(t, "delivery");
            d.insert("inbound_dir".into(), "from_cloud".into());
            d.insert("only".into(), toml::Value::Array(vec!["po_".into()]));
        })?;
        ferry(&self.exe, &["connector", "register", "--config", &s(&cfg), "--token", token])?;
        Ok(cfg)
    }

    /// The replicas (by index) whose log has a line holding every one of `words`.
    pub fn replicas_logging(&self, words: &[&str]) -> Vec<usize> {
        (0..self.replicas.len())
            .filter(|&i| self.replicas[i].log_text().lines().any(|l| words.iter().all(|w| l.contains(w))))
            .collect()
    }

    /// Stops every process (SIGTERM, then SIGKILL).
    pub fn stop(&mut self) {
        self.haproxy.stop();
        for p in self.replicas.iter_mut().chain(self.apps.iter_mut()) {
            p.stop();
        }
    }
}

impl Drop for ProcCluster {
    fn drop(&mut self) {
        self.haproxy.kill9();
        for p in self.replicas.iter_mut().chain(self.apps.iter_mut()) {
            p.kill9();
        }
    }
}

/// Shrinks a sample ERP to every `keep_every`-th sales line and adds the table the write-back fills.
pub async fn shrink_erp(erp: &Path, keep_every: u32) -> anyhow::Result<()> {
    use sqlx::Connection;
    let mut c = sqlx::SqliteConnection::connect(&format!("sqlite:{}", erp.display())).await?;
    sqlx::query("DELETE FROM sales_lines WHERE line_id % ? != 0")
        .bind(i64::from(keep_every.max(1)))
        .execute(&mut c)
        .await?;
    sqlx::query("VACUUM").execute(&mut c).await?;
    c.close().await?;
    Ok(())
}
