//! The Rust client against a real server on a free port (fake backend): every client method,
//! streaming in both directions, errors, and shutdown with AUTO_CLEANUP.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use sandboxd_client::types::{
    CreateSandboxRequest, EntryKind, ErrorCode, ExecEvent, ExecRequest, PythonRequest,
};
use sandboxd_client::{Client, Error};
use sandboxd_server::testing::fake_server as server;

fn shell(cmd: &[&str]) -> ExecRequest {
    ExecRequest {
        cmd: Some(cmd.iter().map(|s| s.to_string()).collect()),
        ..Default::default()
    }
}

#[tokio::test]
async fn client_covers_every_route() {
    let s = server(Some("tok3n")).await;
    let c = Client::new(&s.url).with_token("tok3n");

    assert_eq!(c.health().await.unwrap().status, "healthy");
    assert_eq!(c.types().await.unwrap(), vec!["base"]);

    let sb = c
        .create(&CreateSandboxRequest {
            metadata: [("owner".to_string(), "me".to_string())].into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let other = c.create(&CreateSandboxRequest::default()).await.unwrap();
    assert_eq!(c.get(&sb.id).await.unwrap().id, sb.id);
    assert_eq!(c.list(&BTreeMap::new()).await.unwrap().len(), 2);
    let mine = c
        .list(&[("owner".to_string(), "me".to_string())].into())
        .await
        .unwrap();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].id, sb.id);
    let t = c.set_timeout(&sb.id, 0).await.unwrap();
    assert_eq!(t.expires_at_ms, None);

    let r = c.exec(&sb.id, &shell(&["echo", "hi"])).await.unwrap();
    assert_eq!((r.stdout.as_str(), r.exit_code), ("hi\n", Some(0)));

    // Streamed: the first output arrives while the command still runs.
    let mut events = c.exec_stream(&sb.id, &shell(&["gate"])).await.unwrap();
    assert_eq!(
        events.next().await.unwrap().unwrap(),
        ExecEvent::Started { pid: 42 }
    );
    let first = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .expect("output did not arrive while the command runs")
        .unwrap()
        .unwrap();
    assert_eq!(
        first,
        ExecEvent::Stdout {
            data: "one\n".into()
        }
    );
    s.backend.gate.notify_one();
    let rest: Vec<ExecEvent> = events.map(|e| e.unwrap()).collect().await;
    assert_eq!(
        rest[0],
        ExecEvent::Stdout {
            data: "two\n".into()
        }
    );
    assert!(matches!(
        rest[1],
        ExecEvent::Exit {
            exit_code: Some(0),
            ..
        }
    ));

    let p = c
        .python(
            &sb.id,
            &PythonRequest {
                code: "1+1".into(),
                timeout_ms: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(p.result.as_deref(), Some("2"));

    // Files, whole and streamed.
    let data: Vec<u8> = (0..(2 << 20) + 17).map(|i: u32| (i % 253) as u8).collect();
    let e = c
        .write_file(&sb.id, "a/big.bin", data.clone())
        .await
        .unwrap();
    assert_eq!(e.size, data.len() as u64);
    assert_eq!(c.read_file(&sb.id, "a/big.bin").await.unwrap(), data);
    let mut pieces = c.read_file_stream(&sb.id, "a/big.bin").await.unwrap();
    let mut got = Vec::new();
    let mut n = 0;
    while let Some(p) = pieces.next().await {
        got.extend_from_slice(&p.unwrap());
        n += 1;
    }
    assert_eq!(got, data);
    assert!(n > 1, "a 2 MiB download came in one piece");
    let chunks = futures::stream::iter(vec![
        Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"hello ")),
        Ok(bytes::Bytes::from_static(b"world")),
    ]);
    c.write_file_stream(&sb.id, "hello.txt", Some(0o600), chunks)
        .await
        .unwrap();
    assert_eq!(
        &c.read_file(&sb.id, "hello.txt").await.unwrap()[..],
        b"hello world"
    );
    assert_eq!(
        c.stat(&sb.id, "hello.txt").await.unwrap().kind,
        EntryKind::File
    );
    assert!(c.mkdir(&sb.id, "d", false).await.unwrap());
    assert!(!c.mkdir(&sb.id, "d", true).await.unwrap());
    let moved = c
        .move_path(&sb.id, "hello.txt", "d/hello.txt")
        .await
        .unwrap();
    assert_eq!(moved.path, "/workspace/d/hello.txt");
    let names: Vec<String> = c
        .list_files(&sb.id, "d", Some(1))
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, vec!["hello.txt"]);
    c.remove(&sb.id, "d/hello.txt", false).await.unwrap();

    // API errors carry their code.
    let e = c.stat(&sb.id, "d/hello.txt").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotFound));
    let e = c.read_file(&sb.id, "../../etc/passwd").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::PathOutsideSandbox));
    let e = c.get("sb-0000000000000000").await.unwrap_err();
    assert!(
        matches!(
            e,
            Error::Api {
                status: 404,
                code: ErrorCode::NotFound,
                ..
            }
        ),
        "{e}"
    );
    let e = c.get("../health").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotFound));
    let e = Client::new(&s.url)
        .list(&BTreeMap::new())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Unauthorized));
    let e = c
        .exec_stream("sb-0000000000000000", &shell(&["echo"]))
        .await
        .err()
        .unwrap();
    assert_eq!(e.code(), Some(ErrorCode::NotFound));

    c.delete(&sb.id).await.unwrap();
    assert_eq!(
        c.delete(&sb.id).await.unwrap_err().code(),
        Some(ErrorCode::NotFound)
    );

    // Stopping the server removes the sandboxes that are left (AUTO_CLEANUP).
    assert_eq!(s.backend.live_boxes(), 1);
    let _ = other;
    s.server.shutdown().await.unwrap();
    assert_eq!(s.backend.live_boxes(), 0);
    let e = c.health().await.unwrap_err();
    assert!(e.is_connect(), "{e:?}");
}

/// Hyper drops the response body when the client goes away, which drops the manager's
/// `ExecStream`; but `Manager::exec`'s task only notices the closed channel when the next event
/// arrives, so a silent command keeps its agent connection (and so keeps running).
#[tokio::test]
async fn dropping_an_exec_stream_ends_the_command() {
    let s = server(None).await;
    let c = Client::new(&s.url);
    let sb = c.create(&CreateSandboxRequest::default()).await.unwrap();
    let mut events = c.exec_stream(&sb.id, &shell(&["sleep"])).await.unwrap();
    assert!(matches!(
        events.next().await.unwrap().unwrap(),
        ExecEvent::Started { .. }
    ));
    // The fake `sleep` ends only when its agent connection closes.
    let conns_before = s.backend.open_connections();
    drop(events);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while s.backend.open_connections() >= conns_before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the agent connection stayed open after the client went away"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.server.shutdown().await.unwrap();
}
