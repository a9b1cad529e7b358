"""Cancelling a flow run through Prefect stops its Ray tasks: the real path, end to end.

Prefect 3 cancels a running flow run from the process that started it (a worker, or
`flow.serve()`'s runner; both use the same cancellation manager): it sees the run
go Cancelling, tells the flow-run process over its control channel, then sends it
SIGTERM (SIGKILL after 30 s). The flow-run process here is a driver attached to a
long-lived Ray cluster (`ray_head`), as in a pool's Prefect worker pod.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import ray
from prefect.client.orchestration import SyncPrefectClient
from prefect.states import Cancelling

from prefect_raypool.task_runners import CANCELLED_MESSAGE
from testbed.dataplane import RayCluster
from testbed.prefect_server import PrefectServer
from tests.runner.conftest import LOOPBACK_ENV, eventually, task_runs_of

pytestmark = [pytest.mark.ray, pytest.mark.prefect]

#: How long each task would run if nothing stopped it.
TASK_SECONDS = 20

FLOW_FILE = """
import os
import time
from pathlib import Path

import ray
from prefect import flow, task
from prefect.utilities.annotations import unmapped

from prefect_raypool import RayTaskRunner


@task
def sleeper(i: int, markers: str, seconds: float) -> int:
    job = ray.get_runtime_context().get_job_id()
    Path(markers, f"started-{i}").write_text(f"{os.getpid()} {job}")
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            time.sleep(left)
        except BaseException:
            if i % 2:  # odd ones shrug off the interrupt, as a blocking C call does
                continue
            raise
    Path(markers, f"finished-{i}").write_text("finished")
    return i


@flow(task_runner=RayTaskRunner(address="auto"))
def cancel_me(markers: str, n: int, seconds: float) -> list[int]:
    return sleeper.map(range(n), unmapped(markers), unmapped(seconds)).result()


if __name__ == "__main__":
    cancel_me.serve(name="cancel-test")
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) is not running anything.
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
            return False
    return True


def test_cancelling_a_served_flow_run_stops_its_ray_tasks(
    ray_session: RayCluster,
    prefect_server: PrefectServer,
    client: SyncPrefectClient,
    tmp_path: Path,
) -> None:
    (tmp_path / "cancel_flow.py").write_text(FLOW_FILE)
    markers = tmp_path / "markers"
    markers.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update({**LOOPBACK_ENV, **ray_session.env(), **prefect_server.env()})
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        serve = subprocess.Popen(
            [sys.executable, "cancel_flow.py"],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deployment = eventually(
            lambda: _deployment(client, "cancel-me/cancel-test"),
            timeout=120,
            what=f"the served deployment (log: {log})",
        )
        flow_run = client.create_flow_run_from_deployment(
            deployment.id,
            parameters={"markers": str(markers), "n": 4, "seconds": TASK_SECONDS},
        )
        # Two CPUs: tasks 0 (stops on an interrupt) and 1 (does not) run, 2 and 3 queue.
        eventually(
            lambda: len(list(markers.glob("started-*"))) == 2,
            timeout=120,
            what=f"two running tasks (log: {log})",
        )
        started = {p.name: p.read_text().split() for p in markers.glob("started-*")}
        would_finish = time.monotonic() + TASK_SECONDS
        pids = [int(pid) for pid, _ in started.values()]
        (job_id,) = {job for _, job in started.values()}

        # What `prefect flow-run cancel` does.
        client.set_flow_run_state(flow_run.id, Cancelling(), force=True)
        final = eventually(
            lambda: _final_state(client, flow_run.id), timeout=90, what="the flow run to end"
        )
        assert final.is_cancelled(), (final, log.read_text()[-3000:])
        # The flow-run process ended through Prefect's cancellation path, not a crash.
        assert "Flow run was cancelled" in log.read_text(), log.read_text()[-3000:]

        # Ray: the job is over, its task processes are gone, the CPUs are free.
        eventually(lambda: _job_is_dead(job_id), timeout=30, what=f"Ray job {job_id} to be dead")
        eventually(
            lambda: not any(alive(pid) for pid in pids),
            timeout=30,
            what="the processes that ran the tasks to exit",
        )
        eventually(
            lambda: ray.available_resources().get("CPU") == ray.cluster_resources().get("CPU"),
            timeout=30,
            what="all of the cluster's CPUs to be free",
        )
        # Prefect: the task runs that started are Cancelled by the runner, before its
        # process exited (not later by the server's clean-up service); none is left
        # Running, and the queued ones were never created.
        runs = task_runs_of(client, flow_run.id)
        assert len(runs) == 2, [(r.name, r.state) for r in runs]
        assert all(
            r.state and r.state.is_cancelled() and r.state.message == CANCELLED_MESSAGE
            for r in runs
        ), [(r.name, r.state) for r in runs]
        # Past the time the tasks would have finished: none did, no queued one started.
        time.sleep(max(0.0, would_finish - time.monotonic()) + 2)
        assert not list(markers.glob("finished-*"))
        assert sorted(started) == sorted(p.name for p in markers.glob("started-*"))
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(serve.pid, signal.SIGTERM)
        try:
            serve.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(serve.pid, signal.SIGKILL)
            serve.wait(timeout=10)


def _deployment(client: SyncPrefectClient, name: str) -> Any:
    from prefect.exceptions import ObjectNotFound

    try:
        return client.read_deployment_by_name(name)
    except ObjectNotFound:
        return None


def _final_state(client: SyncPrefectClient, flow_run_id: Any) -> Any:
    state = client.read_flow_run(flow_run_id).state
    return state if state is not None and state.is_final() else None


def _job_is_dead(job_id: str) -> bool:
    from ray._private.state import jobs

    (job,) = [j for j in jobs() if j["JobID"] == job_id]
    return bool(job["IsDead"])
