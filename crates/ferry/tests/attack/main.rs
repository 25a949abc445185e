//! The attack suite, one test binary: real servers on 127.0.0.1 attacked from outside and by a malicious tenant,
//! each attack a regression test that asserts the refusal (or that it lands harmlessly inside the attacker's own
//! tenant) and that nothing else was disturbed.
//!
//! - [`issue5`]: cross-tenant access, path escapes, signatures and replays, registration tokens, disabled tenants
//!   and revoked keys, the upload limits, bzip2 bombs, manifest lies, SQL metacharacters, brute force, the admin
//!   API.
//! - [`listeners`] (issue 15): idle and flooding connections, the open-file limit, the shared port's sniffer.
//! - [`sftp`] (issue 15): directory and handle exhaustion, quota bypasses, changing a completed batch, file names.
//! - [`rest`] (issue 15): unauthenticated audit growth, data-at-rest modes, retention, error bodies, manifest
//!   arithmetic, `connector status` exit codes.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

#[path = "../it/common.rs"]
mod common;
#[path = "../it/procs.rs"]
mod procs;

mod issue5;
mod listeners;
mod rest;
mod sftp;
