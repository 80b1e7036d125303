//! A template rebuilt while sandboxes run on it: they keep their tree (retired beside the new
//! one), and `sandboxd template build` removes the retired tree once the last of them is gone.
//! On a templates directory of its own (the `minimal` template builds in milliseconds).

mod common;

use std::path::Path;
use std::process::Command;

use sandboxd_e2e::ServerOptions;
use sandboxd_types::CreateSandboxRequest;

/// `sandboxd template build minimal [--force]` on `dir`; its stderr.
fn build(dir: &Path, force: bool) -> String {
    let mut cmd = Command::new(sandboxd_e2e::bin_dir().join("sandboxd"));
    cmd.args(["template", "build", "minimal", "--templates-dir"])
        .arg(dir);
    if force {
        cmd.arg("--force");
    }
    let out = cmd.output().expect("run sandboxd template build");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    stderr
}

fn retired(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(".retired-"))
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retired_tree_stays_while_its_sandboxes_run_and_goes_after() {
    let templates = tempfile::tempdir().unwrap();
    let dir = templates.path();
    build(dir, false);
    let server = common::server_with(ServerOptions {
        env: vec![("SANDBOXD_TEMPLATES_DIR".into(), dir.display().to_string())],
        ..Default::default()
    })
    .await;
    let c = server.client();
    let minimal = CreateSandboxRequest {
        sandbox_type: Some("minimal".into()),
        ..Default::default()
    };
    let old = c.create(&minimal).await.unwrap();

    let said = build(dir, true);
    let kept = retired(dir);
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert!(said.contains("kept") && said.contains(&kept[0]), "{said}");
    // The sandbox runs on as before, on its tree; a new one gets the new tree.
    let r = common::sh(&c, &old.id, "busybox true && echo ok").await;
    assert_eq!((r.exit_code, r.stdout.as_str()), (Some(0), "ok\n"), "{r:?}");
    let new = c.create(&minimal).await.unwrap();
    assert_eq!(common::sh(&c, &new.id, "echo ok").await.stdout, "ok\n");

    // A build while the old sandbox still runs keeps the tree.
    build(dir, false);
    assert_eq!(retired(dir), kept);

    // Once it is gone, the next build removes the tree, and only it: the new sandbox (on the
    // new tree) is unaffected.
    c.delete(&old.id).await.unwrap();
    let said = build(dir, false);
    assert_eq!(retired(dir), Vec::<String>::new(), "{said}");
    assert!(
        said.contains("removed") && said.contains(&kept[0]),
        "{said}"
    );
    assert_eq!(common::sh(&c, &new.id, "echo ok").await.stdout, "ok\n");
    c.delete(&new.id).await.unwrap();
}
