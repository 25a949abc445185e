//! `ferry connector doctor`: every condition a working Connector depends on, checked in the order a sync needs
//! them, one line each with a pass/fail mark and, for a failure, the fix. Nothing is sent but a login and one
//! signed `GET /v1/whoami`; every ERP query is run for its first row only.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_io::client::ApiClient;
use futures::StreamExt;
use russh::keys::PrivateKey;
use tokio::net::TcpStream;

use crate::config::{ConnectorConfig, Registration};

/// Free space the spool should have: a compressed batch of a large ERP, with room to spare.
pub const MIN_FREE_SPOOL_BYTES: u64 = 1024 * 1024 * 1024;
/// The part of the server's signature-age limit kept for a signed request's transit: the clock must be within
/// the limit minus this.
pub const CLOCK_TRANSIT_ALLOWANCE_SECS: i64 = 5;

/// The checks that need the registration, in order.
const NETWORK_CHECKS: [&str; 8] = ["proxy", "dns", "tcp", "tls", "ssh host key", "login", "signed call", "clock"];

/// One check's outcome.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    /// What was found.
    pub detail: String,
    /// How to fix a failure (empty when passed).
    pub fix: String,
}

#[derive(Debug, Default)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    fn pass(&mut self, name: impl Into<String>, detail: impl Into<String>) {
        self.checks.push(Check { name: name.into(), ok: true, detail: detail.into(), fix: String::new() });
    }

    fn fail(&mut self, name: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) {
        self.checks.push(Check { name: name.into(), ok: false, detail: detail.into(), fix: fix.into() });
    }

    /// Checks that could not run because an earlier one failed: listed as failed, naming that one.
    fn skip(&mut self, names: &[&str], after: &str) {
        for n in names {
            self.fail(*n, format!("not checked: the {after} check failed"), format!("fix {after} first"));
        }
    }

    /// Every check passed.
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }

    /// The check called `name`, if it ran.
    pub fn get(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }

    /// `[ ok ] name: detail` / `[FAIL] name: detail` + `       fix: ...`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for c in &self.checks {
            let mark = if c.ok { "[ ok ]" } else { "[FAIL]" };
            out.push_str(&format!("{mark} {}: {}\n", c.name, c.detail));
            if !c.ok && !c.fix.is_empty() {
                out.push_str(&format!("       fix: {}\n", c.fix));
            }
        }
        let failed = self.checks.iter().filter(|c| !c.ok).count();
        if failed == 0 {
            out.push_str(&format!("all {} checks passed\n", self.checks.len()));
        } else {
            out.push_str(&format!("{failed} of {} checks failed\n", self.checks.len()));
        }
        out
    }
}

fn short(e: &anyhow::Error) -> String {
    let s = format!("{e:#}");
    if s.len() > 400 { format!("{}...", s.chars().take(400).collect::<String>()) } else { s }
}

/// Run every check for the Connector configured by `config_path`.
pub async fn doctor(config_path: &Path) -> Report {
    let mut r = Report::default();
    let cfg = match ConnectorConfig::load(config_path) {
        Ok(c) => {
            r.pass("config", format!("{} parses", config_path.display()));
            c
        }
        Err(e) => {
            r.fail(
                "config",
                short(&e),
                format!("correct {} (or write one with `ferry connector init`)", config_path.display()),
            );
            return r;
        }
    };
    let key = check_key(&mut r, &cfg);
    check_erp(&mut r, &cfg).await;
    check_disk(&mut r, &cfg);
    let reg = match Registration::load(cfg.registration_path()) {
        Ok(reg) => {
            r.pass("registration", format!("tenant {} at {}", reg.tenant, reg.comms_url));
            reg
        }
        Err(e) => {
            r.fail(
                "registration",
                short(&e),
                "ask the operator for a token, then `ferry connector register --token ...`",
            );
            r.skip(&NETWORK_CHECKS, "registration");
            return r;
        }
    };
    if let Err(failed) = check_network(&mut r, &cfg, &reg).await {
        let rest: Vec<&str> = NETWORK_CHECKS.iter().copied().filter(|n| r.get(n).is_none()).collect();
        r.skip(&rest, failed);
        return r;
    }
    match key {
        Some(key) => {
            check_ssh(&mut r, &cfg, &reg, key.clone()).await;
            check_signed(&mut r, &cfg, &reg, key).await;
        }
        None => r.skip(&["ssh host key", "login", "signed call", "clock"], "key"),
    }
    r
}

fn check_key(r: &mut Report, cfg: &ConnectorConfig) -> Option<Arc<PrivateKey>> {
    let path = cfg.key_path();
    if !path.exists() {
        r.fail(
            "key",
            format!("{} does not exist", path.display()),
            "run `ferry connector init` (then register the new key with a token)",
        );
        return None;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        match std::fs::metadata(path) {
            Ok(m) if m.permissions().mode() & 0o077 != 0 => {
                r.fail(
                    "key",
                    format!(
                        "{} has mode {:04o}: other accounts can read it",
                        path.display(),
                        m.permissions().mode() & 0o777
                    ),
                    format!("chmod 600 {}", path.display()),
                );
                return None;
            }
            Ok(_) => {}
            Err(e) => {
                r.fail("key", format!("cannot read {}: {e}", path.display()), "check the file and its folder");
                return None;
            }
        }
    }
    #[cfg(windows)]
    match ferry_io::acl::foreign_readers(path) {
        Ok(others) if !others.is_empty() => {
            let who: Vec<String> = others.iter().map(|s| ferry_io::acl::describe_sid(s)).collect();
            r.fail(
                "key",
                format!("{} is readable by {}", path.display(), who.join(", ")),
                "run `ferry connector init --force-key` to write a new key readable by this account only, then \
                 register it",
            );
            return None;
        }
        Ok(_) => {}
        Err(e) => {
            r.fail("key", format!("cannot read the ACL of {}: {e}", path.display()), "check the file");
            return None;
        }
    }
    match ferry_io::keys::load_private_key(path) {
        Ok(k) => {
            let how = if cfg!(windows) { "readable by this account only" } else { "mode 0600" };
            r.pass("key", format!("{} ({how}, {})", path.display(), ferry_io::keys::fingerprint(k.public_key())));
            Some(Arc::new(k))
        }
        Err(e) => {
            r.fail(
                "key",
                format!("{}: {e:#}", path.display()),
                "restore the key file or `ferry connector init --force-key`",
            );
            None
        }
    }
}

async fn check_erp(r: &mut Report, cfg: &ConnectorConfig) {
    let source = match crate::agent::open_source(cfg).await {
        Ok(s) => {
            r.pass("erp", format!("{} database connects", cfg.erp.kind));
            s
        }
        Err(e) => {
            r.fail(
                "erp",
                short(&e),
                "correct [erp] in connector.toml (url, password_env/password_file) and check the database is up",
            );
            return;
        }
    };
    let mapping = match crate::agent::load_mapping(cfg) {
        Ok(m) => m,
        Err(e) => {
            r.fail("mapping", short(&e), "correct mapping.toml (docs/mapping.md), then `ferry connector check`");
            return;
        }
    };
    for (file, m) in mapping.ordered() {
        let name = format!("query {file}");
        let first = tokio::time::timeout(Duration::from_secs(120), async { source.rows(&m.query).next().await }).await;
        match first {
            Ok(Some(Ok(row))) => r.pass(name, format!("runs ({} columns in the first row)", row.len())),
            Ok(None) => r.pass(name, "runs (no rows)"),
            Ok(Some(Err(e))) => r.fail(
                name,
                format!("{e}").chars().take(400).collect::<String>(),
                format!("correct the query of [files.\"{file}\"] in mapping.toml"),
            ),
            Err(_) => r.fail(name, "no first row within 120 s", "add an index or simplify the query"),
        }
    }
}

fn check_disk(r: &mut Report, cfg: &ConnectorConfig) {
    // the spool may not exist before the first sync: its nearest existing folder is on the same disk
    let mut at = cfg.spool_dir();
    while !at.exists() {
        match at.parent() {
            Some(p) => at = p,
            None => break,
        }
    }
    match ferry_io::disk::free_bytes(at) {
        Ok(free) if free >= MIN_FREE_SPOOL_BYTES => {
            r.pass("disk", format!("{} MB free for the spool ({})", free / 1_000_000, cfg.spool_dir().display()))
        }
        Ok(free) => r.fail(
            "disk",
            format!(
                "{} MB free for the spool ({}), less than {} MB",
                free / 1_000_000,
                cfg.spool_dir().display(),
                MIN_FREE_SPOOL_BYTES / 1_000_000
            ),
            "free space on that disk, or move data_dir in connector.toml to a larger one",
        ),
        Err(e) => r.fail("disk", format!("cannot read the free space of {}: {e}", at.display()), "check data_dir"),
    }
}

fn host_port(url: &str) -> Option<(String, u16)> {
    let u = url::Url::parse(url).ok()?;
    Some((u.host_str()?.trim_matches(['[', ']']).to_string(), u.port_or_known_default()?))
}

/// A TCP stream to `target` (`host:port`), through the proxy if one applies.
async fn dial(cfg: &ConnectorConfig, host: &str, target: &str) -> anyhow::Result<TcpStream> {
    match crate::proxy::for_host(&cfg.proxy, host)? {
        Some(p) => crate::proxy::connect(&p, target, cfg.network.connect_timeout()).await,
        None => {
            let s = tokio::time::timeout(cfg.network.connect_timeout(), TcpStream::connect(target))
                .await
                .map_err(|_| anyhow::anyhow!("no answer from {target} within the connect timeout"))??;
            Ok(s)
        }
    }
}

/// Proxy, DNS, TCP and the TLS pin of the Comms server's HTTPS port. Err(the check that failed) when the server
/// cannot be reached (the later checks cannot run).
async fn check_network(r: &mut Report, cfg: &ConnectorConfig, reg: &Registration) -> Result<(), &'static str> {
    let Some((host, port)) = host_port(&reg.comms_url) else {
        r.fail("dns", format!("the registered URL {:?} is not valid", reg.comms_url), "register again");
        return Err("dns");
    };
    let target = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
    let proxy = match crate::proxy::for_host(&cfg.proxy, &host) {
        Ok(p) => p,
        Err(e) => {
            r.fail(
                "proxy",
                short(&e),
                "correct `proxy` in connector.toml (http://[user:password@]host:port) or HTTPS_PROXY",
            );
            return Err("proxy");
        }
    };
    match &proxy {
        Some(p) => {
            let c = tokio::time::timeout(cfg.network.connect_timeout(), TcpStream::connect((p.host.as_str(), p.port)))
                .await;
            match c {
                Ok(Ok(_)) => r.pass("proxy", format!("{} reachable", p.display())),
                Ok(Err(e)) => {
                    r.fail(
                        "proxy",
                        format!("cannot reach {}: {e}", p.display()),
                        "check `proxy` in connector.toml and that the proxy runs",
                    );
                    return Err("proxy");
                }
                Err(_) => {
                    r.fail(
                        "proxy",
                        format!("{} does not answer", p.display()),
                        "check `proxy` in connector.toml and the firewall",
                    );
                    return Err("proxy");
                }
            }
            r.pass("dns", format!("{host}: resolved by the proxy"));
        }
        None => {
            r.pass("proxy", "none (direct connections)");
            match tokio::net::lookup_host(&target).await {
                Ok(addrs) => {
                    let a: Vec<String> = addrs.map(|a| a.ip().to_string()).collect();
                    r.pass("dns", format!("{host} -> {}", a.join(", ")))
                }
                Err(e) => {
                    r.fail("dns", format!("cannot resolve {host}: {e}"), "check the DNS settings of this machine");
                    return Err("dns");
                }
            }
        }
    }
    let tcp = match dial(cfg, &host, &target).await {
        Ok(s) => {
            r.pass("tcp", format!("{target} accepts connections"));
            s
        }
        Err(e) => {
            let fix = if proxy.is_some() {
                "the proxy must allow CONNECT to this host and port; ask its administrator"
            } else {
                "check the firewall allows outbound connections to this port, and that the Comms server runs"
            };
            r.fail("tcp", format!("{target}: {}", short(&e)), fix);
            return Err("tcp");
        }
    };
    let pin = (!reg.tls_fingerprint.is_empty()).then_some(reg.tls_fingerprint.as_str());
    let tls = async {
        let tls_cfg = ferry_io::tls::client_config(pin)?;
        let name = rustls::pki_types::ServerName::try_from(host.clone())?;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(tls_cfg));
        tokio::time::timeout(cfg.network.connect_timeout(), connector.connect(name, tcp))
            .await
            .map_err(|_| anyhow::anyhow!("no TLS answer within the connect timeout"))??;
        anyhow::Ok(())
    };
    match tls.await {
        Ok(()) => {
            let what = match pin {
                Some(p) => format!("certificate matches the pin {p}"),
                None => "certificate verified by a public CA".into(),
            };
            r.pass("tls", what);
            Ok(())
        }
        Err(e) => {
            r.fail(
                "tls",
                short(&e),
                "if the operator replaced the server's certificate on purpose, register again with a new token; \
                 otherwise something between here and the server intercepts TLS (a proxy that inspects HTTPS must \
                 let this host through)",
            );
            Err("tls")
        }
    }
}

async fn check_ssh(r: &mut Report, cfg: &ConnectorConfig, reg: &Registration, key: Arc<PrivateKey>) {
    use ferry_sftp::client::{ClientConfig, ClientError, SftpClient};
    let sftp_cfg = ClientConfig {
        user: reg.tenant.clone(),
        key,
        host_key_fingerprint: reg.ssh_host_key_fingerprint.clone(),
        connect_timeout: cfg.network.connect_timeout(),
        io_timeout: cfg.network.timeout(),
    };
    let host = reg.ssh_addr.rsplit_once(':').map(|(h, _)| h.trim_matches(['[', ']'])).unwrap_or(&reg.ssh_addr);
    let session = async {
        let tcp = dial(cfg, host, &reg.ssh_addr).await.map_err(|e| ClientError::Connect {
            addr: reg.ssh_addr.clone(),
            source: std::io::Error::other(format!("{e:#}")),
        })?;
        SftpClient::connect_stream(&sftp_cfg, tcp).await
    };
    match session.await {
        Ok(s) => {
            r.pass("ssh host key", format!("{} matches the pin {}", reg.ssh_addr, reg.ssh_host_key_fingerprint));
            r.pass("login", format!("SFTP login as {} with the key", reg.tenant));
            let _ = s.close().await;
        }
        Err(e @ ClientError::HostKeyMismatch { .. }) => r.fail(
            "ssh host key",
            e.to_string(),
            "if the operator replaced the server's host key on purpose, register again with a new token; otherwise \
             do not connect: something answers in the server's place",
        ),
        Err(ClientError::AuthRejected) => {
            r.pass("ssh host key", format!("{} matches the pin {}", reg.ssh_addr, reg.ssh_host_key_fingerprint));
            r.fail(
                "login",
                "the server refused this key",
                "ask the operator whether the tenant is enabled and the key not revoked (`ferry comms tenant keys`); \
                 if so, register again with a new token",
            );
        }
        Err(e) => r.fail(
            "ssh host key",
            format!("{}: {e}", reg.ssh_addr),
            "check that outbound connections to the SSH port are allowed (through the proxy if one is used)",
        ),
    }
}

async fn check_signed(r: &mut Report, cfg: &ConnectorConfig, reg: &Registration, key: Arc<PrivateKey>) {
    let pin = (!reg.tls_fingerprint.is_empty()).then_some(reg.tls_fingerprint.as_str());
    let host = host_port(&reg.comms_url).map(|(h, _)| h).unwrap_or_default();
    let proxy = crate::proxy::for_host(&cfg.proxy, &host).ok().flatten();
    let api =
        match ApiClient::via(&reg.comms_url, pin, Some(key), cfg.network.timeout(), proxy.as_ref().map(|p| p.url())) {
            Ok(a) => a,
            Err(e) => {
                r.fail("signed call", format!("{e:#}"), "check the registration");
                return;
            }
        };
    let before = chrono::Utc::now();
    let t = Instant::now();
    let who: Result<ferry_proto::api::WhoAmI, _> = api.get("/v1/whoami").await;
    let rtt = t.elapsed();
    let who = match who {
        Ok(w) => {
            r.pass("signed call", format!("accepted: tenant {}, key {}", w.tenant, w.key_fingerprint));
            w
        }
        Err(e) => {
            let fix = match e.status() {
                Some(401) => {
                    "the server refused the signature: check the clock of this machine (NTP); if the key \
                              was revoked or the tenant disabled, ask the operator"
                }
                Some(403) => "the tenant is disabled or the key revoked: ask the operator",
                _ => "check the network and the Comms server",
            };
            r.fail("signed call", e.to_string(), fix);
            return;
        }
    };
    let (Some(server), Some(limit)) = (who.server_time, who.signature_max_age_secs) else {
        r.pass("clock", "the server does not report its time (older Comms server): not measured");
        return;
    };
    let local = before + chrono::Duration::from_std(rtt / 2).unwrap_or_default();
    let skew_ms = (server - local).num_milliseconds();
    let skew = skew_ms as f64 / 1000.0;
    let allowed = limit - CLOCK_TRANSIT_ALLOWANCE_SECS;
    let detail = format!(
        "{skew:+.1} s against the server; it accepts signatures up to {limit} s old, so the clock must stay within \
         {allowed} s ({CLOCK_TRANSIT_ALLOWANCE_SECS} s kept for transit)"
    );
    if skew_ms.unsigned_abs() < u64::try_from(allowed.max(0)).unwrap_or(0) * 1000 {
        r.pass("clock", detail);
    } else {
        r.fail(
            "clock",
            detail,
            "set this machine's clock from NTP (Windows: `w32tm /resync`; Linux: `timedatectl set-ntp true`), or ask \
             the operator to raise signature_max_age_secs",
        );
    }
}
