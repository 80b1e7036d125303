//! One host connection: reading request frames and writing response frames.

use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;

use sandboxd_protocol::{
    encode, read_frame, AgentError, AgentErrorKind, FrameError, Request, Response, MAX_HEADER_LEN,
};

/// Ops this agent knows; a frame with another op is answered `Unsupported` and the connection
/// kept (it was read whole, so the stream is still in step).
const KNOWN_OPS: &[&str] = &[
    "hello",
    "exec",
    "signal",
    "read_file",
    "write_file",
    "chunk",
    "list_dir",
    "stat",
    "mkdir",
    "move",
    "remove",
    "python",
    "python_reset",
    "connect",
];

/// What arrived on the connection.
pub enum Incoming {
    /// A well-formed request and its payload.
    Request(Request, Vec<u8>),
    /// The host closed the connection (or it broke mid-frame).
    Closed,
    /// A frame that cannot be understood; answer `InvalidRequest` and close.
    Malformed(String),
    /// A well-formed frame with an op this agent does not know.
    Unknown(String),
}

/// A connection to the host.
pub struct Conn {
    stream: UnixStream,
}

impl Conn {
    /// Wrap an accepted stream.
    pub fn new(stream: UnixStream) -> Conn {
        Conn { stream }
    }

    /// The socket, for `poll` (hang-up detection while a command runs).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }

    /// The socket itself, for a tunnel ([`crate::tunnel`]): once `Connected` is sent, the
    /// connection carries raw bytes instead of frames.
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Read the next request.
    pub fn read_request(&mut self) -> Incoming {
        let frame = match read_frame::<serde_json::Value, _>(&mut self.stream) {
            Ok(f) => f,
            Err(FrameError::Closed) | Err(FrameError::Io(_)) => return Incoming::Closed,
            Err(e) => return Incoming::Malformed(e.to_string()),
        };
        let op = frame
            .header
            .get("op")
            .and_then(|v| v.as_str())
            .map(str::to_owned);
        match serde_json::from_value::<Request>(frame.header) {
            Ok(req) => Incoming::Request(req, frame.payload),
            Err(e) => match op {
                Some(op) if !KNOWN_OPS.contains(&op.as_str()) => Incoming::Unknown(op),
                Some(op) => Incoming::Malformed(format!("invalid {op} request: {e}")),
                None => Incoming::Malformed(format!("request header without op: {e}")),
            },
        }
    }

    /// Send one response frame. A response too large for a frame header (a huge listing) is
    /// replaced by an error, so that the host always gets a terminal frame.
    pub fn send(&mut self, resp: &Response, payload: &[u8]) -> std::io::Result<()> {
        let bytes = match encode(resp, payload) {
            Ok(b) => b,
            Err(e) => encode(
                &Response::Error(AgentError {
                    kind: AgentErrorKind::Io,
                    message: format!("response could not be encoded: {e}"),
                }),
                &[],
            )
            .expect("a short error always encodes"),
        };
        self.stream.write_all(&bytes)
    }

    /// Send an error response.
    pub fn send_error(&mut self, mut err: AgentError) -> std::io::Result<()> {
        // Messages embed user paths and output; keep them well inside a frame header.
        let limit = (MAX_HEADER_LEN as usize) / 4;
        if err.message.len() > limit {
            let mut cut = limit;
            while !err.message.is_char_boundary(cut) {
                cut -= 1;
            }
            err.message.truncate(cut);
            err.message.push_str("...");
        }
        self.send(&Response::Error(err), &[])
    }
}
