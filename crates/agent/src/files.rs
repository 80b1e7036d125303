//! The file API, confined to one directory tree by the kernel.
//!
//! Every request first turns its path into a list of plain components below the root
//! ([`Files::resolve`]): relative paths are taken from the root, absolute paths must start
//! with the root's own path, and `..` is applied lexically and may not climb above the root.
//! That alone cannot stop symlinks, so every descriptor is then opened with `openat2(2)`
//! relative to a descriptor of the root, with `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS`: the
//! kernel itself refuses (`EXDEV`) any resolution that would leave the root, at the moment of
//! the lookup, so a concurrent `ln -s /etc x` cannot win a race against a check. Operations on
//! a final component (mkdir, rename, unlink, stat, readlink) open its parent that way and use
//! the `*at` system calls relative to it, without following the final component. Recursive
//! walks (listing, recursive removal) never follow symlinks at all.
//!
//! Where the kernel has no `openat2` (gVisor, Linux before 5.6), [`crate::sys::openat2`]
//! resolves the path in user space with the same rules ([`crate::beneath`]).
//!
//! Consequence worth knowing: an *absolute* symlink is never followed, even one that names a
//! place inside the root (`/workspace/a -> /workspace/b`), because the kernel resolves it
//! against the real `/`. Relative symlinks that stay inside the root work everywhere.

use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sandboxd_protocol::{AgentError, AgentErrorKind, Entry, EntryKind};

use crate::sys;

/// Largest piece of a file sent in one [`sandboxd_protocol::Response::Data`] frame.
pub const READ_CHUNK: usize = 1 << 20;

/// Most entries one listing may return; beyond that the answer would not fit a frame header.
pub const MAX_LIST_ENTRIES: usize = 5000;

/// Deepest listing honoured; deeper requests are clamped (each level holds a descriptor).
pub const MAX_LIST_DEPTH: u32 = 64;

const RESOLVE: u64 = sys::RESOLVE_BENEATH | sys::RESOLVE_NO_MAGICLINKS;
/// For walking a tree we already hold: one component at a time, never through a symlink.
const RESOLVE_WALK: u64 = sys::RESOLVE_BENEATH | sys::RESOLVE_NO_SYMLINKS;
/// How many symlinks a write may pass through to reach its real target.
const MAX_WRITE_HOPS: usize = 40;

fn agent_error(kind: AgentErrorKind, message: impl Into<String>) -> AgentError {
    AgentError {
        kind,
        message: message.into(),
    }
}

/// Map an error of an operation on an already confined descriptor.
fn map_errno(e: io::Error, op: &str, shown: &str) -> AgentError {
    let kind = match e.raw_os_error() {
        Some(libc::ENOENT) => AgentErrorKind::NotFound,
        Some(libc::EEXIST) => AgentErrorKind::AlreadyExists,
        Some(libc::ENOTDIR | libc::EISDIR | libc::ENOTEMPTY) => AgentErrorKind::WrongKind,
        Some(libc::ENOSPC | libc::EDQUOT) => AgentErrorKind::NoSpace,
        _ => AgentErrorKind::Io,
    };
    let what = match e.raw_os_error() {
        Some(libc::ENOENT) => "no such file or directory".to_string(),
        Some(libc::EEXIST) => "already exists".to_string(),
        Some(libc::ENOTDIR) => "a path component is not a directory".to_string(),
        Some(libc::EISDIR) => "is a directory".to_string(),
        Some(libc::ENOTEMPTY) => "directory not empty".to_string(),
        Some(libc::EXDEV) => "cannot move across file systems".to_string(),
        Some(libc::ENOSPC) => "no space left on the device (the disk is full)".to_string(),
        Some(libc::EDQUOT) => "the disk quota is used up".to_string(),
        _ => e.to_string(),
    };
    agent_error(kind, format!("{op} {shown}: {what}"))
}

/// Map an error of `openat2` under the root, where `EXDEV` means the kernel caught an escape.
fn map_open_err(e: io::Error, op: &str, shown: &str, root: &str) -> AgentError {
    match e.raw_os_error() {
        Some(libc::EXDEV) => agent_error(
            AgentErrorKind::PathOutsideSandbox,
            format!("{op} {shown}: the path leads outside {root} (through `..`, an absolute symlink or a symlink pointing outside)"),
        ),
        Some(libc::ELOOP) => agent_error(
            AgentErrorKind::PathOutsideSandbox,
            format!("{op} {shown}: too many symlinks, or a /proc magic link, which the file API does not follow"),
        ),
        _ => map_errno(e, op, shown),
    }
}

fn kind_of(mode: libc::mode_t) -> EntryKind {
    match mode & libc::S_IFMT {
        libc::S_IFREG => EntryKind::File,
        libc::S_IFDIR => EntryKind::Dir,
        libc::S_IFLNK => EntryKind::Symlink,
        _ => EntryKind::Other,
    }
}

fn is_dir(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

/// Lexically normalise `path`: drop empty and `.` components, apply `..`. For a relative path
/// `None` means `..` climbed above the start; for an absolute path `..` stops at `/`.
fn normalize(path: &str) -> Option<Vec<&str>> {
    let absolute = path.starts_with('/');
    let mut out: Vec<&str> = Vec::new();
    for comp in path.split('/') {
        match comp {
            "" | "." => {}
            ".." => {
                if out.pop().is_none() && !absolute {
                    return None;
                }
            }
            c => out.push(c),
        }
    }
    Some(out)
}

fn join(comps: &[String]) -> String {
    if comps.is_empty() {
        ".".to_string()
    } else {
        comps.join("/")
    }
}

/// The confined file API over one root directory.
#[derive(Debug, Clone)]
pub struct Files {
    root: PathBuf,
    /// The root as shown in entries and accepted in absolute paths: absolute, normalised, no
    /// trailing slash (except for `/` itself).
    display: String,
    display_comps: Vec<String>,
}

/// Failure of [`Files::read_file`].
#[derive(Debug)]
pub enum ReadFileError {
    /// The request failed; answer with this error.
    Agent(AgentError),
    /// The sink (the connection) failed; give up on the connection.
    Sink(io::Error),
}

impl Files {
    /// A file API confined to `root`.
    pub fn new(root: &Path) -> Files {
        let abs = std::path::absolute(root).unwrap_or_else(|_| root.to_path_buf());
        let text = abs.to_string_lossy().into_owned();
        let display_comps: Vec<String> = normalize(&text)
            .unwrap_or_default()
            .into_iter()
            .map(str::to_string)
            .collect();
        let display = format!("/{}", display_comps.join("/"));
        Files {
            root: abs,
            display,
            display_comps,
        }
    }

    /// The root as shown to the host (absolute, normalised).
    pub fn root_display(&self) -> &str {
        &self.display
    }

    /// Turn a request path into normalised components below the root. `""`, `"."` and the
    /// root's own absolute path name the root (an empty list).
    pub fn resolve(&self, path: &str) -> Result<Vec<String>, AgentError> {
        if path.contains('\0') {
            return Err(agent_error(
                AgentErrorKind::InvalidRequest,
                format!("path {path:?} contains a NUL byte"),
            ));
        }
        let outside = || {
            agent_error(
                AgentErrorKind::PathOutsideSandbox,
                format!(
                    "path {path:?} is outside the sandbox's file root {}",
                    self.display
                ),
            )
        };
        let comps = normalize(path).ok_or_else(outside)?;
        if path.starts_with('/') {
            if comps.len() < self.display_comps.len()
                || comps
                    .iter()
                    .zip(&self.display_comps)
                    .any(|(a, b)| *a != b.as_str())
            {
                return Err(outside());
            }
            Ok(comps[self.display_comps.len()..]
                .iter()
                .map(|c| c.to_string())
                .collect())
        } else {
            Ok(comps.into_iter().map(str::to_string).collect())
        }
    }

    /// Absolute in-sandbox path of `rel`.
    fn shown(&self, rel: &[String]) -> String {
        if rel.is_empty() {
            self.display.clone()
        } else if self.display == "/" {
            format!("/{}", rel.join("/"))
        } else {
            format!("{}/{}", self.display, rel.join("/"))
        }
    }

    fn open_root(&self) -> Result<OwnedFd, AgentError> {
        sys::open_dir_path(&self.root).map_err(|e| {
            let mut err = map_errno(e, "open file root", &self.display);
            err.message
                .push_str(" (the sandbox's file root is unavailable)");
            err
        })
    }

    /// Open `rel` beneath the root with `flags`, following symlinks that stay inside.
    fn open_beneath(
        &self,
        root: BorrowedFd<'_>,
        rel: &[String],
        flags: libc::c_int,
        op: &str,
    ) -> Result<OwnedFd, AgentError> {
        let shown = self.shown(rel);
        let c = sys::cstring(&join(rel)).map_err(|e| map_errno(e, op, &shown))?;
        sys::openat2(root, &c, flags, 0, RESOLVE)
            .map_err(|e| map_open_err(e, op, &shown, &self.display))
    }

    /// Open the directory containing the last component of (non-empty) `rel`, returning it
    /// with that component's name.
    fn open_parent(
        &self,
        root: BorrowedFd<'_>,
        rel: &[String],
        op: &str,
    ) -> Result<(OwnedFd, CString), AgentError> {
        let (name, parent) = rel.split_last().expect("non-empty path");
        let dir = self
            .open_beneath(root, parent, libc::O_PATH | libc::O_DIRECTORY, op)
            .map_err(|mut e| {
                if e.kind == AgentErrorKind::NotFound {
                    e.message =
                        format!("{op} {}: parent directory does not exist", self.shown(rel));
                }
                e
            })?;
        let c = sys::cstring(name).map_err(|e| map_errno(e, op, &self.shown(rel)))?;
        Ok((dir, c))
    }

    /// Create the directories of `rel` that are missing, like `mkdir -p`, each with `mkdirat`
    /// under its confined parent. Returns a descriptor of the last one and whether it was
    /// created by this call.
    fn mkdir_p(
        &self,
        root: BorrowedFd<'_>,
        rel: &[String],
        op: &str,
    ) -> Result<(OwnedFd, bool), AgentError> {
        let dir_flags = libc::O_PATH | libc::O_DIRECTORY;
        match self.open_beneath(root, rel, dir_flags, op) {
            Ok(fd) => return Ok((fd, false)),
            Err(e) if e.kind == AgentErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let mut created = false;
        let mut fd = None;
        for i in 1..=rel.len() {
            match self.open_beneath(root, &rel[..i], dir_flags, op) {
                Ok(d) => {
                    created = false;
                    fd = Some(d);
                    continue;
                }
                Err(e) if e.kind == AgentErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            let (parent, name) = self.open_parent(root, &rel[..i], op)?;
            created = match sys::mkdirat(parent.as_fd(), &name, 0o755) {
                Ok(()) => true,
                // Someone else made it meanwhile: fine, it is what we wanted.
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => false,
                Err(e) => return Err(map_errno(e, op, &self.shown(&rel[..i]))),
            };
            fd = Some(self.open_beneath(root, &rel[..i], dir_flags, op)?);
        }
        match fd {
            Some(fd) => Ok((fd, created)),
            None => Ok((self.open_beneath(root, rel, dir_flags, op)?, false)),
        }
    }

    fn entry(&self, rel: &[String], st: &libc::stat, target: Option<String>) -> Entry {
        let name = rel
            .last()
            .cloned()
            .or_else(|| self.display_comps.last().cloned())
            .unwrap_or_else(|| "/".to_string());
        Entry {
            path: self.shown(rel),
            name,
            kind: kind_of(st.st_mode),
            size: st.st_size as u64,
            mode: st.st_mode & 0o7777,
            mtime_ms: st.st_mtime * 1000 + st.st_mtime_nsec / 1_000_000,
            target,
        }
    }

    /// Describe `name` in `dir` (not following a final symlink).
    fn entry_at(
        &self,
        dir: BorrowedFd<'_>,
        name: &CStr,
        rel: &[String],
        op: &str,
    ) -> Result<Entry, AgentError> {
        let st = sys::fstatat(dir, name).map_err(|e| map_errno(e, op, &self.shown(rel)))?;
        let target = if kind_of(st.st_mode) == EntryKind::Symlink {
            sys::readlinkat(dir, name)
                .ok()
                .map(|t| t.to_string_lossy().into_owned())
        } else {
            None
        };
        Ok(self.entry(rel, &st, target))
    }

    /// Describe one path without following a final symlink.
    pub fn stat(&self, path: &str) -> Result<Entry, AgentError> {
        let rel = self.resolve(path)?;
        let root = self.open_root()?;
        if rel.is_empty() {
            let st = sys::fstat(root.as_fd()).map_err(|e| map_errno(e, "stat", &self.display))?;
            return Ok(self.entry(&rel, &st, None));
        }
        let (dir, name) = self.open_parent(root.as_fd(), &rel, "stat")?;
        self.entry_at(dir.as_fd(), &name, &rel, "stat")
    }

    /// List a directory, `depth` levels deep (1 = its own entries), parents before children,
    /// siblings sorted by name. Symlinked directories are listed as symlinks, not entered.
    pub fn list_dir(&self, path: &str, depth: u32) -> Result<Vec<Entry>, AgentError> {
        let rel = self.resolve(path)?;
        let root = self.open_root()?;
        let dir = self.open_beneath(
            root.as_fd(),
            &rel,
            libc::O_RDONLY | libc::O_DIRECTORY,
            "list",
        )?;
        let mut out = Vec::new();
        self.walk(dir, &rel, depth.clamp(1, MAX_LIST_DEPTH), &mut out)?;
        Ok(out)
    }

    fn walk(
        &self,
        dir: OwnedFd,
        rel: &[String],
        depth: u32,
        out: &mut Vec<Entry>,
    ) -> Result<(), AgentError> {
        let shown = self.shown(rel);
        let reader = dir.try_clone().map_err(|e| map_errno(e, "list", &shown))?;
        let mut names = sys::read_dir_names(reader).map_err(|e| map_errno(e, "list", &shown))?;
        names.sort();
        for name in names {
            let cname = CString::new(name.as_bytes()).expect("directory entries have no NUL");
            let mut child_rel = rel.to_vec();
            child_rel.push(name.to_string_lossy().into_owned());
            let entry = match self.entry_at(dir.as_fd(), &cname, &child_rel, "list") {
                Ok(e) => e,
                // Removed while we were listing: it is simply gone.
                Err(e) if e.kind == AgentErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let descend = entry.kind == EntryKind::Dir && depth > 1;
            out.push(entry);
            if out.len() > MAX_LIST_ENTRIES {
                return Err(agent_error(
                    AgentErrorKind::InvalidRequest,
                    format!(
                        "list: more than {MAX_LIST_ENTRIES} entries; list with a smaller depth or a narrower path"
                    ),
                ));
            }
            if descend {
                // An unreadable subdirectory is still listed, just not entered.
                if let Ok(sub) = sys::openat2(
                    dir.as_fd(),
                    &cname,
                    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                    0,
                    RESOLVE_WALK,
                ) {
                    self.walk(sub, &child_rel, depth - 1, out)?;
                }
            }
        }
        Ok(())
    }

    /// Create a directory. With `parents`, missing parents are created too and an existing
    /// directory is not an error. Returns whether the directory was created.
    pub fn mkdir(&self, path: &str, parents: bool) -> Result<bool, AgentError> {
        let rel = self.resolve(path)?;
        let root = self.open_root()?;
        if parents {
            return Ok(self.mkdir_p(root.as_fd(), &rel, "mkdir")?.1);
        }
        if rel.is_empty() {
            return Err(agent_error(
                AgentErrorKind::AlreadyExists,
                format!("mkdir {}: already exists", self.display),
            ));
        }
        let (dir, name) = self.open_parent(root.as_fd(), &rel, "mkdir")?;
        sys::mkdirat(dir.as_fd(), &name, 0o755)
            .map_err(|e| map_errno(e, "mkdir", &self.shown(&rel)))?;
        Ok(true)
    }

    /// Rename `from` to `to` (replacing a file at `to`, as `rename(2)` does). Returns the
    /// destination's entry.
    pub fn rename(&self, from: &str, to: &str) -> Result<Entry, AgentError> {
        let from_rel = self.resolve(from)?;
        let to_rel = self.resolve(to)?;
        if from_rel.is_empty() || to_rel.is_empty() {
            return Err(agent_error(
                AgentErrorKind::InvalidRequest,
                format!("move {from} -> {to}: the file root itself cannot be moved or replaced"),
            ));
        }
        let root = self.open_root()?;
        let (from_dir, from_name) = self.open_parent(root.as_fd(), &from_rel, "move")?;
        let (to_dir, to_name) = self.open_parent(root.as_fd(), &to_rel, "move")?;
        sys::renameat(from_dir.as_fd(), &from_name, to_dir.as_fd(), &to_name).map_err(|e| {
            map_errno(
                e,
                "move",
                &format!("{} -> {}", self.shown(&from_rel), self.shown(&to_rel)),
            )
        })?;
        self.entry_at(to_dir.as_fd(), &to_name, &to_rel, "move")
    }

    /// Remove a file, symlink or empty directory; with `recursive`, also a directory and
    /// everything below it (never following symlinks).
    pub fn remove(&self, path: &str, recursive: bool) -> Result<(), AgentError> {
        let rel = self.resolve(path)?;
        if rel.is_empty() {
            return Err(agent_error(
                AgentErrorKind::InvalidRequest,
                format!(
                    "remove {}: refusing to remove the sandbox's file root",
                    self.display
                ),
            ));
        }
        let root = self.open_root()?;
        let shown = self.shown(&rel);
        let (dir, name) = self.open_parent(root.as_fd(), &rel, "remove")?;
        let st = sys::fstatat(dir.as_fd(), &name).map_err(|e| map_errno(e, "remove", &shown))?;
        let result = if !is_dir(&st) {
            sys::unlinkat(dir.as_fd(), &name, false)
        } else if recursive {
            remove_tree(dir.as_fd(), &name)
        } else {
            sys::unlinkat(dir.as_fd(), &name, true)
        };
        result.map_err(|e| {
            let mut err = map_errno(e, "remove", &shown);
            if err.kind == AgentErrorKind::WrongKind && !recursive {
                err.message
                    .push_str(" (use recursive to remove it with its contents)");
            }
            err
        })
    }

    /// Stream a regular file to `sink` in pieces of at most [`READ_CHUNK`] bytes; the last
    /// call has `last = true` (a single empty one for an empty file).
    pub fn read_file(
        &self,
        path: &str,
        mut sink: impl FnMut(&[u8], bool) -> io::Result<()>,
    ) -> Result<(), ReadFileError> {
        let rel = self.resolve(path).map_err(ReadFileError::Agent)?;
        let shown = self.shown(&rel);
        let root = self.open_root().map_err(ReadFileError::Agent)?;
        // O_NONBLOCK so that opening a FIFO cannot hang the connection; it is refused below.
        let fd = self
            .open_beneath(
                root.as_fd(),
                &rel,
                libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY,
                "read",
            )
            .map_err(ReadFileError::Agent)?;
        let st = sys::fstat(fd.as_fd())
            .map_err(|e| ReadFileError::Agent(map_errno(e, "read", &shown)))?;
        match kind_of(st.st_mode) {
            EntryKind::File => {}
            EntryKind::Dir => {
                return Err(ReadFileError::Agent(agent_error(
                    AgentErrorKind::WrongKind,
                    format!("read {shown}: is a directory"),
                )))
            }
            _ => {
                return Err(ReadFileError::Agent(agent_error(
                    AgentErrorKind::WrongKind,
                    format!("read {shown}: not a regular file"),
                )))
            }
        }
        let mut file = File::from(fd);
        let io_err = |e: io::Error| ReadFileError::Agent(map_errno(e, "read", &shown));
        let mut cur = fill(&mut file, READ_CHUNK).map_err(io_err)?;
        loop {
            // Read one piece ahead: only then do we know whether `cur` is the last one.
            let next = if cur.len() < READ_CHUNK {
                Vec::new()
            } else {
                fill(&mut file, READ_CHUNK).map_err(io_err)?
            };
            let last = next.is_empty();
            sink(&cur, last).map_err(ReadFileError::Sink)?;
            if last {
                return Ok(());
            }
            cur = next;
        }
    }

    /// Start writing a file. Data goes to a temporary file in the target's directory, which
    /// [`FileWriter::commit`] renames over the target, so that a failed or abandoned write
    /// leaves the old contents intact. A final symlink is written through when its target
    /// stays inside the root. `mode` defaults to the existing file's mode, else 0o644.
    pub fn write_file(
        &self,
        path: &str,
        mode: Option<u32>,
        create_parents: bool,
    ) -> Result<FileWriter, AgentError> {
        let mut rel = self.resolve(path)?;
        if rel.is_empty() {
            return Err(agent_error(
                AgentErrorKind::WrongKind,
                format!("write {}: is a directory", self.display),
            ));
        }
        let root = self.open_root()?;
        let (mut dir, mut name) = if create_parents {
            let (d, _) = self.mkdir_p(root.as_fd(), &rel[..rel.len() - 1], "write")?;
            let n = sys::cstring(rel.last().expect("non-empty"))
                .map_err(|e| map_errno(e, "write", &self.shown(&rel)))?;
            (d, n)
        } else {
            self.open_parent(root.as_fd(), &rel, "write")?
        };
        let mut hops = 0;
        let existing = loop {
            let st = match sys::fstatat(dir.as_fd(), &name) {
                Ok(st) => st,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => break None,
                Err(e) => return Err(map_errno(e, "write", &self.shown(&rel))),
            };
            if kind_of(st.st_mode) != EntryKind::Symlink {
                break Some(st);
            }
            hops += 1;
            if hops > MAX_WRITE_HOPS {
                return Err(agent_error(
                    AgentErrorKind::Io,
                    format!(
                        "write {}: too many levels of symbolic links",
                        self.shown(&rel)
                    ),
                ));
            }
            (rel, dir, name) = self.follow_for_write(root.as_fd(), &rel, dir.as_fd(), &name)?;
        };
        let shown = self.shown(&rel);
        if let Some(st) = &existing {
            if is_dir(st) {
                return Err(agent_error(
                    AgentErrorKind::WrongKind,
                    format!("write {shown}: is a directory"),
                ));
            }
        }
        let mode = mode
            .or(existing.as_ref().map(|st| st.st_mode & 0o7777))
            .unwrap_or(0o644)
            & 0o7777;
        // An unnamed file where the file system can make one: a box killed in the middle of an
        // upload then leaves nothing behind, and nobody sees the half-written data under a
        // name. It gets a name only at the commit, for the rename over the old file.
        let (fd, tmp) = match sys::open_tmpfile(dir.as_fd(), 0o600)
            .map_err(|e| map_errno(e, "write", &shown))?
        {
            Some(fd) => (fd, None),
            None => {
                let tmp = temp_name();
                let fd = open_named_temp(dir.as_fd(), &tmp)
                    .map_err(|e| map_errno(e, "write", &shown))?;
                (fd, Some(tmp))
            }
        };
        let writer = FileWriter {
            file: File::from(fd),
            dir,
            tmp,
            name,
            rel,
            files: self.clone(),
            committed: false,
        };
        sys::fchmod(writer.file.as_fd(), mode).map_err(|e| map_errno(e, "write", &shown))?;
        Ok(writer)
    }

    /// One step through a symlink that a write would go through: check with the kernel that
    /// its resolution stays inside the root, then compute its target lexically (so that a
    /// dangling link inside the root can still be written through).
    fn follow_for_write(
        &self,
        root: BorrowedFd<'_>,
        rel: &[String],
        dir: BorrowedFd<'_>,
        name: &CStr,
    ) -> Result<(Vec<String>, OwnedFd, CString), AgentError> {
        let shown = self.shown(rel);
        match self.open_beneath(root, rel, libc::O_PATH, "write") {
            Ok(_) => {}
            Err(e) if e.kind == AgentErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let target = sys::readlinkat(dir, name).map_err(|e| map_errno(e, "write", &shown))?;
        let target = target.to_string_lossy();
        let outside = || {
            agent_error(
                AgentErrorKind::PathOutsideSandbox,
                format!(
                    "write {shown}: the symlink points outside {} ({target})",
                    self.display
                ),
            )
        };
        if target.starts_with('/') {
            return Err(outside());
        }
        let combined = format!("{}/{}", join(&rel[..rel.len() - 1]), target);
        let new_rel: Vec<String> = normalize(&combined)
            .ok_or_else(outside)?
            .into_iter()
            .map(str::to_string)
            .collect();
        if new_rel.is_empty() {
            return Err(agent_error(
                AgentErrorKind::WrongKind,
                format!("write {shown}: is a directory"),
            ));
        }
        let (d, n) = self.open_parent(root, &new_rel, "write")?;
        Ok((new_rel, d, n))
    }
}

/// Read until `buf` holds `max` bytes or the file ends.
fn fill(file: &mut File, max: usize) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(max);
    file.take(max as u64).read_to_end(&mut buf)?;
    Ok(buf)
}

/// Remove directory `name` in `parent` and everything below it, never following symlinks.
fn remove_tree(parent: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    let dir = sys::openat2(
        parent,
        name,
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        0,
        RESOLVE_WALK,
    )?;
    for child in sys::read_dir_names(dir.try_clone()?)? {
        let c = CString::new(OsStr::as_bytes(&child)).expect("directory entries have no NUL");
        let st = match sys::fstatat(dir.as_fd(), &c) {
            Ok(st) => st,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(e),
        };
        let r = if is_dir(&st) {
            remove_tree(dir.as_fd(), &c)
        } else {
            sys::unlinkat(dir.as_fd(), &c, false)
        };
        match r {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            other => other?,
        }
    }
    sys::unlinkat(parent, name, true)
}

/// A file being written by [`Files::write_file`]. Dropping it without
/// [`commit`](FileWriter::commit) removes the temporary file and leaves the target untouched.
pub struct FileWriter {
    file: File,
    dir: OwnedFd,
    /// The temporary name of the data, once they have one (from the start where the file
    /// system has no unnamed files).
    tmp: Option<CString>,
    name: CString,
    rel: Vec<String>,
    files: Files,
    committed: bool,
}

impl FileWriter {
    /// Append `data`.
    pub fn write(&mut self, data: &[u8]) -> Result<(), AgentError> {
        self.file
            .write_all(data)
            .map_err(|e| map_errno(e, "write", &self.files.shown(&self.rel)))
    }

    /// Move the written data into place and describe the result. The data reach the disk
    /// before the rename, so that a crash (of the sandbox or of the host) leaves either the
    /// old file or the whole new one under the name, never a short one.
    pub fn commit(mut self) -> Result<Entry, AgentError> {
        let shown = self.files.shown(&self.rel);
        // A full disk may only show here, when delayed allocation meets the disk.
        self.file
            .sync_all()
            .map_err(|e| map_errno(e, "write", &shown))?;
        let tmp = match self.tmp.clone() {
            Some(tmp) => tmp,
            None => {
                let tmp = temp_name();
                self.name_unnamed(&tmp)
                    .map_err(|e| map_errno(e, "write", &shown))?;
                tmp
            }
        };
        sys::renameat(self.dir.as_fd(), &tmp, self.dir.as_fd(), &self.name)
            .map_err(|e| map_errno(e, "write", &shown))?;
        self.committed = true;
        self.files
            .entry_at(self.dir.as_fd(), &self.name, &self.rel, "write")
    }

    /// Link the unnamed file under `tmp` (kept in `self.tmp` from then on, for `Drop`). Where
    /// linking it is refused, its data are copied to a new file of that name instead.
    fn name_unnamed(&mut self, tmp: &CStr) -> io::Result<()> {
        match sys::link_tmpfile(self.file.as_fd(), self.dir.as_fd(), tmp) {
            Ok(()) => {
                self.tmp = Some(tmp.to_owned());
                Ok(())
            }
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Err(e),
            Err(_) => {
                let named = File::from(open_named_temp(self.dir.as_fd(), tmp)?);
                self.tmp = Some(tmp.to_owned());
                let mode = sys::fstat(self.file.as_fd())?.st_mode & 0o7777;
                sys::fchmod(named.as_fd(), mode)?;
                let mut from = &self.file;
                io::Seek::seek(&mut from, io::SeekFrom::Start(0))?;
                let mut to = &named;
                io::copy(&mut from, &mut to)?;
                named.sync_all()?;
                self.file = named;
                Ok(())
            }
        }
    }
}

/// A fresh temporary name for a file being written.
fn temp_name() -> CString {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let tmp = format!(
        ".sandboxd-write-{}-{}.tmp",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    CString::new(tmp).expect("no NUL")
}

/// Create the temporary file `tmp` in `dir`, which must not exist.
fn open_named_temp(dir: BorrowedFd<'_>, tmp: &CStr) -> io::Result<OwnedFd> {
    sys::openat2(
        dir,
        tmp,
        libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOCTTY,
        0o600,
        RESOLVE_WALK,
    )
}

impl Drop for FileWriter {
    fn drop(&mut self) {
        // An unnamed file goes with its descriptor.
        if let (false, Some(tmp)) = (self.committed, &self.tmp) {
            let _ = sys::unlinkat(self.dir.as_fd(), tmp, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files() -> Files {
        Files::new(Path::new("/workspace"))
    }

    /// Where the unnamed file cannot be linked into its directory (here: made on another
    /// file system, so `linkat` fails with `EXDEV`), its data are copied to a named temporary
    /// file, which the commit renames into place with the file's mode.
    #[test]
    fn an_unnamed_file_that_cannot_be_linked_is_copied() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = std::env::temp_dir().join(format!("sbx-files-copy-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let shm = Path::new("/dev/shm");
        if std::fs::metadata(shm).map(|m| m.dev()).ok()
            == Some(std::fs::metadata(&dir).unwrap().dev())
        {
            eprintln!(
                "{} and /dev/shm are one file system: nothing to check",
                dir.display()
            );
            return;
        }
        let shm_fd = sys::open_dir_path(shm).unwrap();
        let unnamed = sys::open_tmpfile(shm_fd.as_fd(), 0o600)
            .unwrap()
            .expect("tmpfs makes unnamed files");
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let mut file = File::from(unnamed);
        file.write_all(&data).unwrap();
        sys::fchmod(file.as_fd(), 0o640).unwrap();
        let writer = FileWriter {
            file,
            dir: sys::open_dir_path(&dir).unwrap(),
            tmp: None,
            name: CString::new("target").unwrap(),
            rel: vec!["target".into()],
            files: Files::new(&dir),
            committed: false,
        };
        let entry = writer.commit().unwrap();
        assert_eq!(entry.size, data.len() as u64);
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["target"]);
        assert!(std::fs::read(dir.join("target")).unwrap() == data);
        let mode = std::fs::metadata(dir.join("target"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o640);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn resolve_accepts_paths_inside() {
        let f = files();
        assert_eq!(f.resolve("").unwrap(), Vec::<String>::new());
        assert_eq!(f.resolve(".").unwrap(), Vec::<String>::new());
        assert_eq!(f.resolve("/workspace").unwrap(), Vec::<String>::new());
        assert_eq!(f.resolve("/workspace/").unwrap(), Vec::<String>::new());
        assert_eq!(f.resolve("a/./b//c").unwrap(), ["a", "b", "c"]);
        assert_eq!(f.resolve("/workspace/a/../b").unwrap(), ["b"]);
        assert_eq!(f.resolve("a/..").unwrap(), Vec::<String>::new());
    }

    #[test]
    fn resolve_refuses_paths_outside() {
        let f = files();
        for p in [
            "..",
            "../x",
            "../../etc/passwd",
            "a/../../x",
            "/etc/passwd",
            "/workspacex/a",
            "/workspace/../etc",
            "/",
        ] {
            let e = f.resolve(p).unwrap_err();
            assert_eq!(e.kind, AgentErrorKind::PathOutsideSandbox, "{p}");
        }
        assert_eq!(
            f.resolve("a\0b").unwrap_err().kind,
            AgentErrorKind::InvalidRequest
        );
    }

    #[test]
    fn shown_paths_join_the_root() {
        let f = files();
        assert_eq!(f.shown(&["a".into(), "b".into()]), "/workspace/a/b");
        assert_eq!(f.shown(&[]), "/workspace");
        let slash = Files::new(Path::new("/"));
        assert_eq!(slash.shown(&["etc".into()]), "/etc");
        assert_eq!(slash.resolve("/etc").unwrap(), ["etc"]);
    }
}
