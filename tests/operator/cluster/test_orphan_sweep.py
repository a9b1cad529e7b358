"""The orphan sweep on the real control plane with the session's operator (3 s resync)
and a real Prefect server: a RUNNING flow run whose worker pod does not exist is marked
Crashed with a FlowRunCrashed Event; one whose pod exists (outside the watch: no pool
label) and one started by another worker are left RUNNING."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from kubernetes import client
from prefect.states import Pending, Running

from testbed.pooldriver import PoolDriver
from testbed.waiting import eventually

pytestmark = [pytest.mark.controlplane, pytest.mark.prefect]
POOL = "analytics"


def _running_run(env: PoolDriver, work_pool: str, infrastructure_pid: str) -> Any:
    with env.prefect() as c:
        flow_id = c.create_flow_from_name("orphaned")
        deployment = c.create_deployment(
            flow_id=flow_id, name=f"d-{uuid.uuid4().hex[:6]}", work_pool_name=work_pool
        )
        run = c.create_flow_run_from_deployment(deployment)
        c.set_flow_run_state(run.id, Pending())
        c.set_flow_run_state(run.id, Running())
        c.update_flow_run(run.id, infrastructure_pid=infrastructure_pid)
        return run.id


def _state(env: PoolDriver, run_id: Any) -> Any:
    with env.prefect() as c:
        return c.read_flow_run(run_id).state


def test_a_run_whose_worker_pod_is_gone_is_crashed(env: PoolDriver) -> None:
    env.apply(env.example("zero-capacity.yaml"))
    work_pool = env.work_pool_name(POOL)
    eventually(
        lambda: env.condition(POOL, "WorkPoolReady").get("status") == "True",
        120,
        "the work pool made",
    )
    # A pod of a worker's name the operator's watch does not show (no pool label).
    present = f"{POOL}-prefect-worker-5d8f9-there"
    env.core.create_namespaced_pod(
        env.namespace,
        client.V1Pod(
            metadata=client.V1ObjectMeta(name=present),
            spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="x")]),
        ),
    )
    gone = _running_run(env, work_pool, f"{POOL}-prefect-worker-5d8f9-gone1:41")
    kept = _running_run(env, work_pool, f"{present}:42")
    other = _running_run(env, work_pool, "someones-laptop:43")
    t0 = time.monotonic()
    state = eventually(
        lambda: (s := _state(env, gone)).type.value == "CRASHED" and s, 60, "the run Crashed"
    )
    print(f"crashed {time.monotonic() - t0:.1f}s after it was made (resync 3 s)")
    assert f"{POOL}-prefect-worker-5d8f9-gone1 no longer exists" in state.message
    env.wait_events(
        POOL,
        lambda events: any(e.reason == "FlowRunCrashed" and str(gone) in e.message for e in events),
        "a FlowRunCrashed Event",
    )
    time.sleep(8)  # more sweeps: the others stay as they are
    assert _state(env, kept).type.value == "RUNNING"
    assert _state(env, other).type.value == "RUNNING"
