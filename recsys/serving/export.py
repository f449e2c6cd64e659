"""The retrieval SavedModel: top-k signatures that exclude seen items and serve new users.

`export_retrieval` writes a SavedModel whose graphs use only stock TensorFlow ops,
in TensorFlow Serving's versioned layout (``EXPORT_DIR/<version>/saved_model.pb``),
with these signatures:

===================  ========================================  =========================
signature            inputs                                    outputs
===================  ========================================  =========================
``serving_default``  ``user_id`` string [None], ``k`` int32 []  ``item_ids`` string
                                                               [None, k], ``scores``
                                                               float32 [None, k]
``unfiltered``       same                                      same
``by_history``       ``history`` string [None, None] (item     same
                     ids padded with ""), ``k`` int32 []
``item_embeddings``  ``item_id`` string [None]                 ``embeddings`` [None, d]
``user_embeddings``  ``user_id`` string [None]                 ``embeddings`` [None, d]
===================  ========================================  =========================

- ``serving_default`` leaves out every item the stored user interacted with (the CSR
  given at export, e.g. training and validation interactions); ``unfiltered`` does
  not; ``by_history`` leaves out the history's own items. A user id not among the
  stored users gets the answer for an empty history, never an error.
- ``k`` is optional with a default (the ``k`` given at export, 10 unless set): the
  SignatureDef records it in its ``defaults`` map and the graph feeds it through a
  ``PlaceholderWithDefault``. TensorFlow Serving's Predict (``predict_util.cc``
  accepts requests missing inputs that have defaults), TF1 ``Session.run`` and
  ``saved_model_cli`` may omit it. ``tf.saved_model.load(path).signatures[name]``
  may not (a restored concrete function has no defaults): pass ``k=tf.constant(10)``
  there, or call the restored functions of the same names, e.g.
  ``loaded.serving_default(user_ids)``, which take ``k`` optionally.
- ``k`` above the catalogue size is clipped; when exclusions leave fewer than ``k``
  items, the last entries are ``""`` with score ``-inf``.
- ``item_embeddings`` returns zeros for unknown item ids; ``user_embeddings`` returns
  the query vectors ``serving_default`` scores with (the empty-history vector for an
  unknown user).
- The loaded object also holds ``user_ids`` (the stored users, e.g. to score all of
  them) and ``item_ids`` (``""`` then the catalogue) as string variables.
"""

from __future__ import annotations

import numbers
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recsys._tf import tf
from recsys.serving.exact import ExactIndex
from recsys.serving.partitioned import PartitionedIndex
from recsys.serving.topk import TopK
from recsys.serving.user_items import UserItems

__all__ = [
    "SIGNATURES",
    "RetrievalServingModule",
    "export_retrieval",
    "latest_version",
    "save_versioned",
]

SIGNATURES = ("serving_default", "unfiltered", "by_history", "item_embeddings", "user_embeddings")

QueryFn = Callable[[Any], Any]


def _unique_strings(name: str, values: Sequence[Any]) -> list[str]:
    strings = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]
    if len(set(strings)) != len(strings):
        raise ValueError(f"`{name}` must not repeat ids. Received {len(strings)} ids with repeats.")
    if "" in strings:
        raise ValueError(
            f'`{name}` must not contain "": it pads histories and marks missing items. '
            f"Received an empty id at position {strings.index('')}."
        )
    return strings


def _lookup_table(keys: list[str], name: str) -> Any:
    initializer = tf.lookup.KeyValueTensorInitializer(
        tf.constant(keys, dtype=tf.string, shape=[len(keys)]),
        tf.range(len(keys), dtype=tf.int64),
    )
    return tf.lookup.StaticHashTable(initializer, default_value=-1, name=name)


class RetrievalServingModule(tf.Module):
    """The `tf.Module` behind `export_retrieval`; its functions are the signatures.

    Example:

    >>> module = RetrievalServingModule(item_ids=["a", "b"], index=ExactIndex(np.eye(2)),
    ...     user_query_fn=lambda ids: tf.ones([tf.size(ids), 2]),
    ...     history_query_fn=lambda h: tf.ones([tf.shape(h)[0], 2]),
    ...     user_ids=["u1"], seen=UserItems.from_pairs([0], [1], num_users=1))
    >>> module.serving_default(tf.constant(["u1", "new"]))["item_ids"].numpy().tolist()
    [[b'a', b''], [b'a', b'b']]

    Args:
        item_ids: The catalogue's item ids; row ``i`` of the index is ``item_ids[i]``.
        index: An `ExactIndex` or `PartitionedIndex` over the catalogue's vectors.
        user_query_fn: Maps stored user ids (`tf.string` ``[n]``) to query vectors
            ``[n, d]``. Only ever called with ids from ``user_ids``.
        history_query_fn: Maps histories (`tf.string` ``[n, L]``, item ids padded with
            ``""``, possibly ``L == 0``) to query vectors ``[n, d]``. It must return
            finite vectors for empty histories: that is the unknown users' answer.
        user_ids: The stored users; row ``u`` of ``seen`` belongs to ``user_ids[u]``.
        seen: The stored users' item rows to exclude in ``serving_default``.
        k: The default ``k`` of the top-k signatures.
        track: Objects whose variables the query functions read (e.g. the Keras
            model); attached to the module so the SavedModel saves them.
        name: Module name.

    Raises:
        ValueError: Ids repeat or are empty, sizes disagree, or ``k`` is not positive.
    """

    def __init__(
        self,
        *,
        item_ids: Sequence[Any],
        index: ExactIndex | PartitionedIndex,
        user_query_fn: QueryFn,
        history_query_fn: QueryFn,
        user_ids: Sequence[Any],
        seen: UserItems,
        k: int = 10,
        track: Sequence[Any] = (),
        name: str = "retrieval_serving",
    ) -> None:
        super().__init__(name=name)
        items = _unique_strings("item_ids", item_ids)
        users = _unique_strings("user_ids", user_ids)
        if not isinstance(index, ExactIndex | PartitionedIndex):
            raise ValueError(
                "`index` must be an ExactIndex or a PartitionedIndex. Received: "
                f"{type(index).__name__}."
            )
        if index.num_items != len(items):
            raise ValueError(
                f"The index holds {index.num_items} items but `item_ids` has {len(items)}."
            )
        if not isinstance(seen, UserItems) or seen.num_users != len(users):
            got = seen.num_users if isinstance(seen, UserItems) else type(seen).__name__
            raise ValueError(
                f"`seen` must be a UserItems with one row per stored user ({len(users)}). "
                f"Received: {got}."
            )
        if seen.nnz and int(seen.rows.max()) >= len(items):
            raise ValueError(
                f"`seen` names item row {int(seen.rows.max())}, beyond the {len(items)} items."
            )
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
            raise ValueError(f"`k` must be a positive integer. Received: k={k!r}")
        for label, fn in (("user_query_fn", user_query_fn), ("history_query_fn", history_query_fn)):
            if not callable(fn):
                raise ValueError(f"`{label}` must be callable. Received: {fn!r}")
        self.index = index
        self.default_k = int(k)
        self.dim = index.dim
        self.tracked = list(track)
        self._user_query_fn = user_query_fn
        self._history_query_fn = history_query_fn
        self._item_table = _lookup_table(items, "item_rows")
        self._user_table = _lookup_table(users, "user_rows")
        # Row 0 is "" so that row -1 (no item) maps to it after a shift by one.
        self.item_ids = tf.Variable(["", *items], trainable=False, name="item_ids")
        # The stored users, for batch inference over all of them from the export alone.
        self.user_ids = tf.Variable(
            users, dtype=tf.string, shape=[len(users)], trainable=False, name="user_ids"
        )
        self.seen_offsets = tf.Variable(seen.offsets, trainable=False, name="seen_offsets")
        self.seen_rows = tf.Variable(seen.rows, trainable=False, name="seen_rows")
        self._define_functions(tf.constant(self.default_k, tf.int32))

    def _define_functions(self, default_k: Any) -> None:
        # The tensor default of `k` is what tf.saved_model.save records in the
        # SignatureDef's `defaults` (and feeds through a PlaceholderWithDefault).
        user_id = tf.TensorSpec([None], tf.string, name="user_id")
        k_spec = tf.TensorSpec([], tf.int32, name="k")

        @tf.function(input_signature=[user_id, k_spec])
        def serving_default(user_id: Any, k: Any = default_k) -> dict[str, Any]:
            """Top-k items per user id, without the stored user's seen items."""
            return self._recommend_users(user_id, k, exclude_seen=True)

        @tf.function(input_signature=[user_id, k_spec])
        def unfiltered(user_id: Any, k: Any = default_k) -> dict[str, Any]:
            """Top-k items per user id, seen items included."""
            return self._recommend_users(user_id, k, exclude_seen=False)

        @tf.function(
            input_signature=[tf.TensorSpec([None, None], tf.string, name="history"), k_spec]
        )
        def by_history(history: Any, k: Any = default_k) -> dict[str, Any]:
            """Top-k items per history (item ids padded with ""), without its items."""
            queries = tf.cast(self._history_query_fn(history), tf.float32)
            rows = self._item_table.lookup(history)  # -1 for "" and unknown ids
            return self._answer(self.index.search(queries, k, exclude=rows))

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="item_id")])
        def item_embeddings(item_id: Any) -> dict[str, Any]:
            """The catalogue vector of each item id (zeros for unknown ids)."""
            rows = self._item_table.lookup(item_id)
            vectors = self.index.vectors(tf.maximum(rows, 0))
            return {"embeddings": tf.where(rows[:, None] >= 0, vectors, tf.zeros_like(vectors))}

        @tf.function(input_signature=[user_id])
        def user_embeddings(user_id: Any) -> dict[str, Any]:
            """The query vector of each user id (an empty history's for unknown ids)."""
            return {"embeddings": self._user_queries(user_id, self._user_table.lookup(user_id))}

        self.serving_default = serving_default
        self.unfiltered = unfiltered
        self.by_history = by_history
        self.item_embeddings = item_embeddings
        self.user_embeddings = user_embeddings

    def signatures(self) -> dict[str, Any]:
        """The signatures to save, by name (`SIGNATURES`)."""
        return {name: getattr(self, name) for name in SIGNATURES}

    def _user_queries(self, user_id: Any, user_rows: Any) -> Any:
        # Known users go through the user function, unknown ones through the history
        # function with an empty history: the user function never sees an id it
        # cannot look up.
        known = tf.cast(user_rows >= 0, tf.int32)
        ids = tf.dynamic_partition(user_id, known, 2)
        positions = tf.dynamic_partition(tf.range(tf.size(user_id)), known, 2)
        empty = tf.fill(tf.stack([tf.size(ids[0]), 0]), "")
        new_queries = tf.cast(self._history_query_fn(empty), tf.float32)
        known_queries = tf.cast(self._user_query_fn(ids[1]), tf.float32)
        return tf.ensure_shape(
            tf.dynamic_stitch(positions, [new_queries, known_queries]), [None, self.dim]
        )

    def _recommend_users(self, user_id: Any, k: Any, exclude_seen: bool) -> dict[str, Any]:
        user_rows = self._user_table.lookup(user_id)
        queries = self._user_queries(user_id, user_rows)
        exclude = None
        if exclude_seen:
            known = user_rows >= 0
            row = tf.maximum(user_rows, 0)
            starts = tf.gather(self.seen_offsets, row)
            stops = tf.where(known, tf.gather(self.seen_offsets, row + 1), starts)
            positions = tf.ragged.range(starts, stops)
            exclude = positions.with_flat_values(tf.gather(self.seen_rows, positions.flat_values))
        return self._answer(self.index.search(queries, k, exclude=exclude))

    def _answer(self, top: TopK) -> dict[str, Any]:
        return {"item_ids": tf.gather(self.item_ids, top.rows + 1), "scores": top.scores}


def latest_version(export_dir: str | os.PathLike) -> Path:
    """The SavedModel directory to load from ``export_dir``.

    The highest numeric version folder holding a ``saved_model.pb`` (TensorFlow
    Serving's rule), or ``export_dir`` itself if it is a SavedModel.

    Raises:
        FileNotFoundError: No SavedModel there.
    """
    root = Path(export_dir)
    versions = (
        [p for p in root.iterdir() if p.name.isdigit() and (p / "saved_model.pb").exists()]
        if root.is_dir()
        else []
    )
    if versions:
        return max(versions, key=lambda p: int(p.name))
    if (root / "saved_model.pb").exists():
        return root
    raise FileNotFoundError(
        f"No SavedModel in {root}: expected {root}/<version>/saved_model.pb (or "
        f"{root}/saved_model.pb). Export one with recsys.serving.export_retrieval."
    )


def save_versioned(
    module: tf.Module,
    export_dir: str | os.PathLike,
    signatures: dict[str, Any],
    version: int | None = None,
) -> Path:
    """Saves ``module`` as ``export_dir/<version>`` atomically; returns that path.

    The SavedModel is written into a hidden temporary folder next to the target and
    renamed into place, so a server polling ``export_dir`` (TensorFlow Serving loads
    the highest numeric folder and ignores others) never sees half a model.

    Args:
        module: What to save.
        export_dir: The model's base folder (created if missing).
        signatures: Signature name -> `tf.function`.
        version: Positive integer; default one more than the highest existing.

    Raises:
        FileExistsError: That version exists already.
        ValueError: ``version`` is not a positive integer.
    """
    root = Path(export_dir)
    root.mkdir(parents=True, exist_ok=True)
    if version is None:
        existing = [int(p.name) for p in root.iterdir() if p.name.isdigit()]
        version = max(existing, default=0) + 1
    if isinstance(version, bool) or not isinstance(version, numbers.Integral) or version < 1:
        raise ValueError(f"`version` must be a positive integer. Received: version={version!r}")
    target = root / str(int(version))
    if target.exists():
        raise FileExistsError(
            f"{target} exists already. Pass another `version`, or leave it None for the next one."
        )
    scratch = Path(tempfile.mkdtemp(prefix=f".{version}-incomplete-", dir=root))
    try:
        tf.saved_model.save(module, str(scratch), signatures=signatures)
        os.rename(scratch, target)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return target


def export_retrieval(
    export_dir: str | os.PathLike,
    *,
    item_ids: Sequence[Any],
    item_vectors: Any = None,
    user_query_fn: QueryFn,
    history_query_fn: QueryFn,
    user_ids: Sequence[Any],
    seen: UserItems,
    k: int = 10,
    index: str | ExactIndex | PartitionedIndex = "exact",
    track: Sequence[Any] = (),
    version: int | None = None,
) -> Path:
    """Writes the retrieval SavedModel (see this module's docstring); returns its folder.

    Example:

    >>> path = export_retrieval("/tmp/export", item_ids=items, item_vectors=vectors,
    ...     user_query_fn=model.user_embeddings, history_query_fn=history_vectors,
    ...     user_ids=users, seen=UserItems.from_ids(train.user_id, train.item_id,
    ...     users, items), k=10, track=[model])   # -> /tmp/export/1
    >>> tf.saved_model.load(str(path)).serving_default(tf.constant(["42"]))["item_ids"]

    Args:
        export_dir: Base folder; the model goes to ``export_dir/<version>``.
        item_ids, user_query_fn, history_query_fn, user_ids, seen, k, track: See
            `RetrievalServingModule`.
        item_vectors: float32 ``[N, d]``, row ``i`` is ``item_ids[i]``; needed when
            ``index`` is a name (an index object holds its vectors).
        index: ``"exact"`` (blockwise brute force), ``"partitioned"`` (k-means
            partitions with default sizes, see `PartitionedIndex.build`) or a built
            `ExactIndex` / `PartitionedIndex` over ``item_vectors``.
        version: See `save_versioned`.

    Raises:
        ValueError: An argument is invalid (see `RetrievalServingModule`).
        FileExistsError: The version exists already.
    """
    if isinstance(index, str):
        if item_vectors is None:
            raise ValueError(
                f"`item_vectors` is needed to build the {index!r} index. Received: None."
            )
        if index == "exact":
            index = ExactIndex(item_vectors)
        elif index == "partitioned":
            index = PartitionedIndex.build(np.asarray(item_vectors, dtype=np.float32))
        else:
            raise ValueError(
                "`index` must be 'exact', 'partitioned' or an index object. "
                f"Received: index={index!r}"
            )
    module = RetrievalServingModule(
        item_ids=item_ids,
        index=index,
        user_query_fn=user_query_fn,
        history_query_fn=history_query_fn,
        user_ids=user_ids,
        seen=seen,
        k=k,
        track=track,
    )
    return save_versioned(module, export_dir, module.signatures(), version)
