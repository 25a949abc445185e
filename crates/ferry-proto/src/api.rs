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

/// `POST /v1/keys/rotate` (signed with the current key).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RotateKey {
    /// The new OpenSSH public key.
    pub public_key: String,
}

/// `GET /v1/whoami`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WhoAmI {
    pub tenant: String,
    pub key_fingerprint: String,
    /// The server's clock when it answered (`connector doctor` measures the skew against it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_time: Option<chrono::DateTime<chrono::Utc>>,
    /// How old a signed request may be at the server (its `signature_max_age_secs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature_max_age_secs: Option<i64>,
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
        [BatchState::Uploaded, BatchState::Relayed, BatchState::Imported, BatchState::Rejected]
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
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
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

/// Downstream file ids share the batch id format (sortable, path-safe).
pub type FileId = BatchId;

/// Names of downstream files (`po_000001.csv`, `rp_000002.csv`, any report name the App gives): 1-64 of
/// `a-z 0-9 _ - .`, not starting with a dot. They become file names in the ERP's inbound folder.
pub fn valid_file_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0] != b'.'
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'-' | b'.'))
        && !name.contains("..")
}

/// `POST /v1/app/files` (App -> Comms, signed by the App's service key): a file for a tenant is waiting in
/// the App's outbox at `/<tenant>/outbox/<file_id>/<name>` on the App's SFTP server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileReady {
    pub tenant: String,
    pub file_id: FileId,
    pub name: String,
    pub bytes: u64,
    pub md5: String,
    pub sha256: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileState {
    /// Created in the instance (App side), Comms not yet told.
    Created,
    /// Comms knows it and is fetching it from the App.
    Fetching,
    /// Fetched by Comms, compressed and on the tenant's download list.
    Relayed,
    /// Applied by the Connector and acknowledged.
    Delivered,
}

impl FileState {
    pub fn as_str(self) -> &'static str {
        match self {
            FileState::Created => "created",
            FileState::Fetching => "fetching",
            FileState::Relayed => "relayed",
            FileState::Delivered => "delivered",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [FileState::Created, FileState::Fetching, FileState::Relayed, FileState::Delivered]
            .into_iter()
            .find(|f| f.as_str() == s)
    }
}

/// `GET /v1/files?wait=N` answers a list of these: files waiting for the caller's ERP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownloadFile {
    pub id: FileId,
    pub name: String,
    /// Plain size and digests (what the Connector must end up with).
    pub bytes: u64,
    pub md5: String,
    pub sha256: String,
    /// Size of the `.bz2` to download, and its SFTP path in the tenant's root.
    pub compressed_bytes: u64,
    pub path: String,
    pub created_at: DateTime<Utc>,
}

/// `POST /v1/files/{id}/ack`: the file was applied to the ERP.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileAck {
    /// SHA-256 of the plain file as applied (must match).
    pub sha256: String,
}

/// `POST /v1/files/{id}/error`: delivery failed on the ERP side; will be retried. Shown to operators.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileError {
    pub error: String,
}

/// Where a downstream file is, as the App sees it (`ferry app files TENANT`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileReceipt {
    pub file_id: FileId,
    pub name: String,
    pub state: FileState,
    pub created_at: DateTime<Utc>,
    pub relayed_at: Option<DateTime<Utc>>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub detail: Option<String>,
}

/// `POST /v1/instances/{tenant}/files/{id}/state` (Comms -> App): progress of a file the App created.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileProgress {
    pub state: FileState,
    pub at: DateTime<Utc>,
    pub detail: Option<String>,
}

/// Most files in one batched downstream call ([`FilesReady`], [`FileAcks`], [`FilesProgress`]); a sender with
/// more sends several calls.
pub const MAX_FILES_PER_CALL: usize = 200;

/// `POST /v1/app/files` with many files at once (the body has `files`; a single [`FileReady`] is still
/// accepted): every file the App's announcer has not announced yet, in one signed call.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FilesReady {
    pub files: Vec<FileReady>,
}

/// A file of a batched call that was not taken, and why (the others of the call were).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRefused {
    pub file_id: FileId,
    pub error: String,
}

/// The answer to [`FilesReady`]: the files recorded (or already known) and the ones refused.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FilesAnnounced {
    pub accepted: Vec<FileId>,
    pub refused: Vec<FileRefused>,
}

/// One file of [`FileAcks`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileAckOf {
    pub id: FileId,
    /// SHA-256 of the plain file as applied (must match).
    pub sha256: String,
}

/// `POST /v1/files/ack` (Connector -> Comms): many applied files acknowledged in one call. Idempotent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileAcks {
    pub files: Vec<FileAckOf>,
}

/// The answer to [`FileAcks`]: the files now delivered and the ones refused (unknown, not ready, wrong SHA-256).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FilesAcked {
    pub delivered: Vec<FileId>,
    pub refused: Vec<FileRefused>,
}

/// One file of [`FilesProgress`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileProgressOf {
    pub file_id: FileId,
    #[serde(flatten)]
    pub progress: FileProgress,
}

/// `POST /v1/instances/{tenant}/files/state` (Comms -> App): the progress of many files in one call.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FilesProgress {
    pub files: Vec<FileProgressOf>,
}

/// The answer to [`FilesProgress`]: files recorded, and files the instance's outbox does not hold.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FilesProgressed {
    pub updated: Vec<FileId>,
    pub unknown: Vec<FileId>,
}
