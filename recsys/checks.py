"""Argument checks shared by every recsys component: one home, one wording.

Each check returns the value converted to its plain Python type and raises
``ValueError`` naming the argument, what it must be and the value received (the
wording Keras uses: ``Received: name=value``).

Nothing here imports TensorFlow or Hydra, so layers, optimizers, the launcher and the
data code can all use it.

Example:
    >>> check_positive_int("embedding_dim", 64)
    64
    >>> check_positive_int("embedding_dim", 0)
    Traceback (most recent call last):
    ...
    ValueError: `embedding_dim` must be a positive integer. Received: embedding_dim=0
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

__all__ = [
    "check_bool",
    "check_choice",
    "check_fraction",
    "check_int",
    "check_nonnegative",
    "check_nonnegative_int",
    "check_positive",
    "check_positive_int",
]


def _is_integer(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_positive_int(name: str, value: Any) -> int:
    """``value`` as an int > 0 (Python or NumPy integers; not bools).

    Raises:
        ValueError: ``value`` is not an integer, or is <= 0.
    """
    if not _is_integer(value) or value <= 0:
        raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value!r}")
    return int(value)


def check_nonnegative_int(name: str, value: Any) -> int:
    """``value`` as an int >= 0 (Python or NumPy integers; not bools).

    Raises:
        ValueError: ``value`` is not an integer, or is < 0.
    """
    if not _is_integer(value) or value < 0:
        raise ValueError(f"`{name}` must be an integer >= 0. Received: {name}={value!r}")
    return int(value)


def check_int(name: str, value: Any) -> int:
    """``value`` as an int (Python or NumPy integers; not bools, not floats).

    Raises:
        ValueError: ``value`` is not an integer.
    """
    if not _is_integer(value):
        raise ValueError(f"`{name}` must be an integer. Received: {name}={value!r}")
    return int(value)


def check_bool(name: str, value: Any) -> bool:
    """``value`` itself when it is a bool (Python or NumPy), so ``"no"`` is not True.

    Raises:
        ValueError: ``value`` is not a bool (the message says to write true or false).
    """
    if not isinstance(value, bool) and type(value).__name__ not in ("bool_", "bool"):
        raise ValueError(f"`{name}` must be true or false. Received: {name}={value!r}")
    return bool(value)


def check_positive(name: str, value: Any) -> float:
    """``value`` as a float > 0.

    Raises:
        ValueError: ``value`` is not a real number, or is <= 0.
    """
    if not _is_real(value) or not value > 0:
        raise ValueError(f"`{name}` must be a number > 0. Received: {name}={value!r}")
    return float(value)


def check_nonnegative(name: str, value: Any) -> float:
    """``value`` as a float >= 0.

    Raises:
        ValueError: ``value`` is not a real number, or is < 0.
    """
    if not _is_real(value) or not value >= 0:
        raise ValueError(f"`{name}` must be a number >= 0. Received: {name}={value!r}")
    return float(value)


def check_fraction(name: str, value: Any, allow_zero: bool = False) -> float:
    """``value`` as a float in (0, 1), or [0, 1) with ``allow_zero``.

    Raises:
        ValueError: ``value`` is not a real number in that interval.
    """
    low_ok = _is_real(value) and (value >= 0 if allow_zero else value > 0)
    if not (low_ok and value < 1):
        bound = "[0, 1)" if allow_zero else "(0, 1)"
        raise ValueError(f"`{name}` must be a number in {bound}. Received: {name}={value!r}")
    return float(value)


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> Any:
    """``value`` itself, when it is one of ``choices``.

    Raises:
        ValueError: ``value`` is not among ``choices`` (the message lists them).
    """
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {tuple(choices)}. Received: {name}={value!r}")
    return value
