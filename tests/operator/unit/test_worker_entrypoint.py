"""The worker entrypoint scripts, run as real processes with stand-in `ray`/`prefect`.

The stand-ins are tiny executables on PATH: `ray start` binds a real unix socket where
the raylet's would be and blocks like `ray start --block`; `prefect` records its argv
and waits for SIGTERM. What is tested is the generated shell: order, waiting,
supervision (the pod must exit when the raylet dies, also as PID 1 with a worker slow
to stop) and failure before the raylet.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from prefect_raypool_operator.builders import entrypoint
from testbed.dataplane import RayCluster, node_ports, ray_env, wait_for_nodes
from testbed.processes import kill_stragglers, pids_mentioning

pytestmark = pytest.mark.unit

FAKE_RAY = """\
import os, signal, socket, sys, time
pathfile = os.environ["FAKE_STATE"] + "/ray.pid"
if sys.argv[1] == "stop":  # ends `ray start --block`, as the real one does
    os.kill(int(open(pathfile).read()), signal.SIGTERM)
    sys.exit(0)
open(pathfile, "w").write(str(os.getpid()))
open(os.environ["FAKE_STATE"] + "/ray.argv", "w").write(" ".join(sys.argv[1:]))
if os.environ.get("FAKE_RAY_FAIL"):
    sys.exit(3)
time.sleep(float(os.environ.get("FAKE_RAY_DELAY", "0.5")))
sockets = os.environ["RAYPOOL_RAY_TMPDIR"] + "/session_latest/sockets"
os.makedirs(sockets, exist_ok=True)
s = socket.socket(socket.AF_UNIX)
s.bind(sockets + "/raylet")
signal.pause()
"""

FAKE_PREFECT = """\
import os, signal, sys
open(os.environ["FAKE_STATE"] + "/prefect.argv", "w").write(" ".join(sys.argv[1:]))
open(os.environ["FAKE_STATE"] + "/prefect.pid", "w").write(str(os.getpid()))
if os.environ.get("FAKE_PREFECT_SLOW_STOP"):  # a worker still finishing its flow runs
    signal.signal(signal.SIGTERM, lambda *_: None)
else:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
while True:
    signal.pause()
"""


@pytest.fixture
def fakes(tmp_path: Path) -> Iterator[dict[str, str]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("ray", FAKE_RAY), ("prefect", FAKE_PREFECT)):
        exe = bin_dir / name
        exe.write_text(f"#!{sys.executable}\n{body}")
        exe.chmod(0o755)
    state = tmp_path / "state"
    state.mkdir()
    yield {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "FAKE_STATE": str(state),
        "RAYPOOL_RAY_TMPDIR": str(tmp_path / "ray"),
        "RAYPOOL_RAYLET_WAIT_SECONDS": "20",
        "RAYPOOL_STATE_DIR": str(tmp_path / "raypool"),
        "RAYPOOL_STOP_GRACE_SECONDS": "2",
    }


def _start(script: str, env: dict[str, str], as_pid_1: bool = False) -> subprocess.Popen[str]:
    # As PID 1 of a new PID namespace, like a container's entrypoint: there the kernel
    # drops signals the process has no handler for, SIGKILL sent from inside included.
    prefix = ["unshare", "--pid", "--fork", "--kill-child"] if as_pid_1 else []
    return subprocess.Popen(
        [*prefix, "/bin/sh", "-c", script],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _wait_for(path: Path, timeout: float = 15) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.1)
    time.sleep(0.1)
    return path.read_text()


def _cleanup(proc: subprocess.Popen[str]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)


COMMAND = entrypoint.prefect_worker_command("pool-a", ["q1", "q2"])


def test_joins_then_runs_the_worker_and_exits_when_the_raylet_dies(
    fakes: dict[str, str],
) -> None:
    state = Path(fakes["FAKE_STATE"])
    proc = _start(entrypoint.zero_capacity_script("pool-head-svc:6379", COMMAND), fakes)
    try:
        argv = _wait_for(state / "prefect.argv")
        assert argv == "worker start --pool pool-a --type process --work-queue q1 --work-queue q2"
        ray_argv = (state / "ray.argv").read_text()
        assert ray_argv == "start --address=pool-head-svc:6379 --num-cpus=0 --num-gpus=0 --block"
        # The worker is a child of the entrypoint, which stays to supervise it.
        worker = int(_wait_for(state / "prefect.pid"))
        assert _parent(worker) == proc.pid
        assert proc.poll() is None
        assert _ready(fakes)
        os.kill(int((state / "ray.pid").read_text()), signal.SIGKILL)  # the raylet dies
        assert proc.wait(timeout=15) == 1
        assert not _ready(fakes)
        assert "stopping the Prefect worker" in (proc.stdout.read() if proc.stdout else "")
        assert not Path(f"/proc/{worker}").exists()
    finally:
        _cleanup(proc)


def test_as_pid_1_a_worker_slow_to_stop_is_killed_when_ray_exits(fakes: dict[str, str]) -> None:
    """The head was replaced: Ray exits, the worker ignores SIGTERM (finishing flow runs
    it can no longer run); the container must still end so the pod joins the new head."""
    if subprocess.run(["unshare", "--pid", "--fork", "true"], capture_output=True).returncode:
        pytest.skip("no PID namespaces here (needs root or user namespaces)")
    state = Path(fakes["FAKE_STATE"])
    env = {**fakes, "FAKE_PREFECT_SLOW_STOP": "1"}
    proc = _start(entrypoint.zero_capacity_script("pool-head-svc:6379", COMMAND), env, True)
    try:
        _wait_for(state / "prefect.pid")
        os.kill(_host_pid_of(int((state / "ray.pid").read_text())), signal.SIGKILL)
        assert proc.wait(timeout=20) == 1
    finally:
        _cleanup(proc)


def test_a_worker_that_exits_stops_ray_and_ends_the_container(fakes: dict[str, str]) -> None:
    state = Path(fakes["FAKE_STATE"])
    proc = _start(entrypoint.zero_capacity_script("pool-head-svc:6379", COMMAND), fakes)
    try:
        os.kill(int(_wait_for(state / "prefect.pid")), signal.SIGTERM)
        assert proc.wait(timeout=15) == 143
        assert "the Prefect worker exited (143)" in (proc.stdout.read() if proc.stdout else "")
    finally:
        _cleanup(proc)


def test_sigterm_to_the_entrypoint_stops_the_worker_gracefully(fakes: dict[str, str]) -> None:
    """Pod deletion: the kubelet signals PID 1 only; the worker must get it."""
    state = Path(fakes["FAKE_STATE"])
    proc = _start(entrypoint.zero_capacity_script("pool-head-svc:6379", COMMAND), fakes)
    try:
        _wait_for(state / "prefect.pid")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 143
    finally:
        _cleanup(proc)


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _host_pid_of(ns_pid: int) -> int:
    """The host PID of a process known by its PID inside a child PID namespace."""
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            lines = status.read_text().splitlines()
        except OSError:
            continue
        nspid = next((line.split()[1:] for line in lines if line.startswith("NSpid:")), [])
        if len(nspid) > 1 and int(nspid[-1]) == ns_pid and "FAKE_STATE" in _environ(status):
            return int(nspid[0])
    raise AssertionError(f"no process with PID {ns_pid} in a child namespace")


def _environ(status: Path) -> str:
    try:
        return (status.parent / "environ").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def _ready(env: dict[str, str]) -> bool:
    """The container's readiness probe, run against this test's directories."""
    probe = entrypoint.zero_capacity_readiness()[-1]
    probe = probe.replace(
        entrypoint.RAYLET_SOCKET, f"{env['RAYPOOL_RAY_TMPDIR']}/session_latest/sockets/raylet"
    )
    probe = probe.replace(entrypoint.STATE_DIR, env["RAYPOOL_STATE_DIR"])
    return subprocess.run(["/bin/sh", "-c", probe]).returncode == 0


def test_fails_without_starting_the_worker_when_ray_start_fails(fakes: dict[str, str]) -> None:
    state = Path(fakes["FAKE_STATE"])
    proc = _start(
        entrypoint.zero_capacity_script("pool-head-svc:6379", COMMAND),
        {**fakes, "FAKE_RAY_FAIL": "1"},
    )
    try:
        assert proc.wait(timeout=15) == 1
        output = proc.stdout.read() if proc.stdout else ""
        assert "ray start exited before the raylet came up" in output
        assert not (state / "prefect.argv").exists()
    finally:
        _cleanup(proc)


def test_times_out_when_no_raylet_appears(fakes: dict[str, str]) -> None:
    script = entrypoint.sidecar_script(COMMAND)
    proc = _start(script, {**fakes, "RAYPOOL_RAYLET_WAIT_SECONDS": "2"})
    try:
        assert proc.wait(timeout=15) == 1
        assert "no raylet socket" in (proc.stdout.read() if proc.stdout else "")
        assert not (Path(fakes["FAKE_STATE"]) / "prefect.argv").exists()
    finally:
        _cleanup(proc)


def test_sidecar_waits_for_the_heads_raylet_then_execs(fakes: dict[str, str]) -> None:
    state = Path(fakes["FAKE_STATE"])
    proc = _start(entrypoint.sidecar_script(COMMAND), fakes)
    head = subprocess.Popen(
        [Path(fakes["PATH"].split(":")[0]) / "ray", "start", "--head"],
        env={**os.environ, **fakes, "FAKE_RAY_DELAY": "1.5"},
    )
    try:
        argv = _wait_for(state / "prefect.argv")
        assert argv.startswith("worker start --pool pool-a")
        assert Path(fakes["RAYPOOL_RAY_TMPDIR"], "session_latest/sockets/raylet").is_socket()
    finally:
        head.kill()
        head.wait()
        _cleanup(proc)


def test_script_is_posix_sh() -> None:
    script = entrypoint.zero_capacity_script("x-head-svc:6379", COMMAND)
    check = subprocess.run(["/bin/sh", "-n", "-c", script], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    assert textwrap.dedent(script) == script


@pytest.mark.ray
def test_zero_capacity_entrypoint_joins_a_real_ray_cluster(
    ray_head: RayCluster, fakes: dict[str, str], tmp_path: Path
) -> None:
    """Real `ray start` against a real token-auth head: joins with 0 CPUs, then the
    worker starts; killing the node's raylet stops the worker."""
    node_dir = Path(tempfile.mkdtemp(prefix="rz-", dir="/tmp"))  # short: socket paths
    bin_dir = fakes["PATH"].split(":")[0]
    (Path(bin_dir) / "ray").unlink()  # the real ray (from the venv) from here on
    env = {
        **ray_env(ray_head.auth_mode, ray_head.token),
        "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}",
        "FAKE_STATE": fakes["FAKE_STATE"],
        "RAYPOOL_RAY_TMPDIR": str(node_dir),
        "RAYPOOL_RAYLET_WAIT_SECONDS": "120",
        "RAYPOOL_RAY_START_ARGS": " ".join(
            ["--node-ip-address=127.0.0.1", f"--temp-dir={node_dir}", "--disable-usage-stats",
             *node_ports()]
        ),
    }  # fmt: skip
    proc = subprocess.Popen(
        ["/bin/sh", "-c", entrypoint.zero_capacity_script(ray_head.address, COMMAND)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        _wait_for(Path(fakes["FAKE_STATE"]) / "prefect.argv", timeout=120)
        wait_for_nodes(ray_head, 2)
        code = (
            "import ray,sys,json; ray.init(address=sys.argv[1], logging_level='ERROR');"
            "print(json.dumps([n['Resources'].get('CPU', 0) for n in ray.nodes() if n['Alive']]))"
        )
        out = subprocess.run(
            [sys.executable, "-c", code, ray_head.address],
            env=ray_env(ray_head.auth_mode, ray_head.token),
            capture_output=True,
            text=True,
            timeout=120,
        )
        cpus = sorted(json.loads(out.stdout.strip().splitlines()[-1]))
        assert cpus[0] == 0 and len(cpus) >= 2, out.stderr[-2000:]
        assert proc.poll() is None
        raylets = [pid for pid in pids_mentioning(str(node_dir)) if _is_raylet(pid)]
        assert raylets, "no raylet process found for the joined node"
        for pid in raylets:
            os.kill(pid, signal.SIGKILL)
        # `ray start --block` notices the dead raylet, then stops the node's other Ray
        # processes one by one before it returns: allow for a loaded machine.
        try:
            code = proc.wait(timeout=180)
        except subprocess.TimeoutExpired:
            _cleanup(proc)
            raise AssertionError(proc.stdout.read()[-3000:] if proc.stdout else "") from None
        assert code != 0  # the Prefect worker was stopped
    finally:
        _cleanup(proc)
        kill_stragglers(str(node_dir))


def _is_raylet(pid: int) -> bool:
    try:
        return b"raylet" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
    except OSError:
        return False


def _kubelet_expand(arg: str, env: dict[str, str]) -> str:
    """What the kubelet makes of a container's command or args (Kubernetes'
    third_party/forked/golang/expansion): `$(NAME)` is NAME's value where the container
    has NAME, `$$` is `$`, anything else stays."""
    out, i = [], 0
    while i < len(arg):
        if arg[i] == "$" and i + 1 < len(arg):
            if arg[i + 1] == "$":
                out.append("$")
                i += 2
                continue
            if arg[i + 1] == "(" and ")" in arg[i + 2 :]:
                end = arg.index(")", i + 2)
                name = arg[i + 2 : end]
                out.append(env.get(name, f"$({name})"))
                i = end + 1
                continue
        out.append(arg[i])
        i += 1
    return "".join(out)


def test_the_kubelets_expansion_leaves_the_scripts_as_written() -> None:
    env = {"PREFECT_API_URL": "http://x", "RAYPOOL_POD_NAME": "p", "HOME": "/h"}
    for script in (
        entrypoint.sidecar_script(COMMAND),
        entrypoint.zero_capacity_script("x-head-svc:6379", COMMAND),
        "echo $$ $(HOME) $$(HOME) $(date +%s) ${HOME} $",
        "$",
        "a$",
        "$$",
        "$$$",
        "$$(",
        "$(",
        "$(HOME",
        "$)$x$$$(HOME)",
    ):
        command = entrypoint.shell_command(script)
        assert [_kubelet_expand(a, env) for a in command] == ["/bin/sh", "-c", script]


def test_the_head_prestop_waits_for_the_sidecar_worker_it_recorded(
    fakes: dict[str, str],
) -> None:
    """The sidecar, started as the kubelet starts it, records the worker's PID; the
    Ray container's preStop waits while that worker lives and returns once it exits."""
    command = [_kubelet_expand(a, fakes) for a in entrypoint.shell_command(
        entrypoint.sidecar_script(COMMAND)
    )]  # fmt: skip
    sidecar = _start(command[2], fakes)
    head = subprocess.Popen(
        [Path(fakes["PATH"].split(":")[0]) / "ray", "start", "--head"],
        env={**os.environ, **fakes},
    )
    prestop: subprocess.Popen[str] | None = None
    try:
        worker = _wait_for(Path(fakes["FAKE_STATE"]) / "prefect.pid")
        recorded = Path(fakes["RAYPOOL_RAY_TMPDIR"], "raypool-prefect-worker.pid").read_text()
        assert recorded.strip() == worker  # exec kept the shell's PID
        prestop = subprocess.Popen(entrypoint.head_prestop(), env={**os.environ, **fakes})
        time.sleep(2)
        assert prestop.poll() is None  # waits while the worker drains
        os.kill(int(worker), signal.SIGTERM)
        sidecar.wait(timeout=10)  # reaped, as the pod's pause process reaps it
        assert prestop.wait(timeout=10) == 0
    finally:
        if prestop and prestop.poll() is None:
            prestop.kill()
        head.kill()
        head.wait()
        _cleanup(sidecar)


def test_the_head_prestop_fails_on_a_pid_file_without_a_pid(
    fakes: dict[str, str], tmp_path: Path
) -> None:
    env = {**os.environ, **fakes}
    done = subprocess.run(entrypoint.head_prestop(), env=env, capture_output=True, timeout=10)
    assert done.returncode == 0  # no sidecar worker started: nothing to wait for
    Path(fakes["RAYPOOL_RAY_TMPDIR"]).mkdir(parents=True, exist_ok=True)
    Path(fakes["RAYPOOL_RAY_TMPDIR"], "raypool-prefect-worker.pid").write_text("$\n")
    done = subprocess.run(
        entrypoint.head_prestop(), env=env, capture_output=True, text=True, timeout=10
    )
    assert done.returncode == 1
    assert "no Prefect worker PID" in done.stderr
