//! The agent proper: accepting connections and answering requests.

use std::io;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::time::Duration;

use sandboxd_protocol::{AgentError, AgentErrorKind, Request, Response, PROTOCOL_VERSION};

use crate::conn::{Conn, Incoming};
use crate::exec;
use crate::files::{Files, ReadFileError};
use crate::mcp::Mcp;
use crate::python::Python;
use crate::tunnel;
use crate::Config;

/// Stack size of connection threads. Their deepest use is a recursive directory walk with
/// small frames; the default 2 MiB would only cost address space, but a bound keeps many
/// idle connections cheap.
const CONN_STACK: usize = 256 * 1024;

/// Whether the connection stays open after a request.
enum Flow {
    Continue,
    Close,
}

/// The guest agent: configuration plus the sandbox-wide state (the Python interpreter).
pub struct Agent {
    config: Config,
    files: Files,
    python: Python,
    mcp: Mcp,
}

impl Agent {
    /// An agent for `config`.
    pub fn new(config: Config) -> Arc<Agent> {
        let files = Files::new(&config.files_root);
        Arc::new(Agent {
            config,
            files,
            python: Python::new(),
            mcp: Mcp::new(),
        })
    }

    /// The agent's configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Accept connections forever, one thread each.
    pub fn serve(self: &Arc<Self>, listener: UnixListener) -> io::Result<()> {
        loop {
            let stream = match listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE/ENOMEM/ECONNABORTED are transient: back off rather than die, as
                    // the agent's death ends the sandbox.
                    eprintln!("sandboxd-agent: accept: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            };
            let agent = Arc::clone(self);
            let spawned = std::thread::Builder::new()
                .name("conn".into())
                .stack_size(CONN_STACK)
                .spawn(move || agent.handle_connection(stream));
            if let Err(e) = spawned {
                // The sandbox's pid limit counts our threads too; a fork bomb can exhaust it.
                // The stream was moved into the failed closure and is closed with it.
                eprintln!("sandboxd-agent: cannot start a connection thread: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Serve one connection until the host closes it.
    pub fn handle_connection(&self, stream: UnixStream) {
        let mut conn = Conn::new(stream);
        loop {
            let flow = match conn.read_request() {
                Incoming::Closed => return,
                Incoming::Malformed(msg) => {
                    let _ = conn.send_error(AgentError {
                        kind: AgentErrorKind::InvalidRequest,
                        message: format!("malformed request frame: {msg}"),
                    });
                    return;
                }
                Incoming::Unknown(op) => conn
                    .send_error(AgentError {
                        kind: AgentErrorKind::Unsupported,
                        message: format!("this agent does not support the {op:?} request"),
                    })
                    .map(|()| Flow::Continue),
                Incoming::Request(req, payload) => self.dispatch(&mut conn, req, payload),
            };
            match flow {
                Ok(Flow::Continue) => {}
                Ok(Flow::Close) | Err(_) => return,
            }
        }
    }

    fn dispatch(&self, conn: &mut Conn, req: Request, payload: Vec<u8>) -> io::Result<Flow> {
        let reply = |r: Result<Response, AgentError>| match r {
            Ok(r) => r,
            Err(e) => Response::Error(e),
        };
        let resp = match req {
            Request::Hello { .. } => Response::Hello {
                version: PROTOCOL_VERSION,
                agent: env!("CARGO_PKG_VERSION").to_string(),
            },
            Request::Exec(spec) => {
                exec::run(&self.config, conn, spec, payload)?;
                return Ok(Flow::Continue);
            }
            Request::Signal { pid, signal } => exec::signal(pid, signal),
            Request::ReadFile { path } => {
                let sent = self.files.read_file(&path, |data, last| {
                    conn.send(&Response::Data { last }, data)
                });
                return match sent {
                    Ok(()) => Ok(Flow::Continue),
                    Err(ReadFileError::Agent(e)) => conn.send_error(e).map(|()| Flow::Continue),
                    Err(ReadFileError::Sink(e)) => Err(e),
                };
            }
            Request::WriteFile {
                path,
                mode,
                create_parents,
                more,
            } => return self.write_file(conn, &path, mode, create_parents, more, payload),
            Request::Chunk { .. } => {
                conn.send_error(AgentError {
                    kind: AgentErrorKind::InvalidRequest,
                    message: "chunk frame without a write_file in progress".into(),
                })?;
                return Ok(Flow::Close);
            }
            Request::ListDir { path, depth } => reply(
                self.files
                    .list_dir(&path, depth)
                    .map(|entries| Response::Entries { entries }),
            ),
            Request::Stat { path } => reply(self.files.stat(&path).map(Response::Entry)),
            Request::Mkdir { path, parents } => reply(
                self.files
                    .mkdir(&path, parents)
                    .map(|created| Response::Created { created }),
            ),
            Request::Move { from, to } => reply(self.files.rename(&from, &to).map(Response::Entry)),
            Request::Remove { path, recursive } => {
                reply(self.files.remove(&path, recursive).map(|()| Response::Ok))
            }
            Request::Python { code, timeout_ms } => reply(
                self.python
                    .run(
                        &self.config,
                        &code,
                        timeout_ms.map(Duration::from_millis),
                        Some(conn.fd()),
                    )
                    .map(Response::Python),
            ),
            Request::PythonReset => {
                self.python.reset();
                Response::Ok
            }
            Request::McpStart(spec) => {
                return match self.mcp.start(&self.config, spec, Some(conn.fd())) {
                    Ok(info) => {
                        let payload = info.map(|v| json_bytes(&v)).unwrap_or_default();
                        let started = Response::McpStarted {
                            started: !payload.is_empty(),
                        };
                        conn.send(&started, &payload).map(|()| Flow::Continue)
                    }
                    Err(e) => conn.send_error(e).map(|()| Flow::Continue),
                };
            }
            Request::Mcp {
                server,
                method,
                timeout_ms,
            } => {
                let params = if payload.is_empty() {
                    Ok(None)
                } else {
                    serde_json::from_slice(&payload)
                        .map(Some)
                        .map_err(|e| AgentError {
                            kind: AgentErrorKind::InvalidRequest,
                            message: format!("MCP params are not JSON: {e}"),
                        })
                };
                let answer = params.and_then(|params| {
                    self.mcp.call(
                        &server,
                        &method,
                        params,
                        timeout_ms.map(Duration::from_millis),
                        Some(conn.fd()),
                    )
                });
                return match answer {
                    Ok(result) => conn
                        .send(&Response::McpResult, &json_bytes(&result))
                        .map(|()| Flow::Continue),
                    Err(e) => conn.send_error(e).map(|()| Flow::Continue),
                };
            }
            Request::McpList => Response::McpServers {
                servers: self.mcp.list(),
            },
            Request::McpStop { server } => reply(self.mcp.stop(&server).map(|()| Response::Ok)),
            Request::Connect { port } => {
                // A tunnel that ran has ended with its TCP connection: close this one too.
                return tunnel::serve(conn, port).map(|tunnelled| {
                    if tunnelled {
                        Flow::Close
                    } else {
                        Flow::Continue
                    }
                });
            }
        };
        conn.send(&resp, &[])?;
        Ok(Flow::Continue)
    }

    /// Receive a whole `WriteFile` body (first payload plus `Chunk` frames) into a
    /// [`crate::files::FileWriter`]. After a failure the remaining chunks are still read, so
    /// that the stream stays in step and the error is the answer to the whole request.
    fn write_file(
        &self,
        conn: &mut Conn,
        path: &str,
        mode: Option<u32>,
        create_parents: bool,
        mut more: bool,
        first: Vec<u8>,
    ) -> io::Result<Flow> {
        let mut writer = self.files.write_file(path, mode, create_parents);
        let mut data = first;
        loop {
            if let Ok(w) = writer.as_mut() {
                if let Err(e) = w.write(&data) {
                    writer = Err(e);
                }
            }
            if !more {
                break;
            }
            match conn.read_request() {
                Incoming::Request(Request::Chunk { more: m }, payload) => {
                    more = m;
                    data = payload;
                }
                Incoming::Closed => return Ok(Flow::Close),
                Incoming::Request(other, _) => {
                    let op = serde_json::to_value(&other)
                        .ok()
                        .and_then(|v| v.get("op").and_then(|o| o.as_str()).map(str::to_owned))
                        .unwrap_or_default();
                    conn.send_error(AgentError {
                        kind: AgentErrorKind::InvalidRequest,
                        message: format!("write_file: expected a chunk frame, got {op}"),
                    })?;
                    return Ok(Flow::Close);
                }
                Incoming::Malformed(msg) | Incoming::Unknown(msg) => {
                    conn.send_error(AgentError {
                        kind: AgentErrorKind::InvalidRequest,
                        message: format!("write_file: expected a chunk frame: {msg}"),
                    })?;
                    return Ok(Flow::Close);
                }
            }
        }
        let resp = match writer.and_then(|w| w.commit()) {
            Ok(entry) => Response::Entry(entry),
            Err(e) => Response::Error(e),
        };
        conn.send(&resp, &[])?;
        Ok(Flow::Continue)
    }
}

/// A JSON value's bytes, for a frame's payload.
fn json_bytes(v: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("a JSON value serialises")
}
