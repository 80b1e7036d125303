//! `WORKERS` > 1: several server processes on one machine, one listening socket, one Redis.
//!
//! `sandboxd serve` with `WORKERS=N` becomes the node's supervisor. It does what must happen
//! once per node: the clean-up at start (through a manager of its own, which adopts the
//! sandboxes the store still records for this node and removes what else an earlier run left)
//! and, at the end, the removal of the node's sandboxes (`AUTO_CLEANUP`). In between it binds
//! the listening socket, starts N worker processes (the same executable and arguments, with
//! [`WORKER_ENV`] set) that inherit the socket and accept on it side by side, restarts a worker
//! that dies, and passes SIGTERM on to them.
//!
//! A worker is a whole server: every request can reach any worker, because they share the
//! sandboxes' records (and locks) in Redis and, on one machine, the boxes themselves: any
//! worker reaches any box's agent by its socket and manages it through its cgroups. A worker
//! neither cleans up at start nor removes sandboxes when it stops.

use std::os::fd::{AsRawFd, FromRawFd};
use std::time::Duration;

use sandboxd_core::templates::Templates;
use sandboxd_core::Manager;
use tokio::process::{Child, Command};

use crate::settings::Settings;
use crate::{backends, build_store, manager_config, shutdown_signal, ServerError};

/// Set to `1` in a worker's environment by its supervisor.
pub const WORKER_ENV: &str = "SANDBOXD_WORKER";

/// The descriptor of the listening socket a worker inherits.
pub const LISTEN_FD_ENV: &str = "SANDBOXD_WORKER_LISTEN_FD";

/// How long workers get to stop after SIGTERM before they are killed.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// Whether this process is a worker of a supervisor.
pub fn is_worker() -> bool {
    std::env::var(WORKER_ENV).is_ok_and(|v| v == "1")
}

/// The listening socket a worker inherited from its supervisor, if this is a worker.
pub fn inherited_listener() -> Option<std::io::Result<std::net::TcpListener>> {
    if !is_worker() {
        return None;
    }
    let fd: i32 = std::env::var(LISTEN_FD_ENV).ok()?.parse().ok()?;
    // SAFETY: the supervisor put a listening TCP socket at this descriptor before exec'ing
    // us, and nothing else in this process owns it.
    let listener = unsafe { std::net::TcpListener::from_raw_fd(fd) };
    Some(listener.set_nonblocking(true).map(|()| listener))
}

fn spawn_worker(n: usize, fd: i32) -> Result<Child, ServerError> {
    let exe = std::env::current_exe()
        .map_err(|e| ServerError::Workers(format!("cannot find this executable: {e}")))?;
    let mut cmd = Command::new(&exe);
    cmd.args(std::env::args_os().skip(1))
        .env(WORKER_ENV, "1")
        .env(LISTEN_FD_ENV, fd.to_string())
        .env("SANDBOXD_WORKER_INDEX", n.to_string())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    // SAFETY: the closure runs in the child between fork and exec and only calls prctl(2),
    // which is async-signal-safe. A worker must not outlive a supervisor killed with SIGKILL:
    // it would keep the port, and the next supervisor could not bind it.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
        .map_err(|e| ServerError::Workers(format!("cannot start worker {n}: {e}")))
}

/// Run the node: clean up, bind, start `settings.workers` workers and keep them running until
/// SIGINT or SIGTERM, then stop them and (with `AUTO_CLEANUP`) remove the node's sandboxes.
pub async fn supervise(settings: Settings) -> Result<(), ServerError> {
    if settings.redis.is_none() {
        return Err(ServerError::Unsupported(format!(
            "WORKERS={} needs REDIS_ENABLED=true: the workers share the sandboxes' state in Redis",
            settings.workers
        )));
    }
    for w in &settings.warnings {
        tracing::warn!("{w}");
    }
    let templates = Templates::new(settings.templates_dir());
    let mut config = manager_config(&settings, &templates);
    // The workers keep the pools; this manager is here for the start and the end.
    config.pool_size = 0;
    config.worker = false;
    let manager = Manager::start(
        backends::build(&settings).await?,
        build_store(&settings).await?,
        templates,
        config,
    )
    .await?;

    let addr = settings.bind_addr();
    let listener = std::net::TcpListener::bind(&addr).map_err(|source| ServerError::Bind {
        addr: addr.clone(),
        source,
    })?;
    let fd = listener.as_raw_fd();
    // SAFETY: fcntl on a descriptor this process owns; only the close-on-exec flag changes,
    // so that the workers inherit the socket.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } != 0 {
        return Err(ServerError::Workers(format!(
            "cannot share the listening socket: {}",
            std::io::Error::last_os_error()
        )));
    }
    let local = listener.local_addr().map_err(ServerError::Serve)?;
    let mut workers = Vec::with_capacity(settings.workers as usize);
    for n in 0..settings.workers as usize {
        workers.push(spawn_worker(n, fd)?);
    }
    tracing::info!(
        workers = settings.workers,
        node = %settings.node_id,
        "sandboxd listening on http://{local} with {} worker processes",
        settings.workers
    );

    let stop = shutdown_signal();
    tokio::pin!(stop);
    loop {
        let (status, n) = {
            let exited =
                futures::future::select_all(workers.iter_mut().map(|w| Box::pin(w.wait())));
            tokio::select! {
                _ = &mut stop => break,
                (status, n, _) = exited => (status, n),
            }
        };
        tracing::warn!(worker = n, status = ?status, "worker exited; starting it again");
        tokio::time::sleep(Duration::from_millis(500)).await;
        workers[n] = spawn_worker(n, fd)?;
    }

    tracing::info!("stop signal received; stopping the workers");
    for w in &workers {
        if let Some(pid) = w.id() {
            // SAFETY: kill(2) on our own child, which has not been reaped yet.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
    }
    for w in &mut workers {
        if tokio::time::timeout(STOP_GRACE, w.wait()).await.is_err() {
            let _ = w.kill().await;
        }
    }
    drop(listener);
    if settings.auto_cleanup {
        manager.shutdown().await;
    } else {
        manager.shutdown_pools().await;
    }
    Ok(())
}
