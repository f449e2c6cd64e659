"""Rating prediction with an item-based autoencoder (I-AutoRec), trained row-sparse."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_recommenders as tfrs

from recsys._tf import keras, no_autograph, ragged_row_ids, tf
from recsys.checks import check_choice, check_nonnegative, check_positive_int
from recsys.data.contract import Histories, InteractionData, positions
from recsys.data.vocabulary import vocabulary
from recsys.layers import Embedding
from recsys.models._common import export_ratings, rating_metrics, rating_task, training_ratings
from recsys.models.features import FeatureStore

__all__ = ["AutoRecModel"]

ACTIVATIONS = ("sigmoid", "tanh", "relu", "linear")


class AutoRecModel(tfrs.Model):
    """Predicts ratings with I-AutoRec (Sedhain et al., WWW 2015): item codes from raters.

    Each item is described by its training ratings (the users who rated it and how).
    The encoder turns them into a code, ``h_i = activation(sum_u r_ui * V_u + b)``; the
    rating of user ``u`` is decoded as ``W_u . h_i + c_u``. ``V`` and ``W`` are user
    tables (one row per user), so a training step reads and updates the rows of the
    users in its batch's bags only: the gradients of both tables stay row-sparse
    (`tf.IndexedSlices`) and SparseAdam updates the rows it touched.

    Training goes item by item, as the paper does: a step takes `items_per_step` items
    and reconstructs every training rating of each (the model's own
    :meth:`training_batches`, which :class:`recsys.training.Trainer` uses; each bag is
    encoded once per epoch). The step lays its ratings out as a dense
    `[items, distinct users]` matrix of the users it touches, so encoding and decoding
    are matrix products. The loss is the mean squared error over the batch's ratings
    plus the paper's L2 penalty ``l2 / 2 * (|V|^2 + |W|^2)``, scaled like the error (by
    one over the number of training ratings) and applied to the rows the step reads,
    once each (rows it does not read are left alone). Validation and test batches are the
    data's (user, item, rating) pairs. A user or an item without training ratings is
    predicted the training mean; predictions are clipped to the training ratings' range.
    Under synchronous replicas (`MirroredStrategy`, `distribute=multi_worker`) each
    replica divides its squared errors by the whole step's number of ratings, so the
    summed gradients are those of one process taking the same items; each replica's
    penalty is divided by the number of replicas (as `tf.nn.scale_regularization_loss`
    does): exact for a user row every replica reads (at 256 items a step, the rows of
    most users with a few dozen ratings or more), half the penalty for a row only one
    of two replicas reads. Under `ParameterServerStrategy` each worker's step is a
    one-process step (a worker with several GPUs has replicas of its own, handled as
    above).

    Example:

    >>> model = AutoRecModel(data, hidden_units=500, l2=300.0)  # data: e.g. MovieLens
    >>> model.compile(optimizer=recsys.optimizers.SparseAdam(0.002))
    >>> model.fit(model.training_batches(), epochs=100)  # batches of 256 items
    >>> model.evaluate_metrics(data)  # {'test/rmse': ..., 'test/mae': ...}
    >>> model.export("/tmp/autorec")  # serving_default: (user_id, item_id) -> rating

    Args:
        data: What the model reads (:class:`recsys.data.InteractionData`): users,
            the item catalogue and the training interactions with their ratings.
        hidden_units: Width of the item code (the paper's 500).
        activation: The encoder's activation: ``"sigmoid"`` (the paper's), ``"tanh"``,
            ``"relu"`` or ``"linear"``.
        l2: The paper's lambda: the L2 penalty on both user tables (see above).
        bias_l2: The same penalty on the user biases ``c``.
        init_stddev: Standard deviation of the tables' normal initializer.
        items_per_step: Items whose ratings one training step reconstructs.
        seed: Seed of the training order of items (a new order each epoch).
        name: Model name.

    Raises:
        ValueError: An argument is out of range, or the training split has no ratings.
    """

    def __init__(
        self,
        data: InteractionData,
        hidden_units: int = 500,
        activation: str = "sigmoid",
        l2: float = 300.0,
        bias_l2: float = 0.0,
        init_stddev: float = 0.03,
        items_per_step: int = 256,
        seed: int = 0,
        name: str = "autorec",
    ) -> None:
        super().__init__(name=name)
        check_positive_int("hidden_units", hidden_units)
        check_choice("activation", activation, ACTIVATIONS)
        check_nonnegative("l2", l2)
        check_nonnegative("bias_l2", bias_l2)
        check_nonnegative("init_stddev", init_stddev)
        check_positive_int("items_per_step", items_per_step)
        train, ratings, self.global_mean, self.min_rating, self.max_rating = training_ratings(
            data, "AutoRecModel"
        )
        ratings = ratings.astype(np.float32)
        self.user_ids = vocabulary(data.user_vocabulary)
        catalogue = data.catalogue()
        self.item_ids = catalogue.ids
        self.items_per_step = int(items_per_step)
        self.seed = int(seed)
        # Rows of the user tables are user positions + 1: row 0 is for unknown users.
        user_rows = positions(self.user_ids, train.users)[train.user_index]
        item_rows = catalogue.rows(train.items)[train.item_index]
        known = (user_rows >= 0) & (item_rows >= 0)
        bags = Histories.group(
            self.item_ids, np.where(known, item_rows, -1), user_rows + 1, ratings
        )
        self._rated_items = np.flatnonzero(np.diff(bags.offsets) > 0)
        self.item_store = FeatureStore(
            self.item_ids,
            {
                "raters": tf.RaggedTensor.from_row_splits(bags.members, bags.offsets),
                "ratings": tf.RaggedTensor.from_row_splits(bags.ratings, bags.offsets),
            },
            name="item_ratings",
        )
        # Store rows and table rows: 0 for unknown ids, then 1 + position.
        known_users = np.zeros(len(self.user_ids) + 1, bool)
        known_users[user_rows[known] + 1] = True
        self._known_users = tf.constant(known_users)
        self._known_items = tf.constant(np.concatenate([[False], np.diff(bags.offsets) > 0]))
        self._train_ratings = len(bags.members)
        self.l2 = float(l2)
        self.bias_l2 = float(bias_l2)
        # A config, not one initializer object: tf-keras would give both tables the
        # same values from one unseeded instance.
        initializer = {"class_name": "RandomNormal", "config": {"stddev": float(init_stddev)}}
        rows = len(self.user_ids) + 1
        # No table-wide regularizer: each step penalizes the rows it reads (`_penalty`).
        self.encoder = Embedding(
            rows, hidden_units, embeddings_initializer=initializer, name="encoder"
        )
        self.decoder = Embedding(
            rows, hidden_units, embeddings_initializer=initializer, name="decoder"
        )
        self.user_bias = Embedding(rows, 1, embeddings_initializer="zeros", name="user_bias")
        self.encoder_bias = self.add_weight(
            name="encoder_bias", shape=[hidden_units], initializer="zeros", trainable=True
        )
        self.activation = keras.activations.get(activation)
        self._user_lookup = keras.layers.StringLookup(
            vocabulary=np.asarray(self.user_ids), num_oov_indices=1, mask_token=None
        )
        self.task = rating_task()
        self._config = {
            "hidden_units": hidden_units,
            "activation": activation,
            "l2": l2,
            "bias_l2": bias_l2,
            "init_stddev": init_stddev,
            "items_per_step": items_per_step,
            "seed": seed,
        }

    # ------------------------------------------------------------------ parts
    def training_batches(self) -> tf.data.Dataset:
        """The training batches: `items_per_step` item ids at a time, a new order each epoch.

        Only items with training ratings are listed; the last batch may be smaller. The
        order is a function of `seed`, TensorFlow's global seed (which `recsys.train`
        sets from the config's `seed`) and the epoch, so a resumed run sees the orders
        an uninterrupted one does. :class:`recsys.training.Trainer` trains on these
        batches instead of the data's training pairs.
        """
        ids = np.asarray(self.item_ids, dtype=object)[self._rated_items].astype(str)
        batches = -(-len(ids) // self.items_per_step)
        dataset = tf.data.Dataset.from_tensor_slices({"item_id": tf.constant(ids)})
        dataset = dataset.shuffle(len(ids), seed=self.seed, reshuffle_each_iteration=True)
        dataset = dataset.batch(self.items_per_step)
        return dataset.apply(tf.data.experimental.assert_cardinality(batches))

    def _penalty(self, rows: Any, l2: float) -> Any:
        """The L2 penalty of user-table rows read by a training step.

        The paper penalizes whole tables, ``l2 / 2 * |W|^2`` next to the sum of squared
        errors. Here the loss is the batch's mean squared error, and each step
        penalizes the rows it reads, once each: ``l2 / (2 * n_train) * sum |W_u|^2``
        over the step's distinct users (``n_train``: training ratings). When a step
        touches every user this is the paper's objective scaled by ``1 / n_train``;
        rows it does not touch are left alone, so the gradient stays row-sparse.
        """
        return l2 / (2.0 * self._train_ratings) * tf.reduce_sum(tf.square(rows))

    def _encode(self, item_index: Any, dense: bool = False) -> tuple[Any, ...]:
        """Codes of the items at store rows `item_index`, and what decoding them needs.

        The items' ratings form an `[items, distinct users]` matrix (the users they
        touch, not all users), so encoding is one matrix product. Training (`dense`,
        `items_per_step` items) lays it out dense: with the decoder's product, a step
        costs what its items' raters make it cost. Predictions (any number of items)
        keep it sparse.

        Returns:
            ``(codes, coords, ratings, distinct, encoder_rows)``: codes
            `[n, hidden_units]`; the items' training ratings, flat (the bags one after
            the other), with ``coords`` `[ratings, 2]` (item in `item_index`, position
            in ``distinct``) for each; ``distinct`` the users who rated them (table
            rows) and ``encoder_rows`` their encoder rows.
        """
        stored = self.item_store.gather(item_index)
        raters, ratings = stored["raters"], stored["ratings"]
        distinct, rating_user = tf.unique(raters.values)
        coords = tf.stack(
            [ragged_row_ids(raters), tf.cast(rating_user, raters.values.dtype)], axis=1
        )
        shape = tf.stack(
            [tf.shape(item_index, out_type=coords.dtype)[0], tf.size(distinct, coords.dtype)]
        )
        encoder_rows = self.encoder(distinct)
        if dense:  # a dense product and its gradient: 2x faster than the sparse ones
            matrix = tf.scatter_nd(coords, ratings.values, shape)
            pooled = _product(matrix, encoder_rows)
        else:  # memory for the ratings only, however many items and users
            matrix = tf.SparseTensor(coords, ratings.values, shape)
            pooled = tf.sparse.sparse_dense_matmul(matrix, encoder_rows)
        codes = self.activation(pooled + self.encoder_bias)
        return codes, coords, ratings.values, distinct, encoder_rows

    def item_codes(self, item_index: Any) -> Any:
        """`[n, hidden_units]` codes of the items at store rows `item_index`.

        Store rows: 1 + catalogue position, 0 for unknown items (an empty bag).
        """
        return self._encode(item_index)[0]

    def reconstruct(self, item_ids: Any) -> tuple[Any, Any, Any]:
        """Every training rating of the items `item_ids`, decoded.

        Returns:
            ``(predictions, ratings, penalty)``: predictions and ratings flat, `[n]`
            (the items' bags one after the other), and the L2 penalty of the user
            rows read (see :meth:`_penalty`).
        """
        index = self.item_store.index(tf.reshape(item_ids, [-1]))
        codes, coords, ratings, distinct, encoder_rows = self._encode(index, dense=True)
        decoded = self.decoder(distinct)
        bias = self.user_bias(distinct)
        scores = _product(codes, decoded, transpose_b=True) + tf.transpose(bias)
        prediction = tf.gather_nd(scores, coords)
        penalty = self._penalty(encoder_rows, self.l2) + self._penalty(decoded, self.l2)
        if self.bias_l2:
            penalty += self._penalty(bias, self.bias_l2)
        return prediction, ratings, penalty

    @no_autograph
    def call(self, features: dict[str, Any], training: bool | None = None) -> Any:
        """Predicted ratings of `(user_id, item_id)` pairs, `[batch]`, unclipped.

        A batch of items alone (a training batch, see :meth:`training_batches`) gives its
        reconstructed ratings instead (:meth:`reconstruct`).
        """
        if "user_id" not in features:
            return self.reconstruct(features["item_id"])[0]
        user_rows = self._user_lookup(tf.reshape(features["user_id"], [-1]))
        index = self.item_store.index(tf.reshape(features["item_id"], [-1]))
        distinct, which = tf.unique(index)
        codes = tf.gather(self.item_codes(distinct), which)
        prediction = tf.reduce_sum(codes * self.decoder(user_rows), axis=-1)
        prediction += tf.squeeze(self.user_bias(user_rows), -1)
        known = tf.gather(self._known_users, user_rows) & tf.gather(self._known_items, index)
        return tf.where(known, prediction, tf.constant(self.global_mean, prediction.dtype))

    def predict_ratings(self, user_ids: Any, item_ids: Any) -> Any:
        """Predicted ratings clipped to the training range."""
        prediction = self({"user_id": user_ids, "item_id": item_ids}, training=False)
        return tf.clip_by_value(prediction, self.min_rating, self.max_rating)

    def compute_loss(self, features: dict[str, Any], training: bool = False) -> Any:
        if "rating" in features:  # (user, item, rating) pairs: validation
            prediction = self(features, training=training)
            labels = tf.cast(tf.reshape(features["rating"], [-1, 1]), prediction.dtype)
            losses = self.task(labels=labels, predictions=prediction[:, None])
            return tf.nn.compute_average_loss(losses)
        # A batch of items: reconstruct each item's training ratings from its code.
        prediction, ratings, penalty = self.reconstruct(features["item_id"])
        losses = self.task(labels=tf.reshape(ratings, [-1, 1]), predictions=prediction[:, None])
        count = tf.cast(tf.size(losses), losses.dtype)
        if tf.distribute.get_strategy().num_replicas_in_sync > 1:
            # Synchronous replicas (their gradients are summed): each divides its
            # squared errors by the number of ratings of the whole step (replicas' items
            # differ in ratings); the penalty is scaled as regularization losses are
            # (see the class docstring).
            count = tf.distribute.get_replica_context().all_reduce(
                tf.distribute.ReduceOp.SUM, count
            )
        mean = tf.math.divide_no_nan(tf.reduce_sum(losses), count)
        return mean + tf.nn.scale_regularization_loss(penalty)

    # ---------------------------------------------------------- evaluation
    def evaluate_metrics(self, data: InteractionData, split: str = "test") -> dict[str, float]:
        """RMSE and MAE of clipped predictions on `split`: `{split}/rmse`, `{split}/mae`."""
        return rating_metrics(self.predict_ratings, data, split)

    def export(self, path: str, data: Any = None) -> Path:
        """Writes a SavedModel under `path/<version>`: ``(user_id, item_id)`` strings `[None]` -> ``{"rating"}``.

        Args:
            path: The export folder (TensorFlow Serving's layout: ``path/1/``).
            data: The training data (unused: the items' ratings are in the model).

        Returns:
            The SavedModel's folder.
        """
        return export_ratings(self, path)

    def get_config(self) -> dict[str, Any]:
        return dict(self._config)


def _product(a: Any, b: Any, transpose_b: bool = False) -> Any:
    """``tf.matmul(a, b)``, and a zero product when an operand is empty under replicas.

    With several synchronous replicas, the last (short) batch of an epoch can leave a
    replica no items; oneDNN's fused CPU product aborts the process on an empty
    operand, so there the product is only run when both operands have elements.
    """
    if tf.distribute.get_strategy().num_replicas_in_sync == 1:
        return tf.matmul(a, b, transpose_b=transpose_b)
    rows = tf.shape(a)[0]
    columns = tf.shape(b)[0] if transpose_b else tf.shape(b)[1]
    return tf.cond(
        tf.logical_and(tf.size(a) > 0, tf.size(b) > 0),
        lambda: tf.matmul(a, b, transpose_b=transpose_b),
        lambda: tf.zeros(tf.stack([rows, columns]), a.dtype),
    )
