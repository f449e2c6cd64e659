"""The index of a log: what the counting pass learns, saved as a cache folder.

:func:`build_index` runs the counting pass (:mod:`~recsys.data.interactions.counting`)
over the blocks of the log and writes, atomically::

    <cache folder>/
        manifest.json      files (path, size, mtime), columns, split, cutoffs, row counts
        blocks.parquet     one row per block: where it is, its rows per split
        labels.u8          the split of every row (one byte a row, in log order)
        users.parquet      every user id: rows in train / val / test, first row, hash
        items.parquet      the same for items
        rows/              normalized copies of CSV/TSV files (and of Parquet files
                           whose row groups are too large to shuffle)

:func:`load_index` reads it back. Nothing here holds a row of the log.

Nothing here imports TensorFlow.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recsys.data.interactions.cache import atomic_folder
from recsys.data.interactions.config import ITEM, USER, LogColumns, SplitSpec
from recsys.data.interactions.counting import IdCounter, IdTable, SplitCounts
from recsys.data.interactions.errors import LogError
from recsys.data.interactions.files import (
    LogFile,
    iter_csv_batches,
    parquet_row_groups,
    read_row_groups,
)
from recsys.data.interactions.hashing import hash_strings
from recsys.data.interactions.layout import Blocks, block_table, iter_normalized_pieces
from recsys.data.interactions.normalize import normalize_timestamps
from recsys.data.interactions.splitter import Splitter

__all__ = ["INDEX_VERSION", "LogIndex", "build_index", "load_index"]

log = logging.getLogger(__name__)

INDEX_VERSION = 1
MANIFEST = "manifest.json"
LABELS = "labels.u8"


@dataclass(frozen=True)
class LogIndex:
    """What later passes need to know about a log before reading it.

    Attributes:
        folder: The cache folder.
        columns: The declared columns.
        splitter: Labels rows (with the time cutoffs found, for ``split=time``).
        blocks: The blocks and their rows per split.
        users: Every user id with its counts.
        items: Every item id with its counts.
        rows: Rows per split.
        seconds: How long the counting pass took (0 when loaded from the cache).
    """

    folder: Path
    columns: LogColumns
    splitter: Splitter
    blocks: Blocks
    users: IdTable
    items: IdTable
    rows: SplitCounts
    seconds: float = 0.0

    def labels(self, block: int) -> np.ndarray:
        """The split (0 train, 1 val, 2 test) of each row of block ``block`` (uint8).

        The counting pass computed them with :attr:`splitter` and saved them (one byte
        a row) so that later passes need not hash every row again.
        """
        table = self.blocks.table
        rows, first = int(table["rows"][block]), int(table["first_row"][block])
        labels = np.fromfile(self.folder / LABELS, dtype=np.uint8, count=rows, offset=first)
        if len(labels) != rows:
            raise LogError(
                str(self.folder / LABELS),
                f"is shorter than the log ({first + len(labels)} of {first + rows} rows)",
                "delete the data module's cache folder (data.cache_dir) and run again",
            )
        return labels


def _timestamp_passes(files: Sequence[LogFile], columns: LogColumns) -> Iterator[np.ndarray]:
    """The normalized timestamps of every file, a row group or CSV batch at a time."""
    for file in files:
        file_row = 0
        if file.format == "parquet":
            for group in range(len(parquet_row_groups(file))):
                array = read_row_groups(file, [group], [columns.timestamp]).column(0)
                yield normalize_timestamps(array, columns.timestamp, file.path, file_row)
                file_row += len(array)
        else:
            for batch in iter_csv_batches(file, [columns.timestamp]):
                yield normalize_timestamps(batch.column(0), columns.timestamp, file.path, file_row)
                file_row += len(batch)


def build_index(
    files: Sequence[LogFile],
    columns: LogColumns,
    split: SplitSpec,
    folder: Path,
    describe: dict[str, Any],
    block_rows: int = 1 << 17,
    max_row_group_rows: int = 1 << 21,
) -> LogIndex:
    """Run the counting pass over ``files`` and write the index to ``folder`` atomically.

    Args:
        files: The log's files (checked with
            :func:`~recsys.data.interactions.files.check_schemas`).
        columns: The declared columns.
        split: The declared split.
        folder: The cache folder to create.
        describe: What the cache depends on (written to the manifest).
        block_rows: Rows per block (row groups of the copies; Parquet row groups are
            joined up to this).
        max_row_group_rows: Parquet files with larger row groups are copied.

    Returns:
        The index, read back from ``folder``.

    Raises:
        LogError: A file is empty, a value does not parse, an id is null.
    """
    start = time.perf_counter()
    timestamps = None
    if columns.timestamp is not None:
        timestamps = lambda: _timestamp_passes(files, columns)  # noqa: E731
    splitter = Splitter.for_spec(split, timestamps)
    with atomic_folder(folder) as tmp:
        users, items = IdCounter(), IdCounter()
        described: list[dict[str, Any]] = []
        split_rows: list[np.ndarray] = []
        pieces = iter_normalized_pieces(
            files, columns, tmp / "rows", block_rows, max_row_group_rows
        )
        with (tmp / LABELS).open("wb") as labels_file:
            for block, table in pieces:
                user_ids, item_ids = table.column(USER), table.column(ITEM)
                user_hashes, item_hashes = hash_strings(user_ids), hash_strings(item_ids)
                labels = splitter.labels(table, user_hashes, item_hashes)
                users.add(user_ids, user_hashes, labels, block["first_row"])
                items.add(item_ids, item_hashes, labels, block["first_row"])
                labels.tofile(labels_file)
                described.append(block)
                split_rows.append(np.bincount(labels, minlength=3))
        blocks = block_table(described, np.asarray(split_rows).reshape(-1, 3))
        pq.write_table(blocks.to_arrow(), tmp / "blocks.parquet")
        pq.write_table(users.result().to_arrow(), tmp / "users.parquet")
        pq.write_table(items.result().to_arrow(), tmp / "items.parquet")
        totals = np.asarray(split_rows, dtype=np.int64).reshape(-1, 3).sum(axis=0)
        manifest = {
            "version": INDEX_VERSION,
            "depends_on": describe,
            "splitter": splitter.describe(),
            "rows": {"train": int(totals[0]), "val": int(totals[1]), "test": int(totals[2])},
            "blocks": blocks.describe(tmp),
            "seconds": time.perf_counter() - start,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    index = load_index(folder, columns, split)
    assert index is not None
    log.info(
        "Counted %s rows (%s users, %s items) in %.1f s into %s",
        f"{index.rows.total:,}",
        f"{len(index.users):,}",
        f"{len(index.items):,}",
        index.seconds,
        folder,
    )
    return index


def load_index(folder: Path, columns: LogColumns, split: SplitSpec) -> LogIndex | None:
    """The index saved in ``folder``, or None when there is no complete one."""
    try:
        manifest = json.loads((Path(folder) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("version") != INDEX_VERSION:
        return None
    try:
        blocks = Blocks.load(manifest["blocks"], pq.read_table(folder / "blocks.parquet"), folder)
        users = IdTable.from_arrow(pq.read_table(folder / "users.parquet"))
        items = IdTable.from_arrow(pq.read_table(folder / "items.parquet"))
    except (OSError, pa.ArrowInvalid, KeyError):
        return None
    cutoffs = manifest["splitter"]
    rows = manifest["rows"]
    return LogIndex(
        Path(folder),
        columns,
        Splitter(split, cutoffs["test_cutoff"], cutoffs["val_cutoff"]),
        blocks,
        users,
        items,
        SplitCounts(rows["train"], rows["val"], rows["test"]),
        float(manifest.get("seconds", 0.0)),
    )
