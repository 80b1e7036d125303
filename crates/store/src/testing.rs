//! A real `redis-server` for tests: started on a free loopback port, without persistence or
//! with an append-only file synced at every write ([`RedisServer::start_persistent`]), and
//! killed when dropped. Tests that need Redis use it rather than a fake, so that what they
//! prove holds against the server users run.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` child process on `127.0.0.1:port`.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    /// Its port.
    pub port: u16,
    dir: tempfile::TempDir,
    persistent: bool,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl RedisServer {
    /// Start one on a free port and wait until it accepts connections. Panics, saying how to
    /// install it, when `redis-server` is missing.
    pub fn start() -> RedisServer {
        Self::start_with(false)
    }

    /// Like [`RedisServer::start`], but every write is in its append-only file before it is
    /// answered, so that a kill and [`RedisServer::restart`] lose nothing (as a production
    /// Redis with `appendfsync always`).
    pub fn start_persistent() -> RedisServer {
        Self::start_with(true)
    }

    fn start_with(persistent: bool) -> RedisServer {
        let mut s = RedisServer {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().expect("a temporary directory"),
            persistent,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--protected-mode", "no"])
            .args(if self.persistent {
                ["--appendonly", "yes", "--appendfsync", "always"]
            } else {
                ["--appendonly", "no", "--appendfsync", "everysec"]
            })
            .arg("--dir")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server ({e}); install it: scripts/setup (apt-get install redis-server)")
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not start listening"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kill it (SIGKILL, as a crash would). Unless persistent, its data is gone.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start it again on the same port: empty, or, when persistent, with everything it had.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// A [`crate::redis::RedisConfig`] for it with key prefix `prefix`.
    pub fn config(&self, prefix: &str) -> crate::redis::RedisConfig {
        crate::redis::RedisConfig {
            host: "127.0.0.1".into(),
            port: self.port,
            prefix: prefix.into(),
            ..Default::default()
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
