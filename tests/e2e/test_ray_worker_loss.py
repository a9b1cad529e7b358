"""A Ray worker pod killed mid-flow (deleted at once, as with its node lost): Ray
re-runs the task runs it held on the pod KubeRay makes anew (the runner's max_retries),
so the flow run ends COMPLETED, once, with every task run COMPLETED once (one task run
per mapped item, no duplicate). The flow returns every task's result (`.result()` of
each): it completes only with all."""

from __future__ import annotations

import time

import pytest

from testbed.pooldriver import PoolDriver, pool_manifest
from testbed.waiting import eventually

pytestmark = pytest.mark.e2e

#: 240 tasks of 0.5 s on 2 CPUs: a minute of work, longer than a new Ray worker takes.
COUNT = 240


def test_a_ray_worker_pod_deleted_mid_flow_does_not_fail_the_run(pools: PoolDriver) -> None:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    pools.apply(pool_manifest("wl", pools.prefect_api_url, "ZeroCapacityNode"))
    pools.wait_ready("wl")
    workers = "ray.io/cluster=wl,ray.io/node-type=worker"
    (old_worker,) = pools.pods(workers)
    run_id = pools.run_deployment(
        "wl", "count_to.py:count_to", "count-to", {"highest_number": COUNT}
    )

    def task_runs() -> list:
        """Every task run of the flow run, a page (the API's most: 200) at a time."""
        found: list = []
        with pools.prefect() as c:
            while True:
                page = c.read_task_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])),
                    limit=200,
                    offset=len(found),
                )
                found += page
                if len(page) < 200:
                    return found

    def some_done() -> bool:
        states = [r.state.type.value for r in task_runs() if r.state]
        return "COMPLETED" in states and states.count("COMPLETED") < COUNT // 2

    eventually(some_done, 240, "the flow's first task runs to complete", interval=1)
    # Killed at once, as with its node lost: a graceful delete lets Ray drain the node
    # (its running tasks end, no new one starts there), which loses nothing.
    pools.kubectl(
        "delete", "pod", "-n", pools.namespace, old_worker.metadata.name,
        "--grace-period=0", "--force", "--wait=false",
    )  # fmt: skip
    t0 = time.monotonic()
    run = pools.wait_final(run_id, timeout=420)
    assert run.state.type.value == "COMPLETED", f"{run.state}\n{pools.logs('wl')}"
    print(f"flow run COMPLETED {time.monotonic() - t0:.0f}s after its Ray worker pod was deleted")
    # A new Ray worker pod ran the rest: the old one is gone.
    assert old_worker.metadata.uid not in {p.metadata.uid for p in pools.pods(workers)}

    runs = task_runs()
    assert len(runs) == COUNT, len(runs)  # a re-run reuses its task run: no duplicate
    assert {r.state.type.value for r in runs} == {"COMPLETED"}
    assert len({r.dynamic_key for r in runs}) == COUNT  # each mapped item once
    # The deletion did hit running Ray tasks, and Ray re-ran them (attempt 1 or later)
    # to the end: Ray's state API, in the head pod.
    code = (
        "import json; from ray.util.state import list_tasks\n"
        "tasks = list_tasks(detail=True, limit=10000)\n"
        "print(json.dumps(sorted({(t.state, t.attempt_number) for t in tasks"
        " if t.name == 'shout'})))"  # a Ray task is named after its Prefect task
    )
    attempts = pools.ray_in_head("wl", code)
    assert ["FINISHED"] == sorted({s for s, n in attempts if n > 0}), attempts
    with pools.prefect() as c:
        history = c.read_flow_run_states(run_id)
    assert [s.type.value for s in history].count("COMPLETED") == 1, history
