//! Starting the agent's children without `fork`.
//!
//! A `fork` of the agent copies its page tables (and `std::process::Command` forks as soon as
//! a `pre_exec` hook is set), which costs about a millisecond per command. Instead [`Command`]
//! starts children the way `posix_spawn` does: `clone(CLONE_VM | CLONE_VFORK)` on a small
//! dedicated stack. The child shares the agent's memory until its `execve`, and the spawning
//! thread is suspended until then; other agent threads keep running.
//!
//! Everything the child needs (C strings, pointer arrays, descriptors) is prepared by the
//! parent beforehand; the child ([`child_main`]) only makes raw system calls on that data:
//!
//! 1. every signal disposition that is not `SIG_DFL` in the agent back to `SIG_DFL` (the
//!    only ignored one is `SIGPIPE`, see [`crate::init::setup_process`]; handlers must go
//!    before signals are unblocked, or one could run on the child's stack in the agent's
//!    memory),
//! 2. `setpgid(0, 0)`: own process group, so that the agent can kill the command with
//!    everything it started. Not `setsid`: a new session also makes the kernel set up a
//!    scheduler autogroup for it, a measured part of every spawn, and the agent has no
//!    controlling terminal a session would detach the command from (it leaves any it
//!    inherited at start, [`crate::init::setup_process`]); only where it could not does every
//!    command get `setsid` ([`give_commands_their_own_session`]),
//! 3. `dup2` of the prepared descriptors onto 0, 1 and 2,
//! 4. `chdir`,
//! 5. `1000` into `/proc/self/oom_score_adj`, so that under a memory limit the kernel kills
//!    user processes before the agent (for a vfork child the kernel changes only the child's
//!    score, not that of the agent it shares memory with),
//! 6. an empty signal mask (the parent blocked everything around the clone),
//! 7. `execve` of each candidate path in turn (the `PATH` search of `execvp`, done on paths
//!    built by the parent), falling back to `/bin/sh <path>` on `ENOEXEC` like glibc does.
//!
//! On failure the child stores `errno` in a variable of the parent's (shared memory) and
//! exits with 127; the parent reaps it and returns that error.

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Mutex, OnceLock};

use crate::sys;

/// Usable stack of the vfork child. It runs one small function that makes system calls
/// through libc's `syscall` (no buffers on the stack), so a few KiB would do even in a debug
/// build; this leaves a wide margin.
const CHILD_STACK: usize = 64 * 1024;

/// Child stacks not in use. Unmapping a stack that a child touched makes the kernel flush the
/// TLB of every CPU the agent's threads ran on, an inter-processor interrupt each; in a
/// virtual machine that was the single largest cost of a spawn after the `execve` itself. So
/// stacks are kept for the next spawn: as many as commands were ever started at once.
static FREE_STACKS: Mutex<Vec<sys::ChildStack>> = Mutex::new(Vec::new());

/// A stack from [`FREE_STACKS`] (or a new one), given back when dropped.
struct StackLease(Option<sys::ChildStack>);

impl StackLease {
    fn take() -> io::Result<StackLease> {
        let free = FREE_STACKS.lock().unwrap_or_else(|p| p.into_inner()).pop();
        Ok(StackLease(Some(match free {
            Some(s) => s,
            None => sys::ChildStack::new(CHILD_STACK)?,
        })))
    }
}

impl std::ops::Deref for StackLease {
    type Target = sys::ChildStack;
    fn deref(&self) -> &sys::ChildStack {
        self.0
            .as_ref()
            .expect("a lease holds its stack until dropped")
    }
}

impl Drop for StackLease {
    fn drop(&mut self) {
        if let Some(s) = self.0.take() {
            FREE_STACKS
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(s);
        }
    }
}

/// Whether children call `setsid` instead of `setpgid` (see the module docs, step 2).
static OWN_SESSION: AtomicBool = AtomicBool::new(false);

/// From now on every child gets a session of its own, without a controlling terminal: for an
/// agent that still has one (it could not leave its inherited session).
pub(crate) fn give_commands_their_own_session() {
    OWN_SESSION.store(true, Ordering::Relaxed);
}

/// `execvp`'s search path when the environment has no `PATH` (glibc's default).
const DEFAULT_SEARCH_PATH: &[u8] = b"/bin:/usr/bin";

/// What a child's standard descriptor is connected to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stdio {
    /// `/dev/null`.
    Null,
    /// A new pipe; the parent's end is in [`Child`].
    Piped,
    /// The agent's own descriptor.
    Inherit,
}

/// A command to start: program, arguments, environment (empty unless set), working directory
/// and standard descriptors. Children always get the isolation described in the module docs.
pub struct Command {
    program: OsString,
    argv: Vec<OsString>,
    env: BTreeMap<OsString, OsString>,
    cwd: Option<OsString>,
    stdio: [Stdio; 3],
}

/// A started child: its pid and the parent's ends of its piped descriptors. It is never waited
/// for here; its status comes from the [`crate::reaper::Reaper`].
pub struct Child {
    pub pid: libc::pid_t,
    /// A pidfd of the child, readable once it has exited, where the kernel has pidfds; the
    /// reaper's [`crate::reaper::ExitWatch`] takes it.
    pub pidfd: Option<OwnedFd>,
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

impl Command {
    /// Run `program` (searched in the command's own `PATH` when it has no slash) with
    /// `argv[0] = program`, an empty environment, the agent's working directory and inherited
    /// standard descriptors.
    pub fn new(program: impl AsRef<OsStr>) -> Command {
        let program = program.as_ref().to_os_string();
        Command {
            argv: vec![program.clone()],
            program,
            env: BTreeMap::new(),
            cwd: None,
            stdio: [Stdio::Inherit; 3],
        }
    }

    /// Set `argv[0]`.
    pub fn arg0(&mut self, arg0: impl AsRef<OsStr>) -> &mut Command {
        self.argv[0] = arg0.as_ref().to_os_string();
        self
    }

    pub fn arg(&mut self, arg: impl AsRef<OsStr>) -> &mut Command {
        self.argv.push(arg.as_ref().to_os_string());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(&mut self, args: I) -> &mut Command {
        for a in args {
            self.arg(a);
        }
        self
    }

    /// Add environment variables; a later value of the same name replaces an earlier one.
    pub fn envs<I, K, V>(&mut self, vars: I) -> &mut Command
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        for (k, v) in vars {
            self.env
                .insert(k.as_ref().to_os_string(), v.as_ref().to_os_string());
        }
        self
    }

    pub fn current_dir(&mut self, dir: impl AsRef<Path>) -> &mut Command {
        self.cwd = Some(dir.as_ref().as_os_str().to_os_string());
        self
    }

    pub fn stdin(&mut self, s: Stdio) -> &mut Command {
        self.stdio[0] = s;
        self
    }

    pub fn stdout(&mut self, s: Stdio) -> &mut Command {
        self.stdio[1] = s;
        self
    }

    pub fn stderr(&mut self, s: Stdio) -> &mut Command {
        self.stdio[2] = s;
        self
    }

    /// The paths `execvp` would try for the program, in order.
    fn candidates(&self) -> Vec<OsString> {
        let name = self.program.as_bytes();
        if name.is_empty() || name.contains(&b'/') {
            return vec![self.program.clone()];
        }
        let path = self
            .env
            .get(OsStr::new("PATH"))
            .map_or(DEFAULT_SEARCH_PATH, |p| p.as_bytes());
        path.split(|b| *b == b':')
            .map(|dir| {
                if dir.is_empty() {
                    // An empty entry means the current directory.
                    self.program.clone()
                } else {
                    let mut p = dir.to_vec();
                    p.push(b'/');
                    p.extend_from_slice(name);
                    OsString::from(OsStr::from_bytes(&p))
                }
            })
            .collect()
    }

    /// Start the child. Errors are those of the failed system call, in particular the
    /// `execve` error (`NotFound`, `PermissionDenied`, ...). The caller must make the spawn
    /// atomic with its registration in the reaper ([`crate::reaper::Reaper::spawn`]): a child
    /// whose `execve` failed is reaped here.
    pub(crate) fn spawn(&self) -> io::Result<Child> {
        // Everything the child touches, prepared up front.
        let candidates = self
            .candidates()
            .into_iter()
            .map(cstring)
            .collect::<io::Result<Vec<_>>>()?;
        let argv = self
            .argv
            .iter()
            .map(|a| cstring(a.clone()))
            .collect::<io::Result<Vec<_>>>()?;
        let envp = self
            .env
            .iter()
            .map(|(k, v)| {
                let mut kv = k.as_bytes().to_vec();
                kv.push(b'=');
                kv.extend_from_slice(v.as_bytes());
                cstring(OsString::from(OsStr::from_bytes(&kv)))
            })
            .collect::<io::Result<Vec<_>>>()?;
        let cwd = self.cwd.clone().map(cstring).transpose()?;

        let candidate_ptrs: Vec<*const libc::c_char> =
            candidates.iter().map(|c| c.as_ptr()).collect();
        let argv_ptrs = null_terminated(&argv);
        let envp_ptrs = null_terminated(&envp);
        // `/bin/sh <path> args...` for a file without a recognised format (no `#!`); slot 1
        // is filled in by the child with the candidate that failed.
        let mut sh_argv: Vec<*const libc::c_char> = Vec::with_capacity(argv.len() + 2);
        sh_argv.push(c"/bin/sh".as_ptr());
        sh_argv.push(std::ptr::null());
        sh_argv.extend(argv.iter().skip(1).map(|a| a.as_ptr()));
        sh_argv.push(std::ptr::null());

        let mut parent_ends: [Option<OwnedFd>; 3] = [None, None, None];
        let mut child_ends: [Option<OwnedFd>; 3] = [None, None, None];
        let mut null_ends = [false; 3];
        for (i, s) in self.stdio.iter().enumerate() {
            match s {
                Stdio::Inherit => {}
                Stdio::Null => null_ends[i] = true,
                Stdio::Piped => {
                    let (r, w) = sys::pipe()?;
                    let (mine, theirs) = if i == 0 { (w, r) } else { (r, w) };
                    parent_ends[i] = Some(mine);
                    child_ends[i] = Some(theirs);
                }
            }
        }
        // A source numbered 0-2 could be clobbered by an earlier dup2 of the child.
        for end in child_ends.iter_mut() {
            if let Some(fd) = end.take() {
                *end = Some(sys::dup_above_stdio(fd)?);
            }
        }
        let dev_null = if null_ends.contains(&true) {
            Some(shared_dev_null()?)
        } else {
            None
        };

        let ctx = ChildContext {
            candidates: candidate_ptrs.as_ptr(),
            n_candidates: candidate_ptrs.len(),
            argv: argv_ptrs.as_ptr(),
            envp: envp_ptrs.as_ptr(),
            sh_argv: sh_argv.as_mut_ptr(),
            cwd: cwd.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
            fds: [0, 1, 2].map(|i| match &child_ends[i] {
                Some(fd) => fd.as_raw_fd(),
                None if null_ends[i] => dev_null.map_or(-1, |fd| fd.as_raw_fd()),
                None => -1,
            }),
            own_session: OWN_SESSION.load(Ordering::Relaxed),
            error: AtomicI32::new(0),
        };
        let stack = StackLease::take()?;
        let pid = {
            // No signal handler may run in the child before it has reset the handlers (it
            // would run on the child's stack, in the agent's memory); the child inherits this
            // mask and clears it right before execve.
            let _blocked = sys::AllSignalsBlocked::new();
            // SAFETY: `child_main` honours `clone_vfork`'s contract: it only reads `ctx` and
            // the strings and arrays it points to, writes `ctx.error` and slot 1 of `sh_argv`
            // (all owned by this suspended frame and untouched by other threads), and makes
            // raw system calls, resetting all handlers before unblocking signals. `ctx` and
            // everything it points to outlive the call, as does `stack`; all signals are
            // blocked.
            unsafe {
                sys::clone_vfork(
                    child_main,
                    &ctx as *const ChildContext as *mut _,
                    &stack,
                    sys::pidfds_supported(),
                )
            }
        };
        // The child has exec'd or exited: it no longer uses its stack, which can serve the
        // next spawn.
        drop(stack);
        let (pid, pidfd) = pid?;
        drop(child_ends);
        // CLONE_VFORK resumed us only after the child's execve or exit, and the kernel orders
        // the child's store before that wake-up.
        let error = ctx.error.load(Ordering::Acquire);
        if error != 0 {
            sys::reap(pid);
            return Err(io::Error::from_raw_os_error(error));
        }
        let [stdin, stdout, stderr] = parent_ends;
        Ok(Child {
            pid,
            pidfd,
            stdin,
            stdout,
            stderr,
        })
    }
}

/// One `/dev/null` descriptor (numbered 3 or higher) for the standard descriptors of every
/// child that gets none: sharing it is harmless (reads of `/dev/null` see end-of-file and
/// writes vanish whatever its flags), and it saves an `open` and a `close` per spawn.
fn shared_dev_null() -> io::Result<BorrowedFd<'static>> {
    static DEV_NULL: OnceLock<OwnedFd> = OnceLock::new();
    if let Some(fd) = DEV_NULL.get() {
        return Ok(fd.as_fd());
    }
    let fd = sys::dup_above_stdio(sys::open_dev_null()?)?;
    // A racing first spawn may have stored its own; this one is then closed.
    Ok(DEV_NULL.get_or_init(|| fd).as_fd())
}

fn cstring(s: OsString) -> io::Result<CString> {
    CString::new(s.into_encoded_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "nul byte found in provided data",
        )
    })
}

fn null_terminated(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// Everything the vfork child reads, prepared by the parent. Raw pointers into the parent's
/// suspended stack frame and heap.
#[repr(C)]
struct ChildContext {
    /// `n_candidates` NUL-terminated paths to `execve`, in order.
    candidates: *const *const libc::c_char,
    n_candidates: usize,
    /// NULL-terminated argument and environment vectors.
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    /// `["/bin/sh", <slot>, argv[1..], NULL]` for the `ENOEXEC` fallback.
    sh_argv: *mut *const libc::c_char,
    /// Working directory, or null to keep the agent's.
    cwd: *const libc::c_char,
    /// Descriptors to `dup2` onto 0, 1, 2 (`-1`: inherit); all are 3 or higher.
    fds: [libc::c_int; 3],
    /// `setsid` rather than `setpgid` (step 2).
    own_session: bool,
    /// Set by the child to `errno` when it fails.
    error: AtomicI32,
}

/// Raw system call result: the value, or `errno`.
fn check(r: libc::c_long) -> Result<libc::c_long, libc::c_int> {
    if r < 0 {
        Err(sys::errno())
    } else {
        Ok(r)
    }
}

/// The kernel's `struct sigaction` (x86_64/aarch64 layout: handler, flags, restorer, mask).
/// The only signals whose disposition in the agent is not `SIG_DFL`: `init::setup_process`
/// resets every disposition at start, then ignores SIGPIPE and handles the shutdown signals;
/// the standard library may handle SIGSEGV and SIGBUS (stack overflow reports), and glibc
/// reserves 32 and 33 for itself (33 is caught in a static build). Resetting just these in the
/// child saves over fifty system calls per command, each through the seccomp filter.
const NON_DEFAULT_SIGNALS: [libc::c_int; 8] = [
    libc::SIGPIPE,
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGSEGV,
    libc::SIGBUS,
    32,
    33,
];

/// Only used to set `SIG_DFL` with no flags and an empty mask, i.e. all zeroes.
#[repr(C)]
struct KernelSigaction {
    handler: usize,
    flags: libc::c_ulong,
    restorer: usize,
    mask: u64,
}

/// The vfork child's whole life: set up, then `execve`, or report `errno` and exit.
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `ChildContext` of the parent, which is suspended in `spawn` (so the
    // context and all it points to stay alive and unchanged) until this process execs or
    // exits.
    let ctx = unsafe { &*(arg as *const ChildContext) };
    // SAFETY: `ctx` is the context `spawn` prepared, as `child_setup_and_exec` requires.
    let error = unsafe { child_setup_and_exec(ctx) };
    ctx.error.store(error, Ordering::Release);
    // SAFETY: exit_group ends this process only (it is not in the agent's thread group) and
    // never returns; no clean-up of the shared memory may run.
    unsafe { libc::syscall(libc::SYS_exit_group, 127) };
    127
}

/// Steps 1-7 of the module docs; returns the `errno` of the step that failed.
///
/// # Safety
///
/// Only for the vfork child of [`Command::spawn`] with the context it prepared: pointers must
/// be valid and all signals blocked on entry.
unsafe fn child_setup_and_exec(ctx: &ChildContext) -> libc::c_int {
    // Everything below is a raw system call through libc's `syscall`, which only uses the
    // stack and, on error, the (shared, parent's) errno: no allocation, no lock, no unwinding
    // (nothing here can panic: no indexing, no arithmetic that can overflow).
    macro_rules! raw {
        ($($arg:expr),+) => {
            // SAFETY: see the callers' arguments below: every pointer passed refers to data
            // prepared by the parent and alive until the child execs or exits.
            check(unsafe { libc::syscall($($arg),+) })
        };
    }

    // 1. Default dispositions, while every signal is still blocked.
    let dfl = KernelSigaction {
        handler: libc::SIG_DFL,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    let mut i = 0;
    while i < NON_DEFAULT_SIGNALS.len() {
        // SAFETY: `i` is within the array.
        let sig = unsafe { *NON_DEFAULT_SIGNALS.as_ptr().add(i) };
        // Failure is impossible for valid signals and harmless otherwise.
        let _ = raw!(
            libc::SYS_rt_sigaction,
            sig,
            &dfl as *const KernelSigaction,
            std::ptr::null_mut::<KernelSigaction>(),
            8usize
        );
        i += 1;
    }
    // 2.
    let grouped = if ctx.own_session {
        raw!(libc::SYS_setsid)
    } else {
        raw!(libc::SYS_setpgid, 0, 0)
    };
    if let Err(e) = grouped {
        return e;
    }
    // 3.
    let mut target = 0;
    while target < 3 {
        // SAFETY: `target` is 0..3, within the array.
        let fd = unsafe { *ctx.fds.as_ptr().add(target) };
        if fd >= 0 {
            if let Err(e) = raw!(libc::SYS_dup3, fd, target, 0) {
                return e;
            }
        }
        target += 1;
    }
    // 4.
    if !ctx.cwd.is_null() {
        if let Err(e) = raw!(libc::SYS_chdir, ctx.cwd) {
            return e;
        }
    }
    // 5. Failure is fine: the sandbox may lack /proc or forbid raising the score.
    if let Ok(fd) = raw!(
        libc::SYS_openat,
        libc::AT_FDCWD,
        c"/proc/self/oom_score_adj".as_ptr(),
        libc::O_WRONLY | libc::O_CLOEXEC
    ) {
        let _ = raw!(libc::SYS_write, fd, b"1000".as_ptr(), 4usize);
        let _ = raw!(libc::SYS_close, fd);
    }
    // 6.
    let empty: u64 = 0;
    let _ = raw!(
        libc::SYS_rt_sigprocmask,
        libc::SIG_SETMASK,
        &empty as *const u64,
        std::ptr::null_mut::<u64>(),
        8usize
    );
    // 7. execvp's search: remember EACCES, skip "not here" errors, stop at anything else.
    let mut eacces = false;
    let mut last = libc::ENOENT;
    let mut i = 0;
    while i < ctx.n_candidates {
        // SAFETY: `i < n_candidates`, the length of the candidate array.
        let path = unsafe { *ctx.candidates.add(i) };
        let _ = raw!(libc::SYS_execve, path, ctx.argv, ctx.envp);
        let mut e = sys::errno();
        if e == libc::ENOEXEC {
            // SAFETY: slot 1 of `sh_argv` exists and is reserved for this (the array is only
            // read by this child's execve).
            unsafe { *ctx.sh_argv.add(1) = path };
            let _ = raw!(
                libc::SYS_execve,
                c"/bin/sh".as_ptr(),
                ctx.sh_argv as *const *const libc::c_char,
                ctx.envp
            );
            e = sys::errno();
        }
        match e {
            libc::EACCES => eacces = true,
            libc::ENOENT | libc::ESTALE | libc::ENOTDIR | libc::ENODEV | libc::ETIMEDOUT => {}
            _ => return e,
        }
        last = e;
        i += 1;
    }
    if eacces {
        libc::EACCES
    } else {
        last
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reaper::Reaper;
    use std::fs::File;
    use std::io::Read;
    use std::time::Duration;

    fn output(cmd: &mut Command) -> (String, i32) {
        cmd.stdout(Stdio::Piped);
        let (child, watch) = Reaper::global().spawn(cmd, false).unwrap();
        let mut out = String::new();
        File::from(child.stdout.unwrap())
            .read_to_string(&mut out)
            .unwrap();
        let code = watch.wait_timeout(Duration::from_secs(30)).unwrap().code();
        (out, code.unwrap())
    }

    /// The child's OOM score changes, the spawner's (whose memory the vfork child shares)
    /// does not.
    #[test]
    fn oom_score_is_raised_for_the_child_only() {
        let own = std::fs::read_to_string("/proc/self/oom_score_adj").unwrap();
        let mut cmd = Command::new("/bin/cat");
        cmd.arg("/proc/self/oom_score_adj");
        assert_eq!(output(&mut cmd), ("1000\n".to_string(), 0));
        assert_eq!(
            std::fs::read_to_string("/proc/self/oom_score_adj").unwrap(),
            own
        );
    }

    /// A child leads a process group of its own (the agent kills commands by group) and
    /// stays in the agent's session: no new session, so no scheduler autogroup per command.
    #[test]
    fn child_leads_its_own_group_in_the_agents_session() {
        let mut cmd = Command::new("/bin/cat");
        cmd.arg("/proc/self/stat");
        let (stat, code) = output(&mut cmd);
        assert_eq!(code, 0);
        // pid (comm) state ppid pgrp session ...
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        let pid: i32 = stat.split_whitespace().next().unwrap().parse().unwrap();
        assert_eq!(fields[2].parse::<i32>().unwrap(), pid, "pgrp of {stat}");
        // SAFETY: getsid(0) only reads the calling process's session id.
        let own_session = unsafe { libc::getsid(0) };
        assert_eq!(
            fields[3].parse::<i32>().unwrap(),
            own_session,
            "session of {stat}"
        );
    }

    /// Like `execvp`: the search uses the command's own `PATH`, and a file without a
    /// recognised format runs under `/bin/sh`.
    #[test]
    fn path_search_and_script_fallback() {
        let dir = std::env::temp_dir().join(format!("agent-process-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("plain-script");
        std::fs::write(&script, "echo \"$0:$1\"\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut cmd = Command::new("plain-script");
        cmd.arg("x")
            .envs([("PATH", format!("/nonexistent:{}", dir.display()))]);
        assert_eq!(output(&mut cmd), (format!("{}:x\n", script.display()), 0));
        let err = Reaper::global()
            .spawn(
                Command::new("plain-script").envs([("PATH", "/nonexistent")]),
                false,
            )
            .err()
            .expect("not found");
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
