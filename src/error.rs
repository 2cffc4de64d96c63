//! The one Matrix error type: every failure a handler can return, mapped to the spec's
//! HTTP status and `{"errcode", "error"}` body in exactly one place.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An error the client is meant to see, with its errcode.
    #[error("{errcode}: {message}")]
    Matrix {
        status: StatusCode,
        errcode: &'static str,
        message: String,
        /// Extra top-level fields of the error body (`retry_after_ms`, `soft_logout`...).
        extra: Map<String, Value>,
    },
    /// A user-interactive authentication challenge: 401 with the flows body.
    #[error("user-interactive authentication required")]
    Uia(Value),
    /// Anything else: logged with its detail, answered as a plain 500 `M_UNKNOWN`.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl Error {
    pub fn matrix(status: StatusCode, errcode: &'static str, message: impl Into<String>) -> Self {
        Error::Matrix { status, errcode, message: message.into(), extra: Map::new() }
    }

    pub fn with_field(mut self, key: &str, value: Value) -> Self {
        if let Error::Matrix { extra, .. } = &mut self {
            extra.insert(key.to_owned(), value);
        }
        self
    }

    pub fn errcode(&self) -> &'static str {
        match self {
            Error::Matrix { errcode, .. } => errcode,
            Error::Uia(_) => "M_FORBIDDEN",
            Error::Internal(_) => "M_UNKNOWN",
        }
    }

    pub fn forbidden(msg: impl Into<String>) -> Self {
        Self::matrix(StatusCode::FORBIDDEN, "M_FORBIDDEN", msg)
    }
    pub fn not_found(msg: impl Into<String>) -> Self {
        Self::matrix(StatusCode::NOT_FOUND, "M_NOT_FOUND", msg)
    }
    pub fn bad_json(msg: impl Into<String>) -> Self {
        Self::matrix(StatusCode::BAD_REQUEST, "M_BAD_JSON", msg)
    }
    pub fn not_json(msg: impl Into<String>) -> Self {
        Self::matrix(StatusCode::BAD_REQUEST, "M_NOT_JSON", msg)
    }
    pub fn invalid_param(msg: impl Into<String>) -> Self {
        Self::matrix(StatusCode::BAD_REQUEST, "M_INVALID_PARAM", msg)
    }
    pub fn missing_param(msg: impl Into<String>) -> Self {
        Self::matrix(StatusCode::BAD_REQUEST, "M_MISSING_PARAM", msg)
    }
    pub fn unrecognized() -> Self {
        Self::matrix(StatusCode::NOT_FOUND, "M_UNRECOGNIZED", "Unrecognized request")
    }
    pub fn method_not_allowed() -> Self {
        Self::matrix(StatusCode::METHOD_NOT_ALLOWED, "M_UNRECOGNIZED", "Method not allowed")
    }
    pub fn missing_token() -> Self {
        Self::matrix(StatusCode::UNAUTHORIZED, "M_MISSING_TOKEN", "Missing access token")
    }
    pub fn unknown_token(soft_logout: bool) -> Self {
        Self::matrix(StatusCode::UNAUTHORIZED, "M_UNKNOWN_TOKEN", "Unknown or expired access token")
            .with_field("soft_logout", Value::Bool(soft_logout))
    }
    pub fn too_large(msg: impl Into<String>) -> Self {
        Self::matrix(StatusCode::PAYLOAD_TOO_LARGE, "M_TOO_LARGE", msg)
    }
    pub fn limit_exceeded(retry_after_ms: u64) -> Self {
        Self::matrix(StatusCode::TOO_MANY_REQUESTS, "M_LIMIT_EXCEEDED", "Too many requests")
            .with_field("retry_after_ms", json!(retry_after_ms))
    }
    pub fn user_in_use() -> Self {
        Self::matrix(StatusCode::BAD_REQUEST, "M_USER_IN_USE", "User ID already taken")
    }
    pub fn invalid_username(msg: impl Into<String>) -> Self {
        Self::matrix(StatusCode::BAD_REQUEST, "M_INVALID_USERNAME", msg)
    }
    pub fn user_suspended() -> Self {
        Self::matrix(StatusCode::FORBIDDEN, "M_USER_SUSPENDED", "You cannot perform this action while suspended.")
    }
    pub fn user_locked() -> Self {
        Self::matrix(StatusCode::UNAUTHORIZED, "M_USER_LOCKED", "This account has been locked")
            .with_field("soft_logout", Value::Bool(true))
    }
    pub fn unauthorized(msg: impl Into<String>) -> Self {
        Self::matrix(StatusCode::UNAUTHORIZED, "M_UNAUTHORIZED", msg)
    }
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        Error::Internal(e.into())
    }
}

impl From<sqlx::migrate::MigrateError> for Error {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        Error::Internal(e.into())
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        match self {
            Error::Matrix { status, errcode, message, mut extra } => {
                extra.insert("errcode".into(), Value::String(errcode.into()));
                extra.insert("error".into(), Value::String(message));
                (status, axum::Json(Value::Object(extra))).into_response()
            }
            Error::Uia(body) => (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response(),
            Error::Internal(e) => {
                tracing::error!(error = %format!("{e:#}"), "internal error");
                let body = json!({"errcode": "M_UNKNOWN", "error": "Internal server error"});
                (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(body)).into_response()
            }
        }
    }
}
