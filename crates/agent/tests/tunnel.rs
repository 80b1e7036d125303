//! Tunnels (`Request::Connect`) against the real agent binary. Outside a sandbox the agent's
//! loopback is the test's, so the servers here are plain listeners of the test process.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener};
use std::thread;

use common::TestAgent;
use sandboxd_protocol::{AgentErrorKind, Request, Response, PROTOCOL_VERSION};

/// A listener on a free loopback port.
fn listener() -> (TcpListener, u16) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    (l, port)
}

/// Everything `s` sends until its end of stream.
fn read_to_end(mut s: impl Read) -> Vec<u8> {
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    out
}

/// Open a tunnel to `port`: the client's stream is then the TCP connection's.
fn tunnel(agent: &TestAgent, port: u16) -> common::Client {
    let mut c = agent.connect();
    assert_eq!(c.one(&Request::Connect { port }), Response::Connected);
    c
}

#[test]
fn bytes_flow_both_ways_and_half_closes_pass_through() {
    let agent = TestAgent::start();
    let (l, port) = listener();
    // The server reads until the client's half-close, then answers and closes.
    let server = thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let got = read_to_end(&mut s);
        s.write_all(b"you said: ").unwrap();
        s.write_all(&got).unwrap();
        got
    });
    let mut c = tunnel(&agent, port);
    c.s.write_all(b"hello").unwrap();
    c.s.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_end(&mut c.s), b"you said: hello");
    assert_eq!(server.join().unwrap(), b"hello");
}

#[test]
fn a_server_that_half_closes_first_still_hears_the_client() {
    let agent = TestAgent::start();
    let (l, port) = listener();
    let server = thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.write_all(b"greeting").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        read_to_end(&mut s)
    });
    let mut c = tunnel(&agent, port);
    assert_eq!(read_to_end(&mut c.s), b"greeting");
    // The server's half-close did not end the way to it.
    c.s.write_all(b"still here").unwrap();
    c.s.shutdown(Shutdown::Write).unwrap();
    assert_eq!(server.join().unwrap(), b"still here");
}

#[test]
fn large_transfers_both_ways_at_once() {
    let agent = TestAgent::start();
    let (l, port) = listener();
    // An echo server: more data than any buffer on the way holds, so each side must read
    // while it writes.
    let server = thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        let mut r = s.try_clone().unwrap();
        let mut w = s;
        std::io::copy(&mut r, &mut w).unwrap();
        w.shutdown(Shutdown::Write).unwrap();
    });
    let c = tunnel(&agent, port);
    let data: Vec<u8> = (0..8u32 << 20).map(|i| (i * 7 % 251) as u8).collect();
    let mut w = c.s.try_clone().unwrap();
    let sent = data.clone();
    let writer = thread::spawn(move || {
        w.write_all(&sent).unwrap();
        w.shutdown(Shutdown::Write).unwrap();
    });
    let echoed = read_to_end(&c.s);
    writer.join().unwrap();
    server.join().unwrap();
    assert_eq!(echoed.len(), data.len());
    assert!(echoed == data, "echoed bytes differ");
}

#[test]
fn closing_the_host_side_ends_the_tcp_connection() {
    let agent = TestAgent::start();
    let (l, port) = listener();
    let c = tunnel(&agent, port);
    let (s, _) = l.accept().unwrap();
    drop(c);
    // The agent passes the end on; the server sees its client go.
    assert_eq!(read_to_end(&s), b"");
}

#[test]
fn nothing_listening_is_a_clear_error_and_the_connection_stays_framed() {
    let agent = TestAgent::start();
    let (l, port) = listener();
    drop(l);
    let mut c = agent.connect();
    match c.one(&Request::Connect { port }) {
        Response::Error(e) => {
            assert_eq!(e.kind, AgentErrorKind::NotFound);
            assert!(
                e.message
                    .contains(&format!("nothing is listening on port {port}")),
                "{}",
                e.message
            );
        }
        other => panic!("{other:?}"),
    }
    match c.one(&Request::Connect { port: 0 }) {
        Response::Error(e) => assert_eq!(e.kind, AgentErrorKind::InvalidRequest),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        c.one(&Request::Hello {
            version: PROTOCOL_VERSION
        }),
        Response::Hello { .. }
    ));
}

#[test]
fn a_tunnel_does_not_hold_up_other_connections() {
    let agent = TestAgent::start();
    let (l, port) = listener();
    let _idle = tunnel(&agent, port);
    let _accepted = l.accept().unwrap();
    let mut other = agent.connect();
    assert_eq!(other.shell("echo hi").out(), "hi\n");
}
