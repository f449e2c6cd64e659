"""Errors about a user's interaction log: one line naming the file, the column and the fix.

Both classes belong to the :class:`~recsys.data.sources.DataError` family, so
``python -m recsys.data`` (and anything else that prints a ``DataError``) shows them
without a traceback.

Nothing here imports TensorFlow.
"""

from __future__ import annotations

from recsys.data.sources.errors import DataError

__all__ = ["LogError", "LogNotFoundError"]


class LogError(DataError, ValueError):
    """A log file cannot be used as declared: names the file, the column and the fix.

    Args:
        file: The file (or the path/glob the user gave).
        problem: What is wrong, e.g. ``"3 null values, the first at row 17"``.
        fix: What to change, e.g. ``"set data.user_column=user_id"``.
        column: The column concerned, or None when the problem is the file itself.

    Example:
        >>> str(LogError("a.csv", "has no column 'usr'", "set data.user_column=user", "usr"))
        "a.csv: column 'usr': has no column 'usr'. Fix: set data.user_column=user"
    """

    def __init__(self, file: str, problem: str, fix: str, column: str | None = None):
        self.file = str(file)
        self.column = column
        self.problem = problem
        self.fix = fix
        where = self.file if column is None else f"{self.file}: column {column!r}"
        super().__init__(f"{where}: {problem}. Fix: {fix}")

    def __reduce__(self):  # keep the four fields through pickling (multiprocessing)
        return (type(self), (self.file, self.problem, self.fix, self.column))


class LogNotFoundError(LogError, FileNotFoundError):
    """``data.path`` names no file, or a folder or glob with no log files in it."""
