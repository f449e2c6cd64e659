"""Detection on fake /sys and /proc trees, CPU splitting, allocator lookup, free memory,
and the shape of the recsys.hardware package (no TensorFlow, planning apart from
process mutation)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

from recsys.hardware import (
    Core,
    Hardware,
    SystemPaths,
    detect,
    find_allocator,
    format_cpu_list,
    free_memory_bytes,
    parse_cpu_list,
    split_cpus,
)

SERVER_FLAGS = "fpu sse sse2 avx fma avx2 avx512f avx512bw avx512vl avx512_vnni avx512_bf16 amx_tile amx_bf16 amx_int8"


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def fake_machine(
    root: Path,
    *,
    topology: Mapping[int, tuple[int, int]] | None,
    nodes: Mapping[int, str] | None = None,
    flags: str = SERVER_FLAGS,
    mem_kb: int | None = 64 * 2**20,
    cgroup: str = "0::/\n",
    cgroup_files: Mapping[str, str] | None = None,
) -> SystemPaths:
    """A fake machine under ``root``: cpu -> (socket, core), NUMA cpulists, cpuinfo, cgroups."""
    paths = SystemPaths.under(root)
    if topology is not None:
        write(paths.sys_cpu / "online", format_cpu_list(topology) + "\n")
        for cpu, (socket, core) in topology.items():
            topo = paths.sys_cpu / f"cpu{cpu}" / "topology"
            write(topo / "physical_package_id", f"{socket}\n")
            write(topo / "core_id", f"{core}\n")
    for node, cpulist in (nodes or {}).items():
        write(paths.sys_node / f"node{node}" / "cpulist", cpulist + "\n")
    if flags is not None:
        cpus = sorted(topology) if topology else [0]
        write(
            paths.proc_cpuinfo,
            "".join(
                f"processor\t: {c}\nmodel name\t: Fake Xeon\nflags\t\t: {flags}\n\n" for c in cpus
            ),
        )
    if mem_kb is not None:
        write(
            paths.proc_meminfo,
            f"MemTotal:       {mem_kb} kB\nMemFree:  1 kB\nMemAvailable: {mem_kb // 2} kB\n",
        )
    write(paths.proc_self_cgroup, cgroup)
    for rel, text in (cgroup_files or {}).items():
        write(paths.cgroup_root / rel, text)
    return paths


# 2 sockets x 2 cores x 2 hyper-threads, numbered the way Linux does: first threads of
# every core (0-3), then their siblings (4-7).
TWO_SOCKET_HT = {
    0: (0, 0),
    1: (0, 1),
    2: (1, 0),
    3: (1, 1),
    4: (0, 0),
    5: (0, 1),
    6: (1, 0),
    7: (1, 1),
}
TWO_NODES = {0: "0-1,4-5", 1: "2-3,6-7"}


def test_two_socket_machine_with_hyperthreads(tmp_path: Path) -> None:
    paths = fake_machine(tmp_path, topology=TWO_SOCKET_HT, nodes=TWO_NODES)
    hw = detect(paths, affinity=range(8))
    assert hw.allowed_cpus == tuple(range(8))
    assert hw.online_cpus == tuple(range(8))
    assert (hw.physical_cores, hw.sockets, hw.threads_per_core) == (4, 2, 2)
    assert {c.cpus for c in hw.cores} == {(0, 4), (1, 5), (2, 6), (3, 7)}
    assert dict(hw.numa_nodes) == {0: (0, 1, 4, 5), 1: (2, 3, 6, 7)}
    assert {"avx2", "avx512f", "amx_tile", "avx512_bf16"} <= hw.isa
    assert "sse2" not in hw.isa  # only flags that decide oneDNN kernels
    assert hw.model_name == "Fake Xeon"
    assert hw.quota_cpus is None and hw.usable_cpus == 8.0
    assert hw.compute_threads == 4  # hyper-threads are not counted as compute threads
    assert hw.memory_bytes == 64 * 2**30
    assert hw.notes == ()
    # Jobs get whole cores (siblings together), one socket each.
    assert split_cpus(hw, 2) == [(0, 1, 4, 5), (2, 3, 6, 7)]
    assert split_cpus(hw, 4) == [(0, 4), (1, 5), (2, 6), (3, 7)]
    # More jobs than cores: hyper-threads are split apart.
    assert split_cpus(hw, 8) == [(0,), (4,), (1,), (5,), (2,), (6,), (3,), (7,)]


def test_container_with_fractional_quota_cgroup_v2(tmp_path: Path) -> None:
    paths = fake_machine(
        tmp_path,
        topology={c: (0, c) for c in range(4)},
        cgroup="0::/kubepods/pod1\n",
        cgroup_files={
            "kubepods/pod1/cpu.max": "150000 100000\n",  # 1.5 CPUs
            "kubepods/cpu.max": "400000 100000\n",  # the parent allows 4: the child is tighter
            "cpu.max": "max 100000\n",
            "kubepods/pod1/memory.max": f"{2 * 2**30}\n",
        },
    )
    hw = detect(paths, affinity=range(4))
    assert hw.quota_cpus == pytest.approx(1.5)
    assert hw.usable_cpus == pytest.approx(1.5)
    assert hw.compute_threads == 1  # rounded down so the container is not throttled
    assert hw.memory_limit_bytes == 2 * 2**30
    assert hw.memory_available_bytes == 2 * 2**30
    assert split_cpus(hw, 1) == [(0,)]
    with pytest.raises(ValueError, match="between 1 and 1"):
        split_cpus(hw, 2)


def test_container_quota_cgroup_v1_inside_namespace(tmp_path: Path) -> None:
    paths = fake_machine(
        tmp_path,
        topology={c: (0, c) for c in range(8)},
        cgroup="4:memory:/docker/abc\n2:cpu,cpuacct:/\n",
        cgroup_files={
            "cpu,cpuacct/cpu.cfs_quota_us": "250000\n",
            "cpu,cpuacct/cpu.cfs_period_us": "100000\n",
            "memory/memory.limit_in_bytes": "9223372036854771712\n",  # v1's "no limit"
        },
    )
    hw = detect(paths, affinity=range(8))
    assert hw.quota_cpus == pytest.approx(2.5)
    assert hw.compute_threads == 2
    assert hw.memory_limit_bytes is None


def test_no_quota_when_v1_quota_is_minus_one(tmp_path: Path) -> None:
    paths = fake_machine(
        tmp_path,
        topology={0: (0, 0), 1: (0, 1)},
        cgroup="1:cpu:/\n",
        cgroup_files={"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"},
    )
    assert detect(paths, affinity=[0, 1]).quota_cpus is None


def test_process_restricted_by_affinity_to_a_subset(tmp_path: Path) -> None:
    paths = fake_machine(tmp_path, topology=TWO_SOCKET_HT, nodes=TWO_NODES)
    hw = detect(paths, affinity=[2, 3])  # e.g. `taskset -c 2,3`
    assert hw.allowed_cpus == (2, 3)
    assert len(hw.online_cpus) == 8
    assert (hw.physical_cores, hw.sockets, hw.threads_per_core) == (2, 1, 1)
    assert dict(hw.numa_nodes) == {1: (2, 3)}
    assert hw.usable_cpus == 2.0
    assert hw.compute_threads == 2
    assert "2 CPUs allowed (2-3) of 8 online" in hw.describe()


def test_hyperthread_pair_counts_as_one_core(tmp_path: Path) -> None:
    paths = fake_machine(tmp_path, topology=TWO_SOCKET_HT, nodes=TWO_NODES)
    hw = detect(paths, affinity=[0, 4])
    assert (hw.physical_cores, hw.threads_per_core, hw.compute_threads) == (1, 2, 1)


def test_machine_without_topology_files_degrades_to_os(tmp_path: Path) -> None:
    paths = SystemPaths.under(tmp_path)  # nothing exists under it
    hw = detect(paths, affinity=[0, 1, 2])
    assert hw.allowed_cpus == (0, 1, 2)
    assert set(hw.allowed_cpus) <= set(hw.online_cpus)
    assert (hw.physical_cores, hw.sockets, hw.threads_per_core) == (3, 1, 1)
    assert hw.quota_cpus is None
    assert hw.isa == frozenset()
    assert hw.memory_bytes is not None  # from os.sysconf
    notes = " ".join(hw.notes)
    assert "topology unreadable" in notes and "NUMA" in notes and "ISA flags unknown" in notes
    assert split_cpus(hw, 3) == [(0,), (1,), (2,)]
    json.dumps(hw.to_dict())  # the record stays JSON-ready when degraded


def test_partial_topology_is_treated_as_missing(tmp_path: Path) -> None:
    paths = fake_machine(tmp_path, topology={0: (0, 0), 1: (0, 1)})
    (paths.sys_cpu / "cpu1" / "topology" / "core_id").unlink()
    hw = detect(paths, affinity=[0, 1])
    assert hw.physical_cores == 2
    assert any("topology unreadable" in n for n in hw.notes)


def test_detect_on_this_machine_matches_os() -> None:
    import os

    hw = detect()
    assert set(hw.allowed_cpus) == os.sched_getaffinity(0)
    assert 1 <= hw.compute_threads <= len(hw.allowed_cpus)


def test_restricted_to_rejects_cpus_outside_the_mask() -> None:
    hw = Hardware(allowed_cpus=(0, 1), online_cpus=(0, 1, 2, 3))
    with pytest.raises(ValueError, match=r"may only use 0-1 \(not 3\)"):
        hw.restricted_to([1, 3])
    with pytest.raises(ValueError, match="non-empty"):
        hw.restricted_to([])


def test_hardware_needs_a_cpu() -> None:
    with pytest.raises(ValueError, match=r"allowed_cpus=\(\)"):
        Hardware(allowed_cpus=(), online_cpus=())


def test_cpu_list_round_trip_and_errors() -> None:
    assert parse_cpu_list("0-3,8,10-11\n") == (0, 1, 2, 3, 8, 10, 11)
    assert format_cpu_list([11, 10, 8, 3, 2, 1, 0]) == "0-3,8,10-11"
    assert parse_cpu_list(format_cpu_list([5, 1, 2])) == (1, 2, 5)
    with pytest.raises(ValueError, match="'0-a'"):
        parse_cpu_list("0-a")
    with pytest.raises(ValueError, match="backwards"):
        parse_cpu_list("3-1")


def test_split_cpus_rejects_zero_parts() -> None:
    hw = Hardware(
        allowed_cpus=(0, 1), online_cpus=(0, 1), cores=(Core(0, 0, (0,)), Core(0, 1, (1,)))
    )
    with pytest.raises(ValueError, match="into 0 disjoint sets"):
        split_cpus(hw, 0)
    with pytest.raises(ValueError, match="between 1 and 2"):
        split_cpus(hw, 3)


def test_find_allocator_in_injected_dirs(tmp_path: Path) -> None:
    lib = tmp_path / "libjemalloc.so.2"
    lib.write_bytes(b"\x7fELF")
    assert find_allocator("jemalloc", search_dirs=[tmp_path], ldconfig=None) == lib
    assert find_allocator("tcmalloc", search_dirs=[tmp_path], ldconfig=None) is None
    tc = tmp_path / "cache" / "libtcmalloc_minimal.so.4"
    write(tc, "")
    assert (
        find_allocator(
            "tcmalloc", search_dirs=[], ldconfig=lambda: {"libtcmalloc_minimal.so.4": str(tc)}
        )
        == tc
    )
    # A linker-cache entry whose file is gone is not trusted.
    assert (
        find_allocator("tcmalloc", search_dirs=[], ldconfig=lambda: {"libtcmalloc.so.4": "/nope"})
        is None
    )
    with pytest.raises(ValueError, match="Unknown allocator 'mimalloc'"):
        find_allocator("mimalloc", search_dirs=[], ldconfig=None)


HARDWARE_DIR = Path(__file__).parents[1] / "recsys" / "hardware"
HARDWARE_MODULES = sorted(p.stem for p in HARDWARE_DIR.glob("*.py") if p.stem != "__init__")


def test_hardware_and_launch_never_import_tensorflow() -> None:
    # Every module of the package, the recsys.launch shim and the Hydra launcher plugin,
    # and what they do before TensorFlow starts: plan, and print the plan as the CLI does.
    modules = [f"recsys.hardware.{name}" for name in HARDWARE_MODULES]
    code = (
        "import contextlib, io, sys, recsys.hardware, recsys.launch\n"
        f"for name in {modules!r}: __import__(name)\n"
        "import hydra_plugins.recsys_launcher.recsys_launcher\n"
        "recsys.launch.make_plan()\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    recsys.launch.main(['--print-env', '--quiet'])\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tf_keras')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
    assert {"allocators", "cli", "config", "detection", "machine", "plan", "process"} <= set(
        HARDWARE_MODULES
    )


def _module_level_imports(tree: ast.Module) -> set[str]:
    """Modules imported when the module is imported: everything outside function bodies."""
    names: set[str] = set()
    stack: list[ast.AST] = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        stack.extend(ast.iter_child_nodes(node))
    return names


def test_module_level_import_finder_sees_through_blocks_not_functions() -> None:
    tree = ast.parse(
        "import os\nif True:\n    import tensorflow\n"
        "def f():\n    from recsys._tf import tf\nclass C:\n    from tf_keras import layers\n"
    )
    assert _module_level_imports(tree) == {"os", "tensorflow", "tf_keras"}


@pytest.mark.parametrize("name", ["__init__", *HARDWARE_MODULES])
def test_no_module_level_tensorflow_import(name: str) -> None:
    tree = ast.parse((HARDWARE_DIR / f"{name}.py").read_text())
    imported = _module_level_imports(tree)
    heavy = {m for m in imported if m.split(".")[0] in ("tensorflow", "tf_keras", "keras")}
    heavy |= {
        m for m in imported if m == "recsys._tf" or m.startswith(("recsys.layers", "recsys.models"))
    }
    assert not heavy, f"recsys/hardware/{name}.py imports {sorted(heavy)} at module level"


# Calls that change the running process: its environment, affinity or program.
MUTATIONS = {
    "execv",
    "execve",
    "execvp",
    "execvpe",
    "putenv",
    "unsetenv",
    "sched_setaffinity",
    "chdir",
    "update",
    "pop",
    "setdefault",
    "clear",
}
PURE_MODULES = ("allocators", "config", "detection", "machine", "plan")


@pytest.mark.parametrize("name", PURE_MODULES)
def test_planning_modules_never_change_the_process(name: str) -> None:
    tree = ast.parse((HARDWARE_DIR / f"{name}.py").read_text())
    found = []
    for node in ast.walk(tree):
        # os.<mutation>(...), os.environ.<mutation>(...), os.environ[...] = ...
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = ast.unparse(node.func.value)
            if owner in ("os", "os.environ") and node.func.attr in MUTATIONS:
                found.append(ast.unparse(node))
        elif isinstance(node, (ast.Assign, ast.AugAssign, ast.Delete)):
            targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
            found += [ast.unparse(t) for t in targets if ast.unparse(t).startswith("os.environ")]
    assert not found, f"recsys/hardware/{name}.py changes the process: {found}"


def test_process_mutation_lives_in_process_and_cli_only() -> None:
    # The check above must see the calls where they are, or it proves nothing.
    text = (HARDWARE_DIR / "process.py").read_text()
    assert "os.environ.update(" in text and "sched_setaffinity" in text
    assert "os.execvpe(" in (HARDWARE_DIR / "cli.py").read_text()


# --------------------------------------------------------------------------- memory


def test_free_memory_is_capped_by_the_container_headroom(tmp_path: Path) -> None:
    gib = 2**30
    paths = fake_machine(
        tmp_path,
        topology={0: (0, 0)},
        mem_kb=64 * 2**20,  # MemAvailable: 32 GiB
        cgroup="0::/job\n",
        cgroup_files={
            "job/memory.max": f"{8 * gib}\n",
            "job/memory.current": f"{5 * gib}\n",
            # 1 GiB of the usage is inactive page cache, which the kernel reclaims first.
            "job/memory.stat": f"anon 4000\ninactive_file {gib}\nactive_file 0\n",
        },
    )
    assert free_memory_bytes(paths) == 4 * gib  # 8 - (5 - 1), not the machine's 32
    hw = detect(paths, affinity=[0])
    assert hw.memory_limit_bytes == 8 * gib


def test_free_memory_v1_and_no_limit(tmp_path: Path) -> None:
    gib = 2**30
    v1 = fake_machine(
        tmp_path / "v1",
        topology={0: (0, 0)},
        mem_kb=16 * 2**20,  # MemAvailable: 8 GiB
        cgroup="4:memory:/docker/abc\n",
        cgroup_files={
            "memory/memory.limit_in_bytes": f"{3 * gib}\n",
            "memory/memory.usage_in_bytes": f"{gib}\n",
        },
    )
    assert free_memory_bytes(v1) == 2 * gib
    unlimited = fake_machine(
        tmp_path / "none",
        topology={0: (0, 0)},
        mem_kb=16 * 2**20,
        cgroup="4:memory:/\n",
        cgroup_files={"memory/memory.limit_in_bytes": "9223372036854771712\n"},
    )
    assert free_memory_bytes(unlimited) == 8 * gib  # MemAvailable, no container cap
    # A cgroup using more than its limit (it is about to reclaim) leaves no room, not less.
    over = fake_machine(
        tmp_path / "over",
        topology={0: (0, 0)},
        cgroup="0::/\n",
        cgroup_files={"memory.max": f"{gib}\n", "memory.current": f"{2 * gib}\n"},
    )
    assert free_memory_bytes(over) == 0


def test_free_memory_on_this_machine_is_at_most_its_memory() -> None:
    free = free_memory_bytes()
    hw = detect()
    assert free is not None and 0 < free <= hw.memory_available_bytes
