//! Routes about the server itself: health, OpenAPI document, installed types, fallbacks.

use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use sandboxd_types::{ErrorBody, ErrorCode, Health};
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};

use crate::error::ApiError;
use crate::AppState;

/// Reply of `GET /v1/types`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TypeList {
    /// Names of the installed sandbox types (templates), sorted.
    pub types: Vec<String>,
}

/// Liveness probe; needs no token.
#[utoipa::path(
    get,
    path = "/health",
    tag = "meta",
    responses((status = 200, description = "The server is up", body = Health))
)]
pub async fn health() -> Json<Health> {
    Json(Health {
        status: "healthy".into(),
        version: env!("CARGO_PKG_VERSION").into(),
    })
}

/// This API's OpenAPI 3 document; needs no token.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "meta",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json"))
)]
pub async fn openapi() -> Response {
    Json(crate::openapi::ApiDoc::openapi()).into_response()
}

/// Installed sandbox types.
#[utoipa::path(
    get,
    path = "/v1/types",
    tag = "meta",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Installed types", body = TypeList),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
    )
)]
pub async fn types(State(state): State<AppState>) -> Json<TypeList> {
    let manager = state.manager.clone();
    // Listing reads a directory: keep it off the async threads.
    let types = tokio::task::spawn_blocking(move || manager.types())
        .await
        .unwrap_or_default();
    Json(TypeList { types })
}

/// Any path that names no route.
pub async fn not_found(uri: Uri) -> ApiError {
    ApiError::not_found(format!("no route for {}", uri.path()))
}

/// A route that exists, called with a method it does not take. AgentScope's routes answer
/// as FastAPI does (`{"detail": "Method Not Allowed"}`), the others with the API's error.
pub async fn method_not_allowed(uri: Uri) -> Response {
    if crate::agentscope::is_agentscope_path(uri.path()) {
        let body = serde_json::json!({ "detail": "Method Not Allowed" });
        return (StatusCode::METHOD_NOT_ALLOWED, Json(body)).into_response();
    }
    let body = ErrorBody {
        error: sandboxd_types::ApiError {
            code: ErrorCode::InvalidRequest,
            message: "method not allowed on this route".into(),
        },
    };
    (StatusCode::METHOD_NOT_ALLOWED, Json(body)).into_response()
}
