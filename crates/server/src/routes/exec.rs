//! Running commands and Python code in a sandbox.

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use sandboxd_types::{ErrorBody, ExecEvent, ExecRequest, ExecResult, PythonRequest, PythonResult};

use crate::error::ApiError;
use crate::extract::{Json, SandboxIdPath};
use crate::AppState;

/// The media type of streamed exec output.
pub const NDJSON: &str = "application/x-ndjson";

/// One NDJSON line.
fn line(event: &ExecEvent) -> Bytes {
    let mut v = serde_json::to_vec(event).unwrap_or_else(|e| {
        // Serializing these plain types cannot fail; never send a broken line if it does.
        tracing::error!(error = %e, "cannot serialize an exec event");
        br#"{"type":"error","error":{"code":"internal","message":"internal server error"}}"#
            .to_vec()
    });
    v.push(b'\n');
    Bytes::from(v)
}

/// Run a command. Buffered by default; with `"stream": true` the reply is
/// `application/x-ndjson`, one [`ExecEvent`] per line, each sent as soon as it happens (the last
/// is `exit` or `error`). Closing the connection kills the command.
#[utoipa::path(
    post,
    path = "/v1/sandboxes/{id}/exec",
    tag = "exec",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Sandbox id")),
    request_body = ExecRequest,
    responses(
        (status = 200, description = "The command ran (or, streamed, started)", content(
            (ExecResult = "application/json"),
            (ExecEvent = "application/x-ndjson"),
        )),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 404, description = "No such sandbox", body = ErrorBody),
        (status = 409, description = "The sandbox is not running", body = ErrorBody),
        (status = 502, description = "The agent failed", body = ErrorBody),
    )
)]
pub async fn exec(
    State(state): State<AppState>,
    SandboxIdPath(id): SandboxIdPath,
    Json(req): Json<ExecRequest>,
) -> Result<Response, ApiError> {
    if !req.stream {
        let result = state.manager.exec_collect(&id, req).await?;
        return Ok(axum::Json(result).into_response());
    }
    // Errors before the command starts still get a proper status; later ones travel as an
    // `error` event.
    let events = state.manager.exec(&id, req).await?;
    let body = Body::from_stream(events.map(|ev| Ok::<_, Infallible>(line(&ev))));
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(NDJSON));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::HeaderName::from_static("x-content-type-options"),
        HeaderValue::from_static("nosniff"),
    );
    Ok(resp)
}

/// Run code in the sandbox's persistent Python interpreter.
#[utoipa::path(
    post,
    path = "/v1/sandboxes/{id}/python",
    tag = "exec",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Sandbox id")),
    request_body = PythonRequest,
    responses(
        (status = 200, description = "The code ran (an exception is in `error`)", body = PythonResult),
        (status = 404, description = "No such sandbox", body = ErrorBody),
        (status = 409, description = "The sandbox is not running", body = ErrorBody),
        (status = 502, description = "The agent failed", body = ErrorBody),
        (status = 504, description = "The code ran past its timeout", body = ErrorBody),
    )
)]
pub async fn python(
    State(state): State<AppState>,
    SandboxIdPath(id): SandboxIdPath,
    Json(req): Json<PythonRequest>,
) -> Result<axum::Json<PythonResult>, ApiError> {
    Ok(axum::Json(state.manager.python(&id, req).await?))
}
