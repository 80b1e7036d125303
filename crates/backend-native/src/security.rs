//! The last steps of the init before it becomes the agent: give up every privilege, then
//! restrict what is left.
//!
//! Order matters and is the one below: securebits need `CAP_SETPCAP`, as does dropping the
//! bounding set, so both come before `capset` empties the sets; `no_new_privs` must be set
//! before landlock and seccomp can be installed without `CAP_SYS_ADMIN`; seccomp comes last
//! because it forbids nothing the remaining steps need, but the earlier ones (prctl on the
//! bounding set) would be harmless to keep under it anyway.

use std::fs;
use std::io;

use landlock::{
    Access, AccessFs, LandlockStatus, PathBeneath, PathFd, RestrictionStatus, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetStatus, Scope, ABI,
};

/// Errors of dropping privileges.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    /// A prctl or capset call failed.
    #[error("{step}: {source}")]
    Syscall {
        /// Which step.
        step: &'static str,
        /// The underlying error.
        source: io::Error,
    },
    /// Building or enforcing the landlock ruleset failed (not: landlock is unsupported, which
    /// is tolerated).
    #[error("landlock: {0}")]
    Landlock(#[from] landlock::RulesetError),
}

fn step(step: &'static str) -> impl FnOnce(io::Error) -> SecurityError {
    move |source| SecurityError::Syscall { step, source }
}

/// Securebits for a root-without-capabilities process: uid 0 gets no capabilities on
/// `execve` (`NOROOT`), changing uids does not touch capabilities (`NO_SETUID_FIXUP`), no
/// capability can be kept or raised as ambient; all locked so that nothing can undo them.
pub const SECUREBITS: libc::c_int = libc::SECBIT_NOROOT
    | libc::SECBIT_NOROOT_LOCKED
    | libc::SECBIT_NO_SETUID_FIXUP
    | libc::SECBIT_NO_SETUID_FIXUP_LOCKED
    | libc::SECBIT_KEEP_CAPS_LOCKED
    | libc::SECBIT_NO_CAP_AMBIENT_RAISE
    | libc::SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED;

/// The highest capability number the kernel knows.
fn cap_last_cap() -> u32 {
    fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        // CAP_CHECKPOINT_RESTORE, the last one as of Linux 6.x; unknown higher ones are
        // dropped by the EINVAL-tolerant loop below anyway.
        .unwrap_or(40)
}

/// Set securebits, empty the bounding, ambient, effective, permitted and inheritable sets,
/// and set `no_new_privs`.
pub fn drop_privileges() -> Result<(), SecurityError> {
    crate::sys::prctl(libc::PR_SET_SECUREBITS, SECUREBITS as libc::c_ulong)
        .map_err(step("prctl(PR_SET_SECUREBITS)"))?;
    for cap in 0..=cap_last_cap() {
        match crate::sys::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong) {
            Ok(_) => {}
            // A number the kernel does not know is not in the set.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
            Err(e) => return Err(step("prctl(PR_CAPBSET_DROP)")(e)),
        }
    }
    crate::sys::clear_ambient_caps().map_err(step("prctl(PR_CAP_AMBIENT_CLEAR_ALL)"))?;
    crate::sys::capset_empty().map_err(step("capset"))?;
    crate::sys::prctl(libc::PR_SET_NO_NEW_PRIVS, 1).map_err(step("prctl(PR_SET_NO_NEW_PRIVS)"))?;
    Ok(())
}

/// Apply the landlock ruleset, best effort: no device nodes may be created anywhere (every
/// other file access, renames across directories included, stays allowed: the mount namespace
/// already decides what is visible),
/// and where the kernel has scoping (ABI 6), no abstract unix socket or signal may reach
/// outside the box's landlock domain. Returns a one-line description of what the kernel
/// enforced.
pub fn apply_landlock() -> Result<String, SecurityError> {
    // Landlock denies moving a file to another directory (EXDEV) unless the domain handles
    // and grants `Refer`; granting it on the whole tree keeps rename(2) working, and cannot
    // widen anything since every directory carries the same rights.
    let root = PathFd::new("/").map_err(|e| SecurityError::Syscall {
        step: "open / for landlock",
        source: io::Error::other(e.to_string()),
    })?;
    let status: RestrictionStatus = Ruleset::default()
        .handle_access(AccessFs::MakeChar | AccessFs::MakeBlock | AccessFs::Refer)?
        .scope(Scope::from_all(ABI::V6))?
        .create()?
        .add_rule(PathBeneath::new(root, AccessFs::Refer))?
        .restrict_self()?;
    let abi = match status.landlock {
        LandlockStatus::NotEnabled => "disabled at boot".to_string(),
        LandlockStatus::NotImplemented => "not in this kernel".to_string(),
        LandlockStatus::Available { effective_abi, .. } => format!("abi {}", effective_abi as i32),
    };
    let what = match status.ruleset {
        RulesetStatus::FullyEnforced => {
            "fully enforced (no mknod of devices; abstract unix sockets and signals scoped)"
        }
        RulesetStatus::PartiallyEnforced => {
            "partially enforced (no mknod of devices; no scoping on this kernel)"
        }
        RulesetStatus::NotEnforced => "not enforced",
    };
    Ok(format!("landlock {what}, {abi}"))
}
