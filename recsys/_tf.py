"""The one place recsys imports TensorFlow and tf-keras.

Every TensorFlow-backed recsys module imports ``tf`` and ``keras`` from here, so the
environment check in :mod:`recsys._env` always runs first.
"""

from recsys._env import ensure_legacy_keras_env

ensure_legacy_keras_env()

import inspect  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any, TypeVar  # noqa: E402

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

__all__ = ["keras", "no_autograph", "ragged_row_ids", "tf"]

_F = TypeVar("_F", bound=Callable[..., Any])


# Keras converts a subclassed layer's `call` with AutoGraph when it is traced, and the
# conversion (parsing and rewriting the source of `call` and of every function it
# calls) is paid once per process. recsys's layers branch only on Python values, so
# their `call`s run as plain graph code: a py-spy profile of the ranking front door
# spent 5.4 of the 7.2 s of tracing its first training step in the AutoGraph transpiler.
def no_autograph(function: _F) -> _F:
    """`function` (a layer's `call`) run without AutoGraph conversion.

    `do_not_convert`'s wrapper takes ``*args, **kwargs``; Keras reads a `call`'s
    signature to decide which arguments (``training``, ``mask``) to pass, so the
    wrapper carries the signature of the function it wraps.

    Example:
        >>> class Double(keras.layers.Layer):
        ...     @no_autograph
        ...     def call(self, inputs):
        ...         return 2.0 * inputs
    """
    wrapper = tf.autograph.experimental.do_not_convert(function)
    wrapper.__signature__ = inspect.signature(function)
    return wrapper  # type: ignore[no-any-return]


def ragged_row_ids(ragged: Any) -> Any:
    """The row of each flat value of a ragged tensor: a cumulative sum of row starts.

    `RaggedTensor.value_rowids` computes it with a `repeat` (tile and mask) when the
    tensor was built from row splits, as a gathered history is; this costs one
    scatter and one cumsum over the flat values.

    Example:
        >>> ragged_row_ids(tf.ragged.constant([[1, 2], [], [3]])).numpy().tolist()
        [0, 0, 2]
    """
    splits = ragged.row_splits
    n = tf.shape(ragged.flat_values, out_type=splits.dtype)[0]
    starts = splits[1:-1]  # where rows 1.. begin; an empty row repeats its neighbour's
    marks = tf.scatter_nd(starts[:, None], tf.ones_like(starts), tf.reshape(n + 1, [1]))
    return tf.math.cumsum(marks[:n])
