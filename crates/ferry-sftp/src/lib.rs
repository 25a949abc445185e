//! Ferry's SFTP transport: a russh server that confines each principal to its own root, and a
//! pipelined, host-key-pinned russh client.
//!
//! - [`server`]: public-key-only SSH, the `sftp` subsystem only, every path confined with
//!   [`path::confine`]; safe under deep pipelining (no russh channel deadlock).
//! - [`client`]: [`client::SftpClient`] uploads through `.name.part` + rename, downloads the
//!   same way locally, and refuses any server whose host key is not the pinned one.
//! - [`path`]: the pure path normalisation and the root confinement check.
//!
//! **API boundary**: this crate knows nothing about tenants' data, batches or databases; an
//! [`server::Authorizer`] supplied by the caller turns a key into a [`server::Principal`].

pub mod client;
pub mod path;
#[cfg(unix)] // the SFTP server runs on the cloud side (Linux); the client runs on Windows ERP servers too
pub mod server;
#[cfg(unix)]
pub mod store;

pub use client::{ClientConfig, ClientError, SftpClient};
pub use path::{PathError, confine};
#[cfg(unix)]
pub use server::{
    Authorizer, KeyList, Principal, ServerConfig, SessionInfo, Sessions, host_key_fingerprint, serve, serve_stream,
    serve_with,
};
