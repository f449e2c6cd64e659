"""The hardware plan (kept / set / inherited), applying it, its CLI (``python -m
recsys.launch``, a shim over :mod:`recsys.hardware`), and that it reaches TensorFlow."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

from recsys.hardware import (
    JEMALLOC_CONF,
    LAUNCHER_KEYS_VAR,
    REEXEC_VAR,
    Core,
    Hardware,
    HardwareConfig,
    apply_hardware_plan,
    configure_tensorflow_threads,
    main,
    make_plan,
    without_launcher_values,
)
from recsys.hardware import process as hardware_process

APPS = Path(__file__).parent / "apps"
REPO = Path(__file__).parents[1]

# Other tests in the same session import TensorFlow; apply_hardware_plan rightly warns then.
pytestmark = pytest.mark.filterwarnings("ignore:TensorFlow was imported before:RuntimeWarning")


@pytest.fixture
def not_in_multirun(monkeypatch):
    """Earlier in-process Hydra runs in this session may leave a MULTIRUN HydraConfig behind."""
    monkeypatch.setattr(hardware_process, "_in_hydra_multirun", lambda: False)


# 2 sockets x 2 cores x 2 hyper-threads (cpu n and n+4 share a core).
SERVER = Hardware(
    allowed_cpus=tuple(range(8)),
    online_cpus=tuple(range(8)),
    cores=(
        Core(0, 0, (0, 4)),
        Core(0, 1, (1, 5)),
        Core(1, 0, (2, 6)),
        Core(1, 1, (3, 7)),
    ),
    numa_nodes={0: (0, 1, 4, 5), 1: (2, 3, 6, 7)},
)
LAPTOP = Hardware(allowed_cpus=(0, 1), online_cpus=(0, 1))


def no_allocator(name: str) -> None:
    return None


def fake_allocators(tmp_path: Path, *names: str):
    """A find_library that knows only ``names``, each a real file under tmp_path."""
    libs = {}
    for name in names:
        lib = tmp_path / f"lib{name}.so.9"
        lib.write_bytes(b"\x7fELF fake")
        libs[name] = lib
    return libs.get


def sources(plan) -> dict[str, tuple[str, str]]:
    return {s.key: (s.value, s.source) for s in plan.settings}


# --------------------------------------------------------------------------- plan


def test_defaults_on_two_socket_machine_with_hyperthreads() -> None:
    plan = make_plan(None, SERVER, environ={}, find_library=no_allocator)
    assert (plan.intra_op_threads, plan.inter_op_threads) == (4, 2)  # cores, sockets
    env = plan.env()
    assert env["TF_NUM_INTRAOP_THREADS"] == "4"
    assert env["TF_NUM_INTEROP_THREADS"] == "2"
    assert env["OMP_NUM_THREADS"] == "4"
    assert env["KMP_AFFINITY"] == "granularity=fine,compact,1,0"
    assert env["KMP_BLOCKTIME"] == "1"
    assert env["TF_ENABLE_ONEDNN_OPTS"] == "1"
    assert env["TF_CPP_MIN_LOG_LEVEL"] == "2"  # TensorFlow's C++ log: errors only
    assert "LD_PRELOAD" not in env  # no allocator installed: nothing preloaded
    assert set(env[LAUNCHER_KEYS_VAR].split(",")) == set(env) - {LAUNCHER_KEYS_VAR}
    assert plan.cpus is None and plan.warnings == ()


def test_quota_limits_threads() -> None:
    hw = Hardware(allowed_cpus=(0, 1, 2, 3), online_cpus=(0, 1, 2, 3), quota_cpus=1.5)
    plan = make_plan({}, hw, environ={}, find_library=no_allocator)
    assert plan.intra_op_threads == 1
    plan = make_plan({"intra_op_threads": 3}, hw, environ={}, find_library=no_allocator)
    assert plan.intra_op_threads == 3
    assert any("quota of 1.5 CPUs" in w and "at most 1" in w for w in plan.warnings)


def test_user_variables_are_kept_and_reported() -> None:
    environ = {"OMP_NUM_THREADS": "7", "KMP_BLOCKTIME": "0", "TF_NUM_INTRAOP_THREADS": "3"}
    plan = make_plan({"kmp_blocktime": 5}, SERVER, environ=environ, find_library=no_allocator)
    got = sources(plan)
    assert got["OMP_NUM_THREADS"] == ("7", "kept")
    assert got["KMP_BLOCKTIME"] == ("0", "kept")
    assert got["TF_NUM_INTRAOP_THREADS"] == ("3", "kept")
    assert plan.intra_op_threads == 3  # TensorFlow's pool follows the user's variable
    assert got["TF_NUM_INTEROP_THREADS"] == ("2", "set")
    env = plan.env()
    assert not {"OMP_NUM_THREADS", "KMP_BLOCKTIME", "TF_NUM_INTRAOP_THREADS"} & set(env)
    assert plan.environ(environ)["OMP_NUM_THREADS"] == "7"
    # The explicit request that lost to the user's variable is named in a warning.
    assert any("KMP_BLOCKTIME=0" in w and "requested 5" in w for w in plan.warnings)
    table = plan.summary()
    assert "OMP_NUM_THREADS" in table and "kept" in table and "set" in table
    assert "detected:" in table


def test_tensorflow_log_level_is_errors_only_unless_the_user_set_it() -> None:
    plan = make_plan(None, LAPTOP, environ={}, find_library=no_allocator)
    assert sources(plan)["TF_CPP_MIN_LOG_LEVEL"] == ("2", "set")
    assert plan.env()["TF_CPP_MIN_LOG_LEVEL"] == "2"
    # The user's level wins, shown as kept like every other variable the user set.
    plan = make_plan(None, LAPTOP, environ={"TF_CPP_MIN_LOG_LEVEL": "0"}, find_library=no_allocator)
    assert sources(plan)["TF_CPP_MIN_LOG_LEVEL"] == ("0", "kept")
    assert "TF_CPP_MIN_LOG_LEVEL" not in plan.env()
    assert "TF_CPP_MIN_LOG_LEVEL=0" in plan.export_lines()
    (row,) = [line for line in plan.summary().splitlines() if "TF_CPP_MIN_LOG_LEVEL" in line]
    assert row.split()[:3] == ["TF_CPP_MIN_LOG_LEVEL", "0", "kept"]
    assert plan.environ({"TF_CPP_MIN_LOG_LEVEL": "0"})["TF_CPP_MIN_LOG_LEVEL"] == "0"
    # A process started under a launcher inherits the launcher's default.
    parent = make_plan(None, LAPTOP, environ={}, find_library=no_allocator)
    child = make_plan(None, LAPTOP, environ=parent.environ({}), find_library=no_allocator)
    assert sources(child)["TF_CPP_MIN_LOG_LEVEL"] == ("2", "inherited")


def test_launcher_values_are_inherited_unless_requested() -> None:
    parent = make_plan({"intra_op_threads": 1}, SERVER, environ={}, find_library=no_allocator)
    child_env = parent.environ({})
    child = make_plan(None, SERVER, environ=child_env, find_library=no_allocator)
    assert sources(child)["TF_NUM_INTRAOP_THREADS"] == ("1", "inherited")
    assert child.intra_op_threads == 1
    assert sources(child)["OMP_NUM_THREADS"] == ("1", "inherited")
    explicit = make_plan(
        {"intra_op_threads": 2}, SERVER, environ=child_env, find_library=no_allocator
    )
    assert sources(explicit)["TF_NUM_INTRAOP_THREADS"] == ("2", "set")
    assert explicit.warnings == ()
    assert "OMP_NUM_THREADS" not in without_launcher_values(child_env)
    assert LAUNCHER_KEYS_VAR not in without_launcher_values(child_env)


@pytest.mark.parametrize("value", [0, -1, "abc", True])
def test_impossible_thread_counts_are_errors(value) -> None:
    with pytest.raises(ValueError, match=r"intra_op_threads must be .*received"):
        HardwareConfig(intra_op_threads=value)


def test_bad_thread_count_in_the_environment_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"TF_NUM_INTEROP_THREADS='0' in the environment"):
        make_plan(None, LAPTOP, environ={"TF_NUM_INTEROP_THREADS": "0"}, find_library=no_allocator)


def test_more_threads_than_cpus_warns_with_the_limit() -> None:
    plan = make_plan({"inter_op_threads": 5}, LAPTOP, environ={}, find_library=no_allocator)
    assert plan.inter_op_threads == 5
    (warning,) = plan.warnings
    assert "inter_op_threads=5" in warning and "2 CPUs" in warning and "at most 2" in warning


def test_unknown_setting_is_an_error_that_lists_known_ones() -> None:
    with pytest.raises(ValueError, match=r"intra_ops_threads.*known: allocator, cpus"):
        HardwareConfig.from_mapping({"intra_ops_threads": 2})


def test_conf_hardware_auto_yaml_builds_the_default_config() -> None:
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(Path(__file__).parents[1] / "conf" / "hardware" / "auto.yaml")
    assert HardwareConfig.from_mapping(cfg) == HardwareConfig()
    from hydra.utils import instantiate

    assert instantiate(cfg) == HardwareConfig()


def test_cpus_restrict_the_plan() -> None:
    plan = make_plan({"cpus": "2-3,6-7"}, SERVER, environ={}, find_library=no_allocator)
    assert plan.cpus == (2, 3, 6, 7)
    assert (plan.intra_op_threads, plan.inter_op_threads) == (2, 2)
    plan = make_plan({"cpus": "2,6"}, SERVER, environ={}, find_library=no_allocator)
    assert (plan.intra_op_threads, plan.inter_op_threads) == (1, 1)  # one core
    with pytest.raises(ValueError, match="may only use 0-1"):
        make_plan({"cpus": [1, 2]}, LAPTOP, environ={}, find_library=no_allocator)
    with pytest.raises(ValueError, match="at least one CPU"):
        HardwareConfig(cpus=[])


# --------------------------------------------------------------------------- recsys.launch shim


def test_recsys_launch_still_exports_the_moved_names() -> None:
    import recsys.hardware
    import recsys.launch

    for name in recsys.launch.__all__:
        assert getattr(recsys.launch, name) is getattr(recsys.hardware, name), name
    for name in (
        "HardwareConfig",
        "apply_hardware_plan",
        "configure_tensorflow_threads",
        "make_plan",
    ):
        assert name in recsys.launch.__all__


def test_a_run_saved_before_recsys_hardware_still_builds_and_resumes(tmp_path: Path) -> None:
    from hydra import compose, initialize_config_module
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from recsys.run import (
        RunPaths,
        check_resumable,
        config_changes,
        register_resolvers,
        save_config,
    )

    register_resolvers()
    with initialize_config_module(config_module="recsys.conf", version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "+experiment=movielens",
                "hardware.intra_op_threads=1",
                f"paths.output_dir={tmp_path}",
            ],
        )
    assert cfg.hardware._target_ == "recsys.hardware.HardwareConfig"
    # The run directory as a run before the move left it: its config names recsys.launch,
    # and it holds a checkpoint.
    paths = RunPaths(tmp_path)
    save_config(cfg, paths.config)
    text = paths.config.read_text()
    old = text.replace("recsys.hardware.HardwareConfig", "recsys.launch.HardwareConfig")
    assert old != text
    paths.config.write_text(old)
    paths.checkpoints.mkdir(parents=True)
    (paths.checkpoints / "checkpoint").write_text("")
    saved = OmegaConf.load(paths.config)
    assert instantiate(saved.hardware) == HardwareConfig(intra_op_threads=1)
    assert make_plan(saved.hardware, LAPTOP, environ={}, find_library=no_allocator) == make_plan(
        cfg.hardware, LAPTOP, environ={}, find_library=no_allocator
    )
    check_resumable(cfg, paths)  # a hardware change never blocks resuming
    # The moved target names the same class: not reported as a change of config.
    assert config_changes(cfg, paths.config) == []


# --------------------------------------------------------------------------- allocator


def test_auto_allocator_prefers_tcmalloc(tmp_path: Path) -> None:
    find = fake_allocators(tmp_path, "tcmalloc", "jemalloc")
    plan = make_plan(None, LAPTOP, environ={}, find_library=find)
    assert plan.env()["LD_PRELOAD"] == str(tmp_path / "libtcmalloc.so.9")
    assert plan.allocator == str(tmp_path / "libtcmalloc.so.9")
    assert "MALLOC_CONF" not in plan.env()


def test_jemalloc_gets_its_tuning_unless_user_set_it(tmp_path: Path) -> None:
    find = fake_allocators(tmp_path, "jemalloc")
    plan = make_plan(None, LAPTOP, environ={}, find_library=find)
    assert plan.env()["LD_PRELOAD"].endswith("libjemalloc.so.9")
    assert plan.env()["MALLOC_CONF"] == JEMALLOC_CONF
    plan = make_plan(None, LAPTOP, environ={"MALLOC_CONF": "narenas:1"}, find_library=find)
    assert sources(plan)["MALLOC_CONF"] == ("narenas:1", "kept")


def test_auto_without_libraries_preloads_nothing() -> None:
    plan = make_plan({"allocator": "auto"}, LAPTOP, environ={}, find_library=no_allocator)
    assert "LD_PRELOAD" not in plan.env()
    assert "no tcmalloc/jemalloc installed" in sources_why(plan, "LD_PRELOAD")


def sources_why(plan, key: str) -> str:
    return next(s.why for s in plan.settings if s.key == key)


def test_explicit_allocator_that_is_missing_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"'jemalloc' was requested.*apt-get install libjemalloc2"):
        make_plan({"allocator": "jemalloc"}, LAPTOP, environ={}, find_library=no_allocator)
    with pytest.raises(ValueError, match="no such file"):
        make_plan({"allocator": "/nope/libx.so"}, LAPTOP, environ={}, find_library=no_allocator)
    with pytest.raises(ValueError, match="allocator must be one of"):
        HardwareConfig(allocator="mimalloc")


def test_user_ld_preload_is_kept_inside_ours(tmp_path: Path) -> None:
    find = fake_allocators(tmp_path, "tcmalloc")
    plan = make_plan(None, LAPTOP, environ={"LD_PRELOAD": "/opt/libfoo.so"}, find_library=find)
    assert plan.env()["LD_PRELOAD"] == f"{tmp_path / 'libtcmalloc.so.9'}:/opt/libfoo.so"
    # A preloaded allocator is left alone, and "none" never touches LD_PRELOAD.
    plan = make_plan(None, LAPTOP, environ={"LD_PRELOAD": "/x/libjemalloc.so.2"}, find_library=find)
    assert sources(plan)["LD_PRELOAD"] == ("/x/libjemalloc.so.2", "kept")
    plan = make_plan({"allocator": "none"}, LAPTOP, environ={}, find_library=find)
    assert "LD_PRELOAD" not in sources(plan)


# --------------------------------------------------------------------------- apply


def test_apply_sets_environment_and_saves_record(
    tmp_path: Path, monkeypatch, not_in_multirun
) -> None:
    monkeypatch.setattr(os, "environ", {"OMP_NUM_THREADS": "3"})
    calls = []
    with open(tmp_path / "summary.txt", "w") as summary:
        plan = apply_hardware_plan(
            {"intra_op_threads": 1, "allocator": "none"},
            run_dir=tmp_path,
            hardware=LAPTOP,
            stream=summary,
            execve=lambda *a: calls.append(a),
        )
    assert calls == []  # nothing to preload: no re-execution
    assert os.environ["TF_NUM_INTRAOP_THREADS"] == "1"
    assert os.environ["OMP_NUM_THREADS"] == "3"  # kept
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "2"
    record = json.loads((tmp_path / "hardware.json").read_text())
    assert record["intra_op_threads"] == 1
    kept = {s["key"] for s in record["settings"] if s["source"] == "kept"}
    assert kept == {"OMP_NUM_THREADS"}
    assert record["detected"]["allowed_cpus"] == "0-1"
    assert "kept" in (tmp_path / "summary.txt").read_text()
    assert plan.summary().splitlines()[0] == "recsys hardware plan"


@pytest.mark.filterwarnings("ignore:.*did not load:RuntimeWarning")
def test_apply_reexecutes_when_preload_changes(
    tmp_path: Path, monkeypatch, not_in_multirun
) -> None:
    lib = tmp_path / "libtcmalloc.so.9"
    lib.write_bytes(b"")
    monkeypatch.setattr(os, "environ", {})
    calls = []
    apply_hardware_plan(
        {"allocator": str(lib)}, hardware=LAPTOP, quiet=True, execve=lambda *a: calls.append(a)
    )
    ((exe, argv, env),) = calls
    assert exe == sys.executable and argv[0] == sys.executable
    assert env["LD_PRELOAD"] == str(lib)
    assert json.loads(env[REEXEC_VAR]) == {
        "pid": os.getpid(),
        "restore": {"LD_PRELOAD": None, "MALLOC_CONF": None},
    }
    # The re-executed process (same pid, marker set) applies the same plan, no exec.
    monkeypatch.setattr(os, "environ", dict(env))
    calls.clear()
    with pytest.warns(RuntimeWarning, match="did not load"):  # an empty file: nothing mapped
        plan = apply_hardware_plan(
            {"allocator": str(lib)}, hardware=LAPTOP, quiet=True, execve=lambda *a: calls.append(a)
        )
    assert calls == []
    assert plan.setting("LD_PRELOAD").source == "set"
    assert os.environ["OMP_NUM_THREADS"] == "2"
    # If the preload still differs after the re-execution, it warns instead of looping.
    monkeypatch.setattr(os, "environ", {**env, "LD_PRELOAD": "/other.so"})
    with pytest.warns(RuntimeWarning, match="not re-executing again"):
        apply_hardware_plan(
            {"allocator": str(lib)},
            hardware=LAPTOP,
            quiet=True,
            execve=lambda *a: calls.append(a),
        )
    assert calls == []
    # A child process inherits the marker but has another pid: it is not a re-execution.
    child_env = {**env, REEXEC_VAR: json.dumps({"pid": -1, "restore": {}})}
    monkeypatch.setattr(os, "environ", {**child_env, "LD_PRELOAD": ""})
    apply_hardware_plan(
        {"allocator": str(lib)}, hardware=LAPTOP, quiet=True, execve=lambda *a: calls.append(a)
    )
    assert len(calls) == 1


def test_no_reexec_inside_an_in_process_multirun(tmp_path: Path, monkeypatch) -> None:
    lib = tmp_path / "libtcmalloc.so.9"
    lib.write_bytes(b"")
    monkeypatch.setattr(os, "environ", {})
    monkeypatch.setattr(hardware_process, "_in_hydra_multirun", lambda: True)
    calls = []
    with pytest.warns(RuntimeWarning, match="in-process Hydra multirun"):
        apply_hardware_plan(
            {"allocator": str(lib)}, hardware=LAPTOP, quiet=True, execve=lambda *a: calls.append(a)
        )
    assert calls == []
    monkeypatch.setattr(hardware_process, "_in_hydra_multirun", lambda: False)
    monkeypatch.setattr(os, "environ", {})
    with pytest.warns(RuntimeWarning, match="switched off"):
        apply_hardware_plan(
            {"allocator": str(lib)},
            hardware=LAPTOP,
            quiet=True,
            reexec_allowed=False,
            execve=lambda *a: calls.append(a),
        )
    assert calls == []


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _system_library() -> str:
    """A real shared library this interpreter already maps (harmless to preload)."""
    maps = Path("/proc/self/maps").read_text().split()
    for path in maps:
        if "/libm.so" in path or "/libz.so" in path or "/libc.so" in path:
            return path
    pytest.skip("no system library found in /proc/self/maps")


def test_reexec_happens_exactly_once_in_a_real_process(tmp_path: Path) -> None:
    lib = _system_library()
    record = tmp_path / "starts.jsonl"
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", LAUNCHER_KEYS_VAR)}
    env["LD_PRELOAD"] = "/definitely/missing/libuser.so"  # the user's, kept behind ours
    out = subprocess.run(
        [sys.executable, str(APPS / "reexec_child.py"), str(record), lib],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    starts = _records(record)
    assert len(starts) == 2, starts  # the original start and one re-execution
    assert starts[0]["pid"] == starts[1]["pid"]  # exec, not a child process
    assert starts[0]["marker"] is None
    assert json.loads(starts[1]["marker"])["pid"] == starts[0]["pid"]
    assert starts[1]["LD_PRELOAD"] == f"{lib}:/definitely/missing/libuser.so"
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["loaded"] is True
    assert report["OMP_NUM_THREADS"] == "1"


def test_reexec_does_not_loop_when_the_library_does_not_load(tmp_path: Path) -> None:
    fake = tmp_path / "libtcmalloc_fake.so"
    fake.write_text("not an ELF file")
    record = tmp_path / "starts.jsonl"
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", LAUNCHER_KEYS_VAR)}
    out = subprocess.run(
        [sys.executable, str(APPS / "reexec_child.py"), str(record), str(fake)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    assert len(_records(record)) == 2
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["loaded"] is False
    assert any("did not load" in w for w in report["warnings"])


class FakeThreading:
    """``tf.config.threading`` as far as configure_tensorflow_threads uses it."""

    def __init__(self, intra: int = 0, inter: int = 0, started: bool = False) -> None:
        self.pools = {"intra": intra, "inter": inter}
        self.started = started  # TensorFlow refuses new pool sizes once its runtime runs
        self.calls: list[tuple[str, int]] = []

    def _set(self, pool: str, n: int) -> None:
        if self.started:
            raise RuntimeError("Intra op parallelism cannot be modified after initialization.")
        self.calls.append((pool, n))
        self.pools[pool] = n

    def get_intra_op_parallelism_threads(self) -> int:
        return self.pools["intra"]

    def get_inter_op_parallelism_threads(self) -> int:
        return self.pools["inter"]

    def set_intra_op_parallelism_threads(self, n: int) -> None:
        self._set("intra", n)

    def set_inter_op_parallelism_threads(self, n: int) -> None:
        self._set("inter", n)


def fake_tensorflow(monkeypatch, threading: FakeThreading) -> None:
    """Stand in for recsys._tf, so the pool logic is tested without starting TensorFlow
    (the slow tests below check the real thing in a fresh process)."""
    tf = types.SimpleNamespace(config=types.SimpleNamespace(threading=threading))
    module = types.ModuleType("recsys._tf")
    module.tf = tf  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "recsys._tf", module)


def test_configure_tensorflow_threads_sets_the_plans_pools(monkeypatch) -> None:
    plan = make_plan(
        {"intra_op_threads": 1, "inter_op_threads": 2},
        LAPTOP,
        environ={},
        find_library=no_allocator,
    )
    threading = FakeThreading()  # TensorFlow's defaults: 0 = decide itself
    fake_tensorflow(monkeypatch, threading)
    assert configure_tensorflow_threads(plan) == (1, 2)
    assert threading.calls == [("intra", 1), ("inter", 2)]
    # Pools that already match are left alone, even once the runtime runs.
    threading.started, threading.calls = True, []
    assert configure_tensorflow_threads(plan) == (1, 2)
    assert threading.calls == []


def test_configure_tensorflow_threads_after_the_runtime_started_says_what_to_do(
    monkeypatch,
) -> None:
    plan = make_plan({"intra_op_threads": 1}, LAPTOP, environ={}, find_library=no_allocator)
    fake_tensorflow(monkeypatch, FakeThreading(intra=2, inter=2, started=True))
    with pytest.raises(
        RuntimeError, match=r"already initialized with intra/inter-op threads \(2, 2\)"
    ):
        configure_tensorflow_threads(plan)


# --------------------------------------------------------------------------- CLI


def test_print_env_lines_can_be_exported(capsys) -> None:
    assert main(["--print-env", "--quiet", "--allocator", "none", "--intra-op-threads", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    env = dict(line.split("=", 1) for line in lines)
    assert env["TF_NUM_INTRAOP_THREADS"] == "1"
    assert env["OMP_NUM_THREADS"] in ("1", os.environ.get("OMP_NUM_THREADS"))
    assert "LD_PRELOAD" not in env
    shell = shutil.which("sh")
    if shell:
        out = subprocess.run(
            [shell, "-c", f'export {" ".join(lines)}; echo "$TF_NUM_INTRAOP_THREADS"'],
            capture_output=True,
            text=True,
            check=True,
        )
        assert out.stdout.strip() == "1"


def test_help_explains_each_setting(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for key in (
        "--intra-op-threads",
        "--inter-op-threads",
        "--allocator",
        "OMP_NUM_THREADS",
        "KMP_AFFINITY",
        "KMP_BLOCKTIME",
        "TF_ENABLE_ONEDNN_OPTS",
        "LD_PRELOAD",
        "--print-env",
    ):
        assert key in text


def test_cli_rejects_impossible_requests(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--intra-op-threads", "0", "--", "true"])
    assert exit_info.value.code == 2
    assert "received 0" in capsys.readouterr().err


def _launch(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", LAUNCHER_KEYS_VAR)}
    base.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "recsys.launch", *args],
        capture_output=True,
        text=True,
        env=base,
        timeout=120,
    )


def test_python_m_recsys_launch_prints_env_and_json() -> None:
    # The documented command, through the recsys.launch shim.
    result = _launch("--print-env", "--allocator", "none", "--intra-op-threads", "1")
    assert result.returncode == 0, result.stderr
    env = dict(line.split("=", 1) for line in result.stdout.splitlines())
    assert env["TF_NUM_INTRAOP_THREADS"] == "1"
    assert env["TF_CPP_MIN_LOG_LEVEL"] == os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")
    assert "recsys hardware plan" in result.stderr  # the table goes to stderr
    # The user's TensorFlow log level is kept, and the table says so.
    result = _launch("--print-env", "--allocator", "none", env={"TF_CPP_MIN_LOG_LEVEL": "0"})
    assert "TF_CPP_MIN_LOG_LEVEL=0" in result.stdout.splitlines()
    (row,) = [line for line in result.stderr.splitlines() if "TF_CPP_MIN_LOG_LEVEL" in line]
    assert row.split()[:3] == ["TF_CPP_MIN_LOG_LEVEL", "0", "kept"]
    result = _launch(
        "--json", "--allocator", "none", "--cpus", str(sorted(os.sched_getaffinity(0))[0])
    )
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["intra_op_threads"] == 1 and record["cpus"] is not None


def test_cli_runs_command_with_plan_and_returns_its_exit_code() -> None:
    code = (
        "import os, sys; print(os.environ['TF_NUM_INTRAOP_THREADS'], "
        "os.environ['KMP_BLOCKTIME'], sorted(os.sched_getaffinity(0))); sys.exit(7)"
    )
    cpus = sorted(os.sched_getaffinity(0))
    result = _launch(
        "--intra-op-threads",
        "1",
        "--allocator",
        "none",
        "--cpus",
        str(cpus[-1]),
        "--",
        sys.executable,
        "-c",
        code,
        env={"KMP_BLOCKTIME": "30"},
    )
    assert result.returncode == 7, result.stderr
    assert result.stdout.split() == ["1", "30", f"[{cpus[-1]}]"]  # KMP_BLOCKTIME kept
    assert "kept" in result.stderr and "recsys hardware plan" in result.stderr


def test_cli_reports_missing_command() -> None:
    result = _launch("--quiet", "--allocator", "none", "--", "no-such-command-xyz")
    assert result.returncode == 127
    assert "command not found" in result.stderr


@pytest.mark.slow  # a TensorFlow import in a fresh process
def test_plan_reaches_tensorflow_through_the_environment() -> None:
    # A plain script: only the environment can carry the plan into TensorFlow. TF's own
    # default inter-op pool has one thread per CPU; 3 is what the plan asked for.
    result = _launch(
        "--quiet",
        "--allocator",
        "none",
        "--intra-op-threads",
        "1",
        "--inter-op-threads",
        "3",
        "--",
        sys.executable,
        str(APPS / "tf_child.py"),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["env"]["TF_NUM_INTRAOP_THREADS"] == "1"
    assert report["env"]["TF_NUM_INTEROP_THREADS"] == "3"
    assert report["env"]["OMP_NUM_THREADS"] == "1"
    assert report["tf_compute_threads"] == 3


@pytest.mark.slow  # a TensorFlow import in a fresh process
def test_plan_reaches_tensorflow_through_apply_and_configure() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", LAUNCHER_KEYS_VAR)}
    for key in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS"):
        env.pop(key, None)
    overrides = {"intra_op_threads": 1, "inter_op_threads": 3, "allocator": "none"}
    result = subprocess.run(
        [sys.executable, str(APPS / "tf_child.py"), "--apply", json.dumps(overrides)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["configured"] == [1, 3]
    assert (report["tf_intra"], report["tf_inter"]) == (1, 3)
    assert report["tf_compute_threads"] == 3
    assert report["env"]["OMP_NUM_THREADS"] == "1"
