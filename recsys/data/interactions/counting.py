"""The counting pass: one streaming read that validates the log and counts every id.

For every block it normalizes the rows (which validates them), labels their split,
and adds the user and item ids to an :class:`IdCounter`: per distinct id, its rows
in train / validation / test and its first row in the log. The counter keeps its
table sorted by a 64-bit hash of the id and merges per-block tables only when the
pending ones outgrow it, so memory follows the number of distinct ids, never the
number of rows.

Ids are grouped by their 64-bit hash (:func:`~recsys.data.interactions.hashing.hash_strings`),
which NumPy sorts much faster than Arrow groups strings. Two distinct ids with the
same hash (odds about n**2 / 2**65: 3e-8 for a million ids) are caught when tables
are merged here, and row by row by the encoding pass, and stop with an error rather
than being counted as one.

Nothing here imports TensorFlow.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recsys.data.interactions.errors import LogError

__all__ = ["IdCounter", "IdTable", "SplitCounts"]


class _HashCollision(LogError):
    def __init__(self, first: str, second: str):
        super().__init__(
            "<log>",
            f"the distinct ids {first!r} and {second!r} have the same 64-bit hash",
            "rename one of them (this happens about once in 10**10 logs of a million ids)",
        )


@dataclass(frozen=True)
class SplitCounts:
    """Rows of each split: ``train``, ``val``, ``test``."""

    train: int
    val: int
    test: int

    def __getitem__(self, split: int) -> int:
        return (self.train, self.val, self.test)[split]

    @property
    def total(self) -> int:
        return self.train + self.val + self.test


@dataclass(frozen=True)
class IdTable:
    """Every distinct id of a column, keyed by hash.

    Attributes:
        hashes: uint64 hashes, sorted ascending, unique.
        ids: The ids (Arrow strings), aligned with ``hashes``.
        counts: ``[n, 3]`` int64 rows of each id in train, validation, test.
        first_rows: int64 row of the log where each id first appears.
    """

    hashes: np.ndarray
    ids: pa.Array
    counts: np.ndarray
    first_rows: np.ndarray

    def __len__(self) -> int:
        return len(self.hashes)

    @cached_property
    def _order(self) -> np.ndarray:
        return pc.sort_indices(self.ids).to_numpy()

    @cached_property
    def sorted_ids(self) -> np.ndarray:
        """The ids sorted as Python sorts ``str`` (object array): the contract's order."""
        return self.ids.take(self._order).to_numpy(zero_copy_only=False).astype(object)

    @cached_property
    def sorted_arrow(self) -> pa.Array:
        """:attr:`sorted_ids` as an Arrow string array."""
        return self.ids.take(self._order)

    @cached_property
    def rank(self) -> np.ndarray:
        """Position in :attr:`sorted_ids` of each entry (hash order)."""
        rank = np.empty(len(self), dtype=np.int64)
        rank[self._order] = np.arange(len(self), dtype=np.int64)
        return rank

    def sorted_column(self, values: np.ndarray) -> np.ndarray:
        """A per-entry array reordered to :attr:`sorted_ids` order."""
        return np.asarray(values)[self._order]

    def codes(self, ids: pa.Array, hashes: np.ndarray, file: str) -> np.ndarray:
        """Positions in :attr:`sorted_ids` of ``ids`` (whose hashes are ``hashes``).

        Raises:
            LogError: An id is not in the table, or differs from the entry with its
                hash (the file changed since it was counted, or a hash collision).
        """
        found = np.minimum(np.searchsorted(self.hashes, hashes), len(self) - 1)
        codes = self.rank[found]
        same = pc.equal(ids, self.sorted_arrow.take(pa.array(codes)))
        if not pc.all(same).as_py():
            bad = int(pc.index(same, False).as_py())
            if self.hashes[found[bad]] == hashes[bad]:
                raise _HashCollision(ids[bad].as_py(), self.sorted_arrow[codes[bad]].as_py())
            raise LogError(
                file,
                f"holds the id {ids[bad].as_py()!r}, which the counting pass did not see",
                "delete the data module's cache folder (data.cache_dir) and run again",
            )
        return codes

    def to_arrow(self) -> pa.Table:
        """The table as Arrow columns (saved as Parquet in the cache)."""
        return pa.table(
            {
                "id": self.ids,
                "hash": pa.array(self.hashes, pa.uint64()),
                "train": self.counts[:, 0],
                "val": self.counts[:, 1],
                "test": self.counts[:, 2],
                "first_row": self.first_rows,
            }
        )

    @classmethod
    def from_arrow(cls, table: pa.Table) -> IdTable:
        """The inverse of :meth:`to_arrow`."""
        counts = np.stack([table.column(c).to_numpy() for c in ("train", "val", "test")], axis=1)
        return cls(
            table.column("hash").to_numpy(),
            table.column("id").combine_chunks(),
            counts.astype(np.int64),
            table.column("first_row").to_numpy().astype(np.int64),
        )


_Part = tuple[np.ndarray, pa.Array, np.ndarray, np.ndarray]


def _merge(parts: Sequence[_Part]) -> _Part:
    hashes = np.concatenate([p[0] for p in parts])
    ids = pa.concat_arrays([p[1] for p in parts])
    counts = np.concatenate([p[2] for p in parts])
    rows = np.concatenate([p[3] for p in parts])
    order = np.argsort(hashes, kind="stable")
    hashes = hashes[order]
    new = np.concatenate([[True], hashes[1:] != hashes[:-1]])
    starts = np.flatnonzero(new)
    first_of_group = order[starts]
    if len(starts) < len(hashes):
        # Repeated hashes must be the same id: compare each repeat with its group's first.
        repeats = np.flatnonzero(~new)
        group = np.cumsum(new) - 1
        mine = ids.take(pa.array(order[repeats]))
        theirs = ids.take(pa.array(first_of_group[group[repeats]]))
        same = pc.equal(mine, theirs)
        if not pc.all(same).as_py():
            bad = int(pc.index(same, False).as_py())
            raise _HashCollision(mine[bad].as_py(), theirs[bad].as_py())
    return (
        hashes[starts],
        ids.take(pa.array(first_of_group)),
        np.add.reduceat(counts[order], starts, axis=0),
        np.minimum.reduceat(rows[order], starts),
    )


class IdCounter:
    """Counts the ids of a stream of blocks per split, with each id's first row.

    Args:
        merge_rows: Pending per-block entries held before a merge (at least; a merge
            also waits until the pending entries outnumber the merged table, which
            bounds the total merging work by a constant times the entries added).

    Example:
        >>> from recsys.data.interactions.hashing import hash_strings
        >>> counter = IdCounter()
        >>> ids = pa.array(["b", "a", "b"])
        >>> counter.add(ids, hash_strings(ids), np.array([0, 0, 2], np.uint8), first_row=10)
        >>> table = counter.result()
        >>> table.sorted_ids.tolist(), table.sorted_column(table.counts).tolist()
        (['a', 'b'], [[1, 0, 0], [1, 0, 1]])
    """

    def __init__(self, merge_rows: int = 1 << 20):
        self.merge_rows = int(merge_rows)
        self._merged: _Part | None = None
        self._pending: list[_Part] = []
        self._pending_rows = 0

    def add(self, ids: pa.Array, hashes: np.ndarray, labels: np.ndarray, first_row: int) -> None:
        """Count one block's ids (``labels``: each row's split, 0/1/2)."""
        if isinstance(ids, pa.ChunkedArray):
            ids = ids.combine_chunks()
        unique, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
        counts = np.bincount(inverse.reshape(-1) * 3 + labels, minlength=3 * len(unique)).reshape(
            -1, 3
        )
        self._pending.append(
            (unique, ids.take(pa.array(first)), counts, first_row + first.astype(np.int64))
        )
        self._pending_rows += len(unique)
        merged = 0 if self._merged is None else len(self._merged[0])
        if self._pending_rows >= max(self.merge_rows, merged):
            self._merge()

    def _merge(self) -> None:
        parts = ([self._merged] if self._merged is not None else []) + self._pending
        if parts:
            self._merged = _merge(parts)
        self._pending, self._pending_rows = [], 0

    def result(self) -> IdTable:
        """The counts so far as an :class:`IdTable`."""
        self._merge()
        if self._merged is None:
            empty = np.zeros(0, dtype=np.int64)
            return IdTable(
                np.zeros(0, np.uint64), pa.array([], pa.string()), np.zeros((0, 3), np.int64), empty
            )
        hashes, ids, counts, rows = self._merged
        return IdTable(hashes, ids, counts.astype(np.int64), rows.astype(np.int64))
