//! A router over a manager on the fake backend of `sandboxd_server::testing`.

#![allow(dead_code)]

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use sandboxd_core::templates::Templates;
use sandboxd_core::{Manager, ManagerConfig};
use sandboxd_server::testing::FakeBackend;
use sandboxd_server::{router, AppState};
use sandboxd_store::MemoryStore;
use tower::ServiceExt;

/// A router over a manager on the fake backend, with a `base` template installed.
pub struct Harness {
    pub app: Router,
    pub state: AppState,
    pub backend: Arc<FakeBackend>,
    pub manager: Arc<Manager>,
    _dir: tempfile::TempDir,
}

impl Harness {
    pub async fn new(token: Option<&str>) -> Harness {
        Self::with_config(token, |_| {}).await
    }

    pub async fn with_config(token: Option<&str>, f: impl FnOnce(&mut ManagerConfig)) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let templates = dir.path().join("templates");
        std::fs::create_dir_all(templates.join("base/rootfs")).unwrap();
        std::fs::write(templates.join("base/ready"), "").unwrap();
        let socks = dir.path().join("socks");
        std::fs::create_dir_all(&socks).unwrap();
        let backend = FakeBackend::new(socks);
        let mut config = ManagerConfig {
            mount_dir: dir.path().join("workspaces"),
            ..Default::default()
        };
        f(&mut config);
        let manager = Manager::start(
            backend.clone(),
            Arc::new(MemoryStore::new()),
            Templates::new(templates),
            config,
        )
        .await
        .unwrap();
        let state = AppState::new(manager.clone()).with_token(token.map(String::from));
        let app = router(state.clone());
        Harness {
            app,
            state,
            backend,
            manager,
            _dir: dir,
        }
    }

    /// The same manager behind a router whose state `f` changed (e.g. heartbeat settings).
    pub fn with_state(mut self, f: impl FnOnce(AppState) -> AppState) -> Harness {
        self.state = f(self.state);
        self.app = router(self.state.clone());
        self
    }

    /// Send a request; returns status, headers and the whole body.
    pub async fn call(&self, req: Request<Body>) -> (StatusCode, HeaderMap, Bytes) {
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        (parts.status, parts.headers, bytes)
    }

    /// Send a request and parse a JSON reply.
    pub async fn json(
        &self,
        method: Method,
        uri: &str,
        body: Option<serde_json::Value>,
    ) -> (StatusCode, serde_json::Value) {
        let (status, _, bytes) = self.call(json_req(method, uri, body, None)).await;
        let v = if bytes.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&bytes)))
        };
        (status, v)
    }

    /// Create a sandbox and return its id.
    pub async fn create(&self, body: serde_json::Value) -> String {
        let (status, v) = self.json(Method::POST, "/v1/sandboxes", Some(body)).await;
        assert_eq!(status, StatusCode::CREATED, "{v}");
        v["id"].as_str().unwrap().to_string()
    }
}

/// A request with an optional JSON body and bearer token.
pub fn json_req(
    method: Method,
    uri: &str,
    body: Option<serde_json::Value>,
    token: Option<&str>,
) -> Request<Body> {
    let mut b = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    match body {
        Some(v) => b
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&v).unwrap()))
            .unwrap(),
        None => b.body(Body::empty()).unwrap(),
    }
}

/// Assert the error shape and code of a reply.
pub fn assert_error(v: &serde_json::Value, code: &str) {
    assert_eq!(v["error"]["code"], code, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{v}"
    );
}
