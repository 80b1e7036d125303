//! The `gvisor` backend: each sandbox is an OCI container run by `runsc`, gVisor's runtime, so
//! that the code inside talks to gVisor's user-space kernel (the Sentry) instead of the host's.
//!
//! # A box
//!
//! - Root file system: the sandbox type's template tree, shared by every box and never written:
//!   gVisor puts an overlay over it (`--overlay2=root:dir=<box dir>`) whose upper layer is a
//!   file in the box's own directory, removed with the box.
//! - The guest agent is the container's process (PID 1 of the Sentry, reaping zombies),
//!   bind-mounted read-only from the host, and listens on a Unix socket in the box's socket
//!   directory, a bind mount too. gVisor's gofer creates that socket on the host
//!   (`--host-uds=create`: a box may create host sockets in its mounts, never connect to the
//!   host's), so the host reaches the agent as with the native backend and every tool works
//!   unchanged. The Sentry has neither `openat2` nor pidfds; the agent has fallbacks for both.
//! - `/workspace` is bound from the session's workspace; `READONLY_MOUNTS` read-only.
//! - Network: its own network namespace with gVisor's network stack and nothing but loopback
//!   (`--network=none`).
//! - Limits: memory and CPU are applied by runsc to the box's cgroup on the host
//!   (`<cgroup_parent>/<id>`), which holds gVisor's own processes too: the memory limit there
//!   is the box's plus [`SENTRY_MEMORY`] for them. gVisor has no out-of-memory killer of its
//!   own, so a box that passes its memory limit ends as a whole (the host kills its kernel);
//!   the server then reports it as failed. The box's tasks are gVisor's, not the host's: the
//!   task limit is applied inside, by the agent, as `RLIMIT_NPROC` (`SANDBOXD_PIDS_MAX`),
//!   which the box's root cannot raise (it has no `CAP_SYS_RESOURCE`); the host's pids limit
//!   only bounds gVisor's threads ([`SENTRY_TASKS`] more than the box's limit).
//! - runsc keeps its state under `<state_dir>/runsc`: [`Backend::cleanup_stale`] lists the
//!   containers there after a crash. The sandbox processes runsc starts are not the server's
//!   children, so they survive a crash of the server until that clean-up (or adoption).
//!
//! # Requirements
//!
//! `runsc` (gVisor 2023 or newer, for `--host-uds=create` and `--overlay2` with a directory;
//! Debian: `runsc` from bookworm-backports) and root. The platform defaults to `systrap`,
//! which needs no virtualization; `ptrace` works too, `kvm` only with `/dev/kvm`.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sandboxd_core::backend::{
    AgentEndpoint, Backend, BackendError, BoxHandle, BoxSpec, CleanupReport,
};
use serde_json::{json, Value};

/// Where the agent binary is mounted in a box.
const AGENT_IN_BOX: &str = "/.sandboxd/agent";
/// Where the box's socket directory is mounted in a box.
const RUN_IN_BOX: &str = "/.sandboxd/run";
/// `PATH` of a box.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// How long a new box's agent may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Memory the host cgroup allows beyond a box's limit, for gVisor's kernel and gofer.
pub const SENTRY_MEMORY: u64 = 64 << 20;
/// Host threads allowed beyond a box's task limit, for gVisor's kernel and gofer.
pub const SENTRY_TASKS: u64 = 512;
/// Platforms runsc knows.
pub const PLATFORMS: &[&str] = &["systrap", "ptrace", "kvm"];

/// Settings of the gVisor backend.
#[derive(Debug, Clone)]
pub struct GvisorConfig {
    /// The `runsc` binary (a bare name is looked up in `PATH`).
    pub runsc: PathBuf,
    /// runsc's platform: one of [`PLATFORMS`].
    pub platform: String,
    /// Per-box directories (`<state_dir>/boxes/<id>`: the OCI bundle and the overlay's
    /// file) and runsc's own state (`<state_dir>/runsc`).
    pub state_dir: PathBuf,
    /// Per-box socket directories: `<run_dir>/<id>/agent.sock`. Keep the path short: a Unix
    /// socket path has at most 107 bytes.
    pub run_dir: PathBuf,
    /// The static guest agent binary.
    pub agent_bin: PathBuf,
    /// Cgroup path (relative to each hierarchy's root) under which runsc makes each box's
    /// group.
    pub cgroup_parent: String,
}

/// The host process of a running box: the gVisor sandbox (Sentry) runsc started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SandboxProcess {
    pid: i32,
    /// Its start time (field 22 of `/proc/<pid>/stat`), so that a recycled pid is not taken
    /// for the box.
    start_time: u64,
}

/// Sandboxes under gVisor.
#[derive(Debug)]
pub struct GvisorBackend {
    config: GvisorConfig,
    /// Sandbox processes by box id, also recorded in each box's directory (`sentry.pid`) for a
    /// restarted server.
    processes: Mutex<HashMap<String, SandboxProcess>>,
}

fn unavailable(what: impl std::fmt::Display) -> BackendError {
    BackendError::Unavailable(format!("gvisor: {what}"))
}

fn failed(what: impl std::fmt::Display) -> BackendError {
    BackendError::StartFailed(format!("gvisor: {what}"))
}

fn io(context: String, source: std::io::Error) -> BackendError {
    BackendError::Io { context, source }
}

/// What runsc said on failure: its last lines of output (its log lines are long).
fn tail(out: &std::process::Output) -> String {
    let text = String::from_utf8_lossy(&out.stderr);
    let text = if text.trim().is_empty() {
        String::from_utf8_lossy(&out.stdout)
    } else {
        text
    };
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(3)..].join(" | ")
}

/// Start time of `pid` from `/proc/<pid>/stat`, unless it is gone or a zombie.
fn start_time_of(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields after it are
    // counted from the last `)`.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state); field 22 (start time) is fields[19].
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

impl GvisorBackend {
    /// Check that runsc runs and can be used, and make the backend's directories.
    pub async fn new(config: GvisorConfig) -> Result<GvisorBackend, BackendError> {
        if !PLATFORMS.contains(&config.platform.as_str()) {
            return Err(unavailable(format!(
                "unknown platform {:?}; runsc has {}",
                config.platform,
                PLATFORMS.join(", ")
            )));
        }
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(unavailable(
                "runsc needs root here (rootless runsc is not supported by this backend)",
            ));
        }
        if !config.agent_bin.is_file() {
            return Err(unavailable(format!(
                "the guest agent {} is missing (build it: scripts/build)",
                config.agent_bin.display()
            )));
        }
        let out = tokio::process::Command::new(&config.runsc)
            .arg("--version")
            .output()
            .await
            .map_err(|e| {
                unavailable(format!(
                    "cannot run {} ({e}); install gVisor (Debian: apt-get install -t \
                     bookworm-backports runsc; or scripts/setup)",
                    config.runsc.display()
                ))
            })?;
        if !out.status.success() {
            return Err(unavailable(format!(
                "{} --version failed: {}",
                config.runsc.display(),
                tail(&out)
            )));
        }
        for d in [
            config.state_dir.join("boxes"),
            config.state_dir.join("runsc"),
            config.run_dir.clone(),
        ] {
            std::fs::create_dir_all(&d).map_err(|e| io(format!("create {}", d.display()), e))?;
        }
        Ok(GvisorBackend {
            config,
            processes: Mutex::new(HashMap::new()),
        })
    }

    fn box_dir(&self, id: &str) -> PathBuf {
        self.config.state_dir.join("boxes").join(id)
    }

    fn socket_dir(&self, id: &str) -> PathBuf {
        self.config.run_dir.join(id)
    }

    /// A runsc command with the backend's global flags.
    fn runsc(&self) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(&self.config.runsc);
        c.arg("--root")
            .arg(self.config.state_dir.join("runsc"))
            .arg(format!("--platform={}", self.config.platform))
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        c
    }

    async fn run_runsc(&self, args: &[&str]) -> Result<std::process::Output, BackendError> {
        self.runsc()
            .args(args)
            .output()
            .await
            .map_err(|e| unavailable(format!("cannot run {}: {e}", self.config.runsc.display())))
    }

    /// The OCI runtime spec of a box.
    fn oci_spec(&self, spec: &BoxSpec, socket_dir: &Path) -> Value {
        let mut env = vec![
            format!("PATH={DEFAULT_PATH}"),
            "HOME=/root".to_string(),
            format!("HOSTNAME={}", spec.hostname),
            "SANDBOXD_FILES_ROOT=/workspace".to_string(),
            format!("SANDBOXD_PIDS_MAX={}", spec.limits.pids),
        ];
        env.extend(
            spec.env
                .iter()
                .filter(|(k, _)| !k.starts_with("SANDBOXD_"))
                .map(|(k, v)| format!("{k}={v}")),
        );
        let bind = |host: &Path, guest: &str, ro: bool| {
            json!({
                "destination": guest,
                "type": "bind",
                "source": host,
                "options": ["rbind", if ro { "ro" } else { "rw" }],
            })
        };
        // The disk limit bounds /tmp (a tmpfs of gVisor's kernel, in the box's memory); the
        // root layer is gVisor's overlay file on the host, which runsc does not bound.
        let mut tmp_options = vec!["nosuid".to_string(), "nodev".into(), "mode=1777".into()];
        if spec.limits.disk_bytes > 0 {
            tmp_options.push(format!("size={}k", spec.limits.disk_bytes.div_ceil(1024)));
        }
        let mut mounts = vec![
            json!({"destination": "/proc", "type": "proc", "source": "proc"}),
            json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                   "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
            json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
                   "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]}),
            json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
                   "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
            json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
                   "options": ["nosuid", "noexec", "nodev", "ro"]}),
            json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
                   "options": tmp_options}),
            bind(&self.config.agent_bin, AGENT_IN_BOX, true),
            bind(socket_dir, RUN_IN_BOX, false),
            bind(&spec.workspace, "/workspace", false),
        ];
        mounts.extend(
            spec.readonly_mounts
                .iter()
                .map(|m| bind(&m.host, &m.guest.to_string_lossy(), true)),
        );
        // The capabilities runsc gives by default (and Docker a subset of its own): enough for
        // a root shell's kill(2), never CAP_SYS_ADMIN; gVisor's kernel enforces them.
        let caps = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"];
        let memory = spec.limits.memory_bytes + SENTRY_MEMORY;
        json!({
            "ociVersion": "1.0.0",
            "process": {
                "terminal": false,
                "user": {"uid": 0, "gid": 0},
                "args": [AGENT_IN_BOX, "--listen", format!("{RUN_IN_BOX}/agent.sock")],
                "env": env,
                "cwd": "/workspace",
                "capabilities": {
                    "bounding": caps, "effective": caps, "inheritable": caps,
                    "permitted": caps, "ambient": caps,
                },
                "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 65536, "soft": 65536}],
                "noNewPrivileges": true,
            },
            "root": {"path": spec.template_rootfs, "readonly": false},
            "hostname": spec.hostname,
            "mounts": mounts,
            "linux": {
                "cgroupsPath": format!("/{}/{}", self.config.cgroup_parent.trim_matches('/'), spec.id),
                "resources": {
                    "memory": {"limit": memory},
                    "cpu": {"quota": spec.limits.cpu_millis * 100, "period": 100_000},
                    "pids": {"limit": spec.limits.pids + SENTRY_TASKS},
                },
                "namespaces": [
                    {"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                    {"type": "uts"}, {"type": "mount"},
                ],
            },
        })
    }

    async fn start(&self, spec: &BoxSpec) -> Result<BoxHandle, BackendError> {
        let dir = self.box_dir(&spec.id);
        let sockets = self.socket_dir(&spec.id);
        for d in [&dir, &sockets] {
            std::fs::create_dir_all(d).map_err(|e| io(format!("create {}", d.display()), e))?;
        }
        let socket = sockets.join("agent.sock");
        let _ = std::fs::remove_file(&socket);
        let oci = self.oci_spec(spec, &sockets);
        let config = dir.join("config.json");
        std::fs::write(&config, oci.to_string())
            .map_err(|e| io(format!("write {}", config.display()), e))?;
        let overlay = format!("--overlay2=root:dir={}", dir.display());
        // The box's processes inherit runsc's output, which must therefore be a file (the
        // box's log) and not a pipe that would stay open as long as the box runs.
        let log_path = dir.join("box.log");
        let log = std::fs::File::create(&log_path)
            .map_err(|e| io(format!("create {}", log_path.display()), e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| io(format!("open {}", log_path.display()), e))?;
        let status = self
            .runsc()
            .args([
                "--network=none",
                "--host-uds=create",
                &overlay,
                "run",
                "--detach",
            ])
            .arg("--pid-file")
            .arg(dir.join("runsc.pid"))
            .arg("--bundle")
            .arg(&dir)
            .arg(&spec.id)
            .stdout(log)
            .stderr(log2)
            .status()
            .await
            .map_err(|e| unavailable(format!("cannot run {}: {e}", self.config.runsc.display())))?;
        if !status.success() {
            let out = std::process::Output {
                status,
                stdout: Vec::new(),
                stderr: std::fs::read(&log_path).unwrap_or_default(),
            };
            return Err(failed(format!("runsc run {}: {}", spec.id, tail(&out))));
        }
        // The pid file saves a runsc call; `runsc state` knows the pid too.
        let from_file = std::fs::read_to_string(dir.join("runsc.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
            .and_then(|pid| {
                Some(SandboxProcess {
                    pid,
                    start_time: start_time_of(pid)?,
                })
            });
        let process = match from_file {
            Some(p) => p,
            None => self.sandbox_process(&spec.id).await?,
        };
        std::fs::write(
            dir.join("sentry.pid"),
            format!("{} {}", process.pid, process.start_time),
        )
        .map_err(|e| io(format!("write {}", dir.display()), e))?;
        self.processes
            .lock()
            .expect("not poisoned")
            .insert(spec.id.clone(), process);
        // The agent's socket appears on the host at its bind(2), a moment before its
        // listen(2) (the gofer makes the file): the box is ready once a connection succeeds.
        let deadline = Instant::now() + START_TIMEOUT;
        while tokio::net::UnixStream::connect(&socket).await.is_err() {
            if Instant::now() > deadline {
                return Err(failed(format!(
                    "box {}: its agent did not start listening",
                    spec.id
                )));
            }
            if start_time_of(process.pid) != Some(process.start_time) {
                return Err(failed(format!("box {}: it exited at start", spec.id)));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(BoxHandle {
            id: spec.id.clone(),
            endpoint: AgentEndpoint::Unix { path: socket },
        })
    }

    /// The sandbox process of a container, from `runsc state`.
    async fn sandbox_process(&self, id: &str) -> Result<SandboxProcess, BackendError> {
        let out = self.run_runsc(&["state", id]).await?;
        if !out.status.success() {
            return Err(failed(format!("runsc state {id}: {}", tail(&out))));
        }
        let state: Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| failed(format!("runsc state {id}: unreadable answer: {e}")))?;
        let pid = state["pid"]
            .as_i64()
            .filter(|p| *p > 0)
            .ok_or_else(|| failed(format!("runsc state {id}: no pid")))? as i32;
        let start_time =
            start_time_of(pid).ok_or_else(|| failed(format!("box {id}: exited at start")))?;
        Ok(SandboxProcess { pid, start_time })
    }

    /// The recorded sandbox process of a box (from memory, else its directory).
    fn recorded_process(&self, id: &str) -> Option<SandboxProcess> {
        if let Some(p) = self.processes.lock().expect("not poisoned").get(id) {
            return Some(*p);
        }
        let text = std::fs::read_to_string(self.box_dir(id).join("sentry.pid")).ok()?;
        let mut it = text.split_whitespace();
        let p = SandboxProcess {
            pid: it.next()?.parse().ok()?,
            start_time: it.next()?.parse().ok()?,
        };
        self.processes
            .lock()
            .expect("not poisoned")
            .insert(id.to_string(), p);
        Some(p)
    }

    /// Remove a box: its container (killing it), its directories. Whether a container was
    /// there.
    async fn remove(&self, id: &str) -> Result<bool, BackendError> {
        self.processes.lock().expect("not poisoned").remove(id);
        let out = self.run_runsc(&["delete", "--force", id]).await?;
        let existed = out.status.success();
        if !existed {
            let why = tail(&out);
            if !why.contains("does not exist") && !why.contains("not found") {
                return Err(failed(format!("runsc delete {id}: {why}")));
            }
        }
        for d in [self.box_dir(id), self.socket_dir(id)] {
            match std::fs::remove_dir_all(&d) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(format!("remove {}", d.display()), e)),
            }
        }
        Ok(existed)
    }

    /// Containers runsc has under the backend's root.
    async fn containers(&self) -> Result<Vec<String>, BackendError> {
        let out = self.run_runsc(&["list", "-quiet"]).await?;
        if !out.status.success() {
            return Err(unavailable(format!("runsc list: {}", tail(&out))));
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect())
    }
}

#[async_trait]
impl Backend for GvisorBackend {
    fn name(&self) -> &'static str {
        "gvisor"
    }

    async fn create(&self, spec: BoxSpec) -> Result<BoxHandle, BackendError> {
        match self.start(&spec).await {
            Ok(h) => Ok(h),
            Err(e) => {
                // Nothing of a failed box is left behind.
                if let Err(cleanup) = self.remove(&spec.id).await {
                    tracing::warn!(id = %spec.id, error = %cleanup, "cleanup of a failed box");
                }
                Err(e)
            }
        }
    }

    async fn destroy(&self, id: &str) -> Result<(), BackendError> {
        self.remove(id).await.map(drop)
    }

    async fn is_alive(&self, id: &str) -> bool {
        self.recorded_process(id)
            .is_some_and(|p| start_time_of(p.pid) == Some(p.start_time))
    }

    async fn set_paused(&self, id: &str, paused: bool) -> Result<(), BackendError> {
        let out = self
            .run_runsc(&[if paused { "pause" } else { "resume" }, id])
            .await?;
        if out.status.success() {
            return Ok(());
        }
        let why = tail(&out);
        if why.contains("does not exist") || why.contains("not found") {
            return Err(BackendError::NotFound(id.to_string()));
        }
        Err(failed(format!(
            "runsc {} {id}: {why}",
            if paused { "pause" } else { "resume" }
        )))
    }

    async fn cleanup_stale(&self, keep: &BTreeSet<String>) -> Result<CleanupReport, BackendError> {
        let mut report = CleanupReport::default();
        let mut kept = BTreeSet::new();
        for id in self.containers().await? {
            if keep.contains(&id) && self.is_alive(&id).await {
                kept.insert(id);
                continue;
            }
            if self.remove(&id).await? {
                report.boxes_killed += 1;
                report.resources_removed += 1;
            }
        }
        // Directories of boxes with no container left.
        for parent in [
            self.config.state_dir.join("boxes"),
            self.config.run_dir.clone(),
        ] {
            let dirs = std::fs::read_dir(&parent)
                .map(|d| d.flatten().collect::<Vec<_>>())
                .unwrap_or_default();
            for d in dirs {
                let id = d.file_name().to_string_lossy().into_owned();
                if !kept.contains(&id) && std::fs::remove_dir_all(d.path()).is_ok() {
                    report.resources_removed += 1;
                }
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_skips_a_command_name_with_spaces() {
        let me = std::process::id() as i32;
        assert!(start_time_of(me).is_some());
        assert!(start_time_of(i32::MAX).is_none());
    }

    #[test]
    fn failure_text_is_the_last_lines() {
        let out = std::process::Output {
            status: std::process::ExitStatus::default(),
            stdout: b"ignored".to_vec(),
            stderr: b"a\nb\n\nc\nd\n".to_vec(),
        };
        assert_eq!(tail(&out), "b | c | d");
    }
}
