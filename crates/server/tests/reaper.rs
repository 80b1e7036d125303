//! The timeout reaper against requests that change a sandbox while one of its passes runs.
//! A pass reads every record first and then acts on each in turn, awaiting the backend on the
//! way; the fake backend's gates hold it at one of those awaits while a restart takes a
//! sandbox the pass has already read.

mod common;

use std::time::Duration;

use common::Harness;
use sandboxd_types::{CreateSandboxRequest, SandboxState};

async fn until(what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not reached"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A reaper pass, started and held at its look at the box of sandbox `id` (it has read every
/// record by then); it goes on once `h.backend.alive_gate` opens.
async fn pass_held_at(h: &Harness, id: &str) -> tokio::task::JoinHandle<()> {
    h.backend.alive_gate.close_for(id);
    let pass = tokio::spawn({
        let m = h.manager.clone();
        async move { m.reap_once().await }
    });
    // (The background reaper's first pass, which may run late, can be held there too.)
    until("the pass waits at the box", || {
        h.backend.alive_gate.waiting() >= 1
    })
    .await;
    pass
}

/// The pass reads both sandboxes as running, then waits at its look at the first one's box
/// while a restart of the second removes that one's box and waits to start the new one. When
/// the pass goes on, the second's record it read says "running" and its box is gone: a box
/// found dead, but the record as it is now says a restart is at work, and the pass must leave
/// it alone.
#[tokio::test]
async fn a_pass_leaves_alone_a_sandbox_that_a_restart_took_after_it_read_the_records() {
    // No background passes: the test runs the one pass itself.
    let h = Harness::with_config(None, |c| c.reap_interval = Duration::from_secs(3600)).await;
    let m = h.manager.clone();
    let first = m.create(CreateSandboxRequest::default()).await.unwrap();
    let second = m.create(CreateSandboxRequest::default()).await.unwrap();

    let pass = pass_held_at(&h, &first.id).await;

    h.backend.create_gate.close();
    let restart = tokio::spawn({
        let (m, id) = (m.clone(), second.id.clone());
        async move { m.restart(&id, Default::default()).await }
    });
    until("the restart waits to start the new box", || {
        h.backend.create_gate.waiting() == 1
    })
    .await;
    assert!(!h.backend.is_alive_now(&second.id), "the old box is gone");

    h.backend.alive_gate.open();
    pass.await.unwrap();
    let during = m.get(&second.id).await.unwrap();
    assert_eq!(
        during.state,
        SandboxState::Creating,
        "the pass changed a sandbox being restarted: {during:?}"
    );

    h.backend.create_gate.open();
    let restarted = restart.await.unwrap().unwrap();
    assert_eq!(restarted.state, SandboxState::Running);
    let after = m.get(&second.id).await.unwrap();
    assert_eq!(after.state, SandboxState::Running, "{after:?}");
    assert_eq!(after.reason, None, "{after:?}");
    assert!(h.backend.is_alive_now(&second.id), "the new box runs");

    // A later pass finds both sandboxes well and leaves them be.
    m.reap_once().await;
    for id in [&first.id, &second.id] {
        assert_eq!(m.get(id).await.unwrap().state, SandboxState::Running);
    }
}

/// A box that did die is still found: removed, and its sandbox marked `error` with why.
#[tokio::test]
async fn a_pass_marks_a_sandbox_whose_box_died() {
    let h = Harness::with_config(None, |c| c.reap_interval = Duration::from_secs(3600)).await;
    let m = h.manager.clone();
    let sb = m.create(CreateSandboxRequest::default()).await.unwrap();
    h.backend.kill_box(&sb.id);
    m.reap_once().await;
    let after = m.get(&sb.id).await.unwrap();
    assert_eq!(after.state, SandboxState::Error, "{after:?}");
    assert_eq!(
        after.reason.as_deref(),
        Some("the sandbox's processes exited")
    );
}

/// The pass reads a sandbox whose timeout has passed, then waits at an earlier sandbox while
/// the timeout is extended: the record as it is now does not call for removal.
#[tokio::test]
async fn a_pass_keeps_a_sandbox_whose_timeout_was_extended_after_it_read_the_records() {
    let h = Harness::with_config(None, |c| c.reap_interval = Duration::from_secs(3600)).await;
    let m = h.manager.clone();
    let first = m.create(CreateSandboxRequest::default()).await.unwrap();
    let second = m
        .create(CreateSandboxRequest {
            timeout_secs: Some(1),
            ..Default::default()
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let pass = pass_held_at(&h, &first.id).await;
    m.set_timeout(&second.id, 600).await.unwrap();
    h.backend.alive_gate.open();
    pass.await.unwrap();
    let after = m.get(&second.id).await.unwrap();
    assert_eq!(after.state, SandboxState::Running, "{after:?}");
    assert!(h.backend.is_alive_now(&second.id));

    // Without the extension, the same pass removes it.
    m.set_timeout(&second.id, 1).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    m.reap_once().await;
    assert!(
        m.get(&second.id).await.is_err(),
        "the expired sandbox is gone"
    );
    assert!(!h.backend.is_alive_now(&second.id));
}
