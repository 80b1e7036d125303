//! The container record `get_info` answers with: AgentScope's `ContainerModel`, built from a
//! [`Sandbox`].

use sandboxd_types::{Sandbox, SandboxState};
use serde::Serialize;
use serde_json::{Map, Value};

use super::heartbeat::META_RECYCLED_AT;
use super::{container_name, META_LAST_ACTIVE, META_META, META_SANDBOX_TYPE, META_SESSION_CTX_ID};

/// AgentScope's `ContainerModel`, field for field (the client parses it with pydantic).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ContainerRecord {
    /// Stable id the name is made of (here: the sandbox id).
    pub session_id: String,
    /// The backend's id of the box (here: the sandbox id).
    pub container_id: String,
    /// `CONTAINER_PREFIX_KEY` + the sandbox id; the identity clients use.
    pub container_name: String,
    /// Where the sandbox's runtime is reached; here the proxy base of its files, since the
    /// guest agent has no HTTP service of its own.
    pub url: String,
    /// Host ports of the box: none, sandboxes have no network port.
    pub ports: Vec<u16>,
    /// The host directory mounted at `/workspace`.
    pub mount_dir: Option<String>,
    /// Object-store path of the workspace (not supported yet: always null).
    pub storage_path: Option<String>,
    /// Per-sandbox token of the runtime (none: the agent is not reachable over the network).
    pub runtime_token: Option<String>,
    /// Image-like name; clients find the type by looking for its name in here.
    pub version: String,
    /// The `meta` of the create request.
    pub meta: Map<String, Value>,
    /// The runtime's request timeout (the type's `timeout`); null means none here and the
    /// client's default there.
    pub timeout: Option<u64>,
    /// The type the client asked for (e.g. `base_async`).
    pub sandbox_type: String,
    /// `warm`, `running`, `recycled`, `replaced`, `error` or `released`.
    pub state: &'static str,
    /// The AgentScope session the sandbox is bound to.
    pub session_ctx_id: Option<String>,
    /// Last activity (a touch), unix seconds.
    pub last_active_at: Option<f64>,
    /// When it was recycled by the heartbeat, unix seconds.
    pub recycled_at: Option<f64>,
    /// When it was released (released sandboxes are forgotten, so never shown).
    pub released_at: Option<f64>,
    /// Last change of the record, unix seconds.
    pub updated_at: f64,
    /// Why it was recycled.
    pub recycle_reason: Option<String>,
    /// Name of the sandbox that replaced this one.
    pub redirect_to: Option<String>,
}

/// The image-like `version` of a template: `sandboxd/runtime-sandbox-<template>:<version>`,
/// shaped like AgentScope's `agentscope/runtime-sandbox-base:latest` so that clients looking
/// for `sandbox-<type>` in it find the type.
pub fn version_of(template: &str) -> String {
    format!(
        "sandboxd/runtime-sandbox-{template}:{}",
        env!("CARGO_PKG_VERSION")
    )
}

/// AgentScope's container state of a sandbox state.
pub fn state_of(state: SandboxState) -> &'static str {
    match state {
        // AgentScope's container states have no "stopped": a stopped (paused) container is
        // still the session's.
        SandboxState::Creating | SandboxState::Running | SandboxState::Paused => "running",
        SandboxState::Warm => "warm",
        SandboxState::Stopping | SandboxState::Stopped => "released",
        SandboxState::Error => "error",
        SandboxState::Recycled => "recycled",
        SandboxState::Replaced => "replaced",
    }
}

/// A Docker-like status for `get_status` (`running`, `exited`, ...).
pub fn status_of(state: SandboxState) -> &'static str {
    match state {
        SandboxState::Creating => "created",
        SandboxState::Running | SandboxState::Warm => "running",
        // What Docker says of a stopped container.
        SandboxState::Paused => "exited",
        SandboxState::Stopping => "removing",
        SandboxState::Stopped
        | SandboxState::Error
        | SandboxState::Recycled
        | SandboxState::Replaced => "exited",
    }
}

/// The record of `sandbox`. `prefix` is `CONTAINER_PREFIX_KEY`, `base_url` the server's own URL
/// as the client reached it, `mount_dir` the host directory of its workspace, `timeout` its
/// type's (seconds one tool call may take).
pub fn record(
    sandbox: &Sandbox,
    prefix: &str,
    base_url: &str,
    mount_dir: &str,
    timeout: Option<u64>,
) -> ContainerRecord {
    let name = container_name(prefix, &sandbox.id);
    let mut meta: Map<String, Value> = sandbox
        .metadata
        .get(META_META)
        .and_then(|m| serde_json::from_str(m).ok())
        .unwrap_or_default();
    let session_ctx_id = sandbox.metadata.get(META_SESSION_CTX_ID).cloned();
    // A time kept in the metadata (milliseconds), in unix seconds.
    let secs = |key: &str| {
        sandbox
            .metadata
            .get(key)
            .and_then(|t| t.parse::<i64>().ok())
            .map(|ms| ms as f64 / 1000.0)
    };
    if let Some(s) = &session_ctx_id {
        meta.insert("session_ctx_id".into(), Value::String(s.clone()));
    }
    ContainerRecord {
        session_id: sandbox.id.clone(),
        container_id: sandbox.id.clone(),
        url: format!("{base_url}/proxy/{name}"),
        container_name: name,
        ports: Vec::new(),
        mount_dir: Some(mount_dir.to_string()),
        storage_path: None,
        runtime_token: None,
        version: version_of(&sandbox.sandbox_type),
        meta,
        timeout,
        sandbox_type: sandbox
            .metadata
            .get(META_SANDBOX_TYPE)
            .cloned()
            .unwrap_or_else(|| sandbox.sandbox_type.clone()),
        state: state_of(sandbox.state),
        session_ctx_id,
        last_active_at: secs(META_LAST_ACTIVE),
        recycled_at: secs(META_RECYCLED_AT),
        released_at: None,
        updated_at: [secs(META_LAST_ACTIVE), secs(META_RECYCLED_AT)]
            .into_iter()
            .flatten()
            .fold(sandbox.created_at_ms as f64 / 1000.0, f64::max),
        recycle_reason: (sandbox.state == SandboxState::Recycled)
            .then(|| sandbox.reason.clone())
            .flatten(),
        redirect_to: sandbox
            .replaced_by
            .as_deref()
            .map(|next| container_name(prefix, next)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_fields() {
        let sb = Sandbox {
            id: "sb-0123456789abcdef".into(),
            sandbox_type: "base".into(),
            state: SandboxState::Running,
            session_id: "sb-0123456789abcdef".into(),
            backend: "fake".into(),
            created_at_ms: 1500,
            expires_at_ms: None,
            resources: Default::default(),
            metadata: [
                (META_SESSION_CTX_ID.to_string(), "s1".to_string()),
                (META_SANDBOX_TYPE.to_string(), "base_async".to_string()),
                (META_META.to_string(), r#"{"k":1}"#.to_string()),
            ]
            .into(),
            reason: None,
            replaced_by: None,
            ports: Vec::new(),
            image: None,
        };
        let r = serde_json::to_value(record(&sb, "p-", "http://h:1", "/w/x", Some(60))).unwrap();
        assert_eq!(r["container_name"], "p-sb-0123456789abcdef");
        assert_eq!(r["url"], "http://h:1/proxy/p-sb-0123456789abcdef");
        assert_eq!(r["sandbox_type"], "base_async");
        assert!(r["version"].as_str().unwrap().contains("sandbox-base"));
        assert_eq!(
            r["meta"],
            serde_json::json!({"k": 1, "session_ctx_id": "s1"})
        );
        assert_eq!(r["session_ctx_id"], "s1");
        assert_eq!(r["state"], "running");
        assert_eq!(r["updated_at"], 1.5);
        assert_eq!(r["ports"], serde_json::json!([]));
        assert_eq!(r["redirect_to"], serde_json::Value::Null);
        assert_eq!(r["timeout"], 60);

        let mut old = sb.clone();
        old.state = SandboxState::Replaced;
        old.replaced_by = Some("sb-1111111111111111".into());
        old.metadata.insert(META_LAST_ACTIVE.into(), "2500".into());
        let r = serde_json::to_value(record(&old, "p-", "", "/w/x", None)).unwrap();
        assert_eq!(r["state"], "replaced");
        assert_eq!(r["redirect_to"], "p-sb-1111111111111111");
        assert_eq!(r["last_active_at"], 2.5);
        assert_eq!(r["updated_at"], 2.5);
    }
}
