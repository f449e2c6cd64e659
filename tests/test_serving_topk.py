"""recsys.serving.topk and UserItems: exact blockwise top-k against NumPy, exclusions, CSR."""

from __future__ import annotations

import numpy as np
import pytest

from recsys._tf import tf
from recsys.serving.topk import exclusion_pairs, select_top_k, top_k
from recsys.serving.user_items import UserItems


def _reference(queries, items, k, excluded=None):
    """NumPy top-k: stable sort of the scores (ties to the lower row), excluded rows out."""
    scores = queries.astype(np.float64) @ items.T.astype(np.float64)
    rows_out, scores_out = [], []
    for q, row in enumerate(scores):
        row = row.copy()
        if excluded is not None:
            row[list(excluded[q])] = -np.inf
        order = np.lexsort((np.arange(len(row)), -row))[: min(k, len(row))]
        rows_out.append(np.where(np.isinf(row[order]), -1, order))
        scores_out.append(row[order])
    return np.array(rows_out), np.array(scores_out)


def _graph_top_k(queries, items, k, **kwargs):
    """top_k inside a tf.function: graph while-loops run fast where eager ones crawl."""
    return tf.function(lambda: top_k(queries, items, k, **kwargs))()


@pytest.fixture(scope="module")
def tied():
    """Small integer vectors: every score is exact in float32 and ties are everywhere."""
    rng = np.random.default_rng(0)
    items = rng.integers(-3, 4, (2503, 6)).astype(np.float32)
    queries = rng.integers(-3, 4, (9, 6)).astype(np.float32)
    return queries, items


@pytest.mark.parametrize("block_size", [None, 3, 64, 1000, 2503, 10_000])
def test_top_k_equals_numpy_stable_sort_for_any_block_size(tied, block_size):
    queries, items = tied
    want_rows, want_scores = _reference(queries, items, 50)
    got = _graph_top_k(queries, items, 50, block_size=block_size)
    np.testing.assert_array_equal(got.rows.numpy(), want_rows)
    np.testing.assert_array_equal(got.scores.numpy(), want_scores.astype(np.float32))


@pytest.mark.parametrize("k", [1, 10, 100])
def test_grouped_selection_equals_numpy_on_wide_blocks(k):
    # Wide enough (>= 4 * 32 * k) for select_top_k's grouped path, with many ties.
    rng = np.random.default_rng(k)
    items = rng.integers(-2, 3, (40_009, 4)).astype(np.float32)
    queries = rng.integers(-2, 3, (4, 4)).astype(np.float32)
    want_rows, _ = _reference(queries, items, k)
    np.testing.assert_array_equal(top_k(queries, items, k).rows.numpy(), want_rows)
    scores = tf.constant(queries @ items.T)
    values, indices = select_top_k(scores, k)
    np.testing.assert_array_equal(indices.numpy(), want_rows)
    np.testing.assert_array_equal(values.numpy(), np.take_along_axis(scores.numpy(), want_rows, 1))


def test_small_max_scores_bounds_blocks_and_stays_exact(tied):
    queries, items = tied
    want_rows, _ = _reference(queries, items, 20)
    got = _graph_top_k(queries, items, 20, max_scores=100)  # 64-item blocks
    np.testing.assert_array_equal(got.rows.numpy(), want_rows)


def test_k_as_scalar_tensor_and_clipped_to_the_catalogue(tied):
    queries, items = tied
    search = tf.function(
        lambda q, k: top_k(q, items, k),
        input_signature=[tf.TensorSpec([None, 6]), tf.TensorSpec([], tf.int32)],
    )
    for k in (1, 3, 17):
        got = search(tf.constant(queries), tf.constant(k))
        np.testing.assert_array_equal(got.rows.numpy(), _reference(queries, items, k)[0])
    small = items[:5]
    got = top_k(queries, small, tf.constant(100))
    assert got.rows.shape == (9, 5)
    np.testing.assert_array_equal(got.rows.numpy(), _reference(queries, small, 5)[0])


def test_empty_batch_and_zero_k(tied):
    _, items = tied
    got = top_k(np.zeros((0, 6), np.float32), items, 10)
    assert got.rows.shape == (0, 10) and got.scores.shape == (0, 10)
    traced = tf.function(lambda q: top_k(q, items, 10))(tf.zeros([0, 6]))
    assert traced.rows.shape == (0, 10)
    assert top_k(np.ones((2, 6), np.float32), items, 0).rows.shape == (2, 0)


def test_exclusions_never_returned_and_otherwise_numpy(tied):
    queries, items = tied
    rng = np.random.default_rng(1)
    # Exclude each query's own best rows and random others, as seen items would be.
    best = _reference(queries, items, 30)[0]
    excluded = [
        sorted(set(best[q, ::2].tolist()) | set(rng.integers(0, len(items), 40).tolist()))
        for q in range(len(queries))
    ]
    want_rows, want_scores = _reference(queries, items, 30, excluded)
    ragged = tf.ragged.constant(excluded, dtype=tf.int32)
    longest = max(map(len, excluded))
    padded = np.array([e + [-1] * (longest - len(e)) for e in excluded], dtype=np.int64)
    for exclude in (ragged, padded):
        for block_size in (None, 333):
            got = _graph_top_k(queries, items, 30, exclude=exclude, block_size=block_size)
            rows = got.rows.numpy()
            for q in range(len(queries)):
                assert not set(rows[q]) & set(excluded[q])
            np.testing.assert_array_equal(rows, want_rows)
            np.testing.assert_array_equal(got.scores.numpy(), want_scores.astype(np.float32))


def test_fewer_items_left_than_k_gives_minus_inf_and_minus_one():
    items = np.eye(4, dtype=np.float32)
    got = top_k(
        np.ones((2, 4), np.float32), items, 4, exclude=tf.ragged.constant([[0, 2], [0, 1, 2, 3]])
    )
    np.testing.assert_array_equal(got.rows.numpy(), [[1, 3, -1, -1], [-1, -1, -1, -1]])
    assert np.isneginf(got.scores.numpy()[0, 2:]).all() and np.isneginf(got.scores.numpy()[1]).all()


def test_exclusion_pairs_ignore_negative_padding():
    queries, rows = exclusion_pairs(tf.constant([[4, -1, 2], [-1, -1, -1], [0, 7, -1]]))
    assert queries.numpy().tolist() == [0, 0, 2, 2]
    assert rows.numpy().tolist() == [4, 2, 0, 7]
    queries, rows = exclusion_pairs(tf.ragged.constant([[3], [], [1, -5, 2]]))
    assert queries.numpy().tolist() == [0, 2, 2] and rows.numpy().tolist() == [3, 1, 2]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k": -1}, "k=-1"),
        ({"k": 2.5}, "k=2.5"),
        ({"k": 3, "block_size": 0}, "block_size=0"),
        ({"k": 3, "max_scores": 0}, "max_scores=0"),
        ({"k": 3, "parallel_iterations": 0}, "parallel_iterations=0"),
    ],
)
def test_bad_arguments_name_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        top_k(np.ones((1, 2), np.float32), np.ones((3, 2), np.float32), **kwargs)


def test_bad_shapes_and_negative_tensor_k():
    with pytest.raises(ValueError, match="queries"):
        top_k(np.ones(2, np.float32), np.ones((3, 2), np.float32), 1)
    with pytest.raises(tf.errors.InvalidArgumentError, match="k must be >= 0"):
        top_k(np.ones((1, 2), np.float32), np.ones((3, 2), np.float32), tf.constant(-2))


# ---------------------------------------------------------------- UserItems (CSR)


def test_user_items_from_pairs_keeps_first_order_and_drops_repeats():
    seen = UserItems.from_pairs([2, 0, 2, 0, 2], [7, 3, 1, 3, 7], num_users=4)
    assert seen.offsets.dtype == np.int64 and seen.rows.dtype == np.int32
    assert seen.offsets.tolist() == [0, 1, 1, 3, 3]
    assert seen.items_of(0).tolist() == [3]
    assert seen.items_of(2).tolist() == [7, 1]
    assert seen.items_of(3).tolist() == [] and seen.num_users == 4 and seen.nnz == 3
    kept = UserItems.from_pairs([1, 1], [5, 5], num_users=2, unique=False)
    assert kept.items_of(1).tolist() == [5, 5]


def test_user_items_from_ids_maps_to_vocabulary_rows():
    seen = UserItems.from_ids(
        ["bob", "ann", "bob"],
        ["z", "x", "y"],
        users=["ann", "bob", "cat"],
        catalogue=["x", "y", "z"],
    )
    assert [seen.items_of(u).tolist() for u in range(3)] == [[0], [2, 1], []]
    with pytest.raises(ValueError, match="not in `catalogue`"):
        UserItems.from_ids(["ann"], ["w"], users=["ann"], catalogue=["x"])
    with pytest.raises(ValueError, match="repeat"):
        UserItems.from_ids(["ann"], ["x"], users=["ann", "ann"], catalogue=["x"])


@pytest.mark.parametrize(
    ("offsets", "rows", "message"),
    [
        ([1, 2], [0, 1], "start at 0"),
        ([0, 3], [0, 1], "end at len"),
        ([0, 2, 1, 2], [0, 1], "never decrease"),
        ([0, 1], [-1], "rows"),
        ([[0, 1]], [0], "offsets"),
    ],
)
def test_user_items_rejects_invalid_csr(offsets, rows, message):
    with pytest.raises(ValueError, match=message):
        UserItems(np.array(offsets), np.array(rows))


def test_user_items_from_pairs_rejects_out_of_range_users():
    with pytest.raises(ValueError, match="num_users=2"):
        UserItems.from_pairs([0, 2], [1, 1], num_users=2)
    with pytest.raises(ValueError, match="one entry per pair"):
        UserItems.from_pairs([0], [1, 2], num_users=1)


def _first_occurrences(pairs):
    """Reference: each user's items in order of first appearance, repeats dropped."""
    bags = {}
    for user, item in pairs:
        bag = bags.setdefault(user, [])
        if item not in bag:
            bag.append(item)
    return bags


def test_user_items_from_histories_is_the_contract_histories_by_user_position():
    from recsys.data.contract import Catalogue, Histories, Interactions

    rng = np.random.default_rng(0)
    catalogue = Catalogue(np.array([f"i{j:02d}" for j in range(30)], dtype=object))
    users = [f"u{u}" for u in rng.integers(0, 12, 400)]
    items = [f"i{j:02d}" for j in rng.integers(0, 30, 400)]  # with repeated pairs
    histories = Histories.from_interactions(Interactions.from_ids(users, items), catalogue)
    expected = _first_occurrences(zip(users, catalogue.rows(items).tolist(), strict=True))

    seen = UserItems.from_histories(histories)
    assert seen.num_users == len(histories.keys)
    for u, user in enumerate(histories.keys):
        assert seen.items_of(u).tolist() == expected[user]
    # Without de-duplication, the histories' own arrays (the same CSR).
    same = UserItems.from_histories(histories, unique=False)
    np.testing.assert_array_equal(same.offsets, histories.offsets)
    np.testing.assert_array_equal(same.rows, histories.members)

    # Served catalogue in another order, without the data's items i00..i04.
    served = [f"i{j:02d}" for j in range(29, 4, -1)]
    item_rows = np.array([served.index(i) if i in served else -1 for i in catalogue.ids])
    remapped = UserItems.from_histories(histories, item_rows=item_rows)
    for u, user in enumerate(histories.keys):
        want = [
            served.index(catalogue.ids[r]) for r in expected[user] if catalogue.ids[r] in served
        ]
        assert remapped.items_of(u).tolist() == want
    with pytest.raises(ValueError, match="item_rows"):
        UserItems.from_histories(histories, item_rows=item_rows[:10])
