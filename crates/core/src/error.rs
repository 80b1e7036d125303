//! Errors of the core, each mapped by the server to one stable API error code.

use sandboxd_protocol::{AgentErrorKind, FrameError};

use crate::backend::BackendError;
use crate::store::StoreError;
use crate::workspace::WorkspaceError;

/// Why a core operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// A request argument is invalid.
    #[error("{0}")]
    InvalidRequest(String),
    /// No sandbox with this id.
    #[error("sandbox {0} not found")]
    NotFound(String),
    /// The sandbox type names no installed template.
    #[error("unknown sandbox type {0:?}{1}")]
    UnknownType(String, String),
    /// The sandbox exists but is not running.
    #[error("sandbox {0} is not running")]
    NotRunning(String),
    /// The instance limit is reached.
    #[error("the limit of {0} running sandboxes is reached")]
    LimitReached(usize),
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The state store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A workspace's own file system (the workspace quota) could not be set up.
    #[error(transparent)]
    Workspace(#[from] WorkspaceError),
    /// The guest agent refused the request.
    #[error("{}", .0.message)]
    Agent(sandboxd_protocol::AgentError),
    /// The guest agent could not be reached or broke the protocol.
    #[error("guest agent unreachable: {0}")]
    AgentUnreachable(String),
    /// The operation did not finish in time.
    #[error("{0}")]
    Timeout(String),
    /// The manager is shutting down.
    #[error("the server is shutting down")]
    ShuttingDown,
}

impl CoreError {
    /// The agent's error kind, when the agent refused the request.
    pub fn agent_kind(&self) -> Option<AgentErrorKind> {
        match self {
            CoreError::Agent(e) => Some(e.kind),
            _ => None,
        }
    }
}

impl From<FrameError> for CoreError {
    fn from(e: FrameError) -> Self {
        CoreError::AgentUnreachable(e.to_string())
    }
}
