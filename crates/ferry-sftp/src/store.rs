//! A principal's SFTP root in an object store (S3 and compatible; [`object_store::memory::InMemory`] in tests),
//! and the resumable uploads the SFTP server writes there.
//!
//! Layout: every file a principal sees is one object under [`StoreRoot::files`] (`/a/b` is `<files>/a/b`);
//! directories are implicit (a prefix with objects under it) and `mkdir` puts an empty [`DIR_MARKER`] object so
//! that an empty directory exists too. An upload in progress is an S3 *multipart upload* of the file's key plus a
//! small JSON state object under [`StoreRoot::uploads`] (same relative path): the upload id, the ETags of the
//! parts stored so far, their byte count and a copy of their last [`TAIL_LEN`] bytes. Nothing of an unfinished
//! upload is an object under `files`, so it is never listed nor relayed; it becomes the object at once, complete,
//! when the writing handle is closed (`CompleteMultipartUpload`).
//!
//! A cut upload resumes: `stat` of its path answers the bytes its stored parts hold, a read of its last
//! [`TAIL_LEN`] bytes is answered from the state (what the Connector compares before resuming), and a new
//! handle opened without `TRUNCATE` continues the same multipart upload at that offset. Bytes written after the
//! last stored part (less than one part) were only in memory and are sent again by the client.
//!
//! **Invariant**: every key is `<files or uploads prefix>/<components>` where the components come from
//! [`crate::path::components`] (no `..`, no separators, no control characters), and object_store encodes each
//! component on its own: a principal cannot name a key outside its prefixes.

use std::sync::Arc;

use bytes::Bytes;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use crate::path::{self, PathError};

/// Bytes of an open upload's stored parts kept in its state, for a resuming client's tail comparison (the
/// Ferry client compares the last 64 KiB).
pub const TAIL_LEN: usize = 64 * 1024;
/// The empty object `mkdir` puts into a new directory (never listed, never openable).
pub const DIR_MARKER: &str = ".ferry-dir";
/// Smallest part S3 accepts (every part but the last).
pub const MIN_PART_SIZE: usize = 5 * 1024 * 1024;
/// Default size of the parts an upload is sent in (memory per open upload).
pub const DEFAULT_PART_SIZE: usize = 8 * 1024 * 1024;

/// One bucket (and optional key prefix) of an object store, with its multipart API.
#[derive(Clone)]
pub struct Bucket {
    pub os: Arc<dyn ObjectStore>,
    pub mp: Arc<dyn MultipartStore>,
    /// Every key starts with this (may be empty).
    pub prefix: Key,
    /// Size of the parts uploads are sent in (>= [`MIN_PART_SIZE`]).
    pub part_size: usize,
    /// The uploads being written through this process (shared by every clone).
    pub writers: Arc<Writers>,
}

/// The uploads a session of this process is writing: one lock per upload state key, held by the writing
/// handle. A resuming session (`stat`, `open` without `TRUNCATE`) waits until a cut session has carried out the
/// writes it received, so it sees the parts they stored and never writes the same parts at once. Across
/// processes (replicas) there is no such lock; see docs/scale-out.md.
#[derive(Default)]
pub struct Writers(std::sync::Mutex<std::collections::HashMap<Key, Arc<tokio::sync::Mutex<()>>>>);

/// How long a resuming session waits for a cut session that still writes the same upload.
pub const WRITER_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

impl Writers {
    /// The lock of the upload whose state is `state`, waiting at most `wait`; `None` if it is still held then.
    pub async fn lock(&self, state: &Key, wait: std::time::Duration) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        let m = {
            let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
            // locks nobody holds or waits for are forgotten
            map.retain(|_, m| Arc::strong_count(m) > 1);
            map.entry(state.clone()).or_default().clone()
        };
        tokio::time::timeout(wait, m.lock_owned()).await.ok()
    }
}

impl std::fmt::Debug for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bucket({}, prefix {:?}, part_size {})", self.os, self.prefix.as_ref(), self.part_size)
    }
}

impl Bucket {
    pub fn new<S: ObjectStore + MultipartStore>(store: S, prefix: Key, part_size: usize) -> Self {
        let s = Arc::new(store);
        Self { os: s.clone(), mp: s, prefix, part_size: part_size.max(MIN_PART_SIZE), writers: Arc::default() }
    }

    /// `<prefix>/<parts...>` (each part encoded on its own: a `/` inside a part cannot make a new level).
    pub fn key<'a>(&self, parts: impl IntoIterator<Item = &'a str>) -> Key {
        parts.into_iter().fold(self.prefix.clone(), |k, p| k.join(p))
    }
}

/// What one principal sees over SFTP: objects under `files`, open uploads' states under `uploads`.
#[derive(Debug, Clone)]
pub struct StoreRoot {
    pub bucket: Bucket,
    pub files: Key,
    pub uploads: Key,
}

/// A client path mapped into the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapped {
    /// The components below the root (empty: the root).
    pub parts: Vec<String>,
    /// The file's object.
    pub file: Key,
    /// Its upload state object.
    pub state: Key,
}

impl StoreRoot {
    /// Maps a client path (checked by [`path::components`]) onto this root.
    pub fn map(&self, sftp_path: &str) -> Result<Mapped, PathError> {
        let parts: Vec<String> = path::components(sftp_path)?.into_iter().map(str::to_owned).collect();
        let file = join(&self.files, &parts);
        let state = join(&self.uploads, &parts);
        Ok(Mapped { parts, file, state })
    }
}

/// `base/<parts...>`, each part encoded on its own.
pub fn join(base: &Key, parts: &[String]) -> Key {
    parts.iter().fold(base.clone(), |k, p| k.join(p.as_str()))
}

/// The key `key` has under `to` when it lies under `from` (`from/x/y` -> `to/x/y`), parts kept as encoded.
pub fn rebase(key: &Key, from: &Key, to: &Key) -> Option<Key> {
    let rest = key.prefix_match(from)?;
    Some(Key::from_iter(to.parts().chain(rest)))
}

/// The stored state of an upload in progress.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UploadState {
    /// The multipart upload's id.
    pub upload_id: String,
    /// ETags of the parts stored, in order (part `i` has index `i`).
    pub parts: Vec<String>,
    /// Bytes the stored parts hold.
    pub bytes: u64,
    /// Hex of the last (at most [`TAIL_LEN`]) of those bytes.
    pub tail: String,
}

impl UploadState {
    pub fn tail_bytes(&self) -> Vec<u8> {
        hex::decode(&self.tail).unwrap_or_default()
    }

    pub fn part_ids(&self) -> Vec<PartId> {
        self.parts.iter().map(|p| PartId { content_id: p.clone() }).collect()
    }
}

/// Reads an upload's state; `None` if there is none.
pub async fn load_state(b: &Bucket, key: &Key) -> object_store::Result<Option<UploadState>> {
    match b.os.get(key).await {
        Ok(r) => {
            let body = r.bytes().await?;
            match serde_json::from_slice(&body) {
                Ok(s) => Ok(Some(s)),
                Err(e) => {
                    tracing::warn!(key = %key, "an upload state cannot be read ({e}); the upload starts over");
                    Ok(None)
                }
            }
        }
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

pub async fn save_state(b: &Bucket, key: &Key, s: &UploadState) -> object_store::Result<()> {
    let body = serde_json::to_vec(s).unwrap_or_default();
    b.os.put(key, PutPayload::from(Bytes::from(body))).await.map(|_| ())
}

/// Aborts the upload of `file` described by the state at `state` (if any) and removes the state.
pub async fn discard_upload(b: &Bucket, file: &Key, state: &Key) -> object_store::Result<bool> {
    let Some(s) = load_state(b, state).await? else { return Ok(false) };
    if let Err(e) = b.mp.abort_multipart(file, &s.upload_id).await {
        tracing::debug!(key = %file, "aborting a multipart upload: {e}");
    }
    delete_if_exists(b, state).await?;
    Ok(true)
}

/// Deletes `key`; a missing object is fine.
pub async fn delete_if_exists(b: &Bucket, key: &Key) -> object_store::Result<()> {
    match b.os.delete(key).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Whether an object store error means "no such object".
pub fn is_not_found(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::NotFound { .. })
}

/// An object store error for a client or a log: the operation and the error's kind, without the store's
/// message (which may hold the endpoint or bucket).
pub fn describe(op: &str, e: &object_store::Error) -> String {
    let kind = match e {
        object_store::Error::NotFound { .. } => "not found",
        object_store::Error::AlreadyExists { .. } => "already exists",
        object_store::Error::Precondition { .. } => "precondition failed",
        object_store::Error::NotSupported { .. } => "not supported by the object store",
        object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. } => {
            "the object store refused the server's credentials"
        }
        _ => "the object store did not answer as expected; try again later",
    };
    format!("{op}: {kind}")
}
