//! The Connector's integration tests, one binary: extraction, validation, delivery and every ERP source (the
//! PostgreSQL, MariaDB and ODBC ones run when their `FERRY_TEST_*` variables name a server, see [`common`]).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;
mod conformance;

mod check;
mod delivery;
mod erp_sources;
mod extract;
mod odbc_csv;
