//! AgentScope Runtime's protocol driven in process (`Router::oneshot`) over the fake backend:
//! the `{"data": ...}` envelope, `_async` twins and the `args` alias, the FastAPI error shapes,
//! the generic tools' CallToolResults, and the `/proxy/{identity}/workspace/...` file routes.
//! The real Python client runs against a real server in `tests/agentscope/` (repository root).

mod common;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use common::{json_req, Harness};
use sandboxd_core::pool::PoolSpec;
use serde_json::{json, Value};

/// POST an RPC; returns the status and the parsed reply.
async fn rpc(h: &Harness, method: &str, body: Value) -> (StatusCode, Value) {
    h.json(Method::POST, &format!("/{method}"), Some(body))
        .await
}

/// POST an RPC that must succeed; returns its `data`.
async fn data(h: &Harness, method: &str, body: Value) -> Value {
    let (status, v) = rpc(h, method, body).await;
    assert_eq!(status, StatusCode::OK, "{method}: {v}");
    let obj = v.as_object().expect("an object");
    assert_eq!(obj.len(), 1, "{v}");
    v["data"].clone()
}

/// POST an RPC that must fail; returns its `detail`.
async fn detail(h: &Harness, method: &str, body: Value) -> String {
    let (status, v) = rpc(h, method, body).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{method}: {v}");
    let d = v["detail"].as_str().expect("a detail").to_string();
    assert!(d.starts_with(&format!("Error in {method}: ")), "{d}");
    d
}

async fn create(h: &Harness, session: &str) -> String {
    let name = data(
        h,
        "create_from_pool",
        json!({"sandbox_type": "base", "meta": {"session_ctx_id": session}}),
    )
    .await;
    name.as_str().expect("a name").to_string()
}

#[tokio::test]
async fn lifecycle_envelope_aliases_and_sessions() {
    let h = Harness::new(None).await;
    let name = create(&h, "s1").await;
    assert!(name.starts_with("sandboxd-sb-"), "{name}");
    let id = name.trim_start_matches("sandboxd-");

    // get_info by name, by bare id, with `args`, and through the async twin.
    for body in [
        json!({"identity": name}),
        json!({"identity": id}),
        json!({"args": name}),
        json!({"identity": name, "_redirect_depth": 0}),
    ] {
        for m in ["get_info", "get_info_async"] {
            let info = data(&h, m, body.clone()).await;
            assert_eq!(info["container_name"], name.as_str());
            assert_eq!(info["container_id"], id);
            assert_eq!(info["session_id"], id);
            assert_eq!(info["sandbox_type"], "base");
            assert_eq!(info["state"], "running");
            assert_eq!(info["session_ctx_id"], "s1");
            assert_eq!(info["meta"], json!({"session_ctx_id": "s1"}));
            assert!(info["version"].as_str().unwrap().contains("sandbox-base"));
            assert_eq!(info["ports"], json!([]));
            assert!(info["url"]
                .as_str()
                .unwrap()
                .ends_with(&format!("/proxy/{name}")));
            for key in [
                "mount_dir",
                "storage_path",
                "runtime_token",
                "timeout",
                "last_active_at",
                "recycled_at",
                "released_at",
                "updated_at",
                "recycle_reason",
                "redirect_to",
            ] {
                assert!(info.get(key).is_some(), "{key} missing in {info}");
            }
        }
    }

    // The async client's types run from the same template.
    let other = data(&h, "create_async", json!({"sandbox_type": "base_async"})).await;
    let info = data(&h, "get_info", json!({"identity": other})).await;
    assert_eq!(info["sandbox_type"], "base_async");
    assert!(info["version"].as_str().unwrap().contains("sandbox-base"));
    assert_eq!(info["session_ctx_id"], Value::Null);

    // Sessions.
    assert_eq!(
        data(&h, "get_session_mapping", json!({"session_ctx_id": "s1"})).await,
        json!([name])
    );
    assert_eq!(
        data(&h, "get_session_mapping_async", json!({"args": "s1"})).await,
        json!([name])
    );
    assert_eq!(
        data(&h, "get_session_mapping", json!({"session_ctx_id": "nope"})).await,
        json!([])
    );
    assert_eq!(
        data(&h, "list_session_keys", json!({})).await,
        json!(["s1"])
    );

    // Status, start, stop, health.
    assert_eq!(
        data(&h, "get_status", json!({"identity": name})).await,
        "running"
    );
    assert_eq!(
        data(
            &h,
            "get_status_async",
            json!({"args": "sandboxd-sb-0000000000000000"})
        )
        .await,
        Value::Null
    );
    assert_eq!(data(&h, "start", json!({"identity": name})).await, true);
    assert_eq!(data(&h, "stop", json!({"identity": name})).await, true);
    assert_eq!(
        data(&h, "get_status", json!({"identity": name})).await,
        "exited"
    );
    assert_eq!(
        data(&h, "get_info", json!({"identity": name})).await["state"],
        "running"
    );
    assert_eq!(
        data(&h, "check_health", json!({"identity": name})).await,
        false
    );
    assert_eq!(data(&h, "start_async", json!({"args": name})).await, true);
    assert_eq!(
        data(&h, "get_status", json!({"identity": name})).await,
        "running"
    );
    assert_eq!(
        data(&h, "check_health", json!({"identity": name})).await,
        true
    );
    assert_eq!(
        data(&h, "check_health_async", json!({"identity": id})).await,
        true
    );

    // Release: true, also for what is gone or never was.
    assert_eq!(data(&h, "release", json!({"identity": name})).await, true);
    assert_eq!(
        data(&h, "release_async", json!({"identity": name})).await,
        true
    );
    assert_eq!(
        data(&h, "release", json!({"identity": "whatever"})).await,
        true
    );
    let d = detail(&h, "get_info", json!({"identity": name})).await;
    assert_eq!(
        d,
        format!("Error in get_info: No container found with id: {name}.")
    );
    assert_eq!(
        data(&h, "list_session_keys_async", json!({})).await,
        json!([])
    );

    // Cleanup removes every sandbox.
    create(&h, "s2").await;
    assert_eq!(data(&h, "cleanup", json!({})).await, Value::Null);
    assert!(h
        .manager
        .list(&Default::default())
        .await
        .unwrap()
        .is_empty());
    assert_eq!(h.backend.live_boxes(), 0);
    // An empty body is `{}`.
    let (status, _, body) = h
        .call(Request::post("/cleanup_async").body(Body::empty()).unwrap())
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap(),
        json!({"data": null})
    );
}

#[tokio::test]
async fn tools_and_call_results() {
    let h = Harness::new(None).await;
    let name = create(&h, "t").await;

    let tools = data(
        &h,
        "list_tools",
        json!({"identity": name, "tool_type": null}),
    )
    .await;
    let generic = tools["generic"].as_object().unwrap();
    assert_eq!(tools.as_object().unwrap().len(), 1);
    let mut names: Vec<&String> = generic.keys().collect();
    names.sort();
    assert_eq!(names, ["run_ipython_cell", "run_shell_command"]);
    assert_eq!(
        generic["run_shell_command"],
        json!({"name": "run_shell_command", "json_schema": {"type": "function", "function": {
            "name": "run_shell_command", "description": "Run a shell command.",
            "parameters": {"type": "object", "properties": {"command": {
                "type": "string", "description": "Shell command to execute"}},
                "required": ["command"]}}}})
    );
    assert_eq!(
        data(
            &h,
            "list_tools_async",
            json!({"identity": name, "tool_type": "generic"})
        )
        .await,
        json!({"generic": tools["generic"]})
    );
    assert_eq!(
        data(
            &h,
            "list_tools",
            json!({"identity": name, "tool_type": "mcp"})
        )
        .await,
        json!({"mcp": {}})
    );

    // The exact CallToolResult of a shell command.
    let call =
        |tool: &str, args: Value| json!({"identity": name, "tool_name": tool, "arguments": args});
    let r = data(
        &h,
        "call_tool",
        call("run_shell_command", json!({"command": "echo hi there"})),
    )
    .await;
    assert_eq!(
        r,
        json!({"meta": null, "content": [
            {"type": "text", "text": "hi there\n", "annotations": null, "meta": null, "description": "stdout"},
            {"type": "text", "text": "0", "annotations": null, "meta": null, "description": "returncode"},
        ], "structuredContent": null, "isError": false})
    );
    // stderr makes it an error; the return code is reported.
    let r = data(
        &h,
        "call_tool_async",
        call("run_shell_command", json!({"command": "fail"})),
    )
    .await;
    assert_eq!(r["isError"], true);
    let descriptions: Vec<&str> = r["content"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["description"].as_str().unwrap())
        .collect();
    assert_eq!(descriptions, ["stdout", "stderr", "returncode"]);
    assert_eq!(r["content"][1]["text"], "oops\n");
    assert_eq!(r["content"][2]["text"], "3");

    // Python: stdout, then the final value; an exception goes to stderr.
    let r = data(
        &h,
        "call_tool",
        call("run_ipython_cell", json!({"code": "x = 1"})),
    )
    .await;
    assert_eq!(r["isError"], false);
    assert_eq!(r["content"].as_array().unwrap().len(), 1);
    assert_eq!(r["content"][0]["text"], "ran x = 1\n2\n");
    assert_eq!(r["content"][0]["description"], "stdout");
    let r = data(
        &h,
        "call_tool",
        call("run_ipython_cell", json!({"code": "1/0"})),
    )
    .await;
    assert_eq!(r["isError"], true);
    assert_eq!(r["content"][1]["description"], "stderr");

    // Tool failures are isError results, not HTTP errors.
    for (tool, args) in [
        ("nope", json!({})),
        ("run_shell_command", json!({})),
        ("run_shell_command", json!({"command": ""})),
        ("run_shell_command", json!({"cmd": "ls"})),
        ("run_ipython_cell", json!({"code": 5})),
    ] {
        let r = data(&h, "call_tool", call(tool, args.clone())).await;
        assert_eq!(r["isError"], true, "{tool} {args}: {r}");
        assert!(!r["content"][0]["text"].as_str().unwrap().is_empty());
    }

    // A sandbox that does not exist is an RPC error.
    let d = detail(
        &h,
        "call_tool",
        json!({"identity": "sandboxd-sb-0000000000000000", "tool_name": "run_shell_command",
               "arguments": {"command": "echo"}}),
    )
    .await;
    assert!(d.contains("No container found"), "{d}");

    // An empty mcpServers adds nothing and succeeds, as upstream.
    let ok = data(
        &h,
        "add_mcp_servers",
        json!({"identity": name, "server_configs": {"mcpServers": {}}, "overwrite": false}),
    )
    .await;
    assert_eq!(ok, "OK");
}

/// `add_mcp_servers`, then the servers' tools in `list_tools` (a group per server) and
/// `call_tool`, over RPC and the sandbox's own proxy routes (the fake agent's MCP servers have
/// one tool each, `<name>_echo`; the real agent and a real MCP server are in the e2e suite).
#[tokio::test]
async fn mcp_servers_add_list_and_call() {
    let h = Harness::new(None).await;
    let name = create(&h, "mcp").await;
    let configs = json!({"mcpServers": {
        "alpha": {"command": "python3", "args": ["-m", "alpha"], "env": {"K": "v"}},
        "beta": {"command": "beta-server"},
    }});
    let ok = data(
        &h,
        "add_mcp_servers",
        json!({"identity": name, "server_configs": configs}),
    )
    .await;
    assert_eq!(ok, "OK");
    let tools = data(&h, "list_tools", json!({"identity": name})).await;
    let groups: Vec<&String> = tools.as_object().unwrap().keys().collect();
    assert_eq!(groups, ["alpha", "beta", "generic"]);
    let echo = &tools["alpha"]["alpha_echo"];
    assert_eq!(echo["name"], "alpha_echo");
    assert_eq!(
        echo["json_schema"]["function"]["parameters"],
        json!({"type": "object", "properties": {"text": {"type": "string"}}, "required": []})
    );
    let only = data(
        &h,
        "list_tools",
        json!({"identity": name, "tool_type": "beta"}),
    )
    .await;
    assert_eq!(only.as_object().unwrap().len(), 1);
    assert!(only["beta"]["beta_echo"].is_object());

    let r = data(
        &h,
        "call_tool",
        json!({"identity": name, "tool_name": "beta_echo", "arguments": {"text": "hi"}}),
    )
    .await;
    assert_eq!(
        r,
        json!({
            "meta": null,
            "content": [{"type": "text", "text": "hi", "annotations": null, "meta": null}],
            "structuredContent": null,
            "isError": false,
        })
    );
    // An unknown tool's message lists every tool the sandbox has, MCP ones included.
    let r = data(
        &h,
        "call_tool",
        json!({"identity": name, "tool_name": "nope", "arguments": {}}),
    )
    .await;
    assert_eq!(r["isError"], true);
    let msg = r["content"][0]["text"].as_str().unwrap();
    assert!(
        msg.contains("alpha_echo") && msg.contains("run_shell_command"),
        "{msg}"
    );

    // The sandbox's own routes, as a client talking to the sandbox's URL uses them.
    let base = format!("/proxy/{name}/mcp");
    let (status, _, body) =
        proxy(&h, Method::GET, &format!("{base}/list_tools"), None, vec![]).await;
    assert_eq!(status, StatusCode::OK);
    let groups = parse(&body);
    assert!(groups["alpha"]["alpha_echo"].is_object());
    assert!(groups.get("generic").is_none(), "{groups}");
    let call = json!({"tool_name": "alpha_echo", "arguments": {"text": "via proxy"}});
    let (status, _, body) = proxy(
        &h,
        Method::POST,
        &format!("{base}/call_tool"),
        Some("application/json"),
        serde_json::to_vec(&call).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(parse(&body)["content"][0]["text"], "via proxy");
    let add = json!({"server_configs": {"mcpServers": {"gamma": {"command": "g"}}}});
    let (status, _, body) = proxy(
        &h,
        Method::POST,
        &format!("{base}/add_servers"),
        Some("application/json"),
        serde_json::to_vec(&add).unwrap(),
    )
    .await;
    assert_eq!((status, body.as_slice()), (StatusCode::OK, &b"OK"[..]));

    // Bad configs are refused with what is wrong; a server that fails is named.
    for (configs, expect) in [
        (json!(null), "server_configs is required"),
        (json!({"servers": {}}), "mcpServers"),
        (
            json!({"mcpServers": {"web": {"url": "http://x/sse"}}}),
            "only stdio",
        ),
        (
            json!({"mcpServers": {"x": {"command": 3}}}),
            "`command` must be a string",
        ),
        (
            json!({"mcpServers": {"broken": {"command": "b"}}}),
            "Failed to initialize server: broken",
        ),
    ] {
        let d = detail(
            &h,
            "add_mcp_servers",
            json!({"identity": name, "server_configs": configs}),
        )
        .await;
        assert!(d.contains(expect), "{d}");
    }
}

#[tokio::test]
async fn errors_and_auth() {
    let h = Harness::new(Some("s3cret")).await;

    // A missing or wrong token: 401, FastAPI's shape on AgentScope routes.
    for (path, method) in [
        ("/create", Method::POST),
        ("/list_session_keys_async", Method::POST),
        (
            "/proxy/sandboxd-sb-0000000000000000/workspace/list?path=.",
            Method::GET,
        ),
    ] {
        for token in [None, Some("nope")] {
            let (status, headers, body) = h
                .call(json_req(method.clone(), path, Some(json!({})), token))
                .await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
            assert_eq!(headers["www-authenticate"], "Bearer");
            let v: Value = serde_json::from_slice(&body).unwrap();
            assert!(v["detail"].as_str().is_some(), "{v}");
            assert!(!String::from_utf8_lossy(&body).contains("s3cret"));
        }
    }
    // /v1 keeps its own shape.
    let (status, _, body) = h
        .call(json_req(Method::GET, "/v1/sandboxes", None, Some("nope")))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["code"], "unauthorized");
    // The right token.
    let (status, _, body) = h
        .call(json_req(
            Method::POST,
            "/list_session_keys",
            Some(json!({})),
            Some("s3cret"),
        ))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap(),
        json!({"data": []})
    );

    // Malformed requests are RPC errors.
    let h = Harness::new(None).await;
    let (status, _, body) = h
        .call(
            Request::post("/create")
                .header("content-type", "application/json")
                .body(Body::from("{not json"))
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert!(
        v["detail"]
            .as_str()
            .unwrap()
            .starts_with("Error in create: "),
        "{v}"
    );
    let d = detail(&h, "create", json!({"sandbox_type": "base", "bogus": 1})).await;
    assert!(d.contains("bogus"), "{d}");
    let d = detail(&h, "release_async", json!({})).await;
    assert!(d.contains("identity"), "{d}");
    let d = detail(&h, "create", json!({"sandbox_type": "browser"})).await;
    assert!(d.contains("browser"), "{d}");
    // Only POST.
    let (status, _) = h.json(Method::GET, "/create", None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn instance_limit_gives_null() {
    let h = Harness::with_config(None, |c| c.max_instances = 1).await;
    let first = data(&h, "create", json!({})).await;
    assert!(first.is_string());
    assert_eq!(data(&h, "create", json!({})).await, Value::Null);
    assert_eq!(
        data(&h, "create_from_pool_async", json!({})).await,
        Value::Null
    );
    assert_eq!(data(&h, "release", json!({"identity": first})).await, true);
    assert!(data(&h, "create", json!({})).await.is_string());
}

/// A request to the proxy; returns status, content type and body.
async fn proxy(
    h: &Harness,
    method: Method,
    uri: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> (StatusCode, String, Vec<u8>) {
    let mut b = Request::builder().method(method).uri(uri);
    if let Some(ct) = content_type {
        b = b.header("content-type", ct);
    }
    let (status, headers, bytes) = h.call(b.body(Body::from(body)).unwrap()).await;
    let ct = headers
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, ct, bytes.to_vec())
}

fn parse(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(bytes)))
}

#[tokio::test]
async fn proxy_file_routes() {
    let h = Harness::new(None).await;
    let name = create(&h, "f").await;
    let base = format!("/proxy/{name}/workspace");

    // Write, then read as text and as bytes.
    let (status, _, body) = proxy(
        &h,
        Method::PUT,
        &format!("{base}/file?path=a.txt"),
        Some("text/plain; charset=utf-8"),
        b"hello".to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let e = parse(&body);
    assert_eq!(e["path"], "/workspace/a.txt");
    assert_eq!(e["name"], "a.txt");
    assert_eq!(e["type"], "file");
    assert_eq!(e["size"], 5);
    assert!(e["mtime_ms"].is_i64());
    let (status, ct, body) = proxy(
        &h,
        Method::GET,
        &format!("{base}/file?path=a.txt"),
        None,
        vec![],
    )
    .await;
    assert_eq!(
        (status, ct.as_str(), body.as_slice()),
        (StatusCode::OK, "text/plain; charset=utf-8", &b"hello"[..])
    );
    let (status, ct, body) = proxy(
        &h,
        Method::GET,
        &format!("{base}/file?path=/workspace/a.txt&format=bytes"),
        None,
        vec![],
    )
    .await;
    assert_eq!(
        (status, ct.as_str(), body.as_slice()),
        (StatusCode::OK, "application/octet-stream", &b"hello"[..])
    );
    let (status, _, body) = proxy(
        &h,
        Method::GET,
        &format!("{base}/file?path=missing"),
        None,
        vec![],
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(parse(&body), json!({"detail": "not found"}));

    // Exists.
    for (path, want) in [("a.txt", true), ("nope", false)] {
        let (status, _, body) = proxy(
            &h,
            Method::GET,
            &format!("{base}/exists?path={path}"),
            None,
            vec![],
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(parse(&body), json!({"exists": want}));
    }

    // Mkdir: created, then not.
    for want in [true, false] {
        let (status, _, body) = proxy(
            &h,
            Method::POST,
            &format!("{base}/mkdir"),
            Some("application/json"),
            br#"{"path": "d"}"#.to_vec(),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(parse(&body), json!({"created": want}));
    }
    let (status, _, _) = proxy(
        &h,
        Method::POST,
        &format!("{base}/mkdir"),
        Some("application/json"),
        br#"{"path": "a.txt"}"#.to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);

    // Move.
    let (status, _, body) = proxy(
        &h,
        Method::POST,
        &format!("{base}/move"),
        Some("application/json"),
        br#"{"source": "a.txt", "destination": "d/b.txt"}"#.to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(parse(&body)["path"], "/workspace/d/b.txt");
    let (status, _, body) = proxy(
        &h,
        Method::POST,
        &format!("{base}/move"),
        Some("application/json"),
        br#"{"source": "gone", "destination": "x"}"#.to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(parse(&body), json!({"detail": "source not found"}));

    // Batch upload, paths before their files (the async client's order) and all paths first
    // (requests' order).
    let boundary = "XyZ";
    let part_path = |p: &str| {
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"paths\"\r\n\r\n{p}\r\n")
    };
    let part_file = |n: &str, data: &str| {
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{n}\"\r\n\
             Content-Type: application/octet-stream\r\n\r\n{data}\r\n"
        )
    };
    let bodies = [
        format!(
            "{}{}{}{}--{boundary}--\r\n",
            part_path("m/one.txt"),
            part_file("one.txt", "1"),
            part_path("two.txt"),
            part_file("two.txt", "22")
        ),
        format!(
            "{}{}{}{}--{boundary}--\r\n",
            part_path("m/one.txt"),
            part_path("two.txt"),
            part_file("one.txt", "1"),
            part_file("two.txt", "22")
        ),
        // Files before paths: held until their paths come.
        format!(
            "{}{}{}{}--{boundary}--\r\n",
            part_file("one.txt", "1"),
            part_file("two.txt", "22"),
            part_path("m/one.txt"),
            part_path("two.txt")
        ),
    ];
    for body in bodies {
        let (status, _, reply) = proxy(
            &h,
            Method::POST,
            &format!("{base}/files:batch"),
            Some(&format!("multipart/form-data; boundary={boundary}")),
            body.into_bytes(),
        )
        .await;
        assert_eq!(
            status,
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(&reply)
        );
        let v = parse(&reply);
        let paths: Vec<&str> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["path"].as_str().unwrap())
            .collect();
        assert_eq!(paths, ["/workspace/m/one.txt", "/workspace/two.txt"]);
        assert_eq!(v[1]["size"], 2);
    }
    let mismatched = format!("{}{}--{boundary}--\r\n", part_path("a"), part_path("b"));
    let (status, _, _) = proxy(
        &h,
        Method::POST,
        &format!("{base}/files:batch"),
        Some(&format!("multipart/form-data; boundary={boundary}")),
        mismatched.into_bytes(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // List (flat entries).
    let (status, _, body) = proxy(
        &h,
        Method::GET,
        &format!("{base}/list?path=.&depth=1"),
        None,
        vec![],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let v = parse(&body);
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"two.txt") && names.contains(&"d"), "{v}");
    let dir = v
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "d")
        .unwrap();
    assert_eq!(dir["type"], "dir");
    assert_eq!(dir["size"], Value::Null);
    // (A missing directory is 404 on a real agent; the fake one lists nothing: see the Python
    // suite.)

    // Remove: 204, also when already gone.
    for _ in 0..2 {
        let (status, _, _) = proxy(
            &h,
            Method::DELETE,
            &format!("{base}/entry?path=two.txt"),
            None,
            vec![],
        )
        .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
    }
    let (_, _, body) = proxy(
        &h,
        Method::GET,
        &format!("{base}/exists?path=two.txt"),
        None,
        vec![],
    )
    .await;
    assert_eq!(parse(&body), json!({"exists": false}));

    // Escapes are 403; an unknown sandbox 404; an unknown route 404; a wrong method 405.
    for uri in [
        format!("{base}/file?path=../etc/passwd"),
        format!("{base}/exists?path=/etc/passwd"),
        format!("{base}/list?path=.."),
    ] {
        let (status, _, body) = proxy(&h, Method::GET, &uri, None, vec![]).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{uri}");
        assert!(parse(&body)["detail"].is_string());
    }
    let (status, _, body) = proxy(
        &h,
        Method::PUT,
        &format!("{base}/file?path=../x"),
        None,
        b"x".to_vec(),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "{}",
        String::from_utf8_lossy(&body)
    );
    let (status, _, body) = proxy(
        &h,
        Method::GET,
        "/proxy/sandboxd-sb-0000000000000000/workspace/list?path=.",
        None,
        vec![],
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        parse(&body),
        json!({"detail": "sandbox not found: sandboxd-sb-0000000000000000"})
    );
    let (status, _, _) = proxy(&h, Method::GET, &format!("{base}/nope"), None, vec![]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = proxy(
        &h,
        Method::PATCH,
        &format!("{base}/file?path=a"),
        None,
        vec![],
    )
    .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);

    // The runtime's own routes.
    let (status, _, body) = proxy(
        &h,
        Method::GET,
        &format!("/proxy/{name}/healthz"),
        None,
        vec![],
    )
    .await;
    assert_eq!((status, body.as_slice()), (StatusCode::OK, &b"OK"[..]));
    let (status, _, body) = proxy(
        &h,
        Method::POST,
        &format!("/proxy/{name}/tools/run_shell_command"),
        Some("application/json"),
        br#"{"command": "echo x"}"#.to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(parse(&body)["content"][0]["text"], "x\n");
}

/// The warm sandboxes of the manager, once there are exactly `n` (waits for the refill).
async fn warm(h: &Harness, n: usize) -> Vec<sandboxd_types::Sandbox> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let all = h.manager.list(&Default::default()).await.unwrap();
        let warm: Vec<_> = all
            .into_iter()
            .filter(|s| s.state == sandboxd_types::SandboxState::Warm)
            .collect();
        if warm.len() == n {
            return warm;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} warm, want {n}",
            warm.len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn warm_pool_hands_out_refills_and_yields_to_the_limit() {
    let h = Harness::with_config(None, |c| {
        c.pool_size = 2;
        c.pools = vec![PoolSpec::template("base")];
        c.max_instances = 3;
    })
    .await;
    let first = warm(&h, 2).await;
    for w in &first {
        // No timeout while waiting; its own workspace.
        assert_eq!(w.expires_at_ms, None);
        assert_eq!(w.session_id, w.id);
    }
    let (_, list) = h.json(Method::GET, "/v1/sandboxes", None).await;
    assert_eq!(list["sandboxes"][0]["state"], "warm", "{list}");
    let info = data(&h, "get_info", json!({"identity": first[0].id})).await;
    assert_eq!(info["state"], "warm");

    // A dead warm sandbox is skipped: the oldest is killed, the next one is handed out.
    use sandboxd_core::backend::Backend;
    h.backend.destroy(&first[0].id).await.unwrap();
    let name = create(&h, "s1").await;
    let id = name.strip_prefix("sandboxd-").unwrap();
    assert_eq!(id, first[1].id);
    let sb = h.manager.get(id).await.unwrap();
    assert_eq!(sb.state, sandboxd_types::SandboxState::Running);
    assert!(sb.expires_at_ms.is_some());
    assert_eq!(sb.session_id, sb.id);
    let info = data(&h, "get_info", json!({"identity": name})).await;
    assert_eq!(
        (info["state"].as_str(), info["session_ctx_id"].as_str()),
        (Some("running"), Some("s1"))
    );
    assert_eq!(
        data(&h, "get_session_mapping", json!({"session_ctx_id": "s1"})).await,
        json!([name])
    );
    let r = data(
        &h,
        "call_tool",
        json!({"identity": name, "tool_name": "run_shell_command", "arguments": {"command": "echo pooled"}}),
    )
    .await;
    assert_eq!(r["content"][0]["text"], "pooled\n");

    // Refilled to two (the dead one is gone), never more: 1 running + 2 warm = the limit.
    warm(&h, 2).await;
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    warm(&h, 2).await;
    assert_eq!(h.backend.live_boxes(), 3);

    // A cold create at the limit takes a warm sandbox's place.
    let cold = data(&h, "create", json!({})).await;
    assert!(cold.is_string(), "{cold}");
    warm(&h, 1).await;
    // The last warm one is handed out; then the pool is empty and there is no room left.
    let last = create(&h, "s2").await;
    warm(&h, 0).await;
    assert_eq!(
        data(
            &h,
            "create_from_pool",
            json!({"meta": {"session_ctx_id": "s3"}})
        )
        .await,
        Value::Null
    );
    // Room again: the pool refills.
    assert_eq!(data(&h, "release", json!({"identity": last})).await, true);
    warm(&h, 1).await;

    // Shutdown removes warm sandboxes too.
    h.manager.shutdown().await;
    assert_eq!(h.backend.live_boxes(), 0);
    assert!(h
        .manager
        .list(&Default::default())
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn pool_of_an_unpooled_type_is_a_cold_create() {
    let h = Harness::with_config(None, |c| {
        c.pool_size = 1;
        c.pools = vec![PoolSpec::template("base"), PoolSpec::template("missing")];
    })
    .await;
    warm(&h, 1).await;
    // Environment variables: always cold (the warm one was started without them).
    let name = data(
        &h,
        "create_from_pool",
        json!({"sandbox_type": "base", "environment": {"A": "1"}}),
    )
    .await;
    let id = name
        .as_str()
        .unwrap()
        .strip_prefix("sandboxd-")
        .unwrap()
        .to_string();
    let env = h.manager.get(&id).await.unwrap();
    assert_eq!(env.state, sandboxd_types::SandboxState::Running);
    warm(&h, 1).await;
    assert_eq!(h.backend.live_boxes(), 2);
    // The core's hand-out: none for a type without a pool.
    assert!(h
        .manager
        .create_from_pool("missing", Default::default(), None)
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn heartbeat_recycles_idle_sessions_and_a_touch_restores_them() {
    use sandboxd_server::agentscope::heartbeat::scan_once;
    use sandboxd_types::SandboxState;
    // HEARTBEAT_TIMEOUT=1; scans are run by hand (no scanner task) to stay deterministic.
    let h = Harness::with_config(None, |c| c.pool_size = 0)
        .await
        .with_state(|s| s.with_heartbeat(1, 1));
    let name = create(&h, "hb").await;
    let other = create(&h, "hb").await;
    let lone = data(&h, "create", json!({})).await;
    let id = name.strip_prefix("sandboxd-").unwrap().to_string();
    // The heartbeat governs a session's sandboxes: no SANDBOX_TIMEOUT.
    let sb = h.manager.get(&id).await.unwrap();
    assert_eq!(sb.expires_at_ms, None);
    let call = |ident: &str, cmd: &str| json!({"identity": ident, "tool_name": "run_shell_command", "arguments": {"command": cmd}});
    data(&h, "call_tool", call(&name, "echo hi")).await;
    assert!(data(&h, "get_info", json!({"identity": name})).await["last_active_at"].is_number());

    // A touched session is not reaped; an idle one is.
    scan_once(&h.state).await;
    assert_eq!(
        h.manager.get(&id).await.unwrap().state,
        SandboxState::Running
    );
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    scan_once(&h.state).await;
    let old = h.manager.get(&id).await.unwrap();
    assert_eq!(old.state, SandboxState::Recycled);
    // Only the lone sandbox (no session) keeps its box.
    assert_eq!(h.backend.live_boxes(), 1);
    let info = data(&h, "get_info", json!({"identity": name})).await;
    assert_eq!(info["state"], "recycled");
    assert_eq!(info["recycle_reason"], "heartbeat timeout");
    assert!(info["recycled_at"].is_number());
    assert_eq!(
        data(&h, "get_session_mapping", json!({"session_ctx_id": "hb"}))
            .await
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert!(data(&h, "get_status", json!({"identity": lone})).await == "running");

    // The next touch restores the whole session on the same workspaces.
    assert_eq!(
        data(&h, "check_health", json!({"identity": name})).await,
        true
    );
    let old = h.manager.get(&id).await.unwrap();
    assert_eq!(old.state, SandboxState::Replaced);
    let new_id = old.replaced_by.clone().unwrap();
    let new = h.manager.get(&new_id).await.unwrap();
    assert_eq!(new.state, SandboxState::Running);
    assert_eq!(new.session_id, old.session_id);
    assert_eq!(
        new.metadata
            .get("agentscope.session_ctx_id")
            .map(String::as_str),
        Some("hb")
    );
    let other_id = other.strip_prefix("sandboxd-").unwrap();
    assert_eq!(
        h.manager.get(other_id).await.unwrap().state,
        SandboxState::Replaced
    );
    assert_eq!(h.backend.live_boxes(), 3);
    // The old name keeps working: get_info follows the redirect, tools run in the new box.
    let info = data(&h, "get_info", json!({"identity": name})).await;
    assert_eq!(info["container_name"], format!("sandboxd-{new_id}"));
    assert_eq!(info["state"], "running");
    let r = data(&h, "call_tool", call(&name, "echo back")).await;
    assert_eq!(r["content"][0]["text"], "back\n");
    let (_, v) = h
        .json(Method::GET, &format!("/v1/sandboxes/{id}"), None)
        .await;
    assert_eq!(v["state"], "replaced");
    assert_eq!(v["replaced_by"], new_id.as_str());
    // Releasing the old name releases the new sandbox, and the old record.
    assert_eq!(data(&h, "release", json!({"identity": name})).await, true);
    assert!(h.manager.get(&id).await.is_err());
    assert!(h.manager.get(&new_id).await.is_err());
}

/// A `call_tool` body.
fn tool_call(identity: &str, tool: &str, arguments: Value) -> Value {
    json!({"identity": identity, "tool_name": tool, "arguments": arguments})
}

/// The one text of a filesystem tool's result, and whether it is an error.
async fn fs_tool(h: &Harness, identity: &str, tool: &str, arguments: Value) -> (String, bool) {
    let r = data(h, "call_tool", tool_call(identity, tool, arguments)).await;
    let content = r["content"].as_array().expect("content");
    assert_eq!(content.len(), 1, "{r}");
    assert_eq!(
        content[0],
        json!({"type": "text", "text": content[0]["text"], "annotations": null, "meta": null})
    );
    (
        content[0]["text"].as_str().unwrap().to_string(),
        r["isError"].as_bool().unwrap(),
    )
}

#[tokio::test]
async fn filesystem_tools() {
    let h = Harness::new(None).await;
    let name = data(&h, "create", json!({"sandbox_type": "filesystem"})).await;
    let name = name.as_str().unwrap();
    let tools = data(&h, "list_tools", json!({"identity": name})).await;
    let groups: Vec<&String> = tools.as_object().unwrap().keys().collect();
    assert_eq!(groups, ["filesystem", "generic"]);
    assert_eq!(tools["filesystem"].as_object().unwrap().len(), 11);
    let ok = |text: &str| (text.to_string(), false);

    assert_eq!(
        fs_tool(
            &h,
            name,
            "write_file",
            json!({"path": "a.txt", "content": "one\ntwo\n"})
        )
        .await,
        ok("Successfully wrote to a.txt")
    );
    assert_eq!(
        fs_tool(&h, name, "read_file", json!({"path": "/workspace/a.txt"})).await,
        ok("one\ntwo\n")
    );
    assert_eq!(
        fs_tool(&h, name, "read_multiple_files", json!({"paths": ["a.txt", "nope.txt"]})).await,
        ok("a.txt:\none\ntwo\n\n\n---\nnope.txt: Error - ENOENT: no such file or directory, open '/workspace/nope.txt'")
    );
    let (diff, err) = fs_tool(
        &h,
        name,
        "edit_file",
        json!({"path": "a.txt", "edits": [{"oldText": "two", "newText": "2"}], "dryRun": true}),
    )
    .await;
    assert!(!err);
    assert!(
        diff.starts_with("```diff\nIndex: /workspace/a.txt\n"),
        "{diff}"
    );
    assert!(
        diff.contains("\n-two\n+2\n") && diff.ends_with("```\n\n"),
        "{diff}"
    );
    assert_eq!(
        fs_tool(&h, name, "read_file", json!({"path": "a.txt"})).await,
        ok("one\ntwo\n")
    );
    fs_tool(
        &h,
        name,
        "edit_file",
        json!({"path": "a.txt", "edits": [{"oldText": "two", "newText": "2"}]}),
    )
    .await;
    assert_eq!(
        fs_tool(&h, name, "read_file", json!({"path": "a.txt"})).await,
        ok("one\n2\n")
    );
    let (text, err) = fs_tool(
        &h,
        name,
        "edit_file",
        json!({"path": "a.txt", "edits": [{"oldText": "zzz", "newText": ""}]}),
    )
    .await;
    assert!(
        err && text == "Error: Could not find exact match for edit:\nzzz",
        "{text}"
    );

    assert_eq!(
        fs_tool(&h, name, "create_directory", json!({"path": "d"})).await,
        ok("Successfully created directory d")
    );
    assert_eq!(
        fs_tool(&h, name, "list_directory", json!({"path": "."})).await,
        ok("[FILE] a.txt\n[DIR] d")
    );
    assert_eq!(
        fs_tool(
            &h,
            name,
            "move_file",
            json!({"source": "a.txt", "destination": "b.txt"})
        )
        .await,
        ok("Successfully moved a.txt to b.txt")
    );
    assert_eq!(
        fs_tool(
            &h,
            name,
            "search_files",
            json!({"path": "/workspace", "pattern": "B."})
        )
        .await,
        ok("/workspace/b.txt")
    );
    assert_eq!(
        fs_tool(
            &h,
            name,
            "search_files",
            json!({"path": "/workspace", "pattern": "zzz"})
        )
        .await,
        ok("No matches found")
    );
    let (tree, _) = fs_tool(&h, name, "directory_tree", json!({"path": ""})).await;
    let tree: Value = serde_json::from_str(&tree).unwrap();
    assert_eq!(
        tree,
        json!([{"name": "b.txt", "type": "file"}, {"name": "d", "type": "directory", "children": []}])
    );
    let (info, _) = fs_tool(&h, name, "get_file_info", json!({"path": "b.txt"})).await;
    assert!(info.starts_with("size: 6\ncreated: "), "{info}");
    assert!(
        info.ends_with("isDirectory: false\nisFile: true\npermissions: 644"),
        "{info}"
    );
    assert_eq!(
        fs_tool(&h, name, "list_allowed_directories", json!({})).await,
        ok("Allowed directories:\n/workspace")
    );

    // Refused before the agent is asked, and bad arguments, as upstream words them.
    for (tool, args) in [
        ("read_file", json!({"path": "../etc/passwd"})),
        ("write_file", json!({"path": "/etc/passwd", "content": "x"})),
        (
            "move_file",
            json!({"source": "b.txt", "destination": "/tmp/b.txt"}),
        ),
    ] {
        let (text, err) = fs_tool(&h, name, tool, args).await;
        assert!(err, "{tool}");
        assert!(
            text.starts_with("Error: Access denied - path outside allowed directories: /")
                && text.ends_with(" not in /workspace"),
            "{text}"
        );
    }
    let (text, err) = fs_tool(&h, name, "read_file", json!({})).await;
    assert!(
        err && text.starts_with("Error: Invalid arguments for read_file: missing field `path`"),
        "{text}"
    );

    // The generic tools are there too; a base sandbox has no filesystem tools.
    let r = data(
        &h,
        "call_tool",
        tool_call(name, "run_shell_command", json!({"command": "echo hi"})),
    )
    .await;
    assert_eq!(r["content"][0]["text"], "hi\n");
    let base = data(&h, "create", json!({"sandbox_type": "base"})).await;
    let r = data(
        &h,
        "call_tool",
        tool_call(
            base.as_str().unwrap(),
            "read_file",
            json!({"path": "b.txt"}),
        ),
    )
    .await;
    assert_eq!(r["isError"], true);
    assert!(
        r["content"][0]["text"]
            .as_str()
            .unwrap()
            .starts_with("Tool 'read_file' not found"),
        "{r}"
    );
    assert_eq!(
        data(
            &h,
            "list_tools",
            json!({"identity": base, "tool_type": "filesystem"})
        )
        .await,
        json!({"filesystem": {}})
    );
}

/// Sandbox types from an extension file whose templates are in a directory of their own.
fn extension_types(text: &str) -> sandboxd_server::agentscope::types::TypeRegistry {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("base/rootfs")).unwrap();
    std::fs::write(d.path().join("base/ready"), "").unwrap();
    let ext = d.path().join("ext.toml");
    std::fs::write(&ext, text).unwrap();
    let templates = sandboxd_core::templates::Templates::new(d.path());
    sandboxd_server::agentscope::types::TypeRegistry::load(&[ext], &templates).unwrap()
}

#[tokio::test]
async fn extension_types_and_their_pool() {
    let types = extension_types(
        r#"
        [[sandbox]]
        type = "custom"
        template = "base"
        timeout = 7
        tools = ["generic", "filesystem"]
        [sandbox.environment]
        GREETING = "from the type"
        OTHER = "kept"
        "#,
    );
    let custom = types.get("custom").unwrap().pool();
    assert_eq!(custom.name, "type:custom");
    let h = Harness::with_config(None, |c| {
        c.pool_size = 1;
        c.pools = vec![custom, PoolSpec::template("base")];
    })
    .await
    .with_state(|s| s.with_types(types, "custom"));
    // Each warm sandbox carries the name of its pool.
    let warm_custom: Vec<String> = warm(&h, 2)
        .await
        .into_iter()
        .filter(|s| s.metadata.get("sandboxd.pool").map(String::as_str) == Some("type:custom"))
        .map(|s| format!("sandboxd-{}", s.id))
        .collect();
    assert_eq!(warm_custom.len(), 1);

    // No type named: the default type, from its own pool, with the type's environment.
    let named = data(
        &h,
        "create_from_pool",
        json!({"meta": {"session_ctx_id": "c1"}}),
    )
    .await;
    let named = named.as_str().unwrap();
    assert_eq!(named, warm_custom[0]);
    let info = data(&h, "get_info", json!({"identity": named})).await;
    assert_eq!(info["sandbox_type"], "custom");
    assert_eq!(info["timeout"], 7);
    let env = |ident: &str, var: &str| {
        tool_call(
            ident,
            "run_shell_command",
            json!({"command": format!("env {var}")}),
        )
    };
    let r = data(&h, "call_tool", env(named, "GREETING")).await;
    assert_eq!(r["content"][0]["text"], "from the type");
    let tools = data(&h, "list_tools", json!({"identity": named})).await;
    assert_eq!(tools.as_object().unwrap().len(), 2);
    let (text, _) = fs_tool(&h, named, "list_allowed_directories", json!({})).await;
    assert_eq!(text, "Allowed directories:\n/workspace");
    // Recycled and restored on the next touch: the successor has the type's environment too.
    let id = named.strip_prefix("sandboxd-").unwrap();
    h.manager.recycle(id, "test").await.unwrap();
    let r = data(&h, "call_tool", env(named, "GREETING")).await;
    assert_eq!(r["content"][0]["text"], "from the type");
    assert_ne!(h.manager.get(id).await.unwrap().replaced_by, None);

    // The request's variables win over the type's (a cold create).
    let cold = data(
        &h,
        "create_from_pool",
        json!({"sandbox_type": "custom", "environment": {"GREETING": "from the request"}}),
    )
    .await;
    let cold = cold.as_str().unwrap();
    let r = data(&h, "call_tool", env(cold, "GREETING")).await;
    assert_eq!(r["content"][0]["text"], "from the request");
    let r = data(&h, "call_tool", env(cold, "OTHER")).await;
    assert_eq!(r["content"][0]["text"], "kept");

    // A base sandbox never comes from the custom pool: it has no GREETING.
    warm(&h, 2).await;
    let base = data(&h, "create_from_pool", json!({"sandbox_type": "base"})).await;
    let base = base.as_str().unwrap();
    let r = data(&h, "call_tool", env(base, "GREETING")).await;
    assert_eq!(r["content"][0]["text"], "");
    let r = data(
        &h,
        "call_tool",
        tool_call(base, "read_file", json!({"path": "x"})),
    )
    .await;
    assert_eq!(r["isError"], true);
}
