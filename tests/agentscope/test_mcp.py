"""MCP servers through the real `agentscope-runtime` client: `add_mcp_servers`, then the
server's tools in `list_tools` and `call_tool`, sync and async.

The MCP server is tests/mcp/calc_server.py, written with the official MCP SDK; the sandbox
has no network and no `mcp` package, so the server gets this venv's site-packages mounted
read-only (READONLY_MOUNTS) and PYTHONPATH pointing at it.
"""

import asyncio
import json
import pathlib
import sysconfig

import pytest
from agentscope_runtime.sandbox import BaseSandbox, BaseSandboxAsync

from conftest import ROOT, Server

SITE = pathlib.Path(sysconfig.get_paths()["purelib"]).resolve()
SCRIPT = (ROOT / "tests" / "mcp" / "calc_server.py").read_text()


def configs(marker: str) -> dict:
    return {
        "mcpServers": {
            "calc": {
                "command": "python3",
                "args": ["/workspace/calc_server.py"],
                "env": {"PYTHONPATH": "/opt/pysite", "MARKER": marker},
            }
        }
    }


@pytest.fixture(scope="module")
def mcp_server():
    assert (SITE / "mcp").is_dir(), f"{SITE} has no mcp package"
    s = Server(READONLY_MOUNTS=json.dumps({str(SITE): "/opt/pysite"}))
    yield s
    s.stop()


def test_add_list_and_call(mcp_server):
    with BaseSandbox(base_url=mcp_server.url, bearer_token=mcp_server.token) as sandbox:
        sandbox.fs.write("calc_server.py", SCRIPT)
        assert sandbox.add_mcp_servers(server_configs=configs("sync")) == "OK"

        tools = sandbox.list_tools()
        assert sorted(tools) == ["calc", "generic"]
        assert sorted(tools["calc"]) == ["add", "where", "write_note"]
        add = tools["calc"]["add"]["json_schema"]["function"]
        assert add["description"] == "Add two integers."
        assert add["parameters"]["required"] == ["a", "b"]
        assert list(sandbox.list_tools(tool_type="calc")) == ["calc"]

        r = sandbox.call_tool("add", {"a": 20, "b": 22})
        assert r["isError"] is False
        assert r["content"][0]["text"] == "42"
        r = sandbox.call_tool("write_note", {"text": "noted"})
        assert r["content"][0]["text"] == "/workspace/notes.txt"
        assert sandbox.fs.read("notes.txt") == "noted\n"
        # The generic tools still work beside the MCP ones.
        r = sandbox.call_tool("run_shell_command", {"command": "cat notes.txt"})
        assert r["content"][0]["text"] == "noted\n"

        # overwrite restarts the server with its new config.
        sandbox.add_mcp_servers(server_configs=configs("again"), overwrite=True)
        r = sandbox.call_tool("where", {})
        assert r["content"][0]["text"].endswith(" again")


def test_bad_configs_are_refused(mcp_server):
    # The client turns an error reply into the string "Error: ... | Server Detail: ...".
    with BaseSandbox(base_url=mcp_server.url, bearer_token=mcp_server.token) as sandbox:
        r = sandbox.add_mcp_servers(
            server_configs={"mcpServers": {"web": {"url": "http://127.0.0.1:1/sse"}}}
        )
        assert r.startswith("Error: HTTP 500") and "only stdio" in r, r
        r = sandbox.add_mcp_servers(
            server_configs={"mcpServers": {"gone": {"command": "/no/such/server"}}}
        )
        assert "Failed to initialize server: gone" in r, r
        assert list(sandbox.list_tools()) == ["generic"]


def test_async_client(mcp_server):
    async def main():
        async with BaseSandboxAsync(
            base_url=mcp_server.url, bearer_token=mcp_server.token
        ) as sandbox:
            await sandbox.fs.write_async("calc_server.py", SCRIPT)
            assert await sandbox.add_mcp_servers_async(server_configs=configs("async")) == "OK"
            tools = await sandbox.list_tools_async()
            assert "add" in tools["calc"]
            r = await sandbox.call_tool_async("add", {"a": 1, "b": 2})
            assert r["content"][0]["text"] == "3"
            r = await sandbox.call_tool_async("where", {})
            assert r["content"][0]["text"].endswith(" async")

    asyncio.run(main())
