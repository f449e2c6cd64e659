"""SparseAdam(sparse_update="add"): asynchronous workers cannot lose each other's updates.

With several ParameterServerStrategy workers, two steps may read the same row before
either writes it back. ``"assign"`` (the default, exact path) then keeps only the
last write; ``"add"`` adds each step's change with ``scatter_add``. In one process the
two agree up to float rounding; on a loopback cluster with two workers hammering one
row, ``"add"`` keeps every update (slow).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

from recsys._tf import keras, tf
from recsys.optimizers import SparseAdam
from tests.helpers.training import cli_env

CLUSTER_TIMEOUT = 900


def sparse_gradient(rows, values, num_rows):
    return tf.IndexedSlices(
        tf.constant(values, tf.float32), tf.constant(rows, tf.int64), tf.constant([num_rows, 3])
    )


def numpy_lazy_adam(table, steps, lr=0.01, beta_1=0.9, beta_2=0.999, epsilon=1e-7):
    """Lazy Adam in float64: only the rows of each step's gradient change."""
    table = table.astype(np.float64)
    m, v = np.zeros_like(table), np.zeros_like(table)
    for t, (rows, values) in enumerate(steps, start=1):
        alpha = lr * np.sqrt(1 - beta_2**t) / (1 - beta_1**t)
        g = np.asarray(values, np.float64)
        m[rows] += (g - m[rows]) * (1 - beta_1)
        v[rows] += (g**2 - v[rows]) * (1 - beta_2)
        table[rows] -= alpha * m[rows] / (np.sqrt(v[rows]) + epsilon)
    return table, m, v


@pytest.mark.parametrize("jit_compile", [True, False])
def test_add_mode_matches_lazy_adam_and_leaves_other_rows_alone(jit_compile):
    rng = np.random.default_rng(0)
    start = rng.normal(size=(12, 3)).astype(np.float32)
    steps = []
    for _ in range(6):
        rows = np.sort(rng.choice(12, size=4, replace=False))
        steps.append((rows, rng.normal(size=(4, 3)).astype(np.float32)))
    results = {}
    for mode in ("assign", "add"):
        table = tf.Variable(start)
        optimizer = SparseAdam(0.01, jit_compile=jit_compile, sparse_update=mode)
        for rows, values in steps:
            optimizer.apply_gradients([(sparse_gradient(rows, values, 12), table)])
        results[mode] = (table.numpy(), optimizer._momentums[0].numpy())
    expected, expected_m, _ = numpy_lazy_adam(start, steps)
    table, m = results["add"]
    np.testing.assert_allclose(table, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m, expected_m, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(table, results["assign"][0], rtol=1e-6, atol=1e-7)
    untouched = np.setdiff1d(np.arange(12), np.concatenate([r for r, _ in steps]))
    assert len(untouched)
    np.testing.assert_array_equal(table[untouched], start[untouched])
    assert np.all(m[untouched] == 0.0)


# Slow, and an open finding: in the full default suite of a fresh clone (CI, 2026-12-02)
# both cases ended with the hot row at -199.0 instead of -200.0, one update missing,
# while they pass when run alone. Until that is explained, "add" keeping every
# update is shown by the cluster test below, not promised for threads of one process.
@pytest.mark.slow
@pytest.mark.parametrize("jit_compile", [True, False])
def test_add_mode_keeps_every_update_of_concurrent_threads(jit_compile):
    """Two threads update one hot row 100 times each. With beta_1 = beta_2 = 0 and
    epsilon = 0 every step moves the row by exactly -learning_rate, so the row must
    end at -200 exactly: one lost update would show. (Threads of one process seldom
    interleave a step's read and write; the cluster test below is where "assign"
    loses updates.)"""
    table = tf.Variable(tf.zeros([8, 3]))
    optimizer = SparseAdam(
        1.0, beta_1=0.0, beta_2=0.0, epsilon=0.0, jit_compile=jit_compile, sparse_update="add"
    )
    optimizer.build([table])

    @tf.function
    def step(row):
        rows = tf.stack([tf.constant(3, tf.int64), row])
        gradient = tf.IndexedSlices(tf.ones([2, 3]), rows, tf.constant([8, 3], tf.int64))
        optimizer.apply_gradients([(gradient, table)])

    def worker(row):
        for _ in range(100):
            step(tf.constant(row, tf.int64))

    threads = [threading.Thread(target=worker, args=(row,)) for row in (5, 6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    values = table.numpy()
    np.testing.assert_array_equal(values[3], [-200.0] * 3)
    np.testing.assert_array_equal(values[5], [-100.0] * 3)
    np.testing.assert_array_equal(values[6], [-100.0] * 3)
    np.testing.assert_array_equal(values[[0, 1, 2, 4, 7]], 0.0)


def test_sparse_update_is_checked_and_round_trips():
    optimizer = SparseAdam(sparse_update="add")
    assert SparseAdam.from_config(optimizer.get_config()).sparse_update == "add"
    assert SparseAdam().sparse_update == "assign"
    with pytest.raises(ValueError, match="Received: sparse_update='scatter'"):
        SparseAdam(sparse_update="scatter")
    with pytest.raises(ValueError, match=r"needs float32 moments.*moment_dtype='bfloat16'"):
        SparseAdam(sparse_update="add", moment_dtype="bfloat16")


# Two workers of a loopback PSS cluster each apply `updates` steps to one hot row of a
# sharded table (and one row of their own), with the same exact-count setup as above.
HOT_ROW = """
import json
import sys
import numpy as np
import recsys
from recsys._tf import tf
from recsys.distribute import make_strategy
from recsys.distribute.parameter_server import build_optimizer_slots
from recsys.optimizers import SparseAdam

mode, updates, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
strategy = make_strategy("parameter_server", min_shard_bytes=64)
coordinator = tf.distribute.experimental.coordinator.ClusterCoordinator(strategy)
with strategy.scope():
    table = tf.Variable(tf.zeros([64, 4]), name="table")  # shards: table/part_<i>
    optimizer = SparseAdam(1.0, beta_1=0.0, beta_2=0.0, epsilon=0.0, sparse_update=mode)
    build_optimizer_slots(optimizer, table.variables)
assert len(table.variables) == 2


@tf.function
def step(own_row):
    def update():
        rows = tf.stack([tf.constant(3, tf.int64), own_row])
        gradient = tf.IndexedSlices(tf.ones([2, 4]), rows, tf.constant([32, 4], tf.int64))
        # Keras hands the optimizer the shards; the gradient goes to the shard of row 3.
        optimizer.apply_gradients([(gradient, table.variables[0])])
    strategy.run(update)


for i in range(updates):
    coordinator.schedule(step, args=(tf.constant(10 + i % 2, tf.int64),))
coordinator.join()
values = np.asarray(tf.convert_to_tensor(table))
result = {"mode": mode, "updates": updates, "hot": float(-values[3, 0]),
          "own": [float(-values[10, 0]), float(-values[11, 0])]}
json.dump(result, open(out, "w"))
print(json.dumps(result))
"""


def test_more_than_one_worker_switches_assign_to_add_and_says_so(caplog):
    """The trainer calls this under PSS: with 2+ workers, "assign" becomes "add"."""
    from recsys.distribute.parameter_server import updates_for_concurrent_workers

    caplog.set_level(logging.INFO, logger="recsys.distribute.parameter_server")
    one = SparseAdam(0.01)
    assert updates_for_concurrent_workers(one, 1) == "unchanged"
    assert one.sparse_update == "assign" and not caplog.records
    two = SparseAdam(0.01)
    assert updates_for_concurrent_workers(two, 2) == "switched"
    assert two.sparse_update == "add" and two.get_config()["sparse_update"] == "add"
    (record,) = caplog.records
    assert "'assign' -> 'add' for 2 asynchronous workers" in record.getMessage()
    # Already "add", or an optimizer without the setting: left alone, nothing logged.
    assert updates_for_concurrent_workers(two, 3) == "unchanged"
    assert updates_for_concurrent_workers(keras.optimizers.Adam(0.01), 2) == "unchanged"
    assert len(caplog.records) == 1


def test_the_trainer_counts_the_workers_of_a_pss_cluster():
    """ParameterServerStrategy's public cluster_resolver is None (TF 2.21); its own is not."""
    from recsys.training.trainer import _num_workers

    class Resolver:
        def cluster_spec(self):
            return tf.train.ClusterSpec({"chief": ["a:1"], "worker": ["a:2", "a:3"], "ps": ["a:4"]})

    class PssLike:
        cluster_resolver = None
        _cluster_resolver = Resolver()

    assert _num_workers(PssLike()) == 2
    assert _num_workers(tf.distribute.get_strategy()) == 1


def test_16_bit_moments_cannot_switch_and_warn_that_updates_can_be_lost(caplog):
    from recsys.distribute.parameter_server import updates_for_concurrent_workers

    lean = SparseAdam(0.01, moment_dtype="bfloat16")
    assert updates_for_concurrent_workers(lean, 2) == "unsafe"
    assert lean.sparse_update == "assign"
    (record,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "can overwrite each other's updates" in record.getMessage()
    with pytest.raises(ValueError, match=r"num_workers.*Received: num_workers=0"):
        updates_for_concurrent_workers(lean, 0)


@pytest.mark.slow
def test_two_async_workers_lose_no_hot_row_update_with_add(tmp_path):
    script = tmp_path / "hot_row.py"
    script.write_text(textwrap.dedent(HOT_ROW))
    results = {}
    for mode in ("assign", "add"):
        out = tmp_path / f"{mode}.json"
        argv = [sys.executable, "-m", "recsys.cluster", "local", "--ps", "2", "--workers", "2"]
        argv += ["--", sys.executable, str(script), mode, "200", str(out)]
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=CLUSTER_TIMEOUT, env=cli_env()
        )
        assert done.returncode == 0, done.stderr[-5000:]
        results[mode] = json.loads(out.read_text())
    print(json.dumps(results))  # assign's lost updates, for the README
    assert results["add"]["hot"] == 200.0
    assert results["add"]["own"] == [100.0, 100.0]
    assert results["assign"]["hot"] <= 200.0
