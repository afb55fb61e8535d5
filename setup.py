"""Build hook for the optional compiled core (aiozc._sys._core, cffi API mode).

Everything else is in pyproject.toml. Without a working C compiler the build of the core
fails and is skipped with a warning: the install still succeeds and aiozc runs its
pure-Python path (``python -m aiozc probe`` says which one is in use). ``AIOZC_NO_EXTENSIONS=1``
skips the build altogether (and, at run time, forces the pure path).
"""

from __future__ import annotations

import os
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext

NO_EXTENSIONS = bool(os.environ.get("AIOZC_NO_EXTENSIONS"))

WARNING = """
*********************************************************************************
aiozc: the optional compiled core could not be built ({error}).
aiozc is installed and works with its pure-Python path, which costs more CPU per
send. Install a C compiler and the Python headers, then reinstall, to build it.
*********************************************************************************
"""


class OptionalBuildExt(build_ext):
    """build_ext that warns instead of failing: the compiled core is an optimisation."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # CCompilerError, DistutilsExecError, PlatformError...
            self._warn(exc)

    def build_extension(self, ext: object) -> None:
        try:
            super().build_extension(ext)  # type: ignore[arg-type]
        except Exception as exc:
            self._warn(exc)

    @staticmethod
    def _warn(exc: BaseException) -> None:
        sys.stderr.write(WARNING.format(error=f"{type(exc).__name__}: {exc}"))


setup(
    cmdclass={"build_ext": OptionalBuildExt},
    cffi_modules=[] if NO_EXTENSIONS else ["aiozc/_sys/_core_build.py:ffibuilder"],
)
