//! Every failure of the API as one type, answered as `{code, message}` (the
//! shape ingest uses) with the status that fits it.

use std::time::Duration;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Missing, malformed, expired or wrongly signed token.
    #[error("{0}")]
    Unauthorized(String),
    /// A valid token that may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// A parameter the API refuses; the message says which and why.
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("too many requests for this token: retry in {}s", .0.as_secs().max(1))]
    RateLimited(Duration),
    #[error(
        "the query ran past its time limit (query.query_timeout_ms): narrow the range or use a larger step"
    )]
    Timeout,
    /// ClickHouse stopped the query at a configured limit (rows or memory).
    #[error(
        "the query needs more than one request may use ({0}): narrow the range, filter, or use a larger step"
    )]
    TooLarge(&'static str),
    #[error("ClickHouse is unavailable: {0}")]
    Unavailable(String),
    #[error("the lake is unavailable: {0}")]
    LakeUnavailable(String),
}

impl ApiError {
    pub fn bad(message: impl Into<String>) -> Self {
        Self::BadRequest(message.into())
    }

    fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Self::TooLarge(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unavailable(_) | Self::LakeUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Self::Unauthorized(_) => "invalid_token",
            Self::Forbidden(_) => "forbidden",
            Self::BadRequest(_) => "invalid_parameter",
            Self::NotFound(_) => "not_found",
            Self::RateLimited(_) => "rate_limited",
            Self::Timeout => "timeout",
            Self::TooLarge(_) => "query_too_large",
            Self::Unavailable(_) | Self::LakeUnavailable(_) => "unavailable",
        }
    }
}

impl From<clickhouse::error::Error> for ApiError {
    fn from(e: clickhouse::error::Error) -> Self {
        let text = e.to_string();
        // Code 159: TIMEOUT_EXCEEDED (max_execution_time).
        if text.contains("Code: 159") {
            return Self::Timeout;
        }
        // 396 TOO_MANY_ROWS_OR_BYTES (max_result_rows), 241
        // MEMORY_LIMIT_EXCEEDED (max_memory_usage).
        if text.contains("Code: 396") {
            return Self::TooLarge("query.max_result_rows");
        }
        if text.contains("Code: 241") {
            return Self::TooLarge("query.max_memory_bytes");
        }
        tracing::error!(error = %text, "ClickHouse query failed");
        // The server's message can quote the query: never echo it.
        Self::Unavailable("the query failed; see the service's log".into())
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// Machine-readable reason.
    pub code: String,
    /// What was wrong and what would be accepted.
    pub message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        crate::metrics::error(self.code());
        let body = ErrorBody {
            code: self.code().into(),
            message: self.to_string(),
        };
        let mut response = (status, Json(body)).into_response();
        let headers = response.headers_mut();
        match &self {
            Self::RateLimited(wait) => {
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                headers.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
            }
            Self::Unavailable(_) | Self::LakeUnavailable(_) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(5));
            }
            Self::Unauthorized(_) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer error=\"invalid_token\""),
                );
            }
            _ => {}
        }
        response
    }
}
