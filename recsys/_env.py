"""Environment that must be in place before TensorFlow is imported.

This module must never import TensorFlow: it runs before it.
"""

from __future__ import annotations

import os
import sys
import warnings

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
