//! Thin wrappers around the system calls this crate needs.
//!
//! Each wrapper does one call, turns `-1`/`errno` into [`io::Error`] and keeps the `unsafe`
//! in one place, so the logic in `init.rs`, `spawn.rs` and `backend.rs` reads as a list of
//! steps. Constants that `libc` lacks are defined here with their kernel header names.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// `MOVE_MOUNT_F_EMPTY_PATH` from `<linux/mount.h>`.
pub const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x0000_0004;
/// `MOUNT_ATTR_RDONLY` from `<linux/mount.h>`.
pub const MOUNT_ATTR_RDONLY: u64 = 0x0000_0001;
/// `MOUNT_ATTR_NOSUID` from `<linux/mount.h>`.
pub const MOUNT_ATTR_NOSUID: u64 = 0x0000_0002;
/// `MOUNT_ATTR_NODEV` from `<linux/mount.h>`.
pub const MOUNT_ATTR_NODEV: u64 = 0x0000_0004;
/// `MOUNT_ATTR_NOEXEC` from `<linux/mount.h>`.
pub const MOUNT_ATTR_NOEXEC: u64 = 0x0000_0008;

/// `FSOPEN_CLOEXEC` from `<linux/mount.h>`.
const FSOPEN_CLOEXEC: libc::c_uint = 0x0000_0001;
/// `FSMOUNT_CLOEXEC` from `<linux/mount.h>`.
const FSMOUNT_CLOEXEC: libc::c_uint = 0x0000_0001;
/// `FSCONFIG_SET_FLAG` from `<linux/mount.h>` (`enum fsconfig_command`).
const FSCONFIG_SET_FLAG: libc::c_uint = 0;
/// `FSCONFIG_SET_STRING` from `<linux/mount.h>` (`enum fsconfig_command`).
const FSCONFIG_SET_STRING: libc::c_uint = 1;
/// `FSCONFIG_CMD_CREATE` from `<linux/mount.h>` (`enum fsconfig_command`).
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;

/// `struct mount_attr` from `<linux/mount.h>`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn check_long(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// A path as a C string; paths with NUL bytes cannot name a file.
pub fn cpath(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

fn cstr_opt(s: Option<&str>) -> io::Result<Option<CString>> {
    s.map(|s| {
        CString::new(s)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "string contains a NUL byte"))
    })
    .transpose()
}

/// `mount(2)`.
pub fn mount(
    source: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let source = cstr_opt(source)?;
    let fstype = cstr_opt(fstype)?;
    let data = cstr_opt(data)?;
    let target = cpath(target)?;
    let ptr = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: every pointer is either null (allowed by mount(2) for source, fstype and data)
    // or points to a NUL-terminated string that outlives the call.
    let ret = unsafe {
        libc::mount(
            ptr(&source),
            target.as_ptr(),
            ptr(&fstype),
            flags,
            ptr(&data).cast(),
        )
    };
    check(ret).map(drop)
}

/// `umount2(2)`.
pub fn umount2(target: &Path, flags: libc::c_int) -> io::Result<()> {
    let target = cpath(target)?;
    // SAFETY: `target` is a valid NUL-terminated string.
    check(unsafe { libc::umount2(target.as_ptr(), flags) }).map(drop)
}

/// `pivot_root(2)`, which libc does not wrap.
pub fn pivot_root(new_root: &Path, put_old: &Path) -> io::Result<()> {
    let new_root = cpath(new_root)?;
    let put_old = cpath(put_old)?;
    // SAFETY: both arguments are valid NUL-terminated strings.
    check_long(unsafe { libc::syscall(libc::SYS_pivot_root, new_root.as_ptr(), put_old.as_ptr()) })
        .map(drop)
}

/// `unshare(2)`.
pub fn unshare(flags: libc::c_int) -> io::Result<()> {
    // SAFETY: unshare takes no pointers.
    check(unsafe { libc::unshare(flags) }).map(drop)
}

/// `sethostname(2)`.
pub fn sethostname(name: &str) -> io::Result<()> {
    // SAFETY: the pointer and length describe `name`'s bytes, which outlive the call.
    check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) }).map(drop)
}

/// `open_tree(2)`: with `OPEN_TREE_CLONE`, a detached copy of the mount at `path`.
pub fn open_tree(path: &Path, flags: libc::c_uint) -> io::Result<OwnedFd> {
    let path = cpath(path)?;
    // SAFETY: `path` is a valid NUL-terminated string; the call returns a new fd or -1.
    let fd = check_long(unsafe {
        libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, path.as_ptr(), flags)
    })?;
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `mount_setattr(2)` on the mount tree an `open_tree` fd refers to.
pub fn mount_setattr(fd: &OwnedFd, recursive: bool, attr_set: u64) -> io::Result<()> {
    let mut attr = MountAttr {
        attr_set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let flags = libc::AT_EMPTY_PATH | if recursive { libc::AT_RECURSIVE } else { 0 };
    // SAFETY: an empty path with AT_EMPTY_PATH means "the fd itself"; `attr` is a valid
    // `struct mount_attr` whose size we pass.
    check_long(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            flags,
            &mut attr as *mut MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    })
    .map(drop)
}

/// A new instance of the file system `fstype` as a detached mount (`fsopen`, `fsconfig` with
/// the source name `fstype`, as `mount -t <fstype> <fstype>` shows it, and each of `flags`
/// set, `FSCONFIG_CMD_CREATE`, `fsmount` with the `MOUNT_ATTR_*` bits `attr`), to be attached
/// later with [`move_mount`].
pub fn fs_mount_detached(fstype: &CStr, flags: &[&CStr], attr: u64) -> io::Result<OwnedFd> {
    // SAFETY: `fstype` is a valid NUL-terminated string; fsopen returns a new fd or -1.
    let fs =
        check_long(unsafe { libc::syscall(libc::SYS_fsopen, fstype.as_ptr(), FSOPEN_CLOEXEC) })?;
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    let fs = unsafe { OwnedFd::from_raw_fd(fs as RawFd) };
    // SAFETY: FSCONFIG_SET_STRING takes a key and a value, both valid NUL-terminated strings,
    // and aux 0.
    check_long(unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_SET_STRING,
            c"source".as_ptr(),
            fstype.as_ptr(),
            0,
        )
    })?;
    for flag in flags {
        // SAFETY: FSCONFIG_SET_FLAG takes a key string, a null value and aux 0.
        check_long(unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                fs.as_raw_fd(),
                FSCONFIG_SET_FLAG,
                flag.as_ptr(),
                std::ptr::null::<libc::c_void>(),
                0,
            )
        })?;
    }
    // SAFETY: FSCONFIG_CMD_CREATE takes null key and value and aux 0.
    check_long(unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_void>(),
            0,
        )
    })?;
    // SAFETY: fsmount takes integer arguments only and returns a new fd or -1.
    let mnt = check_long(unsafe {
        libc::syscall(
            libc::SYS_fsmount,
            fs.as_raw_fd(),
            FSMOUNT_CLOEXEC,
            attr as libc::c_uint,
        )
    })?;
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(mnt as RawFd) })
}

/// `move_mount(2)`: attach the detached tree `fd` at `target`.
pub fn move_mount(fd: &OwnedFd, target: &Path) -> io::Result<()> {
    let target = cpath(target)?;
    // SAFETY: both strings are valid; an empty from-path with MOVE_MOUNT_F_EMPTY_PATH means
    // "the fd itself".
    check_long(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    })
    .map(drop)
}

/// Open a directory as an `O_PATH` fd (for `CLONE_INTO_CGROUP`).
pub fn open_dir_path(path: &Path) -> io::Result<OwnedFd> {
    let c = cpath(path)?;
    // SAFETY: `c` is a valid NUL-terminated string; open returns a new fd or -1.
    let fd = check(unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `fstat(2)`.
pub fn fstat(fd: RawFd) -> io::Result<libc::stat> {
    // SAFETY: an all-zero `stat` is a valid value of this plain C struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid, writable `struct stat`.
    check(unsafe { libc::fstat(fd, &mut st) })?;
    Ok(st)
}

/// Set or clear `FD_CLOEXEC`.
pub fn set_cloexec(fd: RawFd, on: bool) -> io::Result<()> {
    let flags = if on { libc::FD_CLOEXEC } else { 0 };
    // SAFETY: F_SETFD takes an int argument and no pointers.
    check(unsafe { libc::fcntl(fd, libc::F_SETFD, flags) }).map(drop)
}

/// Duplicate `fd` to the lowest free number `>= min`, with `FD_CLOEXEC`.
pub fn dup_cloexec_above(fd: RawFd, min: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC takes an int argument and returns a new fd or -1.
    let new = check(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, min) })?;
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// `close_range(2)` on `[first, u32::MAX]`.
pub fn close_from(first: u32) -> io::Result<()> {
    // SAFETY: close_range takes no pointers; closing fds this process owns is the intent.
    check_long(unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, 0) }).map(drop)
}

/// `execveat(fd, "", argv, envp, AT_EMPTY_PATH)`; returns only on failure.
pub fn execveat_fd(fd: RawFd, argv: &[CString], envp: &[CString]) -> io::Error {
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let mut envp_ptrs: Vec<*const libc::c_char> = envp.iter().map(|e| e.as_ptr()).collect();
    envp_ptrs.push(std::ptr::null());
    // SAFETY: argv and envp are NULL-terminated arrays of pointers to NUL-terminated strings
    // that live until the call returns (it only returns on failure).
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            fd,
            c"".as_ptr(),
            argv_ptrs.as_ptr(),
            envp_ptrs.as_ptr(),
            libc::AT_EMPTY_PATH,
        );
    }
    io::Error::last_os_error()
}

/// `prctl(2)` with integer arguments.
pub fn prctl(option: libc::c_int, arg2: libc::c_ulong) -> io::Result<libc::c_int> {
    // SAFETY: the options used by this crate take integer arguments only.
    check(unsafe {
        libc::prctl(
            option,
            arg2,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    })
}

/// `prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)`.
pub fn clear_ambient_caps() -> io::Result<()> {
    // SAFETY: PR_CAP_AMBIENT takes integer arguments only.
    check(unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    })
    .map(drop)
}

/// `capset(2)` with empty effective, permitted and inheritable sets.
pub fn capset_empty() -> io::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    let mut header = Header {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: header and the two data structs have the layout capset(2) expects for
    // version 3 and outlive the call.
    check_long(unsafe {
        libc::syscall(libc::SYS_capset, &mut header as *mut Header, data.as_ptr())
    })
    .map(drop)
}

/// `pidfd_open(2)`.
pub fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes no pointers and returns a new fd or -1.
    let fd = check_long(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })?;
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `pidfd_send_signal(2)`: signal the exact process the pidfd refers to, never a recycled pid.
pub fn pidfd_send_signal(pidfd: RawFd, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: a null siginfo is allowed and means "as if sent by kill(2)".
    check_long(unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd,
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    })
    .map(drop)
}

/// Whether an fd is readable right now (for a pidfd: whether the process has exited).
pub fn poll_readable(fd: RawFd, timeout_ms: libc::c_int) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: `pfd` is one valid pollfd.
        let ret = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        if ret == -1 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        return Ok(ret > 0);
    }
}

/// `waitpid(pid, WNOHANG)`: `Some(status)` once the child has been reaped.
pub fn waitpid_nohang(pid: libc::pid_t) -> io::Result<Option<libc::c_int>> {
    let mut status = 0;
    // SAFETY: `status` is a valid int to write to.
    let ret = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    match ret {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(None),
        _ => Ok(Some(status)),
    }
}

/// `kill(2)`.
pub fn kill(pid: libc::pid_t, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: kill takes no pointers.
    check(unsafe { libc::kill(pid, signal) }).map(drop)
}

/// `memfd_create(2)` with `MFD_CLOEXEC | MFD_ALLOW_SEALING`, and `MFD_EXEC` where the kernel
/// knows it (so that `vm.memfd_noexec = 1` does not make the copy non-executable).
pub fn memfd_create(name: &CStr) -> io::Result<OwnedFd> {
    let base = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    // SAFETY: `name` is a valid NUL-terminated string.
    let mut fd = unsafe { libc::memfd_create(name.as_ptr(), base | libc::MFD_EXEC) };
    if fd == -1 && io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
        // Kernels before 6.3 reject MFD_EXEC; their memfds are executable anyway.
        // SAFETY: as above.
        fd = unsafe { libc::memfd_create(name.as_ptr(), base) };
    }
    let fd = check(fd)?;
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Seal a memfd (that nothing has mapped) against any further change.
///
/// `F_SEAL_WRITE` first waits for every page of the file to lose the extra references others
/// hold on it, and gives up with `EBUSY` after a while: pages just written can sit in another
/// CPU's batch of pages on their way to the LRU lists, holding one, until that CPU drains it.
/// Then `F_SEAL_FUTURE_WRITE` seals it as well for a file nobody has mapped: no write and no
/// writable mapping can be made any more, and there is none already.
pub fn seal_all(fd: RawFd) -> io::Result<()> {
    let fixed = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW;
    // SAFETY: F_ADD_SEALS takes an int argument and no pointers.
    let sealed = check(unsafe {
        libc::fcntl(
            fd,
            libc::F_ADD_SEALS,
            fixed | libc::F_SEAL_WRITE | libc::F_SEAL_SEAL,
        )
    });
    match sealed {
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
            let seals = fixed | libc::F_SEAL_FUTURE_WRITE | libc::F_SEAL_SEAL;
            // SAFETY: as above.
            check(unsafe { libc::fcntl(fd, libc::F_ADD_SEALS, seals) }).map(drop)
        }
        r => r.map(drop),
    }
}

/// A pipe whose both ends are `O_CLOEXEC`: `(read, write)`.
pub fn pipe_cloexec() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two fds pipe2 writes.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: the kernel just returned these fds to us; nothing else owns them.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Bring a network interface up (`SIOCSIFFLAGS` with `IFF_UP`).
pub fn interface_up(name: &str) -> io::Result<()> {
    // SAFETY: socket takes no pointers and returns a new fd or -1.
    let sock =
        check(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    let sock = unsafe { OwnedFd::from_raw_fd(sock) };
    // SAFETY: an all-zero ifreq is a valid value of this plain C struct.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= req.ifr_name.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "interface name too long",
        ));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: `req` is a valid ifreq naming the interface; SIOCGIFFLAGS fills ifru_flags.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut req) })?;
    // SAFETY: ifru_flags is the union member SIOCGIFFLAGS just wrote.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: `req` is a valid ifreq with the flags to set.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as _, &req) }).map(drop)
}

/// Reset every catchable signal to its default action and unblock all signals, so that the
/// agent starts clean whatever the server had ignored or blocked.
pub fn reset_signals() -> io::Result<()> {
    for sig in 1..=libc::SIGRTMAX() {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: setting SIG_DFL installs no handler code; errors (EINVAL for signals
        // reserved by libc) are harmless and ignored.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
    // SAFETY: an all-zero sigset is a valid value; sigemptyset initialises it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t.
    unsafe { libc::sigemptyset(&mut set) };
    // SAFETY: `set` is a valid sigset_t; the old mask is not wanted.
    let ret = unsafe { libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) };
    check(ret).map(drop)
}

/// Write all of `buf` to a raw fd, ignoring errors (used to report failures on the status pipe
/// and stderr, where there is nobody left to tell about a failed write).
pub fn write_all_raw(fd: RawFd, mut buf: &[u8]) {
    while !buf.is_empty() {
        // SAFETY: the pointer and length describe `buf`.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n <= 0 {
            if n == -1 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        buf = &buf[n as usize..];
    }
}

/// Effective uid.
pub fn geteuid() -> libc::uid_t {
    // SAFETY: geteuid cannot fail and takes no arguments.
    unsafe { libc::geteuid() }
}

/// Effective gid.
pub fn getegid() -> libc::gid_t {
    // SAFETY: getegid cannot fail and takes no arguments.
    unsafe { libc::getegid() }
}

/// Whether this process may access `path` in `mode` (`libc::W_OK`, ...), judged by its
/// *effective* ids (`faccessat(AT_EACCESS)`), as an open would be.
pub fn access_effective(path: &Path, mode: libc::c_int) -> bool {
    let Ok(c) = cpath(path) else {
        return false;
    };
    // SAFETY: `c` is a valid NUL-terminated string; faccessat takes no other pointers.
    unsafe { libc::faccessat(libc::AT_FDCWD, c.as_ptr(), mode, libc::AT_EACCESS) == 0 }
}

/// Check that this process may create a user namespace: `clone(CLONE_NEWUSER)` a child that
/// exits at once, and reap it.
pub fn probe_user_namespace() -> io::Result<()> {
    let flags = (libc::CLONE_NEWUSER | libc::SIGCHLD) as libc::c_ulong;
    // SAFETY: clone without CLONE_VM and with a null stack behaves like fork; the child only
    // calls _exit, which is async-signal-safe, so a multi-threaded parent is no problem.
    let ret = unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) };
    match ret {
        -1 => Err(io::Error::last_os_error()),
        // SAFETY: we are the freshly cloned child; _exit ends it without running any code of
        // the parent's (no atexit handlers, no buffered output).
        0 => unsafe { libc::_exit(0) },
        pid => {
            let mut status = 0;
            // SAFETY: reaping our own child; `status` is a valid int to write to.
            unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) };
            Ok(())
        }
    }
}

/// This process's pid.
pub fn getpid() -> libc::pid_t {
    // SAFETY: getpid cannot fail and takes no arguments.
    unsafe { libc::getpid() }
}

/// A stack for a child that shares the server's memory until it execs (see
/// `spawn::clone_init`), with an inaccessible guard page at its low end so that an overflow
/// faults instead of writing over a neighbouring mapping.
pub struct ChildStack {
    base: *mut libc::c_void,
    len: usize,
}

// SAFETY: a `ChildStack` is the sole owner of its mapping, which has no tie to the thread that
// made it; using or unmapping it from another thread is sound.
unsafe impl Send for ChildStack {}

impl ChildStack {
    const GUARD: usize = 4096;

    /// A new mapping of `size` usable bytes plus the guard page.
    pub fn new(size: usize) -> io::Result<ChildStack> {
        let len = size + Self::GUARD;
        // SAFETY: a fresh private anonymous mapping at an address the kernel picks; it aliases
        // nothing.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let stack = ChildStack { base, len };
        // SAFETY: the lowest page lies in the mapping just made, owned by `stack`.
        check(unsafe { libc::mprotect(base, Self::GUARD, libc::PROT_NONE) })?;
        Ok(stack)
    }

    /// The lowest address of the mapping (`clone_args.stack`).
    pub fn base(&self) -> *mut libc::c_void {
        self.base
    }

    /// Its whole length (`clone_args.stack_size`: the child starts at `base + len`).
    pub fn len(&self) -> usize {
        self.len
    }
}

impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: the mapping was made by `new` and is unmapped once, when no child runs on it.
        unsafe { libc::munmap(self.base, self.len) };
    }
}

/// Every signal blocked in the calling thread until dropped, which restores the previous
/// mask. The raw system call, so that the C library's internal signals are blocked too.
pub struct AllSignalsBlocked {
    old: u64,
}

/// The kernel's signal set size on Linux (64 signals).
const KERNEL_SIGSET_SIZE: usize = 8;

impl AllSignalsBlocked {
    /// Block them all.
    pub fn new() -> AllSignalsBlocked {
        let all: u64 = !0;
        let mut old: u64 = 0;
        // SAFETY: both pointers refer to live 8-byte values, the kernel's sigset size; the
        // kernel silently leaves SIGKILL and SIGSTOP unblocked.
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigprocmask,
                libc::SIG_SETMASK,
                &all as *const u64,
                &mut old as *mut u64,
                KERNEL_SIGSET_SIZE,
            )
        };
        AllSignalsBlocked { old }
    }
}

impl Drop for AllSignalsBlocked {
    fn drop(&mut self) {
        // SAFETY: `old` is the live 8-byte mask saved by `new`; no old mask is asked for.
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigprocmask,
                libc::SIG_SETMASK,
                &self.old as *const u64,
                std::ptr::null_mut::<u64>(),
                KERNEL_SIGSET_SIZE,
            )
        };
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn seals(fd: RawFd) -> libc::c_int {
        // SAFETY: F_GET_SEALS takes no argument.
        unsafe { libc::fcntl(fd, libc::F_GET_SEALS) }
    }

    #[test]
    fn a_sealed_memfd_takes_no_write() {
        let mut f = std::fs::File::from(memfd_create(c"seal-test").unwrap());
        f.write_all(b"\x7fELF and the rest").unwrap();
        seal_all(f.as_raw_fd()).unwrap();
        let s = seals(f.as_raw_fd());
        assert_ne!(s & libc::F_SEAL_WRITE, 0, "{s:#x}");
        assert_ne!(s & libc::F_SEAL_SEAL, 0, "{s:#x}");
        assert!(f.write_all(b"x").is_err());
    }

    /// `F_SEAL_WRITE` refused (here by a writable shared mapping, which makes it `EBUSY` as
    /// a page still held elsewhere does): the memfd is sealed with `F_SEAL_FUTURE_WRITE`.
    #[test]
    fn a_busy_memfd_is_sealed_against_future_writes() {
        let mut f = std::fs::File::from(memfd_create(c"seal-test").unwrap());
        f.write_all(&[7u8; 4096]).unwrap();
        // SAFETY: a fresh shared mapping of 4096 bytes of a file this test owns; unmapped
        // below, and never used through a pointer.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        assert_ne!(map, libc::MAP_FAILED);
        seal_all(f.as_raw_fd()).unwrap();
        // SAFETY: the mapping made above, of that length.
        unsafe { libc::munmap(map, 4096) };
        let s = seals(f.as_raw_fd());
        assert_eq!(s & libc::F_SEAL_WRITE, 0, "{s:#x}");
        assert_ne!(s & libc::F_SEAL_FUTURE_WRITE, 0, "{s:#x}");
        assert_ne!(s & libc::F_SEAL_SEAL, 0, "{s:#x}");
        assert!(f.write_all(b"x").is_err());
    }
}
