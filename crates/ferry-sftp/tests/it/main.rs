//! The SFTP server and client against each other (and OpenSSH's `sftp` where installed), one binary.

mod sftp;
