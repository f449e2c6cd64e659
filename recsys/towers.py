"""Towers: Keras models that embed a dict of features and map them to one vector.

A tower embeds each configured feature with `recsys.layers.Embedding` (so its table
gradient stays row-sparse), combines the embeddings (concatenation or sum), applies an
optional MLP and optionally L2-normalizes the result. Features are described by plain
dicts (JSON-serializable, so towers round-trip through `get_config`):

- ``"id"``: one categorical value per example (`[batch]` string or integer), looked
  up in a vocabulary (unknown values share one out-of-vocabulary row) or, without a
  vocabulary, hashed into ``num_bins`` rows (for large or open vocabularies).
- ``"multi_hot"``: a bag of categorical values per example (`[batch, n]` padded with
  ``""``, or ragged), looked up or hashed as above and pooled (``mean``, ``sum`` or
  ``sqrtn``): genres, a user's history of items.
- ``"text"``: one string per example, lower-cased, stripped of punctuation, split on
  whitespace, tokens looked up or hashed and pooled: titles.
- ``"bucketized"``: one number per example, bucketized by ``boundaries``: years, ages.

`UserTower` and `ItemTower` are towers configured from the usual MovieLens-like
columns.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from recsys._tf import keras, no_autograph, ragged_row_ids, tf
from recsys.checks import check_fraction, check_positive_int
from recsys.layers import Embedding

__all__ = ["FeatureEmbedding", "ItemTower", "Tower", "UserTower"]

FEATURE_KINDS = ("id", "multi_hot", "text", "bucketized")
POOLINGS = ("mean", "sum", "sqrtn")
COMBINERS = ("concat", "sum")
# The keys of a bag given as a dict (see FeatureEmbedding.pool).
BAG_KEYS = ("ids", "weights", "bag_index", "leave_out", "leave_out_weight")

_PUNCTUATION = r"[!\"#$%&()\*\+,\-\./:;<=>?@\[\\\]\^_`{|}~']"


def _strings_or_none(values: Any) -> tuple[str, ...] | None:
    """A vocabulary as a tuple of strings, or None (configs give it back as a list).

    A tuple because a layer attribute holding a list becomes a tracked `ListWrapper`,
    and Keras walks every element of tracked lists whenever it lists a model's layers
    or metrics, which its progress bar does after every batch: with vocabularies of
    ids that walk grew with the number of users and items.
    """
    return None if values is None else tuple(str(v) for v in values)


_LONG_VALUES = ("vocabulary", "boundaries")


def _plain(value: Any) -> Any:
    """Config values without Keras's tracking wrappers (ListWrapper, DictWrapper)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _as_strings(values: Any) -> Any:
    if values.dtype == tf.string:
        return values
    return tf.strings.as_string(values)


@keras.saving.register_keras_serializable(package="recsys")
class FeatureEmbedding(keras.layers.Layer):
    """Embeds one feature: an id, a bag of ids, a text or a bucketized number.

    Example:

    >>> genres = FeatureEmbedding("multi_hot", embedding_dim=8,
    ...                           vocabulary=["Action", "Comedy", "Drama"])
    >>> genres(tf.ragged.constant([["Action", "Drama"], []])).shape
    TensorShape([2, 8])

    Args:
        kind: One of ``"id"``, ``"multi_hot"``, ``"text"``, ``"bucketized"``.
        embedding_dim: Width of the embedding. A positive integer.
        vocabulary: Known values (or tokens, for ``"text"``); unknown ones share the
            `oov_buckets` extra rows. Values are compared as strings.
        num_bins: Without a vocabulary, hash values into this many rows.
        oov_buckets: Rows for values outside `vocabulary`, chosen by hash (as
            ``StringLookup(num_oov_indices=...)``); 1 by default.
        salts: With `num_bins`, for ``"id"`` features: hash each value once per salt
            (``[k0, k1]`` SipHash keys, as ``keras.layers.Hashing(salt=...)``) and sum
            the rows, so two ids share their whole embedding only when every hash
            collides. None: one hash with Keras's default key.
        num_rows: Without a vocabulary or bins, the inputs are already row indices in
            `[0, num_rows)` (integers), e.g. ids mapped to rows upstream.
        boundaries: Sorted bucket boundaries (``"bucketized"`` only).
        pooling: How a bag is pooled: ``"mean"``, ``"sum"`` or ``"sqrtn"`` (sum over the
            square root of the bag size). Empty bags give zeros.
        embeddings_initializer: Initializer of the table.
        embeddings_l2: L2 penalty on the looked-up rows (every occurrence in a bag
            counts), divided by the batch size, as in `recsys.layers.Embedding`.
        **kwargs: Base layer arguments (`name`, `dtype`, ...).

    Input shape:
        ``"id"``, ``"text"``, ``"bucketized"``: `[batch]` (or `[batch, 1]`).
        ``"multi_hot"``: `[batch, n]` dense padded with ``""`` or ragged `[batch, None]`;
        or a dict `{"ids": ragged, ...}` with the optional keys of :meth:`pool`:
        ``"weights"`` (a weighted bag), ``"bag_index"`` (examples sharing bags),
        ``"leave_out"`` and ``"leave_out_weight"`` (an element to leave out per example).

    Output shape:
        `[batch, embedding_dim]`.

    Raises:
        ValueError: An argument is missing, unknown or out of range.
    """

    def __init__(
        self,
        kind: str,
        embedding_dim: int = 32,
        vocabulary: Sequence[Any] | None = None,
        num_bins: int | None = None,
        num_rows: int | None = None,
        boundaries: Sequence[float] | None = None,
        pooling: str = "mean",
        embeddings_initializer: Any = "uniform",
        embeddings_l2: float = 0.0,
        oov_buckets: int = 1,
        salts: Sequence[Sequence[int]] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if kind not in FEATURE_KINDS:
            raise ValueError(f"`kind` must be one of {FEATURE_KINDS}. Received: kind={kind!r}")
        if pooling not in POOLINGS:
            raise ValueError(f"`pooling` must be one of {POOLINGS}. Received: pooling={pooling!r}")
        self.kind = kind
        self.embedding_dim = check_positive_int("embedding_dim", embedding_dim)
        self.pooling = pooling
        self.embeddings_l2 = float(embeddings_l2)
        if self.embeddings_l2 < 0:
            raise ValueError(
                f"`embeddings_l2` must be >= 0. Received: embeddings_l2={embeddings_l2!r}"
            )
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)
        self.vocabulary = _strings_or_none(vocabulary)
        self.num_bins = None if num_bins is None else check_positive_int("num_bins", num_bins)
        self.num_rows_given = None if num_rows is None else check_positive_int("num_rows", num_rows)
        self.boundaries = None if boundaries is None else [float(b) for b in boundaries]
        self.oov_buckets = check_positive_int("oov_buckets", oov_buckets)
        self.salts = None if salts is None else [[int(k) for k in salt] for salt in salts]
        if self.salts is not None and (
            kind != "id"
            or num_bins is None
            or not self.salts
            or any(len(x) != 2 for x in self.salts)
        ):
            raise ValueError(
                "`salts` (a list of [k0, k1] pairs) hashes an 'id' feature given `num_bins`. "
                f"Received: kind={kind!r}, num_bins={num_bins!r}, salts={salts!r}"
            )
        if kind == "bucketized":
            if not self.boundaries:
                raise ValueError(
                    "A 'bucketized' feature needs non-empty `boundaries`. "
                    f"Received: boundaries={boundaries!r}"
                )
            if sorted(self.boundaries) != self.boundaries:
                raise ValueError(
                    f"`boundaries` must be sorted. Received: boundaries={boundaries!r}"
                )
            num_rows = len(self.boundaries) + 1
        else:
            given = [x is not None for x in (self.vocabulary, self.num_bins, self.num_rows_given)]
            if sum(given) != 1:
                raise ValueError(
                    f"A {kind!r} feature needs exactly one of `vocabulary`, `num_bins` or "
                    "`num_rows`. Received: vocabulary="
                    f"{'None' if vocabulary is None else f'<{len(vocabulary)} values>'}, "
                    f"num_bins={num_bins!r}, num_rows={num_rows!r}"
                )
            if self.num_rows_given is not None:
                if kind == "text":
                    raise ValueError(
                        "A 'text' feature needs `vocabulary` or `num_bins`, not `num_rows`."
                    )
                self._lookup = None
                num_rows = self.num_rows_given
            elif self.vocabulary is not None:
                if not self.vocabulary:
                    raise ValueError("`vocabulary` must not be empty. Received: vocabulary=[]")
                if len(set(self.vocabulary)) != len(self.vocabulary):
                    raise ValueError("`vocabulary` holds duplicate values.")
                # Row 0: out of vocabulary. "" is padding, never a value.
                self._lookup = keras.layers.StringLookup(
                    vocabulary=tuple(v for v in self.vocabulary if v != ""),
                    num_oov_indices=self.oov_buckets,
                    mask_token=None,
                    name="lookup",
                )
                num_rows = self._lookup.vocabulary_size()
            elif self.salts is not None:
                hashes = [
                    keras.layers.Hashing(self.num_bins, salt=salt, name=f"hashing_{i}")
                    for i, salt in enumerate(self.salts)
                ]
                self._hashes = hashes
                self._lookup = lambda values: tf.stack([h(values) for h in hashes], axis=-1)
                num_rows = self.num_bins
            else:
                self._lookup = keras.layers.Hashing(self.num_bins, name="hashing")
                num_rows = self.num_bins
        self.num_rows = num_rows
        with warnings.catch_warnings():
            # The penalty on looked-up rows is what `embeddings_l2` means here (see Args).
            warnings.filterwarnings("ignore", "recsys.layers.Embedding applies", UserWarning)
            self.embedding = self._make_embedding(num_rows)

    def _make_embedding(self, num_rows: int) -> Any:
        # Bags look up each distinct row once (see `pool`), which adds their penalty
        # itself, counting every occurrence.
        single = self.kind in ("id", "bucketized")
        return Embedding(
            num_rows,
            self.embedding_dim,
            embeddings_initializer=self.embeddings_initializer,
            embeddings_regularizer=(
                keras.regularizers.L2(self.embeddings_l2)
                if self.embeddings_l2 > 0 and single
                else None
            ),
            name="embedding",
        )

    def lookup(self, inputs: Any) -> Any:
        """Row indices of `inputs` (ragged `[batch, None]` for bags and texts)."""
        if self.kind == "bucketized":
            values = tf.cast(_squeeze_last(inputs), tf.float32)
            return tf.raw_ops.Bucketize(input=values, boundaries=self.boundaries)
        if self.kind == "text":
            text = tf.strings.lower(_as_strings(_squeeze_last(inputs)))
            text = tf.strings.regex_replace(text, _PUNCTUATION, " ")
            values = tf.strings.split(text)
        elif self.kind == "multi_hot":
            values = inputs
            if self._lookup is None:
                if not isinstance(values, tf.RaggedTensor):
                    raise ValueError(
                        "A 'multi_hot' feature with `num_rows` takes ragged row indices."
                    )
                return values.with_flat_values(tf.cast(values.flat_values, tf.int64))
            if not isinstance(values, tf.RaggedTensor):
                values = _as_strings(tf.convert_to_tensor(values))
                values = tf.RaggedTensor.from_tensor(values, padding="")
            else:
                values = values.with_flat_values(_as_strings(values.flat_values))
        elif self._lookup is None:
            return tf.cast(_squeeze_last(inputs), tf.int64)
        else:
            values = _as_strings(_squeeze_last(inputs))
        if isinstance(values, tf.RaggedTensor):
            return values.with_flat_values(self._lookup(values.flat_values))
        return self._lookup(values)

    @no_autograph
    def call(self, inputs: Any) -> Any:
        if isinstance(inputs, Mapping):
            unknown = set(inputs) - set(BAG_KEYS)
            if self.kind != "multi_hot" or "ids" not in inputs or unknown:
                raise ValueError(
                    f"Only a 'multi_hot' feature takes a dict, with key 'ids' and optional keys "
                    f"{BAG_KEYS[1:]}. Received keys {sorted(inputs)} for a {self.kind!r} feature."
                )
            indices = self.lookup(inputs["ids"])
            return self.pool(indices, **{k: v for k, v in inputs.items() if k != "ids"})
        indices = self.lookup(inputs)
        if self.salts is not None:  # [batch, hashes] rows: their sum
            return tf.reduce_sum(self.embedding(indices), axis=-2)
        if not isinstance(indices, tf.RaggedTensor):
            return self.embedding(indices)
        return self.pool(indices)

    def pool(
        self,
        indices: Any,
        weights: Any = None,
        bag_index: Any = None,
        leave_out: Any = None,
        leave_out_weight: Any = None,
    ) -> Any:
        """Embeds and pools ragged `[bags, None]` row indices into `[batch, dim]`.

        Each distinct row is looked up once per batch (long bags such as histories
        repeat the same rows many times) and each bag is summed once, with a fused
        gather-and-sum (`tf.sparse.segment_sum`), so the cost follows the rows a batch
        touches and the table's gradient holds one slice per distinct row.

        Args:
            indices: Ragged `[bags, None]` row indices.
            weights: Ragged floats aligned with `indices`: each element's embedding is
                scaled by its weight before pooling; None for weight 1.
            bag_index: `[batch]` the bag of each example (examples may share a bag, e.g.
                one user's history for all of the user's rows of a batch); None: bag i
                is example i.
            leave_out: `[batch]` a row to leave out of each example's bag, or -1 for
                none; the row must be in the bag once (e.g. the training target in its
                user's history). Pooling then divides by the bag size less one.
            leave_out_weight: `[batch]` the left-out element's weight (with `weights`).

        Returns:
            `[batch, embedding_dim]`; empty bags give zeros. L2 penalties count every
            element of every example's bag, as if each example had its own bag.
        """
        flat = indices.flat_values
        segments = ragged_row_ids(indices)
        num_bags = indices.nrows()
        if leave_out is not None:
            # Only the examples that leave a row out look it up (no spurious rows).
            leave_out = tf.cast(tf.reshape(leave_out, [-1]), flat.dtype)
            leaving = tf.where(leave_out >= 0)[:, 0]
            flat = tf.concat([flat, tf.gather(leave_out, leaving)], axis=0)
        unique_rows, position = tf.unique(flat, out_idx=tf.int64)
        rows = self.embedding(unique_rows)
        n_flat = tf.shape(indices.flat_values, out_type=tf.int64)[0]
        in_bags = position[:n_flat]
        if weights is None:
            sums = tf.sparse.segment_sum(rows, in_bags, segments, num_segments=num_bags)
        else:
            weights = tf.cast(weights.flat_values, rows.dtype)
            sums = tf.math.unsorted_segment_sum(
                tf.gather(rows, in_bags) * weights[:, None], segments, num_bags
            )
        lengths = tf.cast(indices.row_lengths(), rows.dtype)
        squares = None
        if self.embeddings_l2 > 0:
            squares = tf.sparse.segment_sum(
                tf.reduce_sum(tf.square(rows), axis=-1), in_bags, segments, num_segments=num_bags
            )
        if bag_index is not None:
            bag_index = tf.reshape(bag_index, [-1])
            sums, lengths = tf.gather(sums, bag_index), tf.gather(lengths, bag_index)
            squares = None if squares is None else tf.gather(squares, bag_index)
        if leave_out is not None:
            left_rows = tf.gather(rows, position[n_flat:])
            left = left_rows
            if weights is not None:
                if leave_out_weight is None:
                    raise ValueError("A weighted bag with `leave_out` needs `leave_out_weight`.")
                scale = tf.gather(tf.reshape(leave_out_weight, [-1]), leaving)
                left = left_rows * tf.cast(scale, rows.dtype)[:, None]
            batch_shape = tf.shape(sums, out_type=tf.int64)[:1]
            sums -= tf.scatter_nd(leaving[:, None], left, tf.shape(sums, out_type=tf.int64))
            lengths -= tf.scatter_nd(
                leaving[:, None], tf.ones_like(leaving, rows.dtype), batch_shape
            )
            if squares is not None:
                squares -= tf.scatter_nd(
                    leaving[:, None], tf.reduce_sum(tf.square(left_rows), axis=-1), batch_shape
                )
        if squares is not None:
            # The penalty of every looked-up element, as `recsys.layers.Embedding` does.
            batch = tf.cast(tf.maximum(tf.shape(sums)[0], 1), rows.dtype)
            self.add_loss(self.embeddings_l2 * tf.reduce_sum(squares) / batch)
        if self.pooling == "sum":
            return sums
        if self.pooling == "sqrtn":
            return sums * tf.math.divide_no_nan(1.0, tf.sqrt(lengths))[:, None]
        return sums * tf.math.divide_no_nan(1.0, lengths)[:, None]

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            kind=self.kind,
            embedding_dim=self.embedding_dim,
            vocabulary=None if self.vocabulary is None else list(self.vocabulary),
            num_bins=self.num_bins,
            num_rows=self.num_rows_given,
            boundaries=self.boundaries,
            pooling=self.pooling,
            embeddings_initializer=keras.initializers.serialize(self.embeddings_initializer),
            embeddings_l2=self.embeddings_l2,
            oov_buckets=self.oov_buckets,
            salts=self.salts,
        )
        return config


def _squeeze_last(inputs: Any) -> Any:
    if isinstance(inputs, tf.RaggedTensor):
        raise ValueError("This feature takes one value per example; received a ragged tensor.")
    inputs = tf.convert_to_tensor(inputs)
    if inputs.shape.rank == 2 and inputs.shape[-1] == 1:
        return tf.squeeze(inputs, axis=-1)
    return inputs


@keras.saving.register_keras_serializable(package="recsys")
class Tower(keras.Model):
    """Embeds a dict of features, combines them and applies an MLP.

    Example:

    >>> tower = Tower(
    ...     features={"item_id": {"kind": "id", "vocabulary": ["a", "b"], "embedding_dim": 8},
    ...               "title": {"kind": "text", "num_bins": 100, "embedding_dim": 8}},
    ...     hidden_units=[16], output_dim=4, l2_normalize=True)
    >>> tower({"item_id": tf.constant(["a", "z"]),
    ...        "title": tf.constant(["Toy Story", "Heat"])}).shape
    TensorShape([2, 4])

    Args:
        features: `{feature name: FeatureEmbedding arguments}`; the name is the key of
            the input dict. At least one feature.
        hidden_units: Widths of the hidden layers of the MLP (may be empty).
        output_dim: Width of a last, linear layer, or None for no such layer.
        activation: Activation of the hidden layers.
        dropout: Dropout rate after each hidden layer, in [0, 1).
        combiner: ``"concat"`` concatenates the feature embeddings; ``"sum"`` adds them
            (all must then have the same `embedding_dim`).
        l2_normalize: Whether to L2-normalize the output.
        **kwargs: Base model arguments (`name`, ...).

    Input shape:
        A dict `{name: tensor}` with at least the configured features (others are
        ignored).

    Output shape:
        `[batch, output_dim]` (or the combined embedding width without an MLP).

    Raises:
        ValueError: An argument is missing, unknown or out of range.
    """

    def __init__(
        self,
        features: Mapping[str, Mapping[str, Any]],
        hidden_units: Sequence[int] = (),
        output_dim: int | None = None,
        activation: str = "relu",
        dropout: float = 0.0,
        combiner: str = "concat",
        l2_normalize: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not isinstance(features, Mapping) or not features:
            raise ValueError(
                "`features` must be a non-empty dict {name: FeatureEmbedding arguments}. "
                f"Received: features={features!r}"
            )
        if combiner not in COMBINERS:
            raise ValueError(
                f"`combiner` must be one of {COMBINERS}. Received: combiner={combiner!r}"
            )
        check_fraction("dropout", dropout, allow_zero=True)
        # Vocabularies and boundaries as tuples: not tracked, see `_strings_or_none`.
        self.feature_configs = {
            str(name): {
                key: tuple(value) if key in _LONG_VALUES and isinstance(value, list) else value
                for key, value in spec.items()
            }
            for name, spec in features.items()
        }
        self.hidden_units = [check_positive_int("hidden_units", u) for u in hidden_units]
        self.output_dim = (
            None if output_dim is None else check_positive_int("output_dim", output_dim)
        )
        self.activation = activation
        self.dropout = float(dropout)
        self.combiner = combiner
        self.l2_normalize = bool(l2_normalize)
        self.embedders = {}
        for name, spec in self.feature_configs.items():
            if not isinstance(spec, Mapping) or "kind" not in spec:
                raise ValueError(
                    f"Feature {name!r} must be a dict with at least 'kind'. Received: {spec!r}"
                )
            self.embedders[name] = FeatureEmbedding(**spec, name=f"{name}_embedding")
        if combiner == "sum":
            dims = {name: e.embedding_dim for name, e in self.embedders.items()}
            if len(set(dims.values())) != 1:
                raise ValueError(
                    f"combiner='sum' needs equal embedding_dim for all features. Received: {dims}"
                )
        self.mlp = []
        for units in self.hidden_units:
            self.mlp.append(keras.layers.Dense(units, activation=activation))
            if self.dropout > 0:
                self.mlp.append(keras.layers.Dropout(self.dropout))
        if self.output_dim is not None:
            self.mlp.append(keras.layers.Dense(self.output_dim))

    def embed(self, inputs: Mapping[str, Any]) -> list[Any]:
        """The embedding of each feature, in configuration order."""
        missing = [name for name in self.embedders if name not in inputs]
        if missing:
            raise ValueError(
                f"Tower {self.name!r} needs features {missing}; received keys {sorted(inputs)}."
            )
        return [embedder(inputs[name]) for name, embedder in self.embedders.items()]

    @no_autograph
    def call(self, inputs: Mapping[str, Any], training: bool | None = None) -> Any:
        embeddings = self.embed(inputs)
        if len(embeddings) == 1:
            x = embeddings[0]
        elif self.combiner == "sum":
            x = tf.add_n(embeddings)
        else:
            x = tf.concat(embeddings, axis=-1)
        for layer in self.mlp:
            x = layer(x, training=training) if isinstance(layer, keras.layers.Dropout) else layer(x)
        if self.l2_normalize:
            x = tf.math.l2_normalize(x, axis=-1)
        return x

    def get_config(self) -> dict[str, Any]:
        return _plain(
            {
                "name": self.name,
                "features": self.feature_configs,
                "hidden_units": self.hidden_units,
                "output_dim": self.output_dim,
                "activation": self.activation,
                "dropout": self.dropout,
                "combiner": self.combiner,
                "l2_normalize": self.l2_normalize,
            }
        )

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Tower:
        return cls(**config)


class _PresetTower(Tower):
    """A tower whose features are derived from its own constructor arguments.

    Subclasses store those arguments in ``self._tower_args``; the config holds them
    instead of the derived feature list.
    """

    _tower_args: dict[str, Any]

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        del config["features"]
        config.update(_plain(self._tower_args))
        return config


@keras.saving.register_keras_serializable(package="recsys")
class UserTower(_PresetTower):
    """A tower over a user's id and the items the user interacted with.

    Inputs: ``"user_id"`` (`[batch]` strings) and, with `item_vocabulary`,
    ``"history"`` (the user's items: `[batch, n]` padded with ``""``, or ragged).

    Example:

    >>> tower = UserTower(user_vocabulary=["u1", "u2"], item_vocabulary=["i1", "i2"],
    ...                   embedding_dim=8)
    >>> tower({"user_id": tf.constant(["u1"]),
    ...        "history": tf.ragged.constant([["i1", "i2"]])}).shape
    TensorShape([1, 16])

    Args:
        user_vocabulary: Known user ids, or None to drop the user-id feature.
        item_vocabulary: Item ids of the history feature, or None for no history.
        embedding_dim: Width of each feature embedding.
        user_num_bins: Hash user ids into this many rows instead of a vocabulary
            (when `user_vocabulary` is None and this is set).
        history_num_rows: Instead of `item_vocabulary`: the history is given as ragged
            row indices in `[0, history_num_rows)` (ids mapped to rows upstream).
        history_pooling: Pooling of the history: ``"mean"``, ``"sum"``, ``"sqrtn"``.
        embeddings_l2: L2 penalty on looked-up rows.
        embeddings_initializer: Initializer of the tables.
        hidden_units, output_dim, activation, dropout, combiner, l2_normalize:
            As in `Tower`.
        **kwargs: Base model arguments (`name`, ...).
    """

    def __init__(
        self,
        user_vocabulary: Sequence[Any] | None = None,
        item_vocabulary: Sequence[Any] | None = None,
        embedding_dim: int = 32,
        user_num_bins: int | None = None,
        history_num_rows: int | None = None,
        history_pooling: str = "sqrtn",
        embeddings_l2: float = 0.0,
        embeddings_initializer: Any = "uniform",
        hidden_units: Sequence[int] = (),
        output_dim: int | None = None,
        activation: str = "relu",
        dropout: float = 0.0,
        combiner: str = "concat",
        l2_normalize: bool = False,
        **kwargs: Any,
    ) -> None:
        kwargs.pop("features", None)
        common = {
            "embedding_dim": embedding_dim,
            "embeddings_l2": embeddings_l2,
            "embeddings_initializer": embeddings_initializer,
        }
        features: dict[str, dict[str, Any]] = {}
        if user_vocabulary is not None:
            features["user_id"] = {"kind": "id", "vocabulary": list(user_vocabulary), **common}
        elif user_num_bins is not None:
            features["user_id"] = {"kind": "id", "num_bins": user_num_bins, **common}
        if item_vocabulary is not None and history_num_rows is not None:
            raise ValueError(
                "Pass `item_vocabulary` (history of item ids) or `history_num_rows` (history "
                f"of row indices), not both. Received: history_num_rows={history_num_rows!r}"
            )
        if item_vocabulary is not None:
            features["history"] = {
                "kind": "multi_hot",
                "vocabulary": list(item_vocabulary),
                "pooling": history_pooling,
                **common,
            }
        elif history_num_rows is not None:
            features["history"] = {
                "kind": "multi_hot",
                "num_rows": history_num_rows,
                "pooling": history_pooling,
                **common,
            }
        if not features:
            raise ValueError(
                "UserTower needs a user-id feature (user_vocabulary or user_num_bins) or a "
                "history feature (item_vocabulary). Received none of them."
            )
        self._tower_args = {
            "user_vocabulary": _strings_or_none(user_vocabulary),
            "item_vocabulary": _strings_or_none(item_vocabulary),
            "embedding_dim": embedding_dim,
            "user_num_bins": user_num_bins,
            "history_num_rows": history_num_rows,
            "history_pooling": history_pooling,
            "embeddings_l2": embeddings_l2,
            "embeddings_initializer": embeddings_initializer,
        }
        super().__init__(
            features,
            hidden_units=hidden_units,
            output_dim=output_dim,
            activation=activation,
            dropout=dropout,
            combiner=combiner,
            l2_normalize=l2_normalize,
            **kwargs,
        )


@keras.saving.register_keras_serializable(package="recsys")
class ItemTower(_PresetTower):
    """A tower over an item's id and, optionally, its genres, year and title.

    Inputs: ``"item_id"`` (`[batch]` strings) and, when configured, ``"genres"``
    (`[batch, n]` padded with ``""`` or ragged), ``"year"`` (`[batch]` numbers) and
    ``"title"`` (`[batch]` strings).

    Example:

    >>> tower = ItemTower(item_vocabulary=["i1", "i2"], genre_vocabulary=["Drama"],
    ...                   embedding_dim=8, output_dim=4)
    >>> tower({"item_id": tf.constant(["i2"]),
    ...        "genres": tf.ragged.constant([["Drama"]])}).shape
    TensorShape([1, 4])

    Args:
        item_vocabulary: Known item ids, or None to hash them into `item_num_bins`.
        genre_vocabulary: Known genres, or None for no genre feature.
        year_boundaries: Bucket boundaries of the year feature, or None for none.
        title_num_bins: Hash title tokens into this many rows, or None for no title.
        embedding_dim: Width of each feature embedding.
        item_num_bins: Rows of the hashed item id (when `item_vocabulary` is None).
        embeddings_l2: L2 penalty on looked-up rows.
        embeddings_initializer: Initializer of the tables.
        hidden_units, output_dim, activation, dropout, combiner, l2_normalize:
            As in `Tower`.
        **kwargs: Base model arguments (`name`, ...).
    """

    def __init__(
        self,
        item_vocabulary: Sequence[Any] | None = None,
        genre_vocabulary: Sequence[str] | None = None,
        year_boundaries: Sequence[float] | None = None,
        title_num_bins: int | None = None,
        embedding_dim: int = 32,
        item_num_bins: int | None = None,
        embeddings_l2: float = 0.0,
        embeddings_initializer: Any = "uniform",
        hidden_units: Sequence[int] = (),
        output_dim: int | None = None,
        activation: str = "relu",
        dropout: float = 0.0,
        combiner: str = "concat",
        l2_normalize: bool = False,
        **kwargs: Any,
    ) -> None:
        kwargs.pop("features", None)
        common = {
            "embedding_dim": embedding_dim,
            "embeddings_l2": embeddings_l2,
            "embeddings_initializer": embeddings_initializer,
        }
        if item_vocabulary is not None:
            item = {"kind": "id", "vocabulary": list(item_vocabulary), **common}
        elif item_num_bins is not None:
            item = {"kind": "id", "num_bins": item_num_bins, **common}
        else:
            raise ValueError(
                "ItemTower needs `item_vocabulary` or `item_num_bins`. Received neither."
            )
        features: dict[str, dict[str, Any]] = {"item_id": item}
        if genre_vocabulary is not None:
            features["genres"] = {
                "kind": "multi_hot",
                "vocabulary": list(genre_vocabulary),
                "pooling": "mean",
                **common,
            }
        if year_boundaries is not None:
            features["year"] = {"kind": "bucketized", "boundaries": list(year_boundaries), **common}
        if title_num_bins is not None:
            features["title"] = {"kind": "text", "num_bins": title_num_bins, **common}
        self._tower_args = {
            "item_vocabulary": _strings_or_none(item_vocabulary),
            "genre_vocabulary": None if genre_vocabulary is None else list(genre_vocabulary),
            "year_boundaries": None
            if year_boundaries is None
            else [float(b) for b in year_boundaries],
            "title_num_bins": title_num_bins,
            "embedding_dim": embedding_dim,
            "item_num_bins": item_num_bins,
            "embeddings_l2": embeddings_l2,
            "embeddings_initializer": embeddings_initializer,
        }
        super().__init__(
            features,
            hidden_units=hidden_units,
            output_dim=output_dim,
            activation=activation,
            dropout=dropout,
            combiner=combiner,
            l2_normalize=l2_normalize,
            **kwargs,
        )
