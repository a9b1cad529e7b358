"""An Ephemeral pool on a real node: a flow run gets its own Ray cluster (a KubeRay
RayJob), runs there as the Ray job's driver, completes, and the cluster goes away."""

from __future__ import annotations

import json

import pytest

from testbed.ephemeral import rayjobs, run_flow_on_ephemeral_pool, start_ephemeral_pool
from testbed.pooldriver import PoolDriver
from testbed.waiting import eventually

pytestmark = pytest.mark.e2e

COUNT = 4


def test_flow_run_completes_in_its_own_ray_cluster(pools: PoolDriver) -> None:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    start_ephemeral_pool(pools, "eph")
    run = run_flow_on_ephemeral_pool(pools, "eph", COUNT)
    name = run.rayjob["metadata"]["name"]

    def explain() -> str:
        pods = pools.kubectl("get", "pods", "-n", pools.namespace, "-o", "wide")
        return f"{json.dumps(run.rayjob.get('status'), indent=1)}\n{pods}\n{pools.logs('eph')}"

    state = run.flow_run.state
    assert state.type.value == "COMPLETED", f"{state}\n{explain()}"
    # The worker recorded the RayJob as the run's infrastructure, and KubeRay ran the
    # Ray job (the flow run) to success.
    assert run.flow_run.infrastructure_pid == f"{pools.namespace}/{name}"
    assert run.rayjob["spec"]["submissionMode"] == "K8sJobMode"
    assert len(run.task_runs) == COUNT
    assert {t.state.type.value for t in run.task_runs} == {"COMPLETED"}
    print(
        f"scheduled -> RayJob created {run.rayjob_created_s:.1f}s, "
        f"-> first task running {run.first_task_running_s:.1f}s, -> final {run.final_s:.1f}s"
    )
    assert run.rayjob_created_s <= run.first_task_running_s <= run.final_s

    # The run's cluster ran Ray token auth with a token of its own (KubeRay made it, put
    # it on every pod and the submitter, and read the job's status with it: the run
    # could not have completed otherwise). Every pod (head, workers, the submitter)
    # carried the pool's label, which the pool's NetworkPolicy selects.
    spec = run.rayjob["spec"]
    assert spec["rayClusterSpec"]["authOptions"] == {"mode": "token"}
    pods = [
        spec["rayClusterSpec"]["headGroupSpec"]["template"],
        *(g["template"] for g in spec["rayClusterSpec"]["workerGroupSpecs"]),
        spec["submitterPodTemplate"],
    ]
    for pod in pods:
        assert pod["metadata"]["labels"]["prefectray.io/pool"] == "eph"
        env = pod["spec"]["containers"][0].get("env") or []
        assert not [e for e in env if e["name"].startswith("RAY_AUTH")], env
    policy = json.loads(
        pools.kubectl("get", "networkpolicy", "eph-ray-head", "-n", pools.namespace, "-o", "json")
    )
    assert policy["spec"]["podSelector"] == {"matchLabels": {"prefectray.io/pool": "eph"}}

    def driver_output() -> str:
        with pools.prefect() as c:
            logs = c.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.flow_run.id])))
        return next((log.message for log in logs if "Driver output of RayJob" in log.message), "")

    # The driver's own output (the flow engine's last line) survives the cluster.
    output = eventually(driver_output, 90, "the driver's output in the flow run's logs")
    assert f"{pools.namespace}/{name}" in output and "Completed" in output, output

    # The cluster goes away: the worker's sweep deletes the finished run's RayJob, and
    # with it the RayCluster and every pod of it.
    def gone() -> bool:
        pods = pools.pods(f"prefect.io/flow-run-id={run.flow_run.id}")
        return not rayjobs(pools, run.flow_run.id) and not pods

    eventually(gone, 180, f"RayJob {name} and its pods deleted", interval=2)
