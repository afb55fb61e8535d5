"""The zc:// wire format: one message = a prefix, a frame table, then the frames' bytes.

dask's ``to_frames`` cuts every frame over ``distributed.comm.shard`` (64 MiB) into shards,
memoryview slices of one array. On receive dask rejoins a frame's shards without a copy only
when they are adjacent slices of one buffer; otherwise ``host_array_from_buffers`` copies them
(dask's own tcp comm reads each shard into its own buffer, so it copies). So the table groups
frames: the receiver reads each group into one buffer with ``recv_into`` and hands dask
adjacent slices of it.

    prefix   "<4sIII": magic, number of frames, number of groups, reserved (0)
    table    nframes x u64 frame length, then ngroups x u32 frames in the group
    body     the frames, back to back

Nothing precedes the first message on a connection: dask's handshake is the first thing sent.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

MAGIC = b"zcD1"
PREFIX = struct.Struct("<4sIII")
PREFIX_SIZE = PREFIX.size

# bytes frames (msgpack, pickles, compressed data) below SMALL_FRAME share one receive buffer,
# up to SMALL_GROUP_BYTES: they are dropped as soon as they are deserialized. Object buffers
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


@dataclass(frozen=True)
class Layout:
    """Where a message's frames fall: lengths, and how many consecutive frames form each group."""

    lengths: tuple[int, ...]
    group_sizes: tuple[int, ...]

    def group_bytes(self) -> list[int]:
        out, start = [], 0
        for count in self.group_sizes:
            out.append(sum(self.lengths[start : start + count]))
            start += count
        return out


def frame_nbytes(frame: object) -> int:
    return frame.nbytes if isinstance(frame, memoryview) else len(frame)  # type: ignore[arg-type]


def _exporter(frame: object) -> object | None:
    """The object a shard belongs to: shards of one dask frame are slices of one exporter."""
    if isinstance(frame, memoryview) and not isinstance(frame.obj, bytes):
        return frame.obj
    return None


def group_frames(frames: Sequence[object]) -> tuple[int, ...]:
    """Group sizes for ``frames``: each object buffer with its following shards in a group of its
    own, large bytes frames alone, small bytes frames together."""
    sizes: list[int] = []
    prev_owner: object | None = None
    small_bytes = -1  # bytes in the open group of small bytes frames; -1: none open
    for frame in frames:
        n = frame_nbytes(frame)
        owner = _exporter(frame)
        if owner is not None and owner is prev_owner:
            sizes[-1] += 1  # the next shard of the same array, however short
        elif owner is not None or n >= SMALL_FRAME:
            sizes.append(1)
            small_bytes = -1
        elif 0 <= small_bytes < SMALL_GROUP_BYTES:
            sizes[-1] += 1
            small_bytes += n
        else:
            sizes.append(1)
            small_bytes = n
        prev_owner = owner
    return tuple(sizes)


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
    if sum(groups) != nframes or any(g == 0 for g in groups):
        raise WireError(f"group sizes {groups[:8]}... do not cover the {nframes} frames")
    total = sum(lengths)
    if total > limits.max_message_bytes:
        raise WireError(f"message of {total} bytes is over the cap of {limits.max_message_bytes}")
    return Layout(lengths, groups)
