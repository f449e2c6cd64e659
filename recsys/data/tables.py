"""Strict parsing of delimited text tables with errors that name the file and line.

The fast path parses with ``pyarrow.csv`` (multi-threaded, typed); when it rejects the
input or a value check fails, a slow line-by-line scan finds the first bad line and
raises :class:`~recsys.data.sources.MalformedDataError` with the file, the 1-based
line number, the problem and the line's text. Good files never pay for the scan.

Nothing here imports TensorFlow.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from recsys.data.sources import MalformedDataError

Kind = Literal["str", "int", "float"]


@dataclass(frozen=True)
class Check:
    """A vectorized validity test on one column.

    Attributes:
        column: Column name.
        ok: Maps a NumPy array of values to a boolean array (True = valid).
        problem: What is wrong with a value that fails, e.g. ``"rating outside 1..5"``.
    """

    column: str
    ok: Callable[[np.ndarray], np.ndarray]
    problem: str


@dataclass(frozen=True)
class Layout:
    """How a delimited file is laid out.

    Attributes:
        columns: Column names and kinds, in file order.
        sep: Field separator; may be several characters (``"::"``).
        header_lines: Lines to skip at the top.
        quoted: Whether fields may be wrapped in double quotes (CSV); when False a
            ``"`` is an ordinary character.
        encoding: Text encoding of the file.
    """

    columns: Sequence[tuple[str, Kind]]
    sep: str = ","
    header_lines: int = 0
    quoted: bool = False
    encoding: str = "utf-8"

    @property
    def names(self) -> list[str]:
        """Column names."""
        return [name for name, _ in self.columns]


def read_table(
    data: bytes, layout: Layout, file: str, checks: Sequence[Check] = ()
) -> pd.DataFrame:
    """Parse a delimited file into a DataFrame with typed columns.

    Every line must have exactly ``len(layout.columns)`` fields; ``int`` and ``float``
    columns must parse (empty is an error); each :class:`Check` must hold. Empty lines
    are skipped. Row order is the file's order.

    Args:
        data: The file's bytes.
        layout: Columns, separator, header and encoding.
        file: Shown in errors (path or ``archive:member``).
        checks: Extra per-column value checks.

    Returns:
        DataFrame with ``str`` columns as strings, ``int`` as int64, ``float`` as float64.

    Raises:
        MalformedDataError: naming ``file``, the line, the problem and the line's text.

    Example:
        >>> lay = Layout([("user", "str"), ("rating", "float")], sep="\\t")
        >>> read_table(b"1\\t4\\n2\\t5\\n", lay, "u.data")["rating"].tolist()
        [4.0, 5.0]
        >>> read_table(b"1\\t4\\n2\\n", lay, "u.data")
        Traceback (most recent call last):
        ...
        recsys.data.sources.MalformedDataError: u.data, line 2: expected 2 fields separated by '\\t', found 1
          the line reads: '2'
          Fix the file or point the loader at an unmodified copy of the dataset; nothing was written to the cache.
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv

    body = data
    sep = layout.sep
    if len(sep) > 1:
        body = body.replace(sep.encode(layout.encoding), b"\x1f")
        sep = "\x1f"
    types = {"str": pa.string(), "int": pa.int64(), "float": pa.float64()}
    try:
        table = pacsv.read_csv(
            io.BytesIO(body),
            read_options=pacsv.ReadOptions(
                column_names=layout.names,
                skip_rows=layout.header_lines,
                encoding=layout.encoding,
                block_size=1 << 24,
            ),
            parse_options=pacsv.ParseOptions(
                delimiter=sep,
                quote_char='"' if layout.quoted else False,
                double_quote=layout.quoted,
                newlines_in_values=False,
                ignore_empty_lines=True,
            ),
            convert_options=pacsv.ConvertOptions(
                column_types={name: types[kind] for name, kind in layout.columns},
                null_values=[],
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeDecodeError) as err:
        _scan(data, layout, file, checks)
        raise MalformedDataError(file, None, f"could not parse: {err}") from err
    frame = table.to_pandas()
    for check in checks:
        values = frame[check.column].to_numpy()
        if not bool(np.all(check.ok(values))):
            _scan(data, layout, file, checks)
            raise MalformedDataError(file, None, check.problem)
    return frame


def _scan(data: bytes, layout: Layout, file: str, checks: Sequence[Check]) -> None:
    """Raise MalformedDataError for the first bad line (slow path; returns if none)."""
    kinds = dict(layout.columns)
    by_column: dict[str, list[Check]] = {}
    for check in checks:
        by_column.setdefault(check.column, []).append(check)
    n = len(layout.columns)
    shown_sep = layout.sep
    for lineno, raw in enumerate(data.split(b"\n"), 1):
        raw = raw.removesuffix(b"\r")
        if lineno <= layout.header_lines or not raw.strip():
            continue
        try:
            line = raw.decode(layout.encoding)
        except UnicodeDecodeError as err:
            raise MalformedDataError(
                file, lineno, f"not valid {layout.encoding} text ({err.reason})", repr(raw)[2:-1]
            ) from None
        if layout.quoted:
            fields = next(csv.reader([line], delimiter=layout.sep, quotechar='"'))
        else:
            fields = line.split(layout.sep)
        if len(fields) != n:
            raise MalformedDataError(
                file,
                lineno,
                f"expected {n} fields separated by {shown_sep!r}, found {len(fields)}",
                line,
            )
        for (name, _), value in zip(layout.columns, fields, strict=True):
            kind = kinds[name]
            parsed: object = value
            if kind in ("int", "float"):
                try:
                    parsed = int(value) if kind == "int" else float(value)
                except ValueError:
                    raise MalformedDataError(
                        file,
                        lineno,
                        f"field {name!r} is {value!r}, expected {'an integer' if kind == 'int' else 'a number'}",
                        line,
                    ) from None
            for check in by_column.get(name, ()):
                if not bool(np.all(check.ok(np.asarray([parsed])))):
                    raise MalformedDataError(
                        file, lineno, f"{check.problem} (found {value!r})", line
                    )
