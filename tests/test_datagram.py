"""The zero-copy UDP transport on loopback (every async test runs on asyncio's loop and uvloop).

Loopback hands every datagram to a local receiver, so the kernel reports zero-copy sends copied and
the transport soon drops to copy-fallback; true zero-copy is tested on the netns rig
(tests/test_udp_sink.py). Here: the asyncio contract, ordering, errors, closing.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from typing import Any

import pytest

import aiozc
from aiozc.base import TransportClosedError
from aiozc.completions import Completion
from aiozc.datagram import (
    MAX_UDP4_PAYLOAD,
    UDP_ERRQUEUE_DRAIN_EVERY,
    UDP_ZC_THRESHOLD,
    ZeroCopyDatagramTransport,
    create_datagram_endpoint,
)
from udp_helpers import closed_port

SO_RCVBUFFORCE = 33  # <asm-generic/socket.h>; Python's socket module lacks it
BIG = 50000  # above the default 48 KiB zero-copy threshold of UDP


class Recorder(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.datagrams: list[tuple[bytes, Any]] = []
        self.errors: list[OSError] = []
        self.events: list[str] = []
        self.lost: asyncio.Future[BaseException | None] = loop.create_future()
        self.arrived = asyncio.Event()
        self.expect = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.events.append("made")

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.datagrams.append((data, addr))
        if len(self.datagrams) >= self.expect:
            self.arrived.set()

    def error_received(self, exc: OSError) -> None:
        self.errors.append(exc)

    def pause_writing(self) -> None:
        self.events.append("pause")

    def resume_writing(self) -> None:
        self.events.append("resume")

    def connection_lost(self, exc: BaseException | None) -> None:
        self.events.append("lost")
        self.lost.set_result(exc)

    async def wait_for(self, n: int, timeout: float = 5.0) -> list[bytes]:
        self.expect = n
        if len(self.datagrams) < n:
            self.arrived.clear()
            await asyncio.wait_for(self.arrived.wait(), timeout)
        return [d for d, _ in self.datagrams]


async def receiver() -> tuple[ZeroCopyDatagramTransport, Recorder]:
    transport, protocol = await create_datagram_endpoint(Recorder, local_addr=("127.0.0.1", 0))
    sock = transport.get_extra_info("socket")
    # Room for every datagram of a test: loopback drops what does not fit the receive buffer.
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 << 20)
    except PermissionError:  # not root: capped by net.core.rmem_max
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
    return transport, protocol  # type: ignore[return-value]


async def sender(remote: Any, **options: Any) -> tuple[ZeroCopyDatagramTransport, Recorder]:
    return await create_datagram_endpoint(Recorder, remote_addr=remote, **options)  # type: ignore[return-value]


def payload(i: int, size: int) -> bytes:
    return i.to_bytes(4, "big") * (size // 4)


class BlockableEngine:
    """Wraps the transport's engine; while ``blocked`` every send raises EAGAIN."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name
        self.blocked = False

    def prepare(self, sock: socket.socket) -> str | None:
        return self.inner.prepare(sock)

    def send(self, sock: socket.socket, data: memoryview, *, zerocopy: bool, address: Any = None) -> int:
        if self.blocked:
            raise BlockingIOError(errno.EAGAIN, "blocked by the test")
        return self.inner.send(sock, data, zerocopy=zerocopy, address=address)


def block(transport: ZeroCopyDatagramTransport) -> BlockableEngine:
    engine = BlockableEngine(transport._engine)
    transport._engine = engine
    engine.blocked = True
    return engine


# ------------------------------------------------------------------------------------------


async def test_exported_from_package() -> None:
    assert aiozc.datagram.create_datagram_endpoint is create_datagram_endpoint
    assert issubclass(ZeroCopyDatagramTransport, asyncio.DatagramTransport)


async def test_udp_defaults_and_explicit_options() -> None:
    t, p = await create_datagram_endpoint(Recorder, local_addr=("127.0.0.1", 0))
    assert t._options.zc_threshold == UDP_ZC_THRESHOLD
    assert t._options.errqueue_drain_every == UDP_ERRQUEUE_DRAIN_EVERY
    t.close()
    await p.lost
    t, p = await create_datagram_endpoint(
        Recorder, local_addr=("127.0.0.1", 0), zc_threshold=4096, errqueue_drain_every=8
    )
    assert (t._options.zc_threshold, t._options.errqueue_drain_every) == (4096, 8)
    t.close()
    await p.lost


async def test_sendto_and_sendto_zc_keep_call_order() -> None:
    rt, rp = await receiver()
    t, p = await sender(rt.get_extra_info("sockname"))
    futures = []
    expected = []
    for i in range(40):
        data = payload(i, BIG if i % 3 else 100)
        expected.append(data)
        if i % 2:
            futures.append(t.sendto_zc(bytearray(data)))
        else:
            t.sendto(data)
    done = await asyncio.wait_for(asyncio.gather(*futures), 5)
    assert all(isinstance(c, Completion) and c.nbytes in (BIG, 100) for c in done)
    assert await rp.wait_for(40) == expected
    assert {addr for _, addr in rp.datagrams} == {t.get_extra_info("sockname")}
    t.close()
    rt.close()
    await p.lost


async def test_queued_datagrams_keep_order_and_sendto_copies_mutable_data() -> None:
    rt, rp = await receiver()
    t, p = await sender(rt.get_extra_info("sockname"))
    engine = block(t)
    buf = bytearray(b"A" * 100)
    t.sendto(buf)
    buf[:] = b"B" * 100  # asyncio's contract: the caller may reuse the buffer at once
    zc = bytearray(payload(7, BIG))
    future = t.sendto_zc(zc)
    t.sendto(b"tail")
    assert t.get_write_buffer_size() == 100 + BIG + 4
    assert not future.done()
    engine.blocked = False
    completion = await asyncio.wait_for(future, 5)
    assert completion.nbytes == BIG
    assert await rp.wait_for(3) == [b"A" * 100, payload(7, BIG), b"tail"]
    assert t.get_write_buffer_size() == 0
    t.close()
    rt.close()
    await p.lost


async def test_flow_control_pauses_and_resumes_writing() -> None:
    rt, rp = await receiver()
    t, p = await sender(rt.get_extra_info("sockname"))
    t.set_write_buffer_limits(high=3 * BIG, low=BIG)
    assert t.get_write_buffer_limits() == (BIG, 3 * BIG)
    engine = block(t)
    futures = [t.sendto_zc(payload(i, BIG)) for i in range(4)]
    assert p.events == ["made", "pause"]
    assert t.get_write_buffer_size() == 4 * BIG
    engine.blocked = False
    await asyncio.wait_for(asyncio.gather(*futures), 5)
    await rp.wait_for(4)
    assert p.events == ["made", "pause", "resume"]
    t.close()
    rt.close()
    await p.lost


async def test_icmp_port_unreachable_reaches_error_received_once_per_datagram() -> None:
    t, p = await sender(closed_port())
    t.sendto(b"first")
    # Loopback answers before the next call: the ICMP error is pending in sk_err, which the next
    # send returns. That send is retried, not failed, and the error is reported once.
    future = t.sendto_zc(bytes(100))
    assert (await asyncio.wait_for(future, 5)).nbytes == 100
    for _ in range(50):
        if len(p.errors) >= 2:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    assert len(p.errors) == 2
    assert all(isinstance(e, ConnectionRefusedError) for e in p.errors)
    assert "ICMP" in str(p.errors[0])
    assert t.stats.socket_errors == 2
    assert not t.is_closing()
    t.close()
    await p.lost


async def test_icmp_error_pending_on_a_fast_path_send() -> None:
    """Same, with datagrams above the threshold while still in the zerocopy state (the
    sendto_zc fast path): the stale error is reported once and the datagram still goes."""
    t, p = await sender(closed_port())
    first = t.sendto_zc(bytes(BIG))
    second = t.sendto_zc(bytes(BIG))
    assert (await asyncio.wait_for(first, 5)).nbytes == BIG
    assert (await asyncio.wait_for(second, 5)).nbytes == BIG
    for _ in range(50):
        if len(p.errors) >= 2:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    assert [type(e) for e in p.errors] == [ConnectionRefusedError] * 2
    assert t.stats.zc_sends == 2
    t.close()
    await p.lost


async def test_connection_made_comes_before_connection_lost_even_if_closed_at_once() -> None:
    rt, _ = await receiver()
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(rt.get_extra_info("sockname"))
    sock.setblocking(False)
    protocol = Recorder()
    transport = ZeroCopyDatagramTransport(loop, sock, protocol)
    transport.close()
    await asyncio.wait_for(protocol.lost, 5)
    assert protocol.events == ["made", "lost"]
    rt.close()


async def test_strided_buffer_is_refused_not_sent() -> None:
    rt, _ = await receiver()
    t, p = await sender(rt.get_extra_info("sockname"))
    strided = memoryview(bytearray(2 * BIG))[::2]
    with pytest.raises(ValueError, match="contiguous"):
        t.sendto_zc(strided)
    t.close()
    rt.close()
    await p.lost


async def test_unconnected_endpoint_reports_icmp_too() -> None:
    rt, rp = await receiver()
    t, p = await create_datagram_endpoint(Recorder, local_addr=("127.0.0.1", 0))
    t.sendto(b"to nobody", closed_port())
    t.sendto(b"hello", rt.get_extra_info("sockname"))
    assert await rp.wait_for(1) == [b"hello"]
    for _ in range(50):
        if p.errors:
            break
        await asyncio.sleep(0.01)
    assert [type(e) for e in p.errors] == [ConnectionRefusedError]
    assert t.get_extra_info("peername") is None
    t.close()
    rt.close()
    await p.lost


async def test_oversized_datagrams() -> None:
    rt, rp = await receiver()
    t, p = await sender(rt.get_extra_info("sockname"))
    with pytest.raises(ValueError, match="65507"):
        t.sendto_zc(bytearray(MAX_UDP4_PAYLOAD + 1))
    t.sendto(bytes(MAX_UDP4_PAYLOAD + 1))
    assert len(p.errors) == 1 and p.errors[0].errno == errno.EMSGSIZE
    # The largest legal datagram still goes, zero-copy eligible.
    completion = await asyncio.wait_for(t.sendto_zc(bytes(MAX_UDP4_PAYLOAD)), 5)
    assert completion.nbytes == MAX_UDP4_PAYLOAD and completion.zc_sends == 1
    assert [len(d) for d in await rp.wait_for(1)] == [MAX_UDP4_PAYLOAD]
    assert len(p.errors) == 1
    t.close()
    rt.close()
    await p.lost


async def test_close_waits_for_outstanding_completions() -> None:
    rt, rp = await receiver()
    t, p = await sender(rt.get_extra_info("sockname"))
    future = t.sendto_zc(bytearray(BIG))
    assert t._tracker.outstanding_ids == 1  # reported later, from the error queue
    t.close()
    assert t.is_closing()
    with pytest.raises(TransportClosedError):
        t.sendto_zc(bytes(10))
    t.sendto(b"dropped")  # like asyncio: silently ignored once closing
    assert not p.lost.done()
    assert t.get_extra_info("socket").fileno() != -1  # the kernel may still read our pages
    completion = await asyncio.wait_for(future, 5)
    assert completion.nbytes == BIG
    assert await asyncio.wait_for(p.lost, 5) is None
    assert p.events[-1] == "lost"
    assert t.get_extra_info("socket").fileno() == -1
    assert await rp.wait_for(1) == [bytes(BIG)]
    rt.close()


async def test_close_flushes_queue_first() -> None:
    rt, rp = await receiver()
    t, p = await sender(rt.get_extra_info("sockname"))
    engine = block(t)
    t.sendto(b"queued")
    future = t.sendto_zc(payload(3, BIG))
    t.close()
    await asyncio.sleep(0.01)
    assert not p.lost.done()
    engine.blocked = False
    await asyncio.wait_for(future, 5)
    assert await asyncio.wait_for(p.lost, 5) is None
    assert await rp.wait_for(2) == [b"queued", payload(3, BIG)]
    rt.close()


async def test_abort_fails_pending_and_queued_futures() -> None:
    rt, _ = await receiver()
    t, p = await sender(rt.get_extra_info("sockname"))
    sent = t.sendto_zc(bytearray(BIG))  # sent, completion outstanding
    block(t)
    queued = t.sendto_zc(bytearray(BIG))  # still in our queue
    t.abort()
    for future in (sent, queued):
        with pytest.raises(ConnectionAbortedError):
            await future
    assert await asyncio.wait_for(p.lost, 5) is None
    assert t.get_write_buffer_size() == 0
    t.abort()  # idempotent
    t.close()
    rt.close()


async def test_extra_info_and_stats() -> None:
    rt, _ = await receiver()
    remote = rt.get_extra_info("sockname")
    t, p = await sender(remote)
    sock = t.get_extra_info("socket")
    assert isinstance(sock, asyncio.trsock.TransportSocket) and sock.type == socket.SOCK_DGRAM
    assert t.get_extra_info("peername") == remote
    assert t.get_extra_info("sockname") == sock.getsockname()
    stats = t.get_extra_info("aiozc_stats")
    assert stats is t.stats
    await asyncio.wait_for(asyncio.gather(*(t.sendto_zc(bytes(BIG)) for _ in range(10))), 5)
    t.sendto(b"small")
    assert stats.zc_sends == 10 and stats.copy_sends == 1
    # Loopback copies: every id comes back copied, so the policy leaves zero-copy.
    assert stats.ids_copied == 10
    assert stats.state == "copy-fallback"
    t.close()
    rt.close()
    await p.lost


async def test_reading_and_pause_reading() -> None:
    rt, rp = await receiver()
    t, p = await sender(rt.get_extra_info("sockname"))
    rt.pause_reading()
    assert not rt.is_reading()
    t.sendto(b"one")
    await asyncio.sleep(0.05)
    assert rp.datagrams == []
    rt.resume_reading()
    assert await rp.wait_for(1) == [b"one"]
    # And back: the receiver answers to the sender's address.
    rt.sendto(b"pong", rp.datagrams[0][1])
    assert await p.wait_for(1) == [b"pong"]
    t.close()
    rt.close()
    await p.lost


async def test_empty_datagrams_are_sent() -> None:
    rt, rp = await receiver()
    t, p = await sender(rt.get_extra_info("sockname"))
    t.sendto(b"")
    assert await asyncio.wait_for(t.sendto_zc(b""), 5) == Completion(0, False)
    assert await rp.wait_for(2) == [b"", b""]
    t.close()
    rt.close()
    await p.lost


async def test_bad_inputs() -> None:
    rt, _ = await receiver()
    remote = rt.get_extra_info("sockname")
    t, p = await sender(remote)
    with pytest.raises(TypeError):
        t.sendto("text")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        t.sendto_zc(object())
    with pytest.raises(ValueError, match="Invalid address"):
        t.sendto(b"x", ("127.0.0.1", remote[1] + 1))
    t.sendto(b"x", remote)  # the connected address itself is fine
    np = pytest.importorskip("numpy")
    with pytest.raises(ValueError, match="contiguous"):
        t.sendto_zc(np.zeros((64, 64), dtype=np.uint8)[:, ::2])
    t.close()
    await p.lost

    u, q = await create_datagram_endpoint(Recorder, local_addr=("127.0.0.1", 0))
    with pytest.raises(ValueError, match="address is required"):
        u.sendto(b"x")
    u.close()
    await q.lost

    with pytest.raises(TypeError, match="unexpected aiozc transport option"):
        await create_datagram_endpoint(Recorder, local_addr=("127.0.0.1", 0), reuse_address=True)
    with pytest.raises(ValueError, match="unexpected address family"):
        await create_datagram_endpoint(Recorder)
    with pytest.raises(TypeError, match="2-tuple"):
        await create_datagram_endpoint(Recorder, local_addr="127.0.0.1")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as stream:
        with pytest.raises(ValueError, match="^A UDP Socket was expected"):  # asyncio's words
            await create_datagram_endpoint(Recorder, sock=stream)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as dgram:
        with pytest.raises(ValueError, match="local_addr"):
            await create_datagram_endpoint(Recorder, sock=dgram, local_addr=("127.0.0.1", 0))
    rt.close()


async def test_existing_socket_and_options() -> None:
    rt, rp = await receiver()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(rt.get_extra_info("sockname"))
    t, p = await create_datagram_endpoint(Recorder, sock=sock, zc_threshold=1 << 30)
    assert t.get_extra_info("socket").fileno() == sock.fileno() and not sock.getblocking()
    completion = await asyncio.wait_for(t.sendto_zc(bytes(BIG)), 5)
    assert completion == Completion(BIG, False, 0, 0)  # below the threshold: a plain copy
    assert await rp.wait_for(1) == [bytes(BIG)]
    t.close()
    rt.close()
    await p.lost


async def test_copy_engine_never_asks_for_zerocopy() -> None:
    rt, rp = await receiver()
    t, p = await sender(rt.get_extra_info("sockname"), engine="copy")
    assert t.stats.state == "disabled"
    await asyncio.wait_for(t.sendto_zc(bytes(BIG)), 5)
    t.sendto(bytes(BIG))
    assert t.stats.zc_sends == 0 and t.stats.copy_sends == 2
    assert len(await rp.wait_for(2)) == 2
    t.close()
    rt.close()
    await p.lost


async def test_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        rt, rp = await create_datagram_endpoint(Recorder, local_addr=("::1", 0))
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback: {exc}")
    t, p = await sender(rt.get_extra_info("sockname")[:2])
    with pytest.raises(ValueError, match="65527"):
        t.sendto_zc(bytes(65528))
    await asyncio.wait_for(t.sendto_zc(bytes(BIG)), 5)
    assert await rp.wait_for(1) == [bytes(BIG)]
    t.close()
    rt.close()
    await p.lost
