"""Every bad input gets one clear message: non-zero exit, the key or the file named,
no traceback, nothing partial left in the data cache or the run directory.

The command-line table is ``recsys.benchmarks.faults.BAD_INPUTS`` (config overrides
and broken data files, each run as ``python -m recsys.train`` on a small dataset in
MovieLens-100K's layout); a subset runs in the default suite, the rest with
``-m slow``. The in-process table checks the keys read after TensorFlow starts
(trainer, optimizer, seed) through ``main`` on the fake data and model, cheaply.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from recsys.benchmarks.faults import (
    BAD_INPUTS,
    TRACEBACK,
    BadInput,
    check_bad_input,
    partial_files,
    write_movielens_100k,
)
from recsys.train import main
from tests.helpers.training import compose_train, process_state_restored

# Cheap ones (caught before TensorFlow starts, a few seconds each) and one that is not.
DEFAULT_SUITE = {
    "unknown key",
    "override syntax",
    "empty key",
    "test fraction > 1",
    "unknown data key",
    "NaN rating",
    "truncated ratings file",
    "truncated zip",
    "wrong checksum",
    "zero epochs",
}


@pytest.fixture(autouse=True)
def _restore_process_state() -> Iterator[None]:
    with process_state_restored():
        yield


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_movielens_100k(tmp_path_factory.mktemp("data") / "ml-100k")


def test_the_table_tries_at_least_30_bad_inputs_of_every_kind() -> None:
    names = [case.name for case in BAD_INPUTS]
    assert len(names) == len(set(names)) >= 30
    assert sum(case.prepare is not None for case in BAD_INPUTS) >= 8  # broken data files
    assert sum(not case.before_tensorflow for case in BAD_INPUTS) >= 10
    assert set(names) >= DEFAULT_SUITE


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(
            case, id=case.name, marks=() if case.name in DEFAULT_SUITE else pytest.mark.slow
        )
        for case in BAD_INPUTS
    ],
)
def test_bad_input_on_the_command_line(case: BadInput, dataset: Path, tmp_path: Path) -> None:
    result = check_bad_input(case, dataset, tmp_path / "case", tmp_path / "logs")
    assert result.exit_status not in (0, None), result.message
    assert result.names_it, f"the message does not name {case.names!r}: {result.message}"
    assert result.no_traceback, result.message
    assert result.nothing_partial, partial_files(tmp_path / "case")


IN_PROCESS = [
    ("trainer.epochs=0", "trainer.epochs=0 is not valid"),
    ("trainer.epochs=2.5", "trainer.epochs=2.5 is not valid"),
    ("trainer.limit_train_batches=0", "trainer.limit_train_batches=0"),
    ("trainer.limit_val_batches=-1", "trainer.limit_val_batches=-1"),
    ("trainer.checkpoint_every_steps=1.5", "trainer.checkpoint_every_steps=1.5"),
    ("trainer.checkpoint_every_seconds=-1", "trainer.checkpoint_every_seconds=-1"),
    ("trainer.checkpoint_max_to_keep=0", "trainer.checkpoint_max_to_keep=0"),
    ("trainer.tensorboard=yes", "trainer.tensorboard='yes'"),
    ("trainer.validate=1", "trainer.validate=1"),
    ("trainer.callbacks=5", "trainer.callbacks=5"),
    (
        "trainer.callbacks=[{_target_:tf_keras.callbacks.BackupAndRestore,backup_dir:/tmp/b}]",
        "trainer.callbacks=",
    ),
    ("+trainer.patience=3", "trainer.patience is not a setting of recsys.training.Trainer"),
    ("optimizer.beta_1=1.5", "optimizer.beta_1=1.5 is not valid"),
    ("+optimizer.momentum=0.9", "optimizer.momentum=0.9 is not valid"),
    (
        "optimizer._target_=tf_keras.optimizers.Nope",
        "optimizer._target_='tf_keras.optimizers.Nope'",
    ),
    ("seed=abc", "seed='abc' is not valid"),
    ("seed=1.5", "seed=1.5 is not valid"),
]


@pytest.mark.parametrize(("override", "message"), IN_PROCESS, ids=[o for o, _ in IN_PROCESS])
def test_bad_value_read_after_tensorflow_starts(
    override: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    epochs = [] if "trainer.epochs" in override else ["trainer.epochs=1"]
    cfg = compose_train([*epochs, override], run_dir=tmp_path, fake=True)
    with pytest.raises(SystemExit) as exit_info:
        main.__wrapped__(cfg)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("Error: "), err[-500:]
    assert message in err, err[-500:]
    assert TRACEBACK not in err
    assert partial_files(tmp_path) == []


def test_learning_rate_zero_is_refused_for_any_optimizer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = compose_train(
        ["optimizer=adagrad", "optimizer.learning_rate=0"], run_dir=tmp_path, fake=True
    )
    with pytest.raises(SystemExit):
        main.__wrapped__(cfg)
    assert "optimizer.learning_rate=0 is not valid: `learning_rate` must be a number > 0" in (
        capsys.readouterr().err
    )
