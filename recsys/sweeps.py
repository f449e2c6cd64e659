"""The end of a multirun: one summary row per job, printed and written as CSV.

``conf/hydra/default.yaml`` registers :class:`SweepSummary` as a Hydra callback, so
``python -m recsys.train -m ...`` ends with a table of every job (its overrides, the
value of its ``optimized_metric``, its run directory) and writes it to
``<sweep dir>/summary.csv``. The rows are read back from the job directories, so
they are right whichever launcher ran the jobs (in this process or in others) and a
job that failed shows up as ``failed`` instead of being left out.

Nothing here imports TensorFlow.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

__all__ = ["JobRow", "SweepSummary", "format_table", "read_sweep", "write_summary"]

log = logging.getLogger(__name__)

SUMMARY_FILE = "summary.csv"


@dataclass(frozen=True)
class JobRow:
    """One job of a sweep.

    Attributes:
        job: Hydra's job number.
        overrides: The job's overrides, space-separated.
        optimized_metric: The metric the sweep optimizes (``optimized_metric``), or "".
        value: Its value in the job's ``metrics.json`` (NaN when missing).
        status: ``ok`` (metrics written) or ``failed``.
        run_dir: The job's run directory.
    """

    job: int
    overrides: str
    optimized_metric: str
    value: float
    status: str
    run_dir: str


def _load_yaml(path: Path) -> Any:
    return OmegaConf.to_container(OmegaConf.load(path)) if path.is_file() else None


def _job_row(job_dir: Path) -> JobRow | None:
    overrides = _load_yaml(job_dir / ".hydra" / "overrides.yaml")
    if overrides is None:
        return None
    hydra_cfg = _load_yaml(job_dir / ".hydra" / "hydra.yaml") or {}
    number = hydra_cfg.get("hydra", {}).get("job", {}).get("num")
    config = _load_yaml(job_dir / ".hydra" / "config.yaml") or {}
    metric = config.get("optimized_metric") or ""
    metrics_file = job_dir / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else None
    value = metrics.get(metric) if metrics and metric else None
    return JobRow(
        job=int(number) if number is not None else -1,
        overrides=" ".join(str(o) for o in overrides),
        optimized_metric=str(metric),
        value=float(value) if isinstance(value, int | float) else math.nan,
        status="ok" if metrics is not None else "failed",
        run_dir=str(job_dir),
    )


def read_sweep(sweep_dir: str | Path) -> list[JobRow]:
    """Rows of every job directory under ``sweep_dir``, by job number.

    Args:
        sweep_dir: Hydra's sweep directory (``hydra.sweep.dir``).

    Returns:
        One :class:`JobRow` per folder holding Hydra's ``.hydra/overrides.yaml``.
    """
    root = Path(sweep_dir)
    if not root.is_dir():
        return []
    folders = sorted({p.parent.parent for p in root.glob("**/.hydra/overrides.yaml")})
    rows = [row for row in map(_job_row, folders) if row is not None]
    return sorted(rows, key=lambda r: (r.job, r.run_dir))


def format_table(rows: Sequence[JobRow]) -> str:
    """The rows as an aligned text table."""
    header = ("job", "overrides", "optimized_metric", "value", "status", "run_dir")
    lines = [header] + [
        (
            str(r.job),
            r.overrides,
            r.optimized_metric,
            "" if math.isnan(r.value) else f"{r.value:.6g}",
            r.status,
            r.run_dir,
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def write_summary(rows: Sequence[JobRow], path: str | Path) -> Path:
    """Write ``rows`` as CSV (through a temporary file, then a rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(JobRow.__dataclass_fields__))
        writer.writeheader()
        for row in rows:
            writer.writerow({**asdict(row), "value": "" if math.isnan(row.value) else row.value})
    tmp.replace(path)
    return path


class SweepSummary(Callback):
    """Hydra callback: at the end of a multirun, print and save the jobs' summary.

    Example (``conf/hydra/default.yaml``)::

        callbacks:
          sweep_summary:
            _target_: recsys.sweeps.SweepSummary
    """

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Read every job of ``hydra.sweep.dir``; print the table and write ``summary.csv``."""
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = read_sweep(sweep_dir)
        if not rows:
            return
        path = write_summary(rows, sweep_dir / SUMMARY_FILE)
        print(f"Sweep summary ({path}):\n{format_table(rows)}", flush=True)
