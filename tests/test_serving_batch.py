"""recsys.serving.batch: every user's top-k streamed to Parquet."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from recsys._tf import tf
from recsys.benchmarks.serving import synthetic, table_queries
from recsys.serving import ExactIndex, RetrievalServingModule, UserItems, write_recommendations
from recsys.serving.batch import RECOMMENDATIONS_SCHEMA


@pytest.fixture(scope="module")
def module():
    data = synthetic(120, 23, dim=8, topics=3, noise=0.5, seen_per_user=6, seed=5)
    item_ids = [f"m{i}" for i in range(120)]
    user_ids = [f"v{u}" for u in range(23)]
    # The last user has seen all but 3 items: fewer than k remain.
    seen = data["seen"]
    rows = [seen.items_of(u).tolist() for u in range(22)] + [list(range(3, 120))]
    seen = UserItems.from_pairs(
        np.repeat(np.arange(23), [len(r) for r in rows]), np.concatenate(rows), num_users=23
    )
    index = ExactIndex(data["item_vectors"])
    queries = table_queries(user_ids, data["user_vectors"], item_ids, index)
    return (
        RetrievalServingModule(
            item_ids=item_ids,
            index=index,
            user_query_fn=queries.users,
            history_query_fn=queries.histories,
            user_ids=user_ids,
            seen=seen,
            track=[queries],
        ),
        user_ids,
        seen,
    )


def test_batch_output_has_users_times_k_ranked_rows_equal_to_single_answers(module, tmp_path):
    serving, user_ids, seen = module
    users = user_ids[:22]
    path = tmp_path / "recs.parquet"
    rows = write_recommendations(
        serving.serving_default, users, path, k=10, batch_size=7, progress=False
    )
    frame = pd.read_parquet(path)
    assert rows == len(frame) == 22 * 10
    assert pq.read_schema(path).equals(RECOMMENDATIONS_SCHEMA)
    assert frame["user_id"].drop_duplicates().tolist() == users  # input order kept
    for user, group in frame.groupby("user_id", sort=False):
        assert group["rank"].tolist() == list(range(1, 11))
        assert group["score"].is_monotonic_decreasing
        u = user_ids.index(user)
        assert not set(group["item_id"]) & {f"m{r}" for r in seen.items_of(u)}
    for user in ("v0", "v8", "v21"):  # a sample against single-user answers
        single = serving.serving_default(tf.constant([user]), tf.constant(10))
        group = frame[frame["user_id"] == user]
        assert group["item_id"].tolist() == [v.decode() for v in single["item_ids"].numpy()[0]]
        # A batch of 7 and a batch of 1 take different matmul kernels: last-bit rounding.
        np.testing.assert_allclose(
            group["score"].to_numpy(), single["scores"].numpy()[0], rtol=1e-6
        )


def test_users_with_fewer_items_left_get_fewer_rows_and_unknown_users_an_answer(module, tmp_path):
    serving, _, _ = module
    path = tmp_path / "few.parquet"
    users = iter(["v22", "newcomer"])  # any iterable, even without a length
    rows = write_recommendations(serving.serving_default, users, path, k=5, progress=False)
    frame = pd.read_parquet(path)
    assert rows == 3 + 5
    left = frame[frame["user_id"] == "v22"]
    assert set(left["item_id"]) == {"m0", "m1", "m2"} and left["rank"].tolist() == [1, 2, 3]
    assert left["score"].is_monotonic_decreasing
    assert frame[frame["user_id"] == "newcomer"]["rank"].tolist() == [1, 2, 3, 4, 5]
    assert np.isfinite(frame["score"]).all()


def test_a_failure_leaves_no_file_behind(module, tmp_path):
    serving, user_ids, _ = module
    calls = []

    def failing(**inputs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("server went away")
        return serving.serving_default(**inputs)

    path = tmp_path / "recs.parquet"
    with pytest.raises(RuntimeError, match="went away"):
        write_recommendations(failing, user_ids, path, k=3, batch_size=5, progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("kwargs", "message"), [({"k": 0}, "k=0"), ({"k": 3, "batch_size": 0}, "batch_size=0")]
)
def test_bad_arguments(module, tmp_path, kwargs, message):
    serving, user_ids, _ = module
    with pytest.raises(ValueError, match=message):
        write_recommendations(serving.serving_default, user_ids, tmp_path / "x.parquet", **kwargs)
