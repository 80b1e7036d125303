//! Published ports on the native backend: a server inside a sandbox (whose network namespace
//! has only loopback) reached from the host through a port of `PORT_RANGE`.

mod common;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use sandboxd_client::Client;
use sandboxd_e2e::ServerOptions;
use sandboxd_types::{CreateSandboxRequest, ErrorCode, Sandbox};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::{api_code, create_req, sh};

/// A run of `n` loopback ports that nothing holds now (the test holds none of them either),
/// in `region`, below the kernel's ephemeral ports so that no outgoing connection takes one
/// meanwhile. Each test has a region of its own: tests run side by side, and one's range must
/// not be found free in the moment before another's server binds it.
fn free_port_range(region: std::ops::Range<u16>, n: u16) -> (u16, u16) {
    let offset = (std::process::id() % 40) as u16;
    'search: for lo in region.step_by(50).map(|b| b + offset) {
        let mut held = Vec::new();
        for p in lo..lo + n {
            match TcpListener::bind(("127.0.0.1", p)) {
                Ok(l) => held.push(l),
                Err(_) => continue 'search,
            }
        }
        return (lo, lo + n - 1);
    }
    panic!("no free run of {n} ports");
}

/// The address `port` of `sb` is published at.
fn address(sb: &Sandbox, port: u16) -> String {
    Client::published_address(sb, port)
        .unwrap_or_else(|| panic!("port {port} is not published: {:?}", sb.ports))
        .to_string()
}

/// Everything the peer sends until it closes; a reset counts as the end. Bounded, so that a
/// hang fails the test instead of stalling it.
async fn read_all(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(60), async {
        let mut buf = [0u8; 64 * 1024];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the connection neither answered nor closed");
    out
}

/// One HTTP/1.0 exchange on a new connection to `addr`, the request's end marked with a
/// half-close: the whole reply.
async fn http_get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: sandbox\r\n\r\n").as_bytes())
        .await
        .unwrap();
    // A half-close: the request is complete, the reply still comes back.
    s.shutdown().await.unwrap();
    String::from_utf8_lossy(&read_all(&mut s).await).into_owned()
}

fn ports_req(ports: &[u16]) -> CreateSandboxRequest {
    CreateSandboxRequest {
        ports: ports.to_vec(),
        ..create_req()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn published_ports_reach_a_server_inside_and_are_given_back() {
    let (lo, hi) = free_port_range(31000..31450, 4);
    let server = common::server_with(ServerOptions {
        env: vec![("PORT_RANGE".into(), format!("[{lo},{hi}]"))],
        ..Default::default()
    })
    .await;
    let c = server.client();

    // Bad requests: nothing is created.
    let many: Vec<u16> = (8000..8017).collect();
    for ports in [vec![0], vec![8000, 8000], many] {
        let err = c.create(&ports_req(&ports)).await.unwrap_err();
        assert_eq!(
            api_code(&err),
            Some(ErrorCode::InvalidRequest),
            "{ports:?}: {err}"
        );
    }
    assert!(c.list(&BTreeMap::new()).await.unwrap().is_empty());

    let mut req = ports_req(&[8000, 8001]);
    // Shorter than SANDBOX_TIMEOUT: traffic through the ports pushes the expiry out.
    req.timeout_secs = Some(120);
    let sb = c.create(&req).await.unwrap();
    assert_eq!(sb.ports.len(), 2);
    for (p, want) in sb.ports.iter().zip([8000, 8001]) {
        assert_eq!(p.port, want);
        assert!((lo..=hi).contains(&p.host_port), "{p:?}");
        assert_eq!(p.address, format!("127.0.0.1:{}", p.host_port));
    }
    assert_eq!(c.get(&sb.id).await.unwrap().ports, sb.ports);
    let web = address(&sb, 8000);

    // python3's http.server in the background, serving /workspace; wait until it listens.
    let r = sh(
        &c,
        &sb.id,
        "cd /workspace && echo hello-from-the-sandbox > index.html && \
         setsid python3 -m http.server 8000 --bind 127.0.0.1 >/tmp/http.log 2>&1 </dev/null & \
         for i in $(seq 600); do \
           python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", 8000))' \
             2>/dev/null && exit 0; sleep 0.05; done; cat /tmp/http.log; exit 1",
    )
    .await;
    assert_eq!(r.exit_code, Some(0), "http.server did not start: {r:?}");

    let reply = http_get(&web, "/").await;
    assert!(reply.starts_with("HTTP/1.0 200"), "{reply}");
    assert!(reply.ends_with("hello-from-the-sandbox\n"), "{reply}");

    // Two connections at once: the first stays open with half a request while the second is
    // served whole, then the first is finished and served too.
    let mut first = TcpStream::connect(&web).await.unwrap();
    first
        .write_all(b"GET /index.html HTTP/1.0\r\n")
        .await
        .unwrap();
    let second = http_get(&web, "/").await;
    assert!(second.starts_with("HTTP/1.0 200"), "{second}");
    first.write_all(b"Host: sandbox\r\n\r\n").await.unwrap();
    let first = String::from_utf8_lossy(&read_all(&mut first).await).into_owned();
    assert!(first.ends_with("hello-from-the-sandbox\n"), "{first}");

    // A larger body, byte for byte.
    let big: Vec<u8> = (0..3u32 << 20).map(|i| (i * 13 % 251) as u8).collect();
    c.write_file(&sb.id, "big.bin", big.clone()).await.unwrap();
    let reply = {
        let mut s = TcpStream::connect(&web).await.unwrap();
        s.write_all(b"GET /big.bin HTTP/1.0\r\n\r\n").await.unwrap();
        read_all(&mut s).await
    };
    let body_at = reply
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("headers end")
        + 4;
    assert!(reply[body_at..] == big[..], "the body differs");

    // Traffic is activity: the expiry moved to SANDBOX_TIMEOUT (300 s) from now, and the
    // AgentScope heartbeat sees the sandbox as active.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = c.get(&sb.id).await.unwrap();
        if now.expires_at_ms > sb.expires_at_ms
            && now.metadata.contains_key("agentscope.last_active_ms")
        {
            break;
        }
        assert!(Instant::now() < deadline, "no activity recorded: {now:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Nothing listens on 8001: the connection is closed, not left hanging.
    let mut idle = TcpStream::connect(address(&sb, 8001)).await.unwrap();
    let _ = idle.write_all(b"GET / HTTP/1.0\r\n\r\n").await;
    assert!(read_all(&mut idle).await.is_empty());
    // Nor while the sandbox is paused.
    c.pause(&sb.id).await.unwrap();
    let mut frozen = TcpStream::connect(&web).await.unwrap();
    assert!(read_all(&mut frozen).await.is_empty());
    c.resume(&sb.id).await.unwrap();
    assert!(http_get(&web, "/").await.starts_with("HTTP/1.0 200"));

    // The range has 4 ports, 2 of them taken: 3 more do not fit (a clear 503, no sandbox
    // made, nothing kept), 2 do.
    let err = c.create(&ports_req(&[1, 2, 3])).await.unwrap_err();
    assert_eq!(api_code(&err), Some(ErrorCode::Unavailable), "{err}");
    assert!(err.to_string().contains("PORT_RANGE"), "{err}");
    assert_eq!(c.list(&BTreeMap::new()).await.unwrap().len(), 1);
    let other = c.create(&ports_req(&[3000, 3001])).await.unwrap();
    let err = c.create(&ports_req(&[5000])).await.unwrap_err();
    assert_eq!(api_code(&err), Some(ErrorCode::Unavailable), "{err}");

    // Deleting gives the ports back: each can be bound again right away.
    let mut used: Vec<u16> = sb
        .ports
        .iter()
        .chain(&other.ports)
        .map(|p| p.host_port)
        .collect();
    used.sort();
    assert_eq!(used, (lo..=hi).collect::<Vec<_>>());
    c.delete(&sb.id).await.unwrap();
    c.delete(&other.id).await.unwrap();
    for p in lo..=hi {
        drop(TcpListener::bind(("127.0.0.1", p)).unwrap_or_else(|e| panic!("port {p}: {e}")));
    }
    // And they are handed out again.
    let again = c
        .create(&ports_req(&[8000, 8001, 8002, 8003]))
        .await
        .unwrap();
    assert_eq!(again.ports.len(), 4);
    c.delete(&again.id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_sandbox_gives_its_ports_back() {
    let (lo, hi) = free_port_range(31450..31900, 1);
    let server = common::server_with(ServerOptions {
        env: vec![("PORT_RANGE".into(), format!("[{lo},{hi}]"))],
        ..Default::default()
    })
    .await;
    let c = server.client();
    let mut req = ports_req(&[8000]);
    req.timeout_secs = Some(1);
    let sb = c.create(&req).await.unwrap();
    assert_eq!(sb.ports[0].host_port, lo);
    // The reaper removes it after its second; the listener follows (it is checked every
    // second), and the range's one port is free for the next sandbox.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let gone = c.get(&sb.id).await.is_err();
        if gone && TcpListener::bind(("127.0.0.1", lo)).is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "port {lo} was not given back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let next = c.create(&ports_req(&[8000])).await.unwrap();
    assert_eq!(next.ports[0].host_port, lo);
    c.delete(&next.id).await.unwrap();
}
