"""Splits: the design.md random protocol exactly, leave-last-out, time cutoff, no leaks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recsys.data import splits


def _interactions(n: int = 2000, users: int = 50, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "user_id": rng.integers(0, users, n).astype(str),
            "item_id": rng.integers(0, 300, n).astype(str),
            "rating": rng.integers(1, 6, n).astype(np.float32),
            "timestamp": rng.integers(0, 10_000, n).astype(np.int64),
        }
    )


@pytest.mark.parametrize(
    "n,fraction,expected_train", [(100_000, 0.2, 80_000), (1_000_209, 0.1, 900_188)]
)
def test_random_split_sizes_match_the_anchors(n, fraction, expected_train):
    df = pd.DataFrame({"row": np.arange(n)})
    train, test = splits.random_split(df, fraction, seed=42)
    assert (len(train), len(test)) == (expected_train, n - expected_train)


def test_random_split_is_the_design_protocol():
    """Independent reference: the permutation written out by hand, as design.md states it."""
    df = _interactions(1001)
    perm = np.random.default_rng(42).permutation(1001)
    cut = round(0.8 * 1001)
    train, test = splits.random_split(df, 0.2, seed=42)
    assert train.index.tolist() == perm[:cut].tolist()  # permutation order, source labels
    assert test.index.tolist() == perm[cut:].tolist()
    pd.testing.assert_frame_equal(train, df.iloc[perm[:cut]])


def test_random_split_no_leak_and_seeded():
    df = _interactions()
    train, test = splits.random_split(df, 0.25, seed=7)
    assert set(train.index).isdisjoint(test.index)
    assert sorted([*train.index, *test.index]) == list(range(len(df)))
    again, _ = splits.random_split(df, 0.25, seed=7)
    other, _ = splits.random_split(df, 0.25, seed=8)
    assert again.index.tolist() == train.index.tolist()
    assert other.index.tolist() != train.index.tolist()
    with pytest.raises(
        ValueError, match=r"test_fraction must be in \(0, 1\). Received: test_fraction=1.0"
    ):
        splits.random_split(df, 1.0, 0)


def test_leave_last_out_takes_each_users_latest_and_leaks_nothing():
    df = _interactions()
    train, test = splits.leave_last_out(df)
    assert set(train.index).isdisjoint(test.index) and len(train) + len(test) == len(df)
    assert test["user_id"].is_unique and set(test["user_id"]) == set(df["user_id"])
    last_train = train.groupby("user_id")["timestamp"].max()
    for _, row in test.iterrows():
        assert row["timestamp"] >= last_train[row["user_id"]]  # nothing later in train
        assert row["timestamp"] == df[df.user_id == row["user_id"]]["timestamp"].max()
    assert train.index.is_monotonic_increasing and test.index.is_monotonic_increasing


def test_leave_last_out_ties_and_single_interaction_users():
    df = pd.DataFrame({"user_id": ["a", "a", "a", "b", "c", "c"], "timestamp": [5, 9, 9, 3, 1, 2]})
    train, test = splits.leave_last_out(df)
    assert test.index.tolist() == [2, 5]  # tie at 9: the later row in the file; 'b' has one row
    assert train.index.tolist() == [0, 1, 3, 4]


def test_time_cutoff_puts_everything_before_in_train():
    df = _interactions()
    cutoff = splits.cutoff_for_fraction(df, 0.2)
    train, test = splits.time_cutoff(df, cutoff)
    assert train["timestamp"].max() < cutoff <= test["timestamp"].min()
    assert abs(len(test) / len(df) - 0.2) < 0.01
    dated = pd.DataFrame({"timestamp": [0, 86_399, 86_400, 90_000]})
    train, test = splits.time_cutoff(dated, "1970-01-02")
    assert (train.index.tolist(), test.index.tolist()) == ([0, 1], [2, 3])


def test_validation_split_carves_from_train_only():
    df = _interactions()
    train, test = splits.random_split(df, 0.2, seed=42)
    rest, val = splits.validation_split(train, 0.1, seed=42)
    assert len(val) == len(train) - round(0.9 * len(train))
    assert set(val.index) <= set(train.index)
    assert set(val.index).isdisjoint(rest.index) and set(val.index).isdisjoint(test.index)
    rest0, val0 = splits.validation_split(train, 0.0)
    assert rest0 is train and val0.empty and list(val0.columns) == list(df.columns)
