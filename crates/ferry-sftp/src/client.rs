//! The SFTP client: host-key pinned, public-key authenticated, pipelined.
//!
//! [`SftpClient::connect`] (or [`SftpClient::connect_stream`] over a proxy tunnel) refuses any
//! server whose host key does not have the pinned SHA-256 fingerprint, then logs in with the
//! configured key (RSA keys sign with the best SHA-2 hash the server offers; never SHA-1 unless
//! the server offers nothing else).
//!
//! Throughput comes from pipelining: up to 64 reads or writes of ~255 KiB in flight, `nodelay`
//! on the socket. Files are streamed through a fixed buffer; no file is read into memory.
//! Uploads land under `<dir>/.<name>.part` and are renamed when complete, so a reader never sees
//! a partial file; downloads do the same locally. The `_resuming` variants continue a part that an
//! earlier, cut-off attempt left (after checking its tail) instead of starting over.
//!
//! Nothing waits forever: connecting (TCP, SSH handshake, login, SFTP start) has `connect_timeout`, every
//! SFTP request `io_timeout`, closing a few seconds.

use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client::{AuthResult, Handle};
use russh::keys::ssh_key::Fingerprint;
use russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh::{Disconnect, Preferred};
use russh_sftp::client::SftpSession;
use russh_sftp::client::error::Error as SftpError;
use russh_sftp::protocol::{FileType, OpenFlags, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt, AsyncWrite, AsyncWriteExt};

/// Requests in flight per transfer direction.
pub const MAX_IN_FLIGHT: usize = 64;
/// Largest SFTP write packet sent (the OpenSSH server's limit is 256 KiB - 1 KiB of data).
pub const MAX_WRITE_PACKET_LEN: u32 = 261_120;
/// Local buffer for streaming a file (several SFTP packets).
const CHUNK: usize = 2 * 1024 * 1024;

/// How to reach and log in to an SFTP server.
#[derive(Clone)]
pub struct ClientConfig {
    /// SSH user name (the server derives the tenant from the key; the name is only logged).
    pub user: String,
    /// The private key to log in with.
    pub key: Arc<PrivateKey>,
    /// The server's host key fingerprint, `SHA256:...` as `ssh-keygen -l` prints it. Required.
    pub host_key_fingerprint: String,
    /// Limit for TCP connect + SSH handshake + login + SFTP start.
    pub connect_timeout: Duration,
    /// Limit for each SFTP request (rounded up to whole seconds).
    pub io_timeout: Duration,
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("user", &self.user)
            .field("key", &self.key.fingerprint(HashAlg::Sha256).to_string())
            .field("host_key_fingerprint", &self.host_key_fingerprint)
            .field("connect_timeout", &self.connect_timeout)
            .field("io_timeout", &self.io_timeout)
            .finish()
    }
}

/// What went wrong talking to an SFTP server.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "the pinned host key fingerprint {0:?} is not valid; expected \"SHA256:...\" as printed by `ssh-keygen -l`: fix the configuration"
    )]
    BadFingerprint(String),
    #[error(
        "could not connect to the sftp server at {addr}: {source}; check the address, the port and any firewall or proxy"
    )]
    Connect {
        addr: String,
        #[source]
        source: io::Error,
    },
    #[error("timed out after {secs} s while {during}; check that the server is reachable and running")]
    Timeout { during: &'static str, secs: u64 },
    #[error(
        "the server's SSH host key ({got}) does not match the pinned one ({expected}); refusing to connect — if the server key was legitimately changed, re-register"
    )]
    HostKeyMismatch { expected: String, got: String },
    #[error("the server refused this key: is the connector registered / the tenant enabled?")]
    AuthRejected,
    #[error("the ssh connection failed: {0}; check the network and retry")]
    Ssh(#[from] russh::Error),
    #[error("the server did not start sftp: {0}; check that the server offers the sftp subsystem")]
    NoSftp(String),
    #[error("sftp {op} {path:?} failed: {}", remote_reason(.source))]
    Remote {
        op: &'static str,
        path: String,
        #[source]
        source: SftpError,
    },
    #[error("sftp {op} {path:?} failed during the transfer: {}", transfer_reason(.source))]
    Transfer {
        op: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{op} of the local file {} failed: {source}", .path.display())]
    Local {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{path:?} has {got} bytes after the transfer but {expected} were expected; the transfer was cut short, retry it"
    )]
    SizeMismatch { path: String, expected: u64, got: u64 },
    #[error("the remote path {0:?} has no file name; give a path like \"dir/file\"")]
    BadPath(String),
}

fn remote_reason(e: &SftpError) -> String {
    match e {
        SftpError::Status(s) => s.error_message.clone(),
        SftpError::Timeout => "no answer from the server in time".to_owned(),
        other => other.to_string(),
    }
}

/// russh-sftp reports a session that went away mid-transfer as "sender dropped" or a closed channel: say so.
fn transfer_reason(e: &io::Error) -> String {
    let text = e.to_string();
    if text.contains("sender dropped") || text.contains("channel closed") || e.kind() == io::ErrorKind::BrokenPipe {
        format!("the connection was lost ({text}); the next attempt continues where this one stopped")
    } else {
        text
    }
}

impl ClientError {
    /// Whether this is the server saying "no such file".
    pub fn is_not_found(&self) -> bool {
        matches!(self, ClientError::Remote { source: SftpError::Status(s), .. } if s.status_code == StatusCode::NoSuchFile)
    }
}

fn on_remote(op: &'static str, path: &str) -> impl FnOnce(SftpError) -> ClientError {
    let path = path.to_owned();
    move |source| ClientError::Remote { op, path, source }
}

fn on_remote_err(op: &'static str, path: &str, source: SftpError) -> ClientError {
    ClientError::Remote { op, path: path.to_owned(), source }
}

fn local(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ClientError {
    let path = path.to_owned();
    move |source| ClientError::Local { op, path, source }
}

fn secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Checks the server key against the pinned fingerprint; remembers what it saw on mismatch.
struct PinnedHost {
    expected: Fingerprint,
    mismatch: Arc<Mutex<Option<String>>>,
}

impl russh::client::Handler for PinnedHost {
    type Error = russh::Error;

    async fn check_server_key(&mut self, server_public_key: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        let got = match server_public_key {
            PublicKeyOrCertificate::PublicKey { key, .. } => key.fingerprint(HashAlg::Sha256),
            // a certificate is not what was pinned, even if it certifies the same key
            PublicKeyOrCertificate::Certificate(cert) => cert.public_key().fingerprint(HashAlg::Sha256),
        };
        if got == self.expected && matches!(server_public_key, PublicKeyOrCertificate::PublicKey { .. }) {
            return Ok(true);
        }
        if let Ok(mut slot) = self.mismatch.lock() {
            *slot = Some(got.to_string());
        }
        Ok(false)
    }
}

/// A logged-in SFTP session.
pub struct SftpClient {
    ssh: Handle<PinnedHost>,
    sftp: SftpSession,
}

/// Splits `dir/name` into (`dir`, `name`); `dir` is empty for a bare name.
fn split_remote(remote: &str) -> Result<(&str, &str), ClientError> {
    let (dir, name) = match remote.rfind('/') {
        Some(i) => (remote.get(..i).unwrap_or(""), remote.get(i + 1..).unwrap_or("")),
        None => ("", remote),
    };
    if name.is_empty() || name == "." || name == ".." {
        return Err(ClientError::BadPath(remote.to_owned()));
    }
    let dir = if dir.is_empty() && remote.starts_with('/') { "/" } else { dir };
    Ok((dir, name))
}

fn join_remote(dir: &str, name: &str) -> String {
    match dir {
        "" => name.to_owned(),
        d if d.ends_with('/') => format!("{d}{name}"),
        d => format!("{d}/{name}"),
    }
}

/// The temporary `.<name>.part` a download of `local_path` is written to.
fn local_part(local_path: &Path) -> Result<PathBuf, ClientError> {
    let name = local_path.file_name().ok_or_else(|| ClientError::Local {
        op: "name",
        path: local_path.to_owned(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "the path has no file name"),
    })?;
    Ok(local_path.with_file_name(format!(".{}.part", name.to_string_lossy())))
}

async fn rename_into_place(tmp: &Path, local_path: &Path) -> Result<(), ClientError> {
    if let Err(e) = tokio::fs::rename(tmp, local_path).await {
        let _ = tokio::fs::remove_file(tmp).await;
        return Err(local("rename into place", local_path)(e));
    }
    Ok(())
}

/// Reads until `buf` is full or the reader is at its end; returns the bytes read.
async fn fill<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while let Some(dst) = buf.get_mut(filled..) {
        if dst.is_empty() {
            break;
        }
        match r.read(dst).await? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

impl SftpClient {
    /// Connects over TCP to `addr` (`host:port`) and logs in.
    pub async fn connect(cfg: &ClientConfig, addr: &str) -> Result<Self, ClientError> {
        Self::check_pin(cfg)?;
        let limit = cfg.connect_timeout;
        let stream = tokio::time::timeout(limit, tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| ClientError::Timeout { during: "connecting to the sftp server", secs: secs(limit) })?
            .map_err(|source| ClientError::Connect { addr: addr.to_owned(), source })?;
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!("set_nodelay failed: {e}");
        }
        Self::connect_stream(cfg, stream).await
    }

    /// Handshake over an existing stream (a proxy CONNECT tunnel later).
    ///
    /// Set `nodelay` on the underlying TCP socket before calling.
    pub async fn connect_stream<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
        cfg: &ClientConfig,
        stream: S,
    ) -> Result<Self, ClientError> {
        let expected = Self::check_pin(cfg)?;
        let limit = cfg.connect_timeout;
        tokio::time::timeout(limit, Self::handshake(cfg, expected, stream))
            .await
            .map_err(|_| ClientError::Timeout { during: "setting up the ssh session", secs: secs(limit) })?
    }

    fn check_pin(cfg: &ClientConfig) -> Result<Fingerprint, ClientError> {
        let pin = cfg.host_key_fingerprint.trim();
        if !pin.starts_with("SHA256:") {
            return Err(ClientError::BadFingerprint(cfg.host_key_fingerprint.clone()));
        }
        Fingerprint::from_str(pin).map_err(|_| ClientError::BadFingerprint(cfg.host_key_fingerprint.clone()))
    }

    async fn handshake<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
        cfg: &ClientConfig,
        expected: Fingerprint,
        stream: S,
    ) -> Result<Self, ClientError> {
        let mismatch = Arc::new(Mutex::new(None));
        let handler = PinnedHost { expected, mismatch: mismatch.clone() };
        let ssh_cfg = Arc::new(russh::client::Config {
            preferred: Preferred {
                cipher: std::borrow::Cow::Borrowed(&[
                    russh::cipher::AES_256_GCM,
                    russh::cipher::AES_128_GCM,
                    russh::cipher::CHACHA20_POLY1305,
                    russh::cipher::AES_256_CTR,
                ]),
                compression: std::borrow::Cow::Borrowed(&[russh::compression::NONE]),
                ..Preferred::DEFAULT
            },
            nodelay: true,
            ..Default::default()
        });
        let mut ssh = match russh::client::connect_stream(ssh_cfg, stream, handler).await {
            Ok(h) => h,
            Err(e) => {
                let got = mismatch.lock().ok().and_then(|mut m| m.take());
                return Err(match got {
                    Some(got) => {
                        ClientError::HostKeyMismatch { expected: cfg.host_key_fingerprint.trim().to_owned(), got }
                    }
                    None => ClientError::Ssh(e),
                });
            }
        };

        let hash = if cfg.key.algorithm().is_rsa() {
            match ssh.best_supported_rsa_hash().await {
                Ok(Some(alg)) => alg,
                // no server-sig-algs: SHA-2 is the safe guess (SHA-1 is refused by OpenSSH >= 8.8)
                Ok(None) | Err(_) => Some(HashAlg::Sha256),
            }
        } else {
            None
        };
        let auth =
            ssh.authenticate_publickey(cfg.user.clone(), PrivateKeyWithHashAlg::new(cfg.key.clone(), hash)).await?;
        if !matches!(auth, AuthResult::Success) {
            return Err(ClientError::AuthRejected);
        }

        let channel = ssh.channel_open_session().await?;
        channel.request_subsystem(true, "sftp").await.map_err(|e| ClientError::NoSftp(e.to_string()))?;
        let sftp_cfg = russh_sftp::client::Config {
            max_concurrent_reads: MAX_IN_FLIGHT,
            max_concurrent_writes: MAX_IN_FLIGHT,
            max_write_packet_len: MAX_WRITE_PACKET_LEN,
            request_timeout_secs: secs(cfg.io_timeout).max(1),
            ..Default::default()
        };
        let sftp = SftpSession::new_with_config(channel.into_stream(), sftp_cfg)
            .await
            .map_err(|e| ClientError::NoSftp(remote_reason(&e)))?;
        Ok(Self { ssh, sftp })
    }

    /// Creates `path` and its missing parents (like `mkdir -p`).
    pub async fn mkdir_all(&self, path: &str) -> Result<(), ClientError> {
        let mut current = if path.starts_with('/') { "/".to_owned() } else { String::new() };
        for part in path.split('/').filter(|p| !p.is_empty() && *p != ".") {
            current = join_remote(&current, part);
            match self.sftp.metadata(current.as_str()).await {
                Ok(meta) if meta.is_dir() => continue,
                Ok(_) => {
                    return Err(ClientError::Remote {
                        op: "mkdir",
                        path: current,
                        source: SftpError::UnexpectedBehavior(
                            "a file with this name exists where a directory is needed".to_owned(),
                        ),
                    });
                }
                Err(SftpError::Status(s)) if s.status_code == StatusCode::NoSuchFile => {}
                Err(e) => return Err(on_remote("stat", &current)(e)),
            }
            if let Err(e) = self.sftp.create_dir(current.as_str()).await {
                // lost a race with another creator: fine if it is a directory now
                match self.sftp.metadata(current.as_str()).await {
                    Ok(meta) if meta.is_dir() => {}
                    _ => return Err(on_remote("mkdir", &current)(e)),
                }
            }
        }
        Ok(())
    }

    /// Upload to `<dir>/.<name>.part`, fsync-less but shutdown()/close checked, then rename to the final name (remove a stale final first only if asked). Returns bytes sent.
    ///
    /// Fails if `remote` already exists (the server's rename does not replace); use
    /// [`SftpClient::upload_file_replacing`] to replace it.
    pub async fn upload_file(&self, local: &Path, remote: &str) -> Result<u64, ClientError> {
        self.upload(local, remote, false).await
    }

    /// Like [`SftpClient::upload_file`], but removes an existing `remote` just before the
    /// rename (readers may briefly see no file, never a partial one).
    pub async fn upload_file_replacing(&self, local: &Path, remote: &str) -> Result<u64, ClientError> {
        self.upload(local, remote, true).await
    }

    /// Like [`SftpClient::upload_file`], but continues a `.part` left by an earlier attempt that was cut off:
    /// the part's tail is compared with the local file and only the rest is sent. Returns bytes sent now.
    pub async fn upload_file_resuming(&self, local_path: &Path, remote: &str) -> Result<u64, ClientError> {
        let (dir, name) = split_remote(remote)?;
        let part = join_remote(dir, &format!(".{name}.part"));
        let local_len = tokio::fs::metadata(local_path).await.map_err(local("stat", local_path))?.len();
        let have = match self.sftp.metadata(part.as_str()).await {
            Ok(m) => m.size.unwrap_or(0),
            Err(_) => 0,
        };
        let start =
            if have == 0 || have > local_len || !self.tail_matches(local_path, &part, have).await? { 0 } else { have };
        // A transfer cut off now leaves its part for the next attempt to continue.
        let mut src = tokio::fs::File::open(local_path).await.map_err(local("open", local_path))?;
        src.seek(io::SeekFrom::Start(start)).await.map_err(local("seek", local_path))?;
        let sent = self.write_part(&mut src, local_path, &part, start).await?;
        if let Err(e) = self.sftp.rename(part.as_str(), remote).await {
            return Err(on_remote_err("rename into place", remote, e));
        }
        Ok(sent)
    }

    /// Do the last bytes of the remote part equal the local file at the same offsets?
    async fn tail_matches(&self, local_path: &Path, part: &str, have: u64) -> Result<bool, ClientError> {
        let n = have.min(64 * 1024);
        let mut theirs = vec![0u8; n as usize];
        let mut f = self.sftp.open_with_flags(part, OpenFlags::READ).await.map_err(on_remote("open", part))?;
        f.seek(io::SeekFrom::Start(have - n)).await.map_err(|e| ClientError::Transfer {
            op: "seek",
            path: part.to_owned(),
            source: e,
        })?;
        f.read_exact(&mut theirs).await.map_err(|e| ClientError::Transfer {
            op: "read",
            path: part.to_owned(),
            source: e,
        })?;
        let mut ours = vec![0u8; n as usize];
        let mut l = tokio::fs::File::open(local_path).await.map_err(local("open", local_path))?;
        l.seek(io::SeekFrom::Start(have - n)).await.map_err(local("seek", local_path))?;
        l.read_exact(&mut ours).await.map_err(local("read", local_path))?;
        Ok(ours == theirs)
    }

    async fn upload(&self, local_path: &Path, remote: &str, replace: bool) -> Result<u64, ClientError> {
        let (dir, name) = split_remote(remote)?;
        let part = join_remote(dir, &format!(".{name}.part"));
        let mut src = tokio::fs::File::open(local_path).await.map_err(local("open", local_path))?;
        let result = self.upload_part(&mut src, local_path, &part).await;
        let sent = match result {
            Ok(n) => n,
            Err(e) => {
                let _ = self.sftp.remove_file(part.as_str()).await;
                return Err(e);
            }
        };
        if replace {
            match self.sftp.remove_file(remote).await {
                Ok(()) => {}
                Err(SftpError::Status(s)) if s.status_code == StatusCode::NoSuchFile => {}
                Err(e) => {
                    let _ = self.sftp.remove_file(part.as_str()).await;
                    return Err(on_remote_err("remove", remote, e));
                }
            }
        }
        if let Err(e) = self.sftp.rename(part.as_str(), remote).await {
            let _ = self.sftp.remove_file(part.as_str()).await;
            return Err(on_remote_err("rename into place", remote, e));
        }
        Ok(sent)
    }

    async fn upload_part(&self, src: &mut tokio::fs::File, local_path: &Path, part: &str) -> Result<u64, ClientError> {
        self.write_part(src, local_path, part, 0).await
    }

    /// Write `src` (already positioned) into `part` from offset `start`; `start == 0` truncates.
    async fn write_part(
        &self,
        src: &mut tokio::fs::File,
        local_path: &Path,
        part: &str,
        start: u64,
    ) -> Result<u64, ClientError> {
        let flags =
            if start == 0 { OpenFlags::CREATE | OpenFlags::TRUNCATE | OpenFlags::WRITE } else { OpenFlags::WRITE };
        let mut dst = self.sftp.open_with_flags(part, flags).await.map_err(on_remote("create", part))?;
        if start > 0 {
            dst.seek(io::SeekFrom::Start(start)).await.map_err(|e| ClientError::Transfer {
                op: "seek",
                path: part.to_owned(),
                source: e,
            })?;
        }
        let transfer = |source| ClientError::Transfer { op: "upload", path: part.to_owned(), source };
        let mut buf = vec![0u8; CHUNK];
        let mut sent: u64 = 0;
        loop {
            let n = fill(src, &mut buf).await.map_err(local("read", local_path))?;
            if n == 0 {
                break;
            }
            // whole buffers go out as full-size SFTP packets (the client splits them)
            dst.write_all(buf.get(..n).unwrap_or_default()).await.map_err(transfer)?;
            sent += n as u64;
            if n < buf.len() {
                break;
            }
        }
        // waits for every write acknowledgement and the close status: errors surface here
        dst.shutdown().await.map_err(transfer)?;
        let size = self.sftp.metadata(part).await.map_err(on_remote("stat", part))?.size;
        if let Some(got) = size
            && got != start + sent
        {
            return Err(ClientError::SizeMismatch { path: part.to_owned(), expected: start + sent, got });
        }
        Ok(sent)
    }

    /// Downloads `remote` into `local` through a temporary `.<name>.part` next to it, synced and
    /// then renamed into place. Returns bytes received.
    pub async fn download_file(&self, remote: &str, local_path: &Path) -> Result<u64, ClientError> {
        let tmp = local_part(local_path)?;
        let got = match self.download_to(remote, &tmp, false).await {
            Ok(n) => n,
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(e);
            }
        };
        rename_into_place(&tmp, local_path).await?;
        Ok(got)
    }

    /// Like [`SftpClient::download_file`], but continues the local `.<name>.part` an earlier attempt left when
    /// it was cut off: if the part is no longer than the remote file and its last 64 KiB equal the remote
    /// bytes at the same offsets, only the rest is fetched; otherwise it starts from zero. A transfer cut off
    /// now keeps its part for the next attempt. Returns the bytes received now. Callers that know the file's
    /// digest check it afterwards (and delete the file if it does not match, so the next attempt starts over).
    pub async fn download_file_resuming(&self, remote: &str, local_path: &Path) -> Result<u64, ClientError> {
        let tmp = local_part(local_path)?;
        let got = match self.download_to(remote, &tmp, true).await {
            Ok(n) => n,
            Err(e) => {
                // a part that cannot be right is dropped; one that was merely cut off is kept
                if matches!(e, ClientError::SizeMismatch { .. }) {
                    let _ = tokio::fs::remove_file(&tmp).await;
                }
                return Err(e);
            }
        };
        rename_into_place(&tmp, local_path).await?;
        Ok(got)
    }

    /// Fetch `remote` into `tmp`; with `resume`, keep what `tmp` already holds if its tail matches.
    async fn download_to(&self, remote: &str, tmp: &Path, resume: bool) -> Result<u64, ClientError> {
        let mut src = self.sftp.open(remote).await.map_err(on_remote("open", remote))?;
        let expected = src.metadata().await.map_err(on_remote("stat", remote))?.size;
        let have = match tokio::fs::metadata(tmp).await {
            Ok(m) if resume => m.len(),
            _ => 0,
        };
        let start = if have > 0 && expected.is_some_and(|e| have <= e) {
            if self.local_tail_matches(&mut src, remote, tmp, have).await? { have } else { 0 }
        } else {
            0
        };
        let mut dst = if start > 0 {
            let mut f = tokio::fs::OpenOptions::new().write(true).open(tmp).await.map_err(local("open", tmp))?;
            f.set_len(start).await.map_err(local("truncate", tmp))?;
            f.seek(io::SeekFrom::Start(start)).await.map_err(local("seek", tmp))?;
            src.seek(io::SeekFrom::Start(start)).await.map_err(|source| ClientError::Transfer {
                op: "seek",
                path: remote.to_owned(),
                source,
            })?;
            tracing::debug!(remote, start, "resuming a download cut off earlier");
            f
        } else {
            tokio::fs::File::create(tmp).await.map_err(local("create", tmp))?
        };
        let mut buf = vec![0u8; CHUNK];
        let mut got: u64 = 0;
        loop {
            let n = match fill(&mut src, &mut buf).await {
                Ok(n) => n,
                Err(source) => {
                    // tokio writes in the background: wait for what was handed over, so the part on disk is
                    // final when we return and the next attempt resumes from its true end
                    let _ = dst.flush().await;
                    return Err(ClientError::Transfer { op: "download", path: remote.to_owned(), source });
                }
            };
            if n == 0 {
                break;
            }
            dst.write_all(buf.get(..n).unwrap_or_default()).await.map_err(local("write", tmp))?;
            got += n as u64;
        }
        let _ = src.shutdown().await;
        dst.flush().await.map_err(local("write", tmp))?;
        dst.sync_all().await.map_err(local("sync", tmp))?;
        if let Some(expected) = expected
            && expected != start + got
        {
            return Err(ClientError::SizeMismatch { path: remote.to_owned(), expected, got: start + got });
        }
        Ok(got)
    }

    /// Do the last bytes of the local part equal the remote file at the same offsets?
    async fn local_tail_matches(
        &self,
        src: &mut russh_sftp::client::fs::File,
        remote: &str,
        tmp: &Path,
        have: u64,
    ) -> Result<bool, ClientError> {
        let n = have.min(64 * 1024);
        let transfer = |op| {
            let path = remote.to_owned();
            move |source| ClientError::Transfer { op, path, source }
        };
        let mut theirs = vec![0u8; n as usize];
        src.seek(io::SeekFrom::Start(have - n)).await.map_err(transfer("seek"))?;
        src.read_exact(&mut theirs).await.map_err(transfer("read"))?;
        let mut ours = vec![0u8; n as usize];
        let mut l = tokio::fs::File::open(tmp).await.map_err(local("open", tmp))?;
        l.seek(io::SeekFrom::Start(have - n)).await.map_err(local("seek", tmp))?;
        l.read_exact(&mut ours).await.map_err(local("read", tmp))?;
        src.seek(io::SeekFrom::Start(0)).await.map_err(transfer("seek"))?;
        Ok(ours == theirs)
    }

    /// Regular files in `dir` with their sizes, sorted by name (directories are left out;
    /// in-progress uploads show up as `.<name>.part`). Names are plain: entries containing `/`,
    /// `\` or NUL, and `.`/`..`, are dropped, so they are safe to join onto a local directory.
    pub async fn list(&self, dir: &str) -> Result<Vec<(String, u64)>, ClientError> {
        let entries = self.sftp.read_dir(dir).await.map_err(on_remote("list", dir))?;
        let mut out: Vec<(String, u64)> = entries
            .filter(|e| e.file_type() == FileType::File)
            .map(|e| (e.file_name(), e.metadata().size.unwrap_or(0)))
            .filter(|(name, _)| {
                // callers join these names onto local paths: never let a server smuggle in
                // a separator or a parent reference
                let plain = !name.is_empty()
                    && name != "."
                    && name != ".."
                    && !name.contains(['/', '\\', '\0']);
                if !plain {
                    tracing::warn!(dir, name = %name.escape_debug(), "ignoring a listed file name that is not a plain name");
                }
                plain
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// The size of `path`, or `None` if it does not exist.
    pub async fn stat_size(&self, path: &str) -> Result<Option<u64>, ClientError> {
        match self.sftp.metadata(path).await {
            Ok(meta) => Ok(Some(meta.size.unwrap_or(0))),
            Err(SftpError::Status(s)) if s.status_code == StatusCode::NoSuchFile => Ok(None),
            Err(e) => Err(on_remote("stat", path)(e)),
        }
    }

    /// Renames `from` to `to`; fails if `to` exists (on a Ferry server).
    pub async fn rename(&self, from: &str, to: &str) -> Result<(), ClientError> {
        self.sftp.rename(from, to).await.map_err(on_remote("rename", from))
    }

    /// Removes the file `path`.
    pub async fn remove(&self, path: &str) -> Result<(), ClientError> {
        self.sftp.remove_file(path).await.map_err(on_remote("remove", path))
    }

    /// Ends the SFTP session and the SSH connection (a peer that no longer answers is given a few seconds).
    pub async fn close(self) -> Result<(), ClientError> {
        let limit = Duration::from_secs(5);
        let bye = async {
            let _ = self.sftp.close().await;
            self.ssh.disconnect(Disconnect::ByApplication, "done", "en").await
        };
        tokio::time::timeout(limit, bye)
            .await
            .map_err(|_| ClientError::Timeout { during: "closing the sftp session", secs: secs(limit) })??;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_paths_split_into_dir_and_name() {
        assert_eq!(split_remote("a/b/c.csv").unwrap(), ("a/b", "c.csv"));
        assert_eq!(split_remote("c.csv").unwrap(), ("", "c.csv"));
        assert_eq!(split_remote("/c.csv").unwrap(), ("/", "c.csv"));
        assert_eq!(split_remote("/in/c.csv").unwrap(), ("/in", "c.csv"));
        assert!(split_remote("dir/").is_err());
        assert!(split_remote("/").is_err());
        assert!(split_remote("a/..").is_err());
        assert_eq!(join_remote("/", ".c.part"), "/.c.part");
        assert_eq!(join_remote("", ".c.part"), ".c.part");
        assert_eq!(join_remote("a", ".c.part"), "a/.c.part");
    }

    #[test]
    fn durations_round_up_to_seconds() {
        assert_eq!(secs(Duration::from_millis(1)), 1);
        assert_eq!(secs(Duration::from_secs(3)), 3);
    }
}
