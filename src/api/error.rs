//! Every error the API answers: JSON `{"error": "<message>"}` with the status its
//! kind calls for.
//!
//! Invariant: a message says what was wrong with the request, or that Redis is
//! unreachable; it never carries an internal error's text (a Redis reply, a
//! file path, a chain of causes), which goes to the server's log instead.

use crate::admin::AdminError;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }
}

impl From<AdminError> for ApiError {
    fn from(e: AdminError) -> Self {
        match e {
            AdminError::Invalid(m) => ApiError::bad_request(m),
            AdminError::NotFound(m) => ApiError::not_found(m),
            AdminError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, m),
            AdminError::Store(e) => {
                tracing::warn!(error = %crate::telemetry::error_chain(&e), "an API request could not reach Redis");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Redis is unreachable; try again shortly",
                )
            }
        }
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        AdminError::Store(e).into()
    }
}

impl From<deadpool_redis::redis::RedisError> for ApiError {
    fn from(e: deadpool_redis::redis::RedisError) -> Self {
        AdminError::from(e).into()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.message });
        (self.status, axum::Json(body)).into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
