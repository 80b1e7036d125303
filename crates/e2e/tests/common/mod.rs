//! Shared pieces of the end-to-end tests.

#![allow(dead_code)]

pub mod contract;
pub mod escape;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use sandboxd_client::{Client, Error};
use sandboxd_e2e::{cgroup_dirs, Server, ServerOptions};
use sandboxd_types::{
    CreateSandboxRequest, ErrorCode, ExecRequest, ExecResult, PythonRequest, Resources, Sandbox,
    SandboxState,
};

/// The base template must exist: `scripts/test` builds it. Fail loudly otherwise.
pub fn require_base() {
    let t = sandboxd_e2e::templates_dir().join("base");
    assert!(
        t.join("ready").exists(),
        "the `base` template is missing in {}: run scripts/test, or `sandboxd template build base`",
        t.display()
    );
}

/// The server settings of the docker backend on the engine at `host` (a private dockerd's or
/// Podman service's `DOCKER_HOST`).
pub fn docker_env(host: &str) -> Vec<(String, String)> {
    vec![
        ("CONTAINER_DEPLOYMENT".into(), "docker".into()),
        ("DOCKER_HOST".into(), host.to_string()),
    ]
}

pub async fn server() -> Server {
    server_with(ServerOptions::default()).await
}

pub async fn server_with(opts: ServerOptions) -> Server {
    require_base();
    Server::start(opts).await.expect("start sandboxd serve")
}

pub fn create_req() -> CreateSandboxRequest {
    CreateSandboxRequest {
        sandbox_type: Some("base".into()),
        timeout_secs: Some(300),
        ..Default::default()
    }
}

pub fn with_limits(memory_mb: u64, pids: u64) -> CreateSandboxRequest {
    CreateSandboxRequest {
        resources: Some(Resources {
            memory_mb: Some(memory_mb),
            pids: Some(pids),
            cpus: None,
            disk_mb: None,
        }),
        ..create_req()
    }
}

/// A request to run `code` in the sandbox's Python interpreter.
pub fn py(code: &str) -> PythonRequest {
    PythonRequest {
        code: code.into(),
        timeout_ms: Some(60_000),
    }
}

/// Stop `server` with SIGTERM and check it exited cleanly, leaving none of `pids` alive and no
/// sandbox cgroup under its parent.
pub fn stop_leaves_nothing(server: &mut Server, pids: &[i32]) {
    let parent = server.cgroup_parent.clone();
    let status = server.stop().expect("server was running");
    assert!(status.success(), "server exited with {status}");
    let alive: Vec<_> = pids.iter().filter(|p| pid_alive(**p)).collect();
    assert!(
        alive.is_empty(),
        "sandbox processes outlived the server: {alive:?}"
    );
    let left = sandbox_cgroups(&parent);
    assert!(left.is_empty(), "sandbox cgroups left: {left:?}");
}

pub async fn sh(c: &Client, id: &str, script: &str) -> ExecResult {
    c.exec(
        id,
        &ExecRequest {
            shell: Some(script.into()),
            timeout_ms: Some(60_000),
            ..Default::default()
        },
    )
    .await
    .unwrap_or_else(|e| panic!("exec {script:?}: {e}"))
}

/// The warm (pooled) sandboxes, once there are exactly `n`; the pool fills in the background.
pub async fn warm(c: &Client, n: usize) -> Vec<Sandbox> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let warm: Vec<Sandbox> = c
            .list(&Default::default())
            .await
            .unwrap()
            .into_iter()
            .filter(|s| s.state == SandboxState::Warm)
            .collect();
        if warm.len() == n {
            return warm;
        }
        assert!(Instant::now() < deadline, "{} warm, want {n}", warm.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn api_code(e: &Error) -> Option<ErrorCode> {
    match e {
        Error::Api { code, .. } => Some(*code),
        _ => None,
    }
}

/// Child cgroups (one per sandbox) below `parent` in every hierarchy.
pub fn sandbox_cgroups(parent: &str) -> Vec<PathBuf> {
    cgroup_dirs(parent)
        .into_iter()
        .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten())
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect()
}

/// Pids in the cgroups of a server's sandboxes.
pub fn sandbox_pids(parent: &str) -> Vec<i32> {
    let mut pids: Vec<i32> = sandbox_cgroups(parent)
        .iter()
        .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
        .flat_map(|s| {
            s.lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect();
    pids.sort();
    pids.dedup();
    pids
}

pub fn pid_alive(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

/// Mount points on the host whose path contains `needle`.
pub fn host_mounts_containing(needle: &str) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

/// Whether a backend's runtime is installed; if not, says so and whether the test is skipped.
pub fn runtime_installed(backend: &str, program: &str) -> bool {
    let found = std::process::Command::new(program)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        let why =
            format!("{backend} backend: `{program}` is not installed (scripts/setup installs it)");
        assert!(
            std::env::var_os("SANDBOXD_REQUIRE_ALL_BACKENDS").is_none(),
            "{why}, and SANDBOXD_REQUIRE_ALL_BACKENDS is set"
        );
        eprintln!("SKIPPED: {why}");
    }
    found
}
