//! The one HTTP error type of the server: every failure leaves as [`ApiError`], which maps a
//! stable [`ErrorCode`] to a status and the JSON body `{"error": {"code", "message"}}`.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sandboxd_core::CoreError;
use sandboxd_types::{ErrorBody, ErrorCode};

/// An error on its way to the client.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// Stable code; decides the status.
    pub code: ErrorCode,
    /// Message for people; never carries internal details for [`ErrorCode::Internal`].
    pub message: String,
}

impl ApiError {
    /// An error with this code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
        }
    }

    /// `invalid_request` (400).
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message)
    }

    /// `not_found` (404).
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    /// `unauthorized` (401).
    pub fn unauthorized() -> Self {
        Self::new(
            ErrorCode::Unauthorized,
            "missing or wrong bearer token (send `Authorization: Bearer <token>`)",
        )
    }

    /// `internal` (500) with a generic message; the detail goes to the log only.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        Self::new(ErrorCode::Internal, "internal server error")
    }

    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        status_of(self.code)
    }
}

/// The HTTP status that stands for an error code.
pub fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::InvalidRequest => StatusCode::BAD_REQUEST,
        ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorCode::NotFound | ErrorCode::UnknownType => StatusCode::NOT_FOUND,
        ErrorCode::PathOutsideSandbox => StatusCode::FORBIDDEN,
        ErrorCode::AlreadyExists | ErrorCode::NotRunning => StatusCode::CONFLICT,
        ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::LimitReached => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::BackendFailed | ErrorCode::AgentFailed => StatusCode::BAD_GATEWAY,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Timeout => StatusCode::GATEWAY_TIMEOUT,
        ErrorCode::InsufficientStorage => StatusCode::INSUFFICIENT_STORAGE,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<CoreError> for ApiError {
    fn from(e: CoreError) -> Self {
        let code = e.code();
        match code {
            ErrorCode::Internal => ApiError::internal(&e),
            ErrorCode::BackendFailed
            | ErrorCode::AgentFailed
            | ErrorCode::Unavailable
            | ErrorCode::Timeout
            | ErrorCode::InsufficientStorage => {
                tracing::warn!(code = ?code, error = %e, "request failed");
                let message = e.to_string();
                if code == ErrorCode::InsufficientStorage && !message.contains("disk is full") {
                    ApiError::new(code, format!("the host's disk is full: {message}"))
                } else {
                    ApiError::new(code, message)
                }
            }
            _ => ApiError::new(code, e.to_string()),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "the JSON body is larger than {} bytes",
                    crate::JSON_BODY_LIMIT
                ),
            );
        }
        match r {
            JsonRejection::MissingJsonContentType(_) => {
                ApiError::invalid("expected a JSON body with `Content-Type: application/json`")
            }
            r => ApiError::invalid(r.body_text()),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::invalid(r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::not_found(r.body_text())
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let unauthorized = self.code == ErrorCode::Unauthorized;
        let body = ErrorBody {
            error: sandboxd_types::ApiError {
                code: self.code,
                message: self.message,
            },
        };
        let mut resp = (status, axum::Json(body)).into_response();
        if unauthorized {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_its_status() {
        use ErrorCode::*;
        let table = [
            (InvalidRequest, 400),
            (Unauthorized, 401),
            (NotFound, 404),
            (UnknownType, 404),
            (PathOutsideSandbox, 403),
            (AlreadyExists, 409),
            (NotRunning, 409),
            (PayloadTooLarge, 413),
            (LimitReached, 429),
            (BackendFailed, 502),
            (AgentFailed, 502),
            (Unavailable, 503),
            (Timeout, 504),
            (InsufficientStorage, 507),
            (Internal, 500),
        ];
        for (code, status) in table {
            assert_eq!(status_of(code).as_u16(), status, "{code:?}");
        }
    }

    #[test]
    fn internal_errors_do_not_leak() {
        let e: ApiError = CoreError::Store(sandboxd_core::store::StoreError::Conflict(
            "secret-detail".into(),
        ))
        .into();
        assert_eq!(e.code, ErrorCode::Internal);
        assert!(!e.message.contains("secret-detail"));
    }
}
