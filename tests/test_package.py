"""`import recsys` sets up tf-keras before TensorFlow and stays cheap."""

import os
import subprocess
import sys
import textwrap

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


_NOISE = (
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
    "I0000 00:00:1.0 2507 port.cc:153] oneDNN custom operations are on. You may see ...\n"
    "I0000 00:00:1.0 2507 cudart_stub.cc:31] Could not find cuda drivers on your machine, "
    "GPU will not be used.\n"
    "E0000 00:00:1.0 2507 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error\n"
)


def _run_quiet_block(body: str, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    code = (
        "import os, sys\n"
        "from recsys._env import quiet_tensorflow_startup\n"
        f"noise = {_NOISE!r}\n"
        "with quiet_tensorflow_startup():\n"
        f"{textwrap.indent(body, '    ')}\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})},
    )


def test_startup_noise_is_hidden_and_everything_else_kept_in_order():
    done = _run_quiet_block(
        "os.write(2, noise.encode())\n"
        "os.write(2, b'E0000 real.cc:1] a real error\\n')\n"
        "print('python warning', file=sys.stderr)\n"
        "print('stdout untouched')"
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == "E0000 real.cc:1] a real error\npython warning\n"
    assert done.stdout == "stdout untouched\n"


def test_cuinit_error_is_kept_when_a_cuda_driver_was_found():
    driver_found = _NOISE.replace("Could not find cuda drivers", "Found cuda drivers")
    done = _run_quiet_block(f"os.write(2, {driver_found!r}.encode())")
    assert "failed call to cuInit" in done.stderr
    assert "absl::InitializeLog" not in done.stderr


def test_startup_lines_are_all_shown_on_request_or_when_the_block_fails():
    shown = _run_quiet_block("os.write(2, noise.encode())", env={"RECSYS_SHOW_TF_STARTUP": "1"})
    assert shown.stderr == _NOISE
    failed = _run_quiet_block("os.write(2, noise.encode())\nraise SystemExit(3)")
    assert failed.returncode == 3
    assert failed.stderr == _NOISE
