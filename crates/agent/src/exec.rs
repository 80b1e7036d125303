//! Running commands: `Request::Exec` and `Request::Signal`.
//!
//! One connection thread drives one command with a single `poll` loop over the command's
//! stdout and stderr pipes, its stdin pipe (fed from the request payload without ever
//! blocking, so a command that does not read its input cannot deadlock the agent), the
//! command's pidfd (readable at its exit) and the connection itself (to notice the host hanging
//! up).
//! Output is forwarded as soon as it is read.
//!
//! The host hanging up is noticed through `POLLRDHUP` on the socket, so a host that
//! half-closes its writing side (`shutdown(SHUT_WR)`) while a command runs also kills it. Writes
//! to the host block: a host that stops reading output stalls the command (the pipes fill up),
//! and its timeout is enforced once the write completes.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use sandboxd_protocol::{AgentError, AgentErrorKind, ExecSpec, Response};

use crate::conn::Conn;
use crate::process::{Command, Stdio};
use crate::reaper::{Reaper, SignalError};
use crate::sys;
use crate::Config;

/// How long output is still collected after the command itself exited, for descendants that
/// inherited its pipes (`cmd &`) and keep them open. After that the agent reports the exit.
pub const EXIT_GRACE: Duration = Duration::from_millis(100);

/// Largest output piece per frame.
const READ_BUF: usize = 64 * 1024;

fn invalid(message: impl Into<String>) -> AgentError {
    AgentError {
        kind: AgentErrorKind::InvalidRequest,
        message: message.into(),
    }
}

fn spawn_failed(message: impl Into<String>) -> AgentError {
    AgentError {
        kind: AgentErrorKind::SpawnFailed,
        message: message.into(),
    }
}

/// Build the command for `spec`, checking the request.
pub(crate) fn build(config: &Config, spec: &ExecSpec) -> Result<Command, AgentError> {
    let mut cmd = match (&spec.argv, &spec.shell) {
        (Some(argv), None) => {
            let Some((program, args)) = argv.split_first() else {
                return Err(invalid("exec: argv is empty"));
            };
            let path = spec
                .env
                .get("PATH")
                .map(|p| p.as_ref())
                .or_else(|| config.env_var("PATH"));
            let mut cmd = match resolve_in_path(program, path) {
                Some(found) => {
                    let mut c = Command::new(found);
                    c.arg0(program);
                    c
                }
                None => Command::new(program),
            };
            cmd.args(args);
            cmd
        }
        (None, Some(line)) => {
            let mut cmd = Command::new(config.shell());
            cmd.arg("-c").arg(line);
            cmd
        }
        _ => return Err(invalid("exec: exactly one of argv and shell must be set")),
    };
    for (k, v) in &spec.env {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            return Err(invalid(format!("exec: invalid environment variable {k:?}")));
        }
    }
    if spec.argv.iter().flatten().any(|a| a.contains('\0'))
        || spec.shell.as_deref().is_some_and(|s| s.contains('\0'))
    {
        return Err(invalid("exec: arguments must not contain NUL bytes"));
    }
    let cwd = match &spec.cwd {
        Some(c) => {
            let p = Path::new(c);
            let cwd = if p.is_absolute() {
                p.to_path_buf()
            } else {
                config.default_cwd().join(p)
            };
            if !cwd.is_dir() {
                return Err(spawn_failed(format!(
                    "exec: working directory {} does not exist or is not a directory",
                    cwd.display()
                )));
            }
            cwd
        }
        // Already looked at: the files root when it is a directory, else `/`.
        None => config.default_cwd(),
    };
    cmd.envs(config.env.iter().map(|(k, v)| (k, v)))
        .envs(&spec.env)
        .current_dir(cwd);
    Ok(cmd)
}

/// The executable `program` names in `path`, when it has no slash. The child would search
/// `PATH` itself, but each miss there is a failed `execve` while the spawning thread waits,
/// which costs more than a `stat(2)` here.
fn resolve_in_path(program: &str, path: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    if program.is_empty() || program.contains('/') {
        return None;
    }
    path?
        .as_bytes()
        .split(|b| *b == b':')
        .filter(|dir| !dir.is_empty())
        .map(|dir| Path::new(std::ffi::OsStr::from_bytes(dir)).join(program))
        .find(|candidate| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

fn program_name(spec: &ExecSpec, config: &Config) -> PathBuf {
    match (&spec.argv, &spec.shell) {
        (Some(argv), _) => PathBuf::from(argv.first().cloned().unwrap_or_default()),
        _ => PathBuf::from(config.shell()),
    }
}

/// Serve one `Exec` request. `Err` means the connection is unusable (the host went away; the
/// command's process group has been killed).
pub fn run(config: &Config, conn: &mut Conn, spec: ExecSpec, stdin: Vec<u8>) -> io::Result<()> {
    let mut cmd = match build(config, &spec) {
        Ok(c) => c,
        Err(e) => return conn.send_error(e),
    };
    cmd.stdin(if stdin.is_empty() {
        Stdio::Null
    } else {
        Stdio::Piped
    })
    .stdout(Stdio::Piped)
    .stderr(Stdio::Piped);
    let (child, watch) = match Reaper::global().spawn(&cmd, true) {
        Ok(x) => x,
        Err(e) => {
            return conn.send_error(spawn_failed(format!(
                "exec: cannot run {}: {e}",
                program_name(&spec, config).display()
            )))
        }
    };
    let pid = watch.pid();
    let stdout: Option<OwnedFd> = child.stdout;
    let stderr: Option<OwnedFd> = child.stderr;
    let stdin_fd: Option<OwnedFd> = child.stdin;
    for fd in stdout.iter().chain(&stderr).chain(&stdin_fd) {
        sys::set_nonblocking(fd.as_fd())?;
    }
    if !spec.quiet {
        if let Err(e) = conn.send(&Response::Started { pid }, &[]) {
            watch.signal_group(libc::SIGKILL);
            return Err(e);
        }
    }

    let mut out = stdout.map(File::from);
    let mut err = stderr.map(File::from);
    let mut input = stdin_fd.map(|fd| (fd, 0usize));
    let deadline = spec
        .timeout_ms
        .map(|ms| Instant::now() + Duration::from_millis(ms));
    let mut timed_out = false;
    let mut status: Option<ExitStatus> = None;
    let mut grace_end: Option<Instant> = None;
    let mut buf = vec![0u8; READ_BUF];

    // Any failure to reach the host ends the command: nobody is left to see its output.
    let abort = |watch: &crate::reaper::ExitWatch, e: io::Error| -> io::Result<()> {
        watch.signal_group(libc::SIGKILL);
        Err(e)
    };

    loop {
        let now = Instant::now();
        if status.is_some() && out.is_none() && err.is_none() {
            break;
        }
        if grace_end.is_some_and(|g| now >= g) {
            break;
        }
        if status.is_none() && !timed_out && deadline.is_some_and(|d| now >= d) {
            timed_out = true;
            watch.signal_group(libc::SIGKILL);
        }
        let mut wait: Option<Duration> = None;
        if status.is_none() && !timed_out {
            if let Some(d) = deadline {
                wait = Some(d.saturating_duration_since(now));
            }
        }
        if let Some(g) = grace_end {
            let left = g.saturating_duration_since(now);
            wait = Some(wait.map_or(left, |w| w.min(left)));
        }

        const OUT: usize = 0;
        const ERR: usize = 1;
        const IN: usize = 2;
        const EXIT: usize = 3;
        const HOST: usize = 4;
        let mut fds = [
            sys::pollfd(out.as_ref().map_or(-1, |f| f.as_raw_fd()), libc::POLLIN),
            sys::pollfd(err.as_ref().map_or(-1, |f| f.as_raw_fd()), libc::POLLIN),
            sys::pollfd(
                input.as_ref().map_or(-1, |(f, _)| f.as_raw_fd()),
                libc::POLLOUT,
            ),
            sys::pollfd(
                if status.is_none() {
                    watch.exit_fd().as_raw_fd()
                } else {
                    -1
                },
                libc::POLLIN,
            ),
            // POLLRDHUP only: a pipelined next request (POLLIN) must not spin this loop.
            sys::pollfd(conn.fd().as_raw_fd(), libc::POLLRDHUP),
        ];
        sys::poll(&mut fds, wait)?;
        let ready = |i: usize| fds[i].revents != 0;

        if ready(HOST) {
            return abort(&watch, io::ErrorKind::ConnectionAborted.into());
        }
        for (idx, pipe, is_out) in [(OUT, &mut out, true), (ERR, &mut err, false)] {
            if !ready(idx) {
                continue;
            }
            let Some(f) = pipe.as_ref() else { continue };
            match sys::read(f.as_fd(), &mut buf) {
                Ok(0) => *pipe = None,
                Ok(n) => {
                    let frame = if is_out {
                        Response::Stdout
                    } else {
                        Response::Stderr
                    };
                    if let Err(e) = conn.send(&frame, &buf[..n]) {
                        return abort(&watch, e);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => *pipe = None,
            }
        }
        if ready(IN) {
            if let Some((fd, off)) = input.as_mut() {
                match sys::write(fd.as_fd(), &stdin[*off..]) {
                    Ok(n) => {
                        *off += n;
                        if *off >= stdin.len() {
                            input = None;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    // EPIPE: the command closed its stdin; the rest is not wanted.
                    Err(_) => input = None,
                }
            }
        }
        if ready(EXIT) && status.is_none() {
            if let Some(s) = watch.status() {
                status = Some(s);
                grace_end = Some(Instant::now() + EXIT_GRACE);
                // Nobody will read the rest of stdin now.
                input = None;
            }
        }
    }

    let status = status.expect("loop ends only after the exit");
    conn.send(
        &Response::Exited {
            code: status.code(),
            signal: status.signal(),
            timed_out,
        },
        &[],
    )
}

/// Serve one `Signal` request: signal the process group of a running command.
pub fn signal(pid: i32, sig: i32) -> Response {
    if pid <= 0 || !(0..=64).contains(&sig) {
        return Response::Error(invalid(format!(
            "signal: invalid pid {pid} or signal {sig}"
        )));
    }
    match Reaper::global().signal_group(pid, sig) {
        Ok(()) => Response::Ok,
        Err(SignalError::NotFound) => Response::Error(AgentError {
            kind: AgentErrorKind::NotFound,
            message: format!("signal: no running command with pid {pid}"),
        }),
        Err(SignalError::Os(e)) => Response::Error(AgentError {
            kind: AgentErrorKind::Io,
            message: format!("signal {sig} to process group {pid}: {e}"),
        }),
    }
}
