"""recsys.evaluation against plain NumPy references on tiny random data."""

from __future__ import annotations

import numpy as np
import pytest

import recsys  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
from recsys import evaluation


def _reference_retrieval(queries, items, test_u, test_i, train_u, train_i, k_acc, k_rec, k_ndcg):
    """Straight from the definitions, one user at a time, full sorts."""
    scores = queries @ items.T
    hits = 0
    for u, i in zip(test_u, test_i, strict=True):
        higher = np.sum(scores[u] > scores[u, i])
        hits += higher < k_acc
    recalls, ndcgs, shares = [], [], []
    for u in np.unique(test_u):
        relevant = set(test_i[test_u == u])
        top = np.argsort(-scores[u], kind="stable")[:k_acc]
        shares.append(np.isin(top, train_i[train_u == u]).mean())
        ranked = scores[u].copy()
        ranked[train_i[train_u == u]] = -np.inf
        order = np.argsort(-ranked, kind="stable")
        recalls.append(len(relevant & set(order[:k_rec])) / len(relevant))
        dcg = sum(1 / np.log2(r + 2) for r, item in enumerate(order[:k_ndcg]) if item in relevant)
        ideal = sum(1 / np.log2(r + 2) for r in range(min(k_ndcg, len(relevant))))
        ndcgs.append(dcg / ideal)
    return (
        hits / len(test_u),
        float(np.mean(shares)),
        float(np.mean(recalls)),
        float(np.mean(ndcgs)),
    )


def _random_interactions(rng, num_users, num_items, n_train, n_test):
    pairs = rng.choice(num_users * num_items, size=n_train + n_test, replace=False)
    users, items = pairs // num_items, pairs % num_items
    return users[:n_train], items[:n_train], users[n_train:], items[n_train:]


@pytest.mark.parametrize("batch_size", [None, 3])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_retrieval_metrics_match_numpy_reference(seed, batch_size):
    rng = np.random.default_rng(seed)
    num_users, num_items, dim = 17, 40, 5
    queries = rng.normal(size=(num_users, dim)).astype("float32")
    items = rng.normal(size=(num_items, dim)).astype("float32")
    train_u, train_i, test_u, test_i = _random_interactions(rng, num_users, num_items, 150, 60)
    got = evaluation.retrieval_metrics(
        queries,
        items,
        test_u,
        test_i,
        train_u,
        train_i,
        top_accuracy_ks=[10],
        recall_ks=[8],
        ndcg_ks=[5],
        batch_size=batch_size,
    )
    acc, share, rec, ndcg = _reference_retrieval(
        queries.astype(np.float64), items, test_u, test_i, train_u, train_i, 10, 8, 5
    )
    assert list(got) == [
        "test/top10_accuracy",
        "test/top10_seen_share",
        "test/recall@8",
        "test/ndcg@5",
    ]
    assert got["test/top10_accuracy"] == pytest.approx(acc, abs=1e-12)
    assert 0.1 < share < 0.5  # the data makes the share neither trivial nor full
    assert got["test/top10_seen_share"] == pytest.approx(share, rel=1e-6)
    assert got["test/recall@8"] == pytest.approx(rec, rel=1e-6)
    assert got["test/ndcg@5"] == pytest.approx(ndcg, rel=1e-6)


def test_top_accuracy_counts_seen_items_and_recall_excludes_them():
    # One user; item 0 (trained) scores highest, item 1 (test) second.
    queries = np.array([[1.0]], dtype="float32")
    items = np.array([[3.0], [2.0], [1.0]], dtype="float32")
    got = evaluation.retrieval_metrics(
        queries, items, [0], [1], [0], [0], top_accuracy_ks=[1], recall_ks=[1], ndcg_ks=[1]
    )
    assert got["test/top1_accuracy"] == 0.0  # the trained item takes the only slot
    assert got["test/top1_seen_share"] == 1.0
    assert got["test/recall@1"] == 1.0  # ... but is excluded from the ranking
    assert got["test/ndcg@1"] == 1.0


def test_retrieval_metrics_match_factorized_top_k():
    import tensorflow_recommenders as tfrs

    from recsys._tf import tf

    rng = np.random.default_rng(3)
    queries = rng.normal(size=(9, 4)).astype("float32")
    items = rng.normal(size=(30, 4)).astype("float32")
    test_u = rng.integers(0, 9, size=50)
    test_i = rng.integers(0, 30, size=50)
    # Id-based evaluation: TFRS's score-based mode compares a reduce_sum score with
    # matmul scores, so float rounding can move an item at rank k in or out.
    index = tfrs.layers.factorized_top_k.BruteForce(k=5)
    index.index(tf.constant(items), tf.range(30, dtype=tf.int64))
    metric = tfrs.metrics.FactorizedTopK(candidates=index, ks=[5])
    metric.update_state(
        tf.gather(queries, test_u), tf.gather(items, test_i), true_candidate_ids=test_i
    )
    expected = float(metric.result()[0])
    got = evaluation.retrieval_metrics(
        queries, items, test_u, test_i, top_accuracy_ks=[5], recall_ks=[], ndcg_ks=[]
    )
    assert got == {"test/top5_accuracy": pytest.approx(expected, abs=1e-6)}


def test_retrieval_metrics_validate_arguments():
    q = np.zeros((2, 3), "float32")
    c = np.zeros((4, 3), "float32")
    with pytest.raises(ValueError, match="same width"):
        evaluation.retrieval_metrics(q, np.zeros((4, 2), "float32"), [0], [0])
    with pytest.raises(ValueError, match=r"test_items.*\[0, 4\).*\[4, 4\]"):
        evaluation.retrieval_metrics(q, c, [0], [4])
    with pytest.raises(ValueError, match="same length"):
        evaluation.retrieval_metrics(q, c, [0, 1], [0])
    with pytest.raises(ValueError, match="both"):
        evaluation.retrieval_metrics(q, c, [0], [0], train_users=[0])
    with pytest.raises(ValueError, match="recall_ks=0"):
        evaluation.retrieval_metrics(q, c, [0], [0], recall_ks=[0])
    with pytest.raises(ValueError, match="integer indices"):
        evaluation.retrieval_metrics(q, c, [0.5], [0])


def test_k_larger_than_catalogue():
    q = np.ones((1, 1), "float32")
    c = np.arange(3, dtype="float32")[:, None]
    got = evaluation.retrieval_metrics(
        q, c, [0], [0], top_accuracy_ks=[100], recall_ks=[100], ndcg_ks=[10]
    )
    assert got["test/top100_accuracy"] == 1.0
    assert got["test/recall@100"] == 1.0
    assert got["test/ndcg@10"] == pytest.approx(1 / np.log2(4))


def test_regression_metrics():
    rng = np.random.default_rng(0)
    y, p = rng.normal(size=100), rng.normal(size=100)
    assert evaluation.rmse(y, p) == pytest.approx(np.sqrt(np.mean((y - p) ** 2)))
    assert evaluation.mae(y, p) == pytest.approx(np.mean(np.abs(y - p)))
    with pytest.raises(ValueError, match="same number"):
        evaluation.rmse([1.0], [1.0, 2.0])


def test_auc_matches_pairwise_definition_with_ties():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=200)
    scores = np.round(rng.random(200), 1)  # many ties
    pos, neg = scores[labels == 1], scores[labels == 0]
    expected = np.mean((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :]))
    assert evaluation.auc(labels, scores) == pytest.approx(expected)
    assert evaluation.accuracy(labels, scores) == pytest.approx(np.mean((scores > 0.5) == labels))
    with pytest.raises(ValueError, match="both classes"):
        evaluation.auc([1, 1], [0.2, 0.3])


def test_popularity_baseline_counts_hits_as_retrieval_metrics_does():
    rng = np.random.default_rng(3)
    counts = rng.integers(0, 6, size=40)  # many ties
    test_items = rng.integers(-1, 40, size=200)
    for k in (1, 5, 17, 40, 100):
        strictly_higher = np.array(
            [(counts > counts[i]).sum() if i >= 0 else k for i in test_items]
        )
        expected = float(np.mean((test_items >= 0) & (strictly_higher < k)))
        assert evaluation.popularity_top_k_accuracy(counts, test_items, k=k) == pytest.approx(
            expected
        )
    # The same rule as retrieval_metrics with the counts as every user's scores.
    users = np.zeros(len(test_items[test_items >= 0]), dtype=int)
    got = evaluation.retrieval_metrics(
        np.ones([1, 1], "float32"),
        counts[:, None].astype("float32"),
        users,
        test_items[test_items >= 0],
        top_accuracy_ks=[5],
        recall_ks=[],
        ndcg_ks=[],
    )["test/top5_accuracy"]
    assert evaluation.popularity_top_k_accuracy(
        counts, test_items[test_items >= 0], k=5
    ) == pytest.approx(got)
