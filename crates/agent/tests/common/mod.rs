//! Test harness: start the real `sandboxd-agent` binary on a socket in a temporary directory
//! and talk the protocol to it over a plain `UnixStream`. Set `AGENT_TEST_BIN` to test another
//! build of the binary (for example the statically linked release build).

#![allow(dead_code)]

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use sandboxd_protocol::{encode, read_frame, AgentErrorKind, ExecSpec, Request, Response};

/// A running agent with its own temporary directory (`dir`) and file root (`root`, inside
/// `dir`, so that `dir/outside` is a place outside the root for escape tests).
pub struct TestAgent {
    child: Child,
    pub dir: PathBuf,
    pub root: PathBuf,
    pub sock: PathBuf,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl TestAgent {
    pub fn start() -> TestAgent {
        Self::start_with(&[])
    }

    pub fn start_with(env: &[(&str, &str)]) -> TestAgent {
        Self::start_full(env, None)
    }

    /// An agent leading a session whose controlling terminal is the pseudo-terminal `pty`
    /// (the path of its follower side), as when a server runs in a terminal.
    pub fn start_in_terminal(pty: &std::ffi::CStr) -> TestAgent {
        Self::start_full(&[], Some(pty.to_owned()))
    }

    fn start_full(env: &[(&str, &str)], terminal: Option<std::ffi::CString>) -> TestAgent {
        let dir = std::env::temp_dir().join(format!(
            "sbx-agent-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let root = dir.join("root");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(dir.join("outside")).unwrap();
        let sock = dir.join("agent.sock");
        // AGENT_TEST_BIN runs the suite against another build, e.g. the static release binary.
        let bin = std::env::var_os("AGENT_TEST_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_sandboxd-agent")));
        let mut cmd = Command::new(bin);
        cmd.arg("--listen")
            .arg(&sock)
            .env("SANDBOXD_FILES_ROOT", &root)
            .env_remove("SANDBOXD_LISTEN_FD")
            .stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        if let Some(pty) = terminal {
            use std::os::unix::process::CommandExt;
            // SAFETY: only async-signal-safe calls (setsid, open, ioctl) on data prepared
            // before the fork.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setsid() < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    // The first terminal a session leader opens without O_NOCTTY becomes its
                    // controlling terminal; TIOCSCTTY makes sure of it.
                    let fd = libc::open(pty.as_ptr(), libc::O_RDWR);
                    if fd < 0 || libc::ioctl(fd, libc::TIOCSCTTY, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd.spawn().expect("start sandboxd-agent");
        let agent = TestAgent {
            child,
            dir,
            root,
            sock,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while UnixStream::connect(&agent.sock).is_err() {
            assert!(Instant::now() < deadline, "agent did not start listening");
            std::thread::sleep(Duration::from_millis(10));
        }
        agent
    }

    /// The agent's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL the agent, as when its box dies, and reap it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn connect(&self) -> Client {
        let s = UnixStream::connect(&self.sock).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        Client { s }
    }

    /// Path of `rel` inside the file root, on the host.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// The root as the agent shows it.
    pub fn shown(&self, rel: &str) -> String {
        if rel.is_empty() {
            self.root.to_str().unwrap().to_string()
        } else {
            format!("{}/{}", self.root.to_str().unwrap(), rel)
        }
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        // SIGTERM lets the agent kill the process groups of commands still running.
        // SAFETY: signalling our own child by pid, which we have not waited for yet.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One frame as received, with its arrival time.
pub struct Received {
    pub resp: Response,
    pub payload: Vec<u8>,
    pub at: Instant,
}

pub struct Client {
    pub s: UnixStream,
}

impl Client {
    pub fn send(&mut self, req: &Request, payload: &[u8]) {
        self.s.write_all(&encode(req, payload).unwrap()).unwrap();
    }

    pub fn recv(&mut self) -> Received {
        let f = read_frame::<Response, _>(&mut self.s).expect("response frame");
        Received {
            resp: f.header,
            payload: f.payload,
            at: Instant::now(),
        }
    }

    /// Read frames up to and including the terminal one.
    pub fn recv_all(&mut self) -> Vec<Received> {
        let mut out = Vec::new();
        loop {
            let r = self.recv();
            let done = r.resp.is_terminal();
            out.push(r);
            if done {
                return out;
            }
        }
    }

    /// Send a request and collect its whole answer.
    pub fn call(&mut self, req: &Request, payload: &[u8]) -> Vec<Received> {
        self.send(req, payload);
        self.recv_all()
    }

    /// A request answered by exactly one frame.
    pub fn one(&mut self, req: &Request) -> Response {
        let mut frames = self.call(req, &[]);
        assert_eq!(frames.len(), 1, "expected one frame");
        frames.remove(0).resp
    }

    pub fn exec(&mut self, spec: ExecSpec, stdin: &[u8]) -> ExecResult {
        let frames = self.call(&Request::Exec(spec), stdin);
        ExecResult::from_frames(frames)
    }

    pub fn shell(&mut self, line: &str) -> ExecResult {
        self.exec(
            ExecSpec {
                shell: Some(line.into()),
                ..Default::default()
            },
            &[],
        )
    }
}

/// The collected answer to an exec.
#[derive(Debug, Default)]
pub struct ExecResult {
    pub pid: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub error: Option<(AgentErrorKind, String)>,
}

impl ExecResult {
    pub fn from_frames(frames: Vec<Received>) -> ExecResult {
        let mut r = ExecResult::default();
        for f in frames {
            match f.resp {
                Response::Started { pid } => r.pid = Some(pid),
                Response::Stdout => r.stdout.extend_from_slice(&f.payload),
                Response::Stderr => r.stderr.extend_from_slice(&f.payload),
                Response::Exited {
                    code,
                    signal,
                    timed_out,
                } => {
                    r.code = code;
                    r.signal = signal;
                    r.timed_out = timed_out;
                }
                Response::Error(e) => r.error = Some((e.kind, e.message)),
                other => panic!("unexpected frame {other:?}"),
            }
        }
        r
    }

    pub fn out(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn err(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// Whether a process is still alive (present and not a zombie).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(s) => {
            // The state letter follows the parenthesised command name.
            let state = s
                .rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().chars().next());
            !matches!(state, Some(Some('Z')) | Some(Some('X')))
        }
    }
}

/// Wait until `cond` holds, up to `limit`.
pub fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn exists(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok()
}
