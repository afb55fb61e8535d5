"""The wire format: prefix, JSON header, limits; encoding a frame and validating one.

Wire format (one frame per array)::

    prefix  20 bytes, struct "<4sHHIQ": magic b"AZTF", version, flags,
            header_len, body_nbytes
    header  header_len bytes of UTF-8 JSON:
              {"dtype": <descr>, "byteorder": "<" | ">" | "|", "shape": [d0, ...],
               "name": str | null, "metadata": <any JSON> | null,
               "tag": null | <torch dtype name>}
    padding version 1: none, flags 0. Version 2: flags (1..4095) zero bytes, so that the body
            starts at a stream offset that is a multiple of 4096 (see ALIGN_BODIES_FROM)
    body    body_nbytes raw bytes of the array in C order

Each frame says its own padding, so a receiver reads both versions. A sender writes version 2
only for a frame it pads (a body of at least ``align_bodies_from`` bytes whose header did not
end on a page boundary anyway); ``align_bodies_from=None`` writes version 1 only, which
receivers from before version 2 read.
"""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from .dtypes import byteorder_of, decode_dtype, encode_dtype, validate_shape
from .errors import FrameError, FrameTooLarge

__all__ = ["ChannelOptions", "Frame", "FrameHeader", "encode_header", "parse_header", "parse_prefix"]

MAGIC = b"AZTF"
VERSION = 1
VERSION_PADDED = 2
# Zero-copy receive maps whole 4 KiB pages, and with an MSS that is a multiple of 4096 those
# are the 4096-aligned stream offsets (PLATFORM.md, "Zero-copy receive").
BODY_ALIGN = 4096
# Padding costs up to 4095 bytes on the wire and one copy of them into the receive scratch (in
# the recv that carries the header anyway): at most 6.25% of a 64 KiB body, under 1 us of
# memcpy, and below 64 KiB a body spans too few pages (at most 16) for mapping to matter
# next to the syscalls around it.
ALIGN_BODIES_FROM = 64 << 10
_PREFIX = struct.Struct("<4sHHIQ")
PREFIX_SIZE = _PREFIX.size

DEFAULT_MAX_FRAME_BYTES = 1 << 30
DEFAULT_MAX_HEADER_BYTES = 32 << 10
DEFAULT_READAHEAD_BYTES = 1 << 20
# Receive scratch for prefixes and headers. Larger than the header cap so one recv can carry
# a whole small frame, small enough that copying the body bytes that share it is negligible.
SCRATCH_BYTES = 64 << 10
_TAG = re.compile(r"[a-z][a-z0-9_]{0,31}\Z")

DEFAULT_READAHEAD_FRAMES = 128
# The largest max_frame_bytes: numpy sizes arrays in a signed 64-bit npy_intp.
MAX_FRAME_BYTES_LIMIT = (1 << 63) - 1

ArrayLike = Any  # np.ndarray or torch.Tensor; typed loosely so torch stays optional


@dataclass(frozen=True)
class ChannelOptions:
    """Tensor-channel options; everything else given to connect/serve goes to the transport.

    max_frame_bytes: largest body accepted from the peer (and sent to it). It also bounds the
        shape: the product of the non-zero dimensions times the itemsize must not exceed it,
        so an empty array of shape (0, 2**48, 2**48) is refused (numpy could not make it).
    max_header_bytes: largest JSON header accepted (and sent); at most SCRATCH_BYTES - 20.
    readahead_bytes: what frames read ahead while no recv() waits may hold; 0 = only read on
        demand. A frame is charged its body, its header's parsed objects (48 bytes per header
        byte: the worst JSON measured, nested one-element lists, costs 44) and 1 KiB.
    readahead_frames: at most this many frames read ahead, whatever they hold.
    align_bodies_from: bodies of at least this many bytes are sent padded so that they start at
        a stream offset that is a multiple of 4096 (wire version 2): a receiver with
        ``zc_receive`` then gets them as arrays over the mapped pages. None: never pad (version
        1 frames only, for receivers older than version 2).
    socket_buffer_bytes: if set, SO_SNDBUF and SO_RCVBUF for the connection. The default (None)
        leaves Linux's TCP autotuning on, which grows the receive buffer up to tcp_rmem's
        maximum (32 MiB here); a fixed size is capped at rmem_max/wmem_max and turns
        autotuning off, which measured slower on loopback (4 MiB: ~0.7x at 64 MiB frames).
    """

    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    readahead_bytes: int = DEFAULT_READAHEAD_BYTES
    readahead_frames: int = DEFAULT_READAHEAD_FRAMES
    socket_buffer_bytes: int | None = None
    align_bodies_from: int | None = ALIGN_BODIES_FROM

    def __post_init__(self) -> None:
        if self.align_bodies_from is not None and self.align_bodies_from < 0:
            raise ValueError("align_bodies_from must be >= 0 or None")
        if not 0 <= self.max_frame_bytes <= MAX_FRAME_BYTES_LIMIT:
            raise ValueError(f"max_frame_bytes must be in [0, {MAX_FRAME_BYTES_LIMIT}]")
        if self.readahead_bytes < 0 or self.readahead_frames < 0:
            raise ValueError("readahead_bytes and readahead_frames must be >= 0")
        if not 64 <= self.max_header_bytes <= SCRATCH_BYTES - PREFIX_SIZE:
            raise ValueError(f"max_header_bytes must be in [64, {SCRATCH_BYTES - PREFIX_SIZE}]")

    @classmethod
    def split(cls, options: dict[str, Any]) -> tuple[ChannelOptions, dict[str, Any]]:
        """Separate channel options from transport options (zc_threshold, max_pinned_bytes...)."""
        mine = {k: options.pop(k) for k in list(options) if k in cls.__dataclass_fields__}
        return cls(**mine), options


@dataclass(frozen=True)
class FrameHeader:
    dtype: np.dtype
    shape: tuple[int, ...]
    nbytes: int
    name: str | None
    metadata: Any
    tag: str | None
    header_bytes: int = 0  # length of the JSON it was parsed from


@dataclass(frozen=True)
class Frame:
    """One received frame: the array (or tensor) and what the sender attached to it."""

    array: ArrayLike
    name: str | None
    metadata: Any
    tag: str | None = None


def padding_for(stream_offset: int, header_bytes: int, nbytes: int, align_from: int | None) -> int:
    """Zero bytes to put after a header of ``header_bytes`` (prefix included) starting at
    ``stream_offset`` so that a body of ``nbytes`` starts at a multiple of BODY_ALIGN."""
    if align_from is None or nbytes < align_from or nbytes == 0:
        return 0
    return -(stream_offset + header_bytes) % BODY_ALIGN


def check_extent(shape: tuple[int, ...], itemsize: int, max_frame_bytes: int) -> None:
    """FrameTooLarge unless the non-zero dimensions times the itemsize fit in max_frame_bytes.

    A zero dimension makes the body empty but not the shape harmless: numpy refuses to make an
    array whose other dimensions overflow its size type (ValueError), however empty.
    """
    extent = math.prod(dim for dim in shape if dim) * itemsize
    if extent > max_frame_bytes:
        raise FrameTooLarge(
            f"shape {shape[:8]} of {itemsize}-byte items spans {extent} bytes (counting zero "
            f"dimensions as 1), more than max_frame_bytes={max_frame_bytes}"
        )


def encode_header(
    array: np.ndarray, *, name: str | None, metadata: Any, tag: str | None,
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    stream_offset: int = 0, align_from: int | None = None,
) -> bytes:
    """Prefix + JSON header (+ padding) for a C-contiguous array whose frame starts at
    ``stream_offset`` of the connection's byte stream; pads if ``align_from`` says so."""
    if name is not None and not isinstance(name, str):
        raise TypeError("name must be a str or None")
    check_extent(array.shape, array.dtype.itemsize, max_frame_bytes)
    header = {
        "dtype": encode_dtype(array.dtype),
        "byteorder": byteorder_of(array.dtype),
        "shape": list(array.shape),
        "name": name,
        "metadata": metadata,
        "tag": tag,
    }
    try:
        body = json.dumps(header, separators=(",", ":")).encode()
    except (TypeError, ValueError) as exc:
        raise TypeError(f"metadata must be JSON-serialisable: {exc}") from None
    except RecursionError:
        raise ValueError("metadata is nested too deeply to encode as JSON") from None
    pad = padding_for(stream_offset, PREFIX_SIZE + len(body), array.nbytes, align_from)
    if not pad:
        return _PREFIX.pack(MAGIC, VERSION, 0, len(body), array.nbytes) + body
    return _PREFIX.pack(MAGIC, VERSION_PADDED, pad, len(body), array.nbytes) + body + bytes(pad)


def header_len_of(encoded: bytes | memoryview) -> int:
    """The JSON header length an encoded prefix announces (padding not included)."""
    return _PREFIX.unpack_from(encoded)[3]


def parse_prefix(raw: bytes | memoryview, options: ChannelOptions) -> tuple[int, int]:
    """(header_len, body_nbytes) from the 20-byte prefix, after checking magic and limits."""
    header_len, _, nbytes = parse_frame_prefix(raw, options)
    return header_len, nbytes


def parse_frame_prefix(raw: bytes | memoryview, options: ChannelOptions) -> tuple[int, int, int]:
    """(header_len, padding, body_nbytes) from the 20-byte prefix, after checking magic,
    version, padding and limits."""
    magic, version, flags, header_len, nbytes = _PREFIX.unpack(raw)
    if magic != MAGIC:
        raise FrameError(f"bad frame magic {bytes(magic)!r} (not an aiozc tensor stream?)")
    if not ((version == VERSION and flags == 0) or (version == VERSION_PADDED and 0 < flags < BODY_ALIGN)):
        raise FrameError(f"unsupported frame version {version} / flags {flags:#x}")
    if header_len > options.max_header_bytes:
        raise FrameTooLarge(f"frame header of {header_len} bytes exceeds max_header_bytes={options.max_header_bytes}")
    if nbytes > options.max_frame_bytes:
        raise FrameTooLarge(f"frame body of {nbytes} bytes exceeds max_frame_bytes={options.max_frame_bytes}")
    return header_len, flags, nbytes


def parse_header(
    raw: bytes | memoryview, nbytes: int, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
) -> FrameHeader:
    """Validate the JSON header against the body size announced by the prefix.

    Raises FrameError (or FrameTooLarge) for anything else: those are the only outcomes.
    """
    try:
        doc = json.loads(bytes(raw).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise FrameError(f"frame header is not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or not {"dtype", "shape"} <= doc.keys():
        raise FrameError("frame header must be an object with dtype and shape")
    dtype = decode_dtype(doc["dtype"])
    if doc.get("byteorder", byteorder_of(dtype)) != byteorder_of(dtype):
        raise FrameError(f"byteorder {str(doc['byteorder'])[:8]!r} contradicts dtype {dtype}")
    shape = validate_shape(doc["shape"])
    check_extent(shape, dtype.itemsize, max_frame_bytes)
    expected = math.prod(shape) * dtype.itemsize
    if expected != nbytes:
        raise FrameError(f"body size {nbytes} != prod(shape {shape}) * itemsize {dtype.itemsize} = {expected}")
    name, tag = doc.get("name"), doc.get("tag")
    if name is not None and not isinstance(name, str):
        raise FrameError("frame name must be a string or null")
    if tag is not None and not (isinstance(tag, str) and _TAG.match(tag)):
        raise FrameError(f"invalid frame tag {str(tag)[:40]!r}")
    return FrameHeader(dtype, shape, nbytes, name, doc.get("metadata"), tag, len(raw))


def byte_view(array: np.ndarray) -> memoryview:
    """A flat unsigned-byte memoryview of a C-contiguous array's memory.

    memoryview.cast("B") refuses structured and non-native formats, so go through numpy.
    """
    flat: Any = array.reshape(-1).view(np.uint8)  # numpy's stubs don't declare Buffer
    return memoryview(flat)
