//! The SFTP request handler over an object store ([`crate::store`]): the same confinement and limits as the
//! local [`super::fs`], with the semantics an object store allows.
//!
//! - Paths go through [`crate::path::components`]; keys are built from those components under the principal's
//!   prefix only ([`crate::store::StoreRoot::map`]). No links exist.
//! - **Writes stream into a multipart upload**: a write handle buffers at most one part
//!   ([`crate::store::Bucket::part_size`]) and sends each full part at once; the upload's state (parts, bytes,
//!   last 64 KiB) is saved after every part, so a cut upload resumes at the bytes stored. Writes must come in
//!   order (offset = bytes so far); anything else is refused with a clear message.
//! - **Visible only when complete**: the object appears when the handle is closed (the multipart upload is
//!   completed); until then the path answers `stat` with the stored bytes (for a resuming client) and is never
//!   listed.
//! - **Range reads**: a read fetches a window of [`READ_WINDOW`] bytes from its offset (one ranged GET) and
//!   answers sequential reads from it.
//! - `rename` is copy + delete and never replaces an existing target; `setstat` accepts only the current size.
//! - Files open for writing per session are capped at [`MAX_STORE_FILE_HANDLES`] (memory: a part each); the
//!   read windows of a session share [`READ_BUDGET`].

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use object_store::path::Path as Key;
use object_store::{ObjectStoreExt, PutPayload};
use russh_sftp::extensions::LIMITS;
use russh_sftp::protocol::{
    Attrs, Data, File, FileAttributes, Handle, Name, OpenFlags, Packet, Status, StatusCode, Version,
};
use russh_sftp::server::StatusReply;

use super::fs::{MAX_READ_LEN, READDIR_BATCH, bad_handle, extended, no_links, ok_status, path_status};
use super::{Authorizer, Principal};
use crate::path;
use crate::store::{self, Bucket, DIR_MARKER, Mapped, StoreRoot, TAIL_LEN, UploadState};

/// Bytes fetched by one ranged GET for reads.
pub const READ_WINDOW: usize = 4 * 1024 * 1024;
/// Files open for writing per session on an object store (a part of memory each).
pub const MAX_STORE_FILE_HANDLES: usize = 8;
/// Memory the read windows of one session share: with many files open for reading, each window is smaller
/// (never below one read), so memory stays bounded by this plus one read per open handle.
pub const READ_BUDGET: usize = 16 * 1024 * 1024;

struct Upload {
    state: UploadState,
    /// Bytes written after the stored parts (less than one part, or one part about to be sent).
    buf: BytesMut,
}

enum OpenHandle {
    Write {
        m: Mapped,
        up: Box<Upload>,
        /// This process's lock of the upload ([`store::Writers`]), released when the handle goes.
        _writer: tokio::sync::OwnedMutexGuard<()>,
    },
    /// A completed object: `size` and a window of bytes from `at`.
    Read {
        key: Key,
        size: u64,
        window: Option<(u64, Bytes)>,
    },
    /// An upload in progress opened for reading: only its stored tail can be read.
    Partial {
        bytes: u64,
        tail: Vec<u8>,
    },
    Dir {
        entries: VecDeque<File>,
        done: bool,
    },
}

/// One SFTP session's view of a principal's root in the object store.
pub(crate) struct StoreFs {
    root: StoreRoot,
    tenant: String,
    principal: Principal,
    auth: Arc<dyn Authorizer>,
    handles: HashMap<String, OpenHandle>,
    next_handle: u64,
}

fn no_such_file(op: &str) -> StatusReply {
    StatusCode::NoSuchFile.with_message(format!("{op}: no such file or directory"))
}

fn store_status(op: &str, e: &object_store::Error) -> StatusReply {
    if store::is_not_found(e) {
        return no_such_file(op);
    }
    tracing::warn!("sftp {op} on the object store failed: {e}");
    StatusCode::Failure.with_message(store::describe(op, e))
}

fn file_attrs(size: u64, mtime: Option<i64>) -> FileAttributes {
    let t = mtime.map(|t| u32::try_from(t.max(0)).unwrap_or(u32::MAX));
    FileAttributes {
        size: Some(size),
        uid: None,
        user: None,
        gid: None,
        group: None,
        permissions: Some(0o100_640),
        atime: t,
        mtime: t,
    }
}

fn dir_attrs() -> FileAttributes {
    FileAttributes {
        size: Some(0),
        uid: None,
        user: None,
        gid: None,
        group: None,
        permissions: Some(0o040_750),
        atime: None,
        mtime: None,
    }
}

/// What a path is in the store.
enum Found {
    File { size: u64, mtime: i64 },
    Uploading(UploadState),
    Dir,
    Nothing,
}

impl StoreFs {
    pub(crate) fn new(root: StoreRoot, principal: Principal, auth: Arc<dyn Authorizer>) -> Self {
        Self { root, tenant: principal.name.clone(), principal, auth, handles: HashMap::new(), next_handle: 0 }
    }

    fn bucket(&self) -> &Bucket {
        &self.root.bucket
    }

    fn map(&self, sftp_path: &str) -> Result<Mapped, StatusReply> {
        let m = self.root.map(sftp_path).map_err(|e| {
            tracing::warn!(tenant = %self.tenant, path = %sftp_path.escape_debug(), "sftp path refused: {e}");
            path_status(&e)
        })?;
        if m.parts.last().is_some_and(|p| p == DIR_MARKER) {
            return Err(StatusCode::PermissionDenied.with_message(format!("the name {DIR_MARKER} is reserved")));
        }
        Ok(m)
    }

    fn map_below_root(&self, sftp_path: &str, op: &str) -> Result<Mapped, StatusReply> {
        let m = self.map(sftp_path)?;
        if m.parts.is_empty() {
            return Err(
                StatusCode::PermissionDenied.with_message(format!("{op}: the root directory cannot be changed"))
            );
        }
        Ok(m)
    }

    async fn find(&self, m: &Mapped, op: &str) -> Result<Found, StatusReply> {
        if m.parts.is_empty() {
            return Ok(Found::Dir);
        }
        match self.bucket().os.head(&m.file).await {
            Ok(meta) => return Ok(Found::File { size: meta.size, mtime: meta.last_modified.timestamp() }),
            Err(e) if store::is_not_found(&e) => {}
            Err(e) => return Err(store_status(op, &e)),
        }
        if let Some(s) = store::load_state(self.bucket(), &m.state).await.map_err(|e| store_status(op, &e))? {
            return Ok(Found::Uploading(s));
        }
        if self.has_children(&m.file).await.map_err(|e| store_status(op, &e))? {
            return Ok(Found::Dir);
        }
        Ok(Found::Nothing)
    }

    async fn has_children(&self, dir: &Key) -> object_store::Result<bool> {
        use futures::StreamExt;
        let mut s = self.bucket().os.list(Some(dir));
        match s.next().await {
            Some(Ok(_)) => Ok(true),
            Some(Err(e)) => Err(e),
            None => Ok(false),
        }
    }

    fn add_handle(&mut self, h: OpenHandle) -> Result<String, StatusReply> {
        self.handle_room(matches!(h, OpenHandle::Write { .. }))?;
        self.next_handle = self.next_handle.wrapping_add(1);
        let id = self.next_handle.to_string();
        self.handles.insert(id.clone(), h);
        Ok(id)
    }

    /// Refuses a new handle past the principal's handle limit, and a new writer past
    /// [`MAX_STORE_FILE_HANDLES`] (a part of memory each).
    fn handle_room(&self, writer: bool) -> Result<(), StatusReply> {
        self.auth.admit_handle(&self.principal, self.handles.len()).map_err(|why| {
            tracing::warn!(tenant = %self.tenant, "sftp open refused: {why}");
            StatusCode::Failure.with_message(why)
        })?;
        let writers = self.handles.values().filter(|h| matches!(h, OpenHandle::Write { .. })).count();
        if writer && writers >= MAX_STORE_FILE_HANDLES {
            return Err(StatusCode::Failure.with_message(format!(
                "too many files open for writing in this session (limit {MAX_STORE_FILE_HANDLES} on this server); \
                 close some first"
            )));
        }
        Ok(())
    }

    /// Puts the creation of a new file or directory to the authorizer, with the count of the entries the
    /// principal's area holds ([`Authorizer::max_entries`]).
    async fn admit_create(&self, what: &str) -> Result<(), StatusReply> {
        let have = match self.auth.max_entries(&self.principal) {
            Some(max) => self.count_entries(max.saturating_add(1)).await.map_err(|e| store_status(what, &e))?,
            None => 0,
        };
        self.auth.admit_create_counted(&self.principal, have).map_err(|why| {
            tracing::warn!(tenant = %self.tenant, "sftp {what} refused: {why}");
            StatusCode::Failure.with_message(why)
        })
    }

    /// The files and directories of the principal's area, as on disk: every object (a `mkdir` marker counts
    /// as its directory), every folder holding objects, every upload in progress; counting stops at `stop`.
    async fn count_entries(&self, stop: u64) -> object_store::Result<u64> {
        use futures::StreamExt;
        let (files, uploads) = (&self.root.files, &self.root.uploads);
        let mut dirs: std::collections::HashSet<Key> = std::collections::HashSet::new();
        let mut n = 0u64;
        let mut l = self.bucket().os.list(Some(files));
        while let Some(o) = l.next().await {
            let o = o?;
            let Some(rest) = o.location.prefix_match(files) else { continue };
            let rest: Vec<_> = rest.collect();
            // the folders above the object (below the root)
            let mut dir = files.clone();
            for p in rest.iter().take(rest.len().saturating_sub(1)) {
                dir = dir.join(p.clone());
                dirs.insert(dir.clone());
            }
            if o.location.filename() != Some(DIR_MARKER) {
                n += 1;
            }
            if n + dirs.len() as u64 >= stop {
                return Ok(stop);
            }
        }
        drop(l);
        let mut l = self.bucket().os.list(Some(uploads));
        while let Some(o) = l.next().await {
            o?;
            n += 1;
            if n + dirs.len() as u64 >= stop {
                return Ok(stop);
            }
        }
        Ok(n + dirs.len() as u64)
    }

    /// Whether this session has `m` open for writing.
    fn writing(&self, m: &Mapped) -> bool {
        self.handles.values().any(|h| matches!(h, OpenHandle::Write { m: w, .. } if w.state == m.state))
    }

    /// [`Self::find`], after any other session of this process writing the upload at `m` let go of it (at
    /// most [`store::WRITER_WAIT`]): a resuming client sees what a cut session stored.
    async fn find_settled(&self, m: &Mapped, op: &str) -> Result<Found, StatusReply> {
        let found = self.find(m, op).await?;
        if !matches!(found, Found::Uploading(_)) || self.writing(m) {
            return Ok(found);
        }
        match self.bucket().writers.lock(&m.state, store::WRITER_WAIT).await {
            Some(_settled) => self.find(m, op).await,
            None => Ok(found),
        }
    }

    /// Starts a new multipart upload for `m` (after discarding any earlier one) and saves its state.
    async fn new_upload(&self, m: &Mapped) -> Result<Upload, StatusReply> {
        let b = self.bucket();
        store::discard_upload(b, &m.file, &m.state).await.map_err(|e| store_status("open", &e))?;
        let upload_id = b.mp.create_multipart(&m.file).await.map_err(|e| store_status("open", &e))?;
        let state = UploadState { upload_id, parts: vec![], bytes: 0, tail: String::new() };
        store::save_state(b, &m.state, &state).await.map_err(|e| store_status("open", &e))?;
        Ok(Upload { state, buf: BytesMut::new() })
    }

    /// Sends full parts of `up`'s buffer (all of it with `last`), saving the state after each.
    async fn flush(b: &Bucket, m: &Mapped, up: &mut Upload, last: bool) -> object_store::Result<()> {
        while up.buf.len() >= b.part_size || (last && !up.buf.is_empty()) {
            let n = up.buf.len().min(b.part_size);
            let part: Bytes = up.buf.split_to(n).freeze();
            let idx = up.state.parts.len();
            let id = b.mp.put_part(&m.file, &up.state.upload_id, idx, PutPayload::from(part.clone())).await?;
            up.state.parts.push(id.content_id);
            up.state.bytes += n as u64;
            let mut tail = up.state.tail_bytes();
            tail.extend_from_slice(&part[part.len().saturating_sub(TAIL_LEN)..]);
            let drop = tail.len().saturating_sub(TAIL_LEN);
            up.state.tail = hex::encode(&tail[drop..]);
            store::save_state(b, &m.state, &up.state).await?;
        }
        Ok(())
    }

    /// Completes `up` into its object and removes its state.
    async fn complete(b: &Bucket, m: &Mapped, mut up: Upload) -> object_store::Result<()> {
        if up.state.parts.is_empty() && up.buf.is_empty() {
            // an empty file: no part at all is not a valid multipart upload
            let _ = b.mp.abort_multipart(&m.file, &up.state.upload_id).await;
            b.os.put(&m.file, PutPayload::default()).await?;
        } else {
            Self::flush(b, m, &mut up, true).await?;
            b.mp.complete_multipart(&m.file, &up.state.upload_id, up.state.part_ids()).await?;
        }
        store::delete_if_exists(b, &m.state).await
    }

    /// On a refused write: drops the handle and the upload, answers the authorizer's message.
    async fn refuse_write(&mut self, handle: &str, why: String) -> StatusReply {
        tracing::warn!(tenant = %self.tenant, "sftp write refused: {why}");
        if let Some(OpenHandle::Write { m, .. }) = self.handles.remove(handle)
            && let Err(e) = store::discard_upload(self.bucket(), &m.file, &m.state).await
        {
            tracing::warn!(tenant = %self.tenant, "cannot discard a refused upload: {e}");
        }
        StatusCode::Failure.with_message(why)
    }
}

impl russh_sftp::server::Handler for StoreFs {
    type Error = StatusReply;

    fn unimplemented(&self) -> Self::Error {
        StatusCode::OpUnsupported.with_message("this operation is not supported by the server")
    }

    async fn init(
        &mut self,
        version: u32,
        _extensions: std::collections::HashMap<String, String>,
    ) -> Result<Version, Self::Error> {
        tracing::debug!(tenant = %self.tenant, client_version = version, "sftp init (object store)");
        let mut v = Version::new();
        v.extensions.insert(LIMITS.to_owned(), "1".to_owned());
        Ok(v)
    }

    async fn open(
        &mut self,
        id: u32,
        filename: String,
        pflags: OpenFlags,
        _attrs: FileAttributes,
    ) -> Result<Handle, Self::Error> {
        let write = pflags.contains(OpenFlags::WRITE) || pflags.contains(OpenFlags::APPEND);
        self.handle_room(write)?;
        let m = self.map_below_root(&filename, "open")?;
        if !write {
            // a resuming client reads the tail of a cut upload: after the cut session's writes landed
            let h = match self.find_settled(&m, "open").await? {
                Found::File { size, .. } => OpenHandle::Read { key: m.file, size, window: None },
                Found::Uploading(s) => OpenHandle::Partial { bytes: s.bytes, tail: s.tail_bytes() },
                Found::Dir => return Err(StatusCode::Failure.with_message("open: the path is a directory")),
                Found::Nothing => return Err(no_such_file("open")),
            };
            let handle = self.add_handle(h)?;
            return Ok(Handle { id, handle });
        }
        // a writer holds the upload's lock for as long as its handle is open
        if self.writing(&m) {
            return Err(StatusCode::Failure
                .with_message("open: the file is already open for writing in this session; close it first"));
        }
        let Some(writer) = self.bucket().writers.lock(&m.state, store::WRITER_WAIT).await else {
            return Err(StatusCode::Failure
                .with_message("open: another session is still writing this file; try again in a minute"));
        };
        let found = self.find(&m, "open").await?;
        if matches!(found, Found::Dir) {
            return Err(StatusCode::Failure.with_message("open: the path is a directory"));
        }
        let create = pflags.contains(OpenFlags::CREATE);
        if create && pflags.contains(OpenFlags::EXCLUDE) && !matches!(found, Found::Nothing) {
            return Err(StatusCode::Failure
                .with_message("open: the target already exists; remove it first or choose another name"));
        }
        let truncate = pflags.contains(OpenFlags::TRUNCATE);
        let up = match found {
            Found::Uploading(state) if !truncate => Upload { state, buf: BytesMut::new() },
            Found::Uploading(_) => self.new_upload(&m).await?,
            Found::File { size, .. } if !truncate => {
                // a completed object cannot grow: a handle that writes nothing is fine (a resuming client
                // whose file was complete), any write is refused
                let state = UploadState { upload_id: String::new(), parts: vec![], bytes: size, tail: String::new() };
                Upload { state, buf: BytesMut::new() }
            }
            Found::File { .. } => {
                store::delete_if_exists(self.bucket(), &m.file).await.map_err(|e| store_status("open", &e))?;
                self.new_upload(&m).await?
            }
            Found::Nothing if create => {
                self.admit_create("create").await?;
                self.new_upload(&m).await?
            }
            _ => return Err(no_such_file("open")),
        };
        let handle = self.add_handle(OpenHandle::Write { m, up: Box::new(up), _writer: writer })?;
        Ok(Handle { id, handle })
    }

    async fn close(&mut self, id: u32, handle: String) -> Result<Status, Self::Error> {
        match self.handles.remove(&handle) {
            Some(OpenHandle::Write { m, up, .. }) if !up.state.upload_id.is_empty() => {
                Self::complete(&self.root.bucket, &m, *up).await.map_err(|e| store_status("close", &e))?;
                Ok(ok_status(id))
            }
            Some(_) => Ok(ok_status(id)),
            None => Err(bad_handle()),
        }
    }

    async fn read(&mut self, id: u32, handle: String, offset: u64, len: u32) -> Result<Data, Self::Error> {
        let len = u64::from(len.min(MAX_READ_LEN));
        let eof = || StatusCode::Eof.with_message("end of file");
        let bucket = self.root.bucket.clone();
        // the windows of a session's readers share READ_BUDGET (each at least the read asked for)
        let readers = self.handles.values().filter(|h| matches!(h, OpenHandle::Read { .. })).count().max(1);
        let window_len = (READ_BUDGET / readers).clamp(MAX_READ_LEN as usize, READ_WINDOW) as u64;
        match self.handles.get_mut(&handle) {
            Some(OpenHandle::Read { key, size, window }) => {
                if offset >= *size || len == 0 {
                    return Err(eof());
                }
                let end = offset.saturating_add(len).min(*size);
                let hit = window.as_ref().is_some_and(|(at, w)| *at <= offset && end <= *at + w.len() as u64);
                if !hit {
                    let wend = offset.saturating_add(window_len).min(*size).max(end);
                    let bytes = bucket.os.get_range(key, offset..wend).await.map_err(|e| store_status("read", &e))?;
                    *window = Some((offset, bytes));
                }
                let Some((at, w)) = window.as_ref() else { return Err(eof()) };
                let from = usize::try_from(offset - at).unwrap_or(usize::MAX);
                let to = usize::try_from(end - at).unwrap_or(usize::MAX).min(w.len());
                let data = w.get(from..to).map(<[u8]>::to_vec).unwrap_or_default();
                if data.is_empty() {
                    return Err(eof());
                }
                Ok(Data { id, data })
            }
            Some(OpenHandle::Partial { bytes, tail }) => {
                let start = bytes.saturating_sub(tail.len() as u64);
                if offset >= *bytes {
                    return Err(eof());
                }
                if offset < start {
                    return Err(StatusCode::Failure.with_message(
                        "read: the file is still being uploaded; only its last 64 KiB can be read until it is closed",
                    ));
                }
                let from = usize::try_from(offset - start).unwrap_or(usize::MAX);
                let to = from.saturating_add(len as usize).min(tail.len());
                Ok(Data { id, data: tail.get(from..to).map(<[u8]>::to_vec).unwrap_or_default() })
            }
            Some(OpenHandle::Write { .. }) => {
                Err(StatusCode::Failure.with_message("read: this handle was opened for writing; open the file to read"))
            }
            Some(OpenHandle::Dir { .. }) => Err(StatusCode::Failure.with_message("read: the handle is a directory")),
            None => Err(bad_handle()),
        }
    }

    async fn write(&mut self, id: u32, handle: String, offset: u64, data: Vec<u8>) -> Result<Status, Self::Error> {
        let (at, len) = match self.handles.get(&handle) {
            Some(OpenHandle::Write { up, .. }) => (up.state.bytes + up.buf.len() as u64, data.len() as u64),
            Some(_) => return Err(StatusCode::Failure.with_message("write: the handle was not opened for writing")),
            None => return Err(bad_handle()),
        };
        if let Some(OpenHandle::Write { up, .. }) = self.handles.get(&handle)
            && up.state.upload_id.is_empty()
        {
            return Err(StatusCode::Failure.with_message(
                "write: a completed file cannot be changed on this server; upload it again (truncate) or under a new name",
            ));
        }
        if offset != at {
            return Err(StatusCode::Failure.with_message(format!(
                "write: this server stores files in object storage and takes writes in order only: the next write \
                 must start at offset {at} (got {offset})"
            )));
        }
        let Some(size_after) = offset.checked_add(len) else {
            return Err(StatusCode::Failure.with_message("write: the offset is out of range"));
        };
        if let Err(why) = self.auth.admit_write(&self.principal, size_after, len) {
            return Err(self.refuse_write(&handle, why).await);
        }
        let bucket = self.root.bucket.clone();
        let Some(OpenHandle::Write { m, up, .. }) = self.handles.get_mut(&handle) else { return Err(bad_handle()) };
        up.buf.extend_from_slice(&data);
        Self::flush(&bucket, m, up, false).await.map_err(|e| store_status("write", &e))?;
        Ok(ok_status(id))
    }

    async fn lstat(&mut self, id: u32, path: String) -> Result<Attrs, Self::Error> {
        let m = self.map(&path)?;
        let attrs = match self.find_settled(&m, "stat").await? {
            Found::File { size, mtime } => file_attrs(size, Some(mtime)),
            Found::Uploading(s) => file_attrs(s.bytes, None),
            Found::Dir => dir_attrs(),
            Found::Nothing => return Err(no_such_file("stat")),
        };
        Ok(Attrs { id, attrs })
    }

    async fn stat(&mut self, id: u32, path: String) -> Result<Attrs, Self::Error> {
        self.lstat(id, path).await
    }

    async fn fstat(&mut self, id: u32, handle: String) -> Result<Attrs, Self::Error> {
        let attrs = match self.handles.get(&handle) {
            Some(OpenHandle::Write { up, .. }) => file_attrs(up.state.bytes + up.buf.len() as u64, None),
            Some(OpenHandle::Read { size, .. }) => file_attrs(*size, None),
            Some(OpenHandle::Partial { bytes, .. }) => file_attrs(*bytes, None),
            Some(OpenHandle::Dir { .. }) => dir_attrs(),
            None => return Err(bad_handle()),
        };
        Ok(Attrs { id, attrs })
    }

    async fn setstat(&mut self, id: u32, path: String, attrs: FileAttributes) -> Result<Status, Self::Error> {
        let m = self.map(&path)?;
        if let Some(size) = attrs.size {
            let now = match self.find(&m, "setstat").await? {
                Found::File { size, .. } => size,
                Found::Uploading(s) => s.bytes,
                Found::Dir => {
                    return Err(
                        StatusCode::PermissionDenied.with_message("setstat: the size of a directory cannot be set")
                    );
                }
                Found::Nothing => return Err(no_such_file("setstat")),
            };
            if size != now {
                return Err(StatusCode::OpUnsupported
                    .with_message("setstat: files in object storage cannot change size; upload the file again"));
            }
        }
        Ok(ok_status(id))
    }

    async fn fsetstat(&mut self, id: u32, handle: String, attrs: FileAttributes) -> Result<Status, Self::Error> {
        let now = match self.handles.get(&handle) {
            Some(OpenHandle::Write { up, .. }) => up.state.bytes + up.buf.len() as u64,
            Some(OpenHandle::Read { size, .. }) => *size,
            Some(OpenHandle::Partial { bytes, .. }) => *bytes,
            Some(OpenHandle::Dir { .. }) => return Err(StatusCode::Failure.with_message("fsetstat: a directory")),
            None => return Err(bad_handle()),
        };
        if attrs.size.is_some_and(|s| s != now) {
            return Err(StatusCode::OpUnsupported
                .with_message("fsetstat: files in object storage cannot change size; upload the file again"));
        }
        Ok(ok_status(id))
    }

    async fn opendir(&mut self, id: u32, path: String) -> Result<Handle, Self::Error> {
        self.handle_room(false)?;
        let m = self.map(&path)?;
        let listing =
            self.bucket().os.list_with_delimiter(Some(&m.file)).await.map_err(|e| store_status("opendir", &e))?;
        if listing.objects.is_empty() && listing.common_prefixes.is_empty() && !m.parts.is_empty() {
            return Err(match self.find(&m, "opendir").await? {
                Found::File { .. } | Found::Uploading(_) => {
                    StatusCode::NoSuchFile.with_message("opendir: the path is a file, not a directory")
                }
                _ => no_such_file("opendir"),
            });
        }
        let mut entries = VecDeque::new();
        for p in &listing.common_prefixes {
            if let Some(name) = p.filename() {
                entries.push_back(File::new(decode(name), dir_attrs()));
            }
        }
        for o in &listing.objects {
            match o.location.filename() {
                Some(name) if name != DIR_MARKER => {
                    entries.push_back(File::new(decode(name), file_attrs(o.size, Some(o.last_modified.timestamp()))))
                }
                _ => {}
            }
        }
        let handle = self.add_handle(OpenHandle::Dir { entries, done: false })?;
        Ok(Handle { id, handle })
    }

    async fn readdir(&mut self, id: u32, handle: String) -> Result<Name, Self::Error> {
        match self.handles.get_mut(&handle) {
            Some(OpenHandle::Dir { entries, done }) => {
                if *done || entries.is_empty() {
                    *done = true;
                    return Err(StatusCode::Eof.with_message("end of directory"));
                }
                let n = entries.len().min(READDIR_BATCH);
                let files: Vec<File> = entries.drain(..n).collect();
                Ok(Name { id, files })
            }
            Some(_) => Err(StatusCode::Failure.with_message("readdir: the handle is a file handle; use opendir")),
            None => Err(bad_handle()),
        }
    }

    async fn remove(&mut self, id: u32, filename: String) -> Result<Status, Self::Error> {
        let m = self.map_below_root(&filename, "remove")?;
        match self.find(&m, "remove").await? {
            Found::File { .. } => {
                store::delete_if_exists(self.bucket(), &m.file).await.map_err(|e| store_status("remove", &e))?
            }
            Found::Uploading(_) => {
                store::discard_upload(self.bucket(), &m.file, &m.state)
                    .await
                    .map_err(|e| store_status("remove", &e))?;
            }
            Found::Dir => return Err(StatusCode::Failure.with_message("remove: the path is a directory")),
            Found::Nothing => return Err(no_such_file("remove")),
        }
        Ok(ok_status(id))
    }

    async fn mkdir(&mut self, id: u32, path: String, _attrs: FileAttributes) -> Result<Status, Self::Error> {
        let m = self.map_below_root(&path, "mkdir")?;
        match self.find(&m, "mkdir").await? {
            Found::Nothing => {}
            _ => {
                return Err(StatusCode::Failure
                    .with_message("mkdir: the target already exists; remove it first or choose another name"));
            }
        }
        self.admit_create("mkdir").await?;
        let marker = store::join(&m.file, &[DIR_MARKER.to_owned()]);
        self.bucket().os.put(&marker, PutPayload::default()).await.map_err(|e| store_status("mkdir", &e))?;
        Ok(ok_status(id))
    }

    async fn rmdir(&mut self, id: u32, path: String) -> Result<Status, Self::Error> {
        use futures::StreamExt;
        let m = self.map_below_root(&path, "rmdir")?;
        let marker = store::join(&m.file, &[DIR_MARKER.to_owned()]);
        let mut list = self.bucket().os.list(Some(&m.file));
        let mut any = false;
        while let Some(o) = list.next().await {
            let o = o.map_err(|e| store_status("rmdir", &e))?;
            if o.location != marker {
                return Err(StatusCode::Failure.with_message("rmdir: the directory is not empty"));
            }
            any = true;
        }
        drop(list);
        if !any {
            return Err(no_such_file("rmdir"));
        }
        store::delete_if_exists(self.bucket(), &marker).await.map_err(|e| store_status("rmdir", &e))?;
        Ok(ok_status(id))
    }

    async fn realpath(&mut self, id: u32, path: String) -> Result<Name, Self::Error> {
        let virt = path::normalize(&path).map_err(|e| path_status(&e))?;
        Ok(Name { id, files: vec![File::dummy(virt)] })
    }

    async fn rename(&mut self, id: u32, oldpath: String, newpath: String) -> Result<Status, Self::Error> {
        let from = self.map_below_root(&oldpath, "rename")?;
        let to = self.map_below_root(&newpath, "rename")?;
        match self.find(&from, "rename").await? {
            Found::File { .. } => {}
            Found::Uploading(_) => {
                return Err(StatusCode::Failure
                    .with_message("rename: the file is still being uploaded; close it first (or upload it again)"));
            }
            Found::Dir => {
                return Err(StatusCode::OpUnsupported
                    .with_message("rename: directories cannot be renamed on this server (object storage)"));
            }
            Found::Nothing => return Err(no_such_file("rename")),
        }
        if !matches!(self.find(&to, "rename").await?, Found::Nothing) {
            return Err(StatusCode::Failure
                .with_message("rename: the target already exists; remove it first or choose another name"));
        }
        let b = self.bucket();
        b.os.copy(&from.file, &to.file).await.map_err(|e| store_status("rename", &e))?;
        store::delete_if_exists(b, &from.file).await.map_err(|e| store_status("rename", &e))?;
        // as on disk: an upload is complete when renamed into place (e.g. for the Comms early relay)
        let target = to.parts.iter().fold(self.principal.root.clone(), |p, c| p.join(c));
        self.auth.renamed(&self.principal, &target);
        Ok(ok_status(id))
    }

    async fn readlink(&mut self, _id: u32, _path: String) -> Result<Name, Self::Error> {
        Err(no_links())
    }

    async fn symlink(&mut self, _id: u32, _linkpath: String, _targetpath: String) -> Result<Status, Self::Error> {
        Err(no_links())
    }

    async fn extended(&mut self, id: u32, request: String, _data: Vec<u8>) -> Result<Packet, Self::Error> {
        extended(id, &request, self.auth.max_open_handles(&self.principal))
    }
}

/// A key component as the client named it (object_store percent-encodes some characters).
fn decode(part: &str) -> String {
    percent_decode(part)
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let Some(h) = s.get(i + 1..i + 3)
            && let Ok(v) = u8::from_str_radix(h, 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|_| s.to_owned())
}
