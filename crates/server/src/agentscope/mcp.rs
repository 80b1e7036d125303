//! MCP servers added to a sandbox with AgentScope's `add_mcp_servers`.
//!
//! Upstream, the sandbox's own runtime starts each server of `{"mcpServers": {name: config}}`
//! and shows its tools in `list_tools` as a group named after the server; `call_tool` finds a
//! tool in those groups and calls it. Here the guest agent runs the servers (stdio transport:
//! `command`, `args`, `env`) and the server asks it for `tools/list` and `tools/call`
//! ([`sandboxd_core::mcp`]).
//!
//! Differences from upstream, on purpose:
//! - only stdio servers: a sandbox has no network, so `url` configs (SSE, streamable HTTP) are
//!   refused with a clear error rather than failing to connect;
//! - the servers are the sandbox's processes: a sandbox restored after a heartbeat recycle
//!   starts without them (upstream's restore loses them too), and the client adds them again.
//!
//! Results of `tools/call` are passed on in the shape of upstream's `CallToolResult.model_dump()`
//! (`meta`, `content` items with `annotations` and `meta`, `structuredContent`, `isError`).

use std::collections::BTreeMap;

use sandboxd_core::mcp::McpServer;
use sandboxd_core::{CoreError, Manager};
use serde_json::{json, Map, Value};

use super::tools::error_result;
use crate::error::ApiError;

/// Most servers one `add_mcp_servers` may name.
const MAX_SERVERS_PER_CALL: usize = 32;

/// Most pages of `tools/list` read from one server (a broken server could page forever).
const MAX_PAGES: usize = 100;

/// The servers of a `server_configs` value, checked: `(name, how to start it)`.
pub fn parse_configs(server_configs: Option<&Value>) -> Result<Vec<(String, McpServer)>, String> {
    let Some(configs) = server_configs.filter(|v| !v.is_null()) else {
        return Err("server_configs is required.".into());
    };
    let servers = configs
        .get("mcpServers")
        .ok_or("server_configs needs an `mcpServers` object: {\"mcpServers\": {name: {\"command\": ..., \"args\": [...]}}}")?
        .as_object()
        .ok_or("server_configs.mcpServers must be an object of server name to config")?;
    if servers.len() > MAX_SERVERS_PER_CALL {
        return Err(format!(
            "at most {MAX_SERVERS_PER_CALL} MCP servers per call"
        ));
    }
    servers
        .iter()
        .map(|(name, config)| parse_one(name, config).map(|s| (name.clone(), s)))
        .collect()
}

fn parse_one(name: &str, config: &Value) -> Result<McpServer, String> {
    if !sandboxd_core::mcp::valid_mcp_server_name(name) {
        return Err(format!(
            "MCP server name {name:?}: 1 to 64 letters, digits, '-', '_' or '.'"
        ));
    }
    let config = config
        .as_object()
        .ok_or_else(|| format!("MCP server {name}: its config must be an object"))?;
    let command = match config.get("command") {
        Some(Value::String(c)) if !c.is_empty() => c.clone(),
        Some(Value::String(_)) | Some(Value::Null) | None => {
            return Err(match config.get("url") {
                Some(_) => format!(
                    "MCP server {name}: only stdio servers (a `command`) can run in a sandbox, \
                     which has no network; `url` servers (SSE, streamable HTTP) are not supported"
                ),
                None => format!("MCP server {name}: `command` is required"),
            })
        }
        Some(_) => return Err(format!("MCP server {name}: `command` must be a string")),
    };
    let args = match config.get("args") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| format!("MCP server {name}: `args` must be strings"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(format!("MCP server {name}: `args` must be a list")),
    };
    let env = match config.get("env") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                Value::Number(_) | Value::Bool(_) => Ok((k.clone(), v.to_string())),
                _ => Err(format!("MCP server {name}: env {k} must be a string")),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(format!("MCP server {name}: `env` must be an object")),
    };
    Ok(McpServer { command, args, env })
}

/// `add_mcp_servers`: start each server (a running one of the same name is kept unless
/// `overwrite`). Every server is tried; the error names those that failed, and why.
pub async fn add_servers(
    manager: &Manager,
    id: &str,
    server_configs: Option<&Value>,
    overwrite: bool,
) -> Result<Value, ApiError> {
    let servers = parse_configs(server_configs).map_err(ApiError::invalid)?;
    let mut failed = Vec::new();
    for (name, server) in servers {
        match manager.mcp_start(id, &name, server, overwrite).await {
            Ok(_) => {}
            Err(e @ (CoreError::NotFound(_) | CoreError::NotRunning(_))) => return Err(e.into()),
            Err(e) => {
                tracing::warn!(sandbox = id, server = %name, error = %e, "MCP server did not start");
                failed.push(format!("{name} ({e})"));
            }
        }
    }
    if !failed.is_empty() {
        return Err(ApiError::new(
            sandboxd_types::ErrorCode::AgentFailed,
            format!("Failed to initialize server: {}", failed.join("; ")),
        ));
    }
    Ok(Value::String("OK".into()))
}

/// All tools of one server, following `nextCursor`.
async fn server_tools(manager: &Manager, id: &str, server: &str) -> Result<Vec<Value>, CoreError> {
    let mut tools = Vec::new();
    let mut cursor: Option<Value> = None;
    for _ in 0..MAX_PAGES {
        let params = cursor.take().map(|c| json!({ "cursor": c }));
        let mut page = manager
            .mcp_request(id, server, "tools/list", params.as_ref(), None)
            .await?;
        if let Some(Value::Array(t)) = page.get_mut("tools").map(Value::take) {
            tools.extend(t);
        }
        match page.get("nextCursor") {
            Some(c) if !c.is_null() => cursor = Some(c.clone()),
            _ => break,
        }
    }
    Ok(tools)
}

/// One MCP tool in `list_tools`' format (as upstream builds it from the tool's input schema).
fn listed(tool: &Value) -> Option<(String, Value)> {
    let name = tool.get("name")?.as_str()?.to_string();
    let schema = tool.get("inputSchema");
    let field = |k: &str, default: Value| schema.and_then(|s| s.get(k)).cloned().unwrap_or(default);
    let entry = json!({
        "name": name,
        "json_schema": {
            "type": "function",
            "function": {
                "name": name,
                "description": tool.get("description").cloned().unwrap_or(Value::Null),
                "parameters": {
                    "type": "object",
                    "properties": field("properties", json!({})),
                    "required": field("required", json!([])),
                },
            },
        },
    });
    Some((name, entry))
}

/// The MCP groups of `list_tools`: `{server: {tool: entry}}`, in server start order.
pub async fn groups(manager: &Manager, id: &str) -> Result<Map<String, Value>, ApiError> {
    let mut out = Map::new();
    for server in manager.mcp_servers(id).await? {
        let tools = server_tools(manager, id, &server)
            .await
            .map_err(|e| match e {
                CoreError::Agent(_) => ApiError::new(
                    sandboxd_types::ErrorCode::AgentFailed,
                    format!("listing the tools of MCP server {server}: {e}"),
                ),
                e => e.into(),
            })?;
        let mut group = Map::new();
        for (name, entry) in tools.iter().filter_map(listed) {
            // A name given twice: the first one counts, as upstream.
            group.entry(name).or_insert(entry);
        }
        out.insert(server, Value::Object(group));
    }
    Ok(out)
}

/// Call tool `name` of whichever MCP server has it. `None` when no server has it.
pub async fn call(
    manager: &Manager,
    id: &str,
    name: &str,
    args: &Map<String, Value>,
    timeout_ms: Option<u64>,
) -> Result<Option<Value>, ApiError> {
    for server in manager.mcp_servers(id).await? {
        let Ok(tools) = server_tools(manager, id, &server).await else {
            continue;
        };
        if !tools
            .iter()
            .any(|t| t.get("name").and_then(Value::as_str) == Some(name))
        {
            continue;
        }
        let params = json!({"name": name, "arguments": args});
        return match manager
            .mcp_request(id, &server, "tools/call", Some(&params), timeout_ms)
            .await
        {
            Ok(result) => Ok(Some(normalized(result))),
            Err(e @ CoreError::Agent(_)) => Ok(Some(error_result(&e.to_string()))),
            Err(e) => Err(e.into()),
        };
    }
    Ok(None)
}

/// A `CallToolResult` in the shape of upstream's `model_dump()`: `_meta` as `meta`, absent
/// optional fields as null.
fn normalized(mut result: Value) -> Value {
    let Some(r) = result.as_object_mut() else {
        return error_result("the MCP server's tools/call result is not an object");
    };
    fn meta_and_defaults(o: &mut Map<String, Value>, defaults: &[&str]) {
        let meta = o.remove("_meta").unwrap_or(Value::Null);
        o.entry("meta").or_insert(meta);
        for k in defaults {
            o.entry(*k).or_insert(Value::Null);
        }
    }
    meta_and_defaults(r, &["structuredContent"]);
    r.entry("isError").or_insert(Value::Bool(false));
    match r.entry("content").or_insert_with(|| json!([])) {
        Value::Array(items) => {
            for item in items.iter_mut().filter_map(Value::as_object_mut) {
                meta_and_defaults(item, &["annotations"]);
            }
        }
        other => *other = json!([]),
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_are_checked_with_clear_errors() {
        let ok = json!({"mcpServers": {"time": {"command": "python3", "args": ["-m", "t"], "env": {"A": "1", "N": 2}}}});
        let servers = parse_configs(Some(&ok)).unwrap();
        assert_eq!(servers[0].0, "time");
        assert_eq!(servers[0].1.args, ["-m", "t"]);
        assert_eq!(servers[0].1.env["N"], "2");
        let err = |v: Value| parse_configs(Some(&v)).unwrap_err();
        assert!(parse_configs(None).unwrap_err().contains("required"));
        assert!(err(json!({})).contains("mcpServers"));
        assert!(err(json!({"mcpServers": {"s": {"url": "http://x"}}})).contains("only stdio"));
        assert!(err(json!({"mcpServers": {"s": {}}})).contains("`command` is required"));
        assert!(err(json!({"mcpServers": {"s": {"command": "x", "args": [1]}}})).contains("args"));
        assert!(err(json!({"mcpServers": {"a/b": {"command": "x"}}})).contains("name"));
    }

    #[test]
    fn tools_and_results_take_upstreams_shape() {
        let (name, entry) = listed(&json!({
            "name": "now", "description": "the time",
            "inputSchema": {"type": "object", "properties": {"tz": {"type": "string"}}, "required": ["tz"]},
        }))
        .unwrap();
        assert_eq!(name, "now");
        assert_eq!(
            entry["json_schema"]["function"]["parameters"]["required"],
            json!(["tz"])
        );
        let r =
            normalized(json!({"content": [{"type": "text", "text": "12:00"}], "_meta": {"k": 1}}));
        assert_eq!(
            r,
            json!({
                "meta": {"k": 1},
                "content": [{"type": "text", "text": "12:00", "annotations": null, "meta": null}],
                "structuredContent": null,
                "isError": false,
            })
        );
    }
}
