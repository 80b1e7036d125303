//! Async client of the guest agent (see `sandboxd-protocol` for the exchange rules).

use std::path::Path;
use std::time::Duration;

use sandboxd_protocol::{
    compatible, decode_lengths, encode, Frame, FrameError, Request, Response, PROTOCOL_VERSION,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::backend::{AgentEndpoint, AgentIo};
use crate::CoreError;

/// One connection to a guest agent.
pub struct AgentConn {
    stream: BufReader<Box<dyn AgentIo>>,
}

impl std::fmt::Debug for AgentConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentConn").finish_non_exhaustive()
    }
}

impl AgentConn {
    /// Connect to an agent on a Unix socket. A [`AgentEndpoint::Relay`] needs its backend:
    /// see [`AgentConn::from_io`].
    pub async fn connect(endpoint: &AgentEndpoint) -> Result<Self, CoreError> {
        let AgentEndpoint::Unix { path } = endpoint else {
            return Err(CoreError::AgentUnreachable(
                "a relayed agent is reached through its backend".into(),
            ));
        };
        // A running agent listens already: no refusal is worth waiting out.
        Self::connect_starting(path, Duration::ZERO).await
    }

    /// Connect to the agent of a box that has just started, on its Unix socket `path`: the
    /// socket file exists a moment before the agent listens on it (between its `bind` and
    /// `listen`), and a connection in that moment is refused. Refusals and a missing socket
    /// are retried for up to `within`.
    pub async fn connect_starting(path: &Path, within: Duration) -> Result<Self, CoreError> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match UnixStream::connect(path).await {
                Ok(stream) => return Ok(Self::from_io(Box::new(stream))),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound
                    ) && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(1)).await
                }
                Err(e) => return Err(CoreError::AgentUnreachable(format!("connect: {e}"))),
            }
        }
    }

    /// A connection over a stream the backend opened.
    pub fn from_io(io: Box<dyn AgentIo>) -> Self {
        AgentConn {
            stream: BufReader::with_capacity(64 * 1024, io),
        }
    }

    /// Connect and shake hands within `within`: a box's agent may still be starting. Returns
    /// the agent's version string and protocol version, and the connection, ready for the next
    /// request.
    pub async fn handshake(
        connect: impl std::future::Future<Output = Result<AgentConn, CoreError>>,
        within: Duration,
    ) -> Result<(String, (u32, u32), AgentConn), CoreError> {
        let attempt = async {
            let mut conn = connect.await?;
            let hello = Request::Hello {
                version: PROTOCOL_VERSION,
            };
            match conn.call(&hello, &[]).await?.header {
                Response::Hello { version, agent } if compatible(version) => {
                    Ok((agent, version, conn))
                }
                Response::Hello { version, agent } => Err(CoreError::AgentUnreachable(format!(
                    "agent {agent} speaks protocol {}.{}, this server {}.{}",
                    version.0, version.1, PROTOCOL_VERSION.0, PROTOCOL_VERSION.1
                ))),
                other => Err(unexpected(&other)),
            }
        };
        tokio::time::timeout(within, attempt)
            .await
            .map_err(|_| CoreError::Timeout("the sandbox's agent did not answer in time".into()))?
    }

    /// The stream itself, with whatever was read ahead of the last frame: after
    /// `Response::Connected` it is a tunnel's byte stream.
    pub(crate) fn into_stream(self) -> BufReader<Box<dyn AgentIo>> {
        self.stream
    }

    /// Send one request frame.
    pub async fn send(&mut self, request: &Request, payload: &[u8]) -> Result<(), CoreError> {
        let bytes = encode(request, payload)?;
        self.stream
            .get_mut()
            .write_all(&bytes)
            .await
            .map_err(|e| CoreError::AgentUnreachable(format!("write: {e}")))
    }

    /// Receive one response frame. An [`Response::Error`] is returned as a frame, not an error.
    pub async fn recv(&mut self) -> Result<Frame<Response>, CoreError> {
        let mut prefix = [0u8; 8];
        match self.stream.read_exact(&mut prefix).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(FrameError::Closed.into())
            }
            Err(e) => return Err(FrameError::Io(e).into()),
        }
        let (hl, pl) = decode_lengths(prefix)?;
        let mut buf = vec![0u8; hl + pl];
        self.stream
            .read_exact(&mut buf)
            .await
            .map_err(FrameError::Io)?;
        let payload = buf.split_off(hl);
        let header = serde_json::from_slice(&buf).map_err(FrameError::BadHeader)?;
        Ok(Frame { header, payload })
    }

    /// Send a request whose answer is one terminal frame; an agent error becomes
    /// [`CoreError::Agent`].
    pub async fn call(
        &mut self,
        request: &Request,
        payload: &[u8],
    ) -> Result<Frame<Response>, CoreError> {
        self.send(request, payload).await?;
        let frame = self.recv().await?;
        match frame.header {
            Response::Error(e) => Err(CoreError::Agent(e)),
            _ => Ok(frame),
        }
    }
}

/// The error for a response that does not fit the request.
pub(crate) fn unexpected(r: &Response) -> CoreError {
    CoreError::AgentUnreachable(format!("unexpected answer from agent: {r:?}"))
}

/// Idle agent connections, by sandbox id, reused so that a request costs neither a connect nor
/// a new connection thread in the agent.
#[derive(Debug, Default, Clone)]
pub struct ConnPool {
    idle: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, Vec<AgentConn>>>>,
}

impl ConnPool {
    /// More idle connections than this per sandbox are closed: they only cost agent threads.
    const MAX_IDLE_PER_SANDBOX: usize = 4;

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Vec<AgentConn>>> {
        // The map stays consistent whatever panicked while it was held.
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An idle connection to the sandbox's agent, if one is kept.
    pub fn take(&self, id: &str) -> Option<AgentConn> {
        self.lock().get_mut(id).and_then(Vec::pop)
    }

    /// Keep a connection whose last exchange ended cleanly.
    pub fn put(&self, id: &str, conn: AgentConn) {
        let mut idle = self.lock();
        let conns = idle.entry(id.to_string()).or_default();
        if conns.len() < Self::MAX_IDLE_PER_SANDBOX {
            conns.push(conn);
        }
    }

    /// Close every kept connection of a sandbox (it is going away).
    pub fn forget(&self, id: &str) {
        self.lock().remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pool_keeps_a_few_connections_per_sandbox_and_forgets_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let _listener = tokio::net::UnixListener::bind(&path).unwrap();
        let ep = AgentEndpoint::Unix { path };
        let pool = ConnPool::default();
        for _ in 0..ConnPool::MAX_IDLE_PER_SANDBOX + 2 {
            pool.put("sb-a", AgentConn::connect(&ep).await.unwrap());
        }
        pool.put("sb-b", AgentConn::connect(&ep).await.unwrap());
        let mut kept = 0;
        while pool.take("sb-a").is_some() {
            kept += 1;
        }
        assert_eq!(kept, ConnPool::MAX_IDLE_PER_SANDBOX);
        pool.forget("sb-b");
        assert!(pool.take("sb-b").is_none());
    }

    /// A socket that is bound but not yet listening (an agent between `bind` and `listen`)
    /// refuses a plain connect; a connect to a starting box waits for it.
    #[tokio::test]
    async fn a_starting_agent_is_waited_for_between_bind_and_listen() {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        // SAFETY: socket(2) with constant arguments; the descriptor is owned right away.
        let fd = unsafe { OwnedFd::from_raw_fd(libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0)) };
        // SAFETY: an all-zero sockaddr_un is valid; the path fits (a short temp dir).
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (d, s) in addr.sun_path.iter_mut().zip(path.as_os_str().as_bytes()) {
            *d = *s as libc::c_char;
        }
        // SAFETY: `addr` is a valid sockaddr_un of the given size.
        let bound = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &addr as *const libc::sockaddr_un as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
            )
        };
        assert_eq!(bound, 0, "{}", std::io::Error::last_os_error());
        let ep = AgentEndpoint::Unix { path: path.clone() };
        let refused = AgentConn::connect(&ep).await.unwrap_err();
        assert!(refused.to_string().contains("refused"), "{refused}");
        let raw = fd.as_raw_fd();
        let listen_later = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            // SAFETY: listen(2) on the bound socket, still open (owned by the test).
            assert_eq!(unsafe { libc::listen(raw, 1) }, 0);
        });
        AgentConn::connect_starting(&path, Duration::from_secs(10))
            .await
            .unwrap();
        listen_later.await.unwrap();
        drop(fd);
    }
}
