//! Faults a real `sandboxd serve` must survive on the native backend: SIGKILL of the server in
//! the middle of creates, execs (buffered and streaming) and uploads, several at once, with the
//! in-memory store (everything cleaned up at the next start) and with Redis (running sandboxes
//! adopted); the guest agent killed inside a sandbox, on every backend (reported, then
//! restarted over the same workspace); and a full disk under the state and workspace directories (507, nothing
//! corrupted, the server restarts on it).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use sandboxd_e2e::{Server, ServerOptions};
use sandboxd_store::testing::RedisServer;
use sandboxd_types::{ErrorCode, ExecEvent, ExecRequest, Sandbox, SandboxState};
use tokio::task::JoinHandle;

use common::{api_code, create_req, host_mounts_containing, pid_alive, sandbox_cgroups, sh};

/// `len` bytes that depend on `seed` and on their offset, so that a shifted, truncated or
/// mixed-up file never compares equal.
fn pattern(seed: u32, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// Every process on the host whose cgroup (in any hierarchy) lies below `parent`, read from
/// `/proc/<pid>/cgroup`: the sandboxes' agents and inits and whatever they started, including
/// processes that a cgroup listing would miss (a box half made when the server died).
fn procs_under(parent: &str) -> Vec<i32> {
    let needle = format!("/{parent}/");
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let cg = std::fs::read_to_string(e.path().join("cgroup")).unwrap_or_default();
        if cg.contains(&needle) && pid_alive(pid) {
            out.push(pid);
        }
    }
    out
}

/// Wait up to a minute for no process to be left below `parent`; the ones still there.
async fn wait_no_procs(parent: &str) -> Vec<i32> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = procs_under(parent);
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Files left by writes that never finished (the agent's temporary names), below `dir`.
fn temp_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() && !p.is_symlink() {
            out.extend(temp_files(&p));
        } else if e
            .file_name()
            .to_string_lossy()
            .starts_with(".sandboxd-write-")
        {
            out.push(p);
        }
    }
    out
}

/// A sandbox of [`in_flight`] and the files it had complete before the kill.
struct Prepared {
    sandbox: Sandbox,
    files: Vec<(&'static str, Vec<u8>)>,
}

/// Operations running when the server is killed.
struct InFlight {
    prepared: Vec<Prepared>,
    tasks: Vec<JoinHandle<()>>,
    /// How many upload bytes had left the client at the kill.
    uploaded: Vec<Arc<AtomicUsize>>,
}

/// Three sandboxes with completed files (`done.bin`, 1 MiB; `big.bin`, the old contents of the
/// file being replaced), then, all at once: in each a buffered exec of a long command, a
/// streaming exec printing away, and an upload replacing `big.bin` with an endless slow body;
/// plus six creates. Returns once every exec streams or runs and every upload is under way.
async fn in_flight(server: &Server) -> InFlight {
    let c = server.client();
    let mut prepared = Vec::new();
    for i in 0..3u32 {
        let sb = c.create(&create_req()).await.unwrap();
        let files = vec![
            ("done.bin", pattern(i, (1 << 20) + i as usize)),
            ("dir/small.txt", format!("small {i}\n").into_bytes()),
            ("big.bin", pattern(100 + i, 256 << 10)),
        ];
        for (path, data) in &files {
            c.write_file(&sb.id, path, data.clone()).await.unwrap();
        }
        prepared.push(Prepared { sandbox: sb, files });
    }
    let mut tasks = Vec::new();
    let mut uploaded = Vec::new();
    let mut streaming = Vec::new();
    for (i, p) in prepared.iter().enumerate() {
        let id = p.sandbox.id.clone();
        let c1 = c.clone();
        let id1 = id.clone();
        tasks.push(tokio::spawn(async move {
            let _ = c1
                .exec(
                    &id1,
                    &ExecRequest {
                        shell: Some("sleep 1000".into()),
                        ..Default::default()
                    },
                )
                .await;
        }));
        let (tx, rx) = tokio::sync::oneshot::channel();
        streaming.push(rx);
        let c2 = c.clone();
        let id2 = id.clone();
        tasks.push(tokio::spawn(async move {
            let req = ExecRequest {
                shell: Some("while :; do echo tick; sleep 0.05; done".into()),
                ..Default::default()
            };
            let mut tx = Some(tx);
            if let Ok(mut events) = c2.exec_stream(&id2, &req).await {
                while let Some(Ok(ev)) = events.next().await {
                    if matches!(ev, ExecEvent::Stdout { .. }) {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(());
                        }
                    }
                }
            }
        }));
        let sent = Arc::new(AtomicUsize::new(0));
        uploaded.push(sent.clone());
        let c3 = c.clone();
        let seed = 200 + i as u32;
        tasks.push(tokio::spawn(async move {
            // 64 KiB every 10 ms, without end: the upload is cut by the kill, never finished.
            let body = futures::stream::unfold(0u32, move |n| {
                let sent = sent.clone();
                async move {
                    if n > 0 {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    let chunk = pattern(seed + n, 64 << 10);
                    sent.fetch_add(chunk.len(), Ordering::SeqCst);
                    Some((Ok::<_, std::io::Error>(chunk), n + 1))
                }
            });
            let _ = c3.write_file_stream(&id, "big.bin", None, body).await;
        }));
    }
    for rx in streaming {
        tokio::time::timeout(Duration::from_secs(60), rx)
            .await
            .expect("a streaming exec printed nothing within 60 s")
            .expect("the streaming exec ended before printing");
    }
    // Several MiB on their way: well past the agent's first chunk, so it writes to the
    // temporary file.
    let deadline = Instant::now() + Duration::from_secs(60);
    while uploaded.iter().any(|u| u.load(Ordering::SeqCst) < 4 << 20) {
        assert!(Instant::now() < deadline, "the uploads did not get going");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..6 {
        let c4 = c.clone();
        tasks.push(tokio::spawn(async move {
            let _ = c4.create(&create_req()).await;
        }));
    }
    // Let the creates reach the backend (a box takes some 10-50 ms to make here): some are
    // half made when the kill comes.
    tokio::time::sleep(Duration::from_millis(30)).await;
    InFlight {
        prepared,
        tasks,
        uploaded,
    }
}

/// The completed files of `prepared` are in its workspace on the host, byte for byte, and no
/// half-written file is left under any name.
fn files_intact(server: &Server, prepared: &[Prepared]) {
    for p in prepared {
        let ws = server.workspace(&p.sandbox.session_id);
        for (path, data) in &p.files {
            let got = std::fs::read(ws.join(path)).unwrap();
            assert!(
                got == *data,
                "{}: {path} is not what was written ({} bytes, want {})",
                p.sandbox.id,
                got.len(),
                data.len()
            );
        }
        let temps = temp_files(&ws);
        assert!(temps.is_empty(), "half-written uploads left: {temps:?}");
    }
}

/// Nothing of the server's sandboxes is left on the host: no process, cgroup, mount or box
/// directory.
async fn nothing_left(server: &Server) {
    let left = wait_no_procs(&server.cgroup_parent).await;
    assert!(left.is_empty(), "orphaned sandbox processes: {left:?}");
    let cgroups = sandbox_cgroups(&server.cgroup_parent);
    assert!(cgroups.is_empty(), "orphaned cgroups: {cgroups:?}");
    let state = server.state.path().to_string_lossy().into_owned();
    let mounts = host_mounts_containing(&state);
    assert!(mounts.is_empty(), "host mounts left: {mounts:?}");
    let boxes: Vec<_> = std::fs::read_dir(server.state.path().join("native/boxes"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(boxes.is_empty(), "box directories left: {boxes:?}");
}

/// The in-memory store forgets everything with the process: the next start kills and removes
/// every box, whatever it was doing, and the workspaces keep every completed file.
#[tokio::test(flavor = "multi_thread")]
async fn sigkill_in_flight_then_restart_cleans_up_and_keeps_files() {
    let mut server = common::server().await;
    let flight = in_flight(&server).await;
    let before = procs_under(&server.cgroup_parent);
    assert!(before.len() >= 9, "agents and commands: {before:?}");

    server.kill_hard();
    for t in &flight.tasks {
        t.abort();
    }
    let sent: Vec<usize> = flight
        .uploaded
        .iter()
        .map(|u| u.load(Ordering::SeqCst))
        .collect();
    server.restart().await.unwrap();
    nothing_left(&server).await;
    assert!(before.iter().all(|p| !pid_alive(*p)));
    // The half-done uploads (several MiB each) left `big.bin` as it was.
    files_intact(&server, &flight.prepared);
    eprintln!("upload bytes sent at the kill: {sent:?}");

    let c = server.client();
    assert!(c.list(&Default::default()).await.unwrap().is_empty());
    let sb = c.create(&create_req()).await.unwrap();
    assert_eq!(sh(&c, &sb.id, "echo ok").await.stdout, "ok\n");
    c.delete(&sb.id).await.unwrap();
    nothing_left(&server).await;
}

/// With Redis the records outlive the process: the next start adopts every sandbox that was
/// running (they answer, with their files), drops the ones caught half-created (their boxes
/// removed), and leaves no process or cgroup that no record owns.
#[tokio::test(flavor = "multi_thread")]
async fn sigkill_in_flight_with_redis_adopts_running_and_removes_half_made() {
    let redis = RedisServer::start();
    let mut server = common::server_with(ServerOptions {
        env: vec![
            ("REDIS_ENABLED".into(), "true".into()),
            ("REDIS_SERVER".into(), "127.0.0.1".into()),
            ("REDIS_PORT".into(), redis.port.to_string()),
            (
                "SANDBOXD_REDIS_PREFIX".into(),
                format!("e2e-faults-{}", std::process::id()),
            ),
        ],
        ..Default::default()
    })
    .await;
    let flight = in_flight(&server).await;
    server.kill_hard();
    for t in &flight.tasks {
        t.abort();
    }
    server.restart().await.unwrap();
    let c = server.client();

    let listed = c.list(&Default::default()).await.unwrap();
    for p in &flight.prepared {
        let s = listed
            .iter()
            .find(|s| s.id == p.sandbox.id)
            .unwrap_or_else(|| panic!("{} was not adopted: {listed:?}", p.sandbox.id));
        assert_eq!(s.state, SandboxState::Running, "{s:?}");
    }
    // Every sandbox the store kept is running and answers; nothing else has a box.
    for s in &listed {
        assert_eq!(s.state, SandboxState::Running, "{s:?}");
        assert_eq!(sh(&c, &s.id, "echo alive").await.stdout, "alive\n", "{s:?}");
    }
    let boxes: std::collections::BTreeSet<String> = sandbox_cgroups(&server.cgroup_parent)
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    let ids: std::collections::BTreeSet<String> = listed.iter().map(|s| s.id.clone()).collect();
    assert_eq!(
        boxes, ids,
        "cgroups of the sandboxes the store does not know"
    );
    files_intact(&server, &flight.prepared);
    for p in &flight.prepared {
        for (path, data) in &p.files {
            let back = c.read_file(&p.sandbox.id, path).await.unwrap();
            assert!(back[..] == data[..], "{path} read back differs");
        }
    }
    for s in &listed {
        c.delete(&s.id).await.unwrap();
    }
    nothing_left(&server).await;
}

/// The host pid of a sandbox's PID 1 (the guest agent on native), found in its cgroup by the
/// last field of `NSpid`.
fn agent_host_pid(parent: &str) -> Option<i32> {
    procs_under(parent).into_iter().find(|pid| {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("NSpid:"))
            .and_then(|f| f.split_whitespace().last().map(|l| l == "1"))
            .unwrap_or(false)
    })
}

/// Wait up to a minute for a sandbox to be reported `error`.
async fn wait_error(c: &sandboxd_client::Client, id: &str) -> Sandbox {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = c.get(id).await.unwrap();
        if s.state == SandboxState::Error {
            return s;
        }
        assert!(Instant::now() < deadline, "still {s:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The agent killed with SIGKILL: the sandbox is reported `error` with a reason, refuses work
/// with `not_running`, and `POST /restart` brings it back with the same id over the same
/// workspace, in a new box; a running sandbox restarts too, and a deleted one cannot. `kill`
/// kills the agent of a sandbox from the host, as the backend allows.
async fn killed_agent_is_reported_and_restarted_on(server: &Server, kill: &dyn Fn(&str)) {
    let c = server.client();
    let sb = c.create(&create_req()).await.unwrap();
    let kept = pattern(7, 300_000);
    c.write_file(&sb.id, "kept.bin", kept.clone())
        .await
        .unwrap();
    c.python(&sb.id, &common::py("x = 41")).await.unwrap();
    kill(&sb.id);

    let dead = wait_error(&c, &sb.id).await;
    let reason = dead.reason.clone().expect("a reason");
    assert!(reason.contains("exited"), "{reason}");
    let e = c
        .exec(
            &sb.id,
            &ExecRequest {
                shell: Some("true".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(api_code(&e), Some(ErrorCode::NotRunning), "{e}");

    let back = c.restart(&sb.id).await.unwrap();
    assert_eq!(
        (back.id.as_str(), back.state, back.reason.as_deref()),
        (sb.id.as_str(), SandboxState::Running, None)
    );
    assert_eq!(back.session_id, sb.session_id);
    assert_eq!(back.expires_at_ms, sb.expires_at_ms);
    assert_eq!(
        &c.read_file(&sb.id, "kept.bin").await.unwrap()[..],
        &kept[..]
    );
    assert_eq!(sh(&c, &sb.id, "echo back").await.stdout, "back\n");
    // A new box: the interpreter starts afresh.
    let r = c
        .python(&sb.id, &common::py("'x' in globals()"))
        .await
        .unwrap();
    assert_eq!(r.result.as_deref(), Some("False"));

    // A running sandbox restarts too (a fresh box), and says so in its processes.
    sh(&c, &sb.id, "sleep 1000 >/dev/null 2>&1 &").await;
    c.restart(&sb.id).await.unwrap();
    let r = sh(&c, &sb.id, "pgrep -x sleep || echo none").await;
    assert_eq!(r.stdout, "none\n", "{r:?}");
    assert_eq!(
        &c.read_file(&sb.id, "kept.bin").await.unwrap()[..],
        &kept[..]
    );

    c.delete(&sb.id).await.unwrap();
    let e = c.restart(&sb.id).await.unwrap_err();
    assert_eq!(api_code(&e), Some(ErrorCode::NotFound), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_agent_is_reported_and_restarted() {
    let server = common::server().await;
    let parent = server.cgroup_parent.clone();
    killed_agent_is_reported_and_restarted_on(&server, &|_| {
        let agent = agent_host_pid(&parent).expect("the agent's host pid");
        // SAFETY: kill(2) of the pid found as PID 1 in this test server's sandbox's cgroup.
        assert_eq!(unsafe { libc::kill(agent, libc::SIGKILL) }, 0);
    })
    .await;
    assert!(wait_no_procs(&server.cgroup_parent).await.is_empty());
    assert!(sandbox_cgroups(&server.cgroup_parent).is_empty());
}

/// On docker the agent is the container's PID 1: the engine's `kill` is its SIGKILL.
#[tokio::test(flavor = "multi_thread")]
async fn killed_agent_is_reported_and_restarted_on_docker() {
    if !common::runtime_installed("docker", "dockerd") {
        return;
    }
    let dockerd = sandboxd_e2e::DockerDaemon::start().expect("a private dockerd");
    let server = common::server_with(ServerOptions {
        env: common::docker_env(&dockerd.host),
        ..Default::default()
    })
    .await;
    let host = dockerd.host.clone();
    killed_agent_is_reported_and_restarted_on(&server, &|id| {
        let docker = |args: &[&str]| {
            let out = Command::new("docker")
                .arg("-H")
                .arg(&host)
                .args(args)
                .output()
                .unwrap();
            assert!(out.status.success(), "docker {args:?}: {out:?}");
            String::from_utf8(out.stdout).unwrap()
        };
        let name = format!("name={id}");
        let container = docker(&["ps", "-q", "--filter", &name]);
        assert_eq!(container.lines().count(), 1, "{container:?}");
        docker(&["kill", "--signal", "KILL", container.trim()]);
    })
    .await;
    assert_eq!(dockerd.containers(), Vec::<String>::new());
}

/// On gvisor the agent is the init of the sandbox's container inside gVisor's kernel: runsc's
/// `kill` sends it SIGKILL there.
#[tokio::test(flavor = "multi_thread")]
async fn killed_agent_is_reported_and_restarted_on_gvisor() {
    if !common::runtime_installed("gvisor", "runsc") {
        return;
    }
    let server = common::server_with(ServerOptions {
        env: vec![("CONTAINER_DEPLOYMENT".into(), "gvisor".into())],
        ..Default::default()
    })
    .await;
    let root = server.state.path().join("gvisor/runsc");
    killed_agent_is_reported_and_restarted_on(&server, &|id| {
        let out = Command::new("runsc")
            .arg("--root")
            .arg(&root)
            .args(["kill", id, "KILL"])
            .output()
            .unwrap();
        assert!(out.status.success(), "runsc kill: {out:?}");
    })
    .await;
}

/// A small ext4 file system on a loop device, mounted on a temporary directory and unmounted
/// (with its image removed) on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn new(mib: u64) -> SmallDisk {
        let dir = tempfile::Builder::new()
            .prefix("sandboxd-e2e-disk-")
            .tempdir()
            .unwrap();
        let img = dir.path().join("disk.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(mib << 20)
            .unwrap();
        // No blocks reserved for root: the server runs as root, and the disk is to be full
        // for it too.
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0"])
            .arg(&img));
        std::fs::create_dir(dir.path().join("mnt")).unwrap();
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&img)
            .arg(dir.path().join("mnt")));
        SmallDisk { dir }
    }

    fn mnt(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(self.mnt())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Something still holds it: detach it, so the loop device goes once released.
            let _ = Command::new("umount").arg("-l").arg(self.mnt()).status();
        }
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Fill the workspace of `id` (and so the disk under it) from inside the sandbox.
async fn fill(c: &sandboxd_client::Client, id: &str) {
    let r = sh(
        c,
        id,
        "dd if=/dev/zero of=/workspace/fill bs=64k 2>&1; sync; df -k /workspace | tail -1",
    )
    .await;
    assert!(
        r.stdout.contains("No space left on device"),
        "the disk did not fill: {r:?}"
    );
}

/// Use up what a full disk still keeps for metadata (ext4 holds back some blocks for it, so
/// a directory can still be made when data no longer fit): directories, then empty files, in
/// `dir`, until the file system refuses.
fn fill_metadata(dir: &Path, round: u32) {
    std::fs::create_dir_all(dir).unwrap();
    let mut n = 0;
    let refused = |r: std::io::Result<()>| match r {
        Ok(()) => false,
        Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => true,
        Err(e) => panic!("filling {}: {e}", dir.display()),
    };
    while !refused(std::fs::create_dir(dir.join(format!("d{round}-{n}")))) {
        n += 1;
        assert!(n < 1_000_000, "the disk does not fill");
    }
    while !refused(std::fs::File::create(dir.join(format!("f{round}-{n}"))).map(drop)) {
        n += 1;
        assert!(n < 1_000_000, "the disk does not fill");
    }
}

/// `host`: the directory the server's state lies in, which no message may name.
fn assert_disk_full(e: &sandboxd_client::Error, what: &str, host: &Path) {
    assert_eq!(
        api_code(e),
        Some(ErrorCode::InsufficientStorage),
        "{what}: {e}"
    );
    assert!(
        matches!(e, sandboxd_client::Error::Api { status: 507, .. }),
        "{what}: {e:?}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("disk is full") || msg.contains("No space left"),
        "{what}: the message does not say the disk is full: {msg}"
    );
    assert!(
        !msg.contains(&*host.to_string_lossy()),
        "{what}: the message names a host path: {msg}"
    );
}

/// The state and workspace directories on a 24 MiB disk, filled from inside a sandbox: an
/// upload and a create answer 507 `insufficient_storage` saying the disk is full, the file an
/// upload would have replaced keeps its old bytes, the server and its sandboxes go on working,
/// and after a SIGKILL on the full disk the server starts again on that state, cleans up, and
/// works once space is freed.
#[tokio::test(flavor = "multi_thread")]
async fn full_disk_gives_507_and_corrupts_nothing() {
    let disk = SmallDisk::new(24);
    let state = disk.mnt().join("state");
    let mut server = common::server_with(ServerOptions {
        env: vec![("SANDBOXD_STATE_DIR".into(), state.display().to_string())],
        ..Default::default()
    })
    .await;
    let c = server.client();
    let sb = c.create(&create_req()).await.unwrap();
    let ws = state.join("workspaces").join(&sb.session_id);
    let kept = pattern(3, 1 << 20);
    c.write_file(&sb.id, "kept.bin", kept.clone())
        .await
        .unwrap();
    fill(&c, &sb.id).await;
    let more = disk.mnt().join("more");
    fill_metadata(&more, 1);

    let e = c
        .write_file(&sb.id, "new.bin", pattern(4, 2 << 20))
        .await
        .unwrap_err();
    assert_disk_full(&e, "a new file", &disk.mnt());
    assert!(!ws.join("new.bin").exists());
    let e = c
        .write_file(&sb.id, "kept.bin", pattern(5, 2 << 20))
        .await
        .unwrap_err();
    assert_disk_full(&e, "replacing a file", &disk.mnt());
    assert!(std::fs::read(ws.join("kept.bin")).unwrap() == kept);
    assert!(temp_files(&ws).is_empty(), "{:?}", temp_files(&ws));
    let e = c.create(&create_req()).await.unwrap_err();
    assert_disk_full(&e, "a create", &disk.mnt());
    // On a workspace that exists (a session's): the box's own directories do not fit.
    let e = c
        .create(&sandboxd_types::CreateSandboxRequest {
            session_id: Some(sb.session_id.clone()),
            ..create_req()
        })
        .await
        .unwrap_err();
    assert_disk_full(&e, "a create on an existing workspace", &disk.mnt());

    // Still serving, and the sandbox still works.
    c.health().await.unwrap();
    assert_eq!(sh(&c, &sb.id, "echo alive").await.stdout, "alive\n");
    assert_eq!(
        &c.read_file(&sb.id, "kept.bin").await.unwrap()[..],
        &kept[..]
    );
    assert_eq!(c.list(&Default::default()).await.unwrap().len(), 1);

    // A crash on the full disk, and a start on it.
    server.kill_hard();
    server.restart().await.unwrap();
    let c = server.client();
    let left = wait_no_procs(&server.cgroup_parent).await;
    assert!(left.is_empty(), "{left:?}");
    assert!(sandbox_cgroups(&server.cgroup_parent).is_empty());
    let mounts = host_mounts_containing(&state.display().to_string());
    assert!(mounts.is_empty(), "{mounts:?}");
    assert!(std::fs::read(ws.join("kept.bin")).unwrap() == kept);
    // The clean-up freed the dead boxes' directories: full again.
    fill_metadata(&more, 2);
    let e = c.create(&create_req()).await.unwrap_err();
    assert_disk_full(&e, "a create after the restart", &disk.mnt());

    // Space back: everything works again.
    std::fs::remove_file(ws.join("fill")).unwrap();
    std::fs::remove_dir_all(&more).unwrap();
    let sb = c.create(&create_req()).await.unwrap();
    let data = pattern(6, 2 << 20);
    c.write_file(&sb.id, "new.bin", data.clone()).await.unwrap();
    assert_eq!(
        &c.read_file(&sb.id, "new.bin").await.unwrap()[..],
        &data[..]
    );
    c.delete(&sb.id).await.unwrap();
    server.stop();
    drop(server);
    drop(disk);
}
