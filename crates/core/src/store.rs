//! Where sandbox records live: in memory for one process, in Redis for many.
//!
//! Every implementation must pass the contract suite in the `sandboxd-store` crate.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use sandboxd_types::{Sandbox, SandboxState};

use crate::backend::AgentEndpoint;

/// One sandbox's record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxRecord {
    /// The sandbox as the API shows it.
    pub sandbox: Sandbox,
    /// Where its agent listens, once started.
    pub endpoint: Option<AgentEndpoint>,
    /// Incremented by every successful [`SandboxStore::update`]; the compare-and-set token.
    pub version: u64,
    /// The node (machine) whose backend runs the box; `None` in records older than owners.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

impl SandboxRecord {
    /// Whether the sandbox counts against the instance limit. Warm (pooled) and paused
    /// sandboxes do: they hold a box's memory and processes like any other.
    pub fn is_live(&self) -> bool {
        matches!(
            self.sandbox.state,
            SandboxState::Creating
                | SandboxState::Running
                | SandboxState::Warm
                | SandboxState::Paused
                | SandboxState::Stopping
        )
    }
}

/// Errors of a store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A record with this id exists already.
    #[error("sandbox {0} exists already")]
    Exists(String),
    /// No record with this id.
    #[error("sandbox {0} not found")]
    NotFound(String),
    /// The record changed since it was read (compare-and-set lost).
    #[error("sandbox {0} was changed concurrently")]
    Conflict(String),
    /// Inserting would exceed the limit of live sandboxes.
    #[error("the limit of {0} running sandboxes is reached")]
    LimitReached(usize),
    /// The store itself is unreachable or failed.
    #[error("state store unavailable: {0}")]
    Unavailable(String),
}

/// Storage of sandbox records.
#[async_trait]
pub trait SandboxStore: Send + Sync + 'static {
    /// Insert a new record (its `version` is set to 1). Fails with [`StoreError::Exists`] if the
    /// id is taken, and with [`StoreError::LimitReached`] if `limit` is set and that many live
    /// records exist already; the check and the insert are one atomic step.
    async fn insert(&self, record: SandboxRecord, limit: Option<usize>) -> Result<(), StoreError>;

    /// The record with this id.
    async fn get(&self, id: &str) -> Result<Option<SandboxRecord>, StoreError>;

    /// Replace a record if its stored version still equals `record.version`; the stored
    /// version is then incremented and the new record returned.
    async fn update(&self, record: SandboxRecord) -> Result<SandboxRecord, StoreError>;

    /// Remove a record, returning it.
    async fn remove(&self, id: &str) -> Result<Option<SandboxRecord>, StoreError>;

    /// All records, oldest first.
    async fn list(&self) -> Result<Vec<SandboxRecord>, StoreError>;

    /// Take the lock `name` for `holder` for `ttl`, unless someone else holds it: whether it
    /// was taken. A holder taking its own lock again renews it. A lock whose holder died is
    /// free once its `ttl` has passed, so a crash never blocks the others for longer than that.
    /// Every process sharing the store sees the same locks.
    async fn try_lock(
        &self,
        name: &str,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<bool, StoreError>;

    /// Give up lock `name` if `holder` holds it.
    async fn unlock(&self, name: &str, holder: &str) -> Result<(), StoreError>;

    /// Who holds lock `name` now (`None` when nobody, or its TTL has passed).
    async fn lock_holder(&self, name: &str) -> Result<Option<String>, StoreError>;
}
