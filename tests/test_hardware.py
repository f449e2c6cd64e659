"""Detection on fake /sys and /proc trees, CPU splitting and allocator lookup."""

from __future__ import annotations

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
        write(paths.proc_meminfo, f"MemTotal:       {mem_kb} kB\nMemFree:  1 kB\n")
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


def test_hardware_and_launch_never_import_tensorflow() -> None:
    code = (
        "import sys, recsys.hardware, recsys.launch\n"
        "recsys.launch.make_plan()\n"
        "print('tensorflow' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "False"
