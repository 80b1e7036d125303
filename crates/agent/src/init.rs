//! Process-level setup of the agent binary: being a good PID 1, and finding its socket.

use std::io;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::Path;

use crate::reaper::Reaper;
use crate::sys;

/// Environment variable naming an inherited, already listening socket descriptor.
pub const LISTEN_FD_VAR: &str = "SANDBOXD_LISTEN_FD";

/// Signals that end the agent.
const SHUTDOWN_SIGNALS: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

extern "C" fn ignore(_: libc::c_int) {}

/// Prepare the process. Must run before any other thread starts, because the signal mask set
/// here is inherited by every thread created afterwards.
///
/// - Not dumpable: nothing in the sandbox may ptrace the agent or read its memory via /proc.
/// - Child subreaper: when not PID 1 (tests, other backends), orphans of commands are still
///   re-parented to the agent and reaped by it, as they would be in a pid namespace.
/// - SIGPIPE ignored: a host hanging up shows as `EPIPE`, not as the agent's death.
/// - SIGTERM/SIGINT/SIGHUP: blocked in every thread and taken by a dedicated thread with
///   `sigwait`, which kills every command's process group and exits. A real (no-op) handler
///   is installed too: the kernel discards signals to a namespace's init that have the
///   default disposition, and the host must be able to stop the agent with SIGTERM.
/// - A session of its own: the agent may have inherited the host's controlling terminal (a
///   native box's processes descend from the server, which may run in a terminal), and
///   commands, which stay in the agent's session, must never reach it through `/dev/tty`.
///   Where that fails (the agent already leads a session) and a terminal is still reachable,
///   every command gets a session of its own instead ([`crate::process`]).
pub fn setup_process() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only; failure (e.g. an old kernel) is harmless.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    }
    // SAFETY: setsid takes no arguments; failing (EPERM: already a group leader) is handled.
    if unsafe { libc::setsid() } < 0 && sys::has_controlling_terminal() {
        crate::process::give_commands_their_own_session();
    }
    // SAFETY: `set` is a properly initialised sigset_t; `sa` is fully initialised (zeroed,
    // then the handler and mask set) and only read by sigaction. The handler is an
    // async-signal-safe no-op.
    unsafe {
        // Ignored dispositions survive exec: drop any inherited from whoever started the agent,
        // once here, so that spawning a command only has SIGPIPE to restore.
        for sig in 1..=libc::SIGRTMAX() {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in SHUTDOWN_SIGNALS {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = ignore as *const () as libc::sighandler_t;
            libc::sigemptyset(&mut sa.sa_mask);
            if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error());
            }
            libc::sigaddset(&mut set, sig);
        }
        let r = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if r != 0 {
            return Err(io::Error::from_raw_os_error(r));
        }
    }
    std::thread::Builder::new()
        .name("signals".into())
        .stack_size(64 * 1024)
        .spawn(wait_for_shutdown)?;
    // Start the reaper now: zombies inherited before the first command must not wait for it.
    Reaper::global();
    Ok(())
}

fn wait_for_shutdown() {
    // SAFETY: `set` is initialised before use and `sig` is a valid out-pointer.
    let sig = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in SHUTDOWN_SIGNALS {
            libc::sigaddset(&mut set, s);
        }
        let mut sig: libc::c_int = 0;
        loop {
            if libc::sigwait(&set, &mut sig) == 0 {
                break sig;
            }
        }
    };
    eprintln!("sandboxd-agent: signal {sig}, killing commands and exiting");
    Reaper::global().signal_all_groups(libc::SIGKILL);
    std::process::exit(0);
}

/// The socket to serve: the inherited descriptor named by `SANDBOXD_LISTEN_FD` when set
/// (made close-on-exec so that no command inherits it), else a new socket bound at `path`.
pub fn listener(path: Option<&Path>) -> io::Result<UnixListener> {
    if let Some(v) = std::env::var_os(LISTEN_FD_VAR) {
        let fd: RawFd = v
            .to_str()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{LISTEN_FD_VAR}={v:?} is not a descriptor number"),
                )
            })?;
        return inherited_listener(fd);
    }
    let Some(path) = path else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("no socket: set {LISTEN_FD_VAR} or pass --listen <path>"),
        ));
    };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        // A stale socket of an earlier run; anything else is not ours to delete.
        if meta.file_type().is_socket() {
            std::fs::remove_file(path)?;
        }
    }
    UnixListener::bind(path)
}

fn inherited_listener(fd: RawFd) -> io::Result<UnixListener> {
    sys::set_cloexec(fd)
        .map_err(|e| io::Error::new(e.kind(), format!("{LISTEN_FD_VAR}={fd}: {e}")))?;
    let mut listening: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: the out-pointers are valid for the sizes given.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&mut listening as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r != 0 || listening == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{LISTEN_FD_VAR}={fd} is not a listening socket"),
        ));
    }
    // SAFETY: the host passed this descriptor to us for our exclusive use, it was checked to
    // be an open listening socket, and nothing else in the agent refers to it.
    Ok(unsafe { UnixListener::from_raw_fd(fd) })
}

/// Variable naming a task limit the agent applies to itself and everything it starts, as
/// `RLIMIT_NPROC`. Set by backends whose kernel counts the sandbox's tasks itself (gVisor's),
/// where the host's pids cgroup counts only the threads of that kernel. Everything in such a
/// box runs as one user without `CAP_SYS_RESOURCE`, so the limit holds for the whole box and
/// nothing in it can raise it. (gVisor's own pids cgroup was tried first: it lets the count
/// pass its limit.)
pub const PIDS_MAX_VAR: &str = "SANDBOXD_PIDS_MAX";

/// Apply [`PIDS_MAX_VAR`], if set.
pub fn limit_tasks() -> io::Result<()> {
    let Some(v) = std::env::var_os(PIDS_MAX_VAR) else {
        return Ok(());
    };
    let max: u64 = v
        .to_str()
        .and_then(|s| s.trim().parse().ok())
        .filter(|n| *n > 0)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{PIDS_MAX_VAR}={v:?} is not a positive number"),
            )
        })?;
    sys::set_rlimit(libc::RLIMIT_NPROC, max)
}
