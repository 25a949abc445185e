//! The App server: hosts one isolated instance per customer (its own SQLite file), receives relayed batches
//! from the Comms server, checks them against their manifest (MD5 and SHA-256 of every file) and imports each
//! batch whole or not at all.
pub mod import;
pub mod instance;
pub mod metrics;
pub mod planner;
pub mod release;

pub mod config;
pub mod downstream;
pub mod outbox;
pub mod server;
pub mod web;

pub use config::AppConfig;
