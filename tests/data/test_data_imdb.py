"""IMDB: tarball and folder in the aclImdb layout, TFDS route, cache, bad input, offline."""

from __future__ import annotations

import importlib.machinery
import sys
import time
import types

import pandas as pd
import pytest

from recsys.data import imdb
from recsys.data.imdb import load_imdb
from recsys.data.sources import DatasetUnavailableError, MalformedDataError, MissingMemberError
from tests.helpers.data import IMDB_REVIEWS, sha256, snapshot, tar_folder, write_imdb_folder


def _expected(split: str) -> pd.DataFrame:
    rows = []
    for label, pol in ((0, "neg"), (1, "pos")):
        for rid, rating, text in sorted(IMDB_REVIEWS[(split, pol)]):
            rows.append((text, label, rating, rid))
    return pd.DataFrame(rows, columns=["text", "label", "rating", "id"])


def _no_tfds(*_args):
    raise FileNotFoundError("tensorflow_datasets is not installed")


def _check(data) -> None:
    for split, frame in (("train", data.train), ("test", data.test)):
        expected = _expected(split)
        assert list(frame.columns) == ["text", "label", "rating"]
        assert frame["text"].tolist() == expected["text"].tolist()  # neg first, then by id
        assert frame["label"].tolist() == expected["label"].tolist()
        assert frame["rating"].tolist() == expected["rating"].tolist()
        assert frame["label"].dtype == "int64" and frame["rating"].dtype == "int64"


def test_tarball_and_folder_give_the_same_tables(tmp_path):
    folder = write_imdb_folder(tmp_path / "src")
    tarball = tar_folder(folder, tmp_path / "aclImdb_v1.tar.gz")
    from_tar = load_imdb(tarball, data_dir=tmp_path / "c")
    from_dir = load_imdb(folder, data_dir=tmp_path / "c")
    from_parent = load_imdb(tmp_path / "src", data_dir=tmp_path / "c")
    for data in (from_tar, from_dir, from_parent):
        _check(data)  # unsup, vocab and url files skipped
    assert "<br /><br />" in from_tar.train["text"].iloc[2]  # raw text kept for the vectorizer
    assert "très" in from_tar.test["text"].iloc[1]


def test_second_load_reads_only_parquet(tmp_path, monkeypatch):
    tarball = tar_folder(write_imdb_folder(tmp_path / "src"), tmp_path / "a.tar.gz")
    first = load_imdb(tarball, data_dir=tmp_path / "c")
    monkeypatch.setattr(imdb, "read_imdb_tree", lambda *a, **k: pytest.fail("tarball read again"))
    second = load_imdb(tarball, data_dir=tmp_path / "c")
    pd.testing.assert_frame_equal(first.train, second.train)
    pd.testing.assert_frame_equal(first.test, second.test)
    assert second.cache_dir == first.cache_dir and (first.cache_dir / "train.parquet").is_file()


def test_user_folder_untouched(tmp_path):
    folder = write_imdb_folder(tmp_path / "src")
    before = snapshot(folder)
    load_imdb(folder, data_dir=tmp_path / "c")
    assert snapshot(folder) == before


def test_rating_that_contradicts_its_folder_is_named(tmp_path):
    folder = write_imdb_folder(tmp_path / "src")
    (folder / "train" / "pos" / "99_3.txt").write_text("labelled positive, rated 3")
    with pytest.raises(MalformedDataError) as err:
        load_imdb(folder, data_dir=tmp_path / "c")
    assert (
        "99_3.txt" in str(err.value) and "rating 3" in str(err.value) and "'pos'" in str(err.value)
    )
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").rglob("*.parquet"))


def test_missing_polarity_is_named(tmp_path):
    folder = write_imdb_folder(tmp_path / "src")
    for f in (folder / "test" / "pos").iterdir():
        f.unlink()
    with pytest.raises(MissingMemberError, match="no reviews in test/pos/"):
        load_imdb(folder, data_dir=tmp_path / "c")


def test_offline_fails_fast_with_routes(tmp_path, monkeypatch, closed_port_url):
    monkeypatch.setattr(
        imdb,
        "OFFICIAL",
        imdb.OFFICIAL.__class__(closed_port_url + "/a.tar.gz", "a.tar.gz", 1, "0" * 64),
    )
    monkeypatch.setattr(
        imdb,
        "read_tfds",
        lambda *_: (_ for _ in ()).throw(FileNotFoundError("tensorflow_datasets is not installed")),
    )
    start = time.monotonic()
    with pytest.raises(DatasetUnavailableError) as err:
        load_imdb(data_dir=tmp_path / "c", progress=False)
    assert time.monotonic() - start < 5
    message = str(err.value)
    for expected in (
        "could not get IMDB reviews",
        "TFDS imdb_reviews: tensorflow_datasets is not installed",
        f"official {closed_port_url}/a.tar.gz: could not reach",
        'load_imdb(path="/path/to/aclImdb_v1.tar.gz")',
        "data.path=/path/to/aclImdb_v1.tar.gz",
    ):
        assert expected in message, (expected, message)


def test_tfds_route_when_prepared(tmp_path, monkeypatch):
    """A stand-in for tensorflow_datasets with prepared imdb_reviews data."""
    prepared = tmp_path / "tfds" / "imdb_reviews" / "plain_text" / "1.0.0"
    prepared.mkdir(parents=True)
    (prepared / "dataset_info.json").write_text("{}")
    examples = {
        "train": [{"text": b"good", "label": 1}, {"text": b"bad", "label": 0}],
        "test": [{"text": b"fine", "label": 1}, {"text": "dull", "label": 0}],
    }
    fake = types.ModuleType("tensorflow_datasets")
    fake.__spec__ = importlib.machinery.ModuleSpec("tensorflow_datasets", None)
    fake.builder = lambda name, data_dir=None: types.SimpleNamespace(
        data_dir=str(prepared), as_dataset=lambda split: examples[split]
    )
    fake.as_numpy = lambda ds: ds
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake)
    data = load_imdb(data_dir=tmp_path / "c")
    assert data.source == "tfds"
    assert data.train["text"].tolist() == ["bad", "good"]
    assert data.test["label"].tolist() == [0, 1] and data.test["rating"].tolist() == [-1, -1]


def test_official_route_downloads_verifies_and_caches(http_server, tmp_path, monkeypatch):
    tarball = tar_folder(write_imdb_folder(tmp_path / "src"), tmp_path / "aclImdb_v1.tar.gz")
    body = tarball.read_bytes()
    url = http_server.serve("/aclImdb_v1.tar.gz", body)
    remote = imdb.OFFICIAL.__class__(url, "aclImdb_v1.tar.gz", len(body), sha256(body))
    monkeypatch.setattr(imdb, "OFFICIAL", remote)
    monkeypatch.setattr(imdb, "read_tfds", _no_tfds)
    data = load_imdb(data_dir=tmp_path / "c", progress=False)
    assert data.source == "official"
    _check(data)
    assert (tmp_path / "c/downloads/aclImdb_v1.tar.gz").read_bytes() == body
    assert load_imdb(data_dir=tmp_path / "c").source == "official"
    assert http_server.hits == ["/aclImdb_v1.tar.gz"]


def test_corrupt_official_download_is_deleted_and_reported(http_server, tmp_path, monkeypatch):
    tarball = tar_folder(write_imdb_folder(tmp_path / "src"), tmp_path / "aclImdb_v1.tar.gz")
    body = tarball.read_bytes()
    url = http_server.serve("/aclImdb_v1.tar.gz", body, mode="corrupt")
    remote = imdb.OFFICIAL.__class__(url, "aclImdb_v1.tar.gz", len(body), sha256(body))
    monkeypatch.setattr(imdb, "OFFICIAL", remote)
    monkeypatch.setattr(imdb, "read_tfds", _no_tfds)
    with pytest.raises(DatasetUnavailableError, match=f"sha256 mismatch .*expected {sha256(body)}"):
        load_imdb(data_dir=tmp_path / "c", progress=False)
    assert list((tmp_path / "c/downloads").iterdir()) == []
