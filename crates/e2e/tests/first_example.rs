//! The README's first example, through the real CLI binary against a real server.

mod common;

use std::process::Command;

fn sandboxd(url: &str, args: &[&str]) -> std::process::Output {
    Command::new(sandboxd_e2e::bin_dir().join("sandboxd"))
        .env("SANDBOXD_URL", url)
        .args(args)
        .output()
        .expect("run sandboxd")
}

#[tokio::test(flavor = "multi_thread")]
async fn create_exec_rm_through_the_cli() {
    let server = common::server().await;
    let out = sandboxd(&server.url, &["create", "--type", "base"]);
    assert!(out.status.success(), "create: {out:?}");
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(sandboxd_types::is_valid_sandbox_id(&id), "printed {id:?}");

    let out = sandboxd(
        &server.url,
        &["exec", &id, "--", "python3", "-c", "print(6*7)"],
    );
    assert!(out.status.success(), "exec: {out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "42\n");

    let out = sandboxd(
        &server.url,
        &["exec", &id, "--", "sh", "-c", "echo oops >&2; exit 3"],
    );
    assert_eq!(
        out.status.code(),
        Some(3),
        "exit code passes through: {out:?}"
    );
    assert_eq!(String::from_utf8_lossy(&out.stderr), "oops\n");

    let out = sandboxd(&server.url, &["ls"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&id));

    let out = sandboxd(&server.url, &["rm", &id]);
    assert!(out.status.success(), "rm: {out:?}");
    let out = sandboxd(&server.url, &["exec", &id, "--", "true"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_says_when_no_server_runs() {
    let out = sandboxd("http://127.0.0.1:9", &["ls"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("sandboxd serve"),
        "{out:?}"
    );
}
