//! Errors of the host side of the backend, and their mapping to [`BackendError`].

use std::io;
use std::time::Duration;

use sandboxd_core::backend::BackendError;

use crate::cgroup::CgroupError;

/// Errors of [`NativeBackend`](crate::NativeBackend).
#[derive(Debug, thiserror::Error)]
pub enum NativeError {
    /// A prerequisite is missing on this host (a binary, a kernel feature, cgroups; in
    /// rootless mode user namespaces or a delegated cgroup subtree).
    #[error("{0}")]
    Unavailable(String),
    /// The box spec cannot be honoured (bad id, host name, path or environment).
    #[error("invalid box spec: {0}")]
    InvalidSpec(String),
    /// A box with this id exists already (running, or left over: run `cleanup_stale`).
    #[error("a box with id {0} exists already")]
    AlreadyExists(String),
    /// A host file system or process operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: io::Error,
    },
    /// Creating, killing or removing the box's cgroups failed.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// The init reported an error (its message, as written to `init.log`).
    #[error("box {id}: {message}")]
    InitFailed {
        /// The box.
        id: String,
        /// What the init said, or how it ended.
        message: String,
    },
    /// The init did not finish setting up the box in time (it was killed).
    #[error("box {id}: the init did not start the agent within {waited:?}")]
    InitTimeout {
        /// The box.
        id: String,
        /// How long the host waited.
        waited: Duration,
    },
}

impl NativeError {
    /// An [`NativeError::Io`] with context.
    pub fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> NativeError {
        let context = context.into();
        move |source| NativeError::Io { context, source }
    }
}

impl From<NativeError> for BackendError {
    fn from(e: NativeError) -> Self {
        match e {
            NativeError::Unavailable(m) => BackendError::Unavailable(m),
            NativeError::Io { context, source } => BackendError::Io { context, source },
            NativeError::Cgroup(CgroupError::Io { op, path, source }) => BackendError::Io {
                context: format!("cgroup {op} {}", path.display()),
                source,
            },
            e @ (NativeError::InvalidSpec(_)
            | NativeError::AlreadyExists(_)
            | NativeError::Cgroup(_)
            | NativeError::InitFailed { .. }
            | NativeError::InitTimeout { .. }) => BackendError::StartFailed(e.to_string()),
        }
    }
}
