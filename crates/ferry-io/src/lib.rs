//! Ferry's shared I/O building blocks, used by the Connector, the Comms server and the App
//! server alike: parallel and size-capped bzip2 ([`bz`]), MD5/SHA-256 digests computed while data
//! streams past ([`digest`]), SSH key pairs ([`keys`]), TLS identities, pinning and HTTP clients
//! ([`tls`]), RFC 9421 HTTP message signatures ([`httpsig`]), the signed JSON client of Ferry's web services
//! ([`client`]), SQLite pools ([`sqlite`]), config files ([`config`]) and retry pacing with backoff, jitter and
//! rate-limited failure logs ([`retry`]), and the allocator settings that keep resident memory flat ([`memory`]).
//!
//! Every cryptographic operation goes through one backend, `ring` (via russh, rustls and rcgen) plus
//! the RustCrypto `rsa`/`sha2`/`md-5` crates; nothing here pulls in aws-lc. Nothing here knows about
//! tenants, manifests or the CLI: errors say what failed and what to do, in terms any caller can
//! pass on to an operator.

pub mod accept;
#[cfg(windows)]
pub mod acl;
pub mod bz;
pub mod bzdec;
mod bzenc;
mod bzrand;
pub mod client;
pub mod config;
pub mod digest;
pub mod disk;
pub mod httpsig;
pub mod keys;
pub mod memory;
pub mod private;
pub mod proxy_protocol;
pub mod retry;
pub mod sqlite;
#[cfg(test)]
mod testdata;
pub mod tls;

pub use config::relative_to_config;

/// Test helper: the whole `source()` chain of an error, joined with `: `.
#[cfg(test)]
#[cfg(unix)]
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        out.push_str(": ");
        out.push_str(&e.to_string());
        cur = e.source();
    }
    out
}
