//! Three machines sharing one Redis, each with its own native backend: network namespaces made
//! here, one for Redis and one per node, each node on its own address, joined by a bridge
//! (the test itself talks to them over the bridge from the host). A sandbox made through one
//! node is used through the others (streaming included); a node killed with SIGKILL has its
//! sessions restored elsewhere with their workspace files (the workspaces are on a directory
//! every node reaches); a node that stops hands its sessions back; the other sandboxes are
//! untouched throughout.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use sandboxd_e2e::{Server, ServerOptions};
use sandboxd_types::{ExecEvent, ExecRequest};
use serde_json::{json, Value};

/// The network: a bridge on the host and namespaces `0` (Redis) and `1..=3` (nodes), at
/// `10.<subnet>.0.<n + 1>`; the host is `.254`.
struct Net {
    tag: String,
    subnet: u8,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Net {
    fn new() -> Net {
        use std::os::fd::AsRawFd;
        let pid = std::process::id();
        // The tests of this file run in processes of their own, at once: each takes a subnet
        // no other network of theirs has, chosen and claimed (the bridge's address) under a
        // lock they share.
        let lock = std::fs::File::create("/run/sandboxd-e2e-nets.lock").unwrap();
        // SAFETY: `lock` is an open descriptor for the duration of the call.
        assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
        let taken = Command::new("ip")
            .args(["-o", "-4", "addr", "show"])
            .output()
            .expect("ip (iproute2)");
        let taken = String::from_utf8_lossy(&taken.stdout).into_owned();
        let subnet = (100..=250u8)
            .find(|s| !taken.contains(&format!(" 10.{s}.0.")))
            .expect("a free 10.x.0.0/24 subnet");
        let net = Net {
            tag: format!("{:x}{subnet:02x}", pid % 0xfffff),
            subnet,
        };
        let br = net.bridge();
        ip(&["link", "add", &br, "type", "bridge"]);
        // Where bridged traffic goes through iptables (br_netfilter) and a Docker engine set
        // the FORWARD policy to DROP, these hosts would be cut off from each other: let the
        // bridge's own traffic through (the rule goes with the network).
        net.iptables("-I");
        ip(&["addr", "add", &format!("{}/24", net.addr(253)), "dev", &br]);
        drop(lock);
        ip(&["link", "set", &br, "up"]);
        for n in 0..4 {
            let ns = net.ns(n);
            let (host_end, ns_end) = (format!("sv{}{n}", net.tag), format!("sp{}{n}", net.tag));
            ip(&["netns", "add", &ns]);
            ip(&[
                "link", "add", &host_end, "type", "veth", "peer", "name", &ns_end,
            ]);
            ip(&["link", "set", &ns_end, "netns", &ns]);
            ip(&["link", "set", &host_end, "master", &br, "up"]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", net.addr(n)),
                "dev",
                &ns_end,
            ]);
            ip(&["-n", &ns, "link", "set", &ns_end, "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        net
    }

    /// Insert (`-I`) or delete (`-D`) the rule that forwards the bridge's own traffic. Without
    /// iptables there is no such filtering to get past.
    fn iptables(&self, op: &str) {
        let br = self.bridge();
        let _ = Command::new("iptables")
            .args([op, "FORWARD", "-i", &br, "-o", &br, "-j", "ACCEPT"])
            .stderr(Stdio::null())
            .status();
    }

    fn bridge(&self) -> String {
        format!("sbr{}", self.tag)
    }

    fn ns(&self, n: u8) -> String {
        format!("sbx{}n{n}", self.tag)
    }

    /// Namespace `n`'s address (`253` is the host's).
    fn addr(&self, n: u8) -> String {
        format!("10.{}.0.{}", self.subnet, n + 1)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for n in 0..4 {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(n)])
                .status();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge()])
            .status();
        self.iptables("-D");
    }
}

/// `redis-server` in namespace 0, and its directory (removed with it).
struct Redis {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Redis {
    fn start(net: &Net) -> Redis {
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &net.ns(0), "redis-server"])
            .args(["--bind", &net.addr(0), "--port", "6379", "--save", ""])
            .args(["--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (scripts/setup installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect((net.addr(0).as_str(), 6379)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Redis { child, _dir: dir }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const PORT: u16 = 8000;

async fn node(net: &Net, n: u8, workspaces: &std::path::Path, prefix: &str) -> Server {
    node_with(net, n, workspaces, prefix, &[]).await
}

/// [`node`] with more settings.
async fn node_with(
    net: &Net,
    n: u8,
    workspaces: &std::path::Path,
    prefix: &str,
    more: &[(&str, &str)],
) -> Server {
    common::require_base();
    let addr = net.addr(n);
    let env = [
        ("REDIS_ENABLED", "true".to_string()),
        ("REDIS_SERVER", net.addr(0)),
        ("REDIS_PORT", "6379".to_string()),
        ("SANDBOXD_REDIS_PREFIX", prefix.to_string()),
        ("SANDBOXD_NODE_ID", format!("node{n}")),
        ("SANDBOXD_NODE_URL", format!("http://{addr}:{PORT}")),
        ("DEFAULT_MOUNT_DIR", workspaces.display().to_string()),
        ("SANDBOX_TIMEOUT", "600".to_string()),
    ];
    Server::start(ServerOptions {
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .chain(more.iter().map(|(k, v)| (k.to_string(), v.to_string())))
            .collect(),
        netns: Some(net.ns(n)),
        host: Some(addr),
        port: Some(PORT),
        ..Default::default()
    })
    .await
    .expect("start a node")
}

async fn rpc(node: &Server, method: &str, body: Value) -> Value {
    let r = reqwest::Client::new()
        .post(format!("{}/{method}", node.url))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{method} {body}");
    let v: Value = r.json().await.unwrap();
    v["data"].clone()
}

async fn shell(node: &Server, name: &str, command: &str) -> String {
    let r = rpc(
        node,
        "call_tool",
        json!({"identity": name, "tool_name": "run_shell_command", "arguments": {"command": command}}),
    )
    .await;
    assert_eq!(r["isError"], false, "{command}: {r}");
    r["content"][0]["text"].as_str().unwrap().to_string()
}

async fn ipython(node: &Server, name: &str, code: &str) -> String {
    let r = rpc(
        node,
        "call_tool",
        json!({"identity": name, "tool_name": "run_ipython_cell", "arguments": {"code": code}}),
    )
    .await;
    assert_eq!(r["isError"], false, "{code}: {r}");
    r["content"][0]["text"].as_str().unwrap().to_string()
}

async fn create(node: &Server, session: &str) -> String {
    let name = rpc(
        node,
        "create",
        json!({"sandbox_type": "base", "meta": {"session_ctx_id": session}}),
    )
    .await;
    name.as_str().expect("a name").to_string()
}

/// Wait until `name`'s record is in `state`. Until the dead node's registration lapses,
/// requests for its sandboxes are still forwarded to it and fail with 502: those are retried.
async fn wait_state(node: &Server, name: &str, state: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let r = reqwest::Client::new()
            .post(format!("{}/get_info", node.url))
            .json(&json!({"identity": name}))
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body: Value = r.json().await.unwrap_or_default();
        if status == 200 && body["data"]["state"] == state {
            return body["data"].clone();
        }
        let info = body;
        assert!(
            status == 200 || status == 502,
            "get_info {name}: {status} {info}"
        );
        assert!(
            Instant::now() < deadline,
            "{name} never became {state}: {info}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The network, its Redis, and the workspaces' directory every node reaches. (Bound in this
/// order, they are dropped the other way round: Redis before its namespace goes.)
fn machines() -> (Net, Redis, tempfile::TempDir) {
    let net = Net::new();
    let redis = Redis::start(&net);
    let workspaces = tempfile::Builder::new()
        .prefix("sandboxd-e2e-shared-ws-")
        .tempdir()
        .unwrap();
    (net, redis, workspaces)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_forward_fail_over_and_hand_back() {
    let (net, _redis, workspaces) = machines();
    let prefix = format!("nodes-{}", std::process::id());
    let n1 = node(&net, 1, workspaces.path(), &prefix).await;
    let mut n2 = node(&net, 2, workspaces.path(), &prefix).await;
    let mut n3 = node(&net, 3, workspaces.path(), &prefix).await;

    // One sandbox per node, each made through its node.
    let s1 = create(&n1, "s1").await;
    let s2 = create(&n2, "s2").await;
    let s3 = create(&n3, "s3").await;

    // s1 is used through all three nodes: the same box answers (its host name), with its
    // Python state and its files.
    let host1 = shell(&n1, &s1, "hostname").await;
    assert_eq!(shell(&n2, &s1, "hostname").await, host1);
    assert_eq!(shell(&n3, &s1, "hostname").await, host1);
    ipython(&n2, &s1, "x = 20").await;
    assert_eq!(ipython(&n3, &s1, "print(x + 1)").await, "21\n");
    let put = reqwest::Client::new()
        .put(format!(
            "{}/proxy/{s1}/workspace/file?path=via-n3.txt",
            n3.url
        ))
        .body("written through node 3")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    let got = reqwest::get(format!(
        "{}/proxy/{s1}/workspace/file?path=via-n3.txt",
        n2.url
    ))
    .await
    .unwrap();
    assert_eq!(got.text().await.unwrap(), "written through node 3");

    // A streamed exec through another node streams: the first line arrives before the
    // command ends.
    let id1 = s1.trim_start_matches("sandboxd-");
    let mut events = n3
        .client()
        .exec_stream(
            id1,
            &ExecRequest {
                shell: Some("echo one; sleep 2; echo two".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let t0 = Instant::now();
    let mut first_at = None;
    let mut out = String::new();
    while let Some(ev) = events.next().await {
        match ev.unwrap() {
            ExecEvent::Stdout { data } => {
                first_at.get_or_insert(t0.elapsed());
                out.push_str(&data);
            }
            ExecEvent::Exit { exit_code, .. } => {
                assert_eq!(exit_code, Some(0));
                break;
            }
            _ => {}
        }
    }
    assert_eq!(out, "one\ntwo\n");
    let first_at = first_at.unwrap();
    assert!(
        first_at < Duration::from_millis(1500),
        "first output after {first_at:?}"
    );

    // Node 2's sandbox has state and files; node 2 then dies.
    shell(&n3, &s2, "echo kept > data.txt").await;
    ipython(&n1, &s3, "y = 'three'").await;
    n2.kill_hard();

    // Its session comes back elsewhere on its next touch, once its registration lapsed and
    // a node took it over; the workspace files are there.
    wait_state(&n1, &s2, "recycled").await;
    assert_eq!(shell(&n3, &s2, "cat data.txt").await, "kept\n");
    let info = rpc(&n1, "get_info", json!({"identity": s2})).await;
    assert_eq!(info["state"], "running", "{info}");
    assert_ne!(info["container_name"], s2.as_str(), "{info}");
    // The old name works through every live node.
    assert_eq!(shell(&n1, &s2, "cat data.txt").await, "kept\n");

    // The other sandboxes are untouched: same boxes, same state.
    assert_eq!(shell(&n1, &s1, "hostname").await, host1);
    assert_eq!(ipython(&n3, &s1, "print(x)").await, "20\n");
    assert_eq!(ipython(&n1, &s3, "print(y)").await, "three\n");
    assert_eq!(
        rpc(&n1, "get_info", json!({"identity": s3})).await["container_name"],
        s3.as_str()
    );

    // Node 3 stops gracefully: it hands its sandboxes back (s3, and s2's successor), and the
    // next touch through node 1 restores them there with their files.
    shell(&n3, &s3, "echo three > t.txt").await;
    let status = n3.stop().unwrap();
    assert!(status.success(), "{status:?}");
    assert_eq!(shell(&n1, &s3, "cat t.txt").await, "three\n");
    assert_eq!(shell(&n1, &s2, "cat data.txt").await, "kept\n");
    assert_eq!(
        shell(&n1, &s1, "cat via-n3.txt").await,
        "written through node 3"
    );

    // Node 2 starts again: what ran there was taken over, so its start removes those boxes.
    n2.restart().await.unwrap();
    n2.stop();
}

/// Named API keys on two nodes: a tenant's requests for its sandbox are served through the
/// other node as well (forwarded to the sandbox's node, the key with them), and another
/// tenant's are refused on both, forwarded or not, as for a sandbox that does not exist. A
/// request that says it was forwarded is checked the same: the header is no credential.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_stay_apart_through_forwarding() {
    const ALICE: &str = "alice-token-0123456789abcdef";
    const BOB: &str = "bob-token-0123456789abcdef01";
    let (net, _redis, workspaces) = machines();
    let prefix = format!("tenant-nodes-{}", std::process::id());
    let keys = format!("alice:{ALICE},bob:{BOB}");
    let more = [("API_KEYS", keys.as_str())];
    let n1 = node_with(&net, 1, workspaces.path(), &prefix, &more).await;
    let n2 = node_with(&net, 2, workspaces.path(), &prefix, &more).await;
    let on =
        |n: &Server, token: &str| sandboxd_client::Client::new(n.url.clone()).with_token(token);
    let hostname = ExecRequest {
        cmd: Some(vec!["hostname".into()]),
        ..Default::default()
    };

    let sb = on(&n1, ALICE).create(&common::create_req()).await.unwrap();
    let here = on(&n1, ALICE).exec(&sb.id, &hostname).await.unwrap();
    let there = on(&n2, ALICE).exec(&sb.id, &hostname).await.unwrap();
    assert_eq!(there.exit_code, Some(0), "{there:?}");
    assert_eq!(
        there.stdout, here.stdout,
        "the same box answers through node 2"
    );
    assert_eq!(on(&n2, ALICE).get(&sb.id).await.unwrap().id, sb.id);

    for (through, n) in [("node 2, forwarded", &n2), ("node 1, its own", &n1)] {
        let bob = on(n, BOB);
        let not_found = |what: &str, e: sandboxd_client::Error| {
            assert_eq!(
                common::api_code(&e),
                Some(sandboxd_types::ErrorCode::NotFound),
                "bob's {what} through {through}: {e}"
            );
        };
        not_found("get", bob.get(&sb.id).await.unwrap_err());
        not_found("exec", bob.exec(&sb.id, &hostname).await.unwrap_err());
        not_found("delete", bob.delete(&sb.id).await.unwrap_err());
        let listed = bob.list(&Default::default()).await.unwrap();
        assert!(
            listed.iter().all(|s| s.id != sb.id),
            "{through}: {listed:?}"
        );
    }
    let spoofed = reqwest::Client::new()
        .get(format!("{}/v1/sandboxes/{}", n2.url, sb.id))
        .bearer_auth(BOB)
        .header("x-sandboxd-forwarded-by", "node1")
        .send()
        .await
        .unwrap();
    assert_eq!(spoofed.status(), 404);
    let anonymous = reqwest::get(format!("{}/v1/sandboxes/{}", n2.url, sb.id))
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);

    // Still alice's, untouched: she removes it through node 2.
    on(&n2, ALICE).delete(&sb.id).await.unwrap();
    assert!(on(&n1, ALICE).get(&sb.id).await.is_err());
}
