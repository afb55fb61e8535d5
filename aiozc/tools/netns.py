"""Private network namespaces for the zero-copy test and benchmark rig (Linux, root, iproute2).

Why: on one host, TCP MSG_ZEROCOPY is always reported *copied* (loopback and veth hand the skb to
a local receiver, which copies it). True zero-copy is observable for UDP sent to an ``ifb`` device:
ifb is NOARP and drops what it is given, so the pages are released uncopied and notifications
come back with ``ee_code == 0``. ``net.core.optmem_max`` is per network namespace, so lowering it
inside a private namespace injects real ENOBUFS without touching the host.

Network safety: every namespace made here contains only ``lo`` plus an ``ifb0`` (SinkNamespace)
or one end of a veth pair (VethPair). Nothing is routed to the host or beyond, so code running
inside can only reach its own namespace's /24.

Three ways to run code inside a namespace, pick by need (the machinery is in nscall.py):

* ``ns.run(argv)`` / ``ns.popen(argv)``: any command under ``ip netns exec NAME``.
* ``ns.call(func, *args, **kwargs)`` / ``ns.run_python(source, **globals)``: a fresh
  ``sys.executable`` under ``ip netns exec``; the result comes back as JSON. Clean process, no
  threads or event loops inherited: the preferred way to run sender code (benchmarks).
* In-process: ``ns.socket(...)`` / ``ns.in_thread(fn)`` switch a *short-lived helper thread* into
  the namespace with libc ``setns(2)`` (cffi ABI mode; ``os.setns`` only exists from Python 3.12)
  and create sockets there. A socket keeps the namespace it was created in for its whole life, so
  the caller's thread (and its asyncio/uvloop event loop) can then use it normally; the caller's
  own thread never changes namespace. ``ns.enter()`` switches the *calling* thread for good: use
  it only in a forked, single-threaded child that exits afterwards.

No pytest imports here: ``python -m aiozc bench udp-sink`` uses this module as well.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from .nscall import NamespaceCallError, func_spec, in_thread, run_spec, setns_path, source_spec
from .procs import stop_process

__all__ = [
    "NetNamespace",
    "NetnsError",
    "NamespaceCallError",
    "SinkNamespace",
    "VethPair",
    "list_namespaces",
    "netns_available",
    "reap_stale_namespaces",
    "sink_rx_packets",
    "OPTMEM_ONE_PENDING_NOTIFICATION",
    "OPTMEM_NO_ZEROCOPY",
]

T = TypeVar("T")

# Measured on kernel 6.18 (x86_64), UDP into the ifb sink. Option memory is checked before each
# MSG_ZEROCOPY send; a zero-copy send needs optmem_max >= 576 (one notification skb), and while
# one notification sits undrained on the error queue the next send needs optmem_max >= ~1408.
# Contiguous completions coalesce into the queued skb, so the queue never grows: with 4096 (or
# anything >= ~1408) no send ever fails. Hence:
# - 1024 (middle of 576..1407): the first MSG_ZEROCOPY send of a socket succeeds, every later
#   one fails with ENOBUFS until the error queue is drained; deterministic.
# - 0: every MSG_ZEROCOPY send fails with ENOBUFS.
# ENOBUFS sends consume no id; plain (copying) sends are unaffected either way.
OPTMEM_ONE_PENDING_NOTIFICATION = 1024
OPTMEM_NO_ZEROCOPY = 0

_CMD_TIMEOUT = 30.0

class NetnsError(RuntimeError):
    """An ``ip`` command or a namespace switch failed."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(
            ["ip", *args], capture_output=True, text=True, timeout=_CMD_TIMEOUT, check=False
        )
    except FileNotFoundError as exc:
        raise NetnsError("iproute2 `ip` not found") from exc
    if check and proc.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {proc.stderr.strip() or f'exit {proc.returncode}'}")
    return proc


def list_namespaces() -> list[str]:
    """Names from ``ip netns list`` (first word of each line)."""
    out = _ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


# --------------------------------------------------------------------------------------------
# Naming and cleanup registry

_counter_lock = threading.Lock()
_counter = 0
_live: dict[str, "NetNamespace"] = {}


def _next_index() -> int:
    global _counter
    with _counter_lock:
        n = _counter
        _counter += 1
        return n


def _subnet_octet(n: int) -> int:
    # Addresses live inside private namespaces, so two rigs can never actually clash; still vary
    # the third octet per process and per rig so captures and logs from concurrent rigs differ.
    return (os.getpid() * 7 + n) % 250 + 1


@atexit.register
def _cleanup_at_exit() -> None:
    for ns in list(_live.values()):
        try:
            ns.close()
        except Exception:  # noqa: BLE001 - best effort at interpreter exit
            pass


def reap_stale_namespaces(prefixes: Sequence[str] = ("aiozc-sink", "aiozc-veth", "aiozc-probe")
                          ) -> list[str]:
    """Delete rig namespaces left behind by processes that died without cleanup (SIGKILL).

    A name ``PREFIX-PID-N...`` is deleted only when no process PID exists. Not called
    automatically: a process in another PID namespace sharing /run/netns would look dead.
    Returns the names deleted.
    """
    gone = []
    for name in list_namespaces():
        for prefix in prefixes:
            rest = name[len(prefix) + 1:] if name.startswith(prefix + "-") else ""
            pid = rest.split("-", 1)[0]
            if pid.isdigit() and int(pid) != os.getpid() and not os.path.exists(f"/proc/{pid}"):
                if _ip("netns", "del", name, check=False).returncode == 0:
                    gone.append(name)
                break
    return gone


# --------------------------------------------------------------------------------------------
# Availability probe


@functools.lru_cache(maxsize=1)
def netns_available() -> str | None:
    """``None`` if the rig can run here, else the reason (meant for ``pytest.skip``).

    Needs Linux, root, iproute2, a namespace with an ifb device, and libc ``setns``. The probe
    creates and deletes one namespace; the answer is cached for the process.
    """
    if not sys.platform.startswith("linux"):
        return f"network namespaces need Linux, not {sys.platform}"
    if os.geteuid() != 0:
        return "network namespaces need root (CAP_NET_ADMIN/CAP_SYS_ADMIN)"
    if shutil.which("ip") is None:
        return "iproute2 `ip` not found on PATH (install iproute2)"
    try:
        with SinkNamespace(prefix="aiozc-probe") as ns:
            s = ns.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.close()
    except (NetnsError, OSError, subprocess.SubprocessError) as exc:
        return f"cannot create a network namespace with an ifb device: {exc}"
    return None


# --------------------------------------------------------------------------------------------
# A named network namespace

class NetNamespace:
    """One named network namespace with ``lo`` up. Context manager; ``close()`` is idempotent.

    Usually created through :class:`SinkNamespace` or :class:`VethPair`.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._created = False
        self._closed = False
        self._procs: list[subprocess.Popen[Any]] = []
        self._lock = threading.Lock()
        self._owner_pid = os.getpid()

    # -- lifecycle -------------------------------------------------------------------------
    def create(self) -> "NetNamespace":
        _ip("netns", "add", self.name)
        self._created = True
        self._owner_pid = os.getpid()
        _live[self.name] = self
        try:
            self.ip("link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Stop processes started with ``popen`` that still run, then ``ip netns del``.

        Sockets created in-process keep the (now nameless) namespace alive until they close.
        In a forked child (any process but the creator) this only marks the object closed:
        the namespace belongs to the process that made it.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if os.getpid() != self._owner_pid:
            return
        try:
            for proc in self._procs:
                stop_process(proc)
        finally:
            self._procs.clear()
            if self._created:
                deleted = _ip("netns", "del", self.name, check=False)
                if deleted.returncode != 0 and self.name in list_namespaces():
                    raise NetnsError(f"ip netns del {self.name}: {deleted.stderr.strip()}")
            _live.pop(self.name, None)

    def __enter__(self) -> "NetNamespace":
        if not self._created:
            self.create()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def path(self) -> str:
        return f"/run/netns/{self.name}"

    def _check_open(self) -> None:
        if self._closed or not self._created:
            raise NetnsError(f"namespace {self.name} is not open")

    # -- commands --------------------------------------------------------------------------
    def ip(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``ip -n NAME ARGS...``; raises :class:`NetnsError` on failure."""
        return _ip("-n", self.name, *args)

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` prefixed with ``ip netns exec NAME``."""
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        """``subprocess.run`` of ``argv`` inside the namespace (kwargs passed through)."""
        self._check_open()
        return subprocess.run(self.exec_argv(argv), **kwargs)

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """``subprocess.Popen`` of ``argv`` inside the namespace; terminated on ``close()``.

        ``ip netns exec`` execs the command in place, so ``proc.pid`` is the command's pid.
        """
        self._check_open()
        proc = subprocess.Popen(self.exec_argv(argv), **kwargs)
        self._procs.append(proc)
        return proc

    def get_sysctl(self, key: str) -> str:
        self._check_open()
        proc = subprocess.run(
            self.exec_argv(_sysctl_argv(key, None)), capture_output=True, text=True,
            timeout=_CMD_TIMEOUT,
        )
        if proc.returncode != 0:
            raise NetnsError(f"sysctl {key} in {self.name}: {proc.stderr.strip()}")
        return proc.stdout.strip()

    def set_sysctl(self, key: str, value: object) -> None:
        """Set a sysctl inside the namespace (only per-netns keys such as ``net.core.*``,
        ``net.ipv4.*`` really stay inside; the value is read back and checked)."""
        self._check_open()
        proc = subprocess.run(
            self.exec_argv(_sysctl_argv(key, str(value))), capture_output=True, text=True,
            timeout=_CMD_TIMEOUT,
        )
        if proc.returncode != 0:
            raise NetnsError(f"sysctl {key}={value} in {self.name}: {proc.stderr.strip()}")
        got = self.get_sysctl(key)
        if got.split() != str(value).split():
            raise NetnsError(f"sysctl {key} in {self.name} reads {got!r} after setting {value!r}")

    # -- Python in a fresh interpreter -----------------------------------------------------
    def call(self, func: Callable[..., Any], *args: Any, timeout: float | None = 60.0,
             **kwargs: Any) -> Any:
        """Run ``func(*args, **kwargs)`` in a new ``sys.executable`` inside the namespace.

        Arguments and the result travel as JSON. ``func`` is imported by reference (module and
        qualname; the module's file is used if its name cannot be imported, and the parent's
        ``sys.path`` is passed on) when it is a module-level function; a nested function or
        lambda is sent as source instead, so it must then be self-contained (imports inside).
        A coroutine function is run with ``asyncio.run``. Raises :class:`NamespaceCallError`.
        """
        spec = func_spec(func, args, kwargs)
        return self._run_spec(spec, timeout)

    def call_unprivileged(
        self, func: Callable[..., Any], *args: Any, memlock: int | None = None,
        uid: int = 65534, gid: int = 65534,
        preload: Sequence[str] = ("socket", "select", "errno", "time", "json", "aiozc._sys.kernel"),
        timeout: float | None = 60.0, **kwargs: Any,
    ) -> Any:
        """Like :meth:`call`, but ``func`` runs as ``uid``/``gid`` (no capabilities) with
        ``RLIMIT_MEMLOCK`` = ``memlock`` bytes if given.

        Root (CAP_IPC_LOCK) is exempt from MSG_ZEROCOPY's pinned-page accounting; a non-root
        sender is not, so a send pinning more than ``memlock`` bytes fails with ENOBUFS. The
        interpreter starts as root and drops privileges just before calling ``func``, after
        importing ``func``'s module and ``preload``: anything imported later must be readable by
        ``uid`` (this interpreter may live under /root). The locked-page budget is per user,
        shared by every process of ``uid``.
        """
        spec: dict[str, Any] = func_spec(func, args, kwargs)
        spec["drop"] = {"uid": uid, "gid": gid, "memlock": memlock, "preload": list(preload)}
        return self._run_spec(spec, timeout)

    def run_python(self, source: str, *, timeout: float | None = 60.0, **globals_: Any) -> Any:
        """Exec ``source`` in a new interpreter inside the namespace with ``globals_`` (JSON
        values) as globals; returns the JSON-able value the code assigned to ``result``."""
        spec = source_spec(source, globals_)
        return self._run_spec(spec, timeout)

    async def acall(self, func: Callable[..., Any], *args: Any, timeout: float | None = 60.0,
                    **kwargs: Any) -> Any:
        """:meth:`call` without blocking the running event loop (runs in a worker thread)."""
        import asyncio

        return await asyncio.to_thread(self.call, func, *args, timeout=timeout, **kwargs)

    def _run_spec(self, spec: dict[str, Any], timeout: float | None) -> Any:
        self._check_open()
        return run_spec(self.exec_argv, self.name, spec, timeout)

    # -- in-process ------------------------------------------------------------------------
    def enter(self) -> None:
        """Move the *calling thread* into this namespace with ``setns(2)``, for good.

        Only for a forked child that stays single-threaded and exits afterwards (e.g.
        ``if os.fork() == 0: ns.enter(); ...; os._exit(0)``). Never call it on a thread you
        intend to keep using for host networking; use :meth:`in_thread` / :meth:`socket`.
        """
        self._check_open()
        setns_path(self.path)

    def in_thread(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` on a new thread that first joins this namespace; return its result.

        Sockets created by ``fn`` belong to the namespace for their whole life and can be used
        from any thread afterwards, including an event loop's. The helper thread exits when
        ``fn`` returns, so no thread is ever left in a switched namespace.
        """
        self._check_open()
        return in_thread(self.path, f"netns-{self.name}", fn, *args, **kwargs)

    def socket(self, family: int = socket.AF_INET, type: int = socket.SOCK_DGRAM,
               proto: int = 0) -> socket.socket:
        """A new socket created inside this namespace (see :meth:`in_thread`)."""
        return self.in_thread(socket.socket, family, type, proto)

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("open" if self._created else "new")
        return f"<{type(self).__name__} {self.name} {state}>"


def _sysctl_argv(key: str, value: str | None) -> list[str]:
    if shutil.which("sysctl"):
        return ["sysctl", "-n", key] if value is None else ["sysctl", "-q", "-w", f"{key}={value}"]
    path = "/proc/sys/" + key.replace(".", "/")
    if value is None:
        return [sys.executable, "-c", f"print(open({path!r}).read().strip())"]
    return [sys.executable, "-c", f"open({path!r}, 'w').write({value!r})"]


# --------------------------------------------------------------------------------------------
# The rigs

N = TypeVar("N", bound=NetNamespace)


def _first_free(prefix: str, create: Callable[[str], N]) -> tuple[N, str, int]:
    """``create(base)`` for the first ``base`` = PREFIX-PID-N not taken, and that base and N.

    A namespace of that name left by a dead process with our pid makes ``ip netns add`` fail
    with "exists": take the next N.
    """
    for _ in range(16):
        n = _next_index()
        base = f"{prefix}-{os.getpid()}-{n}"
        try:
            return create(base), base, n
        except NetnsError as exc:
            if "exist" not in str(exc).lower():
                raise
    raise NetnsError("could not find a free namespace name")


def _bring_up(ns: NetNamespace, device: str, mtu: int, addr: str) -> None:
    """``device`` in ``ns``: its MTU, ``addr``/24, up."""
    ns.ip("link", "set", device, "mtu", str(mtu))
    ns.ip("addr", "add", f"{addr}/24", "dev", device)
    ns.ip("link", "set", device, "up")


class SinkNamespace(NetNamespace):
    """A namespace with ``ifb0`` (mtu 65535) at ``local_addr`` = 10.211.x.1/24, up.

    ``sink_addr`` (10.211.x.2) has no owner: ifb is NOARP and drops everything it is given, so UDP
    sent there from inside the namespace is released uncopied (MSG_ZEROCOPY notifications with
    copied=False). Only ever send to ``subnet`` from inside.

    >>> with SinkNamespace() as ns:
    ...     s = ns.socket(socket.AF_INET, socket.SOCK_DGRAM)
    ...     s.sendto(b"x", (ns.sink_addr, 9))
    """

    device = "ifb0"
    mtu = 65535

    def __init__(self, *, prefix: str = "aiozc-sink", octet: int | None = None) -> None:
        self._prefix = prefix
        self._octet = octet
        super().__init__(name="")
        self.local_addr = ""
        self.sink_addr = ""
        self.subnet = ""

    def __enter__(self) -> "SinkNamespace":
        self.open()
        return self

    def open(self) -> "SinkNamespace":
        if self._created:
            return self
        _, _, n = _first_free(self._prefix, self._create_as)
        x = self._octet if self._octet is not None else _subnet_octet(n)
        self.local_addr = f"10.211.{x}.1"
        self.sink_addr = f"10.211.{x}.2"
        self.subnet = f"10.211.{x}.0/24"
        try:
            self.ip("link", "add", self.device, "type", "ifb")
            _bring_up(self, self.device, self.mtu, self.local_addr)
        except BaseException:
            self.close()
            raise
        return self

    def _create_as(self, name: str) -> "SinkNamespace":
        self.name = name
        self.create()
        return self


def sink_rx_packets(device: str = SinkNamespace.device) -> int:
    """How many packets the sink device was handed (and dropped): every datagram sent to it.

    Read from inside the sink's namespace (in code run there by ``call``): /sys/class/net shows
    the devices of the reading process's network namespace.
    """
    with open(f"/sys/class/net/{device}/statistics/rx_packets") as f:
        return int(f.read())


class VethPair:
    """Two namespaces ``a`` and ``b`` joined by a veth pair (``veth0`` on both sides):
    ``a_addr`` = 10.212.x.1/24 in ``a``, ``b_addr`` = 10.212.x.2/24 in ``b``.

    A non-loopback path on one host: TCP MSG_ZEROCOPY across it is still reported copied (the
    receiver is local). Use ``pair.a.run(...)``, ``pair.b.popen(...)``, ``pair.a.socket(...)``,
    ``pair.b.call(...)``, or ``pair.run("a", argv)``.
    """

    device = "veth0"

    def __init__(self, *, prefix: str = "aiozc-veth", mtu: int = 1500,
                 octet: int | None = None) -> None:
        self._prefix = prefix
        self._octet = octet
        self.mtu = mtu
        self.a: NetNamespace | None = None  # type: ignore[assignment]
        self.b: NetNamespace | None = None  # type: ignore[assignment]
        self.a_addr = ""
        self.b_addr = ""
        self.subnet = ""
        self._closed = False

    def open(self) -> "VethPair":
        if self.a is not None:
            return self
        a, base, n = _first_free(self._prefix, lambda base: NetNamespace(base + "-a").create())
        self.a = a
        x = self._octet if self._octet is not None else _subnet_octet(n)
        self.a_addr, self.b_addr, self.subnet = f"10.212.{x}.1", f"10.212.{x}.2", f"10.212.{x}.0/24"
        try:
            self.b = NetNamespace(base + "-b").create()
            # Created directly inside `a` with its peer directly in `b`: never in the host ns.
            a.ip("link", "add", self.device, "type", "veth", "peer", "name", self.device,
                 "netns", self.b.name)
            for ns, addr in ((a, self.a_addr), (self.b, self.b_addr)):
                _bring_up(ns, self.device, self.mtu, addr)
        except BaseException:
            self.close()
            raise
        return self

    def side(self, which: str) -> NetNamespace:
        ns = {"a": self.a, "b": self.b}[which]
        if ns is None:
            raise NetnsError("VethPair is not open")
        return ns

    def run(self, which: str, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        return self.side(which).run(argv, **kwargs)

    def popen(self, which: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        return self.side(which).popen(argv, **kwargs)

    def close(self) -> None:
        """Delete both namespaces (deleting either end also destroys the veth pair)."""
        if self._closed:
            return
        self._closed = True
        errors: list[BaseException] = []
        for ns in (self.b, self.a):
            if ns is not None:
                try:
                    ns.close()
                except BaseException as exc:  # noqa: BLE001 - close the other side too
                    errors.append(exc)
        if errors:
            raise errors[0]

    @property
    def names(self) -> list[str]:
        return [ns.name for ns in (self.a, self.b) if ns is not None]

    def __enter__(self) -> "VethPair":
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<VethPair {self.names} {self.a_addr}<->{self.b_addr}>"
