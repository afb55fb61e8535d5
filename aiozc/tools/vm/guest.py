"""Boot the guest, run one job in it, collect what it wrote, and clean up whatever happens.

The guest's NIC is a tap device inside a private network namespace made for this run; the peer
(a host process, see peer.py) runs in that namespace too, so the guest only ever talks to its
own namespace. QEMU runs with software emulation (TCG): /dev/kvm here is PVM, which QEMU cannot
drive (measured, see PLATFORM.md). One guest at a time on the machine: a lock file serialises
boots, because each guest burns a host core for its whole run.
"""

from __future__ import annotations

import fcntl
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from ..netns import NetNamespace, NetnsError, reap_stale_namespaces
from ..procs import stop_process
from .assets import CACHE, QEMU, Assets
from .initramfs import GUEST_OUT, HOST_ADDR, HOST_TMP, OUT_TAG, PREFIX, ROOT_TAG

PEER_PORT = 9000
REPO = Path(__file__).resolve().parents[3]


@dataclass
class GuestRun:
    rc: int | None  # the job's exit status; None when the guest never finished it
    out: Path  # the results share, as the host sees it
    output: str  # the job's stdout and stderr
    console: str  # the guest kernel's serial console
    seconds: float


class GuestError(RuntimeError):
    pass


def run_job(
    assets: Assets,
    command: Sequence[str],
    *,
    timeout: float,
    env: dict[str, str] | None = None,
    memory_mb: int = 2048,
    stream: bool = False,
    out: Path | None = None,
) -> GuestRun:
    """Run ``command`` (argv, in the repository folder) inside a fresh guest, peer in its namespace."""
    out = out or Path(tempfile.mkdtemp(prefix="aiozc-vm-"))
    job_env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/tmp",
        "PYTHONPATH": str(REPO),
        "PYTHONDONTWRITEBYTECODE": "1",  # the root share is read-only
        "AIOZC_VM_GUEST": "1",
        "AIOZC_VM_PEER": f"{HOST_ADDR}:{PEER_PORT}",
        "AIOZC_VM_OUT": GUEST_OUT,
        **(env or {}),
    }
    exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in job_env.items())
    (out / "job.sh").write_text(f"{exports}{_repo_in_place()}cd {shlex.quote(str(REPO))}\nexec {shlex.join(command)}\n")
    with _one_guest_at_a_time(), _signals_raise(), _namespace() as (ns, tap):
        with _process(_peer_command(ns), name="peer") as peer:
            _wait_ready(peer)
            started = time.monotonic()
            with _process(_qemu_command(assets, ns, tap, out, memory_mb), name="qemu") as qemu:
                with _tail(out / "output.log", enabled=stream):
                    try:
                        qemu.wait(timeout=timeout)
                    except subprocess.TimeoutExpired:
                        print(f"aiozc-vm: guest still running after {timeout:.0f} s: stopped", file=sys.stderr)
            seconds = time.monotonic() - started
    return GuestRun(
        rc=_read_rc(out / "rc"),
        out=out,
        output=_read(out / "output.log"),
        console=_read(out / "console.log"),
        seconds=seconds,
    )


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def _read_rc(path: Path) -> int | None:
    text = _read(path).strip()
    return int(text) if text.isdigit() else None


def _qemu_command(assets: Assets, ns: str, tap: str, out: Path, memory_mb: int) -> list[str]:
    return [
        "ip", "netns", "exec", ns, QEMU,
        "-machine", "q35", "-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", str(memory_mb),
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-serial", f"file:{out / 'console.log'}",
        "-kernel", str(assets.kernel), "-initrd", str(assets.initramfs),
        "-append", "console=ttyS0 panic=-1 quiet loglevel=4 rdinit=/init",
        "-fsdev", "local,id=root,path=/,readonly=on,security_model=none,multidevs=remap",
        "-device", f"virtio-9p-pci,fsdev=root,mount_tag={ROOT_TAG}",
        "-fsdev", f"local,id=out,path={out},security_model=none",
        "-device", f"virtio-9p-pci,fsdev=out,mount_tag={OUT_TAG}",
        "-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no,vhost=off",
        "-device", "virtio-net-pci,netdev=n0",
    ]  # fmt: skip


def _peer_command(ns: str) -> list[str]:
    return [
        "ip", "netns", "exec", ns, "env", f"PYTHONPATH={REPO}",
        sys.executable, "-m", "aiozc.tools.vm.peer", "--host", HOST_ADDR, "--port", str(PEER_PORT),
    ]  # fmt: skip


def _wait_ready(peer: subprocess.Popen[str]) -> None:
    assert peer.stdout is not None
    line = peer.stdout.readline()
    if not line.startswith("ready"):
        raise GuestError(f"peer did not start: {line!r}")


@contextmanager
def _process(cmd: list[str], *, name: str) -> Iterator[subprocess.Popen[str]]:
    """A child in its own session, ended by its PID (TERM, then KILL) on every way out."""
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE if name == "peer" else subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        yield proc
    finally:
        try:
            stop_process(proc)
        finally:
            if proc.stdout is not None:
                proc.stdout.close()


@contextmanager
def _namespace() -> Iterator[tuple[str, str]]:
    """The run's private namespace (``aiozc-vm-<pid>``) with the guest's tap in it; deleting
    the namespace deletes the tap."""
    # Namespaces of earlier runs whose process is gone (SIGKILLed before its finally).
    reap_stale_namespaces(("aiozc-vm",))
    tap = "aiozcvm0"
    try:
        with NetNamespace(f"aiozc-vm-{os.getpid()}") as ns:
            ns.ip("tuntap", "add", "dev", tap, "mode", "tap")
            ns.ip("addr", "add", f"{HOST_ADDR}/{PREFIX}", "dev", tap)
            ns.ip("link", "set", tap, "up")
            yield ns.name, tap
    except NetnsError as exc:
        raise GuestError(str(exc)) from exc


@contextmanager
def _one_guest_at_a_time() -> Iterator[None]:
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "boot.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print("aiozc-vm: another guest is running; waiting for it", file=sys.stderr)
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@contextmanager
def _signals_raise() -> Iterator[None]:
    """SIGTERM and SIGHUP unwind like Ctrl-C, so every finally above runs (namespace, children)."""

    def stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextmanager
def _tail(path: Path, *, enabled: bool) -> Iterator[None]:
    """Print the job's output while it runs (the demo and benchmarks take minutes)."""
    if not enabled:
        yield
        return
    stop = threading.Event()

    def follow() -> None:
        offset = 0
        while True:
            finished = stop.wait(0.5)
            if path.exists():
                with open(path, "rb") as f:
                    f.seek(offset)
                    chunk = f.read()
                offset += len(chunk)
                sys.stdout.write(chunk.decode(errors="replace"))
                sys.stdout.flush()
            if finished:
                return

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _repo_in_place() -> str:
    """job.sh lines that make a checkout under the host's /tmp visible at its own path in the
    guest, whose /tmp is a tmpfs (paths inside the venv name the checkout absolutely)."""
    try:
        rel = REPO.relative_to("/tmp")
    except ValueError:
        return ""
    repo = shlex.quote(str(REPO))
    return f"mkdir -p {repo}\nmount -o bind {shlex.quote(f'{HOST_TMP}/{rel}')} {repo}\n"
