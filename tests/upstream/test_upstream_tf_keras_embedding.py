"""tf-keras's own Embedding layer test cases, run against recsys.layers.Embedding.

Source: keras-team/tf-keras, `tf_keras/layers/core/embedding_test.py` at tag v2.21.0
(commit 631ed411d9e55e40b1ecaae7b046bba14752f46e, the tf-keras release installed
here). tf-keras is licensed under the Apache License, Version 2.0; these cases (their
inputs and expected values) come from that file. They are rewritten for pytest, one
function per upstream case (`test_<upstream name>`), with `recsys.layers.Embedding`
where the upstream case builds `tf_keras.layers.Embedding`. `test_embedding` calls
tf-keras's own `layer_test` harness (installed with tf-keras, in
`tf_keras.src.testing_infra`). Upstream's `run_all_keras_modes` becomes a
`run_eagerly` parameter (Keras's eager and tf.function modes); its TF1 graph-session
mode does not run under TF2, upstream's included.

Run as upstream, only the layer swapped (all pass): test_embedding,
test_embedding_correctness, test_embedding_incorrect_dimension, test_eager_gpu_cpu,
test_embedding_with_ragged_input (its Lambda calls `tf.identity`, which upstream
reaches as `keras.backend.identity`: tf-keras's public `backend` module does not
export it), test_mixed_precision_embedding,
test_embedding_with_sparse_input_sparse_output,
test_embedding_with_sparse_input_dense_output,
test_error_message_for_mask_zero_enabled_with_sparse_tensor,
test_embedding_with_dense_input_sprase_output (sic), test_use_one_hot.

Changed: test_tensor_dim_serialization is skipped upstream ("Disable the failing
test": tf-keras's Embedding keeps `input_dim=tf.constant(16000)` as a tensor). Ours
stores such a dimension as an int, so the case runs here, unskipped.

None of these cases uses `embeddings_regularizer`, where recsys's Embedding differs
on purpose (it regularizes the looked-up rows; see its docstring).
"""

import numpy as np
import pytest

import recsys  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
from recsys._tf import keras, tf
from recsys.layers import Embedding

RUN_EAGERLY = pytest.mark.parametrize("run_eagerly", [True, False], ids=["eager", "function"])


@RUN_EAGERLY
def test_embedding(run_eagerly):
    # tf-keras's harness; imported here, after recsys has set up the environment.
    from tf_keras.src.testing_infra import test_utils

    cases = [
        ({"output_dim": 4, "input_dim": 10, "input_length": 2}, (3, 2)),
        ({"output_dim": 4, "input_dim": 10, "mask_zero": True}, (3, 2)),
        ({"output_dim": 4, "input_dim": 10, "mask_zero": True}, (3, 4, 2)),
        (
            {"output_dim": 4, "input_dim": 10, "mask_zero": True, "input_length": (None, 2)},
            (3, 4, 2),
        ),
    ]
    with test_utils.run_eagerly_scope(run_eagerly):
        for kwargs, input_shape in cases:
            test_utils.layer_test(
                Embedding,
                kwargs=kwargs,
                input_shape=input_shape,
                input_dtype="int32",
                expected_output_dtype="float32",
            )


@RUN_EAGERLY
def test_embedding_correctness(run_eagerly):
    layer = Embedding(output_dim=2, input_dim=2)
    model = keras.models.Sequential([layer])
    layer.set_weights([np.array([[1, 1], [2, 2]])])
    model.run_eagerly = run_eagerly
    outputs = model.predict(np.array([[0, 1, 0]], dtype="int32"), verbose=0)
    np.testing.assert_allclose(outputs, [[[1, 1], [2, 2], [1, 1]]])


def test_embedding_incorrect_dimension():
    with pytest.raises(ValueError):
        Embedding(input_dim=0, output_dim=1)
    with pytest.raises(ValueError):
        Embedding(input_dim=1, output_dim=0)


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "graph"])
def test_eager_gpu_cpu(graph):
    def body():
        layer = Embedding(output_dim=2, input_dim=2)
        layer.build((None, 2))
        inputs = keras.backend.constant([[0, 1, 0]], dtype="int32")
        with tf.GradientTape() as tape:
            output = layer(inputs)
        grads = tape.gradient(output, layer.weights)
        tf.compat.v1.train.AdagradOptimizer(0.1).apply_gradients(
            zip(grads, layer.weights, strict=True)
        )
        assert len(grads) == 1

    if graph:
        with tf.Graph().as_default():
            body()
    else:
        body()


@RUN_EAGERLY
def test_embedding_with_ragged_input(run_eagerly):
    layer = Embedding(
        input_dim=3, output_dim=2, weights=[np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]])]
    )
    inputs = keras.layers.Input(shape=(None,), dtype=tf.float32, ragged=True)
    outputs = keras.layers.Lambda(lambda args: tf.identity(args))(inputs)
    model = keras.Model(inputs, layer(outputs))
    model.run_eagerly = run_eagerly
    outputs = model.predict(
        tf.ragged.constant([[1.0, 2.0, 2.0], [0.0], [1.0, 2.0]], ragged_rank=1), verbose=0
    )
    expected = tf.ragged.constant(
        [[[1.0, 1.0], [2.0, 2.0], [2.0, 2.0]], [[0.0, 0.0]], [[1.0, 1.0], [2.0, 2.0]]],
        ragged_rank=1,
    )
    assert outputs.to_list() == expected.to_list()


def test_mixed_precision_embedding():
    try:
        keras.mixed_precision.set_global_policy("mixed_float16")
        layer = Embedding(input_dim=5, output_dim=2)
        assert layer._dtype_policy.name == "mixed_float16"
        assert layer(np.array([0, 1, 2])).dtype == "float16"
    finally:
        keras.mixed_precision.set_global_policy("float32")


def _sparse_ids():
    return tf.SparseTensor(indices=[[0, 1], [1, 2]], values=[1, 2], dense_shape=[3, 3])


def test_embedding_with_sparse_input_sparse_output():
    layer = Embedding(
        input_dim=3,
        output_dim=2,
        weights=[np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]])],
        sparse=True,
    )
    output = layer(_sparse_ids())
    np.testing.assert_array_equal(output.indices, [[0, 1, 0], [0, 1, 1], [1, 2, 0], [1, 2, 1]])
    np.testing.assert_allclose(output.values, [1.0, 1.0, 2.0, 2.0])
    np.testing.assert_array_equal(output.dense_shape, [3, 3, 2])


def test_embedding_with_sparse_input_dense_output():
    layer = Embedding(
        input_dim=3,
        output_dim=2,
        weights=[np.array([[0.1, 0.1], [1.0, 1.0], [2.0, 2.0]])],
        sparse=False,
    )
    expected = [
        [[0.1, 0.1], [1.0, 1.0], [0.1, 0.1]],
        [[0.1, 0.1], [0.1, 0.1], [2.0, 2.0]],
        [[0.1, 0.1], [0.1, 0.1], [0.1, 0.1]],
    ]
    np.testing.assert_allclose(layer(_sparse_ids()), expected, rtol=1e-6)


def test_error_message_for_mask_zero_enabled_with_sparse_tensor():
    message = (
        "`mask_zero` cannot be enabled when `tf.keras.layers.Embedding` is used with "
        "`tf.SparseTensor` input."
    )
    with pytest.raises(ValueError, match=message):
        layer = Embedding(
            input_dim=3,
            output_dim=2,
            weights=[np.array([[0.1, 0.1], [1.0, 1.0], [2.0, 2.0]])],
            sparse=True,
            mask_zero=True,
        )
        layer(_sparse_ids())


def test_embedding_with_dense_input_sprase_output():
    layer = Embedding(
        input_dim=3,
        output_dim=2,
        weights=[np.array([[0, 0], [1.0, 1.0], [2.0, 2.0]])],
        sparse=True,
        mask_zero=False,
    )
    output = layer(tf.constant([0, 0, 0, 2, 1]))
    np.testing.assert_array_equal(output.indices, [[3, 0], [3, 1], [4, 0], [4, 1]])
    np.testing.assert_allclose(output.values, [2.0, 2.0, 1.0, 1.0])
    np.testing.assert_array_equal(output.dense_shape, [5, 2])


def test_use_one_hot():
    layer = Embedding(input_dim=100, output_dim=16)
    assert not layer._use_one_hot_matmul
    inputs = tf.random.uniform(shape=[8, 10], minval=0, maxval=9, dtype=tf.int64)
    output_1 = layer(inputs)
    layer._use_one_hot_matmul = True
    output_2 = layer(inputs)
    np.testing.assert_allclose(output_1, output_2, rtol=1e-6)
    assert output_1.dtype == output_2.dtype
    # The hidden argument is accepted and stays out of the config.
    layer = Embedding(input_dim=100, output_dim=16, use_one_hot_matmul=True)
    assert layer._use_one_hot_matmul
    assert "use_one_hot_matmul" not in layer.get_config()


def test_tensor_dim_serialization(tmp_path):
    # Skipped upstream ("Disable the failing test"); passes here.
    layer = Embedding(input_dim=tf.constant(16000), output_dim=128)
    model = keras.models.Sequential([layer])
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.layers[0].input_dim == 16000
