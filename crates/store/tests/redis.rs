//! The Redis store against a real `redis-server` on loopback: the contract suite, the instance
//! limit under concurrency from two stores (as two server processes would have), and how it
//! behaves when Redis goes away and comes back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sandboxd_core::store::{SandboxStore, StoreError};
use sandboxd_store::contract::{self, record};
use sandboxd_store::redis::RedisStore;
use sandboxd_store::testing::RedisServer;
use sandboxd_types::SandboxState;

#[tokio::test]
async fn redis_store_passes_the_contract() {
    let redis = RedisServer::start();
    let store = RedisStore::connect(&redis.config("contract"))
        .await
        .unwrap();
    contract::run_all(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_store_limit_holds_under_concurrency() {
    let redis = RedisServer::start();
    let store = RedisStore::connect(&redis.config("conc")).await.unwrap();
    contract::limit_holds_under_concurrency(Arc::new(store)).await;
}

/// Two stores on one Redis (two processes, in effect) share records and the limit; a store with
/// another prefix sees none of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stores_on_one_redis_share_records_and_the_limit() {
    let redis = RedisServer::start();
    let a = Arc::new(RedisStore::connect(&redis.config("shared")).await.unwrap());
    let b = Arc::new(RedisStore::connect(&redis.config("shared")).await.unwrap());
    let other = RedisStore::connect(&redis.config("other")).await.unwrap();
    contract::limit_holds_across(&[a.clone(), b.clone()], 40, 7).await;
    assert_eq!(a.list().await.unwrap(), b.list().await.unwrap());
    assert!(other.list().await.unwrap().is_empty());

    // Compare-and-set across the two: of two writers of one version, one wins.
    let id = &a.list().await.unwrap()[0].sandbox.id.clone();
    let mut from_a = a.get(id).await.unwrap().unwrap();
    let mut from_b = b.get(id).await.unwrap().unwrap();
    from_a.sandbox.state = SandboxState::Stopping;
    from_b.sandbox.state = SandboxState::Error;
    let (ra, rb) = tokio::join!(a.update(from_a), b.update(from_b));
    assert!(ra.is_ok() != rb.is_ok(), "{ra:?} {rb:?}");
    assert!(matches!(
        ra.err().or(rb.err()),
        Some(StoreError::Conflict(_))
    ));
}

/// With Redis gone, operations fail fast with `Unavailable`; when it is back, the same store
/// works again without being rebuilt.
#[tokio::test(flavor = "multi_thread")]
async fn redis_outage_fails_fast_and_recovers() {
    let mut redis = RedisServer::start();
    let store = RedisStore::connect(&redis.config("outage")).await.unwrap();
    store
        .insert(record("sb-before", SandboxState::Running), None)
        .await
        .unwrap();
    redis.stop();
    let t0 = Instant::now();
    let e = store.get("sb-before").await.unwrap_err();
    assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t0.elapsed()
    );
    let e = store
        .insert(record("sb-during", SandboxState::Running), None)
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");

    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match store.ping().await {
            Ok(()) => break,
            Err(e) => assert!(Instant::now() < deadline, "no recovery: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // This server keeps nothing on disk, so the restart emptied it; the store is usable.
    store
        .insert(record("sb-after", SandboxState::Running), None)
        .await
        .unwrap();
    assert_eq!(store.list().await.unwrap().len(), 1);
}

#[tokio::test]
async fn connecting_to_nothing_says_where() {
    let redis = RedisServer::start();
    let mut cfg = redis.config("x");
    drop(redis);
    cfg.password = Some("hunter2".into());
    let e = RedisStore::connect(&cfg).await.unwrap_err().to_string();
    assert!(e.contains(&format!("127.0.0.1:{}", cfg.port)), "{e}");
    assert!(!e.contains("hunter2"), "{e}");
}
