//! A server killed with SIGKILL and started again leaves no orphaned sandbox processes, mounts
//! or cgroups, and keeps the workspaces' files.

mod common;

use std::time::{Duration, Instant};

use common::{create_req, host_mounts_containing, pid_alive, sandbox_cgroups, sandbox_pids, sh};

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_and_restart_leaves_nothing_behind() {
    let mut server = common::server().await;
    let c = server.client();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let sb = c.create(&create_req()).await.unwrap();
        sh(
            &c,
            &sb.id,
            "echo kept > /workspace/kept.txt; (sleep 1000 &) ; true",
        )
        .await;
        ids.push(sb);
    }
    let parent = server.cgroup_parent.clone();
    let pids = sandbox_pids(&parent);
    assert!(
        pids.len() >= 6,
        "expected agents and sleeps in the cgroups: {pids:?}"
    );
    assert!(!sandbox_cgroups(&parent).is_empty());

    server.kill_hard();
    // The crash itself kills nothing: the sandboxes are orphans now.
    assert!(
        pids.iter().all(|p| pid_alive(*p)),
        "sandboxes died with the server"
    );

    server.restart().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while pids.iter().any(|p| pid_alive(*p)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let alive: Vec<_> = pids.iter().filter(|p| pid_alive(**p)).collect();
    assert!(alive.is_empty(), "orphaned sandbox processes: {alive:?}");
    assert!(
        sandbox_cgroups(&parent).is_empty(),
        "orphaned cgroups: {:?}",
        sandbox_cgroups(&parent)
    );
    let state = server.state.path().to_string_lossy().into_owned();
    assert!(
        host_mounts_containing(&state).is_empty(),
        "host mounts left"
    );
    let boxes = server.state.path().join("native/boxes");
    let left: Vec<_> = std::fs::read_dir(&boxes)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "box directories left: {left:?}");
    // The user's files survive in the workspaces.
    for sb in &ids {
        let f = server
            .state
            .path()
            .join("workspaces")
            .join(&sb.session_id)
            .join("kept.txt");
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "kept\n");
    }
    // And the restarted server works.
    let c = server.client();
    let sb = c.create(&create_req()).await.unwrap();
    assert_eq!(sh(&c, &sb.id, "echo ok").await.stdout, "ok\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn graceful_stop_removes_every_sandbox() {
    let mut server = common::server().await;
    let c = server.client();
    for _ in 0..2 {
        let sb = c.create(&create_req()).await.unwrap();
        sh(&c, &sb.id, "(sleep 1000 &); true").await;
    }
    let pids = sandbox_pids(&server.cgroup_parent);
    assert!(!pids.is_empty());
    common::stop_leaves_nothing(&mut server, &pids);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sandbox_that_dies_is_reported_and_can_be_removed() {
    let server = common::server().await;
    let c = server.client();
    let sb = c.create(&create_req()).await.unwrap();
    let pids = sandbox_pids(&server.cgroup_parent);
    assert!(!pids.is_empty());
    for p in &pids {
        // SAFETY: kill(2) with a pid read from the sandbox's own cgroup.
        unsafe { libc::kill(*p, libc::SIGKILL) };
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let dead = loop {
        let s = c.get(&sb.id).await.unwrap();
        if s.state == sandboxd_types::SandboxState::Error || Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(dead.state, sandboxd_types::SandboxState::Error, "{dead:?}");
    assert!(dead.reason.is_some());
    let err = c
        .exec(
            &sb.id,
            &sandboxd_types::ExecRequest {
                cmd: Some(vec!["true".into()]),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(
        common::api_code(&err),
        Some(sandboxd_types::ErrorCode::NotRunning)
    );
    c.delete(&sb.id).await.unwrap();
    assert!(sandbox_cgroups(&server.cgroup_parent).is_empty());
}
