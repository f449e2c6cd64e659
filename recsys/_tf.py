"""The one place recsys imports TensorFlow and tf-keras.

Every TensorFlow-backed recsys module imports ``tf`` and ``keras`` from here, so the
environment check in :mod:`recsys._env` always runs first.
"""

from recsys._env import ensure_legacy_keras_env

ensure_legacy_keras_env()

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

__all__ = ["keras", "tf"]
