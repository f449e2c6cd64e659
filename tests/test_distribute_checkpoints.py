"""Checkpoints across shardings: written with 3 parameter-server shards, restored into 2
shards and into one process, table and optimizer slots exactly.

Each cluster runs in its own subprocesses on loopback ports (``recsys.cluster local``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tests.helpers.training import cli_env

CLUSTER_TIMEOUT = 900

# save: train a few steps with 3 shards, checkpoint, keep every value as NumPy.
# restore: build the same model (2 shards, or one process), build the slots, restore.
SCRIPT = """
import sys
import numpy as np
import recsys
from recsys._tf import keras, tf
from recsys.distribute import make_strategy
from recsys.distribute.parameter_server import build_optimizer_slots, dataset_creator, steps_per_epoch
from recsys.layers import Embedding
from recsys.optimizers import SparseAdam

mode, kind, directory = sys.argv[1], sys.argv[2], sys.argv[3]
strategy = make_strategy(kind, min_shard_bytes=1024)  # 600 x 8 floats: one shard per ps
rng = np.random.default_rng(5)
ids = rng.integers(0, 600, size=(64, 2)).astype("int32")
labels = rng.normal(size=(64, 1)).astype("float32")

with strategy.scope():
    inputs = keras.Input(shape=(2,), dtype="int32")
    embedding = Embedding(600, 8, embeddings_initializer="zeros" if mode == "restore" else "uniform")
    model = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Flatten()(embedding(inputs))))
    model.compile(optimizer=SparseAdam(0.01), loss="mse")
    build_optimizer_slots(model.optimizer, model.trainable_variables)
table = embedding.embeddings
shards = len(getattr(table, "variables", [table]))
checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
full = lambda v: np.asarray(tf.convert_to_tensor(v))

if mode == "save":
    def batches(context):
        return tf.data.Dataset.from_tensor_slices((ids, labels)).batch(16)
    model.fit(dataset_creator(batches), epochs=2, steps_per_epoch=steps_per_epoch(64, 16), verbose=0)
    checkpoint.write(f"{directory}/ckpt")
else:
    checkpoint.read(f"{directory}/ckpt").assert_existing_objects_matched()
values = {"table": full(table), "shards": shards}
for i, variable in enumerate(model.optimizer.variables):
    values[f"opt{i}"] = full(variable)
np.savez(f"{directory}/{mode}-{kind}-{shards}.npz", **values)
print("DONE", mode, kind, shards)
"""


def run(tmp_path, mode, kind, ps=0):
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(SCRIPT))
    command = [sys.executable, str(script), mode, kind, str(tmp_path)]
    env = {k: v for k, v in cli_env().items() if k != "TF_CONFIG"}
    if ps:
        command = [
            sys.executable,
            "-m",
            "recsys.cluster",
            "local",
            "--ps",
            str(ps),
            "--workers",
            "1",
            "--",
            *command,
        ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=CLUSTER_TIMEOUT, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return done


@pytest.mark.slow
def test_three_shard_checkpoint_restores_into_two_shards_and_one_process(tmp_path):
    run(tmp_path, "save", "parameter_server", ps=3)
    run(tmp_path, "restore", "parameter_server", ps=2)
    run(tmp_path, "restore", "none")
    saved = np.load(tmp_path / "save-parameter_server-3.npz")
    assert int(saved["shards"]) == 3
    assert int(saved["opt0"]) == 8  # iterations: 2 epochs x 4 steps
    # Trained: some rows and moments moved (restored tables start from zeros).
    assert np.any(saved["table"] != 0) and np.any(saved["opt1"] != 0)
    for name, shards in (("restore-parameter_server-2.npz", 2), ("restore-none-1.npz", 1)):
        restored = np.load(tmp_path / name)
        assert int(restored["shards"]) == shards
        assert sorted(restored.files) == sorted(saved.files)
        for key in saved.files:
            if key != "shards":
                np.testing.assert_array_equal(restored[key], saved[key], err_msg=f"{name}: {key}")
    assert os.path.exists(tmp_path / "ckpt.index")
