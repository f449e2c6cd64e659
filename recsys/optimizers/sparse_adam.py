"""Adam that updates only the rows a sparse gradient touches."""

from __future__ import annotations

import inspect
import numbers
from typing import Any

from recsys._tf import keras, tf
from recsys.checks import check_bool
from recsys.optimizers._sparse_rows import (
    XLA_AVAILABLE,
    RowSparseUpdates,
    as_rows,
    bucket_size,
    check_learning_rate,
    check_weight_decay,
    kernel_inputs,
    read_rows,
    refuse_ema,
    scatter_rows,
    sum_duplicates,
    summed_gradient_rows,
    unflatten_rows,
)
from recsys.optimizers.rounding import round_to, rounding_bits, step_seed, widen

__all__ = ["MOMENT_DTYPES", "SPARSE_UPDATES", "SparseAdam", "bucket_size"]

_BaseAdam = keras.optimizers.Adam
_XLA_AVAILABLE = XLA_AVAILABLE  # kept for callers of the old name
# What `moment_dtype` accepts: the moments of float32 variables are stored so.
MOMENT_DTYPES = ("float32", "bfloat16", "float16")
_MOMENT_SLOTS = ("m", "v", "vhat")
# How a sparse update writes its rows: "assign" the new rows (exact), or "add" the
# change to them (no concurrent update to the same row is lost; see SparseAdam).
SPARSE_UPDATES = ("assign", "add")


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


def _stores_root(dtype: Any) -> bool:
    """Whether slots of `dtype` keep `sqrt(v)` rather than `v` (float16 does).

    A squared gradient below 6e-8 (gradients under 2.4e-4, common for embedding rows
    of a mean loss over a large batch) is zero in float16, and a row whose `v` is zero
    while `m` is not takes a step up to `1 / sqrt(1 - beta_2)` (32x) too large:
    measured on ML-1M rating prediction, test RMSE 1.53 against 0.84. Its square root
    has the range of the gradient itself, like `m`, so both survive or vanish together.
    """
    return tf.as_dtype(dtype) == tf.float16


def _widened_moments(slot_rows: list, dtype: Any, slot_dtype: Any) -> list:
    """Slot rows (m, v, vhat; None where absent) as the moments, in `dtype`."""
    rows = [None if r is None else widen(r, dtype) for r in slot_rows]
    if _stores_root(slot_dtype):
        rows[1:] = [None if r is None else tf.square(r) for r in rows[1:]]
    return rows


def _stored_moments(moments: tuple, dtype: Any, bits: Any) -> tuple:
    """New (m, v, vhat) rows, `[n, row_size]` in float32, as the slots store them.

    Rounded to `dtype`: stochastically with `bits` (m takes their low 16 bits, v and
    vhat the high 16), else to nearest. vhat shares v's bits: when vhat takes v's new
    value it is rounded as v is, so the stored vhat stays the maximum of the stored v's.
    float16 slots keep the square roots of v and vhat (see `_stores_root`).
    """
    m_rows, v_rows, vhat_rows = moments
    if _stores_root(dtype):
        v_rows = tf.sqrt(v_rows)
        vhat_rows = None if vhat_rows is None else tf.sqrt(vhat_rows)
    m_bits = v_bits = None
    if bits is not None:
        m_bits, v_bits = bits, tf.bitwise.right_shift(bits, tf.constant(16, tf.uint32))
    return (
        round_to(m_rows, dtype, m_bits),
        round_to(v_rows, dtype, v_bits),
        None if vhat_rows is None else round_to(vhat_rows, dtype, v_bits),
    )


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
    moment_dtype: Any = None,
    seed: Any = None,
    deltas: bool = False,
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

    With `moment_dtype` (a 16-bit float dtype) the slots hold that dtype: their rows
    are widened to the variable's dtype, Adam's arithmetic runs there, and the new
    moments come back rounded to `moment_dtype` (stochastically with `seed`, a uint32
    scalar, else to nearest). The padding copies of `ids[0]` hash to the same random
    bits as `ids[0]`, so they round alike.

    With `deltas=True` (float32 moments only) the rows come back as the change to
    add to the rows read here (new minus current), for `scatter_add`.
    """
    dtype = values.dtype
    grad = summed_gradient_rows(ids, n_unique, positions, values)
    slot_dtype = dtype if moment_dtype is None else moment_dtype
    # The variable's rows come out of the gather in its own row shape; they are
    # reshaped to the gradient's `[size, row_size]` (free in XLA, a no-op for a
    # matrix). The shape is taken from the tensors, not from the handles: one trace
    # serves every variable with the same row size, whatever its row shape.
    var_rows = tf.reshape(read_rows(var, ids, dtype), tf.shape(grad))
    slot_rows = [
        None if h is None else tf.reshape(read_rows(h, ids, slot_dtype), tf.shape(grad))
        for h in (m, v, vhat)
    ]
    slot_rows = _widened_moments(slot_rows, dtype, slot_dtype)
    new = _adam_rows(
        grad, var_rows, *slot_rows, alpha, epsilon, one_minus_beta_1, one_minus_beta_2, decay
    )
    if deltas:
        return _changes(new, (var_rows, *slot_rows))
    if moment_dtype is None:
        return new
    bits = None if seed is None else rounding_bits(seed, ids, values.shape[1])
    return (new[0], *_stored_moments(new[1:], moment_dtype, bits))


def _changes(new_rows: tuple, old_rows: tuple) -> tuple:
    """`new - old` for each pair of rows (None stays None)."""
    return tuple(None if n is None else n - o for n, o in zip(new_rows, old_rows, strict=True))


def _scatter_add_rows(targets: tuple, changes: tuple, ids: Any) -> None:
    """Adds `changes[i]` to `targets[i]` at `ids` (distinct; None targets skipped).

    `ResourceScatterAdd` changes the rows under the variable's lock, so an update a
    concurrent worker made between this step's read and write is kept, not overwritten.
    """
    for target, change in zip(targets, changes, strict=True):
        if target is not None:
            target.scatter_add(tf.IndexedSlices(change, ids))


_BASE_HAS_ADAPTIVE_EPSILON = "adaptive_epsilon" in inspect.signature(_BaseAdam.__init__).parameters


def _check_unit_interval(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value < 1.0:
        raise ValueError(f"`{name}` must be a float in [0, 1). Received: {name}={value!r}")
    return float(value)


def _moment_dtype_name(value: Any) -> str:
    """`moment_dtype` as one of `MOMENT_DTYPES` (a name or a `tf.DType`)."""
    name = value.name if isinstance(value, tf.DType) else value
    if not isinstance(name, str) or name not in MOMENT_DTYPES:
        raise ValueError(
            f"`moment_dtype` must be one of {MOMENT_DTYPES}. Received: moment_dtype={value!r}"
        )
    return name


def _store_rows(moments: tuple, dtype: Any, seed: Any, ids: Any) -> tuple:
    """New moments (any shape, rows first) rounded to `dtype` as the slots store them."""
    like = next(m for m in moments if m is not None)
    flat = tuple(None if m is None else as_rows(m) for m in moments)
    bits = None if seed is None else rounding_bits(seed, ids, tf.shape(flat[0])[1])
    stored = _stored_moments(flat, dtype, bits)
    return tuple(None if s is None else tf.reshape(s, tf.shape(like)) for s in stored)


@keras.saving.register_keras_serializable(package="recsys")
class SparseAdam(RowSparseUpdates, _BaseAdam):
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

    Lean state (`moment_dtype="bfloat16"` or `"float16"`): the moments of float32
    variables are stored in 16 bits, halving the optimizer's memory (a 10M x 128
    table: 9.5 GiB with its slots instead of 14.3 GiB). Arithmetic stays in float32:
    a step widens the stored moments of its rows, computes the new moments and the
    update in float32 (the update uses the new moments before rounding), then stores
    the moments rounded to 16 bits. Dense gradients do the same for the whole
    variable; variables of other dtypes keep full moments. The row-sparse guarantees
    hold unchanged. `stochastic_rounding=True` (the default) rounds up or down with
    probability proportional to closeness, from a hash of (step, variable, row,
    column), so results are deterministic, a restored checkpoint continues bit for
    bit and both code paths round alike (see `recsys.optimizers.rounding`). It
    matters: with `beta_2=0.999`, `v` moves by 0.1% per step, less than half a
    bfloat16 step (0.39%), so rounding to nearest freezes `v` unless a gradient is
    about 3x its running value.

    bfloat16 is the lean choice (`conf/optimizer/sparse_adam_lean.yaml`): it has
    float32's exponent range, so nothing underflows that float32 would keep; on
    ML-1M rating prediction it matched full SparseAdam (test RMSE 0.83948 against
    0.83947). float16 has 3 more mantissa bits but a narrow range: a squared
    gradient under 6e-8 (gradients under 2.4e-4, common for embedding rows of a mean
    loss over a large batch) is zero in float16, and a row with `m` but no `v` steps
    up to `1 / sqrt(1 - beta_2)` (32x) too far (ML-1M: RMSE 1.53). float16 slots
    therefore keep `sqrt(v)` (and `sqrt(vhat)`), which has the gradient's own range,
    as `m` does; gradients under about 1e-6 still lose precision in float16's
    subnormals.

    `weight_decay` (decoupled, as in `tf_keras.optimizers.Adam`) decays only the rows
    present in a sparse gradient; for dense gradients it decays the whole variable,
    as Adam does. `use_ema=True` is refused: an exponential moving average of the
    weights rewrites every row at every step, which defeats sparse updates.
    Learning-rate schedules, `clipnorm`, `clipvalue`, `global_clipnorm`, mixed
    precision (`tf_keras.mixed_precision.LossScaleOptimizer`) and checkpointing of the
    slots work as for Adam. A checkpoint restores into an optimizer with the same
    `moment_dtype` (the slots' dtype is part of the checkpoint). Slots are created on
    their variable's device (no copy of a parameter server's shard on the
    coordinator).

    Asynchronous training (`sparse_update="add"`): with several workers updating the
    same variables without synchronizing (ParameterServerStrategy with more than one
    worker), a step reads its rows, computes, and writes them back; with the default
    `sparse_update="assign"` a write replaces the rows, so an update another worker
    made to the same row in between is lost. `"add"` writes the change instead
    (new rows minus the rows read, with `scatter_add`, which holds the variable's
    lock), so every worker's update lands; each is computed from the rows its step
    read, as in any asynchronous SGD. In one process the result equals `"assign"`
    up to float rounding (the variable is `old + (new - old)`). Needs float32
    moments (`moment_dtype="float32"`).

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
    >>> lean = SparseAdam(learning_rate=1e-3, moment_dtype="bfloat16")  # half the state

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
        moment_dtype: How the moments of float32 variables are stored: "float32"
            (default; exactly Adam's state), "bfloat16" (the lean choice) or
            "float16" (`v` kept as its square root; see above). A `tf.DType` is
            accepted too.
        stochastic_rounding: With a 16-bit `moment_dtype`, round the stored moments
            stochastically (default) rather than to nearest. Ignored for float32.
        sparse_update: How sparse updates write their rows: `"assign"` (default; the
            exact path) or `"add"` (the change, with `scatter_add`: no concurrent
            worker's update to the same row is lost; see above).
        **kwargs: Other base optimizer arguments (`is_legacy_optimizer`, `mesh`).

    Raises:
        ValueError: An argument is out of range, `use_ema=True`, a 16-bit
            `moment_dtype` with a DTensor `mesh` or with `sparse_update="add"`.
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
        moment_dtype: Any = "float32",
        stochastic_rounding: bool = True,
        sparse_update: str = "assign",
        **kwargs: Any,
    ) -> None:
        learning_rate = check_learning_rate(learning_rate)
        beta_1 = _check_unit_interval("beta_1", beta_1)
        beta_2 = _check_unit_interval("beta_2", beta_2)
        if isinstance(epsilon, bool) or not isinstance(epsilon, numbers.Real) or epsilon < 0:
            raise ValueError(f"`epsilon` must be a float >= 0. Received: epsilon={epsilon!r}")
        weight_decay = check_weight_decay(weight_decay)
        refuse_ema(use_ema, "SparseAdam")
        moment_dtype = _moment_dtype_name(moment_dtype)
        stochastic_rounding = check_bool("stochastic_rounding", stochastic_rounding)
        if sparse_update not in SPARSE_UPDATES:
            raise ValueError(
                f"`sparse_update` must be one of {SPARSE_UPDATES}. "
                f"Received: sparse_update={sparse_update!r}"
            )
        if sparse_update == "add" and moment_dtype != "float32":
            raise ValueError(
                "`sparse_update='add'` needs float32 moments: a change rounded to 16 bits "
                f"would drift. Received: moment_dtype={moment_dtype!r}; use "
                "moment_dtype='float32' or sparse_update='assign'."
            )
        if moment_dtype != "float32" and kwargs.get("mesh") is not None:
            raise ValueError(
                "A 16-bit `moment_dtype` is not supported with a DTensor `mesh`. "
                f"Received: moment_dtype={moment_dtype!r} with a mesh; use "
                "moment_dtype='float32'."
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
        self.moment_dtype = moment_dtype
        self.stochastic_rounding = stochastic_rounding
        self.sparse_update = sparse_update
        self._remember_jit_compile(jit_compile)

    # --- slots -----------------------------------------------------------------------

    def _lean_dtype_for(self, model_variable: Any) -> Any | None:
        """The 16-bit dtype of `model_variable`'s moments, or None for full moments."""
        if self.moment_dtype == "float32":
            return None
        true_dtype = getattr(model_variable, "true_dtype", model_variable.dtype)
        return tf.as_dtype(self.moment_dtype) if true_dtype == tf.float32 else None

    def add_variable_from_reference(
        self, model_variable: Any, variable_name: str, shape: Any = None, initial_value: Any = None
    ) -> Any:
        lean = None
        if variable_name in _MOMENT_SLOTS and shape is None and initial_value is None:
            lean = self._lean_dtype_for(model_variable)
        if lean is None:
            return super().add_variable_from_reference(
                model_variable, variable_name, shape=shape, initial_value=initial_value
            )
        with tf.device(model_variable.device):
            return self._add_lean_slot(model_variable, variable_name, lean)

    def _add_lean_slot(self, model_variable: Any, variable_name: str, dtype: Any) -> Any:
        # tf-keras's add_variable_from_reference gives every slot its variable's
        # dtype. This is its body (tf-keras 2.21, optimizer.py) with the dtype chosen:
        # placed with the variable under a tf.distribute strategy, and the shards of a
        # sharded variable collected into one ShardedVariable for checkpoints.
        from tf_keras.src.optimizers.optimizer import _ShardedVariableBuilder

        strategy = tf.distribute.get_strategy()
        with strategy.extended.colocate_vars_with(model_variable):
            slot = tf.Variable(
                initial_value=tf.zeros(model_variable.shape, dtype=dtype),
                name=f"{variable_name}/{model_variable._shared_name}",
                dtype=dtype,
                trainable=False,
            )
        if hasattr(model_variable, "_sharded_container"):
            sharded = model_variable._sharded_container()
            builder = self._sharded_variable_builders.setdefault(
                (sharded._unique_id, variable_name),
                _ShardedVariableBuilder(len(sharded.variables)),
            )
            builder.add_shard(slot)
            if builder.has_all_shards():
                self._variables.append(builder.build())
        else:
            self._variables.append(slot)
        return slot

    def _row_targets(self, variable: Any) -> tuple:
        """The variable and its slots (var, m, v, vhat), vhat None unless AMSGrad."""
        slot = self._index_dict[self._var_key(variable)]
        vhat = self._velocity_hats[slot] if self.amsgrad else None
        return variable, self._momentums[slot], self._velocities[slot], vhat

    def _moment_storage(self, variable: Any, targets: tuple) -> tuple:
        """(16-bit dtype of the slots or None, rounding seed or None) for `variable`."""
        slot_dtype = tf.as_dtype(targets[1].dtype)
        if slot_dtype == tf.as_dtype(variable.dtype):
            return None, None
        if not self.stochastic_rounding:
            return slot_dtype, None
        stream = self._index_dict[self._var_key(variable)]
        return slot_dtype, step_seed(self.iterations, stream)

    # --- updates ---------------------------------------------------------------------

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
        targets = self._row_targets(variable)
        lean, seed = self._moment_storage(variable, targets)
        if lean is None:
            super().update_step(gradient, variable)
        else:
            self._dense_lean_update_step(gradient, targets, lean, seed)

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

    def _fused_sparse_update_step(self, gradient: Any, variable: Any, decay: Any | None) -> None:
        inputs = kernel_inputs(gradient, variable)
        if inputs is None:
            self._sparse_update_step(sum_duplicates(gradient), variable, decay)
            return
        targets = self._row_targets(variable)
        lean, seed = self._moment_storage(variable, targets)
        dtype = variable.dtype
        alpha, epsilon = self._bias_corrected_step(dtype)
        new_rows = _lazy_adam_rows(
            inputs.ids,
            inputs.n_unique,
            inputs.positions,
            inputs.values,
            *(None if t is None else t.handle for t in targets),
            alpha,
            tf.cast(epsilon, dtype),
            tf.constant(1 - self.beta_1, dtype),
            tf.constant(1 - self.beta_2, dtype),
            decay,
            lean,
            seed,
            self.sparse_update == "add",
        )
        if self.sparse_update == "add":
            # Only the distinct ids: adding a padding copy's change again would count twice.
            n = inputs.n_unique
            changes = tuple(None if r is None else r[:n] for r in new_rows)
            _scatter_add_rows(targets, unflatten_rows(changes, inputs.row_shape), inputs.ids[:n])
            return
        scatter_rows(targets, unflatten_rows(new_rows, inputs.row_shape), inputs.ids)

    def _sparse_update_step(self, gradient: Any, variable: Any, decay: Any | None) -> None:
        # Plain TensorFlow ops on duplicate-free indices (`_deduplicate_sparse_grad`).
        # The rows are gathered, updated and written back with `scatter_update`: on
        # CPU, ResourceScatterSub costs about twice a gather plus a ResourceScatterUpdate.
        alpha, epsilon_hat = self._bias_corrected_step(variable.dtype)
        targets = self._row_targets(variable)
        lean, seed = self._moment_storage(variable, targets)
        indices = gradient.indices
        rows = [None if t is None else tf.gather(t, indices) for t in targets]
        if lean is not None:
            rows = [rows[0], *_widened_moments(rows[1:], variable.dtype, lean)]
        new_rows = _adam_rows(
            gradient.values,
            *rows,
            alpha,
            epsilon_hat,
            1 - self.beta_1,
            1 - self.beta_2,
            decay,
        )
        if lean is not None:
            new_rows = (new_rows[0], *_store_rows(new_rows[1:], lean, seed, indices))
        if self.sparse_update == "add":
            _scatter_add_rows(targets, _changes(new_rows, rows), indices)
            return
        scatter_rows(targets, new_rows, indices)

    def _dense_lean_update_step(self, gradient: Any, targets: tuple, lean: Any, seed: Any) -> None:
        # Adam's dense update with the moments widened to the variable's dtype and
        # stored back rounded; every row is "touched", so the row ids are all rows.
        variable = targets[0]
        dtype = variable.dtype
        alpha, epsilon_hat = self._bias_corrected_step(dtype)
        moments = _widened_moments(list(targets[1:]), dtype, lean)
        new = _adam_rows(
            gradient,
            tf.convert_to_tensor(variable),
            *moments,
            alpha,
            epsilon_hat,
            1 - self.beta_1,
            1 - self.beta_2,
            None,
        )
        rows = 1 if variable.shape.rank == 0 else tf.shape(variable)[0]
        stored = _store_rows(new[1:], lean, seed, tf.range(rows))
        variable.assign(new[0])
        for slot, value in zip(targets[1:], stored, strict=True):
            if slot is not None:
                slot.assign(value)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        # tf-keras's Adam leaves `adaptive_epsilon` out of its config.
        config["adaptive_epsilon"] = self.adaptive_epsilon
        # The base class records False on machines without a GPU; keep the request.
        config["jit_compile"] = self._jit_compile_requested
        config["moment_dtype"] = self.moment_dtype
        config["stochastic_rounding"] = self.stochastic_rounding
        config["sparse_update"] = self.sparse_update
        return config
