//! Configuration of the native backend.

use std::path::{Path, PathBuf};

/// Name of the init binary, looked for next to the running executable by default.
pub const INIT_BIN_NAME: &str = "sandboxd-init";
/// Name of the agent binary, looked for next to the running executable by default.
pub const AGENT_BIN_NAME: &str = "sandboxd-agent";

/// Where the native backend keeps its state and finds its binaries.
///
/// The backend owns `state_dir/boxes`, `run_dir` and the cgroups named `cgroup_parent`:
/// [`cleanup_stale`](sandboxd_core::backend::Backend::cleanup_stale) removes everything it
/// finds there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NativeConfig {
    /// Per-box directories: `<state_dir>/boxes/<id>/{upper,work,rootfs,init.log}`.
    pub state_dir: PathBuf,
    /// Per-box agent sockets: `<run_dir>/<id>/agent.sock`. Keep the path short: a Unix socket
    /// path has at most 107 bytes.
    pub run_dir: PathBuf,
    /// Cgroup path (relative to each hierarchy's root) under which boxes' groups are made,
    /// e.g. `sandboxd`; may be nested (`sandboxd/native`).
    pub cgroup_parent: String,
    /// The `sandboxd-init` binary.
    pub init_bin: PathBuf,
    /// The `sandboxd-agent` binary. It is copied once, when the backend is made, into a sealed
    /// in-memory file that every box executes.
    pub agent_bin: PathBuf,
    /// Size limit of each box's `/tmp` and `/dev/shm`, in MiB (tmpfs pages also count
    /// against the box's memory limit).
    pub tmp_size_mb: u64,
}

impl NativeConfig {
    /// The defaults, with the given state and run directories.
    pub fn new(state_dir: impl Into<PathBuf>, run_dir: impl Into<PathBuf>) -> Self {
        NativeConfig {
            state_dir: state_dir.into(),
            run_dir: run_dir.into(),
            ..Self::default()
        }
    }

    /// `sandboxd-init` and `sandboxd-agent` next to the running executable (falling back to
    /// bare names, which [`NativeBackend::new`](crate::NativeBackend::new) will report as
    /// missing).
    pub fn default_binaries() -> (PathBuf, PathBuf) {
        let dir = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_default();
        (dir.join(INIT_BIN_NAME), dir.join(AGENT_BIN_NAME))
    }
}

impl Default for NativeConfig {
    /// `/var/lib/sandboxd/native`, `/run/sandboxd/native`, cgroup parent `sandboxd`,
    /// binaries next to the running executable, 256 MiB `/tmp`.
    fn default() -> Self {
        let (init_bin, agent_bin) = Self::default_binaries();
        NativeConfig {
            state_dir: PathBuf::from("/var/lib/sandboxd/native"),
            run_dir: PathBuf::from("/run/sandboxd/native"),
            cgroup_parent: "sandboxd".to_string(),
            init_bin,
            agent_bin,
            tmp_size_mb: 256,
        }
    }
}
