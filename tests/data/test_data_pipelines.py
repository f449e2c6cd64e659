"""tf.data pipelines, vocabularies, text vectorization and the Hydra-built data modules."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import numpy as np
import pytest

import recsys  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from recsys._tf import tf
from recsys.data import ImdbDataModule, MovieLensDataModule, load_movielens
from recsys.data.pipelines import (
    candidates_dataset,
    make_lookup,
    ratings_dataset,
    standardize_text,
    text_dataset,
    text_vectorizer,
)
from tests.helpers.data import RATINGS, tar_folder, write_imdb_folder, write_ml100k_official

CONF = Path(__file__).resolve().parents[2] / "conf" / "data"


@pytest.fixture
def ml(tmp_path):
    return load_movielens(
        "100k", path=write_ml100k_official(tmp_path / "src"), data_dir=tmp_path / "c"
    )


def _rows(ds) -> list[tuple]:
    out = []
    for batch in ds:
        out += list(zip(batch["user_id"].numpy().tolist(), batch["item_id"].numpy().tolist(),
                        batch["timestamp"].numpy().tolist(), strict=True))  # fmt: skip
    return out


def test_ratings_batches_have_the_contract_shapes_and_item_features(ml):
    ds = ratings_dataset(ml.ratings, ml.items, batch_size=5)
    batches = list(ds)
    assert [int(b["rating"].shape[0]) for b in batches] == [5, 5, 2]
    first = batches[0]
    assert {k: v.dtype for k, v in first.items()} == {
        "user_id": tf.string, "item_id": tf.string, "rating": tf.float32,
        "timestamp": tf.int64, "title": tf.string, "genres": tf.string,
    }  # fmt: skip
    assert isinstance(first["genres"], tf.RaggedTensor)
    # Row 0 is user 1 rating item 1 (Toy Story) 5 stars.
    assert first["user_id"][0].numpy() == b"1" and first["rating"][0].numpy() == 5.0
    assert first["title"][0].numpy() == b"Toy Story"
    assert first["genres"][0].numpy().tolist() == [b"Animation", b"Children's", b"Comedy"]
    assert first["genres"][1].numpy().tolist() == [b"Action", b"Adventure", b"Thriller"]
    assert _rows(ds) == [(str(u).encode(), str(i).encode(), t) for u, i, _r, t in RATINGS]


def test_shuffle_covers_every_row_once_differs_per_epoch_and_is_seeded(ml):
    ds = ratings_dataset(ml.ratings, ml.items, batch_size=4, shuffle=True, seed=3)
    epoch1, epoch2 = _rows(ds), _rows(ds)
    expected = collections.Counter(_rows(ratings_dataset(ml.ratings, batch_size=100)))
    assert collections.Counter(epoch1) == expected == collections.Counter(epoch2)
    assert epoch1 != epoch2  # reshuffled every epoch
    assert _rows(ratings_dataset(ml.ratings, batch_size=4, shuffle=True, seed=3)) == epoch1
    assert _rows(ratings_dataset(ml.ratings, batch_size=4, shuffle=True, seed=4)) != epoch1
    dropped = ratings_dataset(ml.ratings, batch_size=5, shuffle=True, drop_remainder=True)
    assert [int(b["rating"].shape[0]) for b in dropped] == [5, 5]


@pytest.mark.parametrize(
    ("batch_size", "drop_remainder", "want"), [(5, False, 3), (4, False, 3), (5, True, 2)]
)
def test_shuffled_datasets_know_their_number_of_batches(ml, batch_size, drop_remainder, want):
    # Keras counts an epoch's steps from the cardinality; unknown, it adds a step per
    # fit() call and a resumed run's Adam bias correction drifts from an uninterrupted one.
    assert len(ml.ratings) == 12
    ds = ratings_dataset(
        ml.ratings, batch_size=batch_size, shuffle=True, drop_remainder=drop_remainder
    )
    assert int(ds.cardinality()) == want == sum(1 for _ in ds)


@pytest.mark.parametrize(
    ("batch_size", "drop_remainder", "want"), [(5, False, 3), (4, False, 3), (5, True, 2)]
)
def test_unshuffled_datasets_know_their_number_of_batches(ml, batch_size, drop_remainder, want):
    # Keras validates with steps_per_execution > 1 only on data of known length.
    ds = ratings_dataset(ml.ratings, batch_size=batch_size, drop_remainder=drop_remainder)
    assert int(ds.cardinality()) == want == sum(1 for _ in ds)
    texts = ml.ratings.assign(text=ml.ratings["item_id"], label=0.0)[["text", "label"]]
    if not drop_remainder:
        ds = text_dataset(texts, batch_size=batch_size)
        assert int(ds.cardinality()) == want == sum(1 for _ in ds)


def test_ratings_with_unknown_items_are_refused(ml):
    bad = ml.ratings.copy()
    bad.loc[3, "item_id"] = "999"
    with pytest.raises(
        ValueError,
        match=r"1 item ids of the ratings are missing from the item table, e.g. \['999'\]",
    ):
        ratings_dataset(bad, ml.items)


def test_candidates_cover_the_catalogue(ml):
    ids = [
        x for b in candidates_dataset(ml.items, batch_size=2) for x in b["item_id"].numpy().tolist()
    ]
    assert ids == [str(i).encode() for i in range(1, 6)]
    first = next(iter(candidates_dataset(ml.items, batch_size=2)))
    assert first["year"].numpy().tolist() == [1995, 1995]


def test_lookup_maps_unknown_ids_to_oov():
    lookup = make_lookup(["u1", "u2"])
    assert lookup(tf.constant(["u2", "u1", "stranger"])).numpy().tolist() == [2, 1, 0]
    assert lookup.vocabulary_size() == 3


def test_text_standardization_and_vectorizer_use_train_text_only():
    assert standardize_text(tf.constant(["It's GREAT!<br />Loved it."])).numpy().tolist() == [
        b"its great loved it"
    ]
    vec = text_vectorizer(["a good film", "a good, good plot"], max_tokens=10, sequence_length=6)
    vocab = vec.get_vocabulary()
    assert vocab[:3] == ["", "[UNK]", "good"] and "testonlyword" not in vocab
    out = vec(tf.constant(["Good testonlyword"])).numpy().tolist()
    assert out == [[2, 1, 0, 0, 0, 0]]


def test_movielens_data_module_from_the_hydra_config(tmp_path):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(CONF / "movielens.yaml")
    assert cfg._target_ == "recsys.data.MovieLensDataModule"
    assert (cfg.variant, cfg.split, cfg.test_fraction, cfg.seed, cfg.batch_size) == (
        "100k",
        "random",
        0.2,
        42,
        4096,
    )
    folder = write_ml100k_official(tmp_path / "src")
    dm = instantiate(
        cfg,
        path=str(folder),
        data_dir=str(tmp_path / "c"),
        test_fraction=0.25,
        val_fraction=0.2,
        batch_size=4,
    )
    assert isinstance(dm, MovieLensDataModule)
    dm.setup()
    assert (len(dm.train), len(dm.val), len(dm.test)) == (7, 2, 3)
    assert set(dm.train.index).isdisjoint(dm.test.index) and set(dm.val.index).isdisjoint(
        dm.test.index
    )
    assert dm.user_vocabulary.tolist() == sorted(set(dm.train["user_id"]))
    assert dm.item_vocabulary.tolist() == ["1", "2", "3", "4", "5"]
    batch = next(iter(dm.train_dataset()))
    assert sorted(batch) == ["genres", "item_id", "rating", "timestamp", "title", "user_id"]
    test_rows = sum(int(b["rating"].shape[0]) for b in dm.test_dataset())
    assert test_rows == 3 and sum(int(b["rating"].shape[0]) for b in dm.val_dataset()) == 2
    assert next(iter(dm.candidates_dataset(10)))["item_id"].shape == (5,)
    assert dm.user_lookup()(tf.constant(["nobody"])).numpy().tolist() == [0]


@pytest.mark.parametrize("split", ["leave_last_out", "time"])
def test_movielens_data_module_other_splits(tmp_path, split):
    folder = write_ml100k_official(tmp_path / "src")
    dm = MovieLensDataModule(
        path=folder, data_dir=tmp_path / "c", split=split, test_fraction=0.25
    ).setup()
    assert len(dm.train) + len(dm.test) == len(RATINGS)
    assert dm.val.empty and list(dm.val_dataset()) == []
    if split == "leave_last_out":
        assert sorted(dm.test["user_id"]) == ["1", "2", "3", "4"]
    else:
        assert dm.train["timestamp"].max() < dm.test["timestamp"].min()
    # Validation mimics the test split and never overlaps it.
    dm = MovieLensDataModule(
        path=folder, data_dir=tmp_path / "c", split=split, test_fraction=0.25, val_fraction=0.2
    ).setup()
    assert len(dm.train) + len(dm.val) + len(dm.test) == len(RATINGS)
    assert set(dm.val.index).isdisjoint(dm.test.index) and set(dm.val.index).isdisjoint(
        dm.train.index
    )
    if split == "leave_last_out":
        assert sorted(dm.val["user_id"]) == ["1", "2", "3", "4"]
        for user, when in dm.val.set_index("user_id")["timestamp"].items():
            assert dm.train[dm.train.user_id == user]["timestamp"].max() <= when
            assert when <= dm.test[dm.test.user_id == user]["timestamp"].min()
    else:
        assert dm.train["timestamp"].max() < dm.val["timestamp"].min()
        assert dm.val["timestamp"].max() < dm.test["timestamp"].min()
    with pytest.raises(ValueError, match="split must be one of"):
        MovieLensDataModule(split="chronological")


def test_imdb_data_module_from_the_hydra_config(tmp_path):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(CONF / "imdb.yaml")
    assert (cfg.max_tokens, cfg.sequence_length, cfg.batch_size) == (20000, 500, 32)
    tarball = tar_folder(write_imdb_folder(tmp_path / "src"), tmp_path / "a.tar.gz")
    dm = instantiate(cfg, path=str(tarball), data_dir=str(tmp_path / "c"), batch_size=2)
    assert isinstance(dm, ImdbDataModule)
    text, label = next(iter(dm.train_dataset()))
    assert text.dtype == tf.string and label.dtype == tf.float32 and text.shape == (2,)
    labels = np.concatenate([lab.numpy() for _t, lab in dm.test_dataset()]).tolist()
    assert labels == [0.0, 0.0, 1.0]
    vec = dm.text_vectorizer()
    assert vec is dm.text_vectorizer()  # adapted once
    assert "testonlyword" not in vec.get_vocabulary() and "awful" in vec.get_vocabulary()
    assert vec(text).shape == (2, 500)
    assert next(iter(text_dataset(dm.test, batch_size=8)))[0].shape == (3,)


def test_encoded_text_batches_are_the_raw_batches_encoded(tmp_path):
    tarball = tar_folder(write_imdb_folder(tmp_path / "src"), tmp_path / "a.tar.gz")
    dm = ImdbDataModule(path=str(tarball), data_dir=str(tmp_path / "c"), batch_size=2)
    vec = dm.text_vectorizer()
    calls = []

    def encode(texts):
        calls.append(int(texts.shape[0]))
        return vec(texts)

    raw = list(dm.train_dataset())
    encoded = list(dm.train_dataset(encode=encode))
    assert calls == [len(dm.train)]  # the whole split, once, before batching
    assert len(encoded) == len(raw)
    for (text, label), (tokens, encoded_label) in zip(raw, encoded, strict=True):
        np.testing.assert_array_equal(tokens.numpy(), vec(text).numpy())  # same order
        np.testing.assert_array_equal(encoded_label.numpy(), label.numpy())
    (tokens, _), *_ = list(dm.test_dataset(encode=vec))
    assert tokens.dtype == tf.int64 and tokens.shape[1] == 500


def test_data_pipeline_benchmark_runs_on_a_fixture(tmp_path, capsys):
    from recsys.benchmarks import data_pipeline

    folder = write_ml100k_official(tmp_path / "src")
    out = tmp_path / "bench.json"
    result = data_pipeline.main(
        ["--variant", "100k", "--path", str(folder), "--data-dir", str(tmp_path / "c"),
         "--batch-size", "4", "--epochs", "2", "--test-fraction", "0.25", "--out", str(out)]
    )  # fmt: skip
    assert result["train_rows"] == 9 and result["test_rows"] == 3
    assert [e["rows"] for e in result["train_epochs"]] == [9, 9]
    assert [e["batches"] for e in result["train_epochs"]] == [3, 3]
    assert all(rate > 0 for rate in result["train_rows_per_s"])
    assert "rows/s" in capsys.readouterr().out
    assert json.loads(out.read_text())["rows"] == len(RATINGS)
