"""Find an installed memory allocator library (tcmalloc, jemalloc) to preload.

TensorFlow's many small, short-lived allocations on CPU are often faster under
tcmalloc or jemalloc than under glibc's malloc; a library only takes effect when it
is in ``LD_PRELOAD`` at process start, which :mod:`recsys.hardware.process` arranges.
This module only looks: the environment's ``lib`` folder, the usual system folders,
then the dynamic linker's cache (``ldconfig -p``).

Example:
    >>> from recsys.hardware import find_allocator
    >>> find_allocator("jemalloc", search_dirs=[], ldconfig=None) is None
    True
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

__all__ = ["ALLOCATOR_LIBRARIES", "default_library_dirs", "find_allocator"]

#: Allocator name -> shared-library file names to look for, preferred first.
ALLOCATOR_LIBRARIES: Mapping[str, tuple[str, ...]] = {
    "tcmalloc": (
        "libtcmalloc_minimal.so.4",
        "libtcmalloc.so.4",
        "libtcmalloc_minimal.so",
        "libtcmalloc.so",
    ),
    "jemalloc": ("libjemalloc.so.2", "libjemalloc.so.1", "libjemalloc.so"),
}

_DEFAULT_LIB_DIRS = (
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/lib/x86_64-linux-gnu",
    "/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/usr/local/lib",
    "/usr/local/lib64",
    "/opt/conda/lib",
)


def _ldconfig_paths() -> dict[str, str]:
    """Library file name -> path from ``ldconfig -p`` (empty when unavailable)."""
    for exe in ("ldconfig", "/sbin/ldconfig", "/usr/sbin/ldconfig"):
        try:
            out = subprocess.run(
                [exe, "-p"], capture_output=True, text=True, timeout=5, check=False
            ).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        found: dict[str, str] = {}
        for line in out.splitlines():
            match = re.match(r"\s*(\S+)\s.*=>\s*(\S+)", line)
            if match:
                found.setdefault(match.group(1), match.group(2))
        return found
    return {}


def default_library_dirs() -> tuple[str, ...]:
    """Folders searched for allocator libraries: the environment's lib, then system dirs."""
    return (os.path.join(sys.prefix, "lib"), *_DEFAULT_LIB_DIRS)


def find_allocator(
    name: str,
    *,
    search_dirs: Sequence[str | os.PathLike[str]] | None = None,
    ldconfig: Callable[[], Mapping[str, str]] | None = _ldconfig_paths,
    libraries: Mapping[str, Sequence[str]] = ALLOCATOR_LIBRARIES,
) -> Path | None:
    """Find the shared library of allocator ``name`` (``"tcmalloc"`` or ``"jemalloc"``).

    Args:
        name: a key of ``libraries``.
        search_dirs: folders to look in (default: :func:`default_library_dirs`).
        ldconfig: returns ``{file name: path}`` from the linker cache; ``None`` to skip it.
        libraries: allocator name -> candidate file names.

    Returns:
        The library's path, or ``None`` when it is not installed.

    Raises:
        ValueError: ``name`` is not a known allocator.

    Example:
        >>> find_allocator("jemalloc", search_dirs=[], ldconfig=None) is None
        True
    """
    if name not in libraries:
        raise ValueError(
            f"Unknown allocator {name!r}; known: {', '.join(sorted(libraries))} "
            "(or give a path to a shared library)."
        )
    dirs = default_library_dirs() if search_dirs is None else tuple(search_dirs)
    cache = ldconfig() if ldconfig is not None else {}
    for filename in libraries[name]:
        for folder in dirs:
            candidate = Path(folder) / filename
            if candidate.is_file():
                return candidate
        if filename in cache and Path(cache[filename]).is_file():
            return Path(cache[filename])
    return None
