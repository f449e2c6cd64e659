"""recsys.recommend: a user's top-k items with titles, from a run directory's export."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from recsys._tf import tf
from recsys.recommend import main, recommend
from recsys.train import train
from tests.helpers.training import compose_train, process_state_restored


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
    with pytest.raises(ValueError, match="not a retrieval export"):
        recommend(tmp_path, "1")


def test_run_without_items_table_gives_ids_only(run_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "export").symlink_to(run_dir / "export")
    frame = recommend(copy, "u3", k=2)
    assert "title" not in frame.columns
    assert frame["item_id"].tolist() == recommend(run_dir, "u3", k=2)["item_id"].tolist()
