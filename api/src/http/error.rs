//! The api's one error type. Client errors carry a stable code and a message
//! a person can act on; anything else is logged with its cause and answered
//! as a bare 500 (or 503 when Postgres is unreachable), never echoed.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use shared::auth::AuthError;
use shared::error::error_response;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Gone(String),
    #[error("{0}")]
    Unprocessable(String),
    #[error("{message}")]
    TooManyRequests {
        message: String,
        retry_after_secs: u64,
    },
    #[error("{0}")]
    ServiceUnavailable(String),
    /// Any other status with its own code, for flows with specific answers.
    #[error("{message}")]
    Status {
        status: StatusCode,
        code: &'static str,
        message: String,
    },
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("rejected request: {message}")]
    Rejection { status: StatusCode, message: String },
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("internal error: {0}")]
    Internal(#[from] anyhow::Error),
}

impl AppError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::BadRequest(message.into())
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        match self {
            AppError::BadRequest(m) => error_response(StatusCode::BAD_REQUEST, "bad_request", m),
            AppError::Unauthorized(m) => {
                error_response(StatusCode::UNAUTHORIZED, "unauthorized", m)
            }
            AppError::Forbidden(m) => error_response(StatusCode::FORBIDDEN, "forbidden", m),
            AppError::NotFound(what) => error_response(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("{what} not found"),
            ),
            AppError::Conflict(m) => error_response(StatusCode::CONFLICT, "conflict", m),
            AppError::Gone(m) => error_response(StatusCode::GONE, "gone", m),
            AppError::Unprocessable(m) => {
                error_response(StatusCode::UNPROCESSABLE_ENTITY, "unprocessable", m)
            }
            AppError::TooManyRequests {
                message,
                retry_after_secs,
            } => {
                let mut response =
                    error_response(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message);
                response.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(retry_after_secs.max(1)),
                );
                response
            }
            AppError::ServiceUnavailable(m) => {
                error_response(StatusCode::SERVICE_UNAVAILABLE, "unavailable", m)
            }
            AppError::Status {
                status,
                code,
                message,
            } => error_response(status, code, message),
            AppError::Auth(err) => err.into_response(),
            AppError::Rejection { status, message } => {
                let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
                    "payload_too_large"
                } else if status == StatusCode::UNSUPPORTED_MEDIA_TYPE {
                    "unsupported_media_type"
                } else {
                    "bad_request"
                };
                error_response(status, code, message)
            }
            AppError::Database(err) => {
                if is_statement_timeout(&err) {
                    // Only the client reads run under a statement_timeout:
                    // the same read would run out of time again.
                    tracing::warn!(error = %err, "read cancelled by statement_timeout");
                    error_response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "read_timeout",
                        "the read took longer than CLIENT_READ_STATEMENT_TIMEOUT allows; \
                         narrow the time range or the filters",
                    )
                } else if matches!(err, sqlx::Error::PoolTimedOut | sqlx::Error::Io(_)) {
                    tracing::error!(error = %err, "database unavailable");
                    error_response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "unavailable",
                        "database unavailable, try again",
                    )
                } else {
                    tracing::error!(error = %err, "database error");
                    error_response(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "internal",
                        "internal error",
                    )
                }
            }
            AppError::Internal(err) => {
                tracing::error!(error = %err, "internal error");
                error_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error",
                )
            }
        }
    }
}

/// Postgres cancelled the statement (SQLSTATE 57014, `query_canceled`).
fn is_statement_timeout(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.code().as_deref() == Some("57014"))
}

/// Extractor rejections keep their status (413, 415) except that a body or
/// query that does not fit the expected type is a 400 naming the field.
fn rejection(status: StatusCode, message: String) -> AppError {
    let status = if status == StatusCode::UNPROCESSABLE_ENTITY {
        StatusCode::BAD_REQUEST
    } else {
        status
    };
    AppError::Rejection { status, message }
}

impl From<JsonRejection> for AppError {
    fn from(r: JsonRejection) -> Self {
        rejection(r.status(), r.body_text())
    }
}

impl From<QueryRejection> for AppError {
    fn from(r: QueryRejection) -> Self {
        rejection(StatusCode::BAD_REQUEST, r.body_text())
    }
}

impl From<PathRejection> for AppError {
    fn from(r: PathRejection) -> Self {
        rejection(StatusCode::BAD_REQUEST, r.body_text())
    }
}

pub type AppResult<T> = Result<T, AppError>;
