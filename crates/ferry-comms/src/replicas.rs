//! What makes several Comms replicas on one PostgreSQL behave as one server, beyond the claims of the relay and
//! downstream workers (`db::claim_relay`, `db::claim_downstream`) and the access counter (`access`):
//!
//! - [`watch_downloads`]: a file made ready by any replica wakes the long-polls (`GET /v1/files?wait=`) of this
//!   one within a second: one `LISTEN ferry_downloads` per replica (the trigger of migration 0008 notifies),
//!   fanned out in-process through [`CommsState::downloads_changed`]. A lost database connection is re-opened
//!   with backoff; meanwhile, and once after every reconnect (notifications sent while it was down are lost),
//!   the long-polls are woken every [`FALLBACK_CHECK`] to look for themselves.
//! - [`CommsState::first_use`]: the replay cache of signed calls in the database (`used_nonces`), so a signed
//!   call replayed to another replica is refused; swept by [`sweep_nonces`].
//!
//! On SQLite (one server) none of this runs: the process's own worker wakes its long-polls, and its in-memory
//! nonce cache is the whole replay cache.

use std::sync::Arc;
use std::time::Duration;

use crate::{CommsState, db};

/// While the listener is down, the long-polls look at the database this often.
pub const FALLBACK_CHECK: Duration = Duration::from_millis(500);
/// Longest wait between two attempts to re-open the listener.
const RECONNECT_MAX: Duration = Duration::from_secs(5);
/// Longest nonce kept in the shared replay cache (Ferry's own are 24 characters).
const MAX_NONCE_LEN: usize = 256;
/// Expired nonces are swept this often.
pub const NONCE_SWEEP_INTERVAL: Duration = Duration::from_secs(60);

impl CommsState {
    /// Wake every long-poll of this replica (they read their tenant's list again).
    pub fn wake_long_polls(&self) {
        self.downloads_changed.send_modify(|v| *v += 1);
    }

    /// The replica-wide half of the replay check of a signed call (the in-memory cache already passed it): on
    /// PostgreSQL, (key, nonce) is recorded in the shared table, and a second use on any replica is refused.
    pub async fn first_use(&self, keyid: &str, nonce: &str, until: i64) -> Result<(), ferry_web::ApiError> {
        if !self.db.is_postgres() {
            return Ok(());
        }
        if nonce.len() > MAX_NONCE_LEN {
            return Err(ferry_web::ApiError::Unauthorized(format!(
                "request signature refused: its nonce is longer than {MAX_NONCE_LEN} characters"
            )));
        }
        match db::first_use_of_nonce(&self.db, keyid, nonce, until).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(ferry_web::ApiError::Unauthorized(
                "request signature refused: this signature was already used (replay); sign every request afresh".into(),
            )),
            Err(e) => Err(ferry_web::ApiError::internal(e)),
        }
    }
}

/// Fan the database's download notifications out to this replica's long-polls (see the module doc). Returns at
/// shutdown; does nothing on SQLite.
pub async fn watch_downloads(st: Arc<CommsState>, shutdown: impl std::future::Future<Output = ()>) {
    if !st.db.is_postgres() {
        return;
    }
    tokio::pin!(shutdown);
    let mut backoff = Duration::from_millis(100);
    loop {
        // opening may take until the pool's acquire timeout while the database is away: the long-polls keep
        // looking for themselves meanwhile
        let connecting = db::listen_downloads(&st.db);
        tokio::pin!(connecting);
        let listener = loop {
            tokio::select! {
                _ = &mut shutdown => return,
                l = &mut connecting => break l,
                _ = tokio::time::sleep(FALLBACK_CHECK) => st.wake_long_polls(),
            }
        };
        let mut listener = match listener {
            Ok(Some(l)) => l,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(
                    "cannot listen for downloads on the database (long-polls check every {} ms meanwhile): {e}",
                    FALLBACK_CHECK.as_millis()
                );
                // fall back: wake the long-polls periodically until the listener is back
                let until = tokio::time::Instant::now() + backoff;
                while tokio::time::Instant::now() < until {
                    st.wake_long_polls();
                    tokio::select! {
                        _ = &mut shutdown => return,
                        _ = tokio::time::sleep(FALLBACK_CHECK) => {}
                    }
                }
                backoff = (backoff * 2).min(RECONNECT_MAX);
                continue;
            }
        };
        // whatever was announced while no listener ran was missed: look once
        st.wake_long_polls();
        backoff = Duration::from_millis(100);
        loop {
            let next = tokio::select! {
                _ = &mut shutdown => {
                    let _ = listener.unlisten_all().await;
                    return;
                }
                n = listener.try_recv() => n,
            };
            match next {
                Ok(Some(n)) => {
                    tracing::trace!(tenant = n.payload(), "a download became ready (notified)");
                    st.wake_long_polls();
                }
                // the connection was lost (and re-opened): notifications in between are lost, look once
                Ok(None) => {
                    tracing::info!("the database listener reconnected; long-polls look again");
                    st.wake_long_polls();
                }
                Err(e) => {
                    tracing::warn!("the database listener for downloads failed, re-opening it: {e}");
                    st.wake_long_polls();
                    break;
                }
            }
        }
    }
}

/// Sweep the expired nonces of the shared replay cache every [`NONCE_SWEEP_INTERVAL`] (PostgreSQL only; any
/// replica may do it, doing it twice is harmless).
pub async fn sweep_nonces(st: Arc<CommsState>, shutdown: impl std::future::Future<Output = ()>) {
    if !st.db.is_postgres() {
        return;
    }
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(NONCE_SWEEP_INTERVAL) => {}
        }
        match db::sweep_nonces(&st.db, chrono::Utc::now().timestamp()).await {
            Ok(n) if n > 0 => tracing::debug!(removed = n, "expired nonces swept"),
            Ok(_) => {}
            Err(e) => tracing::warn!("cannot sweep expired nonces: {e}"),
        }
    }
}
