//! The `docker` backend: each sandbox is a container on a Docker Engine (or Podman's
//! Docker-compatible socket), reached through the Engine API (bollard; the API version is
//! negotiated with the daemon).
//!
//! # A box
//!
//! - Image: the sandbox type's template, imported once as the image
//!   `sandboxd-template/<name>:<build>` (`<build>` changes when the template is rebuilt): the
//!   template's tree is streamed to `POST /images/create?fromSrc=-` (what `docker import`
//!   does; no registry is needed). Or any image the request names (`image`), on the engine
//!   already or pulled; its entrypoint, command and user are replaced by the agent's.
//! - The guest agent is not in the image: the static agent binary is bind-mounted read-only
//!   and is the container's entrypoint (PID 1, reaping zombies), listening on a Unix socket in
//!   a per-box host directory that is bind-mounted too. The host reaches the agent there, as
//!   with the native backend, so every tool works unchanged. This needs the daemon on this
//!   machine (a local socket, or TCP to this machine).
//! - `/workspace` is bound from the session's workspace; `READONLY_MOUNTS` read-only.
//! - Limits: memory (no swap beyond it), CPU (`NanoCpus`), pids. No network (`none`), every
//!   capability dropped, `no-new-privileges`, Docker's default seccomp profile.
//! - Named `<prefix><id>` and labelled with the server's instance and the sandbox id, so that
//!   [`Backend::cleanup_stale`] finds this server's containers after a crash.
//!
//! # A shared engine
//!
//! With [`DockerConfig::shared`] (an engine several machines reach over TCP), a connection to
//! an agent is a `docker exec` of the agent binary in relay mode (`--relay <socket>`), its
//! stdin and stdout carrying the agent's stream, so every machine reaches every box through
//! the engine. The bind mounts (the agent binary, the socket directory, the workspaces) are
//! then paths on the engine's machine: the agent binary and `DEFAULT_MOUNT_DIR` must be there.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bollard::exec::{StartExecOptions, StartExecResults};
use bollard::models::{ContainerCreateBody, ExecConfig, HostConfig, ResourcesUlimits};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder, TagImageOptionsBuilder,
};
use bollard::Docker;
use futures::StreamExt;
use sandboxd_core::backend::{
    AgentEndpoint, AgentIo, Backend, BackendError, BoxHandle, BoxSpec, CleanupReport,
};

/// Label holding the server instance a container belongs to.
pub const LABEL_INSTANCE: &str = "sandboxd.instance";
/// Label holding the sandbox id.
pub const LABEL_ID: &str = "sandboxd.id";
/// Where the agent binary is mounted in a box.
const AGENT_IN_BOX: &str = "/.sandboxd/agent";
/// Where the box's socket directory is mounted in a box.
const RUN_IN_BOX: &str = "/.sandboxd/run";
/// `PATH` of a box.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// How long a new container's agent may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Settings of the docker backend.
#[derive(Debug, Clone)]
pub struct DockerConfig {
    /// The daemon (`unix:///path` or `tcp://host:port`); `None`: `DOCKER_HOST`, else the
    /// default socket.
    pub host: Option<String>,
    /// Host directory with one subdirectory per box, holding the agent's socket.
    pub run_dir: PathBuf,
    /// The static guest agent binary.
    pub agent_bin: PathBuf,
    /// Containers are named `<name_prefix><sandbox id>`.
    pub name_prefix: String,
    /// This server's instance (its containers carry it in [`LABEL_INSTANCE`]).
    pub instance: String,
    /// The engine is shared by several machines (reached over TCP): agents are then reached
    /// through the engine, by a relay the engine runs in the box (`docker exec`), not by the
    /// socket on the engine's machine, and the backend is [shared](Backend::shared).
    pub shared: bool,
}

/// Sandboxes as containers.
pub struct DockerBackend {
    docker: Docker,
    config: DockerConfig,
    /// Serializes image imports (two creates of a new template import it once).
    importing: tokio::sync::Mutex<()>,
    /// The engine is Podman (its Docker-compatible API), not Docker.
    podman: bool,
}

impl std::fmt::Debug for DockerBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerBackend")
            .field("config", &self.config)
            .finish()
    }
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> BackendError {
    BackendError::Unavailable(format!("docker: {what}: {e}"))
}

fn failed(what: &str, e: impl std::fmt::Display) -> BackendError {
    BackendError::StartFailed(format!("docker: {what}: {e}"))
}

fn io(context: String, source: std::io::Error) -> BackendError {
    BackendError::Io { context, source }
}

/// A box's limit of `resource`: `want`, or less when this machine's own hard limit is lower
/// (an engine cannot give a container more than it has itself).
fn rlimit_at_most(resource: libc::__rlimit_resource_t, want: u64) -> i64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given, a live local.
    let hard = if unsafe { libc::getrlimit(resource, &mut lim) } == 0 {
        lim.rlim_max
    } else {
        1024
    };
    hard.min(want) as i64
}

fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

impl DockerBackend {
    /// Connect to the daemon and agree on an API version.
    pub async fn connect(config: DockerConfig) -> Result<DockerBackend, BackendError> {
        let docker = match &config.host {
            Some(h) => Docker::connect_with_host(h),
            None => Docker::connect_with_defaults(),
        }
        .map_err(|e| unavailable("cannot set up a connection", e))?;
        let docker = docker.negotiate_version().await.map_err(|e| {
            unavailable(
                "the daemon does not answer (is dockerd running? DOCKER_HOST?)",
                e,
            )
        })?;
        if !config.agent_bin.is_file() {
            return Err(BackendError::Unavailable(format!(
                "docker: the guest agent {} is missing (build it: scripts/build)",
                config.agent_bin.display()
            )));
        }
        std::fs::create_dir_all(&config.run_dir)
            .map_err(|e| io(format!("create {}", config.run_dir.display()), e))?;
        let podman = docker.version().await.is_ok_and(|v| {
            v.components
                .unwrap_or_default()
                .iter()
                .any(|c| c.name.contains("Podman"))
        });
        Ok(DockerBackend {
            docker,
            config,
            importing: tokio::sync::Mutex::new(()),
            podman,
        })
    }

    fn name_of(&self, id: &str) -> String {
        format!("{}{id}", self.config.name_prefix)
    }

    fn run_dir(&self, id: &str) -> PathBuf {
        self.config.run_dir.join(id)
    }

    /// The image of a template, imported from its tree when the daemon does not have it.
    async fn image_for(&self, rootfs: &Path) -> Result<String, BackendError> {
        let template = rootfs.parent().unwrap_or(rootfs);
        let name = template
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "template".into());
        // A rebuilt template is a new tag: its ready marker is written last by each build.
        let build = std::fs::metadata(template.join("ready"))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        let (repo, tag) = (format!("sandboxd-template/{name}"), build.to_string());
        let image = format!("{repo}:{tag}");
        if self.docker.inspect_image(&image).await.is_ok() {
            return Ok(image);
        }
        let _one = self.importing.lock().await;
        if self.docker.inspect_image(&image).await.is_ok() {
            return Ok(image);
        }
        tracing::info!(%image, rootfs = %rootfs.display(), "importing the template as an image (once)");
        let started = Instant::now();
        let mut tar = tokio::process::Command::new("tar")
            .arg("-C")
            .arg(rootfs)
            .args(["--numeric-owner", "-c", "."])
            .stdout(std::process::Stdio::piped())
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| failed("cannot run tar to import the template", e))?;
        let stdout = tar.stdout.take().expect("piped");
        let body = tokio_util::io::ReaderStream::new(stdout);
        let opts = CreateImageOptionsBuilder::new()
            .from_src("-")
            .repo(&repo)
            .tag(&tag)
            .build();
        let mut progress =
            self.docker
                .create_image(Some(opts), Some(bollard::body_try_stream(body)), None);
        let mut imported = None;
        while let Some(step) = progress.next().await {
            let step = step.map_err(|e| failed(&format!("importing {image}"), e))?;
            // Docker and Podman answer an import with the new image's id.
            if let Some(id) = [step.id, step.status]
                .into_iter()
                .flatten()
                .find(|s| s.starts_with("sha256:"))
            {
                imported = Some(id);
            }
        }
        let status = tar
            .wait()
            .await
            .map_err(|e| failed("tar of the template", e))?;
        if !status.success() {
            return Err(failed("tar of the template", status));
        }
        // Podman (4.x) ignores the import's tag and names the image `<repo>:latest`: the
        // image is tagged as asked afterwards.
        if self.docker.inspect_image(&image).await.is_err() {
            let source = imported.unwrap_or_else(|| format!("{repo}:latest"));
            let opts = TagImageOptionsBuilder::new().repo(&repo).tag(&tag).build();
            self.docker
                .tag_image(&source, Some(opts))
                .await
                .map_err(|e| failed(&format!("tagging the imported {image}"), e))?;
        }
        tracing::info!(%image, secs = started.elapsed().as_secs_f64(), "template imported");
        Ok(image)
    }

    async fn remove(&self, id: &str) -> Result<bool, BackendError> {
        let opts = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(true)
            .build();
        let removed = match self
            .docker
            .remove_container(&self.name_of(id), Some(opts))
            .await
        {
            Ok(()) => true,
            Err(e) if is_not_found(&e) => false,
            Err(e) => return Err(failed(&format!("remove container of {id}"), e)),
        };
        match std::fs::remove_dir_all(self.run_dir(id)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(format!("remove {}", self.run_dir(id).display()), e)),
        }
        Ok(removed)
    }

    /// An image the user named: on the engine already, else pulled.
    async fn named_image(&self, image: &str) -> Result<String, BackendError> {
        if self.docker.inspect_image(image).await.is_ok() {
            return Ok(image.to_string());
        }
        tracing::info!(%image, "pulling an image the engine does not have");
        let opts = CreateImageOptionsBuilder::new().from_image(image).build();
        let mut progress = self.docker.create_image(Some(opts), None, None);
        while let Some(step) = progress.next().await {
            if let Err(e) = step {
                return Err(BackendError::BadSpec(format!(
                    "image {image} is not on the Docker engine and could not be pulled: {e}"
                )));
            }
        }
        Ok(image.to_string())
    }

    async fn start(&self, spec: &BoxSpec) -> Result<BoxHandle, BackendError> {
        let image = match &spec.image {
            Some(named) => self.named_image(named).await?,
            None => self.image_for(&spec.template_rootfs).await?,
        };
        let run = self.run_dir(&spec.id);
        std::fs::create_dir_all(&run).map_err(|e| io(format!("create {}", run.display()), e))?;
        let socket = run.join("agent.sock");
        let _ = std::fs::remove_file(&socket);
        let mut env = vec![
            format!("PATH={DEFAULT_PATH}"),
            "HOME=/root".to_string(),
            format!("HOSTNAME={}", spec.hostname),
            "SANDBOXD_FILES_ROOT=/workspace".to_string(),
        ];
        env.extend(
            spec.env
                .iter()
                .filter(|(k, _)| !k.starts_with("SANDBOXD_"))
                .map(|(k, v)| format!("{k}={v}")),
        );
        let mut binds = vec![
            format!("{}:{AGENT_IN_BOX}:ro", self.config.agent_bin.display()),
            format!("{}:{RUN_IN_BOX}:rw", run.display()),
            format!("{}:/workspace:rw", spec.workspace.display()),
        ];
        binds.extend(
            spec.readonly_mounts
                .iter()
                .map(|m| format!("{}:{}:ro", m.host.display(), m.guest.display())),
        );
        let memory = spec.limits.memory_bytes as i64;
        let body = ContainerCreateBody {
            image: Some(image),
            hostname: Some(spec.hostname.clone()),
            env: Some(env),
            entrypoint: Some(vec![
                AGENT_IN_BOX.to_string(),
                "--listen".to_string(),
                format!("{RUN_IN_BOX}/agent.sock"),
            ]),
            working_dir: Some("/workspace".into()),
            // The agent binds its socket in a directory of the host's root: whatever user an
            // image names, the box runs as root (of the container, without capabilities).
            user: Some("0:0".into()),
            labels: Some(HashMap::from([
                (LABEL_INSTANCE.to_string(), self.config.instance.clone()),
                (LABEL_ID.to_string(), spec.id.clone()),
            ])),
            host_config: Some(HostConfig {
                binds: Some(binds),
                memory: Some(memory),
                memory_swap: Some(memory),
                nano_cpus: Some(spec.limits.cpu_millis as i64 * 1_000_000),
                pids_limit: Some(spec.limits.pids as i64),
                // Podman's defaults ask for more than many hosts allow (its runc then fails
                // to set them); Docker's are the daemon's own, left as they are.
                ulimits: self.podman.then(|| {
                    [
                        ("nofile", libc::RLIMIT_NOFILE, 65536),
                        ("nproc", libc::RLIMIT_NPROC, 32768),
                    ]
                    .into_iter()
                    .map(|(name, resource, want)| {
                        let n = rlimit_at_most(resource, want);
                        ResourcesUlimits {
                            name: Some(name.into()),
                            soft: Some(n),
                            hard: Some(n),
                        }
                    })
                    .collect()
                }),
                // The disk limit: the engine's own storage seldom limits a container's layer
                // (`--storage-opt size` needs overlay2 on XFS with project quotas), but /tmp
                // can be a tmpfs of that size (its pages count against the memory limit).
                tmpfs: (spec.limits.disk_bytes > 0).then(|| {
                    HashMap::from([(
                        "/tmp".to_string(),
                        format!(
                            "rw,nosuid,nodev,mode=1777,size={}k",
                            spec.limits.disk_bytes.div_ceil(1024)
                        ),
                    )])
                }),
                network_mode: Some("none".into()),
                cap_drop: Some(vec!["ALL".into()]),
                security_opt: Some(vec!["no-new-privileges".into()]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let name = self.name_of(&spec.id);
        let opts = CreateContainerOptionsBuilder::new().name(&name).build();
        self.docker
            .create_container(Some(opts), body)
            .await
            .map_err(|e| failed(&format!("create container {name}"), e))?;
        self.docker
            .start_container(&name, None)
            .await
            .map_err(|e| failed(&format!("start container {name}"), e))?;
        // The agent makes its socket once it runs; connections need it to exist. (On a shared
        // engine the socket is on the engine's machine: the relay waits for it there.)
        let deadline = Instant::now() + START_TIMEOUT;
        while !self.config.shared && !socket.exists() {
            if Instant::now() > deadline {
                return Err(failed(
                    &format!("container {name}"),
                    "its agent did not start listening",
                ));
            }
            if !self.is_alive(&spec.id).await {
                return Err(failed(&format!("container {name}"), "it exited at start"));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let endpoint = if self.config.shared {
            AgentEndpoint::Relay {
                box_id: spec.id.clone(),
            }
        } else {
            AgentEndpoint::Unix { path: socket }
        };
        Ok(BoxHandle {
            id: spec.id.clone(),
            endpoint,
        })
    }

    /// A stream to a box's agent through `docker exec` of the agent in relay mode.
    async fn relay(&self, id: &str) -> Result<Box<dyn AgentIo>, BackendError> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let name = self.name_of(id);
        let exec = self
            .docker
            .create_exec(
                &name,
                ExecConfig {
                    attach_stdin: Some(true),
                    attach_stdout: Some(true),
                    attach_stderr: Some(false),
                    cmd: Some(vec![
                        AGENT_IN_BOX.to_string(),
                        "--relay".to_string(),
                        format!("{RUN_IN_BOX}/agent.sock"),
                    ]),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| match e {
                e if is_not_found(&e) => BackendError::NotFound(id.to_string()),
                e => unavailable(&format!("exec a relay in {name}"), e),
            })?;
        let started = self
            .docker
            .start_exec(
                &exec.id,
                Some(StartExecOptions {
                    detach: false,
                    tty: false,
                    output_capacity: Some(1 << 20),
                }),
            )
            .await
            .map_err(|e| unavailable(&format!("start the relay in {name}"), e))?;
        let StartExecResults::Attached {
            mut output,
            mut input,
        } = started
        else {
            return Err(unavailable("the relay", "the engine did not attach"));
        };
        let (ours, theirs) = tokio::io::duplex(256 * 1024);
        let (mut from_host, mut to_host) = tokio::io::split(theirs);
        tokio::spawn(async move {
            while let Some(Ok(out)) = output.next().await {
                if let bollard::container::LogOutput::StdOut { message } = out {
                    if to_host.write_all(&message).await.is_err() {
                        break;
                    }
                }
            }
            let _ = to_host.shutdown().await;
        });
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match from_host.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if input.write_all(&buf[..n]).await.is_err() || input.flush().await.is_err()
                        {
                            break;
                        }
                    }
                }
            }
            // The host hung up: the relay's stdin ends, and the agent sees the hang-up.
            let _ = input.shutdown().await;
        });
        Ok(Box::new(ours))
    }
}

#[async_trait]
impl Backend for DockerBackend {
    fn name(&self) -> &'static str {
        "docker"
    }

    async fn create(&self, spec: BoxSpec) -> Result<BoxHandle, BackendError> {
        match self.start(&spec).await {
            Ok(h) => Ok(h),
            Err(e) => {
                // Nothing of a failed box is left behind.
                let _ = self.remove(&spec.id).await;
                Err(e)
            }
        }
    }

    async fn destroy(&self, id: &str) -> Result<(), BackendError> {
        self.remove(id).await.map(drop)
    }

    async fn connect_agent(&self, id: &str) -> Result<Box<dyn AgentIo>, BackendError> {
        self.relay(id).await
    }

    fn shared(&self) -> bool {
        self.config.shared
    }

    fn runs_images(&self) -> bool {
        true
    }

    async fn is_alive(&self, id: &str) -> bool {
        match self.docker.inspect_container(&self.name_of(id), None).await {
            Ok(c) => c.state.and_then(|s| s.running).unwrap_or(false),
            Err(_) => false,
        }
    }

    async fn set_paused(&self, id: &str, paused: bool) -> Result<(), BackendError> {
        let name = self.name_of(id);
        let r = if paused {
            self.docker.pause_container(&name).await
        } else {
            self.docker.unpause_container(&name).await
        };
        r.map_err(|e| match e {
            e if is_not_found(&e) => BackendError::NotFound(id.to_string()),
            e => failed(&format!("pause/unpause {name}"), e),
        })
    }

    async fn cleanup_stale(&self, keep: &BTreeSet<String>) -> Result<CleanupReport, BackendError> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![format!("{LABEL_INSTANCE}={}", self.config.instance)],
        )]);
        let opts = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let containers = self
            .docker
            .list_containers(Some(opts))
            .await
            .map_err(|e| unavailable("list containers", e))?;
        let mut report = CleanupReport::default();
        let mut seen = BTreeSet::new();
        for c in containers {
            let Some(id) = c.labels.as_ref().and_then(|l| l.get(LABEL_ID)).cloned() else {
                continue;
            };
            seen.insert(id.clone());
            if keep.contains(&id) && self.is_alive(&id).await {
                continue;
            }
            if self.remove(&id).await? {
                report.boxes_killed += 1;
                report.resources_removed += 1;
            }
        }
        // Socket directories of boxes with no container left.
        let dirs = std::fs::read_dir(&self.config.run_dir)
            .map(|d| d.flatten().collect::<Vec<_>>())
            .unwrap_or_default();
        for d in dirs {
            let id = d.file_name().to_string_lossy().into_owned();
            if !(keep.contains(&id) && seen.contains(&id))
                && std::fs::remove_dir_all(d.path()).is_ok()
            {
                report.resources_removed += 1;
            }
        }
        Ok(report)
    }
}
