"""zc:// connections over loopback: the kernel copies every zero-copy send there, so they are
not re-probed (a re-probe sent a whole 64 MiB shard pinned per GiB in bench dask)."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("distributed")

from distributed.comm import connect, listen  # noqa: E402

import aiozc.dask as zcdask  # noqa: E402
from aiozc.dask.comm import _loopback_options  # noqa: E402
from aiozc.policy import DEFAULT_REPROBE_BYTES  # noqa: E402


def _reprobe_bytes(comm: zcdask.ZCComm) -> int:
    return comm.transport._policy.options.reprobe_bytes  # type: ignore[no-any-return]


async def test_both_ends_of_a_loopback_comm_never_reprobe() -> None:
    accepted: asyncio.Queue[zcdask.ZCComm] = asyncio.Queue()

    async def handle(comm: zcdask.ZCComm) -> None:
        await accepted.put(comm)

    async with listen("zc://127.0.0.1:0", handle) as listener:
        client = await connect(listener.contact_address, zc_hop=False)
        server = await asyncio.wait_for(accepted.get(), 10)
        try:
            assert _reprobe_bytes(client) == 0 and _reprobe_bytes(server) == 0
            await client.write({"x": b"y" * (1 << 20)})  # still a working comm
            assert (await server.read())["x"] == b"y" * (1 << 20)
        finally:
            client.abort()
            server.abort()


def test_other_hosts_keep_the_default_reprobing() -> None:
    assert _loopback_options("127.0.0.1") == _loopback_options("::1") == {"reprobe_bytes": 0}
    assert _loopback_options("127.3.2.1") == _loopback_options("localhost") == {"reprobe_bytes": 0}
    for host in ["10.211.0.1", "192.0.2.7", "", None, "example.org", "::"]:
        assert _loopback_options(host) == {}, host
    assert DEFAULT_REPROBE_BYTES > 0
