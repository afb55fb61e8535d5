"""The UDP transport on the netns rig: true zero-copy into the ifb sink, real ENOBUFS, TCP over veth.

Sender code runs in a fresh interpreter inside the namespace (``ns.call``: functions of this module
imported by reference there), on asyncio's loop or uvloop, and returns JSON. Datagrams are counted
by the sink's own counter: ifb0 counts every datagram it is handed in ``rx_packets`` (and drops it),
so "no datagram lost from the caller's view" means rx_packets grew by exactly the datagrams sent.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import socket
from typing import Any

import pytest

from aiozc.tools.benchkit import run_on
from aiozc.tools.netns import OPTMEM_NO_ZEROCOPY, SinkNamespace, VethPair, sink_rx_packets

LOOPS = ["asyncio", "uvloop"]
DATAGRAM = 64000
TCP_PORT = 5001


# ------------------------------------------------------------------------------------------
# Run inside the namespace (fresh interpreter).


async def _send_datagrams(
    dst: str, count: int, size: int, window: int, extra_sends: int, phases: list[str],
    coalesce_zc: bool = False, engine: str = "auto",
) -> dict[str, Any]:
    import subprocess

    from aiozc.datagram import create_datagram_endpoint
    from udp_helpers import ErrorRecorder

    rx_before = sink_rx_packets()
    transport, proto = await create_datagram_endpoint(
        ErrorRecorder, remote_addr=(dst, 9), coalesce_zc=coalesce_zc, engine=engine
    )
    buf = bytearray(b"z" * size)  # one buffer, sent again and again
    completions: list[Any] = []
    unresolved = 0
    phase_rx: list[int] = []
    for phase in phases:
        if phase != "-":
            subprocess.run(phase.split(), check=True)  # e.g. a tc command, inside the namespace
        rx_phase = sink_rx_packets()
        pending: list[asyncio.Future[Any]] = []
        for _ in range(count):
            pending.append(transport.sendto_zc(buf))
            if window and len(pending) >= window:
                completions += await asyncio.wait_for(asyncio.gather(*pending), 10)
                pending = []
        done, not_done = await asyncio.wait(pending, timeout=10) if pending else (set(), set())
        unresolved += len(not_done)
        completions += [f.result() for f in pending if f in done]
        phase_rx.append(sink_rx_packets() - rx_phase)
    for _ in range(extra_sends):
        transport.sendto(bytes(size))  # exact bytes: may go zero-copy, held by reference
    tracker = transport._tracker
    outstanding = tracker.outstanding_ids
    lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    transport.get_protocol().connection_lost = lambda exc: lost.set_result(None)  # type: ignore[method-assign]
    transport.close()  # waits for the last notifications
    await asyncio.wait_for(lost, 10)
    stats = transport.stats.as_dict()
    in_step = {"unexpected_ids": tracker.unexpected_ids, "outstanding_ids": outstanding}
    return {
        "resolved": len(completions),
        "unresolved": unresolved,
        "zerocopy": sum(c.zerocopy for c in completions),
        "nbytes": sorted({c.nbytes for c in completions}),
        "rx_packets": sink_rx_packets() - rx_before,
        "phase_rx": phase_rx,
        "errors": [e.errno or 0 for e in proto.errors],
        "stats": stats,
        **in_step,
    }


def send_datagrams(
    dst: str, loop: str, count: int, size: int = DATAGRAM, window: int = 64, extra_sends: int = 0,
    phases: list[str] | None = None, coalesce_zc: bool = False, engine: str = "auto",
) -> dict[str, Any]:
    """``count`` sendto_zc of one buffer (per phase), up to ``window`` futures outstanding
    (0: all at once), then ``extra_sends`` sendto(bytes); counters and stats as JSON."""
    return run_on(
        loop, _send_datagrams(dst, count, size, window, extra_sends, phases or ["-"], coalesce_zc, engine)
    )


async def _pinned_flow_control(dst: str) -> dict[str, Any]:
    from aiozc.datagram import create_datagram_endpoint

    events: list[str] = []

    class Proto(asyncio.DatagramProtocol):
        def pause_writing(self) -> None:
            events.append("pause")

        def resume_writing(self) -> None:
            events.append("resume")

    transport, _ = await create_datagram_endpoint(Proto, remote_addr=(dst, 9))
    transport.set_write_buffer_limits(high=4 * DATAGRAM, low=DATAGRAM)
    futures = [transport.sendto_zc(bytearray(DATAGRAM)) for _ in range(8)]
    size_while_pinned = transport.get_write_buffer_size()
    await asyncio.wait_for(asyncio.gather(*futures), 10)
    size_after = transport.get_write_buffer_size()
    transport.close()
    return {"events": events, "pinned": size_while_pinned, "after": size_after}


def pinned_flow_control(dst: str, loop: str) -> dict[str, Any]:
    """Zero-copy datagrams in flight count as buffered: pause_writing above the high-water
    mark, resume_writing once the kernel released them."""
    return run_on(loop, _pinned_flow_control(dst))


async def _exports_held_until_resolved(dst: str) -> dict[str, Any]:
    """Each sendto_zc() buffer stays exported (not resizable, not releasable) until its own
    future resolves, and not one datagram longer; sendto(bytes) keeps no reference after its
    completion; abort() ends the exports of what is still pending."""
    import sys

    import numpy as np

    from aiozc.datagram import create_datagram_endpoint
    from udp_helpers import buffer_locked

    transport, _ = await create_datagram_endpoint(asyncio.DatagramProtocol, remote_addr=(dst, 9))
    bufs = [bytearray(DATAGRAM) for _ in range(300)]
    views = [memoryview(bytearray(DATAGRAM)) for _ in range(300)]
    arrays = [np.zeros(DATAGRAM // 8, dtype=np.int64) for _ in range(300)]
    array_refs_before = sorted({sys.getrefcount(a) for a in arrays})
    futures = [transport.sendto_zc(b) for b in bufs]
    # The drain every 64 sends resolved most of them already: locked exactly while pending.
    pending_now = sum(not f.done() for f in futures)
    mismatched = sum(buffer_locked(b) == f.done() for f, b in zip(futures, bufs))
    futures += [transport.sendto_zc(v) for v in views]
    futures += [transport.sendto_zc(a) for a in arrays]
    # Each buffer, awaited one by one: free the moment its own future is done.
    freed_at_resolution = 0
    for future, buf in zip(futures, bufs):
        await asyncio.wait_for(future, 10)
        freed_at_resolution += not buffer_locked(buf)
    for future, view in zip(futures[300:600], views):
        await asyncio.wait_for(future, 10)
        view.release()  # BufferError while an export is held
    await asyncio.wait_for(asyncio.gather(*futures), 10)
    array_refs = [array_refs_before, sorted({sys.getrefcount(a) for a in arrays})]
    held = bytes(DATAGRAM)
    refs_before = sys.getrefcount(held)
    for _ in range(200):
        transport.sendto(held)  # exact bytes: zero-copy, its reference held by the C side
    refs_sending = sys.getrefcount(held)
    await asyncio.sleep(0.05)
    transport._drain_errqueue()
    refs_after = sys.getrefcount(held)
    stats = transport.stats.as_dict()
    transport.abort()
    # abort() with datagrams pending: their exports end with the failed futures.
    transport2, _ = await create_datagram_endpoint(asyncio.DatagramProtocol, remote_addr=(dst, 9))
    pending_bufs = [bytearray(DATAGRAM) for _ in range(50)]
    pending = [transport2.sendto_zc(b) for b in pending_bufs]
    transport2.abort()
    failed = sum(isinstance(e, ConnectionAbortedError)
                 for e in await asyncio.gather(*pending, return_exceptions=True))
    return {
        "pending_now": pending_now,
        "mismatched": mismatched,
        "freed_at_resolution": freed_at_resolution,
        "array_refs": array_refs,
        "refs": [refs_before, refs_sending, refs_after],
        "after_abort_locked": sum(map(buffer_locked, pending_bufs)),
        "failed": failed,
        "state": stats["state"],
        "core": stats.get("core"),
        "zc_sends": stats["zc_sends"],
    }


def exports_held_until_resolved(dst: str, loop: str) -> dict[str, Any]:
    return run_on(loop, _exports_held_until_resolved(dst))


async def _cancelled_futures(dst: str, coalesce_zc: bool) -> dict[str, Any]:
    """Every third sendto_zc() future cancelled at once: the others still resolve, and once
    they have, nothing of any of them is held (the compiled path holds futures and exports in
    C, coalesce_zc's fan-out sets results in C)."""
    from aiozc.datagram import create_datagram_endpoint

    transport, _ = await create_datagram_endpoint(
        asyncio.DatagramProtocol, remote_addr=(dst, 9), coalesce_zc=coalesce_zc
    )
    bufs = [bytearray(b"c" * 64000) for _ in range(8)]
    futures, kept = [], []
    for k in range(600):
        future = transport.sendto_zc(bufs[k % 8])
        # (cancel() is False for a future resolved during its own call: a drain found it)
        if k % 3 or not future.cancel():
            kept.append(future)
        futures.append(future)
    done = await asyncio.wait_for(asyncio.gather(*kept), 10)
    await asyncio.sleep(0.05)
    transport._drain_errqueue()  # the cancelled ones' notifications, if any came later
    d = transport._hot_d
    resizable = 0
    for buf in bufs:
        try:
            buf.append(0)
            resizable += 1
        except BufferError:
            pass
    result = {
        "zerocopy": sum(c.zerocopy for c in done), "kept": len(kept),
        "cancelled": sum(f.cancelled() for f in futures),
        # the compiled tracker keeps tokens in a dict of its own; the pure one in its handles
        "tokens": len(_tokens_of(transport._tracker)),
        "held": None if d is None else int(d.nheld),
        "pending": transport._tracker.pending_writes, "resizable": resizable,
        "state": transport.stats.state,
    }
    transport.close()
    return result


def _tokens_of(tracker: Any) -> Any:
    return tracker._tokens if hasattr(tracker, "_tokens") else tracker._pending


def cancelled_futures(dst: str, loop: str, coalesce_zc: bool) -> dict[str, Any]:
    return run_on(loop, _cancelled_futures(dst, coalesce_zc))


async def _full_socket_mix(dst: str, engine: str) -> dict[str, Any]:
    """A send buffer too small for two datagrams: sends hit EAGAIN, datagrams queue and leave
    through the general path, the compiled path takes over again; the error-queue drain then
    resolves writes of both paths together."""
    import socket
    import subprocess

    from aiozc.datagram import create_datagram_endpoint

    # A shaping qdisc holds datagrams (and the socket's send-buffer charge) for a while.
    tbf = "tc qdisc replace dev ifb0 root tbf rate 3gbit burst 1m limit 8m".split()
    subprocess.run(tbf, check=True)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # the kernel's minimum, ~4.5 KiB
    sock.connect((dst, 9))
    transport, _ = await create_datagram_endpoint(asyncio.DatagramProtocol, sock=sock, engine=engine)
    bufs = [bytearray(DATAGRAM) for _ in range(64)]
    futures, queued_peak = [], 0
    try:
        for i in range(3000):
            futures.append(transport.sendto_zc(bufs[i % 64]))
            queued_peak = max(queued_peak, len(transport._queue))
            if i % 256 == 255:
                await asyncio.sleep(0)  # EPOLLOUT: the queue leaves through the general path
        done = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), 20)
    finally:
        subprocess.run("tc qdisc del dev ifb0 root".split(), check=True)
    stats = transport.stats.as_dict()
    transport.close()
    return {
        "errors": sorted({type(c).__name__ for c in done if isinstance(c, BaseException)}),
        "zerocopy": sum(getattr(c, "zerocopy", False) for c in done),
        "queued_peak": queued_peak,
        "state": stats["state"],
        "zc_sends": stats["zc_sends"],
        "stats": stats,
    }


def full_socket_mix(dst: str, loop: str, engine: str) -> dict[str, Any]:
    return run_on(loop, _full_socket_mix(dst, engine))


async def _tcp_server(host: str, port: int, expect: int) -> dict[str, Any]:
    import hashlib

    import aiozc

    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    digest = hashlib.sha256()
    got = 0

    class Sink(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            nonlocal got
            digest.update(data)
            got += len(data)

        def eof_received(self) -> bool:
            return False

        def connection_lost(self, exc: BaseException | None) -> None:
            if not done.done():
                done.set_result(None)

    server = await aiozc.create_server(Sink, host, port)
    try:
        await asyncio.wait_for(done, 60)
    finally:
        server.close()
    return {"bytes": got, "sha256": digest.hexdigest(), "expect": expect}


def tcp_server(host: str, port: int, loop: str, expect: int) -> dict[str, Any]:
    return run_on(loop, _tcp_server(host, port, expect))


async def _tcp_client(host: str, port: int, chunks: int, chunk_size: int) -> dict[str, Any]:
    import hashlib

    import aiozc

    for _ in range(200):  # the server process may still be starting
        try:
            transport, protocol = await aiozc.create_connection(asyncio.Protocol, host, port)
            break
        except ConnectionRefusedError:
            await asyncio.sleep(0.05)
    else:
        raise ConnectionRefusedError(f"no server at {host}:{port}")
    digest = hashlib.sha256()
    futures = []
    for i in range(chunks):
        chunk = bytes([i % 251]) * chunk_size
        digest.update(chunk)
        futures.append(transport.write_zc(chunk))
    completions = await asyncio.wait_for(asyncio.gather(*futures), 60)
    stats = transport.get_extra_info("aiozc_stats").as_dict()
    transport.close()
    await asyncio.sleep(0.1)
    return {
        "sha256": digest.hexdigest(),
        "zerocopy": sum(c.zerocopy for c in completions),
        "stats": stats,
    }


def tcp_client(host: str, port: int, loop: str, chunks: int, chunk_size: int) -> dict[str, Any]:
    return run_on(loop, _tcp_client(host, port, chunks, chunk_size))


# ------------------------------------------------------------------------------------------


def quiet(ns: SinkNamespace) -> SinkNamespace:
    """Stop IPv6 on ifb0: its router solicitations and MLD reports (seen ~0 s and ~4 s after
    link-up) would add packets to the counter the tests compare with the datagrams sent."""
    ns.set_sysctl("net.ipv6.conf.ifb0.disable_ipv6", 1)
    return ns


@pytest.mark.parametrize("loop", LOOPS)
def test_sendto_zc_into_sink_is_zerocopy(sink_ns: SinkNamespace, loop: str) -> None:
    quiet(sink_ns)
    res = sink_ns.call(send_datagrams, sink_ns.sink_addr, loop, 2000, extra_sends=200)
    stats = res["stats"]
    assert res["resolved"] == 2000 and res["unresolved"] == 0
    assert res["zerocopy"] == 2000 and res["nbytes"] == [DATAGRAM]
    assert stats["state"] == "zerocopy", stats["reason"]
    # sendto(bytes) above the threshold went zero-copy as well: one id per datagram.
    assert stats["zc_sends"] == 2200 and stats["copy_sends"] == 0
    assert stats["ids_zerocopy"] == 2200 and stats["ids_copied"] == 0
    assert res["rx_packets"] == 2200
    assert res["errors"] == [] and res["unexpected_ids"] == 0


@pytest.mark.parametrize("loop", LOOPS)
def test_same_buffer_10k_times_resolves_10k_futures(sink_ns: SinkNamespace, loop: str) -> None:
    quiet(sink_ns)
    res = sink_ns.call(send_datagrams, sink_ns.sink_addr, loop, 10_000, window=0)
    assert res["resolved"] == 10_000 and res["unresolved"] == 0
    assert res["zerocopy"] == 10_000
    assert res["rx_packets"] == 10_000
    assert res["stats"]["state"] == "zerocopy"
    assert res["stats"]["pinned_bytes"] == 0 and res["unexpected_ids"] == 0


@pytest.mark.parametrize("loop", LOOPS)
def test_enobufs_with_outstanding_ids_resends_by_copy_and_stays_zerocopy(
    enobufs_sink: SinkNamespace, loop: str
) -> None:
    """optmem_max 1024: one undrained notification exhausts option memory, so sends alternate
    between zero-copy and ENOBUFS -> resent by copy. Nothing is lost, everything resolves."""
    quiet(enobufs_sink)
    res = enobufs_sink.call(send_datagrams, enobufs_sink.sink_addr, loop, 2000, engine="msg_zerocopy")
    stats = res["stats"]
    assert res["resolved"] == 2000 and res["unresolved"] == 0
    assert res["rx_packets"] == 2000  # every datagram left exactly once
    assert stats["enobufs"] > 0
    assert stats["copy_sends"] == stats["enobufs"]
    assert stats["zc_sends"] + stats["copy_sends"] == 2000
    assert 0 < res["zerocopy"] == stats["zc_sends"] < 2000
    assert stats["state"] == "zerocopy", stats["reason"]
    assert res["errors"] == [] and res["unexpected_ids"] == 0
    assert stats["extra"].get("local_drops", 0) == 0


@pytest.mark.parametrize("loop", LOOPS)
def test_enobufs_with_nothing_outstanding_disables_zerocopy(
    sink_ns: SinkNamespace, loop: str
) -> None:
    quiet(sink_ns)
    sink_ns.set_sysctl("net.core.optmem_max", OPTMEM_NO_ZEROCOPY)
    res = sink_ns.call(send_datagrams, sink_ns.sink_addr, loop, 300, engine="msg_zerocopy")
    stats = res["stats"]
    assert res["resolved"] == 300 and res["rx_packets"] == 300
    assert res["zerocopy"] == 0
    assert stats["state"] == "disabled"
    assert "ENOBUFS" in stats["reason"]
    assert stats["enobufs"] == 1  # disabled at once: no further zero-copy attempt
    assert stats["copy_sends"] == 300 and stats["zc_sends"] == 0


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("engine", ["msg_zerocopy", "io_uring"])
def test_qdisc_drop_reported_as_enobufs_keeps_ids_in_step(sink_ns: SinkNamespace, loop: str,
                                                          engine: str) -> None:
    """With IP_RECVERR a datagram the qdisc drops comes back as ENOBUFS although its MSG_ZEROCOPY
    id was used. Phase 1: a pfifo of limit 0 drops everything; phase 2: the default qdisc again.
    Had the transport lost count of ids, phase 2's futures would resolve early or never."""
    quiet(sink_ns)
    phases = ["tc qdisc replace dev ifb0 root pfifo limit 0", "tc qdisc del dev ifb0 root"]
    res = sink_ns.call(send_datagrams, sink_ns.sink_addr, loop, 300, phases=phases, engine=engine)
    stats = res["stats"]
    assert stats["engine"] == engine
    assert res["resolved"] == 600 and res["unresolved"] == 0, (res, stats)
    assert res["phase_rx"] == [0, 300]
    assert res["errors"] == [errno.ENOBUFS] * 300  # each drop reported once
    assert stats["extra"]["local_drops"] == 300
    sent = 600 if engine == "msg_zerocopy" else 300  # (as in the coalesced test below)
    assert stats["zc_sends"] == sent and stats["ids_zerocopy"] == sent
    assert res["unexpected_ids"] == 0
    assert stats["state"] == "zerocopy"


@pytest.mark.parametrize("loop", LOOPS)
def test_pinned_datagrams_drive_flow_control(sink_ns: SinkNamespace, loop: str) -> None:
    quiet(sink_ns)
    res = sink_ns.call(pinned_flow_control, sink_ns.sink_addr, loop)
    assert res["pinned"] == 8 * DATAGRAM  # nothing queued: all of it is pinned by the kernel
    assert res["after"] == 0
    assert res["events"] == ["pause", "resume"]


@pytest.mark.parametrize("loop", LOOPS)
def test_buffers_stay_exported_until_their_own_future_resolves(
    sink_ns: SinkNamespace, loop: str
) -> None:
    quiet(sink_ns)
    res = sink_ns.call(exports_held_until_resolved, sink_ns.sink_addr, loop)
    assert res["state"] == "zerocopy" and res["zc_sends"] == 1100, res
    assert res["pending_now"] > 0 and res["mismatched"] == 0, res
    assert res["freed_at_resolution"] == 300
    # No reference kept once resolved (a numpy array goes through a memoryview of it).
    before_refs, after_refs = res["array_refs"]
    assert len(after_refs) == 1 and after_refs == before_refs, res
    before, sending, after = res["refs"]
    assert sending > before and after == before
    assert res["failed"] == 50 and res["after_abort_locked"] == 0


@pytest.mark.parametrize("coalesce_zc", [False, True])
@pytest.mark.parametrize("loop", LOOPS)
def test_cancelled_futures_are_skipped_and_nothing_stays_held(
    sink_ns: SinkNamespace, loop: str, coalesce_zc: bool
) -> None:
    res = sink_ns.call(cancelled_futures, sink_ns.sink_addr, loop, coalesce_zc)
    assert res["state"] == "zerocopy" and res["cancelled"] > 150, res
    assert res["kept"] + res["cancelled"] == 600 and res["zerocopy"] == res["kept"], res
    assert res["pending"] == 0 and res["tokens"] == 0 and res["resizable"] == 8, res
    assert res["held"] in (None, 0), res


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("engine", ["msg_zerocopy", "io_uring"])
def test_full_socket_queues_and_both_paths_resolve_together(sink_ns: SinkNamespace, loop: str,
                                                            engine: str) -> None:
    quiet(sink_ns)
    res = sink_ns.call(full_socket_mix, sink_ns.sink_addr, loop, engine)
    assert res["errors"] == [], res
    assert res["queued_peak"] > 0, res  # the premise: the socket did fill up
    if engine == "msg_zerocopy":
        assert res["zerocopy"] == 3000 and res["zc_sends"] == 3000, res
        return
    # io_uring: a SEND_ZC is accounted (pinned) once filled, and the ones that came back EAGAIN
    # wait in the queue pinned: the rare copy is max_pinned_bytes (64 MiB) refusing to pin more.
    stats = res["stats"]
    copies = stats["copy_sends"]
    assert res["zerocopy"] == res["zc_sends"] == 3000 - copies, stats
    assert copies == 0 or stats["peak_pinned_bytes"] > (64 << 20) - DATAGRAM, stats


@pytest.mark.parametrize("loop", LOOPS)
def test_tcp_over_veth_falls_back_to_copy(veth_pair: VethPair, loop: str) -> None:
    """A non-loopback interface, but the receiver is on this host: the kernel copies every
    zero-copy send, and the transport switches to copy-fallback; the data arrives intact."""
    assert veth_pair.a is not None and veth_pair.b is not None
    chunks, chunk_size = 64, 1 << 20
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        server = pool.submit(
            veth_pair.b.call, tcp_server, veth_pair.b_addr, TCP_PORT, loop, chunks * chunk_size
        )
        client = veth_pair.a.call(tcp_client, veth_pair.b_addr, TCP_PORT, loop, chunks, chunk_size)
        received = server.result(timeout=90)
    stats = client["stats"]
    assert received["bytes"] == chunks * chunk_size
    assert received["sha256"] == client["sha256"]
    assert stats["state"] == "copy-fallback", stats
    assert stats["ids_copied"] > 0 and stats["ids_zerocopy"] == 0
    assert stats["copy_sends"] > 0  # after the fallback, plain sends
    assert client["zerocopy"] == 0


# ------------------------------------------------------------------------------------------
# sendmmsg and sendto_zc_many into the sink.


def raw_sendmmsg_ids(dst: str, count: int, batch: int) -> dict[str, Any]:
    """``count`` datagrams by sendmmsg(MSG_ZEROCOPY) in calls of ``batch``, then one send():
    which ids the kernel reported, and how many datagrams the sink saw."""
    from aiozc._sys import kernel as _kernel
    from aiozc._sys.mmsg import MmsgSender, pin
    from rig import wait_zc_ids
    import socket

    rx_before = sink_rx_packets()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    _kernel.enable_zerocopy(sock)
    _kernel.enable_recverr(sock)
    sock.connect((dst, 9))
    pool = bytearray(b"m" * (count * 1000))
    views = [memoryview(pool)[i * 1000 : (i + 1) * 1000] for i in range(count)]
    pins = [pin(view) for view in views]
    sizes = [len(view) for view in views]
    sender = MmsgSender(batch)
    results = []
    start = 0
    while start < count:
        sent = sender.send(sock.fileno(), pins, sizes, start, min(count, start + batch), _kernel.MSG_ZEROCOPY)
        results.append(sent)
        assert sent > 0, sent
        start += sent
    lens = [sender.sent_len(i) for i in range(min(batch, count))]
    ranges = wait_zc_ids(sock, count)
    sock.send(views[0], _kernel.MSG_ZEROCOPY)  # a plain send takes the next id
    after = wait_zc_ids(sock, 1)
    sock.close()
    return {
        "results": results,
        "lens": sorted(set(lens)),
        "ranges": [[r.lo, r.hi, r.copied] for r in ranges],
        "after": [[r.lo, r.hi] for r in after],
        "rx_packets": sink_rx_packets() - rx_before,
    }


async def _send_batches(
    dst: str, batches: int, batch: int, size: int, phases: list[str], singles: int, sndbuf: int,
    engine: str,
) -> dict[str, Any]:
    import subprocess

    from aiozc.datagram import create_datagram_endpoint
    from udp_helpers import ErrorRecorder

    rx_before = sink_rx_packets()
    transport, proto = await create_datagram_endpoint(ErrorRecorder, remote_addr=(dst, 9), engine=engine)
    if sndbuf:
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, 32, sndbuf)  # SO_SNDBUFFORCE
    pool = bytearray(b"b" * size * batch)
    bufs = [memoryview(pool)[i * size : (i + 1) * size] for i in range(batch)]
    completions: list[Any] = []
    phase_rx: list[int] = []
    for phase in phases:
        if phase != "-":
            subprocess.run(phase.split(), check=True)
        rx_phase = sink_rx_packets()
        for _ in range(batches):
            futures = [transport.sendto_zc_many(bufs)]
            futures += [transport.sendto_zc(bufs[i]) for i in range(singles)]  # interleaved
            completions += await asyncio.wait_for(asyncio.gather(*futures), 10)
        phase_rx.append(sink_rx_packets() - rx_phase)
    tracker = transport._tracker
    lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    transport.get_protocol().connection_lost = lambda exc: lost.set_result(None)  # type: ignore[method-assign]
    transport.close()
    await asyncio.wait_for(lost, 10)
    return {
        "resolved": len(completions),
        "zerocopy": sum(c.zerocopy for c in completions),
        "zc_ids": sum(c.zc_sends - c.copied_sends for c in completions),
        "nbytes": sorted({c.nbytes for c in completions}),
        "rx_packets": sink_rx_packets() - rx_before,
        "phase_rx": phase_rx,
        "errors": [e.errno or 0 for e in proto.errors],
        "stats": transport.stats.as_dict(),
        "unexpected_ids": tracker.unexpected_ids,
        "pending_writes": tracker.pending_writes,
    }


def send_batches(
    dst: str, loop: str, batches: int, batch: int, size: int = DATAGRAM,
    phases: list[str] | None = None, singles: int = 0, sndbuf: int = 0, engine: str = "msg_zerocopy",
) -> dict[str, Any]:
    """``batches`` sendto_zc_many() of ``batch`` datagrams (each followed by ``singles``
    sendto_zc()), per phase, on a socket with ``sndbuf`` (if given); counters and stats as JSON.
    MSG_ZEROCOPY unless ``engine`` says otherwise: these tests are about sendmmsg."""
    return run_on(loop, _send_batches(dst, batches, batch, size, phases or ["-"], singles, sndbuf, engine))


def test_sendmmsg_zerocopy_uses_one_id_per_datagram(sink_ns: SinkNamespace) -> None:
    quiet(sink_ns)
    res = sink_ns.call(raw_sendmmsg_ids, sink_ns.sink_addr, 3000, 1024)
    assert res["results"] == [1024, 1024, 952]  # whole batches: the sink never fills
    assert res["lens"] == [1000]
    covered = sum(((hi - lo) & 0xFFFFFFFF) + 1 for lo, hi, _ in res["ranges"])
    assert covered == 3000
    assert min(lo for lo, _, _ in res["ranges"]) == 0 and max(hi for _, hi, _ in res["ranges"]) == 2999
    assert not any(copied for _, _, copied in res["ranges"])  # true zero-copy
    assert res["after"] == [[3000, 3000]]  # the next send() takes the next id
    assert res["rx_packets"] == 3001


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("engine", ["msg_zerocopy", "auto"])
def test_sendto_zc_many_into_sink_is_zerocopy(sink_ns: SinkNamespace, loop: str, engine: str) -> None:
    quiet(sink_ns)
    res = sink_ns.call(send_batches, sink_ns.sink_addr, loop, 20, 300, singles=3, engine=engine)
    stats = res["stats"]
    assert res["resolved"] == 20 * 4
    assert res["zerocopy"] == 20 * 4 and res["zc_ids"] == 20 * 303
    assert res["nbytes"] == [DATAGRAM, 300 * DATAGRAM]
    assert stats["zc_sends"] == stats["ids_zerocopy"] == 20 * 303 and stats["copy_sends"] == 0
    assert res["rx_packets"] == 20 * 303
    assert res["errors"] == [] and res["unexpected_ids"] == 0 and res["pending_writes"] == 0
    # One tracker write per batch, notifications merged: few error-queue reads.
    assert stats["errqueue_reads"] / stats["zc_sends"] <= 0.05


@pytest.mark.parametrize("loop", LOOPS)
def test_sendto_zc_many_enobufs_resends_by_copy(enobufs_sink: SinkNamespace, loop: str) -> None:
    """optmem_max 1024: one undrained notification fills option memory, so sendmmsg stops
    after the first datagram (errno lost); the transport drains the queue (checking whether the
    id was used) and goes on. Whatever ENOBUFS is seen is resent by copy (two-tier rule)."""
    quiet(enobufs_sink)
    res = enobufs_sink.call(send_batches, enobufs_sink.sink_addr, loop, 10, 200)
    stats = res["stats"]
    assert res["resolved"] == 10 and res["nbytes"] == [200 * DATAGRAM]
    assert res["rx_packets"] == 2000  # every datagram left exactly once
    assert stats["copy_sends"] == stats["enobufs"]
    assert stats["zc_sends"] + stats["copy_sends"] == 2000 and stats["zc_sends"] > 1000
    assert res["zc_ids"] == stats["zc_sends"] == stats["ids_zerocopy"]
    assert stats["state"] == "zerocopy", stats["reason"]
    assert res["errors"] == [] and res["unexpected_ids"] == 0 and res["pending_writes"] == 0


@pytest.mark.parametrize("loop", LOOPS)
def test_sendto_zc_many_qdisc_drop_keeps_ids_in_step(sink_ns: SinkNamespace, loop: str) -> None:
    """A qdisc that drops everything: sendmmsg reports the drop of each datagram as ENOBUFS
    although its id was used (a drop after the first datagram of a call is not even reported:
    the call just returns fewer). Then the default qdisc again: ids must still be in step."""
    quiet(sink_ns)
    phases = ["tc qdisc replace dev ifb0 root pfifo limit 0", "tc qdisc del dev ifb0 root"]
    res = sink_ns.call(send_batches, sink_ns.sink_addr, loop, 3, 100, phases=phases, singles=2)
    stats = res["stats"]
    assert res["resolved"] == 2 * 3 * 3
    assert res["phase_rx"] == [0, 3 * 102]
    assert res["errors"] == [errno.ENOBUFS] * (3 * 102)  # each drop reported once
    assert stats["extra"]["local_drops"] == 3 * 102
    assert stats["zc_sends"] == stats["ids_zerocopy"] == 2 * 3 * 102
    assert res["unexpected_ids"] == 0 and res["pending_writes"] == 0
    assert stats["state"] == "zerocopy"


@pytest.mark.parametrize("loop", LOOPS)
def test_sendto_zc_many_enobufs_with_nothing_outstanding_disables_zerocopy(
    sink_ns: SinkNamespace, loop: str
) -> None:
    quiet(sink_ns)
    sink_ns.set_sysctl("net.core.optmem_max", OPTMEM_NO_ZEROCOPY)
    res = sink_ns.call(send_batches, sink_ns.sink_addr, loop, 3, 100)
    stats = res["stats"]
    assert res["resolved"] == 3 and res["rx_packets"] == 300
    assert res["zerocopy"] == 0 and res["zc_ids"] == 0
    assert stats["state"] == "disabled" and "ENOBUFS" in stats["reason"]
    assert stats["enobufs"] == 1 and stats["copy_sends"] == 300 and stats["zc_sends"] == 0
    assert res["unexpected_ids"] == 0 and res["pending_writes"] == 0


@pytest.mark.parametrize("loop", LOOPS)
def test_sendto_zc_many_drop_inside_a_sendmmsg_call_keeps_ids_in_step(
    sink_ns: SinkNamespace, loop: str
) -> None:
    """A token bucket that passes a few datagrams, then drops (its queue is full; the socket's
    send buffer is large enough not to stop us first): sendmmsg returns fewer than asked
    without an error, although the dropped datagram used an id. The transport finds its
    notification already queued, counts the id and reports the drop; then the default qdisc
    again, with ids still in step."""
    quiet(sink_ns)
    phases = ["tc qdisc replace dev ifb0 root tbf rate 1gbit burst 256kb limit 200kb", "tc qdisc del dev ifb0 root"]
    res = sink_ns.call(send_batches, sink_ns.sink_addr, loop, 5, 100, phases=phases, singles=2, sndbuf=64 << 20)
    stats = res["stats"]
    assert res["resolved"] == 2 * 5 * 3 and res["pending_writes"] == 0
    drops = len(res["errors"])
    assert drops > 0 and set(res["errors"]) == {errno.ENOBUFS}
    assert stats["extra"]["local_drops"] == drops
    assert stats["extra"]["sendmmsg_partial"] > 0
    assert res["phase_rx"][0] + drops == 5 * 102 and res["phase_rx"][1] == 5 * 102
    assert stats["zc_sends"] == stats["ids_zerocopy"] == 2 * 5 * 102
    assert res["unexpected_ids"] == 0 and stats["state"] == "zerocopy"


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("engine", ["msg_zerocopy", "io_uring"])
def test_coalesced_sendto_zc_into_sink(sink_ns: SinkNamespace, loop: str, engine: str) -> None:
    quiet(sink_ns)
    res = sink_ns.call(send_datagrams, sink_ns.sink_addr, loop, 3000, window=256, extra_sends=50,
                       coalesce_zc=True, engine=engine)
    stats = res["stats"]
    assert res["resolved"] == 3000 and res["unresolved"] == 0 and res["zerocopy"] == 3000
    assert stats["zc_sends"] == stats["ids_zerocopy"] == 3050 and stats["copy_sends"] == 0
    assert res["rx_packets"] == 3050
    if engine == "msg_zerocopy" or stats["core"] != "compiled":
        assert stats["zc_writes"] < 100  # one tracker write per flush, not per datagram
    else:  # the compiled per-call ring path (coalescing._co_setup): a write per datagram
        assert stats["zc_writes"] >= 3000
    assert res["errors"] == [] and res["unexpected_ids"] == 0


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("engine", ["msg_zerocopy", "io_uring"])
def test_coalesced_qdisc_drop_keeps_ids_in_step(sink_ns: SinkNamespace, loop: str, engine: str) -> None:
    quiet(sink_ns)
    phases = ["tc qdisc replace dev ifb0 root pfifo limit 0", "tc qdisc del dev ifb0 root"]
    res = sink_ns.call(send_datagrams, sink_ns.sink_addr, loop, 300, phases=phases, coalesce_zc=True,
                       engine=engine)
    stats = res["stats"]
    assert stats["engine"] == engine
    assert res["resolved"] == 600 and res["unresolved"] == 0
    assert res["phase_rx"] == [0, 300]
    assert res["errors"] == [errno.ENOBUFS] * 300
    # MSG_ZEROCOPY: a datagram the qdisc dropped consumed its id; on io_uring a failed
    # SEND_ZC result is not counted as a zero-copy send (uring._datagram_zc_result)
    sent = 600 if engine == "msg_zerocopy" else 300
    assert stats["zc_sends"] == stats["ids_zerocopy"] == sent
    assert res["unexpected_ids"] == 0 and stats["state"] == "zerocopy"
