//! The tools of a sandbox as AgentScope shows them: `list_tools` and `call_tool`.
//!
//! A base sandbox has the two `generic` tools, implemented on the [`Manager`]:
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
//! MCP tools and the tools of other sandbox types come with later phases.

use sandboxd_core::Manager;
use sandboxd_types::{ErrorCode, ExecRequest, PythonRequest};
use serde_json::{json, Map, Value};

use crate::error::ApiError;

/// Names of the generic tools, in listing order.
pub const GENERIC: &[&str] = &["run_ipython_cell", "run_shell_command"];

/// One tool in `list_tools`' format.
fn tool(name: &str, description: &str, param: &str, param_description: &str) -> Value {
    json!({
        "name": name,
        "json_schema": {
            "type": "function",
            "function": {
                "name": name,
                "description": description,
                "parameters": {
                    "type": "object",
                    "properties": {
                        param: {"type": "string", "description": param_description},
                    },
                    "required": [param],
                },
            },
        },
    })
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

/// `list_tools`' answer: every group, or only `tool_type`'s (empty when unknown).
pub fn list(tool_type: Option<&str>) -> Value {
    let mut all = Map::new();
    all.insert("generic".into(), generic_tools());
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

/// Call a tool of sandbox `id`. Failures of the tool itself (bad arguments, an unknown tool,
/// a command that cannot run) are `isError` results, as upstream; `Err` only when the sandbox
/// is gone.
pub async fn call(
    manager: &Manager,
    id: &str,
    name: &str,
    args: &Map<String, Value>,
) -> Result<Value, ApiError> {
    let outcome = match name {
        "run_shell_command" => match string_arg(name, args, "command") {
            Ok(command) => run_shell_command(manager, id, command).await,
            Err(result) => return Ok(result),
        },
        "run_ipython_cell" => match string_arg(name, args, "code") {
            Ok(code) => run_ipython_cell(manager, id, code).await,
            Err(result) => return Ok(result),
        },
        other => {
            return Ok(error_result(&format!(
                "Tool '{other}' not found; this sandbox has: {}",
                GENERIC.join(", ")
            )))
        }
    };
    match outcome {
        Ok(v) => Ok(v),
        Err(e) if e.code == ErrorCode::NotFound => Err(e),
        Err(e) => Ok(error_result(&e.message)),
    }
}

/// `run_shell_command`: `/bin/bash -c <command>` in `/workspace`.
pub async fn run_shell_command(
    manager: &Manager,
    id: &str,
    command: String,
) -> Result<Value, ApiError> {
    let req = ExecRequest {
        cmd: Some(vec!["/bin/bash".into(), "-c".into(), command]),
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

/// `run_ipython_cell`: the code in the sandbox's persistent interpreter.
pub async fn run_ipython_cell(
    manager: &Manager,
    id: &str,
    code: String,
) -> Result<Value, ApiError> {
    let r = manager
        .python(
            id,
            PythonRequest {
                code,
                timeout_ms: None,
            },
        )
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
        assert_eq!(list(Some("nope")), json!({"nope": {}}));
        assert_eq!(list(Some("generic"))["generic"], generic_tools());
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
