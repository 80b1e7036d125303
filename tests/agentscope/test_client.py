"""The real `agentscope-runtime` client (remote mode) against a real `sandboxd serve`."""

import asyncio
import time

import pytest
import requests
from agentscope_runtime.sandbox import BaseSandbox, BaseSandboxAsync
from agentscope_runtime.sandbox.manager.sandbox_manager import SandboxManager

from conftest import warm_sandboxes


def texts(result: dict) -> dict:
    """A CallToolResult's texts by description (stdout, stderr, returncode)."""
    return {c["description"]: c["text"] for c in result["content"]}


def test_readme_example(server):
    with BaseSandbox(base_url=server.url, bearer_token=server.token) as sandbox:
        r = sandbox.run_shell_command(command="echo 'Hello from remote!'")
        assert r == {
            "meta": None,
            "content": [
                {"type": "text", "text": "Hello from remote!\n", "annotations": None,
                 "meta": None, "description": "stdout"},
                {"type": "text", "text": "0", "annotations": None, "meta": None,
                 "description": "returncode"},
            ],
            "structuredContent": None,
            "isError": False,
        }
        r = sandbox.run_shell_command(command="echo out; echo err >&2; exit 3")
        assert texts(r) == {"stdout": "out\n", "stderr": "err\n", "returncode": "3"}
        assert r["isError"] is True
        # bash, in /workspace.
        r = sandbox.run_shell_command(command="echo $BASH_VERSION | cut -c1; pwd")
        assert texts(r)["stdout"] == "5\n/workspace\n"


def test_ipython_keeps_state(server):
    with BaseSandbox(base_url=server.url, bearer_token=server.token) as sandbox:
        r = sandbox.run_ipython_cell(code="x = 21\nimport os")
        assert r["isError"] is False
        assert texts(r) == {"stdout": ""}
        r = sandbox.run_ipython_cell(code="print(x * 2)")
        assert texts(r) == {"stdout": "42\n"}
        r = sandbox.run_ipython_cell(code="x + 1")
        assert texts(r)["stdout"] == "22\n"
        r = sandbox.run_ipython_cell(code="1 / 0")
        assert r["isError"] is True
        assert "ZeroDivisionError" in texts(r)["stderr"]
        # The interpreter survives an exception.
        r = sandbox.run_ipython_cell(code="print(x)")
        assert texts(r) == {"stdout": "21\n"}


def test_tools_info_and_health(server):
    with BaseSandbox(base_url=server.url, bearer_token=server.token) as sandbox:
        tools = sandbox.list_tools()
        assert list(tools) == ["generic"]
        assert sorted(tools["generic"]) == ["run_ipython_cell", "run_shell_command"]
        schema = tools["generic"]["run_ipython_cell"]["json_schema"]["function"]
        assert schema["parameters"]["required"] == ["code"]
        assert sandbox.list_tools(tool_type="generic") == {"generic": tools["generic"]}

        r = sandbox.call_tool("run_shell_command", {"command": "echo called"})
        assert texts(r)["stdout"] == "called\n"
        r = sandbox.call_tool("no_such_tool", {})
        assert r["isError"] is True

        info = sandbox.get_info()
        assert info["container_name"] == sandbox.sandbox_id
        assert info["state"] == "running"
        assert info["sandbox_type"] == "base"
        assert "sandbox-base" in info["version"]
        assert info["session_ctx_id"] and info["meta"]["session_ctx_id"] == info["session_ctx_id"]
        assert sandbox.manager_api.check_health(sandbox.sandbox_id) is True
        assert sandbox.manager_api.get_status(sandbox.sandbox_id) == "running"

        # A program that is no MCP server is named in the error, with how it ended (the
        # MCP servers themselves are in test_mcp.py).
        r = sandbox.add_mcp_servers({"mcpServers": {"x": {"command": "true"}}})
        assert isinstance(r, str) and "Failed to initialize server: x" in r, r
        assert "exited with code 0" in r, r


def test_fs_sync(server, tmp_path):
    with BaseSandbox(base_url=server.url, bearer_token=server.token) as sandbox:
        fs = sandbox.fs
        e = fs.write("notes/a.txt", "hello text")
        assert e["path"] == "/workspace/notes/a.txt"
        assert (e["name"], e["type"], e["size"]) == ("a.txt", "file", 10)
        fs.write("blob.bin", bytes(range(256)))
        local = tmp_path / "big.bin"
        local.write_bytes(b"x" * (3 << 20))
        assert fs.write_from_path("big.bin", str(local))["size"] == 3 << 20

        assert fs.read("notes/a.txt") == "hello text"
        assert fs.read("blob.bin", fmt="bytes") == bytes(range(256))
        assert b"".join(fs.read("big.bin", fmt="stream")) == b"x" * (3 << 20)

        written = fs.write_many([
            {"path": "many/one.txt", "data": "1"},
            {"path": "many/two.bin", "data": b"22"},
        ])
        assert [w["path"] for w in written] == ["/workspace/many/one.txt", "/workspace/many/two.bin"]
        assert fs.read("many/two.bin") == "22"

        names = {e["name"]: e for e in fs.list(".")}
        assert {"notes", "blob.bin", "big.bin", "many"} <= set(names)
        assert names["notes"]["type"] == "dir" and names["notes"]["size"] is None
        assert "a.txt" not in names
        deep = [e["path"] for e in fs.list(".", depth=2)]
        assert "/workspace/notes/a.txt" in deep
        assert deep.index("/workspace/notes") < deep.index("/workspace/notes/a.txt")

        assert fs.exists("notes/a.txt") is True
        assert fs.exists("nope") is False
        assert fs.mkdir("d1/d2") is True
        assert fs.mkdir("d1/d2") is False
        moved = fs.move("notes/a.txt", "d1/d2/moved/a.txt")
        assert moved["path"] == "/workspace/d1/d2/moved/a.txt"
        assert fs.exists("notes/a.txt") is False
        fs.remove("d1")
        assert fs.exists("d1") is False
        fs.remove("d1")  # already gone: still fine

        # The shell sees the same files.
        r = sandbox.run_shell_command(command="cat many/one.txt; ls")
        assert texts(r)["stdout"].startswith("1")

        # Escapes are refused with 403; a missing file is 404.
        for bad in ["../etc/passwd", "/etc/passwd"]:
            with pytest.raises(requests.HTTPError) as err:
                fs.read(bad)
            assert err.value.response.status_code == 403
        with pytest.raises(requests.HTTPError) as err:
            fs.write("../outside.txt", "x")
        assert err.value.response.status_code == 403
        with pytest.raises(requests.HTTPError) as err:
            fs.read("missing.txt")
        assert err.value.response.status_code == 404


def test_async_client(server):
    async def main():
        async with BaseSandboxAsync(base_url=server.url, bearer_token=server.token) as sb:
            r = await sb.run_shell_command("echo async")
            assert texts(r)["stdout"] == "async\n"
            await sb.run_ipython_cell("y = 5")
            r = await sb.run_ipython_cell("print(y * 3)")
            assert texts(r) == {"stdout": "15\n"}
            tools = await sb.list_tools_async()
            assert sorted(tools["generic"]) == ["run_ipython_cell", "run_shell_command"]
            r = await sb.call_tool_async("run_shell_command", {"command": "echo via call"})
            assert texts(r)["stdout"] == "via call\n"
            info = await sb.get_info_async()  # sends {"args": <identity>}
            assert info["container_name"] == sb.sandbox_id
            assert info["sandbox_type"] == "base_async"

            fs = sb.fs
            assert (await fs.write_async("a/x.txt", "async text"))["size"] == 10
            await fs.write_async("b.bin", b"\x00\x01")
            assert await fs.read_async("a/x.txt") == "async text"
            assert await fs.read_async("b.bin", fmt="bytes") == b"\x00\x01"
            chunks = [c async for c in await fs.read_async("a/x.txt", fmt="stream")]
            assert b"".join(chunks) == b"async text"
            written = await fs.write_many_async([
                {"path": "m/1.txt", "data": "one"},
                {"path": "m/2.txt", "data": b"two"},
            ])
            assert [w["name"] for w in written] == ["1.txt", "2.txt"]
            listed = await fs.list_async("m")
            assert sorted(e["name"] for e in listed) == ["1.txt", "2.txt"]
            assert await fs.exists_async("m/1.txt") is True
            assert await fs.mkdir_async("new") is True
            assert (await fs.move_async("m/1.txt", "new/1.txt"))["path"] == "/workspace/new/1.txt"
            await fs.remove_async("m")
            assert await fs.exists_async("m") is False
            r = await sb.run_shell_command("cat new/1.txt")
            assert texts(r)["stdout"] == "one"

    asyncio.run(main())


def test_manager_remote_sessions(server):
    mgr = SandboxManager(base_url=server.url, bearer_token=server.token)
    name = mgr.create(sandbox_type="base", meta={"session_ctx_id": "sess-1"})
    assert name and name.startswith("sandboxd-sb-")
    other = mgr.create_from_pool(sandbox_type="base", meta={"session_ctx_id": "sess-1"})
    assert set(mgr.get_session_mapping("sess-1")) == {name, other}
    assert "sess-1" in mgr.list_session_keys()
    assert mgr.get_info(name)["session_ctx_id"] == "sess-1"
    assert mgr.check_health(name) is True
    r = mgr.call_tool(name, "run_ipython_cell", {"code": "print('mgr')"})
    assert texts(r) == {"stdout": "mgr\n"}
    # The bare sandbox id is an identity too.
    bare = name[len("sandboxd-"):]
    assert mgr.get_info(bare)["container_name"] == name

    async def twins():
        assert set(await mgr.get_session_mapping_async("sess-1")) == {name, other}
        assert (await mgr.get_info_async(name))["container_name"] == name
        assert await mgr.get_status_async(name) == "running"
        assert await mgr.check_health_async(name) is True
        assert await mgr.release_async(other) is True

    asyncio.run(twins())
    assert mgr.get_session_mapping("sess-1") == [name]
    assert mgr.release(name) is True
    assert mgr.get_session_mapping("sess-1") == []
    assert "sess-1" not in mgr.list_session_keys()
    assert mgr.release(name) is True  # already released

    # cleanup releases every sandbox of the server.
    a = mgr.create(sandbox_type="base")
    b = mgr.create(sandbox_type="base")
    assert a and b
    assert mgr.cleanup() is None
    for n in (a, b):
        info = mgr.get_info(n)
        assert isinstance(info, str) and "No container found" in info, info


def test_wrong_token_is_refused(server):
    for token in ["wrong", None]:
        mgr = SandboxManager(base_url=server.url, bearer_token=token)
        # The client turns HTTP errors into an "Error: ..." string.
        r = mgr.list_session_keys()
        assert isinstance(r, str) and r.startswith("Error: HTTP 401"), r
        assert mgr.create(sandbox_type="base").startswith("Error: HTTP 401")
        with pytest.raises(requests.HTTPError) as err:
            mgr.fs_read("sandboxd-sb-0000000000000000", "x")
        assert err.value.response.status_code == 401
    r = requests.post(
        f"{server.url}/create",
        json={},
        headers={"Authorization": "Bearer wrong"},
        timeout=10,
    )
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"] == "Bearer"
    assert "detail" in r.json()
    assert server.token not in r.text


def test_instance_limit(limited_server):
    s = limited_server
    with BaseSandbox(base_url=s.url, bearer_token=s.token) as first:
        assert texts(first.run_shell_command(command="echo one"))["stdout"] == "one\n"
        mgr = SandboxManager(base_url=s.url, bearer_token=s.token)
        assert mgr.create(sandbox_type="base") is None
        with pytest.raises(RuntimeError, match="No sandbox available"):
            with BaseSandbox(base_url=s.url, bearer_token=s.token):
                pass
    # Released: room again.
    with BaseSandbox(base_url=s.url, bearer_token=s.token) as again:
        assert texts(again.run_shell_command(command="echo two"))["stdout"] == "two\n"


def _warm(server, n: int) -> list:
    """Container names of the server's warm sandboxes, once there are exactly `n`."""
    return ["sandboxd-" + s["id"] for s in warm_sandboxes(server, n)]


def test_pool_hand_out(pooled_server):
    s = pooled_server
    warm = _warm(s, 2)
    mgr = SandboxManager(base_url=s.url, bearer_token=s.token)
    assert mgr.get_info(warm[0])["state"] == "warm"
    # BaseSandbox takes its sandbox with create_from_pool.
    with BaseSandbox(base_url=s.url, bearer_token=s.token) as sandbox:
        assert sandbox.sandbox_id in warm
        info = sandbox.get_info()
        assert info["state"] == "running" and info["session_ctx_id"]
        r = sandbox.run_shell_command(command="echo pooled; pwd")
        assert texts(r)["stdout"] == "pooled\n/workspace\n"
        # Refilled in the background, never past POOL_SIZE.
        refilled = _warm(s, 2)
        assert sandbox.sandbox_id not in refilled

    async def async_client():
        # The async twin type runs on the `base` template, so it comes from the same pool.
        async with BaseSandboxAsync(base_url=s.url, bearer_token=s.token) as sb:
            assert sb.sandbox_id in refilled
            r = await sb.run_shell_command("echo async")
            assert texts(r)["stdout"] == "async\n"

    asyncio.run(async_client())
    name = mgr.create_from_pool(sandbox_type="base", meta={"session_ctx_id": "pool-s"})
    assert mgr.get_session_mapping("pool-s") == [name]
    assert mgr.get_info(name)["state"] == "running"
    assert mgr.release(name) is True


def test_heartbeat_reap_then_restore(heartbeat_server):
    s = heartbeat_server
    mgr = SandboxManager(base_url=s.url, bearer_token=s.token)
    with BaseSandbox(base_url=s.url, bearer_token=s.token) as sandbox:
        old = sandbox.sandbox_id
        sandbox.fs.write("notes/keep.txt", "still here")
        r = sandbox.run_shell_command(command="echo shell > made-by-shell.txt")
        assert r["isError"] is False
        # No touch for HEARTBEAT_TIMEOUT: the scanner recycles the session.
        deadline = time.monotonic() + 30
        while mgr.get_info(old)["state"] != "recycled":
            assert time.monotonic() < deadline, mgr.get_info(old)
            time.sleep(0.2)
        info = mgr.get_info(old)
        assert info["recycle_reason"] == "heartbeat timeout"
        # The next touch restores it: a new sandbox on the same workspace.
        r = sandbox.run_shell_command(command="cat notes/keep.txt made-by-shell.txt")
        assert texts(r)["stdout"] == "still hereshell\n"
        info = sandbox.get_info()  # the old name follows the redirect
        assert info["state"] == "running"
        assert info["container_name"] != old
        assert sandbox.fs.read("notes/keep.txt") == "still here"
        assert mgr.check_health(old) is True
        session = info["session_ctx_id"]
        assert mgr.get_session_mapping(session) == [info["container_name"]]


def test_stop_and_start(server):
    """`stop` freezes the sandbox (its state kept), `start` lets it run on."""
    mgr = SandboxManager(base_url=server.url, bearer_token=server.token)
    name = mgr.create(sandbox_type="base")
    try:
        r = mgr.call_tool(name, "run_ipython_cell", {"code": "kept = 6 * 7"})
        assert r["isError"] is False
        assert mgr.stop(name) is True
        assert mgr.get_status(name) == "exited"
        r = mgr.call_tool(name, "run_shell_command", {"command": "true"})
        assert r["isError"] is True and "not running" in r["content"][0]["text"], r
        assert mgr.start(name) is True
        assert mgr.get_status(name) == "running"
        r = mgr.call_tool(name, "run_ipython_cell", {"code": "print(kept)"})
        assert texts(r) == {"stdout": "42\n"}
    finally:
        mgr.release(name)
