"""aiozc.tensors: framed arrays over aiozc connections (issue #6). Async tests run on both loops."""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import AsyncIterator, Callable

import numpy as np
import pytest
import uvloop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from aiozc import tensors
from aiozc.tensors import Channel, ChannelClosed, FrameError, FrameTooLarge, IncompleteFrame
from tensor_helpers import HOST, Pair, channel_to_raw_peer, frame_bytes, open_pair


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    p = await open_pair()
    yield p
    await p.aclose()


def assert_same(received: np.ndarray, sent: np.ndarray) -> None:
    assert received.dtype == sent.dtype
    assert received.shape == sent.shape
    # Compare bytes: equal_nan-safe for every dtype incl. structured and void.
    assert np.ascontiguousarray(received).tobytes() == np.ascontiguousarray(sent).tobytes()


# ---------------------------------------------------------------------------------------------
# dtype codec (pure)

STRUCTURED = [
    np.dtype([("x", "<f4"), ("y", ">i8"), ("flag", "?")]),
    np.dtype([("pos", "<f8", (3,)), ("id", "<u4")]),
    np.dtype([("a", "u1"), ("b", "<i4")], align=True),
    np.dtype([("outer", [("inner", "<c8"), ("n", "<i2", (2, 2))]), ("s", "S3")]),
    np.dtype({"names": ["a", "b"], "formats": ["<i2", "<f4"], "offsets": [0, 4], "itemsize": 12}),
    np.dtype({"names": ["a"], "formats": ["<i4"], "titles": ["the a"]}),
]
SCALARS = [
    "?", "i1", "u1", "<i2", ">u2", "<i4", ">i4", "<u8", ">i8",
    "<f2", ">f2", "<f4", ">f4", "<f8", ">f8", "<c8", ">c16",
    "<M8[ns]", ">m8[s]", "<M8[D]", "S5", "<U3", ">U2", "V4",
]  # fmt: skip
ALL_DTYPES = [np.dtype(s) for s in SCALARS] + STRUCTURED


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
def test_dtype_codec_roundtrips_through_json(dtype: np.dtype) -> None:
    descr = json.loads(json.dumps(tensors.encode_dtype(dtype)))
    decoded = tensors.decode_dtype(descr)
    assert decoded == dtype
    assert decoded.itemsize == dtype.itemsize
    if dtype.names:
        assert [decoded.fields[n][1] for n in dtype.names] == [dtype.fields[n][1] for n in dtype.names]


@pytest.mark.parametrize(
    "descr",
    ["O", "|O", "<O8", "(2,)f4", "i4,f8", "f4; import os", "<f4" * 20, "", 7, None, True, {"a": 1},
     [["x", "|O"]], [["x", "<f4", [True]]], [["x", "<f4", [-1]]], [[1, "<f4"]], [],
     [["x", "<f4"], ["x", "<f4"]], [["x", [["y", [["z", [["w", [["v", [["u", [["t", [["s", [["r", "<f4"]]]]]]]]]]]]]]]]]],
     "|V0", "|S0"],
    ids=repr,
)  # fmt: skip
def test_decode_dtype_refuses_unsafe_or_malformed_descrs(descr: object) -> None:
    with pytest.raises(FrameError):
        tensors.decode_dtype(descr)


def test_encode_dtype_refuses_dtypes_a_descr_cannot_express() -> None:
    overlapping = np.dtype({"names": ["a", "b"], "formats": ["<i4", "<i2"], "offsets": [0, 0]})
    with pytest.raises(TypeError, match="faithfully"):
        tensors.encode_dtype(overlapping)


@pytest.mark.parametrize(("dtype", "order"), [("<f4", "<"), (">f4", ">"), ("=i8", "<"), ("u1", "|"), ("?", "|"),
                                              ("S3", "|"), ("<i4,>f8", "|")])  # fmt: skip
def test_header_byteorder(dtype: str, order: str) -> None:
    header = tensors.encode_header(np.zeros(2, dtype), name=None, metadata=None, tag=None)
    assert json.loads(header[tensors.PREFIX_SIZE :])["byteorder"] == order


def test_encode_dtype_refuses_object_dtypes() -> None:
    with pytest.raises(TypeError, match="Python objects"):
        tensors.encode_dtype(np.dtype(object))
    with pytest.raises(TypeError, match="Python objects"):
        tensors.encode_dtype(np.dtype([("a", "<f4"), ("o", "O")]))


# ---------------------------------------------------------------------------------------------
# round trips

SHAPES = [(), (0,), (7,), (2, 3, 4), (3, 0, 2), (1, 1, 1, 5)]


def sample(dtype: np.dtype, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Arbitrary bytes for every element (NaNs and odd bit patterns included)."""
    rng = np.random.default_rng(seed)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = rng.integers(0, 256, nbytes, dtype=np.uint8)
    if dtype.kind == "b":
        raw = raw & 1  # numpy bools must be 0 or 1
    return raw.view(dtype).reshape(shape) if nbytes else np.empty(shape, dtype)


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
async def test_roundtrip_every_dtype_and_shape(pair: Pair, dtype: np.dtype) -> None:
    sent = [sample(dtype, shape, seed) for seed, shape in enumerate(SHAPES)]
    for array in sent:
        await pair.client.send(array, name=str(array.shape), metadata={"dtype": str(dtype)})
    for array in sent:
        frame = await pair.peer.recv_frame()
        assert_same(frame.array, array)
        assert frame.name == str(array.shape)
        assert frame.metadata == {"dtype": str(dtype)}


async def test_non_contiguous_inputs_are_sent_contiguous(pair: Pair) -> None:
    base = np.arange(120, dtype="<f8").reshape(4, 5, 6)
    views = [base[:, ::2], base.T, base[..., 1], base[::-1], np.asfortranarray(base)]
    for view in views:
        await pair.client.send(view)
    for view in views:
        got = await pair.peer.recv()
        np.testing.assert_array_equal(got, view)
        assert got.flags.c_contiguous


async def test_channel_is_bidirectional_and_async_iterable(pair: Pair) -> None:
    await pair.peer.send(np.arange(3))
    np.testing.assert_array_equal(await pair.client.recv(), np.arange(3))
    for i in range(5):
        await pair.client.send(np.full(4, i))
    pair.client.close()
    seen = [int(a[0]) async for a in pair.peer]
    assert seen == list(range(5))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    array=hnp.arrays(
        dtype=st.one_of(
            hnp.scalar_dtypes(),
            hnp.byte_string_dtypes(),
            hnp.unicode_string_dtypes(),
            hnp.array_dtypes(subtype_strategy=hnp.scalar_dtypes(), allow_subarrays=True),
        ).flatmap(lambda d: st.sampled_from([d, d.newbyteorder(">")])),
        shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6),
    )
)
@pytest.mark.parametrize(
    "loop_factory", [asyncio.SelectorEventLoop, uvloop.new_event_loop], ids=["asyncio", "uvloop"]
)
def test_roundtrip_property(loop_factory: Callable[[], asyncio.AbstractEventLoop], array: np.ndarray) -> None:
    # Sync test on purpose: hypothesis drives the examples, each one runs on a fresh loop.
    async def roundtrip() -> None:
        p = await open_pair()
        try:
            await p.client.send(array)
            assert_same(await p.peer.recv(), array)
        finally:
            await p.aclose()

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(asyncio.wait_for(roundtrip(), 10))


# ---------------------------------------------------------------------------------------------
# out=


async def test_recv_into_preallocated_out_returns_that_object(pair: Pair) -> None:
    sent = np.random.default_rng(1).standard_normal((256, 1024)).astype(np.float32)  # 1 MiB
    out = np.zeros_like(sent)
    pending = asyncio.ensure_future(pair.peer.recv(out=out))
    await asyncio.sleep(0)  # recv is waiting before the frame arrives: filled in place
    await pair.client.send(sent)
    got = await pending
    assert got is out
    np.testing.assert_array_equal(out, sent)


async def test_out_is_filled_in_place_for_a_stream_of_large_frames(pair: Pair) -> None:
    # Each frame is larger than the read-ahead budget, so the receiver waits for recv(out=)
    # to name the destination instead of allocating.
    frames = [np.full((1 << 19,), i, dtype=np.float32) for i in range(8)]  # 2 MiB each
    out = np.empty_like(frames[0])

    async def produce() -> None:
        for f in frames:
            await pair.client.send(f)

    producer = asyncio.ensure_future(produce())
    for i in range(len(frames)):
        assert await pair.peer.recv(out=out) is out
        assert out[0] == i and out[-1] == i
    await producer


async def test_out_for_a_frame_already_read_ahead_is_copied_into(pair: Pair) -> None:
    small = np.arange(10, dtype=np.int16)
    await pair.client.send(small)
    await asyncio.sleep(0.05)  # arrives and is read ahead before recv names out
    out = np.zeros(10, dtype=np.int16)
    assert await pair.peer.recv(out=out) is out
    np.testing.assert_array_equal(out, small)


@pytest.mark.parametrize(
    "out", [np.zeros(11, np.int16), np.zeros(10, np.int32), np.zeros(10, ">i2"), np.zeros((2, 5), np.int16)], ids=repr
)
async def test_wrong_out_raises_and_keeps_the_frame(pair: Pair, out: np.ndarray) -> None:
    sent = np.arange(10, dtype="<i2")
    await pair.client.send(sent)
    with pytest.raises(ValueError, match="frame stays queued"):
        await pair.peer.recv(out=out)
    np.testing.assert_array_equal(await pair.peer.recv(), sent)


async def test_wrong_out_for_a_large_waiting_frame_keeps_it(pair: Pair) -> None:
    sent = np.arange(1 << 20, dtype=np.float32)  # over the read-ahead budget: waits for recv
    sending = pair.client.send_nowait(sent)  # completes only once the receiver reads it
    await asyncio.sleep(0.05)
    with pytest.raises(ValueError, match="frame stays queued"):
        await pair.peer.recv(out=np.empty(3, np.float32))
    out = np.empty_like(sent)
    assert await pair.peer.recv(out=out) is out
    np.testing.assert_array_equal(out, sent)
    await sending


def test_out_must_be_contiguous_and_writeable() -> None:
    with pytest.raises(ValueError, match="C-contiguous"):
        tensors._Destination.of(np.zeros((4, 4))[:, ::2], False)
    readonly = np.zeros(4)
    readonly.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        tensors._Destination.of(readonly, False)


# ---------------------------------------------------------------------------------------------
# pipelining and backpressure


async def test_many_frames_pipelined_in_order(pair: Pair) -> None:
    rng = np.random.default_rng(2)
    arrays = [rng.standard_normal(int(n)).astype(np.float32) for n in rng.integers(0, 50_000, 300)]
    futures = [pair.client.send_nowait(a, name=f"f{i}", metadata=i) for i, a in enumerate(arrays)]

    async def consume() -> None:
        for i, a in enumerate(arrays):
            frame = await pair.peer.recv_frame()
            assert (frame.name, frame.metadata) == (f"f{i}", i)
            np.testing.assert_array_equal(frame.array, a)

    await asyncio.wait_for(asyncio.gather(consume(), *futures), 30)


async def test_concurrent_sends_keep_frames_whole(pair: Pair) -> None:
    arrays = [np.full(200_000, i, np.int32) for i in range(10)]

    async def consume() -> list[int]:
        return [int((await pair.peer.recv())[0]) for _ in arrays]

    # Each send returns only once the kernel released its array, i.e. once the receiver has
    # taken in most of it, so the consumer must run concurrently.
    *_, got = await asyncio.wait_for(asyncio.gather(*(pair.client.send(a) for a in arrays), consume()), 10)
    assert sorted(got) == list(range(10))


async def test_slow_receiver_bounds_sender_memory(pair: Pair) -> None:
    high = 1 << 20
    pair.client.transport.set_write_buffer_limits(high=high, low=high // 2)
    array = np.ones(1 << 20, np.uint8)  # 1 MiB per frame
    peak = 0

    async def produce() -> None:
        nonlocal peak
        for _ in range(48):  # 48 MiB, far more than socket buffers hold
            await pair.client.drain()
            pair.client.send_nowait(array)
            peak = max(peak, pair.client.transport.get_write_buffer_size())

    producer = asyncio.ensure_future(produce())
    await asyncio.sleep(0.3)
    assert not producer.done(), "the sender should be held back by a receiver that doesn't read"
    assert peak <= high + array.nbytes + 4096  # + one frame header
    for _ in range(48):
        await pair.peer.recv()
    await asyncio.wait_for(producer, 10)
    assert peak <= high + array.nbytes + 4096  # + one frame header


async def test_send_returns_after_the_kernel_released_the_array(pair: Pair) -> None:
    array = np.arange(1 << 22, dtype=np.uint8)
    expected = array.copy()
    receiving = asyncio.ensure_future(pair.peer.recv())
    completion = await pair.client.send(array)
    assert completion.nbytes == array.nbytes
    array[:] = 0  # allowed now: the bytes on the wire must be the original ones
    np.testing.assert_array_equal(await receiving, expected)


# ---------------------------------------------------------------------------------------------
# errors


async def test_object_dtype_is_refused() -> None:
    p = await open_pair()
    try:
        with pytest.raises(TypeError, match="Python objects"):
            await p.client.send(np.array([1, "a"], dtype=object))
        with pytest.raises(TypeError, match="numpy arrays or torch tensors"):
            await p.client.send([1, 2, 3])
        with pytest.raises(TypeError, match="JSON"):
            await p.client.send(np.zeros(2), metadata={"x": object()})
    finally:
        await p.aclose()


async def test_send_after_close_raises(pair: Pair) -> None:
    pair.client.close()
    with pytest.raises(ChannelClosed):
        await pair.client.send(np.zeros(3))


async def test_clean_close_ends_iteration_and_recv_raises_closed(pair: Pair) -> None:
    pair.client.close()
    assert [a async for a in pair.peer] == []
    with pytest.raises(ChannelClosed):
        await pair.peer.recv()


async def test_peer_closing_mid_body_raises_incomplete_frame() -> None:
    header = {"dtype": "<f4", "shape": [1000], "name": None, "metadata": None, "tag": None}
    chan, server = await channel_to_raw_peer(frame_bytes(header, 4000, b"\0" * 1500))
    try:
        with pytest.raises(IncompleteFrame, match="middle of a frame"):
            await asyncio.wait_for(chan.recv(), 5)
        assert isinstance(IncompleteFrame("x"), ConnectionError)
    finally:
        chan.close()
        server.close()


async def test_peer_closing_mid_body_with_out_waiting() -> None:
    header = {"dtype": "<f4", "shape": [1 << 20], "name": None, "metadata": None, "tag": None}
    chan, server = await channel_to_raw_peer(frame_bytes(header, 4 << 20, b"\1" * 300_000))
    try:
        with pytest.raises(IncompleteFrame):
            await asyncio.wait_for(chan.recv(out=np.empty(1 << 20, np.float32)), 5)
    finally:
        chan.close()
        server.close()


async def test_peer_closing_mid_header_raises_incomplete_frame() -> None:
    header = {"dtype": "<f4", "shape": [4], "name": None, "metadata": None, "tag": None}
    chan, server = await channel_to_raw_peer(frame_bytes(header, 16)[:30])
    try:
        with pytest.raises(IncompleteFrame):
            await asyncio.wait_for(chan.recv(), 5)
    finally:
        chan.close()
        server.close()


async def test_complete_frames_before_a_disconnect_are_still_delivered() -> None:
    header = {"dtype": "<i2", "shape": [3], "name": "ok", "metadata": None, "tag": None}
    good = frame_bytes(header, 6, np.array([1, 2, 3], "<i2").tobytes())
    chan, server = await channel_to_raw_peer(good + good + good[:10])
    try:
        await asyncio.sleep(0.05)
        for _ in range(2):
            np.testing.assert_array_equal(await chan.recv(), [1, 2, 3])
        with pytest.raises(IncompleteFrame):
            await asyncio.wait_for(chan.recv(), 5)
    finally:
        chan.close()
        server.close()


MALFORMED = {
    "bad magic": frame_bytes({"dtype": "<f4", "shape": [1]}, 4, magic=b"NOPE"),
    "not json": frame_bytes(b"{not json", 4),
    "not utf-8": frame_bytes(b"\xff\xfe", 4),
    "header is a list": frame_bytes(b"[1, 2]", 4),
    "missing shape": frame_bytes({"dtype": "<f4"}, 4),
    "object dtype": frame_bytes({"dtype": "|O", "shape": [1]}, 8),
    "pickle-ish dtype": frame_bytes({"dtype": "cos\nsystem\n", "shape": [1]}, 8),
    "nbytes mismatch": frame_bytes({"dtype": "<f4", "shape": [10]}, 41),
    "negative dim": frame_bytes({"dtype": "<f4", "shape": [-1]}, 0),
    "float dim": frame_bytes({"dtype": "<f4", "shape": [2.0]}, 8),
    "too many dims": frame_bytes({"dtype": "<f4", "shape": [1] * 65}, 4),
    "huge dims, zero bytes": frame_bytes({"dtype": "<f4", "shape": [0, 1 << 60]}, 0),
    "byteorder contradicts dtype": frame_bytes({"dtype": "<f4", "byteorder": ">", "shape": [1]}, 4),
    "bad name": frame_bytes({"dtype": "<f4", "shape": [1], "name": 5}, 4),
    "bad tag": frame_bytes({"dtype": "<u2", "shape": [1], "tag": "__import__"}, 2),
    "deep metadata": frame_bytes(b'{"dtype":"<f4","shape":[1],"metadata":' + b"[" * 20000 + b"]" * 20000 + b"}", 4),
}


@pytest.mark.parametrize("payload", list(MALFORMED.values()), ids=list(MALFORMED))
async def test_malformed_header_raises_frame_error(payload: bytes) -> None:
    chan, server = await channel_to_raw_peer(payload + b"\0" * 64, close=False)
    try:
        with pytest.raises(FrameError):
            await asyncio.wait_for(chan.recv(), 5)
        await asyncio.wait_for(chan.wait_closed(), 5)  # the connection is aborted: can't resync
        with pytest.raises(FrameError):  # and the error sticks
            await chan.recv()
    finally:
        chan.close()
        server.close()


async def test_oversize_header_is_refused_before_reading_it() -> None:
    prefix = struct.pack("<4sHHIQ", b"AZTF", 1, 0, 1 << 31, 4)
    chan, server = await channel_to_raw_peer(prefix, close=False)
    try:
        with pytest.raises(FrameTooLarge, match="max_header_bytes"):
            await asyncio.wait_for(chan.recv(), 5)
    finally:
        chan.close()
        server.close()


async def test_header_over_a_custom_cap_is_refused() -> None:
    header = {"dtype": "<f4", "shape": [1], "metadata": "x" * 5000}
    chan, server = await channel_to_raw_peer(frame_bytes(header, 4, b"\0" * 4), close=False, max_header_bytes=4096)
    try:
        with pytest.raises(FrameTooLarge):
            await asyncio.wait_for(chan.recv(), 5)
    finally:
        chan.close()
        server.close()


@pytest.mark.parametrize("nbytes", [1 << 40, (1 << 64) - 1])
async def test_oversize_body_is_refused_before_allocating(nbytes: int) -> None:
    # A header that is otherwise consistent: only max_frame_bytes protects the receiver.
    shape = [nbytes // 8, 8] if nbytes % 8 == 0 else [nbytes]
    payload = frame_bytes({"dtype": "|u1", "shape": shape}, nbytes)
    chan, server = await channel_to_raw_peer(payload, close=False)
    try:
        with pytest.raises(FrameTooLarge, match="max_frame_bytes"):
            await asyncio.wait_for(chan.recv(), 5)
    finally:
        chan.close()
        server.close()


async def test_max_frame_bytes_is_enforced_on_both_ends() -> None:
    p = await open_pair(max_frame_bytes=1000)
    try:
        with pytest.raises(FrameTooLarge):
            await p.client.send(np.zeros(1001, np.uint8))
        await p.client.send(np.zeros(1000, np.uint8))
        assert (await p.peer.recv()).nbytes == 1000
    finally:
        await p.aclose()


async def test_second_concurrent_recv_is_refused(pair: Pair) -> None:
    first = asyncio.ensure_future(pair.peer.recv())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="already waiting"):
        await pair.peer.recv()
    await pair.client.send(np.arange(3))
    np.testing.assert_array_equal(await first, np.arange(3))


async def test_cancelled_recv_does_not_lose_the_frame(pair: Pair) -> None:
    waiting = asyncio.ensure_future(pair.peer.recv(out=np.empty(1 << 20, np.float32)))
    await asyncio.sleep(0)
    waiting.cancel()
    sent = np.arange(1 << 20, dtype=np.float32)
    sending = asyncio.ensure_future(pair.client.send(sent))
    np.testing.assert_array_equal(await asyncio.wait_for(pair.peer.recv(), 5), sent)
    await sending


async def test_context_manager_closes(pair: Pair) -> None:
    async with pair.client as chan:
        await chan.send(np.zeros(1))
    assert chan.is_closing()
    with pytest.raises(ChannelClosed):
        await asyncio.wait_for(pair.client.recv(), 5)


async def test_handler_runs_per_connection_and_echoes() -> None:
    async def echo(chan: Channel) -> None:
        async for frame in chan.frames():
            await chan.send(frame.array * 2, name=frame.name, metadata=frame.metadata)

    server = await tensors.serve(echo, HOST, 0)
    port = server.sockets[0].getsockname()[1]
    try:
        clients = [await tensors.connect(HOST, port) for _ in range(3)]
        for i, chan in enumerate(clients):
            await chan.send(np.arange(4) + i, name="n", metadata={"i": i})
        for i, chan in enumerate(clients):
            frame = await chan.recv_frame()
            np.testing.assert_array_equal(frame.array, (np.arange(4) + i) * 2)
            assert frame.metadata == {"i": i}
        for chan in clients:
            chan.close()
            await chan.wait_closed()
    finally:
        server.close()
        await asyncio.wait_for(server.wait_closed(), 5)


# ---------------------------------------------------------------------------------------------
# torch (optional)

try:
    import torch
except ImportError:  # pragma: no cover - depends on the environment
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed (optional dependency)")


@needs_torch
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "bool", "int64", "complex64", "uint8"])
async def test_torch_roundtrip(pair: Pair, dtype: str) -> None:
    sent = (torch.arange(24, dtype=torch.float32).reshape(2, 3, 4) - 7).to(getattr(torch, dtype))
    await pair.client.send(sent, name=dtype)
    got = await pair.peer.recv(as_torch=True)
    assert isinstance(got, torch.Tensor)
    assert got.dtype == sent.dtype and got.shape == sent.shape
    assert torch.equal(got, sent)


@needs_torch
async def test_torch_bfloat16_reaches_numpy_as_raw_bits_and_torch_as_bfloat16(pair: Pair) -> None:
    sent = torch.tensor([1.5, -2.0, 3.25], dtype=torch.bfloat16)
    await pair.client.send(sent)
    await pair.client.send(sent)
    raw = await pair.peer.recv_frame()
    assert raw.tag == "bfloat16" and raw.array.dtype == np.uint16
    np.testing.assert_array_equal(raw.array, sent.view(torch.int16).numpy().view(np.uint16))
    out = torch.zeros(3, dtype=torch.bfloat16)
    assert await pair.peer.recv(out=out) is out
    assert torch.equal(out, sent)


@needs_torch
async def test_torch_out_tensor_is_filled_in_place(pair: Pair) -> None:
    sent = torch.randn(512, 512)
    out = torch.empty(512, 512)
    pending = asyncio.ensure_future(pair.peer.recv(out=out))
    await asyncio.sleep(0)
    await pair.client.send(sent)
    assert await pending is out
    assert torch.equal(out, sent)
    sending = pair.client.send_nowait(sent)
    with pytest.raises(ValueError, match="frame stays queued"):
        await pair.peer.recv(out=torch.empty(512, 512, dtype=torch.float64))
    assert torch.equal(await pair.peer.recv(as_torch=True), sent)
    await sending


@needs_torch
async def test_torch_non_contiguous_and_grad_tensors(pair: Pair) -> None:
    base = torch.randn(6, 8, requires_grad=True)
    view = base.t()[::2]
    await pair.client.send(view)
    got = await pair.peer.recv()
    assert isinstance(got, np.ndarray)
    np.testing.assert_array_equal(got, view.detach().numpy())


# ---------------------------------------------------------------------------------------------
# the example and the benchmark still run (tiny sizes: they spawn processes)


def test_example_streams_between_two_processes() -> None:
    import subprocess
    import sys
    from pathlib import Path

    example = Path(__file__).resolve().parent.parent / "examples" / "tensor_stream.py"
    done = subprocess.run(
        [sys.executable, str(example), "--size-mib", "1", "--count", "8"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "consumer: 8 MiB" in done.stdout and "producer: 8 MiB" in done.stdout


def test_benchmark_runs_and_reports_ratios() -> None:
    import argparse

    from aiozc.tools import bench_tensors

    args = argparse.Namespace(sizes_mib=[1], total_mib=2, min_frames=2, repeat=1, peers=["aiozc", "mp"])
    result = bench_tensors.run(args)
    assert {row["series"] for row in result["rows"]} == {"aiozc.tensors", "multiprocessing.connection"}
    assert all(row["gbps"] > 0 for row in result["rows"])
    assert result["ratios"]["1 MiB"]["best_peer"] == "multiprocessing.connection"
    json.dumps(result)


async def test_socket_buffer_option_sets_both_buffers() -> None:
    import socket

    p = await open_pair(socket_buffer_bytes=1 << 20)
    try:
        sock = p.client.get_extra_info("socket")
        # Linux doubles the value for bookkeeping; it is capped at rmem_max / wmem_max.
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= 1 << 20
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) >= 1 << 20
        await p.client.send(np.arange(5))
        np.testing.assert_array_equal(await p.peer.recv(), np.arange(5))
    finally:
        await p.aclose()
