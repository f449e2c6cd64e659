"""Real faults: kill -9 and SIGTERM on training processes, corrupted checkpoints, two
runs on one directory, and what step checkpoints save.

The subprocess tests run ``python -m recsys.train`` on the fake data and model
(tests/configs) and send real signals from outside, watching the run directory
(``recsys.benchmarks.faults``); the in-process ones send this process a real signal
through the operating system (``tests.helpers.training.SendSignal``). Every resumed
run is compared with an uninterrupted one: metrics, history, weights and optimizer
state must be equal (the fake model's ops are deterministic).
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from recsys.benchmarks.faults import (
    TRACEBACK,
    committed_checkpoints,
    kill_during_write,
    start_training,
    wait_for,
)
from recsys.run import RunDirectoryBusy, RunLock, RunPaths, remove_partial_files, replace_directory
from recsys.train import train
from recsys.training import CheckpointError, Position, TrainingInterrupted
from tests.helpers.training import (
    FAKE_CLI,
    cli_env,
    compose_train,
    process_state_restored,
    signal_after,
)

# FakeDataModule: 168 training rows; batch 4 -> 42 steps per epoch (batch 16 -> 11).
SMALL_BATCHES = ("data.batch_size=4",)
STEPS = 42
EVERY = 3
CLI_COMMON = (*FAKE_CLI, *SMALL_BATCHES, "trainer.export=false")


@pytest.fixture(autouse=True)
def _restore_process_state() -> Iterator[None]:
    with process_state_restored():
        yield


def _metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def _assert_same_run(got: dict, want: dict) -> None:
    """Final metrics and every history curve equal (epoch times aside)."""
    assert got["status"] == "completed"
    for key in [k for k in want if k.startswith(("test/", "val/"))]:
        assert got[key] == want[key], key
    for name, values in want["history"].items():
        if name != "epoch_seconds":
            assert got["history"][name] == values, name


def _start(args: list[str], run_dir: Path, logs: Path, epochs: int = 2):
    overrides = [*CLI_COMMON, f"trainer.epochs={epochs}", *args]
    return start_training(overrides, run_dir, logs, env=cli_env())


# ------------------------------------------------------------- real kill -9


def test_kill_9_at_a_random_step_then_rerun_ends_like_an_uninterrupted_run(
    tmp_path: Path,
) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    every = f"trainer.checkpoint_every_steps={EVERY}"
    reference = _start([], tmp_path / "reference", tmp_path / "logs")  # runs alongside
    run_dir = tmp_path / "killed"
    victim = _start([every], run_dir, tmp_path / "logs")
    # A random step after the first step checkpoint, before the last one.
    target = rng.randrange(EVERY, 2 * STEPS - EVERY)
    reached = wait_for(lambda: max(committed_checkpoints(run_dir), default=0) >= target, victim)
    assert reached and victim.alive, (seed, target, victim.err()[-2000:])
    victim.send(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL
    before = committed_checkpoints(run_dir)
    assert before and not (run_dir / "metrics.json").exists()

    rerun = _start([every], run_dir, tmp_path / "logs")
    assert rerun.wait() == 0, rerun.err()[-3000:]
    assert reference.wait() == 0, reference.err()[-3000:]
    resumed = rerun.resumed_from()
    assert resumed is not None and resumed >= before[-1] - EVERY, (seed, before, resumed)
    assert "Took over the lock" in rerun.log()  # the killed run's lock was stale
    written = _metrics(run_dir)
    assert written["resumed_from_epoch"] * STEPS + written["resumed_from_step"] == resumed
    _assert_same_run(written, _metrics(tmp_path / "reference"))


@pytest.mark.slow
def test_kill_9_during_a_checkpoint_write_is_survived(tmp_path: Path) -> None:
    """The process is frozen the moment a checkpoint's temporary folder appears and
    killed while the folder is still there: the half-written checkpoint is ignored."""
    every = "trainer.checkpoint_every_steps=2"
    reference = _start([], tmp_path / "reference", tmp_path / "logs")
    run_dir = tmp_path / "killed"
    victim = _start([every], run_dir, tmp_path / "logs")
    assert wait_for(lambda: len(committed_checkpoints(run_dir)) >= 2, victim)
    temporary = kill_during_write(victim)
    assert temporary is not None, victim.err()[-2000:]
    number = int(temporary.split("-")[1].split("_")[0])
    assert number not in committed_checkpoints(run_dir)  # never listed: ignored

    rerun = _start([every], run_dir, tmp_path / "logs")
    assert rerun.wait() == 0, rerun.err()[-3000:]
    assert rerun.resumed_from() < number
    assert not (run_dir / "checkpoints" / temporary).exists()  # cleaned up
    assert reference.wait() == 0
    _assert_same_run(_metrics(run_dir), _metrics(tmp_path / "reference"))


@pytest.mark.slow
def test_sigterm_from_outside_stops_at_the_next_step_and_the_rerun_redoes_nothing(
    tmp_path: Path,
) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    every = f"trainer.checkpoint_every_steps={EVERY}"
    reference = _start([], tmp_path / "reference", tmp_path / "logs")
    run_dir = tmp_path / "stopped"
    run = _start([every], run_dir, tmp_path / "logs")
    target = rng.randrange(EVERY, 2 * STEPS - EVERY)
    assert wait_for(lambda: max(committed_checkpoints(run_dir), default=0) >= target, run)
    last_periodic = committed_checkpoints(run_dir)[-1]
    run.send(signal.SIGTERM)
    assert run.wait() == 128 + signal.SIGTERM
    err = run.err()
    assert "Interrupted by SIGTERM: saved checkpoint ckpt-" in err
    assert TRACEBACK not in err and TRACEBACK not in run.out()
    assert (run_dir / ".lock").read_text() == ""  # released on the way out
    interrupted = _metrics(run_dir)
    assert interrupted["status"] == "interrupted"
    stop = interrupted["interrupted"]
    stopped_at = stop["epoch"] * STEPS + stop["step"]
    assert committed_checkpoints(run_dir)[-1] == stopped_at >= last_periodic

    rerun = _start([every], run_dir, tmp_path / "logs")
    assert rerun.wait() == 0, rerun.err()[-3000:]
    redone = stopped_at - rerun.resumed_from()
    assert 0 <= redone <= EVERY, seed
    assert reference.wait() == 0
    _assert_same_run(_metrics(run_dir), _metrics(tmp_path / "reference"))


# --------------------------------------------------- signals, in this process


def _weights(objects: dict) -> list[np.ndarray]:
    return [w.numpy() for w in objects["model"].weights]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_at_the_next_step_and_the_rerun_continues_exactly(
    signum: int, tmp_path: Path
) -> None:
    common = [
        *SMALL_BATCHES,
        "trainer.epochs=2",
        "trainer.export=false",
        "trainer.tensorboard=false",
    ]
    _, reference = train(compose_train(common, run_dir=tmp_path / "reference", fake=True))
    run_dir = tmp_path / "stopped"
    sent_after = STEPS + 7  # 7 steps into the second epoch
    handler_before = signal.getsignal(signum)
    with pytest.raises(TrainingInterrupted) as stopped:
        train(
            compose_train([*common, signal_after(sent_after, signum)], run_dir=run_dir, fake=True)
        )
    assert signal.getsignal(signum) == handler_before  # put back
    # The signal arrived after step 49; the run saved after the next step and stopped.
    assert stopped.value.exit_code == 128 + signum
    assert (stopped.value.epoch, stopped.value.step) == (1, 8)
    assert f"Interrupted by {signal.Signals(signum).name}" in str(stopped.value)
    assert committed_checkpoints(run_dir)[-1] == sent_after + 1
    written = _metrics(run_dir)
    assert written["status"] == "interrupted" and written["history"]["epoch"] == [1]

    _, resumed = train(compose_train(common, run_dir=run_dir, fake=True))
    written = _metrics(run_dir)
    assert (written["resumed_from_epoch"], written["resumed_from_step"]) == (1, 8)
    _assert_same_run(written, _metrics(tmp_path / "reference"))
    assert int(resumed["optimizer"].iterations.numpy()) == 2 * STEPS
    for got, want in zip(_weights(resumed), _weights(reference), strict=True):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(
        resumed["optimizer"].variables, reference["optimizer"].variables, strict=True
    ):
        np.testing.assert_array_equal(got.numpy(), want.numpy())


def _step_checkpoint_run(tmp_path: Path, *overrides: str) -> list[int]:
    """Global steps of the checkpoints a 2-epoch fake run (11 steps an epoch) saved."""
    cfg = compose_train(
        [
            "trainer.epochs=2",
            "trainer.checkpoint_every_steps=4",
            "trainer.export=false",
            "trainer.tensorboard=false",
            *overrides,
        ],
        run_dir=tmp_path,
        fake=True,
    )
    _, objects = train(cfg)
    return [int(Path(p).name.split("-")[1]) for p in objects["fit"].checkpoints]


def test_step_checkpoints_every_n_steps_and_at_epoch_ends_bounded(tmp_path: Path) -> None:
    saved = _step_checkpoint_run(tmp_path, "trainer.checkpoint_max_to_keep=3")
    # 11 steps per epoch: every 4 global steps, and each epoch end (11, 22).
    assert saved == [4, 8, 11, 12, 16, 20, 22]
    assert committed_checkpoints(tmp_path) == [16, 20, 22]
    files = {p.name.split(".")[0] for p in (tmp_path / "checkpoints").glob("ckpt-*")}
    assert files == {"ckpt-16", "ckpt-20", "ckpt-22"}


def test_step_checkpoints_with_several_steps_per_execution(tmp_path: Path) -> None:
    """Keras calls the batch hook once per 3 steps: saves where a multiple of 4 was crossed."""
    saved = _step_checkpoint_run(
        tmp_path, "trainer.checkpoint_max_to_keep=10", "distribute.steps_per_execution=3"
    )
    # 11 steps per epoch run as 3 + 3 + 3 + 2: hooks after steps 3, 6, 9 (11 is the end).
    assert saved == [6, 9, 11, 14, 17, 20, 22]


# --------------------------------------------------------- corrupted checkpoints


def _stopped_run(tmp_path: Path, common: list[str]) -> Path:
    """A run stopped by SIGTERM at step 21 (every 4 steps: ckpt-20, then ckpt-21)."""
    run_dir = tmp_path / "run"
    with pytest.raises(TrainingInterrupted):
        train(compose_train([*common, signal_after(20)], run_dir=run_dir, fake=True))
    assert committed_checkpoints(run_dir) == [20, 21]
    return run_dir


CORRUPTED_COMMON = [
    "trainer.epochs=3",
    "trainer.checkpoint_every_steps=4",
    "trainer.export=false",
    "trainer.tensorboard=false",
]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict:
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    with process_state_restored():
        train(compose_train(CORRUPTED_COMMON, run_dir=run_dir, fake=True))
    return _metrics(run_dir)


@pytest.mark.parametrize(
    "damage",
    ["truncate", pytest.param("flip a byte", marks=pytest.mark.slow), "delete"],
)
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(
    damage: str, tmp_path: Path, caplog: pytest.LogCaptureFixture, uninterrupted: dict
) -> None:
    run_dir = _stopped_run(tmp_path, CORRUPTED_COMMON)
    data = run_dir / "checkpoints" / "ckpt-21.data-00000-of-00001"
    if damage == "truncate":
        data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    elif damage == "flip a byte":
        raw = bytearray(data.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        data.write_bytes(bytes(raw))
    else:
        data.unlink()
    with caplog.at_level(logging.WARNING, logger="recsys.training.checkpoints"):
        train(compose_train(CORRUPTED_COMMON, run_dir=run_dir, fake=True))
    assert "Checkpoint ckpt-21 is unusable" in caplog.text
    assert "Falling back to checkpoint ckpt-20" in caplog.text
    written = _metrics(run_dir)
    assert (written["resumed_from_epoch"], written["resumed_from_step"]) == (1, 9)  # step 20
    _assert_same_run(written, uninterrupted)
    assert {p.name.split(".")[0] for p in (run_dir / "checkpoints" / "unusable").iterdir()} == {
        "ckpt-21"
    }


def test_an_unreadable_checkpoint_index_is_rebuilt_from_the_files(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, uninterrupted: dict
) -> None:
    run_dir = _stopped_run(tmp_path, CORRUPTED_COMMON)
    (run_dir / "checkpoints" / "checkpoint").write_text("}{ not a checkpoint index")
    with caplog.at_level(logging.WARNING, logger="recsys.training.checkpoints"):
        train(compose_train(CORRUPTED_COMMON, run_dir=run_dir, fake=True))
    assert "cannot be read" in caplog.text
    written = _metrics(run_dir)
    assert (written["resumed_from_epoch"], written["resumed_from_step"]) == (1, 10)  # step 21
    _assert_same_run(written, uninterrupted)


def test_checkpoint_files_no_index_lists_are_used_when_whole_else_removed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, uninterrupted: dict
) -> None:
    """Without an index nothing was committed (a first save cut before its index was
    written): a whole checkpoint found in the folder is used, broken files removed."""
    run_dir = _stopped_run(tmp_path, CORRUPTED_COMMON)
    (run_dir / "checkpoints" / "checkpoint").unlink()
    train(compose_train(CORRUPTED_COMMON, run_dir=run_dir, fake=True))
    written = _metrics(run_dir)
    assert (written["resumed_from_epoch"], written["resumed_from_step"]) == (1, 10)  # step 21
    _assert_same_run(written, uninterrupted)

    broken = tmp_path / "broken"
    broken.mkdir()
    run_dir = _stopped_run(broken, CORRUPTED_COMMON)
    (run_dir / "checkpoints" / "checkpoint").unlink()
    for data in (run_dir / "checkpoints").glob("ckpt-*.data-*"):
        data.write_bytes(data.read_bytes()[:10])
    with caplog.at_level(logging.WARNING, logger="recsys.training.checkpoints"):
        train(compose_train(CORRUPTED_COMMON, run_dir=run_dir, fake=True))
    assert "a checkpoint save that was cut short" in caplog.text
    written = _metrics(run_dir)
    assert written["resumed_from_epoch"] == 0 and written["resumed_from_step"] == 0
    _assert_same_run(written, uninterrupted)


def test_no_usable_checkpoint_stops_the_run_instead_of_starting_over(tmp_path: Path) -> None:
    run_dir = _stopped_run(tmp_path, CORRUPTED_COMMON)
    for data in (run_dir / "checkpoints").glob("ckpt-*.data-*"):
        data.write_bytes(b"")
    with pytest.raises(CheckpointError) as refused:
        train(compose_train(CORRUPTED_COMMON, run_dir=run_dir, fake=True))
    message = str(refused.value)
    assert "No usable checkpoint" in message and "will not start over" in message
    assert "ckpt-20" in message and "ckpt-21" in message and "trainer.resume=false" in message
    assert _metrics(run_dir)["status"] == "interrupted"  # nothing trained, nothing rewritten
    assert committed_checkpoints(run_dir) == [20, 21]  # left for the user to decide

    # trainer.resume=false is the way to start over: it deletes them.
    train(compose_train([*CORRUPTED_COMMON, "trainer.resume=false"], run_dir=run_dir, fake=True))
    written = _metrics(run_dir)
    assert written["status"] == "completed" and written["resumed_from_epoch"] == 0


# ----------------------------------------------------------- one run per directory


def test_a_second_run_refuses_a_live_run_s_directory_and_takes_over_after_kill_9(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run_dir = tmp_path / "shared"
    first = _start(["trainer.checkpoint_every_steps=10"], run_dir, tmp_path, epochs=500)
    assert wait_for(lambda: bool(committed_checkpoints(run_dir)), first), first.err()[-2000:]

    second = _start([], run_dir, tmp_path)
    assert second.wait() == 3
    err = second.err()
    assert f"is in use by another run: pid {first.pid} on host" in err
    assert f"kill {first.pid}" in err and TRACEBACK not in err
    assert first.alive  # refused while the first one lives
    assert str(first.pid) in (run_dir / ".lock").read_text()

    first.send(signal.SIGKILL)
    assert first.wait() == -signal.SIGKILL
    with caplog.at_level(logging.WARNING):
        cfg = compose_train(
            [*SMALL_BATCHES, "trainer.epochs=1", "trainer.export=false"], run_dir=run_dir, fake=True
        )
        train(cfg)
    assert f"Took over the lock of a run that is gone: {{'pid': {first.pid}" in caplog.text
    assert _metrics(run_dir)["status"] == "completed"
    assert (run_dir / ".lock").read_text() == ""  # released: names no one


def test_run_lock_in_one_process(tmp_path: Path) -> None:
    held = RunLock(tmp_path).acquire()
    with pytest.raises(RunDirectoryBusy, match=rf"pid {os.getpid()} on host"):
        RunLock(tmp_path).acquire()
    held.release()
    again = RunLock(tmp_path).acquire()
    assert again.stale_owner is None  # released cleanly: not stale
    again.release()
    (tmp_path / ".lock").write_text('{"pid": 999999999, "host": "elsewhere", "started": 0}')
    taken = RunLock(tmp_path).acquire()
    assert taken.stale_owner["pid"] == 999999999
    taken.release()


# --------------------------------------------------------- complete or absent files


def test_an_export_that_fails_keeps_the_previous_one(tmp_path: Path) -> None:
    export = tmp_path / "export"
    export.mkdir()
    (export / "saved_model.pb").write_text("old")
    with pytest.raises(RuntimeError), replace_directory(export) as tmp:
        tmp.mkdir()
        (tmp / "saved_model.pb").write_text("half")
        raise RuntimeError("killed mid-export")
    assert (export / "saved_model.pb").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]
    with replace_directory(export) as tmp:
        tmp.mkdir()
        (tmp / "saved_model.pb").write_text("new")
    assert (export / "saved_model.pb").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_files_a_killed_run_left_under_temporary_names_are_removed(tmp_path: Path) -> None:
    run = RunPaths(tmp_path)
    for name in (".export.tmp-123", ".metrics.json.tmp-9", "metrics.json.tmp"):
        (tmp_path / name).mkdir() if "export" in name else (tmp_path / name).write_text("x")
    (tmp_path / "metrics.json").write_text("{}")
    removed = {p.name for p in remove_partial_files(run)}
    assert removed == {".export.tmp-123", ".metrics.json.tmp-9", "metrics.json.tmp"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_position_counts_global_steps() -> None:
    assert Position(epoch=2, step=5).global_step(11) == 27
    assert Position().global_step(11) == 0
