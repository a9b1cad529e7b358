"""A flow deployed to a pool runs in the pods the operator generates, on a real node.

The pool's image is the example flow image (examples/flows/Dockerfile: the pools'
default image plus the flow code), so the Prefect worker, the driver and the Ray
workers all have the flow. Ray's own state API, asked in the head pod, says which
node ran each task: they must be the Ray worker pods.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from testbed.pooldriver import PoolDriver, pool_manifest
from testbed.waiting import eventually

pytestmark = pytest.mark.e2e

COUNT = 6


def _run_count_to(pools: PoolDriver, name: str) -> Any:
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterFlowRunId,
    )

    run_id = pools.run_deployment(
        name, "count_to.py:count_to", "count-to", {"highest_number": COUNT}
    )
    run = pools.wait_final(run_id)
    assert run.state.type.value == "COMPLETED", f"{run.state}\n{pools.logs(name)}"
    with pools.prefect() as c:
        task_runs = c.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id]))
        )
    assert len(task_runs) == COUNT
    assert {t.state.type.value for t in task_runs} == {"COMPLETED"}

    def task_log_runs() -> set[Any]:
        with pools.prefect() as c:
            logs = c.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
        return {log.task_run_id for log in logs if log.task_run_id}

    # Task runs' own log lines reach Prefect from the Ray worker pods (sent in batches).
    expected = {t.id for t in task_runs}
    eventually(lambda: task_log_runs() == expected, 60, "a log line of every task run")

    worker_ips = {
        p.status.pod_ip for p in pools.pods(f"ray.io/cluster={name},ray.io/node-type=worker")
    }
    ran_on = pools.ray_nodes_of_finished_tasks(name, "run_task")
    assert len(ran_on) >= 1 and set(ran_on.values()) <= worker_ips, (ran_on, worker_ips)
    return run_id


def test_zero_capacity_pool_runs_a_flow_on_its_ray_workers(pools: PoolDriver) -> None:
    api_url = pools.prefect_api_url
    pools.apply(pool_manifest("zc", api_url, "ZeroCapacityNode"))
    pools.wait_ready("zc")
    # The Prefect worker pod joined Ray with zero CPUs and runs the real worker.
    (worker,) = pools.pods("prefectray.io/pool=zc,prefectray.io/component=prefect-worker")
    assert worker.status.container_statuses[0].ready
    _run_count_to(pools, "zc")
    # The next flow run of the pool is a new driver, so a new Ray job: its tasks run
    # in Ray worker processes the first flow run left warm (preloaded with Prefect),
    # launched before this flow run started, not in processes started for it.
    time.sleep(5)  # the warm processes start while no flow runs
    second_run = _run_count_to(pools, "zc")
    with pools.prefect() as c:
        started_ms = c.read_flow_run(second_run).start_time.timestamp() * 1000
    jobs = pools.ray_task_processes("zc", "run_task")
    assert len(jobs) == 2, jobs  # one Ray job per flow run
    second_job = max(jobs.values(), key=max)
    assert all(launched < started_ms for launched in second_job), (started_ms, jobs)


def test_head_sidecar_pool_runs_a_flow_on_its_ray_workers(pools: PoolDriver) -> None:
    api_url = pools.prefect_api_url
    pools.apply(pool_manifest("hs", api_url, "HeadSidecar"))
    pools.wait_ready("hs")
    head = pools.head_pod("hs")
    assert [c.name for c in head.spec.containers][1:] == ["prefect-worker"]
    _run_count_to(pools, "hs")
