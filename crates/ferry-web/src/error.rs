//! One error type for every web-service answer: the client gets a clear, safe message; internal details go to
//! the server log only (never another tenant's name, a path or a secret).

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ferry_proto::api::ErrorBody;

#[derive(Debug)]
pub enum ApiError {
    Unauthorized(String),
    Forbidden(String),
    BadRequest(String),
    NotFound(String),
    Conflict(String),
    Unprocessable(String),
    /// The request took longer than the server allows (408).
    Timeout(String),
    /// The body is larger than the route accepts (413).
    TooLarge(String),
    /// The caller must slow down (429).
    TooManyRequests(String),
    Internal(anyhow::Error),
}

impl ApiError {
    pub fn internal(e: impl Into<anyhow::Error>) -> Self {
        ApiError::Internal(e.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (code, msg) = match self {
            ApiError::Unauthorized(m) => (StatusCode::UNAUTHORIZED, m),
            ApiError::Forbidden(m) => (StatusCode::FORBIDDEN, m),
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, m),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, m),
            ApiError::Unprocessable(m) => (StatusCode::UNPROCESSABLE_ENTITY, m),
            ApiError::Timeout(m) => (StatusCode::REQUEST_TIMEOUT, m),
            ApiError::TooLarge(m) => (StatusCode::PAYLOAD_TOO_LARGE, m),
            ApiError::TooManyRequests(m) => (StatusCode::TOO_MANY_REQUESTS, m),
            ApiError::Internal(e) => {
                tracing::error!("internal error: {e:#}");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error on the server; retry later (the operator can find details in the server log)"
                        .into(),
                )
            }
        };
        // Refused authentications and throttled callers are audited and logged coalesced by their caller
        // (per source address); one line each here would let an unauthenticated flood grow the log.
        if code == StatusCode::UNAUTHORIZED || code == StatusCode::TOO_MANY_REQUESTS {
            tracing::debug!(status = code.as_u16(), "refused: {msg}");
        } else if code.is_client_error() {
            tracing::info!(status = code.as_u16(), "refused: {msg}");
        }
        (code, Json(ErrorBody { error: msg })).into_response()
    }
}

/// axum's rejection of a JSON body as our [`ApiError`]: 413 for a body over the limit, 415 (as 400) for a
/// missing content type, 400/422 for a body that is not the expected JSON, each with what to fix.
pub fn json_rejection(e: axum::extract::rejection::JsonRejection) -> ApiError {
    use axum::extract::rejection::JsonRejection;
    match e {
        JsonRejection::JsonDataError(e) => {
            ApiError::Unprocessable(format!("the JSON body does not have the expected fields: {}", e.body_text()))
        }
        JsonRejection::JsonSyntaxError(e) => {
            ApiError::BadRequest(format!("the body is not valid JSON: {}", e.body_text()))
        }
        JsonRejection::MissingJsonContentType(_) => {
            ApiError::BadRequest("send the body as JSON with `Content-Type: application/json`".into())
        }
        JsonRejection::BytesRejection(e) => from_status(e.status(), e.body_text()),
        other => from_status(other.status(), other.body_text()),
    }
}

/// An error answer of axum or a layer (status + plain text) in our shape.
fn from_status(status: StatusCode, text: String) -> ApiError {
    match status {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge(format!(
            "the request body is larger than this route accepts ({text}); send a smaller body"
        )),
        StatusCode::REQUEST_TIMEOUT => ApiError::Timeout(text),
        StatusCode::UNPROCESSABLE_ENTITY => ApiError::Unprocessable(text),
        s if s.is_server_error() => ApiError::Internal(anyhow::anyhow!("{s}: {text}")),
        _ => ApiError::BadRequest(text),
    }
}

/// Every error answer of `router` in the one JSON shape (`{"error": "..."}`): answers that axum or a layer
/// writes as plain text or with no body (a body over the size limit, a JSON rejection, an unknown route or
/// method) are rewritten; our own [`ApiError`] answers are JSON already and pass unchanged.
pub fn json_errors(router: axum::Router) -> axum::Router {
    router.layer(axum::middleware::map_response(to_json_error))
}

async fn to_json_error(resp: Response) -> Response {
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let is_json = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    // axum's own texts are short; anything longer is cut (it is a message for a person).
    let text = match axum::body::to_bytes(body, 4096).await {
        Ok(b) => String::from_utf8_lossy(&b).trim().to_string(),
        Err(_) => String::new(),
    };
    let msg = if !text.is_empty() {
        text
    } else {
        match status {
            StatusCode::NOT_FOUND => "no such route; see /openapi.json for the routes".to_string(),
            StatusCode::METHOD_NOT_ALLOWED => "this route does not take that method".to_string(),
            s => s.canonical_reason().unwrap_or("refused").to_string(),
        }
    };
    let msg = match status {
        StatusCode::PAYLOAD_TOO_LARGE => {
            format!("the request body is larger than this route accepts ({msg}); send a smaller body")
        }
        _ => msg,
    };
    let mut out = (status, Json(ErrorBody { error: msg })).into_response();
    for (k, v) in parts.headers.iter() {
        if k != axum::http::header::CONTENT_TYPE && k != axum::http::header::CONTENT_LENGTH {
            out.headers_mut().insert(k.clone(), v.clone());
        }
    }
    out
}
