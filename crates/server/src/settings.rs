//! Server settings, by AgentScope Runtime's names where one exists.
//!
//! Sources, highest precedence first: command-line flags ([`ServeArgs`]), environment variables,
//! a `--config FILE.env` file (`KEY=VALUE` lines, `#` comments, optional quotes, optional
//! `export `), then defaults. A key in the file that is neither ours nor AgentScope's, and any
//! malformed value, is an error naming the setting and where it came from. AgentScope settings we
//! do not implement yet (Redis, OSS, Kubernetes, ...) are accepted and reported in
//! [`Settings::warnings`].

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Component, Path, PathBuf};

use sandboxd_core::backend::ReadonlyMount;
use sandboxd_core::manager::check_resources;
use sandboxd_core::templates::Templates;

use crate::agentscope::types::{ExtensionError, TypeRegistry};
use crate::ports::PortRange;
use sandboxd_store::redis::RedisConfig;

/// The host name (the default `SANDBOXD_NODE_ID`), or `node` when it cannot be read.
fn default_node_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| valid_node_id(h))
        .unwrap_or_else(|| "node".into())
}

/// Whether `v` is an IP address or a host name.
fn is_host(v: &str) -> bool {
    !v.is_empty()
        && (v.parse::<IpAddr>().is_ok()
            || v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'))
}

/// Whether `id` can name a node: 1 to 64 letters, digits, `-`, `_` and `.`.
pub fn valid_node_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Flags of `sandboxd serve`; each overrides the environment variable of the same name.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// Read settings from this `.env`-style file (KEY=VALUE lines); flags and environment
    /// variables override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on [env: HOST] [default: 127.0.0.1].
    #[arg(long, value_name = "ADDR")]
    pub host: Option<String>,
    /// Port to listen on [env: PORT] [default: 8000].
    #[arg(long, value_name = "PORT")]
    pub port: Option<String>,
    /// Worker processes; only 1 is available [env: WORKERS] [default: 1].
    #[arg(long, value_name = "N")]
    pub workers: Option<String>,
    /// Require `Authorization: Bearer <TOKEN>` on every API route [env: BEARER_TOKEN].
    /// Prefer the environment: flags are visible to other users of the machine.
    #[arg(long, value_name = "TOKEN")]
    pub bearer_token: Option<String>,
    /// Sandbox type used when a request names none [env: DEFAULT_SANDBOX_TYPE] [default: base].
    #[arg(long, value_name = "TYPE")]
    pub default_sandbox_type: Option<String>,
    /// Warm sandboxes kept per type of DEFAULT_SANDBOX_TYPE [env: POOL_SIZE] [default: 0].
    #[arg(long, value_name = "N")]
    pub pool_size: Option<String>,
    /// Remove every sandbox when the server stops [env: AUTO_CLEANUP] [default: true].
    #[arg(long, value_name = "BOOL")]
    pub auto_cleanup: Option<String>,
    /// Prefix of AgentScope container names [env: CONTAINER_PREFIX_KEY] [default: sandboxd-].
    #[arg(long, value_name = "PREFIX")]
    pub container_prefix_key: Option<String>,
    /// Backend that runs sandboxes [env: CONTAINER_DEPLOYMENT] [default: native].
    #[arg(long, value_name = "NAME")]
    pub container_deployment: Option<String>,
    /// Directory holding sessions' workspaces [env: DEFAULT_MOUNT_DIR]
    /// [default: <state dir>/workspaces].
    #[arg(long, value_name = "DIR")]
    pub default_mount_dir: Option<String>,
    /// Read-only mounts of every sandbox: a JSON object {"/host": "/guest"} or comma-separated
    /// host:guest pairs [env: READONLY_MOUNTS].
    #[arg(long, value_name = "MOUNTS")]
    pub readonly_mounts: Option<String>,
    /// Most live sandboxes at once, 0 = no limit [env: MAX_SANDBOX_INSTANCES] [default: 0].
    #[arg(long, value_name = "N")]
    pub max_sandbox_instances: Option<String>,
    /// Where templates and workspaces live [env: SANDBOXD_STATE_DIR]
    /// [default: /var/lib/sandboxd].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<String>,
    /// Where per-sandbox runtime files live [env: SANDBOXD_RUN_DIR] [default: /run/sandboxd].
    #[arg(long, value_name = "DIR")]
    pub run_dir: Option<String>,
    /// Where templates live [env: SANDBOXD_TEMPLATES_DIR] [default: <state dir>/templates].
    #[arg(long, value_name = "DIR")]
    pub templates_dir: Option<String>,
    /// Default sandbox lifetime in seconds, 0 = never [env: SANDBOX_TIMEOUT] [default: 300].
    #[arg(long, value_name = "SECS")]
    pub sandbox_timeout: Option<String>,
    /// Default disk limit of a sandbox in MiB, each of its writable root layer and /tmp,
    /// 0 = none [env: SANDBOXD_DISK_MB] [default: 256].
    #[arg(long, value_name = "MB")]
    pub disk_mb: Option<String>,
    /// Size of each session's workspace in MiB: its own file system (an ext4 image,
    /// loop-mounted; needs root), 0 = no quota, workspaces share DEFAULT_MOUNT_DIR's file system
    /// [env: SANDBOXD_WORKSPACE_MB] [default: 0].
    #[arg(long, value_name = "MB")]
    pub workspace_mb: Option<String>,
    /// Cgroup under which sandboxes' cgroups are made [env: SANDBOXD_CGROUP_PARENT]
    /// [default: sandboxd].
    #[arg(long, value_name = "NAME")]
    pub cgroup_parent: Option<String>,
    /// The native backend's `sandboxd-init` binary [env: SANDBOXD_INIT_BIN]
    /// [default: next to this executable].
    #[arg(long, value_name = "FILE")]
    pub init_bin: Option<String>,
    /// The `sandboxd-agent` binary run in every sandbox [env: SANDBOXD_AGENT_BIN]
    /// [default: next to this executable].
    #[arg(long, value_name = "FILE")]
    pub agent_bin: Option<String>,
    /// Seconds without activity after which an AgentScope session is recycled
    /// [env: HEARTBEAT_TIMEOUT] [default: 300].
    #[arg(long, value_name = "SECS")]
    pub heartbeat_timeout: Option<String>,
    /// Seconds between heartbeat scans, 0 = none [env: HEARTBEAT_SCAN_INTERVAL, or AgentScope's
    /// WATCHER_SCAN_INTERVAL] [default: 1].
    #[arg(long, value_name = "SECS")]
    pub heartbeat_scan_interval: Option<String>,
    /// TTL of the heartbeat lock between server processes; accepted, unused (one process)
    /// [env: HEARTBEAT_LOCK_TTL] [default: 120].
    #[arg(long, value_name = "SECS")]
    pub heartbeat_lock_ttl: Option<String>,
    /// Host ports that published ports are taken from, both included: [LOW,HIGH]
    /// [env: PORT_RANGE] [default: [49152,59152]].
    #[arg(long, value_name = "[LOW,HIGH]")]
    pub port_range: Option<String>,
    /// Address published ports listen on [env: SANDBOXD_PUBLISH_HOST] [default: 127.0.0.1].
    #[arg(long, value_name = "ADDR")]
    pub publish_host: Option<String>,
    /// Load sandbox types from this TOML file; repeat for several [env: SANDBOXD_EXTENSIONS,
    /// comma-separated].
    #[arg(long, value_name = "FILE")]
    pub extension: Vec<PathBuf>,
}

impl ServeArgs {
    /// The flags that were given, by setting name.
    fn given(&self) -> Vec<(&'static str, &'static str, &String)> {
        let all: [(&'static str, &'static str, &Option<String>); 26] = [
            ("HOST", "--host", &self.host),
            ("PORT", "--port", &self.port),
            ("WORKERS", "--workers", &self.workers),
            ("BEARER_TOKEN", "--bearer-token", &self.bearer_token),
            (
                "DEFAULT_SANDBOX_TYPE",
                "--default-sandbox-type",
                &self.default_sandbox_type,
            ),
            ("POOL_SIZE", "--pool-size", &self.pool_size),
            ("AUTO_CLEANUP", "--auto-cleanup", &self.auto_cleanup),
            (
                "CONTAINER_PREFIX_KEY",
                "--container-prefix-key",
                &self.container_prefix_key,
            ),
            (
                "CONTAINER_DEPLOYMENT",
                "--container-deployment",
                &self.container_deployment,
            ),
            (
                "DEFAULT_MOUNT_DIR",
                "--default-mount-dir",
                &self.default_mount_dir,
            ),
            (
                "READONLY_MOUNTS",
                "--readonly-mounts",
                &self.readonly_mounts,
            ),
            (
                "MAX_SANDBOX_INSTANCES",
                "--max-sandbox-instances",
                &self.max_sandbox_instances,
            ),
            ("SANDBOXD_STATE_DIR", "--state-dir", &self.state_dir),
            ("SANDBOXD_RUN_DIR", "--run-dir", &self.run_dir),
            (
                "SANDBOXD_TEMPLATES_DIR",
                "--templates-dir",
                &self.templates_dir,
            ),
            (
                "SANDBOX_TIMEOUT",
                "--sandbox-timeout",
                &self.sandbox_timeout,
            ),
            ("SANDBOXD_DISK_MB", "--disk-mb", &self.disk_mb),
            (
                "SANDBOXD_WORKSPACE_MB",
                "--workspace-mb",
                &self.workspace_mb,
            ),
            (
                "SANDBOXD_CGROUP_PARENT",
                "--cgroup-parent",
                &self.cgroup_parent,
            ),
            ("SANDBOXD_INIT_BIN", "--init-bin", &self.init_bin),
            ("SANDBOXD_AGENT_BIN", "--agent-bin", &self.agent_bin),
            (
                "HEARTBEAT_TIMEOUT",
                "--heartbeat-timeout",
                &self.heartbeat_timeout,
            ),
            (
                "HEARTBEAT_SCAN_INTERVAL",
                "--heartbeat-scan-interval",
                &self.heartbeat_scan_interval,
            ),
            (
                "HEARTBEAT_LOCK_TTL",
                "--heartbeat-lock-ttl",
                &self.heartbeat_lock_ttl,
            ),
            ("PORT_RANGE", "--port-range", &self.port_range),
            (
                "SANDBOXD_PUBLISH_HOST",
                "--publish-host",
                &self.publish_host,
            ),
        ];
        all.into_iter()
            .filter_map(|(k, f, v)| v.as_ref().map(|v| (k, f, v)))
            .collect()
    }
}

/// Settings we implement.
pub const OUR_KEYS: &[&str] = &[
    "HOST",
    "PORT",
    "WORKERS",
    "BEARER_TOKEN",
    "API_KEYS",
    "API_KEYS_FILE",
    "DEFAULT_SANDBOX_TYPE",
    "POOL_SIZE",
    "AUTO_CLEANUP",
    "CONTAINER_PREFIX_KEY",
    "CONTAINER_DEPLOYMENT",
    "DEFAULT_MOUNT_DIR",
    "READONLY_MOUNTS",
    "MAX_SANDBOX_INSTANCES",
    "SANDBOXD_STATE_DIR",
    "SANDBOXD_RUN_DIR",
    "SANDBOXD_TEMPLATES_DIR",
    "SANDBOX_TIMEOUT",
    "SANDBOXD_DISK_MB",
    "SANDBOXD_WORKSPACE_MB",
    "SANDBOXD_CGROUP_PARENT",
    "SANDBOXD_INIT_BIN",
    "SANDBOXD_AGENT_BIN",
    "HEARTBEAT_TIMEOUT",
    "HEARTBEAT_SCAN_INTERVAL",
    "HEARTBEAT_LOCK_TTL",
    "SANDBOXD_EXTENSIONS",
    "REDIS_ENABLED",
    "REDIS_SERVER",
    "REDIS_PORT",
    "REDIS_DB",
    "REDIS_USER",
    "REDIS_PASSWORD",
    "SANDBOXD_REDIS_PREFIX",
    "SANDBOXD_NODE_ID",
    "SANDBOXD_NODE_URL",
    "PORT_RANGE",
    "SANDBOXD_PUBLISH_HOST",
    "SANDBOXD_RUNSC",
    "SANDBOXD_GVISOR_PLATFORM",
];

/// AgentScope's own name of `HEARTBEAT_SCAN_INTERVAL` (its server reads this one).
const WATCHER_SCAN_INTERVAL: &str = "WATCHER_SCAN_INTERVAL";

/// AgentScope Runtime settings that are accepted but not implemented yet.
const AGENTSCOPE_KEYS: &[&str] = &["DEBUG", "FILE_SYSTEM", "KUBECONFIG_PATH", "STORAGE_FOLDER"];

/// Main switches of the unsupported families, looked for in the environment (which, unlike a
/// config file, holds many unrelated variables, so prefixes are not matched there).
const AGENTSCOPE_ENV_SWITCHES: &[&str] = &["OSS_ENDPOINT", "K8S_NAMESPACE"];

/// Prefixes of families of AgentScope Runtime settings not implemented yet.
const AGENTSCOPE_PREFIXES: &[&str] = &[
    "REDIS_",
    "OSS_",
    "K8S_",
    "AGENT_RUN_",
    "FC_",
    "RUNTIME_SANDBOX_",
];

/// Whether `key` is an AgentScope Runtime setting that sandboxd does not implement yet.
pub fn is_unsupported_agentscope_key(key: &str) -> bool {
    AGENTSCOPE_KEYS.contains(&key) || AGENTSCOPE_PREFIXES.iter().any(|p| key.starts_with(p))
}

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A command-line flag.
    Flag(&'static str),
    /// The environment variable of the setting's name.
    Env,
    /// A line of a config file.
    File {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
    },
    /// The built-in default.
    Default,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Flag(flag) => write!(f, "flag {flag}"),
            Origin::Env => write!(f, "environment"),
            Origin::File { path, line } => write!(f, "{}:{line}", path.display()),
            Origin::Default => write!(f, "default"),
        }
    }
}

/// Why settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// A value does not parse or is out of range.
    #[error("invalid {key}{shown} ({origin}): {reason}")]
    Invalid {
        /// Setting name.
        key: String,
        /// `="value"`, or empty for secrets.
        shown: String,
        /// Where the value came from.
        origin: Origin,
        /// What is wrong with it.
        reason: String,
    },
    /// A config file names a setting that is neither sandboxd's nor AgentScope Runtime's.
    #[error("unknown setting {key} ({}:{line})", path.display())]
    UnknownKey {
        /// The name.
        key: String,
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
    },
    /// A config file line is not `KEY=VALUE`.
    #[error("{}:{line}: {reason}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// The config file cannot be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// An extension file (`--extension`, `SANDBOXD_EXTENSIONS`) cannot be used.
    #[error(transparent)]
    Extension(#[from] ExtensionError),
}

/// Effective settings of the server.
#[derive(Clone, PartialEq)]
pub struct Settings {
    /// `HOST`: address to listen on.
    pub host: String,
    /// `PORT`: port to listen on (0 = any free port).
    pub port: u16,
    /// `WORKERS`: worker processes (only 1 is available).
    pub workers: u32,
    /// `BEARER_TOKEN`: the admin's token (sees every sandbox), if any.
    pub bearer_token: Option<String>,
    /// `API_KEYS` and `API_KEYS_FILE`: named API keys, each a tenant that sees only its own
    /// sandboxes.
    pub api_keys: Vec<ApiKey>,
    /// `DEFAULT_SANDBOX_TYPE`: the first is used when a request names no type; each gets a
    /// warm pool of `POOL_SIZE`.
    pub default_sandbox_types: Vec<String>,
    /// `POOL_SIZE`: warm sandboxes kept per type of `DEFAULT_SANDBOX_TYPE`.
    pub pool_size: u32,
    /// `AUTO_CLEANUP`: remove every sandbox when the server stops.
    pub auto_cleanup: bool,
    /// `CONTAINER_PREFIX_KEY`: prefix of AgentScope container names.
    pub container_prefix_key: String,
    /// `CONTAINER_DEPLOYMENT`: backend name.
    pub container_deployment: String,
    /// `DEFAULT_MOUNT_DIR`: where sessions' workspaces live.
    pub default_mount_dir: PathBuf,
    /// `READONLY_MOUNTS`: read-only mounts of every sandbox.
    pub readonly_mounts: Vec<ReadonlyMount>,
    /// `MAX_SANDBOX_INSTANCES`: most live sandboxes (0 = no limit).
    pub max_sandbox_instances: usize,
    /// `SANDBOXD_STATE_DIR`: templates (`<state_dir>/templates`) and default workspaces.
    pub state_dir: PathBuf,
    /// `SANDBOXD_RUN_DIR`: per-sandbox runtime files.
    pub run_dir: PathBuf,
    /// `SANDBOXD_TEMPLATES_DIR`: where templates live (default `<state_dir>/templates`).
    pub templates_dir: Option<PathBuf>,
    /// `SANDBOX_TIMEOUT`: default sandbox lifetime in seconds (0 = never).
    pub sandbox_timeout_secs: u64,
    /// `SANDBOXD_DISK_MB`: default disk limit of a sandbox in MiB (0 = none).
    pub disk_mb: u64,
    /// `SANDBOXD_WORKSPACE_MB`: size of each session's workspace file system in MiB (0 = no
    /// quota).
    pub workspace_mb: u64,
    /// `SANDBOXD_CGROUP_PARENT`: cgroup under which sandboxes' cgroups are made.
    pub cgroup_parent: String,
    /// `SANDBOXD_INIT_BIN`: the native backend's init binary (default: next to the executable).
    pub init_bin: Option<PathBuf>,
    /// `SANDBOXD_AGENT_BIN`: the guest agent binary (default: next to the executable).
    pub agent_bin: Option<PathBuf>,
    /// `HEARTBEAT_TIMEOUT`: seconds without activity after which a session is recycled.
    pub heartbeat_timeout_secs: u64,
    /// `HEARTBEAT_SCAN_INTERVAL` (or `WATCHER_SCAN_INTERVAL`): seconds between scans, 0 = none.
    pub heartbeat_scan_interval_secs: u64,
    /// `HEARTBEAT_LOCK_TTL`: how long one process holds the lock of a heartbeat scan (or a
    /// pool refill) before another may take it, in seconds.
    pub heartbeat_lock_ttl_secs: u64,
    /// `REDIS_ENABLED` and `REDIS_*`: keep the state in this Redis (shared by every server
    /// process that uses it) instead of in memory.
    pub redis: Option<RedisConfig>,
    /// `SANDBOXD_NODE_ID`: this machine's name among the servers sharing a Redis; its
    /// sandboxes are recorded as its own (default: the host name).
    pub node_id: String,
    /// `SANDBOXD_NODE_URL`: the URL other machines reach this node at; set, the node joins the
    /// machines sharing the Redis (requests for its sandboxes are forwarded to it).
    pub node_url: Option<String>,
    /// `PORT_RANGE`: the host ports published ports are taken from.
    pub port_range: PortRange,
    /// `SANDBOXD_PUBLISH_HOST`: the address published ports listen on.
    pub publish_host: IpAddr,
    /// `SANDBOXD_RUNSC`: gVisor's `runsc`, for `CONTAINER_DEPLOYMENT=gvisor` (a bare name is
    /// looked up in `PATH`).
    pub runsc: PathBuf,
    /// `SANDBOXD_GVISOR_PLATFORM`: runsc's platform (`systrap`, `ptrace` or `kvm`).
    pub gvisor_platform: String,
    /// `--extension` (or `SANDBOXD_EXTENSIONS`): the files sandbox types were loaded from.
    pub extensions: Vec<PathBuf>,
    /// The sandbox types: the built-in ones and those of `extensions`.
    pub sandbox_types: TypeRegistry,
    /// Things to warn about at start-up (settings accepted but not supported yet).
    pub warnings: Vec<String>,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("workers", &self.workers)
            .field(
                "bearer_token",
                &self.bearer_token.as_ref().map(|_| "<redacted>"),
            )
            .field("api_keys", &self.api_keys)
            .field("default_sandbox_types", &self.default_sandbox_types)
            .field("pool_size", &self.pool_size)
            .field("auto_cleanup", &self.auto_cleanup)
            .field("container_prefix_key", &self.container_prefix_key)
            .field("container_deployment", &self.container_deployment)
            .field("default_mount_dir", &self.default_mount_dir)
            .field("readonly_mounts", &self.readonly_mounts)
            .field("max_sandbox_instances", &self.max_sandbox_instances)
            .field("state_dir", &self.state_dir)
            .field("run_dir", &self.run_dir)
            .field("templates_dir", &self.templates_dir)
            .field("sandbox_timeout_secs", &self.sandbox_timeout_secs)
            .field("disk_mb", &self.disk_mb)
            .field("workspace_mb", &self.workspace_mb)
            .field("cgroup_parent", &self.cgroup_parent)
            .field("init_bin", &self.init_bin)
            .field("agent_bin", &self.agent_bin)
            .field("heartbeat_timeout_secs", &self.heartbeat_timeout_secs)
            .field(
                "heartbeat_scan_interval_secs",
                &self.heartbeat_scan_interval_secs,
            )
            .field("heartbeat_lock_ttl_secs", &self.heartbeat_lock_ttl_secs)
            .field("redis", &self.redis)
            .field("node_id", &self.node_id)
            .field("node_url", &self.node_url)
            .field("port_range", &self.port_range)
            .field("publish_host", &self.publish_host)
            .field("extensions", &self.extensions)
            .field("sandbox_types", &self.sandbox_types)
            .finish()
    }
}

const DEFAULT_STATE_DIR: &str = "/var/lib/sandboxd";

impl Default for Settings {
    fn default() -> Self {
        Settings {
            host: "127.0.0.1".into(),
            port: 8000,
            workers: 1,
            bearer_token: None,
            api_keys: Vec::new(),
            default_sandbox_types: vec!["base".into()],
            pool_size: 0,
            auto_cleanup: true,
            container_prefix_key: "sandboxd-".into(),
            container_deployment: "native".into(),
            default_mount_dir: Path::new(DEFAULT_STATE_DIR).join("workspaces"),
            readonly_mounts: Vec::new(),
            max_sandbox_instances: 0,
            state_dir: DEFAULT_STATE_DIR.into(),
            run_dir: "/run/sandboxd".into(),
            templates_dir: None,
            sandbox_timeout_secs: 300,
            disk_mb: 256,
            workspace_mb: 0,
            cgroup_parent: "sandboxd".into(),
            init_bin: None,
            agent_bin: None,
            heartbeat_timeout_secs: 300,
            heartbeat_scan_interval_secs: 1,
            heartbeat_lock_ttl_secs: 120,
            redis: None,
            node_id: default_node_id(),
            node_url: None,
            port_range: PortRange::default(),
            publish_host: IpAddr::from([127, 0, 0, 1]),
            runsc: PathBuf::from("runsc"),
            gvisor_platform: "systrap".into(),
            extensions: Vec::new(),
            sandbox_types: TypeRegistry::builtin(),
            warnings: Vec::new(),
        }
    }
}

/// One raw value and where it came from.
#[derive(Debug, Clone)]
struct Raw {
    value: String,
    origin: Origin,
}

/// Parse a `.env`-style file into `(key, value, line)` triples, in order.
pub fn parse_env_file(
    path: &Path,
    text: &str,
) -> Result<Vec<(String, String, usize)>, SettingsError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let lineno = i + 1;
        let malformed = |reason: &str| SettingsError::Malformed {
            path: path.to_path_buf(),
            line: lineno,
            reason: reason.to_string(),
        };
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line
            .strip_prefix("export ")
            .map(str::trim_start)
            .unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            return Err(malformed("expected KEY=VALUE"));
        };
        let key = key.trim();
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(malformed(&format!("invalid setting name {key:?}")));
        }
        let value = value.trim();
        let value = match value.chars().next() {
            Some(q @ ('"' | '\'')) => {
                let rest = &value[1..];
                let Some(end) = rest.find(q) else {
                    return Err(malformed("unterminated quote"));
                };
                let after = rest[end + 1..].trim();
                if !(after.is_empty() || after.starts_with('#')) {
                    return Err(malformed("unexpected text after the closing quote"));
                }
                rest[..end].to_string()
            }
            _ => {
                // An unquoted value ends at a ` #` comment.
                let cut = value
                    .char_indices()
                    .find(|&(i, c)| c == '#' && i > 0 && value[..i].ends_with([' ', '\t']))
                    .map(|(i, _)| i)
                    .unwrap_or(value.len());
                value[..cut].trim_end().to_string()
            }
        };
        out.push((key.to_string(), value, lineno));
    }
    Ok(out)
}

/// Parse a boolean the way AgentScope's settings do: true/false/1/0/yes/no/on/off, any case.
pub fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// Parse `READONLY_MOUNTS`: a JSON object `{"/host": "/guest"}` or comma-separated
/// `host:guest` pairs. Host paths must exist; guest paths must be absolute and plain.
pub fn parse_readonly_mounts(s: &str) -> Result<Vec<ReadonlyMount>, String> {
    let s = s.trim();
    let pairs: Vec<(String, String)> = if s.is_empty() || s == "null" || s == "None" {
        Vec::new()
    } else if s.starts_with('{') {
        let map: BTreeMap<String, String> = serde_json::from_str(s)
            .map_err(|e| format!("expected a JSON object of host path to guest path: {e}"))?;
        map.into_iter().collect()
    } else {
        s.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| {
                p.split_once(':')
                    .map(|(h, g)| (h.trim().to_string(), g.trim().to_string()))
                    .ok_or_else(|| format!("{p:?} is not a host:guest pair"))
            })
            .collect::<Result<_, _>>()?
    };
    let mut mounts = Vec::new();
    for (host, guest) in pairs {
        let host_path = PathBuf::from(&host);
        if host.is_empty() || !host_path.exists() {
            return Err(format!("host path {host:?} does not exist"));
        }
        let host_path = host_path
            .canonicalize()
            .map_err(|e| format!("host path {host:?}: {e}"))?;
        let guest_path = PathBuf::from(&guest);
        let plain = guest_path.is_absolute()
            && guest_path
                .components()
                .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
            && guest_path.components().count() > 1;
        if !plain {
            return Err(format!(
                "guest path {guest:?} must be an absolute path below / without `..`"
            ));
        }
        mounts.push(ReadonlyMount {
            host: host_path,
            guest: guest_path,
        });
    }
    Ok(mounts)
}

/// Parse `DEFAULT_SANDBOX_TYPE`: a name, a comma-separated list, or a JSON list.
fn parse_types(s: &str) -> Result<Vec<String>, String> {
    let s = s.trim();
    let names: Vec<String> = if s.starts_with('[') {
        serde_json::from_str(s).map_err(|e| format!("expected a JSON list of names: {e}"))?
    } else {
        s.split(',').map(|n| n.trim().to_string()).collect()
    };
    let names: Vec<String> = names.into_iter().filter(|n| !n.is_empty()).collect();
    if names.is_empty() {
        return Err("at least one type is needed".into());
    }
    for n in &names {
        if !Templates::valid_name(n) {
            return Err(format!(
                "{n:?} is not a type name (lowercase letters, digits, '-', '_')"
            ));
        }
    }
    Ok(names)
}

/// Shortest token an API key may have.
pub const MIN_TOKEN_LEN: usize = 16;

/// Longest token an API key may have.
pub const MAX_TOKEN_LEN: usize = 4096;

/// One named API key (`API_KEYS`, `API_KEYS_FILE`).
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// Its name: the tenant its sandboxes belong to (1 to 64 letters, digits, `-`, `_`).
    pub name: String,
    token: String,
}

impl ApiKey {
    /// A key; [`check_api_keys`] says whether it may be used.
    pub fn new(name: impl Into<String>, token: impl Into<String>) -> ApiKey {
        ApiKey {
            name: name.into(),
            token: token.into(),
        }
    }

    /// The token clients send.
    pub fn token(&self) -> &str {
        &self.token
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKey")
            .field("name", &self.name)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// Whether `name` can name an API key: 1 to 64 letters, digits, `-` and `_` (no `.`: a
/// tenant's sessions are named `<name>.<session>`).
pub fn valid_key_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
}

/// Parse API keys: a JSON object `{"name": "token", ...}`, or `name:token` entries separated
/// by commas or new lines (blank lines and `#` comment lines are skipped). Errors name the
/// entry (by key name or line), never the token.
pub fn parse_api_keys(text: &str) -> Result<Vec<ApiKey>, String> {
    let trimmed = text.trim();
    if trimmed.starts_with('{') {
        let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(trimmed)
            .map_err(|e| {
                // serde_json's message quotes no input, only a position.
                format!("expected a JSON object of key name to token: {e}")
            })?;
        let mut keys = Vec::new();
        for (name, token) in map {
            match token {
                serde_json::Value::String(t) => keys.push(ApiKey::new(name, t)),
                _ => return Err(format!("the token of key {name:?} must be a string")),
            }
        }
        return Ok(keys);
    }
    let mut keys = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        for entry in line.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let Some((name, token)) = entry.split_once(':') else {
                return Err(format!(
                    "line {}: expected name:token entries (an entry has no ':')",
                    i + 1
                ));
            };
            keys.push(ApiKey::new(name.trim(), token.trim()));
        }
    }
    Ok(keys)
}

/// Check API keys: valid names, tokens of [`MIN_TOKEN_LEN`] to [`MAX_TOKEN_LEN`] visible
/// ASCII characters, no name or token twice, no token equal to `BEARER_TOKEN`'s.
pub fn check_api_keys(keys: &[ApiKey], bearer_token: Option<&str>) -> Result<(), String> {
    for (i, k) in keys.iter().enumerate() {
        if !valid_key_name(&k.name) {
            return Err(format!(
                "key name {:?} must be 1 to 64 letters, digits, '-' or '_'",
                k.name
            ));
        }
        let name = &k.name;
        if k.token.is_empty() {
            return Err(format!("key {name} has an empty token"));
        }
        if !k.token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "the token of key {name} must be visible ASCII characters (no spaces)"
            ));
        }
        if k.token.len() < MIN_TOKEN_LEN {
            return Err(format!(
                "the token of key {name} is {} characters; at least {MIN_TOKEN_LEN} are needed",
                k.token.len()
            ));
        }
        if k.token.len() > MAX_TOKEN_LEN {
            return Err(format!(
                "the token of key {name} is longer than {MAX_TOKEN_LEN} characters"
            ));
        }
        if keys[..i].iter().any(|o| o.name == k.name) {
            return Err(format!("key name {name} is given twice"));
        }
        if let Some(o) = keys[..i].iter().find(|o| o.token == k.token) {
            return Err(format!("keys {} and {name} have the same token", o.name));
        }
        if bearer_token == Some(k.token.as_str()) {
            return Err(format!(
                "key {name} has the token of BEARER_TOKEN (the admin's); give it its own"
            ));
        }
    }
    Ok(())
}

fn absolute(p: &str) -> Result<PathBuf, String> {
    if p.trim().is_empty() {
        return Err("a path is needed".into());
    }
    let p = PathBuf::from(p);
    if p.is_absolute() {
        Ok(p)
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .map_err(|e| format!("cannot resolve a relative path: {e}"))
    }
}

impl Settings {
    /// Settings from `args`, the process environment and `args.config`.
    pub fn load(args: &ServeArgs) -> Result<Settings, SettingsError> {
        Self::from_sources(args, &|k| std::env::var(k).ok())
    }

    /// Settings from `args`, an environment given as a lookup function, and `args.config`.
    pub fn from_sources(
        args: &ServeArgs,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Settings, SettingsError> {
        let mut raw: BTreeMap<&'static str, Raw> = BTreeMap::new();
        let mut warnings = Vec::new();
        let mut unsupported: Vec<String> = Vec::new();

        if let Some(path) = &args.config {
            let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Io {
                path: path.clone(),
                source,
            })?;
            for (key, value, line) in parse_env_file(path, &text)? {
                let key = if key == WATCHER_SCAN_INTERVAL {
                    "HEARTBEAT_SCAN_INTERVAL".to_string()
                } else {
                    key
                };
                if let Some(k) = OUR_KEYS.iter().find(|k| **k == key) {
                    raw.insert(
                        k,
                        Raw {
                            value,
                            origin: Origin::File {
                                path: path.clone(),
                                line,
                            },
                        },
                    );
                } else if is_unsupported_agentscope_key(&key) {
                    unsupported.push(key);
                } else {
                    return Err(SettingsError::UnknownKey {
                        key,
                        path: path.clone(),
                        line,
                    });
                }
            }
        }
        for k in OUR_KEYS {
            let value = match env(k) {
                None if *k == "HEARTBEAT_SCAN_INTERVAL" => env(WATCHER_SCAN_INTERVAL),
                v => v,
            };
            if let Some(value) = value {
                raw.insert(
                    k,
                    Raw {
                        value,
                        origin: Origin::Env,
                    },
                );
            }
        }
        for k in AGENTSCOPE_KEYS.iter().chain(AGENTSCOPE_ENV_SWITCHES) {
            if env(k).is_some() {
                unsupported.push(k.to_string());
            }
        }
        for (k, flag, value) in args.given() {
            raw.insert(
                k,
                Raw {
                    value: value.clone(),
                    origin: Origin::Flag(flag),
                },
            );
        }
        unsupported.sort();
        unsupported.dedup();
        for k in unsupported {
            warnings.push(format!("setting {k} is not supported yet; ignored"));
        }

        let mut s = Settings::default();
        let invalid = |key: &str, r: &Raw, reason: String| SettingsError::Invalid {
            key: key.to_string(),
            shown: if matches!(key, "BEARER_TOKEN" | "REDIS_PASSWORD" | "API_KEYS") {
                String::new()
            } else {
                format!("={:?}", r.value)
            },
            origin: r.origin.clone(),
            reason,
        };
        let get = |key: &str| raw.get(key);

        let host = |key: &str, r: &Raw| {
            let v = r.value.trim();
            if is_host(v) {
                Ok(v.to_string())
            } else {
                Err(invalid(
                    key,
                    r,
                    "expected an IP address or host name".into(),
                ))
            }
        };
        if let Some(r) = get("HOST") {
            s.host = host("HOST", r)?;
        }
        if let Some(r) = get("PORT") {
            s.port = r
                .value
                .trim()
                .parse()
                .map_err(|_| invalid("PORT", r, "expected a port number 0-65535".into()))?;
        }
        if let Some(r) = get("WORKERS") {
            s.workers = r
                .value
                .trim()
                .parse()
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| invalid("WORKERS", r, "expected a number of at least 1".into()))?;
        }
        if let Some(r) = get("BEARER_TOKEN") {
            let v = r.value.trim();
            if v.chars().any(|c| c.is_control() || c == ' ') {
                return Err(invalid(
                    "BEARER_TOKEN",
                    r,
                    "must not contain spaces or control characters".into(),
                ));
            }
            s.bearer_token = (!v.is_empty()).then(|| v.to_string());
        }
        if let Some(r) = get("API_KEYS") {
            s.api_keys = parse_api_keys(&r.value).map_err(|e| invalid("API_KEYS", r, e))?;
        }
        if let Some(r) = get("API_KEYS_FILE") {
            let path = r.value.trim();
            let text = std::fs::read_to_string(path)
                .map_err(|e| invalid("API_KEYS_FILE", r, format!("cannot read it: {e}")))?;
            let from_file = parse_api_keys(&text).map_err(|e| invalid("API_KEYS_FILE", r, e))?;
            s.api_keys.extend(from_file);
        }
        check_api_keys(&s.api_keys, s.bearer_token.as_deref()).map_err(|e| {
            let (key, r) = match (get("API_KEYS_FILE"), get("API_KEYS")) {
                (Some(r), _) => ("API_KEYS_FILE", r),
                (None, Some(r)) => ("API_KEYS", r),
                (None, None) => unreachable!("no API keys, no duplicates"),
            };
            invalid(key, r, e)
        })?;
        if let Some(r) = get("DEFAULT_SANDBOX_TYPE") {
            s.default_sandbox_types =
                parse_types(&r.value).map_err(|e| invalid("DEFAULT_SANDBOX_TYPE", r, e))?;
        }
        if let Some(r) = get("POOL_SIZE") {
            s.pool_size = r
                .value
                .trim()
                .parse()
                .map_err(|_| invalid("POOL_SIZE", r, "expected a whole number".into()))?;
        }
        if let Some(r) = get("AUTO_CLEANUP") {
            s.auto_cleanup = parse_bool(&r.value).ok_or_else(|| {
                invalid("AUTO_CLEANUP", r, "expected true/false/1/0/yes/no".into())
            })?;
        }
        if let Some(r) = get("CONTAINER_PREFIX_KEY") {
            s.container_prefix_key = r.value.trim().to_string();
        }
        if let Some(r) = get("CONTAINER_DEPLOYMENT") {
            let v = r.value.trim().to_ascii_lowercase();
            if v.is_empty() {
                return Err(invalid(
                    "CONTAINER_DEPLOYMENT",
                    r,
                    "expected a backend name".into(),
                ));
            }
            s.container_deployment = v;
        }
        if let Some(r) = get("MAX_SANDBOX_INSTANCES") {
            s.max_sandbox_instances = r.value.trim().parse().map_err(|_| {
                invalid(
                    "MAX_SANDBOX_INSTANCES",
                    r,
                    "expected a whole number (0 = no limit)".into(),
                )
            })?;
        }
        if let Some(r) = get("SANDBOXD_STATE_DIR") {
            s.state_dir =
                absolute(r.value.trim()).map_err(|e| invalid("SANDBOXD_STATE_DIR", r, e))?;
        }
        if let Some(r) = get("SANDBOXD_RUN_DIR") {
            s.run_dir = absolute(r.value.trim()).map_err(|e| invalid("SANDBOXD_RUN_DIR", r, e))?;
        }
        if let Some(r) = get("SANDBOXD_TEMPLATES_DIR") {
            s.templates_dir = Some(
                absolute(r.value.trim()).map_err(|e| invalid("SANDBOXD_TEMPLATES_DIR", r, e))?,
            );
        }
        s.default_mount_dir = match get("DEFAULT_MOUNT_DIR") {
            Some(r) => absolute(r.value.trim()).map_err(|e| invalid("DEFAULT_MOUNT_DIR", r, e))?,
            None => s.state_dir.join("workspaces"),
        };
        if let Some(r) = get("READONLY_MOUNTS") {
            s.readonly_mounts =
                parse_readonly_mounts(&r.value).map_err(|e| invalid("READONLY_MOUNTS", r, e))?;
        }
        if let Some(r) = get("SANDBOX_TIMEOUT") {
            s.sandbox_timeout_secs = r.value.trim().parse().map_err(|_| {
                invalid(
                    "SANDBOX_TIMEOUT",
                    r,
                    "expected a number of seconds (0 = never)".into(),
                )
            })?;
        }
        // A disk size in MiB: 0, or what a request's `resources.disk_mb` may be.
        let disk_size = |name: &'static str, r: &Raw, zero: &str| -> Result<u64, SettingsError> {
            let mb: u64 =
                r.value.trim().parse().map_err(|_| {
                    invalid(name, r, format!("expected a number of MiB (0 = {zero})"))
                })?;
            if mb != 0 {
                check_resources(&sandboxd_types::Resources {
                    disk_mb: Some(mb),
                    ..Default::default()
                })
                .map_err(|e| invalid(name, r, e.replace("resources.disk_mb", "the size")))?;
            }
            Ok(mb)
        };
        if let Some(r) = get("SANDBOXD_DISK_MB") {
            s.disk_mb = disk_size("SANDBOXD_DISK_MB", r, "no limit")?;
        }
        if let Some(r) = get("SANDBOXD_WORKSPACE_MB") {
            s.workspace_mb = disk_size("SANDBOXD_WORKSPACE_MB", r, "no quota")?;
        }
        if let Some(r) = get("SANDBOXD_CGROUP_PARENT") {
            let v = r.value.trim().trim_matches('/');
            let ok = !v.is_empty()
                && v.split('/').all(|c| {
                    !c.is_empty()
                        && c != "."
                        && c != ".."
                        && c.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
                });
            if !ok {
                return Err(invalid(
                    "SANDBOXD_CGROUP_PARENT",
                    r,
                    "expected a cgroup path of letters, digits, '-', '_', '.' and '/'".into(),
                ));
            }
            s.cgroup_parent = v.to_string();
        }

        for (key, field) in [
            ("HEARTBEAT_TIMEOUT", &mut s.heartbeat_timeout_secs),
            (
                "HEARTBEAT_SCAN_INTERVAL",
                &mut s.heartbeat_scan_interval_secs,
            ),
            ("HEARTBEAT_LOCK_TTL", &mut s.heartbeat_lock_ttl_secs),
        ] {
            if let Some(r) = get(key) {
                *field =
                    r.value.trim().parse().map_err(|_| {
                        invalid(key, r, "expected a whole number of seconds".into())
                    })?;
            }
        }
        if let Some(r) = get("PORT_RANGE") {
            s.port_range = PortRange::parse(&r.value).map_err(|e| invalid("PORT_RANGE", r, e))?;
        }
        if let Some(r) = get("SANDBOXD_PUBLISH_HOST") {
            s.publish_host = r.value.trim().parse().map_err(|_| {
                invalid(
                    "SANDBOXD_PUBLISH_HOST",
                    r,
                    "expected an IP address of this machine (e.g. 127.0.0.1, 0.0.0.0, ::1)".into(),
                )
            })?;
        }
        if s.heartbeat_timeout_secs == 0 {
            let r = get("HEARTBEAT_TIMEOUT").expect("only a given value can be 0");
            return Err(invalid(
                "HEARTBEAT_TIMEOUT",
                r,
                "expected at least 1 second".into(),
            ));
        }
        if let Some(r) = get("SANDBOXD_INIT_BIN") {
            s.init_bin =
                Some(absolute(r.value.trim()).map_err(|e| invalid("SANDBOXD_INIT_BIN", r, e))?);
        }
        if let Some(r) = get("SANDBOXD_AGENT_BIN") {
            s.agent_bin =
                Some(absolute(r.value.trim()).map_err(|e| invalid("SANDBOXD_AGENT_BIN", r, e))?);
        }

        // Extension files: the flags, else SANDBOXD_EXTENSIONS (comma-separated). Loaded last:
        // their templates are looked for where the settings above say templates live.
        if !args.extension.is_empty() {
            for p in &args.extension {
                s.extensions
                    .push(
                        absolute(&p.to_string_lossy()).map_err(|e| SettingsError::Invalid {
                            key: "SANDBOXD_EXTENSIONS".into(),
                            shown: format!("={:?}", p.display().to_string()),
                            origin: Origin::Flag("--extension"),
                            reason: e,
                        })?,
                    );
            }
        } else if let Some(r) = get("SANDBOXD_EXTENSIONS") {
            for p in r.value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                s.extensions
                    .push(absolute(p).map_err(|e| invalid("SANDBOXD_EXTENSIONS", r, e))?);
            }
        }
        s.sandbox_types = TypeRegistry::load(&s.extensions, &Templates::new(s.templates_dir()))?;

        let redis_enabled = match get("REDIS_ENABLED") {
            Some(r) => parse_bool(&r.value).ok_or_else(|| {
                invalid("REDIS_ENABLED", r, "expected true/false/1/0/yes/no".into())
            })?,
            None => false,
        };
        if redis_enabled {
            let mut cfg = RedisConfig::default();
            if let Some(r) = get("REDIS_SERVER") {
                cfg.host = host("REDIS_SERVER", r)?;
            }
            if let Some(r) = get("REDIS_PORT") {
                cfg.port = r
                    .value
                    .trim()
                    .parse()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| {
                        invalid("REDIS_PORT", r, "expected a port number 1-65535".into())
                    })?;
            }
            if let Some(r) = get("REDIS_DB") {
                cfg.db = r
                    .value
                    .trim()
                    .parse()
                    .ok()
                    .filter(|d| (0..=1_000_000).contains(d))
                    .ok_or_else(|| invalid("REDIS_DB", r, "expected a database number".into()))?;
            }
            let text = |key: &str| {
                get(key)
                    .map(|r| r.value.trim().to_string())
                    .filter(|v| !v.is_empty())
            };
            cfg.username = text("REDIS_USER");
            cfg.password = text("REDIS_PASSWORD");
            if let Some(r) = get("SANDBOXD_REDIS_PREFIX") {
                let v = r.value.trim();
                if v.is_empty() || v.len() > 64 || v.chars().any(|c| c.is_control() || c == ' ') {
                    return Err(invalid(
                        "SANDBOXD_REDIS_PREFIX",
                        r,
                        "expected 1 to 64 characters without spaces".into(),
                    ));
                }
                cfg.prefix = v.to_string();
            }
            s.redis = Some(cfg);
        }
        if let Some(r) = get("SANDBOXD_RUNSC") {
            let v = r.value.trim();
            if v.is_empty() {
                return Err(invalid(
                    "SANDBOXD_RUNSC",
                    r,
                    "expected the runsc binary".into(),
                ));
            }
            s.runsc = PathBuf::from(v);
        }
        if let Some(r) = get("SANDBOXD_GVISOR_PLATFORM") {
            let v = r.value.trim().to_ascii_lowercase();
            if !sandboxd_backend_gvisor::PLATFORMS.contains(&v.as_str()) {
                return Err(invalid(
                    "SANDBOXD_GVISOR_PLATFORM",
                    r,
                    format!(
                        "expected one of {}",
                        sandboxd_backend_gvisor::PLATFORMS.join(", ")
                    ),
                ));
            }
            s.gvisor_platform = v;
        }
        if let Some(r) = get("SANDBOXD_NODE_URL") {
            let v = r.value.trim().trim_end_matches('/');
            let host = v.strip_prefix("http://").unwrap_or("");
            if host.is_empty() || host.contains('/') || host.chars().any(|c| c.is_whitespace()) {
                return Err(invalid(
                    "SANDBOXD_NODE_URL",
                    r,
                    "expected http://HOST:PORT, the address other nodes reach this one at".into(),
                ));
            }
            if s.redis.is_none() {
                return Err(invalid(
                    "SANDBOXD_NODE_URL",
                    r,
                    "needs REDIS_ENABLED=true: the nodes find each other in Redis".into(),
                ));
            }
            s.node_url = Some(v.to_string());
        }
        if let Some(r) = get("SANDBOXD_NODE_ID") {
            let v = r.value.trim();
            if !valid_node_id(v) {
                return Err(invalid(
                    "SANDBOXD_NODE_ID",
                    r,
                    "expected 1 to 64 letters, digits, '-', '_' or '.'".into(),
                ));
            }
            s.node_id = v.to_string();
        }

        if s.pool_size == 0 && s.default_sandbox_types.len() > 1 {
            // The others only matter for warm pools.
            warnings.push(format!(
                "DEFAULT_SANDBOX_TYPE lists several types but POOL_SIZE is 0; {} is used as \
                 the default and no type is pooled",
                s.default_sandbox_types[0]
            ));
        }
        s.warnings = warnings;
        Ok(s)
    }

    /// The type used when a request names none.
    pub fn default_sandbox_type(&self) -> &str {
        self.default_sandbox_types
            .first()
            .map(String::as_str)
            .unwrap_or("base")
    }

    /// Where templates live: `SANDBOXD_TEMPLATES_DIR`, else `<state_dir>/templates`.
    pub fn templates_dir(&self) -> PathBuf {
        self.templates_dir
            .clone()
            .unwrap_or_else(|| self.state_dir.join("templates"))
    }

    /// The host shown in published ports' addresses: `SANDBOXD_PUBLISH_HOST`, unless it is the
    /// unspecified address (all of the machine's), for which the host of `SANDBOXD_NODE_URL`,
    /// else `HOST` unless unspecified too, else loopback.
    pub fn publish_advertised_host(&self) -> String {
        if !self.publish_host.is_unspecified() {
            return self.publish_host.to_string();
        }
        let node_host = self.node_url.as_deref().and_then(|u| {
            let hostport = u.strip_prefix("http://")?;
            let host = match hostport.strip_prefix('[') {
                Some(v6) => v6.split(']').next()?,
                None => hostport.rsplit_once(':').map_or(hostport, |(h, _)| h),
            };
            (!host.is_empty()).then(|| host.to_string())
        });
        let host = self
            .host
            .parse::<IpAddr>()
            .map_or(true, |ip| !ip.is_unspecified())
            .then(|| self.host.clone());
        node_host.or(host).unwrap_or_else(|| {
            if self.publish_host.is_ipv6() {
                "::1".into()
            } else {
                "127.0.0.1".into()
            }
        })
    }

    /// `host:port` to bind.
    pub fn bind_addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    fn with_file(text: &str) -> (tempfile::TempDir, ServeArgs) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("custom.env");
        std::fs::write(&p, text).unwrap();
        let args = ServeArgs {
            config: Some(p),
            ..Default::default()
        };
        (d, args)
    }

    #[test]
    fn defaults() {
        let s = Settings::from_sources(&ServeArgs::default(), &env_of(&[])).unwrap();
        assert_eq!(s, Settings::default());
        assert_eq!(s.bind_addr(), "127.0.0.1:8000");
        assert_eq!(
            s.default_mount_dir,
            PathBuf::from("/var/lib/sandboxd/workspaces")
        );
        assert_eq!(
            s.templates_dir(),
            PathBuf::from("/var/lib/sandboxd/templates")
        );
        assert!(s.auto_cleanup);
        assert_eq!(s.default_sandbox_type(), "base");
    }

    #[test]
    fn env_file_syntax() {
        let text = "# comment\n\nHOST=\"0.0.0.0\"\nexport PORT=8080 # inline\nBEARER_TOKEN='a#b'\n\
                    DEFAULT_SANDBOX_TYPE=base  \nEMPTY=\n";
        let got = parse_env_file(Path::new("x.env"), text).unwrap();
        let kv: Vec<(&str, &str, usize)> = got
            .iter()
            .map(|(k, v, l)| (k.as_str(), v.as_str(), *l))
            .collect();
        assert_eq!(
            kv,
            vec![
                ("HOST", "0.0.0.0", 3),
                ("PORT", "8080", 4),
                ("BEARER_TOKEN", "a#b", 5),
                ("DEFAULT_SANDBOX_TYPE", "base", 6),
                ("EMPTY", "", 7),
            ]
        );
        let e = parse_env_file(Path::new("x.env"), "A=1\nnot a setting\n").unwrap_err();
        assert_eq!(e.to_string(), "x.env:2: expected KEY=VALUE");
        assert!(parse_env_file(Path::new("x.env"), "A=\"open\n").is_err());
    }

    #[test]
    fn agentscope_file_is_accepted_with_warnings() {
        let (_d, args) = with_file(
            "HOST=\"0.0.0.0\"\nPORT=8000\nWORKERS=1\nDEBUG=False\nBEARER_TOKEN=your-secret-token\n\
             DEFAULT_SANDBOX_TYPE=base\nPOOL_SIZE=0\nAUTO_CLEANUP=True\n\
             CONTAINER_PREFIX_KEY=agent-runtime-container-\nCONTAINER_DEPLOYMENT=native\n\
             DEFAULT_MOUNT_DIR=/srv/sessions\nPORT_RANGE=[49152,59152]\nREDIS_ENABLED=False\n\
             REDIS_SERVER=localhost\nFILE_SYSTEM=local\nK8S_NAMESPACE=default\nKUBECONFIG_PATH=\n\
             HEARTBEAT_TIMEOUT=300\nMAX_SANDBOX_INSTANCES=20\n",
        );
        let s = Settings::from_sources(&args, &env_of(&[])).unwrap();
        assert_eq!(s.host, "0.0.0.0");
        assert_eq!(s.bearer_token.as_deref(), Some("your-secret-token"));
        assert!(s.auto_cleanup);
        assert_eq!(s.container_prefix_key, "agent-runtime-container-");
        assert_eq!(s.default_mount_dir, PathBuf::from("/srv/sessions"));
        assert_eq!(s.max_sandbox_instances, 20);
        assert_eq!(s.heartbeat_timeout_secs, 300);
        assert!(!s.warnings.join("\n").contains("HEARTBEAT"));
        let w = s.warnings.join("\n");
        assert_eq!(s.redis, None);
        assert!(!w.contains("REDIS"), "{w}");
        assert_eq!(s.port_range, PortRange::default());
        for k in ["DEBUG", "FILE_SYSTEM", "K8S_NAMESPACE", "KUBECONFIG_PATH"] {
            assert!(w.contains(&format!("{k} is not supported yet")), "{k}: {w}");
        }
        // The token never appears in debug output.
        assert!(!format!("{s:?}").contains("your-secret-token"));
    }

    #[test]
    fn published_port_settings() {
        let s = Settings::from_sources(
            &ServeArgs::default(),
            &env_of(&[
                ("PORT_RANGE", "[30000,30010]"),
                ("SANDBOXD_PUBLISH_HOST", "0.0.0.0"),
                ("HOST", "10.1.2.3"),
            ]),
        )
        .unwrap();
        assert_eq!(
            s.port_range,
            PortRange {
                lo: 30000,
                hi: 30010
            }
        );
        assert!(s.publish_host.is_unspecified());
        assert_eq!(s.publish_advertised_host(), "10.1.2.3");
        assert!(!s.warnings.join("\n").contains("PORT_RANGE"));
        let d = Settings::default();
        assert_eq!(d.publish_advertised_host(), "127.0.0.1");
        let all = Settings {
            publish_host: "0.0.0.0".parse().unwrap(),
            host: "0.0.0.0".into(),
            ..Settings::default()
        };
        assert_eq!(all.publish_advertised_host(), "127.0.0.1");
        let noded = Settings {
            node_url: Some("http://10.0.0.2:8000".into()),
            ..all
        };
        assert_eq!(noded.publish_advertised_host(), "10.0.0.2");
        let flag = ServeArgs {
            port_range: Some("[40000,40001]".into()),
            ..Default::default()
        };
        let s = Settings::from_sources(&flag, &env_of(&[("PORT_RANGE", "[1,2]")])).unwrap();
        assert_eq!(
            s.port_range,
            PortRange {
                lo: 40000,
                hi: 40001
            }
        );
        for (k, v, says) in [
            ("PORT_RANGE", "49152-59152", "expected [LOW,HIGH]"),
            ("PORT_RANGE", "[60000,50000]", "above the high end"),
            ("PORT_RANGE", "[443,2000]", "privileged"),
            (
                "SANDBOXD_PUBLISH_HOST",
                "localhost",
                "expected an IP address",
            ),
        ] {
            let e = Settings::from_sources(&ServeArgs::default(), &env_of(&[(k, v)]))
                .unwrap_err()
                .to_string();
            assert!(e.contains(k) && e.contains(says), "{k}={v}: {e}");
        }
    }

    #[test]
    fn redis_settings() {
        let s = Settings::from_sources(
            &ServeArgs::default(),
            &env_of(&[
                ("REDIS_ENABLED", "True"),
                ("REDIS_SERVER", "10.0.0.5"),
                ("REDIS_PORT", "6380"),
                ("REDIS_DB", "2"),
                ("REDIS_USER", "app"),
                ("REDIS_PASSWORD", "pw-secret"),
                ("SANDBOXD_NODE_ID", "node-a"),
            ]),
        )
        .unwrap();
        let r = s.redis.clone().unwrap();
        assert_eq!((r.host.as_str(), r.port, r.db), ("10.0.0.5", 6380, 2));
        assert_eq!(r.username.as_deref(), Some("app"));
        assert_eq!(r.password.as_deref(), Some("pw-secret"));
        assert_eq!(r.prefix, "sandboxd");
        assert_eq!(s.node_id, "node-a");
        assert!(!format!("{s:?}").contains("pw-secret"));
        // Off unless enabled, whatever else is set.
        let off =
            Settings::from_sources(&ServeArgs::default(), &env_of(&[("REDIS_PORT", "1")])).unwrap();
        assert_eq!(off.redis, None);
        for (k, v) in [
            ("REDIS_PORT", "0"),
            ("REDIS_PORT", "x"),
            ("REDIS_SERVER", "a b"),
            ("REDIS_ENABLED", "maybe"),
            ("SANDBOXD_NODE_ID", "a/b"),
        ] {
            let mut env = vec![("REDIS_ENABLED", "true")];
            if k == "REDIS_ENABLED" {
                env.clear();
            }
            env.push((k, v));
            let e = Settings::from_sources(&ServeArgs::default(), &env_of(&env))
                .unwrap_err()
                .to_string();
            assert!(e.contains(k), "{k}={v}: {e}");
        }
    }

    #[test]
    fn precedence_flags_over_env_over_file_over_defaults() {
        let (_d, mut args) = with_file("PORT=1111\nHOST=10.0.0.1\nSANDBOX_TIMEOUT=5\n");
        let env = env_of(&[("PORT", "2222"), ("HOST", "10.0.0.2")]);
        let s = Settings::from_sources(&args, &env).unwrap();
        assert_eq!(s.port, 2222);
        assert_eq!(s.host, "10.0.0.2");
        assert_eq!(s.sandbox_timeout_secs, 5);
        assert_eq!(s.workers, 1);
        args.port = Some("3333".into());
        let s = Settings::from_sources(&args, &env).unwrap();
        assert_eq!(s.port, 3333);
        assert_eq!(s.host, "10.0.0.2");
    }

    #[test]
    fn disk_limit() {
        let parse = |v: &str| {
            Settings::from_sources(&ServeArgs::default(), &env_of(&[("SANDBOXD_DISK_MB", v)]))
        };
        assert_eq!(Settings::default().disk_mb, 256);
        assert_eq!(parse("1024").unwrap().disk_mb, 1024);
        assert_eq!(parse("0").unwrap().disk_mb, 0);
        for bad in ["8", "lots", "-1"] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains("SANDBOXD_DISK_MB"), "{bad}: {e}");
        }
        let args = ServeArgs {
            disk_mb: Some("512".into()),
            ..Default::default()
        };
        assert_eq!(
            Settings::from_sources(&args, &env_of(&[("SANDBOXD_DISK_MB", "64")]))
                .unwrap()
                .disk_mb,
            512
        );
    }

    #[test]
    fn workspace_quota() {
        let parse = |v: &str| {
            Settings::from_sources(
                &ServeArgs::default(),
                &env_of(&[("SANDBOXD_WORKSPACE_MB", v)]),
            )
        };
        assert_eq!(Settings::default().workspace_mb, 0);
        assert_eq!(parse("64").unwrap().workspace_mb, 64);
        assert_eq!(parse("0").unwrap().workspace_mb, 0);
        for bad in ["8", "lots", "-1"] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains("SANDBOXD_WORKSPACE_MB"), "{bad}: {e}");
        }
    }

    #[test]
    fn state_dir_moves_the_default_mount_dir() {
        let args = ServeArgs {
            state_dir: Some("/tmp/sbx".into()),
            ..Default::default()
        };
        let s = Settings::from_sources(&args, &env_of(&[])).unwrap();
        assert_eq!(s.default_mount_dir, PathBuf::from("/tmp/sbx/workspaces"));
        assert_eq!(s.templates_dir(), PathBuf::from("/tmp/sbx/templates"));
        let s =
            Settings::from_sources(&args, &env_of(&[("DEFAULT_MOUNT_DIR", "/data/ws")])).unwrap();
        assert_eq!(s.default_mount_dir, PathBuf::from("/data/ws"));
    }

    #[test]
    fn malformed_values_name_the_setting_and_line() {
        let (_d, args) = with_file("HOST=0.0.0.0\nPORT=abc\n");
        let e = Settings::from_sources(&args, &env_of(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("PORT=\"abc\"") && e.contains("custom.env:2"),
            "{e}"
        );

        let (_d, args) = with_file("AUTO_CLEANUP=maybe\n");
        let e = Settings::from_sources(&args, &env_of(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("AUTO_CLEANUP") && e.contains("custom.env:1"),
            "{e}"
        );

        let (_d, args) = with_file("\nREADONLY_MOUNTS={not json\n");
        let e = Settings::from_sources(&args, &env_of(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("READONLY_MOUNTS") && e.contains("custom.env:2"),
            "{e}"
        );

        let (_d, args) = with_file("PORT=1\nNO_SUCH_SETTING=1\n");
        let e = Settings::from_sources(&args, &env_of(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown setting NO_SUCH_SETTING") && e.contains("custom.env:2"),
            "{e}"
        );

        let e = Settings::from_sources(&ServeArgs::default(), &env_of(&[("PORT", "99999")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("PORT") && e.contains("environment"), "{e}");

        let args = ServeArgs {
            workers: Some("0".into()),
            ..Default::default()
        };
        let e = Settings::from_sources(&args, &env_of(&[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("WORKERS") && e.contains("--workers"), "{e}");
    }

    #[test]
    fn secrets_are_not_echoed_in_errors() {
        let e = Settings::from_sources(
            &ServeArgs::default(),
            &env_of(&[("BEARER_TOKEN", "sec ret")]),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("BEARER_TOKEN") && !e.contains("sec ret"), "{e}");
    }

    #[test]
    fn booleans() {
        for t in ["true", "True", "TRUE", "1", "yes", "Yes", "on"] {
            assert_eq!(parse_bool(t), Some(true), "{t}");
        }
        for f in ["false", "False", "0", "no", "NO", "off"] {
            assert_eq!(parse_bool(f), Some(false), "{f}");
        }
        assert_eq!(parse_bool("maybe"), None);
        let s =
            Settings::from_sources(&ServeArgs::default(), &env_of(&[("AUTO_CLEANUP", "False")]))
                .unwrap();
        assert!(!s.auto_cleanup);
    }

    #[test]
    fn readonly_mounts_both_forms() {
        let d = tempfile::tempdir().unwrap();
        let host = d.path().canonicalize().unwrap();
        let h = host.display();
        let json = parse_readonly_mounts(&format!(r#"{{"{h}": "/data"}}"#)).unwrap();
        assert_eq!(
            json,
            vec![ReadonlyMount {
                host: host.clone(),
                guest: "/data".into()
            }]
        );
        let pairs = parse_readonly_mounts(&format!("{h}:/data, {h}:/more/data")).unwrap();
        assert_eq!(pairs.len(), 2);
        assert_eq!(pairs[1].guest, PathBuf::from("/more/data"));
        assert!(parse_readonly_mounts("").unwrap().is_empty());
        assert!(parse_readonly_mounts("/no/such/dir:/data")
            .unwrap_err()
            .contains("does not exist"));
        assert!(parse_readonly_mounts(&format!("{h}:data")).is_err());
        assert!(parse_readonly_mounts(&format!("{h}:/a/../b")).is_err());
        assert!(parse_readonly_mounts(&format!("{h}:/")).is_err());
        assert!(parse_readonly_mounts(&format!("{h}")).is_err());
        assert!(parse_readonly_mounts("[1,2]").is_err());
    }

    #[test]
    fn heartbeat_settings() {
        let (_d, args) =
            with_file("HEARTBEAT_TIMEOUT=2\nWATCHER_SCAN_INTERVAL=0\nHEARTBEAT_LOCK_TTL=5\n");
        let s = Settings::from_sources(&args, &env_of(&[])).unwrap();
        assert_eq!(
            (
                s.heartbeat_timeout_secs,
                s.heartbeat_scan_interval_secs,
                s.heartbeat_lock_ttl_secs
            ),
            (2, 0, 5)
        );
        assert!(s.warnings.is_empty(), "{:?}", s.warnings);
        let s =
            Settings::from_sources(&args, &env_of(&[("HEARTBEAT_SCAN_INTERVAL", "3")])).unwrap();
        assert_eq!(s.heartbeat_scan_interval_secs, 3);
        let e = Settings::from_sources(
            &ServeArgs::default(),
            &env_of(&[("HEARTBEAT_TIMEOUT", "0")]),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("HEARTBEAT_TIMEOUT"), "{e}");
    }

    #[test]
    fn pools_are_supported() {
        let env = env_of(&[("POOL_SIZE", "2"), ("DEFAULT_SANDBOX_TYPE", "base,gui")]);
        let s = Settings::from_sources(&ServeArgs::default(), &env).unwrap();
        assert_eq!(s.pool_size, 2);
        assert_eq!(s.default_sandbox_type(), "base");
        assert!(s.warnings.is_empty(), "{:?}", s.warnings);
        // Without a pool, the extra types do nothing: say so.
        let env = env_of(&[("DEFAULT_SANDBOX_TYPE", "base,gui")]);
        let s = Settings::from_sources(&ServeArgs::default(), &env).unwrap();
        assert!(
            s.warnings.join("\n").contains("POOL_SIZE is 0"),
            "{:?}",
            s.warnings
        );
    }

    /// A templates directory with a ready `base`, and an extension file in it.
    fn with_extension(text: &str) -> (tempfile::TempDir, PathBuf, Vec<(&'static str, String)>) {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("templates/base/rootfs")).unwrap();
        std::fs::write(d.path().join("templates/base/ready"), "").unwrap();
        let ext = d.path().join("types.toml");
        std::fs::write(&ext, text).unwrap();
        let env = vec![(
            "SANDBOXD_TEMPLATES_DIR",
            d.path().join("templates").display().to_string(),
        )];
        (d, ext, env)
    }

    #[test]
    fn extensions_from_flags_env_and_file() {
        let (d, ext, env) =
            with_extension("[[sandbox]]\ntype = \"mine\"\ntemplate = \"base\"\ntimeout = 5\n");
        let env_pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        // No extension: the built-in types.
        let s = Settings::from_sources(&ServeArgs::default(), &env_of(&env_pairs)).unwrap();
        assert!(s.sandbox_types.get("mine").is_none());
        assert!(s.sandbox_types.get("filesystem").is_some());
        // --extension, repeatable.
        let args = ServeArgs {
            extension: vec![ext.clone()],
            ..Default::default()
        };
        let s = Settings::from_sources(&args, &env_of(&env_pairs)).unwrap();
        assert_eq!(s.extensions, vec![ext.clone()]);
        assert_eq!(s.sandbox_types.get("mine").unwrap().timeout_secs, Some(5));
        // SANDBOXD_EXTENSIONS, comma-separated, from the environment or a config file.
        let other = d.path().join("more.toml");
        std::fs::write(
            &other,
            "[[sandbox]]\ntype = \"more\"\ntemplate = \"base\"\n",
        )
        .unwrap();
        let list = format!("{}, {}", ext.display(), other.display());
        let mut pairs = env_pairs.clone();
        pairs.push(("SANDBOXD_EXTENSIONS", &list));
        let s = Settings::from_sources(&ServeArgs::default(), &env_of(&pairs)).unwrap();
        assert!(s.sandbox_types.get("mine").is_some() && s.sandbox_types.get("more").is_some());
        let (_f, mut from_file) = with_file(&format!("SANDBOXD_EXTENSIONS={}\n", other.display()));
        let s = Settings::from_sources(&from_file, &env_of(&env_pairs)).unwrap();
        assert_eq!(s.extensions, vec![other.clone()]);
        // Flags win over the environment and the file.
        from_file.extension = vec![ext.clone()];
        let s = Settings::from_sources(&from_file, &env_of(&pairs)).unwrap();
        assert_eq!(s.extensions, vec![ext]);
    }

    #[test]
    fn a_malformed_extension_stops_the_start() {
        for (text, want) in [
            (
                "[[sandbox]]\ntype = \"mine\"\ntemplate = \"gui\"\n",
                "[[sandbox]] #1 (type \"mine\"): template: \"gui\" is not installed",
            ),
            (
                "[[sandbox]]\ntype = \"mine\"\ntemplate = \"base\"\nimage = \"x\"\n",
                "unknown field `image`",
            ),
            ("not toml at all\n", "TOML parse error"),
        ] {
            let (_d, ext, env) = with_extension(text);
            let env_pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let args = ServeArgs {
                extension: vec![ext.clone()],
                ..Default::default()
            };
            let e = Settings::from_sources(&args, &env_of(&env_pairs)).unwrap_err();
            assert!(matches!(e, SettingsError::Extension(_)), "{e:?}");
            let e = e.to_string();
            assert!(
                e.starts_with(&format!("extension {}: ", ext.display())) && e.contains(want),
                "want {want:?} in {e}"
            );
        }
        let args = ServeArgs {
            extension: vec!["/no/such/types.toml".into()],
            ..Default::default()
        };
        let e = Settings::from_sources(&args, &env_of(&[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/no/such/types.toml: cannot read it"), "{e}");
    }

    #[test]
    fn sandbox_types_forms() {
        assert_eq!(parse_types("base").unwrap(), vec!["base"]);
        assert_eq!(parse_types("base, gui").unwrap(), vec!["base", "gui"]);
        assert_eq!(
            parse_types(r#"["base","gui"]"#).unwrap(),
            vec!["base", "gui"]
        );
        assert!(parse_types("Base").is_err());
        assert!(parse_types("").is_err());
    }

    const A: &str = "alice-token-0123456789";
    const B: &str = "bob-token-0123456789ab";

    fn load(pairs: &[(&str, &str)]) -> Result<Settings, String> {
        Settings::from_sources(&ServeArgs::default(), &env_of(pairs)).map_err(|e| e.to_string())
    }

    #[test]
    fn api_keys_in_both_forms() {
        let s = load(&[("API_KEYS", &format!("alice:{A}, bob:{B}"))]).unwrap();
        let names: Vec<&str> = s.api_keys.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(names, ["alice", "bob"]);
        assert_eq!(s.api_keys[0].token(), A);
        assert_eq!(s.bearer_token, None);
        let s = load(&[("API_KEYS", &format!(r#"{{"alice": "{A}", "bob": "{B}"}}"#))]).unwrap();
        assert_eq!(s.api_keys.len(), 2);
        assert_eq!(s.api_keys[1].token(), B);
        // Empty means none, as for BEARER_TOKEN.
        assert!(load(&[("API_KEYS", " ")]).unwrap().api_keys.is_empty());
        // The tokens never show in Debug output.
        let shown = format!("{s:?}");
        assert!(!shown.contains(A) && !shown.contains(B), "{shown}");
        assert!(shown.contains("alice"));
    }

    #[test]
    fn api_keys_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("keys");
        std::fs::write(&p, format!("# tenants\n\nalice:{A}\n  bob : {B}  \n")).unwrap();
        let path = p.to_string_lossy().to_string();
        let s = load(&[("API_KEYS_FILE", &path)]).unwrap();
        let names: Vec<&str> = s.api_keys.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(names, ["alice", "bob"]);
        assert_eq!(s.api_keys[1].token(), B);
        // Both sources add up; a name in both is a duplicate.
        let s = load(&[
            ("API_KEYS_FILE", &path),
            ("API_KEYS", "carol:carol-token-0123456789"),
        ])
        .unwrap();
        assert_eq!(s.api_keys.len(), 3);
        let e = load(&[
            ("API_KEYS_FILE", &path),
            ("API_KEYS", &format!("alice:x{A}")),
        ])
        .unwrap_err();
        assert!(
            e.contains("API_KEYS_FILE") && e.contains("alice is given twice"),
            "{e}"
        );
        std::fs::write(&p, format!("alice:{A}\nbob {B}\n")).unwrap();
        let e = load(&[("API_KEYS_FILE", &path)]).unwrap_err();
        assert!(e.contains("line 2") && !e.contains(B), "{e}");
        let e = load(&[("API_KEYS_FILE", "/nonexistent/keys")]).unwrap_err();
        assert!(
            e.contains("API_KEYS_FILE") && e.contains("cannot read"),
            "{e}"
        );
        // In a config file too.
        let (_d, args) = with_file(&format!("API_KEYS_FILE={path}\n"));
        std::fs::write(&p, format!("alice:{A}\n")).unwrap();
        let s = Settings::from_sources(&args, &env_of(&[])).unwrap();
        assert_eq!(s.api_keys.len(), 1);
    }

    #[test]
    fn bad_api_keys_are_refused_without_showing_tokens() {
        let cases: &[(String, &str)] = &[
            ("alice:".into(), "key alice has an empty token"),
            ("alice:short".into(), "at least 16"),
            (
                format!("alice:{A},alice:{B}"),
                "key name alice is given twice",
            ),
            (
                format!("alice:{A},bob:{A}"),
                "keys alice and bob have the same token",
            ),
            (format!("al.ice:{A}"), "key name \"al.ice\""),
            (format!(":{A}"), "key name \"\""),
            (format!("alice:{A}\u{7f}"), "visible ASCII"),
            (
                format!("alice:{}", "x".repeat(MAX_TOKEN_LEN + 1)),
                "longer than",
            ),
            (format!("alice{A}"), "expected name:token"),
            (r#"{"alice": 5}"#.into(), "must be a string"),
            (r#"{"alice": "#.into(), "JSON object"),
        ];
        for (value, wanted) in cases {
            let e = load(&[("API_KEYS", value)]).unwrap_err();
            assert!(
                e.contains("API_KEYS") && e.contains(wanted),
                "{value:?}: {e}"
            );
            for secret in [A, B, "short"] {
                assert!(!e.contains(secret), "{e}");
            }
        }
        // A key may not reuse the admin's token.
        let e = load(&[("BEARER_TOKEN", A), ("API_KEYS", &format!("alice:{A}"))]).unwrap_err();
        assert!(e.contains("BEARER_TOKEN") && !e.contains(A), "{e}");
        // Beside BEARER_TOKEN is fine.
        let s = load(&[
            ("BEARER_TOKEN", "admin"),
            ("API_KEYS", &format!("alice:{A}")),
        ])
        .unwrap();
        assert_eq!(s.bearer_token.as_deref(), Some("admin"));
        assert_eq!(s.api_keys.len(), 1);
    }
}
