"""``distribute=multi_worker``: roles, scratch directories, the loopback launcher, recsys.train.

Every worker of a MultiWorkerMirroredStrategy run runs the same ``recsys.train``
command; only the chief (worker 0) keeps files, the others write to
``DIR/workertemp_<i>`` and delete it. The launcher's process handling is tested with
plain Python commands (no TensorFlow, a second each); the run through recsys.train
starts two TensorFlow processes per run and is `slow`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from recsys._tf import keras
from recsys.cluster import EXIT_CLUSTER_FAILURE, main
from recsys.distribute import TFConfigError
from recsys.distribute.workers import (
    WorkerRole,
    chief_run_dir,
    is_scratch_dir,
    multi_worker_role,
    worker_argv,
)
from tests.helpers.training import PROJECT_ROOT, cli_env, write_tiny_movielens

FAKE_TIMEOUT = 120
CLUSTER_TIMEOUT = 900
WORKERS = {"worker": ["h:1", "h:2", "h:3"]}


def env_of(cluster, task_type, index):
    return {
        "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}})
    }


# ------------------------------------------------------------------------ roles


@pytest.mark.parametrize(
    ("cluster", "task", "expected"),
    [
        (WORKERS, ("worker", 0), WorkerRole("worker", 0, is_chief=True)),
        (WORKERS, ("worker", 2), WorkerRole("worker", 2, is_chief=False)),
        # With a chief task, worker 0 is not the chief (tf.distribute's rule).
        ({"chief": ["c:1"], **WORKERS}, ("worker", 0), WorkerRole("worker", 0, is_chief=False)),
        ({"chief": ["c:1"], **WORKERS}, ("chief", 0), WorkerRole("chief", 0, is_chief=True)),
        # Parameter-server clusters: only the chief runs a program; no role here.
        ({"chief": ["c:1"], "worker": ["h:1"], "ps": ["p:1"]}, ("worker", 0), None),
    ],
)
def test_the_chief_is_the_chief_task_or_worker_0(cluster, task, expected):
    assert multi_worker_role(env_of(cluster, *task)) == expected


def test_no_tf_config_means_no_role_and_a_broken_one_is_refused():
    assert multi_worker_role({}) is None
    with pytest.raises(TFConfigError, match="not valid JSON"):
        multi_worker_role({"TF_CONFIG": "{nope"})


def test_a_non_chief_runs_in_a_scratch_dir_inside_the_chiefs_run_dir():
    role = WorkerRole("worker", 2, is_chief=False)
    argv = ["+experiment=movielens", "hydra.run.dir=/a", "hydra.run.dir=/runs/ml/", "x=1"]
    rewritten, scratch = worker_argv(argv, role)
    # The last hydra.run.dir wins for Hydra, so that is the one rewritten.
    assert rewritten == [
        "+experiment=movielens",
        "hydra.run.dir=/a",
        "hydra.run.dir=/runs/ml/workertemp_2",
        "x=1",
    ]
    assert scratch == Path("/runs/ml/workertemp_2")
    assert is_scratch_dir(scratch) and not is_scratch_dir("/runs/ml")
    assert chief_run_dir(scratch) == chief_run_dir("/runs/ml") == Path("/runs/ml")
    quoted, _ = worker_argv(["hydra.run.dir='/my runs/ml'"], role)
    assert quoted == ["hydra.run.dir='/my runs/ml/workertemp_2'"]


def test_the_chief_and_other_processes_keep_their_arguments():
    argv = ["hydra.run.dir=/runs/ml"]
    assert worker_argv(argv, WorkerRole("worker", 0, is_chief=True)) == (argv, None)
    assert worker_argv(argv, None) == (argv, None)


def test_a_non_chief_needs_the_shared_run_dir_and_no_multirun():
    role = WorkerRole("worker", 1, is_chief=False)
    with pytest.raises(TFConfigError, match=r"same hydra.run.dir=DIR.*DIR/workertemp_1"):
        worker_argv(["distribute=multi_worker"], role)
    with pytest.raises(TFConfigError, match="multirun"):
        worker_argv(["-m", "hydra.run.dir=/r"], role)


# ------------------------------------------------------------------------ the launcher

SHOW_TASK = """
import json, os, sys
task = json.loads(os.environ["TF_CONFIG"])
assert os.environ.get("TF_GRPC_REUSE_PORT") == "1"
print("task", task["task"]["index"], "of", len(task["cluster"]["worker"]), flush=True)
sys.exit(int(os.environ.get("EXIT_" + str(task["task"]["index"]), "0")))
"""

# Worker 1 fails at once; the others would run for minutes if nobody stopped them.
ONE_FAILS = """
import json, os, sys, time
index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
if index == 1:
    print("worker 1 gives up", flush=True)
    sys.exit(7)
open(os.path.join(sys.argv[1], f"pid-{index}"), "w").write(str(os.getpid()))
time.sleep(600)
"""


def run_launcher(tmp_path, source, *args, workers=2, env=None, extra=()):
    argv = [sys.executable, "-m", "recsys.cluster", "local", "--mode", "multi_worker"]
    argv += ["--workers", str(workers), "--log-dir", str(tmp_path / "logs"), "--grace", "2"]
    argv += [*extra, "--", sys.executable, "-c", textwrap.dedent(source), *args]
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=FAKE_TIMEOUT,
        env={**cli_env(), **(env or {})},
        cwd=PROJECT_ROOT,
    )


def test_each_worker_runs_the_command_with_its_own_tf_config(tmp_path):
    done = run_launcher(tmp_path, SHOW_TASK, workers=3)
    assert done.returncode == 0, done.stderr
    assert "task 0 of 3" in done.stdout  # worker 0 talks to the terminal
    for index in (1, 2):
        log = (tmp_path / "logs" / f"worker-{index}.log").read_text()
        assert f"task {index} of 3" in log
    assert "all 3 workers exited with code 0" in done.stderr


def test_worker_0s_failure_is_the_launchers_status(tmp_path):
    done = run_launcher(tmp_path, SHOW_TASK, env={"EXIT_0": "5"})
    assert done.returncode == 5, done.stderr
    assert "worker 0" in done.stderr and "exited with code 5" in done.stderr


def test_a_failing_worker_is_reported_and_the_others_stopped(tmp_path):
    done = run_launcher(tmp_path, ONE_FAILS, str(tmp_path))
    assert done.returncode == EXIT_CLUSTER_FAILURE, done.stderr
    assert "worker 1" in done.stderr and "exited with code 7" in done.stderr
    assert "worker 1 gives up" in done.stderr  # the end of its log
    # Worker 0 was stopped, not left running for its 600 s.
    pid = int((tmp_path / "pid-0").read_text()) if (tmp_path / "pid-0").exists() else None
    if pid is not None:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()


def test_multi_worker_mode_refuses_parameter_servers(capsys):
    with pytest.raises(SystemExit):
        main(["local", "--mode", "multi_worker", "--ps", "2", "--", "true"])
    assert "runs no parameter servers" in capsys.readouterr().err


# ------------------------------------------------------------------------ through recsys.train


class DumpWeights(keras.callbacks.Callback):
    """Test-only: each worker writes its model and optimizer variables at the end of fit."""

    def __init__(self, directory: str) -> None:
        super().__init__()
        self.directory = directory

    def on_train_end(self, logs=None):
        index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
        variables = [*self.model.weights, *self.model.optimizer.variables()]
        np.savez(
            Path(self.directory) / f"worker-{index}.npz",
            **{f"v{i}": v.numpy() for i, v in enumerate(variables)},
        )


class SignalOneWorker(keras.callbacks.Callback):
    """Test-only: SIGTERM to this process after one training batch, on one worker only."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index
        self.sent = False

    def on_train_batch_end(self, batch, logs=None):
        me = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
        if me == self.index and not self.sent:
            self.sent = True
            os.kill(os.getpid(), signal.SIGTERM)


TINY = (
    "+experiment=movielens",
    "data.batch_size=64",
    "data.val_fraction=0.15",
    "trainer.limit_train_batches=3",
    "trainer.tensorboard=false",
    "trainer.checkpoint_every_steps=2",
    "trainer.verbose=2",
    "hardware.allocator=none",
)


def files_of(run: Path) -> set[str]:
    return {str(p.relative_to(run)) for p in run.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_two_workers_through_recsys_train(tmp_path):
    """`recsys.cluster local --mode multi_worker --workers 2 -- python -m recsys.train ...`:
    both complete, the chief's run directory holds what a one-process run writes, the
    replicas end identical, the other worker leaves nothing behind, and a second run
    resumes both workers from the chief's checkpoint."""
    data = write_tiny_movielens(tmp_path / "ml-100k")
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    run = tmp_path / "run"
    common = [*TINY, f"data.path={data}", f"data.data_dir={tmp_path / 'cache'}"]
    dump = f"trainer.callbacks=[{{_target_:{__name__}.DumpWeights,directory:'{dumps}'}}]"

    def workers(epochs: int) -> subprocess.CompletedProcess:
        argv = [sys.executable, "-m", "recsys.cluster", "local", "--mode", "multi_worker"]
        argv += ["--workers", "2", "--log-dir", str(tmp_path / "logs"), "--"]
        argv += [sys.executable, "-m", "recsys.train", *common, "distribute=multi_worker"]
        argv += [f"trainer.epochs={epochs}", dump, f"hydra.run.dir={run}"]
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=CLUSTER_TIMEOUT, env=cli_env()
        )

    first = workers(1)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-5000:]
    second = workers(2)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-5000:]
    log_1 = (tmp_path / "logs" / "worker-1.log").read_text()
    # Both workers resumed from the chief's epoch-1 checkpoint (worker 1 read it there).
    assert "Resuming from" in second.stderr + second.stdout
    assert f"Resuming from {run / 'checkpoints' / 'ckpt-3'}" in log_1
    assert "Training epochs 2..2" in log_1

    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["epochs"] == 2
    assert metrics["resumed_from_epoch"] == 1
    assert 0.0 <= metrics["test/top100_accuracy"] <= 1.0
    assert not list(run.glob("workertemp_*")), sorted(files_of(run))

    # Replicas identical: every model and optimizer variable, both workers, bit for bit.
    one, two = (np.load(dumps / f"worker-{i}.npz") for i in range(2))
    assert sorted(one.files) == sorted(two.files) and len(one.files) > 4
    for name in one.files:
        np.testing.assert_array_equal(one[name], two[name], err_msg=name)

    # The chief's files are the set a one-process run of the same config writes.
    local = tmp_path / "local"
    argv = [sys.executable, "-m", "recsys.train", *common, "trainer.epochs=2"]
    done = subprocess.run(
        [*argv, f"hydra.run.dir={local}"],
        capture_output=True,
        text=True,
        timeout=CLUSTER_TIMEOUT,
        env={k: v for k, v in cli_env().items() if k != "TF_CONFIG"},
    )
    assert done.returncode == 0, done.stderr[-5000:]
    assert files_of(run) == files_of(local)
    assert "checkpoints/ckpt-6.index" in files_of(run)
    # Only the chief's lines in its log: worker 1 logged to its own (deleted) directory.
    assert "workertemp_1" not in (run / "train.log").read_text()


@pytest.mark.slow
def test_a_signal_to_one_worker_stops_every_worker_at_the_epoch_end(tmp_path):
    """SIGTERM reaches worker 1 only, in epoch 1 of 2: the workers agree at the epoch
    end, both save ckpt-3 and stop; the chief records an interrupted run."""
    data = write_tiny_movielens(tmp_path / "ml-100k")
    run = tmp_path / "run"
    argv = [sys.executable, "-m", "recsys.cluster", "local", "--mode", "multi_worker"]
    argv += ["--workers", "2", "--log-dir", str(tmp_path / "logs"), "--"]
    argv += [sys.executable, "-m", "recsys.train", *TINY, "distribute=multi_worker"]
    argv += [f"data.path={data}", f"data.data_dir={tmp_path / 'cache'}", "trainer.epochs=2"]
    argv += ["trainer.checkpoint_every_steps=0"]
    argv += [f"trainer.callbacks=[{{_target_:{__name__}.SignalOneWorker,index:1}}]"]
    argv += [f"hydra.run.dir={run}"]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=CLUSTER_TIMEOUT, env=cli_env()
    )
    # Both exit 128 + SIGTERM; which one the launcher sees first decides its status.
    assert done.returncode in (128 + signal.SIGTERM, EXIT_CLUSTER_FAILURE), done.stderr[-5000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "interrupted" and metrics["interrupted"]["epoch"] == 1
    assert sorted(p.name for p in (run / "checkpoints").glob("ckpt-*.index")) == ["ckpt-3.index"]
    assert "at the end of epoch 1" in (tmp_path / "logs" / "worker-1.log").read_text()
    assert not list(run.glob("workertemp_*"))


# ------------------------------------------------------------------------ resuming from the chief's checkpoints


def small_model():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.Adam(0.1), loss="mse")
    model.fit(np.ones((4, 3)), np.zeros((4, 2)), epochs=1, verbose=0)
    return model


def test_a_worker_resumes_from_the_chiefs_checkpoints_without_touching_them(tmp_path):
    from recsys.training.checkpoints import Position, TrainingState

    chief_dir, scratch = tmp_path / "run" / "checkpoints", tmp_path / "run" / "workertemp_1"
    chief = small_model()
    state = TrainingState(chief, chief.optimizer, chief_dir)
    state.save(Position(1, 0), number=3)
    chief.fit(np.ones((4, 3)), np.zeros((4, 2)), epochs=1, verbose=0)
    state.save(Position(2, 0), number=6)
    # The newest checkpoint is damaged: the worker falls back to ckpt-3, as the chief
    # would, but leaves the chief's folder to the chief (nothing moved or deleted).
    data = next(chief_dir.glob("ckpt-6.data-*"))
    data.write_bytes(data.read_bytes()[:-8])
    before = {p.name: p.read_bytes() for p in chief_dir.iterdir()}

    worker = small_model()
    reader = TrainingState(
        worker, worker.optimizer, scratch / "checkpoints", read_directory=chief_dir
    )
    assert reader.restore() == Position(1, 0)
    assert reader.restored_from == str(chief_dir / "ckpt-3")
    assert {p.name: p.read_bytes() for p in chief_dir.iterdir()} == before
    assert not (scratch / "checkpoints").exists()
    reader.save(Position(2, 0), number=6)  # its own saves go to its scratch folder
    assert (scratch / "checkpoints" / "ckpt-6.index").exists()
    assert {p.name for p in chief_dir.iterdir()} == set(before)


def test_agreed_checkpoints_stop_at_the_epoch_end_not_mid_epoch(tmp_path):
    """The saver every multi-worker run uses: a stop request waits for the epoch end,
    where the workers' flags are summed (here one worker: the default strategy)."""
    from recsys._tf import tf
    from recsys.training.checkpoints import TrainingState
    from recsys.training.errors import TrainingInterrupted
    from recsys.training.signals import StopSignals
    from recsys.training.trainer import _AgreedCheckpoints, _any_worker

    strategy = tf.distribute.get_strategy()
    assert _any_worker(strategy, True) and not _any_worker(strategy, False)
    model = small_model()
    state = TrainingState(model, model.optimizer, tmp_path / "checkpoints")
    stop = StopSignals()
    saver = _AgreedCheckpoints(
        state, steps_per_epoch=3, every_steps=2, stop=stop, strategy=strategy
    )
    saver.set_model(model)
    saver.on_train_begin()
    saver.on_epoch_begin(0)
    saver.on_train_batch_end(0)
    stop.signum = signal.SIGTERM  # what the handler records
    saver.on_train_batch_end(1)  # due by steps: saves, but does not stop mid-epoch
    assert [p.rsplit("/", 1)[1] for p in saver.saved] == ["ckpt-2"]
    with pytest.raises(TrainingInterrupted, match="end of epoch 1"):
        saver.on_epoch_end(0)
    assert [p.rsplit("/", 1)[1] for p in saver.saved] == ["ckpt-2", "ckpt-3"]
