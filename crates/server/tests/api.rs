//! The HTTP API driven in process (`Router::oneshot`) over a manager on a fake backend whose
//! boxes run a fake guest agent.

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use common::{assert_error, json_req, Harness};
use http_body_util::BodyExt;
use sandboxd_core::pool::PoolSpec;
use serde_json::json;
use tower::ServiceExt;

#[tokio::test]
async fn health_and_auth() {
    let h = Harness::new(Some("s3cret")).await;

    // /health and /openapi.json need no token.
    let (status, _, body) = h.call(json_req(Method::GET, "/health", None, None)).await;
    assert_eq!(status, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["status"], "healthy");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    let (status, _, _) = h
        .call(json_req(Method::GET, "/openapi.json", None, None))
        .await;
    assert_eq!(status, StatusCode::OK);

    // No token, wrong token, wrong scheme: 401 with WWW-Authenticate and the JSON shape.
    for auth in [
        None,
        Some("Bearer nope"),
        Some("Bearer s3cret2"),
        Some("Basic s3cret"),
    ] {
        let mut b = Request::get("/v1/sandboxes");
        if let Some(a) = auth {
            b = b.header("authorization", a);
        }
        let (status, headers, body) = h.call(b.body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{auth:?}");
        assert_eq!(headers["www-authenticate"], "Bearer");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_error(&v, "unauthorized");
        assert!(!String::from_utf8_lossy(&body).contains("s3cret"));
    }
    // Unknown routes are behind the token too.
    let (status, _, _) = h.call(json_req(Method::GET, "/v1/nope", None, None)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // The right token.
    let (status, _, body) = h
        .call(json_req(Method::GET, "/v1/sandboxes", None, Some("s3cret")))
        .await;
    assert_eq!(status, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v, json!({"sandboxes": []}));
    let (status, _, body) = h
        .call(json_req(Method::GET, "/v1/types", None, Some("s3cret")))
        .await;
    assert_eq!(status, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v, json!({"types": ["base"]}));
}

#[tokio::test]
async fn no_token_configured_means_open() {
    let h = Harness::new(None).await;
    let (status, _) = h.json(Method::GET, "/v1/sandboxes", None).await;
    assert_eq!(status, StatusCode::OK);
    // A token sent anyway is ignored.
    let (status, _, _) = h
        .call(json_req(
            Method::GET,
            "/v1/sandboxes",
            None,
            Some("whatever"),
        ))
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn lifecycle_create_get_list_filter_timeout_delete() {
    let h = Harness::new(None).await;
    let a = h
        .create(json!({"metadata": {"team": "red", "n": "1"}, "env": {"FOO": "bar"}}))
        .await;
    let b = h
        .create(
            json!({"type": "base", "metadata": {"team": "blue"}, "timeout_secs": 0,
                       "resources": {"memory_mb": 256, "cpus": 0.5, "pids": 64}}),
        )
        .await;
    assert_ne!(a, b);
    assert!(sandboxd_types::is_valid_sandbox_id(&a));

    let (status, v) = h
        .json(Method::GET, &format!("/v1/sandboxes/{a}"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["id"], a.as_str());
    assert_eq!(v["type"], "base");
    assert_eq!(v["state"], "running");
    assert_eq!(v["backend"], "fake");
    assert_eq!(v["session_id"], a.as_str());
    assert!(v["expires_at_ms"].as_i64().is_some());
    let (_, v) = h
        .json(Method::GET, &format!("/v1/sandboxes/{b}"), None)
        .await;
    assert!(v.get("expires_at_ms").is_none());
    assert_eq!(
        v["resources"],
        json!({"memory_mb": 256, "cpus": 0.5, "pids": 64, "disk_mb": 256})
    );

    let (_, v) = h.json(Method::GET, "/v1/sandboxes", None).await;
    let ids: Vec<&str> = v["sandboxes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![a.as_str(), b.as_str()]);

    let (_, v) = h
        .json(Method::GET, "/v1/sandboxes?metadata.team=red", None)
        .await;
    assert_eq!(v["sandboxes"].as_array().unwrap().len(), 1);
    assert_eq!(v["sandboxes"][0]["id"], a.as_str());
    let (_, v) = h
        .json(
            Method::GET,
            "/v1/sandboxes?metadata.team=red&metadata.n=2",
            None,
        )
        .await;
    assert_eq!(v["sandboxes"].as_array().unwrap().len(), 0);
    let (status, v) = h.json(Method::GET, "/v1/sandboxes?team=red", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_error(&v, "invalid_request");

    let (status, v) = h
        .json(
            Method::POST,
            &format!("/v1/sandboxes/{b}/timeout"),
            Some(json!({"timeout_secs": 60})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let exp = v["expires_at_ms"].as_i64().unwrap();
    assert!(exp - v["created_at_ms"].as_i64().unwrap() >= 59_000);

    // The box's environment reaches commands.
    let (_, v) = h
        .json(
            Method::POST,
            &format!("/v1/sandboxes/{a}/exec"),
            Some(json!({"cmd": ["env", "FOO"]})),
        )
        .await;
    assert_eq!(v["stdout"], "bar");

    let (status, v) = h
        .json(Method::DELETE, &format!("/v1/sandboxes/{a}"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(v, serde_json::Value::Null);
    let (status, v) = h
        .json(Method::GET, &format!("/v1/sandboxes/{a}"), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_error(&v, "not_found");
    let (status, _) = h
        .json(Method::DELETE, &format!("/v1/sandboxes/{a}"), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(h.backend.live_boxes(), 1);
}

#[tokio::test]
async fn not_found_cases() {
    let h = Harness::new(None).await;
    for uri in [
        "/v1/sandboxes/sb-0000000000000000",
        "/v1/sandboxes/not-an-id",
        "/v1/sandboxes/..%2F..%2Fetc",
        "/v1/sandboxes/SB-0000000000000000/files/stat?path=a",
        "/nope",
        "/v1",
    ] {
        let (status, v) = h.json(Method::GET, uri, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{uri}");
        assert_error(&v, "not_found");
    }
    let (status, v) = h
        .json(
            Method::POST,
            "/v1/sandboxes/sb-0000000000000000/exec",
            Some(json!({"cmd": ["true"]})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_error(&v, "not_found");
    let (status, v) = h
        .json(Method::POST, "/v1/sandboxes", Some(json!({"type": "gpu"})))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_error(&v, "unknown_type");
    assert!(v["error"]["message"].as_str().unwrap().contains("base"));
}

#[tokio::test]
async fn method_not_allowed_is_json() {
    let h = Harness::new(None).await;
    let (status, v) = h.json(Method::PATCH, "/v1/sandboxes", None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_error(&v, "invalid_request");
}

#[tokio::test]
async fn validation_and_extraction_errors() {
    let h = Harness::new(None).await;
    // Validation done by the manager.
    for body in [
        json!({"resources": {"memory_mb": 1}}),
        json!({"env": {"A=B": "x"}}),
        json!({"session_id": "../x"}),
    ] {
        let (status, v) = h
            .json(Method::POST, "/v1/sandboxes", Some(body.clone()))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_error(&v, "invalid_request");
    }
    // Unknown field, wrong type, bad JSON, no content type, wrong content type.
    let cases: Vec<(Option<&str>, &str)> = vec![
        (Some("application/json"), r#"{"tpye": "base"}"#),
        (Some("application/json"), r#"{"timeout_secs": "ten"}"#),
        (Some("application/json"), r#"{"timeout_secs": "#),
        (None, r#"{}"#),
        (Some("text/plain"), r#"{}"#),
    ];
    for (ct, body) in cases {
        let mut b = Request::post("/v1/sandboxes");
        if let Some(ct) = ct {
            b = b.header("content-type", ct);
        }
        let (status, headers, bytes) = h.call(b.body(Body::from(body)).unwrap()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{ct:?} {body}");
        assert_eq!(headers["content-type"], "application/json");
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_error(&v, "invalid_request");
    }
    // Exec needs exactly one of cmd and shell.
    let id = h.create(json!({})).await;
    let (status, v) = h
        .json(
            Method::POST,
            &format!("/v1/sandboxes/{id}/exec"),
            Some(json!({"cmd": ["a"], "shell": "a"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_error(&v, "invalid_request");
    // Bad query strings.
    for uri in [
        format!("/v1/sandboxes/{id}/files/stat"),
        format!("/v1/sandboxes/{id}/files/stat?path=a&extra=1"),
        format!("/v1/sandboxes/{id}/files/list?depth=deep"),
        format!("/v1/sandboxes/{id}/files/list?depth=0"),
    ] {
        let (status, v) = h.json(Method::GET, &uri, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}");
        assert_error(&v, "invalid_request");
    }
    // An oversized JSON body.
    let big = json!({"cmd": ["echo", "x".repeat(2 << 20)]});
    let (status, v) = h
        .json(Method::POST, &format!("/v1/sandboxes/{id}/exec"), Some(big))
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_error(&v, "payload_too_large");
}

#[tokio::test]
async fn instance_limit_is_429() {
    let h = Harness::with_config(None, |c| c.max_instances = 1).await;
    h.create(json!({})).await;
    let (status, v) = h.json(Method::POST, "/v1/sandboxes", Some(json!({}))).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_error(&v, "limit_reached");
}

#[tokio::test]
async fn exec_buffered_and_python() {
    let h = Harness::new(None).await;
    let id = h.create(json!({})).await;
    let uri = format!("/v1/sandboxes/{id}/exec");
    let (status, v) = h
        .json(
            Method::POST,
            &uri,
            Some(json!({"cmd": ["echo", "hello", "world"]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["stdout"], "hello world\n");
    assert_eq!(v["stderr"], "");
    assert_eq!(v["exit_code"], 0);
    assert_eq!(v["timed_out"], false);
    let (_, v) = h
        .json(
            Method::POST,
            &uri,
            Some(json!({"shell": "ignored", "cmd": null})),
        )
        .await;
    assert_eq!(v["exit_code"], 127);
    let (_, v) = h
        .json(
            Method::POST,
            &uri,
            Some(json!({"cmd": ["cat"], "stdin": "in put"})),
        )
        .await;
    assert_eq!(v["stdout"], "in put");
    let (_, v) = h
        .json(Method::POST, &uri, Some(json!({"cmd": ["fail"]})))
        .await;
    assert_eq!(v["exit_code"], 3);
    assert_eq!(v["stderr"], "oops\n");

    let puri = format!("/v1/sandboxes/{id}/python");
    let (status, v) = h
        .json(Method::POST, &puri, Some(json!({"code": "1+1"})))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["result"], "2");
    assert_eq!(v["stdout"], "ran 1+1\n");
    let (_, v) = h
        .json(Method::POST, &puri, Some(json!({"code": "1/0"})))
        .await;
    assert_eq!(v["error"]["ename"], "ZeroDivisionError");
}

#[tokio::test]
async fn exec_streams_ndjson_as_it_happens() {
    let h = Harness::new(None).await;
    let id = h.create(json!({})).await;
    let req = json_req(
        Method::POST,
        &format!("/v1/sandboxes/{id}/exec"),
        Some(json!({"cmd": ["gate"], "stream": true})),
        None,
    );
    let resp = h.app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
    let mut body = resp.into_body();
    let mut seen = String::new();
    // The command is blocked on the gate: "one" must arrive before it can end.
    while !seen.contains("one") {
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("first output did not arrive while the command runs")
            .unwrap()
            .unwrap();
        seen.push_str(std::str::from_utf8(frame.data_ref().unwrap()).unwrap());
    }
    assert!(!seen.contains("exit"));
    h.backend.gate.notify_one();
    let rest = body.collect().await.unwrap().to_bytes();
    seen.push_str(std::str::from_utf8(&rest).unwrap());
    let events: Vec<serde_json::Value> = seen
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events[0], json!({"type": "started", "pid": 42}));
    assert_eq!(events[1], json!({"type": "stdout", "data": "one\n"}));
    assert_eq!(events[2], json!({"type": "stdout", "data": "two\n"}));
    assert_eq!(events[3]["type"], "exit");
    assert_eq!(events[3]["exit_code"], 0);
    assert_eq!(events.len(), 4);
    // Each event is typed.
    for l in seen.lines() {
        let _: sandboxd_types::ExecEvent = serde_json::from_str(l).unwrap();
    }

    // Errors before the start still get a status.
    let (status, v) = h
        .json(
            Method::POST,
            "/v1/sandboxes/sb-0000000000000001/exec",
            Some(json!({"cmd": ["gate"], "stream": true})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_error(&v, "not_found");
}

#[tokio::test]
async fn files_round_trip() {
    let h = Harness::new(None).await;
    let id = h.create(json!({})).await;
    let base = format!("/v1/sandboxes/{id}/files");

    // Upload 3 MiB of binary data: more than the JSON limit, streamed in.
    let data: Vec<u8> = (0..3 * 1024 * 1024u32)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    let (status, _, body) = h
        .call(
            Request::put(format!("{base}?path=dir/data.bin&mode=600"))
                .header("content-type", "application/octet-stream")
                .body(Body::from(data.clone()))
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["path"], "/workspace/dir/data.bin");
    assert_eq!(v["size"], data.len());
    assert_eq!(v["type"], "file");

    let (status, headers, body) = h
        .call(json_req(
            Method::GET,
            &format!("{base}?path=dir/data.bin"),
            None,
            None,
        ))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "application/octet-stream");
    assert!(body == data, "downloaded bytes differ");

    let (status, v) = h
        .json(Method::GET, &format!("{base}/stat?path=dir/data.bin"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["name"], "data.bin");

    let (status, v) = h
        .json(
            Method::POST,
            &format!("{base}/mkdir"),
            Some(json!({"path": "sub", "parents": true})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v, json!({"created": true}));
    let (status, v) = h
        .json(
            Method::POST,
            &format!("{base}/mkdir"),
            Some(json!({"path": "sub"})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_error(&v, "already_exists");

    let (status, v) = h
        .json(
            Method::POST,
            &format!("{base}/move"),
            Some(json!({"from": "dir/data.bin", "to": "moved.bin"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["path"], "/workspace/moved.bin");

    let (status, v) = h.json(Method::GET, &format!("{base}/list"), None).await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["moved.bin", "sub"]);

    let (status, _) = h
        .json(
            Method::DELETE,
            &format!("{base}?path=moved.bin&recursive=true"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, v) = h
        .json(Method::GET, &format!("{base}?path=moved.bin"), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_error(&v, "not_found");

    // Empty files work both ways.
    let (status, _, _) = h
        .call(
            Request::put(format!("{base}?path=empty"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, body) = h
        .call(json_req(
            Method::GET,
            &format!("{base}?path=empty"),
            None,
            None,
        ))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.is_empty());

    // Leaving the workspace is 403.
    let (status, v) = h
        .json(Method::GET, &format!("{base}?path=../../etc/passwd"), None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_error(&v, "path_outside_sandbox");
    let (status, v) = h
        .json(Method::GET, &format!("{base}/stat?path=/etc/passwd"), None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_error(&v, "path_outside_sandbox");

    // A bad mode is 400.
    let (status, _, _) = h
        .call(
            Request::put(format!("{base}?path=x&mode=999"))
                .body(Body::from("x"))
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn openapi_lists_the_routes() {
    let h = Harness::new(Some("t")).await;
    let (status, _, body) = h
        .call(json_req(Method::GET, "/openapi.json", None, None))
        .await;
    assert_eq!(status, StatusCode::OK);
    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    let paths = doc["paths"].as_object().unwrap();
    let expected = [
        ("/health", "get"),
        ("/openapi.json", "get"),
        ("/v1/types", "get"),
        ("/v1/sandboxes", "post"),
        ("/v1/sandboxes", "get"),
        ("/v1/sandboxes/{id}", "get"),
        ("/v1/sandboxes/{id}", "delete"),
        ("/v1/sandboxes/{id}/timeout", "post"),
        ("/v1/sandboxes/{id}/pause", "post"),
        ("/v1/sandboxes/{id}/resume", "post"),
        ("/v1/sandboxes/{id}/restart", "post"),
        ("/v1/sandboxes/{id}/exec", "post"),
        ("/v1/sandboxes/{id}/python", "post"),
        ("/v1/sandboxes/{id}/files", "get"),
        ("/v1/sandboxes/{id}/files", "put"),
        ("/v1/sandboxes/{id}/files", "delete"),
        ("/v1/sandboxes/{id}/files/list", "get"),
        ("/v1/sandboxes/{id}/files/stat", "get"),
        ("/v1/sandboxes/{id}/files/mkdir", "post"),
        ("/v1/sandboxes/{id}/files/move", "post"),
    ];
    for (p, m) in expected {
        assert!(
            paths.get(p).and_then(|o| o.get(m)).is_some(),
            "{m} {p} missing"
        );
    }
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for s in [
        "Sandbox",
        "CreateSandboxRequest",
        "ExecEvent",
        "ErrorBody",
        "ErrorCode",
        "FileEntry",
    ] {
        assert!(schemas.contains_key(s), "schema {s} missing");
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
}

#[tokio::test]
async fn create_from_pool_through_v1() {
    let h = Harness::with_config(None, |c| {
        c.pool_size = 1;
        c.pools = vec![PoolSpec::template("base")];
    })
    .await;
    let warm_id = loop {
        let (_, v) = h.json(Method::GET, "/v1/sandboxes", None).await;
        if let Some(w) = v["sandboxes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["state"] == "warm")
        {
            assert!(w.get("expires_at_ms").is_none(), "{w}");
            break w["id"].as_str().unwrap().to_string();
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    let (status, v) = h
        .json(
            Method::POST,
            "/v1/sandboxes",
            Some(
                serde_json::json!({"from_pool": true, "timeout_secs": 60, "metadata": {"k": "v"}}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert_eq!(v["id"], warm_id.as_str());
    assert_eq!(v["state"], "running");
    assert_eq!(v["metadata"]["k"], "v");
    assert!(v["expires_at_ms"].as_i64().is_some());
    // A session of its own does not fit a warm sandbox: created cold.
    let (status, v) = h
        .json(
            Method::POST,
            "/v1/sandboxes",
            Some(serde_json::json!({"from_pool": true, "session_id": "mine"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert_eq!(v["session_id"], "mine");
    assert_ne!(v["id"], warm_id.as_str());
}

/// A run of `n` loopback ports that nothing holds now (the test holds none of them either).
fn free_port_range(n: u16) -> sandboxd_server::ports::PortRange {
    let offset = (std::process::id() % 40) as u16;
    'search: for lo in (30000..30900u16).step_by(50).map(|b| b + offset) {
        let mut held = Vec::new();
        for p in lo..lo + n {
            match std::net::TcpListener::bind(("127.0.0.1", p)) {
                Ok(l) => held.push(l),
                Err(_) => continue 'search,
            }
        }
        return sandboxd_server::ports::PortRange { lo, hi: lo + n - 1 };
    }
    panic!("no free run of {n} ports");
}

#[tokio::test]
async fn published_ports_are_checked_allocated_listed_and_given_back() {
    let range = free_port_range(2);
    let h = Harness::new(None).await.with_state(|s| {
        s.with_ports(sandboxd_server::ports::Ports::new(
            range,
            "127.0.0.1".parse().unwrap(),
            "127.0.0.1",
            false,
        ))
    });
    let many: Vec<u16> = (8000..8017).collect();
    for body in [
        json!({"ports": [0]}),
        json!({"ports": [8000, 8000]}),
        json!({"ports": many}),
        json!({"ports": [65536]}),
        json!({"ports": [-1]}),
    ] {
        let (status, v) = h
            .json(Method::POST, "/v1/sandboxes", Some(body.clone()))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert_error(&v, "invalid_request");
    }
    assert_eq!(h.backend.live_boxes(), 0);

    let (status, v) = h
        .json(
            Method::POST,
            "/v1/sandboxes",
            Some(json!({"ports": [8000, 8001]})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let ports = v["ports"].as_array().unwrap().clone();
    assert_eq!(ports.len(), 2);
    let mut host_ports = Vec::new();
    for (p, want) in ports.iter().zip([8000, 8001]) {
        assert_eq!(p["port"], want);
        let hp = p["host_port"].as_u64().unwrap() as u16;
        assert!((range.lo..=range.hi).contains(&hp), "{p}");
        assert_eq!(p["address"], format!("127.0.0.1:{hp}"));
        host_ports.push(hp);
    }
    let (_, got) = h
        .json(Method::GET, &format!("/v1/sandboxes/{id}"), None)
        .await;
    assert_eq!(got["ports"], json!(ports));
    // The range is used up: a clear 503, and no sandbox is made.
    let (status, v) = h
        .json(
            Method::POST,
            "/v1/sandboxes",
            Some(json!({"ports": [9000]})),
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_error(&v, "unavailable");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("PORT_RANGE"),
        "{v}"
    );
    assert_eq!(h.backend.live_boxes(), 1);
    // The fake agent knows no tunnels (an agent too old for them): a connection is closed,
    // not left hanging.
    let mut c = tokio::net::TcpStream::connect(("127.0.0.1", host_ports[0]))
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::io::AsyncReadExt::read(&mut c, &mut buf)
        .await
        .unwrap_or(0);
    assert_eq!(n, 0);
    // Deleting the sandbox gives its ports back at once.
    let (status, _) = h
        .json(Method::DELETE, &format!("/v1/sandboxes/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    for hp in &host_ports {
        drop(std::net::TcpListener::bind(("127.0.0.1", *hp)).expect("released"));
    }
    let id = h.create(json!({"ports": [1, 2]})).await;
    assert!(h.state.ports.published().await.contains(&id));
    h.state.ports.release_all().await;
}
