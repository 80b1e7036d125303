//! Extractors whose rejections are [`ApiError`]s, so that a malformed request gets the same JSON
//! error shape as every other failure.

use axum::extract::{FromRequest, FromRequestParts};
use axum::http::request::Parts;
use sandboxd_core::CoreError;
use sandboxd_types::is_valid_sandbox_id;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::AppState;

/// A JSON body; bad JSON, unknown fields, wrong types and a wrong content type are
/// `invalid_request` (400), a body over the limit `payload_too_large` (413).
#[derive(Debug, FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct Json<T>(pub T);

/// A query string; anything that does not fit `T` is `invalid_request` (400).
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

/// The `{id}` of a sandbox route, checked with [`is_valid_sandbox_id`] and against the
/// [`Caller`]: an id of the wrong shape can name no sandbox, and another tenant's sandbox is
/// none of the caller's, so both are `not_found` (404) with the message of a sandbox that does
/// not exist (a tenant cannot tell another's sandbox from no sandbox).
#[derive(Debug, Clone)]
pub struct SandboxIdPath(pub String);

impl FromRequestParts<AppState> for SandboxIdPath {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let axum::extract::Path(id) =
            axum::extract::Path::<String>::from_request_parts(parts, state).await?;
        let missing = || ApiError::not_found(format!("sandbox {id} not found"));
        if !is_valid_sandbox_id(&id) {
            return Err(missing());
        }
        let caller = Caller::from_request_parts(parts, state).await?;
        if caller != Caller::Admin {
            match state.manager.get(&id).await {
                Ok(sb) if caller.may_see(&sb) => {}
                Ok(_) | Err(CoreError::NotFound(_)) => return Err(missing()),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(SandboxIdPath(id))
    }
}
