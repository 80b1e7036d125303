//! Implementations of [`SandboxStore`], and the contract suite every one of them must pass.
//!
//! - [`MemoryStore`]: one process, nothing else to run (the default).
//! - [`RedisStore`](redis::RedisStore): records in Redis, shared by several server processes
//!   and machines.
//!
//! Invariant: a store holds records only; it never talks to a backend or an agent.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sandboxd_core::store::{SandboxRecord, SandboxStore, StoreError};
use tokio::sync::Mutex;

pub mod contract;
pub mod redis;
pub mod testing;

/// Records in this process's memory.
#[derive(Debug, Default)]
pub struct MemoryStore {
    // Keyed by id; each record carries an insertion sequence so listings are oldest first.
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    records: BTreeMap<String, (u64, SandboxRecord)>,
    next_seq: u64,
    /// Locks: name → (holder, expiry).
    locks: BTreeMap<String, (String, Instant)>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl SandboxStore for MemoryStore {
    async fn insert(
        &self,
        mut record: SandboxRecord,
        limit: Option<usize>,
    ) -> Result<(), StoreError> {
        let mut inner = self.inner.lock().await;
        let id = record.sandbox.id.clone();
        if inner.records.contains_key(&id) {
            return Err(StoreError::Exists(id));
        }
        if let Some(limit) = limit {
            let live = inner.records.values().filter(|(_, r)| r.is_live()).count();
            if live >= limit {
                return Err(StoreError::LimitReached(limit));
            }
        }
        record.version = 1;
        inner.next_seq += 1;
        let seq = inner.next_seq;
        inner.records.insert(id, (seq, record));
        Ok(())
    }

    async fn get(&self, id: &str) -> Result<Option<SandboxRecord>, StoreError> {
        Ok(self
            .inner
            .lock()
            .await
            .records
            .get(id)
            .map(|(_, r)| r.clone()))
    }

    async fn update(&self, mut record: SandboxRecord) -> Result<SandboxRecord, StoreError> {
        let mut inner = self.inner.lock().await;
        let id = record.sandbox.id.clone();
        let Some((_, stored)) = inner.records.get_mut(&id) else {
            return Err(StoreError::NotFound(id));
        };
        if stored.version != record.version {
            return Err(StoreError::Conflict(id));
        }
        record.version += 1;
        *stored = record.clone();
        Ok(record)
    }

    async fn remove(&self, id: &str) -> Result<Option<SandboxRecord>, StoreError> {
        Ok(self.inner.lock().await.records.remove(id).map(|(_, r)| r))
    }

    async fn list(&self) -> Result<Vec<SandboxRecord>, StoreError> {
        let inner = self.inner.lock().await;
        let mut all: Vec<_> = inner.records.values().cloned().collect();
        all.sort_by_key(|(seq, _)| *seq);
        Ok(all.into_iter().map(|(_, r)| r).collect())
    }

    async fn try_lock(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        let mut inner = self.inner.lock().await;
        let now = Instant::now();
        match inner.locks.get(name) {
            Some((h, until)) if h != holder && *until > now => Ok(false),
            _ => {
                inner
                    .locks
                    .insert(name.to_string(), (holder.to_string(), now + ttl));
                Ok(true)
            }
        }
    }

    async fn unlock(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        let mut inner = self.inner.lock().await;
        if inner.locks.get(name).is_some_and(|(h, _)| h == holder) {
            inner.locks.remove(name);
        }
        Ok(())
    }

    async fn lock_holder(&self, name: &str) -> Result<Option<String>, StoreError> {
        let inner = self.inner.lock().await;
        Ok(inner
            .locks
            .get(name)
            .filter(|(_, until)| *until > Instant::now())
            .map(|(h, _)| h.clone()))
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn memory_store_passes_the_contract() {
        super::contract::run_all(&super::MemoryStore::new()).await;
    }
}

#[cfg(test)]
mod concurrency {
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn memory_store_limit_holds_under_concurrency() {
        super::contract::limit_holds_under_concurrency(std::sync::Arc::new(
            super::MemoryStore::new(),
        ))
        .await;
    }
}
