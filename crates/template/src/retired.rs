//! Trees a rebuild retired (`<templates_dir>/.retired-<name>-<time>-<pid>`), removed once no box
//! uses them.
//!
//! Whoever starts a box from a template holds a shared `flock` on the template's directory for
//! as long as the box lives (`sandboxd_core::templates::TreePin`). A rebuild renames that
//! directory to its retired name, and the lock, which belongs to the directory, goes with it.
//! So a retired tree whose directory can be locked exclusively is used by no box of any server
//! on this machine. Its `ready` marker goes first: a box start that opened the tree just before
//! the rebuild retired it finds it unusable once it holds its lock, and takes the new tree.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::fsutil;

/// What [`prune_retired`] did.
#[derive(Debug, Default)]
pub struct Pruned {
    /// Retired trees removed.
    pub removed: Vec<PathBuf>,
    /// Retired trees kept: a box still runs on each.
    pub in_use: Vec<PathBuf>,
    /// Retired trees that could not be looked at or removed, and why.
    pub failed: Vec<(PathBuf, String)>,
}

/// Whether a directory entry's name is that of a retired tree.
fn is_retired(name: &str) -> bool {
    name.strip_prefix(".retired-")
        .is_some_and(|rest| !rest.is_empty())
}

/// Remove every retired tree under `templates_dir` that no box uses (see the module docs).
/// Blocking: a tree of the `base` template is tens of thousands of files.
pub fn prune_retired(templates_dir: &Path) -> Pruned {
    let mut out = Pruned::default();
    let Ok(entries) = std::fs::read_dir(templates_dir) else {
        return out;
    };
    let mut trees: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_name().to_str().is_some_and(is_retired))
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    trees.sort();
    for tree in trees {
        match prune_one(&tree) {
            Ok(true) => out.removed.push(tree),
            Ok(false) => out.in_use.push(tree),
            Err(e) => out.failed.push((tree, e.to_string())),
        }
    }
    out
}

/// Remove `tree` unless a box holds it; whether it was removed.
fn prune_one(tree: &Path) -> Result<bool, crate::TemplateError> {
    let dir = File::open(tree)
        .map_err(|e| crate::TemplateError::io(format!("opening {}", tree.display()), e))?;
    // SAFETY: `dir` is an open descriptor for the duration of the call.
    let rc = unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Ok(false);
        }
        return Err(crate::TemplateError::io(
            format!("locking {}", tree.display()),
            err,
        ));
    }
    match std::fs::remove_file(tree.join("ready")) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return Err(crate::TemplateError::io(
                format!("removing {}", tree.join("ready").display()),
                e,
            ))
        }
        _ => {}
    }
    // Removed while locked: a box start that opened it meanwhile waits for the lock, then
    // finds no `ready`.
    fsutil::remove_tree(tree)?;
    drop(dir);
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(dir: &Path, name: &str) -> PathBuf {
        let t = dir.join(name);
        std::fs::create_dir_all(t.join("rootfs/usr/bin")).unwrap();
        std::fs::write(t.join("rootfs/usr/bin/echo"), "x").unwrap();
        std::fs::write(t.join("ready"), "").unwrap();
        t
    }

    fn shared_lock(path: &Path) -> File {
        let f = File::open(path).unwrap();
        // SAFETY: `f` is an open descriptor for the duration of the call.
        assert_eq!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH) }, 0);
        f
    }

    #[test]
    fn removes_the_retired_trees_no_box_holds_and_nothing_else() {
        let d = tempfile::tempdir().unwrap();
        let current = tree(d.path(), "base");
        let free = tree(d.path(), ".retired-base-100-1");
        let held = tree(d.path(), ".retired-base-200-2");
        let building = tree(d.path(), ".build-base-3");
        // A box started before the rebuild holds the tree, which has been renamed since.
        let _pin = shared_lock(&held);
        let _current_pin = shared_lock(&current);

        let pruned = prune_retired(d.path());
        assert_eq!(pruned.removed, vec![free.clone()]);
        assert_eq!(pruned.in_use, vec![held.clone()]);
        assert!(pruned.failed.is_empty(), "{:?}", pruned.failed);
        assert!(!free.exists());
        assert!(held.join("ready").exists() && held.join("rootfs/usr/bin/echo").exists());
        assert!(current.join("ready").exists());
        assert!(building.exists(), "not a retired tree");

        drop(_pin);
        let pruned = prune_retired(d.path());
        assert_eq!(pruned.removed, vec![held.clone()]);
        assert!(!held.exists());
        assert!(current.join("rootfs/usr/bin/echo").exists());
    }

    #[test]
    fn retired_names() {
        assert!(is_retired(".retired-base-1-2"));
        assert!(!is_retired(".retired-"));
        assert!(!is_retired("base"));
        assert!(!is_retired(".build-base-1"));
    }
}
