"""Exact top-k of dot-product scores, one block of the catalogue at a time.

Scoring B queries against N items at once needs a [B, N] matrix: 4 GB for 1,000
users and 1M items. `top_k` scores one block of items at a time (as many as keep the
block's scores under ``max_scores``), keeps each block's best ``k`` and merges them
with the best so far, so memory stays bounded however large the catalogue. Only stock TensorFlow ops (a ``While`` loop, ``MatMul``, ``TopKV2``,
``LowerBound``), so a graph that calls it loads in stock TensorFlow Serving.
"""

from __future__ import annotations

import numbers
from typing import Any, NamedTuple

from recsys._tf import tf

__all__ = ["DEFAULT_MAX_SCORES", "TopK", "exclusion_pairs", "select_top_k", "top_k"]

# Scores computed at once, in floats (32 MB): a block is this many scores divided by
# the number of queries, so one query scores a 1M-item catalogue in one block (no
# per-block overhead) and 256 queries score 32k items per block.
DEFAULT_MAX_SCORES = 2**23
# Blocks are a multiple of 64 rows: every block's slice of the catalogue stays aligned,
# so TensorFlow slices the variable without copying it.
_BLOCK_ALIGN = 64
# Group size of `select_top_k`: it reads the maximum of each group of 32 scores, then
# looks inside the k best groups only.
_GROUP = 32


class TopK(NamedTuple):
    """The best ``k`` items per query, best first.

    ``scores`` is float32 ``[B, k]``; ``rows`` is int32 ``[B, k]`` catalogue rows, -1
    where fewer than ``k`` items were left (those entries have score ``-inf``).
    """

    scores: Any
    rows: Any


def exclusion_pairs(exclude: Any) -> tuple[Any, Any]:
    """The (query, item row) pairs to exclude, from a ragged or padded tensor.

    Example:

    >>> q, r = exclusion_pairs(tf.constant([[3, -1], [0, 2]]))
    >>> q.numpy().tolist(), r.numpy().tolist()
    ([0, 1, 1], [3, 0, 2])

    Args:
        exclude: Per query, catalogue rows to leave out: a `tf.RaggedTensor`
            ``[B, None]`` or a dense ``[B, L]`` integer tensor. Negative entries
            (padding, unknown items) are ignored.

    Returns:
        Two int64 vectors: the query of each pair and its item row.
    """
    if isinstance(exclude, tf.RaggedTensor):
        if exclude.ragged_rank != 1:
            raise ValueError(
                "`exclude` must be ragged [B, None] (ragged_rank 1). Received: "
                f"ragged_rank={exclude.ragged_rank}."
            )
        queries = exclude.value_rowids()
        rows = exclude.flat_values
    else:
        exclude = tf.convert_to_tensor(exclude)
        if exclude.shape.rank is not None and exclude.shape.rank != 2:
            raise ValueError(
                "`exclude` must be [B, L] (padded with -1) or ragged [B, None]. "
                f"Received: shape {exclude.shape}."
            )
        where = tf.where(exclude >= 0)
        queries = where[:, 0]
        rows = tf.gather_nd(exclude, where)
    if not rows.dtype.is_integer:
        raise ValueError(f"`exclude` must hold integer item rows. Received dtype {rows.dtype}.")
    rows = tf.cast(rows, tf.int64)
    keep = rows >= 0
    return tf.boolean_mask(tf.cast(queries, tf.int64), keep), tf.boolean_mask(rows, keep)


def select_top_k(scores: Any, k: Any, above: Any = None) -> tuple[Any, Any]:
    """``tf.math.top_k`` of ``scores`` [B, n] (``k <= n``), faster for k much below n.

    TensorFlow's CPU top-k costs about the same per score whatever ``k``. This reads
    the maximum of each group of 32 scores (a vectorized reduction), takes the ``k``
    groups with the highest maxima, and runs top-k over their ``32 k`` scores only. It
    is exact: the groups holding the top ``k`` scores are among those ``k`` groups.
    Ties go to the lower index, as in ``tf.math.top_k``: the chosen groups are read in
    index order, and among equal maxima the lower group is chosen.

    Args:
        scores: float ``[B, n]``.
        k: int scalar, ``0 <= k <= n``.
        above: Optional float ``[B]``: only scores strictly above a row's threshold
            are wanted (the k-th best found so far, when merging blocks). Then only
            ``k' <= k`` columns come back, at least as many as the row with most
            such scores has (bounded by 32 per group whose maximum is above), so
            they hold all of them, and the work shrinks with ``k'``.

    Returns:
        ``(values, indices)``, each ``[B, k]`` (``[B, k']`` with ``above``).
    """
    k = tf.cast(k, tf.int32)
    batch, width = tf.shape(scores)[0], tf.shape(scores)[1]

    def most_above(values: Any, per_value: int) -> Any:
        # The largest number of scores above its row's threshold, at most k: each
        # of `values` above it stands for at most `per_value` scores.
        above_count = tf.reduce_sum(tf.cast(values > above[:, None], tf.int32), axis=1)
        return tf.minimum(k, per_value * tf.reduce_max(tf.concat([above_count, [0]], axis=0)))

    def grouped() -> tuple[Any, Any]:
        groups = (width + _GROUP - 1) // _GROUP
        padded = tf.pad(
            scores, [[0, 0], [0, groups * _GROUP - width]], constant_values=float("-inf")
        )
        padded = tf.reshape(padded, tf.stack([batch, groups, _GROUP]))
        maxima = tf.reduce_max(padded, axis=2)
        # Bounding by groups costs a pass over the maxima, not over the scores.
        wanted = k if above is None else most_above(maxima, _GROUP)
        chosen = tf.math.top_k(maxima, k=wanted).indices
        chosen = tf.sort(chosen, axis=1)
        candidates = tf.reshape(tf.gather(padded, chosen, batch_dims=1), tf.stack([batch, -1]))
        top = tf.math.top_k(candidates, k=tf.minimum(wanted, tf.shape(candidates)[1]))
        index = chosen[:, :, None] * _GROUP + tf.range(_GROUP)[None, None, :]
        index = tf.reshape(index, tf.stack([batch, -1]))
        return top.values, tf.gather(index, top.indices, batch_dims=1)

    def direct() -> tuple[Any, Any]:
        top = tf.math.top_k(scores, k=k if above is None else most_above(scores, 1))
        return top.values, top.indices

    # Worth it once the groups' maxima and the chosen groups are well below n.
    return tf.cond(4 * _GROUP * k <= width, grouped, direct)


def top_k(
    queries: Any,
    item_vectors: Any,
    k: Any,
    *,
    exclude: Any = None,
    block_size: int | None = None,
    max_scores: int = DEFAULT_MAX_SCORES,
    parallel_iterations: int = 2,
) -> TopK:
    """The ``k`` items with the highest dot product for each query, exact.

    Ties go to the lower catalogue row, so the answer equals a stable sort of the
    scores. ``k`` larger than the catalogue is clipped to it. When exclusions leave a
    query fewer than ``k`` items, its last entries have score ``-inf`` and row -1.
    Vectors must be finite.

    Example:

    >>> items = tf.constant([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    >>> best = top_k(tf.constant([[1.0, 0.5]]), items, k=2, exclude=tf.constant([[2]]))
    >>> best.rows.numpy().tolist(), best.scores.numpy().tolist()
    ([[0, 1]], [[1.0, 0.5]])

    Args:
        queries: float32 ``[B, d]``; B may be 0.
        item_vectors: float32 ``[N, d]`` (a tensor or a variable).
        k: Items per query: a Python int or an int scalar tensor, >= 0.
        exclude: Optional per-query catalogue rows to leave out (their scores become
            ``-inf`` before the top-k): ragged ``[B, None]`` or padded ``[B, L]``
            with negative padding; see `exclusion_pairs`.
        block_size: Items scored at once; default ``max_scores // B`` (rounded down
            to a multiple of 64, at least 64).
        max_scores: Scores computed at once when ``block_size`` is None: memory is
            about ``parallel_iterations * max_scores`` floats, whatever N.
        parallel_iterations: Blocks in flight at once (overlaps work across cores).

    Returns:
        A `TopK` of ``[B, min(k, N)]`` scores and rows.

    Raises:
        ValueError: ``k``, ``block_size`` or ``parallel_iterations`` is out of range,
            or a tensor has the wrong rank.
    """
    if isinstance(k, bool) or (isinstance(k, numbers.Number) and (int(k) != k or k < 0)):
        raise ValueError(f"`k` must be an integer >= 0. Received: k={k!r}")
    for name, value in (
        ("block_size", 1 if block_size is None else block_size),
        ("max_scores", max_scores),
        ("parallel_iterations", parallel_iterations),
    ):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value!r}")
    items = tf.convert_to_tensor(item_vectors)
    queries = tf.cast(tf.convert_to_tensor(queries), items.dtype)
    if items.shape.rank != 2 or queries.shape.rank != 2:
        raise ValueError(
            "`queries` must be [B, d] and `item_vectors` [N, d]. Received: queries shape "
            f"{queries.shape}, item_vectors shape {items.shape}."
        )
    k = tf.convert_to_tensor(k)
    checks = [tf.debugging.assert_non_negative(k, message="k must be >= 0")]
    with tf.control_dependencies(checks):
        num_items = tf.shape(items, out_type=tf.int64)[0]
        k = tf.minimum(tf.cast(k, tf.int64), num_items)
    batch = tf.shape(queries)[0]
    if exclude is not None:
        excluded_queries, excluded_rows = exclusion_pairs(exclude)
        # Sorted (query, row) keys: membership by binary search. The sentinel keeps
        # the search inside the array when nothing is excluded.
        excluded_keys = tf.sort(excluded_queries * num_items + excluded_rows)
        excluded_keys = tf.concat([excluded_keys, [tf.int64.max]], axis=0)
        query_of_row = tf.range(tf.cast(batch, tf.int64))[:, None]
    if block_size is None:
        per_query = max_scores // tf.maximum(tf.cast(batch, tf.int64), 1)
        block = tf.maximum(per_query // _BLOCK_ALIGN * _BLOCK_ALIGN, _BLOCK_ALIGN)
    else:
        block = tf.constant(block_size, tf.int64)
    neg_inf = tf.constant(float("-inf"), items.dtype)

    def body(start: Any, best_scores: Any, best_rows: Any) -> tuple[Any, Any, Any]:
        stop = tf.minimum(start + block, num_items)
        scores = tf.matmul(queries, items[start:stop], transpose_b=True)
        # Once k items are kept, a block item can only enter by beating the k-th
        # (equal loses: kept items have lower rows), so fewer candidates are needed.
        kept = tf.shape(best_scores, tf.int64)[1]
        threshold = tf.cond(
            (kept >= k) & (k > 0),
            lambda: best_scores[:, tf.maximum(k - 1, 0)],
            lambda: tf.fill(tf.shape(best_scores)[:1], neg_inf),
        )
        wanted = k
        if exclude is not None:
            # Excluded items are dropped after the selection, not masked before it
            # (a scatter into the [B, block] scores costs more than the matmul): the
            # block's best k + (most exclusions of one query in it) hold its best k
            # that are not excluded.
            inside = tf.cast((excluded_rows >= start) & (excluded_rows < stop), tf.int64)
            per_query = tf.math.unsorted_segment_sum(inside, excluded_queries, batch)
            wanted += tf.reduce_max(tf.concat([per_query, [0]], axis=0))
        values, indices = select_top_k(scores, tf.minimum(wanted, stop - start), above=threshold)
        rows = indices + tf.cast(start, tf.int32)
        if exclude is not None:
            keys = query_of_row * num_items + tf.cast(rows, tf.int64)
            flat = tf.reshape(keys, [1, -1])
            position = tf.searchsorted(excluded_keys[None, :], flat, side="left")
            found = tf.reshape(tf.gather(excluded_keys, position[0]), tf.shape(keys)) == keys
            values = tf.where(found, neg_inf, values)
        # The best so far come first and hold lower rows than this block, and top_k
        # keeps the earlier of equal values: ties go to the lower row.
        scores = tf.concat([best_scores, values], axis=1)
        rows = tf.concat([best_rows, rows], axis=1)
        best = tf.math.top_k(
            scores, k=tf.cast(tf.minimum(k, tf.shape(scores, tf.int64)[1]), tf.int32)
        )
        return stop, best.values, tf.gather(rows, best.indices, batch_dims=1)

    _, scores, rows = tf.while_loop(
        lambda start, *_: start < num_items,
        body,
        [
            tf.constant(0, tf.int64),
            tf.zeros(tf.stack([batch, 0]), items.dtype),
            tf.zeros(tf.stack([batch, 0]), tf.int32),
        ],
        shape_invariants=[
            tf.TensorShape([]),
            tf.TensorShape([None, None]),
            tf.TensorShape([None, None]),
        ],
        parallel_iterations=parallel_iterations,
    )
    # Blocks return only what can still enter, so when exclusions leave fewer than k
    # items the width can fall short of k: pad it.
    missing = tf.stack([batch, tf.cast(k, tf.int32) - tf.shape(scores)[1]])
    scores = tf.concat([scores, tf.fill(missing, neg_inf)], axis=1)
    rows = tf.concat([rows, tf.fill(missing, -1)], axis=1)
    rows = tf.where(scores > neg_inf, rows, tf.constant(-1, tf.int32))
    return TopK(scores, rows)
