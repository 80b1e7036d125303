//! The AgentScope routes in the OpenAPI document. The RPC routes come from [`Method::ALL`], as
//! the router's do; a test keeps the proxy's table here equal to the router's.

use utoipa::openapi::path::{HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::SecurityRequirement;
use utoipa::openapi::{Content, Required, ResponseBuilder};
use utoipa::Modify;

use super::rpc::Method;

/// Adds every AgentScope route (tag `agentscope`).
#[derive(Debug)]
pub struct AgentScopePaths;

fn object(description: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some(description))
}

fn detail_response(description: &str) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            Content::new(Some(object("`{\"detail\": \"...\"}`"))),
        )
        .build()
}

fn query(name: &str, required: bool, description: &str) -> utoipa::openapi::path::Parameter {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Query)
        .required(if required {
            Required::True
        } else {
            Required::False
        })
        .description(Some(description))
        .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
        .build()
}

/// A query parameter: name, required, description.
type QueryParam = (&'static str, bool, &'static str);

/// Proxy routes: (path under `/proxy/{identity}/`, method, summary, query parameters).
const PROXY: &[(&str, HttpMethod, &str, &[QueryParam])] = &[
    (
        "workspace/file",
        HttpMethod::Get,
        "Read a workspace file (streamed)",
        &[
            ("path", true, "Path relative to /workspace"),
            ("format", false, "`text` (default) or `bytes`"),
        ],
    ),
    (
        "workspace/file",
        HttpMethod::Put,
        "Write a workspace file from the raw body (streamed); replies an entry",
        &[("path", true, "Path relative to /workspace")],
    ),
    (
        "workspace/files:batch",
        HttpMethod::Post,
        "Write several files: multipart `files` parts and `paths` fields; replies [entry]",
        &[],
    ),
    (
        "workspace/list",
        HttpMethod::Get,
        "List a directory: flat [entry], parents before children",
        &[
            ("path", true, "Directory relative to /workspace"),
            ("depth", false, "Levels, 1 (default) to 32"),
        ],
    ),
    (
        "workspace/exists",
        HttpMethod::Get,
        "`{\"exists\": bool}`",
        &[("path", true, "Path relative to /workspace")],
    ),
    (
        "workspace/entry",
        HttpMethod::Delete,
        "Remove a file or a directory with its contents; 204",
        &[("path", true, "Path relative to /workspace")],
    ),
    (
        "workspace/move",
        HttpMethod::Post,
        "Move `{\"source\", \"destination\"}`; replies an entry",
        &[],
    ),
    (
        "workspace/mkdir",
        HttpMethod::Post,
        "Make a directory with its parents `{\"path\"}`; replies `{\"created\": bool}`",
        &[],
    ),
    (
        "healthz",
        HttpMethod::Get,
        "`OK` when the sandbox answers",
        &[],
    ),
    (
        "tools/run_shell_command",
        HttpMethod::Post,
        "`{\"command\"}`; replies a CallToolResult",
        &[],
    ),
    (
        "tools/run_ipython_cell",
        HttpMethod::Post,
        "`{\"code\"}`; replies a CallToolResult",
        &[],
    ),
    (
        "mcp/add_servers",
        HttpMethod::Post,
        "`{\"server_configs\": {\"mcpServers\": {...}}, \"overwrite\"}`: start stdio MCP servers in the sandbox",
        &[],
    ),
    (
        "mcp/list_tools",
        HttpMethod::Get,
        "The tools of the sandbox's MCP servers, one group per server",
        &[],
    ),
    (
        "mcp/call_tool",
        HttpMethod::Post,
        "`{\"tool_name\", \"arguments\"}`: call an MCP server's tool; replies its CallToolResult",
        &[],
    ),
];

impl Modify for AgentScopePaths {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let bearer = || SecurityRequirement::new("bearer", Vec::<String>::new());
        for &method in Method::ALL {
            for asynchronous in [false, true] {
                let name = method.route_name(asynchronous);
                let op = OperationBuilder::new()
                    .tag("agentscope")
                    .summary(Some(format!("AgentScope SandboxManager.{name}")))
                    .request_body(Some(
                        RequestBodyBuilder::new()
                            .content(
                                "application/json",
                                Content::new(Some(object(
                                    "The method's keyword arguments; `args` names the first",
                                ))),
                            )
                            .build(),
                    ))
                    .response(
                        "200",
                        ResponseBuilder::new()
                            .description("`{\"data\": <return value>}`")
                            .content(
                                "application/json",
                                Content::new(Some(object("`{\"data\": ...}`"))),
                            )
                            .build(),
                    )
                    .response("401", detail_response("Missing or wrong token"))
                    .response(
                        "500",
                        detail_response("`{\"detail\": \"Error in <method>: <message>\"}`"),
                    )
                    .security(bearer())
                    .build();
                openapi
                    .paths
                    .add_path_operation(format!("/{name}"), vec![HttpMethod::Post], op);
            }
        }
        for (path, method, summary, params) in PROXY {
            let mut op = OperationBuilder::new()
                .tag("agentscope")
                .summary(Some(*summary))
                .parameter(
                    ParameterBuilder::new()
                        .name("identity")
                        .parameter_in(ParameterIn::Path)
                        .required(Required::True)
                        .description(Some("Container name or sandbox id"))
                        .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
                        .build(),
                )
                .response("200", ResponseBuilder::new().description("Done").build())
                .response("403", detail_response("The path leaves /workspace"))
                .response("404", detail_response("No such sandbox or path"))
                .security(bearer());
            for (name, required, description) in params.iter() {
                op = op.parameter(query(name, *required, description));
            }
            openapi.paths.add_path_operation(
                format!("/proxy/{{identity}}/{path}"),
                vec![method.clone()],
                op.build(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_routes_match_the_router() {
        let documented: Vec<(&str, String)> = PROXY
            .iter()
            .map(|(p, m, _, _)| {
                let m = match m {
                    HttpMethod::Get => "GET",
                    HttpMethod::Put => "PUT",
                    HttpMethod::Post => "POST",
                    HttpMethod::Delete => "DELETE",
                    _ => "OTHER",
                };
                (*p, m.to_string())
            })
            .collect();
        let served: Vec<(&str, String)> = crate::agentscope::proxy::ROUTES
            .iter()
            .map(|(p, m)| (*p, m.as_str().to_string()))
            .collect();
        assert_eq!(documented, served);
    }
}
