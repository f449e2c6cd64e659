"""Row-wise Adagrad: one accumulator per row, updates only the rows a gradient touches."""

from __future__ import annotations

from typing import Any

from recsys._tf import keras, tf
from recsys.checks import check_nonnegative
from recsys.optimizers._sparse_rows import (
    RowSparseUpdates,
    as_rows,
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

__all__ = ["RowwiseAdagrad"]


def _rowwise_adagrad(
    grad: Any, var_rows: Any, accumulator_rows: Any, lr: Any, epsilon: Any, decay: Any
) -> tuple:
    """New (variable, accumulator) rows: `grad` and `var_rows` `[n, row_size]`, the
    accumulator `[n]`; `decay` (weight decay times learning rate) or None."""
    accumulator_rows = accumulator_rows + tf.reduce_mean(tf.square(grad), axis=1)
    scale = lr / (tf.sqrt(accumulator_rows) + epsilon)
    delta = grad * scale[:, tf.newaxis]
    if decay is not None:
        delta = delta + var_rows * decay
    return var_rows - delta, accumulator_rows


@tf.function(jit_compile=True, autograph=False)
def _rowwise_adagrad_rows(
    ids: Any,
    n_unique: Any,
    positions: Any,
    values: Any,
    var: Any,
    accumulator: Any,
    lr: Any,
    epsilon: Any,
    decay: Any,
) -> tuple:
    """New rows of the variable and its accumulator for the distinct ids, in one XLA kernel.

    The inputs are those of SparseAdam's kernel (`recsys.optimizers._sparse_rows`
    `kernel_inputs`): distinct `ids` padded with copies of `ids[0]`, the gradient
    rows `values` as `[n, row_size]` with their `positions` in `ids`, summed here.
    `var` and `accumulator` are resource handles, only read; the caller scatters the
    returned `[len(ids), row_size]` variable rows and `[len(ids)]` accumulator values.
    """
    dtype = values.dtype
    grad = summed_gradient_rows(ids, n_unique, positions, values)
    var_rows = tf.reshape(read_rows(var, ids, dtype), tf.shape(grad))
    accumulator_rows = read_rows(accumulator, ids, dtype)
    return _rowwise_adagrad(grad, var_rows, accumulator_rows, lr, epsilon, decay)


@keras.saving.register_keras_serializable(package="recsys")
class RowwiseAdagrad(RowSparseUpdates, keras.optimizers.Optimizer):
    """Adagrad with one accumulator per row, and row-sparse updates.

    For the biggest embedding tables: the optimizer state is one float per row (a
    10M x 128 table keeps 40 MB of state instead of Adam's 9.5 GiB), as TorchRec's
    and FBGEMM's row-wise Adagrad (`EXACT_ROWWISE_ADAGRAD`) keep it. Rows are the
    variable's first dimension, whatever its rank; a row's accumulator grows by the
    mean of the row's squared gradient, and the row moves by its gradient times one
    step size:

        accumulator[r] += mean(g[r] ** 2)
        var[r] -= learning_rate * g[r] / (sqrt(accumulator[r]) + epsilon)

    A `tf.IndexedSlices` gradient (an embedding lookup's) updates only the rows in
    `gradient.indices`, after summing duplicate ids; every other row and its
    accumulator stay bit-identical. Adagrad has no decay, so a row absent from a step
    would not move under a dense update either: lazy and dense updates agree exactly.
    Where XLA is available (`jit_compile=True`, the default) a sparse update is one
    fused XLA kernel, on CPU too, compiled for a few padded lengths (as SparseAdam's);
    `jit_compile=False` runs plain TensorFlow ops.

    Dense gradients get the same row-wise rule, applied to every row: the rows of a
    `Dense` kernel `[inputs, units]` are its inputs, each with one accumulator. A
    1-D variable's rows are single elements, so for biases (and any 1-D variable)
    this is element-wise Adagrad, as in the legacy `tf.keras.optimizers.legacy.Adagrad`
    (`sqrt(accumulator) + epsilon`; the current `tf_keras.optimizers.Adagrad` uses
    `sqrt(accumulator + epsilon)`). A scalar variable is one row of one element. Rows
    whose gradient is zero do not move (unless weight decay applies). If the dense
    layers of a model should use another optimizer, train them with it separately.

    `weight_decay` is decoupled (`var -= var * weight_decay * learning_rate`), applied
    to the rows a sparse gradient touches and to every row of a dense one.
    `use_ema=True` is refused (it would rewrite every row each step). Learning-rate
    schedules, clipping, `LossScaleOptimizer`, checkpoints (the accumulators are
    sharded with their variable under `ParameterServerStrategy`) and
    `MirroredStrategy` work as for tf-keras optimizers; accumulators are created on
    their variable's device.

    Example:

    >>> import recsys
    >>> from recsys.layers import Embedding
    >>> from recsys.optimizers import RowwiseAdagrad
    >>> model = tf.keras.Sequential([Embedding(10_000_000, 128), tf.keras.layers.Dense(1)])
    >>> model.compile(optimizer=RowwiseAdagrad(learning_rate=0.1), loss="mse")

    Args:
        learning_rate: A float, a `LearningRateSchedule`, or a callable returning the
            learning rate. Defaults to 0.001 (as tf-keras's Adagrad; embedding tables
            usually want 0.01-0.1).
        initial_accumulator_value: Starting value of every accumulator, >= 0
            (tf-keras's default 0.1; FBGEMM starts at 0).
        epsilon: Added to the square root of the accumulator, >= 0.
        weight_decay: Decoupled weight decay rate, or None.
        clipnorm: Clip each gradient to this norm.
        clipvalue: Clip each gradient element to [-clipvalue, clipvalue].
        global_clipnorm: Clip all gradients together to this global norm.
        use_ema: Must be False (see above).
        ema_momentum: Accepted for config compatibility; unused.
        ema_overwrite_frequency: Accepted for config compatibility; unused.
        jit_compile: Run sparse updates as one fused XLA kernel where XLA is
            available (CPU included); False keeps plain TensorFlow ops. Dense updates
            follow tf-keras (XLA only with a GPU).
        name: Name of the optimizer.
        **kwargs: Other base optimizer arguments (`is_legacy_optimizer`, `mesh`).

    Raises:
        ValueError: An argument is out of range, or `use_ema=True`; at `build`, a
            variable whose rank is unknown.
    """

    def __init__(
        self,
        learning_rate: Any = 0.001,
        initial_accumulator_value: float = 0.1,
        epsilon: float = 1e-7,
        weight_decay: float | None = None,
        clipnorm: float | None = None,
        clipvalue: float | None = None,
        global_clipnorm: float | None = None,
        use_ema: bool = False,
        ema_momentum: float = 0.99,
        ema_overwrite_frequency: int | None = None,
        jit_compile: bool = True,
        name: str = "RowwiseAdagrad",
        **kwargs: Any,
    ) -> None:
        learning_rate = check_learning_rate(learning_rate)
        initial_accumulator_value = check_nonnegative(
            "initial_accumulator_value", initial_accumulator_value
        )
        epsilon = check_nonnegative("epsilon", epsilon)
        weight_decay = check_weight_decay(weight_decay)
        refuse_ema(use_ema, "RowwiseAdagrad")
        super().__init__(
            weight_decay=weight_decay,
            clipnorm=clipnorm,
            clipvalue=clipvalue,
            global_clipnorm=global_clipnorm,
            use_ema=False,
            ema_momentum=ema_momentum,
            ema_overwrite_frequency=ema_overwrite_frequency,
            jit_compile=jit_compile,
            name=name,
            **kwargs,
        )
        self._learning_rate = self._build_learning_rate(learning_rate)
        self.initial_accumulator_value = initial_accumulator_value
        self.epsilon = epsilon
        self._remember_jit_compile(jit_compile)

    def build(self, var_list: Any) -> None:
        """Creates one accumulator per row of each variable (a scalar for a scalar)."""
        super().build(var_list)
        if getattr(self, "_built", False):
            return
        self._built = True
        self._accumulators = []
        for var in var_list:
            if var.shape.rank is None:
                raise ValueError(
                    "RowwiseAdagrad needs variables of known rank (rows are the first "
                    f"dimension). Received: a variable {var.name!r} of shape {var.shape}."
                )
            shape = var.shape[:1]
            dtype = getattr(var, "true_dtype", var.dtype)
            with tf.device(var.device):
                initial = tf.fill(shape, tf.constant(self.initial_accumulator_value, dtype))
            self._accumulators.append(
                self.add_variable_from_reference(
                    var, "accumulator", shape=shape, initial_value=initial
                )
            )

    def _accumulator(self, variable: Any) -> Any:
        return self._accumulators[self._index_dict[self._var_key(variable)]]

    def update_step(self, gradient: Any, variable: Any) -> None:
        """Updates `variable` (and its accumulator) from `gradient`."""
        decay = self._weight_decay_rate(variable)
        if isinstance(gradient, tf.IndexedSlices):
            if self.fuses_sparse_updates:
                self._fused_sparse_update_step(gradient, variable, decay)
            else:
                self._sparse_update_step(gradient, variable, decay)
            return
        if variable.shape.num_elements() == 0:
            return  # no element, nothing to learn (and a mean over none is NaN)
        accumulator = self._accumulator(variable)
        lr = tf.cast(self.learning_rate, variable.dtype)
        grad = as_rows(gradient)
        var_rows = as_rows(tf.convert_to_tensor(variable))
        accumulator_rows = tf.reshape(accumulator, [-1])
        new_var, new_accumulator = _rowwise_adagrad(
            grad, var_rows, accumulator_rows, lr, self.epsilon, decay
        )
        accumulator.assign(tf.reshape(new_accumulator, tf.shape(accumulator)))
        variable.assign(tf.reshape(new_var, tf.shape(variable)))

    def _fused_sparse_update_step(self, gradient: Any, variable: Any, decay: Any | None) -> None:
        inputs = kernel_inputs(gradient, variable)
        if inputs is None:
            self._sparse_update_step(sum_duplicates(gradient), variable, decay)
            return
        accumulator = self._accumulator(variable)
        dtype = variable.dtype
        new_rows = _rowwise_adagrad_rows(
            inputs.ids,
            inputs.n_unique,
            inputs.positions,
            inputs.values,
            variable.handle,
            accumulator.handle,
            tf.cast(self.learning_rate, dtype),
            tf.constant(self.epsilon, dtype),
            decay,
        )
        new_var = unflatten_rows(new_rows[:1], inputs.row_shape)[0]
        scatter_rows((variable, accumulator), (new_var, new_rows[1]), inputs.ids)

    def _sparse_update_step(self, gradient: Any, variable: Any, decay: Any | None) -> None:
        # Plain TensorFlow ops on duplicate-free indices (`_deduplicate_sparse_grad`).
        if variable.shape[1:].num_elements() == 0:
            return  # rows without elements: nothing to update
        accumulator = self._accumulator(variable)
        indices = gradient.indices
        var_rows = tf.gather(variable, indices)
        new_var, new_accumulator = _rowwise_adagrad(
            as_rows(gradient.values),
            as_rows(var_rows),
            tf.gather(accumulator, indices),
            tf.cast(self.learning_rate, variable.dtype),
            self.epsilon,
            decay,
        )
        new_var = tf.reshape(new_var, tf.shape(var_rows))
        scatter_rows((variable, accumulator), (new_var, new_accumulator), indices)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "learning_rate": self._serialize_hyperparameter(self._learning_rate),
                "initial_accumulator_value": self.initial_accumulator_value,
                "epsilon": self.epsilon,
                # The base class records False on machines without a GPU.
                "jit_compile": self._jit_compile_requested,
            }
        )
        return config
