//! TLS identities for servers, certificate pinning and HTTPS clients for callers.
//!
//! A Comms or App server without a CA-issued certificate creates a self-signed one once
//! ([`load_or_create_self_signed`]) and publishes its fingerprint (`sha256:` + hex of the DER,
//! [`cert_fingerprint`]). Clients then either verify the server against the public web PKI roots
//! or — with a pin — accept exactly that one certificate, whatever its names or issuer
//! ([`client_config`]). Everything is built on the `ring` provider explicitly: nothing depends on a
//! process-wide default crypto provider being installed.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme};
use sha2::{Digest, Sha256};

/// A certificate chain and its private key, both PEM.
#[derive(Clone)]
pub struct TlsIdentity {
    /// Certificate chain, end-entity first.
    pub cert_pem: String,
    /// PKCS#8 (or PKCS#1/SEC1) private key.
    pub key_pem: String,
}

impl fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsIdentity").field("cert_pem", &self.cert_pem).finish_non_exhaustive()
    }
}

/// Failure to create, load or use TLS material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Reading or writing a certificate or key file failed.
    #[error("cannot {action} {path}: {source}")]
    Io { action: &'static str, path: PathBuf, source: io::Error },
    /// Only one of the two files exists.
    #[error(
        "{present} exists but {missing} does not; restore the missing file, or delete both to \
         create a new self-signed certificate (clients pinning the old one must then be updated)"
    )]
    HalfIdentity { present: PathBuf, missing: PathBuf },
    /// The PEM holds no usable certificate.
    #[error("no certificate found in the PEM data ({0}); check the certificate file")]
    NoCertificate(String),
    /// The PEM holds no usable private key.
    #[error("no private key found in the PEM data ({0}); check the key file")]
    NoPrivateKey(String),
    /// A pinned fingerprint is not `sha256:` + 64 hex digits.
    #[error(
        "invalid TLS fingerprint {0:?}; expected `sha256:` followed by 64 hex digits, as printed \
         by the server"
    )]
    BadPin(String),
    /// Certificate generation failed.
    #[error("cannot create a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the configuration (e.g. key and certificate do not match).
    #[error("invalid TLS configuration: {0}; check that the key belongs to the certificate")]
    Rustls(#[from] rustls::Error),
    /// The HTTP client could not be built.
    #[error("cannot build the https client: {0}")]
    Http(#[from] reqwest::Error),
}

/// Loads the certificate and key at `cert_path`/`key_path`, or — when neither exists — creates a
/// self-signed certificate valid for `names` (DNS names, or IP addresses such as `127.0.0.1`) and
/// writes it there (key mode 0600, created exclusively).
pub fn load_or_create_self_signed(
    cert_path: &Path,
    key_path: &Path,
    names: &[String],
) -> Result<TlsIdentity, TlsError> {
    match (cert_path.exists(), key_path.exists()) {
        (true, true) => {
            let id = TlsIdentity { cert_pem: read(cert_path)?, key_pem: read(key_path)? };
            // Fail now, with the file names in the log, rather than at the first connection.
            cert_chain(&id.cert_pem)?;
            private_key(&id.key_pem)?;
            Ok(id)
        }
        (true, false) => Err(half(cert_path, key_path)),
        (false, true) => Err(half(key_path, cert_path)),
        (false, false) => {
            let mut params = rcgen::CertificateParams::new(names.to_vec())?;
            params.distinguished_name.push(rcgen::DnType::CommonName, "ferry self-signed");
            let key = rcgen::KeyPair::generate()?;
            let cert = params.self_signed(&key)?;
            let id = TlsIdentity { cert_pem: cert.pem(), key_pem: key.serialize_pem() };
            write_exclusive(key_path, &id.key_pem, 0o600)?;
            write_exclusive(cert_path, &id.cert_pem, 0o644)?;
            Ok(id)
        }
    }
}

/// `sha256:` + lower-case hex SHA-256 of the DER of the first certificate in `cert_pem`.
pub fn cert_fingerprint(cert_pem: &str) -> Result<String, TlsError> {
    let chain = cert_chain(cert_pem)?;
    let first = chain.first().ok_or_else(|| TlsError::NoCertificate("empty chain".into()))?;
    Ok(der_fingerprint(first))
}

/// A server configuration for `id` (ring provider, TLS 1.2 and 1.3, ALPN `h2` and `http/1.1`).
pub fn server_config(id: &TlsIdentity) -> Result<Arc<ServerConfig>, TlsError> {
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(cert_chain(&id.cert_pem)?, private_key(&id.key_pem)?)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// A client configuration (ring provider, ALPN `h2` and `http/1.1`).
///
/// With `Some(pin)` (`sha256:<64 hex>`, as [`cert_fingerprint`] prints it) the server must
/// present exactly that end-entity certificate; its names, issuer and dates are not checked, but
/// the handshake signatures are. With `None` the server is verified against the web PKI roots
/// (`webpki-roots`) and the host name.
pub fn client_config(pin: Option<&str>) -> Result<ClientConfig, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let mut cfg = match pin {
        Some(pin) => {
            let verifier = PinnedCert { pin: parse_pin(pin)?, algs: provider().signature_verification_algorithms };
            builder.dangerous().with_custom_certificate_verifier(Arc::new(verifier))
        }
        None => {
            let roots = rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            builder.with_root_certificates(roots)
        }
    }
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

/// An HTTPS client using [`client_config`]`(pin)`, with an overall per-request `timeout`
/// (make it longer than any long-poll wait). Proxies come from `HTTPS_PROXY`/`NO_PROXY`.
pub fn http_client(pin: Option<&str>, timeout: Duration) -> Result<reqwest::Client, TlsError> {
    http_client_via(pin, timeout, None)
}

/// Like [`http_client`], through an explicit HTTP CONNECT proxy (`http://[user:pass@]host:port`). Without one,
/// reqwest honours `HTTPS_PROXY` / `NO_PROXY` from the environment.
pub fn http_client_via(pin: Option<&str>, timeout: Duration, proxy: Option<&str>) -> Result<reqwest::Client, TlsError> {
    let mut b = reqwest::Client::builder()
        .tls_backend_preconfigured(client_config(pin)?)
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(30)))
        .user_agent(concat!("ferry/", env!("CARGO_PKG_VERSION")));
    if let Some(p) = proxy {
        b = b.proxy(reqwest::Proxy::all(p)?);
    }
    Ok(b.build()?)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn cert_chain(pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::NoCertificate(e.to_string()))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate("no CERTIFICATE block".into()));
    }
    Ok(chain)
}

fn private_key(pem: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    // The error text of a PEM parser names no key bytes, but stay generic anyway.
    PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|_| TlsError::NoPrivateKey("no readable PRIVATE KEY block".into()))
}

fn der_fingerprint(der: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(der)))
}

fn parse_pin(pin: &str) -> Result<[u8; 32], TlsError> {
    let hex_part = pin
        .trim()
        .strip_prefix("sha256:")
        .or_else(|| pin.trim().strip_prefix("SHA256:"))
        .ok_or_else(|| TlsError::BadPin(pin.to_owned()))?;
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut out).map_err(|_| TlsError::BadPin(pin.to_owned()))?;
    Ok(out)
}

fn read(path: &Path) -> Result<String, TlsError> {
    fs::read_to_string(path).map_err(|source| TlsError::Io { action: "read", path: path.to_owned(), source })
}

fn half(present: &Path, missing: &Path) -> TlsError {
    TlsError::HalfIdentity { present: present.to_owned(), missing: missing.to_owned() }
}

fn write_exclusive(path: &Path, text: &str, mode: u32) -> Result<(), TlsError> {
    use std::io::Write;
    let err = |source| TlsError::Io { action: "create", path: path.to_owned(), source };
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = opts.open(path).map_err(err)?;
    f.write_all(text.as_bytes()).and_then(|()| f.sync_all()).map_err(err)
}

/// Accepts exactly one end-entity certificate, identified by its SHA-256.
#[derive(Debug)]
struct PinnedCert {
    pin: [u8; 32],
    algs: WebPkiSupportedAlgorithms,
}

/// The pin mismatch, surfaced through rustls as `Error::Other`.
#[derive(Debug)]
struct PinMismatch {
    presented: String,
}

impl fmt::Display for PinMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the server's TLS certificate ({}) does not match the pinned fingerprint; re-register \
             with a fresh token or fix tls_fingerprint in the config",
            self.presented
        )
    }
}

impl std::error::Error for PinMismatch {}

impl ServerCertVerifier for PinnedCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        // Constant time, although a pin is no secret.
        let diff = got.iter().zip(self.pin.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff == 0 {
            return Ok(ServerCertVerified::assertion());
        }
        let err = PinMismatch { presented: der_fingerprint(end_entity) };
        // `Error::Other` shows our message as is (`CertificateError::Other` would print Debug).
        Err(rustls::Error::Other(rustls::OtherError(Arc::new(err))))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

#[cfg(test)]
#[cfg(unix)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn identity(names: &[&str]) -> TlsIdentity {
        let dir = tempfile::tempdir().unwrap();
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        load_or_create_self_signed(&dir.path().join("c.pem"), &dir.path().join("k.pem"), &names).unwrap()
    }

    /// Verifies `id`'s certificate for `name` with the certificate itself as the only root.
    fn valid_for(id: &TlsIdentity, name: &str) -> bool {
        let cert = cert_chain(&id.cert_pem).unwrap().remove(0);
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.clone()).unwrap();
        let v =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider()).build().unwrap();
        let name = ServerName::try_from(name.to_owned()).unwrap();
        v.verify_server_cert(&cert, &[], &name, &[], UnixTime::now()).is_ok()
    }

    #[test]
    fn creates_once_then_loads_the_same_identity() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let first = load_or_create_self_signed(&c, &k, &names).unwrap();
        assert_eq!(fs::metadata(&k).unwrap().permissions().mode() & 0o777, 0o600);
        let second = load_or_create_self_signed(&c, &k, &names).unwrap();
        assert_eq!(first.cert_pem, second.cert_pem);
        assert_eq!(first.key_pem, second.key_pem);
        assert!(!format!("{first:?}").contains("PRIVATE KEY"), "Debug leaks the key");

        fs::remove_file(&k).unwrap();
        let err = load_or_create_self_signed(&c, &k, &names).unwrap_err();
        assert!(matches!(err, TlsError::HalfIdentity { .. }), "{err}");
        fs::write(&k, "garbage").unwrap();
        assert!(matches!(load_or_create_self_signed(&c, &k, &names), Err(TlsError::NoPrivateKey(_))));
    }

    #[test]
    fn self_signed_cert_carries_the_requested_names() {
        let id = identity(&["localhost", "ferry.example", "127.0.0.1"]);
        assert!(valid_for(&id, "localhost"));
        assert!(valid_for(&id, "ferry.example"));
        assert!(valid_for(&id, "127.0.0.1"));
        assert!(!valid_for(&id, "other.example"));
        assert!(!valid_for(&id, "127.0.0.2"));
    }

    #[test]
    fn fingerprint_is_sha256_of_the_first_der() {
        let id = identity(&["localhost"]);
        let der = cert_chain(&id.cert_pem).unwrap().remove(0);
        let fp = cert_fingerprint(&id.cert_pem).unwrap();
        assert_eq!(fp, format!("sha256:{}", hex::encode(Sha256::digest(&der))));
        assert_eq!(fp.len(), 7 + 64);
        // A second certificate in the chain does not change it.
        let other = identity(&["localhost"]);
        assert_eq!(cert_fingerprint(&format!("{}{}", id.cert_pem, other.cert_pem)).unwrap(), fp);
        assert_ne!(cert_fingerprint(&other.cert_pem).unwrap(), fp);
        assert!(matches!(cert_fingerprint("nothing here"), Err(TlsError::NoCertificate(_))));
    }

    #[test]
    fn pins_must_be_well_formed() {
        let fp = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(parse_pin(&fp).unwrap(), [0xab; 32]);
        assert!(parse_pin(&fp.to_uppercase()).is_ok());
        for bad in ["", "ab".repeat(32).as_str(), "sha256:abc", "md5:00", &format!("sha256:{}", "zz".repeat(32))] {
            assert!(matches!(client_config(Some(bad)), Err(TlsError::BadPin(_))), "{bad}");
        }
    }

    #[test]
    fn server_config_offers_h2_and_http11() {
        let cfg = server_config(&identity(&["localhost"])).unwrap();
        assert_eq!(cfg.alpn_protocols, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
        let other = identity(&["localhost"]);
        let mismatched = TlsIdentity { cert_pem: other.cert_pem, key_pem: identity(&["x"]).key_pem };
        assert!(server_config(&mismatched).is_err());
    }

    /// Serves `HTTP/1.1 200 ok` over TLS on 127.0.0.1 to every connection.
    async fn tiny_https_server(id: &TlsIdentity) -> std::net::SocketAddr {
        let mut cfg = (*server_config(id).unwrap()).clone();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut buf = vec![0u8; 4096];
                    let mut seen = Vec::new();
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    }
                    let resp = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok";
                    let _ = tls.write_all(resp).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn https_request_with_pinned_certificate() {
        // The certificate names only "localhost"; we connect to 127.0.0.1, so hostname
        // verification would fail: the pin alone decides.
        let id = identity(&["localhost"]);
        let addr = tiny_https_server(&id).await;
        let url = format!("https://{addr}/v1/ping");
        let timeout = Duration::from_secs(10);

        let pin = cert_fingerprint(&id.cert_pem).unwrap();
        let client = http_client(Some(&pin), timeout).unwrap();
        let resp = client.get(&url).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await.unwrap(), "ok");

        let wrong = cert_fingerprint(&identity(&["localhost"]).cert_pem).unwrap();
        let err = http_client(Some(&wrong), timeout).unwrap().get(&url).send().await.unwrap_err();
        let chain = crate::error_chain(&err);
        assert!(
            chain.contains(&format!(
                "the server's TLS certificate ({pin}) does not match the pinned fingerprint; re-register"
            )),
            "{chain}"
        );

        // Without a pin the self-signed certificate is not trusted.
        let err = http_client(None, timeout).unwrap().get(&url).send().await.unwrap_err();
        let chain = crate::error_chain(&err);
        assert!(chain.contains("certificate"), "{chain}");
        assert!(!chain.contains("pinned"), "{chain}");
    }
}
