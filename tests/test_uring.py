"""aiozc._sys.uring: the cffi io_uring binding, exercised with real sockets (loopback / a netns).

Every wait goes through the registered eventfd with a deadline, so a missing CQE fails the
test instead of hanging it.
"""

from __future__ import annotations

import errno
import gc
import json
import mmap
import os
import select
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from aiozc._sys import uring as u
from aiozc._sys.uring import (
    IORING_CQE_F_MORE,
    IORING_CQE_F_NOTIF,
    IORING_NOTIF_USAGE_ZC_COPIED,
    Ring,
)
from rig import NOBODY, require_nobody_can_run

REASON = u.probe()
needs_uring = pytest.mark.skipif(REASON is not None, reason=f"io_uring SEND_ZC unavailable: {REASON}")

Cqe = tuple[int, int, int]
MiB = 1 << 20
# Receive buffer for "stalled peer" tests: far below the 1 MiB we send, so most of it waits in
# the sender's write queue, yet >= the loopback MSS (~64 KiB).  With 4 KiB the receiver's
# silly-window avoidance never reopens the window and transfers crawl on the persist timer
# (measured: 1 MiB not delivered within 20 s in 4 of 8 runs).
STALL_RCVBUF = 128 * 1024


def test_struct_layout() -> None:
    assert u.ffi.sizeof("struct io_uring_sqe") == 64
    assert u.ffi.sizeof("struct io_uring_cqe") == 16
    assert u.ffi.sizeof("struct io_uring_params") == 120
    assert u.ffi.sizeof("struct io_sqring_offsets") == 40
    assert u.ffi.sizeof("struct io_cqring_offsets") == 40
    off = {f: u.ffi.offsetof("struct io_uring_sqe", f)
           for f in ("ioprio", "fd", "addr2", "addr", "len", "msg_flags", "user_data",
                     "buf_index", "personality", "addr_len", "addr3")}
    assert off == {"ioprio": 2, "fd": 4, "addr2": 8, "addr": 16, "len": 24, "msg_flags": 28,
                   "user_data": 32, "buf_index": 40, "personality": 42, "addr_len": 44,
                   "addr3": 48}


def test_constants_match_uapi() -> None:
    # liburing-dev 2.3 lacks the last two; these are the kernel's values.
    assert IORING_CQE_F_MORE == 2 and IORING_CQE_F_NOTIF == 8
    assert u.IORING_SEND_ZC_REPORT_USAGE == 0x8
    assert IORING_NOTIF_USAGE_ZC_COPIED == 0x80000000
    assert u.IORING_OP_SEND_ZC == 47


def test_probe_says_available_here() -> None:
    # PLATFORM.md: kernel 6.18, root, io_uring_disabled = 0.
    assert u.probe() is None


def test_pack_sockaddr() -> None:
    v4 = u.pack_sockaddr(socket.AF_INET, ("10.211.0.2", 9))
    assert len(v4) == 16 and v4[2:4] == b"\x00\x09" and v4[4:8] == bytes([10, 211, 0, 2])
    v6 = u.pack_sockaddr(socket.AF_INET6, ("::1", 443, 0, 0))
    assert len(v6) == 28 and v6[2:4] == b"\x01\xbb" and v6[8:24] == b"\0" * 15 + b"\1"
    with pytest.raises(ValueError):
        u.pack_sockaddr(socket.AF_UNIX, ("x",))


# --- helpers -------------------------------------------------------------------------------

@pytest.fixture
def ring() -> Iterator[Ring]:
    if REASON is not None:
        pytest.skip(f"io_uring SEND_ZC unavailable: {REASON}")
    r = Ring(64)
    r.register_eventfd()
    yield r
    r.close()


def wait_cqes(ring: Ring, done: Callable[[list[Cqe]], bool], timeout: float = 5.0,
              into: list[Cqe] | None = None) -> list[Cqe]:
    """Collect CQEs (woken by the ring's eventfd) until ``done(cqes)`` or the deadline."""
    cqes = [] if into is None else into
    deadline = time.monotonic() + timeout
    while True:
        cqes.extend(ring.reap())
        if done(cqes):
            return cqes
        left = deadline - time.monotonic()
        if left <= 0:
            return cqes
        if select.select([ring.eventfd], [], [], left)[0]:
            os.eventfd_read(ring.eventfd)


def results(cqes: list[Cqe]) -> list[Cqe]:
    return [c for c in cqes if not c[2] & IORING_CQE_F_NOTIF]


def notifs(cqes: list[Cqe]) -> list[Cqe]:
    return [c for c in cqes if c[2] & IORING_CQE_F_NOTIF]


def all_notified(cqes: list[Cqe]) -> bool:
    """Every result that promised a notification (F_MORE) has got it."""
    want = sum(1 for c in results(cqes) if c[2] & IORING_CQE_F_MORE)
    return bool(results(cqes)) and len(notifs(cqes)) == want


@contextmanager
def tcp_pair(*, server_rcvbuf: int | None = None,
             client_sndbuf: int | None = None) -> Iterator[tuple[socket.socket, socket.socket]]:
    """(sender, receiver) connected over 127.0.0.1."""
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if server_rcvbuf:  # before listen(): it sets the window scale of accepted sockets
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, server_rcvbuf)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if client_sndbuf:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, client_sndbuf)
    client.connect(lsock.getsockname())
    server, _ = lsock.accept()
    lsock.close()
    try:
        yield client, server
    finally:
        client.close()
        server.close()


class Reader(threading.Thread):
    """Drain ``n`` bytes from a socket in the background."""

    def __init__(self, sock: socket.socket, n: int):
        super().__init__(daemon=True)
        self.sock, self.n, self.data = sock, n, bytearray()

    def run(self) -> None:
        self.sock.settimeout(10)
        try:
            while len(self.data) < self.n:
                chunk = self.sock.recv(min(MiB, self.n - len(self.data)))
                if not chunk:
                    return
                self.data += chunk
        except OSError:
            return  # the test closed the socket or timed out: it checks self.data


def payload(n: int) -> bytes:
    return (bytes(range(256)) * (n // 256 + 1))[:n]


# --- TCP over loopback ---------------------------------------------------------------------

@needs_uring
def test_send_zc_tcp_loopback_1mib(ring: Ring) -> None:
    data = payload(MiB)
    view = memoryview(data)
    with tcp_pair() as (tx, rx):
        reader = Reader(rx, len(data))
        reader.start()
        cqes: list[Cqe] = []
        sent, ud = 0, 0
        while sent < len(data):  # a stream socket may take it in partial sends
            ud += 1
            assert ring.prep_send_zc(tx.fileno(), view[sent:], socket.MSG_NOSIGNAL, ud)
            assert ring.submit() == 1
            wait_cqes(ring, lambda c, ud=ud: any(r[0] == ud for r in results(c)), into=cqes)
            (res,) = [r for r in results(cqes) if r[0] == ud]
            assert res[1] > 0, f"send failed: {os.strerror(-res[1])}"
            assert res[2] & IORING_CQE_F_MORE
            sent += res[1]
        reader.join(10)
        wait_cqes(ring, all_notified, into=cqes)
    assert bytes(reader.data) == data
    assert sent == len(data)
    assert all_notified(cqes)
    for user_data, res, flags in notifs(cqes):
        assert flags & IORING_CQE_F_NOTIF and not flags & IORING_CQE_F_MORE
        # loopback always copies (skb_orphan_frags_rx): REPORT_USAGE says so
        assert res & IORING_NOTIF_USAGE_ZC_COPIED, f"notif for {user_data} res={res:#x}"


@needs_uring
def test_notification_waits_for_stalled_peer(ring: Ring) -> None:
    data = payload(MiB)
    # A tiny receive window and a big send buffer: most bytes are queued in the sender's
    # write queue (referencing our pages) until the peer reads and the window opens.
    with tcp_pair(server_rcvbuf=STALL_RCVBUF, client_sndbuf=4 * MiB) as (tx, rx):
        assert ring.prep_send_zc(tx.fileno(), data, socket.MSG_NOSIGNAL, 1)
        ring.submit()
        cqes = wait_cqes(ring, lambda c: bool(results(c)))
        (res,) = results(cqes)
        assert res[1] > 0 and res[2] & IORING_CQE_F_MORE
        wait_cqes(ring, lambda c: bool(notifs(c)), timeout=0.5, into=cqes)
        assert notifs(cqes) == [], "notified while the peer still holds back the data"

        reader = Reader(rx, res[1])
        t0 = time.monotonic()
        reader.start()
        wait_cqes(ring, lambda c: bool(notifs(c)), into=cqes)
        elapsed = time.monotonic() - t0
        reader.join(10)
    assert bytes(reader.data) == data[: res[1]]
    (note,) = notifs(cqes)
    assert note[0] == 1 and note[1] & IORING_NOTIF_USAGE_ZC_COPIED
    assert elapsed < 5


@needs_uring
def test_peer_reset_errors_still_decide_from_f_more(ring: Ring) -> None:
    with tcp_pair() as (tx, rx):
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        rx.close()  # RST
        time.sleep(0.05)
        data = payload(64 * 1024)
        for ud in (1, 2):  # the first reports the reset, the second a dead pipe
            assert ring.prep_send_zc(tx.fileno(), data, socket.MSG_NOSIGNAL, ud)
        ring.submit()
        cqes = wait_cqes(ring, lambda c: len(results(c)) == 2)
        assert sorted(r[0] for r in results(cqes)) == [1, 2]
        for _, res, _ in results(cqes):
            assert res in (-errno.ECONNRESET, -errno.EPIPE), os.strerror(-res)
        # Whatever the kernel says in F_MORE must be honoured: every promised notification
        # arrives, and nothing more.
        wait_cqes(ring, all_notified, into=cqes)
        assert all_notified(cqes)
        wait_cqes(ring, lambda c: False, timeout=0.1, into=cqes)
        assert len(notifs(cqes)) == sum(1 for r in results(cqes) if r[2] & IORING_CQE_F_MORE)


# --- eventfd, SQ bookkeeping ---------------------------------------------------------------

@needs_uring
@pytest.mark.parametrize(
    "flags",
    [0,
     u.IORING_SETUP_COOP_TASKRUN | u.IORING_SETUP_TASKRUN_FLAG,
     u.IORING_SETUP_SINGLE_ISSUER | u.IORING_SETUP_DEFER_TASKRUN],
    ids=["default", "coop_taskrun", "defer_taskrun"],
)
def test_eventfd_signals_completions(flags: int) -> None:
    with Ring(16, flags=flags) as ring:
        efd = ring.register_eventfd()
        assert ring.register_eventfd() == efd  # idempotent
        assert select.select([efd], [], [], 0)[0] == []
        assert ring.prep_nop(42)
        ring.submit()
        assert select.select([efd], [], [], 2)[0] == [efd]
        assert os.eventfd_read(efd) >= 1
        assert wait_cqes(ring, bool) == [(42, 0, 0)]
        # and for a delayed notification (the case add_reader on the ring fd missed)
        with tcp_pair(server_rcvbuf=STALL_RCVBUF, client_sndbuf=4 * MiB) as (tx, rx):
            data = payload(MiB)
            assert ring.prep_send_zc(tx.fileno(), data, socket.MSG_NOSIGNAL, 7)
            ring.submit()
            cqes = wait_cqes(ring, lambda c: bool(results(c)))
            reader = Reader(rx, results(cqes)[0][1])
            reader.start()
            wait_cqes(ring, all_notified, into=cqes)
            reader.join(10)
        assert all_notified(cqes) and notifs(cqes)[0][0] == 7
    assert ring.closed


@needs_uring
def test_sq_full_and_submit_count() -> None:
    with Ring(4) as ring:
        assert ring.sq_entries == 4 and ring.cq_entries == 8
        assert [ring.prep_nop(i) for i in range(5)] == [True] * 4 + [False]
        assert ring.pending() == 4 and ring.space_left() == 0
        assert ring.submit(wait_nr=4) == 4
        assert sorted(c[0] for c in ring.reap()) == [0, 1, 2, 3]
        assert ring.space_left() == 4 and ring.reap() == []
        assert ring.submit() == 0


@needs_uring
def test_cq_overflow_is_not_lost() -> None:
    with Ring(4, cq_entries=4) as ring:
        for batch in range(3):  # 12 CQEs through a 4-slot CQ (NODROP keeps the overflow)
            for i in range(4):
                assert ring.prep_nop(batch * 4 + i)
            ring.submit()
        assert sorted(c[0] for c in ring.reap()) == list(range(12))


def test_close_is_idempotent_and_final() -> None:
    if REASON is not None:
        pytest.skip(REASON)
    ring = Ring(4)
    ring.register_eventfd()
    ring.close()
    ring.close()
    with pytest.raises(ValueError):
        ring.prep_nop(1)
    with pytest.raises(ValueError):
        ring.reap()


def test_rejects_unsupported_setup_flags() -> None:
    with pytest.raises(ValueError):
        Ring(4, flags=2)  # SQPOLL


# --- fixed buffers, datagrams --------------------------------------------------------------

@needs_uring
def test_fixed_buffer_send(ring: Ring) -> None:
    mm = mmap.mmap(-1, 64 * 1024)  # anonymous, page-aligned
    try:
        mm[:] = payload(len(mm))
        view = memoryview(mm)
        ring.register_buffers([view])
        chunk = view[4096 : 4096 + 20000]
        with pytest.raises(ValueError):
            ring.prep_send_zc(0, b"not registered", 0, 0, fixed_index=0)
        with pytest.raises(IndexError):
            ring.prep_send_zc(0, chunk, 0, 0, fixed_index=1)
        with tcp_pair() as (tx, rx):
            reader = Reader(rx, len(chunk))
            reader.start()
            assert ring.prep_send_zc(tx.fileno(), chunk, socket.MSG_NOSIGNAL, 5, fixed_index=0)
            ring.submit()
            cqes = wait_cqes(ring, all_notified)
            reader.join(10)
        assert results(cqes) == [(5, len(chunk), IORING_CQE_F_MORE)]
        assert bytes(reader.data) == bytes(chunk)
        ring.unregister_buffers()
        chunk.release()
        view.release()
    finally:
        ring.close()  # releases the export before the mmap closes
        mm.close()


@needs_uring
@pytest.mark.parametrize("family,host", [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def test_udp_sendto_with_dest(ring: Ring, family: int, host: str) -> None:
    with socket.socket(family, socket.SOCK_DGRAM) as rx, \
            socket.socket(family, socket.SOCK_DGRAM) as tx:
        rx.bind((host, 0))
        rx.settimeout(5)
        dest = u.pack_sockaddr(family, rx.getsockname())
        assert ring.prep_send_zc(tx.fileno(), b"zero-copy", 0, 1, dest=dest)
        assert ring.prep_send(tx.fileno(), b"copied", 0, 2, dest=dest)
        ring.submit()
        cqes = wait_cqes(ring, lambda c: len(results(c)) == 2 and all_notified(c))
        got = {rx.recv(100), rx.recv(100)}
    assert got == {b"zero-copy", b"copied"}
    assert sorted(results(cqes)) == [(1, 9, IORING_CQE_F_MORE), (2, 6, 0)]
    assert [n[0] for n in notifs(cqes)] == [1]


# A true zero-copy path on one host: UDP out of an ifb device in a private netns, which drops
# the packets, so the kernel releases our pages without copying them (PLATFORM.md).
_NETNS_SENDER = r"""
import json, socket, sys, select, os, time
from aiozc._sys import uring as u
tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
dest = u.pack_sockaddr(socket.AF_INET, ("10.211.0.2", 9))
buf = bytearray(b"z" * (64000 * 8))
ring = u.Ring(16); efd = ring.register_eventfd()
t0 = time.monotonic()
for i in range(8):
    assert ring.prep_send_zc(tx.fileno(), memoryview(buf)[i * 64000:(i + 1) * 64000], 0, i, dest=dest)
ring.submit()
cqes, deadline = [], time.monotonic() + 5
while time.monotonic() < deadline:
    cqes += [c + (round(time.monotonic() - t0, 6),) for c in ring.reap()]
    if sum(1 for c in cqes if c[2] & u.IORING_CQE_F_NOTIF) == 8:
        break
    if select.select([efd], [], [], 0.2)[0]:
        os.eventfd_read(efd)
ring.close()
print(json.dumps(cqes))
"""


@needs_uring
@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and ip(8)")
def test_udp_true_zero_copy_in_netns() -> None:
    ns = f"aiozc-uring-{os.getpid()}"
    repo = Path(__file__).resolve().parent.parent

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)

    try:
        ip("netns", "add", ns)
        ip("-n", ns, "link", "add", "ifb0", "type", "ifb")
        ip("-n", ns, "link", "set", "ifb0", "mtu", "65535")
        ip("-n", ns, "addr", "add", "10.211.0.1/24", "dev", "ifb0")
        ip("-n", ns, "link", "set", "ifb0", "up")
        proc = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-c", _NETNS_SENDER],
            cwd=repo, capture_output=True, text=True, timeout=30,
        )
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
    assert proc.returncode == 0, proc.stderr
    cqes = [tuple(c[:3]) for c in json.loads(proc.stdout)]
    assert sorted(r for r in results(cqes)) == [(i, 64000, IORING_CQE_F_MORE) for i in range(8)]
    assert sorted(n[0] for n in notifs(cqes)) == list(range(8))
    for _, res, _ in notifs(cqes):
        assert res & IORING_NOTIF_USAGE_ZC_COPIED == 0, f"copied: {res:#x}"


@needs_uring
def test_bad_argument_leaves_no_stray_sqe(ring: Ring) -> None:
    with pytest.raises(OverflowError):
        ring.prep_send_zc(0, b"x", 0, -1)  # user_data must be a u64
    with pytest.raises(TypeError):
        ring.prep_send_zc(0, "not a buffer", 0, 1)  # type: ignore[arg-type]
    assert ring.pending() == 0
    assert ring.prep_nop(3) and ring.submit() == 1
    assert wait_cqes(ring, bool) == [(3, 0, 0)]


@needs_uring
def test_zero_length_and_unreported_usage(ring: Ring) -> None:
    """Measured semantics worth pinning: an empty SEND_ZC still notifies (COPIED: nothing went
    out zero-copy), and without report_usage the notification's res is plain 0."""
    with tcp_pair() as (tx, rx):
        assert ring.prep_send_zc(tx.fileno(), b"", socket.MSG_NOSIGNAL, 1)
        assert ring.prep_send_zc(tx.fileno(), b"abc", socket.MSG_NOSIGNAL, 2, report_usage=False)
        ring.submit()
        cqes = wait_cqes(ring, lambda c: len(results(c)) == 2 and all_notified(c))
        rx.settimeout(5)
        assert rx.recv(10) == b"abc"
    assert sorted(results(cqes)) == [(1, 0, IORING_CQE_F_MORE), (2, 3, IORING_CQE_F_MORE)]
    assert sorted(notifs(cqes)) == [(1, IORING_NOTIF_USAGE_ZC_COPIED - (1 << 32), IORING_CQE_F_NOTIF),
                                    (2, 0, IORING_CQE_F_NOTIF)]


@needs_uring
def test_report_usage_is_supported_here() -> None:
    assert u.report_usage_supported() is True  # kernel 6.18


@needs_uring
def test_submit_continues_past_a_failing_sqe(ring: Ring) -> None:
    """The kernel stops consuming at an SQE that fails prep (here a bad ioprio flag) and skips
    the wait; submit() re-enters so the SQEs behind it are not stranded.  The failed SEND_ZC
    still carries F_MORE and gets its notification."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        assert ring._prep_send(u.IORING_OP_SEND_ZC, sock.fileno(), b"", 0, 1, None, ioprio=1 << 7)
        assert ring.prep_nop(2)
        assert ring.submit(wait_nr=2) == 2
        assert ring.pending() == 0
        cqes = wait_cqes(ring, lambda c: len(results(c)) == 2 and all_notified(c))
    assert sorted(results(cqes)) == [(1, -errno.EINVAL, IORING_CQE_F_MORE), (2, 0, 0)]


def test_unclosed_ring_warns_and_closes() -> None:
    if REASON is not None:
        pytest.skip(REASON)
    ring = Ring(4)
    fd = ring.fd
    with pytest.warns(ResourceWarning):
        del ring
        gc.collect()
    with pytest.raises(OSError):
        os.fstat(fd)  # closed (nothing else opened fds in between)


_MEMLOCK_SENDER = r"""
import json, resource, socket
resource.setrlimit(resource.RLIMIT_MEMLOCK, (256 * 1024, 256 * 1024))
from aiozc._sys import uring as u
lsock = socket.create_server(("127.0.0.1", 0))
tx = socket.create_connection(lsock.getsockname())
rx, _ = lsock.accept()
bufs = {1: bytes(1 << 20), 2: bytes(64 * 1024)}
out = []
with u.Ring(8) as ring:
    for ud, buf in bufs.items():
        ring.prep_send_zc(tx.fileno(), buf, socket.MSG_NOSIGNAL, ud)
        ring.submit(wait_nr=1)
        out += [c for c in ring.reap() if not c[2] & u.IORING_CQE_F_NOTIF]
print(json.dumps(out))
"""


@needs_uring
@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root (to drop to nobody) and setpriv(1)")
def test_unprivileged_send_zc_is_memlock_accounted() -> None:
    """Without CAP_IPC_LOCK, in-flight SEND_ZC bytes count against RLIMIT_MEMLOCK: over the
    limit the result is -ENOMEM (an engine's cue to copy instead), still with F_MORE."""
    repo = Path(__file__).resolve().parent.parent
    require_nobody_can_run(repo)
    proc = subprocess.run(
        [*NOBODY, sys.executable, "-c", _MEMLOCK_SENDER],
        cwd=repo, capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [[1, -errno.ENOMEM, IORING_CQE_F_MORE],
                                       [2, 64 * 1024, IORING_CQE_F_MORE]]
