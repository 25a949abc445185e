//! Ferry as deployed, three processes of this very binary on loopback: `comms serve`, `app serve` (with its
//! plan after each import, the default) and, per round, `connector sync --full`, which waits for the verdict.
//! Configured the way an operator does it: `init`, each side's `info` into the other's `init`, `tenant add`,
//! `connector init` and `register`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};

use super::procs::{Server, Usage, free_ports, output, proc_cpu, proc_peak_kib, reset_peak, run_timed, tail};
use super::{Erp, ErpKind, Measured};

const TENANT: &str = "bench";
/// Log filter of the servers: their `info` lines carry the stage timings read here.
const SERVER_LOG: &str = "info,sqlx=error";

pub(super) struct FerrySide {
    exe: PathBuf,
    comms: Server,
    app: Server,
    conn_cfg: PathBuf,
}

/// `ferry args...` to completion (quiet logs); its stdout.
fn ferry(exe: &Path, args: &[&str]) -> anyhow::Result<String> {
    output(Command::new(exe).args(args).env("FERRY_LOG", "warn,sqlx=error"))
        .with_context(|| format!("ferry {}", args.first().copied().unwrap_or_default()))
}

fn edit_toml(path: &Path, f: impl FnOnce(&mut toml::Table)) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut t: toml::Table = text.parse().with_context(|| format!("{} is not TOML", path.display()))?;
    f(&mut t);
    std::fs::write(path, toml::to_string(&t)?)?;
    Ok(())
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

impl FerrySide {
    /// Writes the three configs under `dir`, starts the Comms and App servers, adds the tenant and registers the
    /// Connector reading `erp` with `mapping`.
    pub(super) fn start(exe: &Path, dir: &Path, erp: &Erp, mapping: &str) -> anyhow::Result<FerrySide> {
        let (app_dir, comms_dir, conn_dir, logs) =
            (dir.join("app"), dir.join("comms"), dir.join("connector"), dir.join("logs"));
        for d in [&app_dir, &comms_dir, &conn_dir, &logs] {
            std::fs::create_dir_all(d)?;
        }
        let ports = free_ports(3)?;
        let at = |i: usize| format!("127.0.0.1:{}", ports[i]);
        let (app_cfg, comms_cfg) = (app_dir.join("app.toml"), comms_dir.join("comms.toml"));

        ferry(exe, &["app", "init", "--config", &s(&app_cfg)])?;
        edit_toml(&app_cfg, |t| {
            t.insert("data_dir".into(), s(&app_dir.join("data")).into());
            t.insert("listen_https".into(), at(0).into());
            t.insert("listen_ssh".into(), at(1).into());
            t.insert("listen_web".into(), "off".into());
        })?;
        let app_info = app_dir.join("app-info.toml");
        std::fs::write(&app_info, ferry(exe, &["app", "info", "--config", &s(&app_cfg)])?)?;
        ferry(exe, &["comms", "init", "--config", &s(&comms_cfg), "--app-info", &s(&app_info)])?;
        edit_toml(&comms_cfg, |t| {
            t.insert("data_dir".into(), s(&comms_dir.join("data")).into());
            // HTTPS and SSH on one port, as deployed behind one address
            t.insert("listen_https".into(), at(2).into());
            t.insert("listen_ssh".into(), at(2).into());
            t.insert("listen_admin".into(), "127.0.0.1:0".into());
        })?;
        let comms_info = comms_dir.join("comms-info.toml");
        std::fs::write(&comms_info, ferry(exe, &["comms", "info", "--config", &s(&comms_cfg)])?)?;
        ferry(exe, &["app", "init", "--config", &s(&app_cfg), "--comms-info", &s(&comms_info)])?;

        let serve = |what: &str, cfg: &Path| {
            let mut cmd = Command::new(exe);
            cmd.args([what, "serve", "--config", &s(cfg)]).env("FERRY_LOG", SERVER_LOG).env("FERRY_LOG_FORMAT", "json");
            cmd
        };
        let started = Duration::from_secs(60);
        let mut comms = Server::start("comms", &mut serve("comms", &comms_cfg), logs.join("comms.log"))?;
        comms.wait_for_line("comms server listening", 0, started)?;
        let mut app = Server::start("app", &mut serve("app", &app_cfg), logs.join("app.log"))?;
        app.wait_for_line("app server listening", 0, started)?;

        let added = ferry(exe, &["comms", "tenant", "add", TENANT, "--config", &s(&comms_cfg)])?;
        let token = added.lines().find(|l| l.starts_with("ferry1.")).context("`tenant add` printed no token")?;
        let (url, kind) = match &erp.kind {
            ErpKind::Sqlite(p) => (s(p), "sqlite"),
            ErpKind::Postgres(u) => (u.clone(), "postgres"),
        };
        let conn = s(&conn_dir);
        ferry(exe, &["connector", "init", "--dir", &conn, "--erp", &url, "--erp-kind", kind])?;
        std::fs::write(conn_dir.join("mapping.toml"), mapping)?;
        let conn_cfg = conn_dir.join("connector.toml");
        edit_toml(&conn_cfg, |t| {
            if let Some(x) = t.entry("extract").or_insert_with(|| toml::Table::new().into()).as_table_mut() {
                // the verdict of a large batch may take a while on a busy machine
                x.insert("wait_secs".into(), 7200.into());
            }
        })?;
        ferry(exe, &["connector", "register", "--config", &s(&conn_cfg), "--token", token])?;
        Ok(FerrySide { exe: exe.to_path_buf(), comms, app, conn_cfg })
    }

    /// One `connector sync --full`, from its start to its exit after the `imported` verdict, then the App's
    /// plan after the import (waited for, so that it does not run into the next contender).
    pub(super) fn round(&mut self) -> anyhow::Result<FerryRound> {
        let (comms_pid, app_pid) = (self.comms.pid(), self.app.pid());
        let (comms_from, app_from) = (self.comms.log_text().len(), self.app.log_text().len());
        for pid in [comms_pid, app_pid] {
            reset_peak(pid);
        }
        let (comms0, app0) = (proc_cpu(comms_pid, false), proc_cpu(app_pid, false));
        let run = run_timed(
            Command::new(&self.exe)
                .args(["connector", "sync", "--full", "--config", &s(&self.conn_cfg)])
                .env("FERRY_LOG", "warn,sqlx=error"),
        )?;
        let (comms1, app1) = (proc_cpu(comms_pid, false), proc_cpu(app_pid, false));
        let comms_peak = proc_peak_kib(comms_pid);
        let app_peak = proc_peak_kib(app_pid);
        let stdout = run.stdout();
        let imported = stdout.lines().any(|l| l.starts_with("batch ") && l.contains(": imported ("));
        if !run.status.success() || !imported {
            bail!("connector sync --full ({}):\n{}\n{}", run.status, tail(&stdout), tail(&run.stderr));
        }
        // Per file: "  name  rows rows  bytes bytes -> bz2 bz2", printed once the extract is done.
        let mut files = BTreeMap::new();
        for (_, l) in &run.lines {
            if let [name, rows, "rows", bytes, "bytes", "->", _, "bz2"] = l.split_whitespace().collect::<Vec<_>>()[..]
                && let (Ok(rows), Ok(bytes)) = (rows.parse::<u64>(), bytes.parse::<u64>())
            {
                files.insert(name.to_string(), (rows, bytes));
            }
        }

        let plan_wait = Duration::from_secs(1800);
        let plan_line = self.app.wait_for_line("after import", app_from, plan_wait).ok();
        let app2 = proc_cpu(app_pid, false);
        let app_plan_peak = proc_peak_kib(app_pid);
        let comms_log = self.comms.log_text();
        let app_log = self.app.log_text();
        let relay = logged_secs(comms_log.get(comms_from..).unwrap_or_default(), "batch relayed");
        let import = logged_secs(app_log.get(app_from..).unwrap_or_default(), "import finished");

        // Stages from the Connector's progress lines (as they arrived) and the servers' own timings.
        let t_extract = run.at(|l| l.starts_with("extracting batch"));
        let t_extracted = run.at(|l| l.ends_with(" bz2") && l.contains(" rows "));
        let t_uploaded = run.at(|l| l.starts_with("uploaded "));
        let t_complete = run.at(|l| l.contains("complete at the Comms server"));
        let t_verdict = run.at(|l| l.starts_with("batch ") && l.ends_with(": imported"));
        let span = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| b - a);
        let waited = span(t_complete, t_verdict).map(|w| w - relay.unwrap_or(0.0) - import.unwrap_or(0.0));
        let stages = vec![
            ("start, journal, plan", t_extract),
            ("extract+validate+bzip2 (Connector)", span(t_extract, t_extracted)),
            ("upload SFTP (Connector -> Comms)", span(t_extracted, t_uploaded)),
            ("complete call (Comms: size+hash check)", span(t_uploaded, t_complete)),
            ("relay SFTP (Comms -> App, Comms log)", relay),
            ("decompress+verify+import (App log)", import),
            ("queue + verdict polling", waited),
            ("exit", t_verdict.map(|t| run.wall - t)),
        ];
        let cpu = |a: Option<f64>, b: Option<f64>| a.zip(b).map_or(0.0, |(a, b)| b - a);
        let procs = vec![
            ("connector sync".to_string(), run.usage),
            ("comms serve".to_string(), Usage { cpu: cpu(comms0, comms1), rss_kib: comms_peak }),
            // the plan starts once the import has answered, while the Connector polls for the verdict
            ("app serve (import, and the plan so far)".to_string(), Usage { cpu: cpu(app0, app1), rss_kib: app_peak }),
            (
                format!("app serve (rest of the plan{})", if plan_line.is_some() { "" } else { ": end not seen" }),
                Usage { cpu: cpu(app1, app2), rss_kib: app_plan_peak },
            ),
        ];
        let bytes = files.values().map(|(_, b)| b).sum();
        let rows = files.values().map(|(r, _)| r).sum();
        let measured = Measured { wall: run.wall, stages, procs, bytes, rows };
        Ok(FerryRound { measured, files })
    }

    pub(super) fn stop(mut self) {
        self.app.stop();
        self.comms.stop();
    }
}

/// A Ferry round: the figures, and rows and CSV bytes per file as the Connector reported them.
pub(super) struct FerryRound {
    pub(super) measured: Measured,
    pub(super) files: BTreeMap<String, (u64, u64)>,
}

/// `secs` of the last JSON log line whose message is `message`.
fn logged_secs(log: &str, message: &str) -> Option<f64> {
    log.lines()
        .filter(|l| l.starts_with('{') && l.contains(message))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["fields"]["message"].as_str() == Some(message))
        .filter_map(|v| v["fields"]["secs"].as_f64())
        .next_back()
}
