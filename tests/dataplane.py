"""Data-plane fixtures: a real Prefect server and real Ray clusters, as processes.

Loaded as a pytest plugin by conftest.py. The plain functions (`start_prefect_server`,
`start_ray_head`, ...) are also used by bench/runner_bench.py, so they take no pytest
objects. Every process is started in its own session and torn down by process group,
so nothing outlives the test session.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

VENV_BIN = Path(sys.executable).parent
RAY = str(VENV_BIN / "ray")
PREFECT = str(VENV_BIN / "prefect")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _kill_group(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """SIGTERM the process group, then SIGKILL whatever is left after `grace` s."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def _pids_mentioning(marker: str) -> list[int]:
    """PIDs whose command line contains `marker` (our unique temp dir)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if marker.encode() in cmdline:
            pids.append(int(entry.name))
    return pids


def _kill_stragglers(marker: str, grace: float = 5.0) -> None:
    # Ray workers may leave the process group; they all carry the session dir
    # (inside our unique temp dir) on their command line.
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = _pids_mentioning(marker)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and _pids_mentioning(marker):
            time.sleep(0.2)


# --------------------------------------------------------------------------- Prefect


@dataclass
class PrefectServer:
    api_url: str
    home: Path
    process: subprocess.Popen[bytes]
    log: Path

    def env(self) -> dict[str, str]:
        return {"PREFECT_API_URL": self.api_url, "PREFECT_HOME": str(self.home)}


def start_prefect_server(root: Path, timeout: float = 120.0) -> PrefectServer:
    home = root / "prefect-home"
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{root}/prefect.db",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
        "PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED": "false",
        "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
    }
    env.pop("PREFECT_API_URL", None)
    log = root / "prefect-server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    api_url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited early:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=2) as resp:
                if resp.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            _kill_group(proc)
            raise RuntimeError(f"prefect server not healthy in {timeout}s:\n{log.read_text()}")
        time.sleep(0.5)
    return PrefectServer(api_url=api_url, home=home, process=proc, log=log)


def stop_prefect_server(server: PrefectServer) -> None:
    _kill_group(server.process)


# --------------------------------------------------------------------------- Ray


@dataclass
class RayCluster:
    address: str  # host:port of the GCS
    temp_dir: Path
    auth_mode: str
    token: str | None
    client_port: int | None = None  # Ray Client server (ray://), on the head
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    node_dirs: list[Path] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        """What a process needs in its environment to attach to this cluster."""
        env = {"RAY_ADDRESS": self.address, "RAY_AUTH_MODE": self.auth_mode}
        if self.token:
            env["RAY_AUTH_TOKEN"] = self.token
        return env


def _ray_env(auth_mode: str, token: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update({"RAY_AUTH_MODE": auth_mode, "RAY_USAGE_STATS_ENABLED": "0"})
    # Ray nodes must not inherit the test's Prefect settings: the runner has to
    # deliver them to workers itself.
    for key in [k for k in env if k.startswith("PREFECT_")]:
        del env[key]
    if token:
        env["RAY_AUTH_TOKEN"] = token
    return env


def _node_ports() -> list[str]:
    return [
        f"--node-manager-port={free_port()}",
        f"--object-manager-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
        "--min-worker-port=0",
        "--max-worker-port=0",
    ]


def _wait_for_nodes(cluster: RayCluster, count: int, timeout: float = 120.0) -> None:
    """Poll `ray status`-free: count alive nodes via the GCS with a throwaway driver."""
    code = (
        "import ray,sys; ray.init(address=sys.argv[1], logging_level='ERROR');"
        "print(sum(1 for n in ray.nodes() if n['Alive']))"
    )
    # A driver only: keep its connection on loopback (see tests/runner/conftest.py).
    env = {**_ray_env(cluster.auth_mode, cluster.token), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        for proc in cluster.processes:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{proc.args} exited with {proc.returncode}; logs in {cluster.temp_dir}"
                )
        try:
            res = subprocess.run(
                [sys.executable, "-c", code, cluster.address],
                env=env,
                capture_output=True,
                text=True,
                timeout=max(5.0, min(60.0, deadline - time.monotonic())),
            )
        except subprocess.TimeoutExpired as exc:  # a GCS slow to start on a loaded machine
            last = f"driver timed out: {exc.stderr!r}"[-3000:]
            continue
        last = res.stdout + res.stderr
        lines = res.stdout.strip().splitlines()
        if res.returncode == 0 and lines and int(lines[-1]) >= count:
            return
        time.sleep(1)
    logs = "".join(
        f"\n--- {p.name}:\n{p.read_text(errors='replace')[-1500:]}"
        for p in [
            cluster.temp_dir / "head.log",
            *cluster.temp_dir.glob("session_*/logs/gcs_server.out"),
        ]
        if p.exists()
    )
    raise RuntimeError(f"Ray cluster did not reach {count} nodes:\n{last[-3000:]}{logs}")


def start_ray_head(num_cpus: int = 2, auth_mode: str = "token") -> RayCluster:
    # Short path: Ray's Unix sockets live under it (107-char limit).
    temp_dir = Path(tempfile.mkdtemp(prefix="rp-", dir="/tmp"))
    token = secrets.token_hex(32) if auth_mode == "token" else None
    port = free_port()
    client_port = free_port()
    cmd = [
        RAY,
        "start",
        "--head",
        "--block",
        "--node-ip-address=127.0.0.1",
        f"--port={port}",
        f"--temp-dir={temp_dir}",
        f"--num-cpus={num_cpus}",
        "--num-gpus=0",
        "--include-dashboard=false",
        f"--ray-client-server-port={client_port}",
        "--disable-usage-stats",
        *_node_ports(),
    ]
    log = open(temp_dir / "head.log", "wb")  # noqa: SIM115 - lives as long as the process
    proc = subprocess.Popen(
        cmd,
        env=_ray_env(auth_mode, token),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    cluster = RayCluster(
        address=f"127.0.0.1:{port}",
        temp_dir=temp_dir,
        auth_mode=auth_mode,
        token=token,
        client_port=client_port,
        processes=[proc],
    )
    try:
        _wait_for_nodes(cluster, 1)
    except Exception:
        stop_ray(cluster)
        raise
    return cluster


def add_zero_capacity_node(cluster: RayCluster) -> None:
    """Join a node that takes no work, as a Prefect worker pod does (DESIGN.md pattern 1)."""
    node_dir = Path(tempfile.mkdtemp(prefix="rn-", dir="/tmp"))
    cmd = [
        RAY,
        "start",
        f"--address={cluster.address}",
        "--block",
        "--node-ip-address=127.0.0.1",
        "--num-cpus=0",
        "--num-gpus=0",
        f"--temp-dir={node_dir}",
        "--disable-usage-stats",
        *_node_ports(),
    ]
    log = open(cluster.temp_dir / "node.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        cmd,
        env=_ray_env(cluster.auth_mode, cluster.token),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    cluster.processes.append(proc)
    cluster.node_dirs.append(node_dir)
    _wait_for_nodes(cluster, 2)


def stop_ray(cluster: RayCluster) -> None:
    for proc in reversed(cluster.processes):
        _kill_group(proc)
    for d in [cluster.temp_dir, *cluster.node_dirs]:
        _kill_stragglers(str(d))
        if not os.environ.get("PREFECT_RAYPOOL_KEEP_LOGS"):  # keep them to debug a failure
            shutil.rmtree(d, ignore_errors=True)


# --------------------------------------------------------------------------- fixtures


@contextlib.contextmanager
def patched_environ(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    """A real Prefect server (SQLite) on loopback; PREFECT_API_URL points at it."""
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    server = start_prefect_server(tmp_path_factory.mktemp("prefect"))
    try:
        # Prefect read its settings at import; the environment alone is not enough.
        with (
            patched_environ(server.env()),
            temporary_settings({PREFECT_API_URL: server.api_url, PREFECT_HOME: server.home}),
        ):
            yield server
            # Send what this process buffered while the server is still up.
            from prefect.events.worker import EventsWorker
            from prefect.logging.handlers import APILogWorker

            APILogWorker.drain_all(timeout=10)
            EventsWorker.drain_all(timeout=10)
    finally:
        stop_prefect_server(server)


@pytest.fixture(scope="session")
def ray_head() -> Iterator[RayCluster]:
    """A real `ray start --head` with token auth; yields address and token."""
    cluster = start_ray_head(num_cpus=2, auth_mode="token")
    try:
        yield cluster
    finally:
        stop_ray(cluster)


@pytest.fixture(scope="module")
def ray_multinode() -> Iterator[RayCluster]:
    """A head plus a zero-capacity node (`--num-cpus=0 --num-gpus=0`)."""
    cluster = start_ray_head(num_cpus=2, auth_mode="token")
    try:
        add_zero_capacity_node(cluster)
        yield cluster
    finally:
        stop_ray(cluster)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "ray: needs a real Ray instance")
    config.addinivalue_line("markers", "prefect: needs a real Prefect server")
