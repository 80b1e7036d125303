//! The seccomp filter installed on every box's agent (and inherited by everything it runs).
//!
//! It is a deny list, at least as strict as Docker's default profile for a container without
//! extra capabilities: everything that changes mounts or namespaces, loads kernel code, traces
//! or reads other processes, touches kernel keyrings, the clock, swap, quotas, NUMA policy, or
//! io_uring (whose operations bypass seccomp) is refused with `EPERM`. A deny list keeps every
//! ordinary program working (shells, Python, compilers) while the kernel's own checks (no
//! capabilities, `no_new_privs`, namespaces) stay the first wall; the filter removes attack
//! surface behind it.
//!
//! One classic-BPF program, in this order:
//!
//! 1. any foreign architecture (i386 through `int 0x80`, arm32 compat), where syscall numbers
//!    mean other things, kills the process;
//! 2. on x86_64, so does any x32-ABI syscall (number with bit 30 set): x32 calls carry the
//!    x86_64 audit arch, and would otherwise pass under different numbers;
//! 3. `clone3` answers `ENOSYS`, so that libc falls back to `clone`, whose flags the filter
//!    can inspect (`clone3` passes them in memory, out of a filter's reach);
//! 4. `clone` with a namespace flag, `personality` other than the few harmless ones and
//!    `socket` of a refused family answer `EPERM`;
//! 5. the syscalls refused outright answer `EPERM`, found by a binary search over their
//!    numbers, and every other syscall is allowed.
//!
//! The program is written here rather than by a filter compiler, whose linear chain of one
//! comparison per refused syscall (and one program per action) cost a quarter of a
//! millisecond of every box's start: the kernel translates every instruction of every
//! program at `seccomp(2)`, then runs the filters once per syscall number to fill its cache of
//! always-allowed syscalls, walking the whole chain for each allowed one. Here no path from
//! the top to a verdict is longer than 19 instructions. The tests check the program against
//! one built by `seccompiler` from the same lists, on every syscall number and the arguments
//! that matter.

use seccompiler::{sock_filter, BpfProgram};

/// Errors of building or installing the filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// A jump of the program does not fit classic BPF's 8-bit offsets (a bug in this module,
    /// caught by its tests).
    #[error("building the seccomp filter: {0}")]
    Build(String),
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

/// `seccomp_data.arch` of this architecture (`AUDIT_ARCH_*`).
fn audit_arch() -> Result<u32, SeccompError> {
    match std::env::consts::ARCH {
        "x86_64" => Ok(0xc000_003e),
        "aarch64" => Ok(0xc000_00b7),
        "riscv64" => Ok(0xc000_00f3),
        other => Err(SeccompError::Arch(other.to_string())),
    }
}

// Classic BPF opcodes (linux/bpf_common.h).
const LD_W_ABS: u16 = 0x20;
const JEQ_K: u16 = 0x15;
const JGT_K: u16 = 0x25;
const JGE_K: u16 = 0x35;
const JSET_K: u16 = 0x45;
const RET_K: u16 = 0x06;

// Offsets in `struct seccomp_data`: nr, arch, then the six 64-bit arguments (low word first on
// the little-endian architectures above).
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;
const DATA_ARG0_LOW: u32 = 16;

const X32_SYSCALL_BIT: u32 = 0x4000_0000;
const RET_ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
const RET_KILL: u32 = libc::SECCOMP_RET_KILL_PROCESS;
const RET_EPERM: u32 = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
const RET_ENOSYS: u32 = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;

/// Where a conditional jump goes: the next instruction or a label.
#[derive(Clone, Copy)]
enum To {
    Next,
    Label(usize),
}

/// A tiny assembler: instructions with symbolic jump targets, resolved at the end.
#[derive(Default)]
struct Asm {
    insns: Vec<(u16, To, To, u32)>,
    /// Instruction index of each label, once placed.
    labels: Vec<Option<usize>>,
}

impl Asm {
    fn label(&mut self) -> usize {
        self.labels.push(None);
        self.labels.len() - 1
    }

    fn place(&mut self, label: usize) {
        self.labels[label] = Some(self.insns.len());
    }

    fn load(&mut self, offset: u32) {
        self.insns.push((LD_W_ABS, To::Next, To::Next, offset));
    }

    fn jump(&mut self, code: u16, k: u32, jt: To, jf: To) {
        self.insns.push((code, jt, jf, k));
    }

    /// The start of a block for syscall `nr` (the accumulator holds the number): other
    /// numbers jump to the returned label, to be placed after the block.
    fn only_for(&mut self, nr: i64) -> usize {
        let other = self.label();
        self.jump(JEQ_K, nr as u32, To::Next, To::Label(other));
        other
    }

    fn ret(&mut self, action: u32) {
        self.insns.push((RET_K, To::Next, To::Next, action));
    }

    fn finish(self) -> Result<BpfProgram, SeccompError> {
        let offset = |at: usize, to: To| -> Result<u8, SeccompError> {
            let target = match to {
                To::Next => return Ok(0),
                To::Label(l) => self.labels[l]
                    .ok_or_else(|| SeccompError::Build(format!("label {l} never placed")))?,
            };
            target
                .checked_sub(at + 1)
                .and_then(|d| u8::try_from(d).ok())
                .ok_or_else(|| {
                    SeccompError::Build(format!("jump from {at} to {target} out of range"))
                })
        };
        self.insns
            .iter()
            .enumerate()
            .map(|(at, &(code, jt, jf, k))| {
                Ok(sock_filter {
                    code,
                    jt: offset(at, jt)?,
                    jf: offset(at, jf)?,
                    k,
                })
            })
            .collect()
    }
}

/// Runs of consecutive numbers, `(first, last)`, of the sorted unique `nrs`.
fn runs(nrs: &[u32]) -> Vec<(u32, u32)> {
    let mut out: Vec<(u32, u32)> = Vec::new();
    for &nr in nrs {
        match out.last_mut() {
            Some((_, last)) if *last + 1 == nr => *last = nr,
            _ => out.push((nr, nr)),
        }
    }
    out
}

/// A binary search of `runs` for the syscall number in the accumulator: `EPERM` inside a
/// run, allowed between them.
fn search(asm: &mut Asm, runs: &[(u32, u32)]) {
    if runs.is_empty() {
        asm.ret(RET_ALLOW);
        return;
    }
    let mid = runs.len() / 2;
    let (first, last) = runs[mid];
    let (below, above) = (asm.label(), asm.label());
    asm.jump(JGE_K, first, To::Next, To::Label(below));
    asm.jump(JGT_K, last, To::Label(above), To::Next);
    asm.ret(RET_EPERM);
    asm.place(below);
    search(asm, &runs[..mid]);
    asm.place(above);
    search(asm, &runs[mid + 1..]);
}

/// For syscall `nr` (the accumulator holds the number): `one_of` if the low word of its first
/// argument is one of `values`, else `other`. Other syscalls go on after this block.
fn arg0_one_of(asm: &mut Asm, nr: i64, values: &[u64], one_of: u32, other: u32) {
    let not_nr = asm.only_for(nr);
    let found = asm.label();
    asm.load(DATA_ARG0_LOW);
    for &v in values {
        asm.jump(JEQ_K, v as u32, To::Label(found), To::Next);
    }
    asm.ret(other);
    asm.place(found);
    asm.ret(one_of);
    asm.place(not_nr);
}

/// The box's filter (see the module docs).
pub fn program() -> Result<BpfProgram, SeccompError> {
    let mut asm = Asm::default();
    let arch_ok = asm.label();
    asm.load(DATA_ARCH);
    asm.jump(JEQ_K, audit_arch()?, To::Label(arch_ok), To::Next);
    asm.ret(RET_KILL);
    asm.place(arch_ok);
    asm.load(DATA_NR);
    if cfg!(target_arch = "x86_64") {
        let native = asm.label();
        asm.jump(JGE_K, X32_SYSCALL_BIT, To::Next, To::Label(native));
        asm.ret(RET_KILL);
        asm.place(native);
    }

    let not_clone3 = asm.only_for(libc::SYS_clone3);
    asm.ret(RET_ENOSYS);
    asm.place(not_clone3);

    let not_clone = asm.only_for(libc::SYS_clone);
    asm.load(DATA_ARG0_LOW);
    let ns_flags = CLONE_NS_FLAGS.iter().fold(0, |all, &f| all | f as u32);
    let plain_clone = asm.label();
    asm.jump(JSET_K, ns_flags, To::Next, To::Label(plain_clone));
    asm.ret(RET_EPERM);
    asm.place(plain_clone);
    asm.ret(RET_ALLOW);
    asm.place(not_clone);

    arg0_one_of(
        &mut asm,
        libc::SYS_personality,
        &PERSONALITY_ALLOWED,
        RET_ALLOW,
        RET_EPERM,
    );
    arg0_one_of(
        &mut asm,
        libc::SYS_socket,
        &DENIED_SOCKET_FAMILIES,
        RET_EPERM,
        RET_ALLOW,
    );

    let mut nrs: Vec<u32> = denied_syscalls().iter().map(|&(_, nr)| nr as u32).collect();
    nrs.sort_unstable();
    nrs.dedup();
    search(&mut asm, &runs(&nrs));
    asm.finish()
}

/// Install `program` on the calling thread (needs `no_new_privs` or `CAP_SYS_ADMIN`).
pub fn install(program: &BpfProgram) -> Result<(), SeccompError> {
    Ok(seccompiler::apply_filter(program)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    use seccompiler::{
        SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
        SeccompRule, TargetArch,
    };
    use std::collections::BTreeMap;

    #[test]
    fn program_builds_small_and_starts_with_the_arch_check() {
        let prog = program().unwrap();
        assert!(prog.len() < 400, "{} instructions", prog.len());
        assert_eq!((prog[0].code, prog[0].k), (LD_W_ABS, DATA_ARCH));
        assert_eq!((prog[2].code, prog[2].k), (RET_K, RET_KILL));
        // Every path from the top to a verdict is short: the search is a balanced tree.
        assert!(max_depth(&prog, 0) <= 32, "depth {}", max_depth(&prog, 0));
    }

    /// Longest chain of instructions from `at` to a return.
    fn max_depth(prog: &[sock_filter], at: usize) -> usize {
        let insn = &prog[at];
        if insn.code == RET_K {
            return 1;
        }
        let next = at + 1;
        if insn.code == LD_W_ABS {
            return 1 + max_depth(prog, next);
        }
        1 + max_depth(prog, next + insn.jt as usize).max(max_depth(prog, next + insn.jf as usize))
    }

    fn cond(op: SeccompCmpOp, value: u64) -> SeccompCondition {
        SeccompCondition::new(0, SeccompCmpArgLen::Dword, op, value).unwrap()
    }

    /// The same policy written with `seccompiler`, as this module installed it before: three
    /// stacked programs (deny list, `clone3`, x32 guard), the reference the tests compare with.
    fn reference_programs() -> Vec<BpfProgram> {
        let arch: TargetArch = std::env::consts::ARCH.try_into().unwrap();
        let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
        for (_, nr) in denied_syscalls() {
            rules.insert(nr, Vec::new());
        }
        let clone = CLONE_NS_FLAGS
            .iter()
            .map(|&f| SeccompRule::new(vec![cond(SeccompCmpOp::MaskedEq(f as u64), f as u64)]))
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        rules.insert(libc::SYS_clone, clone);
        let personality = PERSONALITY_ALLOWED
            .iter()
            .map(|&v| cond(SeccompCmpOp::Ne, v))
            .collect();
        rules.insert(
            libc::SYS_personality,
            vec![SeccompRule::new(personality).unwrap()],
        );
        let socket = DENIED_SOCKET_FAMILIES
            .iter()
            .map(|&fam| SeccompRule::new(vec![cond(SeccompCmpOp::Eq, fam)]))
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        rules.insert(libc::SYS_socket, socket);
        let filter = |rules, action| -> BpfProgram {
            SeccompFilter::new(rules, SeccompAction::Allow, action, arch)
                .unwrap()
                .try_into()
                .unwrap()
        };
        let mut out = vec![
            filter(rules, SeccompAction::Errno(libc::EPERM as u32)),
            filter(
                BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
                SeccompAction::Errno(libc::ENOSYS as u32),
            ),
        ];
        if cfg!(target_arch = "x86_64") {
            let insn = |code, jt, jf, k| sock_filter { code, jt, jf, k };
            out.push(vec![
                insn(LD_W_ABS, 0, 0, DATA_NR),
                insn(JGE_K, 0, 1, X32_SYSCALL_BIT),
                insn(RET_K, 0, 0, RET_KILL),
                insn(RET_K, 0, 0, RET_ALLOW),
            ]);
        }
        out
    }

    /// A classic-BPF interpreter for what seccomp programs use: the verdict of `prog` on
    /// `seccomp_data` `data`.
    fn run(prog: &[sock_filter], data: &[u8; 64]) -> u32 {
        let word = |k: u32| {
            let k = k as usize;
            u32::from_ne_bytes(data[k..k + 4].try_into().unwrap())
        };
        let (mut a, mut x, mut pc) = (0u32, 0u32, 0usize);
        loop {
            let i = &prog[pc];
            pc += 1;
            let (jt, jf) = (i.jt as usize, i.jf as usize);
            let branch = |taken: bool| if taken { jt } else { jf };
            match i.code {
                LD_W_ABS => a = word(i.k),
                0x00 => a = i.k,            // ld imm
                0x01 => x = i.k,            // ldx imm
                0x07 => x = a,              // tax
                0x87 => a = x,              // txa
                0x54 => a &= i.k,           // and k
                0x44 => a |= i.k,           // or k
                0x05 => pc += i.k as usize, // ja
                JEQ_K => pc += branch(a == i.k),
                JGT_K => pc += branch(a > i.k),
                JGE_K => pc += branch(a >= i.k),
                JSET_K => pc += branch(a & i.k != 0),
                RET_K => return i.k,
                code => panic!("opcode {code:#x} not interpreted"),
            }
        }
    }

    /// The kernel's verdict with several programs installed: the most severe action wins
    /// (`KILL_PROCESS` is the lowest as a signed number), the latest installed among equals.
    fn run_stacked(progs: &[BpfProgram], data: &[u8; 64]) -> u32 {
        let action = |r: u32| (r & libc::SECCOMP_RET_ACTION_FULL) as i32;
        let mut verdict = RET_ALLOW;
        for p in progs.iter().rev() {
            let r = run(p, data);
            if action(r) < action(verdict) {
                verdict = r;
            }
        }
        verdict
    }

    fn seccomp_data(arch: u32, nr: u32, arg0: u64) -> [u8; 64] {
        let mut d = [0u8; 64];
        d[0..4].copy_from_slice(&nr.to_ne_bytes());
        d[4..8].copy_from_slice(&arch.to_ne_bytes());
        d[16..24].copy_from_slice(&arg0.to_ne_bytes());
        d
    }

    /// The program gives the reference's verdict on every syscall number of every
    /// architecture's range, on x32 and foreign-architecture calls, and on the first
    /// arguments `clone`, `personality` and `socket` are judged by (with and without high
    /// bits set, which the 32-bit comparisons ignore).
    #[test]
    fn program_matches_the_reference_filter() {
        let prog = program().unwrap();
        let reference = reference_programs();
        let native = audit_arch().unwrap();
        let mut args: Vec<u64> = vec![0, 1, 0x11, libc::SIGCHLD as u64, 0x0040_0000, 0xffff_ffff];
        args.extend(CLONE_NS_FLAGS.iter().map(|&f| f as u64));
        args.extend(
            CLONE_NS_FLAGS
                .iter()
                .map(|&f| f as u64 | libc::SIGCHLD as u64),
        );
        args.push(libc::CLONE_VM as u64 | libc::CLONE_VFORK as u64 | libc::SIGCHLD as u64);
        args.extend(PERSONALITY_ALLOWED);
        args.extend(PERSONALITY_ALLOWED.iter().map(|v| v + 1));
        args.extend(DENIED_SOCKET_FAMILIES);
        args.extend([
            libc::AF_UNIX as u64,
            libc::AF_INET as u64,
            libc::AF_INET6 as u64,
        ]);
        let high: Vec<u64> = args.iter().map(|a| a | 1 << 32).collect();
        args.extend(high);
        let mut nrs: Vec<u32> = (0..1024).collect();
        nrs.extend([X32_SYSCALL_BIT, X32_SYSCALL_BIT | 39, u32::MAX, 0x8000_0000]);
        let mut checked = 0;
        for arch in [native, 0x4000_0003, 0x4000_0028, 0xc000_00b7, 0xc000_003e] {
            for &nr in &nrs {
                for &arg0 in &args {
                    let data = seccomp_data(arch, nr, arg0);
                    assert_eq!(
                        run(&prog, &data),
                        run_stacked(&reference, &data),
                        "arch {arch:#x}, syscall {nr}, arg0 {arg0:#x}"
                    );
                    checked += 1;
                }
            }
        }
        // The comparison covers the verdicts that matter, not only "allow".
        let verdicts: std::collections::BTreeSet<u32> = [
            seccomp_data(native, libc::SYS_mount as u32, 0),
            seccomp_data(native, libc::SYS_clone3 as u32, 0),
            seccomp_data(0x4000_0003, 20, 0),
            seccomp_data(native, libc::SYS_getpid as u32, 0),
        ]
        .iter()
        .map(|d| run(&prog, d))
        .collect();
        assert_eq!(verdicts.len(), 4, "{verdicts:x?}");
        assert!(checked > 100_000);
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
        let prog = program().unwrap();
        // SAFETY: the child only calls prctl, seccomp, raw syscalls and _exit (no allocation:
        // the program was built before forking).
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: see above; every call here is async-signal-safe.
            unsafe {
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                    libc::_exit(100);
                }
                let fprog = libc::sock_fprog {
                    len: prog.len() as u16,
                    filter: prog.as_ptr() as *mut libc::sock_filter,
                };
                if libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, 0, &fprog) != 0 {
                    libc::_exit(101);
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
