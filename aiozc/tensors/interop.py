"""numpy / torch on both ends: what can be sent, and where a recv() puts its frame."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import FrameError
from .frames import ArrayLike, Frame, FrameHeader

__all__ = ["as_sendable"]

# --------------------------------------------------------------------------------------------
# torch interop (torch is optional and never imported unless a tensor is seen or asked for)


def _torch() -> Any:
    import torch  # noqa: PLC0415 - optional dependency

    return torch


def _is_tensor(obj: object) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.Tensor)


_TORCH_INT_OF_WIDTH = {1: "uint8", 2: "int16", 4: "int32", 8: "int64"}
_NP_UINT_OF_WIDTH = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def _tensor_as_numpy(tensor: Any) -> tuple[np.ndarray, str | None]:
    """A numpy view of a CPU tensor's memory (no copy) and the tag for dtypes numpy lacks."""
    torch = _torch()
    if tensor.device.type != "cpu":
        raise ValueError(f"only CPU tensors can be sent (got device {tensor.device}); call .cpu() first")
    tensor = tensor.detach().resolve_conj().resolve_neg()
    try:
        return tensor.numpy(), None
    except TypeError:
        pass
    # bfloat16, float8, complex32...: reinterpret the elements as same-width integers.
    width = tensor.element_size()
    if width not in _TORCH_INT_OF_WIDTH:
        raise TypeError(f"torch dtype {tensor.dtype} has no raw-bytes mapping")
    raw = tensor.view(getattr(torch, _TORCH_INT_OF_WIDTH[width])).numpy().view(_NP_UINT_OF_WIDTH[width])
    return raw, str(tensor.dtype).removeprefix("torch.")


def _numpy_as_tensor(array: np.ndarray, tag: str | None) -> Any:
    torch = _torch()
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))  # torch only knows native order
    if tag is None:
        return torch.from_numpy(array)
    dtype = getattr(torch, tag, None)
    if not isinstance(dtype, torch.dtype) or dtype.itemsize != array.dtype.itemsize:
        raise FrameError(f"frame tag {tag!r} is not a torch dtype of width {array.dtype.itemsize}")
    signed = array.view(f"i{array.dtype.itemsize}") if array.dtype.itemsize > 1 else array
    return torch.from_numpy(signed).view(dtype)


def as_sendable(obj: ArrayLike) -> tuple[np.ndarray, str | None]:
    """A C-contiguous numpy array with obj's bytes (copied once if obj is non-contiguous)."""
    if _is_tensor(obj):
        array, tag = _tensor_as_numpy(obj)
    elif isinstance(obj, np.ndarray):
        array, tag = obj, None
    else:
        raise TypeError(f"can only send numpy arrays or torch tensors, not {type(obj).__name__}")
    if array.dtype.hasobject:
        raise TypeError(f"dtype {array.dtype} holds Python objects and cannot be sent as raw bytes")
    if not array.flags.c_contiguous:
        array = np.array(array, order="C", copy=True)  # ascontiguousarray would turn 0-d into 1-d
    return array, tag


@dataclass
class _Destination:
    """Where a recv() wants its frame: ``view`` is the numpy memory filled, ``obj`` returned."""

    view: np.ndarray | None
    obj: ArrayLike
    tag: str | None
    as_torch: bool

    @classmethod
    def of(cls, out: ArrayLike | None, as_torch: bool) -> _Destination:
        if out is None:
            if as_torch:
                _torch()  # ImportError now, before a frame is taken off the stream
            return cls(None, None, None, as_torch)
        if _is_tensor(out):
            view, tag = _tensor_as_numpy(out)
            as_torch = True
        elif isinstance(out, np.ndarray):
            view, tag = out, None
        else:
            raise TypeError(f"out must be a numpy array or torch tensor, not {type(out).__name__}")
        if not view.flags.c_contiguous or not view.flags.writeable:
            raise ValueError("out must be C-contiguous and writeable to be received into in place")
        return cls(view, out, tag, as_torch)

    def check(self, header: FrameHeader) -> None:
        """ValueError unless the frame fits this destination exactly."""
        if self.view is None:
            return
        if self.view.shape != header.shape or self.view.dtype != header.dtype or self.tag != header.tag:
            have = f"shape {self.view.shape} dtype {self.view.dtype}" + (f" ({self.tag})" if self.tag else "")
            want = f"shape {header.shape} dtype {header.dtype}" + (f" ({header.tag})" if header.tag else "")
            raise ValueError(f"out has {have} but the frame has {want}; the frame stays queued")

    def result(self, frame: Frame) -> Frame:
        if self.view is not None:
            return Frame(self.obj, frame.name, frame.metadata, frame.tag)
        if self.as_torch:
            return Frame(_numpy_as_tensor(frame.array, frame.tag), frame.name, frame.metadata, frame.tag)
        return frame
