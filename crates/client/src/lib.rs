//! Rust SDK of the sandboxd HTTP API (`/v1`).
//!
//! One [`Client`] per server; every method maps to one route. Request and reply types are the
//! server's own wire types, re-exported as [`types`]. Failures are [`Error`]s; an error the API
//! reports carries its stable [`ErrorCode`] (match on that, never on messages).
//!
//! ```no_run
//! use sandboxd_client::types::{CreateSandboxRequest, ExecRequest};
//! use sandboxd_client::Client;
//!
//! # async fn demo() -> Result<(), sandboxd_client::Error> {
//! let client = Client::new("http://127.0.0.1:8000").with_token("my-token");
//! let sandbox = client
//!     .create(&CreateSandboxRequest {
//!         sandbox_type: Some("base".into()),
//!         ..Default::default()
//!     })
//!     .await?;
//! let out = client
//!     .exec(
//!         &sandbox.id,
//!         &ExecRequest {
//!             shell: Some("echo hello from $(hostname)".into()),
//!             ..Default::default()
//!         },
//!     )
//!     .await?;
//! print!("{}", out.stdout);
//! client.delete(&sandbox.id).await?;
//! # Ok(())
//! # }
//! ```
//!
//! Published ports: a create with `ports: vec![8000]` publishes port 8000 of the sandbox on a
//! host port of the server's `PORT_RANGE`; [`Client::published_address`] says where to
//! connect (the sandbox's `ports` list them all).
//!
//! Streaming: [`Client::exec_stream`] yields [`ExecEvent`]s as the command produces output;
//! [`Client::read_file_stream`] and [`Client::write_file_stream`] move file contents without
//! holding them whole in memory.

use std::collections::BTreeMap;
use std::pin::Pin;

use bytes::Bytes;
use futures::{Stream, StreamExt, TryStream};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;

pub use sandboxd_types as types;
use sandboxd_types::{
    CreateSandboxRequest, ErrorBody, ErrorCode, ExecEvent, ExecRequest, ExecResult, FileEntry,
    FileList, Health, MkdirRequest, MkdirResult, MoveRequest, PythonRequest, PythonResult, Sandbox,
    SandboxList, SetTimeoutRequest,
};

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered with an API error (`{"error": {"code", "message"}}`).
    #[error("{message} ({})", code_name(*.code))]
    Api {
        /// HTTP status.
        status: u16,
        /// Stable error code.
        code: ErrorCode,
        /// The server's message.
        message: String,
    },
    /// The server could not be reached at all (refused, no route, name not resolved).
    #[error("cannot connect to {url}: {source}")]
    Connect {
        /// The server's base URL.
        url: String,
        /// The underlying error.
        #[source]
        source: reqwest::Error,
    },
    /// The exchange failed midway (reset, timeout, a body that broke off).
    #[error("request failed: {0}")]
    Http(#[source] reqwest::Error),
    /// The server answered something that is not this API's shape (a proxy, another server).
    #[error("unexpected reply (HTTP {status}): {body}")]
    UnexpectedResponse {
        /// HTTP status.
        status: u16,
        /// The start of the body.
        body: String,
    },
    /// A reply body could not be decoded.
    #[error("cannot decode the reply: {0}")]
    Decode(String),
    /// An argument is unusable (e.g. a malformed base URL).
    #[error("{0}")]
    InvalidArgument(String),
}

fn code_name(code: ErrorCode) -> String {
    serde_json::to_value(code)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_else(|| format!("{code:?}"))
}

impl Error {
    /// The API error code, when the server reported one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Api { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether the server could not be reached.
    pub fn is_connect(&self) -> bool {
        matches!(self, Error::Connect { .. })
    }
}

/// Result of a call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Events of a streamed exec, in order; the last is `Exit` or `Error`.
pub type ExecEventStream = Pin<Box<dyn Stream<Item = Result<ExecEvent>> + Send>>;

/// Pieces of a downloaded file, in order.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes>> + Send>>;

/// A client of one sandboxd server. Cheap to clone (connections are pooled and shared).
#[derive(Clone)]
pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Percent-encode one path segment.
fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Client {
    /// A client of the server at `base_url` (e.g. `http://127.0.0.1:8000`).
    pub fn new(base_url: impl Into<String>) -> Self {
        Client {
            base: base_url.into().trim_end_matches('/').to_string(),
            token: None,
            http: reqwest::Client::new(),
        }
    }

    /// Send `Authorization: Bearer <token>` with every request (an empty token sends none).
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        let t = token.into();
        self.token = (!t.is_empty()).then_some(t);
        self
    }

    /// Use this `reqwest` client (for timeouts, proxies, ...).
    pub fn with_http_client(mut self, http: reqwest::Client) -> Self {
        self.http = http;
        self
    }

    /// The server's base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let mut b = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            b = b.bearer_auth(t);
        }
        b
    }

    fn sandbox_path(id: &str, rest: &str) -> String {
        format!("/v1/sandboxes/{}{rest}", segment(id))
    }

    /// Send a request; turn transport failures and API errors into [`Error`].
    async fn send(&self, b: RequestBuilder) -> Result<Response> {
        let resp = b.send().await.map_err(|e| {
            if e.is_connect() {
                Error::Connect {
                    url: self.base.clone(),
                    source: e,
                }
            } else if e.is_builder() {
                Error::InvalidArgument(format!("bad request for {}: {e}", self.base))
            } else {
                Error::Http(e)
            }
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let body = resp.bytes().await.map_err(Error::Http)?;
        Err(match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(e) => Error::Api {
                status: status.as_u16(),
                code: e.error.code,
                message: e.error.message,
            },
            Err(_) => Error::UnexpectedResponse {
                status: status.as_u16(),
                body: String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned(),
            },
        })
    }

    async fn json<T: DeserializeOwned>(&self, b: RequestBuilder) -> Result<T> {
        let resp = self.send(b).await?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(Error::Http)?;
        serde_json::from_slice(&body).map_err(|e| {
            if status == StatusCode::OK || status == StatusCode::CREATED {
                Error::Decode(e.to_string())
            } else {
                Error::UnexpectedResponse {
                    status: status.as_u16(),
                    body: String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned(),
                }
            }
        })
    }

    async fn empty(&self, b: RequestBuilder) -> Result<()> {
        self.send(b).await.map(drop)
    }

    /// `GET /health`.
    pub async fn health(&self) -> Result<Health> {
        self.json(self.request(Method::GET, "/health")).await
    }

    /// `GET /v1/types`: installed sandbox types.
    pub async fn types(&self) -> Result<Vec<String>> {
        #[derive(serde::Deserialize)]
        struct TypeList {
            types: Vec<String>,
        }
        let l: TypeList = self.json(self.request(Method::GET, "/v1/types")).await?;
        Ok(l.types)
    }

    /// `POST /v1/sandboxes`: create a sandbox; returns when it is running.
    pub async fn create(&self, req: &CreateSandboxRequest) -> Result<Sandbox> {
        self.json(self.request(Method::POST, "/v1/sandboxes").json(req))
            .await
    }

    /// Where to connect to port `port` of a sandbox published at its creation
    /// (`CreateSandboxRequest::ports`): its `host:port` on the server's machine, from the
    /// sandbox's `ports`; `None` when that port is not published.
    pub fn published_address(sandbox: &Sandbox, port: u16) -> Option<&str> {
        sandbox
            .ports
            .iter()
            .find(|p| p.port == port)
            .map(|p| p.address.as_str())
    }

    /// `GET /v1/sandboxes/{id}`.
    pub async fn get(&self, id: &str) -> Result<Sandbox> {
        self.json(self.request(Method::GET, &Self::sandbox_path(id, "")))
            .await
    }

    /// `GET /v1/sandboxes`: sandboxes whose metadata contains every pair of `filter`, oldest
    /// first.
    pub async fn list(&self, filter: &BTreeMap<String, String>) -> Result<Vec<Sandbox>> {
        let query: Vec<(String, &String)> = filter
            .iter()
            .map(|(k, v)| (format!("metadata.{k}"), v))
            .collect();
        let l: SandboxList = self
            .json(self.request(Method::GET, "/v1/sandboxes").query(&query))
            .await?;
        Ok(l.sandboxes)
    }

    /// `DELETE /v1/sandboxes/{id}`.
    pub async fn delete(&self, id: &str) -> Result<()> {
        self.empty(self.request(Method::DELETE, &Self::sandbox_path(id, "")))
            .await
    }

    /// `POST /v1/sandboxes/{id}/timeout`: the sandbox now expires `secs` from now (0 = never).
    pub async fn set_timeout(&self, id: &str, secs: u64) -> Result<Sandbox> {
        self.json(
            self.request(Method::POST, &Self::sandbox_path(id, "/timeout"))
                .json(&SetTimeoutRequest { timeout_secs: secs }),
        )
        .await
    }

    /// `POST /v1/sandboxes/{id}/pause`: freeze the sandbox (its processes and memory kept)
    /// until [`Client::resume`].
    pub async fn pause(&self, id: &str) -> Result<Sandbox> {
        self.json(self.request(Method::POST, &Self::sandbox_path(id, "/pause")))
            .await
    }

    /// `POST /v1/sandboxes/{id}/restart`: start a new box for the sandbox (one in state
    /// `error`, typically), keeping its id and `/workspace`.
    pub async fn restart(&self, id: &str) -> Result<Sandbox> {
        self.json(self.request(Method::POST, &Self::sandbox_path(id, "/restart")))
            .await
    }

    /// `POST /v1/sandboxes/{id}/resume`: let a paused sandbox run on.
    pub async fn resume(&self, id: &str) -> Result<Sandbox> {
        self.json(self.request(Method::POST, &Self::sandbox_path(id, "/resume")))
            .await
    }

    /// `POST /v1/sandboxes/{id}/exec`, buffered: waits for the command to end.
    pub async fn exec(&self, id: &str, req: &ExecRequest) -> Result<ExecResult> {
        let req = ExecRequest {
            stream: false,
            ..req.clone()
        };
        self.json(
            self.request(Method::POST, &Self::sandbox_path(id, "/exec"))
                .json(&req),
        )
        .await
    }

    /// `POST /v1/sandboxes/{id}/exec` with `"stream": true`: events arrive as they happen.
    /// Dropping the stream closes the connection, which kills the command.
    ///
    /// A failure after the command started arrives as an [`ExecEvent::Error`] item; a broken
    /// connection or an undecodable line as an `Err` item. The last event (`Exit`, or `Error`)
    /// comes once the response has ended, so stopping there keeps the connection for the
    /// next request.
    pub async fn exec_stream(&self, id: &str, req: &ExecRequest) -> Result<ExecEventStream> {
        let req = ExecRequest {
            stream: true,
            ..req.clone()
        };
        let resp = self
            .send(
                self.request(Method::POST, &Self::sandbox_path(id, "/exec"))
                    .json(&req),
            )
            .await?;
        Ok(Box::pin(ending_with_the_response(ndjson::<ExecEvent>(
            resp,
        ))))
    }

    /// `POST /v1/sandboxes/{id}/python`: run code in the sandbox's persistent interpreter.
    pub async fn python(&self, id: &str, req: &PythonRequest) -> Result<PythonResult> {
        self.json(
            self.request(Method::POST, &Self::sandbox_path(id, "/python"))
                .json(req),
        )
        .await
    }

    /// `GET /v1/sandboxes/{id}/files?path=`: a whole file (relative to `/workspace`).
    pub async fn read_file(&self, id: &str, path: &str) -> Result<Bytes> {
        let resp = self
            .send(
                self.request(Method::GET, &Self::sandbox_path(id, "/files"))
                    .query(&[("path", path)]),
            )
            .await?;
        resp.bytes().await.map_err(Error::Http)
    }

    /// Like [`read_file`](Self::read_file), as a stream of pieces as they arrive.
    pub async fn read_file_stream(&self, id: &str, path: &str) -> Result<ByteStream> {
        let resp = self
            .send(
                self.request(Method::GET, &Self::sandbox_path(id, "/files"))
                    .query(&[("path", path)]),
            )
            .await?;
        Ok(Box::pin(
            resp.bytes_stream().map(|r| r.map_err(Error::Http)),
        ))
    }

    /// `PUT /v1/sandboxes/{id}/files?path=`: write a whole file (parents are created; an old
    /// file is replaced atomically).
    pub async fn write_file(
        &self,
        id: &str,
        path: &str,
        data: impl Into<Bytes>,
    ) -> Result<FileEntry> {
        self.put_file(id, path, None, reqwest::Body::from(data.into()))
            .await
    }

    /// Like [`write_file`](Self::write_file), streaming the content from `stream`, with the
    /// permission bits of a new file (`mode`, e.g. `0o755`).
    pub async fn write_file_stream<S>(
        &self,
        id: &str,
        path: &str,
        mode: Option<u32>,
        stream: S,
    ) -> Result<FileEntry>
    where
        S: TryStream + Send + 'static,
        S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        Bytes: From<S::Ok>,
    {
        self.put_file(id, path, mode, reqwest::Body::wrap_stream(stream))
            .await
    }

    async fn put_file(
        &self,
        id: &str,
        path: &str,
        mode: Option<u32>,
        body: reqwest::Body,
    ) -> Result<FileEntry> {
        let mut query = vec![("path", path.to_string())];
        if let Some(m) = mode {
            query.push(("mode", format!("{m:o}")));
        }
        self.json(
            self.request(Method::PUT, &Self::sandbox_path(id, "/files"))
                .query(&query)
                .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .body(body),
        )
        .await
    }

    /// `GET /v1/sandboxes/{id}/files/list`: a directory's entries to `depth` levels (default 1),
    /// parents before children.
    pub async fn list_files(
        &self,
        id: &str,
        path: &str,
        depth: Option<u32>,
    ) -> Result<Vec<FileEntry>> {
        let mut query = vec![("path", path.to_string())];
        if let Some(d) = depth {
            query.push(("depth", d.to_string()));
        }
        let l: FileList = self
            .json(
                self.request(Method::GET, &Self::sandbox_path(id, "/files/list"))
                    .query(&query),
            )
            .await?;
        Ok(l.entries)
    }

    /// `GET /v1/sandboxes/{id}/files/stat`: one path's entry.
    pub async fn stat(&self, id: &str, path: &str) -> Result<FileEntry> {
        self.json(
            self.request(Method::GET, &Self::sandbox_path(id, "/files/stat"))
                .query(&[("path", path)]),
        )
        .await
    }

    /// `POST /v1/sandboxes/{id}/files/mkdir`: false when it existed (with `parents`).
    pub async fn mkdir(&self, id: &str, path: &str, parents: bool) -> Result<bool> {
        let r: MkdirResult = self
            .json(
                self.request(Method::POST, &Self::sandbox_path(id, "/files/mkdir"))
                    .json(&MkdirRequest {
                        path: path.into(),
                        parents,
                    }),
            )
            .await?;
        Ok(r.created)
    }

    /// `POST /v1/sandboxes/{id}/files/move`: rename; returns the entry at its new path.
    pub async fn move_path(&self, id: &str, from: &str, to: &str) -> Result<FileEntry> {
        self.json(
            self.request(Method::POST, &Self::sandbox_path(id, "/files/move"))
                .json(&MoveRequest {
                    from: from.into(),
                    to: to.into(),
                }),
        )
        .await
    }

    /// `DELETE /v1/sandboxes/{id}/files`: remove a path (`recursive` for a non-empty
    /// directory).
    pub async fn remove(&self, id: &str, path: &str, recursive: bool) -> Result<()> {
        let mut query = vec![("path", path.to_string())];
        if recursive {
            query.push(("recursive", "true".into()));
        }
        self.empty(
            self.request(Method::DELETE, &Self::sandbox_path(id, "/files"))
                .query(&query),
        )
        .await
    }
}

/// An exec's events, its last one (`Exit`, or `Error`) passed on only once the response has
/// ended. The server ends it right after that event; a caller that stops reading at the exit,
/// as most do, would otherwise drop the body a moment before its end, and the connection with
/// it (an unfinished body cannot be reused), so that its next request had to open a new one.
fn ending_with_the_response(
    events: impl Stream<Item = Result<ExecEvent>> + Send + 'static,
) -> impl Stream<Item = Result<ExecEvent>> + Send {
    futures::stream::unfold(Some(Box::pin(events)), |state| async move {
        let mut events = state?;
        let item = events.next().await?;
        if matches!(item, Ok(ExecEvent::Exit { .. } | ExecEvent::Error { .. })) {
            // Nothing of this command's follows its last event.
            while events.next().await.is_some() {}
            return Some((item, None));
        }
        Some((item, Some(events)))
    })
}

/// Parse a newline-delimited JSON body into items as its bytes arrive.
fn ndjson<T: DeserializeOwned + Send + 'static>(
    resp: Response,
) -> impl Stream<Item = Result<T>> + Send {
    let bytes = resp.bytes_stream();
    NdjsonState {
        body: Box::pin(bytes),
        buf: Vec::new(),
        done: false,
    }
    .into_stream()
}

struct NdjsonState {
    body: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    buf: Vec<u8>,
    done: bool,
}

impl NdjsonState {
    fn into_stream<T: DeserializeOwned + Send + 'static>(self) -> impl Stream<Item = Result<T>> {
        futures::stream::unfold(self, |mut st| async move {
            loop {
                if let Some(nl) = st.buf.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = st.buf.drain(..=nl).collect();
                    let line = line.trim_ascii();
                    if line.is_empty() {
                        continue;
                    }
                    let item = serde_json::from_slice(line).map_err(|e| {
                        Error::Decode(format!(
                            "bad line {:?}: {e}",
                            String::from_utf8_lossy(&line[..line.len().min(200)])
                        ))
                    });
                    return Some((item, st));
                }
                if st.done {
                    // A last line without a newline still counts.
                    let rest = std::mem::take(&mut st.buf);
                    let rest = rest.trim_ascii();
                    if rest.is_empty() {
                        return None;
                    }
                    let item = serde_json::from_slice(rest)
                        .map_err(|e| Error::Decode(format!("bad last line: {e}")));
                    return Some((item, st));
                }
                match st.body.next().await {
                    Some(Ok(chunk)) => st.buf.extend_from_slice(&chunk),
                    Some(Err(e)) => {
                        st.done = true;
                        st.buf.clear();
                        return Some((Err(Error::Http(e)), st));
                    }
                    None => st.done = true,
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_encoded() {
        assert_eq!(segment("sb-0123456789abcdef"), "sb-0123456789abcdef");
        assert_eq!(segment("../health"), "..%2Fhealth");
        assert_eq!(segment("a b?"), "a%20b%3F");
    }

    #[test]
    fn api_errors_show_their_code() {
        let e = Error::Api {
            status: 404,
            code: ErrorCode::NotFound,
            message: "sandbox x not found".into(),
        };
        assert_eq!(e.to_string(), "sandbox x not found (not_found)");
        assert_eq!(e.code(), Some(ErrorCode::NotFound));
    }

    #[test]
    fn base_url_is_trimmed_and_token_redacted() {
        let c = Client::new("http://h:1/").with_token("s3cr3t");
        assert_eq!(c.base_url(), "http://h:1");
        assert!(!format!("{c:?}").contains("s3cr3t"));
        assert_eq!(
            Client::sandbox_path("sb-1", "/exec"),
            "/v1/sandboxes/sb-1/exec"
        );
    }

    /// A loopback HTTP/1.1 server that answers every request on a connection in turn:
    /// `POST …/exec` with a chunked stream of one `exit` line whose end (the last chunk) comes
    /// `end_after` later, anything else with `/health`'s answer. Returns its URL and the
    /// number of connections that the client closed so far.
    fn late_ending_server(
        end_after: std::time::Duration,
    ) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::io::{BufRead, BufReader, Read, Write};
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let closed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = closed.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let count = count.clone();
                std::thread::spawn(move || {
                    let mut out = stream.try_clone().unwrap();
                    let mut reader = BufReader::new(stream);
                    // Answers are written regardless of errors: a closed connection shows
                    // as the end of its requests.
                    loop {
                        let (mut request_line, mut length) = (String::new(), 0usize);
                        if !matches!(reader.read_line(&mut request_line), Ok(n) if n > 0) {
                            count.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                        loop {
                            let mut header = String::new();
                            reader.read_line(&mut header).unwrap();
                            if header.trim().is_empty() {
                                break;
                            }
                            if let Some((k, v)) = header.split_once(':') {
                                if k.eq_ignore_ascii_case("content-length") {
                                    length = v.trim().parse().unwrap();
                                }
                            }
                        }
                        let mut body = vec![0; length];
                        reader.read_exact(&mut body).unwrap();
                        if request_line.contains("/exec") {
                            let line = "{\"type\":\"exit\",\"exit_code\":0,\"timed_out\":false,\"duration_ms\":1}\n";
                            let _ = write!(
                                out,
                                "HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\n\
                                 transfer-encoding: chunked\r\n\r\n{:x}\r\n{line}\r\n",
                                line.len()
                            );
                            std::thread::sleep(end_after);
                            let _ = out.write_all(b"0\r\n\r\n");
                        } else {
                            let health = "{\"status\":\"healthy\",\"version\":\"0\"}";
                            let _ = write!(
                                out,
                                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                                 content-length: {}\r\n\r\n{health}",
                                health.len()
                            );
                        }
                    }
                });
            }
        });
        (url, closed)
    }

    /// The exit event comes out once the response has ended, so that a caller that stops
    /// reading there does not drop an unfinished body, which would close its connection.
    /// Against a server that ends the response a while after the exit line, nothing is closed
    /// (without the wait the first connection was, at the drop: the next request needed a new
    /// one).
    #[tokio::test(flavor = "multi_thread")]
    async fn a_stream_read_to_its_exit_keeps_its_connection() {
        let end_after = std::time::Duration::from_millis(100);
        let (url, closed) = late_ending_server(end_after);
        let c = Client::new(url);
        let mut events = c
            .exec_stream("sb-1", &ExecRequest::default())
            .await
            .unwrap();
        match events.next().await {
            Some(Ok(ExecEvent::Exit { exit_code, .. })) => assert_eq!(exit_code, Some(0)),
            other => panic!("{other:?}"),
        }
        drop(events);
        c.health().await.unwrap();
        // Time for a closed connection's server thread to finish its answer and see the end.
        tokio::time::sleep(end_after * 3).await;
        assert_eq!(closed.load(std::sync::atomic::Ordering::SeqCst), 0);
    }
}
