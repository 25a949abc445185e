//! The pieces every server-rendered page for people shares (the buyer's page of the App, the operator console
//! of the Comms server), so the rules live in one place:
//!
//! - **Secrets**: session ids and one-time tokens are 256-bit random values ([`random_token`]) stored as SHA-256
//!   only ([`sha256_hex`]); passwords as Argon2id PHC strings ([`hash_password`], [`verify_password`]).
//! - **Cookies**: `HttpOnly; Secure; SameSite=Strict` always ([`cookie_header`]); read with [`cookie`].
//! - **CSRF**: a session's synchronizer token in every POST form (`csrf` field), compared in constant time
//!   ([`Form::csrf_is`]); before login, a double-submit token (cookie + field).
//! - **Headers**: a strict CSP without scripts, no framing, no referrer, no caching ([`security_headers`]).
//! - **Failed logins** limited per account and per client address ([`LoginLimiter`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use sha2::Digest;

/// Shortest password accepted.
pub const MIN_PASSWORD_CHARS: usize = 10;

/// A fresh 256-bit random value, hex.
pub fn random_token() -> String {
    let mut b = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut b);
    hex::encode(b)
}

/// SHA-256 of `s`, hex: how random secrets are stored.
pub fn sha256_hex(s: &str) -> String {
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

/// Equal strings, compared in time that depends on the length only.
pub fn ct_eq(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// A cookie's value from the request headers (at most 128 characters, never empty).
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
        .filter(|v| !v.is_empty() && v.len() <= 128)
}

/// A `Set-Cookie` value: `HttpOnly; Secure; SameSite=Strict` on `path`, for `max_age` seconds (0 removes it).
pub fn cookie_header(name: &str, value: &str, path: &str, max_age: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("{name}={value}; HttpOnly; Secure; SameSite=Strict; Path={path}; Max-Age={max_age}"))
        .unwrap_or_else(|_| HeaderValue::from_static("invalid=; Max-Age=0"))
}

/// A parsed `application/x-www-form-urlencoded` body (repeated names kept, e.g. `line=1&line=2`).
pub struct Form(pub Vec<(String, String)>);

impl Form {
    pub fn parse(body: &[u8]) -> Form {
        Form(url::form_urlencoded::parse(body).map(|(k, v)| (k.into_owned(), v.into_owned())).collect())
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0.iter().filter(move |(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// Whether the form's `csrf` field is `expected` (constant time).
    pub fn csrf_is(&self, expected: &str) -> bool {
        self.get("csrf").is_some_and(|t| !expected.is_empty() && ct_eq(t, expected))
    }
}

/// What is wrong with a new password and its confirmation, if anything.
pub fn new_password_problem(password: &str, confirm: Option<&str>) -> Option<String> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        Some(format!("The password must have at least {MIN_PASSWORD_CHARS} characters."))
    } else if password.len() > 1024 {
        Some("The password is too long (at most 1024 bytes).".into())
    } else if Some(password) != confirm {
        Some("The two passwords differ.".into())
    } else {
        None
    }
}

/// Lower-cased and trimmed; `None` unless it looks like `name@domain` (at most 254 characters).
pub fn normalize_email(email: &str) -> Option<String> {
    let e = email.trim().to_lowercase();
    let ok = e.len() <= 254
        && e.split_once('@').is_some_and(|(a, d)| !a.is_empty() && d.contains('.') && !d.starts_with('.'))
        && !e.chars().any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>' || c == '"');
    ok.then_some(e)
}

/// Argon2id (the crate's defaults: 19 MiB, 2 passes) with a random salt, off the async threads.
pub async fn hash_password(password: &str) -> anyhow::Result<String> {
    let password = password.to_string();
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        argon2::Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| anyhow::anyhow!("password hashing failed: {e}"))
    })
    .await?
}

/// Verify against the stored PHC string; without one, verify against a dummy hash so that the answer takes as
/// long as for a real account, and refuse.
pub async fn verify_password(password: &str, stored: Option<String>) -> bool {
    const DUMMY: &str =
        "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$2kZQhZ6y3o0tUOcmkQxYSsp5aM5Eq7e9eXnq3bJ9XlE";
    let password = password.to_string();
    tokio::task::spawn_blocking(move || {
        let real = stored.is_some();
        let phc = stored.unwrap_or_else(|| DUMMY.to_string());
        let Ok(parsed) = PasswordHash::new(&phc) else { return false };
        let ok = argon2::Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok();
        ok && real
    })
    .await
    .unwrap_or(false)
}

/// Response headers of every page: no scripts, no framing, no referrer (one-time tokens travel in URLs), HTTPS
/// only, and not cached unless the handler said otherwise. An axum `from_fn` middleware.
/// The shared stylesheet of the pages for people, followed by a server's own additions (`extra`).
pub fn stylesheet(extra: &str) -> Response {
    const BASE: &str = include_str!("page.css");
    let headers = [(header::CONTENT_TYPE, "text/css; charset=utf-8"), (header::CACHE_CONTROL, "max-age=3600")];
    (headers, format!("{BASE}{extra}")).into_response()
}

pub async fn security_headers(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::STRICT_TRANSPORT_SECURITY, HeaderValue::from_static("max-age=31536000"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

/// At most [`LoginLimiter::PER_ACCOUNT`] failed logins per account and [`LoginLimiter::PER_ADDRESS`] per client
/// address in [`LoginLimiter::WINDOW`]; further attempts are refused (429) until the window has passed. In memory
/// (a restart forgets), bounded: at most [`LoginLimiter::MAX_KEYS`] keys are tracked.
#[derive(Default)]
pub struct LoginLimiter {
    failures: Mutex<HashMap<String, (u32, Instant)>>,
}

impl LoginLimiter {
    pub const PER_ACCOUNT: u32 = 5;
    pub const PER_ADDRESS: u32 = 30;
    pub const WINDOW: Duration = Duration::from_secs(15 * 60);
    pub const MAX_KEYS: usize = 10_000;

    fn keys(account: &str, ip: IpAddr) -> [(String, u32); 2] {
        [(format!("account:{account}"), Self::PER_ACCOUNT), (format!("ip:{ip}"), Self::PER_ADDRESS)]
    }

    /// `Err(wait)` when a limit is reached.
    pub fn check(&self, account: &str, ip: IpAddr) -> Result<(), Duration> {
        let map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        for (k, max) in Self::keys(account, ip) {
            if let Some((n, since)) = map.get(&k)
                && *n >= max
                && since.elapsed() < Self::WINDOW
            {
                return Err(Self::WINDOW.saturating_sub(since.elapsed()));
            }
        }
        Ok(())
    }

    pub fn failed(&self, account: &str, ip: IpAddr) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= Self::MAX_KEYS {
            map.retain(|_, (_, since)| since.elapsed() < Self::WINDOW);
        }
        for (k, _) in Self::keys(account, ip) {
            if map.len() >= Self::MAX_KEYS && !map.contains_key(&k) {
                continue;
            }
            let e = map.entry(k).or_insert((0, Instant::now()));
            if e.1.elapsed() >= Self::WINDOW {
                *e = (0, Instant::now());
            }
            e.0 += 1;
        }
    }

    pub fn succeeded(&self, account: &str) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(&format!("account:{account}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_logins_are_limited_per_account() {
        let l = LoginLimiter::default();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        for _ in 0..LoginLimiter::PER_ACCOUNT {
            assert!(l.check("a@b.c", ip).is_ok());
            l.failed("a@b.c", ip);
        }
        assert!(l.check("a@b.c", ip).is_err());
        assert!(l.check("other@b.c", ip).is_ok());
    }

    #[test]
    fn cookies_forms_and_csrf() {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("a=1; ferry_session=abc; b=2"));
        assert_eq!(cookie(&h, "ferry_session").as_deref(), Some("abc"));
        let f = Form::parse(b"line=1&line=2&csrf=x%20y");
        assert_eq!(f.all("line").collect::<Vec<_>>(), ["1", "2"]);
        assert!(f.csrf_is("x y"));
        assert!(!f.csrf_is("x z") && !f.csrf_is(""));
        assert!(!Form::parse(b"a=1").csrf_is("x"));
    }

    #[test]
    fn emails_and_passwords() {
        assert_eq!(normalize_email(" Op@Example.COM ").as_deref(), Some("op@example.com"));
        assert!(normalize_email("not an email").is_none());
        assert!(new_password_problem("short", Some("short")).is_some());
        assert!(new_password_problem("long enough pw", Some("other")).is_some());
        assert!(new_password_problem("long enough pw", Some("long enough pw")).is_none());
    }
}
