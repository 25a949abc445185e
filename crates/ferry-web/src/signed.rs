//! The one extractor for signed requests, on every server: [`Signed<C>`] reads the body, verifies its RFC 9421
//! signature (replays refused, [`crate::auth`]) against the key the server finds for its `keyid`, and hands the
//! handler the verified caller `C` and the body — nothing else. A refused signature is answered 401 and
//! reported to the server ([`SignedBy::refused`], e.g. audited).
//!
//! Invariant: who the caller is comes only from the key that signed; never from the path, a header or the body.
//! A server says how it finds a key and who a key is by implementing [`SignedBy<C>`] on its state, once per kind
//! of caller (a tenant's Connector, the App service, the Comms service).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequest, Request};
use russh::keys::PublicKey;

use crate::ApiError;
use crate::auth::SignatureVerifier;

/// Largest signed body accepted (a manifest is a few kB).
pub const MAX_SIGNED_BODY: usize = 1024 * 1024;

/// How a server's state checks requests signed by callers of kind `C`.
pub trait SignedBy<C>: Send + Sync + 'static {
    fn verifier(&self) -> &SignatureVerifier;

    /// Whether this kind of caller can be accepted at all (e.g. a key is configured); refused otherwise.
    fn ready(&self) -> Result<(), ApiError> {
        Ok(())
    }

    /// The public key of `keyid`, if it may sign.
    fn key(&self, keyid: &str) -> Option<PublicKey>;

    /// The caller behind the verified `keyid` (it may record the key's use).
    fn caller(&self, keyid: String, peer: Option<SocketAddr>) -> impl Future<Output = Result<C, ApiError>> + Send;

    /// A signature was refused (`what`: method, path and why): audit it if the server does.
    fn refused(&self, _peer: Option<SocketAddr>, _what: &str) {}

    /// After the in-memory replay check passed: a check shared with other replicas of the server (a signed call
    /// replayed to another replica must be refused too), remembering `nonce` of `keyid` until `until` (unix
    /// seconds). Default: none (one process).
    fn first_use(&self, _keyid: &str, _nonce: &str, _until: i64) -> impl Future<Output = Result<(), ApiError>> + Send {
        async { Ok(()) }
    }
}

/// A request whose signature was verified: the caller and the body.
pub struct Signed<C> {
    pub caller: C,
    pub body: Bytes,
}

impl<S, C> FromRequest<Arc<S>> for Signed<C>
where
    S: SignedBy<C>,
    C: Send,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, st: &Arc<S>) -> Result<Self, ApiError> {
        st.ready()?;
        let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
        let (parts, body) = req.into_parts();
        let too_large = || {
            ApiError::TooLarge(format!("the request body is larger than {MAX_SIGNED_BODY} bytes; send a smaller one"))
        };
        let announced = parts
            .headers
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if announced.is_some_and(|n| n > MAX_SIGNED_BODY as u64) {
            return Err(too_large());
        }
        let body = axum::body::to_bytes(body, MAX_SIGNED_BODY).await.map_err(|e| {
            if format!("{e:#}").contains("length limit") {
                too_large()
            } else {
                ApiError::BadRequest(format!("the request body could not be read: {e}"))
            }
        })?;
        let verified = st.verifier().verify(&parts.method, &parts.uri, &parts.headers, &body, |k| st.key(k));
        let caller = match verified {
            Ok(v) => match st.first_use(&v.keyid, &v.nonce, st.verifier().remember_until(v.created)).await {
                Ok(()) => st.caller(v.keyid, peer).await,
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        match caller {
            Ok(caller) => Ok(Signed { caller, body }),
            Err(e) => {
                if let ApiError::Unauthorized(why) = &e {
                    st.refused(peer, &format!("https {} {}: {why}", parts.method, parts.uri.path()));
                }
                Err(e)
            }
        }
    }
}
