"""A flow run on an Ephemeral pool, on a real node, with its timeline: for the
end-to-end test and `make bench` (bench/ephemeral_real.py).

The pool's `kuberay` worker creates a RayJob for the run; KubeRay starts its Ray
cluster; the submitter pod runs the flow run as the Ray job's driver on the head.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from testbed.pooldriver import FLOW_IMAGE, PoolDriver, pool_manifest
from testbed.waiting import eventually

RAY_GROUP, RAY_VERSION = "ray.io", "v1"
#: Prefect workers polling every second (Prefect's default is 10 s).
FAST_POLL = [{"name": "PREFECT_WORKER_QUERY_SECONDS", "value": "1"}]


def ephemeral_pool_manifest(name: str, api_url: str, image: str = FLOW_IMAGE) -> dict[str, Any]:
    """Sized so a flow run's cluster fits a 2-CPU node beside the operator and the
    worker: a head that runs the driver, one Ray worker, the submitter (100m)."""
    manifest = pool_manifest(name, api_url, "Ephemeral", image)
    spec = manifest["spec"]
    spec["ray"]["head"] = {"resources": {"cpu": "700m", "memory": "2Gi"}}
    spec["ray"]["workerGroups"][0]["resources"] = {"cpu": "600m", "memory": "2Gi"}
    # The kuberay worker only polls Prefect and watches RayJobs; a fast poll (Prefect's
    # default is 10 s) so the timeline measures the cluster, not the poll.
    spec["prefect"]["resources"] = {"cpu": "100m", "memory": "512Mi"}
    spec["prefect"]["env"] = list(FAST_POLL)
    return manifest


@dataclass
class EphemeralRun:
    flow_run: Any
    rayjob: dict[str, Any]  # as last seen while the run was going
    task_runs: list[Any]
    #: seconds from the flow run's scheduled time
    rayjob_created_s: float
    first_task_running_s: float
    final_s: float


def _seconds(t0: datetime, t1: datetime) -> float:
    return (t1 - t0).total_seconds()


def _created(obj: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(obj["metadata"]["creationTimestamp"].replace("Z", "+00:00"))


def rayjobs(pools: PoolDriver, flow_run_id: Any) -> list[dict[str, Any]]:
    found = pools.custom.list_namespaced_custom_object(
        RAY_GROUP,
        RAY_VERSION,
        pools.namespace,
        "rayjobs",
        label_selector=f"prefect.io/flow-run-id={flow_run_id}",
    )
    return list(found["items"])


def task_timeline(pools: PoolDriver, run: Any) -> tuple[list[Any], float, float]:
    """A finished flow run's task runs, and the seconds from its scheduled time to its
    first task run started and to its end."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with pools.prefect() as c:
        task_runs = c.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id]))
        )
    scheduled = run.expected_start_time
    starts = [t.start_time for t in task_runs if t.start_time]
    first = _seconds(scheduled, min(starts)) if starts else float("nan")
    final = _seconds(scheduled, run.end_time) if run.end_time else float("nan")
    return list(task_runs), first, final


def run_flow_on_ephemeral_pool(
    pools: PoolDriver, pool: str, count: int, timeout: float = 480
) -> EphemeralRun:
    """Deploy count_to to the pool's work pool, run it once, follow it to a final state."""
    run_id = pools.run_deployment(
        pool, "count_to.py:count_to", "count-to", {"highest_number": count}
    )
    # The RayJob is deleted after the run (the worker's sweep, KubeRay's TTL): read it
    # while the run goes on. Its creationTimestamp has whole seconds.
    found = eventually(lambda: rayjobs(pools, run_id), 120, "the flow run's RayJob")
    rayjob = found[0]
    run = pools.wait_final(run_id, timeout)
    if latest := rayjobs(pools, run_id):
        rayjob = latest[0]
    task_runs, first, final = task_timeline(pools, run)
    return EphemeralRun(
        flow_run=run,
        rayjob=rayjob,
        task_runs=task_runs,
        rayjob_created_s=_seconds(run.expected_start_time, _created(rayjob)),
        first_task_running_s=first,
        final_s=final,
    )


def start_ephemeral_pool(pools: PoolDriver, name: str) -> None:
    pools.apply(ephemeral_pool_manifest(name, pools.prefect_api_url))
    pools.wait_ready(name)
