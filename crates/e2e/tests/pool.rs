//! Warm pools on the native backend: `POOL_SIZE=2` warm sandboxes, handed out through
//! `POST /v1/sandboxes` with `from_pool`, refilled in the background, removed at shutdown.
//! Count-based: no timing assertions (the hand-out's server time is logged at debug level).

mod common;

use std::time::Duration;

use sandboxd_e2e::ServerOptions;
use sandboxd_types::{CreateSandboxRequest, SandboxState};

use common::{pid_alive, sandbox_cgroups, sandbox_pids, sh, warm};

#[tokio::test(flavor = "multi_thread")]
async fn pool_hands_out_warm_sandboxes_and_refills() {
    let mut server = common::server_with(ServerOptions {
        env: vec![("POOL_SIZE".into(), "2".into())],
        ..Default::default()
    })
    .await;
    let c = server.client();
    let first = warm(&c, 2).await;
    for w in &first {
        assert_eq!(w.expires_at_ms, None);
        assert_eq!(w.session_id, w.id);
    }
    let req = CreateSandboxRequest {
        from_pool: true,
        timeout_secs: Some(300),
        ..Default::default()
    };
    let mut handed = Vec::new();
    for _ in 0..2 {
        let sb = c.create(&req).await.unwrap();
        assert_eq!(sb.state, SandboxState::Running);
        assert!(sb.expires_at_ms.is_some());
        handed.push(sb);
    }
    let mut got: Vec<&str> = handed.iter().map(|s| s.id.as_str()).collect();
    let mut want: Vec<&str> = first.iter().map(|s| s.id.as_str()).collect();
    got.sort();
    want.sort();
    assert_eq!(got, want, "the hand-outs are the warm sandboxes");
    // A new sandbox's first command, for the pid it gets.
    let cold = c.create(&CreateSandboxRequest::default()).await.unwrap();
    let cold_pid: u32 = sh(&c, &cold.id, "echo $$")
        .await
        .stdout
        .trim()
        .parse()
        .unwrap();
    c.delete(&cold.id).await.unwrap();
    for sb in &handed {
        let r = sh(&c, &sb.id, "echo $$; echo hi > f; cat f; pwd").await;
        let (pid, rest) = r.stdout.split_once('\n').unwrap();
        assert_eq!(rest, "hi\n/workspace\n");
        // A warm sandbox ran its warm-up (`true`) before the hand-out, so the first command
        // handed to it gets the pid after a new sandbox's first one.
        assert_eq!(pid.parse::<u32>().unwrap(), cold_pid + 1, "{}", r.stdout);
    }
    // Refilled with new ones, and never more than two warm.
    let refilled = warm(&c, 2).await;
    assert!(refilled.iter().all(|w| !want.contains(&w.id.as_str())));
    tokio::time::sleep(Duration::from_millis(300)).await;
    warm(&c, 2).await;
    assert_eq!(c.list(&Default::default()).await.unwrap().len(), 4);

    // Shutdown removes the warm sandboxes with the others.
    let parent = server.cgroup_parent.clone();
    let pids = sandbox_pids(&parent);
    assert!(!pids.is_empty());
    let status = server.stop().expect("server was running");
    assert!(status.success(), "server exited with {status}");
    assert!(pids.iter().all(|p| !pid_alive(*p)));
    assert!(sandbox_cgroups(&parent).is_empty());
    // The cgroup parent goes with the last box (the next start makes it again).
    assert_eq!(
        sandboxd_e2e::cgroup_dirs(&parent),
        Vec::<std::path::PathBuf>::new()
    );
}
