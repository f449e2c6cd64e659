"""recsys.recommend: top-k items from a run's export, one user printed or many to Parquet.

Two kinds of runs: real tiny retrieval and ranking runs (the current export: seen items
left out, k chosen per call, batch output, pair scores), and a run of the fake model,
whose export is a single-input top-5 signature as exports were before the serving
rework: those still answer.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from recsys._tf import tf
from recsys.recommend import load_export, main, recommend
from recsys.train import train
from tests.helpers.training import compose_train, process_state_restored, write_tiny_movielens


@pytest.fixture(autouse=True)
def _restore_process_state() -> Iterator[None]:
    with process_state_restored():
        yield


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """A finished run of the fake retrieval model (export returns the top 5 of 20 items)."""
    run_dir = tmp_path_factory.mktemp("recommend") / "run"
    cfg = compose_train(
        ["trainer.epochs=1", "trainer.tensorboard=false"], run_dir=run_dir, fake=True
    )
    _, objects = train(cfg)
    return run_dir, objects["model"]


@pytest.fixture(scope="module")
def run_dir(finished_run: tuple[Path, Any]) -> Path:
    return finished_run[0]


def _scores_from_model(model: Any, user: str) -> pd.Series:
    """Every item's score for ``user``, from the trained model in memory."""
    users = model.user_embedding(model.user_lookup(tf.constant([user]))).numpy()[0]
    items = [f"i{i}" for i in range(20)]
    table = model.item_embedding(model.item_lookup(tf.constant(items))).numpy()
    return pd.Series(table @ users, index=items)


def test_top_k_with_titles_matches_the_scores(finished_run: tuple[Path, Any]) -> None:
    run_dir, model = finished_run
    frame = recommend(run_dir, "u3", k=4)
    assert list(frame.columns) == ["rank", "item_id", "score", "title"]
    assert frame["rank"].tolist() == [1, 2, 3, 4]
    assert frame["score"].is_monotonic_decreasing
    expected = _scores_from_model(model, "u3").sort_values(ascending=False)[:4]
    assert frame["item_id"].tolist() == expected.index.tolist()
    np.testing.assert_allclose(frame["score"], expected.to_numpy(), rtol=1e-5)
    for item, title in zip(frame["item_id"], frame["title"], strict=True):
        assert title == f"Movie number {item[1:]} (1999)"


def test_integer_user_id_is_accepted(run_dir: Path) -> None:
    assert len(recommend(run_dir, 3, k=2)) == 2  # looked up as "3" (unknown here: OOV row)


def test_command_line_prints_the_table(run_dir: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([str(run_dir), "--user-id", "u3", "-k", "3"]) == 0
    out = capsys.readouterr().out
    assert "Top 3 items for user u3" in out
    best = recommend(run_dir, "u3", k=1)
    assert best["title"][0] in out
    assert len(out.strip().splitlines()) == 2 + 3  # heading, column names, three rows


def test_k_larger_than_the_export_is_refused(run_dir: Path) -> None:
    with pytest.raises(ValueError, match=r"top 5 items per user; asked for k=6"):
        recommend(run_dir, "u3", k=6)
    with pytest.raises(ValueError, match="k=0"):
        recommend(run_dir, "u3", k=0)


def test_missing_export_says_what_to_pass(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(FileNotFoundError, match="No exported model"):
        recommend(tmp_path, "1")
    assert main([str(tmp_path), "--user-id", "1"]) == 2
    assert "error: No exported model" in capsys.readouterr().err


def test_non_retrieval_export_is_refused(tmp_path: Path) -> None:
    module = tf.Module()
    module.serve = tf.function(
        lambda user_id, item_id: {"rating": tf.zeros_like(user_id, dtype=tf.float32)},
        input_signature=[
            tf.TensorSpec([None], tf.string, name="user_id"),
            tf.TensorSpec([None], tf.string, name="item_id"),
        ],
    )
    tf.saved_model.save(module, str(tmp_path / "export"), signatures=module.serve)
    with pytest.raises(ValueError, match="not a retrieval model"):
        recommend(tmp_path, "1")


def test_run_without_items_table_gives_ids_only(run_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "export").symlink_to(run_dir / "export")
    frame = recommend(copy, "u3", k=2)
    assert "title" not in frame.columns
    assert frame["item_id"].tolist() == recommend(run_dir, "u3", k=2)["item_id"].tolist()


# ------------------------------------------------------------- current exports


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny retrieval run and a tiny ranking run on a small MovieLens-100K release."""
    root = tmp_path_factory.mktemp("real")
    data = write_tiny_movielens(root / "ml-100k")
    common = [
        "+debug=fast",
        f"data.path={data}",
        f"data.data_dir={root / 'cache'}",
        "data.batch_size=64",
        "data.val_fraction=0.1",
        "model.embedding_dim=8",
        "trainer.limit_train_batches=null",
    ]
    runs: dict[str, Any] = {}
    with process_state_restored():
        for name, experiment in (("retrieval", "movielens"), ("ranking", "movielens_ranking")):
            cfg = compose_train([f"+experiment={experiment}", *common], run_dir=root / name)
            _, objects = train(cfg)
            runs[name] = root / name
            runs[f"{name}_data"] = objects["datamodule"]
    return runs


def _seen(data: Any) -> pd.Series:
    return pd.concat([data.train, data.val]).groupby("user_id")["item_id"].agg(set)


def test_one_user_leaves_out_training_and_validation_items(real_runs: dict[str, Any]) -> None:
    run, seen = real_runs["retrieval"], _seen(real_runs["retrieval_data"])
    for user in list(seen.index)[:10]:
        frame = recommend(run, user, k=8)
        assert frame["rank"].tolist() == list(range(1, len(frame) + 1))
        assert not set(frame["item_id"]) & seen[user]
        assert frame["score"].is_monotonic_decreasing
        assert all(t.startswith("Movie number") for t in frame["title"])
    with_seen = recommend(run, seen.index[0], k=40, include_seen=True)
    assert set(with_seen["item_id"]) & seen[seen.index[0]]  # the unfiltered signature


def test_command_line_user_id_leaves_out_seen_items(
    real_runs: dict[str, Any], capsys: pytest.CaptureFixture
) -> None:
    run, seen = real_runs["retrieval"], _seen(real_runs["retrieval_data"])
    user = seen.index[0]
    # k = the whole catalogue (40 items): without seen items, exactly the others are left.
    for extra, expected in (([], 40 - len(seen[user])), (["--include-seen"], 40)):
        assert main([str(run), "--user-id", user, "-k", "40", *extra]) == 0
        lines = capsys.readouterr().out.strip().splitlines()
        printed = [line.split()[1] for line in lines[2:]]  # rank, item_id, score, title
        assert len(printed) == expected
        assert bool(set(printed) & seen[user]) is bool(extra)


def test_all_users_to_parquet_equals_the_single_user_answers(
    real_runs: dict[str, Any], tmp_path: Path
) -> None:
    run, seen = real_runs["retrieval"], _seen(real_runs["retrieval_data"])
    out = tmp_path / "recs.parquet"
    assert main([str(run), "--all-users", "-k", "5", "--out", str(out), "--no-progress"]) == 0
    recs = pd.read_parquet(out)
    assert list(recs.columns) == ["user_id", "rank", "item_id", "score"]
    assert set(recs["user_id"]) == set(seen.index)  # every stored user (train and val)
    assert len(recs) == 5 * len(seen)
    for user, rows in recs.groupby("user_id"):
        assert rows["rank"].tolist() == [1, 2, 3, 4, 5]
        assert rows["score"].is_monotonic_decreasing
        assert not set(rows["item_id"]) & seen[user]
    for user in sorted(seen.index)[::7]:
        single = recommend(run, user, k=5)
        rows = recs[recs["user_id"] == user]
        assert rows["item_id"].tolist() == single["item_id"].tolist()
        np.testing.assert_allclose(rows["score"], single["score"], rtol=1e-6)


def test_users_from_a_text_or_parquet_file(real_runs: dict[str, Any], tmp_path: Path) -> None:
    run = real_runs["retrieval"]
    (tmp_path / "users.txt").write_text("1\n2\n\nnew-user\n")
    pd.DataFrame({"customer": ["1", "2", "new-user"]}).to_parquet(tmp_path / "users.parquet")
    text_out, parquet_out = tmp_path / "a.parquet", tmp_path / "b.parquet"
    args = ["-k", "3", "--no-progress"]
    assert (
        main([str(run), "--users", str(tmp_path / "users.txt"), *args, "--out", str(text_out)]) == 0
    )
    assert (
        main([str(run), "--users", str(tmp_path / "users.parquet"), "--users-column", "customer",
              *args, "--out", str(parquet_out)])
        == 0
    )  # fmt: skip
    a, b = pd.read_parquet(text_out), pd.read_parquet(parquet_out)
    assert a["user_id"].tolist() == ["1"] * 3 + ["2"] * 3 + ["new-user"] * 3  # unknown: answered
    pd.testing.assert_frame_equal(a, b)
    seen = _seen(real_runs["retrieval_data"])
    for user, rows in a[a["user_id"] != "new-user"].groupby("user_id"):
        assert not set(rows["item_id"]) & seen.get(user, set())


def test_pairs_of_a_ranking_run(real_runs: dict[str, Any], tmp_path: Path) -> None:
    run = real_runs["ranking"]
    pd.DataFrame({"user_id": ["1", "2", "nobody"], "item_id": ["3", "4", "5"]}).to_csv(
        tmp_path / "pairs.csv", index=False
    )
    out = tmp_path / "scores.parquet"
    assert main([str(run), "--pairs", str(tmp_path / "pairs.csv"), "--out", str(out)]) == 0
    scores = pd.read_parquet(out)
    assert list(scores.columns) == ["user_id", "item_id", "rating"]
    serve = load_export(run).signatures["serving_default"]
    expected = serve(
        user_id=tf.constant(["1", "2", "nobody"]), item_id=tf.constant(["3", "4", "5"])
    )
    np.testing.assert_allclose(scores["rating"], expected["rating"].numpy(), rtol=1e-6)


def test_wrong_kind_of_run_or_missing_out_is_one_clear_error(
    real_runs: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("user_id,item_id\n1,2\n")
    out = str(tmp_path / "x.parquet")
    assert main([str(real_runs["retrieval"]), "--pairs", str(pairs), "--out", out]) == 2
    assert "not a ranking model" in capsys.readouterr().err
    assert main([str(real_runs["ranking"]), "--user-id", "1"]) == 2
    assert "not a retrieval model" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main([str(real_runs["retrieval"]), "--all-users"])
    assert exit_info.value.code == 2
    assert "--out" in capsys.readouterr().err
