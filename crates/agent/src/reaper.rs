//! The one place that waits for child processes.
//!
//! The agent is PID 1 of its pid namespace, so every orphan of the sandbox is re-parented to it
//! and must be reaped, or zombies pile up until the pid limit is hit. At the same time the
//! commands the agent started need their own exit status. Both are served here: a reaper
//! thread for everything, and each command's spawner for its own child (below). Nothing else in
//! the agent may call `wait*` (in particular never `std::process::Child::wait`), or it would
//! steal statuses from them.
//!
//! # How the race between exit and registration is closed
//!
//! A child may exit before its spawner has recorded interest in it. The reaper therefore first
//! *peeks* at an exited child with `waitid(P_ALL, WEXITED | WNOWAIT)`, which leaves the zombie
//! in place, then takes the registry lock and only then reaps that specific pid. Spawning
//! happens with the same lock held (`Reaper::spawn`), so by the time the reaper can look at a
//! child's status the child is registered, and a pid can never be reused between the peek and
//! the dispatch (a zombie keeps its pid). Statuses of unregistered children (orphans) are
//! dropped. Holding the lock across the spawn also covers the spawn's own clean-up: when
//! `execve` fails, `process::Command` reaps its doomed child itself (the one other
//! `waitpid` of the agent, for a child never registered), and the reaper, still blocked on the
//! lock, finds nothing left to reap.
//!
//! # Spawners reap their own children
//!
//! Every child is started with a pidfd, which becomes readable when the child exits. Its
//! spawner polls that and reaps the child through it (`waitid(P_PIDFD)`) under the registry
//! lock, unless the reaper thread reaped it first and stored the status. So a command's exit
//! reaches the thread serving it straight from the kernel: no hop through the reaper thread,
//! and no wake-up of that thread at each spawn, each of which would be an inter-processor
//! interrupt (costly in a virtual machine). The reaper thread is still what reaps orphans, and
//! children whose watch was dropped.
//!
//! # Without pidfds
//!
//! Where the kernel has no pidfds (gVisor; Linux before 5.4), the reaper thread reaps every
//! child and signals each registered one's exit through an eventfd that stands in for the
//! pidfd; spawns then wake the thread, which otherwise sleeps while there are no children.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use crate::process::{Child, Command};
use crate::sys;

/// How long the reaper thread sleeps when the agent has no children at all, before it looks
/// for new ones (orphans re-parented to the agent included).
const IDLE_RECHECK: Duration = Duration::from_secs(1);

/// The process-wide reaper. Obtain it with [`Reaper::global`].
pub struct Reaper {
    inner: Mutex<Inner>,
    /// Wakes the reaper thread, idle for want of children, at a spawn (without pidfds only).
    spawned: Condvar,
}

struct Inner {
    children: HashMap<libc::pid_t, Tracked>,
    /// Spawns so far: the reaper thread, finding no children, sleeps only if none happened
    /// since it looked (so that a wake-up between its look and its sleep is not lost).
    spawns: u64,
}

struct Tracked {
    /// Raw wait status once the child was reaped.
    status: Option<i32>,
    /// Whether the host may signal this child's process group by pid ([`Reaper::signal_group`]).
    host_signalable: bool,
    /// Without pidfds: the eventfd the reaper thread signals once it has stored `status`.
    notify: Option<OwnedFd>,
}

/// Why [`Reaper::signal_group`] refused.
#[derive(Debug)]
pub enum SignalError {
    /// The pid is not a running command of this agent.
    NotFound,
    /// `kill(2)` failed.
    Os(io::Error),
}

impl Reaper {
    /// The reaper of this process, started on first use.
    pub fn global() -> &'static Reaper {
        static REAPER: OnceLock<&'static Reaper> = OnceLock::new();
        REAPER.get_or_init(|| {
            let reaper: &'static Reaper = Box::leak(Box::new(Reaper {
                inner: Mutex::new(Inner {
                    children: HashMap::new(),
                    spawns: 0,
                }),
                spawned: Condvar::new(),
            }));
            std::thread::Builder::new()
                .name("reaper".into())
                .stack_size(64 * 1024)
                .spawn(move || reaper.run())
                .expect("cannot start the reaper thread");
            reaper
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the map consistent (every mutation is a single
        // insert/remove/field store), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Spawn `cmd` and register it, atomically with respect to the reaper. Returns the
    /// `Child` (its pid and pipes) and the handle that reports its exit. `host_signalable`
    /// lets [`Reaper::signal_group`] address it by pid.
    pub(crate) fn spawn(
        &'static self,
        cmd: &Command,
        host_signalable: bool,
    ) -> io::Result<(Child, ExitWatch)> {
        // Made before the spawn: failing afterwards would leave a child nobody watches.
        let event = match sys::pidfds_supported() {
            true => None,
            false => {
                let fd = sys::eventfd()?;
                Some((fd.try_clone()?, fd))
            }
        };
        let mut inner = self.lock();
        let mut child = cmd.spawn()?;
        let pid = child.pid;
        let (exit, notify, by_pidfd) = match (child.pidfd.take(), event) {
            (Some(pidfd), _) => (pidfd, None, true),
            (None, Some((ours, theirs))) => (ours, Some(theirs), false),
            (None, None) => unreachable!("pidfds are supported, so the spawn made one"),
        };
        inner.children.insert(
            pid,
            Tracked {
                status: None,
                host_signalable,
                notify,
            },
        );
        inner.spawns += 1;
        drop(inner);
        if !by_pidfd {
            self.spawned.notify_one();
        }
        Ok((
            child,
            ExitWatch {
                pid,
                exit,
                by_pidfd,
                reaper: self,
            },
        ))
    }

    /// Signal the process group led by `pid`, a command the host started, while that command
    /// has not been reaped yet. Once its leader is reaped the pid may be recycled, so the
    /// request is refused rather than risk signalling a stranger.
    pub fn signal_group(&self, pid: libc::pid_t, sig: libc::c_int) -> Result<(), SignalError> {
        let inner = self.lock();
        match inner.children.get(&pid) {
            Some(t) if t.host_signalable && t.status.is_none() => {
                sys::kill(-pid, sig).map_err(SignalError::Os)
            }
            _ => Err(SignalError::NotFound),
        }
    }

    /// Signal the process group of every tracked, unreaped child (used at shutdown).
    pub fn signal_all_groups(&self, sig: libc::c_int) {
        let inner = self.lock();
        for (pid, t) in &inner.children {
            if t.status.is_none() {
                let _ = sys::kill(-pid, sig);
            }
        }
    }

    /// Signal the process group of any registered, unreaped child of ours.
    pub(crate) fn signal_registered(&self, pid: libc::pid_t, sig: libc::c_int) -> bool {
        let inner = self.lock();
        match inner.children.get(&pid) {
            Some(t) if t.status.is_none() => sys::kill(-pid, sig).is_ok(),
            _ => false,
        }
    }

    /// The status of registered child `pid` once it has exited, reaping it through its
    /// `pidfd` (when it has one) unless the reaper thread got there first. Both reap only
    /// under the lock.
    fn status_of(&self, pid: libc::pid_t, pidfd: Option<BorrowedFd<'_>>) -> Option<ExitStatus> {
        let mut inner = self.lock();
        let t = inner.children.get_mut(&pid)?;
        if let (None, Some(pidfd)) = (t.status, pidfd) {
            t.status = sys::try_reap(pidfd);
        }
        t.status.map(ExitStatus::from_raw)
    }

    fn forget(&self, pid: libc::pid_t) {
        self.lock().children.remove(&pid);
    }

    fn run(&self) {
        loop {
            let spawns_before = self.lock().spawns;
            // SAFETY: an all-zero siginfo_t is a valid value for waitid to overwrite.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: `info` is writable; WNOWAIT leaves the child waitable so that it can be
            // reaped below under the lock.
            let r =
                unsafe { libc::waitid(libc::P_ALL, 0, &mut info, libc::WEXITED | libc::WNOWAIT) };
            if r < 0 {
                match io::Error::last_os_error().raw_os_error() {
                    Some(libc::EINTR) => {}
                    Some(libc::ECHILD) => {
                        // No children at all. With pidfds, spawns do not wake this thread
                        // (their spawners reap their own children), so it looks again in a
                        // while, for orphans of commands and of processes that joined the
                        // namespace from outside. Without, a spawn wakes it.
                        let inner = self.lock();
                        if inner.spawns == spawns_before {
                            let _ = self.spawned.wait_timeout(inner, IDLE_RECHECK);
                        }
                    }
                    _ => std::thread::sleep(Duration::from_millis(100)),
                }
                continue;
            }
            // SAFETY: waitid succeeded for a child state change, so the SIGCHLD fields are set.
            let pid = unsafe { info.si_pid() };
            if pid <= 0 {
                continue;
            }
            let mut inner = self.lock();
            let mut status: libc::c_int = 0;
            // SAFETY: `status` is writable; WNOHANG because someone (the spawn's failed-exec
            // path) may have reaped this pid already.
            let got = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            if got != pid {
                continue;
            }
            if let Some(t) = inner.children.get_mut(&pid) {
                t.status = Some(status);
                if let Some(fd) = t.notify.take() {
                    sys::eventfd_signal(fd.as_fd());
                }
            }
        }
    }
}

/// Handle on one spawned child's exit. Dropping it stops tracking the child: a status that
/// arrives later is discarded like an orphan's.
pub struct ExitWatch {
    pid: libc::pid_t,
    /// Readable from the child's exit on. Its pidfd where the kernel has them: the spawner
    /// learns of the exit straight from the kernel, not through the reaper thread, which would
    /// add a thread wake-up (an inter-processor interrupt, costly in a virtual machine) to
    /// every command. Otherwise an eventfd the reaper thread signals.
    exit: OwnedFd,
    /// Whether `exit` is a pidfd.
    by_pidfd: bool,
    reaper: &'static Reaper,
}

impl ExitWatch {
    /// The child's pid (also its process group id, as children call `setpgid(0, 0)`).
    pub fn pid(&self) -> libc::pid_t {
        self.pid
    }

    /// A descriptor that becomes readable once the child has exited; for `poll`.
    pub fn exit_fd(&self) -> BorrowedFd<'_> {
        self.exit.as_fd()
    }

    /// The exit status, if the child has exited.
    pub fn status(&self) -> Option<ExitStatus> {
        self.reaper
            .status_of(self.pid, self.by_pidfd.then(|| self.exit.as_fd()))
    }

    /// Wait up to `timeout` for the exit status.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.status() {
                return Some(s);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let mut fds = [sys::pollfd(
                std::os::fd::AsRawFd::as_raw_fd(&self.exit),
                libc::POLLIN,
            )];
            let _ = sys::poll(&mut fds, Some(left));
        }
    }

    /// Signal the child's process group, unless the child was already reaped (after which
    /// its pid may belong to someone else). Returns whether a signal was sent.
    pub fn signal_group(&self, sig: libc::c_int) -> bool {
        self.reaper.signal_registered(self.pid, sig)
    }
}

impl Drop for ExitWatch {
    fn drop(&mut self) {
        self.reaper.forget(self.pid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::Stdio;
    use std::fs::File;
    use std::io::Read;

    /// Children that exit immediately race their own registration; every one of them must
    /// still deliver its own status, and none may be lost to the reaper's orphan path.
    #[test]
    fn immediate_exits_are_never_lost() {
        let reaper = Reaper::global();
        let watches: Vec<_> = (0..40)
            .map(|i| {
                let mut cmd = Command::new("/bin/sh");
                cmd.arg("-c").arg(format!("exit {}", i % 7));
                let (_child, watch) = reaper.spawn(&cmd, false).unwrap();
                (i % 7, watch)
            })
            .collect();
        for (code, watch) in watches {
            let status = watch
                .wait_timeout(Duration::from_secs(30))
                .expect("status delivered");
            assert_eq!(status.code(), Some(code));
        }
    }

    /// Without pidfds (gVisor), exits reach the spawner through the reaper thread, which a
    /// spawn wakes even while it sleeps for want of children.
    #[test]
    fn exits_are_delivered_without_pidfds() {
        sys::TESTS_WITHOUT_PIDFDS.store(true, std::sync::atomic::Ordering::Relaxed);
        let reaper = Reaper::global();
        for round in 0..3 {
            let watches: Vec<_> = (0..10)
                .map(|i| {
                    let mut cmd = Command::new("/bin/sh");
                    cmd.arg("-c").arg(format!("exit {}", i % 5));
                    let (_child, watch) = reaper.spawn(&cmd, false).unwrap();
                    assert!(!watch.by_pidfd);
                    (i % 5, watch)
                })
                .collect();
            for (code, watch) in watches {
                let status = watch
                    .wait_timeout(Duration::from_secs(30))
                    .expect("status delivered");
                assert_eq!(status.code(), Some(code), "round {round}");
                // The exit descriptor is readable once the status is known.
                let mut fds = [sys::pollfd(
                    std::os::fd::AsRawFd::as_raw_fd(&watch.exit_fd()),
                    libc::POLLIN,
                )];
                assert_eq!(sys::poll(&mut fds, Some(Duration::ZERO)).unwrap(), 1);
            }
            // Let the reaper thread fall idle (no children), so the next round's spawns must
            // wake it.
            std::thread::sleep(Duration::from_millis(50));
        }
        sys::TESTS_WITHOUT_PIDFDS.store(false, std::sync::atomic::Ordering::Relaxed);
    }

    /// A failed exec is waited for by the spawn itself while the registry lock is held; the
    /// reaper must not steal that status and must keep working afterwards.
    #[test]
    fn failed_exec_leaves_reaper_working() {
        let reaper = Reaper::global();
        for _ in 0..5 {
            let err = reaper
                .spawn(&Command::new("/nonexistent/program"), false)
                .err()
                .expect("spawn fails");
            assert_eq!(err.kind(), io::ErrorKind::NotFound);
        }
        let (_c, w) = reaper.spawn(&Command::new("/bin/true"), false).unwrap();
        assert_eq!(
            w.wait_timeout(Duration::from_secs(30)).unwrap().code(),
            Some(0)
        );
    }

    /// With the test process as a subreaper, an orphaned grandchild is re-parented to it and
    /// must be reaped (not left as a zombie), while the direct child's status still arrives.
    #[test]
    fn orphans_are_reaped() {
        // SAFETY: prctl with integer arguments only.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        let reaper = Reaper::global();
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg("sleep 0.3 >/dev/null 2>&1 & echo $!; exit 3")
            .stdout(Stdio::Piped);
        let (mut child, watch) = reaper.spawn(&cmd, false).unwrap();
        let mut out = String::new();
        File::from(child.stdout.take().unwrap())
            .read_to_string(&mut out)
            .unwrap();
        let orphan: i32 = out.trim().parse().unwrap();
        assert_eq!(
            watch.wait_timeout(Duration::from_secs(30)).unwrap().code(),
            Some(3)
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{orphan}/stat"));
            match stat {
                Err(_) => break,
                Ok(s) if Instant::now() > deadline => panic!("orphan not reaped: {s}"),
                Ok(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}
