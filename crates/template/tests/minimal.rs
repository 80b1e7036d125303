//! Builds the `minimal` (busybox) template for real: fast, no network.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use sandboxd_template::{build, is_ready, BuildOptions, BuildOutcome, TemplateError};

fn opts(force: bool) -> BuildOptions {
    BuildOptions {
        force,
        mirror: None,
        progress: false,
    }
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn minimal_is_built_cached_and_rebuilt() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("templates"); // created by the build
    assert!(!is_ready(&dir, "minimal"));

    let outcome = build(&dir, "minimal", &opts(false)).unwrap();
    assert!(matches!(outcome, BuildOutcome::Built { .. }), "{outcome:?}");
    assert!(is_ready(&dir, "minimal"));
    let t = dir.join("minimal");
    let root = t.join("rootfs");

    // The tree.
    assert!(std::fs::metadata(root.join("bin/busybox"))
        .unwrap()
        .is_file());
    assert_eq!(mode(&root.join("bin/busybox")), 0o755);
    for applet in ["bin/sh", "bin/ls", "bin/cat"] {
        let target = std::fs::read_link(root.join(applet)).unwrap();
        assert_eq!(target, Path::new("/bin/busybox"), "{applet}");
    }
    assert_eq!(mode(&root.join("workspace")), 0o755);
    assert_eq!(mode(&root.join("tmp")), 0o1777);
    assert_eq!(
        std::fs::read_to_string(root.join("etc/resolv.conf")).unwrap(),
        ""
    );
    assert!(std::fs::read_to_string(root.join("etc/hosts"))
        .unwrap()
        .contains("127.0.0.1\tlocalhost"));
    assert!(!std::fs::read_to_string(root.join("etc/hostname"))
        .unwrap()
        .is_empty());
    assert!(std::fs::read_to_string(root.join("etc/passwd"))
        .unwrap()
        .starts_with("root:x:0:0:"));
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(t.join("info.json")).unwrap()).unwrap();
    assert_eq!(info["recipe"], "minimal");
    assert!(info["size_bytes"].as_u64().unwrap() > 500_000);
    assert_eq!(entries(&t), ["info.json", "ready", "rootfs"]);
    // Nothing but the template, its lock and its log.
    assert_eq!(
        entries(&dir),
        [".build-minimal.log", ".minimal.lock", "minimal"]
    );

    // The busybox in it runs (static), and in a chroot when we may make one.
    let out = std::process::Command::new(root.join("bin/busybox"))
        .args(["echo", "hi"])
        .output()
        .unwrap();
    assert_eq!(out.stdout, b"hi\n");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let out = std::process::Command::new("chroot")
            .arg(&root)
            .args(["/bin/sh", "-c", "cd /workspace && ls / | wc -l"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }

    // Cached.
    assert_eq!(
        build(&dir, "minimal", &opts(false)).unwrap(),
        BuildOutcome::Cached
    );

    // Forced: a new tree replaces the old one, which is kept aside for the sandboxes still
    // using it (one holds it here, as a server does for each sandbox it starts from it);
    // leftovers of crashed builds go away.
    std::fs::write(root.join("workspace/old-marker"), "").unwrap();
    let sandbox = hold(&dir.join("minimal"));
    std::fs::create_dir_all(dir.join(".build-minimal-999999/rootfs/etc")).unwrap();
    std::fs::create_dir_all(dir.join(".old-minimal-5/rootfs")).unwrap();
    std::fs::create_dir_all(dir.join(".build-other-1/rootfs")).unwrap();
    let outcome = build(&dir, "minimal", &opts(true)).unwrap();
    assert!(matches!(outcome, BuildOutcome::Built { .. }), "{outcome:?}");
    assert!(is_ready(&dir, "minimal"));
    assert!(!root.join("workspace/old-marker").exists());
    assert!(root.join("bin/busybox").is_file());
    let (retired, others): (Vec<String>, Vec<String>) = entries(&dir)
        .into_iter()
        .partition(|e| e.starts_with(".retired-minimal-"));
    assert_eq!(
        others,
        [
            ".build-minimal.log",
            ".build-other-1",
            ".minimal.lock",
            "minimal"
        ]
    );
    assert_eq!(retired.len(), 1, "{retired:?}");
    assert!(dir
        .join(&retired[0])
        .join("rootfs/workspace/old-marker")
        .exists());

    // Still held: the next build keeps it. Once the sandbox is gone, the next build (even a
    // cached one) removes it, and only it.
    assert_eq!(
        build(&dir, "minimal", &opts(false)).unwrap(),
        BuildOutcome::Cached
    );
    assert!(dir.join(&retired[0]).join("ready").exists());
    drop(sandbox);
    assert_eq!(
        build(&dir, "minimal", &opts(false)).unwrap(),
        BuildOutcome::Cached
    );
    assert!(!dir.join(&retired[0]).exists());
    assert!(is_ready(&dir, "minimal") && root.join("bin/busybox").is_file());
}

/// What a server holds while a sandbox runs on the tree at `path`: a shared `flock` on it.
fn hold(path: &Path) -> std::fs::File {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path).unwrap();
    // SAFETY: `f` is an open descriptor for the duration of the call.
    assert_eq!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH) }, 0);
    f
}

#[test]
fn a_crashed_build_is_cleaned_up_by_the_next() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    // What a build killed mid-way leaves: a half tree, no template.
    std::fs::create_dir_all(dir.join(".build-minimal-4242/rootfs/bin")).unwrap();
    std::fs::write(dir.join(".build-minimal-4242/rootfs/bin/junk"), "x").unwrap();
    assert!(!is_ready(dir, "minimal"));
    let outcome = build(dir, "minimal", &opts(false)).unwrap();
    assert!(matches!(outcome, BuildOutcome::Built { .. }));
    assert!(!dir.join(".build-minimal-4242").exists());
    assert!(!dir.join("minimal/rootfs/bin/junk").exists());
}

#[test]
fn concurrent_builds_build_once() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().to_path_buf();
    let threads: Vec<_> = (0..3)
        .map(|_| {
            let dir = dir.clone();
            std::thread::spawn(move || build(&dir, "minimal", &opts(false)).unwrap())
        })
        .collect();
    let outcomes: Vec<BuildOutcome> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let built = outcomes
        .iter()
        .filter(|o| matches!(o, BuildOutcome::Built { .. }))
        .count();
    assert_eq!(built, 1, "{outcomes:?}");
    assert!(is_ready(&dir, "minimal"));
}

#[test]
fn unknown_recipes_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let err = build(d.path(), "nope", &opts(false)).unwrap_err();
    assert!(matches!(err, TemplateError::UnknownRecipe { .. }), "{err}");
    assert!(err.to_string().contains("base"), "{err}");
    let err = build(d.path(), "../minimal", &opts(false)).unwrap_err();
    assert!(matches!(err, TemplateError::UnknownRecipe { .. }), "{err}");
}

#[test]
fn leftovers_with_mounts_are_unmounted_not_emptied() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to mount");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    // A build killed while its chroot had a bind mount of a host directory.
    let precious = dir.join("host-dir");
    std::fs::create_dir(&precious).unwrap();
    std::fs::write(precious.join("keep-me"), "x").unwrap();
    let inside = dir.join(".build-minimal-4243/rootfs/mnt");
    std::fs::create_dir_all(&inside).unwrap();
    let ok = std::process::Command::new("mount")
        .arg("--bind")
        .arg(&precious)
        .arg(&inside)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("skipped: cannot bind-mount here");
        return;
    }
    let outcome = build(dir, "minimal", &opts(false));
    let still_mounted = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .contains(inside.to_str().unwrap());
    if still_mounted {
        let _ = std::process::Command::new("umount").arg(&inside).status();
    }
    assert!(
        matches!(outcome, Ok(BuildOutcome::Built { .. })),
        "{outcome:?}"
    );
    assert!(!still_mounted);
    assert!(
        precious.join("keep-me").exists(),
        "removal went into a mount"
    );
    assert!(!dir.join(".build-minimal-4243").exists());
}
