//! The native backend: each sandbox ("box") is a set of Linux namespaces around the guest
//! agent. No daemon, no shim process, a few milliseconds from `create` to a running agent.
//!
//! # Shape
//!
//! A box is one process tree whose root is the agent, running as PID 1 of its own pid
//! namespace and as a direct child of the server. Per idle box the host holds: the agent
//! process, its namespaces, its cgroups, an overlay upper directory, a listening socket, a
//! pidfd and one small tokio task that reaps it. Nothing else runs.
//!
//! - [`NativeBackend`] implements [`sandboxd_core::backend::Backend`] (`create`, `destroy`,
//!   `is_alive`, `cleanup_stale`); built from a [`NativeConfig`].
//! - `sandboxd-init` (the [`init`] module) is the short-lived in-box setup process.
//! - [`cgroup`] hides cgroup v1, v2 and hybrid layouts behind one interface.
//! - [`seccomp`] and the private `security` module are the last walls before the agent runs.
//!
//! # Create sequence
//!
//! On the host, in `create` (blocking parts on tokio's blocking pool):
//!
//! 1. Validate the spec (id, paths, host name, environment) before touching anything.
//! 2. Create `<state_dir>/boxes/<id>` (creating it claims the id), with `upper/`, `work/`,
//!    `rootfs/`, and `<run_dir>/<id>/` (mode 0700).
//! 3. Create the box's cgroups and write its limits, before any of its processes exists.
//! 4. Bind and listen on `<run_dir>/<id>/agent.sock` (mode 0600) on the host. The box never
//!    sees that path: the socket reaches the agent as fd 3.
//! 5. Prepare everything the child needs (paths, argv, the JSON [`init::InitConfig`] in an
//!    environment variable, fds moved above 10, in rootless mode the id maps), then one raw
//!    `clone3(CLONE_NEWNS|CLONE_NEWPID|CLONE_NEWUTS|CLONE_NEWIPC|CLONE_NEWNET|CLONE_PIDFD|
//!    CLONE_INTO_CGROUP, exit_signal = SIGCHLD)` (plus `CLONE_NEWUSER` in rootless mode,
//!    see [below](#rootless-mode)) with no stack, which behaves like `fork`: the
//!    child is PID 1 of the new pid namespace, a direct child of the server (no shim), born
//!    in the box's v2 group, and the pidfd comes atomically. Where `clone3` fails (old kernel,
//!    v1-only host) a plain `clone(flags, NULL)` plus `pidfd_open` does the same and the init
//!    joins the v2 group itself. The child makes only async-signal-safe calls (the server is
//!    multi-threaded): `dup2` of `/dev/null`, `init.log` (twice), the listener, a status pipe
//!    and the agent executable onto fds 0–5 (which clears their `FD_CLOEXEC`), in rootless
//!    mode write its own id maps, unblock signals, `execve(sandboxd-init)`, `_exit(127)` on
//!    failure. The parent drops its copies
//!    of the listener and the pipe's write end.
//!    Unless rootless, the clone leaves `CLONE_NEWNET` out when a network namespace made ahead
//!    of time is ready (a background thread keeps two, see the private `netns` module): the
//!    child `setns`es into it before the `execve` (or unshares a new one if that fails).
//!    Making the namespace is the dearest part of the clone, and a new one holds nothing but
//!    a `lo` that is down, so a pooled one is as fresh; each is handed out once.
//! 6. Read the status pipe: it closes without a word when the agent has been exec'd (the
//!    init's end is `O_CLOEXEC`), or carries the init's error message, which becomes
//!    `StartFailed` (the whole box is then torn down). A reaper task waits on the pidfd (via
//!    `AsyncFd`) and collects the exit status, so no zombie is left and `is_alive` is exact.
//!    The handle is returned with the agent already running; connections made before it
//!    accepts wait in the listen backlog.
//!
//! Why not write the pid to `cgroup.procs`: moving a process that way takes a global lock
//! whose first writer waits for an RCU grace period, measured here at 12 ms, more than the
//! rest of the start. Being born in the v2 group and joining the v1 groups by writing `0` to
//! their per-thread `tasks` files (the init is single-threaded) avoids that lock.
//!
//! In `sandboxd-init` (PID 1 of the new namespaces, root with all capabilities; in rootless
//! mode root of its own user namespace, with all capabilities there):
//!
//! 1. Join the box's v1 cgroups (`0` into each `tasks`; the v2 group it was born in, or else
//!    `0` into its `cgroup.procs`), then `unshare(CLONE_NEWCGROUP)`, so that the box's cgroup
//!    root is its own group.
//! 2. Make every mount private; mount overlayfs on `rootfs` (lower: the template, never
//!    written; upper/work: the box's directories; `nosuid,nodev`, `volatile`).
//! 3. Take detached copies (`open_tree(OPEN_TREE_CLONE)`) of the workspace (`nosuid,nodev`),
//!    each read-only mount (recursive, `ro,nosuid,nodev` via `mount_setattr`, which unlike a
//!    read-only remount also covers sub-mounts), and `/dev/{null,zero,full,random,urandom,tty}`;
//!    make the box's procfs and sysfs as detached mounts (`fsopen`/`fsmount`, attached in
//!    step 5): in a user namespace the kernel creates them only while a fully visible
//!    instance is still in the mount namespace, and the mount points are still chosen inside
//!    the box.
//! 4. `pivot_root(".", ".")` in the overlay, `umount2(".", MNT_DETACH)`, `chdir("/")`. From
//!    here on every path resolves inside the box, so a symlink in a template (say
//!    `/workspace -> /etc`) can only redirect a mount to another place in the box, never onto
//!    the host.
//! 5. `/dev`: a directory of the box's scratch tmpfs (`mode=755,nosuid,nodev,noexec`), the
//!    six device copies attached, the `fd`, `stdin`, `stdout`, `stderr`, `ptmx` symlinks, a
//!    new devpts instance at `/dev/pts`, another directory of the scratch tmpfs at
//!    `/dev/shm`. `/proc`: the box's procfs, with Docker's masking (`/dev/null` over `kcore`,
//!    `keys`, `timer_list`, `timer_stats`, `sched_debug`, `latency_stats`; an empty read-only
//!    directory of the scratch tmpfs over `acpi`, `scsi`; read-only `sys`, `sysrq-trigger`,
//!    `irq`, `bus`, `fs`). `/sys`: sysfs read-only (`nosuid,nodev,noexec`; in the new net
//!    namespace it shows only the box's interfaces), with `firmware` and the powercap energy
//!    counters masked the same way. `/tmp`: a third directory of the scratch tmpfs
//!    (`nosuid,nodev`; the tmpfs's size is the disk limit, else the config's `tmp_size_mb`).
//!    One tmpfs, not one per place: each file system instance is a superblock whose LRU lists
//!    the kernel walks at every memory cgroup's removal, so every superblock alive makes
//!    every box's delete dearer (a box has seven: the disk limit's tmpfs, the overlay, procfs,
//!    sysfs, the scratch tmpfs, devpts and its IPC namespace's mqueue). Then the workspace at
//!    `/workspace` and the read-only mounts.
//! 6. `sethostname`; bring `lo` up (`SIOCSIFFLAGS`): the only interface, so the network is
//!    loopback-only and the host's `127.0.0.1` is another network stack, out of reach.
//! 7. Reset signal dispositions and mask, close every fd above 5, clear `FD_CLOEXEC` on fd 3.
//! 8. Securebits (`NOROOT`, `NO_SETUID_FIXUP`, `NO_CAP_AMBIENT_RAISE`, all locked, and
//!    `KEEP_CAPS_LOCKED`) while `CAP_SETPCAP` is held; drop the whole bounding set; clear the
//!    ambient set; `capset` everything to zero; `PR_SET_NO_NEW_PRIVS`; landlock; seccomp.
//! 9. `execveat(5, "", argv, envp, AT_EMPTY_PATH)`: the agent runs as PID 1 with fd 3 as its
//!    listener and `SANDBOXD_LISTEN_FD=3`, `PATH`, `HOME=/root`, `HOSTNAME`, `LANG=C.UTF-8`
//!    and the spec's environment.
//!
//! Every mount is made inside the box's mount namespace after its propagation was made
//! private, so none ever appears in the host's mount table, and all of them vanish with the
//! namespace when the box's last process dies: there is nothing to unmount on `destroy`.
//!
//! # Destroy and clean-up
//!
//! `destroy` first gives the box's group the least CPU weight (its processes' own exit then
//! waits for the boxes in use; `Cgroups::lower_cpu_weight`), then sends SIGKILL through the
//! pidfd to PID 1 (the kernel then kills the whole pid
//! namespace) and also kills through the cgroup (`cgroup.kill` on the v2 tree; on pure v1,
//! freeze, SIGKILL every listed pid, thaw), waits for the reaper, removes the cgroups
//! (`rmdir`, retried while the kernel finishes tearing tasks down) and the box's state and run
//! directories. Box starts and teardowns run in two lanes per CPU (`LANES_PER_CPU`): a burst
//! of them queues in front of the lanes instead of contending for the kernel's cgroup and
//! mount locks in a hundred blocking threads; a teardown runs in a task of its own, so a
//! caller that stops waiting for its lane cannot leave the box alive. The workspace is never
//! touched. `cleanup_stale` does the same, by name, for
//! every box group under the cgroup parent and every directory under `<state_dir>/boxes`
//! and `<run_dir>`: after a server crash (even SIGKILL) the boxes keep running, reparented to
//! the host's init, and their cgroups are how they are found again.
//!
//! # Security model and trade-offs
//!
//! Boxes run as uid 0 *without any capability*: as root, in the host's user namespace; in
//! [rootless mode](#rootless-mode), in a user namespace of their own, where uid 0 is the
//! server's uid on the host. The walls, outermost first:
//!
//! - Namespaces: mount (the box sees only its overlay root and what was mounted for it), pid,
//!   net (loopback only), uts, ipc, cgroup; user in rootless mode.
//! - No capabilities in any set, locked securebits and `no_new_privs`: setuid binaries and
//!   file capabilities grant nothing. Root in the box still owns files as uid 0 on the host
//!   (rootless: as the server's uid) (the workspace, the upper directory), which is why nothing of the host but the
//!   workspace and the read-only mounts is mounted in.
//! - seccomp: a deny list at least as strict as Docker's default (see [`seccomp`]), plus a
//!   kill on foreign architectures and x32.
//! - landlock, best effort: no device nodes can be created; abstract unix sockets and signals
//!   are scoped to the box where the kernel has ABI 6. What was enforced is logged to the
//!   box's `init.log`.
//! - cgroups: memory (swap included), pids and CPU limits.
//! - The agent runs from a sealed memfd copy made once per backend, so `/proc/1/exe` in a box
//!   cannot be opened for writing to replace the host's agent binary (the runc
//!   CVE-2019-5736 pattern). A side effect: a new agent binary is picked up on the next
//!   server start.
//!
//! What it does not give: a separate kernel. A kernel bug reachable through the allowed
//! syscalls is a host compromise; use the gVisor backend for code that needs that wall. Disk
//! use of the overlay upper directory is not limited without a disk limit (`/tmp` and
//! `/dev/shm` always are, and count against memory). `init.log` (the agent's stderr) is on
//! the host disk.
//!
//! Cgroups are made at `<hierarchy root>/<cgroup_parent>/<id>`, not below the server's own
//! group (as Docker's cgroupfs driver does): a box's usage is charged to the box alone, and
//! pure v2's "no processes in inner groups" rule never meets the server. Mount points are
//! created inside the box after `pivot_root`, and a mount onto a final-component symlink is
//! refused (`move_mount` does not follow it), so a template cannot redirect the workspace.
//!
//! # Rootless mode
//!
//! When the server's effective uid is not 0, [`NativeBackend::new`] sets up rootless mode
//! ([`NativeBackend::is_rootless`]): each box additionally gets its own user namespace.
//!
//! How it works:
//!
//! - The clone carries `CLONE_NEWUSER`; the kernel makes the user namespace first, so it owns
//!   the mount, pid, net, uts and ipc namespaces made by the same clone (and the cgroup
//!   namespace the init unshares later). The namespace maps exactly one uid and one gid: the
//!   box's 0 to the server's effective uid and gid. A single-id map needs no `newuidmap`
//!   helper and no `/etc/subuid` entry. The child writes the maps itself before it executes
//!   the init (`deny` to `setgroups`, then `uid_map`, `gid_map`) rather than the server
//!   writing them while the child waits on a pipe: the kernel allows both for a single-id map,
//!   and this way needs no pipe, no round trip and no clean-up on the server's side. The
//!   child first makes itself dumpable, because a server that dropped privileges (started as
//!   root, then `setuid`) is not, and then its `/proc/<pid>/uid_map` is owned by host root.
//! - The init then runs the same setup as root does, root of its own user namespace, with two
//!   changed mount options (the overlay gets `userxattr`, `/dev/pts` loses `gid=5`; see
//!   [`init`]). The agent runs as uid 0 in the box, as the server's uid on the host, with no
//!   capability, locked securebits, `no_new_privs`, landlock and the same seccomp filter (which
//!   also refuses nested user namespaces).
//! - Cgroups: only a subtree delegated to the server's user can be used, and the kernel only
//!   lets a process start a box in a v2 group if it can write `cgroup.procs` of the common
//!   ancestor of its own group and the box's, so the server must itself run inside the
//!   delegated v2 tree (say in `<cgroup_parent>/.server`). [`NativeBackend::new`] checks this
//!   ([`cgroup::Cgroups::check_delegation`]) and otherwise returns
//!   [`BackendError::Unavailable`](sandboxd_core::backend::BackendError::Unavailable) with the
//!   commands that set it up, for this host's hierarchies, e.g. for uid 1000:
//!   `mkdir -p /sys/fs/cgroup/{cpu,cpuacct,memory,freezer,pids,unified}/sandboxd-1000
//!   /sys/fs/cgroup/unified/sandboxd-1000/.server && chown -R 1000:1000 <those parents>`
//!   (once the v2 parent exists and has `cgroup.kill` and `cgroup.freeze`, Linux 5.14 and
//!   later, the v1 `freezer` and `cpuacct` parents are not asked for: a box does not join
//!   them), then
//!   `echo <pid of the shell that starts sandboxd> >
//!   /sys/fs/cgroup/unified/sandboxd-1000/.server/cgroup.procs` as root (or a systemd unit with
//!   `Delegate=yes`). Joining the v1 groups works unchanged: the init writes `0` to their
//!   `tasks` files, which the server created and so owns, and the kernel's v1 rule (the
//!   writer's host euid equals the task's uid) holds. `destroy` and `cleanup_stale` kill
//!   through `cgroup.kill` (or the freezer) in groups the server owns, signal processes of its
//!   own uid and remove its own directories; a group under the parent that holds the server
//!   (`.server`) is never taken for a box, and the delegated parents are never removed.
//! - Defaults ([`NativeConfig::default`]): per-user `state_dir` and `run_dir`
//!   (`$XDG_DATA_HOME`, `$XDG_RUNTIME_DIR`, else under `/tmp/sandboxd-<uid>`; a `run_dir`
//!   owned by another user is refused) and cgroup parent `sandboxd-<uid>`. The server passes
//!   its own settings anyway.
//!
//! What is different (the behaviour of templates, workspace files and mounts measured on
//! this host: Linux 6.18, hybrid cgroups, ext4, by `tests/rootless.rs`):
//!
//! - Template files keep their host owners, and ids other than the server's show as the
//!   overflow id 65534 (`nobody`) in the box. A box's root is not their owner and has no
//!   capability over unmapped ids, so files and directories of a template owned by host root
//!   are used through their "other" permission bits: readable and executable, but writing
//!   `/usr/bin/x` or appending to `/etc/passwd` fails with `EACCES` (before any copy-up is
//!   tried), and a `0700` `/root` cannot even be listed. Where the bits do allow writing (a
//!   `0666` file, a `1777` directory), the write fails with `EOVERFLOW` ("Value too large for
//!   defined data type"): overlayfs cannot copy the file or directory up, because the copy
//!   could not be given its unmapped owner. The overlay's root directory (owned by the
//!   server, from the upper layer), `/tmp`, `/dev/shm` and `/workspace` are writable.
//!   **Templates for rootless mode should be owned by the server's user** (unpack them as that
//!   user or `chown -R` them): their files then belong to root in the box, and everything
//!   behaves as in root mode (writes, copy-up, removing and renaming template directories).
//! - Files a box writes to the workspace or the upper layer belong to the server's user on
//!   the host (as root they belong to host root).
//! - Pseudo-terminals belong to group root, not `tty` (gid 5 is not mapped).
//! - The upper layer keeps overlayfs's metadata in `user.overlay.*` xattrs, so `state_dir`
//!   must be on a file system with user xattrs (ext4, xfs, btrfs; tmpfs only on recent
//!   kernels). Without them removing or renaming a template directory fails with `EIO`.
//! - All boxes and the server share one host uid. They cannot reach each other (no shared pid,
//!   mount or net namespace, so no pid to signal or trace and no path to open), but they share
//!   that uid's `RLIMIT_NPROC` (the pids cgroup still limits each box).
//! - The kernel must allow unprivileged user namespaces (`user.max_user_namespaces > 0`;
//!   `kernel.unprivileged_userns_clone = 1` on Debian kernels that have it; no AppArmor
//!   restriction), and the server's mount namespace must hold a fully visible `/proc` and
//!   `/sys` (not the case inside a container that masks parts of them).
//! - Pure cgroup v2 is implemented (controllers must be enabled for the parent, and the
//!   server may not sit in the parent itself) but could not be tested on this hybrid host.
//!
//! Minimum kernel: 5.12 (`open_tree`, `move_mount`, `mount_setattr`, `pidfd_open`,
//! `close_range`; rootless: overlayfs in a user namespace and `userxattr`, 5.11).

pub mod cgroup;
pub mod config;
pub mod error;
pub mod init;
pub mod seccomp;

mod backend;
mod netns;
mod security;
mod spawn;
mod sys;

pub use backend::{agent_env, NativeBackend, DEFAULT_PATH};
pub use config::NativeConfig;
pub use error::NativeError;
