"""The order of a training epoch, and its rows window by window, without TensorFlow.

An epoch is fixed by ``(seed, key)``: the blocks are read in the order of a seeded
permutation, grouped into *windows* of about ``window_rows`` training rows; the
rows of a window are shuffled with a permutation seeded by ``(seed, key, window)``
and the windows are concatenated. The whole epoch is therefore a deterministic
sequence of rows whose length the counting pass already knows, and the ``r``-th row
can be reached by skipping whole windows without reading them: an epoch can start
at any batch ``N`` (``start_row = N * batch_size``) and yield exactly the rows the
uninterrupted epoch would have yielded from there.

Shuffle quality: rows mix within a window, and windows draw their blocks from the
whole log, so consecutive batches see rows from ``window_rows / block_rows`` random
places in the files. A log sorted by user or time mixes less with bigger blocks.

Nothing here imports TensorFlow (:mod:`recsys.data.interactions.pipelines` wraps it).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from recsys.data.interactions.config import ITEM, RATING, TIMESTAMP, USER
from recsys.data.interactions.index import LogIndex
from recsys.data.interactions.layout import BlockReader

__all__ = ["EpochPlan", "WindowRows", "epoch_windows", "plan_epoch"]

_KEY_MASK = (1 << 63) - 1


@dataclass(frozen=True)
class EpochPlan:
    """The windows of one pass over a split.

    Attributes:
        windows: The blocks of each window, in reading order.
        rows: Rows of the split in each window.
    """

    windows: tuple[np.ndarray, ...]
    rows: np.ndarray

    @property
    def starts(self) -> np.ndarray:
        """The epoch row at which each window starts (and, last, the total)."""
        return np.concatenate([[0], np.cumsum(self.rows)]).astype(np.int64)


def plan_epoch(
    split_rows: np.ndarray, window_rows: int, seed: int | None = None, key: int = 0
) -> EpochPlan:
    """Windows of blocks: in block order, or a permutation seeded by ``(seed, key)``.

    Args:
        split_rows: Rows of the split in each block.
        window_rows: A window closes once it holds at least this many rows.
        seed: None for block order (evaluation), else the shuffle's seed.
        key: The epoch's key (see :mod:`recsys.data.interactions.pipelines`).

    Example:
        >>> plan = plan_epoch(np.array([5, 0, 5, 5]), window_rows=8)
        >>> [w.tolist() for w in plan.windows], plan.rows.tolist()
        ([[0, 2], [3]], [10, 5])
    """
    split_rows = np.asarray(split_rows, dtype=np.int64)
    order = np.arange(len(split_rows))
    if seed is not None:
        order = np.random.default_rng([seed, int(key) & _KEY_MASK]).permutation(len(split_rows))
    order = order[split_rows[order] > 0]
    windows, sizes, current, held = [], [], [], 0
    for block in order:
        current.append(block)
        held += int(split_rows[block])
        if held >= window_rows:
            windows.append(np.asarray(current, dtype=np.int64))
            sizes.append(held)
            current, held = [], 0
    if current:
        windows.append(np.asarray(current, dtype=np.int64))
        sizes.append(held)
    return EpochPlan(tuple(windows), np.asarray(sizes, dtype=np.int64))


@dataclass(frozen=True)
class WindowRows:
    """The rows of one window, as buffers TensorFlow turns into tensors cheaply.

    Strings stay in their Arrow byte buffer; each row is a ``(start, length)`` into it
    (``tf.strings.substr`` cuts them out), so no Python string is ever made.
    """

    user_data: bytes
    user_start: np.ndarray
    user_length: np.ndarray
    item_data: bytes
    item_start: np.ndarray
    item_length: np.ndarray
    rating: np.ndarray | None
    timestamp: np.ndarray | None

    def __len__(self) -> int:
        return len(self.user_start)


def _string_rows(array: pa.Array, rows: np.ndarray) -> tuple[bytes, np.ndarray, np.ndarray]:
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int32)[
        array.offset : array.offset + len(array) + 1
    ]
    data = array.buffers()[2]
    payload = b"" if data is None else data[int(offsets[0]) : int(offsets[-1])].to_pybytes()
    starts = (offsets[:-1] - offsets[0])[rows]
    lengths = np.diff(offsets)[rows]
    return payload, starts.astype(np.int32), lengths.astype(np.int32)


def epoch_windows(
    index: LogIndex,
    split: int,
    plan: EpochPlan,
    seed: int | None = None,
    key: int = 0,
    start_row: int = 0,
) -> Iterator[WindowRows]:
    """The split's rows window by window, shuffled within windows when ``seed`` is given.

    Args:
        index: The log's index.
        split: 0 train, 1 validation, 2 test.
        plan: From :func:`plan_epoch` (same ``seed`` and ``key``).
        seed: None keeps block order and row order.
        key: The epoch's key.
        start_row: Rows of the epoch to skip (whole windows are not even read).

    Raises:
        LogError: A file changed since it was counted.
    """
    reader = BlockReader(index.blocks, index.columns)
    starts = plan.starts
    for number, blocks in enumerate(plan.windows):
        if starts[number + 1] <= start_row:
            continue
        tables, labels = [], []
        for block in blocks:
            tables.append(reader.read(int(block), features=False))
            labels.append(index.labels(int(block)))
        table = pa.concat_tables(tables).combine_chunks()
        rows = np.flatnonzero(np.concatenate(labels) == split)
        if len(rows) != plan.rows[number]:  # pragma: no cover - labels.u8 and blocks agree
            raise RuntimeError(f"Window {number}: {len(rows)} rows, planned {plan.rows[number]}.")
        if seed is not None:
            rows = rows[
                np.random.default_rng([seed, int(key) & _KEY_MASK, number]).permutation(len(rows))
            ]
        rows = rows[max(0, start_row - int(starts[number])) :]
        user = _string_rows(table.column(USER).chunk(0), rows)
        item = _string_rows(table.column(ITEM).chunk(0), rows)
        rating = timestamp = None
        if RATING in table.column_names:
            rating = table.column(RATING).to_numpy()[rows]
        if TIMESTAMP in table.column_names:
            timestamp = table.column(TIMESTAMP).to_numpy()[rows]
        yield WindowRows(*user, *item, rating, timestamp)
