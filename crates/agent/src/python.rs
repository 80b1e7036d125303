//! The sandbox's persistent Python interpreter.
//!
//! Started lazily on the first `Request::Python`, it keeps its globals between requests (like
//! a notebook kernel). The agent drives it with the embedded bootstrap script
//! (`python_bootstrap.py`) over a pair of pipes, one JSON line per request and per reply.
//! Requests are serialised by a mutex. A timeout sends SIGINT (the code sees
//! `KeyboardInterrupt`, the interpreter survives); if the interpreter does not answer within
//! [`KILL_AFTER`] it is killed and a fresh one is started by the next request. An
//! interpreter that died (`os._exit`, a crash) is likewise replaced on the next request.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use sandboxd_protocol::{
    AgentError, AgentErrorKind, PythonError, PythonOutcome, Response, MAX_HEADER_LEN,
};
use serde::{Deserialize, Serialize};

use crate::lines::LineReader;
use crate::process::{Command, Stdio};
use crate::reaper::{ExitWatch, Reaper};
use crate::sys;
use crate::Config;

/// The bootstrap script run inside the interpreter.
pub const BOOTSTRAP: &str = include_str!("python_bootstrap.py");

/// How long an interrupted interpreter gets to answer before it is killed.
pub const KILL_AFTER: Duration = Duration::from_secs(1);

/// Name the bootstrap is compiled under; it strips frames of this file from tracebacks.
const BOOTSTRAP_NAME: &str = "<sandboxd-bootstrap>";

fn error(kind: AgentErrorKind, message: impl Into<String>) -> AgentError {
    AgentError {
        kind,
        message: message.into(),
    }
}

#[derive(Serialize)]
struct WireRequest<'a> {
    id: u64,
    code: &'a str,
}

#[derive(Deserialize)]
struct WireReply {
    id: u64,
    #[serde(default)]
    stdout: String,
    #[serde(default)]
    stderr: String,
    #[serde(default)]
    result: Option<String>,
    #[serde(default)]
    error: Option<PythonError>,
}

struct Interpreter {
    watch: ExitWatch,
    requests: File,
    replies: LineReader,
    next_id: u64,
}

enum Waited {
    Reply(WireReply),
    /// Interrupted (timeout or host gone); `killed` when it had to be killed.
    Interrupted {
        killed: bool,
    },
    Died(String),
}

/// The persistent interpreter of this sandbox.
pub struct Python {
    state: Mutex<Option<Interpreter>>,
    /// Pid of the interpreter while a request runs, so that a reset from another connection
    /// can kill it without waiting for the request's lock.
    busy_pid: AtomicI32,
}

impl Default for Python {
    fn default() -> Self {
        Self::new()
    }
}

impl Python {
    /// No interpreter yet; one starts on the first [`Python::run`].
    pub fn new() -> Python {
        Python {
            state: Mutex::new(None),
            busy_pid: AtomicI32::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Option<Interpreter>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Run `code` and return its outcome. `host` is the connection, watched for hang-up (which
    /// interrupts the code like a timeout).
    pub fn run(
        &self,
        config: &Config,
        code: &str,
        timeout: Option<Duration>,
        host: Option<BorrowedFd<'_>>,
    ) -> Result<PythonOutcome, AgentError> {
        let mut state = self.lock();
        if state.as_ref().is_some_and(|i| i.watch.status().is_some()) {
            *state = None;
        }
        if state.is_none() {
            *state = Some(start(config)?);
        }
        let interp = state.as_mut().expect("just started");
        interp.next_id += 1;
        let id = interp.next_id;
        let mut line = serde_json::to_vec(&WireRequest { id, code }).expect("serialisable");
        line.push(b'\n');
        if let Err(e) = interp.requests.write_all(&line) {
            let msg = died_message(interp, &format!("could not send code: {e}"));
            kill(state.take());
            return Err(error(AgentErrorKind::Io, msg));
        }
        self.busy_pid.store(interp.watch.pid(), Ordering::SeqCst);
        let waited = interp.wait_reply(id, timeout.map(|t| Instant::now() + t), host);
        self.busy_pid.store(0, Ordering::SeqCst);
        match waited {
            Waited::Reply(r) => {
                let mut outcome = PythonOutcome {
                    stdout: r.stdout,
                    stderr: r.stderr,
                    result: r.result,
                    error: r.error,
                };
                fit(&mut outcome);
                Ok(outcome)
            }
            Waited::Interrupted { killed } => {
                let what = match timeout {
                    Some(t) => format!("python code ran past its {} ms timeout", t.as_millis()),
                    None => "python code was interrupted".to_string(),
                };
                let msg = if killed {
                    kill(state.take());
                    format!("{what}; it ignored KeyboardInterrupt, so the interpreter was killed and its state is lost")
                } else {
                    format!("{what} and was interrupted (KeyboardInterrupt); the interpreter and its state are kept")
                };
                Err(error(AgentErrorKind::Timeout, msg))
            }
            Waited::Died(msg) => {
                kill(state.take());
                Err(error(AgentErrorKind::Io, msg))
            }
        }
    }

    /// Kill the interpreter, forgetting its state. The next request starts a fresh one.
    pub fn reset(&self) {
        let busy = self.busy_pid.load(Ordering::SeqCst);
        if busy != 0 {
            // A request holds the lock for as long as its code runs: kill first, so that it
            // ends (reporting the interpreter's death) and releases the lock. The reaper
            // refuses if that pid was reaped meanwhile, so a recycled pid is never hit.
            Reaper::global().signal_registered(busy, libc::SIGKILL);
        }
        let mut state = self.lock();
        kill(state.take());
    }

    /// Pid of the running interpreter, if any (for diagnostics and tests).
    pub fn pid(&self) -> Option<i32> {
        self.state
            .try_lock()
            .ok()
            .and_then(|s| s.as_ref().map(|i| i.watch.pid()))
    }
}

fn kill(interp: Option<Interpreter>) {
    if let Some(i) = interp {
        i.watch.signal_group(libc::SIGKILL);
        // Wait so that a reset really means "gone" when the host gets its answer.
        i.watch.wait_timeout(Duration::from_secs(2));
    }
}

fn died_message(interp: &Interpreter, what: &str) -> String {
    let how = match interp.watch.wait_timeout(Duration::from_millis(200)) {
        Some(s) => match (s.code(), std::os::unix::process::ExitStatusExt::signal(&s)) {
            (Some(c), _) => format!("exited with code {c}"),
            (_, Some(sig)) => format!("was killed by signal {sig}"),
            _ => "ended".to_string(),
        },
        None => "stopped responding".to_string(),
    };
    format!("{what}: the python interpreter {how}; its state is lost and the next request starts a fresh one")
}

fn start(config: &Config) -> Result<Interpreter, AgentError> {
    // A tiny stub reads the bootstrap from stdin by length, so that the command line stays
    // short (it shows in `ps`) and the rest of stdin carries requests.
    let stub = format!(
        "import os\nn={}\nb=b''\nwhile len(b)<n:\n c=os.read(0,n-len(b))\n if not c: raise SystemExit(1)\n b+=c\nexec(compile(b,{BOOTSTRAP_NAME:?},'exec'),{{'__name__':'sandboxd_bootstrap'}})\n",
        BOOTSTRAP.len()
    );
    let mut cmd = Command::new(&config.python);
    cmd.arg("-u")
        .arg("-c")
        .arg(stub)
        .envs(config.env.iter().map(|(k, v)| (k, v)))
        .current_dir(config.default_cwd())
        .stdin(Stdio::Piped)
        .stdout(Stdio::Piped)
        .stderr(Stdio::Inherit);
    let (child, watch) = Reaper::global().spawn(&cmd, false).map_err(|e| {
        error(
            AgentErrorKind::SpawnFailed,
            format!(
                "cannot start the python interpreter ({}): {e}",
                config.python.to_string_lossy()
            ),
        )
    })?;
    let mut requests = File::from(child.stdin.expect("piped"));
    let replies = child.stdout.expect("piped");
    let io_err = |e: io::Error| {
        error(
            AgentErrorKind::SpawnFailed,
            format!("python interpreter: {e}"),
        )
    };
    let replies = LineReader::new(replies, usize::MAX).map_err(io_err)?;
    // The bootstrap (a few KiB) fits the pipe buffer, so this does not block even if python
    // is slow to start; if python died at once, EPIPE says so.
    requests.write_all(BOOTSTRAP.as_bytes()).map_err(|e| {
        let what = watch
            .wait_timeout(Duration::from_millis(500))
            .map(|s| format!(" (it exited: {s})"))
            .unwrap_or_default();
        error(
            AgentErrorKind::SpawnFailed,
            format!("cannot start the python interpreter: {e}{what}"),
        )
    })?;
    Ok(Interpreter {
        watch,
        requests,
        replies,
        next_id: 0,
    })
}

impl Interpreter {
    fn wait_reply(
        &mut self,
        id: u64,
        deadline: Option<Instant>,
        host: Option<BorrowedFd<'_>>,
    ) -> Waited {
        // Once interrupted: when to give up and kill.
        let mut kill_at: Option<Instant> = None;
        let mut open = true;
        loop {
            while let Some(line) = self.replies.take_line() {
                match serde_json::from_slice::<WireReply>(&line) {
                    // Replies to earlier, abandoned requests are skipped.
                    Ok(r) if r.id == id => {
                        return if kill_at.is_some() {
                            Waited::Interrupted { killed: false }
                        } else {
                            Waited::Reply(r)
                        };
                    }
                    Ok(_) => {}
                    Err(e) => {
                        return Waited::Died(format!(
                            "unreadable reply from the python interpreter ({e})"
                        ))
                    }
                }
            }
            if !open || self.watch.status().is_some() {
                // Pick up a reply written just before the end.
                if open && !self.replies.drain() {
                    open = false;
                }
                if self.replies.has_line() {
                    continue;
                }
                return Waited::Died(died_message(self, "python code did not finish"));
            }
            let now = Instant::now();
            if let Some(k) = kill_at {
                if now >= k {
                    self.watch.signal_group(libc::SIGKILL);
                    self.watch.wait_timeout(Duration::from_secs(2));
                    return Waited::Interrupted { killed: true };
                }
            } else if deadline.is_some_and(|d| now >= d) {
                self.watch.signal_group(libc::SIGINT);
                kill_at = Some(now + KILL_AFTER);
            }
            let wake = kill_at.or(deadline);
            let mut fds = [
                sys::pollfd(self.replies.raw_fd(), libc::POLLIN),
                sys::pollfd(self.watch.exit_fd().as_raw_fd(), libc::POLLIN),
                sys::pollfd(
                    match (host, kill_at) {
                        (Some(h), None) => h.as_raw_fd(),
                        _ => -1,
                    },
                    libc::POLLRDHUP,
                ),
            ];
            let _ = sys::poll(&mut fds, wake.map(|w| w.saturating_duration_since(now)));
            if fds[2].revents != 0 && kill_at.is_none() {
                // The host is gone: nobody waits for this result, stop the code.
                self.watch.signal_group(libc::SIGINT);
                kill_at = Some(Instant::now() + KILL_AFTER);
            }
            if fds[0].revents != 0 && !self.replies.drain() {
                open = false;
            }
        }
    }
}

/// Shrink an outcome until its response header fits a frame: the bootstrap caps each field,
/// but escaping can still grow them past [`MAX_HEADER_LEN`].
fn fit(outcome: &mut PythonOutcome) {
    let limit = MAX_HEADER_LEN as usize - 4096;
    let size = |o: &PythonOutcome| {
        serde_json::to_vec(&Response::Python(o.clone()))
            .map(|v| v.len())
            .unwrap_or(usize::MAX)
    };
    let mut guard = 0;
    while size(outcome) > limit && guard < 64 {
        guard += 1;
        let mut fields: Vec<&mut String> = vec![&mut outcome.stdout, &mut outcome.stderr];
        if let Some(r) = outcome.result.as_mut() {
            fields.push(r);
        }
        if let Some(e) = outcome.error.as_mut() {
            fields.push(&mut e.evalue);
            fields.extend(e.traceback.iter_mut());
        }
        let Some(longest) = fields.into_iter().max_by_key(|s| s.len()) else {
            break;
        };
        let mut cut = longest.len() / 2;
        while !longest.is_char_boundary(cut) {
            cut -= 1;
        }
        longest.truncate(cut);
        longest.push_str("\n[sandboxd: truncated]");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_outcomes_are_truncated_to_fit() {
        let mut o = PythonOutcome {
            stdout: "\u{1}".repeat(400_000),
            stderr: "x".repeat(300_000),
            result: Some("y".repeat(300_000)),
            error: None,
        };
        fit(&mut o);
        let bytes = serde_json::to_vec(&Response::Python(o)).unwrap();
        assert!(bytes.len() <= MAX_HEADER_LEN as usize);
    }
}
