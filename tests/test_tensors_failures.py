"""aiozc.tensors against hostile peers and careless callers (issue #12). Async tests run on both loops."""

from __future__ import annotations

import asyncio
import gc
import json
import math
import subprocess
import sys
import textwrap
import tracemalloc
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import uvloop
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from aiozc import BufferPool, tensors
from aiozc.tensors import ChannelBroken, ChannelClosed, ChannelOptions, FrameError, FrameTooLarge, IncompleteFrame
from aiozc.tensors.frames import FrameHeader, parse_header, parse_prefix
from aiozc.tensors.receive import _TensorProtocol, allocate
from tensor_helpers import Pair, channel_to_raw_peer, channel_to_raw_script, frame_bytes, open_pair, reset

LOOPS = pytest.mark.parametrize(
    "loop_factory", [asyncio.SelectorEventLoop, uvloop.new_event_loop], ids=["asyncio", "uvloop"]
)


@pytest.fixture
async def handler_calls() -> AsyncIterator[list[dict[str, Any]]]:
    """What reaches the running loop's exception handler during the test (must stay empty)."""
    calls: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: calls.append(context))
    yield calls
    loop.set_exception_handler(None)


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    p = await open_pair()
    yield p
    await p.aclose()


def header(shape: list[int], dtype: str = "|u1", **extra: Any) -> dict[str, Any]:
    return {"dtype": dtype, "shape": shape, "name": None, "metadata": None, "tag": None, **extra}


FRAME = frame_bytes(header([3], "<i2"), 6, np.array([1, 2, 3], "<i2").tobytes())  # a complete 3-element frame


# ---------------------------------------------------------------------------------------------
# shapes that multiply to zero but could never be allocated

ZERO_BUT_HUGE = frame_bytes(header([0, 2**48, 2**48]), 0)


@pytest.mark.parametrize("waiting", [True, False], ids=["recv-waiting", "recv-after"])
async def test_zero_size_frame_with_huge_dims_is_a_frame_error(waiting: bool, handler_calls: list[Any]) -> None:
    go = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await go.wait()
        writer.write(ZERO_BUT_HUGE)
        await reader.read()

    chan, server = await channel_to_raw_script(script)
    try:
        receiving = asyncio.ensure_future(chan.recv())
        await asyncio.sleep(0.01)
        if not waiting:
            receiving.cancel()
        go.set()
        if not waiting:
            await asyncio.sleep(0.05)  # the frame arrives while nobody waits
            receiving = asyncio.ensure_future(chan.recv())
        with pytest.raises(FrameTooLarge, match="max_frame_bytes"):
            await asyncio.wait_for(receiving, 5)
        await asyncio.wait_for(chan.wait_closed(), 5)  # aborted: a byte stream cannot resync
        with pytest.raises(FrameTooLarge):
            await chan.recv()
        assert handler_calls == []
    finally:
        chan.close()
        server.close()


@pytest.mark.parametrize("waiting", [True, False], ids=["recv-waiting", "recv-after"])
async def test_allocation_failure_is_a_frame_error(waiting: bool, handler_calls: list[Any]) -> None:
    # Within a (raised) max_frame_bytes, yet no machine can allocate 2**60 bytes.
    payload = frame_bytes(header([1 << 40, 1 << 20]), 1 << 60)
    chan, server = await channel_to_raw_peer(payload, close=False, max_frame_bytes=1 << 62)
    try:
        if not waiting:
            await asyncio.sleep(0.05)
        with pytest.raises(FrameError, match="cannot allocate"):
            await asyncio.wait_for(chan.recv(), 5)
        await asyncio.wait_for(chan.wait_closed(), 5)
        assert handler_calls == []
    finally:
        chan.close()
        server.close()


async def test_sender_refuses_a_shape_the_receiver_would_refuse(pair: Pair) -> None:
    empty_but_wide = np.empty((0, 1 << 31), np.uint8)  # numpy makes it; spans 2 GiB > 1 GiB
    with pytest.raises(FrameTooLarge, match="max_frame_bytes"):
        await pair.client.send(empty_but_wide)
    await pair.client.send(np.empty((0, 1 << 20), np.uint8))
    assert (await pair.peer.recv()).shape == (0, 1 << 20)


# ---------------------------------------------------------------------------------------------
# header parser fuzz: a frame or a documented error, nothing else

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=4),
    max_leaves=12,
)
_DIMS = st.one_of(
    st.integers(0, 8),
    st.sampled_from([2**31, 2**32, 2**47, 2**48, 2**48 + 1, 2**62, 2**63, 2**64, -1]),
    st.integers(-(2**70), 2**70),
    st.booleans(),
    st.floats(allow_nan=False),
    st.text(max_size=3),
    st.none(),
)
_SCALAR_DESCRS = st.sampled_from(
    ["|u1", "<f4", ">f8", "|b1", "<c16", "<M8[ns]", ">m8[s]", "|S3", "<U2", "|V4", "|O", "<O8", "f4", "(2,)f4"]
)
_DESCRS = st.recursive(
    _SCALAR_DESCRS | st.text(max_size=10) | st.integers() | st.none(),
    lambda children: st.lists(
        st.one_of(
            st.tuples(st.text(max_size=3), children).map(list),
            st.tuples(st.text(max_size=3), children, st.lists(_DIMS, max_size=3)).map(list),
            children,
        ),
        max_size=3,
    ),
    max_leaves=6,
)
_HEADERS = st.fixed_dictionaries(
    {
        "dtype": st.one_of(_SCALAR_DESCRS, _DESCRS),
        "shape": st.one_of(
            st.lists(_DIMS, max_size=6),
            st.lists(st.sampled_from([0, 0, 3, 2**24, 2**32, 2**47, 2**48]), max_size=5),  # empty but huge
            st.lists(st.integers(0, 1), max_size=70),
            _JSON,
        ),
    },
    optional={
        "byteorder": st.sampled_from(["<", ">", "|", "=", "", 1]),
        "name": st.one_of(st.none(), st.text(max_size=5), st.integers()),
        "metadata": _JSON,
        "tag": st.one_of(st.none(), st.sampled_from(["bfloat16", "__import__", "X", ""]), st.integers()),
    },
)
FUZZ_OPTIONS = ChannelOptions(max_frame_bytes=1 << 16, readahead_bytes=1 << 17, readahead_frames=3)


def consistent_nbytes(doc: dict[str, Any]) -> int:
    """What the prefix must announce for ``doc`` to be valid, or 7 where nothing would be."""
    try:
        itemsize = np.dtype(doc["dtype"]).itemsize if isinstance(doc["dtype"], str) else 1
        nbytes = abs(math.prod(doc["shape"])) * itemsize
    except Exception:
        return 7
    return nbytes if type(nbytes) is int and nbytes < 2**64 else 7


@settings(max_examples=400, deadline=None)
@given(doc=_HEADERS, announce=st.one_of(st.none(), st.integers(0, 2**64 - 1)))
@example(doc=header([0, 2**48, 2**48]), announce=0)  # issue #12's report
def test_header_parser_returns_a_frame_header_or_a_frame_error(doc: dict[str, Any], announce: int | None) -> None:
    raw = json.dumps(doc).encode()
    nbytes = consistent_nbytes(doc) if announce is None else announce
    try:
        parsed = parse_header(raw, nbytes, FUZZ_OPTIONS.max_frame_bytes)
    except FrameError:
        return
    assert isinstance(parsed, FrameHeader)
    assert parsed.nbytes == nbytes == math.prod(parsed.shape) * parsed.dtype.itemsize
    assert not parsed.dtype.hasobject
    assert allocate(parsed).nbytes == nbytes  # whatever parses can be allocated


class FakeTransport:
    """Just enough of an aiozc transport to drive the receive state machine by hand."""

    def __init__(self, protocol: _TensorProtocol) -> None:
        self.protocol = protocol
        self.reading = True
        self.aborted = False
        self.lost = False

    def is_closing(self) -> bool:
        return self.aborted or self.lost

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def abort(self) -> None:
        if not self.is_closing():
            self.aborted = True
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, ConnectionAbortedError("aborted"))

    def close(self) -> None:
        self.abort()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


def expected_outcome(frames: list[bytes]) -> tuple[int, bool]:
    """(frames the pure parser accepts before the first it refuses, whether one is refused)."""
    for index, frame in enumerate(frames):
        try:
            header_len, nbytes = parse_prefix(frame[:20], FUZZ_OPTIONS)
            parse_header(frame[20 : 20 + header_len], nbytes, FUZZ_OPTIONS.max_frame_bytes)
        except FrameError:
            return index, True
    return len(frames), False


def encoded(doc: dict[str, Any], announce: int | None, seed: int) -> bytes:
    nbytes = consistent_nbytes(doc) if announce is None else announce
    body = np.random.default_rng(seed).bytes(nbytes) if nbytes <= FUZZ_OPTIONS.max_frame_bytes else b""
    return frame_bytes(json.dumps(doc).encode(), nbytes, body)


def check_invariants(protocol: _TensorProtocol, transport: FakeTransport) -> None:
    """What must hold between any two events, whatever the peer sent."""
    options = protocol.options
    ready = protocol._ready
    assert protocol._ready_bytes == sum(held.charge for held in ready)
    assert len(ready) <= options.readahead_frames
    assert protocol._ready_bytes <= options.readahead_bytes
    assert protocol._fill == 0 or protocol._scratch_view is not None
    if protocol._error is not None:
        assert transport.aborted or transport.lost  # a FrameError ends the connection
    elif not transport.is_closing():
        assert transport.reading == (protocol._state != "wait-dest")


async def feed(frames: list[bytes], chunk: int) -> tuple[list[tensors.Frame], BaseException, FakeTransport]:
    """Deliver the frames ``chunk`` bytes per read, receiving whenever reading pauses."""
    protocol = _TensorProtocol(FUZZ_OPTIONS)
    transport = FakeTransport(protocol)
    protocol.connection_made(transport)  # type: ignore[arg-type]
    stream = memoryview(b"".join(frames))
    got: list[tensors.Frame] = []
    end: BaseException | None = None
    while stream and not transport.is_closing():
        if not transport.reading:  # a frame waits for a destination: be the recv() it wants
            try:
                got.append(await asyncio.wait_for(protocol.channel.recv_frame(), 5))
            except (FrameError, ChannelBroken, ChannelClosed) as exc:
                end = exc
                break
            check_invariants(protocol, transport)
            continue
        buf = protocol.get_buffer(-1)
        n = min(len(buf), chunk, len(stream))
        assert n > 0, "the protocol offered an empty buffer while reading"
        buf[:n] = stream[:n]
        stream = stream[n:]
        protocol.buffer_updated(n)
        check_invariants(protocol, transport)
    if not transport.is_closing():
        protocol.eof_received()
        transport.lost = True
        protocol.connection_lost(None)
    while end is None:
        try:
            got.append(await asyncio.wait_for(protocol.channel.recv_frame(), 5))
        except (FrameError, ChannelBroken, ChannelClosed) as exc:
            end = exc
    await asyncio.wait_for(protocol.channel.wait_closed(), 5)
    return got, end, transport


@LOOPS
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    frames=st.lists(
        st.tuples(_HEADERS, st.one_of(st.none(), st.none(), st.integers(0, 2**64 - 1)), st.integers(0, 9)),
        min_size=1,
        max_size=5,
    ),
    good=st.lists(st.integers(0, 64), max_size=3),
    chunk=st.sampled_from([1, 7, 20, 64, 1 << 16]),
)
@example(frames=[(header([0, 2**48, 2**48]), 0, 0)], good=[3], chunk=1 << 16)
def test_receive_state_stays_consistent_over_random_headers(
    loop_factory: Callable[[], asyncio.AbstractEventLoop],
    frames: list[tuple[dict[str, Any], int | None, int]],
    good: list[int],
    chunk: int,
) -> None:
    stream = [frame_bytes(header([n], "<i2"), 2 * n, np.arange(n, dtype="<i2").tobytes()) for n in good]
    stream += [encoded(doc, announce, seed) for doc, announce, seed in frames]
    accepted, refused = expected_outcome(stream)
    errors: list[dict[str, Any]] = []

    async def run() -> tuple[list[tensors.Frame], BaseException, FakeTransport]:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, context: errors.append(context))
        return await feed(stream, chunk)

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        got, end, transport = runner.run(run())
    assert errors == []
    assert len(got) == accepted
    for frame, n in zip(got, good):
        np.testing.assert_array_equal(frame.array, np.arange(n, dtype="<i2"))
    if refused:  # aborted, unless the stream had ended before the bad header was reached
        assert isinstance(end, FrameError) and (transport.aborted or transport.lost)
    else:
        assert isinstance(end, ChannelClosed) and not transport.aborted


# ---------------------------------------------------------------------------------------------
# read-ahead memory

# ~32 KiB of JSON whose parsed objects cost ~30x its size (measured with tracemalloc).
HEAVY_METADATA = [[0]] * 6500


async def test_readahead_is_charged_what_parsed_headers_hold() -> None:
    frame = frame_bytes(header([0], metadata=HEAVY_METADATA), 0)
    assert 30_000 < len(frame) < 32 << 10
    count = 160

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(frame * count)
        await writer.drain()
        await reader.read()

    gc.collect()
    tracemalloc.start()
    try:
        chan, server = await channel_to_raw_script(script, readahead_bytes=1 << 20)
        base = tracemalloc.get_traced_memory()[0]
        await asyncio.sleep(0.3)  # the peer's 5 MB arrive while the handler is not in recv()
        held = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    try:
        # Before: every frame read ahead, charged 256 bytes each, holding ~1 MB of objects.
        assert held < 4 << 20, f"read-ahead holds {held} bytes against readahead_bytes = 1 MiB"
        for _ in range(count):  # and nothing was lost
            assert (await asyncio.wait_for(chan.recv_frame(), 5)).metadata == HEAVY_METADATA
    finally:
        chan.close()
        server.close()


async def test_readahead_frames_are_capped_in_number() -> None:
    tiny = frame_bytes(header([1]), 1, b"\x07")

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(tiny * 500)
        await writer.drain()
        await reader.read()

    chan, server = await channel_to_raw_script(script, readahead_frames=10)
    try:
        await asyncio.sleep(0.1)
        assert len(chan._protocol._ready) == 10
        for _ in range(500):
            assert (await asyncio.wait_for(chan.recv(), 5)).tolist() == [7]
    finally:
        chan.close()
        server.close()


async def test_frames_left_in_the_scratch_when_the_connection_ends_are_still_delivered() -> None:
    # Read-ahead is full, so the last frames still wait in the scratch when the reset comes.
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(FRAME * 6)
        await asyncio.sleep(0.1)
        reset(writer)

    chan, server = await channel_to_raw_script(script, readahead_frames=2)
    try:
        await asyncio.wait_for(chan.wait_closed(), 5)
        got = []
        with pytest.raises(ChannelBroken):
            async for array in chan:
                got.append(array.tolist())
        assert got == [[1, 2, 3]] * 6
    finally:
        chan.close()
        server.close()


async def test_idle_connections_hold_no_receive_scratch(pair: Pair) -> None:
    assert pair.client._protocol._scratch_view is None
    await pair.client.send(np.arange(10))
    assert (await pair.peer.recv()).tolist() == list(range(10))
    assert pair.peer._protocol._scratch_view is None  # given back once the frame was parsed
    servers, chans = [], []
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for _ in range(20):
            p = await open_pair()
            servers.append(p)
            await p.client.send(np.zeros(4))
            chans.append(await p.peer.recv())
        per_pair = (tracemalloc.get_traced_memory()[0] - base) / 20
    finally:
        tracemalloc.stop()
        for p in servers:
            await p.aclose()
    # Before: each channel allocated a 64 KiB scratch up front, 128 KiB per pair.
    assert per_pair < 48 << 10, f"{per_pair:.0f} bytes per idle pair"


# ---------------------------------------------------------------------------------------------
# cancelled sends

async def test_cancelled_send_never_puts_a_mixed_frame_on_the_wire(pair: Pair) -> None:
    array = np.zeros(16 << 20, np.uint8)  # far more than the socket buffers take at once
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(pair.client.send(array), 0.05)  # the peer is not receiving
    assert pair.client.is_closing()  # the frame could not be finished: aborted
    array[:] = 1  # the caller was told its send is over, so it reuses the array
    try:
        got = await asyncio.wait_for(pair.peer.recv(), 5)
    except ChannelBroken:
        return  # the cut frame is reported
    pytest.fail(f"a cancelled send delivered a frame ({np.count_nonzero(got)} of {got.size} bytes new)")


async def test_send_cancelled_while_waiting_for_flow_control_keeps_the_connection(pair: Pair) -> None:
    pair.client.transport.set_write_buffer_limits(high=1 << 16)
    first = np.arange(1 << 25, dtype=np.uint8)  # 32 MiB: more than socket buffers hold; paused
    sending = pair.client.send_nowait(first)
    await asyncio.sleep(0.05)
    with pytest.raises(asyncio.TimeoutError):  # cancelled in drain(): nothing of it was queued
        await asyncio.wait_for(pair.client.send(np.arange(3)), 0.05)
    assert not pair.client.is_closing()
    np.testing.assert_array_equal(await asyncio.wait_for(pair.peer.recv(), 5), first)
    await asyncio.wait_for(sending, 5)
    await pair.client.send(np.arange(4))
    assert (await asyncio.wait_for(pair.peer.recv(), 5)).tolist() == list(range(4))


# ---------------------------------------------------------------------------------------------
# a reset after complete frames


@pytest.mark.parametrize("delay", [0.0, 0.1], ids=["reset-at-once", "reset-after-read-ahead"])
async def test_frames_before_a_reset_are_delivered_then_a_connection_error(delay: float) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(FRAME * 5)
        await asyncio.sleep(delay)
        reset(writer)

    chan, server = await channel_to_raw_script(script)
    got = []
    try:
        with pytest.raises(ChannelBroken) as info:
            async for array in chan:  # must not end silently, as at a clean close
                got.append(array.tolist())
        assert not isinstance(info.value, IncompleteFrame)
        assert isinstance(info.value.__cause__, ConnectionResetError)
        assert got == [[1, 2, 3]] * 5
        with pytest.raises(ChannelBroken):  # and it sticks
            await chan.recv()
        with pytest.raises(ChannelBroken):
            await chan.send(np.zeros(1))
    finally:
        chan.close()
        server.close()


async def test_clean_close_after_frames_still_ends_iteration_silently() -> None:
    chan, server = await channel_to_raw_peer(FRAME * 5)
    try:
        assert [a.tolist() async for a in chan] == [[1, 2, 3]] * 5
    finally:
        chan.close()
        server.close()


# ---------------------------------------------------------------------------------------------
# clear errors for bad input


def deep(levels: int) -> list[Any]:
    root: list[Any] = []
    node = root
    for _ in range(levels):
        node.append([])
        node = node[0]
    return root


async def test_deeply_nested_metadata_is_refused_on_send(pair: Pair) -> None:
    with pytest.raises(ValueError, match="nested too deeply") as info:
        await pair.client.send(np.zeros(1), metadata=deep(100_000))
    assert not isinstance(info.value, RecursionError)
    await pair.client.send(np.zeros(1), metadata=deep(50))  # the channel still works
    assert (await pair.peer.recv_frame()).metadata == deep(50)


@pytest.mark.parametrize("levels", [100_000, 30_000])
async def test_deeply_nested_metadata_is_refused_on_receive(levels: int) -> None:
    raw = b'{"dtype":"|u1","shape":[1],"metadata":' + b"[" * levels + b"]" * levels + b"}"
    chan, server = await channel_to_raw_peer(frame_bytes(raw, 1, b"\0"), close=False, max_header_bytes=65_000)
    try:
        with pytest.raises(FrameError) as info:
            await asyncio.wait_for(chan.recv(), 5)
        assert not isinstance(info.value, RecursionError)
        await asyncio.wait_for(chan.wait_closed(), 5)
    finally:
        chan.close()
        server.close()


def test_buffer_pool_release_twice_says_so() -> None:
    pool = BufferPool(4096, 2, register=False)
    buf = pool.acquire()
    alias = buf[:]
    pool.release(buf)
    with pytest.raises(ValueError, match="already given back: release.. was called twice"):
        pool.release(buf)
    with pytest.raises(ValueError, match="already released through another view"):
        pool.release(alias)
    assert pool.free == 2
    alias.release()
    pool.close()


# ---------------------------------------------------------------------------------------------
# interpreter exit with aborted writes nobody awaits

EXIT_SCRIPT = textwrap.dedent(
    """
    import asyncio, socket, sys
    import numpy as np, uvloop
    import aiozc
    from aiozc import tensors

    class Task:  # dask-style bookkeeping: a cycle holding futures, views and arrays
        pass

    async def main(engine):
        listener = socket.create_server(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        try:
            transport, _ = await aiozc.create_connection(asyncio.Protocol, "127.0.0.1", port,
                                                         zc_threshold=1, probe_first=False, engine=engine)
        except aiozc.EngineUnavailable:
            return
        peer, _ = listener.accept()  # never reads: the writes stay pinned or queued
        state = Task()
        state.self = state
        state.arrays = [np.full(1 << 21, i, np.uint8) for i in range(8)]
        state.views = [memoryview(a) for a in state.arrays]
        state.exports = [np.frombuffer(v, np.uint8) for v in state.views]
        state.futures = [transport.write_zc(v) for v in state.views]
        for future in state.futures:
            future.add_done_callback(lambda f, s=state: s)
        server = await tensors.serve(lambda chan: asyncio.sleep(3600), "127.0.0.1", 0)
        chan = await tensors.connect("127.0.0.1", server.sockets[0].getsockname()[1])
        state.sends = [chan.send_nowait(a) for a in state.arrays]
        state.keep = (transport, peer, listener, chan, server)
        await asyncio.sleep(0.01)
        transport.abort()
        chan.abort()
        globals().setdefault("STATES", []).append(state)  # dropped only at interpreter exit

    for factory in (asyncio.new_event_loop, uvloop.new_event_loop):
        for engine in ("msg_zerocopy", "io_uring"):  # io_uring: SQEs hold cffi exports of the views
            loop = factory()
            loop.run_until_complete(main(engine))  # neither closed nor cleaned up
    """
)
# asyncio reports each failed future nobody retrieved, on stderr; nothing else may appear.
_NEVER_RETRIEVED = ("Future exception was never retrieved", "future: <Future finished exception=ConnectionAbortedError", "ConnectionAbortedError: transport aborted")


def test_exit_after_abort_with_unretrieved_futures_is_clean_20_times(tmp_path: Path) -> None:
    script = tmp_path / "exit_after_abort.py"
    script.write_text(EXIT_SCRIPT)
    for _ in range(5):  # 4 at a time: 20 runs
        runs = [subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for _ in range(4)]  # fmt: skip
        for run in runs:
            out, err = run.communicate(timeout=60)
            noise = [line for line in err.splitlines() if line.strip() and not line.startswith(_NEVER_RETRIEVED)]
            assert run.returncode == 0, err[-2000:]
            assert noise == [], err[-2000:]
