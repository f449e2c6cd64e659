"""AutoRecModel (I-AutoRec): predictions and loss against NumPy, row-sparse training,
its own item batches, config round trip, export, and the front door."""

from __future__ import annotations

import inspect
import json

import numpy as np
import pandas as pd
import pytest

import recsys  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
from recsys._tf import tf
from recsys.models import AutoRecModel
from recsys.optimizers import SparseAdam
from recsys.train import train
from tests.helpers.training import (
    SimulatedFault,
    compose_train,
    fault_after,
    process_state_restored,
    write_tiny_movielens,
)
from tests.test_models import FakeMovieLens


@pytest.fixture(scope="module")
def movielens():
    return FakeMovieLens()


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _reference(model, train, users, items):
    """NumPy I-AutoRec: code_i = sigmoid(sum_u r_ui V_u + b); rating = W_u . code_i + c_u."""
    V = model.encoder.embeddings.numpy()
    W = model.decoder.embeddings.numpy()
    c = model.user_bias.embeddings.numpy()[:, 0]
    b = model.encoder_bias.numpy()
    row = {u: k + 1 for k, u in enumerate(model.user_ids)}
    out = []
    for user, item in zip(users, items, strict=True):
        rated = train[train["item_id"] == item]
        if user not in set(train["user_id"]) or not len(rated):
            out.append(model.global_mean)
            continue
        pooled = sum(r * V[row[u]] for u, r in zip(rated["user_id"], rated["rating"], strict=True))
        out.append(float(_sigmoid(pooled + b) @ W[row[user]] + c[row[user]]))
    return np.clip(out, model.min_rating, model.max_rating)


def _trained(movielens, epochs=3, **kwargs):
    tf.keras.utils.set_random_seed(0)
    settings = {"hidden_units": 6, "l2": 5.0, "items_per_step": 8, **kwargs}
    model = AutoRecModel(movielens, **settings)
    model.compile(optimizer=SparseAdam(0.01))
    model.fit(model.training_batches(), epochs=epochs, verbose=0)
    return model


def test_predictions_match_numpy(movielens):
    model = _trained(movielens)
    users = [*list(movielens.test["user_id"][:20]), "nobody", "u1"]
    items = [*list(movielens.test["item_id"][:20]), "i1", "no-such-item"]
    got = model.predict_ratings(tf.constant(users), tf.constant(items)).numpy()
    expected = _reference(model, movielens.train, users, items)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    assert got[-2] == pytest.approx(model.global_mean) and got[-1] == pytest.approx(
        model.global_mean
    )


def test_training_loss_is_the_items_mean_squared_error_plus_the_rows_penalty(movielens):
    model = _trained(movielens, epochs=1, l2=7.0)
    train = movielens.train
    batch = ["i3", "i5", "i11"]
    loss = float(model.compute_loss({"item_id": tf.constant(batch)}, training=True))
    rows = train[train["item_id"].isin(batch)]
    predicted = [
        _unclipped(model, train, u, i)
        for u, i in zip(rows["user_id"], rows["item_id"], strict=True)
    ]
    mse = np.mean((rows["rating"].to_numpy() - np.array(predicted)) ** 2)
    touched = [k + 1 for k, u in enumerate(model.user_ids) if u in set(rows["user_id"])]
    squares = sum(
        (table.numpy()[touched] ** 2).sum()
        for table in (model.encoder.embeddings, model.decoder.embeddings)
    )
    penalty = 7.0 / (2 * len(train)) * squares
    assert loss == pytest.approx(mse + penalty, rel=1e-4)


def _unclipped(model, train, user, item):
    V = model.encoder.embeddings.numpy()
    W = model.decoder.embeddings.numpy()
    c = model.user_bias.embeddings.numpy()[:, 0]
    row = {u: k + 1 for k, u in enumerate(model.user_ids)}
    rated = train[train["item_id"] == item]
    pooled = sum(r * V[row[u]] for u, r in zip(rated["user_id"], rated["rating"], strict=True))
    return _sigmoid(pooled + model.encoder_bias.numpy()) @ W[row[user]] + c[row[user]]


def test_a_step_reads_and_updates_only_the_batch_raters_rows(movielens):
    model = _trained(movielens, epochs=1)
    batch = tf.constant(["i2", "i7"])
    with tf.GradientTape() as tape:
        loss = model.compute_loss({"item_id": batch}, training=True)
    tables = [model.encoder.embeddings, model.decoder.embeddings, model.user_bias.embeddings]
    grads = tape.gradient(loss, tables)
    assert all(isinstance(g, tf.IndexedSlices) for g in grads)
    train = movielens.train
    raters = set(train.loc[train["item_id"].isin(["i2", "i7"]), "user_id"])
    rows = {k + 1 for k, u in enumerate(model.user_ids) if u in raters}
    before = [t.numpy().copy() for t in tables]
    model.optimizer.apply_gradients(zip(grads, tables, strict=False))
    for old, table in zip(before, tables, strict=True):
        changed = set(np.flatnonzero(np.any(old != table.numpy(), axis=1)))
        assert changed == rows


def test_training_batches_list_every_rated_item_once_per_epoch_in_a_new_order(movielens):
    model = AutoRecModel(movielens, hidden_units=4, items_per_step=7, seed=3)
    rated = sorted(set(movielens.train["item_id"]))
    dataset = model.training_batches()
    epochs = [[i.decode() for b in dataset for i in b["item_id"].numpy()] for _ in range(2)]
    assert sorted(epochs[0]) == rated and sorted(epochs[1]) == rated
    assert epochs[0] != epochs[1]
    assert int(dataset.cardinality()) == -(-len(rated) // 7)
    again = AutoRecModel(movielens, hidden_units=4, items_per_step=7, seed=3).training_batches()
    assert [i.decode() for b in again for i in b["item_id"].numpy()] == epochs[0]


def test_config_round_trip_export_and_validation(movielens, tmp_path):
    model = _trained(movielens, epochs=1)
    config = model.get_config()
    assert AutoRecModel(movielens, **config).get_config() == config
    parameters = set(inspect.signature(AutoRecModel).parameters) - {"data", "name"}
    assert set(config) == parameters
    users, items = (
        movielens.test["user_id"].to_numpy()[:9],
        movielens.test["item_id"].to_numpy()[:9],
    )
    folder = model.export(str(tmp_path))
    serving = tf.saved_model.load(str(folder)).signatures["serving_default"]
    out = serving(user_id=tf.constant(users), item_id=tf.constant(items))["rating"].numpy()
    np.testing.assert_allclose(out, model.predict_ratings(users, items).numpy(), rtol=1e-5)
    with pytest.raises(ValueError, match="activation='softmax'"):
        AutoRecModel(movielens, activation="softmax")
    with pytest.raises(ValueError, match="l2=-1"):
        AutoRecModel(movielens, l2=-1)
    with pytest.raises(ValueError, match="items_per_step=0"):
        AutoRecModel(movielens, items_per_step=0)


def test_front_door_run_killed_mid_epoch_resumes_to_the_uninterrupted_weights(tmp_path):
    """`+experiment=movielens_autorec` trains on its own item batches; a run that fails
    mid-epoch and is rerun ends with the weights of a run that never failed (the
    items' order of each epoch is replayed from the seed)."""
    data = write_tiny_movielens(tmp_path / "ml-100k", num_items=60)
    common = [
        "+experiment=movielens_autorec",
        f"data.path={data}",
        f"data.data_dir={tmp_path / 'cache'}",
        "model.hidden_units=8",
        "model.items_per_step=16",  # 4 steps an epoch
        "trainer.epochs=3",
        "trainer.tensorboard=false",
        "trainer.export=false",
        "optimizer.learning_rate=0.01",
    ]
    # A run sets the hardware plan's environment and pinning: undone for later tests.
    with process_state_restored():
        _, reference = train(compose_train(common, run_dir=tmp_path / "reference"))
        run_dir = tmp_path / "interrupted"
        with pytest.raises(SimulatedFault):
            train(compose_train([*common, fault_after(4 + 2)], run_dir=run_dir))
        _, resumed = train(compose_train(common, run_dir=run_dir))
    assert int(resumed["optimizer"].iterations.numpy()) == 3 * 4
    for got, want in zip(resumed["model"].weights, reference["model"].weights, strict=True):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6, atol=1e-7)
    written = json.loads((run_dir / "metrics.json").read_text())
    assert written["resumed_from_epoch"] == 1


def test_tables_start_apart_and_an_unrated_catalogue_item_gets_the_mean(movielens):
    model = AutoRecModel(movielens, hidden_units=6)
    model(next(iter(model.training_batches())))  # builds the tables, untrained
    encoder, decoder = model.encoder.embeddings.numpy(), model.decoder.embeddings.numpy()
    assert not np.allclose(encoder, decoder)  # two tables, not one initializer's copy

    class WithAnUnratedItem(FakeMovieLens):
        def __init__(self):
            super().__init__()
            extra = self.items.iloc[:1].assign(item_id="i-never-rated")
            self.items = pd.concat([self.items, extra], ignore_index=True)

    data = WithAnUnratedItem()
    model = _trained(data, epochs=1)
    assert "i-never-rated" in list(model.item_ids)
    assert "i-never-rated" not in [
        i.decode() for b in model.training_batches() for i in b["item_id"].numpy()
    ]
    user = data.train["user_id"].iloc[0]
    got = model.predict_ratings(tf.constant([user]), tf.constant(["i-never-rated"])).numpy()
    assert got[0] == pytest.approx(model.global_mean)


_MIRRORED_SCRIPT = r"""
import json
import sys

import numpy as np
import pandas as pd

import recsys
from recsys._tf import keras, tf
from recsys.models import AutoRecModel
from recsys.optimizers import SparseAdam
from tests.test_models import FakeMovieLens

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
complete, l2, items = sys.argv[1] == "complete", float(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(0)
users = 6
# complete: every user rates every item, so both replicas read every user row.
# uneven: item i has 1 + i % 6 raters, so the replicas' items differ in ratings.
pairs = [
    (u, i) for i in range(items) for u in range(users) if complete or u < 1 + i % users
]
data = FakeMovieLens()
data.train = pd.DataFrame({
    "user_id": [f"u{u}" for u, _ in pairs],
    "item_id": [f"i{i}" for _, i in pairs],
    "rating": rng.integers(1, 6, size=len(pairs)).astype("float32"),
    "timestamp": np.arange(len(pairs), dtype="int64"),
})


def fit(strategy):
    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = AutoRecModel(data, hidden_units=4, l2=l2, bias_l2=l2, items_per_step=8)
        model.compile(optimizer=SparseAdam(0.05))
    model.fit(model.training_batches(), epochs=3, verbose=0)
    tables = [model.encoder.embeddings, model.decoder.embeddings, model.user_bias.embeddings]
    replicas = [len(getattr(t, "values", [t])) for t in tables]
    return [t.numpy() for t in tables + [model.encoder_bias]], replicas


keras.utils.set_random_seed(0)
start = AutoRecModel(data, hidden_units=4, items_per_step=8)
start({"user_id": tf.constant(["u0"]), "item_id": tf.constant(["i0"])})
first = start.encoder.embeddings.numpy()
mirrored, replicas = fit(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
single, _ = fit(tf.distribute.OneDeviceStrategy("/cpu:0"))
print(json.dumps({
    "replicas": replicas,
    "moved": float(np.abs(single[0] - first).max()),
    "max_diff": max(float(np.abs(a - b).max()) for a, b in zip(mirrored, single)),
}))
"""


@pytest.mark.parametrize(
    "ratings, l2, items",
    [
        # Items with different numbers of ratings: each replica's squared errors are
        # divided by the whole step's number of ratings (fails with a per-replica mean).
        ("uneven", 0.0, 16),
        # 17 items, 8 a step: the last step's one item leaves a replica none (oneDNN's
        # fused product aborted the process on the empty operand).
        ("uneven", 0.0, 17),
        # Every replica reads every user row: the penalty is counted once (fails
        # without dividing it by the number of replicas).
        ("complete", 50.0, 16),
    ],
)
def test_two_mirrored_replicas_train_as_one_process(ratings, l2, items):
    # Logical devices must be set before TensorFlow starts, hence a fresh process.
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(
        [sys.executable, "-c", _MIRRORED_SCRIPT, ratings, str(l2), str(items)],
        capture_output=True,
        text=True,
        env=env,
        cwd=root,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["replicas"] == [2, 2, 2]
    assert result["moved"] > 1e-2
    assert result["max_diff"] < 1e-5, result
