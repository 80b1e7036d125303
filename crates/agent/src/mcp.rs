//! MCP servers (Model Context Protocol, stdio transport) running inside the sandbox.
//!
//! The host names a server and how to start it ([`McpServerSpec`]); the agent starts it as its
//! child, with the same environment and working-directory rules as a command, and speaks
//! newline-delimited JSON-RPC 2.0 with it over its stdin and stdout (its stderr goes to the
//! agent's own, the sandbox's log). Starting it includes the MCP handshake: `initialize`, then
//! the `notifications/initialized` notification. After that the host sends any request
//! (`tools/list`, `tools/call`, ...) through [`Mcp::call`] and gets the JSON `result` back.
//!
//! Requests to one server are serialised by its own lock (requests to different servers run
//! side by side). Messages the server sends that are not the awaited answer are handled as a
//! client should: its `ping` requests are answered, other requests get "method not found",
//! notifications and lines that are not JSON (some servers print banners) are skipped. A
//! request that runs past its timeout, or whose host hangs up, is given up with a
//! `notifications/cancelled`; its late answer is skipped like any other. A server that exits is
//! forgotten, and the next call to it says so.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::process::ExitStatusExt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use sandboxd_protocol::{
    valid_mcp_server_name, AgentError, AgentErrorKind, ExecSpec, McpServerSpec, MAX_PAYLOAD_LEN,
};
use serde_json::{json, Value};

use crate::exec;
use crate::lines::LineReader;
use crate::process::Stdio;
use crate::reaper::{ExitWatch, Reaper};
use crate::sys;
use crate::Config;

/// The MCP protocol revision the agent asks for; servers answer with the one they speak.
pub const MCP_PROTOCOL_VERSION: &str = "2025-06-18";

/// Most servers running at once in one sandbox.
pub const MAX_SERVERS: usize = 32;

/// How long `initialize` may take when the host sets no timeout (a server run through `npx`
/// or `uvx` may unpack itself first).
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(60);

/// How long any other request may take when the host sets no timeout.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(300);

/// Longest line accepted from a server: an answer must fit one frame's payload.
const MAX_LINE: usize = MAX_PAYLOAD_LEN as usize;

fn error(kind: AgentErrorKind, message: impl Into<String>) -> AgentError {
    AgentError {
        kind,
        message: message.into(),
    }
}

fn failed(message: impl Into<String>) -> AgentError {
    error(AgentErrorKind::ToolFailed, message)
}

/// One running server.
struct Server {
    name: String,
    watch: ExitWatch,
    input: File,
    output: LineReader,
    next_id: u64,
}

impl Drop for Server {
    fn drop(&mut self) {
        // Its whole process group: a server started through a launcher (npx, a shell) has
        // children of its own.
        self.watch.signal_group(libc::SIGKILL);
        self.watch.wait_timeout(Duration::from_secs(2));
    }
}

/// How a request's wait ended without an answer.
enum GaveUp {
    Timeout,
    HostGone,
}

impl Server {
    /// Why the server can no longer be used, if it exited.
    fn exit_reason(&self) -> Option<String> {
        let s = self.watch.status()?;
        Some(match (s.code(), s.signal()) {
            (Some(c), _) => format!("MCP server {} exited with code {c}", self.name),
            (_, Some(sig)) => format!("MCP server {} was killed by signal {sig}", self.name),
            _ => format!("MCP server {} ended", self.name),
        })
    }

    fn send(&mut self, message: &Value) -> Result<(), AgentError> {
        let mut line = serde_json::to_vec(message).expect("a JSON value serialises");
        line.push(b'\n');
        self.input.write_all(&line).map_err(|e| {
            failed(
                self.exit_reason()
                    .unwrap_or_else(|| format!("cannot write to MCP server {}: {e}", self.name)),
            )
        })
    }

    /// Send request `method` and wait for its answer: the `result`, or the JSON-RPC error as
    /// [`AgentErrorKind::ToolFailed`].
    fn request(
        &mut self,
        method: &str,
        params: Option<Value>,
        timeout: Duration,
        host: Option<BorrowedFd<'_>>,
    ) -> Result<Value, AgentError> {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"jsonrpc": "2.0", "id": id, "method": method});
        if let Some(p) = params {
            message["params"] = p;
        }
        self.send(&message)?;
        let deadline = Instant::now() + timeout;
        let why = match self.wait(id, deadline, host)? {
            Ok(answer) => return answer_of(&self.name, method, answer),
            Err(why) => why,
        };
        // Nobody waits for this answer any more; the server may stop working on it.
        let _ = self.send(&json!({
            "jsonrpc": "2.0",
            "method": "notifications/cancelled",
            "params": {"requestId": id, "reason": "the caller gave up"},
        }));
        Err(match why {
            GaveUp::Timeout => error(
                AgentErrorKind::Timeout,
                format!(
                    "MCP server {} did not answer {method} within {} ms",
                    self.name,
                    timeout.as_millis()
                ),
            ),
            GaveUp::HostGone => failed(format!(
                "{method} to MCP server {} abandoned: the host went away",
                self.name
            )),
        })
    }

    /// Read messages until the answer to request `id` (or a reason to stop waiting).
    fn wait(
        &mut self,
        id: u64,
        deadline: Instant,
        host: Option<BorrowedFd<'_>>,
    ) -> Result<Result<Value, GaveUp>, AgentError> {
        let mut open = true;
        loop {
            while let Some(line) = self.output.take_line() {
                let Ok(msg) = serde_json::from_slice::<Value>(&line) else {
                    continue;
                };
                let is_answer = msg.get("method").is_none()
                    && (msg.get("result").is_some() || msg.get("error").is_some());
                if is_answer {
                    if msg.get("id").and_then(Value::as_u64) == Some(id) {
                        return Ok(Ok(msg));
                    }
                    // An answer to an abandoned request.
                    continue;
                }
                if let (Some(method), Some(their_id)) = (msg.get("method"), msg.get("id")) {
                    let reply = if method == "ping" {
                        json!({"jsonrpc": "2.0", "id": their_id, "result": {}})
                    } else {
                        json!({"jsonrpc": "2.0", "id": their_id, "error": {
                            "code": -32601,
                            "message": "method not supported by this client",
                        }})
                    };
                    self.send(&reply)?;
                }
            }
            if self.output.overflowed() {
                return Err(failed(format!(
                    "MCP server {} wrote a line longer than {MAX_LINE} bytes",
                    self.name
                )));
            }
            if !open {
                // Its output ends as it exits: give the exit a moment to be seen, so that the
                // error can say how it ended.
                self.watch.wait_timeout(Duration::from_millis(500));
                return Err(failed(self.exit_reason().unwrap_or_else(|| {
                    format!("MCP server {} closed its output", self.name)
                })));
            }
            if let Some(why) = self.exit_reason() {
                // Pick up an answer written just before the end.
                open = self.output.drain();
                if self.output.has_line() {
                    continue;
                }
                return Err(failed(why));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(Err(GaveUp::Timeout));
            }
            let mut fds = [
                sys::pollfd(self.output.raw_fd(), libc::POLLIN),
                sys::pollfd(self.watch.exit_fd().as_raw_fd(), libc::POLLIN),
                sys::pollfd(host.map_or(-1, |h| h.as_raw_fd()), libc::POLLRDHUP),
            ];
            let _ = sys::poll(&mut fds, Some(deadline - now));
            if fds[2].revents != 0 {
                return Ok(Err(GaveUp::HostGone));
            }
            if fds[0].revents != 0 && !self.output.drain() {
                open = false;
            }
        }
    }
}

/// The `result` of a JSON-RPC answer, or its error.
fn answer_of(server: &str, method: &str, mut answer: Value) -> Result<Value, AgentError> {
    if let Some(e) = answer.get("error") {
        let code = e.get("code").and_then(Value::as_i64).unwrap_or(0);
        let message = e.get("message").and_then(Value::as_str).unwrap_or("");
        return Err(failed(format!(
            "MCP server {server} refused {method}: {message} (JSON-RPC error {code})"
        )));
    }
    Ok(answer["result"].take())
}

/// The sandbox's MCP servers.
#[derive(Default)]
pub struct Mcp {
    /// In start order, with each server's pid (to kill one whose lock a request holds).
    servers: Mutex<Vec<Entry>>,
}

struct Entry {
    name: String,
    pid: libc::pid_t,
    server: Arc<Mutex<Server>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Mcp {
    /// No servers.
    pub fn new() -> Mcp {
        Mcp::default()
    }

    fn find(&self, name: &str) -> Option<Arc<Mutex<Server>>> {
        lock(&self.servers)
            .iter()
            .find(|e| e.name == name)
            .map(|e| Arc::clone(&e.server))
    }

    /// Forget server `name` and kill it: a request of another connection that holds its lock
    /// then ends with the server's death.
    fn remove(&self, name: &str) -> bool {
        let mut servers = lock(&self.servers);
        let Some(i) = servers.iter().position(|e| e.name == name) else {
            return false;
        };
        let e = servers.remove(i);
        // The reaper refuses if that pid was reaped meanwhile, so a recycled pid is never hit.
        Reaper::global().signal_registered(e.pid, libc::SIGKILL);
        true
    }

    /// Start server `spec.server` and initialize it; its `initialize` result, or `None` when
    /// one of that name was running and `spec.replace` is false (it is kept).
    pub fn start(
        &self,
        config: &Config,
        spec: McpServerSpec,
        host: Option<BorrowedFd<'_>>,
    ) -> Result<Option<Value>, AgentError> {
        let name = spec.server.clone();
        if !valid_mcp_server_name(&name) {
            return Err(error(
                AgentErrorKind::InvalidRequest,
                format!("MCP server name {name:?}: 1 to 64 letters, digits, '-', '_' or '.'"),
            ));
        }
        if let Some(running) = self.find(&name) {
            let alive = lock(&running).exit_reason().is_none();
            if alive && !spec.replace {
                return Ok(None);
            }
            self.remove(&name);
        }
        if lock(&self.servers).len() >= MAX_SERVERS {
            return Err(error(
                AgentErrorKind::InvalidRequest,
                format!("at most {MAX_SERVERS} MCP servers run in one sandbox"),
            ));
        }
        let mut argv = vec![spec.command];
        argv.extend(spec.args);
        let mut cmd = exec::build(
            config,
            &ExecSpec {
                argv: Some(argv),
                env: spec.env,
                cwd: spec.cwd,
                ..Default::default()
            },
        )?;
        cmd.stdin(Stdio::Piped)
            .stdout(Stdio::Piped)
            .stderr(Stdio::Inherit);
        let (child, watch) = Reaper::global().spawn(&cmd, false).map_err(|e| {
            error(
                AgentErrorKind::SpawnFailed,
                format!("cannot start MCP server {name}: {e}"),
            )
        })?;
        let output = LineReader::new(child.stdout.expect("piped"), MAX_LINE)
            .map_err(|e| failed(format!("MCP server {name}: {e}")))?;
        let mut server = Server {
            name: name.clone(),
            watch,
            input: File::from(child.stdin.expect("piped")),
            output,
            next_id: 0,
        };
        let timeout = spec
            .timeout_ms
            .map_or(DEFAULT_START_TIMEOUT, Duration::from_millis);
        let info = server.request(
            "initialize",
            Some(json!({
                "protocolVersion": MCP_PROTOCOL_VERSION,
                "capabilities": {},
                "clientInfo": {"name": "sandboxd", "version": env!("CARGO_PKG_VERSION")},
            })),
            timeout,
            host,
        )?;
        server.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))?;
        // Another start of the same name may have won meanwhile: the newest one stays.
        self.remove(&name);
        lock(&self.servers).push(Entry {
            name,
            pid: server.watch.pid(),
            server: Arc::new(Mutex::new(server)),
        });
        Ok(Some(info))
    }

    /// Send request `method` with `params` to server `name`; its `result`.
    pub fn call(
        &self,
        name: &str,
        method: &str,
        params: Option<Value>,
        timeout: Option<Duration>,
        host: Option<BorrowedFd<'_>>,
    ) -> Result<Value, AgentError> {
        let Some(server) = self.find(name) else {
            return Err(error(
                AgentErrorKind::NotFound,
                format!("no MCP server named {name:?} runs in this sandbox"),
            ));
        };
        let mut s = lock(&server);
        if let Some(why) = s.exit_reason() {
            drop(s);
            self.remove(name);
            return Err(failed(why));
        }
        let r = s.request(
            method,
            params,
            timeout.unwrap_or(DEFAULT_CALL_TIMEOUT),
            host,
        );
        if r.is_err() && s.exit_reason().is_some() {
            drop(s);
            self.remove(name);
        }
        r
    }

    /// Names of the servers that are running, in start order.
    pub fn list(&self) -> Vec<String> {
        let mut servers = lock(&self.servers);
        // A server busy with a request is alive; only idle ones are checked.
        servers.retain(|e| match e.server.try_lock() {
            Ok(s) => s.exit_reason().is_none(),
            Err(_) => true,
        });
        servers.iter().map(|e| e.name.clone()).collect()
    }

    /// Stop server `name`.
    pub fn stop(&self, name: &str) -> Result<(), AgentError> {
        match self.remove(name) {
            true => Ok(()),
            false => Err(error(
                AgentErrorKind::NotFound,
                format!("no MCP server named {name:?} runs in this sandbox"),
            )),
        }
    }
}
