//! Handshake, framing and command execution against the real agent binary.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use common::{alive, eventually, ExecResult, TestAgent};
use sandboxd_protocol::{
    encode, read_frame, AgentErrorKind, ExecSpec, FrameError, Request, Response, PROTOCOL_VERSION,
};

#[test]
fn hello_on_every_connection() {
    let agent = TestAgent::start();
    for _ in 0..2 {
        let mut c = agent.connect();
        let resp = c.one(&Request::Hello {
            version: PROTOCOL_VERSION,
        });
        assert_eq!(
            resp,
            Response::Hello {
                version: PROTOCOL_VERSION,
                agent: env!("CARGO_PKG_VERSION").to_string(),
            }
        );
        // The connection carries further exchanges.
        assert!(matches!(
            c.one(&Request::Hello { version: (1, 0) }),
            Response::Hello { .. }
        ));
    }
}

#[test]
fn malformed_frame_is_refused_and_closed_unknown_op_is_not() {
    let agent = TestAgent::start();
    let mut c = agent.connect();
    // A well-formed frame with an op from the future: answered, connection kept.
    let bytes = encode(&serde_json::json!({"op": "teleport", "to": "mars"}), b"").unwrap();
    c.s.write_all(&bytes).unwrap();
    match c.recv().resp {
        Response::Error(e) => assert_eq!(e.kind, AgentErrorKind::Unsupported),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        c.one(&Request::Hello { version: (1, 0) }),
        Response::Hello { .. }
    ));
    // A known op with bad arguments, then garbage: InvalidRequest and the connection closes.
    let bytes = encode(&serde_json::json!({"op": "stat", "path": 5}), b"").unwrap();
    c.s.write_all(&bytes).unwrap();
    match c.recv().resp {
        Response::Error(e) => assert_eq!(e.kind, AgentErrorKind::InvalidRequest, "{}", e.message),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        read_frame::<Response, _>(&mut c.s),
        Err(FrameError::Closed)
    ));

    let mut c = agent.connect();
    let mut raw = Vec::new();
    raw.extend_from_slice(&5u32.to_be_bytes());
    raw.extend_from_slice(&0u32.to_be_bytes());
    raw.extend_from_slice(b"{nope");
    c.s.write_all(&raw).unwrap();
    match c.recv().resp {
        Response::Error(e) => assert_eq!(e.kind, AgentErrorKind::InvalidRequest),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        read_frame::<Response, _>(&mut c.s),
        Err(FrameError::Closed)
    ));
}

#[test]
fn exec_argv_exit_codes_and_output() {
    let agent = TestAgent::start();
    let mut c = agent.connect();
    let r = c.exec(
        ExecSpec {
            argv: Some(vec!["echo".into(), "hello".into(), "world".into()]),
            ..Default::default()
        },
        &[],
    );
    assert!(r.pid.is_some_and(|p| p > 0));
    assert_eq!(r.out(), "hello world\n");
    assert_eq!((r.code, r.signal, r.timed_out), (Some(0), None, false));

    let r = c.exec(
        ExecSpec {
            argv: Some(vec!["sh".into(), "-c".into(), "exit 7".into()]),
            ..Default::default()
        },
        &[],
    );
    assert_eq!(r.code, Some(7));

    let r = c.shell("kill -TERM $$");
    assert_eq!((r.code, r.signal), (None, Some(libc::SIGTERM)));
}

/// A quiet exec sends no `Started`, and everything else as usual.
#[test]
fn exec_quiet_skips_started() {
    let agent = TestAgent::start();
    let mut c = agent.connect();
    let r = c.exec(
        ExecSpec {
            shell: Some("echo out; echo err >&2; exit 3".into()),
            quiet: true,
            ..Default::default()
        },
        &[],
    );
    assert_eq!(r.pid, None);
    assert_eq!(r.out(), "out\n");
    assert_eq!(r.stderr, b"err\n");
    assert_eq!(r.code, Some(3));
}

#[test]
fn exec_shell_stdin_env_cwd_stderr() {
    let agent = TestAgent::start_with(&[("SANDBOXD_SECRET", "x"), ("BASEVAR", "base")]);
    std::fs::create_dir(agent.path("sub")).unwrap();
    let mut c = agent.connect();
    let mut env = BTreeMap::new();
    env.insert("FOO".to_string(), "bar baz".to_string());
    let r = c.exec(
        ExecSpec {
            shell: Some(
                "tr a-z A-Z; echo \"$FOO\"; echo \"$BASEVAR\"; pwd; echo oops >&2; exit 3".into(),
            ),
            env,
            cwd: Some(agent.path("sub").to_str().unwrap().into()),
            ..Default::default()
        },
        b"some input\n",
    );
    assert_eq!(
        r.out(),
        format!(
            "SOME INPUT\nbar baz\nbase\n{}\n",
            agent.path("sub").display()
        )
    );
    assert_eq!(r.err(), "oops\n");
    assert_eq!(r.code, Some(3));

    // The agent's own variables never reach commands; the default cwd is the files root.
    let r = c.shell("env; pwd");
    assert!(!r.out().contains("SANDBOXD_"), "{}", r.out());
    assert!(r.out().contains("BASEVAR=base"));
    assert!(r.out().ends_with(&format!("{}\n", agent.root.display())));

    // A relative cwd is taken from the files root.
    let r = c.exec(
        ExecSpec {
            argv: Some(vec!["pwd".into()]),
            cwd: Some("sub".into()),
            ..Default::default()
        },
        &[],
    );
    assert_eq!(r.out(), format!("{}\n", agent.path("sub").display()));
}

#[test]
fn exec_large_stdin_and_output_do_not_deadlock() {
    let agent = TestAgent::start();
    let mut c = agent.connect();
    let input = vec![b'z'; 3 << 20];
    // `cat` writes while we still write its stdin: both directions must flow together.
    let r = c.exec(
        ExecSpec {
            argv: Some(vec!["cat".into()]),
            ..Default::default()
        },
        &input,
    );
    assert_eq!(r.code, Some(0));
    assert_eq!(r.stdout.len(), input.len());
    assert!(r.stdout == input);

    // A command that never reads its stdin still finishes.
    let r = c.exec(
        ExecSpec {
            shell: Some("echo ignored-input".into()),
            ..Default::default()
        },
        &input,
    );
    assert_eq!(r.out(), "ignored-input\n");
    assert_eq!(r.code, Some(0));
}

#[test]
fn exec_streams_output_as_it_arrives() {
    let agent = TestAgent::start();
    let mut c = agent.connect();
    let sleep = Duration::from_secs(1);
    c.send(
        &Request::Exec(ExecSpec {
            shell: Some("echo first; sleep 1; echo second".into()),
            ..Default::default()
        }),
        &[],
    );
    let frames = c.recv_all();
    let first = frames
        .iter()
        .position(|f| f.resp == Response::Stdout && f.payload.starts_with(b"first"))
        .expect("a stdout frame starting with `first`");
    let exited = frames
        .iter()
        .position(|f| matches!(f.resp, Response::Exited { .. }))
        .expect("exited");
    assert!(first < exited);
    let all: Vec<u8> = frames
        .iter()
        .filter(|f| f.resp == Response::Stdout)
        .flat_map(|f| f.payload.clone())
        .collect();
    assert_eq!(all, b"first\nsecond\n");
    // Without streaming both lines would arrive together at the end. The command itself
    // sleeps 1 s between them, so a streamed `first` reaches us at least most of that second
    // before the exit report, however slow the machine is.
    let gap = frames[exited].at - frames[first].at;
    assert!(
        gap >= sleep / 2,
        "`first` arrived only {gap:?} before the exit: output was buffered"
    );
}

#[test]
fn exec_timeout_kills_the_process_group() {
    let agent = TestAgent::start();
    let mut c = agent.connect();
    let started = Instant::now();
    let r = c.exec(
        ExecSpec {
            shell: Some("sleep 60 & echo $!; sleep 60".into()),
            timeout_ms: Some(300),
            ..Default::default()
        },
        &[],
    );
    assert!(r.timed_out);
    assert_eq!(r.signal, Some(libc::SIGKILL));
    assert!(started.elapsed() < Duration::from_secs(30));
    let bg: i32 = r.out().trim().parse().unwrap();
    assert!(
        eventually(Duration::from_secs(10), || !alive(bg)),
        "background member of the group survived the timeout"
    );
}

#[test]
fn closing_the_connection_kills_the_command() {
    let agent = TestAgent::start();
    let mut c = agent.connect();
    c.send(
        &Request::Exec(ExecSpec {
            shell: Some("sleep 60 & echo $!; wait".into()),
            ..Default::default()
        }),
        &[],
    );
    let pid = match c.recv().resp {
        Response::Started { pid } => pid,
        other => panic!("{other:?}"),
    };
    let out = c.recv();
    assert_eq!(out.resp, Response::Stdout);
    let bg: i32 = String::from_utf8(out.payload)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(alive(pid) && alive(bg));
    drop(c);
    assert!(
        eventually(Duration::from_secs(10), || !alive(pid) && !alive(bg)),
        "command outlived its connection"
    );
}

#[test]
fn signal_from_another_connection() {
    let agent = TestAgent::start();
    let mut a = agent.connect();
    a.send(
        &Request::Exec(ExecSpec {
            argv: Some(vec!["sleep".into(), "60".into()]),
            ..Default::default()
        }),
        &[],
    );
    let pid = match a.recv().resp {
        Response::Started { pid } => pid,
        other => panic!("{other:?}"),
    };
    let mut b = agent.connect();
    assert_eq!(
        b.one(&Request::Signal {
            pid,
            signal: libc::SIGTERM
        }),
        Response::Ok
    );
    let r = ExecResult::from_frames(a.recv_all());
    assert_eq!(
        (r.code, r.signal, r.timed_out),
        (None, Some(libc::SIGTERM), false)
    );

    // Pids the agent did not start (or that finished) are not signalled.
    for pid in [pid, 1, std::process::id() as i32] {
        match b.one(&Request::Signal { pid, signal: 0 }) {
            Response::Error(e) => assert_eq!(e.kind, AgentErrorKind::NotFound),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn spawn_failures_and_invalid_specs() {
    let agent = TestAgent::start();
    let mut c = agent.connect();
    let r = c.exec(
        ExecSpec {
            argv: Some(vec!["/no/such/program".into()]),
            ..Default::default()
        },
        &[],
    );
    let (kind, msg) = r.error.expect("error");
    assert_eq!(kind, AgentErrorKind::SpawnFailed);
    assert!(msg.contains("/no/such/program"), "{msg}");
    assert!(r.pid.is_none());

    let r = c.exec(
        ExecSpec {
            argv: Some(vec!["no-such-program-in-path".into()]),
            ..Default::default()
        },
        &[],
    );
    assert_eq!(r.error.unwrap().0, AgentErrorKind::SpawnFailed);

    let r = c.exec(
        ExecSpec {
            argv: Some(vec!["true".into()]),
            cwd: Some("/no/such/dir".into()),
            ..Default::default()
        },
        &[],
    );
    assert_eq!(r.error.unwrap().0, AgentErrorKind::SpawnFailed);
    // Relative, from the files root; and a file is no working directory either.
    std::fs::write(agent.path("a-file"), "").unwrap();
    for cwd in ["no-such-dir", "a-file"] {
        let r = c.exec(
            ExecSpec {
                argv: Some(vec!["true".into()]),
                cwd: Some(cwd.into()),
                ..Default::default()
            },
            &[],
        );
        let (kind, msg) = r.error.expect("error");
        assert_eq!(kind, AgentErrorKind::SpawnFailed, "{cwd}");
        assert!(msg.contains("working directory"), "{msg}");
    }

    for spec in [
        ExecSpec::default(),
        ExecSpec {
            argv: Some(vec!["true".into()]),
            shell: Some("true".into()),
            ..Default::default()
        },
        ExecSpec {
            argv: Some(vec![]),
            ..Default::default()
        },
    ] {
        let r = c.exec(spec, &[]);
        assert_eq!(r.error.unwrap().0, AgentErrorKind::InvalidRequest);
    }
    // The connection is still fine.
    assert_eq!(c.shell("echo ok").out(), "ok\n");
}

#[test]
fn background_child_holding_pipes_does_not_block_exit() {
    let agent = TestAgent::start();
    let mut c = agent.connect();
    let started = Instant::now();
    let r = c.shell("sleep 5 & echo done");
    assert_eq!(r.out(), "done\n");
    assert_eq!(r.code, Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "exit waited for the background child: {:?}",
        started.elapsed()
    );
}

#[test]
fn many_quick_commands_in_parallel() {
    let agent = TestAgent::start();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let mut c = agent.connect();
            std::thread::spawn(move || {
                for i in 0..15 {
                    let r = c.shell(&format!("echo {t}-{i}; exit {}", i % 5));
                    assert_eq!(r.out(), format!("{t}-{i}\n"));
                    assert_eq!(r.code, Some(i % 5));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn sigterm_stops_the_agent_and_its_commands() {
    let agent = TestAgent::start();
    let mut c = agent.connect();
    c.send(
        &Request::Exec(ExecSpec {
            argv: Some(vec!["sleep".into(), "60".into()]),
            ..Default::default()
        }),
        &[],
    );
    let pid = match c.recv().resp {
        Response::Started { pid } => pid,
        other => panic!("{other:?}"),
    };
    drop(agent); // sends SIGTERM and waits for the agent
    assert!(eventually(Duration::from_secs(10), || !alive(pid)));
}

#[test]
fn commands_get_high_oom_score_and_clean_signal_state() {
    let agent = TestAgent::start();
    let mut c = agent.connect();
    let r = c.shell("cat /proc/self/oom_score_adj; grep -E '^Sig(Blk|Ign)' /proc/self/status");
    let out = r.out();
    assert!(out.starts_with("1000\n"), "{out}");
    // The agent blocks SIGTERM/SIGINT/SIGHUP and ignores SIGPIPE; none of it is inherited.
    // (Only the classic signals are checked: glibc reserves 32 and 33 and will not reset them,
    // so an ignored signal 32 inherited from the test's own environment would show.)
    let mask = |name: &str| {
        let line = out.lines().find(|l| l.starts_with(name)).unwrap();
        u64::from_str_radix(line.split('\t').nth(1).unwrap(), 16).unwrap()
    };
    assert_eq!(mask("SigBlk:") & 0x7fff_ffff, 0, "{out}");
    assert_eq!(mask("SigIgn:") & 0x7fff_ffff, 0, "{out}");
    // Own process group, led by the command (the agent kills commands by group), in the
    // agent's session: no session of its own.
    let r = c.exec(
        ExecSpec {
            argv: Some(vec!["cat".into(), "/proc/self/stat".into()]),
            ..Default::default()
        },
        &[],
    );
    let stat = r.out();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let pid = r.pid.unwrap().to_string();
    assert_eq!(fields[2], pid.as_str(), "pgid of {stat}");
    // The agent left whatever session it was started in and leads its own.
    assert_eq!(fields[3], agent.pid().to_string(), "sid of {stat}");
    // tty_nr: no controlling terminal.
    assert_eq!(fields[4], "0", "tty of {stat}");
}

/// An agent that got a controlling terminal it cannot leave (it leads the session the
/// terminal belongs to, as when the host's process tree runs in one) never lends it to a
/// command: each command then gets a session of its own, without a terminal.
#[test]
fn commands_never_get_the_agents_terminal() {
    // SAFETY: posix_openpt/grantpt/unlockpt/ptsname on the descriptor just opened; ptsname's
    // static buffer is copied out at once (no other thread of this test uses it meanwhile).
    let (_leader, follower) = unsafe {
        let fd = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        assert!(fd >= 0, "posix_openpt: {}", std::io::Error::last_os_error());
        assert_eq!(libc::grantpt(fd), 0);
        assert_eq!(libc::unlockpt(fd), 0);
        let name = std::ffi::CStr::from_ptr(libc::ptsname(fd)).to_owned();
        (
            <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd),
            name,
        )
    };
    let agent = TestAgent::start_in_terminal(&follower);
    let agent_stat = std::fs::read_to_string(format!("/proc/{}/stat", agent.pid())).unwrap();
    let agent_tty = agent_stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .nth(4)
        .unwrap();
    assert_ne!(agent_tty, "0", "the agent has the terminal: {agent_stat}");
    let mut c = agent.connect();
    let r = c.shell("cat /proc/self/stat; echo escaped > /dev/tty && echo opened");
    let out = r.out();
    let fields: Vec<&str> = out.rsplit_once(')').unwrap().1.split_whitespace().collect();
    let pid = r.pid.unwrap().to_string();
    assert_eq!(
        (fields[2], fields[3]),
        (pid.as_str(), pid.as_str()),
        "{out}"
    );
    assert_eq!(fields[4], "0", "tty of {out}");
    assert!(!out.contains("opened"), "{out}");
}

#[test]
fn inherited_listening_descriptor() {
    use std::os::fd::AsRawFd;
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::os::unix::process::CommandExt;

    let dir = std::env::temp_dir().join(format!("sbx-agent-fd-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("host.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let fd = listener.as_raw_fd();
    let bin = std::env::var_os("AGENT_TEST_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_sandboxd-agent").into());
    let mut cmd = std::process::Command::new(bin);
    cmd.env("SANDBOXD_LISTEN_FD", "3")
        .env("SANDBOXD_FILES_ROOT", &dir);
    // SAFETY: dup2 and fcntl are async-signal-safe; they place the listener at fd 3 (without
    // CLOEXEC) in the child, as the backend's init does.
    unsafe {
        cmd.pre_exec(move || {
            let r = if fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, 3)
            };
            if r < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    drop(listener);
    let s = UnixStream::connect(&sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut c = common::Client { s };
    assert!(matches!(
        c.one(&Request::Hello { version: (1, 0) }),
        Response::Hello { .. }
    ));
    // The listener is close-on-exec in the agent: commands do not inherit it.
    let r = c.shell("if [ -e /proc/$$/fd/3 ]; then echo leaked; else echo clean; fi; env | grep -c SANDBOXD_ || true");
    assert_eq!(r.out(), "clean\n0\n");
    // SAFETY: signalling our own, not yet waited-for child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
