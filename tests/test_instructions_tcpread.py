"""``bench instructions --families tcpread``: the read cases run outside callgrind too, and
every case receives exactly what the peer sent (both loops, both transports)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from aiozc.tools import bench_instructions, instructions_tcpread
from aiozc.tools.benchkit import loopback_peer


@pytest.fixture(scope="module")
def peer_port() -> Iterator[int]:
    with loopback_peer(instructions_tcpread.peer_main) as port:
        yield port


def test_the_read_cases_are_registered_for_both_loops_and_transports() -> None:
    kinds = {(c.kind, c.loop) for c in bench_instructions.CASES if c.family == "tcpread"}
    assert kinds == {
        (f"tcpread-{t}-{size}", loop)
        for t in ("stock", "aiozc") for size in instructions_tcpread.SIZES for loop in ("asyncio", "uvloop")
    }


@pytest.mark.parametrize("kind", ["tcpread-stock-11B", "tcpread-aiozc-11B", "tcpread-stock-11B_oswrite", "tcpread-aiozc-11B_oswrite",
                                  "tcpread-stock-256KiB", "tcpread-aiozc-256KiB"])
async def test_a_read_case_receives_what_the_peer_sent(peer_port: int, kind: str) -> None:
    info = await instructions_tcpread.measure(peer_port, kind, 16)
    assert info["seconds"] > 0


async def test_a_short_stream_is_an_error(peer_port: int) -> None:
    reader = instructions_tcpread._Reader(4, 11)
    reader.connection_lost(None)
    with pytest.raises(ConnectionError):
        await reader.done
