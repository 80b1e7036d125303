//! Authentication: the admin token (`BEARER_TOKEN`) and named API keys (`API_KEYS`,
//! `API_KEYS_FILE`), each key a tenant with its own sandboxes.
//!
//! When any token is configured, every route except [`PUBLIC_PATHS`] needs
//! `Authorization: Bearer <token>`. The middleware [`require_token`] decides who the caller is
//! and puts a [`Caller`] in the request's extensions; handlers take it with the [`Caller`]
//! extractor and only ever show, touch or remove sandboxes the caller may see
//! ([`Caller::may_see`]): a tenant's own, or every one for the admin.
//!
//! Only SHA-256 digests of the tokens are kept in memory ([`Keys`]). An offered token is
//! hashed once and its digest compared with *every* key's digest in constant time
//! (`subtle`), and the match is picked without a branch, so neither which key matched nor how
//! much of a token was right shows in the time a request takes. No token is ever logged or
//! put in a `Debug` output or an error body.

use std::sync::Arc;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::header;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sandboxd_types::Sandbox;
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

use crate::error::ApiError;
use crate::AppState;

/// Routes served without a token.
pub const PUBLIC_PATHS: &[&str] = &["/health", "/openapi.json"];

/// Metadata key holding the name of the API key a sandbox belongs to (absent: the admin's,
/// or made before API keys existed). The server sets it; requests cannot.
pub const META_TENANT: &str = "sandboxd.tenant";

/// Prefix of the metadata keys only the server writes.
pub const RESERVED_META_PREFIX: &str = "sandboxd.";

/// Who sent a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The `BEARER_TOKEN`, or anyone when no token is configured: sees every sandbox.
    Admin,
    /// The API key of this name: sees only the sandboxes it made.
    Tenant(Arc<str>),
}

impl Caller {
    /// The tenant's name (`None` for the admin).
    pub fn tenant(&self) -> Option<&str> {
        match self {
            Caller::Admin => None,
            Caller::Tenant(name) => Some(name),
        }
    }

    /// Whether the caller may see, use and remove `sandbox`.
    pub fn may_see(&self, sandbox: &Sandbox) -> bool {
        match self {
            Caller::Admin => true,
            Caller::Tenant(name) => sandbox
                .metadata
                .get(META_TENANT)
                .is_some_and(|t| t.as_str() == &**name),
        }
    }

    /// The workspace session a tenant's `session_id` stands for: `<tenant>.<session>`, so that
    /// two tenants naming the same session get two workspaces (a key name holds no `.`, so
    /// the mapped names of two tenants never meet). The admin's is unchanged.
    pub fn session(&self, session: &str) -> String {
        match self {
            Caller::Admin => session.to_string(),
            Caller::Tenant(name) => format!("{name}.{session}"),
        }
    }

    /// `sandbox` as this caller sees it: a tenant's own session without its tenant prefix
    /// ([`Caller::session`]).
    pub fn view(&self, mut sandbox: Sandbox) -> Sandbox {
        if let Caller::Tenant(name) = self {
            if let Some(rest) = sandbox
                .session_id
                .strip_prefix(&**name)
                .and_then(|r| r.strip_prefix('.'))
            {
                sandbox.session_id = rest.to_string();
            }
        }
        sandbox
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        // [`require_token`] always sets it; without it (a router built without the
        // middleware) nobody is let in.
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(ApiError::unauthorized)
    }
}

/// One named API key: its name and its token's SHA-256 digest.
#[derive(Clone, PartialEq, Eq)]
struct KeyDigest {
    name: Arc<str>,
    digest: [u8; 32],
}

/// The tokens the server accepts, as digests.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Keys {
    admin: Option<[u8; 32]>,
    tenants: Vec<KeyDigest>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.tenants.iter().map(|k| &*k.name).collect();
        f.debug_struct("Keys")
            .field("admin", &self.admin.map(|_| "<redacted>"))
            .field("tenants", &names)
            .finish()
    }
}

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

impl Keys {
    /// The admin token (if any) and the named keys (`(name, token)`); empty tokens are none.
    pub fn new<'a>(
        admin: Option<&str>,
        tenants: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Keys {
        Keys {
            admin: admin
                .filter(|t| !t.is_empty())
                .map(|t| digest(t.as_bytes())),
            tenants: tenants
                .into_iter()
                .filter(|(_, t)| !t.is_empty())
                .map(|(name, token)| KeyDigest {
                    name: Arc::from(name),
                    digest: digest(token.as_bytes()),
                })
                .collect(),
        }
    }

    /// Whether any token is configured (else every route is open, to the admin).
    pub fn required(&self) -> bool {
        self.admin.is_some() || !self.tenants.is_empty()
    }

    /// The names of the API keys.
    pub fn tenant_names(&self) -> impl Iterator<Item = &str> {
        self.tenants.iter().map(|k| &*k.name)
    }

    /// Who offers `token`, if anyone. Every key is compared, in constant time, whatever
    /// matches.
    pub fn authenticate(&self, token: &[u8]) -> Option<Caller> {
        let offered = digest(token);
        // 0: nothing; 1: the admin; 2 + i: tenant i.
        let mut found = 0u64;
        if let Some(admin) = &self.admin {
            found.conditional_assign(&1, offered.ct_eq(admin));
        }
        for (i, k) in self.tenants.iter().enumerate() {
            found.conditional_assign(&(2 + i as u64), offered.ct_eq(&k.digest));
        }
        match found {
            0 => None,
            1 => Some(Caller::Admin),
            n => Some(Caller::Tenant(self.tenants[(n - 2) as usize].name.clone())),
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header value.
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let scheme = value.get(..7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    Some(value[7..].trim_ascii())
}

/// Middleware: refuse requests without a configured token, and tell the handlers who the
/// caller is ([`Caller`]).
pub async fn require_token(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    if !state.keys.required() {
        req.extensions_mut().insert(Caller::Admin);
        return next.run(req).await;
    }
    if PUBLIC_PATHS.contains(&req.uri().path()) {
        return next.run(req).await;
    }
    let caller = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| bearer(v.as_bytes()))
        .and_then(|t| state.keys.authenticate(t));
    if let Some(caller) = caller {
        if let Some(t) = caller.tenant() {
            tracing::trace!(tenant = t, "request authenticated");
        }
        req.extensions_mut().insert(caller);
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
    fn authentication() {
        let keys = Keys::new(
            Some("admin-token"),
            [
                ("alice", "alice-token-0123456789"),
                ("bob", "bob-token-0123456789"),
            ],
        );
        assert!(keys.required());
        assert_eq!(keys.authenticate(b"admin-token"), Some(Caller::Admin));
        assert_eq!(
            keys.authenticate(b"alice-token-0123456789"),
            Some(Caller::Tenant("alice".into()))
        );
        assert_eq!(
            keys.authenticate(b"bob-token-0123456789"),
            Some(Caller::Tenant("bob".into()))
        );
        assert_eq!(keys.authenticate(b"bob-token-012345678"), None);
        assert_eq!(keys.authenticate(b""), None);
        assert_eq!(keys.authenticate(b"admin-token "), None);
        assert!(!Keys::new(None, []).required());
        assert!(!Keys::new(Some(""), [("a", "")]).required());
        // Without an admin token nothing is the admin.
        let tenants = Keys::new(None, [("alice", "alice-token-0123456789")]);
        assert_eq!(tenants.authenticate(b""), None);
    }

    #[test]
    fn no_token_in_debug() {
        let keys = Keys::new(Some("admin-token"), [("alice", "alice-token-0123456789")]);
        let shown = format!("{keys:?}");
        assert!(!shown.contains("admin-token") && !shown.contains("alice-token"));
        assert!(shown.contains("alice"), "{shown}");
    }

    #[test]
    fn visibility_and_sessions() {
        let mut sb: Sandbox = serde_json::from_value(serde_json::json!({
            "id": "sb-0123456789abcdef", "type": "base", "state": "running",
            "session_id": "alice.s1", "backend": "fake", "created_at_ms": 0,
            "resources": {}, "metadata": {}
        }))
        .unwrap();
        let alice = Caller::Tenant("alice".into());
        let bob = Caller::Tenant("bob".into());
        assert!(Caller::Admin.may_see(&sb));
        assert!(
            !alice.may_see(&sb),
            "a sandbox without a tenant is the admin's"
        );
        sb.metadata.insert(META_TENANT.into(), "alice".into());
        assert!(alice.may_see(&sb));
        assert!(!bob.may_see(&sb));
        assert_eq!(alice.session("s1"), "alice.s1");
        assert_eq!(Caller::Admin.session("s1"), "s1");
        assert_eq!(alice.view(sb.clone()).session_id, "s1");
        assert_eq!(bob.view(sb.clone()).session_id, "alice.s1");
        assert_eq!(Caller::Admin.view(sb).session_id, "alice.s1");
    }

    #[test]
    fn bearer_header() {
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer  abc "), Some(&b"abc"[..]));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bear"), None);
    }
}
