"""`InBatchRetrieval`: TFRS's retrieval loss, computed with integer labels in training."""

from __future__ import annotations

import numpy as np
import pytest

import recsys  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
from recsys._tf import tf
from recsys.models.retrieval_task import InBatchRetrieval, tfrs  # tfrs after recsys: Keras 2


def _inputs(queries=48, candidates=48, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((queries, 8)).astype("float32")
    c = rng.standard_normal((candidates, 8)).astype("float32")
    ids = rng.integers(0, 12, candidates)  # many accidental hits
    prob = rng.uniform(1e-7, 0.5, candidates).astype("float32")  # some clipped at 1e-6
    return q, c, ids, prob


def _numpy_loss(q, c, ids, prob, temperature, remove_hits, correct):
    scores = (q.astype(np.float64) @ c.T.astype(np.float64)) / temperature
    if correct:
        scores -= np.log(np.clip(prob, 1e-6, 1.0))[None, :]
    n = len(q)
    if remove_hits:
        hits = (ids[:n, None] == ids[None, :]) & ~np.eye(n, len(c), dtype=bool)
        scores = np.where(hits, -np.inf, scores)
    top = scores.max(1, keepdims=True)
    log_z = top[:, 0] + np.log(np.exp(scores - top).sum(1))
    return float(np.sum(log_z - scores[np.arange(n), np.arange(n)]))


@pytest.mark.parametrize("remove_hits", [True, False])
@pytest.mark.parametrize("correct", [True, False])
@pytest.mark.parametrize("shape", [(48, 48), (32, 80)])  # extra candidates: extra negatives
def test_loss_and_gradients_equal_tfrs_and_numpy(remove_hits, correct, shape):
    q, c, ids, prob = _inputs(*shape)
    kwargs = {"temperature": 0.3, "remove_accidental_hits": remove_hits}
    ours, theirs = InBatchRetrieval(**kwargs), tfrs.tasks.Retrieval(**kwargs)
    args = {"candidate_ids": tf.constant(ids), "compute_metrics": False}
    if correct:
        args["candidate_sampling_probability"] = tf.constant(prob)
    results = []
    for task in (ours, theirs):
        qv, cv = tf.Variable(q), tf.Variable(c)
        with tf.GradientTape() as tape:
            loss = task(qv, cv, compute_batch_metrics=False, **args)
        results.append((float(loss), *(g.numpy() for g in tape.gradient(loss, [qv, cv]))))
    (ours_loss, *ours_grads), (their_loss, *their_grads) = results
    assert ours_loss == pytest.approx(their_loss, rel=1e-5)
    assert ours_loss == pytest.approx(
        _numpy_loss(q, c, ids, prob, 0.3, remove_hits, correct), rel=1e-4
    )
    for mine, reference in zip(ours_grads, their_grads, strict=True):
        np.testing.assert_allclose(mine, reference, rtol=1e-4, atol=1e-5)


def test_metrics_and_weights_go_through_tfrs():
    q, c, ids, _ = _inputs()
    weights = tf.constant(np.linspace(0.5, 2.0, len(q)).astype("float32"))
    kwargs = {"temperature": 0.5, "remove_accidental_hits": True}
    ours = InBatchRetrieval(**kwargs)(q, c, sample_weight=weights, candidate_ids=ids)
    theirs = tfrs.tasks.Retrieval(**kwargs)(q, c, sample_weight=weights, candidate_ids=ids)
    assert float(ours) == pytest.approx(float(theirs), rel=1e-6)


def test_accidental_hit_removal_needs_ids():
    q, c, _, _ = _inputs()
    with pytest.raises(ValueError, match="candidate ids must be supplied"):
        InBatchRetrieval(remove_accidental_hits=True)(q, c, compute_metrics=False)
