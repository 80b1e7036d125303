//! [`NativeBackend`]: the [`Backend`] implementation.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sandboxd_core::backend::{
    AgentEndpoint, Backend, BackendError, BoxHandle, BoxSpec, CleanupReport,
};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::watch;

use crate::cgroup::{self, CgroupLayout, Cgroups, RealCgroupFs};
use crate::config::NativeConfig;
use crate::error::NativeError;
use crate::init::{self, InitConfig};
use crate::netns::NetnsPool;
use crate::spawn::{self, ChildFds, IdMap, InitOutcome, Prepared};
use crate::sys;

/// Default `PATH` of the agent (and so of every command it runs).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How long `create` waits for the init to finish building the box.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `destroy` waits for a killed box to be reaped.
const REAP_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest Unix socket path (`sun_path` holds 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// The embedded default backend: every box is a set of Linux namespaces around the guest agent.
///
/// See the [crate documentation](crate) for the design and its security trade-offs.
pub struct NativeBackend {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for NativeBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NativeBackend")
            .field("config", &self.inner.config)
            .field("cgroups", &self.inner.cgroups)
            .finish_non_exhaustive()
    }
}

struct Inner {
    config: NativeConfig,
    cgroups: Cgroups<RealCgroupFs>,
    /// The agent executable every init `execveat`s.
    agent_exe: OwnedFd,
    boxes: Mutex<HashMap<String, Arc<BoxState>>>,
    /// Rootless mode: the server's effective ids, which the box's root maps to.
    rootless: Option<IdMap>,
    /// Groups directly under the cgroup parent that hold the server itself (a rootless
    /// server's `.server`): never a box, never cleaned up.
    own_groups: BTreeSet<String>,
    /// Box starts and teardowns that may run at once (see [`LANES_PER_CPU`]).
    lanes: Arc<tokio::sync::Semaphore>,
    /// Network namespaces made ahead of time; none in rootless mode (see [`crate::netns`]).
    netns: Option<NetnsPool>,
}

/// Box starts and teardowns that run at once, per CPU. They are CPU work in the kernel
/// (namespaces, mounts, cgroups) that serializes on its locks (`cgroup_mutex`, the mount
/// lock); a burst of a hundred creates or deletes, each in a blocking thread of its own, only
/// adds threads contending for those locks and for the CPUs with the sandboxes' own work,
/// while a queue in front of the lanes costs nothing. Measured with 128 clients at once on two
/// cores (BENCHMARKS.md): the CPU per sandbox cycle fell by a sixth to a fifth and the p99
/// time to interactive by about a third to a half. One set of lanes for both: separate ones
/// for starts and teardowns (two or four each) measured worse, cold and warm. The price: a
/// start stuck until its timeout holds a lane that long.
const LANES_PER_CPU: usize = 2;

/// A running box as the backend tracks it.
struct BoxState {
    pid: libc::pid_t,
    pidfd: OwnedFd,
    /// `Some(wait status)` once the reaper has collected the init.
    exited: watch::Receiver<Option<i32>>,
}

/// Host paths of one box.
struct BoxPaths {
    dir: PathBuf,
    upper: PathBuf,
    work: PathBuf,
    scratch: PathBuf,
    rootfs: PathBuf,
    log: PathBuf,
    run: PathBuf,
    socket: PathBuf,
}

impl BoxPaths {
    fn new(config: &NativeConfig, id: &str) -> Self {
        let dir = config.state_dir.join("boxes").join(id);
        let run = config.run_dir.join(id);
        BoxPaths {
            // In a directory of their own: a disk limit mounts a tmpfs over it.
            upper: dir.join("layer/upper"),
            work: dir.join("layer/work"),
            scratch: dir.join("layer/scratch"),
            rootfs: dir.join("rootfs"),
            log: dir.join("init.log"),
            socket: run.join("agent.sock"),
            dir,
            run,
        }
    }
}

fn unavailable(msg: impl Into<String>) -> BackendError {
    BackendError::Unavailable(format!("native backend: {}", msg.into()))
}

impl NativeBackend {
    /// Check the host and make the backend. Fails with [`BackendError::Unavailable`] naming
    /// what is missing: a binary, overlayfs, a namespace kind, a cgroup controller; when not
    /// root (rootless mode), also user namespaces or the delegated cgroup subtree, with the
    /// commands that set it up.
    pub fn new(config: NativeConfig) -> Result<Self, BackendError> {
        let euid = sys::geteuid();
        let rootless = (euid != 0).then(|| IdMap {
            uid: euid,
            gid: sys::getegid(),
        });
        let is_file = |p: &Path| fs::metadata(p).map(|m| m.is_file()).unwrap_or(false);
        if !is_file(&config.init_bin) {
            return Err(unavailable(format!(
                "init binary {} not found (build it with `cargo build -p sandboxd-backend-native`)",
                config.init_bin.display()
            )));
        }
        if !is_file(&config.agent_bin) {
            return Err(unavailable(format!(
                "agent binary {} not found (build it with `cargo build -p sandboxd-agent`)",
                config.agent_bin.display()
            )));
        }
        // Root may execute any file with an x bit; a rootless server needs the usual rights.
        if rootless.is_some() && !sys::access_effective(&config.init_bin, libc::X_OK) {
            return Err(unavailable(format!(
                "init binary {} is not executable by uid {euid}",
                config.init_bin.display()
            )));
        }
        let filesystems = fs::read_to_string("/proc/filesystems").unwrap_or_default();
        for fs_name in ["overlay", "tmpfs", "proc", "devpts", "sysfs"] {
            if !filesystems
                .lines()
                .any(|l| l.split_whitespace().last() == Some(fs_name))
            {
                return Err(unavailable(format!(
                    "the kernel has no {fs_name} file system (for overlay: `modprobe overlay`)"
                )));
            }
        }
        let mut namespaces = vec!["mnt", "pid", "net", "uts", "ipc", "cgroup"];
        if rootless.is_some() {
            namespaces.push("user");
        }
        for ns in namespaces {
            if !Path::new("/proc/self/ns").join(ns).exists() {
                return Err(unavailable(format!("the kernel has no {ns} namespaces")));
            }
        }
        if rootless.is_some() {
            sys::probe_user_namespace().map_err(|e| {
                unavailable(format!(
                    "rootless mode (uid {euid}) needs unprivileged user namespaces, and \
                     clone(CLONE_NEWUSER) failed: {e}; check `sysctl user.max_user_namespaces` \
                     (must be above 0) and, where they exist, \
                     `kernel.unprivileged_userns_clone` (must be 1) and \
                     `kernel.apparmor_restrict_unprivileged_userns` (must be 0), or run \
                     sandboxd as root"
                ))
            })?;
        }
        let layout = CgroupLayout::detect().map_err(|e| unavailable(e.to_string()))?;
        let cgroups = Cgroups::new(layout, &config.cgroup_parent, RealCgroupFs)
            .map_err(|e| unavailable(e.to_string()))?;
        let self_cgroup = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        if let Some(ids) = rootless {
            cgroups
                .check_delegation(
                    ids.uid,
                    ids.gid,
                    cgroup::own_v2_path(&self_cgroup).as_deref(),
                )
                .map_err(unavailable)?;
        }
        let own_groups = cgroup::own_group_names(&config.cgroup_parent, &self_cgroup);
        let agent_exe = load_agent(&config.agent_bin).map_err(|e| {
            unavailable(format!(
                "cannot load the agent {}: {e}",
                config.agent_bin.display()
            ))
        })?;
        for dir in [config.state_dir.join("boxes"), config.run_dir.clone()] {
            fs::create_dir_all(&dir)
                .map_err(|e| unavailable(format!("cannot create {}: {e}", dir.display())))?;
        }
        // Only the server's user may reach the sockets; each box's own directory is 0700 as
        // well.
        let private = fs::set_permissions(&config.run_dir, fs::Permissions::from_mode(0o700));
        if rootless.is_some() {
            // A rootless default run_dir may sit in a shared place such as /tmp, where another
            // user could have made it first.
            let owner = fs::metadata(&config.run_dir).map(|m| m.uid());
            if !matches!(owner, Ok(uid) if uid == euid) || private.is_err() {
                let found = match owner {
                    Ok(uid) => format!("it is owned by uid {uid}"),
                    Err(e) => format!("stat: {e}"),
                };
                return Err(unavailable(format!(
                    "run_dir {} must be a directory owned by uid {euid}, mode 0700 ({found})",
                    config.run_dir.display(),
                )));
            }
        }
        if let Some(ids) = rootless {
            tracing::info!(
                uid = ids.uid,
                gid = ids.gid,
                "native backend: rootless mode, each box gets its own user namespace"
            );
        }
        Ok(NativeBackend {
            inner: Arc::new(Inner {
                config,
                cgroups,
                agent_exe,
                boxes: Mutex::new(HashMap::new()),
                rootless,
                own_groups,
                lanes: Arc::new(tokio::sync::Semaphore::new(
                    std::thread::available_parallelism().map_or(2, |n| n.get()) * LANES_PER_CPU,
                )),
                netns: rootless.is_none().then(NetnsPool::start),
            }),
        })
    }

    /// Whether the backend runs rootless (the server is not root): each box then has its own
    /// user namespace, whose uid 0 and gid 0 are the server's effective ids on the host.
    pub fn is_rootless(&self) -> bool {
        self.inner.rootless.is_some()
    }

    /// The configuration this backend was made with.
    pub fn config(&self) -> &NativeConfig {
        &self.inner.config
    }

    /// The detected cgroup layout.
    pub fn cgroup_layout(&self) -> &CgroupLayout {
        self.inner.cgroups.layout()
    }

    /// The host pid of a running box's PID 1 (the agent), for diagnostics and tests.
    pub fn init_pid(&self, id: &str) -> Option<i32> {
        self.inner.boxes.lock().unwrap().get(id).map(|b| b.pid)
    }

    /// The cgroup directories a box may have, one per hierarchy (it has those it needs).
    pub fn cgroup_dirs(&self, id: &str) -> Vec<PathBuf> {
        self.inner.cgroups.box_dirs(id)
    }

    /// The parent cgroup directories, one per hierarchy.
    pub fn cgroup_parent_dirs(&self) -> Vec<PathBuf> {
        self.inner.cgroups.parent_dirs()
    }

    /// The box's host directory (`<state_dir>/boxes/<id>`), holding its overlay layers and
    /// `init.log`.
    pub fn box_dir(&self, id: &str) -> PathBuf {
        BoxPaths::new(&self.inner.config, id).dir
    }
}

/// Copy the agent into a sealed memfd, so that no box can ever write to the executable
/// it runs (`/proc/1/exe` points at the memfd, not at the host file: the runc
/// CVE-2019-5736 class of attack has nothing to overwrite). Falls back to the file itself
/// where memfds cannot be executable (`vm.memfd_noexec = 2`).
fn load_agent(path: &Path) -> io::Result<OwnedFd> {
    let mut file = fs::File::open(path)?;
    let Ok(memfd) = sys::memfd_create(c"sandboxd-agent") else {
        return Ok(file.into());
    };
    let mut out = fs::File::from(memfd);
    io::copy(&mut file, &mut out)?;
    sys::seal_all(out.as_raw_fd())?;
    // Check that the executable is readable back in full (a short copy would exec garbage).
    let mut probe = [0u8; 4];
    let fd: OwnedFd = out.into();
    // SAFETY: pread into a 4-byte buffer from an fd we own.
    let n = unsafe { libc::pread(fd.as_raw_fd(), probe.as_mut_ptr().cast(), 4, 0) };
    if n != 4 || &probe != b"\x7fELF" {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not an ELF executable",
        ));
    }
    Ok(fd)
}

/// Whether `id` can name host resources: a file name and a cgroup name.
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// Whether a path can appear in overlayfs's mount options.
fn overlay_safe(p: &Path) -> bool {
    let s = p.as_os_str().as_encoded_bytes();
    !s.iter().any(|b| matches!(b, b',' | b':' | b'\\' | b'\n'))
}

/// Check a spec before anything is created. Returns the host name to use.
fn validate(spec: &BoxSpec, config: &NativeConfig) -> Result<String, NativeError> {
    let bad = |m: String| Err(NativeError::InvalidSpec(m));
    if !valid_id(&spec.id) {
        return bad(format!(
            "id {:?} must be 1-128 characters of [A-Za-z0-9._-], not starting with '.'",
            spec.id
        ));
    }
    let paths = BoxPaths::new(config, &spec.id);
    if paths.socket.as_os_str().len() > MAX_SOCKET_PATH {
        return bad(format!(
            "socket path {} is longer than {MAX_SOCKET_PATH} bytes; use a shorter run_dir",
            paths.socket.display()
        ));
    }
    if !spec.template_rootfs.is_dir() {
        return bad(format!(
            "template rootfs {} is not a directory",
            spec.template_rootfs.display()
        ));
    }
    for p in [&spec.template_rootfs, &paths.upper, &paths.work] {
        if !overlay_safe(p) {
            return bad(format!(
                "path {} contains ',', ':' or '\\', which overlayfs cannot take",
                p.display()
            ));
        }
    }
    if !spec.workspace.is_dir() {
        return bad(format!(
            "workspace {} is not a directory",
            spec.workspace.display()
        ));
    }
    for m in &spec.readonly_mounts {
        if !init::valid_guest_path(&m.guest) {
            return bad(format!(
                "read-only mount target {} must be an absolute path below /",
                m.guest.display()
            ));
        }
        if !m.host.exists() {
            return bad(format!(
                "read-only mount source {} does not exist",
                m.host.display()
            ));
        }
    }
    for (k, v) in &spec.env {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            return bad(format!("environment variable {k:?} is not valid"));
        }
    }
    let hostname = if spec.hostname.is_empty() {
        spec.id.chars().take(63).collect()
    } else {
        spec.hostname.clone()
    };
    if hostname.len() > 64 || hostname.contains('\0') {
        return bad(format!("host name {hostname:?} is longer than 64 bytes"));
    }
    Ok(hostname)
}

/// The agent's environment: defaults, then the spec's, then the listening fd (always last,
/// the agent depends on it).
pub fn agent_env(spec_env: &BTreeMap<String, String>, hostname: &str) -> Vec<String> {
    let mut env: BTreeMap<&str, &str> = BTreeMap::from([
        ("PATH", DEFAULT_PATH),
        ("HOME", "/root"),
        ("HOSTNAME", hostname),
        ("LANG", "C.UTF-8"),
    ]);
    for (k, v) in spec_env {
        env.insert(k, v);
    }
    env.insert("SANDBOXD_LISTEN_FD", "3");
    env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// Undoes a half-made box unless disarmed.
struct CreateGuard<'a> {
    inner: &'a Inner,
    id: &'a str,
    pid: Option<libc::pid_t>,
    armed: bool,
}

impl Drop for CreateGuard<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Some(pid) = self.pid {
            let _ = sys::kill(pid, libc::SIGKILL);
            let mut status = 0;
            // SAFETY: waiting for our own child, which was just killed.
            unsafe { libc::waitpid(pid, &mut status, 0) };
        }
        let _ = remove_box_resources(self.inner, self.id);
    }
}

/// Kill whatever is left of a box through its cgroups and remove its cgroups and
/// directories. Returns (processes found, resources removed).
fn remove_box_resources(inner: &Inner, id: &str) -> Result<(usize, usize), NativeError> {
    if inner.own_groups.contains(id) {
        // The server's own group: killing it would kill the server.
        return Ok((0, 0));
    }
    let killed = inner.cgroups.pids(id).len();
    inner.cgroups.kill(id)?;
    Ok((killed, remove_dead_box(inner, id)?))
}

/// Remove the cgroups and directories of a box whose processes are gone. Returns how many
/// resources were removed.
fn remove_dead_box(inner: &Inner, id: &str) -> Result<usize, NativeError> {
    let mut removed = inner.cgroups.remove(id)?;
    let paths = BoxPaths::new(&inner.config, id);
    for dir in [&paths.dir, &paths.run] {
        match remove_tree(dir) {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(NativeError::io(format!("remove {}", dir.display()))(e)),
        }
    }
    Ok(removed)
}

/// `remove_dir_all`, and if that is refused, again after making every directory of the tree
/// `0700`. A rootless server has no `CAP_DAC_OVERRIDE`: a directory that a box (or overlayfs,
/// whose `work/work` is mode 0) left without write or search permission stops the removal,
/// though the server owns it. Only called once the box's processes are dead, so nothing
/// swaps a directory for a symlink meanwhile.
fn remove_tree(dir: &Path) -> io::Result<()> {
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            // Iterative: a box can nest directories deeper than any stack.
            let mut stack = vec![dir.to_path_buf()];
            while let Some(d) = stack.pop() {
                let _ = fs::set_permissions(&d, fs::Permissions::from_mode(0o700));
                for entry in fs::read_dir(&d).into_iter().flatten().flatten() {
                    // DirEntry::file_type does not follow symlinks.
                    if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                        stack.push(entry.path());
                    }
                }
            }
            fs::remove_dir_all(dir)
        }
        r => r,
    }
}

fn tail_of(path: &Path, max: usize) -> String {
    let mut text = String::new();
    if let Ok(mut f) = fs::File::open(path) {
        let _ = f.read_to_string(&mut text);
    }
    let text = text.trim();
    let start = text.len().saturating_sub(max);
    let start = (start..text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    text[start..].to_string()
}

/// Everything `create` does that blocks, from the first directory to the agent's exec.
fn create_blocking(
    inner: &Inner,
    spec: &BoxSpec,
) -> Result<(libc::pid_t, OwnedFd, OwnedFd), NativeError> {
    let hostname = validate(spec, &inner.config)?;
    let id = spec.id.as_str();
    if inner.own_groups.contains(id) {
        return Err(NativeError::InvalidSpec(format!(
            "id {id:?} names the server's own cgroup under the cgroup parent"
        )));
    }
    let paths = BoxPaths::new(&inner.config, id);
    let boxes_dir = inner.config.state_dir.join("boxes");
    fs::create_dir_all(&boxes_dir)
        .map_err(NativeError::io(format!("create {}", boxes_dir.display())))?;
    fs::create_dir_all(&inner.config.run_dir).map_err(NativeError::io(format!(
        "create {}",
        inner.config.run_dir.display()
    )))?;
    // Creating the box directory claims the id.
    match fs::DirBuilder::new().mode(0o700).create(&paths.dir) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(NativeError::AlreadyExists(id.to_string()))
        }
        r => r.map_err(NativeError::io(format!("create {}", paths.dir.display())))?,
    }
    let mut guard = CreateGuard {
        inner,
        id,
        pid: None,
        armed: true,
    };
    // With a disk limit the init mounts a tmpfs on `layer` and makes the upper, work and
    // scratch directories in it: made here too, they would be three inodes of the host's
    // disk made and removed for nothing at every box.
    let layer_dirs: &[&PathBuf] = if spec.limits.disk_bytes > 0 {
        &[]
    } else {
        &[&paths.upper, &paths.work, &paths.scratch]
    };
    for dir in [&paths.dir.join("layer"), &paths.rootfs]
        .iter()
        .chain(layer_dirs)
    {
        fs::create_dir(dir).map_err(NativeError::io(format!("create {}", dir.display())))?;
    }
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&paths.run)
        .map_err(NativeError::io(format!("create {}", paths.run.display())))?;

    let join = inner.cgroups.create(id, &spec.limits)?;

    let listener = UnixListener::bind(&paths.socket)
        .map_err(NativeError::io(format!("bind {}", paths.socket.display())))?;
    fs::set_permissions(&paths.socket, fs::Permissions::from_mode(0o600))
        .map_err(NativeError::io(format!("chmod {}", paths.socket.display())))?;
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&paths.log)
        .map_err(NativeError::io(format!("create {}", paths.log.display())))?;
    let devnull = fs::File::open("/dev/null").map_err(NativeError::io("open /dev/null"))?;
    let (status_r, status_w) = sys::pipe_cloexec().map_err(NativeError::io("pipe"))?;
    let log_fd: OwnedFd = log.into();
    let stdout = log_fd.try_clone().map_err(NativeError::io("dup"))?;
    let agent = inner
        .agent_exe
        .try_clone()
        .map_err(NativeError::io("dup"))?;

    let config = InitConfig {
        id: id.to_string(),
        hostname: hostname.clone(),
        template: spec.template_rootfs.clone(),
        upper: paths.upper.clone(),
        work: paths.work.clone(),
        scratch: paths.scratch.clone(),
        rootfs: paths.rootfs.clone(),
        workspace: spec.workspace.clone(),
        readonly_mounts: spec
            .readonly_mounts
            .iter()
            .map(|m| (m.host.clone(), m.guest.clone()))
            .collect(),
        tmp_size_mb: inner.config.tmp_size_mb,
        disk_mb: spec.limits.disk_bytes.div_ceil(1 << 20),
        cgroup_join: join.v1_tasks.clone(),
        agent_env: agent_env(&spec.env, &hostname),
        agent_argv: vec![crate::config::AGENT_BIN_NAME.to_string()],
        rootless: inner.rootless.is_some(),
    };
    let fds = ChildFds([
        devnull.into(),
        stdout,
        log_fd,
        listener.into(),
        status_w,
        agent,
    ]);
    let prepared = Prepared::new(
        &inner.config.init_bin,
        &config,
        join.v2_dir.as_deref(),
        fds,
        inner.rootless,
        inner.netns.as_ref().and_then(|pool| pool.take()),
    )
    .map_err(NativeError::io("prepare the init"))?;
    let (pid, pidfd) = spawn::clone_init(&prepared).map_err(NativeError::io("clone the init"))?;
    guard.pid = Some(pid);
    // The listener and the pipe's write end now live in the child only: the pipe must read
    // EOF once the child closes its end.
    drop(prepared);

    match spawn::await_init(&status_r, START_TIMEOUT)
        .map_err(NativeError::io("read the init's status"))?
    {
        InitOutcome::Started => {}
        InitOutcome::Failed(message) => {
            return Err(NativeError::InitFailed {
                id: id.to_string(),
                message,
            })
        }
        InitOutcome::TimedOut => {
            return Err(NativeError::InitTimeout {
                id: id.to_string(),
                waited: START_TIMEOUT,
            })
        }
    }
    // A silent close also happens when the init dies without a word (killed, or the agent
    // exec'd and died at once): the box is not usable then.
    if sys::poll_readable(pidfd.as_raw_fd(), 0).unwrap_or(false) {
        return Err(NativeError::InitFailed {
            id: id.to_string(),
            message: format!(
                "the box died while starting; init.log: {}",
                tail_of(&paths.log, 2000)
            ),
        });
    }
    let reaper_fd = pidfd
        .try_clone()
        .map_err(NativeError::io("dup the pidfd"))?;
    guard.armed = false;
    // The init's last line says what it enforced (landlock's status depends on the kernel);
    // read only when it is logged, since every create would pay for the file's read.
    if tracing::enabled!(tracing::Level::DEBUG) {
        let log = fs::read_to_string(&paths.log).unwrap_or_default();
        let summary = log
            .lines()
            .rev()
            .find(|l| l.contains("starting agent"))
            .unwrap_or("");
        tracing::debug!(box_id = %id, pid, "native box started: {summary}");
    }
    Ok((pid, pidfd, reaper_fd))
}

/// Wait for the init to exit, collect it, and publish its wait status.
async fn reap(pid: libc::pid_t, pidfd: OwnedFd, tx: watch::Sender<Option<i32>>) {
    // SAFETY: the OwnedFd is moved into the AsyncFd, which keeps it open and unchanged
    // until it is dropped at the end of this function.
    match unsafe { AsyncFd::register_with_interest(pidfd, Interest::READABLE) } {
        Ok(afd) => {
            // A pidfd becomes readable when the process exits.
            if let Ok(mut ready) = afd.readable().await {
                ready.retain_ready();
            }
        }
        Err(e) => {
            // The reactor refused the fd: poll the pidfd instead.
            let (pidfd, _) = e.into_parts();
            while !sys::poll_readable(pidfd.as_raw_fd(), 0).unwrap_or(true) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    loop {
        match sys::waitpid_nohang(pid) {
            Ok(Some(status)) => {
                let _ = tx.send(Some(status));
                return;
            }
            Ok(None) => tokio::time::sleep(Duration::from_millis(2)).await,
            Err(_) => {
                // Already collected (by the fallback above, or by someone else's waitpid(-1)).
                let _ = tx.send(Some(-1));
                return;
            }
        }
    }
}

#[async_trait]
impl Backend for NativeBackend {
    fn name(&self) -> &'static str {
        "native"
    }

    async fn create(&self, spec: BoxSpec) -> Result<BoxHandle, BackendError> {
        if self.inner.boxes.lock().unwrap().contains_key(&spec.id) {
            return Err(NativeError::AlreadyExists(spec.id).into());
        }
        let inner = self.inner.clone();
        let id = spec.id.clone();
        let runtime = tokio::runtime::Handle::current();
        // Held by the blocking task, which runs on if the caller stops waiting.
        let lane = self.inner.lanes.clone().acquire_owned().await;
        // The box is registered and its reaper started inside the blocking task, so that a
        // caller that stops waiting (a cancelled request) cannot leave an untracked box.
        tokio::task::spawn_blocking(move || {
            let _lane = lane;
            let (pid, pidfd, reaper_fd) = create_blocking(&inner, &spec)?;
            let (tx, rx) = watch::channel(None);
            runtime.spawn(reap(pid, reaper_fd, tx));
            let state = Arc::new(BoxState {
                pid,
                pidfd,
                exited: rx,
            });
            inner.boxes.lock().unwrap().insert(spec.id.clone(), state);
            Ok::<_, NativeError>(())
        })
        .await
        .map_err(|e| BackendError::StartFailed(format!("create task failed: {e}")))??;
        Ok(BoxHandle {
            endpoint: AgentEndpoint::Unix {
                path: BoxPaths::new(&self.inner.config, &id).socket,
            },
            id,
        })
    }

    async fn destroy(&self, id: &str) -> Result<(), BackendError> {
        let state = self.inner.boxes.lock().unwrap().remove(id);
        if !valid_id(id) || self.inner.own_groups.contains(id) {
            if let Some(state) = &state {
                let _ = sys::pidfd_send_signal(state.pidfd.as_raw_fd(), libc::SIGKILL);
            }
            return Ok(());
        }
        let inner = self.inner.clone();
        let owned_id = id.to_string();
        let runtime = tokio::runtime::Handle::current();
        // A task of its own, so that the box is killed and removed even if the caller stops
        // waiting for a lane (it is no longer in `boxes`). The kill waits for the lane too:
        // the dying processes' teardown in the kernel is most of a delete's CPU.
        let teardown = tokio::spawn(async move {
            let lane = inner.lanes.clone().acquire_owned().await;
            // One blocking task for the whole teardown: kill, wait for the reaper to collect
            // the init (by then every process of its pid namespace is gone), remove.
            tokio::task::spawn_blocking(move || {
                let _lane = lane;
                inner.cgroups.lower_cpu_weight(&owned_id);
                if let Some(state) = &state {
                    // SIGKILL to PID 1 of a pid namespace kills every process in it.
                    let _ = sys::pidfd_send_signal(state.pidfd.as_raw_fd(), libc::SIGKILL);
                }
                let killed = inner.cgroups.kill(&owned_id);
                if let Some(state) = state {
                    let mut rx = state.exited.clone();
                    let reaped = runtime.block_on(tokio::time::timeout(
                        REAP_TIMEOUT,
                        rx.wait_for(|s| s.is_some()),
                    ));
                    if reaped.is_err() {
                        return Err(BackendError::Io {
                            context: format!(
                                "box {owned_id}: the init (pid {}) was not reaped",
                                state.pid
                            ),
                            source: io::ErrorKind::TimedOut.into(),
                        });
                    }
                }
                killed.map_err(NativeError::from)?;
                remove_dead_box(&inner, &owned_id)?;
                Ok(())
            })
            .await
        });
        let task_failed = |e: tokio::task::JoinError| BackendError::Io {
            context: "destroy task".into(),
            source: io::Error::other(e),
        };
        teardown
            .await
            .map_err(task_failed)?
            .map_err(task_failed)??;
        tracing::debug!(box_id = %id, "native box destroyed");
        Ok(())
    }

    async fn is_alive(&self, id: &str) -> bool {
        let Some(state) = self.inner.boxes.lock().unwrap().get(id).cloned() else {
            // Not started by this process (another worker of this node, or an earlier run
            // whose box was adopted): alive while its cgroup has processes.
            return valid_id(id)
                && !self.inner.own_groups.contains(id)
                && !self.inner.cgroups.pids(id).is_empty();
        };
        if state.exited.borrow().is_some() {
            return false;
        }
        // Readable pidfd = exited, even if the reaper has not run yet.
        !sys::poll_readable(state.pidfd.as_raw_fd(), 0).unwrap_or(true)
    }

    async fn set_paused(&self, id: &str, paused: bool) -> Result<(), BackendError> {
        if !valid_id(id) || self.inner.own_groups.contains(id) || !self.is_alive(id).await {
            return Err(BackendError::NotFound(id.to_string()));
        }
        let inner = self.inner.clone();
        let owned_id = id.to_string();
        tokio::task::spawn_blocking(move || inner.cgroups.set_frozen(&owned_id, paused))
            .await
            .map_err(|e| BackendError::Io {
                context: "pause task".into(),
                source: io::Error::other(e),
            })?
            .map_err(|e| NativeError::from(e).into())
    }

    /// The cgroup parents go, except in rootless mode (the server could not make the
    /// delegated parents again). The kernel refuses to remove a group that still holds a
    /// box's group or a process, so whatever still runs under them keeps them.
    async fn shutdown(&self) {
        if self.inner.rootless.is_some() {
            return;
        }
        let inner = self.inner.clone();
        let _ = tokio::task::spawn_blocking(move || inner.cgroups.remove_parents()).await;
    }

    async fn cleanup_stale(&self, keep: &BTreeSet<String>) -> Result<CleanupReport, BackendError> {
        let inner = self.inner.clone();
        let keep = keep.clone();
        let report = tokio::task::spawn_blocking(move || cleanup_blocking(&inner, &keep))
            .await
            .map_err(|e| BackendError::Io {
                context: "cleanup task".into(),
                source: io::Error::other(e),
            })??;
        Ok(report)
    }
}

fn subdir_names(dir: &Path) -> Result<BTreeSet<String>, NativeError> {
    let mut out = BTreeSet::new();
    let entries = match fs::read_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        r => r.map_err(NativeError::io(format!("list {}", dir.display())))?,
    };
    for entry in entries.flatten() {
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            out.insert(entry.file_name().to_string_lossy().into_owned());
        }
    }
    Ok(out)
}

fn cleanup_blocking(inner: &Inner, keep: &BTreeSet<String>) -> Result<CleanupReport, NativeError> {
    let started = Instant::now();
    let mut ids = inner.cgroups.stale_ids()?;
    ids.extend(subdir_names(&inner.config.state_dir.join("boxes"))?);
    ids.extend(subdir_names(&inner.config.run_dir)?);
    let mut live: BTreeSet<String> = inner.boxes.lock().unwrap().keys().cloned().collect();
    // Adopted: boxes the store still records as alive and whose processes still run. (One
    // whose processes are gone is cleaned up like any other; the reaper then marks its record.)
    let adopted: Vec<String> = keep
        .iter()
        .filter(|id| valid_id(id) && !inner.cgroups.pids(id).is_empty())
        .cloned()
        .collect();
    live.extend(adopted.iter().cloned());
    // The parents go too when no box is left, except when rootless (the server could not
    // make the delegated parents again) or when they hold the server itself.
    let remove_parents = live.is_empty() && inner.own_groups.is_empty() && inner.rootless.is_none();
    // Not boxes: the groups that hold the server itself.
    live.extend(inner.own_groups.iter().cloned());
    let mut report = CleanupReport::default();
    for id in ids.difference(&live) {
        let (killed, removed) = remove_box_resources(inner, id)?;
        if killed > 0 {
            report.boxes_killed += 1;
        }
        report.resources_removed += removed;
    }
    if remove_parents {
        report.resources_removed += inner.cgroups.remove_parents();
    }
    tracing::info!(
        boxes_killed = report.boxes_killed,
        resources_removed = report.resources_removed,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "native backend: stale boxes cleaned up"
    );
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(valid_id("sbx-1_a.b"));
        for bad in ["", ".", "..", ".hidden", "a/b", "a b", "ü"] {
            assert!(!valid_id(bad), "{bad:?}");
        }
        assert!(!valid_id(&"x".repeat(129)));
    }

    #[test]
    fn overlay_paths() {
        assert!(overlay_safe(Path::new("/var/lib/sandboxd/templates/base")));
        assert!(!overlay_safe(Path::new("/a,b")));
        assert!(!overlay_safe(Path::new("/a:b")));
    }

    #[test]
    fn environment_defaults_and_overrides() {
        let spec = BTreeMap::from([
            ("LANG".to_string(), "en_US.UTF-8".to_string()),
            ("FOO".to_string(), "bar".to_string()),
            ("SANDBOXD_LISTEN_FD".to_string(), "9".to_string()),
        ]);
        let env = agent_env(&spec, "box1");
        assert!(env.contains(&format!("PATH={DEFAULT_PATH}")));
        assert!(env.contains(&"HOME=/root".to_string()));
        assert!(env.contains(&"HOSTNAME=box1".to_string()));
        assert!(env.contains(&"LANG=en_US.UTF-8".to_string()));
        assert!(env.contains(&"FOO=bar".to_string()));
        assert!(env.contains(&"SANDBOXD_LISTEN_FD=3".to_string()));
        assert!(!env.contains(&"SANDBOXD_LISTEN_FD=9".to_string()));
    }

    #[test]
    fn guest_paths() {
        assert!(init::valid_guest_path(Path::new("/data")));
        assert!(init::valid_guest_path(Path::new("/opt/x/y")));
        for bad in ["/", "data", "/a/../b", "/a/./b"] {
            // `Path` drops interior `.` components, so "/a/./b" is just "/a/b".
            if bad == "/a/./b" {
                continue;
            }
            assert!(!init::valid_guest_path(Path::new(bad)), "{bad}");
        }
    }
}
