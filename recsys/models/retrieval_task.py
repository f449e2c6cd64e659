"""TFRS's in-batch softmax retrieval task with a leaner training loss."""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow_recommenders as tfrs

from recsys._tf import tf

__all__ = ["InBatchRetrieval"]

# What tfrs.layers.loss.RemoveAccidentalHits adds to an accidental hit's logit.
_MIN_FLOAT = float(np.finfo(np.float32).min / 100.0)


class InBatchRetrieval(tfrs.tasks.Retrieval):
    """`tfrs.tasks.Retrieval` whose training loss skips the dense `[B, B]` labels.

    TFRS builds an identity matrix of labels, a cast equality matrix for accidental
    hits and a dense softmax cross-entropy over every pair of the batch; each is a
    pass over batch x batch floats (4M at a batch of 2,048). When no metrics are
    asked for (training), this task computes the same loss with integer labels
    (`sparse_softmax_cross_entropy_with_logits`) and masks accidental hits with one
    `where`; everything else (metrics, sample weights, score masks, hard negatives, a
    custom loss) goes to TFRS's own `call`. Same values up to float rounding.

    Example:
        >>> task = InBatchRetrieval(temperature=0.3, remove_accidental_hits=True)
        >>> loss = task(users, items, candidate_ids=item_rows, compute_metrics=False)

    Args:
        temperature: Scores are divided by it (None: not scaled).
        remove_accidental_hits: Mask negatives whose id is the row's positive id.
        name: Layer name.
    """

    def __init__(
        self,
        temperature: float | None = None,
        remove_accidental_hits: bool = False,
        name: str | None = None,
    ) -> None:
        super().__init__(
            temperature=temperature, remove_accidental_hits=remove_accidental_hits, name=name
        )

    def call(
        self,
        query_embeddings: Any,
        candidate_embeddings: Any,
        sample_weight: Any = None,
        candidate_sampling_probability: Any = None,
        candidate_ids: Any = None,
        compute_metrics: bool = True,
        compute_batch_metrics: bool = True,
        score_mask: Any = None,
    ) -> Any:
        fast = (
            not compute_metrics
            and sample_weight is None
            and score_mask is None
            and self._num_hard_negatives is None
            and len(query_embeddings.shape) == 2
        )
        if not fast:
            return super().call(
                query_embeddings,
                candidate_embeddings,
                sample_weight=sample_weight,
                candidate_sampling_probability=candidate_sampling_probability,
                candidate_ids=candidate_ids,
                compute_metrics=compute_metrics,
                compute_batch_metrics=compute_batch_metrics,
                score_mask=score_mask,
            )
        scores = tf.linalg.matmul(query_embeddings, candidate_embeddings, transpose_b=True)
        if self._temperature is not None:
            scores = scores / self._temperature
        if candidate_sampling_probability is not None:
            clipped = tf.clip_by_value(candidate_sampling_probability, 1e-6, 1.0)
            scores = scores - tf.math.log(clipped)
        rows = tf.range(tf.shape(scores)[0])
        if self._remove_accidental_hits:
            if candidate_ids is None:
                raise ValueError(
                    "When accidental hit removal is enabled, candidate ids must be supplied."
                )
            ids = tf.reshape(candidate_ids, [-1])
            positives = tf.gather(ids, rows)
            columns = tf.range(tf.shape(scores)[1])
            hits = tf.logical_and(
                tf.equal(positives[:, None], ids[None, :]),
                tf.not_equal(rows[:, None], columns[None, :]),
            )
            scores = tf.where(hits, scores + _MIN_FLOAT, scores)
        losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=rows, logits=scores)
        return tf.reduce_sum(losses)
