"""The zc:// wire format: one message = a prefix, a frame table, then the frames' bytes.

dask's ``to_frames`` cuts every frame over ``distributed.comm.shard`` (64 MiB) into shards,
memoryview slices of one array. On receive dask rejoins a frame's shards without a copy only
when they are adjacent slices of one buffer; otherwise ``host_array_from_buffers`` copies them
(dask's own tcp comm reads each shard into its own buffer, so it copies). So the table groups
frames: the receiver reads each group into one buffer with ``recv_into`` and hands dask
adjacent slices of it.

    prefix   "<4sIII": magic, number of frames, number of groups, reserved (0)
    table    nframes x u64 frame length (dask's order), then ngroups x u32: the number of
             consecutive frames in the group, bit 31 set for a group of small bytes frames
    body     the frames of the small-bytes groups (in dask's order), then the other groups'

dask interleaves a small header (~200 B) with every array. Sending all small bytes frames first
lets the receiver take them with one read into a few shared buffers (chunks of at most
SMALL_GROUP_BYTES), then read each array straight into its own buffer: one ``recv_into`` per
array instead of two, one send per array instead of two, and no buffer per header.

Nothing precedes the first message on a connection: dask's handshake is the first thing sent.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

MAGIC = b"zcD2"
PREFIX = struct.Struct("<4sIII")
PREFIX_SIZE = PREFIX.size
SMALL = 1 << 31  # group flag: small bytes frames, sent ahead of the others

# bytes frames (msgpack, pickles, compressed data) below SMALL_FRAME share receive buffers of up
# to SMALL_GROUP_BYTES: they are dropped as soon as they are deserialized. Object buffers
# (arrays) never share one, whatever their size: an array kept alive must not keep its
# neighbours' memory alive (dask's tcp comm has the same rule; distributed's
# test_do_not_share_buffers).
SMALL_FRAME = 64 << 10
SMALL_GROUP_BYTES = 1 << 20


class WireError(ValueError):
    """A message header that breaks the format or the configured caps."""


@dataclass(frozen=True)
class Limits:
    max_frames: int = 1 << 22
    max_message_bytes: int = 1 << 40

    def check_counts(self, nframes: int, ngroups: int) -> None:
        if nframes > self.max_frames:
            raise WireError(f"message has {nframes} frames, more than the cap of {self.max_frames}")
        if ngroups > nframes or (nframes and not ngroups):
            raise WireError(f"message has {ngroups} groups for {nframes} frames")


class Unit(NamedTuple):
    """One receive buffer: these frames (indexes in dask's order), back to back on the wire."""

    frames: tuple[int, ...]
    nbytes: int
    small: bool = False  # small bytes frames: received into a SmallFrames buffer


class SmallFrames(bytearray):
    """The receive buffer of small bytes frames. A scheduler (deserialize=False) forwards them as
    memoryviews of it; the type says they are still small bytes frames, not arrays, so the next
    hop sends them ahead too instead of a group, a write and a read per ~200 B header."""


@dataclass(frozen=True)
class Layout:
    """Where a message's frames fall: lengths, and the groups (runs of consecutive frames, each
    entry a count, with SMALL set for small bytes frames)."""

    lengths: tuple[int, ...]
    groups: tuple[int, ...]
    _units: list[Unit] = field(default_factory=list, compare=False, repr=False)

    def units(self) -> list[Unit]:
        """The receive buffers in wire order: the small bytes frames in chunks of at most
        SMALL_GROUP_BYTES (or one larger frame), then one per other group."""
        if not self._units and self.lengths:
            self._units.extend(_units(self.lengths, self.groups))
        return self._units

    def wire_order(self) -> list[int]:
        return [i for unit in self.units() for i in unit.frames]


def _units(lengths: Sequence[int], groups: Sequence[int]) -> list[Unit]:
    small: list[Unit] = []
    rest: list[Unit] = []
    chunk: list[int] = []
    chunk_bytes = 0
    start = 0
    for entry in groups:
        if not entry & SMALL:
            end = start + entry
            if entry == 1:  # the common case, one array: kept cheap (thousands a message)
                rest.append(Unit((start,), lengths[start]))
            else:
                rest.append(Unit(tuple(range(start, end)), sum(lengths[start:end])))
            start = end
            continue
        end = start + (entry & ~SMALL)
        for i in range(start, end):
            n = lengths[i]
            if chunk and chunk_bytes + n > SMALL_GROUP_BYTES:
                small.append(Unit(tuple(chunk), chunk_bytes, True))
                chunk, chunk_bytes = [], 0
            chunk.append(i)
            chunk_bytes += n
        start = end
    if chunk:
        small.append(Unit(tuple(chunk), chunk_bytes, True))
    return small + rest


def frame_nbytes(frame: object) -> int:
    return frame.nbytes if isinstance(frame, memoryview) else len(frame)  # type: ignore[arg-type]


def _exporter(frame: object) -> object | None:
    """The object a shard belongs to: shards of one dask frame are slices of one exporter."""
    if isinstance(frame, memoryview) and not isinstance(frame.obj, (bytes, SmallFrames)):
        return frame.obj
    return None


def group_frames(frames: Sequence[object]) -> tuple[int, ...]:
    """Group entries for ``frames``: each object buffer with its following shards in a group of
    its own, large bytes frames alone, runs of small bytes frames together (flagged SMALL)."""
    entries: list[int] = []
    prev_owner: object | None = None
    in_small = False  # the last entry is an open run of small bytes frames
    for frame in frames:
        owner = _exporter(frame)
        if owner is not None and owner is prev_owner:
            entries[-1] += 1  # the next shard of the same array, however short
            in_small = False
        elif owner is not None or frame_nbytes(frame) >= SMALL_FRAME:
            entries.append(1)
            in_small = False
        elif in_small:
            entries[-1] += 1
        else:
            entries.append(SMALL | 1)
            in_small = True
        prev_owner = owner
    return tuple(entries)


def encode_header(frames: Sequence[object]) -> tuple[bytes, Layout]:
    lengths = tuple(frame_nbytes(f) for f in frames)
    groups = group_frames(frames)
    header = b"".join((
        PREFIX.pack(MAGIC, len(lengths), len(groups), 0),
        struct.pack(f"<{len(lengths)}Q", *lengths),
        struct.pack(f"<{len(groups)}I", *groups),
    ))
    return header, Layout(lengths, groups)


def parse_prefix(data: memoryview, limits: Limits) -> tuple[int, int]:
    """(nframes, ngroups) from the prefix; raises WireError. The table is 8n + 4g bytes."""
    magic, nframes, ngroups, reserved = PREFIX.unpack(data)
    if magic != MAGIC or reserved:
        raise WireError(f"not a zc:// message (prefix {bytes(data)!r})")
    limits.check_counts(nframes, ngroups)
    return nframes, ngroups


def table_size(nframes: int, ngroups: int) -> int:
    return 8 * nframes + 4 * ngroups


def parse_table(data: memoryview, nframes: int, ngroups: int, limits: Limits) -> Layout:
    lengths = struct.unpack_from(f"<{nframes}Q", data, 0)
    groups = struct.unpack_from(f"<{ngroups}I", data, 8 * nframes)
    counts = [g & ~SMALL for g in groups]
    if sum(counts) != nframes or 0 in counts:
        raise WireError(f"group sizes {counts[:8]}... do not cover the {nframes} frames")
    total = sum(lengths)
    if total > limits.max_message_bytes:
        raise WireError(f"message of {total} bytes is over the cap of {limits.max_message_bytes}")
    return Layout(lengths, groups)
