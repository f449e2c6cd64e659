"""A tf-keras Embedding whose table gradient stays row-sparse."""

from __future__ import annotations

import numbers
import warnings
from typing import Any

import numpy as np

from recsys._tf import keras, no_autograph, tf

_warned_about_regularizer = False


def _warn_regularizer_moved_once() -> None:
    global _warned_about_regularizer
    if _warned_about_regularizer:
        return
    _warned_about_regularizer = True
    warnings.warn(
        "recsys.layers.Embedding applies `embeddings_regularizer` to the looked-up rows, not "
        "to the whole table: a penalty on the whole table has a dense gradient, which would "
        "make every training step read and write every row. The penalty is summed over the "
        "rows looked up in a batch (padding excluded when mask_zero=True) and divided by the "
        "batch size, like `activity_regularizer`.",
        UserWarning,
        stacklevel=3,
    )


def _check_positive_int(name: str, value: Any) -> int:
    """`value` as a Python int, in every form tf-keras's Embedding accepts.

    tf-keras takes a Python or NumPy integer, a 0-d NumPy integer array and a scalar
    integer tensor (and stores a tensor as it is, which a config cannot hold as
    JSON). A tensor's value must be known now; it is stored as an int.
    """
    received = value
    if isinstance(value, tf.Tensor) and value.dtype.is_integer and value.shape.rank == 0:
        value = tf.get_static_value(value)
        if value is None:
            raise ValueError(
                f"`{name}` must be known when the layer is created: pass a Python int or "
                f"a constant scalar tensor, not a symbolic one. Received: {name}={received!r}"
            )
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(
            f"`{name}` must be a positive integer (a Python or NumPy int, or a scalar integer "
            f"tensor). Received: {name}={received!r}"
        )
    return int(value)


@keras.saving.register_keras_serializable(package="recsys")
class Embedding(keras.layers.Embedding):
    """Turns integer ids into dense vectors, keeping the table's gradient row-sparse.

    A drop-in replacement for `tf.keras.layers.Embedding` (tf-keras). The gradient
    that reaches the optimizer for the table is a `tf.IndexedSlices` holding only the
    rows the batch looked up, so a row-sparse optimizer such as
    `recsys.optimizers.SparseAdam` updates only those rows. The one behavioural
    difference from Keras: `embeddings_regularizer` is applied to the looked-up rows
    instead of the whole table (a table-wide penalty has a dense gradient). The
    penalty is the regularizer evaluated on the `[n, output_dim]` matrix of looked-up
    rows (every occurrence, padding excluded when `mask_zero=True`), divided by the
    batch size as Keras does for `activity_regularizer`. A warning says so once per
    process. Everything else (`activity_regularizer`, `mask_zero`, constraints,
    initializers, `input_length`, `sparse`) behaves as in Keras.

    Example:

    >>> import recsys
    >>> from recsys.layers import Embedding
    >>> layer = Embedding(1000, 16)
    >>> layer(tf.constant([[1, 2], [3, 4]])).shape
    TensorShape([2, 2, 16])

    Args:
        input_dim: Size of the vocabulary (largest id + 1). A positive integer: a
            Python or NumPy int, a 0-d NumPy integer array or a scalar integer tensor
            whose value is known (as tf-keras accepts); stored as a Python int.
        output_dim: Dimension of each embedding vector. A positive integer, in the
            same forms as `input_dim`.
        embeddings_initializer: Initializer for the table.
        embeddings_regularizer: Regularizer applied to the looked-up rows (see above).
        activity_regularizer: Regularizer applied to the layer's output, as in Keras.
        embeddings_constraint: Constraint applied to the table after each update, as in
            Keras (note that Keras applies it to the whole table).
        mask_zero: Whether id 0 is padding to be masked out.
        input_length: Length of input sequences, when constant.
        sparse: Whether `tf.SparseTensor` inputs produce `tf.SparseTensor` outputs.
        **kwargs: Base layer arguments (`name`, `dtype`, `trainable`, ...).

    Input shape:
        Integer tensor of any shape `(batch_size, ...)`.

    Output shape:
        `(batch_size, ..., output_dim)`.
    """

    def __init__(
        self,
        input_dim: Any,
        output_dim: Any,
        embeddings_initializer: Any = "uniform",
        embeddings_regularizer: Any = None,
        activity_regularizer: Any = None,
        embeddings_constraint: Any = None,
        mask_zero: bool = False,
        input_length: int | None = None,
        sparse: bool = False,
        **kwargs: Any,
    ) -> None:
        input_dim = _check_positive_int("input_dim", input_dim)
        output_dim = _check_positive_int("output_dim", output_dim)
        super().__init__(
            input_dim,
            output_dim,
            embeddings_initializer=embeddings_initializer,
            embeddings_regularizer=embeddings_regularizer,
            activity_regularizer=activity_regularizer,
            embeddings_constraint=embeddings_constraint,
            mask_zero=mask_zero,
            input_length=input_length,
            sparse=sparse,
            **kwargs,
        )
        if self.embeddings_regularizer is not None:
            _warn_regularizer_moved_once()

    def build(self, input_shape: Any = None) -> None:
        # Same weight as Keras, but without a table-wide regularizer: see `call`.
        self.embeddings = self.add_weight(
            shape=(self.input_dim, self.output_dim),
            initializer=self.embeddings_initializer,
            name="embeddings",
            regularizer=None,
            constraint=self.embeddings_constraint,
            experimental_autocast=False,
        )
        self.built = True

    @no_autograph
    def call(self, inputs: Any) -> Any:
        if isinstance(inputs, tf.RaggedTensor):
            return inputs.with_flat_values(self.call(inputs.flat_values))
        outputs = super().call(inputs)
        if self.embeddings_regularizer is not None:
            self.add_loss(self._looked_up_rows_penalty(inputs, outputs))
        return outputs

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        # tf-keras leaves `sparse` out of its config; a round trip must keep it.
        config["sparse"] = self.sparse
        return config

    def _looked_up_rows_penalty(self, inputs: Any, outputs: Any) -> Any:
        if isinstance(outputs, tf.SparseTensor):
            rows = tf.reshape(outputs.values, [-1, self.output_dim])
            batch_size = outputs.dense_shape[0]
        else:
            rows = outputs
            if self.mask_zero:
                rows = tf.boolean_mask(rows, tf.not_equal(inputs, 0))
            rows = tf.reshape(rows, [-1, self.output_dim])
            batch_size = tf.shape(outputs, out_type=tf.int64)[0]
        penalty = self.embeddings_regularizer(tf.cast(rows, self.dtype))
        return penalty / tf.cast(tf.maximum(batch_size, 1), penalty.dtype)
