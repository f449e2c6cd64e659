"""16-bit rounding of optimizer state against a NumPy reference (ml_dtypes).

`recsys.optimizers.rounding` rounds float32 moments to bfloat16 or float16, to
nearest or stochastically with bits hashed from (step, stream, row id, column). The
reference here re-implements the hash with NumPy's uint32 arithmetic and the rounding
with ml_dtypes' neighbours (`np.nextafter`) and float64 probabilities; the other
test modules of the optimizers import it.
"""

import ml_dtypes
import numpy as np
import pytest

import recsys  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
from recsys._tf import tf
from recsys.optimizers.rounding import round_to, rounding_bits, step_seed, widen

NP_DTYPES = {"bfloat16": ml_dtypes.bfloat16, "float16": np.float16}
_M = np.uint64(0xFFFFFFFF)


def _fmix32(h):
    h = np.asarray(h, np.uint64) & _M
    h ^= h >> np.uint64(16)
    h = (h * np.uint64(0x85EBCA6B)) & _M
    h ^= h >> np.uint64(13)
    h = (h * np.uint64(0xC2B2AE35)) & _M
    h ^= h >> np.uint64(16)
    return h


def np_step_seed(step, stream):
    mixed = (int(step) % 2**32) * 0x9E3779B9 + (stream * 0x632BE5AB + 0x165667B1) % 2**32
    return int(_fmix32(np.uint64(mixed % 2**32)))


def np_rounding_bits(seed, ids, row_size):
    """uint64 array `[len(ids), row_size]` of 32-bit values, as `rounding_bits`."""
    ids = np.asarray(ids, np.int64).astype(np.uint64) & _M
    rows = _fmix32((ids * np.uint64(0xC2B2AE35) + np.uint64(seed)) & _M)
    columns = (np.arange(row_size, dtype=np.uint64) * np.uint64(0x27D4EB2F)) & _M
    return _fmix32((rows[:, None] + columns[None, :]) & _M)


def np_round(x, dtype_name, bits16=None):
    """`x` (float64) rounded to the 16-bit dtype, as float64 values.

    To nearest without `bits16`; else to the neighbour of larger magnitude when
    `(bits16 + 0.5) / 2**16` is below the fraction of the way from the smaller one.
    """
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        return _np_round(np.asarray(x, np.float64), NP_DTYPES[dtype_name], bits16)


def _np_round(x, dtype, bits16):
    if bits16 is None:
        return x.astype(np.float32).astype(dtype).astype(np.float64)
    magnitude = np.abs(x).astype(np.float32)  # the optimizers round float32 values
    nearest = magnitude.astype(dtype)
    above = nearest.astype(np.float64) > magnitude
    other = np.where(
        above,
        np.nextafter(nearest, np.zeros_like(nearest)),
        np.nextafter(nearest, np.full_like(nearest, np.inf)),
    )
    low = np.where(above, other, nearest).astype(np.float64)
    high = np.where(above, nearest, other).astype(np.float64)
    fraction = (magnitude - low) / (high - low)
    uniform = (np.asarray(bits16, np.float64) + 0.5) / 65536
    chosen = np.where(uniform < fraction, high, low)
    chosen = np.where(nearest.astype(np.float64) == magnitude, magnitude, chosen)
    return np.copysign(chosen, x)


def low16(bits):
    return np.asarray(bits, np.uint64) & np.uint64(0xFFFF)


def high16(bits):
    return (np.asarray(bits, np.uint64) >> np.uint64(16)) & np.uint64(0xFFFF)


def test_hash_matches_numpy_reference():
    for step, stream in [(0, 0), (1, 0), (7, 3), (2**31 + 5, 11)]:
        seed = step_seed(tf.constant(step, tf.int64), stream)
        assert int(seed) == np_step_seed(step, stream)
        ids = np.array([0, 5, 5, 9_999_999, 2**31 - 1], np.int64)
        got = rounding_bits(seed, tf.constant(ids), 7).numpy().astype(np.uint64)
        np.testing.assert_array_equal(got, np_rounding_bits(int(seed), ids, 7))
        assert (got[1] == got[2]).all()  # equal ids, equal bits


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_round_to_matches_numpy_reference(dtype):
    rng = np.random.default_rng(0)
    x = np.concatenate(
        [
            rng.normal(size=4000) * 10.0 ** rng.integers(-9, 4, size=4000),
            [0.0, -0.0, 1.0, -1.5, 1e-30, -3e-8, 7e-8, 65519.0, 70000.0, -1e6, np.inf, -np.inf],
            # Ties for bfloat16 (to even: 1.0, 1 + 2**-6, -1.0).
            [1 + 2**-8, 1 + 3 * 2**-8, -(1 + 2**-8)],
        ]
    ).astype(np.float32)
    bits = np_rounding_bits(12345, np.arange(len(x)), 1)[:, 0]
    got = round_to(tf.constant(x), tf.as_dtype(dtype), tf.constant(bits.astype(np.uint32)))
    assert got.dtype == tf.as_dtype(dtype)
    got = got.numpy().astype(np.float64)
    want = np_round(x.astype(np.float64), dtype, low16(bits))
    if dtype == "float16":
        # Beyond the largest finite float16 stochastic rounding saturates there.
        want = np.where(np.isfinite(x) & (np.abs(x) > 65504), np.sign(x) * 65504, want)
    np.testing.assert_array_equal(got, want)
    nearest = round_to(tf.constant(x), tf.as_dtype(dtype)).numpy().astype(np.float64)
    np.testing.assert_array_equal(nearest, np_round(x.astype(np.float64), dtype))
    nan = round_to(tf.constant([np.nan]), tf.as_dtype(dtype), tf.constant([7], tf.uint32))
    assert np.isnan(nan.numpy().astype(np.float32)).all()


@pytest.mark.parametrize(
    ("dtype", "value"),
    [("bfloat16", 1.0 + 2.0**-10), ("bfloat16", -3e-5 * (1 + 2**-9)), ("float16", 1e-7)],
    ids=["bf16-eighth-step", "bf16-negative", "f16-subnormal"],
)
def test_stochastic_rounding_is_right_on_average_and_nearest_is_not(dtype, value):
    n = 1 << 16
    x = tf.fill([n], tf.constant(value, tf.float32))
    exact = float(np.float32(value))
    bits = rounding_bits(step_seed(tf.constant(3), 1), tf.range(n), 1)[:, 0]
    stochastic = round_to(x, tf.as_dtype(dtype), bits).numpy().astype(np.float64)
    nearest = round_to(x, tf.as_dtype(dtype)).numpy().astype(np.float64)
    # Every result is one of the two neighbours; their mean is the value.
    assert len(np.unique(stochastic)) == 2
    low, high = np.unique(stochastic)
    assert low < exact < high
    step = high - low
    assert abs(stochastic.mean() - exact) < 0.01 * step
    assert abs(nearest.mean() - exact) > 0.1 * step


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_widen_is_exact(dtype):
    x = np.random.default_rng(1).normal(size=1000) * 10.0 ** np.arange(-20, 20, 0.04)
    with np.errstate(over="ignore"):  # float16 overflows to inf beyond 65504
        stored = np.concatenate([x, [0.0, -0.0, np.inf, -np.inf]]).astype(NP_DTYPES[dtype])
    got = widen(tf.constant(stored, tf.as_dtype(dtype))).numpy()
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, stored.astype(np.float32))
    assert np.signbit(got[-3]) and widen(tf.constant([np.nan], tf.bfloat16)).numpy()[0] != 0
