"""python -m recsys.data synth: the schema, several files, determinism, and the planted
structure (users' items concentrate on their own taste cluster, Zipf-like popularity,
side features that carry the cluster, ratings that follow the latent factors)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.data.__main__ import main as data_cli
from recsys.data.interactions import InteractionsDataModule, SynthSpec, synthesize
from recsys.data.interactions.synth import GENRES


@pytest.fixture(scope="module")
def log(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synth")
    assert data_cli(["synth", "--users", "800", "--items", "400", "--rows", "30000",
                     "--out", str(folder), "--rows-per-file", "12000", "--clusters", "20"]) == 0  # fmt: skip
    frame = pq.read_table(sorted(folder.glob("part-*.parquet"))).to_pandas()
    users = pq.read_table(folder / "truth" / "users.parquet").to_pandas().set_index("user_id")
    items = pq.read_table(folder / "truth" / "items.parquet").to_pandas().set_index("item_id")
    return folder, frame, users, items


def test_schema_files_and_order(log):
    folder, frame, _, _ = log
    assert [p.name for p in sorted(folder.glob("part-*.parquet"))] == [
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00002.parquet",
    ]
    schema = pq.read_schema(folder / "part-00000.parquet")
    assert schema.names == ["user_id", "item_id", "rating", "timestamp", "country", "genres",
                            "title", "price"]  # fmt: skip
    assert schema.field("genres").type == pa.list_(pa.string())
    assert (
        schema.field("rating").type == pa.float32() and schema.field("price").type == pa.float64()
    )
    assert len(frame) == 30_000 and frame["timestamp"].is_monotonic_increasing
    assert set(frame["rating"]) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    assert all(1 <= len(g) <= 3 and set(g) <= set(GENRES) for g in frame["genres"])


def test_users_items_concentrate_on_their_cluster(log):
    _, frame, users, items = log
    own = (
        users.loc[frame["user_id"], "cluster"].to_numpy()
        == items.loc[frame["item_id"], "cluster"].to_numpy()
    )
    # Planted: 0.8 from the user's own cluster (plus chance hits); 1 / 20 at random.
    assert own.mean() > 0.75
    # Per user: the most visited cluster is the user's own for nearly everyone active.
    visits = pd.crosstab(frame["user_id"], items.loc[frame["item_id"], "cluster"].to_numpy())
    active = visits[visits.sum(axis=1) >= 20]
    top = active.idxmax(axis=1)
    assert (top == users.loc[active.index, "cluster"]).mean() > 0.95


def test_popularity_is_zipf_like_and_ratings_follow_the_factors(log):
    _, frame, users, items = log
    counts = frame["item_id"].value_counts()
    # Top 10% of the items: about a third of the rows (uniform: a tenth).
    assert counts.iloc[: len(counts) // 10].sum() / len(frame) > 0.3
    assert counts.iloc[0] > 5 * counts.median()
    own = (
        users.loc[frame["user_id"], "cluster"].to_numpy()
        == items.loc[frame["item_id"], "cluster"].to_numpy()
    )
    assert frame["rating"][own].mean() > frame["rating"][~own].mean() + 0.8


def test_side_features_carry_the_cluster(log):
    _, frame, users, items = log
    clusters = items.loc[frame["item_id"], "cluster"].to_numpy()
    first_genre = np.array([g[0] for g in frame["genres"]])
    assert (first_genre == np.asarray(GENRES)[clusters % len(GENRES)]).all()
    country = users["country"].str[1:].astype(int)
    assert (country == users["cluster"] % 20).mean() > 0.65
    assert frame.groupby("item_id")["title"].nunique().max() == 1


def test_deterministic_for_a_seed(tmp_path):
    spec = SynthSpec(users=50, items=40, rows=700, seed=3, row_group_rows=100)
    a = synthesize(tmp_path / "a", spec)
    b = synthesize(tmp_path / "b", spec)
    c = synthesize(tmp_path / "c", SynthSpec(users=50, items=40, rows=700, seed=4))
    read = lambda s: pq.read_table(s["files"]).to_pandas()  # noqa: E731
    pd.testing.assert_frame_equal(read(a), read(b))
    assert not read(a).equals(read(c))


def test_the_log_reads_as_data_interactions(log, tmp_path):
    folder, frame, _, _ = log
    dm = InteractionsDataModule(
        folder,
        rating_column="rating",
        timestamp_column="timestamp",
        user_features={"country": "id"},
        item_features={"genres": "multi_hot", "title": "text", "price": "numeric"},
        data_dir=tmp_path,
    ).setup()
    assert dm.index.rows.total == len(frame) and len(dm.catalogue()) == frame["item_id"].nunique()
    assert len(dm.index.blocks) == 3  # one block per file: 12,000-row files, 131,072-row blocks
