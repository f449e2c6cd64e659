"""Training batches streamed from the files: known length, each epoch a permutation of the
training rows, deterministic for a seed, an epoch can start at batch N and gives the same
remaining batches, Keras-style iterator replay lands on the same epochs; evaluation
batches; hashed and OOV id spaces as the towers will compute them (TensorFlow)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from recsys._tf import keras, tf
from recsys.data.interactions import InteractionsDataModule
from recsys.data.interactions.epochs import MAX_FIXED_WIDTH, fixed_width
from recsys.data.interactions.vocabularies import collisions, hash_salts
from tests.data.test_data_interactions import log_frame, write_log

BATCH = 37  # does not divide the windows: batches span two windows


@pytest.fixture(scope="module")
def log_path(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pipeline")
    return write_log(log_frame(rows=1500, users=120, items=90, seed=4), folder / "log", files=3)


def _module(path, cache, **overrides) -> InteractionsDataModule:
    settings = {
        "user_column": "uid",
        "item_column": "iid",
        "rating_column": "stars",
        "timestamp_column": "ts",
        "val_fraction": 0.1,
        "block_rows": 64,
        "shuffle_window_rows": 200,
        "batch_size": BATCH,
        "data_dir": cache,
        **overrides,
    }
    return InteractionsDataModule(path, **settings).setup()


def _epoch(dataset) -> list[dict[str, np.ndarray]]:
    return [{k: v.numpy() for k, v in batch.items()} for batch in dataset]


def _rows(batches) -> list[tuple]:
    return sorted(
        (u, i, r, t)
        for b in batches
        for u, i, r, t in zip(b["user_id"], b["item_id"], b["rating"], b["timestamp"], strict=True)
    )


def _same(a, b) -> bool:
    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)
        for x, y in zip(a, b, strict=True)
    )


def test_an_epoch_is_a_permutation_of_the_training_rows(log_path, tmp_path):
    dm = _module(log_path, tmp_path)
    dataset = dm.train_dataset()
    n = dm.split_rows("train")
    assert int(dataset.cardinality()) == -(-n // BATCH)
    epoch = _epoch(dataset)
    assert len(epoch) == -(-n // BATCH)
    assert [len(b["user_id"]) for b in epoch] == [BATCH] * (len(epoch) - 1) + [
        n - BATCH * (len(epoch) - 1)
    ]
    train = dm.interactions("train")
    expected = sorted(
        zip(
            (u.encode() for u in train.user_ids()),
            (i.encode() for i in train.item_ids()),
            train.ratings,
            train.timestamps,
            strict=True,
        )
    )
    assert _rows(epoch) == expected
    # Shuffled: not the log order.
    assert [b"".join(b["user_id"]) for b in epoch] != sorted(b"".join(b["user_id"]) for b in epoch)
    assert epoch[0]["user_id"].dtype == object and epoch[0]["rating"].dtype == np.float32


def test_epochs_differ_and_repeat_for_a_seed(log_path, tmp_path):
    first = _module(log_path, tmp_path).train_dataset()
    one, two = _epoch(first), _epoch(first)
    assert not _same(one, two) and _rows(one) == _rows(two)
    again = _module(log_path, tmp_path).train_dataset()
    assert _same(_epoch(again), one) and _same(_epoch(again), two)
    other = _module(log_path, tmp_path, seed=5).train_dataset()
    assert not _same(_epoch(other), one)


@pytest.mark.parametrize("start", [1, 5, 6, 17, 29])
def test_an_epoch_started_at_batch_n_gives_the_remaining_batches(log_path, tmp_path, start):
    dm = _module(log_path, tmp_path)
    full = _epoch(dm.train_dataset(iteration=2))
    resumed = dm.train_dataset(iteration=2, start_batch=start)
    assert int(resumed.cardinality()) == len(full) - start
    assert _same(_epoch(resumed), full[start:])


def test_iterator_replay_lands_on_the_uninterrupted_epochs(log_path, tmp_path):
    dm = _module(log_path, tmp_path)
    dataset = dm.train_dataset()
    epochs = [_epoch(dataset) for _ in range(3)]
    # What recsys.training.Trainer does on resume: make (not consume) the iterators
    # of the epochs already done, then train on.
    replay = dm.train_dataset()
    for _ in range(2):
        iter(replay)
    assert _same(_epoch(replay), epochs[2])
    assert _same(_epoch(dm.train_dataset(iteration=1)), epochs[1])


def test_repeat_draws_one_epoch_per_repetition_as_the_trainer_expects(log_path, tmp_path):
    # recsys.training.Trainer fits on train.repeat() after drawing (completed + 1)
    # iterators, and skips the steps done on a mid-epoch resume.
    dm = _module(log_path, tmp_path)
    dataset = dm.train_dataset()
    n = int(dataset.cardinality())
    iter(dataset)
    repeated = _epoch(dataset.repeat().take(2 * n))
    expected = _epoch(dm.train_dataset(iteration=1)) + _epoch(dm.train_dataset(iteration=2))
    assert _same(repeated, expected)
    skipped = _epoch(dm.train_dataset().repeat().skip(7).take(3))
    assert _same(skipped, _epoch(dm.train_dataset(iteration=0, start_batch=7))[:3])


def test_start_batch_out_of_range(log_path, tmp_path):
    dm = _module(log_path, tmp_path)
    with pytest.raises(ValueError, match="`start_batch` must be in"):
        dm.train_dataset(start_batch=10_000)


def test_evaluation_batches_are_the_split_rows_in_order(log_path, tmp_path):
    dm = _module(log_path, tmp_path)
    for split, dataset in (("val", dm.val_dataset()), ("test", dm.test_dataset())):
        batches = _epoch(dataset)
        rows = dm.interactions(split)
        got = np.concatenate([b["item_id"] for b in batches]).astype(str)
        np.testing.assert_array_equal(got, rows.item_ids().astype(str))
        np.testing.assert_array_equal(np.concatenate([b["rating"] for b in batches]), rows.ratings)
        assert int(dataset.cardinality()) == len(batches) == -(-len(rows) // BATCH)


def test_implicit_log_batches_have_ids_only(tmp_path):
    frame = log_frame(rows=200)[["uid", "iid"]]
    dm = InteractionsDataModule(
        write_log(frame, tmp_path / "log", "csv", files=1), user_column="uid",
        item_column="iid", batch_size=64, data_dir=tmp_path / "c",
    ).setup()  # fmt: skip
    batch = next(iter(dm.train_dataset()))
    assert sorted(batch) == ["item_id", "user_id"] and batch["user_id"].dtype == tf.string
    assert dm.interactions("train").ratings is None


def test_fixed_width_strings_round_trip():
    rng = np.random.default_rng(0)
    words = [
        "",
        "a",
        "é",
        "ÿ€𝄞",
        "12345678",
        "123456789",
        "x" * 16,
        "y" * 17,
        "z" * MAX_FIXED_WIDTH,
    ]
    words += ["".join(rng.choice(list("abcé€"), rng.integers(0, 30))) for _ in range(200)]
    array = pa.array(words).slice(1)
    rows = rng.permutation(len(array)).astype(np.int32)
    got = tf.constant(fixed_width(array, rows)).numpy()
    assert [g.decode() for g in got] == [words[1:][r] for r in rows]
    long = pa.array(["w" * (MAX_FIXED_WIDTH + 1), "v"])
    assert fixed_width(long, np.array([1, 0])).tolist() == [b"v", b"w" * (MAX_FIXED_WIDTH + 1)]


def test_hashed_ids_are_stable_in_range_and_two_hashes_confuse_fewer(log_path, tmp_path):
    dm = _module(log_path, tmp_path, vocabulary={"user": {"kind": "hashed", "num_buckets": 50}})
    space = dm.id_space("user")
    assert space.kind == "hashed" and space.num_rows == 50 and space.salts == hash_salts("user", 1)
    ids = tf.constant(["u1", "never-seen-in-training", "u1"])
    rows = keras.layers.Hashing(space.num_buckets, salt=list(space.salts[0]))(ids).numpy()
    assert rows[0] == rows[2] and ((rows >= 0) & (rows < 50)).all()
    # Pinned: SipHash with the fixed salts; a change re-maps every trained user row.
    assert rows.tolist() == PINNED_ROWS

    many = np.array([f"user{i}" for i in range(4000)], dtype=object)
    one = collisions(
        _module(log_path, tmp_path, vocabulary="hashed", num_buckets=4000).id_space("user"), many
    )
    two = collisions(
        _module(log_path, tmp_path, vocabulary="hashed", num_buckets=4000, num_hashes=2).id_space(
            "user"
        ),
        many,
    )
    # n = B: about 1 - exp(-1) = 63% share a row; with two hashes almost none share both.
    assert 0.55 < one["shared"] < 0.7 and one["confused"] == one["shared"]
    assert 0.55 < two["shared"] < 0.7 and two["confused"] < 0.01


PINNED_ROWS = [32, 9, 32]


def test_oov_rows_variant_matches_string_lookup(log_path, tmp_path):
    dm = _module(log_path, tmp_path, vocabulary={"item": {"kind": "counted", "max_size": 20,
                                                          "oov_buckets": 8}})  # fmt: skip
    space = dm.id_space("item")
    lookup = keras.layers.StringLookup(
        vocabulary=list(space.ids), num_oov_indices=space.oov_buckets, mask_token=None
    )
    known = lookup(tf.constant(list(space.ids))).numpy()
    np.testing.assert_array_equal(known, np.arange(20) + 8)
    rare = [i for i in dm.catalogue().ids if i not in set(space.ids)] + ["brand-new"]
    rows = lookup(tf.constant(rare)).numpy()
    assert ((rows >= 0) & (rows < 8)).all() and len(set(rows.tolist())) > 1
    assert space.num_rows == 28
