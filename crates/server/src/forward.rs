//! Forwarding a request to the node that runs its sandbox, when several machines share one
//! store (`SANDBOXD_NODE_URL` set; see `sandboxd_core::nodes`).
//!
//! A request names its sandbox in its path (`/v1/sandboxes/{id}/...`,
//! `/proxy/{identity}/...`) or, for AgentScope's RPC, in its JSON body (`identity` or `args`).
//! When the sandbox's record (after following `replaced_by`) belongs to another node that is
//! alive, the request goes there whole: method, path, query, headers (the bearer token too:
//! every node has the same) and body, streamed both ways, so a streamed exec streams through.
//! A forwarded request carries [`FORWARDED_HEADER`] and is never forwarded again. Requests for
//! sandboxes of nodes that are gone are served here (a recycled sandbox is then restored here
//! on its next AgentScope touch).

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt;
use sandboxd_types::{ErrorCode, SandboxState};

use crate::agentscope::sandbox_id_of;
use crate::error::ApiError;
use crate::AppState;

/// Marks a request forwarded by another node (its value: that node's id).
pub const FORWARDED_HEADER: &str = "x-sandboxd-forwarded-by";

/// Most bytes of an AgentScope RPC body read to find its sandbox.
const RPC_BODY_LIMIT: usize = crate::JSON_BODY_LIMIT;

/// AgentScope RPC methods that name a sandbox.
const RPC_WITH_IDENTITY: &[&str] = &[
    "release",
    "start",
    "stop",
    "get_status",
    "get_info",
    "check_health",
    "list_tools",
    "call_tool",
    "add_mcp_servers",
];

/// Headers that belong to one connection, not to the request or reply.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "host",
];

/// The middleware: forward to the sandbox's node when that is another live node.
pub async fn forward_to_owner(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if !state.manager.multi_node() || req.headers().contains_key(FORWARDED_HEADER) {
        return next.run(req).await;
    }
    let (req, identity) = match identity_of(&state, req).await {
        Ok(found) => found,
        Err(resp) => return resp,
    };
    let Some(id) = identity else {
        return next.run(req).await;
    };
    match owner_url(&state, &id).await {
        Ok(Some((node, url))) => forward(&state, req, &node, &url).await,
        Ok(None) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// The sandbox a request names, reading (and putting back) the body of an AgentScope RPC.
async fn identity_of(
    state: &AppState,
    req: Request,
) -> Result<(Request, Option<String>), Response> {
    let path = req.uri().path().to_string();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let prefix = &*state.container_prefix;
    let id = match parts.as_slice() {
        ["v1", "sandboxes", id, ..] => Some(id.to_string()),
        ["proxy", identity, ..] => sandbox_id_of(prefix, identity).map(str::to_string),
        [method] if req.method() == axum::http::Method::POST => {
            let base = method.strip_suffix("_async").unwrap_or(method);
            if !RPC_WITH_IDENTITY.contains(&base) {
                return Ok((req, None));
            }
            let (head, body) = req.into_parts();
            let bytes = axum::body::to_bytes(body, RPC_BODY_LIMIT)
                .await
                .map_err(|_| {
                    ApiError::new(ErrorCode::PayloadTooLarge, "the request body is too large")
                        .into_response()
                })?;
            let named = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| {
                    v.get("identity")
                        .or_else(|| v.get("args"))
                        .and_then(|i| i.as_str().map(str::to_string))
                })
                .and_then(|i| sandbox_id_of(prefix, &i).map(str::to_string));
            return Ok((Request::from_parts(head, Body::from(bytes)), named));
        }
        _ => None,
    };
    Ok((req, id))
}

/// The node and URL to forward to, when the sandbox (after its redirects) is another live
/// node's.
async fn owner_url(state: &AppState, id: &str) -> Result<Option<(String, String)>, ApiError> {
    let manager = &state.manager;
    let mut rec = match manager.record(id).await? {
        Some(r) => r,
        None => return Ok(None),
    };
    for _ in 0..crate::agentscope::MAX_REDIRECTS {
        match (&rec.sandbox.state, &rec.sandbox.replaced_by) {
            (SandboxState::Replaced, Some(next)) => match manager.record(next).await? {
                Some(r) => rec = r,
                None => break,
            },
            _ => break,
        }
    }
    let Some(owner) = rec.owner.filter(|o| *o != manager.config().node_id) else {
        return Ok(None);
    };
    Ok(manager.node_url(&owner).await?.map(|url| (owner, url)))
}

async fn forward(state: &AppState, req: Request, node: &str, base: &str) -> Response {
    let (head, body) = req.into_parts();
    let path = head.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let mut rb = state
        .http
        .request(head.method.clone(), &url)
        .header(FORWARDED_HEADER, &state.manager.config().node_id)
        .body(reqwest::Body::wrap_stream(body.into_data_stream()));
    for (k, v) in &head.headers {
        if !HOP_BY_HOP.contains(&k.as_str()) {
            rb = rb.header(k, v);
        }
    }
    let upstream = match rb.send().await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(node, url = %base, error = %e, "forwarding to the sandbox's node failed");
            let e = ApiError::new(
                ErrorCode::BackendFailed,
                format!("the node {node} that runs this sandbox did not answer"),
            );
            // AgentScope's clients read FastAPI's `{"detail": ...}`.
            return if path.starts_with("/v1/") {
                e.into_response()
            } else {
                crate::agentscope::error::DetailError(e).into_response()
            };
        }
    };
    let mut resp = Response::builder().status(
        StatusCode::from_u16(upstream.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY),
    );
    for (k, v) in upstream.headers() {
        if !HOP_BY_HOP.contains(&k.as_str()) {
            if let Ok(name) = HeaderName::from_bytes(k.as_str().as_bytes()) {
                resp = resp.header(name, v.as_bytes());
            }
        }
    }
    let stream = upstream.bytes_stream().map_err(std::io::Error::other);
    resp.body(Body::from_stream(stream))
        .unwrap_or_else(|_| ApiError::internal("forwarded reply").into_response())
}
