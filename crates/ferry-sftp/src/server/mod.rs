//! The SFTP server: SSH with public-key authentication only, one confined root per principal.
//!
//! Entry points: [`serve`] (accept loop with graceful shutdown) and [`serve_stream`] (one
//! already-accepted stream, for a port shared with HTTPS). An [`Authorizer`] maps each public
//! key to a [`Principal`]; that mapping is the only source of the tenant.
//!
//! **Invariant**: the tenant comes only from the authenticated key — the SSH user name is
//! logged and otherwise ignored. **Invariant**: only the `sftp` subsystem is served; shells,
//! exec, port forwarding and agent forwarding are refused.
//!
//! Tuning (see CRATES.md): `nodelay` is set on accepted sockets, AES-GCM ciphers come first,
//! compression is off (the payloads are already bzip2), and each SFTP channel is drained
//! continuously into a bounded queue so that deep pipelining cannot deadlock the session
//! (details in the `pump` module).

mod fs;
mod killable;
mod objfs;
mod pump;
mod sessions;

use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use russh::keys::{Algorithm, HashAlg, PrivateKey, PublicKey};
use russh::server::{Auth, Msg, Session};
use russh::{Channel, ChannelId, ChannelOpenFailure, Disconnect, MethodKind, MethodSet};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use self::fs::{MAX_OPEN_HANDLES, MAX_PACKET_LEN, MAX_READ_LEN, READDIR_BATCH};
pub use self::objfs::{MAX_STORE_FILE_HANDLES, READ_WINDOW};
pub use self::pump::{MAX_QUEUED_BYTES, MAX_QUEUED_PACKETS};
pub use self::sessions::{SessionInfo, Sessions, THROTTLE_BASE, THROTTLE_FORGET, THROTTLE_MAX};
pub use crate::path::{PathError, confine};

/// Login deadline used by [`serve_stream`] (which receives only a russh config).
pub const DEFAULT_AUTH_TIMEOUT: Duration = Duration::from_secs(30);
/// Simultaneous connections accepted by [`serve`] with [`ServerConfig::new`]'s gate; further ones are closed at
/// once.
pub const MAX_CONNECTIONS: usize = 1024;
/// Connections one client address may hold with [`ServerConfig::new`]'s gate.
pub const MAX_CONNECTIONS_PER_ADDRESS: usize = 64;
/// Session channels one SSH connection may open.
const MAX_CHANNELS_PER_CONNECTION: usize = 8;
/// How long [`serve`] waits for open sessions after the shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Who a key logs in as: a tenant or a service, confined to `root`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Tenant or service name, for logs.
    pub name: String,
    /// Absolute path of an existing directory: everything this principal sees over SFTP.
    pub root: PathBuf,
}

/// Decides which principal, if any, a public key logs in as, and what that principal may write.
///
/// Only [`Authorizer::authorize`] is required; the other methods have permissive defaults (no quota) and
/// no-op notifications.
pub trait Authorizer: Send + Sync + 'static {
    /// Called for every offered/used public key; return the principal this key logs in as, or None.
    ///
    /// Compare keys with [`same_key`] (key data only): `==` on `PublicKey` also compares the
    /// comment.
    fn authorize(&self, user: &str, key: &PublicKey) -> Option<Principal>;

    /// Called before every write: `bytes` more bytes, after which the file will be at least
    /// `file_size_after` bytes long. `Err(message)` refuses the write; the message goes to the client as is
    /// (say which limit, its value and what to do), and the file being written is removed so that nothing
    /// partial stays visible.
    fn admit_write(&self, _principal: &Principal, _file_size_after: u64, _bytes: u64) -> Result<(), String> {
        Ok(())
    }

    /// Called before a new file or directory is created; `Err(message)` refuses it (the message goes to the
    /// client as is).
    fn admit_create(&self, _principal: &Principal) -> Result<(), String> {
        Ok(())
    }

    /// On an object store ([`Authorizer::store`]): the most files and directories `principal`'s area may hold
    /// (`None`, the default: no limit). The SFTP server then counts the area's entries (stopping one past this)
    /// before a new file or directory and asks [`Authorizer::admit_create_counted`].
    fn max_entries(&self, _principal: &Principal) -> Option<u64> {
        None
    }

    /// On an object store: called before a new file or directory is created, with the count of entries the
    /// area holds now (0 without [`Authorizer::max_entries`]); `Err(message)` refuses it.
    fn admit_create_counted(&self, _principal: &Principal, _have: u64) -> Result<(), String> {
        Ok(())
    }

    /// Open file and directory handles one SFTP session of `principal` may hold.
    fn max_open_handles(&self, _principal: &Principal) -> usize {
        MAX_OPEN_HANDLES
    }

    /// Called before a session that holds `open` handles opens one more; `Err(message)` refuses it. The
    /// default refuses at [`Authorizer::max_open_handles`].
    fn admit_handle(&self, principal: &Principal, open: usize) -> Result<(), String> {
        let max = self.max_open_handles(principal);
        if open >= max {
            return Err(format!("too many open handles in this session (limit {max}); close some first"));
        }
        Ok(())
    }

    /// Called at login with the number of sessions `principal` already has on this server; `Err(message)`
    /// refuses the login (the message is logged; SSH has no way to show it).
    fn admit_session(&self, _principal: &Principal, _open_sessions: usize) -> Result<(), String> {
        Ok(())
    }

    /// A file was renamed into place at `to` (an absolute path below `principal.root`; on an object store, the
    /// path the file would have on disk). Uploads finish this way
    /// (`.name.part` -> `name`), and the rename never replaces a file, so this is when an uploaded file is
    /// complete. Called after the rename succeeded; must not block (hand the work to a task).
    fn renamed(&self, _principal: &Principal, _to: &std::path::Path) {}

    /// Where `principal`'s files live when they are not in the local folder [`Principal::root`]: a prefix in an
    /// object store ([`crate::store`]). `None` (the default): the local folder.
    fn store(&self, _principal: &Principal) -> Option<crate::store::StoreRoot> {
        None
    }

    /// A login succeeded (e.g. to notice a key used from a new address).
    fn logged_in(&self, _principal: &Principal, _key: &PublicKey, _peer: Option<SocketAddr>) {}

    /// A login was refused: the key is not authorised for any principal.
    fn refused(&self, _user: &str, _key: &PublicKey, _peer: Option<SocketAddr>) {}
}

/// Whether two public keys are the same key (compares key data, ignores the comment).
pub fn same_key(a: &PublicKey, b: &PublicKey) -> bool {
    a.key_data() == b.key_data()
}

/// A fixed list of keys, each with its principal. Handy for tests and small deployments.
#[derive(Debug, Clone, Default)]
pub struct KeyList {
    entries: Vec<(PublicKey, Principal)>,
}

impl KeyList {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `key` as a login for `principal` (builder style).
    pub fn with(mut self, key: PublicKey, principal: Principal) -> Self {
        self.entries.push((key, principal));
        self
    }
}

impl Authorizer for KeyList {
    fn authorize(&self, _user: &str, key: &PublicKey) -> Option<Principal> {
        self.entries.iter().find(|(k, _)| same_key(k, key)).map(|(_, p)| p.clone())
    }
}

/// Settings of the SFTP server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The SSH host key; clients pin its [`host_key_fingerprint`].
    pub host_key: PrivateKey,
    /// A connection that has not authenticated within this time is dropped.
    pub auth_timeout: Duration,
    /// A connection that sends nothing for this long is dropped.
    pub idle_timeout: Duration,
    /// Authentication attempts allowed per connection.
    pub max_auth_attempts: usize,
    /// The caps on connections (all, and per client address) that [`serve`] admits through; refused ones are
    /// closed before the SSH handshake.
    pub gate: ferry_io::accept::Gate,
}

impl ServerConfig {
    /// Defaults: 30 s to log in, 10 min idle, 6 authentication attempts.
    pub fn new(host_key: PrivateKey) -> Self {
        Self {
            host_key,
            auth_timeout: DEFAULT_AUTH_TIMEOUT,
            idle_timeout: Duration::from_secs(600),
            max_auth_attempts: 6,
            gate: ferry_io::accept::Gate::new("sftp", MAX_CONNECTIONS, MAX_CONNECTIONS_PER_ADDRESS),
        }
    }

    /// The tuned russh configuration that [`serve`] uses; pass it to [`serve_stream`].
    pub fn russh_config(&self) -> Arc<russh::server::Config> {
        let mut methods = MethodSet::empty();
        methods.push(MethodKind::PublicKey);
        let preferred = russh::Preferred {
            // AES-GCM first: 10-20% less CPU than chacha20 with AES-NI; aes128-gcm is not in
            // russh's default list and some OpenSSH configurations ask for it.
            cipher: Cow::Borrowed(&[
                russh::cipher::AES_256_GCM,
                russh::cipher::AES_128_GCM,
                russh::cipher::CHACHA20_POLY1305,
                russh::cipher::AES_256_CTR,
                russh::cipher::AES_192_CTR,
                russh::cipher::AES_128_CTR,
            ]),
            // no SHA-1 `ssh-rsa` signatures
            key: Cow::Owned(
                russh::Preferred::DEFAULT
                    .key
                    .iter()
                    .filter(|a| !matches!(a, Algorithm::Rsa { hash: None }))
                    .cloned()
                    .collect(),
            ),
            // payloads are bzip2 already: compression would only burn CPU
            compression: Cow::Borrowed(&[russh::compression::NONE]),
            ..russh::Preferred::DEFAULT
        };
        Arc::new(russh::server::Config {
            server_id: russh::SshId::Standard(Cow::Borrowed("SSH-2.0-ferry")),
            methods,
            auth_rejection_time: Duration::from_millis(500),
            // OpenSSH probes with "none" first: do not make every login wait for that
            auth_rejection_time_initial: Some(Duration::ZERO),
            keys: vec![self.host_key.clone()],
            max_auth_attempts: self.max_auth_attempts,
            inactivity_timeout: Some(self.idle_timeout),
            preferred,
            nodelay: true,
            // Not the deadlock fix (the pump drains channels continuously), only smoothing.
            channel_buffer_size: 256,
            ..Default::default()
        })
    }
}

/// The SHA-256 fingerprint of a key as `ssh-keygen -l` prints it: `SHA256:` + unpadded base64.
pub fn host_key_fingerprint(key: &PrivateKey) -> String {
    key.public_key().fingerprint(HashAlg::Sha256).to_string()
}

/// Accepts SSH connections on `listener` until `shutdown` completes, then asks open sessions
/// to disconnect and waits a few seconds for them.
pub async fn serve(
    cfg: ServerConfig,
    listener: TcpListener,
    auth: Arc<dyn Authorizer>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    serve_with(cfg, listener, auth, Sessions::new(), shutdown).await
}

/// [`serve`], with the caller holding the server's [`Sessions`] (to list them, or close those of a
/// principal or key that has lost its access).
pub async fn serve_with(
    cfg: ServerConfig,
    listener: TcpListener,
    auth: Arc<dyn Authorizer>,
    sessions: Sessions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let ssh_cfg = cfg.russh_config();
    let auth_timeout = cfg.auth_timeout;
    let table = sessions;
    let stop = CancellationToken::new();
    let mut sessions: JoinSet<()> = JoinSet::new();
    let local = listener.local_addr().ok();
    tracing::info!(addr = ?local, fingerprint = %host_key_fingerprint(&cfg.host_key), "sftp server listening");
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            (stream, peer) = ferry_io::accept::accept(&listener, "sftp") => {
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::debug!(%peer, "set_nodelay failed: {e}");
                }
                let (ssh_cfg, auth, stop, table) = (ssh_cfg.clone(), auth.clone(), stop.child_token(), table.clone());
                // over a cap: closed here, before the SSH handshake (a load balancer's connection: after its PROXY
                // header, read in the connection's task, names the client)
                let Some(admitting) = cfg.gate.admit_accepted(peer) else { continue };
                sessions.spawn(async move {
                    let mut stream = stream;
                    let Some((permit, peer)) = admitting.finish(&mut stream).await else { return };
                    if let Err(e) = run_session(ssh_cfg, auth_timeout, stream, auth, table, Some(peer), stop).await {
                        tracing::debug!(%peer, "sftp connection ended: {e:#}");
                    }
                    drop(permit);
                });
            }
        }
    }
    tracing::info!(addr = ?local, "sftp server stopping");
    stop.cancel();
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async { while sessions.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        sessions.abort_all();
    }
    Ok(())
}

/// Serve one already-accepted stream (for a port shared with HTTPS).
///
/// Build `cfg` with [`ServerConfig::russh_config`]; pass the same `sessions` for every connection
/// of one server (brute-force throttle, closing sessions). The login deadline is
/// [`DEFAULT_AUTH_TIMEOUT`]; set `nodelay` on a TCP stream before calling. Returns when the
/// connection ends.
pub async fn serve_stream<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    cfg: Arc<russh::server::Config>,
    stream: S,
    auth: Arc<dyn Authorizer>,
    sessions: Sessions,
    peer: Option<SocketAddr>,
) -> anyhow::Result<()> {
    run_session(cfg, DEFAULT_AUTH_TIMEOUT, stream, auth, sessions, peer, CancellationToken::new()).await
}

async fn run_session<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    cfg: Arc<russh::server::Config>,
    auth_timeout: Duration,
    stream: S,
    auth: Arc<dyn Authorizer>,
    sessions: Sessions,
    peer: Option<SocketAddr>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    // Cut the connection whenever this future ends or is dropped (e.g. aborted at shutdown).
    let kill = CancellationToken::new();
    let _cut_on_exit = kill.clone().drop_guard();
    let stream = killable::Killable::new(stream, kill.clone());
    let authenticated = Arc::new(AtomicBool::new(false));
    // Cancelled when the session's principal or key loses its access (`Sessions::close_where`).
    let revoked = CancellationToken::new();
    let id = sessions.next_id();
    let _deregister = sessions::Deregister { sessions: sessions.clone(), id };
    let handler = SshHandler {
        auth,
        sessions,
        session_id: id,
        revoked: revoked.clone(),
        peer,
        principal: None,
        authenticated: authenticated.clone(),
        channels: HashMap::new(),
    };
    let session = tokio::time::timeout(auth_timeout, russh::server::run_stream(cfg, stream, handler))
        .await
        .context("the client did not send an SSH version string in time")?
        .context("the SSH handshake failed")?;
    let handle = session.handle();
    tokio::pin!(session);
    let login_deadline = tokio::time::sleep(auth_timeout);
    tokio::pin!(login_deadline);
    let mut deadline_passed = false;
    let (reason, outcome) = loop {
        tokio::select! {
            result = &mut session => {
                return result.context("the SSH session failed");
            }
            () = &mut login_deadline, if !deadline_passed => {
                deadline_passed = true;
                if !authenticated.load(Ordering::Acquire) {
                    tracing::info!(peer = ?peer, "sftp client did not log in within {auth_timeout:?}; disconnecting");
                    break ("authentication timed out", Err(anyhow::anyhow!("authentication timed out")));
                }
            }
            () = revoked.cancelled() => {
                tracing::info!(peer = ?peer, "closing an sftp session: its access was withdrawn");
                break ("access withdrawn by the operator", Ok(()));
            }
            () = stop.cancelled() => break ("server shutting down", Ok(())),
        }
    };
    // Politely ask russh to disconnect, then cut the stream if it has not ended meanwhile
    // (russh ignores the request during a key exchange).
    let ending = async {
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            handle.disconnect(Disconnect::ByApplication, reason.into(), "en".into()),
        )
        .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        kill.cancel();
    };
    tokio::pin!(ending);
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        tokio::select! {
            _ = &mut session => {}
            () = &mut ending => { let _ = (&mut session).await; }
        }
    })
    .await;
    outcome
}

/// Per-connection SSH handler.
struct SshHandler {
    auth: Arc<dyn Authorizer>,
    sessions: Sessions,
    session_id: u64,
    revoked: CancellationToken,
    peer: Option<SocketAddr>,
    principal: Option<Principal>,
    authenticated: Arc<AtomicBool>,
    channels: HashMap<ChannelId, Channel<Msg>>,
}

impl SshHandler {
    fn refuse_request(&self, channel: ChannelId, what: &str, session: &mut Session) -> Result<(), russh::Error> {
        tracing::info!(peer = ?self.peer, tenant = ?self.principal.as_ref().map(|p| &p.name),
            "refused a {what} request: only the sftp subsystem is served");
        session.channel_failure(channel)
    }
}

impl russh::server::Handler for SshHandler {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: russh::server::PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        if self.auth.authorize(user, offer.public_key).is_some() {
            return Ok(Auth::Accept);
        }
        let delay = self.sessions.throttle_failure(self.peer);
        self.auth.refused(user, offer.public_key, self.peer);
        tracing::info!(peer = ?self.peer, user = %user.escape_debug(),
            key = %offer.public_key.fingerprint(HashAlg::Sha256), delay_ms = delay.as_millis() as u64,
            "sftp login refused: unknown key");
        tokio::time::sleep(delay).await;
        Ok(Auth::reject())
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: russh::server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        match self.auth.authorize(user, key.public_key) {
            Some(principal) => {
                let open = self.sessions.count_of(&principal.name);
                if let Err(why) = self.auth.admit_session(&principal, open) {
                    tracing::warn!(peer = ?self.peer, tenant = %principal.name, "sftp login refused: {why}");
                    return Ok(Auth::reject());
                }
                let key_fingerprint = key.public_key.fingerprint(HashAlg::Sha256).to_string();
                tracing::info!(peer = ?self.peer, user = %user.escape_debug(), tenant = %principal.name,
                    key = %key_fingerprint, "sftp login");
                self.sessions.insert(
                    SessionInfo {
                        id: self.session_id,
                        principal: principal.name.clone(),
                        key_fingerprint,
                        peer: self.peer,
                        since: std::time::SystemTime::now(),
                    },
                    self.revoked.clone(),
                );
                // Access withdrawn between the check above and the registration would not be seen by a
                // `close_where` that ran in between: check once more now that the session is listed.
                if self.auth.authorize(user, key.public_key).is_none() {
                    self.sessions.remove(self.session_id);
                    return Ok(Auth::reject());
                }
                self.auth.logged_in(&principal, key.public_key, self.peer);
                self.principal = Some(principal);
                self.authenticated.store(true, Ordering::Release);
                self.sessions.throttle_success(self.peer);
                Ok(Auth::Accept)
            }
            None => {
                let delay = self.sessions.throttle_failure(self.peer);
                self.auth.refused(user, key.public_key, self.peer);
                tokio::time::sleep(delay).await;
                Ok(Auth::reject())
            }
        }
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.principal.is_none() || self.channels.len() >= MAX_CHANNELS_PER_CONNECTION {
            reply.reject(ChannelOpenFailure::AdministrativelyProhibited).await;
            return Ok(());
        }
        self.channels.insert(channel.id(), channel);
        reply.accept().await;
        Ok(())
    }

    async fn channel_close(&mut self, channel: ChannelId, _session: &mut Session) -> Result<(), Self::Error> {
        self.channels.remove(&channel);
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        channel_id: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if name != "sftp" {
            return self.refuse_request(channel_id, "subsystem", session);
        }
        let (Some(principal), Some(channel)) = (self.principal.clone(), self.channels.remove(&channel_id)) else {
            return session.channel_failure(channel_id);
        };
        if let Some(root) = self.auth.store(&principal) {
            session.channel_success(channel_id)?;
            tracing::debug!(tenant = %principal.name, "sftp subsystem started (object store)");
            let name = principal.name.clone();
            let fs = objfs::StoreFs::new(root, principal, self.auth.clone());
            tokio::spawn(pump::run(channel, fs, name));
            return Ok(());
        }
        let root = match tokio::fs::canonicalize(&principal.root).await {
            Ok(r) if tokio::fs::metadata(&r).await.is_ok_and(|m| m.is_dir()) => r,
            _ => {
                tracing::error!(tenant = %principal.name,
                    "the sftp root of this principal does not exist or is not a directory; refusing sftp");
                return session.channel_failure(channel_id);
            }
        };
        session.channel_success(channel_id)?;
        tracing::debug!(tenant = %principal.name, "sftp subsystem started");
        let name = principal.name.clone();
        let fs = fs::ConfinedFs::new(root, principal, self.auth.clone());
        tokio::spawn(pump::run(channel, fs, name));
        Ok(())
    }

    async fn shell_request(&mut self, channel: ChannelId, session: &mut Session) -> Result<(), Self::Error> {
        self.refuse_request(channel, "shell", session)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse_request(channel, "exec", session)
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse_request(channel, "pty", session)
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _x11_auth_protocol: &str,
        _x11_auth_cookie: &str,
        _x11_screen_number: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse_request(channel, "x11", session)
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        _variable_name: &str,
        _variable_value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // OpenSSH sends LANG/LC_* without asking for a reply; channel_failure answers only
        // when a reply was asked for.
        session.channel_failure(channel)
    }
}
