"""Dask distributed over aiozc: the ``zc://`` comm backend (extra ``dask``).

``LocalCluster(protocol="zc://")``, ``dask scheduler --protocol zc`` and ``dask worker zc://...``
find it through the entry point group ``distributed.comm.backends``; nanny-started workers are
fresh interpreters and find it that way too. Importing this module also registers it.

Settings (dask config, all optional): ``distributed.comm.zc.zc-threshold`` (16 KiB: frames this
large go through ``write_zc``), ``pool-bytes`` (idle receive buffers kept per process),
``max-message-bytes`` (half the memory limit, as dask's tcp comm caps a read), ``max-frames``,
``readahead-bytes`` (unread messages buffered before reading pauses, or a hop's writer waits),
``hop`` (true: a connection to a zc:// listener of the same process and event loop is carried
in process, by reference, not through a socket; see ``aiozc.dask.hop``).
"""

from __future__ import annotations

from distributed.comm import registry as _registry

from .hop import HopComm
from .comm import EncryptionRefused, ZCBackend, ZCComm, ZCConnector, ZCListener, receive_pool
from .protocol import copies

__all__ = ["EncryptionRefused", "HopComm", "ZCBackend", "ZCComm", "ZCConnector", "ZCListener", "copies", "receive_pool"]

_registry.backends.setdefault("zc", ZCBackend())
