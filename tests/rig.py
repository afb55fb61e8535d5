"""Test rig: pytest fixtures and helpers around :mod:`aiozc.tools.netns` and :mod:`aiozc._sys.kernel`.

Fixtures (each skips with the reason from ``netns_available()`` when the rig cannot run: not
root, no iproute2, no ifb, ...):

* ``sink_ns``: a fresh :class:`~aiozc.tools.netns.SinkNamespace`; UDP to ``sink_ns.sink_addr`` from a
  socket made with ``sink_ns.socket()`` / ``zc_udp_socket(sink_ns)`` (or code run with
  ``sink_ns.call(fn)``) is sent truly zero-copy (notifications copied=False).
* ``enobufs_sink``: the same with ``net.core.optmem_max = 1024``: the first MSG_ZEROCOPY send of
  a socket succeeds, later ones fail with ENOBUFS until its error queue is drained.
* ``veth_pair``: namespaces ``a``/``b`` joined by veth0 (``a_addr`` <-> ``b_addr``);
  ``zc_tcp_pair(veth_pair)`` gives a connected TCP pair across it.

Make them visible either per module (``tests/`` is on ``sys.path`` under pytest's default
``prepend`` import mode because it has no ``__init__.py``)::

    from rig import sink_ns, veth_pair, enobufs_sink  # noqa: F401  (fixtures)
    from rig import zc_udp_socket, wait_zc_ids, ids_covered

or for every module, in ``tests/conftest.py``::

    import os as _os, sys as _sys
    _sys.path.insert(0, _os.path.dirname(__file__))  # only needed for --import-mode=importlib
    pytest_plugins = ["rig"]
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from aiozc._sys import kernel as _kernel
from aiozc._sys.kernel import ZeroCopyRange
from aiozc.tools.netns import (
    OPTMEM_NO_ZEROCOPY,
    OPTMEM_ONE_PENDING_NOTIFICATION,
    NetNamespace,
    SinkNamespace,
    VethPair,
    netns_available,
)

__all__ = [
    "OPTMEM_NO_ZEROCOPY",
    "OPTMEM_ONE_PENDING_NOTIFICATION",
    "enobufs_sink",
    "id_count",
    "ids_covered",
    "require_netns",
    "require_nobody_can_run",
    "sink_ns",
    "veth_pair",
    "wait_zc_ids",
    "zc_tcp_pair",
    "zc_udp_socket",
]

U32 = 0xFFFFFFFF


NOBODY = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")


def require_nobody_can_run(repo: Path) -> None:
    """``pytest.skip`` unless uid 65534 can run this interpreter on this checkout (a clone
    in a 0700 ``mktemp -d`` directory cannot be read by it: "No module named 'aiozc'")."""
    probe = subprocess.run(
        [*NOBODY, sys.executable, "-c", "import aiozc"],
        cwd=repo, capture_output=True, env={**os.environ, "PYTHONPATH": str(repo)}, timeout=60,
    )
    if probe.returncode != 0:
        pytest.skip(f"uid 65534 cannot import aiozc from {repo} (directory permissions)")


def require_netns() -> None:
    """``pytest.skip`` with the explicit reason when the namespace rig is unavailable."""
    reason = netns_available()
    if reason is not None:
        pytest.skip(f"netns rig unavailable: {reason}")


@pytest.fixture
def sink_ns() -> Iterator[SinkNamespace]:
    """A fresh :class:`SinkNamespace` (ifb0 at ``local_addr``; send UDP to ``sink_addr``)."""
    require_netns()
    with SinkNamespace() as ns:
        # IPv6 off on ifb0: its router solicitations (~4 s after link-up) would add packets to
        # the rx_packets count that tests compare with what they sent (seen under load: 257/256).
        ns.set_sysctl("net.ipv6.conf.ifb0.disable_ipv6", 1)
        yield ns


@pytest.fixture
def enobufs_sink() -> Iterator[SinkNamespace]:
    """A sink namespace whose ``net.core.optmem_max`` is ``OPTMEM_ONE_PENDING_NOTIFICATION``:
    the first MSG_ZEROCOPY send of a socket succeeds, every later one fails with ENOBUFS until
    that socket's error queue is drained. ``ns.set_sysctl("net.core.optmem_max",
    OPTMEM_NO_ZEROCOPY)`` makes every MSG_ZEROCOPY send fail."""
    require_netns()
    with SinkNamespace() as ns:
        ns.set_sysctl("net.core.optmem_max", OPTMEM_ONE_PENDING_NOTIFICATION)
        yield ns


@pytest.fixture
def veth_pair() -> Iterator[VethPair]:
    """Two namespaces ``a``/``b`` joined by veth0 (``a_addr`` <-> ``b_addr``)."""
    require_netns()
    with VethPair() as pair:
        yield pair


# ------------------------------------------------------------------------------------------
# Socket helpers (sockets are created inside the namespace, usable from the calling thread)


def zc_udp_socket(ns: SinkNamespace, *, connect: bool = True, blocking: bool = True) -> socket.socket:
    """A UDP socket inside ``ns`` with SO_ZEROCOPY and IP_RECVERR, connected to the sink."""
    sock = ns.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        reason = _kernel.enable_zerocopy(sock)
        if reason is not None:
            raise OSError(reason)
        _kernel.enable_recverr(sock)
        if connect:
            sock.connect((ns.sink_addr, 9))
        sock.setblocking(blocking)
    except BaseException:
        sock.close()
        raise
    return sock


def zc_tcp_pair(pair: VethPair, *, port: int = 5001) -> tuple[socket.socket, socket.socket]:
    """A connected TCP pair across the veth: (client in ``a`` with SO_ZEROCOPY, server side in
    ``b``). Both blocking; the caller closes them."""
    assert pair.a is not None and pair.b is not None
    listener = pair.b.socket(socket.AF_INET, socket.SOCK_STREAM)
    client: socket.socket | None = None
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((pair.b_addr, port))
        listener.listen(1)
        client = pair.a.socket(socket.AF_INET, socket.SOCK_STREAM)
        reason = _kernel.enable_zerocopy(client)
        if reason is not None:
            raise OSError(reason)
        client.settimeout(10)
        client.connect((pair.b_addr, port))
        listener.settimeout(10)
        server, _ = listener.accept()
        # Back to plain blocking: on a socket with a timeout, CPython turns the EAGAIN of a
        # MSG_DONTWAIT error-queue read into a wait for POLLIN and then TimeoutError.
        client.settimeout(None)
        server.settimeout(None)
        return client, server
    except BaseException:
        if client is not None:
            client.close()
        raise
    finally:
        listener.close()


def id_count(r: ZeroCopyRange) -> int:
    """Number of send ids in a (u32, possibly wrapping) notification range."""
    return ((r.hi - r.lo) & U32) + 1


def ids_covered(ranges: Iterable[ZeroCopyRange]) -> int:
    return sum(id_count(r) for r in ranges)


def wait_zc_ids(sock: socket.socket, expected: int, timeout: float = 5.0) -> list[ZeroCopyRange]:
    """Drain the error queue until notifications cover ``expected`` ids (or ``timeout``).

    Returns the ranges seen (possibly covering fewer ids on timeout; the caller asserts).
    Raises if any non-zero-copy error shows up on the queue.
    """
    ranges: list[ZeroCopyRange] = []
    deadline = time.monotonic() + timeout
    poller = select.poll()
    poller.register(sock.fileno(), 0)  # POLLERR is always reported
    while ids_covered(ranges) < expected:
        for msg in _kernel.read_errqueue(sock):
            if not isinstance(msg, ZeroCopyRange):
                raise AssertionError(f"unexpected error-queue message {msg!r}")
            ranges.append(msg)
        if ids_covered(ranges) >= expected:
            break
        left = deadline - time.monotonic()
        if left <= 0:
            break
        poller.poll(min(left, 0.05) * 1000)
    return ranges


def drain_zc(sock: socket.socket) -> list[ZeroCopyRange]:
    """Whatever notifications are queued right now (non-blocking)."""
    out = []
    for msg in _kernel.read_errqueue(sock, limit=1 << 16):
        if not isinstance(msg, ZeroCopyRange):
            raise AssertionError(f"unexpected error-queue message {msg!r}")
        out.append(msg)
    return out


__all__ += ["NetNamespace", "drain_zc"]
