//! The operator console: server-rendered HTML (maud, no JavaScript) at `/console/` on the admin listener
//! (HTTPS, loopback by default), next to the admin API. Tenants with their state, App server, Connector
//! version, last contact, last batch (state, age, size, per-stage timings, rejection reason) and bytes today
//! against the quota; a tenant's keys, limits, batches and downstream files; the audit log with the chain's
//! verification. Actions (add a tenant, a new token, disable/enable, revoke a key, set limits) call the same
//! [`crate::admin::Admin`] operations as the CLI and the admin API, so they write the same audit entries (actor
//! `console (<who>) from <address>`).
//!
//! - **Who**: the admin token (`<data_dir>/admin.token`) or an operator account ([`operators`]; `ferry comms
//!   operator add EMAIL` prints a one-time set-password link). Login opens a server-side session (random id in
//!   an `HttpOnly; Secure; SameSite=Strict` cookie on `/console`, stored hashed). Logins are audited; failed ones
//!   as `auth_failed` (coalesced per address) and limited per account and address.
//! - **CSRF**: every POST carries the session's synchronizer token; the login form a double-submit token.
//! - Shares its session, form, password and header rules with the buyer's page: [`ferry_web::page`].

pub mod operators;
mod pages;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use ferry_web::page::{Form, LoginLimiter, cookie, cookie_header, ct_eq, random_token, sha256_hex};
use maud::{DOCTYPE, Markup, html};
use operators::Session;

use crate::CommsState;

const SESSION_COOKIE: &str = "ferry_console";
const LOGIN_COOKIE: &str = "ferry_console_login";
/// Largest form body accepted.
const MAX_FORM: usize = 64 * 1024;

pub struct ConsoleState {
    pub st: Arc<CommsState>,
    /// SHA-256 (hex) of the admin token.
    token_hash: String,
    limiter: LoginLimiter,
}

type St = State<Arc<ConsoleState>>;

/// The console's routes (all under `/console`), for the admin listener.
pub fn router(st: Arc<CommsState>, admin_token: &str) -> Router {
    let state =
        Arc::new(ConsoleState { st, token_hash: sha256_hex(admin_token.trim()), limiter: LoginLimiter::default() });
    let routes = Router::new()
        .route("/console", get(|| async { Redirect::to("/console/tenants") }))
        .route("/console/", get(|| async { Redirect::to("/console/tenants") }))
        .route("/console/style.css", get(style))
        .route("/console/login", get(login_page).post(login))
        .route("/console/logout", post(logout))
        .route("/console/set-password", get(set_password_page).post(set_password))
        .route("/console/tenants", get(pages::tenants).post(pages::add_tenant))
        .route("/console/tenants/{name}", get(pages::tenant))
        .route("/console/tenants/{name}/token", post(pages::new_token))
        .route("/console/tenants/{name}/disable", post(pages::disable))
        .route("/console/tenants/{name}/enable", post(pages::enable))
        .route("/console/tenants/{name}/keys/revoke", post(pages::revoke_key))
        .route("/console/tenants/{name}/limits", post(pages::set_limits))
        .route("/console/audit", get(pages::audit))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_FORM))
        .layer(axum::middleware::from_fn(ferry_web::page::security_headers))
        .with_state(state);
    ferry_web::serve::with_request_timeout(routes, Duration::from_secs(60))
}

async fn style() -> Response {
    ferry_web::page::stylesheet(include_str!("style.css"))
}

// ------------------------------------------------------------------------------------------------------------
// Sessions

/// A logged-in request. Without a session, a GET is sent to the login page and anything else is refused (401).
pub struct Auth(pub Session);

impl FromRequestParts<Arc<ConsoleState>> for Auth {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, st: &Arc<ConsoleState>) -> Result<Self, Self::Rejection> {
        let session = match cookie(&parts.headers, SESSION_COOKIE) {
            Some(id) => operators::session(&st.st.db, &id).await.map_err(|e| internal(&e))?,
            None => None,
        };
        match session {
            Some(s) => Ok(Auth(s)),
            None if parts.method == axum::http::Method::GET => Err(Redirect::to("/console/login").into_response()),
            None => Err(refusal(StatusCode::UNAUTHORIZED, "Your session has ended. Log in again.")),
        }
    }
}

/// The caller's address, if the listener recorded it.
pub struct Peer(pub Option<SocketAddr>);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Peer(parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0)))
    }
}

/// Refuse (403) unless the form carries the session's CSRF token.
#[allow(clippy::result_large_err)]
fn check_csrf(form: &Form, s: &Session) -> Result<(), Response> {
    if form.csrf_is(&s.csrf) {
        Ok(())
    } else {
        Err(refusal(
            StatusCode::FORBIDDEN,
            "This form is out of date or did not come from this console (CSRF check). Go back, reload and try again.",
        ))
    }
}

fn internal(e: &dyn std::fmt::Display) -> Response {
    tracing::error!("console: {e}");
    refusal(StatusCode::INTERNAL_SERVER_ERROR, "Something went wrong on the server; the error was logged. Try again.")
}

/// A plain error page with `status`.
fn refusal(status: StatusCode, message: &str) -> Response {
    let body = bare_page(
        status.canonical_reason().unwrap_or("Error"),
        html! { p.error #refusal role="alert" { (message) } p { a href="/console/tenants" { "Back to the tenants" } } },
    );
    (status, Html(body.into_string())).into_response()
}

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · Ferry console" }
            link rel="stylesheet" href="/console/style.css";
        }
    }
}

/// The frame of a logged-in page: header (navigation, who, logout) and `content`.
fn page(s: &Session, title: &str, content: Markup) -> Html<String> {
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                (head(title))
                body {
                    header {
                        nav aria-label="Main" {
                            strong { "Ferry console" } " "
                            a href="/console/tenants" { "Tenants" } " "
                            a href="/console/audit" { "Audit log" }
                        }
                        div.who {
                            span #who { (s.who) } " "
                            form.inline method="post" action="/console/logout" {
                                input type="hidden" name="csrf" value=(s.csrf);
                                button #logout type="submit" { "Log out" }
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
            (head(title))
            body { main.narrow { h1 { (title) } (content) } }
        }
    }
}

// ------------------------------------------------------------------------------------------------------------
// Login, logout, set password

#[derive(serde::Deserialize)]
struct LoginQuery {
    #[serde(default)]
    error: Option<String>,
}

async fn login_page(Query(q): Query<LoginQuery>) -> Response {
    login_form(q.error.as_deref().map(|_| "Wrong admin token, email or password."), StatusCode::OK)
}

fn login_form(error: Option<&str>, status: StatusCode) -> Response {
    let token = random_token();
    let body = bare_page(
        "Operator console",
        html! {
            @if let Some(e) = error { p.error #login-error role="alert" { (e) } }
            form method="post" action="/console/login" {
                input type="hidden" name="csrf" value=(token);
                p {
                    label for="token" { "Admin token" } br;
                    input #token type="password" name="token" autocomplete="off" required;
                }
                p.hint { "From admin.token in the server's data directory." }
                p { button #login-token type="submit" { "Log in with the token" } }
            }
            h2 { "Or as an operator" }
            form method="post" action="/console/login" {
                input type="hidden" name="csrf" value=(token);
                p { label for="email" { "Email" } br; input #email type="email" name="email" autocomplete="username" required; }
                p {
                    label for="password" { "Password" } br;
                    input #password type="password" name="password" autocomplete="current-password" required;
                }
                p { button #login type="submit" { "Log in" } }
            }
        },
    );
    let mut resp = (status, Html(body.into_string())).into_response();
    resp.headers_mut().append(header::SET_COOKIE, cookie_header(LOGIN_COOKIE, &token, "/console/login", 3600));
    resp
}

async fn login(
    State(c): St,
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
    let by_token = form.get("token").is_some();
    let account = if by_token {
        operators::ADMIN_TOKEN.to_string()
    } else {
        form.get("email").unwrap_or_default().trim().to_lowercase().chars().take(254).collect()
    };
    if let Err(wait) = c.limiter.check(&account, peer.ip()) {
        return refusal(
            StatusCode::TOO_MANY_REQUESTS,
            &format!("Too many failed logins. Wait {} minutes and try again.", wait.as_secs().div_ceil(60)),
        );
    }
    let who = if by_token {
        // digests of equal length, compared in constant time
        let presented = sha256_hex(form.get("token").unwrap_or_default().trim());
        ct_eq(&presented, &c.token_hash).then(|| operators::ADMIN_TOKEN.to_string())
    } else {
        match operators::check_password(&c.st.db, &account, form.get("password").unwrap_or_default()).await {
            Ok(w) => w,
            Err(e) => return internal(&e),
        }
    };
    let Some(who) = who else {
        c.limiter.failed(&account, peer.ip());
        let what = if by_token { "wrong admin token".to_string() } else { format!("wrong password for {account:?}") };
        c.st.auth_failed(Some(peer), crate::metrics::Refusal::AdminToken, &format!("console login: {what}"));
        return login_form(Some("Wrong admin token, email or password."), StatusCode::UNAUTHORIZED);
    };
    c.limiter.succeeded(&account);
    let (id, _) = match operators::open_session(&c.st.db, &who).await {
        Ok(s) => s,
        Err(e) => return internal(&e),
    };
    crate::db::audit(&c.st.db, None, "console_login", &format!("{who} from {peer}")).await;
    tracing::info!(%who, %peer, "console login");
    let mut resp = Redirect::to("/console/tenants").into_response();
    resp.headers_mut()
        .append(header::SET_COOKIE, cookie_header(SESSION_COOKIE, &id, "/console", operators::SESSION_VALID.as_secs()));
    resp
}

async fn logout(State(c): St, Auth(s): Auth, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    if let Err(r) = check_csrf(&Form::parse(&body), &s) {
        return r;
    }
    if let Some(id) = cookie(&headers, SESSION_COOKIE)
        && let Err(e) = operators::logout(&c.st.db, &id).await
    {
        return internal(&e);
    }
    let mut resp = Redirect::to("/console/login").into_response();
    resp.headers_mut().append(header::SET_COOKIE, cookie_header(SESSION_COOKIE, "", "/console", 0));
    resp
}

#[derive(serde::Deserialize)]
struct TokenQuery {
    #[serde(default)]
    token: String,
}

async fn set_password_page(State(c): St, Query(q): Query<TokenQuery>) -> Response {
    match operators::token_email(&c.st.db, &q.token).await {
        Ok(Some(email)) => set_password_form(&q.token, &email, None, StatusCode::OK),
        Ok(None) => refusal(
            StatusCode::NOT_FOUND,
            "This link is unknown, used or expired. Ask for a new one (ferry comms operator add EMAIL).",
        ),
        Err(e) => internal(&e),
    }
}

fn set_password_form(token: &str, email: &str, error: Option<&str>, status: StatusCode) -> Response {
    let body = bare_page(
        "Choose a password",
        html! {
            p { "Operator " b { (email) } ". At least " (ferry_web::page::MIN_PASSWORD_CHARS) " characters." }
            @if let Some(e) = error { p.error role="alert" { (e) } }
            form method="post" action="/console/set-password" {
                input type="hidden" name="token" value=(token);
                p {
                    label for="password" { "New password" } br;
                    input #password type="password" name="password" autocomplete="new-password" required
                        minlength=(ferry_web::page::MIN_PASSWORD_CHARS);
                }
                p { label for="confirm" { "Repeat it" } br; input #confirm type="password" name="confirm" autocomplete="new-password" required; }
                p { button #set type="submit" { "Set password" } }
            }
        },
    );
    (status, Html(body.into_string())).into_response()
}

/// The token itself is the proof (256 random bits only the operator got): no session, no CSRF token needed.
async fn set_password(State(c): St, body: axum::body::Bytes) -> Response {
    let form = Form::parse(&body);
    let token = form.get("token").unwrap_or_default();
    let password = form.get("password").unwrap_or_default();
    let email = match operators::token_email(&c.st.db, token).await {
        Ok(Some(e)) => e,
        Ok(None) => return refusal(StatusCode::NOT_FOUND, "This link is unknown, used or expired."),
        Err(e) => return internal(&e),
    };
    if let Some(p) = ferry_web::page::new_password_problem(password, form.get("confirm")) {
        return set_password_form(token, &email, Some(&p), StatusCode::UNPROCESSABLE_ENTITY);
    }
    match operators::set_password(&c.st.db, token, password).await {
        Ok(true) => {
            crate::db::audit(&c.st.db, None, "operator_password_set", &email).await;
            Redirect::to("/console/login").into_response()
        }
        Ok(false) => refusal(StatusCode::NOT_FOUND, "This link is unknown, used or expired."),
        Err(e) => internal(&e),
    }
}
