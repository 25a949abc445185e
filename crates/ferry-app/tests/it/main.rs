//! The App server's integration tests, one binary: the verified import and the planner.

mod import;
mod planner;
