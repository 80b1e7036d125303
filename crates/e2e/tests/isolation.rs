//! The walls of a native sandbox, attacked from inside through the API.

mod common;

use std::io::Read;
use std::net::TcpListener;
use std::time::Duration;

use sandboxd_e2e::ServerOptions;
use sandboxd_types::ExecRequest;

use common::{create_req, sh, with_limits};

#[tokio::test(flavor = "multi_thread")]
async fn host_processes_files_and_template_are_out_of_reach() {
    let server = common::server().await;
    let c = server.client();
    let sb = c.create(&create_req()).await.unwrap();

    // Only the sandbox's own processes are visible: its agent is PID 1.
    let r = sh(
        &c,
        &sb.id,
        "ls /proc | grep -c '^[0-9]*$'; cat /proc/1/comm",
    )
    .await;
    let mut lines = r.stdout.lines();
    let count: usize = lines.next().unwrap().parse().unwrap();
    assert!(count < 10, "sees {count} processes: {r:?}");
    assert!(
        lines.next().unwrap().contains("sandboxd"),
        "PID 1 is not the agent: {r:?}"
    );
    let host_pid = server.pid().unwrap();
    let r = sh(&c, &sb.id, &format!("cat /proc/{host_pid}/cmdline")).await;
    assert!(
        !r.stdout.contains("serve"),
        "the server's process is visible: {r:?}"
    );

    // Writes to the root land in the sandbox's own layer, never in the template.
    let r = sh(
        &c,
        &sb.id,
        "echo x > /usr/bin/planted && cat /usr/bin/planted",
    )
    .await;
    assert_eq!(r.stdout, "x\n", "{r:?}");
    let template = sandboxd_e2e::templates_dir().join("base/rootfs/usr/bin/planted");
    assert!(!template.exists(), "the template was written");

    // The host's files are not there at all; a file made in /tmp stays inside.
    let marker = format!("/tmp/sandboxd-e2e-marker-{}", std::process::id());
    let r = sh(
        &c,
        &sb.id,
        &format!("echo inside > {marker}; ls /var/lib/sandboxd 2>&1"),
    )
    .await;
    assert!(
        !std::path::Path::new(&marker).exists(),
        "sandbox /tmp leaked to the host"
    );
    assert_ne!(r.exit_code, Some(0), "{r:?}");

    // No mounting, no kernel modules, no new namespaces, no ptrace.
    let r = sh(&c, &sb.id, "mkdir -p /mnt/x && mount -t tmpfs none /mnt/x").await;
    assert_ne!(r.exit_code, Some(0), "mount worked: {r:?}");
    let probe = r#"
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
def call(nr, *args):
    r = libc.syscall(nr, *args)
    return errno.errorcode.get(ctypes.get_errno(), "ok") if r == -1 else "ok"
print("finit_module", call(313, -1, b"", 0))
print("init_module", call(175, None, 0, b""))
print("unshare", call(272, 0x00020000))
print("ptrace", call(101, 16, 1, 0, 0))
print("bpf", call(321, 0, None, 0))
"#;
    let r = c
        .exec(
            &sb.id,
            &ExecRequest {
                cmd: Some(vec!["python3".into(), "-c".into(), probe.into()]),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    for line in r.stdout.lines() {
        assert!(line.ends_with("EPERM"), "not denied: {line} ({r:?})");
    }
    assert_eq!(r.stdout.lines().count(), 5, "{r:?}");
    c.delete(&sb.id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn host_loopback_is_unreachable() {
    let server = common::server().await;
    let c = server.client();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let sb = c.create(&create_req()).await.unwrap();
    let code = format!(
        "import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), timeout=3)\n    print('connected')\nexcept OSError as e:\n    print('refused', e)\n"
    );
    let r = c
        .exec(
            &sb.id,
            &ExecRequest {
                cmd: Some(vec!["python3".into(), "-c".into(), code]),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(r.stdout.starts_with("refused"), "{r:?}");
    let mut buf = [0u8; 1];
    match listener.accept() {
        Ok((mut s, _)) => panic!("the host listener got a connection: {:?}", s.read(&mut buf)),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock),
    }
    // Its own loopback works.
    let r = sh(
        &c,
        &sb.id,
        "python3 -c \"import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); s.listen(); socket.create_connection(s.getsockname()); print('ok')\"",
    )
    .await;
    assert_eq!(r.stdout, "ok\n", "{r:?}");
    c.delete(&sb.id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_and_pids_limits_hold() {
    let server = common::server().await;
    let c = server.client();
    let sb = c.create(&with_limits(64, 40)).await.unwrap();

    // 300 MiB in a 64 MiB sandbox: the command is killed, the sandbox lives on.
    let r = sh(
        &c,
        &sb.id,
        "python3 -c \"b = bytearray(300 << 20); print(len(b))\"",
    )
    .await;
    assert!(
        r.signal == Some(9) || r.exit_code == Some(137),
        "the memory hog was not killed: {r:?}"
    );
    assert_eq!(
        sh(&c, &sb.id, "echo still here").await.stdout,
        "still here\n"
    );

    // 100 forks with room for 40 tasks: the kernel refuses the fork past the limit.
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
        .exec(
            &sb.id,
            &ExecRequest {
                cmd: Some(vec!["python3".into(), "-c".into(), forker.into()]),
                ..Default::default()
            },
        )
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
}

#[tokio::test(flavor = "multi_thread")]
async fn readonly_mounts_are_readable_not_writable() {
    let shared = tempfile::tempdir().unwrap();
    std::fs::write(shared.path().join("data.txt"), "shared\n").unwrap();
    let server = common::server_with(ServerOptions {
        env: vec![(
            "READONLY_MOUNTS".into(),
            format!("{{\"{}\": \"/data\"}}", shared.path().display()),
        )],
        ..Default::default()
    })
    .await;
    let c = server.client();
    let sb = c.create(&create_req()).await.unwrap();
    assert_eq!(
        sh(&c, &sb.id, "cat /data/data.txt").await.stdout,
        "shared\n"
    );
    let r = sh(&c, &sb.id, "echo x > /data/new.txt").await;
    assert_ne!(r.exit_code, Some(0), "{r:?}");
    assert!(!shared.path().join("new.txt").exists());
    c.delete(&sb.id).await.unwrap();
}
