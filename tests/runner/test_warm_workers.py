"""A pool's next flow run takes over Ray worker processes warmed by the previous one.

Each flow run is a fresh driver process (as the Prefect worker's `prefect flow-run
execute` is) attaching to a running Ray head with token authentication, which
preloads `prefect_raypool.preload` into idle Ray worker processes, as the
operator's Ray pods do.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

from testbed import REPO, dataplane
from testbed.dataplane import RayCluster
from testbed.prefect_server import PrefectServer

from .conftest import eventually, run_python, task_runs_of

pytestmark = [pytest.mark.prefect]

FLOW = """
import json, os, sys, time
driver_started = time.time()

from prefect import flow, get_run_logger, task
from prefect_raypool import RayTaskRunner

def started_at():
    with open("/proc/self/stat") as f:
        ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/stat") as f:
        boot = next(int(line.split()[1]) for line in f if line.startswith("btime"))
    return boot + ticks / os.sysconf("SC_CLK_TCK")

@task
def probe(i):
    get_run_logger().info("probe %s {marker}", i)
    get_run_logger().warning("warning %s {marker}", i)
    time.sleep(0.05)
    return {{"pid": os.getpid(), "started": started_at(),
             "preloaded": "prefect_raypool.preload" in sys.modules}}

@flow(task_runner=RayTaskRunner(warm_workers_s={warm_s}))
def pool_flow(n):
    return probe.map(range(n)).result()

out = pool_flow(4, return_state=True)
print("RESULT " + json.dumps({{"driver_started": driver_started, "tasks": out.result(),
                               "flow_run_id": str(out.state_details.flow_run_id)}}))
"""


@pytest.fixture(scope="module")
def preloading_head() -> Iterator[RayCluster]:
    cluster = dataplane.start_ray_head(
        num_cpus=2,
        auth_mode="token",
        extra_env={
            "RAY_preload_python_modules": "prefect_raypool.preload",
            "PYTHONPATH": str(REPO / "runner"),
        },
    )
    try:
        yield cluster
    finally:
        dataplane.stop_ray(cluster)


def run_flow(
    cluster: RayCluster, warm_s: int, marker: str, env: dict[str, str] | None = None
) -> dict[str, Any]:
    code = FLOW.format(marker=marker, warm_s=warm_s)
    out = run_python(code, env={**cluster.env(), **(env or {})}, timeout=240)
    printed = out.stdout + out.stderr
    assert out.returncode == 0, printed[-3000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def test_without_warming_each_flow_run_starts_its_own_workers(
    preloading_head: RayCluster, prefect_server: PrefectServer
) -> None:
    # First in this module: no flow run has warmed the head yet.
    run_flow(preloading_head, 0, uuid.uuid4().hex)
    time.sleep(3)
    second = run_flow(preloading_head, 0, uuid.uuid4().hex)
    assert all(t["started"] > second["driver_started"] for t in second["tasks"]), second


def test_next_flow_run_takes_over_warm_workers_and_records_everything(
    preloading_head: RayCluster, prefect_server: PrefectServer, client: SyncPrefectClient
) -> None:
    run_flow(preloading_head, 60, uuid.uuid4().hex)
    time.sleep(3)  # the warmed processes start and preload while no flow runs
    marker = uuid.uuid4().hex
    second = run_flow(preloading_head, 60, marker)
    tasks = second["tasks"]
    # Ray worker processes started before this flow run's driver, preloaded,
    # and not left over from the first flow run (Ray ended those with its job).
    assert all(t["started"] < second["driver_started"] for t in tasks), second
    assert all(t["preloaded"] for t in tasks), tasks
    # Every task run is recorded: Completed states and each one's log line.
    flow_run_id = uuid.UUID(second["flow_run_id"])
    runs = task_runs_of(client, flow_run_id)
    assert len(runs) == 4 and all(r.state and r.state.is_completed() for r in runs)

    def logged() -> set[Any]:
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
        )
        return {log.task_run_id for log in logs if marker in log.message}

    eventually(lambda: logged() == {r.id for r in runs}, what="each task run's log in the API")


def test_warm_workers_log_as_the_flow_run_is_configured(
    preloading_head: RayCluster, prefect_server: PrefectServer, client: SyncPrefectClient
) -> None:
    # The flow run's process logs at WARNING (its own environment, not the Ray
    # head's): its Ray worker processes, preloaded before it existed, do too.
    marker = uuid.uuid4().hex
    run = run_flow(preloading_head, 60, marker, env={"PREFECT_LOGGING_LEVEL": "WARNING"})
    flow_run_id = uuid.UUID(run["flow_run_id"])

    def logged() -> list[str]:
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
        )
        return [log.message for log in logs if marker in log.message]

    eventually(lambda: len(logged()) == 4, what="each task run's warning in the API")
    time.sleep(3)  # Prefect sends logs in batches: an INFO line would be there by now
    assert all(m.startswith("warning ") for m in logged()), logged()
