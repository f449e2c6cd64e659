"""Per-epoch validation metrics in the history and curves, and early stopping on them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from recsys.run import curve_panels
from recsys.train import train
from recsys.training.callbacks import metric_mode
from tests.helpers.training import compose_train, process_state_restored


@pytest.fixture(autouse=True)
def _restore_process_state() -> Iterator[None]:
    with process_state_restored():
        yield


def _history(run_dir: Path) -> dict:
    return json.loads((run_dir / "history.json").read_text())


def test_each_epoch_logs_the_models_validation_metrics(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    metrics, _ = train(compose_train(["trainer.epochs=3"], run_dir=run_dir, fake=True))
    history = _history(run_dir)
    assert history["epoch"] == [1, 2, 3]
    for name in ("val_rmse", "val_mae"):
        assert len(history[name]) == 3
    # The last epoch's entry is what the final evaluation reports for the same weights.
    assert history["val_rmse"][-1] == pytest.approx(metrics["val/rmse"], rel=1e-6)
    assert history["val_mae"][-1] == pytest.approx(metrics["val/mae"], rel=1e-6)
    assert "rmse" in curve_panels(history)


def test_epoch_metrics_can_be_switched_off(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    train(compose_train(["trainer.epochs=2", "trainer.epoch_metrics=false"], run_dir, fake=True))
    history = _history(run_dir)
    assert "val_rmse" not in history
    assert "val_loss" in history  # Keras's own validation still runs


def test_early_stopping_stops_when_the_monitored_metric_stalls(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    overrides = [
        "trainer.epochs=6",
        "trainer.early_stopping_patience=1",
        # A loss ("min") that rises every epoch never improves after the first.
        "trainer.early_stopping_monitor=val_growing_loss",
        "+trainer.callbacks=[{_target_: tests.helpers.training.CountEpochs}]",
    ]
    train(compose_train(overrides, run_dir=run_dir, fake=True))
    history = _history(run_dir)
    assert history["epoch"] == [1, 2]


def test_early_stopping_without_validation_is_ignored_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run_dir = tmp_path / "run"
    overrides = ["trainer.epochs=2", "trainer.early_stopping_patience=1", "+data.val_fraction=0"]
    train(compose_train(overrides, run_dir=run_dir, fake=True))
    assert _history(run_dir)["epoch"] == [1, 2]
    assert "early_stopping_patience=1 is ignored" in caplog.text


def test_constant_curves_get_no_panel() -> None:
    history = {
        "epoch": [1, 2, 3],
        "epoch_seconds": [3.0, 2.0, 2.0],
        "loss": [3.0, 2.0, 1.0],
        "regularization_loss": [0.0, 0.0, 0.0],
        "val_top100_accuracy": [0.1, 0.2, 0.3],
        "val_constant": [0.5, 0.5, 0.5],
    }
    assert curve_panels(history) == ["loss", "top100_accuracy"]
    # One epoch: nothing can be told constant yet, every metric is shown.
    one = {"epoch": [1], "loss": [1.0], "regularization_loss": [0.0]}
    assert curve_panels(one) == ["loss", "regularization_loss"]


@pytest.mark.parametrize(
    ("name", "mode"),
    [
        ("val_loss", "min"),
        ("val_rmse", "min"),
        ("val_mae", "min"),
        ("val_top100_accuracy", "max"),
        ("val_top100_seen_share", "min"),
        ("val_recall@100", "max"),
        ("val_ndcg@10", "max"),
        ("val_auc", "max"),
    ],
)
def test_metric_mode(name: str, mode: str) -> None:
    assert metric_mode(name) == mode
