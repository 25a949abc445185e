pub mod check;
pub mod extract;
pub mod mapping;
pub mod source;

pub mod agent;
pub mod config;
pub mod delivery;
pub mod journal;
pub mod pending;
pub mod proxy;
pub mod receive;
mod writeback_sql;
