//! Library side of the `ferry` binary: a whole Ferry system in one process ([`cluster`]) used by the demo, the
//! benchmarks and the integration tests, plus the demo and benchmark drivers themselves.

pub mod bench;
pub mod cluster;
pub mod demo;
