//! How the agent's children are set up between `fork` and `exec`.

use std::os::unix::process::CommandExt;
use std::process::Command;

/// Make `cmd` start in a clean state: its own session and process group (so that the agent can
/// kill it with everything it started), no blocked or ignored signals inherited from the agent,
/// and the highest OOM score, so that under a memory limit the kernel kills user processes
/// before the agent.
pub fn isolate(cmd: &mut Command) {
    // SAFETY: the hook runs in the forked child of a multi-threaded parent, where only
    // async-signal-safe functions may be called. It uses only setsid, sigprocmask, signal,
    // open, write and close (all async-signal-safe), touches no lock and allocates nothing: the
    // path is a static C string and errors are built from the raw errno.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            // Handlers are reset by exec anyway; an ignored signal would be inherited, and
            // SIGPIPE is the only one the agent ignores (`init::setup_process` resets the rest
            // at start).
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            let fd = libc::open(
                c"/proc/self/oom_score_adj".as_ptr(),
                libc::O_WRONLY | libc::O_CLOEXEC,
            );
            if fd >= 0 {
                // Failure is fine: the sandbox may lack /proc or forbid raising the score.
                libc::write(fd, b"1000".as_ptr().cast(), 4);
                libc::close(fd);
            }
            Ok(())
        });
    }
}
