"""``bench instructions --families tcpconn``: the connection cases run outside callgrind too, and
every connection gets the response (both loops, both servers)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from aiozc.tools import bench_instructions, instructions_tcpconn
from aiozc.tools.benchkit import loopback_peer


@pytest.fixture(scope="module")
def peer_port() -> Iterator[int]:
    with loopback_peer(instructions_tcpconn.peer_main) as port:
        yield port


def test_the_connection_cases_are_registered_for_both_loops_and_servers() -> None:
    kinds = {(c.kind, c.loop) for c in bench_instructions.CASES if c.family == "tcpconn"}
    assert kinds == {(f"tcpconn-{s}", loop) for s in ("stock", "aiozc") for loop in ("asyncio", "uvloop")}
    stock = [c for c in bench_instructions.CASES if c.kind == "tcpconn-stock"]
    assert stock and all(bench_instructions._is_stock(bench_instructions.Count(
        c.name, c.family, c.kind, c.loop or "-", 1.0, 0.0, (1, 3))) for c in stock)


@pytest.mark.parametrize("kind", ["tcpconn-stock", "tcpconn-aiozc"])
async def test_a_connection_case_serves_every_connection(peer_port: int, kind: str) -> None:
    info = await instructions_tcpconn.measure(peer_port, kind, 8)
    assert info["seconds"] > 0


def test_wall_pairs_gives_a_ratio_per_round(peer_port: int) -> None:
    result = instructions_tcpconn.wall_pairs(peer_port, "asyncio", 4, 2)
    assert result["ratio"]["n"] == 2 and set(result["us_per_conn"]) == {"stock", "aiozc"}
