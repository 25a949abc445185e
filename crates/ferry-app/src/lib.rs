//! placeholder
pub mod import;
pub mod instance;
