"""Tensor bodies over mapped pages: wire version 2's padding and the lease path of the channel.

The first half runs anywhere: the padding arithmetic, the prefix checks, and the protocol fed
leases over an anonymous mmap (what the transport hands it, minus the kernel). The second half
streams through a real ``zc_receive`` transport in a namespace whose lo has MTU 61492 (an MSS
of 15 whole pages), from a tensor channel whose transport is held to MSG_ZEROCOPY.
"""

from __future__ import annotations

import asyncio
import itertools
import mmap
import socket
import struct
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from aiozc import tensors, zcrx
from aiozc.tensors.frames import (
    ALIGN_BODIES_FROM,
    BODY_ALIGN,
    PREFIX_SIZE,
    VERSION,
    VERSION_PADDED,
    ChannelOptions,
    encode_header,
    parse_frame_prefix,
)
from aiozc.tensors.receive import _TensorProtocol
from aiozc.tools.netns import NetNamespace
from zcrx_rig import mss_namespace

KiB = 1 << 10
_names = itertools.count()


def mapped_region_of(array: np.ndarray) -> Any:
    """The mmap under ``array`` (following .base), or None for memory of its own."""
    base: Any = array
    while isinstance(base, np.ndarray):
        base = base.base
    return base.obj if isinstance(base, memoryview) else None


def arrays_of(sizes: list[int], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [np.frombuffer(rng.bytes(n), np.uint8).copy() for n in sizes]


def encode_stream(arrays: list[np.ndarray], align_from: int | None = ALIGN_BODIES_FROM) -> tuple[bytes, list[int]]:
    """The bytes a Channel sends for ``arrays`` and the stream offset of each body."""
    parts: list[bytes] = []
    starts: list[int] = []
    offset = 0
    for array in arrays:
        header = encode_header(array, name=None, metadata=None, tag=None, stream_offset=offset, align_from=align_from)
        starts.append(offset + len(header))
        parts += [header, array.tobytes()]
        offset += len(header) + array.nbytes
    return b"".join(parts), starts


# ------------------------------------------------------------------------------------------
# Wire version 2


@pytest.mark.parametrize("offset", [0, 1, 20, 4095, 4096, 123_457])
def test_large_bodies_start_at_4096_aligned_offsets(offset: int) -> None:
    for nbytes in (ALIGN_BODIES_FROM, 1 << 20):
        array = np.zeros(nbytes, np.uint8)
        header = encode_header(array, name="x", metadata=None, tag=None, stream_offset=offset,
                               align_from=ALIGN_BODIES_FROM)
        assert (offset + len(header)) % BODY_ALIGN == 0
        header_len, padding, got = parse_frame_prefix(header[:PREFIX_SIZE], ChannelOptions())
        assert got == nbytes and PREFIX_SIZE + header_len + padding == len(header)
        version = struct.unpack_from("<H", header, 4)[0]
        assert version == (VERSION_PADDED if padding else VERSION)
        assert header[PREFIX_SIZE + header_len :] == bytes(padding)


def test_small_bodies_and_align_none_are_version_1_unpadded() -> None:
    for nbytes, align_from in ((ALIGN_BODIES_FROM - 1, ALIGN_BODIES_FROM), (0, 0), (1 << 20, None)):
        header = encode_header(np.zeros(nbytes, np.uint8), name=None, metadata=None, tag=None,
                               stream_offset=7, align_from=align_from)
        assert struct.unpack_from("<HH", header, 4) == (VERSION, 0)
        assert parse_frame_prefix(header[:PREFIX_SIZE], ChannelOptions())[1] == 0


@pytest.mark.parametrize("version,flags", [(VERSION, 1), (VERSION_PADDED, 0), (VERSION_PADDED, 4096),
                                           (VERSION_PADDED, 0xFFFF), (3, 0)])
def test_prefix_with_bad_version_or_padding_is_refused(version: int, flags: int) -> None:
    prefix = struct.pack("<4sHHIQ", b"AZTF", version, flags, 30, 8)
    with pytest.raises(tensors.FrameError):
        parse_frame_prefix(prefix, ChannelOptions())


def test_option_is_checked() -> None:
    assert ChannelOptions(align_bodies_from=None).align_bodies_from is None
    with pytest.raises(ValueError):
        ChannelOptions(align_bodies_from=-1)


# ------------------------------------------------------------------------------------------
# The protocol fed leases over an anonymous mmap


class FakeTransport:
    def __init__(self) -> None:
        self.reading = True
        self.aborted = False

    def is_closing(self) -> bool:
        return self.aborted

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def abort(self) -> None:
        self.aborted = True

    def close(self) -> None:
        self.aborted = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class FakeLease:
    def __init__(self, view: memoryview) -> None:
        self.view = view


def protocol_of(**options: Any) -> tuple[_TensorProtocol, FakeTransport]:
    options.setdefault("readahead_bytes", 64 << 20)
    protocol = _TensorProtocol(ChannelOptions(**options))
    transport = FakeTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    return protocol, transport


def feed_leases(protocol: _TensorProtocol, region: mmap.mmap, total: int, lease_bytes: int) -> None:
    """What the transport does with leases of ``lease_bytes`` (page multiples) over ``region``:
    lease_received, then the bytes it did not take copied through get_buffer."""
    view = memoryview(region).toreadonly()  # the pool's regions are PROT_READ
    for start in range(0, total, lease_bytes):
        lease = view[start : min(start + lease_bytes, total)]
        taken = protocol.lease_received(FakeLease(lease))
        assert taken == len(lease)  # reading never pauses here: read-ahead has room for all
        lease.release()
    view.release()


def drain_ready(protocol: _TensorProtocol) -> list[np.ndarray]:
    return [held.frame.array for held in protocol._ready]


def expected_mapped(sizes: list[int], starts: list[int], lease_bytes: int) -> list[bool]:
    """Which bodies sit on a page start and inside one lease."""
    return [
        n >= ALIGN_BODIES_FROM and start % BODY_ALIGN == 0 and start // lease_bytes == (start + n - 1) // lease_bytes
        for n, start in zip(sizes, starts)
    ]


@pytest.mark.parametrize("lease_bytes", [64 * KiB, 256 * KiB, 1 << 20])
async def test_page_aligned_bodies_are_taken_out_of_the_middle_of_leases(lease_bytes: int) -> None:
    sizes = [256 * KiB, 10, 0, 64 * KiB, 300 * KiB + 12, 64 * KiB - 1, 4 * KiB, 1 << 20, 3, 200 * KiB] * 2
    arrays = arrays_of(sizes)
    stream, starts = encode_stream(arrays)
    region = mmap.mmap(-1, -(-len(stream) // BODY_ALIGN) * BODY_ALIGN)
    region[: len(stream)] = stream
    protocol, transport = protocol_of()
    feed_leases(protocol, region, len(stream), lease_bytes)
    got = drain_ready(protocol)
    assert not transport.aborted and len(got) == len(arrays)
    for received, sent in zip(got, arrays):
        assert np.array_equal(received, sent)
    mapped = [mapped_region_of(a) is region for a in got]
    assert mapped == expected_mapped(sizes, starts, lease_bytes)
    if lease_bytes >= 256 * KiB:
        assert sum(mapped) >= 2  # the expectation is not vacuous (64 KiB leases fit few bodies)
    for array, is_mapped in zip(got, mapped):
        assert array.flags.writeable != is_mapped  # mapped pages are read-only, copies not
    # Every large body got padded onto a page start (small ones never are).
    assert all(start % BODY_ALIGN == 0 for n, start in zip(sizes, starts) if n >= ALIGN_BODIES_FROM)
    # The arrays hold the region: it cannot be unmapped until they are gone.
    if any(mapped):
        with pytest.raises(BufferError):
            region.close()
    protocol._ready.clear()
    del got, array, received
    region.close()


@pytest.mark.parametrize("nbytes", [40, 4 * KiB, ALIGN_BODIES_FROM - 1])
async def test_small_body_at_the_start_of_a_lease_is_copied(nbytes: int) -> None:
    """A body below ALIGN_BODIES_FROM is copied even when a lease happens to start with it
    (which depends on when the receiver read): a 40-byte array must not hold a region."""
    arrays = arrays_of([nbytes])
    stream, starts = encode_stream(arrays)
    region = mmap.mmap(-1, -(-len(stream) // BODY_ALIGN) * BODY_ALIGN)
    region[: len(stream)] = stream
    protocol, transport = protocol_of()
    view = memoryview(region).toreadonly()
    for lease in (view[: starts[0]], view[starts[0] : len(stream)]):
        assert protocol.lease_received(FakeLease(lease)) == len(lease)
        lease.release()
    view.release()
    (got,) = drain_ready(protocol)
    assert not transport.aborted and np.array_equal(got, arrays[0])
    assert mapped_region_of(got) is not region and got.flags.writeable
    protocol._ready.clear()
    del got
    region.close()  # nothing holds the region


async def test_unpadded_stream_maps_only_bodies_that_happen_to_start_a_page() -> None:
    arrays = arrays_of([256 * KiB] * 4)
    stream, starts = encode_stream(arrays, align_from=None)
    region = mmap.mmap(-1, -(-len(stream) // BODY_ALIGN) * BODY_ALIGN)
    region[: len(stream)] = stream
    protocol, _ = protocol_of()
    feed_leases(protocol, region, len(stream), 1 << 20)
    got = drain_ready(protocol)
    assert [mapped_region_of(a) is region for a in got] == expected_mapped([a.nbytes for a in arrays], starts, 1 << 20)
    assert not any(mapped_region_of(a) is region for a in got)  # headers of ~60 bytes: none start a page
    for received, sent in zip(got, arrays):
        assert np.array_equal(received, sent)


async def test_recv_out_is_filled_in_place_from_a_lease() -> None:
    arrays = arrays_of([256 * KiB, 256 * KiB])
    stream, _ = encode_stream(arrays)
    region = mmap.mmap(-1, -(-len(stream) // BODY_ALIGN) * BODY_ALIGN)
    region[: len(stream)] = stream
    protocol, _ = protocol_of(readahead_bytes=0)  # nothing read ahead: the header waits for recv()
    out = np.empty_like(arrays[0])
    pending = asyncio.ensure_future(protocol.channel.recv(out=out))
    await asyncio.sleep(0)
    view = memoryview(region).toreadonly()[: len(stream)]
    taken = protocol.lease_received(FakeLease(view))
    assert await pending is out and np.array_equal(out, arrays[0])
    # The second frame's header paused reading (no recv waits): the rest is left to the
    # transport, which holds it back until resume_reading.
    assert protocol._state == "wait-dest" and taken < len(view)
    second = asyncio.ensure_future(protocol.channel.recv())
    await asyncio.sleep(0)
    rest = view[taken:]
    assert protocol.lease_received(FakeLease(rest)) == len(rest)
    got = await second
    assert np.array_equal(got, arrays[1])
    assert mapped_region_of(got) is region and not got.flags.writeable  # nobody asked for out=
    del got, second
    rest.release()
    view.release()
    await asyncio.sleep(0)  # the loop's done callbacks still hold the task (and its result)
    region.close()


@pytest.mark.parametrize("chunk", [1, 7, 4096, 65536, 1 << 20])
async def test_padded_stream_over_the_plain_path(chunk: int) -> None:
    sizes = [256 * KiB, 10, 0, 64 * KiB, 5, 300 * KiB + 12]
    arrays = arrays_of(sizes, seed=chunk)
    stream, _ = encode_stream(arrays)
    protocol, transport = protocol_of()
    view = memoryview(stream)
    offset = 0
    while offset < len(view):
        buf = protocol.get_buffer(chunk)
        n = min(len(buf), chunk, len(view) - offset)
        buf[:n] = view[offset : offset + n]
        protocol.buffer_updated(n)
        offset += n
    got = drain_ready(protocol)
    assert not transport.aborted and len(got) == len(arrays)
    for received, sent in zip(got, arrays):
        assert np.array_equal(received, sent)


# ------------------------------------------------------------------------------------------
# Through a zc_receive transport in the MSS namespace


@pytest.fixture(scope="module")
def mss_ns() -> Iterator[NetNamespace]:
    yield from mss_namespace("tzc")


def zc_config() -> zcrx.ZeroCopyReceive:
    # A pool of its own per test (distinct regions count): held counts are the test's alone.
    return zcrx.ZeroCopyReceive(chunk=1 << 20, regions=80 + next(_names))


async def stream_through(mss_ns: NetNamespace, arrays: list[np.ndarray], zc: zcrx.ZeroCopyReceive | None,
                         **sender_options: Any) -> tuple[list[np.ndarray], Any]:
    """Send ``arrays`` over a tensor channel (MSG_ZEROCOPY held on), receive them with ``zc``."""
    received: list[np.ndarray] = []
    done = asyncio.Event()
    stats: list[Any] = []

    async def handler(chan: Any) -> None:
        async for array in chan:
            received.append(array)
        stats.append(chan.transport.stats.extra.get("zc_receive"))
        done.set()

    listener = mss_ns.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    extra = {"zc_receive": zc} if zc is not None else {}
    server = await tensors.serve(handler, None, None, sock=listener, **extra)
    sock = mss_ns.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, listener.getsockname())
        # The kernel reports every loopback zero-copy send copied; without this the policy
        # would go back to plain sends, whose pages do not map.
        chan = await tensors.connect(None, None, sock=sock, fallback_after=1 << 30, probe_first=False, **sender_options)
        sends = [chan.send_nowait(a) for a in arrays]
        await asyncio.wait_for(asyncio.gather(*sends), 30)
        chan.close()
        await asyncio.wait_for(done.wait(), 30)
    finally:
        server.close()
        await server.wait_closed()
    assert len(received) == len(arrays)
    for got, sent in zip(received, arrays):
        assert np.array_equal(got, sent)
    return received, stats[0]


def count_mapped(arrays: list[np.ndarray]) -> int:
    return sum(isinstance(mapped_region_of(a), mmap.mmap) for a in arrays)


async def test_large_frames_arrive_over_mapped_pages_and_hold_their_regions(mss_ns) -> None:
    zc = zc_config()
    arrays = arrays_of([256 * KiB] * 16)
    received, stats = await stream_through(mss_ns, arrays, zc)
    mapped = count_mapped(received)
    print(f"tensor frames over mapped pages: {mapped} of {len(received)}; stats {stats}")
    assert mapped >= 15
    for array in received:
        if isinstance(mapped_region_of(array), mmap.mmap):
            assert not array.flags.writeable
    pool = zc.pool()
    kept = next(a for a in received if isinstance(mapped_region_of(a), mmap.mmap))
    keep_copy = kept.copy()
    received.clear()
    del array
    await wait_for(lambda: pool.collect() == 1 and pool.held == 1, "all regions but the kept array's to free")
    assert np.array_equal(kept, keep_copy)  # still mapped, still the data
    del kept
    await wait_for(lambda: pool.collect() == 0 and pool.held == 0, "the last region to free with its array")


async def test_mixed_sizes_over_mapped_pages(mss_ns) -> None:
    sizes = [256 * KiB, 10, 0, 64 * KiB, 300 * KiB + 12, 100, 64 * KiB - 1, 512 * KiB, 3, 128 * KiB] * 3
    arrays = arrays_of(sizes, seed=1)
    received, stats = await stream_through(mss_ns, arrays, zc_config())
    small = [a for a, n in zip(received, sizes) if n < BODY_ALIGN]
    large = [a for a, n in zip(received, sizes) if n >= ALIGN_BODIES_FROM]
    print(f"mixed: {count_mapped(large)} of {len(large)} large bodies mapped; stats {stats}")
    assert count_mapped(small) == 0
    assert count_mapped(large) >= len(large) // 2


async def test_header_only_and_small_frames(mss_ns) -> None:
    arrays = [np.zeros((0, 3), np.float32), np.arange(5, dtype=np.int64)] * 50 + arrays_of([256 * KiB])
    received, _ = await stream_through(mss_ns, arrays, zc_config())
    assert [a.shape for a in received] == [a.shape for a in arrays]
    assert count_mapped(received[:-1]) == 0


async def test_without_zc_receive_nothing_is_mapped(mss_ns) -> None:
    received, stats = await stream_through(mss_ns, arrays_of([256 * KiB] * 4), None)
    assert stats is None and count_mapped(received) == 0
    assert all(a.flags.writeable for a in received)


async def test_unpadded_sender_is_still_read(mss_ns) -> None:
    received, _ = await stream_through(mss_ns, arrays_of([256 * KiB] * 4), zc_config(), align_bodies_from=None)
    assert len(received) == 4


async def wait_for(predicate: Any, what: str, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def test_body_that_cannot_be_allocated_fails_when_its_bytes_are_copied() -> None:
    """Over leases the array is made only once a body turns out not to be mapped; numpy's
    refusal then still fails recv() and the connection."""
    import json

    small, _ = encode_stream(arrays_of([10]))
    doc = json.dumps({"dtype": "|u1", "shape": [1 << 46]}).encode()
    huge = struct.pack("<4sHHIQ", b"AZTF", VERSION, 0, len(doc), 1 << 46) + doc
    region = mmap.mmap(-1, 4 * BODY_ALIGN)
    stream = small + huge + b"\xab" * 100  # the body's first bytes, mid-page: copied
    region[: len(stream)] = stream
    protocol, transport = protocol_of(max_frame_bytes=1 << 47)
    view = memoryview(region).toreadonly()
    assert np.array_equal(await_ready(protocol, view[: len(small)]), arrays_of([10])[0])
    pending = asyncio.ensure_future(protocol.channel.recv())
    await asyncio.sleep(0)
    protocol.lease_received(FakeLease(view[len(small) : len(stream)]))
    with pytest.raises(tensors.FrameError):
        await pending
    assert transport.aborted


def await_ready(protocol: _TensorProtocol, lease: memoryview) -> np.ndarray:
    assert protocol.lease_received(FakeLease(lease)) == len(lease)
    return protocol._ready.popleft().frame.array
