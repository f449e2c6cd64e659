"""recsys.layers.Embedding: row-sparse gradients, the regularizer move, Keras parity."""

import inspect
import json
import warnings

import numpy as np
import pytest

import recsys  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import recsys.layers.embedding as embedding_module
from recsys._tf import keras, tf
from recsys.layers import Embedding
from recsys.optimizers import SparseAdam


def _ids():
    return tf.constant([[1, 2, 0], [3, 3, 0]], dtype=tf.int32)


def test_gradient_is_indexed_slices_in_eager_mode():
    layer = Embedding(10, 4, embeddings_regularizer="l2")
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(_ids())) + tf.add_n(layer.losses)
    grad = tape.gradient(loss, layer.embeddings)
    assert isinstance(grad, tf.IndexedSlices)
    assert sorted(set(grad.indices.numpy().tolist())) == [0, 1, 2, 3]


def test_gradient_is_indexed_slices_inside_tf_function():
    layer = Embedding(10, 4, embeddings_regularizer="l2")
    layer.build(None)
    seen = []

    @tf.function
    def step(ids):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(ids)) + tf.add_n(layer.losses)
        grad = tape.gradient(loss, layer.embeddings)
        seen.append(type(grad))
        return grad.values

    step(_ids())
    assert seen == [tf.IndexedSlices]


class _RecordingSparseAdam(SparseAdam):
    """Records the gradient types that reach `apply_gradients` (at trace time)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen = []

    def apply_gradients(self, grads_and_vars, *args, **kwargs):
        grads_and_vars = list(grads_and_vars)
        self.seen.extend((v.name, type(g)) for g, v in grads_and_vars)
        return super().apply_gradients(grads_and_vars, *args, **kwargs)


@pytest.mark.parametrize("regularizer", [None, "l2"])
def test_gradient_reaching_optimizer_in_model_fit_is_indexed_slices(regularizer):
    inputs = keras.Input(shape=(3,), dtype="int32")
    x = Embedding(100, 8, embeddings_regularizer=regularizer, name="table")(inputs)
    x = keras.layers.GlobalAveragePooling1D()(x)
    model = keras.Model(inputs, keras.layers.Dense(1)(x))
    optimizer = _RecordingSparseAdam(0.01)
    model.compile(optimizer=optimizer, loss="mse")
    x_data = np.random.default_rng(0).integers(0, 100, size=(32, 3))
    model.fit(x_data, np.zeros((32, 1)), batch_size=8, epochs=1, verbose=0)
    table_grads = [kind for name, kind in optimizer.seen if "table" in name]
    assert table_grads and all(kind is tf.IndexedSlices for kind in table_grads)


def test_keras_embedding_regularizer_would_have_made_the_gradient_dense():
    # The reason the layer exists: a table-wide penalty densifies the gradient.
    layer = keras.layers.Embedding(10, 4, embeddings_regularizer="l2")
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(_ids())) + tf.add_n(layer.losses)
    assert not isinstance(tape.gradient(loss, layer.embeddings), tf.IndexedSlices)


@pytest.mark.parametrize("mask_zero", [False, True])
def test_regularizer_applies_to_looked_up_rows_divided_by_batch(mask_zero):
    layer = Embedding(10, 4, embeddings_regularizer=keras.regularizers.L2(0.1), mask_zero=mask_zero)
    ids = _ids()
    layer(ids)
    table = layer.embeddings.numpy()
    flat = ids.numpy().reshape(-1)
    if mask_zero:
        flat = flat[flat != 0]
    want = 0.1 * np.sum(table[flat] ** 2) / ids.shape[0]
    assert len(layer.losses) == 1
    np.testing.assert_allclose(float(layer.losses[0]), want, rtol=1e-6)
    # Nothing is regularized table-wide.
    assert not layer._callable_losses


def test_regularizer_warning_is_given_once(monkeypatch):
    monkeypatch.setattr(embedding_module, "_warned_about_regularizer", False)
    with pytest.warns(UserWarning, match="looked-up rows"):
        Embedding(5, 2, embeddings_regularizer="l2")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Embedding(5, 2, embeddings_regularizer="l1")
        Embedding(5, 2)


def test_matches_keras_embedding_outputs_masks_activity_loss_and_constraint():
    kwargs = dict(
        input_dim=10,
        output_dim=4,
        activity_regularizer=keras.regularizers.L1(0.01),
        embeddings_constraint=keras.constraints.MaxNorm(0.5, axis=1),
        mask_zero=True,
    )
    ours, theirs = Embedding(**kwargs), keras.layers.Embedding(**kwargs)
    ids = _ids()
    ours.build(None)
    theirs.build(None)
    weights = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    ours.set_weights([weights])
    theirs.set_weights([weights])
    np.testing.assert_array_equal(ours(ids).numpy(), theirs(ids).numpy())
    np.testing.assert_array_equal(ours.compute_mask(ids).numpy(), theirs.compute_mask(ids).numpy())
    np.testing.assert_allclose(float(tf.add_n(ours.losses)), float(tf.add_n(theirs.losses)))
    # The constraint is applied by the optimizer after an update, as in Keras.
    optimizer = SparseAdam(0.5)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(ours(ids))
    optimizer.apply_gradients([(tape.gradient(loss, ours.embeddings), ours.embeddings)])
    norms = np.linalg.norm(ours.embeddings.numpy(), axis=1)
    assert np.all(norms <= 0.5 + 1e-6)


def test_ragged_inputs_look_up_each_value():
    layer = Embedding(10, 3)
    out = layer(tf.ragged.constant([[1, 2], [3]]))
    assert isinstance(out, tf.RaggedTensor)
    np.testing.assert_array_equal(out.flat_values.numpy(), layer.embeddings.numpy()[[1, 2, 3]])


def test_get_config_round_trips_every_argument():
    layer = Embedding(
        input_dim=7,
        output_dim=3,
        embeddings_initializer=keras.initializers.RandomNormal(stddev=0.3, seed=1),
        embeddings_regularizer=keras.regularizers.L2(0.5),
        activity_regularizer=keras.regularizers.L1(0.25),
        embeddings_constraint=keras.constraints.NonNeg(),
        mask_zero=True,
        input_length=5,
        name="my_table",
        dtype="float64",
    )
    config = layer.get_config()
    params = set(inspect.signature(Embedding.__init__).parameters) - {"self", "kwargs"}
    assert params <= set(config), params - set(config)
    clone = Embedding.from_config(config)
    assert clone.get_config() == config
    assert isinstance(clone.embeddings_regularizer, keras.regularizers.L2)
    revived = keras.layers.deserialize(keras.layers.serialize(layer))
    assert type(revived) is Embedding
    assert keras.saving.get_registered_name(Embedding) == "recsys>Embedding"
    assert Embedding.from_config(Embedding(4, 2, sparse=True).get_config()).sparse


def test_saved_model_round_trip_keeps_predictions(tmp_path):
    inputs = keras.Input(shape=(3,), dtype="int32")
    x = Embedding(20, 4, embeddings_regularizer="l2")(inputs)
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling1D()(x))
    ids = np.array([[1, 2, 3], [4, 5, 0]])
    want = model.predict(ids, verbose=0)
    for path in (tmp_path / "model.keras", tmp_path / "savedmodel"):
        model.save(path)
        loaded = keras.models.load_model(path)
        np.testing.assert_allclose(loaded.predict(ids, verbose=0), want, rtol=1e-6)
    assert isinstance(keras.models.load_model(tmp_path / "model.keras").layers[1], Embedding)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"input_dim": 0, "output_dim": 4}, "Received: input_dim=0"),
        ({"input_dim": 10, "output_dim": -2}, "Received: output_dim=-2"),
        ({"input_dim": 2.5, "output_dim": 4}, "Received: input_dim=2.5"),
    ],
)
def test_bad_dimensions_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Embedding(**kwargs)


# Every form tf-keras's Embedding accepts for a dimension (checked by building theirs
# below): Python and NumPy integers, 0-d integer arrays, scalar integer tensors.
DIMENSION_FORMS = {
    "int": lambda n: n,
    "np.int32": np.int32,
    "np.int64": np.int64,
    "np.uint16": np.uint16,
    "0-d array": np.array,
    "tf.int32": lambda n: tf.constant(n, tf.int32),
    "tf.int64": lambda n: tf.constant(n, tf.int64),
}


@pytest.mark.parametrize("form", DIMENSION_FORMS, ids=list(DIMENSION_FORMS))
@pytest.mark.parametrize("argument", ["input_dim", "output_dim"])
def test_accepts_the_dimension_forms_tf_keras_accepts(form, argument):
    make = DIMENSION_FORMS[form]
    kwargs = {"input_dim": 10, "output_dim": 4, argument: make(7)}
    theirs = keras.layers.Embedding(**kwargs)
    ours = Embedding(**kwargs)
    ids = tf.constant([[1, 2], [3, 6]])
    assert ours(ids).shape == theirs(ids).shape
    assert ours.embeddings.shape == theirs.embeddings.shape
    # Stored as a Python int, so the config is plain JSON and round-trips.
    value = getattr(ours, argument)
    assert type(value) is int and value == 7
    config = json.loads(json.dumps(ours.get_config()))
    assert Embedding.from_config(config).get_config() == ours.get_config()


def test_loads_a_tf_keras_config_holding_a_tensor_dimension():
    # tf-keras keeps a tensor dimension as a tensor; its serialized config holds it as
    # a nested object, which our from_config (tf-keras's) turns back into a tensor.
    theirs = keras.layers.Embedding(input_dim=tf.constant(16000), output_dim=8)
    config = keras.layers.serialize(theirs)["config"]
    assert isinstance(config["input_dim"], dict)
    ours = Embedding.from_config(config)
    assert ours.input_dim == 16000 and type(ours.input_dim) is int


@pytest.mark.parametrize(
    "value",
    [10.0, 2.5, True, "10", np.array([10]), tf.constant([10]), tf.constant(10.0), np.float64(10)],
    ids=["float", "fraction", "bool", "str", "1-d array", "1-d tensor", "float tensor", "np.float"],
)
def test_refuses_the_dimension_forms_tf_keras_refuses(value):
    with pytest.raises((TypeError, ValueError)):
        keras.layers.Embedding(input_dim=value, output_dim=4)(tf.constant([[1]]))
    with pytest.raises(ValueError, match="Received: input_dim="):
        Embedding(input_dim=value, output_dim=4)


def test_symbolic_dimension_is_refused_with_the_fix():
    @tf.function(input_signature=[tf.TensorSpec([], tf.int32)])
    def build(n):
        Embedding(input_dim=n, output_dim=4)
        return n

    with pytest.raises(ValueError, match="must be known when the layer is created"):
        build(tf.constant(5))
