//! Extractors whose rejections are [`ApiError`]s, so that a malformed request gets the same JSON
//! error shape as every other failure.

use axum::extract::{FromRequest, FromRequestParts};
use axum::http::request::Parts;
use sandboxd_types::is_valid_sandbox_id;

use crate::error::ApiError;

/// A JSON body; bad JSON, unknown fields, wrong types and a wrong content type are
/// `invalid_request` (400), a body over the limit `payload_too_large` (413).
#[derive(Debug, FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct Json<T>(pub T);

/// A query string; anything that does not fit `T` is `invalid_request` (400).
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

/// The `{id}` of a sandbox route, checked with [`is_valid_sandbox_id`]: an id of the wrong
/// shape can name no sandbox, so it is `not_found` (404).
#[derive(Debug, Clone)]
pub struct SandboxIdPath(pub String);

impl<S: Send + Sync> FromRequestParts<S> for SandboxIdPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Path(id) =
            axum::extract::Path::<String>::from_request_parts(parts, state).await?;
        if !is_valid_sandbox_id(&id) {
            return Err(ApiError::not_found(format!("sandbox {id} not found")));
        }
        Ok(SandboxIdPath(id))
    }
}
