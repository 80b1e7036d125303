//! A userspace `RESOLVE_BENEATH` resolver, for kernels without `openat2(2)`.
//!
//! # Why it exists
//!
//! The file API ([`crate::files`]) confines every path to one root directory by opening it
//! with `openat2(2)` and `RESOLVE_BENEATH`. That system call exists since Linux 5.6 only, and
//! some sandbox kernels lack it altogether: gVisor (runsc 20240729, for one) answers `ENOSYS`.
//! [`openat_beneath`] gives the answer the kernel's `openat2` would give, built only from
//! system calls every kernel has: `openat(2)` with `O_NOFOLLOW`, `fstat(2)`, `fstatat(2)` and
//! `readlinkat(2)`.
//!
//! # Why it is safe
//!
//! Inside a sandbox the confinement root is an API boundary, not the isolation wall: the
//! sandbox's own processes can reach whatever the agent can, and the isolation is the sandbox
//! itself. Still, the file API promises that no resolution leaves the root, and this resolver
//! keeps that promise by never letting the kernel resolve anything but one plain name:
//!
//! * The path is walked one component at a time. Every component is opened with
//!   `openat(cur, name, O_PATH | O_NOFOLLOW)`, where `name` contains no `/` and is never `..`,
//!   relative to a directory descriptor we hold. So the kernel never follows a symlink and
//!   never climbs to a parent on our behalf; each descriptor on the stack is an entry of the
//!   one below it, and the bottom one is the root.
//! * `..` pops our own stack of descriptors; popping past the root is `EXDEV`. Because the
//!   stack records the way in, a concurrent rename cannot make `..` climb anywhere but back to
//!   a directory we already passed.
//! * A symlink is never handed to the kernel to follow: we read its text (`readlinkat`) and
//!   splice it in front of the components still to resolve, to be walked the same way from the
//!   symlink's directory. Absolute text is `EXDEV` (as for the kernel, even when it names a
//!   place inside the root), `RESOLVE_NO_SYMLINKS` makes any symlink to follow `ELOOP`, and so
//!   does the 41st symlink of one resolution (the kernel's `MAXSYMLINKS` is 40).
//! * `/proc` magic links (`/proc/<pid>/fd/<n>`, `cwd`, `root`, `exe`, `ns/*`) are dangerous
//!   only because the *kernel* follows them to their object rather than to their text. We only
//!   ever interpret the text ourselves: it is either an absolute path (`EXDEV`) or a pseudo-name
//!   such as `pipe:[1234]`, which is then looked up as an ordinary relative name beneath the
//!   root. That is why `RESOLVE_NO_MAGICLINKS` needs nothing more here.
//! * The final component is opened with `openat(cur, name, flags | O_NOFOLLOW, mode)`, so that
//!   `O_CREAT`, `O_EXCL`, `O_DIRECTORY`, `O_PATH`, `O_TMPFILE` and the rest act on exactly that
//!   entry. If it is a symlink that must be followed, `O_NOFOLLOW` makes the kernel refuse it
//!   (`ELOOP`, or `ENOTDIR` with `O_DIRECTORY`) or, with `O_PATH`, hand back the symlink
//!   itself; we notice, and follow it as above. A symlink swapped in concurrently therefore
//!   ends in an error or is followed by us, never by the kernel.
//!
//! Like the kernel's `RESOLVE_BENEATH`, this proves nothing about a directory that a
//! concurrent rename moves out of the root while the walk is inside it: the walk goes on
//! downwards in that directory (the kernel's does the same; only its `..` is guarded, and ours
//! only ever returns to directories already on the stack).
//!
//! # Differences from the kernel
//!
//! * `RESOLVE_BENEATH` is always in effect. Resolve flags other than `RESOLVE_BENEATH`,
//!   `RESOLVE_NO_MAGICLINKS` and `RESOLVE_NO_SYMLINKS` are refused with `EINVAL`, including
//!   ones the kernel accepts (`RESOLVE_NO_XDEV`, `RESOLVE_CACHED`).
//! * `open_how` is checked as `openat2` checks it (`EINVAL` for a mode without `O_CREAT` or
//!   `O_TMPFILE`, mode bits beyond `0o7777`, `O_CREAT | O_DIRECTORY`, `O_PATH` with other
//!   than `O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC`, `O_TMPFILE` without write access), except
//!   that unknown `flags` bits are passed on to `openat`, which ignores them, instead of being
//!   refused.
//! * A magic link met on the way gives `EXDEV` (absolute text) or whatever its pseudo-name
//!   gives as a relative name (normally `ENOENT`); the kernel gives `ELOOP` with
//!   `RESOLVE_NO_MAGICLINKS` and `EXDEV` without. Either way nothing is opened through it.
//! * `fs.protected_symlinks` (the kernel's refusal, with `EACCES`, to follow a symlink in a
//!   sticky world-writable directory that neither the caller nor the directory's owner owns)
//!   is not applied to the symlinks we follow.
//! * `EAGAIN` (the kernel's "a rename raced with `..`, try again") never occurs.

use std::ffi::{CStr, CString};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use crate::sys::{fstat, RESOLVE_BENEATH, RESOLVE_NO_MAGICLINKS, RESOLVE_NO_SYMLINKS};

/// The resolve flags this resolver implements.
const RESOLVE_SUPPORTED: u64 = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_SYMLINKS;

/// Most symlinks one resolution may follow: the kernel's `MAXSYMLINKS`.
const MAX_SYMLINKS: u32 = 40;

/// The flags `openat2` allows next to `O_PATH` (the kernel's `O_PATH_FLAGS`).
const O_PATH_FLAGS: libc::c_int =
    libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_PATH | libc::O_CLOEXEC;
/// `__O_TMPFILE`: `O_TMPFILE` without the `O_DIRECTORY` it always comes with.
const O_TMPFILE_BIT: libc::c_int = libc::O_TMPFILE & !libc::O_DIRECTORY;
/// The permission bits a creating open may ask for (the kernel's `S_IALLUGO`).
const S_IALLUGO: u32 = 0o7777;

/// Open `path` relative to `dir` the way openat2(2) with `resolve` would, without openat2.
///
/// `resolve` may contain `RESOLVE_BENEATH`, `RESOLVE_NO_MAGICLINKS` and `RESOLVE_NO_SYMLINKS`;
/// `RESOLVE_BENEATH` is in effect whether given or not. `O_CLOEXEC` is always added. Errors
/// are the kernel's: `EXDEV` for a resolution that would leave `dir` (through `..`, an
/// absolute path or an absolute or escaping symlink), `ELOOP` for a symlink under
/// `RESOLVE_NO_SYMLINKS` or too many symlinks, `ENOTDIR`, `ENOENT` and so on. See the module
/// documentation for how it works and where it differs from the kernel.
pub fn openat_beneath(
    dir: BorrowedFd<'_>,
    path: &CStr,
    flags: libc::c_int,
    mode: u32,
    resolve: u64,
) -> io::Result<OwnedFd> {
    let flags = flags | libc::O_CLOEXEC;
    check_how(flags, mode, resolve)?;
    let bytes = path.to_bytes();
    if bytes.is_empty() {
        return Err(errno(libc::ENOENT));
    }
    if bytes.len() >= libc::PATH_MAX as usize {
        return Err(errno(libc::ENAMETOOLONG));
    }
    if bytes[0] == b'/' {
        return Err(errno(libc::EXDEV));
    }
    let mut walk = Walk {
        root: dir,
        stack: Vec::new(),
        rest: Vec::new(),
        trailing_slash: false,
        links: 0,
        no_symlinks: resolve & RESOLVE_NO_SYMLINKS != 0,
    };
    walk.splice(bytes)?;
    walk.run(flags, mode)
}

/// The argument checks of `openat2` (the kernel's `build_open_flags`), in its order.
fn check_how(flags: libc::c_int, mode: u32, resolve: u64) -> io::Result<()> {
    let invalid = Err(errno(libc::EINVAL));
    if resolve & !RESOLVE_SUPPORTED != 0 {
        return invalid;
    }
    if flags & (libc::O_CREAT | O_TMPFILE_BIT) != 0 {
        if mode & !S_IALLUGO != 0 {
            return invalid;
        }
    } else if mode != 0 {
        return invalid;
    }
    if flags & libc::O_CREAT != 0 && flags & libc::O_DIRECTORY != 0 {
        return invalid;
    }
    if flags & O_TMPFILE_BIT != 0
        && (flags & libc::O_DIRECTORY == 0 || flags & libc::O_ACCMODE == libc::O_RDONLY)
    {
        return invalid;
    }
    if flags & libc::O_PATH != 0 && flags & !O_PATH_FLAGS != 0 {
        return invalid;
    }
    Ok(())
}

/// One resolution in progress.
struct Walk<'a> {
    /// The confinement root.
    root: BorrowedFd<'a>,
    /// The directories entered below `root`, innermost last (`O_PATH` descriptors); `..` pops.
    stack: Vec<OwnedFd>,
    /// The components still to resolve, the next one last.
    rest: Vec<CString>,
    /// The path (or the text of a symlink that stood for its final component) ends with `/`:
    /// the final component must be a directory and is followed even under `O_NOFOLLOW`, as
    /// the kernel does.
    trailing_slash: bool,
    /// Symlinks followed so far.
    links: u32,
    /// `RESOLVE_NO_SYMLINKS`.
    no_symlinks: bool,
}

impl Walk<'_> {
    /// The directory the next component is looked up in.
    fn cur(&self) -> BorrowedFd<'_> {
        self.stack.last().map_or(self.root, |fd| fd.as_fd())
    }

    /// Put the components of `text` (a relative path) in front of those still to resolve.
    fn splice(&mut self, text: &[u8]) -> io::Result<()> {
        if self.rest.is_empty() && text.ends_with(b"/") {
            self.trailing_slash = true;
        }
        for comp in text.split(|&b| b == b'/').rev() {
            if comp.is_empty() {
                continue;
            }
            self.rest
                .push(CString::new(comp).map_err(|_| errno(libc::EINVAL))?);
        }
        Ok(())
    }

    fn run(mut self, flags: libc::c_int, mode: u32) -> io::Result<OwnedFd> {
        loop {
            let Some(comp) = self.rest.pop() else {
                // Nothing left at all (not reachable: every path and symlink text spliced
                // has at least one component); this names the current directory.
                return openat(self.cur(), c".", flags, mode);
            };
            let last = self.rest.is_empty();
            match comp.to_bytes() {
                b"." => {
                    if last {
                        return openat(self.cur(), c".", flags, mode);
                    }
                    may_search(self.cur())?;
                }
                b".." => {
                    may_search(self.cur())?;
                    if self.stack.pop().is_none() {
                        return Err(errno(libc::EXDEV));
                    }
                    if last {
                        return openat(self.cur(), c".", flags, mode);
                    }
                }
                _ if !last => self.enter(&comp)?,
                _ => {
                    if let Some(fd) = self.open_last(&comp, flags, mode)? {
                        return Ok(fd);
                    }
                }
            }
        }
    }

    /// Step into the intermediate component `name`: push it if it is a directory, splice its
    /// text if it is a symlink.
    fn enter(&mut self, name: &CStr) -> io::Result<()> {
        let fd = openat(
            self.cur(),
            name,
            libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0,
        )?;
        let st = fstat(fd.as_fd())?;
        match st.st_mode & libc::S_IFMT {
            libc::S_IFDIR => {
                self.stack.push(fd);
                Ok(())
            }
            libc::S_IFLNK => self.follow(fd.as_fd(), name),
            _ => Err(errno(libc::ENOTDIR)),
        }
    }

    /// Open the final component `name` with the caller's flags. `None` when it turned out to
    /// be a symlink to follow, whose text has been spliced in.
    fn open_last(
        &mut self,
        name: &CStr,
        flags: libc::c_int,
        mode: u32,
    ) -> io::Result<Option<OwnedFd>> {
        let creat = flags & libc::O_CREAT != 0;
        if self.trailing_slash && creat {
            return Err(errno(libc::EISDIR));
        }
        // As in the kernel: a trailing slash forces following, O_CREAT | O_EXCL forbids it.
        let follow = self.trailing_slash
            || (flags & libc::O_NOFOLLOW == 0 && !(creat && flags & libc::O_EXCL != 0));
        let mut oflags = flags | libc::O_NOFOLLOW;
        if self.trailing_slash {
            oflags |= libc::O_DIRECTORY;
        }
        match openat(self.cur(), name, oflags, mode) {
            // Only an O_PATH open can return a symlink itself.
            Ok(fd) if follow && flags & libc::O_PATH != 0 => {
                if is_symlink(&fstat(fd.as_fd())?) {
                    self.follow(fd.as_fd(), name)?;
                    return Ok(None);
                }
                Ok(Some(fd))
            }
            Ok(fd) => Ok(Some(fd)),
            // O_NOFOLLOW refuses a final symlink with ELOOP (ENOTDIR under O_DIRECTORY): look
            // at what is there now and follow it if it is a symlink. Anything else (a plain
            // ELOOP or ENOTDIR, or a race the other way) stays the kernel's error.
            Err(e) if follow && matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => {
                let Ok(link) = openat(
                    self.cur(),
                    name,
                    libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                    0,
                ) else {
                    return Err(e);
                };
                match fstat(link.as_fd()) {
                    Ok(st) if is_symlink(&st) => {
                        self.follow(link.as_fd(), name)?;
                        Ok(None)
                    }
                    _ => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Follow the symlink `link` (an `O_PATH | O_NOFOLLOW` descriptor of `name` in the
    /// current directory): splice its text in front of the rest.
    fn follow(&mut self, link: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
        if self.no_symlinks {
            return Err(errno(libc::ELOOP));
        }
        self.links += 1;
        if self.links > MAX_SYMLINKS {
            return Err(errno(libc::ELOOP));
        }
        // Read through the descriptor, so that it is the very symlink we looked at; kernels
        // before 2.6.39 cannot, and then the name is read again (a symlink swapped in
        // meanwhile is still only text that we resolve ourselves).
        let text = match readlinkat(link, c"") {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => readlinkat(self.cur(), name)?,
            other => other?,
        };
        match text.first() {
            None => Err(errno(libc::ENOENT)),
            Some(b'/') => Err(errno(libc::EXDEV)),
            Some(_) => self.splice(&text),
        }
    }
}

fn errno(code: libc::c_int) -> io::Error {
    io::Error::from_raw_os_error(code)
}

/// Run a system call until it is not interrupted by a signal; `-1` becomes `errno`.
fn retry<T: PartialOrd + Default>(mut f: impl FnMut() -> T) -> io::Result<T> {
    loop {
        let r = f();
        if r >= T::default() {
            return Ok(r);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// `openat(2)`.
fn openat(dir: BorrowedFd<'_>, name: &CStr, flags: libc::c_int, mode: u32) -> io::Result<OwnedFd> {
    // SAFETY: `name` is a NUL-terminated string the kernel only reads during the call; the
    // mode is passed as the unsigned int the variadic argument expects.
    let fd = retry(|| unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags, mode) })?;
    // SAFETY: a non-negative return of openat is a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn is_symlink(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFLNK
}

/// Fail as the kernel's lookup of `.` or `..` in `dir` would without search permission on it
/// (the only check it makes before stepping there).
fn may_search(dir: BorrowedFd<'_>) -> io::Result<()> {
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `st` is writable memory of the size of a `struct stat` and the name a static
    // NUL-terminated string; looking up "." follows nothing.
    retry(|| unsafe { libc::fstatat(dir.as_raw_fd(), c".".as_ptr(), st.as_mut_ptr(), 0) })?;
    Ok(())
}

/// `readlinkat(2)`: the text of symlink `name` in `dir` (or of `dir` itself for `""`).
fn readlinkat(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Vec<u8>> {
    use std::os::unix::ffi::OsStringExt;
    crate::sys::readlinkat(dir, name).map(OsStringExt::into_vec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::fs;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;

    const BENEATH: u64 = RESOLVE_BENEATH;
    const MAGIC: u64 = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS;
    const NOSYM: u64 = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS;
    /// `RESOLVE_IN_ROOT`, which the kernel refuses together with `RESOLVE_BENEATH`.
    const IN_ROOT: u64 = 0x10;

    const R: libc::c_int = libc::O_RDONLY;
    const W: libc::c_int = libc::O_WRONLY;
    const CREAT: libc::c_int = libc::O_CREAT | libc::O_WRONLY;
    const EXCL: libc::c_int = libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY;
    const NOFOLLOW: libc::c_int = libc::O_NOFOLLOW;
    const DIR: libc::c_int = libc::O_DIRECTORY;
    const PATH: libc::c_int = libc::O_PATH;

    /// The real kernel's openat2, called directly (never through the agent's wrapper, which
    /// may fall back to the resolver under test).
    fn kernel_openat2(
        dir: BorrowedFd<'_>,
        path: &CStr,
        flags: libc::c_int,
        mode: u32,
        resolve: u64,
    ) -> io::Result<OwnedFd> {
        #[repr(C)]
        struct OpenHow {
            flags: u64,
            mode: u64,
            resolve: u64,
        }
        let how = OpenHow {
            flags: (flags | libc::O_CLOEXEC) as u64,
            mode: u64::from(mode),
            resolve,
        };
        loop {
            // SAFETY: `path` is NUL-terminated and `how` a live `open_how` whose size is
            // passed; the kernel only reads both during the call.
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
                // SAFETY: a new descriptor owned by nobody else.
                return Ok(unsafe { OwnedFd::from_raw_fd(r as libc::c_int) });
            }
            let e = io::Error::last_os_error();
            if !matches!(e.raw_os_error(), Some(libc::EINTR | libc::EAGAIN)) {
                return Err(e);
            }
        }
    }

    fn open_root(path: &Path) -> OwnedFd {
        let c = CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: `c` is NUL-terminated; the new descriptor is ours.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        assert!(
            fd >= 0,
            "open {}: {}",
            path.display(),
            io::Error::last_os_error()
        );
        // SAFETY: as above.
        unsafe { OwnedFd::from_raw_fd(fd) }
    }

    /// A scratch directory, removed on drop: `base/root` is the confinement root, and
    /// `base/outside` and `base/outside_dir/target` lie beside it, where nothing may reach.
    struct Scratch {
        base: PathBuf,
    }

    impl Scratch {
        fn new(tag: &str) -> Scratch {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let base = std::env::temp_dir().join(format!(
                "sandboxd-beneath-{tag}-{}-{}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&base);
            fs::create_dir_all(base.join("root")).unwrap();
            fs::write(base.join("outside"), "outside").unwrap();
            fs::create_dir(base.join("outside_dir")).unwrap();
            fs::write(base.join("outside_dir/target"), "outside").unwrap();
            Scratch { base }
        }

        fn root(&self) -> PathBuf {
            self.base.join("root")
        }

        /// The test tree (see the comments for what each entry is for).
        fn tree(tag: &str) -> Scratch {
            let s = Scratch::new(tag);
            let root = s.root();
            let r = |p: &str| root.join(p);
            let ln = |target: &str, at: &str| symlink(target, r(at)).unwrap();
            fs::write(r("file"), "hello").unwrap();
            fs::create_dir_all(r("sub/deeper")).unwrap();
            fs::write(r("sub/inner"), "inner").unwrap();
            // Relative symlinks that stay inside.
            ln("file", "link_file");
            ln("sub", "link_sub");
            ln("sub/", "link_sub_slash");
            ln("file/", "link_file_slash");
            ln(".", "link_dot");
            ln("../file", "sub/up_file");
            ln("..", "sub/link_parent");
            ln("../../link_sub/inner", "sub/deeper/up2");
            // Relative symlinks escaping through `..`.
            ln("..", "link_up");
            ln("../outside", "escape");
            ln("../outside_dir", "escape_dir");
            ln("../../outside", "sub/escape2");
            ln("sub/../../outside", "sneaky");
            // Absolute symlinks, outside and inside.
            ln(&s.base.join("outside").to_string_lossy(), "abs");
            ln(&r("file").to_string_lossy(), "abs_inside");
            ln("/", "abs_root");
            // Loops.
            ln("loop_b", "loop_a");
            ln("loop_a", "loop_b");
            ln("self_loop", "self_loop");
            // Magic links.
            ln("/proc/self/fd/0", "proc_fd");
            ln("/proc/self/root", "proc_root");
            // chain_0 -> chain_1 -> ... -> chain_40 -> file: 41 symlinks from chain_0, 40
            // from chain_1.
            for i in 0..40 {
                ln(&format!("chain_{}", i + 1), &format!("chain_{i}"));
            }
            ln("file", "chain_40");
            // Dangling symlinks, for O_CREAT.
            ln("newfile", "dangling");
            ln("fresh/", "dangling_slash");
            ln("missing/newfile", "dangling_deep");
            ln("../created_outside", "dangling_escape");
            ln(
                &s.base.join("created_abs").to_string_lossy(),
                "dangling_abs",
            );
            // A directory without search permission (only matters when not root).
            fs::create_dir(r("noexec")).unwrap();
            fs::write(r("noexec/secret"), "secret").unwrap();
            fs::set_permissions(r("noexec"), fs::Permissions::from_mode(0o600)).unwrap();
            s
        }

        /// What `fd` is: its path relative to the root (`.` for the root, `../x` for
        /// something outside), or `<unnamed>`.
        fn identify(&self, fd: BorrowedFd<'_>) -> String {
            let st = fstat(fd).unwrap();
            let same = |md: &fs::Metadata| md.dev() == st.st_dev && md.ino() == st.st_ino;
            if same(&fs::symlink_metadata(&self.base).unwrap()) {
                return "..".to_string();
            }
            for (rel, md) in walk(&self.base) {
                if same(&md) {
                    return match rel.strip_prefix("root") {
                        Some("") => ".".to_string(),
                        Some(inside) => inside.trim_start_matches('/').to_string(),
                        None => format!("../{rel}"),
                    };
                }
            }
            "<unnamed>".to_string()
        }

        /// Every entry below the root with its kind and (for files) size.
        fn listing(&self) -> Vec<String> {
            let mut out: Vec<String> = walk(&self.root())
                .into_iter()
                .map(|(rel, md)| {
                    let t = md.file_type();
                    if t.is_dir() {
                        format!("{rel}/")
                    } else if t.is_symlink() {
                        format!("{rel}@")
                    } else {
                        format!("{rel} ({} bytes)", md.len())
                    }
                })
                .collect();
            out.sort();
            out
        }

        /// Nothing was created or removed beside the root.
        fn assert_outside_untouched(&self) {
            let mut names: Vec<String> = fs::read_dir(&self.base)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            assert_eq!(names, ["outside", "outside_dir", "root"]);
            assert_eq!(
                fs::read_to_string(self.base.join("outside")).unwrap(),
                "outside"
            );
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::set_permissions(
                self.root().join("noexec"),
                fs::Permissions::from_mode(0o700),
            );
            let _ = fs::remove_dir_all(&self.base);
        }
    }

    /// Every entry below `dir` (not following symlinks), paths relative to `dir`.
    fn walk(dir: &Path) -> Vec<(String, fs::Metadata)> {
        fn go(dir: &Path, rel: &str, out: &mut Vec<(String, fs::Metadata)>) {
            let Ok(entries) = fs::read_dir(dir) else {
                return;
            };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let rel = if rel.is_empty() {
                    name
                } else {
                    format!("{rel}/{name}")
                };
                let Ok(md) = fs::symlink_metadata(e.path()) else {
                    continue;
                };
                let is_dir = md.is_dir();
                out.push((rel.clone(), md));
                if is_dir {
                    go(&e.path(), &rel, out);
                }
            }
        }
        let mut out = Vec::new();
        go(dir, "", &mut out);
        out
    }

    #[derive(Debug, PartialEq)]
    enum Outcome {
        Opened(String),
        Failed(i32),
    }

    fn outcome(s: &Scratch, r: io::Result<OwnedFd>) -> Outcome {
        match r {
            Ok(fd) => Outcome::Opened(s.identify(fd.as_fd())),
            Err(e) => Outcome::Failed(e.raw_os_error().expect("an errno")),
        }
    }

    #[derive(Debug)]
    enum Expect {
        /// Opens this entry (relative to the root).
        Open(&'static str),
        /// Opens a file with no name (O_TMPFILE).
        Unnamed,
        Err(i32),
        /// Depends on who runs the test (permissions): only compared with the kernel.
        AsKernel,
    }

    struct Case {
        path: &'static str,
        flags: libc::c_int,
        mode: u32,
        resolve: u64,
        expect: Expect,
    }

    fn case(path: &'static str, flags: libc::c_int, resolve: u64, expect: Expect) -> Case {
        let mode = if flags & (libc::O_CREAT | O_TMPFILE_BIT) != 0 {
            0o640
        } else {
            0
        };
        Case {
            path,
            flags,
            mode,
            resolve,
            expect,
        }
    }

    fn cases() -> Vec<Case> {
        use Expect::{AsKernel, Err as E, Open, Unnamed};
        let (exdev, eloop, enoent, enotdir) =
            (libc::EXDEV, libc::ELOOP, libc::ENOENT, libc::ENOTDIR);
        let (eisdir, eexist, einval) = (libc::EISDIR, libc::EEXIST, libc::EINVAL);
        let mut v = vec![
            // Plain names and `.`.
            case("file", R, BENEATH, Open("file")),
            case("file", R, MAGIC, Open("file")),
            case("file", R, NOSYM, Open("file")),
            case("file", R, 0, Open("file")),
            case("./file", R, MAGIC, Open("file")),
            case("sub//inner", R, MAGIC, Open("sub/inner")),
            case("sub/./inner", R, MAGIC, Open("sub/inner")),
            case(".", R, MAGIC, Open(".")),
            case("./", R, MAGIC, Open(".")),
            case(".//./", PATH, MAGIC, Open(".")),
            case("sub", R, MAGIC, Open("sub")),
            case("sub/", R, MAGIC, Open("sub")),
            case("sub/.", R, MAGIC, Open("sub")),
            case("sub", DIR, MAGIC, Open("sub")),
            case("file", W | libc::O_TRUNC, MAGIC, Open("file")),
            // `..`.
            case("sub/..", R, MAGIC, Open(".")),
            case("sub/../file", R, MAGIC, Open("file")),
            case("sub/deeper/../../file", R, MAGIC, Open("file")),
            case("sub/deeper/..", PATH, MAGIC, Open("sub")),
            case("sub/../..", R, MAGIC, E(exdev)),
            case("..", R, MAGIC, E(exdev)),
            case("..", R, NOSYM, E(exdev)),
            case("../root/file", R, MAGIC, E(exdev)),
            case("sub/../../root/file", R, MAGIC, E(exdev)),
            // Absolute and empty paths.
            case("/etc/passwd", R, MAGIC, E(exdev)),
            case("/", R, MAGIC, E(exdev)),
            case("", R, MAGIC, E(enoent)),
            // Missing entries and wrong kinds.
            case("missing", R, MAGIC, E(enoent)),
            case("missing/x", R, MAGIC, E(enoent)),
            case("missing/..", R, MAGIC, E(enoent)),
            case("file/", R, MAGIC, E(enotdir)),
            case("file/.", R, MAGIC, E(enotdir)),
            case("file/x", R, MAGIC, E(enotdir)),
            case("file/..", R, MAGIC, E(enotdir)),
            case("sub/inner/..", R, MAGIC, E(enotdir)),
            case("file", DIR, MAGIC, E(enotdir)),
            case("file", PATH | DIR, MAGIC, E(enotdir)),
            // Symlinks that stay inside.
            case("link_file", R, MAGIC, Open("file")),
            case("link_file", PATH, MAGIC, Open("file")),
            case("link_file", NOFOLLOW, MAGIC, E(eloop)),
            case("link_file", PATH | NOFOLLOW, MAGIC, Open("link_file")),
            case("link_file", DIR, MAGIC, E(enotdir)),
            case("link_sub", DIR, MAGIC, Open("sub")),
            case("link_sub", DIR | NOFOLLOW, MAGIC, E(enotdir)),
            case("link_sub", PATH | DIR | NOFOLLOW, MAGIC, E(enotdir)),
            case("link_sub/inner", R, MAGIC, Open("sub/inner")),
            case("link_sub/", NOFOLLOW, MAGIC, Open("sub")),
            case("link_sub/", PATH | NOFOLLOW, MAGIC, Open("sub")),
            case("link_sub/.", NOFOLLOW, MAGIC, Open("sub")),
            case("link_sub/..", R, MAGIC, Open(".")),
            case("link_sub/../file", R, MAGIC, Open("file")),
            case("link_sub_slash", R, MAGIC, Open("sub")),
            case("link_sub_slash", PATH, MAGIC, Open("sub")),
            case("link_file_slash", R, MAGIC, E(enotdir)),
            case("link_dot/link_dot/file", R, MAGIC, Open("file")),
            case("link_dot", R, MAGIC, Open(".")),
            case("sub/up_file", R, MAGIC, Open("file")),
            case("sub/up_file", NOFOLLOW, MAGIC, E(eloop)),
            case("sub/link_parent/file", R, MAGIC, Open("file")),
            case("sub/link_parent", PATH, MAGIC, Open(".")),
            case("sub/deeper/up2", R, MAGIC, Open("sub/inner")),
            case("link_sub/deeper/up2", R, BENEATH, Open("sub/inner")),
            // RESOLVE_NO_SYMLINKS.
            case("link_file", R, NOSYM, E(eloop)),
            case("link_file", PATH, NOSYM, E(eloop)),
            case("link_file", PATH | NOFOLLOW, NOSYM, Open("link_file")),
            case("link_file", NOFOLLOW, NOSYM, E(eloop)),
            case("link_sub/inner", R, NOSYM, E(eloop)),
            case("link_sub/", PATH | NOFOLLOW, NOSYM, E(eloop)),
            case("sub/deeper", PATH, NOSYM, Open("sub/deeper")),
            // Escapes through `..`.
            case("link_up", R, MAGIC, E(exdev)),
            case("link_up", PATH | NOFOLLOW, MAGIC, Open("link_up")),
            case("link_up/root/file", R, MAGIC, E(exdev)),
            case("escape", R, MAGIC, E(exdev)),
            case("escape", R, BENEATH, E(exdev)),
            case("escape", PATH, MAGIC, E(exdev)),
            case("escape_dir/target", R, MAGIC, E(exdev)),
            case("escape_dir/", R, MAGIC, E(exdev)),
            case("sub/escape2", R, MAGIC, E(exdev)),
            case("sneaky", R, MAGIC, E(exdev)),
            // Absolute symlinks, even pointing inside.
            case("abs", R, MAGIC, E(exdev)),
            case("abs", R, BENEATH, E(exdev)),
            case("abs", PATH | NOFOLLOW, MAGIC, Open("abs")),
            case("abs_inside", R, MAGIC, E(exdev)),
            case("abs_root/etc/passwd", R, MAGIC, E(exdev)),
            case("sub/../abs_root", DIR, MAGIC, E(exdev)),
            // Loops and the symlink limit.
            case("loop_a", R, MAGIC, E(eloop)),
            case("self_loop", R, MAGIC, E(eloop)),
            case("self_loop/x", R, MAGIC, E(eloop)),
            case("self_loop/", R, MAGIC, E(eloop)),
            case("chain_0", R, MAGIC, E(eloop)),
            case("chain_0", PATH, MAGIC, E(eloop)),
            case("chain_1", R, MAGIC, Open("file")),
            case("chain_0", PATH | NOFOLLOW, MAGIC, Open("chain_0")),
            // Symlinks to /proc magic links (absolute, so refused before any magic).
            case("proc_fd", R, MAGIC, E(exdev)),
            case("proc_fd", R, BENEATH, E(exdev)),
            case("proc_root/etc/passwd", R, MAGIC, E(exdev)),
            case("proc_root/etc/passwd", R, BENEATH, E(exdev)),
            // Creation.
            case("new", CREAT, MAGIC, Open("new")),
            case("new", EXCL, MAGIC, Open("new")),
            case("sub/new", CREAT, MAGIC, Open("sub/new")),
            case("link_sub/created", CREAT, MAGIC, Open("sub/created")),
            case("link_sub/created", EXCL, MAGIC, Open("sub/created")),
            case("link_sub/created", CREAT, NOSYM, E(eloop)),
            case("sub/deeper/../created", CREAT, MAGIC, Open("sub/created")),
            case("sub/link_parent/created", CREAT, MAGIC, Open("created")),
            case("dangling", R, MAGIC, E(enoent)),
            case("dangling", CREAT, MAGIC, Open("newfile")),
            case("dangling", EXCL, MAGIC, E(eexist)),
            case("dangling", CREAT | NOFOLLOW, MAGIC, E(eloop)),
            case("dangling", CREAT, NOSYM, E(eloop)),
            case("dangling_deep", CREAT, MAGIC, E(enoent)),
            case("dangling_slash", CREAT, MAGIC, E(eisdir)),
            case("dangling_slash", R, MAGIC, E(enoent)),
            case("dangling_escape", CREAT, MAGIC, E(exdev)),
            case("dangling_abs", CREAT, MAGIC, E(exdev)),
            case("escape", CREAT, MAGIC, E(exdev)),
            case("link_file", CREAT, MAGIC, Open("file")),
            case("link_file", EXCL, MAGIC, E(eexist)),
            case("link_sub", CREAT, MAGIC, E(eisdir)),
            case("file", EXCL, MAGIC, E(eexist)),
            case("new/", CREAT, MAGIC, E(eisdir)),
            case("sub/", CREAT, MAGIC, E(eisdir)),
            case("sub", libc::O_CREAT, MAGIC, E(eisdir)),
            case(".", libc::O_CREAT, MAGIC, E(eisdir)),
            case(".", libc::O_CREAT | libc::O_EXCL, MAGIC, E(eexist)),
            case("sub/..", libc::O_CREAT, MAGIC, E(eisdir)),
            case("missing/new", CREAT, MAGIC, E(enoent)),
            case("file/new", CREAT, MAGIC, E(enotdir)),
            // O_TMPFILE.
            case("link_sub", libc::O_TMPFILE | W, MAGIC, Unnamed),
            case(".", libc::O_TMPFILE | libc::O_RDWR, MAGIC, Unnamed),
            case("file", libc::O_TMPFILE | W, MAGIC, E(enotdir)),
            case("escape_dir", libc::O_TMPFILE | W, MAGIC, E(exdev)),
            case("link_sub", libc::O_TMPFILE | R, MAGIC, E(einval)),
            // Arguments openat2 refuses.
            case("file", CREAT | DIR, MAGIC, E(einval)),
            case("file", PATH | libc::O_RDWR, MAGIC, E(einval)),
            case("file", PATH | libc::O_CREAT, MAGIC, E(einval)),
            case("file", R, BENEATH | 0x80, E(einval)),
            case("file", R, BENEATH | IN_ROOT, E(einval)),
            // Search permission (only refused when not root).
            case("noexec", R, MAGIC, Open("noexec")),
            case("noexec/", R, MAGIC, Open("noexec")),
            case("noexec/secret", R, MAGIC, AsKernel),
            case("noexec/.", R, MAGIC, AsKernel),
            case("noexec/..", R, MAGIC, AsKernel),
            case("noexec/./secret", R, MAGIC, AsKernel),
        ];
        // A mode without O_CREAT, and mode bits beyond the permissions.
        v.push(Case {
            mode: 0o644,
            ..case("file", R, MAGIC, E(einval))
        });
        v.push(Case {
            mode: 0o100644,
            ..case("new", CREAT, MAGIC, E(einval))
        });
        v.push(Case {
            mode: 0o4755,
            ..case("new", CREAT, MAGIC, Open("new"))
        });
        v
    }

    #[test]
    fn matches_the_kernel_openat2() {
        let mut failures = Vec::new();
        let mut kernel_compared = 0;
        for c in cases() {
            let what = format!(
                "{:?} flags {:#o} mode {:#o} resolve {:#x}",
                c.path, c.flags, c.mode, c.resolve
            );
            let path = CString::new(c.path).unwrap();
            let ours_tree = Scratch::tree("ours");
            let root = open_root(&ours_tree.root());
            let r = openat_beneath(root.as_fd(), &path, c.flags, c.mode, c.resolve);
            if let Ok(fd) = &r {
                // SAFETY: F_GETFD on a descriptor we own.
                let fd_flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) };
                assert_eq!(fd_flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC, "{what}");
            }
            let ours = outcome(&ours_tree, r);
            ours_tree.assert_outside_untouched();
            let expected = match c.expect {
                Expect::Open(p) => Some(Outcome::Opened(p.to_string())),
                Expect::Unnamed => Some(Outcome::Opened("<unnamed>".to_string())),
                Expect::Err(e) => Some(Outcome::Failed(e)),
                Expect::AsKernel => None,
            };
            if let Some(expected) = &expected {
                if &ours != expected {
                    failures.push(format!("{what}: got {ours:?}, expected {expected:?}"));
                }
            }

            let kernel_tree = Scratch::tree("kernel");
            let root = open_root(&kernel_tree.root());
            let r = kernel_openat2(root.as_fd(), &path, c.flags, c.mode, c.resolve);
            if matches!(&r, Err(e) if e.raw_os_error() == Some(libc::ENOSYS)) {
                continue;
            }
            kernel_compared += 1;
            let kernel = outcome(&kernel_tree, r);
            if kernel != ours {
                failures.push(format!("{what}: got {ours:?}, the kernel {kernel:?}"));
            }
            if kernel_tree.listing() != ours_tree.listing() {
                failures.push(format!(
                    "{what}: the trees differ afterwards:\n  ours   {:?}\n  kernel {:?}",
                    ours_tree.listing(),
                    kernel_tree.listing()
                ));
            }
        }
        if kernel_compared == 0 {
            eprintln!("openat2 is unavailable here: checked the expectations only");
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    /// A root inside /proc: the magic links there are refused (EXDEV from their absolute text,
    /// ENOENT for a pseudo-name like `pipe:[…]`), ordinary /proc symlinks still work.
    #[test]
    fn proc_magic_links_are_not_jumped_through() {
        let s = Scratch::tree("proc");
        let file = fs::File::open(s.root().join("file")).unwrap();
        let (pipe_r, _pipe_w) = {
            let mut fds = [0; 2];
            // SAFETY: `fds` has room for the two descriptors pipe2 writes.
            assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
            // SAFETY: both descriptors are new and ours.
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
        };
        let proc_fd = open_root(Path::new("/proc/self/fd"));
        let proc_self = open_root(Path::new("/proc/self"));
        let proc = open_root(Path::new("/proc"));
        let file_fd = CString::new(file.as_raw_fd().to_string()).unwrap();
        let pipe_fd = CString::new(pipe_r.as_raw_fd().to_string()).unwrap();
        let in_fd = CString::new(format!("fd/{}", file.as_raw_fd())).unwrap();
        let cases: [(&BorrowedFd<'_>, &CStr, i32); 5] = [
            (&proc_fd.as_fd(), &file_fd, libc::EXDEV),
            (&proc_fd.as_fd(), &pipe_fd, libc::ENOENT),
            (&proc_self.as_fd(), &in_fd, libc::EXDEV),
            (&proc_self.as_fd(), c"cwd/file", libc::EXDEV),
            (&proc_self.as_fd(), c"root/etc/passwd", libc::EXDEV),
        ];
        for (dir, path, errno) in cases {
            for resolve in [BENEATH, MAGIC] {
                for flags in [R, PATH] {
                    let r = openat_beneath(*dir, path, flags, 0, resolve);
                    assert_eq!(r.unwrap_err().raw_os_error(), Some(errno), "{path:?}");
                    match kernel_openat2(*dir, path, flags, 0, resolve) {
                        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {}
                        Err(e) => {
                            let want = if resolve == MAGIC {
                                libc::ELOOP
                            } else {
                                libc::EXDEV
                            };
                            assert_eq!(e.raw_os_error(), Some(want), "{path:?}");
                        }
                        Ok(_) => panic!("the kernel opened {path:?}"),
                    }
                }
                // Not following the final magic link is fine, as for the kernel.
                openat_beneath(*dir, path, PATH | NOFOLLOW, 0, resolve)
                    .map(drop)
                    .or_else(|e| match e.raw_os_error() {
                        // An intermediate magic link (`cwd/`, `root/`) is still refused.
                        Some(libc::EXDEV) if path.to_bytes().contains(&b'/') => Ok(()),
                        _ => Err(e),
                    })
                    .unwrap();
            }
        }
        // Ordinary /proc symlinks (`self` -> "<pid>") are followed like any other.
        let ours = openat_beneath(proc.as_fd(), c"self/status", R, 0, MAGIC).unwrap();
        let st = fstat(ours.as_fd()).unwrap();
        let md = fs::metadata(format!("/proc/{}/status", std::process::id())).unwrap();
        assert_eq!((st.st_dev, st.st_ino), (md.dev(), md.ino()));
    }

    /// Kernel limits on the path itself.
    #[test]
    fn long_paths() {
        let s = Scratch::tree("long");
        let root = open_root(&s.root());
        let too_long = CString::new("a/".repeat(2048)).unwrap();
        let r = openat_beneath(root.as_fd(), &too_long, R, 0, MAGIC);
        assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::ENAMETOOLONG));
        let long_name = CString::new("x".repeat(256)).unwrap();
        let r = openat_beneath(root.as_fd(), &long_name, R, 0, MAGIC);
        assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::ENAMETOOLONG));
        let many_dots = CString::new(format!("{}file", "./".repeat(2000))).unwrap();
        let ours = openat_beneath(root.as_fd(), &many_dots, R, 0, MAGIC).unwrap();
        assert_eq!(s.identify(ours.as_fd()), "file");
        for path in [&too_long, &long_name, &many_dots] {
            match kernel_openat2(root.as_fd(), path, R, 0, MAGIC) {
                Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {}
                Err(e) => assert_eq!(e.raw_os_error(), Some(libc::ENAMETOOLONG)),
                Ok(fd) => assert_eq!(s.identify(fd.as_fd()), "file"),
            }
        }
    }

    /// A root opened for reading (not O_PATH) works the same, and so does the access mode.
    #[test]
    fn plain_directory_root_and_access_mode() {
        let s = Scratch::tree("plain");
        let root = fs::File::open(s.root()).unwrap();
        let fd = openat_beneath(root.as_fd(), c"link_sub/../file", libc::O_RDWR, 0, MAGIC).unwrap();
        assert_eq!(s.identify(fd.as_fd()), "file");
        // SAFETY: F_GETFL on a descriptor we own.
        let fl = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
        assert_eq!(fl & libc::O_ACCMODE, libc::O_RDWR);
        let mut text = String::new();
        io::Read::read_to_string(&mut fs::File::from(fd), &mut text).unwrap();
        assert_eq!(text, "hello");
        // A file as the root: nothing resolves below it.
        let file = fs::File::open(s.root().join("file")).unwrap();
        for path in [c".", c"x", c".."] {
            let r = openat_beneath(file.as_fd(), path, R, 0, MAGIC);
            assert_eq!(
                r.unwrap_err().raw_os_error(),
                Some(libc::ENOTDIR),
                "{path:?}"
            );
        }
    }

    /// `RENAME_EXCHANGE` of `a` and `b` in `dir`; false if the file system cannot.
    fn exchange(dir: &Path, a: &str, b: &str) -> bool {
        let a = CString::new(dir.join(a).as_os_str().as_bytes()).unwrap();
        let b = CString::new(dir.join(b).as_os_str().as_bytes()).unwrap();
        // SAFETY: both paths are NUL-terminated; the call only reads them.
        let r = unsafe {
            libc::syscall(
                libc::SYS_renameat2,
                libc::AT_FDCWD,
                a.as_ptr(),
                libc::AT_FDCWD,
                b.as_ptr(),
                libc::RENAME_EXCHANGE,
            )
        };
        r == 0
    }

    /// Entries keep flipping between a directory or file inside and a symlink leading
    /// outside; every open either fails or opens something inside.
    #[test]
    fn swapped_in_symlinks_never_escape() {
        let s = Scratch::tree("race");
        let root_path = s.root();
        fs::create_dir(root_path.join("flip")).unwrap();
        fs::write(root_path.join("flip/target"), "inside").unwrap();
        symlink("../outside_dir", root_path.join("flip_alt")).unwrap();
        fs::write(root_path.join("flipf"), "inside").unwrap();
        symlink("../outside", root_path.join("flipf_alt")).unwrap();
        if !exchange(&root_path, "flip", "flip_alt") {
            eprintln!("RENAME_EXCHANGE unsupported here: race test skipped");
            return;
        }
        let outside: HashSet<(u64, u64)> = [
            s.base.clone(),
            s.base.join("outside"),
            s.base.join("outside_dir"),
            s.base.join("outside_dir/target"),
        ]
        .iter()
        .map(|p| {
            let md = fs::symlink_metadata(p).unwrap();
            (md.dev(), md.ino())
        })
        .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let swapper = {
            let stop = stop.clone();
            let root_path = root_path.clone();
            std::thread::spawn(move || {
                let mut swaps = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    exchange(&root_path, "flip", "flip_alt");
                    exchange(&root_path, "flipf", "flipf_alt");
                    swaps += 1;
                }
                swaps
            })
        };
        let root = open_root(&root_path);
        let paths = [
            c"flip/target",
            c"flip/",
            c"flip/../outside",
            c"flip/../outside_dir/target",
            c"flipf",
            c"sub/../flipf",
        ];
        let (mut opened, mut refused) = (0u64, 0u64);
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(1500);
        while std::time::Instant::now() < deadline {
            for path in paths {
                for flags in [R, PATH, CREAT] {
                    match openat_beneath(root.as_fd(), path, flags, mode_for(flags), MAGIC) {
                        Ok(fd) => {
                            let st = fstat(fd.as_fd()).unwrap();
                            assert!(
                                !outside.contains(&(st.st_dev, st.st_ino)),
                                "{path:?} with flags {flags:#o} escaped the root"
                            );
                            opened += 1;
                        }
                        Err(_) => refused += 1,
                    }
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
        let swaps = swapper.join().unwrap();
        eprintln!("{swaps} swaps, {opened} opens inside, {refused} refused");
        assert!(opened > 0 && refused > 0);
        s.assert_outside_untouched();
    }

    fn mode_for(flags: libc::c_int) -> u32 {
        if flags & libc::O_CREAT != 0 {
            0o600
        } else {
            0
        }
    }
}
