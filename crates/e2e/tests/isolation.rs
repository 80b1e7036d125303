//! The walls of a native sandbox, attacked from inside through the API. (Host loopback and
//! the memory and pids limits are in the backend contract, tests/common/contract.rs, which
//! runs on every backend.)

mod common;

use sandboxd_e2e::ServerOptions;
use sandboxd_types::ExecRequest;

use common::{create_req, sh};

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
