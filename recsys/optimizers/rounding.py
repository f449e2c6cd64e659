"""Rounding float32 optimizer state to 16 bits: to nearest, or stochastically.

An Adam second moment moves by `(1 - beta_2) * (g**2 - v)` per step: with
`beta_2 = 0.999` that is 0.1% of `v`, under half a bfloat16 step (2**-8 of the value,
0.39%). Rounded to nearest, such a change is lost, so a bfloat16 `v` stops following
smaller gradients and only grows on gradients about 3x its value. Stochastic
rounding picks the upper or lower neighbour with probability proportional to
closeness, so the stored value is right on average and small changes accumulate.

The random bits come from a counter-based hash of (seed, row id, column), not from a
random-number generator's state: the same step rounds the same row the same way
whichever code path, batch order or padding produced it, a checkpoint restored
mid-training continues bit for bit, and replicas of a mirrored variable stay equal.
`recsys.optimizers.SparseAdam(moment_dtype=...)` uses this module.
"""

from __future__ import annotations

from typing import Any

from recsys._tf import tf

__all__ = ["round_to", "rounding_bits", "step_seed", "widen"]

_U32 = tf.uint32


def _u32(value: int) -> Any:
    return tf.constant(value, _U32)


def _fmix32(h: Any) -> Any:
    """MurmurHash3's 32-bit finalizer: every input bit flips each output bit ~50%."""
    h = tf.bitwise.bitwise_xor(h, tf.bitwise.right_shift(h, _u32(16)))
    h = h * _u32(0x85EBCA6B)
    h = tf.bitwise.bitwise_xor(h, tf.bitwise.right_shift(h, _u32(13)))
    h = h * _u32(0xC2B2AE35)
    return tf.bitwise.bitwise_xor(h, tf.bitwise.right_shift(h, _u32(16)))


def step_seed(step: Any, stream: int) -> Any:
    """A uint32 seed for one step (`step`, an integer tensor) of one stream (an int).

    Example:

    >>> seed = step_seed(tf.constant(3, tf.int64), stream=0)
    >>> seed.dtype == tf.uint32
    True
    """
    step = tf.cast(tf.cast(step, tf.int64) % (1 << 32), _U32)
    return _fmix32(step * _u32(0x9E3779B9) + _u32((stream * 0x632BE5AB + 0x165667B1) % (1 << 32)))


def rounding_bits(seed: Any, ids: Any, row_size: int) -> Any:
    """32 random bits (uint32 `[len(ids), row_size]`) for each element of rows `ids`.

    A hash of (seed, id, column): equal ids get equal bits, whatever their position.

    Example:

    >>> bits = rounding_bits(step_seed(tf.constant(1), 0), tf.constant([4, 9, 4]), 2)
    >>> bool(tf.reduce_all(bits[0] == bits[2]))
    True
    """
    rows = _fmix32(tf.cast(ids, _U32) * _u32(0xC2B2AE35) + seed)
    columns = tf.cast(tf.range(row_size), _U32) * _u32(0x27D4EB2F)
    return _fmix32(rows[:, tf.newaxis] + columns[tf.newaxis, :])


def round_to(x: Any, dtype: Any, bits: Any = None) -> Any:
    """`x` (float32) in the 16-bit float `dtype`, to nearest or stochastically.

    With `bits` (uint32, the low 16 used, same shape as `x`), rounds stochastically:
    the neighbour of larger magnitude is taken when `(bits + 0.5) / 2**16` is below the
    fraction of the way `|x|` lies from the smaller neighbour to the larger one, so the
    result is `x` on average (to 2**-17; exactly for bfloat16). Exactly representable
    values, infinities and NaN stay as they are; a finite value above the largest
    finite float16 gives the largest finite float16 (not infinity) with stochastic
    rounding (bfloat16's range is float32's). Without `bits`, rounds to nearest
    (TensorFlow's cast).

    Example:

    >>> x = tf.fill([65536], 1.0 + 2.0**-10)  # a quarter of a bfloat16 step above 1
    >>> ids = tf.range(65536)
    >>> bits = rounding_bits(step_seed(tf.constant(1), 0), ids, 1)[:, 0]
    >>> mean = tf.reduce_mean(tf.cast(round_to(x, tf.bfloat16, bits), tf.float64))
    >>> abs(float(mean) - (1.0 + 2.0**-10)) < 2e-4
    True
    """
    x = tf.cast(x, tf.float32)
    if tf.as_dtype(dtype) == tf.bfloat16:
        return _round_to_bfloat16(x, bits)
    nearest = tf.cast(x, dtype)
    if bits is None:
        return nearest
    magnitude = tf.abs(x)
    near = tf.abs(tf.cast(nearest, tf.float32))
    below = near < magnitude
    # The other neighbour of x: one step up or down in magnitude. A 16-bit float's bit
    # pattern, read as an integer, moves its magnitude by one step per unit whatever
    # the sign (the sign is the top bit), across subnormals and up to infinity.
    step = tf.where(below, tf.constant(1, tf.int16), tf.constant(-1, tf.int16))
    other = tf.bitcast(tf.bitcast(nearest, tf.int16) + step, dtype)
    far = tf.abs(tf.cast(other, tf.float32))
    low = tf.minimum(near, far)
    high = tf.maximum(near, far)
    # Exact: |x| - low by Sterbenz's lemma, high - low is a power of two.
    fraction = (magnitude - low) / (high - low)
    uniform = (tf.cast(tf.bitwise.bitwise_and(bits, _u32(0xFFFF)), tf.float32) + 0.5) / 65536.0
    take_high = uniform < fraction
    chosen = tf.where(take_high == below, other, nearest)
    # Representable values (and NaN, for which both comparisons are false) stay.
    exact = tf.logical_not(tf.logical_or(below, near > magnitude))
    return tf.where(exact, nearest, chosen)


def _round_to_bfloat16(x: Any, bits: Any) -> Any:
    """`round_to` for bfloat16, on float32's bit pattern (integer operations only).

    bfloat16 is float32 without its low 16 bits. Stochastically: adding `0xFFFF - k`
    (k the low 16 bits of `bits`) to the pattern carries into the kept bits, one step
    up in magnitude whatever the sign, exactly when `k < low 16 bits of x`: when
    `(k + 0.5) / 2**16` is below the fraction of the way, as the general rule
    decides. To nearest (no `bits`): add `0x7FFF` plus the lowest kept bit (ties to
    even), as TensorFlow's cast does. XLA on CPUs without bfloat16 instructions
    converts float32 to bfloat16 an element at a time, so integers are faster.
    """
    pattern = tf.bitcast(x, _U32)
    if bits is None:
        lowest_kept = tf.bitwise.bitwise_and(tf.bitwise.right_shift(pattern, _u32(16)), _u32(1))
        carry = _u32(0x7FFF) + lowest_kept
    else:
        carry = _u32(0xFFFF) - tf.bitwise.bitwise_and(bits, _u32(0xFFFF))
    kept = tf.bitwise.right_shift(pattern + carry, _u32(16))
    # NaN patterns could carry into the sign bit: keep a quiet NaN.
    kept = tf.where(tf.math.is_nan(x), _u32(0x7FC0), kept)
    return tf.bitcast(tf.cast(kept, tf.uint16), tf.bfloat16)


def widen(x: Any, dtype: Any = tf.float32) -> Any:
    """16-bit stored values as `dtype` (bfloat16 by shifting its bits: exact, fast)."""
    if x.dtype == tf.bfloat16:
        pattern = tf.cast(tf.bitcast(x, tf.uint16), _U32)
        x = tf.bitcast(tf.bitwise.left_shift(pattern, _u32(16)), tf.float32)
    return tf.cast(x, dtype)
