"""Autoscaled Ray worker groups follow the Prefect queue, on the real control plane
with the real KubeRay and a real Prefect server (the session's operator: 3 s resync,
5 s queue poll): flow runs due in the work pool raise the group ahead of Ray's demand,
within its maxReplicas; what the autoscaler takes away later is not put back while the
same runs wait, and a new arrival raises it again."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
from prefect.states import Scheduled

from testbed.pooldriver import PoolDriver
from testbed.waiting import eventually

pytestmark = [pytest.mark.controlplane, pytest.mark.prefect]
POOL = "analytics"


def _due_runs(env: PoolDriver, count: int) -> None:
    with env.prefect() as c:
        flow_id = c.create_flow_from_name("waiting")
        deployment = c.create_deployment(
            flow_id=flow_id,
            name=f"d-{uuid.uuid4().hex[:6]}",
            work_pool_name=env.work_pool_name(POOL),
        )
        for _ in range(count):
            c.create_flow_run_from_deployment(deployment, state=Scheduled())


def _replicas(env: PoolDriver) -> int:
    cluster = env.raycluster(POOL) or {}
    return int(cluster["spec"]["workerGroupSpecs"][0]["replicas"])


def _autoscaler_sets(env: PoolDriver, replicas: int) -> None:
    """What KubeRay's autoscaler does when it removes idle workers: its own write."""
    patch = [{"op": "replace", "path": "/spec/workerGroupSpecs/0/replicas", "value": replicas}]
    env.kubectl(
        "patch", "raycluster", POOL, "-n", env.namespace, "--type=json",
        f"--patch={json.dumps(patch)}", "--field-manager=autoscaler",
    )  # fmt: skip


def _raised(env: PoolDriver) -> list[Any]:
    return [e for e in env.events(POOL) if e.reason == "RayWorkersRaised"]


def test_due_flow_runs_raise_the_autoscaled_group_without_fighting_the_autoscaler(
    env: PoolDriver,
) -> None:
    doc = env.example("zero-capacity.yaml")
    doc["spec"]["ray"]["autoscaling"] = {"enabled": True}
    doc["spec"]["ray"]["workerGroups"][0].update(replicas=0, minReplicas=0, maxReplicas=3)
    env.apply(doc)
    env.wait_condition(POOL, "Ready", "True", timeout=120)
    assert _replicas(env) == 0

    t0 = time.monotonic()
    _due_runs(env, 2)  # the kwok node runs no worker: they stay due
    eventually(lambda: _replicas(env) == 2, 60, "the group raised to 2")
    print(f"raised {time.monotonic() - t0:.1f}s after 2 runs were scheduled")
    raised = [e.message for e in _raised(env)]  # one per raise: a poll may see 1, then 2
    assert any(
        "2 flow runs want a worker" in m and "-> 2; spec.ray.workerGroups[].podsPerFlowRun" in m
        for m in raised
    ), raised

    _autoscaler_sets(env, 0)  # idle pods removed while the same runs still wait
    time.sleep(12)  # two queue polls and more resyncs
    assert _replicas(env) == 0 and len(_raised(env)) == len(raised)

    _due_runs(env, 3)  # five: bounded by maxReplicas
    eventually(lambda: _replicas(env) == 3, 60, "the group raised to its maxReplicas")
    assert any("-> 3;" in e.message for e in _raised(env)), [e.message for e in _raised(env)]
