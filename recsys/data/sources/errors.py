"""The errors of recsys data: every one a :class:`DataError`, each also a built-in type.

Each error also derives from the built-in exception a caller would catch without
knowing recsys (``ConnectionError``, ``OSError``, ``ValueError``, ``FileNotFoundError``).
The classes keep ``recsys.data.sources`` as their module, the public name they had
before the package was split, so tracebacks and pickles name them as users import them.

Nothing here imports TensorFlow.
"""

from __future__ import annotations

__all__ = [
    "ChecksumError",
    "DataError",
    "DatasetUnavailableError",
    "DownloadError",
    "MalformedDataError",
    "MissingMemberError",
    "UnsafeArchiveError",
]


class DataError(Exception):
    """Base class for recsys data errors."""


class DatasetUnavailableError(DataError, ConnectionError):
    """No route (local path, cache, official URL, mirror) produced the dataset."""


class DownloadError(DataError, OSError):
    """A download failed, was cut short, or its content did not match."""


class ChecksumError(DownloadError):
    """A file's size or sha256 differs from the pinned value."""


class UnsafeArchiveError(DataError, ValueError):
    """An archive member would be written or read outside its target folder."""


class MalformedDataError(DataError, ValueError):
    """A data file has a row that does not parse; names the file and the line."""

    def __init__(self, file: str, line: int | None, problem: str, content: str | None = None):
        self.file = file
        self.line = line
        self.problem = problem
        self.content = content
        where = f"{file}, line {line}" if line is not None else file
        text = f"{where}: {problem}"
        if content is not None:
            shown = content if len(content) <= 200 else content[:200] + "..."
            text += f"\n  the line reads: {shown!r}"
        text += (
            "\n  Fix the file or point the loader at an unmodified copy of the dataset; "
            "nothing was written to the cache."
        )
        super().__init__(text)


class MissingMemberError(DataError, FileNotFoundError):
    """A dataset file was not found where its layout says it should be."""


for _error in (
    DataError,
    DatasetUnavailableError,
    DownloadError,
    ChecksumError,
    UnsafeArchiveError,
    MalformedDataError,
    MissingMemberError,
):
    _error.__module__ = "recsys.data.sources"
del _error
