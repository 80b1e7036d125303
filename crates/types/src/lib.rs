//! Wire types of the sandboxd `/v1` HTTP API: requests, responses, ids and error codes.
//!
//! Serde only, no I/O. The server, the Rust client and the CLI share these, so that a field
//! renamed here is renamed everywhere at once. `utoipa` derives feed the OpenAPI document.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A sandbox's id: `sb-` followed by 16 lowercase hex digits.
pub type SandboxId = String;

/// Whether `s` has the shape of a [`SandboxId`].
pub fn is_valid_sandbox_id(s: &str) -> bool {
    s.len() == 19
        && s.starts_with("sb-")
        && s[3..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Whether `s` is acceptable as a session id (it names a workspace directory on the host).
pub fn is_valid_session_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Resource limits of a sandbox.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// Memory limit in MiB (default 512).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    /// CPU limit in cores, e.g. 0.5 (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    /// Maximum number of processes and threads (default 256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
    /// Disk limit in MiB (default the server's `SANDBOXD_DISK_MB`, 256): the most the
    /// sandbox may write to each of its writable root layer and `/tmp`, where its backend
    /// enforces it (see the README's settings); a full disk answers `ENOSPC` inside.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_mb: Option<u64>,
}

/// Body of `POST /v1/sandboxes`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSandboxRequest {
    /// Sandbox type (template), default the server's `DEFAULT_SANDBOX_TYPE`.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub sandbox_type: Option<String>,
    /// Environment variables for everything run in the sandbox.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Resource limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// Seconds until the sandbox is killed (default 300; 0 = never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    /// Free-form labels, used to filter listings.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// Session whose workspace (`DEFAULT_MOUNT_DIR/<session>`) is mounted at `/workspace`;
    /// default: the sandbox's own id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// Take a warm sandbox from the type's pool (`POOL_SIZE`) when one fits: the request gives
    /// no `session_id`, `env` or `resources` (a warm sandbox was started without them, with its
    /// own workspace). Otherwise, or when the pool is empty, the sandbox is created as usual.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub from_pool: bool,
    /// Run this image of the Docker engine (`python:3.12-slim`, `repo/name@sha256:...`)
    /// instead of the type's template; only on the `docker` backend. The image needs no
    /// change: the guest agent is injected. It must be on the engine already, or be pullable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// TCP ports inside the sandbox to publish on the host (at most [`MAX_PORTS`], each
    /// 1-65535, no duplicates): each gets a free host port of the server's `PORT_RANGE`, and a
    /// connection to it reaches the port on the sandbox's loopback. The sandbox's `ports`
    /// say which host port each got.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
}

/// Most ports one sandbox may publish ([`CreateSandboxRequest::ports`]).
pub const MAX_PORTS: usize = 16;

/// Check a create request's `ports`: each 1-65535, none twice, at most [`MAX_PORTS`]. The
/// error says what is wrong.
pub fn check_ports(ports: &[u16]) -> Result<(), String> {
    if ports.len() > MAX_PORTS {
        return Err(format!(
            "ports: at most {MAX_PORTS} ports can be published, {} were asked for",
            ports.len()
        ));
    }
    for (i, p) in ports.iter().enumerate() {
        if *p == 0 {
            return Err("ports: a port must be between 1 and 65535, not 0".into());
        }
        if ports[..i].contains(p) {
            return Err(format!("ports: port {p} is given twice"));
        }
    }
    Ok(())
}

/// A port of a sandbox published on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PublishedPort {
    /// The TCP port inside the sandbox (on its loopback).
    pub port: u16,
    /// The host port that forwards to it.
    pub host_port: u16,
    /// Where to connect, `host:port` (e.g. `127.0.0.1:49153`).
    pub address: String,
}

/// Lifecycle state of a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SandboxState {
    /// Being created.
    Creating,
    /// Running and reachable.
    Running,
    /// Started and waiting in a warm pool, not handed out yet: it has no expiry until it is
    /// handed out (then it becomes `running`).
    Warm,
    /// Its processes are frozen (`POST /v1/sandboxes/{id}/pause`): memory and state are kept,
    /// nothing runs and requests are refused until it is resumed. Its timeout keeps running.
    Paused,
    /// Being torn down.
    Stopping,
    /// Gone; kept briefly so clients can see how it ended.
    Stopped,
    /// Creation or the sandbox itself failed.
    Error,
    /// Its box was removed for inactivity; the record and the workspace are kept, and
    /// restoring it starts a new sandbox on the same workspace.
    Recycled,
    /// Restored into another sandbox (`replaced_by`); the record is kept so that its id can be
    /// followed there.
    Replaced,
}

/// A sandbox as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Sandbox {
    /// Its id.
    #[schema(value_type = String)]
    pub id: SandboxId,
    /// Its type (template name).
    #[serde(rename = "type")]
    pub sandbox_type: String,
    /// Lifecycle state.
    pub state: SandboxState,
    /// Session whose workspace it mounts.
    pub session_id: String,
    /// Backend that runs it (`native`, ...).
    pub backend: String,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_at_ms: i64,
    /// When it will be killed, milliseconds since the Unix epoch; absent when never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<i64>,
    /// Effective resource limits.
    pub resources: Resources,
    /// Labels given at creation.
    pub metadata: BTreeMap<String, String>,
    /// Why it is in `error`, `stopped` or `recycled` state, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The sandbox that replaced it (state `replaced`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub replaced_by: Option<SandboxId>,
    /// The engine image it runs, when it was created with one (instead of its template).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Its published ports ([`CreateSandboxRequest::ports`]), in the order asked for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PublishedPort>,
}

/// Reply of `GET /v1/sandboxes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SandboxList {
    /// The sandboxes, oldest first.
    pub sandboxes: Vec<Sandbox>,
}

/// Body of `POST /v1/sandboxes/{id}/timeout`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetTimeoutRequest {
    /// New lifetime in seconds from now (0 = never expire).
    pub timeout_secs: u64,
}

/// Body of `POST /v1/sandboxes/{id}/exec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// Program and arguments; exactly one of `cmd` and `shell` must be given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    /// Shell command line, run by `/bin/sh -c`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<String>,
    /// Extra environment variables.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Working directory (default `/workspace`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Text written to the command's stdin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    /// Kill the command after this many milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Stream output as newline-delimited JSON [`ExecEvent`]s instead of one [`ExecResult`].
    #[serde(default)]
    pub stream: bool,
}

/// Reply of a buffered exec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ExecResult {
    /// Exit code; absent when a signal ended the command.
    pub exit_code: Option<i32>,
    /// Signal that ended the command, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// Whether the command was killed because its timeout passed.
    pub timed_out: bool,
    /// Everything written to stdout (invalid UTF-8 replaced).
    pub stdout: String,
    /// Everything written to stderr (invalid UTF-8 replaced).
    pub stderr: String,
    /// Wall time in milliseconds.
    pub duration_ms: u64,
}

/// One line of a streamed exec (`application/x-ndjson`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ExecEvent {
    /// The command started.
    Started {
        /// Its pid inside the sandbox.
        pid: i32,
    },
    /// Output on stdout.
    Stdout {
        /// The text (invalid UTF-8 replaced).
        data: String,
    },
    /// Output on stderr.
    Stderr {
        /// The text (invalid UTF-8 replaced).
        data: String,
    },
    /// The command ended; always the last event unless `error` is.
    Exit {
        /// Exit code; absent when a signal ended it.
        exit_code: Option<i32>,
        /// Signal that ended it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signal: Option<i32>,
        /// Whether its timeout passed.
        timed_out: bool,
        /// Wall time in milliseconds.
        duration_ms: u64,
    },
    /// The exchange failed midway.
    Error {
        /// What went wrong.
        error: ApiError,
    },
}

/// Body of `POST /v1/sandboxes/{id}/python`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PythonRequest {
    /// Code to run in the sandbox's persistent interpreter.
    pub code: String,
    /// Interrupt the code after this many milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// Reply of `POST /v1/sandboxes/{id}/python`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PythonResult {
    /// Printed to stdout.
    pub stdout: String,
    /// Printed to stderr.
    pub stderr: String,
    /// `repr()` of the final expression's value, when not `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    /// The exception that ended the code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<PythonError>,
}

/// An exception raised by Python code.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PythonError {
    /// Exception class name.
    pub ename: String,
    /// `str()` of the exception.
    pub evalue: String,
    /// Formatted traceback lines.
    pub traceback: Vec<String>,
}

/// Kind of file system entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link.
    Symlink,
    /// Fifo, socket or device.
    Other,
}

/// One file system entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FileEntry {
    /// Absolute path inside the sandbox.
    pub path: String,
    /// Final component.
    pub name: String,
    /// Kind.
    #[serde(rename = "type")]
    pub kind: EntryKind,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// Modification time, milliseconds since the Unix epoch.
    pub mtime_ms: i64,
    /// Target of a symlink.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// Reply of `GET /v1/sandboxes/{id}/files/list`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FileList {
    /// Entries, parents before children.
    pub entries: Vec<FileEntry>,
}

/// Body of `POST /v1/sandboxes/{id}/files/mkdir`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MkdirRequest {
    /// Directory to create.
    pub path: String,
    /// Create parents; succeed if it exists.
    #[serde(default)]
    pub parents: bool,
}

/// Reply of mkdir.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MkdirResult {
    /// False when it already existed.
    pub created: bool,
}

/// Body of `POST /v1/sandboxes/{id}/files/move`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MoveRequest {
    /// Existing path.
    pub from: String,
    /// New path.
    pub to: String,
}

/// Reply of `GET /health`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `healthy`.
    pub status: String,
    /// Server version.
    pub version: String,
}

/// Stable error codes of the API. Clients match on these, never on messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request body or a parameter is invalid (400).
    InvalidRequest,
    /// Missing or wrong bearer token (401).
    Unauthorized,
    /// No such sandbox, or no such file (404).
    NotFound,
    /// Unknown sandbox type (404).
    UnknownType,
    /// A file path leaves the sandbox's workspace (403).
    PathOutsideSandbox,
    /// The target exists already (409).
    AlreadyExists,
    /// The sandbox is not running (409).
    NotRunning,
    /// `MAX_SANDBOX_INSTANCES` sandboxes are running already (429).
    LimitReached,
    /// The body is too large (413).
    PayloadTooLarge,
    /// The backend failed to create or reach the sandbox (502).
    BackendFailed,
    /// The guest agent inside the sandbox failed (502).
    AgentFailed,
    /// The operation timed out (504).
    Timeout,
    /// The host's disk (the file system of the workspaces or of the server's state) is full
    /// (507); nothing was half-written.
    InsufficientStorage,
    /// The server is shutting down or cannot serve now (503).
    Unavailable,
    /// A bug or unexpected condition in the server (500); details are in the server's log.
    Internal,
}

/// The body of every error reply: `{"error": {"code": ..., "message": ...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ApiError,
}

/// An API error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ApiError {
    /// Stable code.
    pub code: ErrorCode,
    /// What went wrong, for people.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_validated() {
        assert!(is_valid_sandbox_id("sb-0123456789abcdef"));
        assert!(!is_valid_sandbox_id("sb-0123456789ABCDEF"));
        assert!(!is_valid_sandbox_id("../etc"));
        assert!(is_valid_session_id("user-1_a.b"));
        assert!(!is_valid_session_id(".."));
        assert!(!is_valid_session_id("a/b"));
        assert!(!is_valid_session_id(""));
    }

    #[test]
    fn unknown_fields_are_refused() {
        let r: Result<CreateSandboxRequest, _> = serde_json::from_str(r#"{"tpye":"base"}"#);
        assert!(r.is_err());
    }

    #[test]
    fn ports_are_checked() {
        assert!(check_ports(&[]).is_ok());
        assert!(check_ports(&[8000, 8001, 65535]).is_ok());
        assert!(check_ports(&[0]).unwrap_err().contains("not 0"));
        assert!(check_ports(&[80, 81, 80])
            .unwrap_err()
            .contains("port 80 is given twice"));
        let many: Vec<u16> = (1..=17).collect();
        assert!(check_ports(&many).unwrap_err().contains("at most 16"));
        assert!(check_ports(&many[..16]).is_ok());
        let r: Result<CreateSandboxRequest, _> = serde_json::from_str(r#"{"ports":[65536]}"#);
        assert!(r.is_err());
    }

    #[test]
    fn exec_event_wire_form() {
        let e = ExecEvent::Stdout { data: "hi".into() };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"type":"stdout","data":"hi"}"#
        );
    }
}
