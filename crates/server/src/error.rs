//! The one HTTP error type of the server: every failure leaves as [`ApiError`], which maps a
//! stable [`ErrorCode`] to a status and the JSON body `{"error": {"code", "message"}}`.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sandboxd_core::CoreError;
use sandboxd_types::{ErrorBody, ErrorCode};

/// An error on its way to the client.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// Stable code; decides the status.
    pub code: ErrorCode,
    /// Message for people; never carries internal details for [`ErrorCode::Internal`].
    pub message: String,
}

impl ApiError {
    /// An error with this code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
        }
    }

    /// `invalid_request` (400).
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message)
    }

    /// `not_found` (404).
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    /// `unauthorized` (401).
    pub fn unauthorized() -> Self {
        Self::new(
            ErrorCode::Unauthorized,
            "missing or wrong bearer token (send `Authorization: Bearer <token>`)",
        )
    }

    /// `internal` (500) with a generic message; the detail goes to the log only.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        Self::new(ErrorCode::Internal, "internal server error")
    }

    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        status_of(self.code)
    }
}

/// The HTTP status that stands for an error code.
pub fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::InvalidRequest => StatusCode::BAD_REQUEST,
        ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorCode::NotFound | ErrorCode::UnknownType => StatusCode::NOT_FOUND,
        ErrorCode::PathOutsideSandbox => StatusCode::FORBIDDEN,
        ErrorCode::AlreadyExists | ErrorCode::NotRunning => StatusCode::CONFLICT,
        ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::LimitReached => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::BackendFailed | ErrorCode::AgentFailed => StatusCode::BAD_GATEWAY,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Timeout => StatusCode::GATEWAY_TIMEOUT,
        ErrorCode::InsufficientStorage => StatusCode::INSUFFICIENT_STORAGE,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<CoreError> for ApiError {
    fn from(e: CoreError) -> Self {
        let code = e.code();
        match code {
            ErrorCode::Internal => ApiError::internal(&e),
            ErrorCode::BackendFailed
            | ErrorCode::AgentFailed
            | ErrorCode::Unavailable
            | ErrorCode::Timeout
            | ErrorCode::InsufficientStorage => {
                tracing::warn!(code = ?code, error = %e, "request failed");
                let message = if from_the_host(&e) {
                    redact_host_paths(&e.to_string())
                } else {
                    e.to_string()
                };
                if code == ErrorCode::InsufficientStorage && !message.contains("disk is full") {
                    ApiError::new(code, format!("the host's disk is full: {message}"))
                } else {
                    ApiError::new(code, message)
                }
            }
            _ => ApiError::new(code, e.to_string()),
        }
    }
}

/// Whether the error comes from the host (a backend's or the workspaces' own operation), so that
/// any path it names is one of the host's. An agent's errors name paths inside the sandbox,
/// which the caller needs to see; a backend's refusal of a spec names what the caller asked.
fn from_the_host(e: &CoreError) -> bool {
    use sandboxd_core::backend::BackendError;
    matches!(e, CoreError::Workspace(_))
        || matches!(e, CoreError::Backend(b) if !matches!(b, BackendError::BadSpec(_)))
}

/// What stands in a message for a path of the host.
const HOST_PATH: &str = "<host path>";

/// `message` with every absolute path in it replaced by [`HOST_PATH`]: the server's directories
/// (state, run, workspaces, templates) and whatever a runtime names are the operator's business,
/// not the caller's, and the log keeps the whole message. A path starts with `/` at the start
/// of the message or after a space, quote, `(`, `[` or `=`, and ends at white space, a quote,
/// `)`, `]`, `,`, or a `:` that ends a clause (followed by a space or the end).
fn redact_host_paths(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    let mut prev: Option<char> = None;
    while let Some(c) = rest.chars().next() {
        let starts_path = c == '/'
            && prev.is_none_or(|p| p.is_whitespace() || "\"'([=".contains(p))
            && rest[1..].starts_with(|n: char| !n.is_whitespace());
        if !starts_path {
            out.push(c);
            prev = Some(c);
            rest = &rest[c.len_utf8()..];
            continue;
        }
        let bytes = rest.as_bytes();
        let mut end = rest.len();
        for (i, ch) in rest.char_indices() {
            let ends_clause = ch == ':' && bytes.get(i + 1).is_none_or(|b| b.is_ascii_whitespace());
            if ch.is_whitespace() || "\"'),]".contains(ch) || ends_clause {
                end = i;
                break;
            }
        }
        out.push_str(HOST_PATH);
        prev = Some('>');
        rest = &rest[end..];
    }
    out
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "the JSON body is larger than {} bytes",
                    crate::JSON_BODY_LIMIT
                ),
            );
        }
        match r {
            JsonRejection::MissingJsonContentType(_) => {
                ApiError::invalid("expected a JSON body with `Content-Type: application/json`")
            }
            r => ApiError::invalid(r.body_text()),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::invalid(r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::not_found(r.body_text())
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let unauthorized = self.code == ErrorCode::Unauthorized;
        let body = ErrorBody {
            error: sandboxd_types::ApiError {
                code: self.code,
                message: self.message,
            },
        };
        let mut resp = (status, axum::Json(body)).into_response();
        if unauthorized {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_its_status() {
        use ErrorCode::*;
        let table = [
            (InvalidRequest, 400),
            (Unauthorized, 401),
            (NotFound, 404),
            (UnknownType, 404),
            (PathOutsideSandbox, 403),
            (AlreadyExists, 409),
            (NotRunning, 409),
            (PayloadTooLarge, 413),
            (LimitReached, 429),
            (BackendFailed, 502),
            (AgentFailed, 502),
            (Unavailable, 503),
            (Timeout, 504),
            (InsufficientStorage, 507),
            (Internal, 500),
        ];
        for (code, status) in table {
            assert_eq!(status_of(code).as_u16(), status, "{code:?}");
        }
    }

    #[test]
    fn host_paths_are_redacted() {
        let cases = [
            (
                "could not start sandbox: mount overlay on /var/lib/sandboxd/native/boxes/sb-1/rootfs: Operation not permitted (os error 1)",
                "could not start sandbox: mount overlay on <host path>: Operation not permitted (os error 1)",
            ),
            ("create workspace /srv/ws/a:b", "create workspace <host path>"),
            ("/run/x failed", "<host path> failed"),
            ("open \"/etc/x y\" (at /a/b), [/c]", "open \"<host path> y\" (at <host path>), [<host path>]"),
            ("lowerdir=/t/rootfs,upperdir=/u", "lowerdir=<host path>,upperdir=<host path>"),
            ("a/b and 1/2 and / alone and no path", "a/b and 1/2 and / alone and no path"),
            ("ünïcode /ß/ü: done", "ünïcode <host path>: done"),
            ("", ""),
        ];
        for (input, want) in cases {
            assert_eq!(redact_host_paths(input), want, "{input}");
        }
    }

    #[test]
    fn backend_errors_name_no_host_path_but_agent_errors_keep_theirs() {
        use sandboxd_core::backend::BackendError;
        let e: ApiError = CoreError::Backend(BackendError::Io {
            context: "create workspace /var/lib/sandboxd/workspaces/s1".into(),
            source: std::io::Error::from_raw_os_error(libc::ENOTDIR),
        })
        .into();
        assert_eq!(e.code, ErrorCode::BackendFailed);
        assert!(!e.message.contains("/var/lib"), "{}", e.message);
        assert!(
            e.message.starts_with("create workspace <host path>: "),
            "{}",
            e.message
        );
        let e: ApiError =
            CoreError::Backend(BackendError::BadSpec("image /x is not here".into())).into();
        assert!(e.message.contains("/x"), "{}", e.message);
        let e: ApiError = CoreError::Agent(sandboxd_protocol::AgentError {
            kind: sandboxd_protocol::AgentErrorKind::SpawnFailed,
            message: "exec: cannot run /usr/bin/nope: No such file or directory".into(),
        })
        .into();
        assert_eq!(e.code, ErrorCode::AgentFailed);
        assert!(e.message.contains("/usr/bin/nope"), "{}", e.message);
    }

    #[test]
    fn internal_errors_do_not_leak() {
        let e: ApiError = CoreError::Store(sandboxd_core::store::StoreError::Conflict(
            "secret-detail".into(),
        ))
        .into();
        assert_eq!(e.code, ErrorCode::Internal);
        assert!(!e.message.contains("secret-detail"));
    }
}
