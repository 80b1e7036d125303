//! The tools of a sandbox as AgentScope shows them: `list_tools` and `call_tool`.
//!
//! Which tools a sandbox has is its type's ([`SandboxType::tools`]): the `generic` group, and
//! for the `filesystem` types and extension types that ask for it the `filesystem` group
//! ([`super::filesystem`]).
//!
//! The two `generic` tools are implemented on the [`Manager`]:
//! `run_shell_command` runs `/bin/bash -c <command>` in `/workspace`, `run_ipython_cell` runs
//! code in the sandbox's persistent Python interpreter (state is kept between calls). Results
//! are MCP `CallToolResult`s exactly as AgentScope's runtime builds them: a `stdout` text, a
//! `stderr` text when there is any, for the shell a `returncode` text, and `isError` = "stderr
//! is not empty".
//!
//! Differences from AgentScope's IPython kernel: the value of a final expression is printed as
//! its `repr` (without IPython's `Out[n]:` prompt), and an exception's traceback goes to
//! `stderr` (so the result `isError`), where IPython prints it to stdout.
//!
//! A type's `timeout` bounds one generic call: the command is killed (or the cell interrupted)
//! after it, and the result says so.
//!
//! Tools of the MCP servers added with `add_mcp_servers` ([`super::mcp`]) are listed as one
//! group per server and called when no built-in tool has the name.

use sandboxd_core::Manager;
use sandboxd_types::{ErrorCode, ExecRequest, PythonRequest};
use serde_json::{json, Map, Value};

use super::types::{SandboxType, ToolGroup};
use super::{filesystem, mcp};
use crate::error::ApiError;

/// Names of the generic tools, in listing order.
pub const GENERIC: &[&str] = &["run_ipython_cell", "run_shell_command"];

/// One tool in `list_tools`' format, with its parameters' JSON schema `properties` and the
/// names of the `required` ones.
pub fn schema(name: &str, description: &str, properties: Value, required: &[&str]) -> Value {
    json!({
        "name": name,
        "json_schema": {
            "type": "function",
            "function": {
                "name": name,
                "description": description,
                "parameters": {
                    "type": "object",
                    "properties": properties,
                    "required": required,
                },
            },
        },
    })
}

/// A tool with one string parameter.
fn tool(name: &str, description: &str, param: &str, param_description: &str) -> Value {
    schema(
        name,
        description,
        json!({param: {"type": "string", "description": param_description}}),
        &[param],
    )
}

/// The `generic` group of `list_tools`: `{name: tool}`.
pub fn generic_tools() -> Value {
    json!({
        "run_ipython_cell": tool(
            "run_ipython_cell",
            "Run an IPython cell.",
            "code",
            "IPython code to execute",
        ),
        "run_shell_command": tool(
            "run_shell_command",
            "Run a shell command.",
            "command",
            "Shell command to execute",
        ),
    })
}

/// The tools of one group.
fn group_tools(group: ToolGroup) -> Value {
    match group {
        ToolGroup::Generic => generic_tools(),
        ToolGroup::Filesystem => filesystem::tools(),
    }
}

/// Names of a group's tools.
fn group_names(group: ToolGroup) -> &'static [&'static str] {
    match group {
        ToolGroup::Generic => GENERIC,
        ToolGroup::Filesystem => filesystem::NAMES,
    }
}

/// `list_tools`' answer for a sandbox with `groups` and the groups of its MCP servers
/// (`mcp`): every group, or only `tool_type`'s (empty when it has no such group). A built-in
/// group wins over an MCP server of the same name, as upstream.
pub fn list(groups: &[ToolGroup], mcp: Map<String, Value>, tool_type: Option<&str>) -> Value {
    let mut all = mcp;
    for &g in groups {
        all.insert(g.name().into(), group_tools(g));
    }
    match tool_type {
        Some(t) => json!({ t: all.get(t).cloned().unwrap_or_else(|| json!({})) }),
        None => Value::Object(all),
    }
}

/// A text content item with AgentScope's `description` (`stdout`, `stderr`, `returncode`).
fn text(text: &str, description: &str) -> Value {
    json!({
        "type": "text",
        "text": text,
        "annotations": null,
        "meta": null,
        "description": description,
    })
}

/// An MCP `CallToolResult`.
fn call_result(content: Vec<Value>, is_error: bool) -> Value {
    json!({
        "meta": null,
        "content": content,
        "structuredContent": null,
        "isError": is_error,
    })
}

/// A failed call, the way AgentScope's runtime client reports one: `isError` with one text.
pub fn error_result(message: &str) -> Value {
    call_result(vec![text(message, "error")], true)
}

/// The result of output split into stdout and stderr (and a return code for the shell).
fn output_result(stdout: &str, stderr: &str, returncode: Option<String>) -> Value {
    let mut content = vec![text(stdout, "stdout")];
    if !stderr.is_empty() {
        content.push(text(stderr, "stderr"));
    }
    if let Some(rc) = returncode {
        content.push(text(&rc, "returncode"));
    }
    call_result(content, !stderr.is_empty())
}

/// The one string argument a generic tool needs, or the result explaining what is wrong.
fn string_arg(tool: &str, args: &Map<String, Value>, name: &str) -> Result<String, Value> {
    if let Some(extra) = args.keys().find(|k| k.as_str() != name) {
        return Err(error_result(&format!(
            "{tool}() got an unexpected argument '{extra}'; it takes `{name}`"
        )));
    }
    match args.get(name) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(Value::String(_)) | None | Some(Value::Null) => {
            Err(error_result(&format!("{tool}: `{name}` is required")))
        }
        Some(_) => Err(error_result(&format!("{tool}: `{name}` must be a string"))),
    }
}

/// Call a tool of sandbox `id`, whose type is `ty`. Failures of the tool itself (bad
/// arguments, an unknown tool, a command that cannot run) are `isError` results, as upstream;
/// `Err` only when the sandbox is gone.
pub async fn call(
    manager: &Manager,
    id: &str,
    ty: &SandboxType,
    name: &str,
    args: &Map<String, Value>,
) -> Result<Value, ApiError> {
    let has = |g: ToolGroup| ty.has(g) && group_names(g).contains(&name);
    if has(ToolGroup::Filesystem) {
        return filesystem::call(manager, id, name, args).await;
    }
    let timeout_ms = ty.timeout_secs.map(|s| s.saturating_mul(1000));
    let outcome = match name {
        "run_shell_command" if has(ToolGroup::Generic) => match string_arg(name, args, "command") {
            Ok(command) => run_shell_command(manager, id, command, timeout_ms).await,
            Err(result) => return Ok(result),
        },
        "run_ipython_cell" if has(ToolGroup::Generic) => match string_arg(name, args, "code") {
            Ok(code) => run_ipython_cell(manager, id, code, timeout_ms).await,
            Err(result) => return Ok(result),
        },
        other => {
            if let Some(result) = mcp::call(manager, id, other, args, timeout_ms).await? {
                return Ok(result);
            }
            let mut names: Vec<String> = ty
                .tools
                .iter()
                .flat_map(|&g| group_names(g).iter().map(|n| n.to_string()))
                .collect();
            for tools in mcp::groups(manager, id).await.unwrap_or_default().values() {
                names.extend(
                    tools
                        .as_object()
                        .into_iter()
                        .flat_map(|t| t.keys().cloned()),
                );
            }
            return Ok(error_result(&format!(
                "Tool '{other}' not found; this sandbox has: {}",
                names.join(", ")
            )));
        }
    };
    match outcome {
        Ok(v) => Ok(v),
        Err(e) if e.code == ErrorCode::NotFound => Err(e),
        Err(e) => Ok(error_result(&e.message)),
    }
}

/// `run_shell_command`: `/bin/bash -c <command>` in `/workspace`, killed after `timeout_ms`.
pub async fn run_shell_command(
    manager: &Manager,
    id: &str,
    command: String,
    timeout_ms: Option<u64>,
) -> Result<Value, ApiError> {
    let req = ExecRequest {
        cmd: Some(vec!["/bin/bash".into(), "-c".into(), command]),
        timeout_ms,
        ..Default::default()
    };
    let r = manager.exec_collect(id, req).await?;
    // Python's convention, which AgentScope's runtime reports: -N for a death by signal N.
    let returncode = match (r.exit_code, r.signal) {
        (Some(c), _) => c.to_string(),
        (None, Some(s)) => (-s).to_string(),
        (None, None) => "-1".to_string(),
    };
    let mut stderr = r.stderr;
    if r.timed_out {
        stderr.push_str("command timed out\n");
    }
    Ok(output_result(&r.stdout, &stderr, Some(returncode)))
}

/// `run_ipython_cell`: the code in the sandbox's persistent interpreter, interrupted after
/// `timeout_ms`.
pub async fn run_ipython_cell(
    manager: &Manager,
    id: &str,
    code: String,
    timeout_ms: Option<u64>,
) -> Result<Value, ApiError> {
    let r = manager
        .python(id, PythonRequest { code, timeout_ms })
        .await?;
    let mut stdout = r.stdout;
    if let Some(value) = r.result {
        stdout.push_str(&value);
        stdout.push('\n');
    }
    let mut stderr = r.stderr;
    if let Some(e) = r.error {
        if e.traceback.is_empty() {
            stderr.push_str(&format!("{}: {}\n", e.ename, e.evalue));
        } else {
            for line in &e.traceback {
                stderr.push_str(line);
                stderr.push('\n');
            }
        }
    }
    Ok(output_result(&stdout, &stderr, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        let r = output_result("hi\n", "", Some("0".into()));
        assert_eq!(
            r,
            json!({"meta": null, "content": [
                {"type": "text", "text": "hi\n", "annotations": null, "meta": null, "description": "stdout"},
                {"type": "text", "text": "0", "annotations": null, "meta": null, "description": "returncode"},
            ], "structuredContent": null, "isError": false})
        );
        let r = output_result("", "oops", None);
        assert_eq!(r["isError"], true);
        assert_eq!(r["content"][1]["description"], "stderr");
        let generic = [ToolGroup::Generic];
        let none = Map::new;
        assert_eq!(list(&generic, none(), Some("nope")), json!({"nope": {}}));
        assert_eq!(
            list(&generic, none(), Some("generic"))["generic"],
            generic_tools()
        );
        assert_eq!(
            list(&generic, none(), Some("filesystem")),
            json!({"filesystem": {}})
        );
        let mut mcp = Map::new();
        mcp.insert("time".into(), json!({"now": {}}));
        mcp.insert("generic".into(), json!({"shadowed": {}}));
        let with_mcp = list(&generic, mcp, None);
        assert_eq!(with_mcp["time"], json!({"now": {}}));
        assert_eq!(with_mcp["generic"], generic_tools());
        let both = [ToolGroup::Generic, ToolGroup::Filesystem];
        let all = list(&both, none(), None);
        let groups: Vec<&String> = all.as_object().unwrap().keys().collect();
        assert_eq!(groups, ["filesystem", "generic"]);
        assert_eq!(all["filesystem"], filesystem::tools());
        let tools = generic_tools();
        let names: Vec<&str> = tools
            .as_object()
            .unwrap()
            .keys()
            .map(|s| s.as_str())
            .collect();
        assert_eq!(names, GENERIC);
    }

    #[test]
    fn arguments() {
        let args = |v: Value| v.as_object().unwrap().clone();
        assert_eq!(
            string_arg("t", &args(json!({"command": "ls"})), "command").unwrap(),
            "ls"
        );
        for bad in [
            json!({}),
            json!({"command": ""}),
            json!({"command": 1}),
            json!({"command": "ls", "x": 1}),
        ] {
            let r = string_arg("t", &args(bad), "command").unwrap_err();
            assert_eq!(r["isError"], true);
        }
    }
}
