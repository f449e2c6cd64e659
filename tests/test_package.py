"""`import recsys` sets up tf-keras before TensorFlow and stays cheap."""

import os
import subprocess
import sys

import pytest


def _run(code: str, **env_changes: str | None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    for key, value in env_changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )


def test_import_recsys_does_not_import_tensorflow_and_sets_legacy_keras():
    result = _run(
        "import os, sys, recsys; "
        "print('tensorflow' in sys.modules, os.environ['TF_USE_LEGACY_KERAS'])",
        TF_USE_LEGACY_KERAS=None,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "1"]


def test_tf_keras_is_keras2_after_importing_recsys_first():
    result = _run(
        "import recsys, recsys.layers; import tensorflow as tf; "
        "import tensorflow_recommenders as tfrs; print(tf.keras.__name__)",
        TF_USE_LEGACY_KERAS=None,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith("tf_keras")


def test_tensorflow_imported_first_with_keras3_fails_with_a_fix():
    result = _run("import tensorflow; import recsys", TF_USE_LEGACY_KERAS=None)
    assert result.returncode != 0
    assert "ImportError" in result.stderr
    assert "Keras 3" in result.stderr
    assert "TF_USE_LEGACY_KERAS=1" in result.stderr


def test_tensorflow_imported_first_with_legacy_keras_is_fine():
    result = _run("import tensorflow; import recsys.layers; print('ok')", TF_USE_LEGACY_KERAS="1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_other_value_of_the_variable_is_overridden_with_a_warning():
    result = _run(
        "import warnings, os; warnings.simplefilter('always'); import recsys; "
        "print(os.environ['TF_USE_LEGACY_KERAS'])",
        TF_USE_LEGACY_KERAS="0",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1"
    assert "TF_USE_LEGACY_KERAS='0'" in result.stderr


def test_unknown_attribute_raises_attribute_error():
    import recsys

    with pytest.raises(AttributeError, match="no_such_thing"):
        recsys.no_such_thing  # noqa: B018
