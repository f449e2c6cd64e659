"""Blocks: the pieces of a log that are read, counted and shuffled as units.

A block is a range of consecutive row groups of one Parquet file: of a user's file
when its row groups are small enough (read in place), else of the normalized copy
written while counting (CSV/TSV files, and Parquet files with huge row groups, are
copied once into the cache as Parquet with row groups of ``block_rows``). Every pass
(counting, encoding, each training epoch) reads the same blocks, so per-block split
counts recorded while counting tell each later pass how many rows it will get before
it reads them: that is what gives the training pipeline a known length and lets an
epoch start at any batch.

Nothing here imports TensorFlow.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recsys.data.interactions.config import LogColumns
from recsys.data.interactions.errors import LogError
from recsys.data.interactions.files import (
    LogFile,
    iter_csv_batches,
    parquet_row_groups,
    read_row_groups,
)
from recsys.data.interactions.normalize import normalize

__all__ = ["BlockReader", "Blocks", "group_row_groups", "iter_normalized_pieces"]

_BLOCK_COLUMNS = ("file", "group_start", "group_stop", "rows", "file_row", "first_row")


@dataclass(frozen=True)
class Blocks:
    """The blocks of a log and where each one lives.

    Attributes:
        paths: The Parquet file of each entry (a user's file or a normalized copy).
        sources: The user's file each entry comes from (named in errors).
        normalized: Whether each entry holds normalized columns (a copy).
        table: One row per block: ``file`` (entry of ``paths``), ``group_start`` and
            ``group_stop`` (row groups), ``rows``, ``file_row`` (rows of the user's
            file before the block), ``first_row`` (rows of the log before it),
            ``train``, ``val``, ``test`` (rows of each split in it).
    """

    paths: tuple[str, ...]
    sources: tuple[str, ...]
    normalized: tuple[bool, ...]
    table: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.table["rows"])

    def split_rows(self, split: int) -> np.ndarray:
        """Rows of split ``split`` (0 train, 1 val, 2 test) in each block."""
        return self.table[("train", "val", "test")[split]]

    def to_arrow(self) -> pa.Table:
        """The block table (saved in the cache as ``blocks.parquet``)."""
        return pa.table(self.table)

    def describe(self, root: Path) -> dict[str, Any]:
        """The file list (saved in the cache manifest); copies relative to ``root``."""
        return {
            "paths": [
                str(Path(p).relative_to(root)) if copied else p
                for p, copied in zip(self.paths, self.normalized, strict=True)
            ],
            "sources": list(self.sources),
            "normalized": list(self.normalized),
        }

    @classmethod
    def load(cls, described: dict[str, Any], table: pa.Table, root: Path) -> Blocks:
        """Blocks saved with :meth:`describe` and :meth:`to_arrow`; copies live in ``root``."""
        paths = tuple(
            str(root / p) if copied else p
            for p, copied in zip(described["paths"], described["normalized"], strict=True)
        )
        columns = {name: table.column(name).to_numpy() for name in table.column_names}
        return cls(paths, tuple(described["sources"]), tuple(described["normalized"]), columns)


def group_row_groups(sizes: Sequence[int], block_rows: int) -> list[tuple[int, int]]:
    """Consecutive row groups joined into ranges of at least ``block_rows`` rows.

    Example:
        >>> group_row_groups([10, 10, 30, 5], block_rows=20)
        [(0, 2), (2, 3), (3, 4)]
    """
    ranges, start, rows = [], 0, 0
    for index, size in enumerate(sizes):
        rows += size
        if rows >= block_rows:
            ranges.append((start, index + 1))
            start, rows = index + 1, 0
    if start < len(sizes):
        ranges.append((start, len(sizes)))
    return ranges


def _rechunk(tables: Iterator[pa.Table], rows: int) -> Iterator[pa.Table]:
    """Tables of exactly ``rows`` rows (the last may be shorter)."""
    pending: list[pa.Table] = []
    held = 0
    for table in tables:
        pending.append(table)
        held += len(table)
        while held >= rows:
            joined = pa.concat_tables(pending)
            yield joined.slice(0, rows).combine_chunks()
            rest = joined.slice(rows)
            pending, held = ([rest] if len(rest) else []), len(rest)
    if held:
        yield pa.concat_tables(pending).combine_chunks()


def iter_normalized_pieces(
    files: Sequence[LogFile],
    columns: LogColumns,
    copy_dir: Path,
    block_rows: int,
    max_row_group_rows: int,
) -> Iterator[tuple[dict[str, Any], pa.Table]]:
    """Every block of the log once, normalized, with its description.

    Parquet files whose row groups hold at most ``max_row_group_rows`` rows are read
    in place; the others (and CSV/TSV files) are normalized and written to
    ``copy_dir`` as Parquet with row groups of ``block_rows`` rows, which later
    passes read instead.

    Yields:
        ``(block, table)``: ``block`` has the :class:`Blocks` table's fields plus
        ``path``, ``source`` and ``normalized``; ``table`` is normalized.

    Raises:
        LogError: A file has no rows, or a value that does not parse.
    """
    source_columns = columns.source_columns()
    first_row = 0
    for number, file in enumerate(files):
        sizes = parquet_row_groups(file) if file.format == "parquet" else None
        file_row = 0
        if sizes is not None and sizes and max(sizes) <= max_row_group_rows:
            for start, stop in group_row_groups(sizes, block_rows):
                raw = read_row_groups(file, range(start, stop), source_columns)
                table = normalize(raw, columns, file.path, file_row)
                block = {
                    "path": file.path,
                    "source": file.path,
                    "normalized": False,
                    "group_start": start,
                    "group_stop": stop,
                    "rows": len(table),
                    "file_row": file_row,
                    "first_row": first_row,
                }
                yield block, table
                file_row += len(table)
                first_row += len(table)
        elif sizes is None or sizes:
            copy = copy_dir / f"part-{number:05d}.parquet"
            copy.parent.mkdir(parents=True, exist_ok=True)
            writer: pq.ParquetWriter | None = None
            try:
                for group, table in enumerate(
                    _rechunk(_normalized_stream(file, columns, source_columns), block_rows)
                ):
                    if writer is None:
                        writer = pq.ParquetWriter(copy, table.schema)
                    writer.write_table(table, row_group_size=len(table))
                    block = {
                        "path": str(copy),
                        "source": file.path,
                        "normalized": True,
                        "group_start": group,
                        "group_stop": group + 1,
                        "rows": len(table),
                        "file_row": file_row,
                        "first_row": first_row,
                    }
                    yield block, table
                    file_row += len(table)
                    first_row += len(table)
            finally:
                if writer is not None:
                    writer.close()
        if file_row == 0:
            raise LogError(file.path, "has no rows", "remove the empty file or fill it")


def _normalized_stream(
    file: LogFile, columns: LogColumns, source_columns: list[str]
) -> Iterator[pa.Table]:
    file_row = 0
    if file.format == "parquet":
        batches: Iterator[pa.RecordBatch] = pq.ParquetFile(file.path).iter_batches(
            batch_size=1 << 17, columns=source_columns
        )
    else:
        batches = iter_csv_batches(file, source_columns)
    for batch in batches:
        if len(batch):
            yield normalize(pa.Table.from_batches([batch]), columns, file.path, file_row)
            file_row += len(batch)


class BlockReader:
    """Reads blocks as normalized tables (from the user's files or the copies).

    Args:
        blocks: The log's blocks.
        columns: The declared columns.

    Example:
        >>> reader = BlockReader(blocks, columns)  # doctest: +SKIP
        >>> reader.read(0, features=False).column_names  # doctest: +SKIP
        ['user_id', 'item_id', 'rating', 'timestamp']
    """

    def __init__(self, blocks: Blocks, columns: LogColumns):
        self.blocks = blocks
        self.columns = columns
        self._ids_only = dataclasses.replace(columns, user_features={}, item_features={})

    def read(self, block: int, features: bool = True) -> pa.Table:
        """Block ``block``, normalized; without the side features unless ``features``.

        Raises:
            LogError: The file changed since it was counted (different row count), or
                no longer parses.
        """
        table = self.blocks.table
        entry = int(table["file"][block])
        path = self.blocks.paths[entry]
        columns = self.columns if features else self._ids_only
        groups = range(int(table["group_start"][block]), int(table["group_stop"][block]))
        if self.blocks.normalized[entry]:
            out = read_row_groups(path, groups, columns.normalized_columns())
        else:
            raw = read_row_groups(path, groups, columns.source_columns())
            out = normalize(raw, columns, path, int(table["file_row"][block]), checked=True)
        if len(out) != int(table["rows"][block]):
            raise LogError(
                self.blocks.sources[entry],
                f"changed since it was counted ({len(out)} rows where {table['rows'][block]} "
                "were counted)",
                "delete the data module's cache folder (data.cache_dir) and run again",
            )
        return out


def block_table(described: Sequence[dict[str, Any]], split_rows: np.ndarray) -> Blocks:
    """:class:`Blocks` from the blocks :func:`iter_normalized_pieces` described."""
    paths: list[str] = []
    sources: list[str] = []
    normalized: list[bool] = []
    entry_of: dict[str, int] = {}
    file_index = []
    for block in described:
        if block["path"] not in entry_of:
            entry_of[block["path"]] = len(paths)
            paths.append(block["path"])
            sources.append(block["source"])
            normalized.append(block["normalized"])
        file_index.append(entry_of[block["path"]])
    table = {"file": np.asarray(file_index, dtype=np.int32)}
    for name in _BLOCK_COLUMNS[1:]:
        table[name] = np.asarray([b[name] for b in described], dtype=np.int64)
    split_rows = np.asarray(split_rows, dtype=np.int64).reshape(-1, 3)
    for column, name in enumerate(("train", "val", "test")):
        table[name] = split_rows[:, column]
    return Blocks(tuple(paths), tuple(sources), tuple(normalized), table)
