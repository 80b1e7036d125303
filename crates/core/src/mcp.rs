//! MCP servers inside a sandbox, through its guest agent (which runs them and speaks
//! JSON-RPC with them over their stdio; see the agent's `mcp` module).
//!
//! The manager only checks what it is asked and carries JSON both ways in frame payloads, so
//! that a large tool result is never limited by the size of a frame's header.

use std::collections::BTreeMap;

pub use sandboxd_protocol::valid_mcp_server_name;
use sandboxd_protocol::{McpServerSpec, Request, Response};
use serde_json::Value;

use crate::agent::unexpected;
use crate::manager::{check_env, check_text, invalid, Manager};
use crate::CoreError;

/// Most arguments of an MCP server's command.
const MAX_ARGS: usize = 256;

/// How to start an MCP server (the stdio kind of an `mcpServers` entry).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct McpServer {
    /// The program; looked up in the sandbox's `PATH` unless it contains a `/`.
    pub command: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Extra environment variables.
    pub env: BTreeMap<String, String>,
}

fn check_name(name: &str) -> Result<(), CoreError> {
    if valid_mcp_server_name(name) {
        Ok(())
    } else {
        Err(invalid(format!(
            "MCP server name {name:?}: 1 to 64 letters, digits, '-', '_' or '.'"
        )))
    }
}

fn json_payload(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("a JSON value serialises")
}

fn json_of(payload: &[u8]) -> Result<Value, CoreError> {
    serde_json::from_slice(payload).map_err(|e| {
        CoreError::AgentUnreachable(format!("agent sent MCP data that is not JSON: {e}"))
    })
}

impl Manager {
    /// Start MCP server `name` in sandbox `id` and initialize it. Its `initialize` result, or
    /// `None` when one of that name runs already and `replace` is false (it is kept).
    pub async fn mcp_start(
        &self,
        id: &str,
        name: &str,
        server: McpServer,
        replace: bool,
    ) -> Result<Option<Value>, CoreError> {
        check_name(name)?;
        if server.command.is_empty() {
            return Err(invalid(format!("MCP server {name}: command is empty")));
        }
        check_text("MCP server command", &server.command)?;
        if server.args.len() > MAX_ARGS {
            return Err(invalid(format!(
                "MCP server {name}: at most {MAX_ARGS} arguments"
            )));
        }
        for a in &server.args {
            check_text("MCP server argument", a)?;
        }
        check_env(&server.env)?;
        let req = Request::McpStart(McpServerSpec {
            server: name.to_string(),
            command: server.command,
            args: server.args,
            env: server.env,
            cwd: None,
            replace,
            timeout_ms: None,
        });
        let frame = self.call_with(id, &req, &[]).await?;
        match frame.header {
            Response::McpStarted { started: true } => json_of(&frame.payload).map(Some),
            Response::McpStarted { started: false } => Ok(None),
            other => Err(unexpected(&other)),
        }
    }

    /// Send JSON-RPC request `method` with `params` to MCP server `name` of sandbox `id`; the
    /// server's `result`. A JSON-RPC error answer is [`CoreError::Agent`] with kind
    /// `tool_failed`.
    pub async fn mcp_request(
        &self,
        id: &str,
        name: &str,
        method: &str,
        params: Option<&Value>,
        timeout_ms: Option<u64>,
    ) -> Result<Value, CoreError> {
        check_name(name)?;
        check_text("MCP method", method)?;
        let req = Request::Mcp {
            server: name.to_string(),
            method: method.to_string(),
            timeout_ms,
        };
        let payload = params.map(json_payload).unwrap_or_default();
        let frame = self.call_with(id, &req, &payload).await?;
        match frame.header {
            Response::McpResult => json_of(&frame.payload),
            other => Err(unexpected(&other)),
        }
    }

    /// Names of the MCP servers running in sandbox `id`, in start order.
    pub async fn mcp_servers(&self, id: &str) -> Result<Vec<String>, CoreError> {
        match self.call_with(id, &Request::McpList, &[]).await?.header {
            Response::McpServers { servers } => Ok(servers),
            other => Err(unexpected(&other)),
        }
    }

    /// Stop MCP server `name` of sandbox `id`.
    pub async fn mcp_stop(&self, id: &str, name: &str) -> Result<(), CoreError> {
        check_name(name)?;
        let req = Request::McpStop {
            server: name.to_string(),
        };
        match self.call_with(id, &req, &[]).await?.header {
            Response::Ok => Ok(()),
            other => Err(unexpected(&other)),
        }
    }
}
