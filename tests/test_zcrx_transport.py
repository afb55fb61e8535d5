"""Zero-copy receive on TCP transports (``zc_receive=ZeroCopyReceive(...)``), on both loops.

Every stream runs in a private namespace whose lo has MTU 61492 (an MSS that is a multiple of
4096), with a sender thread forced to MSG_ZEROCOPY: the kernel then hands the receiver whole
order-0 pages, which map (PLATFORM.md, "Zero-copy receive"). A plain sender maps nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

import aiozc
import aiozc.loop
from aiozc import zcrx
from aiozc._sys import kernel
from aiozc.tools.netns import NetNamespace
from zcrx_rig import mss_namespace

_names = itertools.count()
Pair = tuple[socket.socket, socket.socket]
MiB = 1 << 20


# ------------------------------------------------------------------------------------------
# Rig


@pytest.fixture(scope="module")
def mss_ns() -> Iterator[NetNamespace]:
    yield from mss_namespace("zcrxt")


@pytest.fixture
def tcp_pair(mss_ns: NetNamespace) -> Iterator[Callable[[], Pair]]:
    """``make()`` -> (sender with SO_ZEROCOPY, receiver) connected over the namespace's lo."""
    made: list[socket.socket] = []

    def make() -> Pair:
        listener = mss_ns.socket(socket.AF_INET, socket.SOCK_STREAM)
        made.append(listener)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        sender = mss_ns.socket(socket.AF_INET, socket.SOCK_STREAM)
        made.append(sender)
        assert kernel.enable_zerocopy(sender) is None
        sender.connect(listener.getsockname())
        receiver, _ = listener.accept()
        made.append(receiver)
        listener.close()
        return sender, receiver

    yield make
    for sock in made:
        sock.close()


def config(**kw: Any) -> zcrx.ZeroCopyReceive:
    # A pool of its own per test (distinct regions count): held counts are the test's alone.
    kw.setdefault("chunk", 256 * 1024)
    kw.setdefault("regions", 40 + next(_names))
    return zcrx.ZeroCopyReceive(**kw)


def send_in_thread(sock: socket.socket, parts: list[bytes], *, zerocopy: list[bool] | bool = True,
                   then: str = "shutdown") -> threading.Thread:
    """Send ``parts`` in order (MSG_ZEROCOPY where ``zerocopy`` says), then shut down the write
    side ("shutdown"), reset the connection ("reset") or leave it open ("none")."""
    flags = [zerocopy] * len(parts) if isinstance(zerocopy, bool) else zerocopy

    def run() -> None:
        try:
            for part, zc in zip(parts, flags):
                view = memoryview(part)
                for i in range(0, len(view), MiB):
                    sock.sendall(view[i:i + MiB], kernel.MSG_ZEROCOPY if zc else 0)
            if then == "shutdown":
                sock.shutdown(socket.SHUT_WR)
            elif then == "reset":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()
        except OSError:
            pass  # the receiver went away (reset tests)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


class Recorder:
    """What a protocol saw, in order: ("lease"|"copy", bytes), then the end."""

    def __init__(self) -> None:
        self.pieces: list[tuple[str, bytes]] = []
        self.eof = False
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def eof_received(self) -> bool:
        self.eof = True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)

    @property
    def data(self) -> bytes:
        return b"".join(p for _, p in self.pieces)

    def kinds(self) -> set[str]:
        return {k for k, _ in self.pieces}


class LeaseProtocol(Recorder, asyncio.Protocol):
    def lease_received(self, lease: zcrx.Lease) -> None:
        with lease:
            self.pieces.append(("lease", bytes(lease.view)))

    def data_received(self, data: bytes) -> None:
        self.pieces.append(("copy", data))


class PlainProtocol(Recorder, asyncio.Protocol):
    def data_received(self, data: bytes) -> None:
        self.pieces.append(("copy", data))


class PlainBufferedProtocol(Recorder, asyncio.BufferedProtocol):
    def __init__(self) -> None:
        super().__init__()
        self._buf = bytearray(64 * 1024)

    def get_buffer(self, sizehint: int) -> bytearray:
        return self._buf

    def buffer_updated(self, nbytes: int) -> None:
        self.pieces.append(("copy", bytes(self._buf[:nbytes])))


class BufferedLeaseProtocol(PlainBufferedProtocol):
    def lease_received(self, lease: zcrx.Lease) -> None:
        with lease:
            self.pieces.append(("lease", bytes(lease.view)))


def stats_of(transport: Any) -> Any:
    return transport.get_extra_info("aiozc_stats").extra["zc_receive"]


async def receive(receiver: socket.socket, factory: Callable[[], Recorder], zc: zcrx.ZeroCopyReceive
                  ) -> tuple[Any, Recorder]:
    transport, protocol = await aiozc.create_connection(factory, sock=receiver, zc_receive=zc)
    return transport, protocol


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------------------
# Option


def test_option_takes_a_config_true_or_none() -> None:
    assert aiozc.TransportOptions(zc_receive=True).zc_receive == zcrx.ZeroCopyReceive()
    assert aiozc.TransportOptions(zc_receive=False).zc_receive is None
    with pytest.raises(TypeError):
        aiozc.TransportOptions(zc_receive="yes")
    with pytest.raises(ValueError):
        zcrx.ZeroCopyReceive(chunk=5000)
    with pytest.raises(ValueError):
        zcrx.ZeroCopyReceive(min_mapped=2)


def test_one_pool_per_process_per_shape() -> None:
    a, b = zcrx.ZeroCopyReceive(chunk=8192, regions=3), zcrx.ZeroCopyReceive(chunk=8192, regions=3)
    assert a.pool() is b.pool()
    assert zcrx.ZeroCopyReceive(chunk=8192, regions=4).pool() is not a.pool()


# ------------------------------------------------------------------------------------------
# Streams


@pytest.mark.parametrize("factory", [LeaseProtocol, BufferedLeaseProtocol])
async def test_zerocopy_sender_maps_99_percent_intact(tcp_pair, factory) -> None:
    # As in test_zcrx: the bound must hold in one of three streams (the kernel copies a
    # receive queue it had to prune); every stream must be intact.
    seen = []
    for _ in range(3):
        sender, receiver = tcp_pair()
        payload = os.urandom(24 * MiB)
        t = send_in_thread(sender, [payload])
        transport, protocol = await receive(receiver, factory, config())
        assert await protocol.lost is None
        t.join()
        assert protocol.eof
        assert sha(protocol.data) == sha(payload)
        stats = stats_of(transport)
        assert stats.mapped_bytes + stats.copied_bytes == len(payload)
        assert stats.lease_copied_bytes == 0
        seen.append(round(stats.mapped_fraction, 4))
        if stats.mapped_fraction >= 0.99:
            assert stats.state == "mapping"
            return
    pytest.fail(f"under 99% mapped in 3 streams: {seen}")


@pytest.mark.parametrize("factory", [PlainProtocol, PlainBufferedProtocol])
async def test_protocol_without_lease_received_gets_copies(tcp_pair, factory) -> None:
    zc = config()
    sender, receiver = tcp_pair()
    payload = os.urandom(8 * MiB)
    t = send_in_thread(sender, [payload])
    transport, protocol = await receive(receiver, factory, zc)
    assert await protocol.lost is None
    t.join()
    assert protocol.data == payload
    assert protocol.kinds() == {"copy"}
    stats = stats_of(transport)
    assert stats.lease_copied_bytes == stats.mapped_bytes > 0  # leases were copied out...
    assert zc.pool().held == 0  # ...and released


async def test_stream_reader_works(tcp_pair) -> None:
    sender, receiver = tcp_pair()
    payload = os.urandom(4 * MiB + 123)
    t = send_in_thread(sender, [payload])
    reader, writer = await aiozc.open_connection(sock=receiver, zc_receive=config())
    data = await reader.read()
    t.join()
    assert sha(data) == sha(payload)
    assert stats_of(writer.transport).mapped_bytes > 0
    writer.close()


async def test_server_side(mss_ns) -> None:
    listener = mss_ns.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    accepted: asyncio.Future[LeaseProtocol] = asyncio.get_running_loop().create_future()

    def factory() -> LeaseProtocol:
        protocol = LeaseProtocol()
        accepted.set_result(protocol)
        return protocol

    server = await aiozc.create_server(factory, sock=listener, zc_receive=config())
    sender = mss_ns.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        assert kernel.enable_zerocopy(sender) is None
        await asyncio.get_running_loop().run_in_executor(None, sender.connect, listener.getsockname())
        payload = os.urandom(4 * MiB)
        t = send_in_thread(sender, [payload])
        protocol = await accepted
        assert await protocol.lost is None
        t.join()
        assert protocol.data == payload and "lease" in protocol.kinds()
    finally:
        sender.close()
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("size", [0, 100, 4095, 4096 * 3 + 17])
async def test_short_streams_and_eof(tcp_pair, size: int) -> None:
    sender, receiver = tcp_pair()
    payload = os.urandom(size)
    t = send_in_thread(sender, [payload])
    transport, protocol = await receive(receiver, LeaseProtocol, config())
    assert await protocol.lost is None
    t.join()
    assert protocol.eof and protocol.data == payload


async def test_mixed_mapped_and_copied_stream_stays_in_order(tcp_pair) -> None:
    sender, receiver = tcp_pair()
    sender.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    parts = [os.urandom(256 * 1024) if i % 2 == 0 else os.urandom(1000) for i in range(40)]
    t = send_in_thread(sender, parts, zerocopy=[i % 2 == 0 for i in range(40)])
    transport, protocol = await receive(receiver, LeaseProtocol, config())
    assert await protocol.lost is None
    t.join()
    assert protocol.data == b"".join(parts)
    assert protocol.kinds() == {"lease", "copy"}


async def test_urgent_byte_stays_in_line(tcp_pair) -> None:
    # The kernel's zero-copy receive ignores the urgent mark; SO_OOBINLINE makes recv agree.
    sender, receiver = tcp_pair()
    head, tail = os.urandom(MiB), os.urandom(MiB)

    def run() -> None:
        sender.sendall(head, kernel.MSG_ZEROCOPY)
        sender.send(b"!", socket.MSG_OOB)
        sender.sendall(tail, kernel.MSG_ZEROCOPY)
        sender.shutdown(socket.SHUT_WR)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    transport, protocol = await receive(receiver, LeaseProtocol, config())
    assert await protocol.lost is None
    t.join()
    assert protocol.data == head + b"!" + tail


async def test_reset_after_data_is_connection_lost_with_the_error(tcp_pair) -> None:
    sender, receiver = tcp_pair()
    payload = os.urandom(512 * 1024)
    t = send_in_thread(sender, [payload], then="reset")
    t.join()  # everything is queued at the receiver (or dropped by the RST) before it reads
    transport, protocol = await receive(receiver, LeaseProtocol, config())
    exc = await protocol.lost
    assert isinstance(exc, ConnectionResetError)
    assert protocol.data and payload.startswith(protocol.data)  # what came before, then the error


async def test_plain_sender_auto_disables(tcp_pair) -> None:
    sender, receiver = tcp_pair()
    payload = os.urandom(8 * MiB)
    t = send_in_thread(sender, [payload], zerocopy=False)
    transport, protocol = await receive(receiver, LeaseProtocol, config(judge_after=MiB))
    assert await protocol.lost is None
    t.join()
    assert sha(protocol.data) == sha(payload)
    stats = stats_of(transport)
    assert stats.state == "disabled" and "plain send()" in stats.reason, stats
    # Judged after about judge_after bytes; the rest took the plain path (not counted).
    assert MiB <= stats.mapped_bytes + stats.copied_bytes < len(payload)
    assert stats.mapped_bytes <= 0.01 * len(payload)


class PausingProtocol(LeaseProtocol):
    """Pauses reading in the first lease_received; records what arrives while paused."""

    def __init__(self) -> None:
        super().__init__()
        self.paused = asyncio.Event()
        self.while_paused = 0

    def lease_received(self, lease: zcrx.Lease) -> None:
        self._count()
        super().lease_received(lease)
        if not self.paused.is_set():
            self.transport.pause_reading()
            self.paused.set()

    def data_received(self, data: bytes) -> None:
        self._count()
        super().data_received(data)

    def _count(self) -> None:
        if self.paused.is_set() and not self.transport.is_reading():
            self.while_paused += 1


async def test_pause_reading_in_lease_received_stops_delivery(tcp_pair) -> None:
    sender, receiver = tcp_pair()
    payload = os.urandom(4 * MiB)
    t = send_in_thread(sender, [payload])
    transport, protocol = await receive(receiver, PausingProtocol, config())
    await asyncio.wait_for(protocol.paused.wait(), 10)
    got = len(protocol.data)
    await asyncio.sleep(0.05)
    assert len(protocol.data) == got and protocol.while_paused == 0
    transport.resume_reading()
    assert await protocol.lost is None
    t.join()
    assert protocol.data == payload


class StopAndGoProtocol(PlainBufferedProtocol):
    """A BufferedProtocol without lease_received that pauses reading after every buffer."""

    def __init__(self) -> None:
        super().__init__()
        self._buf = bytearray(16 * 1024)  # a lease takes many buffers
        self.while_paused = 0

    def buffer_updated(self, nbytes: int) -> None:
        if not self.transport.is_reading():
            self.while_paused += 1
        super().buffer_updated(nbytes)
        self.transport.pause_reading()
        asyncio.get_running_loop().call_soon(self.transport.resume_reading)


async def test_pausing_in_the_middle_of_a_copied_lease_holds_the_rest_back(tcp_pair) -> None:
    # The kernel gave the whole lease up: what the protocol has not taken when it pauses is
    # held back and goes first on resume_reading (before: fed on regardless, and get_buffer of
    # a protocol that stopped reading failed the connection).
    sender, receiver = tcp_pair()
    payload = os.urandom(2 * MiB)
    t = send_in_thread(sender, [payload])
    transport, protocol = await receive(receiver, StopAndGoProtocol, config())
    assert await protocol.lost is None
    t.join()
    assert protocol.data == payload
    assert protocol.while_paused == 0
    assert stats_of(transport).lease_copied_bytes > 0


class FailingProtocol(LeaseProtocol):
    def lease_received(self, lease: zcrx.Lease) -> None:
        raise ValueError("no thanks")


async def test_lease_received_that_raises_closes_with_the_error(tcp_pair) -> None:
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    sender, receiver = tcp_pair()
    t = send_in_thread(sender, [os.urandom(MiB)], then="none")
    transport, protocol = await receive(receiver, FailingProtocol, config())
    exc = await protocol.lost
    t.join()
    assert isinstance(exc, ValueError)
    assert [c["message"] for c in reported] == ["Fatal error: protocol.lease_received() call failed."]


@pytest.mark.parametrize("base", ["asyncio", "uvloop"])
def test_aiozc_loop_default_applies_to_its_connections(tcp_pair, base: str) -> None:
    sender, receiver = tcp_pair()
    payload = os.urandom(2 * MiB)

    async def main() -> tuple[bytes, Any]:
        loop = asyncio.get_running_loop()
        t = send_in_thread(sender, [payload])
        transport, protocol = await loop.create_connection(LeaseProtocol, sock=receiver)
        assert await protocol.lost is None
        t.join()
        return protocol.data, stats_of(transport)

    with asyncio.Runner(loop_factory=aiozc.loop.loop_factory(base, zc_receive=config())) as runner:
        data, stats = runner.run(main())
    assert data == payload and stats.mapped_bytes > 0


# ------------------------------------------------------------------------------------------
# Lifetime and the bound


class HoldingProtocol(LeaseProtocol):
    """Keeps every lease (or a view derived from it) while ``hold`` is set."""

    def __init__(self, keep: str) -> None:
        super().__init__()
        self.keep = keep
        self.hold = True
        self.held: list[Any] = []
        self.snapshots: list[bytes] = []
        self.got_lease = asyncio.Event()

    def lease_received(self, lease: zcrx.Lease) -> None:
        self.got_lease.set()
        if not self.hold:
            return super().lease_received(lease)
        self.pieces.append(("lease", bytes(lease.view)))
        self.snapshots.append(bytes(lease.view))
        if self.keep == "lease":
            self.held.append(lease)
            return
        derived = lease.view[1:] if self.keep == "slice" else np.frombuffer(lease.view, np.uint8)
        self.held.append(derived)
        assert lease.release() is False  # a derived view lives: the region stays mapped

    def let_go(self, held: Any) -> None:
        """Release what is held (a lease, a slice); a numpy array just has to die."""
        if self.keep != "numpy":
            held.release()


async def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


@pytest.mark.parametrize("keep", ["lease", "slice", "numpy"])
async def test_held_regions_pause_reading_and_freeing_one_resumes(tcp_pair, keep: str) -> None:
    zc = config(chunk=64 * 1024, regions=2)
    pool = zc.pool()
    sender, receiver = tcp_pair()
    payload = os.urandom(4 * MiB)
    t = send_in_thread(sender, [payload])
    transport, protocol = await receive(receiver, lambda: HoldingProtocol(keep), zc)
    stats = stats_of(transport)
    await wait_for(lambda: stats.state == "paused", "reading to pause")
    assert pool.held == 2 and len(protocol.held) == 2
    before = len(protocol.data)
    await asyncio.sleep(0.05)
    assert len(protocol.data) == before  # nothing more is taken while every region is held
    # The held pages were never remapped: they still read as what arrived.
    for held, snapshot in zip(protocol.held, protocol.snapshots):
        got = bytes(held.view) if keep == "lease" else bytes(held)
        assert got == snapshot[len(snapshot) - len(got):]
    del held, got
    # Let go of one, from another thread: reading resumes.
    first = protocol.held.pop(0)
    releaser = threading.Thread(target=protocol.let_go, args=(first,))
    releaser.start()
    releaser.join()
    del first
    await wait_for(lambda: len(protocol.data) > before, "reading to resume")
    protocol.hold = False
    for held in protocol.held:
        protocol.let_go(held)
    del held  # the last array must die too
    protocol.held.clear()
    assert await asyncio.wait_for(protocol.lost, 30) is None
    t.join()
    assert protocol.data == payload
    assert stats.pauses >= 1
    await wait_for(lambda: pool.collect() == 0 and pool.held == 0, "every region to be freed")


async def test_close_is_not_delayed_by_a_held_lease(tcp_pair) -> None:
    zc = config()
    sender, receiver = tcp_pair()
    payload = os.urandom(MiB)
    t = send_in_thread(sender, [payload], then="none")
    transport, protocol = await receive(receiver, lambda: HoldingProtocol("lease"), zc)
    await asyncio.wait_for(protocol.got_lease.wait(), 10)
    transport.close()
    assert await asyncio.wait_for(protocol.lost, 5) is None
    t.join()
    # The peer sees our close although a lease is held (its region is the pool's, not the
    # socket's): a FIN, or a reset when the close left unread bytes in our receive queue
    # (tcp_close() answers that with RST; it depends on how much of the 1 MiB had arrived).
    sender.settimeout(5)
    try:
        while sender.recv(65536):
            pass
    except ConnectionResetError:
        pass
    lease = protocol.held[0]
    assert bytes(lease.view) == protocol.snapshots[0]  # still valid after the close
    assert lease.release() is True


# ------------------------------------------------------------------------------------------
# aiozc.tensors over mapped pages


def mapped_region_of(array: np.ndarray) -> Any:
    """The mmap under ``array`` (following .base), or None for memory of its own."""
    base: Any = array
    while isinstance(base, np.ndarray):
        base = base.base
    return base.obj if isinstance(base, memoryview) else None


async def test_tensor_bodies_arrive_as_arrays_over_mapped_pages(mss_ns) -> None:
    import mmap

    from aiozc import tensors
    from aiozc.tensors.frames import encode_header

    zc = config(chunk=1 << 20)
    arrays = [np.random.default_rng(i).random(64 * 1024, dtype=np.float32) for i in range(16)]
    received: list[np.ndarray] = []
    done = asyncio.Event()

    async def handler(chan: Any) -> None:
        out = np.empty_like(arrays[0])
        assert await chan.recv(out=out) is out  # recv(out=) still fills out in place
        received.append(out)
        async for array in chan:
            received.append(array)
        done.set()

    listener = mss_ns.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    server = await tensors.serve(handler, None, None, sock=listener, zc_receive=zc)
    sender = mss_ns.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        assert kernel.enable_zerocopy(sender) is None
        await asyncio.get_running_loop().run_in_executor(None, sender.connect, listener.getsockname())
        frames: list[bytes] = []
        zerocopy: list[bool] = []
        for array in arrays:
            frames += [encode_header(array, name=None, metadata=None, tag=None), array.tobytes()]
            zerocopy += [False, True]
        t = send_in_thread(sender, frames, zerocopy=zerocopy)
        await asyncio.wait_for(done.wait(), 30)
        t.join()
    finally:
        sender.close()
        server.close()
        await server.wait_closed()
    assert len(received) == len(arrays)
    for got, sent in zip(received, arrays):
        assert np.array_equal(got, sent)
    mapped = [a for a in received if isinstance(mapped_region_of(a), mmap.mmap)]
    print("tensor frames over mapped pages:", len(mapped), "of", len(received))
    assert mapped, "no frame body arrived as an array over mapped pages"
    for array in mapped:
        assert not array.flags.writeable  # PROT_READ pages
    pool = zc.pool()
    assert pool.held > 0  # the arrays keep their regions...
    received.clear()
    del mapped, array, got
    await wait_for(lambda: pool.collect() == 0 and pool.held == 0, "regions to be freed with the arrays")


# ------------------------------------------------------------------------------------------
# TLS: nothing to map into (records are decrypted into SSLProtocol's buffer)


async def test_tls_connection_goes_back_to_the_plain_path_and_says_why() -> None:
    import ssl

    import trustme

    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    payload = os.urandom(MiB)
    got: asyncio.Future[tuple[bytes, Any]] = asyncio.get_running_loop().create_future()

    async def handle(reader: asyncio.StreamReader, writer: Any) -> None:
        got.set_result((await reader.read(), writer.get_extra_info("aiozc_stats")))
        writer.close()

    server = await aiozc.start_server(handle, "127.0.0.1", 0, ssl=server_ctx, zc_receive=True)
    try:
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx)
        writer.write(payload)
        writer.write_eof() if writer.can_write_eof() else None
        await writer.drain()
        writer.close()
        data, stats = await asyncio.wait_for(got, 30)
    finally:
        server.close()
        await server.wait_closed()
    assert data == payload
    zc = stats.extra["zc_receive"]
    assert zc.state == "disabled" and zc.reason.startswith("TLS"), zc


def test_a_forked_child_gets_a_pool_of_its_own() -> None:
    # MADV_DONTFORK: the parent's regions are not mapped in the child, so it must not use them.
    zc = zcrx.ZeroCopyReceive(chunk=8192, regions=5)
    parent_pool = zc.pool()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        ok = zc.pool() is not parent_pool and zc.pool().pid == os.getpid()
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert zc.pool() is parent_pool
