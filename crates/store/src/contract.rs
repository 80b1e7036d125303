//! The contract suite: behaviour every [`SandboxStore`] must show. Call [`run_all`] from a test
//! with a fresh, empty store.

use std::collections::BTreeMap;
use std::sync::Arc;

use sandboxd_core::store::{SandboxRecord, SandboxStore, StoreError};
use sandboxd_types::{Resources, Sandbox, SandboxState};

/// A record for tests.
pub fn record(id: &str, state: SandboxState) -> SandboxRecord {
    SandboxRecord {
        sandbox: Sandbox {
            id: id.to_string(),
            sandbox_type: "base".into(),
            state,
            session_id: id.to_string(),
            backend: "test".into(),
            created_at_ms: 0,
            expires_at_ms: None,
            resources: Resources::default(),
            metadata: BTreeMap::new(),
            reason: None,
            replaced_by: None,
            ports: Vec::new(),
            image: None,
        },
        endpoint: None,
        version: 0,
        owner: None,
    }
}

/// Run every contract check against `store`, which must start empty.
pub async fn run_all<S: SandboxStore>(store: &S) {
    insert_get_remove(store).await;
    updates_compare_and_set(store).await;
    limit_counts_live_records(store).await;
    list_is_oldest_first(store).await;
    cleanup(store).await;
    live_count_follows_updates(store).await;
    records_round_trip(store).await;
    cleanup(store).await;
    locks_exclude_and_expire(store).await;
}

/// A lock has one holder at a time, is renewed by its holder, freed by `unlock` (only by its
/// holder) or when its TTL passes.
async fn locks_exclude_and_expire<S: SandboxStore>(store: &S) {
    use std::time::Duration;
    let long = Duration::from_secs(60);
    assert_eq!(store.lock_holder("l").await.unwrap(), None);
    assert!(store.try_lock("l", "a", long).await.unwrap());
    assert_eq!(store.lock_holder("l").await.unwrap().as_deref(), Some("a"));
    assert!(!store.try_lock("l", "b", long).await.unwrap());
    assert!(store.try_lock("l", "a", long).await.unwrap());
    store.unlock("l", "b").await.unwrap();
    assert!(!store.try_lock("l", "b", long).await.unwrap());
    store.unlock("l", "a").await.unwrap();
    assert!(store
        .try_lock("l", "b", Duration::from_millis(100))
        .await
        .unwrap());
    assert!(store.try_lock("other", "a", long).await.unwrap());
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(store.lock_holder("l").await.unwrap(), None);
    assert!(store.try_lock("l", "a", long).await.unwrap());
    store.unlock("l", "a").await.unwrap();
    store.unlock("other", "a").await.unwrap();
}

/// A record stops counting against the limit when an update makes it not live, and counts
/// again when one makes it live.
async fn live_count_follows_updates<S: SandboxStore>(store: &S) {
    store
        .insert(record("sb-u1", SandboxState::Running), Some(1))
        .await
        .unwrap();
    let full = store
        .insert(record("sb-u2", SandboxState::Running), Some(1))
        .await;
    assert!(matches!(full, Err(StoreError::LimitReached(1))), "{full:?}");
    let mut r = store.get("sb-u1").await.unwrap().unwrap();
    r.sandbox.state = SandboxState::Recycled;
    let mut r = store.update(r).await.unwrap();
    store
        .insert(record("sb-u2", SandboxState::Running), Some(1))
        .await
        .unwrap();
    store.remove("sb-u2").await.unwrap();
    r.sandbox.state = SandboxState::Running;
    store.update(r).await.unwrap();
    assert!(matches!(
        store
            .insert(record("sb-u3", SandboxState::Running), Some(1))
            .await,
        Err(StoreError::LimitReached(1))
    ));
    store.remove("sb-u1").await.unwrap();
}

/// Every field of a record comes back as it was stored.
async fn records_round_trip<S: SandboxStore>(store: &S) {
    let mut r = record("sb-full", SandboxState::Paused);
    r.sandbox.metadata = BTreeMap::from([("k".to_string(), "v \u{e9}\"".to_string())]);
    r.sandbox.expires_at_ms = Some(1_234);
    r.sandbox.reason = Some("why".into());
    r.sandbox.resources.memory_mb = Some(64);
    r.endpoint = Some(sandboxd_core::backend::AgentEndpoint::Unix {
        path: "/run/x.sock".into(),
    });
    r.owner = Some("node-1".into());
    store.insert(r.clone(), None).await.unwrap();
    let got = store.get("sb-full").await.unwrap().unwrap();
    r.version = 1;
    assert_eq!(got, r);
    assert_eq!(store.list().await.unwrap(), [r.clone()]);
    assert_eq!(store.remove("sb-full").await.unwrap(), Some(r));
}

async fn cleanup<S: SandboxStore>(store: &S) {
    for r in store.list().await.unwrap() {
        store.remove(&r.sandbox.id).await.unwrap();
    }
    assert!(store.list().await.unwrap().is_empty());
}

async fn insert_get_remove<S: SandboxStore>(store: &S) {
    store
        .insert(record("sb-a", SandboxState::Running), None)
        .await
        .unwrap();
    let got = store.get("sb-a").await.unwrap().unwrap();
    assert_eq!(got.version, 1);
    assert!(matches!(
        store
            .insert(record("sb-a", SandboxState::Running), None)
            .await,
        Err(StoreError::Exists(_))
    ));
    assert_eq!(
        store.remove("sb-a").await.unwrap().unwrap().sandbox.id,
        "sb-a"
    );
    assert!(store.get("sb-a").await.unwrap().is_none());
    assert!(store.remove("sb-a").await.unwrap().is_none());
}

async fn updates_compare_and_set<S: SandboxStore>(store: &S) {
    store
        .insert(record("sb-b", SandboxState::Creating), None)
        .await
        .unwrap();
    let mut a = store.get("sb-b").await.unwrap().unwrap();
    let mut b = a.clone();
    a.sandbox.state = SandboxState::Running;
    let a2 = store.update(a).await.unwrap();
    assert_eq!(a2.version, 2);
    b.sandbox.state = SandboxState::Error;
    assert!(matches!(
        store.update(b).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        store.get("sb-b").await.unwrap().unwrap().sandbox.state,
        SandboxState::Running
    );
    let mut gone = record("sb-missing", SandboxState::Running);
    gone.version = 1;
    assert!(matches!(
        store.update(gone).await,
        Err(StoreError::NotFound(_))
    ));
    store.remove("sb-b").await.unwrap();
}

async fn limit_counts_live_records<S: SandboxStore>(store: &S) {
    store
        .insert(record("sb-l1", SandboxState::Running), Some(2))
        .await
        .unwrap();
    store
        .insert(record("sb-dead", SandboxState::Error), Some(2))
        .await
        .unwrap();
    store
        .insert(record("sb-l2", SandboxState::Creating), Some(2))
        .await
        .unwrap();
    assert!(matches!(
        store
            .insert(record("sb-l3", SandboxState::Running), Some(2))
            .await,
        Err(StoreError::LimitReached(2))
    ));
    for id in ["sb-l1", "sb-dead", "sb-l2"] {
        store.remove(id).await.unwrap();
    }
}

async fn list_is_oldest_first<S: SandboxStore>(store: &S) {
    for id in ["sb-z", "sb-a", "sb-m"] {
        store
            .insert(record(id, SandboxState::Running), None)
            .await
            .unwrap();
    }
    let ids: Vec<String> = store
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.sandbox.id)
        .collect();
    assert_eq!(ids, ["sb-z", "sb-a", "sb-m"]);
}

/// Concurrent inserts under a limit never exceed it. Needs a store shared across tasks.
pub async fn limit_holds_under_concurrency<S: SandboxStore>(store: Arc<S>) {
    limit_holds_across(std::slice::from_ref(&store), 32, 5).await;
    for r in store.list().await.unwrap() {
        store.remove(&r.sandbox.id).await.unwrap();
    }
}

/// `tries` concurrent inserts under `limit`, spread over `stores` (handles on one shared
/// state, as several processes would have): exactly `limit` succeed. The records stay.
pub async fn limit_holds_across<S: SandboxStore>(stores: &[Arc<S>], tries: usize, limit: usize) {
    let tasks: Vec<_> = (0..tries)
        .map(|i| {
            let s = stores[i % stores.len()].clone();
            tokio::spawn(async move {
                s.insert(
                    record(&format!("sb-c{i}"), SandboxState::Running),
                    Some(limit),
                )
                .await
                .is_ok()
            })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        ok += t.await.unwrap() as usize;
    }
    assert_eq!(ok, limit);
}
