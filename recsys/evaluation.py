"""Exact, batched evaluation metrics for retrieval, rating prediction and classification.

Retrieval is scored against the *whole* catalogue: every query is dotted with every
candidate, in batches of queries, and `tf.math.top_k` keeps the best ones. Nothing is
sampled or approximated, and no `tfrs.metrics.FactorizedTopK` runs inside training.

The functions here are pure: they take arrays (NumPy or tensors) of embeddings and
integer indices and return floats, so any model can use them and tests can check them
against a plain NumPy reference.

Definitions (users and items are integer indices):

- ``top{k}_accuracy`` (as `tfrs.metrics.FactorizedTopK` defines it): the share of test
  (user, item) pairs whose item scores among the user's top ``k`` over *all* catalogue
  items, the user's training items included. A pair is a hit when fewer than ``k``
  items score strictly higher than its item.
- ``recall@k``: for each user with test items, the share of the user's test items in
  the user's top ``k``, ranked with the user's training items removed; averaged over
  those users.
- ``ndcg@k``: for each user with test items, DCG of the top ``k`` (training items
  removed; gain 1 for a test item at rank r, discounted by ``1 / log2(r + 2)``) over the
  best possible DCG, ``sum_{r < min(k, n_test)} 1 / log2(r + 2)``; averaged over users.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from recsys._tf import tf
from recsys.checks import check_positive_int

__all__ = [
    "accuracy",
    "auc",
    "mae",
    "popularity_top_k_accuracy",
    "retrieval_metrics",
    "rmse",
]

# Score matrices are built in blocks of at most this many floats (64 MiB of float32).
_MAX_BLOCK_FLOATS = 1 << 24


def _as_index_array(name: str, value: Any) -> np.ndarray:
    array = np.asarray(value)
    if array.ndim != 1:
        raise ValueError(f"`{name}` must be a 1-D array of indices. Received shape {array.shape}.")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"`{name}` must hold integer indices. Received dtype {array.dtype}.")
    return array.astype(np.int64, copy=False)


def _index_pairs(prefix: str, users: Any, items: Any) -> tuple[np.ndarray, np.ndarray]:
    """`{prefix}_users` and `{prefix}_items` as index arrays of the same length."""
    users = _as_index_array(f"{prefix}_users", users)
    items = _as_index_array(f"{prefix}_items", items)
    if users.shape != items.shape:
        raise ValueError(
            f"`{prefix}_users` and `{prefix}_items` must have the same length. Received "
            f"{users.size} and {items.size}."
        )
    return users, items


def retrieval_metrics(
    query_embeddings: Any,
    candidate_embeddings: Any,
    test_users: Any,
    test_items: Any,
    train_users: Any | None = None,
    train_items: Any | None = None,
    top_accuracy_ks: Sequence[int] = (100,),
    recall_ks: Sequence[int] = (100,),
    ndcg_ks: Sequence[int] = (10,),
    prefix: str = "test/",
    batch_size: int | None = None,
) -> dict[str, float]:
    """Scores every query against every candidate and returns top-k metrics.

    Example:

    >>> import numpy as np
    >>> users = np.eye(2, dtype="float32")
    >>> items = np.array([[1, 0], [0, 1], [0.5, 0.5]], dtype="float32")
    >>> retrieval_metrics(users, items, [0, 1], [2, 1], top_accuracy_ks=[1],
    ...                   recall_ks=[1], ndcg_ks=[1])
    {'test/top1_accuracy': 0.5, 'test/recall@1': 0.5, 'test/ndcg@1': 0.5}

    Args:
        query_embeddings: `[num_users, d]` float array; row u is user u's query vector.
        candidate_embeddings: `[num_items, d]` float array; row i is item i's vector.
        test_users: `[n]` user indices of the test pairs.
        test_items: `[n]` item indices of the test pairs (same length as `test_users`).
        train_users: `[m]` user indices of the training pairs, or None (nothing to
            exclude from the recall/NDCG ranking).
        train_items: `[m]` item indices of the training pairs, or None.
        top_accuracy_ks: The k of each `top{k}_accuracy` (seen items included) and,
            when training pairs are given, of each `top{k}_seen_share`: the share of a
            user's top k items that are training items of that user (slots a
            recommendation cannot use for a new item), averaged over the scored users;
            items tied at the k-th score count in the order of their indices.
        recall_ks: The k of each `recall@k` (training items excluded).
        ndcg_ks: The k of each `ndcg@k` (training items excluded).
        prefix: Prepended to every metric name.
        batch_size: Users scored per block; by default as many as keep a block of
            scores under 64 MiB.

    Returns:
        `{prefix + "top100_accuracy": ..., prefix + "recall@100": ..., ...}` as floats,
        in the order top-accuracy, seen share (with training pairs), recall, NDCG.

    Raises:
        ValueError: Shapes disagree, indices are out of range, or a k is not a
            positive integer.
    """
    queries = tf.convert_to_tensor(query_embeddings, dtype=tf.float32)
    candidates = tf.convert_to_tensor(candidate_embeddings, dtype=tf.float32)
    if queries.shape.rank != 2 or candidates.shape.rank != 2:
        raise ValueError(
            "`query_embeddings` and `candidate_embeddings` must be 2-D. Received shapes "
            f"{queries.shape} and {candidates.shape}."
        )
    if queries.shape[1] != candidates.shape[1]:
        raise ValueError(
            "Query and candidate embeddings must have the same width. Received "
            f"{queries.shape[1]} and {candidates.shape[1]}."
        )
    num_users, num_items = int(queries.shape[0]), int(candidates.shape[0])
    test_users, test_items = _index_pairs("test", test_users, test_items)
    if (train_users is None) != (train_items is None):
        raise ValueError("Pass both `train_users` and `train_items`, or neither.")
    share_seen = train_users is not None
    if train_users is None:
        train_users = np.zeros([0], np.int64)
        train_items = np.zeros([0], np.int64)
    train_users, train_items = _index_pairs("train", train_users, train_items)
    for name, array, bound in (
        ("test_users", test_users, num_users),
        ("train_users", train_users, num_users),
        ("test_items", test_items, num_items),
        ("train_items", train_items, num_items),
    ):
        if array.size and (array.min() < 0 or array.max() >= bound):
            raise ValueError(
                f"`{name}` must lie in [0, {bound}). Received values in "
                f"[{array.min()}, {array.max()}]."
            )
    top_accuracy_ks = [check_positive_int("top_accuracy_ks", k) for k in top_accuracy_ks]
    recall_ks = [check_positive_int("recall_ks", k) for k in recall_ks]
    ndcg_ks = [check_positive_int("ndcg_ks", k) for k in ndcg_ks]
    if batch_size is None:
        batch_size = max(1, min(4096, _MAX_BLOCK_FLOATS // max(num_items, 1)))
    batch_size = check_positive_int("batch_size", batch_size)

    # Users that need scoring: those with a test pair. Their test and train pairs,
    # sorted by user, so each block of users owns a contiguous slice of both.
    order = np.argsort(test_users, kind="stable")
    test_users, test_items = test_users[order], test_items[order]
    order = np.argsort(train_users, kind="stable")
    train_users, train_items = train_users[order], train_items[order]
    eval_users = np.unique(test_users)

    max_top_k = min(max(top_accuracy_ks, default=1), num_items)
    max_rank_k = min(max([*recall_ks, *ndcg_ks], default=1), num_items)
    top_hits = {k: 0 for k in top_accuracy_ks}
    seen_share_sum = {k: 0.0 for k in top_accuracy_ks}
    recall_sum = {k: 0.0 for k in recall_ks}
    ndcg_sum = {k: 0.0 for k in ndcg_ks}
    discounts = 1.0 / np.log2(np.arange(max(max_rank_k, 1)) + 2.0)

    for start in range(0, eval_users.size, batch_size):
        block = eval_users[start : start + batch_size]
        scores = tf.matmul(tf.gather(queries, block), candidates, transpose_b=True)
        # Position of each user within the block, for test and train pairs.
        t_lo, t_hi = np.searchsorted(test_users, [block[0], block[-1] + 1])
        row_of = np.searchsorted(block, test_users[t_lo:t_hi])
        cols = test_items[t_lo:t_hi]

        seen = None
        r_lo, r_hi = np.searchsorted(train_users, [block[0], block[-1] + 1])
        seen_rows = np.searchsorted(block, train_users[r_lo:r_hi])
        if seen_rows.size:
            seen = tf.scatter_nd(
                np.stack([seen_rows, train_items[r_lo:r_hi]], axis=1),
                tf.ones([seen_rows.size], tf.bool),
                [block.size, num_items],
            )

        if top_accuracy_ks:
            # A pair is a hit when fewer than k items score strictly higher: compare its
            # score with the k-th best score of its user.
            best = tf.math.top_k(scores, k=max_top_k, sorted=True)
            kth = best.values.numpy()
            if seen is not None:  # only when training pairs were given
                in_seen = tf.gather(seen, best.indices, batch_dims=1).numpy()
                for k in top_accuracy_ks:
                    seen_share_sum[k] += float(np.sum(in_seen[:, : min(k, num_items)].mean(1)))
            positive = tf.gather_nd(scores, np.stack([row_of, cols], axis=1)).numpy()
            for k in top_accuracy_ks:
                if k >= num_items:
                    top_hits[k] += cols.size
                    continue
                # Strictly-higher count < k  <=>  positive >= k-th best score.
                top_hits[k] += int(np.sum(positive >= kth[row_of, k - 1]))

        if recall_ks or ndcg_ks:
            if seen is not None:
                scores = tf.where(seen, tf.constant(-np.inf, tf.float32), scores)
            top = tf.math.top_k(scores, k=max_rank_k, sorted=True).indices.numpy()
            relevant = np.zeros([block.size, num_items], dtype=bool)
            relevant[row_of, cols] = True
            hits = np.take_along_axis(relevant, top, axis=1)
            n_test = np.bincount(row_of, minlength=block.size)
            for k in recall_ks:
                recall_sum[k] += float(np.sum(hits[:, :k].sum(axis=1) / n_test))
            for k in ndcg_ks:
                dcg = (hits[:, :k] * discounts[: min(k, max_rank_k)]).sum(axis=1)
                ideal = np.cumsum(discounts)[np.minimum(np.minimum(n_test, k), max_rank_k) - 1]
                ndcg_sum[k] += float(np.sum(dcg / ideal))

    n_pairs = max(test_users.size, 1)
    n_users = max(eval_users.size, 1)
    result: dict[str, float] = {}
    for k in top_accuracy_ks:
        result[f"{prefix}top{k}_accuracy"] = top_hits[k] / n_pairs
    if share_seen:
        for k in top_accuracy_ks:
            result[f"{prefix}top{k}_seen_share"] = seen_share_sum[k] / n_users
    for k in recall_ks:
        result[f"{prefix}recall@{k}"] = recall_sum[k] / n_users
    for k in ndcg_ks:
        result[f"{prefix}ndcg@{k}"] = ndcg_sum[k] / n_users
    return result


def popularity_top_k_accuracy(train_counts: Any, test_items: Any, k: int = 100) -> float:
    """``top{k}_accuracy`` of recommending every user the ``k`` most popular items.

    The baseline's score of an item is its training count; a test pair is a hit when
    fewer than ``k`` items have a strictly higher count (as :func:`retrieval_metrics`
    counts hits; seen items are not excluded).

    Example:
        >>> popularity_top_k_accuracy([5, 1, 3], [0, 1, 2, -1], k=2)
        0.5

    Args:
        train_counts: `[num_items]` training interactions of each catalogue item.
        test_items: `[n]` catalogue rows of the test pairs (-1: not in the catalogue,
            never a hit).
        k: The cut-off.
    """
    counts = np.asarray(train_counts, dtype=np.float64).reshape(-1)
    items = _as_index_array("test_items", test_items)
    k = check_positive_int("k", k)
    if not items.size:
        return 0.0
    if k >= counts.size:
        return float(np.mean(items >= 0))
    kth = np.sort(counts)[::-1][k - 1]
    hits = (items >= 0) & (counts[np.maximum(items, 0)] >= kth)
    return float(np.mean(hits))


def _as_float_pair(y_true: Any, y_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true, dtype=np.float64).reshape(-1)
    y_pred = np.asarray(y_pred, dtype=np.float64).reshape(-1)
    if y_true.shape != y_pred.shape:
        raise ValueError(
            "`y_true` and `y_pred` must have the same number of values. Received "
            f"{y_true.size} and {y_pred.size}."
        )
    if y_true.size == 0:
        raise ValueError("`y_true` and `y_pred` are empty.")
    return y_true, y_pred


def rmse(y_true: Any, y_pred: Any) -> float:
    """Root mean squared error.

    Example:

    >>> rmse([1.0, 3.0], [2.0, 3.0])
    0.7071067811865476
    """
    y_true, y_pred = _as_float_pair(y_true, y_pred)
    return float(np.sqrt(np.mean((y_true - y_pred) ** 2)))


def mae(y_true: Any, y_pred: Any) -> float:
    """Mean absolute error.

    Example:

    >>> mae([1.0, 3.0], [2.0, 3.0])
    0.5
    """
    y_true, y_pred = _as_float_pair(y_true, y_pred)
    return float(np.mean(np.abs(y_true - y_pred)))


def accuracy(y_true: Any, probabilities: Any, threshold: float = 0.5) -> float:
    """Binary accuracy: the share of `probabilities > threshold` that equal `y_true`.

    Example:

    >>> accuracy([0, 1, 1], [0.2, 0.7, 0.4])
    0.6666666666666666
    """
    y_true, probabilities = _as_float_pair(y_true, probabilities)
    return float(np.mean((probabilities > threshold) == (y_true > 0.5)))


def auc(y_true: Any, scores: Any) -> float:
    """Exact area under the ROC curve (Mann-Whitney statistic, ties count one half).

    Example:

    >>> auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    0.75

    Raises:
        ValueError: `y_true` holds only one class.
    """
    y_true, scores = _as_float_pair(y_true, scores)
    positive = y_true > 0.5
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"AUC needs both classes. Received {n_pos} positives and {n_neg} negatives."
        )
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(scores.size, dtype=np.float64)
    # Average ranks over ties (1-based).
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    average = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(average, counts)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))
