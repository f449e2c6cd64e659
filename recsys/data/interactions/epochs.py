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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from recsys.data.interactions.config import ITEM, RATING, TIMESTAMP, USER
from recsys.data.interactions.index import LogIndex
from recsys.data.interactions.layout import BlockReader

__all__ = [
    "EpochPlan",
    "WindowRows",
    "epoch_batches",
    "epoch_windows",
    "fixed_width",
    "load_window",
    "plan_epoch",
]

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
    """The rows of one window in epoch order, as arrays TensorFlow converts cheaply.

    Ids are fixed-width byte strings (NumPy ``S`` arrays, NUL-padded, which
    ``tf.constant`` turns into ``tf.string`` without making a Python object per
    row); ids longer than :data:`MAX_FIXED_WIDTH` bytes come as object arrays.
    """

    user_id: np.ndarray
    item_id: np.ndarray
    rating: np.ndarray | None
    timestamp: np.ndarray | None

    def __len__(self) -> int:
        return len(self.user_id)

    def slice(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Rows ``start:stop`` as a batch dict (only the columns the log has)."""
        batch = {"user_id": self.user_id[start:stop], "item_id": self.item_id[start:stop]}
        if self.rating is not None:
            batch["rating"] = self.rating[start:stop]
        if self.timestamp is not None:
            batch["timestamp"] = self.timestamp[start:stop]
        return batch


MAX_FIXED_WIDTH = 64
_MASKS = np.array([(1 << (8 * r)) - 1 for r in range(8)] + [(1 << 64) - 1], dtype=np.uint64)


def fixed_width(array: pa.Array, rows: np.ndarray) -> np.ndarray:
    """Strings ``rows`` of an Arrow string array as a NumPy ``S`` array (NUL-padded).

    Each string is read as whole little-endian 8-byte words straight from the Arrow
    buffer (one gather per word, whatever the alignment), so a row costs a few
    nanoseconds; strings longer than :data:`MAX_FIXED_WIDTH` bytes come back as an
    object array of ``bytes`` instead.

    Example:
        >>> fixed_width(pa.array(["ab", "", "abcdefghij"]), np.array([2, 0, 1])).tolist()
        [b'abcdefghij', b'ab', b'']
    """
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int32)[
        array.offset : array.offset + len(array) + 1
    ]
    lengths = np.diff(offsets)
    longest = int(lengths.max()) if len(lengths) else 0
    if longest > MAX_FIXED_WIDTH:
        return np.asarray(
            [s.encode() for s in array.take(pa.array(rows)).to_pylist()], dtype=object
        )
    data = array.buffers()[2]
    raw = np.frombuffer(data, dtype=np.uint8) if data is not None else np.empty(0, np.uint8)
    padded = np.zeros(len(raw) + 8, dtype=np.uint8)
    padded[: len(raw)] = raw
    words = np.ndarray(shape=(len(padded) - 7,), dtype="<u8", buffer=padded, strides=(1,))
    width = max(1, -(-longest // 8))
    starts = offsets[:-1].astype(np.int64)
    # Every row in buffer order first (sequential reads), then one gather of whole
    # rows: half the cost of reading the strings at shuffled offsets.
    out = np.empty((len(array), width), dtype="<u8")
    for word in range(width):
        remaining = np.clip(lengths - 8 * word, 0, 8)
        out[:, word] = (
            np.take(words, np.minimum(starts + 8 * word, len(words) - 1)) & _MASKS[remaining]
        )
    out = np.take(out, rows, axis=0)
    return out.view(f"S{8 * width}").reshape(len(rows))


def load_window(
    index: LogIndex,
    split: int,
    plan: EpochPlan,
    number: int,
    seed: int | None = None,
    key: int = 0,
    skip: int = 0,
) -> WindowRows:
    """Window ``number`` of an epoch: its rows of ``split``, shuffled when ``seed`` is
    given, without its first ``skip`` rows.

    Raises:
        LogError: A file changed since it was counted.
    """
    reader = BlockReader(index.blocks, index.columns)
    tables, labels = [], []
    for block in plan.windows[number]:
        tables.append(reader.read(int(block), features=False))
        labels.append(index.labels(int(block)))
    table = pa.concat_tables(tables).combine_chunks()
    rows = np.flatnonzero(np.concatenate(labels) == split).astype(np.int32)
    if len(rows) != plan.rows[number]:  # pragma: no cover - labels.u8 and blocks agree
        raise RuntimeError(f"Window {number}: {len(rows)} rows, planned {plan.rows[number]}.")
    if seed is not None:
        # int32 shuffles faster than int64 (a window is far below 2**31 rows).
        order = np.arange(len(rows), dtype=np.int32)
        np.random.default_rng([seed, int(key) & _KEY_MASK, number]).shuffle(order)
        rows = np.take(rows, order)
    rows = rows[skip:]
    rating = timestamp = None
    if RATING in table.column_names:
        rating = np.take(table.column(RATING).chunk(0).to_numpy(), rows)
    if TIMESTAMP in table.column_names:
        timestamp = np.take(table.column(TIMESTAMP).chunk(0).to_numpy(), rows)
    return WindowRows(
        fixed_width(table.column(USER).chunk(0), rows),
        fixed_width(table.column(ITEM).chunk(0), rows),
        rating,
        timestamp,
    )


def epoch_windows(
    index: LogIndex,
    split: int,
    plan: EpochPlan,
    seed: int | None = None,
    key: int = 0,
    start_row: int = 0,
    workers: int = 0,
) -> Iterator[WindowRows]:
    """The split's rows window by window, shuffled within windows when ``seed`` is given.

    Args:
        index: The log's index.
        split: 0 train, 1 validation, 2 test.
        plan: From :func:`plan_epoch` (same ``seed`` and ``key``).
        seed: None keeps block order and row order.
        key: The epoch's key.
        start_row: Rows of the epoch to skip (whole windows are not even read).
        workers: Threads preparing the next windows while this one is used (0: none).
            Reading Parquet, shuffling and gathering release the GIL, so the next
            windows are ready while TensorFlow converts the batches of this one.

    Raises:
        LogError: A file changed since it was counted.
    """
    starts = plan.starts
    wanted = [n for n in range(len(plan.windows)) if starts[n + 1] > start_row]

    def load(number: int) -> WindowRows:
        skip = max(0, start_row - int(starts[number]))
        return load_window(index, split, plan, number, seed, key, skip)

    if not workers:
        yield from (load(n) for n in wanted)
        return
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="recsys-window")
    try:
        pending = [pool.submit(load, n) for n in wanted[:workers]]
        for position in range(len(wanted)):
            window = pending.pop(0).result()
            if position + workers < len(wanted):
                pending.append(pool.submit(load, wanted[position + workers]))
            yield window
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def epoch_batches(
    index: LogIndex,
    split: int,
    plan: EpochPlan,
    batch_size: int,
    seed: int | None = None,
    key: int = 0,
    start_batch: int = 0,
    workers: int = 2,
) -> Iterator[dict[str, np.ndarray]]:
    """The epoch's batches from batch ``start_batch`` on: full batches but the last.

    Batch ``b`` holds rows ``b * batch_size`` to ``(b + 1) * batch_size`` of the
    epoch's row sequence (a batch may span two windows), so starting at ``b`` gives
    exactly the batches an uninterrupted epoch gives from ``b`` on. ``workers``
    threads prepare the next windows (see :func:`epoch_windows`).

    Example:
        >>> batches = epoch_batches(index, 0, plan, 4096, seed=42, key=7)  # doctest: +SKIP
        >>> next(batches)["user_id"].dtype  # doctest: +SKIP
        dtype('S8')
    """
    windows = epoch_windows(index, split, plan, seed, key, start_batch * batch_size, workers)
    held: list[dict[str, np.ndarray]] = []
    held_rows = 0
    for window in windows:
        position = 0
        if held:
            take = min(batch_size - held_rows, len(window))
            held.append(window.slice(0, take))
            held_rows += take
            position = take
            if held_rows < batch_size:
                continue
            yield {name: np.concatenate([part[name] for part in held]) for name in held[0]}
            held, held_rows = [], 0
        while len(window) - position >= batch_size:
            yield window.slice(position, position + batch_size)
            position += batch_size
        if position < len(window):
            held, held_rows = [window.slice(position, len(window))], len(window) - position
    if held:
        yield {name: np.concatenate([part[name] for part in held]) for name in held[0]}
