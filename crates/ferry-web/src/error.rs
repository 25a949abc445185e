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
            ApiError::Internal(e) => {
                tracing::error!("internal error: {e:#}");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error on the server; retry later (the operator can find details in the server log)"
                        .into(),
                )
            }
        };
        if code.is_client_error() {
            tracing::info!(status = code.as_u16(), "refused: {msg}");
        }
        (code, Json(ErrorBody { error: msg })).into_response()
    }
}
