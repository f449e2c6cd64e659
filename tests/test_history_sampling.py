"""Per-step history sampling (`recsys.models.sampling`, `history_sample_size`)."""

from __future__ import annotations

import numpy as np
import pytest

import recsys  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
from recsys._tf import tf
from recsys.models import RetrievalModel
from recsys.models.sampling import BagSampler, unit_hash
from recsys.optimizers import SparseAdam
from tests.test_models import FakeMovieLens


@pytest.fixture(scope="module")
def movielens():
    return FakeMovieLens(num_users=20, num_items=60, n=900, seed=3)


def test_unit_hash_is_deterministic_uniform_and_keyed_by_every_argument():
    owners = tf.constant(np.repeat(np.arange(200), 50), tf.int64)
    members = tf.constant(np.tile(np.arange(50), 200), tf.int64)
    u = unit_hash(owners, members, 7).numpy()
    assert u.min() >= 0.0 and u.max() < 1.0
    np.testing.assert_array_equal(u, unit_hash(owners, members, 7).numpy())
    # Close to uniform: every tenth of [0, 1) holds about a tenth of 10,000 draws.
    counts = np.bincount((u * 10).astype(int), minlength=10)
    assert counts.min() > 850 and counts.max() < 1150, counts
    # A different step, owner or member gives a different value.
    assert np.mean(u == unit_hash(owners, members, 8).numpy()) < 0.01
    assert np.mean(u == unit_hash(owners + 1, members, 7).numpy()) < 0.01
    assert np.mean(u == unit_hash(owners, members + 1, 7).numpy()) < 0.01
    # Large ids (beyond 31 bits) are accepted.
    big = unit_hash(tf.constant([2**40]), tf.constant([2**35]), tf.constant(2**33, tf.int64))
    assert 0.0 <= float(big[0]) < 1.0


def test_bag_sampler_keeps_short_bags_whole_and_about_size_of_long_ones():
    rng = np.random.default_rng(0)
    lengths = [3, 8, 200, 1000, 0]
    bags = tf.RaggedTensor.from_row_lengths(
        tf.constant(rng.permutation(10_000)[: sum(lengths)], tf.int64), lengths
    )
    owners = tf.constant([5, 6, 7, 8, 9], tf.int64)
    sampler = BagSampler(size=8)
    kept = []
    for step in range(100):
        sampled = sampler.sample(bags, owners, step)
        # Members are kept in their order, and only members of their own bag.
        for whole, part in zip(bags.to_list(), sampled.to_list(), strict=True):
            assert part == [m for m in whole if m in set(part)]
        kept.append(sampled.row_lengths().numpy())
    kept = np.array(kept)
    np.testing.assert_array_equal(kept[:, :2], [[3, 8]] * 100)  # short bags whole
    assert (kept[:, 4] == 0).all()
    np.testing.assert_allclose(kept[:, 2:4].mean(0), [8, 8], rtol=0.1)
    # Each step draws another sample.
    first, second = (sampler.sample(bags, owners, s).to_list()[3] for s in (0, 1))
    assert first != second
    with pytest.raises(ValueError, match="size=0"):
        BagSampler(size=0)


def test_bag_sampler_keeps_agrees_with_the_sample():
    rng = np.random.default_rng(1)
    lengths = [50, 20, 5]
    members = rng.permutation(1000)[: sum(lengths)]
    bags = tf.RaggedTensor.from_row_lengths(tf.constant(members, tf.int64), lengths)
    owners = np.array([11, 12, 13])
    sampler = BagSampler(size=6)
    for step in (0, 3, 99):
        sampled = [set(row) for row in sampler.sample(bags, tf.constant(owners), step).to_list()]
        bag_of = np.repeat(np.arange(3), lengths)
        keeps = sampler.keeps(
            tf.constant(owners[bag_of]),
            tf.constant(members),
            tf.constant(np.repeat(lengths, lengths)),
            step,
        ).numpy()
        expected = [m in sampled[b] for m, b in zip(members, bag_of, strict=True)]
        np.testing.assert_array_equal(keeps, expected)


def test_retrieval_leaves_the_target_out_only_when_it_is_in_the_sample(movielens):
    model = RetrievalModel(
        movielens, embedding_dim=4, item_features=(), history_sample_size=4, temperature=1.0
    )
    train = movielens.train
    users = tf.constant(train["user_id"].to_numpy()[:300])
    items = tf.constant(train["item_id"].to_numpy()[:300])
    # Whole histories (no step: what evaluation pools), once per user.
    distinct = sorted(set(users.numpy()))
    bags_whole = model.user_features(tf.constant(distinct))["history"]["ids"].to_list()
    whole_of = {user: set(bag) for user, bag in zip(distinct, bags_whole, strict=True)}
    for step in (0, 1, 17):
        features = model.user_features(users, items, step=tf.constant(step, tf.int64))
        history = features["history"]
        bags = history["ids"].to_list()
        bag_index = history["bag_index"].numpy()
        leave_out = history["leave_out"].numpy()
        rows = model._item_lookup(items).numpy()
        sampled_left, sampled_kept, shorter = 0, 0, 0
        for example, (bag, row, left) in enumerate(zip(bag_index, rows, leave_out, strict=True)):
            whole = whole_of[users.numpy()[example]]
            assert set(bags[bag]) <= whole
            shorter += len(bags[bag]) < len(whole)
            if row in bags[bag]:
                assert left == row  # in the sample: left out
                sampled_left += 1
            else:
                assert left == -1  # not sampled (or not in the history): nothing to leave out
                sampled_kept += row in whole
        assert sampled_left > 0 and sampled_kept > 0 and shorter > 0
    # Without a step (evaluation, serving) histories are whole.
    user = train["user_id"].iloc[0]
    whole = set(model.user_features(tf.constant([user]))["history"]["ids"].to_list()[0])
    assert len(whole) == train[train["user_id"] == user]["item_id"].nunique()


def test_retrieval_history_sampling_follows_the_optimizer_step_and_trains(movielens):
    tf.keras.utils.set_random_seed(0)
    model = RetrievalModel(movielens, embedding_dim=8, item_features=(), history_sample_size=4)
    model.compile(optimizer=SparseAdam(0.01))
    batch = next(iter(movielens.train_dataset()))
    # The same step gives the same loss; the next step another sample, another loss.
    first = float(model.compute_loss(batch, training=True))
    assert float(model.compute_loss(batch, training=True)) == first
    model.optimizer.iterations.assign_add(1)
    assert float(model.compute_loss(batch, training=True)) != first
    # Evaluation pools whole histories: no step, no sampling.
    assert float(model.compute_loss(batch)) == float(model.compute_loss(batch))
    history = model.fit(movielens.train_dataset(), epochs=4, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert model.get_config()["history_sample_size"] == 4
    restored = RetrievalModel(movielens, **model.get_config())
    assert restored.get_config() == model.get_config()
    with pytest.raises(ValueError, match="size=0"):
        RetrievalModel(movielens, history_sample_size=0)
