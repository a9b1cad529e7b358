"""Flow runs and the routine operations that replace a pool's Prefect worker pod, on a
real node: a pod-label change and a Prefect env change roll the worker Deployment, and
the flow run in flight on the replaced pod ends COMPLETED exactly once (the pod drains),
as does one whose HeadSidecar head pod is deleted; a worker pod killed hard leaves its
flow run Crashed, not RUNNING, within bounded time (the operator's orphan sweep)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from testbed.pooldriver import PoolDriver, pool_manifest
from testbed.waiting import eventually

pytestmark = pytest.mark.e2e

TASKS = 400  # 0.5 s each on 2 Ray CPUs: well over a minute of work per flow run
#: The second run outlives the first pod's drain: the node has no room for the second
#: rollout's new pod until the first pod is gone.
SECOND_TASKS = 800
WORKERS = "prefectray.io/component=prefect-worker"
#: Two sweeps of the operator (one per resync interval, 30 s) and Prefect's answer.
CRASHED_WITHIN = 150


def _pool(name: str, api_url: str) -> dict[str, Any]:
    """A pool whose rolling update fits the 2-CPU node: the surge pod beside the old."""
    manifest = pool_manifest(name, api_url, "ZeroCapacityNode")
    manifest["spec"]["ray"]["head"]["resources"]["cpu"] = "400m"
    manifest["spec"]["prefect"]["resources"]["cpu"] = "400m"
    manifest["spec"]["prefect"]["drain"] = {"timeoutSeconds": 900}
    return manifest


def _start(pools: PoolDriver, name: str, tasks: int = TASKS) -> Any:
    return pools.run_deployment(name, "count_to.py:count_to", "count-to", {"highest_number": tasks})


def _running_on(pools: PoolDriver, run_id: Any) -> str:
    """The worker pod running the flow run (its infrastructure_pid, `<pod>:<pid>`),
    once a task run of it completed."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    def started() -> str | None:
        with pools.prefect() as c:
            run = c.read_flow_run(run_id)
            tasks = c.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id]))
            )
        done = any(t.state and t.state.type.value == "COMPLETED" for t in tasks)
        pid = run.infrastructure_pid or ""
        return pid.rpartition(":")[0] if done and ":" in pid else None

    return str(eventually(started, 300, f"flow run {run_id} running its tasks", interval=1))


def _completed_once(pools: PoolDriver, name: str, run_id: Any, count: int = TASKS) -> None:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    run = pools.wait_final(run_id, timeout=900)
    assert run.state.type.value == "COMPLETED", (run.state, pools.logs(name))
    assert run.run_count == 1, run.run_count  # never restarted
    tasks: list[Any] = []
    with pools.prefect() as c:
        while page := c.read_task_runs(  # the API answers 200 at most
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])),
            offset=len(tasks),
            limit=200,
        ):
            tasks += page
    assert len(tasks) == count
    assert {t.state.type.value for t in tasks} == {"COMPLETED"}
    assert {t.run_count for t in tasks} == {1}  # none ran twice


def _draining(pools: PoolDriver, pod: str, timeout: float = 300) -> None:
    """The pod got its SIGTERM (it is being deleted) and still runs: draining."""

    def deleting() -> bool:
        found = [p for p in pools.pods(WORKERS) if p.metadata.name == pod]
        return bool(found and found[0].metadata.deletion_timestamp)

    eventually(deleting, timeout, f"pod {pod} replaced by the rollout", interval=2)


def _patch(pools: PoolDriver, name: str, patch: dict[str, Any]) -> None:
    pools.kubectl(
        "patch", "prp", name, "-n", pools.namespace, "--type=merge", "-p", json.dumps(patch)
    )


@pytest.mark.timeout(2400)
def test_flow_runs_in_flight_survive_worker_rollouts(pools: PoolDriver) -> None:
    pools.apply(_pool("dr", pools.prefect_api_url))
    pools.wait_ready("dr")

    # 1. A pod label: the worker Deployment rolls; the old pod drains its flow run.
    first = _start(pools, "dr")
    old = _running_on(pools, first)
    t0 = time.monotonic()
    _patch(pools, "dr", {"spec": {"pod": {"labels": {"team": "data"}}}})
    _draining(pools, old)
    print(f"pod {old} draining {time.monotonic() - t0:.0f}s after the label change")
    with pools.prefect() as c:
        assert c.read_flow_run(first).state.type.value == "RUNNING"
    pools.wait_events(
        "dr",
        lambda events: any(e.reason == "WorkerDraining" and old in e.message for e in events),
        "a WorkerDraining Event",
        timeout=90,
    )

    # 2. A Prefect env var, while the first pod still drains: the next run lands on
    # the new pod, which the second rollout drains in turn.
    second = _start(pools, "dr", SECOND_TASKS)
    new = _running_on(pools, second)
    assert new != old
    _patch(
        pools,
        "dr",
        {"spec": {"prefect": {"env": [{"name": "PREFECT_LOGGING_LEVEL", "value": "INFO"}]}}},
    )
    _draining(pools, new, timeout=900)
    with pools.prefect() as c:
        assert c.read_flow_run(second).state.type.value == "RUNNING"

    _completed_once(pools, "dr", first)
    _completed_once(pools, "dr", second, SECOND_TASKS)
    # Both drained pods exit once their runs are done, long before the drain timeout.
    eventually(
        lambda: not {old, new} & {p.metadata.name for p in pools.pods(WORKERS)},
        120,
        "the drained pods gone",
        interval=2,
    )


def test_a_worker_pod_killed_hard_leaves_its_flow_run_crashed(pools: PoolDriver) -> None:
    pools.apply(_pool("hk", pools.prefect_api_url))
    pools.wait_ready("hk")
    run_id = _start(pools, "hk")
    pod = _running_on(pools, run_id)
    pools.kubectl(
        "delete", "pod", "-n", pools.namespace, pod, "--grace-period=0", "--force", "--wait=false"
    )
    t0 = time.monotonic()
    run = pools.wait_final(run_id, timeout=CRASHED_WITHIN)
    print(f"flow run {run.state.type.value} {time.monotonic() - t0:.0f}s after the kill: "
          f"{run.state.message}")  # fmt: skip
    assert run.state.type.value == "CRASHED", run.state
    assert pod in (run.state.message or ""), run.state.message
    pools.wait_events(
        "hk",
        lambda events: any(e.reason == "FlowRunCrashed" and pod in e.message for e in events),
        "a FlowRunCrashed Event",
    )


def test_head_sidecar_head_deleted_drains_its_flow_run(pools: PoolDriver) -> None:
    """HeadSidecar: deleting the head pod (kubectl delete, a node drain) sends the
    sidecar worker SIGTERM; the Ray container's preStop keeps Ray up while it drains.
    Once the old pod is gone, KubeRay makes a new head and the pool runs flows again."""
    manifest = _pool("hs", pools.prefect_api_url)
    manifest["spec"]["placement"] = "HeadSidecar"
    pools.apply(manifest)
    pools.wait_ready("hs")
    run_id = _start(pools, "hs")
    head = _running_on(pools, run_id)
    assert head == pools.head_pod("hs").metadata.name
    pools.kubectl("delete", "pod", "-n", pools.namespace, head, "--wait=false")
    t0 = time.monotonic()
    time.sleep(10)  # the worker got its SIGTERM and drains; Ray is still up
    running = pools.kubectl(
        "get", "pod", "-n", pools.namespace, head, "-o",
        "jsonpath={range .status.containerStatuses[*]}{.name}={.state.running.startedAt} {end}",
    )  # fmt: skip
    assert running.count("=2") == 2, running  # both containers still run
    _completed_once(pools, "hs", run_id)
    print(f"flow run COMPLETED {time.monotonic() - t0:.0f}s after its head pod's deletion")

    eventually(
        lambda: pools.head_pod("hs").metadata.name != head, 180, "a new head pod", interval=2
    )
    print(f"new head pod {time.monotonic() - t0:.0f}s after the deletion")
    again = pools.run_deployment("hs", "count_to.py:count_to", "count-to", {"highest_number": 3})
    run = pools.wait_final(again, timeout=420)
    assert run.state.type.value == "COMPLETED", (run.state, pools.logs("hs"))
    print(f"the pool ran a flow again {time.monotonic() - t0:.0f}s after the deletion")
