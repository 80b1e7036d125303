//! AgentScope Runtime's wire protocol against a real `sandboxd serve` on the native backend:
//! the manager's RPC (`POST /<method>[_async]`, `{"data": ...}`), the `/proxy/{identity}/workspace`
//! file routes, auth, the instance limit, the warm pool, the heartbeat's recycle and restore, the
//! `filesystem` type and extension types, MCP servers, and the clean-up at shutdown. Requests and replies are built and checked by hand in AgentScope's
//! wire shapes (not through an SDK), so that a change of shape on the server fails here.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use reqwest::{Method, RequestBuilder, StatusCode};
use sandboxd_e2e::{Server, ServerOptions};
use sandboxd_types::SandboxState;
use serde_json::{json, Value};

use common::{pid_alive, sandbox_cgroups, sandbox_pids, warm};

const TOKEN: &str = "e2e-agentscope-token";
/// The server's default `CONTAINER_PREFIX_KEY`.
const PREFIX: &str = "sandboxd-";

async fn server(env: &[(&str, &str)]) -> Server {
    common::server_with(ServerOptions {
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        token: Some(TOKEN.into()),
        ..Default::default()
    })
    .await
}

/// AgentScope's client as far as these tests need it: the RPC and the proxy routes.
struct Agentscope {
    http: reqwest::Client,
    url: String,
    token: Option<String>,
}

impl Agentscope {
    fn new(server: &Server) -> Self {
        Self::with_token(server, server.token.as_deref())
    }

    fn with_token(server: &Server, token: Option<&str>) -> Self {
        Agentscope {
            http: reqwest::Client::new(),
            url: server.url.clone(),
            token: token.map(str::to_string),
        }
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let rb = self.http.request(method, format!("{}{path}", self.url));
        match &self.token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    /// `POST /<method>` with its keyword arguments: the status and the JSON reply.
    async fn post(&self, method: &str, args: Value) -> (StatusCode, Value) {
        send(
            self.request(Method::POST, &format!("/{method}"))
                .json(&args),
        )
        .await
    }

    /// The `data` of a call that must succeed.
    async fn call(&self, method: &str, args: Value) -> Value {
        let (status, reply) = self.post(method, args.clone()).await;
        assert_eq!(status, 200, "{method} {args}: {reply}");
        let envelope = reply.as_object().expect("a JSON object");
        assert_eq!(
            envelope.keys().collect::<Vec<_>>(),
            ["data"],
            "{method}: not the data envelope: {reply}"
        );
        reply["data"].clone()
    }

    /// `create` that must give a container name.
    async fn create(&self, args: Value) -> String {
        let data = self.call("create", args.clone()).await;
        let name = data
            .as_str()
            .unwrap_or_else(|| panic!("create {args} gave no name: {data}"));
        assert!(name.starts_with(PREFIX), "{name}");
        name.to_string()
    }

    async fn info(&self, name: &str) -> Value {
        self.call("get_info", json!({ "identity": name })).await
    }

    async fn tool(&self, name: &str, tool: &str, arguments: Value) -> Value {
        let args = json!({"identity": name, "tool_name": tool, "arguments": arguments});
        self.call("call_tool", args).await
    }

    async fn shell(&self, name: &str, command: &str) -> Value {
        self.tool(name, "run_shell_command", json!({ "command": command }))
            .await
    }

    async fn ipython(&self, name: &str, code: &str) -> Value {
        self.tool(name, "run_ipython_cell", json!({ "code": code }))
            .await
    }

    /// A request to `/proxy/{name}/{route}`.
    fn proxy(&self, method: Method, name: &str, route: &str) -> RequestBuilder {
        self.request(method, &format!("/proxy/{name}/{route}"))
    }

    async fn write(&self, name: &str, path: &str, data: impl Into<reqwest::Body>) -> Value {
        let rb = self
            .proxy(Method::PUT, name, "workspace/file")
            .query(&[("path", path)])
            .body(data);
        expect_ok(send(rb).await, &format!("write {path}"))
    }

    /// `GET workspace/file`: status, content type and content.
    async fn read(&self, name: &str, path: &str, format: &str) -> (StatusCode, String, Vec<u8>) {
        let resp = self
            .proxy(Method::GET, name, "workspace/file")
            .query(&[("path", path), ("format", format)])
            .send()
            .await
            .expect("the server answers");
        let status = resp.status();
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = resp.bytes().await.expect("a whole body").to_vec();
        (status, content_type, body)
    }

    async fn exists(&self, name: &str, path: &str) -> bool {
        let rb = self
            .proxy(Method::GET, name, "workspace/exists")
            .query(&[("path", path)]);
        let reply = expect_ok(send(rb).await, &format!("exists {path}"));
        reply["exists"]
            .as_bool()
            .unwrap_or_else(|| panic!("exists {path}: {reply}"))
    }

    async fn list(&self, name: &str, path: &str, depth: u32) -> Vec<Value> {
        let rb = self
            .proxy(Method::GET, name, "workspace/list")
            .query(&[("path", path), ("depth", &depth.to_string())]);
        let reply = expect_ok(send(rb).await, &format!("list {path}"));
        reply.as_array().cloned().expect("a list of entries")
    }
}

/// Send a request: the status and the body as JSON (a body that is not JSON as a string).
async fn send(rb: RequestBuilder) -> (StatusCode, Value) {
    let resp = rb.send().await.expect("the server answers");
    let status = resp.status();
    let body = resp.bytes().await.expect("a whole body");
    let value = serde_json::from_slice(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
    (status, value)
}

fn expect_ok((status, reply): (StatusCode, Value), what: &str) -> Value {
    assert_eq!(status, 200, "{what}: {reply}");
    reply
}

/// A CallToolResult's texts by their description (`stdout`, `stderr`, `returncode`).
fn texts(result: &Value) -> BTreeMap<String, String> {
    let content = result["content"]
        .as_array()
        .unwrap_or_else(|| panic!("not a CallToolResult: {result}"));
    content
        .iter()
        .map(|c| {
            let d = c["description"].as_str().expect("a description");
            (
                d.to_string(),
                c["text"].as_str().expect("a text").to_string(),
            )
        })
        .collect()
}

fn is_error(result: &Value) -> bool {
    result["isError"]
        .as_bool()
        .unwrap_or_else(|| panic!("no isError: {result}"))
}

fn stdout(result: &Value) -> String {
    texts(result).remove("stdout").unwrap_or_default()
}

fn sandbox_id(name: &str) -> &str {
    name.strip_prefix(PREFIX)
        .unwrap_or_else(|| panic!("{name} is not a container name"))
}

/// The host directory mounted at the sandbox's `/workspace`, as `get_info` reports it.
async fn host_workspace(a: &Agentscope, name: &str) -> PathBuf {
    let info = a.info(name).await;
    PathBuf::from(info["mount_dir"].as_str().expect("a mount_dir"))
}

/// Poll `get_info` (which is no heartbeat touch) until the sandbox is in `state`.
async fn wait_state(a: &Agentscope, name: &str, state: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let info = a.info(name).await;
        if info["state"] == state {
            return info;
        }
        assert!(Instant::now() < deadline, "never {state}: {info}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A `multipart/form-data` body of `(field, file name, data)` parts, in the given order; the
/// content type and the body.
fn multipart(parts: &[(&str, Option<&str>, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "e2e-boundary-5d1c0b7a";
    let mut body = Vec::new();
    for (field, file, data) in parts {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        let disposition = match file {
            Some(f) => format!(
                "Content-Disposition: form-data; name=\"{field}\"; filename=\"{f}\"\r\n\
                 Content-Type: application/octet-stream\r\n\r\n"
            ),
            None => format!("Content-Disposition: form-data; name=\"{field}\"\r\n\r\n"),
        };
        body.extend_from_slice(disposition.as_bytes());
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

async fn batch(
    a: &Agentscope,
    name: &str,
    parts: &[(&str, Option<&str>, &[u8])],
) -> (StatusCode, Value) {
    let (content_type, body) = multipart(parts);
    let rb = a
        .proxy(Method::POST, name, "workspace/files:batch")
        .header(reqwest::header::CONTENT_TYPE, content_type)
        .body(body);
    send(rb).await
}

#[tokio::test(flavor = "multi_thread")]
async fn rpc_lifecycle_and_generic_tools() {
    let server = server(&[]).await;
    let a = Agentscope::new(&server);
    let name = a
        .create(json!({
            "sandbox_type": "base",
            "environment": {"GREETING": "hello from env", "N": 3},
            "meta": {"session_ctx_id": "e2e-s1", "owner": "e2e"},
        }))
        .await;
    let id = sandbox_id(&name);

    assert_eq!(
        a.call("check_health", json!({"identity": name})).await,
        true
    );
    assert_eq!(
        a.call("get_status", json!({"identity": name})).await,
        "running"
    );
    let info = a.info(&name).await;
    assert_eq!(info["container_name"], name, "{info}");
    assert_eq!(info["session_id"], id, "{info}");
    assert_eq!(info["state"], "running", "{info}");
    assert_eq!(info["sandbox_type"], "base", "{info}");
    assert!(
        info["version"].as_str().unwrap().contains("sandbox-base"),
        "{info}"
    );
    assert_eq!(info["session_ctx_id"], "e2e-s1", "{info}");
    assert_eq!(
        info["meta"],
        json!({"session_ctx_id": "e2e-s1", "owner": "e2e"})
    );
    assert_eq!(info["url"], format!("{}/proxy/{name}", server.url));
    let mount_dir = PathBuf::from(info["mount_dir"].as_str().unwrap());
    assert!(
        mount_dir.starts_with(server.state.path()) && mount_dir.is_dir(),
        "mount_dir {} is not a workspace of this server",
        mount_dir.display()
    );
    // A bare sandbox id names the sandbox too.
    assert_eq!(a.info(id).await["container_name"], name);
    assert_eq!(
        a.call("get_session_mapping", json!({"session_ctx_id": "e2e-s1"}))
            .await,
        json!([name])
    );
    let keys = a.call("list_session_keys", json!({})).await;
    assert!(
        keys.as_array().unwrap().contains(&json!("e2e-s1")),
        "{keys}"
    );

    let tools = a.call("list_tools", json!({"identity": name})).await;
    let groups: Vec<&String> = tools.as_object().unwrap().keys().collect();
    assert_eq!(groups, ["generic"], "{tools}");
    for (tool, param) in [
        ("run_ipython_cell", "code"),
        ("run_shell_command", "command"),
    ] {
        let t = &tools["generic"][tool];
        assert_eq!(t["name"], tool, "{tools}");
        assert_eq!(t["json_schema"]["type"], "function", "{tools}");
        let function = &t["json_schema"]["function"];
        assert_eq!(function["name"], tool, "{tools}");
        assert_eq!(function["parameters"]["type"], "object", "{tools}");
        assert_eq!(
            function["parameters"]["required"],
            json!([param]),
            "{tools}"
        );
        assert_eq!(
            function["parameters"]["properties"][param]["type"], "string",
            "{tools}"
        );
    }
    let generic = a
        .call(
            "list_tools",
            json!({"identity": name, "tool_type": "generic"}),
        )
        .await;
    assert_eq!(generic, json!({"generic": tools["generic"]}));

    // The exact CallToolResult, with the create's environment visible to the command.
    let r = a.shell(&name, "echo \"$GREETING\"; echo n=$N; pwd").await;
    assert_eq!(
        r,
        json!({
            "meta": null,
            "content": [
                {"type": "text", "text": "hello from env\nn=3\n/workspace\n", "annotations": null,
                 "meta": null, "description": "stdout"},
                {"type": "text", "text": "0", "annotations": null, "meta": null,
                 "description": "returncode"},
            ],
            "structuredContent": null,
            "isError": false,
        })
    );
    let r = a.shell(&name, "echo out; echo err >&2; exit 3").await;
    let want: BTreeMap<String, String> = [
        ("stdout", "out\n"),
        ("stderr", "err\n"),
        ("returncode", "3"),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .into();
    assert_eq!(texts(&r), want, "{r}");
    assert!(is_error(&r), "stderr makes isError: {r}");

    let r = a.ipython(&name, "x = 21\nimport os").await;
    assert!(!is_error(&r), "{r}");
    assert_eq!(stdout(&r), "");
    let r = a
        .ipython(&name, "print(x * 2, os.environ['GREETING'])")
        .await;
    assert_eq!(
        stdout(&r),
        "42 hello from env\n",
        "the variable survives: {r}"
    );
    let r = a.ipython(&name, "1 / 0").await;
    assert!(is_error(&r), "a traceback makes isError: {r}");
    let stderr = texts(&r).remove("stderr").unwrap_or_default();
    assert!(stderr.contains("ZeroDivisionError"), "{r}");
    let r = a.ipython(&name, "print(x)").await;
    assert_eq!(
        stdout(&r),
        "21\n",
        "the interpreter survives an exception: {r}"
    );
    let r = a.tool(&name, "no_such_tool", json!({})).await;
    assert!(is_error(&r), "{r}");

    // The async client's twins: same bodies (identity also as `args`), same replies.
    let info = a.call("get_info_async", json!({"args": name})).await;
    assert_eq!(info["container_name"], name, "{info}");
    assert_eq!(
        a.call("get_status_async", json!({"args": name})).await,
        "running"
    );
    assert_eq!(
        a.call("check_health_async", json!({"identity": name}))
            .await,
        true
    );
    assert_eq!(
        a.call("list_tools_async", json!({"identity": name})).await,
        tools
    );
    let args = json!({"identity": name, "tool_name": "run_shell_command",
                      "arguments": {"command": "echo async"}});
    let r = a.call("call_tool_async", args).await;
    assert_eq!(stdout(&r), "async\n", "{r}");

    // An RPC failure is FastAPI's: 500 {"detail": "Error in <method>: ..."}.
    let (status, reply) = a
        .post("create", json!({"sandbox_type": "base", "bogus": 1}))
        .await;
    assert_eq!(status, 500, "{reply}");
    let detail = reply["detail"].as_str().unwrap_or_default();
    assert!(detail.starts_with("Error in create: "), "{reply}");

    assert_eq!(
        a.call("release_async", json!({"identity": name})).await,
        true
    );
    assert!(
        sandbox_cgroups(&server.cgroup_parent).is_empty(),
        "the released sandbox's cgroups remain"
    );
    let (status, reply) = a.post("get_info", json!({"identity": name})).await;
    assert_eq!(status, 500, "{reply}");
    assert!(
        reply["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("No container found"),
        "{reply}"
    );
    assert_eq!(
        a.call("get_status", json!({"identity": name})).await,
        Value::Null
    );
    assert_eq!(
        a.call("release", json!({"identity": name})).await,
        true,
        "releasing twice is fine"
    );
    assert_eq!(
        a.call("get_session_mapping", json!({"session_ctx_id": "e2e-s1"}))
            .await,
        json!([])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_workspace_files() {
    let server = server(&[]).await;
    let a = Agentscope::new(&server);
    let name = a.create(json!({"sandbox_type": "base"})).await;
    let host = host_workspace(&a, &name).await;

    let e = a.write(&name, "notes/a.txt", "hello text").await;
    assert_eq!(e["path"], "/workspace/notes/a.txt", "{e}");
    assert_eq!(e["name"], "a.txt", "{e}");
    assert_eq!(e["type"], "file", "{e}");
    assert_eq!(e["size"], 10, "{e}");
    assert!(e["mtime_ms"].as_i64().is_some_and(|t| t > 0), "{e}");
    let blob: Vec<u8> = (0..=255u8).collect();
    assert_eq!(a.write(&name, "blob.bin", blob.clone()).await["size"], 256);

    let (status, content_type, body) = a.read(&name, "notes/a.txt", "text").await;
    assert_eq!(status, 200);
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    assert_eq!(body, b"hello text");
    let (status, content_type, body) = a.read(&name, "blob.bin", "bytes").await;
    assert_eq!(status, 200);
    assert_eq!(content_type, "application/octet-stream");
    assert_eq!(body, blob);
    assert_eq!(
        std::fs::read(host.join("notes/a.txt")).unwrap(),
        b"hello text",
        "the file is in the session's workspace on the host"
    );
    let (status, _, _) = a.read(&name, "missing.txt", "text").await;
    assert_eq!(status, 404);

    // `requests` sends the `paths` fields before the `files` parts, other clients may not: the
    // second file comes before its path.
    let (status, reply) = batch(
        &a,
        &name,
        &[
            ("paths", None, b"many/one.txt"),
            ("files", Some("one.txt"), b"1"),
            ("files", Some("two.bin"), b"\x00\x02"),
            ("paths", None, b"many/two.bin"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    let paths: Vec<&str> = reply
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        ["/workspace/many/one.txt", "/workspace/many/two.bin"]
    );
    assert_eq!(a.read(&name, "many/one.txt", "text").await.2, b"1");
    assert_eq!(a.read(&name, "many/two.bin", "bytes").await.2, b"\x00\x02");

    let top = a.list(&name, ".", 1).await;
    let by_name: BTreeMap<&str, &Value> = top
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e))
        .collect();
    let names: BTreeSet<&str> = by_name.keys().copied().collect();
    assert_eq!(
        names,
        BTreeSet::from(["blob.bin", "many", "notes"]),
        "{top:?}"
    );
    assert_eq!(by_name["notes"]["type"], "dir");
    assert_eq!(by_name["notes"]["size"], Value::Null);
    let deep: Vec<String> = a
        .list(&name, ".", 2)
        .await
        .iter()
        .map(|e| e["path"].as_str().unwrap().to_string())
        .collect();
    let at = |p: &str| {
        deep.iter()
            .position(|d| *d == p)
            .unwrap_or_else(|| panic!("{p} not listed at depth 2: {deep:?}"))
    };
    assert!(at("/workspace/notes") < at("/workspace/notes/a.txt"));
    at("/workspace/many/two.bin");

    assert!(a.exists(&name, "notes/a.txt").await);
    assert!(!a.exists(&name, "nope").await);

    let mkdir = |path: &str| {
        a.proxy(Method::POST, &name, "workspace/mkdir")
            .json(&json!({ "path": path }))
    };
    assert_eq!(
        expect_ok(send(mkdir("d1/d2")).await, "mkdir"),
        json!({"created": true})
    );
    assert_eq!(
        expect_ok(send(mkdir("d1/d2")).await, "mkdir"),
        json!({"created": false})
    );
    let (status, reply) = send(mkdir("blob.bin")).await;
    assert_eq!(status, 409, "mkdir over a file: {reply}");

    let rb = a
        .proxy(Method::POST, &name, "workspace/move")
        .json(&json!({"source": "notes/a.txt", "destination": "d1/d2/moved/a.txt"}));
    let moved = expect_ok(send(rb).await, "move");
    assert_eq!(moved["path"], "/workspace/d1/d2/moved/a.txt", "{moved}");
    assert!(!a.exists(&name, "notes/a.txt").await);
    assert_eq!(
        a.read(&name, "d1/d2/moved/a.txt", "text").await.2,
        b"hello text"
    );

    let remove = |path: &str| {
        a.proxy(Method::DELETE, &name, "workspace/entry")
            .query(&[("path", path)])
    };
    let (status, reply) = send(remove("d1")).await;
    assert_eq!(status, 204, "{reply}");
    assert!(!a.exists(&name, "d1").await);
    assert!(!host.join("d1").exists());
    let (status, reply) = send(remove("d1")).await;
    assert_eq!(status, 204, "removing what is gone is fine: {reply}");

    // The shell sees the same files.
    let r = a.shell(&name, "cat many/one.txt; ls").await;
    assert_eq!(stdout(&r), "1blob.bin\nmany\nnotes\n", "{r}");
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_refuses_paths_outside_the_workspace() {
    let server = server(&[]).await;
    let a = Agentscope::new(&server);
    let name = a.create(json!({"sandbox_type": "base"})).await;
    let host = host_workspace(&a, &name).await;
    // Another session's workspace is the host directory next to this one.
    let other = a.create(json!({"sandbox_type": "base"})).await;
    let other_host = host_workspace(&a, &other).await;
    a.write(&other, "secret.txt", "other's").await;
    assert_eq!(other_host.parent(), host.parent());
    let other_dir = other_host
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let neighbours = || -> BTreeSet<PathBuf> {
        std::fs::read_dir(host.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    };
    let before = neighbours();

    a.write(&name, "mine.txt", "mine").await;
    let r = a
        .shell(&name, "ln -s /etc out && ln -s ../etc rel && echo linked")
        .await;
    assert_eq!(stdout(&r), "linked\n", "{r}");

    let refused = |what: &str, (status, reply): (StatusCode, Value)| {
        assert_eq!(status, 403, "{what} was not refused: {reply}");
        assert!(reply["detail"].is_string(), "{what}: {reply}");
    };
    let theirs = format!("../{other_dir}/secret.txt");
    let outside = [
        "../escape.txt",
        theirs.as_str(),
        "/etc/passwd",
        "/workspace/../etc/passwd",
        "out/passwd",
        "rel/passwd",
    ];
    for p in outside {
        let (status, _, body) = a.read(&name, p, "text").await;
        assert_eq!(status, 403, "read {p}: {}", String::from_utf8_lossy(&body));
        let rb = a
            .proxy(Method::GET, &name, "workspace/exists")
            .query(&[("path", p)]);
        refused(&format!("exists {p}"), send(rb).await);
    }
    let list = |p: &str| {
        a.proxy(Method::GET, &name, "workspace/list")
            .query(&[("path", p), ("depth", "1")])
    };
    for p in ["..", "/etc", "out/apt", "rel/apt"] {
        refused(&format!("list {p}"), send(list(p)).await);
    }
    // The link itself is not followed (the agent opens the last component without following
    // it), so it answers 404 where upstream says 403; either way nothing of /etc is shown.
    for p in ["out", "rel"] {
        let (status, reply) = send(list(p)).await;
        assert!(
            status == 403 || status == 404,
            "list {p} was not refused: {status} {reply}"
        );
        assert!(!reply.to_string().contains("passwd"), "list {p}: {reply}");
    }

    for p in [
        "../escape.txt",
        "/etc/e2e-escape",
        "out/e2e-escape",
        "rel/e2e-escape",
    ] {
        let rb = a
            .proxy(Method::PUT, &name, "workspace/file")
            .query(&[("path", p)])
            .body("x");
        let (status, reply) = send(rb).await;
        assert_eq!(status, 403, "write {p}: {reply}");
        refused(
            &format!("batch write {p}"),
            batch(
                &a,
                &name,
                &[("paths", None, p.as_bytes()), ("files", Some("f"), b"x")],
            )
            .await,
        );
        let rb = a
            .proxy(Method::POST, &name, "workspace/mkdir")
            .json(&json!({ "path": format!("{p}-dir") }));
        refused(&format!("mkdir {p}-dir"), send(rb).await);
        let rb = a
            .proxy(Method::POST, &name, "workspace/move")
            .json(&json!({"source": "mine.txt", "destination": p}));
        refused(&format!("move mine.txt to {p}"), send(rb).await);
    }
    for p in [theirs.as_str(), "out/hostname", "/etc/hostname"] {
        let rb = a
            .proxy(Method::POST, &name, "workspace/move")
            .json(&json!({"source": p, "destination": "stolen"}));
        refused(&format!("move {p} in"), send(rb).await);
    }
    for p in [
        format!("../{other_dir}"),
        "out/hostname".into(),
        "/etc/hostname".into(),
    ] {
        let rb = a
            .proxy(Method::DELETE, &name, "workspace/entry")
            .query(&[("path", &p)]);
        refused(&format!("remove {p}"), send(rb).await);
    }

    // Nothing outside was touched: not the sandbox's /etc, not the host next to the workspace.
    let r = a
        .shell(
            &name,
            "test -f /etc/hostname && echo kept; ls /etc | grep e2e-escape; ls /workspace",
        )
        .await;
    assert_eq!(stdout(&r), "kept\nmine.txt\nout\nrel\n", "{r}");
    assert_eq!(
        neighbours(),
        before,
        "entries appeared beside the workspace"
    );
    assert_eq!(
        std::fs::read_to_string(other_host.join("secret.txt")).unwrap(),
        "other's"
    );
    assert!(!Path::new("/etc/e2e-escape").exists());
    assert!(!Path::new("/etc/e2e-escape-dir").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_or_missing_token_is_401_in_fastapi_shape() {
    let server = server(&[]).await;
    for token in [None, Some("e2e-agentscope-tokeN"), Some("")] {
        let a = Agentscope::with_token(&server, token);
        let requests = [
            a.request(Method::POST, "/create").json(&json!({})),
            a.request(Method::POST, "/list_session_keys_async")
                .json(&json!({})),
            a.proxy(
                Method::GET,
                "sandboxd-sb-0000000000000000",
                "workspace/file",
            )
            .query(&[("path", "x")]),
        ];
        for rb in requests {
            let resp = rb.send().await.expect("the server answers");
            let what = format!("{} with token {token:?}", resp.url().path());
            assert_eq!(resp.status(), 401, "{what}");
            assert_eq!(
                resp.headers()
                    .get(reqwest::header::WWW_AUTHENTICATE)
                    .map(|v| v.to_str().unwrap()),
                Some("Bearer"),
                "{what}"
            );
            let body = resp.text().await.unwrap();
            assert!(!body.contains(TOKEN), "{what} shows the token");
            let reply: Value = serde_json::from_str(&body).unwrap();
            let keys: Vec<&String> = reply.as_object().unwrap().keys().collect();
            assert_eq!(keys, ["detail"], "{what}: {reply}");
        }
    }
    // Clients poll /health before they have any reason to send the token.
    let anonymous = Agentscope::with_token(&server, None);
    let (status, reply) = send(anonymous.request(Method::GET, "/health")).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["status"], "healthy", "{reply}");
    // Nothing was created by the refused calls.
    let a = Agentscope::new(&server);
    assert_eq!(a.call("list_session_keys", json!({})).await, json!([]));
    assert!(server
        .client()
        .list(&Default::default())
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn instance_limit_answers_null_until_a_release() {
    let server = server(&[("MAX_SANDBOX_INSTANCES", "2")]).await;
    let a = Agentscope::new(&server);
    let first = a.create(json!({"sandbox_type": "base"})).await;
    let second = a
        .call("create_async", json!({"sandbox_type": "base"}))
        .await;
    assert!(second.is_string(), "{second}");
    for method in ["create", "create_async", "create_from_pool"] {
        let data = a.call(method, json!({"sandbox_type": "base"})).await;
        assert_eq!(data, Value::Null, "{method} past MAX_SANDBOX_INSTANCES");
    }
    assert_eq!(
        server
            .client()
            .list(&Default::default())
            .await
            .unwrap()
            .len(),
        2
    );
    assert_eq!(a.call("release", json!({"identity": first})).await, true);
    let third = a.create(json!({"sandbox_type": "base"})).await;
    let r = a.shell(&third, "echo room again").await;
    assert_eq!(stdout(&r), "room again\n", "{r}");
}

#[tokio::test(flavor = "multi_thread")]
async fn create_from_pool_hands_out_a_warm_sandbox_and_refills() {
    let server = server(&[("DEFAULT_SANDBOX_TYPE", "base"), ("POOL_SIZE", "1")]).await;
    let a = Agentscope::new(&server);
    let c = server.client();
    let warm_id = warm(&c, 1).await.remove(0).id;
    let warm_name = format!("{PREFIX}{warm_id}");
    assert_eq!(a.info(&warm_name).await["state"], "warm");

    let name = a
        .call(
            "create_from_pool",
            json!({"sandbox_type": "base", "meta": {"session_ctx_id": "pool-s"}}),
        )
        .await;
    assert_eq!(name, warm_name, "the hand-out is the warm sandbox");
    let info = a.info(&warm_name).await;
    assert_eq!(info["state"], "running", "{info}");
    assert_eq!(info["session_ctx_id"], "pool-s", "{info}");
    assert_eq!(
        a.call("get_session_mapping", json!({"session_ctx_id": "pool-s"}))
            .await,
        json!([warm_name])
    );
    let r = a.shell(&warm_name, "echo pooled; pwd").await;
    assert_eq!(stdout(&r), "pooled\n/workspace\n", "{r}");

    let refill = warm(&c, 1).await.remove(0).id;
    assert_ne!(refill, warm_id, "the pool refilled with a new sandbox");
    // A warm sandbox started without the requested environment: that create is cold.
    let cold = a
        .call(
            "create_from_pool",
            json!({"sandbox_type": "base", "environment": {"E2E": "cold"}}),
        )
        .await;
    let cold = cold.as_str().expect("a name").to_string();
    assert_ne!(cold, format!("{PREFIX}{refill}"));
    assert_eq!(stdout(&a.shell(&cold, "echo $E2E").await), "cold\n");
    assert_eq!(warm(&c, 1).await[0].id, refill, "the warm one stays warm");
}

#[tokio::test(flavor = "multi_thread")]
async fn heartbeat_recycles_an_idle_session_and_the_next_touch_restores_it() {
    // The checks after the restore must fit in one HEARTBEAT_TIMEOUT (or the new sandbox is
    // recycled in turn): a few requests, well within 8 s even on a loaded machine.
    let server = server(&[("HEARTBEAT_TIMEOUT", "8"), ("HEARTBEAT_SCAN_INTERVAL", "1")]).await;
    let a = Agentscope::new(&server);
    // Without a session a sandbox is not the heartbeat's. Made first, so it is idle the longest.
    let loose = a.create(json!({"sandbox_type": "base"})).await;
    let name = a
        .create(json!({"sandbox_type": "base", "meta": {"session_ctx_id": "hb-s"}}))
        .await;
    a.write(&name, "notes/keep.txt", "still here").await;
    let r = a.shell(&name, "echo shell > made-by-shell.txt").await;
    assert!(!is_error(&r), "{r}");
    let host = host_workspace(&a, &name).await;
    // A box's cgroups are named after its sandbox id.
    let boxes = || -> BTreeSet<String> {
        sandbox_cgroups(&server.cgroup_parent)
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect()
    };
    assert!(boxes().contains(sandbox_id(&name)));

    let info = wait_state(&a, &name, "recycled").await;
    assert_eq!(info["recycle_reason"], "heartbeat timeout", "{info}");
    assert!(info["recycled_at"].is_number(), "{info}");
    assert_eq!(a.info(&loose).await["state"], "running");
    // The box is gone, the workspace is kept.
    let left = boxes();
    assert!(
        !left.contains(sandbox_id(&name)),
        "recycled box left: {left:?}"
    );
    assert!(left.contains(sandbox_id(&loose)), "{left:?}");
    assert_eq!(
        std::fs::read_to_string(host.join("notes/keep.txt")).unwrap(),
        "still here"
    );

    // The next touch restores the session on the same workspace, under the old name.
    let r = a.shell(&name, "cat notes/keep.txt made-by-shell.txt").await;
    assert_eq!(stdout(&r), "still hereshell\n", "{r}");
    let info = a.info(&name).await;
    let new_name = info["container_name"].as_str().unwrap().to_string();
    assert_ne!(new_name, name, "a new sandbox took over: {info}");
    assert_eq!(info["state"], "running", "{info}");
    assert_eq!(info["session_ctx_id"], "hb-s", "{info}");
    assert_eq!(PathBuf::from(info["mount_dir"].as_str().unwrap()), host);
    let old = server.client().get(sandbox_id(&name)).await.unwrap();
    assert_eq!(old.state, SandboxState::Replaced, "{old:?}");
    assert_eq!(old.replaced_by.as_deref(), Some(sandbox_id(&new_name)));
    assert_eq!(
        a.read(&name, "notes/keep.txt", "text").await.2,
        b"still here"
    );
    assert_eq!(
        a.call("check_health", json!({"identity": name})).await,
        true
    );
    assert_eq!(
        a.call("get_session_mapping", json!({"session_ctx_id": "hb-s"}))
            .await,
        json!([new_name])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn stop_with_auto_cleanup_leaves_no_sandbox_behind() {
    let mut server = server(&[("AUTO_CLEANUP", "true")]).await;
    let a = Agentscope::new(&server);
    for meta in [json!({"session_ctx_id": "cleanup-s"}), json!({})] {
        let name = a
            .create(json!({"sandbox_type": "base", "meta": meta}))
            .await;
        let r = a
            .shell(&name, "(sleep 1000 >/dev/null 2>&1 &); echo started")
            .await;
        assert_eq!(stdout(&r), "started\n", "{r}");
    }
    let pids = sandbox_pids(&server.cgroup_parent);
    assert!(
        pids.len() >= 4,
        "agents and sleeps in the cgroups: {pids:?}"
    );
    common::stop_leaves_nothing(&mut server, &pids);
}

/// What the test MCP server's `where` tool answers: its host name and its `MARKER`.
async fn marker(a: &Agentscope, name: &str) -> String {
    let r = a.tool(name, "where", json!({})).await;
    r["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The test venv's site-packages (made by `scripts/setup`), which holds the official MCP SDK.
fn venv_site_packages() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let site = root.join(".venv/lib/python3.11/site-packages");
    assert!(
        site.join("mcp").is_dir(),
        "{} has no `mcp` package: run scripts/setup (it makes the test venv)",
        site.display()
    );
    site.canonicalize().expect("site-packages resolves")
}

/// `add_mcp_servers` with a server written with the official MCP SDK, run by the guest agent
/// inside a real sandbox: its tools in `list_tools`, `call_tool` through RPC and the
/// sandbox's own `/mcp` routes, its files in `/workspace`, `overwrite`, and clear errors.
#[tokio::test(flavor = "multi_thread")]
async fn mcp_server_from_the_official_sdk_runs_inside_the_sandbox() {
    let site = venv_site_packages();
    let mounts = json!({ site.to_str().unwrap(): "/opt/pysite" }).to_string();
    let server = server(&[("READONLY_MOUNTS", &mounts)]).await;
    let a = Agentscope::new(&server);
    let name = a.create(json!({"sandbox_type": "base"})).await;
    let script =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/mcp/calc_server.py"))
            .expect("tests/mcp/calc_server.py");
    a.write(&name, "calc_server.py", script).await;

    let configs = |marker: &str| {
        json!({"mcpServers": {"calc": {
            "command": "python3",
            "args": ["/workspace/calc_server.py"],
            "env": {"PYTHONPATH": "/opt/pysite", "MARKER": marker},
        }}})
    };
    let ok = a
        .call(
            "add_mcp_servers",
            json!({"identity": name, "server_configs": configs("first"), "overwrite": false}),
        )
        .await;
    assert_eq!(ok, "OK");

    let tools = a.call("list_tools", json!({"identity": name})).await;
    let calc = tools["calc"]
        .as_object()
        .unwrap_or_else(|| panic!("{tools}"));
    let names: BTreeSet<&str> = calc.keys().map(String::as_str).collect();
    assert_eq!(names, BTreeSet::from(["add", "where", "write_note"]));
    let add = &calc["add"]["json_schema"]["function"];
    assert_eq!(add["description"], "Add two integers.");
    assert_eq!(add["parameters"]["required"], json!(["a", "b"]));
    assert!(tools["generic"]["run_shell_command"].is_object(), "{tools}");

    let r = a.tool(&name, "add", json!({"a": 2, "b": 40})).await;
    assert_eq!(r["isError"], false, "{r}");
    assert_eq!(r["content"][0]["text"], "42", "{r}");
    // The server runs in the sandbox: its host name is the sandbox's, its files land in the
    // sandbox's /workspace (visible to the file API and the shell).
    let r = a.tool(&name, "where", json!({})).await;
    let seen = r["content"][0]["text"].as_str().unwrap().to_string();
    let host = stdout(&a.shell(&name, "hostname").await);
    assert_eq!(seen, format!("{} first", host.trim()));
    let r = a
        .tool(&name, "write_note", json!({"text": "from mcp"}))
        .await;
    assert_eq!(r["content"][0]["text"], "/workspace/notes.txt", "{r}");
    let (status, _, body) = a.read(&name, "notes.txt", "text").await;
    assert_eq!(
        (status, body.as_slice()),
        (StatusCode::OK, &b"from mcp\n"[..])
    );

    // A tool's own failure (bad arguments) is an isError result, not a server error.
    let r = a.tool(&name, "add", json!({"a": "x"})).await;
    assert_eq!(r["isError"], true, "{r}");

    // Adding it again without overwrite keeps the running server; with overwrite, it restarts
    // with the new environment.
    a.call(
        "add_mcp_servers",
        json!({"identity": name, "server_configs": configs("second")}),
    )
    .await;
    assert!(marker(&a, &name).await.ends_with(" first"));
    a.call(
        "add_mcp_servers",
        json!({"identity": name, "server_configs": configs("second"), "overwrite": true}),
    )
    .await;
    assert!(marker(&a, &name).await.ends_with(" second"));

    // The sandbox's own MCP routes (what a client talking to the sandbox's URL uses).
    let rb = a.proxy(Method::GET, &name, "mcp/list_tools");
    let groups = expect_ok(send(rb).await, "mcp/list_tools");
    assert!(groups["calc"]["add"].is_object(), "{groups}");
    let rb = a
        .proxy(Method::POST, &name, "mcp/call_tool")
        .json(&json!({"tool_name": "add", "arguments": {"a": 1, "b": 1}}));
    let r = expect_ok(send(rb).await, "mcp/call_tool");
    assert_eq!(r["content"][0]["text"], "2", "{r}");

    // A server that cannot start is named with the reason; the running one is untouched.
    let (status, reply) = a
        .post(
            "add_mcp_servers",
            json!({"identity": name, "server_configs": {"mcpServers": {
                "missing": {"command": "python3", "args": ["/workspace/no_such_server.py"]},
            }}}),
        )
        .await;
    assert_eq!(status, 500, "{reply}");
    let detail = reply["detail"].as_str().unwrap();
    assert!(
        detail.contains("Failed to initialize server: missing")
            && detail.contains("exited with code 2"),
        "{detail}"
    );
    let r = a.tool(&name, "add", json!({"a": 3, "b": 4})).await;
    assert_eq!(r["content"][0]["text"], "7", "{r}");

    // Releasing the sandbox ends its MCP server with it.
    // The agent and the MCP server (at least) live in the sandbox's cgroups.
    let pids = sandbox_pids(&server.cgroup_parent);
    assert!(pids.len() >= 2, "{pids:?}");
    assert_eq!(a.call("release", json!({"identity": name})).await, true);
    for pid in pids {
        assert!(!pid_alive(pid), "pid {pid} outlived its sandbox");
    }
}

/// The `filesystem` type's tools on a real sandbox: each answers in the MCP filesystem
/// server's words, the files are the sandbox's (the shell sees them), and escapes by path or
/// by symlink are refused.
#[tokio::test(flavor = "multi_thread")]
async fn filesystem_type_tools_work_on_the_sandbox_files() {
    let server = server(&[]).await;
    let a = Agentscope::new(&server);
    let name = a.create(json!({"sandbox_type": "filesystem"})).await;
    let tools = a.call("list_tools", json!({"identity": name})).await;
    let groups: Vec<&String> = tools.as_object().unwrap().keys().collect();
    assert_eq!(groups, ["filesystem", "generic"], "{tools}");
    assert_eq!(
        tools["filesystem"].as_object().unwrap().len(),
        11,
        "{tools}"
    );

    let text = |r: &Value| {
        r["content"][0]["text"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let steps: &[(&str, Value, &str, bool)] = &[
        ("write_file", json!({"path": "notes/a.txt", "content": "alpha\nbeta\n"}), "Successfully wrote to notes/a.txt", false),
        ("read_file", json!({"path": "/workspace/notes/a.txt"}), "alpha\nbeta\n", false),
        ("create_directory", json!({"path": "src/pkg"}), "Successfully created directory src/pkg", false),
        ("write_file", json!({"path": "src/pkg/Main.py", "content": "print('hi')\n"}), "Successfully wrote to src/pkg/Main.py", false),
        ("list_directory", json!({"path": "."}), "[DIR] notes\n[DIR] src", false),
        ("move_file", json!({"source": "notes/a.txt", "destination": "notes/b.txt"}), "Successfully moved notes/a.txt to notes/b.txt", false),
        ("search_files", json!({"path": "/workspace", "pattern": "main"}), "/workspace/src/pkg/Main.py", false),
        ("list_allowed_directories", json!({}), "Allowed directories:\n/workspace", false),
        ("read_file", json!({"path": "../etc/passwd"}), "Error: Access denied - path outside allowed directories: /etc/passwd not in /workspace", true),
        ("write_file", json!({"path": "/tmp/x", "content": "x"}), "Error: Access denied - path outside allowed directories: /tmp/x not in /workspace", true),
    ];
    for (tool, args, want, is_error) in steps {
        let r = a.tool(&name, tool, args.clone()).await;
        assert_eq!(r["isError"], *is_error, "{tool} {args}: {r}");
        assert_eq!(text(&r), *want, "{tool} {args}");
    }
    let r = a
        .tool(
            &name,
            "edit_file",
            json!({"path": "notes/b.txt", "edits": [{"oldText": "beta", "newText": "gamma"}]}),
        )
        .await;
    assert_eq!(r["isError"], false, "{r}");
    assert!(text(&r).contains("-beta\n+gamma"), "{r}");
    let r = a
        .tool(&name, "get_file_info", json!({"path": "notes/b.txt"}))
        .await;
    assert!(
        text(&r).starts_with("size: 12\n") && text(&r).contains("isFile: true"),
        "{r}"
    );

    // The shell sees the same files; a symlink out is refused by the agent's confinement.
    let r = a
        .shell(
            &name,
            "cat notes/b.txt src/pkg/Main.py; ln -s /etc/passwd notes/link",
        )
        .await;
    assert_eq!(stdout(&r), "alpha\ngamma\nprint('hi')\n");
    let r = a
        .tool(&name, "read_file", json!({"path": "notes/link"}))
        .await;
    assert_eq!(r["isError"], true, "{r}");
    assert_eq!(
        text(&r),
        "Error: Access denied - symlink target outside allowed directories"
    );
    assert_eq!(a.call("release", json!({"identity": name})).await, true);
}

/// A type from an extension file (`SANDBOXD_EXTENSIONS`) on a real sandbox: its environment,
/// its resources as the sandbox's limits, its tool groups, and its per-call timeout.
#[tokio::test(flavor = "multi_thread")]
async fn extension_type_gives_its_environment_limits_tools_and_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let ext = dir.path().join("types.toml");
    std::fs::write(
        &ext,
        r#"
[[sandbox]]
type = "e2e_custom"
template = "base"
description = "an e2e type"
timeout = 3
tools = ["generic", "filesystem"]
[sandbox.environment]
E2E_GREETING = "from the type"
[sandbox.resources]
memory_mb = 192
pids = 96
"#,
    )
    .unwrap();
    let server = server(&[("SANDBOXD_EXTENSIONS", ext.to_str().unwrap())]).await;
    let a = Agentscope::new(&server);
    let name = a.create(json!({"sandbox_type": "e2e_custom"})).await;
    let info = a.info(&name).await;
    assert_eq!(
        (info["sandbox_type"].as_str(), info["timeout"].as_u64()),
        (Some("e2e_custom"), Some(3)),
        "{info}"
    );
    let tools = a.call("list_tools", json!({"identity": name})).await;
    assert!(tools["filesystem"]["write_file"].is_object(), "{tools}");

    let r = a
        .shell(
            &name,
            "echo $E2E_GREETING; cat /sys/fs/cgroup/pids.max 2>/dev/null || true",
        )
        .await;
    assert!(stdout(&r).starts_with("from the type\n"), "{r}");
    // The limits are the box's: the /v1 view of the sandbox and its memory cgroup agree.
    let (status, sb) =
        send(a.request(Method::GET, &format!("/v1/sandboxes/{}", sandbox_id(&name)))).await;
    assert_eq!(status, 200, "{sb}");
    assert_eq!(
        (
            sb["resources"]["memory_mb"].as_u64(),
            sb["resources"]["pids"].as_u64()
        ),
        (Some(192), Some(96)),
        "{sb}"
    );
    let limit = sandbox_cgroups(&server.cgroup_parent)
        .iter()
        .filter_map(|d| {
            std::fs::read_to_string(d.join("memory.limit_in_bytes"))
                .or_else(|_| std::fs::read_to_string(d.join("memory.max")))
                .ok()
        })
        .find_map(|s| s.trim().parse::<u64>().ok())
        .expect("a memory limit in the sandbox's cgroup");
    assert_eq!(limit, 192 << 20);

    // The type's timeout bounds one call: the command is killed and the result says so.
    let t0 = Instant::now();
    let r = a.shell(&name, "sleep 30").await;
    assert!(t0.elapsed() < Duration::from_secs(20), "{r}");
    assert!(
        is_error(&r) && texts(&r)["stderr"].contains("timed out"),
        "{r}"
    );
    assert_eq!(a.call("release", json!({"identity": name})).await, true);
}

/// `stop` freezes the sandbox (`get_status` says `exited`, tools are refused) and `start` lets
/// it run on with its state.
#[tokio::test(flavor = "multi_thread")]
async fn stop_freezes_and_start_continues() {
    let server = server(&[]).await;
    let a = Agentscope::new(&server);
    let name = a.create(json!({"sandbox_type": "base"})).await;
    a.ipython(&name, "n = 7").await;
    assert_eq!(a.call("stop", json!({"identity": name})).await, true);
    assert_eq!(
        a.call("get_status", json!({"identity": name})).await,
        "exited"
    );
    let r = a.shell(&name, "true").await;
    assert!(is_error(&r), "{r}");
    assert!(
        r["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("is not running"),
        "{r}"
    );
    assert_eq!(a.call("start", json!({"identity": name})).await, true);
    assert_eq!(
        a.call("get_status", json!({"identity": name})).await,
        "running"
    );
    assert_eq!(stdout(&a.ipython(&name, "print(n * 6)").await), "42\n");
    assert_eq!(a.call("release", json!({"identity": name})).await, true);
}

/// The guest agent killed inside a sandbox: `get_status` says `exited` and `get_info` `error`,
/// tools answer an error, and `start` brings the sandbox back (a new box over the same
/// workspace, the same name), as a container that died starts again.
#[tokio::test(flavor = "multi_thread")]
async fn killed_agent_is_reported_and_start_restarts_it() {
    let server = server(&[]).await;
    let a = Agentscope::new(&server);
    let name = a.create(json!({"sandbox_type": "base"})).await;
    assert_eq!(
        stdout(
            &a.shell(&name, "echo kept > /workspace/kept.txt && echo ok")
                .await
        ),
        "ok\n"
    );
    // PID 1 of the sandbox (the agent) by its host pid: the one whose innermost pid is 1.
    let agent = sandbox_pids(&server.cgroup_parent)
        .into_iter()
        .find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/status"))
                .unwrap_or_default()
                .lines()
                .find_map(|l| l.strip_prefix("NSpid:"))
                .and_then(|f| f.split_whitespace().last().map(|l| l == "1"))
                .unwrap_or(false)
        })
        .expect("the agent's host pid");
    // SAFETY: kill(2) of the agent of this test server's own sandbox.
    assert_eq!(unsafe { libc::kill(agent, libc::SIGKILL) }, 0);
    let deadline = Instant::now() + Duration::from_secs(60);
    while a.call("get_status", json!({"identity": name})).await != "exited" {
        assert!(Instant::now() < deadline, "the dead agent is not reported");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(a.info(&name).await["state"], "error");
    let r = a.shell(&name, "true").await;
    assert!(is_error(&r), "{r}");

    assert_eq!(a.call("start", json!({"identity": name})).await, true);
    assert_eq!(
        a.call("get_status", json!({"identity": name})).await,
        "running"
    );
    assert_eq!(
        stdout(&a.shell(&name, "cat /workspace/kept.txt").await),
        "kept\n"
    );
    assert_eq!(a.call("release", json!({"identity": name})).await, true);
}
