//! The OpenAPI 3 document of the API, generated from the handlers and the wire types.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::agentscope::openapi::AgentScopePaths;
use crate::routes::{exec, files, meta, sandboxes};

/// The API description served at `/openapi.json`.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "sandboxd",
        description = "Self-hosted sandboxes for AI agents: create isolated Linux environments, \
                       run commands and Python in them, move files in and out. Every error is \
                       `{\"error\": {\"code\", \"message\"}}` with a stable `code`."
    ),
    paths(
        meta::health,
        meta::openapi,
        meta::types,
        sandboxes::create,
        sandboxes::list,
        sandboxes::get,
        sandboxes::delete,
        sandboxes::set_timeout,
        sandboxes::pause,
        sandboxes::resume,
        sandboxes::restart,
        exec::exec,
        exec::python,
        files::read,
        files::write,
        files::remove,
        files::list,
        files::stat,
        files::mkdir,
        files::move_path,
    ),
    components(schemas(
        sandboxd_types::ErrorBody,
        sandboxd_types::ApiError,
        sandboxd_types::ErrorCode,
        sandboxd_types::ExecEvent,
    )),
    modifiers(&BearerAuth, &AgentScopePaths),
    tags(
        (name = "sandboxes", description = "Sandbox lifecycle"),
        (name = "exec", description = "Commands and Python"),
        (name = "files", description = "Files under /workspace"),
        (name = "meta", description = "The server itself"),
        (name = "agentscope", description = "AgentScope Runtime's sandbox-server protocol \
                                             (errors are `{\"detail\": ...}`)"),
    )
)]
pub struct ApiDoc;

/// Declares the `bearer` security scheme the operations refer to.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        openapi.info.version = env!("CARGO_PKG_VERSION").to_string();
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The server's `BEARER_TOKEN` (the admin's: every sandbox) or one of its \
                         `API_KEYS` (a tenant's: only the sandboxes made with that key; another \
                         tenant's sandbox answers 404, as one that does not exist). Needed on \
                         every route but `/health` and `/openapi.json` when the server has any.",
                    ))
                    .build(),
            ),
        );
    }
}

/// The document as checked in at `crates/server/openapi.json`.
pub fn pretty_json() -> String {
    let mut s = ApiDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serializes");
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    /// The checked-in `openapi.json` (for SDK generators and reviewers) must match the code.
    /// Regenerate with `UPDATE_OPENAPI=1 cargo test -p sandboxd-server openapi`.
    #[test]
    fn openapi_snapshot_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.json");
        let now = super::pretty_json();
        if std::env::var_os("UPDATE_OPENAPI").is_some() {
            std::fs::write(&path, &now).unwrap();
            return;
        }
        let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            checked_in == now,
            "{} is out of date; regenerate it with \
             `UPDATE_OPENAPI=1 cargo test -p sandboxd-server openapi`",
            path.display()
        );
    }
}
