//! Ferry's shared vocabulary: the standard CSV files (`spec`), the batch manifest (`manifest`), batch ids,
//! registration tokens and the web-service bodies (`api`). Every side depends on this crate and it does no I/O,
//! so the three programs cannot disagree about a format.

pub mod api;
pub mod batch;
pub mod manifest;
pub mod spec;
pub mod token;

/// Version of `DATA-SPEC.md` this build writes and accepts.
pub const SPEC_VERSION: &str = "1";
/// Version of the `ferry` programs (goes into every manifest).
pub const FERRY_VERSION: &str = env!("CARGO_PKG_VERSION");
