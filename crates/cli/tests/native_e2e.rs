//! `sandboxd serve` with the real native backend, driven by the `sandboxd` CLI as a user would:
//! template build, create, exec (streamed), cp both ways, ls, rm, and SIGTERM with AUTO_CLEANUP.
//!
//! Needs root, `/bin/busybox` (Debian `busybox-static`, for the `minimal` template), the
//! `sandboxd-init` binary next to `sandboxd`, and a *statically linked* `sandboxd-agent` (the
//! `minimal` template has no libc): `SANDBOXD_AGENT_BIN`, or the one next to `sandboxd` when it
//! is static. Without them the test fails and says what is missing; `scripts/test` provides
//! all of them.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_sandboxd");

/// Whether an ELF executable has no program interpreter (is statically linked).
fn is_static_elf(path: &Path) -> bool {
    let Ok(b) = std::fs::read(path) else {
        return false;
    };
    if b.len() < 64 || &b[..4] != b"\x7fELF" || b[4] != 2 {
        return false;
    }
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(b[0x20..0x28].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    (0..phnum).all(|i| {
        let o = phoff + i * phentsize;
        o + 4 <= b.len() && u32::from_le_bytes(b[o..o + 4].try_into().unwrap()) != 3
    })
}

fn prerequisites() -> Result<PathBuf, String> {
    if euid() != 0 {
        return Err("not root".into());
    }
    if !Path::new("/bin/busybox").exists() {
        return Err("no /bin/busybox (apt-get install busybox-static)".into());
    }
    let dir = Path::new(BIN).parent().unwrap();
    if !dir.join("sandboxd-init").exists() {
        return Err(
            "no sandboxd-init next to sandboxd (cargo build -p sandboxd-backend-native)".into(),
        );
    }
    let agent = std::env::var_os("SANDBOXD_AGENT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.join("sandboxd-agent"));
    if !is_static_elf(&agent) {
        return Err(format!(
            "{} is missing or not statically linked (set SANDBOXD_AGENT_BIN to a static build)",
            agent.display()
        ));
    }
    Ok(agent)
}

/// The effective uid, read from /proc (no libc dependency needed).
fn euid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(str::to_string))
        })
        .and_then(|u| u.parse().ok())
        .unwrap_or(u32::MAX)
}

async fn sbx(url: &str, args: &[&str]) -> (i32, String, String) {
    let o = tokio::time::timeout(
        Duration::from_secs(60),
        Command::new(BIN)
            .args(args)
            .env("SANDBOXD_URL", url)
            .env_remove("SANDBOXD_TOKEN")
            .env_remove("BEARER_TOKEN")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("sandboxd timed out")
    .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Start `sandboxd serve` on a free port; returns the child and its URL (read from its log).
async fn serve(state: &Path, run: &Path, agent: &Path, cgroup: &str) -> (Child, String) {
    let mut child = Command::new(BIN)
        .args(["serve", "--port", "0"])
        .env("SANDBOXD_STATE_DIR", state)
        .env("SANDBOXD_RUN_DIR", run)
        .env("SANDBOXD_AGENT_BIN", agent)
        .env("SANDBOXD_CGROUP_PARENT", cgroup)
        .env("DEFAULT_SANDBOX_TYPE", "minimal")
        .env("RUST_LOG", "info")
        .env_remove("BEARER_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let url = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(l) = lines.next_line().await.unwrap() {
            if let Some(rest) = l.split("listening on ").nth(1) {
                return rest.split_whitespace().next().unwrap().to_string();
            }
        }
        panic!("sandboxd serve exited before listening");
    })
    .await
    .expect("sandboxd serve did not start");
    // Keep draining the log so the server never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_end_to_end() {
    let agent = match prerequisites() {
        Ok(a) => a,
        Err(why) => {
            panic!("native_end_to_end cannot run: {why} (scripts/test sets all of this up)")
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let run = dir.path().join("run");
    let cgroup = format!("sandboxd-clitest-{}", std::process::id());
    let s = state.to_str().unwrap();

    let (code, _, err) = sbx(
        "http://unused",
        &["template", "build", "minimal", "--state-dir", s],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let (_, out, _) = sbx("http://unused", &["template", "ls", "--state-dir", s]).await;
    assert!(
        out.lines()
            .any(|l| l.starts_with("minimal") && l.contains("ready")),
        "{out}"
    );

    let (mut server, url) = serve(&state, &run, &agent, &cgroup).await;
    let u = url.as_str();

    let (code, id, err) = sbx(u, &["create", "-m", "suite=e2e"]).await;
    assert_eq!(code, 0, "{err}");
    let id = id.trim().to_string();

    let (code, out, _) = sbx(u, &["exec", &id, "--", "echo", "hello"]).await;
    assert_eq!((code, out.as_str()), (0, "hello\n"));
    let (code, out, err) = sbx(
        u,
        &["exec", &id, "--shell", "echo out; echo err >&2; exit 7"],
    )
    .await;
    assert_eq!((code, out.as_str(), err.as_str()), (7, "out\n", "err\n"));
    let (code, _, _) = sbx(u, &["exec", &id, "--timeout", "0.5", "--", "sleep", "10"]).await;
    assert_eq!(code, 124);
    let (code, _, _) = sbx(u, &["exec", &id, "--shell", "kill -9 $$"]).await;
    assert_eq!(code, 137);

    // Output streams: the first line arrives long before the command ends.
    let mut child = Command::new(BIN)
        .args(["exec", &id, "--shell", "echo first; sleep 3; echo second"])
        .env("SANDBOXD_URL", u)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let t0 = std::time::Instant::now();
    assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("first"));
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "first line took {:?}",
        t0.elapsed()
    );
    assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("second"));
    assert!(child.wait().await.unwrap().success());

    // Files both ways.
    let up = dir.path().join("up.bin");
    let data: Vec<u8> = (0..(5 << 20) + 3)
        .map(|i: u32| (i * 31 % 256) as u8)
        .collect();
    std::fs::write(&up, &data).unwrap();
    let (code, _, err) = sbx(u, &["cp", up.to_str().unwrap(), &format!("{id}:d/up.bin")]).await;
    assert_eq!(code, 0, "{err}");
    let (_, out, _) = sbx(u, &["exec", &id, "--", "wc", "-c", "/workspace/d/up.bin"]).await;
    assert!(out.contains(&data.len().to_string()), "{out}");
    let down = dir.path().join("down.bin");
    let (code, _, err) = sbx(
        u,
        &["cp", &format!("{id}:d/up.bin"), down.to_str().unwrap()],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(std::fs::read(&down).unwrap() == data, "download differs");
    let (code, _, err) = sbx(u, &["cp", &format!("{id}:../../etc/passwd"), "-"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("path_outside_sandbox"), "{err}");

    let (_, out, _) = sbx(u, &["ls", "--metadata", "suite=e2e"]).await;
    assert!(out.contains(&id) && out.contains("running"), "{out}");
    let (code, _, _) = sbx(u, &["rm", &id]).await;
    assert_eq!(code, 0);

    // SIGTERM with a sandbox still running: the server removes it and exits 0.
    let (_, id2, _) = sbx(u, &["create"]).await;
    assert!(!id2.trim().is_empty());
    let pid = server.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(30), server.wait())
        .await
        .expect("server did not stop")
        .unwrap();
    assert!(status.success(), "{status}");
    let boxes: Vec<_> = std::fs::read_dir(state.join("native/boxes"))
        .map(|d| d.flatten().collect())
        .unwrap_or_default();
    assert!(boxes.is_empty(), "boxes left after shutdown: {boxes:?}");
    // The backend keeps its (empty) parent cgroups; this test's are its own to remove.
    for h in std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        let _ = std::fs::remove_dir(h.path().join(&cgroup));
    }
}
