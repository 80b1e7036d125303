//! The backend contract (tests/common/contract.rs) on every backend: the native one, Docker on
//! a private `dockerd` this test starts (and on a private Podman service), and gVisor (scripts/setup installs docker.io and
//! runsc). A backend whose runtime is missing is reported as skipped, with the reason, unless
//! `SANDBOXD_REQUIRE_ALL_BACKENDS` is set (as `scripts/test` does), which makes it a failure.

mod common;

use sandboxd_e2e::{DockerDaemon, PodmanService, ServerOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_backend_keeps_the_contract() {
    let mut server = common::server().await;
    common::contract::run_all(&mut server, "native").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gvisor_backend_keeps_the_contract() {
    if !common::runtime_installed("gvisor", "runsc") {
        return;
    }
    let mut server = common::server_with(ServerOptions {
        env: vec![("CONTAINER_DEPLOYMENT".into(), "gvisor".into())],
        ..Default::default()
    })
    .await;
    common::contract::run_all(&mut server, "gvisor").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_backend_keeps_the_contract() {
    if !common::runtime_installed("docker", "dockerd") {
        return;
    }
    let dockerd = DockerDaemon::start().expect("a private dockerd");
    let mut server = common::server_with(ServerOptions {
        env: common::docker_env(&dockerd.host),
        ..Default::default()
    })
    .await;
    common::contract::run_all(&mut server, "docker").await;
    // A graceful stop removes every container the server made.
    server.stop();
    assert_eq!(dockerd.containers(), Vec::<String>::new());
}

/// The docker backend on Podman's Docker-compatible socket instead of dockerd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_backend_keeps_the_contract_on_podman() {
    if !common::runtime_installed("docker (Podman)", "podman") {
        return;
    }
    let podman = PodmanService::start().expect("a private Podman service");
    let mut server = common::server_with(ServerOptions {
        env: common::docker_env(&podman.host),
        ..Default::default()
    })
    .await;
    common::contract::run_all(&mut server, "docker").await;
    server.stop();
    assert_eq!(podman.containers(), Vec::<String>::new());
}

/// Two nodes sharing one Redis and one Docker engine reached over TCP: a sandbox made through
/// one node is served by the other directly (its agent reached through the engine), and keeps
/// running, untouched, when the node that made it dies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_share_a_docker_engine() {
    use common::py;
    use sandboxd_store::testing::RedisServer;
    use sandboxd_types::SandboxState;
    let dockerd = DockerDaemon::start_with_tcp().expect("a private dockerd");
    let redis = RedisServer::start();
    let prefix = format!("shared-engine-{}", std::process::id());
    let node = |n: u16, port: u16| {
        let env = [
            ("CONTAINER_DEPLOYMENT", "docker".to_string()),
            ("DOCKER_HOST", dockerd.tcp.clone().unwrap()),
            ("REDIS_ENABLED", "true".to_string()),
            ("REDIS_SERVER", "127.0.0.1".to_string()),
            ("REDIS_PORT", redis.port.to_string()),
            ("SANDBOXD_REDIS_PREFIX", prefix.clone()),
            ("SANDBOXD_NODE_ID", format!("engine-node{n}")),
            ("SANDBOXD_NODE_URL", format!("http://127.0.0.1:{port}")),
            // One engine, one set of containers: the same instance label for both nodes.
            ("SANDBOXD_CGROUP_PARENT", prefix.clone()),
        ];
        ServerOptions {
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            port: Some(port),
            ..Default::default()
        }
    };
    let ports = [free_port(), free_port()];
    let mut n1 = common::server_with(node(1, ports[0])).await;
    let n2 = common::server_with(node(2, ports[1])).await;
    let (c1, c2) = (n1.client(), n2.client());

    let sb = c1.create(&common::create_req()).await.unwrap();
    c1.python(&sb.id, &py("x = 'made through node 1'"))
        .await
        .unwrap();
    let host = common::sh(&c1, &sb.id, "hostname").await.stdout;
    assert_eq!(common::sh(&c2, &sb.id, "hostname").await.stdout, host);
    let r = c2.python(&sb.id, &py("x")).await.unwrap();
    assert_eq!(r.result.as_deref(), Some("'made through node 1'"));

    // Node 1 dies: the sandbox runs on in the engine and node 2 goes on serving it.
    n1.kill_hard();
    tokio::time::sleep(std::time::Duration::from_secs(12)).await;
    let got = c2.get(&sb.id).await.unwrap();
    assert_eq!(got.state, SandboxState::Running, "{got:?}");
    let r = c2.python(&sb.id, &py("x")).await.unwrap();
    assert_eq!(r.result.as_deref(), Some("'made through node 1'"));
    // Node 1 comes back and adopts it rather than removing it.
    n1.restart().await.unwrap();
    assert_eq!(
        common::sh(&n1.client(), &sb.id, "hostname").await.stdout,
        host
    );
    c2.delete(&sb.id).await.unwrap();
    n1.stop();
    drop(n2);
    assert_eq!(dockerd.containers(), Vec::<String>::new());
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An image the user names runs as it is, with the agent injected: its own entrypoint and
/// user are replaced, every tool works. Images the engine lacks and cannot pull, and images
/// on a backend that runs templates, are refused with a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_backend_runs_images_the_user_names() {
    use sandboxd_types::{CreateSandboxRequest, ErrorCode};
    if !common::runtime_installed("docker", "dockerd") {
        return;
    }
    let dockerd = DockerDaemon::start().expect("a private dockerd");
    // The user's image: busybox and a marker, whose entrypoint would fail and whose user is
    // not root. (No registry is reachable here: it is imported, as a user's build would be
    // on the engine already.)
    let tree = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tree.path().join("bin")).unwrap();
    std::fs::create_dir_all(tree.path().join("etc")).unwrap();
    std::fs::copy("/bin/busybox", tree.path().join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", tree.path().join("bin/sh")).unwrap();
    std::fs::write(tree.path().join("etc/marker"), "the user's image\n").unwrap();
    let import = format!(
        "tar -C {} -c . | docker import --change 'ENTRYPOINT [\"/bin/false\"]' \
         --change 'USER 1000' - team/tools:1",
        tree.path().display()
    );
    let status = std::process::Command::new("sh")
        .args(["-c", &import])
        .env("DOCKER_HOST", &dockerd.host)
        .status()
        .unwrap();
    assert!(status.success(), "docker import");

    let server = common::server_with(ServerOptions {
        env: common::docker_env(&dockerd.host),
        ..Default::default()
    })
    .await;
    let c = server.client();
    let req = |image: &str| CreateSandboxRequest {
        image: Some(image.to_string()),
        ..common::create_req()
    };
    let sb = c.create(&req("team/tools:1")).await.unwrap();
    assert_eq!(sb.image.as_deref(), Some("team/tools:1"));
    let r = common::sh(&c, &sb.id, "busybox cat /etc/marker; busybox id -u; pwd").await;
    assert_eq!(r.stdout, "the user's image\n0\n/workspace\n", "{r:?}");
    c.write_file(&sb.id, "note.txt", b"kept".to_vec())
        .await
        .unwrap();
    assert_eq!(&c.read_file(&sb.id, "note.txt").await.unwrap()[..], b"kept");
    c.delete(&sb.id).await.unwrap();

    let e = c.create(&req("team/absent:1")).await.unwrap_err();
    assert_eq!(common::api_code(&e), Some(ErrorCode::InvalidRequest), "{e}");
    assert!(e.to_string().contains("team/absent:1"), "{e}");
    let e = c.create(&req("bad image!")).await.unwrap_err();
    assert_eq!(common::api_code(&e), Some(ErrorCode::InvalidRequest), "{e}");
    assert_eq!(dockerd.containers(), vec![] as Vec<String>);

    // A backend that runs templates says so.
    let native = common::server().await;
    let e = native
        .client()
        .create(&req("team/tools:1"))
        .await
        .unwrap_err();
    assert_eq!(common::api_code(&e), Some(ErrorCode::InvalidRequest), "{e}");
    assert!(e.to_string().contains("CONTAINER_DEPLOYMENT=docker"), "{e}");
}
