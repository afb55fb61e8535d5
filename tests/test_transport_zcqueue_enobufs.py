"""ENOBUFS on the compiled queued zero-copy write_zc() (aiozc/_sys/_core_tcpzc.c hands the
write to streamheld._zc_continue, which resends it by copy as streamsend._send_zc does), against
the Python path, with a real ENOBUFS: a TCP pair across a veth whose sender namespace has
``net.core.optmem_max`` = OPTMEM_ONE_PENDING_NOTIFICATION (a zero-copy send fails while a
notification is undrained). Needs root and network namespaces (skips with the reason elsewhere).
"""

from __future__ import annotations

import asyncio
import socket
import types
from typing import Any

import pytest

import aiozc
import aiozc.transport as transport_module
from aiozc.tools.netns import OPTMEM_ONE_PENDING_NOTIFICATION
from rig import VethPair, zc_tcp_pair
from tcp_helpers import RecordingProtocol

COMPILED = bool(transport_module.COMPILED_METHODS)
WRITE = 64 * 1024
WRITES = 16


@pytest.fixture(params=["compiled", "pure"])
def path(request: pytest.FixtureRequest) -> str:
    if request.param == "compiled" and not COMPILED:
        pytest.skip("the compiled core is not in use")
    return str(request.param)


async def _read(server: socket.socket, nbytes: int) -> bytes:
    loop = asyncio.get_running_loop()
    got = bytearray()
    while len(got) < nbytes:
        chunk = await loop.sock_recv(server, 1 << 20)
        if not chunk:
            break
        got += chunk
    return bytes(got)


async def test_enobufs_is_resent_by_copy_on_both_paths(veth_pair: VethPair, path: str) -> None:
    assert veth_pair.a is not None
    veth_pair.a.set_sysctl("net.core.optmem_max", OPTMEM_ONE_PENDING_NOTIFICATION)
    client, server = zc_tcp_pair(veth_pair)
    client.setblocking(False)
    server.setblocking(False)
    transport, _ = await aiozc.create_connection(
        RecordingProtocol, sock=client, fallback_after=1 << 62, probe_first=False
    )
    t: Any = transport
    continued: list[Any] = []
    if path == "pure":
        for name, method in transport_module.PURE_METHODS.items():
            setattr(t, name, types.MethodType(method, t))
    real = t._zc_continue

    def watched(view: memoryview, future: Any, slot: int, sent: int, exc: Any) -> None:
        continued.append(exc)
        real(view, future, slot, sent, exc)

    t._zc_continue = watched
    try:
        payloads = [bytes([k + 1]) * WRITE for k in range(WRITES)]
        futures = [t.write_zc(p) for p in payloads]  # no yield: the notifications wait undrained
        received = await asyncio.wait_for(_read(server, WRITE * WRITES), 60)
        done = await asyncio.wait_for(asyncio.gather(*futures), 60)
        assert received == b"".join(payloads)
        assert [c.nbytes for c in done] == [WRITE] * WRITES
        stats = t.stats
        assert stats.enobufs > 0, stats  # the rig's optmem really refused a zero-copy send
        assert stats.state != "disabled", stats  # transient: notifications were outstanding
        assert stats.zc_sends + stats.copy_sends >= WRITES
        assert t._tracker.pending_writes == 0 and stats.pinned_bytes == 0
        if path == "compiled":
            assert any(isinstance(e, OSError) and e.errno == 105 for e in continued), continued
        else:
            assert not continued
    finally:
        transport.abort()
        server.close()
