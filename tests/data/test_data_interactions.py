"""Interaction logs (data=interactions): the contract's containers against pandas, the
counting pass and the vocabularies against pandas counts, the cache.

Tiny logs written in tmp_path; the reference is the same rows loaded with pandas and
handed to recsys.data.frames.FrameInteractionData (the MovieLens path)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.data.contract import FeatureData, InteractionData
from recsys.data.frames import FrameInteractionData
from recsys.data.interactions import InteractionsDataModule
from recsys.data.interactions.config import IdSpaceSpec
from recsys.data.interactions.counting import IdCounter
from recsys.data.interactions.hashing import hash_strings, split_labels
from recsys.data.interactions.vocabularies import id_space

SPLIT_NAMES = ("train", "val", "test")
ITEM_FEATURES = {"genres": "multi_hot", "title": "text", "price": "numeric"}
USER_FEATURES = {"country": "id"}


# ----------------------------------------------------------------------- helpers
def log_frame(rows: int = 600, users: int = 40, items: int = 30, seed: int = 0) -> pd.DataFrame:
    """A small log with side features; titles change along the log (first one counts)."""
    rng = np.random.default_rng(seed)
    user = rng.integers(0, users, rows)
    item = (rng.zipf(1.6, rows) - 1) % items
    genres = [["Drama"], ["Action", "Comedy"], [], ["Comedy"]]
    return pd.DataFrame(
        {
            "uid": [f"u{u}" for u in user],
            "iid": [f"i{i}" for i in item],
            "stars": rng.integers(1, 6, rows).astype(np.float64),
            "ts": np.sort(rng.integers(1_600_000_000, 1_600_100_000, rows)),
            "country": [f"c{u % 5}" for u in user],
            "genres": [genres[i % 4] for i in item],
            "title": [f"title {i} v{r // 100}" for r, i in enumerate(item)],
            "price": (item * 1.25 + 0.5).astype(np.float64),
        }
    )


def write_log(
    frame: pd.DataFrame,
    folder: Path,
    fmt: str = "parquet",
    files: int = 3,
    row_group_size: int = 32,
) -> Path:
    """``frame`` as ``files`` consecutive parts, Parquet (list genres) or CSV/TSV (a|b)."""
    folder.mkdir(parents=True, exist_ok=True)
    for number, part in enumerate(np.array_split(np.arange(len(frame)), files)):
        chunk = frame.iloc[part]
        path = folder / f"part-{number}.{fmt}"
        if fmt == "parquet":
            pq.write_table(
                pa.Table.from_pandas(chunk, preserve_index=False),
                path,
                row_group_size=row_group_size,
            )
        else:
            if "genres" in chunk:
                chunk = chunk.assign(genres=chunk["genres"].map("|".join))
            chunk.to_csv(path, index=False, sep="\t" if fmt == "tsv" else ",")
    return folder


def module(path: Path, cache: Path, **overrides) -> InteractionsDataModule:
    settings = {
        "user_column": "uid",
        "item_column": "iid",
        "rating_column": "stars",
        "timestamp_column": "ts",
        "user_features": USER_FEATURES,
        "item_features": ITEM_FEATURES,
        "val_fraction": 0.1,
        "block_rows": 64,
        "shuffle_window_rows": 150,
        "batch_size": 50,
        "data_dir": cache,
        **overrides,
    }
    return InteractionsDataModule(path, **settings)


def reference_labels(frame: pd.DataFrame, seed: int = 42, test=0.2, val=0.1) -> np.ndarray:
    users = hash_strings(pa.array(frame["uid"].astype(str)))
    items = hash_strings(pa.array(frame["iid"].astype(str)))
    return split_labels(users, items, seed, test, val)


class PandasReference(FrameInteractionData):
    """The same log through the pandas path (what MovieLens uses)."""

    def __init__(self, frame: pd.DataFrame, labels: np.ndarray):
        self.frame, self.labels = frame, labels
        self.train = self.val = self.test = None

    def setup(self):
        renamed = self.frame.rename(
            columns={"uid": "user_id", "iid": "item_id", "stars": "rating", "ts": "timestamp"}
        )[["user_id", "item_id", "rating", "timestamp"]]
        self.train, self.val, self.test = (renamed[self.labels == s] for s in range(3))
        return self

    def item_table(self):
        first = self.frame.drop_duplicates("iid", keep="first")
        return first.rename(columns={"iid": "item_id"})[["item_id", *ITEM_FEATURES]]


# ------------------------------------------------------------------------- tests
@pytest.mark.parametrize("fmt", ["parquet", "csv", "tsv"])
def test_contract_containers_equal_the_pandas_path(tmp_path, fmt):
    frame = log_frame()
    dm = module(write_log(frame, tmp_path / "log", fmt), tmp_path / "cache").setup()
    ref = PandasReference(frame, reference_labels(frame)).setup()
    assert isinstance(dm, InteractionData) and isinstance(dm, FeatureData)

    np.testing.assert_array_equal(dm.user_vocabulary, ref.user_vocabulary)
    ours, theirs = dm.catalogue(), ref.catalogue()
    np.testing.assert_array_equal(ours.ids, theirs.ids)
    assert list(ours.features["genres"]) == list(theirs.features["genres"])
    assert list(ours.features["title"]) == list(theirs.features["title"])
    np.testing.assert_allclose(ours.features["price"], theirs.features["price"])
    for split in SPLIT_NAMES:
        a, b = dm.interactions(split), ref.interactions(split)
        for field in ("users", "items", "user_index", "item_index", "ratings", "timestamps"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)
    for splits in [("train",), ("train", "val")]:
        for by_time in (False, True):
            a, b = dm.histories(splits, by_time), ref.histories(splits, by_time)
            for field in ("keys", "offsets", "members", "ratings"):
                np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)

    train = ref.interactions("train")
    rows = theirs.rows(train.items)[train.item_index]
    np.testing.assert_array_equal(dm.item_counts("train"), np.bincount(rows, minlength=len(theirs)))

    users = dm.user_table()
    first = frame.drop_duplicates("uid").set_index("uid")["country"]
    assert list(users.features["country"]) == list(first.reindex(users.ids))
    assert dm.feature_kinds() == {"user": USER_FEATURES, "item": ITEM_FEATURES}


def test_first_row_of_an_item_gives_its_features(tmp_path):
    frame = pd.DataFrame(
        {
            "uid": ["a", "b", "a", "c"],
            "iid": ["x", "x", "y", "y"],
            "stars": [1.0, 2.0, 3.0, 4.0],
            "ts": [1, 2, 3, 4],
            "country": ["fr", "de", "es", "it"],
            "genres": [["A"], ["B"], [], ["C", "D"]],
            "title": ["old", "new", "", "late"],
            "price": [1.0, 2.0, np.nan, 4.0],
        }
    )
    dm = module(write_log(frame, tmp_path / "log", files=2, row_group_size=1), tmp_path / "c")
    catalogue, users = dm.setup().catalogue(), dm.user_table()
    assert catalogue.ids.tolist() == ["x", "y"]
    assert catalogue.features["genres"] == [["A"], []]
    assert list(catalogue.features["title"]) == ["old", ""]
    assert catalogue.features["price"][0] == 1.0 and np.isnan(catalogue.features["price"][1])
    assert list(users.features["country"]) == ["fr", "de", "it"]


def test_counts_match_pandas_and_the_cache_is_reused(tmp_path, monkeypatch):
    frame = log_frame(rows=900, users=60, items=45, seed=3)
    path = write_log(frame, tmp_path / "log", "csv", files=2)
    dm = module(path, tmp_path / "cache").setup()
    labels = reference_labels(frame)
    for tower, column, table in (("user", "uid", dm.index.users), ("item", "iid", dm.index.items)):
        expected = (
            pd.crosstab(frame[column], labels).reindex(columns=[0, 1, 2], fill_value=0).sort_index()
        )
        np.testing.assert_array_equal(table.sorted_ids, expected.index.to_numpy(), err_msg=tower)
        np.testing.assert_array_equal(table.sorted_column(table.counts), expected.to_numpy())
        first = frame.reset_index().groupby(column)["index"].min().sort_index()
        np.testing.assert_array_equal(table.sorted_column(table.first_rows), first.to_numpy())
    assert (dm.index.rows.train, dm.index.rows.val, dm.index.rows.test) == tuple(
        np.bincount(labels, minlength=3)
    )
    assert sorted(p.name for p in (dm.index.folder / "rows").iterdir()) == [
        "part-00000.parquet",
        "part-00001.parquet",
    ]

    import recsys.data.interactions.module as module_file

    def no_recount(*args, **kwargs):
        raise AssertionError("the counting pass ran again")

    monkeypatch.setattr(module_file, "build_index", no_recount)
    again = module(path, tmp_path / "cache").setup()
    assert again.index.folder == dm.index.folder and again.index.rows == dm.index.rows


def test_id_counter_merges_match_pandas():
    rng = np.random.default_rng(1)
    counter = IdCounter(merge_rows=7)  # merges after almost every block
    chunks = []
    for block in range(40):
        ids = [f"id{v}" for v in rng.zipf(1.5, 25) % 90]
        labels = rng.integers(0, 3, 25).astype(np.uint8)
        counter.add(pa.array(ids), hash_strings(pa.array(ids)), labels, first_row=block * 25)
        chunks.append(pd.DataFrame({"id": ids, "label": labels}))
    log = pd.concat(chunks, ignore_index=True)
    table = counter.result()
    expected = pd.crosstab(log["id"], log["label"]).reindex(columns=[0, 1, 2], fill_value=0)
    np.testing.assert_array_equal(table.sorted_ids, expected.index.to_numpy())
    np.testing.assert_array_equal(table.sorted_column(table.counts), expected.to_numpy())
    first = log.reset_index().groupby("id")["index"].min()
    np.testing.assert_array_equal(table.sorted_column(table.first_rows), first.to_numpy())


def test_counted_vocabulary_min_count_max_size_and_files(tmp_path):
    frame = log_frame(rows=800, seed=5)
    dm = module(
        write_log(frame, tmp_path / "log"),
        tmp_path / "cache",
        vocabulary={"item": {"kind": "counted", "min_count": 3, "max_size": 10, "oov_buckets": 4}},
        vocabulary_dir=tmp_path / "run" / "vocabulary",
    ).setup()
    train = frame[reference_labels(frame) == 0]
    counts = train["iid"].value_counts()
    counts = counts[counts >= 3]
    expected = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
    space = dm.id_space("item")
    assert list(zip(space.ids, space.counts, strict=True)) == expected
    assert space.num_rows == 4 + 10 and space.oov_buckets == 4
    written = pq.read_table(tmp_path / "run" / "vocabulary" / "item_vocabulary.parquet")
    assert written.column("id").to_pylist() == [k for k, _ in expected]
    assert written.column("row").to_pylist() == list(range(4, 14))
    users = dm.id_space("user")
    assert sorted(users.ids) == sorted(train["uid"].unique()) and users.oov_buckets == 1
    cached = list((dm.index.folder / "vocabularies").glob("*/user_vocabulary.parquet"))
    assert len(cached) == 1


def test_id_space_ties_break_by_id():
    counter = IdCounter()
    ids = pa.array(["b", "a", "c", "c", "d"])
    counter.add(ids, hash_strings(ids), np.zeros(5, np.uint8), 0)
    space = id_space(counter.result(), IdSpaceSpec(max_size=3), "user")
    assert space.ids.tolist() == ["c", "a", "b"] and space.counts.tolist() == [2, 1, 1]
