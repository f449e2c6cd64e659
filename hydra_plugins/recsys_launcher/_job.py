"""One sweep job in its own Python process: what crosses the process boundary, and the worker.

Why not pickle everything: the standard library's pickle (cloudpickle is not a
dependency) stores functions by module and name, and ``@hydra.main`` rebinds the
script's ``main`` to a wrapper, so the task function itself cannot be pickled; and
when the app is a script its module is ``__main__``, which a fresh interpreter does
not have. So the parent sends a :class:`TaskRef` (module or script path, qualified
name, and how many ``__wrapped__`` hops lead from that name to the task function),
and the worker imports the app the way :mod:`multiprocessing`'s spawn does: a script
is loaded under another name (so its ``if __name__ == "__main__"`` block does not run)
and aliased as ``__main__`` before the rest of the payload is unpickled.

The payload file holds two pickles: a header of plain values (``sys.path``, working
directory, the task reference), applied before anything of the app is imported, and
the body (the job's composed config, Hydra's singletons). The worker pins itself to
its CPUs before it imports anything else, so TensorFlow never sees the parent's CPUs.
The result file holds the :class:`~hydra.core.utils.JobReturn`; a return value or
exception that cannot be pickled comes back as a :class:`JobTransportError` that says so.

Hydra's plugin scanner skips modules whose name starts with ``_``, so importing this
package never runs the worker.
"""

from __future__ import annotations

import os
import sys

# Pin first: nothing below may start threads or import TensorFlow before this.
if __name__ == "__main__" and len(sys.argv) >= 3 and sys.argv[1] == "--cpus" and sys.argv[2]:
    from recsys.hardware import pin_to_cpus  # light: no TensorFlow

    pin_to_cpus(int(c) for c in sys.argv[2].split(","))

import importlib
import importlib.util
import pickle
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_SCRIPT_MODULE = "__recsys_job_main__"
_MAX_WRAPPED_HOPS = 16


class JobTransportError(RuntimeError):
    """A job's outcome could not be carried between processes as it was."""


class JobCrashedError(RuntimeError):
    """A job's process ended without reporting a result (crash, kill, ``os._exit``)."""


@dataclass(frozen=True)
class TaskRef:
    """How a fresh interpreter finds the task function.

    Args:
        module: the function's module name (``"__main__"`` for a script).
        qualname: its qualified name in that module.
        unwrap: ``__wrapped__`` hops from ``module.qualname`` to the function
            (1 for a ``@hydra.main``-decorated ``main``).
        main_module: for ``__main__``: the module name it was run as with ``-m``, if any.
        main_path: for ``__main__``: the script file, when not run with ``-m``.
    """

    module: str
    qualname: str
    unwrap: int = 0
    main_module: str | None = None
    main_path: str | None = None


def task_reference(task_function: Callable[..., Any]) -> TaskRef:
    """Describe ``task_function`` so a fresh interpreter can import it.

    Raises:
        ValueError: the function is not reachable by name from its module (a lambda,
            a nested function); the message says how to fix it.

    Example:
        >>> import json
        >>> task_reference(json.dumps)
        TaskRef(module='json', qualname='dumps', unwrap=0, main_module=None, main_path=None)
    """
    module_name = getattr(task_function, "__module__", None)
    qualname = getattr(task_function, "__qualname__", None)
    module = sys.modules.get(module_name or "")
    fix = (
        "The recsys launcher runs each job in a fresh process and imports the task function "
        "by name: define it at module level (a `@hydra.main` function in a script is fine)."
    )
    if module is None or not qualname or "<" in qualname:
        raise ValueError(f"Cannot locate task function {task_function!r} by name. {fix}")
    obj: Any = module
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    hops = 0
    while obj is not task_function and obj is not None and hops < _MAX_WRAPPED_HOPS:
        obj = getattr(obj, "__wrapped__", None)
        hops += 1
    if obj is not task_function:
        raise ValueError(
            f"{module_name}.{qualname} does not lead to the task function {task_function!r}. {fix}"
        )
    main_module = main_path = None
    if module_name == "__main__":
        spec = getattr(module, "__spec__", None)
        if spec is not None and spec.name:
            main_module = spec.name
        else:
            main_path = os.path.abspath(module.__file__)  # type: ignore[arg-type]
    return TaskRef(module_name, qualname, hops, main_module, main_path)  # type: ignore[arg-type]


def resolve_task(ref: TaskRef) -> Callable[..., Any]:
    """Import the app and return the task function ``ref`` describes (in the worker)."""
    if ref.module == "__main__":
        if ref.main_module is not None:
            module = importlib.import_module(ref.main_module)
        else:
            assert ref.main_path is not None
            spec = importlib.util.spec_from_file_location(_SCRIPT_MODULE, ref.main_path)
            if spec is None or spec.loader is None:
                raise ImportError(f"Cannot load the app script {ref.main_path!r}.")
            module = importlib.util.module_from_spec(spec)
            sys.modules[_SCRIPT_MODULE] = module
            spec.loader.exec_module(module)
        # Objects pickled from the parent's __main__ (structured-config classes) resolve here.
        sys.modules["__main__"] = module
    else:
        module = importlib.import_module(ref.module)
    obj: Any = module
    for part in ref.qualname.split("."):
        obj = getattr(obj, part)
    for _ in range(ref.unwrap):
        obj = obj.__wrapped__
    return obj


def picklable_singletons() -> dict[Any, Any]:
    """Hydra's singletons (ConfigStore, JobRuntime, ...) that plain pickle can carry."""
    from hydra.core.plugins import Plugins
    from hydra.core.singleton import Singleton

    out = {}
    for cls, instance in Singleton._instances.items():
        if cls is Plugins:
            continue  # rediscovered in the worker
        try:
            pickle.dumps(instance)
        except Exception:
            continue
        out[cls] = instance
    return out


def write_payload(
    path: Path,
    *,
    task_ref: TaskRef,
    sweep_config: Any,
    singletons: dict[Any, Any],
    sys_path: Sequence[str],
    cwd: str,
) -> None:
    """Write the two-part payload the worker reads (see the module docstring)."""
    with open(path, "wb") as f:
        pickle.dump({"sys_path": list(sys_path), "cwd": cwd, "task_ref": task_ref}, f)
        pickle.dump({"sweep_config": sweep_config, "singletons": singletons}, f)


def _portable(ret: Any) -> Any:
    """Make a JobReturn picklable, replacing what is not with a JobTransportError."""
    from hydra.core.utils import JobStatus
    from omegaconf import OmegaConf

    try:
        pickle.dumps(ret._return_value)
    except Exception as err:
        value = ret._return_value
        if ret.status == JobStatus.COMPLETED:
            message = (
                f"The job completed, but its return value of type {type(value).__name__} cannot "
                f"be pickled to send it back to Hydra ({err}). Return plain data (a number, str, "
                "dict or list) from the task function."
            )
        else:
            tb = "".join(traceback.format_exception(value))
            message = f"The job failed with an exception that cannot be pickled:\n{tb}"
        ret.status = JobStatus.FAILED
        ret.return_value = JobTransportError(message)
    try:
        pickle.dumps(ret)
    except Exception:
        # Structured-config classes that cannot be pickled by reference: send plain configs.
        ret.cfg = OmegaConf.create(OmegaConf.to_container(ret.cfg))
        ret.hydra_cfg = OmegaConf.create(OmegaConf.to_container(ret.hydra_cfg))
    return ret


def run_payload(payload: Path, result: Path) -> None:
    """Worker body: load the payload, run the job as Hydra's basic launcher would, save."""
    from hydra._internal.callbacks import Callbacks
    from hydra.core.plugins import Plugins
    from hydra.core.singleton import Singleton
    from hydra.core.utils import JobStatus, run_job, setup_globals
    from hydra.types import HydraContext

    with open(payload, "rb") as f:
        header = pickle.load(f)
        sys.path[:] = header["sys_path"]
        os.chdir(header["cwd"])
        task_function = resolve_task(header["task_ref"])
        # Hydra's plugin scan re-executes plugin modules; do it before unpickling the
        # config, so the classes the config refers to are the ones the modules hold.
        Plugins.instance()
        body = pickle.load(f)

    Singleton._instances.update(body["singletons"])
    setup_globals()
    sweep_config = body["sweep_config"]
    context = HydraContext(config_loader=None, callbacks=Callbacks(sweep_config))  # type: ignore[arg-type]
    ret = run_job(
        hydra_context=context,
        task_function=task_function,
        config=sweep_config,
        job_dir_key="hydra.sweep.dir",
        job_subdir_key="hydra.sweep.subdir",
    )
    if ret.status == JobStatus.FAILED and isinstance(ret._return_value, BaseException):
        exc = ret._return_value
        note = "Traceback in the job's process:\n" + "".join(traceback.format_exception(exc))
        if hasattr(exc, "add_note"):
            exc.add_note(note)
    tmp = result.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        pickle.dump(_portable(ret), f)
    os.replace(tmp, result)  # the parent never reads a half-written result


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m hydra_plugins.recsys_launcher._job --cpus LIST PAYLOAD RESULT``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 4 or args[0] != "--cpus":
        print(
            "usage: python -m hydra_plugins.recsys_launcher._job --cpus LIST PAYLOAD RESULT "
            f"(received {args!r}); this worker is started by the recsys Hydra launcher.",
            file=sys.stderr,
        )
        return 2
    run_payload(Path(args[2]), Path(args[3]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
