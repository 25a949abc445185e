//! Property tests of the protocol types, one binary.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod props;
