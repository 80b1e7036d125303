//! File system helpers: careful removal, sizes, atomic swaps, dates.

use std::collections::HashSet;
use std::ffi::CString;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::TemplateError;

fn cstring(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

/// Decodes the octal escapes (`\040`) of a path in `/proc/self/mountinfo`.
fn unescape_mountinfo(s: &str) -> PathBuf {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = u32::from(b[i + 1] - b'0') * 64
                + u32::from(b[i + 2] - b'0') * 8
                + u32::from(b[i + 3] - b'0');
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    PathBuf::from(std::ffi::OsStr::from_bytes(&out))
}

/// Mount points at or below `dir` (an absolute, canonical path), deepest first.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .filter(|m| m.starts_with(dir))
        .collect();
    found.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
    found.dedup();
    found
}

/// Removes the tree at `path` (if any) without descending into file systems mounted inside it:
/// a build killed at the wrong moment can leave `/proc`, `/sys` or `/dev` mounted in its chroot.
/// Such mounts are detached first; if one cannot be, nothing is removed.
pub(crate) fn remove_tree(path: &Path) -> Result<(), TemplateError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(TemplateError::io(
                format!("inspecting {}", path.display()),
                e,
            ))
        }
    };
    if !meta.is_dir() {
        return std::fs::remove_file(path)
            .map_err(|e| TemplateError::io(format!("removing {}", path.display()), e));
    }
    let canon = path
        .canonicalize()
        .map_err(|e| TemplateError::io(format!("resolving {}", path.display()), e))?;
    for m in mounts_under(&canon) {
        let c =
            cstring(&m).map_err(|e| TemplateError::io(format!("unmounting {}", m.display()), e))?;
        // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
    if let Some(m) = mounts_under(&canon).first() {
        return Err(TemplateError::io(
            format!(
                "refusing to remove {}: {} is still mounted inside it",
                path.display(),
                m.display()
            ),
            io::Error::from_raw_os_error(libc::EBUSY),
        ));
    }
    std::fs::remove_dir_all(path)
        .map_err(|e| TemplateError::io(format!("removing {}", path.display()), e))
}

/// The apparent size of the files under `root` (hard links counted once; symlinks not followed).
pub(crate) fn tree_size(root: &Path) -> u64 {
    let mut seen = HashSet::new();
    let mut total = 0u64;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() && (meta.nlink() == 1 || seen.insert((meta.dev(), meta.ino())))
            {
                total += meta.len();
            }
        }
    }
    total
}

/// `bytes` for people: `251 MB`, `1.9 MB`, `512 B`.
pub(crate) fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["kB", "MB", "GB", "TB"];
    if bytes < 1000 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64;
    let mut unit = "B";
    for u in UNITS {
        if v < 1000.0 {
            break;
        }
        v /= 1000.0;
        unit = u;
    }
    if v < 10.0 {
        format!("{v:.1} {unit}")
    } else {
        format!("{v:.0} {unit}")
    }
}

/// Writes `contents` to `path`, replacing whatever is there. A symlink is removed rather than
/// followed: a template's `/etc/resolv.conf` may point anywhere on the host.
pub(crate) fn replace_file(path: &Path, contents: &str) -> Result<(), TemplateError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => remove_tree(path)?,
        Ok(_) => std::fs::remove_file(path)
            .map_err(|e| TemplateError::io(format!("removing {}", path.display()), e))?,
        Err(_) => {}
    }
    std::fs::write(path, contents)
        .map_err(|e| TemplateError::io(format!("writing {}", path.display()), e))
}

/// Flushes the file system holding `path` to disk.
pub(crate) fn sync_fs(path: &Path) -> Result<(), TemplateError> {
    let f = std::fs::File::open(path)
        .map_err(|e| TemplateError::io(format!("opening {}", path.display()), e))?;
    // SAFETY: `f` is an open file descriptor for the duration of the call.
    let rc = unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&f)) };
    if rc != 0 {
        return Err(TemplateError::io(
            format!("syncing {}", path.display()),
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Atomically exchanges the directories `a` and `b` (`renameat2(RENAME_EXCHANGE)`).
pub(crate) fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    let (ca, cb) = (cstring(a)?, cstring(b)?);
    // SAFETY: both are valid NUL-terminated paths that outlive the call; AT_FDCWD is a valid
    // directory file descriptor argument.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The executable `name` on `PATH`, if any.
pub(crate) fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0))
}

/// The last `lines` lines of the file at `path` (reading at most its last 64 kB).
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `t` as an RFC 3339 UTC timestamp, e.g. `2025-05-20T12:34:56Z`.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_747_742_400);
        assert_eq!(rfc3339(t), "2025-05-20T12:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400 + 86_399);
        assert_eq!(rfc3339(t), "2000-02-29T23:59:59Z");
    }

    #[test]
    fn sizes() {
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(1_982_256), "2.0 MB");
        assert_eq!(human_size(251_000_000), "251 MB");
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo("/a\\040b"), PathBuf::from("/a b"));
        assert_eq!(unescape_mountinfo("/plain"), PathBuf::from("/plain"));
        assert_eq!(unescape_mountinfo("/end\\04"), PathBuf::from("/end\\04"));
    }

    #[test]
    fn replace_file_does_not_follow_symlinks() {
        let d = tempfile::tempdir().unwrap();
        let outside = d.path().join("outside");
        std::fs::write(&outside, "host").unwrap();
        let link = d.path().join("resolv.conf");
        std::os::unix::fs::symlink(&outside, &link).unwrap();
        replace_file(&link, "").unwrap();
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "host");
        assert!(std::fs::symlink_metadata(&link).unwrap().is_file());
    }

    #[test]
    fn tree_size_counts_hard_links_once() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::fs::write(d.path().join("sub/a"), [0u8; 100]).unwrap();
        std::fs::hard_link(d.path().join("sub/a"), d.path().join("b")).unwrap();
        std::fs::write(d.path().join("c"), [0u8; 10]).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.path().join("l")).unwrap();
        assert_eq!(tree_size(d.path()), 110);
    }

    #[test]
    fn remove_tree_handles_missing_files_and_dirs() {
        let d = tempfile::tempdir().unwrap();
        remove_tree(&d.path().join("nope")).unwrap();
        std::fs::create_dir_all(d.path().join("x/y")).unwrap();
        remove_tree(&d.path().join("x")).unwrap();
        assert!(!d.path().join("x").exists());
    }

    #[test]
    fn tail_takes_the_last_lines() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("log");
        std::fs::write(&p, "1\n2\n3\n4\n").unwrap();
        assert_eq!(tail(&p, 2), "3\n4");
        assert_eq!(tail(&p, 10), "1\n2\n3\n4");
        assert_eq!(tail(&d.path().join("missing"), 2), "");
    }
}
