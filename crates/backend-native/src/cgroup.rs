//! Control groups: one interface over cgroup v1, v2 and the hybrid of both.
//!
//! The layout is read from `/proc/self/mountinfo` once, at start-up ([`CgroupLayout::detect`]).
//! Every box gets `<hierarchy>/<parent>/<id>` in each hierarchy the backend uses:
//!
//! - v1 (pure or hybrid): the hierarchies holding `memory`, `pids`, `cpu`, `cpuacct` and
//!   `freezer` (often `cpu,cpuacct` share one). Limits go to `memory.limit_in_bytes` (and
//!   `memory.memsw.limit_in_bytes` where swap accounting exists, so swap cannot dodge the
//!   limit), `pids.max`, `cpu.cfs_period_us`/`cpu.cfs_quota_us`. `cpuset`, `devices`, `blkio`
//!   and the rest are not joined: the box needs none of their limits, and a v1 `cpuset` group
//!   would need `cpuset.cpus`/`cpuset.mems` copied in before any task could join it.
//! - v2 (pure): `memory.max`, `memory.swap.max = 0`, `pids.max`, `cpu.max`, after enabling
//!   `+memory +pids +cpu` in the parents' `cgroup.subtree_control`.
//! - hybrid: the v1 limits above, plus a group in the controller-less v2 tree (usually
//!   `/sys/fs/cgroup/unified`), used to kill and freeze. Where that group has `cgroup.kill`
//!   and `cgroup.freeze` (Linux 5.14), the v1 `freezer` and `cpuacct` hierarchies are not
//!   joined (`V1_REPLACED_BY_V2`).
//!
//! Killing uses the v2 group's `cgroup.kill` where it exists (atomic, even against a fork
//! bomb). On pure v1 it freezes the box's freezer group, SIGKILLs every pid listed, and thaws.
//! Either way it then waits for the groups to empty, reading v2's `populated` flag where there
//! is one; the pids still listed in any of the box's groups after a moment are SIGKILLed until
//! none is left.
//!
//! All file system access goes through [`CgroupFs`], so the logic is unit-tested against a
//! recording fake and run for real on the host.
//!
//! # Rootless: a delegated subtree
//!
//! A server that is not root can only use cgroups delegated to it: `<hierarchy>/<parent>`
//! must exist in every hierarchy above and be writable by its user (the kernel makes each new
//! group's directory and files owned by its creator, so everything below the parent is the
//! server's own). Checked by [`Cgroups::check_delegation`], whose error says which commands
//! set it up. What the kernel then allows, measured on a hybrid host:
//!
//! - v1: making groups and writing their limits; a box's init (uid 0 of its user namespace,
//!   the server's uid on the host) joins them by writing `0` to their `tasks` files, which
//!   the kernel allows because the files are writable by that uid and the writer's host euid
//!   equals the task's uid;
//! - v2: moving a process into a group (by `CLONE_INTO_CGROUP` or through `cgroup.procs`)
//!   needs write access to `cgroup.procs` of the *common ancestor* of its current group and
//!   the target. The server must therefore itself run inside the delegated v2 tree (say in
//!   `<parent>/.server`, a name no box id can take); from the root group it gets `EACCES`.
//!   Such a group of the server's own under the parent is never taken for a stale box
//!   ([`own_group_names`]);
//! - `cgroup.kill`, `freezer.state`, `rmdir` of the boxes' groups: the server owns them.
//!
//! The parent groups themselves are never removed in rootless mode: the server could not
//! make them again.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sandboxd_core::backend::Limits;

/// Errors of the cgroup layer.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// No cgroup file system (v1 or v2) is mounted.
    #[error("no cgroup file system is mounted (looked in /proc/self/mountinfo)")]
    NotMounted,
    /// A controller the backend needs is not available.
    #[error("cgroup controller `{0}` is not available")]
    MissingController(&'static str),
    /// A cgroup file operation failed.
    #[error("cgroup {op} {path}: {source}")]
    Io {
        /// What was being done (`mkdir`, `write`, ...).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A box's cgroup still had processes after killing them for a while.
    #[error("cgroup {path} still has processes after being killed")]
    NotEmpty {
        /// The cgroup directory.
        path: PathBuf,
    },
    /// Freezing or thawing a box's cgroup did not finish in time.
    #[error("cgroup {path} did not become {want} in time")]
    FreezeTimeout {
        /// The cgroup directory.
        path: PathBuf,
        /// `frozen` or `thawed`.
        want: &'static str,
    },
}

impl CgroupError {
    fn io(op: &'static str, path: &Path, source: io::Error) -> Self {
        CgroupError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Version of one mounted hierarchy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    /// A cgroup v1 hierarchy.
    V1,
    /// The cgroup v2 (unified) hierarchy.
    V2,
}

/// How cgroups are mounted on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayoutKind {
    /// Only cgroup v2, at `/sys/fs/cgroup`.
    V2,
    /// Only v1 hierarchies.
    V1,
    /// v1 hierarchies for the controllers plus a v2 tree (usually without controllers).
    Hybrid,
}

/// One mounted hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    /// Where it is mounted.
    pub mountpoint: PathBuf,
    /// v1 or v2.
    pub version: CgroupVersion,
    /// v1: the controllers bound to it (`memory`, `cpu`, ...). v2: empty (see
    /// `cgroup.controllers`).
    pub controllers: Vec<String>,
}

/// The cgroup hierarchies of this host that the backend uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupLayout {
    /// Pure v2, pure v1 or hybrid.
    pub kind: LayoutKind,
    /// v1 hierarchies holding at least one of the controllers the backend uses.
    pub v1: Vec<Hierarchy>,
    /// The v2 hierarchy, if mounted.
    pub v2: Option<Hierarchy>,
}

/// v1 controllers a box joins.
const V1_USED: [&str; 5] = ["memory", "pids", "cpu", "cpuacct", "freezer"];

/// v1 controllers whose work a v2 group does in the hybrid layout once the kernel has
/// `cgroup.kill` and `cgroup.freeze` (5.14): killing, freezing, and the CPU time of
/// `cpu.stat`, which every v2 group has. A v1 hierarchy holding only these is then not
/// joined: each group is a `mkdir`, a join and an `rmdir` under the kernel's cgroup lock at
/// every box. Stale-box cleanup still looks in it, for groups an older server made.
const V1_REPLACED_BY_V2: [&str; 2] = ["cpuacct", "freezer"];

const V1_KNOWN: [&str; 14] = [
    "cpu",
    "cpuacct",
    "cpuset",
    "memory",
    "devices",
    "freezer",
    "net_cls",
    "net_prio",
    "blkio",
    "perf_event",
    "hugetlb",
    "pids",
    "rdma",
    "misc",
];

/// Undo mountinfo's octal escapes (`\040` for a space, ...).
fn unescape_mountinfo(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let oct = &bytes[i + 1..i + 4];
            if oct.iter().all(|b| (b'0'..=b'7').contains(b)) {
                let v = oct
                    .iter()
                    .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
                if let Ok(v) = u8::try_from(v) {
                    out.push(v);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl CgroupLayout {
    /// Read the layout from this process's `/proc/self/mountinfo`.
    pub fn detect() -> Result<Self, CgroupError> {
        let path = Path::new("/proc/self/mountinfo");
        let text = fs::read_to_string(path).map_err(|e| CgroupError::io("read", path, e))?;
        Self::from_mountinfo(&text)
    }

    /// Parse the layout from the text of a `mountinfo` file.
    pub fn from_mountinfo(text: &str) -> Result<Self, CgroupError> {
        let mut v1: Vec<Hierarchy> = Vec::new();
        let mut v2: Option<Hierarchy> = None;
        for line in text.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let left: Vec<&str> = left.split(' ').collect();
            let right: Vec<&str> = right.split(' ').collect();
            if left.len() < 5 || right.len() < 3 {
                continue;
            }
            let mountpoint = PathBuf::from(unescape_mountinfo(left[4]));
            match right[0] {
                "cgroup2" => {
                    // Prefer the conventional places when the tree is mounted more than once.
                    let preferred = mountpoint == Path::new("/sys/fs/cgroup")
                        || mountpoint == Path::new("/sys/fs/cgroup/unified");
                    if v2.is_none() || preferred {
                        v2 = Some(Hierarchy {
                            mountpoint,
                            version: CgroupVersion::V2,
                            controllers: Vec::new(),
                        });
                    }
                }
                "cgroup" => {
                    let controllers: Vec<String> = right[2]
                        .split(',')
                        .filter(|o| V1_KNOWN.contains(o))
                        .map(str::to_string)
                        .collect();
                    let used = controllers.iter().any(|c| V1_USED.contains(&c.as_str()));
                    let seen = v1.iter().any(|h| h.controllers == controllers);
                    if used && !seen {
                        v1.push(Hierarchy {
                            mountpoint,
                            version: CgroupVersion::V1,
                            controllers,
                        });
                    }
                }
                _ => {}
            }
        }
        let kind = match (v1.is_empty(), v2.is_some()) {
            (true, false) => return Err(CgroupError::NotMounted),
            (true, true) => LayoutKind::V2,
            (false, false) => LayoutKind::V1,
            (false, true) => LayoutKind::Hybrid,
        };
        Ok(CgroupLayout { kind, v1, v2 })
    }

    /// The v1 hierarchy holding `controller`.
    pub fn v1_for(&self, controller: &str) -> Option<&Hierarchy> {
        self.v1
            .iter()
            .find(|h| h.controllers.iter().any(|c| c == controller))
    }

    /// Every hierarchy a box joins, v1 first.
    pub fn hierarchies(&self) -> impl Iterator<Item = &Hierarchy> {
        self.v1.iter().chain(self.v2.iter())
    }
}

/// The file system operations the cgroup logic needs; the real one is [`RealCgroupFs`].
pub trait CgroupFs: Send + Sync {
    /// Create one directory (its parent exists). Succeeds if it exists already.
    fn mkdir(&self, path: &Path) -> io::Result<()>;
    /// Remove an empty directory (cgroups are removed with `rmdir`).
    fn rmdir(&self, path: &Path) -> io::Result<()>;
    /// Write a value to a cgroup file.
    fn write(&self, path: &Path, value: &str) -> io::Result<()>;
    /// Read a cgroup file.
    fn read(&self, path: &Path) -> io::Result<String>;
    /// Whether a path exists.
    fn exists(&self, path: &Path) -> bool;
    /// Names of the subdirectories of a directory (empty if it does not exist).
    fn subdirs(&self, path: &Path) -> io::Result<Vec<String>>;
    /// Send SIGKILL to a host pid listed in a cgroup.
    fn kill(&self, pid: i32) -> io::Result<()>;
    /// Whether this process may write to a file, or create entries in a directory (judged by
    /// its effective ids, like an open).
    fn writable(&self, path: &Path) -> bool;
    /// Pause while waiting for the kernel (a no-op in fakes).
    fn pause(&self, dur: Duration);
}

/// [`CgroupFs`] on the real file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealCgroupFs;

impl CgroupFs for RealCgroupFs {
    fn mkdir(&self, path: &Path) -> io::Result<()> {
        match fs::create_dir(path) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            r => r,
        }
    }
    fn rmdir(&self, path: &Path) -> io::Result<()> {
        fs::remove_dir(path)
    }
    fn write(&self, path: &Path, value: &str) -> io::Result<()> {
        // One write(2) per value: cgroup files act on each write, not on the file contents.
        fs::OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|mut f| io::Write::write_all(&mut f, value.as_bytes()))
    }
    fn read(&self, path: &Path) -> io::Result<String> {
        fs::read_to_string(path)
    }
    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
    fn subdirs(&self, path: &Path) -> io::Result<Vec<String>> {
        let entries = match fs::read_dir(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            r => r?,
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                out.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        Ok(out)
    }
    fn kill(&self, pid: i32) -> io::Result<()> {
        crate::sys::kill(pid, libc::SIGKILL)
    }
    fn writable(&self, path: &Path) -> bool {
        crate::sys::access_effective(path, libc::W_OK)
    }
    fn pause(&self, dur: Duration) {
        std::thread::sleep(dur)
    }
}

/// The calling process's group in the v2 hierarchy, from the text of `/proc/self/cgroup`
/// (the `0::<path>` line), e.g. `/sandboxd/.server`.
pub fn own_v2_path(proc_self_cgroup: &str) -> Option<String> {
    proc_self_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_string)
}

/// Names of the groups directly under `parent` that hold the calling process in any
/// hierarchy, from the text of `/proc/self/cgroup` (`<parent>/.server` for a rootless server
/// placed as [`Cgroups::check_delegation`] suggests). They are not boxes: never clean them
/// up, never make a box of that name.
pub fn own_group_names(parent: &str, proc_self_cgroup: &str) -> BTreeSet<String> {
    let parent = Path::new(parent.trim_matches('/'));
    proc_self_cgroup
        .lines()
        .filter_map(|l| l.splitn(3, ':').nth(2))
        .filter_map(|p| {
            let rel = Path::new(p.trim_start_matches('/'));
            let below = rel.strip_prefix(parent).ok()?;
            let first = below.components().next()?;
            Some(first.as_os_str().to_string_lossy().into_owned())
        })
        .collect()
}

/// The longest common leading path of two cgroup paths (relative to one hierarchy's root,
/// with or without a leading `/`).
pub fn common_ancestor(a: &str, b: &str) -> PathBuf {
    Path::new(a.trim_start_matches('/'))
        .components()
        .zip(Path::new(b.trim_start_matches('/')).components())
        .take_while(|(x, y)| x == y)
        .map(|(x, _)| x)
        .collect()
}

/// How a new box's process joins its groups.
///
/// Moving a process by writing to `cgroup.procs` takes a global lock whose first writer
/// waits for an RCU grace period (about 12 ms here), which would dominate a box's start. So
/// the v2 group is joined at birth with `clone3(CLONE_INTO_CGROUP)` (only a read lock), and
/// the v1 groups by the single-threaded init writing `0` to each `tasks` file, which moves
/// just the calling thread and skips the global lock.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JoinPlan {
    /// v1 `tasks` files to write `0` to.
    pub v1_tasks: Vec<PathBuf>,
    /// The v2 group, joined with `CLONE_INTO_CGROUP`, or else through its `cgroup.procs`.
    pub v2_dir: Option<PathBuf>,
}

/// CFS period used for CPU quotas, in microseconds.
pub const CPU_PERIOD_US: u64 = 100_000;

/// How long [`Cgroups::kill`] and [`Cgroups::remove`] keep trying.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long [`Cgroups::kill`] trusts v2's `populated` flag before it lists the tasks left.
const LIST_AFTER: Duration = Duration::from_millis(20);

/// The cgroups of the boxes of one backend: `<hierarchy>/<parent>/<id>`.
pub struct Cgroups<F: CgroupFs = RealCgroupFs> {
    layout: CgroupLayout,
    parent: String,
    fs: F,
    /// Whether the v2 groups have `cgroup.kill` and `cgroup.freeze` (a kernel feature, so
    /// looked up at the first create, not at every one).
    v2_kills_and_freezes: std::sync::OnceLock<bool>,
}

impl<F: CgroupFs> std::fmt::Debug for Cgroups<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cgroups")
            .field("layout", &self.layout)
            .field("parent", &self.parent)
            .finish()
    }
}

impl<F: CgroupFs> Cgroups<F> {
    /// Cgroups under `parent` (a relative path such as `sandboxd`) in every hierarchy of
    /// `layout`. Checks that the controllers the limits need are there.
    pub fn new(layout: CgroupLayout, parent: &str, fs: F) -> Result<Self, CgroupError> {
        if layout.kind != LayoutKind::V2 {
            for c in ["memory", "pids"] {
                if layout.v1_for(c).is_none() {
                    return Err(CgroupError::MissingController(c));
                }
            }
        } else if let Some(v2) = &layout.v2 {
            let path = v2.mountpoint.join("cgroup.controllers");
            let have = fs
                .read(&path)
                .map_err(|e| CgroupError::io("read", &path, e))?;
            for c in ["memory", "pids"] {
                if !have.split_whitespace().any(|h| h == c) {
                    return Err(CgroupError::MissingController(c));
                }
            }
        }
        Ok(Cgroups {
            layout,
            parent: parent.trim_matches('/').to_string(),
            fs,
            v2_kills_and_freezes: std::sync::OnceLock::new(),
        })
    }

    /// The detected layout.
    pub fn layout(&self) -> &CgroupLayout {
        &self.layout
    }

    /// `<hierarchy>/<parent>` for every hierarchy used.
    pub fn parent_dirs(&self) -> Vec<PathBuf> {
        self.layout
            .hierarchies()
            .map(|h| h.mountpoint.join(&self.parent))
            .collect()
    }

    /// `<hierarchy>/<parent>/<id>` for every hierarchy used.
    pub fn box_dirs(&self, id: &str) -> Vec<PathBuf> {
        self.parent_dirs().into_iter().map(|p| p.join(id)).collect()
    }

    fn v2_box_dir(&self, id: &str) -> Option<PathBuf> {
        self.layout
            .v2
            .as_ref()
            .map(|h| h.mountpoint.join(&self.parent).join(id))
    }

    fn write(&self, path: &Path, value: &str) -> Result<(), CgroupError> {
        self.fs
            .write(path, value)
            .map_err(|e| CgroupError::io("write", path, e))
    }

    fn mkdir_parents(&self, hierarchy: &Path) -> Result<(), CgroupError> {
        let mut dir = hierarchy.to_path_buf();
        for part in Path::new(&self.parent).components() {
            dir.push(part);
            self.fs
                .mkdir(&dir)
                .map_err(|e| CgroupError::io("mkdir", &dir, e))?;
        }
        Ok(())
    }

    /// On pure v2, enable the controllers in every `cgroup.subtree_control` from the root down
    /// to the parent. Controllers already enabled are not written again.
    fn enable_v2_controllers(&self, root: &Path) -> Result<(), CgroupError> {
        let mut dir = root.to_path_buf();
        let mut levels = vec![dir.clone()];
        for part in Path::new(&self.parent).components() {
            dir.push(part);
            levels.push(dir.clone());
        }
        for level in levels {
            let available = self
                .fs
                .read(&level.join("cgroup.controllers"))
                .unwrap_or_default();
            let enabled = self
                .fs
                .read(&level.join("cgroup.subtree_control"))
                .unwrap_or_default();
            for c in ["memory", "pids", "cpu"] {
                let has = |s: &str| s.split_whitespace().any(|x| x == c);
                if has(&available) && !has(&enabled) {
                    // cpu may be refused (e.g. realtime tasks in the root group); memory and
                    // pids are checked on the box group below.
                    let _ = self.write(&level.join("cgroup.subtree_control"), &format!("+{c}"));
                }
            }
        }
        Ok(())
    }

    /// Rootless mode: check that the parent groups are delegated to this process's user (they
    /// exist and are writable in every hierarchy; on pure v2 the controllers are enabled for
    /// them), and that `own_v2` (this process's v2 group, see [`own_v2_path`]) shares with the
    /// v2 parent an ancestor whose `cgroup.procs` it can write, which the kernel requires to
    /// start a process in a box's group. The error lists what is wrong and the commands (for
    /// root) that fix it.
    pub fn check_delegation(
        &self,
        uid: libc::uid_t,
        gid: libc::gid_t,
        own_v2: Option<&str>,
    ) -> Result<(), String> {
        // The v1 hierarchies a box does not join need no delegation. Whether the v2 group
        // kills and freezes is seen on the delegated v2 parent; while it is missing, every
        // hierarchy is asked for.
        let v2_parent_does = self.layout.v2.as_ref().is_some_and(|h| {
            let p = h.mountpoint.join(&self.parent);
            self.fs.exists(&p.join("cgroup.kill")) && self.fs.exists(&p.join("cgroup.freeze"))
        });
        let dirs: Vec<PathBuf> = self
            .layout
            .hierarchies()
            .filter(|h| !(v2_parent_does && replaced_by_v2(h)))
            .map(|h| h.mountpoint.join(&self.parent))
            .collect();
        let mut problems = Vec::new();
        for dir in &dirs {
            if !self.fs.exists(dir) {
                problems.push(format!("{} does not exist", dir.display()));
            } else if !self.fs.writable(dir) {
                problems.push(format!("{} is not writable by uid {uid}", dir.display()));
            }
        }
        let mut place_server = None;
        let mut enable_controllers = Vec::new();
        if let Some(v2) = &self.layout.v2 {
            let parent_dir = v2.mountpoint.join(&self.parent);
            let own = own_v2.unwrap_or("/");
            let ancestor = v2
                .mountpoint
                .join(common_ancestor(own, &self.parent))
                .join("cgroup.procs");
            if !self.fs.writable(&ancestor) {
                problems.push(format!(
                    "this process is in the v2 group {own}, and the kernel only lets it start a \
                     box in {} if it can write {}, the cgroup.procs of their common ancestor",
                    parent_dir.display(),
                    ancestor.display()
                ));
                place_server = Some(parent_dir.join(".server"));
            }
            if self.layout.kind == LayoutKind::V2 && own.trim_matches('/') == self.parent {
                // Pure v2 allows no process in a group that hands controllers to children.
                problems.push(format!(
                    "this process is in {} itself, where the v2 rule \"no processes in inner \
                     groups\" keeps the controllers from being enabled for the boxes",
                    parent_dir.display()
                ));
                place_server = Some(parent_dir.join(".server"));
            }
            if self.layout.kind == LayoutKind::V2 && self.fs.exists(&parent_dir) {
                let have = self
                    .fs
                    .read(&parent_dir.join("cgroup.controllers"))
                    .unwrap_or_default();
                let missing: Vec<&str> = ["memory", "pids"]
                    .into_iter()
                    .filter(|c| !have.split_whitespace().any(|h| h == *c))
                    .collect();
                if !missing.is_empty() {
                    problems.push(format!(
                        "the {} controllers are not enabled for {}",
                        missing.join(" and "),
                        parent_dir.display()
                    ));
                    let mut level = v2.mountpoint.clone();
                    enable_controllers.push(level.clone());
                    let parts: Vec<_> = Path::new(&self.parent).components().collect();
                    for part in parts.iter().take(parts.len().saturating_sub(1)) {
                        level.push(part);
                        enable_controllers.push(level.clone());
                    }
                }
                let control = parent_dir.join("cgroup.subtree_control");
                if !self.fs.writable(&control) {
                    problems.push(format!("{} is not writable", control.display()));
                }
            }
        }
        if problems.is_empty() {
            return Ok(());
        }
        let list = |v: &[PathBuf]| {
            v.iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(" ")
        };
        let mut make = dirs.clone();
        make.extend(place_server.clone());
        let mut msg = format!(
            "rootless mode (uid {uid}, gid {gid}) needs the cgroup parent `{parent}` delegated \
             to this user in every hierarchy the backend uses, with the server itself inside \
             the delegated v2 tree; {problems}. To set it up, as root: `mkdir -p {make} && \
             chown -R {uid}:{gid} {dirs}`",
            parent = self.parent,
            problems = problems.join("; "),
            make = list(&make),
            dirs = list(&dirs),
        );
        for level in &enable_controllers {
            msg.push_str(&format!(
                ", `echo '+memory +pids +cpu' > {}`",
                level.join("cgroup.subtree_control").display()
            ));
        }
        if let Some(server) = place_server {
            msg.push_str(&format!(
                ", then start sandboxd from a process in that v2 group: `echo <pid of the shell \
                 that starts sandboxd> > {}` (its children inherit the group), or run it as a \
                 systemd unit with `Delegate=yes` and a cgroup parent inside the unit's own \
                 cgroup",
                server.join("cgroup.procs").display()
            ));
        }
        Err(msg)
    }

    /// Create the box's groups and apply its limits. Returns how the box's init joins them.
    /// On error, whatever was created is removed again.
    pub fn create(&self, id: &str, limits: &Limits) -> Result<JoinPlan, CgroupError> {
        let result = self.create_inner(id, limits);
        if result.is_err() {
            let _ = self.remove(id);
        }
        result
    }

    fn create_inner(&self, id: &str, limits: &Limits) -> Result<JoinPlan, CgroupError> {
        // The v2 group first: whether it can kill and freeze decides the v1 groups.
        let mut plan = JoinPlan {
            v2_dir: self.create_v2(id, limits)?,
            ..Default::default()
        };
        let v2_kills_and_freezes = plan.v2_dir.as_ref().is_some_and(|dir| {
            *self.v2_kills_and_freezes.get_or_init(|| {
                self.fs.exists(&dir.join("cgroup.kill"))
                    && self.fs.exists(&dir.join("cgroup.freeze"))
            })
        });
        for h in self.layout.v1.iter() {
            if v2_kills_and_freezes && replaced_by_v2(h) {
                continue;
            }
            self.mkdir_parents(&h.mountpoint)?;
            let dir = h.mountpoint.join(&self.parent).join(id);
            self.fs
                .mkdir(&dir)
                .map_err(|e| CgroupError::io("mkdir", &dir, e))?;
            let has = |c: &str| h.controllers.iter().any(|x| x == c);
            if has("memory") && limits.memory_bytes > 0 {
                let bytes = limits.memory_bytes.to_string();
                self.write(&dir.join("memory.limit_in_bytes"), &bytes)?;
                let memsw = dir.join("memory.memsw.limit_in_bytes");
                if self.fs.exists(&memsw) {
                    self.write(&memsw, &bytes)?;
                }
            }
            if has("pids") && limits.pids > 0 {
                self.write(&dir.join("pids.max"), &limits.pids.to_string())?;
            }
            if has("cpu") && limits.cpu_millis > 0 {
                self.write(&dir.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                self.write(
                    &dir.join("cpu.cfs_quota_us"),
                    &cpu_quota_us(limits.cpu_millis).to_string(),
                )?;
            }
            plan.v1_tasks.push(dir.join("tasks"));
        }
        Ok(plan)
    }

    /// The box's v2 group, with its limits on a pure v2 host; `None` without a v2 hierarchy.
    fn create_v2(&self, id: &str, limits: &Limits) -> Result<Option<PathBuf>, CgroupError> {
        let Some(h) = &self.layout.v2 else {
            return Ok(None);
        };
        let pure = self.layout.kind == LayoutKind::V2;
        self.mkdir_parents(&h.mountpoint)?;
        if pure {
            self.enable_v2_controllers(&h.mountpoint)?;
        }
        let dir = h.mountpoint.join(&self.parent).join(id);
        self.fs
            .mkdir(&dir)
            .map_err(|e| CgroupError::io("mkdir", &dir, e))?;
        if !pure {
            return Ok(Some(dir));
        }
        let have = self
            .fs
            .read(&dir.join("cgroup.controllers"))
            .unwrap_or_default();
        let has = |c: &str| have.split_whitespace().any(|x| x == c);
        for c in ["memory", "pids"] {
            if !has(c) {
                return Err(CgroupError::MissingController(c));
            }
        }
        if limits.memory_bytes > 0 {
            self.write(&dir.join("memory.max"), &limits.memory_bytes.to_string())?;
            let swap = dir.join("memory.swap.max");
            if self.fs.exists(&swap) {
                self.write(&swap, "0")?;
            }
        }
        if limits.pids > 0 {
            self.write(&dir.join("pids.max"), &limits.pids.to_string())?;
        }
        if limits.cpu_millis > 0 && has("cpu") {
            let value = format!("{} {}", cpu_quota_us(limits.cpu_millis), CPU_PERIOD_US);
            self.write(&dir.join("cpu.max"), &value)?;
        }
        Ok(Some(dir))
    }

    /// Pids (host view) in any of the box's groups.
    pub fn pids(&self, id: &str) -> Vec<i32> {
        let mut pids = BTreeSet::new();
        for dir in self.box_dirs(id) {
            if let Ok(text) = self.fs.read(&dir.join("cgroup.procs")) {
                pids.extend(
                    text.split_whitespace()
                        .filter_map(|p| p.parse::<i32>().ok()),
                );
            }
        }
        pids.into_iter().collect()
    }

    /// Give the box's group the least CPU weight there is (v1 `cpu.shares` 2, v2 `cpu.weight`
    /// 1), just before it is killed. Its processes do their own exit (unmapping their memory;
    /// the last one tears down the box's mount and network namespaces), and at the weight of a
    /// live box that work takes a live box's share of the CPUs; at the least weight it runs
    /// when the boxes still in use leave time. Measured with 128 clients creating, running and
    /// deleting at once on two cores: the time to interactive of the sandboxes created while
    /// others were being deleted fell by a third to a half at the median (BENCHMARKS.md). Best
    /// effort: without a `cpu` controller for the box the weight stays, which costs the other
    /// boxes only speed.
    pub fn lower_cpu_weight(&self, id: &str) {
        let target = match self.layout.v1_for("cpu") {
            Some(h) => Some((h.mountpoint.join(&self.parent).join(id), "cpu.shares", "2")),
            None if self.layout.kind == LayoutKind::V2 => {
                self.v2_box_dir(id).map(|dir| (dir, "cpu.weight", "1"))
            }
            None => None,
        };
        if let Some((dir, file, value)) = target {
            let _ = self.fs.write(&dir.join(file), value);
        }
    }

    /// Kill every process of the box and wait until its groups are empty.
    pub fn kill(&self, id: &str) -> Result<(), CgroupError> {
        let killed_by_v2 = match self.v2_box_dir(id) {
            Some(dir) if self.fs.exists(&dir.join("cgroup.kill")) => {
                self.write(&dir.join("cgroup.kill"), "1")?;
                true
            }
            _ => false,
        };
        if killed_by_v2 {
            // A task frozen by v1's freezer only dies once thawed (v2's frozen tasks die at
            // once); a paused box may have been frozen either way.
            self.thaw_v1(id);
        } else {
            self.kill_frozen(id)?;
        }
        // Killed tasks take a moment to exit: look again soon, then less and less often.
        // While v2's `populated` flag says tasks remain, they are dying (cgroup.kill reached
        // every one, and any it forks); listing them (a pid list built per hierarchy) is left
        // for a group that is slow to empty. Whatever is still listed then (a v1-only host
        // without a freezer, or a task the freezer missed) is killed one by one.
        let start = Instant::now();
        let mut pause = Duration::from_micros(100);
        loop {
            let listed = match self.populated(id) {
                Some(false) => return Ok(()),
                Some(true) if start.elapsed() < LIST_AFTER => None,
                _ => Some(self.pids(id)),
            };
            if let Some(left) = listed {
                if left.is_empty() {
                    return Ok(());
                }
                if start.elapsed() > SETTLE_TIMEOUT {
                    let path = self.box_dirs(id).into_iter().next().unwrap_or_default();
                    return Err(CgroupError::NotEmpty { path });
                }
                for pid in left {
                    let _ = self.fs.kill(pid);
                }
            }
            self.fs.pause(pause);
            pause = (pause * 2).min(Duration::from_millis(5));
        }
    }

    /// Whether the box's v2 group still has live tasks (`cgroup.events`); `None` without a
    /// v2 group or when the file cannot be read.
    fn populated(&self, id: &str) -> Option<bool> {
        let events = self
            .fs
            .read(&self.v2_box_dir(id)?.join("cgroup.events"))
            .ok()?;
        events
            .lines()
            .find_map(|l| l.strip_prefix("populated "))
            .map(|v| v.trim() != "0")
    }

    /// Freeze every process of the box (`frozen`), or thaw them, and wait until the kernel
    /// reports it done. v2's `cgroup.freeze` when the box has a v2 group (in the hybrid layout
    /// too), else v1's `freezer` controller.
    pub fn set_frozen(&self, id: &str, frozen: bool) -> Result<(), CgroupError> {
        let want = if frozen { "frozen" } else { "thawed" };
        // (group, file to write, value, file that reports the state, its line once done)
        let (dir, control, value, status, done) = match self.v2_box_dir(id) {
            Some(dir) if self.fs.exists(&dir.join("cgroup.freeze")) => {
                let (value, done) = if frozen {
                    ("1", "frozen 1")
                } else {
                    ("0", "frozen 0")
                };
                (dir, "cgroup.freeze", value, "cgroup.events", done)
            }
            _ => {
                let h = self
                    .layout
                    .v1_for("freezer")
                    .ok_or(CgroupError::MissingController("freezer"))?;
                let value = if frozen { "FROZEN" } else { "THAWED" };
                let dir = h.mountpoint.join(&self.parent).join(id);
                (dir, "freezer.state", value, "freezer.state", value)
            }
        };
        self.write(&dir.join(control), value)?;
        let status = dir.join(status);
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            let now = self
                .fs
                .read(&status)
                .map_err(|e| CgroupError::io("read", &status, e))?;
            if now.lines().any(|l| l.trim() == done) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(CgroupError::FreezeTimeout { path: dir, want });
            }
            self.fs.pause(Duration::from_millis(1));
        }
    }

    /// Thaw the box's v1 freezer group if it has one and it is not thawed.
    fn thaw_v1(&self, id: &str) {
        if let Some(h) = self.layout.v1_for("freezer") {
            let state = h
                .mountpoint
                .join(&self.parent)
                .join(id)
                .join("freezer.state");
            if self.fs.read(&state).is_ok_and(|s| s.trim() != "THAWED") {
                let _ = self.fs.write(&state, "THAWED");
            }
        }
    }

    /// v1 without `cgroup.kill`: freeze so nothing can fork while we kill, kill, thaw (a
    /// frozen task only dies once thawed).
    fn kill_frozen(&self, id: &str) -> Result<(), CgroupError> {
        let Some(h) = self.layout.v1_for("freezer") else {
            return Ok(());
        };
        let dir = h.mountpoint.join(&self.parent).join(id);
        let state = dir.join("freezer.state");
        if !self.fs.exists(&state) {
            return Ok(());
        }
        self.write(&state, "FROZEN")?;
        let deadline = Instant::now() + Duration::from_secs(1);
        while self
            .fs
            .read(&state)
            .map(|s| s.trim() != "FROZEN")
            .unwrap_or(false)
            && Instant::now() < deadline
        {
            self.fs.pause(Duration::from_millis(1));
        }
        if let Ok(text) = self.fs.read(&dir.join("cgroup.procs")) {
            for pid in text
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                let _ = self.fs.kill(pid);
            }
        }
        self.write(&state, "THAWED")
    }

    /// Remove the box's groups (they must be empty; the kernel may need a moment after the
    /// last task died). Returns how many directories were removed.
    pub fn remove(&self, id: &str) -> Result<usize, CgroupError> {
        let mut removed = 0;
        for dir in self.box_dirs(id) {
            if !self.fs.exists(&dir) {
                continue;
            }
            let deadline = Instant::now() + SETTLE_TIMEOUT;
            loop {
                match self.fs.rmdir(&dir) {
                    Ok(()) => {
                        removed += 1;
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(e)
                        if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline =>
                    {
                        self.fs.pause(Duration::from_millis(5));
                    }
                    Err(e) => return Err(CgroupError::io("rmdir", &dir, e)),
                }
            }
        }
        Ok(removed)
    }

    /// Ids of every box group found under the parent, in any hierarchy.
    pub fn stale_ids(&self) -> Result<BTreeSet<String>, CgroupError> {
        let mut ids = BTreeSet::new();
        for dir in self.parent_dirs() {
            let names = self
                .fs
                .subdirs(&dir)
                .map_err(|e| CgroupError::io("list", &dir, e))?;
            ids.extend(names);
        }
        Ok(ids)
    }

    /// Remove the parent groups if they are empty (they are re-created on the next create).
    /// Returns how many were removed.
    pub fn remove_parents(&self) -> usize {
        let mut removed = 0;
        for dir in self.parent_dirs() {
            // Innermost first, for a nested parent like `a/b`.
            let mut d = dir.clone();
            for _ in Path::new(&self.parent).components() {
                if self.fs.rmdir(&d).is_ok() {
                    removed += 1;
                } else {
                    break;
                }
                d.pop();
            }
        }
        removed
    }
}

/// Whether `h` is a v1 hierarchy whose every controller's work a v2 group with `cgroup.kill`
/// and `cgroup.freeze` does ([`V1_REPLACED_BY_V2`]), so that a box need not join it.
fn replaced_by_v2(h: &Hierarchy) -> bool {
    !h.controllers.is_empty()
        && h.controllers
            .iter()
            .all(|c| V1_REPLACED_BY_V2.contains(&c.as_str()))
}

/// CPU quota per [`CPU_PERIOD_US`] for a share of `millis` thousandths of a core.
pub fn cpu_quota_us(millis: u64) -> u64 {
    // The kernel refuses quotas under 1 ms.
    (millis.saturating_mul(CPU_PERIOD_US) / 1000).max(1000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    const PURE_V2: &str = "\
22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
30 24 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

    const PURE_V1: &str = "\
25 24 0:22 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
27 25 0:24 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,cpu,cpuacct
28 25 0:25 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:12 - cgroup cgroup rw,memory
29 25 0:26 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:13 - cgroup cgroup rw,pids
30 25 0:27 / /sys/fs/cgroup/freezer rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,freezer
31 25 0:28 / /sys/fs/cgroup/devices rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,devices
";

    #[test]
    fn detects_hybrid() {
        let l = CgroupLayout::from_mountinfo(HYBRID).unwrap();
        assert_eq!(l.kind, LayoutKind::Hybrid);
        let mps: Vec<_> = l.v1.iter().map(|h| h.mountpoint.clone()).collect();
        assert_eq!(
            mps,
            ["cpu", "cpuacct", "memory", "freezer", "pids"]
                .iter()
                .map(|c| PathBuf::from("/sys/fs/cgroup").join(c))
                .collect::<Vec<_>>()
        );
        assert_eq!(
            l.v2.unwrap().mountpoint,
            PathBuf::from("/sys/fs/cgroup/unified")
        );
    }

    #[test]
    fn detects_pure_v2_and_v1() {
        let l = CgroupLayout::from_mountinfo(PURE_V2).unwrap();
        assert_eq!(l.kind, LayoutKind::V2);
        assert!(l.v1.is_empty());
        assert_eq!(l.v2.unwrap().mountpoint, PathBuf::from("/sys/fs/cgroup"));

        let l = CgroupLayout::from_mountinfo(PURE_V1).unwrap();
        assert_eq!(l.kind, LayoutKind::V1);
        assert!(l.v2.is_none());
        let cpu = l.v1_for("cpuacct").unwrap();
        assert_eq!(cpu.mountpoint, PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"));
        assert_eq!(cpu.controllers, vec!["cpu", "cpuacct"]);
        assert!(
            l.v1_for("devices").is_none(),
            "unused hierarchies are skipped"
        );
    }

    #[test]
    fn no_cgroups_is_an_error() {
        assert!(matches!(
            CgroupLayout::from_mountinfo("22 1 0:21 / /proc rw - proc proc rw\n"),
            Err(CgroupError::NotMounted)
        ));
    }

    #[test]
    fn unescapes_mountpoints() {
        assert_eq!(unescape_mountinfo(r"/a\040b\134c"), r"/a b\c");
        assert_eq!(unescape_mountinfo(r"/plain\"), r"/plain\");
    }

    #[test]
    fn this_host_layout_is_detected() {
        // Whatever this host is, detection must succeed and find memory and pids.
        let l = CgroupLayout::detect().unwrap();
        match l.kind {
            LayoutKind::V2 => assert!(l.v2.is_some()),
            _ => {
                assert!(l.v1_for("memory").is_some());
                assert!(l.v1_for("pids").is_some());
            }
        }
    }

    /// A fake file system that records writes and knows which files exist.
    #[derive(Default)]
    struct Fake {
        files: Mutex<BTreeMap<PathBuf, String>>,
        dirs: Mutex<BTreeSet<PathBuf>>,
        log: Mutex<Vec<String>>,
        /// Paths `writable` says yes to.
        writable: Mutex<BTreeSet<PathBuf>>,
    }

    impl Fake {
        fn with_files(files: &[(&str, &str)]) -> Self {
            let fake = Fake::default();
            for (p, v) in files {
                fake.files.lock().unwrap().insert(p.into(), v.to_string());
            }
            fake
        }
        fn log(&self) -> Vec<String> {
            self.log.lock().unwrap().clone()
        }
    }

    impl CgroupFs for &Fake {
        fn mkdir(&self, path: &Path) -> io::Result<()> {
            if self.dirs.lock().unwrap().insert(path.to_path_buf()) {
                self.log
                    .lock()
                    .unwrap()
                    .push(format!("mkdir {}", path.display()));
            }
            Ok(())
        }
        fn rmdir(&self, path: &Path) -> io::Result<()> {
            if self
                .dirs
                .lock()
                .unwrap()
                .iter()
                .any(|d| d.parent() == Some(path))
            {
                return Err(io::Error::from_raw_os_error(libc::ENOTEMPTY));
            }
            if self.dirs.lock().unwrap().remove(path) {
                self.log
                    .lock()
                    .unwrap()
                    .push(format!("rmdir {}", path.display()));
                Ok(())
            } else {
                Err(io::ErrorKind::NotFound.into())
            }
        }
        fn write(&self, path: &Path, value: &str) -> io::Result<()> {
            self.log
                .lock()
                .unwrap()
                .push(format!("write {} {}", path.display(), value));
            self.files
                .lock()
                .unwrap()
                .insert(path.to_path_buf(), value.to_string());
            Ok(())
        }
        fn read(&self, path: &Path) -> io::Result<String> {
            self.files
                .lock()
                .unwrap()
                .get(path)
                .cloned()
                .ok_or_else(|| io::ErrorKind::NotFound.into())
        }
        fn exists(&self, path: &Path) -> bool {
            self.files.lock().unwrap().contains_key(path)
                || self.dirs.lock().unwrap().contains(path)
        }
        fn subdirs(&self, path: &Path) -> io::Result<Vec<String>> {
            Ok(self
                .dirs
                .lock()
                .unwrap()
                .iter()
                .filter(|d| d.parent() == Some(path))
                .map(|d| d.file_name().unwrap().to_string_lossy().into_owned())
                .collect())
        }
        fn kill(&self, pid: i32) -> io::Result<()> {
            self.log.lock().unwrap().push(format!("kill {pid}"));
            // Killing empties every cgroup.procs in this fake.
            for (p, v) in self.files.lock().unwrap().iter_mut() {
                if p.ends_with("cgroup.procs") {
                    v.clear();
                }
            }
            Ok(())
        }
        fn writable(&self, path: &Path) -> bool {
            self.writable.lock().unwrap().contains(path)
        }
        fn pause(&self, _: Duration) {}
    }

    const LIMITS: Limits = Limits {
        memory_bytes: 32 << 20,
        cpu_millis: 500,
        pids: 32,
        disk_bytes: 0,
    };

    #[test]
    fn hybrid_create_writes_v1_limits_and_makes_a_v2_group() {
        let fake = Fake::with_files(&[(
            "/sys/fs/cgroup/memory/sbx/b1/memory.memsw.limit_in_bytes",
            "",
        )]);
        let layout = CgroupLayout::from_mountinfo(HYBRID).unwrap();
        let cg = Cgroups::new(layout, "sbx", &fake).unwrap();
        let plan = cg.create("b1", &LIMITS).unwrap();
        assert_eq!(plan.v1_tasks.len(), 5);
        assert!(plan
            .v1_tasks
            .contains(&PathBuf::from("/sys/fs/cgroup/memory/sbx/b1/tasks")));
        assert_eq!(
            plan.v2_dir,
            Some(PathBuf::from("/sys/fs/cgroup/unified/sbx/b1"))
        );
        let log = fake.log();
        let pos = |s: &str| {
            log.iter()
                .position(|l| l == s)
                .unwrap_or_else(|| panic!("{s} not in {log:#?}"))
        };
        let mem = pos("write /sys/fs/cgroup/memory/sbx/b1/memory.limit_in_bytes 33554432");
        let memsw = pos("write /sys/fs/cgroup/memory/sbx/b1/memory.memsw.limit_in_bytes 33554432");
        assert!(
            mem < memsw,
            "memsw may only be set once the limit is below it"
        );
        pos("write /sys/fs/cgroup/pids/sbx/b1/pids.max 32");
        pos("write /sys/fs/cgroup/cpu/sbx/b1/cpu.cfs_period_us 100000");
        pos("write /sys/fs/cgroup/cpu/sbx/b1/cpu.cfs_quota_us 50000");
        assert!(pos("mkdir /sys/fs/cgroup/memory/sbx") < pos("mkdir /sys/fs/cgroup/memory/sbx/b1"));
        pos("mkdir /sys/fs/cgroup/unified/sbx/b1");
        assert!(!log.iter().any(|l| l.contains("subtree_control")));
        assert!(!log
            .iter()
            .any(|l| l.contains("/cpuset/") || l.contains("/devices/")));
    }

    #[test]
    fn hybrid_skips_v1_freezer_and_cpuacct_when_v2_kills_and_freezes() {
        let fake = Fake::with_files(&[
            ("/sys/fs/cgroup/unified/sbx/b1/cgroup.kill", ""),
            ("/sys/fs/cgroup/unified/sbx/b1/cgroup.freeze", "0"),
        ]);
        let layout = CgroupLayout::from_mountinfo(HYBRID).unwrap();
        let cg = Cgroups::new(layout, "sbx", &fake).unwrap();
        let plan = cg.create("b1", &LIMITS).unwrap();
        let joined: Vec<String> = plan
            .v1_tasks
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        assert_eq!(
            joined,
            [
                "/sys/fs/cgroup/cpu/sbx/b1/tasks",
                "/sys/fs/cgroup/memory/sbx/b1/tasks",
                "/sys/fs/cgroup/pids/sbx/b1/tasks"
            ]
        );
        let log = fake.log();
        assert!(
            !log.iter()
                .any(|l| l.contains("/cpuacct/") || l.contains("/freezer/")),
            "{log:#?}"
        );
        // A group an older server made there is still found and removed.
        (&fake)
            .mkdir(Path::new("/sys/fs/cgroup/freezer/sbx/old"))
            .unwrap();
        assert!(cg.stale_ids().unwrap().contains("old"));
        assert_eq!(cg.remove("old").unwrap(), 1);
    }

    #[test]
    fn pure_v2_create_enables_controllers_and_writes_v2_files() {
        let fake = Fake::with_files(&[
            (
                "/sys/fs/cgroup/cgroup.controllers",
                "cpuset cpu io memory pids",
            ),
            ("/sys/fs/cgroup/cgroup.subtree_control", "memory"),
            ("/sys/fs/cgroup/a/b/cgroup.controllers", "cpu memory pids"),
            ("/sys/fs/cgroup/a/cgroup.controllers", "cpu memory pids"),
            ("/sys/fs/cgroup/a/b/x/cgroup.controllers", "cpu memory pids"),
            ("/sys/fs/cgroup/a/b/x/memory.swap.max", "max"),
        ]);
        let layout = CgroupLayout::from_mountinfo(PURE_V2).unwrap();
        let cg = Cgroups::new(layout, "/a/b/", &fake).unwrap();
        let plan = cg.create("x", &LIMITS).unwrap();
        assert!(plan.v1_tasks.is_empty());
        assert_eq!(plan.v2_dir, Some(PathBuf::from("/sys/fs/cgroup/a/b/x")));
        let log = fake.log();
        for want in [
            "write /sys/fs/cgroup/cgroup.subtree_control +pids",
            "write /sys/fs/cgroup/cgroup.subtree_control +cpu",
            "write /sys/fs/cgroup/a/cgroup.subtree_control +memory",
            "write /sys/fs/cgroup/a/b/cgroup.subtree_control +memory",
            "write /sys/fs/cgroup/a/b/x/memory.max 33554432",
            "write /sys/fs/cgroup/a/b/x/memory.swap.max 0",
            "write /sys/fs/cgroup/a/b/x/pids.max 32",
            "write /sys/fs/cgroup/a/b/x/cpu.max 50000 100000",
        ] {
            assert!(log.iter().any(|l| l == want), "{want} not in {log:#?}");
        }
        assert!(
            !log.iter()
                .any(|l| l == "write /sys/fs/cgroup/cgroup.subtree_control +memory"),
            "already enabled controllers are not written again"
        );
    }

    #[test]
    fn pure_v2_without_memory_controller_is_refused() {
        let fake = Fake::with_files(&[("/sys/fs/cgroup/cgroup.controllers", "cpu pids")]);
        let layout = CgroupLayout::from_mountinfo(PURE_V2).unwrap();
        assert!(matches!(
            Cgroups::new(layout, "sbx", &fake),
            Err(CgroupError::MissingController("memory"))
        ));
    }

    #[test]
    fn kill_prefers_cgroup_kill_and_falls_back_to_the_freezer() {
        let fake = Fake::with_files(&[
            ("/sys/fs/cgroup/unified/sbx/b1/cgroup.kill", ""),
            ("/sys/fs/cgroup/unified/sbx/b1/cgroup.procs", "100\n101\n"),
        ]);
        let cg = Cgroups::new(CgroupLayout::from_mountinfo(HYBRID).unwrap(), "sbx", &fake).unwrap();
        // The fake's cgroup.kill does nothing and there is no `cgroup.events`, so the per-pid
        // fallback must finish the job.
        cg.kill("b1").unwrap();
        let log = fake.log();
        assert_eq!(log[0], "write /sys/fs/cgroup/unified/sbx/b1/cgroup.kill 1");
        assert!(log.contains(&"kill 100".to_string()));

        let fake = Fake::with_files(&[
            ("/sys/fs/cgroup/freezer/sbx/b1/freezer.state", "THAWED"),
            ("/sys/fs/cgroup/freezer/sbx/b1/cgroup.procs", "7\n"),
        ]);
        let cg =
            Cgroups::new(CgroupLayout::from_mountinfo(PURE_V1).unwrap(), "sbx", &fake).unwrap();
        cg.kill("b1").unwrap();
        assert_eq!(
            fake.log(),
            vec![
                "write /sys/fs/cgroup/freezer/sbx/b1/freezer.state FROZEN",
                "kill 7",
                "write /sys/fs/cgroup/freezer/sbx/b1/freezer.state THAWED",
            ]
        );
    }

    #[test]
    fn a_box_about_to_be_killed_gets_the_least_cpu_weight() {
        for (mountinfo, want) in [
            (HYBRID, "write /sys/fs/cgroup/cpu/sbx/b1/cpu.shares 2"),
            (
                PURE_V1,
                "write /sys/fs/cgroup/cpu,cpuacct/sbx/b1/cpu.shares 2",
            ),
            (PURE_V2, "write /sys/fs/cgroup/sbx/b1/cpu.weight 1"),
        ] {
            let fake =
                Fake::with_files(&[("/sys/fs/cgroup/cgroup.controllers", "cpu memory pids")]);
            let layout = CgroupLayout::from_mountinfo(mountinfo).unwrap();
            let cg = Cgroups::new(layout, "sbx", &fake).unwrap();
            cg.lower_cpu_weight("b1");
            assert_eq!(fake.log(), vec![want.to_string()]);
        }
    }

    /// Box `b1` of a hybrid layout under parent `sbx`, with `cgroup.kill` (which does nothing
    /// in the fake), `cgroup.events` holding `events`, and pid 100 listed.
    fn hybrid_box_holding_pid_100(events: &str) -> Fake {
        Fake::with_files(&[
            ("/sys/fs/cgroup/unified/sbx/b1/cgroup.kill", ""),
            ("/sys/fs/cgroup/unified/sbx/b1/cgroup.events", events),
            ("/sys/fs/cgroup/unified/sbx/b1/cgroup.procs", "100\n"),
        ])
    }

    #[test]
    fn kill_trusts_an_empty_v2_group() {
        // cgroup.procs still lists a pid, but v2 says the group is empty: no pid is listed
        // or killed one by one.
        let fake = hybrid_box_holding_pid_100("populated 0\nfrozen 0\n");
        let cg = Cgroups::new(CgroupLayout::from_mountinfo(HYBRID).unwrap(), "sbx", &fake).unwrap();
        cg.kill("b1").unwrap();
        assert_eq!(
            fake.log(),
            vec!["write /sys/fs/cgroup/unified/sbx/b1/cgroup.kill 1"]
        );
    }

    #[test]
    fn kill_lists_and_kills_what_a_slow_group_still_holds() {
        // v2 keeps saying "populated 1" (the fake's cgroup.kill does nothing): after
        // LIST_AFTER the pids are listed and killed one by one, which empties the group.
        let fake = hybrid_box_holding_pid_100("populated 1\nfrozen 0\n");
        let cg = Cgroups::new(CgroupLayout::from_mountinfo(HYBRID).unwrap(), "sbx", &fake).unwrap();
        let started = Instant::now();
        cg.kill("b1").unwrap();
        assert!(started.elapsed() >= LIST_AFTER);
        let log = fake.log();
        assert_eq!(log[0], "write /sys/fs/cgroup/unified/sbx/b1/cgroup.kill 1");
        assert_eq!(log[1..], ["kill 100".to_string()]);
    }

    #[test]
    fn remove_and_stale_ids() {
        let fake = Fake::default();
        let cg =
            Cgroups::new(CgroupLayout::from_mountinfo(PURE_V1).unwrap(), "sbx", &fake).unwrap();
        cg.create("b1", &LIMITS).unwrap();
        cg.create("b2", &LIMITS).unwrap();
        assert_eq!(
            cg.stale_ids().unwrap().into_iter().collect::<Vec<_>>(),
            vec!["b1", "b2"]
        );
        assert_eq!(cg.remove("b1").unwrap(), 4);
        assert_eq!(cg.remove("b1").unwrap(), 0, "idempotent");
        assert_eq!(cg.stale_ids().unwrap().len(), 1);
        assert_eq!(cg.remove_parents(), 0, "a parent with a box left is kept");
        cg.remove("b2").unwrap();
        assert_eq!(cg.remove_parents(), 4);
    }

    #[test]
    fn own_groups_and_common_ancestors() {
        let text = "4:memory:/process_api/x\n2:cpu,cpuacct:/sbx/.server\n0::/sbx/.server\n";
        assert_eq!(own_v2_path(text).as_deref(), Some("/sbx/.server"));
        assert_eq!(
            own_group_names("sbx", text).into_iter().collect::<Vec<_>>(),
            vec![".server"]
        );
        assert_eq!(
            own_group_names("/a/b/", "0::/a/b/srv/deeper\n1:name=systemd:/a/bc\n"),
            BTreeSet::from(["srv".to_string()])
        );
        assert!(own_group_names("sbx", "0::/\n").is_empty());
        assert!(own_group_names("sbx", "0::/sbx\n").is_empty());
        assert_eq!(common_ancestor("/sbx/.server", "sbx"), PathBuf::from("sbx"));
        assert_eq!(common_ancestor("/a/b/c", "a/b/d"), PathBuf::from("a/b"));
        assert_eq!(common_ancestor("/", "sbx"), PathBuf::new());
        assert_eq!(common_ancestor("/sbxy", "sbx"), PathBuf::new());
    }

    #[test]
    fn delegation_needs_no_v1_freezer_or_cpuacct_where_v2_kills_and_freezes() {
        // The delegated v2 parent has cgroup.kill and cgroup.freeze (Linux 5.14 and later).
        let fake = Fake::with_files(&[
            ("/sys/fs/cgroup/unified/sbx/cgroup.kill", ""),
            ("/sys/fs/cgroup/unified/sbx/cgroup.freeze", "0"),
            ("/sys/fs/cgroup/unified/sbx/cgroup.procs", ""),
        ]);
        let cg = Cgroups::new(CgroupLayout::from_mountinfo(HYBRID).unwrap(), "sbx", &fake).unwrap();
        fake.writable
            .lock()
            .unwrap()
            .insert("/sys/fs/cgroup/unified/sbx/cgroup.procs".into());
        for h in ["cpu", "memory", "pids", "unified"] {
            let dir = PathBuf::from(format!("/sys/fs/cgroup/{h}/sbx"));
            fake.dirs.lock().unwrap().insert(dir.clone());
            fake.writable.lock().unwrap().insert(dir);
        }
        cg.check_delegation(4242, 4243, Some("/sbx/.server"))
            .unwrap();
        // Without them, the freezer and cpuacct parents are asked for.
        fake.files
            .lock()
            .unwrap()
            .remove(Path::new("/sys/fs/cgroup/unified/sbx/cgroup.kill"));
        let err = cg
            .check_delegation(4242, 4243, Some("/sbx/.server"))
            .unwrap_err();
        for want in [
            "/sys/fs/cgroup/freezer/sbx does not exist",
            "/sys/fs/cgroup/cpuacct/sbx does not exist",
        ] {
            assert!(err.contains(want), "{want:?} not in {err}");
        }
        assert!(!err.contains("/sys/fs/cgroup/memory/sbx does not"), "{err}");
    }

    #[test]
    fn delegation_check_names_every_problem_and_the_fix() {
        let layout = CgroupLayout::from_mountinfo(HYBRID).unwrap();
        let fake = Fake::default();
        let cg = Cgroups::new(layout.clone(), "sbx", &fake).unwrap();
        let err = cg.check_delegation(4242, 4243, Some("/")).unwrap_err();
        for want in [
            "/sys/fs/cgroup/memory/sbx does not exist",
            "/sys/fs/cgroup/unified/sbx does not exist",
            "this process is in the v2 group /",
            "/sys/fs/cgroup/unified/cgroup.procs",
            "mkdir -p /sys/fs/cgroup/cpu/sbx /sys/fs/cgroup/cpuacct/sbx \
             /sys/fs/cgroup/memory/sbx /sys/fs/cgroup/freezer/sbx /sys/fs/cgroup/pids/sbx \
             /sys/fs/cgroup/unified/sbx /sys/fs/cgroup/unified/sbx/.server && chown -R \
             4242:4243 /sys/fs/cgroup/cpu/sbx",
            "echo <pid of the shell that starts sandboxd> > \
             /sys/fs/cgroup/unified/sbx/.server/cgroup.procs",
        ] {
            assert!(err.contains(want), "{want:?} not in {err}");
        }

        // Delegated, and the server runs in <parent>/.server: fine.
        for dir in cg.parent_dirs() {
            fake.dirs.lock().unwrap().insert(dir.clone());
            fake.writable.lock().unwrap().insert(dir);
        }
        let procs = PathBuf::from("/sys/fs/cgroup/unified/sbx/cgroup.procs");
        fake.writable.lock().unwrap().insert(procs);
        cg.check_delegation(4242, 4243, Some("/sbx/.server"))
            .unwrap();
        // Delegated, but the server is outside the delegated v2 tree.
        let err = cg
            .check_delegation(4242, 4243, Some("/user.slice"))
            .unwrap_err();
        assert!(!err.contains("does not exist"), "{err}");
        assert!(err.contains("the v2 group /user.slice"), "{err}");

        // Pure v2: the controllers must be enabled for the parent.
        let fake = Fake::with_files(&[
            ("/sys/fs/cgroup/cgroup.controllers", "cpu memory pids"),
            ("/sys/fs/cgroup/a/b/cgroup.controllers", "cpu"),
        ]);
        fake.dirs
            .lock()
            .unwrap()
            .insert("/sys/fs/cgroup/a/b".into());
        for w in ["/sys/fs/cgroup/a/b", "/sys/fs/cgroup/a/b/cgroup.procs"] {
            fake.writable.lock().unwrap().insert(w.into());
        }
        let cg =
            Cgroups::new(CgroupLayout::from_mountinfo(PURE_V2).unwrap(), "a/b", &fake).unwrap();
        let err = cg
            .check_delegation(1000, 1000, Some("/a/b/.server"))
            .unwrap_err();
        for want in [
            "the memory and pids controllers are not enabled for /sys/fs/cgroup/a/b",
            "/sys/fs/cgroup/a/b/cgroup.subtree_control is not writable",
            "`echo '+memory +pids +cpu' > /sys/fs/cgroup/cgroup.subtree_control`",
            "`echo '+memory +pids +cpu' > /sys/fs/cgroup/a/cgroup.subtree_control`",
        ] {
            assert!(err.contains(want), "{want:?} not in {err}");
        }
        assert!(!err.contains("a/b/cgroup.subtree_control`"), "{err}");
        assert!(!err.contains(".server/cgroup.procs"), "{err}");
        // ... and the server may not sit in the parent itself.
        let err = cg.check_delegation(1000, 1000, Some("/a/b")).unwrap_err();
        assert!(
            err.contains("this process is in /sys/fs/cgroup/a/b itself"),
            "{err}"
        );
        assert!(
            err.contains("/sys/fs/cgroup/a/b/.server/cgroup.procs"),
            "{err}"
        );
    }

    #[test]
    fn cpu_quota() {
        assert_eq!(cpu_quota_us(1000), 100_000);
        assert_eq!(cpu_quota_us(2500), 250_000);
        assert_eq!(cpu_quota_us(1), 1000);
    }
}
