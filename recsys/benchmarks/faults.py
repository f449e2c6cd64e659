"""Fault tolerance, measured from outside the training process.

Runs ``python -m recsys.train`` in subprocesses and does to them what a preempted or
misused machine does, with no hook in the product: it watches the run directory and
sends real signals.

- kill -9 at random points after the first step checkpoint, and once while a
  checkpoint is being written (the process is frozen with SIGSTOP the moment the
  checkpoint's ``ckpt-N_temp/`` folder appears, checked to still be mid-write, then
  killed), rerunning the same command after each kill;
- SIGTERM at random points: exit status 143, the message, the checkpoint at the step
  reached, and how many steps the resumed run did again;
- corrupted checkpoints: the newest data file truncated, a byte flipped in it, the
  ``checkpoint`` index garbled (each must fall back), and every checkpoint truncated
  (the run must refuse to start over);
- a second run on a directory a live run uses (must refuse at once, naming it), then
  the first killed with kill -9 (the second must take over its stale lock);
- bad inputs: :data:`BAD_INPUTS`, each a config override or a broken data file, each
  checked for a non-zero exit, a message naming the key or the file, no traceback and
  nothing partial left in the data cache or the run directory.

Every chain ends with a run that completes; its final metrics and history are compared
with an uninterrupted run's.

Run::

    python -m recsys.benchmarks.faults                    # about 15 min on 2 busy cores
    python -m recsys.benchmarks.faults --skip-bad-inputs --seed 3
    python -m recsys.benchmarks.faults --output faults.json --keep

By default the model is the rating model (``+experiment=movielens_ranking``) on a small
dataset in MovieLens-100K's layout written into the work folder (every process still
imports TensorFlow, which dominates the time); ``--data-path`` trains on a real copy.

This module does not import TensorFlow.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import random
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "BAD_INPUTS",
    "BadInput",
    "DirectoryWatch",
    "TrainRun",
    "check_bad_input",
    "committed_checkpoints",
    "main",
    "partial_files",
    "start_training",
    "wait_for",
    "write_movielens_100k",
]

TRACEBACK = "Traceback (most recent call last)"
DEFAULT_TIMEOUT = 900.0

# --------------------------------------------------------------------- processes


@dataclass
class TrainRun:
    """One ``python -m recsys.train`` process; stdout and stderr go to files.

    Attributes:
        process: The process.
        run_dir: Its run directory.
        stdout: File holding its standard output.
        stderr: File holding its standard error.
        started: ``time.monotonic()`` at the start.
        log_offset: Size of the run directory's ``train.log`` at the start (the log
            is appended to by every run of the directory).
    """

    process: subprocess.Popen[bytes]
    run_dir: Path
    stdout: Path
    stderr: Path
    started: float
    log_offset: int = 0

    @property
    def pid(self) -> int:
        """The process id."""
        return self.process.pid

    @property
    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.process.poll() is None

    def send(self, signum: int) -> None:
        """Send a signal to the process."""
        os.kill(self.process.pid, signum)

    def wait(self, timeout: float = DEFAULT_TIMEOUT) -> int:
        """Wait for the end; the exit status (negative: killed by that signal)."""
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise

    def out(self) -> str:
        """What it wrote to stdout so far."""
        return self.stdout.read_text(errors="replace") if self.stdout.exists() else ""

    def err(self) -> str:
        """What it wrote to stderr so far."""
        return self.stderr.read_text(errors="replace") if self.stderr.exists() else ""

    def log(self) -> str:
        """What this process wrote to the run directory's ``train.log`` so far."""
        path = self.run_dir / "train.log"
        if not path.exists():
            return ""
        with path.open("rb") as f:
            f.seek(self.log_offset)
            return f.read().decode(errors="replace")

    def resumed_from(self) -> int | None:
        """The checkpoint number this run resumed from (None: not said, or not yet)."""
        found = re.findall(r"Resuming from \S*ckpt-(\d+)", self.log())
        return int(found[-1]) if found else None


def start_training(
    overrides: Sequence[str],
    run_dir: Path,
    logs: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> TrainRun:
    """Start ``python -m recsys.train OVERRIDES hydra.run.dir=RUN_DIR``.

    Args:
        overrides: Hydra overrides.
        run_dir: The run directory (``hydra.run.dir``).
        logs: Folder for the process's stdout and stderr files (numbered per start).
        env: Environment (default: this process's).
        cwd: Working directory (default: the current one).
    """
    logs.mkdir(parents=True, exist_ok=True)
    n = len(list(logs.glob("*.out")))
    stdout, stderr = logs / f"{n:03d}.out", logs / f"{n:03d}.err"
    command = [sys.executable, "-m", "recsys.train", *overrides, f"hydra.run.dir={run_dir}"]
    log = Path(run_dir) / "train.log"
    offset = log.stat().st_size if log.exists() else 0
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen(command, stdout=out, stderr=err, env=env, cwd=cwd)
    return TrainRun(process, Path(run_dir), stdout, stderr, time.monotonic(), offset)


def wait_for(
    predicate: Callable[[], bool],
    run: TrainRun | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    interval: float = 0.005,
) -> bool:
    """Poll ``predicate`` until it holds; False when ``run`` ended first or on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if run is not None and not run.alive:
            return predicate()
        time.sleep(interval)
    return False


_LISTED = re.compile(r'^all_model_checkpoint_paths:\s*"(?:.*/)?ckpt-(\d+)"', re.MULTILINE)


def committed_checkpoints(run_dir: Path) -> list[int]:
    """Numbers (global steps) of the checkpoints the run directory's index lists."""
    try:
        text = (Path(run_dir) / "checkpoints" / "checkpoint").read_text()
    except (OSError, UnicodeDecodeError):
        return []
    return sorted(int(n) for n in _LISTED.findall(text))


class DirectoryWatch:
    """Report names created in a folder as soon as they appear.

    Uses Linux's inotify (through ctypes), so a checkpoint's temporary folder is seen
    within microseconds of its creation; elsewhere it polls the folder every
    millisecond.

    Example:
        >>> with DirectoryWatch(run_dir / "checkpoints") as watch:  # doctest: +SKIP
        ...     name = watch.next_created(lambda n: n.endswith("_temp"), timeout=60)
    """

    _IN_CREATE, _IN_MOVED_TO = 0x100, 0x80
    _HEADER = struct.Struct("iIII")

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._fd = -1
        self._seen = set(os.listdir(self.folder))
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = libc.inotify_init1(os.O_NONBLOCK)
            if fd >= 0:
                mask = self._IN_CREATE | self._IN_MOVED_TO
                if libc.inotify_add_watch(fd, str(self.folder).encode(), mask) >= 0:
                    self._fd = fd
                else:
                    os.close(fd)
        except (OSError, AttributeError):
            self._fd = -1

    def __enter__(self) -> DirectoryWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _created(self, timeout: float) -> list[str]:
        if self._fd < 0:
            time.sleep(min(timeout, 0.001))
            names = set(os.listdir(self.folder))
            new, self._seen = sorted(names - self._seen), names
            return new
        ready, _, _ = select.select([self._fd], [], [], timeout)
        if not ready:
            return []
        data = os.read(self._fd, 65536)
        names, offset = [], 0
        while offset + self._HEADER.size <= len(data):
            _, _, _, length = self._HEADER.unpack_from(data, offset)
            start = offset + self._HEADER.size
            names.append(data[start : start + length].rstrip(b"\0").decode(errors="replace"))
            offset = start + length
        return names

    def next_created(
        self, match: Callable[[str], bool], timeout: float, alive: Callable[[], bool] = bool
    ) -> str | None:
        """The next created name ``match`` accepts; None on timeout or when not ``alive()``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name in self._created(0.05):
                if match(name):
                    return name
            if not alive():
                return None
        return None


# ------------------------------------------------------------------------- data


def write_movielens_100k(
    folder: Path, users: int = 60, items: int = 80, ratings: int = 2400, seed: int = 0
) -> Path:
    """Write a small dataset in MovieLens-100K's official layout (u.data, u.item, u.user).

    Ratings depend on a user and an item effect, so a model has something to learn.

    Returns:
        ``folder``, ready for ``data.path``.
    """
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    user_effect = [rng.gauss(0, 0.8) for _ in range(users + 1)]
    item_effect = [rng.gauss(0, 0.8) for _ in range(items + 1)]
    pairs: set[tuple[int, int]] = set()
    while len(pairs) < ratings:
        pairs.add((len(pairs) % users + 1, rng.randint(1, items)))
    lines = []
    for n, (u, i) in enumerate(sorted(pairs, key=lambda p: rng.random())):
        stars = round(3.3 + user_effect[u] + item_effect[i] + rng.gauss(0, 0.6))
        lines.append(f"{u}\t{i}\t{min(5, max(1, stars))}\t{880000000 + n}")
    (folder / "u.data").write_text("\n".join(lines) + "\n")
    movies = []
    for i in range(1, items + 1):
        flags = ["0"] * 19
        flags[i % 19] = "1"
        title = f"Movie {i} ({1950 + i % 50})"
        movies.append("|".join([str(i), title, f"01-Jan-{1950 + i % 50}", "", "http://x", *flags]))
    (folder / "u.item").write_text("\n".join(movies) + "\n", encoding="latin-1")
    people = [f"{u}|{20 + u % 40}|{'MF'[u % 2]}|student|{u:05d}" for u in range(1, users + 1)]
    (folder / "u.user").write_text("\n".join(people) + "\n")
    return folder


def _zip_folder(folder: Path, target: Path) -> Path:
    import zipfile

    with zipfile.ZipFile(target, "w") as archive:
        for path in sorted(folder.iterdir()):
            archive.write(path, f"ml-100k/{path.name}")
    return target


def _edit_line(path: Path, line: int, edit: Callable[[list[str]], list[str]]) -> None:
    rows = path.read_text().splitlines()
    rows[line] = "\t".join(edit(rows[line].split("\t")))
    path.write_text("\n".join(rows) + "\n")


def partial_files(*folders: Path) -> list[str]:
    """What a failed run must not leave: temporary names, checkpoints, metrics, config.

    Lists, anywhere under each folder, every entry whose name holds ``.tmp``,
    ``.old-`` or ``_temp``, and directly in it any ``checkpoints/``, ``export/``,
    ``metrics.json`` or ``config.yaml`` (a run that stops on bad input trains nothing;
    Hydra's own record in ``.hydra/`` is not the run's).
    """
    found = []
    for folder in map(Path, folders):
        if not folder.exists():
            continue
        for path in folder.rglob("*"):
            if ".tmp" in path.name or ".old-" in path.name or path.name.endswith("_temp"):
                found.append(str(path))
        for name in ("checkpoints", "export", "metrics.json", "config.yaml"):
            if (folder / name).exists():
                found.append(str(folder / name))
    return sorted(found)


# ------------------------------------------------------------------- bad inputs


@dataclass(frozen=True)
class BadInput:
    """One mistake a user can make, and what the error must name.

    Attributes:
        name: Short description.
        overrides: Command-line overrides; ``{data}``, ``{cache}`` and ``{work}`` are
            replaced with the dataset folder, the data cache and the case's folder.
        names: Text the message must contain (the key, the file).
        prepare: Makes the broken file(s) in the case's folder (None: nothing to make).
        before_tensorflow: Whether the mistake is caught before TensorFlow starts.
    """

    name: str
    overrides: tuple[str, ...]
    names: str
    prepare: Callable[[Path, Path], None] | None = None
    before_tensorflow: bool = True


def _copy_data(data: Path, work: Path) -> Path:
    target = work / "ml-100k"
    shutil.copytree(data, target)
    return target


def _broken(edit: Callable[[Path], None]) -> Callable[[Path, Path], None]:
    def prepare(data: Path, work: Path) -> None:
        edit(_copy_data(data, work))

    return prepare


def _truncate(path: Path, keep: float = 0.5, extra: int = 3) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep) + extra])


def _cut_mid_line(path: Path) -> None:
    """Cut a tab-separated file in the middle of a line, as an interrupted copy does."""
    data = path.read_bytes()
    cut = data.index(b"\t", len(data) // 2) + 1
    path.write_bytes(data[:cut])


def _truncated_zip(data: Path, work: Path) -> None:
    archive = _zip_folder(data, work / "ml-100k.zip")
    _truncate(archive)


def _bad_download(data: Path, work: Path) -> None:
    downloads = work / "cache" / "downloads"
    downloads.mkdir(parents=True)
    (downloads / "ml-latest-small.zip").write_bytes(b"not the GroupLens zip\n" * 10)


def _truncated_imdb(data: Path, work: Path) -> None:
    import io
    import tarfile

    tarball = work / "aclImdb.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        for split in ("train", "test"):
            for label in ("pos", "neg"):
                for n in range(20):
                    text = (f"review {n} " * 40).encode()
                    info = tarfile.TarInfo(
                        f"aclImdb/{split}/{label}/{n}_{8 if label == 'pos' else 2}.txt"
                    )
                    info.size = len(text)
                    tar.addfile(info, io.BytesIO(text))
    _truncate(tarball)


_RANKING = ("+experiment=movielens_ranking", "data.path={data}", "data.data_dir={cache}")

#: The bad inputs the benchmark and the tests try (``{data}`` is a good copy).
BAD_INPUTS: tuple[BadInput, ...] = (
    # Caught by Hydra while composing, or by recsys.train's syntax check.
    BadInput("unknown key", ("trainer.epochz=3",), "trainer.epochz"),
    BadInput("override syntax", ("trainer.epochs=[1",), "trainer.epochs=[1"),
    BadInput("empty key", ("=5",), "'=5'"),
    BadInput("unknown optimizer", ("optimizer=nope",), "optimizer/nope"),
    BadInput("unknown experiment", ("+experiment=nope",), "experiment/nope"),
    BadInput("list without -m", ("trainer.epochs=1,2",), "trainer.epochs"),
    # Data module arguments: checked before TensorFlow starts.
    BadInput("unknown variant", ("+experiment=movielens", *_RANKING[1:], "data.variant=2m"), "data.variant"),
    BadInput("test fraction > 1", (*_RANKING, "data.test_fraction=1.5"), "data.test_fraction"),
    BadInput("test fraction 0", (*_RANKING, "data.test_fraction=0"), "data.test_fraction"),
    BadInput("negative val fraction", (*_RANKING, "data.val_fraction=-0.1"), "data.val_fraction"),
    BadInput("zero batch size", (*_RANKING, "data.batch_size=0"), "data.batch_size"),
    BadInput("unknown split", (*_RANKING, "data.split=sideways"), "data.split"),
    BadInput("data seed not a number", (*_RANKING, "data.seed=abc"), "data.seed"),
    BadInput("time cutoff not a date", (*_RANKING, "data.split=time", "data.time_cutoff=soon"), "data.time_cutoff"),
    BadInput("missing data path", (*_RANKING, "data.path={work}/nowhere.zip"), "data.path"),
    BadInput("unknown data key", (*_RANKING, "+data.shuffle=false"), "data.shuffle"),
    BadInput("negative threads", (*_RANKING, "hardware.intra_op_threads=-1"), "hardware.intra_op_threads"),
    BadInput("unknown allocator", (*_RANKING, "hardware.allocator=bogus"), "hardware.allocator"),
    # Data files.
    BadInput(
        "truncated ratings file",
        (*_RANKING[:1], "data.path={work}/ml-100k", "data.data_dir={cache}"),
        "u.data",
        _broken(lambda d: _cut_mid_line(d / "u.data")),
    ),
    BadInput(
        "NaN rating",
        (*_RANKING[:1], "data.path={work}/ml-100k", "data.data_dir={cache}"),
        "u.data",
        _broken(lambda d: _edit_line(d / "u.data", 4, lambda f: [*f[:2], "nan", f[3]])),
    ),
    BadInput(
        "rating out of range",
        (*_RANKING[:1], "data.path={work}/ml-100k", "data.data_dir={cache}"),
        "u.data",
        _broken(lambda d: _edit_line(d / "u.data", 9, lambda f: [*f[:2], "9", f[3]])),
    ),
    BadInput(
        "non-UTF-8 ratings",
        (*_RANKING[:1], "data.path={work}/ml-100k", "data.data_dir={cache}"),
        "u.data",
        _broken(lambda d: (d / "u.data").write_bytes(b"1\t2\t3\t4\n\xff\xfe\t1\t3\t5\n")),
    ),
    BadInput(
        "empty ratings file",
        (*_RANKING[:1], "data.path={work}/ml-100k", "data.data_dir={cache}"),
        "u.data",
        _broken(lambda d: (d / "u.data").write_bytes(b"")),
    ),
    BadInput(
        "missing items file",
        (*_RANKING[:1], "data.path={work}/ml-100k", "data.data_dir={cache}"),
        "u.item",
        _broken(lambda d: (d / "u.item").unlink()),
    ),
    BadInput(
        "truncated zip",
        (*_RANKING[:1], "data.path={work}/ml-100k.zip", "data.data_dir={cache}"),
        "ml-100k.zip",
        _truncated_zip,
    ),
    BadInput(
        "wrong checksum",
        ("+experiment=movielens_ranking", "data.variant=latest-small", "data.data_dir={work}/cache"),
        "ml-latest-small.zip",
        _bad_download,
    ),
    BadInput(
        "truncated IMDB tarball",
        ("+experiment=imdb", "data.path={work}/aclImdb.tar.gz", "data.data_dir={cache}"),
        "aclImdb.tar.gz",
        _truncated_imdb,
    ),
    # Read after TensorFlow starts: the trainer, the model, the optimizer.
    BadInput("zero epochs", (*_RANKING, "trainer.epochs=0"), "trainer.epochs", before_tensorflow=False),
    BadInput("epochs not a number", (*_RANKING, "trainer.epochs=abc"), "trainer.epochs", before_tensorflow=False),
    BadInput("negative checkpoint interval", (*_RANKING, "trainer.checkpoint_every_steps=-1"), "trainer.checkpoint_every_steps", before_tensorflow=False),
    BadInput("resume not a bool", (*_RANKING, "trainer.resume=maybe"), "trainer.resume", before_tensorflow=False),
    BadInput("unknown verbosity", (*_RANKING, "trainer.verbose=7"), "trainer.verbose", before_tensorflow=False),
    BadInput("unknown trainer key", (*_RANKING, "+trainer.epochz=3"), "trainer.epochz", before_tensorflow=False),
    BadInput("callback that does not exist", (*_RANKING, "trainer.callbacks=[{_target_:nope.Callback}]"), "trainer.callbacks", before_tensorflow=False),
    BadInput("zero embedding size", (*_RANKING, "model.embedding_dim=0"), "model.embedding_dim", before_tensorflow=False),
    BadInput("unknown pooling", (*_RANKING, "model.history_pooling=max"), "model.history_pooling", before_tensorflow=False),
    BadInput("negative learning rate", (*_RANKING, "optimizer=adam", "optimizer.learning_rate=-0.1"), "optimizer.learning_rate", before_tensorflow=False),
    BadInput("optimizer that does not exist", (*_RANKING, "optimizer._target_=nope.Adam"), "optimizer", before_tensorflow=False),
    BadInput("seed not a number", (*_RANKING, "seed=abc"), "seed", before_tensorflow=False),
)  # fmt: skip


@dataclass
class BadInputResult:
    """What one bad input did.

    Attributes:
        name: The case.
        exit_status: The process's exit status.
        names_it: The message names the key or the file.
        no_traceback: Neither stream holds a Python traceback.
        nothing_partial: No partial file in the data cache or the run directory.
        message: The last lines of stderr.
    """

    name: str
    exit_status: int
    names_it: bool
    no_traceback: bool
    nothing_partial: bool
    message: str

    @property
    def clear(self) -> bool:
        """Non-zero exit, named, no traceback, nothing partial left."""
        return (
            self.exit_status != 0 and self.names_it and self.no_traceback and self.nothing_partial
        )


def check_bad_input(
    case: BadInput,
    data: Path,
    work: Path,
    logs: Path,
    extra: Sequence[str] = (),
    env: dict[str, str] | None = None,
) -> BadInputResult:
    """Run ``python -m recsys.train`` with one bad input and judge what it did.

    Args:
        case: The bad input.
        data: A good copy of the dataset (``{data}``).
        work: A fresh folder for this case (broken files, cache, run directory).
        extra: Overrides added first (e.g. the tests' config search path).
        env: The process's environment.
    """
    work.mkdir(parents=True, exist_ok=True)
    cache = work / "cache"
    if case.prepare is not None:
        case.prepare(data, work)
    before = {str(p) for p in cache.rglob("*")} if cache.exists() else set()
    fill = {"data": str(data), "cache": str(cache), "work": str(work)}
    overrides = list(case.overrides)
    for name, value in fill.items():  # not str.format: overrides hold {_target_: ...}
        overrides = [o.replace("{" + name + "}", value) for o in overrides]
    run_dir = work / "run"
    run = start_training([*extra, "trainer.tensorboard=false", *overrides], run_dir, logs, env)
    status = run.wait()
    err, out = run.err(), run.out()
    new_in_cache = {str(p) for p in cache.rglob("*")} - before if cache.exists() else set()
    # A broken data file must not reach the cache; a good one read before another
    # mistake stopped the run may (it is complete).
    cached = [p for p in new_in_cache if p.endswith(".parquet")] if case.prepare else []
    return BadInputResult(
        case.name,
        status,
        case.names in err,
        TRACEBACK not in err and TRACEBACK not in out,
        not partial_files(run_dir) and not cached and not partial_files(cache),
        "\n".join(err.strip().splitlines()[-3:]),
    )


# -------------------------------------------------------------------- the suite


@dataclass
class Setup:
    """The training command every scenario runs, and where things go."""

    overrides: list[str]
    work: Path
    logs: Path
    every_steps: int
    rng: random.Random
    env: dict[str, str] | None = None
    total_steps: int = 0
    notes: list[str] = field(default_factory=list)

    def start(self, run_dir: Path, *more: str) -> TrainRun:
        return start_training([*self.overrides, *more], run_dir, self.logs, self.env)

    def say(self, text: str) -> None:
        self.notes.append(text)
        print(f"  {text}", flush=True)


def _final(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "metrics.json").read_text())


def _difference(got: dict[str, Any], want: dict[str, Any]) -> float | None:
    """Largest absolute difference over the test metrics and the history (None: not comparable)."""
    keys = [k for k in want if k.startswith(("test/", "val/"))]
    if got.get("status") != "completed" or set(keys) - set(got):
        return None
    worst = max((abs(got[k] - want[k]) for k in keys), default=0.0)
    for name, values in want["history"].items():
        if name == "epoch_seconds":
            continue
        mine = got["history"].get(name)
        if mine is None or len(mine) != len(values):
            return None
        worst = max([worst, *(abs(a - b) for a, b in zip(mine, values, strict=True))])
    return worst


def _wait_checkpoints(run: TrainRun, count: int = 1, after: int = -1) -> bool:
    return wait_for(
        lambda: len([n for n in committed_checkpoints(run.run_dir) if n > after]) >= count, run
    )


def _random_point(setup: Setup, run: TrainRun, after: int = -1) -> bool:
    """Wait for a random step of the run, then a random part of a checkpoint interval.

    The step is drawn between the first step checkpoint after ``after`` and the last
    ones of the run; once a checkpoint at or past it is listed, the wait goes on for a
    random part of the time the last interval between two checkpoints took, so the
    signal lands while the run trains, between two checkpoints. False when the run
    ended first.
    """
    every = setup.every_steps
    low = max(after, 0) + every
    target = setup.rng.randrange(low, max(low + 1, setup.total_steps - 2 * every))
    seen: list[tuple[int, float]] = []

    def reached() -> bool:
        newest = max(committed_checkpoints(run.run_dir), default=-1)
        if not seen or newest != seen[-1][0]:
            seen.append((newest, time.monotonic()))
        return newest >= target

    if not wait_for(reached, run):
        return False
    interval = seen[-1][1] - seen[-2][1] if len(seen) > 2 else 0.05
    time.sleep(setup.rng.uniform(0, interval))
    return run.alive


def kill_during_write(run: TrainRun, attempts: int = 20) -> str | None:
    """kill -9 ``run`` while it writes a checkpoint; the temporary folder then left.

    Freezes the process (SIGSTOP) as soon as a ``ckpt-N_temp`` folder appears, and
    kills it only if the folder is still there (the write is unfinished); otherwise
    lets it go on and waits for the next checkpoint.
    """
    folder = run.run_dir / "checkpoints"
    with DirectoryWatch(folder) as watch:
        for _ in range(attempts):
            name = watch.next_created(
                lambda n: n.endswith("_temp"), DEFAULT_TIMEOUT, lambda: run.alive
            )
            if name is None:
                return None
            run.send(signal.SIGSTOP)
            if (folder / name).exists():
                run.send(signal.SIGKILL)
                run.wait()
                return name
            run.send(signal.SIGCONT)
    return None


def scenario_kill9(setup: Setup, reference: dict[str, Any], kills: int = 2) -> dict[str, Any]:
    """kill -9 at random points and once mid-write, rerunning after each."""
    run_dir = setup.work / "kill9"
    done = {"kills": 0, "during_write": 0, "resumed_from": []}
    for n in range(kills + 1):
        run = setup.start(run_dir)
        if n < kills:
            if not _random_point(setup, run, after=max(committed_checkpoints(run_dir), default=-1)):
                run.wait()
                break
            last = committed_checkpoints(run_dir)[-1]
            run.send(signal.SIGKILL)
            run.wait()
            done["kills"] += 1
            setup.say(f"kill -9 #{n + 1}: after checkpoint ckpt-{last}")
        else:
            name = kill_during_write(run)
            if name is not None:
                done["kills"] += 1
                done["during_write"] += 1
                setup.say(f"kill -9 #{n + 1}: while {name}/ was being written")
            else:
                run.wait()
    final = setup.start(run_dir)
    status = final.wait()
    resumed = re.findall(r"Resuming from \S*(ckpt-\d+)", (run_dir / "train.log").read_text())
    done["resumed_from"] = resumed
    done["final_status"] = status
    done["difference"] = _difference(_final(run_dir), reference) if status == 0 else None
    return done


def scenario_sigterm(setup: Setup, reference: dict[str, Any], signals: int = 2) -> dict[str, Any]:
    """SIGTERM at random points: status 143, the message, steps redone on resume."""
    run_dir = setup.work / "sigterm"
    done: dict[str, Any] = {
        "signals": 0,
        "exit_143": 0,
        "message": 0,
        "redone": [],
        "seconds_to_exit": [],
    }
    stopped_at: int | None = None
    for n in range(signals + 1):
        run = setup.start(run_dir)
        if stopped_at is not None:  # how far back the resumed run starts
            wait_for(lambda r=run: r.resumed_from() is not None, run)
            start = run.resumed_from()
            done["redone"].append(None if start is None else stopped_at - start)
            setup.say(f"SIGTERM #{n}: stopped at ckpt-{stopped_at}, resumed from ckpt-{start}")
        if n == signals:
            break
        if not _random_point(setup, run, after=max(committed_checkpoints(run_dir), default=-1)):
            run.wait()
            break
        sent = time.monotonic()
        run.send(signal.SIGTERM)
        status = run.wait()
        done["seconds_to_exit"].append(round(time.monotonic() - sent, 2))
        done["signals"] += 1
        done["exit_143"] += status == 128 + signal.SIGTERM
        done["message"] += "Interrupted by SIGTERM" in run.err()
        stopped = re.search(r"Interrupted by SIGTERM: saved checkpoint ckpt-(\d+)", run.err())
        stopped_at = int(stopped.group(1)) if stopped else None
    status = run.wait()
    done["final_status"] = status
    done["difference"] = _difference(_final(run_dir), reference) if status == 0 else None
    return done


def _newest_data(run_dir: Path) -> Path:
    newest = committed_checkpoints(run_dir)[-1]
    return run_dir / "checkpoints" / f"ckpt-{newest}.data-00000-of-00001"


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def scenario_corrupted(setup: Setup, reference: dict[str, Any]) -> dict[str, Any]:
    """Corrupt the newest checkpoint three ways (each must fall back), then all of them."""
    run_dir = setup.work / "corrupted"
    corruptions: list[tuple[str, Callable[[Path], None]]] = [
        ("truncated newest data file", lambda d: _truncate(_newest_data(d), 0.5, 0)),
        ("flipped byte in newest data file", lambda d: _flip_byte(_newest_data(d))),
        (
            "garbled checkpoint index",
            lambda d: (d / "checkpoints" / "checkpoint").write_text("}{ not a proto"),
        ),
    ]
    done: dict[str, Any] = {"tried": 0, "recovered": 0, "cases": []}
    corrupted: tuple[str, int] | None = None
    for n in range(len(corruptions) + 1):
        run = setup.start(run_dir)
        if corrupted is not None:  # this run must fall back (or find the checkpoints)
            wait_for(lambda r=run: r.resumed_from() is not None, run)
            what, newest = corrupted
            log, start = run.log(), run.resumed_from()
            ok = start is not None and (
                (start < newest and "unusable" in log and "Falling back" in log)
                or "cannot be read" in log
            )
            done["recovered"] += ok
            done["cases"].append(
                {"corruption": what, "newest": newest, "resumed_from": start, "recovered": ok}
            )
            setup.say(f"{what}: newest was ckpt-{newest}, resumed from ckpt-{start}")
        if n == len(corruptions):
            break
        seen = max(committed_checkpoints(run_dir), default=-1)
        if not _wait_checkpoints(run, 2, seen):
            run.wait()
            break
        run.send(signal.SIGTERM)
        run.wait()
        what, corrupt = corruptions[n]
        corrupted = (what, committed_checkpoints(run_dir)[-1])
        corrupt(run_dir)
        done["tried"] += 1
    status = run.wait()
    done["final_status"] = status
    done["difference"] = _difference(_final(run_dir), reference) if status == 0 else None

    # Every checkpoint unusable: the run must stop, not train from the start.
    run_dir = setup.work / "all-corrupted"
    run = setup.start(run_dir)
    if _wait_checkpoints(run, 2):
        run.send(signal.SIGTERM)
    run.wait()
    for path in (run_dir / "checkpoints").glob("ckpt-*.data-*"):
        _truncate(path, 0.5, 0)
    rerun = setup.start(run_dir)
    status = rerun.wait()
    refused = status == 4 and "No usable checkpoint" in rerun.err()
    untouched = json.loads((run_dir / "metrics.json").read_text()).get("status") == "interrupted"
    done["none_usable_refused"] = refused and untouched
    setup.say(
        f"every checkpoint truncated: exit {status}, refused to start over: {refused and untouched}"
    )
    return done


def scenario_two_runs(setup: Setup, reference: dict[str, Any]) -> dict[str, Any]:
    """A second run on a live run's directory refuses; after kill -9 it takes over."""
    run_dir = setup.work / "two-runs"
    first = setup.start(run_dir)
    done: dict[str, Any] = {}
    if not _wait_checkpoints(first, 1):
        first.wait()
        return {"refused": False}
    second = setup.start(run_dir)
    status = second.wait()
    done["refused"] = status == 3 and f"pid {first.pid}" in second.err() and first.alive
    done["refusal_seconds"] = round(time.monotonic() - second.started, 2)
    first.send(signal.SIGKILL)
    first.wait()
    third = setup.start(run_dir)
    status = third.wait()
    done["took_over"] = status == 0 and "Took over the lock" in third.log()
    done["difference"] = _difference(_final(run_dir), reference) if status == 0 else None
    setup.say(
        f"second run refused (exit 3, names pid {first.pid}) in {done['refusal_seconds']} s: "
        f"{done['refused']}; after kill -9 the next run took over: {done['took_over']}"
    )
    return done


def scenario_bad_inputs(setup: Setup, data: Path, jobs: int) -> list[BadInputResult]:
    """Every :data:`BAD_INPUTS` case, ``jobs`` at a time."""
    folder = setup.work / "bad-inputs"

    def one(item: tuple[int, BadInput]) -> BadInputResult:
        n, case = item
        result = check_bad_input(case, data, folder / f"{n:02d}", setup.logs / "bad", env=setup.env)
        mark = "clear" if result.clear else "NOT CLEAR"
        print(
            f"  [{mark}] {case.name}: exit {result.exit_status}; {result.message.splitlines()[-1][:150] if result.message else ''}",
            flush=True,
        )
        return result

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(one, enumerate(BAD_INPUTS)))


# ------------------------------------------------------------------------ main


@contextmanager
def _work_folder(path: str | None, keep: bool) -> Iterator[Path]:
    folder = Path(path) if path else Path(tempfile.mkdtemp(prefix="recsys-faults-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield folder
    finally:
        if not keep and not path:
            shutil.rmtree(folder, ignore_errors=True)


def _verdict(difference: float | None) -> str:
    if difference is None:
        return "no (did not finish)"
    return "yes" if difference == 0 else f"no (max difference {difference:.3g})"


def _report(figures: dict[str, Any]) -> list[str]:
    k, s, c, t = figures["kill9"], figures["sigterm"], figures["corrupted"], figures["two_runs"]
    equal = {
        name: figures[name].get("difference")
        for name in ("kill9", "sigterm", "corrupted", "two_runs")
    }
    lines = [
        f"kill -9 survived: {k['kills']} of {k['kills']} ({k['during_write']} during a checkpoint write); "
        f"final run exit {k['final_status']}",
        f"SIGTERM sent: {s['signals']}; exit 143 with 'Interrupted by SIGTERM': "
        f"{min(s['exit_143'], s['message'])}; steps redone on resume: {s['redone']} (limit "
        f"checkpoint_every_steps={figures['every_steps']}); seconds from signal to exit: "
        f"{s['seconds_to_exit']}; final run exit {s['final_status']}",
        f"corrupted checkpoints recovered: {c['recovered']} of {c['tried']} "
        f"({', '.join(x['corruption'] for x in c['cases'])}); every checkpoint corrupted: "
        f"refused to start over: {c['none_usable_refused']}",
        f"second run on a live run's directory refused: {t.get('refused')} "
        f"(in {t.get('refusal_seconds')} s); took over after kill -9: {t.get('took_over')}",
    ]
    bad = figures.get("bad_inputs")
    if bad is not None:
        clear = sum(r["clear"] for r in bad)
        lines.append(f"bad inputs tried: {len(bad)}; clear error: {clear}")
    shown = ", ".join(f"{name} {_verdict(d)}" for name, d in equal.items())
    lines.append(f"final metrics and history equal the uninterrupted run's: {shown}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """Run the suite; print the figures; 0 when every fault was survived."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="seed of the random kill points")
    parser.add_argument(
        "--data-path", help="MovieLens-100K copy to train on (default: a small one written here)"
    )
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--every-steps", type=int, default=5, help="trainer.checkpoint_every_steps")
    parser.add_argument("--jobs", type=int, default=1, help="bad-input runs at a time")
    parser.add_argument("--skip-bad-inputs", action="store_true")
    parser.add_argument("--workdir", help="work folder (default: a temporary one, removed)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary work folder")
    parser.add_argument("--output", help="also write the figures as JSON here")
    args = parser.parse_args(argv)

    started = time.monotonic()
    with _work_folder(args.workdir, args.keep) as work:
        data = (
            Path(args.data_path)
            if args.data_path
            else write_movielens_100k(work / "data" / "ml-100k")
        )
        setup = Setup(
            overrides=[
                "+experiment=movielens_ranking",
                f"data.path={data}",
                f"data.data_dir={work / 'cache'}",
                f"data.batch_size={args.batch_size}",
                f"trainer.epochs={args.epochs}",
                f"trainer.checkpoint_every_steps={args.every_steps}",
                "trainer.tensorboard=false",
                "trainer.export=false",
                "trainer.verbose=2",
            ],
            work=work,
            logs=work / "logs",
            every_steps=args.every_steps,
            rng=random.Random(args.seed),
        )
        print(f"recsys fault suite (seed {args.seed}) in {work}", flush=True)
        print("uninterrupted reference run ...", flush=True)
        reference_run = setup.start(work / "reference")
        if reference_run.wait() != 0:
            print(reference_run.err()[-3000:], file=sys.stderr)
            return 1
        reference = _final(work / "reference")
        epoch_end = re.search(
            r"Saved checkpoint ckpt-(\d+) \(end of epoch 1\)", reference_run.log()
        )
        assert epoch_end is not None, "the reference run did not log its first epoch's end"
        setup.total_steps = int(epoch_end.group(1)) * args.epochs
        figures: dict[str, Any] = {"seed": args.seed, "every_steps": args.every_steps}
        for name, scenario in (
            ("kill9", scenario_kill9),
            ("sigterm", scenario_sigterm),
            ("corrupted", scenario_corrupted),
            ("two_runs", scenario_two_runs),
        ):
            print(f"{name} ...", flush=True)
            figures[name] = scenario(setup, reference)
        if not args.skip_bad_inputs:
            print(f"bad inputs ({len(BAD_INPUTS)}) ...", flush=True)
            figures["bad_inputs"] = [
                {**asdict(r), "clear": r.clear} for r in scenario_bad_inputs(setup, data, args.jobs)
            ]
        figures["seconds"] = round(time.monotonic() - started, 1)
    lines = _report(figures)
    print(f"\nrecsys fault suite, seed {args.seed}, {figures['seconds']} s:")
    for line in lines:
        print(f"  {line}")
    if args.output:
        Path(args.output).write_text(json.dumps(figures, indent=2, default=str) + "\n")
    survived = (
        all(
            figures[n].get("difference") == 0 for n in ("kill9", "sigterm", "corrupted", "two_runs")
        )
        and figures["corrupted"]["none_usable_refused"]
        and figures["two_runs"].get("refused")
        and all(r["clear"] for r in figures.get("bad_inputs", []))
    )
    return 0 if survived else 1


if __name__ == "__main__":
    sys.exit(main())
