"""Adam that updates only the rows a sparse gradient touches."""

from __future__ import annotations

import inspect
import math
import numbers
from typing import Any

from recsys._tf import keras, tf

_BaseAdam = keras.optimizers.Adam


def _can_jit_compile() -> bool:
    try:
        from tf_keras.src.utils import tf_utils

        return bool(tf_utils.can_jit_compile())
    except ImportError:  # pragma: no cover - tf-keras layout changed
        return False


_XLA_AVAILABLE = _can_jit_compile()
# Lengths the fused kernel is compiled for: all up to 16, then 8 in each range
# (2**(k-1), 2**k]. A batch whose number of ids is not one of them is padded up to the
# next (by less than 1/8), so batches of varying length (ragged or multi-hot features)
# compile a handful of kernels, not one per length.
_SIZES_PER_OCTAVE_LOG2 = 3


def bucket_size(n: Any) -> Any:
    """The padded length the fused sparse kernel uses for `n` ids.

    The smallest multiple of `2**(ceil(log2(n)) - 4)` that is at least `n`: lengths up
    to 16 stay as they are, longer ones grow by less than an eighth, and each range
    `(2**(k-1), 2**k]` holds 8 lengths. Powers of two are kept.

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


def _read_rows(handle: Any, ids: Any, dtype: Any) -> Any:
    return tf.raw_ops.ResourceGather(resource=handle, indices=ids, dtype=dtype)


def _scatter_rows(targets: tuple, rows: tuple, ids: Any) -> None:
    """Writes `rows[i]` into `targets[i]` at `ids` (None targets are skipped)."""
    for target, new in zip(targets, rows, strict=True):
        if target is not None:
            target.scatter_update(tf.IndexedSlices(new, ids))


def _sum_duplicates(gradient: Any) -> Any:
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


def _adam_rows(
    grad: Any,
    var_rows: Any,
    m_rows: Any,
    v_rows: Any,
    vhat_rows: Any,
    alpha: Any,
    epsilon: Any,
    one_minus_beta_1: Any,
    one_minus_beta_2: Any,
    decay: Any,
) -> tuple:
    """Adam's new (variable, m, v, vhat) rows from the current ones and their gradient.

    The expressions are those of tf-keras Adam's dense branch, so with TensorFlow's
    kernels a row gets dense Adam's values bit for bit. `vhat_rows` is None unless
    AMSGrad; `decay` (weight decay times learning rate) is None without weight decay.
    """
    m_rows = m_rows + (grad - m_rows) * one_minus_beta_1
    v_rows = v_rows + (tf.square(grad) - v_rows) * one_minus_beta_2
    second = v_rows
    if vhat_rows is not None:
        vhat_rows = tf.maximum(vhat_rows, v_rows)
        second = vhat_rows
    delta = (m_rows * alpha) / (tf.sqrt(second) + epsilon)
    if decay is not None:
        delta = delta + var_rows * decay
    return var_rows - delta, m_rows, v_rows, vhat_rows


@tf.function(jit_compile=True, autograph=False)
def _lazy_adam_rows(
    ids: Any,
    n_unique: Any,
    positions: Any,
    values: Any,
    var: Any,
    m: Any,
    v: Any,
    vhat: Any,
    alpha: Any,
    epsilon: Any,
    one_minus_beta_1: Any,
    one_minus_beta_2: Any,
    decay: Any,
) -> tuple:
    """New rows of the variable and its slots for the distinct ids, in one XLA kernel.

    `ids` holds the `n_unique` distinct ids of a gradient, then copies of `ids[0]`
    up to the kernel's padded length. `positions[i]` is the index in `ids` of the
    gradient row `values[i]` (as `tf.unique` gives it), so the rows of repeated ids
    are summed here. `values` is `[n, row_size]` whatever the variable's rank (its
    rows flattened); the new rows come back as `[len(ids), row_size]`. The copies
    get the same new rows as `ids[0]`, so scattering them back writes nothing more.
    `var`, `m`, `v` and `vhat` (None unless AMSGrad) are resource handles, only read
    here; the caller scatters the returned rows. `alpha` (the bias-corrected step
    size), `epsilon` and `1 - beta` come in computed: `1 - beta_2**t` and
    `1 - beta_2` cancel badly in float32, so they are computed as tf-keras's Adam
    computes them (TensorFlow's `pow`; Python floats).
    """
    dtype = values.dtype
    size = tf.shape(ids)[0]
    summed = tf.math.unsorted_segment_sum(values, positions, size)
    is_real = tf.range(size) < n_unique
    grad = tf.where(is_real[:, tf.newaxis], summed, summed[:1])
    # The variable's rows come out of the gather in its own row shape; they are
    # reshaped to the gradient's `[size, row_size]` (free in XLA, a no-op for a
    # matrix). The shape is taken from the tensors, not from the handles: one trace
    # serves every variable with the same row size, whatever its row shape.
    rows = [
        None if h is None else tf.reshape(_read_rows(h, ids, dtype), tf.shape(grad))
        for h in (var, m, v, vhat)
    ]
    return _adam_rows(grad, *rows, alpha, epsilon, one_minus_beta_1, one_minus_beta_2, decay)


_BASE_HAS_ADAPTIVE_EPSILON = "adaptive_epsilon" in inspect.signature(_BaseAdam.__init__).parameters


def _check_unit_interval(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value < 1.0:
        raise ValueError(f"`{name}` must be a float in [0, 1). Received: {name}={value!r}")
    return float(value)


def _check_learning_rate(value: Any) -> Any:
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


@keras.saving.register_keras_serializable(package="recsys")
class SparseAdam(_BaseAdam):
    """Adam with lazy, row-sparse updates for `tf.IndexedSlices` gradients.

    For a dense gradient, `SparseAdam` is exactly `tf_keras.optimizers.Adam`: it runs
    the same update. For a `tf.IndexedSlices` gradient (what an embedding lookup
    produces, e.g. `recsys.layers.Embedding`), it reads and writes only the rows in
    `gradient.indices`: those rows of the variable and of both moment slots
    (`m`, `v`, and `vhat` with `amsgrad=True`) are updated; every other row stays
    bit-identical. A step therefore costs what the batch touches, not what the table
    holds. Duplicate indices are summed first. Rows are the variable's first
    dimension, whatever its rank: a 1-D bias vector read with `tf.gather`, a 2-D
    table, a 3-D table of `[rows, a, b]` blocks.

    Where XLA is available (and `jit_compile=True`, the default), a sparse update is
    one fused XLA kernel, on CPU too: it gathers the rows, sums duplicates and does
    Adam's arithmetic; TensorFlow scatters the rows back. The kernel is compiled for
    a few padded lengths only (`bucket_size`), so batches with varying numbers of ids
    do not recompile it each step. It sees each row flattened to a vector, so a
    variable of any rank takes the same kernel and the same padded lengths (a
    variable whose row shape is unknown, or whose rows hold no element, takes the
    plain TensorFlow path instead).

    How this differs from dense Adam: dense Adam decays the moments of *every* row at
    every step, so a row not in the batch still moves (by its decayed momentum).
    Lazy Adam leaves such a row, and its moments, untouched until the row appears in
    a batch again; its moments then decay by one step only, not by the steps missed.
    Bias correction uses the optimizer's global step (`iterations`), exactly as Adam
    does. This is the behaviour of TensorFlow Addons' `LazyAdam` and of PyTorch's
    `SparseAdam`; for rows present in every step it equals dense Adam (bit for bit
    with `jit_compile=False`; within float rounding with the fused kernel).

    `weight_decay` (decoupled, as in `tf_keras.optimizers.Adam`) decays only the rows
    present in a sparse gradient; for dense gradients it decays the whole variable,
    as Adam does. `use_ema=True` is refused: an exponential moving average of the
    weights rewrites every row at every step, which defeats sparse updates.
    Learning-rate schedules, `clipnorm`, `clipvalue`, `global_clipnorm`, mixed
    precision (`tf_keras.mixed_precision.LossScaleOptimizer`) and checkpointing of the
    slots work as for Adam.

    There is no legacy (`OptimizerV2`) form: tf-keras's
    `convert_to_legacy_optimizer` (exported as
    `tf_keras.__internal__.optimizers.convert_to_legacy_optimizer`) raises
    `ValueError: Unknown optimizer: 'sparseadam'` for it. tf-keras calls it only from
    `tf_keras.optimizers.get` when TensorFlow 2 behaviour is disabled
    (`tf.compat.v1.disable_v2_behavior()`), which recsys and tensorflow-recommenders
    do not support. Converting to the legacy `Adam` instead would silently make every
    update dense (its sparse update decays every row's moments) and drop
    `weight_decay`; if you need a legacy optimizer, choose one explicitly.

    Example:

    >>> import recsys
    >>> from recsys.layers import Embedding
    >>> from recsys.optimizers import SparseAdam
    >>> model = tf.keras.Sequential([Embedding(1_000_000, 32), tf.keras.layers.Dense(1)])
    >>> model.compile(optimizer=SparseAdam(learning_rate=1e-3), loss="mse")

    Args:
        learning_rate: A float, a `LearningRateSchedule`, or a callable returning the
            learning rate. Defaults to 0.001.
        beta_1: Exponential decay rate of the first moment, in [0, 1).
        beta_2: Exponential decay rate of the second moment, in [0, 1).
        epsilon: Small constant for numerical stability, >= 0.
        adaptive_epsilon: Scale `epsilon` by `sqrt(1 - beta_2**t)` (as tf-keras's Adam).
        amsgrad: Whether to use the AMSGrad variant (lazily too: `vhat` of untouched
            rows is left as it is).
        weight_decay: Decoupled weight decay rate, or None (see above).
        clipnorm: Clip each gradient to this norm.
        clipvalue: Clip each gradient element to [-clipvalue, clipvalue].
        global_clipnorm: Clip all gradients together to this global norm.
        use_ema: Must be False (see above).
        ema_momentum: Accepted for config compatibility; unused.
        ema_overwrite_frequency: Accepted for config compatibility; unused.
        jit_compile: Compile updates with XLA where it is available. Dense gradients
            follow Adam (tf-keras uses XLA for them only when a GPU is present).
            Sparse gradients run as one fused XLA kernel on CPU too (gathers,
            duplicate sum and Adam arithmetic; the rows are scattered back by
            TensorFlow), compiled for a few padded lengths only (see
            `bucket_size`). With `jit_compile=False` sparse updates use plain
            TensorFlow ops, whose rounding matches dense Adam bit for bit; XLA may
            fuse multiply-adds, so the fused kernel can differ from it in the last
            bit of a float.
        name: Name of the optimizer.
        **kwargs: Other base optimizer arguments (`is_legacy_optimizer`, `mesh`).

    Raises:
        ValueError: An argument is out of range, or `use_ema=True`.
    """

    def __init__(
        self,
        learning_rate: Any = 0.001,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-7,
        adaptive_epsilon: bool = False,
        amsgrad: bool = False,
        weight_decay: float | None = None,
        clipnorm: float | None = None,
        clipvalue: float | None = None,
        global_clipnorm: float | None = None,
        use_ema: bool = False,
        ema_momentum: float = 0.99,
        ema_overwrite_frequency: int | None = None,
        jit_compile: bool = True,
        name: str = "SparseAdam",
        **kwargs: Any,
    ) -> None:
        learning_rate = _check_learning_rate(learning_rate)
        beta_1 = _check_unit_interval("beta_1", beta_1)
        beta_2 = _check_unit_interval("beta_2", beta_2)
        if isinstance(epsilon, bool) or not isinstance(epsilon, numbers.Real) or epsilon < 0:
            raise ValueError(f"`epsilon` must be a float >= 0. Received: epsilon={epsilon!r}")
        if weight_decay is not None and (
            isinstance(weight_decay, bool)
            or not isinstance(weight_decay, numbers.Real)
            or weight_decay < 0
        ):
            raise ValueError(
                f"`weight_decay` must be None or a float >= 0. Received: weight_decay={weight_decay!r}"
            )
        if use_ema:
            raise ValueError(
                "SparseAdam does not support `use_ema=True`: an exponential moving average "
                "of the weights rewrites every row of every table at each step, which defeats "
                "sparse updates. Received: use_ema=True. Keep an average outside the optimizer "
                "if you need one."
            )
        if adaptive_epsilon and not _BASE_HAS_ADAPTIVE_EPSILON:
            raise ValueError(
                "`adaptive_epsilon=True` needs a tf-keras whose Adam supports it "
                f"(installed: {keras.__version__}). Received: adaptive_epsilon=True."
            )
        base_kwargs = (
            {"adaptive_epsilon": bool(adaptive_epsilon)} if _BASE_HAS_ADAPTIVE_EPSILON else {}
        )
        super().__init__(
            learning_rate=learning_rate,
            beta_1=beta_1,
            beta_2=beta_2,
            epsilon=float(epsilon),
            amsgrad=bool(amsgrad),
            weight_decay=weight_decay,
            clipnorm=clipnorm,
            clipvalue=clipvalue,
            global_clipnorm=global_clipnorm,
            use_ema=False,
            ema_momentum=ema_momentum,
            ema_overwrite_frequency=ema_overwrite_frequency,
            jit_compile=jit_compile,
            name=name,
            **base_kwargs,
            **kwargs,
        )
        self.adaptive_epsilon = bool(adaptive_epsilon)
        # The base class turns `jit_compile` off on machines without a GPU; the fused
        # sparse kernel runs on CPU too, so the request is kept separately.
        self._jit_compile_requested = bool(jit_compile)

    @property
    def fuses_sparse_updates(self) -> bool:
        """Whether sparse updates run as the fused XLA kernel (see `jit_compile`)."""
        return self._jit_compile_requested and _XLA_AVAILABLE

    def _apply_weight_decay(self, variables: Any) -> None:
        # The base class decays every row of every variable before the update; the
        # decay is applied inside `update_step` instead, where the gradient tells
        # which rows a sparse update touches.
        return

    def _deduplicate_sparse_grad(self, grads: Any) -> list:
        """Sums the values of duplicate indices (the fused kernel does it itself)."""
        if self.fuses_sparse_updates:
            return list(grads)
        return [_sum_duplicates(g) if isinstance(g, tf.IndexedSlices) else g for g in grads]

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

    def update_step(self, gradient: Any, variable: Any) -> None:
        """Updates `variable` (and its slots) from `gradient`."""
        decay = self._weight_decay_rate(variable)
        if isinstance(gradient, tf.IndexedSlices):
            if self.fuses_sparse_updates:
                self._fused_sparse_update_step(gradient, variable, decay)
            else:
                self._sparse_update_step(gradient, variable, decay)
            return
        if decay is not None:
            # What the base class's `_apply_weight_decay` does, for this variable.
            variable.assign_sub(variable * decay)
        super().update_step(gradient, variable)

    def _fused_sparse_update_step(self, gradient: Any, variable: Any, decay: Any | None) -> None:
        # Rows are the first dimension; the kernel sees each row flattened to a vector
        # of `row_size` values, so a bias vector (rank 1) or a 3-D table takes the same
        # kernel, padding and buckets as a matrix. A matrix's gradient is left as it is.
        row_shape = variable.shape[1:]
        row_size = row_shape.num_elements()
        if variable.shape.rank in (None, 0) or not row_size:
            # Unknown row shape, or rows without elements: the plain TensorFlow path
            # handles any shape (and an empty row has nothing to compute).
            self._sparse_update_step(_sum_duplicates(gradient), variable, decay)
            return
        is_matrix = variable.shape.rank == 2
        values = gradient.values if is_matrix else tf.reshape(gradient.values, [-1, row_size])
        targets = self._row_targets(variable)
        unique_ids, positions = tf.unique(gradient.indices)
        n_unique = tf.shape(unique_ids, out_type=tf.int32)[0]
        ids = _pad_unique_ids(unique_ids)
        positions, values = _pad_gradient_rows(positions, values)
        dtype = variable.dtype
        alpha, epsilon = self._bias_corrected_step(dtype)
        new_rows = _lazy_adam_rows(
            ids,
            n_unique,
            positions,
            values,
            *(None if t is None else t.handle for t in targets),
            alpha,
            tf.cast(epsilon, dtype),
            tf.constant(1 - self.beta_1, dtype),
            tf.constant(1 - self.beta_2, dtype),
            decay,
        )
        if not is_matrix:
            row_shape = [-1, *row_shape.as_list()]
            new_rows = tuple(None if r is None else tf.reshape(r, row_shape) for r in new_rows)
        _scatter_rows(targets, new_rows, ids)

    def _row_targets(self, variable: Any) -> tuple:
        """The variable and its slots (var, m, v, vhat), vhat None unless AMSGrad."""
        slot = self._index_dict[self._var_key(variable)]
        vhat = self._velocity_hats[slot] if self.amsgrad else None
        return variable, self._momentums[slot], self._velocities[slot], vhat

    def _bias_corrected_step(self, dtype: Any) -> tuple:
        """Adam's `alpha` and `epsilon_hat` for this step (expressions as in tf-keras)."""
        lr = tf.cast(self.learning_rate, dtype)
        local_step = tf.cast(self.iterations + 1, dtype)
        beta_1_power = tf.pow(tf.cast(self.beta_1, dtype), local_step)
        beta_2_power = tf.pow(tf.cast(self.beta_2, dtype), local_step)
        alpha = lr * tf.sqrt(1 - beta_2_power) / (1 - beta_1_power)
        epsilon_hat = (
            self.epsilon * tf.sqrt(1 - beta_2_power) if self.adaptive_epsilon else self.epsilon
        )
        return alpha, epsilon_hat

    def _sparse_update_step(self, gradient: Any, variable: Any, decay: Any | None) -> None:
        # Plain TensorFlow ops on duplicate-free indices (`_deduplicate_sparse_grad`).
        # The rows are gathered, updated and written back with `scatter_update`: on
        # CPU, ResourceScatterSub costs about twice a gather plus a ResourceScatterUpdate.
        alpha, epsilon_hat = self._bias_corrected_step(variable.dtype)
        targets = self._row_targets(variable)
        indices = gradient.indices
        rows = [None if t is None else tf.gather(t, indices) for t in targets]
        new_rows = _adam_rows(
            gradient.values,
            *rows,
            alpha,
            epsilon_hat,
            1 - self.beta_1,
            1 - self.beta_2,
            decay,
        )
        _scatter_rows(targets, new_rows, indices)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        # tf-keras's Adam leaves `adaptive_epsilon` out of its config.
        config["adaptive_epsilon"] = self.adaptive_epsilon
        # The base class records False on machines without a GPU; keep the request.
        config["jit_compile"] = self._jit_compile_requested
        return config
