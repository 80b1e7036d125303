//! Building the backend named by `CONTAINER_DEPLOYMENT`.

use std::sync::Arc;

use sandboxd_backend_docker::{DockerBackend, DockerConfig};
use sandboxd_backend_gvisor::{GvisorBackend, GvisorConfig};
use sandboxd_backend_native::{NativeBackend, NativeConfig};
use sandboxd_core::backend::Backend;

use crate::{ServerError, Settings};

/// Backends this build can run.
pub const AVAILABLE: &[&str] = &["native", "docker", "gvisor"];

/// The error of a backend that cannot be used here.
fn unusable(backend: &str, e: impl std::fmt::Display) -> ServerError {
    ServerError::Backend {
        backend: backend.into(),
        message: e.to_string(),
    }
}

/// The backend `settings` ask for, if this build has it.
pub(crate) async fn build(settings: &Settings) -> Result<Arc<dyn Backend>, ServerError> {
    match settings.container_deployment.as_str() {
        "docker" => {
            let (_, default_agent) = NativeConfig::default_binaries();
            let config = DockerConfig {
                host: None,
                run_dir: settings.run_dir.join("docker"),
                agent_bin: settings.agent_bin.clone().unwrap_or(default_agent),
                name_prefix: settings.container_prefix_key.clone(),
                // One server's containers (and a machine's workers'), as its cgroups are.
                instance: settings.cgroup_parent.clone(),
                // An engine reached over TCP may serve several machines.
                shared: std::env::var("DOCKER_HOST").is_ok_and(|h| h.starts_with("tcp://")),
            };
            let backend = DockerBackend::connect(config)
                .await
                .map_err(|e| unusable("docker", e))?;
            Ok(Arc::new(backend))
        }
        "gvisor" => {
            let (_, default_agent) = NativeConfig::default_binaries();
            let config = GvisorConfig {
                runsc: settings.runsc.clone(),
                platform: settings.gvisor_platform.clone(),
                state_dir: settings.state_dir.join("gvisor"),
                run_dir: settings.run_dir.join("gvisor"),
                agent_bin: settings.agent_bin.clone().unwrap_or(default_agent),
                cgroup_parent: settings.cgroup_parent.clone(),
            };
            let backend = GvisorBackend::new(config)
                .await
                .map_err(|e| unusable("gvisor", e))?;
            Ok(Arc::new(backend))
        }
        "native" => {
            let (default_init, default_agent) = NativeConfig::default_binaries();
            let config = NativeConfig {
                state_dir: settings.state_dir.join("native"),
                run_dir: settings.run_dir.join("native"),
                cgroup_parent: settings.cgroup_parent.clone(),
                init_bin: settings.init_bin.clone().unwrap_or(default_init),
                agent_bin: settings.agent_bin.clone().unwrap_or(default_agent),
                ..NativeConfig::default()
            };
            let backend = NativeBackend::new(config).map_err(|e| unusable("native", e))?;
            Ok(Arc::new(backend))
        }
        other => Err(ServerError::Unsupported(format!(
            "backend {other} is not available in this build (CONTAINER_DEPLOYMENT={other}); \
             available: {}",
            AVAILABLE.join(", ")
        ))),
    }
}
