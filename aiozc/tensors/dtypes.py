"""dtype <-> JSON for frame headers: what a sender describes and an untrusted receiver rebuilds.

The receiver never evaluates or unpickles anything: a scalar descr must match a strict regular
expression before ``np.dtype`` sees it, structured descrs are rebuilt field by field with depth,
field-count and size limits, and object dtypes are refused on both ends.
"""

from __future__ import annotations

import functools
import json
import re
import sys
from typing import Any, Union

import numpy as np

from .errors import FrameError

__all__ = ["byteorder_of", "decode_dtype", "encode_dtype", "validate_shape"]

MAX_NDIM = 64  # numpy's NPY_MAXDIMS
# Any one dimension; what a whole shape may span is bounded by max_frame_bytes (frames.py).
MAX_DIM = 1 << 48
_MAX_DESCR_DEPTH = 8
_MAX_FIELDS = 4096
# The only scalar dtype strings accepted from a peer: what numpy's dtype.str produces for
# fixed-size types (bool, ints, floats, complex, datetime/timedelta, bytes, str, void).
# Anything else ("O", "(2,)f4", "i4,f8", ...) is refused before np.dtype sees it.
_SCALAR_DESCR = re.compile(r"[<>|][biufcmMSUV][0-9]{1,10}(\[[0-9]{0,6}[a-zA-Z]{1,2}\])?\Z")

Descr = Union[str, list]


@functools.lru_cache(maxsize=256)
def encode_dtype(dtype: np.dtype) -> Descr:
    """The JSON-able descr of a fixed-size dtype; TypeError for object or unframeable dtypes.

    Cached per dtype, so the round-trip check below costs once per dtype, not per frame.
    """
    descr = _encode_descr(dtype)
    try:
        faithful = decode_dtype(json.loads(json.dumps(descr))) == dtype
    except FrameError:
        faithful = False
    if not faithful:  # e.g. overlapping fields, which numpy's descr cannot express
        raise TypeError(f"dtype {dtype} cannot be described faithfully in a frame header")
    return descr


def _encode_descr(dtype: np.dtype) -> Descr:
    if dtype.hasobject:
        raise TypeError(f"dtype {dtype} holds Python objects and cannot be sent as raw bytes")
    if dtype.itemsize == 0:
        raise TypeError(f"dtype {dtype} has no bytes per element")
    if dtype.names is None:
        descr = dtype.str
        if not _SCALAR_DESCR.match(descr):
            raise TypeError(f"dtype {dtype} ({descr!r}) is not a fixed-size numpy dtype")
        return descr
    try:
        return _fields_to_json(dtype.descr)
    except ValueError as exc:  # numpy: no descr for overlapping or out-of-order fields
        raise TypeError(f"dtype {dtype} cannot be described faithfully in a frame header: {exc}") from None


def byteorder_of(dtype: np.dtype) -> str:
    """'<', '>' or '|' (not applicable, or structured: every field says its own)."""
    if dtype.names is not None or dtype.byteorder == "|":
        return "|"
    if dtype.byteorder == "=":
        return "<" if sys.byteorder == "little" else ">"
    return dtype.byteorder


def _fields_to_json(descr: list[tuple[Any, ...]]) -> list[Any]:
    out: list[Any] = []
    for field in descr:
        name, sub = field[0], field[1]
        entry: list[Any] = [list(name) if isinstance(name, tuple) else name]
        entry.append(sub if isinstance(sub, str) else _fields_to_json(sub))
        if len(field) == 3:
            entry.append(list(field[2]))
        out.append(entry)
    return out


def decode_dtype(descr: object, _depth: int = 0) -> np.dtype:
    """Rebuild a dtype from an untrusted JSON descr; FrameError for anything unexpected."""
    try:
        dtype = _decode_descr(descr, _depth)
    except FrameError:
        raise
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        raise FrameError(f"invalid dtype descr {str(descr)[:200]!r}: {exc}") from None
    if dtype.hasobject or dtype.itemsize == 0:
        raise FrameError(f"refusing dtype {dtype}: object or zero-size")
    return dtype


def _decode_descr(descr: object, depth: int) -> np.dtype:
    if isinstance(descr, str):
        if not _SCALAR_DESCR.match(descr):
            raise FrameError(f"refusing dtype string {descr[:64]!r}")
        return np.dtype(descr)
    if depth >= _MAX_DESCR_DEPTH:
        raise FrameError("structured dtype nested too deeply")
    if not isinstance(descr, list) or not 0 < len(descr) <= _MAX_FIELDS:
        raise FrameError("structured dtype descr must be a non-empty list of fields")
    names: list[str] = []
    titles: list[str | None] = []
    formats: list[np.dtype] = []
    offsets: list[int] = []
    offset = 0
    for field in descr:
        title, name, field_dtype = _decode_field(field, depth)
        # Unnamed void entries are the padding numpy's descr emits for aligned/offset layouts.
        if not (name == "" and title is None and field_dtype.names is None and field_dtype.kind == "V"):
            names.append(name)
            titles.append(title)
            formats.append(field_dtype)
            offsets.append(offset)
        offset += field_dtype.itemsize
    spec = {"names": names, "formats": formats, "offsets": offsets, "itemsize": offset}
    if any(t is not None for t in titles):
        spec["titles"] = titles
    return np.dtype(spec)  # type: ignore[call-overload]


def _decode_field(field: object, depth: int) -> tuple[str | None, str, np.dtype]:
    if not isinstance(field, list) or len(field) not in (2, 3):
        raise FrameError("a structured dtype field must be [name, descr] or [name, descr, shape]")
    raw_name, sub = field[0], field[1]
    if isinstance(raw_name, list) and len(raw_name) == 2 and all(isinstance(x, str) for x in raw_name):
        title, name = raw_name
    elif isinstance(raw_name, str):
        title, name = None, raw_name
    else:
        raise FrameError(f"invalid field name {str(raw_name)[:64]!r}")
    dtype = _decode_descr(sub, depth + 1)
    if len(field) == 3:
        shape = validate_shape(field[2], what="field shape")
        dtype = np.dtype((dtype, shape))
    return title, name, dtype


def validate_shape(shape: object, *, what: str = "shape") -> tuple[int, ...]:
    if not isinstance(shape, list) or len(shape) > MAX_NDIM:
        raise FrameError(f"{what} must be a list of at most {MAX_NDIM} dimensions")
    for dim in shape:
        # bool is an int subclass; a JSON true must not pass as 1.
        if type(dim) is not int or not 0 <= dim <= MAX_DIM:
            raise FrameError(f"invalid dimension {str(dim)[:32]!r} in {what}")
    return tuple(shape)
