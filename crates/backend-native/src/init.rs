//! `sandboxd-init`: PID 1 of a new box, for the few milliseconds it takes to build the box
//! around itself before it becomes the agent.
//!
//! It starts as root with every capability, in fresh mount, pid, uts, ipc and net namespaces
//! (the host's `clone` made them), still seeing the host's file systems. It is single-threaded
//! and does, in order (see the crate docs for why):
//!
//! 1. join the box's v1 cgroups (the v2 one it was born in), then `unshare(CLONE_NEWCGROUP)`;
//! 2. make every mount private, mount the overlay root and the box's scratch tmpfs (whose
//!    directories become `/tmp`, `/dev`, `/dev/shm` and the masks), take detached copies
//!    (`open_tree`) of everything it will bind: the workspace, the read-only mounts, six
//!    device nodes, the scratch directories, and make the box's procfs and sysfs as detached
//!    mounts (`fsmount`);
//! 3. `pivot_root` into the overlay and drop the host's tree: from here on every path
//!    resolves inside the box, so a symlink in a template cannot aim a mount at the host;
//! 4. attach `/dev`, `/proc` (with Docker's masking) and `/sys` (read-only), `/tmp`, the
//!    workspace and the read-only mounts;
//! 5. set the host name and bring `lo` up;
//! 6. close stray fds, drop privileges, apply landlock and seccomp, and `execveat` the agent.
//!
//! In rootless mode (the server is not root) it is root of a user namespace created by the
//! same clone, with every capability *in that namespace*, which owns all the other
//! namespaces; the steps are the same, with two differences the kernel imposes (and a third
//! that shaped step 2 for both modes: in a user namespace procfs and sysfs can only be
//! mounted while a fully visible instance is in the mount namespace, so they are made before
//! the host's tree goes, and attached after):
//!
//! - the overlay is mounted with `userxattr`: in a user namespace overlayfs cannot use its
//!   `trusted.overlay.*` xattrs (they need `CAP_SYS_ADMIN` in the host's namespace), and
//!   without xattrs removing or renaming a directory of the template fails with `EIO`; with
//!   `userxattr` it keeps them as `user.overlay.*` on the upper layer (Linux 5.11);
//! - `/dev/pts` is mounted without `gid=5`: gid 5 (`tty`) is not mapped in the box's user
//!   namespace, so the kernel refuses the option; pseudo-terminals then belong to the group of
//!   the process that opens them (root's, inside the box).
//!
//! Failures are written to stderr (the box's `init.log` on the host) and to the status pipe
//! (fd 4), which the host reads until it closes: it closes on the successful `execveat`
//! because it is `O_CLOEXEC`.

use std::convert::Infallible;
use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{symlink, DirBuilderExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::seccomp::{self, SeccompError};
use crate::security::{self, SecurityError};
use crate::sys;

/// The agent's listening socket, as the agent sees it.
pub const LISTEN_FD: RawFd = 3;
/// The status pipe to the host (write end, `O_CLOEXEC` once the init runs).
pub const STATUS_FD: RawFd = 4;
/// The agent executable (a sealed memfd copy or the file), `O_CLOEXEC` once the init runs.
pub const AGENT_FD: RawFd = 5;
/// Environment variable that carries the [`InitConfig`] as JSON.
pub const CONFIG_ENV: &str = "SANDBOXD_INIT_CONFIG";

/// Everything the init needs, prepared by the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitConfig {
    /// The sandbox id (for messages).
    pub id: String,
    /// Host name inside the box.
    pub hostname: String,
    /// Template root file system (overlay lower layer, never written).
    pub template: PathBuf,
    /// Overlay upper directory.
    pub upper: PathBuf,
    /// Overlay work directory.
    pub work: PathBuf,
    /// Where the overlay is mounted before it becomes `/`.
    pub rootfs: PathBuf,
    /// Host directory mounted read-write at `/workspace`.
    pub workspace: PathBuf,
    /// Read-only mounts: `(host path, absolute guest path)`.
    pub readonly_mounts: Vec<(PathBuf, PathBuf)>,
    /// Size of the tmpfs that holds `/tmp`, `/dev` and `/dev/shm`, in MiB.
    pub tmp_size_mb: u64,
    /// The box's disk limit in MiB (0 = none): the overlay's upper and work directories are
    /// then on a tmpfs of that size mounted on their parent directory, and the tmpfs of
    /// `/tmp` has that size instead of `tmp_size_mb`.
    #[serde(default)]
    pub disk_mb: u64,
    /// An empty directory the box's scratch tmpfs is mounted on before the host's tree goes
    /// (its subdirectories become `/tmp`, `/dev`, `/dev/shm` and the masks over `/proc` and
    /// `/sys`). Beside `upper` and `work`: in the tmpfs of the disk limit when there is one,
    /// where the init makes it.
    pub scratch: PathBuf,
    /// Cgroup files to write `0` to (v1 `tasks`, and the v2 `cgroup.procs` when the host
    /// could not start the init inside its v2 group).
    pub cgroup_join: Vec<PathBuf>,
    /// The agent's environment, `KEY=value`.
    pub agent_env: Vec<String>,
    /// The agent's `argv`.
    pub agent_argv: Vec<String>,
    /// Rootless mode: the init is root of its own user namespace, which maps only uid 0 and
    /// gid 0 (to the server's ids); changes two mount options (see the module docs).
    #[serde(default)]
    pub rootless: bool,
}

/// Errors of the init. Each names the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// The configuration from the host is missing or malformed.
    #[error("bad configuration: {0}")]
    Config(String),
    /// A setup step failed.
    #[error("{step} {target}: {source}")]
    Step {
        /// What was being done.
        step: &'static str,
        /// On what (a path, an interface).
        target: String,
        /// The underlying error.
        source: io::Error,
    },
    /// Dropping privileges or landlock failed.
    #[error(transparent)]
    Security(#[from] SecurityError),
    /// The seccomp filter could not be built or installed.
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
}

fn at(step: &'static str, target: impl AsRef<Path>) -> impl FnOnce(io::Error) -> InitError {
    let target = target.as_ref().display().to_string();
    move |source| InitError::Step {
        step,
        target,
        source,
    }
}

/// Report a failure to the host and exit.
fn fail(message: &str) -> ! {
    let line = format!("sandboxd-init: {message}\n");
    sys::write_all_raw(libc::STDERR_FILENO, line.as_bytes());
    sys::write_all_raw(STATUS_FD, line.as_bytes());
    // SAFETY: _exit ends the process at once; nothing needs flushing.
    unsafe { libc::_exit(1) }
}

/// Entry point of the `sandboxd-init` binary.
pub fn init_main() -> ! {
    // Neither may reach the agent; the status pipe closing on exec is also the success signal.
    let _ = sys::set_cloexec(STATUS_FD, true);
    let _ = sys::set_cloexec(AGENT_FD, true);
    std::panic::set_hook(Box::new(|info| fail(&format!("panic: {info}"))));
    match run() {
        Ok(never) => match never {},
        Err(e) => fail(&e.to_string()),
    }
}

fn run() -> Result<Infallible, InitError> {
    let json = std::env::var(CONFIG_ENV).map_err(|_| {
        InitError::Config(format!(
            "{CONFIG_ENV} is not set: sandboxd-init is started by the native backend, not by hand"
        ))
    })?;
    let cfg: InitConfig =
        serde_json::from_str(&json).map_err(|e| InitError::Config(e.to_string()))?;
    if sys::getpid() != 1 {
        return Err(InitError::Config(
            "not PID 1 of a new pid namespace: sandboxd-init is started by the native backend"
                .into(),
        ));
    }
    // SAFETY: umask cannot fail; the server's umask must not leak into the box.
    unsafe { libc::umask(0o022) };

    join_cgroups(&cfg.cgroup_join)?;
    sys::mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
    )
    .map_err(at("make mounts private", "/"))?;
    if cfg.disk_mb > 0 {
        mount_layer(&cfg)?;
    }
    mount_overlay(&cfg)?;
    mount_scratch(&cfg)?;
    let mut sources = Sources::open(&cfg)?;
    enter_root(&cfg.rootfs)?;
    mount_dev(&sources.devices, &sources.scratch, cfg.rootless)?;
    mount_proc(&sources.proc, &mut sources.scratch.masks)?;
    mount_sys(&sources.sysfs, &mut sources.scratch.masks)?;
    attach(&sources.scratch.tmp, Path::new("/tmp"), true)?;
    attach(&sources.workspace, Path::new("/workspace"), true)?;
    for (fd, guest, is_dir) in &sources.readonly {
        attach(fd, guest, *is_dir)?;
    }
    drop(sources);
    sys::sethostname(&cfg.hostname).map_err(at("sethostname", &cfg.hostname))?;
    sys::interface_up("lo").map_err(at("bring up", "lo"))?;
    exec_agent(&cfg)
}

fn join_cgroups(files: &[PathBuf]) -> Result<(), InitError> {
    for p in files {
        fs::write(p, "0").map_err(at("join cgroup", p))?;
    }
    // After joining, so that the box's cgroup root is its own group.
    sys::unshare(libc::CLONE_NEWCGROUP).map_err(at("unshare", "CLONE_NEWCGROUP"))
}

/// The disk limit of the writable root layer: a tmpfs of `disk_mb` over the directory that
/// holds the upper and work directories. A tmpfs because this kernel may have no quotas (and
/// the host's file system no project quotas) and a loop-mounted image costs a file system per
/// box; its pages count against the box's memory limit, and it vanishes with the box's mount
/// namespace, so nothing is left to clean up.
fn mount_layer(cfg: &InitConfig) -> Result<(), InitError> {
    let layer = cfg
        .upper
        .parent()
        .ok_or_else(|| InitError::Config("the upper directory has no parent".into()))?;
    tmpfs(
        layer,
        libc::MS_NOSUID | libc::MS_NODEV,
        &format!("mode=700,size={}m", cfg.disk_mb),
    )?;
    for dir in [&cfg.upper, &cfg.work, &cfg.scratch] {
        fs::DirBuilder::new()
            .mode(0o755)
            .create(dir)
            .map_err(at("mkdir", dir))?;
    }
    Ok(())
}

fn mount_overlay(cfg: &InitConfig) -> Result<(), InitError> {
    let mut data = format!(
        "lowerdir={},upperdir={},workdir={}",
        cfg.template.display(),
        cfg.upper.display(),
        cfg.work.display()
    );
    if cfg.rootless {
        // trusted.* xattrs are out of reach in a user namespace (see the module docs).
        data.push_str(",userxattr");
    }
    let flags = libc::MS_NOSUID | libc::MS_NODEV;
    // `volatile` skips syncs of the upper layer, which is thrown away with the box anyway;
    // kernels before 5.10 do not know it.
    let volatile = format!("{data},volatile");
    sys::mount(
        Some("overlay"),
        &cfg.rootfs,
        Some("overlay"),
        flags,
        Some(&volatile),
    )
    .or_else(|_| {
        sys::mount(
            Some("overlay"),
            &cfg.rootfs,
            Some("overlay"),
            flags,
            Some(&data),
        )
    })
    .map_err(at("mount overlay on", &cfg.rootfs))
}

/// The directories of the scratch tmpfs, each bound where the box sees it, with its mode and
/// the attributes of its mount.
const SCRATCH_DIRS: [(&str, u32, u64); 4] = [
    (
        "tmp",
        0o1777,
        sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV,
    ),
    // nodev too: the device nodes are bind mounts of the host's, with their own flags.
    (
        "dev",
        0o755,
        sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV | sys::MOUNT_ATTR_NOEXEC,
    ),
    (
        "shm",
        0o1777,
        sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV | sys::MOUNT_ATTR_NOEXEC,
    ),
    (
        "empty",
        0o555,
        sys::MOUNT_ATTR_RDONLY
            | sys::MOUNT_ATTR_NOSUID
            | sys::MOUNT_ATTR_NODEV
            | sys::MOUNT_ATTR_NOEXEC,
    ),
];

/// One tmpfs for `/tmp`, `/dev`, `/dev/shm` and the empty read-only directories that hide
/// parts of `/proc` and `/sys`, bound from its subdirectories ([`SCRATCH_DIRS`]), instead of
/// a tmpfs for each. Every file system instance is a superblock with two memcg-aware LRU
/// lists, and the kernel walks every such list of the machine each time a memory cgroup is
/// removed (`memcg_reparent_list_lrus`, under `cgroup_mutex`): with 500 boxes alive that was
/// about 2 ms of CPU per deleted box, paid by every create and delete meanwhile.
fn mount_scratch(cfg: &InitConfig) -> Result<(), InitError> {
    let size = if cfg.disk_mb > 0 {
        cfg.disk_mb
    } else {
        cfg.tmp_size_mb
    };
    tmpfs(
        &cfg.scratch,
        libc::MS_NOSUID | libc::MS_NODEV,
        &format!("mode=700,size={size}m"),
    )?;
    for (name, mode, _) in SCRATCH_DIRS {
        let dir = cfg.scratch.join(name);
        fs::create_dir(&dir).map_err(at("mkdir", &dir))?;
        // After the umask, which would take the sticky directories' write bits.
        fs::set_permissions(&dir, fs::Permissions::from_mode(mode)).map_err(at("chmod", &dir))?;
    }
    Ok(())
}

/// Detached mounts of the scratch tmpfs's directories (see [`mount_scratch`]).
struct Scratch {
    tmp: OwnedFd,
    dev: OwnedFd,
    shm: OwnedFd,
    /// One per directory of `/proc` and `/sys` to hide, as counted in the host's (the same
    /// kernel's): an unused one would be unmounted at its close, which waits for an RCU
    /// grace period.
    masks: Vec<OwnedFd>,
}

impl Scratch {
    fn open(scratch: &Path) -> Result<Self, InitError> {
        let bind = |(name, _, attrs): (&str, u32, u64)| -> Result<OwnedFd, InitError> {
            let dir = scratch.join(name);
            let fd = clone_tree(&dir, false)?;
            sys::mount_setattr(&fd, false, attrs).map_err(at("mount_setattr", &dir))?;
            Ok(fd)
        };
        let [tmp, dev, shm, empty] = SCRATCH_DIRS;
        let hidden = PROC_MASKED_DIRS
            .iter()
            .map(|d| Path::new("/proc").join(d))
            .chain(SYS_MASKED_DIRS.iter().map(|d| Path::new("/sys").join(d)))
            .filter(|p| p.is_dir())
            .count();
        let masks = (0..hidden).map(|_| bind(empty)).collect::<Result<_, _>>()?;
        Ok(Scratch {
            tmp: bind(tmp)?,
            dev: bind(dev)?,
            shm: bind(shm)?,
            masks,
        })
    }
}

/// Detached copies of the host mounts the box gets, taken while the host's tree is visible,
/// and the box's own procfs and sysfs, made (not yet attached) at the same time.
struct Sources {
    workspace: OwnedFd,
    readonly: Vec<(OwnedFd, PathBuf, bool)>,
    devices: Vec<(OwnedFd, &'static str)>,
    proc: OwnedFd,
    sysfs: OwnedFd,
    scratch: Scratch,
}

/// Device nodes bind-mounted from the host: all harmless, none gives access to hardware.
const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

fn clone_tree(path: &Path, recursive: bool) -> Result<OwnedFd, InitError> {
    let mut flags = libc::OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint;
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    sys::open_tree(path, flags).map_err(at("open_tree", path))
}

impl Sources {
    fn open(cfg: &InitConfig) -> Result<Self, InitError> {
        let workspace = clone_tree(&cfg.workspace, false)?;
        sys::mount_setattr(
            &workspace,
            false,
            sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV,
        )
        .map_err(at("mount_setattr", &cfg.workspace))?;
        let mut readonly = Vec::new();
        for (host, guest) in &cfg.readonly_mounts {
            let fd = clone_tree(host, true)?;
            // Recursive, unlike a read-only remount, which only affects the top mount.
            let attrs = sys::MOUNT_ATTR_RDONLY | sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV;
            sys::mount_setattr(&fd, true, attrs).map_err(at("mount_setattr", host))?;
            let is_dir = sys::fstat(fd.as_raw_fd())
                .map(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
                .map_err(at("stat", host))?;
            readonly.push((fd, guest.clone(), is_dir));
        }
        let mut devices = Vec::new();
        for name in DEVICES {
            let path = Path::new("/dev").join(name);
            let fd = clone_tree(&path, false)?;
            sys::mount_setattr(&fd, false, sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NOEXEC)
                .map_err(at("mount_setattr", &path))?;
            devices.push((fd, name));
        }
        // procfs and sysfs are made now but attached only inside the box. In a user namespace
        // the kernel mounts them only while a fully visible instance of the same file system
        // is in the mount namespace ("mount_too_revealing"), i.e. only before the host's tree
        // is detached; with the mount API the check happens at fsmount, and the mount point is
        // still chosen after pivot_root, inside the box. As root the order makes no
        // difference. The instances belong to the box's pid and net namespaces (those of this
        // process when fsopen is called).
        let proc = sys::fs_mount_detached(
            c"proc",
            &[],
            sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV | sys::MOUNT_ATTR_NOEXEC,
        )
        .map_err(at("make a procfs for", "/proc"))?;
        // Read-only, and in a new net namespace it lists only the box's own interfaces. The
        // cgroup file systems are not mounted under it: the box has no business with them.
        let sysfs = sys::fs_mount_detached(
            c"sysfs",
            &[c"ro"],
            sys::MOUNT_ATTR_RDONLY
                | sys::MOUNT_ATTR_NOSUID
                | sys::MOUNT_ATTR_NODEV
                | sys::MOUNT_ATTR_NOEXEC,
        )
        .map_err(at("make a sysfs for", "/sys"))?;
        Ok(Sources {
            workspace,
            readonly,
            devices,
            proc,
            sysfs,
            scratch: Scratch::open(&cfg.scratch)?,
        })
    }
}

/// `pivot_root` into `rootfs` with the old root stacked on the new one, then detach it.
fn enter_root(rootfs: &Path) -> Result<(), InitError> {
    std::env::set_current_dir(rootfs).map_err(at("chdir", rootfs))?;
    let dot = Path::new(".");
    sys::pivot_root(dot, dot).map_err(at("pivot_root", rootfs))?;
    sys::umount2(dot, libc::MNT_DETACH).map_err(at("detach the host root", "/"))?;
    std::env::set_current_dir("/").map_err(at("chdir", "/"))
}

/// Create `path` (and its parents) as a mount point: a directory or an empty file.
fn mount_point(path: &Path, is_dir: bool) -> Result<(), InitError> {
    if is_dir {
        return fs::create_dir_all(path).map_err(at("create mount point", path));
    }
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(at("create mount point", parent))?;
    }
    fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map(drop)
        .map_err(at("create mount point", path))
}

fn attach(fd: &OwnedFd, target: &Path, is_dir: bool) -> Result<(), InitError> {
    mount_point(target, is_dir)?;
    sys::move_mount(fd, target).map_err(at("attach mount at", target))
}

fn tmpfs(target: &Path, flags: libc::c_ulong, data: &str) -> Result<(), InitError> {
    sys::mount(Some("tmpfs"), target, Some("tmpfs"), flags, Some(data))
        .map_err(at("mount tmpfs on", target))
}

fn mount_dev(
    devices: &[(OwnedFd, &'static str)],
    scratch: &Scratch,
    rootless: bool,
) -> Result<(), InitError> {
    let dev = Path::new("/dev");
    attach(&scratch.dev, dev, true)?;
    for (fd, name) in devices {
        attach(fd, &dev.join(name), false)?;
    }
    let pts = dev.join("pts");
    fs::DirBuilder::new()
        .mode(0o755)
        .create(&pts)
        .map_err(at("mkdir", &pts))?;
    // Rootless: gid 5 is not mapped in the box's user namespace (see the module docs).
    let options = if rootless {
        "newinstance,ptmxmode=0666,mode=0620"
    } else {
        "newinstance,ptmxmode=0666,mode=0620,gid=5"
    };
    sys::mount(
        Some("devpts"),
        &pts,
        Some("devpts"),
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some(options),
    )
    .map_err(at("mount devpts on", &pts))?;
    attach(&scratch.shm, &dev.join("shm"), true)?;
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        symlink(target, dev.join(link)).map_err(at("symlink", dev.join(link)))?;
    }
    Ok(())
}

/// Files of `/proc` that reveal or change host kernel state, hidden under `/dev/null`.
const PROC_MASKED_FILES: [&str; 6] = [
    "kcore",
    "keys",
    "timer_list",
    "timer_stats",
    "sched_debug",
    "latency_stats",
];
/// Directories of `/proc` hidden under an empty read-only directory.
const PROC_MASKED_DIRS: [&str; 2] = ["acpi", "scsi"];
/// Directories and files of `/proc` made read-only.
const PROC_READONLY: [&str; 5] = ["sys", "sysrq-trigger", "irq", "bus", "fs"];

fn bind_readonly(path: &Path) -> Result<(), InitError> {
    sys::mount(
        Some(&path.to_string_lossy()),
        path,
        None,
        libc::MS_BIND | libc::MS_REC,
        None,
    )
    .map_err(at("bind", path))?;
    let flags = libc::MS_REMOUNT
        | libc::MS_BIND
        | libc::MS_RDONLY
        | libc::MS_NOSUID
        | libc::MS_NODEV
        | libc::MS_NOEXEC;
    sys::mount(None, path, None, flags, None).map_err(at("remount read-only", path))
}

/// Hide the directory `path`, if it exists, under an empty read-only one of the scratch
/// tmpfs (one of `masks`), or under an empty read-only tmpfs of its own where the host's
/// `/proc` or `/sys` did not show it.
fn mask_dir(path: &Path, masks: &mut Vec<OwnedFd>) -> Result<(), InitError> {
    if !path.is_dir() {
        return Ok(());
    }
    match masks.pop() {
        Some(mask) => sys::move_mount(&mask, path).map_err(at("hide", path)),
        None => tmpfs(
            path,
            libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            "mode=555",
        ),
    }
}

fn mount_proc(procfs: &OwnedFd, masks: &mut Vec<OwnedFd>) -> Result<(), InitError> {
    let proc = Path::new("/proc");
    // A fresh procfs (see `Sources`): this process is PID 1 of the new pid namespace, so
    // only the box's processes are listed.
    attach(procfs, proc, true)?;
    for name in PROC_MASKED_FILES {
        let path = proc.join(name);
        if path.exists() {
            sys::mount(Some("/dev/null"), &path, None, libc::MS_BIND, None)
                .map_err(at("mask", &path))?;
        }
    }
    for name in PROC_MASKED_DIRS {
        mask_dir(&proc.join(name), masks)?;
    }
    for name in PROC_READONLY {
        let path = proc.join(name);
        if path.exists() {
            bind_readonly(&path)?;
        }
    }
    Ok(())
}

/// Parts of sysfs Docker hides: firmware tables and the RAPL energy counters (a side channel).
const SYS_MASKED_DIRS: [&str; 2] = ["firmware", "devices/virtual/powercap"];

fn mount_sys(sysfs: &OwnedFd, masks: &mut Vec<OwnedFd>) -> Result<(), InitError> {
    let sys_dir = Path::new("/sys");
    // Made read-only in `Sources`.
    attach(sysfs, sys_dir, true)?;
    for name in SYS_MASKED_DIRS {
        mask_dir(&sys_dir.join(name), masks)?;
    }
    Ok(())
}

fn cstrings(items: &[String], what: &'static str) -> Result<Vec<CString>, InitError> {
    items
        .iter()
        .map(|s| {
            CString::new(s.as_str())
                .map_err(|_| InitError::Config(format!("{what} contains a NUL byte")))
        })
        .collect()
}

fn exec_agent(cfg: &InitConfig) -> Result<Infallible, InitError> {
    let argv = cstrings(&cfg.agent_argv, "agent argv")?;
    let envp = cstrings(&cfg.agent_env, "agent environment")?;
    let filter = seccomp::program()?;
    sys::reset_signals().map_err(at("reset signals", "all"))?;
    // Keep stdio, the listener, the status pipe and the agent fd (both close on exec).
    sys::close_from(AGENT_FD as u32 + 1).map_err(at("close_range", "fds above 5"))?;
    sys::set_cloexec(LISTEN_FD, false).map_err(at("fcntl", "listen fd 3"))?;
    security::drop_privileges()?;
    let landlock = security::apply_landlock()?;
    let line = format!(
        "sandboxd-init: box {}: capabilities dropped, no_new_privs, {landlock}, seccomp {} rules; starting agent\n",
        cfg.id,
        seccomp::denied_syscalls().len()
    );
    sys::write_all_raw(libc::STDERR_FILENO, line.as_bytes());
    seccomp::install(&filter)?;
    let err = sys::execveat_fd(AGENT_FD, &argv, &envp);
    Err(InitError::Step {
        step: "execveat",
        target: "the agent".into(),
        source: err,
    })
}

/// Whether `guest` is an acceptable read-only mount target: absolute, normal components only,
/// not `/` itself.
pub fn valid_guest_path(guest: &Path) -> bool {
    guest.is_absolute()
        && guest.components().count() > 1
        && guest
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
}
