"""An aiohttp app served zero-copy by aiozc: a large in-memory blob, a numpy array and a file.

    python examples/aiohttp_server.py --port 8080 --size-mib 256 [--uvloop]
    python examples/aiohttp_client.py --port 8080

Routes (each response carries its SHA-256 in ``X-Content-SHA256`` so the client can verify):
    /blob   web.Response(body=bytes)         -> the bytes object itself is sent, no join, no copy
    /array  aiozc.web.buffer_response(array) -> write_zc, released before the handler is done
    /file   web.FileResponse(path)           -> the transport's sendfile when it has one
                                                (Range and HEAD work as usual)
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
from aiohttp import web

from aiozc.web import buffer_response, run_app

SHA_HEADER = "X-Content-SHA256"


def make_app(blob: bytes, array: np.ndarray, file: Path) -> web.Application:
    blob_sha = hashlib.sha256(blob).hexdigest()
    array_sha = hashlib.sha256(array).hexdigest()
    file_sha = hashlib.sha256(file.read_bytes()).hexdigest()

    async def get_blob(request: web.Request) -> web.Response:
        return web.Response(body=blob, headers={SHA_HEADER: blob_sha})

    async def get_array(request: web.Request) -> web.Response:
        return buffer_response(array, headers={SHA_HEADER: array_sha})

    async def get_file(request: web.Request) -> web.FileResponse:
        return web.FileResponse(file, headers={SHA_HEADER: file_sha})

    app = web.Application()
    app.router.add_get("/blob", get_blob)
    app.router.add_get("/array", get_array)
    app.router.add_get("/file", get_file)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    args = parser.parse_args()

    size = args.size_mib << 20
    blob = os.urandom(size)
    array = np.arange(size // 8, dtype=np.float64)
    with tempfile.TemporaryDirectory(prefix="aiozc-example-") as tmp:
        file = Path(tmp) / "large.bin"
        file.write_bytes(os.urandom(size))
        loop = None
        if args.uvloop:
            import uvloop

            loop = uvloop.new_event_loop()
        loop = loop or asyncio.new_event_loop()
        run_app(make_app(blob, array, file), host=args.host, port=args.port, loop=loop)


if __name__ == "__main__":
    main()
