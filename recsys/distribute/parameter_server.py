"""What a trainer calls to fit, evaluate and checkpoint a Keras model under ParameterServerStrategy.

Under ``ParameterServerStrategy`` (PSS) the chief only coordinates: each training step
is scheduled on some worker, which reads its batch from its own input pipeline and
updates variables that live on the parameter servers. tf-keras (2.21) ``fit`` then

* takes a dataset *function* (:func:`dataset_creator`) that each worker calls to
  build its own pipeline, which must repeat forever, and ``steps_per_epoch``
  (:func:`steps_per_epoch`), since no one sees the end of the data;
* refuses ``verbose=1`` (use 2 or 0) and callbacks with batch-level hooks
  (``ModelCheckpoint(save_freq=N)``, ``TensorBoard(update_freq=N)``, custom
  ``on_train_batch_end``): checkpoints happen at epoch ends;
* builds the optimizer's slots on first use, from zeros made on the chief, unless
  :func:`build_optimizer_slots` built them first, next to their variables. Build
  them before restoring a checkpoint, or sharded slots are not restored.

Importing this module imports TensorFlow.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Callable, Iterable
from typing import Any

from recsys._tf import keras, tf

__all__ = [
    "build_optimizer_slots",
    "dataset_creator",
    "steps_per_epoch",
    "updates_for_concurrent_workers",
]

log = logging.getLogger(__name__)


def _check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value!r}")
    return int(value)


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Steps that make one epoch: ``ceil(num_examples / batch_size)``.

    Under PSS each step is one batch on one worker, so this many steps, shared by
    all workers, process about one pass over the data (exactly one with one worker
    and a dataset that is repeated after batching).

    Example:
        >>> steps_per_epoch(80_000, 4096)
        20

    Raises:
        ValueError: A count below 1.
    """
    num_examples = _check_positive_int("num_examples", num_examples)
    batch_size = _check_positive_int("batch_size", batch_size)
    return math.ceil(num_examples / batch_size)


def dataset_creator(
    dataset_fn: Callable[[tf.distribute.InputContext], tf.data.Dataset],
    *,
    repeat: bool = True,
    input_options: tf.distribute.InputOptions | None = None,
) -> keras.utils.experimental.DatasetCreator:
    """Wraps a per-worker dataset function for ``fit`` under PSS.

    Each worker calls ``dataset_fn(input_context)`` once to build its own pipeline
    of *batches*. ``input_context.input_pipeline_id`` (0 .. ``num_input_pipelines``
    - 1) tells workers apart: shard files or examples by it so that workers read
    different data, or leave it unused and shuffle with a different seed per worker.
    The returned pipeline is repeated (``repeat=True``) because under PSS an epoch
    is ``steps_per_epoch`` steps, not the end of the data; use ``repeat=False`` for
    ``evaluate`` with ``compile(pss_evaluation_shards=...)``, which needs an
    end. Without a strategy, ``fit`` calls the function once with a default context,
    so the same input works for a single process.

    Example:
        >>> def batches(context):
        ...     ds = tf.data.Dataset.range(100).shard(context.num_input_pipelines, context.input_pipeline_id)
        ...     return ds.map(lambda i: (i, i)).batch(8)
        >>> model.fit(dataset_creator(batches), epochs=2, steps_per_epoch=steps_per_epoch(100, 8), verbose=2)

    Args:
        dataset_fn: ``InputContext -> tf.data.Dataset`` of batches.
        repeat: Repeat the pipeline forever (training).
        input_options: ``tf.distribute.InputOptions`` for the pipelines.

    Returns:
        A ``tf.keras.utils.experimental.DatasetCreator``.

    Raises:
        TypeError: ``dataset_fn`` is not callable.
    """
    if not callable(dataset_fn):
        raise TypeError(
            "`dataset_fn` must be a function InputContext -> tf.data.Dataset. "
            f"Received: dataset_fn={dataset_fn!r}"
        )

    def per_worker(context: tf.distribute.InputContext) -> tf.data.Dataset:
        dataset = dataset_fn(context)
        if not isinstance(dataset, tf.data.Dataset):
            raise TypeError(
                "The dataset function must return a tf.data.Dataset. "
                f"Received: {type(dataset).__name__}"
            )
        return dataset.repeat() if repeat else dataset

    return keras.utils.experimental.DatasetCreator(per_worker, input_options=input_options)


def build_optimizer_slots(
    optimizer: keras.optimizers.Optimizer, variables: Iterable[tf.Variable]
) -> None:
    """Creates the optimizer's slots for ``variables`` now, each on its variable's device.

    tf-keras builds a slot from ``tf.zeros(shape)`` made wherever the call runs: on
    the chief, so under PSS the chief would hold a transient copy of every table
    (a 2M x 64 table: about +745 MiB of chief peak memory measured) before each
    slot shard is sent to its parameter server. Here each slot's zeros are made on
    the device of the variable (shard) it belongs to. Call it inside
    ``strategy.scope()``, after ``compile`` and before restoring a checkpoint: a
    checkpoint restored before the slots exist loses the sharded slots under PSS.
    Harmless without a strategy. Works for any tf-keras (non-legacy) optimizer; an
    optimizer already built is left as it is.

    Example:
        >>> with strategy.scope():
        ...     model.compile(optimizer=SparseAdam(1e-3), loss="mse")
        ...     build_optimizer_slots(model.optimizer, model.trainable_variables)
        >>> checkpoint.restore(path)

    Args:
        optimizer: A tf-keras optimizer (a ``LossScaleOptimizer`` is unwrapped).
        variables: The variables it will train (``model.trainable_variables``).

    Raises:
        TypeError: ``optimizer`` is not a tf-keras (non-legacy) optimizer.
    """
    target = getattr(optimizer, "inner_optimizer", optimizer)
    if not isinstance(target, keras.optimizers.Optimizer) or not hasattr(
        target, "add_variable_from_reference"
    ):
        raise TypeError(
            "`optimizer` must be a tf-keras optimizer (tf_keras.optimizers.*, not legacy). "
            f"Received: optimizer={optimizer!r}"
        )
    variables = list(variables)
    create = target.add_variable_from_reference

    def on_variable_device(
        model_variable: Any, variable_name: str, shape: Any = None, initial_value: Any = None
    ) -> Any:
        with tf.device(model_variable.device):
            return create(model_variable, variable_name, shape=shape, initial_value=initial_value)

    # An instance attribute shadows the method for this one build only (restored below).
    target.add_variable_from_reference = on_variable_device
    try:
        optimizer.build(variables)
    finally:
        del target.add_variable_from_reference


def updates_for_concurrent_workers(optimizer: keras.optimizers.Optimizer, num_workers: int) -> str:
    """Makes an optimizer with ``sparse_update="assign"`` write its changes when workers race.

    With more than one worker, PSS steps run concurrently: a step that gathers a row,
    computes and writes it back with ``scatter_update`` (``SparseAdam``'s exact
    default, ``sparse_update="assign"``) can overwrite another worker's update to the
    same row (measured: 7 of 200 hot-row updates lost with 2 workers). ``"add"`` writes
    the change with ``scatter_add`` instead, so no update is lost. With
    ``num_workers > 1`` an optimizer whose ``sparse_update`` is ``"assign"`` is
    switched to ``"add"`` and one line says so; where ``"add"`` is not possible (16-bit
    moments) a warning says that updates can be lost. Call before the first step.

    Example:
        >>> optimizer = SparseAdam(1e-3)
        >>> updates_for_concurrent_workers(optimizer, num_workers=2)
        'switched'
        >>> optimizer.sparse_update
        'add'

    Args:
        optimizer: The optimizer (a ``LossScaleOptimizer`` is unwrapped); one without
            a ``sparse_update`` setting is left alone.
        num_workers: Workers that run training steps at once (>= 1).

    Returns:
        ``"switched"``, ``"unsafe"`` (left on ``"assign"``, warned) or ``"unchanged"``.

    Raises:
        ValueError: ``num_workers`` < 1.
    """
    num_workers = _check_positive_int("num_workers", num_workers)
    target = getattr(optimizer, "inner_optimizer", optimizer)
    if num_workers == 1 or getattr(target, "sparse_update", None) != "assign":
        return "unchanged"
    name = type(target).__name__
    if getattr(target, "moment_dtype", "float32") != "float32":
        log.warning(
            "%s(sparse_update='assign') with %d workers: concurrent steps can overwrite each "
            "other's updates to a row, and 'add' (which cannot) needs float32 moments "
            "(moment_dtype=%r). Use moment_dtype=float32 to let recsys switch to "
            "sparse_update='add', or train with one worker.",
            name,
            num_workers,
            target.moment_dtype,
        )
        return "unsafe"
    target.sparse_update = "add"
    log.info(
        "%s: sparse_update 'assign' -> 'add' for %d asynchronous workers (writes each "
        "change with scatter_add, so no worker's update to a row is lost).",
        name,
        num_workers,
    )
    return "switched"
