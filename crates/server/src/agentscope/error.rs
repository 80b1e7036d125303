//! AgentScope-shaped renderings of [`ApiError`], the server's one error type.
//!
//! AgentScope's server is FastAPI: every failure is `{"detail": "..."}`. An RPC failure is
//! always status 500 with `"Error in <method>: <message>"` (the client only reads `detail`); a
//! file route keeps the status that fits the error (403 for a path outside `/workspace`, 404,
//! 409, ...). These wrappers only change the shape: the message is the [`ApiError`]'s, which
//! never carries internal details.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sandboxd_types::ErrorCode;

use crate::error::ApiError;

/// An RPC route's failure: 500 `{"detail": "Error in <method>: <message>"}`.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcError {
    /// The route's method name as called (`release`, `release_async`, ...).
    pub method: &'static str,
    /// What went wrong.
    pub error: ApiError,
}

impl IntoResponse for RpcError {
    fn into_response(self) -> Response {
        let detail = format!("Error in {}: {}", self.method, self.error.message);
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(serde_json::json!({ "detail": detail })),
        )
            .into_response()
    }
}

/// A file route's (or the auth layer's) failure: `{"detail": "<message>"}` with the status of
/// the error's code; 401 carries `WWW-Authenticate: Bearer`.
#[derive(Debug, Clone, PartialEq)]
pub struct DetailError(pub ApiError);

impl DetailError {
    /// An error with this code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        DetailError(ApiError::new(code, message))
    }
}

impl From<ApiError> for DetailError {
    fn from(e: ApiError) -> Self {
        DetailError(e)
    }
}

impl From<sandboxd_core::CoreError> for DetailError {
    fn from(e: sandboxd_core::CoreError) -> Self {
        DetailError(e.into())
    }
}

impl IntoResponse for DetailError {
    fn into_response(self) -> Response {
        let status = self.0.status();
        let mut resp = (
            status,
            axum::Json(serde_json::json!({ "detail": self.0.message })),
        )
            .into_response();
        if self.0.code == ErrorCode::Unauthorized {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}
