//! Builds the `minimal` tree: the host's static busybox and a link per applet.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use crate::progress::Reporter;
use crate::TemplateError;

/// Directories every tree has (besides those post-processing adds).
const DIRS: &[&str] = &[
    "bin", "sbin", "usr/bin", "usr/sbin", "etc", "dev", "proc", "sys", "root", "run", "var/tmp",
    "home",
];

const PASSWD: &str =
    "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
const GROUP: &str = "root:x:0:\nnogroup:x:65534:\n";

fn io_err(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> TemplateError {
    let context = format!("{what} {}", path.display());
    move |e| TemplateError::io(context, e)
}

/// Makes a busybox tree at `rootfs` (which must not exist) from the executable `busybox`.
pub(crate) fn run(
    busybox: &Path,
    rootfs: &Path,
    log: &mut File,
    log_path: &Path,
    reporter: &Reporter,
) -> Result<(), TemplateError> {
    reporter.phase(&format!("copying {}...", busybox.display()));
    std::fs::create_dir(rootfs).map_err(io_err("creating", rootfs))?;
    for d in DIRS {
        let p = rootfs.join(d);
        std::fs::create_dir_all(&p).map_err(io_err("creating", &p))?;
    }
    std::fs::set_permissions(rootfs.join("root"), std::fs::Permissions::from_mode(0o700))
        .map_err(io_err("setting the mode of", &rootfs.join("root")))?;
    let target = rootfs.join("bin/busybox");
    std::fs::copy(busybox, &target).map_err(io_err("copying busybox to", &target))?;
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755))
        .map_err(io_err("setting the mode of", &target))?;

    reporter.phase("linking applets...");
    let out = Command::new(busybox)
        .arg("--list-full")
        .output()
        .map_err(io_err("running", busybox))?;
    let _ = writeln!(
        log,
        "$ {} --list-full\n{}",
        busybox.display(),
        String::from_utf8_lossy(&out.stdout)
    );
    let applets: Vec<&str> = std::str::from_utf8(&out.stdout)
        .unwrap_or("")
        .lines()
        .map(|l| l.trim().trim_start_matches('/'))
        .filter(|l| !l.is_empty() && !l.contains("..") && *l != "bin/busybox")
        .collect();
    if !out.status.success() || applets.is_empty() {
        return Err(TemplateError::BuildFailed {
            name: "minimal".into(),
            reason: format!(
                "`{} --list-full` listed no applets ({})",
                busybox.display(),
                out.status
            ),
            log: log_path.to_path_buf(),
            tail: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    for applet in &applets {
        let link = rootfs.join(applet);
        if let Some(parent) = link.parent() {
            std::fs::create_dir_all(parent).map_err(io_err("creating", parent))?;
        }
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink("/bin/busybox", &link).map_err(io_err("linking", &link))?;
        }
    }
    let _ = writeln!(log, "linked {} applets", applets.len());

    for (file, text) in [("etc/passwd", PASSWD), ("etc/group", GROUP)] {
        let p = rootfs.join(file);
        std::fs::write(&p, text).map_err(io_err("writing", &p))?;
    }
    Ok(())
}
