//! The manager's RPC: `POST /<method>` (and `/<method>_async`), body = the method's keyword
//! arguments as a JSON object, reply `{"data": <return value>}`, failure 500
//! `{"detail": "Error in <method>: <message>"}`.
//!
//! Each request is parsed into one [`Call`] (unknown arguments are refused, as Python refuses
//! unknown keyword arguments), then [`run`] does it on the [`Manager`]. The async client sends
//! a method's first positional argument as `args` (e.g. `{"args": "<identity>"}`), so `args` is
//! accepted for the first parameter of every method.
//!
//! Return values follow upstream where the client depends on them: `create` gives null (not an
//! error) when `MAX_SANDBOX_INSTANCES` is reached or the sandbox does not start; `release`
//! gives true for an unknown sandbox ("already released"); `get_status` gives null for one.

use std::collections::{BTreeMap, BTreeSet};

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap};
use sandboxd_core::CoreError;
use sandboxd_types::{CreateSandboxRequest, ErrorCode, Sandbox, SandboxState};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::error::RpcError;
use super::heartbeat::touch;
use super::mcp;
use super::types::SandboxType;
use super::{
    container_name, record, resolve, sandbox_id_of, tools, type_of, META_META, META_SANDBOX_TYPE,
    META_SESSION_CTX_ID,
};
use crate::auth::{Caller, META_TENANT};
use crate::error::ApiError;
use crate::AppState;

/// Most bytes of the `meta` object kept with a sandbox (a metadata value's limit).
const MAX_META_JSON: usize = 4096;

/// An RPC method of AgentScope's `SandboxManager`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Hand out a warm sandbox (a cold create when the pool is empty).
    CreateFromPool,
    /// Create a sandbox.
    Create,
    /// Remove a sandbox.
    Release,
    /// Start a stopped sandbox.
    Start,
    /// Stop a sandbox without removing it.
    Stop,
    /// Docker-like status string.
    GetStatus,
    /// The container record.
    GetInfo,
    /// Whether the sandbox answers.
    CheckHealth,
    /// The sandbox's tools.
    ListTools,
    /// Call a tool.
    CallTool,
    /// Add MCP servers to the sandbox.
    AddMcpServers,
    /// Names of a session's sandboxes.
    GetSessionMapping,
    /// Every session id.
    ListSessionKeys,
    /// Remove every sandbox.
    Cleanup,
}

impl Method {
    /// Every method, each also served as `<name>_async`.
    pub const ALL: &'static [Method] = &[
        Method::CreateFromPool,
        Method::Create,
        Method::Release,
        Method::Start,
        Method::Stop,
        Method::GetStatus,
        Method::GetInfo,
        Method::CheckHealth,
        Method::ListTools,
        Method::CallTool,
        Method::AddMcpServers,
        Method::GetSessionMapping,
        Method::ListSessionKeys,
        Method::Cleanup,
    ];

    /// The route's name (without the leading `/`).
    pub fn route_name(self, asynchronous: bool) -> &'static str {
        macro_rules! names {
            ($($m:ident => $n:literal),* $(,)?) => {
                match (self, asynchronous) {
                    $((Method::$m, false) => $n, (Method::$m, true) => concat!($n, "_async"),)*
                }
            };
        }
        names!(
            CreateFromPool => "create_from_pool",
            Create => "create",
            Release => "release",
            Start => "start",
            Stop => "stop",
            GetStatus => "get_status",
            GetInfo => "get_info",
            CheckHealth => "check_health",
            ListTools => "list_tools",
            CallTool => "call_tool",
            AddMcpServers => "add_mcp_servers",
            GetSessionMapping => "get_session_mapping",
            ListSessionKeys => "list_session_keys",
            Cleanup => "cleanup",
        )
    }
}

/// Arguments of `create` and `create_from_pool`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateArgs {
    /// Sandbox type; default the first of `DEFAULT_SANDBOX_TYPE`.
    #[serde(default, alias = "args")]
    pub sandbox_type: Option<String>,
    /// Host directory to mount (refused by upstream's server unless allowed; ignored here).
    #[serde(default)]
    pub mount_dir: Option<String>,
    /// Object-store path of the workspace (not supported yet; ignored).
    #[serde(default)]
    pub storage_path: Option<String>,
    /// Environment variables.
    #[serde(default)]
    pub environment: Option<BTreeMap<String, Value>>,
    /// Free-form data; `session_ctx_id` binds the sandbox to a session.
    #[serde(default)]
    pub meta: Option<Map<String, Value>>,
}

/// Arguments of the methods that take only an identity.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityArgs {
    /// Container name or sandbox id.
    #[serde(alias = "args")]
    pub identity: String,
}

/// Arguments of `get_info`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetInfoArgs {
    /// Container name or sandbox id.
    #[serde(alias = "args")]
    pub identity: String,
    /// Upstream's recursion guard for redirects; accepted and ignored.
    #[serde(default, rename = "_redirect_depth")]
    pub redirect_depth: Option<u32>,
}

/// Arguments of `list_tools` (which, upstream, also takes any other keyword argument).
#[derive(Debug, Deserialize)]
pub struct ListToolsArgs {
    /// Container name or sandbox id.
    #[serde(alias = "args")]
    pub identity: String,
    /// Only this group (`generic`, an MCP server's name); null = all.
    #[serde(default)]
    pub tool_type: Option<String>,
}

/// Arguments of `call_tool`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallToolArgs {
    /// Container name or sandbox id.
    #[serde(alias = "args")]
    pub identity: String,
    /// The tool.
    #[serde(default)]
    pub tool_name: Option<String>,
    /// Its arguments.
    #[serde(default)]
    pub arguments: Option<Map<String, Value>>,
}

/// Arguments of `add_mcp_servers`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddMcpServersArgs {
    /// Container name or sandbox id.
    #[serde(alias = "args")]
    pub identity: String,
    /// `{"mcpServers": {...}}`.
    #[serde(default)]
    pub server_configs: Option<Value>,
    /// Replace servers of the same name.
    #[serde(default)]
    pub overwrite: Option<bool>,
}

/// Arguments of `get_session_mapping`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionArgs {
    /// The session.
    #[serde(alias = "args")]
    pub session_ctx_id: String,
}

/// Methods without arguments.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoArgs {}

/// One parsed RPC call.
#[derive(Debug)]
pub enum Call {
    /// `create_from_pool`.
    CreateFromPool(CreateArgs),
    /// `create`.
    Create(CreateArgs),
    /// `release`.
    Release(IdentityArgs),
    /// `start`.
    Start(IdentityArgs),
    /// `stop`.
    Stop(IdentityArgs),
    /// `get_status`.
    GetStatus(IdentityArgs),
    /// `get_info`.
    GetInfo(GetInfoArgs),
    /// `check_health`.
    CheckHealth(IdentityArgs),
    /// `list_tools`.
    ListTools(ListToolsArgs),
    /// `call_tool`.
    CallTool(CallToolArgs),
    /// `add_mcp_servers`.
    AddMcpServers(AddMcpServersArgs),
    /// `get_session_mapping`.
    GetSessionMapping(SessionArgs),
    /// `list_session_keys`.
    ListSessionKeys,
    /// `cleanup`.
    Cleanup,
}

fn args<T: DeserializeOwned>(body: Value) -> Result<T, ApiError> {
    serde_json::from_value(body).map_err(|e| ApiError::invalid(format!("bad arguments: {e}")))
}

impl Call {
    /// Parse a request body (a JSON object; empty means `{}`) for `method`.
    pub fn parse(method: Method, body: &[u8]) -> Result<Call, ApiError> {
        let body: Value = if body.iter().all(u8::is_ascii_whitespace) {
            Value::Object(Map::new())
        } else {
            serde_json::from_slice(body)
                .map_err(|e| ApiError::invalid(format!("the body is not JSON: {e}")))?
        };
        if !body.is_object() {
            return Err(ApiError::invalid(
                "the body must be a JSON object of keyword arguments",
            ));
        }
        Ok(match method {
            Method::CreateFromPool => Call::CreateFromPool(args(body)?),
            Method::Create => Call::Create(args(body)?),
            Method::Release => Call::Release(args(body)?),
            Method::Start => Call::Start(args(body)?),
            Method::Stop => Call::Stop(args(body)?),
            Method::GetStatus => Call::GetStatus(args(body)?),
            Method::GetInfo => Call::GetInfo(args(body)?),
            Method::CheckHealth => Call::CheckHealth(args(body)?),
            Method::ListTools => Call::ListTools(args(body)?),
            Method::CallTool => Call::CallTool(args(body)?),
            Method::AddMcpServers => Call::AddMcpServers(args(body)?),
            Method::GetSessionMapping => Call::GetSessionMapping(args(body)?),
            Method::ListSessionKeys => {
                args::<NoArgs>(body)?;
                Call::ListSessionKeys
            }
            Method::Cleanup => {
                args::<NoArgs>(body)?;
                Call::Cleanup
            }
        })
    }
}

/// The handler of every RPC route.
pub async fn handle(
    method: Method,
    name: &'static str,
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<axum::Json<Value>, RpcError> {
    let fail = |error: ApiError| RpcError {
        method: name,
        error,
    };
    let body = axum::body::to_bytes(body, crate::JSON_BODY_LIMIT)
        .await
        .map_err(|_| {
            fail(ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "the body is larger than {} bytes or broke off",
                    crate::JSON_BODY_LIMIT
                ),
            ))
        })?;
    let call = Call::parse(method, &body).map_err(fail)?;
    let base_url = base_url(&headers);
    let data = run(&state, &caller, call, &base_url).await.map_err(fail)?;
    Ok(axum::Json(serde_json::json!({ "data": data })))
}

/// `http://<Host>`, the server as the client reached it (for the records' `url`).
fn base_url(headers: &HeaderMap) -> String {
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .map(|h| format!("http://{h}"))
        .unwrap_or_default()
}

/// The sandbox an identity names (following a replaced sandbox to its successor), or
/// upstream's "No container found" error (also for another tenant's sandbox).
async fn sandbox(state: &AppState, caller: &Caller, identity: &str) -> Result<Sandbox, ApiError> {
    let missing = || ApiError::not_found(format!("No container found with id: {identity}."));
    let id = sandbox_id_of(&state.container_prefix, identity).ok_or_else(missing)?;
    match resolve(state, caller, id).await {
        Ok(sb) => Ok(sb),
        Err(CoreError::NotFound(_)) => Err(missing()),
        Err(e) => Err(e.into()),
    }
}

/// Do one call for `caller`, who only ever sees its own sandboxes ([`Caller::may_see`]).
pub async fn run(
    state: &AppState,
    caller: &Caller,
    call: Call,
    base_url: &str,
) -> Result<Value, ApiError> {
    let prefix = &*state.container_prefix;
    let manager = &state.manager;
    // The caller's sandboxes among all of them.
    let visible = || async {
        Ok::<_, ApiError>(
            manager
                .list(&BTreeMap::new())
                .await?
                .into_iter()
                .filter(|sb| caller.may_see(sb)),
        )
    };
    match call {
        Call::CreateFromPool(a) => create(state, caller, a, true).await,
        Call::Create(a) => create(state, caller, a, false).await,
        Call::Release(a) => {
            let Some(id) = sandbox_id_of(prefix, &a.identity) else {
                return Ok(Value::Bool(true));
            };
            // Releasing a replaced sandbox's name releases its successor, and the old record.
            let target = match resolve(state, caller, id).await {
                Ok(sb) => sb.id,
                // Gone, or another tenant's: "already released". A replaced record whose
                // successor is gone is still removed.
                Err(CoreError::NotFound(_)) => match manager.get(id).await {
                    Ok(sb) if caller.may_see(&sb) => id.to_string(),
                    _ => return Ok(Value::Bool(true)),
                },
                Err(e) => return Err(e.into()),
            };
            if target != id {
                let _ = manager.delete(id).await;
            }
            let id = target.as_str();
            Ok(Value::Bool(match manager.delete(id).await {
                Ok(()) => {
                    tracing::info!(sandbox = %id, "sandbox released");
                    true
                }
                Err(CoreError::NotFound(_)) => true,
                Err(e) => {
                    tracing::warn!(sandbox = %id, error = %e, "release failed");
                    false
                }
            }))
        }
        // Upstream stops and starts the container; here `stop` freezes the sandbox (its
        // processes and memory kept) and `start` lets it run on. A sandbox whose box died
        // (state `error`) is started in a new box over the same workspace, as a container
        // that exited starts again.
        Call::Start(a) => Ok(Value::Bool(
            match sandbox(state, caller, &a.identity).await {
                Ok(sb) if sb.state == SandboxState::Error => {
                    let env = super::type_of(state, &sb).environment;
                    match manager.restart(&sb.id, env).await {
                        Ok(_) => true,
                        Err(e) => {
                            tracing::warn!(sandbox = %sb.id, error = %e, "start: could not restart");
                            false
                        }
                    }
                }
                Ok(sb) => manager.resume(&sb.id).await.is_ok(),
                Err(_) => false,
            },
        )),
        Call::Stop(a) => Ok(Value::Bool(
            match sandbox(state, caller, &a.identity).await {
                Ok(sb) => match manager.pause(&sb.id).await {
                    Ok(_) => true,
                    Err(e) => {
                        tracing::warn!(sandbox = %sb.id, error = %e, "stop: could not pause");
                        false
                    }
                },
                Err(_) => true,
            },
        )),
        Call::GetStatus(a) => Ok(match sandbox(state, caller, &a.identity).await {
            Ok(sb) => Value::String(record::status_of(sb.state).into()),
            Err(_) => Value::Null,
        }),
        Call::GetInfo(a) => {
            let sb = sandbox(state, caller, &a.identity).await?;
            let mount_dir = manager.config().mount_dir.join(&sb.session_id);
            let timeout = type_of(state, &sb).timeout_secs;
            let r = record::record(&sb, prefix, base_url, &mount_dir.to_string_lossy(), timeout);
            serde_json::to_value(r).map_err(ApiError::internal)
        }
        Call::CheckHealth(a) => {
            let sb = sandbox(state, caller, &a.identity).await?;
            let sb = touch(state, sb).await?;
            if sb.state != SandboxState::Running {
                return Ok(Value::Bool(false));
            }
            // A round trip to the guest agent.
            Ok(Value::Bool(manager.stat(&sb.id, "").await.is_ok()))
        }
        Call::ListTools(a) => {
            let sb = sandbox(state, caller, &a.identity).await?;
            let sb = touch(state, sb).await?;
            let mcp = mcp::groups(manager, &sb.id).await?;
            Ok(tools::list(
                &type_of(state, &sb).tools,
                mcp,
                a.tool_type.as_deref(),
            ))
        }
        Call::CallTool(a) => {
            let sb = sandbox(state, caller, &a.identity).await?;
            let sb = touch(state, sb).await?;
            let Some(tool) = a.tool_name.filter(|t| !t.is_empty()) else {
                return Ok(tools::error_result("tool_name is required."));
            };
            let ty = type_of(state, &sb);
            let args = a.arguments.unwrap_or_default();
            tools::call(manager, &sb.id, &ty, &tool, &args).await
        }
        Call::AddMcpServers(a) => {
            let sb = sandbox(state, caller, &a.identity).await?;
            let sb = touch(state, sb).await?;
            let overwrite = a.overwrite.unwrap_or(false);
            mcp::add_servers(manager, &sb.id, a.server_configs.as_ref(), overwrite).await
        }
        Call::GetSessionMapping(a) => {
            let filter = BTreeMap::from([(META_SESSION_CTX_ID.to_string(), a.session_ctx_id)]);
            let names: Vec<Value> = manager
                .list(&filter)
                .await?
                .into_iter()
                .filter(|sb| caller.may_see(sb) && is_live(sb.state))
                .map(|sb| Value::String(container_name(prefix, &sb.id)))
                .collect();
            Ok(Value::Array(names))
        }
        Call::ListSessionKeys => {
            let keys: BTreeSet<String> = visible()
                .await?
                .filter(|sb| is_live(sb.state))
                .filter_map(|mut sb| sb.metadata.remove(META_SESSION_CTX_ID))
                .collect();
            Ok(Value::Array(keys.into_iter().map(Value::String).collect()))
        }
        // The admin's removes every sandbox (as upstream's); a tenant's, the tenant's.
        Call::Cleanup => {
            let all: Vec<Sandbox> = visible().await?.collect();
            let n = all.len();
            let removals = all.into_iter().map(|sb| async move {
                match manager.delete(&sb.id).await {
                    Ok(()) | Err(CoreError::NotFound(_)) => {}
                    Err(e) => {
                        tracing::warn!(sandbox = %sb.id, error = %e, "cleanup: release failed")
                    }
                }
            });
            futures::future::join_all(removals).await;
            tracing::info!(sandboxes = n, "cleanup: released every sandbox");
            Ok(Value::Null)
        }
    }
}

/// Whether a sandbox belongs to its session's mapping: alive, or recycled (it comes back on the
/// next touch).
fn is_live(state: SandboxState) -> bool {
    matches!(
        state,
        SandboxState::Creating | SandboxState::Running | SandboxState::Recycled
    )
}

/// The type a create asks for: a known one, else [`SandboxType::fallback`] over the installed
/// templates.
async fn requested_type(state: &AppState, requested: &str) -> SandboxType {
    if let Some(t) = state.types.get(requested) {
        return t.clone();
    }
    if !requested.ends_with("_async") {
        // Only an `_async` name's template depends on what is installed.
        return SandboxType::fallback(requested, &[]);
    }
    let manager = state.manager.clone();
    // Listing templates reads a directory: keep it off the async threads.
    let installed = tokio::task::spawn_blocking(move || manager.types())
        .await
        .unwrap_or_default();
    SandboxType::fallback(requested, &installed)
}

/// A JSON value as an environment variable's value; `None` for null.
fn env_value(key: &str, v: Value) -> Result<Option<String>, ApiError> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s)),
        Value::Number(n) => Ok(Some(n.to_string())),
        Value::Bool(b) => Ok(Some(if b { "True" } else { "False" }.to_string())),
        _ => Err(ApiError::invalid(format!(
            "environment variable {key} must be a string"
        ))),
    }
}

/// `create` and `create_from_pool`: the new sandbox's container name, or null when the
/// instance limit is reached or the sandbox could not start (upstream's contract; the client
/// then says "No sandbox available"). The sandbox gets its type's template, environment (under
/// the request's own) and resources. `from_pool` takes a warm sandbox from the type's pool
/// ([`SandboxType::pool`]) when there is one (binding the session in its metadata), else
/// creates one cold; a request with environment variables of its own always creates cold,
/// since a warm sandbox was started without them.
async fn create(
    state: &AppState,
    caller: &Caller,
    a: CreateArgs,
    from_pool: bool,
) -> Result<Value, ApiError> {
    let manager = &state.manager;
    let requested = a
        .sandbox_type
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| state.default_type.to_string());
    if a.mount_dir.is_some() {
        tracing::warn!("create: mount_dir is not allowed by this server; using DEFAULT_MOUNT_DIR");
    }
    if a.storage_path.is_some() {
        tracing::warn!("create: storage_path is not supported yet; ignored");
    }
    let ty = requested_type(state, &requested).await;
    let mut env = BTreeMap::new();
    for (k, v) in a.environment.unwrap_or_default() {
        match env_value(&k, v)? {
            Some(v) => {
                env.insert(k, v);
            }
            None => {
                // Upstream refuses the create, and says so only in its log.
                tracing::warn!("create: environment variable {k} is None");
                return Ok(Value::Null);
            }
        }
    }
    let mut metadata = BTreeMap::from([(META_SANDBOX_TYPE.to_string(), requested.clone())]);
    if let Some(tenant) = caller.tenant() {
        metadata.insert(META_TENANT.to_string(), tenant.to_string());
    }
    if let Some(meta) = a.meta.filter(|m| !m.is_empty()) {
        match meta.get("session_ctx_id") {
            Some(Value::String(s)) if !s.is_empty() => {
                metadata.insert(META_SESSION_CTX_ID.into(), s.clone());
            }
            Some(Value::Number(n)) => {
                metadata.insert(META_SESSION_CTX_ID.into(), n.to_string());
            }
            Some(Value::Null) | None => {}
            Some(Value::String(_)) => {}
            Some(_) => return Err(ApiError::invalid("meta.session_ctx_id must be a string")),
        }
        let json = Value::Object(meta).to_string();
        if json.len() > MAX_META_JSON {
            return Err(ApiError::invalid(format!(
                "meta is larger than {MAX_META_JSON} bytes as JSON"
            )));
        }
        metadata.insert(META_META.into(), json);
    }
    let timeout_secs = state
        .heartbeat
        .session_timeout(metadata.contains_key(META_SESSION_CTX_ID));
    if from_pool && env.is_empty() {
        match manager
            .create_from_pool(&ty.pool().name, metadata.clone(), timeout_secs)
            .await
        {
            Ok(Some(sb)) => {
                tracing::info!(sandbox = %sb.id, r#type = %requested, "warm sandbox handed out (AgentScope)");
                return Ok(Value::String(container_name(
                    &state.container_prefix,
                    &sb.id,
                )));
            }
            Ok(None) => {
                tracing::debug!(r#type = %requested, "warm pool empty; creating a sandbox cold")
            }
            Err(e) => return no_sandbox(e),
        }
    }
    // The request's variables win over the type's.
    let mut type_env = ty.environment.clone();
    type_env.extend(env);
    let req = CreateSandboxRequest {
        sandbox_type: Some(ty.template.clone()),
        env: type_env,
        resources: ty.resources.clone(),
        metadata,
        timeout_secs,
        ..Default::default()
    };
    match manager.create(req).await {
        Ok(sb) => {
            tracing::info!(sandbox = %sb.id, r#type = %requested, "sandbox created (AgentScope)");
            Ok(Value::String(container_name(
                &state.container_prefix,
                &sb.id,
            )))
        }
        Err(e) => no_sandbox(e),
    }
}

/// A failed create: null when upstream answers null (no room, the sandbox did not start),
/// else the error.
fn no_sandbox(e: CoreError) -> Result<Value, ApiError> {
    match e.code() {
        ErrorCode::LimitReached
        | ErrorCode::BackendFailed
        | ErrorCode::AgentFailed
        | ErrorCode::Timeout
        | ErrorCode::InsufficientStorage
        | ErrorCode::Unavailable => {
            tracing::warn!(error = %e, "create: no sandbox (answering null)");
            Ok(Value::Null)
        }
        _ => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_names() {
        assert_eq!(Method::CreateFromPool.route_name(false), "create_from_pool");
        assert_eq!(Method::Cleanup.route_name(true), "cleanup_async");
    }

    #[test]
    fn parsing() {
        let c = Call::parse(Method::Release, br#"{"args": "x"}"#).unwrap();
        assert!(matches!(c, Call::Release(IdentityArgs { identity }) if identity == "x"));
        let c = Call::parse(Method::GetSessionMapping, br#"{"args": "s"}"#).unwrap();
        assert!(
            matches!(c, Call::GetSessionMapping(SessionArgs { session_ctx_id }) if session_ctx_id == "s")
        );
        assert!(matches!(
            Call::parse(Method::Cleanup, b"").unwrap(),
            Call::Cleanup
        ));
        assert!(Call::parse(Method::Cleanup, br#"{"x": 1}"#).is_err());
        assert!(Call::parse(Method::Release, b"{}").is_err());
        assert!(Call::parse(Method::Release, b"[1]").is_err());
        assert!(Call::parse(Method::Create, br#"{"sandbox_type": "base", "bogus": 1}"#).is_err());
        // list_tools takes any other keyword argument, as upstream.
        assert!(Call::parse(Method::ListTools, br#"{"identity": "x", "extra": 1}"#).is_ok());
    }
}
