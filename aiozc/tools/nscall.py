"""Running code inside a network namespace: what ``NetNamespace``'s methods (tools/netns.py) do.

* A fresh interpreter (``call`` / ``call_unprivileged`` / ``run_python``): a new
  ``sys.executable`` under ``ip netns exec``, so the code inherits no threads, event loops or
  namespace switches from the caller; the result comes back as JSON. A module-level function
  travels by reference (module and qualname), a nested one as its source.
* A helper thread (``in_thread`` / ``socket``) or a forked child (``enter``) switched with libc
  ``setns(2)`` (cffi ABI mode: ``os.setns`` only exists from Python 3.12).
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import cffi  # type: ignore[import-untyped]

T = TypeVar("T")

CLONE_NEWNET = 0x40000000

_ffi: Any = cffi.FFI()  # cffi has no stubs
_ffi.cdef("int setns(int fd, int nstype);")
_libc: Any = None
_libc_lock = threading.Lock()

class NamespaceCallError(RuntimeError):
    """Code run by ``call``/``run_python`` inside a namespace raised or died.

    ``remote_traceback`` holds the child's formatted traceback (if it got that far),
    ``stdout``/``stderr`` what it printed, ``returncode`` its exit status.
    """

    def __init__(
        self, message: str, *, remote_traceback: str = "", stdout: str = "", stderr: str = "",
        returncode: int | None = None,
    ) -> None:
        details = [message]
        if remote_traceback:
            details.append("--- traceback inside the namespace ---\n" + remote_traceback.rstrip())
        if stderr.strip():
            details.append("--- stderr ---\n" + stderr.rstrip()[-4000:])
        super().__init__("\n".join(details))
        self.remote_traceback = remote_traceback
        self.stdout = stdout
        self.stderr = stderr
        self.returncode = returncode


# The bootstrap run by `call`/`run_python` under `ip netns exec`. It reads a JSON spec from
# stdin and writes {"ok": result} or {"error": ..., "traceback": ...} to the file named in
# AIOZC_NETNS_RESULT (a file, not a pipe: no deadlock whatever the result size).
_BOOTSTRAP = r"""
import importlib, importlib.util, json, os, sys, traceback
spec = json.loads(sys.stdin.read())
_out = open(os.environ["AIOZC_NETNS_RESULT"], "w")  # before any privilege drop
sys.path[:0] = [p for p in spec["sys_path"] if p not in sys.path]
def _load():
    if spec["mode"] == "source":
        g = {"__name__": "__aiozc_netns__"}
        g.update(spec["kwargs"] if spec.get("kwargs_as_globals") else {})
        exec(compile(spec["source"], spec.get("filename", "<netns>"), "exec"), g)
        return g
    try:
        mod = importlib.import_module(spec["module"])
    except ImportError:
        if not spec.get("file"):
            raise
        s = importlib.util.spec_from_file_location(spec["module"], spec["file"])
        mod = importlib.util.module_from_spec(s)
        sys.modules[spec["module"]] = mod
        s.loader.exec_module(mod)
    return mod
try:
    target = _load()
    if spec["mode"] == "source" and spec.get("kwargs_as_globals"):
        result = target.get("result")
    else:
        fn = target[spec["qualname"]] if isinstance(target, dict) else target
        if not isinstance(target, dict):
            for part in spec["qualname"].split("."):
                fn = getattr(fn, part)
        drop = spec.get("drop")
        if drop:
            import resource
            for name in drop["preload"]:
                importlib.import_module(name)
            if drop["memlock"] is not None:
                resource.setrlimit(resource.RLIMIT_MEMLOCK, (drop["memlock"], drop["memlock"]))
            os.setgroups([])
            os.setgid(drop["gid"])
            os.setuid(drop["uid"])  # from root to non-root: all capabilities are gone
        result = fn(*spec["args"], **spec["kwargs"])
        if hasattr(result, "__await__"):
            import asyncio
            async def _aw(r):
                return await r
            result = asyncio.run(_aw(result))
    payload = {"ok": result}
    text = json.dumps(payload)
except BaseException as exc:
    text = json.dumps({"error": repr(exc), "traceback": traceback.format_exc()})
with _out:
    _out.write(text)
"""


def func_spec(func: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any]
               ) -> dict[str, Any]:
    spec: dict[str, Any] = {"args": list(args), "kwargs": kwargs}
    qualname = getattr(func, "__qualname__", "")
    module = getattr(func, "__module__", None)
    mod_obj = sys.modules.get(module or "")
    if module == "__main__" and mod_obj is not None:
        main_spec = getattr(mod_obj, "__spec__", None)
        module = main_spec.name if main_spec is not None else None
    if module and "<" not in qualname:
        spec.update(mode="ref", module=module, qualname=qualname,
                    file=getattr(mod_obj, "__file__", None))
    else:
        source = textwrap.dedent(inspect.getsource(func))
        if func.__name__ == "<lambda>":
            raise ValueError("call() cannot send a lambda; use a def or run_python()")
        spec.update(mode="source", source=source, qualname=func.__name__,
                    filename=inspect.getsourcefile(func) or "<netns>")
    return spec


def source_spec(source: str, globals_: dict[str, Any]) -> dict[str, Any]:
    """``source`` exec'd with ``globals_`` (JSON values); its ``result`` global comes back."""
    return {"mode": "source", "source": textwrap.dedent(source), "kwargs": globals_,
            "kwargs_as_globals": True, "args": []}


def run_spec(exec_argv: Callable[[Sequence[str]], list[str]], where: str, spec: dict[str, Any],
             timeout: float | None) -> Any:
    """Run ``spec`` in ``exec_argv([python, ...])``; its result, or :class:`NamespaceCallError`."""
    spec["sys_path"] = [p for p in sys.path if p]
    if "" in sys.path or not sys.path:
        spec["sys_path"].insert(0, os.getcwd())
    payload = json.dumps(spec)
    fd, result_path = tempfile.mkstemp(prefix="aiozc-netns-", suffix=".json")
    os.close(fd)
    try:
        env = dict(os.environ, AIOZC_NETNS_RESULT=result_path)
        proc = subprocess.Popen(
            exec_argv([sys.executable, "-c", _BOOTSTRAP]), stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        try:
            out, err = proc.communicate(payload, timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            raise NamespaceCallError(
                f"code in namespace {where} timed out after {timeout}s",
                stdout=out, stderr=err, returncode=proc.returncode,
            ) from None
        with open(result_path) as f:
            text = f.read()
    finally:
        os.unlink(result_path)
    if not text:
        raise NamespaceCallError(
            f"interpreter in namespace {where} exited {proc.returncode} without a result",
            stdout=out, stderr=err, returncode=proc.returncode,
        )
    reply = json.loads(text)
    if "error" in reply:
        raise NamespaceCallError(
            f"in namespace {where}: {reply['error']}", remote_traceback=reply["traceback"],
            stdout=out, stderr=err, returncode=proc.returncode,
        )
    return reply["ok"]


def _setns_fn() -> Any:
    global _libc
    with _libc_lock:
        if _libc is None:
            _libc = _ffi.dlopen(None)
        return _libc.setns


def setns_path(path: str) -> None:
    """Move the calling thread into the network namespace at ``path`` (/run/netns/NAME)."""
    setns = _setns_fn()
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if setns(fd, CLONE_NEWNET) != 0:
            err = _ffi.errno
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


def in_thread(path: str, thread_name: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` on a new thread that first joins the namespace at ``path``.

    The thread exits when ``fn`` returns, so no thread is ever left in a switched namespace.
    """
    box: dict[str, Any] = {}

    def runner() -> None:
        try:
            setns_path(path)
            box["ok"] = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            box["err"] = exc

    t = threading.Thread(target=runner, name=thread_name, daemon=True)
    t.start()
    t.join()
    if "err" in box:
        raise box["err"]
    return box["ok"]  # type: ignore[no-any-return]
