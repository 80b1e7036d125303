//! AgentScope Runtime compatibility: the wire protocol of AgentScope's `runtime-sandbox-server`,
//! so that the `agentscope-runtime` Python client (`BaseSandbox(base_url=..., bearer_token=...)`,
//! `SandboxManager(base_url=...)`) works against `sandboxd serve` unchanged.
//!
//! Kept apart from the `/v1` routes: every handler here translates AgentScope's request into
//! [`Manager`](sandboxd_core::Manager) calls and the answer back into AgentScope's shapes. Auth
//! is the server's (`BEARER_TOKEN`); errors are the server's [`ApiError`](crate::ApiError),
//! rendered the FastAPI way by [`error`].
//!
//! | route | what |
//! |---|---|
//! | `POST /<method>`, `POST /<method>_async` | the manager's RPC ([`rpc`]): `{"data": ...}` or 500 `{"detail": "Error in <method>: ..."}` |
//! | `/proxy/{identity}/workspace/...` | the sandbox's files ([`proxy`]), served from the guest agent |
//! | `/proxy/{identity}/tools/run_shell_command`, `.../tools/run_ipython_cell`, `.../healthz` | the runtime's own tool routes |
//!
//! Identities: a sandbox is named `CONTAINER_PREFIX_KEY` + its sandbox id (its "container
//! name"); the bare id works too, as AgentScope's session ids do. A sandbox made through `/v1`
//! is visible here as well.
//!
//! Sessions: `meta.session_ctx_id` of a create is kept in the sandbox's metadata
//! ([`META_SESSION_CTX_ID`]), so it lives wherever sandbox records live (and a Redis store will
//! share it between processes for free).
//!
//! Types ([`types`]): a `sandbox_type` names a [`types::SandboxType`] of the server's
//! [`types::TypeRegistry`] (built in: `base`, `base_async`, `filesystem`, `filesystem_async`;
//! more from `--extension` TOML files): its template, environment (under the request's),
//! resources, per-call timeout and tool groups. The name is kept in the sandbox's metadata
//! ([`META_SANDBOX_TYPE`]), so `list_tools` and `call_tool` ([`tools`], [`filesystem`]) find the
//! sandbox's groups later. A name the registry does not know means its template (for
//! `<t>_async`, `<t>`'s when only that is installed) with the generic tools, as before types
//! existed.
//!
//! Pools: `create_from_pool` takes a warm sandbox from the core's pool of the type
//! ([`types::SandboxType::pool`]: its template's plain pool, or for a type with its own
//! environment or resources a pool made for it alone;
//! [`Manager::create_from_pool`](sandboxd_core::Manager::create_from_pool)) and binds the
//! session in its metadata; an empty pool means a cold create. A pooled sandbox's `/workspace`
//! is its own (it was created with its own id as session), as in AgentScope's pool.
//!
//! Heartbeat ([`heartbeat`]): `check_health`, `list_tools`, `call_tool` and `add_mcp_servers`
//! touch the session; a scanner recycles sessions idle for `HEARTBEAT_TIMEOUT` (core:
//! [`Manager::recycle`](sandboxd_core::Manager::recycle)), and the next touch restores them on
//! the same workspaces ([`Manager::restore`](sandboxd_core::Manager::restore)). Every identity
//! is resolved through `replaced_by`, so a restored sandbox's old name keeps working (RPC and
//! proxy alike).
//!
//! Not here yet (a later phase), and where it plugs in: MCP servers. `add_mcp_servers` answers
//! with an error; a server's tools would be one more group beside a type's in [`tools`].

use std::time::{SystemTime, UNIX_EPOCH};

use axum::routing::{any, post};
use axum::Router;
use sandboxd_core::CoreError;
use sandboxd_types::{is_valid_sandbox_id, Sandbox, SandboxState};

use crate::auth::Caller;
use crate::AppState;

pub mod error;
pub mod filesystem;
pub mod heartbeat;
pub mod mcp;
pub mod openapi;
pub mod proxy;
pub mod record;
pub mod rpc;
pub mod tools;
pub mod types;

/// Metadata key holding the AgentScope session (`meta.session_ctx_id`) a sandbox is bound to.
pub const META_SESSION_CTX_ID: &str = "agentscope.session_ctx_id";
/// Metadata key holding the whole `meta` object of the create request, as JSON.
pub const META_META: &str = "agentscope.meta";
/// Metadata key holding the last activity (a touch) on a sandbox, milliseconds since the epoch.
pub const META_LAST_ACTIVE: &str = "agentscope.last_active_ms";
/// Metadata key holding the sandbox type the client asked for (e.g. `base_async`, whose
/// template is `base`).
pub const META_SANDBOX_TYPE: &str = "agentscope.sandbox_type";

/// The AgentScope routes, to be merged into the server's router (which adds auth and limits).
pub fn router() -> Router<AppState> {
    let mut r = Router::new();
    for &method in rpc::Method::ALL {
        for asynchronous in [false, true] {
            let name = method.route_name(asynchronous);
            r = r.route(
                &format!("/{name}"),
                post(move |state, caller, headers, body| {
                    rpc::handle(method, name, state, caller, headers, body)
                }),
            );
        }
    }
    r.route("/proxy/{identity}/{*path}", any(proxy::handle))
}

/// Whether a request path belongs to the AgentScope routes (for the FastAPI-shaped 401).
pub fn is_agentscope_path(path: &str) -> bool {
    if path.starts_with("/proxy/") {
        return true;
    }
    let name = path.strip_prefix('/').unwrap_or(path);
    let name = name.strip_suffix("_async").unwrap_or(name);
    rpc::Method::ALL.iter().any(|m| m.route_name(false) == name)
}

/// The sandbox id an identity names: `<prefix><id>` or a bare id. `None` when it cannot name
/// any sandbox.
pub fn sandbox_id_of<'a>(prefix: &str, identity: &'a str) -> Option<&'a str> {
    if !prefix.is_empty() {
        if let Some(rest) = identity.strip_prefix(prefix) {
            if is_valid_sandbox_id(rest) {
                return Some(rest);
            }
        }
    }
    is_valid_sandbox_id(identity).then_some(identity)
}

/// Most `replaced_by` links followed from one name (a restored sandbox that is recycled and
/// restored again adds one).
pub(crate) const MAX_REDIRECTS: usize = 16;

/// The sandbox with this id, following `replaced_by` links to the newest successor, so that
/// the name of a sandbox that was recycled and restored keeps working. A sandbox the caller
/// may not see ([`Caller::may_see`]: another tenant's) is not found, as one that does not
/// exist.
pub(crate) async fn resolve(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<Sandbox, CoreError> {
    let visible = |sb: Sandbox| {
        if caller.may_see(&sb) {
            Ok(sb)
        } else {
            Err(CoreError::NotFound(id.to_string()))
        }
    };
    let mut sb = visible(state.manager.get(id).await?)?;
    for _ in 0..MAX_REDIRECTS {
        match (sb.state, &sb.replaced_by) {
            (SandboxState::Replaced, Some(next)) => sb = visible(state.manager.get(next).await?)?,
            _ => break,
        }
    }
    Ok(sb)
}

/// A sandbox's type: the one its create named (kept in its metadata), else the one named like
/// its template (a sandbox made through `/v1`). A name the server does not know has the
/// generic tools only (its template is not looked up: the sandbox has one already).
pub(crate) fn type_of(state: &AppState, sandbox: &Sandbox) -> types::SandboxType {
    let name = sandbox
        .metadata
        .get(META_SANDBOX_TYPE)
        .unwrap_or(&sandbox.sandbox_type);
    state.types.resolve(name, &[])
}

/// A sandbox's AgentScope container name.
pub fn container_name(prefix: &str, id: &str) -> String {
    format!("{prefix}{id}")
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities() {
        let id = "sb-0123456789abcdef";
        let name = container_name("sandboxd-", id);
        assert_eq!(sandbox_id_of("sandboxd-", &name), Some(id));
        assert_eq!(sandbox_id_of("sandboxd-", id), Some(id));
        assert_eq!(sandbox_id_of("", id), Some(id));
        assert_eq!(sandbox_id_of("sandboxd-", "sandboxd-nope"), None);
        assert_eq!(sandbox_id_of("sandboxd-", "../etc"), None);
    }

    #[test]
    fn agentscope_paths() {
        assert!(is_agentscope_path("/create_from_pool"));
        assert!(is_agentscope_path("/release_async"));
        assert!(is_agentscope_path("/proxy/x/workspace/file"));
        assert!(!is_agentscope_path("/v1/sandboxes"));
        assert!(!is_agentscope_path("/health"));
        assert!(!is_agentscope_path("/nope"));
    }
}
