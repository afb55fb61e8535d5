"""``python -m aiozc probe``: what this machine offers for zero-copy sends, measured."""

from __future__ import annotations

import contextlib
import errno
import platform
import resource
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from .. import tls as _tls
from .._sys import kernel as _kernel
from .._sys import zcrx as _zcrx


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        return f"unreadable ({exc.strerror})"


def _so_zerocopy(kind: socket.SocketKind) -> str:
    with socket.socket(socket.AF_INET, kind) as sock:
        reason = _kernel.enable_zerocopy(sock)
    return "yes" if reason is None else f"no: {reason}"


@contextlib.contextmanager
def _zerocopy_loopback_pair() -> Iterator[tuple[socket.socket, socket.socket] | None]:
    """A connected TCP pair over loopback, SO_ZEROCOPY on the client; None where it is unavailable."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        with socket.create_connection(listener.getsockname()) as client:
            server, _ = listener.accept()
            with server:
                yield None if _kernel.enable_zerocopy(client) is not None else (client, server)


def _loopback_report() -> str:
    """Send 1 MiB with MSG_ZEROCOPY over loopback and report what the kernel says."""
    with _zerocopy_loopback_pair() as pair:
        if pair is None:
            return "SO_ZEROCOPY unavailable"
        client, server = pair
        payload = bytes(1 << 20)
        client.sendall(payload, _kernel.MSG_ZEROCOPY)
        received = 0
        while received < len(payload):
            received += len(server.recv(1 << 20))
        return _await_notification(client)


def _await_notification(sock: socket.socket) -> str:
    for _ in range(100):
        messages = [m for m in _kernel.read_errqueue(sock) if isinstance(m, _kernel.ZeroCopyRange)]
        if messages:
            copied = any(m.copied for m in messages)
            return "reported copied (expected on loopback)" if copied else "reported zero-copy"
        time.sleep(0.01)
    return "no notification within 1s"


def _zerocopy_receive() -> str:
    reason = _zcrx.zerocopy_receive_unavailable()
    if reason is not None:
        return f"unavailable: {reason}"
    return ("mmap + getsockopt work (pages map only from a MSG_ZEROCOPY sender; "
            "MSS a multiple of 4096 for ~100%)")


def _sendmsg_notifications() -> str:
    """Ask for completions on the sendmsg itself, the way the 2024 RFC (SCM_ZC_NOTIFICATION)
    did: a MSG_ZEROCOPY send on TCP carrying a SOL_SOCKET cmsg with room for the ranges."""
    tried = f"sendmsg(MSG_ZEROCOPY) on TCP with a SOL_SOCKET cmsg of type {_zcrx.SCM_ZC_NOTIFICATION}"
    with _zerocopy_loopback_pair() as pair:
        if pair is None:
            return f"{tried}: not tried, SO_ZEROCOPY unavailable"
        client, _server = pair
        # struct zc_info { u32 size; struct zc_info_elem { u32 lo, hi; u8 zerocopy; } [] }
        room = (4).to_bytes(4, "little") + bytes(4 * 12)
        cmsg = [(socket.SOL_SOCKET, _zcrx.SCM_ZC_NOTIFICATION, room)]
        try:
            client.sendmsg([bytes(4096)], cmsg, _kernel.MSG_ZEROCOPY)
        except OSError as exc:
            name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
            return (f"{tried}: {name} (never merged: not in mainline kernels; completions "
                    "come from the error queue)")
    return (f"{tried}: accepted (an out-of-tree kernel?); aiozc does not read it yet, the "
            "trackers' on_ranges() would take its ranges")


def _memlock() -> str:
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    fmt = lambda v: "unlimited" if v == resource.RLIM_INFINITY else f"{v // 1024} KiB"  # noqa: E731
    return f"soft {fmt(soft)}, hard {fmt(hard)} (root with CAP_IPC_LOCK is exempt)"


def _uring() -> str:
    try:
        from ..engines.io_uring import uring_unavailable_reason
    except Exception as exc:  # the binding itself failed to load
        return f"unavailable: {exc}"
    reason = uring_unavailable_reason()  # what engine="io_uring" checks
    if reason is not None:
        return f"unavailable: {reason}"
    return "available (IORING_OP_SEND_ZC, REPORT_USAGE); " + _auto_uring_use()


def _auto_uring_use() -> str:
    """When engine='auto' picks io_uring (aiozc/engines/__init__.py get_engine)."""
    from .._sys import core

    if core.compiled:
        return ("engine='auto' uses it for UDP: coalesce_zc=True, and sendto_zc() on a "
                "connected socket (the compiled per-call path)")
    return ("engine='auto' uses it for UDP with coalesce_zc=True once a BufferPool is "
            "registered with the loop (pure path)")


def _netns() -> str:
    from .netns import netns_available

    reason = netns_available()
    return "yes (ifb sink rig usable)" if reason is None else f"no: {reason}"


def _core_path() -> str:
    from .._sys import core

    return core.path_in_use()


def probe() -> list[tuple[str, str]]:
    return [
        ("kernel", platform.release()),
        ("aiozc core", _core_path()),
        ("SO_ZEROCOPY on TCP", _so_zerocopy(socket.SOCK_STREAM)),
        ("SO_ZEROCOPY on UDP", _so_zerocopy(socket.SOCK_DGRAM)),
        ("loopback TCP MSG_ZEROCOPY", _loopback_report()),
        ("TCP_ZEROCOPY_RECEIVE", _zerocopy_receive()),
        ("sendmsg SCM_ZC_NOTIFICATION", _sendmsg_notifications()),
        ("RLIMIT_MEMLOCK", _memlock()),
        ("net.core.optmem_max", _read("/proc/sys/net/core/optmem_max") + " bytes"),
        ("io_uring_disabled sysctl", _read("/proc/sys/kernel/io_uring_disabled")),
        ("io_uring engine", _uring()),
        ("kernel TLS (TCP_ULP tls)", _tls.kernel_tls_status()),
        ("network-namespace sink", _netns()),
    ]


def main() -> None:
    rows = probe()
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
