"""Stable 64-bit hashes of id strings, and the streaming split they decide.

:func:`hash_strings` hashes every string of an Arrow string array in a few vectorized
NumPy passes over its byte buffer (8 bytes per pass, each pass a gather, a mask and
a MurmurHash3 finalizer), so hashing costs tens of nanoseconds per id. The value
depends only on the string's bytes and the seed: not on the batch it came in, the
platform or the Python process (unlike ``hash()``), so a split decided by it is the
same in every pass over the files and in every run.

:func:`split_labels` assigns each row to train (0), validation (1) or test (2) from
the hash of its (user, item) pair; :func:`time_labels` from a time cutoff.

Nothing here imports TensorFlow.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

__all__ = ["TEST", "TRAIN", "VAL", "hash_strings", "pair_hash", "split_labels", "time_labels"]

TRAIN, VAL, TEST = 0, 1, 2
_C1 = np.uint64(0xFF51AFD7ED558CCD)
_C2 = np.uint64(0xC4CEB9FE1A85EC53)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_PI = np.uint64(0x243F6A8885A308D3)
# _MASKS[r]: the low r bytes of a word (r = 0..8).
_MASKS = np.array([(1 << (8 * r)) - 1 for r in range(8)] + [(1 << 64) - 1], dtype=np.uint64)


def _fmix(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finalizer (full avalanche); wraps modulo 2**64."""
    h = h ^ (h >> np.uint64(33))
    h = h * _C1
    h = h ^ (h >> np.uint64(33))
    h = h * _C2
    return h ^ (h >> np.uint64(33))


def _string_buffers(values: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(starts, lengths, bytes)`` of a string array's values (bytes padded by 8)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if values.type != pa.string():
        values = values.cast(pa.string())
    if values.null_count:
        raise ValueError("hash_strings needs an array without nulls.")
    n = len(values)
    offsets = np.frombuffer(values.buffers()[1], dtype=np.int32)[
        values.offset : values.offset + n + 1
    ]
    data = values.buffers()[2]
    raw = np.frombuffer(data, dtype=np.uint8) if data is not None else np.empty(0, np.uint8)
    padded = np.zeros(len(raw) + 8, dtype=np.uint8)
    padded[: len(raw)] = raw
    return offsets[:-1].astype(np.int64), np.diff(offsets).astype(np.int64), padded


def hash_strings(values: pa.Array | pa.ChunkedArray, seed: int = 0) -> np.ndarray:
    """64-bit hashes of the strings of ``values`` (uint64, one per string).

    Args:
        values: An Arrow string array without nulls.
        seed: Mixed into every hash (different seeds give independent hashes).

    Example:
        >>> h = hash_strings(pa.array(["a", "b", "a"]))
        >>> bool(h[0] == h[2]), bool(h[0] == h[1]), h.dtype.name
        (True, False, 'uint64')
    """
    starts, lengths, padded = _string_buffers(values)
    # Every 8-byte window of the buffer, read little-endian whatever its alignment.
    words = np.ndarray(shape=(len(padded) - 7,), dtype="<u8", buffer=padded, offset=0, strides=(1,))
    with np.errstate(over="ignore"):
        h = _fmix(lengths.astype(np.uint64) * _GOLDEN + np.uint64(seed & (2**64 - 1)) + _PI)
        longest = int(lengths.max()) if len(lengths) else 0
        for start in range(0, longest, 8):
            active = np.flatnonzero(lengths > start)
            remaining = np.minimum(lengths[active] - start, 8)
            word = words[starts[active] + start] & _MASKS[remaining]
            h[active] = _fmix(h[active] ^ (word + np.uint64(start) * _GOLDEN))
        return _fmix(h)


def pair_hash(user_hashes: np.ndarray, item_hashes: np.ndarray, seed: int) -> np.ndarray:
    """A 64-bit hash of each (user, item) pair from the two ids' hashes and a seed.

    Example:
        >>> u, i = hash_strings(pa.array(["u1", "u1"])), hash_strings(pa.array(["i1", "i2"]))
        >>> bool(pair_hash(u, i, 42)[0] != pair_hash(u, i, 43)[0])
        True
    """
    with np.errstate(over="ignore"):
        salted = _fmix(item_hashes ^ _fmix(np.uint64(seed) * _GOLDEN + np.uint64(1)))
        return _fmix(user_hashes * _C1 + salted)


def split_labels(
    user_hashes: np.ndarray,
    item_hashes: np.ndarray,
    seed: int,
    test_fraction: float,
    val_fraction: float = 0.0,
) -> np.ndarray:
    """Each row's split (``TRAIN``, ``VAL`` or ``TEST``, uint8) from its pair's hash.

    The pair's hash, read as a uniform number in [0, 1), is test below
    ``test_fraction``, validation in the next ``val_fraction * (1 - test_fraction)``,
    train above: every row of a pair lands in the same split, about ``test_fraction``
    of the rows in test and ``val_fraction`` of the rest in validation.

    Example:
        >>> u = hash_strings(pa.array([f"u{k}" for k in range(10000)]))
        >>> i = hash_strings(pa.array(["i"] * 10000))
        >>> labels = split_labels(u, i, seed=0, test_fraction=0.2)
        >>> round(float((labels == TEST).mean()), 2)
        0.2
    """
    uniform = (pair_hash(user_hashes, item_hashes, seed) >> np.uint64(11)).astype(np.float64) * (
        1.0 / (1 << 53)
    )
    labels = np.full(len(uniform), TRAIN, dtype=np.uint8)
    labels[uniform < test_fraction + val_fraction * (1.0 - test_fraction)] = VAL
    labels[uniform < test_fraction] = TEST
    return labels


def time_labels(
    timestamps: np.ndarray, test_cutoff: int, val_cutoff: int | None = None
) -> np.ndarray:
    """Each row's split from its time: test at or after ``test_cutoff``, validation at or
    after ``val_cutoff`` (when given), train before.

    Example:
        >>> time_labels(np.array([1, 5, 9]), test_cutoff=9, val_cutoff=5).tolist()
        [0, 1, 2]
    """
    labels = np.full(len(timestamps), TRAIN, dtype=np.uint8)
    if val_cutoff is not None:
        labels[timestamps >= val_cutoff] = VAL
    labels[timestamps >= test_cutoff] = TEST
    return labels
