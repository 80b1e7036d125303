//! Host ↔ guest-agent protocol.
//!
//! The host talks to the agent inside a sandbox over a stream socket that crosses no network (a
//! Unix socket whose listening end the sandbox cannot see). Every exchange uses one connection:
//! the host writes one [`Request`] frame, the agent answers with one or more [`Response`] frames
//! and, for a finished exchange, closes nothing: the host may send the next request on the same
//! connection once it has read a terminal frame (see [`Response::is_terminal`]).
//!
//! # Framing
//!
//! A frame is `[u32 BE header length][u32 BE payload length][header JSON][payload bytes]`. The
//! header is a [`Request`] or [`Response`] in JSON; the payload carries raw bytes (file contents,
//! command output, stdin) so that binary data is never re-encoded. Both lengths are bounded by
//! [`MAX_HEADER_LEN`] and [`MAX_PAYLOAD_LEN`].
//!
//! # Versioning
//!
//! The first request on a sandbox is [`Request::Hello`]; the agent answers with
//! [`Response::Hello`] carrying its own [`PROTOCOL_VERSION`]. Hosts refuse agents whose major
//! version differs (see [`compatible`]). New optional fields may be added within a major
//! version; both sides ignore fields they do not know. A request added in a minor version is
//! answered by an older agent with an [`AgentErrorKind::Unsupported`] error (the connection
//! stays usable), which a host reports as the agent being too old for it.
//!
//! # Tunnels
//!
//! [`Request::Connect`] (minor 3) turns a connection into a byte stream to a TCP port inside
//! the sandbox: after the agent's [`Response::Connected`] frame, the connection carries no more
//! frames, only the raw bytes of that TCP connection, both ways. Either side's end of stream
//! (a half-close, `shutdown(SHUT_WR)`) is passed on to the other as a half-close, and the
//! connection is closed once both directions have ended. If the agent cannot connect, it
//! answers an [`Response::Error`] instead and the connection stays a framed one.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

/// Protocol version spoken by this build: `(major, minor)`. Minor 1 added
/// [`ExecSpec::quiet`]; minor 2 the MCP requests ([`Request::McpStart`] and the others); minor 3
/// [`Request::Connect`] (tunnels to TCP ports inside the sandbox); minor 4 the error kind
/// [`AgentErrorKind::NoSpace`] (a host older than 1.4 reads it as a broken answer).
pub const PROTOCOL_VERSION: (u32, u32) = (1, 4);

/// The first protocol version whose agents serve [`Request::Connect`].
pub const CONNECT_SINCE: (u32, u32) = (1, 3);

/// Largest accepted JSON header, in bytes.
pub const MAX_HEADER_LEN: u32 = 1 << 20;

/// Largest accepted payload of one frame, in bytes. Larger files travel as several frames.
pub const MAX_PAYLOAD_LEN: u32 = 1 << 24;

/// Whether an agent speaking `theirs` can serve a host speaking [`PROTOCOL_VERSION`].
pub fn compatible(theirs: (u32, u32)) -> bool {
    theirs.0 == PROTOCOL_VERSION.0
}

/// A request from the host to the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Version handshake; also the host's readiness probe.
    Hello {
        /// The host's protocol version.
        version: (u32, u32),
    },
    /// Run a command. The frame payload, if any, is written to the command's stdin, which is
    /// then closed. The agent answers [`Response::Started`], then any number of
    /// [`Response::Stdout`]/[`Response::Stderr`] frames as output arrives, then
    /// [`Response::Exited`]. If the host closes the connection first, the command's whole
    /// process group is killed.
    Exec(ExecSpec),
    /// Send a signal to the process group of a command started by [`Request::Exec`].
    Signal {
        /// Pid reported in [`Response::Started`].
        pid: i32,
        /// Signal number (e.g. 9 for SIGKILL).
        signal: i32,
    },
    /// Read a whole file. Answered by [`Response::Data`] frames (possibly several, the last one
    /// with `last: true`).
    ReadFile {
        /// Path, see [`Request::ReadFile`] path rules in the crate docs of the agent.
        path: String,
    },
    /// Write a whole file from the payload of this frame and any following [`Request::Chunk`]
    /// frames (when `more` is true). Answered by [`Response::Entry`].
    WriteFile {
        /// Path of the file.
        path: String,
        /// Permission bits for a newly created file (default 0o644).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<u32>,
        /// Create missing parent directories.
        #[serde(default)]
        create_parents: bool,
        /// Whether [`Request::Chunk`] frames follow.
        #[serde(default)]
        more: bool,
    },
    /// A further piece of a [`Request::WriteFile`] body, in the payload.
    Chunk {
        /// Whether more chunks follow.
        more: bool,
    },
    /// List a directory. Answered by [`Response::Entries`].
    ListDir {
        /// Directory path.
        path: String,
        /// How many levels to descend (1 = the directory's own entries).
        #[serde(default = "one")]
        depth: u32,
    },
    /// Describe one path (without following a final symlink). Answered by [`Response::Entry`].
    Stat {
        /// Path.
        path: String,
    },
    /// Create a directory. Answered by [`Response::Created`].
    Mkdir {
        /// Path.
        path: String,
        /// Create missing parents, and do not fail if it exists.
        #[serde(default)]
        parents: bool,
    },
    /// Rename a file or directory. Answered by [`Response::Entry`] for the destination.
    Move {
        /// Existing path.
        from: String,
        /// New path.
        to: String,
    },
    /// Remove a file, symlink or directory. Answered by [`Response::Ok`].
    Remove {
        /// Path.
        path: String,
        /// Remove a non-empty directory and everything below it.
        #[serde(default)]
        recursive: bool,
    },
    /// Run code in the sandbox's persistent Python interpreter. Answered by
    /// [`Response::Python`].
    Python {
        /// Source code; the value of a final expression statement is returned.
        code: String,
        /// Give up (interrupting the code) after this many milliseconds.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u64>,
    },
    /// Forget the interpreter's state (restart it). Answered by [`Response::Ok`].
    PythonReset,
    /// Start an MCP server (Model Context Protocol, stdio transport) inside the sandbox and
    /// initialize a session with it. Answered by [`Response::McpStarted`], whose payload is the
    /// server's `initialize` result (JSON), empty when the server was running already and
    /// `replace` is false.
    McpStart(McpServerSpec),
    /// A JSON-RPC request to a started MCP server (e.g. `tools/list`, `tools/call`); the frame
    /// payload is the request's `params` as JSON (empty: none). Answered by
    /// [`Response::McpResult`], whose payload is the JSON `result`; a JSON-RPC error answer
    /// is an [`AgentErrorKind::ToolFailed`] error.
    Mcp {
        /// The server's name, as given to [`Request::McpStart`].
        server: String,
        /// The JSON-RPC method.
        method: String,
        /// Give up (sending `notifications/cancelled`) after this many milliseconds.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u64>,
    },
    /// The names of the running MCP servers, in the order they were started. Answered by
    /// [`Response::McpServers`].
    McpList,
    /// Stop an MCP server. Answered by [`Response::Ok`].
    McpStop {
        /// The server's name.
        server: String,
    },
    /// Connect to a TCP port on the sandbox's loopback (`127.0.0.1`, else `::1`) and turn this
    /// connection into that TCP connection's byte stream (see the crate docs, *Tunnels*).
    /// Answered by [`Response::Connected`], after which only raw bytes follow, or by an error
    /// ([`AgentErrorKind::NotFound`] when nothing listens on the port), after which the
    /// connection stays framed.
    Connect {
        /// The port inside the sandbox, 1 to 65535.
        port: u16,
    },
}

/// Whether `name` can name an MCP server ([`McpServerSpec::server`]): 1 to 64 letters,
/// digits, `-`, `_` and `.`.
pub fn valid_mcp_server_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// How to start an MCP server ([`Request::McpStart`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct McpServerSpec {
    /// The server's name: letters, digits, `-`, `_` and `.`.
    pub server: String,
    /// The program (looked up in `PATH` unless it contains a `/`).
    pub command: String,
    /// Its arguments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Extra environment variables, on top of the sandbox's own.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Working directory (default `/workspace`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Stop a running server of the same name first; when false, a running one is kept.
    #[serde(default)]
    pub replace: bool,
    /// How long the server may take to answer `initialize`, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

fn one() -> u32 {
    1
}

/// What to run and how.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecSpec {
    /// Program and arguments. Exactly one of `argv` and `shell` must be set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argv: Option<Vec<String>>,
    /// A shell command line, run with `/bin/sh -c` (bash when present).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<String>,
    /// Extra environment variables, on top of the sandbox's own.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Working directory (default `/workspace`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Kill the command's process group after this many milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Do not announce the start with [`Response::Started`]: a host that collects the output
    /// and never signals the command needs no pid, and each frame it is sent costs it a
    /// wake-up while the command runs.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub quiet: bool,
}

/// A response from the agent to the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Response {
    /// Answer to [`Request::Hello`].
    Hello {
        /// The agent's protocol version.
        version: (u32, u32),
        /// The agent build's version string.
        agent: String,
    },
    /// A command was started.
    Started {
        /// Its pid inside the sandbox (also its process group id).
        pid: i32,
    },
    /// Command output on stdout; bytes in the payload.
    Stdout,
    /// Command output on stderr; bytes in the payload.
    Stderr,
    /// The command ended.
    Exited {
        /// Exit code, when it exited normally.
        code: Option<i32>,
        /// Signal number, when a signal ended it.
        signal: Option<i32>,
        /// Whether the agent killed it because its timeout passed.
        timed_out: bool,
    },
    /// File contents in the payload.
    Data {
        /// Whether this is the last piece.
        last: bool,
    },
    /// One path's description.
    Entry(Entry),
    /// A directory listing.
    Entries {
        /// The entries, parents before children.
        entries: Vec<Entry>,
    },
    /// Answer to [`Request::Mkdir`].
    Created {
        /// False when the directory already existed.
        created: bool,
    },
    /// Answer to [`Request::Python`].
    Python(PythonOutcome),
    /// Answer to [`Request::McpStart`]; the payload is the `initialize` result.
    McpStarted {
        /// False when a server of that name was running and was kept.
        started: bool,
    },
    /// Answer to [`Request::Mcp`]; the payload is the JSON-RPC `result`.
    McpResult,
    /// Answer to [`Request::McpList`].
    McpServers {
        /// Names of the running servers, in start order.
        servers: Vec<String>,
    },
    /// Answer to [`Request::Connect`]: from the next byte on, the connection is the tunnel.
    Connected,
    /// Success without data.
    Ok,
    /// The request failed.
    Error(AgentError),
}

impl Response {
    /// Whether this frame ends the exchange for its request.
    pub fn is_terminal(&self) -> bool {
        match self {
            Response::Started { .. } | Response::Stdout | Response::Stderr => false,
            Response::Data { last } => *last,
            _ => true,
        }
    }
}

/// Kind of a file system entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link (never followed by listings).
    Symlink,
    /// Anything else (fifo, socket, device).
    Other,
}

/// One file system entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Absolute path inside the sandbox.
    pub path: String,
    /// Final path component.
    pub name: String,
    /// Kind of entry.
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

/// Result of running Python code.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PythonOutcome {
    /// What the code printed to stdout.
    pub stdout: String,
    /// What the code printed to stderr.
    pub stderr: String,
    /// `repr()` of the final expression's value, when there was one and it was not `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    /// The exception that ended the code, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<PythonError>,
}

/// An exception raised by Python code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PythonError {
    /// Exception class name, e.g. `ZeroDivisionError`.
    pub ename: String,
    /// `str()` of the exception.
    pub evalue: String,
    /// Formatted traceback lines.
    pub traceback: Vec<String>,
}

/// Why the agent refused or failed a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentError {
    /// Stable machine-readable kind.
    pub kind: AgentErrorKind,
    /// Human-readable detail.
    pub message: String,
}

/// Stable kinds of [`AgentError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentErrorKind {
    /// The request was malformed or its arguments invalid.
    InvalidRequest,
    /// The path does not exist.
    NotFound,
    /// The path exists already.
    AlreadyExists,
    /// The path leaves the directory the file API is confined to (`..`, a symlink, an absolute
    /// path elsewhere).
    PathOutsideSandbox,
    /// Not a directory / is a directory / directory not empty, and similar.
    WrongKind,
    /// The operating system refused (permissions, ...).
    Io,
    /// The file system holding the path is full, or its quota is used up (`ENOSPC`,
    /// `EDQUOT`). Since minor 4.
    NoSpace,
    /// A command could not be started.
    SpawnFailed,
    /// Python code ran past its timeout and was interrupted.
    Timeout,
    /// The request is not supported by this agent.
    Unsupported,
    /// An MCP server answered with a JSON-RPC error, or could not be talked to (it exited,
    /// wrote something that is not JSON-RPC).
    ToolFailed,
}

/// A decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame<T> {
    /// The JSON header.
    pub header: T,
    /// Raw bytes that travel with it.
    pub payload: Vec<u8>,
}

/// Errors of framing.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The stream failed or ended mid-frame.
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// A length prefix exceeded the protocol's bounds.
    #[error("frame too large: header {header} bytes, payload {payload} bytes")]
    TooLarge {
        /// Header length announced.
        header: u32,
        /// Payload length announced.
        payload: u32,
    },
    /// The header was not valid JSON for the expected message type.
    #[error("bad frame header: {0}")]
    BadHeader(#[from] serde_json::Error),
    /// The stream ended cleanly before a frame started.
    #[error("connection closed")]
    Closed,
}

/// Encode one frame into a byte vector.
pub fn encode<T: Serialize>(header: &T, payload: &[u8]) -> Result<Vec<u8>, FrameError> {
    let json = serde_json::to_vec(header)?;
    let (hl, pl) = (json.len() as u32, payload.len() as u32);
    if hl > MAX_HEADER_LEN || pl > MAX_PAYLOAD_LEN || payload.len() > u32::MAX as usize {
        return Err(FrameError::TooLarge {
            header: hl,
            payload: pl,
        });
    }
    let mut out = Vec::with_capacity(8 + json.len() + payload.len());
    out.extend_from_slice(&hl.to_be_bytes());
    out.extend_from_slice(&pl.to_be_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(payload);
    Ok(out)
}

/// Parse the 8-byte length prefix, checking the bounds.
pub fn decode_lengths(prefix: [u8; 8]) -> Result<(usize, usize), FrameError> {
    let hl = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
    let pl = u32::from_be_bytes([prefix[4], prefix[5], prefix[6], prefix[7]]);
    if hl > MAX_HEADER_LEN || pl > MAX_PAYLOAD_LEN {
        return Err(FrameError::TooLarge {
            header: hl,
            payload: pl,
        });
    }
    Ok((hl as usize, pl as usize))
}

/// Write one frame to a blocking writer.
pub fn write_frame<T: Serialize, W: Write>(
    w: &mut W,
    header: &T,
    payload: &[u8],
) -> Result<(), FrameError> {
    w.write_all(&encode(header, payload)?)?;
    Ok(())
}

/// Read one frame from a blocking reader. Returns [`FrameError::Closed`] on a clean end of
/// stream before the first byte.
pub fn read_frame<T: for<'de> Deserialize<'de>, R: Read>(
    r: &mut R,
) -> Result<Frame<T>, FrameError> {
    let mut prefix = [0u8; 8];
    let mut got = 0;
    while got < 8 {
        match r.read(&mut prefix[got..]) {
            Ok(0) if got == 0 => return Err(FrameError::Closed),
            Ok(0) => return Err(FrameError::Io(io::ErrorKind::UnexpectedEof.into())),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let (hl, pl) = decode_lengths(prefix)?;
    let mut header = vec![0u8; hl];
    r.read_exact(&mut header)?;
    let mut payload = vec![0u8; pl];
    r.read_exact(&mut payload)?;
    Ok(Frame {
        header: serde_json::from_slice(&header)?,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_request_with_payload() {
        let req = Request::WriteFile {
            path: "a/b".into(),
            mode: Some(0o600),
            create_parents: true,
            more: false,
        };
        let bytes = encode(&req, b"\x00\xffdata").unwrap();
        let frame: Frame<Request> = read_frame(&mut &bytes[..]).unwrap();
        assert_eq!(frame.header, req);
        assert_eq!(frame.payload, b"\x00\xffdata");
    }

    #[test]
    fn oversized_lengths_are_refused() {
        let mut prefix = [0u8; 8];
        prefix[..4].copy_from_slice(&(MAX_HEADER_LEN + 1).to_be_bytes());
        assert!(matches!(
            decode_lengths(prefix),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn clean_close_and_truncation_differ() {
        let empty: &[u8] = &[];
        assert!(matches!(
            read_frame::<Request, _>(&mut &empty[..]),
            Err(FrameError::Closed)
        ));
        let bytes = encode(&Request::PythonReset, b"").unwrap();
        assert!(matches!(
            read_frame::<Request, _>(&mut &bytes[..5]),
            Err(FrameError::Io(_))
        ));
    }

    /// The wire form is a contract with agents already deployed inside images: a change here
    /// must be deliberate (and bump [`PROTOCOL_VERSION`] when incompatible).
    #[test]
    fn schema_snapshot() {
        let exec = Request::Exec(ExecSpec {
            argv: Some(vec!["true".into()]),
            timeout_ms: Some(5),
            ..Default::default()
        });
        assert_eq!(
            serde_json::to_string(&exec).unwrap(),
            r#"{"op":"exec","argv":["true"],"timeout_ms":5}"#
        );
        assert_eq!(
            serde_json::to_string(&Request::Hello { version: (1, 0) }).unwrap(),
            r#"{"op":"hello","version":[1,0]}"#
        );
        let exited = Response::Exited {
            code: Some(0),
            signal: None,
            timed_out: false,
        };
        assert_eq!(
            serde_json::to_string(&exited).unwrap(),
            r#"{"op":"exited","code":0,"signal":null,"timed_out":false}"#
        );
        let err = Response::Error(AgentError {
            kind: AgentErrorKind::PathOutsideSandbox,
            message: "x".into(),
        });
        assert_eq!(
            serde_json::to_string(&err).unwrap(),
            r#"{"op":"error","kind":"path_outside_sandbox","message":"x"}"#
        );
        let start = Request::McpStart(McpServerSpec {
            server: "time".into(),
            command: "python3".into(),
            args: vec!["-m".into(), "srv".into()],
            ..Default::default()
        });
        assert_eq!(
            serde_json::to_string(&start).unwrap(),
            r#"{"op":"mcp_start","server":"time","command":"python3","args":["-m","srv"],"replace":false}"#
        );
        let call = Request::Mcp {
            server: "time".into(),
            method: "tools/list".into(),
            timeout_ms: None,
        };
        assert_eq!(
            serde_json::to_string(&call).unwrap(),
            r#"{"op":"mcp","server":"time","method":"tools/list"}"#
        );
        assert!(valid_mcp_server_name("my-server.v2_x"));
        assert!(!valid_mcp_server_name("a/b"));
        assert!(!valid_mcp_server_name(""));
        assert_eq!(
            serde_json::to_string(&Request::Connect { port: 8000 }).unwrap(),
            r#"{"op":"connect","port":8000}"#
        );
        assert_eq!(
            serde_json::to_string(&Response::Connected).unwrap(),
            r#"{"op":"connected"}"#
        );
        assert_eq!(
            serde_json::to_string(&AgentErrorKind::NoSpace).unwrap(),
            r#""no_space""#
        );
        assert!(Response::Connected.is_terminal());
        assert!(compatible((1, 7)));
        assert!(!compatible((2, 0)));
    }
}
