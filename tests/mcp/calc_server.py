"""An MCP server built with the official MCP Python SDK (package `mcp`, 2.x), run inside a
sandbox by the end-to-end and AgentScope client tests through `add_mcp_servers`.

The sandbox has no network and no `mcp` package of its own: the tests mount the test venv's
site-packages read-only and point PYTHONPATH at it.
"""
import os
import socket

from mcp.server.mcpserver import MCPServer

server = MCPServer("calc")


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool()
def write_note(text: str) -> str:
    """Append a line to notes.txt in the working directory (the sandbox's /workspace)."""
    with open("notes.txt", "a") as f:
        f.write(text + "\n")
    return os.path.abspath("notes.txt")


@server.tool()
def where() -> str:
    """The host name this server sees, and its environment's MARKER."""
    return f"{socket.gethostname()} {os.environ.get('MARKER', '')}"


if __name__ == "__main__":
    server.run()
