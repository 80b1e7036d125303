//! Tunnels: `Request::Connect`, which turns a host connection into the byte stream of a TCP
//! connection to a port on the sandbox's loopback (how the host publishes a server running in
//! the sandbox, whose network namespace has nothing but loopback).
//!
//! The connection's thread connects to `127.0.0.1:<port>` (then `[::1]:<port>`, for servers
//! bound to IPv6 only), answers `Connected`, and relays bytes both ways with one `poll` loop
//! over the two sockets, both non-blocking, with one buffer per direction: a direction reads
//! only when its buffer is empty and waits for its destination to take what it holds, so a
//! slow reader on one side slows the other down instead of filling memory. The end of one
//! side's stream (a half-close) becomes a `shutdown(SHUT_WR)` of the other, once the bytes
//! before it are delivered; the tunnel ends when both directions have, or at once when a
//! socket fails or hangs up while bytes are still due to it. The connection is then closed.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use sandboxd_protocol::{AgentError, AgentErrorKind, Response};

use crate::conn::Conn;
use crate::sys;

/// How long a connect to a port in the sandbox may take (loopback answers at once unless the
/// listener's backlog is full).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Size of each direction's buffer.
const BUF: usize = 64 * 1024;

/// Serve one `Connect` request. `Ok(true)`: the connection was a tunnel, which has ended (close
/// the connection); `Ok(false)`: the connect failed and the host got an error frame (the
/// connection stays framed).
pub fn serve(conn: &mut Conn, port: u16) -> io::Result<bool> {
    let tcp = match connect(port) {
        Ok(s) => s,
        Err(e) => {
            conn.send_error(e)?;
            return Ok(false);
        }
    };
    conn.send(&Response::Connected, &[])?;
    // A failure now only ends the tunnel: there is no frame left to report it in, and the
    // host sees the connection close.
    let _ = relay(conn.stream(), &tcp);
    Ok(true)
}

/// Connect to `port` on the sandbox's loopback.
fn connect(port: u16) -> Result<TcpStream, AgentError> {
    if port == 0 {
        return Err(AgentError {
            kind: AgentErrorKind::InvalidRequest,
            message: "connect: port must be between 1 and 65535".into(),
        });
    }
    let v4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
    let stream = match TcpStream::connect_timeout(&v4, CONNECT_TIMEOUT) {
        Ok(s) => s,
        Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
            // Perhaps a server bound to ::1 only; no IPv6 at all counts as nobody there.
            let v6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port);
            TcpStream::connect_timeout(&v6, CONNECT_TIMEOUT).map_err(|_| AgentError {
                kind: AgentErrorKind::NotFound,
                message: format!("nothing is listening on port {port} inside the sandbox"),
            })?
        }
        Err(e) => {
            return Err(AgentError {
                kind: AgentErrorKind::Io,
                message: format!("connect to port {port} inside the sandbox: {e}"),
            })
        }
    };
    // Tunnels carry interactive protocols too: send each piece as it comes.
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// One end of a tunnel.
trait End: AsRawFd {
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize>;
    fn send(&self, buf: &[u8]) -> io::Result<usize>;
    fn shut_write(&self);
}

impl End for UnixStream {
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self).read(buf)
    }
    fn send(&self, buf: &[u8]) -> io::Result<usize> {
        (&*self).write(buf)
    }
    fn shut_write(&self) {
        // Fails only when the peer is gone already, which the loop notices by itself.
        let _ = self.shutdown(Shutdown::Write);
    }
}

impl End for TcpStream {
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self).read(buf)
    }
    fn send(&self, buf: &[u8]) -> io::Result<usize> {
        (&*self).write(buf)
    }
    fn shut_write(&self) {
        let _ = self.shutdown(Shutdown::Write);
    }
}

/// One direction: bytes read from one end, waiting to be written to the other.
struct Pipe {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// The source's stream ended.
    eof: bool,
    /// The end was passed on: the destination's writing side is shut.
    shut: bool,
}

impl Pipe {
    fn new() -> Pipe {
        Pipe {
            buf: vec![0; BUF],
            start: 0,
            end: 0,
            eof: false,
            shut: false,
        }
    }

    fn has_data(&self) -> bool {
        self.start < self.end
    }

    fn wants_read(&self) -> bool {
        !self.eof && !self.has_data()
    }
}

/// Whether an error only means "not now".
fn transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

/// Relay between the host connection and the TCP connection until both directions have ended
/// (`Ok`) or one side fails (`Err`).
fn relay(host: &UnixStream, tcp: &TcpStream) -> io::Result<()> {
    host.set_nonblocking(true)?;
    tcp.set_nonblocking(true)?;
    let ends: [&dyn End; 2] = [host, tcp];
    // pipes[i] reads from ends[i] and writes to ends[1 - i].
    let mut pipes = [Pipe::new(), Pipe::new()];
    loop {
        if pipes.iter().all(|p| p.shut) {
            return Ok(());
        }
        let mut fds = [sys::pollfd(-1, 0), sys::pollfd(-1, 0)];
        for (i, fd) in fds.iter_mut().enumerate() {
            let (from, into) = (&pipes[i], &pipes[1 - i]);
            let mut events = 0;
            if from.wants_read() {
                events |= libc::POLLIN;
            }
            if into.has_data() {
                events |= libc::POLLOUT;
            }
            // An end that bytes may still be due to is watched for a hang-up even when there
            // is nothing to do on it now; one with nothing left to do is left out, or its
            // hang-up would wake the loop over and over.
            let watched = events != 0 || !into.shut;
            let raw: RawFd = if watched { ends[i].as_raw_fd() } else { -1 };
            *fd = sys::pollfd(raw, events);
        }
        sys::poll(&mut fds, None)?;
        for i in 0..2 {
            let revents = fds[i].revents;
            if revents == 0 {
                continue;
            }
            let broken = revents & (libc::POLLHUP | libc::POLLERR) != 0;
            let mut acted = false;
            let from = &mut pipes[i];
            if from.wants_read() && (broken || revents & libc::POLLIN != 0) {
                acted = true;
                match ends[i].recv(&mut from.buf) {
                    Ok(0) => from.eof = true,
                    Ok(n) => {
                        from.start = 0;
                        from.end = n;
                    }
                    Err(e) if transient(&e) => {}
                    Err(e) => return Err(e),
                }
            }
            let into = &mut pipes[1 - i];
            if into.has_data() && (broken || revents & libc::POLLOUT != 0) {
                acted = true;
                match ends[i].send(&into.buf[into.start..into.end]) {
                    Ok(n) => into.start += n,
                    Err(e) if transient(&e) => {}
                    Err(e) => return Err(e),
                }
            }
            if broken && !acted {
                // Watched only because bytes may still be due to it: they never can be.
                return Err(io::ErrorKind::ConnectionAborted.into());
            }
        }
        for (i, pipe) in pipes.iter_mut().enumerate() {
            if pipe.eof && !pipe.has_data() && !pipe.shut {
                ends[1 - i].shut_write();
                pipe.shut = true;
            }
        }
    }
}
