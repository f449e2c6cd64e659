"""Towers and FeatureEmbedding: shapes, pooling against NumPy, configs, sparse gradients."""

from __future__ import annotations

import numpy as np
import pytest

import recsys  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
from recsys._tf import keras, tf
from recsys.optimizers import SparseAdam
from recsys.towers import FeatureEmbedding, ItemTower, Tower, UserTower

ITEMS = ["i1", "i2", "i3", "i4"]


def _table(layer: FeatureEmbedding) -> np.ndarray:
    return layer.embedding.embeddings.numpy()


@pytest.mark.parametrize("pooling", ["mean", "sum", "sqrtn"])
def test_multi_hot_pooling_matches_numpy(pooling):
    layer = FeatureEmbedding("multi_hot", embedding_dim=3, vocabulary=ITEMS, pooling=pooling)
    bags = [["i1", "i3", "i1"], [], ["zzz", "i4"]]
    out = layer(tf.ragged.constant(bags)).numpy()
    table = _table(layer)
    row = {v: i + 1 for i, v in enumerate(ITEMS)}  # row 0: out of vocabulary
    for got, bag in zip(out, bags, strict=True):
        rows = table[[row.get(v, 0) for v in bag]].reshape(-1, 3)
        total = rows.sum(axis=0)
        if pooling == "mean" and bag:
            total = total / len(bag)
        if pooling == "sqrtn" and bag:
            total = total / np.sqrt(len(bag))
        np.testing.assert_allclose(got, total, rtol=1e-6, atol=1e-7)
    # Dense input padded with "" means the same bags.
    dense = tf.constant([["i1", "i3", "i1"], ["", "", ""], ["zzz", "i4", ""]])
    np.testing.assert_allclose(layer(dense).numpy(), out, rtol=1e-6)


def test_id_hashing_bucketized_text_and_num_rows():
    ids = FeatureEmbedding("id", embedding_dim=4, vocabulary=["a", "b"])
    out = ids(tf.constant(["b", "a", "unknown"])).numpy()
    np.testing.assert_array_equal(out, _table(ids)[[2, 1, 0]])
    hashed = FeatureEmbedding("id", embedding_dim=4, num_bins=7)
    assert hashed(tf.constant(["x", "y"])).shape == (2, 4)
    assert hashed(tf.constant([3, 5], tf.int64)).shape == (2, 4)  # numbers hashed as strings
    years = FeatureEmbedding("bucketized", embedding_dim=2, boundaries=[1990, 2000])
    out = years(tf.constant([1985.0, 1995.0, 2005.0, 2000.0])).numpy()
    np.testing.assert_array_equal(out, _table(years)[[0, 1, 2, 2]])
    text = FeatureEmbedding("text", embedding_dim=2, vocabulary=["toy", "story"], pooling="sum")
    out = text(tf.constant(["Toy Story!", "TOY"])).numpy()
    table = _table(text)
    np.testing.assert_allclose(out, [table[1] + table[2], table[1]], rtol=1e-6)
    rows = FeatureEmbedding("multi_hot", embedding_dim=2, num_rows=5, pooling="sum")
    out = rows(tf.ragged.constant([[1, 4], [2]], dtype=tf.int64)).numpy()
    np.testing.assert_allclose(out, [_table(rows)[1] + _table(rows)[4], _table(rows)[2]])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"kind": "onehot", "num_bins": 3}, "kind='onehot'"),
        ({"kind": "id"}, "exactly one of"),
        ({"kind": "id", "num_bins": 3, "vocabulary": ["a"]}, "exactly one of"),
        ({"kind": "id", "num_bins": 0}, "num_bins=0"),
        ({"kind": "multi_hot", "num_bins": 3, "pooling": "max"}, "pooling='max'"),
        ({"kind": "bucketized"}, "boundaries"),
        ({"kind": "bucketized", "boundaries": [3, 1]}, "sorted"),
        ({"kind": "id", "vocabulary": ["a", "a"]}, "duplicate"),
        ({"kind": "id", "num_bins": 3, "embedding_dim": -1}, "embedding_dim=-1"),
    ],
)
def test_feature_embedding_validates_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FeatureEmbedding(**kwargs)


def test_tower_validates_arguments():
    with pytest.raises(ValueError, match="non-empty dict"):
        Tower({})
    with pytest.raises(ValueError, match="combiner='max'"):
        Tower({"a": {"kind": "id", "num_bins": 3}}, combiner="max")
    with pytest.raises(ValueError, match="equal embedding_dim"):
        Tower(
            {
                "a": {"kind": "id", "num_bins": 3, "embedding_dim": 2},
                "b": {"kind": "id", "num_bins": 3, "embedding_dim": 4},
            },
            combiner="sum",
        )
    with pytest.raises(ValueError, match=r"dropout=1\.5"):
        Tower({"a": {"kind": "id", "num_bins": 3}}, dropout=1.5)
    tower = Tower({"a": {"kind": "id", "num_bins": 3}})
    with pytest.raises(ValueError, match=r"needs features \['a'\]"):
        tower({"b": tf.constant(["x"])})
    with pytest.raises(ValueError, match="UserTower needs"):
        UserTower()
    with pytest.raises(ValueError, match="ItemTower needs"):
        ItemTower()


def _item_tower() -> ItemTower:
    return ItemTower(
        item_vocabulary=ITEMS,
        genre_vocabulary=["Action", "Drama"],
        year_boundaries=[1990.0, 2000.0],
        title_num_bins=50,
        embedding_dim=4,
        hidden_units=[8],
        output_dim=3,
        l2_normalize=True,
    )


def _item_inputs():
    return {
        "item_id": tf.constant(["i2", "i9"]),
        "genres": tf.ragged.constant([["Drama", "Action"], []]),
        "year": tf.constant([1995.0, 1970.0]),
        "title": tf.constant(["Heat", "Toy Story"]),
    }


def test_towers_shapes_and_l2_normalization():
    out = _item_tower()(_item_inputs()).numpy()
    assert out.shape == (2, 3)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    user = UserTower(user_vocabulary=["u1"], item_vocabulary=ITEMS, embedding_dim=4)
    out = user({"user_id": tf.constant(["u1", "u2"]), "history": tf.constant([["i1"], [""]])})
    assert out.shape == (2, 8)  # concatenated id and history embeddings
    summed = UserTower(user_vocabulary=["u1"], history_num_rows=5, embedding_dim=4, combiner="sum")
    inputs = {"user_id": tf.constant(["u1"]), "history": tf.ragged.constant([[1, 2]], tf.int64)}
    parts = summed.embed(inputs)
    np.testing.assert_allclose(summed(inputs).numpy(), (parts[0] + parts[1]).numpy(), rtol=1e-6)


@pytest.mark.parametrize(
    "make",
    [
        _item_tower,
        lambda: UserTower(user_vocabulary=["u1", "u2"], item_vocabulary=ITEMS, embedding_dim=4),
        lambda: UserTower(user_num_bins=10, history_num_rows=5, combiner="sum", output_dim=2),
    ],
)
def test_tower_get_config_round_trips(make):
    tower = make()
    config = tower.get_config()
    clone = type(tower).from_config(config)
    assert clone.get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(tower))
    assert type(restored) is type(tower)
    assert restored.get_config() == config


def test_feature_embedding_get_config_round_trips():
    layer = FeatureEmbedding(
        "text", embedding_dim=5, num_bins=11, pooling="sqrtn", embeddings_l2=0.1
    )
    config = layer.get_config()
    assert FeatureEmbedding.from_config(config).get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert restored.get_config() == config


def test_tower_predictions_survive_savedmodel_round_trip(tmp_path):
    tower = _item_tower()
    inputs = _item_inputs()
    expected = tower(inputs).numpy()

    class Serving(tf.Module):
        def __init__(self, tower):
            super().__init__()
            self.tower = tower

        @tf.function(
            input_signature=[
                tf.TensorSpec([None], tf.string),
                tf.RaggedTensorSpec([None, None], tf.string),
                tf.TensorSpec([None], tf.float32),
                tf.TensorSpec([None], tf.string),
            ]
        )
        def __call__(self, item_id, genres, year, title):
            return self.tower({"item_id": item_id, "genres": genres, "year": year, "title": title})

    tf.saved_model.save(Serving(tower), str(tmp_path))
    loaded = tf.saved_model.load(str(tmp_path))
    got = loaded(inputs["item_id"], inputs["genres"], inputs["year"], inputs["title"]).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_history_gradient_is_row_sparse_and_sparse_adam_touches_only_those_rows():
    tower = UserTower(user_vocabulary=["u1", "u2"], item_vocabulary=ITEMS, embedding_dim=4)
    inputs = {
        "user_id": tf.constant(["u1", "u1"]),
        "history": tf.ragged.constant([["i1", "i2", "i1"], ["i2"]]),
    }
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tower(inputs) ** 2)
    variables = tower.trainable_variables
    grads = tape.gradient(loss, variables)
    assert all(isinstance(g, tf.IndexedSlices) for g in grads)
    history_index = next(i for i, v in enumerate(variables) if "history" in v.name)
    # Each distinct row appears once in the slices.
    assert sorted(grads[history_index].indices.numpy().tolist()) == [1, 2]
    before = [v.numpy().copy() for v in variables]
    SparseAdam(0.1).apply_gradients(zip(grads, variables, strict=True))
    history_before, history_after = before[history_index], variables[history_index].numpy()
    np.testing.assert_array_equal(history_before[[0, 3, 4]], history_after[[0, 3, 4]])
    assert not np.allclose(history_before[[1, 2]], history_after[[1, 2]])


def test_bag_penalty_counts_every_occurrence():
    layer = FeatureEmbedding("multi_hot", embedding_dim=2, num_rows=4, embeddings_l2=0.5)
    layer(tf.ragged.constant([[1, 1, 2], [3]], dtype=tf.int64))
    table = layer.embedding.embeddings.numpy()
    rows = table[[1, 1, 2, 3]]
    expected = 0.5 * np.sum(rows**2) / 2  # divided by the batch size
    assert len(layer.losses) == 1
    assert float(layer.losses[0]) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("pooling", ["mean", "sum", "sqrtn"])
@pytest.mark.parametrize("weighted", [False, True])
def test_shared_bags_with_a_left_out_element_match_numpy(pooling, weighted):
    # Three bags shared by five examples; some examples leave one element out.
    layer = FeatureEmbedding(
        "multi_hot", embedding_dim=3, num_rows=8, pooling=pooling, embeddings_l2=0.5
    )
    bags = [[1, 4, 2], [5], [3, 6, 7, 1]]
    weights = [[0.5, -1.0, 2.0], [3.0], [1.0, 0.25, -0.5, 1.5]]
    bag_index = [2, 0, 2, 1, 0]
    leave_out = [6, -1, 1, 5, 4]
    inputs = {
        "ids": tf.ragged.constant(bags, dtype=tf.int64),
        "bag_index": tf.constant(bag_index),
        "leave_out": tf.constant(leave_out, tf.int64),
    }
    if weighted:
        inputs["weights"] = tf.ragged.constant(weights)
        inputs["leave_out_weight"] = tf.constant(
            [
                dict(zip(bags[b], weights[b], strict=True)).get(r, 0.0)
                for b, r in zip(bag_index, leave_out, strict=True)
            ]
        )
    out = layer(inputs).numpy()
    table = layer.embedding.embeddings.numpy()
    expected, penalty = [], 0.0
    for b, r in zip(bag_index, leave_out, strict=True):
        kept = [(i, w) for i, w in zip(bags[b], weights[b], strict=True) if i != r]
        total = sum((w if weighted else 1.0) * table[i] for i, w in kept)
        n = len(kept)
        scale = {"sum": 1.0, "mean": 1.0 / max(n, 1), "sqrtn": 1.0 / np.sqrt(max(n, 1))}
        expected.append(total * scale[pooling] if n else np.zeros(3))  # empty: zeros
        penalty += sum(float(np.sum(table[i] ** 2)) for i, _ in kept)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    # The L2 penalty counts every element of every example's own bag, over the batch.
    np.testing.assert_allclose(float(sum(layer.losses)), 0.5 * penalty / 5, rtol=1e-5)


def test_shared_bag_gradient_stays_row_sparse():
    layer = FeatureEmbedding("multi_hot", embedding_dim=4, num_rows=1000, pooling="sqrtn")
    inputs = {
        "ids": tf.ragged.constant([[3, 9], [9, 500]], dtype=tf.int64),
        "bag_index": tf.constant([0, 1, 1]),
        "leave_out": tf.constant([3, -1, 500], tf.int64),
    }
    layer(inputs)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(inputs))
    (grad,) = tape.gradient(loss, layer.trainable_variables)
    assert isinstance(grad, tf.IndexedSlices)
    assert set(grad.indices.numpy().tolist()) <= {3, 9, 500}


def test_ragged_row_ids_equal_value_rowids_with_empty_rows():
    from recsys._tf import ragged_row_ids

    rng = np.random.default_rng(0)
    for _ in range(20):
        lengths = rng.integers(0, 4, rng.integers(1, 12))  # empty rows anywhere
        ragged = tf.RaggedTensor.from_row_lengths(
            tf.range(int(lengths.sum()), dtype=tf.int64), tf.constant(lengths, tf.int64)
        )
        np.testing.assert_array_equal(ragged_row_ids(ragged), ragged.value_rowids())
