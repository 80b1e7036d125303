//! The seccomp filters installed on every box's agent (and inherited by everything it runs).
//!
//! It is a deny list, at least as strict as Docker's default profile for a container without
//! extra capabilities: everything that changes mounts or namespaces, loads kernel code, traces
//! or reads other processes, touches kernel keyrings, the clock, swap, quotas, NUMA policy, or
//! io_uring (whose operations bypass seccomp) is refused with `EPERM`. A deny list keeps every
//! ordinary program working (shells, Python, compilers) while the kernel's own checks (no
//! capabilities, `no_new_privs`, namespaces) stay the first wall; the filter removes attack
//! surface behind it.
//!
//! Three programs are stacked, because one seccompiler program has one action for all its
//! matches:
//!
//! 1. the deny list (`EPERM`), which also kills the process on any foreign architecture
//!    (i386 through `int 0x80`, arm32 compat), where syscall numbers mean other things;
//! 2. `clone3` answers `ENOSYS`, so that libc falls back to `clone`, whose flags the first
//!    program can inspect (`clone3` passes them in memory, out of a filter's reach);
//! 3. on x86_64, any x32-ABI syscall (number with bit 30 set) kills the process: x32 calls
//!    carry the x86_64 audit arch, so the first program's arch check would let them through
//!    under different numbers.

use std::collections::BTreeMap;

use seccompiler::{
    sock_filter, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

/// Errors of building or installing the filters.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// seccompiler refused a rule or the program (a bug in this module).
    #[error("building the seccomp filter: {0}")]
    Build(#[from] seccompiler::BackendError),
    /// The architecture is not one seccompiler supports.
    #[error("seccomp: unsupported architecture {0}")]
    Arch(String),
    /// The kernel refused the filter.
    #[error("installing the seccomp filter: {0}")]
    Install(#[from] seccompiler::Error),
}

macro_rules! sys {
    ($($name:ident),* $(,)?) => {
        &[$((stringify!($name), libc::$name as i64)),*]
    };
}

/// Syscalls refused outright, on every architecture.
const DENY_COMMON: &[(&str, i64)] = sys![
    SYS_mount,
    SYS_umount2,
    SYS_pivot_root,
    SYS_unshare,
    SYS_setns,
    SYS_fsopen,
    SYS_fsconfig,
    SYS_fsmount,
    SYS_fspick,
    SYS_move_mount,
    SYS_open_tree,
    SYS_mount_setattr,
    SYS_ptrace,
    SYS_process_vm_readv,
    SYS_process_vm_writev,
    SYS_pidfd_getfd,
    SYS_kcmp,
    SYS_kexec_load,
    SYS_kexec_file_load,
    SYS_init_module,
    SYS_finit_module,
    SYS_delete_module,
    SYS_bpf,
    SYS_perf_event_open,
    SYS_keyctl,
    SYS_add_key,
    SYS_request_key,
    SYS_userfaultfd,
    SYS_open_by_handle_at,
    SYS_name_to_handle_at,
    SYS_acct,
    SYS_swapon,
    SYS_swapoff,
    SYS_reboot,
    SYS_settimeofday,
    SYS_clock_settime,
    SYS_clock_adjtime,
    SYS_adjtimex,
    SYS_quotactl,
    SYS_lookup_dcookie,
    SYS_syslog,
    SYS_vhangup,
    SYS_fanotify_init,
    SYS_io_uring_setup,
    SYS_io_uring_enter,
    SYS_io_uring_register,
    SYS_nfsservctl,
    SYS_get_mempolicy,
    SYS_set_mempolicy,
    SYS_mbind,
    SYS_move_pages,
    SYS_migrate_pages,
];

/// Newer syscalls from the table shared by all architectures since Linux 5.1 (numbers ≥ 424
/// are the same everywhere), spelled as numbers so the list does not depend on how recent
/// `libc` is.
const DENY_UNIFIED: &[(&str, i64)] = &[
    ("quotactl_fd", 443),
    ("set_mempolicy_home_node", 450),
    ("lsm_set_self_attr", 460),
    ("open_tree_attr", 467),
];

/// x86_64-only syscalls refused outright.
#[cfg(target_arch = "x86_64")]
const DENY_ARCH: &[(&str, i64)] = sys![
    SYS_iopl,
    SYS_ioperm,
    SYS_modify_ldt,
    SYS_uselib,
    SYS_ustat,
    SYS_sysfs,
    SYS__sysctl,
];
#[cfg(not(target_arch = "x86_64"))]
const DENY_ARCH: &[(&str, i64)] = &[];

/// Namespace flags that `clone` may not carry.
const CLONE_NS_FLAGS: [libc::c_int; 7] = [
    libc::CLONE_NEWNS,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWCGROUP,
];

/// `personality(2)` values Docker allows: the default, `UNAME26`, `ADDR_NO_RANDOMIZE`, both,
/// and the query `0xffffffff`.
const PERSONALITY_ALLOWED: [u64; 5] = [0x0, 0x0008, 0x0002_0000, 0x0002_0008, 0xffff_ffff];

/// `AF_VSOCK` reaches the hypervisor's services: not namespaced, so never from a box.
const DENIED_SOCKET_FAMILIES: [u64; 1] = [libc::AF_VSOCK as u64];

/// Every syscall refused unconditionally, with its name (for documentation and tests).
pub fn denied_syscalls() -> Vec<(&'static str, i64)> {
    DENY_COMMON
        .iter()
        .chain(DENY_UNIFIED)
        .chain(DENY_ARCH)
        .copied()
        .collect()
}

fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, SeccompError> {
    Ok(SeccompCondition::new(
        arg,
        SeccompCmpArgLen::Dword,
        op,
        value,
    )?)
}

fn target_arch() -> Result<TargetArch, SeccompError> {
    std::env::consts::ARCH
        .try_into()
        .map_err(|_| SeccompError::Arch(std::env::consts::ARCH.to_string()))
}

/// The deny-list program (`EPERM`; foreign architectures are killed).
pub fn deny_program() -> Result<BpfProgram, SeccompError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for (_, nr) in denied_syscalls() {
        rules.insert(nr, Vec::new());
    }
    // One rule per flag: a rule's conditions are ANDed, rules are ORed.
    let clone_rules = CLONE_NS_FLAGS
        .iter()
        .map(|&f| {
            let f = f as u64;
            Ok(SeccompRule::new(vec![cond(
                0,
                SeccompCmpOp::MaskedEq(f),
                f,
            )?])?)
        })
        .collect::<Result<Vec<_>, SeccompError>>()?;
    rules.insert(libc::SYS_clone, clone_rules);
    let personality = PERSONALITY_ALLOWED
        .iter()
        .map(|&v| cond(0, SeccompCmpOp::Ne, v))
        .collect::<Result<Vec<_>, _>>()?;
    rules.insert(libc::SYS_personality, vec![SeccompRule::new(personality)?]);
    let socket = DENIED_SOCKET_FAMILIES
        .iter()
        .map(|&fam| Ok(SeccompRule::new(vec![cond(0, SeccompCmpOp::Eq, fam)?])?))
        .collect::<Result<Vec<_>, SeccompError>>()?;
    rules.insert(libc::SYS_socket, socket);
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        target_arch()?,
    )?;
    Ok(filter.try_into()?)
}

/// The `clone3` → `ENOSYS` program.
pub fn clone3_program() -> Result<BpfProgram, SeccompError> {
    let rules = BTreeMap::from([(libc::SYS_clone3, Vec::new())]);
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        target_arch()?,
    )?;
    Ok(filter.try_into()?)
}

/// The x32 guard: kill on any syscall number with `__X32_SYSCALL_BIT` set.
pub fn x32_guard_program() -> BpfProgram {
    // BPF_LD | BPF_W | BPF_ABS, BPF_JMP | BPF_JGE | BPF_K, BPF_RET | BPF_K.
    const BPF_LD_W_ABS: u16 = 0x20;
    const BPF_JMP_JGE_K: u16 = 0x35;
    const BPF_RET_K: u16 = 0x06;
    const X32_SYSCALL_BIT: u32 = 0x4000_0000;
    let insn = |code, jt, jf, k| sock_filter { code, jt, jf, k };
    vec![
        // A = seccomp_data.nr
        insn(BPF_LD_W_ABS, 0, 0, 0),
        insn(BPF_JMP_JGE_K, 0, 1, X32_SYSCALL_BIT),
        insn(BPF_RET_K, 0, 0, libc::SECCOMP_RET_KILL_PROCESS),
        insn(BPF_RET_K, 0, 0, libc::SECCOMP_RET_ALLOW),
    ]
}

/// Every program, in installation order.
pub fn programs() -> Result<Vec<BpfProgram>, SeccompError> {
    let mut out = vec![deny_program()?, clone3_program()?];
    if cfg!(target_arch = "x86_64") {
        out.push(x32_guard_program());
    }
    Ok(out)
}

/// Install `programs` on the calling thread (needs `no_new_privs` or `CAP_SYS_ADMIN`).
pub fn install(programs: &[BpfProgram]) -> Result<(), SeccompError> {
    for p in programs {
        seccompiler::apply_filter(p)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_build_and_fit() {
        let progs = programs().unwrap();
        assert_eq!(
            progs.len(),
            if cfg!(target_arch = "x86_64") { 3 } else { 2 }
        );
        for p in &progs {
            assert!(!p.is_empty() && p.len() < 4096);
        }
        // The deny list starts with the architecture check that kills foreign arches.
        let first = &progs[0];
        assert_eq!(first[2].k, libc::SECCOMP_RET_KILL_PROCESS);
    }

    #[test]
    fn deny_list_covers_the_docker_essentials() {
        let names: Vec<&str> = denied_syscalls().iter().map(|(n, _)| *n).collect();
        for must in [
            "SYS_mount",
            "SYS_umount2",
            "SYS_pivot_root",
            "SYS_unshare",
            "SYS_setns",
            "SYS_ptrace",
            "SYS_kexec_load",
            "SYS_init_module",
            "SYS_finit_module",
            "SYS_bpf",
            "SYS_perf_event_open",
            "SYS_keyctl",
            "SYS_userfaultfd",
            "SYS_open_by_handle_at",
            "SYS_io_uring_setup",
            "SYS_fsopen",
            "SYS_move_mount",
            "SYS_open_tree",
            "lsm_set_self_attr",
        ] {
            assert!(names.contains(&must), "{must} is not denied");
        }
        assert!(
            !names.contains(&"SYS_sethostname"),
            "the box has its own UTS namespace"
        );
        let nrs: std::collections::BTreeSet<i64> = denied_syscalls().iter().map(|s| s.1).collect();
        assert_eq!(nrs.len(), names.len(), "no syscall listed twice");
        #[cfg(target_arch = "x86_64")]
        {
            assert_eq!(libc::SYS_quotactl_fd, 443);
            assert_eq!(libc::SYS_set_mempolicy_home_node, 450);
        }
    }

    /// Run `f` in a forked child under the filters and return its wait status. The child only
    /// makes raw syscalls (the test process is multi-threaded).
    fn in_filtered_child(f: fn() -> i32) -> i32 {
        let progs = programs().unwrap();
        // SAFETY: the child only calls prctl, seccomp, raw syscalls and _exit (no allocation:
        // the programs were built before forking).
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: see above; every call here is async-signal-safe.
            unsafe {
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                    libc::_exit(100);
                }
                for p in &progs {
                    let prog = libc::sock_fprog {
                        len: p.len() as u16,
                        filter: p.as_ptr() as *mut libc::sock_filter,
                    };
                    if libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, 0, &prog)
                        != 0
                    {
                        libc::_exit(101);
                    }
                }
                libc::_exit(f());
            }
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        status
    }

    fn errno() -> i32 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    }

    fn exited_ok(status: i32) -> bool {
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0
    }

    #[test]
    fn filter_denies_and_allows_as_documented() {
        // Each check returns 0 on success or a distinct code naming the failed check.
        let status = in_filtered_child(|| {
            // SAFETY: raw syscalls with harmless arguments; each is refused or does nothing.
            unsafe {
                let mounted = libc::syscall(
                    libc::SYS_mount,
                    c"none".as_ptr(),
                    c"/".as_ptr(),
                    c"tmpfs".as_ptr(),
                    0,
                    0,
                );
                if mounted != -1 || errno() != libc::EPERM {
                    return 1;
                }
                if libc::syscall(libc::SYS_unshare, libc::CLONE_NEWNS) != -1
                    || errno() != libc::EPERM
                {
                    return 2;
                }
                if libc::syscall(libc::SYS_clone3, 0, 0) != -1 || errno() != libc::ENOSYS {
                    return 3;
                }
                let flags = libc::CLONE_NEWUSER as libc::c_long | libc::SIGCHLD as libc::c_long;
                if libc::syscall(libc::SYS_clone, flags, 0, 0, 0, 0) != -1 || errno() != libc::EPERM
                {
                    return 4;
                }
                if libc::syscall(libc::SYS_init_module, 0, 0, 0) != -1 || errno() != libc::EPERM {
                    return 5;
                }
                if libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM, 0) != -1
                    || errno() != libc::EPERM
                {
                    return 6;
                }
                if libc::personality(0xffff_ffff) == -1 {
                    return 7;
                }
                if libc::personality(0x0040_0000) != -1 || errno() != libc::EPERM {
                    return 8;
                }
                if libc::syscall(libc::SYS_io_uring_setup, 1, 0) != -1 || errno() != libc::EPERM {
                    return 9;
                }
                // An ordinary fork (clone without namespace flags) still works.
                let child =
                    libc::syscall(libc::SYS_clone, libc::SIGCHLD as libc::c_long, 0, 0, 0, 0);
                if child == 0 {
                    libc::_exit(0);
                }
                if child < 0 {
                    return 10;
                }
                let mut st = 0;
                libc::waitpid(child as i32, &mut st, 0);
                let sock = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                if sock < 0 {
                    return 11;
                }
                0
            }
        });
        assert!(
            exited_ok(status),
            "filtered child failed check {}",
            libc::WEXITSTATUS(status)
        );
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn foreign_architectures_are_killed() {
        // getpid through the i386 entry point (int 0x80, number 20).
        let status = in_filtered_child(|| {
            let ret: i64;
            // SAFETY: int 0x80 is the i386 syscall entry; the filter kills before it runs.
            unsafe {
                std::arch::asm!("int 0x80", inlateout("rax") 20i64 => ret, options(nostack));
            }
            ret as i32
        });
        assert!(
            libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS,
            "i386 syscall not killed: status {status:#x}"
        );
        // getpid with the x32 bit.
        let status = in_filtered_child(|| {
            // SAFETY: an x32 syscall number; the filter kills before it runs.
            unsafe { libc::syscall(libc::SYS_getpid | 0x4000_0000) as i32 }
        });
        assert!(
            libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS,
            "x32 syscall not killed: status {status:#x}"
        );
    }
}
