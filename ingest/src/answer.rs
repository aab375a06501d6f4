//! What the API answers: the batch report and every error, as JSON with a
//! status that tells the client whether to retry.

use std::time::Duration;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::body::BodyError;
use crate::quota::QuotaExceeded;

/// One event the batch could not take, by its index in the batch.
#[derive(Debug, Serialize)]
pub struct Rejected {
    pub index: usize,
    pub code: &'static str,
    pub reason: String,
}

/// 200 when at least one event was accepted (or the batch was empty), 400
/// when every event was refused: a client never mistakes "nothing stored"
/// for success.
#[derive(Debug, Serialize)]
pub struct BatchReport {
    pub accepted: usize,
    pub rejected: Vec<Rejected>,
}

impl IntoResponse for BatchReport {
    fn into_response(self) -> Response {
        let status = if self.accepted == 0 && !self.rejected.is_empty() {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::OK
        };
        (status, Json(self)).into_response()
    }
}

/// Whole seconds, rounded up: a client that waits what we say gets through.
fn ceil_secs(wait: Duration) -> u32 {
    u32::try_from(wait.as_millis().div_ceil(1000).max(1)).unwrap_or(u32::MAX)
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(
        "missing write key: send it as the HTTP Basic user name, `Authorization: Bearer`, or `X-Hourglass-Key`"
    )]
    MissingKey,
    #[error("unknown write key")]
    UnknownKey,
    #[error(transparent)]
    Body(#[from] BodyError),
    #[error("{0}")]
    Malformed(String),
    #[error("rate limit of this write key exceeded; retry in {} s", ceil_secs(*.0))]
    RateLimited(Duration),
    #[error(transparent)]
    QuotaExceeded(#[from] QuotaExceeded),
    #[error("{reason}; retry later")]
    Unavailable { reason: String, retry_after: u32 },
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::MissingKey | ApiError::UnknownKey => StatusCode::UNAUTHORIZED,
            ApiError::Body(BodyError::UnsupportedType(_) | BodyError::UnsupportedEncoding(_)) => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            ApiError::Body(BodyError::TooLarge { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Body(BodyError::Corrupt { .. } | BodyError::Unreadable(_))
            | ApiError::Malformed(_) => StatusCode::BAD_REQUEST,
            ApiError::Body(BodyError::TimedOut { .. }) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Body(BodyError::OverBudget(_) | BodyError::Busy(_)) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::RateLimited(_) | ApiError::QuotaExceeded(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ApiError::MissingKey => "missing_key",
            ApiError::UnknownKey => "unknown_key",
            ApiError::Body(BodyError::UnsupportedType(_)) => "unsupported_content_type",
            ApiError::Body(BodyError::UnsupportedEncoding(_)) => "unsupported_content_encoding",
            ApiError::Body(BodyError::TooLarge { .. }) => "body_too_large",
            ApiError::Body(BodyError::Corrupt { .. }) => "corrupt_encoding",
            ApiError::Body(BodyError::Unreadable(_)) => "body_unreadable",
            ApiError::Body(BodyError::TimedOut { .. }) => "body_timeout",
            ApiError::Body(BodyError::OverBudget(_)) => "over_memory_budget",
            ApiError::Body(BodyError::Busy(_)) => "busy_with_large_bodies",
            ApiError::Malformed(_) => "malformed",
            ApiError::RateLimited(_) => "rate_limited",
            ApiError::QuotaExceeded(_) => "quota_exceeded",
            ApiError::Unavailable { .. } => "unavailable",
        }
    }
}

/// Segment's error shape (`code`, `message`), so Segment SDKs log our
/// reason; a refused quota also names its config key in `quota`.
#[derive(Serialize)]
struct ErrorBody<'a> {
    code: &'a str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    quota: Option<&'static str>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let retry_after = match &self {
            ApiError::RateLimited(wait) => Some(ceil_secs(*wait)),
            ApiError::QuotaExceeded(q) => Some(ceil_secs(q.wait)),
            ApiError::Unavailable { retry_after, .. } => Some(*retry_after),
            // Memory frees as soon as the requests in flight are answered.
            ApiError::Body(BodyError::OverBudget(_) | BodyError::Busy(_)) => Some(1),
            _ => None,
        };
        let body = ErrorBody {
            code: self.code(),
            message: self.to_string(),
            quota: match &self {
                ApiError::QuotaExceeded(q) => Some(q.quota.key()),
                _ => None,
            },
        };
        let mut response = (status, Json(body)).into_response();
        let headers = response.headers_mut();
        if let Some(secs) = retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"hourglass\""),
            );
        }
        response
    }
}
