"""How much of the exact top-k an approximate index finds: recall@k, and nprobe tuning."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from recsys._tf import tf
from recsys.serving.topk import top_k

__all__ = ["exact_rows", "index_recall", "recall_at_k", "tune_nprobe"]


def recall_at_k(found_rows: Any, exact_rows: Any) -> float:
    """Mean over queries of |found ∩ exact| / |exact|; -1 entries (no item) are ignored.

    Example:

    >>> recall_at_k([[1, 2, 3], [4, 5, -1]], [[1, 2, 9], [4, 5, -1]])
    0.8333333333333333

    Args:
        found_rows: int ``[B, k]`` rows an index returned.
        exact_rows: int ``[B, k]`` the exact top-k rows.

    Raises:
        ValueError: The arrays' shapes differ in the number of queries.
    """
    found = np.asarray(found_rows)
    exact = np.asarray(exact_rows)
    if found.ndim != 2 or exact.ndim != 2 or found.shape[0] != exact.shape[0]:
        raise ValueError(
            "`found_rows` and `exact_rows` must be [B, k] with the same B. Received shapes "
            f"{found.shape} and {exact.shape}."
        )
    recalls = []
    for got, want in zip(found, exact, strict=True):
        want = want[want >= 0]
        if want.size:
            recalls.append(np.isin(want, got[got >= 0]).mean())
    return float(np.mean(recalls)) if recalls else 1.0


def _check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise ValueError(f"`k` must be a positive integer. Received: k={k!r}")
    return int(k)


def exact_rows(item_vectors: Any, queries: Any, k: int = 100, batch_size: int = 256) -> np.ndarray:
    """The exact top-k rows of ``queries`` against ``item_vectors`` (blockwise), int32."""
    k = _check_k(k)
    items = tf.convert_to_tensor(np.asarray(item_vectors, dtype=np.float32))
    queries = np.asarray(queries, dtype=np.float32)
    search = tf.function(lambda q: top_k(q, items, k).rows)
    parts = [
        search(queries[i : i + batch_size]).numpy() for i in range(0, len(queries), batch_size)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, min(k, items.shape[0])), np.int32)


def _search_rows(
    index: Any, queries: np.ndarray, k: int, nprobe: int | None, batch_size: int
) -> np.ndarray:
    search = tf.function(lambda q: index.search(q, k, nprobe=nprobe).rows)
    parts = [
        search(queries[i : i + batch_size]).numpy() for i in range(0, len(queries), batch_size)
    ]
    return np.concatenate(parts)


def index_recall(
    index: Any,
    item_vectors: Any,
    queries: Any,
    k: int = 100,
    nprobe: int | None = None,
    batch_size: int = 256,
) -> float:
    """Recall@k of ``index.search`` against the exact top-k, on ``queries``.

    Example:

    >>> from recsys.serving import PartitionedIndex
    >>> vectors = np.random.default_rng(0).normal(size=(2000, 16)).astype("float32")
    >>> index = PartitionedIndex.build(vectors, num_partitions=20, nprobe=20)
    >>> index_recall(index, vectors, vectors[:50], k=10)  # every partition probed
    1.0

    Args:
        index: An index with ``search(queries, k, nprobe=...)`` (`PartitionedIndex`).
        item_vectors: The catalogue vectors the index was built from.
        queries: float32 ``[B, d]``, e.g. a sample of user vectors.
        k: Items per query.
        nprobe: Partitions to probe (default: the index's).
        batch_size: Queries per search call.
    """
    k = _check_k(k)
    queries = np.asarray(queries, dtype=np.float32)
    exact = exact_rows(item_vectors, queries, k, batch_size)
    return recall_at_k(_search_rows(index, queries, k, nprobe, batch_size), exact)


def tune_nprobe(
    index: Any,
    item_vectors: Any,
    queries: Any,
    target: float = 0.95,
    k: int = 100,
    batch_size: int = 256,
) -> tuple[int, float]:
    """The smallest ``nprobe`` whose recall@k on ``queries`` reaches ``target``.

    Doubles ``nprobe`` until the target is met, then bisects. Recall grows with
    ``nprobe`` (more partitions, a superset of candidates), so the search is valid.

    Example:

    >>> vectors = np.random.default_rng(0).normal(size=(2000, 16)).astype("float32")
    >>> index = PartitionedIndex.build(vectors, num_partitions=20)
    >>> nprobe, recall = tune_nprobe(index, vectors, vectors[:50], target=0.9, k=10)
    >>> recall >= 0.9
    True

    Returns:
        ``(nprobe, recall)``; ``nprobe`` is at most the number of partitions (exact).

    Raises:
        ValueError: ``target`` is not in (0, 1].
    """
    if not isinstance(target, numbers.Real) or not 0 < target <= 1:
        raise ValueError(f"`target` must be in (0, 1]. Received: target={target!r}")
    k = _check_k(k)
    queries = np.asarray(queries, dtype=np.float32)
    exact = exact_rows(item_vectors, queries, k, batch_size)
    measured: dict[int, float] = {}

    def recall(nprobe: int) -> float:
        if nprobe not in measured:
            rows = _search_rows(index, queries, k, nprobe, batch_size)
            measured[nprobe] = recall_at_k(rows, exact)
        return measured[nprobe]

    low, high = 0, 1  # recall(low) < target, or low == 0
    while recall(high) < target and high < index.num_partitions:
        low, high = high, min(2 * high, index.num_partitions)
    while high - low > 1:  # recall(low) < target <= recall(high)
        middle = (low + high) // 2
        if recall(middle) >= target:
            high = middle
        else:
            low = middle
    return high, measured[high]
