//! Test helpers (feature `testing`): a fake [`Backend`] whose boxes are tokio tasks speaking the
//! guest-agent protocol on a Unix socket, with an in-memory file system under `/workspace`.
//! Enough to drive the HTTP API (and the client, and the CLI) end to end in one process, on any
//! machine.
//!
//! The fake agent's commands (`cmd[0]`, or the words of `LINE` in `sh -c LINE` and
//! `bash -c LINE`, also what a `shell` request runs): `echo ARGS` prints its
//! arguments, `cat` echoes stdin, `env NAME` prints a variable, `fail` writes `oops` to stderr
//! and exits 3, `gate` prints `one`, waits for [`FakeBackend::gate`], then prints `two`,
//! `sleep` waits until killed; anything else exits 127. Python code containing `1/0` raises
//! `ZeroDivisionError`; other code prints `ran <code>` and returns `2`.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use sandboxd_core::backend::{
    AgentEndpoint, Backend, BackendError, BoxHandle, BoxSpec, CleanupReport,
};
use sandboxd_protocol::{
    decode_lengths, encode, AgentError, AgentErrorKind, Entry, EntryKind, PythonOutcome,
    Request as AReq, Response as AResp, PROTOCOL_VERSION,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Notify;

/// Files of one fake box: path (relative to /workspace, no leading `./`) → content; `None` = dir.
type Fs = Arc<Mutex<BTreeMap<String, Option<Vec<u8>>>>>;
/// The fake box's MCP servers, by name in start order. Each has one tool, `<name>_echo`.
type McpServers = Arc<Mutex<Vec<String>>>;

/// The fake backend; its box sockets live in a directory the caller provides.
#[derive(Debug)]
pub struct FakeBackend {
    dir: PathBuf,
    boxes: Mutex<HashMap<String, tokio::task::JoinHandle<()>>>,
    /// Released by tests to let the `gate` command finish.
    pub gate: Arc<Notify>,
    conns: Arc<AtomicUsize>,
    /// Where every `create` waits while it is closed, before it makes the box.
    pub create_gate: Gate,
    /// Where `is_alive` waits while it is closed, for the box named at [`Gate::close_for`];
    /// it looks at the box once let through, so its answer is of that moment.
    pub alive_gate: Gate,
}

/// A point where calls of the fake backend wait while a test holds it closed, so that the
/// test can put other work between a call's start and its end.
#[derive(Debug, Default)]
pub struct Gate {
    /// The box id it holds (`None`: every call) and what its calls wait on.
    closed: Mutex<Option<(Option<String>, Arc<tokio::sync::Semaphore>)>>,
    waiting: AtomicUsize,
}

impl Gate {
    /// Hold every call from now on.
    pub fn close(&self) {
        self.hold(None);
    }

    /// Hold the calls for box `id` from now on.
    pub fn close_for(&self, id: &str) {
        self.hold(Some(id.to_string()));
    }

    fn hold(&self, only: Option<String>) {
        *self.closed.lock().unwrap() = Some((only, Arc::new(tokio::sync::Semaphore::new(0))));
    }

    /// Let the held calls and every later one through.
    pub fn open(&self) {
        if let Some((_, s)) = self.closed.lock().unwrap().take() {
            s.close();
        }
    }

    /// How many calls are held now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Wait here while the gate is closed for `id`.
    async fn pass(&self, id: &str) {
        let held = match &*self.closed.lock().unwrap() {
            Some((only, s)) if only.as_deref().is_none_or(|o| o == id) => Some(s.clone()),
            _ => None,
        };
        if let Some(s) = held {
            self.waiting.fetch_add(1, Ordering::SeqCst);
            // A closed semaphore is the gate opened.
            let _ = s.acquire().await;
            self.waiting.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Counts an open agent connection while it lives.
struct ConnGuard(Arc<AtomicUsize>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl FakeBackend {
    /// A backend putting its sockets in `dir`.
    pub fn new(dir: PathBuf) -> Arc<Self> {
        Arc::new(FakeBackend {
            dir,
            boxes: Mutex::new(HashMap::new()),
            gate: Arc::new(Notify::new()),
            conns: Arc::new(AtomicUsize::new(0)),
            create_gate: Gate::default(),
            alive_gate: Gate::default(),
        })
    }

    /// How many agent connections are open, over all boxes.
    pub fn open_connections(&self) -> usize {
        self.conns.load(Ordering::SeqCst)
    }

    /// How many boxes exist.
    pub fn live_boxes(&self) -> usize {
        self.boxes.lock().unwrap().len()
    }

    /// Whether box `id` exists, without passing [`FakeBackend::alive_gate`].
    pub fn is_alive_now(&self, id: &str) -> bool {
        self.boxes.lock().unwrap().contains_key(id)
    }

    /// End box `id` as a crash would: its agent stops answering, the manager is not told.
    pub fn kill_box(&self, id: &str) {
        if let Some(t) = self.boxes.lock().unwrap().remove(id) {
            t.abort();
        }
    }
}

#[async_trait]
impl Backend for FakeBackend {
    fn name(&self) -> &'static str {
        "fake"
    }

    async fn create(&self, spec: BoxSpec) -> Result<BoxHandle, BackendError> {
        self.create_gate.pass(&spec.id).await;
        let path = self.dir.join(format!("{}.sock", spec.id));
        let listener = UnixListener::bind(&path).map_err(|e| BackendError::Io {
            context: "bind".into(),
            source: e,
        })?;
        let fs: Fs = Arc::default();
        let mcp: McpServers = Arc::default();
        let gate = self.gate.clone();
        let env = spec.env.clone();
        let conns = self.conns.clone();
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                conns.fetch_add(1, Ordering::SeqCst);
                let guard = ConnGuard(conns.clone());
                let (fs, mcp, gate, env) = (fs.clone(), mcp.clone(), gate.clone(), env.clone());
                tokio::spawn(async move {
                    serve_conn(conn, fs, mcp, gate, env).await;
                    drop(guard);
                });
            }
        });
        self.boxes.lock().unwrap().insert(spec.id.clone(), task);
        Ok(BoxHandle {
            id: spec.id,
            endpoint: AgentEndpoint::Unix { path },
        })
    }

    async fn destroy(&self, id: &str) -> Result<(), BackendError> {
        if let Some(t) = self.boxes.lock().unwrap().remove(id) {
            t.abort();
        }
        let _ = std::fs::remove_file(self.dir.join(format!("{id}.sock")));
        Ok(())
    }

    async fn is_alive(&self, id: &str) -> bool {
        self.alive_gate.pass(id).await;
        self.boxes.lock().unwrap().contains_key(id)
    }

    /// Nothing to freeze in a fake box: the manager's state is what the routes see.
    async fn set_paused(&self, id: &str, _paused: bool) -> Result<(), BackendError> {
        if self.boxes.lock().unwrap().contains_key(id) {
            Ok(())
        } else {
            Err(BackendError::NotFound(id.to_string()))
        }
    }

    async fn cleanup_stale(
        &self,
        _keep: &std::collections::BTreeSet<String>,
    ) -> Result<CleanupReport, BackendError> {
        Ok(CleanupReport::default())
    }
}

async fn read_req(conn: &mut UnixStream) -> Option<(AReq, Vec<u8>)> {
    let mut prefix = [0u8; 8];
    conn.read_exact(&mut prefix).await.ok()?;
    let (hl, pl) = decode_lengths(prefix).ok()?;
    let mut buf = vec![0u8; hl + pl];
    conn.read_exact(&mut buf).await.ok()?;
    let payload = buf.split_off(hl);
    Some((serde_json::from_slice(&buf).ok()?, payload))
}

async fn send(conn: &mut UnixStream, r: &AResp, payload: &[u8]) -> bool {
    conn.write_all(&encode(r, payload).unwrap()).await.is_ok()
}

fn err(kind: AgentErrorKind, message: &str) -> AResp {
    AResp::Error(AgentError {
        kind,
        message: message.into(),
    })
}

/// Normalize a path relative to /workspace; `None` when it leaves it.
fn norm(p: &str) -> Option<String> {
    let rel = match p.strip_prefix("/workspace") {
        Some(r) if r.is_empty() || r.starts_with('/') => r.trim_start_matches('/'),
        Some(_) => return None,
        None if p.starts_with('/') => return None,
        None => p,
    };
    let mut parts: Vec<&str> = Vec::new();
    for c in rel.split('/') {
        match c {
            "" | "." => {}
            ".." => return None,
            c => parts.push(c),
        }
    }
    Some(parts.join("/"))
}

fn entry_of(path: &str, content: &Option<Vec<u8>>) -> Entry {
    Entry {
        path: if path.is_empty() {
            "/workspace".into()
        } else {
            format!("/workspace/{path}")
        },
        name: path.rsplit('/').next().unwrap_or("").to_string(),
        kind: if content.is_some() {
            EntryKind::File
        } else {
            EntryKind::Dir
        },
        size: content.as_ref().map_or(0, |c| c.len() as u64),
        mode: if content.is_some() { 0o644 } else { 0o755 },
        mtime_ms: 0,
        target: None,
    }
}

#[allow(clippy::result_large_err)]
async fn serve_conn(
    mut conn: UnixStream,
    fs: Fs,
    mcp: McpServers,
    gate: Arc<Notify>,
    env: BTreeMap<String, String>,
) {
    use AgentErrorKind as K;
    while let Some((req, payload)) = read_req(&mut conn).await {
        let path_of = |p: &str| norm(p).ok_or_else(|| err(K::PathOutsideSandbox, "outside"));
        let reply = match req {
            AReq::Hello { .. } => AResp::Hello {
                version: PROTOCOL_VERSION,
                agent: "fake".into(),
            },
            AReq::Exec(spec) => {
                if !send(&mut conn, &AResp::Started { pid: 42 }, &[]).await {
                    return;
                }
                let mut argv = spec.argv.unwrap_or_else(|| {
                    vec!["sh".into(), "-c".into(), spec.shell.unwrap_or_default()]
                });
                // `sh -c LINE` / `bash -c LINE`: LINE's words are the command (no quoting).
                let shells = ["sh", "bash", "/bin/sh", "/bin/bash"];
                if argv.len() == 3 && shells.contains(&argv[0].as_str()) && argv[1] == "-c" {
                    argv = argv[2].split_whitespace().map(String::from).collect();
                }
                if argv.is_empty() {
                    argv.push(String::new());
                }
                let (code, timed_out) = match argv[0].as_str() {
                    // echo ARGS...: prints its arguments.
                    "echo" => {
                        let out = format!("{}\n", argv[1..].join(" "));
                        send(&mut conn, &AResp::Stdout, out.as_bytes()).await;
                        (Some(0), false)
                    }
                    // cat: echoes stdin.
                    "cat" => {
                        send(&mut conn, &AResp::Stdout, &payload).await;
                        (Some(0), false)
                    }
                    // env NAME: prints the variable from the box or the request.
                    "env" => {
                        let v = spec
                            .env
                            .get(&argv[1])
                            .or(env.get(&argv[1]))
                            .cloned()
                            .unwrap_or_default();
                        send(&mut conn, &AResp::Stdout, v.as_bytes()).await;
                        (Some(0), false)
                    }
                    // fail: writes to stderr and exits 3.
                    "fail" => {
                        send(&mut conn, &AResp::Stderr, b"oops\n").await;
                        (Some(3), false)
                    }
                    // gate: prints "one", waits for the test to open the gate, prints "two".
                    "gate" => {
                        send(&mut conn, &AResp::Stdout, b"one\n").await;
                        gate.notified().await;
                        send(&mut conn, &AResp::Stdout, b"two\n").await;
                        (Some(0), false)
                    }
                    // sleep: runs until the connection closes (the client went away).
                    "sleep" => {
                        let mut b = [0u8; 1];
                        let _ = conn.read(&mut b).await;
                        return;
                    }
                    _ => (Some(127), false),
                };
                AResp::Exited {
                    code,
                    signal: None,
                    timed_out,
                }
            }
            AReq::Python { code, .. } => {
                if code.contains("1/0") {
                    AResp::Python(PythonOutcome {
                        error: Some(sandboxd_protocol::PythonError {
                            ename: "ZeroDivisionError".into(),
                            evalue: "division by zero".into(),
                            traceback: vec!["Traceback ...".into()],
                        }),
                        ..Default::default()
                    })
                } else {
                    AResp::Python(PythonOutcome {
                        stdout: format!("ran {code}\n"),
                        result: Some("2".into()),
                        ..Default::default()
                    })
                }
            }
            AReq::WriteFile { path, more, .. } => {
                let mut data = payload;
                let mut more = more;
                while more {
                    match read_req(&mut conn).await {
                        Some((AReq::Chunk { more: m }, p)) => {
                            data.extend_from_slice(&p);
                            more = m;
                        }
                        _ => return,
                    }
                }
                match path_of(&path) {
                    Ok(p) => {
                        let c = Some(data);
                        let e = entry_of(&p, &c);
                        fs.lock().unwrap().insert(p, c);
                        AResp::Entry(e)
                    }
                    Err(e) => e,
                }
            }
            AReq::ReadFile { path } => match path_of(&path) {
                Ok(p) => {
                    let content = fs.lock().unwrap().get(&p).cloned();
                    match content {
                        Some(Some(data)) => {
                            // Several pieces, to exercise streaming.
                            let pieces: Vec<&[u8]> = data.chunks(64 * 1024).collect();
                            if pieces.is_empty() {
                                AResp::Data { last: true }
                            } else {
                                let n = pieces.len();
                                for (i, piece) in pieces.into_iter().enumerate() {
                                    send(&mut conn, &AResp::Data { last: i + 1 == n }, piece).await;
                                }
                                continue;
                            }
                        }
                        Some(None) => err(K::WrongKind, "is a directory"),
                        None => err(K::NotFound, "no such file"),
                    }
                }
                Err(e) => e,
            },
            AReq::Stat { path } => match path_of(&path) {
                Ok(p) if p.is_empty() => AResp::Entry(entry_of("", &None)),
                Ok(p) => match fs.lock().unwrap().get(&p) {
                    Some(c) => AResp::Entry(entry_of(&p, c)),
                    None => err(K::NotFound, "no such file"),
                },
                Err(e) => e,
            },
            AReq::ListDir { path, .. } => match path_of(&path) {
                Ok(dir) => {
                    let prefix = if dir.is_empty() {
                        String::new()
                    } else {
                        format!("{dir}/")
                    };
                    let entries = fs
                        .lock()
                        .unwrap()
                        .iter()
                        .filter(|(k, _)| k.starts_with(&prefix) && !k[prefix.len()..].contains('/'))
                        .map(|(k, c)| entry_of(k, c))
                        .collect();
                    AResp::Entries { entries }
                }
                Err(e) => e,
            },
            AReq::Mkdir { path, parents } => match path_of(&path) {
                Ok(p) => {
                    let mut fs = fs.lock().unwrap();
                    match fs.entry(p) {
                        std::collections::btree_map::Entry::Occupied(_) if parents => {
                            AResp::Created { created: false }
                        }
                        std::collections::btree_map::Entry::Occupied(_) => {
                            err(K::AlreadyExists, "exists")
                        }
                        std::collections::btree_map::Entry::Vacant(v) => {
                            v.insert(None);
                            AResp::Created { created: true }
                        }
                    }
                }
                Err(e) => e,
            },
            AReq::Move { from, to } => match (path_of(&from), path_of(&to)) {
                (Ok(f), Ok(t)) => {
                    let mut fs = fs.lock().unwrap();
                    match fs.remove(&f) {
                        Some(c) => {
                            let e = entry_of(&t, &c);
                            fs.insert(t, c);
                            AResp::Entry(e)
                        }
                        None => err(K::NotFound, "no such file"),
                    }
                }
                (Err(e), _) | (_, Err(e)) => e,
            },
            AReq::Remove { path, .. } => match path_of(&path) {
                Ok(p) => match fs.lock().unwrap().remove(&p) {
                    Some(_) => AResp::Ok,
                    None => err(K::NotFound, "no such file"),
                },
                Err(e) => e,
            },
            // MCP: a server named "broken" fails to start; every other one has one tool,
            // `<name>_echo`, which answers its `text` argument.
            AReq::McpStart(spec) if spec.server == "broken" => {
                err(K::ToolFailed, "MCP server broken exited with code 1")
            }
            AReq::McpStart(spec) => {
                let started = {
                    let mut servers = mcp.lock().unwrap();
                    let new = !servers.contains(&spec.server);
                    if new {
                        servers.push(spec.server.clone());
                    }
                    new || spec.replace
                };
                let info = if started { &b"{}"[..] } else { &b""[..] };
                send(&mut conn, &AResp::McpStarted { started }, info).await;
                continue;
            }
            AReq::McpList => AResp::McpServers {
                servers: mcp.lock().unwrap().clone(),
            },
            AReq::Mcp { server, method, .. } if mcp.lock().unwrap().contains(&server) => {
                let params: serde_json::Value =
                    serde_json::from_slice(&payload).unwrap_or_default();
                let result = match method.as_str() {
                    "tools/list" => serde_json::json!({"tools": [{
                        "name": format!("{server}_echo"),
                        "description": "echo",
                        "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}},
                    }]}),
                    "tools/call" => serde_json::json!({"content": [{
                        "type": "text",
                        "text": params["arguments"]["text"],
                    }]}),
                    _ => serde_json::Value::Null,
                };
                let bytes = serde_json::to_vec(&result).unwrap();
                send(&mut conn, &AResp::McpResult, &bytes).await;
                continue;
            }
            AReq::Mcp { server, .. } | AReq::McpStop { server } => {
                err(K::NotFound, &format!("no MCP server {server}"))
            }
            _ => err(K::Unsupported, "unsupported"),
        };
        if !send(&mut conn, &reply, &[]).await {
            return;
        }
    }
}

/// A real server on a free loopback port over a [`FakeBackend`], with an empty `base` template,
/// all in a temporary directory removed on drop.
#[derive(Debug)]
pub struct FakeServer {
    /// The running server.
    pub server: crate::RunningServer,
    /// Its backend, to look at the boxes.
    pub backend: Arc<FakeBackend>,
    /// Its base URL.
    pub url: String,
    /// Scratch directory of the test; the server's state is in `state/` below it.
    pub dir: tempfile::TempDir,
}

/// Start a [`FakeServer`], requiring `token` when given.
pub async fn fake_server(token: Option<&str>) -> FakeServer {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    std::fs::create_dir_all(state.join("templates/base/rootfs")).expect("template dir");
    std::fs::write(state.join("templates/base/ready"), "").expect("ready marker");
    std::fs::create_dir_all(state.join("socks")).expect("socket dir");
    let backend = FakeBackend::new(state.join("socks"));
    let settings = crate::Settings {
        port: 0,
        bearer_token: token.map(String::from),
        default_mount_dir: state.join("workspaces"),
        state_dir: state,
        // Below the kernel's ephemeral ports (which the default range overlaps), so that a
        // published port never takes the free port another test's server is about to bind.
        port_range: crate::ports::PortRange {
            lo: 25000,
            hi: 25999,
        },
        ..crate::Settings::default()
    };
    let server = crate::start_with_backend(settings, backend.clone())
        .await
        .expect("start the server");
    let url = format!("http://{}", server.local_addr());
    FakeServer {
        server,
        backend,
        url,
        dir,
    }
}
