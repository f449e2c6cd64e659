"""The Trainer under ``distribute=...``: the config group, and training on a loopback cluster.

Each cluster runs in its own subprocesses (``python -m recsys.cluster local``): a
TensorFlow server cannot be stopped inside a process. One ParameterServerStrategy run
through the Trainer is in the default suite; the two-worker front door is `slow`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from recsys.distribute.tf_config import TFConfigError
from recsys.training.errors import ConfigError
from tests.helpers.training import (
    PROJECT_ROOT,
    cli_env,
    compose_train,
    process_state_restored,
    write_tiny_movielens,
)

CLUSTER_TIMEOUT = 900
# Small data, a table split in two (1 KiB shards), short epochs.
TINY = (
    "+experiment=movielens",
    "distribute=parameter_server",
    "distribute.min_shard_bytes=1024",
    "distribute.steps_per_execution=2",
    "data.batch_size=64",
    "data.val_fraction=0.15",  # validation runs on the workers too
    "trainer.limit_train_batches=3",
    "trainer.tensorboard=false",
    "hardware.allocator=none",
)


# ------------------------------------------------------------------------ the config group


def test_distribute_group_defaults_to_one_process():
    with process_state_restored():
        cfg = compose_train()
    assert cfg.distribute.kind == "none"
    assert cfg.distribute.steps_per_execution == 1


@pytest.mark.parametrize("option", ["none", "parameter_server", "multi_worker"])
def test_each_distribute_option_composes_with_the_same_keys(option):
    with process_state_restored():
        cfg = compose_train([f"distribute={option}"])
    assert cfg.distribute.kind == option
    assert set(cfg.distribute) == {"kind", "min_shard_bytes", "max_shards", "steps_per_execution"}


def test_a_cluster_that_does_not_fit_is_refused_before_data_and_tensorflow(monkeypatch):
    from recsys.train import _distribute

    monkeypatch.delenv("TF_CONFIG", raising=False)
    with process_state_restored():
        cfg = compose_train(["distribute=parameter_server"])
    with pytest.raises(ConfigError, match="TF_CONFIG is not set") as info:
        _distribute(cfg)
    assert isinstance(info.value.__cause__, TFConfigError)
    worker = {"cluster": {"chief": ["h:1"], "worker": ["h:2"], "ps": ["h:3"]}}
    monkeypatch.setenv("TF_CONFIG", json.dumps({**worker, "task": {"type": "worker"}}))
    with pytest.raises(ConfigError, match="only the chief runs the training program"):
        _distribute(cfg)


def test_an_unknown_distribute_key_is_refused():
    from recsys.train import _distribute

    with process_state_restored():
        cfg = compose_train(["+distribute.shards=3"])
    with pytest.raises(ConfigError, match=r"distribute\.shards"):
        _distribute(cfg)


def test_trainer_checks_strategy_and_steps_per_execution():
    from recsys._tf import tf
    from recsys.training import Trainer

    trainer = Trainer(tensorboard=False)
    assert trainer.strategy is tf.distribute.get_strategy()
    assert trainer.supports_step_checkpoints() and not trainer.coordinated
    with pytest.raises(ValueError, match="Received: strategy='ps'"):
        Trainer(strategy="ps")
    with pytest.raises(ValueError, match="steps_per_execution"):
        Trainer(steps_per_execution=0)


def test_epoch_checkpoints_have_no_batch_hook_for_keras_to_refuse():
    from recsys.training.trainer import _EpochCheckpoints

    saver = _EpochCheckpoints(state=None, steps_per_epoch=3)
    assert not saver._implements_train_batch_hooks()
    assert not saver._implements_test_batch_hooks()


# ---------------------------------------------------------------- a loopback cluster

# The chief: recsys.train.train() for 2 epochs (mode "once"), or for 1 epoch and then
# resumed to 2 on the same run directory (mode "resume"), counting reads of whole
# shards of the model's sharded tables while evaluating and exporting, and keeping
# what the test compares.
CHIEF = """
import json
import sys
from pathlib import Path

import numpy as np

import recsys
from recsys import train as entry
from recsys._tf import tf
from recsys.training import trainer as trainer_module
from recsys.training import checkpoints as checkpoints_module
from tensorflow.python.distribute.sharded_variable import ShardedVariable
from tensorflow.python.ops import resource_variable_ops
from tests.helpers.training import compose_train

run_dir, data_path, mode, overrides = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4:]
report = {"reads": {"evaluate": 0, "export": 0}, "shards": [], "slots": {}}
shard_ids = set()
phase = [None]

# A whole shard is read by ReadVariableOp (what concatenating a ShardedVariable does);
# a lookup inside a tf.function gathers rows instead (ResourceGather).
read = resource_variable_ops.BaseResourceVariable._read_variable_op


def counting_read(self, *args, **kwargs):
    if phase[0] and id(self) in shard_ids:
        report["reads"][phase[0]] += 1
    return read(self, *args, **kwargs)


resource_variable_ops.BaseResourceVariable._read_variable_op = counting_read


def sharded_tables(model):
    return [v for layer in model._flatten_layers() for v in vars(layer).values() if isinstance(v, ShardedVariable)]


def during(name, method):
    def wrapped(self, model, data, *args):
        tables = sharded_tables(model)
        shard_ids.update(id(s) for t in tables for s in t.variables)
        report["shards"] = [[s.device for s in t.variables] for t in tables]
        phase[0] = name
        try:
            return method(self, model, data, *args)
        finally:
            phase[0] = None
    return wrapped


trainer_module.Trainer.evaluate = during("evaluate", trainer_module.Trainer.evaluate)
trainer_module.Trainer.export_model = during("export", trainer_module.Trainer.export_model)

# The optimizer's slots right after a restore (the resumed run).
restore = checkpoints_module.TrainingState.restore


def recording_restore(self):
    position = restore(self)
    if position.epoch:
        report["slots"]["restored"] = [np.asarray(v.numpy()).tolist() for v in self.checkpoint.optimizer.variables]
    return position


checkpoints_module.TrainingState.restore = recording_restore

common = [*overrides, f"data.path={data_path}", f"data.data_dir={run_dir.parent / 'cache'}"]
if mode == "resume":
    metrics, objects = entry.train(compose_train([*common, "trainer.epochs=1"], run_dir=run_dir))
    report["first"] = {"metrics": metrics, "epochs": objects["fit"].completed_epochs}
    report["slots"]["saved"] = [np.asarray(v.numpy()).tolist() for v in objects["optimizer"].variables]
metrics, objects = entry.train(compose_train([*common, "trainer.epochs=2"], run_dir=run_dir))
model = objects["model"]
users = np.asarray(model.user_ids[:5])
report["second"] = {
    "metrics": metrics,
    "initial_epoch": objects["fit"].initial_epoch,
    "epochs": objects["fit"].completed_epochs,
    "iterations": int(objects["optimizer"].iterations.numpy()),
    "users": users.tolist(),
    "user_vectors": tf.function(model.user_embeddings)(tf.constant(users)).numpy().tolist(),
}
(run_dir.parent / "report.json").write_text(json.dumps(report))
print("CHIEF OK")
"""

# A plain process (no cluster, no recsys): the export answers and holds the trained tables.
FRESH = """
import json
import sys
import numpy as np
import tensorflow as tf

export, report = sys.argv[1], json.load(open(sys.argv[2]))["second"]
loaded = tf.saved_model.load(export)
vectors = loaded.signatures["user_embeddings"](user_id=tf.constant(report["users"]))
vectors = next(iter(vectors.values())).numpy()
np.testing.assert_allclose(vectors, np.array(report["user_vectors"]), rtol=1e-5, atol=1e-6)
top = loaded.signatures["serving_default"](user_id=tf.constant(report["users"]), k=tf.constant(5))
assert top["item_ids"].shape == (5, 5), top["item_ids"].shape
print("FRESH OK")
"""


def run_chief(
    tmp_path: Path, workers: int, mode: str, *overrides: str
) -> subprocess.CompletedProcess:
    return run_on_cluster(tmp_path, workers, CHIEF, mode, *TINY, *overrides)


def run_on_cluster(
    tmp_path: Path, workers: int, script: str, *args: str
) -> subprocess.CompletedProcess:
    """`script` as the chief of a loopback cluster (2 PS): `script RUN_DIR DATA *args`."""
    chief = tmp_path / "chief.py"
    chief.write_text(textwrap.dedent(script))
    data = write_tiny_movielens(tmp_path / "ml-100k")
    argv = [sys.executable, "-m", "recsys.cluster", "local", "--ps", "2"]
    argv += ["--workers", str(workers), "--log-dir", str(tmp_path / "logs"), "--"]
    argv += [sys.executable, str(chief), str(tmp_path / "run"), str(data), *args]
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=CLUSTER_TIMEOUT,
        env=cli_env(),
        cwd=PROJECT_ROOT,
    )


# About 2 minutes (a loopback cluster and a full run); the quick PSS smoke test of the
# default suite is tests/test_cluster.py::test_pss_smoke_fit_embedding_and_sparse_adam_on_a_local_cluster.
@pytest.mark.slow
def test_trainer_under_pss_trains_evaluates_checkpoints_and_exports(tmp_path):
    """1 worker + 2 PS through recsys.train.train: sharded tables on both parameter
    servers, epoch checkpoints, evaluation that reads no whole shard, and an export
    a plain process loads."""
    done = run_chief(tmp_path, 1, "once")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    report = json.loads((tmp_path / "report.json").read_text())
    run = tmp_path / "run"

    # Sharded: the item-id and history tables (at least) span both parameter servers.
    assert len(report["shards"]) >= 2, report["shards"]
    for devices in report["shards"]:
        assert {d.split("/")[1] for d in devices} == {"job:ps"}
        assert len(set(devices)) == 2, devices

    # 3 steps per epoch (limit_train_batches), checkpoints at epoch ends only.
    second = report["second"]
    assert (second["initial_epoch"], second["epochs"], second["iterations"]) == (0, 2, 6)
    checkpoints = sorted(p.name for p in (run / "checkpoints").glob("ckpt-*.index"))
    assert checkpoints == ["ckpt-3.index", "ckpt-6.index"]

    # Evaluation looked rows up per shard. The export's save reads every shard of a
    # table (one by one, no concatenation): twice, since Keras tracks the shards and
    # the table both, and the SavedModel saves each.
    assert report["reads"]["evaluate"] == 0
    shards = sum(len(devices) for devices in report["shards"])
    assert 0 < report["reads"]["export"] <= 2 * shards, report["reads"]

    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["epochs"] == 2
    assert 0.0 <= metrics["test/top100_accuracy"] <= 1.0
    assert len(metrics["history"]["loss"]) == 2
    assert np.all(np.isfinite(metrics["history"]["val_loss"]))  # per-worker validation
    assert len(metrics["history"]["val_loss"]) == 2 and "val/top100_accuracy" in metrics
    for artifact in ("config.yaml", "curves.png", "items.parquet", "export/1/saved_model.pb"):
        assert (run / artifact).exists(), artifact

    fresh = tmp_path / "fresh.py"
    fresh.write_text(textwrap.dedent(FRESH))
    env = {k: v for k, v in cli_env().items() if k != "TF_CONFIG"}
    loaded = subprocess.run(
        [sys.executable, str(fresh), str(run / "export" / "1"), str(tmp_path / "report.json")],
        capture_output=True,
        text=True,
        timeout=CLUSTER_TIMEOUT,
        env=env,
    )
    assert loaded.returncode == 0, loaded.stderr[-5000:]
    assert "FRESH OK" in loaded.stdout


@pytest.mark.slow
def test_a_resumed_pss_run_gets_its_optimizer_slots_back(tmp_path):
    """Slots are built on the parameter servers before the checkpoint is restored, so a
    resumed run continues with the slots the first run ended with, not zeros."""
    done = run_chief(tmp_path, 1, "resume")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["first"]["epochs"] == 1
    second = report["second"]
    assert (second["initial_epoch"], second["epochs"], second["iterations"]) == (1, 2, 6)
    saved, restored = report["slots"]["saved"], report["slots"]["restored"]
    assert len(saved) == len(restored) > 3
    for before, after in zip(saved, restored, strict=True):
        np.testing.assert_array_equal(np.array(after), np.array(before))
    assert any(np.any(np.array(slot) != 0) for slot in saved[1:])
    checkpoints = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("ckpt-*.index"))
    assert checkpoints == ["ckpt-3.index", "ckpt-6.index"]


@pytest.mark.slow
@pytest.mark.parametrize("ps", [2, 3])
def test_front_door_with_two_workers_completes(tmp_path, ps):
    """`recsys.cluster local --ps P --workers 2 -- python -m recsys.train ... distribute=parameter_server`."""
    data = write_tiny_movielens(tmp_path / "ml-100k")
    run = tmp_path / "run"
    argv = [sys.executable, "-m", "recsys.cluster", "local", "--ps", str(ps), "--workers", "2"]
    argv += ["--", sys.executable, "-m", "recsys.train", *TINY, "trainer.epochs=2"]
    argv += [f"data.path={data}", f"data.data_dir={tmp_path / 'cache'}", f"hydra.run.dir={run}"]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=CLUSTER_TIMEOUT, env=cli_env()
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    # Two asynchronous workers: SparseAdam writes its changes (no lost row updates).
    assert (
        "sparse_update 'assign' -> 'add' for 2 asynchronous workers"
        in (run / "train.log").read_text()
    )
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["epochs"] == 2
    assert np.all(np.isfinite(metrics["history"]["loss"]))
    # Evaluated: the exact full-catalogue metrics are in [0, 1].
    assert 0.0 <= metrics["test/top100_accuracy"] <= 1.0
    assert (run / "export" / "1" / "saved_model.pb").exists()
    assert sorted(p.name for p in (run / "checkpoints").glob("ckpt-*.index")) == [
        "ckpt-3.index",
        "ckpt-6.index",
    ]
    assert os.path.exists(run / "items.parquet")


# The ranking model under PSS: trains through recsys.train.train on a loopback cluster,
# counting whole-shard reads of its sharded tables while it evaluates.
RANKING_CHIEF = """
import json
import sys
from pathlib import Path

from recsys import train as entry
from recsys.training import trainer as trainer_module
from tensorflow.python.distribute.sharded_variable import ShardedVariable
from tensorflow.python.ops import resource_variable_ops
from tests.helpers.training import compose_train

run_dir, data_path, overrides = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
report = {"evaluate_reads": 0, "shards": []}
shard_ids, evaluating = set(), [False]
read = resource_variable_ops.BaseResourceVariable._read_variable_op


def counting_read(self, *args, **kwargs):
    if evaluating[0] and id(self) in shard_ids:
        report["evaluate_reads"] += 1
    return read(self, *args, **kwargs)


resource_variable_ops.BaseResourceVariable._read_variable_op = counting_read
evaluate = trainer_module.Trainer.evaluate


def counted_evaluate(self, model, data):
    tables = [v for layer in model._flatten_layers() for v in vars(layer).values()
              if isinstance(v, ShardedVariable)]
    shard_ids.update(id(s) for t in tables for s in t.variables)
    report["shards"] = [[s.device for s in t.variables] for t in tables]
    evaluating[0] = True
    try:
        return evaluate(self, model, data)
    finally:
        evaluating[0] = False


trainer_module.Trainer.evaluate = counted_evaluate
common = [*overrides, f"data.path={data_path}", f"data.data_dir={run_dir.parent / 'cache'}"]
metrics, objects = entry.train(compose_train(common, run_dir=run_dir))
report["metrics"] = metrics
(run_dir.parent / "report.json").write_text(json.dumps(report))
print("CHIEF OK")
"""


@pytest.mark.slow
def test_ranking_model_under_pss_trains_and_evaluates_without_whole_table_reads(tmp_path):
    """+experiment=movielens_ranking on 1 worker + 2 PS through recsys.train.train."""
    overrides = [
        "+experiment=movielens_ranking",
        *[o for o in TINY if not o.startswith("+experiment=")],
        "trainer.epochs=1",
        "model.embedding_dim=8",
    ]
    done = run_on_cluster(tmp_path, 1, RANKING_CHIEF, *overrides)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["shards"], "no sharded table: the test would prove nothing"
    assert np.isfinite(report["metrics"]["test/rmse"])
    assert report["evaluate_reads"] == 0, report
