"""What the guest needs, fetched once into a cache folder outside the repository.

Nothing is installed on the host except QEMU itself (``qemu-system-x86``, when missing): the
guest kernel and busybox come as ``apt-get download`` packages that are only unpacked, and only
the few files the guest needs are kept (measured: 71 MB package, ~13 MB kept).
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(os.environ.get("AIOZC_VM_CACHE", "/var/cache/aiozc-vm"))
QEMU = "qemu-system-x86_64"

# Kernel modules the guest loads, by name; their dependencies come from each module's own
# .modinfo (``depends=``), because the package ships no modules.dep (depmod runs at install).
GUEST_MODULES = ("virtio_pci", "virtio_net", "9pnet_virtio", "9p")


@dataclass(frozen=True)
class Assets:
    kernel: Path
    initramfs: Path
    kernel_release: str


def why_unavailable() -> str | None:
    """The reason the guest cannot boot here, or None when it can (possibly after downloads)."""
    if os.geteuid() != 0:
        return "needs root (network namespace, tap device, apt-get)"
    if not os.path.exists("/dev/net/tun"):
        return "no /dev/net/tun (the guest's NIC is a tap device)"
    if shutil.which("ip") is None:
        return "no `ip` (iproute2) for the network namespace"
    if shutil.which(QEMU) is None and shutil.which("apt-get") is None:
        return f"no {QEMU} and no apt-get to install it"
    if shutil.which("apt-get") is None and not _cached_release():
        return "no apt-get to download the guest kernel, and nothing cached"
    return None


def _run(cmd: list[str], cwd: Path | None = None) -> str:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise AssetError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()[-400:]}")
    return done.stdout


class AssetError(RuntimeError):
    """A download or unpack step failed (archive unreachable, package gone)."""


def ensure_qemu() -> None:
    if shutil.which(QEMU):
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "qemu-system-x86"]):
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise AssetError(f"{' '.join(cmd)} failed: {done.stderr.strip()[-400:]}")


def _kernel_package() -> str:
    """The exact image package Debian's ``linux-image-amd64`` points at (e.g. 6.1.0-50)."""
    out = _run(["apt-cache", "depends", "linux-image-amd64"])
    names = re.findall(r"Depends:\s*(linux-image-[0-9][^\s]*-amd64)", out)
    if not names:
        raise AssetError("apt-cache knows no linux-image-amd64 (is the Debian archive configured?)")
    return names[0]


def _cached_release() -> str | None:
    found = sorted(CACHE.glob("*/vmlinuz"))
    return found[-1].parent.name if found else None


def kernel_release(release: str | None = None) -> str:
    """``release``, else ``AIOZC_VM_KERNEL``, else Debian's current one (the cached one without apt).

    Measured 2026-12-01: both kernels bookworm's sources carry (6.1.0-47 = 6.1.170 and
    6.1.0-50 = 6.1.176) have SEND_ZC *and* REPORT_USAGE; nothing older is reachable here
    (README, "the guest VM rig").
    """
    release = release or os.environ.get("AIOZC_VM_KERNEL") or None
    if release is None and shutil.which("apt-get") is None:
        release = _cached_release()
    return release or _kernel_package().removeprefix("linux-image-")


def ensure_assets(release: str | None = None) -> Assets:
    """Kernel and initramfs, downloading and unpacking what the cache lacks.

    ``release`` (or ``AIOZC_VM_KERNEL``, e.g. ``6.1.0-47-amd64``) picks another kernel package
    the configured apt sources carry; by default the one ``linux-image-amd64`` points at.
    """
    ensure_qemu()
    release = kernel_release(release)
    folder = CACHE / release
    kernel = folder / "vmlinuz"
    if not kernel.exists() or not (folder / "modules").is_dir():
        _fetch_kernel(release, folder)
    busybox = CACHE / "busybox"
    if not busybox.exists():
        _fetch_busybox(busybox)
    initramfs = folder / "initramfs.cpio.gz"
    from .initramfs import build_initramfs, module_load_order

    modules = folder / "modules"
    order = module_load_order(modules, GUEST_MODULES)
    initramfs.write_bytes(build_initramfs(busybox, [modules / f"{m}.ko" for m in order]))
    return Assets(kernel=kernel, initramfs=initramfs, kernel_release=release)


def _download(package: str, into: Path) -> Path:
    _run(["apt-get", "download", "-q", package], cwd=into)
    debs = list(into.glob("*.deb"))
    if len(debs) != 1:
        raise AssetError(f"apt-get download {package}: expected one .deb, found {debs}")
    return debs[0]


def _deb_members(deb: Path) -> tarfile.TarFile:
    data = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=True).stdout
    return tarfile.open(fileobj=io.BytesIO(data))


def _fetch_kernel(release: str, folder: Path) -> None:
    with tempfile.TemporaryDirectory(dir=CACHE.parent if CACHE.parent.exists() else None) as tmp:
        CACHE.mkdir(parents=True, exist_ok=True)
        deb = _download(f"linux-image-{release}", Path(tmp))
        staging = Path(tmp) / "out"
        (staging / "modules").mkdir(parents=True)
        with _deb_members(deb) as tar:
            for member in tar.getmembers():
                name = Path(member.name).name
                if member.isfile() and name == f"vmlinuz-{release}":
                    (staging / "vmlinuz").write_bytes(tar.extractfile(member).read())  # type: ignore[union-attr]
                elif member.isfile() and name.endswith(".ko") and _is_guest_module_dir(member.name):
                    (staging / "modules" / name).write_bytes(tar.extractfile(member).read())  # type: ignore[union-attr]
        if not (staging / "vmlinuz").exists():
            raise AssetError(f"linux-image-{release} holds no vmlinuz")
        shutil.rmtree(folder, ignore_errors=True)
        shutil.move(str(staging), folder)


def _is_guest_module_dir(path: str) -> bool:
    """virtio, net and 9p drivers: the only ones the guest loads (a few MB of 4000 modules)."""
    return any(part in path for part in ("/drivers/virtio/", "/drivers/net/", "/net/9p/", "/fs/9p/", "/fs/netfs/", "/fs/fscache/", "/net/core/"))


def _fetch_busybox(target: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        CACHE.mkdir(parents=True, exist_ok=True)
        deb = _download("busybox-static", Path(tmp))
        with _deb_members(deb) as tar:
            member = tar.getmember("./bin/busybox")
            data = tar.extractfile(member).read()  # type: ignore[union-attr]
        partial = target.with_suffix(".partial")
        partial.write_bytes(data)
        partial.chmod(0o755)
        partial.replace(target)


