//! Sandbox types and the template root file systems they start from.
//!
//! A template named `t` lives at `<templates_dir>/t/rootfs`; it is read-only once built (a
//! backend mounts it as the lower layer of each box's root). A template is complete only when
//! `<templates_dir>/t/ready` exists, so a half-built template is never used.

use std::path::{Path, PathBuf};

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
    }
}
