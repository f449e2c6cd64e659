"""Is a SavedModel loadable by stock TensorFlow (Serving)? Check its graphs' op types.

A SavedModel that uses an op from a custom library (ScaNN's ``Scann>ScannSearchBatched``,
say) fails to load in a TensorFlow Serving binary without that library: "Op type not
registered". `non_stock_ops` reads ``saved_model.pb`` (every meta graph, its nodes and
every function of its library) and returns the op types TensorFlow itself does not
register, plus the ones it registers but that cannot run outside Python
(``PyFunc``, ``EagerPyFunc``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from recsys._tf import tf  # noqa: F401  (the environment is set before TensorFlow loads)

__all__ = ["PYTHON_ONLY_OPS", "graph_op_types", "non_stock_ops"]

# Registered by TensorFlow, but they call back into the Python interpreter that built
# the graph: a server has none.
PYTHON_ONLY_OPS = frozenset({"PyFunc", "PyFuncStateless", "EagerPyFunc"})


def _registered(op: str) -> bool:
    # TensorFlow's op registry (C++), also what `tf.raw_ops` is generated from; no
    # public alias exists. Imported here, after `recsys._tf` set the environment.
    from tensorflow.python.framework import op_def_registry

    return op_def_registry.get(op) is not None


def _read(saved_model: str | os.PathLike | Any) -> Any:
    from tensorflow.core.protobuf import saved_model_pb2  # the SavedModel proto

    if isinstance(saved_model, saved_model_pb2.SavedModel):
        return saved_model
    path = Path(saved_model)
    if path.is_dir():
        path = path / "saved_model.pb"
    if not path.exists():
        raise FileNotFoundError(f"No saved_model.pb at {path}. Pass a SavedModel directory.")
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString(path.read_bytes())
    return proto


def graph_op_types(saved_model: str | os.PathLike | Any) -> dict[str, set[str]]:
    """Every op type in a SavedModel, with where it occurs (graph or function names).

    Calls to the library's own functions (a node whose op is a function name) are not
    op types and are left out.

    Args:
        saved_model: A SavedModel directory, its ``saved_model.pb``, or the parsed
            ``SavedModel`` proto.
    """
    proto = _read(saved_model)
    found: dict[str, set[str]] = {}
    for meta_graph in proto.meta_graphs:
        library = meta_graph.graph_def.library
        functions = {f.signature.name for f in library.function}

        def visit(nodes: Iterable[Any], where: str, functions: set[str] = functions) -> None:
            for node in nodes:
                if node.op not in functions:
                    found.setdefault(node.op, set()).add(where)

        visit(meta_graph.graph_def.node, "graph")
        for function in library.function:
            visit(function.node_def, function.signature.name)
    return found


def non_stock_ops(
    saved_model: str | os.PathLike | Any,
    is_registered: Callable[[str], bool] | None = None,
) -> dict[str, list[str]]:
    """The op types of a SavedModel that stock TensorFlow cannot run, with where they occur.

    Empty means every op is registered by TensorFlow and none needs Python. Run it in
    a process that loaded no custom op libraries (``tf.load_op_library`` registers
    their ops too, and they would pass).

    Example:

    >>> non_stock_ops("export/1")
    {}

    Args:
        saved_model: A SavedModel directory, its ``saved_model.pb``, or the proto.
        is_registered: Op type -> registered; default TensorFlow's op registry.

    Raises:
        FileNotFoundError: No ``saved_model.pb`` there.
    """
    registered = is_registered or _registered
    return {
        op: sorted(where)
        for op, where in sorted(graph_op_types(saved_model).items())
        if op in PYTHON_ONLY_OPS or not registered(op)
    }
