//! AgentScope's heartbeat: sessions idle for `HEARTBEAT_TIMEOUT` are recycled, and come back on
//! their next touch.
//!
//! - A *touch* (`touch`) is what `check_health`, `list_tools`, `call_tool` and
//!   `add_mcp_servers` do first. It records the time in the sandbox's metadata
//!   ([`META_LAST_ACTIVE`]), so the heartbeat lives in the store like everything else this layer
//!   knows (at most one write a second per sandbox).
//! - The *scanner* ([`scan_once`], every `HEARTBEAT_SCAN_INTERVAL` seconds; 0 = none) groups
//!   running sandboxes by session (`meta.session_ctx_id`); a session whose newest touch (or,
//!   untouched, its newest creation) is older than `HEARTBEAT_TIMEOUT` is reaped: each of its
//!   sandboxes is recycled ([`Manager::recycle`](sandboxd_core::Manager::recycle): box removed,
//!   record and workspace kept). Sandboxes without a session are not the heartbeat's: their
//!   `SANDBOX_TIMEOUT` applies.
//! - A touch of a recycled sandbox *restores* its session: every recycled sandbox of the session
//!   gets a successor on the same workspace ([`Manager::restore`](sandboxd_core::Manager::restore)),
//!   the old records become `replaced` and redirect to it, so old names keep working
//!   (`resolve`).
//! - With the scanner on, a sandbox bound to a session lives by its heartbeat alone (no
//!   `SANDBOX_TIMEOUT`), so that idleness recycles it (restorable) instead of removing it.
//!   Without it, a touch pushes the sandbox's expiry to `SANDBOX_TIMEOUT` from now (an idle
//!   timeout).
//! - `HEARTBEAT_LOCK_TTL` is accepted and unused: upstream's lock keeps several server
//!   processes from reaping one session twice; sandboxd runs one process (`WORKERS=1`).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use sandboxd_types::{Sandbox, SandboxState};
use tokio::task::JoinHandle;

use super::{now_ms, META_LAST_ACTIVE, META_SESSION_CTX_ID};
use crate::auth::META_TENANT;
use crate::error::ApiError;
use crate::AppState;

/// Metadata key holding when a sandbox was recycled, milliseconds since the epoch.
pub const META_RECYCLED_AT: &str = "agentscope.recycled_at_ms";

/// The reason recorded on a sandbox recycled by the scanner.
pub const RECYCLE_REASON: &str = "heartbeat timeout";

/// Heartbeat settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeartbeatConfig {
    /// `HEARTBEAT_TIMEOUT`: seconds without a touch after which a session is reaped.
    pub timeout_secs: u64,
    /// `HEARTBEAT_SCAN_INTERVAL`: seconds between scans; 0 = no scanner (nothing is reaped).
    pub scan_interval_secs: u64,
}

impl Default for HeartbeatConfig {
    /// No scanner: a bare [`AppState`](crate::AppState) reaps nothing by heartbeat.
    fn default() -> Self {
        HeartbeatConfig {
            timeout_secs: 300,
            scan_interval_secs: 0,
        }
    }
}

impl HeartbeatConfig {
    /// Whether sessions are reaped.
    pub fn scanning(&self) -> bool {
        self.scan_interval_secs > 0
    }

    /// The timeout to give a new sandbox of a session: none (`Some(0)`) when the heartbeat
    /// governs its life, else the server's default (`None`).
    pub fn session_timeout(&self, has_session: bool) -> Option<u64> {
        (self.scanning() && has_session).then_some(0)
    }
}

/// Record activity on a sandbox, restoring its session first when it was recycled. Returns the
/// sandbox to work on (the successor, after a restore). Recording is best effort, as upstream's.
pub(crate) async fn touch(state: &AppState, sandbox: Sandbox) -> Result<Sandbox, ApiError> {
    let sandbox = match sandbox.state {
        SandboxState::Recycled => restore_session(state, &sandbox).await?,
        _ => sandbox,
    };
    if sandbox.state != SandboxState::Running {
        return Ok(sandbox);
    }
    let manager = &state.manager;
    let now = now_ms();
    let last = sandbox
        .metadata
        .get(META_LAST_ACTIVE)
        .and_then(|t| t.parse::<i64>().ok());
    // At most one write a second: the scan's resolution is seconds.
    if last.is_none_or(|t| now - t >= 1000) {
        let pairs = BTreeMap::from([(META_LAST_ACTIVE.to_string(), now.to_string())]);
        if let Err(e) = manager.set_metadata(&sandbox.id, pairs).await {
            tracing::debug!(sandbox = %sandbox.id, error = %e, "touch failed (ignored)");
        }
    }
    // A sandbox in use is not removed under its client: its expiry moves to SANDBOX_TIMEOUT
    // from now (a sandbox that never expires is left alone).
    let secs = manager.config().default_timeout_secs;
    if let Some(expires) = sandbox.expires_at_ms {
        let wanted = now.saturating_add((secs.min(i64::MAX as u64 / 1000) * 1000) as i64);
        if secs > 0 && wanted > expires {
            if let Err(e) = manager.set_timeout(&sandbox.id, secs).await {
                tracing::debug!(sandbox = %sandbox.id, error = %e, "touch failed (ignored)");
            }
        }
    }
    Ok(sandbox)
}

/// Restore every recycled sandbox of `sandbox`'s session (only `sandbox` when it has none);
/// returns `sandbox`'s successor.
async fn restore_session(state: &AppState, sandbox: &Sandbox) -> Result<Sandbox, ApiError> {
    let manager = &state.manager;
    let session = sandbox.metadata.get(META_SESSION_CTX_ID);
    let timeout = state.heartbeat.session_timeout(session.is_some());
    // The type's environment comes back; the create request's own does not (it is not kept).
    let env = |sb: &Sandbox| super::type_of(state, sb).environment;
    // A successor inherits its predecessor's metadata: mark the activity first, or a scan
    // (of any process) could find the successor idle since before the recycle and recycle it
    // again before its first touch.
    let active = || BTreeMap::from([(META_LAST_ACTIVE.to_string(), now_ms().to_string())]);
    let _ = manager.set_metadata(&sandbox.id, active()).await;
    let successor = manager.restore(&sandbox.id, timeout, env(sandbox)).await?;
    if let Some(session) = session {
        let filter = BTreeMap::from([(META_SESSION_CTX_ID.to_string(), session.clone())]);
        let tenant = sandbox.metadata.get(META_TENANT);
        for other in manager.list(&filter).await? {
            // Only the same tenant's session.
            if other.state == SandboxState::Recycled && other.metadata.get(META_TENANT) == tenant {
                let _ = manager.set_metadata(&other.id, active()).await;
                if let Err(e) = manager.restore(&other.id, timeout, env(&other)).await {
                    tracing::warn!(sandbox = %other.id, error = %e, "could not restore a sandbox of the session");
                }
            }
        }
        tracing::info!(session = %session, "session restored after a heartbeat timeout");
    }
    Ok(successor)
}

/// One scan: recycle the sandboxes of every session idle for `HEARTBEAT_TIMEOUT`.
pub async fn scan_once(state: &AppState) {
    let manager = &state.manager;
    // A session's activity counts on every node, but each node recycles only its own boxes
    // (another node's box is that node's to remove).
    let Ok(all) = manager.list_marking_own().await else {
        return;
    };
    let own: std::collections::HashSet<String> = all
        .iter()
        .filter(|(_, own)| *own)
        .map(|(sb, _)| sb.id.clone())
        .collect();
    let timeout_ms = (state.heartbeat.timeout_secs.min(i64::MAX as u64 / 1000) * 1000) as i64;
    let now = now_ms();
    // (Tenant, session) → (newest activity, its running sandboxes): two tenants' sessions of
    // one name are two sessions.
    let mut sessions: HashMap<(Option<String>, String), (i64, Vec<String>)> = HashMap::new();
    for (sb, _) in all {
        if sb.state != SandboxState::Running {
            continue;
        }
        let Some(session) = sb.metadata.get(META_SESSION_CTX_ID) else {
            continue;
        };
        let active = sb
            .metadata
            .get(META_LAST_ACTIVE)
            .and_then(|t| t.parse::<i64>().ok())
            .unwrap_or(sb.created_at_ms);
        let tenant = sb.metadata.get(META_TENANT).cloned();
        let entry = sessions
            .entry((tenant, session.clone()))
            .or_insert((active, Vec::new()));
        entry.0 = entry.0.max(active);
        entry.1.push(sb.id);
    }
    for ((_, session), (active, ids)) in sessions {
        if now.saturating_sub(active) < timeout_ms {
            continue;
        }
        let ids: Vec<String> = ids.into_iter().filter(|id| own.contains(id)).collect();
        if ids.is_empty() {
            continue;
        }
        tracing::info!(session = %session, sandboxes = ids.len(), "heartbeat timeout; recycling the session");
        for id in ids {
            match manager.recycle(&id, RECYCLE_REASON).await {
                Ok(_) => {
                    let pairs = BTreeMap::from([(META_RECYCLED_AT.to_string(), now.to_string())]);
                    let _ = manager.set_metadata(&id, pairs).await;
                }
                Err(e) => tracing::warn!(sandbox = %id, error = %e, "could not recycle"),
            }
        }
    }
}

/// Start the scanner when `HEARTBEAT_SCAN_INTERVAL` > 0; the caller aborts it at shutdown.
pub fn spawn_scanner(state: AppState) -> Option<JoinHandle<()>> {
    if !state.heartbeat.scanning() {
        return None;
    }
    let every = Duration::from_secs(state.heartbeat.scan_interval_secs);
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            // One scan at a time among the processes of a node (HEARTBEAT_LOCK_TTL frees the
            // lock of one that died mid-scan); every node scans for its own boxes.
            let lock = format!("heartbeat-scan:{}", state.manager.config().node_id);
            if state.manager.try_lock(&lock).await {
                scan_once(&state).await;
                state.manager.unlock(&lock).await;
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_timeout() {
        let off = HeartbeatConfig::default();
        assert_eq!(off.session_timeout(true), None);
        let on = HeartbeatConfig {
            timeout_secs: 2,
            scan_interval_secs: 1,
        };
        assert_eq!(on.session_timeout(true), Some(0));
        assert_eq!(on.session_timeout(false), None);
    }
}
