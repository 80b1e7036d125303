# sandboxd Python bootstrap.
#
# The sandboxd agent starts one persistent `python3 -u` per sandbox and feeds it this script.
# It then talks to the agent over a private pair of descriptors (duplicates of the original
# stdin and stdout) with one JSON object per line:
#
#   agent -> python: {"id": N, "code": "..."}
#   python -> agent: {"id": N, "stdout": "...", "stderr": "...", "result": "..." | null,
#                     "error": {"ename": ..., "evalue": ..., "traceback": [...]} | null}
#
# The real descriptors 0 and 1 are pointed at /dev/null, so that nothing the user's code does
# (input(), os.write(1, ...), a subprocess inheriting stdout) can read or corrupt protocol
# lines. The user's code runs in the globals of the real `__main__` module (so that pickling
# classes defined by the user works); this script keeps its own names in a separate namespace.
#
# The agent interrupts code that runs past its timeout with SIGINT (KeyboardInterrupt). A
# SIGINT that arrives while this loop itself runs (between requests) is swallowed.

import ast
import io
import json
import linecache
import os
import signal
import sys
import traceback

_BOOTSTRAP = "<sandboxd-bootstrap>"  # the file name the agent compiles this script under
_CAP = 200_000  # characters kept per captured stream or result
_CO_COROUTINE = 0x0080
_KEEP_CELLS = 1000  # cell sources kept for tracebacks


class _Capture(io.TextIOBase):
    """A text stream that keeps what is written, up to a cap."""

    def __init__(self):
        super().__init__()
        self._parts = []
        self._size = 0
        self._dropped = 0

    @property
    def encoding(self):
        return "utf-8"

    @property
    def errors(self):
        return "strict"

    def writable(self):
        return True

    def isatty(self):
        return False

    def write(self, s):
        if not isinstance(s, str):
            raise TypeError("write() argument must be str, not %s" % type(s).__name__)
        room = _CAP - self._size
        if room > 0:
            part = s[:room]
            self._parts.append(part)
            self._size += len(part)
        if len(s) > room:
            self._dropped += len(s) - max(room, 0)
        return len(s)

    def getvalue(self):
        value = "".join(self._parts)
        if self._dropped:
            value += "\n[sandboxd: %d more characters were dropped]\n" % self._dropped
        return value


def _clean(s):
    """Make `s` encodable as UTF-8 (lone surrogates would break the JSON reader)."""
    if s is None:
        return None
    return s.encode("utf-8", "replace").decode("utf-8")


def _cap(s):
    if s is not None and len(s) > _CAP:
        return s[:_CAP] + "...[sandboxd: %d more characters]" % (len(s) - _CAP)
    return s


def _error(exc, strip_frames=True):
    tb = exc.__traceback__ if strip_frames else None
    # The frames of this script sit at the top of every traceback; users never want them.
    while tb is not None and tb.tb_frame.f_code.co_filename == _BOOTSTRAP:
        tb = tb.tb_next
    try:
        lines = "".join(traceback.format_exception(type(exc), exc, tb)).splitlines()
    except BaseException:  # a broken __str__ must not take the interpreter down
        lines = ["%s: <unprintable exception>" % type(exc).__name__]
    try:
        evalue = str(exc)
    except BaseException:
        evalue = "<unprintable exception>"
    return {
        "ename": type(exc).__name__,
        "evalue": _clean(_cap(evalue)),
        "traceback": [_clean(_cap(line)) for line in lines[:1000]],
    }


_loop = None


def _evaluate(code, namespace):
    value = eval(code, namespace)
    if code.co_flags & _CO_COROUTINE:
        # Top-level `await`: run it on a loop kept across cells, like IPython does.
        global _loop
        import asyncio

        if _loop is None or _loop.is_closed():
            _loop = asyncio.new_event_loop()
        value = _loop.run_until_complete(value)
    return value


def _run(namespace, code, cell):
    name = "<cell-%d>" % cell
    linecache.cache[name] = (len(code), None, code.splitlines(True), name)
    stale = "<cell-%d>" % (cell - _KEEP_CELLS)
    linecache.cache.pop(stale, None)
    flags = getattr(ast, "PyCF_ALLOW_TOP_LEVEL_AWAIT", 0)
    out, err = _Capture(), _Capture()
    saved = sys.stdout, sys.stderr
    result = None
    error = None
    sys.stdout, sys.stderr = out, err
    try:
        try:
            tree = ast.parse(code, name, "exec")
            last = None
            if tree.body and isinstance(tree.body[-1], ast.Expr):
                last = ast.Expression(tree.body.pop().value)
            body = compile(tree, name, "exec", flags)
            tail = compile(last, name, "eval", flags) if last is not None else None
        except SyntaxError as exc:
            error = _error(exc, strip_frames=False)
        else:
            try:
                _evaluate(body, namespace)
                if tail is not None:
                    value = _evaluate(tail, namespace)
                    if value is not None:
                        result = _clean(_cap(repr(value)))
            except BaseException as exc:  # SystemExit and KeyboardInterrupt included
                error = _error(exc)
    finally:
        sys.stdout, sys.stderr = saved
    return {
        "stdout": _clean(out.getvalue()),
        "stderr": _clean(err.getvalue()),
        "result": result,
        "error": error,
    }


def _main():
    requests = os.fdopen(os.dup(0), "rb")
    replies = os.fdopen(os.dup(1), "wb")
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    signal.signal(signal.SIGINT, signal.default_int_handler)

    namespace = sys.modules["__main__"].__dict__
    for key in [k for k in namespace if not (k.startswith("__") and k.endswith("__"))]:
        del namespace[key]
    namespace["__name__"] = "__main__"

    cell = 0
    while True:
        try:
            line = requests.readline()
            if not line:
                return
            try:
                request = json.loads(line)
                rid = request["id"]
                code = request.get("code", "")
            except Exception:
                continue
            cell += 1
            try:
                reply = _run(namespace, code, cell)
            except KeyboardInterrupt as exc:
                reply = {"stdout": "", "stderr": "", "result": None, "error": _error(exc)}
            reply["id"] = rid
            data = (json.dumps(reply) + "\n").encode("ascii")
            # A timeout's SIGINT must not cut a reply line in half: hold it until written.
            old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
            try:
                replies.write(data)
                replies.flush()
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, old)
        except KeyboardInterrupt:
            continue
        except BrokenPipeError:
            return


_main()
