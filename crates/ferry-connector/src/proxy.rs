//! Reaching the Comms server through an HTTP CONNECT proxy, for SSH as for HTTPS: from `proxy` in
//! connector.toml, else `HTTPS_PROXY`/`https_proxy` (with `NO_PROXY`). The CONNECT handshake is written here
//! because the response head must be read exactly: a proxy may send the SSH server's first bytes in the same
//! packet as its `200`, and a buffered reader would swallow them (see CRATES.md).

use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proxy {
    pub host: String,
    pub port: u16,
    auth: Option<(String, String)>,
    url: String,
}

impl Proxy {
    /// `http://[user:pass@]host[:port]` (port defaults to 3128).
    pub fn parse(s: &str) -> anyhow::Result<Proxy> {
        let u = url::Url::parse(s).with_context(|| "proxy must look like http://[user:pass@]host:port")?;
        if u.scheme() != "http" {
            bail!("proxy scheme {:?} is not supported: use an http:// CONNECT proxy", u.scheme());
        }
        let host = u.host_str().context("proxy URL has no host")?.to_string();
        let decode =
            |p: &str| url::form_urlencoded::parse(format!("x={p}").as_bytes()).next().map(|(_, v)| v.to_string());
        let auth = if u.username().is_empty() {
            None
        } else {
            Some((decode(u.username()).unwrap_or_default(), decode(u.password().unwrap_or("")).unwrap_or_default()))
        };
        Ok(Proxy { port: u.port().unwrap_or(3128), host, auth, url: s.to_string() })
    }

    /// The URL as configured (may hold credentials: never log it).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Where the proxy is, safe to print.
    pub fn display(&self) -> String {
        format!("http://{}:{}", self.host, self.port)
    }
}

/// The proxy to use for `target_host`: the configured one ("none" disables), else the environment's.
pub fn for_host(configured: &str, target_host: &str) -> anyhow::Result<Option<Proxy>> {
    let configured = configured.trim();
    if configured.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    if !configured.is_empty() {
        return Proxy::parse(configured).map(Some);
    }
    let env = ["HTTPS_PROXY", "https_proxy"].iter().find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()));
    let Some(env) = env else { return Ok(None) };
    let no_proxy = ["NO_PROXY", "no_proxy"].iter().find_map(|k| std::env::var(k).ok()).unwrap_or_default();
    if bypass(&no_proxy, target_host) {
        return Ok(None);
    }
    Proxy::parse(&env).map(Some).context("HTTPS_PROXY")
}

/// `NO_PROXY` matching: `*`, exact host, or a domain suffix (`.example.com` or `example.com`).
fn bypass(no_proxy: &str, host: &str) -> bool {
    no_proxy.split(',').map(str::trim).filter(|e| !e.is_empty()).any(|e| {
        e == "*" || e.eq_ignore_ascii_case(host) || {
            let suffix = e.trim_start_matches('.');
            host.len() > suffix.len()
                && host.to_ascii_lowercase().ends_with(&format!(".{}", suffix.to_ascii_lowercase()))
        }
    })
}

/// Open a tunnel to `target` (`host:port`) through the proxy.
pub async fn connect(proxy: &Proxy, target: &str, timeout: Duration) -> anyhow::Result<TcpStream> {
    let fut = async {
        let mut s = TcpStream::connect((proxy.host.as_str(), proxy.port))
            .await
            .with_context(|| format!("cannot reach the proxy {}", proxy.display()))?;
        s.set_nodelay(true)?;
        let mut req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
        if let Some((u, p)) = &proxy.auth {
            let token = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
            req.push_str(&format!("Proxy-Authorization: Basic {token}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).await?;
        // Read the response head exactly, one byte at a time: nothing after it may be consumed.
        let mut head = Vec::with_capacity(256);
        while !head.ends_with(b"\r\n\r\n") {
            if head.len() > 16 * 1024 {
                bail!("the proxy {} sent an oversized response", proxy.display());
            }
            let b =
                s.read_u8().await.with_context(|| format!("the proxy {} closed the connection", proxy.display()))?;
            head.push(b);
        }
        let text = String::from_utf8_lossy(&head);
        let status_line = text.lines().next().unwrap_or("").trim().to_string();
        let code = status_line.split_whitespace().nth(1).and_then(|c| c.parse::<u16>().ok()).unwrap_or(0);
        match code {
            200..=299 => Ok(s),
            401 | 407 => bail!(
                "the proxy {} requires credentials or refused them ({status_line}): set proxy = \"http://user:password@host:port\"",
                proxy.display()
            ),
            _ => bail!("the proxy {} refused the tunnel to {target}: {status_line}", proxy.display()),
        }
    };
    tokio::time::timeout(timeout, fut)
        .await
        .with_context(|| format!("the proxy {} did not answer in time", proxy.display()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_matches() {
        let p = Proxy::parse("http://bob:p%40ss@proxy.lan:8080").unwrap();
        assert_eq!((p.host.as_str(), p.port), ("proxy.lan", 8080));
        assert_eq!(p.auth, Some(("bob".into(), "p@ss".into())));
        assert_eq!(p.display(), "http://proxy.lan:8080");
        assert!(Proxy::parse("socks5://x:1").is_err());
        assert!(bypass("localhost, .corp.example", "comms.corp.example"));
        assert!(bypass("*", "anything"));
        assert!(!bypass("corp.example", "evilcorp.example"));
        assert!(!bypass("", "comms.example"));
    }
}
