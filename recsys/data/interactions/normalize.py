"""Turn a piece of a log file into a normalized table, or say which value is wrong.

A normalized table has the columns of :meth:`LogColumns.normalized_columns`:

- ``user_id``, ``item_id``: ``string`` (integers become their decimal text); a null
  id is an error.
- ``rating``: ``float32``; text is parsed; a null, non-numeric or non-finite value
  is an error.
- ``timestamp``: ``int64``: integers as they are (e.g. Unix seconds), timestamps and
  dates as Unix seconds, text as an integer or an ISO-8601 date-time (UTC unless it
  carries an offset); a null or unparsable value is an error.
- features: ``id`` and ``text`` as ``string`` (null -> ``""``), ``numeric`` as
  ``float64`` (null or empty -> NaN; text is parsed), ``multi_hot`` as
  ``list<string>`` without empty or null entries (null -> ``[]``; text is split at
  the separator).

Errors are :class:`~recsys.data.interactions.errors.LogError` lines naming the file,
the column, the first bad value and its data row (1-based, not counting a header).

Nothing here imports TensorFlow.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recsys.data.interactions.config import (
    ITEM,
    RATING,
    TIMESTAMP,
    USER,
    LogColumns,
    feature_column,
)
from recsys.data.interactions.errors import LogError
from recsys.data.interactions.files import type_family

__all__ = ["normalize", "normalize_timestamps"]

_INTEGER_TEXT = r"^\s*[-+]?\d+\s*$"
_TZ_SUFFIX = r"(Z|z|[+-]\d\d:?\d\d)\s*$"


class _Where:
    """Names the file and turns a position in the piece into a data row."""

    def __init__(self, file: str, first_row: int, checked: bool = False):
        self.file = file
        self.first_row = first_row
        self.checked = checked

    def row(self, index: int) -> int:
        return self.first_row + int(index) + 1

    def error(self, column: str, problem: str, fix: str) -> LogError:
        return LogError(self.file, problem, fix, column)


def _array(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    return array


def _all(mask: pa.Array) -> bool:
    """Whether every value of a boolean array is true (an empty array is)."""
    return pc.all(mask).as_py() is not False


def _first_true(mask: pa.Array) -> int:
    return int(pc.index(mask, True).as_py())


def _first_failure(values: pa.Array, convert: Callable[[pa.Array], object]) -> int:
    """Index of the first value ``convert`` rejects (bisection over prefixes)."""
    low, high = 0, len(values)  # values[:low] converts, values[:high] does not
    while high - low > 1:
        middle = (low + high) // 2
        try:
            convert(values.slice(0, middle))
            low = middle
        except (pa.ArrowInvalid, ValueError):
            high = middle
    return high - 1


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _no_nulls(array: pa.Array, column: str, where: _Where, what: str) -> None:
    if array.null_count:
        first = _first_true(pc.is_null(array))
        raise where.error(
            column,
            f"{array.null_count} null {what}, the first at data row {where.row(first)}",
            "drop those rows or fill them",
        )


def _ids(array: pa.Array, column: str, where: _Where) -> pa.Array:
    _no_nulls(array, column, where, "ids")
    ids = array if array.type == pa.string() else pc.cast(array, pa.string())
    if not where.checked:
        # Ids travel to TensorFlow as NUL-padded fixed-width bytes: a NUL inside an
        # id would be cut off there.
        nul = pc.match_substring(ids, "\x00")
        if pc.any(nul).as_py():
            bad = _first_true(nul)
            raise where.error(
                column,
                f"the id {_shown(ids[bad].as_py())} at data row {where.row(bad)} contains "
                "a NUL character",
                "remove NUL characters from the ids",
            )
    return ids


def _parse(
    text: pa.Array, convert: Callable[[pa.Array], pa.Array], column: str, where: _Where, what: str
) -> pa.Array:
    try:
        return convert(text)
    except (pa.ArrowInvalid, ValueError):
        bad = _first_failure(text, convert)
        raise where.error(
            column,
            f"{_shown(text[bad].as_py())} at data row {where.row(bad)} is not {what}",
            f"fix that value (every value of {column!r} must be {what})",
        ) from None


def _to_float(text: pa.Array) -> pa.Array:
    return pc.cast(pc.utf8_trim_whitespace(text), pa.float64())


def _ratings(array: pa.Array, column: str, where: _Where) -> pa.Array:
    if where.checked and type_family(array.type) != "string":
        return pc.cast(array, pa.float32())
    _no_nulls(array, column, where, "ratings")
    if type_family(array.type) == "string":
        array = _parse(array, _to_float, column, where, "a number")
    values = pc.cast(array, pa.float64())
    finite = pc.is_finite(values)
    if not _all(finite):
        bad = _first_true(pc.invert(finite))
        raise where.error(
            column,
            f"{values[bad].as_py()} at data row {where.row(bad)} is not a finite number",
            "drop that row or fix the rating",
        )
    return pc.cast(values, pa.float32())


def _parse_times(text: pa.Array) -> pa.Array:
    """Text as Unix seconds: integers, or ISO-8601 (naive = UTC, or with an offset)."""
    text = pc.utf8_trim_whitespace(text)
    if _all(pc.match_substring_regex(text, _INTEGER_TEXT)):
        return pc.cast(text, pa.int64())
    has_zone = pc.match_substring_regex(text, _TZ_SUFFIX)
    if not pc.any(has_zone).as_py():
        return pc.cast(pc.cast(text, pa.timestamp("s")), pa.int64())
    if _all(has_zone):
        return pc.cast(pc.cast(text, pa.timestamp("s", tz="UTC")), pa.int64())
    naive = pc.cast(pc.cast(pc.if_else(has_zone, None, text), pa.timestamp("s")), pa.int64())
    zoned = pc.cast(
        pc.cast(pc.if_else(has_zone, text, None), pa.timestamp("s", tz="UTC")), pa.int64()
    )
    return pc.if_else(has_zone, zoned, naive)


def _timestamps(array: pa.Array, column: str, where: _Where) -> pa.Array:
    _no_nulls(array, column, where, "timestamps")
    family = type_family(array.type)
    if family == "string":
        return _parse(
            array, _parse_times, column, where, "an integer time or an ISO-8601 date-time"
        )
    if family == "timestamp":
        if pa.types.is_date(array.type):
            array = pc.cast(array, pa.timestamp("s"))
        unit_seconds = pa.timestamp("s", tz=getattr(array.type, "tz", None))
        return pc.cast(pc.cast(array, unit_seconds, safe=False), pa.int64())
    if family == "float":
        finite = pc.is_finite(array)
        if not _all(finite):
            bad = _first_true(pc.invert(finite))
            raise where.error(
                column,
                f"{array[bad].as_py()} at data row {where.row(bad)} is not a finite time",
                "drop that row or fix the time",
            )
        return pc.cast(pc.floor(array), pa.int64())
    return pc.cast(array, pa.int64())


def _drop_empty(bags: pa.Array) -> pa.Array:
    """A list<string> array without null/empty entries, null bags as empty."""
    bags = pc.fill_null(bags, pa.scalar([], type=bags.type))
    values = pc.utf8_trim_whitespace(pc.list_flatten(bags))
    keep = pc.and_(pc.is_valid(values), pc.not_equal(pc.fill_null(values, ""), ""))
    keep = pc.fill_null(keep, False)
    owners = pc.list_parent_indices(bags).to_numpy()
    kept = keep.to_numpy(zero_copy_only=False)
    counts = np.bincount(owners[kept], minlength=len(bags))
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), values.filter(keep))


def _multi_hot(array: pa.Array, separator: str) -> pa.Array:
    if type_family(array.type) == "string":
        text = pc.fill_null(pc.cast(array, pa.string()), "")
        return _drop_empty(pc.split_pattern(text, separator))
    return _drop_empty(pc.cast(array, pa.list_(pa.string())))


def _numeric(array: pa.Array, column: str, where: _Where) -> pa.Array:
    if type_family(array.type) == "string":
        text = pc.utf8_trim_whitespace(pc.cast(array, pa.string()))
        text = pc.if_else(pc.equal(pc.fill_null(text, ""), ""), None, text)
        array = _parse(text, _to_float, column, where, "a number")
    return pc.fill_null(pc.cast(array, pa.float64()), float("nan"))


def _feature(array: pa.Array, kind: str, column: str, columns: LogColumns, where: _Where):
    if kind in ("id", "text"):
        return pc.fill_null(pc.cast(array, pa.string()), "")
    if kind == "numeric":
        return _numeric(array, column, where)
    return _multi_hot(array, columns.multi_hot_separator)


def normalize_timestamps(
    column: pa.Array | pa.ChunkedArray, name: str, file: str, first_row: int = 0
) -> np.ndarray:
    """One timestamp column as int64 Unix seconds (see the module docstring).

    Example:
        >>> normalize_timestamps(pa.array(["1970-01-02"]), "t", "f.csv").tolist()
        [86400]
    """
    return _timestamps(_array(column), name, _Where(file, first_row)).to_numpy()


def normalize(
    table: pa.Table, columns: LogColumns, file: str, first_row: int = 0, checked: bool = False
) -> pa.Table:
    """The normalized table of a piece of a log file (see the module docstring).

    Args:
        table: The piece, with (at least) the declared source columns.
        columns: The declared columns.
        file: Named in errors.
        first_row: Data rows of the file before this piece (for row numbers in errors).
        checked: The piece was validated before (by the counting pass): skip the
            checks that cost a pass over the values (finite ratings).

    Returns:
        A table with the columns of ``columns.normalized_columns()``, one chunk each.

    Raises:
        LogError: A null id, rating or timestamp, or a value that does not parse.

    Example:
        >>> raw = pa.table({"u": [1, 2], "i": ["a", "b"], "r": ["4", "5.5"]})
        >>> normalize(raw, LogColumns("u", "i", rating="r"), "f.csv").to_pydict()
        {'user_id': ['1', '2'], 'item_id': ['a', 'b'], 'rating': [4.0, 5.5]}
    """
    where = _Where(file, first_row, checked)
    out = {
        USER: _ids(_array(table.column(columns.user)), columns.user, where),
        ITEM: _ids(_array(table.column(columns.item)), columns.item, where),
    }
    if columns.rating is not None:
        out[RATING] = _ratings(_array(table.column(columns.rating)), columns.rating, where)
    if columns.timestamp is not None:
        out[TIMESTAMP] = _timestamps(
            _array(table.column(columns.timestamp)), columns.timestamp, where
        )
    for tower, declared in (("user", columns.user_features), ("item", columns.item_features)):
        for name, kind in declared.items():
            out[feature_column(tower, name)] = _feature(
                _array(table.column(name)), kind, name, columns, where
            )
    return pa.table(out)
