"""The exceptions aiozc.tensors raises."""

from __future__ import annotations

__all__ = ["ChannelBroken", "ChannelClosed", "FrameError", "FrameTooLarge", "IncompleteFrame", "TensorChannelError"]


class TensorChannelError(Exception):
    """Base class of every error this module raises about the channel or its frames."""


class FrameError(TensorChannelError, ValueError):
    """The peer sent a malformed frame; the connection has been aborted."""


class FrameTooLarge(FrameError):
    """A frame's header or body exceeds ``max_header_bytes`` / ``max_frame_bytes``."""


class ChannelBroken(TensorChannelError, ConnectionError):
    """The connection failed (reset by the peer, aborted, an I/O error) instead of closing
    cleanly. Frames that arrived before were delivered first; ``__cause__`` is the transport's
    error. Unlike :class:`ChannelClosed`, ``async for`` does not end silently on this."""


class IncompleteFrame(ChannelBroken):
    """The connection ended in the middle of a frame."""


class ChannelClosed(TensorChannelError, EOFError):
    """The channel is closed (cleanly, at a frame boundary); ``async for`` stops on this."""


