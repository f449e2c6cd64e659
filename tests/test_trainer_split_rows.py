"""How the trainer counts a split's rows (steps per epoch under PSS, "is there a val split")."""

from __future__ import annotations

import recsys  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
from recsys.training.trainer import _split_rows
from tests.test_models import FakeMovieLens


class StreamingCounts(FakeMovieLens):
    """Data that counts its splits without encoding them (as data=interactions does)."""

    def split_rows(self, split):
        return {"train": 11, "val": 0, "test": 5}[split]

    def interactions(self, split):
        raise AssertionError("the trainer encoded a split only to count its rows")


def test_split_rows_asks_a_streaming_module_for_its_count():
    data = StreamingCounts()
    assert [_split_rows(data, s) for s in ("train", "val", "test")] == [11, 0, 5]


def test_split_rows_counts_contract_interactions():
    data = FakeMovieLens(n=600)
    assert _split_rows(data, "train") == 480 and _split_rows(data, "test") == 120
    assert _split_rows(object(), "train") is None
