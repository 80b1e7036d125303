//! The contract between the core and a backend.
//!
//! A backend only knows how to start, stop and remove an isolated box that runs the guest agent,
//! and how to reach that agent. Everything a user does inside a box is the agent's job.

use std::collections::BTreeMap;
use std::path::PathBuf;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// How the host reaches a box's guest agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AgentEndpoint {
    /// A Unix stream socket on the host whose other end is the agent's listener.
    Unix {
        /// Socket path on the host.
        path: PathBuf,
    },
    /// Reached through the backend ([`Backend::connect_agent`]), e.g. a relay process that a
    /// remote container engine runs in the box: for boxes on another machine.
    Relay {
        /// The box.
        box_id: String,
    },
}

/// A byte stream to a guest agent.
pub trait AgentIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> AgentIo for T {}

/// A read-only bind mount from the host into a box.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadonlyMount {
    /// Path on the host.
    pub host: PathBuf,
    /// Absolute path inside the box.
    pub guest: PathBuf,
}

/// Resource limits, already resolved to absolute numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Memory limit in bytes.
    pub memory_bytes: u64,
    /// CPU quota in thousandths of a core (1000 = one core).
    pub cpu_millis: u64,
    /// Maximum number of tasks (processes and threads).
    pub pids: u64,
    /// Disk limit in bytes of each of the box's writable root layer and `/tmp` (0 = none);
    /// each backend says which of them it enforces.
    #[serde(default)]
    pub disk_bytes: u64,
}

/// Everything a backend needs to start one box.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoxSpec {
    /// The sandbox id; also names the box's host resources.
    pub id: String,
    /// Directory holding the template's root file system (read-only, never written).
    pub template_rootfs: PathBuf,
    /// Host directory mounted read-write at `/workspace`; it exists already.
    pub workspace: PathBuf,
    /// Extra read-only mounts.
    pub readonly_mounts: Vec<ReadonlyMount>,
    /// Environment of the agent, inherited by everything it runs.
    pub env: BTreeMap<String, String>,
    /// Resource limits.
    pub limits: Limits,
    /// Host name inside the box.
    pub hostname: String,
    /// An image of the backend's engine to run instead of `template_rootfs`, for backends
    /// that [run images](Backend::runs_images).
    pub image: Option<String>,
}

/// A started box.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoxHandle {
    /// The sandbox id.
    pub id: String,
    /// Where its agent listens. The agent may not be accepting yet when `create` returns:
    /// connections queue until it does.
    pub endpoint: AgentEndpoint,
}

/// What [`Backend::cleanup_stale`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CleanupReport {
    /// Boxes whose processes were killed.
    pub boxes_killed: usize,
    /// Host resources (cgroups, directories, mounts, containers) removed.
    pub resources_removed: usize,
}

/// Errors of a backend.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The backend cannot run on this host (missing kernel feature, runtime, permission).
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    /// Starting the box failed.
    #[error("could not start sandbox: {0}")]
    StartFailed(String),
    /// No box with this id is known to the backend.
    #[error("no such box: {0}")]
    NotFound(String),
    /// The box cannot be made as asked, through no fault of the backend (an image the
    /// engine does not have and cannot pull).
    #[error("{0}")]
    BadSpec(String),
    /// A host operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl BackendError {
    /// Whether the host's disk (or a disk quota) is full: the operation failed for want of
    /// space, not through a fault of the backend.
    pub fn is_no_space(&self) -> bool {
        matches!(self, BackendError::Io { source, .. } if io_no_space(source))
    }
}

/// Whether an I/O error says the disk (or a disk quota) is full.
pub(crate) fn io_no_space(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

/// A way of running isolated boxes.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Short name (`native`, `docker`, `gvisor`).
    fn name(&self) -> &'static str;

    /// Start a box. On error, nothing of the box is left behind.
    async fn create(&self, spec: BoxSpec) -> Result<BoxHandle, BackendError>;

    /// Kill a box and remove every host resource it used, except its workspace. Idempotent:
    /// destroying an unknown or already dead box succeeds.
    async fn destroy(&self, id: &str) -> Result<(), BackendError>;

    /// Whether the box's processes are still alive.
    async fn is_alive(&self, id: &str) -> bool;

    /// Open a stream to a box's agent, for [`AgentEndpoint::Relay`] endpoints.
    async fn connect_agent(&self, id: &str) -> Result<Box<dyn AgentIo>, BackendError> {
        let _ = id;
        Err(BackendError::Unavailable(format!(
            "the {} backend has no relayed agent connections",
            self.name()
        )))
    }

    /// Whether every node sharing the store reaches this backend's boxes (a container engine
    /// over TCP, a cluster): its sandboxes then belong to no node, any node manages any of
    /// them, and none is taken over or handed back when a node goes.
    fn shared(&self) -> bool {
        false
    }

    /// Whether [`BoxSpec::image`] may name an image of the backend's engine.
    fn runs_images(&self) -> bool {
        false
    }

    /// Freeze every process of the box (`paused`), or let them run on. A paused box keeps its
    /// processes and memory, does no work and answers nothing until it is resumed;
    /// [`Backend::destroy`] works on it as on any box.
    async fn set_paused(&self, id: &str, paused: bool) -> Result<(), BackendError> {
        let _ = (id, paused);
        Err(BackendError::Unavailable(format!(
            "the {} backend cannot pause a sandbox",
            self.name()
        )))
    }

    /// The server stops, and every box it removes at its stop is gone: let go of what the
    /// backend keeps for all its boxes together (the native backend's cgroup parents, which
    /// `cleanup_stale` makes again at the next start), as far as no box still needs it. Boxes
    /// that stay (a stop with `AUTO_CLEANUP=false`, another process's) keep what they need.
    async fn shutdown(&self) {}

    /// Remove everything an earlier run of this backend (with the same configuration) left
    /// behind: processes, mounts, cgroups, directories, except the boxes in `keep`, which the
    /// store still records as alive: those are adopted (the backend serves them as if it had
    /// made them). Called once at start-up, before any box is created.
    async fn cleanup_stale(
        &self,
        keep: &std::collections::BTreeSet<String>,
    ) -> Result<CleanupReport, BackendError>;
}
