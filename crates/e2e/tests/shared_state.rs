//! Several server processes on one machine sharing their state in a real `redis-server` on
//! loopback: independent `sandboxd serve` processes, `WORKERS=N` behind one port, and Redis
//! going away in the middle of a run.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sandboxd_client::Client;
use sandboxd_core::store::SandboxStore;
use sandboxd_e2e::{Server, ServerOptions};
use sandboxd_store::redis::RedisStore;
use sandboxd_store::testing::RedisServer;
use sandboxd_types::{CreateSandboxRequest, ErrorCode, ExecRequest, SandboxState};

use common::{api_code, create_req, py, sandbox_pids};

/// One machine's settings, shared by every process of the node: Redis, the node's name, its
/// state and run directories and its cgroup parent.
struct Node {
    redis_port: u16,
    prefix: String,
    dir: tempfile::TempDir,
    cgroup_parent: String,
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

impl Node {
    fn new(redis: &RedisServer) -> Node {
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        Node {
            redis_port: redis.port,
            prefix: format!("e2e-{}-{n}", std::process::id()),
            dir: tempfile::Builder::new()
                .prefix("sandboxd-e2e-node-")
                .tempdir()
                .unwrap(),
            cgroup_parent: format!("sandboxd-e2e-node-{}-{n}", std::process::id()),
        }
    }

    fn env(&self, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let state = self.dir.path();
        let mut env: Vec<(String, String)> = [
            ("REDIS_ENABLED", "true".to_string()),
            ("REDIS_SERVER", "127.0.0.1".to_string()),
            ("REDIS_PORT", self.redis_port.to_string()),
            ("SANDBOXD_REDIS_PREFIX", self.prefix.clone()),
            ("SANDBOXD_NODE_ID", "e2e-node".to_string()),
            ("SANDBOXD_STATE_DIR", state.display().to_string()),
            ("SANDBOXD_RUN_DIR", state.join("run").display().to_string()),
            ("SANDBOXD_CGROUP_PARENT", self.cgroup_parent.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        env
    }

    async fn server(&self, extra: &[(&str, &str)]) -> Server {
        common::require_base();
        let mut s = Server::start(ServerOptions {
            env: self.env(extra),
            ..Default::default()
        })
        .await
        .expect("start sandboxd serve");
        // Its sandboxes' groups are the node's (the server's own name for them is unused).
        s.cgroup_parent = self.cgroup_parent.clone();
        s
    }

    /// Names of the sandbox cgroups of the node now.
    fn boxes(&self) -> BTreeSet<String> {
        common::sandbox_cgroups(&self.cgroup_parent)
            .into_iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .filter(|n| n != ".server")
            .collect()
    }

    /// The most sandbox groups in any one cgroup hierarchy now. Each hierarchy's listing is
    /// a snapshot of its own; a union over several, read one after the other, can hold a box
    /// removed from the first read just as another is made in the last.
    fn boxes_in_one_hierarchy(&self) -> usize {
        sandboxd_e2e::cgroup_dirs(&self.cgroup_parent)
            .iter()
            .map(|d| {
                std::fs::read_dir(d)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter(|e| e.path().is_dir() && e.file_name() != ".server")
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    async fn store(&self) -> RedisStore {
        let cfg = sandboxd_store::redis::RedisConfig {
            host: "127.0.0.1".into(),
            port: self.redis_port,
            prefix: self.prefix.clone(),
            ..Default::default()
        };
        RedisStore::connect(&cfg).await.unwrap()
    }
}

fn sh(line: &str) -> ExecRequest {
    ExecRequest {
        shell: Some(line.into()),
        timeout_ms: Some(60_000),
        ..Default::default()
    }
}

/// Samples the node's sandbox count until stopped; the largest count seen.
fn sample_max_boxes(
    node: Arc<Node>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut max = 0;
        while !stop.load(Ordering::SeqCst) {
            max = max.max(node.boxes_in_one_hierarchy());
            std::thread::sleep(Duration::from_millis(2));
        }
        max
    })
}

/// `tasks` clients at once, each `rounds` times: create a sandbox through one client, run a
/// command through the next, set and read Python state through the two after, hold it a
/// moment, delete it through the last. Every answer is checked. Returns how many creates were
/// refused by the instance limit (they are retried).
async fn hammer(clients: &[Client], tasks: usize, rounds: usize) -> usize {
    let limit_hits = Arc::new(AtomicUsize::new(0));
    let clients = Arc::new(clients.to_vec());
    let jobs: Vec<_> = (0..tasks)
        .map(|t| {
            let (clients, hits) = (clients.clone(), limit_hits.clone());
            tokio::spawn(async move {
                let n = clients.len();
                for r in 0..rounds {
                    let c = |k: usize| &clients[(t + r + k) % n];
                    let sb = loop {
                        match c(0).create(&create_req()).await {
                            Ok(sb) => break sb,
                            Err(e) if api_code(&e) == Some(ErrorCode::LimitReached) => {
                                hits.fetch_add(1, Ordering::SeqCst);
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                            Err(e) => panic!("create: {e}"),
                        }
                    };
                    let out = c(1)
                        .exec(&sb.id, &sh(&format!("echo {t}-{r}")))
                        .await
                        .unwrap();
                    assert_eq!(out.stdout, format!("{t}-{r}\n"), "{out:?}");
                    c(2).python(&sb.id, &py(&format!("x = {t} * 100 + {r}")))
                        .await
                        .unwrap();
                    let v = c(3).python(&sb.id, &py("x")).await.unwrap();
                    assert_eq!(v.result, Some((t * 100 + r).to_string()), "{v:?}");
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    c(4).delete(&sb.id).await.unwrap();
                }
            })
        })
        .collect();
    for j in jobs {
        j.await.unwrap();
    }
    limit_hits.load(Ordering::SeqCst)
}

/// Four independent `sandboxd serve` processes of one node on one Redis: a sandbox made through
/// one is used and removed through the others, and the instance limit holds across all four.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_processes_share_sandboxes_and_the_limit() {
    let redis = RedisServer::start();
    let node = Arc::new(Node::new(&redis));
    let mut servers = Vec::new();
    for _ in 0..4 {
        servers.push(node.server(&[("MAX_SANDBOX_INSTANCES", "3")]).await);
    }
    let clients: Vec<Client> = servers.iter().map(Server::client).collect();

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = sample_max_boxes(node.clone(), stop.clone());
    let hits = hammer(&clients, 8, 4).await;
    stop.store(true, Ordering::SeqCst);
    let max = sampler.join().unwrap();
    assert!(
        max <= 3,
        "{max} sandboxes alive at once under MAX_SANDBOX_INSTANCES=3"
    );
    assert!(hits > 0, "8 clients under a limit of 3 never met the limit");

    // Counts balance: nothing left in any process's view, in Redis, or on the machine.
    for c in &clients {
        assert!(c.list(&Default::default()).await.unwrap().is_empty());
    }
    assert!(node.store().await.list().await.unwrap().is_empty());
    assert!(node.boxes().is_empty(), "{:?}", node.boxes());

    // A sandbox of one process outlives that process's restart (it is adopted, not killed).
    let sb = clients[0].create(&create_req()).await.unwrap();
    clients[0]
        .python(&sb.id, &py("kept = 'yes'"))
        .await
        .unwrap();
    servers[0].kill_hard();
    servers[0].restart().await.unwrap();
    let v = clients[1].python(&sb.id, &py("kept")).await.unwrap();
    assert_eq!(v.result.as_deref(), Some("'yes'"));
    let v = servers[0]
        .client()
        .python(&sb.id, &py("kept"))
        .await
        .unwrap();
    assert_eq!(v.result.as_deref(), Some("'yes'"));
    for s in &mut servers {
        s.stop();
    }
    // The first to stop removed the node's sandboxes (AUTO_CLEANUP).
    assert!(node.store().await.list().await.unwrap().is_empty());
    assert!(node.boxes().is_empty(), "{:?}", node.boxes());
}

/// `WORKERS=4`: four worker processes behind one port; the pool is filled once for the node,
/// not once per worker; SIGTERM to the supervisor stops them all and removes every sandbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workers_share_one_port_one_pool_and_stop_together() {
    let redis = RedisServer::start();
    let node = Arc::new(Node::new(&redis));
    let mut server = node
        .server(&[
            ("WORKERS", "4"),
            ("POOL_SIZE", "2"),
            ("MAX_SANDBOX_INSTANCES", "6"),
        ])
        .await;
    let supervisor = server.pid().unwrap() as i32;
    let workers = children_of(supervisor);
    assert_eq!(workers.len(), 4, "{workers:?}");

    // Many connections at once, spread by the kernel over the workers.
    let clients: Vec<Client> = (0..5).map(|_| server.client()).collect();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = sample_max_boxes(node.clone(), stop.clone());
    hammer(&clients, 6, 3).await;
    stop.store(true, Ordering::SeqCst);
    let max = sampler.join().unwrap();
    assert!(
        max <= 6,
        "{max} sandboxes alive at once under MAX_SANDBOX_INSTANCES=6"
    );

    // The pool settles at POOL_SIZE for the node.
    let c = server.client();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let warm = c
            .list(&Default::default())
            .await
            .unwrap()
            .into_iter()
            .filter(|s| s.state == SandboxState::Warm)
            .count();
        if warm == 2 {
            tokio::time::sleep(Duration::from_secs(3)).await;
            let again = c.list(&Default::default()).await.unwrap();
            assert_eq!(again.len(), 2, "the pool overfilled: {again:?}");
            break;
        }
        assert!(
            warm < 2 || Instant::now() < deadline,
            "warm sandboxes: {warm}"
        );
        assert!(Instant::now() < deadline, "the pool did not fill");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A pooled create through any worker gets a warm one.
    let warm_ids: BTreeSet<String> = c
        .list(&Default::default())
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    let sb = c
        .create(&CreateSandboxRequest {
            from_pool: true,
            ..create_req()
        })
        .await
        .unwrap();
    assert!(warm_ids.contains(&sb.id), "{} was not warm", sb.id);
    c.python(&sb.id, &py("held = 'across a crash'"))
        .await
        .unwrap();

    // The supervisor killed with SIGKILL: its workers follow it (they would hold the port),
    // and a new supervisor adopts the node's sandboxes.
    server.kill_hard();
    let deadline = Instant::now() + Duration::from_secs(10);
    while workers.iter().any(|&w| common::pid_alive(w)) {
        assert!(
            Instant::now() < deadline,
            "workers outlived a killed supervisor"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.restart().await.unwrap();
    let workers = children_of(server.pid().unwrap() as i32);
    assert_eq!(workers.len(), 4, "{workers:?}");
    let v = c.python(&sb.id, &py("held")).await.unwrap();
    assert_eq!(v.result.as_deref(), Some("'across a crash'"));

    let status = server.stop().unwrap();
    assert!(status.success(), "{status:?}");
    for w in workers {
        assert!(!common::pid_alive(w), "worker {w} outlived its supervisor");
    }
    assert!(node.store().await.list().await.unwrap().is_empty());
    assert!(node.boxes().is_empty(), "{:?}", node.boxes());
}

fn children_of(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        // The fields after the command name (which may hold spaces) start after its ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<i32>().ok());
        if ppid == Some(pid) {
            out.push(child);
        }
    }
    out
}

/// Redis killed in the middle of a run: requests fail fast with 503 `unavailable`, the sandbox
/// keeps running, and when Redis is back (with its append-only file) everything resumes: the
/// same sandbox, its Python state, its files; nothing reaped, nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_gives_clear_errors_then_recovery() {
    let mut redis = RedisServer::start_persistent();
    let node = Node::new(&redis);
    let server = node.server(&[("SANDBOX_TIMEOUT", "600")]).await;
    let c = server.client();
    let sb = c.create(&create_req()).await.unwrap();
    c.python(&sb.id, &py("before = 41")).await.unwrap();
    c.exec(&sb.id, &sh("echo kept > note.txt")).await.unwrap();
    // The box's long-lived processes (its agent, the Python interpreter), once the exec's
    // have gone.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pids = sandbox_pids(&node.cgroup_parent);
    assert!(pids.len() >= 2, "{pids:?}");

    redis.stop();
    let t0 = Instant::now();
    let e = c.exec(&sb.id, &sh("true")).await.unwrap_err();
    assert_eq!(api_code(&e), Some(ErrorCode::Unavailable), "{e}");
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t0.elapsed()
    );
    assert!(
        e.to_string().contains("unavailable") || e.to_string().contains("redis"),
        "{e}"
    );
    let e = c.create(&create_req()).await.unwrap_err();
    assert_eq!(api_code(&e), Some(ErrorCode::Unavailable), "{e}");
    let e = c.list(&Default::default()).await.unwrap_err();
    assert_eq!(api_code(&e), Some(ErrorCode::Unavailable), "{e}");
    // The sandbox's processes run on meanwhile (a few reaper rounds pass).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let dead: Vec<i32> = pids
        .iter()
        .copied()
        .filter(|&p| !common::pid_alive(p))
        .collect();
    assert!(dead.is_empty(), "the outage killed {dead:?} of {pids:?}");

    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    let back = loop {
        match c.python(&sb.id, &py("before + 1")).await {
            Ok(r) => break r,
            Err(e) => {
                assert!(Instant::now() < deadline, "no recovery: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(back.result.as_deref(), Some("42"));
    let out = c.exec(&sb.id, &sh("cat note.txt")).await.unwrap();
    assert_eq!(out.stdout, "kept\n");
    let all = c.list(&Default::default()).await.unwrap();
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0].state, SandboxState::Running);
    c.delete(&sb.id).await.unwrap();
    assert!(node.boxes().is_empty());
}

/// POST an AgentScope RPC; its `data`.
async fn rpc(url: &str, method: &str, body: serde_json::Value) -> serde_json::Value {
    let r = reqwest::Client::new()
        .post(format!("{url}/{method}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{method}");
    let v: serde_json::Value = r.json().await.unwrap();
    v["data"].clone()
}

/// AgentScope sessions across two processes: sandboxes bound to one session through either
/// show in both mappings, and a recycled session touched through both at once is restored once:
/// one successor, which both processes' old names lead to, with its files.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sessions_are_shared_and_a_recycled_one_is_restored_once() {
    use serde_json::json;
    let redis = RedisServer::start();
    let node = Node::new(&redis);
    let heartbeat = [("HEARTBEAT_TIMEOUT", "1"), ("HEARTBEAT_SCAN_INTERVAL", "1")];
    let a = node.server(&heartbeat).await;
    let b = node.server(&heartbeat).await;

    let meta = json!({"session_ctx_id": "shared-session"});
    let mut names = BTreeSet::new();
    for url in [&a.url, &b.url, &a.url] {
        let name = rpc(url, "create", json!({"sandbox_type": "base", "meta": meta})).await;
        names.insert(name.as_str().unwrap().to_string());
    }
    for url in [&a.url, &b.url] {
        let mapped: BTreeSet<String> = rpc(
            url,
            "get_session_mapping",
            json!({"session_ctx_id": "shared-session"}),
        )
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
        assert_eq!(mapped, names);
    }
    // Release all but one, through the other process.
    let keep = names.iter().next().unwrap().clone();
    for n in names.iter().filter(|n| **n != keep) {
        assert_eq!(rpc(&b.url, "release", json!({"identity": n})).await, true);
    }
    let r = rpc(
        &a.url,
        "call_tool",
        json!({"identity": keep, "tool_name": "run_shell_command", "arguments": {"command": "echo saved > f.txt"}}),
    )
    .await;
    assert_eq!(r["isError"], false, "{r}");

    // Idle past HEARTBEAT_TIMEOUT: one of the two processes' scanners recycles it.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let info = rpc(&b.url, "get_info", json!({"identity": keep})).await;
        if info["state"] == "recycled" {
            break;
        }
        assert!(Instant::now() < deadline, "not recycled: {info}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Both processes touch it at once, several times.
    let touches: Vec<_> = (0..6)
        .map(|i| {
            let url = if i % 2 == 0 {
                a.url.clone()
            } else {
                b.url.clone()
            };
            let keep = keep.clone();
            tokio::spawn(async move { rpc(&url, "check_health", json!({"identity": keep})).await })
        })
        .collect();
    for t in touches {
        assert_eq!(t.await.unwrap(), true);
    }
    let mut successors = BTreeSet::new();
    for url in [&a.url, &b.url] {
        let info = rpc(url, "get_info", json!({"identity": keep})).await;
        successors.insert(info["container_name"].as_str().unwrap().to_string());
    }
    assert_eq!(successors.len(), 1, "{successors:?}");
    let successor = successors.into_iter().next().unwrap();
    assert_ne!(successor, keep);
    let mapped = rpc(
        &a.url,
        "get_session_mapping",
        json!({"session_ctx_id": "shared-session"}),
    )
    .await;
    assert_eq!(
        mapped,
        json!([successor]),
        "one live sandbox for the session"
    );
    let r = rpc(
        &b.url,
        "call_tool",
        json!({"identity": keep, "tool_name": "run_shell_command", "arguments": {"command": "cat f.txt"}}),
    )
    .await;
    assert_eq!(r["content"][0]["text"], "saved\n", "{r}");
}
