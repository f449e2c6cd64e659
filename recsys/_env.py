"""Environment that must be in place before TensorFlow is imported.

This module must never import TensorFlow: it runs before it.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator

LEGACY_KERAS_VAR = "TF_USE_LEGACY_KERAS"

_FIX = (
    "Import recsys (or set TF_USE_LEGACY_KERAS=1 in the environment) before anything imports "
    "TensorFlow, e.g. put `import recsys` at the top of your script, or run "
    "`TF_USE_LEGACY_KERAS=1 python your_script.py`."
)


def _tf_keras_is_keras3() -> bool:
    """Whether an already-imported TensorFlow bound ``tf.keras`` to Keras 3.

    TensorFlow decides at import time (it reads ``TF_USE_LEGACY_KERAS`` then, and
    points ``tensorflow.keras`` module paths at Keras 3 or tf-keras), so a process
    that imported TensorFlow without the variable has Keras 3 behind ``tf.keras``
    even if ``tf.keras`` was never touched.
    """
    tf = sys.modules.get("tensorflow")
    if tf is None:
        return False
    uses_legacy = tf.__dict__.get("_tf_uses_legacy_keras")
    if uses_legacy is not None:
        return not uses_legacy
    # TensorFlow builds without that flag: ask the lazy loader what it resolved to.
    loader = tf.__dict__.get("keras")
    return getattr(loader, "__dict__", {}).get("_tfll_keras_version") == "keras_3"


def ensure_legacy_keras_env() -> None:
    """Make ``tf.keras`` resolve to tf-keras (Keras 2) for this process.

    Sets ``TF_USE_LEGACY_KERAS=1`` (overriding, with a warning, any other value), and
    raises ImportError when TensorFlow was already imported with ``tf.keras`` bound to
    Keras 3, since that cannot be undone in a running process.

    Raises:
        ImportError: TensorFlow was imported before recsys and resolved ``tf.keras``
            to Keras 3.
    """
    current = os.environ.get(LEGACY_KERAS_VAR)
    if current not in (None, "1", "true", "True"):
        warnings.warn(
            f"{LEGACY_KERAS_VAR}={current!r} was set; recsys sets it to '1' because "
            "tensorflow-recommenders requires tf.keras to be tf-keras (Keras 2).",
            RuntimeWarning,
            stacklevel=3,
        )
    os.environ[LEGACY_KERAS_VAR] = "1"
    if _tf_keras_is_keras3():
        raise ImportError(
            "TensorFlow was imported before recsys without TF_USE_LEGACY_KERAS=1, so `tf.keras` is Keras 3; "
            "recsys (and tensorflow-recommenders) need tf-keras (Keras 2) behind `tf.keras`, "
            "and TensorFlow fixes that choice when it is imported. " + _FIX
        )


# TensorFlow's C++ start-up lines that say nothing on a CPU machine. They are printed
# before TensorFlow reads TF_CPP_MIN_LOG_LEVEL, and twice: the profiler plugin that
# `import tensorflow` loads (tensorflow/python/profiler/internal/
# _pywrap_profiler_plugin.so) carries its own copy of the logging and CUDA start-up code.
_STARTUP_NOISE = (
    "All log messages before absl::InitializeLog() is called",
    "Could not find cuda drivers on your machine",
    "oneDNN custom operations are on",
    "This TensorFlow binary is optimized to use available CPU instructions",
    "To enable the following instructions:",
)
# Only noise when the line above said there is no CUDA driver at all.
_NO_DRIVER = "Could not find cuda drivers on your machine"
_CUINIT = "failed call to cuInit"
SHOW_STARTUP_VAR = "RECSYS_SHOW_TF_STARTUP"


def filter_startup_lines(text: str) -> str:
    """``text`` without TensorFlow's start-up noise (see :func:`quiet_tensorflow_startup`).

    Example:
        >>> filter_startup_lines("I0000 cudart_stub.cc:31] Could not find cuda drivers on "
        ...                      "your machine, GPU will not be used.\\nreal problem\\n")
        'real problem\\n'
    """
    no_driver = _NO_DRIVER in text
    kept = [
        line
        for line in text.splitlines(keepends=True)
        if not any(noise in line for noise in _STARTUP_NOISE)
        and not (no_driver and _CUINIT in line)
    ]
    return "".join(kept)


@contextlib.contextmanager
def quiet_tensorflow_startup() -> Iterator[None]:
    """Hide TensorFlow's C++ start-up lines printed while the block runs.

    Everything written to the process's standard error (file descriptor 2, which
    TensorFlow's C++ logging and Python both use) is held in a temporary file and
    written back, in order, when the block ends, without the start-up lines that
    carry no information on a CPU-only machine (CUDA stub, "before
    absl::InitializeLog", oneDNN notice, CPU feature guard; the cuInit error only
    when no CUDA driver was found). Any other line, errors included, is kept; if the
    block raises, everything is written back unfiltered. Set
    ``RECSYS_SHOW_TF_STARTUP=1`` (or ``TF_CPP_MIN_LOG_LEVEL`` to 0 or 1) to see them.

    Example::

        with quiet_tensorflow_startup():
            import tensorflow as tf
            tf.config.list_logical_devices()  # CUDA initialization logs here
    """
    if os.environ.get(SHOW_STARTUP_VAR) == "1" or os.environ.get("TF_CPP_MIN_LOG_LEVEL") in (
        "0",
        "1",
    ):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    failed = False
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            text = capture.read().decode("utf-8", errors="replace")
            sys.stderr.write(text if failed else filter_startup_lines(text))
            sys.stderr.flush()
