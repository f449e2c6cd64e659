"""Interaction logs (data=interactions): per-user histories grouped on disk in bounded
memory, against the pandas path; the models read them (and the item counts) without
the training rows being encoded; PairIndex against NumPy.

Tiny logs written in tmp_path; the reference is the same rows loaded with pandas and
handed to recsys.data.frames.FrameInteractionData (the MovieLens path)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from recsys.data.interactions import histories as disk
from tests.data.test_data_interactions import (
    PandasReference,
    log_frame,
    module,
    reference_labels,
    write_log,
)

FIELDS = ("keys", "offsets", "members", "ratings")


def assert_same(ours, theirs, what):
    for field in FIELDS:
        a, b = getattr(ours, field), getattr(theirs, field)
        if b is None:
            assert a is None, f"{what}: {field}"
        else:
            np.testing.assert_array_equal(np.asarray(a), b, err_msg=f"{what}: {field}")


class IdsOnlyReference(PandasReference):
    """No ratings, no timestamps: by-time bags keep the log order."""

    def setup(self):
        super().setup()
        self.train, self.val, self.test = (
            part.drop(columns=["timestamp", "rating"]) for part in (self.train, self.val, self.test)
        )
        return self


@pytest.fixture
def small_buckets(monkeypatch):
    # Many buckets and truncation slices even on a tiny log.
    monkeypatch.setattr(disk, "BUCKET_ROWS", 37)


@pytest.mark.parametrize("with_extras", [True, False])
def test_histories_and_recent_histories_equal_the_pandas_path(tmp_path, small_buckets, with_extras):
    frame = log_frame(rows=900)
    extras = {} if with_extras else {"rating_column": None, "timestamp_column": None}
    dm = module(write_log(frame, tmp_path / "log"), tmp_path / "cache", **extras).setup()
    ref = (PandasReference if with_extras else IdsOnlyReference)(frame, reference_labels(frame))
    ref.setup()
    for splits in [("train",), ("train", "val"), ("val", "train"), ("test",)]:
        for by_time in (False, True):
            ours = dm.histories(splits, by_time)
            assert isinstance(ours.members, np.memmap)  # read lazily from the cache
            theirs = ref.histories(splits, by_time)
            assert_same(ours, theirs, f"{splits} by_time={by_time}")
            # select reads the bags from the file (pread), not through the mapping.
            for asked in (  # a few bags (one read each), most of them (one read)
                np.concatenate([theirs.keys[::3], ["nobody"], theirs.keys[:2]]),
                np.concatenate([theirs.keys, ["nobody"], theirs.keys[:2]]),
            ):
                for a, b in zip(ours.select(asked), theirs.select(asked), strict=True):
                    np.testing.assert_array_equal(a, b)
        for max_length in (1, 3, 1000):
            recent = dm.recent_histories(max_length, splits)
            assert not isinstance(recent.members, np.memmap)
            assert int(recent.lengths().max()) <= max_length
            expected = ref.histories(splits, by_time=True).truncate(max_length)
            assert_same(recent, expected, f"{splits} last {max_length}")
    assert_same(dm.recent_histories(None), ref.histories(("train",), True), "all")
    # None of this needed the training rows in memory.
    assert "_train_rows" not in dm.__dict__


def test_histories_are_grouped_once_and_reused_from_the_cache(tmp_path, monkeypatch):
    frame = log_frame()
    path = write_log(frame, tmp_path / "log")
    dm = module(path, tmp_path / "cache", val_fraction=0.0).setup()
    first = dm.histories(("train",), by_time=True)
    # No validation rows: ("train", "val") is the same grouping, not a second pass.
    same = dm.histories(("train", "val"))
    folders = sorted(p.name for p in (dm.index.folder / "histories").iterdir())
    assert folders == ["train-log-all", "train-time-all"]

    def no_pass(*args, **kwargs):
        raise AssertionError("grouped the log again")

    monkeypatch.setattr(disk, "build_histories", no_pass)
    again = module(path, tmp_path / "cache", val_fraction=0.0).setup()
    assert_same(again.histories(("train",), by_time=True), first, "time order")
    assert_same(again.histories(("train", "val")), same, "log order")


def test_retrieval_model_reads_histories_and_counts_without_the_training_rows(tmp_path):
    from recsys.models import RetrievalModel
    from recsys.models.features import training_histories, training_item_counts

    frame = log_frame(rows=900)
    dm = module(write_log(frame, tmp_path / "log"), tmp_path / "cache").setup()
    ref = PandasReference(frame, reference_labels(frame)).setup()
    users = dm.user_vocabulary
    for max_length in (None, 2):
        assert_same(
            training_histories(dm, users, max_length),
            training_histories(ref, users, max_length),
            f"last {max_length}",
        )
    catalogue = ref.catalogue()
    train = ref.interactions("train")
    expected = np.bincount(catalogue.rows(train.items)[train.item_index], minlength=len(catalogue))
    np.testing.assert_array_equal(training_item_counts(dm, dm.catalogue()), expected)

    model = RetrievalModel(
        dm, embedding_dim=8, item_features=None, user_features=None, history_max_length=2
    )
    np.testing.assert_array_equal(model.train_counts, expected)
    table = model.user_store.gather(model.user_store.index(users))["history"]
    want = ref.histories(("train",), by_time=True).truncate(2)
    # Each user's last 2 by time, kept sorted (the table answers membership too).
    assert table.to_list() == [sorted(m + 1 for m in bag) for bag in want.lists(users)]
    assert "_train_rows" not in dm.__dict__


@pytest.mark.parametrize("weighted", [False, True])
def test_pair_index_answers_as_a_numpy_set(weighted):
    from recsys._tf import tf
    from recsys.models.features import PairIndex

    rng = np.random.default_rng(3)
    lengths = rng.integers(0, 6, 50)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    members = rng.integers(0, 40, int(lengths.sum()))
    weights = rng.random(len(members)).astype(np.float32) if weighted else None
    index = PairIndex(offsets, members, weights, base=41)
    owners = np.repeat(np.arange(1, 51), lengths)
    stored = {}
    for o, m, w in zip(owners, members, weights if weighted else members, strict=True):
        stored.setdefault((int(o), int(m)), float(w))
    queries_o = rng.integers(0, 52, 400)
    queries_m = rng.integers(0, 40, 400)
    got = index.contains(tf.constant(queries_o), tf.constant(queries_m)).numpy()
    want = [(int(o), int(m)) in stored for o, m in zip(queries_o, queries_m, strict=True)]
    np.testing.assert_array_equal(got, want)
    if weighted:
        got_w = index.weight(tf.constant(queries_o), tf.constant(queries_m)).numpy()
        for o, m, w, hit in zip(queries_o, queries_m, got_w, want, strict=True):
            if hit and list(zip(owners, members, strict=True)).count((o, m)) == 1:
                assert w == pytest.approx(stored[int(o), int(m)])
            elif not hit:
                assert w == 0.0


@pytest.mark.parametrize("max_length", [1, 6, 300])
def test_sorted_bags_answer_as_a_numpy_set(max_length):
    from recsys._tf import tf
    from recsys.models.features import SortedBags

    rng = np.random.default_rng(max_length)
    lengths = rng.integers(0, max_length + 1, 60)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    members = rng.integers(0, 500, int(lengths.sum()))
    bags = SortedBags(offsets, members)
    # The table holds the same bags, each sorted, as int32.
    assert bags.table.values.dtype == tf.int32
    want_bags = [sorted(members[a:b].tolist()) for a, b in itertools.pairwise(offsets)]
    assert bags.table.to_list() == want_bags
    owners = np.repeat(np.arange(1, 61), lengths)
    stored = set(zip(owners.tolist(), members.tolist(), strict=True))
    # Half the queries stored pairs, half random; owner 0 (unknown) has an empty bag.
    picks = rng.integers(0, max(len(members), 1), 500)
    queries_o = np.concatenate([owners[picks] if len(members) else [], rng.integers(0, 61, 500)])
    queries_m = np.concatenate([members[picks] if len(members) else [], rng.integers(0, 501, 500)])
    got = bags.contains(tf.constant(queries_o, tf.int64), tf.constant(queries_m, tf.int64))
    want = [(int(o), int(m)) in stored for o, m in zip(queries_o, queries_m, strict=True)]
    np.testing.assert_array_equal(got.numpy(), want)


def test_sorted_bags_reject_bad_offsets_and_members():
    from recsys.models.features import SortedBags

    with pytest.raises(ValueError, match="from 0 to len"):
        SortedBags(np.array([0, 2]), np.array([1, 2, 3]))
    with pytest.raises(ValueError, match="non-decreasing"):
        SortedBags(np.array([0, 3, 2, 3]), np.array([1, 2, 3]))
    with pytest.raises(ValueError, match=r"\[0, 2\*\*31"):
        SortedBags(np.array([0, 1]), np.array([-1]))
    # No bags at all: nothing is stored.
    empty = SortedBags(np.array([0, 0]), np.array([], np.int64))
    assert empty.contains([0, 1], [0, 3]).numpy().tolist() == [False, False]
