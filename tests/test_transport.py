"""The zero-copy TCP transport on loopback, on both loops (see conftest)."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import random
import resource
import socket
import struct

import numpy as np
import pytest

import aiozc
from aiozc._sys import kernel as _kernel
from aiozc.readiness import Multiplexer
from tcp_helpers import RecordingProtocol, connect_pair, report_ranges_as, sha


async def test_write_zc_roundtrip_reports_completion() -> None:
    pair = await connect_pair()
    try:
        buf = bytearray(random.randbytes(4 << 20))
        fut = pair.transport.write_zc(buf)
        with pytest.raises(BufferError):
            buf.extend(b"x")  # the transport holds an export until the kernel is done
        data = await pair.read_all(len(buf))
        completion = await asyncio.wait_for(fut, 10)
        assert completion.nbytes == len(buf)
        assert completion.zerocopy is False  # loopback always copies (PLATFORM.md)
        assert sha(data) == sha(buf)
        buf.extend(b"x")  # released after completion
        assert pair.transport.get_write_buffer_size() == 0
    finally:
        pair.close()


async def test_mixed_writes_256mib_intact_and_ordered() -> None:
    """>= 256 MiB of write / writelines / write_zc (numpy, mmap-like, bytes) arrive in order."""
    rng = random.Random(1234)
    pool = np.frombuffer(rng.randbytes(8 << 20), dtype=np.uint8)
    server_hash = hashlib.sha256()
    total = 0
    done = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: aiozc.ZeroCopyStreamWriter) -> None:
        nonlocal total
        while chunk := await reader.read(1 << 20):
            server_hash.update(chunk)
            total += len(chunk)
        writer.close()
        done.set()

    server = await aiozc.start_server(handle, "127.0.0.1", 0)
    async with server:
        reader, writer = await aiozc.open_connection(*server.sockets[0].getsockname())
        expected = hashlib.sha256()
        sent = 0
        pending: list[asyncio.Future[aiozc.Completion]] = []
        while sent < 256 << 20:
            size = rng.choice([1, 100, 4096, 16 << 10, 64 << 10, 1 << 20, 3 << 20])
            start = rng.randrange(0, len(pool) - size)
            piece = pool[start : start + size]
            kind = rng.choice(["write_bytes", "write_mutable", "writelines", "write_zc", "write_zc_2d"])
            if kind == "write_bytes":
                writer.write(piece.tobytes())
            elif kind == "write_mutable":
                mutable = bytearray(piece.tobytes())
                writer.write(mutable)
                mutable[:] = b"\0" * len(mutable)  # asyncio's contract: safe to mutate now
            elif kind == "writelines":
                half = size // 2
                writer.writelines([piece[:half].tobytes(), memoryview(piece[half:].tobytes())])
            elif kind == "write_zc":
                pending.append(writer.write_zc(piece))
            else:
                rows = piece[: size - size % 4].reshape(-1, 4) if size >= 4 else piece
                piece = rows.reshape(-1)
                pending.append(writer.write_zc(rows))
            expected.update(piece.tobytes())
            sent += len(piece)
            if len(pending) > 16:
                await asyncio.gather(*pending)
                pending.clear()
            await writer.drain()
        await asyncio.gather(*pending)
        writer.close()
        await writer.wait_closed()
        await asyncio.wait_for(done.wait(), 60)
    assert total == sent
    assert server_hash.hexdigest() == expected.hexdigest()


async def test_copy_fallback_on_loopback() -> None:
    pair = await connect_pair(fallback_after=4)
    try:
        buf = random.randbytes(256 << 10)
        for _ in range(32):
            fut = pair.transport.write_zc(buf)
            await pair.read_all(len(pair.received) + len(buf))
            await asyncio.wait_for(fut, 10)
        stats = pair.transport.stats
        assert stats.state == "copy-fallback"
        assert "copied" in stats.reason
        assert stats.ids_copied >= 4
        # After the switch the sends are plain: far fewer zero-copy sends than writes.
        assert stats.zc_sends < 32
        assert stats.copy_bytes > 0
    finally:
        pair.close()


async def test_reprobe_sends_one_zerocopy_after_reprobe_bytes() -> None:
    pair = await connect_pair(fallback_after=1, reprobe_bytes=1 << 20)
    try:
        buf = random.randbytes(256 << 10)
        for _ in range(40):  # 10 MiB: fallback, then a probe every MiB
            fut = pair.transport.write_zc(buf)
            await pair.read_all(len(pair.received) + len(buf))
            await asyncio.wait_for(fut, 10)
        stats = pair.transport.stats
        assert stats.state == "copy-fallback"
        assert 4 <= stats.zc_sends <= 12, stats
    finally:
        pair.close()


def _fake_uncopied(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Report every real kernel notification as *not* copied: the zero-copy success path a
    NIC would give, which no interface on one host produces for TCP."""
    seen: list[tuple[int, int]] = []

    def uncopied(m: _kernel.ZeroCopyRange) -> bool:
        seen.append((m.lo, m.hi))
        return False

    report_ranges_as(monkeypatch, uncopied)
    return seen


async def test_zerocopy_success_path_with_simulated_notifications(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen = _fake_uncopied(monkeypatch)
    pair = await connect_pair()
    try:
        # Until the kernel confirmed one zero-copy send, one probe write is in flight and the
        # writes behind it are copied (probe_first).
        probe = random.randbytes(1 << 20)
        during = random.randbytes(1 << 20)
        probe_fut = pair.transport.write_zc(probe)
        during_fut = pair.transport.write_zc(during)
        await pair.read_all(2 << 20)
        assert (await asyncio.wait_for(probe_fut, 10)).zerocopy
        assert not (await asyncio.wait_for(during_fut, 10)).zerocopy
        # Confirmed: from now on every write goes zero-copy and is reported so.
        bufs = [random.randbytes(1 << 20) for _ in range(20)]
        futs = [pair.transport.write_zc(b) for b in bufs]
        data = await pair.read_all(22 << 20)
        completions = await asyncio.wait_for(asyncio.gather(*futs), 10)
        assert sha(data) == sha(probe + during + b"".join(bufs))
        assert all(c.zerocopy and c.nbytes == 1 << 20 for c in completions)
        stats = pair.transport.stats
        assert stats.state == "zerocopy"
        assert stats.zc_writes == 21 and stats.copy_writes == 1
        assert stats.ids_copied == 0 and stats.ids_zerocopy == stats.zc_sends
        assert seen and stats.pinned_bytes == 0
    finally:
        pair.close()


async def test_probe_first_off_pins_every_write_until_the_kernel_answers() -> None:
    pair = await connect_pair(probe_first=False, fallback_after=1 << 20)
    try:
        futs = [pair.transport.write_zc(random.randbytes(256 << 10)) for _ in range(4)]
        assert pair.transport.stats.zc_sends >= 4 or pair.transport._queue
        await pair.read_all(1 << 20)
        await asyncio.wait_for(asyncio.gather(*futs), 10)
        assert pair.transport.stats.copy_sends == 0
    finally:
        pair.close()


async def test_pinned_bytes_stay_out_of_flow_control_and_are_capped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Pinned bytes are in the kernel like any sent data: get_write_buffer_size() counts only
    what waits in user space (as stock), and max_pinned_bytes bounds the pinned memory."""
    _fake_uncopied(monkeypatch)
    pair = await connect_pair(max_pinned_bytes=1 << 20)
    try:
        transport = pair.transport
        transport.set_write_buffer_limits(high=1 << 20)
        probe = transport.write_zc(random.randbytes(1 << 20))
        assert transport.stats.pinned_bytes == 1 << 20  # loopback takes 1 MiB at once
        assert transport.get_write_buffer_size() == 0
        assert pair.protocol.events == ["made"]  # pinned bytes do not pause the writer
        await pair.read_all(1 << 20)
        await asyncio.wait_for(probe, 10)
        assert transport.stats.state == "zerocopy"
        futs = [transport.write_zc(random.randbytes(512 << 10)) for _ in range(8)]
        await pair.read_all(5 << 20)
        done = await asyncio.wait_for(asyncio.gather(*futs), 10)
        stats = transport.stats
        assert stats.peak_pinned_bytes <= (1 << 20) + (512 << 10)  # the cap, plus one send
        assert not all(c.zerocopy for c in done) and stats.copy_sends > 0
        assert transport.get_write_buffer_size() == 0 and stats.pinned_bytes == 0
    finally:
        pair.close()


async def test_pause_resume_writing_strictly_alternate() -> None:
    pair = await connect_pair()
    try:
        transport = pair.transport
        transport.set_write_buffer_limits(high=64 << 10)
        payload = random.randbytes(200 << 10)
        expected = b""
        for _ in range(30):
            transport.write(bytearray(payload))
            transport.write_zc(payload)
            expected += payload * 2
            await asyncio.sleep(0)
        await pair.read_all(len(expected))
        await asyncio.sleep(0.05)
        events = [e for e in pair.protocol.events if e in ("pause", "resume")]
        assert events and events == ["pause", "resume"] * (len(events) // 2)
        assert sha(pair.received) == sha(expected)
    finally:
        pair.close()


async def test_close_reports_lost_once_flushed_and_keeps_the_fd_for_completions() -> None:
    # On loopback the kernel reports a zero-copy send only once the receiver consumed it; a
    # stock close() does not wait for the peer to read, so connection_lost must not either.
    pair = await connect_pair()
    try:
        buf = bytearray(random.randbytes(1 << 20))
        fut = pair.transport.write_zc(buf)
        assert pair.transport.stats.zc_sends >= 1 and not pair.transport._queue
        pair.transport.close()
        assert await asyncio.wait_for(pair.protocol.lost, 5) is None
        assert not fut.done()
        assert pair.transport.get_extra_info("socket").fileno() != -1  # kept for the kernel
        with pytest.raises(BufferError):
            buf.append(0)  # still held: the kernel has its pages
        data = await pair.read_until_eof()
        assert (await asyncio.wait_for(fut, 10)).nbytes == len(buf)
        assert data == buf
        assert pair.transport._sock is None  # closed once the kernel released buf
        assert pair.protocol.events == ["made", "lost"]
    finally:
        pair.peer.close()


async def test_close_deadline_releases_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    pair = await connect_pair(close_timeout=0.2)
    try:
        fut = pair.transport.write_zc(random.randbytes(1 << 20))
        pair.transport.close()
        await asyncio.wait_for(pair.protocol.lost, 5)
        with pytest.raises(TimeoutError):
            await fut
        assert "never reported complete" in caplog.text
    finally:
        pair.peer.close()


async def test_abort_fails_pending_futures() -> None:
    pair = await connect_pair()
    try:
        futs = [pair.transport.write_zc(random.randbytes(4 << 20)) for _ in range(4)]
        pair.transport.abort()
        results = await asyncio.wait_for(asyncio.gather(*futs, return_exceptions=True), 5)
        assert all(isinstance(r, ConnectionAbortedError) for r in results)
        assert await pair.protocol.lost is None  # as asyncio's abort()
        assert pair.transport.stats.pinned_bytes == 0
    finally:
        pair.peer.close()


async def test_peer_reset_mid_stream_resolves_every_future() -> None:
    pair = await connect_pair()
    try:
        buf = random.randbytes(1 << 20)
        futs = [pair.transport.write_zc(buf) for _ in range(32)]
        await pair.read_all(3 << 20)
        pair.peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        pair.peer.close()
        results = await asyncio.wait_for(asyncio.gather(*futs, return_exceptions=True), 10)
        failed = [r for r in results if isinstance(r, BaseException)]
        assert failed and all(isinstance(r, (ConnectionResetError, BrokenPipeError)) for r in failed)
        assert all(isinstance(r, (aiozc.Completion, ConnectionError)) for r in results)
        lost = await asyncio.wait_for(pair.protocol.lost, 5)
        assert isinstance(lost, (ConnectionResetError, BrokenPipeError))
    finally:
        pair.transport.abort()


async def test_bad_inputs() -> None:
    pair = await connect_pair()
    try:
        transport = pair.transport
        with pytest.raises(ValueError, match="C-contiguous"):
            transport.write_zc(np.zeros((64, 64), dtype=np.uint8)[:, ::2])
        with pytest.raises(TypeError):
            transport.write_zc("text")
        with pytest.raises(TypeError):
            transport.write("text")  # type: ignore[arg-type]
        empty = transport.write_zc(b"")
        assert empty.done() and empty.result() == aiozc.Completion(0, False)
        with pytest.raises(ValueError, match="server_hostname is only meaningful with ssl"):
            await aiozc.create_connection(RecordingProtocol, "127.0.0.1", 1, server_hostname="x")
        with pytest.raises(TypeError, match="no_such_option"):
            await aiozc.create_connection(RecordingProtocol, "127.0.0.1", 1, no_such_option=1)
        transport.close()
        with pytest.raises(aiozc.TransportClosedError):
            transport.write_zc(b"x" * 100)
    finally:
        pair.close()


async def test_multidimensional_and_typed_buffers_are_sent_as_bytes() -> None:
    pair = await connect_pair()
    try:
        arr = np.arange(1 << 18, dtype=np.float64).reshape(512, 512)
        view2d = memoryview(bytearray(arr.tobytes())).cast("B", (1024, 2048))
        f1 = pair.transport.write_zc(arr)
        pair.transport.write(view2d)
        data = await pair.read_all(arr.nbytes * 2)
        assert (await f1).nbytes == arr.nbytes
        assert data == arr.tobytes() * 2
    finally:
        pair.close()


async def test_pause_reading_keeps_completions_flowing() -> None:
    pair = await connect_pair()
    try:
        pair.transport.pause_reading()
        assert not pair.transport.is_reading()
        await asyncio.get_running_loop().sock_sendall(pair.peer, b"unread" * 1000)
        futs = [pair.transport.write_zc(random.randbytes(1 << 20)) for _ in range(8)]
        await pair.read_all(8 << 20)
        done = await asyncio.wait_for(asyncio.gather(*futs), 10)
        assert all(c.nbytes == 1 << 20 for c in done)
        assert pair.protocol.received == b""
        pair.transport.resume_reading()
        for _ in range(100):
            if len(pair.protocol.received) == 6000:
                break
            await asyncio.sleep(0.01)
        assert pair.protocol.received == b"unread" * 1000
    finally:
        pair.close()


async def test_reader_survives_error_queue_events() -> None:
    """uvloop closes an add_reader handle on POLLERR; ours must keep reading after many."""
    pair = await connect_pair()
    try:
        loop = asyncio.get_running_loop()
        for i in range(20):
            fut = pair.transport.write_zc(random.randbytes(64 << 10))
            await pair.read_all(len(pair.received) + (64 << 10))
            await asyncio.wait_for(fut, 5)
            msg = f"ping{i}".encode()
            await loop.sock_sendall(pair.peer, msg)
            for _ in range(200):
                if pair.protocol.received.endswith(msg):
                    break
                await asyncio.sleep(0.005)
            assert pair.protocol.received.endswith(msg)
        assert pair.transport.stats.notifications >= 1
    finally:
        pair.close()


async def test_idle_costs_no_cpu() -> None:
    pair = await connect_pair()
    try:
        fut = pair.transport.write_zc(random.randbytes(1 << 20))
        await pair.read_all(1 << 20)
        await asyncio.wait_for(fut, 5)
        mux = Multiplexer.for_loop(asyncio.get_running_loop())
        before = mux.dispatches
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        await asyncio.sleep(0.5)
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        assert mux.dispatches - before <= 2
        cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
        assert cpu < 0.1, f"{cpu:.3f}s of CPU while idle"
    finally:
        pair.close()


class _BufferedRecorder(asyncio.BufferedProtocol):
    def __init__(self) -> None:
        self.buf = bytearray(1 << 16)
        self.received = bytearray()
        self.lost = asyncio.get_running_loop().create_future()
        self.got_eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        pass

    def get_buffer(self, sizehint: int) -> memoryview:
        return memoryview(self.buf)

    def buffer_updated(self, nbytes: int) -> None:
        self.received += self.buf[:nbytes]

    def eof_received(self) -> bool:
        self.got_eof = True
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost.set_result(exc)


async def test_buffered_protocol_eof_and_extra_info() -> None:
    pair = await connect_pair(_BufferedRecorder)
    transport = pair.transport
    try:
        assert transport.get_extra_info("socket").fileno() >= 0
        assert transport.get_extra_info("peername") == pair.peer.getsockname()
        assert transport.get_extra_info("sockname") == pair.peer.getpeername()
        assert transport.get_extra_info("aiozc_stats") is transport.stats
        payload = random.randbytes(1 << 20)
        await asyncio.get_running_loop().sock_sendall(pair.peer, payload)
        pair.peer.shutdown(socket.SHUT_WR)
        assert await asyncio.wait_for(pair.protocol.lost, 10) is None
        assert pair.protocol.got_eof and pair.protocol.received == payload  # type: ignore[attr-defined]
    finally:
        pair.peer.close()


async def test_write_eof_after_queued_data() -> None:
    pair = await connect_pair()
    try:
        assert pair.transport.can_write_eof()
        payload = random.randbytes(8 << 20)
        fut = pair.transport.write_zc(payload)
        pair.transport.write_eof()
        with pytest.raises(RuntimeError):
            pair.transport.write(b"late")
        assert await pair.read_until_eof() == payload
        await asyncio.wait_for(fut, 5)
    finally:
        pair.close()


async def test_enobufs_resends_by_copy_then_disables(monkeypatch: pytest.MonkeyPatch) -> None:
    """Simulated ENOBUFS (real injection lives in the UDP sink tests)."""
    from aiozc.engines.msg_zerocopy import MsgZeroCopyEngine

    real_send = MsgZeroCopyEngine.send

    def send(self, sock, data, *, zerocopy, address=None):  # type: ignore[no-untyped-def]
        if zerocopy:
            raise OSError(errno.ENOBUFS, "No buffer space available")
        return real_send(self, sock, data, zerocopy=zerocopy, address=address)

    monkeypatch.setattr(MsgZeroCopyEngine, "send", send)
    pair = await connect_pair()
    try:
        buf = random.randbytes(1 << 20)
        fut = pair.transport.write_zc(buf)
        assert await pair.read_all(len(buf)) == buf
        completion = await asyncio.wait_for(fut, 5)
        assert completion.zerocopy is False
        stats = pair.transport.stats
        assert stats.enobufs == 1 and stats.state == "disabled"
        assert "RLIMIT_MEMLOCK" in stats.reason
    finally:
        pair.close()


async def test_unix_socket_is_copy_only_and_never_reads_errqueue() -> None:
    a, b = socket.socketpair()
    b.setblocking(False)
    try:
        transport, protocol = await aiozc.create_connection(RecordingProtocol, sock=a)
        assert transport.stats.state == "disabled"
        assert "family" in transport.stats.reason
        payload = random.randbytes(1 << 20)
        fut = transport.write_zc(payload)
        loop = asyncio.get_running_loop()
        got = bytearray()
        while len(got) < len(payload):
            got += await loop.sock_recv(b, 1 << 20)
        assert bytes(got) == payload and (await fut).zerocopy is False
        assert transport.stats.errqueue_reads == 0
        transport.close()
    finally:
        b.close()


async def test_server_is_an_abstract_server() -> None:
    async def handle(reader: asyncio.StreamReader, writer: aiozc.ZeroCopyStreamWriter) -> None:
        writer.write(await reader.readexactly(5))
        await writer.drain()
        writer.close()

    server = await aiozc.start_server(handle, "127.0.0.1", 0, start_serving=False, reuse_port=True)
    assert isinstance(server, asyncio.AbstractServer)
    assert not server.is_serving()
    serve = asyncio.ensure_future(server.serve_forever())
    await asyncio.sleep(0)
    assert server.is_serving()
    reader, writer = await aiozc.open_connection(*server.sockets[0].getsockname())
    writer.write(b"hello")
    assert await reader.readexactly(5) == b"hello"
    writer.close()
    await writer.wait_closed()
    serve.cancel()
    with pytest.raises(asyncio.CancelledError):
        await serve
    assert not server.is_serving() and server.sockets == ()
    await asyncio.wait_for(server.wait_closed(), 5)


async def test_hangup_while_reading_paused_does_not_spin() -> None:
    pair = await connect_pair()
    try:
        transport = pair.transport
        transport.pause_reading()
        pair.peer.shutdown(socket.SHUT_WR)
        transport.write_eof()  # both directions shut: the socket reports EPOLLHUP from now on
        await asyncio.sleep(0.05)
        mux = Multiplexer.for_loop(asyncio.get_running_loop())
        before = mux.dispatches
        await asyncio.sleep(0.3)
        assert mux.dispatches - before <= 2, "EPOLLHUP spun the loop while reading was paused"
        transport.resume_reading()
        await asyncio.wait_for(pair.protocol.eof.wait(), 5)
    finally:
        pair.close()


async def test_dropped_transport_keeps_pinned_buffer_alive() -> None:
    import gc
    import weakref

    pair = await connect_pair()
    buf = bytearray(random.randbytes(2 << 20))
    fut = pair.transport.write_zc(buf)
    assert pair.transport.stats.zc_sends >= 1
    transport_ref = weakref.ref(pair.transport)
    pair.transport = None  # type: ignore[assignment]
    pair.protocol.transport = None
    gc.collect()
    assert transport_ref() is not None  # still registered: the kernel may hold buf's pages
    with pytest.raises(BufferError):
        buf.append(0)
    assert await pair.read_all(len(buf)) == buf
    await asyncio.wait_for(fut, 5)
    buf.append(0)
    transport_ref().abort()  # type: ignore[union-attr]
    pair.peer.close()


async def test_small_tail_of_a_partial_send_stays_zerocopy(monkeypatch: pytest.MonkeyPatch) -> None:
    """The threshold is per write: a 1000-byte tail left by a partial send is not copied."""
    from aiozc.engines.msg_zerocopy import MsgZeroCopyEngine

    _fake_uncopied(monkeypatch)
    real_send = MsgZeroCopyEngine.send
    calls: list[tuple[int, bool]] = []

    def send(self, sock, data, *, zerocopy, address=None):  # type: ignore[no-untyped-def]
        if not calls:
            data = data[: len(data) - 1000]  # the kernel took all but 1000 bytes
        calls.append((len(data), zerocopy))
        return real_send(self, sock, data, zerocopy=zerocopy, address=address)

    monkeypatch.setattr(MsgZeroCopyEngine, "send", send)
    pair = await connect_pair()
    try:
        buf = random.randbytes(1 << 20)
        fut = pair.transport.write_zc(buf)
        assert await pair.read_all(len(buf)) == buf
        completion = await asyncio.wait_for(fut, 5)
        assert calls[:2] == [((1 << 20) - 1000, True), (1000, True)]
        assert completion.zerocopy and completion.zc_sends == 2
    finally:
        pair.close()


async def test_write_holds_views_of_bytes_and_copies_mutable_views() -> None:
    pair = await connect_pair()
    try:
        pair.transport.pause_reading()
        big = random.randbytes(8 << 20)  # more than the socket takes at once: the rest waits
        view_of_bytes = memoryview(big)[1:]
        pair.transport.write(view_of_bytes)
        held = [seg for seg in pair.transport._queue if seg.held]
        assert held and held[0].data.obj is big  # held by reference, not copied
        mutable = bytearray(random.randbytes(1 << 20))
        pair.transport.write(memoryview(mutable))
        expected = view_of_bytes.tobytes() + bytes(mutable)
        mutable[:] = bytes(len(mutable))  # asyncio's contract: the transport copied it
        assert await pair.read_all(len(expected)) == expected
    finally:
        pair.close()


async def test_direct_writes_still_reprobe_and_count_every_byte(monkeypatch: pytest.MonkeyPatch) -> None:
    """write() skips the policy per write once it falls back to copies (the direct path); the
    re-probe still comes every reprobe_bytes, and every byte is counted once."""
    pair = await connect_pair(fallback_after=1, reprobe_bytes=1 << 20)
    queued = 0
    real = type(pair.transport)._write_queued

    def write_queued(self, data):  # type: ignore[no-untyped-def]
        nonlocal queued
        queued += 1
        return real(self, data)

    monkeypatch.setattr(type(pair.transport), "_write_queued", write_queued)
    try:
        chunks = [random.randbytes(64 << 10) for _ in range(4)]
        total = 0
        for i in range(160):  # 10 MiB: fallback, then one probe every MiB
            pair.transport.write(chunks[i % 4])
            total += 64 << 10
            await pair.read_all(total)
            await asyncio.sleep(0)  # sock_recv found data without a loop iteration: poll once
        stats = pair.transport.stats
        assert stats.state == "copy-fallback", stats
        assert 4 <= stats.zc_sends <= 12, stats
        assert stats.copy_bytes + stats.zc_bytes == total
        assert bytes(pair.received) == b"".join(chunks[i % 4] for i in range(160))
        assert queued < 40, queued  # most writes went direct: no per-write policy call
    finally:
        pair.close()


async def test_direct_write_zc_resolves_at_once_and_partial_ones_wait() -> None:
    pair = await connect_pair(fallback_after=1)
    try:
        buf = random.randbytes(64 << 10)
        for _ in range(8):  # into copy-fallback
            fut = pair.transport.write_zc(buf)
            await pair.read_all(len(pair.received) + len(buf))
            await asyncio.wait_for(fut, 10)
        assert pair.transport.stats.state == "copy-fallback"
        small = pair.transport.write_zc(bytearray(b"x" * 100))
        assert small.done() and small.result().nbytes == 100 and not small.result().zerocopy
        pair.transport.pause_reading()
        big = bytearray(random.randbytes(16 << 20))  # more than the socket takes at once
        fut = pair.transport.write_zc(big)
        assert not fut.done() and pair.transport._queue[0].held  # the caller's buffer, held
        expected = bytes(pair.received) + b"x" * 100 + bytes(big)
        await pair.read_all(len(expected))
        assert (await asyncio.wait_for(fut, 10)).nbytes == len(big)
        assert bytes(pair.received) == expected
    finally:
        pair.close()
