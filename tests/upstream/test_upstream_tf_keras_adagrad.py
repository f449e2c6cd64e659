"""tf-keras's own Adagrad test cases, run against recsys's RowwiseAdagrad.

Sources: keras-team/tf-keras at tag v2.21.0 (commit
631ed411d9e55e40b1ecaae7b046bba14752f46e, the tf-keras release installed here),
`tf_keras/optimizers/optimizer_test.py` (the cases parameterized over every
optimizer, in their Adagrad form) and `tf_keras/optimizers/legacy/adagrad_test.py`
(Adagrad's numerical cases, written for the legacy `OptimizerV2` Adagrad, whose rule
`sqrt(accumulator) + epsilon` RowwiseAdagrad shares). tf-keras is licensed under the
Apache License, Version 2.0; these cases (their inputs, NumPy references and
expected values) come from those files. They are rewritten for pytest and eager
execution, one function per upstream case (`test_<upstream name>`), with
`RowwiseAdagrad` where the upstream case builds Adagrad.

RowwiseAdagrad keeps one accumulator per row (a variable's first dimension): for a
1-D variable, or rows of one element, that is element-wise Adagrad, and most
upstream cases use such variables. Every difference is listed here.

Run as upstream, only the optimizer swapped (all pass):
    optimizer_test.py: testSaveAndLoadOptimizerWithModel and
        testSparseGradientsWorkAsExpected (the Adagrad parameterization; the sparse
        case on both sparse paths here), OptimizerRegressionTest.testAdagrad (legacy
        Adagrad against RowwiseAdagrad, 1-D, dense then sparse steps),
        DistributedTrainingTest.testGetGradientsInModel and
        testGetGradientsInCustomTrainingLoop (Adagrad, OneDeviceCPU; upstream checks
        the accumulator only `if optimizer.name == "Adagrad"`, here always).
    legacy/adagrad_test.py: testBasic, testBasicCallableParams,
        testBasicWithLargeEpsilon, testBasicWithLearningRateInverseTimeDecay,
        testTensorLearningRate, testSparseBasic, testSparseSingleVarDim,
        testSparseRepeatedIndices, testSparseRepeatedIndicesByEmbeddingLookUp,
        testSparseStability, testSharing (graph-mode sessions become eager calls;
        dtypes half, float32 and float64).

Changed, with the reason:
    testMinimizeSparseResourceVariable: the row looked up has two elements
        ([1, 2], gradients [112, 140]), which share one accumulator here. Upstream's
        expectation (about [0, 1] after one step, element-wise) becomes the row-wise
        value, computed in the test; the row not looked up stays [3, 4] as upstream.
    testBasicWithLearningRateDecay: the legacy `decay` argument; the current API
        refuses it (`ValueError: decay is deprecated`), as for tf-keras's Adagrad.
    testSharing: upstream checks the slot shapes equal the variables' (element-wise);
        here the accumulator has one value per row.

Not run, with the reason:
    complex64 / complex128 in the dtype loops: the row mean of squared gradients is
        for real variables (tf-keras's current Adagrad does not take complex ones
        either).
    testConstructAdagradWithLR: the legacy `lr` argument; the current API logs a
        warning and ignores it (tf-keras's Adagrad too).
    DistributedTrainingTest with MirroredStrategy: tests/test_optimizers_placement.py
        fits RowwiseAdagrad under MirroredStrategy on two logical CPUs (slow);
        GPU, TPU, CentralStorage and multi-worker strategies: no such devices here.
    Every case of other optimizers, and the Adam-specific cases (see
        test_upstream_tf_keras_optimizer.py).
"""

import numpy as np
import pytest

import recsys  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
from recsys._tf import keras, tf
from recsys.optimizers import RowwiseAdagrad

DATA_TYPES = [tf.half, tf.float32, tf.float64]
FUSED = pytest.mark.parametrize("jit_compile", [True, False], ids=["fused-xla", "tf-ops"])


def adagrad_update_numpy(param, accum, g_t, lr=0.001, epsilon=1e-7):
    accum_t = accum + g_t * g_t
    param_t = param - lr * g_t / (np.sqrt(accum_t) + epsilon)
    return param_t, accum_t


def sparse_adagrad_update_numpy(param, accum, gindexs, gvalues, lr=0.001, epsilon=1e-7):
    accum_t = accum.copy()
    param_t = param.copy()
    for gindex, gvalue in zip(gindexs, gvalues, strict=True):
        accum_t[gindex] = accum_t[gindex] + gvalue * gvalue
    for gindex, gvalue in zip(gindexs, gvalues, strict=True):
        param_t[gindex] = param_t[gindex] - lr * gvalue / (np.sqrt(accum_t[gindex]) + epsilon)
    return param_t, accum_t


def assert_close_according_to_type(want, got, dtype):
    """tf.test's assertAllCloseAccordingToType: looser for half precision."""
    tol = 1e-3 if dtype == tf.half else 1e-6
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=tol, atol=tol)


def _basic(learning_rate, make, epsilon=1e-7, schedule_lr=None, dtypes=DATA_TYPES):
    for dtype in dtypes:
        np_dtype = dtype.as_numpy_dtype
        var0_np, var1_np = np.array([1.0, 2.0], np_dtype), np.array([3.0, 4.0], np_dtype)
        grads0_np, grads1_np = np.array([0.1, 0.1], np_dtype), np.array([0.01, 0.01], np_dtype)
        var0, var1 = tf.Variable(var0_np), tf.Variable(var1_np)
        grads0, grads1 = tf.constant(grads0_np), tf.constant(grads1_np)
        optimizer = make(learning_rate)
        accum0_np = np.array([0.1, 0.1], np_dtype)
        accum1_np = np.array([0.1, 0.1], np_dtype)
        np.testing.assert_allclose(var0.numpy(), [1.0, 2.0])
        np.testing.assert_allclose(var1.numpy(), [3.0, 4.0])
        for t in range(3):
            optimizer.apply_gradients(zip([grads0, grads1], [var0, var1], strict=True))
            lr = schedule_lr(t) if schedule_lr else 3.0
            var0_np, accum0_np = adagrad_update_numpy(var0_np, accum0_np, grads0_np, lr, epsilon)
            var1_np, accum1_np = adagrad_update_numpy(var1_np, accum1_np, grads1_np, lr, epsilon)
            assert_close_according_to_type(var0_np, var0.numpy(), dtype)
            assert_close_according_to_type(var1_np, var1.numpy(), dtype)


def test_basic():
    _basic(3.0, RowwiseAdagrad)


def test_basic_callable_params():
    _basic(lambda: 3.0, RowwiseAdagrad)


def test_basic_with_large_epsilon():
    _basic(3.0, lambda lr: RowwiseAdagrad(lr, epsilon=1.0), epsilon=1.0, dtypes=[tf.float64])


def test_basic_with_learning_rate_inverse_time_decay():
    schedule = keras.optimizers.schedules.InverseTimeDecay(3.0, decay_steps=1.0, decay_rate=0.5)
    _basic(schedule, RowwiseAdagrad, schedule_lr=lambda t: 3.0 / (1 + 0.5 * t))


def test_basic_with_learning_rate_decay():
    # Changed: the legacy `decay` argument is refused by the current API.
    with pytest.raises(ValueError, match="decay is deprecated"):
        RowwiseAdagrad(3.0, decay=0.5)


def test_tensor_learning_rate():
    _basic(tf.constant(3.0), RowwiseAdagrad, dtypes=[tf.float32])


def test_minimize_sparse_resource_variable():
    for dtype in DATA_TYPES:
        var0 = tf.Variable([[1.0, 2.0], [3.0, 4.0]], dtype=dtype)
        x = tf.constant([[4.0], [5.0]], dtype=dtype)
        with tf.GradientTape() as tape:
            pred = tf.matmul(tf.nn.embedding_lookup(var0, [0]), x)
            loss = pred * pred
        grad = tape.gradient(loss, var0)
        assert isinstance(grad, tf.IndexedSlices)
        RowwiseAdagrad(1.0).apply_gradients([(grad, var0)])
        # Changed: one accumulator for the row [1, 2] (gradient [112, 140]).
        g = np.array([112.0, 140.0])
        row = np.array([1.0, 2.0]) - g / (np.sqrt(0.1 + np.mean(g * g)) + 1e-7)
        assert_close_according_to_type([row, [3.0, 4.0]], var0.numpy(), dtype)


@FUSED
def test_sparse_basic(jit_compile):
    for dtype in DATA_TYPES:
        np_dtype = dtype.as_numpy_dtype
        var0_np = np.array([1.0, 1.0, 2.0], np_dtype)
        grads0_np = np.array([0.1, 0, 0.1], np_dtype)
        var1_np = np.array([3.0, 3.0, 4.0], np_dtype)
        grads1_np = np.array([0.01, 0, 0.01], np_dtype)
        var0, var1 = tf.Variable(var0_np), tf.Variable(var1_np)
        indices = np.array([0, 2], np.int32)
        grads0 = tf.IndexedSlices(
            tf.constant(grads0_np[indices]), tf.constant(indices), tf.constant([3])
        )
        grads1 = tf.IndexedSlices(
            tf.constant(grads1_np[indices]), tf.constant(indices), tf.constant([3])
        )
        optimizer = RowwiseAdagrad(3.0, jit_compile=jit_compile)
        accum0_np = np.array([0.1, 0.1, 0.1], np_dtype)
        accum1_np = np.array([0.1, 0.1, 0.1], np_dtype)
        for _ in range(3):
            optimizer.apply_gradients(zip([grads0, grads1], [var0, var1], strict=True))
            var0_np, accum0_np = sparse_adagrad_update_numpy(
                var0_np, accum0_np, indices, grads0_np[indices], 3.0
            )
            var1_np, accum1_np = sparse_adagrad_update_numpy(
                var1_np, accum1_np, indices, grads1_np[indices], 3.0
            )
            assert_close_according_to_type(var0_np, var0.numpy(), dtype)
            assert_close_according_to_type(var1_np, var1.numpy(), dtype)


@FUSED
def test_sparse_single_var_dim(jit_compile):
    for dtype in DATA_TYPES:
        np_dtype = dtype.as_numpy_dtype
        var0_np = np.array([1.0], np_dtype)
        grads0_np = np.array([0.1], np_dtype)
        var0 = tf.Variable(var0_np)
        indices = np.array([0], np.int32)
        grads0 = tf.IndexedSlices(
            tf.constant(grads0_np[indices]), tf.constant(indices), tf.constant([3])
        )
        optimizer = RowwiseAdagrad(3.0, epsilon=1.0, jit_compile=jit_compile)
        accum0_np = np.array([0.1], np_dtype)
        for _ in range(3):
            optimizer.apply_gradients(zip([grads0], [var0], strict=True))
            var0_np, accum0_np = sparse_adagrad_update_numpy(
                var0_np, accum0_np, indices, grads0_np[indices], 3.0, epsilon=1.0
            )
            assert_close_according_to_type(var0_np, var0.numpy(), dtype)


@FUSED
def test_sparse_repeated_indices(jit_compile):
    for dtype in DATA_TYPES:
        var_np = np.array([[1.0], [2.0]], dtype=dtype.as_numpy_dtype)
        repeated_var = tf.Variable(var_np, dtype=dtype)
        aggregated_var = tf.Variable(var_np, dtype=dtype)
        grad_repeated = tf.IndexedSlices(
            tf.constant([0.1, 0.1], shape=[2, 1], dtype=dtype),
            tf.constant([1, 1]),
            tf.constant([2, 1]),
        )
        grad_aggregated = tf.IndexedSlices(
            tf.constant([0.2], shape=[1, 1], dtype=dtype), tf.constant([1]), tf.constant([2, 1])
        )
        repeated_opt = RowwiseAdagrad(3.0, jit_compile=jit_compile)
        aggregated_opt = RowwiseAdagrad(3.0, jit_compile=jit_compile)
        np.testing.assert_allclose(aggregated_var.numpy(), repeated_var.numpy())
        for _ in range(3):
            repeated_opt.apply_gradients([(grad_repeated, repeated_var)])
            aggregated_opt.apply_gradients([(grad_aggregated, aggregated_var)])
            np.testing.assert_allclose(aggregated_var.numpy(), repeated_var.numpy(), rtol=1e-6)


def test_sparse_repeated_indices_by_embedding_look_up():
    for dtype in DATA_TYPES:
        var_repeated = tf.Variable([1.0, 2.0], dtype=dtype)
        var_aggregated = tf.Variable([1.0, 2.0], dtype=dtype)
        repeated_opt, aggregated_opt = RowwiseAdagrad(2.0), RowwiseAdagrad(2.0)
        assert_close_according_to_type(var_aggregated.numpy(), var_repeated.numpy(), dtype)
        for _ in range(3):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(tf.nn.embedding_lookup(var_repeated, [0, 0]))
            repeated_opt.apply_gradients([(tape.gradient(loss, var_repeated), var_repeated)])
            with tf.GradientTape() as tape:
                loss = 2 * tf.reduce_sum(tf.nn.embedding_lookup(var_aggregated, [0]))
            aggregated_opt.apply_gradients([(tape.gradient(loss, var_aggregated), var_aggregated)])
            assert_close_according_to_type(var_aggregated.numpy(), var_repeated.numpy(), dtype)


def test_sparse_stability():
    # One row of six half-precision elements: the squared gradients (about 1e-9)
    # underflow in float16, so the row's accumulator stays 0.1, as each element's
    # does upstream, and the expected values hold for the row-wise rule too.
    shape = [1, 6]
    var0_np = np.array(
        [[0.00872496, -0.106952, 0.110467, 0.226505, -0.0147257, -0.0105945]], np.float16
    )
    grads0_np = np.array(
        [[-5.91278e-05, 5.31673e-05, -2.5779e-06, 4.29153e-05, -8.4877e-05, -9.48906e-05]],
        np.float16,
    )
    grads0 = tf.IndexedSlices(tf.constant(grads0_np), tf.constant([0]), tf.constant(shape))
    for _ in range(100):
        var0 = tf.Variable(var0_np)
        optimizer = RowwiseAdagrad(1.0)
        optimizer.apply_gradients([(grads0, var0)])
        assert_close_according_to_type(np.array([0.1]), optimizer._accumulators[0], tf.half)
        assert_close_according_to_type(
            np.array([[0.00891194, -0.10712013, 0.11047515, 0.22636929, -0.0144573, -0.01029443]]),
            var0.numpy(),
            tf.half,
        )


def test_sharing():
    for dtype in DATA_TYPES:
        np_dtype = dtype.as_numpy_dtype
        var0_np, grads0_np = np.array([1.0, 2.0], np_dtype), np.array([0.1, 0.1], np_dtype)
        var1_np, grads1_np = np.array([3.0, 4.0], np_dtype), np.array([0.01, 0.01], np_dtype)
        var0, var1 = tf.Variable(var0_np), tf.Variable(var1_np)
        grads0, grads1 = tf.constant(grads0_np), tf.constant(grads1_np)
        optimizer = RowwiseAdagrad(3.0)
        # Apply the optimizer three times; all applications use the same accumulators.
        for _ in range(3):
            optimizer.apply_gradients(zip([grads0, grads1], [var0, var1], strict=True))
        # Changed: one accumulator per row (here rows are single elements).
        assert optimizer._accumulators[0].shape == var0.shape[:1]
        accum0_np = np.array([0.1, 0.1], np_dtype)
        accum1_np = np.array([0.1, 0.1], np_dtype)
        for _ in range(3):
            var0_np, accum0_np = adagrad_update_numpy(var0_np, accum0_np, grads0_np, 3.0)
            var1_np, accum1_np = adagrad_update_numpy(var1_np, accum1_np, grads1_np, 3.0)
        assert_close_according_to_type(var0_np, var0.numpy(), dtype)
        assert_close_according_to_type(var1_np, var1.numpy(), dtype)


# --- optimizer_test.py, the Adagrad parameterization -------------------------------


def _ones_and_ones():
    x = tf.expand_dims(tf.convert_to_tensor([1, 1, 1, 0, 0, 0]), axis=1)
    return x, x


def _assert_loaded(optimizer, loaded, build_with=None):
    assert type(loaded) is type(optimizer)
    assert float(loaded.learning_rate) == pytest.approx(0.002)
    assert loaded.clipnorm == 0.1
    if build_with is not None:
        loaded.build(build_with)
    for got, want in zip(loaded.variables, optimizer.variables, strict=True):
        np.testing.assert_allclose(got.numpy(), want.numpy())


def test_save_and_load_optimizer_with_model(tmp_path):
    inputs = keras.layers.Input(shape=(1,))
    model = keras.Model(inputs=inputs, outputs=keras.layers.Dense(1)(inputs))
    optimizer = RowwiseAdagrad(0.002)
    optimizer.clipnorm = 0.1
    x, y = _ones_and_ones()
    model.compile(loss="mse", optimizer=optimizer)
    model.fit(x, y, verbose=0)
    path = str(tmp_path / "model.h5")
    model.save(path)
    loaded = keras.models.load_model(path)
    loaded.load_weights(path)
    _assert_loaded(optimizer, loaded.optimizer)
    model.fit(x, y, verbose=0)
    path = str(tmp_path / "model")
    model.save(path)
    loaded = keras.models.load_model(path)
    loaded.load_weights(path)
    _assert_loaded(optimizer, loaded.optimizer, build_with=loaded.trainable_variables)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    loaded.load_weights(path)
    _assert_loaded(optimizer, loaded.optimizer)


@FUSED
def test_sparse_gradients_work_as_expected(jit_compile):
    optimizer_1 = RowwiseAdagrad(0.002, jit_compile=jit_compile)
    optimizer_2 = RowwiseAdagrad(0.002, jit_compile=jit_compile)
    x1 = tf.Variable(np.ones([5]), dtype=tf.float64)
    x2 = tf.Variable(np.ones([5]), dtype=tf.float64)
    grads = tf.convert_to_tensor([0, 1.0, 1.5, 0, 0], dtype=tf.float64)
    sparse_grads = tf.IndexedSlices(
        tf.convert_to_tensor([1.0, 1.5], dtype=tf.float64),
        tf.convert_to_tensor([1, 2]),
        dense_shape=tf.convert_to_tensor([len(grads)]),
    )
    for _ in range(5):
        optimizer_1.apply_gradients(zip([grads], [x1], strict=True))
        optimizer_2.apply_gradients(zip([sparse_grads], [x2], strict=True))
        np.testing.assert_allclose(x1.numpy(), x2.numpy(), rtol=1e-6, atol=1e-6)


def test_regression_adagrad():
    # Upstream's `_compare_numerical` with the legacy Adagrad: Adagrad has no decay,
    # so the legacy sparse update is lazy too and every row is compared.
    old_optimizer, new_optimizer = keras.optimizers.legacy.Adagrad(), RowwiseAdagrad()
    x1 = tf.Variable(np.ones([10]), dtype=tf.float64)
    x2 = tf.Variable(np.ones([10]), dtype=tf.float64)
    grads = tf.convert_to_tensor(np.arange(0.1, 1.1, 0.1))
    first_grads = tf.constant([0.01] * 10, dtype=tf.float64)
    sparse_grads = tf.IndexedSlices(
        tf.convert_to_tensor([0, 0.2, 0.4, 0.8, 0.8], dtype=tf.float64),
        tf.convert_to_tensor([0, 2, 4, 6, 6]),
        dense_shape=tf.convert_to_tensor([len(grads)]),
    )
    old_optimizer.apply_gradients(zip([first_grads], [x1], strict=True))
    new_optimizer.apply_gradients(zip([first_grads], [x2], strict=True))
    for _ in range(5):
        np.testing.assert_allclose(x1.numpy(), x2.numpy(), rtol=5e-4, atol=5e-4)
        old_optimizer.apply_gradients(zip([grads], [x1], strict=True))
        new_optimizer.apply_gradients(zip([grads], [x2], strict=True))
    for _ in range(5):
        np.testing.assert_allclose(x1.numpy(), x2.numpy(), rtol=5e-4, atol=5e-4)
        old_optimizer.apply_gradients(zip([sparse_grads], [x1], strict=True))
        new_optimizer.apply_gradients(zip([sparse_grads], [x2], strict=True))
    np.testing.assert_allclose(x1.numpy(), x2.numpy(), rtol=5e-4, atol=5e-4)


def test_get_gradients_in_model_one_device():
    with tf.distribute.OneDeviceStrategy("/cpu:0").scope():
        model = keras.Sequential([keras.layers.Input(shape=(1,)), keras.layers.Dense(1)])
        optimizer = RowwiseAdagrad(0.002)
        x, y = _ones_and_ones()
        model.compile(loss="mse", optimizer=optimizer)
    model.fit(x, y, epochs=1, steps_per_epoch=5, verbose=0)
    # Upstream checks this only `if optimizer.name == "Adagrad"`; it starts at 0.1, so
    # here it must also have grown.
    accumulator = optimizer._accumulators[0].numpy()
    assert (accumulator != 0).all() and (accumulator > 0.1).all()


def test_get_gradients_in_custom_training_loop_one_device():
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    with strategy.scope():
        model = keras.Sequential([keras.layers.Input(shape=(1,)), keras.layers.Dense(1)])
        optimizer = RowwiseAdagrad(0.002)

        def dataset_fn(_):
            x, y = [1, 1, 1, 0, 0, 0], [1, 1, 1, 0, 0, 0]
            return tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(6)

        ds = strategy.distribute_datasets_from_function(dataset_fn)

        @tf.function
        def train_step(ds):
            def replica_fn(data):
                features, labels = data
                with tf.GradientTape() as tape:
                    output = model(tf.expand_dims(features, axis=1))
                    loss = keras.losses.MeanSquaredError(reduction="none")(labels, output)
                grads = tape.gradient(loss, model.trainable_variables)
                optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))

            strategy.run(replica_fn, args=(next(iter(ds)),))

        for _ in range(3):
            train_step(ds)
    assert int(optimizer.iterations.numpy()) == 3
