"""How much of the exact top-k an approximate index finds: recall@k, and nprobe tuning."""

from __future__ import annotations

import numbers
from collections.abc import Iterator
from typing import Any

import numpy as np

from recsys._tf import tf
from recsys.serving.topk import top_k
from recsys.serving.user_items import UserItems

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


def _batches(
    queries: np.ndarray, exclude: UserItems | None, batch_size: int
) -> Iterator[tuple[Any, Any]]:
    """Blocks of queries, with their rows of ``exclude`` as a ragged tensor."""
    if exclude is not None and exclude.num_users != len(queries):
        raise ValueError(
            f"`exclude` must have one row per query ({len(queries)}). Received "
            f"{exclude.num_users} rows."
        )
    for start in range(0, len(queries), batch_size):
        stop = min(start + batch_size, len(queries))
        rows = None
        if exclude is not None:
            splits = exclude.offsets[start : stop + 1]
            rows = tf.RaggedTensor.from_row_splits(
                exclude.rows[splits[0] : splits[-1]], splits - splits[0]
            )
        yield tf.constant(queries[start:stop]), rows


def _rows(search: Any, queries: np.ndarray, exclude: UserItems | None, batch_size: int) -> Any:
    compiled = tf.function(search, reduce_retracing=True)
    parts = [compiled(q, e).numpy() for q, e in _batches(queries, exclude, batch_size)]
    return np.concatenate(parts)


def exact_rows(
    item_vectors: Any,
    queries: Any,
    k: int = 100,
    batch_size: int = 256,
    exclude: UserItems | None = None,
) -> np.ndarray:
    """The exact top-k rows of ``queries`` against ``item_vectors`` (blockwise), int32.

    Args:
        item_vectors: float32 ``[N, d]``.
        queries: float32 ``[B, d]``.
        k: Items per query.
        batch_size: Queries per call.
        exclude: Optional rows to leave out, one CSR row per query.
    """
    k = _check_k(k)
    items = tf.convert_to_tensor(np.asarray(item_vectors, dtype=np.float32))
    queries = np.asarray(queries, dtype=np.float32)
    return _rows(lambda q, e: top_k(q, items, k, exclude=e).rows, queries, exclude, batch_size)


def index_recall(
    index: Any,
    item_vectors: Any,
    queries: Any,
    k: int = 100,
    nprobe: int | None = None,
    batch_size: int = 256,
    exclude: UserItems | None = None,
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
        exclude: Optional rows each query leaves out (one CSR row per query), as
            serving leaves out seen items: the answers then reach deeper.
    """
    k = _check_k(k)
    queries = np.asarray(queries, dtype=np.float32)
    exact = exact_rows(item_vectors, queries, k, batch_size, exclude)
    found = _rows(
        lambda q, e: index.search(q, k, exclude=e, nprobe=nprobe).rows, queries, exclude, batch_size
    )
    return recall_at_k(found, exact)


def tune_nprobe(
    index: Any,
    item_vectors: Any,
    queries: Any,
    target: float = 0.95,
    k: int = 100,
    batch_size: int = 256,
    exclude: UserItems | None = None,
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

    Args:
        index: A `PartitionedIndex`.
        item_vectors: The catalogue vectors it was built from.
        queries: float32 ``[B, d]``, queries like those it will serve (e.g. a sample
            of user vectors, not the users the recall is reported on).
        target: The recall@k to reach.
        k: Items per query.
        batch_size: Queries per search call.
        exclude: Optional rows each query leaves out, as in serving.

    Returns:
        ``(nprobe, recall)``; ``nprobe`` is at most the number of partitions (exact).

    Raises:
        ValueError: ``target`` is not in (0, 1].
    """
    if not isinstance(target, numbers.Real) or not 0 < target <= 1:
        raise ValueError(f"`target` must be in (0, 1]. Received: target={target!r}")
    k = _check_k(k)
    queries = np.asarray(queries, dtype=np.float32)
    exact = exact_rows(item_vectors, queries, k, batch_size, exclude)
    measured: dict[int, float] = {}

    def recall(nprobe: int) -> float:
        if nprobe not in measured:
            rows = _rows(
                lambda q, e: index.search(q, k, exclude=e, nprobe=nprobe).rows,
                queries,
                exclude,
                batch_size,
            )
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
