//! MCP servers run by the agent, against a stdlib-only stub server (tests/fixtures) that
//! behaves like awkward real ones. The official MCP SDK's server is exercised end to end in
//! the e2e and AgentScope suites.

mod common;

use std::time::{Duration, Instant};

use common::TestAgent;
use sandboxd_protocol::{AgentErrorKind, McpServerSpec, Request, Response};
use serde_json::{json, Value};

const STUB: &str = include_str!("fixtures/mcp_stub.py");

fn start_spec(agent: &TestAgent, name: &str) -> McpServerSpec {
    std::fs::write(agent.path("stub.py"), STUB).unwrap();
    McpServerSpec {
        server: name.into(),
        command: "python3".into(),
        args: vec!["stub.py".into()],
        env: [("STUB_SECRET".to_string(), "s3".to_string())].into(),
        ..Default::default()
    }
}

/// The answer to an MCP request: the JSON payload, or the error.
fn mcp(
    c: &mut common::Client,
    server: &str,
    method: &str,
    params: Option<Value>,
    timeout_ms: Option<u64>,
) -> Result<Value, (AgentErrorKind, String)> {
    let payload = params
        .map(|p| serde_json::to_vec(&p).unwrap())
        .unwrap_or_default();
    let req = Request::Mcp {
        server: server.into(),
        method: method.into(),
        timeout_ms,
    };
    let mut frames = c.call(&req, &payload);
    assert_eq!(frames.len(), 1);
    let f = frames.remove(0);
    match f.resp {
        Response::McpResult => Ok(serde_json::from_slice(&f.payload).unwrap()),
        Response::Error(e) => Err((e.kind, e.message)),
        other => panic!("unexpected {other:?}"),
    }
}

fn call_tool(
    c: &mut common::Client,
    name: &str,
    args: Value,
) -> Result<Value, (AgentErrorKind, String)> {
    mcp(
        c,
        "stub",
        "tools/call",
        Some(json!({"name": name, "arguments": args})),
        Some(10_000),
    )
}

#[test]
fn start_list_call_and_stop() {
    let agent = TestAgent::start();
    let mut c = agent.connect();
    let spec = start_spec(&agent, "stub");
    let mut frames = c.call(&Request::McpStart(spec.clone()), &[]);
    let f = frames.remove(0);
    assert_eq!(f.resp, Response::McpStarted { started: true });
    let info: Value = serde_json::from_slice(&f.payload).unwrap();
    assert_eq!(info["serverInfo"]["name"], "stub");

    // A second start without replace keeps the running server.
    let frames = c.call(&Request::McpStart(spec.clone()), &[]);
    assert_eq!(frames[0].resp, Response::McpStarted { started: false });
    assert!(frames[0].payload.is_empty());
    assert_eq!(
        c.one(&Request::McpList),
        Response::McpServers {
            servers: vec!["stub".into()]
        }
    );

    let tools = mcp(&mut c, "stub", "tools/list", None, None).unwrap();
    let names: Vec<&str> = tools["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["echo", "sleep", "crash", "env"]);
    let r = call_tool(&mut c, "echo", json!({"text": "hi there"})).unwrap();
    assert_eq!(r["content"][0]["text"], "hi there");
    // The server's environment has the spec's variables.
    let r = call_tool(&mut c, "env", json!({"name": "STUB_SECRET"})).unwrap();
    assert_eq!(r["content"][0]["text"], "s3");

    // A JSON-RPC error answer is a tool failure that names the method and the server's words.
    let (kind, msg) = call_tool(&mut c, "nope", json!({})).unwrap_err();
    assert_eq!(kind, AgentErrorKind::ToolFailed);
    assert!(
        msg.contains("Unknown tool: nope") && msg.contains("tools/call"),
        "{msg}"
    );

    // Another connection reaches the same server.
    let mut c2 = agent.connect();
    assert!(call_tool(&mut c2, "echo", json!({"text": "x"})).is_ok());

    assert_eq!(
        c.one(&Request::McpStop {
            server: "stub".into()
        }),
        Response::Ok
    );
    assert_eq!(
        c.one(&Request::McpList),
        Response::McpServers { servers: vec![] }
    );
    let (kind, _) = call_tool(&mut c, "echo", json!({"text": "x"})).unwrap_err();
    assert_eq!(kind, AgentErrorKind::NotFound);
}

#[test]
fn slow_calls_time_out_with_a_cancellation_and_the_server_stays() {
    let agent = TestAgent::start();
    let mut c = agent.connect();
    let frames = c.call(&Request::McpStart(start_spec(&agent, "stub")), &[]);
    assert_eq!(frames[0].resp, Response::McpStarted { started: true });
    let t0 = Instant::now();
    let (kind, msg) = mcp(
        &mut c,
        "stub",
        "tools/call",
        Some(json!({"name": "sleep", "arguments": {"secs": 3}})),
        Some(300),
    )
    .unwrap_err();
    assert_eq!(kind, AgentErrorKind::Timeout, "{msg}");
    assert!(t0.elapsed() < Duration::from_secs(3));
    // The late answer to the abandoned call is skipped: the next call gets its own.
    let r = call_tool(&mut c, "echo", json!({"text": "after"})).unwrap();
    assert_eq!(r["content"][0]["text"], "after");
    let log = std::fs::read_to_string(agent.path("cancelled.log")).unwrap();
    assert_eq!(log.lines().count(), 1, "{log}");
}

#[test]
fn a_server_that_dies_is_reported_and_can_be_started_again() {
    let agent = TestAgent::start();
    let mut c = agent.connect();
    let spec = start_spec(&agent, "stub");
    c.call(&Request::McpStart(spec.clone()), &[]);
    let (kind, msg) = call_tool(&mut c, "crash", json!({})).unwrap_err();
    assert_eq!(kind, AgentErrorKind::ToolFailed);
    assert!(msg.contains("exited with code 3"), "{msg}");
    assert_eq!(
        c.one(&Request::McpList),
        Response::McpServers { servers: vec![] }
    );
    let frames = c.call(&Request::McpStart(spec), &[]);
    assert_eq!(frames[0].resp, Response::McpStarted { started: true });
    assert!(call_tool(&mut c, "echo", json!({"text": "back"})).is_ok());
}

#[test]
fn bad_starts_are_refused_clearly() {
    let agent = TestAgent::start();
    let mut c = agent.connect();
    let err = |r: Response| match r {
        Response::Error(e) => (e.kind, e.message),
        other => panic!("expected an error, got {other:?}"),
    };
    let (kind, _) = err(c.one(&Request::McpStart(McpServerSpec {
        server: "../x".into(),
        command: "true".into(),
        ..Default::default()
    })));
    assert_eq!(kind, AgentErrorKind::InvalidRequest);
    let (kind, msg) = err(c.one(&Request::McpStart(McpServerSpec {
        server: "missing".into(),
        command: "/no/such/program".into(),
        ..Default::default()
    })));
    assert_eq!(kind, AgentErrorKind::SpawnFailed, "{msg}");
    // A program that exits instead of answering `initialize`.
    let (kind, msg) = err(c.one(&Request::McpStart(McpServerSpec {
        server: "quitter".into(),
        command: "sh".into(),
        args: vec!["-c".into(), "echo not-json; exit 7".into()],
        ..Default::default()
    })));
    assert_eq!(kind, AgentErrorKind::ToolFailed);
    assert!(msg.contains("exited with code 7"), "{msg}");
    // A program that never answers runs into the start timeout and is killed.
    let (kind, _) = err(c.one(&Request::McpStart(McpServerSpec {
        server: "mute".into(),
        command: "sleep".into(),
        args: vec!["30".into()],
        timeout_ms: Some(300),
        ..Default::default()
    })));
    assert_eq!(kind, AgentErrorKind::Timeout);
    assert_eq!(
        c.one(&Request::McpList),
        Response::McpServers { servers: vec![] }
    );
}
