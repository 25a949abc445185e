//! The App server's integration tests, one binary: the verified import and the planner.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod import;
mod planner;
mod release;
