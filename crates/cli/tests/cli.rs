//! The `sandboxd` binary against a real server on a free port whose backend is the fake one of
//! `sandboxd_server::testing` (so these run on any machine): output, exit codes, streaming,
//! copies, errors.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_sandboxd");
use sandboxd_server::testing::fake_server as server;

/// A `sandboxd` command aimed at `url`, with a clean environment for the settings it reads.
fn cmd(url: &str, args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args)
        .env("SANDBOXD_URL", url)
        .env_remove("SANDBOXD_TOKEN")
        .env_remove("BEARER_TOKEN")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    c
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn run(mut c: Command) -> Out {
    let o = tokio::time::timeout(Duration::from_secs(30), c.output())
        .await
        .expect("sandboxd did not finish")
        .unwrap();
    Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

async fn ok(url: &str, args: &[&str]) -> String {
    let o = run(cmd(url, args)).await;
    assert_eq!(o.code, 0, "sandboxd {args:?}: {}", o.stderr);
    o.stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_ls_exec_python_rm() {
    let s = server(None).await;
    let u = s.url.as_str();

    let id = ok(u, &["create", "-m", "team=red", "--env", "FOO=bar"]).await;
    let id = id.trim().to_string();
    assert!(sandboxd_types::is_valid_sandbox_id(&id), "{id:?}");
    let json = ok(
        u,
        &["create", "--json", "--timeout", "0", "--memory", "256"],
    )
    .await;
    let other: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(other["resources"]["memory_mb"], 256);
    assert!(other.get("expires_at_ms").is_none());
    // Published ports: the id alone on stdout, where each port went on stderr.
    let o = run(cmd(u, &["create", "--port", "8000", "--port", "8001"])).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let published = o.stdout.trim().to_string();
    assert!(
        sandboxd_types::is_valid_sandbox_id(&published),
        "{}",
        o.stdout
    );
    for p in ["8000", "8001"] {
        assert!(
            o.stderr
                .contains(&format!("port {p} published at 127.0.0.1:")),
            "{}",
            o.stderr
        );
    }
    let o = run(cmd(u, &["create", "--port", "0"])).await;
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains("not 0"), "{}", o.stderr);
    ok(u, &["rm", &published]).await;

    let table = ok(u, &["ls"]).await;
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("ID "), "{table}");
    assert!(lines[0].contains("METADATA"));
    assert_eq!(lines.len(), 3, "{table}");
    assert!(
        lines[1].starts_with(&id) && lines[1].contains("team=red"),
        "{table}"
    );
    assert!(lines[2].contains("never"), "{table}");
    let filtered = ok(u, &["ls", "--metadata", "team=red", "--json"]).await;
    let v: serde_json::Value = serde_json::from_str(&filtered).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);

    // Exit codes and output streams.
    let o = run(cmd(u, &["exec", &id, "--", "echo", "hi", "there"])).await;
    assert_eq!((o.code, o.stdout.as_str()), (0, "hi there\n"));
    let o = run(cmd(u, &["exec", &id, "--", "env", "FOO"])).await;
    assert_eq!(o.stdout, "bar");
    let o = run(cmd(u, &["exec", &id, "-e", "FOO=baz", "--", "env", "FOO"])).await;
    assert_eq!(o.stdout, "baz");
    let o = run(cmd(u, &["exec", &id, "--", "fail"])).await;
    assert_eq!(
        (o.code, o.stdout.as_str(), o.stderr.as_str()),
        (3, "", "oops\n")
    );
    let o = run(cmd(u, &["exec", &id, "--", "no-such-program"])).await;
    assert_eq!(o.code, 127);
    let mut c = cmd(u, &["exec", &id, "--stdin", "--", "cat"]);
    c.stdin(Stdio::piped()).stdout(Stdio::piped());
    let mut child = c.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"from stdin")
        .await
        .unwrap();
    let o = child.wait_with_output().await.unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), "from stdin");
    let o = run(cmd(u, &["exec", &id])).await;
    assert_eq!(o.code, 1);
    assert!(o.stderr.starts_with("error: "), "{}", o.stderr);

    // Python.
    let o = run(cmd(u, &["python", &id, "1+1"])).await;
    assert_eq!((o.code, o.stdout.as_str()), (0, "ran 1+1\n2\n"));
    let o = run(cmd(u, &["python", &id, "1/0"])).await;
    assert_eq!(o.code, 1);
    assert!(o.stderr.contains("Traceback"), "{}", o.stderr);

    // restart: the id is printed, and the sandbox (a new box) answers again.
    assert_eq!(ok(u, &["restart", &id]).await.trim(), id);
    let o = run(cmd(u, &["python", &id, "1+1"])).await;
    assert_eq!((o.code, o.stdout.as_str()), (0, "ran 1+1\n2\n"));

    // rm: the id is printed; a second time it is not found.
    assert_eq!(ok(u, &["rm", &id]).await.trim(), id);
    let o = run(cmd(u, &["rm", &id])).await;
    assert_eq!(o.code, 1);
    assert!(
        o.stderr.starts_with("error: ") && o.stderr.contains("(not_found)"),
        "{}",
        o.stderr
    );
    let o = run(cmd(u, &["exec", &id, "--", "echo"])).await;
    assert_eq!(o.code, 1);
    assert!(o.stderr.contains("(not_found)"), "{}", o.stderr);

    s.server.shutdown().await.unwrap();
    assert_eq!(s.backend.live_boxes(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_output_streams_to_the_terminal() {
    let s = server(None).await;
    let id = ok(&s.url, &["create"]).await.trim().to_string();
    let mut c = cmd(&s.url, &["exec", &id, "--", "gate"]);
    c.stdout(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("the first line did not arrive while the command runs")
        .unwrap();
    assert_eq!(first.as_deref(), Some("one"));
    s.backend.gate.notify_one();
    assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("two"));
    assert_eq!(child.wait().await.unwrap().code(), Some(0));
    s.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cp_both_ways() {
    let s = server(None).await;
    let u = s.url.as_str();
    let id = ok(u, &["create"]).await.trim().to_string();
    let local = s.dir.path().join("up.bin");
    let data: Vec<u8> = (0..(3 << 20) + 5)
        .map(|i: u32| (i * 13 % 256) as u8)
        .collect();
    std::fs::write(&local, &data).unwrap();

    ok(
        u,
        &["cp", local.to_str().unwrap(), &format!("{id}:in/up.bin")],
    )
    .await;
    let back = s.dir.path().join("back.bin");
    ok(
        u,
        &["cp", &format!("{id}:in/up.bin"), back.to_str().unwrap()],
    )
    .await;
    assert!(std::fs::read(&back).unwrap() == data, "round trip differs");
    // Into a directory: the file keeps its name.
    let d = s.dir.path().join("d");
    std::fs::create_dir(&d).unwrap();
    ok(u, &["cp", &format!("{id}:in/up.bin"), d.to_str().unwrap()]).await;
    assert_eq!(
        std::fs::metadata(d.join("up.bin")).unwrap().len(),
        data.len() as u64
    );
    // An upload to a directory path keeps the local name.
    ok(u, &["cp", local.to_str().unwrap(), &format!("{id}:in/")]).await;
    // stdin and stdout.
    let mut c = cmd(u, &["cp", "-", &format!("{id}:note.txt")]);
    c.stdin(Stdio::piped());
    let mut child = c.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"a note")
        .await
        .unwrap();
    assert!(child.wait().await.unwrap().success());
    assert_eq!(
        ok(u, &["cp", &format!("{id}:note.txt"), "-"]).await,
        "a note"
    );

    // Errors leave no partial file behind.
    let missing = s.dir.path().join("missing.bin");
    let o = run(cmd(
        u,
        &["cp", &format!("{id}:nope"), missing.to_str().unwrap()],
    ))
    .await;
    assert_eq!(o.code, 1);
    assert!(o.stderr.contains("(not_found)"), "{}", o.stderr);
    assert!(!missing.exists());
    let o = run(cmd(u, &["cp", &format!("{id}:../x"), "-"])).await;
    assert!(o.stderr.contains("(path_outside_sandbox)"), "{}", o.stderr);
    let o = run(cmd(u, &["cp", "a", "b"])).await;
    assert_eq!(o.code, 1);
    assert!(o.stderr.contains("<sandbox id>:<path>"), "{}", o.stderr);
    s.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_connection_errors() {
    let s = server(Some("s3cret")).await;
    let u = s.url.as_str();
    let o = run(cmd(u, &["ls"])).await;
    assert_eq!(o.code, 1);
    assert!(o.stderr.contains("(unauthorized)"), "{}", o.stderr);
    assert_eq!(ok(u, &["--token", "s3cret", "ls"]).await.lines().count(), 1);
    let mut c = cmd(u, &["ls"]);
    c.env("SANDBOXD_TOKEN", "s3cret");
    assert_eq!(run(c).await.code, 0);
    // BEARER_TOKEN, the server's own variable, is the fallback.
    let mut c = cmd(u, &["ls"]);
    c.env("BEARER_TOKEN", "s3cret");
    assert_eq!(run(c).await.code, 0);
    s.server.shutdown().await.unwrap();

    // Nothing listens there any more.
    let o = run(cmd(u, &["ls"])).await;
    assert_eq!(o.code, 1);
    assert_eq!(
        o.stderr.trim(),
        format!("error: cannot connect to {u}; is `sandboxd serve` running at {u}?")
    );
}

#[tokio::test]
async fn serve_refuses_bad_settings() {
    let dir = tempfile::tempdir().unwrap();
    let env = dir.path().join("custom.env");
    std::fs::write(&env, "# AgentScope style\nHOST=127.0.0.1\nPORT=abc\n").unwrap();
    let o = run(cmd(
        "http://unused",
        &["serve", "--config", env.to_str().unwrap()],
    ))
    .await;
    assert_eq!(o.code, 1);
    assert!(
        o.stderr.contains("PORT") && o.stderr.contains("custom.env:3"),
        "{}",
        o.stderr
    );
    let mut c = cmd("http://unused", &["serve", "--port", "0"]);
    c.env("CONTAINER_DEPLOYMENT", "k8s");
    let o = run(c).await;
    assert_eq!(o.code, 1);
    assert!(
        o.stderr
            .contains("backend k8s is not available in this build"),
        "{}",
        o.stderr
    );
}
