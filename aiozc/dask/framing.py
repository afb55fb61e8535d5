"""What zc://'s two comms share: dask's frames in, dask's frames out, and their addresses.

The socket comm (`comm.ZCComm`) and the in-process hop (`hop.HopComm`) differ only in how
frames travel; serializing a message to frames and loading frames back must be the same code,
so that a message behaves alike on both paths (the hop's EOFError handling once differed).
"""

from __future__ import annotations

from typing import Any

import dask
from dask.utils import parse_bytes
from distributed.comm.core import Comm, CommClosedError
from distributed.comm.utils import from_frames, to_frames


class FramesComm(Comm):
    """A dask Comm carrying to_frames' output; subclasses move the frames."""

    # dask's shard size, as its tcp comm's: the receiver rejoins the shards without a copy
    max_shard_size = parse_bytes(dask.config.get("distributed.comm.shard"))
    _local_addr: str
    _peer_addr: str

    @property
    def local_address(self) -> str:
        return self._local_addr

    @property
    def peer_address(self) -> str:
        return self._peer_addr

    async def _to_frames(self, msg: Any, serializers: Any, on_error: str | None) -> list[Any]:
        frames: list[Any] = await to_frames(
            msg,
            allow_offload=self.allow_offload,
            serializers=serializers,
            on_error=on_error,
            context={"sender": self.local_info, "recipient": self.remote_info, **self.handshake_options},
            frame_split_size=self.max_shard_size,
        )
        return frames

    async def _from_frames(self, frames: list[Any], deserializers: Any) -> Any:
        try:
            return await from_frames(frames, deserialize=self.deserialize,
                                     deserializers=deserializers, allow_offload=self.allow_offload)
        except EOFError:
            # as dask's tcp comm: a message that cannot be loaded (truncated data) ends the comm
            self.abort()
            raise CommClosedError(f"in {self}: aborted on a message that failed to deserialize")
