//! Read-only mounts, seen from inside a native sandbox. The attacks on the walls (host
//! processes and files, the template, mounts, kernel modules, namespaces, ptrace, bpf and
//! the rest) are the escape battery, tests/common/escape.rs, which tests/escape.rs runs on
//! every backend; host loopback and the memory and pids limits are also in the backend
//! contract, tests/common/contract.rs.

mod common;

use sandboxd_e2e::ServerOptions;

use common::{create_req, sh};

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
