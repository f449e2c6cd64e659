"""Rating prediction: biased matrix factorization with implicit history (SVD++-like)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_recommenders as tfrs

from recsys._tf import keras, no_autograph, tf
from recsys.checks import check_choice, check_nonnegative, check_positive_int
from recsys.data.contract import Histories, InteractionData, positions
from recsys.data.vocabulary import vocabulary
from recsys.models._common import export_ratings, rating_metrics, rating_task, training_ratings
from recsys.models.features import FeatureStore, PairIndex
from recsys.towers import FeatureEmbedding, Tower

__all__ = ["RankingModel"]


class RankingModel(tfrs.Model):
    """Predicts ratings: global mean + user bias + item bias + user . item (+ MLP).

    The user vector is the user-id embedding plus, with `use_history`, the pooled
    embeddings of the items the user rated in training (as SVD++ does); the item vector
    is the item-id embedding. With `hidden_units`, an MLP over both vectors adds a
    non-linear term. L2 penalties apply to the looked-up rows only (so the tables'
    gradients stay row-sparse). The loss is TFRS's `Ranking` task with mean squared
    error; predictions are clipped to the training ratings' range at evaluation and in
    the export.

    With ``ensemble_size=K`` the model holds K such factorizations side by side (every
    factor table K * `embedding_dim` wide, biases K wide), each with its own random
    initialization, and predicts their mean rating. Each member is trained on its own
    squared error, as if alone: the loss is the sum of the members' losses, the L2
    penalties and element-wise optimizer updates (Adam, SparseAdam, Adagrad) never mix
    members, so member k follows exactly the trajectory of a single model started from
    its slice of the weights on the same batches. Optimizers that look at whole rows or
    all gradients (row-wise Adagrad, norm clipping) couple the members. Averaging K
    members lowers the error as an ensemble of separately trained models does, at the
    cost of K times wider rows (the same rows are read: not K times the lookups). The
    reported ``loss`` is then the sum of the members' errors; ``rmse`` (and
    ``val_rmse``, the metric to monitor) is the ensemble's.

    Example:

    >>> model = RankingModel(data)  # data: recsys.data.InteractionData, e.g. MovieLens
    >>> model.compile(optimizer=recsys.optimizers.SparseAdam(0.003))
    >>> model.fit(data.train_dataset(), epochs=9)  # with data batch_size=512
    >>> model.evaluate_metrics(data)  # {'test/rmse': ..., 'test/mae': ...}
    >>> model.export("/tmp/ranking")  # serving_default: (user_id, item_id) -> rating

    Args:
        data: What the model reads (:class:`recsys.data.InteractionData`): the
            training users, the item catalogue and the training interactions with
            their ratings.
        embedding_dim: Width of the user and item factors.
        use_biases: Whether to learn user and item biases.
        use_history: Add the pooled embeddings of the user's training items to the user
            vector.
        history_pooling: ``"mean"``, ``"sum"`` or ``"sqrtn"``.
        use_rated_history: Also add the user's training items' embeddings (a third
            table) weighted by each rating minus the global mean: an item-item
            neighbourhood term, as in Koren's integrated model (KDD 2008). During
            training the target item is left out of this term (its rating is the label).
        use_item_rated_history: The item-side counterpart: add the embeddings of the
            users who rated the item, weighted by their rating minus the global mean
            (the target user left out during training).
        factors_l2: L2 penalty on looked-up factor rows.
        bias_l2: L2 penalty on looked-up bias rows.
        hidden_units: Hidden layers of an optional MLP over the user and item vectors
            (empty: none).
        dropout: Dropout after the MLP's hidden layers.
        init_stddev: Standard deviation of the factors' normal initializer.
        history_max_length: Keep each user's most recent rated items only (by
            timestamp, when the data has them), or None for all of them.
        ensemble_size: Number of factorizations trained side by side and averaged (1:
            a single model). Not combined with `hidden_units` (one MLP over all
            members would mix them).
        name: Model name.

    Raises:
        ValueError: An argument is out of range.
    """

    def __init__(
        self,
        data: InteractionData,
        embedding_dim: int = 32,
        use_biases: bool = True,
        use_history: bool = True,
        history_pooling: str = "sqrtn",
        use_rated_history: bool = True,
        use_item_rated_history: bool = False,
        factors_l2: float = 0.08,
        bias_l2: float = 0.005,
        hidden_units: Sequence[int] = (),
        dropout: float = 0.0,
        init_stddev: float = 0.05,
        history_max_length: int | None = None,
        ensemble_size: int = 1,
        name: str = "ranking",
    ) -> None:
        super().__init__(name=name)
        check_positive_int("embedding_dim", embedding_dim)
        check_choice("history_pooling", history_pooling, ("mean", "sum", "sqrtn"))
        check_nonnegative("factors_l2", factors_l2)
        check_nonnegative("bias_l2", bias_l2)
        check_nonnegative("init_stddev", init_stddev)
        if history_max_length is not None:
            check_positive_int("history_max_length", history_max_length)
        self.ensemble_size = check_positive_int("ensemble_size", ensemble_size)
        if self.ensemble_size > 1 and hidden_units:
            raise ValueError(
                "An ensemble (ensemble_size > 1) is a sum of independent factorizations; "
                "an MLP over all members would mix them. Received "
                f"ensemble_size={ensemble_size} and hidden_units={list(hidden_units)}: "
                "set one of them to its default (1 or [])."
            )
        train, ratings, self.global_mean, self.min_rating, self.max_rating = training_ratings(
            data, "RankingModel"
        )
        catalogue = data.catalogue()
        self.user_ids = vocabulary(data.user_vocabulary)
        self.item_ids = catalogue.ids
        self.use_biases = bool(use_biases)
        self.use_history = bool(use_history)
        initializer = {"class_name": "RandomNormal", "config": {"stddev": float(init_stddev)}}

        self.use_rated_history = bool(use_rated_history)
        self.use_item_rated_history = bool(use_item_rated_history)
        # Rows of the history tables are catalogue (or user) positions + 1: row 0 is
        # for unknown ids. Residuals are each rating minus the global mean.
        residuals = (ratings - self.global_mean).astype(np.float32)
        user_rows = positions(self.user_ids, train.users)[train.user_index]
        item_rows = catalogue.rows(train.items)[train.item_index]
        user_columns: dict[str, Any] = {}
        if use_history or use_rated_history:
            in_catalogue = np.where(item_rows >= 0, user_rows, -1)
            bags = Histories.group(
                self.user_ids, in_catalogue, item_rows + 1, residuals, train.timestamps
            ).truncate(history_max_length)
            user_columns.update(_bag_columns(bags, "history", "rated_history_weights"))
            self._rated_pairs = PairIndex(
                bags.offsets, bags.members, bags.ratings, base=len(self.item_ids) + 1
            )
        self.user_store = FeatureStore(self.user_ids, user_columns, name="user_features")
        item_columns: dict[str, Any] = {}
        if use_item_rated_history:
            known = user_rows >= 0
            bags = Histories.group(
                self.item_ids, np.where(known, item_rows, -1), user_rows + 1, residuals
            )
            item_columns = _bag_columns(bags, "raters", "rater_weights")
            self._rater_pairs = PairIndex(
                bags.offsets, bags.members, bags.ratings, base=len(self.user_ids) + 1
            )
        self.item_store = FeatureStore(self.item_ids, item_columns, name="item_features")
        table = {
            "embedding_dim": embedding_dim * self.ensemble_size,
            "embeddings_l2": factors_l2,
            "embeddings_initializer": initializer,
        }
        user_features: dict[str, dict[str, Any]] = {
            "user_id": {"kind": "id", "vocabulary": list(self.user_ids), **table}
        }
        history_table = {"kind": "multi_hot", "num_rows": len(self.item_ids) + 1, **table}
        if use_history:
            user_features["history"] = {**history_table, "pooling": history_pooling}
        if use_rated_history:
            user_features["rated_history"] = {**history_table, "pooling": history_pooling}
        self.user_tower = Tower(user_features, combiner="sum", name="user_tower")
        self._item_lookup = keras.layers.StringLookup(
            vocabulary=np.asarray(self.item_ids), num_oov_indices=1, mask_token=None
        )
        self._user_lookup = keras.layers.StringLookup(
            vocabulary=np.asarray(self.user_ids), num_oov_indices=1, mask_token=None
        )
        item_features: dict[str, dict[str, Any]] = {
            "item_id": {"kind": "id", "vocabulary": list(self.item_ids), **table}
        }
        if use_item_rated_history:
            item_features["rated_by"] = {
                "kind": "multi_hot",
                "num_rows": len(self.user_ids) + 1,
                "pooling": history_pooling,
                **table,
            }
        self.item_tower = Tower(item_features, combiner="sum", name="item_tower")
        if self.use_biases:
            bias = {
                "kind": "id",
                "embedding_dim": self.ensemble_size,
                "embeddings_initializer": "zeros",
            }
            self.user_bias = FeatureEmbedding(
                vocabulary=self.user_ids, embeddings_l2=bias_l2, name="user_bias", **bias
            )
            self.item_bias = FeatureEmbedding(
                vocabulary=self.item_ids, embeddings_l2=bias_l2, name="item_bias", **bias
            )
        self.mlp = []
        for units in hidden_units:
            self.mlp.append(keras.layers.Dense(check_positive_int("hidden_units", units), "relu"))
            if dropout > 0:
                self.mlp.append(keras.layers.Dropout(dropout))
        if self.mlp:
            self.mlp.append(keras.layers.Dense(1, kernel_initializer="zeros"))
        # Per-example squared errors, averaged by `tf.nn.compute_average_loss` so the
        # loss is right under a tf.distribute strategy too.
        self.task = rating_task()
        self._config = {
            "embedding_dim": embedding_dim,
            "use_biases": use_biases,
            "use_history": use_history,
            "history_pooling": history_pooling,
            "use_rated_history": use_rated_history,
            "use_item_rated_history": use_item_rated_history,
            "factors_l2": factors_l2,
            "bias_l2": bias_l2,
            "hidden_units": list(hidden_units),
            "dropout": dropout,
            "init_stddev": init_stddev,
            "history_max_length": history_max_length,
            "ensemble_size": self.ensemble_size,
        }

    def user_features(self, user_ids: Any, exclude_items: Any = None) -> dict[str, Any]:
        """The user tower's inputs; `exclude_items` leave the rated history.

        Each distinct user's bag is given once (``bag_index`` says which one an example
        uses), and the item to leave out as a row with its weight, so pooling costs the
        distinct users' histories, not one copy per example.
        """
        user_ids = tf.reshape(user_ids, [-1])
        features: dict[str, Any] = {"user_id": user_ids}
        if not (self.use_history or self.use_rated_history):
            return features
        index = self.user_store.index(user_ids)
        distinct, bag = tf.unique(index)
        stored = self.user_store.gather(distinct)
        if self.use_history:
            features["history"] = {"ids": stored["history"], "bag_index": bag}
        if self.use_rated_history:
            rated = {
                "ids": stored["history"],
                "weights": stored["rated_history_weights"],
                "bag_index": bag,
            }
            if exclude_items is not None:
                rated.update(_leave_out(self._rated_pairs, index, self._item_lookup(exclude_items)))
            features["rated_history"] = rated
        return features

    def item_features(self, item_ids: Any, exclude_users: Any = None) -> dict[str, Any]:
        """The item tower's inputs; `exclude_users` leave the item's rated-by bag."""
        item_ids = tf.reshape(item_ids, [-1])
        features: dict[str, Any] = {"item_id": item_ids}
        if self.use_item_rated_history:
            index = self.item_store.index(item_ids)
            distinct, bag = tf.unique(index)
            stored = self.item_store.gather(distinct)
            rated_by = {
                "ids": stored["raters"],
                "weights": stored["rater_weights"],
                "bag_index": bag,
            }
            if exclude_users is not None:
                rated_by.update(
                    _leave_out(self._rater_pairs, index, self._user_lookup(exclude_users))
                )
            features["rated_by"] = rated_by
        return features

    @no_autograph
    def call(self, features: dict[str, Any], training: bool | None = None) -> Any:
        """Unclipped predicted ratings, `[batch]` (the members' mean in an ensemble)."""
        return tf.reduce_mean(self.member_predictions(features, training=training), axis=-1)

    @no_autograph
    def member_predictions(self, features: dict[str, Any], training: bool | None = None) -> Any:
        """Each member's unclipped predicted ratings, `[batch, ensemble_size]`."""
        user_ids = tf.reshape(features["user_id"], [-1])
        item_ids = tf.reshape(features["item_id"], [-1])
        user_inputs = self.user_features(user_ids, item_ids if training else None)
        users = self.user_tower(user_inputs, training=training)
        items = self.item_tower(
            self.item_features(item_ids, user_ids if training else None), training=training
        )
        members = self.ensemble_size
        width = users.shape[-1] // members
        products = tf.reshape(users * items, [-1, members, width])
        prediction = self.global_mean + tf.reduce_sum(products, axis=-1)
        if self.use_biases:
            prediction += self.user_bias(user_ids)
            prediction += self.item_bias(item_ids)
        if self.mlp:
            x = tf.concat([users, items], axis=-1)
            for layer in self.mlp:
                x = (
                    layer(x, training=training)
                    if isinstance(layer, keras.layers.Dropout)
                    else layer(x)
                )
            prediction += x
        return prediction

    def predict_ratings(self, user_ids: Any, item_ids: Any) -> Any:
        """Predicted ratings clipped to the training range."""
        prediction = self({"user_id": user_ids, "item_id": item_ids}, training=False)
        return tf.clip_by_value(prediction, self.min_rating, self.max_rating)

    def compute_loss(self, features: dict[str, Any], training: bool = False) -> Any:
        members = self.member_predictions(features, training=training)
        labels = tf.cast(tf.reshape(features["rating"], [-1, 1]), members.dtype)
        if self.ensemble_size == 1:
            losses = self.task(labels=labels, predictions=members)
        else:
            # Each member's own squared error, summed over members (Keras's MSE averages
            # the last axis, hence the factor): members train as if alone. The metric
            # (rmse) is the ensemble's.
            tiled = tf.tile(labels, [1, self.ensemble_size])
            losses = self.ensemble_size * self.task(
                labels=tiled, predictions=members, compute_metrics=False
            )
            mean = tf.reduce_mean(members, axis=-1, keepdims=True)
            with tf.control_dependencies([self.task(labels=labels, predictions=mean)]):
                losses = tf.identity(losses)
        return tf.nn.compute_average_loss(losses)

    def evaluate_metrics(self, data: InteractionData, split: str = "test") -> dict[str, float]:
        """RMSE and MAE of clipped predictions on `split`: `{split}/rmse`, `{split}/mae`."""
        return rating_metrics(self.predict_ratings, data, split)

    def export(self, path: str, data: Any = None) -> Path:
        """Writes a SavedModel under `path/<version>`: ``(user_id, item_id)`` strings `[None]` -> ``{"rating"}``.

        Args:
            path: The export folder (TensorFlow Serving's layout: ``path/1/``).
            data: The training data (unused: a rating needs nothing more than the model).

        Returns:
            The SavedModel's folder.
        """
        return export_ratings(self, path)

    def get_config(self) -> dict[str, Any]:
        return dict(self._config)


def _bag_columns(bags: Histories, members: str, weights: str) -> dict[str, Any]:
    """Feature-store columns of compressed-row bags: member rows and their weights."""
    return {
        members: tf.RaggedTensor.from_row_splits(bags.members, bags.offsets),
        weights: tf.RaggedTensor.from_row_splits(bags.ratings, bags.offsets),
    }


def _leave_out(pairs: PairIndex, owners: Any, members: Any) -> dict[str, Any]:
    """Bag inputs that leave each example's (owner, member) pair out of its bag."""
    members = tf.reshape(members, [-1])
    found = pairs.contains(owners, members)
    return {
        "leave_out": tf.where(found, members, tf.constant(-1, members.dtype)),
        "leave_out_weight": pairs.weight(owners, members),
    }
