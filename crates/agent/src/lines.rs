//! Reading newline-delimited messages from a child's non-blocking pipe (the Python
//! interpreter's replies, an MCP server's JSON-RPC messages).

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use crate::sys;

/// A non-blocking read end and the bytes read from it that do not yet end a line.
pub struct LineReader {
    fd: OwnedFd,
    buf: Vec<u8>,
    /// Longest line accepted; a longer one is reported by [`LineReader::overflowed`].
    max_line: usize,
}

impl LineReader {
    /// Read lines of at most `max_line` bytes from `fd`, which is made non-blocking.
    pub fn new(fd: OwnedFd, max_line: usize) -> io::Result<LineReader> {
        sys::set_nonblocking(fd.as_fd())?;
        Ok(LineReader {
            fd,
            buf: Vec::new(),
            max_line,
        })
    }

    /// The raw descriptor, for `poll`.
    pub fn raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    /// The next complete line in the buffer (without its newline), if any.
    pub fn take_line(&mut self) -> Option<Vec<u8>> {
        let nl = self.buf.iter().position(|&b| b == b'\n')?;
        let rest = self.buf.split_off(nl + 1);
        let mut line = std::mem::replace(&mut self.buf, rest);
        line.pop();
        Some(line)
    }

    /// Whether a complete line is buffered.
    pub fn has_line(&self) -> bool {
        self.buf.contains(&b'\n')
    }

    /// Whether the buffer holds an unfinished line longer than the limit: the writer is not
    /// speaking the line protocol, and reading on would only grow the buffer.
    pub fn overflowed(&self) -> bool {
        self.buf.len() > self.max_line && !self.has_line()
    }

    /// Read everything available now; `false` at end of stream (or on a read error).
    pub fn drain(&mut self) -> bool {
        let mut chunk = [0u8; 64 * 1024];
        loop {
            match sys::read(self.fd.as_fd(), &mut chunk) {
                Ok(0) => return false,
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    if self.overflowed() {
                        return true;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
    }
}
