//! Lifecycle, exec, Python and files through the HTTP API on the native backend.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use sandboxd_e2e::ServerOptions;
use sandboxd_types::{CreateSandboxRequest, ErrorCode, ExecRequest};

use common::{api_code, create_req, py, sh};

#[tokio::test(flavor = "multi_thread")]
async fn python_state_survives_between_calls() {
    let server = common::server().await;
    let c = server.client();
    let sb = c.create(&create_req()).await.unwrap();
    let r = c.python(&sb.id, &py("x = 21\nprint('set')")).await.unwrap();
    assert_eq!(r.stdout, "set\n");
    let r = c.python(&sb.id, &py("x * 2")).await.unwrap();
    assert_eq!(r.result.as_deref(), Some("42"));
    let r = c.python(&sb.id, &py("1/0")).await.unwrap();
    let err = r.error.expect("an exception");
    assert_eq!(err.ename, "ZeroDivisionError");
    assert!(err.traceback.join("\n").contains("ZeroDivisionError"));
    c.delete(&sb.id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn lifecycle_metadata_timeout_and_limits() {
    let server = common::server_with(ServerOptions {
        env: vec![("MAX_SANDBOX_INSTANCES".into(), "2".into())],
        ..Default::default()
    })
    .await;
    let c = server.client();
    let mut labelled = create_req();
    labelled.metadata = BTreeMap::from([("team".to_string(), "red".to_string())]);
    labelled.timeout_secs = Some(2);
    let a = c.create(&labelled).await.unwrap();
    let b = c.create(&create_req()).await.unwrap();
    assert_eq!(a.metadata["team"], "red");

    let err = c.create(&create_req()).await.unwrap_err();
    assert_eq!(api_code(&err), Some(ErrorCode::LimitReached), "{err}");

    let filter = BTreeMap::from([("team".to_string(), "red".to_string())]);
    let only_a: Vec<String> = c
        .list(&filter)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(only_a, vec![a.id.clone()]);
    assert_eq!(c.list(&BTreeMap::new()).await.unwrap().len(), 2);

    // b's lifetime is extended; a's 2 s pass and the reaper removes it.
    let b2 = c.set_timeout(&b.id, 600).await.unwrap();
    assert!(b2.expires_at_ms.unwrap() > b.expires_at_ms.unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match c.get(&a.id).await {
            Err(e) if api_code(&e) == Some(ErrorCode::NotFound) => break,
            Ok(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            other => panic!("sandbox a was not reaped: {other:?}"),
        }
    }
    assert_eq!(sh(&c, &b.id, "echo alive").await.stdout, "alive\n");
    // With a gone, there is room again.
    let d = c.create(&create_req()).await.unwrap();
    c.delete(&d.id).await.unwrap();
    c.delete(&b.id).await.unwrap();
    let err = c.get(&b.id).await.unwrap_err();
    assert_eq!(api_code(&err), Some(ErrorCode::NotFound));
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_clear_errors() {
    let server = common::server().await;
    let c = server.client();
    let unknown = CreateSandboxRequest {
        sandbox_type: Some("no-such-type".into()),
        ..Default::default()
    };
    let err = c.create(&unknown).await.unwrap_err();
    assert_eq!(api_code(&err), Some(ErrorCode::UnknownType), "{err}");
    let mut bad_env = create_req();
    bad_env.env.insert("A=B".into(), "x".into());
    assert_eq!(
        api_code(&c.create(&bad_env).await.unwrap_err()),
        Some(ErrorCode::InvalidRequest)
    );
    let err = c.get("sb-0000000000000000").await.unwrap_err();
    assert_eq!(api_code(&err), Some(ErrorCode::NotFound));
    let err = c.get("../../etc").await.unwrap_err();
    assert_eq!(api_code(&err), Some(ErrorCode::NotFound));
    // Nothing was left half-made by the failures.
    assert!(c.list(&BTreeMap::new()).await.unwrap().is_empty());
}

/// The base template's `LANG` (C.UTF-8) comes from a locale archive, one file for the C
/// library to map at each program's `setlocale`, and loads without complaint.
#[tokio::test(flavor = "multi_thread")]
async fn base_locale_comes_from_an_archive() {
    let server = common::server().await;
    let c = server.client();
    let sb = c.create(&create_req()).await.unwrap();
    let r = sh(
        &c,
        &sb.id,
        "echo $LANG; localedef --list-archive; locale 2>&1 >/dev/null",
    )
    .await;
    assert_eq!(r.stdout, "C.UTF-8\nC.utf8\n", "{r:?}");
    c.delete(&sb.id).await.unwrap();
}

/// A program that cannot run is the agent's refusal, named as such (not an unreachable agent),
/// buffered and streamed alike, and the sandbox goes on serving.
#[tokio::test(flavor = "multi_thread")]
async fn a_program_that_cannot_run_is_refused_clearly() {
    let server = common::server().await;
    let c = server.client();
    let sb = c.create(&create_req()).await.unwrap();
    let missing = ExecRequest {
        cmd: Some(vec!["/no/such/program".into()]),
        ..Default::default()
    };
    for _ in 0..3 {
        let err = c.exec(&sb.id, &missing).await.unwrap_err();
        assert_eq!(api_code(&err), Some(ErrorCode::AgentFailed), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("cannot run /no/such/program") && !text.contains("unreachable"),
            "{text}"
        );
        assert_eq!(sh(&c, &sb.id, "echo still").await.stdout, "still\n");
    }
    let mut events = c.exec_stream(&sb.id, &missing).await.unwrap();
    match futures::StreamExt::next(&mut events).await {
        Some(Ok(sandboxd_types::ExecEvent::Error { error })) => {
            assert!(error.message.contains("cannot run"), "{error:?}")
        }
        other => panic!("{other:?}"),
    }
    drop(events);
    assert_eq!(sh(&c, &sb.id, "echo after").await.stdout, "after\n");
    c.delete(&sb.id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn files_round_trip_and_stay_confined() {
    let server = common::server().await;
    let c = server.client();
    let sb = c.create(&create_req()).await.unwrap();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    c.write_file(&sb.id, "dir/data.bin", data.clone())
        .await
        .unwrap();
    assert_eq!(c.read_file(&sb.id, "dir/data.bin").await.unwrap(), data);
    // The file is in the session's workspace on the host.
    let on_host = server
        .state
        .path()
        .join("workspaces")
        .join(&sb.session_id)
        .join("dir/data.bin");
    assert_eq!(std::fs::read(&on_host).unwrap(), data);
    assert!(c.mkdir(&sb.id, "a/b/c", true).await.unwrap());
    let moved = c
        .move_path(&sb.id, "dir/data.bin", "a/b/c/d.bin")
        .await
        .unwrap();
    assert_eq!(moved.path, "/workspace/a/b/c/d.bin");
    let listing = c.list_files(&sb.id, "a", Some(3)).await.unwrap();
    assert!(listing.iter().any(|e| e.name == "d.bin"));
    c.remove(&sb.id, "a", true).await.unwrap();
    assert_eq!(
        api_code(&c.stat(&sb.id, "a").await.unwrap_err()),
        Some(ErrorCode::NotFound)
    );

    for escape in [
        "../../etc/passwd",
        "/etc/passwd",
        "../workspace/../etc/hostname",
    ] {
        let err = c.read_file(&sb.id, escape).await.unwrap_err();
        assert_eq!(
            api_code(&err),
            Some(ErrorCode::PathOutsideSandbox),
            "{escape}: {err}"
        );
    }
    // A symlink made inside the sandbox that points out of /workspace is refused too.
    sh(
        &c,
        &sb.id,
        "ln -s /etc /workspace/out && ln -s ../../etc /workspace/rel",
    )
    .await;
    for p in ["out/passwd", "rel/passwd"] {
        let err = c.read_file(&sb.id, p).await.unwrap_err();
        assert_eq!(
            api_code(&err),
            Some(ErrorCode::PathOutsideSandbox),
            "{p}: {err}"
        );
        let err = c.write_file(&sb.id, p, b"x".to_vec()).await.unwrap_err();
        assert_eq!(
            api_code(&err),
            Some(ErrorCode::PathOutsideSandbox),
            "{p}: {err}"
        );
    }
    c.delete(&sb.id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn bearer_token_is_required() {
    let server = common::server_with(ServerOptions {
        token: Some("s3cret-token".into()),
        ..Default::default()
    })
    .await;
    let anonymous = sandboxd_client::Client::new(server.url.clone());
    assert!(anonymous.health().await.is_ok(), "health needs no token");
    let err = anonymous.list(&BTreeMap::new()).await.unwrap_err();
    assert_eq!(api_code(&err), Some(ErrorCode::Unauthorized));
    let wrong = sandboxd_client::Client::new(server.url.clone()).with_token("s3cret-tokeN");
    assert_eq!(
        api_code(&wrong.create(&create_req()).await.unwrap_err()),
        Some(ErrorCode::Unauthorized)
    );
    let c = server.client();
    let sb = c.create(&create_req()).await.unwrap();
    c.delete(&sb.id).await.unwrap();
}

/// Pause freezes a sandbox's processes (a background loop stops ticking, requests are refused
/// with `not_running`); resume lets them run on with their state (Python variables, the loop);
/// a paused sandbox can be deleted and leaves nothing behind.
#[tokio::test(flavor = "multi_thread")]
async fn pause_freezes_and_resume_continues() {
    let server = common::server().await;
    let c = server.client();
    let sb = c.create(&create_req()).await.unwrap();
    c.python(&sb.id, &py("kept = 'across the pause'"))
        .await
        .unwrap();
    // A loop that appends a line every 20 ms, detached from the exec.
    let r = sh(
        &c,
        &sb.id,
        "nohup sh -c 'while :; do echo t >> /workspace/ticks; sleep 0.02; done' >/dev/null 2>&1 &",
    )
    .await;
    assert_eq!(r.exit_code, Some(0), "{r:?}");
    let ticks = || {
        std::fs::read_to_string(server.workspace(&sb.id).join("ticks"))
            .unwrap_or_default()
            .lines()
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while ticks() < 3 {
        assert!(Instant::now() < deadline, "the loop does not tick");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let paused = c.pause(&sb.id).await.unwrap();
    assert_eq!(paused.state, sandboxd_types::SandboxState::Paused);
    // Pausing again is no error.
    assert_eq!(
        c.pause(&sb.id).await.unwrap().state,
        sandboxd_types::SandboxState::Paused
    );
    assert_eq!(
        c.get(&sb.id).await.unwrap().state,
        sandboxd_types::SandboxState::Paused
    );
    let frozen_at = ticks();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(ticks(), frozen_at, "the loop ran while paused");
    let truth = ExecRequest {
        cmd: Some(vec!["true".into()]),
        ..Default::default()
    };
    let err = c.exec(&sb.id, &truth).await.unwrap_err();
    assert_eq!(api_code(&err), Some(ErrorCode::NotRunning), "{err}");

    let resumed = c.resume(&sb.id).await.unwrap();
    assert_eq!(resumed.state, sandboxd_types::SandboxState::Running);
    let deadline = Instant::now() + Duration::from_secs(10);
    while ticks() <= frozen_at {
        assert!(
            Instant::now() < deadline,
            "the loop did not run on after resume"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = c.python(&sb.id, &py("kept")).await.unwrap();
    assert_eq!(r.result.as_deref(), Some("'across the pause'"));
    // Resuming a running sandbox is no error either.
    c.resume(&sb.id).await.unwrap();

    // Deleting a paused sandbox kills its frozen processes too.
    c.pause(&sb.id).await.unwrap();
    c.delete(&sb.id).await.unwrap();
    assert!(common::sandbox_pids(&server.cgroup_parent).is_empty());
    assert!(common::sandbox_cgroups(&server.cgroup_parent).is_empty());
    let err = c.resume(&sb.id).await.unwrap_err();
    assert_eq!(api_code(&err), Some(ErrorCode::NotFound), "{err}");
}
