//! `/proxy/{identity}/{path}`: what AgentScope's server forwards to a sandbox's own HTTP
//! runtime, served here directly on the [`Manager`](sandboxd_core::Manager)'s file and exec
//! operations (the guest agent is the runtime; there is no per-sandbox HTTP service).
//!
//! | request | reply |
//! |---|---|
//! | `GET workspace/file?path=&format=text\|bytes` | the content (`text/plain` or octet-stream), streamed |
//! | `PUT workspace/file?path=` (raw body, streamed) | entry |
//! | `POST workspace/files:batch` (multipart: `files` parts, `paths` fields) | [entry] |
//! | `GET workspace/list?path=&depth=1` | [entry], parents before children |
//! | `GET workspace/exists?path=` | `{"exists": bool}` |
//! | `DELETE workspace/entry?path=` | 204 (also when it did not exist) |
//! | `POST workspace/move {"source", "destination"}` | entry |
//! | `POST workspace/mkdir {"path"}` | `{"created": bool}` |
//! | `GET healthz` | `OK` |
//! | `POST tools/run_shell_command {"command"}`, `POST tools/run_ipython_cell {"code"}` | CallToolResult |
//!
//! Paths are relative to `/workspace` (or absolute under it); the guest agent refuses anything
//! that resolves outside (403). An entry is `{"path", "name", "type": file|dir|symlink|other,
//! "size" (null unless a file), "mtime_ms"}`. Errors are `{"detail": ...}`.

use std::collections::VecDeque;

use axum::body::Body;
use axum::extract::multipart::Field;
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt, TryStreamExt};
use sandboxd_core::CoreError;
use sandboxd_protocol::AgentErrorKind;
use sandboxd_types::{EntryKind, ErrorCode, FileEntry};
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::DetailError;
use super::{mcp, resolve, sandbox_id_of, tools, type_of};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::AppState;

/// Most bytes of uploads held in memory while a batch upload's `files` part waits for its
/// `paths` field (only when a client sends the files before their paths).
const MAX_UNPAIRED_BYTES: usize = 64 << 20;
/// Deepest listing the agent does.
const MAX_DEPTH: u32 = 32;

/// Routes under `/proxy/{identity}/`, by path.
pub(crate) const ROUTES: &[(&str, Method)] = &[
    ("workspace/file", Method::GET),
    ("workspace/file", Method::PUT),
    ("workspace/files:batch", Method::POST),
    ("workspace/list", Method::GET),
    ("workspace/exists", Method::GET),
    ("workspace/entry", Method::DELETE),
    ("workspace/move", Method::POST),
    ("workspace/mkdir", Method::POST),
    ("healthz", Method::GET),
    ("tools/run_shell_command", Method::POST),
    ("tools/run_ipython_cell", Method::POST),
    ("mcp/add_servers", Method::POST),
    ("mcp/list_tools", Method::GET),
    ("mcp/call_tool", Method::POST),
];

type Reply = Result<Response, DetailError>;

/// `?path=` (other parameters are ignored, as upstream).
#[derive(Debug, Deserialize)]
struct PathQuery {
    path: String,
}

/// `?path=&format=`.
#[derive(Debug, Deserialize)]
struct ReadQuery {
    path: String,
    #[serde(default)]
    format: Option<String>,
}

/// `?path=&depth=`.
#[derive(Debug, Deserialize)]
struct ListQuery {
    path: String,
    #[serde(default)]
    depth: Option<String>,
}

fn query<T: serde::de::DeserializeOwned>(req: &Request) -> Result<T, DetailError> {
    Query::<T>::try_from_uri(req.uri())
        .map(|Query(q)| q)
        .map_err(|e| DetailError::new(ErrorCode::InvalidRequest, e.body_text()))
}

/// The handler of `/proxy/{identity}/{*path}`, every method.
pub async fn handle(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    req: Request,
) -> Response {
    let Ok(Path((identity, route))) = path else {
        return DetailError::new(ErrorCode::NotFound, "Not Found").into_response();
    };
    match dispatch(&state, &identity, route.trim_start_matches('/'), req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn dispatch(state: &AppState, identity: &str, route: &str, req: Request) -> Reply {
    let method = req.method().clone();
    if !ROUTES.iter().any(|(p, m)| *p == route && *m == method) {
        if ROUTES.iter().any(|(p, _)| *p == route) {
            let body = axum::Json(json!({ "detail": "Method Not Allowed" }));
            return Ok((StatusCode::METHOD_NOT_ALLOWED, body).into_response());
        }
        return Err(DetailError::new(ErrorCode::NotFound, "Not Found"));
    }
    let not_found = || {
        DetailError::new(
            ErrorCode::NotFound,
            format!("sandbox not found: {identity}"),
        )
    };
    let id = sandbox_id_of(&state.container_prefix, identity).ok_or_else(not_found)?;
    // Set by the auth middleware; without it nobody's sandbox is anyone's.
    let caller = req
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(not_found)?;
    // A replaced sandbox's name keeps working: follow it to its successor.
    let sb = match resolve(state, &caller, id).await {
        Ok(sb) => sb,
        Err(CoreError::NotFound(_)) => return Err(not_found()),
        Err(e) => return Err(e.into()),
    };
    let id = sb.id.as_str();
    match (route, method) {
        ("workspace/file", Method::GET) => read(state, id, req).await,
        ("workspace/file", _) => write(state, id, req).await,
        ("workspace/files:batch", _) => batch(state, id, req).await,
        ("workspace/list", _) => list(state, id, req).await,
        ("workspace/exists", _) => exists(state, id, req).await,
        ("workspace/entry", _) => remove(state, id, req).await,
        ("workspace/move", _) => move_path(state, id, req).await,
        ("workspace/mkdir", _) => mkdir(state, id, req).await,
        ("healthz", _) => {
            state.manager.stat(id, "").await?;
            Ok("OK".into_response())
        }
        ("mcp/add_servers", _) => {
            let body = json_body(req).await?;
            let overwrite = body
                .get("overwrite")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            mcp::add_servers(&state.manager, id, body.get("server_configs"), overwrite).await?;
            Ok("OK".into_response())
        }
        ("mcp/list_tools", _) => {
            let groups = mcp::groups(&state.manager, id).await?;
            Ok(axum::Json(Value::Object(groups)).into_response())
        }
        ("mcp/call_tool", _) => {
            let body = json_body(req).await?;
            let name = body.get("tool_name").and_then(Value::as_str).unwrap_or("");
            let args = body
                .get("arguments")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            let timeout_ms = type_of(state, &sb)
                .timeout_secs
                .map(|s| s.saturating_mul(1000));
            match mcp::call(&state.manager, id, name, &args, timeout_ms).await? {
                Some(result) => Ok(axum::Json(result).into_response()),
                None => Err(ApiError::not_found(format!("Tool '{name}' not found.")).into()),
            }
        }
        (tool, _) => {
            let name = tool.trim_start_matches("tools/");
            let body = json_body(req).await?;
            let args = body.as_object().cloned().unwrap_or_default();
            let ty = type_of(state, &sb);
            let result = tools::call(&state.manager, id, &ty, name, &args).await?;
            Ok(axum::Json(result).into_response())
        }
    }
}

/// An entry in AgentScope's shape.
pub fn entry_json(e: &FileEntry) -> Value {
    json!({
        "path": e.path,
        "name": e.name,
        "type": e.kind,
        "size": (e.kind == EntryKind::File).then_some(e.size),
        "mtime_ms": e.mtime_ms,
    })
}

fn is_agent(e: &CoreError, kinds: &[AgentErrorKind]) -> bool {
    e.agent_kind().is_some_and(|k| kinds.contains(&k))
}

/// `GET workspace/file`: a missing path or a directory is 404, as upstream.
async fn read(state: &AppState, id: &str, req: Request) -> Reply {
    let q: ReadQuery = query(&req)?;
    let content_type = match q.format.as_deref().unwrap_or("text") {
        "text" => "text/plain; charset=utf-8",
        "bytes" => "application/octet-stream",
        other => {
            return Err(DetailError::new(
                ErrorCode::InvalidRequest,
                format!("format must be text or bytes, not {other:?}"),
            ))
        }
    };
    let stream = match state.manager.read_file(id, &q.path).await {
        Ok(s) => s,
        Err(e) if is_agent(&e, &[AgentErrorKind::NotFound, AgentErrorKind::WrongKind]) => {
            return Err(DetailError::new(ErrorCode::NotFound, "not found"))
        }
        Err(e) => return Err(e.into()),
    };
    let sandbox = id.to_string();
    let body = Body::from_stream(stream.inspect_err(move |e| {
        tracing::warn!(sandbox = %sandbox, error = %e, "file download broke off");
    }));
    let mut resp = body.into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    Ok(resp)
}

/// Map a write's error: writing over a directory is 409, as upstream.
fn write_error(e: CoreError) -> DetailError {
    if is_agent(&e, &[AgentErrorKind::WrongKind]) {
        DetailError::new(ErrorCode::AlreadyExists, "path exists and is a directory")
    } else {
        e.into()
    }
}

/// `PUT workspace/file`: the raw body, streamed.
async fn write(state: &AppState, id: &str, req: Request) -> Reply {
    let q: PathQuery = query(&req)?;
    let pieces = req.into_body().into_data_stream().map(|r| {
        r.map(|b| b.to_vec())
            .map_err(|e| CoreError::InvalidRequest(format!("reading the upload failed: {e}")))
    });
    let entry = state
        .manager
        .write_file(id, &q.path, None, Box::pin(pieces))
        .await
        .map_err(write_error)?;
    Ok(axum::Json(entry_json(&entry)).into_response())
}

/// Stream one multipart part into a file.
async fn write_field(
    state: &AppState,
    id: &str,
    path: &str,
    mut field: Field<'_>,
) -> Result<FileEntry, DetailError> {
    let (mut tx, rx) = futures::channel::mpsc::channel::<Result<Vec<u8>, CoreError>>(4);
    let write = state.manager.write_file(id, path, None, Box::pin(rx));
    // The part borrows the multipart reader, so it cannot move into a task: pump it here,
    // beside the write, into the channel the write reads.
    let pump = async move {
        loop {
            let piece = match field.chunk().await {
                Ok(Some(c)) => Ok(c.to_vec()),
                Ok(None) => break,
                Err(e) => Err(CoreError::InvalidRequest(format!(
                    "reading the upload failed: {e}"
                ))),
            };
            let failed = piece.is_err();
            if tx.send(piece).await.is_err() || failed {
                break;
            }
        }
        // Dropping the sender ends the write's stream.
    };
    let (written, ()) = tokio::join!(write, pump);
    written.map_err(write_error)
}

/// `POST workspace/files:batch`: the i-th `files` part goes to the i-th `paths` field (or, when
/// no `paths` are sent, to the part's file name). Parts whose path is already known are
/// streamed; a part sent before its path is held in memory until the path comes.
async fn batch(state: &AppState, id: &str, req: Request) -> Reply {
    let bad = |m: String| DetailError::new(ErrorCode::InvalidRequest, m);
    let mut mp = Multipart::from_request(req, state)
        .await
        .map_err(|e| bad(e.body_text()))?;
    let mut paths: VecDeque<String> = VecDeque::new();
    let mut unpaired: VecDeque<(Option<String>, Vec<u8>)> = VecDeque::new();
    let mut unpaired_bytes = 0usize;
    let mut saw_paths = false;
    let mut out = Vec::new();
    let read_err = |e: axum::extract::multipart::MultipartError| bad(e.body_text());
    while let Some(field) = mp.next_field().await.map_err(read_err)? {
        match field.name() {
            Some("paths") => {
                saw_paths = true;
                let p = field.text().await.map_err(read_err)?;
                match unpaired.pop_front() {
                    Some((_, data)) => {
                        unpaired_bytes -= data.len();
                        out.push(write_bytes(state, id, &p, data).await?);
                    }
                    None => paths.push_back(p),
                }
            }
            Some("files") => match paths.pop_front() {
                Some(p) => out.push(write_field(state, id, &p, field).await?),
                None => {
                    let name = field.file_name().map(str::to_string);
                    let data = field.bytes().await.map_err(read_err)?;
                    unpaired_bytes += data.len();
                    if unpaired_bytes > MAX_UNPAIRED_BYTES {
                        return Err(DetailError::new(
                            ErrorCode::PayloadTooLarge,
                            "send each `paths` field before its `files` part for uploads this large",
                        ));
                    }
                    unpaired.push_back((name, data.to_vec()));
                }
            },
            // Other fields are ignored, as FastAPI ignores them.
            _ => {}
        }
    }
    if saw_paths && (!paths.is_empty() || !unpaired.is_empty()) {
        return Err(bad("`paths` length must match `files` length".into()));
    }
    for (name, data) in unpaired {
        let Some(p) = name.filter(|n| !n.is_empty()) else {
            return Err(bad("missing target path for a part".into()));
        };
        out.push(write_bytes(state, id, &p, data).await?);
    }
    Ok(axum::Json(Value::Array(out.iter().map(entry_json).collect())).into_response())
}

async fn write_bytes(
    state: &AppState,
    id: &str,
    path: &str,
    data: Vec<u8>,
) -> Result<FileEntry, DetailError> {
    let body = futures::stream::once(async move { Ok(data) });
    state
        .manager
        .write_file(id, path, None, Box::pin(body))
        .await
        .map_err(write_error)
}

/// `GET workspace/list`: flat, parents before children; `depth` levels (at most 32).
async fn list(state: &AppState, id: &str, req: Request) -> Reply {
    let q: ListQuery = query(&req)?;
    let depth = match q.depth.as_deref() {
        None | Some("") | Some("None") | Some("null") => 1,
        Some(d) => d
            .parse::<u32>()
            .ok()
            .filter(|d| *d >= 1)
            .ok_or_else(|| {
                DetailError::new(
                    ErrorCode::InvalidRequest,
                    "depth must be a whole number >= 1",
                )
            })?
            .min(MAX_DEPTH),
    };
    match state.manager.list_dir(id, &q.path, depth).await {
        Ok(entries) => {
            Ok(axum::Json(Value::Array(entries.iter().map(entry_json).collect())).into_response())
        }
        Err(e) if is_agent(&e, &[AgentErrorKind::NotFound, AgentErrorKind::WrongKind]) => {
            Err(DetailError::new(ErrorCode::NotFound, "not found"))
        }
        Err(e) => Err(e.into()),
    }
}

/// `GET workspace/exists`.
async fn exists(state: &AppState, id: &str, req: Request) -> Reply {
    let q: PathQuery = query(&req)?;
    let exists = match state.manager.stat(id, &q.path).await {
        Ok(_) => true,
        Err(e) if is_agent(&e, &[AgentErrorKind::NotFound, AgentErrorKind::WrongKind]) => false,
        Err(e) => return Err(e.into()),
    };
    Ok(axum::Json(json!({ "exists": exists })).into_response())
}

/// `DELETE workspace/entry`: a file, or a directory with everything in it.
async fn remove(state: &AppState, id: &str, req: Request) -> Reply {
    let q: PathQuery = query(&req)?;
    match state.manager.remove_path(id, &q.path, true).await {
        Ok(()) => {}
        Err(e) if is_agent(&e, &[AgentErrorKind::NotFound]) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn json_body(req: Request) -> Result<Value, DetailError> {
    let bytes = axum::body::to_bytes(req.into_body(), crate::JSON_BODY_LIMIT)
        .await
        .map_err(|_| {
            DetailError::new(
                ErrorCode::PayloadTooLarge,
                format!("the body is larger than {} bytes", crate::JSON_BODY_LIMIT),
            )
        })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| DetailError::new(ErrorCode::InvalidRequest, format!("invalid JSON body: {e}")))
}

fn string_field(body: &Value, name: &str) -> Option<String> {
    body.get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// The parent of a request path, when it is not the workspace itself.
fn parent_of(path: &str) -> Option<&str> {
    let trimmed = path.trim_end_matches('/');
    let (parent, _) = trimmed.rsplit_once('/')?;
    (!parent.is_empty() && parent != "/workspace").then_some(parent)
}

/// `POST workspace/move`: missing parents of the destination are created, as upstream.
async fn move_path(state: &AppState, id: &str, req: Request) -> Reply {
    let body = json_body(req).await?;
    let (Some(source), Some(destination)) = (
        string_field(&body, "source"),
        string_field(&body, "destination"),
    ) else {
        return Err(DetailError::new(
            ErrorCode::InvalidRequest,
            "source and destination are required",
        ));
    };
    match state.manager.stat(id, &source).await {
        Ok(_) => {}
        Err(e) if is_agent(&e, &[AgentErrorKind::NotFound, AgentErrorKind::WrongKind]) => {
            return Err(DetailError::new(ErrorCode::NotFound, "source not found"))
        }
        Err(e) => return Err(e.into()),
    }
    if let Some(parent) = parent_of(&destination) {
        state.manager.mkdir(id, parent, true).await?;
    }
    let entry = state.manager.move_path(id, &source, &destination).await?;
    Ok(axum::Json(entry_json(&entry)).into_response())
}

/// `POST workspace/mkdir`: with parents; `created: false` when the directory exists, 409 when
/// something else is there.
async fn mkdir(state: &AppState, id: &str, req: Request) -> Reply {
    let body = json_body(req).await?;
    let Some(path) = string_field(&body, "path") else {
        return Err(DetailError::new(
            ErrorCode::InvalidRequest,
            "path is required",
        ));
    };
    match state.manager.stat(id, &path).await {
        Ok(e) if e.kind == EntryKind::Dir => {
            return Ok(axum::Json(json!({ "created": false })).into_response())
        }
        Ok(_) => {
            return Err(DetailError::new(
                ErrorCode::AlreadyExists,
                "path exists and is not a directory",
            ))
        }
        Err(e) if is_agent(&e, &[AgentErrorKind::NotFound]) => {}
        Err(e) => return Err(e.into()),
    }
    let created = state.manager.mkdir(id, &path, true).await?;
    Ok(axum::Json(json!({ "created": created })).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents() {
        assert_eq!(parent_of("a/b/c"), Some("a/b"));
        assert_eq!(parent_of("c"), None);
        assert_eq!(parent_of("/workspace/c"), None);
        assert_eq!(parent_of("/workspace/a/c"), Some("/workspace/a"));
        assert_eq!(parent_of("/c"), None);
    }
}
