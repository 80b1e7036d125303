"""Every operation of the OpenAPI document a real `sandboxd serve` serves, fuzzed by
schemathesis: valid and invalid requests generated from the document (bodies, query strings,
path parameters, headers, NUL bytes included), sent with the admin token.

What must hold for each request:
- an answer within REQUEST_TIMEOUT (no hang);
- no 5xx: `/v1` and `/proxy` answer a request's fault with a 4xx. The AgentScope RPC routes are
  the exception their protocol makes: upstream answers every failure of a method with
  `500 {"detail": "Error in <method>: <message>"}` and its clients expect that, so such a reply
  passes, unless its message is the server's internal error (a bug);
- an error reply has the shape of its API, with a message;
- the server process is still alive afterwards, and still serves a real sandbox at the end.

Half the requests naming a sandbox name a live one (recreated when a fuzzed request removed
it), so that the handlers behind the id check are fuzzed too. The run is bounded and
reproducible: FUZZ_EXAMPLES examples per operation (default 12), hypothesis derandomized.
"""

import importlib.util
import itertools
import json
import os
import pathlib

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.generation import GenerationMode

HERE = pathlib.Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location(
    "agentscope_conftest", HERE.parent / "agentscope" / "conftest.py"
)
_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_conftest)

REQUEST_TIMEOUT = 60
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "12"))
RPC_PREFIX = "Error in "


class Fuzzed:
    """The server under fuzzing and its live sandbox."""

    def __init__(self):
        # A limit keeps fuzzed creates from filling the machine; sandboxes live briefly.
        self.server = _conftest.Server(MAX_SANDBOX_INSTANCES="6", SANDBOX_TIMEOUT="120")
        self.auth = {"Authorization": f"Bearer {self.server.token}"}
        self.live = None
        self.turn = itertools.count()

    def live_id(self) -> str:
        """A running sandbox's id (a fuzzed request may have paused or removed the last)."""
        if self.live is not None:
            r = requests.get(f"{self.server.url}/v1/sandboxes/{self.live}", headers=self.auth, timeout=30)
            if r.status_code == 200 and r.json()["state"] == "paused":
                requests.post(f"{self.server.url}/v1/sandboxes/{self.live}/resume", headers=self.auth, timeout=30)
            elif r.status_code != 200 or r.json()["state"] != "running":
                self.live = None
        if self.live is None:
            # Fuzzed creates may hold the whole limit: make room.
            for _ in range(10):
                r = requests.post(
                    f"{self.server.url}/v1/sandboxes",
                    json={"type": "base", "timeout_secs": 600},
                    headers=self.auth,
                    timeout=60,
                )
                if r.status_code == 201:
                    break
                assert r.status_code == 429, r.text
                listed = requests.get(f"{self.server.url}/v1/sandboxes", headers=self.auth, timeout=30)
                for sb in listed.json()["sandboxes"]:
                    requests.delete(f"{self.server.url}/v1/sandboxes/{sb['id']}", headers=self.auth, timeout=60)
            assert r.status_code == 201, r.text
            self.live = r.json()["id"]
        return self.live


@pytest.fixture(scope="session")
def fuzzed():
    f = Fuzzed()
    yield f
    alive = f.server.proc.poll() is None
    f.server.stop()
    assert alive, "the server died during the fuzzing"


# The document the server serves, as checked in (`openapi_snapshot_is_current` keeps the file
# equal to the code; `test_the_served_document_is_the_fuzzed_one` checks the served one).
# Loaded eagerly, so that each operation is a test of its own.
DOCUMENT = HERE.parents[1] / "crates" / "server" / "openapi.json"
schema = schemathesis.openapi.from_path(str(DOCUMENT))
schema.config.generation.update(
    modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
    max_examples=EXAMPLES,
    deterministic=True,
    allow_x00=True,
)


def test_the_served_document_is_the_fuzzed_one(fuzzed):
    served = requests.get(f"{fuzzed.server.url}/openapi.json", timeout=30).json()
    assert served == json.loads(DOCUMENT.read_text())


def _code(response):
    try:
        return response.json().get("error", {}).get("code")
    except (ValueError, AttributeError):
        return None


def _check(case, response):
    path = case.operation.path
    method = case.operation.method.upper()
    what = f"{method} {case.formatted_path} -> {response.status_code}: {response.text[:500]!r}"
    status = response.status_code
    is_rpc = not path.startswith(("/v1/", "/proxy/", "/health", "/openapi.json"))
    if status >= 500:
        detail = ""
        try:
            detail = response.json().get("detail", "")
        except ValueError:
            pass
        protocol_error = (
            is_rpc
            and status == 500
            and isinstance(detail, str)
            and detail.startswith(RPC_PREFIX)
            and not detail.endswith("internal server error")
        )
        # A request that set its own `timeout_ms` may run past it: the documented 504
        # `timeout` (the code's fault, not the server's).
        own_timeout = (
            status == 504
            and isinstance(case.body, dict)
            and case.body.get("timeout_ms") is not None
            and _code(response) == "timeout"
        )
        assert protocol_error or own_timeout, f"server error: {what}"
    if status >= 400:
        body = response.json()
        if path.startswith(("/v1/", "/health", "/openapi.json")):
            err = body.get("error", {})
            assert err.get("code") and err.get("message"), f"not an API error: {what}"
        else:
            assert body.get("detail"), f"not a FastAPI error: {what}"


@schema.parametrize()
@settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_every_operation(case, fuzzed):
    params = case.path_parameters or {}
    if params and next(fuzzed.turn) % 2 == 0:
        live = fuzzed.live_id()
        if "id" in params:
            params["id"] = live
        if "identity" in params:
            params["identity"] = f"sandboxd-{live}"
    try:
        response = case.call(
            base_url=fuzzed.server.url, headers=fuzzed.auth, timeout=REQUEST_TIMEOUT
        )
    except requests.Timeout:
        pytest.fail(f"no answer within {REQUEST_TIMEOUT}s: {case.operation.method.upper()} {case.formatted_path}")
    assert fuzzed.server.proc.poll() is None, "the server died"
    _check(case, response)


def test_still_serves_after_fuzzing(fuzzed):
    """Nothing the fuzzing did broke the server: a sandbox still runs code and keeps files."""
    url, auth = fuzzed.server.url, fuzzed.auth
    sid = fuzzed.live_id()
    r = requests.put(f"{url}/v1/sandboxes/{sid}/files", params={"path": "after.txt"}, data=b"still here", headers=auth, timeout=60)
    assert r.status_code == 200, r.text
    r = requests.post(f"{url}/v1/sandboxes/{sid}/exec", json={"shell": "cat /workspace/after.txt"}, headers=auth, timeout=60)
    assert r.status_code == 200 and r.json()["stdout"] == "still here", r.text
    assert requests.get(f"{url}/health", timeout=10).json()["status"] == "healthy"
