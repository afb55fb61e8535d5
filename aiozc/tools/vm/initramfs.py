"""The guest's initramfs: busybox as PID 1, the virtio / 9p modules, and /init.

/init loads the modules, mounts the host's root filesystem read-only over 9p and chroots into
it, so the guest runs the host's Python and the project's own venv unchanged. A second, writable
9p share carries the job in (``job.sh``) and the results out. No disk image is built.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterable, Sequence
from pathlib import Path

GUEST_ADDR = "10.213.0.2"
HOST_ADDR = "10.213.0.1"
PREFIX = 24
ROOT_TAG = "aiozcroot"
OUT_TAG = "aiozcout"
GUEST_OUT = "/tmp/aiozc-vm"  # where the results share appears inside the chroot
# The guest's /tmp is a tmpfs (the root share is read-only), which hides the host's /tmp: a
# checkout there (CI's clone may be one) stays reachable here, and job.sh binds it back in place.
HOST_TMP = "/tmp/.aiozc-host-tmp"

# 9p over virtio: a large msize cuts the round trips per file read (the venv's imports are
# thousands of small reads); cache=loose keeps what was read (the root is read-only).
_ROOT_OPTS = "trans=virtio,version=9p2000.L,msize=524288,cache=loose,ro"
_OUT_OPTS = "trans=virtio,version=9p2000.L,msize=524288"

INIT = f"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /dev /newroot
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules/order); do insmod /modules/$m.ko || echo "aiozc-vm: insmod $m failed"; done
mount -t 9p -o {_ROOT_OPTS} {ROOT_TAG} /newroot || {{ echo "aiozc-vm: no root share"; poweroff -f; }}
mount -t proc proc /newroot/proc
mount -t sysfs sys /newroot/sys
mount -t devtmpfs dev /newroot/dev
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts devpts /newroot/dev/pts
mount -t tmpfs shm /newroot/dev/shm
mkdir -p /hosttmp
mount -o bind /newroot/tmp /hosttmp
mount -t tmpfs tmp /newroot/tmp
mkdir -p /newroot{HOST_TMP}
mount -o bind /hosttmp /newroot{HOST_TMP}
mount -t tmpfs run /newroot/run
mkdir -p /newroot{GUEST_OUT}
mount -t 9p -o {_OUT_OPTS} {OUT_TAG} /newroot{GUEST_OUT} || {{ echo "aiozc-vm: no out share"; poweroff -f; }}
ip link set lo up
ip addr add {GUEST_ADDR}/{PREFIX} dev eth0
ip link set eth0 up
echo "aiozc-vm: guest up"
chroot /newroot /bin/sh {GUEST_OUT}/job.sh > /newroot{GUEST_OUT}/output.log 2>&1
echo $? > /newroot{GUEST_OUT}/rc
sync
echo "aiozc-vm: job done"
poweroff -f
"""


def module_load_order(folder: Path, wanted: Iterable[str]) -> list[str]:
    """Module names, dependencies first, read from each module's ``depends=`` .modinfo field."""
    order: list[str] = []

    def visit(name: str, stack: tuple[str, ...]) -> None:
        if name in order:
            return
        if name in stack:
            raise ValueError(f"module dependency cycle: {' -> '.join(stack + (name,))}")
        path = folder / f"{name}.ko"
        if not path.exists():
            raise FileNotFoundError(f"module {name} not in {folder}")
        for dep in module_depends(path.read_bytes()):
            visit(dep, stack + (name,))
        order.append(name)

    for name in wanted:
        visit(name, ())
    return order


def module_depends(image: bytes) -> list[str]:
    """The ``depends=a,b`` entry of a module's .modinfo section (a NUL-separated string table)."""
    start = image.find(b"\0depends=")
    if start < 0:
        return []
    value = image[start + len(b"\0depends=") : image.index(b"\0", start + 1)]
    return [name.replace("-", "_") for name in value.decode().split(",") if name]


def build_initramfs(busybox: Path, modules: Sequence[Path]) -> bytes:
    """A gzipped newc cpio archive: /bin/busybox, /init, /modules/*.ko and /modules/order."""
    archive = CpioWriter()
    for directory in ("bin", "modules", "proc", "sys", "dev", "newroot"):
        archive.add_dir(directory)
    archive.add_file("bin/busybox", busybox.read_bytes(), 0o755)
    archive.add_file("init", INIT.encode(), 0o755)
    for module in modules:
        archive.add_file(f"modules/{module.name}", module.read_bytes(), 0o644)
    order = "".join(f"{m.stem}\n" for m in modules)
    archive.add_file("modules/order", order.encode(), 0o644)
    return gzip.compress(archive.finish(), compresslevel=6, mtime=0)


class CpioWriter:
    """The kernel's initramfs format: cpio "newc" (070701), 4-byte aligned, TRAILER!!! last."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._ino = 1

    def add_dir(self, name: str) -> None:
        self._entry(name, b"", 0o040755, nlink=2)

    def add_file(self, name: str, data: bytes, mode: int) -> None:
        self._entry(name, data, 0o100000 | mode, nlink=1)

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", b"", 0, nlink=1)
        return b"".join(self._parts)

    def _entry(self, name: str, data: bytes, mode: int, nlink: int) -> None:
        encoded = name.encode() + b"\0"
        fields = (self._ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(encoded), 0)
        header = b"070701" + b"".join(f"{f:08x}".encode() for f in fields)
        self._ino += 1
        self._parts += [header, encoded, _pad(len(header) + len(encoded)), data, _pad(len(data))]


def _pad(length: int) -> bytes:
    return b"\0" * (-length % 4)
