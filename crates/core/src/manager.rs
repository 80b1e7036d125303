//! [`Manager`]: creates, tracks, reaps and removes sandboxes, and routes work to their agents.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::{Stream, StreamExt};
use sandboxd_protocol::{
    AgentErrorKind, EntryKind as WireKind, ExecSpec, Frame, Request, Response, CONNECT_SINCE,
    MAX_PAYLOAD_LEN,
};
use sandboxd_types::{
    is_valid_session_id, EntryKind, ErrorCode, ExecEvent, ExecRequest, ExecResult, FileEntry,
    PublishedPort, PythonError, PythonRequest, PythonResult, Resources, Sandbox, SandboxState,
};

use crate::agent::{unexpected, AgentConn, ConnPool};
use crate::backend::{AgentEndpoint, Backend, BackendError, BoxSpec, Limits, ReadonlyMount};
use crate::pool::{self, PoolSpec, Pools, POOL_METADATA_KEY};
use crate::store::{SandboxRecord, SandboxStore, StoreError};
use crate::templates::Templates;
use crate::tunnel::{Tunnel, ACTIVITY_EVERY};
use crate::workspace::WorkspaceQuota;
use crate::CoreError;

/// Settings of the manager.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// Type used when a create request names none (`DEFAULT_SANDBOX_TYPE`).
    pub default_type: String,
    /// Lifetime of a sandbox when the request gives none, in seconds (0 = never expires).
    pub default_timeout_secs: u64,
    /// Most live sandboxes at once (`MAX_SANDBOX_INSTANCES`; 0 = no limit).
    pub max_instances: usize,
    /// Where sessions' workspaces live (`DEFAULT_MOUNT_DIR`).
    pub mount_dir: PathBuf,
    /// The size of each session's workspace file system, in MiB (`SANDBOXD_WORKSPACE_MB`;
    /// 0 = no quota: workspaces are plain directories sharing `mount_dir`'s file system).
    /// See [`crate::workspace`].
    pub workspace_mb: u64,
    /// Read-only mounts of every sandbox (`READONLY_MOUNTS`).
    pub readonly_mounts: Vec<ReadonlyMount>,
    /// Limits when the request gives none.
    pub default_resources: Limits,
    /// How often the reaper looks for expired and dead sandboxes.
    pub reap_interval: Duration,
    /// How long a new sandbox's agent may take to answer.
    pub start_timeout: Duration,
    /// Warm sandboxes kept per pool (`POOL_SIZE`; 0 = no pool).
    pub pool_size: usize,
    /// The warm pools (from `DEFAULT_SANDBOX_TYPE`'s list); a name given twice counts once.
    pub pools: Vec<PoolSpec>,
    /// How long the record of a recycled or replaced sandbox is kept (a recycled one can be
    /// restored until then; a replaced one redirects until then).
    pub retired_keep: Duration,
    /// This machine's name among the servers sharing a store: its sandboxes' records carry it
    /// as their owner, and it only ever manages boxes it owns.
    pub node_id: String,
    /// One of several worker processes of one machine (`WORKERS`): it neither cleans up at
    /// start nor removes the sandboxes at shutdown (its supervisor does both, once).
    pub worker: bool,
    /// How long a lock taken in the store (a pool refill, a restore, a heartbeat scan) lasts
    /// when its holder dies without giving it up.
    pub lock_ttl: Duration,
    /// The URL other nodes reach this one at, when several machines share the store: the node
    /// then registers itself, takes over the sandboxes of nodes that are gone, and hands its
    /// own back (recycles them) at shutdown. See [`crate::nodes`].
    pub node_url: Option<String>,
    /// A metadata key that traffic through a sandbox's tunnels ([`Manager::connect_port`]) sets
    /// to the time, in milliseconds since the epoch (the server names AgentScope's last-activity
    /// key, which its heartbeat reads); `None`: no metadata is written.
    pub activity_key: Option<String>,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        ManagerConfig {
            default_type: "base".into(),
            default_timeout_secs: 300,
            max_instances: 0,
            mount_dir: PathBuf::from("/var/lib/sandboxd/workspaces"),
            workspace_mb: 0,
            readonly_mounts: Vec::new(),
            default_resources: Limits {
                memory_bytes: 512 << 20,
                cpu_millis: 1000,
                pids: 256,
                disk_bytes: 256 << 20,
            },
            reap_interval: Duration::from_secs(1),
            start_timeout: Duration::from_secs(10),
            pool_size: 0,
            pools: Vec::new(),
            retired_keep: Duration::from_secs(3600),
            node_id: "local".into(),
            worker: false,
            lock_ttl: Duration::from_secs(120),
            node_url: None,
            activity_key: None,
        }
    }
}

/// Bounds on what a request may ask for.
const MEMORY_MB_RANGE: (u64, u64) = (16, 1 << 20);
const CPUS_RANGE: (f64, f64) = (0.01, 256.0);
const PIDS_RANGE: (u64, u64) = (8, 1 << 22);
const DISK_MB_RANGE: (u64, u64) = (16, 1 << 24);
const MAX_ENV: usize = 256;
const MAX_METADATA: usize = 64;
const MAX_LABEL_LEN: usize = 4096;

/// A stream of exec events; the last one is `Exit` or `Error`. Dropping it kills the command.
pub type ExecStream = Pin<Box<dyn Stream<Item = ExecEvent> + Send>>;

/// A stream of file content pieces.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Vec<u8>, CoreError>> + Send>>;

/// The sandbox manager. Cheap to share behind an [`Arc`].
pub struct Manager {
    backend: Arc<dyn Backend>,
    store: Arc<dyn SandboxStore>,
    templates: Templates,
    config: ManagerConfig,
    shutting_down: AtomicBool,
    pools: Pools,
    /// Idle connections to agents.
    conns: ConnPool,
    /// This process's name as the holder of store locks (`<node>:<pid>`).
    holder: String,
    /// Serializes this process's restores: its store lock is one holder's, which the
    /// process's own tasks would share.
    restoring: tokio::sync::Mutex<()>,
    /// When tunnel traffic was last recorded for each sandbox ([`Manager::record_activity`]).
    activity: std::sync::Mutex<std::collections::HashMap<String, Instant>>,
    /// The template tree each box this process started runs on, held until the box is
    /// destroyed, so that no rebuild's clean-up removes it under the box.
    pins: std::sync::Mutex<std::collections::HashMap<String, crate::templates::TreePin>>,
    /// The workspace quota, when `workspace_mb` is set.
    quota: Option<WorkspaceQuota>,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("backend", &self.backend.name())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn new_id() -> String {
    format!("sb-{:016x}", rand::random::<u64>())
}

pub(crate) fn invalid(msg: impl Into<String>) -> CoreError {
    CoreError::InvalidRequest(msg.into())
}

pub(crate) fn check_text(what: &str, s: &str) -> Result<(), CoreError> {
    if s.contains('\0') {
        return Err(invalid(format!("{what} contains a NUL byte")));
    }
    if s.len() > MAX_LABEL_LEN * 32 {
        return Err(invalid(format!("{what} is too long")));
    }
    Ok(())
}

/// An engine image reference (`name[:tag][@digest]`, with an optional registry and path), on a
/// backend that runs images.
fn check_image(image: &str, backend: &dyn Backend) -> Result<(), CoreError> {
    if !backend.runs_images() {
        return Err(invalid(format!(
            "image: the {} backend runs templates, not engine images (images need \
             CONTAINER_DEPLOYMENT=docker)",
            backend.name()
        )));
    }
    let ok = (1..=255).contains(&image.len())
        && image.starts_with(|c: char| c.is_ascii_alphanumeric())
        && image
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/:@".contains(c));
    if !ok {
        return Err(invalid(format!(
            "image {image:?} is not an image reference (like python:3.12-slim or \
             registry.example/team/env@sha256:...)"
        )));
    }
    Ok(())
}

fn check_metadata(metadata: &BTreeMap<String, String>) -> Result<(), CoreError> {
    if metadata.len() > MAX_METADATA {
        return Err(invalid(format!("at most {MAX_METADATA} metadata entries")));
    }
    for (k, v) in metadata {
        if k.is_empty() || k.len() > 256 || v.len() > MAX_LABEL_LEN {
            return Err(invalid(
                "metadata keys must be 1..256 bytes, values at most 4096",
            ));
        }
    }
    Ok(())
}

/// Check the limits a [`Resources`] gives (those it leaves out are not checked): the ranges a
/// create request may ask for. The error says which field is out of range.
pub fn check_resources(r: &Resources) -> Result<(), String> {
    if let Some(m) = r.memory_mb {
        if !(MEMORY_MB_RANGE.0..=MEMORY_MB_RANGE.1).contains(&m) {
            return Err(format!(
                "resources.memory_mb must be between {} and {}",
                MEMORY_MB_RANGE.0, MEMORY_MB_RANGE.1
            ));
        }
    }
    if let Some(c) = r.cpus {
        if !c.is_finite() || !(CPUS_RANGE.0..=CPUS_RANGE.1).contains(&c) {
            return Err(format!(
                "resources.cpus must be between {} and {}",
                CPUS_RANGE.0, CPUS_RANGE.1
            ));
        }
    }
    if let Some(p) = r.pids {
        if !(PIDS_RANGE.0..=PIDS_RANGE.1).contains(&p) {
            return Err(format!(
                "resources.pids must be between {} and {}",
                PIDS_RANGE.0, PIDS_RANGE.1
            ));
        }
    }
    if let Some(d) = r.disk_mb {
        if !(DISK_MB_RANGE.0..=DISK_MB_RANGE.1).contains(&d) {
            return Err(format!(
                "resources.disk_mb must be between {} and {}",
                DISK_MB_RANGE.0, DISK_MB_RANGE.1
            ));
        }
    }
    Ok(())
}

/// Whether `name` is a valid environment variable name: letters, digits and `_`, not starting
/// with a digit.
pub fn is_valid_env_name(name: &str) -> bool {
    !name.is_empty()
        && !name.as_bytes()[0].is_ascii_digit()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

pub(crate) fn check_env(env: &BTreeMap<String, String>) -> Result<(), CoreError> {
    if env.len() > MAX_ENV {
        return Err(invalid(format!("at most {MAX_ENV} environment variables")));
    }
    for (k, v) in env {
        if !is_valid_env_name(k) {
            return Err(invalid(format!("invalid environment variable name {k:?}")));
        }
        check_text(&format!("environment variable {k}"), v)?;
    }
    Ok(())
}

/// Before a (non-worker) start: the ids of this node's sandboxes that the store says are alive
/// (running, paused or warm), whose boxes the backend keeps and the manager adopts; records of
/// this node caught half-way (creating, stopping) are dropped, and their boxes cleaned up.
async fn adopt_or_forget(
    store: &dyn SandboxStore,
    node: &str,
) -> Result<std::collections::BTreeSet<String>, CoreError> {
    let mut keep = std::collections::BTreeSet::new();
    for r in store.list().await? {
        if r.owner.as_deref().is_some_and(|o| o != node) {
            continue;
        }
        match r.sandbox.state {
            SandboxState::Running | SandboxState::Paused | SandboxState::Warm
                if r.endpoint.is_some() =>
            {
                keep.insert(r.sandbox.id);
            }
            SandboxState::Creating | SandboxState::Stopping => {
                store.remove(&r.sandbox.id).await?;
            }
            _ => {}
        }
    }
    Ok(keep)
}

impl Manager {
    /// Start a manager: clean what an earlier run of the backend left behind, then start the
    /// reaper.
    pub async fn start(
        backend: Arc<dyn Backend>,
        store: Arc<dyn SandboxStore>,
        templates: Templates,
        config: ManagerConfig,
    ) -> Result<Arc<Self>, CoreError> {
        std::fs::create_dir_all(&config.mount_dir).map_err(|e| {
            invalid(format!(
                "cannot create DEFAULT_MOUNT_DIR {}: {e}",
                config.mount_dir.display()
            ))
        })?;
        let quota = match config.workspace_mb {
            0 => None,
            mb => Some(WorkspaceQuota::new(&config.mount_dir, mb)?),
        };
        if !config.worker {
            let keep = adopt_or_forget(&*store, &config.node_id).await?;
            let report = backend.cleanup_stale(&keep).await?;
            if report != Default::default() {
                tracing::warn!(
                    boxes_killed = report.boxes_killed,
                    resources_removed = report.resources_removed,
                    "cleaned up after an earlier run that did not shut down cleanly"
                );
            }
            if !keep.is_empty() {
                tracing::info!(
                    sandboxes = keep.len(),
                    "adopted the sandboxes of an earlier run recorded in the store"
                );
            }
            if let Some(q) = &quota {
                let sessions = store
                    .list()
                    .await?
                    .into_iter()
                    .filter(|r| keep.contains(&r.sandbox.id))
                    .map(|r| r.sandbox.session_id)
                    .collect();
                let n = q.unmount_unused(&sessions).await?;
                if n > 0 {
                    tracing::warn!(
                        workspaces = n,
                        "unmounted the workspaces of sandboxes an earlier run left behind"
                    );
                }
            }
        }
        let config_node = config.node_id.clone();
        let manager = Arc::new(Manager {
            backend,
            store,
            templates,
            config,
            shutting_down: AtomicBool::new(false),
            pools: Pools::default(),
            conns: ConnPool::default(),
            holder: format!("{}:{}", config_node, std::process::id()),
            restoring: tokio::sync::Mutex::new(()),
            activity: Default::default(),
            pins: Default::default(),
            quota,
        });
        let weak = Arc::downgrade(&manager);
        let interval = manager.config.reap_interval;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(m) = weak.upgrade() else { break };
                if m.shutting_down.load(Ordering::Relaxed) {
                    break;
                }
                m.reap_once().await;
            }
        });
        if manager.multi_node() {
            manager.register_node().await;
            let weak = Arc::downgrade(&manager);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(crate::nodes::NODE_RENEW).await;
                    let Some(m) = weak.upgrade() else { break };
                    if m.shutting_down.load(Ordering::Relaxed) {
                        break;
                    }
                    m.register_node().await;
                }
            });
        }
        if manager.pools_enabled() {
            let weak = Arc::downgrade(&manager);
            let wake = manager.pools.wake.clone();
            wake.notify_one();
            tokio::spawn(async move {
                loop {
                    {
                        let Some(m) = weak.upgrade() else { break };
                        if m.pools.stopped.load(Ordering::Relaxed) {
                            break;
                        }
                        m.refill_once().await;
                    }
                    // Wait without holding the manager, so that dropping it ends this task.
                    tokio::select! {
                        _ = wake.notified() => {}
                        _ = tokio::time::sleep(pool::RETRY_INTERVAL) => {}
                    }
                }
            });
        }
        Ok(manager)
    }

    /// The manager's settings.
    pub fn config(&self) -> &ManagerConfig {
        &self.config
    }

    pub(crate) fn store(&self) -> &dyn SandboxStore {
        &*self.store
    }

    /// The backend's name.
    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    /// Whether the backend's boxes belong to no node ([`Backend::shared`]).
    pub fn backend_shared(&self) -> bool {
        self.backend.shared()
    }

    /// Installed sandbox types.
    pub fn types(&self) -> Vec<String> {
        self.templates.list()
    }

    fn resolve_limits(&self, r: Option<&Resources>) -> Result<(Limits, Resources), CoreError> {
        let d = self.config.default_resources;
        let r = r.cloned().unwrap_or_default();
        let memory_mb = r.memory_mb.unwrap_or(d.memory_bytes >> 20);
        let cpus = r.cpus.unwrap_or(d.cpu_millis as f64 / 1000.0);
        let pids = r.pids.unwrap_or(d.pids);
        // A server without a disk limit (`disk_bytes` 0) checks only what a request asks.
        let disk_mb = r
            .disk_mb
            .or((d.disk_bytes > 0).then_some(d.disk_bytes >> 20));
        check_resources(&Resources {
            memory_mb: Some(memory_mb),
            cpus: Some(cpus),
            pids: Some(pids),
            disk_mb: r.disk_mb,
        })
        .map_err(invalid)?;
        Ok((
            Limits {
                memory_bytes: memory_mb << 20,
                cpu_millis: (cpus * 1000.0).round() as u64,
                pids,
                disk_bytes: disk_mb.unwrap_or(0) << 20,
            },
            Resources {
                memory_mb: Some(memory_mb),
                cpus: Some(cpus),
                pids: Some(pids),
                disk_mb,
            },
        ))
    }

    /// Create a sandbox and wait until its agent answers; with `from_pool`, hand out a warm one
    /// instead when one fits (see [`CreateSandboxRequest::from_pool`](sandboxd_types::CreateSandboxRequest::from_pool)).
    pub async fn create(
        &self,
        req: sandboxd_types::CreateSandboxRequest,
    ) -> Result<Sandbox, CoreError> {
        self.create_with_ports(req, Vec::new()).await
    }

    /// [`Manager::create`] for a request with `ports`: `published` gives each its host port
    /// (in the same order), which the caller has bound already and forwards through
    /// [`Manager::connect_port`]; the sandbox's record lists them. On error nothing refers to
    /// them any more.
    pub async fn create_with_ports(
        &self,
        req: sandboxd_types::CreateSandboxRequest,
        published: Vec<PublishedPort>,
    ) -> Result<Sandbox, CoreError> {
        sandboxd_types::check_ports(&req.ports).map_err(invalid)?;
        if !req.ports.iter().eq(published.iter().map(|p| &p.port)) {
            return Err(invalid(
                "ports: each port to publish needs its host port (published by the server)",
            ));
        }
        let fits_warm = req.session_id.is_none()
            && req.env.is_empty()
            && req.resources.is_none()
            && req.image.is_none();
        if req.from_pool && fits_warm {
            let sandbox_type = req
                .sandbox_type
                .clone()
                .unwrap_or_else(|| self.config.default_type.clone());
            // Only a template's plain pool fits: the others were started with more than a
            // request that names just the template asks for.
            if Templates::valid_name(&sandbox_type) {
                if let Some(sb) = self
                    .hand_out(
                        &sandbox_type,
                        req.metadata.clone(),
                        req.timeout_secs,
                        &published,
                    )
                    .await?
                {
                    return Ok(sb);
                }
            }
        }
        self.create_inner(req, false, published).await
    }

    /// Create a sandbox; a `warm` one waits in its type's pool (state `warm`, no expiry) and
    /// does not make room for itself by removing other warm ones.
    async fn create_inner(
        &self,
        req: sandboxd_types::CreateSandboxRequest,
        warm: bool,
        published: Vec<PublishedPort>,
    ) -> Result<Sandbox, CoreError> {
        if self.shutting_down.load(Ordering::Relaxed) {
            return Err(CoreError::ShuttingDown);
        }
        let sandbox_type = req
            .sandbox_type
            .clone()
            .unwrap_or_else(|| self.config.default_type.clone());
        if let Some(image) = &req.image {
            check_image(image, self.backend.as_ref())?;
        }
        // An image replaces the template: its type is then only a name.
        let (rootfs, pin) = match &req.image {
            Some(_) => (Some(PathBuf::new()), None),
            None => match self.templates.pin(&sandbox_type) {
                Some((rootfs, pin)) => (Some(rootfs), Some(pin)),
                None => (None, None),
            },
        };
        let rootfs = rootfs.ok_or_else(|| {
            let known = self.templates.list();
            let hint = if known.is_empty() {
                format!(
                    "; no template is installed in {} (run `sandboxd template build base`)",
                    self.templates.dir().display()
                )
            } else {
                format!("; installed: {}", known.join(", "))
            };
            CoreError::UnknownType(sandbox_type.clone(), hint)
        })?;
        check_env(&req.env)?;
        check_metadata(&req.metadata)?;
        let (limits, resources) = self.resolve_limits(req.resources.as_ref())?;
        let id = new_id();
        let session_id = match req.session_id {
            Some(s) if !is_valid_session_id(&s) => {
                return Err(invalid(
                    "session_id must be 1..128 characters of letters, digits, '-', '_' and '.'",
                ))
            }
            Some(s) => s,
            None => id.clone(),
        };
        let timeout = req.timeout_secs.unwrap_or(self.config.default_timeout_secs);
        let created = now_ms();
        let sandbox = Sandbox {
            id: id.clone(),
            sandbox_type,
            state: SandboxState::Creating,
            session_id: session_id.clone(),
            backend: self.backend.name().to_string(),
            created_at_ms: created,
            expires_at_ms: if warm { None } else { expiry(created, timeout) },
            resources,
            metadata: req.metadata,
            reason: None,
            replaced_by: None,
            ports: published,
            image: req.image.clone(),
        };
        let limit = (self.config.max_instances > 0).then_some(self.config.max_instances);
        let record = SandboxRecord {
            sandbox,
            endpoint: None,
            version: 0,
            // A shared backend's box belongs to every node alike.
            owner: (!self.backend.shared()).then(|| self.config.node_id.clone()),
        };
        loop {
            match self.store.insert(record.clone(), limit).await {
                Ok(()) => break,
                // Warm sandboxes only use room nobody else wants: give one up and retry.
                Err(StoreError::LimitReached(_)) if !warm && self.evict_one_warm().await => {}
                Err(StoreError::LimitReached(n)) => return Err(CoreError::LimitReached(n)),
                Err(e) => return Err(e.into()),
            }
        }
        let state = if warm {
            SandboxState::Warm
        } else {
            SandboxState::Running
        };
        let tunnels = !record.sandbox.ports.is_empty();
        self.hold_tree(&id, pin);
        match self
            .start_box(
                &id,
                &session_id,
                (rootfs, req.image),
                req.env,
                limits,
                state,
                tunnels,
            )
            .await
        {
            Ok(sandbox) => Ok(sandbox),
            Err(e) => {
                let _ = self.destroy_box(&id).await;
                let _ = self.store.remove(&id).await;
                Err(e)
            }
        }
    }

    /// Start the box of a sandbox whose record is inserted; `tunnels`: its agent must serve
    /// [`Request::Connect`] (it has published ports).
    #[allow(clippy::too_many_arguments)]
    async fn start_box(
        &self,
        id: &str,
        session_id: &str,
        (template_rootfs, image): (PathBuf, Option<String>),
        env: BTreeMap<String, String>,
        limits: Limits,
        state: SandboxState,
        tunnels: bool,
    ) -> Result<Sandbox, CoreError> {
        let workspace = self.config.mount_dir.join(session_id);
        // In place, not in a blocking task: one `mkdir` (of a directory that often exists
        // already) costs microseconds, the blocking task two thread hand-offs on every create.
        std::fs::create_dir_all(&workspace).map_err(|e| {
            CoreError::Backend(crate::backend::BackendError::Io {
                context: format!("create workspace {}", workspace.display()),
                source: e,
            })
        })?;
        if let Some(q) = &self.quota {
            q.attach(session_id).await?;
        }
        let spec = BoxSpec {
            id: id.to_string(),
            template_rootfs,
            workspace,
            readonly_mounts: self.config.readonly_mounts.clone(),
            env,
            limits,
            hostname: id.to_string(),
            image,
        };
        let handle = self.backend.create(spec).await?;
        let within = self.config.start_timeout;
        let connect = async {
            match &handle.endpoint {
                AgentEndpoint::Unix { path } => AgentConn::connect_starting(path, within).await,
                // The backend's relay waits for the agent itself.
                AgentEndpoint::Relay { .. } => self.open(&handle.endpoint).await,
            }
        };
        let (agent, version, mut conn) = AgentConn::handshake(connect, within).await?;
        if tunnels && version < CONNECT_SINCE {
            return Err(agent_too_old(&agent, version));
        }
        let keep = state != SandboxState::Warm || warm_up(&mut conn).await;
        let updated = self
            .modify(id, |r| {
                r.sandbox.state = state;
                r.endpoint = Some(handle.endpoint.clone());
            })
            .await?;
        // Kept for the first request: it then needs no connect and no new agent thread.
        if keep {
            self.conns.put(id, conn);
        }
        Ok(updated.sandbox)
    }

    /// Apply `f` to a record with compare-and-set, retrying when another writer won.
    async fn modify(
        &self,
        id: &str,
        mut f: impl FnMut(&mut SandboxRecord),
    ) -> Result<SandboxRecord, CoreError> {
        loop {
            let mut rec = self
                .store
                .get(id)
                .await?
                .ok_or_else(|| CoreError::NotFound(id.to_string()))?;
            f(&mut rec);
            match self.store.update(rec).await {
                Ok(r) => return Ok(r),
                Err(StoreError::Conflict(_)) => continue,
                Err(StoreError::NotFound(_)) => return Err(CoreError::NotFound(id.to_string())),
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Move a sandbox to state `to` if `when` holds for its record as it is then (one
    /// compare-and-set); whether it did, and the record afterwards.
    async fn claim(
        &self,
        id: &str,
        when: impl Fn(&Sandbox) -> bool,
        to: SandboxState,
    ) -> Result<(bool, SandboxRecord), CoreError> {
        let mut claimed = false;
        let rec = self
            .modify(id, |r| {
                claimed = when(&r.sandbox);
                if claimed {
                    r.sandbox.state = to;
                }
            })
            .await?;
        Ok((claimed, rec))
    }

    /// One sandbox.
    pub async fn get(&self, id: &str) -> Result<Sandbox, CoreError> {
        self.store
            .get(id)
            .await?
            .map(|r| r.sandbox)
            .ok_or_else(|| CoreError::NotFound(id.to_string()))
    }

    /// All sandboxes whose metadata contains every pair of `filter`, oldest first.
    pub async fn list(&self, filter: &BTreeMap<String, String>) -> Result<Vec<Sandbox>, CoreError> {
        Ok(self
            .store
            .list()
            .await?
            .into_iter()
            .map(|r| r.sandbox)
            .filter(|s| filter.iter().all(|(k, v)| s.metadata.get(k) == Some(v)))
            .collect())
    }

    /// Kill a sandbox and forget it. Its workspace stays on the host.
    pub async fn delete(&self, id: &str) -> Result<(), CoreError> {
        self.delete_if(id, |_| true).await.map(|_| ())
    }

    /// [`Manager::delete`], if `still` holds for the record as it is when it is marked
    /// `stopping` (in the same update): whoever works from an older read (the reaper) must not
    /// remove a sandbox that a restart or a recycle has taken since. Whether it was deleted.
    async fn delete_if(
        &self,
        id: &str,
        still: impl Fn(&Sandbox) -> bool,
    ) -> Result<bool, CoreError> {
        if !self.claim(id, still, SandboxState::Stopping).await?.0 {
            return Ok(false);
        }
        if let Err(e) = self.destroy_box(id).await {
            // Keep the record, visibly failed, so that a retry (or the operator) can find it.
            self.mark_error(id, format!("could not be removed: {e}"))
                .await;
            return Err(e.into());
        }
        self.store.remove(id).await?;
        // Room under the instance limit may let the pools refill.
        if self.pools_enabled() {
            self.pools.wake.notify_one();
        }
        Ok(true)
    }

    /// Kill a sandbox's box (its kept agent connections go with it), and unmount its
    /// workspace's file system when no other sandbox of its session needs it.
    async fn destroy_box(&self, id: &str) -> Result<(), crate::backend::BackendError> {
        self.conns.forget(id);
        self.lock_activity().remove(id);
        self.backend.destroy(id).await?;
        // Only once the box is gone: a box that could not be destroyed still runs on its tree.
        self.pins.lock().unwrap().remove(id);
        if let Some(q) = &self.quota {
            if let Err(e) = self.release_workspace(q, id).await {
                // The box is gone; a mount left behind is unmounted at the next start.
                tracing::warn!(sandbox = id, error = %e, "could not unmount a workspace");
            }
        }
        Ok(())
    }

    /// Keep `pin` (the tree the box of sandbox `id` is about to start on) until the box is
    /// destroyed.
    fn hold_tree(&self, id: &str, pin: Option<crate::templates::TreePin>) {
        if let Some(pin) = pin {
            self.pins.lock().unwrap().insert(id.to_string(), pin);
        }
    }

    /// Unmount the workspace of sandbox `id` (whose box is gone) unless another sandbox of its
    /// session may still run.
    async fn release_workspace(&self, q: &WorkspaceQuota, id: &str) -> Result<(), CoreError> {
        let Some(rec) = self.store.get(id).await? else {
            return Ok(());
        };
        let session = rec.sandbox.session_id;
        q.detach(&session, || async {
            let all = self.store.list().await?;
            Ok::<_, CoreError>(all.iter().any(|r| {
                r.sandbox.id != id
                    && r.sandbox.session_id == session
                    && !matches!(
                        r.sandbox.state,
                        SandboxState::Stopped | SandboxState::Recycled | SandboxState::Replaced
                    )
            }))
        })
        .await
    }

    /// Remove the box of a running sandbox found dead and mark it `error`. Claimed as
    /// `stopping` first, so that no restart starts a new box under the removal, and only while
    /// the record still says `running`; then looked at again, as the box found dead may have
    /// been replaced by a restart that ended before the claim.
    async fn mark_dead(&self, id: &str) {
        let running = |s: &Sandbox| s.state == SandboxState::Running;
        if !matches!(
            self.claim(id, running, SandboxState::Stopping).await,
            Ok((true, _))
        ) {
            return;
        }
        if self.backend.is_alive(id).await {
            let stopping = |s: &Sandbox| s.state == SandboxState::Stopping;
            let _ = self.claim(id, stopping, SandboxState::Running).await;
            return;
        }
        tracing::warn!(sandbox = %id, "sandbox exited unexpectedly");
        let _ = self.destroy_box(id).await;
        self.mark_error(id, "the sandbox's processes exited".into())
            .await;
    }

    /// Put a sandbox in state `error` with `reason`, best effort (the record may be gone).
    async fn mark_error(&self, id: &str, reason: String) {
        let _ = self
            .modify(id, |r| {
                r.sandbox.state = SandboxState::Error;
                r.sandbox.reason = Some(reason.clone());
            })
            .await;
    }

    /// Set a sandbox's remaining lifetime to `secs` from now (0 = never expires).
    pub async fn set_timeout(&self, id: &str, secs: u64) -> Result<Sandbox, CoreError> {
        let now = now_ms();
        let rec = self
            .modify(id, |r| r.sandbox.expires_at_ms = expiry(now, secs))
            .await?;
        Ok(rec.sandbox)
    }

    /// Add or replace metadata pairs of a sandbox.
    pub async fn set_metadata(
        &self,
        id: &str,
        pairs: BTreeMap<String, String>,
    ) -> Result<Sandbox, CoreError> {
        let mut merged = self.get(id).await?.metadata;
        merged.extend(pairs.clone());
        check_metadata(&merged)?;
        let rec = self
            .modify(id, |r| r.sandbox.metadata.extend(pairs.clone()))
            .await?;
        Ok(rec.sandbox)
    }

    /// Freeze a running sandbox: its processes keep their memory and state but do nothing, and
    /// requests to it are refused (`not_running`) until [`Manager::resume`]. Pausing a paused
    /// sandbox does nothing. Its timeout keeps running; deleting it works as usual.
    pub async fn pause(&self, id: &str) -> Result<Sandbox, CoreError> {
        let mut was = SandboxState::Running;
        let rec = self
            .modify(id, |r| {
                was = r.sandbox.state;
                if was == SandboxState::Running {
                    r.sandbox.state = SandboxState::Paused;
                }
            })
            .await?;
        match was {
            SandboxState::Paused => return Ok(rec.sandbox),
            SandboxState::Running => {}
            _ => return Err(CoreError::NotRunning(id.to_string())),
        }
        // A kept connection would only wait on a frozen agent.
        self.conns.forget(id);
        if let Err(e) = self.backend.set_paused(id, true).await {
            // Not frozen (or not all of it): let it run on as before.
            let _ = self.backend.set_paused(id, false).await;
            let _ = self
                .modify(id, |r| {
                    if r.sandbox.state == SandboxState::Paused {
                        r.sandbox.state = SandboxState::Running;
                    }
                })
                .await;
            return Err(e.into());
        }
        Ok(rec.sandbox)
    }

    /// Let a paused sandbox run on, where it stopped. Resuming a running sandbox does nothing.
    pub async fn resume(&self, id: &str) -> Result<Sandbox, CoreError> {
        let rec = self
            .store
            .get(id)
            .await?
            .ok_or_else(|| CoreError::NotFound(id.to_string()))?;
        match rec.sandbox.state {
            SandboxState::Running => return Ok(rec.sandbox),
            SandboxState::Paused => {}
            _ => return Err(CoreError::NotRunning(id.to_string())),
        }
        self.backend.set_paused(id, false).await?;
        let paused = |s: &Sandbox| s.state == SandboxState::Paused;
        let (resumed, rec) = self.claim(id, paused, SandboxState::Running).await?;
        if !resumed && rec.sandbox.state != SandboxState::Running {
            return Err(CoreError::NotRunning(id.to_string()));
        }
        Ok(rec.sandbox)
    }

    /// Start a new box for a sandbox, keeping its id, type, resources, metadata, expiry and
    /// `/workspace` (its session): for a sandbox whose box died (state `error`), or a running
    /// or paused one whose processes are to start afresh. What ran in the old box is gone
    /// (processes, the Python interpreter's state, files outside `/workspace`); `env` is the
    /// new box's environment (the original create's is not kept). Published ports are not
    /// kept. While it restarts the sandbox is `creating`; if the new box fails to start, the
    /// sandbox is `error` again, with the reason.
    pub async fn restart(
        &self,
        id: &str,
        env: BTreeMap<String, String>,
    ) -> Result<Sandbox, CoreError> {
        if self.shutting_down.load(Ordering::Relaxed) {
            return Err(CoreError::ShuttingDown);
        }
        check_env(&env)?;
        let mut claimed = None;
        self.modify(id, |r| {
            claimed = None;
            if matches!(
                r.sandbox.state,
                SandboxState::Running | SandboxState::Paused | SandboxState::Error
            ) {
                claimed = Some(r.sandbox.clone());
                r.sandbox.state = SandboxState::Creating;
                r.sandbox.reason = None;
                r.sandbox.ports.clear();
                r.endpoint = None;
            }
        })
        .await?;
        let Some(old) = claimed else {
            return Err(CoreError::NotRunning(id.to_string()));
        };
        let started: Result<Sandbox, CoreError> = async {
            self.destroy_box(id).await?;
            let (rootfs, pin) = match &old.image {
                Some(_) => (PathBuf::new(), None),
                None => self
                    .templates
                    .pin(&old.sandbox_type)
                    .map(|(rootfs, pin)| (rootfs, Some(pin)))
                    .ok_or_else(|| {
                        CoreError::UnknownType(old.sandbox_type.clone(), String::new())
                    })?,
            };
            self.hold_tree(id, pin);
            let (limits, _) = self.resolve_limits(Some(&old.resources))?;
            self.start_box(
                id,
                &old.session_id,
                (rootfs, old.image.clone()),
                env,
                limits,
                SandboxState::Running,
                false,
            )
            .await
        }
        .await;
        match started {
            Ok(sb) => {
                tracing::info!(sandbox = %id, "sandbox restarted");
                Ok(sb)
            }
            Err(e) => {
                let _ = self.destroy_box(id).await;
                self.mark_error(id, format!("could not be restarted: {e}"))
                    .await;
                Err(e)
            }
        }
    }

    /// Remove a running (or paused) sandbox's box but keep its record (state `recycled`, with `reason`) and
    /// its workspace, so that [`Manager::restore`] can bring it back. The record is kept for
    /// `retired_keep`.
    pub async fn recycle(&self, id: &str, reason: &str) -> Result<Sandbox, CoreError> {
        let live = |s: &Sandbox| matches!(s.state, SandboxState::Running | SandboxState::Paused);
        if !self.claim(id, live, SandboxState::Stopping).await?.0 {
            return Err(CoreError::NotRunning(id.to_string()));
        }
        if let Err(e) = self.destroy_box(id).await {
            self.mark_error(id, format!("could not be recycled: {e}"))
                .await;
            return Err(e.into());
        }
        let keep_until = now_ms().saturating_add(self.config.retired_keep.as_millis() as i64);
        let rec = self
            .modify(id, |r| {
                r.sandbox.state = SandboxState::Recycled;
                r.sandbox.reason = Some(reason.to_string());
                r.sandbox.expires_at_ms = Some(keep_until);
                r.endpoint = None;
                // Nothing is published for a box that is gone (the server closes the ports).
                r.sandbox.ports.clear();
            })
            .await?;
        if self.pools_enabled() {
            self.pools.wake.notify_one();
        }
        Ok(rec.sandbox)
    }

    /// Bring a recycled sandbox back: a new sandbox of the same type, resources and metadata on
    /// the same session (so the same `/workspace`), living `timeout_secs` (else the default).
    /// The old record becomes `replaced` with `replaced_by` the new id, kept for
    /// `retired_keep`. Restoring a replaced sandbox gives its successor; restores are
    /// serialized, so two concurrent ones make one successor. Environment variables of the
    /// original create are not kept: the new sandbox gets `env` (the caller knows which of
    /// them belong to the sandbox's kind).
    pub async fn restore(
        &self,
        id: &str,
        timeout_secs: Option<u64>,
        env: BTreeMap<String, String>,
    ) -> Result<Sandbox, CoreError> {
        // One restore of a sandbox at a time, across every process sharing the store, so that
        // two touches of a recycled sandbox make one successor.
        let _one_here = self.restoring.lock().await;
        let lock = format!("restore:{id}");
        let deadline = Instant::now() + self.config.start_timeout * 3;
        while !self
            .store
            .try_lock(&lock, &self.holder, self.config.lock_ttl)
            .await?
        {
            if Instant::now() > deadline {
                return Err(CoreError::Timeout(format!(
                    "another restore of sandbox {id} is still running"
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let restored = self.restore_locked(id, timeout_secs, env).await;
        let _ = self.store.unlock(&lock, &self.holder).await;
        restored
    }

    async fn restore_locked(
        &self,
        id: &str,
        timeout_secs: Option<u64>,
        env: BTreeMap<String, String>,
    ) -> Result<Sandbox, CoreError> {
        let old = self.get(id).await?;
        match (old.state, &old.replaced_by) {
            (SandboxState::Replaced, Some(next)) => return self.get(next).await,
            (SandboxState::Recycled, _) => {}
            _ => {
                return Err(invalid(format!(
                    "sandbox {id} is not recycled; only a recycled sandbox can be restored"
                )))
            }
        }
        let req = sandboxd_types::CreateSandboxRequest {
            sandbox_type: Some(old.sandbox_type.clone()),
            resources: Some(old.resources.clone()),
            env,
            timeout_secs,
            metadata: old.metadata.clone(),
            session_id: Some(old.session_id.clone()),
            image: old.image.clone(),
            ..Default::default()
        };
        let new = self.create_inner(req, false, Vec::new()).await?;
        let keep_until = now_ms().saturating_add(self.config.retired_keep.as_millis() as i64);
        self.modify(id, |r| {
            r.sandbox.state = SandboxState::Replaced;
            r.sandbox.replaced_by = Some(new.id.clone());
            r.sandbox.expires_at_ms = Some(keep_until);
        })
        .await?;
        tracing::info!(sandbox = %id, replaced_by = %new.id, "recycled sandbox restored");
        Ok(new)
    }

    /// One pass of the reaper: kill expired sandboxes, mark dead ones.
    pub async fn reap_once(&self) {
        let Ok(records) = self.store.list().await else {
            return;
        };
        let now = now_ms();
        if self.multi_node() {
            self.take_over_dead_nodes(&records).await;
        }
        for rec in records {
            let id = &rec.sandbox.id;
            if !self.owns(&rec) {
                // Another node's box: only its node can see and remove it.
                continue;
            }
            if matches!(
                rec.sandbox.state,
                SandboxState::Recycled | SandboxState::Replaced
            ) {
                if self.multi_node() && rec.endpoint.is_none() && self.backend.is_alive(id).await {
                    // Taken over while this node was out of reach: its box must not run on.
                    tracing::warn!(sandbox = %id, "sandbox was taken over by another node; removing its box here");
                    let _ = self.destroy_box(id).await;
                }
                // Their box is gone already: only the record goes.
                if rec.sandbox.expires_at_ms.is_some_and(|t| t <= now) {
                    let _ = self.store.remove(id).await;
                }
                continue;
            }
            if rec.sandbox.state == SandboxState::Warm {
                if !self.backend.is_alive(id).await {
                    tracing::warn!(sandbox = %id, "warm sandbox exited; dropping it from the pool");
                    self.discard_warm(id).await;
                    self.pools.wake.notify_one();
                }
                continue;
            }
            // Creating and stopping sandboxes belong to the request working on them.
            if !matches!(
                rec.sandbox.state,
                SandboxState::Running | SandboxState::Paused | SandboxState::Error
            ) {
                continue;
            }
            // `rec` may be old by now (the passes over the records before it awaited): each
            // action takes the sandbox only if the record as it is now still calls for it, so
            // that a restart, recycle or pause begun meanwhile keeps its sandbox.
            if rec.sandbox.expires_at_ms.is_some_and(|t| t <= now) {
                let expired = |s: &Sandbox| {
                    matches!(
                        s.state,
                        SandboxState::Running | SandboxState::Paused | SandboxState::Error
                    ) && s.expires_at_ms.is_some_and(|t| t <= now)
                };
                match self.delete_if(id, expired).await {
                    Ok(true) => tracing::info!(sandbox = %id, "timeout passed; sandbox removed"),
                    Ok(false) | Err(CoreError::NotFound(_)) => {}
                    Err(e) => {
                        tracing::warn!(sandbox = %id, error = %e, "could not remove expired sandbox")
                    }
                }
            } else if rec.sandbox.state == SandboxState::Running && !self.backend.is_alive(id).await
            {
                self.mark_dead(id).await;
            }
        }
    }

    /// Remove every sandbox; refuse new ones. Called when the server stops.
    pub async fn shutdown(&self) {
        self.stop_pools().await;
        if self.config.worker {
            return;
        }
        // With a shared backend, the other nodes go on serving every sandbox: none is removed.
        let records = if self.multi_node() && self.backend.shared() {
            Vec::new()
        } else {
            self.own_records().await
        };
        let tasks = records.into_iter().map(|r| async move {
            let id = r.sandbox.id;
            match r.sandbox.state {
                // No box; a recycled record stays restorable, on any node.
                SandboxState::Recycled | SandboxState::Replaced => return,
                // Hand it back: recycled, to be restored on another node at its next touch.
                SandboxState::Running | SandboxState::Paused if self.multi_node() => {
                    if let Err(e) = self.recycle(&id, "its node shut down").await {
                        tracing::warn!(sandbox = %id, error = %e, "could not hand the sandbox back at shutdown");
                    }
                    return;
                }
                _ => {}
            }
            if let Err(e) = self.destroy_box(&id).await {
                tracing::warn!(sandbox = %id, error = %e, "could not remove sandbox at shutdown");
            }
            let _ = self.store.remove(&id).await;
        });
        futures::future::join_all(tasks).await;
        self.backend.shutdown().await;
        if let Some(url) = &self.config.node_url {
            // Gone at once, not after the registration's TTL: the others take over now.
            let _ = self
                .store
                .unlock(&crate::nodes::node_lock(&self.config.node_id), url)
                .await;
        }
    }

    /// Stop refilling the pools and refuse new sandboxes; waits for a warm create in flight,
    /// so that every sandbox made so far is in the store afterwards.
    async fn stop_pools(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
        self.pools.stopped.store(true, Ordering::Relaxed);
        self.pools.wake.notify_one();
        let _done = self.pools.refilling.lock().await;
    }

    /// Remove the warm sandboxes only, and refuse new ones: the server stops but keeps the
    /// sandboxes in use (`AUTO_CLEANUP=false`). Warm ones belong to nobody, so they go.
    pub async fn shutdown_pools(&self) {
        self.stop_pools().await;
        if self.config.worker {
            return;
        }
        let records = self.own_records().await;
        let warm = records
            .into_iter()
            .filter(|r| r.sandbox.state == SandboxState::Warm)
            .map(|r| async move { self.discard_warm(&r.sandbox.id).await });
        futures::future::join_all(warm).await;
    }

    /// Take the store lock `name` for this process for the configured lock TTL (see
    /// [`SandboxStore::try_lock`]); false when another process holds it or the store is
    /// unreachable.
    pub async fn try_lock(&self, name: &str) -> bool {
        self.store
            .try_lock(name, &self.holder, self.config.lock_ttl)
            .await
            .unwrap_or(false)
    }

    /// Give up the store lock `name` taken with [`Manager::try_lock`].
    pub async fn unlock(&self, name: &str) {
        let _ = self.store.unlock(name, &self.holder).await;
    }

    /// Every sandbox, oldest first, each with whether this node manages it (its own, and those
    /// of a shared backend).
    pub async fn list_marking_own(&self) -> Result<Vec<(Sandbox, bool)>, CoreError> {
        Ok(self
            .store
            .list()
            .await?
            .into_iter()
            .map(|r| {
                let own = self.owns(&r);
                (r.sandbox, own)
            })
            .collect())
    }

    /// The records of this node's sandboxes (and of sandboxes recorded without an owner).
    async fn own_records(&self) -> Vec<SandboxRecord> {
        let all = self.store.list().await.unwrap_or_default();
        all.into_iter().filter(|r| self.owns(r)).collect()
    }

    fn owns(&self, r: &SandboxRecord) -> bool {
        r.owner.as_deref().is_none_or(|o| o == self.config.node_id)
    }

    fn pools_enabled(&self) -> bool {
        self.config.pool_size > 0 && !self.config.pools.is_empty()
    }

    /// Hand out a warm sandbox of the pool named `pool` (a template's name for its plain pool,
    /// see [`PoolSpec`]): bind `metadata` (which replaces the warm sandbox's own), set the
    /// state to `running` and start its timeout (`timeout_secs`, else the default). `None`
    /// when the pool is empty (or there is no such pool): the caller then creates one cold.
    /// The sandbox keeps its own session (see [`crate::pool`]). Costs a few store operations
    /// and the backend's `is_alive`, no agent round-trip; the pool refills in the background.
    pub async fn create_from_pool(
        &self,
        pool: &str,
        metadata: BTreeMap<String, String>,
        timeout_secs: Option<u64>,
    ) -> Result<Option<Sandbox>, CoreError> {
        self.hand_out(pool, metadata, timeout_secs, &[]).await
    }

    /// [`Manager::create_from_pool`], the handed-out sandbox publishing `published`.
    async fn hand_out(
        &self,
        pool: &str,
        metadata: BTreeMap<String, String>,
        timeout_secs: Option<u64>,
        published: &[PublishedPort],
    ) -> Result<Option<Sandbox>, CoreError> {
        if self.shutting_down.load(Ordering::Relaxed) {
            return Err(CoreError::ShuttingDown);
        }
        check_metadata(&metadata)?;
        let started = Instant::now();
        let timeout = timeout_secs.unwrap_or(self.config.default_timeout_secs);
        let mut from_store: Option<Vec<String>> = None;
        let handed = loop {
            // This process's queue first; then the warm sandboxes of the pool that other
            // processes of this node made (or an earlier run left), found in the store.
            let next = match self.pools.pop(pool) {
                Some(id) => Some(id),
                None => {
                    let ids = match &mut from_store {
                        Some(ids) => ids,
                        None => from_store.insert(self.warm_in_store(pool).await?),
                    };
                    ids.pop()
                }
            };
            let Some(id) = next else {
                break None;
            };
            if !self.backend.is_alive(&id).await {
                tracing::warn!(sandbox = %id, "warm sandbox exited; dropping it from the pool");
                self.discard_warm(&id).await;
                continue;
            }
            // Compare-and-set from warm: a concurrent delete or reaper wins over the hand-out.
            let Some(mut rec) = self.store.get(&id).await? else {
                continue;
            };
            if rec.sandbox.state != SandboxState::Warm {
                continue;
            }
            rec.sandbox.state = SandboxState::Running;
            rec.sandbox.metadata = metadata.clone();
            rec.sandbox.expires_at_ms = expiry(now_ms(), timeout);
            rec.sandbox.ports = published.to_vec();
            match self.store.update(rec).await {
                Ok(r) => break Some(r.sandbox),
                Err(StoreError::Conflict(_) | StoreError::NotFound(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        };
        if let Some(sb) = &handed {
            self.pools.handed_out();
            tracing::debug!(
                sandbox = %sb.id,
                pool,
                micros = started.elapsed().as_micros() as u64,
                "warm sandbox handed out"
            );
        }
        if self.pools_enabled() {
            self.pools.wake.notify_one();
        }
        Ok(handed)
    }

    /// Ids of this node's warm sandboxes of `pool` in the store, the oldest last.
    async fn warm_in_store(&self, pool: &str) -> Result<Vec<String>, CoreError> {
        let mut ids: Vec<String> = self
            .store
            .list()
            .await?
            .into_iter()
            .filter(|r| r.sandbox.state == SandboxState::Warm && self.owns(r))
            .filter(|r| {
                r.sandbox
                    .metadata
                    .get(POOL_METADATA_KEY)
                    .unwrap_or(&r.sandbox.sandbox_type)
                    == pool
            })
            .map(|r| r.sandbox.id)
            .collect();
        ids.reverse();
        Ok(ids)
    }

    /// Remove one warm sandbox to make room under the instance limit; false when there is
    /// none.
    async fn evict_one_warm(&self) -> bool {
        while let Some(id) = self.pools.pop_any() {
            if self.claim_warm(&id).await {
                tracing::info!(sandbox = %id, "warm sandbox removed to make room under the instance limit");
                let _ = self.destroy_box(&id).await;
                let _ = self.store.remove(&id).await;
                return true;
            }
        }
        false
    }

    /// Take a warm sandbox out of the pool for removal (compare-and-set warm → stopping).
    async fn claim_warm(&self, id: &str) -> bool {
        loop {
            let Ok(Some(mut rec)) = self.store.get(id).await else {
                return false;
            };
            if rec.sandbox.state != SandboxState::Warm {
                return false;
            }
            rec.sandbox.state = SandboxState::Stopping;
            match self.store.update(rec).await {
                Ok(_) => return true,
                Err(StoreError::Conflict(_)) => continue,
                Err(_) => return false,
            }
        }
    }

    /// Remove a warm sandbox (dead, or at shutdown) if it still is warm.
    async fn discard_warm(&self, id: &str) {
        if self.claim_warm(id).await {
            if let Err(e) = self.destroy_box(id).await {
                tracing::warn!(sandbox = %id, error = %e, "could not remove warm sandbox");
            }
            let _ = self.store.remove(id).await;
        }
    }

    /// One round of the refill: create what [`pool::plan`] says is missing, one sandbox at a
    /// time. Stops at the instance limit (quietly: warm sandboxes only use spare room) and at
    /// a type's first failure (retried next round).
    pub async fn refill_once(&self) {
        if !self.pools_enabled() {
            return;
        }
        // One refill at a time across the processes of the node: each counts the warm
        // sandboxes in the store, and two counting at once would both fill the same gap.
        let lock = format!("pool-refill:{}", self.config.node_id);
        match self
            .store
            .try_lock(&lock, &self.holder, self.config.lock_ttl)
            .await
        {
            Ok(true) => {}
            Ok(false) | Err(_) => return,
        }
        self.refill_locked().await;
        let _ = self.store.unlock(&lock, &self.holder).await;
    }

    async fn refill_locked(&self) {
        let mut warm: std::collections::HashMap<String, usize> = Default::default();
        let Ok(records) = self.store.list().await else {
            return;
        };
        for mut r in records {
            if r.sandbox.state == SandboxState::Warm && self.owns(&r) {
                let pool = r
                    .sandbox
                    .metadata
                    .remove(POOL_METADATA_KEY)
                    .unwrap_or(r.sandbox.sandbox_type);
                *warm.entry(pool).or_default() += 1;
            }
        }
        let names: Vec<String> = self.config.pools.iter().map(|p| p.name.clone()).collect();
        for (name, missing) in pool::plan(&names, self.config.pool_size, &warm) {
            let Some(spec) = self.config.pools.iter().find(|p| p.name == name) else {
                continue;
            };
            for _ in 0..missing {
                self.pools.wait_for_quiet().await;
                let _refilling = self.pools.refilling.lock().await;
                if self.pools.stopped.load(Ordering::Relaxed) {
                    return;
                }
                let req = sandboxd_types::CreateSandboxRequest {
                    sandbox_type: Some(spec.template.clone()),
                    env: spec.env.clone(),
                    resources: spec.resources.clone(),
                    metadata: BTreeMap::from([(POOL_METADATA_KEY.to_string(), name.clone())]),
                    ..Default::default()
                };
                match self.create_inner(req, true, Vec::new()).await {
                    Ok(sb) => {
                        if self.pools.failing.lock().unwrap().remove(&name) {
                            tracing::info!(pool = %name, "warm pool refills again");
                        }
                        tracing::debug!(sandbox = %sb.id, pool = %name, "warm sandbox ready");
                        self.pools.push(&name, sb.id);
                    }
                    Err(CoreError::LimitReached(_)) => return,
                    Err(CoreError::ShuttingDown) => return,
                    Err(e) => {
                        if self.pools.failing.lock().unwrap().insert(name.clone()) {
                            tracing::warn!(pool = %name, error = %e, "cannot fill the warm pool (retrying)");
                        }
                        break;
                    }
                }
            }
        }
    }

    async fn endpoint(&self, id: &str) -> Result<AgentEndpoint, CoreError> {
        let rec = self
            .store
            .get(id)
            .await?
            .ok_or_else(|| CoreError::NotFound(id.to_string()))?;
        match (rec.sandbox.state, rec.endpoint) {
            (SandboxState::Running, Some(ep)) => Ok(ep),
            _ => Err(CoreError::NotRunning(id.to_string())),
        }
    }

    async fn conn(&self, id: &str) -> Result<AgentConn, CoreError> {
        let ep = self.endpoint(id).await?;
        self.open(&ep).await
    }

    /// A new connection to the agent at `ep`, through the backend for a relayed one.
    async fn open(&self, ep: &AgentEndpoint) -> Result<AgentConn, CoreError> {
        match ep {
            AgentEndpoint::Unix { .. } => AgentConn::connect(ep).await,
            AgentEndpoint::Relay { box_id } => self
                .backend
                .connect_agent(box_id)
                .await
                .map(AgentConn::from_io)
                .map_err(|e| CoreError::AgentUnreachable(e.to_string())),
        }
    }

    /// Send `req` and read the first answer, on a kept idle connection when there is one. A
    /// kept connection that turns out dead is replaced by a fresh one, once: the agent answers
    /// every request at once, so no answer means it never got to work on it.
    pub(crate) async fn exchange(
        &self,
        id: &str,
        req: &Request,
        payload: &[u8],
    ) -> Result<(AgentConn, Frame<Response>), CoreError> {
        let ep = self.endpoint(id).await?;
        if let Some(mut conn) = self.conns.take(id) {
            if conn.send(req, payload).await.is_ok() {
                if let Ok(first) = conn.recv().await {
                    return Ok((conn, first));
                }
            }
        }
        let mut conn = self.open(&ep).await?;
        conn.send(req, payload).await?;
        let first = conn.recv().await?;
        Ok((conn, first))
    }

    /// A request answered by one frame; the connection is kept for the next request.
    async fn call(&self, id: &str, req: &Request) -> Result<Response, CoreError> {
        self.call_with(id, req, &[]).await.map(|f| f.header)
    }

    /// [`Manager::call`] with a payload each way.
    pub(crate) async fn call_with(
        &self,
        id: &str,
        req: &Request,
        payload: &[u8],
    ) -> Result<Frame<Response>, CoreError> {
        let (conn, frame) = self.exchange(id, req, payload).await?;
        // The agent reads on after refusing a request, so the connection serves the next one
        // either way (and one it did close is replaced at the next exchange).
        self.conns.put(id, conn);
        match frame.header {
            Response::Error(e) => Err(CoreError::Agent(e)),
            _ => Ok(frame),
        }
    }

    /// Check an exec request and start the command; returns the connection it runs on and the
    /// agent's first answer.
    /// Send `req` to the sandbox's agent; `quiet` when the caller needs no `Started` event.
    async fn start_exec(
        &self,
        id: &str,
        req: ExecRequest,
        quiet: bool,
    ) -> Result<(AgentConn, Frame<Response>), CoreError> {
        let spec = ExecSpec {
            quiet,
            ..exec_spec(&req)?
        };
        let stdin = req.stdin.unwrap_or_default().into_bytes();
        if stdin.len() > MAX_PAYLOAD_LEN as usize {
            return Err(invalid("stdin is too large"));
        }
        self.exchange(id, &Request::Exec(spec), &stdin).await
    }

    /// Start a command; its events stream as they happen. The stream reads the agent's
    /// answers itself, in whatever task polls it (no relay task and no channel between: one
    /// thread hand-off less per event, the first output's included). Dropping it drops the
    /// connection, which makes the agent kill the command: a client that goes away stops it.
    pub async fn exec(&self, id: &str, req: ExecRequest) -> Result<ExecStream, CoreError> {
        let started = Instant::now();
        let (conn, first) = self.start_exec(id, req, false).await?;
        let (conns, id) = (self.conns.clone(), id.to_string());
        // The connection, and the agent's first answer while it is not yet streamed; `None`
        // once the last event went out.
        let events = futures::stream::unfold(Some((conn, Some(first))), move |state| {
            let (conns, id) = (conns.clone(), id.clone());
            async move {
                let (mut conn, first) = state?;
                let received = match first {
                    Some(f) => Ok(f),
                    None => conn.recv().await,
                };
                // An answer of the agent's own (an exit, or its refusal to run the command)
                // leaves the connection ready for the next request; a broken one does not.
                let (event, reusable) = match received {
                    Ok(frame) => {
                        let refused = matches!(frame.header, Response::Error(_));
                        let event = exec_event(frame, started);
                        let exited = matches!(event, ExecEvent::Exit { .. });
                        (event, exited || refused)
                    }
                    Err(e) => (error_event(e), false),
                };
                if reusable {
                    conns.put(&id, conn);
                    return Some((event, None));
                }
                let last = matches!(event, ExecEvent::Error { .. });
                Some((event, (!last).then_some((conn, None))))
            }
        });
        Ok(Box::pin(events))
    }

    /// Run a command and collect its output. Reads the agent's answers in the caller's task
    /// (no relay task, no channel: the shortest path for short commands); if the caller is
    /// dropped, so is the connection, and the agent kills the command.
    pub async fn exec_collect(&self, id: &str, req: ExecRequest) -> Result<ExecResult, CoreError> {
        let started = Instant::now();
        let (mut conn, mut frame) = self.start_exec(id, req, true).await?;
        let (mut stdout, mut stderr) = (String::new(), String::new());
        loop {
            if let Response::Error(e) = frame.header {
                // The agent refused (a program that cannot run): its connection reads on.
                self.conns.put(id, conn);
                return Err(CoreError::Agent(e));
            }
            match exec_event(frame, started) {
                ExecEvent::Started { .. } => {}
                ExecEvent::Stdout { data } => stdout.push_str(&data),
                ExecEvent::Stderr { data } => stderr.push_str(&data),
                ExecEvent::Exit {
                    exit_code,
                    signal,
                    timed_out,
                    duration_ms,
                } => {
                    self.conns.put(id, conn);
                    return Ok(ExecResult {
                        exit_code,
                        signal,
                        timed_out,
                        stdout,
                        stderr,
                        duration_ms,
                    });
                }
                ExecEvent::Error { error } => {
                    return Err(CoreError::AgentUnreachable(error.message))
                }
            }
            frame = conn.recv().await?;
        }
    }

    /// Open a tunnel to TCP port `port` on a running sandbox's loopback: a byte stream to
    /// whatever listens there (see [`crate::tunnel`]). Works on every backend (the guest agent
    /// makes the connection inside the box). Fails with `NotFound` (the agent's) when nothing
    /// listens on the port, `NotRunning` when the sandbox is paused or gone.
    ///
    /// Bytes through the tunnel count as activity on the sandbox, at most once a second
    /// ([`ACTIVITY_EVERY`]): as an AgentScope touch does, a sandbox in use is not removed under
    /// its client (an expiry nearer than `SANDBOX_TIMEOUT` moves to `SANDBOX_TIMEOUT` from
    /// now), and [`ManagerConfig::activity_key`], if any, is set to the time.
    pub async fn connect_port(self: &Arc<Self>, id: &str, port: u16) -> Result<Tunnel, CoreError> {
        if port == 0 {
            return Err(invalid("port must be between 1 and 65535"));
        }
        let (conn, frame) = self.exchange(id, &Request::Connect { port }, &[]).await?;
        match frame.header {
            Response::Connected => Ok(Tunnel::new(
                conn.into_stream(),
                Arc::downgrade(self),
                id.to_string(),
                port,
            )),
            Response::Error(e) => {
                // The agent refused; the connection is still a framed one.
                self.conns.put(id, conn);
                if e.kind == AgentErrorKind::Unsupported {
                    return Err(CoreError::AgentUnreachable(format!(
                        "the agent of sandbox {id} is too old for published ports (they need \
                         protocol {}.{} or newer): {}",
                        CONNECT_SINCE.0, CONNECT_SINCE.1, e.message
                    )));
                }
                Err(CoreError::Agent(e))
            }
            other => Err(unexpected(&other)),
        }
    }

    fn lock_activity(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Instant>> {
        // The map stays consistent whatever panicked while it was held.
        self.activity.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Record activity on a running sandbox (traffic through its tunnels), at most once per
    /// [`ACTIVITY_EVERY`] per sandbox and process: push an expiry nearer than the default
    /// timeout to the default timeout from now, and set [`ManagerConfig::activity_key`]. Best
    /// effort: a failure is only logged.
    pub(crate) async fn record_activity(&self, id: &str) {
        {
            let mut last = self.lock_activity();
            let now = Instant::now();
            if last
                .get(id)
                .is_some_and(|t| now.duration_since(*t) < ACTIVITY_EVERY)
            {
                return;
            }
            last.insert(id.to_string(), now);
        }
        let secs = self.config.default_timeout_secs;
        for _ in 0..8 {
            let Ok(Some(mut rec)) = self.store.get(id).await else {
                return;
            };
            if rec.sandbox.state != SandboxState::Running {
                return;
            }
            let now = now_ms();
            let mut changed = false;
            if let (Some(expires), Some(wanted)) = (rec.sandbox.expires_at_ms, expiry(now, secs)) {
                if wanted > expires {
                    rec.sandbox.expires_at_ms = Some(wanted);
                    changed = true;
                }
            }
            if let Some(key) = &self.config.activity_key {
                rec.sandbox.metadata.insert(key.clone(), now.to_string());
                changed = true;
            }
            if !changed {
                return;
            }
            match self.store.update(rec).await {
                Ok(_) => return,
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => {
                    tracing::debug!(sandbox = %id, error = %e, "could not record tunnel activity");
                    return;
                }
            }
        }
    }

    /// Run code in the sandbox's persistent Python interpreter.
    pub async fn python(&self, id: &str, req: PythonRequest) -> Result<PythonResult, CoreError> {
        check_text("code", &req.code)?;
        let answer = self
            .call(
                id,
                &Request::Python {
                    code: req.code,
                    timeout_ms: req.timeout_ms,
                },
            )
            .await?;
        match answer {
            Response::Python(o) => Ok(PythonResult {
                stdout: o.stdout,
                stderr: o.stderr,
                result: o.result,
                error: o.error.map(|e| PythonError {
                    ename: e.ename,
                    evalue: e.evalue,
                    traceback: e.traceback,
                }),
            }),
            other => Err(unexpected(&other)),
        }
    }

    /// Read a file; its content streams in pieces.
    pub async fn read_file(&self, id: &str, path: &str) -> Result<ByteStream, CoreError> {
        check_text("path", path)?;
        let mut conn = self.conn(id).await?;
        conn.send(&Request::ReadFile { path: path.into() }, &[])
            .await?;
        // The first frame tells whether the read works at all, so that the caller can answer
        // with an error status instead of a broken stream.
        let first = conn.recv().await?;
        let (payload, last) = match first.header {
            Response::Data { last } => (first.payload, last),
            Response::Error(e) => return Err(CoreError::Agent(e)),
            other => return Err(unexpected(&other)),
        };
        let rest = futures::stream::unfold((conn, last), |(mut conn, done)| async move {
            if done {
                return None;
            }
            match conn.recv().await {
                Ok(f) => match f.header {
                    Response::Data { last } => Some((Ok(f.payload), (conn, last))),
                    Response::Error(e) => Some((Err(CoreError::Agent(e)), (conn, true))),
                    other => Some((Err(unexpected(&other)), (conn, true))),
                },
                Err(e) => Some((Err(e), (conn, true))),
            }
        });
        Ok(Box::pin(
            futures::stream::once(async { Ok(payload) }).chain(rest),
        ))
    }

    /// Write a file from a stream of pieces (replaced atomically when the stream ends).
    pub async fn write_file(
        &self,
        id: &str,
        path: &str,
        mode: Option<u32>,
        mut body: ByteStream,
    ) -> Result<FileEntry, CoreError> {
        check_text("path", path)?;
        let mut conn = self.conn(id).await?;
        let limit = MAX_PAYLOAD_LEN as usize;
        let mut pending: Vec<u8> = Vec::new();
        let mut first = true;
        loop {
            // Keep one piece ahead so each frame can say whether more follow.
            let mut ended = false;
            while pending.len() <= limit {
                match body.next().await {
                    Some(piece) => pending.extend_from_slice(&piece?),
                    None => {
                        ended = true;
                        break;
                    }
                }
            }
            let take = pending.len().min(limit);
            let piece: Vec<u8> = pending.drain(..take).collect();
            let more = !(ended && pending.is_empty());
            let req = if first {
                Request::WriteFile {
                    path: path.into(),
                    mode,
                    create_parents: true,
                    more,
                }
            } else {
                Request::Chunk { more }
            };
            first = false;
            conn.send(&req, &piece).await?;
            if !more {
                break;
            }
        }
        match conn.recv().await?.header {
            Response::Entry(e) => Ok(entry(e)),
            Response::Error(e) => Err(CoreError::Agent(e)),
            other => Err(unexpected(&other)),
        }
    }

    /// List a directory to `depth` levels.
    pub async fn list_dir(
        &self,
        id: &str,
        path: &str,
        depth: u32,
    ) -> Result<Vec<FileEntry>, CoreError> {
        check_text("path", path)?;
        if !(1..=32).contains(&depth) {
            return Err(invalid("depth must be between 1 and 32"));
        }
        match self
            .call(
                id,
                &Request::ListDir {
                    path: path.into(),
                    depth,
                },
            )
            .await?
        {
            Response::Entries { entries } => Ok(entries.into_iter().map(entry).collect()),
            other => Err(unexpected(&other)),
        }
    }

    /// Describe one path.
    pub async fn stat(&self, id: &str, path: &str) -> Result<FileEntry, CoreError> {
        check_text("path", path)?;
        self.entry_call(id, Request::Stat { path: path.into() })
            .await
    }

    /// Rename a path.
    pub async fn move_path(&self, id: &str, from: &str, to: &str) -> Result<FileEntry, CoreError> {
        check_text("from", from)?;
        check_text("to", to)?;
        self.entry_call(
            id,
            Request::Move {
                from: from.into(),
                to: to.into(),
            },
        )
        .await
    }

    async fn entry_call(&self, id: &str, req: Request) -> Result<FileEntry, CoreError> {
        match self.call(id, &req).await? {
            Response::Entry(e) => Ok(entry(e)),
            other => Err(unexpected(&other)),
        }
    }

    /// Create a directory; false when it existed (with `parents`).
    pub async fn mkdir(&self, id: &str, path: &str, parents: bool) -> Result<bool, CoreError> {
        check_text("path", path)?;
        match self
            .call(
                id,
                &Request::Mkdir {
                    path: path.into(),
                    parents,
                },
            )
            .await?
        {
            Response::Created { created } => Ok(created),
            other => Err(unexpected(&other)),
        }
    }

    /// Remove a path.
    pub async fn remove_path(
        &self,
        id: &str,
        path: &str,
        recursive: bool,
    ) -> Result<(), CoreError> {
        check_text("path", path)?;
        match self
            .call(
                id,
                &Request::Remove {
                    path: path.into(),
                    recursive,
                },
            )
            .await?
        {
            Response::Ok => Ok(()),
            other => Err(unexpected(&other)),
        }
    }
}

/// The error for an agent whose protocol predates [`Request::Connect`].
fn agent_too_old(agent: &str, version: (u32, u32)) -> CoreError {
    CoreError::AgentUnreachable(format!(
        "the sandbox's agent {agent} speaks protocol {}.{}; published ports need {}.{} or newer \
         (use the agent binary that comes with this server)",
        version.0, version.1, CONNECT_SINCE.0, CONNECT_SINCE.1
    ))
}

fn expiry(from_ms: i64, secs: u64) -> Option<i64> {
    (secs > 0).then(|| from_ms.saturating_add((secs.min(i64::MAX as u64 / 1000) * 1000) as i64))
}

/// Longest the warm-up of a pool's sandbox may take (see [`warm_up`]).
const WARM_UP_TIMEOUT: Duration = Duration::from_secs(2);

/// Run `true` once in a new pool sandbox, on the connection kept for its first request.
/// The first command of a new box costs a few tenths of a millisecond more than the ones after
/// it (measured: `echo hi` 0.3-0.45 ms slower, with the box's first path lookups and the agent's
/// first spawn); paid here, it is off the path of whoever the sandbox is handed to. Best
/// effort: a template without `true` only loses the gain. False when the connection is not fit
/// to keep.
async fn warm_up(conn: &mut AgentConn) -> bool {
    let spec = ExecSpec {
        argv: Some(vec!["true".into()]),
        shell: None,
        env: BTreeMap::new(),
        cwd: None,
        timeout_ms: Some(WARM_UP_TIMEOUT.as_millis() as u64),
        quiet: true,
    };
    let run = async {
        conn.send(&Request::Exec(spec), &[]).await?;
        loop {
            match conn.recv().await?.header {
                // Exited, or refused (no `true` here): either way the agent reads on.
                Response::Exited { .. } | Response::Error(_) => return Ok::<_, CoreError>(()),
                _ => {}
            }
        }
    };
    match tokio::time::timeout(WARM_UP_TIMEOUT * 2, run).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "warm-up of a pool sandbox failed");
            false
        }
        Err(_) => false,
    }
}

fn exec_spec(req: &ExecRequest) -> Result<ExecSpec, CoreError> {
    match (&req.cmd, &req.shell) {
        (Some(_), Some(_)) | (None, None) => {
            return Err(invalid("give exactly one of `cmd` and `shell`"))
        }
        (Some(argv), None) if argv.is_empty() || argv[0].is_empty() => {
            return Err(invalid("`cmd` must name a program"))
        }
        (Some(argv), None) => {
            for a in argv {
                check_text("an argument", a)?;
            }
        }
        (None, Some(s)) => check_text("shell", s)?,
    }
    check_env(&req.env)?;
    if let Some(cwd) = &req.cwd {
        check_text("cwd", cwd)?;
    }
    Ok(ExecSpec {
        argv: req.cmd.clone(),
        shell: req.shell.clone(),
        env: req.env.clone(),
        cwd: req.cwd.clone(),
        timeout_ms: req.timeout_ms,
        quiet: false,
    })
}

/// The API event for an agent's answer to an exec request.
fn exec_event(frame: Frame<Response>, started: Instant) -> ExecEvent {
    match frame.header {
        Response::Started { pid } => ExecEvent::Started { pid },
        Response::Stdout => ExecEvent::Stdout {
            data: String::from_utf8_lossy(&frame.payload).into_owned(),
        },
        Response::Stderr => ExecEvent::Stderr {
            data: String::from_utf8_lossy(&frame.payload).into_owned(),
        },
        Response::Exited {
            code,
            signal,
            timed_out,
        } => ExecEvent::Exit {
            exit_code: code,
            signal,
            timed_out,
            duration_ms: started.elapsed().as_millis() as u64,
        },
        Response::Error(e) => error_event(CoreError::Agent(e)),
        other => error_event(unexpected(&other)),
    }
}

fn error_event(e: CoreError) -> ExecEvent {
    ExecEvent::Error {
        error: sandboxd_types::ApiError {
            code: e.code(),
            message: e.to_string(),
        },
    }
}

fn entry(e: sandboxd_protocol::Entry) -> FileEntry {
    FileEntry {
        path: e.path,
        name: e.name,
        kind: match e.kind {
            WireKind::File => EntryKind::File,
            WireKind::Dir => EntryKind::Dir,
            WireKind::Symlink => EntryKind::Symlink,
            WireKind::Other => EntryKind::Other,
        },
        size: e.size,
        mode: e.mode,
        mtime_ms: e.mtime_ms,
        target: e.target,
    }
}

impl CoreError {
    /// The stable API error code of this error.
    pub fn code(&self) -> ErrorCode {
        use sandboxd_protocol::AgentErrorKind as K;
        match self {
            CoreError::InvalidRequest(_) => ErrorCode::InvalidRequest,
            CoreError::NotFound(_) => ErrorCode::NotFound,
            CoreError::UnknownType(..) => ErrorCode::UnknownType,
            CoreError::NotRunning(_) => ErrorCode::NotRunning,
            CoreError::LimitReached(_) => ErrorCode::LimitReached,
            CoreError::Backend(BackendError::BadSpec(_)) => ErrorCode::InvalidRequest,
            CoreError::Backend(e) if e.is_no_space() => ErrorCode::InsufficientStorage,
            CoreError::Backend(_) => ErrorCode::BackendFailed,
            CoreError::Store(StoreError::Unavailable(_)) => ErrorCode::Unavailable,
            CoreError::Store(StoreError::NotFound(_)) => ErrorCode::NotFound,
            CoreError::Store(_) => ErrorCode::Internal,
            CoreError::Workspace(e) if e.is_no_space() => ErrorCode::InsufficientStorage,
            CoreError::Workspace(_) => ErrorCode::BackendFailed,
            CoreError::Agent(e) => match e.kind {
                K::InvalidRequest | K::WrongKind | K::Unsupported => ErrorCode::InvalidRequest,
                K::NotFound => ErrorCode::NotFound,
                K::AlreadyExists => ErrorCode::AlreadyExists,
                K::PathOutsideSandbox => ErrorCode::PathOutsideSandbox,
                K::Timeout => ErrorCode::Timeout,
                K::NoSpace => ErrorCode::InsufficientStorage,
                K::Io | K::SpawnFailed | K::ToolFailed => ErrorCode::AgentFailed,
            },
            CoreError::AgentUnreachable(_) => ErrorCode::AgentFailed,
            CoreError::Timeout(_) => ErrorCode::Timeout,
            CoreError::ShuttingDown => ErrorCode::Unavailable,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_requests_are_validated() {
        let both = ExecRequest {
            cmd: Some(vec!["ls".into()]),
            shell: Some("ls".into()),
            ..Default::default()
        };
        assert!(exec_spec(&both).is_err());
        assert!(exec_spec(&ExecRequest::default()).is_err());
        let nul = ExecRequest {
            cmd: Some(vec!["ls".into(), "a\0b".into()]),
            ..Default::default()
        };
        assert!(exec_spec(&nul).is_err());
        let bad_env = ExecRequest {
            shell: Some("env".into()),
            env: [("A=B".to_string(), "x".to_string())].into(),
            ..Default::default()
        };
        assert!(exec_spec(&bad_env).is_err());
        let ok = ExecRequest {
            shell: Some("echo hi".into()),
            ..Default::default()
        };
        assert_eq!(exec_spec(&ok).unwrap().shell.as_deref(), Some("echo hi"));
    }

    #[test]
    fn disk_limits_are_checked() {
        let disk = |mb| Resources {
            disk_mb: Some(mb),
            ..Default::default()
        };
        assert!(check_resources(&disk(16)).is_ok());
        assert!(check_resources(&disk(1 << 24)).is_ok());
        let e = check_resources(&disk(15)).unwrap_err();
        assert!(e.contains("resources.disk_mb"), "{e}");
        assert!(check_resources(&disk((1 << 24) + 1)).is_err());
        assert!(check_resources(&Resources::default()).is_ok());
    }

    #[test]
    fn expiry_handles_never_and_overflow() {
        assert_eq!(expiry(1000, 0), None);
        assert_eq!(expiry(1000, 2), Some(3000));
        assert!(expiry(1000, u64::MAX).is_some());
    }
}
