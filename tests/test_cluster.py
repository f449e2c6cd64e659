"""TF_CONFIG, free ports, the local cluster launcher, and training under ParameterServerStrategy.

Every cluster runs in its own subprocesses on loopback ports: a TensorFlow server
cannot be stopped inside a process. The launcher's process handling is tested with
tiny fake servers (no TensorFlow, a second each); real clusters start one process
per task and import TensorFlow in each, so all but one smoke test are `slow`.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from recsys.cluster import (
    EXIT_CLUSTER_FAILURE,
    local_server_env,
    main,
    server_threads,
)
from recsys.distribute import TFConfig, TFConfigError, check_cluster, make_strategy, read_tf_config
from recsys.distribute.ports import PortReservation, reserve_ports
from recsys.distribute.tf_config import local_cluster

PSS_CLUSTER = {"chief": ["h0:1"], "worker": ["h1:1", "h2:1"], "ps": ["h3:1"]}
# Generous guards so a broken launcher fails the test instead of hanging it; no
# assertion is made on how long anything takes.
FAKE_TIMEOUT = 120
CLUSTER_TIMEOUT = 900


def tf_config_env(cluster, task_type, index=0):
    return {
        "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}})
    }


# ----------------------------------------------------------------------------- TF_CONFIG


def test_tf_config_round_trips_and_answers_questions():
    config = read_tf_config(tf_config_env(PSS_CLUSTER, "worker", 1))
    assert (config.task_type, config.task_index, config.address, config.port) == (
        "worker",
        1,
        "h2:1",
        1,
    )
    assert config.num_tasks("ps") == 1 and config.num_tasks("evaluator") == 0
    assert TFConfig.from_json(config.to_json()) == config
    assert json.loads(config.to_json()) == {
        "cluster": PSS_CLUSTER,
        "task": {"type": "worker", "index": 1},
    }
    assert config.for_task("ps", 0).address == "h3:1"


def test_tf_config_index_defaults_to_zero():
    text = json.dumps({"cluster": {"ps": ["h:5"]}, "task": {"type": "ps"}})
    assert TFConfig.from_json(text).task_index == 0


@pytest.mark.parametrize(
    ("environ", "match"),
    [
        ({}, "TF_CONFIG is not set.*recsys.cluster local"),
        ({"TF_CONFIG": "  "}, "TF_CONFIG is not set"),
        ({"TF_CONFIG": "{cluster: 1}"}, "not valid JSON.*Received: '{cluster: 1}'"),
        ({"TF_CONFIG": "[1]"}, "must be a JSON object"),
        ({"TF_CONFIG": '{"cluster": {"ps": ["h:1"]}}'}, "'task' object with a 'type'"),
        (tf_config_env({}, "ps"), "non-empty 'cluster'"),
        (tf_config_env({"server": ["h:1"]}, "server"), "unknown job 'server'"),
        (tf_config_env({"ps": []}, "ps"), r"cluster\['ps'\] must be a non-empty list"),
        (tf_config_env({"ps": "h:1"}, "ps"), r"cluster\['ps'\] must be a non-empty list"),
        (tf_config_env({"ps": ["h1"]}, "ps"), "'host:port' string. Received: 'h1'"),
        (tf_config_env({"ps": ["h:0"]}, "ps"), "port in 1..65535. Received: 'h:0'"),
        (tf_config_env({"ps": ["h:x"]}, "ps"), "port in 1..65535"),
        (tf_config_env({"ps": ["h:1", "h:1"]}, "ps"), "'h:1' to two tasks"),
        (tf_config_env({"chief": ["a:1", "b:1"], "ps": ["h:1"]}, "ps"), "at most one 'chief'"),
        (tf_config_env({"ps": ["h:1"]}, "worker"), "'worker' is not a job of the cluster"),
        (tf_config_env({"ps": ["h:1"]}, "ps", 1), "index 1 is out of range"),
        (tf_config_env({"ps": ["h:1"]}, "ps", -1), "integer >= 0. Received: index=-1"),
        (tf_config_env({"ps": ["h:1"]}, "ps", "0"), "integer >= 0"),
    ],
)
def test_bad_tf_config_is_refused_with_the_value_and_a_fix(environ, match):
    with pytest.raises(TFConfigError, match=match):
        read_tf_config(environ)


def test_local_cluster_orders_chief_workers_then_ps():
    config = local_cluster([5, 6, 7, 8, 9], num_ps=2, num_workers=2, host="127.0.0.1")
    assert config.cluster == {
        "chief": ("127.0.0.1:5",),
        "worker": ("127.0.0.1:6", "127.0.0.1:7"),
        "ps": ("127.0.0.1:8", "127.0.0.1:9"),
    }
    assert (config.task_type, config.task_index) == ("chief", 0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ports": [1, 2, 3], "num_ps": 0, "num_workers": 1}, "num_ps.*Received: num_ps=0"),
        ({"ports": [1, 2, 3], "num_ps": 1, "num_workers": True}, "num_workers"),
        ({"ports": [1, 2], "num_ps": 1, "num_workers": 1}, "one port per task.*Received: 2"),
    ],
)
def test_local_cluster_checks_its_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        local_cluster(host="127.0.0.1", **kwargs)


# ----------------------------------------------------------------------------- ports


def test_reserved_ports_are_distinct_and_blocked_for_other_programs():
    with reserve_ports(3) as reservations:
        ports = [r.port for r in reservations]
        assert len(set(ports)) == 3
        for port in ports:
            # A program that does not opt in to SO_REUSEPORT (any other server) cannot
            # take the port in the window before our server binds it...
            with socket.socket() as other, pytest.raises(OSError):
                other.bind(("127.0.0.1", port))
        # ...while a server with SO_REUSEPORT (TensorFlow with TF_GRPC_REUSE_PORT=1) can,
        # and it receives the connections (the reserving socket never listens).
        with socket.socket() as server:
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            server.bind(("0.0.0.0", ports[0]))
            server.listen()
            with socket.create_connection(("127.0.0.1", ports[0]), timeout=10):
                conn, _ = server.accept()
                conn.close()
    assert not any(r.held for r in reservations)
    with socket.socket() as other:
        other.bind(("127.0.0.1", ports[1]))  # released on exit


def test_release_is_idempotent_and_reserve_checks_n():
    reservation = PortReservation()
    reservation.release()
    reservation.release()
    assert not reservation.held
    with pytest.raises(ValueError, match="Received: n=0"), reserve_ports(0):
        pass


# ----------------------------------------------------------------------------- threads


def test_worker_threads_leave_room_for_every_worker():
    worker = TFConfig(PSS_CLUSTER, "worker", 0)
    # 2 workers need >= 3 inter-op threads even on a 1-CPU machine.
    assert server_threads(worker, {}, cpus=1) == (0, 3)
    assert server_threads(worker, {"TF_NUM_INTEROP_THREADS": "8"}, cpus=1) == (0, 8)
    ps = worker.for_task("ps", 0)
    assert server_threads(ps, {"TF_NUM_INTRAOP_THREADS": "2"}, cpus=1) == (2, 1)
    with pytest.raises(ValueError, match="TF_NUM_INTRAOP_THREADS=' x'"):
        server_threads(ps, {"TF_NUM_INTRAOP_THREADS": " x"}, cpus=1)


def test_local_servers_share_the_cpus_and_keep_user_settings():
    assert local_server_env("worker", num_workers=2, cpus=8, environ={}) == {
        "TF_NUM_INTRAOP_THREADS": "4",
        "TF_NUM_INTEROP_THREADS": "3",
        "OMP_NUM_THREADS": "4",
    }
    assert (
        local_server_env("ps", num_workers=1, cpus=2, environ={})["TF_NUM_INTRAOP_THREADS"] == "1"
    )
    kept = local_server_env("worker", num_workers=1, cpus=2, environ={"OMP_NUM_THREADS": "7"})
    assert kept["OMP_NUM_THREADS"] == "7"


# ----------------------------------------------------------------------------- strategy


def test_check_cluster_accepts_what_each_strategy_trains_on():
    check_cluster("parameter_server", TFConfig(PSS_CLUSTER, "chief"))
    workers = {"chief": ["h0:1"], "worker": ["h1:1"]}
    check_cluster("multi_worker", TFConfig(workers, "worker", 0))
    check_cluster("multi_worker", TFConfig(workers, "chief", 0))
    check_cluster("none", TFConfig(workers, "worker", 0))


@pytest.mark.parametrize(
    ("kind", "cluster", "task", "match"),
    [
        ("parameter_server", {"chief": ["a:1"], "worker": ["b:1"]}, "chief", "missing: ps"),
        ("parameter_server", {"worker": ["b:1"], "ps": ["c:1"]}, "worker", "missing: chief"),
        ("parameter_server", PSS_CLUSTER, "ps", "task ps 0.*recsys.cluster serve"),
        ("multi_worker", PSS_CLUSTER, "chief", "no 'ps' tasks.*distribute=parameter_server"),
        ("multi_worker", {"chief": ["a:1"]}, "chief", "at least one 'worker'"),
        ("multi_worker", {"worker": ["a:1"], "evaluator": ["b:1"]}, "evaluator", "task evaluator"),
    ],
)
def test_check_cluster_names_what_is_missing(kind, cluster, task, match):
    with pytest.raises(TFConfigError, match=match):
        check_cluster(kind, TFConfig(cluster, task))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kind": "ps"}, "Received: kind='ps'"),
        ({"kind": "parameter_server", "min_shard_bytes": 0}, "min_shard_bytes=0"),
        ({"kind": "parameter_server", "min_shard_bytes": 1.5}, "min_shard_bytes=1.5"),
        ({"kind": "parameter_server", "max_shards": 0}, "max_shards=0"),
    ],
)
def test_make_strategy_checks_its_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_strategy(**kwargs)


def test_distribute_modules_validate_tf_config_before_importing_tensorflow(tmp_path):
    script = textwrap.dedent(
        """
        import sys
        import recsys.cluster, recsys.distribute
        from recsys.distribute import TFConfigError, make_strategy
        try:
            make_strategy("parameter_server")
        except TFConfigError as err:
            print("refused:", err)
        assert "tensorflow" not in sys.modules, "TensorFlow was imported"
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "refused: TF_CONFIG is not set" in done.stdout


@pytest.mark.parametrize(
    ("environ", "match"),
    [
        ({}, "TF_CONFIG is not set"),
        (tf_config_env(PSS_CLUSTER, "chief"), "worker and ps tasks only.*task chief 0"),
        (tf_config_env({"worker": ["a:1"]}, "worker"), "no 'ps' task.*distribute=multi_worker"),
    ],
)
def test_serve_refuses_tasks_it_should_not_run(monkeypatch, capsys, environ, match):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    for key, value in environ.items():
        monkeypatch.setenv(key, value)
    assert main(["serve"]) == 2
    assert re.search(match, capsys.readouterr().err)


def test_local_needs_a_command_and_positive_counts(capsys):
    with pytest.raises(SystemExit):
        main(["local", "--ps", "1"])
    assert "give the chief's command after --" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["local", "--ps", "0", "--", "true"])
    assert "--ps must be >= 1. Received: --ps=0" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the launcher, fake servers

# A stand-in for `python -m recsys.cluster serve`: binds its TF_CONFIG port as
# TensorFlow does with TF_GRPC_REUSE_PORT=1, writes the ready file, and then waits;
# FAKE_SERVER=<type>:<index>:<behaviour> makes one task misbehave.
FAKE_SERVER = """
import json, os, socket, sys, time
config = json.loads(os.environ["TF_CONFIG"])
task = config["task"]
me = f"{task['type']}:{task['index']}"
assert os.environ.get("TF_GRPC_REUSE_PORT") == "1", "launcher must let the server reuse its port"
port = int(config["cluster"][task["type"]][task["index"]].rpartition(":")[2])
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
server.bind(("0.0.0.0", port))
server.listen()
behaviour = os.environ.get("FAKE_SERVER", "").partition(me + ":")[2]
print(f"fake {me} on port {port}, threads {os.environ['TF_NUM_INTRAOP_THREADS']}", flush=True)
if behaviour == "fail":
    print("Could not start gRPC server", flush=True)
    sys.exit(5)
if behaviour != "never-ready":
    open(os.environ["RECSYS_CLUSTER_READY_FILE"], "w").write("{}")
if behaviour == "die":
    while not os.path.exists(os.environ["FAKE_SERVER_DIE_WHEN"]):
        time.sleep(0.05)
    print("fake server dying", flush=True)
    os._exit(9)
while True:
    time.sleep(1)
"""


def alive(pid: int) -> bool:
    """Whether `pid` runs (zombies count as dead)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def wait_for(predicate, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def server_pids(log_dir: Path) -> list[int]:
    return [task["pid"] for task in json.loads((log_dir / "cluster.json").read_text())["tasks"]]


def launcher(tmp_path, command, *, ps=2, workers=1, grace=5.0, env=None):
    """argv of a launcher process running `command` on fake servers, and its log dir."""
    fake = tmp_path / "fake_server.py"
    fake.write_text(FAKE_SERVER)
    log_dir = tmp_path / "logs"
    code = (
        "import sys; from recsys.cluster import run_local; "
        f"sys.exit(run_local({ps}, {workers}, sys.argv[1:], log_dir={str(log_dir)!r}, "
        f"grace={grace}, server_command=[sys.executable, {str(fake)!r}]))"
    )
    return [sys.executable, "-c", code, *command], log_dir


def python_command(source: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(source)]


def test_local_runs_the_command_with_the_chief_tf_config_and_its_exit_code(tmp_path):
    seen = tmp_path / "tf_config.json"
    command = python_command(
        f"""
        import os, sys
        open({str(seen)!r}, "w").write(os.environ["TF_CONFIG"])
        sys.exit(7)
        """
    )
    argv, log_dir = launcher(tmp_path, command, ps=2, workers=2)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=FAKE_TIMEOUT)
    assert done.returncode == 7, done.stderr
    config = TFConfig.from_json(seen.read_text())
    assert (config.task_type, config.task_index) == ("chief", 0)
    assert {job: len(a) for job, a in config.cluster.items()} == {"chief": 1, "worker": 2, "ps": 2}
    assert all(a.startswith("127.0.0.1:") for a in sum(config.cluster.values(), ()))
    assert "exited with code 7" in done.stderr
    pids = server_pids(log_dir)
    assert len(pids) == 4 and not any(alive(pid) for pid in pids)
    # Each server logged to its own file, with the thread plan for a shared machine.
    assert "fake ps:1 on port" in (log_dir / "ps-1.log").read_text()


def test_local_exit_status_of_a_command_killed_by_a_signal(tmp_path):
    argv, _ = launcher(
        tmp_path, python_command("import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    )
    done = subprocess.run(argv, capture_output=True, text=True, timeout=FAKE_TIMEOUT)
    assert done.returncode == 128 + signal.SIGKILL
    assert "killed by SIGKILL" in done.stderr


def test_local_reports_a_command_that_cannot_run(tmp_path):
    argv, log_dir = launcher(tmp_path, [str(tmp_path / "no-such-program")])
    done = subprocess.run(argv, capture_output=True, text=True, timeout=FAKE_TIMEOUT)
    assert done.returncode == 127
    assert "cannot run" in done.stderr
    assert not any(alive(pid) for pid in server_pids(log_dir))


def test_a_server_that_dies_stops_the_command_and_is_reported(tmp_path):
    die_when = tmp_path / "die-now"
    command_pid = tmp_path / "command.pid"
    command = python_command(
        f"""
        import os, time
        open({str(command_pid)!r}, "w").write(str(os.getpid()))
        open({str(die_when)!r}, "w").close()  # now the fake ps 1 dies
        time.sleep(3600)
        """
    )
    env = {**os.environ, "FAKE_SERVER": "ps:1:die", "FAKE_SERVER_DIE_WHEN": str(die_when)}
    argv, log_dir = launcher(tmp_path, command)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=FAKE_TIMEOUT, env=env)
    assert done.returncode == EXIT_CLUSTER_FAILURE
    assert "ps 1 (pid" in done.stderr and "exited with code 9" in done.stderr
    assert "fake server dying" in done.stderr  # the end of its log
    assert "stopping the command" in done.stderr
    assert not alive(int(command_pid.read_text()))
    assert not any(alive(pid) for pid in server_pids(log_dir))
    assert (log_dir / "ps-1.log").exists()  # kept after a failure


def test_a_server_that_fails_to_start_is_reported_and_the_command_never_runs(tmp_path):
    ran = tmp_path / "ran"
    env = {**os.environ, "FAKE_SERVER": "worker:0:fail"}
    argv, log_dir = launcher(tmp_path, python_command(f"open({str(ran)!r}, 'w')"))
    done = subprocess.run(argv, capture_output=True, text=True, timeout=FAKE_TIMEOUT, env=env)
    assert done.returncode == EXIT_CLUSTER_FAILURE
    assert "worker 0 (pid" in done.stderr and "before it was serving" in done.stderr
    assert "is another program using that port?" in done.stderr
    assert not ran.exists()
    assert not any(alive(pid) for pid in server_pids(log_dir))


def test_servers_that_never_serve_time_out(tmp_path):
    env = {**os.environ, "FAKE_SERVER": "ps:0:never-ready"}
    fake = tmp_path / "fake_server.py"
    fake.write_text(FAKE_SERVER)
    code = (
        "import sys; from recsys.cluster import run_local; "
        f"sys.exit(run_local(1, 1, ['true'], log_dir={str(tmp_path / 'logs')!r}, "
        f"start_timeout=1, server_command=[sys.executable, {str(fake)!r}]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=FAKE_TIMEOUT, env=env
    )
    assert done.returncode == EXIT_CLUSTER_FAILURE
    assert "ps 0 not serving after 1 s" in done.stderr
    assert not any(alive(pid) for pid in server_pids(tmp_path / "logs"))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_launcher_reaches_the_command_and_stops_everything(tmp_path, signum):
    started = tmp_path / "started"
    got = tmp_path / "got"
    command = python_command(
        f"""
        import signal, sys, time
        def handle(signum, frame):
            open({str(got)!r}, "w").write(str(signum))
            sys.exit(0)
        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)
        open({str(started)!r}, "w").close()
        time.sleep(3600)
        """
    )
    argv, log_dir = launcher(tmp_path, command)
    process = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(started.exists), "the command never started"
        process.send_signal(signum)
        _, err = process.communicate(timeout=FAKE_TIMEOUT)
    finally:
        process.kill()
    assert got.read_text() == str(int(signum))
    assert process.returncode == 0  # the command's own status: it shut down cleanly
    assert f"passing {signal.Signals(signum).name} to the command" in err
    assert not any(alive(pid) for pid in server_pids(log_dir))


def test_a_command_that_ignores_sigterm_is_killed_after_the_grace_period(tmp_path):
    started = tmp_path / "started"
    command = python_command(
        f"""
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        open({str(started)!r}, "w").close()
        time.sleep(3600)
        """
    )
    argv, log_dir = launcher(tmp_path, command, grace=0.5)
    process = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(started.exists), "the command never started"
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=FAKE_TIMEOUT)
    finally:
        process.kill()
    assert process.returncode == 128 + signal.SIGKILL
    assert "killing it" in err
    assert not any(alive(pid) for pid in server_pids(log_dir))


def test_servers_and_command_die_with_a_killed_launcher(tmp_path):
    started = tmp_path / "started"
    command_pid = tmp_path / "command.pid"
    command = python_command(
        f"""
        import os, time
        open({str(command_pid)!r}, "w").write(str(os.getpid()))
        open({str(started)!r}, "w").close()
        time.sleep(3600)
        """
    )
    argv, log_dir = launcher(tmp_path, command)
    process = subprocess.Popen(argv, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(started.exists), "the command never started"
        process.kill()  # SIGKILL: the launcher cleans up nothing itself
        process.wait(timeout=FAKE_TIMEOUT)
    finally:
        process.kill()
    pids = [*server_pids(log_dir), int(command_pid.read_text())]
    assert wait_for(lambda: not any(alive(pid) for pid in pids)), "orphans left behind"


# ----------------------------------------------------------------------------- real clusters

SMOKE = """
import numpy as np
import recsys
from recsys._tf import keras, tf
from recsys.distribute import make_strategy
from recsys.distribute.parameter_server import build_optimizer_slots, dataset_creator, steps_per_epoch
from recsys.layers import Embedding
from recsys.optimizers import SparseAdam

strategy = make_strategy("parameter_server", min_shard_bytes=1024)  # 2 PS -> 2 shards
rng = np.random.default_rng(0)
# Ids from both ends of the table, so both shards train; rows 100..899 are never seen.
ids = np.concatenate([rng.integers(0, 100, (32, 2)), rng.integers(900, 1000, (32, 2))]).astype("int32")
labels = rng.normal(size=(64, 1)).astype("float32")

def batches(context):
    return tf.data.Dataset.from_tensor_slices((ids, labels)).shuffle(64, seed=1).batch(8)

with strategy.scope():
    inputs = keras.Input(shape=(2,), dtype="int32")
    x = keras.layers.Flatten()(Embedding(1000, 8, embeddings_initializer="ones")(inputs))
    model = keras.Model(inputs, keras.layers.Dense(1)(x))
    model.compile(optimizer=SparseAdam(0.01), loss="mse", steps_per_execution=2)
    build_optimizer_slots(model.optimizer, model.trainable_variables)
history = model.fit(dataset_creator(batches), epochs=2, steps_per_epoch=steps_per_epoch(64, 8), verbose=0)

table = model.layers[1].embeddings
shards = table.variables
assert [s.device.split("/")[1:4:2] for s in shards] == [["job:ps", "task:0"], ["job:ps", "task:1"]], shards
assert [s.shape[0] for s in shards] == [500, 500]
slots = [model.optimizer._momentums[0], model.optimizer._velocities[0]]
assert [s.device for s in slots] == [shards[0].device] * 2, "slots must live next to their shard"
assert int(model.optimizer.iterations.numpy()) == 16
full = lambda v: np.asarray(tf.convert_to_tensor(v))
values, m = full(table), full(model.optimizer.variables[1])
assert np.all(values[100:900] == 1.0) and np.all(m[100:900] == 0.0), "untouched rows changed"
assert np.all(values[np.unique(ids)] != 1.0), "looked-up rows did not train"
assert np.all(np.isfinite(history.history["loss"]))
print("SMOKE OK", history.history["loss"])
"""


def run_cluster(tmp_path, script: str, *args: str, ps=2, workers=1, timeout=CLUSTER_TIMEOUT):
    path = tmp_path / "chief.py"
    path.write_text(textwrap.dedent(script))
    log_dir = tmp_path / "logs"
    argv = [sys.executable, "-m", "recsys.cluster", "local", "--ps", str(ps)]
    argv += ["--workers", str(workers), "--log-dir", str(log_dir), "--", sys.executable, str(path)]
    done = subprocess.run([*argv, *args], capture_output=True, text=True, timeout=timeout)
    return done, log_dir


def test_pss_smoke_fit_embedding_and_sparse_adam_on_a_local_cluster(tmp_path):
    """1 worker + 2 PS: a sharded table trains with SparseAdam; every server is stopped."""
    done, log_dir = run_cluster(tmp_path, SMOKE)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    assert "SMOKE OK" in done.stdout
    pids = server_pids(log_dir)
    assert len(pids) == 3 and not any(alive(pid) for pid in pids)
    assert "serving grpc://127.0.0.1:" in (log_dir / "worker-0.log").read_text()


@pytest.mark.slow
def test_local_runs_one_cluster_coordinator_step(tmp_path):
    script = """
    import numpy as np
    import recsys
    from recsys._tf import tf
    from recsys.distribute import make_strategy
    strategy = make_strategy("parameter_server", min_shard_bytes=4 * 4 * 10)
    with strategy.scope():
        table = tf.Variable(tf.reshape(tf.range(400.0), [100, 4]))  # 1600 bytes -> 2 shards
    assert [v.device.split("/")[1:4:2] for v in table.variables] == [["job:ps", "task:0"], ["job:ps", "task:1"]]
    coordinator = tf.distribute.experimental.coordinator.ClusterCoordinator(strategy)

    @tf.function
    def step():
        return tf.reduce_sum(tf.gather(table, [0, 99]))

    result = coordinator.schedule(step)
    coordinator.join()
    assert result.fetch() == np.arange(4).sum() + np.arange(396, 400).sum()
    print("STEP OK")
    """
    done, log_dir = run_cluster(tmp_path, script)
    assert done.returncode == 0, done.stderr[-5000:]
    assert "STEP OK" in done.stdout
    assert not any(alive(pid) for pid in server_pids(log_dir))


@pytest.mark.slow
def test_a_real_worker_killed_mid_run_is_reported_instead_of_waited_for(tmp_path):
    """Without the launcher, the coordinator would wait for the lost worker forever."""
    started = tmp_path / "started"
    script = f"""
    import recsys
    from recsys._tf import tf
    from recsys.distribute import make_strategy
    strategy = make_strategy("parameter_server")
    coordinator = tf.distribute.experimental.coordinator.ClusterCoordinator(strategy)
    with strategy.scope():
        counter = tf.Variable(0)

    @tf.function
    def step():
        counter.assign_add(1)

    coordinator.schedule(step)
    coordinator.join()
    open({str(started)!r}, "w").close()
    while True:
        coordinator.schedule(step)
        coordinator.join()
    """
    path = tmp_path / "chief.py"
    path.write_text(textwrap.dedent(script))
    log_dir = tmp_path / "logs"
    argv = [sys.executable, "-m", "recsys.cluster", "local", "--ps", "2", "--workers", "1"]
    argv += ["--grace", "5", "--log-dir", str(log_dir), "--", sys.executable, str(path)]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(started.exists, timeout=CLUSTER_TIMEOUT), "training never started"
        worker = json.loads((log_dir / "cluster.json").read_text())["tasks"][0]
        assert worker["type"] == "worker"
        os.kill(worker["pid"], signal.SIGKILL)
        _, err = process.communicate(timeout=300)
    finally:
        process.kill()
    assert process.returncode == EXIT_CLUSTER_FAILURE
    assert "worker 0 (pid" in err and "killed by SIGKILL" in err
    assert "serving grpc://" in err  # the end of the worker's log
    assert not any(alive(pid) for pid in server_pids(log_dir))


# Trains the same model on the same batches, in one process or as the chief of a PSS
# cluster, for both SparseAdam paths, and saves the table, every optimizer variable
# and the loss history. Weights start from the same NumPy values in both.
EXACT = """
import sys
import numpy as np
import recsys
from recsys._tf import keras, tf
from recsys.distribute import make_strategy
from recsys.distribute.parameter_server import build_optimizer_slots, dataset_creator, steps_per_epoch
from recsys.layers import Embedding
from recsys.optimizers import SparseAdam

kind, out = sys.argv[1], sys.argv[2]
strategy = make_strategy(kind, min_shard_bytes=1024)
rng = np.random.default_rng(7)
ids = rng.integers(0, 600, size=(96, 3)).astype("int32")
ids[:, 2] = ids[:, 0]  # a duplicate id in every example
labels = rng.normal(size=(96, 1)).astype("float32")
initial = [rng.normal(size=(600, 8)).astype("float32"), rng.normal(size=(24, 1)).astype("float32"), np.zeros(1, "float32")]

def batches(context):
    return tf.data.Dataset.from_tensor_slices((ids, labels)).batch(16)

full = lambda v: np.asarray(tf.convert_to_tensor(v))
results = {"initial_table": initial[0], "ids": ids}
for jit in (True, False):
    with strategy.scope():
        inputs = keras.Input(shape=(3,), dtype="int32")
        embedding, dense = Embedding(600, 8), keras.layers.Dense(1)
        model = keras.Model(inputs, dense(keras.layers.Flatten()(embedding(inputs))))
        # Not model.weights: under PSS it lists the shards of the table, not the table.
        weights = [embedding.embeddings, dense.kernel, dense.bias]
        for variable, value in zip(weights, initial):
            variable.assign(value)
        model.compile(optimizer=SparseAdam(0.01, jit_compile=jit), loss="mse")
        build_optimizer_slots(model.optimizer, model.trainable_variables)
    if kind == "parameter_server":
        assert len(embedding.embeddings.variables) == 2, "the table must be sharded"
    history = model.fit(dataset_creator(batches), epochs=2, steps_per_epoch=steps_per_epoch(96, 16), verbose=0)
    results[f"loss_{jit}"] = np.array(history.history["loss"])
    for i, variable in enumerate(weights):
        results[f"weight{i}_{jit}"] = full(variable)
    for i, variable in enumerate(model.optimizer.variables):
        results[f"opt{i}_{jit}"] = full(variable)
np.savez(out, **results)
print("saved", sorted(results))
"""


@pytest.mark.slow
def test_pss_with_one_worker_trains_bit_for_bit_like_one_process(tmp_path):
    """1 worker + 2 PS, MinSizePartitioner: tables, slots and loss equal single-process training."""
    script = tmp_path / "exact.py"
    script.write_text(EXACT)
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    single = subprocess.run(
        [sys.executable, str(script), "none", str(tmp_path / "single.npz")],
        capture_output=True,
        text=True,
        timeout=CLUSTER_TIMEOUT,
        env=env,
    )
    assert single.returncode == 0, single.stderr[-5000:]
    done, _ = run_cluster(tmp_path, EXACT, "parameter_server", str(tmp_path / "pss.npz"))
    assert done.returncode == 0, done.stderr[-5000:]
    reference, pss = np.load(tmp_path / "single.npz"), np.load(tmp_path / "pss.npz")
    assert sorted(reference.files) == sorted(pss.files)
    for name in reference.files:
        np.testing.assert_array_equal(pss[name], reference[name], err_msg=name)
    seen = np.zeros(600, bool)
    seen[reference["ids"].ravel()] = True
    assert 0 < seen.sum() < 600
    for jit in (True, False):
        table = reference[f"weight0_{jit}"]
        assert reference[f"opt0_{jit}"] == 12  # iterations: 2 epochs x 6 steps
        # It trained: every seen row moved, no other row did (both shards hold seen rows).
        moved = np.any(table != reference["initial_table"], axis=1)
        np.testing.assert_array_equal(moved, seen)
        assert seen[:300].any() and seen[300:].any()


MULTI_WORKER = """
import sys
import numpy as np
import recsys
from recsys._tf import keras, tf
from recsys.distribute import make_strategy
from recsys.layers import Embedding
from recsys.optimizers import SparseAdam

out = sys.argv[1]
strategy = make_strategy("multi_worker")
rng = np.random.default_rng(3)
ids = rng.integers(0, 200, size=(64, 2)).astype("int32")
labels = rng.normal(size=(64, 1)).astype("float32")
with strategy.scope():
    inputs = keras.Input(shape=(2,), dtype="int32")
    embedding = Embedding(200, 4, embeddings_initializer="ones")
    model = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Flatten()(embedding(inputs))))
    model.compile(optimizer=SparseAdam(0.01), loss="mse")
# Each worker reads its own half of the global batch of 16 (auto-sharded by data).
data = tf.data.Dataset.from_tensor_slices((ids, labels)).batch(16)
model.fit(data, epochs=2, verbose=0)
np.savez(out, table=embedding.embeddings.numpy(), m=model.optimizer.variables[1].numpy(),
         iterations=model.optimizer.iterations.numpy(), ids=ids)
print("worker done")
"""


@pytest.mark.slow
def test_multi_worker_replicas_stay_identical(tmp_path):
    """Two MultiWorkerMirroredStrategy workers training with SparseAdam end with one table."""
    script = tmp_path / "worker.py"
    script.write_text(MULTI_WORKER)
    processes = []
    with reserve_ports(2) as reservations:
        cluster = {"worker": [f"127.0.0.1:{r.port}" for r in reservations]}
        for index in range(2):
            env = {
                **os.environ,
                "TF_GRPC_REUSE_PORT": "1",
                **tf_config_env(cluster, "worker", index),
            }
            processes.append(
                subprocess.Popen(
                    [sys.executable, str(script), str(tmp_path / f"worker{index}.npz")],
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
            )
        try:
            outputs = [p.communicate(timeout=CLUSTER_TIMEOUT)[0] for p in processes]
        finally:
            for p in processes:
                p.kill()
    for p, output in zip(processes, outputs, strict=True):
        assert p.returncode == 0, output[-5000:]
    first, second = (np.load(tmp_path / f"worker{i}.npz") for i in range(2))
    assert int(first["iterations"]) == int(second["iterations"]) == 8  # 2 epochs x 4 steps
    np.testing.assert_array_equal(first["table"], second["table"])
    np.testing.assert_array_equal(first["m"], second["m"])
    seen = np.zeros(200, bool)
    seen[first["ids"].ravel()] = True
    # Lazy updates on the all-gathered rows: seen rows moved on both, no other row did.
    np.testing.assert_array_equal(np.any(first["table"] != 1.0, axis=1), seen)
