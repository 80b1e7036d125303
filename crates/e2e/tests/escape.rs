//! The escape battery (tests/common/escape.rs) on every backend: the native one, Docker on a
//! private `dockerd` this test starts, and gVisor. Each test prints its summary table
//! (`cargo test -p sandboxd-e2e --test escape -- --nocapture`), and fails if a wall did not
//! hold where SECURITY.md says it does. A backend whose runtime is missing is skipped as in
//! tests/backends.rs (a failure under `SANDBOXD_REQUIRE_ALL_BACKENDS`).

mod common;

use common::escape::{assert_held, run_battery, Fixtures};
use sandboxd_e2e::{DockerDaemon, ServerOptions};

fn options(fx_env: Vec<(String, String)>, backend: &[(&str, &str)]) -> ServerOptions {
    let mut env = fx_env;
    env.extend(backend.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    ServerOptions {
        env,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn native_backend_holds_the_escape_battery() {
    let (fx, env) = Fixtures::new();
    let server = common::server_with(options(env, &[])).await;
    let rows = run_battery(&server, "native", &fx).await;
    assert_held(&rows);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn docker_backend_holds_the_escape_battery() {
    if !common::runtime_installed("docker", "dockerd") {
        return;
    }
    let dockerd = DockerDaemon::start().expect("a private dockerd");
    let (fx, env) = Fixtures::new();
    let server = common::server_with(options(
        env,
        &[
            ("CONTAINER_DEPLOYMENT", "docker"),
            ("DOCKER_HOST", &dockerd.host),
        ],
    ))
    .await;
    let rows = run_battery(&server, "docker", &fx).await;
    drop(server);
    assert_held(&rows);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gvisor_backend_holds_the_escape_battery() {
    if !common::runtime_installed("gvisor", "runsc") {
        return;
    }
    let (fx, env) = Fixtures::new();
    let server = common::server_with(options(env, &[("CONTAINER_DEPLOYMENT", "gvisor")])).await;
    let rows = run_battery(&server, "gvisor", &fx).await;
    assert_held(&rows);
}
