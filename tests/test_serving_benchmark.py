"""recsys.benchmarks.serving: synthetic data, recall from Parquet answers, checks, a tiny run."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from recsys.benchmarks import serving as bench


def test_synthetic_vectors_are_unit_and_seen_items_come_from_the_users_topic():
    data = bench.synthetic(3000, 40, dim=16, topics=10, noise=0.5, seen_per_user=12, seed=1)
    items, users = data["item_vectors"], data["user_vectors"]
    assert items.shape == (3000, 16) and users.shape == (40, 16) and items.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(items, axis=1), 1, rtol=1e-5)
    seen = data["seen"]
    assert seen.num_users == 40
    for u in range(40):
        rows = seen.items_of(u)
        assert 0 < len(rows) <= 12
        assert (data["item_topic"][rows] == data["user_topic"][u]).all()
    # Planted structure: a user scores its own topic's items highest on average.
    own = data["item_topic"] == data["user_topic"][0]
    scores = items @ users[0]
    assert scores[own].mean() > scores[~own].mean() + 0.3
    assert data["tuning_queries"].shape == (40, 16) and data["tuning_seen"].num_users == 40
    flat = bench.synthetic(500, 5, dim=8, topics=0, seed=2)
    assert flat["item_topic"] is None and flat["seen"].num_users == 5


def test_served_recall_compares_answers_per_user(tmp_path):
    exact = pd.DataFrame({"user_id": ["a"] * 4 + ["b"] * 2, "item_id": list("wxyzpq")})
    approx = pd.DataFrame({"user_id": ["a"] * 4 + ["b"] * 2, "item_id": list("wxvuqr")})
    exact.to_parquet(tmp_path / "exact.parquet")
    approx.to_parquet(tmp_path / "approx.parquet")
    recall = bench.served_recall(tmp_path / "exact.parquet", tmp_path / "approx.parquet")
    assert recall == pytest.approx((2 / 4 + 1 / 2) / 2)


def _row(index, items, **values):
    return {"index": index, "items": items, "p50_ms": 1.0, "p99_ms": 2.0, **values}


def test_checks_follow_the_issue_targets():
    results = [
        _row("exact", 1_000_000, p50_ms=35.0, p99_ms=90.0, non_stock_ops={}),
        _row(
            "partitioned",
            1_000_000,
            recall_at_k=0.96,
            latency_speedup=5.0,
            non_stock_ops={"Scann": ["graph"]},
        ),
    ]
    found = {c["check"]: c["met"] for c in bench.checks(results)}
    assert found["exact top-100 over 1M items, SavedModel p50"] is True
    assert found["exact top-100 over 1M items, SavedModel p99"] is False
    assert found["partitioned recall@100, 1,000,000 items"] is True
    assert found["partitioned p50 speed-up over exact, 1,000,000 items"] is True
    assert found["only stock ops, partitioned 1,000,000 items"] is False
    assert "p50 x" in bench.format_table(results, bench.checks(results))


@pytest.mark.slow
def test_tiny_run_writes_json_and_table(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)  # restored afterwards
    output = tmp_path / "serving.json"
    code = bench.main(
        [
            *("--items", "3000", "--users", "60", "--requests", "20"),
            *("--topics", "20", "--output", str(output), "--workdir", str(tmp_path / "work")),
        ]
    )
    assert code == 0
    payload = json.loads(output.read_text())
    assert payload["tf_enable_onednn_opts"] == "1"
    by_index = {r["index"]: r for r in payload["results"]}
    assert set(by_index) == {"numpy", "exact", "partitioned"}
    for name in ("exact", "partitioned"):
        r = by_index[name]
        assert r["non_stock_ops"] == {} and r["foreign_modules"] == []
        assert r["batch_users"] == 60 and 0 < r["batch_rows"] <= 60 * 100
        assert 0 < r["p50_ms"] <= r["p99_ms"] and r["users_per_second"] > 0
    # The probed partitions may hold fewer than 100 items: the approximate index
    # then returns fewer; the exact one never does here.
    assert by_index["exact"]["batch_rows"] == 60 * 100
    assert 0 <= by_index["partitioned"]["recall_at_k"] <= 1
    assert by_index["partitioned"]["tuning_recall"] >= 0.95
    assert "recall@100" in capsys.readouterr().out
