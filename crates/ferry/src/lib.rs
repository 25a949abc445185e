//! Library side of the `ferry` binary: a whole Ferry system in one process ([`cluster`]) used by the demo, the
//! benchmarks and the integration tests, plus the demo and benchmark drivers themselves.

//! Unix only: they run the Comms and App servers, which are Linux programs (the Connector builds for Windows too).

#[cfg(unix)]
pub mod bench;
#[cfg(unix)]
pub mod cluster;
#[cfg(unix)]
pub mod demo;
pub mod progress;
