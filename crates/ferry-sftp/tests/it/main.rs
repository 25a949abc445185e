//! The SFTP server and client against each other (and OpenSSH's `sftp` where installed), one binary.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod sftp;
