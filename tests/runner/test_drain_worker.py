"""The draining process worker (`python -m prefect_raypool.drain_worker`) as a real
process against a real Prefect server: SIGTERM stops it taking flow runs, its running
one finishes COMPLETED exactly once, then it exits; past the drain timeout the run is
stopped and marked as the policy says. No Ray: the flows only sleep and count."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prefect.client.orchestration import SyncPrefectClient, get_client

from prefect_raypool.drain_worker import parse_infrastructure_pid
from testbed.prefect_server import PrefectServer
from testbed.processes import kill_group
from tests.runner.conftest import eventually

pytestmark = pytest.mark.prefect

FLOWS = """\
import os, time
from prefect import flow

@flow
def slow(seconds: float, marker: str) -> str:
    with open(marker, "a") as f:
        f.write("started\\n")
    time.sleep(seconds)
    with open(marker, "a") as f:
        f.write("finished\\n")
    return "done"
"""


@pytest.fixture
def work_pool(prefect_server: PrefectServer) -> str:
    name = f"drain-{uuid.uuid4().hex[:6]}"
    httpx.post(
        f"{prefect_server.api_url}/work_pools/", json={"name": name, "type": "process"}, timeout=10
    ).raise_for_status()
    return name


@pytest.fixture
def client(prefect_server: PrefectServer) -> Iterator[SyncPrefectClient]:
    with get_client(sync_client=True) as c:
        yield c


def _deployment(client: SyncPrefectClient, pool: str, flows: Path) -> Any:
    (flows / "flows.py").write_text(FLOWS)
    flow_id = client.create_flow_from_name("slow")
    return client.create_deployment(
        flow_id=flow_id,
        name=f"d-{uuid.uuid4().hex[:6]}",
        work_pool_name=pool,
        entrypoint="flows.py:slow",
        pull_steps=[{"prefect.deployments.steps.set_working_directory": {"directory": str(flows)}}],
    )


def _worker(
    prefect_server: PrefectServer, pool: str, log: Path, timeout: float, policy: str = "Crash"
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        **prefect_server.env(),
        "RAYPOOL_POD_NAME": "pool-prefect-worker-abc12",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_WORKER_PREFETCH_SECONDS": "0",
    }
    command = [sys.executable, "-m", "prefect_raypool.drain_worker", "--pool", pool]
    command += ["--drain-timeout", str(timeout), "--on-drain-timeout", policy]
    with log.open("wb") as out:
        return subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _state(client: SyncPrefectClient, run_id: uuid.UUID) -> Any:
    return client.read_flow_run(run_id)


def _running(client: SyncPrefectClient, run_id: uuid.UUID, log: Path) -> Any:
    return eventually(
        lambda: (run := _state(client, run_id)).state_name == "Running" and run,
        timeout=120,
        what=f"flow run {run_id} Running (worker log: {log.read_text()[-3000:]})",
    )


def test_sigterm_lets_the_running_flow_run_finish_and_takes_no_new_one(
    prefect_server: PrefectServer, work_pool: str, client: SyncPrefectClient, tmp_path: Path
) -> None:
    deployment = _deployment(client, work_pool, tmp_path)
    marker = tmp_path / "first.log"
    first = client.create_flow_run_from_deployment(
        deployment, parameters={"seconds": 12, "marker": str(marker)}
    ).id
    log = tmp_path / "worker.log"
    worker = _worker(prefect_server, work_pool, log, timeout=120)
    try:
        run = _running(client, first, log)
        assert parse_infrastructure_pid(run.infrastructure_pid) is not None, run
        assert parse_infrastructure_pid(run.infrastructure_pid)[0] == "pool-prefect-worker-abc12"
        assert run.labels.get("prefect.worker.name") == "pool-prefect-worker-abc12"
        worker.send_signal(signal.SIGTERM)
        eventually(lambda: "Draining" in log.read_text(), timeout=30, what="the drain log line")
        second = client.create_flow_run_from_deployment(
            deployment, parameters={"seconds": 1, "marker": str(tmp_path / "second.log")}
        ).id
        assert worker.wait(timeout=120) == 0, log.read_text()[-3000:]
        assert _state(client, first).state_name == "Completed"
        assert marker.read_text() == "started\nfinished\n"  # ran once, to the end
        assert _state(client, second).state_type.value == "SCHEDULED"  # left to another worker
        assert "Drained: no flow run left" in log.read_text()
    finally:
        kill_group(worker)


@pytest.mark.parametrize(
    ("policy", "state_name"), [("Crash", "Crashed"), ("Reschedule", "AwaitingRetry")]
)
def test_past_the_drain_timeout_the_run_is_stopped_and_marked(
    prefect_server: PrefectServer,
    work_pool: str,
    client: SyncPrefectClient,
    tmp_path: Path,
    policy: str,
    state_name: str,
) -> None:
    deployment = _deployment(client, work_pool, tmp_path)
    marker = tmp_path / "run.log"
    run_id = client.create_flow_run_from_deployment(
        deployment, parameters={"seconds": 300, "marker": str(marker)}
    ).id
    log = tmp_path / "worker.log"
    worker = _worker(prefect_server, work_pool, log, timeout=3, policy=policy)
    try:
        _running(client, run_id, log)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=90) == 0, log.read_text()[-3000:]
        run = _state(client, run_id)
        assert run.state_name == state_name, run.state
        assert "drain timeout (3s" in (run.state.message or ""), run.state.message
        assert marker.read_text() == "started\n"  # stopped, not finished
        assert "Drain timeout" in log.read_text()
    finally:
        kill_group(worker)
