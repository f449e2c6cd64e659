"""The files of a log: what ``data.path`` names, their schemas, and reading them in pieces.

``data.path`` is a file, a folder (its ``.parquet``, ``.csv``, ``.tsv`` files, not
sub-folders) or a glob (``logs/**/*.parquet``). Parquet files are read a range of
row groups at a time; CSV/TSV files (and ``.csv.gz``/``.tsv.gz``) as a stream of
record batches, every declared column as text (parsed later, with errors that name
the row). Before any row is read, every file's header is checked: each declared
column present (else the close names are suggested), of a usable type, and of the
same type in every file.

Nothing here imports TensorFlow.
"""

from __future__ import annotations

import contextlib
import difflib
import glob
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from recsys.data.interactions.config import LogColumns
from recsys.data.interactions.errors import LogError, LogNotFoundError

__all__ = [
    "LogFile",
    "check_schemas",
    "find_log_files",
    "iter_csv_batches",
    "parquet_row_groups",
    "read_row_groups",
    "release_arrow_memory",
    "type_family",
]

SUFFIXES = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".tsv": "tsv",
    ".csv.gz": "csv",
    ".tsv.gz": "tsv",
}
_GLOB_CHARS = set("*?[")
# Which type families each role accepts (Parquet; CSV columns are all read as text).
_ACCEPTS = {
    "user_column": ("string", "integer"),
    "item_column": ("string", "integer"),
    "rating_column": ("integer", "float", "decimal", "string"),
    "timestamp_column": ("integer", "float", "timestamp", "string"),
    "id": ("string", "integer", "bool"),
    "text": ("string",),
    "numeric": ("integer", "float", "decimal", "string"),
    "multi_hot": ("list<string>", "list<integer>", "string"),
}
_HOW_TO_FIX = {
    "user_column": "write the ids as strings or integers",
    "item_column": "write the ids as strings or integers",
    "rating_column": "write the ratings as numbers",
    "timestamp_column": "write Unix times (integers), timestamps or ISO-8601 text",
    "id": "write the feature as strings or integers",
    "text": "write the feature as strings, or declare it with another kind",
    "numeric": "write the feature as numbers, or declare it with another kind",
    "multi_hot": "write it as a list of strings, or as text joined by data.multi_hot_separator",
}


_ROLE_NAMES = {
    "user_column": "a user id column",
    "item_column": "an item id column",
    "rating_column": "a rating column",
    "timestamp_column": "a timestamp column",
}


@dataclass(frozen=True)
class LogFile:
    """One file of a log.

    Attributes:
        path: Absolute path.
        format: ``parquet``, ``csv`` or ``tsv``.
        size: Bytes.
        mtime_ns: Modification time (part of the cache key).
    """

    path: str
    format: str
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: str | os.PathLike[str]) -> LogFile:
        """The :class:`LogFile` of an existing file with a supported suffix."""
        resolved = Path(path).absolute()
        stat = resolved.stat()
        return cls(str(resolved), _format(resolved), stat.st_size, stat.st_mtime_ns)

    def describe(self) -> dict[str, Any]:
        """A JSON-able fingerprint (path, size, modification time)."""
        return {"path": self.path, "size": self.size, "mtime_ns": self.mtime_ns}


def _format(path: Path) -> str | None:
    name = path.name.lower()
    for suffix in sorted(SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return SUFFIXES[suffix]
    return None


def find_log_files(path: str | os.PathLike[str]) -> list[LogFile]:
    """The log files ``path`` names, sorted by path (the order rows are read in).

    Args:
        path: A file, a folder or a glob.

    Returns:
        At least one :class:`LogFile`, all of one kind (Parquet, or CSV/TSV).

    Raises:
        LogNotFoundError: Nothing there, or no log file in the folder/glob.
        LogError: An unsupported file type, or Parquet and text files mixed.

    Example:
        >>> find_log_files("logs/*.parquet")  # doctest: +SKIP
        [LogFile(path='/.../logs/part-0.parquet', format='parquet', ...)]
    """
    given = os.path.expanduser(str(path))
    kinds = ".parquet, .csv or .tsv"
    if _GLOB_CHARS & set(given):
        found = sorted(p for p in glob.glob(given, recursive=True) if os.path.isfile(p))
        files = [p for p in found if _format(Path(p))]
        if not files:
            problem = f"the glob matches no {kinds} file" + (
                f" (it matches {len(found)} other files)" if found else ""
            )
            raise LogNotFoundError(given, problem, "check data.path")
    elif os.path.isdir(given):
        files = sorted(
            str(p) for p in Path(given).iterdir() if p.is_file() and _format(p) is not None
        )
        if not files:
            raise LogNotFoundError(
                given,
                f"the folder holds no {kinds} file",
                "point data.path at the files (sub-folders are not searched: use a glob "
                "such as DIR/**/*.parquet)",
            )
    elif os.path.isfile(given):
        if _format(Path(given)) is None:
            raise LogError(
                given,
                f"is not a {kinds} file",
                "convert it to Parquet or CSV, or name it with its format's suffix",
            )
        files = [given]
    else:
        raise LogNotFoundError(given, "no such file or folder", "check data.path")
    result = [LogFile.of(p) for p in files]
    if len({f.format == "parquet" for f in result}) > 1:
        raise LogError(
            given,
            "mixes Parquet and CSV/TSV files",
            "point data.path at one kind (e.g. a glob DIR/*.parquet)",
        )
    return result


def type_family(arrow_type: pa.DataType) -> str:
    """The family of an Arrow type that decides how a column is read.

    Example:
        >>> type_family(pa.large_string()), type_family(pa.list_(pa.int32()))
        ('string', 'list<integer>')
    """
    t = arrow_type
    if pa.types.is_dictionary(t):
        return type_family(t.value_type)
    if pa.types.is_string(t) or pa.types.is_large_string(t) or _is_string_view(t):
        return "string"
    if pa.types.is_integer(t):
        return "integer"
    if pa.types.is_floating(t):
        return "float"
    if pa.types.is_decimal(t):
        return "decimal"
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        return "timestamp"
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return f"list<{type_family(t.value_type)}>"
    return str(t)


def _is_string_view(t: pa.DataType) -> bool:
    check = getattr(pa.types, "is_string_view", None)
    return bool(check and check(t))


@contextlib.contextmanager
def _open_csv(
    file: LogFile, columns: Sequence[str] = (), block_size: int = 1 << 22
) -> Iterator[pacsv.CSVStreamingReader]:
    convert = pacsv.ConvertOptions(
        column_types={c: pa.string() for c in columns},
        include_columns=list(columns) or None,
        strings_can_be_null=True,
    )
    with pa.input_stream(file.path, compression="detect") as stream:
        try:
            reader = pacsv.open_csv(
                stream,
                read_options=pacsv.ReadOptions(block_size=block_size),
                parse_options=pacsv.ParseOptions(delimiter="\t" if file.format == "tsv" else ","),
                convert_options=convert,
            )
        except pa.ArrowInvalid as err:
            if "Empty CSV file" in str(err):
                raise LogError(
                    file.path, "is empty (no header, no rows)", "remove it or fill it"
                ) from None
            raise LogError(
                file.path, f"is not readable as {file.format.upper()} ({err})", "fix the file"
            ) from None
        yield reader


def file_schema(file: LogFile) -> pa.Schema:
    """The file's columns (Parquet: with their types; CSV/TSV: the header, all text).

    Raises:
        LogError: The file is empty or not readable in its format.
    """
    if file.format == "parquet":
        try:
            return pq.read_schema(file.path)
        except (pa.ArrowInvalid, OSError) as err:
            raise LogError(
                file.path, f"is not a readable Parquet file ({err})", "re-export it"
            ) from None
    with _open_csv(file, block_size=1 << 16) as reader:
        return pa.schema([(name, pa.string()) for name in reader.schema.names])


def _missing_column(file: str, role: str, column: str, names: Sequence[str]) -> LogError:
    lowered = column.lower()
    close = [n for n in names if n.lower() == lowered]
    close += [
        n for n in difflib.get_close_matches(column, names, n=3, cutoff=0.6) if n not in close
    ]
    # A declared name inside a column's name or the reverse ("user" / "user_id").
    close += [n for n in names if (lowered in n.lower() or n.lower() in lowered) and n not in close]
    shown = ", ".join(repr(n) for n in names[:20]) + (" ..." if len(names) > 20 else "")
    problem = f"not found; the file has {shown}"
    if close:
        problem = f"not found (did you mean {close[0]!r}?); the file has {shown}"
    if role.startswith(("user_features.", "item_features.")):
        tower = role.split(".")[0]
        fix = (
            f"rename the key {column!r} of data.{tower} to {close[0]!r}"
            if close
            else f"drop {column!r} from data.{tower} or add the column"
        )
    else:
        fix = f"set data.{role}={close[0]}" if close else f"set data.{role} to one of the columns"
    return LogError(file, problem, fix, column)


def check_schemas(files: Sequence[LogFile], columns: LogColumns) -> list[pa.Schema]:
    """Check every file has the declared columns, of usable and matching types.

    Args:
        files: The log's files.
        columns: What the config declares.

    Returns:
        Each file's schema.

    Raises:
        LogError: A column is missing (close names suggested), has a type its role
            cannot use, or has a different type than in the first file.
    """
    schemas = []
    first: tuple[LogFile, dict[str, str]] | None = None
    kinds = {f"user_features.{n}": k for n, k in columns.user_features.items()}
    kinds.update({f"item_features.{n}": k for n, k in columns.item_features.items()})
    for file in files:
        schema = file_schema(file)
        names = list(schema.names)
        families = {}
        for role, column in columns.roles():
            if column not in names:
                raise _missing_column(file.path, role, column, names)
            family = type_family(schema.field(column).type)
            accepts = _ACCEPTS[kinds.get(role, role)]
            if family not in accepts:
                kind = kinds.get(role)
                what = f"a {kind} feature" if kind else _ROLE_NAMES[role]
                raise LogError(
                    file.path,
                    f"is {schema.field(column).type}, which {what} cannot use "
                    f"(accepted: {', '.join(accepts)})",
                    _HOW_TO_FIX[kinds.get(role, role)],
                    column,
                )
            families[column] = family
        if first is None:
            first = (file, families)
        else:
            for column, family in families.items():
                if family != first[1][column]:
                    raise LogError(
                        file.path,
                        f"is {family} here but {first[1][column]} in {first[0].path}",
                        "write every file of the log with the same schema",
                        column,
                    )
        schemas.append(schema)
    return schemas


def parquet_row_groups(file: LogFile) -> list[int]:
    """Rows of each row group of a Parquet file."""
    metadata = pq.ParquetFile(file.path).metadata
    return [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]


def read_row_groups(file: LogFile | str, groups: Sequence[int], columns: Sequence[str]) -> pa.Table:
    """Row groups ``groups`` of a Parquet file, only ``columns``.

    Raises:
        LogError: The file cannot be read (changed or damaged since it was counted).
    """
    path = file.path if isinstance(file, LogFile) else file
    try:
        return pq.ParquetFile(path).read_row_groups(list(groups), columns=list(columns))
    except (pa.ArrowInvalid, OSError) as err:
        raise LogError(path, f"cannot be read ({err})", "re-export it") from None


def iter_csv_batches(
    file: LogFile, columns: Sequence[str], block_size: int = 1 << 22
) -> Iterator[pa.RecordBatch]:
    """The file's rows as record batches, only ``columns``, every one as text.

    Raises:
        LogError: The file is not valid CSV/TSV (e.g. a row with too many fields).
    """
    with _open_csv(file, columns, block_size) as reader:
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                return
            except pa.ArrowInvalid as err:
                raise LogError(
                    file.path, f"is not valid {file.format.upper()} ({err})", "fix the file"
                ) from None
            yield batch


def release_arrow_memory() -> None:
    """Return the memory Arrow's pool keeps after a pass over the log to the system.

    Arrow's default pool (mimalloc or jemalloc) holds on to freed blocks; after a pass
    over a large log that was about 0.1 GiB of resident memory the training run never
    used again.
    """
    pa.default_memory_pool().release_unused()
