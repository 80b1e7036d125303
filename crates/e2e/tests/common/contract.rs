//! The backend contract: what every backend must do, checked through the HTTP API of a real
//! server on that backend. `tests/backends.rs` runs it on each backend.

use std::io::Read;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use futures::StreamExt;
use sandboxd_e2e::Server;
use sandboxd_types::{ErrorCode, ExecEvent, ExecRequest, SandboxState};

use super::{api_code, create_req, py, sh, with_limits};

fn argv(args: &[&str]) -> ExecRequest {
    ExecRequest {
        cmd: Some(args.iter().map(|a| a.to_string()).collect()),
        ..Default::default()
    }
}

/// Every check, in turn, on `server`, whose backend is `backend`.
pub async fn run_all(server: &mut Server, backend: &str) {
    lifecycle_and_streaming(server, backend).await;
    files_and_python(server).await;
    host_processes_are_invisible(server).await;
    host_loopback_is_unreachable(server).await;
    published_ports_reach_the_sandbox(server).await;
    memory_and_pids_limits_hold(server, backend).await;
    pause_and_timeout(server).await;
    crash_of_the_server_leaves_nothing(server).await;
}

async fn lifecycle_and_streaming(server: &Server, backend: &str) {
    let c = server.client();
    let sb = c.create(&create_req()).await.unwrap();
    assert_eq!(sb.backend, backend);
    assert_eq!(sb.state, SandboxState::Running);
    assert!(c
        .list(&Default::default())
        .await
        .unwrap()
        .iter()
        .any(|s| s.id == sb.id));
    let req = ExecRequest {
        shell: Some("echo first; sleep 2; echo second >&2; exit 3".into()),
        ..Default::default()
    };
    let t0 = Instant::now();
    let mut events = c.exec_stream(&sb.id, &req).await.unwrap();
    let (mut first_at, mut out, mut err, mut exit) = (None, String::new(), String::new(), None);
    while let Some(ev) = events.next().await {
        match ev.unwrap() {
            ExecEvent::Stdout { data } => {
                first_at.get_or_insert(t0.elapsed());
                out.push_str(&data);
            }
            ExecEvent::Stderr { data } => err.push_str(&data),
            ExecEvent::Exit { exit_code, .. } => {
                exit = Some((exit_code, t0.elapsed()));
                break;
            }
            ExecEvent::Error { error } => panic!("{error:?}"),
            _ => {}
        }
    }
    let (code, ended) = exit.expect("an exit event");
    assert_eq!(
        (code, out.as_str(), err.as_str()),
        (Some(3), "first\n", "second\n")
    );
    assert!(
        ended - first_at.unwrap() >= Duration::from_millis(1500),
        "the first line did not stream before the end"
    );
    c.delete(&sb.id).await.unwrap();
    let e = c.get(&sb.id).await.unwrap_err();
    assert_eq!(api_code(&e), Some(ErrorCode::NotFound), "{e}");
}

async fn files_and_python(server: &Server) {
    let c = server.client();
    let sb = c.create(&create_req()).await.unwrap();
    c.write_file(&sb.id, "dir/a.txt", b"hello".to_vec())
        .await
        .unwrap();
    assert_eq!(
        sh(&c, &sb.id, "cat /workspace/dir/a.txt").await.stdout,
        "hello"
    );
    let back = c.read_file(&sb.id, "dir/a.txt").await.unwrap();
    assert_eq!(&back[..], b"hello");
    for escape in ["../../etc/passwd", "/etc/passwd"] {
        let e = c.read_file(&sb.id, escape).await.unwrap_err();
        assert_eq!(
            api_code(&e),
            Some(ErrorCode::PathOutsideSandbox),
            "{escape}: {e}"
        );
    }
    sh(&c, &sb.id, "ln -s /etc/passwd /workspace/link").await;
    let e = c.read_file(&sb.id, "link").await.unwrap_err();
    assert_eq!(api_code(&e), Some(ErrorCode::PathOutsideSandbox), "{e}");
    c.python(&sb.id, &py("x = 21")).await.unwrap();
    let r = c.python(&sb.id, &py("x * 2")).await.unwrap();
    assert_eq!(r.result.as_deref(), Some("42"));
    c.delete(&sb.id).await.unwrap();
}

/// A port published at creation reaches a server on the sandbox's own loopback (through the
/// guest agent, so on any backend).
async fn published_ports_reach_the_sandbox(server: &Server) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let c = server.client();
    let sb = c
        .create(&sandboxd_types::CreateSandboxRequest {
            ports: vec![8000],
            ..create_req()
        })
        .await
        .unwrap();
    let addr = sandboxd_client::Client::published_address(&sb, 8000)
        .expect("port 8000 published")
        .to_string();
    let r = sh(
        &c,
        &sb.id,
        "cd /workspace && echo served-inside > index.html && \
         setsid python3 -m http.server 8000 --bind 127.0.0.1 >/dev/null 2>&1 </dev/null & \
         for i in $(seq 600); do \
           python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", 8000))' \
             2>/dev/null && exit 0; sleep 0.05; done; exit 1",
    )
    .await;
    assert_eq!(r.exit_code, Some(0), "http.server did not start: {r:?}");
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let mut reply = String::new();
    tokio::time::timeout(Duration::from_secs(60), s.read_to_string(&mut reply))
        .await
        .expect("an answer")
        .unwrap();
    assert!(reply.starts_with("HTTP/1.0 200"), "{reply}");
    assert!(reply.ends_with("served-inside\n"), "{reply}");
    // (That the delete gives the port back is checked in tests/ports.rs, on a range of its
    // own: here the default range is shared with the other servers of the run.)
    c.delete(&sb.id).await.unwrap();
}

async fn host_processes_are_invisible(server: &Server) {
    let c = server.client();
    let sb = c.create(&create_req()).await.unwrap();
    let r = sh(&c, &sb.id, "ls /proc | grep -c '^[0-9]*$'").await;
    let count: usize = r.stdout.trim().parse().unwrap();
    assert!(count < 10, "sees {count} processes: {r:?}");
    let host_pid = server.pid().unwrap();
    let r = sh(&c, &sb.id, &format!("cat /proc/{host_pid}/cmdline")).await;
    assert!(
        !r.stdout.contains("serve"),
        "the server's process is visible: {r:?}"
    );
    c.delete(&sb.id).await.unwrap();
}

async fn host_loopback_is_unreachable(server: &Server) {
    let c = server.client();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let sb = c.create(&create_req()).await.unwrap();
    let code = format!(
        "import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), timeout=3)\n    print('connected')\nexcept OSError as e:\n    print('refused', e)\n"
    );
    let r = c
        .exec(&sb.id, &argv(&["python3", "-c", &code]))
        .await
        .unwrap();
    assert!(r.stdout.starts_with("refused"), "{r:?}");
    let mut buf = [0u8; 1];
    match listener.accept() {
        Ok((mut s, _)) => panic!("the host listener got a connection: {:?}", s.read(&mut buf)),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock),
    }
    c.delete(&sb.id).await.unwrap();
}

/// The memory hog of [`memory_and_pids_limits_hold`]: 300 MiB in a box of 64.
const MEMORY_HOG: &str = "python3 -c \"b = bytearray(300 << 20); print(len(b))\"";

async fn memory_and_pids_limits_hold(server: &Server, backend: &str) {
    let c = server.client();
    let gvisor = backend == "gvisor";
    // Under gVisor, forked processes' memory is the sandbox kernel's and is not shared
    // copy-on-write the way the host kernel shares it: 40 Pythons need more than 64 MiB.
    let sb = c
        .create(&with_limits(if gvisor { 384 } else { 64 }, 40))
        .await
        .unwrap();
    if gvisor {
        // gVisor has no out-of-memory killer of its own: the host's kills the sandbox's
        // kernel, so the whole box ends (checked last, below, in a box of 64 MiB).
    } else {
        let r = sh(&c, &sb.id, MEMORY_HOG).await;
        assert!(
            r.signal == Some(9) || r.exit_code == Some(137),
            "the memory hog was not killed: {r:?}"
        );
        assert_eq!(
            sh(&c, &sb.id, "echo still here").await.stdout,
            "still here\n"
        );
    }
    let forker = r#"
import os, time
kids, err = [], None
for i in range(100):
    try:
        pid = os.fork()
    except OSError as e:
        err = e
        break
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    kids.append(pid)
print(len(kids), type(err).__name__)
for k in kids:
    os.kill(k, 9)
    os.waitpid(k, 0)
"#;
    let r = c
        .exec(&sb.id, &argv(&["python3", "-c", forker]))
        .await
        .unwrap();
    let mut words = r.stdout.split_whitespace();
    let forked: usize = words.next().unwrap_or("").parse().unwrap_or(usize::MAX);
    assert!(forked < 40, "more tasks than the pids limit: {r:?}");
    assert_eq!(words.next(), Some("BlockingIOError"), "{r:?}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        sh(&c, &sb.id, "echo still here").await.stdout,
        "still here\n"
    );
    c.delete(&sb.id).await.unwrap();
    if gvisor {
        // The hog never gets its memory: the box ends, the server notices and says so, and
        // the next box is fine.
        let sb = c.create(&with_limits(64, 40)).await.unwrap();
        let r = c.exec(&sb.id, &argv(&["sh", "-c", MEMORY_HOG])).await;
        assert!(
            !r.as_ref().is_ok_and(|r| r.exit_code == Some(0)),
            "the memory hog got its memory: {r:?}"
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let state = c.get(&sb.id).await.map(|s| s.state);
            if matches!(state, Ok(SandboxState::Error) | Err(_)) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "a box killed for its memory is still reported as {state:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let next = c.create(&with_limits(64, 40)).await.unwrap();
        assert_eq!(sh(&c, &next.id, "echo fine").await.stdout, "fine\n");
        c.delete(&next.id).await.unwrap();
        let _ = c.delete(&sb.id).await;
    }
}

async fn pause_and_timeout(server: &Server) {
    let c = server.client();
    let sb = c.create(&create_req()).await.unwrap();
    c.python(&sb.id, &py("kept = 1")).await.unwrap();
    assert_eq!(c.pause(&sb.id).await.unwrap().state, SandboxState::Paused);
    let e = c.exec(&sb.id, &argv(&["true"])).await.unwrap_err();
    assert_eq!(api_code(&e), Some(ErrorCode::NotRunning), "{e}");
    c.resume(&sb.id).await.unwrap();
    assert_eq!(
        c.python(&sb.id, &py("kept"))
            .await
            .unwrap()
            .result
            .as_deref(),
        Some("1")
    );
    // A sandbox whose timeout passes is removed by the reaper.
    c.set_timeout(&sb.id, 1).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.get(&sb.id).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "the expired sandbox was not removed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The server killed with SIGKILL in the middle of a streaming exec and an upload, and
/// started again: what it left is cleaned up (the in-memory store forgot it), and the file
/// written before the kill is whole in the workspace, where the cut upload left nothing.
async fn crash_of_the_server_leaves_nothing(server: &mut Server) {
    let c = server.client();
    let sb = c.create(&create_req()).await.unwrap();
    assert_eq!(sh(&c, &sb.id, "echo up").await.stdout, "up\n");
    let kept: Vec<u8> = (0..(1u32 << 20)).map(|i| (i * 7 + i / 251) as u8).collect();
    c.write_file(&sb.id, "kept.bin", kept.clone())
        .await
        .unwrap();
    let req = ExecRequest {
        shell: Some("while :; do echo tick; sleep 0.05; done".into()),
        ..Default::default()
    };
    let mut events = c.exec_stream(&sb.id, &req).await.unwrap();
    loop {
        match events.next().await {
            Some(Ok(ExecEvent::Stdout { .. })) => break,
            Some(Ok(_)) => {}
            other => panic!("the streaming exec ended: {other:?}"),
        }
    }
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = sent.clone();
    let body = futures::stream::unfold((), move |()| {
        let counter = counter.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            counter.fetch_add(64 << 10, std::sync::atomic::Ordering::SeqCst);
            Some((Ok::<_, std::io::Error>(vec![b'x'; 64 << 10]), ()))
        }
    });
    let (c2, id) = (c.clone(), sb.id.clone());
    let upload =
        tokio::spawn(async move { c2.write_file_stream(&id, "kept.bin", None, body).await });
    let deadline = Instant::now() + Duration::from_secs(60);
    while sent.load(std::sync::atomic::Ordering::SeqCst) < 2 << 20 {
        assert!(Instant::now() < deadline, "the upload did not get going");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.kill_hard();
    upload.abort();
    drop(events);
    server.restart().await.unwrap();
    let c = server.client();
    assert!(c.list(&Default::default()).await.unwrap().is_empty());
    let e = c.exec(&sb.id, &argv(&["true"])).await.unwrap_err();
    assert_eq!(api_code(&e), Some(ErrorCode::NotFound), "{e}");
    let ws = server.workspace(&sb.session_id);
    assert!(std::fs::read(ws.join("kept.bin")).unwrap() == kept);
    let names: Vec<_> = std::fs::read_dir(&ws)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["kept.bin"], "a cut upload left a file");
}
