//! Web-service bodies. Connector <-> Comms under `/v1/...` on the Comms server; Comms <-> App under
//! `/v1/instances/...` on the App server. Every call except registration is signed (RFC 9421); the tenant is
//! never a field of a Connector request — the Comms server derives it from the signing key.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::batch::BatchId;

/// Any error answer: a safe, user-facing message (details stay in the server log).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// `POST /v1/register` (authenticated by the token's secret, not by a signature).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisterRequest {
    pub token_secret: String,
    /// OpenSSH one-line public key.
    pub public_key: String,
    /// Host name of the ERP server, for the operator's eyes.
    #[serde(default)]
    pub hostname: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisterResponse {
    pub tenant: String,
    pub key_fingerprint: String,
    /// `host:port` of the Comms SFTP endpoint.
    pub ssh_addr: String,
    /// The Comms SSH host key (`SHA256:…`): the Connector accepts no other afterwards.
    pub ssh_host_key_fingerprint: String,
}

/// `GET /v1/whoami`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WhoAmI {
    pub tenant: String,
    pub key_fingerprint: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BatchState {
    /// Completed by the Connector, files verified present at Comms, waiting to be relayed.
    Uploaded,
    /// Copied to the App server, import requested.
    Relayed,
    Imported,
    Rejected,
}

impl BatchState {
    pub fn as_str(self) -> &'static str {
        match self {
            BatchState::Uploaded => "uploaded",
            BatchState::Relayed => "relayed",
            BatchState::Imported => "imported",
            BatchState::Rejected => "rejected",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            BatchState::Uploaded,
            BatchState::Relayed,
            BatchState::Imported,
            BatchState::Rejected,
        ]
        .into_iter()
        .find(|b| b.as_str() == s)
    }

    pub fn is_final(self) -> bool {
        matches!(self, BatchState::Imported | BatchState::Rejected)
    }
}

/// `POST /v1/batches/{id}/complete` answers with this; `GET /v1/batches[/{id}]` too.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchStatus {
    pub batch_id: BatchId,
    pub state: BatchState,
    /// For `rejected`: `<file>:<line>: <reason>`; for a relay problem being retried: the last error.
    #[serde(default)]
    pub detail: Option<String>,
    pub files: u32,
    pub rows: u64,
    pub updated_at: DateTime<Utc>,
}

/// `POST /v1/instances` (Comms -> App).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateInstance {
    pub tenant: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstanceCreated {
    pub tenant: String,
    pub created: bool,
}

/// Rows imported per file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRows {
    pub name: String,
    pub rows: u64,
}

/// `POST /v1/instances/{tenant}/batches/{id}/import` (Comms -> App), body: the manifest.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImportReport {
    pub batch_id: BatchId,
    /// `imported` or `rejected`.
    pub state: BatchState,
    pub detail: Option<String>,
    pub files: Vec<FileRows>,
    /// True when this batch id had already been imported (the call was a no-op).
    #[serde(default)]
    pub duplicate: bool,
}

/// Tenant names: 1-32 of `a-z 0-9 -`, starting with a letter. They become directory and database names.
pub fn valid_tenant_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 32
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_names() {
        assert!(valid_tenant_name("acme-2"));
        for bad in ["", "Acme", "1acme", "a/b", "..", "a b", &"a".repeat(33)] {
            assert!(!valid_tenant_name(bad), "{bad}");
        }
    }
}
