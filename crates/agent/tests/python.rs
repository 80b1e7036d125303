//! The persistent Python interpreter against the real agent binary (needs `python3`).

mod common;

use std::time::{Duration, Instant};

use common::{Client, TestAgent};
use sandboxd_protocol::{AgentError, AgentErrorKind, PythonOutcome, Request, Response};

fn py(c: &mut Client, code: &str) -> Result<PythonOutcome, AgentError> {
    py_timeout(c, code, None)
}

fn py_timeout(
    c: &mut Client,
    code: &str,
    timeout_ms: Option<u64>,
) -> Result<PythonOutcome, AgentError> {
    match c.one(&Request::Python {
        code: code.into(),
        timeout_ms,
    }) {
        Response::Python(o) => Ok(o),
        Response::Error(e) => Err(e),
        other => panic!("{other:?}"),
    }
}

#[test]
fn state_results_and_output() {
    let agent = TestAgent::start();
    let mut c = agent.connect();
    let o = py(&mut c, "x = 40\ndef f(y):\n    return x + y\n").unwrap();
    assert_eq!(o, PythonOutcome::default());
    // State survives, also across connections; the last expression is the result.
    let mut c2 = agent.connect();
    let o = py(&mut c2, "f(2)").unwrap();
    assert_eq!(o.result.as_deref(), Some("42"));
    let o = py(
        &mut c,
        "print('out'); import sys; print('err', file=sys.stderr)\n'a' * 3",
    )
    .unwrap();
    assert_eq!(o.stdout, "out\n");
    assert_eq!(o.stderr, "err\n");
    assert_eq!(o.result.as_deref(), Some("'aaa'"));
    assert!(o.error.is_none());
    // A final expression that is None, or a final statement, gives no result.
    assert_eq!(py(&mut c, "None").unwrap().result, None);
    assert_eq!(py(&mut c, "z = 1").unwrap().result, None);
    // It really runs as __main__ in the files root, and non-ASCII survives the trip.
    let o = py(&mut c, "import os\n(__name__, os.getcwd(), 'héllo ✓')").unwrap();
    assert_eq!(
        o.result.unwrap(),
        format!("('__main__', '{}', 'héllo ✓')", agent.root.display())
    );
    // Top-level await works.
    let o = py(&mut c, "import asyncio\nawait asyncio.sleep(0)\n7").unwrap();
    assert_eq!(o.result.as_deref(), Some("7"));
}

#[test]
fn exceptions_give_clean_tracebacks() {
    let agent = TestAgent::start();
    let mut c = agent.connect();
    let o = py(
        &mut c,
        "def boom():\n    return 1 / 0\nprint('before')\nboom()",
    )
    .unwrap();
    assert_eq!(o.stdout, "before\n");
    let e = o.error.expect("error");
    assert_eq!(e.ename, "ZeroDivisionError");
    assert_eq!(e.evalue, "division by zero");
    let tb = e.traceback.join("\n");
    assert!(tb.starts_with("Traceback (most recent call last):"), "{tb}");
    assert!(tb.contains("return 1 / 0"), "source lines are shown: {tb}");
    assert!(tb.contains("in boom"), "{tb}");
    assert!(
        !tb.contains("sandboxd-bootstrap"),
        "bootstrap frames leak: {tb}"
    );
    assert!(tb.ends_with("ZeroDivisionError: division by zero"), "{tb}");

    let e = py(&mut c, "x = (").unwrap().error.expect("syntax error");
    assert_eq!(e.ename, "SyntaxError");
    assert!(!e.traceback.join("\n").contains("sandboxd-bootstrap"));

    // SystemExit does not end the interpreter.
    let e = py(&mut c, "v = 5\nraise SystemExit(3)")
        .unwrap()
        .error
        .unwrap();
    assert_eq!(e.ename, "SystemExit");
    assert_eq!(py(&mut c, "v").unwrap().result.as_deref(), Some("5"));
}

#[test]
fn stray_io_cannot_corrupt_the_protocol() {
    let agent = TestAgent::start();
    let mut c = agent.connect();
    let code = "import os, subprocess\nos.write(1, b'{\"id\": 999}\\n')\nsubprocess.run(['echo', 'sub'])\ntry:\n    input()\nexcept EOFError:\n    r = 'eof'\nr";
    let o = py(&mut c, code).unwrap();
    assert_eq!(o.result.as_deref(), Some("'eof'"));
    assert_eq!(py(&mut c, "1 + 1").unwrap().result.as_deref(), Some("2"));
}

#[test]
fn timeout_interrupts_and_keeps_state() {
    let agent = TestAgent::start();
    let mut c = agent.connect();
    py(&mut c, "kept = 'yes'").unwrap();
    let started = Instant::now();
    let e = py_timeout(&mut c, "import time\ntime.sleep(60)", Some(300)).unwrap_err();
    assert_eq!(e.kind, AgentErrorKind::Timeout, "{}", e.message);
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(py(&mut c, "kept").unwrap().result.as_deref(), Some("'yes'"));

    // A busy loop is interrupted too.
    let e = py_timeout(&mut c, "while True:\n    pass", Some(300)).unwrap_err();
    assert_eq!(e.kind, AgentErrorKind::Timeout);
    assert_eq!(py(&mut c, "kept").unwrap().result.as_deref(), Some("'yes'"));
    // Code that finishes in time is unaffected by its timeout.
    assert_eq!(
        py_timeout(&mut c, "3", Some(30_000))
            .unwrap()
            .result
            .as_deref(),
        Some("3")
    );
}

#[test]
fn code_ignoring_interrupts_is_killed_and_replaced() {
    let agent = TestAgent::start();
    let mut c = agent.connect();
    py(&mut c, "gone = 1").unwrap();
    let code = "import time\nwhile True:\n    try:\n        time.sleep(10)\n    except KeyboardInterrupt:\n        pass";
    let e = py_timeout(&mut c, code, Some(300)).unwrap_err();
    assert_eq!(e.kind, AgentErrorKind::Timeout);
    assert!(e.message.contains("killed"), "{}", e.message);
    // A fresh interpreter answers; the old state is gone.
    let o = py(&mut c, "gone").unwrap();
    assert_eq!(o.error.unwrap().ename, "NameError");
}

#[test]
fn dead_interpreter_is_restarted() {
    let agent = TestAgent::start();
    let mut c = agent.connect();
    py(&mut c, "a = 1").unwrap();
    let e = py(&mut c, "import os\nos._exit(1)").unwrap_err();
    assert_eq!(e.kind, AgentErrorKind::Io);
    assert!(e.message.contains("exited with code 1"), "{}", e.message);
    let o = py(&mut c, "'a' in globals()").unwrap();
    assert_eq!(o.result.as_deref(), Some("False"));
}

#[test]
fn reset_forgets_state() {
    let agent = TestAgent::start();
    let mut c = agent.connect();
    // Reset before any interpreter exists is fine.
    assert_eq!(c.one(&Request::PythonReset), Response::Ok);
    py(&mut c, "y = 1").unwrap();
    assert_eq!(c.one(&Request::PythonReset), Response::Ok);
    let e = py(&mut c, "y").unwrap().error.unwrap();
    assert_eq!(e.ename, "NameError");
}

#[test]
fn reset_from_another_connection_stops_running_code() {
    let agent = TestAgent::start();
    let mut a = agent.connect();
    py(&mut a, "w = 1").unwrap();
    a.send(
        &Request::Python {
            code: "import time\ntime.sleep(60)".into(),
            timeout_ms: None,
        },
        &[],
    );
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let mut b = agent.connect();
    assert_eq!(b.one(&Request::PythonReset), Response::Ok);
    assert!(started.elapsed() < Duration::from_secs(20));
    match a.recv().resp {
        Response::Error(e) => assert_eq!(e.kind, AgentErrorKind::Io),
        other => panic!("{other:?}"),
    }
    assert_eq!(py(&mut a, "w").unwrap().error.unwrap().ename, "NameError");
}

#[test]
fn requests_are_serialised() {
    let agent = TestAgent::start();
    let mut c = agent.connect();
    py(&mut c, "n = 0").unwrap();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let mut c = agent.connect();
            std::thread::spawn(move || {
                for _ in 0..10 {
                    py(&mut c, "t = n\nimport time\ntime.sleep(0.001)\nn = t + 1").unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(py(&mut c, "n").unwrap().result.as_deref(), Some("40"));
}

#[test]
fn huge_output_is_capped() {
    let agent = TestAgent::start();
    let mut c = agent.connect();
    let o = py(&mut c, "print('x' * 5_000_000)\n'y' * 3_000_000").unwrap();
    assert!(o.stdout.len() < 1_000_000);
    assert!(o.stdout.contains("dropped"));
    assert!(o.result.unwrap().len() < 1_000_000);
}

#[test]
fn missing_interpreter_is_a_spawn_failure() {
    // python3 is looked up in the sandbox's PATH, as commands are.
    let agent = TestAgent::start_with(&[("PATH", "/nonexistent")]);
    let mut c = agent.connect();
    let e = py(&mut c, "1").unwrap_err();
    assert_eq!(e.kind, AgentErrorKind::SpawnFailed, "{}", e.message);
    assert!(e.message.contains("python3"), "{}", e.message);
    // The agent itself is unaffected.
    assert!(matches!(
        c.one(&Request::Hello { version: (1, 0) }),
        Response::Hello { .. }
    ));
}
