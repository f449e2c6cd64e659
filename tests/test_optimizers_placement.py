"""Slots are made on their variable's device (issue 10), and strategies still work.

Under ParameterServerStrategy, tf-keras makes a slot's initial value wherever
`build` runs, the coordinator: it would hold a transient copy of every table shard
(2M x 64 table: +737 MiB). recsys's row-sparse optimizers make the initial values
under `tf.device(variable.device)`, so they never leave the shard's server. A
variable creator records the device scope each slot's initial value is made under.
"""

import json
import os
import subprocess
import sys

import pytest

import recsys  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
from recsys._tf import keras, tf
from recsys.optimizers import RowwiseAdagrad, SparseAdam

OPTIMIZERS = {
    "sparse_adam": lambda: SparseAdam(amsgrad=True),
    "sparse_adam_lean": lambda: SparseAdam(amsgrad=True, moment_dtype="bfloat16"),
    "rowwise_adagrad": RowwiseAdagrad,
    "tf_keras_adam": keras.optimizers.Adam,  # the control: no placement of its own
}


def _slot_creation_scopes(make_optimizer):
    """(table, [(slot name, device scope the slot was made under)]).

    Built under OneDeviceStrategy: like ParameterServerStrategy (and unlike the
    default strategy, which wraps slot creation in `tf.device` when eager), its
    variable colocation sets no device scope for the ops making initial values.
    """
    from tensorflow.python.eager import context

    seen = []

    def creator(next_creator, **kwargs):
        seen.append((kwargs.get("name"), context.context().device_name))
        return next_creator(**kwargs)

    with tf.distribute.OneDeviceStrategy("/cpu:0").scope():
        table = tf.Variable(tf.zeros([6, 4]), name="table")
        optimizer = make_optimizer()
        with tf.variable_creator_scope(creator):
            optimizer.build([table])
    return table, [s for s in seen if s[0] and s[0].endswith("/table")]


@pytest.mark.parametrize("name", ["sparse_adam", "sparse_adam_lean", "rowwise_adagrad"])
def test_slot_initial_values_are_made_under_the_variables_device(name):
    table, slots = _slot_creation_scopes(OPTIMIZERS[name])
    expected = {"sparse_adam": 3, "sparse_adam_lean": 3, "rowwise_adagrad": 1}[name]
    assert len(slots) == expected, slots
    assert table.device.endswith("CPU:0")
    for slot_name, scope in slots:
        assert scope == table.device, (slot_name, scope)


def test_the_spy_sees_tf_keras_adam_make_slots_outside_the_device():
    # Without the override (tf-keras's Adam) the slots' initial values are made under
    # no device scope: on the coordinator, under ParameterServerStrategy.
    _, slots = _slot_creation_scopes(OPTIMIZERS["tf_keras_adam"])
    assert len(slots) == 2
    assert {scope for _, scope in slots} == {""}


_TWO_CPUS_SCRIPT = r"""
import json
import numpy as np
import recsys
from recsys._tf import keras, tf
from recsys.layers import Embedding
from recsys.optimizers import RowwiseAdagrad, SparseAdam

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
tf.config.threading.set_inter_op_parallelism_threads(4)
makers = {
    "sparse_adam": lambda: SparseAdam(0.01),
    "sparse_adam_lean": lambda: SparseAdam(0.01, moment_dtype="bfloat16"),
    "rowwise_adagrad": lambda: RowwiseAdagrad(0.1),
}
rng = np.random.default_rng(0)
x = rng.integers(0, 30, size=(64, 2)).astype(np.int32)
y = rng.normal(size=(64, 1)).astype(np.float32)
untouched = np.setdiff1d(np.arange(50), np.unique(x))


def placement(make):
    with tf.device("/cpu:1"):
        table = tf.Variable(tf.zeros([6, 4]))
    optimizer = make()
    optimizer.build([table])
    return [v.device for v in optimizer.variables[1:]]


def fit(strategy, make):
    with strategy.scope():
        keras.utils.set_random_seed(0)
        ids = keras.Input(shape=(2,), dtype="int32")
        h = keras.layers.Flatten()(Embedding(50, 4, name="table")(ids))
        model = keras.Model(ids, keras.layers.Dense(1)(h))
        model.compile(optimizer=make(), loss="mse")
    table = model.get_layer("table").embeddings
    before = table.numpy()
    model.fit(x, y, batch_size=16, epochs=2, verbose=0, shuffle=False)
    replicas = [v.numpy() for v in getattr(table, "values", [table])]
    return before, table.numpy(), replicas


out = {}
for name, make in makers.items():
    before, mirrored, replicas = fit(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]), make)
    _, single, _ = fit(tf.distribute.OneDeviceStrategy("/cpu:0"), make)
    out[name] = {
        "slot_devices": placement(make),
        "replicas": len(replicas),
        "replicas_equal": all(np.array_equal(r, replicas[0]) for r in replicas),
        "untouched_equal": bool(np.array_equal(mirrored[untouched], before[untouched])),
        "max_diff_to_single_device": float(np.abs(mirrored - single).max()),
        "moved": float(np.abs(mirrored - before).max()),
    }
print(json.dumps(out))
"""


@pytest.mark.slow  # about 90 s: three optimizers, two strategies, a fresh TensorFlow
def test_two_logical_cpus_slots_follow_the_variable_and_mirrored_replicas_agree():
    # Logical devices must be set before TensorFlow starts, hence a fresh process.
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(
        [sys.executable, "-c", _TWO_CPUS_SCRIPT],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(results) == {"sparse_adam", "sparse_adam_lean", "rowwise_adagrad"}
    for name, result in results.items():
        assert result["slot_devices"], name
        assert all(d.endswith("CPU:1") for d in result["slot_devices"]), (name, result)
        assert result["replicas"] == 2 and result["replicas_equal"], (name, result)
        assert result["untouched_equal"], name
        assert result["moved"] > 1e-3, name
        assert result["max_diff_to_single_device"] < 1e-5, (name, result)
