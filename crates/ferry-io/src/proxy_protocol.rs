//! The PROXY protocol (HAProxy's, v1 text and v2 binary) on the public listeners: a load balancer in TCP mode
//! (`send-proxy-v2`) opens each connection with a header naming the real client, so per-address caps, the SSH
//! login throttle, `auth_failed` coalescing, logs and the audit see the client, not the balancer.
//!
//! Trust is by source address only (`[connections] proxy_protocol_from`, CIDR blocks): a connection from a listed
//! address MUST start with a header (else it is closed and logged); from any other address no header is looked
//! for, so one sent anyway is the first bytes of TLS or SSH and fails there. The header is read exactly (no byte
//! of the protocol after it is consumed), within the handshake deadline and a size bound, and parsed by the `ppp`
//! crate.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// The longest v1 header (`PROXY TCP6 <ip6> <ip6> <port> <port>\r\n`), per the specification.
const V1_MAX: usize = 107;
/// The v2 header is 16 bytes plus a declared length; addresses take at most 216 (Unix sockets), the rest are
/// TLVs. Headers declaring more than this are refused.
const V2_MAX: usize = 16 + 1024;
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// Why a connection from a trusted proxy was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    #[error("no PROXY protocol header within {0:?}")]
    Timeout(Duration),
    #[error("the connection closed before its PROXY protocol header was complete")]
    Closed,
    #[error("the connection does not start with a PROXY protocol header (v1 `PROXY ` or the v2 signature)")]
    Missing,
    #[error("the PROXY protocol header is longer than {0} bytes")]
    TooLong(usize),
    #[error("invalid PROXY protocol header: {0}")]
    Invalid(String),
    #[error("reading the PROXY protocol header: {0}")]
    Io(std::io::Error),
}

/// `[connections] proxy_protocol_from`: the addresses whose connections carry a PROXY header.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<(IpAddr, u8)>);

impl TrustedProxies {
    /// Parse `10.0.0.0/8`, `192.168.1.10`, `fd00::/8`, ... (an address alone is a /32 or /128).
    pub fn parse(list: &[String]) -> anyhow::Result<TrustedProxies> {
        let mut nets = Vec::with_capacity(list.len());
        for s in list {
            let (a, p) = match s.split_once('/') {
                Some((a, p)) => (a, Some(p)),
                None => (s.as_str(), None),
            };
            let addr: IpAddr = a.trim().parse().map_err(|_| {
                anyhow::anyhow!("[connections] proxy_protocol_from: {s:?} is not an address or CIDR block (10.0.0.0/8)")
            })?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let prefix = match p {
                None => max,
                Some(p) => match p.trim().parse::<u8>() {
                    Ok(n) if n <= max => n,
                    _ => anyhow::bail!("[connections] proxy_protocol_from: bad prefix length in {s:?} (0..={max})"),
                },
            };
            nets.push((addr.to_canonical(), prefix));
        }
        Ok(TrustedProxies(nets))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether connections from `ip` must carry a PROXY header.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|&(net, prefix)| match (net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        })
    }
}

async fn fill<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut [u8]) -> Result<(), ProxyHeaderError> {
    match stream.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(ProxyHeaderError::Closed),
        Err(e) => Err(ProxyHeaderError::Io(e)),
    }
}

/// Read the PROXY header (v1 or v2) at the start of `stream`, exactly: the bytes after it are left for TLS or
/// SSH. Returns the client it names; `None` for a header that names none (v2 `LOCAL`, v1 `UNKNOWN`: the
/// balancer's own health check), which the caller treats as a connection from the balancer itself.
pub async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
    wait: Duration,
) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    match tokio::time::timeout(wait, read_header_inner(stream)).await {
        Ok(r) => r,
        Err(_) => Err(ProxyHeaderError::Timeout(wait)),
    }
}

async fn read_header_inner<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let mut buf = vec![0u8; 5];
    fill(stream, &mut buf).await?;
    if buf == b"PROXY" {
        // v1: text up to and including "\r\n"
        while !buf.ends_with(b"\r\n") {
            if buf.len() >= V1_MAX {
                return Err(ProxyHeaderError::TooLong(V1_MAX));
            }
            let mut b = [0u8; 1];
            fill(stream, &mut b).await?;
            buf.push(b[0]);
        }
        let h = ppp::v1::Header::try_from(buf.as_slice()).map_err(|e| ProxyHeaderError::Invalid(e.to_string()))?;
        return Ok(match h.addresses {
            ppp::v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
            ppp::v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
            ppp::v1::Addresses::Unknown => None,
        });
    }
    if buf[..] != V2_SIGNATURE[..5] {
        return Err(ProxyHeaderError::Missing);
    }
    buf.resize(16, 0);
    fill(stream, &mut buf[5..]).await?;
    if buf[..12] != V2_SIGNATURE[..] {
        return Err(ProxyHeaderError::Missing);
    }
    let len = 16 + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if len > V2_MAX {
        return Err(ProxyHeaderError::TooLong(V2_MAX));
    }
    buf.resize(len, 0);
    fill(stream, &mut buf[16..]).await?;
    let h = ppp::v2::Header::try_from(buf.as_slice()).map_err(|e| ProxyHeaderError::Invalid(e.to_string()))?;
    if h.command == ppp::v2::Command::Local {
        return Ok(None);
    }
    Ok(match h.addresses {
        ppp::v2::Addresses::IPv4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        ppp::v2::Addresses::IPv6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        ppp::v2::Addresses::Unspecified | ppp::v2::Addresses::Unix(_) => None,
    })
}

/// A v2 `PROXY` header for a TCP connection from `client` to `server` (what `send-proxy-v2` sends): for tests and
/// tools.
pub fn v2_header(client: SocketAddr, server: SocketAddr) -> Vec<u8> {
    let addresses: ppp::v2::Addresses = (client, server).into();
    ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Proxy,
        ppp::v2::Protocol::Stream,
        addresses,
    )
    .build()
    .unwrap_or_default()
}

/// A v1 header (`PROXY TCP4 ...\r\n`) for a TCP connection from `client` to `server` (`send-proxy`).
pub fn v1_header(client: SocketAddr, server: SocketAddr) -> Vec<u8> {
    let family = if client.is_ipv4() { "TCP4" } else { "TCP6" };
    format!("PROXY {family} {} {} {} {}\r\n", client.ip(), server.ip(), client.port(), server.port()).into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidr_blocks_match_their_addresses_only() {
        let t = TrustedProxies::parse(&["10.0.0.0/8".into(), "192.168.1.10".into(), "fd00::/8".into()]).unwrap();
        assert!(t.contains("10.200.3.4".parse().unwrap()));
        assert!(t.contains("::ffff:10.1.1.1".parse().unwrap()), "an IPv4-mapped address is the IPv4 client");
        assert!(!t.contains("11.0.0.1".parse().unwrap()));
        assert!(t.contains("192.168.1.10".parse().unwrap()));
        assert!(!t.contains("192.168.1.11".parse().unwrap()));
        assert!(t.contains("fd12::1".parse().unwrap()));
        assert!(!t.contains("fe80::1".parse().unwrap()));
        assert!(TrustedProxies::parse(&["0.0.0.0/0".into()]).unwrap().contains("8.8.8.8".parse().unwrap()));
        assert!(TrustedProxies::parse(&["10.0.0.0/33".into()]).is_err());
        assert!(TrustedProxies::parse(&["example.com".into()]).is_err());
        assert!(TrustedProxies::default().is_empty());
    }

    #[tokio::test]
    async fn headers_are_read_exactly_and_the_protocol_bytes_stay() {
        let wait = Duration::from_secs(1);
        for (header, client) in [
            (v2_header(sa("10.9.8.7:4000"), sa("127.0.0.1:443")), "10.9.8.7:4000"),
            (v1_header(sa("10.9.8.7:4001"), sa("127.0.0.1:443")), "10.9.8.7:4001"),
            (v2_header(sa("[2001:db8::7]:4002"), sa("[::1]:443")), "[2001:db8::7]:4002"),
            (v1_header(sa("[2001:db8::7]:4003"), sa("[::1]:443")), "[2001:db8::7]:4003"),
        ] {
            let mut input = header.clone();
            input.extend_from_slice(b"SSH-2.0-x\r\n");
            let mut r = input.as_slice();
            assert_eq!(read_header(&mut r, wait).await.unwrap(), Some(sa(client)));
            assert_eq!(r, b"SSH-2.0-x\r\n", "the header only is consumed");
        }
        // v1 UNKNOWN and v2 LOCAL (health checks) name no client
        let mut r: &[u8] = b"PROXY UNKNOWN\r\n\x16";
        assert_eq!(read_header(&mut r, wait).await.unwrap(), None);
        let local = ppp::v2::Builder::new(0x20, 0x00).build().unwrap();
        assert_eq!(read_header(&mut local.as_slice(), wait).await.unwrap(), None);
    }

    #[tokio::test]
    async fn what_is_not_a_header_is_refused() {
        let wait = Duration::from_millis(200);
        let mut tls: &[u8] = &[0x16, 3, 1, 0, 200, 1, 0, 0];
        assert!(matches!(read_header(&mut tls, wait).await, Err(ProxyHeaderError::Missing)));
        let mut ssh: &[u8] = b"SSH-2.0-OpenSSH_9.2\r\n";
        assert!(matches!(read_header(&mut ssh, wait).await, Err(ProxyHeaderError::Missing)));
        let long = format!("PROXY TCP4 {}\r\n", "1".repeat(200));
        assert!(matches!(read_header(&mut long.as_bytes(), wait).await, Err(ProxyHeaderError::TooLong(_))));
        let mut bad: &[u8] = b"PROXY TCP4 banana 1.2.3.4 1 2\r\n";
        assert!(matches!(read_header(&mut bad, wait).await, Err(ProxyHeaderError::Invalid(_))));
        let mut huge = V2_SIGNATURE.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert!(matches!(read_header(&mut huge.as_slice(), wait).await, Err(ProxyHeaderError::TooLong(_))));
        let mut cut: &[u8] = b"PROXY TCP4 1.2.3.4";
        assert!(matches!(read_header(&mut cut, wait).await, Err(ProxyHeaderError::Closed)));
        // a client that sends nothing: the deadline
        let (mut quiet, _keep) = tokio::io::duplex(64);
        assert!(matches!(read_header(&mut quiet, wait).await, Err(ProxyHeaderError::Timeout(_))));
    }
}
