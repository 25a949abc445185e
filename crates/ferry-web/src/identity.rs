//! A server's own identity on disk: its SSH host key, its service key (for calls it signs) and its TLS
//! certificate, created on first start under `<data_dir>/keys` and `<data_dir>/tls` and reused afterwards.

use std::path::Path;

use anyhow::Context;
use ferry_io::keys::{self, KeyAlgorithm};
use ferry_io::tls::TlsIdentity;
use russh::keys::PrivateKey;

/// Load the private key at `path`, or generate one (mode 0600) if the file does not exist yet.
pub fn load_or_create_key(path: &Path, alg: KeyAlgorithm) -> anyhow::Result<PrivateKey> {
    if path.exists() {
        return keys::load_private_key(path).with_context(|| format!("cannot load key {}", path.display()));
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let key = keys::generate(alg)?;
    keys::write_private_key(path, &key, false).with_context(|| format!("cannot write key {}", path.display()))?;
    Ok(key)
}

pub struct ServerIdentity {
    pub ssh_host_key: PrivateKey,
    pub service_key: PrivateKey,
    pub tls: TlsIdentity,
    pub tls_fingerprint: String,
}

impl ServerIdentity {
    /// `tls_files`: operator-supplied (cert, key) PEM files; None = self-signed, created once for `names`.
    pub fn load_or_create(
        data_dir: &Path,
        tls_files: Option<(&Path, &Path)>,
        names: &[String],
    ) -> anyhow::Result<ServerIdentity> {
        let ssh_host_key = load_or_create_key(&data_dir.join("keys/ssh_host_ed25519_key"), KeyAlgorithm::Ed25519)?;
        let service_key = load_or_create_key(&data_dir.join("keys/service_ed25519_key"), KeyAlgorithm::Ed25519)?;
        let tls = match tls_files {
            Some((cert, key)) => TlsIdentity {
                cert_pem: std::fs::read_to_string(cert).with_context(|| format!("cannot read {}", cert.display()))?,
                key_pem: std::fs::read_to_string(key).with_context(|| format!("cannot read {}", key.display()))?,
            },
            None => {
                std::fs::create_dir_all(data_dir.join("tls"))
                    .with_context(|| format!("cannot create {}", data_dir.join("tls").display()))?;
                let mut all: Vec<String> = vec!["localhost".into(), "127.0.0.1".into()];
                all.extend(names.iter().cloned());
                ferry_io::tls::load_or_create_self_signed(
                    &data_dir.join("tls/cert.pem"),
                    &data_dir.join("tls/key.pem"),
                    &all,
                )?
            }
        };
        let tls_fingerprint = ferry_io::tls::cert_fingerprint(&tls.cert_pem)?;
        Ok(ServerIdentity { ssh_host_key, service_key, tls, tls_fingerprint })
    }

    pub fn ssh_host_key_fingerprint(&self) -> String {
        keys::fingerprint(self.ssh_host_key.public_key())
    }
}
