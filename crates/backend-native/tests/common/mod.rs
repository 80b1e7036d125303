//! Fixtures for the native backend's tests: a busybox template, the real agent, unique
//! cgroup/state/run names per test, and a small synchronous protocol client.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::symlink;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sandboxd_backend_native::{NativeBackend, NativeConfig};
use sandboxd_core::backend::{AgentEndpoint, Backend, BoxHandle, BoxSpec, Limits, ReadonlyMount};
use sandboxd_protocol::{read_frame, write_frame, ExecSpec, Request, Response, PROTOCOL_VERSION};

/// The agent binary: `$SANDBOXD_AGENT_BIN`, else `sandboxd-agent` in this build's target
/// directory. Missing is a failure, not a skip.
pub fn agent_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SANDBOXD_AGENT_BIN") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "SANDBOXD_AGENT_BIN={} does not exist",
            p.display()
        );
        return p;
    }
    // target/<profile>/deps/<test binary> -> target/<profile>/sandboxd-agent
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    let agent = profile_dir.join("sandboxd-agent");
    assert!(
        agent.is_file(),
        "the guest agent {} is missing: run `cargo build -p sandboxd-agent` first \
         (or set SANDBOXD_AGENT_BIN)",
        agent.display()
    );
    agent
}

pub fn init_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sandboxd-init"))
}

/// Shared libraries (and the loader) a dynamic executable needs, as absolute host paths.
fn shared_libs(exe: &Path) -> Vec<PathBuf> {
    let out = Command::new("ldd").arg(exe).output().expect("run ldd");
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("not a dynamic executable") || text.contains("statically linked") {
        return Vec::new();
    }
    text.lines()
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with('/')))
        .map(PathBuf::from)
        .collect()
}

/// A busybox root file system in `dir`, plus whatever libraries the agent needs if it is
/// dynamically linked (the agent runs from inside the box's root).
pub fn make_template(dir: &Path) {
    for d in [
        "bin",
        "etc",
        "root",
        "tmp",
        "proc",
        "dev",
        "sys",
        "workspace",
        "mnt",
    ] {
        fs::create_dir_all(dir.join(d)).unwrap();
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .expect("busybox is needed for the tests: apt-get install busybox-static");
    fs::copy(busybox, dir.join("bin/busybox")).unwrap();
    let list = Command::new(busybox).arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" {
            let _ = symlink("busybox", dir.join("bin").join(applet));
        }
    }
    fs::write(dir.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    fs::write(dir.join("etc/group"), "root:x:0:\ntty:x:5:\n").unwrap();
    for lib in shared_libs(&agent_bin()) {
        let dest = dir.join(lib.strip_prefix("/").unwrap());
        fs::create_dir_all(dest.parent().unwrap()).unwrap();
        fs::copy(&lib, &dest).unwrap();
    }
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// One test's world: its own template, workspace, state and run directories and cgroup
/// parent, so that tests can run in parallel.
pub struct Fixture {
    pub tmp: tempfile::TempDir,
    pub config: NativeConfig,
    pub backend: NativeBackend,
    pub template: PathBuf,
    pub workspace: PathBuf,
    finished: bool,
}

pub fn config_in(root: &Path, name: &str) -> NativeConfig {
    NativeConfig {
        state_dir: root.join("state"),
        run_dir: root.join("run"),
        cgroup_parent: format!("sandboxd-test-{}-{name}", std::process::id()),
        init_bin: init_bin(),
        agent_bin: agent_bin(),
        tmp_size_mb: 64,
    }
}

impl Fixture {
    pub fn new(name: &str) -> Fixture {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        // Short paths: the socket path must fit in 107 bytes.
        let tmp = tempfile::Builder::new()
            .prefix(&format!("sbx{n}-"))
            .tempdir_in("/tmp")
            .unwrap();
        let template = tmp.path().join("tpl");
        make_template(&template);
        let workspace = tmp.path().join("ws");
        fs::create_dir_all(&workspace).unwrap();
        let config = config_in(tmp.path(), name);
        let backend = NativeBackend::new(config.clone()).expect("native backend available");
        Fixture {
            tmp,
            config,
            backend,
            template,
            workspace,
            finished: false,
        }
    }

    pub fn spec(&self, id: &str) -> BoxSpec {
        BoxSpec {
            id: id.to_string(),
            template_rootfs: self.template.clone(),
            workspace: self.workspace.clone(),
            readonly_mounts: Vec::<ReadonlyMount>::new(),
            env: BTreeMap::new(),
            limits: Limits {
                memory_bytes: 256 << 20,
                cpu_millis: 1000,
                pids: 256,
                disk_bytes: 0,
            },
            hostname: format!("{id}-host"),
            image: None,
        }
    }

    /// Remove everything the test left and check that nothing stays.
    pub async fn finish(mut self) {
        self.finished = true;
        let report = self
            .backend
            .cleanup_stale(&Default::default())
            .await
            .unwrap();
        assert_eq!(report.boxes_killed, 0, "the test left boxes running");
        assert_no_leftovers(&self.backend, &self.config);
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // A failed test: clean up from another thread with its own runtime.
        let config = self.config.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(b) = NativeBackend::new(config) {
                    let _ = b.cleanup_stale(&Default::default()).await;
                }
            });
        })
        .join();
    }
}

/// No box cgroup, no parent cgroup, no box or run directory is left.
pub fn assert_no_leftovers(backend: &NativeBackend, config: &NativeConfig) {
    for dir in backend.cgroup_parent_dirs() {
        assert!(!dir.exists(), "cgroup {} left behind", dir.display());
    }
    let boxes = config.state_dir.join("boxes");
    let left: Vec<_> = fs::read_dir(&boxes)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "box directories left: {left:?}");
    let left: Vec<_> = fs::read_dir(&config.run_dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "run directories left: {left:?}");
}

/// Lines of the host's mount table that mention `needle`.
pub fn host_mounts_mentioning(needle: &Path) -> Vec<String> {
    let needle = needle.to_string_lossy().into_owned();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&needle))
        .map(str::to_string)
        .collect()
}

/// Whether a host pid exists and is not a zombie.
pub fn process_running(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(stat) => {
            let state = stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .next();
            state != Some("Z") && state != Some("X")
        }
    }
}

/// Wait until `f` holds, up to `timeout`.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A connection to a box's agent.
pub struct Agent {
    pub stream: UnixStream,
}

/// A finished command.
#[derive(Debug, Default)]
pub struct Output {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }
}

impl Agent {
    pub fn connect(handle: &BoxHandle) -> Agent {
        let AgentEndpoint::Unix { path } = &handle.endpoint else {
            panic!("the native backend gives Unix endpoints")
        };
        let stream = UnixStream::connect(path).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        Agent { stream }
    }

    pub fn hello(&mut self) -> Response {
        write_frame(
            &mut self.stream,
            &Request::Hello {
                version: PROTOCOL_VERSION,
            },
            b"",
        )
        .unwrap();
        read_frame::<Response, _>(&mut self.stream).unwrap().header
    }

    pub fn exec_spec(&mut self, spec: ExecSpec) -> Output {
        write_frame(&mut self.stream, &Request::Exec(spec), b"").unwrap();
        let mut out = Output::default();
        loop {
            let frame = read_frame::<Response, _>(&mut self.stream).unwrap();
            match frame.header {
                Response::Started { .. } => {}
                Response::Stdout => out
                    .stdout
                    .push_str(&String::from_utf8_lossy(&frame.payload)),
                Response::Stderr => out
                    .stderr
                    .push_str(&String::from_utf8_lossy(&frame.payload)),
                Response::Exited {
                    code,
                    signal,
                    timed_out,
                } => {
                    out.code = code;
                    out.signal = signal;
                    out.timed_out = timed_out;
                    return out;
                }
                Response::Error(e) => {
                    out.stderr.push_str(&format!("agent error: {e:?}"));
                    return out;
                }
                other => panic!("unexpected response {other:?}"),
            }
        }
    }

    pub fn sh(&mut self, script: &str) -> Output {
        self.exec_spec(ExecSpec {
            shell: Some(script.to_string()),
            timeout_ms: Some(60_000),
            ..Default::default()
        })
    }
}

pub fn assert_hello(resp: Response) {
    match resp {
        Response::Hello { version, .. } => assert_eq!(version.0, PROTOCOL_VERSION.0),
        other => panic!("expected Hello, got {other:?}"),
    }
}

/// The box has its own procfs and sysfs, mounted with the flags the backend promises.
pub fn assert_own_proc_and_sys(agent: &mut Agent) {
    let out = agent.sh("grep -E '^[a-z]+ /(proc|sys) ' /proc/mounts");
    assert!(
        out.stdout
            .contains("proc /proc proc rw,nosuid,nodev,noexec")
            && out
                .stdout
                .contains("sysfs /sys sysfs ro,nosuid,nodev,noexec"),
        "{out:?}"
    );
}
