//! Web-service plumbing that both servers and every client share, so the rules live in one place: HTTPS serving
//! on a given listener ([`serve`]), verification of RFC 9421 signed requests with replay protection ([`auth`]),
//! a signing JSON client ([`client`]) and the one API error type ([`error`]).

pub mod auth;
pub mod client;
pub mod error;
pub mod identity;
pub mod serve;

pub use error::ApiError;
