"""Where the anchors' test code comes from, copied into a cache outside git at run time.

Neither suite is ever committed: CPython's comes from the running interpreter's own ``test``
package, uvloop's is extracted with ``git archive`` from a clone of MagicStack/uvloop at the
commit closest to the installed uvloop.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import io
from dataclasses import dataclass
from pathlib import Path

DEFAULT_CACHE = Path(os.environ.get("AIOZC_COMPAT_CACHE", Path.home() / ".cache" / "aiozc-compat"))

# A bare clone of https://github.com/MagicStack/uvloop; the first one found is used.
UVLOOP_REPO_CANDIDATES = (
    os.environ.get("AIOZC_UVLOOP_REPO", ""),
    "/work/.mirror/MagicStack+uvloop/repo",
    str(DEFAULT_CACHE / "uvloop.git"),
)


@dataclass(frozen=True)
class Source:
    """One prepared copy of test code: ``root`` goes first on sys.path of the worker."""

    name: str
    root: Path
    version: str  # what was copied, for the report


def _git(repo: str, *args: str) -> str:
    return subprocess.run(
        ["git", "--git-dir", repo, *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def _find_uvloop_repo() -> str:
    for candidate in UVLOOP_REPO_CANDIDATES:
        if candidate and Path(candidate).exists():
            return candidate
    raise SystemExit(
        "uvloop's test suite is needed: clone it with\n"
        f"  git clone --bare https://github.com/MagicStack/uvloop {DEFAULT_CACHE / 'uvloop.git'}\n"
        "or point AIOZC_UVLOOP_REPO at a clone"
    )


def _uvloop_commit(repo: str) -> tuple[str, str]:
    """The tag of the installed uvloop if the clone has it, else the clone's HEAD."""
    installed = importlib.metadata.version("uvloop")
    tags = set(_git(repo, "tag", "--list").split())
    ref = f"v{installed}" if f"v{installed}" in tags else "HEAD"
    commit = _git(repo, "rev-parse", f"{ref}^{{commit}}")
    described = _git(repo, "describe", "--tags", commit)
    note = f"uvloop {described} ({commit[:12]})"
    if ref == "HEAD":
        note += f"; installed uvloop {installed} has no tag in the clone, HEAD used"
    return commit, note


def uvloop_tests(cache: Path = DEFAULT_CACHE) -> Source:
    repo = _find_uvloop_repo()
    commit, note = _uvloop_commit(repo)
    root = cache / f"uvloop-{commit[:12]}"
    if not (root / "tests" / "test_tcp.py").exists():
        archive = subprocess.run(
            ["git", "--git-dir", repo, "archive", "--format=tar", commit, "tests"],
            check=True,
            capture_output=True,
        ).stdout
        root.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(root, filter="data")
    if importlib.util.find_spec("uvloop._testbase") is None:
        raise SystemExit("the installed uvloop has no _testbase module, which its tests import")
    return Source("uvloop", root, note)


def cpython_tests(cache: Path = DEFAULT_CACHE) -> Source:
    """``test/__init__.py``, ``test/support``, ``test/certdata`` and ``test/test_asyncio`` of this interpreter."""
    spec = importlib.util.find_spec("test")
    if spec is None or spec.origin is None:
        raise SystemExit("this Python has no `test` package (Debian: apt-get install libpython3-testsuite)")
    installed = Path(spec.origin).parent
    version = ".".join(map(str, sys.version_info[:3]))
    root = cache / f"cpython-{version}"
    target = root / "test"
    if not (target / "certdata").exists():
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy2(installed / "__init__.py", target / "__init__.py")
        ignore = shutil.ignore_patterns("__pycache__")
        for sub in ("support", "certdata", "test_asyncio"):
            shutil.copytree(installed / sub, target / sub, ignore=ignore, dirs_exist_ok=True)
    return Source("cpython", root, f"CPython {version} Lib/test (from {installed})")
