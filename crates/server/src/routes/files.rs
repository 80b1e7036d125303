//! A sandbox's files. Paths are relative to `/workspace`; the guest agent confines them there
//! (`path_outside_sandbox`, 403, otherwise). Contents stream both ways: neither an upload nor a
//! download is ever held whole in memory.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::{StreamExt, TryStreamExt};
use sandboxd_core::CoreError;
use sandboxd_types::{ErrorBody, FileEntry, FileList, MkdirRequest, MkdirResult, MoveRequest};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::error::ApiError;
use crate::extract::{Json, Query, SandboxIdPath};
use crate::AppState;

/// Raw file content, for the OpenAPI document only (bodies stream as bytes):
/// `{"type": "string", "format": "binary"}`.
#[derive(Debug)]
pub struct FileBytes;

impl utoipa::PartialSchema for FileBytes {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
            .into()
    }
}

impl utoipa::ToSchema for FileBytes {}

/// `?path=`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PathQuery {
    /// Path, relative to `/workspace`.
    pub path: String,
}

/// Query of an upload.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct WriteQuery {
    /// Path, relative to `/workspace`; missing parents are created.
    pub path: String,
    /// Permission bits of a new file, in octal (e.g. `644`, `0755`).
    #[serde(default)]
    pub mode: Option<String>,
}

/// Query of a removal.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RemoveQuery {
    /// Path, relative to `/workspace`.
    pub path: String,
    /// Remove a non-empty directory and everything below it.
    #[serde(default)]
    pub recursive: bool,
}

/// Query of a listing.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Directory, relative to `/workspace` (default: `/workspace` itself).
    #[serde(default)]
    pub path: Option<String>,
    /// Levels to descend, 1..32 (default 1).
    #[serde(default)]
    pub depth: Option<u32>,
}

/// Parse an octal mode such as `644`, `0644` or `0o644`.
pub(crate) fn parse_mode(s: &str) -> Result<u32, ApiError> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    u32::from_str_radix(digits, 8)
        .ok()
        .filter(|m| !digits.is_empty() && *m <= 0o7777)
        .ok_or_else(|| ApiError::invalid(format!("mode {s:?} is not an octal permission like 644")))
}

/// Download a file's raw bytes.
#[utoipa::path(
    get,
    path = "/v1/sandboxes/{id}/files",
    tag = "files",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Sandbox id"), PathQuery),
    responses(
        (status = 200, description = "The file's bytes", content_type = "application/octet-stream", body = FileBytes),
        (status = 400, description = "Not a file", body = ErrorBody),
        (status = 403, description = "The path leaves the workspace", body = ErrorBody),
        (status = 404, description = "No such sandbox or file", body = ErrorBody),
    )
)]
pub async fn read(
    State(state): State<AppState>,
    SandboxIdPath(id): SandboxIdPath,
    Query(q): Query<PathQuery>,
) -> Result<Response, ApiError> {
    let stream = state.manager.read_file(&id, &q.path).await?;
    let sandbox = id.clone();
    let body = Body::from_stream(stream.inspect_err(move |e| {
        tracing::warn!(sandbox = %sandbox, error = %e, "file download broke off");
    }));
    let mut resp = body.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    Ok(resp)
}

/// Upload a file: the raw request body becomes its content, replacing any old one atomically.
#[utoipa::path(
    put,
    path = "/v1/sandboxes/{id}/files",
    tag = "files",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Sandbox id"), WriteQuery),
    request_body(content = FileBytes, content_type = "application/octet-stream"),
    responses(
        (status = 200, description = "The written file", body = FileEntry),
        (status = 403, description = "The path leaves the workspace", body = ErrorBody),
        (status = 404, description = "No such sandbox", body = ErrorBody),
        (status = 507, description = "The disk is full (`insufficient_storage`); the file keeps its old contents", body = ErrorBody),
    )
)]
pub async fn write(
    State(state): State<AppState>,
    SandboxIdPath(id): SandboxIdPath,
    Query(q): Query<WriteQuery>,
    body: Body,
) -> Result<axum::Json<FileEntry>, ApiError> {
    let mode = q.mode.as_deref().map(parse_mode).transpose()?;
    let pieces = body.into_data_stream().map(|r| {
        r.map(|b| b.to_vec())
            .map_err(|e| CoreError::InvalidRequest(format!("reading the upload failed: {e}")))
    });
    let entry = state
        .manager
        .write_file(&id, &q.path, mode, Box::pin(pieces))
        .await?;
    Ok(axum::Json(entry))
}

/// Remove a file, symlink or directory.
#[utoipa::path(
    delete,
    path = "/v1/sandboxes/{id}/files",
    tag = "files",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Sandbox id"), RemoveQuery),
    responses(
        (status = 204, description = "Removed"),
        (status = 400, description = "A non-empty directory without `recursive`", body = ErrorBody),
        (status = 403, description = "The path leaves the workspace", body = ErrorBody),
        (status = 404, description = "No such sandbox or path", body = ErrorBody),
    )
)]
pub async fn remove(
    State(state): State<AppState>,
    SandboxIdPath(id): SandboxIdPath,
    Query(q): Query<RemoveQuery>,
) -> Result<StatusCode, ApiError> {
    state.manager.remove_path(&id, &q.path, q.recursive).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// List a directory, parents before children.
#[utoipa::path(
    get,
    path = "/v1/sandboxes/{id}/files/list",
    tag = "files",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Sandbox id"), ListQuery),
    responses(
        (status = 200, description = "The entries", body = FileList),
        (status = 403, description = "The path leaves the workspace", body = ErrorBody),
        (status = 404, description = "No such sandbox or directory", body = ErrorBody),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    SandboxIdPath(id): SandboxIdPath,
    Query(q): Query<ListQuery>,
) -> Result<axum::Json<FileList>, ApiError> {
    let path = q.path.unwrap_or_else(|| ".".into());
    let entries = state
        .manager
        .list_dir(&id, &path, q.depth.unwrap_or(1))
        .await?;
    Ok(axum::Json(FileList { entries }))
}

/// Describe one path (a final symlink is not followed).
#[utoipa::path(
    get,
    path = "/v1/sandboxes/{id}/files/stat",
    tag = "files",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Sandbox id"), PathQuery),
    responses(
        (status = 200, description = "The entry", body = FileEntry),
        (status = 403, description = "The path leaves the workspace", body = ErrorBody),
        (status = 404, description = "No such sandbox or path", body = ErrorBody),
    )
)]
pub async fn stat(
    State(state): State<AppState>,
    SandboxIdPath(id): SandboxIdPath,
    Query(q): Query<PathQuery>,
) -> Result<axum::Json<FileEntry>, ApiError> {
    Ok(axum::Json(state.manager.stat(&id, &q.path).await?))
}

/// Create a directory.
#[utoipa::path(
    post,
    path = "/v1/sandboxes/{id}/files/mkdir",
    tag = "files",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Sandbox id")),
    request_body = MkdirRequest,
    responses(
        (status = 200, description = "Whether it was created", body = MkdirResult),
        (status = 403, description = "The path leaves the workspace", body = ErrorBody),
        (status = 404, description = "No such sandbox, or a missing parent", body = ErrorBody),
        (status = 409, description = "It exists (without `parents`)", body = ErrorBody),
    )
)]
pub async fn mkdir(
    State(state): State<AppState>,
    SandboxIdPath(id): SandboxIdPath,
    Json(req): Json<MkdirRequest>,
) -> Result<axum::Json<MkdirResult>, ApiError> {
    let created = state.manager.mkdir(&id, &req.path, req.parents).await?;
    Ok(axum::Json(MkdirResult { created }))
}

/// Rename a file or directory.
#[utoipa::path(
    post,
    path = "/v1/sandboxes/{id}/files/move",
    tag = "files",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Sandbox id")),
    request_body = MoveRequest,
    responses(
        (status = 200, description = "The entry at its new path", body = FileEntry),
        (status = 403, description = "A path leaves the workspace", body = ErrorBody),
        (status = 404, description = "No such sandbox or path", body = ErrorBody),
    )
)]
pub async fn move_path(
    State(state): State<AppState>,
    SandboxIdPath(id): SandboxIdPath,
    Json(req): Json<MoveRequest>,
) -> Result<axum::Json<FileEntry>, ApiError> {
    Ok(axum::Json(
        state.manager.move_path(&id, &req.from, &req.to).await?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes() {
        assert_eq!(parse_mode("644").unwrap(), 0o644);
        assert_eq!(parse_mode("0755").unwrap(), 0o755);
        assert_eq!(parse_mode("0o600").unwrap(), 0o600);
        assert!(parse_mode("8").is_err());
        assert!(parse_mode("").is_err());
        assert!(parse_mode("17777").is_err());
        assert!(parse_mode("rw").is_err());
    }
}
