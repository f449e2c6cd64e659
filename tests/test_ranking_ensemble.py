"""RankingModel(ensemble_size=K): K factorizations side by side, each trained as if alone.

Member k's slice of every table must follow exactly the trajectory of a single model
started from that slice on the same batches (the loss, the L2 penalties and SparseAdam's
element-wise updates must not mix members); the prediction is the members' mean.
"""

from __future__ import annotations

import numpy as np
import pytest

import recsys  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
from recsys._tf import tf
from recsys.models import RankingModel
from recsys.optimizers import SparseAdam
from tests.test_models import FakeMovieLens


@pytest.fixture(scope="module")
def movielens():
    return FakeMovieLens()


SETTINGS = {
    "embedding_dim": 3,
    "use_history": True,
    "use_rated_history": True,
    "use_item_rated_history": True,
    "factors_l2": 0.05,
    "bias_l2": 0.01,
}


def _features(data, n=64):
    frame = data.train.iloc[:n]
    return {
        "user_id": tf.constant(frame["user_id"].to_numpy()),
        "item_id": tf.constant(frame["item_id"].to_numpy()),
    }


def _copy_member(ensemble: RankingModel, single: RankingModel, member: int) -> None:
    """Give `single` member `member`'s slice of every variable of `ensemble`."""
    pairs = list(zip(ensemble.weights, single.weights, strict=True))
    assert pairs, "the models hold no weights"
    for wide, narrow in pairs:
        width = narrow.shape[-1]
        assert wide.shape[-1] == ensemble.ensemble_size * width, (wide.name, narrow.name)
        narrow.assign(wide[..., member * width : (member + 1) * width])


def test_each_member_trains_exactly_as_a_single_model(movielens):
    tf.keras.utils.set_random_seed(0)
    ensemble = RankingModel(movielens, ensemble_size=3, **SETTINGS)
    single = RankingModel(movielens, **SETTINGS)
    features = _features(movielens)
    ensemble(features), single(features)  # build
    _copy_member(ensemble, single, member=1)
    before = ensemble.member_predictions(features).numpy()
    np.testing.assert_allclose(single(features).numpy(), before[:, 1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ensemble(features).numpy(), before.mean(-1), rtol=1e-5)
    assert np.ptp(before, axis=1).max() > 1e-3  # members start apart

    ensemble.compile(optimizer=SparseAdam(0.02))
    single.compile(optimizer=SparseAdam(0.02))
    batches = movielens.train_dataset().take(6).cache()
    list(batches)  # fixes the shuffled order: both models see the same batches
    ensemble.fit(batches, epochs=2, verbose=0)
    single.fit(batches, epochs=2, verbose=0)
    after = ensemble.member_predictions(features).numpy()
    assert np.abs(after - before).max() > 1e-3  # it trained
    np.testing.assert_allclose(single(features).numpy(), after[:, 1], rtol=1e-4, atol=1e-5)
    for wide, narrow in zip(ensemble.weights, single.weights, strict=True):
        width = narrow.shape[-1]
        np.testing.assert_allclose(
            wide.numpy()[..., width : 2 * width], narrow.numpy(), rtol=1e-4, atol=1e-6
        )


def test_ensemble_trains_evaluates_exports_and_round_trips_its_config(movielens, tmp_path):
    tf.keras.utils.set_random_seed(0)
    model = RankingModel(movielens, embedding_dim=4, ensemble_size=2)
    assert model.get_config()["ensemble_size"] == 2
    assert RankingModel(movielens, **model.get_config()).get_config() == model.get_config()
    model.compile(optimizer=SparseAdam(0.01))
    history = model.fit(movielens.train_dataset(), epochs=3, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    # The reported rmse is the ensemble's (the members' mean), not the members'.
    batch = next(iter(movielens.train_dataset()))
    logs = model.evaluate(tf.data.Dataset.from_tensors(batch), return_dict=True, verbose=0)
    mean = model({"user_id": batch["user_id"], "item_id": batch["item_id"]}).numpy()
    rating = batch["rating"].numpy()
    assert logs["rmse"] == pytest.approx(np.sqrt(np.mean((rating - mean) ** 2)), rel=1e-5)
    members = model.member_predictions(batch).numpy()
    member_mse = np.mean((rating[:, None] - members) ** 2)
    assert logs["loss"] == pytest.approx(2 * member_mse, rel=1e-4)  # sum over 2 members
    users, items = movielens.test["user_id"].to_numpy(), movielens.test["item_id"].to_numpy()
    members = model.member_predictions(
        {"user_id": tf.constant(users), "item_id": tf.constant(items)}
    ).numpy()
    expected = np.clip(members.mean(-1), model.min_rating, model.max_rating)
    truth = movielens.test["rating"].to_numpy()
    metrics = model.evaluate_metrics(movielens)
    assert metrics["test/rmse"] == pytest.approx(
        np.sqrt(np.mean((truth - expected) ** 2)), rel=1e-5
    )
    serving = tf.saved_model.load(str(model.export(str(tmp_path)))).signatures["serving_default"]
    out = serving(user_id=tf.constant(users[:5]), item_id=tf.constant(items[:5]))["rating"]
    np.testing.assert_allclose(out.numpy(), expected[:5], rtol=1e-5)


def test_ensemble_arguments_are_checked(movielens):
    with pytest.raises(ValueError, match="ensemble_size=0"):
        RankingModel(movielens, ensemble_size=0)
    with pytest.raises(ValueError, match=r"ensemble_size=2 and hidden_units=\[8\]"):
        RankingModel(movielens, ensemble_size=2, hidden_units=[8])
