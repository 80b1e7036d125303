//! Configuration of the native backend.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Name of the init binary, looked for next to the running executable by default.
pub const INIT_BIN_NAME: &str = "sandboxd-init";
/// Name of the agent binary, looked for next to the running executable by default.
pub const AGENT_BIN_NAME: &str = "sandboxd-agent";

/// Where the native backend keeps its state and finds its binaries.
///
/// The backend owns `state_dir/boxes`, `run_dir` and the cgroups named `cgroup_parent`:
/// [`cleanup_stale`](sandboxd_core::backend::Backend::cleanup_stale) removes everything it
/// finds there, except a group under the parent that holds the server itself (a rootless
/// server's `.server`) and, in rootless mode, the parent groups.
///
/// The defaults depend on who runs the server (see [`NativeConfig::default`]): root gets
/// system directories, any other user per-user ones and a cgroup parent that must be
/// delegated to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NativeConfig {
    /// Per-box directories: `<state_dir>/boxes/<id>/{upper,work,rootfs,init.log}`.
    pub state_dir: PathBuf,
    /// Per-box agent sockets: `<run_dir>/<id>/agent.sock`. Keep the path short: a Unix socket
    /// path has at most 107 bytes.
    pub run_dir: PathBuf,
    /// Cgroup path (relative to each hierarchy's root) under which boxes' groups are made,
    /// e.g. `sandboxd`; may be nested (`sandboxd/native`). In rootless mode it must exist and
    /// be writable by the server's user in every hierarchy the backend uses, and the server
    /// must run inside the delegated v2 tree;
    /// [`NativeBackend::new`](crate::NativeBackend::new) says what to set up otherwise.
    pub cgroup_parent: String,
    /// The `sandboxd-init` binary.
    pub init_bin: PathBuf,
    /// The `sandboxd-agent` binary. It is copied once, when the backend is made, into a sealed
    /// in-memory file that every box executes.
    pub agent_bin: PathBuf,
    /// Size limit of the tmpfs that holds a box's `/tmp`, `/dev/shm` and `/dev` together, in
    /// MiB, for a box without a disk limit (with one, the disk limit is its size). Its pages
    /// also count against the box's memory limit.
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

    /// The default `(state_dir, run_dir)` for a process with effective uid `euid` and the
    /// environment `env`:
    ///
    /// - root: `/var/lib/sandboxd/native` and `/run/sandboxd/native`;
    /// - any other user (rootless mode), as XDG prescribes for per-user data and runtime
    ///   files: `$XDG_DATA_HOME/sandboxd/native` (else `$HOME/.local/share/sandboxd/native`)
    ///   and `$XDG_RUNTIME_DIR/sandboxd/native`; without those variables (only absolute
    ///   values count), `/tmp/sandboxd-<euid>/state/native` and `/tmp/sandboxd-<euid>/run/native`.
    ///   [`NativeBackend::new`](crate::NativeBackend::new) refuses a run_dir that another user
    ///   owns, so a directory planted in `/tmp` is not used.
    pub fn default_dirs(
        euid: libc::uid_t,
        env: impl Fn(&str) -> Option<OsString>,
    ) -> (PathBuf, PathBuf) {
        if euid == 0 {
            return (
                PathBuf::from("/var/lib/sandboxd/native"),
                PathBuf::from("/run/sandboxd/native"),
            );
        }
        let var = |k: &str| env(k).map(PathBuf::from).filter(|p| p.is_absolute());
        let fallback = PathBuf::from(format!("/tmp/sandboxd-{euid}"));
        let state = var("XDG_DATA_HOME")
            .or_else(|| var("HOME").map(|h| h.join(".local/share")))
            .map_or_else(|| fallback.join("state"), |d| d.join("sandboxd"))
            .join("native");
        let run = var("XDG_RUNTIME_DIR")
            .map_or_else(|| fallback.join("run"), |d| d.join("sandboxd"))
            .join("native");
        (state, run)
    }

    /// The default cgroup parent: `sandboxd` for root, `sandboxd-<euid>` for any other user,
    /// so that rootless servers of several users each get their own delegated subtree.
    pub fn default_cgroup_parent(euid: libc::uid_t) -> String {
        if euid == 0 {
            "sandboxd".to_string()
        } else {
            format!("sandboxd-{euid}")
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
    /// As root: `/var/lib/sandboxd/native`, `/run/sandboxd/native`, cgroup parent `sandboxd`.
    /// As any other user (rootless mode): per-user directories (see
    /// [`NativeConfig::default_dirs`]) and cgroup parent `sandboxd-<euid>`, which must be
    /// delegated to that user (see [`Cgroups::check_delegation`](crate::cgroup::Cgroups::check_delegation)).
    /// Either way: binaries next to the running executable, 256 MiB `/tmp`.
    fn default() -> Self {
        let (init_bin, agent_bin) = Self::default_binaries();
        let euid = crate::sys::geteuid();
        let (state_dir, run_dir) = Self::default_dirs(euid, |k| std::env::var_os(k));
        NativeConfig {
            state_dir,
            run_dir,
            cgroup_parent: Self::default_cgroup_parent(euid),
            init_bin,
            agent_bin,
            tmp_size_mb: 256,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        move |k| {
            vars.iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| OsString::from(v))
        }
    }

    #[test]
    fn default_dirs_for_root_and_other_users() {
        let all = [
            ("XDG_DATA_HOME", "/home/u/.data"),
            ("XDG_RUNTIME_DIR", "/run/user/1000"),
            ("HOME", "/home/u"),
        ];
        assert_eq!(
            NativeConfig::default_dirs(0, env(&all)),
            (
                PathBuf::from("/var/lib/sandboxd/native"),
                PathBuf::from("/run/sandboxd/native")
            )
        );
        assert_eq!(
            NativeConfig::default_dirs(1000, env(&all)),
            (
                PathBuf::from("/home/u/.data/sandboxd/native"),
                PathBuf::from("/run/user/1000/sandboxd/native")
            )
        );
        assert_eq!(
            NativeConfig::default_dirs(1000, env(&[("HOME", "/home/u")])),
            (
                PathBuf::from("/home/u/.local/share/sandboxd/native"),
                PathBuf::from("/tmp/sandboxd-1000/run/native")
            )
        );
        // Relative values are ignored, as the XDG spec says.
        assert_eq!(
            NativeConfig::default_dirs(42, env(&[("HOME", "rel"), ("XDG_RUNTIME_DIR", "x")])),
            (
                PathBuf::from("/tmp/sandboxd-42/state/native"),
                PathBuf::from("/tmp/sandboxd-42/run/native")
            )
        );
        assert_eq!(NativeConfig::default_cgroup_parent(0), "sandboxd");
        assert_eq!(NativeConfig::default_cgroup_parent(1000), "sandboxd-1000");
    }
}
