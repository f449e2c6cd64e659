"""Cache folders that appear whole or not at all.

:func:`atomic_folder` builds a folder under a temporary name next to its final place
and renames it into place only when the build returns; an error (a bad value found
in row 40 million, an interrupt) removes the temporary folder, so a failed run
leaves no partial cache or vocabulary behind. :func:`cache_key` names a cache by
what its content depends on.

Nothing here imports TensorFlow.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["atomic_file", "atomic_folder", "cache_key"]


def cache_key(material: Any, length: int = 16) -> str:
    """A short hex digest of a JSON-able description.

    Example:
        >>> cache_key({"a": 1}) == cache_key({"a": 1}), len(cache_key({"a": 1}))
        (True, 16)
    """
    text = json.dumps(material, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


@contextlib.contextmanager
def atomic_folder(final: Path) -> Iterator[Path]:
    """Yield a temporary folder that becomes ``final`` when the block succeeds.

    If ``final`` appeared meanwhile (another process built it), the new one is
    dropped and the existing one kept.

    Example:
        >>> with atomic_folder(Path("/tmp/recsys-doc/cache")) as tmp:  # doctest: +SKIP
        ...     (tmp / "manifest.json").write_text("{}")
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        try:
            os.replace(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(final: Path) -> Iterator[Path]:
    """Yield a temporary path that replaces ``final`` when the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
