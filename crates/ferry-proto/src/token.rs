//! Registration tokens. `ferry comms tenant add` prints one; the Connector's `register --token` uses it once.
//! Like kubeadm's join token it carries what the Connector needs to trust a self-signed server on first contact:
//! the Comms URL and the SHA-256 fingerprint of its TLS certificate, plus a random secret. The Comms server keeps
//! only a hash of the secret, with an expiry, and marks it used.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use serde::{Deserialize, Serialize};

const PREFIX: &str = "ferry1.";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistrationToken {
    /// `https://comms.example:443`
    pub url: String,
    /// `sha256:<hex>` of the Comms TLS certificate, or empty when the server has a CA-signed certificate.
    pub tls: String,
    /// The single-use secret (base64url, 32 random bytes).
    pub secret: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "this is not a ferry registration token (expected ferry1.…): copy the whole token printed by `ferry comms tenant add`"
)]
pub struct BadToken;

impl RegistrationToken {
    pub fn generate(url: &str, tls_fingerprint: &str) -> Self {
        let mut secret = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut secret);
        RegistrationToken {
            url: url.to_string(),
            tls: tls_fingerprint.to_string(),
            secret: URL_SAFE_NO_PAD.encode(secret),
        }
    }

    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(json))
    }

    pub fn decode(s: &str) -> Result<Self, BadToken> {
        let body = s.trim().strip_prefix(PREFIX).ok_or(BadToken)?;
        let json = URL_SAFE_NO_PAD.decode(body).map_err(|_| BadToken)?;
        let t: RegistrationToken = serde_json::from_slice(&json).map_err(|_| BadToken)?;
        if t.secret.len() < 32 || !(t.url.starts_with("https://")) {
            return Err(BadToken);
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_junk() {
        let t = RegistrationToken::generate("https://127.0.0.1:8443", "sha256:ab");
        assert_eq!(RegistrationToken::decode(&t.encode()).unwrap(), t);
        assert_eq!(RegistrationToken::decode("ferry1.!!"), Err(BadToken));
        assert_eq!(RegistrationToken::decode("hello"), Err(BadToken));
        let other = RegistrationToken::generate("https://127.0.0.1:8443", "sha256:ab");
        assert_ne!(other.secret, t.secret);
    }
}
