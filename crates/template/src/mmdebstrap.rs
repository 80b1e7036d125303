//! Builds a Debian tree with `mmdebstrap`, turning its log into progress.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::fsutil;
use crate::progress::Reporter;
use crate::{Recipe, TemplateError};

/// dpkg options: fast unpacking, and no documentation (only copyright files are kept).
const DPKG_OPTIONS: &[&str] = &[
    // No fsync per file: the build syncs the whole file system once before marking the
    // template ready.
    "force-unsafe-io",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
];

/// Run in the finished tree: put the C.UTF-8 locale (the sandboxes' `LANG`), which Debian
/// ships as a directory of one file per category, into a locale archive. A program that calls
/// `setlocale` (coreutils, bash, Python) then opens and maps one file instead of trying and
/// opening a dozen through the sandbox's overlay: measured in a sandbox, a spawn of
/// `echo hi` took 0.92-0.96 ms instead of 1.00-1.15. Without an archive the C library reads
/// the directory, so a tree without `localedef` is still fine.
const LOCALE_ARCHIVE_HOOK: &str = "if [ -x \"$1/usr/bin/localedef\" ] && \
     [ -d \"$1/usr/lib/locale/C.utf8\" ]; then \
     chroot \"$1\" localedef --add-to-archive /usr/lib/locale/C.utf8; fi";

/// The `mmdebstrap` command line that builds `recipe` into `rootfs` from `mirror`.
pub(crate) fn command(mmdebstrap: &Path, recipe: &Recipe, rootfs: &Path, mirror: &str) -> Command {
    let mut cmd = Command::new(mmdebstrap);
    cmd.arg("--verbose")
        .arg("--variant=minbase")
        .arg("--format=directory")
        .arg(format!("--include={}", recipe.packages.join(",")))
        .arg("--aptopt=Acquire::Languages \"none\"");
    for opt in DPKG_OPTIONS {
        cmd.arg(format!("--dpkgopt={opt}"));
    }
    cmd.arg(format!("--customize-hook={LOCALE_ARCHIVE_HOOK}"));
    cmd.arg(recipe.suite).arg(rootfs).arg(mirror);
    cmd.env("LC_ALL", "C.UTF-8")
        .env("DEBIAN_FRONTEND", "noninteractive");
    cmd
}

/// What one line of mmdebstrap's output means for the user.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Line<'a> {
    /// `I: ...`: mmdebstrap moved on to a new phase.
    Phase(&'a str),
    /// `W: ...`: worth keeping on screen. (`E: ...` lines end up in the error's log tail.)
    Note(&'a str),
    /// Anything else (apt and dpkg output): a detail of the current phase.
    Detail(String),
    /// Nothing to show.
    Skip,
}

/// Classifies one line of mmdebstrap's `--verbose` output.
pub(crate) fn classify(line: &str) -> Line<'_> {
    // apt redraws progress with carriage returns; the last redraw is what counts.
    let line = line
        .split('\r')
        .rfind(|s| !s.trim().is_empty())
        .unwrap_or("")
        .trim_end();
    if let Some(phase) = line.strip_prefix("I: ") {
        if phase.starts_with("success in ") {
            Line::Skip
        } else {
            Line::Phase(phase)
        }
    } else if line.starts_with("W: ") {
        Line::Note(line)
    } else if line.trim().is_empty() {
        Line::Skip
    } else if let Some(rest) = line.strip_prefix("Get:") {
        // `Get:39 http://deb.debian.org/debian bookworm/main amd64 libpam0g amd64 1.5 [92 kB]`
        let words: Vec<&str> = rest.split_whitespace().collect();
        match words.get(4) {
            Some(pkg) if words.len() >= 7 => Line::Detail(format!("{pkg} {}", words[6])),
            _ => Line::Detail(words.get(2..).unwrap_or_default().join(" ")),
        }
    } else {
        Line::Detail(line.trim().to_string())
    }
}

/// Runs mmdebstrap for `recipe` into `rootfs` (which must not exist), logging everything to
/// `log`.
pub(crate) fn run(
    mmdebstrap: &Path,
    recipe: &Recipe,
    rootfs: &Path,
    mirror: &str,
    log: &mut File,
    log_path: &Path,
    reporter: &Reporter,
) -> Result<(), TemplateError> {
    let mut cmd = command(mmdebstrap, recipe, rootfs, mirror);
    let _ = writeln!(log, "$ {cmd:?}");
    let stdout = log
        .try_clone()
        .map_err(|e| TemplateError::io(format!("opening {}", log_path.display()), e))?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::piped());
    // SAFETY: prctl is async-signal-safe and touches no memory of ours; it makes the kernel stop
    // mmdebstrap (which then unmounts what it mounted in the chroot) if this thread dies.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| TemplateError::io(format!("starting {}", mmdebstrap.display()), e))?;
    let stderr = child.stderr.take().expect("stderr is piped");
    let mut reader = BufReader::new(stderr);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
        let _ = log.write_all(&buf);
        let text = String::from_utf8_lossy(&buf);
        match classify(&text) {
            Line::Phase(p) => reporter.phase(p),
            Line::Note(n) => reporter.note(n),
            Line::Detail(d) => reporter.detail(&d),
            Line::Skip => {}
        }
    }
    let status = child
        .wait()
        .map_err(|e| TemplateError::io(format!("waiting for {}", mmdebstrap.display()), e))?;
    let _ = log.flush();
    if status.success() {
        Ok(())
    } else {
        Err(TemplateError::BuildFailed {
            name: recipe.name.to_string(),
            reason: format!("mmdebstrap exited with {status}"),
            log: log_path.to_path_buf(),
            tail: fsutil::tail(log_path, 25),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_classified() {
        assert_eq!(
            classify("I: downloading packages with apt...\n"),
            Line::Phase("downloading packages with apt...")
        );
        assert_eq!(classify("I: success in 32.5 seconds\n"), Line::Skip);
        assert_eq!(
            classify("E: apt-get update failed\n"),
            Line::Detail("E: apt-get update failed".into())
        );
        assert_eq!(classify("W: x\n"), Line::Note("W: x"));
        assert_eq!(
            classify(
                "Get:39 http://deb.debian.org/debian bookworm/main amd64 libpam0g amd64 \
                 1.5.2-6+deb12u2 [92.1 kB]\n"
            ),
            Line::Detail("libpam0g 1.5.2-6+deb12u2".into())
        );
        assert_eq!(
            classify("Get:1 http://deb.debian.org/debian bookworm InRelease [151 kB]\n"),
            Line::Detail("bookworm InRelease [151 kB]".into())
        );
        assert_eq!(
            classify("Setting up liblzma5:amd64 (5.4.1-1+deb12u1) ...\n"),
            Line::Detail("Setting up liblzma5:amd64 (5.4.1-1+deb12u1) ...".into())
        );
        assert_eq!(
            classify("0% [Working]\r50% [x]\r\n"),
            Line::Detail("50% [x]".into())
        );
        assert_eq!(classify("\n"), Line::Skip);
    }

    #[test]
    fn command_line() {
        let r = crate::recipe("base").unwrap();
        let cmd = command(
            Path::new("/usr/bin/mmdebstrap"),
            r,
            Path::new("/t/.build-base-1/rootfs"),
            "http://m/debian",
        );
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(args.contains(&"--variant=minbase".to_string()));
        assert!(args
            .iter()
            .any(|a| a.starts_with("--include=") && a.contains("python3")));
        assert!(args
            .iter()
            .any(|a| a.starts_with("--customize-hook=") && a.contains("--add-to-archive")));
        assert_eq!(
            args[args.len() - 3..],
            ["bookworm", "/t/.build-base-1/rootfs", "http://m/debian"]
        );
    }
}
