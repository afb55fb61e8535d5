"""A guest VM where TCP zero-copy really happens, for tests and benchmarks on one machine.

On one host the kernel copies every TCP zero-copy send (loopback, veth, tun). A guest kernel
sending through a virtio-net NIC does not: the NIC takes the pages as they are (measured:
64/64 notifications ee_code 0 to the namespace, 64/64 ee_code 1 to the guest's own loopback).

    python -m aiozc.tools.vm test [PYTEST ARGS]   # tests/vm inside the guest (make vm-test)
    python -m aiozc.tools.vm run -- CMD ...       # any command inside the guest

``run_in_guest`` is what ``bench tcp --vm`` calls; ``run_demo`` is ``demo --vm``'s hook.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from .assets import AssetError, ensure_assets, why_unavailable
from .guest import GuestError, GuestRun, run_job
from .initramfs import GUEST_ADDR, GUEST_OUT, HOST_ADDR

__all__ = ["GUEST_ADDR", "GUEST_OUT", "HOST_ADDR", "GuestRun", "Unavailable", "run_demo", "run_in_guest", "why_unavailable"]


class Unavailable(RuntimeError):
    """The guest cannot run on this machine; str() says why."""


def run_in_guest(command: Sequence[str], *, timeout: float = 900, stream: bool = True, env: dict[str, str] | None = None) -> GuestRun:
    """Boot a guest, run ``command`` in the repository folder with this interpreter's venv."""
    reason = why_unavailable()
    if reason:
        raise Unavailable(reason)
    try:
        assets = ensure_assets()
    except AssetError as exc:
        raise Unavailable(f"could not fetch the guest kernel or QEMU: {exc}") from exc
    try:
        return run_job(assets, list(command), timeout=timeout, stream=stream, env=env)
    except GuestError as exc:
        raise Unavailable(str(exc)) from exc


def python_in_guest(args: Sequence[str]) -> list[str]:
    """argv for this very interpreter (the venv), which the guest sees at the same path."""
    return [sys.executable, *args]


def run_demo(args: object) -> None:
    """``python -m aiozc demo --vm`` (tools/demo.py calls this): the TCP table from the guest."""
    from .demo import run_demo as run  # noqa: PLC0415 - the demo imports the transports

    run(args)  # type: ignore[arg-type]
