"""What every row-sparse optimizer in recsys shares.

A row-sparse optimizer updates, for a `tf.IndexedSlices` gradient, only the rows in
`gradient.indices` of the variable and of its slots. The pieces here are the same
for every such optimizer: duplicate ids summed, the fused XLA kernel's padded lengths
(`bucket_size`) and inputs, rows read and scattered back, and `RowSparseUpdates`, the
mixin that routes sparse gradients away from tf-keras's dense machinery (its
per-variable XLA update, its whole-table weight decay, slot zeros made on the
coordinator).
"""

from __future__ import annotations

import math
import numbers
from typing import Any, NamedTuple

from recsys._tf import keras, tf


def _can_jit_compile() -> bool:
    try:
        from tf_keras.src.utils import tf_utils

        return bool(tf_utils.can_jit_compile())
    except ImportError:  # pragma: no cover - tf-keras layout changed
        return False


XLA_AVAILABLE = _can_jit_compile()
# Lengths the fused kernels are compiled for: all up to 16, then 8 in each range
# (2**(k-1), 2**k]. A batch whose number of ids is not one of them is padded up to the
# next (by less than 1/8), so batches of varying length (ragged or multi-hot features)
# compile a handful of kernels, not one per length.
_SIZES_PER_OCTAVE_LOG2 = 3


def bucket_size(n: Any) -> Any:
    """The padded length the fused sparse kernels use for `n` ids.

    The smallest multiple of `2**(ceil(log2(n)) - 4)` that is at least `n`: lengths up
    to 16 stay as they are, longer ones grow by less than an eighth, and each range
    `(2**(k-1), 2**k]` holds 8 lengths. Powers of two are kept.

    Example:

    >>> int(bucket_size(tf.constant(4097)))
    4608

    Args:
        n: An int32 or int64 tensor (any shape) of id counts.

    Returns:
        A tensor like `n` with the padded lengths.
    """
    n = tf.convert_to_tensor(n)
    octave = tf.math.ceil(tf.math.log(tf.cast(tf.maximum(n, 1), tf.float64)) / math.log(2.0))
    exponent = tf.maximum(octave - 1 - _SIZES_PER_OCTAVE_LOG2, 0.0)
    step = tf.cast(tf.pow(tf.constant(2.0, tf.float64), exponent), n.dtype)
    return (n + step - 1) // step * step


def read_rows(handle: Any, ids: Any, dtype: Any) -> Any:
    """Rows `ids` of the resource variable behind `handle` (usable inside XLA)."""
    return tf.raw_ops.ResourceGather(resource=handle, indices=ids, dtype=dtype)


def scatter_rows(targets: tuple, rows: tuple, ids: Any) -> None:
    """Writes `rows[i]` into `targets[i]` at `ids` (None targets are skipped)."""
    for target, new in zip(targets, rows, strict=True):
        if target is not None:
            target.scatter_update(tf.IndexedSlices(new, ids))


def sum_duplicates(gradient: Any) -> Any:
    """`gradient` (IndexedSlices) with the values of repeated indices summed."""
    unique_indices, positions = tf.unique(gradient.indices)
    summed = tf.math.unsorted_segment_sum(gradient.values, positions, tf.shape(unique_indices)[0])
    return tf.IndexedSlices(summed, unique_indices, gradient.dense_shape)


def _pad_gradient_rows(positions: Any, values: Any) -> tuple:
    """Pads a gradient's rows (`[n, row_size]` values and their unique positions).

    Both are padded to `bucket_size(n)`.

    Padding rows hold zeros at position 0, so they add nothing to any sum. Inside a
    traced function a length known when tracing is kept as it is: the function is
    traced, and the kernel compiled, once per such length anyway.
    """
    static_n = positions.shape[0]
    if static_n is not None and not tf.executing_eagerly():
        return positions, values
    n = tf.shape(positions, out_type=positions.dtype)[0]
    padding = bucket_size(n) - n
    positions = tf.pad(positions, [[0, padding]])
    values = tf.pad(values, [[0, padding], [0, 0]])
    return positions, values


def _pad_unique_ids(unique_ids: Any) -> Any:
    """Pads distinct ids to `bucket_size` with copies of the first one."""
    n = tf.shape(unique_ids, out_type=tf.int32)[0]
    first = tf.zeros([bucket_size(n) - n], tf.int32)
    return tf.concat([unique_ids, tf.gather(unique_ids, first)], 0)


class KernelInputs(NamedTuple):
    """A sparse gradient as the fused kernels take it (see `kernel_inputs`)."""

    ids: Any  # distinct ids, then copies of ids[0] up to the padded length
    n_unique: Any  # how many of `ids` are distinct (int32 scalar)
    positions: Any  # index in `ids` of each gradient row (padded)
    values: Any  # gradient rows as `[n, row_size]` vectors (padded)
    row_shape: Any  # the variable's row shape (TensorShape), to reshape results


def kernel_inputs(gradient: Any, variable: Any) -> KernelInputs | None:
    """The fused kernels' inputs for `gradient`, or None where they cannot run.

    Rows are the variable's first dimension; the kernels see each row flattened to a
    vector of `row_size` values, so a bias vector (rank 1) or a 3-D table takes the
    same kernels, padding and buckets as a matrix. A variable whose row shape is
    unknown, or whose rows hold no element, gets None: the plain TensorFlow path
    handles any shape (and an empty row has nothing to compute).
    """
    row_shape = variable.shape[1:]
    row_size = row_shape.num_elements()
    if variable.shape.rank in (None, 0) or not row_size:
        return None
    values = tf.convert_to_tensor(gradient.values)  # NumPy values from eager callers
    if variable.shape.rank != 2 or values.shape.rank != 2 or values.shape[1] != row_size:
        # Under a tf.distribute strategy the aggregated values can lose their static
        # row size; the kernels want it static (one trace per row size).
        values = tf.reshape(values, [-1, row_size])
    unique_ids, positions = tf.unique(gradient.indices)
    n_unique = tf.shape(unique_ids, out_type=tf.int32)[0]
    ids = _pad_unique_ids(unique_ids)
    positions, values = _pad_gradient_rows(positions, values)
    return KernelInputs(ids, n_unique, positions, values, row_shape)


def summed_gradient_rows(ids: Any, n_unique: Any, positions: Any, values: Any) -> Any:
    """Inside a kernel: one summed gradient row per entry of `ids`.

    Rows of repeated ids are summed; the padding copies of `ids[0]` get the row of
    `ids[0]`, so whatever a kernel computes for them equals what it computes for
    `ids[0]`, and scattering the copies back writes nothing more.
    """
    size = tf.shape(ids)[0]
    summed = tf.math.unsorted_segment_sum(values, positions, size)
    is_real = tf.range(size) < n_unique
    return tf.where(is_real[:, tf.newaxis], summed, summed[:1])


def unflatten_rows(rows: tuple, row_shape: Any) -> tuple:
    """Kernel results (`[n, row_size]`) back in the variable's row shape."""
    if row_shape.rank == 1:
        return rows
    shape = [-1, *row_shape.as_list()]
    return tuple(None if r is None else tf.reshape(r, shape) for r in rows)


def as_rows(x: Any) -> Any:
    """`x` (rows first) as `[rows, row_size]`; a scalar as one row of one element."""
    if x.shape.rank == 0:
        return tf.reshape(x, [1, 1])
    shape = tf.shape(x)
    return tf.reshape(x, tf.stack([shape[0], tf.reduce_prod(shape[1:])]))


def check_learning_rate(value: Any) -> Any:
    """A learning rate: a positive number, a tensor, a callable or a schedule."""
    if isinstance(value, keras.optimizers.schedules.LearningRateSchedule) or callable(value):
        return value
    if isinstance(value, tf.Variable | tf.Tensor):
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or value <= 0:
        raise ValueError(
            "`learning_rate` must be a positive float, a tensor, a callable or a "
            f"`LearningRateSchedule`. Received: learning_rate={value!r}"
        )
    return value


def check_weight_decay(value: Any) -> float | None:
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, numbers.Real) or value < 0
    ):
        raise ValueError(
            f"`weight_decay` must be None or a float >= 0. Received: weight_decay={value!r}"
        )
    return value


def refuse_ema(use_ema: Any, name: str) -> None:
    if use_ema:
        raise ValueError(
            f"{name} does not support `use_ema=True`: an exponential moving average "
            "of the weights rewrites every row of every table at each step, which defeats "
            "sparse updates. Received: use_ema=True. Keep an average outside the optimizer "
            "if you need one."
        )


class RowSparseUpdates:
    """Mixin for a tf-keras optimizer whose sparse gradients update only their rows.

    The subclass implements `update_step` (dense and sparse) and calls
    `_remember_jit_compile(jit_compile)` after the base constructor. This mixin:

    - makes each slot's initial value on its variable's device (see
      `add_variable_from_reference`);
    - leaves duplicate ids of sparse gradients to the fused kernel (which sums them
      itself), or sums them for the plain path;
    - keeps sparse gradients out of tf-keras's per-variable XLA update (compiled anew
      for every number of distinct ids);
    - replaces the base class's weight decay of every row of every variable by
      `_weight_decay_rate`, which the subclass applies to the rows it updates.
    """

    def _remember_jit_compile(self, jit_compile: bool) -> None:
        # The base class turns `jit_compile` off on machines without a GPU; the fused
        # sparse kernels run on CPU too, so the request is kept separately.
        self._jit_compile_requested = bool(jit_compile)

    @property
    def fuses_sparse_updates(self) -> bool:
        """Whether sparse updates run as the fused XLA kernel (see `jit_compile`)."""
        return self._jit_compile_requested and XLA_AVAILABLE

    def add_variable_from_reference(
        self, model_variable: Any, variable_name: str, shape: Any = None, initial_value: Any = None
    ) -> Any:
        # The base class makes the slot's initial zeros where this runs: under
        # ParameterServerStrategy that is the chief, which would hold a transient copy
        # of every table shard (2M x 64 table: +737 MiB chief peak). Made on the
        # shard's own device, the zeros never leave its parameter server.
        with tf.device(model_variable.device):
            return super().add_variable_from_reference(
                model_variable, variable_name, shape=shape, initial_value=initial_value
            )

    def _apply_weight_decay(self, variables: Any) -> None:
        # The base class decays every row of every variable before the update; the
        # decay is applied inside `update_step` instead, where the gradient tells
        # which rows a sparse update touches.
        return

    def _deduplicate_sparse_grad(self, grads: Any) -> list:
        """Sums the values of duplicate indices (the fused kernel does it itself)."""
        if self.fuses_sparse_updates:
            return list(grads)
        return [sum_duplicates(g) if isinstance(g, tf.IndexedSlices) else g for g in grads]

    def _weight_decay_rate(self, variable: Any) -> Any | None:
        """`weight_decay * learning_rate` for `variable`, or None where no decay applies."""
        if self.weight_decay is None or not self._use_weight_decay(variable):
            return None
        lr = tf.cast(self.learning_rate, variable.dtype)
        return tf.cast(self.weight_decay, variable.dtype) * lr

    def _update_step_xla(self, gradient: Any, variable: Any, key: int) -> Any:
        if isinstance(gradient, tf.IndexedSlices):
            return self._update_step(gradient, variable)
        return super()._update_step_xla(gradient, variable, key)
