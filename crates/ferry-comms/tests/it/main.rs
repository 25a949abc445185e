//! The Comms server's integration tests, one binary.

mod api;
