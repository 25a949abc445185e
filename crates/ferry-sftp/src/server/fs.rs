//! The SFTP request handler: a local file system confined to one principal's root.
//!
//! Implements [`russh_sftp::server::Handler`]. Every client path goes through
//! [`crate::path::confine`]; files are opened with `O_NOFOLLOW`; symbolic links are neither
//! created, read nor listed; `stat` never follows a link (it answers like `lstat`). Blocking
//! file-system calls run on tokio's blocking pool. Error messages sent to the client never
//! contain a host path.
//!
//! Semantics worth knowing:
//! - `rename` never replaces an existing target (SFTP v3 semantics, `renameat2(RENAME_NOREPLACE)`
//!   on Linux); remove the target first to replace it.
//! - `setstat`/`fsetstat` apply only `size` (truncate); ownership, permissions and times are
//!   accepted and ignored. New files get mode 0640, new directories 0750 (before umask).
//! - A file that was written through a handle is `fdatasync`ed when that handle is closed, so a
//!   file that the client then renames into place survives a host crash.
//! - `read` answers at most [`MAX_READ_LEN`] bytes, as advertised by `limits@openssh.com`.
//! - Every write (and every `setstat` that grows a file) is first put to [`Authorizer::admit_write`], charged
//!   with what it makes the server store: the bytes written, or the growth of the file if more (a write far
//!   past the end, a `setstat` that extends a file sparsely). A refused write answers the authorizer's
//!   message, closes the handle and removes the file, so a file that broke a limit never stays half-written.
//! - A handle writes only while its file is still where it was opened: once the file was moved or removed
//!   (e.g. the Comms server took a completed batch out of the SFTP root), writes and size changes through
//!   handles opened before fail.
//! - Directory listings are streamed: `readdir` reads the next [`READDIR_BATCH`] entries from the directory
//!   itself, so a handle holds an open directory stream, never the whole listing.
//! - New files and directories are first put to [`Authorizer::admit_create`]; open handles per session are
//!   capped by [`Authorizer::max_open_handles`].

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use russh_sftp::extensions::{LIMITS, LimitsExtension};
use russh_sftp::protocol::{
    Attrs, Data, ExtendedReply, File, FileAttributes, Handle, Name, OpenFlags, Packet, Status, StatusCode, Version,
};
use russh_sftp::server::StatusReply;

use super::{Authorizer, Principal};
use crate::path::{self, PathError};

/// Largest SFTP packet accepted from a client (the OpenSSH value).
pub const MAX_PACKET_LEN: u32 = 256 * 1024;
/// Largest `read` answered and largest `write` expected (OpenSSH: 256 KiB - 1 KiB).
pub const MAX_READ_LEN: u32 = MAX_PACKET_LEN - 1024;
/// Open file and directory handles allowed per SFTP session (the default of
/// [`Authorizer::max_open_handles`]).
pub const MAX_OPEN_HANDLES: usize = 256;
/// Entries per `readdir` answer (read from the directory on demand).
pub const READDIR_BATCH: usize = 128;
const FILE_MODE: u32 = 0o640;
const DIR_MODE: u32 = 0o750;

enum OpenHandle {
    /// `id`: device and inode of the file when it was opened, to notice that it was moved away.
    File { file: Arc<fs::File>, written: bool, path: PathBuf, append: bool, id: (u64, u64) },
    /// `None` once the directory stream is exhausted.
    Dir { stream: Option<fs::ReadDir> },
}

/// What a write or size change through a handle found: the file's size now, or that the file is no longer at
/// its path.
enum InPlace {
    Len(u64),
    Moved,
}

/// Whether the file behind `file` is still at `path` (same device and inode), and its size now.
fn in_place(file: &fs::File, path: &Path, id: (u64, u64)) -> io::Result<InPlace> {
    let len = file.metadata()?.len();
    match fs::symlink_metadata(path) {
        Ok(m) if (m.dev(), m.ino()) == id => Ok(InPlace::Len(len)),
        Ok(_) => Ok(InPlace::Moved),
        Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory) => Ok(InPlace::Moved),
        Err(e) => Err(e),
    }
}

fn moved_status(op: &str) -> StatusReply {
    StatusCode::Failure.with_message(format!(
        "{op}: the file was moved or removed since this handle was opened (a completed batch cannot be changed); \
         open the file again, or upload a new batch"
    ))
}

/// Bytes a write or size change is charged: the bytes written, or the growth of the file if that is more.
fn charge(written: u64, len_before: u64, size_after: u64) -> u64 {
    written.max(size_after.saturating_sub(len_before))
}

/// One SFTP session's view of the file system.
pub(crate) struct ConfinedFs {
    root: PathBuf,
    tenant: String,
    principal: Principal,
    auth: Arc<dyn Authorizer>,
    handles: HashMap<String, OpenHandle>,
    next_handle: u64,
}

impl ConfinedFs {
    /// `root` must be the canonicalised principal root.
    pub(crate) fn new(root: PathBuf, principal: Principal, auth: Arc<dyn Authorizer>) -> Self {
        Self { root, tenant: principal.name.clone(), principal, auth, handles: HashMap::new(), next_handle: 0 }
    }

    /// Puts a write to the authorizer; on refusal closes `handle` (if any), removes the file and answers
    /// the authorizer's message.
    async fn admit(
        &mut self,
        handle: Option<&str>,
        path: &Path,
        size_after: u64,
        bytes: u64,
    ) -> Result<(), StatusReply> {
        let Err(why) = self.auth.admit_write(&self.principal, size_after, bytes) else {
            return Ok(());
        };
        tracing::warn!(tenant = %self.tenant, size_after, "sftp write refused: {why}");
        if let Some(h) = handle {
            self.handles.remove(h);
        }
        let p = path.to_owned();
        if let Err(e) = blocking(move || fs::remove_file(p)).await
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(tenant = %self.tenant, "cannot remove a refused upload: {e}");
        }
        Err(StatusCode::Failure.with_message(why))
    }

    fn confine(&self, sftp_path: &str) -> Result<PathBuf, StatusReply> {
        path::confine(&self.root, sftp_path).map_err(|e| {
            tracing::warn!(tenant = %self.tenant, path = %sftp_path.escape_debug(), "sftp path refused: {e}");
            path_status(&e)
        })
    }

    /// Like [`Self::confine`] but refuses the root itself (for remove, rename, rmdir).
    fn confine_below_root(&self, sftp_path: &str, op: &str) -> Result<PathBuf, StatusReply> {
        let p = self.confine(sftp_path)?;
        if p == self.root {
            return Err(
                StatusCode::PermissionDenied.with_message(format!("{op}: the root directory cannot be changed"))
            );
        }
        Ok(p)
    }

    /// Refuses a new handle when the session holds as many as its principal may.
    fn handle_room(&self) -> Result<(), StatusReply> {
        self.auth.admit_handle(&self.principal, self.handles.len()).map_err(|why| {
            tracing::warn!(tenant = %self.tenant, "sftp open refused: {why}");
            StatusCode::Failure.with_message(why)
        })
    }

    /// Puts the creation of a new file or directory to the authorizer.
    fn admit_create(&self, what: &str) -> Result<(), StatusReply> {
        self.auth.admit_create(&self.principal).map_err(|why| {
            tracing::warn!(tenant = %self.tenant, "sftp {what} refused: {why}");
            StatusCode::Failure.with_message(why)
        })
    }

    fn add_handle(&mut self, h: OpenHandle) -> Result<String, StatusReply> {
        self.handle_room()?;
        self.next_handle = self.next_handle.wrapping_add(1);
        let id = self.next_handle.to_string();
        self.handles.insert(id.clone(), h);
        Ok(id)
    }

    fn file(&self, handle: &str) -> Result<Arc<fs::File>, StatusReply> {
        match self.handles.get(handle) {
            Some(OpenHandle::File { file, .. }) => Ok(file.clone()),
            Some(OpenHandle::Dir { .. }) => {
                Err(StatusCode::Failure.with_message("the handle is a directory handle; open the file instead"))
            }
            None => Err(bad_handle()),
        }
    }
}

pub(super) fn bad_handle() -> StatusReply {
    StatusCode::Failure.with_message("unknown or closed handle; open the file again")
}

pub(super) fn ok_status(id: u32) -> Status {
    Status { id, status_code: StatusCode::Ok, error_message: "ok".to_owned(), language_tag: "en-US".to_owned() }
}

pub(super) fn path_status(e: &PathError) -> StatusReply {
    let code = match e {
        PathError::RootUnavailable(_) | PathError::Resolve(_) => StatusCode::Failure,
        _ => StatusCode::PermissionDenied,
    };
    code.with_message(e.to_string())
}

pub(super) fn no_links() -> StatusReply {
    StatusCode::OpUnsupported.with_message("symbolic links are not supported on this server")
}

/// The answer to an `SSH_FXP_EXTENDED` request (both file systems): the `limits@openssh.com` extension, with
/// `max_open_handles` of the session's principal; any other extension is unsupported.
pub(super) fn extended(id: u32, request: &str, max_open_handles: usize) -> Result<Packet, StatusReply> {
    if request == LIMITS {
        let limits = LimitsExtension {
            max_packet_len: u64::from(MAX_PACKET_LEN),
            max_read_len: u64::from(MAX_READ_LEN),
            max_write_len: u64::from(MAX_READ_LEN),
            max_open_handles: max_open_handles as u64,
        };
        let data = russh_sftp::ser::to_bytes(&limits)
            .map_err(|_| StatusCode::Failure.with_message("could not encode the limits"))?;
        return Ok(Packet::ExtendedReply(ExtendedReply { id, data: data.to_vec() }));
    }
    Err(StatusCode::OpUnsupported.with_message(format!(
        "the extension {:?} is not supported by this server",
        request.escape_debug().to_string()
    )))
}

/// Maps an I/O error to an SFTP status whose message names the operation, never a host path.
fn io_status(op: &str, e: &io::Error) -> StatusReply {
    use io::ErrorKind as K;
    if e.raw_os_error() == Some(libc::ELOOP) {
        return StatusCode::PermissionDenied
            .with_message(format!("{op}: symbolic links are not followed on this server"));
    }
    let (code, what) = match e.kind() {
        K::NotFound => (StatusCode::NoSuchFile, "no such file or directory"),
        K::PermissionDenied => (StatusCode::PermissionDenied, "permission denied"),
        K::AlreadyExists => (StatusCode::Failure, "the target already exists; remove it first or choose another name"),
        K::DirectoryNotEmpty => (StatusCode::Failure, "the directory is not empty"),
        K::NotADirectory => (StatusCode::NoSuchFile, "a component of the path is not a directory"),
        K::IsADirectory => (StatusCode::Failure, "the path is a directory"),
        K::StorageFull => (StatusCode::Failure, "the server's disk is full; try again later"),
        K::QuotaExceeded => (StatusCode::Failure, "the disk quota is exceeded"),
        K::FileTooLarge => (StatusCode::Failure, "the file would become too large"),
        K::InvalidInput => (StatusCode::Failure, "invalid request for this file"),
        _ => {
            return StatusCode::Failure.with_message(format!("{op} failed: {e}"));
        }
    };
    code.with_message(format!("{op}: {what}"))
}

/// Runs a blocking file-system call on tokio's blocking pool.
async fn blocking<T, F>(f: F) -> io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> io::Result<T> + Send + 'static,
{
    tokio::task::spawn_blocking(f).await.map_err(|_| io::Error::other("the file-system worker task failed"))?
}

fn clamp_time(t: i64) -> u32 {
    u32::try_from(t.max(0)).unwrap_or(u32::MAX)
}

/// Attributes of a file as sent to clients: no owner ids (they are host details).
fn attrs_of(meta: &fs::Metadata) -> FileAttributes {
    FileAttributes {
        size: Some(meta.len()),
        uid: None,
        user: None,
        gid: None,
        group: None,
        permissions: Some(meta.mode()),
        atime: Some(clamp_time(meta.atime())),
        mtime: Some(clamp_time(meta.mtime())),
    }
}

/// The next (at most) `max` listable entries of `stream`; `None` in the stream's place once it is exhausted.
/// Only plain files and directories with UTF-8 names are listed: links, sockets, fifos and devices are not
/// something a tenant may follow or open.
fn next_entries(stream: &mut Option<fs::ReadDir>, max: usize) -> io::Result<Vec<File>> {
    let mut out = Vec::new();
    while out.len() < max {
        let Some(dir) = stream.as_mut() else { break };
        let Some(entry) = dir.next() else {
            *stream = None;
            break;
        };
        let entry = entry?;
        // DirEntry::metadata does not follow symbolic links.
        let Ok(meta) = entry.metadata() else { continue };
        let kind = meta.file_type();
        if !(kind.is_file() || kind.is_dir()) {
            continue;
        }
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        out.push(File::new(name, attrs_of(&meta)));
    }
    Ok(out)
}

/// `rename` that never replaces an existing target.
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::ffi::CString;
        use std::os::unix::ffi::OsStrExt;
        let c_from =
            CString::new(from.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let c_to = CString::new(to.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: both pointers are valid NUL-terminated strings that outlive the call.
        let rc = unsafe {
            libc::renameat2(libc::AT_FDCWD, c_from.as_ptr(), libc::AT_FDCWD, c_to.as_ptr(), libc::RENAME_NOREPLACE)
        };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            // the file system (or an old kernel) does not support the flag: fall through
            Some(libc::EINVAL) | Some(libc::ENOSYS) => {}
            _ => return Err(err),
        }
    }
    // Portable fallback: check, then rename (racy against a concurrent creator of `to`).
    match fs::symlink_metadata(to) {
        Ok(_) => Err(io::Error::from(io::ErrorKind::AlreadyExists)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => fs::rename(from, to),
        Err(e) => Err(e),
    }
}

fn read_full_at(file: &fs::File, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut filled = 0usize;
    while filled < len {
        let Some(pos) = offset.checked_add(filled as u64) else {
            break;
        };
        let Some(dst) = buf.get_mut(filled..) else {
            break;
        };
        match file.read_at(dst, pos) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    buf.truncate(filled);
    Ok(buf)
}

impl russh_sftp::server::Handler for ConfinedFs {
    type Error = StatusReply;

    fn unimplemented(&self) -> Self::Error {
        StatusCode::OpUnsupported.with_message("this operation is not supported by the server")
    }

    async fn init(&mut self, version: u32, _extensions: HashMap<String, String>) -> Result<Version, Self::Error> {
        tracing::debug!(tenant = %self.tenant, client_version = version, "sftp init");
        let mut v = Version::new();
        // Makes OpenSSH's sftp ask for our limits and then use 255 KiB requests.
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
        self.handle_room()?;
        let path = self.confine(&filename)?;
        if pflags.contains(OpenFlags::CREATE) {
            let probe = path.clone();
            let exists = blocking(move || match fs::symlink_metadata(probe) {
                Ok(_) => Ok(true),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
                Err(e) => Err(e),
            })
            .await
            .map_err(|e| io_status("open", &e))?;
            if !exists {
                self.admit_create("create")?;
            }
        }
        let append = pflags.contains(OpenFlags::APPEND);
        let write = pflags.contains(OpenFlags::WRITE) || append;
        let read = pflags.contains(OpenFlags::READ) || !write;
        let mut opts = fs::OpenOptions::new();
        opts.read(read).write(write).append(append);
        if pflags.contains(OpenFlags::CREATE) {
            if pflags.contains(OpenFlags::EXCLUDE) {
                opts.create_new(true);
            } else {
                opts.create(true);
            }
        }
        if pflags.contains(OpenFlags::TRUNCATE) {
            opts.truncate(true);
        }
        // O_NONBLOCK: opening a fifo must not hang the session (it is refused just below).
        opts.mode(FILE_MODE).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK);
        let opened = path.clone();
        let (file, fid) = blocking(move || {
            let file = opts.open(&opened)?;
            let meta = file.metadata()?;
            if meta.is_dir() {
                return Err(io::Error::from(io::ErrorKind::IsADirectory));
            }
            if !meta.is_file() {
                return Err(io::Error::from(io::ErrorKind::PermissionDenied));
            }
            Ok((file, (meta.dev(), meta.ino())))
        })
        .await
        .map_err(|e| io_status("open", &e))?;
        let handle =
            self.add_handle(OpenHandle::File { file: Arc::new(file), written: false, path, append, id: fid })?;
        Ok(Handle { id, handle })
    }

    async fn close(&mut self, id: u32, handle: String) -> Result<Status, Self::Error> {
        match self.handles.remove(&handle) {
            Some(OpenHandle::File { file, written: true, .. }) => {
                blocking(move || file.sync_data()).await.map_err(|e| io_status("close", &e))?;
                Ok(ok_status(id))
            }
            Some(_) => Ok(ok_status(id)),
            None => Err(bad_handle()),
        }
    }

    async fn read(&mut self, id: u32, handle: String, offset: u64, len: u32) -> Result<Data, Self::Error> {
        let file = self.file(&handle)?;
        let len = len.min(MAX_READ_LEN) as usize;
        let data = blocking(move || read_full_at(&file, offset, len)).await.map_err(|e| io_status("read", &e))?;
        if data.is_empty() && len > 0 {
            return Err(StatusCode::Eof.with_message("end of file"));
        }
        Ok(Data { id, data })
    }

    async fn write(&mut self, id: u32, handle: String, offset: u64, data: Vec<u8>) -> Result<Status, Self::Error> {
        let (file, path, append, fid) = match self.handles.get_mut(&handle) {
            Some(OpenHandle::File { file, written, path, append, id: fid }) => {
                *written = true;
                (file.clone(), path.clone(), *append, *fid)
            }
            Some(OpenHandle::Dir { .. }) => {
                return Err(StatusCode::Failure.with_message("write: the handle is a directory handle"));
            }
            None => return Err(bad_handle()),
        };
        let len = data.len() as u64;
        let Some(mut size_after) = offset.checked_add(len) else {
            return Err(StatusCode::Failure.with_message("write: the offset is out of range"));
        };
        let (f, p) = (file.clone(), path.clone());
        let now = match blocking(move || in_place(&f, &p, fid)).await.map_err(|e| io_status("write", &e))? {
            InPlace::Len(n) => n,
            InPlace::Moved => return Err(moved_status("write")),
        };
        if append {
            size_after = now.saturating_add(len);
        }
        self.admit(Some(&handle), &path, size_after.max(now), charge(len, now, size_after)).await?;
        // With O_APPEND, Linux pwrite appends whatever the offset (SFTP APPEND semantics).
        blocking(move || file.write_all_at(&data, offset)).await.map_err(|e| io_status("write", &e))?;
        Ok(ok_status(id))
    }

    async fn lstat(&mut self, id: u32, path: String) -> Result<Attrs, Self::Error> {
        let p = self.confine(&path)?;
        let meta = blocking(move || fs::symlink_metadata(p)).await.map_err(|e| io_status("stat", &e))?;
        Ok(Attrs { id, attrs: attrs_of(&meta) })
    }

    /// Never follows a final symbolic link: answers like `lstat`.
    async fn stat(&mut self, id: u32, path: String) -> Result<Attrs, Self::Error> {
        self.lstat(id, path).await
    }

    async fn fstat(&mut self, id: u32, handle: String) -> Result<Attrs, Self::Error> {
        let file = self.file(&handle)?;
        let meta = blocking(move || file.metadata()).await.map_err(|e| io_status("fstat", &e))?;
        Ok(Attrs { id, attrs: attrs_of(&meta) })
    }

    async fn setstat(&mut self, id: u32, path: String, attrs: FileAttributes) -> Result<Status, Self::Error> {
        let p = self.confine(&path)?;
        if let Some(size) = attrs.size {
            let probe = p.clone();
            let now = blocking(move || fs::symlink_metadata(probe)).await.map_err(|e| io_status("setstat", &e))?;
            if !now.is_file() {
                return Err(StatusCode::PermissionDenied.with_message("setstat: the size of a directory cannot be set"));
            }
            self.admit(None, &p, size, charge(0, now.len(), size)).await?;
            blocking(move || {
                let f =
                    fs::OpenOptions::new().write(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(&p)?;
                if !f.metadata()?.is_file() {
                    return Err(io::Error::from(io::ErrorKind::PermissionDenied));
                }
                f.set_len(size)
            })
            .await
            .map_err(|e| io_status("setstat", &e))?;
        }
        Ok(ok_status(id))
    }

    async fn fsetstat(&mut self, id: u32, handle: String, attrs: FileAttributes) -> Result<Status, Self::Error> {
        let file = self.file(&handle)?;
        if let Some(size) = attrs.size {
            let Some(OpenHandle::File { path, id: fid, .. }) = self.handles.get(&handle) else {
                return Err(bad_handle());
            };
            let (path, fid, f) = (path.clone(), *fid, file.clone());
            let p = path.clone();
            let now = match blocking(move || in_place(&f, &p, fid)).await.map_err(|e| io_status("fsetstat", &e))? {
                InPlace::Len(n) => n,
                InPlace::Moved => return Err(moved_status("fsetstat")),
            };
            self.admit(Some(&handle), &path, size, charge(0, now, size)).await?;
            blocking(move || file.set_len(size)).await.map_err(|e| io_status("fsetstat", &e))?;
        }
        Ok(ok_status(id))
    }

    async fn opendir(&mut self, id: u32, path: String) -> Result<Handle, Self::Error> {
        self.handle_room()?;
        let p = self.confine(&path)?;
        let stream = blocking(move || fs::read_dir(&p)).await.map_err(|e| io_status("opendir", &e))?;
        let handle = self.add_handle(OpenHandle::Dir { stream: Some(stream) })?;
        Ok(Handle { id, handle })
    }

    async fn readdir(&mut self, id: u32, handle: String) -> Result<Name, Self::Error> {
        let mut stream = match self.handles.get_mut(&handle) {
            Some(OpenHandle::Dir { stream }) => stream.take(),
            Some(OpenHandle::File { .. }) => {
                return Err(StatusCode::Failure.with_message("readdir: the handle is a file handle; use opendir"));
            }
            None => return Err(bad_handle()),
        };
        if stream.is_none() {
            return Err(StatusCode::Eof.with_message("end of directory"));
        }
        let (stream, files) = blocking(move || {
            let files = next_entries(&mut stream, READDIR_BATCH)?;
            Ok((stream, files))
        })
        .await
        .map_err(|e| io_status("readdir", &e))?;
        if let Some(OpenHandle::Dir { stream: slot }) = self.handles.get_mut(&handle) {
            *slot = stream;
        }
        if files.is_empty() {
            return Err(StatusCode::Eof.with_message("end of directory"));
        }
        Ok(Name { id, files })
    }

    async fn remove(&mut self, id: u32, filename: String) -> Result<Status, Self::Error> {
        let p = self.confine_below_root(&filename, "remove")?;
        blocking(move || {
            if fs::symlink_metadata(&p)?.is_dir() {
                return Err(io::Error::from(io::ErrorKind::IsADirectory));
            }
            fs::remove_file(&p)
        })
        .await
        .map_err(|e| io_status("remove", &e))?;
        Ok(ok_status(id))
    }

    async fn mkdir(&mut self, id: u32, path: String, _attrs: FileAttributes) -> Result<Status, Self::Error> {
        let p = self.confine(&path)?;
        self.admit_create("mkdir")?;
        blocking(move || fs::DirBuilder::new().mode(DIR_MODE).create(p)).await.map_err(|e| io_status("mkdir", &e))?;
        Ok(ok_status(id))
    }

    async fn rmdir(&mut self, id: u32, path: String) -> Result<Status, Self::Error> {
        let p = self.confine_below_root(&path, "rmdir")?;
        blocking(move || fs::remove_dir(p)).await.map_err(|e| io_status("rmdir", &e))?;
        Ok(ok_status(id))
    }

    /// Answers the virtual path (`/` is the root); `realpath(".")` is `/`.
    async fn realpath(&mut self, id: u32, path: String) -> Result<Name, Self::Error> {
        let virt = path::normalize(&path).map_err(|e| path_status(&e))?;
        // also refuses paths that leave the root through a link
        self.confine(&path)?;
        Ok(Name { id, files: vec![File::dummy(virt)] })
    }

    async fn rename(&mut self, id: u32, oldpath: String, newpath: String) -> Result<Status, Self::Error> {
        let from = self.confine_below_root(&oldpath, "rename")?;
        let to = self.confine_below_root(&newpath, "rename")?;
        let target = to.clone();
        blocking(move || rename_noreplace(&from, &to)).await.map_err(|e| io_status("rename", &e))?;
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
