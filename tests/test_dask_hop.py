"""aiozc.dask's in-process hop: a zc:// connection within one process and loop, by reference."""

from __future__ import annotations

import asyncio
import gc
import threading
from collections.abc import AsyncIterator, Iterator

import pytest

np = pytest.importorskip("numpy")
pytest.importorskip("distributed")

import dask  # noqa: E402
from distributed import Client, LocalCluster  # noqa: E402
from distributed.comm import connect, listen  # noqa: E402
from distributed.comm.core import CommClosedError  # noqa: E402
from distributed.protocol import to_serialize  # noqa: E402

import aiozc.dask as zcdask  # noqa: E402
from aiozc.dask import hop  # noqa: E402

MiB = 1 << 20


class Ends:
    def __init__(self, client: object, server: object, listener: object) -> None:
        self.client, self.server, self.listener = client, server, listener


async def _ends(listener_args: dict[str, object] | None = None, **connect_args: object) -> Ends:
    accepted: asyncio.Queue[object] = asyncio.Queue()

    async def handle(comm: object) -> None:
        await accepted.put(comm)

    listener = listen("zc://127.0.0.1:0", handle, **(listener_args or {}))
    await listener.start()
    client = await connect(listener.contact_address, **connect_args)
    server = await asyncio.wait_for(accepted.get(), 10)
    return Ends(client, server, listener)


@pytest.fixture
async def ends() -> AsyncIterator[Ends]:
    e = await _ends()
    yield e
    e.client.abort()  # type: ignore[attr-defined]
    e.server.abort()  # type: ignore[attr-defined]
    e.listener.stop()  # type: ignore[attr-defined]


async def test_same_loop_connections_take_the_hop_and_run_the_handshake(ends: Ends) -> None:
    assert isinstance(ends.client, zcdask.HopComm) and isinstance(ends.server, zcdask.HopComm)
    # dask's handshake ran over the hop, both ways
    assert ends.client.remote_info["address"] == ends.client.peer_address  # type: ignore[attr-defined]
    assert ends.server.remote_info["address"] == ends.server.peer_address  # type: ignore[attr-defined]
    assert "compression" in ends.client.remote_info and "compression" in ends.server.remote_info  # type: ignore[attr-defined]
    # addresses look like the socket path's
    assert ends.client.peer_address == ends.listener.contact_address  # type: ignore[attr-defined]
    assert ends.server.local_address == ends.client.peer_address  # type: ignore[attr-defined]
    assert ends.server.peer_address == ends.client.local_address  # type: ignore[attr-defined]
    assert ends.client.local_address.startswith("zc://127.0.0.1:")  # type: ignore[attr-defined]
    assert ends.client.extra_info == {"hop": True}  # type: ignore[attr-defined]


async def test_messages_keep_their_order(ends: Ends) -> None:
    writes = [asyncio.ensure_future(ends.client.write({"i": i, "x": to_serialize(np.full(1000, i % 251, np.uint8))}))  # type: ignore[attr-defined]
              for i in range(200)]
    for i in range(200):
        msg = await asyncio.wait_for(ends.server.read(), 10)  # type: ignore[attr-defined]
        assert msg["i"] == i and int(msg["x"][0]) == i % 251
    await asyncio.gather(*writes)


async def test_the_receiver_aliases_the_senders_array(ends: Ends) -> None:
    """Ownership: the frames are handed over, not copied (documented in aiozc.dask.hop)."""
    array = np.arange(3 * MiB, dtype=np.uint8)
    await ends.client.write({"x": to_serialize(array)})  # type: ignore[attr-defined]
    got = (await ends.server.read())["x"]  # type: ignore[attr-defined]
    assert np.array_equal(got, array) and np.shares_memory(got, array)


async def test_a_writer_waits_while_the_peer_holds_readahead_bytes() -> None:
    with dask.config.set({"distributed.comm.zc.readahead-bytes": 2 * MiB}):
        e = await _ends()
    try:
        first = await e.client.write({"x": to_serialize(np.zeros(3 * MiB, np.uint8))})  # type: ignore[attr-defined]
        assert first > 3 * MiB  # one message is let in whatever its size
        second = asyncio.ensure_future(e.client.write({"y": 1}))  # type: ignore[attr-defined]
        for _ in range(20):
            await asyncio.sleep(0)
        assert not second.done()
        assert (await e.server.read())["x"].nbytes == 3 * MiB  # type: ignore[attr-defined]
        await asyncio.wait_for(second, 10)
        assert (await e.server.read()) == {"y": 1}  # type: ignore[attr-defined]
    finally:
        e.client.abort()  # type: ignore[attr-defined]
        e.server.abort()  # type: ignore[attr-defined]
        e.listener.stop()  # type: ignore[attr-defined]


@pytest.mark.parametrize("who", ["writer", "reader"])
async def test_abort_mid_stream_closes_both_sides_without_hanging(who: str) -> None:
    """A writer blocked on flow control and a reader waiting, then one side aborts: both get
    CommClosedError, and every later read and write too."""
    with dask.config.set({"distributed.comm.zc.readahead-bytes": MiB}):
        e = await _ends()
    try:
        await e.client.write({"x": to_serialize(np.zeros(2 * MiB, np.uint8))})  # type: ignore[attr-defined]
        blocked = asyncio.ensure_future(e.client.write({"x": to_serialize(np.ones(2 * MiB, np.uint8))}))  # type: ignore[attr-defined]
        back = asyncio.ensure_future(e.client.read())  # type: ignore[attr-defined]
        for _ in range(20):
            await asyncio.sleep(0)
        assert not blocked.done() and not back.done()
        (e.client if who == "writer" else e.server).abort()  # type: ignore[attr-defined]
        for pending in (blocked, back):
            with pytest.raises(CommClosedError):
                await asyncio.wait_for(pending, 10)
        if who == "writer":  # what was queued before the abort is still read, then the end
            assert (await e.server.read())["x"].nbytes == 2 * MiB  # type: ignore[attr-defined]
        with pytest.raises(CommClosedError):
            await asyncio.wait_for(e.server.read(), 10)  # type: ignore[attr-defined]
        assert e.client.closed() and e.server.closed()  # type: ignore[attr-defined]
        with pytest.raises(CommClosedError):
            await e.client.write({"after": 1})  # type: ignore[attr-defined]
        with pytest.raises(CommClosedError):
            await e.server.write({"after": 1})  # type: ignore[attr-defined]
    finally:
        e.listener.stop()  # type: ignore[attr-defined]


async def test_close_from_either_side_ends_the_peers_reads(ends: Ends) -> None:
    read = asyncio.ensure_future(ends.server.read())  # type: ignore[attr-defined]
    await ends.client.close()  # type: ignore[attr-defined]
    with pytest.raises(CommClosedError):
        await asyncio.wait_for(read, 10)


async def test_a_comm_dropped_without_close_ends_the_peers_read() -> None:
    e = await _ends()
    try:
        read = asyncio.ensure_future(e.server.read())  # type: ignore[attr-defined]
        await asyncio.sleep(0)
        del e.client
        gc.collect()
        with pytest.raises(CommClosedError):
            await asyncio.wait_for(read, 10)
    finally:
        e.server.abort()  # type: ignore[attr-defined]
        e.listener.stop()  # type: ignore[attr-defined]


async def test_a_stopped_listener_takes_no_hop() -> None:
    e = await _ends()
    address = e.listener.contact_address  # type: ignore[attr-defined]
    e.client.abort()  # type: ignore[attr-defined]
    e.server.abort()  # type: ignore[attr-defined]
    e.listener.stop()  # type: ignore[attr-defined]
    with pytest.raises(OSError):
        await connect(address, timeout=0.5)


@pytest.mark.parametrize("how", ["config", "env", "connector", "listener"])
async def test_the_hop_can_be_turned_off(how: str) -> None:
    listener_args: dict[str, object] = {}
    connect_args: dict[str, object] = {}
    settings: dict[str, object] = {}
    if how == "config":
        settings = {"distributed.comm.zc.hop": False}
    elif how == "env":
        # what dask makes of the variable when it reads the environment
        collected = dask.config.collect(paths=[], env={"DASK_DISTRIBUTED__COMM__ZC__HOP": "False"})
        settings = {"distributed.comm.zc.hop": collected["distributed"]["comm"]["zc"]["hop"]}
    elif how == "connector":
        connect_args = {"zc_hop": False}
    else:
        listener_args = {"zc_hop": False}
    with dask.config.set(settings):
        e = await _ends(listener_args, **connect_args)
    try:
        assert isinstance(e.client, zcdask.ZCComm) and isinstance(e.server, zcdask.ZCComm)
        await e.client.write({"x": b"y"})  # type: ignore[attr-defined]
        assert await e.server.read() == {"x": b"y"}  # type: ignore[attr-defined]
    finally:
        e.client.abort()  # type: ignore[attr-defined]
        e.server.abort()  # type: ignore[attr-defined]
        e.listener.stop()  # type: ignore[attr-defined]


@pytest.fixture
def other_loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


async def test_a_listener_on_another_loop_is_reached_through_the_socket(
        other_loop: asyncio.AbstractEventLoop) -> None:
    accepted: list[object] = []
    ready = threading.Event()

    async def handle(comm: object) -> None:
        accepted.append(comm)
        ready.set()
        await comm.write({"from": "server"})  # type: ignore[attr-defined]

    async def start() -> object:
        listener = listen("zc://127.0.0.1:0", handle)
        await listener.start()
        return listener

    listener = asyncio.run_coroutine_threadsafe(start(), other_loop).result(10)
    try:
        client = await connect(listener.contact_address)  # type: ignore[attr-defined]
        assert isinstance(client, zcdask.ZCComm)
        assert await asyncio.wait_for(client.read(), 10) == {"from": "server"}
        assert ready.wait(10) and isinstance(accepted[0], zcdask.ZCComm)
        client.abort()
        other_loop.call_soon_threadsafe(accepted[0].abort)  # type: ignore[attr-defined]
    finally:
        other_loop.call_soon_threadsafe(listener.stop)  # type: ignore[attr-defined]


def test_wildcard_listeners_match_loopback_and_their_contact_host_only() -> None:
    class FakeListener:
        hop_loop = object()

        def hop_hosts(self) -> list[str]:
            return ["0.0.0.0"]

        def contact_host(self) -> str:
            return "10.211.0.1"

    registry = hop.Registry()
    fake = FakeListener()
    registry.add(fake, 4000)
    loop = fake.hop_loop
    assert registry.find("127.0.0.1", 4000, loop) is fake  # type: ignore[arg-type]
    assert registry.find("localhost", 4000, loop) is fake  # type: ignore[arg-type]
    assert registry.find("10.211.0.1", 4000, loop) is fake  # type: ignore[arg-type]
    assert registry.find("192.0.2.7", 4000, loop) is None  # type: ignore[arg-type]
    assert registry.find("127.0.0.1", 4001, loop) is None  # type: ignore[arg-type]
    assert registry.find("127.0.0.1", 4000, object()) is None  # type: ignore[arg-type]
    registry.remove(fake, 4000)
    assert registry.find("127.0.0.1", 4000, loop) is None  # type: ignore[arg-type]


async def test_local_cluster_gather_and_scatter_go_through_the_hop() -> None:
    """Scheduler and client share the loop: their comms are hops; with processes=False the
    workers too. Bytes are exact and the hop counted them."""
    hop.counts.take()
    async with LocalCluster(protocol="zc://", processes=False, n_workers=2, threads_per_worker=1,
                            dashboard_address=None, asynchronous=True) as cluster:
        async with Client(cluster, asynchronous=True) as client:
            a, b = sorted(cluster.scheduler.workers)
            arrays = [np.random.default_rng(i).integers(0, 255, 2 * MiB + i, dtype=np.uint8) for i in range(4)]
            remote = await client.scatter(arrays, workers=[a], direct=False)
            back = await client.gather(remote, direct=False)
            assert all(np.array_equal(x, y) for x, y in zip(arrays, back))
            assert all(isinstance(s.comm, zcdask.HopComm) for s in cluster.scheduler.stream_comms.values())
    carried = hop.counts.take()
    assert carried["connections"] > 0
    assert carried["nbytes"] >= 2 * sum(x.nbytes for x in arrays)  # scattered in, gathered out


class _RaisesEOFWhenLoaded:
    """A message part whose unpickling raises EOFError, as a truncated frame would."""

    def __reduce__(self) -> tuple[object, tuple[()]]:
        return (_raise_eof, ())


def _raise_eof() -> None:
    raise EOFError


@pytest.mark.parametrize("hop_on", [True, False], ids=["hop", "socket"])
async def test_eof_while_deserializing_closes_the_comm_on_both_sides(hop_on: bool) -> None:
    """As distributed's check_deserialize_eoferror: the reader gets CommClosedError, not EOFError."""
    e = await _ends(zc_hop=hop_on)
    try:
        assert isinstance(e.client, zcdask.HopComm) is hop_on
        await e.server.write({"data": to_serialize(_RaisesEOFWhenLoaded())})  # type: ignore[attr-defined]
        with pytest.raises(CommClosedError):
            await asyncio.wait_for(e.client.read(), 10)  # type: ignore[attr-defined]
        with pytest.raises(CommClosedError):
            await asyncio.wait_for(e.server.read(), 10)  # type: ignore[attr-defined]
    finally:
        e.client.abort()  # type: ignore[attr-defined]
        e.server.abort()  # type: ignore[attr-defined]
        e.listener.stop()  # type: ignore[attr-defined]
