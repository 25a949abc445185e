//! The Comms server's integration tests, one binary.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod api;
