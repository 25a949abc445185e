//! The admin API: the operator actions of [`crate::admin::Admin`] over HTTPS on their own listener
//! (`listen_admin`, loopback by default), never on the public port. Every request carries
//! `Authorization: Bearer <token>` with the token of `<data_dir>/admin.token`, compared in constant time; a
//! missing or wrong token is answered 401 and audited (`auth_failed`, coalesced per address). Every action is
//! audited with the caller's address, and changes to access take effect in this server at once.
//!
//! Routes (all under `/admin/v1`): `GET tenants`, `POST tenants` `{"name", "app"?}` (answer `{tenant, app, token}`), `POST tenants/{t}/token`,
//! `POST tenants/{t}/disable|enable`, `GET tenants/{t}/keys`, `POST tenants/{t}/keys/revoke`
//! `{"fingerprint"}`, `GET|PUT tenants/{t}/limits` (`{"max_batch_files": 10, "upload_bytes_per_day": null}`;
//! null = back to the default), `GET sessions`, `GET audit?limit=N`, `GET audit/verify`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ferry_web::ApiError;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::admin::Admin;
use crate::limits::Limit;
use crate::{CommsState, db};

#[derive(Clone)]
struct AdminState {
    st: Arc<CommsState>,
    token_hash: [u8; 32],
}

type St = State<AdminState>;

pub fn router(st: Arc<CommsState>, token: String) -> Router {
    let state = AdminState { st, token_hash: Sha256::digest(token.as_bytes()).into() };
    let api = Router::new()
        .route("/admin/v1/tenants", get(list_tenants).post(add_tenant))
        .route("/admin/v1/tenants/{name}/token", post(new_token))
        .route("/admin/v1/tenants/{name}/disable", post(disable))
        .route("/admin/v1/tenants/{name}/enable", post(enable))
        .route("/admin/v1/tenants/{name}/keys", get(keys))
        .route("/admin/v1/tenants/{name}/keys/revoke", post(revoke_key))
        .route("/admin/v1/tenants/{name}/limits", get(get_limits).put(set_limits))
        .route("/admin/v1/sessions", get(sessions))
        .route("/admin/v1/audit", get(audit))
        .route("/admin/v1/audit/verify", get(audit_verify))
        .route("/metrics", get(metrics))
        .layer(axum::middleware::from_fn_with_state(state.clone(), require_token))
        .with_state(state);
    // the description of the API needs no token
    let api = Router::new().route("/admin/v1/openapi.json", get(openapi)).merge(api);
    ferry_web::error::json_errors(ferry_web::serve::with_request_timeout(api, std::time::Duration::from_secs(120)))
}

/// Equal contents, in time that depends only on the (fixed) digest length.
fn same_digest(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn peer_of(req: &Request) -> Option<SocketAddr> {
    req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0)
}

async fn require_token(State(a): St, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| Sha256::digest(t.trim().as_bytes()).into());
    let ok = presented.is_some_and(|h: [u8; 32]| same_digest(&h, &a.token_hash));
    if !ok {
        let peer = peer_of(&req);
        a.st.auth_failed(
            peer,
            crate::metrics::Refusal::AdminToken,
            &format!("admin api: missing or wrong token for {} {}", req.method(), req.uri().path()),
        );
        return ApiError::Unauthorized(
            "missing or wrong admin token: send `Authorization: Bearer <token>` with the token from admin.token in \
             the server's data directory"
                .into(),
        )
        .into_response();
    }
    next.run(req).await
}

/// The caller's address, if the listener recorded it.
struct Peer(Option<SocketAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Peer(parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0)))
    }
}

fn admin(a: &AdminState, peer: Peer) -> Admin {
    let from = peer.0.map(|p| p.to_string()).unwrap_or_else(|| "?".into());
    Admin {
        cfg: a.st.cfg.clone(),
        db: a.st.db.clone(),
        identity: a.st.identity.clone(),
        actor: format!("admin api from {from}"),
    }
}

/// Operator mistakes (unknown tenant, bad name) are 4xx with the operation's own message.
fn refused(e: anyhow::Error) -> ApiError {
    let msg = format!("{e:#}");
    if msg.starts_with("no tenant") { ApiError::NotFound(msg) } else { ApiError::BadRequest(msg) }
}

async fn list_tenants(State(a): St) -> Result<Json<Vec<db::TenantRow>>, ApiError> {
    Ok(Json(db::list_tenants(&a.st.db).await.map_err(ApiError::internal)?))
}

#[derive(Deserialize)]
struct NewTenant {
    name: String,
    /// The App server to place it on (default: the one with the fewest tenants).
    #[serde(default)]
    app: Option<String>,
}

async fn add_tenant(State(a): St, peer: Peer, Json(t): Json<NewTenant>) -> Result<Json<Value>, ApiError> {
    let admin = admin(&a, peer);
    let (app, token) = admin.add_tenant_on(&t.name, t.app.as_deref(), &admin.public_url()).await.map_err(refused)?;
    Ok(Json(json!({ "tenant": t.name, "app": app, "token": token })))
}

async fn new_token(State(a): St, peer: Peer, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    let admin = admin(&a, peer);
    let token = admin.token(&name, &admin.public_url()).await.map_err(refused)?;
    Ok(Json(json!({ "tenant": name, "token": token })))
}

async fn set_enabled(a: AdminState, peer: Peer, name: String, on: bool) -> Result<Json<Value>, ApiError> {
    admin(&a, peer).set_enabled(&name, on).await.map_err(refused)?;
    a.st.refresh_access().await;
    Ok(Json(json!({ "tenant": name, "status": if on { "active" } else { "disabled" } })))
}

async fn disable(State(a): St, peer: Peer, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    set_enabled(a, peer, name, false).await
}

async fn enable(State(a): St, peer: Peer, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    set_enabled(a, peer, name, true).await
}

async fn keys(State(a): St, Path(name): Path<String>) -> Result<Json<Vec<Value>>, ApiError> {
    let rows = db::tenant_keys(&a.st.db, &name).await.map_err(ApiError::internal)?;
    Ok(Json(
        rows.into_iter()
            .map(|(fp, status, created, host)| json!({ "fingerprint": fp, "status": status, "created_at": created, "hostname": host }))
            .collect(),
    ))
}

#[derive(Deserialize)]
struct Revoke {
    fingerprint: String,
}

async fn revoke_key(
    State(a): St,
    peer: Peer,
    Path(name): Path<String>,
    Json(r): Json<Revoke>,
) -> Result<Json<Value>, ApiError> {
    admin(&a, peer).revoke_key(&name, &r.fingerprint).await.map_err(refused)?;
    a.st.refresh_access().await;
    Ok(Json(json!({ "tenant": name, "revoked": r.fingerprint })))
}

async fn get_limits(State(a): St, peer: Peer, Path(name): Path<String>) -> Result<Response, ApiError> {
    Ok(Json(admin(&a, peer).limits(&name).await.map_err(refused)?).into_response())
}

async fn set_limits(
    State(a): St,
    peer: Peer,
    Path(name): Path<String>,
    Json(body): Json<BTreeMap<String, Option<u64>>>,
) -> Result<Response, ApiError> {
    let mut changes = Vec::new();
    for (k, v) in body {
        let limit = Limit::parse(&k).ok_or_else(|| {
            let known: Vec<_> = Limit::ALL.iter().map(|l| l.key()).collect();
            ApiError::BadRequest(format!(
                "unknown limit {:?}; the limits are {}",
                k.chars().take(64).collect::<String>(),
                known.join(", ")
            ))
        })?;
        changes.push((limit, v));
    }
    let view = admin(&a, peer).set_limits(&name, &changes).await.map_err(refused)?;
    a.st.refresh_access().await;
    Ok(Json(view).into_response())
}

async fn sessions(State(a): St) -> Json<Vec<Value>> {
    Json(
        a.st.sessions
            .list()
            .into_iter()
            .map(|s| {
                json!({
                    "tenant": s.principal,
                    "key_fingerprint": s.key_fingerprint,
                    "peer": s.peer.map(|p| p.to_string()),
                    "since": chrono::DateTime::<chrono::Utc>::from(s.since).to_rfc3339(),
                })
            })
            .collect(),
    )
}

#[derive(Deserialize)]
struct AuditQuery {
    limit: Option<i64>,
}

async fn audit(State(a): St, Query(q): Query<AuditQuery>) -> Result<Json<Vec<Value>>, ApiError> {
    let rows = db::recent_audit(&a.st.db, q.limit.unwrap_or(50).clamp(1, 10_000)).await.map_err(ApiError::internal)?;
    Ok(Json(
        rows.into_iter()
            .map(|(id, at, tenant, event, detail)| json!({ "id": id, "at": at, "tenant": tenant, "event": event, "detail": detail }))
            .collect(),
    ))
}

async fn audit_verify(State(a): St) -> Result<Json<Value>, ApiError> {
    Ok(Json(match db::verify_audit(&a.st.db).await.map_err(ApiError::Internal)? {
        Ok(n) => json!({ "intact": true, "entries": n }),
        Err(why) => json!({ "intact": false, "problem": why }),
    }))
}

/// `GET /metrics`: Prometheus exposition text (OpenMetrics).
async fn metrics(State(a): St) -> Result<Response, ApiError> {
    let text = crate::metrics::render(&a.st).await.map_err(ApiError::internal)?;
    Ok(([(axum::http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text)
        .into_response())
}

const OPENAPI: &str = include_str!("admin_openapi.json");

/// `GET /admin/v1/openapi.json`: the OpenAPI 3.1 description of this API.
async fn openapi() -> Json<Value> {
    Json(serde_json::from_str(OPENAPI).unwrap_or_default())
}

#[cfg(test)]
mod openapi_tests {
    #[test]
    fn admin_openapi_describes_every_route_and_is_valid_3_1() {
        crate::api::tests::check_doc(super::OPENAPI, include_str!("admin_api.rs"), &[]);
    }
}
