"""aiozc: zero-copy networking for asyncio and uvloop."""

from __future__ import annotations

__version__ = "0.1.0"
