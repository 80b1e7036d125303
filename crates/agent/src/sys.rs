//! Safe wrappers around the Linux system calls the agent needs and `std` does not expose.
//!
//! Every `unsafe` block of the crate that talks to the kernel directly lives here (plus the
//! vfork child in [`crate::process`] and the signal setup in [`crate::init`]), so that the
//! rest of the agent works with `OwnedFd`s, `CStr`s and `io::Result`s.

use std::ffi::{CStr, CString, OsString};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStringExt;
use std::time::Duration;

/// `RESOLVE_BENEATH`: the kernel refuses any resolution that leaves the starting directory,
/// whether through `..`, an absolute path or an (absolute or relative) symlink.
pub const RESOLVE_BENEATH: u64 = 0x08;
/// `RESOLVE_NO_MAGICLINKS`: refuse `/proc/<pid>/fd/*`-style links, which would otherwise let a
/// path jump to any open file regardless of `RESOLVE_BENEATH`.
pub const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
/// `RESOLVE_NO_SYMLINKS`: refuse every symlink on the way.
pub const RESOLVE_NO_SYMLINKS: u64 = 0x04;

/// The kernel's `struct open_how` (linux/openat2.h). Declared here because the `libc` crate's
/// version is `#[non_exhaustive]` and cannot be built with a literal; the layout is fixed ABI
/// (three `u64`s, extended only by growing the struct, which the size argument tells).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// Turn a `-1` return into the thread's `errno`.
fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Retry a system call interrupted by a signal.
fn retry<T>(mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// Convert a path component or relative path to a C string; interior NULs cannot name a file.
pub fn cstring(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

/// Set once `openat2` answered `ENOSYS`: later opens go straight to user space.
static NO_OPENAT2: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `openat2(2)`: open `path` relative to `dir` with the given `resolve` restrictions.
/// `O_CLOEXEC` is always added. `EAGAIN`, which the kernel returns when a concurrent rename
/// prevented it from proving that `..` stayed beneath the root, is retried a few times.
/// Where the kernel has no `openat2` (gVisor, Linux before 5.6), the same resolution is done
/// in user space ([`crate::beneath`]).
pub fn openat2(
    dir: BorrowedFd<'_>,
    path: &CStr,
    flags: libc::c_int,
    mode: u32,
    resolve: u64,
) -> io::Result<OwnedFd> {
    if NO_OPENAT2.load(std::sync::atomic::Ordering::Relaxed) {
        return crate::beneath::openat_beneath(dir, path, flags, mode, resolve);
    }
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: u64::from(mode),
        resolve,
    };
    let mut again = 0;
    loop {
        // SAFETY: `path` is a valid NUL-terminated string and `how` a live, correctly laid out
        // `open_how` whose size we pass; the kernel only reads them during the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.as_raw_fd(),
                path.as_ptr(),
                &how as *const OpenHow,
                std::mem::size_of::<OpenHow>(),
            )
        };
        if r >= 0 {
            // SAFETY: a non-negative return of openat2 is a new descriptor that nothing else
            // owns.
            return Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) });
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) if again < 16 => again += 1,
            Some(libc::ENOSYS) => {
                NO_OPENAT2.store(true, std::sync::atomic::Ordering::Relaxed);
                return crate::beneath::openat_beneath(dir, path, flags, mode, resolve);
            }
            _ => return Err(e),
        }
    }
}

/// Open a directory by absolute path (trusted configuration, not confined) as an `O_PATH`
/// handle.
pub fn open_dir_path(path: &std::path::Path) -> io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    let fd = retry(|| {
        // SAFETY: `c` is NUL-terminated; the returned descriptor, if any, is owned by us.
        cvt(unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        })
    })?;
    // SAFETY: `fd` was just returned by open and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `fstatat(2)` of `name` in `dir`; `AT_SYMLINK_NOFOLLOW` so that a final symlink is described,
/// not followed. An empty `name` describes `dir` itself.
pub fn fstatat(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<libc::stat> {
    let mut st = MaybeUninit::<libc::stat>::uninit();
    let flags = if name.to_bytes().is_empty() {
        libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW
    } else {
        libc::AT_SYMLINK_NOFOLLOW
    };
    retry(|| {
        // SAFETY: `st` points to writable memory of the right size and `name` is NUL-terminated.
        cvt(unsafe { libc::fstatat(dir.as_raw_fd(), name.as_ptr(), st.as_mut_ptr(), flags) })
    })?;
    // SAFETY: fstatat succeeded, so it filled the whole struct.
    Ok(unsafe { st.assume_init() })
}

/// `fstat(2)`.
pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    fstatat(fd, c"")
}

/// `mkdirat(2)`.
pub fn mkdirat(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated; the call only reads it.
    retry(|| cvt(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode as libc::mode_t) }))?;
    Ok(())
}

/// `unlinkat(2)`; `dir_flag` removes a directory (`AT_REMOVEDIR`).
pub fn unlinkat(dir: BorrowedFd<'_>, name: &CStr, dir_flag: bool) -> io::Result<()> {
    let flags = if dir_flag { libc::AT_REMOVEDIR } else { 0 };
    // SAFETY: `name` is NUL-terminated; the call only reads it.
    retry(|| cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) }))?;
    Ok(())
}

/// An unnamed regular file in directory `dir` (`O_TMPFILE`, open for reading and writing),
/// or `None` where the file system or the kernel cannot make one.
pub fn open_tmpfile(dir: BorrowedFd<'_>, mode: u32) -> io::Result<Option<OwnedFd>> {
    let flags = libc::O_TMPFILE | libc::O_RDWR | libc::O_CLOEXEC | libc::O_NOCTTY;
    // SAFETY: "." is NUL-terminated; the call only reads it.
    match retry(|| cvt(unsafe { libc::openat(dir.as_raw_fd(), c".".as_ptr(), flags, mode) })) {
        // SAFETY: a non-negative return of openat is a new descriptor that nothing else owns.
        Ok(fd) => Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) })),
        // Not supported here (EISDIR: a kernel that reads O_TMPFILE as O_DIRECTORY).
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL | libc::ENOSYS)
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Give the unnamed file `file` (from [`open_tmpfile`]) the name `name` in `dir`. Through
/// `/proc/self/fd`, which needs no privilege, else with `AT_EMPTY_PATH`, which needs
/// `CAP_DAC_READ_SEARCH`.
pub fn link_tmpfile(file: BorrowedFd<'_>, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    let proc = CString::new(format!("/proc/self/fd/{}", file.as_raw_fd())).expect("no NUL");
    // SAFETY: both paths are NUL-terminated; the call only reads them.
    let by_proc = retry(|| {
        cvt(unsafe {
            libc::linkat(
                libc::AT_FDCWD,
                proc.as_ptr(),
                dir.as_raw_fd(),
                name.as_ptr(),
                libc::AT_SYMLINK_FOLLOW,
            )
        })
    });
    match by_proc {
        Ok(_) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Err(e),
        Err(_) => {
            // SAFETY: as above; the empty path is NUL-terminated.
            retry(|| {
                cvt(unsafe {
                    libc::linkat(
                        file.as_raw_fd(),
                        c"".as_ptr(),
                        dir.as_raw_fd(),
                        name.as_ptr(),
                        libc::AT_EMPTY_PATH,
                    )
                })
            })?;
            Ok(())
        }
    }
}

/// `renameat(2)`.
pub fn renameat(
    from_dir: BorrowedFd<'_>,
    from: &CStr,
    to_dir: BorrowedFd<'_>,
    to: &CStr,
) -> io::Result<()> {
    retry(|| {
        // SAFETY: both names are NUL-terminated; the call only reads them.
        cvt(unsafe {
            libc::renameat(
                from_dir.as_raw_fd(),
                from.as_ptr(),
                to_dir.as_raw_fd(),
                to.as_ptr(),
            )
        })
    })?;
    Ok(())
}

/// `readlinkat(2)`, growing the buffer until the whole target fits.
pub fn readlinkat(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<OsString> {
    let mut buf: Vec<u8> = Vec::with_capacity(256);
    loop {
        // SAFETY: the kernel writes at most `capacity` bytes into the vector's spare capacity.
        let n = unsafe {
            libc::readlinkat(
                dir.as_raw_fd(),
                name.as_ptr(),
                buf.as_mut_ptr() as *mut libc::c_char,
                buf.capacity(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let n = n as usize;
        if n < buf.capacity() {
            // SAFETY: readlinkat initialised exactly `n` bytes.
            unsafe { buf.set_len(n) };
            return Ok(OsString::from_vec(buf));
        }
        // The target may have been truncated: retry with more room.
        buf.reserve(buf.capacity() * 2);
    }
}

/// `fchmod(2)`: set exact permission bits, unaffected by the umask.
pub fn fchmod(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    // SAFETY: plain syscall on a descriptor we borrow.
    retry(|| cvt(unsafe { libc::fchmod(fd.as_raw_fd(), mode as libc::mode_t) }))?;
    Ok(())
}

/// Names in the directory open as `dir` (an `O_RDONLY | O_DIRECTORY` descriptor, consumed),
/// without `.` and `..`, in directory order.
pub fn read_dir_names(dir: OwnedFd) -> io::Result<Vec<OsString>> {
    let raw = dir.into_raw_fd();
    // SAFETY: `raw` is an open directory descriptor whose ownership passes to the DIR stream.
    let stream = unsafe { libc::fdopendir(raw) };
    if stream.is_null() {
        let e = io::Error::last_os_error();
        // SAFETY: fdopendir failed, so we still own `raw` and must close it.
        unsafe { libc::close(raw) };
        return Err(e);
    }
    let mut names = Vec::new();
    let result = loop {
        // SAFETY: errno is thread-local; clearing it distinguishes end-of-stream from an error.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: `stream` is a valid DIR* used only by this thread.
        let ent = unsafe { libc::readdir(stream) };
        if ent.is_null() {
            let e = io::Error::last_os_error();
            break if e.raw_os_error() == Some(0) {
                Ok(())
            } else {
                Err(e)
            };
        }
        // SAFETY: readdir returned a valid entry whose d_name is NUL-terminated and lives
        // until the next readdir call on this stream; we copy it out right away.
        let name = unsafe { CStr::from_ptr((*ent).d_name.as_ptr()) }.to_bytes();
        if name != b"." && name != b".." {
            names.push(OsString::from_vec(name.to_vec()));
        }
    };
    // SAFETY: `stream` is valid and closed exactly once (this also closes `raw`).
    unsafe { libc::closedir(stream) };
    result.map(|()| names)
}

/// A pipe whose both ends are close-on-exec: `(read end, write end)`.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 succeeded, both descriptors are new and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Put a descriptor in non-blocking mode.
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: fcntl F_GETFL/F_SETFL on a descriptor we borrow; no memory is involved.
    let flags = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })?;
    // SAFETY: as above.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) })?;
    Ok(())
}

/// Mark a descriptor close-on-exec, so that commands never inherit it.
pub fn set_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl F_GETFD/F_SETFD on a descriptor number; an invalid one yields EBADF.
    let flags = cvt(unsafe { libc::fcntl(fd, libc::F_GETFD) })?;
    // SAFETY: as above.
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) })?;
    Ok(())
}

/// `poll(2)` with an optional timeout (rounded up to whole milliseconds so that a deadline is
/// never spun on). An interrupted poll reports zero ready descriptors.
pub fn poll(fds: &mut [libc::pollfd], timeout: Option<Duration>) -> io::Result<usize> {
    let ms: libc::c_int = match timeout {
        None => -1,
        Some(d) => {
            let ms = d.as_nanos().div_ceil(1_000_000);
            ms.min(i32::MAX as u128) as libc::c_int
        }
    };
    // SAFETY: `fds` is a valid, writable slice of pollfd structures of the given length.
    let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(0);
        }
        return Err(e);
    }
    Ok(r as usize)
}

/// A `pollfd` entry asking for `events` on `fd`.
pub fn pollfd(fd: RawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

/// `kill(2)`. A negative `pid` addresses a process group.
pub fn kill(pid: libc::pid_t, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: plain syscall without memory arguments.
    cvt(unsafe { libc::kill(pid, sig) })?;
    Ok(())
}

/// Read into `buf`, retrying on `EINTR`. `WouldBlock` is returned as an error.
pub fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is valid writable memory of the given length.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Write from `buf`, retrying on `EINTR`. `WouldBlock` is returned as an error.
pub fn write(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is valid readable memory of the given length.
        let n = unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// `open("/dev/null", O_RDWR | O_CLOEXEC)`.
pub fn open_dev_null() -> io::Result<OwnedFd> {
    let fd = retry(|| {
        // SAFETY: the path is a static NUL-terminated string; the descriptor is ours.
        cvt(unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) })
    })?;
    // SAFETY: `fd` was just returned by open and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A close-on-exec duplicate of `fd` numbered 3 or higher, so that it cannot collide with the
/// standard descriptors a child has `dup2`'d onto 0, 1 and 2.
pub fn dup_above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    // SAFETY: fcntl F_DUPFD_CLOEXEC on a descriptor we own; the new descriptor is ours.
    let new = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) })?;
    // SAFETY: as above, `new` is a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// `waitpid(pid, 0)`, retried on `EINTR`; the status is discarded. Only for a child that was
/// never handed to the [`crate::reaper::Reaper`] (a spawn whose `execve` failed).
pub fn reap(pid: libc::pid_t) {
    let mut status = 0;
    loop {
        // SAFETY: `status` is writable; waiting for one specific child of ours.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r >= 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return;
        }
    }
}

/// An anonymous mapping used as the stack of a `CLONE_VM` child: `size` usable bytes above
/// one `PROT_NONE` guard page, so that an overflow faults instead of silently overwriting the
/// parent's memory. Unmapped on drop.
pub struct ChildStack {
    base: *mut libc::c_void,
    len: usize,
}

// SAFETY: a `ChildStack` is the sole owner of its mapping, which has no tie to the thread that
// created it; moving it to another thread (to be reused or unmapped there) is sound.
unsafe impl Send for ChildStack {}

impl ChildStack {
    const GUARD: usize = 4096;

    pub fn new(size: usize) -> io::Result<ChildStack> {
        let len = size + Self::GUARD;
        // SAFETY: a fresh private anonymous mapping at an address chosen by the kernel; it
        // aliases nothing.
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
        // SAFETY: the lowest page lies within the mapping just created and owned by `stack`.
        cvt(unsafe { libc::mprotect(base, Self::GUARD, libc::PROT_NONE) })?;
        Ok(stack)
    }

    /// The initial stack pointer (stacks grow down on every architecture Linux/Rust support
    /// here); page-aligned, hence suitably aligned for any ABI.
    fn top(&self) -> *mut libc::c_void {
        // SAFETY: one past the end of the mapping, which is still within the same allocation
        // for pointer arithmetic purposes.
        unsafe { self.base.cast::<u8>().add(self.len).cast() }
    }
}

impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: the mapping was created by `new` and is unmapped exactly once. It is only
        // dropped once no child runs on it (see `clone_vfork`).
        unsafe { libc::munmap(self.base, self.len) };
    }
}

/// Every signal blocked in the calling thread until dropped, which restores the previous mask.
/// Uses the raw system call so that even the C library's internal signals (which
/// `pthread_sigmask` refuses to block) are covered.
pub struct AllSignalsBlocked {
    old: u64,
}

/// The kernel's signal set size on Linux (64 signals).
const KERNEL_SIGSET_SIZE: usize = 8;

impl AllSignalsBlocked {
    pub fn new() -> AllSignalsBlocked {
        let all: u64 = !0;
        let mut old: u64 = 0;
        // SAFETY: both pointers refer to live 8-byte values, the kernel's sigset size; the
        // kernel silently leaves SIGKILL/SIGSTOP unblocked.
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
        // SAFETY: `old` is the live 8-byte mask saved by `new`.
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

/// Whether this kernel has pidfds as the agent uses them: `CLONE_PIDFD` (Linux 5.2) and
/// `waitid(P_PIDFD)` (5.4). gVisor has neither; there the reaper thread reports each exit.
/// Probed once.
pub fn pidfds_supported() -> bool {
    #[cfg(test)]
    if TESTS_WITHOUT_PIDFDS.load(std::sync::atomic::Ordering::Relaxed) {
        return false;
    }
    static SUPPORTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        // SAFETY: pidfd_open with integer arguments; a non-negative return is a descriptor we
        // own (and close right away through the OwnedFd).
        let r = unsafe { libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0) };
        if r < 0 {
            return false;
        }
        // SAFETY: as above, `r` is a fresh descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(r as RawFd) };
        // SAFETY: an all-zero siginfo_t is a valid value for waitid to overwrite.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is writable and `fd` valid for the call. Our own pid is not our
        // child, so a kernel that knows P_PIDFD answers ECHILD; one that does not, EINVAL.
        let w = unsafe {
            libc::waitid(
                libc::P_PIDFD,
                fd.as_raw_fd() as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG,
            )
        };
        w < 0 && errno() == libc::ECHILD
    })
}

/// Lets tests take the path of kernels without pidfds on a kernel with them. Both kinds of
/// children may be alive at once; the reaper handles each by its own kind.
#[cfg(test)]
pub static TESTS_WITHOUT_PIDFDS: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// The type of `setrlimit`'s resource argument, which differs between C libraries.
#[cfg(target_env = "musl")]
pub type RlimitResource = libc::c_int;
/// The type of `setrlimit`'s resource argument, which differs between C libraries.
#[cfg(not(target_env = "musl"))]
pub type RlimitResource = libc::__rlimit_resource_t;

/// `setrlimit(2)` of `resource`, soft and hard, to `value`.
pub fn set_rlimit(resource: RlimitResource, value: u64) -> io::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: setrlimit reads the struct it is given, a live local.
    cvt(unsafe { libc::setrlimit(resource, &lim) }).map(drop)
}

/// Whether this process has a controlling terminal (`/dev/tty` opens).
pub fn has_controlling_terminal() -> bool {
    // SAFETY: the path is a static NUL-terminated string; a descriptor returned is closed
    // right away through the OwnedFd.
    let fd = unsafe {
        libc::open(
            c"/dev/tty".as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return false;
    }
    // SAFETY: `fd` was just returned by open and is owned by nobody else.
    drop(unsafe { OwnedFd::from_raw_fd(fd) });
    true
}

/// `eventfd(2)`, non-blocking and close-on-exec: the reaper thread signals a command's exit
/// through one where pidfds are missing.
pub fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd with integer arguments; the returned descriptor is ours.
    let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
    // SAFETY: `fd` was just returned by eventfd and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Make an eventfd readable (add one to its counter).
pub fn eventfd_signal(fd: BorrowedFd<'_>) {
    let one: u64 = 1;
    // SAFETY: writes the 8 bytes of `one`, a live local, to a descriptor valid for the call.
    // An eventfd write only fails when the counter would overflow, which one write per exit
    // cannot reach.
    unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
}

/// `clone(CLONE_VM | CLONE_VFORK | SIGCHLD)`: run `child(arg)` in a new process that shares
/// this process's memory, on `stack`, and return its pid once the child has called `execve`
/// successfully or exited (the calling thread is suspended until then; other threads run on).
/// With `want_pidfd` (see [`pidfds_supported`]) the child's pidfd comes with it.
///
/// # Safety
///
/// `child` runs in the parent's address space on a foreign stack with no runtime set up: it
/// may only make raw system calls and read `arg` (and write memory the suspended caller set
/// aside for it); it must not allocate, lock, unwind, touch thread-locals other than `errno`,
/// or return to anything but the clone trampoline (which then calls `exit`). `arg` must stay
/// valid until this returns. The caller must block all signals around the call (see
/// [`AllSignalsBlocked`]) and `child` must reset every handler before unblocking, so that no
/// signal handler ever runs on `stack`.
pub unsafe fn clone_vfork(
    child: extern "C" fn(*mut libc::c_void) -> libc::c_int,
    arg: *mut libc::c_void,
    stack: &ChildStack,
    want_pidfd: bool,
) -> io::Result<(libc::pid_t, Option<OwnedFd>)> {
    let mut pidfd: libc::c_int = -1;
    let flags = libc::CLONE_VM
        | libc::CLONE_VFORK
        | libc::SIGCHLD
        | if want_pidfd { libc::CLONE_PIDFD } else { 0 };
    // SAFETY: the caller upholds the child's constraints; `stack.top()` is the top of a
    // writable mapping that outlives the child's use of it, because CLONE_VFORK returns only
    // after the child exec'd or exited, i.e. left that stack for good. With CLONE_PIDFD the
    // kernel stores the child's pidfd in `pidfd` (the parent_tid argument), a live local.
    let pid = unsafe {
        libc::clone(
            child,
            stack.top(),
            flags,
            arg,
            &mut pidfd as *mut libc::c_int,
        )
    };
    let pid = cvt(pid)?;
    // SAFETY: with CLONE_PIDFD the clone stored a new descriptor in `pidfd` that nothing else
    // owns; without it `pidfd` is still -1 and is not wrapped.
    let pidfd = (want_pidfd && pidfd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(pidfd) });
    Ok((pid, pidfd))
}

/// Reap the child behind `pidfd` if it has exited, returning its raw wait status (what
/// `ExitStatus::from_raw` decodes). `None` while it runs, and when it was reaped already.
pub fn try_reap(pidfd: BorrowedFd<'_>) -> Option<i32> {
    // SAFETY: an all-zero siginfo_t is a valid value for waitid to overwrite.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is writable and `pidfd` a valid descriptor for the call's duration.
    let r = unsafe {
        libc::waitid(
            libc::P_PIDFD,
            pidfd.as_raw_fd() as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG,
        )
    };
    // SAFETY: after a successful waitid, si_pid is 0 (nothing exited) or the SIGCHLD fields
    // are set.
    if r != 0 || unsafe { info.si_pid() } == 0 {
        return None;
    }
    // SAFETY: as above, a child's state change was reported.
    let status = unsafe { info.si_status() };
    // The raw wait(2) status that `ExitStatus::from_raw` decodes.
    Some(match info.si_code {
        libc::CLD_EXITED => (status & 0xff) << 8,
        libc::CLD_DUMPED => (status & 0x7f) | 0x80,
        _ => status & 0x7f,
    })
}

/// The calling thread's `errno`. Also usable in a `CLONE_VM` child: it shares the suspended
/// parent thread's thread pointer, hence its `errno`, which the parent does not rely on across
/// the clone.
pub fn errno() -> libc::c_int {
    // SAFETY: __errno_location returns the valid address of the thread's errno; reading it
    // is a plain load (no lock, no allocation).
    unsafe { *libc::__errno_location() }
}
