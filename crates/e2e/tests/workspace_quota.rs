//! The workspace quota (`SANDBOXD_WORKSPACE_MB`) on every backend: a session's `/workspace` is a
//! file system of its own, a fill ends in `ENOSPC` at the quota, the files are on the host
//! while a sandbox of the session lives, and they outlive the sandbox, a second sandbox of
//! the same session, and a SIGKILL of the server (whose next start unmounts what nothing
//! uses, leaving no loop device behind).

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sandboxd_e2e::{DockerDaemon, Server, ServerOptions};
use sandboxd_types::CreateSandboxRequest;

use common::{create_req, host_mounts_containing, sh};

const QUOTA_MB: u64 = 32;

fn options(mut env: Vec<(String, String)>) -> ServerOptions {
    env.push(("SANDBOXD_WORKSPACE_MB".into(), QUOTA_MB.to_string()));
    ServerOptions {
        env,
        ..Default::default()
    }
}

fn in_session(session: &str) -> CreateSandboxRequest {
    CreateSandboxRequest {
        session_id: Some(session.into()),
        ..create_req()
    }
}

/// The image file of a session (beside `<state>/workspaces`).
fn image(server: &Server, session: &str) -> PathBuf {
    let ws = server.workspace(session);
    ws.parent()
        .unwrap()
        .with_file_name("workspaces.images")
        .join(format!("{session}.ext4"))
}

/// Whether a host directory is a mount point of the host's mount namespace.
fn mounted(dir: &Path) -> bool {
    let needle = format!(" {} ", dir.display());
    !host_mounts_containing(&needle).is_empty()
}

/// The loop devices backed by `image`, once none is left or after five seconds (a device
/// goes away when its last mount does, which the kernel may finish a moment later).
async fn loop_devices(image: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = std::process::Command::new("losetup")
            .arg("-j")
            .arg(image)
            .output()
            .expect("losetup");
        let devices = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if devices.is_empty() || Instant::now() > deadline {
            return devices;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What every backend must do: a new workspace is empty and of the quota's size, a fill
/// stops at the quota with `ENOSPC` (the other files intact), the host sees the files while
/// the sandbox lives, and deleting the sandbox unmounts the workspace and keeps its image.
async fn fill_stops_at_the_quota(server: &Server, session: &str) {
    let c = server.client();
    let sb = c.create(&in_session(session)).await.unwrap();
    let r = sh(&c, &sb.id, "ls -A /workspace; df -k /workspace | tail -1").await;
    let mut lines = r.stdout.lines();
    let df = lines.next_back().unwrap_or_default().to_string();
    assert_eq!(lines.next(), None, "a new workspace is empty: {r:?}");
    let total_kb: u64 = df.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(
        // ext4's journal and inode tables take a part: 32 MiB leave 25 for files.
        (QUOTA_MB * 1024 * 3 / 4..=QUOTA_MB * 1024).contains(&total_kb),
        "{df}"
    );
    c.write_file(&sb.id, "kept.txt", b"kept\n".to_vec())
        .await
        .unwrap();
    let r = sh(
        &c,
        &sb.id,
        &format!(
            "dd if=/dev/zero of=/workspace/fill bs=1M count={} 2>&1; \
             echo size=$(stat -c %s /workspace/fill); cat /workspace/kept.txt",
            QUOTA_MB + 16
        ),
    )
    .await;
    assert!(r.stdout.contains("No space left"), "{r:?}");
    let size: u64 = r
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("size="))
        .unwrap()
        .parse()
        .unwrap();
    assert!(size <= QUOTA_MB << 20, "{size}");
    assert!(r.stdout.ends_with("kept\n"), "{r:?}");
    let ws = server.workspace(session);
    assert!(
        mounted(&ws),
        "the workspace is mounted while its sandbox lives"
    );
    assert_eq!(std::fs::read(ws.join("kept.txt")).unwrap(), b"kept\n");
    // Full, and then not: the space comes back.
    sh(&c, &sb.id, "rm /workspace/fill").await;
    c.write_file(&sb.id, "after.bin", vec![1; 1 << 20])
        .await
        .unwrap();

    c.delete(&sb.id).await.unwrap();
    assert!(
        !mounted(&ws),
        "unmounted once no sandbox of the session lives"
    );
    assert!(image(server, session).exists());
    assert_eq!(loop_devices(&image(server, session)).await, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_workspace_quota_holds_and_keeps_the_files() {
    let mut server = common::server_with(options(Vec::new())).await;
    fill_stops_at_the_quota(&server, "q").await;
    let c = server.client();
    let ws = server.workspace("q");

    // Two sandboxes of one session share its file system; the mount stays until the last goes.
    let a = c.create(&in_session("q")).await.unwrap();
    let b = c.create(&in_session("q")).await.unwrap();
    assert_eq!(
        sh(&c, &b.id, "cat /workspace/kept.txt").await.stdout,
        "kept\n"
    );
    sh(&c, &a.id, "echo from-a > /workspace/a.txt").await;
    c.delete(&a.id).await.unwrap();
    assert!(mounted(&ws));
    assert_eq!(
        sh(&c, &b.id, "cat /workspace/a.txt").await.stdout,
        "from-a\n"
    );
    // Another session has its own quota, untouched by this one's.
    let other = c.create(&in_session("other")).await.unwrap();
    sh(
        &c,
        &b.id,
        "dd if=/dev/zero of=/workspace/fill bs=1M count=64 2>/dev/null; true",
    )
    .await;
    let r = sh(
        &c,
        &other.id,
        "dd if=/dev/zero of=/workspace/f bs=1M count=8 2>&1 && echo wrote",
    )
    .await;
    assert!(r.stdout.ends_with("wrote\n"), "{r:?}");
    sh(&c, &b.id, "rm /workspace/fill").await;

    // The server killed: the mount outlives it with the files; the next start (in-memory
    // store: nothing to adopt) unmounts it and frees the loop device.
    server.kill_hard();
    assert!(mounted(&ws));
    assert_eq!(std::fs::read(ws.join("a.txt")).unwrap(), b"from-a\n");
    server.restart().await.unwrap();
    assert!(
        !mounted(&ws),
        "the restarted server unmounts what nothing uses"
    );
    assert!(!mounted(&server.workspace("other")));
    assert_eq!(loop_devices(&image(&server, "q")).await, "");
    assert_eq!(loop_devices(&image(&server, "other")).await, "");

    let c = server.client();
    let again = c.create(&in_session("q")).await.unwrap();
    let r = sh(&c, &again.id, "cat /workspace/kept.txt /workspace/a.txt").await;
    assert_eq!(r.stdout, "kept\nfrom-a\n");
    // A graceful stop unmounts too.
    server.stop();
    assert!(!mounted(&ws));
    assert_eq!(loop_devices(&image(&server, "q")).await, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_workspace_quota_holds() {
    if !common::runtime_installed("docker", "dockerd") {
        return;
    }
    let dockerd = DockerDaemon::start().expect("a private dockerd");
    let server = common::server_with(options(common::docker_env(&dockerd.host))).await;
    fill_stops_at_the_quota(&server, "qd").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gvisor_workspace_quota_holds() {
    if !common::runtime_installed("gvisor", "runsc") {
        return;
    }
    let server = common::server_with(options(vec![(
        "CONTAINER_DEPLOYMENT".into(),
        "gvisor".into(),
    )]))
    .await;
    fill_stops_at_the_quota(&server, "qg").await;
}
