"""Sandbox types against a real `sandboxd serve`: AgentScope's FilesystemSandbox (sync and
async) doing every filesystem tool, and a custom type from an `--extension` TOML file."""

import asyncio
import json
import re
import subprocess
import time

from agentscope_runtime.sandbox import FilesystemSandbox, FilesystemSandboxAsync
from agentscope_runtime.sandbox.box.sandbox import Sandbox
from agentscope_runtime.sandbox.enums import SandboxType
from agentscope_runtime.sandbox.manager.sandbox_manager import SandboxManager
from agentscope_runtime.sandbox.registry import SandboxRegistry

from conftest import SANDBOXD, Server, warm_sandboxes

DIFF = (
    "```diff\n"
    "Index: /workspace/notes/a.txt\n"
    "===================================================================\n"
    "--- /workspace/notes/a.txt\toriginal\n"
    "+++ /workspace/notes/a.txt\tmodified\n"
    "@@ -1,2 +1,2 @@\n"
    " alpha\n"
    "-beta\n"
    "+gamma\n"
    "```\n\n"
)

DENIED = "Error: Access denied - path outside allowed directories: {} not in /workspace"

JS_DATE = re.compile(
    r"^\w{3} \w{3} \d{2} \d{4} \d{2}:\d{2}:\d{2} GMT\+0000 \(Coordinated Universal Time\)$"
)


def _tree(text: str):
    return json.loads(text)


def _info(text: str):
    info = dict(line.split(": ", 1) for line in text.split("\n"))
    assert list(info) == [
        "size", "created", "modified", "accessed", "isDirectory", "isFile", "permissions",
    ], text
    assert all(JS_DATE.match(info[k]) for k in ("created", "modified", "accessed")), text
    return {k: info[k] for k in ("size", "isDirectory", "isFile", "permissions")}


# Every filesystem tool, in order: (method, keyword arguments, expected text or a check of it,
# whether the result is an error). The same steps run through the sync and the async client.
STEPS = [
    ("write_file", {"path": "notes/a.txt", "content": "alpha\nbeta\n"},
     "Successfully wrote to notes/a.txt", False),
    ("create_directory", {"path": "/workspace/src/pkg"},
     "Successfully created directory /workspace/src/pkg", False),
    ("create_directory", {"path": "src"}, "Successfully created directory src", False),
    ("write_file", {"path": "src/pkg/Main.py", "content": "print('hi')\n"},
     "Successfully wrote to src/pkg/Main.py", False),
    ("read_file", {"path": "notes/a.txt"}, "alpha\nbeta\n", False),
    ("read_file", {"path": "/workspace/./notes/../notes/a.txt"}, "alpha\nbeta\n", False),
    ("read_multiple_files", {"paths": ["notes/a.txt", "missing.txt"]},
     "notes/a.txt:\nalpha\nbeta\n\n\n---\nmissing.txt: Error - ENOENT: no such file or "
     "directory, open '/workspace/missing.txt'", False),
    ("edit_file", {"path": "notes/a.txt", "edits": [{"oldText": "beta", "newText": "gamma"}],
                   "dry_run": True}, DIFF, False),
    ("read_file", {"path": "notes/a.txt"}, "alpha\nbeta\n", False),
    ("edit_file", {"path": "notes/a.txt", "edits": [{"oldText": "beta", "newText": "gamma"}]},
     DIFF, False),
    ("read_file", {"path": "notes/a.txt"}, "alpha\ngamma\n", False),
    ("edit_file", {"path": "notes/a.txt", "edits": [{"oldText": "nope", "newText": "x"}]},
     "Error: Could not find exact match for edit:\nnope", True),
    ("list_directory", {"path": "."}, "[DIR] notes\n[DIR] src", False),
    ("list_directory", {"path": "notes"}, "[FILE] a.txt", False),
    ("directory_tree", {"path": "src"},
     lambda t: _tree(t) == [{"name": "pkg", "type": "directory",
                              "children": [{"name": "Main.py", "type": "file"}]}], False),
    ("move_file", {"source": "notes/a.txt", "destination": "notes/b.txt"},
     "Successfully moved notes/a.txt to notes/b.txt", False),
    ("move_file", {"source": "notes/b.txt", "destination": "new/b.txt"},
     "Error: ENOENT: no such file or directory, rename '/workspace/notes/b.txt' -> "
     "'/workspace/new/b.txt'", True),
    ("search_files", {"path": "/workspace", "pattern": "MAIN"},
     "/workspace/src/pkg/Main.py", False),
    ("search_files", {"path": ".", "pattern": "*.py"}, "/workspace/src/pkg/Main.py", False),
    ("search_files", {"path": "/workspace", "pattern": "b."}, "/workspace/notes/b.txt", False),
    ("search_files", {"path": "/workspace", "pattern": "b.", "exclude_patterns": ["notes"]},
     "No matches found", False),
    ("get_file_info", {"path": "notes/b.txt"},
     lambda t: _info(t) == {"size": "12", "isDirectory": "false", "isFile": "true",
                            "permissions": "644"}, False),
    ("get_file_info", {"path": "src"},
     lambda t: _info(t)["isDirectory"] == "true", False),
    ("list_allowed_directories", {}, "Allowed directories:\n/workspace", False),
    ("read_file", {"path": "nope/x.txt"},
     "Error: ENOENT: no such file or directory, open '/workspace/nope/x.txt'", True),
    # Escapes are refused before the guest agent is asked.
    ("read_file", {"path": "../etc/passwd"}, DENIED.format("/etc/passwd"), True),
    ("read_file", {"path": "/etc/passwd"}, DENIED.format("/etc/passwd"), True),
    ("write_file", {"path": "/workspace/../tmp/x", "content": "x"}, DENIED.format("/tmp/x"),
     True),
    ("list_directory", {"path": "/"}, DENIED.format("/"), True),
    ("move_file", {"source": "notes/b.txt", "destination": "/workspace2/b.txt"},
     DENIED.format("/workspace2/b.txt"), True),
    ("search_files", {"path": "/workspace/..", "pattern": "passwd"}, DENIED.format("/"), True),
]


def _check(step, result):
    method, kwargs, want, is_error = step
    assert result["isError"] is is_error, (method, kwargs, result)
    [content] = result["content"]
    assert content["type"] == "text"
    text = content["text"]
    if callable(want):
        assert want(text), (method, kwargs, text)
    else:
        assert text == want, (method, kwargs, text)


def _shell(result) -> str:
    return result["content"][0]["text"]


def test_filesystem_sandbox(server):
    with FilesystemSandbox(base_url=server.url, bearer_token=server.token) as sandbox:
        tools = sandbox.list_tools()
        assert sorted(tools) == ["filesystem", "generic"]
        assert sorted(tools["filesystem"]) == sorted([
            "read_file", "read_multiple_files", "write_file", "edit_file", "create_directory",
            "list_directory", "directory_tree", "move_file", "search_files", "get_file_info",
            "list_allowed_directories",
        ])
        schema = tools["filesystem"]["edit_file"]["json_schema"]["function"]["parameters"]
        assert schema["required"] == ["path", "edits"]
        assert sandbox.get_info()["sandbox_type"] == "filesystem"
        for step in STEPS:
            method, kwargs, _, _ = step
            _check(step, getattr(sandbox, method)(**kwargs))
        # The generic tools see the same files.
        r = sandbox.run_shell_command(command="cat notes/b.txt src/pkg/Main.py")
        assert _shell(r) == "alpha\ngamma\nprint('hi')\n"
        # A symlink out of /workspace passes the path check but not the agent's confinement.
        sandbox.run_shell_command(command="ln -s /etc/passwd notes/link")
        r = sandbox.read_file(path="notes/link")
        assert r["isError"] is True
        assert r["content"][0]["text"] == (
            "Error: Access denied - symlink target outside allowed directories"
        ), r
        # Unknown tools and bad arguments are errors, not failures of the call.
        r = sandbox.call_tool("read_file", {})
        assert r["isError"] is True
        assert r["content"][0]["text"].startswith("Error: Invalid arguments for read_file")


def test_filesystem_sandbox_async(server):
    async def main():
        async with FilesystemSandboxAsync(base_url=server.url, bearer_token=server.token) as sb:
            tools = await sb.list_tools_async(tool_type="filesystem")
            assert list(tools) == ["filesystem"] and len(tools["filesystem"]) == 11
            assert (await sb.get_info_async())["sandbox_type"] == "filesystem_async"
            for step in STEPS:
                method, kwargs, _, _ = step
                _check(step, await getattr(sb, method)(**kwargs))
            r = await sb.call_tool_async("run_shell_command", {"command": "ls notes"})
            assert _shell(r) == "b.txt\n"

    asyncio.run(main())


def test_base_sandbox_has_no_filesystem_tools(server):
    mgr = SandboxManager(base_url=server.url, bearer_token=server.token)
    name = mgr.create(sandbox_type="base")
    try:
        assert list(mgr.list_tools(name)) == ["generic"]
        r = mgr.call_tool(name, "read_file", {"path": "x"})
        assert r["isError"] is True and "Tool 'read_file' not found" in _shell(r), r
    finally:
        mgr.release(name)


CUSTOM = "sandboxd_test_custom"

EXTENSION = f"""
# A custom type, as the README describes them.
[[sandbox]]
type = "{CUSTOM}"
template = "base"
description = "a custom type of the tests"
timeout = 5
security_level = "high"
tools = ["generic", "filesystem"]
[sandbox.environment]
TEST_GREETING = "hello from the extension"
[sandbox.resources]
memory_mb = 256
pids = 128
"""


# How AgentScope's users name a custom type on the client side (the server's extension file
# decides what it is).
@SandboxRegistry.register(
    "sandboxd/runtime-sandbox-custom",
    sandbox_type=CUSTOM,
    security_level="high",
    description="a custom type of the tests",
)
class CustomSandbox(Sandbox):
    def __init__(self, sandbox_id=None, base_url=None, bearer_token=None):
        super().__init__(sandbox_id, base_url, bearer_token, SandboxType(CUSTOM))


def test_extension_type(tmp_path):
    ext = tmp_path / "types.toml"
    ext.write_text(EXTENSION)
    # Its own warm pool: DEFAULT_SANDBOX_TYPE names it, POOL_SIZE keeps one ready.
    s = Server(args=("--extension", str(ext)), DEFAULT_SANDBOX_TYPE=f"{CUSTOM},base",
               POOL_SIZE="1")
    try:
        warm = warm_sandboxes(s, 2)
        pools = {w["metadata"].get("sandboxd.pool"): w for w in warm}
        assert set(pools) == {f"type:{CUSTOM}", "base"}, warm
        custom_warm = pools[f"type:{CUSTOM}"]
        assert custom_warm["resources"]["memory_mb"] == 256
        assert custom_warm["resources"]["pids"] == 128

        with CustomSandbox(base_url=s.url, bearer_token=s.token) as sb:
            assert sb.sandbox_id == "sandboxd-" + custom_warm["id"]
            info = sb.get_info()
            assert info["sandbox_type"] == CUSTOM and info["timeout"] == 5
            assert sorted(sb.list_tools()) == ["filesystem", "generic"]
            r = sb.call_tool("run_shell_command", {"command": "echo $TEST_GREETING"})
            assert _shell(r) == "hello from the extension\n"
            r = sb.call_tool("write_file", {"path": "x.txt", "content": "x"})
            assert _shell(r) == "Successfully wrote to x.txt"
            # The type's timeout bounds one call.
            started = time.monotonic()
            r = sb.call_tool("run_shell_command", {"command": "sleep 30"})
            assert time.monotonic() - started < 20
            assert r["isError"] is True and "timed out" in r["content"][1]["text"], r

        # The request's environment goes over the type's; such a create is cold.
        mgr = SandboxManager(base_url=s.url, bearer_token=s.token)
        name = mgr.create_from_pool(
            sandbox_type=CUSTOM, environment={"TEST_GREETING": "from the request"})
        try:
            r = mgr.call_tool(name, "run_shell_command", {"command": "echo $TEST_GREETING"})
            assert _shell(r) == "from the request\n"
        finally:
            mgr.release(name)

        # A base sandbox is never handed the custom type's warm sandbox.
        base = mgr.create_from_pool(sandbox_type="base")
        try:
            assert list(mgr.list_tools(base)) == ["generic"]
            r = mgr.call_tool(base, "run_shell_command", {"command": "echo -n $TEST_GREETING"})
            assert _shell(r) == ""
        finally:
            mgr.release(base)
    finally:
        s.stop()


def test_extension_errors_stop_the_start(tmp_path):
    ext = tmp_path / "bad.toml"
    ext.write_text('[[sandbox]]\ntype = "x"\ntemplate = "no_such_template"\n')
    r = subprocess.run(
        [str(SANDBOXD), "serve", "--extension", str(ext), "--port", "0"],
        capture_output=True, text=True, timeout=30,
        env={"PATH": "/usr/bin:/bin", "SANDBOXD_STATE_DIR": str(tmp_path / "state")},
    )
    assert r.returncode != 0
    assert f"extension {ext}: [[sandbox]] #1 (type \"x\"): template: " in r.stderr, r.stderr
