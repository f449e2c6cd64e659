"""examples/own_data: the README's own-data command trains, evaluates and exports."""

from __future__ import annotations

import json
from pathlib import Path

from recsys.train import train
from tests.helpers.training import PROJECT_ROOT, compose_train, process_state_restored

EXAMPLE = PROJECT_ROOT / "examples" / "own_data"


def test_own_data_example_trains_and_beats_popularity(tmp_path: Path) -> None:
    with process_state_restored():
        cfg = compose_train(
            [
                f"hydra.searchpath=[file://{EXAMPLE}]",
                "+experiment=purchases",
                f"data.path={EXAMPLE / 'purchases.csv'}",
                f"data.data_dir={tmp_path / 'cache'}",
                "trainer.tensorboard=false",
            ],
            run_dir=tmp_path / "run",
        )
        metrics, _ = train(cfg)
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert written["test/recall@100"] == metrics["test/recall@100"]
    # The log has planted taste clusters: the towers find them, popularity cannot.
    assert metrics["test/ndcg@10"] > 0.2
    assert metrics["test/top100_accuracy"] > metrics["test/popularity_top100_accuracy"] + 0.05
    assert (tmp_path / "run" / "vocabulary").is_dir()
    assert (tmp_path / "run" / "export").is_dir()
