"""Two-tower retrieval trained with an in-batch softmax (TFRS `Retrieval` task)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_recommenders as tfrs

from recsys import evaluation
from recsys._tf import keras, no_autograph, tf
from recsys.checks import check_choice, check_nonnegative, check_positive, check_positive_int
from recsys.data.contract import FeatureData, InteractionData, positions
from recsys.data.vocabulary import vocabulary
from recsys.models._common import check_eval_split, seen_splits
from recsys.models.features import (
    DEFAULT_ITEM_KINDS,
    FeatureStore,
    SortedBags,
    feature_spec,
    id_spec,
    side_features,
    training_histories,
    training_item_counts,
)
from recsys.models.retrieval_task import InBatchRetrieval
from recsys.models.sampling import BagSampler
from recsys.towers import Tower

__all__ = ["RetrievalModel"]

# Users scored together in `evaluate_metrics` (their vectors and seen items in memory).
EVAL_USERS_PER_BLOCK = 8192


class RetrievalModel(tfrs.Model):
    """Two-tower retrieval: a user tower and an item tower scored by a dot product.

    The user tower pools the embeddings of the user's training items (its history;
    during training the target item is left out of it, so the model learns to predict a
    held-out item from the others, which is what evaluation asks) and, optionally, a
    user-id embedding. The item tower embeds the item id and, optionally, its genres,
    year and title. Both outputs are L2-normalized; the loss is TFRS's in-batch softmax
    with a temperature, the sampling-bias (logQ) correction and accidental-hit removal.

    Per-id features (histories, genres, ...) are built from the data module and kept in
    the model, so a batch only needs ``user_id`` and ``item_id``.

    Example:

    >>> model = RetrievalModel(data)  # data: recsys.data.InteractionData, e.g. MovieLens
    >>> model.compile(optimizer=recsys.optimizers.SparseAdam(0.003))
    >>> model.fit(data.train_dataset(), epochs=3)  # with data batch_size=2048
    >>> model.evaluate_metrics(data)  # {'test/top100_accuracy': ..., ...}
    >>> model.export("/tmp/retrieval")  # serving_default: user_id -> item_ids, scores

    Args:
        data: What the model reads (:class:`recsys.data.InteractionData`): the
            training users, the item catalogue with its feature columns and the
            training interactions (histories in timestamp order, item frequencies).
            Data that also declares its features (:class:`recsys.data.FeatureData`,
            e.g. ``data=interactions``) gives their kinds, the user features and how
            ids map to rows (a counted vocabulary, or hashing for open id spaces, so a
            user or item never seen in training still gets an embedding).
        embedding_dim: Width of every feature embedding.
        output_dim: Width of the towers' last linear layer on top of the concatenated
            feature embeddings, or None for no MLP: each tower then sums its feature
            embeddings.
        hidden_units: Hidden layers of both towers' MLPs.
        use_user_id: Whether the user tower embeds the user id.
        use_history: Whether the user tower pools the user's training items.
        history_pooling: ``"mean"``, ``"sum"`` or ``"sqrtn"``.
        exclude_target_from_history: Leave the target item out of the history during
            training.
        history_max_length: Keep each user's most recent items only (by timestamp,
            when the data has them), or None for the whole history. Long histories cost
            training time in proportion to their length.
        history_sample_size: During training, pool about this many items of each
            longer history, a new sample at every step (see
            :class:`recsys.models.sampling.BagSampler`); None pools whole histories.
            Bounds the step's pooling cost on data with long histories; evaluation,
            export and serving pool whole histories. With ``"mean"`` pooling the
            sample's mean estimates the whole history's; with ``"sqrtn"`` or ``"sum"``
            the sample's vector is shorter, which L2-normalized towers whose only
            feature is the history do not see.
        item_features: Catalogue columns the item tower embeds besides the id (None:
            all of them). Their kinds come from the data (`FeatureData`), or are
            MovieLens's: ``genres`` multi-hot, ``year`` numeric (bucketized at its
            quantiles), ``title`` text (hashed tokens).
        user_features: Declared user columns the user tower embeds (None: all the
            data declares; needs `FeatureData`).
        temperature: Softmax temperature (scores are divided by it).
        logq_correction: Subtract log(sampling probability) of each in-batch candidate
            (its training frequency) from its scores.
        remove_accidental_hits: Mask in-batch negatives that are the positive item.
        l2_normalize: L2-normalize both towers' outputs.
        embeddings_l2: L2 penalty on looked-up embedding rows.
        dropout: Dropout after hidden layers.
        top_k: Default k of the exported index.
        name: Model name.

    Raises:
        ValueError: An argument is out of range, or the data lacks what a feature needs.
    """

    def __init__(
        self,
        data: InteractionData,
        embedding_dim: int = 64,
        output_dim: int | None = None,
        hidden_units: Sequence[int] = (),
        use_user_id: bool = False,
        use_history: bool = True,
        history_pooling: str = "sqrtn",
        exclude_target_from_history: bool = True,
        history_max_length: int | None = None,
        history_sample_size: int | None = None,
        item_features: Sequence[str] | None = ("genres", "year"),
        user_features: Sequence[str] | None = None,
        temperature: float = 0.3,
        logq_correction: bool = True,
        remove_accidental_hits: bool = True,
        l2_normalize: bool = True,
        embeddings_l2: float = 0.0,
        dropout: float = 0.0,
        top_k: int = 100,
        name: str = "retrieval",
    ) -> None:
        super().__init__(name=name)
        check_positive_int("embedding_dim", embedding_dim)
        check_positive_int("top_k", top_k)
        if history_max_length is not None:
            check_positive_int("history_max_length", history_max_length)
        self._history_sampler = None
        if history_sample_size is not None and use_history:
            self._history_sampler = BagSampler(history_sample_size)
        check_choice("history_pooling", history_pooling, ("mean", "sum", "sqrtn"))
        if not (use_user_id or use_history):
            raise ValueError(
                "The user tower needs `use_user_id` or `use_history`. Received both False."
            )
        check_positive("temperature", temperature)
        check_nonnegative("embeddings_l2", embeddings_l2)
        self.temperature = float(temperature)
        self.logq_correction = bool(logq_correction)
        self.exclude_target_from_history = bool(exclude_target_from_history and use_history)
        self.top_k = int(top_k)
        self.use_history = bool(use_history)

        self.user_ids = vocabulary(data.user_vocabulary)
        catalogue = data.catalogue()
        self.item_ids = catalogue.ids
        declared = isinstance(data, FeatureData)
        kinds = data.feature_kinds() if declared else {"user": {}, "item": DEFAULT_ITEM_KINDS}
        user_side: dict[str, Any] = {}
        store_keys = self.user_ids
        if declared:
            users = data.user_table()
            user_side = side_features(users.features, user_features, kinds["user"], "user")
            if user_side:
                # One store (one lookup) for the histories and the side features, keyed
                # by every user of the log: users without training rows get empty bags.
                # A second lookup over a million keys cost about 0.1 GiB.
                store_keys = users.ids
        elif user_features:
            raise ValueError(
                f"User features {list(user_features)} need data that declares them "
                "(recsys.data.FeatureData, e.g. data=interactions). Received data of type "
                f"{type(data).__name__}."
            )
        if "history" in user_side:
            raise ValueError(
                "A user feature may not be called 'history' (the user tower's pooled "
                "training items). Received user features "
                f"{list(user_side)}; rename that column in data.user_features."
            )
        user_columns: dict[str, Any] = dict(user_side)
        if use_history:
            # Histories are kept as rows of the history table (catalogue row + 1; row 0
            # is for unknown items), so training compares integers, not strings.
            # Each bag sorted: the same table answers whether a target is in its user's
            # history (a binary search), with no second array of pairs.
            histories = training_histories(data, store_keys, history_max_length)
            self._history_bags = SortedBags(histories.offsets, histories.members + 1)
            del histories
            user_columns["history"] = self._history_bags.table
        self.user_store = FeatureStore(store_keys, user_columns, name="user_features")
        item_columns = side_features(catalogue.features, item_features, kinds["item"], "item")
        self.item_feature_names = list(item_columns)
        self.item_store = FeatureStore(self.item_ids, item_columns, name="item_features")
        self.user_feature_names = list(user_side)

        # Without an MLP the towers' widths must match: add the feature embeddings.
        common = {"embedding_dim": embedding_dim, "embeddings_l2": embeddings_l2}
        tower = {
            "hidden_units": hidden_units,
            "output_dim": output_dim,
            "dropout": dropout,
            "combiner": "sum" if output_dim is None else "concat",
            "l2_normalize": l2_normalize,
        }
        user_specs: dict[str, dict[str, Any]] = {}
        if use_user_id:
            space = data.id_space("user") if declared else None
            user_specs["user_id"] = {**id_spec(self.user_ids, space), **common}
        if use_history:
            user_specs["history"] = {
                "kind": "multi_hot",
                "num_rows": len(self.item_ids) + 1,
                "pooling": history_pooling,
                **common,
            }
        for name, values in user_side.items():
            user_specs[name] = {**feature_spec(kinds["user"][name], values), **common}
        space = data.id_space("item") if declared else None
        item_specs = {"item_id": {**id_spec(self.item_ids, space), **common}}
        for name, values in item_columns.items():
            item_specs[name] = {**feature_spec(kinds["item"][name], values), **common}
        self.user_tower = Tower(user_specs, name="user_tower", **tower)
        self.item_tower = Tower(item_specs, name="item_tower", **tower)
        counts = training_item_counts(data, catalogue)
        self.train_counts = counts
        probability = np.maximum(counts, 0.5) / max(float(counts.sum()), 1.0)
        self._item_lookup = keras.layers.StringLookup(
            vocabulary=self.item_ids, num_oov_indices=1, mask_token=None
        )
        self._sampling_probability = tf.constant(
            np.concatenate([[probability.min()], probability]).astype("float32")
        )
        self.task = InBatchRetrieval(
            temperature=self.temperature,
            remove_accidental_hits=bool(remove_accidental_hits),
        )
        self._config = {
            "embedding_dim": embedding_dim,
            "output_dim": output_dim,
            "hidden_units": list(hidden_units),
            "use_user_id": use_user_id,
            "use_history": use_history,
            "history_pooling": history_pooling,
            "exclude_target_from_history": exclude_target_from_history,
            "history_max_length": history_max_length,
            "history_sample_size": history_sample_size,
            "item_features": None if item_features is None else list(item_features),
            "user_features": None if user_features is None else list(user_features),
            "temperature": temperature,
            "logq_correction": logq_correction,
            "remove_accidental_hits": remove_accidental_hits,
            "l2_normalize": l2_normalize,
            "embeddings_l2": embeddings_l2,
            "dropout": dropout,
            "top_k": top_k,
        }

    # ----------------------------------------------------------------- towers
    def user_features(
        self, user_ids: Any, exclude_items: Any = None, step: Any = None
    ) -> dict[str, Any]:
        """The user tower's inputs for `user_ids` (histories without `exclude_items`).

        Each distinct user's history is given once (``bag_index`` says which one an
        example uses) and the item to leave out as a row, so pooling costs the distinct
        users' histories, not one copy per example. With a `step` (training) and
        `history_sample_size`, each history is that step's sample.
        """
        user_ids = tf.reshape(user_ids, [-1])
        features: dict[str, Any] = {"user_id": user_ids}
        if not (self.user_feature_names or self.use_history):
            return features
        index = self.user_store.index(user_ids)
        if self.user_feature_names:
            features.update(self.user_store.gather(index, self.user_feature_names))
        if not self.use_history:
            return features
        distinct, bag = tf.unique(index)
        bags = self.user_store.gather(distinct, ["history"])["history"]
        sampler = self._history_sampler if step is not None else None
        if sampler is not None:
            lengths = tf.gather(bags.row_lengths(), bag)  # each example's whole history
            bags = sampler.sample(bags, distinct, step)
        history = {"ids": bags, "bag_index": bag}
        if exclude_items is not None:
            items = self._item_lookup(tf.reshape(exclude_items, [-1]))
            in_history = self._history_bags.contains(index, items)
            if sampler is not None:  # the target is left out only if it was sampled
                in_history &= sampler.keeps(index, items, lengths, step)
            history["leave_out"] = tf.where(in_history, items, tf.constant(-1, items.dtype))
        features["history"] = history
        return features

    def item_features(self, item_ids: Any) -> dict[str, Any]:
        """The item tower's inputs for `item_ids`."""
        features = dict(self.item_store(item_ids))
        features["item_id"] = item_ids
        return features

    def user_embeddings(self, user_ids: Any, training: bool = False) -> Any:
        return self.user_tower(self.user_features(user_ids), training=training)

    def item_embeddings(self, item_ids: Any, training: bool = False) -> Any:
        return self.item_tower(self.item_features(item_ids), training=training)

    @no_autograph
    def call(self, features: dict[str, Any], training: bool | None = None) -> dict[str, Any]:
        return {
            "user": self.user_embeddings(features["user_id"], training=bool(training)),
            "item": self.item_embeddings(features["item_id"], training=bool(training)),
        }

    def compute_loss(self, features: dict[str, Any], training: bool = False) -> Any:
        user_ids = tf.reshape(features["user_id"], [-1])
        item_ids = tf.reshape(features["item_id"], [-1])
        exclude = item_ids if (training and self.exclude_target_from_history) else None
        step = self._step() if training and self._history_sampler is not None else None
        users = self.user_tower(self.user_features(user_ids, exclude, step), training=training)
        items = self.item_tower(self.item_features(item_ids), training=training)
        # Integer ids: accidental-hit removal compares every pair of the batch.
        item_rows = self._item_lookup(item_ids)
        probability = None
        if self.logq_correction:
            probability = tf.gather(self._sampling_probability, item_rows)
        return self.task(
            users,
            items,
            candidate_sampling_probability=probability,
            candidate_ids=item_rows,
            compute_metrics=False,
            compute_batch_metrics=False,
        )

    def _step(self) -> Any:
        # The optimizer's checkpointed step: a resumed run draws the same samples.
        optimizer = getattr(self, "optimizer", None)
        if optimizer is None:
            return tf.constant(0, tf.int64)
        return tf.cast(optimizer.iterations, tf.int64)

    # ------------------------------------------------------------- evaluation
    def _embedder(self, tower: str) -> Any:
        # Per batch inside a tf.function: a sharded table (ParameterServerStrategy) is
        # read one gather per shard there; an eager lookup would concatenate all shards.
        fn = self.user_embeddings if tower == "user" else self.item_embeddings
        return tf.function(fn, reduce_retracing=True)

    def _all_embeddings(
        self, ids: np.ndarray, tower: str, batch_size: int = 4096, embed: Any = None
    ) -> np.ndarray:
        embed = embed or self._embedder(tower)
        parts = [
            embed(tf.constant(list(ids[i : i + batch_size]), dtype=tf.string)).numpy()
            for i in range(0, len(ids), batch_size)
        ]
        return np.concatenate(parts, axis=0)

    def evaluate_metrics(self, data: InteractionData, split: str = "test") -> dict[str, float]:
        """Exact full-catalogue metrics on `split` (see `recsys.evaluation`).

        Returns `{split}/top100_accuracy` (training items ranked too, as
        `tfrs.metrics.FactorizedTopK`), `{split}/top100_seen_share` (the share of a
        user's top 100 taken by items the user saw before `split`, which cannot be
        hits there when a (user, item) pair lies in one split only, as in MovieLens's
        random split; a mean over users), `{split}/recall@100` and `{split}/ndcg@10`
        (the items the model saw before `split`, train and for test also val, excluded),
        and `{split}/popularity_top100_accuracy`: the top-100 accuracy of recommending
        the most popular training items to everyone, on the same split.
        """
        rows = data.interactions(check_eval_split(split))
        if not len(rows):
            raise ValueError(f"The data's {split!r} split is empty.")
        items = vocabulary(np.concatenate([self.item_ids, rows.items]))
        item_vectors = self._all_embeddings(items, "item")
        seen = data.histories(seen_splits(split))
        seen_rows = positions(items, data.catalogue().ids)
        test_items = positions(items, rows.items)[rows.item_index]
        # Only the split's users are scored, a block of users at a time: their vectors
        # and the items they saw (read per block) are what evaluation holds, not every
        # user's (a million users: 256 MB of vectors; 50k test users of a 50M-row log
        # had seen 6M items, 0.5 GiB of index arrays).
        sums: dict[str, float] = {}
        pairs = users_scored = 0
        embed_users = self._embedder("user")
        order = np.argsort(rows.user_index, kind="stable")
        bounds = np.searchsorted(rows.user_index[order], np.arange(0, len(rows.users) + 1))
        for lo in range(0, len(rows.users), EVAL_USERS_PER_BLOCK):
            hi = min(lo + EVAL_USERS_PER_BLOCK, len(rows.users))
            users = rows.users[lo:hi]
            mine = order[bounds[lo] : bounds[hi]]
            if not mine.size:
                continue
            owner, members = seen.select(users)
            block = evaluation.retrieval_metrics(
                self._all_embeddings(users, "user", embed=embed_users),
                item_vectors,
                rows.user_index[mine] - lo,
                test_items[mine],
                owner,
                seen_rows[members],
                prefix=f"{split}/",
            )
            # Top-k accuracy is a mean over pairs, recall and nDCG over users.
            n_users = np.unique(rows.user_index[mine]).size
            for name, value in block.items():
                weight = mine.size if "_accuracy" in name else n_users
                sums[name] = sums.get(name, 0.0) + value * weight
            pairs += mine.size
            users_scored += n_users
        metrics = {
            name: total / (pairs if "_accuracy" in name else users_scored)
            for name, total in sums.items()
        }
        # The popularity baseline on the same split, for comparison.
        metrics[f"{split}/popularity_top100_accuracy"] = evaluation.popularity_top_k_accuracy(
            self.train_counts, data.catalogue().rows(rows.items)[rows.item_index], k=100
        )
        return metrics

    def history_embeddings(self, history: Any, training: bool = False) -> Any:
        """Query vectors of users given by their items (`[n, L]` strings padded with "").

        For users the model never saw: the history is pooled as a training user's is
        (items unknown to the catalogue are left out; an empty history is allowed), and
        the user id and user features take their unknown defaults.
        """
        history = tf.convert_to_tensor(history, dtype=tf.string)
        features: dict[str, Any] = {"user_id": tf.fill(tf.shape(history)[:1], "")}
        if self.user_feature_names:
            index = self.user_store.index(features["user_id"])
            features.update(self.user_store.gather(index, self.user_feature_names))
        if self.use_history:
            items = tf.RaggedTensor.from_tensor(history, padding="")
            rows = items.with_flat_values(self._item_lookup(items.flat_values))
            features["history"] = {"ids": tf.ragged.boolean_mask(rows, rows > 0)}
        return self.user_tower(features, training=training)

    # ----------------------------------------------------------------- export
    def export(
        self,
        path: str,
        data: InteractionData,
        k: int | None = None,
        index: str = "exact",
    ) -> Path:
        """Writes the serving SavedModel (stock TensorFlow ops only) under `path`.

        TensorFlow Serving's layout, ``path/<version>/saved_model.pb``, with the
        signatures of :mod:`recsys.serving.export`: ``serving_default`` (user ids ->
        top-k item ids and scores, without the user's training and validation items;
        an unknown user gets the answer for an empty history), ``unfiltered``,
        ``by_history`` (item ids -> top-k, for users unseen in training),
        ``item_embeddings`` and ``user_embeddings``.

        Args:
            path: The export folder.
            data: The data the model was trained on: its training and validation
                interactions are what `serving_default` leaves out (never the test's).
            k: The default k of the signatures (`top_k` when None).
            index: ``"exact"`` (blockwise brute force over the catalogue) or
                ``"partitioned"`` (approximate, k-means partitions; see
                :class:`recsys.serving.PartitionedIndex`).

        Returns:
            The SavedModel's folder (``path/<version>``).
        """
        from recsys.serving import UserItems, export_retrieval

        k = min(check_positive_int("k", k or self.top_k), len(self.item_ids))
        check_choice("index", index, ("exact", "partitioned"))
        if not self.built:
            # Training calls the towers, never the model itself, and Keras saves a model's
            # full config only once it has been called: call it on one (user, item).
            self(
                {
                    "user_id": tf.constant(self.user_ids[:1]),
                    "item_id": tf.constant(self.item_ids[:1]),
                }
            )
        seen = data.histories(("train", "val"))
        known = positions(self.item_ids, data.catalogue().ids)
        return export_retrieval(
            path,
            item_ids=self.item_ids,
            item_vectors=self._all_embeddings(self.item_ids, "item"),
            user_query_fn=self.user_embeddings,
            history_query_fn=self.history_embeddings,
            user_ids=seen.keys,
            seen=UserItems.from_histories(seen, item_rows=known),
            k=k,
            index=index,
            track=[self],
            version=1,
        )

    def get_config(self) -> dict[str, Any]:
        return dict(self._config)
