"""Per-step sampling of long bags (user histories) during training.

A user's history pooled in the user tower costs the tower its length at every step the
user appears in, and the heaviest users appear in most batches: on MovieLens-1M a batch
of 2,048 examples touched about 1,500 users holding 420,000 history items, and the
gradient of that pooling (`SparseSegmentSumGrad`) was the step's largest cost. Keeping
about `size` of each long history per step, a different sample at every step, bounds
that cost while every item still takes part over the epoch; evaluation and serving pool
whole histories.

The sample is a keyed hash of (owner, member, step), not a random op: a training example
can then tell whether its own target item is in its user's sample (to leave it out),
and a resumed run (the step is the optimizer's checkpointed iteration count) draws the
same samples as an uninterrupted one.
"""

from __future__ import annotations

from typing import Any

from recsys._tf import ragged_row_ids, tf
from recsys.checks import check_positive_int

__all__ = ["BagSampler"]

_MASK = 0x7FFFFFFF  # hashes stay in 31 bits: every product below fits in an int64


def _mix(x: Any) -> Any:
    """A 31-bit integer mixer (the "hash prospector" xorshift-multiply rounds)."""
    x = tf.bitwise.bitwise_and((tf.bitwise.right_shift(x, 16) ^ x) * 0x45D9F3B, _MASK)
    x = tf.bitwise.bitwise_and((tf.bitwise.right_shift(x, 16) ^ x) * 0x45D9F3B, _MASK)
    return tf.bitwise.right_shift(x, 16) ^ x


def unit_hash(owners: Any, members: Any, step: Any) -> Any:
    """Deterministic pseudo-random floats in [0, 1) for (owner, member, step) triples."""
    mask = tf.constant(_MASK, tf.int64)
    owners = tf.bitwise.bitwise_and(tf.cast(owners, tf.int64), mask)
    members = tf.bitwise.bitwise_and(tf.cast(members, tf.int64), mask)
    step = tf.bitwise.bitwise_and(tf.cast(step, tf.int64), mask)
    key = _mix(_mix(_mix(members) ^ owners) ^ _mix(step + 0x2545F491))
    return tf.cast(key, tf.float32) * (1.0 / 2**31)


class BagSampler:
    """Keeps about `size` elements of each bag per training step.

    An element of a bag of length n is kept with probability min(1, size / n), decided
    by a hash of (owner, member, step): short bags stay whole, long ones keep `size`
    elements on average, and the same (owner, member, step) is always decided the same
    way, so :meth:`keeps` tells a caller whether a given member made it into the sample.

    Example:
        >>> sampler = BagSampler(size=2)
        >>> bags = tf.ragged.constant([[1, 2, 3, 4, 5, 6], [7]], dtype=tf.int64)
        >>> owners = tf.constant([10, 11], tf.int64)
        >>> sampled = sampler.sample(bags, owners, step=0)
        >>> lengths = sampled.row_lengths()  # about 2 of the 6, and the short bag whole

    Args:
        size: Elements kept per bag on average (bags up to this long stay whole).

    Raises:
        ValueError: `size` is not a positive integer.
    """

    def __init__(self, size: int) -> None:
        self.size = check_positive_int("size", size)

    def _probability(self, lengths: Any) -> Any:
        lengths = tf.cast(lengths, tf.float32)
        return tf.minimum(1.0, float(self.size) / tf.maximum(lengths, 1.0))

    def sample(self, bags: Any, owners: Any, step: Any) -> Any:
        """The sampled bags: ragged `[bags, None]`, the kept members in their order.

        Args:
            bags: Ragged `[bags, None]` integer members.
            owners: `[bags]` integer owner of each bag (e.g. the user's row).
            step: Scalar integer: the training step (a new sample at each step).
        """
        rows = ragged_row_ids(bags)
        members = bags.flat_values
        owner = tf.gather(tf.cast(owners, tf.int64), rows)
        threshold = tf.gather(self._probability(bags.row_lengths()), rows)
        keep = unit_hash(owner, members, step) < threshold
        return tf.RaggedTensor.from_value_rowids(
            tf.boolean_mask(members, keep), tf.boolean_mask(rows, keep), nrows=bags.nrows()
        )

    def keeps(self, owners: Any, members: Any, lengths: Any, step: Any) -> Any:
        """`[batch]` bool: whether :meth:`sample` keeps each (owner, member) at `step`.

        Args:
            owners: `[batch]` owners, as given to :meth:`sample`.
            members: `[batch]` members.
            lengths: `[batch]` the length of each owner's whole bag.
            step: Scalar integer step, as given to :meth:`sample`.
        """
        return unit_hash(owners, members, step) < self._probability(lengths)
