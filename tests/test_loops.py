import asyncio

import uvloop


async def test_both_loops_are_exercised(request: object) -> None:
    loop = asyncio.get_running_loop()
    name = request.node.name  # type: ignore[attr-defined]
    if "uvloop" in name:
        assert isinstance(loop, uvloop.Loop)
    else:
        assert not isinstance(loop, uvloop.Loop)
