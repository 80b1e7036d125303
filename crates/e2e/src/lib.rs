//! End-to-end harness: start a real `sandboxd serve` process on a free loopback port with its own
//! state directory and cgroup prefix, so that tests and benchmarks exercise exactly what a user
//! runs, side by side without touching each other's sandboxes.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use sandboxd_client::Client;

/// Where templates are found: `SANDBOXD_TEMPLATES_DIR`, else the server's default.
pub fn templates_dir() -> PathBuf {
    std::env::var_os("SANDBOXD_TEMPLATES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/sandboxd/templates"))
}

/// The directory holding the `sandboxd`, `sandboxd-init` and `sandboxd-agent` binaries: the
/// `SANDBOXD_BIN_DIR` variable, else the cargo target directory of the running executable.
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("SANDBOXD_BIN_DIR") {
        return d.into();
    }
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().expect("exe dir");
    // Test executables live in target/<profile>/deps; binaries one level up.
    if dir.ends_with("deps") {
        dir.parent().expect("profile dir").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// A `sandboxd serve` child process, stopped (SIGTERM, then SIGKILL) when dropped.
#[derive(Debug)]
pub struct Server {
    child: Option<Child>,
    /// Its base URL.
    pub url: String,
    /// Its bearer token, if any.
    pub token: Option<String>,
    /// Its private state directory (also holds the workspaces and the run dir).
    pub state: tempfile::TempDir,
    /// The cgroup prefix of its sandboxes.
    pub cgroup_parent: String,
    args: Vec<(String, String)>,
    port: u16,
    host: String,
    netns: Option<String>,
    stderr: Option<PathBuf>,
}

/// Options of [`Server::start`].
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    /// Extra environment settings (`KEY`, `value`).
    pub env: Vec<(String, String)>,
    /// A bearer token to require.
    pub token: Option<String>,
    /// Run the server in this network namespace (one made with `ip netns add`).
    pub netns: Option<String>,
    /// Listen on this address instead of 127.0.0.1.
    pub host: Option<String>,
    /// Listen on this port instead of a free one.
    pub port: Option<u16>,
    /// Append the server's stderr (its log) to this file instead of the test's stderr.
    pub stderr: Option<PathBuf>,
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Server {
    /// Start a server and wait until `/health` answers.
    pub async fn start(opts: ServerOptions) -> Result<Server> {
        let state = tempfile::Builder::new().prefix("sandboxd-e2e-").tempdir()?;
        let cgroup_parent = format!(
            "sandboxd-e2e-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let mut args = vec![
            ("SANDBOXD_STATE_DIR".to_string(), path(state.path())),
            ("SANDBOXD_RUN_DIR".into(), path(&state.path().join("run"))),
            ("SANDBOXD_TEMPLATES_DIR".into(), path(&templates_dir())),
            ("SANDBOXD_CGROUP_PARENT".into(), cgroup_parent.clone()),
            ("RUST_LOG".into(), "warn".into()),
            // Below the kernel's ephemeral ports (which the default range overlaps): a
            // published port must not take the free port another test's server is about to
            // bind. Tests that count on a range of their own set one.
            ("PORT_RANGE".into(), "[26000,29999]".into()),
        ];
        if let Some(t) = &opts.token {
            args.push(("BEARER_TOKEN".into(), t.clone()));
        }
        args.extend(opts.env.iter().cloned());
        let mut server = Server {
            child: None,
            url: String::new(),
            token: opts.token.clone(),
            state,
            cgroup_parent,
            args,
            port: match opts.port {
                Some(p) => p,
                None => free_port()?,
            },
            host: opts.host.clone().unwrap_or_else(|| "127.0.0.1".into()),
            netns: opts.netns.clone(),
            stderr: opts.stderr.clone(),
        };
        server.url = format!("http://{}:{}", server.host, server.port);
        server.spawn().await?;
        Ok(server)
    }

    /// The host directory of a session's `/workspace` (the server's default
    /// `DEFAULT_MOUNT_DIR`, `<state>/workspaces`; a sandbox's session is its id unless the
    /// create named one).
    pub fn workspace(&self, session: &str) -> PathBuf {
        self.state.path().join("workspaces").join(session)
    }

    async fn spawn(&mut self) -> Result<()> {
        let exe = bin_dir().join("sandboxd");
        if !exe.exists() {
            bail!(
                "{} is missing: build the binaries first (`cargo build --workspace --bins`)",
                exe.display()
            );
        }
        let mut cmd = match &self.netns {
            Some(ns) => {
                // nsenter joins only the network namespace (`ip netns exec` would also mount a
                // new /sys, hiding the cgroup file systems) and execs the server in place: the
                // child's pid is the server's.
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{ns}")).arg("--").arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        cmd.arg("serve")
            .env("PORT", self.port.to_string())
            .env("HOST", &self.host)
            .stdin(Stdio::null());
        for (k, v) in &self.args {
            cmd.env(k, v);
        }
        if let Some(p) = &self.stderr {
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("open {}", p.display()))?;
            cmd.stderr(log);
        }
        self.child = Some(
            cmd.spawn()
                .with_context(|| format!("start {}", exe.display()))?,
        );
        let client = self.client();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if client.health().await.is_ok() {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!("sandboxd serve exited during start-up: {status}");
            }
            if Instant::now() > deadline {
                bail!("sandboxd serve did not answer /health within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A client of this server.
    pub fn client(&self) -> Client {
        let c = Client::new(self.url.clone());
        match &self.token {
            Some(t) => c.with_token(t.clone()),
            None => c,
        }
    }

    /// The server's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Kill the server with SIGKILL (a crash), leaving its sandboxes behind.
    pub fn kill_hard(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stop the server with SIGTERM and wait for it, as an operator would.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        // SAFETY: kill(2) on the pid of our own child, which has not been reaped yet.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(s)) = c.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        c.wait().ok()
    }

    /// Start the server again on the same port, state and cgroup prefix (after [`Self::kill_hard`]).
    pub async fn restart(&mut self) -> Result<()> {
        self.stop();
        self.spawn().await
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
        // A stopped server removes its cgroup parent, but one killed (or stopped with
        // sandboxes kept) leaves it, and a test server's parent is unique: it would pile up
        // run after run. Only empty groups go: a sandbox's group that a failed test leaked
        // stays, with its processes, for whoever looks.
        for dir in cgroup_dirs(&self.cgroup_parent) {
            remove_empty_tree(&dir);
        }
    }
}

/// Every cgroup directory named `parent` on this host, in any hierarchy (v1 or v2).
pub fn cgroup_dirs(parent: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let root = PathBuf::from("/sys/fs/cgroup");
    let direct = root.join(parent);
    if direct.is_dir() {
        out.push(direct);
    }
    for e in std::fs::read_dir(&root).into_iter().flatten().flatten() {
        let d = e.path().join(parent);
        if d.is_dir() {
            out.push(d);
        }
    }
    out
}

/// `rmdir` every directory of the tree at `dir`, children first; non-empty ones stay.
fn remove_empty_tree(dir: &Path) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_empty_tree(&e.path());
        }
    }
    let _ = std::fs::remove_dir(dir);
}

fn path(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Percentile (0..=100) of a sample, by nearest rank.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A private `dockerd` for tests: its own data and exec roots and socket in a temporary
/// directory, no bridge network and no iptables rules (sandboxes have no network anyway), so
/// that it touches nothing of the machine's and several can run at once. Stopped when dropped.
pub struct DockerDaemon {
    child: Option<Child>,
    /// `unix://<socket>`, for `DOCKER_HOST`.
    pub host: String,
    /// `tcp://127.0.0.1:<port>` when started with [`DockerDaemon::start_with_tcp`].
    pub tcp: Option<String>,
    dir: tempfile::TempDir,
}

impl DockerDaemon {
    /// Start one and wait until it answers. Fails, saying how to install it, when `dockerd`
    /// is missing.
    pub fn start() -> Result<DockerDaemon> {
        Self::start_inner(false)
    }

    /// Like [`DockerDaemon::start`], also listening on TCP on loopback (as an engine several
    /// machines share would, on their network).
    pub fn start_with_tcp() -> Result<DockerDaemon> {
        Self::start_inner(true)
    }

    fn start_inner(tcp: bool) -> Result<DockerDaemon> {
        let dir = tempfile::Builder::new()
            .prefix("sandboxd-dockerd-")
            .tempdir()?;
        let tcp = if tcp {
            Some(format!("tcp://127.0.0.1:{}", free_port()?))
        } else {
            None
        };
        let sock = dir.path().join("docker.sock");
        let log = std::fs::File::create(dir.path().join("dockerd.log"))?;
        let child = Command::new("dockerd")
            .arg("--data-root")
            .arg(dir.path().join("data"))
            .arg("--exec-root")
            .arg(dir.path().join("exec"))
            .arg("--pidfile")
            .arg(dir.path().join("dockerd.pid"))
            .arg("--host")
            .arg(format!("unix://{}", sock.display()))
            .args(tcp.iter().flat_map(|t| ["--host", t.as_str()]))
            .args(["--bridge", "none", "--iptables=false", "--ip-masq=false"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context(
                "cannot start dockerd; install it: scripts/setup (apt-get install docker.io)",
            )?;
        let mut d = DockerDaemon {
            child: Some(child),
            host: format!("unix://{}", sock.display()),
            tcp,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if std::os::unix::net::UnixStream::connect(&sock).is_ok()
                && Command::new("docker")
                    .env("DOCKER_HOST", &d.host)
                    .arg("info")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            {
                return Ok(d);
            }
            if let Some(status) = d.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("dockerd exited at start ({status}): {}", d.log());
            }
            if Instant::now() > deadline {
                bail!("dockerd did not answer within 60 s: {}", d.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }

    /// Names of the containers it has (running or not).
    pub fn containers(&self) -> Vec<String> {
        let mut ps = Command::new("docker");
        ps.env("DOCKER_HOST", &self.host);
        container_names(ps)
    }
}

/// The container names `<engine> ps -a` lists, `engine` being a `docker` or `podman` command
/// set up for its engine.
fn container_names(mut engine: Command) -> Vec<String> {
    engine
        .args(["ps", "-a", "--format", "{{.Names}}"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

impl Drop for DockerDaemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child, not reaped yet; SIGTERM lets dockerd stop its
            // containers and unmount its layers.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A private Podman API service (`podman system service`), its Docker-compatible socket in a
/// temporary directory and its own storage, stopped (its containers removed) on drop.
pub struct PodmanService {
    child: Option<Child>,
    /// `unix://<socket>`, for `DOCKER_HOST`.
    pub host: String,
    dir: tempfile::TempDir,
}

impl PodmanService {
    /// Start one and wait until it answers. Fails, saying how to install it, when `podman`
    /// is missing.
    pub fn start() -> Result<PodmanService> {
        let dir = tempfile::Builder::new()
            .prefix("sandboxd-podman-")
            .tempdir()?;
        let sock = dir.path().join("podman.sock");
        let log = std::fs::File::create(dir.path().join("podman.log"))?;
        let child = Command::new("podman")
            .args(Self::storage_args(dir.path()))
            .args(["system", "service", "--time=0"])
            .arg(format!("unix://{}", sock.display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start podman; install it: scripts/setup (apt-get install podman)")?;
        let mut p = PodmanService {
            child: Some(child),
            host: format!("unix://{}", sock.display()),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if std::os::unix::net::UnixStream::connect(&sock).is_ok() {
                return Ok(p);
            }
            if let Some(status) = p.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("podman exited at start ({status}): {}", p.log());
            }
            if Instant::now() > deadline {
                bail!("podman did not answer within 60 s: {}", p.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn storage_args(dir: &Path) -> Vec<String> {
        vec![
            format!("--root={}", dir.join("root").display()),
            format!("--runroot={}", dir.join("run").display()),
            "--storage-driver=overlay".to_string(),
            // Podman prefers crun when it is installed, and crun 1.8 refuses this machine's
            // hybrid cgroup layout; runc (docker.io's) handles it.
            "--runtime=runc".to_string(),
        ]
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("podman.log")).unwrap_or_default()
    }

    /// Names of the containers it has (running or not).
    pub fn containers(&self) -> Vec<String> {
        let mut ps = Command::new("podman");
        ps.args(Self::storage_args(self.dir.path()));
        container_names(ps)
    }
}

impl Drop for PodmanService {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Containers left by a failed test, and the storage's mounts, go before the directory.
        let _ = Command::new("podman")
            .args(Self::storage_args(self.dir.path()))
            .args(["rm", "--all", "--force"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("podman")
            .args(Self::storage_args(self.dir.path()))
            .args(["system", "reset", "--force"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_by_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 50.0), Duration::from_millis(50));
        assert_eq!(percentile(&v, 95.0), Duration::from_millis(95));
        assert_eq!(percentile(&v, 100.0), Duration::from_millis(100));
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
    }
}
