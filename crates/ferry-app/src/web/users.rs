//! The buyers' accounts, App-wide: `<data_dir>/web.sqlite` (0600) maps each user (an email) to exactly one
//! tenant, and holds the Argon2id password hashes, the one-time set-password tokens and the login sessions.
//!
//! Secrets at rest are hashes only: the set-password token and the session id are stored as SHA-256 (they are
//! 256-bit random values, so a plain hash is enough); passwords as Argon2id PHC strings. The CSRF token of a
//! session is stored as is (it is useless without the session cookie).

use std::path::Path;
use std::time::Duration;

pub use ferry_web::page::{MIN_PASSWORD_CHARS, random_token};
use ferry_web::page::{sha256_hex, verify_password};
use sqlx::{Row, SqlitePool};

/// How long a set-password link stays valid.
pub const SET_PASSWORD_VALID: Duration = Duration::from_secs(72 * 3600);
/// How long a login session lasts (no sliding renewal: log in again after a working day).
pub const SESSION_VALID: Duration = Duration::from_secs(12 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("{0:?} is not an email address (name@domain)")]
    BadEmail(String),
    #[error("the user store failed: {0}")]
    Db(#[from] sqlx::Error),
    #[error("{0} belongs to tenant {1}; a user belongs to one tenant only")]
    OtherTenant(String, String),
    #[error("password hashing failed: {0}")]
    Hash(String),
}

/// A logged-in user's session, as the store knows it. The tenant comes from here and nowhere else.
#[derive(Debug, Clone)]
pub struct Session {
    pub email: String,
    pub tenant: String,
    pub csrf: String,
}

pub struct Users {
    pool: SqlitePool,
}

fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Lower-cased and trimmed; refused unless it looks like `name@domain` (at most 254 characters).
pub fn normalize_email(email: &str) -> Result<String, UserError> {
    ferry_web::page::normalize_email(email).ok_or_else(|| UserError::BadEmail(email.chars().take(64).collect()))
}

impl Users {
    pub async fn open(data_dir: &Path) -> Result<Users, UserError> {
        let options = ferry_io::sqlite::Options { max_connections: 2, ..Default::default() };
        let pool = ferry_io::sqlite::open(&data_dir.join("web.sqlite"), &options).await?;
        for ddl in [
            "CREATE TABLE IF NOT EXISTS users (email TEXT PRIMARY KEY, tenant TEXT NOT NULL, password TEXT, \
             created_at TEXT NOT NULL)",
            "CREATE TABLE IF NOT EXISTS set_password (token_hash TEXT PRIMARY KEY, email TEXT NOT NULL, \
             expires_at INTEGER NOT NULL)",
            "CREATE TABLE IF NOT EXISTS sessions (id_hash TEXT PRIMARY KEY, email TEXT NOT NULL, \
             tenant TEXT NOT NULL, csrf TEXT NOT NULL, expires_at INTEGER NOT NULL)",
        ] {
            sqlx::query(ddl).execute(&pool).await?;
        }
        Ok(Users { pool })
    }

    /// Add `email` to `tenant` (or keep it there) and issue a one-time set-password token, valid
    /// [`SET_PASSWORD_VALID`]; earlier unused tokens of the user are void. Returns the token (shown once).
    pub async fn add(&self, tenant: &str, email: &str) -> Result<String, UserError> {
        let email = normalize_email(email)?;
        let mut tx = self.pool.begin().await?;
        let existing: Option<String> = sqlx::query_scalar("SELECT tenant FROM users WHERE email = ?")
            .bind(&email)
            .fetch_optional(&mut *tx)
            .await?;
        match existing {
            Some(t) if t != tenant => return Err(UserError::OtherTenant(email, t)),
            Some(_) => {}
            None => {
                sqlx::query("INSERT INTO users (email, tenant, password, created_at) VALUES (?, ?, NULL, ?)")
                    .bind(&email)
                    .bind(tenant)
                    .bind(chrono::Utc::now().to_rfc3339())
                    .execute(&mut *tx)
                    .await?;
            }
        }
        sqlx::query("DELETE FROM set_password WHERE email = ?").bind(&email).execute(&mut *tx).await?;
        let token = random_token();
        sqlx::query("INSERT INTO set_password (token_hash, email, expires_at) VALUES (?, ?, ?)")
            .bind(sha256_hex(&token))
            .bind(&email)
            .bind(now_secs() + SET_PASSWORD_VALID.as_secs() as i64)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(token)
    }

    /// The email a set-password token is valid for (unused, not expired).
    pub async fn token_email(&self, token: &str) -> Result<Option<String>, UserError> {
        Ok(sqlx::query_scalar("SELECT email FROM set_password WHERE token_hash = ? AND expires_at > ?")
            .bind(sha256_hex(token))
            .bind(now_secs())
            .fetch_optional(&self.pool)
            .await?)
    }

    /// Use a set-password token once: set the password, void the token and every session of the user. `false`
    /// when the token is unknown, used or expired.
    pub async fn set_password(&self, token: &str, password: &str) -> Result<bool, UserError> {
        let hash = hash_password(password).await?;
        let mut tx = self.pool.begin().await?;
        let email: Option<String> =
            sqlx::query_scalar("DELETE FROM set_password WHERE token_hash = ? AND expires_at > ? RETURNING email")
                .bind(sha256_hex(token))
                .bind(now_secs())
                .fetch_optional(&mut *tx)
                .await?;
        let Some(email) = email else { return Ok(false) };
        sqlx::query("UPDATE users SET password = ? WHERE email = ?").bind(&hash).bind(&email).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM sessions WHERE email = ?").bind(&email).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Check a password; on success open a session and return `(session id for the cookie, session)`.
    /// A wrong password, an unknown user and a user without a password all answer `None` (and take the same
    /// Argon2 time).
    pub async fn login(&self, email: &str, password: &str) -> Result<Option<(String, Session)>, UserError> {
        let Ok(email) = normalize_email(email) else { return Ok(None) };
        let row = sqlx::query("SELECT tenant, password FROM users WHERE email = ?")
            .bind(&email)
            .fetch_optional(&self.pool)
            .await?;
        let (tenant, stored): (Option<String>, Option<String>) = match row {
            Some(r) => (Some(r.try_get("tenant")?), r.try_get("password")?),
            None => (None, None),
        };
        let ok = verify_password(password, stored).await;
        let (true, Some(tenant)) = (ok, tenant) else { return Ok(None) };
        sqlx::query("DELETE FROM sessions WHERE expires_at <= ?").bind(now_secs()).execute(&self.pool).await?;
        let id = random_token();
        let session = Session { email: email.clone(), tenant, csrf: random_token() };
        sqlx::query("INSERT INTO sessions (id_hash, email, tenant, csrf, expires_at) VALUES (?, ?, ?, ?, ?)")
            .bind(sha256_hex(&id))
            .bind(&session.email)
            .bind(&session.tenant)
            .bind(&session.csrf)
            .bind(now_secs() + SESSION_VALID.as_secs() as i64)
            .execute(&self.pool)
            .await?;
        Ok(Some((id, session)))
    }

    /// The live session of a cookie value, if any.
    pub async fn session(&self, id: &str) -> Result<Option<Session>, UserError> {
        let row = sqlx::query("SELECT email, tenant, csrf FROM sessions WHERE id_hash = ? AND expires_at > ?")
            .bind(sha256_hex(id))
            .bind(now_secs())
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => {
                Some(Session { email: r.try_get("email")?, tenant: r.try_get("tenant")?, csrf: r.try_get("csrf")? })
            }
            None => None,
        })
    }

    pub async fn logout(&self, id: &str) -> Result<(), UserError> {
        sqlx::query("DELETE FROM sessions WHERE id_hash = ?").bind(sha256_hex(id)).execute(&self.pool).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Argon2id with a random salt ([`ferry_web::page::hash_password`]).
async fn hash_password(password: &str) -> Result<String, UserError> {
    ferry_web::page::hash_password(password).await.map_err(|e| UserError::Hash(format!("{e:#}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn set_password_once_then_log_in() {
        let dir = tempfile::tempdir().unwrap();
        let users = Users::open(dir.path()).await.unwrap();
        let token = users.add("acme", "Buyer@Example.com").await.unwrap();
        assert_eq!(users.token_email(&token).await.unwrap().as_deref(), Some("buyer@example.com"));
        assert!(users.login("buyer@example.com", "").await.unwrap().is_none(), "no password yet");
        assert!(users.set_password(&token, "correct horse battery").await.unwrap());
        assert!(!users.set_password(&token, "another password!").await.unwrap(), "single use");
        assert!(users.login("buyer@example.com", "wrong password").await.unwrap().is_none());
        let (id, s) = users.login("BUYER@example.com", "correct horse battery").await.unwrap().unwrap();
        assert_eq!(s.tenant, "acme");
        assert_eq!(users.session(&id).await.unwrap().unwrap().tenant, "acme");
        assert!(users.add("other", "buyer@example.com").await.is_err(), "one tenant per user");
        users.logout(&id).await.unwrap();
        assert!(users.session(&id).await.unwrap().is_none());
        assert!(normalize_email("not an email").is_err());
    }
}
