//! The Windows Connector for real: `ferry.exe` (built for `x86_64-pc-windows-gnu`, named by `FERRY_WINDOWS_EXE`;
//! `.ci/run` builds it) runs under Wine against Linux Comms and App servers on 127.0.0.1: `init` with Windows
//! paths (spaces, non-ASCII letters), `check`, `register`, `sync` (the instance's rows equal the ERP's),
//! `receive` (the planner's order files in the inbound folder), `status`, the private key's ACL, and the
//! Windows service (install, start, files delivered by the service, stop, uninstall) under Wine's service
//! manager.
//!
//! Wine 8 (Debian 12) lacks `bcryptprimitives.dll`, which Rust's standard library imports for random bytes; the
//! test builds `tests/wine/bcryptprimitives.c` with MinGW next to its copy of ferry.exe (Windows loads DLLs from
//! the program's folder first). The shim is test-only and never shipped: on Windows the system's DLL is used.
//!
//! Without `FERRY_WINDOWS_EXE`, Wine or MinGW the test says so and passes, except under `FERRY_CI=1`, where it
//! fails.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use crate::common::*;
use ferry_connector::mapping::Mapping;
use ferry_proto::api::FileState;
use ferry_proto::spec;
use ferry_sample::{SampleSize, generate_sample_erp};
use sqlx::Connection;

/// What the test needs from the machine, or why it cannot run.
struct Wine {
    exe: PathBuf,
    prefix: PathBuf,
}

fn missing(why: &str) -> Option<Wine> {
    if std::env::var_os("FERRY_CI").is_some() {
        panic!("the Windows Connector test cannot run: {why}");
    }
    eprintln!("SKIPPED the Windows Connector under Wine: {why}");
    None
}

fn on_path(cmd: &str) -> bool {
    std::process::Command::new(cmd).arg("--version").output().is_ok_and(|o| o.status.success())
}

/// Copy ferry.exe into `dir/bin`, build the shim beside it, and make a Wine prefix under `dir`.
async fn setup(dir: &Path) -> Option<Wine> {
    let Some(exe) = std::env::var_os("FERRY_WINDOWS_EXE").map(PathBuf::from) else {
        return missing("FERRY_WINDOWS_EXE is not set (cargo build --target x86_64-pc-windows-gnu -p ferry)");
    };
    if !exe.is_file() {
        return missing(&format!("FERRY_WINDOWS_EXE={} does not exist", exe.display()));
    }
    if !on_path("wine") {
        return missing("wine is not installed (apt-get install wine64)");
    }
    if !on_path("x86_64-w64-mingw32-gcc") {
        return missing("MinGW is not installed (apt-get install gcc-mingw-w64-x86-64)");
    }
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy(&exe, bin.join("ferry.exe")).unwrap();
    let shim = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/wine/bcryptprimitives.c");
    let out = std::process::Command::new("x86_64-w64-mingw32-gcc")
        .args(["-shared", "-O2", "-o"])
        .arg(bin.join("bcryptprimitives.dll"))
        .arg(&shim)
        .arg("-ladvapi32")
        .output()
        .unwrap();
    assert!(out.status.success(), "building the shim: {}", String::from_utf8_lossy(&out.stderr));
    let w = Wine { exe: bin.join("ferry.exe"), prefix: dir.join("wineprefix") };
    let boot = w.command("wineboot").arg("--init").output().await.unwrap();
    assert!(boot.status.success(), "wineboot: {}", String::from_utf8_lossy(&boot.stderr));
    Some(w)
}

/// Whatever happens, the Wine session of the test's prefix (wineserver, the service manager, a service) ends
/// with the test.
impl Drop for Wine {
    fn drop(&mut self) {
        let _ = std::process::Command::new("wineserver")
            .arg("-k")
            .env("WINEPREFIX", &self.prefix)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

impl Wine {
    fn command(&self, program: &str) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(program);
        c.env("WINEPREFIX", &self.prefix)
            .env("WINEDEBUG", "-all")
            // no Mono or Gecko installer prompts; no display
            .env("WINEDLLOVERRIDES", "mscoree,mshtml=")
            .env_remove("DISPLAY")
            .env("LANG", "C.UTF-8")
            .env("FERRY_LOG", "warn,sqlx=error")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        c
    }

    /// `wine ferry.exe args...` with `stdin` as its standard input. Output goes through files, not pipes: Wine's
    /// own processes (the service manager, a service) inherit the handles and would hold a pipe open.
    async fn ferry_with_input(&self, args: &[&str], stdin: &str) -> Output {
        use tokio::io::AsyncWriteExt;
        let out_dir = tempfile::tempdir().unwrap();
        let (out_path, err_path) = (out_dir.path().join("stdout"), out_dir.path().join("stderr"));
        let mut c = self.command("wine");
        c.arg(&self.exe).args(args).stdin(std::process::Stdio::piped());
        c.stdout(std::fs::File::create(&out_path).unwrap()).stderr(std::fs::File::create(&err_path).unwrap());
        let mut child = c.spawn().unwrap();
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin.as_bytes()).await.unwrap();
        drop(input);
        let status = tokio::time::timeout(Duration::from_secs(300), child.wait())
            .await
            .unwrap_or_else(|_| panic!("ferry.exe {args:?} did not finish in 300 s"))
            .unwrap();
        Output { status, stdout: std::fs::read(&out_path).unwrap(), stderr: std::fs::read(&err_path).unwrap() }
    }

    async fn ferry_output(&self, args: &[&str]) -> Output {
        self.ferry_with_input(args, "").await
    }

    /// `wine ferry.exe args...`, which must succeed; its standard output.
    async fn ferry(&self, args: &[&str]) -> String {
        let out = self.ferry_output(args).await;
        assert!(out.status.success(), "ferry.exe {args:?} failed ({}):\n{}", out.status, text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// The Windows name of a Linux path under Wine's default `Z:` drive (the root of the Unix file system).
fn win(p: &Path) -> String {
    format!("Z:{}", p.display()).replace('/', "\\")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_windows_connector_runs_under_wine_against_linux_servers() {
    let dir = tempfile::tempdir().unwrap();
    let Some(wine) = setup(dir.path()).await else { return };
    let c = ferry::cluster::Cluster::start(&dir.path().join("cloud")).await.unwrap();

    // The ERP and the Connector's folder as a Windows admin would name them: a drive path with spaces and
    // non-ASCII letters (a TOML basic string would have turned `\t` into a tab).
    let erp_dir = dir.path().join("ERP data").join("société");
    std::fs::create_dir_all(&erp_dir).unwrap();
    let erp = erp_dir.join("tryton erp.db");
    generate_sample_erp(&erp, SampleSize::Small).await.unwrap();
    let conn_dir = dir.path().join("Ferry Connector");
    let config = win(&conn_dir.join("connector.toml"));

    let out = wine.ferry(&["connector", "init", "--dir", &win(&conn_dir), "--erp", &win(&erp), "--sample"]).await;
    assert!(out.contains("fingerprint"), "{out}");
    let written: toml::Table =
        toml::from_str(&std::fs::read_to_string(conn_dir.join("connector.toml")).unwrap()).unwrap();
    assert_eq!(written["erp"]["url"].as_str(), Some(win(&erp).as_str()), "the Windows path survives the TOML file");

    // An ODBC connection string naming a UNC share, and a password with quotes and backslashes, read from stdin.
    let other = dir.path().join("other connector");
    let odbc = r"Driver={SQL Server};Server=erp\sql01;Database=\\fileserver\erp share\data.mdb";
    let password = r#"p"a\ss\w'ord\"#;
    let out = wine
        .ferry_with_input(
            &["connector", "init", "--dir", &win(&other), "--erp-kind", "odbc", "--erp", odbc, "--erp-password-stdin"],
            &format!("{password}\r\n"),
        )
        .await;
    assert!(out.status.success(), "{}", text(&out));
    let written: toml::Table = toml::from_str(&std::fs::read_to_string(other.join("connector.toml")).unwrap()).unwrap();
    assert_eq!(written["erp"]["url"].as_str(), Some(odbc));
    assert_eq!(written["erp"]["password"].as_str(), Some(password));

    // The key was created with an owner-only ACL; every command below loads it, so the check of its ACL passes.
    // (Wine keeps an ACL as a Unix mode: the owner's entry as the owner's bits, SYSTEM's and Administrators' as
    // the group's, so the file shows 0750 here; Everyone's entry would be the other bits.)
    let key = conn_dir.join("keys").join("ferry_key");

    let out = wine.ferry(&["connector", "check", "--config", &config]).await;
    assert!(out.contains("sales.csv"), "{out}");
    let token = c.add_tenant("winco").await.unwrap();
    // the App releases its plans at once (a buyer's review is tested in release.rs)
    let app_inst = c.app.state.instance("winco").await.unwrap().unwrap();
    ferry_app::release::set_policy(&app_inst.0, ferry_app::release::Policy::Auto).await.unwrap();
    let out = wine.ferry(&["connector", "register", "--config", &config, "--token", &token]).await;
    assert!(out.contains("registered as tenant winco"), "{out}");
    let out = wine.ferry(&["connector", "sync", "--config", &config]).await;
    assert!(out.contains("imported"), "{out}");

    // The instance holds exactly the ERP's rows.
    let mapping = Mapping::from_toml(ferry_sample::MAPPING).unwrap();
    let mut erp_db = sqlx::SqliteConnection::connect(&format!("sqlite:{}", erp.display())).await.unwrap();
    let inst = counts(&c, "winco").await;
    for (name, file) in &mapping.files {
        let q = &file.query;
        let in_erp: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM ({q})")))
            .fetch_one(&mut erp_db)
            .await
            .unwrap();
        let table = spec::file_spec(name).unwrap().table;
        assert!(in_erp > 0, "{name} is empty in the sample ERP");
        assert_eq!(inst[table], in_erp as u64, "{name}: instance rows vs ERP rows");
    }

    // Downstream: the planner's order files arrive in the inbound folder, byte for byte.
    let published = async || !ferry_app::outbox::receipts(&app_inst.0).await.unwrap().is_empty();
    assert!(eventually(Duration::from_secs(60), published).await.is_some(), "the App published no order files");
    let receipts = ferry_app::outbox::receipts(&app_inst.0).await.unwrap();
    let inbound = conn_dir.join("from_cloud");
    for _ in 0..10 {
        if receipts.iter().all(|r| inbound.join(&r.name).exists()) {
            break;
        }
        wine.ferry(&["connector", "receive", "--config", &config, "--wait", "5"]).await;
    }
    for r in &receipts {
        let produced = c.app.state.cfg.data_dir.join("sftp/winco/outbox").join(r.file_id.as_str()).join(&r.name);
        assert_eq!(std::fs::read(inbound.join(&r.name)).unwrap(), std::fs::read(&produced).unwrap(), "{}", r.name);
    }
    // the files received above (a later plan may publish more while we wait; those are not ours to check)
    let ours: Vec<_> = receipts.iter().map(|r| r.file_id.clone()).collect();
    let delivered = async || {
        let now = ferry_app::outbox::receipts(&app_inst.0).await.unwrap();
        now.iter().filter(|f| ours.contains(&f.file_id)).all(|f| f.state == FileState::Delivered)
    };
    if eventually(Duration::from_secs(90), delivered).await.is_none() {
        let now = ferry_app::outbox::receipts(&app_inst.0).await.unwrap();
        let states: Vec<String> =
            now.iter().map(|f| format!("{} {} {:?}", f.file_id.as_str(), f.name, f.state)).collect();
        panic!("not all files seen delivered within 90 s:\n{}", states.join("\n"));
    }

    let out = wine.ferry(&["connector", "status", "--config", &config]).await;
    assert!(out.contains("imported"), "{out}");

    // A key others may read is refused, with the fix (Wine shows the Unix mode 0644 as an ACL granting Everyone).
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let out = wine.ferry_output(&["connector", "status", "--config", &config]).await;
        assert!(!out.status.success() && text(&out).contains("icacls"), "{}", text(&out));
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    service_under_wine(&wine, &c, &config, &conn_dir, &app_inst.0).await;
}

/// The Connector as a Windows service under Wine's service manager: installed, started (it runs `connector
/// run` and delivers a newly planned file), stopped after its current step, removed.
async fn service_under_wine(
    wine: &Wine,
    c: &ferry::cluster::Cluster,
    config: &str,
    conn_dir: &Path,
    inst: &ferry_app::instance::Instance,
) {
    // Keep the Wine session (and with it the service manager and the service) up between the commands. A
    // persistent server only starts once the one left by the previous command has gone (a second one exits at
    // once, and the lingering one would later stop the service with it).
    let mut server = None;
    for _ in 0..10 {
        let _ = wine.command("wineserver").arg("-w").status().await;
        let mut s = wine
            .command("wineserver")
            .args(["-p", "-f"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        if s.try_wait().unwrap().is_none() {
            server = Some(s);
            break;
        }
    }
    let mut server = server.expect("a persistent wineserver did not start");
    let name = "FerryTest";
    let out = wine.ferry(&["connector", "service", "install", "--config", config, "--name", name]).await;
    assert!(out.contains("installed"), "{out}");
    let out = wine.ferry_output(&["connector", "service", "status", "--name", name]).await;
    assert_eq!(out.status.code(), Some(3), "installed, not running: {}", text(&out));
    wine.ferry(&["connector", "service", "start", "--name", name]).await;
    let out = wine.ferry(&["connector", "service", "status", "--name", name]).await;
    assert!(out.contains("running"), "{out}");

    // A file published now reaches the inbound folder through the service.
    let src = conn_dir.join("report.csv");
    std::fs::write(&src, "\"A1\",\"L1\",12\n").unwrap();
    let sftp_root = c.app.state.cfg.data_dir.join("sftp");
    ferry_app::outbox::publish(inst, "winco", &sftp_root, &src, "report_service.csv").await.unwrap();
    let arrived = conn_dir.join("from_cloud").join("report_service.csv");
    let log = conn_dir.join("data").join("connector-service.log");
    if eventually(Duration::from_secs(90), async || arrived.exists()).await.is_none() {
        let server_state = match server.try_wait() {
            Ok(None) => "running".to_string(),
            other => format!("gone ({other:?})"),
        };
        panic!(
            "the service did not deliver the file (wineserver {server_state}); its log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
    assert_eq!(std::fs::read(&arrived).unwrap(), std::fs::read(&src).unwrap());

    wine.ferry(&["connector", "service", "stop", "--name", name, "--timeout", "120"]).await;
    let out = wine.ferry_output(&["connector", "service", "status", "--name", name]).await;
    assert_eq!(out.status.code(), Some(3), "stopped: {}", text(&out));
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(log_text.contains("connector running") && log_text.contains("stop requested"), "{log_text}");
    assert!(log_text.contains(&format!("service {name} stopped")), "{log_text}");
    wine.ferry(&["connector", "service", "uninstall", "--name", name]).await;
    let out = wine.ferry_output(&["connector", "service", "status", "--name", name]).await;
    assert_eq!(out.status.code(), Some(4), "uninstalled: {}", text(&out));
    // the prefix's Wine processes (winedevice.exe, the service manager) end through their server; killing only
    // the server left them running after the test
    let _ = wine.command("wineserver").arg("-k").status().await;
    let _ = server.kill().await;
}
