//! Sandbox types and the template root file systems they start from.
//!
//! A template named `t` lives at `<templates_dir>/t/rootfs`; it is read-only once built (a
//! backend mounts it as the lower layer of each box's root). A template is complete only when
//! `<templates_dir>/t/ready` exists, so a half-built template is never used. A box is started
//! on a tree pinned by [`Templates::pin`], so that a rebuild's clean-up leaves it in place for
//! as long as the box lives.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A hold on the template tree a sandbox's box was started from, for as long as the box
/// lives: a shared `flock` on the tree's directory. A rebuild renames the tree it replaces to
/// `.retired-<name>-…` (the lock goes with the directory), and `sandboxd template build`
/// removes a retired tree only when it can lock it exclusively, that is when no server on the
/// machine holds it for a box (`sandboxd_template::prune_retired`).
#[derive(Debug)]
pub struct TreePin {
    _dir: File,
}

/// Finds templates on disk.
#[derive(Debug, Clone)]
pub struct Templates {
    dir: PathBuf,
}

impl Templates {
    /// Templates under `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Templates { dir: dir.into() }
    }

    /// The directory holding all templates.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether `name` is a well-formed template name.
    pub fn valid_name(name: &str) -> bool {
        !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    }

    /// The root file system of a ready template, if installed.
    pub fn rootfs(&self, name: &str) -> Option<PathBuf> {
        if !Self::valid_name(name) {
            return None;
        }
        let t = self.dir.join(name);
        t.join("ready").exists().then(|| t.join("rootfs"))
    }

    /// [`Templates::rootfs`], and a [`TreePin`] on the tree it is in, to be kept while a box
    /// uses it. `None` when the template is not installed (or a rebuild kept swapping it while
    /// it was being pinned).
    pub fn pin(&self, name: &str) -> Option<(PathBuf, TreePin)> {
        if !Self::valid_name(name) {
            return None;
        }
        let t = self.dir.join(name);
        // A rebuild may swap the tree between the open and the lock: the pin must be on the
        // tree the path names, so the path is looked at again under the lock.
        for _ in 0..3 {
            let dir = File::open(&t).ok()?;
            // SAFETY: `dir` is an open descriptor for the duration of the call.
            if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } != 0 {
                // Only a removal of a retired tree locks exclusively: the name has moved on.
                continue;
            }
            let (Ok(held), Ok(named)) = (dir.metadata(), std::fs::metadata(&t)) else {
                return None;
            };
            if (held.dev(), held.ino()) != (named.dev(), named.ino()) {
                continue;
            }
            return t
                .join("ready")
                .exists()
                .then(|| (t.join("rootfs"), TreePin { _dir: dir }));
        }
        None
    }

    /// Names of all ready templates, sorted.
    pub fn list(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| self.rootfs(n).is_some())
            .collect();
        names.sort();
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ready_templates_are_found() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("base/rootfs")).unwrap();
        std::fs::create_dir_all(d.path().join("half/rootfs")).unwrap();
        std::fs::write(d.path().join("base/ready"), "").unwrap();
        let t = Templates::new(d.path());
        assert_eq!(t.rootfs("base"), Some(d.path().join("base/rootfs")));
        assert_eq!(t.rootfs("half"), None);
        assert_eq!(t.rootfs("../base"), None);
        assert_eq!(t.list(), vec!["base".to_string()]);
        assert_eq!(t.pin("half").map(|p| p.0), None);
        assert_eq!(t.pin("../base").map(|p| p.0), None);
    }

    #[test]
    fn a_pin_holds_a_shared_lock_on_the_tree_even_after_it_is_renamed() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("base/rootfs")).unwrap();
        std::fs::write(d.path().join("base/ready"), "").unwrap();
        let t = Templates::new(d.path());
        let (rootfs, pin) = t.pin("base").unwrap();
        assert_eq!(rootfs, d.path().join("base/rootfs"));
        let (_, second) = t.pin("base").unwrap();
        // What a rebuild does to it, and what the removal of retired trees then tries.
        let retired = d.path().join(".retired-base-1-1");
        std::fs::rename(d.path().join("base"), &retired).unwrap();
        let exclusive = || {
            let f = File::open(&retired).unwrap();
            // SAFETY: `f` is an open descriptor for the duration of the call.
            unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
        };
        assert!(!exclusive());
        drop(pin);
        assert!(!exclusive(), "the other pin still holds it");
        drop(second);
        assert!(exclusive());
        assert!(t.pin("base").is_none(), "nothing is named base any more");
    }
}
