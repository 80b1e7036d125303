//! [`Manager`]: creates, tracks, reaps and removes sandboxes, and routes work to their agents.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::{Stream, StreamExt};
use sandboxd_protocol::{EntryKind as WireKind, ExecSpec, Request, Response, MAX_PAYLOAD_LEN};
use sandboxd_types::{
    is_valid_session_id, EntryKind, ErrorCode, ExecEvent, ExecRequest, ExecResult, FileEntry,
    PythonError, PythonRequest, PythonResult, Resources, Sandbox, SandboxState,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::agent::{unexpected, AgentConn};
use crate::backend::{AgentEndpoint, Backend, BoxSpec, Limits, ReadonlyMount};
use crate::store::{SandboxRecord, SandboxStore, StoreError};
use crate::templates::Templates;
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
    /// Read-only mounts of every sandbox (`READONLY_MOUNTS`).
    pub readonly_mounts: Vec<ReadonlyMount>,
    /// Limits when the request gives none.
    pub default_resources: Limits,
    /// How often the reaper looks for expired and dead sandboxes.
    pub reap_interval: Duration,
    /// How long a new sandbox's agent may take to answer.
    pub start_timeout: Duration,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        ManagerConfig {
            default_type: "base".into(),
            default_timeout_secs: 300,
            max_instances: 0,
            mount_dir: PathBuf::from("/var/lib/sandboxd/workspaces"),
            readonly_mounts: Vec::new(),
            default_resources: Limits {
                memory_bytes: 512 << 20,
                cpu_millis: 1000,
                pids: 256,
            },
            reap_interval: Duration::from_secs(1),
            start_timeout: Duration::from_secs(10),
        }
    }
}

/// Bounds on what a request may ask for.
const MEMORY_MB_RANGE: (u64, u64) = (16, 1 << 20);
const CPUS_RANGE: (f64, f64) = (0.01, 256.0);
const PIDS_RANGE: (u64, u64) = (8, 1 << 22);
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
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("backend", &self.backend.name())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn new_id() -> String {
    format!("sb-{:016x}", rand::random::<u64>())
}

fn invalid(msg: impl Into<String>) -> CoreError {
    CoreError::InvalidRequest(msg.into())
}

fn check_text(what: &str, s: &str) -> Result<(), CoreError> {
    if s.contains('\0') {
        return Err(invalid(format!("{what} contains a NUL byte")));
    }
    if s.len() > MAX_LABEL_LEN * 32 {
        return Err(invalid(format!("{what} is too long")));
    }
    Ok(())
}

fn check_env(env: &BTreeMap<String, String>) -> Result<(), CoreError> {
    if env.len() > MAX_ENV {
        return Err(invalid(format!("at most {MAX_ENV} environment variables")));
    }
    for (k, v) in env {
        let ok_name = !k.is_empty()
            && !k.as_bytes()[0].is_ascii_digit()
            && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !ok_name {
            return Err(invalid(format!("invalid environment variable name {k:?}")));
        }
        check_text(&format!("environment variable {k}"), v)?;
    }
    Ok(())
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
        let report = backend.cleanup_stale().await?;
        if report != Default::default() {
            tracing::warn!(
                boxes_killed = report.boxes_killed,
                resources_removed = report.resources_removed,
                "cleaned up after an earlier run that did not shut down cleanly"
            );
        }
        std::fs::create_dir_all(&config.mount_dir).map_err(|e| {
            invalid(format!(
                "cannot create DEFAULT_MOUNT_DIR {}: {e}",
                config.mount_dir.display()
            ))
        })?;
        let manager = Arc::new(Manager {
            backend,
            store,
            templates,
            config,
            shutting_down: AtomicBool::new(false),
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
        Ok(manager)
    }

    /// The manager's settings.
    pub fn config(&self) -> &ManagerConfig {
        &self.config
    }

    /// The backend's name.
    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
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
        if !(MEMORY_MB_RANGE.0..=MEMORY_MB_RANGE.1).contains(&memory_mb) {
            return Err(invalid(format!(
                "resources.memory_mb must be between {} and {}",
                MEMORY_MB_RANGE.0, MEMORY_MB_RANGE.1
            )));
        }
        if !cpus.is_finite() || !(CPUS_RANGE.0..=CPUS_RANGE.1).contains(&cpus) {
            return Err(invalid(format!(
                "resources.cpus must be between {} and {}",
                CPUS_RANGE.0, CPUS_RANGE.1
            )));
        }
        if !(PIDS_RANGE.0..=PIDS_RANGE.1).contains(&pids) {
            return Err(invalid(format!(
                "resources.pids must be between {} and {}",
                PIDS_RANGE.0, PIDS_RANGE.1
            )));
        }
        Ok((
            Limits {
                memory_bytes: memory_mb << 20,
                cpu_millis: (cpus * 1000.0).round() as u64,
                pids,
            },
            Resources {
                memory_mb: Some(memory_mb),
                cpus: Some(cpus),
                pids: Some(pids),
            },
        ))
    }

    /// Create a sandbox and wait until its agent answers.
    pub async fn create(
        &self,
        req: sandboxd_types::CreateSandboxRequest,
    ) -> Result<Sandbox, CoreError> {
        if self.shutting_down.load(Ordering::Relaxed) {
            return Err(CoreError::ShuttingDown);
        }
        let sandbox_type = req
            .sandbox_type
            .clone()
            .unwrap_or_else(|| self.config.default_type.clone());
        let rootfs = self.templates.rootfs(&sandbox_type).ok_or_else(|| {
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
        if req.metadata.len() > MAX_METADATA {
            return Err(invalid(format!("at most {MAX_METADATA} metadata entries")));
        }
        for (k, v) in &req.metadata {
            if k.is_empty() || k.len() > 256 || v.len() > MAX_LABEL_LEN {
                return Err(invalid(
                    "metadata keys must be 1..256 bytes, values at most 4096",
                ));
            }
        }
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
            expires_at_ms: expiry(created, timeout),
            resources,
            metadata: req.metadata,
            reason: None,
        };
        let limit = (self.config.max_instances > 0).then_some(self.config.max_instances);
        let record = SandboxRecord {
            sandbox,
            endpoint: None,
            version: 0,
        };
        self.store
            .insert(record, limit)
            .await
            .map_err(|e| match e {
                StoreError::LimitReached(n) => CoreError::LimitReached(n),
                e => e.into(),
            })?;
        match self
            .start_box(&id, &session_id, rootfs, req.env, limits)
            .await
        {
            Ok(sandbox) => Ok(sandbox),
            Err(e) => {
                let _ = self.backend.destroy(&id).await;
                let _ = self.store.remove(&id).await;
                Err(e)
            }
        }
    }

    async fn start_box(
        &self,
        id: &str,
        session_id: &str,
        template_rootfs: PathBuf,
        env: BTreeMap<String, String>,
        limits: Limits,
    ) -> Result<Sandbox, CoreError> {
        let workspace = self.config.mount_dir.join(session_id);
        tokio::fs::create_dir_all(&workspace).await.map_err(|e| {
            CoreError::Backend(crate::backend::BackendError::Io {
                context: format!("create workspace {}", workspace.display()),
                source: e,
            })
        })?;
        let spec = BoxSpec {
            id: id.to_string(),
            template_rootfs,
            workspace,
            readonly_mounts: self.config.readonly_mounts.clone(),
            env,
            limits,
            hostname: id.to_string(),
        };
        let handle = self.backend.create(spec).await?;
        AgentConn::handshake(&handle.endpoint, self.config.start_timeout).await?;
        let updated = self
            .modify(id, |r| {
                r.sandbox.state = SandboxState::Running;
                r.endpoint = Some(handle.endpoint.clone());
            })
            .await?;
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
        self.modify(id, |r| r.sandbox.state = SandboxState::Stopping)
            .await?;
        if let Err(e) = self.backend.destroy(id).await {
            // Keep the record, visibly failed, so that a retry (or the operator) can find it.
            let reason = format!("could not be removed: {e}");
            let _ = self
                .modify(id, |r| {
                    r.sandbox.state = SandboxState::Error;
                    r.sandbox.reason = Some(reason.clone());
                })
                .await;
            return Err(e.into());
        }
        self.store.remove(id).await?;
        Ok(())
    }

    /// Set a sandbox's remaining lifetime to `secs` from now (0 = never expires).
    pub async fn set_timeout(&self, id: &str, secs: u64) -> Result<Sandbox, CoreError> {
        let now = now_ms();
        let rec = self
            .modify(id, |r| r.sandbox.expires_at_ms = expiry(now, secs))
            .await?;
        Ok(rec.sandbox)
    }

    /// One pass of the reaper: kill expired sandboxes, mark dead ones.
    pub async fn reap_once(&self) {
        let Ok(records) = self.store.list().await else {
            return;
        };
        let now = now_ms();
        for rec in records {
            let id = &rec.sandbox.id;
            // Creating and stopping sandboxes belong to the request working on them.
            if !matches!(
                rec.sandbox.state,
                SandboxState::Running | SandboxState::Error
            ) {
                continue;
            }
            if rec.sandbox.expires_at_ms.is_some_and(|t| t <= now) {
                tracing::info!(sandbox = %id, "timeout passed; removing sandbox");
                if let Err(e) = self.delete(id).await {
                    tracing::warn!(sandbox = %id, error = %e, "could not remove expired sandbox");
                }
            } else if rec.sandbox.state == SandboxState::Running && !self.backend.is_alive(id).await
            {
                tracing::warn!(sandbox = %id, "sandbox exited unexpectedly");
                let _ = self.backend.destroy(id).await;
                let _ = self
                    .modify(id, |r| {
                        r.sandbox.state = SandboxState::Error;
                        r.sandbox.reason = Some("the sandbox's processes exited".into());
                    })
                    .await;
            }
        }
    }

    /// Remove every sandbox; refuse new ones. Called when the server stops.
    pub async fn shutdown(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
        let records = self.store.list().await.unwrap_or_default();
        let tasks = records.into_iter().map(|r| async move {
            let id = r.sandbox.id;
            if let Err(e) = self.backend.destroy(&id).await {
                tracing::warn!(sandbox = %id, error = %e, "could not remove sandbox at shutdown");
            }
            let _ = self.store.remove(&id).await;
        });
        futures::future::join_all(tasks).await;
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
        AgentConn::connect(&ep).await
    }

    /// Start a command; its events stream as they happen.
    pub async fn exec(&self, id: &str, req: ExecRequest) -> Result<ExecStream, CoreError> {
        let spec = exec_spec(&req)?;
        let stdin = req.stdin.unwrap_or_default().into_bytes();
        if stdin.len() > MAX_PAYLOAD_LEN as usize {
            return Err(invalid("stdin is too large"));
        }
        let mut conn = self.conn(id).await?;
        conn.send(&Request::Exec(spec), &stdin).await?;
        let (tx, rx) = mpsc::channel(64);
        let started = Instant::now();
        tokio::spawn(async move {
            loop {
                // A closed receiver means the client went away: stop waiting for output (a
                // silent command may never send any) and drop the connection, which makes the
                // agent kill the command.
                let received = tokio::select! {
                    r = conn.recv() => r,
                    _ = tx.closed() => break,
                };
                let event = match received {
                    Ok(frame) => match frame.header {
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
                    },
                    Err(e) => error_event(e),
                };
                let last = matches!(event, ExecEvent::Exit { .. } | ExecEvent::Error { .. });
                if tx.send(event).await.is_err() || last {
                    break;
                }
            }
        });
        Ok(Box::pin(ReceiverStream::new(rx)))
    }

    /// Run a command and collect its output.
    pub async fn exec_collect(&self, id: &str, req: ExecRequest) -> Result<ExecResult, CoreError> {
        let mut events = self.exec(id, req).await?;
        let (mut stdout, mut stderr) = (String::new(), String::new());
        while let Some(ev) = events.next().await {
            match ev {
                ExecEvent::Started { .. } => {}
                ExecEvent::Stdout { data } => stdout.push_str(&data),
                ExecEvent::Stderr { data } => stderr.push_str(&data),
                ExecEvent::Exit {
                    exit_code,
                    signal,
                    timed_out,
                    duration_ms,
                } => {
                    return Ok(ExecResult {
                        exit_code,
                        signal,
                        timed_out,
                        stdout,
                        stderr,
                        duration_ms,
                    })
                }
                ExecEvent::Error { error } => {
                    return Err(CoreError::AgentUnreachable(error.message))
                }
            }
        }
        Err(CoreError::AgentUnreachable(
            "exec ended without an exit status".into(),
        ))
    }

    /// Run code in the sandbox's persistent Python interpreter.
    pub async fn python(&self, id: &str, req: PythonRequest) -> Result<PythonResult, CoreError> {
        check_text("code", &req.code)?;
        let mut conn = self.conn(id).await?;
        let frame = conn
            .call(
                &Request::Python {
                    code: req.code,
                    timeout_ms: req.timeout_ms,
                },
                &[],
            )
            .await?;
        match frame.header {
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
            .conn(id)
            .await?
            .call(
                &Request::ListDir {
                    path: path.into(),
                    depth,
                },
                &[],
            )
            .await?
            .header
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
        match self.conn(id).await?.call(&req, &[]).await?.header {
            Response::Entry(e) => Ok(entry(e)),
            other => Err(unexpected(&other)),
        }
    }

    /// Create a directory; false when it existed (with `parents`).
    pub async fn mkdir(&self, id: &str, path: &str, parents: bool) -> Result<bool, CoreError> {
        check_text("path", path)?;
        match self
            .conn(id)
            .await?
            .call(
                &Request::Mkdir {
                    path: path.into(),
                    parents,
                },
                &[],
            )
            .await?
            .header
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
            .conn(id)
            .await?
            .call(
                &Request::Remove {
                    path: path.into(),
                    recursive,
                },
                &[],
            )
            .await?
            .header
        {
            Response::Ok => Ok(()),
            other => Err(unexpected(&other)),
        }
    }
}

fn expiry(from_ms: i64, secs: u64) -> Option<i64> {
    (secs > 0).then(|| from_ms.saturating_add((secs.min(i64::MAX as u64 / 1000) * 1000) as i64))
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
    })
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
            CoreError::Backend(_) => ErrorCode::BackendFailed,
            CoreError::Store(StoreError::Unavailable(_)) => ErrorCode::Unavailable,
            CoreError::Store(StoreError::NotFound(_)) => ErrorCode::NotFound,
            CoreError::Store(_) => ErrorCode::Internal,
            CoreError::Agent(e) => match e.kind {
                K::InvalidRequest | K::WrongKind | K::Unsupported => ErrorCode::InvalidRequest,
                K::NotFound => ErrorCode::NotFound,
                K::AlreadyExists => ErrorCode::AlreadyExists,
                K::PathOutsideSandbox => ErrorCode::PathOutsideSandbox,
                K::Timeout => ErrorCode::Timeout,
                K::Io | K::SpawnFailed => ErrorCode::AgentFailed,
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
    fn expiry_handles_never_and_overflow() {
        assert_eq!(expiry(1000, 0), None);
        assert_eq!(expiry(1000, 2), Some(3000));
        assert!(expiry(1000, u64::MAX).is_some());
    }
}
