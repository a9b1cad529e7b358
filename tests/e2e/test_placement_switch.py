"""`spec.placement` ZeroCapacityNode -> HeadSidecar while a flow run is in flight, on a
real node: the worker Deployment is deleted and its pod drains (its grace period is
kept), the run keeps its Ray cluster (KubeRay does not restart the running head) and
ends COMPLETED exactly once, no task run twice, and the orphan sweep leaves it alone.

The running head has no Prefect worker container until KubeRay makes a new head pod,
so a flow run submitted after the switch waits in the work pool: the pool says so
(not Ready; `WorkerReady` False, `SidecarMissing`), and once the old worker pod has
drained the pool replaces the head by itself (DrainThenReplace); the new head's
sidecar runs the waiting run.
"""

from __future__ import annotations

import time

import pytest

from testbed.pooldriver import PoolDriver
from testbed.waiting import eventually
from tests.e2e.test_worker_drain import (
    _completed_once,
    _draining,
    _patch,
    _pool,
    _running_on,
    _start,
)

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(2400)
def test_a_placement_switch_drains_the_flow_run_in_flight(pools: PoolDriver) -> None:
    pools.apply(_pool("ps", pools.prefect_api_url))
    pools.wait_ready("ps")
    head = pools.head_pod("ps").metadata.name
    run_id = _start(pools, "ps")
    worker = _running_on(pools, run_id)

    t0 = time.monotonic()
    _patch(pools, "ps", {"spec": {"placement": "HeadSidecar"}})
    # The Deployment is deleted; its pod gets its grace period, not a kill: it drains.
    _draining(pools, worker, timeout=180)
    print(f"pod {worker} draining {time.monotonic() - t0:.0f}s after the placement switch")
    eventually(
        lambda: (
            not pools.kubectl(
                "get", "deployments", "-n", pools.namespace, "-o", "name", check=False
            ).strip()
        ),
        120,
        "the worker Deployment deleted",
        interval=2,
    )
    pools.wait_events(
        "ps",
        lambda events: any(e.reason == "WorkerDraining" and worker in e.message for e in events),
        "a WorkerDraining Event",
        timeout=90,
    )
    # The running head stays (no sidecar yet): the pool tells the truth.
    missing = pools.wait_condition("ps", "WorkerReady", "False", "SidecarMissing", timeout=120)
    assert head in missing["message"], missing
    assert pools.condition("ps", "Ready")["status"] == "False"
    assert pools.head_pod("ps").metadata.name == head

    # A flow run submitted now waits: no worker polls the work pool.
    later = _start(pools, "ps", 20)
    with pools.prefect() as c:
        assert c.read_flow_run(later).state.type.value == "SCHEDULED"
    _completed_once(pools, "ps", run_id)  # on the old head: it was not replaced under it
    t1 = time.monotonic()
    print(f"flow run in flight COMPLETED {t1 - t0:.0f}s after the switch")
    events = pools.events("ps")
    assert not [e for e in events if e.reason == "FlowRunCrashed"], [e.message for e in events]

    # The drained pod gone, the pool replaces the head; its sidecar runs the waiting run.
    pools.wait_ready("ps", timeout=600)
    assert pools.head_pod("ps").metadata.name != head
    _completed_once(pools, "ps", later, 20)
    print(f"the waiting flow run COMPLETED {time.monotonic() - t1:.0f}s after the first one")
    assert "RayRolloutReplacing" in {e.reason for e in pools.events("ps")}
