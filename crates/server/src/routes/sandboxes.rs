//! Sandbox lifecycle: create, list, get, delete, set timeout, pause, resume, restart.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use sandboxd_types::{CreateSandboxRequest, ErrorBody, Sandbox, SandboxList, SetTimeoutRequest};

use crate::auth::{Caller, META_TENANT, RESERVED_META_PREFIX};
use crate::error::ApiError;
use crate::extract::{Json, Query, SandboxIdPath};
use crate::AppState;

/// Bind a create request to its caller: a tenant's sandbox records the tenant in its metadata
/// and its session is the tenant's own ([`Caller::session`]). Metadata keys under
/// [`RESERVED_META_PREFIX`] are the server's: a request cannot set them.
pub(crate) fn bind_to_caller(
    caller: &Caller,
    req: &mut CreateSandboxRequest,
) -> Result<(), ApiError> {
    if let Some(k) = req
        .metadata
        .keys()
        .find(|k| k.starts_with(RESERVED_META_PREFIX))
    {
        return Err(ApiError::invalid(format!(
            "metadata key {k:?} is reserved: keys starting with {RESERVED_META_PREFIX:?} are set by the server"
        )));
    }
    if let Some(tenant) = caller.tenant() {
        if let Some(session) = &req.session_id {
            if !sandboxd_types::is_valid_session_id(session)
                || caller.session(session).len() > MAX_SESSION_LEN
            {
                return Err(ApiError::invalid(format!(
                    "session_id must be 1..{} characters of letters, digits, '-', '_' and '.' \
                     (128 less the API key's name and one)",
                    MAX_SESSION_LEN - tenant.len() - 1
                )));
            }
            req.session_id = Some(caller.session(session));
        }
        req.metadata.insert(META_TENANT.into(), tenant.to_string());
    }
    Ok(())
}

/// Longest session id the core takes (`sandboxd_types::is_valid_session_id`).
const MAX_SESSION_LEN: usize = 128;

/// Create a sandbox and wait until it is ready. With `ports`, each port inside the sandbox is
/// published on a free host port of the server's `PORT_RANGE` (listed in the reply's `ports`).
/// Made with an API key, the sandbox is that key's (`metadata["sandboxd.tenant"]`), and its
/// `session_id` names a workspace of that key's only.
#[utoipa::path(
    post,
    path = "/v1/sandboxes",
    tag = "sandboxes",
    security(("bearer" = [])),
    request_body = CreateSandboxRequest,
    responses(
        (status = 201, description = "The sandbox is running", body = Sandbox),
        (status = 400, description = "Invalid request (also: a `metadata` key starting with `sandboxd.`, which the server sets)", body = ErrorBody),
        (status = 404, description = "Unknown sandbox type (`unknown_type`)", body = ErrorBody),
        (status = 429, description = "`MAX_SANDBOX_INSTANCES` reached", body = ErrorBody),
        (status = 502, description = "The backend or the agent failed", body = ErrorBody),
        (status = 503, description = "The server is shutting down, or `PORT_RANGE` has too few free ports for `ports`", body = ErrorBody),
        (status = 504, description = "The sandbox did not start in time", body = ErrorBody),
        (status = 507, description = "The host's disk is full (`insufficient_storage`)", body = ErrorBody),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Json(mut req): Json<CreateSandboxRequest>,
) -> Result<(StatusCode, axum::Json<Sandbox>), ApiError> {
    sandboxd_types::check_ports(&req.ports).map_err(ApiError::invalid)?;
    bind_to_caller(&caller, &mut req)?;
    // Bound first, so that a full range fails before a sandbox is made; a failed create drops
    // the listeners (the ports are free again).
    let reserved = state.ports.reserve(&req.ports)?;
    let sandbox = if reserved.info.is_empty() {
        state.manager.create(req).await?
    } else {
        // In a task of its own, so that a client hanging up cannot leave a sandbox whose
        // record lists ports nobody forwards.
        let task = tokio::spawn(async move {
            let sandbox = state
                .manager
                .create_with_ports(req, reserved.info.clone())
                .await?;
            state
                .ports
                .serve(&state.manager, &sandbox.id, reserved)
                .await;
            Ok::<_, ApiError>(sandbox)
        });
        task.await.map_err(ApiError::internal)??
    };
    tracing::info!(sandbox = %sandbox.id, r#type = %sandbox.sandbox_type, ports = sandbox.ports.len(), tenant = caller.tenant(), "sandbox created");
    Ok((StatusCode::CREATED, axum::Json(caller.view(sandbox))))
}

/// Parse the listing's query: only `metadata.<key>=<value>` pairs are allowed.
pub(crate) fn metadata_filter(
    pairs: Vec<(String, String)>,
) -> Result<BTreeMap<String, String>, ApiError> {
    let mut filter = BTreeMap::new();
    for (k, v) in pairs {
        match k.strip_prefix("metadata.") {
            Some(key) if !key.is_empty() => {
                if filter.insert(key.to_string(), v).is_some() {
                    return Err(ApiError::invalid(format!(
                        "query parameter {k} is given twice"
                    )));
                }
            }
            _ => {
                return Err(ApiError::invalid(format!(
                    "unknown query parameter {k:?}; filter with metadata.<key>=<value>"
                )))
            }
        }
    }
    Ok(filter)
}

/// List sandboxes, oldest first: with an API key, only that key's. Filter by labels with
/// query parameters `metadata.<key>=<value>` (all must match); no other parameter is accepted.
#[utoipa::path(
    get,
    path = "/v1/sandboxes",
    tag = "sandboxes",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The sandboxes", body = SandboxList),
        (status = 400, description = "Unknown query parameter", body = ErrorBody),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<axum::Json<SandboxList>, ApiError> {
    let filter = metadata_filter(pairs)?;
    let sandboxes = state
        .manager
        .list(&filter)
        .await?
        .into_iter()
        .filter(|sb| caller.may_see(sb))
        .map(|sb| caller.view(sb))
        .collect();
    Ok(axum::Json(SandboxList { sandboxes }))
}

/// One sandbox.
#[utoipa::path(
    get,
    path = "/v1/sandboxes/{id}",
    tag = "sandboxes",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Sandbox id")),
    responses(
        (status = 200, description = "The sandbox", body = Sandbox),
        (status = 404, description = "No such sandbox", body = ErrorBody),
    )
)]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    SandboxIdPath(id): SandboxIdPath,
) -> Result<axum::Json<Sandbox>, ApiError> {
    Ok(axum::Json(caller.view(state.manager.get(&id).await?)))
}

/// Kill a sandbox and forget it; its workspace stays on the host.
#[utoipa::path(
    delete,
    path = "/v1/sandboxes/{id}",
    tag = "sandboxes",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Sandbox id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such sandbox", body = ErrorBody),
        (status = 502, description = "The backend failed", body = ErrorBody),
    )
)]
pub async fn delete(
    State(state): State<AppState>,
    SandboxIdPath(id): SandboxIdPath,
) -> Result<StatusCode, ApiError> {
    state.manager.delete(&id).await?;
    // Free when the reply goes out (other ends of a sandbox free them within a second).
    state.ports.release(&id).await;
    tracing::info!(sandbox = %id, "sandbox deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Set a sandbox's remaining lifetime, in seconds from now (0 = never expires).
#[utoipa::path(
    post,
    path = "/v1/sandboxes/{id}/timeout",
    tag = "sandboxes",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Sandbox id")),
    request_body = SetTimeoutRequest,
    responses(
        (status = 200, description = "The sandbox with its new expiry", body = Sandbox),
        (status = 404, description = "No such sandbox", body = ErrorBody),
    )
)]
pub async fn set_timeout(
    State(state): State<AppState>,
    caller: Caller,
    SandboxIdPath(id): SandboxIdPath,
    Json(req): Json<SetTimeoutRequest>,
) -> Result<axum::Json<Sandbox>, ApiError> {
    Ok(axum::Json(caller.view(
        state.manager.set_timeout(&id, req.timeout_secs).await?,
    )))
}

/// Freeze a running sandbox: its processes and memory are kept, nothing runs, and requests to
/// it answer `not_running` until it is resumed. Its timeout keeps running.
#[utoipa::path(
    post,
    path = "/v1/sandboxes/{id}/pause",
    tag = "sandboxes",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Sandbox id")),
    responses(
        (status = 200, description = "The sandbox, paused", body = Sandbox),
        (status = 404, description = "No such sandbox", body = ErrorBody),
        (status = 409, description = "The sandbox is not running", body = ErrorBody),
        (status = 502, description = "The backend failed", body = ErrorBody),
    )
)]
pub async fn pause(
    State(state): State<AppState>,
    caller: Caller,
    SandboxIdPath(id): SandboxIdPath,
) -> Result<axum::Json<Sandbox>, ApiError> {
    Ok(axum::Json(caller.view(state.manager.pause(&id).await?)))
}

/// Let a paused sandbox run on where it stopped.
#[utoipa::path(
    post,
    path = "/v1/sandboxes/{id}/resume",
    tag = "sandboxes",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Sandbox id")),
    responses(
        (status = 200, description = "The sandbox, running", body = Sandbox),
        (status = 404, description = "No such sandbox", body = ErrorBody),
        (status = 409, description = "The sandbox is neither paused nor running", body = ErrorBody),
        (status = 502, description = "The backend failed", body = ErrorBody),
    )
)]
pub async fn resume(
    State(state): State<AppState>,
    caller: Caller,
    SandboxIdPath(id): SandboxIdPath,
) -> Result<axum::Json<Sandbox>, ApiError> {
    Ok(axum::Json(caller.view(state.manager.resume(&id).await?)))
}

/// Start a new box for a sandbox, keeping its id, type, resources, metadata, timeout and
/// `/workspace`: the way back for a sandbox in state `error` (its processes died, its agent was
/// killed), or a fresh start of a running or paused one. Everything else of the old box is gone
/// (its processes, the Python interpreter's state, files outside `/workspace`); the
/// environment is its type's (the original create's `env` is not kept) and published ports are
/// not kept. If the new box cannot start, the sandbox is `error` again, with the reason.
#[utoipa::path(
    post,
    path = "/v1/sandboxes/{id}/restart",
    tag = "sandboxes",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Sandbox id")),
    responses(
        (status = 200, description = "The sandbox, running in a new box", body = Sandbox),
        (status = 404, description = "No such sandbox", body = ErrorBody),
        (status = 409, description = "The sandbox is being created, removed or restarted, or is retired (`not_running`)", body = ErrorBody),
        (status = 502, description = "The backend or the agent failed", body = ErrorBody),
        (status = 503, description = "The server is shutting down", body = ErrorBody),
        (status = 504, description = "The new box did not start in time", body = ErrorBody),
        (status = 507, description = "The host's disk is full (`insufficient_storage`)", body = ErrorBody),
    )
)]
pub async fn restart(
    State(state): State<AppState>,
    caller: Caller,
    SandboxIdPath(id): SandboxIdPath,
) -> Result<axum::Json<Sandbox>, ApiError> {
    let sb = state.manager.get(&id).await?;
    let env = crate::agentscope::type_of(&state, &sb).environment;
    // In a task of its own: a client hanging up must not leave the sandbox half restarted.
    let manager = state.manager.clone();
    let task = tokio::spawn(async move { manager.restart(&id, env).await });
    Ok(axum::Json(
        caller.view(task.await.map_err(ApiError::internal)??),
    ))
}
