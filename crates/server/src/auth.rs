//! Bearer-token authentication (`BEARER_TOKEN`).
//!
//! When a token is configured, every route except [`PUBLIC_PATHS`] needs
//! `Authorization: Bearer <token>`. The comparison takes the same time whatever the offered
//! token is, and the token is never logged.

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::AppState;

/// Routes served without a token.
pub const PUBLIC_PATHS: &[&str] = &["/health", "/openapi.json"];

/// Compare `offered` with `expected` in time that depends only on `expected`'s length.
pub fn constant_time_eq(offered: &[u8], expected: &[u8]) -> bool {
    // A length mismatch still walks all of `expected`, so timing tells nothing about where
    // the first difference is.
    let mut diff = offered.len() ^ expected.len();
    for (i, &e) in expected.iter().enumerate() {
        let o = offered.get(i).copied().unwrap_or(!e);
        diff |= usize::from(o ^ e);
    }
    std::hint::black_box(diff) == 0
}

/// The token of an `Authorization: Bearer <token>` header value.
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let scheme = value.get(..7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    Some(value[7..].trim_ascii())
}

/// Middleware: refuse requests without the configured token.
pub async fn require_token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(expected) = state.bearer_token.as_deref() else {
        return next.run(req).await;
    };
    if PUBLIC_PATHS.contains(&req.uri().path()) {
        return next.run(req).await;
    }
    let ok = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| bearer(v.as_bytes()))
        .is_some_and(|t| constant_time_eq(t, expected.as_bytes()));
    if ok {
        next.run(req).await
    } else if crate::agentscope::is_agentscope_path(req.uri().path()) {
        // AgentScope's clients get FastAPI's shape: `{"detail": ...}`.
        crate::agentscope::error::DetailError(ApiError::unauthorized()).into_response()
    } else {
        ApiError::unauthorized().into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secreT", b"secret"));
        assert!(!constant_time_eq(b"secret-and-more", b"secret"));
        assert!(!constant_time_eq(b"sec", b"secret"));
        assert!(!constant_time_eq(b"", b"secret"));
        // Lengths that differ by a multiple of 256 must not fold to equal.
        let long = vec![b'a'; 256 + 3];
        assert!(!constant_time_eq(&long, b"aaa"));
    }

    #[test]
    fn bearer_header() {
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer  abc "), Some(&b"abc"[..]));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bear"), None);
    }
}
