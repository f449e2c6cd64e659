"""The lean optimizers pass SparseAdam's any-rank sparse-gradient tests.

The cases of tests/test_sparse_adam.py that cover variables of any rank (rows are the
first dimension: a 1-D bias, a 2-D table, a 3-D table of blocks), run against
`SparseAdam(moment_dtype="bfloat16" | "float16")` and `RowwiseAdagrad`, on the fused
XLA kernel and on plain TensorFlow ops: padded lengths known or unknown when tracing,
a handful of compiled lengths for ragged batches, empty gradients, rows without
elements, and one kernel trace shared by rows of equal size and different shapes.
"""

import numpy as np
import pytest

import recsys  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import recsys.optimizers.rowwise_adagrad as rowwise_module
import recsys.optimizers.sparse_adam as sparse_adam_module
from recsys._tf import tf
from recsys.optimizers import RowwiseAdagrad, SparseAdam
from tests.test_optimizers_lean_adam import lean_adam_reference
from tests.test_rowwise_adagrad import rowwise_adagrad_reference

FUSED = pytest.mark.parametrize("jit_compile", [True, False], ids=["fused-xla", "tf-ops"])
ROW_SHAPES = pytest.mark.parametrize("row_shape", [(), (3,), (2, 3)], ids=["1d", "2d", "3d"])


class Lean:
    """SparseAdam with 16-bit moments (AMSGrad on for bfloat16, to cover vhat)."""

    kernel_name = "_lazy_adam_rows"
    module = sparse_adam_module

    def __init__(self, dtype):
        self.dtype = dtype
        self.options = {"amsgrad": dtype == "bfloat16"}

    def make(self, jit_compile=True):
        return SparseAdam(0.01, moment_dtype=self.dtype, jit_compile=jit_compile, **self.options)

    def state(self, optimizer, var):
        index = optimizer._index_dict[optimizer._var_key(var)]
        slots = [optimizer._momentums[index], optimizer._velocities[index]]
        if optimizer.amsgrad:
            slots.append(optimizer._velocity_hats[index])
        return [np.asarray(x.numpy(), np.float64) for x in (var, *slots)]

    def reference(self, table, steps):
        want = lean_adam_reference(table, steps, self.dtype, True, **self.options)
        return want if self.options["amsgrad"] else want[:3]

    def untouched_state_is_initial(self, state_rows):
        return not any(s.any() for s in state_rows)


class Rowwise:
    kernel_name = "_rowwise_adagrad_rows"
    module = rowwise_module

    def make(self, jit_compile=True):
        return RowwiseAdagrad(0.1, jit_compile=jit_compile)

    def state(self, optimizer, var):
        index = optimizer._index_dict[optimizer._var_key(var)]
        return [var.numpy().astype(np.float64), optimizer._accumulators[index].numpy()]

    def reference(self, table, steps):
        return list(rowwise_adagrad_reference(table, steps))

    def untouched_state_is_initial(self, state_rows):
        return all((s == np.float32(0.1)).all() for s in state_rows)


OPTIMIZERS = pytest.mark.parametrize(
    "kind", [Lean("bfloat16"), Lean("float16"), Rowwise()], ids=["lean-bf16", "lean-f16", "rowwise"]
)


def assert_state_close(got, want):
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-6)
    for got_slot, want_slot in zip(got[1:], want[1:], strict=True):
        np.testing.assert_allclose(got_slot, want_slot, rtol=1e-6, atol=1e-9)


@OPTIMIZERS
@FUSED
@ROW_SHAPES
@pytest.mark.parametrize("known_length", [True, False], ids=["traced-length", "dynamic-length"])
def test_padded_lengths_match_numpy(kind, jit_compile, known_length, row_shape):
    # 17 to 33 distinct ids among 50 rows: odd counts are padded to even ones and,
    # when the length is not known when tracing (Keras's None batch), the gradient
    # rows are padded too.
    rows = 64
    table = np.random.default_rng(31).normal(size=(rows, *row_shape)).astype(np.float32)
    rng = np.random.default_rng(29)
    steps = []
    for n in (21, 23, 27, 31, 37, 45):
        indices = rng.integers(0, 50, size=n).astype(np.int32)
        steps.append((indices, (0.1 * rng.normal(size=(n, *row_shape))).astype(np.float32)))
    distinct = [len(np.unique(indices)) for indices, _ in steps]
    assert sum(1 for d in distinct if d > 16 and d % 2) >= 2, distinct  # padding happens
    optimizer = kind.make(jit_compile)
    var = tf.Variable(table)

    def apply(values, indices):
        grad = tf.IndexedSlices(values, indices, tf.constant([rows, *row_shape]))
        optimizer.apply_gradients([(grad, var)])

    signature = None
    if not known_length:
        signature = [tf.TensorSpec([None, *row_shape]), tf.TensorSpec([None], tf.int32)]
    apply = tf.function(apply, input_signature=signature)
    for indices, values in steps:
        apply(tf.constant(values), tf.constant(indices))
    got = kind.state(optimizer, var)
    assert_state_close(got, kind.reference(table, steps))
    np.testing.assert_array_equal(var.numpy()[50:], table[50:])
    assert kind.untouched_state_is_initial([s[50:] for s in got[1:]])


@OPTIMIZERS
@ROW_SHAPES
def test_varying_batch_lengths_compile_a_few_kernels_not_one_per_length(
    monkeypatch, kind, row_shape
):
    kernel = getattr(kind.module, kind.kernel_name)
    shapes = []

    def spy(ids, n_unique, positions, values, *args):
        shapes.append((int(ids.shape[0]), int(positions.shape[0]), tuple(values.shape[1:])))
        return kernel(ids, n_unique, positions, values, *args)

    monkeypatch.setattr(kind.module, kind.kernel_name, spy)
    rng = np.random.default_rng(23)
    var = tf.Variable(rng.normal(size=(5000, *row_shape)).astype(np.float32))
    before = var.numpy()
    optimizer = kind.make()
    touched = set()
    for n in range(1000, 1100, 3):  # 34 lengths
        indices = rng.integers(0, 4000, size=n).astype(np.int32)
        touched.update(indices.tolist())
        values = rng.normal(size=(n, *row_shape)).astype(np.float32)
        optimizer.apply_gradients([(tf.IndexedSlices(values, indices, [5000, *row_shape]), var)])
    assert len(shapes) == 34
    assert {rows for _, rows, _ in shapes} == {1024, 1152}
    assert {ids for ids, _, _ in shapes} <= {896, 960, 1024}
    assert {row for _, _, row in shapes} == {(int(np.prod(row_shape)),)}
    untouched = np.setdiff1d(np.arange(5000), sorted(touched))
    np.testing.assert_array_equal(var.numpy()[untouched], before[untouched])
    state = kind.state(optimizer, var)
    assert kind.untouched_state_is_initial([s[untouched] for s in state[1:]])


@OPTIMIZERS
@ROW_SHAPES
def test_lengths_unknown_when_tracing_reach_the_kernel_padded(monkeypatch, kind, row_shape):
    kernel = getattr(kind.module, kind.kernel_name)
    shapes = []

    def record(ids_shape, positions_shape):
        shapes.append((int(ids_shape[0]), int(positions_shape[0])))

    def spy(ids, n_unique, positions, values, *args):
        tf.py_function(record, [tf.shape(ids), tf.shape(positions)], [])
        return kernel(ids, n_unique, positions, values, *args)

    monkeypatch.setattr(kind.module, kind.kernel_name, spy)
    rng = np.random.default_rng(37)
    var = tf.Variable(rng.normal(size=(5000, *row_shape)).astype(np.float32))
    optimizer = kind.make()

    @tf.function(
        input_signature=[tf.TensorSpec([None, *row_shape]), tf.TensorSpec([None], tf.int32)]
    )
    def apply(values, indices):
        grad = tf.IndexedSlices(values, indices, tf.constant([5000, *row_shape]))
        optimizer.apply_gradients([(grad, var)])

    for n in range(1000, 1100, 3):  # 34 lengths, one trace
        indices = rng.integers(0, 4000, size=n).astype(np.int32)
        apply(tf.constant(rng.normal(size=(n, *row_shape)).astype(np.float32)), indices)
    assert len(shapes) == 34
    assert {rows for _, rows in shapes} == {1024, 1152}
    assert {ids for ids, _ in shapes} <= {896, 960, 1024}


@OPTIMIZERS
@FUSED
@ROW_SHAPES
def test_empty_sparse_gradient_changes_nothing_but_the_step(kind, jit_compile, row_shape):
    table = np.random.default_rng(1).normal(size=(12, *row_shape)).astype(np.float32)
    optimizer = kind.make(jit_compile)
    var = tf.Variable(table)
    empty = tf.IndexedSlices(
        tf.zeros([0, *row_shape]), tf.zeros([0], tf.int32), tf.constant([12, *row_shape])
    )
    tf.function(optimizer.apply_gradients)([(empty, var)])
    np.testing.assert_array_equal(var.numpy(), table)
    assert int(optimizer.iterations) == 1
    assert kind.untouched_state_is_initial(kind.state(optimizer, var)[1:])


@OPTIMIZERS
@FUSED
def test_rows_without_elements_change_nothing(kind, jit_compile):
    optimizer = kind.make(jit_compile)
    var = tf.Variable(tf.zeros([12, 0]))
    grad = tf.IndexedSlices(tf.zeros([3, 0]), tf.constant([1, 1, 4]), tf.constant([12, 0]))
    optimizer.apply_gradients([(grad, var)])
    optimizer.apply_gradients([(tf.zeros([12, 0]), var)])
    assert var.shape == (12, 0) and int(optimizer.iterations) == 2
    assert kind.untouched_state_is_initial(kind.state(optimizer, var)[1:])


@OPTIMIZERS
def test_rows_of_equal_size_but_different_shapes_share_the_kernel(kind):
    # [rows, 6] and [rows, 2, 3] both reach the kernel as [n, 6]: one trace must serve
    # both, and the same ids and values give the same rows, bit for bit.
    rng = np.random.default_rng(6)
    table = rng.normal(size=(12, 2, 3)).astype(np.float32)
    flat, blocks = tf.Variable(table.reshape(12, 6)), tf.Variable(table)
    # One optimizer, so both variables' rounding streams differ; compare each with
    # its own reference instead (streams are the variable's index).
    flat_opt, blocks_opt = kind.make(), kind.make()
    for step in range(4):
        indices = rng.integers(0, 10, size=8).astype(np.int32)
        values = rng.normal(size=(8, 2, 3)).astype(np.float32)
        calls = [
            (flat_opt, tf.IndexedSlices(values.reshape(-1, 6), indices, [12, 6]), flat),
            (blocks_opt, tf.IndexedSlices(values, indices, [12, 2, 3]), blocks),
        ]
        for optimizer, grad, var in calls[:: 1 if step % 2 else -1]:  # either traces first
            optimizer.apply_gradients([(grad, var)])
    np.testing.assert_array_equal(blocks.numpy().reshape(12, 6), flat.numpy())
    for got, want in zip(
        kind.state(blocks_opt, blocks)[1:], kind.state(flat_opt, flat)[1:], strict=True
    ):
        np.testing.assert_array_equal(got.reshape(want.shape), want)
