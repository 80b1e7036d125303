//! The build driver: lock, clean up, make the tree, post-process, swap into place.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crate::fsutil::{self, remove_tree, replace_file};
use crate::progress::Reporter;
use crate::{
    busybox, is_ready, mmdebstrap, recipe, recipes, BuildOptions, BuildOutcome, Method, Recipe,
    TemplateError, HOST_BUSYBOX,
};

/// What makes the tree, found before taking the lock so a missing tool fails at once.
enum Tool {
    Mmdebstrap(PathBuf),
    Busybox(PathBuf),
}

fn find_tool(recipe: &Recipe) -> Result<Tool, TemplateError> {
    match recipe.method {
        Method::Mmdebstrap => fsutil::find_in_path("mmdebstrap")
            .map(Tool::Mmdebstrap)
            .ok_or_else(|| TemplateError::MmdebstrapMissing {
                name: recipe.name.to_string(),
            }),
        Method::HostBusybox => {
            let p = PathBuf::from(HOST_BUSYBOX);
            if p.is_file() {
                Ok(Tool::Busybox(p))
            } else {
                Err(TemplateError::BusyboxMissing {
                    name: recipe.name.to_string(),
                    path: p,
                })
            }
        }
    }
}

/// An exclusive `flock` on `<templates_dir>/.<name>.lock`, released when dropped. The file
/// itself stays: removing it would let two builds lock two different files.
pub(crate) struct Lock {
    _file: File,
    /// Whether another build held the lock when we asked for it.
    pub(crate) waited: bool,
}

impl Lock {
    pub(crate) fn acquire(
        dir: &Path,
        name: &str,
        timeout: Duration,
        reporter: &Reporter,
    ) -> Result<Lock, TemplateError> {
        let path = dir.join(format!(".{name}.lock"));
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| TemplateError::io(format!("opening {}", path.display()), e))?;
        let start = Instant::now();
        let mut waited = false;
        loop {
            // SAFETY: `file` is an open descriptor for the duration of the call.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                return Ok(Lock {
                    _file: file,
                    waited,
                });
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EWOULDBLOCK) | Some(libc::EINTR) => {}
                _ => {
                    return Err(TemplateError::io(
                        format!("locking {}", path.display()),
                        err,
                    ))
                }
            }
            if !waited {
                waited = true;
                reporter.note(&format!("waiting for another build of {name}"));
            }
            if start.elapsed() >= timeout {
                return Err(TemplateError::LockTimeout {
                    name: name.to_string(),
                    lock: path,
                    waited: start.elapsed(),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Whether `entry` (a file name in the templates directory) is a leftover of a build of `name`:
/// `.build-<name>-<pid>` or `.old-<name>-<pid>`.
pub(crate) fn is_leftover(entry: &str, name: &str) -> bool {
    [".build-", ".old-"].iter().any(|prefix| {
        entry
            .strip_prefix(prefix)
            .and_then(|rest| rest.rsplit_once('-'))
            .is_some_and(|(n, pid)| {
                n == name && !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit())
            })
    })
}

/// Removes what crashed or killed builds of `name` left behind. Only called with the lock held,
/// so none of it belongs to a running build.
fn clean_leftovers(dir: &Path, name: &str, reporter: &Reporter) -> Result<(), TemplateError> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| TemplateError::io(format!("reading {}", dir.display()), e))?;
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        if is_leftover(&file_name.to_string_lossy(), name) {
            reporter.note(&format!(
                "removing {} left by an unfinished build",
                entry.path().display()
            ));
            remove_tree(&entry.path())?;
        }
    }
    Ok(())
}

/// Makes `path` a real directory with `mode` (replacing a symlink or file there).
fn ensure_dir(path: &Path, mode: u32) -> Result<(), TemplateError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            remove_tree(path)?;
            std::fs::create_dir(path)
                .map_err(|e| TemplateError::io(format!("creating {}", path.display()), e))?;
        }
        Err(_) => std::fs::create_dir_all(path)
            .map_err(|e| TemplateError::io(format!("creating {}", path.display()), e))?,
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| TemplateError::io(format!("setting the mode of {}", path.display()), e))
}

/// Removes the regular files directly in `dir` except `keep`, if `dir` exists.
fn remove_files_in(dir: &Path, keep: &[&str]) -> Result<(), TemplateError> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let is_file = entry.file_type().is_ok_and(|t| !t.is_dir());
        if is_file && !keep.iter().any(|k| entry.file_name() == *k) {
            std::fs::remove_file(entry.path()).map_err(|e| {
                TemplateError::io(format!("removing {}", entry.path().display()), e)
            })?;
        }
    }
    Ok(())
}

/// What every template gets, whatever made it: `/workspace`, a sticky `/tmp`, the mount
/// points of the agent (`/.sandboxd/agent`, `/.sandboxd/run`: the docker and gvisor backends
/// bind the agent and its socket directory there), neutral host names, an empty
/// `/etc/resolv.conf` (the backend provides one), no apt lists or caches.
///
/// The mount points are made here so that nothing writes to a finished tree: runsc made them
/// in the template at a sandbox's first start when they were missing, once while the docker
/// backend was reading the same tree into an image ("file changed as we read it").
pub(crate) fn post_process(rootfs: &Path) -> Result<(), TemplateError> {
    ensure_dir(&rootfs.join("workspace"), 0o755)?;
    ensure_dir(&rootfs.join("tmp"), 0o1777)?;
    let agent_dir = rootfs.join(".sandboxd");
    ensure_dir(&agent_dir, 0o755)?;
    ensure_dir(&agent_dir.join("run"), 0o755)?;
    if !agent_dir.join("agent").is_file() {
        replace_file(&agent_dir.join("agent"), "")?;
    }
    let etc = rootfs.join("etc");
    ensure_dir(&etc, 0o755)?;
    replace_file(&etc.join("hostname"), "sandbox\n")?;
    replace_file(
        &etc.join("hosts"),
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    )?;
    replace_file(&etc.join("resolv.conf"), "")?;
    for d in ["var/lib/apt/lists", "var/lib/apt/lists/partial"] {
        remove_files_in(&rootfs.join(d), &["lock"])?;
    }
    for d in [
        "var/cache/apt",
        "var/cache/apt/archives",
        "var/cache/apt/archives/partial",
    ] {
        remove_files_in(&rootfs.join(d), &["lock"])?;
    }
    Ok(())
}

/// `info.json` beside `rootfs`: what the template is and when it was built.
fn info_json(recipe: &Recipe, mirror: Option<&str>, elapsed: Duration, size: u64) -> String {
    let mut info = serde_json::json!({
        "name": recipe.name,
        "recipe": recipe.name,
        "description": recipe.description,
        "suite": recipe.suite,
        "method": match recipe.method {
            Method::Mmdebstrap => "mmdebstrap",
            Method::HostBusybox => "host-busybox",
        },
        "packages": recipe.packages,
        "revision": recipe.revision,
        "built_at": fsutil::rfc3339(SystemTime::now()),
        "build_seconds": (elapsed.as_secs_f64() * 10.0).round() / 10.0,
        "size_bytes": size,
        "builder": concat!("sandboxd-template ", env!("CARGO_PKG_VERSION")),
    });
    if let Some(m) = mirror {
        info["mirror"] = m.into();
    }
    serde_json::to_string_pretty(&info).expect("JSON values serialise") + "\n"
}

/// The recipe revision template `name` was built from (1 when `info.json` names none, as
/// before revisions were recorded, or cannot be read).
fn built_revision(dir: &Path, name: &str) -> u64 {
    std::fs::read(dir.join(name).join("info.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["revision"].as_u64())
        .unwrap_or(1)
}

/// Whether template `recipe.name` is ready and built from the recipe's current revision.
fn up_to_date(dir: &Path, recipe: &Recipe) -> bool {
    is_ready(dir, recipe.name) && built_revision(dir, recipe.name) >= u64::from(recipe.revision)
}

/// Puts the finished `build_dir` at `final_dir`. An existing template is exchanged atomically
/// (`renameat2(RENAME_EXCHANGE)`, so its name always names a complete tree; where exchanging
/// is unsupported it is renamed away first) and kept at `retired`, not deleted: sandboxes
/// started from it still have it as their root's lower layer (a deleted tree left them with
/// an empty `/usr/bin`). Returns whether there was one.
fn swap_into_place(
    build_dir: &Path,
    final_dir: &Path,
    retired: &Path,
) -> Result<bool, TemplateError> {
    let rename = |from: &Path, to: &Path| {
        std::fs::rename(from, to).map_err(|e| {
            TemplateError::io(
                format!("renaming {} to {}", from.display(), to.display()),
                e,
            )
        })
    };
    if std::fs::symlink_metadata(final_dir).is_err() {
        rename(build_dir, final_dir)?;
        return Ok(false);
    }
    match fsutil::exchange(build_dir, final_dir) {
        Ok(()) => rename(build_dir, retired)?,
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)
            ) =>
        {
            rename(final_dir, retired)?;
            rename(build_dir, final_dir)?;
        }
        Err(e) => {
            return Err(TemplateError::io(
                format!(
                    "exchanging {} and {}",
                    build_dir.display(),
                    final_dir.display()
                ),
                e,
            ))
        }
    }
    Ok(true)
}

pub(crate) fn build(
    dir: &Path,
    name: &str,
    opts: &BuildOptions,
    lock_timeout: Duration,
) -> Result<BuildOutcome, TemplateError> {
    let recipe = recipe(name).ok_or_else(|| TemplateError::UnknownRecipe {
        name: name.to_string(),
        known: recipes()
            .iter()
            .map(|r| r.name)
            .collect::<Vec<_>>()
            .join(", "),
    })?;
    if !opts.force && up_to_date(dir, recipe) {
        return Ok(BuildOutcome::Cached);
    }
    let stale = !opts.force && is_ready(dir, name);
    let tool = find_tool(recipe)?;
    std::fs::create_dir_all(dir)
        .map_err(|e| TemplateError::io(format!("creating {}", dir.display()), e))?;

    let mut reporter = Reporter::new(name, opts.progress);
    if stale {
        reporter.note(&format!(
            "built from an older recipe (revision {}, now {}): rebuilding",
            built_revision(dir, name),
            recipe.revision
        ));
    }
    let asked = SystemTime::now();
    let lock = Lock::acquire(dir, name, lock_timeout, &reporter)?;
    if lock.waited {
        // Another build finished while we waited: if it made the template (after we asked, when
        // forcing), that is what we were asked for.
        let fresh = std::fs::metadata(dir.join(name).join("ready"))
            .and_then(|m| m.modified())
            .is_ok_and(|t| !opts.force || t >= asked);
        if fresh && up_to_date(dir, recipe) {
            reporter.note("the other build finished it");
            reporter.clear();
            return Ok(BuildOutcome::Cached);
        }
        reporter.restart();
    }
    let start = Instant::now();
    clean_leftovers(dir, name, &reporter)?;

    let log_path = dir.join(format!(".build-{name}.log"));
    let mut log = File::create(&log_path)
        .map_err(|e| TemplateError::io(format!("creating {}", log_path.display()), e))?;
    let pid = std::process::id();
    let build_dir = dir.join(format!(".build-{name}-{pid}"));
    let rootfs = build_dir.join("rootfs");
    let result = (|| {
        std::fs::create_dir(&build_dir)
            .map_err(|e| TemplateError::io(format!("creating {}", build_dir.display()), e))?;
        let mirror = match &tool {
            Tool::Mmdebstrap(bin) => {
                let mirror = opts.mirror.clone().unwrap_or_else(crate::default_mirror);
                reporter.phase(&format!("building with mmdebstrap from {mirror}"));
                mmdebstrap::run(
                    bin, recipe, &rootfs, &mirror, &mut log, &log_path, &reporter,
                )?;
                Some(mirror)
            }
            Tool::Busybox(bin) => {
                busybox::run(bin, &rootfs, &mut log, &log_path, &reporter)?;
                None
            }
        };
        reporter.phase("finishing the tree...");
        post_process(&rootfs)?;
        let size = fsutil::tree_size(&rootfs);
        let info = build_dir.join("info.json");
        std::fs::write(
            &info,
            info_json(recipe, mirror.as_deref(), start.elapsed(), size),
        )
        .map_err(|e| TemplateError::io(format!("writing {}", info.display()), e))?;
        fsutil::sync_fs(&build_dir)?;
        let ready = build_dir.join("ready");
        std::fs::write(&ready, "")
            .map_err(|e| TemplateError::io(format!("writing {}", ready.display()), e))?;
        let stamp = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let retired = dir.join(format!(".retired-{name}-{stamp}-{pid}"));
        if swap_into_place(&build_dir, &dir.join(name), &retired)? {
            reporter.note(&format!(
                "the previous tree is retired to {}",
                retired.display()
            ));
        }
        fsutil::sync_fs(dir)?;
        Ok(size)
    })();
    match result {
        Ok(size) => {
            let elapsed = start.elapsed();
            reporter.finish(&format!(
                "built in {:.1} s ({})",
                elapsed.as_secs_f64(),
                fsutil::human_size(size)
            ));
            Ok(BuildOutcome::Built { elapsed })
        }
        Err(e) => {
            let _ = remove_tree(&build_dir);
            reporter.finish(&format!(
                "failed after {:.0} s (log: {})",
                start.elapsed().as_secs_f64(),
                log_path.display()
            ));
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftovers_are_recognised_exactly() {
        assert!(is_leftover(".build-base-123", "base"));
        assert!(is_leftover(".old-base-9", "base"));
        assert!(!is_leftover(".build-base-x-123", "base"));
        assert!(is_leftover(".build-base-x-123", "base-x"));
        assert!(!is_leftover(".build-base-", "base"));
        assert!(!is_leftover(".build-base.log", "base"));
        assert!(!is_leftover(".base.lock", "base"));
        assert!(!is_leftover("base", "base"));
    }

    #[test]
    fn a_held_lock_times_out_and_a_free_one_is_taken() {
        let d = tempfile::tempdir().unwrap();
        let r = Reporter::new("t", false);
        let held = Lock::acquire(d.path(), "t", Duration::ZERO, &r).unwrap();
        assert!(!held.waited);
        // flock locks belong to open files, so a second open in the same process conflicts.
        let err = Lock::acquire(d.path(), "t", Duration::from_millis(300), &r)
            .err()
            .expect("lock is held");
        assert!(matches!(err, TemplateError::LockTimeout { .. }), "{err}");
        drop(held);
        assert!(Lock::acquire(d.path(), "t", Duration::ZERO, &r).is_ok());
    }

    #[test]
    fn a_waiting_build_finds_the_template_cached() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().to_path_buf();
        let r = Reporter::new("minimal", false);
        let held = Lock::acquire(&dir, "minimal", Duration::ZERO, &r).unwrap();
        let opts = BuildOptions {
            force: false,
            mirror: None,
            progress: false,
        };
        let waiter = {
            let dir = dir.clone();
            std::thread::spawn(move || build(&dir, "minimal", &opts, Duration::from_secs(30)))
        };
        std::thread::sleep(Duration::from_millis(300));
        // Pretend the lock holder built it.
        std::fs::create_dir_all(dir.join("minimal/rootfs")).unwrap();
        std::fs::write(dir.join("minimal/ready"), "").unwrap();
        drop(held);
        let outcome = waiter.join().unwrap().unwrap();
        assert_eq!(outcome, BuildOutcome::Cached);
    }

    #[test]
    fn post_processing_fixes_up_a_tree() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("rootfs");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(root.join("var/lib/apt/lists/partial")).unwrap();
        std::fs::create_dir_all(root.join("var/cache/apt/archives/partial")).unwrap();
        std::fs::write(root.join("var/lib/apt/lists/deb_Packages"), "x").unwrap();
        std::fs::write(root.join("var/lib/apt/lists/lock"), "").unwrap();
        std::fs::write(root.join("var/cache/apt/pkgcache.bin"), "x").unwrap();
        std::fs::write(root.join("var/cache/apt/archives/x.deb"), "x").unwrap();
        std::os::unix::fs::symlink("/etc/resolv.conf", root.join("etc/resolv.conf")).unwrap();
        std::fs::write(root.join("etc/hostname"), "host-name-leak\n").unwrap();
        post_process(&root).unwrap();
        let mode = |p: &str| {
            std::fs::metadata(root.join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(mode("workspace"), 0o755);
        assert_eq!(mode("tmp"), 0o1777);
        assert!(root.join(".sandboxd/agent").is_file());
        assert!(root.join(".sandboxd/run").is_dir());
        assert_eq!(
            std::fs::read_to_string(root.join("etc/resolv.conf")).unwrap(),
            ""
        );
        assert_eq!(
            std::fs::read_to_string(root.join("etc/hostname")).unwrap(),
            "sandbox\n"
        );
        let hosts = std::fs::read_to_string(root.join("etc/hosts")).unwrap();
        assert!(hosts.contains("127.0.0.1\tlocalhost"));
        assert!(!root.join("var/lib/apt/lists/deb_Packages").exists());
        assert!(root.join("var/lib/apt/lists/lock").exists());
        assert!(root.join("var/lib/apt/lists/partial").is_dir());
        assert!(!root.join("var/cache/apt/pkgcache.bin").exists());
        assert!(!root.join("var/cache/apt/archives/x.deb").exists());
    }

    #[test]
    fn info_is_json() {
        let r = recipe("base").unwrap();
        let text = info_json(r, Some("http://m/debian"), Duration::from_millis(1234), 42);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["recipe"], "base");
        assert_eq!(v["size_bytes"], 42);
        assert_eq!(v["build_seconds"], 1.2);
        assert_eq!(v["mirror"], "http://m/debian");
        assert!(v["packages"].as_array().unwrap().len() > 5);
        assert!(v["built_at"].as_str().unwrap().ends_with('Z'));
        assert_eq!(v["revision"], r.revision);
    }

    /// A ready template is stale when its recipe's revision went up since it was built;
    /// one built before revisions were recorded counts as revision 1.
    #[test]
    fn a_template_of_an_older_revision_is_stale() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path();
        let base = recipe("base").unwrap();
        let minimal = recipe("minimal").unwrap();
        assert!(base.revision > 1, "the test needs a recipe past revision 1");
        for name in ["base", "minimal"] {
            std::fs::create_dir_all(dir.join(name).join("rootfs")).unwrap();
            std::fs::write(dir.join(name).join("ready"), "").unwrap();
        }
        assert!(!up_to_date(dir, base));
        assert!(up_to_date(dir, minimal));
        std::fs::write(
            dir.join("base/info.json"),
            info_json(base, None, Duration::ZERO, 0),
        )
        .unwrap();
        assert!(up_to_date(dir, base));
        std::fs::write(dir.join("base/info.json"), r#"{"revision": 1}"#).unwrap();
        assert!(!up_to_date(dir, base));
        std::fs::remove_file(dir.join("base/ready")).unwrap();
        assert!(!up_to_date(dir, base));
    }
}
