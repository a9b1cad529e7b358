"""Real Ray clusters as local processes: a head with token auth, zero-capacity nodes.

Plain functions, no pytest objects, so the benches use them too. Every process runs
in its own session and is stopped by process group; Ray workers that left the group
are found by the unique temp dir on their command line.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from testbed.processes import free_port, http_ok, kill_group, kill_stragglers
from testbed.waiting import eventually

RAY = str(Path(sys.executable).with_name("ray"))


@dataclass
class RayCluster:
    address: str  # host:port of the GCS
    temp_dir: Path
    auth_mode: str
    token: str | None
    client_port: int | None = None  # Ray Client server (ray://), on the head
    dashboard_url: str | None = None  # the dashboard and its job server, when started
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    node_dirs: list[Path] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        """What a process needs in its environment to attach to this cluster."""
        env = {"RAY_ADDRESS": self.address, "RAY_AUTH_MODE": self.auth_mode}
        if self.token:
            env["RAY_AUTH_TOKEN"] = self.token
        return env


def ray_env(auth_mode: str, token: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update({"RAY_AUTH_MODE": auth_mode, "RAY_USAGE_STATS_ENABLED": "0"})
    # Ray nodes must not inherit the test's Prefect settings: the runner has to
    # deliver them to workers itself.
    for key in [k for k in env if k.startswith("PREFECT_")]:
        del env[key]
    if token:
        env["RAY_AUTH_TOKEN"] = token
    # A node's `python` is the interpreter Ray runs on, as in the Ray image: Ray Job
    # entrypoints (`python -m ...`) run with this PATH.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def node_ports() -> list[str]:
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


def wait_for_nodes(cluster: RayCluster, count: int, timeout: float = 120.0) -> None:
    """Poll `ray status`-free: count alive nodes via the GCS with a throwaway driver."""
    code = (
        "import ray,sys; ray.init(address=sys.argv[1], logging_level='ERROR');"
        "print(sum(1 for n in ray.nodes() if n['Alive']))"
    )
    # A driver only: keep its connection on loopback (see tests/runner/conftest.py).
    env = {**ray_env(cluster.auth_mode, cluster.token), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        for proc in cluster.processes:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{proc.args!r} exited with {proc.returncode}; logs in {cluster.temp_dir}"
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


def start_ray_head(
    num_cpus: int = 2,
    auth_mode: str = "token",
    dashboard: bool = False,
    extra_env: dict[str, str] | None = None,
) -> RayCluster:
    """`dashboard`: also start the dashboard and its job server (Ray Job submission).
    `extra_env`: more environment for `ray start` (e.g. `RAY_preload_python_modules`)."""
    # Short path: Ray's Unix sockets live under it (107-char limit).
    temp_dir = Path(tempfile.mkdtemp(prefix="rp-", dir="/tmp"))
    token = secrets.token_hex(32) if auth_mode == "token" else None
    port = free_port()
    client_port = free_port()
    dashboard_port = free_port() if dashboard else None
    dashboard_args = (
        [
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard_port}",
        ]
        if dashboard_port
        else ["--include-dashboard=false"]
    )
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
        *dashboard_args,
        f"--ray-client-server-port={client_port}",
        "--disable-usage-stats",
        *node_ports(),
    ]
    log = open(temp_dir / "head.log", "wb")  # noqa: SIM115 - lives as long as the process
    proc = subprocess.Popen(
        cmd,
        env={**ray_env(auth_mode, token), **(extra_env or {})},
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
        dashboard_url=f"http://127.0.0.1:{dashboard_port}" if dashboard_port else None,
        processes=[proc],
    )
    try:
        wait_for_nodes(cluster, 1)
        if cluster.dashboard_url:  # the job server answers after the node is up
            url = f"{cluster.dashboard_url}/api/version"
            eventually(lambda: http_ok(url, token), 120, "Ray dashboard", interval=0.2)
    except Exception:
        stop_ray(cluster)
        raise
    return cluster


def add_zero_capacity_node(cluster: RayCluster) -> None:
    """Join a node that takes no work, as a ZeroCapacityNode pool's Prefect worker pod does."""
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
        *node_ports(),
    ]
    log = open(cluster.temp_dir / "node.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        cmd,
        env=ray_env(cluster.auth_mode, cluster.token),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    cluster.processes.append(proc)
    cluster.node_dirs.append(node_dir)
    wait_for_nodes(cluster, 2)


def stop_ray(cluster: RayCluster) -> None:
    for proc in reversed(cluster.processes):
        kill_group(proc)
    for d in [cluster.temp_dir, *cluster.node_dirs]:
        kill_stragglers(str(d))
        if not os.environ.get("PREFECT_RAYPOOL_KEEP_LOGS"):  # keep them to debug a failure
            shutil.rmtree(d, ignore_errors=True)


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
