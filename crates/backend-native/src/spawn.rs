//! Host side of starting a box: one raw `clone` that makes the init PID 1 of the new
//! namespaces and a direct child of the server, and the status-pipe handshake.
//!
//! The server is multi-threaded, so between `clone` and `execve` the child may only make
//! async-signal-safe calls (another thread may have held the allocator's lock at the moment
//! of the clone). Everything the child needs (paths, argv, envp, fd numbers, id maps) is
//! therefore built before the clone, and the child only `dup2`s, (rootless) writes its id
//! maps and `execve`s.
//!
//! # Sharing the server's memory until the `execve`
//!
//! A fork-like clone copies the server's page tables, write-protects every private page of
//! the server, and the `execve` then throws the copy away: profiling a create loop put that
//! (`dup_mmap`, `exit_mmap` and the copy-on-write faults the server's threads take
//! afterwards) among the largest costs of a create. Where it can, the clone therefore carries
//! `CLONE_VM | CLONE_VFORK`, as `posix_spawn` does: the child runs on a stack of its own in
//! the server's memory, and the calling thread sleeps until the child has exec'd. That needs
//! a few instructions of assembly ([`clone3_on_stack`]): the child must start on its stack in
//! a function of ours, not return through the C library's `syscall` wrapper. Signals stay
//! blocked in the child (the calling thread blocks them all around the clone), so that no
//! handler of the server can run on the shared memory; the init resets its signals before
//! it starts the agent. Rootless boxes keep the fork-like clone: their child changes its
//! dumpable flag, which belongs to the address space and would be the server's.
//!
//! # Rootless: the user namespace and its id maps
//!
//! When the server is not root, the clone also carries `CLONE_NEWUSER`. The kernel creates
//! the user namespace first, so it owns the other namespaces made by the same clone, and the
//! child holds every capability in it. Its uid and gid stay unmapped (shown as the overflow
//! id) until `uid_map`/`gid_map` are written, and the init must not run before that.
//!
//! The child writes its own maps, before `execve`: `deny` to `/proc/self/setgroups`, then
//! `0 <euid> 1` to `uid_map` and `0 <egid> 1` to `gid_map`. user_namespaces(7) allows this
//! single-id map from a process inside the new namespace (it holds `CAP_SETUID`/`CAP_SETGID`
//! there and maps exactly its own effective id in the parent namespace; `setgroups` must be
//! denied first for the gid map). Compared with the parent writing the maps while the child
//! blocks on a pipe, this needs no pipe, no round trip and no clean-up of a half-started child
//! on the parent's side, and the order "maps, then exec" holds by construction.
//!
//! One kernel detail forces an extra step: `/proc/<pid>/{uid_map,gid_map,setgroups}` of a
//! non-dumpable process are owned by host root, so neither the child nor the server could open
//! them. A server that changed its uids (started as root and dropped privileges) is
//! non-dumpable, and the child inherits that. The child therefore sets itself dumpable
//! (`PR_SET_DUMPABLE`, affecting only its own copy of the address space) first; the `execve`
//! a few syscalls later recomputes the flag anyway. In that window another process of the
//! server's uid on the host could ptrace the child (where Yama allows it), which holds a copy
//! of the server's memory; such a process could ptrace a dumpable server as well. Boxes
//! cannot: the child's pid does not exist in their pid namespaces.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::init::{InitConfig, CONFIG_ENV};
use crate::sys;

/// The fds the init starts with, in order 0..=5: stdin, stdout, stderr, the agent's listener,
/// the status pipe's write end and the agent executable.
pub(crate) struct ChildFds(pub [OwnedFd; 6]);

/// An init launch prepared down to the last pointer.
pub(crate) struct Prepared {
    path: CString,
    _argv: Vec<CString>,
    _envp: [Vec<CString>; 2],
    argv_ptrs: Vec<*const libc::c_char>,
    /// The environment for a child born in its v2 cgroup (index 0), and for one that must
    /// join it itself (index 1).
    envp_ptrs: [Vec<*const libc::c_char>; 2],
    /// Source fds, all `>= 10` so that no `dup2` onto 0..=5 clobbers a source still needed.
    sources: [RawFd; 6],
    _fds: Vec<OwnedFd>,
    /// The box's v2 cgroup directory, for `CLONE_INTO_CGROUP`.
    cgroup: Option<OwnedFd>,
    /// Rootless: the id maps the child writes for its new user namespace.
    userns: Option<UsernsMaps>,
    /// A fresh network namespace made ahead of time ([`crate::netns`]), which the child
    /// enters instead of having the clone make one. Close-on-exec: the init does not get it.
    netns: Option<OwnedFd>,
}

/// The host ids that uid 0 and gid 0 of a rootless box map to (the server's effective ids).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IdMap {
    /// Host uid of the box's root.
    pub uid: libc::uid_t,
    /// Host gid of the box's root group.
    pub gid: libc::gid_t,
}

/// The contents of the child's id map files, formatted before the clone.
struct UsernsMaps {
    uid_map: Vec<u8>,
    gid_map: Vec<u8>,
}

/// Namespaces the init is born in. The cgroup namespace is not among them: the init joins
/// its cgroups first and then unshares it, so that its cgroup root is its own group.
pub(crate) const CLONE_FLAGS: libc::c_int = libc::CLONE_NEWNS
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWNET;

/// `CLONE_INTO_CGROUP` from `<linux/sched.h>` (Linux 5.7).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// `struct clone_args` from `<linux/sched.h>` (version 2, with `cgroup`).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

fn nul_error(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{what} contains a NUL byte"),
    )
}

fn env_for(config: &InitConfig) -> io::Result<Vec<CString>> {
    let json = serde_json::to_string(config).map_err(io::Error::other)?;
    Ok(vec![
        CString::new(format!("{CONFIG_ENV}={json}")).map_err(|_| nul_error("init config"))?
    ])
}

fn null_terminated(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

impl Prepared {
    /// `config` lists only the v1 files to join; `v2_procs`, if any, is the v2 group's
    /// `cgroup.procs`, used when the init cannot be born in it.
    pub(crate) fn new(
        init_bin: &Path,
        config: &InitConfig,
        v2_dir: Option<&Path>,
        fds: ChildFds,
        userns: Option<IdMap>,
        netns: Option<OwnedFd>,
    ) -> io::Result<Self> {
        let path = sys::cpath(init_bin)?;
        let argv = vec![CString::new("sandboxd-init").map_err(|_| nul_error("argv"))?];
        let mut plain = config.clone();
        plain
            .cgroup_join
            .extend(v2_dir.map(|d| d.join("cgroup.procs")));
        let envp = [env_for(config)?, env_for(&plain)?];
        let cgroup = v2_dir.map(sys::open_dir_path).transpose()?;
        let mut owned = Vec::with_capacity(6);
        let mut sources = [0; 6];
        for (i, fd) in fds.0.iter().enumerate() {
            let high = sys::dup_cloexec_above(fd.as_raw_fd(), 10)?;
            sources[i] = high.as_raw_fd();
            owned.push(high);
        }
        Ok(Prepared {
            path,
            argv_ptrs: null_terminated(&argv),
            envp_ptrs: [null_terminated(&envp[0]), null_terminated(&envp[1])],
            _argv: argv,
            _envp: envp,
            sources,
            _fds: owned,
            cgroup,
            // A rootless box's network namespace must belong to its own user namespace.
            netns: netns.filter(|_| userns.is_none()),
            userns: userns.map(|m| UsernsMaps {
                uid_map: format!("0 {} 1\n", m.uid).into_bytes(),
                gid_map: format!("0 {} 1\n", m.gid).into_bytes(),
            }),
        })
    }

    /// The namespaces to create: [`CLONE_FLAGS`], plus a user namespace when rootless, less
    /// the network namespace when the child enters one made ahead of time.
    fn clone_flags(&self) -> libc::c_int {
        if self.userns.is_some() {
            CLONE_FLAGS | libc::CLONE_NEWUSER
        } else if self.netns.is_some() {
            CLONE_FLAGS & !libc::CLONE_NEWNET
        } else {
            CLONE_FLAGS
        }
    }
}

/// Report a failure of the child before `execve` on stderr (the box's `init.log`) and the
/// status pipe, as `prefix` and the errno in decimal, then exit.
///
/// # Safety
///
/// Only for the cloned child after its `dup2`s; async-signal-safe (no allocation).
unsafe fn child_fail(prefix: &[u8], errno: i32) -> ! {
    let mut buf = [0u8; 160];
    let mut len = 0;
    for &b in prefix.iter().take(buf.len() - 16) {
        buf[len] = b;
        len += 1;
    }
    let mut digits = [0u8; 12];
    let mut n = errno.unsigned_abs();
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &b in &digits[i..] {
        buf[len] = b;
        len += 1;
    }
    buf[len] = b'\n';
    len += 1;
    for fd in [libc::STDERR_FILENO, crate::init::STATUS_FD] {
        // SAFETY: writing a stack buffer to an fd; write is async-signal-safe. A failed
        // write leaves nobody to tell.
        unsafe { libc::write(fd, buf.as_ptr().cast(), len) };
    }
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(125) }
}

/// Write `data` to the file `path` with one `write(2)`; returns the errno on failure.
///
/// # Safety
///
/// Async-signal-safe (raw `open`, `write`, `close`), for the cloned child.
unsafe fn child_write_file(path: &CStr, data: &[u8]) -> Result<(), i32> {
    let errno = || io::Error::last_os_error().raw_os_error().unwrap_or(0);
    // SAFETY: `path` is a valid NUL-terminated string.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    if fd == -1 {
        return Err(errno());
    }
    // SAFETY: the pointer and length describe `data`; `fd` was just opened.
    let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
    let result = if n == data.len() as isize {
        Ok(())
    } else if n == -1 {
        Err(errno())
    } else {
        Err(libc::EIO)
    };
    // SAFETY: closing the fd opened above.
    unsafe { libc::close(fd) };
    result
}

/// Rootless: make the child uid 0 / gid 0 of its new user namespace (see the module docs).
///
/// # Safety
///
/// Only for the cloned child, after its `dup2`s; async-signal-safe. Exits on failure.
unsafe fn child_write_id_maps(maps: &UsernsMaps) {
    let one: libc::c_ulong = 1;
    let zero: libc::c_ulong = 0;
    // SAFETY: PR_SET_DUMPABLE takes integer arguments only; it changes this process alone.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, one, zero, zero, zero) } == -1 {
        let e = io::Error::last_os_error().raw_os_error().unwrap_or(0);
        // SAFETY: we are the child, after the dup2s.
        unsafe {
            child_fail(
                b"sandboxd-init: rootless: prctl(PR_SET_DUMPABLE): errno ",
                e,
            )
        };
    }
    let steps: [(&CStr, &[u8], &[u8]); 3] = [
        (
            c"/proc/self/setgroups",
            b"deny",
            b"sandboxd-init: rootless: write deny to /proc/self/setgroups: errno ",
        ),
        (
            c"/proc/self/uid_map",
            &maps.uid_map,
            b"sandboxd-init: rootless: write /proc/self/uid_map: errno ",
        ),
        (
            c"/proc/self/gid_map",
            &maps.gid_map,
            b"sandboxd-init: rootless: write /proc/self/gid_map: errno ",
        ),
    ];
    for (path, data, what) in steps {
        // SAFETY: async-signal-safe file write in the child.
        if let Err(e) = unsafe { child_write_file(path, data) } {
            // SAFETY: we are the child, after the dup2s.
            unsafe { child_fail(what, e) };
        }
    }
}

/// What happens in the child between `clone` and `execve`.
///
/// # Safety
///
/// Only to be called in the child of a fork-like `clone` of a possibly multi-threaded
/// process. It makes async-signal-safe calls only, and never returns.
unsafe fn child_exec(p: &Prepared, born_in_cgroup: bool) -> ! {
    for (target, &source) in p.sources.iter().enumerate() {
        // dup2 also clears FD_CLOEXEC on the target, which is what lets these fds survive
        // the execve while every other fd of the server closes.
        // SAFETY: plain syscall on fds this process owns.
        if unsafe { libc::dup2(source, target as libc::c_int) } == -1 {
            // SAFETY: _exit is async-signal-safe.
            unsafe { libc::_exit(126) };
        }
    }
    if let Some(maps) = &p.userns {
        // SAFETY: we are the cloned child, after the dup2s (the failure report needs fds 2
        // and 4).
        unsafe { child_write_id_maps(maps) };
    }
    if let Some(netns) = &p.netns {
        // SAFETY: plain syscalls on an fd this process owns; they change only this task's
        // network namespace. A namespace that cannot be entered is replaced by a new one, as
        // the clone would have made.
        unsafe {
            if libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) == -1
                && libc::unshare(libc::CLONE_NEWNET) == -1
            {
                let errno = io::Error::last_os_error().raw_os_error().unwrap_or(0);
                child_fail(b"sandboxd-init: unshare(CLONE_NEWNET): errno ", errno);
            }
        }
    }
    // Signals stay blocked through the execve (see the module docs): the init resets them.
    let envp = &p.envp_ptrs[usize::from(!born_in_cgroup)];
    // SAFETY: path, argv and envp were built before the clone and are NUL-terminated
    // strings in NULL-terminated arrays.
    unsafe { libc::execve(p.path.as_ptr(), p.argv_ptrs.as_ptr(), envp.as_ptr()) };
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(127) }
}

/// Start the init. Returns its pid (in the host's pid namespace) and a pidfd for it.
///
/// First `clone3` with `CLONE_INTO_CGROUP | CLONE_PIDFD`, so the init is born in its v2
/// group and the pidfd comes atomically, sharing the server's memory until its `execve` where
/// it can (see the module docs); on any error (an old kernel, a v1-only host) a plain `clone`,
/// and the init joins the v2 group itself.
pub(crate) fn clone_init(p: &Prepared) -> io::Result<(libc::pid_t, OwnedFd)> {
    // Inherited by the child, which must run no signal handler of the server; restored here
    // when the clone returns.
    let _blocked = sys::AllSignalsBlocked::new();
    if let Some(cgroup) = &p.cgroup {
        let mut pidfd: libc::c_int = -1;
        let mut args = CloneArgs {
            flags: p.clone_flags() as u64 | libc::CLONE_PIDFD as u64 | CLONE_INTO_CGROUP,
            pidfd: &mut pidfd as *mut libc::c_int as u64,
            exit_signal: libc::SIGCHLD as u64,
            cgroup: cgroup.as_raw_fd() as u64,
            ..CloneArgs::default()
        };
        let ret = if p.userns.is_none() && VFORK_SUPPORTED {
            let stack = StackLease::take()?;
            args.flags |= (libc::CLONE_VM | libc::CLONE_VFORK) as u64;
            args.stack = stack.base() as u64;
            args.stack_size = stack.len() as u64;
            // SAFETY: `args` is a valid clone_args whose stack is a mapping of ours that no
            // other thread uses (the lease) and that outlives the child's use of it:
            // CLONE_VFORK returns only once the child has exec'd or exited. `child_main` only
            // makes async-signal-safe calls, on that stack, with every signal blocked.
            unsafe { clone3_on_stack(&args, child_main, p as *const Prepared as *mut _) }
        } else {
            // SAFETY: clone3 without CLONE_VM and with no stack behaves like fork: the child
            // gets a copy of the address space and continues here on its own copy of this
            // stack. `args` is a valid clone_args of the size passed. The child branch only
            // calls `child_exec`, which is async-signal-safe.
            let ret = unsafe {
                libc::syscall(
                    libc::SYS_clone3,
                    &args as *const CloneArgs,
                    std::mem::size_of::<CloneArgs>(),
                )
            };
            match ret {
                // SAFETY: we are the freshly cloned child.
                0 => unsafe { child_exec(p, true) },
                -1 => {
                    -(io::Error::last_os_error()
                        .raw_os_error()
                        .unwrap_or(libc::ENOSYS) as libc::c_long)
                }
                pid => pid,
            }
        };
        if ret > 0 {
            // SAFETY: CLONE_PIDFD stored a new fd that nothing else owns.
            let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
            return Ok((ret as libc::pid_t, pidfd));
        }
    }
    let flags = (p.clone_flags() | libc::SIGCHLD) as libc::c_ulong;
    // SAFETY: clone without CLONE_VM and with a null stack behaves like fork (see above).
    let ret = unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) };
    let pid = match ret {
        -1 => return Err(io::Error::last_os_error()),
        // SAFETY: we are the freshly cloned child.
        0 => unsafe { child_exec(p, false) },
        pid => pid as libc::pid_t,
    };
    match sys::pidfd_open(pid) {
        Ok(fd) => Ok((pid, fd)),
        Err(e) => {
            let _ = sys::kill(pid, libc::SIGKILL);
            let mut status = 0;
            // SAFETY: reaping our own child, just killed.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            Err(e)
        }
    }
}

/// The child of [`clone3_on_stack`]: `arg` is the parent's [`Prepared`], readable because
/// the parent sleeps in the clone (CLONE_VFORK) and the memory is shared (CLONE_VM).
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` points to the `Prepared` that `clone_init` holds borrowed across the
    // clone; we are the cloned child, which is what `child_exec` is for.
    unsafe { child_exec(&*(arg as *const Prepared), true) }
}

/// Whether [`clone3_on_stack`] exists on this architecture.
const VFORK_SUPPORTED: bool = cfg!(target_arch = "x86_64");

/// `clone3(args)`, the child starting in `child(arg)` on the stack `args` names, and exiting
/// with its return value should it return. Returns the child's pid, or `-errno`.
///
/// # Safety
///
/// `args` must be a valid `clone_args` with a stack the child may use for as long as it runs;
/// with `CLONE_VM`, `child` shares the caller's memory and must keep to what a vfork child
/// may do.
#[cfg(target_arch = "x86_64")]
unsafe fn clone3_on_stack(
    args: &CloneArgs,
    child: extern "C" fn(*mut libc::c_void) -> libc::c_int,
    arg: *mut libc::c_void,
) -> libc::c_long {
    let ret: libc::c_long;
    // SAFETY: the caller vouches for `args` and `child`. In the parent the `syscall` returns
    // with only rax, rcx and r11 changed (declared). The child starts at the same point with
    // rax = 0 and the kernel's stack pointer at the top of its own, 16-byte aligned stack
    // (the kernel adds the size to the base); r12 and r13 were copied with the registers, so
    // it calls `child(arg)` there, and exits with the result if it ever returns. It never
    // reaches the Rust code after the asm block, so nothing it does touches this frame.
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "xor ebp, ebp",
            "mov rdi, r13",
            "call r12",
            "mov edi, eax",
            "mov eax, {exit}",
            "syscall",
            "ud2",
            "2:",
            exit = const libc::SYS_exit,
            inlateout("rax") libc::SYS_clone3 => ret,
            in("rdi") args as *const CloneArgs,
            in("rsi") std::mem::size_of::<CloneArgs>(),
            in("r12") child,
            in("r13") arg,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn clone3_on_stack(
    _args: &CloneArgs,
    _child: extern "C" fn(*mut libc::c_void) -> libc::c_int,
    _arg: *mut libc::c_void,
) -> libc::c_long {
    unreachable!("VFORK_SUPPORTED is false on this architecture")
}

/// Stacks for vfork children, kept for the next create: mapping and unmapping one per create
/// would cost a TLB shoot-down across the server's threads each time.
static STACKS: std::sync::Mutex<Vec<sys::ChildStack>> = std::sync::Mutex::new(Vec::new());

/// A stack taken from [`STACKS`] (or made) for one clone, given back on drop.
struct StackLease(Option<sys::ChildStack>);

impl StackLease {
    /// Usable size: the child runs `child_exec` and the C library's thin syscall wrappers.
    const SIZE: usize = 64 * 1024;

    fn take() -> io::Result<StackLease> {
        let kept = STACKS.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let stack = match kept {
            Some(s) => s,
            None => sys::ChildStack::new(Self::SIZE)?,
        };
        Ok(StackLease(Some(stack)))
    }

    fn base(&self) -> *mut libc::c_void {
        self.0.as_ref().expect("a leased stack").base()
    }

    fn len(&self) -> usize {
        self.0.as_ref().expect("a leased stack").len()
    }
}

impl Drop for StackLease {
    fn drop(&mut self) {
        if let Some(stack) = self.0.take() {
            STACKS.lock().unwrap_or_else(|p| p.into_inner()).push(stack);
        }
    }
}

/// How the init's setup ended, as seen through the status pipe.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum InitOutcome {
    /// The pipe closed without a message: the agent was exec'd.
    Started,
    /// The init wrote an error message (and exits).
    Failed(String),
    /// Nothing happened within the timeout.
    TimedOut,
}

/// Read the status pipe until it closes or `timeout` passes.
pub(crate) fn await_init(status: &OwnedFd, timeout: Duration) -> io::Result<InitOutcome> {
    let deadline = Instant::now() + timeout;
    let mut message = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(InitOutcome::TimedOut);
        }
        if !sys::poll_readable(
            status.as_raw_fd(),
            left.as_millis().clamp(1, i32::MAX as u128) as i32,
        )? {
            continue;
        }
        let mut buf = [0u8; 4096];
        // SAFETY: the pointer and length describe `buf`.
        let n = unsafe { libc::read(status.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        match n {
            -1 => {
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted {
                    return Err(err);
                }
            }
            0 => break,
            n => message.extend_from_slice(&buf[..n as usize]),
        }
    }
    if message.is_empty() {
        Ok(InitOutcome::Started)
    } else {
        let text = String::from_utf8_lossy(&message);
        Ok(InitOutcome::Failed(
            text.trim()
                .trim_start_matches("sandboxd-init: ")
                .to_string(),
        ))
    }
}
