//! Issue 15 attacks: see main.rs.
