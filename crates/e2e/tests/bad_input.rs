//! Bad input against a real `sandboxd serve`: bodies over the limit, deeply nested JSON,
//! invalid UTF-8 and NUL bytes (in paths, commands, arguments, environment names and values)
//! each get a clear 4xx with a message saying what is wrong, and the sandbox they were aimed
//! at still works afterwards, its state (files, Python variables) intact.

mod common;

use reqwest::{Method, StatusCode};
use sandboxd_e2e::{Server, ServerOptions};
use serde_json::{json, Value};

use common::{create_req, py, sh};

const TOKEN: &str = "bad-input-test-token";

/// Send `body` (raw bytes, as JSON unless `content_type` says otherwise) and return the status
/// and the JSON reply.
async fn send(
    server: &Server,
    method: Method,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
) -> (StatusCode, Value) {
    let resp = reqwest::Client::new()
        .request(method, format!("{}{path}", server.url))
        .bearer_auth(TOKEN)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("the server answers");
    let status = resp.status();
    let bytes = resp.bytes().await.expect("a whole body");
    let v = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
        panic!(
            "{path}: {status} with a body that is not JSON: {:?}",
            String::from_utf8_lossy(&bytes)
        )
    });
    (status, v)
}

/// The request must be refused with `status` and an `{"error": {code, message}}` whose message
/// contains `says`.
#[track_caller]
fn refused((status, v): (StatusCode, Value), want: StatusCode, says: &str, what: &str) {
    assert_eq!(status, want, "{what}: {v}");
    let code = v["error"]["code"].as_str().unwrap_or_default();
    let message = v["error"]["message"].as_str().unwrap_or_default();
    assert!(!code.is_empty(), "{what}: no error code in {v}");
    assert!(
        message.to_lowercase().contains(&says.to_lowercase()),
        "{what}: the message does not say {says:?}: {v}"
    );
}

/// `n` levels of arrays: `[[[...]]]`.
fn nested(n: usize) -> String {
    format!("{}{}", "[".repeat(n), "]".repeat(n))
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_clear_errors_and_loses_nothing() {
    let server = common::server_with(ServerOptions {
        token: Some(TOKEN.into()),
        ..Default::default()
    })
    .await;
    let c = server.client();
    let sb = c.create(&create_req()).await.unwrap();
    let id = sb.id.clone();
    c.write_file(&id, "kept.txt", b"before".to_vec())
        .await
        .unwrap();
    c.python(&id, &py("kept = 42")).await.unwrap();
    let json_ct = "application/json";
    let exec = format!("/v1/sandboxes/{id}/exec");

    // Bodies over the 1 MiB JSON limit.
    let huge = format!(r#"{{"shell": "echo {}"}}"#, "x".repeat(2 << 20)).into_bytes();
    for path in [
        exec.clone(),
        format!("/v1/sandboxes/{id}/python"),
        format!("/v1/sandboxes/{id}/files/mkdir"),
        "/v1/sandboxes".to_string(),
    ] {
        refused(
            send(&server, Method::POST, &path, json_ct, huge.clone()).await,
            StatusCode::PAYLOAD_TOO_LARGE,
            "larger than",
            &path,
        );
    }

    // Deeply nested JSON. The `/v1` types hold no free-form JSON: the first array where a
    // string belongs is refused. The AgentScope routes parse free-form JSON: the parser's depth
    // limit refuses it, before anything deeper runs (and before a deep value could exhaust the
    // stack).
    for depth in [200, 100_000] {
        let body = format!(r#"{{"cmd": {}}}"#, nested(depth)).into_bytes();
        refused(
            send(&server, Method::POST, &exec, json_ct, body).await,
            StatusCode::BAD_REQUEST,
            "expected a string",
            "deep exec",
        );
        let body = format!(r#"{{"metadata": {{"k": {}}}}}"#, nested(depth)).into_bytes();
        refused(
            send(&server, Method::POST, "/v1/sandboxes", json_ct, body).await,
            StatusCode::BAD_REQUEST,
            "expected a string",
            "deep create",
        );
        let body = format!(r#"{{"command": {}}}"#, nested(depth)).into_bytes();
        let path = format!("/proxy/sandboxd-{id}/tools/run_shell_command");
        let (status, v) = send(&server, Method::POST, &path, json_ct, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "deep proxy body: {v}");
        let detail = v["detail"].as_str().unwrap_or_default();
        assert!(detail.contains("recursion limit"), "deep proxy body: {v}");
        // The RPC answers its protocol's 500 `Error in <method>: ...`, saying why.
        let body = format!(
            r#"{{"identity": "sandboxd-{id}", "tool_name": "run_shell_command", "arguments": {{"command": {}}}}}"#,
            nested(depth)
        );
        let (status, v) = send(&server, Method::POST, "/call_tool", json_ct, body.into()).await;
        let detail = v["detail"].as_str().unwrap_or_default();
        assert_eq!(
            status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "deep RPC body: {v}"
        );
        assert!(
            detail.starts_with("Error in call_tool: ") && detail.contains("recursion limit"),
            "deep RPC body: {v}"
        );
    }

    // Invalid UTF-8: in a JSON body, in a query string, in a path.
    let mut body = br#"{"shell": "echo "#.to_vec();
    body.extend_from_slice(&[0xff, 0xfe, b'"', b'}']);
    refused(
        send(&server, Method::POST, &exec, json_ct, body).await,
        StatusCode::BAD_REQUEST,
        "invalid unicode",
        "exec with invalid UTF-8",
    );
    let (status, v) = send(
        &server,
        Method::GET,
        &format!("/v1/sandboxes/{id}/files?path=%FF%FE"),
        json_ct,
        Vec::new(),
    )
    .await;
    assert!(
        status.is_client_error(),
        "query with invalid UTF-8: {status} {v}"
    );
    assert!(v["error"]["message"].is_string(), "{v}");
    let (status, v) = send(
        &server,
        Method::GET,
        "/v1/sandboxes/%FF%FE/files?path=a",
        json_ct,
        Vec::new(),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "id with invalid UTF-8: {v}");

    // NUL bytes, wherever text reaches the sandbox.
    let nul_bodies = [
        (
            exec.clone(),
            json!({"cmd": ["echo", "a\u{0}b"]}),
            "argument",
        ),
        (exec.clone(), json!({"cmd": ["ec\u{0}ho"]}), "argument"),
        (exec.clone(), json!({"shell": "echo a\u{0}b"}), "shell"),
        (
            exec.clone(),
            json!({"shell": "true", "env": {"A\u{0}B": "1"}}),
            "environment variable name",
        ),
        (
            exec.clone(),
            json!({"shell": "true", "env": {"A": "1\u{0}2"}}),
            "NUL",
        ),
        (
            exec.clone(),
            json!({"shell": "true", "cwd": "/work\u{0}space"}),
            "cwd",
        ),
        (
            format!("/v1/sandboxes/{id}/python"),
            json!({"code": "1\u{0}"}),
            "code",
        ),
        (
            format!("/v1/sandboxes/{id}/files/mkdir"),
            json!({"path": "d\u{0}ir"}),
            "path",
        ),
        (
            format!("/v1/sandboxes/{id}/files/move"),
            json!({"from": "kept.txt", "to": "x\u{0}y"}),
            "NUL",
        ),
        (
            "/v1/sandboxes".to_string(),
            json!({"type": "base", "env": {"A": "x\u{0}"}}),
            "NUL",
        ),
        (
            "/v1/sandboxes".to_string(),
            json!({"type": "base", "env": {"\u{0}": "x"}}),
            "environment variable name",
        ),
        (
            "/v1/sandboxes".to_string(),
            json!({"type": "base", "session_id": "s\u{0}"}),
            "session_id",
        ),
    ];
    for (path, body, says) in nul_bodies {
        let what = format!("{path} {body}");
        refused(
            send(
                &server,
                Method::POST,
                &path,
                json_ct,
                serde_json::to_vec(&body).unwrap(),
            )
            .await,
            StatusCode::BAD_REQUEST,
            says,
            &what,
        );
    }
    for (method, route) in [
        (Method::GET, "files"),
        (Method::PUT, "files"),
        (Method::DELETE, "files"),
        (Method::GET, "files/stat"),
        (Method::GET, "files/list"),
    ] {
        let path = format!("/v1/sandboxes/{id}/{route}?path=kept.txt%00.evil");
        refused(
            send(
                &server,
                method.clone(),
                &path,
                "application/octet-stream",
                b"x".to_vec(),
            )
            .await,
            StatusCode::BAD_REQUEST,
            "NUL",
            &format!("{method} {path}"),
        );
    }

    // Nothing was lost: the sandbox runs, its file and its Python state are there, and NUL
    // bytes where they are data (stdin, file content) pass through whole.
    let r = sh(&c, &id, "cat /workspace/kept.txt").await;
    assert_eq!(r.stdout, "before", "{r:?}");
    assert_eq!(
        c.python(&id, &py("kept")).await.unwrap().result.as_deref(),
        Some("42")
    );
    let r = c
        .exec(
            &id,
            &sandboxd_types::ExecRequest {
                cmd: Some(vec!["od".into(), "-An".into(), "-c".into()]),
                stdin: Some("a\u{0}b".into()),
                timeout_ms: Some(60_000),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        r.stdout.split_whitespace().collect::<Vec<_>>(),
        ["a", "\\0", "b"],
        "{r:?}"
    );
    c.write_file(&id, "nul.bin", b"a\0b".to_vec())
        .await
        .unwrap();
    assert_eq!(&c.read_file(&id, "nul.bin").await.unwrap()[..], b"a\0b");
    c.delete(&id).await.unwrap();
    assert!(c.list(&Default::default()).await.unwrap().is_empty());
}
