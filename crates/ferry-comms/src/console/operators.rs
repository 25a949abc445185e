//! Operator accounts and console sessions, in the Comms database (migration 0006). `ferry comms operator add
//! EMAIL` issues a one-time set-password link (valid [`SET_PASSWORD_VALID`]); the operator chooses a password
//! (Argon2id) and logs in with email and password. A session is either an operator's or the admin token's.
//! Secrets at rest are hashes only (set-password tokens and session ids as SHA-256); the CSRF token of a session
//! is stored as is (useless without the session cookie).

use std::time::Duration;

use ferry_web::page::{hash_password, normalize_email, random_token, sha256_hex, verify_password};
use sqlx::Row;

use crate::db::Db;

/// How long a set-password link stays valid.
pub const SET_PASSWORD_VALID: Duration = Duration::from_secs(72 * 3600);
/// How long a console session lasts (no sliding renewal).
pub const SESSION_VALID: Duration = Duration::from_secs(12 * 3600);
/// Who a session of the admin token is.
pub const ADMIN_TOKEN: &str = "admin token";

/// A logged-in console session.
#[derive(Debug, Clone)]
pub struct Session {
    /// An operator's email, or [`ADMIN_TOKEN`].
    pub who: String,
    pub csrf: String,
}

fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Add operator `email` (or keep it) and issue a one-time set-password token; earlier unused tokens of the
/// operator are void. Audited (`operator_added`, by `actor`). Returns (the normalized email, the token).
pub async fn add(db: &Db, email: &str, actor: &str) -> anyhow::Result<(String, String)> {
    crate::db::on!(db, pool => {
        let Some(email) = normalize_email(email) else {
            anyhow::bail!("{:?} is not an email address (name@domain)", email.chars().take(64).collect::<String>());
        };
        let token = random_token();
        let mut tx = pool.begin().await?;
        sqlx::query("INSERT INTO operators (email, password, created_at) VALUES ($1, NULL, $2) ON CONFLICT DO NOTHING")
            .bind(&email)
            .bind(chrono::Utc::now().to_rfc3339())
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM operator_tokens WHERE email = $1").bind(&email).execute(&mut *tx).await?;
        sqlx::query("INSERT INTO operator_tokens (token_hash, email, expires_at) VALUES ($1, $2, $3)")
            .bind(sha256_hex(&token))
            .bind(&email)
            .bind(now_secs() + SET_PASSWORD_VALID.as_secs() as i64)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        crate::db::audit(db, None, "operator_added", &format!("{email}: set-password link issued (by {actor})")).await;
        Ok((email, token))
    })
}

/// The operator a set-password token is valid for (unused, not expired).
pub async fn token_email(db: &Db, token: &str) -> sqlx::Result<Option<String>> {
    crate::db::on!(db, pool => {
        sqlx::query_scalar("SELECT email FROM operator_tokens WHERE token_hash = $1 AND expires_at > $2")
            .bind(sha256_hex(token))
            .bind(now_secs())
            .fetch_optional(pool)
            .await
    })
}

/// Use a set-password token once: set the password, void the token and every session of the operator.
/// `false` when the token is unknown, used or expired.
pub async fn set_password(db: &Db, token: &str, password: &str) -> anyhow::Result<bool> {
    crate::db::on!(db, pool => {
        let hash = hash_password(password).await?;
        let mut tx = pool.begin().await?;
        let email: Option<String> =
            sqlx::query_scalar("DELETE FROM operator_tokens WHERE token_hash = $1 AND expires_at > $2 RETURNING email")
                .bind(sha256_hex(token))
                .bind(now_secs())
                .fetch_optional(&mut *tx)
                .await?;
        let Some(email) = email else { return Ok(false) };
        sqlx::query("UPDATE operators SET password = $1 WHERE email = $2").bind(&hash).bind(&email).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM console_sessions WHERE who = $1").bind(&email).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(true)
    })
}

/// Whether `password` is the operator's. An unknown operator and one without a password are refused in the
/// same Argon2 time.
pub async fn check_password(db: &Db, email: &str, password: &str) -> sqlx::Result<Option<String>> {
    crate::db::on!(db, pool => {
        let Some(email) = normalize_email(email) else { return Ok(None) };
        let stored: Option<String> = sqlx::query("SELECT password FROM operators WHERE email = $1")
            .bind(&email)
            .fetch_optional(pool)
            .await?
            .and_then(|r| r.get::<Option<String>, _>(0));
        Ok(verify_password(password, stored).await.then_some(email))
    })
}

/// Open a session for `who`; returns (the session id for the cookie, the session).
pub async fn open_session(db: &Db, who: &str) -> sqlx::Result<(String, Session)> {
    crate::db::on!(db, pool => {
        sqlx::query("DELETE FROM console_sessions WHERE expires_at <= $1").bind(now_secs()).execute(pool).await?;
        let id = random_token();
        let session = Session { who: who.to_string(), csrf: random_token() };
        sqlx::query("INSERT INTO console_sessions (id_hash, who, csrf, expires_at) VALUES ($1, $2, $3, $4)")
            .bind(sha256_hex(&id))
            .bind(&session.who)
            .bind(&session.csrf)
            .bind(now_secs() + SESSION_VALID.as_secs() as i64)
            .execute(pool)
            .await?;
        Ok((id, session))
    })
}

/// The live session of a cookie value, if any.
pub async fn session(db: &Db, id: &str) -> sqlx::Result<Option<Session>> {
    crate::db::on!(db, pool => {
        let row = sqlx::query("SELECT who, csrf FROM console_sessions WHERE id_hash = $1 AND expires_at > $2")
            .bind(sha256_hex(id))
            .bind(now_secs())
            .fetch_optional(pool)
            .await?;
        row.map(|r| Ok(Session { who: r.try_get(0)?, csrf: r.try_get(1)? })).transpose()
    })
}

pub async fn logout(db: &Db, id: &str) -> sqlx::Result<()> {
    crate::db::on!(db, pool => {
        sqlx::query("DELETE FROM console_sessions WHERE id_hash = $1").bind(sha256_hex(id)).execute(pool).await?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_operator_sets_a_password_once_then_logs_in() {
        let dir = tempfile::tempdir().unwrap();
        let pool = crate::db::open_sqlite(&dir.path().join("comms.db")).await.unwrap();
        let (email, token) = add(&pool, "Ops@Example.com", "cli").await.unwrap();
        assert_eq!(email, "ops@example.com");
        assert_eq!(token_email(&pool, &token).await.unwrap().as_deref(), Some("ops@example.com"));
        assert!(check_password(&pool, &email, "").await.unwrap().is_none(), "no password yet");
        assert!(set_password(&pool, &token, "correct horse battery").await.unwrap());
        assert!(!set_password(&pool, &token, "another password!").await.unwrap(), "single use");
        assert!(check_password(&pool, &email, "wrong password").await.unwrap().is_none());
        assert_eq!(check_password(&pool, "OPS@example.com", "correct horse battery").await.unwrap(), Some(email));
        let (id, s) = open_session(&pool, "ops@example.com").await.unwrap();
        assert_eq!(session(&pool, &id).await.unwrap().unwrap().csrf, s.csrf);
        logout(&pool, &id).await.unwrap();
        assert!(session(&pool, &id).await.unwrap().is_none());
        assert!(add(&pool, "not an email", "cli").await.is_err());
        let audit = crate::db::recent_audit(&pool, 10).await.unwrap();
        assert!(audit.iter().any(|e| e.3 == "operator_added" && e.4.contains("ops@example.com")), "{audit:?}");
    }
}
