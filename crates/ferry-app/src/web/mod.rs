//! The buyer's web page: HTTPS on its own listener (`listen_web`), for people, not programs. Server-rendered
//! HTML (maud), no JavaScript; one small stylesheet.
//!
//! - **Who**: users live in `<data_dir>/web.sqlite` ([`users`]), each bound to one tenant; `ferry app user add`
//!   prints a one-time set-password link. Login opens a server-side session (random id in an `HttpOnly; Secure;
//!   SameSite=Strict` cookie, stored hashed).
//! - **Invariant**: every page and action takes the tenant ONLY from the session, never from the URL, query or
//!   form; everything it reads or changes is in that tenant's own instance database, so another tenant's line,
//!   item or release id simply does not exist there (404).
//! - **CSRF**: every POST carries the session's synchronizer token (`csrf` field), compared in constant time; the
//!   login form, which has no session yet, a double-submit token (cookie + field).
//! - **Failed logins** are limited per email and per client address ([`LoginLimiter`]).

pub mod chart;
pub mod pages;
pub mod users;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
pub use ferry_web::page::{Form, cookie};
use ferry_web::page::{LoginLimiter, cookie_header, ct_eq};
use maud::{DOCTYPE, Markup, html};

use crate::server::AppState;
use users::{Session, Users};

pub const SESSION_COOKIE: &str = "ferry_session";
const LOGIN_COOKIE: &str = "ferry_login";
/// Largest form body accepted (a release of many selected lines stays far below).
const MAX_FORM: usize = 256 * 1024;

pub struct WebState {
    pub app: Arc<AppState>,
    pub users: Users,
    limiter: LoginLimiter,
}

pub type St = State<Arc<WebState>>;

/// Start the App server ([`crate::server::start`]) and, with `web`, the buyer's web page on that listener
/// (HTTPS with the App's certificate, its own connection caps).
pub async fn start_with_web(
    cfg: crate::AppConfig,
    https: std::net::TcpListener,
    ssh: tokio::net::TcpListener,
    web: Option<std::net::TcpListener>,
) -> anyhow::Result<crate::server::AppHandle> {
    let mut h = crate::server::start(cfg, https, ssh).await?;
    if let Some(web) = web {
        // after the server started: it creates the data folder (0700)
        let users = match Users::open(&h.state.cfg.data_dir).await {
            Ok(u) => u,
            Err(e) => {
                h.stop().await;
                anyhow::bail!("opening the web users (web.sqlite): {e}");
            }
        };
        let addr = web.local_addr()?;
        h.serve_https("web page", web, router(h.state.clone(), users))?;
        h.web_addr = Some(addr);
        tracing::info!(%addr, "buyer's web page listening");
    }
    Ok(h)
}

/// The web page's router over `app`'s instances and `users`.
pub fn router(app: Arc<AppState>, users: Users) -> Router {
    let st = Arc::new(WebState { app, users, limiter: LoginLimiter::default() });
    let routes = Router::new()
        .route("/", get(|| async { Redirect::to("/plan") }))
        .route("/style.css", get(style))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/set-password", get(set_password_page).post(set_password))
        .route("/plan", get(pages::plan))
        .route("/item", get(pages::item))
        .route("/lines/{id}/qty", post(pages::set_qty))
        .route("/lines/{id}/reject", post(pages::reject))
        .route("/release", post(pages::release_lines))
        .route("/release-supplier", post(pages::release_supplier))
        .route("/releases", get(pages::releases))
        .route("/releases/{id}", get(pages::release_detail))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_FORM))
        .layer(axum::middleware::from_fn(ferry_web::page::security_headers))
        .with_state(st);
    ferry_web::serve::with_request_timeout(routes, Duration::from_secs(60))
}

async fn style() -> Response {
    ferry_web::page::stylesheet("")
}

// ------------------------------------------------------------------------------------------------------------
// Sessions and forms

/// A logged-in request: the session (with its tenant) from the cookie. Without one, a GET is sent to the login
/// page and anything else is refused with 401.
pub struct Auth(pub Session);

impl FromRequestParts<Arc<WebState>> for Auth {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, st: &Arc<WebState>) -> Result<Self, Self::Rejection> {
        let session = match cookie(&parts.headers, SESSION_COOKIE) {
            Some(id) => st.users.session(&id).await.map_err(|e| internal(&e))?,
            None => None,
        };
        match session {
            Some(s) => Ok(Auth(s)),
            None if parts.method == axum::http::Method::GET => Err(Redirect::to("/login").into_response()),
            None => Err(refusal(StatusCode::UNAUTHORIZED, "Your session has ended. Log in again.")),
        }
    }
}

/// The CSRF check of a logged-in user's form (the form type and its rules: [`ferry_web::page`]).
pub trait CheckCsrf {
    /// Refuse (403) unless the form's `csrf` field is the session's token.
    // a refusal is the handler's answer, returned at once: its size does not matter
    #[allow(clippy::result_large_err)]
    fn check_csrf(&self, session: &Session) -> Result<(), Response>;
}

impl CheckCsrf for Form {
    fn check_csrf(&self, session: &Session) -> Result<(), Response> {
        if self.csrf_is(&session.csrf) {
            Ok(())
        } else {
            Err(refusal(
                StatusCode::FORBIDDEN,
                "This form is out of date or did not come from this page (CSRF check). Go back, reload and try again.",
            ))
        }
    }
}

pub fn internal(e: &dyn std::fmt::Display) -> Response {
    tracing::error!("web page: {e}");
    refusal(StatusCode::INTERNAL_SERVER_ERROR, "Something went wrong on the server; the error was logged. Try again.")
}

/// A plain error page with `status`.
pub fn refusal(status: StatusCode, message: &str) -> Response {
    let body = html! {
        (DOCTYPE)
        html lang="en" {
            head { meta charset="utf-8"; title { "Ferry: " (status.as_u16()) } link rel="stylesheet" href="/style.css"; }
            body { main { h1 { (status.canonical_reason().unwrap_or("Error")) } p.error role="alert" { (message) } p { a href="/plan" { "Back to the plan" } } } }
        }
    };
    (status, Html(body.into_string())).into_response()
}

/// The page frame of a logged-in user: header (tenant, policy, navigation, logout) and `content`.
pub fn page(s: &Session, title: &str, policy: &str, content: Markup) -> Html<String> {
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    title { (title) " · Ferry" }
                    link rel="stylesheet" href="/style.css";
                }
                body {
                    header {
                        nav aria-label="Main" {
                            strong { "Ferry" } " "
                            a href="/plan" { "Recommended orders" } " "
                            a href="/releases" { "Released orders" }
                        }
                        div.who {
                            span #tenant { "Tenant " b { (s.tenant) } } " · "
                            span #policy { "Release policy: " b { (policy) } } " · "
                            span { (s.email) } " "
                            form.inline method="post" action="/logout" {
                                input type="hidden" name="csrf" value=(s.csrf);
                                button type="submit" { "Log out" }
                            }
                        }
                    }
                    main { h1 { (title) } (content) }
                }
            }
        }
        .into_string(),
    )
}

fn bare_page(title: &str, content: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Ferry" }
                link rel="stylesheet" href="/style.css";
            }
            body { main.narrow { h1 { (title) } (content) } }
        }
    }
}

fn session_cookie(id: &str, max_age: u64) -> HeaderValue {
    cookie_header(SESSION_COOKIE, id, "/", max_age)
}

// ------------------------------------------------------------------------------------------------------------
// Login, logout, set password

#[derive(serde::Deserialize)]
struct NextQuery {
    #[serde(default)]
    error: Option<String>,
}

async fn login_page(axum::extract::Query(q): axum::extract::Query<NextQuery>) -> Response {
    let token = users::random_token();
    login_form(&token, q.error.as_deref().map(|_| "Wrong email or password."), StatusCode::OK)
}

fn login_form(token: &str, error: Option<&str>, status: StatusCode) -> Response {
    let body = bare_page(
        "Log in",
        html! {
            @if let Some(e) = error { p.error #login-error role="alert" { (e) } }
            form method="post" action="/login" {
                input type="hidden" name="csrf" value=(token);
                p { label for="email" { "Email" } br; input #email type="email" name="email" autocomplete="username" required; }
                p { label for="password" { "Password" } br; input #password type="password" name="password" autocomplete="current-password" required; }
                p { button #login type="submit" { "Log in" } }
            }
        },
    );
    let mut resp = (status, Html(body.into_string())).into_response();
    resp.headers_mut().append(header::SET_COOKIE, cookie_header(LOGIN_COOKIE, token, "/login", 3600));
    resp
}

async fn login(
    State(st): St,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let form = Form::parse(&body);
    let pre = cookie(&headers, LOGIN_COOKIE);
    if !matches!((pre.as_deref(), form.get("csrf")), (Some(a), Some(b)) if ct_eq(a, b)) {
        return refusal(
            StatusCode::FORBIDDEN,
            "The login form is out of date (CSRF check). Reload the page and try again.",
        );
    }
    let email = form.get("email").unwrap_or_default().trim().to_lowercase();
    let password = form.get("password").unwrap_or_default();
    if let Err(wait) = st.limiter.check(&email, peer.ip()) {
        return refusal(
            StatusCode::TOO_MANY_REQUESTS,
            &format!("Too many failed logins. Wait {} minutes and try again.", wait.as_secs().div_ceil(60)),
        );
    }
    match st.users.login(&email, password).await {
        Ok(Some((id, s))) => {
            st.limiter.succeeded(&email);
            tracing::info!(tenant = %s.tenant, user = %s.email, "web login");
            let mut resp = Redirect::to("/plan").into_response();
            resp.headers_mut().append(header::SET_COOKIE, session_cookie(&id, users::SESSION_VALID.as_secs()));
            resp
        }
        Ok(None) => {
            st.limiter.failed(&email, peer.ip());
            tracing::info!(user = %email.chars().take(64).collect::<String>(), %peer, "web login refused");
            login_form(&users::random_token(), Some("Wrong email or password."), StatusCode::UNAUTHORIZED)
        }
        Err(e) => internal(&e),
    }
}

async fn logout(State(st): St, Auth(s): Auth, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    if let Err(r) = Form::parse(&body).check_csrf(&s) {
        return r;
    }
    if let Some(id) = cookie(&headers, SESSION_COOKIE)
        && let Err(e) = st.users.logout(&id).await
    {
        return internal(&e);
    }
    let mut resp = Redirect::to("/login").into_response();
    resp.headers_mut().append(header::SET_COOKIE, session_cookie("", 0));
    resp
}

#[derive(serde::Deserialize)]
struct TokenQuery {
    #[serde(default)]
    token: String,
}

async fn set_password_page(State(st): St, axum::extract::Query(q): axum::extract::Query<TokenQuery>) -> Response {
    match st.users.token_email(&q.token).await {
        Ok(Some(email)) => set_password_form(&q.token, &email, None, StatusCode::OK),
        Ok(None) => refusal(
            StatusCode::NOT_FOUND,
            "This link is unknown, used or expired. Ask your administrator for a new one (ferry app user add).",
        ),
        Err(e) => internal(&e),
    }
}

fn set_password_form(token: &str, email: &str, error: Option<&str>, status: StatusCode) -> Response {
    let body = bare_page(
        "Choose a password",
        html! {
            p { "For " b { (email) } ". At least " (users::MIN_PASSWORD_CHARS) " characters." }
            @if let Some(e) = error { p.error role="alert" { (e) } }
            form method="post" action="/set-password" {
                input type="hidden" name="token" value=(token);
                p { label for="password" { "New password" } br; input #password type="password" name="password" autocomplete="new-password" required minlength=(users::MIN_PASSWORD_CHARS); }
                p { label for="confirm" { "Repeat it" } br; input #confirm type="password" name="confirm" autocomplete="new-password" required; }
                p { button #set type="submit" { "Set password" } }
            }
        },
    );
    (status, Html(body.into_string())).into_response()
}

/// The token itself is the proof (256 random bits only the user got): no session, no CSRF token needed.
async fn set_password(State(st): St, body: axum::body::Bytes) -> Response {
    let form = Form::parse(&body);
    let token = form.get("token").unwrap_or_default();
    let password = form.get("password").unwrap_or_default();
    let email = match st.users.token_email(token).await {
        Ok(Some(e)) => e,
        Ok(None) => return refusal(StatusCode::NOT_FOUND, "This link is unknown, used or expired."),
        Err(e) => return internal(&e),
    };
    let problem = ferry_web::page::new_password_problem(password, form.get("confirm"));
    if let Some(p) = problem {
        return set_password_form(token, &email, Some(&p), StatusCode::UNPROCESSABLE_ENTITY);
    }
    match st.users.set_password(token, password).await {
        Ok(true) => {
            tracing::info!(user = %email, "web password set");
            Redirect::to("/login").into_response()
        }
        Ok(false) => refusal(StatusCode::NOT_FOUND, "This link is unknown, used or expired."),
        Err(e) => internal(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_cookies_are_secure_and_csrf_is_checked() {
        let c = session_cookie("abc", 60);
        let c = c.to_str().unwrap();
        assert!(c.starts_with("ferry_session=abc;") && c.contains("HttpOnly; Secure; SameSite=Strict"), "{c}");
        let s = Session { email: "a@b.c".into(), tenant: "acme".into(), csrf: "x".repeat(64) };
        assert!(Form::parse(format!("csrf={}", "x".repeat(64)).as_bytes()).check_csrf(&s).is_ok());
        assert!(Form::parse(b"csrf=y").check_csrf(&s).is_err());
    }
}
