"""A wheel of the project, installed without ``-e`` in a fresh environment, runs the
front door from any directory: the configs ship inside it (``recsys.conf``), and data
and run directories land under the working directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.helpers.training import CONF_DIR, PROJECT_ROOT, write_tiny_movielens

# What a clean clone has not: a virtualenv, caches, build leftovers, data, runs.
_TOP_LEVEL_ONLY = {"data", "outputs", "multirun", "build", "dist", "benchmarks_out"}
_ANYWHERE = shutil.ignore_patterns(
    ".git", ".venv", "*.egg-info", "__pycache__", ".pytest_cache", ".ruff_cache"
)


def _not_in_a_clone(folder: str, names: list[str]) -> set[str]:
    top = Path(folder) == PROJECT_ROOT
    return set(_ANYWHERE(folder, names)) | (_TOP_LEVEL_ONLY & set(names) if top else set())


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with the project's wheel installed (not editable).

    The environment reaches the dependencies (TensorFlow, Hydra, ...) through a path
    file naming this interpreter's site-packages, without its editable ``recsys``.

    Returns:
        The environment's Python.
    """
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    shutil.copytree(PROJECT_ROOT, source, symlinks=True, ignore=_not_in_a_clone)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(root / "dist"), str(source)],
        check=True,
        timeout=300,
    )
    (wheel,) = (root / "dist").glob("recsys-*.whl")
    site = root / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    dependencies = sysconfig.get_path("purelib")
    Path(purelib, "recsys_test_paths.pth").write_text(f"{site}\n{dependencies}\n")
    return python


def _run(
    python: Path, args: list[str], cwd: Path, timeout: int = 120
) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RECSYS_", "PYTHON"))}
    return subprocess.run(
        [str(python), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_the_wheel_carries_every_config(installed: Path) -> None:
    (wheel,) = installed.parents[2].glob("dist/recsys-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"recsys/conf/{p.relative_to(CONF_DIR)}" for p in CONF_DIR.rglob("*.yaml")}
    assert shipped, "no configs found in conf/"
    assert shipped <= names, sorted(shipped - names)


def test_installed_package_composes_and_launches_from_an_empty_directory(
    installed: Path, tmp_path: Path
) -> None:
    code = (
        "import recsys, recsys.run\n"
        "from hydra import compose, initialize_config_module\n"
        "recsys.run.register_resolvers()\n"
        "with initialize_config_module(config_module='recsys.conf', version_base='1.3'):\n"
        "    cfg = compose('train', overrides=['+experiment=movielens'])\n"
        "print(recsys.__file__)\n"
        "print(cfg.task_name, cfg.paths.data_dir, cfg.paths.log_dir)\n"
    )
    done = _run(installed, ["-c", code], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    module_file, composed = done.stdout.strip().splitlines()
    assert not Path(module_file).is_relative_to(PROJECT_ROOT)  # the wheel, not the checkout
    assert composed.split() == [
        "movielens_retrieval",
        str(tmp_path.resolve() / "data"),
        str(tmp_path.resolve() / "outputs"),
    ]
    launch = _run(installed, ["-m", "recsys.launch", "--print-env"], cwd=tmp_path)
    assert launch.returncode == 0, launch.stderr[-3000:]
    assert (
        "TF_INTRA_OP_PARALLELISM_THREADS=" in launch.stdout or "OMP_NUM_THREADS=" in launch.stdout
    )


@pytest.mark.slow
def test_installed_front_door_trains_from_an_empty_directory(
    installed: Path, tmp_path: Path
) -> None:
    data = write_tiny_movielens(tmp_path / "ml-100k")
    work = tmp_path / "work"
    work.mkdir()
    done = _run(
        installed,
        [
            "-m",
            "recsys.train",
            "+experiment=movielens",
            "+debug=fast",
            f"data.path={data}",
            "hardware.allocator=none",
        ],
        cwd=work,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (metrics,) = (work / "outputs").glob("debug/runs/*/metrics.json")
    assert (metrics.parent / "export").is_dir()
    assert any((work / "data").iterdir())  # the Parquet cache, under the working directory
