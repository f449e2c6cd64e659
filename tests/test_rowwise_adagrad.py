"""RowwiseAdagrad against a float64 NumPy reference and against tf-keras's Adagrad."""

import copy
import inspect

import numpy as np
import pytest

import recsys  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
from recsys._tf import keras, tf
from recsys.layers import Embedding
from recsys.optimizers import RowwiseAdagrad

ROWS = 12
FUSED = pytest.mark.parametrize("jit_compile", [True, False], ids=["fused-xla", "tf-ops"])
ROW_SHAPES = pytest.mark.parametrize("row_shape", [(), (3,), (2, 3)], ids=["1d", "2d", "3d"])


def rowwise_adagrad_reference(
    table, steps, lr=0.1, initial_accumulator_value=0.1, epsilon=1e-7, weight_decay=None
):
    """Row-wise Adagrad in float64: duplicates summed, one accumulator per row.

    `steps` holds (indices, values); indices None means a dense gradient. Returns the
    variable (the table's shape) and the accumulators (one per row).
    """
    shape = table.shape
    var = table.astype(np.float64).reshape(max(1, shape[0] if shape else 1), -1)
    accumulator = np.full(var.shape[0], initial_accumulator_value, np.float64)
    for indices, values in steps:
        values = np.asarray(values, np.float64).reshape(-1, var.shape[1])
        if indices is None:
            rows, g = np.arange(var.shape[0]), values
        else:
            rows = np.unique(indices)
            grad = np.zeros_like(var)
            np.add.at(grad, indices, values)
            g = grad[rows]
        accumulator[rows] += (g * g).mean(axis=1)
        delta = lr * g / (np.sqrt(accumulator[rows]) + epsilon)[:, None]
        if weight_decay:
            delta += var[rows] * weight_decay * lr
        var[rows] -= delta
    return var.reshape(shape), accumulator


def sparse_steps(row_shape, seed=0, n_steps=5):
    """Gradients with duplicates among rows 0-9; rows 10 and 11 never appear."""
    rng = np.random.default_rng(seed)
    return [
        (
            rng.integers(0, 10, size=8).astype(np.int32),
            rng.normal(size=(8, *row_shape)).astype(np.float32),
        )
        for _ in range(n_steps)
    ]


def accumulator_of(optimizer, var):
    return optimizer._accumulators[optimizer._index_dict[optimizer._var_key(var)]].numpy()


@FUSED
@ROW_SHAPES
@pytest.mark.parametrize("use_function", [False, True], ids=["eager", "tf.function"])
@pytest.mark.parametrize(
    "options",
    [{}, {"weight_decay": 0.1, "initial_accumulator_value": 0.0, "epsilon": 1e-3}],
    ids=["defaults", "wd-zero-init"],
)
def test_matches_numpy_step_by_step_with_duplicates(row_shape, use_function, options, jit_compile):
    table = np.random.default_rng(2).normal(size=(ROWS, *row_shape)).astype(np.float32)
    steps = sparse_steps(row_shape, seed=4)
    optimizer = RowwiseAdagrad(0.1, jit_compile=jit_compile, **options)
    assert optimizer.fuses_sparse_updates == jit_compile
    var = tf.Variable(table)
    optimizer.build([var])
    assert accumulator_of(optimizer, var).shape == (ROWS,)
    apply = tf.function(optimizer.apply_gradients) if use_function else optimizer.apply_gradients
    dense_shape = tf.constant([ROWS, *row_shape])
    for t, (indices, values) in enumerate(steps, start=1):
        before = var.numpy(), accumulator_of(optimizer, var)
        apply([(tf.IndexedSlices(tf.constant(values), tf.constant(indices), dense_shape), var)])
        after = var.numpy(), accumulator_of(optimizer, var)
        skipped = np.setdiff1d(np.arange(ROWS), indices)
        for got, old in zip(after, before, strict=True):
            np.testing.assert_array_equal(got[skipped], old[skipped])
        want_var, want_acc = rowwise_adagrad_reference(table, steps[:t], **options)
        np.testing.assert_allclose(after[0], want_var, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(after[1], want_acc, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(var.numpy()[10:], table[10:])
    init = options.get("initial_accumulator_value", 0.1)
    np.testing.assert_array_equal(accumulator_of(optimizer, var)[10:], np.float32(init))


@FUSED
def test_sparse_equals_the_same_gradient_made_dense(jit_compile):
    # Adagrad has no decay: a row with a zero gradient does not move under a dense
    # update either, so the lazy update equals the dense one for every row.
    table = np.random.default_rng(8).normal(size=(ROWS, 4)).astype(np.float32)
    steps = sparse_steps((4,), seed=9)
    sparse_opt, dense_opt = RowwiseAdagrad(0.1, jit_compile=jit_compile), RowwiseAdagrad(0.1)
    sparse_var, dense_var = tf.Variable(table), tf.Variable(table)
    for indices, values in steps:
        dense = np.zeros((ROWS, 4), np.float32)
        np.add.at(dense, indices, values)
        sparse_opt.apply_gradients([(tf.IndexedSlices(values, indices, [ROWS, 4]), sparse_var)])
        dense_opt.apply_gradients([(tf.constant(dense), dense_var)])
    pairs = [
        (sparse_var.numpy(), dense_var.numpy()),
        (accumulator_of(sparse_opt, sparse_var), accumulator_of(dense_opt, dense_var)),
    ]
    for got, want in pairs:
        if jit_compile:
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
        else:
            np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(dense_var.numpy()[10:], table[10:])


@pytest.mark.parametrize("shape", [(), (7,), (5, 3), (4, 2, 3)], ids=["0d", "1d", "2d", "3d"])
def test_dense_gradients_update_each_row_with_its_accumulator(shape):
    rng = np.random.default_rng(6)
    table = rng.normal(size=shape).astype(np.float32)
    grads = [rng.normal(size=shape).astype(np.float32) for _ in range(4)]
    optimizer = RowwiseAdagrad(0.1)
    var = tf.Variable(table)
    for g in grads:
        optimizer.apply_gradients([(tf.constant(g), var)])
    want_var, want_acc = rowwise_adagrad_reference(table, [(None, g) for g in grads])
    np.testing.assert_allclose(var.numpy(), want_var, rtol=1e-5, atol=1e-6)
    accumulator = accumulator_of(optimizer, var)
    assert accumulator.shape == shape[:1]
    np.testing.assert_allclose(accumulator.reshape(-1), want_acc, rtol=1e-6)


def test_one_dimensional_variables_are_legacy_element_wise_adagrad():
    # A 1-D variable's rows are its elements: the legacy Keras Adagrad (which adds
    # epsilon after the square root, as here) on the same dense and sparse steps.
    rng = np.random.default_rng(10)
    start = rng.normal(size=10)
    dense_grads = [tf.constant(rng.normal(size=10)) for _ in range(3)]
    sparse = tf.IndexedSlices(
        tf.constant([0.5, -1.0, 0.25], tf.float64), tf.constant([2, 7, 2]), tf.constant([10])
    )
    results = []
    for optimizer in (RowwiseAdagrad(0.3), keras.optimizers.legacy.Adagrad(0.3)):
        var = tf.Variable(start)
        for grad in [*dense_grads, sparse, sparse, sparse]:
            optimizer.apply_gradients([(grad, var)])
        results.append(var.numpy())
    np.testing.assert_allclose(results[0], results[1], rtol=1e-12, atol=1e-12)
    assert not np.allclose(results[0], start)


def test_model_fit_leaves_untouched_rows_and_accumulators_unchanged():
    keras.utils.set_random_seed(0)
    ids = keras.Input(shape=(2,), dtype="int32")
    x = keras.layers.Flatten()(Embedding(50, 4, name="table")(ids))
    model = keras.Model(ids, keras.layers.Dense(1)(x))
    optimizer = RowwiseAdagrad(0.1)
    model.compile(optimizer=optimizer, loss="mse")
    table = model.get_layer("table").embeddings
    before = table.numpy().copy()
    rng = np.random.default_rng(0)
    x = rng.integers(0, 30, size=(64, 2)).astype(np.int32)
    y = rng.normal(size=(64, 1)).astype(np.float32)
    model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    touched = np.unique(x)
    untouched = np.setdiff1d(np.arange(50), touched)
    accumulator = accumulator_of(optimizer, table)
    assert accumulator.shape == (50,)
    np.testing.assert_array_equal(table.numpy()[untouched], before[untouched])
    np.testing.assert_array_equal(accumulator[untouched], np.float32(0.1))
    assert (accumulator[touched] > 0.1).all()
    kernel = model.layers[-1].kernel
    assert accumulator_of(optimizer, kernel).shape == (kernel.shape[0],)


def _model(seed=2):
    keras.utils.set_random_seed(seed)
    ids = keras.Input(shape=(2,), dtype="int32")
    x = keras.layers.Flatten()(Embedding(50, 4, name="table")(ids))
    return keras.Model(ids, keras.layers.Dense(1)(x))


def test_checkpoint_restore_continues_bit_identically(tmp_path):
    def make():
        model = _model()
        optimizer = RowwiseAdagrad(0.1)
        model.compile(optimizer=optimizer, loss="mse")
        return model, optimizer

    rng = np.random.default_rng(2)
    x = rng.integers(0, 30, size=(64, 2)).astype(np.int32)
    y = rng.normal(size=(64, 1)).astype(np.float32)
    model, optimizer = make()
    model.fit(x[:32], y[:32], batch_size=16, epochs=1, verbose=0, shuffle=False)
    path = tf.train.Checkpoint(model=model, optimizer=optimizer).save(str(tmp_path / "ckpt"))
    model.fit(x[32:], y[32:], batch_size=16, epochs=1, verbose=0, shuffle=False)
    continued = [w.copy() for w in model.get_weights()]
    continued_state = [v.numpy() for v in optimizer.variables]

    restored_model, restored_opt = make()
    restored_opt.build(restored_model.trainable_variables)
    tf.train.Checkpoint(model=restored_model, optimizer=restored_opt).restore(
        path
    ).assert_existing_objects_matched()
    assert int(restored_opt.iterations) == 2
    restored_model.fit(x[32:], y[32:], batch_size=16, epochs=1, verbose=0, shuffle=False)
    for got, want in zip(restored_model.get_weights(), continued, strict=True):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(restored_opt.variables, continued_state, strict=True):
        np.testing.assert_array_equal(got.numpy(), want)


def test_get_config_round_trips_every_argument():
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.9)
    optimizer = RowwiseAdagrad(
        learning_rate=schedule,
        initial_accumulator_value=0.0,
        epsilon=1e-8,
        weight_decay=0.01,
        clipnorm=1.5,
        jit_compile=False,
        name="rowwise",
    )
    config = optimizer.get_config()
    params = set(inspect.signature(RowwiseAdagrad.__init__).parameters) - {"self", "kwargs"}
    assert params <= set(config), params - set(config)
    clone = RowwiseAdagrad.from_config(copy.deepcopy(config))
    assert clone.get_config() == config
    assert clone.initial_accumulator_value == 0.0 and not clone.fuses_sparse_updates
    revived = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert type(revived) is RowwiseAdagrad and revived.get_config() == config
    assert keras.saving.get_registered_name(RowwiseAdagrad) == "recsys>RowwiseAdagrad"
    default = RowwiseAdagrad()
    assert default.get_config()["jit_compile"] is True
    assert RowwiseAdagrad.from_config(default.get_config()).fuses_sparse_updates == (
        default.fuses_sparse_updates
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"use_ema": True}, "use_ema=True"),
        ({"learning_rate": -1.0}, "Received: learning_rate=-1.0"),
        ({"initial_accumulator_value": -0.1}, "Received: initial_accumulator_value=-0.1"),
        ({"epsilon": "small"}, "Received: epsilon='small'"),
        ({"weight_decay": -0.5}, "Received: weight_decay=-0.5"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RowwiseAdagrad(**kwargs)


def test_mixed_precision_loss_scaling_keeps_updates_sparse():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = _model(seed=1)
        optimizer = keras.mixed_precision.LossScaleOptimizer(RowwiseAdagrad(0.05))
        model.compile(optimizer=optimizer, loss="mse")
        table = model.get_layer("table").embeddings
        before = table.numpy().copy()
        rng = np.random.default_rng(1)
        x = rng.integers(0, 30, size=(64, 2)).astype(np.int32)
        y = rng.normal(size=(64, 1)).astype(np.float32)
        history = model.fit(x, y, batch_size=16, epochs=3, verbose=0)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    untouched = np.setdiff1d(np.arange(50), np.unique(x))
    np.testing.assert_array_equal(table.numpy()[untouched], before[untouched])
    assert np.isfinite(table.numpy()).all()
    assert history.history["loss"][-1] < history.history["loss"][0]
