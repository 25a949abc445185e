//! Web-service plumbing that both servers share, so the rules live in one place: HTTPS serving on a given
//! listener and the tasks of a server ([`serve`]), verification of RFC 9421 signed requests with replay
//! protection ([`auth`]) and the one extractor every signed route uses ([`signed`]), the one background worker
//! loop, tenants concurrently ([`worker`]), a server's identity on disk ([`identity`]), the one API error type ([`error`]) and the
//! pieces of server-rendered pages for people: sessions, CSRF, forms, passwords, login limits ([`page`]).
//! Server side only: the signed JSON client is `ferry_io::client`, so a Connector compiles no HTTP server.

pub mod admin_token;
pub mod auth;
pub mod error;
pub mod identity;
pub mod page;
pub mod retention;
pub mod serve;
pub mod signed;
pub mod worker;

pub use error::ApiError;
pub use signed::{Signed, SignedBy};
