//! Property tests of the protocol types, one binary.

mod props;
