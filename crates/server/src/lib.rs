//! sandboxd's HTTP server: the `/v1` API over a [`Manager`], bearer-token auth with named API
//! keys as tenants ([`auth`]), settings.
//!
//! - [`router`] builds the axum [`Router`]; tests drive it with `tower::ServiceExt::oneshot`.
//! - [`run`] is `sandboxd serve`: it builds the backend, store, templates and manager from
//!   [`Settings`], serves until SIGINT/SIGTERM, then removes every sandbox (`AUTO_CLEANUP`).
//! - [`start`] does the same but hands back a [`RunningServer`] to stop by hand (tests).
//! - [`ports`]: published ports (a create's `ports`, `PORT_RANGE`), forwarded into sandboxes
//!   through tunnels of the guest agent.
//!
//! Invariant: this is the only crate that knows HTTP status codes. Every failure leaves through
//! [`ApiError`], which maps a stable [`ErrorCode`](sandboxd_types::ErrorCode) to a status.
//!
//! | method | path | reply |
//! |---|---|---|
//! | GET | `/health` | `Health` (no auth) |
//! | GET | `/openapi.json` | OpenAPI 3 document (no auth) |
//! | GET | `/v1/types` | `{"types": [...]}` |
//! | POST | `/v1/sandboxes` | 201 `Sandbox` |
//! | GET | `/v1/sandboxes?metadata.k=v` | `SandboxList` |
//! | GET | `/v1/sandboxes/{id}` | `Sandbox` |
//! | DELETE | `/v1/sandboxes/{id}` | 204 |
//! | POST | `/v1/sandboxes/{id}/timeout` | `Sandbox` |
//! | POST | `/v1/sandboxes/{id}/exec` | `ExecResult`, or NDJSON `ExecEvent`s with `"stream": true` |
//! | POST | `/v1/sandboxes/{id}/python` | `PythonResult` |
//! | GET | `/v1/sandboxes/{id}/files?path=` | raw bytes |
//! | PUT | `/v1/sandboxes/{id}/files?path=[&mode=]` | `FileEntry` (raw body in) |
//! | DELETE | `/v1/sandboxes/{id}/files?path=[&recursive=]` | 204 |
//! | GET | `/v1/sandboxes/{id}/files/list?path=[&depth=]` | `FileList` |
//! | GET | `/v1/sandboxes/{id}/files/stat?path=` | `FileEntry` |
//! | POST | `/v1/sandboxes/{id}/files/mkdir` | `MkdirResult` |
//! | POST | `/v1/sandboxes/{id}/files/move` | `FileEntry` |
//!
//! Beside it, AgentScope Runtime's protocol ([`agentscope`]): `POST /<method>[_async]` with a
//! `{"data": ...}` envelope, and `/proxy/{identity}/workspace/...`; its errors are FastAPI's
//! `{"detail": ...}` shape.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, Request};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use sandboxd_core::backend::Backend;
use sandboxd_core::store::SandboxStore;
use sandboxd_core::templates::Templates;
use sandboxd_core::{CoreError, Manager, ManagerConfig};
use sandboxd_store::redis::RedisStore;
use sandboxd_store::MemoryStore;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub mod agentscope;
pub mod auth;
mod backends;
pub mod error;
pub mod extract;
pub mod forward;
pub mod openapi;
pub mod ports;
pub mod routes;
pub mod settings;
#[cfg(feature = "testing")]
pub mod testing;
pub mod workers;

pub use error::ApiError;
pub use settings::{ServeArgs, Settings, SettingsError};

/// Largest accepted JSON body, in bytes. File uploads are streamed and not limited.
pub const JSON_BODY_LIMIT: usize = 1 << 20;

/// How long in-flight requests may take to finish after a stop signal before sandboxes are
/// removed under them.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The sandbox manager.
    pub manager: Arc<Manager>,
    /// The tokens API requests may carry: `BEARER_TOKEN` (the admin's) and the named API keys
    /// (`API_KEYS`, `API_KEYS_FILE`), as digests. None: every route is open.
    pub keys: Arc<auth::Keys>,
    /// Prefix of AgentScope container names (`CONTAINER_PREFIX_KEY`).
    pub container_prefix: Arc<str>,
    /// AgentScope's heartbeat (`HEARTBEAT_*`); by default no scanner.
    pub heartbeat: agentscope::heartbeat::HeartbeatConfig,
    /// AgentScope's sandbox types (built-in and `--extension`).
    pub types: Arc<agentscope::types::TypeRegistry>,
    /// The AgentScope type of a create that names none (`DEFAULT_SANDBOX_TYPE`'s first).
    pub default_type: Arc<str>,
    /// Client for forwarding requests to other nodes ([`forward`]).
    pub http: reqwest::Client,
    /// Published ports (`PORT_RANGE`, `SANDBOXD_PUBLISH_HOST`).
    pub ports: Arc<ports::Ports>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("manager", &self.manager)
            .field("keys", &self.keys)
            .field("container_prefix", &self.container_prefix)
            .field("heartbeat", &self.heartbeat)
            .field("types", &self.types)
            .field("default_type", &self.default_type)
            .field("ports", &self.ports)
            .finish()
    }
}

impl AppState {
    /// State without a token: every route is open.
    pub fn new(manager: Arc<Manager>) -> Self {
        AppState {
            default_type: Arc::from(manager.config().default_type.as_str()),
            manager,
            keys: Default::default(),
            container_prefix: Arc::from(Settings::default().container_prefix_key.as_str()),
            heartbeat: Default::default(),
            types: Default::default(),
            http: reqwest::Client::builder()
                .tcp_nodelay(true)
                .build()
                .expect("an HTTP client without TLS builds"),
            ports: Arc::new(ports::Ports::new(
                ports::PortRange::default(),
                std::net::IpAddr::from([127, 0, 0, 1]),
                "127.0.0.1",
                false,
            )),
        }
    }

    /// Publish ports with `ports` (its range and address).
    pub fn with_ports(mut self, ports: ports::Ports) -> Self {
        self.ports = Arc::new(ports);
        self
    }

    /// Know these sandbox types (built-in ones and those of `--extension` files), and create
    /// `default_type` when a request names none.
    pub fn with_types(
        mut self,
        types: agentscope::types::TypeRegistry,
        default_type: &str,
    ) -> Self {
        self.types = Arc::new(types);
        self.default_type = Arc::from(default_type);
        self
    }

    /// Reap sessions idle for `timeout_secs`, scanning every `scan_interval_secs` (0 = never).
    pub fn with_heartbeat(mut self, timeout_secs: u64, scan_interval_secs: u64) -> Self {
        self.heartbeat = agentscope::heartbeat::HeartbeatConfig {
            timeout_secs,
            scan_interval_secs,
        };
        self
    }

    /// Name AgentScope containers `<prefix><sandbox id>` (`CONTAINER_PREFIX_KEY`).
    pub fn with_container_prefix(mut self, prefix: &str) -> Self {
        self.container_prefix = Arc::from(prefix);
        self
    }

    /// Require `Authorization: Bearer <token>` (an empty token means none); the token is the
    /// admin's, who sees every sandbox.
    pub fn with_token(self, token: Option<String>) -> Self {
        self.with_keys(token.as_deref(), &[])
    }

    /// Require a token: `admin` (`BEARER_TOKEN`, sees every sandbox) or one of the named API
    /// keys (`(name, token)`, each seeing only its own sandboxes).
    pub fn with_keys(mut self, admin: Option<&str>, keys: &[settings::ApiKey]) -> Self {
        self.keys = Arc::new(auth::Keys::new(
            admin,
            keys.iter().map(|k| (k.name.as_str(), k.token())),
        ));
        self
    }
}

/// The whole HTTP API.
pub fn router(state: AppState) -> Router {
    use routes::{exec, files, meta, sandboxes};
    Router::new()
        .route("/health", get(meta::health))
        .route("/openapi.json", get(meta::openapi))
        .route("/v1/types", get(meta::types))
        .route(
            "/v1/sandboxes",
            post(sandboxes::create).get(sandboxes::list),
        )
        .route(
            "/v1/sandboxes/{id}",
            get(sandboxes::get).delete(sandboxes::delete),
        )
        .route("/v1/sandboxes/{id}/timeout", post(sandboxes::set_timeout))
        .route("/v1/sandboxes/{id}/pause", post(sandboxes::pause))
        .route("/v1/sandboxes/{id}/resume", post(sandboxes::resume))
        .route("/v1/sandboxes/{id}/restart", post(sandboxes::restart))
        .route("/v1/sandboxes/{id}/exec", post(exec::exec))
        .route("/v1/sandboxes/{id}/python", post(exec::python))
        .route(
            "/v1/sandboxes/{id}/files",
            get(files::read).put(files::write).delete(files::remove),
        )
        .route("/v1/sandboxes/{id}/files/list", get(files::list))
        .route("/v1/sandboxes/{id}/files/stat", get(files::stat))
        .route("/v1/sandboxes/{id}/files/mkdir", post(files::mkdir))
        .route("/v1/sandboxes/{id}/files/move", post(files::move_path))
        .merge(agentscope::router())
        .fallback(meta::not_found)
        .method_not_allowed_fallback(meta::method_not_allowed)
        .layer(DefaultBodyLimit::max(JSON_BODY_LIMIT))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            forward::forward_to_owner,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ))
        .layer(middleware::from_fn(log_request))
        .with_state(state)
}

/// One debug line per request (never the headers: they may carry the token).
async fn log_request(req: Request, next: Next) -> Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let started = Instant::now();
    let resp = next.run(req).await;
    tracing::debug!(
        %method,
        %path,
        status = resp.status().as_u16(),
        ms = started.elapsed().as_millis() as u64,
        "request"
    );
    resp
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The settings are invalid.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// The settings ask for something this build cannot do.
    #[error("{0}")]
    Unsupported(String),
    /// The backend could not be set up.
    #[error("backend {backend}: {message}")]
    Backend {
        /// Backend name.
        backend: String,
        /// What went wrong.
        message: String,
    },
    /// The manager could not start (e.g. cleaning up after an earlier run failed).
    #[error("cannot start: {0}")]
    Core(#[from] CoreError),
    /// The address cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The error.
        source: std::io::Error,
    },
    /// Serving failed.
    #[error("server failed: {0}")]
    Serve(std::io::Error),
    /// The state store cannot be used.
    #[error("state store: {0}")]
    Store(String),
    /// A worker process could not be started or supervised.
    #[error("workers: {0}")]
    Workers(String),
}

/// A server started by [`start`].
#[derive(Debug)]
pub struct RunningServer {
    addr: SocketAddr,
    manager: Arc<Manager>,
    auto_cleanup: bool,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
    /// The heartbeat scanner, if any; stopped first at shutdown.
    scanner: Option<JoinHandle<()>>,
    /// Published ports, and the task that releases those of sandboxes gone.
    ports: Arc<ports::Ports>,
    reconciler: Option<JoinHandle<()>>,
}

impl RunningServer {
    /// The address it listens on (useful with `PORT=0`).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The manager behind it.
    pub fn manager(&self) -> &Arc<Manager> {
        &self.manager
    }

    /// Stop accepting, let running requests finish (for a while), then remove every sandbox
    /// when `AUTO_CLEANUP` is on (else only the warm ones).
    pub async fn shutdown(mut self) -> Result<(), ServerError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(scanner) = self.scanner.take() {
            scanner.abort();
        }
        let served = match tokio::time::timeout(DRAIN_TIMEOUT, &mut self.task).await {
            Ok(joined) => Some(joined),
            Err(_) => {
                tracing::warn!(
                    "requests still running after {}s; stopping them",
                    DRAIN_TIMEOUT.as_secs()
                );
                None
            }
        };
        self.close_ports().await;
        if self.auto_cleanup {
            let n = self
                .manager
                .list(&Default::default())
                .await
                .map(|l| l.len());
            tracing::info!(
                sandboxes = n.unwrap_or(0),
                "removing every sandbox (AUTO_CLEANUP)"
            );
            self.manager.shutdown().await;
        } else {
            // Sandboxes in use stay; warm ones belong to nobody.
            self.manager.shutdown_pools().await;
        }
        if served.is_none() {
            self.task.abort();
        }
        match served {
            Some(Ok(Err(e))) => Err(ServerError::Serve(e)),
            _ => Ok(()),
        }
    }

    /// Stop forwarding published ports (the sandboxes are being removed, or outlive this
    /// process, which cannot serve them any more).
    async fn close_ports(&mut self) {
        if let Some(r) = self.reconciler.take() {
            r.abort();
            let _ = r.await;
        }
        self.ports.release_all().await;
    }

    /// Wait until the server task ends by itself (it only does on an I/O failure).
    async fn wait_failed(&mut self) -> Option<std::io::Error> {
        match (&mut self.task).await {
            Ok(Err(e)) => Some(e),
            Ok(Ok(())) => None,
            Err(e) => Some(std::io::Error::other(e.to_string())),
        }
    }
}

/// The manager's settings. Its types are templates: `DEFAULT_SANDBOX_TYPE`'s names are
/// AgentScope types, each mapped to its template and its warm pool.
pub(crate) fn manager_config(settings: &Settings, templates: &Templates) -> ManagerConfig {
    let d = ManagerConfig::default();
    let installed = templates.list();
    let worker = workers::is_worker();
    let type_of = |name: &str| settings.sandbox_types.resolve(name, &installed);
    ManagerConfig {
        default_type: type_of(settings.default_sandbox_type()).template,
        default_timeout_secs: settings.sandbox_timeout_secs,
        default_resources: sandboxd_core::backend::Limits {
            disk_bytes: settings.disk_mb << 20,
            ..d.default_resources
        },
        max_instances: settings.max_sandbox_instances,
        mount_dir: settings.default_mount_dir.clone(),
        workspace_mb: settings.workspace_mb,
        readonly_mounts: settings.readonly_mounts.clone(),
        pool_size: settings.pool_size as usize,
        node_id: settings.node_id.clone(),
        worker,
        lock_ttl: std::time::Duration::from_secs(settings.heartbeat_lock_ttl_secs.max(1)),
        node_url: settings.node_url.clone(),
        activity_key: Some(agentscope::META_LAST_ACTIVE.to_string()),
        pools: settings
            .default_sandbox_types
            .iter()
            .map(|t| type_of(t).pool())
            .collect(),
        ..d
    }
}

/// Check what this build can do, build everything from `settings`, bind and start serving.
pub async fn start(settings: Settings) -> Result<RunningServer, ServerError> {
    for w in &settings.warnings {
        tracing::warn!("{w}");
    }
    let backend: Arc<dyn Backend> = backends::build(&settings).await?;
    start_with_backend(settings, backend).await
}

/// The state store the settings ask for: Redis (`REDIS_ENABLED`), else this process's memory.
pub async fn build_store(settings: &Settings) -> Result<Arc<dyn SandboxStore>, ServerError> {
    match &settings.redis {
        Some(cfg) => {
            let store = RedisStore::connect(cfg)
                .await
                .map_err(|e| ServerError::Store(e.to_string()))?;
            tracing::info!(redis = %cfg.address(), prefix = %cfg.prefix, node = %settings.node_id, "state in Redis");
            Ok(Arc::new(store))
        }
        None => Ok(Arc::new(MemoryStore::new())),
    }
}

/// [`start`] with a given backend (tests use a fake one).
pub async fn start_with_backend(
    settings: Settings,
    backend: Arc<dyn Backend>,
) -> Result<RunningServer, ServerError> {
    let backend_name = backend.name();
    let templates = Templates::new(settings.templates_dir());
    let store = build_store(&settings).await?;
    let manager = Manager::start(
        backend,
        store,
        templates.clone(),
        manager_config(&settings, &templates),
    )
    .await?;
    for t in settings.sandbox_types.custom() {
        let tools: Vec<&str> = t.tools.iter().map(|g| g.name()).collect();
        tracing::info!(
            r#type = %t.name,
            template = %t.template,
            tools = %tools.join(","),
            timeout_secs = ?t.timeout_secs,
            security_level = ?t.security_level,
            environment = t.environment.len(),
            description = %t.description,
            "sandbox type from an extension"
        );
    }
    // A publish address this machine does not have fails here, not at the first create.
    std::net::TcpListener::bind((settings.publish_host, 0)).map_err(|source| {
        ServerError::Bind {
            addr: format!("SANDBOXD_PUBLISH_HOST {}", settings.publish_host),
            source,
        }
    })?;
    let ports = ports::Ports::new(
        settings.port_range,
        settings.publish_host,
        &settings.publish_advertised_host(),
        settings.redis.is_some(),
    );
    let state = AppState::new(manager.clone())
        .with_ports(ports)
        .with_types(
            settings.sandbox_types.clone(),
            settings.default_sandbox_type(),
        )
        .with_keys(settings.bearer_token.as_deref(), &settings.api_keys)
        .with_container_prefix(&settings.container_prefix_key)
        .with_heartbeat(
            settings.heartbeat_timeout_secs,
            settings.heartbeat_scan_interval_secs,
        );
    let scanner = agentscope::heartbeat::spawn_scanner(state.clone());
    let reconciler = Some(state.ports.spawn_reconciler(manager.clone()));
    let published = state.ports.clone();
    let addr = settings.bind_addr();
    let listener = match workers::inherited_listener() {
        // A worker serves the socket its supervisor bound, with the other workers.
        Some(l) => l.and_then(tokio::net::TcpListener::from_std),
        None => tokio::net::TcpListener::bind(&addr).await,
    }
    .map_err(|source| ServerError::Bind {
        addr: addr.clone(),
        source,
    })?;
    let local = listener.local_addr().map_err(ServerError::Serve)?;
    let found = templates.list();
    tracing::info!(
        address = %local,
        backend = backend_name,
        state_dir = %settings.state_dir.display(),
        templates = %if found.is_empty() { "none (run `sandboxd template build base`)".to_string() } else { found.join(",") },
        auth = settings.bearer_token.is_some() || !settings.api_keys.is_empty(),
        api_keys = settings.api_keys.len(),
        "sandboxd listening on http://{local}"
    );
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let app = router(state);
    let task = tokio::spawn(async move {
        // Streamed replies are many small writes: without TCP_NODELAY, Nagle's algorithm holds
        // each one back until the client's delayed ACK (40 ms) arrives.
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "could not set TCP_NODELAY");
            }
        });
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stop_rx.await;
            })
            .await
    });
    Ok(RunningServer {
        addr: local,
        manager,
        auto_cleanup: settings.auto_cleanup,
        stop: Some(stop_tx),
        task,
        scanner,
        ports: published,
        reconciler,
    })
}

/// `sandboxd serve`: start, serve until SIGINT or SIGTERM, then shut down cleanly. With
/// `WORKERS` > 1 this process supervises that many worker processes instead ([`workers`]).
pub async fn run(settings: Settings) -> Result<(), ServerError> {
    raise_fd_limit();
    limit_malloc_arenas();
    if settings.workers > 1 && !workers::is_worker() {
        return workers::supervise(settings).await;
    }
    let mut server = start(settings).await?;
    let failed = tokio::select! {
        _ = shutdown_signal() => None,
        failed = server.wait_failed() => Some(failed),
    };
    match failed {
        None => {
            tracing::info!("stop signal received; shutting down");
            server.shutdown().await
        }
        Some(failed) => {
            // Serving ended by itself: still remove the sandboxes.
            if let Some(scanner) = server.scanner.take() {
                scanner.abort();
            }
            server.close_ports().await;
            if server.auto_cleanup {
                server.manager.shutdown().await;
            } else {
                server.manager.shutdown_pools().await;
            }
            failed.map_or(Ok(()), |e| Err(ServerError::Serve(e)))
        }
    }
}

/// The open-file limit the server wants: every sandbox holds a few descriptors of the server
/// (its agent socket, kept agent connections, a pidfd, published ports' listeners) and every
/// client connection one more, so the common default of 1024 runs out under load. Not more:
/// the sandboxes inherit it, and this is what Docker gives a container.
const WANTED_NOFILE: libc::rlim_t = 65536;

/// Raise the soft `RLIMIT_NOFILE` towards [`WANTED_NOFILE`], as far as the hard limit allows
/// (an unprivileged process may raise its soft limit up to the hard one).
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) fills the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return;
    }
    let wanted = WANTED_NOFILE.min(lim.rlim_max);
    if lim.rlim_cur >= wanted {
        return;
    }
    let was = lim.rlim_cur;
    lim.rlim_cur = wanted;
    // SAFETY: setrlimit(2) reads the struct we own; a soft limit within the hard one.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } == 0 {
        tracing::info!(from = was, to = wanted, "raised the open-file limit");
    } else {
        tracing::warn!(
            limit = was,
            error = %std::io::Error::last_os_error(),
            "cannot raise the open-file limit"
        );
    }
}

/// glibc's allocator gives threads arenas of their own, up to 8 per CPU, and keeps what each
/// one freed. Under load the runtime's blocking threads (the backends kill and remove boxes on
/// them) come and go by the hundred, each landing on some arena, so the server's memory crept
/// up round after round of the same work (by some 12 KiB a sandbox in the load test) without
/// anything being leaked. Two arenas keep it flat; the server's allocations are small and few
/// per request, so they hardly contend.
fn limit_malloc_arenas() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt(3) only changes a tunable of the allocator; M_ARENA_MAX takes effect for
    // arenas made from now on.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Resolves on SIGINT or SIGTERM.
pub(crate) async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = async {
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
