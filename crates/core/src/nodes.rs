//! Several machines (nodes) sharing one store, each with its own backend and boxes.
//!
//! A node announces itself with the store lock `node:<id>`, held with its URL as the holder
//! and renewed well within [`NODE_TTL`]: other nodes read the URL there to forward requests for
//! the node's sandboxes (the server's job), and a node whose lock lapsed is gone. Its
//! sandboxes are then taken over ([`Manager::take_over`]): running and paused ones become
//! `recycled` (their workspaces are on storage every node reaches, so the next touch restores
//! them on the node that sees it, the way a heartbeat restore works), the others' records go.
//! A node that comes back after being taken over finds its own records recycled while its
//! boxes still run, and removes those boxes, so a sandbox never runs twice.

use std::collections::HashMap;
use std::time::Duration;

use sandboxd_types::SandboxState;

use crate::manager::{now_ms, Manager};
use crate::store::{SandboxRecord, StoreError};
use crate::CoreError;

/// How long a node counts as alive after its last renewal.
pub const NODE_TTL: Duration = Duration::from_secs(10);

/// How often a node renews its registration.
pub const NODE_RENEW: Duration = Duration::from_secs(2);

/// The store lock that says node `id` is alive.
pub fn node_lock(id: &str) -> String {
    format!("node:{id}")
}

impl Manager {
    /// Renew this node's registration (a no-op without a node URL).
    pub(crate) async fn register_node(&self) {
        if let Some(url) = &self.config().node_url {
            let lock = node_lock(&self.config().node_id);
            match self.store().try_lock(&lock, url, NODE_TTL).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(node = %self.config().node_id, "another server holds this node's name in the store; check SANDBOXD_NODE_ID")
                }
                Err(e) => tracing::debug!(error = %e, "node registration failed"),
            }
        }
    }

    /// The URL of node `node` while it is alive.
    pub async fn node_url(&self, node: &str) -> Result<Option<String>, CoreError> {
        Ok(self.store().lock_holder(&node_lock(node)).await?)
    }

    /// A sandbox's whole record (its owner included).
    pub async fn record(&self, id: &str) -> Result<Option<SandboxRecord>, CoreError> {
        Ok(self.store().get(id).await?)
    }

    /// Whether this manager shares its store with other nodes (it has a node URL).
    pub fn multi_node(&self) -> bool {
        self.config().node_url.is_some()
    }

    /// Take over the record of a sandbox whose node is gone: running and paused sandboxes
    /// become `recycled` (to be restored on their next touch), others are forgotten. Only one
    /// node wins (compare-and-set); a record that changed meanwhile is left alone.
    pub async fn take_over(&self, mut rec: SandboxRecord) -> Result<(), CoreError> {
        let owner = rec.owner.clone().unwrap_or_default();
        match rec.sandbox.state {
            SandboxState::Running | SandboxState::Paused => {
                rec.sandbox.state = SandboxState::Recycled;
                rec.sandbox.reason = Some(format!("node {owner} is gone"));
                rec.sandbox.expires_at_ms =
                    Some(now_ms().saturating_add(self.config().retired_keep.as_millis() as i64));
                rec.endpoint = None;
                // Its ports were published on the node that is gone.
                rec.sandbox.ports.clear();
                match self.store().update(rec).await {
                    Ok(r) => {
                        tracing::warn!(sandbox = %r.sandbox.id, node = %owner, "node gone; sandbox recycled for a restore elsewhere");
                        Ok(())
                    }
                    Err(StoreError::Conflict(_) | StoreError::NotFound(_)) => Ok(()),
                    Err(e) => Err(e.into()),
                }
            }
            SandboxState::Warm | SandboxState::Creating | SandboxState::Stopping => {
                self.store().remove(&rec.sandbox.id).await?;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// One pass over the other nodes' records: take over those of nodes that are gone.
    pub(crate) async fn take_over_dead_nodes(&self, records: &[SandboxRecord]) {
        let mut alive: HashMap<String, bool> = HashMap::new();
        for r in records {
            let Some(owner) = r.owner.as_deref() else {
                continue;
            };
            if owner == self.config().node_id {
                continue;
            }
            let up = match alive.get(owner) {
                Some(up) => *up,
                None => {
                    // An unreadable registration is no proof of death: count it alive.
                    let up = self.node_url(owner).await.map_or(true, |u| u.is_some());
                    alive.insert(owner.to_string(), up);
                    up
                }
            };
            if !up {
                if let Err(e) = self.take_over(r.clone()).await {
                    tracing::debug!(sandbox = %r.sandbox.id, error = %e, "take-over failed");
                }
            }
        }
    }
}
