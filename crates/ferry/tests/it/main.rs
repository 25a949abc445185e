//! The `ferry` crate's integration tests, one binary (one link of the whole tree): real Comms and App servers and
//! Connectors on 127.0.0.1 in this process ([`ferry::cluster`]), and the `ferry` binary itself as separate
//! processes behind fault-injecting TCP proxies ([`procs`], for `faults` and `reliability`).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod browser;
mod common;
mod procs;

mod apps;
mod architecture;
mod bench;
mod check;
mod cluster;
mod comms_postgres;
mod comms_s3;
mod console;
mod db_move;
mod downstream;
mod erp_values;
mod faults;
mod incremental;
mod ops;
mod proxy;
mod proxy_protocol;
mod release;
mod reliability;
mod replicas;
mod security;
mod upstream;
mod web;
mod windows;
