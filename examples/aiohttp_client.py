"""Download /blob, /array and /file from examples/aiohttp_server.py and verify their SHA-256.

    python examples/aiohttp_client.py --port 8080 [--range 1000-1999999]

Exits non-zero if any download is short or its digest differs from the server's
``X-Content-SHA256`` header.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
import time

import aiohttp

SHA_HEADER = "X-Content-SHA256"


async def download(session: aiohttp.ClientSession, url: str) -> bool:
    t0 = time.perf_counter()
    digest = hashlib.sha256()
    size = 0
    async with session.get(url) as resp:
        resp.raise_for_status()
        expected_size = int(resp.headers["Content-Length"])
        async for chunk in resp.content.iter_chunked(1 << 20):
            digest.update(chunk)
            size += len(chunk)
        expected_sha = resp.headers[SHA_HEADER]
    seconds = time.perf_counter() - t0
    ok = size == expected_size and digest.hexdigest() == expected_sha
    print(
        f"{url:<40} {size / 2**20:8.1f} MiB {size / seconds / 1e9:6.2f} GB/s "
        f"sha256 {'OK' if ok else 'MISMATCH'}"
    )
    return ok


async def check_range(session: aiohttp.ClientSession, url: str, spec: str) -> bool:
    """A Range request must return exactly those bytes of the full file."""
    lo, hi = (int(x) for x in spec.split("-"))
    async with session.get(url) as full_resp:
        full = await full_resp.read()
    async with session.get(url, headers={"Range": f"bytes={lo}-{hi}"}) as resp:
        part = await resp.read()
        ok = resp.status == 206 and part == full[lo : hi + 1]
    print(f"{url} Range bytes={lo}-{hi}: {resp.status} {'OK' if ok else 'MISMATCH'}")
    return ok


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--range", default=None, help="also check a Range of /file, e.g. 10-99999")
    args = parser.parse_args()
    base = f"http://{args.host}:{args.port}"
    async with aiohttp.ClientSession() as session:
        results = [await download(session, f"{base}{path}") for path in ("/blob", "/array", "/file")]
        if args.range:
            results.append(await check_range(session, f"{base}/file", args.range))
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
