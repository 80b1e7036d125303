//! Tunnels to TCP ports inside sandboxes ([`Manager::connect_port`]): how the server publishes
//! a sandbox's ports on the host, on any backend.
//!
//! A tunnel is an agent connection that the agent turned into a TCP connection's byte stream
//! (the protocol's `Connect`, see `sandboxd-protocol`'s *Tunnels*): the bytes written to a
//! [`Tunnel`] reach the port on the sandbox's loopback, what the server there sends comes out,
//! and a `shutdown` (half-close) is passed on to it. Bytes flowing count as activity on the
//! sandbox (see [`Manager::connect_port`]), at most once per [`ACTIVITY_EVERY`].

use std::pin::Pin;
use std::sync::Weak;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, BufReader, ReadBuf};

use crate::backend::AgentIo;
use crate::Manager;

/// Traffic through a sandbox's tunnels is recorded as its activity at most this often.
pub const ACTIVITY_EVERY: Duration = Duration::from_secs(1);

/// A byte stream to a TCP port inside a sandbox. Dropping it closes the connection inside.
pub struct Tunnel {
    io: BufReader<Box<dyn AgentIo>>,
    manager: Weak<Manager>,
    id: String,
    port: u16,
    noted: Option<Instant>,
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel")
            .field("sandbox", &self.id)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl Tunnel {
    pub(crate) fn new(
        io: BufReader<Box<dyn AgentIo>>,
        manager: Weak<Manager>,
        id: String,
        port: u16,
    ) -> Tunnel {
        let mut t = Tunnel {
            io,
            manager,
            id,
            port,
            noted: None,
        };
        // Opening it is activity too.
        t.note();
        t
    }

    /// The sandbox it leads into.
    pub fn sandbox_id(&self) -> &str {
        &self.id
    }

    /// The port inside the sandbox.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Bytes moved: record activity on the sandbox, unless this tunnel did so lately. The
    /// record is written in the background; the manager throttles it per sandbox again.
    fn note(&mut self) {
        let now = Instant::now();
        if self
            .noted
            .is_some_and(|t| now.duration_since(t) < ACTIVITY_EVERY)
        {
            return;
        }
        self.noted = Some(now);
        if let Some(manager) = self.manager.upgrade() {
            let id = self.id.clone();
            tokio::spawn(async move { manager.record_activity(&id).await });
        }
    }
}

impl AsyncRead for Tunnel {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.io).poll_read(cx, buf))?;
        if buf.filled().len() > before {
            self.note();
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Tunnel {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let n = ready!(Pin::new(&mut self.io).poll_write(cx, buf))?;
        if n > 0 {
            self.note();
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
