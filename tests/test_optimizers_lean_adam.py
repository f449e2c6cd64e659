"""SparseAdam with lean (16-bit) moments against a float64 NumPy reference.

`SparseAdam(moment_dtype="bfloat16" | "float16")` stores the moments of float32
variables in 16 bits and does the arithmetic in float32. The reference does Adam in
float64 and rounds the moments it keeps exactly as specified (nearest, or
stochastically with the hashed bits of `tests/test_optimizers_rounding.py`); the
step's update uses the moments before rounding.
"""

import copy
import inspect

import numpy as np
import pytest

import recsys  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
from recsys._tf import keras, tf
from recsys.layers import Embedding
from recsys.optimizers import SparseAdam
from tests.test_optimizers_rounding import (
    high16,
    low16,
    np_round,
    np_rounding_bits,
    np_step_seed,
)

ROWS = 12
LEAN = pytest.mark.parametrize("moment_dtype", ["bfloat16", "float16"])
ROUNDING = pytest.mark.parametrize("stochastic", [True, False], ids=["stochastic", "nearest"])
FUSED = pytest.mark.parametrize("jit_compile", [True, False], ids=["fused-xla", "tf-ops"])
ROW_SHAPES = pytest.mark.parametrize("row_shape", [(), (3,), (2, 3)], ids=["1d", "2d", "3d"])


def lean_adam_reference(
    table,
    steps,
    moment_dtype,
    stochastic,
    lr=0.01,
    beta_1=0.9,
    beta_2=0.999,
    epsilon=1e-7,
    amsgrad=False,
    weight_decay=None,
    stream=0,
):
    """Lazy Adam in float64, moments kept rounded to `moment_dtype`.

    `steps` holds (indices, values) pairs; indices None means a dense gradient
    (values for every row). Returns the variable and the slots as SparseAdam stores
    them (m, v, vhat; float16 keeps the square roots of v and vhat), table-shaped.
    """
    root = moment_dtype == "float16"
    shape = table.shape
    var = table.astype(np.float64).reshape(shape[0], -1)
    m, v, vhat = (np.zeros_like(var) for _ in range(3))
    row_size = var.shape[1]
    for t, (indices, values) in enumerate(steps, start=1):
        values = np.asarray(values, np.float64).reshape(-1, row_size)
        if indices is None:
            rows, g = np.arange(shape[0]), values
        else:
            rows = np.unique(indices)
            grad = np.zeros_like(var)
            np.add.at(grad, indices, values)
            g = grad[rows]
        m_new = m[rows] + (g - m[rows]) * (1 - beta_1)
        v_new = v[rows] + (g * g - v[rows]) * (1 - beta_2)
        second = v_new
        if amsgrad:
            vhat_new = np.maximum(vhat[rows], v_new)
            second = vhat_new
        alpha = lr * np.sqrt(1 - beta_2**t) / (1 - beta_1**t)
        delta = alpha * m_new / (np.sqrt(second) + epsilon)
        if weight_decay:
            delta += var[rows] * weight_decay * lr
        var[rows] -= delta
        m_bits = v_bits = None
        if stochastic:
            bits = np_rounding_bits(np_step_seed(t - 1, stream), rows, row_size)
            m_bits, v_bits = low16(bits), high16(bits)
        m[rows] = np_round(m_new, moment_dtype, m_bits)
        if root:
            v[rows] = np_round(np.sqrt(v_new), moment_dtype, v_bits) ** 2
        else:
            v[rows] = np_round(v_new, moment_dtype, v_bits)
        if amsgrad:
            if root:
                vhat[rows] = np_round(np.sqrt(vhat_new), moment_dtype, v_bits) ** 2
            else:
                vhat[rows] = np_round(vhat_new, moment_dtype, v_bits)
    if root:
        v, vhat = np.sqrt(v), np.sqrt(vhat)
    return [a.reshape(shape) for a in (var, m, v, vhat)]


def sparse_steps(row_shape, seed=0, n_steps=5, scale=0.1):
    """Gradients with duplicates among rows 0-9; rows 10 and 11 never appear."""
    rng = np.random.default_rng(seed)
    return [
        (
            rng.integers(0, 10, size=8).astype(np.int32),
            (scale * rng.normal(size=(8, *row_shape))).astype(np.float32),
        )
        for _ in range(n_steps)
    ]


def state(optimizer, var):
    """[var, m, v(, vhat)] as float64 arrays."""
    index = optimizer._index_dict[optimizer._var_key(var)]
    slots = [optimizer._momentums[index], optimizer._velocities[index]]
    if optimizer.amsgrad:
        slots.append(optimizer._velocity_hats[index])
    return [np.asarray(x.numpy(), np.float64) for x in (var, *slots)]


def assert_matches_reference(got, want):
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-6)
    # The stored moments are the reference's 16-bit values, bit for bit.
    for got_slot, want_slot in zip(got[1:], want[1:], strict=False):
        np.testing.assert_array_equal(got_slot, want_slot)


@LEAN
@ROUNDING
@FUSED
@ROW_SHAPES
def test_lean_moments_match_numpy_step_by_step(moment_dtype, stochastic, jit_compile, row_shape):
    table = np.random.default_rng(2).normal(size=(ROWS, *row_shape)).astype(np.float32)
    steps = sparse_steps(row_shape, seed=4)
    optimizer = SparseAdam(
        0.01, moment_dtype=moment_dtype, stochastic_rounding=stochastic, jit_compile=jit_compile
    )
    var = tf.Variable(table)
    optimizer.build([var])
    assert optimizer._momentums[0].dtype == tf.as_dtype(moment_dtype)
    dense_shape = tf.constant([ROWS, *row_shape])
    for t, (indices, values) in enumerate(steps, start=1):
        before = state(optimizer, var)
        grad = tf.IndexedSlices(tf.constant(values), tf.constant(indices), dense_shape)
        optimizer.apply_gradients([(grad, var)])
        after = state(optimizer, var)
        # Rows outside this step's gradient: variable and every slot bit-identical.
        skipped = np.setdiff1d(np.arange(ROWS), indices)
        for got, old in zip(after, before, strict=True):
            np.testing.assert_array_equal(got[skipped], old[skipped])
        assert_matches_reference(
            after, lean_adam_reference(table, steps[:t], moment_dtype, stochastic)
        )
    np.testing.assert_array_equal(var.numpy()[10:], table[10:])
    assert not any(s[10:].any() for s in state(optimizer, var)[1:])


@LEAN
@FUSED
@pytest.mark.parametrize("use_function", [False, True], ids=["eager", "tf.function"])
def test_lean_amsgrad_and_weight_decay_match_numpy(moment_dtype, jit_compile, use_function):
    table = np.random.default_rng(3).normal(size=(ROWS, 4)).astype(np.float32)
    steps = sparse_steps((4,), seed=5, n_steps=6)
    options = {"amsgrad": True, "weight_decay": 0.1, "beta_1": 0.5, "beta_2": 0.9}
    optimizer = SparseAdam(0.01, moment_dtype=moment_dtype, jit_compile=jit_compile, **options)
    var = tf.Variable(table)
    apply = tf.function(optimizer.apply_gradients) if use_function else optimizer.apply_gradients
    dense_shape = tf.constant([ROWS, 4])
    for indices, values in steps:
        apply([(tf.IndexedSlices(tf.constant(values), tf.constant(indices), dense_shape), var)])
    want = lean_adam_reference(table, steps, moment_dtype, True, **options)
    assert_matches_reference(state(optimizer, var), want)
    np.testing.assert_array_equal(var.numpy()[10:], table[10:])


@LEAN
@pytest.mark.parametrize("shape", [(), (7,), (5, 3), (4, 2, 3)], ids=["0d", "1d", "2d", "3d"])
def test_dense_gradients_update_every_row_with_lean_moments(moment_dtype, shape):
    rng = np.random.default_rng(6)
    table = rng.normal(size=shape).astype(np.float32)
    grads = [(0.1 * rng.normal(size=shape)).astype(np.float32) for _ in range(4)]
    optimizer = SparseAdam(0.01, moment_dtype=moment_dtype)
    var = tf.Variable(table)
    for g in grads:
        optimizer.apply_gradients([(tf.constant(g), var)])
    flat = table.reshape(1, 1) if not shape else table
    steps = [(None, g.reshape(flat.shape)) for g in grads]
    want = lean_adam_reference(flat, steps, moment_dtype, True)
    got = [x.reshape(flat.shape) for x in state(optimizer, var)]
    assert_matches_reference(got, want)


@pytest.mark.parametrize("stochastic", [True, False], ids=["stochastic", "nearest"])
def test_bfloat16_v_follows_smaller_gradients_only_with_stochastic_rounding(stochastic):
    # Why stochastic rounding is the default: after one large gradient, v must decay
    # by 0.1% of itself per step (beta_2 = 0.999), less than half a bfloat16 step.
    # Rounded to nearest it never moves; rounded stochastically it follows on average.
    n = 4096
    var = tf.Variable(tf.zeros([n]))
    optimizer = SparseAdam(1e-4, moment_dtype="bfloat16", stochastic_rounding=stochastic)
    optimizer.apply_gradients([(tf.ones([n]), var)])
    after_first = optimizer._velocities[0].numpy().astype(np.float64)
    apply = tf.function(optimizer.apply_gradients)
    small = tf.fill([n], 0.01)
    for _ in range(300):
        apply([(small, var)])
    exact = 1e-3
    for _ in range(300):
        exact += (1e-4 - exact) * 1e-3
    v = optimizer._velocities[0].numpy().astype(np.float64)
    if stochastic:
        assert abs(v.mean() - exact) < 0.01 * exact
    else:
        np.testing.assert_array_equal(v, after_first)
        assert v.mean() > 1.25 * exact


def test_float64_variables_keep_full_moments_and_float32_slots_take_half_the_bytes():
    optimizer = SparseAdam(moment_dtype="bfloat16", amsgrad=True)
    wide, narrow = tf.Variable(tf.zeros([4, 2], tf.float64)), tf.Variable(tf.zeros([4, 2]))
    optimizer.build([wide, narrow])
    assert [s.dtype for s in (optimizer._momentums[0], optimizer._velocities[0])] == [
        tf.float64,
        tf.float64,
    ]
    slots = (optimizer._momentums[1], optimizer._velocities[1], optimizer._velocity_hats[1])
    assert {s.dtype for s in slots} == {tf.bfloat16}
    assert all(s.dtype.size == 2 for s in slots)
    assert [s.shape for s in slots] == [narrow.shape] * 3


def _embedding_model(seed=2):
    keras.utils.set_random_seed(seed)
    ids = keras.Input(shape=(2,), dtype="int32")
    x = keras.layers.Flatten()(Embedding(50, 4, name="table")(ids))
    return keras.Model(ids, keras.layers.Dense(1)(x))


def _fit_data(seed=2, n=64):
    rng = np.random.default_rng(seed)
    return (
        rng.integers(0, 30, size=(n, 2)).astype(np.int32),
        rng.normal(size=(n, 1)).astype(np.float32),
    )


@LEAN
def test_checkpoint_restore_continues_bit_identically(tmp_path, moment_dtype):
    def make():
        model = _embedding_model()
        optimizer = SparseAdam(0.01, moment_dtype=moment_dtype)
        model.compile(optimizer=optimizer, loss="mse")
        return model, optimizer

    x, y = _fit_data()
    model, optimizer = make()
    before = model.get_layer("table").embeddings.numpy().copy()
    model.fit(x[:32], y[:32], batch_size=16, epochs=1, verbose=0, shuffle=False)
    path = tf.train.Checkpoint(model=model, optimizer=optimizer).save(str(tmp_path / "ckpt"))
    model.fit(x[32:], y[32:], batch_size=16, epochs=1, verbose=0, shuffle=False)
    continued = [w.copy() for w in model.get_weights()]
    continued_slots = [s.numpy() for s in optimizer.variables]

    restored_model, restored_opt = make()
    restored_opt.build(restored_model.trainable_variables)
    tf.train.Checkpoint(model=restored_model, optimizer=restored_opt).restore(
        path
    ).assert_existing_objects_matched()
    assert int(restored_opt.iterations) == 2
    restored_model.fit(x[32:], y[32:], batch_size=16, epochs=1, verbose=0, shuffle=False)
    for got, want in zip(restored_model.get_weights(), continued, strict=True):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(restored_opt.variables, continued_slots, strict=True):
        assert got.dtype == tf.as_dtype(want.dtype)
        np.testing.assert_array_equal(got.numpy(), want)
    # Rows never looked up: as created, moments zero.
    table = restored_model.get_layer("table").embeddings
    untouched = np.setdiff1d(np.arange(50), np.unique(x))
    np.testing.assert_array_equal(table.numpy()[untouched], before[untouched])
    index = restored_opt._index_dict[restored_opt._var_key(table)]
    assert not restored_opt._velocities[index].numpy()[untouched].any()


def test_get_config_round_trips_every_argument():
    optimizer = SparseAdam(
        learning_rate=0.02,
        beta_1=0.8,
        amsgrad=True,
        weight_decay=0.01,
        jit_compile=False,
        name="lean",
        moment_dtype=tf.float16,
        stochastic_rounding=False,
    )
    config = optimizer.get_config()
    params = set(inspect.signature(SparseAdam.__init__).parameters) - {"self", "kwargs"}
    assert params <= set(config), params - set(config)
    assert config["moment_dtype"] == "float16" and config["stochastic_rounding"] is False
    clone = SparseAdam.from_config(copy.deepcopy(config))
    assert clone.get_config() == config
    revived = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert type(revived) is SparseAdam and revived.get_config() == config
    assert SparseAdam().get_config()["moment_dtype"] == "float32"
    assert SparseAdam(moment_dtype="bfloat16").get_config()["stochastic_rounding"] is True


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"moment_dtype": "float8"}, "Received: moment_dtype='float8'"),
        ({"moment_dtype": tf.int32}, r"Received: moment_dtype=tf.int32"),
        ({"stochastic_rounding": "yes"}, "Received: stochastic_rounding='yes'"),
    ],
)
def test_bad_lean_arguments_name_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SparseAdam(**kwargs)


def test_mixed_precision_loss_scaling_with_lean_moments():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = _embedding_model(seed=1)
        optimizer = keras.mixed_precision.LossScaleOptimizer(
            SparseAdam(0.01, moment_dtype="bfloat16")
        )
        model.compile(optimizer=optimizer, loss="mse")
        table = model.get_layer("table").embeddings
        before = table.numpy().copy()
        x, y = _fit_data(seed=1)
        history = model.fit(x, y, batch_size=16, epochs=3, verbose=0)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    after = table.numpy()
    untouched = np.setdiff1d(np.arange(50), np.unique(x))
    np.testing.assert_array_equal(after[untouched], before[untouched])
    assert np.isfinite(after).all()
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert {s.dtype for s in optimizer.inner_optimizer._momentums} == {tf.bfloat16}


@FUSED
def test_float16_keeps_the_second_moment_of_small_gradients(jit_compile):
    # Embedding gradients of a mean loss over a large batch are often 1e-5: v = g**2
    # (1e-13 after one step) is zero in float16, and a row with m but no v would step
    # 30x too far. float16 slots keep sqrt(v) instead, so lean steps match full ones.
    table = np.zeros([8, 4], np.float32)
    full, lean = SparseAdam(0.01), SparseAdam(0.01, moment_dtype="float16", jit_compile=jit_compile)
    full_var, lean_var = tf.Variable(table), tf.Variable(table)
    rng = np.random.default_rng(12)
    for _ in range(20):
        values = (1e-5 * (1 + 0.1 * rng.normal(size=(4, 4)))).astype(np.float32)
        for optimizer, var in ((full, full_var), (lean, lean_var)):
            grad = tf.IndexedSlices(tf.constant(values), tf.constant([0, 1, 2, 3]), [8, 4])
            optimizer.apply_gradients([(grad, var)])
    assert (lean._velocities[0].numpy()[:4] > 0).all()
    # Within the noise of float16 subnormals (sqrt(v) is 3e-7 after one step).
    np.testing.assert_allclose(lean_var.numpy(), full_var.numpy(), rtol=0.15)
    np.testing.assert_array_equal(lean_var.numpy()[4:], 0.0)
