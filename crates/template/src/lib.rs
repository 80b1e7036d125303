//! Builds sandbox templates: the read-only root file systems sandboxes start from.
//!
//! A template named `t` lives at `<templates_dir>/t/rootfs` and is usable once
//! `<templates_dir>/t/ready` exists (see `sandboxd_core::templates`). This crate makes them from
//! [`recipes`]:
//!
//! - `base`: Debian bookworm (minbase) plus a few tools, built with `mmdebstrap` from a Debian
//!   mirror (about a minute);
//! - `minimal`: the host's static busybox and its applet links (milliseconds; for tests).
//!
//! A build is atomic and cached: it happens in `<templates_dir>/.build-<name>-<pid>/`, which is
//! renamed into place only when complete, so a crash leaves nothing but a `.build-*` directory that
//! the next build removes. Builds of the same template are serialised with `flock` on
//! `<templates_dir>/.<name>.lock`; a second build waits and then finds the template cached.
//! The build log is kept at `<templates_dir>/.build-<name>.log`.
//!
//! A rebuild puts the new tree in place and keeps the one it replaces as
//! `<templates_dir>/.retired-<name>-<time>-<pid>` while sandboxes started from it run (their
//! root's lower layer is that tree); every [`build`] then removes the retired trees that no
//! sandbox holds any more (see [`prune_retired`]).
//!
//! ```no_run
//! use sandboxd_template::{build, BuildOptions, BuildOutcome};
//! let outcome = build("/var/lib/sandboxd/templates".as_ref(), "base", &BuildOptions::default())?;
//! if let BuildOutcome::Built { elapsed } = outcome {
//!     eprintln!("built in {elapsed:?}");
//! }
//! # Ok::<(), sandboxd_template::TemplateError>(())
//! ```

mod build;
mod busybox;
mod fsutil;
mod mmdebstrap;
mod progress;
mod recipes;
mod retired;
mod sources;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use recipes::{recipe, recipes, Method, Recipe};
pub use retired::{prune_retired, Pruned};
pub use sources::{default_mirror, DEFAULT_MIRROR};

/// How long a build waits for another build of the same template to finish.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(20 * 60);

/// Where the `minimal` recipe takes busybox from (Debian package `busybox-static`).
pub const HOST_BUSYBOX: &str = "/bin/busybox";

/// How to build a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildOptions {
    /// Rebuild even if the template is ready; the new tree replaces the old one atomically.
    pub force: bool,
    /// The Debian mirror for `mmdebstrap` recipes (e.g. `http://deb.debian.org/debian`); `None`
    /// means [`default_mirror`].
    pub mirror: Option<String>,
    /// Draw a progress spinner on stderr; otherwise print one plain line per build phase.
    pub progress: bool,
}

impl Default for BuildOptions {
    /// Not forced, the host's bookworm mirror (or [`DEFAULT_MIRROR`]), progress when stderr is a
    /// terminal.
    fn default() -> Self {
        BuildOptions {
            force: false,
            mirror: Some(default_mirror()),
            progress: std::io::stderr().is_terminal(),
        }
    }
}

/// What [`build`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildOutcome {
    /// The template was built; `elapsed` is the time the build itself took.
    Built {
        /// Wall-clock time of the build (not counting waiting for the lock).
        elapsed: Duration,
    },
    /// The template was already ready (possibly built meanwhile by a concurrent build).
    Cached,
}

/// Why a template could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// No recipe has this name.
    #[error("unknown template {name:?} (known: {known})")]
    UnknownRecipe {
        /// The name asked for.
        name: String,
        /// The names of all recipes, comma-separated.
        known: String,
    },
    /// `mmdebstrap` is not on `PATH`.
    #[error(
        "mmdebstrap is not installed, and template {name:?} is built with it; \
         install it with `apt-get install mmdebstrap`"
    )]
    MmdebstrapMissing {
        /// The template being built.
        name: String,
    },
    /// The host's static busybox, which the `minimal` recipe copies, is missing.
    #[error(
        "{} not found, and template {name:?} is made from it; \
         install it with `apt-get install busybox-static`",
        path.display()
    )]
    BusyboxMissing {
        /// The template being built.
        name: String,
        /// Where busybox was looked for.
        path: PathBuf,
    },
    /// The build command failed; `tail` holds the last lines of its log.
    #[error(
        "building template {name:?} failed: {reason} (full log: {})\n{tail}",
        log.display()
    )]
    BuildFailed {
        /// The template being built.
        name: String,
        /// What failed, e.g. `mmdebstrap exited with exit status: 1`.
        reason: String,
        /// The full build log.
        log: PathBuf,
        /// The last lines of the log.
        tail: String,
    },
    /// A file system operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, with the path.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Another build of the same template held the lock for longer than we were willing to wait.
    #[error(
        "another build of template {name:?} did not finish within {} s (lock: {}); \
         if no build is running, the lock holder is stuck",
        waited.as_secs(),
        lock.display()
    )]
    LockTimeout {
        /// The template being built.
        name: String,
        /// The lock file.
        lock: PathBuf,
        /// How long we waited.
        waited: Duration,
    },
}

impl TemplateError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        TemplateError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Builds template `name` under `templates_dir` unless it is ready already (or `opts.force`).
/// Then, built or cached, removes the trees earlier rebuilds retired (of any template) that no
/// sandbox runs on any more ([`prune_retired`]), and says on stderr what it removed and kept.
///
/// Blocking: a `base` build takes about a minute. Progress goes to stderr (see
/// [`BuildOptions::progress`]).
pub fn build(
    templates_dir: &Path,
    name: &str,
    opts: &BuildOptions,
) -> Result<BuildOutcome, TemplateError> {
    let outcome = build::build(templates_dir, name, opts, LOCK_TIMEOUT)?;
    let pruned = prune_retired(templates_dir);
    for tree in &pruned.removed {
        eprintln!(
            "templates: removed {}, retired by a rebuild, no sandbox runs on it",
            tree.display()
        );
    }
    for tree in &pruned.in_use {
        eprintln!(
            "templates: kept {}, retired by a rebuild: sandboxes started from it still run; \
             a later `sandboxd template build` removes it once they are gone",
            tree.display()
        );
    }
    for (tree, why) in &pruned.failed {
        eprintln!(
            "templates: could not remove {}, retired by a rebuild: {why}",
            tree.display()
        );
    }
    Ok(outcome)
}

/// Whether template `name` under `templates_dir` is built and ready to use.
pub fn is_ready(templates_dir: &Path, name: &str) -> bool {
    valid_name(name) && templates_dir.join(name).join("ready").exists()
}

/// Whether `name` is a well-formed template name (the same rule as `sandboxd_core`'s).
pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_ready_needs_the_ready_file_and_a_valid_name() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("x/rootfs")).unwrap();
        assert!(!is_ready(d.path(), "x"));
        std::fs::write(d.path().join("x/ready"), "").unwrap();
        assert!(is_ready(d.path(), "x"));
        assert!(!is_ready(d.path(), "../x"));
        assert!(!is_ready(d.path(), ""));
    }

    #[test]
    fn errors_say_how_to_fix_them() {
        let e = TemplateError::MmdebstrapMissing {
            name: "base".into(),
        };
        assert!(e.to_string().contains("apt-get install mmdebstrap"));
        let e = TemplateError::BusyboxMissing {
            name: "minimal".into(),
            path: HOST_BUSYBOX.into(),
        };
        assert!(e.to_string().contains("apt-get install busybox-static"));
    }
}
