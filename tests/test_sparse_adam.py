"""SparseAdam against an independent NumPy reference and against tf-keras Adam."""

import copy
import inspect

import numpy as np
import pytest

import recsys  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
from recsys._tf import keras, tf
from recsys.layers import Embedding
from recsys.optimizers import SparseAdam
from recsys.optimizers._sparse_rows import RowSparseUpdates
from recsys.optimizers.sparse_adam import bucket_size

ROWS, DIM = 12, 3


def lazy_adam_reference(
    table,
    steps,
    lr=0.01,
    beta_1=0.9,
    beta_2=0.999,
    epsilon=1e-7,
    amsgrad=False,
    weight_decay=None,
    lr_at_step=None,
):
    """Lazy Adam in float64 NumPy: duplicates summed, only touched rows change."""
    var = table.astype(np.float64).copy()
    m = np.zeros_like(var)
    v = np.zeros_like(var)
    vhat = np.zeros_like(var)
    for t, (indices, values) in enumerate(steps, start=1):
        step_lr = lr_at_step(t - 1) if lr_at_step else lr
        rows = np.unique(indices)
        grad = np.zeros_like(var)
        np.add.at(grad, indices, values.astype(np.float64))
        g = grad[rows]
        m[rows] = beta_1 * m[rows] + (1 - beta_1) * g
        v[rows] = beta_2 * v[rows] + (1 - beta_2) * g * g
        second = v[rows]
        if amsgrad:
            vhat[rows] = np.maximum(vhat[rows], v[rows])
            second = vhat[rows]
        alpha = step_lr * np.sqrt(1 - beta_2**t) / (1 - beta_1**t)
        delta = alpha * m[rows] / (np.sqrt(second) + epsilon)
        if weight_decay:
            delta += var[rows] * weight_decay * step_lr
        var[rows] -= delta
    return var, m, v


def random_sparse_steps(seed=0, n_steps=5):
    rng = np.random.default_rng(seed)
    steps = []
    for _ in range(n_steps):
        # Rows 10 and 11 never appear; duplicates are frequent (8 draws from 10 rows).
        indices = rng.integers(0, 10, size=8).astype(np.int32)
        steps.append((indices, rng.normal(size=(8, DIM)).astype(np.float32)))
    return steps


FUSED = pytest.mark.parametrize("jit_compile", [True, False], ids=["fused-xla", "tf-ops"])


def apply_sparse_steps(optimizer, table, steps, use_function=False):
    var = tf.Variable(table)
    apply = optimizer.apply_gradients
    if use_function:
        apply = tf.function(apply)
    for indices, values in steps:
        grad = tf.IndexedSlices(tf.constant(values), tf.constant(indices), tf.constant([ROWS, DIM]))
        apply([(grad, var)])
    return var


def slots(optimizer, var):
    index = optimizer._index_dict[optimizer._var_key(var)]
    return optimizer._momentums[index].numpy(), optimizer._velocities[index].numpy()


def all_slots(optimizer, var):
    """m, v, and vhat with AMSGrad, as NumPy arrays."""
    index = optimizer._index_dict[optimizer._var_key(var)]
    found = [optimizer._momentums[index], optimizer._velocities[index]]
    if optimizer.amsgrad:
        found.append(optimizer._velocity_hats[index])
    return [s.numpy() for s in found]


# Rows are the first dimension; what follows is the row shape: a bias vector, a
# table, a table of 2 x 3 blocks.
ROW_SHAPES = pytest.mark.parametrize("row_shape", [(), (DIM,), (2, 3)], ids=["1d", "2d", "3d"])


def sparse_steps_for(row_shape, seed=0, n_steps=5):
    """Like `random_sparse_steps`, with gradient rows of any shape (rows 10, 11 unused)."""
    rng = np.random.default_rng(seed)
    return [
        (
            rng.integers(0, 10, size=8).astype(np.int32),
            rng.normal(size=(8, *row_shape)).astype(np.float32),
        )
        for _ in range(n_steps)
    ]


@pytest.fixture
def table():
    return np.random.default_rng(1).normal(size=(ROWS, DIM)).astype(np.float32)


@FUSED
@pytest.mark.parametrize("use_function", [False, True], ids=["eager", "tf.function"])
@pytest.mark.parametrize(
    "options",
    [{}, {"amsgrad": True}, {"weight_decay": 0.1}, {"beta_1": 0.5, "beta_2": 0.9, "epsilon": 1e-3}],
    ids=["plain", "amsgrad", "weight_decay", "betas"],
)
def test_matches_numpy_lazy_adam_with_duplicates(table, options, use_function, jit_compile):
    steps = random_sparse_steps()
    optimizer = SparseAdam(learning_rate=0.01, jit_compile=jit_compile, **options)
    assert optimizer.fuses_sparse_updates == jit_compile
    var = apply_sparse_steps(optimizer, table, steps, use_function)
    want_var, want_m, want_v = lazy_adam_reference(table, steps, lr=0.01, **options)
    got_m, got_v = slots(optimizer, var)
    np.testing.assert_allclose(var.numpy(), want_var, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_m, want_m, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_v, want_v, rtol=1e-5, atol=1e-7)
    # Rows 10 and 11 were never in a gradient: bit-identical, moments still zero.
    np.testing.assert_array_equal(var.numpy()[10:], table[10:])
    assert not got_m[10:].any() and not got_v[10:].any()


@FUSED
@ROW_SHAPES
@pytest.mark.parametrize("use_function", [False, True], ids=["eager", "tf.function"])
@pytest.mark.parametrize(
    "options", [{}, {"amsgrad": True, "weight_decay": 0.1}], ids=["plain", "amsgrad-wd"]
)
def test_any_rank_matches_numpy_lazy_adam_step_by_step(
    row_shape, options, use_function, jit_compile
):
    # Issue 14: the fused kernel assumed matrices (a bias vector failed in tf.pad).
    table = np.random.default_rng(2).normal(size=(ROWS, *row_shape)).astype(np.float32)
    steps = sparse_steps_for(row_shape, seed=4)
    optimizer = SparseAdam(0.01, jit_compile=jit_compile, **options)
    var = tf.Variable(table)
    apply = tf.function(optimizer.apply_gradients) if use_function else optimizer.apply_gradients
    dense_shape = tf.constant([ROWS, *row_shape])
    optimizer.build([var])
    for t, (indices, values) in enumerate(steps, start=1):
        before = [var.numpy(), *all_slots(optimizer, var)]
        apply([(tf.IndexedSlices(tf.constant(values), tf.constant(indices), dense_shape), var)])
        after = [var.numpy(), *all_slots(optimizer, var)]
        # Rows outside this step's gradient: variable and every slot bit-identical.
        skipped = np.setdiff1d(np.arange(ROWS), indices)
        for got, old in zip(after, before, strict=True):
            np.testing.assert_array_equal(got[skipped], old[skipped])
        want_var, want_m, want_v = lazy_adam_reference(table, steps[:t], lr=0.01, **options)
        np.testing.assert_allclose(after[0], want_var, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(after[1], want_m, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(after[2], want_v, rtol=1e-5, atol=1e-7)
    # Rows 10 and 11 were never in a gradient: as created, moments still zero.
    np.testing.assert_array_equal(var.numpy()[10:], table[10:])
    assert not any(s[10:].any() for s in all_slots(optimizer, var))
    assert var.numpy().shape == table.shape


@FUSED
@pytest.mark.parametrize("use_function", [False, True], ids=["eager", "tf.function"])
def test_issue_14_bias_vector_repro(jit_compile, use_function):
    # The reproduction from issue 14, checked against tf-keras Adam: rows 0, 3 and 4
    # have zero gradient and zero moments there, so dense Adam leaves them as they are
    # too and both optimizers must agree.
    grad = tf.IndexedSlices(tf.constant([1.0, 1.5]), tf.constant([1, 2]), tf.constant([5]))
    results = []
    for optimizer in (SparseAdam(0.1, jit_compile=jit_compile), keras.optimizers.Adam(0.1)):
        var = tf.Variable(tf.ones([5]))
        apply = optimizer.apply_gradients
        if use_function:
            apply = tf.function(apply)
        for _ in range(3):
            apply([(grad, var)])
        results.append(var.numpy())
    np.testing.assert_allclose(results[0], results[1], rtol=1e-6)
    want, _, _ = lazy_adam_reference(
        np.ones(5, np.float32), [(np.array([1, 2]), np.array([1.0, 1.5]))] * 3, lr=0.1
    )
    np.testing.assert_allclose(results[0], want, rtol=1e-5)
    assert results[0][[0, 3, 4]].tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("use_function", [False, True], ids=["eager", "tf.function"])
def test_rows_of_equal_size_but_different_shapes_share_the_kernel(use_function):
    # The kernel is traced per gradient shape, and a [rows, 6] table and a
    # [rows, 2, 3] one both reach it as [n, 6]: the trace made for one must serve the
    # other. Same ids and values, so the 3-D table must equal the 2-D one bit for bit.
    steps = sparse_steps_for((2, 3), seed=6)
    table = np.random.default_rng(6).normal(size=(ROWS, 2, 3)).astype(np.float32)
    flat, blocks = tf.Variable(table.reshape(ROWS, 6)), tf.Variable(table)
    flat_opt, blocks_opt = SparseAdam(0.01, amsgrad=True), SparseAdam(0.01, amsgrad=True)
    applies = [flat_opt.apply_gradients, blocks_opt.apply_gradients]
    if use_function:
        applies = [tf.function(apply) for apply in applies]
    for step, (indices, values) in enumerate(steps):
        ids = tf.constant(indices)
        calls = [
            (
                applies[0],
                tf.IndexedSlices(values.reshape(-1, 6), ids, tf.constant([ROWS, 6])),
                flat,
            ),
            (applies[1], tf.IndexedSlices(values, ids, tf.constant([ROWS, 2, 3])), blocks),
        ]
        for apply, grad, var in calls[:: 1 if step % 2 else -1]:  # either one traces first
            apply([(grad, var)])
    np.testing.assert_array_equal(blocks.numpy().reshape(ROWS, 6), flat.numpy())
    for got, want in zip(all_slots(blocks_opt, blocks), all_slots(flat_opt, flat), strict=True):
        np.testing.assert_array_equal(got.reshape(ROWS, 6), want)
    want, _, _ = lazy_adam_reference(table, steps, amsgrad=True)
    np.testing.assert_allclose(blocks.numpy(), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(blocks.numpy()[10:], table[10:])


@FUSED
def test_rows_without_elements_change_nothing(jit_compile):
    # A [rows, 0] variable has nothing to update; it takes the plain path, no error.
    optimizer = SparseAdam(0.01, jit_compile=jit_compile)
    var = tf.Variable(tf.zeros([ROWS, 0]))
    grad = tf.IndexedSlices(tf.zeros([3, 0]), tf.constant([1, 1, 4]), tf.constant([ROWS, 0]))
    optimizer.apply_gradients([(grad, var)])
    assert var.shape == (ROWS, 0) and int(optimizer.iterations) == 1


def test_learning_rate_schedule_follows_global_step(table):
    schedule = keras.optimizers.schedules.ExponentialDecay(0.05, decay_steps=1, decay_rate=0.5)
    steps = random_sparse_steps(seed=3)
    optimizer = SparseAdam(learning_rate=schedule)
    var = apply_sparse_steps(optimizer, table, steps)
    want, _, _ = lazy_adam_reference(table, steps, lr_at_step=lambda k: 0.05 * 0.5**k)
    np.testing.assert_allclose(var.numpy(), want, rtol=1e-5, atol=1e-6)
    assert int(optimizer.iterations) == len(steps)


@pytest.mark.parametrize(
    "options", [{}, {"amsgrad": True}, {"weight_decay": 0.05}], ids=["plain", "amsgrad", "wd"]
)
def test_dense_gradient_is_exactly_tf_keras_adam(table, options):
    rng = np.random.default_rng(5)
    grads = [rng.normal(size=(ROWS, DIM)).astype(np.float32) for _ in range(4)]
    results = []
    for cls in (SparseAdam, keras.optimizers.Adam):
        optimizer = cls(learning_rate=0.01, **options)
        var = tf.Variable(table)
        for g in grads:
            optimizer.apply_gradients([(tf.constant(g), var)])
        results.append((var.numpy(), *slots(optimizer, var)))
    for got, want in zip(results[0], results[1], strict=True):
        np.testing.assert_array_equal(got, want)


@FUSED
def test_rows_in_every_step_equal_dense_adam(table, jit_compile):
    rng = np.random.default_rng(7)
    sparse_opt = SparseAdam(0.01, jit_compile=jit_compile)
    dense_opt = keras.optimizers.Adam(0.01)
    sparse_var, dense_var = tf.Variable(table), tf.Variable(table)
    rows = np.array([0, 3, 4], dtype=np.int32)
    for _ in range(4):
        values = rng.normal(size=(3, DIM)).astype(np.float32)
        dense = np.zeros((ROWS, DIM), np.float32)
        dense[rows] = values
        sparse_opt.apply_gradients([(tf.IndexedSlices(values, rows, [ROWS, DIM]), sparse_var)])
        dense_opt.apply_gradients([(tf.constant(dense), dense_var)])
    pairs = [(sparse_var.numpy(), dense_var.numpy())]
    pairs += zip(slots(sparse_opt, sparse_var), slots(dense_opt, dense_var), strict=True)
    for got, want in pairs:
        if jit_compile:
            # XLA may fuse a multiply and an add (one rounding instead of two).
            np.testing.assert_allclose(got[rows], want[rows], rtol=1e-6, atol=1e-9)
        else:
            np.testing.assert_array_equal(got[rows], want[rows])


@pytest.mark.parametrize(
    "option", [{"clipnorm": 0.1}, {"clipvalue": 0.05}, {"global_clipnorm": 0.1}]
)
def test_clipping_options_are_applied_to_sparse_gradients(table, option):
    steps = random_sparse_steps(seed=11, n_steps=3)
    clipped_var = apply_sparse_steps(SparseAdam(0.01, **option), table, steps)
    plain_var = apply_sparse_steps(SparseAdam(0.01), table, steps)
    assert not np.allclose(clipped_var.numpy()[:10], plain_var.numpy()[:10])
    # Clip the values ourselves, as the base optimizer documents, and compare.
    manual = []
    for indices, values in steps:
        if "clipnorm" in option or "global_clipnorm" in option:
            limit = option.get("clipnorm", option.get("global_clipnorm"))
            norm = np.linalg.norm(values)
            values = values * min(1.0, limit / norm)
        else:
            values = np.clip(values, -option["clipvalue"], option["clipvalue"])
        manual.append((indices, values.astype(np.float32)))
    want, _, _ = lazy_adam_reference(table, manual)
    np.testing.assert_allclose(clipped_var.numpy(), want, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(clipped_var.numpy()[10:], table[10:])


def _embedding_model(rows=50, dim=4, seed=0):
    keras.utils.set_random_seed(seed)
    ids = keras.Input(shape=(2,), dtype="int32")
    x = Embedding(rows, dim, name="table")(ids)
    x = keras.layers.Flatten()(x)
    out = keras.layers.Dense(1, dtype="float32")(x)
    return keras.Model(ids, out)


def _fit_data(seed=0, n=64, max_id=30):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, max_id, size=(n, 2)).astype(np.int32)
    y = rng.normal(size=(n, 1)).astype(np.float32)
    return x, y


def test_model_fit_leaves_untouched_rows_and_slots_unchanged():
    model = _embedding_model()
    optimizer = SparseAdam(0.01)
    model.compile(optimizer=optimizer, loss="mse")
    table = model.get_layer("table").embeddings
    before = table.numpy().copy()
    x, y = _fit_data()
    model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    after = table.numpy()
    m, v = slots(optimizer, table)
    touched = np.unique(x)
    untouched = np.setdiff1d(np.arange(50), touched)
    assert len(untouched) >= 20
    np.testing.assert_array_equal(after[untouched], before[untouched])
    assert not m[untouched].any() and not v[untouched].any()
    assert np.all(np.any(after[touched] != before[touched], axis=1))
    assert np.all(np.any(v[touched] != 0, axis=1))


def test_mixed_precision_loss_scaling_keeps_updates_sparse():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = _embedding_model(seed=1)
        optimizer = keras.mixed_precision.LossScaleOptimizer(SparseAdam(0.01))
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
    assert not np.array_equal(after[np.unique(x)], before[np.unique(x)])


def test_checkpoint_restore_continues_identically(tmp_path):
    def make():
        model = _embedding_model(seed=2)
        optimizer = SparseAdam(0.01)
        model.compile(optimizer=optimizer, loss="mse")
        return model, optimizer

    x, y = _fit_data(seed=2)
    model, optimizer = make()
    model.fit(x[:32], y[:32], batch_size=16, epochs=1, verbose=0, shuffle=False)
    path = tf.train.Checkpoint(model=model, optimizer=optimizer).save(str(tmp_path / "ckpt"))
    model.fit(x[32:], y[32:], batch_size=16, epochs=1, verbose=0, shuffle=False)
    continued = [w.copy() for w in model.get_weights()]

    restored_model, restored_opt = make()
    restored_opt.build(restored_model.trainable_variables)
    tf.train.Checkpoint(model=restored_model, optimizer=restored_opt).restore(
        path
    ).assert_existing_objects_matched()
    assert int(restored_opt.iterations) == 2
    restored_model.fit(x[32:], y[32:], batch_size=16, epochs=1, verbose=0, shuffle=False)
    for got, want in zip(restored_model.get_weights(), continued, strict=True):
        np.testing.assert_array_equal(got, want)
    table = restored_model.get_layer("table").embeddings
    np.testing.assert_array_equal(
        slots(restored_opt, table)[1], slots(optimizer, model.get_layer("table").embeddings)[1]
    )


def test_get_config_round_trips_every_argument():
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.9)
    optimizer = SparseAdam(
        learning_rate=schedule,
        beta_1=0.8,
        beta_2=0.95,
        epsilon=1e-5,
        adaptive_epsilon=True,
        amsgrad=True,
        weight_decay=0.01,
        clipnorm=1.5,
        clipvalue=None,
        jit_compile=False,
        name="my_adam",
    )
    config = optimizer.get_config()
    params = set(inspect.signature(SparseAdam.__init__).parameters) - {"self", "kwargs"}
    assert params <= set(config), params - set(config)
    clone = SparseAdam.from_config(copy.deepcopy(config))
    assert clone.get_config() == config
    assert clone.adaptive_epsilon and clone.amsgrad and clone.weight_decay == 0.01
    revived = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert type(revived) is SparseAdam
    assert keras.saving.get_registered_name(SparseAdam) == "recsys>SparseAdam"
    # tf-keras records jit_compile=False on machines without a GPU; the fused sparse
    # kernel runs on CPU, so a round trip must keep the request.
    default = SparseAdam()
    assert default.get_config()["jit_compile"] is True
    clone = SparseAdam.from_config(default.get_config())
    assert clone.fuses_sparse_updates == default.fuses_sparse_updates


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"use_ema": True}, "use_ema=True"),
        ({"learning_rate": -1.0}, "Received: learning_rate=-1.0"),
        ({"beta_1": 1.0}, "Received: beta_1=1.0"),
        ({"beta_2": -0.1}, "Received: beta_2=-0.1"),
        ({"epsilon": -1e-8}, "Received: epsilon=-1e-08"),
        ({"weight_decay": -0.5}, "Received: weight_decay=-0.5"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SparseAdam(**kwargs)


def _xla_trace_count(optimizer):
    # tf-keras's per-variable XLA update, past the row-sparse mixin that routes to it.
    return super(RowSparseUpdates, optimizer)._update_step_xla.experimental_get_tracing_count()


def test_jit_compile_keeps_sparse_out_of_adams_xla_update(table):
    # tf-keras enables XLA for the update only when a GPU is present; force it here so
    # the dispatch is tested: sparse gradients take the fused kernel (padded to a few
    # lengths), never tf-keras's per-variable XLA update, which would compile anew for
    # every unique-row count; dense ones do take it.
    steps = random_sparse_steps(seed=13, n_steps=3)
    rng = np.random.default_rng(13)
    dense_grads = [rng.normal(size=(ROWS, DIM)).astype(np.float32) for _ in range(2)]
    results = []
    for jit in (False, True):
        sparse_opt, dense_opt = SparseAdam(0.01), SparseAdam(0.01)
        sparse_opt.jit_compile = dense_opt.jit_compile = jit
        sparse_var = apply_sparse_steps(sparse_opt, table, steps)
        dense_var = tf.Variable(table)
        for g in dense_grads:
            dense_opt.apply_gradients([(tf.constant(g), dense_var)])
        results.append((sparse_var.numpy(), dense_var.numpy()))
        if jit:
            assert _xla_trace_count(sparse_opt) == 0
            assert _xla_trace_count(dense_opt) >= 1
    np.testing.assert_array_equal(results[1][0], results[0][0])
    np.testing.assert_allclose(results[1][1], results[0][1], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(results[1][0][10:], table[10:])


def test_bucket_size_pads_by_less_than_an_eighth_to_eight_lengths_per_octave():
    n = np.arange(0, 70_000)
    sizes = bucket_size(tf.constant(n)).numpy()
    assert (sizes >= n).all()
    np.testing.assert_array_equal(sizes[:17], n[:17])
    assert ((sizes - n)[17:] * 8 < n[17:]).all()
    for k in range(5, 17):
        in_octave = sizes[(n > 2 ** (k - 1)) & (n <= 2**k)]
        assert len(set(in_octave.tolist())) == 8, k
    assert bucket_size(tf.constant(4096, tf.int64)).numpy() == 4096
    assert bucket_size(tf.constant(4097)).numpy() == 4096 + 512


@ROW_SHAPES
def test_varying_batch_lengths_compile_a_few_kernels_not_one_per_length(monkeypatch, row_shape):
    # Ragged or multi-hot features give every batch its own number of ids (and of
    # distinct ids). Each new input shape of the fused kernel is a new XLA compilation
    # (about 50 ms), so the kernel must see only the padded lengths of `bucket_size`,
    # whatever the variable's rank (rows reach it flattened).
    import recsys.optimizers.sparse_adam as sparse_adam_module

    kernel = sparse_adam_module._lazy_adam_rows
    shapes = []

    def spy(ids, n_unique, positions, values, *args):
        shapes.append((int(ids.shape[0]), int(positions.shape[0]), tuple(values.shape[1:])))
        return kernel(ids, n_unique, positions, values, *args)

    monkeypatch.setattr(sparse_adam_module, "_lazy_adam_rows", spy)
    rng = np.random.default_rng(23)
    var = tf.Variable(rng.normal(size=(5000, *row_shape)).astype(np.float32))
    before = var.numpy()
    optimizer = SparseAdam(0.01)
    touched, distinct = set(), set()
    for n in range(1000, 1100, 3):  # 34 lengths
        indices = rng.integers(0, 4000, size=n).astype(np.int32)
        touched.update(indices.tolist())
        distinct.add(len(np.unique(indices)))
        values = rng.normal(size=(n, *row_shape)).astype(np.float32)
        optimizer.apply_gradients([(tf.IndexedSlices(values, indices, [5000, *row_shape]), var)])
    assert len(shapes) == 34
    # Gradient rows: 34 lengths padded to 2. Distinct ids (about 880-970 of them):
    # padded to multiples of 64. Rows as vectors of their element count.
    assert {rows for _, rows, _ in shapes} == {1024, 1152}
    assert len(distinct) > 20
    assert {ids for ids, _, _ in shapes} <= {896, 960, 1024}
    assert {row for _, _, row in shapes} == {(int(np.prod(row_shape)),)}
    # Padding repeats real ids; rows never in a batch stay bit-identical.
    untouched = np.setdiff1d(np.arange(5000), sorted(touched))
    np.testing.assert_array_equal(var.numpy()[untouched], before[untouched])
    assert not slots(optimizer, var)[0][untouched].any()


@ROW_SHAPES
def test_lengths_unknown_when_tracing_reach_the_kernel_padded(monkeypatch, row_shape):
    # Keras traces train steps with a None batch length: the padding then happens at
    # run time, and XLA compiles the kernel once per run-time shape. Record those
    # shapes from inside the traced function.
    import recsys.optimizers.sparse_adam as sparse_adam_module

    kernel = sparse_adam_module._lazy_adam_rows
    shapes = []

    def record(ids_shape, positions_shape, values_shape):
        row = tuple(values_shape.numpy()[1:].tolist())
        shapes.append((int(ids_shape[0]), int(positions_shape[0]), row))

    def spy(ids, n_unique, positions, values, *args):
        tf.py_function(record, [tf.shape(ids), tf.shape(positions), tf.shape(values)], [])
        return kernel(ids, n_unique, positions, values, *args)

    monkeypatch.setattr(sparse_adam_module, "_lazy_adam_rows", spy)
    rng = np.random.default_rng(37)
    var = tf.Variable(rng.normal(size=(5000, *row_shape)).astype(np.float32))
    optimizer = SparseAdam(0.01)

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
    assert {rows for _, rows, _ in shapes} == {1024, 1152}
    assert {ids for ids, _, _ in shapes} <= {896, 960, 1024}
    assert {row for _, _, row in shapes} == {(int(np.prod(row_shape)),)}


@FUSED
@ROW_SHAPES
@pytest.mark.parametrize("known_length", [True, False], ids=["traced-length", "dynamic-length"])
def test_padded_lengths_match_numpy_lazy_adam(jit_compile, known_length, row_shape):
    # 17 to 33 distinct ids among 50 rows: odd counts are padded to even ones and,
    # when the length is not known when tracing (Keras's None batch), the gradient
    # rows are padded too (21 -> 22, 27 -> 28, 37 -> 40, ...).
    rows = 64
    table = np.random.default_rng(31).normal(size=(rows, *row_shape)).astype(np.float32)
    rng = np.random.default_rng(29)
    steps = []
    for n in (21, 23, 27, 31, 37, 45):
        indices = rng.integers(0, 50, size=n).astype(np.int32)
        steps.append((indices, rng.normal(size=(n, *row_shape)).astype(np.float32)))
    distinct = [len(np.unique(indices)) for indices, _ in steps]
    assert sum(1 for d in distinct if d > 16 and d % 2) >= 2, distinct  # padding happens
    optimizer = SparseAdam(0.01, amsgrad=True, jit_compile=jit_compile)
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
    want_var, want_m, want_v = lazy_adam_reference(table, steps, amsgrad=True)
    np.testing.assert_allclose(var.numpy(), want_var, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(slots(optimizer, var)[0], want_m, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(slots(optimizer, var)[1], want_v, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(var.numpy()[50:], table[50:])


@FUSED
@ROW_SHAPES
def test_empty_sparse_gradient_changes_nothing_but_the_step(jit_compile, row_shape):
    table = np.random.default_rng(1).normal(size=(ROWS, *row_shape)).astype(np.float32)
    optimizer = SparseAdam(0.01, jit_compile=jit_compile)
    var = tf.Variable(table)
    empty = tf.IndexedSlices(
        tf.zeros([0, *row_shape]), tf.zeros([0], tf.int32), tf.constant([ROWS, *row_shape])
    )
    tf.function(optimizer.apply_gradients)([(empty, var)])
    np.testing.assert_array_equal(var.numpy(), table)
    assert int(optimizer.iterations) == 1
    assert not any(s.any() for s in slots(optimizer, var))


@FUSED
def test_duplicates_are_summed(table, jit_compile):
    indices = np.array([3, 1, 3, 3, 7, 1], dtype=np.int32)
    values = np.random.default_rng(17).normal(size=(6, DIM)).astype(np.float32)
    grad = tf.IndexedSlices(tf.constant(values), tf.constant(indices), tf.constant([ROWS, DIM]))
    (deduplicated,) = SparseAdam(jit_compile=jit_compile)._deduplicate_sparse_grad([grad])
    if jit_compile:
        # The fused kernel sums duplicates itself; the gradient reaches it as it is.
        assert deduplicated is grad
    else:
        assert deduplicated.indices.numpy().tolist() == [3, 1, 7]
        want = np.stack([values[[0, 2, 3]].sum(0), values[[1, 5]].sum(0), values[4]])
        np.testing.assert_allclose(deduplicated.values.numpy(), want, rtol=1e-6)
    # One step with all the duplicates against the reference.
    var = apply_sparse_steps(SparseAdam(0.01, jit_compile=jit_compile), table, [(indices, values)])
    want_var, _, _ = lazy_adam_reference(table, [(indices, values)], lr=0.01)
    np.testing.assert_allclose(var.numpy(), want_var, rtol=1e-5, atol=1e-6)


_MIRRORED_SCRIPT = r"""
import json
import numpy as np
import recsys
from recsys._tf import keras, tf
from recsys.layers import Embedding
from recsys.optimizers import SparseAdam

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
rng = np.random.default_rng(0)
x = rng.integers(0, 30, size=(64, 2)).astype(np.int32)
y = rng.normal(size=(64, 1)).astype(np.float32)


def fit(strategy):
    with strategy.scope():
        keras.utils.set_random_seed(0)
        ids = keras.Input(shape=(2,), dtype="int32")
        h = keras.layers.Flatten()(Embedding(50, 4, name="table")(ids))
        model = keras.Model(ids, keras.layers.Dense(1)(h))
        optimizer = SparseAdam(0.01)
        model.compile(optimizer=optimizer, loss="mse")
    table = model.get_layer("table").embeddings
    before = table.numpy()
    model.fit(x, y, batch_size=16, epochs=2, verbose=0, shuffle=False)
    replicas = [v.numpy() for v in getattr(table, "values", [table])]
    return before, table.numpy(), replicas, optimizer.fuses_sparse_updates


before, mirrored, replicas, fused = fit(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
_, single, _, _ = fit(tf.distribute.OneDeviceStrategy("/cpu:0"))
untouched = np.setdiff1d(np.arange(50), np.unique(x))
print(json.dumps({
    "fused": fused,
    "replicas": len(replicas),
    "replicas_equal": all(np.array_equal(r, replicas[0]) for r in replicas),
    "untouched_equal": bool(np.array_equal(mirrored[untouched], before[untouched])),
    "max_diff_to_single_device": float(np.abs(mirrored - single).max()),
    "moved": float(np.abs(mirrored - before).max()),
}))
"""


def test_mirrored_strategy_two_replicas_match_one_device():
    # Logical devices must be set before TensorFlow starts, hence a fresh process.
    import json
    import os
    import subprocess
    import sys

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(
        [sys.executable, "-c", _MIRRORED_SCRIPT], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["fused"] and result["replicas"] == 2 and result["replicas_equal"]
    assert result["untouched_equal"]
    assert result["moved"] > 1e-3
    assert result["max_diff_to_single_device"] < 1e-5
