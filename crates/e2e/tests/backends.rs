//! The backend contract (tests/common/contract.rs) on every backend: the native one, and
//! Docker on a private `dockerd` this test starts (scripts/setup installs docker.io).

mod common;

use sandboxd_e2e::{DockerDaemon, ServerOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_backend_keeps_the_contract() {
    let mut server = common::server().await;
    common::contract::run_all(&mut server, "native").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_backend_keeps_the_contract() {
    let dockerd = DockerDaemon::start().expect("a private dockerd");
    let mut server = common::server_with(ServerOptions {
        env: vec![
            ("CONTAINER_DEPLOYMENT".into(), "docker".into()),
            ("DOCKER_HOST".into(), dockerd.host.clone()),
        ],
        ..Default::default()
    })
    .await;
    common::contract::run_all(&mut server, "docker").await;
    // A graceful stop removes every container the server made.
    server.stop();
    assert_eq!(dockerd.containers(), Vec::<String>::new());
}
