//! Named API keys (`API_KEYS`) against a real `sandboxd serve`: each key sees, uses and
//! removes only its own sandboxes, through `/v1` and the AgentScope routes alike; the old
//! `BEARER_TOKEN` is the admin's and sees everything; no token ever reaches the server's log.

mod common;

use std::collections::BTreeMap;

use reqwest::{Method, StatusCode};
use sandboxd_client::Client;
use sandboxd_core::store::SandboxStore;
use sandboxd_e2e::{Server, ServerOptions};
use sandboxd_store::redis::RedisStore;
use sandboxd_store::testing::RedisServer;
use sandboxd_types::{CreateSandboxRequest, ErrorCode, ExecRequest};
use serde_json::{json, Value};

use common::{api_code, create_req, py, sh};

const ADMIN: &str = "admin-token-for-the-e2e-test";
const ALICE: &str = "alice-token-0123456789abcdef";
const BOB: &str = "bob-token-0123456789abcdef01";

fn client(server: &Server, token: &str) -> Client {
    Client::new(server.url.clone()).with_token(token)
}

/// `METHOD path` with a token and an optional JSON body: the status and the reply.
async fn raw(
    server: &Server,
    token: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut rb = reqwest::Client::new()
        .request(method, format!("{}{path}", server.url))
        .bearer_auth(token);
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    let resp = rb.send().await.expect("the server answers");
    let status = resp.status();
    let bytes = resp.bytes().await.expect("a whole body");
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, v)
}

/// Every `/v1` route that names a sandbox answers `bob` for `id` exactly as for a sandbox that
/// does not exist: 404 `not_found`, with the same message but for the id.
async fn v1_all_not_found(server: &Server, bob: &Client, id: &str) {
    let expect = |what: &str, err: sandboxd_client::Error| {
        assert_eq!(api_code(&err), Some(ErrorCode::NotFound), "{what}: {err}");
        assert!(err.to_string().contains("not found"), "{what}: {err}");
    };
    expect("get", bob.get(id).await.unwrap_err());
    expect(
        "exec",
        bob.exec(
            id,
            &ExecRequest {
                shell: Some("echo hi".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap_err(),
    );
    expect("python", bob.python(id, &py("1")).await.unwrap_err());
    expect("read", bob.read_file(id, "secret.txt").await.unwrap_err());
    expect(
        "write",
        bob.write_file(id, "x.txt", b"x".to_vec())
            .await
            .unwrap_err(),
    );
    expect("stat", bob.stat(id, "secret.txt").await.unwrap_err());
    expect("ls", bob.list_files(id, ".", Some(1)).await.unwrap_err());
    expect("mkdir", bob.mkdir(id, "d", true).await.unwrap_err());
    expect(
        "move",
        bob.move_path(id, "secret.txt", "y").await.unwrap_err(),
    );
    expect(
        "rm file",
        bob.remove(id, "secret.txt", false).await.unwrap_err(),
    );
    expect("timeout", bob.set_timeout(id, 5).await.unwrap_err());
    expect("pause", bob.pause(id).await.unwrap_err());
    expect("resume", bob.resume(id).await.unwrap_err());
    expect("delete", bob.delete(id).await.unwrap_err());
    // The same body as for an id nobody has.
    let (s1, foreign) = raw(
        server,
        BOB,
        Method::GET,
        &format!("/v1/sandboxes/{id}"),
        None,
    )
    .await;
    let nobody = "sb-0000000000000000";
    let (s2, missing) = raw(
        server,
        BOB,
        Method::GET,
        &format!("/v1/sandboxes/{nobody}"),
        None,
    )
    .await;
    assert_eq!((s1, s2), (StatusCode::NOT_FOUND, StatusCode::NOT_FOUND));
    assert_eq!(
        foreign.to_string().replace(id, "ID"),
        missing.to_string().replace(nobody, "ID")
    );
}

/// The AgentScope routes too: RPC and proxy answer `bob` for alice's sandbox as for none, and
/// nothing bob does there reaches it.
async fn agentscope_all_not_found(server: &Server, id: &str) {
    let name = format!("sandboxd-{id}");
    let nobody = "sandboxd-sb-0000000000000000";
    for method in [
        "get_info",
        "check_health",
        "list_tools",
        "get_status",
        "start",
        "stop",
    ] {
        let (s1, foreign) = raw(
            server,
            BOB,
            Method::POST,
            &format!("/{method}"),
            Some(json!({ "identity": name })),
        )
        .await;
        let (s2, missing) = raw(
            server,
            BOB,
            Method::POST,
            &format!("/{method}"),
            Some(json!({ "identity": nobody })),
        )
        .await;
        assert_eq!(s1, s2, "{method}: {foreign} / {missing}");
        assert_eq!(
            foreign.to_string().replace(&name, "ID"),
            missing.to_string().replace(nobody, "ID"),
            "{method}"
        );
    }
    let (s, v) = raw(
        server,
        BOB,
        Method::POST,
        "/call_tool",
        Some(json!({"identity": name, "tool_name": "run_shell_command",
                    "arguments": {"command": "echo reached"}})),
    )
    .await;
    assert!(!v.to_string().contains("reached"), "{s} {v}");
    for (method, path) in [
        (Method::GET, "workspace/list?path=."),
        (Method::GET, "workspace/file?path=secret.txt"),
        (Method::DELETE, "workspace/entry?path=secret.txt"),
        (Method::GET, "healthz"),
    ] {
        let (s, v) = raw(
            server,
            BOB,
            method.clone(),
            &format!("/proxy/{name}/{path}"),
            None,
        )
        .await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{method} {path}: {v}");
    }
    let (s, v) = raw(
        server,
        BOB,
        Method::POST,
        &format!("/proxy/{name}/tools/run_shell_command"),
        Some(json!({"command": "echo reached"})),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    // release says "already released", as for any unknown sandbox; cleanup is bob's own.
    let (s, v) = raw(
        server,
        BOB,
        Method::POST,
        "/release",
        Some(json!({ "identity": name })),
    )
    .await;
    assert_eq!((s, v), (StatusCode::OK, json!({"data": true})));
    let (s, _) = raw(server, BOB, Method::POST, "/cleanup", Some(json!({}))).await;
    assert_eq!(s, StatusCode::OK);
    let (_, v) = raw(
        server,
        BOB,
        Method::POST,
        "/get_session_mapping",
        Some(json!({"session_ctx_id": "alice-session"})),
    )
    .await;
    assert_eq!(v, json!({"data": []}));
    let (_, v) = raw(
        server,
        BOB,
        Method::POST,
        "/list_session_keys",
        Some(json!({})),
    )
    .await;
    assert_eq!(v, json!({"data": []}));
}

#[tokio::test(flavor = "multi_thread")]
async fn api_keys_keep_tenants_apart_and_out_of_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let keys = dir.path().join("keys");
    std::fs::write(&keys, format!("# tenants\nbob:{BOB}\n")).unwrap();
    let mut server = common::server_with(ServerOptions {
        token: Some(ADMIN.into()),
        env: vec![
            ("API_KEYS".into(), format!("alice:{ALICE}")),
            ("API_KEYS_FILE".into(), keys.to_string_lossy().into()),
            // Everything the server and its libraries log, to look for tokens in it.
            ("RUST_LOG".into(), "trace".into()),
        ],
        stderr: Some(log.clone()),
        ..Default::default()
    })
    .await;
    let (admin, alice, bob) = (
        client(&server, ADMIN),
        client(&server, ALICE),
        client(&server, BOB),
    );

    // Wrong and missing tokens.
    for c in [
        client(&server, "alice-token-0123456789abcdeX"),
        Client::new(server.url.clone()),
    ] {
        let err = c.list(&BTreeMap::new()).await.unwrap_err();
        assert_eq!(api_code(&err), Some(ErrorCode::Unauthorized), "{err}");
    }

    // Alice's sandbox, on a session of her own, with a file.
    let req = CreateSandboxRequest {
        session_id: Some("shared".into()),
        metadata: BTreeMap::from([("team".into(), "red".into())]),
        ..create_req()
    };
    let a = alice.create(&req).await.unwrap();
    assert_eq!(a.session_id, "shared", "a tenant sees its own session name");
    assert_eq!(a.metadata["sandboxd.tenant"], "alice");
    alice
        .write_file(&a.id, "secret.txt", b"alice's".to_vec())
        .await
        .unwrap();
    // Through AgentScope too, bound to a session.
    let (s, v) = raw(
        &server,
        ALICE,
        Method::POST,
        "/create",
        Some(json!({"sandbox_type": "base", "meta": {"session_ctx_id": "alice-session"}})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let a2 = v["data"]
        .as_str()
        .unwrap()
        .trim_start_matches("sandboxd-")
        .to_string();

    // Bob sees none of it and reaches none of it.
    assert!(bob.list(&BTreeMap::new()).await.unwrap().is_empty());
    let red = BTreeMap::from([("team".to_string(), "red".to_string())]);
    assert!(bob.list(&red).await.unwrap().is_empty());
    for id in [&a.id, &a2] {
        v1_all_not_found(&server, &bob, id).await;
        agentscope_all_not_found(&server, id).await;
    }
    // The server's own metadata cannot be forged.
    let forged = CreateSandboxRequest {
        metadata: BTreeMap::from([("sandboxd.tenant".into(), "alice".into())]),
        ..create_req()
    };
    let err = bob.create(&forged).await.unwrap_err();
    assert_eq!(api_code(&err), Some(ErrorCode::InvalidRequest), "{err}");
    assert!(err.to_string().contains("reserved"), "{err}");
    // The same session name is another workspace.
    let b = bob.create(&req).await.unwrap();
    assert_eq!(b.session_id, "shared");
    let err = bob.read_file(&b.id, "secret.txt").await.unwrap_err();
    assert_eq!(api_code(&err), Some(ErrorCode::NotFound), "{err}");
    assert!(server.workspace("alice.shared").join("secret.txt").exists());
    assert!(!server.workspace("bob.shared").join("secret.txt").exists());
    let only_b: Vec<String> = bob
        .list(&BTreeMap::new())
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(only_b, [b.id.as_str()]);

    // Alice's sandboxes are untouched and hers to use.
    let r = sh(&alice, &a.id, "cat /workspace/secret.txt").await;
    assert_eq!(r.stdout, "alice's", "{r:?}");
    assert_eq!(
        &alice.read_file(&a.id, "secret.txt").await.unwrap()[..],
        b"alice's"
    );
    let mine: Vec<String> = alice
        .list(&BTreeMap::new())
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(mine, [a.id.clone(), a2.clone()]);
    let (_, v) = raw(
        &server,
        ALICE,
        Method::POST,
        "/get_session_mapping",
        Some(json!({"session_ctx_id": "alice-session"})),
    )
    .await;
    assert_eq!(v, json!({"data": [format!("sandboxd-{a2}")]}));
    let (s, v) = raw(
        &server,
        ALICE,
        Method::POST,
        "/get_info",
        Some(json!({ "identity": format!("sandboxd-{a2}") })),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");

    // The admin (the old BEARER_TOKEN) sees and manages everyone's.
    let all: Vec<String> = admin
        .list(&BTreeMap::new())
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(all, [a.id.clone(), a2.clone(), b.id.clone()]);
    assert_eq!(admin.get(&a.id).await.unwrap().session_id, "alice.shared");
    let r = sh(&admin, &b.id, "echo admin").await;
    assert_eq!(r.stdout, "admin\n");
    admin.delete(&b.id).await.unwrap();

    // Alice removes her own.
    alice.delete(&a.id).await.unwrap();
    let (s, v) = raw(
        &server,
        ALICE,
        Method::POST,
        "/release",
        Some(json!({ "identity": format!("sandboxd-{a2}") })),
    )
    .await;
    assert_eq!((s, v), (StatusCode::OK, json!({"data": true})));
    assert!(admin.list(&BTreeMap::new()).await.unwrap().is_empty());

    server.stop();
    let text = std::fs::read_to_string(&log).unwrap();
    // The log did capture the requests, at debug and trace level.
    assert!(text.contains("request"), "no request was logged:\n{text}");
    assert!(text.contains("TRACE"), "no trace line was logged");
    for token in [ADMIN, ALICE, BOB] {
        assert!(!text.contains(token), "a token is in the server's log");
    }
}

/// With the state in Redis, the owner is part of the stored record: a server that crashed and
/// adopted its sandboxes again from Redis still keeps them apart.
#[tokio::test(flavor = "multi_thread")]
async fn the_owner_survives_in_redis_and_a_restart() {
    let redis = RedisServer::start();
    let prefix = format!("e2e-tenants-{}", std::process::id());
    let mut server = common::server_with(ServerOptions {
        env: vec![
            ("REDIS_ENABLED".into(), "true".into()),
            ("REDIS_SERVER".into(), "127.0.0.1".into()),
            ("REDIS_PORT".into(), redis.port.to_string()),
            ("SANDBOXD_REDIS_PREFIX".into(), prefix.clone()),
            ("AUTO_CLEANUP".into(), "false".into()),
            ("API_KEYS".into(), format!("alice:{ALICE},bob:{BOB}")),
        ],
        ..Default::default()
    })
    .await;
    let (alice, bob) = (client(&server, ALICE), client(&server, BOB));
    let a = alice.create(&create_req()).await.unwrap();
    let store = RedisStore::connect(&redis.config(&prefix)).await.unwrap();
    let rec = store
        .get(&a.id)
        .await
        .unwrap()
        .expect("the record is in Redis");
    assert_eq!(rec.sandbox.metadata["sandboxd.tenant"], "alice");

    server.kill_hard();
    server.restart().await.unwrap();
    let err = bob.get(&a.id).await.unwrap_err();
    assert_eq!(api_code(&err), Some(ErrorCode::NotFound), "{err}");
    assert!(bob.list(&BTreeMap::new()).await.unwrap().is_empty());
    let r = sh(&alice, &a.id, "echo adopted").await;
    assert_eq!(r.stdout, "adopted\n", "{r:?}");
    alice.delete(&a.id).await.unwrap();
}
