"""Per-user histories of a log, built on disk in bounded memory and read back lazily.

:func:`build_histories` groups the rows of some splits by user without holding them:
one pass over the blocks appends each kept row (user position, catalogue row, split,
timestamp, rating) to one of a few bucket files, each bucket owning a contiguous
range of users; then each bucket alone is read, sorted by (user, time when asked,
split) and appended to the members file. Memory: one bucket (``bucket_rows`` rows,
about 25 bytes each) and a few arrays the size of the user table, whatever the
number of rows. :func:`truncate_histories` keeps the last ``max_length`` members of
every bag, reading the full files a slice at a time.

The cache folder holds, per (splits, order, max_length)::

    histories/<name>/
        offsets.i64     [users + 1] compressed-row offsets
        members.i64     catalogue rows (the items' positions in the sorted catalogue)
        ratings.f32     the ratings alongside, when the log has them

:func:`load_histories` returns a :class:`~recsys.data.contract.Histories` whose members
(and ratings) are memory-mapped read-only (``in_memory=False``: only the pages a
reader touches become resident) or read into memory.

Order within a bag: as :meth:`Histories.from_interactions` over the splits merged in
the order given: by timestamp when asked (ties: earlier split first, then log
order), else by split then log order.

Nothing here imports TensorFlow.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recsys.data.contract import Histories, positions
from recsys.data.interactions.cache import atomic_folder
from recsys.data.interactions.config import ITEM, RATING, TIMESTAMP, USER
from recsys.data.interactions.files import release_arrow_memory
from recsys.data.interactions.hashing import hash_strings
from recsys.data.interactions.index import LogIndex
from recsys.data.interactions.layout import BlockReader

__all__ = [
    "DiskHistories",
    "build_histories",
    "histories_keys",
    "load_histories",
    "truncate_histories",
]

log = logging.getLogger(__name__)

OFFSETS, MEMBERS, RATINGS = "offsets.i64", "members.i64", "ratings.f32"
# A bucket's rows are sorted in memory: about 25 bytes a row plus the sort's index.
BUCKET_ROWS = 1 << 22
_RECORD = np.dtype(
    [("key", "<i4"), ("item", "<i4"), ("split", "u1"), ("time", "<i8"), ("rating", "<f4")]
)


def _present(index: LogIndex, splits: Sequence[int]) -> np.ndarray:
    """Rows of ``splits`` of every user, in sorted-id order."""
    users = index.users
    return users.sorted_column(users.counts[:, list(splits)].sum(axis=1))


def histories_keys(index: LogIndex, splits: Sequence[int]) -> np.ndarray:
    """The sorted ids of the users with rows in ``splits`` (the histories' keys)."""
    return index.users.sorted_ids[_present(index, splits) > 0]


def build_histories(
    index: LogIndex,
    splits: Sequence[int],
    folder: Path,
    time_folder: Path | None = None,
    bucket_rows: int | None = None,
) -> None:
    """Write the histories of ``splits`` (0 train, 1 val, 2 test) to ``folder``, atomically.

    Args:
        index: The counted log.
        splits: The splits whose rows make the bags, in merge order.
        folder: The folder to create for the bags in log order (see the module
            docstring).
        time_folder: Also write the bags ordered by timestamp there, from the same
            pass over the log (which must have a timestamp column).
        bucket_rows: Rows sorted in memory at a time (None: :data:`BUCKET_ROWS`).

    Raises:
        LogError: A file changed since it was counted.
        ValueError: ``time_folder`` is given for a log without timestamps.
    """
    start = time.perf_counter()
    columns = index.columns
    if time_folder is not None and columns.timestamp is None:
        raise ValueError("`time_folder` needs a log with a timestamp column. Received None.")
    counts = _present(index, splits)
    present = counts > 0
    local = np.where(present, np.cumsum(present) - 1, -1).astype(np.int64)
    sizes = counts[present]
    total = int(sizes.sum())
    buckets = max(1, -(-total // (bucket_rows or BUCKET_ROWS)))
    # Bucket of each key: by the position of its first member, so every bucket owns a
    # contiguous range of keys and about `total / buckets` rows.
    first = np.cumsum(sizes) - sizes
    bucket_of_key = np.minimum(first * buckets // max(total, 1), buckets - 1).astype(np.int64)
    folder = Path(folder)
    scratch = folder.parent / f".{folder.name}.buckets-{uuid.uuid4().hex[:8]}"
    scratch.mkdir(parents=True)
    try:
        _bucket_rows(index, splits, local, bucket_of_key, buckets, scratch)
        offsets = np.zeros(len(sizes) + 1, np.int64)
        offsets[1:] = np.cumsum(sizes)
        targets = [(folder, False)] + ([(Path(time_folder), True)] if time_folder else [])
        for target, by_time in targets:
            with atomic_folder(target) as tmp:
                offsets.tofile(tmp / OFFSETS)
                _write_sorted(scratch, buckets, by_time, columns.rating is not None, tmp)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        release_arrow_memory()
    log.info(
        "Grouped %s rows by user (%s buckets) in %.1f s into %s",
        f"{total:,}",
        buckets,
        time.perf_counter() - start,
        folder,
    )


def _bucket_rows(
    index: LogIndex,
    splits: Sequence[int],
    local: np.ndarray,
    bucket_of_key: np.ndarray,
    buckets: int,
    scratch: Path,
) -> None:
    """One pass over the log: each kept row appended to its user's bucket file."""
    columns = index.columns
    rank = np.zeros(3, np.uint8)
    rank[list(splits)] = np.arange(len(splits), dtype=np.uint8)
    wanted = np.zeros(3, bool)
    wanted[list(splits)] = True
    reader = BlockReader(index.blocks, columns)
    table = index.blocks.table
    files = [(scratch / f"bucket-{b}.rec").open("wb") for b in range(buckets)]
    try:
        for block in range(len(index.blocks)):
            if not any(int(index.blocks.split_rows(s)[block]) for s in splits):
                continue
            labels = index.labels(block)
            keep = wanted[labels]
            rows = reader.read(block, features=False)
            source = index.blocks.sources[int(table["file"][block])]
            user_ids, item_ids = rows.column(USER), rows.column(ITEM)
            users = index.users.codes(user_ids, hash_strings(user_ids), source)[keep]
            items = index.items.codes(item_ids, hash_strings(item_ids), source)[keep]
            record = np.zeros(len(users), _RECORD)
            record["key"] = local[users]
            record["item"] = items
            record["split"] = rank[labels[keep]]
            if columns.timestamp is not None:
                record["time"] = rows.column(TIMESTAMP).to_numpy()[keep]
            if columns.rating is not None:
                record["rating"] = rows.column(RATING).to_numpy()[keep]
            bucket = bucket_of_key[record["key"]]
            order = np.argsort(bucket, kind="stable")  # keeps log order within a bucket
            bounds = np.searchsorted(bucket[order], np.arange(buckets + 1))
            for b in np.flatnonzero(np.diff(bounds)):
                record[order[bounds[b] : bounds[b + 1]]].tofile(files[b])
    finally:
        for f in files:
            f.close()


def _write_sorted(scratch: Path, buckets: int, by_time: bool, ratings: bool, out: Path) -> None:
    """Each bucket sorted by (user, time if asked, split), appended to the members file."""
    with (out / MEMBERS).open("wb") as members, contextlib.ExitStack() as stack:
        rating_file = stack.enter_context((out / RATINGS).open("wb")) if ratings else None
        for b in range(buckets):
            record = np.fromfile(scratch / f"bucket-{b}.rec", _RECORD)
            sort_keys = (record["split"], record["key"])
            if by_time:
                sort_keys = (record["split"], record["time"], record["key"])
            order = np.lexsort(sort_keys)  # stable: ties keep log order
            record["item"][order].astype(np.int64).tofile(members)
            if rating_file is not None:
                record["rating"][order].tofile(rating_file)


def truncate_histories(
    source: Path, folder: Path, max_length: int, chunk_rows: int | None = None
) -> None:
    """Write the last ``max_length`` members of every bag of ``source`` to ``folder``.

    Reads ``source`` a slice of bags at a time (about ``chunk_rows`` members), so
    memory does not follow its size.
    """
    chunk_rows = chunk_rows or BUCKET_ROWS
    offsets = np.fromfile(source / OFFSETS, np.int64)
    lengths = np.diff(offsets)
    kept = np.minimum(lengths, max_length)
    with_ratings = (source / RATINGS).is_file()
    with atomic_folder(folder) as tmp:
        new = np.zeros(len(offsets), np.int64)
        new[1:] = np.cumsum(kept)
        new.tofile(tmp / OFFSETS)
        names = [(MEMBERS, np.int64)] + ([(RATINGS, np.float32)] if with_ratings else [])
        for name, dtype in names:
            with (tmp / name).open("wb") as out:
                key = 0
                while key < len(lengths):
                    stop = int(np.searchsorted(offsets, offsets[key] + chunk_rows, "right"))
                    stop = min(max(stop - 1, key + 1), len(lengths))
                    low, high = int(offsets[key]), int(offsets[stop])
                    values = np.fromfile(
                        source / name, dtype, count=high - low, offset=low * dtype().itemsize
                    )
                    starts = offsets[key + 1 : stop + 1] - kept[key:stop] - low
                    take = np.repeat(starts, kept[key:stop]) + (
                        np.arange(int(kept[key:stop].sum()))
                        - np.repeat(np.cumsum(kept[key:stop]) - kept[key:stop], kept[key:stop])
                    )
                    values[take].tofile(out)
                    key = stop


@dataclass(frozen=True)
class DiskHistories(Histories):
    """:class:`Histories` whose members stay in their file: :meth:`select` reads the bags
    asked for with ``pread``, so that they never become pages of this process.

    A memory-mapped file's pages count in the process's resident memory once touched,
    and a few test users' bags are spread over the whole file: selecting them through
    the mapping made most of it resident (0.4 GB at 50M rows).

    Args:
        folder: The folder :func:`load_histories` read (its ``members.i64``).
    """

    folder: Path | None = None

    def select(self, keys: Any) -> tuple[np.ndarray, np.ndarray]:
        """As :meth:`Histories.select`, reading only the bags of ``keys`` from the file."""
        if self.folder is None:
            return super().select(keys)
        rows = positions(self.keys, keys)
        known = rows >= 0
        starts = np.where(known, self.offsets[np.maximum(rows, 0)], 0)
        counts = np.where(known, self.offsets[np.maximum(rows, 0) + 1] - starts, 0)
        owner = np.repeat(np.arange(len(rows), dtype=np.int64), counts)
        if 2 * int(counts.sum()) > len(self.members):
            # Most of the file (e.g. every user, for an export): one read, not a call a bag.
            everything = np.fromfile(self.folder / MEMBERS, dtype=np.int64)
            within = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(
                np.cumsum(counts) - counts, counts
            )
            return owner, everything[np.repeat(starts, counts) + within]
        members = np.empty(int(counts.sum()), dtype=np.int64)
        at = 0
        with (self.folder / MEMBERS).open("rb") as f:
            fd = f.fileno()
            for start, count in zip(starts[counts > 0], counts[counts > 0], strict=True):
                data = os.pread(fd, 8 * int(count), 8 * int(start))
                members[at : at + count] = np.frombuffer(data, dtype=np.int64)
                at += count
        return owner, members


def _read(path: Path, dtype: type, in_memory: bool) -> np.ndarray:
    if in_memory or path.stat().st_size == 0:
        return np.fromfile(path, dtype)
    return np.memmap(path, dtype=dtype, mode="r")


def load_histories(folder: Path, keys: np.ndarray, in_memory: bool = False) -> Histories:
    """The histories written to ``folder`` (members memory-mapped unless ``in_memory``)."""
    ratings = folder / RATINGS
    return (Histories if in_memory else functools.partial(DiskHistories, folder=folder))(
        keys,
        np.fromfile(folder / OFFSETS, np.int64),
        _read(folder / MEMBERS, np.int64, in_memory),
        _read(ratings, np.float32, in_memory) if ratings.is_file() else None,
    )
