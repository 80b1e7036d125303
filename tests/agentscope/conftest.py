"""A real `sandboxd serve` for the AgentScope client tests.

Each server gets its own temporary state and run directories, a unique cgroup parent, a free
port and a bearer token; it is stopped with SIGTERM and checked to have left nothing behind
(no sandbox cgroups, no box directories). Binaries and templates come from the environment
that scripts/test exports (SANDBOXD_AGENT_BIN, SANDBOXD_TEMPLATES_DIR), else from the defaults
scripts/build and `sandboxd template build` use.
"""

import os
import pathlib
import signal
import socket
import subprocess
import tempfile
import time
import uuid

import pytest
import requests

ROOT = pathlib.Path(__file__).resolve().parents[2]
TARGET = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
SANDBOXD = pathlib.Path(os.environ.get("SANDBOXD_BIN", TARGET / "debug/sandboxd"))
AGENT = pathlib.Path(
    os.environ.get("SANDBOXD_AGENT_BIN", TARGET / "debug/sandboxd-agent")
)
TEMPLATES = pathlib.Path(
    os.environ.get("SANDBOXD_TEMPLATES_DIR", "/var/lib/sandboxd/templates")
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cgroup_dirs(parent: str) -> list:
    """Every cgroup directory named `parent`, in every hierarchy (v1 or v2)."""
    root = pathlib.Path("/sys/fs/cgroup")
    dirs = [root / parent] + [d / parent for d in root.iterdir() if d.is_dir()]
    return [d for d in dirs if d.is_dir()]


def _cgroup_children(parent: str) -> list:
    """Sandbox cgroups below `parent` (`.server`, where the server may put itself, is not one)."""
    return [
        c
        for d in _cgroup_dirs(parent)
        for c in d.iterdir()
        if c.is_dir() and c.name != ".server"
    ]


def warm_sandboxes(server, n: int) -> list:
    """The server's warm sandboxes (`/v1` records), once there are exactly `n`."""
    deadline = time.monotonic() + 60
    while True:
        r = requests.get(
            f"{server.url}/v1/sandboxes",
            headers={"Authorization": f"Bearer {server.token}"},
            timeout=10,
        )
        r.raise_for_status()
        warm = [s for s in r.json()["sandboxes"] if s["state"] == "warm"]
        if len(warm) == n:
            return warm
        assert time.monotonic() < deadline, f"{len(warm)} warm, want {n}"
        time.sleep(0.05)


class Server:
    """One `sandboxd serve` process, with `args` after `serve` and `settings` in its
    environment."""

    def __init__(self, args: tuple = (), **settings: str):
        for path, hint in [
            (SANDBOXD, "build it: scripts/build"),
            (AGENT, "build it: scripts/build"),
            (TEMPLATES / "base" / "ready", "build it: target/debug/sandboxd template build base"),
        ]:
            if not path.exists():
                pytest.fail(f"{path} is missing; {hint}")
        self.token = "tok-" + uuid.uuid4().hex
        self.state = tempfile.TemporaryDirectory(prefix="sandboxd-agentscope-")
        self.cgroup_parent = f"sandboxd-agentscope-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        state = pathlib.Path(self.state.name)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "RUST_LOG": os.environ.get("RUST_LOG", "warn"),
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "BEARER_TOKEN": self.token,
            "SANDBOXD_STATE_DIR": str(state),
            "SANDBOXD_RUN_DIR": str(state / "run"),
            "SANDBOXD_TEMPLATES_DIR": str(TEMPLATES),
            "SANDBOXD_CGROUP_PARENT": self.cgroup_parent,
            "SANDBOXD_AGENT_BIN": str(AGENT),
            **settings,
        }
        self.log = open(state / "server.log", "wb")
        self.proc = subprocess.Popen(
            [str(SANDBOXD), "serve", *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                r = requests.get(f"{self.url}/health", timeout=1)
                if r.status_code == 200 and r.json().get("status") == "healthy":
                    break
            except requests.RequestException:
                pass
            if self.proc.poll() is not None:
                pytest.fail(f"sandboxd serve exited during start-up:\n{self.logs()}")
            if time.monotonic() > deadline:
                self.proc.kill()
                pytest.fail(f"sandboxd serve did not answer /health:\n{self.logs()}")
            time.sleep(0.05)

    def logs(self) -> str:
        self.log.flush()
        return (pathlib.Path(self.state.name) / "server.log").read_text(errors="replace")

    def stop(self) -> None:
        """SIGTERM, then check the server removed every sandbox and its resources."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            pytest.fail(f"sandboxd serve did not stop on SIGTERM:\n{self.logs()}")
        assert code == 0, f"sandboxd serve exited with {code}:\n{self.logs()}"
        state = pathlib.Path(self.state.name)
        leftovers = _cgroup_children(self.cgroup_parent)
        # Each box has a directory in <state>/native/boxes/ and in <run>/native/.
        leftovers += list((state / "native" / "boxes").glob("*"))
        leftovers += list((state / "run" / "native").glob("*"))
        assert not leftovers, f"left behind after SIGTERM: {leftovers}"
        # The (now empty) cgroup parents themselves are ours to remove.
        for d in _cgroup_dirs(self.cgroup_parent):
            for c in [d / ".server", d]:
                try:
                    c.rmdir()
                except OSError:
                    pass
        self.log.close()
        self.state.cleanup()


@pytest.fixture(scope="session")
def server():
    s = Server()
    yield s
    s.stop()


@pytest.fixture()
def limited_server():
    s = Server(MAX_SANDBOX_INSTANCES="1")
    yield s
    s.stop()


@pytest.fixture()
def pooled_server():
    s = Server(POOL_SIZE="2")
    yield s
    s.stop()


@pytest.fixture()
def heartbeat_server():
    s = Server(HEARTBEAT_TIMEOUT="2", HEARTBEAT_SCAN_INTERVAL="1")
    yield s
    s.stop()
