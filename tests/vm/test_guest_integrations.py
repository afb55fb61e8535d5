"""io_uring SEND_ZC, aiozc.tensors and aiohttp on ZeroCopySite, from inside the guest."""

from __future__ import annotations

import asyncio
import json
import socket
import threading

import numpy as np
import pytest

import aiozc
from aiozc._sys import uring
from aiozc.engines import EngineUnavailable
from guest_helpers import POOL, ask_peer, guest_only, open_peer, peer_address, stream_slice

pytestmark = guest_only

MiB = 1 << 20


def test_report_usage_probe_tells_what_the_kernel_does() -> None:
    """Debian's 6.1.176 guest kernel has SEND_ZC *and* REPORT_USAGE (backported to 6.1 stable;
    so has 6.1.170, the only other one its apt sources carry; measured: the probe says yes, and
    notifications carry IORING_NOTIF_USAGE_ZC_COPIED to the guest's loopback and 0 to the
    namespace). Checked raw, without aiozc's engine."""
    assert uring.probe() is None
    assert uring.report_usage_supported(), (
        "this guest kernel has no REPORT_USAGE: the forced test below is then the real path"
    )
    usage = {label: _raw_notifications(address, report_usage=True) for label, address in _two_routes()}
    assert all(res == uring.IORING_NOTIF_USAGE_ZC_COPIED for res in usage["loopback"]), usage
    assert all(res == 0 for res in usage["namespace"]), usage


async def test_io_uring_engine_sends_tcp_zero_copy_from_the_guest() -> None:
    seed, total = 7, 16 * MiB
    transport, proto = await open_peer(
        {"op": "sink", "expect": {"seed": seed, "pool": POOL, "total": total}}, engine="io_uring"
    )
    first = await transport.write_zc(stream_slice(seed, 0, MiB))  # the probe write
    futures = [transport.write_zc(stream_slice(seed, i * MiB, MiB)) for i in range(1, 16)]
    completions = [first] + list(await asyncio.gather(*futures))
    transport.write_eof()
    reply = await proto.reply
    assert reply["bytes"] == total and reply["sha256"] == reply["expected"]
    stats = transport.stats
    assert stats.engine == "io_uring" and stats.state == "zerocopy", stats
    assert all(c.zerocopy for c in completions) and stats.ids_copied == 0
    transport.close()


async def test_without_report_usage_io_uring_is_refused_and_auto_uses_msg_zerocopy(monkeypatch) -> None:
    """The path a 6.0 / early 6.1 kernel takes (SEND_ZC, no REPORT_USAGE): the probe's answer
    is forced, the rest is real. Forced because no such kernel is reachable here (README, "the
    guest VM rig": bookworm's two kernels both have REPORT_USAGE, snapshot.debian.org and
    archive.debian.org do not answer)."""
    monkeypatch.setattr(uring, "_report_usage_result", [False])
    with pytest.raises(EngineUnavailable, match="REPORT_USAGE"):
        await aiozc.create_connection(asyncio.Protocol, *peer_address(), engine="io_uring")
    seed, total = 9, 8 * MiB
    transport, proto = await open_peer(
        {"op": "sink", "expect": {"seed": seed, "pool": POOL, "total": total}}, engine="auto"
    )
    completions = [await transport.write_zc(stream_slice(seed, i * MiB, MiB)) for i in range(8)]
    transport.write_eof()
    reply = await proto.reply
    assert reply["sha256"] == reply["expected"]
    assert transport.stats.engine == "msg_zerocopy"
    assert all(c.zerocopy for c in completions)
    transport.close()


def _two_routes() -> list[tuple[str, tuple[str, int]]]:
    return [("loopback", ("127.0.0.1", 0)), ("namespace", peer_address())]


def _raw_notifications(address: tuple[str, int], *, report_usage: bool, count: int = 8) -> list[int]:
    """Notification ``res`` of ``count`` SEND_ZCs of 1 MiB; port 0 = a loopback sink here."""
    listener = None
    if address[1] == 0:
        listener = socket.create_server(("127.0.0.1", 0))
        address = listener.getsockname()
        threading.Thread(target=_drain_one, args=(listener,), daemon=True).start()
    notes: list[int] = []
    with socket.create_connection(address) as sock, uring.Ring(16) as ring:
        if listener is None:
            sock.sendall(json.dumps({"op": "sink"}).encode() + b"\n")
        chunk = stream_slice(10, 0, MiB)
        for i in range(count):
            assert ring.prep_send_zc(sock.fileno(), chunk, socket.MSG_NOSIGNAL, i, report_usage=report_usage)
        ring.submit()
        while len(notes) < count:
            ring.submit(wait_nr=1)
            notes += [res & 0xFFFFFFFF for _, res, flags in ring.reap() if flags & uring.IORING_CQE_F_NOTIF]
    if listener is not None:
        listener.close()
    return notes


def _drain_one(listener: socket.socket) -> None:
    conn, _ = listener.accept()
    with conn:
        while conn.recv(1 << 20):
            pass


def test_raw_send_zc_over_tcp_reaches_the_peer() -> None:
    """IORING_OP_SEND_ZC on a TCP socket to the namespace, one request at a time, without
    REPORT_USAGE: every send gets its result and its notification (res 0: the kernel says
    nothing about copying), short sends resubmitted, and the bytes arrive intact."""
    seed, count = 8, 16
    total = count * MiB
    with socket.create_connection(peer_address()) as sock, uring.Ring(64) as ring:
        sock.sendall(json.dumps({"op": "sink", "expect": {"seed": seed, "pool": POOL, "total": total}}).encode() + b"\n")
        results: dict[int, int] = {}
        notified: set[int] = set()
        for i in range(count):
            chunk = stream_slice(seed, i * MiB, MiB)
            sent = 0
            while sent < MiB:  # a short send: the rest goes out as a new request
                assert ring.prep_send_zc(sock.fileno(), chunk[sent:], socket.MSG_NOSIGNAL, i, report_usage=False)
                ring.submit(wait_nr=1)
                res = _wait_result(ring, i, notified)
                assert res > 0, res
                sent += res
            results[i] = sent
        while len(notified) < count:
            ring.submit(wait_nr=1)
            _collect(ring, {}, notified)
        sock.shutdown(socket.SHUT_WR)
        reply = json.loads(sock.makefile().readline())
    assert results == {i: MiB for i in range(count)}
    assert reply["bytes"] == total and reply["sha256"] == reply["expected"]


def _wait_result(ring: uring.Ring, user_data: int, notified: set[int]) -> int:
    results: dict[int, int] = {}
    while user_data not in results:
        _collect(ring, results, notified)
        if user_data not in results:
            ring.submit(wait_nr=1)
    return results[user_data]


def _collect(ring: uring.Ring, results: dict[int, int], notified: set[int]) -> None:
    for user_data, res, flags in ring.reap():
        if flags & uring.IORING_CQE_F_NOTIF:
            assert res == 0  # no REPORT_USAGE: nothing said about copying
            notified.add(user_data)
        else:
            results[user_data] = res


async def test_tensors_guest_to_host_complete_zero_copy() -> None:
    from aiozc import tensors

    seeds = [11, 12, 13]
    reader, writer, reply = await ask_peer(
        {"op": "tensors", "host": peer_address()[0], "expect": [{"seed": s, "pool": POOL, "total": 4 * MiB} for s in seeds]}
    )
    assert reply is not None
    chan = await tensors.connect(peer_address()[0], reply["port"])
    completions = []
    for seed in seeds:
        array = np.frombuffer(stream_slice(seed, 0, 4 * MiB), dtype=np.float32).reshape(1024, -1)
        completions.append(await chan.send(array))
    chan.close()
    await chan.wait_closed()
    received = (await asyncio.wait_for(reader.readline(), 60)).decode()
    writer.close()
    arrays = json.loads(received)["arrays"]
    assert [a["shape"] for a in arrays] == [[1024, 1024]] * len(seeds)
    assert [a["sha256"] for a in arrays] == [a["expected"] for a in arrays]
    assert all(c.zerocopy for c in completions), completions
    assert chan.transport.stats.ids_copied == 0


async def test_aiohttp_zero_copy_site_serves_256_mib_to_the_namespace() -> None:
    from aiohttp import web

    from aiozc import web as zcweb

    seed, total = 21, 256 * MiB
    body = bytes(stream_slice(seed, 0, POOL)) * (total // POOL) + bytes(stream_slice(seed, 0, total % POOL))
    transports = []

    async def handler(request: web.Request) -> web.Response:
        transports.append(request.transport)
        return web.Response(body=body, content_type="application/octet-stream")

    app = web.Application()
    app.router.add_get("/body", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    # The default max_pinned_bytes (64 MiB) sends the rest of a 256 MiB body by copy while the
    # first 64 MiB wait for their ACKs (measured: 65-67 MiB went zero-copy): lift it, so every
    # byte of the body must go out zero-copy.
    site = zcweb.ZeroCopySite(runner, "0.0.0.0", 0, max_pinned_bytes=total)
    await site.start()
    try:
        guest = _guest_address()
        _, writer, reply = await ask_peer(
            {"op": "http_get", "url": f"http://{guest}:{site.port}/body", "expect": {"seed": seed, "pool": POOL, "total": total}}
        )
        writer.close()
    finally:
        await runner.cleanup()
    assert reply is not None and reply["status"] == 200
    assert reply["bytes"] == total and reply["sha256"] == reply["expected"]
    stats = transports[0].stats
    # A Response body is one write() of exact bytes, sent zero-copy without a future:
    # it shows in the send-call counters, not in zc_write_bytes (writes with a Completion).
    assert stats.zc_bytes >= total and stats.ids_zerocopy > 0 and stats.ids_copied == 0, stats


def _guest_address() -> str:
    from aiozc.tools.vm import GUEST_ADDR

    return GUEST_ADDR
