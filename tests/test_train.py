"""recsys.train's loop and artifacts, on fake data and a fake model (tests/helpers/training.py).

What is checked: every artifact of a run lands in the run directory with the names
scripts rely on; ``main`` returns the optimized metric; a run interrupted mid-epoch
and started again resumes from its last checkpoint and ends in exactly the state of
an uninterrupted run; the command line resumes too; a 2-point multirun works.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from recsys.recommend import recommend
from recsys.train import main, train
from tests.helpers.training import (
    FAKE_CLI,
    SimulatedFault,
    cli_env,
    compose_train,
    fault_after,
    process_state_restored,
    write_tiny_imdb,
    write_tiny_movielens,
)

# FakeDataModule: 240 ratings, 70% train = 168 rows, batch 16 -> 11 batches per epoch.
STEPS_PER_EPOCH = 11


@pytest.fixture(autouse=True)
def _restore_process_state() -> Iterator[None]:
    with process_state_restored():
        yield


def _weights(objects: dict) -> list[np.ndarray]:
    return [w.numpy() for w in objects["model"].weights]


def _optimizer_state(objects: dict) -> list[np.ndarray]:
    return [v.numpy() for v in objects["optimizer"].variables]


def test_run_writes_every_artifact(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    cfg = compose_train(["trainer.epochs=2", "task_name=artifacts"], run_dir=run_dir, fake=True)
    metrics, _ = train(cfg)

    for name in ("config.yaml", "metrics.json", "history.json", "curves.png", "hardware.json"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "export" / "saved_model.pb").is_file()
    assert (run_dir / "items.parquet").is_file()
    assert any((run_dir / "tensorboard").rglob("events.out.tfevents.*"))
    assert (run_dir / "checkpoints" / "checkpoint").is_file()
    assert (run_dir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    written = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics) == {"val/rmse", "val/mae", "test/rmse", "test/mae"}
    for name, value in metrics.items():
        assert written[name] == pytest.approx(value)
        assert np.isfinite(value)
    assert written["epochs"] == 2
    assert written["resumed_from_epoch"] == 0
    assert written["task_name"] == "artifacts"
    history = written["history"]
    assert history["epoch"] == [1, 2]
    assert len(history["loss"]) == len(history["val_loss"]) == 2
    assert history["loss"][1] < history["loss"][0]

    resolved = (run_dir / "config.yaml").read_text()
    assert "${" not in resolved  # interpolations resolved
    assert f"output_dir: {run_dir.resolve()}" in resolved


def test_main_returns_optimized_metric(tmp_path: Path) -> None:
    cfg = compose_train(
        ["trainer.epochs=1", "optimized_metric=val/rmse", "trainer.tensorboard=false"],
        run_dir=tmp_path,
        fake=True,
    )
    value = main.__wrapped__(cfg)
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert isinstance(value, float)
    assert value == pytest.approx(written["val/rmse"])


def test_unknown_optimized_metric_names_the_choices(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = compose_train(
        ["trainer.epochs=1", "optimized_metric=val/nope", "trainer.export=false"],
        run_dir=tmp_path,
        fake=True,
    )
    with pytest.raises(SystemExit) as exit_info:
        main.__wrapped__(cfg)
    assert exit_info.value.code == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message.startswith("Error: optimized_metric='val/nope' is not among")
    assert "test/rmse" in message


def test_interrupted_run_resumes_to_the_uninterrupted_state(tmp_path: Path) -> None:
    common = ["trainer.epochs=3", "trainer.tensorboard=false", "trainer.export=false"]
    _, reference = train(compose_train(common, run_dir=tmp_path / "reference", fake=True))
    reference_history = json.loads((tmp_path / "reference" / "metrics.json").read_text())

    run_dir = tmp_path / "interrupted"
    # Fails three steps into the second epoch, after epoch 1's checkpoint.
    fault = fault_after(STEPS_PER_EPOCH + 3)
    with pytest.raises(SimulatedFault):
        train(compose_train([*common, fault], run_dir=run_dir, fake=True))
    assert not (run_dir / "metrics.json").exists()
    assert json.loads((run_dir / "history.json").read_text())["epoch"] == [1]

    _, resumed = train(compose_train(common, run_dir=run_dir, fake=True))
    written = json.loads((run_dir / "metrics.json").read_text())
    assert written["resumed_from_epoch"] == 1
    assert written["epochs"] == 3
    assert written["history"]["epoch"] == [1, 2, 3]
    np.testing.assert_allclose(
        written["history"]["loss"], reference_history["history"]["loss"], rtol=1e-6
    )
    assert int(resumed["optimizer"].iterations.numpy()) == 3 * STEPS_PER_EPOCH
    for got, want in zip(_weights(resumed), _weights(reference), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    for got, want in zip(_optimizer_state(resumed), _optimizer_state(reference), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert written["test/rmse"] == pytest.approx(reference_history["test/rmse"], rel=1e-6)


def test_finished_run_is_not_trained_again_and_more_epochs_continue(tmp_path: Path) -> None:
    common = ["trainer.tensorboard=false", "trainer.export=false"]
    first, _ = train(compose_train([*common, "trainer.epochs=1"], run_dir=tmp_path, fake=True))
    again, objects = train(
        compose_train([*common, "trainer.epochs=1"], run_dir=tmp_path, fake=True)
    )
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["resumed_from_epoch"] == 1
    assert written["train_seconds"] == pytest.approx(
        sum(written["history"]["epoch_seconds"]), abs=1e-3
    )
    assert written["train_seconds"] > 0  # the first run's epoch, not this run's zero
    assert int(objects["optimizer"].iterations.numpy()) == STEPS_PER_EPOCH  # restored, not stepped
    assert again == pytest.approx(first, rel=1e-6)  # the restored model, evaluated again

    train(compose_train([*common, "trainer.epochs=2"], run_dir=tmp_path, fake=True))
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["history"]["epoch"] == [1, 2]
    assert written["resumed_from_epoch"] == 1


def test_resume_refuses_a_changed_model_and_reports_other_changes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    common = ["trainer.tensorboard=false", "trainer.export=false"]
    train(compose_train([*common, "trainer.epochs=1"], run_dir=tmp_path, fake=True))
    changed_model = [*common, "trainer.epochs=2", "model.embedding_dim=6"]
    with pytest.raises(ValueError, match=r"model\.embedding_dim: 4 -> 6.*trainer\.resume=false"):
        train(compose_train(changed_model, run_dir=tmp_path, fake=True))
    with caplog.at_level("WARNING", logger="recsys.run"):
        train(compose_train([*common, "trainer.epochs=2"], run_dir=tmp_path, fake=True))
    assert "trainer.epochs: 1 -> 2" in caplog.text
    assert json.loads((tmp_path / "metrics.json").read_text())["history"]["epoch"] == [1, 2]


def test_resume_false_starts_over(tmp_path: Path) -> None:
    common = ["trainer.epochs=1", "trainer.tensorboard=false", "trainer.export=false"]
    train(compose_train(common, run_dir=tmp_path, fake=True))
    train(compose_train([*common, "trainer.resume=false"], run_dir=tmp_path, fake=True))
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["resumed_from_epoch"] == 0
    assert written["history"]["epoch"] == [1]


def _cli(args: list[str], cwd: Path, multirun: bool = False) -> subprocess.CompletedProcess[str]:
    """Run ``python -m recsys.train`` with the fake data/model configs, from ``cwd``."""
    return subprocess.run(
        [sys.executable, "-m", "recsys.train", *(["-m"] if multirun else []), *FAKE_CLI, *args],
        cwd=cwd,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_command_line_run_killed_then_rerun_resumes(tmp_path: Path) -> None:
    run_dir = tmp_path / "cli run"  # a space: paths must survive the override parser
    args = ["trainer.epochs=2", f"hydra.run.dir='{run_dir}'"]
    failed = _cli([*args, fault_after(STEPS_PER_EPOCH + 1)], cwd=tmp_path)
    assert failed.returncode != 0
    assert "SimulatedFault" in failed.stderr
    assert not (run_dir / "metrics.json").exists()

    done = _cli(args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    written = json.loads((run_dir / "metrics.json").read_text())
    assert written["resumed_from_epoch"] == 1
    assert written["history"]["epoch"] == [1, 2]
    assert (run_dir / "train.log").is_file()
    assert "Resuming from" in (run_dir / "train.log").read_text()
    assert (run_dir / ".hydra" / "overrides.yaml").is_file()
    assert not (tmp_path / "outputs").exists()  # nothing outside the run dir


def test_multirun_two_learning_rates(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    done = _cli(
        [
            "trainer.epochs=1",
            "trainer.export=false",
            "optimized_metric=val/rmse",
            "optimizer.learning_rate=1e-3,3e-2",
            f"hydra.sweep.dir={sweep_dir}",
        ],
        cwd=tmp_path,
        multirun=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rmse = []
    for job, lr in (("0", 1e-3), ("1", 3e-2)):
        job_dir = sweep_dir / job
        written = json.loads((job_dir / "metrics.json").read_text())
        rmse.append(written["val/rmse"])
        assert f"learning_rate: {lr}" in (job_dir / "config.yaml").read_text()
    assert rmse[0] != rmse[1]
    assert (sweep_dir / "multirun.yaml").is_file()

    # The sweep ends with one summary row per job: printed, and as CSV in the sweep dir.
    with (sweep_dir / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["job"] for r in rows] == ["0", "1"]
    for row, lr, value in zip(rows, ("0.001", "0.03"), rmse, strict=True):
        assert f"optimizer.learning_rate={lr}" in row["overrides"]
        assert row["optimized_metric"] == "val/rmse"
        assert float(row["value"]) == pytest.approx(value)
        assert row["status"] == "ok"
        assert Path(row["run_dir"]) == sweep_dir / row["job"]
    assert "Sweep summary" in done.stdout
    assert str(sweep_dir / "1") in done.stdout


# ------------------------------------------------------------ the real experiments

REQUIRED_METRICS = {
    "movielens": {
        "test/top100_accuracy",
        "test/top100_seen_share",
        "test/recall@100",
        "test/ndcg@10",
        "test/popularity_top100_accuracy",
    },
    "movielens_ranking": {"test/rmse", "test/mae"},
    "movielens_autorec": {"test/rmse", "test/mae"},
    "imdb": {"test/accuracy", "test/auc"},
}


@pytest.fixture(scope="module")
def tiny_datasets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-data")
    return {
        "movielens": write_tiny_movielens(root / "ml-100k"),
        "imdb": write_tiny_imdb(root / "imdb"),
        "cache": root / "cache",
    }


def _smoke_overrides(experiment: str, data: dict[str, Path]) -> list[str]:
    common = ["+debug=fast", f"data.data_dir={data['cache']}", "model.embedding_dim=8"]
    if experiment == "movielens_autorec":
        common[-1] = "model.hidden_units=8"
    if experiment == "imdb":
        return [
            *common,
            f"data.path={data['imdb']}",
            "data.max_tokens=200",
            "data.sequence_length=32",
            "data.batch_size=16",
        ]
    return [*common, f"data.path={data['movielens']}", "data.batch_size=64"]


def _signature_inputs(serve: Any) -> dict[str, Any]:
    return dict(serve.structured_input_signature[1])


@pytest.mark.parametrize("experiment", sorted(REQUIRED_METRICS))
def test_experiment_smoke_run(
    experiment: str, tiny_datasets: dict[str, Path], tmp_path: Path
) -> None:
    from recsys._tf import tf

    run_dir = tmp_path / experiment
    cfg = compose_train(
        [f"+experiment={experiment}", *_smoke_overrides(experiment, tiny_datasets)],
        run_dir=run_dir,
    )
    metrics, objects = train(cfg)

    written = json.loads((run_dir / "metrics.json").read_text())
    assert REQUIRED_METRICS[experiment] <= set(written)
    for name in REQUIRED_METRICS[experiment]:
        assert np.isfinite(written[name]), name
        assert written[name] == pytest.approx(metrics[name])
    assert written["history"]["epoch"] == [1]
    assert (run_dir / "curves.png").is_file()
    assert (run_dir / "config.yaml").is_file()
    assert (run_dir / "checkpoints" / "checkpoint").is_file()

    from recsys.serving import latest_version

    loaded = tf.saved_model.load(str(latest_version(run_dir / "export")))
    serve = loaded.signatures["serving_default"]
    inputs = _signature_inputs(serve)
    if experiment == "movielens":
        assert set(inputs) == {"user_id", "k"}
        users = tf.constant(["1", "2", "unknown-user"])
        out = serve(user_id=users, k=tf.constant(10))
        k = out["item_ids"].shape[1]
        assert k == 10
        assert out["item_ids"].dtype == tf.string
        assert out["scores"].dtype == tf.float32
        assert out["item_ids"].shape == out["scores"].shape == (3, k)
        scores = out["scores"].numpy()
        assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first
        catalogue = set(objects["datamodule"].items["item_id"].astype(str))
        assert {i.decode() for i in out["item_ids"].numpy().ravel()} <= catalogue
        top = recommend(run_dir, "1", k=3)  # python -m recsys.recommend RUN_DIR --user-id 1 -k 3
        assert top["item_id"].tolist() == [i.decode() for i in out["item_ids"].numpy()[0][:3]]
        assert all(title.startswith("Movie number") for title in top["title"])
    elif experiment in ("movielens_ranking", "movielens_autorec"):
        assert set(inputs) == {"user_id", "item_id"}
        out = serve(user_id=tf.constant(["1", "2"]), item_id=tf.constant(["1", "3"]))
        rating = out["rating"].numpy().reshape(-1)
        assert out["rating"].dtype == tf.float32
        assert rating.shape == (2,)
        assert np.all(np.isfinite(rating))
    else:
        (name,) = inputs
        out = serve(**{name: tf.constant(["A wonderful, moving film.", "Awful and boring."])})
        probability = out["probability"].numpy().reshape(-1)
        assert probability.shape == (2,)
        assert np.all((probability >= 0) & (probability <= 1))


@pytest.mark.slow
def test_real_retrieval_run_resumes(tiny_datasets: dict[str, Path], tmp_path: Path) -> None:
    """The retrieval experiment, interrupted in epoch 2 of 3 and rerun, ends where an
    uninterrupted run ends: exactly when tf.data knows the epoch length (see the warning
    in recsys.train), otherwise within Adam's one-step bias-correction shift."""
    common = [
        "+experiment=movielens",
        *_smoke_overrides("movielens", tiny_datasets),
        "trainer.epochs=3",
        "trainer.limit_train_batches=null",
        "trainer.export=false",
    ]
    _, reference = train(compose_train(common, run_dir=tmp_path / "reference"))
    steps = sum(1 for _ in reference["datamodule"].train_dataset())
    run_dir = tmp_path / "interrupted"
    with pytest.raises(SimulatedFault):
        train(compose_train([*common, fault_after(steps + 2)], run_dir=run_dir))
    metrics, resumed = train(compose_train(common, run_dir=run_dir))

    written = json.loads((run_dir / "metrics.json").read_text())
    assert written["resumed_from_epoch"] == 1
    assert written["history"]["epoch"] == [1, 2, 3]
    exact = int(resumed["datamodule"].train_dataset().cardinality()) >= 0
    tolerance = {"rtol": 1e-6, "atol": 1e-7} if exact else {"rtol": 0.05, "atol": 2e-3}
    for got, want in zip(_weights(resumed), _weights(reference), strict=True):
        np.testing.assert_allclose(got, want, **tolerance)
    reference_metrics = json.loads((tmp_path / "reference" / "metrics.json").read_text())
    for name in REQUIRED_METRICS["movielens"]:
        assert metrics[name] == pytest.approx(reference_metrics[name], abs=tolerance["atol"] * 10)


@pytest.mark.skipif(
    importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is None,
    reason="hydra-optuna-sweeper is not installed",
)
@pytest.mark.slow  # several trials of a real sweep (about 25 s)
def test_optuna_search_runs_trials_and_reports_the_best(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "optuna"
    done = _cli(
        [
            "+hparams_search=movielens_optuna",
            "hydra.sweeper.n_trials=2",
            "hydra.sweeper.sampler.n_startup_trials=2",
            "hydra.sweeper.direction=minimize",
            "optimized_metric=val/rmse",
            "trainer.epochs=1",
            "trainer.export=false",
            f"hydra.sweep.dir={sweep_dir}",
        ],
        cwd=tmp_path,
        multirun=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rmse = [json.loads((sweep_dir / j / "metrics.json").read_text())["val/rmse"] for j in "01"]
    results = (sweep_dir / "optimization_results.yaml").read_text()
    assert "best_value" in results
    assert f"{min(rmse):.6f}"[:6] in results


def test_entry_points_do_not_import_tensorflow_at_import_time() -> None:
    """The hardware plan must be applied before TensorFlow starts (recsys.launch)."""
    code = (
        "import sys, recsys.train, recsys.run, recsys.recommend; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tf_keras')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip() == "[]"
