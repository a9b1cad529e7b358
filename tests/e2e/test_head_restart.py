"""The Ray head pod deleted mid-flow (kuberay #1141: workers stranded after a head
restart): the flow run does not hang but ends Failed or Crashed with a message within
bounded time, and the zero-capacity Prefect worker rejoins the new head by
itself (its entrypoint exits when Ray does, so the pod restarts and joins again), after
which the pool runs flows again."""

from __future__ import annotations

import time

import pytest

from testbed.pooldriver import PoolDriver, pool_manifest
from testbed.waiting import eventually

pytestmark = pytest.mark.e2e

#: Ray gives a driver 60 s to reach a lost GCS again; then the run ends.
FAILS_WITHIN = 300
REJOIN_WITHIN = 180


def test_head_deleted_mid_flow_fails_the_run_and_the_worker_rejoins(pools: PoolDriver) -> None:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    pools.apply(pool_manifest("hr", pools.prefect_api_url, "ZeroCapacityNode"))
    pools.wait_ready("hr")
    old_head = pools.head_pod("hr").metadata.name
    # 240 tasks of 0.5 s on 2 CPUs: a minute of work, longer than the new head takes.
    run_id = pools.run_deployment("hr", "count_to.py:count_to", "count-to", {"highest_number": 240})

    def tasks_started() -> bool:
        with pools.prefect() as c:
            runs = c.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id]))
            )
        return any(r.state and r.state.type.value == "COMPLETED" for r in runs)

    eventually(tasks_started, 240, "the flow's first task runs to complete", interval=1)
    pools.kubectl("delete", "pod", "-n", pools.namespace, old_head, "--wait=false")
    t0 = time.monotonic()
    run = pools.wait_final(run_id, timeout=FAILS_WITHIN)
    assert run.state.type.value in {"FAILED", "CRASHED"}, run.state
    assert run.state.message, "the final state says nothing"
    print(f"flow run ended {run.state.type.value} {time.monotonic() - t0:.0f}s after the "
          f"head was deleted: {run.state.message}")  # fmt: skip

    # The new head is up and the Prefect worker's node joined it, still with no CPUs.
    eventually(
        lambda: pools.head_pod("hr").metadata.name != old_head, 120, "a new head pod", interval=2
    )
    pools.wait_ready("hr", timeout=420)
    (worker,) = pools.pods("prefectray.io/pool=hr,prefectray.io/component=prefect-worker")
    code = (
        "import json; from ray.util.state import list_nodes\n"
        "print(json.dumps({n.node_ip: n.resources_total.get('CPU', 0)"
        " for n in list_nodes() if n.state == 'ALIVE'}))"
    )
    nodes = eventually(
        lambda: worker.status.pod_ip in (found := pools.ray_in_head("hr", code)) and found,
        REJOIN_WITHIN,
        "the Prefect worker's node in the new head's cluster",
        interval=3,
    )
    assert nodes[worker.status.pod_ip] == 0
    print(f"the Prefect worker rejoined {time.monotonic() - t0:.0f}s after the head was deleted")

    # And the pool serves flow runs again, on the Ray workers of the new cluster.
    again = pools.run_deployment("hr", "count_to.py:count_to", "count-to", {"highest_number": 3})
    run = pools.wait_final(again, timeout=240)
    assert run.state.type.value == "COMPLETED", (run.state, pools.logs("hr"))
