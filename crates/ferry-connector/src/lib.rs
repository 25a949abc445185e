pub mod mapping;
pub mod source;
pub mod extract;
pub mod sample;

pub mod agent;
pub mod config;
pub mod journal;
