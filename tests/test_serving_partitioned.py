"""recsys.serving.partitioned and recall: k-means, the partitioned index, recall@k, nprobe."""

from __future__ import annotations

import numpy as np
import pytest

from recsys._tf import tf
from recsys.serving.partitioned import PartitionedIndex, assign_partitions, kmeans
from recsys.serving.recall import index_recall, recall_at_k, tune_nprobe
from recsys.serving.user_items import UserItems


@pytest.fixture(scope="module")
def clustered():
    """3,000 items around 12 well-separated centres, and 40 queries."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(12, 16)) * 4
    labels = rng.integers(0, 12, 3000)
    items = (centres[labels] + rng.normal(size=(3000, 16))).astype(np.float32)
    queries = rng.normal(size=(40, 16)).astype(np.float32)
    return items, queries, labels


@pytest.fixture(scope="module")
def index(clustered):
    items, _, _ = clustered
    return PartitionedIndex.build(items, num_partitions=24, nprobe=3, seed=1)


def _probe_reference(index, items, queries, k, nprobe, excluded=None):
    """NumPy: the exact top-k among the items of each query's nprobe best partitions."""
    centroids = index.centroids.numpy()
    partition = assign_partitions(items, centroids)
    out = []
    for q, query in enumerate(queries):
        probed = np.argsort(-(centroids @ query), kind="stable")[:nprobe]
        candidates = np.flatnonzero(np.isin(partition, probed))
        if excluded is not None:
            candidates = np.setdiff1d(candidates, excluded[q])
        scores = items[candidates] @ query
        best = candidates[np.argsort(-scores, kind="stable")[:k]]
        out.append(np.pad(best, (0, k - len(best)), constant_values=-1))
    return np.array(out)


def test_assign_partitions_is_the_nearest_centroid():
    rng = np.random.default_rng(1)
    points, centroids = rng.normal(size=(500, 5)), rng.normal(size=(7, 5))
    distances = ((points[:, None, :] - centroids[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(
        assign_partitions(points, centroids, block=64), distances.argmin(1)
    )


def test_kmeans_recovers_planted_clusters(clustered):
    items, _, labels = clustered
    found = assign_partitions(items, kmeans(items, 12, iterations=20, seed=3))
    # Each planted cluster lands (almost) whole in one k-means cluster.
    purity = sum(np.bincount(found[labels == c]).max() for c in range(12)) / len(items)
    assert purity > 0.95


def test_kmeans_rejects_more_clusters_than_points():
    with pytest.raises(ValueError, match="num_clusters=5"):
        kmeans(np.zeros((3, 2)), 5)


def test_layout_keeps_every_item_once_and_vectors_round_trip(clustered, index):
    items, _, _ = clustered
    rows = index.chunk_rows.numpy().ravel()
    assert sorted(rows[rows >= 0].tolist()) == list(range(len(items)))
    np.testing.assert_array_equal(index.vectors(tf.range(len(items))).numpy(), items)
    assert index.partition_sizes.sum() == len(items)


@pytest.mark.parametrize("nprobe", [1, 3, 24])
def test_search_equals_exact_top_k_over_the_probed_partitions(clustered, index, nprobe):
    items, queries, _ = clustered
    got = tf.function(lambda: index.search(queries, 20, nprobe=nprobe))()
    want = _probe_reference(index, items, queries, 20, nprobe)
    np.testing.assert_array_equal(got.rows.numpy(), want)
    scores = np.take_along_axis(queries @ items.T, np.maximum(want, 0), 1)
    np.testing.assert_allclose(got.scores.numpy(), np.where(want >= 0, scores, -np.inf), rtol=1e-5)


def test_search_with_every_partition_is_exact(clustered, index):
    items, queries, _ = clustered
    got = index.search(queries, 50, nprobe=index.num_partitions).rows.numpy()
    want = np.argsort(-(queries @ items.T), axis=1, kind="stable")[:, :50]
    np.testing.assert_array_equal(got, want)


def test_exclusions_are_left_out(clustered, index):
    items, queries, _ = clustered
    rng = np.random.default_rng(2)
    best = _probe_reference(index, items, queries, 20, 3)
    excluded = [
        np.union1d(best[q, ::3], rng.integers(0, len(items), 30)) for q in range(len(queries))
    ]
    ragged = tf.ragged.constant([e.tolist() for e in excluded], dtype=tf.int64)
    got = tf.function(lambda: index.search(queries, 20, exclude=ragged))().rows.numpy()
    for q in range(len(queries)):
        assert not set(got[q]) & set(excluded[q].tolist())
    np.testing.assert_array_equal(got, _probe_reference(index, items, queries, 20, 3, excluded))


def test_fewer_candidates_than_k_pad_with_minus_one(clustered, index):
    items, queries, _ = clustered
    got = index.search(queries[:3], tf.constant(5000), nprobe=1)
    assert got.rows.shape == (3, len(items))  # k clipped to the catalogue
    want = _probe_reference(index, items, queries[:3], len(items), 1)
    np.testing.assert_array_equal(got.rows.numpy(), want)
    assert (want == -1).any(axis=1).all()  # one partition holds fewer than 3,000 items
    assert np.isneginf(got.scores.numpy()[want == -1]).all()


def test_empty_batch(index):
    got = tf.function(lambda q: index.search(q, 7))(tf.zeros([0, 16]))
    assert got.rows.shape == (0, 7) and got.scores.shape == (0, 7)


def test_recall_at_k_counts_found_exact_items():
    assert recall_at_k([[1, 2, 3], [4, 5, -1]], [[1, 2, 9], [4, 5, -1]]) == pytest.approx(5 / 6)
    assert recall_at_k([[7, 8]], [[-1, -1]]) == 1.0  # nothing to find
    with pytest.raises(ValueError, match="same B"):
        recall_at_k([[1]], [[1], [2]])


def test_index_recall_matches_a_brute_force_reference(clustered, index):
    items, queries, _ = clustered
    exact = np.argsort(-(queries @ items.T), axis=1, kind="stable")[:, :30]
    found = _probe_reference(index, items, queries, 30, 2)
    want = np.mean([np.isin(exact[q], found[q]).mean() for q in range(len(queries))])
    assert index_recall(index, items, queries, k=30, nprobe=2) == pytest.approx(want)
    assert index_recall(index, items, queries, k=30, nprobe=24) == 1.0


def test_tune_nprobe_finds_the_smallest_sufficient_nprobe(clustered, index):
    items, queries, _ = clustered
    nprobe, recall = tune_nprobe(index, items, queries, target=0.9, k=30)
    assert recall >= 0.9
    assert recall == pytest.approx(index_recall(index, items, queries, k=30, nprobe=nprobe))
    if nprobe > 1:
        assert index_recall(index, items, queries, k=30, nprobe=nprobe - 1) < 0.9


def test_constructor_validates_shapes(clustered):
    items, _, _ = clustered
    with pytest.raises(ValueError, match="partition in"):
        PartitionedIndex(items, np.zeros((4, 16)), np.full(len(items), 9), nprobe=1)
    with pytest.raises(ValueError, match="dimension 16"):
        PartitionedIndex(items, np.zeros((4, 3)), np.zeros(len(items), int), nprobe=1)
    with pytest.raises(ValueError, match="nprobe=0"):
        PartitionedIndex(items, np.zeros((4, 16)), np.zeros(len(items), int), nprobe=0)


def test_index_recall_with_exclusions_matches_a_brute_force_reference(clustered, index):
    items, queries, _ = clustered
    rng = np.random.default_rng(4)
    best = np.argsort(-(queries @ items.T), axis=1, kind="stable")[:, :40]
    excluded = [np.union1d(best[q, :10], rng.integers(0, len(items), 5)) for q in range(40)]
    exclude = UserItems.from_pairs(
        np.repeat(np.arange(40), [len(e) for e in excluded]), np.concatenate(excluded), 40
    )
    masked = queries @ items.T
    for q, rows in enumerate(excluded):
        masked[q, rows] = -np.inf
    exact = np.argsort(-masked, axis=1, kind="stable")[:, :30]
    found = _probe_reference(index, items, queries, 30, 2, excluded)
    want = np.mean([np.isin(exact[q], found[q]).mean() for q in range(40)])
    got = index_recall(index, items, queries, k=30, nprobe=2, exclude=exclude)
    assert got == pytest.approx(want)
    _, recall = tune_nprobe(index, items, queries, target=0.9, k=30, exclude=exclude)
    assert recall >= 0.9
    with pytest.raises(ValueError, match="one row per query"):
        index_recall(index, items, queries[:5], k=30, exclude=exclude)
