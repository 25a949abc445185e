//! `ferry connector service …`: the Connector as a Windows service. `install` registers `ferry.exe connector
//! service dispatch --config <abs> --name <name>` with the service control manager (automatic start, LocalSystem
//! unless `--account`); the SCM starts that command, which runs `connector run` until a stop request, which
//! finishes the current step as SIGTERM does on Linux. Its log goes to `<data_dir>/connector-service.log`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

/// The service's default name in the service control manager.
pub const DEFAULT_NAME: &str = "FerryConnector";

#[derive(Subcommand, Debug)]
pub enum ServiceCmd {
    /// Register `connector run` as a Windows service that starts with the machine (as LocalSystem unless
    /// --account is given).
    Install {
        /// The connector.toml the service runs with (made absolute).
        #[arg(long, default_value = "connector.toml")]
        config: PathBuf,
        #[arg(long, default_value = DEFAULT_NAME)]
        name: String,
        /// Run as this account (e.g. `.\ferry` or `NT AUTHORITY\NetworkService`) instead of LocalSystem.
        #[arg(long)]
        account: Option<String>,
        /// Read the account's password from standard input (one line).
        #[arg(long, requires = "account")]
        password_stdin: bool,
    },
    /// Stop the service if it runs, and remove it.
    Uninstall {
        #[arg(long, default_value = DEFAULT_NAME)]
        name: String,
    },
    /// Start the service and wait until it runs.
    Start {
        #[arg(long, default_value = DEFAULT_NAME)]
        name: String,
    },
    /// Ask the service to stop after its current step, and wait until it has.
    Stop {
        #[arg(long, default_value = DEFAULT_NAME)]
        name: String,
        /// Seconds to wait for the current step to finish.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
    /// Show the service's state. Exit code 0 when it runs, 3 when it is installed but not running, 4 when it is
    /// not installed.
    Status {
        #[arg(long, default_value = DEFAULT_NAME)]
        name: String,
    },
    /// What the service control manager starts (not for people).
    #[command(hide = true)]
    Dispatch {
        #[arg(long)]
        config: PathBuf,
        #[arg(long, default_value = DEFAULT_NAME)]
        name: String,
    },
}

#[cfg(not(windows))]
pub async fn service(_cmd: ServiceCmd) -> anyhow::Result<ExitCode> {
    anyhow::bail!(
        "`ferry connector service` manages a Windows service and runs on Windows only; on Linux run `ferry connector \
         run` under systemd (see README, \"Run it unattended\")"
    )
}

#[cfg(windows)]
pub async fn service(cmd: ServiceCmd) -> anyhow::Result<ExitCode> {
    tokio::task::block_in_place(|| windows::service(cmd))
}

#[cfg(windows)]
mod windows {
    use std::ffi::{OsStr, OsString};
    use std::io::Write;
    use std::path::{Path, PathBuf};
    use std::process::ExitCode;
    use std::sync::{Arc, OnceLock};
    use std::time::{Duration, Instant};

    use anyhow::Context;
    use ferry_connector::agent::Connector;
    use windows_service::service::{
        ServiceAccess, ServiceControl, ServiceControlAccept, ServiceErrorControl, ServiceExitCode, ServiceInfo,
        ServiceStartType, ServiceState, ServiceStatus, ServiceType,
    };
    use windows_service::service_control_handler::{self, ServiceControlHandlerResult};
    use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};
    use windows_service::{define_windows_service, service_dispatcher};

    use super::ServiceCmd;

    /// Win32 error: the service does not exist.
    const ERROR_SERVICE_DOES_NOT_EXIST: i32 = 1060;
    /// Win32 error: the service has not been started.
    const ERROR_SERVICE_NOT_ACTIVE: i32 = 1062;

    pub fn service(cmd: ServiceCmd) -> anyhow::Result<ExitCode> {
        match cmd {
            ServiceCmd::Install { config, name, account, password_stdin } => {
                install(&config, &name, account, password_stdin)?;
            }
            ServiceCmd::Uninstall { name } => {
                let svc = open(&name, ServiceAccess::QUERY_STATUS | ServiceAccess::STOP | ServiceAccess::DELETE)?;
                if svc.query_status()?.current_state != ServiceState::Stopped {
                    println!("stopping {name} first");
                    stop_and_wait(&svc, &name, Duration::from_secs(300))?;
                }
                svc.delete().with_context(|| format!("cannot remove the service {name}"))?;
                println!("service {name} removed (the Connector's files are left as they are)");
            }
            ServiceCmd::Start { name } => {
                let svc = open(&name, ServiceAccess::QUERY_STATUS | ServiceAccess::START)?;
                svc.start(&[] as &[&OsStr]).with_context(|| format!("cannot start the service {name}"))?;
                let state = wait_for(&svc, Duration::from_secs(60), |s| s != ServiceState::StartPending)?;
                if state != ServiceState::Running {
                    anyhow::bail!(
                        "the service {name} did not start (state: {}); its log is connector-service.log in the data \
                         folder",
                        state_name(state)
                    );
                }
                println!("service {name} running");
            }
            ServiceCmd::Stop { name, timeout } => {
                let svc = open(&name, ServiceAccess::QUERY_STATUS | ServiceAccess::STOP)?;
                stop_and_wait(&svc, &name, Duration::from_secs(timeout))?;
                println!("service {name} stopped");
            }
            ServiceCmd::Status { name } => {
                let manager = ServiceManager::local_computer(None::<&str>, ServiceManagerAccess::CONNECT)
                    .context("cannot connect to the service control manager")?;
                let svc = match manager.open_service(&name, ServiceAccess::QUERY_STATUS) {
                    Ok(s) => s,
                    Err(e) if os_error(&e) == Some(ERROR_SERVICE_DOES_NOT_EXIST) => {
                        println!("service {name}: not installed (`ferry connector service install`)");
                        return Ok(ExitCode::from(4));
                    }
                    Err(e) => return Err(e).with_context(|| format!("cannot open the service {name}")),
                };
                let status = svc.query_status()?;
                let pid = status.process_id.map(|p| format!(" (pid {p})")).unwrap_or_default();
                println!("service {name}: {}{pid}", state_name(status.current_state));
                if status.current_state != ServiceState::Running {
                    return Ok(ExitCode::from(3));
                }
            }
            ServiceCmd::Dispatch { config, name } => dispatch(config, name)?,
        }
        Ok(ExitCode::SUCCESS)
    }

    fn os_error(e: &windows_service::Error) -> Option<i32> {
        match e {
            windows_service::Error::Winapi(io) => io.raw_os_error(),
            _ => None,
        }
    }

    fn open(name: &str, access: ServiceAccess) -> anyhow::Result<windows_service::service::Service> {
        let manager = ServiceManager::local_computer(None::<&str>, ServiceManagerAccess::CONNECT)
            .context("cannot connect to the service control manager (run as an administrator)")?;
        manager.open_service(name, access).map_err(|e| match os_error(&e) {
            Some(ERROR_SERVICE_DOES_NOT_EXIST) => {
                anyhow::anyhow!("no service {name} is installed; run `ferry connector service install` first")
            }
            _ => anyhow::Error::from(e).context(format!("cannot open the service {name} (run as an administrator)")),
        })
    }

    fn install(config: &Path, name: &str, account: Option<String>, password_stdin: bool) -> anyhow::Result<()> {
        let config = std::path::absolute(config).with_context(|| format!("config {}", config.display()))?;
        // refuse a service that could not start: the config, the key and its ACL are checked now
        let c = Connector::load(&config)?;
        let password = if password_stdin {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).context("cannot read the account's password from stdin")?;
            Some(OsString::from(line.trim_end_matches(['\r', '\n'])))
        } else {
            None
        };
        let exe = std::env::current_exe().context("cannot find ferry.exe's own path")?;
        let info = ServiceInfo {
            name: name.into(),
            display_name: format!("Ferry Connector ({name})").into(),
            service_type: ServiceType::OWN_PROCESS,
            start_type: ServiceStartType::AutoStart,
            error_control: ServiceErrorControl::Normal,
            executable_path: exe,
            launch_arguments: vec![
                "connector".into(),
                "service".into(),
                "dispatch".into(),
                "--config".into(),
                config.clone().into_os_string(),
                "--name".into(),
                name.into(),
            ],
            dependencies: vec![],
            account_name: account.clone().map(OsString::from),
            account_password: password,
        };
        let manager = ServiceManager::local_computer(
            None::<&str>,
            ServiceManagerAccess::CONNECT | ServiceManagerAccess::CREATE_SERVICE,
        )
        .context("cannot connect to the service control manager (run as an administrator)")?;
        let svc = manager
            .create_service(&info, ServiceAccess::CHANGE_CONFIG | ServiceAccess::QUERY_STATUS)
            .with_context(|| format!("cannot install the service {name} (is one of that name installed already?)"))?;
        // a description is a nicety: Wine's service manager, for one, may not keep it
        let _ = svc.set_description("Carries the ERP's data to the cloud planning service and orders back (Ferry)");
        println!(
            "service {name} installed: `connector run --config {}` as {}, starting with Windows",
            config.display(),
            account.as_deref().unwrap_or("LocalSystem")
        );
        println!("log: {}", log_path(&c).display());
        println!("next: `ferry connector service start --name {name}`");
        Ok(())
    }

    fn wait_for(
        svc: &windows_service::service::Service,
        timeout: Duration,
        done: impl Fn(ServiceState) -> bool,
    ) -> anyhow::Result<ServiceState> {
        let start = Instant::now();
        loop {
            let state = svc.query_status()?.current_state;
            if done(state) || start.elapsed() > timeout {
                return Ok(state);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn stop_and_wait(svc: &windows_service::service::Service, name: &str, timeout: Duration) -> anyhow::Result<()> {
        match svc.stop() {
            Ok(_) => {}
            Err(e) if os_error(&e) == Some(ERROR_SERVICE_NOT_ACTIVE) => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("cannot stop the service {name}")),
        }
        println!("asked {name} to stop after its current step; waiting up to {}s", timeout.as_secs());
        let state = wait_for(svc, timeout, |s| s == ServiceState::Stopped)?;
        if state != ServiceState::Stopped {
            anyhow::bail!("the service {name} is still {} after {}s", state_name(state), timeout.as_secs());
        }
        Ok(())
    }

    fn state_name(s: ServiceState) -> &'static str {
        match s {
            ServiceState::Stopped => "stopped",
            ServiceState::StartPending => "starting",
            ServiceState::StopPending => "stopping (finishing the current step)",
            ServiceState::Running => "running",
            ServiceState::ContinuePending => "continuing",
            ServiceState::PausePending => "pausing",
            ServiceState::Paused => "paused",
        }
    }

    fn log_path(c: &Connector) -> PathBuf {
        c.cfg.data_dir().join("connector-service.log")
    }

    /// What `dispatch` hands to the service's main function, which the SCM calls on its own thread.
    static SERVICE: OnceLock<(PathBuf, String)> = OnceLock::new();

    define_windows_service!(ffi_service_main, service_main);

    fn dispatch(config: PathBuf, name: String) -> anyhow::Result<()> {
        let _ = SERVICE.set((config, name.clone()));
        service_dispatcher::start(&name, ffi_service_main).context(
            "cannot reach the service control manager: `connector service dispatch` is what the service runs; \
             start it with `ferry connector service start` (or run `ferry connector run` in a console)",
        )
    }

    fn status(state: ServiceState, accept: ServiceControlAccept, exit: u32, wait: Duration) -> ServiceStatus {
        ServiceStatus {
            service_type: ServiceType::OWN_PROCESS,
            current_state: state,
            controls_accepted: accept,
            exit_code: ServiceExitCode::Win32(exit),
            checkpoint: 0,
            wait_hint: wait,
            process_id: None,
        }
    }

    /// The service's log: appended lines with the local time, as `connector run` prints them.
    struct ServiceLog(std::sync::Mutex<Option<std::fs::File>>);

    impl ServiceLog {
        fn line(&self, l: &str) {
            if let Ok(mut f) = self.0.lock()
                && let Some(f) = f.as_mut()
            {
                let _ = writeln!(f, "{} {l}", chrono::Local::now().format("%Y-%m-%d %H:%M:%S"));
            }
        }
    }

    fn service_main(_args: Vec<OsString>) {
        let Some((config, name)) = SERVICE.get() else { return };
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let handler = move |control| match control {
            ServiceControl::Stop | ServiceControl::Shutdown | ServiceControl::Preshutdown => {
                let _ = stop_tx.send(true);
                ServiceControlHandlerResult::NoError
            }
            ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
            _ => ServiceControlHandlerResult::NotImplemented,
        };
        let Ok(handle) = service_control_handler::register(name, handler) else { return };
        let accept = ServiceControlAccept::STOP | ServiceControlAccept::SHUTDOWN;
        let _ = handle.set_service_status(status(
            ServiceState::StartPending,
            ServiceControlAccept::empty(),
            0,
            Duration::from_secs(30),
        ));
        let (log, result) = match Connector::load(config) {
            Err(e) => (None, Err(e)),
            Ok(c) => {
                let file = std::fs::create_dir_all(c.cfg.data_dir())
                    .and_then(|()| std::fs::OpenOptions::new().create(true).append(true).open(log_path(&c)))
                    .ok();
                let log = Arc::new(ServiceLog(std::sync::Mutex::new(file)));
                log.line(&format!("service {name} starting with {}", config.display()));
                let _ = handle.set_service_status(status(ServiceState::Running, accept, 0, Duration::ZERO));
                let result = run(c, stop_rx, handle, log.clone());
                (Some(log), result)
            }
        };
        let exit = match &result {
            Ok(()) => 0,
            Err(_) => 1,
        };
        if let Some(log) = &log {
            match &result {
                Ok(()) => log.line(&format!("service {name} stopped")),
                Err(e) => log.line(&format!("service {name} stopped on an error: {e:#}")),
            }
        }
        let _ = handle.set_service_status(status(
            ServiceState::Stopped,
            ServiceControlAccept::empty(),
            exit,
            Duration::ZERO,
        ));
    }

    /// `connector run` until the SCM asks to stop: the current step finishes first, as after SIGTERM on Linux.
    fn run(
        c: Connector,
        mut stop_rx: tokio::sync::watch::Receiver<bool>,
        handle: windows_service::service_control_handler::ServiceStatusHandle,
        log: Arc<ServiceLog>,
    ) -> anyhow::Result<()> {
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        let shutdown_log = log.clone();
        let shutdown = async move {
            let _ = stop_rx.wait_for(|s| *s).await;
            shutdown_log.line("stop requested: finishing the current step");
            let _ = handle.set_service_status(status(
                ServiceState::StopPending,
                ServiceControlAccept::empty(),
                0,
                Duration::from_secs(300),
            ));
        };
        let line: Arc<dyn Fn(&str) + Send + Sync> = Arc::new(move |l: &str| log.line(l));
        rt.block_on(Arc::new(c).run(shutdown, line))
    }
}
