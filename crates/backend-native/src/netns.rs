//! Network namespaces made ahead of time, so that a box's create does not wait for one.
//!
//! Making a network namespace is the dearest part of a box's `clone`: the kernel registers
//! the namespace's sysctl tables and its loopback device, about a fifth of the server's CPU
//! in a create → delete loop, all of it on the create's critical path. A new namespace holds
//! nothing but a `lo` that is down, so one made a moment earlier is as fresh as one made in
//! the `clone`: a background thread keeps [`NetnsPool::SIZE`] of them, each held by an open
//! `/proc/thread-self/ns/net` descriptor, and the cloned child enters one with `setns` instead
//! of `CLONE_NEWNET`. Every namespace is handed out once; when none is ready (a burst of
//! creates), the clone makes its own as before.
//!
//! The thread makes each namespace with `unshare(CLONE_NEWNET)`, which moves the thread
//! itself into it, opens it, and `setns`es back to the namespace it started in: the thread
//! is never inside a namespace a box will use. It is woken by the create that took a
//! namespace, often on that create's CPU, and as an ordinary thread (even at nice 10) it
//! preempted the create there for the 0.7 ms a namespace takes: on a scheduler trace of 30
//! creates, 10 to 17 times. It runs as `SCHED_BATCH` at nice 19: a batch thread never preempts
//! on its wake-up, so the create goes on and the refill waits for a CPU to come free (or
//! the other, idle, one to take it). Not `SCHED_IDLE`: making a namespace takes kernel locks
//! (`rtnl`) that a starved holder would keep from the creates that make their own in a
//! burst; nice 19 still gets its small share.
//!
//! Not for rootless servers: the namespaces would belong to the host's user namespace, which
//! the box's root does not own; a rootless box makes its own under its own user namespace.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex};

/// A pool of fresh network namespaces (see the module docs). Dropping it ends its thread.
pub(crate) struct NetnsPool {
    shared: Arc<Shared>,
}

/// What the pool and its filler thread share.
struct Shared {
    state: Mutex<PoolState>,
    /// Wakes the filler when a namespace was taken or the pool dropped.
    wanted: Condvar,
}

struct PoolState {
    ready: Vec<OwnedFd>,
    /// The pool was dropped: the filler ends.
    closed: bool,
}

impl NetnsPool {
    /// Namespaces kept ready: enough for creates one after another; few, since each idle
    /// one holds its kernel memory until a box takes it.
    pub(crate) const SIZE: usize = 2;

    /// Start the pool and its filler thread. Without the thread the pool stays empty: every
    /// box makes its own namespace.
    pub(crate) fn start() -> NetnsPool {
        let shared = Arc::new(Shared {
            state: Mutex::new(PoolState {
                ready: Vec::with_capacity(Self::SIZE),
                closed: false,
            }),
            wanted: Condvar::new(),
        });
        let filler = Arc::clone(&shared);
        let spawned = std::thread::Builder::new()
            .name("netns-pool".into())
            .stack_size(64 << 10)
            .spawn(move || fill(&filler));
        if let Err(e) = spawned {
            tracing::warn!("cannot start the network namespace pool ({e}); each box makes its own");
        }
        NetnsPool { shared }
    }

    /// A fresh network namespace, if one is ready.
    pub(crate) fn take(&self) -> Option<OwnedFd> {
        let fd = self.shared.state.lock().unwrap().ready.pop();
        if fd.is_some() {
            self.shared.wanted.notify_one();
        }
        fd
    }

    /// Namespaces ready now (for tests).
    #[cfg(test)]
    fn ready(&self) -> usize {
        self.shared.state.lock().unwrap().ready.len()
    }
}

impl Drop for NetnsPool {
    fn drop(&mut self) {
        let mut state = self.shared.state.lock().unwrap();
        state.closed = true;
        // The namespaces nobody took go now, not when the filler gets round to ending.
        state.ready.clear();
        self.shared.wanted.notify_one();
    }
}

/// The filler thread: keep the pool full until it is dropped.
fn fill(shared: &Shared) {
    // SAFETY: sched_setscheduler and setpriority of this thread (pid 0 is the caller; on
    // Linux both are per thread) change only how it is scheduled; an all-zero sched_param
    // (priority 0, what SCHED_BATCH takes; musl's has more fields than glibc's) is valid
    // for the call's duration. Failure leaves the default, which only costs speed.
    unsafe {
        let param: libc::sched_param = std::mem::zeroed();
        libc::sched_setscheduler(0, libc::SCHED_BATCH, &param);
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 19);
    }
    if let Err(e) = fill_until_closed(shared) {
        tracing::warn!(
            "cannot make network namespaces ahead of time ({e}); each box makes its own"
        );
    }
}

fn fill_until_closed(shared: &Shared) -> std::io::Result<()> {
    let home = open_own_netns()?;
    loop {
        {
            let mut state = shared.state.lock().unwrap();
            while state.ready.len() >= NetnsPool::SIZE && !state.closed {
                state = shared.wanted.wait(state).unwrap();
            }
            if state.closed {
                return Ok(());
            }
        }
        let fd = new_netns(&home)?;
        let mut state = shared.state.lock().unwrap();
        if state.closed {
            return Ok(());
        }
        state.ready.push(fd);
    }
}

/// A descriptor of this thread's current network namespace.
fn open_own_netns() -> std::io::Result<OwnedFd> {
    // SAFETY: opening a procfs file with a NUL-terminated literal path.
    let fd = unsafe {
        libc::open(
            c"/proc/thread-self/ns/net".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd == -1 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Make a new network namespace and return a descriptor holding it; the thread goes back to
/// `home` (its own namespace) afterwards.
fn new_netns(home: &OwnedFd) -> std::io::Result<OwnedFd> {
    // SAFETY: unshare affects only the calling thread's namespaces.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } == -1 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = open_own_netns();
    // SAFETY: setns on a descriptor of a network namespace this thread was in moments ago.
    if unsafe { libc::setns(home.as_raw_fd(), libc::CLONE_NEWNET) } == -1 {
        return Err(std::io::Error::last_os_error());
    }
    fd
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn ns_inode(path: &str) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).unwrap().ino()
    }

    fn wait_ready(pool: &NetnsPool, n: usize) {
        let start = Instant::now();
        while pool.ready() < n {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "pool never filled"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Each namespace handed out is new: not the host's, not another one handed out, and
    /// the pool refills after a take.
    #[test]
    fn hands_out_distinct_fresh_namespaces_and_refills() {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: making network namespaces needs root");
            return;
        }
        let host = ns_inode("/proc/self/ns/net");
        let pool = NetnsPool::start();
        wait_ready(&pool, NetnsPool::SIZE);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..5 {
            wait_ready(&pool, 1);
            let fd = pool.take().expect("a namespace is ready");
            let ino = ns_inode(&format!("/proc/self/fd/{}", fd.as_raw_fd()));
            assert_ne!(ino, host, "a pooled namespace is the host's");
            assert!(seen.insert(ino), "namespace {ino} handed out twice");
        }
        wait_ready(&pool, NetnsPool::SIZE);
        // The calling thread stayed in the host's namespace, and the filler went back to it.
        assert_eq!(ns_inode("/proc/thread-self/ns/net"), host);
        let fillers = filler_threads();
        assert_eq!(fillers.len(), 1);
        assert_eq!(ns_inode(fillers[0].join("ns/net").to_str().unwrap()), host);
        // Dropping the pool ends its thread.
        drop(pool);
        let start = Instant::now();
        while !filler_threads().is_empty() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the filler outlived its pool"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// `/proc/self/task/<tid>` of every thread named like the filler.
    fn filler_threads() -> Vec<std::path::PathBuf> {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .map(|t| t.unwrap().path())
            .filter(|dir| {
                std::fs::read_to_string(dir.join("comm")).is_ok_and(|c| c.trim() == "netns-pool")
            })
            .collect()
    }
}
