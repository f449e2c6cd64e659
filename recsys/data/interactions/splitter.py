"""Which split each row of a streamed log belongs to, decided one block at a time.

:class:`Splitter` labels the rows of a normalized table: by the hash of the row's
(user, item) pair (``split=random``), or by its time against the cutoffs
(``split=time``). Cutoffs given as a fraction are found exactly without holding the
timestamps in memory: :func:`kth_smallest` reads the timestamp column a few times (a
coarse histogram, then the counts inside one bin).

Nothing here imports TensorFlow.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from recsys.data.interactions.config import TIMESTAMP, SplitSpec
from recsys.data.interactions.hashing import split_labels, time_labels
from recsys.data.splits import train_size

__all__ = ["Splitter", "kth_smallest"]

_BINS = 1 << 16


def kth_smallest(
    passes: Callable[[], Iterable[np.ndarray]], k: int, below: int | None = None
) -> tuple[int, int]:
    """The ``k``-th smallest (0-based) of a stream of int64 arrays, and how many there are.

    Args:
        passes: Returns a fresh iterator over the arrays (called up to three times).
        k: Rank wanted; clipped to the last value.
        below: Only values ``< below`` count.

    Returns:
        ``(value, count)``; ``value`` is 0 when there are no values.

    Example:
        >>> chunks = [np.array([5, 1, 9]), np.array([3, 7])]
        >>> kth_smallest(lambda: iter(chunks), 2), kth_smallest(lambda: iter(chunks), 0, below=5)
        ((5, 5), (1, 2))
    """

    def values() -> Iterable[np.ndarray]:
        for chunk in passes():
            chunk = np.asarray(chunk, dtype=np.int64)
            yield chunk if below is None else chunk[chunk < below]

    low, high, count = None, None, 0
    for chunk in values():
        if len(chunk):
            low = int(chunk.min()) if low is None else min(low, int(chunk.min()))
            high = int(chunk.max()) if high is None else max(high, int(chunk.max()))
            count += len(chunk)
    if count == 0 or low is None or high is None:
        return 0, 0
    k = min(max(int(k), 0), count - 1)
    width = max(1, -(-(high - low + 1) // _BINS))
    histogram = np.zeros(_BINS, dtype=np.int64)
    for chunk in values():
        histogram += np.bincount((chunk - low) // width, minlength=_BINS)[:_BINS]
    cumulative = np.cumsum(histogram)
    chosen = int(np.searchsorted(cumulative, k, side="right"))
    before = int(cumulative[chosen - 1]) if chosen else 0
    if width == 1:
        return low + chosen, count
    start = low + chosen * width
    inside: dict[int, int] = {}
    for chunk in values():
        hit = chunk[(chunk >= start) & (chunk < start + width)]
        for value, n in zip(*np.unique(hit, return_counts=True), strict=True):
            inside[int(value)] = inside.get(int(value), 0) + int(n)
    keys = sorted(inside)
    counts = np.cumsum([inside[v] for v in keys])
    return keys[int(np.searchsorted(counts, k - before, side="right"))], count


def _seconds(cutoff: int | str) -> int:
    if isinstance(cutoff, str):
        stamp = pd.Timestamp(cutoff)
        stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
        return int(stamp.value // 1_000_000_000)
    return int(cutoff)


@dataclass(frozen=True)
class Splitter:
    """Labels rows 0 (train), 1 (validation) or 2 (test).

    Build it with :meth:`for_spec`, which finds the time cutoffs when needed.

    Attributes:
        spec: The split declared in the config.
        test_cutoff: ``time``: first time of the test split.
        val_cutoff: ``time``: first time of validation (None: no validation).
    """

    spec: SplitSpec
    test_cutoff: int | None = None
    val_cutoff: int | None = None

    @classmethod
    def for_spec(
        cls, spec: SplitSpec, timestamps: Callable[[], Iterable[np.ndarray]] | None
    ) -> Splitter:
        """A splitter for ``spec``; ``timestamps`` streams the log's times (``time`` only).

        Example:
            >>> Splitter.for_spec(SplitSpec("random"), None).test_cutoff is None
            True
        """
        if spec.kind == "random":
            return cls(spec)
        if timestamps is None:
            raise ValueError(
                "split=time needs data.timestamp_column. Received: timestamp_column=None"
            )
        if spec.time_cutoff is not None:
            test_cutoff = _seconds(spec.time_cutoff)
        else:
            _, n = kth_smallest(timestamps, 0)
            test_cutoff, _ = kth_smallest(timestamps, train_size(n, spec.test_fraction))
        val_cutoff = None
        if spec.val_fraction > 0:
            _, n_train = kth_smallest(timestamps, 0, below=test_cutoff)
            if n_train:
                val_cutoff, _ = kth_smallest(
                    timestamps, train_size(n_train, spec.val_fraction), below=test_cutoff
                )
        return cls(spec, test_cutoff, val_cutoff)

    def labels(self, table: pa.Table, user_hashes: np.ndarray, item_hashes: np.ndarray):
        """The split of every row of a normalized table (uint8)."""
        if self.spec.kind == "random":
            return split_labels(
                user_hashes,
                item_hashes,
                self.spec.seed,
                self.spec.test_fraction,
                self.spec.val_fraction,
            )
        times = table.column(TIMESTAMP).to_numpy()
        return time_labels(times, self.test_cutoff, self.val_cutoff)

    def describe(self) -> dict[str, int | None]:
        """The cutoffs (saved in the cache manifest)."""
        return {"test_cutoff": self.test_cutoff, "val_cutoff": self.val_cutoff}
