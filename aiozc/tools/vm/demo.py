"""``python -m aiozc demo --vm``: the demo's TCP table from inside the guest VM.

There the kernel sends TCP from our pages (virtio NIC): write_zc rows show zero-copy bytes and
state ``zerocopy``, where on one host they show the copy fallback. The receiver is the rig's
peer in the namespace; it checks the sha256 of the stream (regenerated from a seed), so the
guest, slow under software emulation, hashes nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from typing import Any

import aiozc

from ..benchkit import LOOPS, FlowControlledSender, run_on
from .guest import PEER_PORT
from .initramfs import HOST_ADDR
from .peer import pattern_pool

_WRITE = 1 << 20
_POOL = (8 << 20) + 4093  # odd: writes do not line up with the pool's end


def run_demo(args: argparse.Namespace) -> None:
    """Host side (the hook demo.py calls): boot the guest, run this module's main() in it."""
    from . import Unavailable, python_in_guest, run_in_guest  # noqa: PLC0415

    try:
        run = run_in_guest(python_in_guest(["-m", "aiozc.tools.vm.demo", "--gib", str(args.gib)]), timeout=1800)
    except Unavailable as exc:
        raise SystemExit(f"demo --vm: the guest cannot run here: {exc}") from exc
    if run.rc != 0:
        raise SystemExit(f"demo --vm: the guest run failed (rc {run.rc}); console:\n{run.console[-2000:]}")


async def _transfer(use_aiozc: bool, seed: int, pool: memoryview, total: int) -> dict[str, Any]:
    spec = {"op": "sink", "expect": {"seed": seed, "pool": _POOL, "total": total}}
    if use_aiozc:
        transport, proto = await aiozc.create_connection(FlowControlledSender, HOST_ADDR, PEER_PORT)
        write = transport.write_zc  # type: ignore[attr-defined]
    else:
        loop = asyncio.get_running_loop()
        transport, proto = await loop.create_connection(FlowControlledSender, HOST_ADDR, PEER_PORT)
        write = transport.write
    transport.write(json.dumps(spec).encode() + b"\n")
    transport.set_write_buffer_limits(high=4 * _WRITE)
    start = time.perf_counter()
    for offset in range(0, total, _WRITE):
        at = offset % _POOL
        write(pool[at : at + _WRITE])
        if not proto.can_write.is_set():
            await proto.can_write.wait()
    transport.write_eof()
    reply = json.loads((await proto.reply).split(b"\n", 1)[0])
    elapsed = time.perf_counter() - start
    stats = getattr(transport, "stats", None)
    transport.close()
    zc = stats.zc_write_bytes if stats else 0
    return {
        "gbps": total / elapsed / 1e9,
        "zc_bytes": zc,
        "copied_bytes": total - zc,
        "state": stats.state if stats else "-",
        "match": reply["bytes"] == total and reply["sha256"] == reply["expected"],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gib", type=float, default=1.0)
    args = parser.parse_args(argv)
    total = int(args.gib * (1 << 30)) // _WRITE * _WRITE
    seed = random.randrange(1 << 30)
    pool_bytes = pattern_pool(seed, _POOL)
    pool = memoryview(pool_bytes + pool_bytes)
    print(f"aiozc demo inside the guest VM: {total / (1 << 30):.2f} GiB to the peer in the namespace, "
          f"{_WRITE >> 20} MiB writes, sha256 checked by the peer")  # fmt: skip
    print("SOFTWARE EMULATION (QEMU TCG): GB/s are the emulator's, not hardware's\n")
    print(f"{'loop':<8} {'transport':<15} {'GB/s':>6} {'zero-copy B':>14} {'copied B':>14}  {'state':<14} sha256")
    ok, all_zc = True, True
    for loop_name in LOOPS:
        for use_aiozc in (False, True):
            r = run_on(loop_name, _transfer(use_aiozc, seed, pool, total))
            ok &= r["match"]
            all_zc &= not use_aiozc or r["copied_bytes"] == 0
            name = "aiozc write_zc" if use_aiozc else "stock write"
            print(f"{loop_name:<8} {name:<15} {r['gbps']:6.2f} {r['zc_bytes']:>14,} {r['copied_bytes']:>14,}  "
                  f"{r['state']:<14} {'match' if r['match'] else 'MISMATCH'}", flush=True)  # fmt: skip
    if all_zc:
        print("\nThe guest kernel sends through a virtio NIC, which takes our pages as they are: the write_zc rows "
              "are real\nTCP zero-copy (every completion zerocopy=True). Stock write always copies.")  # fmt: skip
    else:
        print("\nSome write_zc bytes were copied (see the copied B column and the state): not the zero-copy "
              "this rig normally shows.")  # fmt: skip
    if not ok:
        sys.exit("data mismatch")


if __name__ == "__main__":
    main()
