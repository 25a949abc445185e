//! Server side of signed requests: check the RFC 9421 signature (via `ferry_io::httpsig`), refuse a nonce seen
//! before within the validity window, and hand back the key id. Which principal a key id means is the caller's
//! business (a tenant on Comms, the Comms service on App) — it never comes from the path, a header or the body.

use axum::http::{HeaderMap, Method, Uri};
use ferry_io::httpsig::{self, NonceCache, Verified};
use russh::keys::PublicKey;

use crate::ApiError;

pub struct SignatureVerifier {
    nonces: NonceCache,
    max_age_secs: i64,
}

impl SignatureVerifier {
    pub fn new(max_age_secs: i64) -> Self {
        SignatureVerifier { nonces: NonceCache::default(), max_age_secs }
    }

    /// Until when (unix seconds) the nonce of a signature made at `created` must stay remembered: as long as the
    /// signature could still be accepted, plus a margin.
    pub fn remember_until(&self, created: i64) -> i64 {
        created.saturating_add(self.max_age_secs).saturating_add(120)
    }

    pub fn verify(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: &[u8],
        lookup: impl Fn(&str) -> Option<PublicKey>,
    ) -> Result<Verified, ApiError> {
        let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let now = chrono::Utc::now().timestamp();
        let v = httpsig::verify(method.as_str(), path, headers, body, now, self.max_age_secs, lookup)
            .map_err(|e| ApiError::Unauthorized(format!("request signature refused: {e}")))?;
        // A nonce must stay remembered for as long as its signature could still be accepted.
        if !self.nonces.check_and_insert(&v.nonce, self.remember_until(v.created)) {
            return Err(ApiError::Unauthorized(
                "request signature refused: this signature was already used (replay); sign every request afresh".into(),
            ));
        }
        Ok(v)
    }
}
