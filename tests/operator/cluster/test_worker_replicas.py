"""Who sets the Prefect worker Deployment's replicas, on the real control plane (kwok
node, the kube-controller-manager's HPA controller) with the session's operator
(3 s resync): with spec.prefect.replicasManagedExternally the operator leaves them to
`kubectl scale` and an HPA; without it, it restores its count once per change with a
Warning Event, and backs off when another manager keeps changing them."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import pairwise
from typing import Any

import pytest
from kubernetes import client, watch

from prefect_raypool_operator import naming
from prefect_raypool_operator.replicas import replicas_owners
from testbed.pooldriver import PoolDriver
from testbed.waiting import eventually

pytestmark = pytest.mark.controlplane
POOL, DEPLOYMENT = "analytics", "analytics-prefect-worker"
RESYNC = 3.0  # tests/operator/conftest.py


def _deployment(env: PoolDriver) -> dict[str, Any]:
    raw = env.apps.read_namespaced_deployment(DEPLOYMENT, env.namespace)
    return dict(client.ApiClient().sanitize_for_serialization(raw))


def _owners(env: PoolDriver) -> list[str]:
    return replicas_owners(_deployment(env))


@contextmanager
def _replica_history(env: PoolDriver) -> Iterator[list[int]]:
    """Every spec.replicas the Deployment has while the block runs, from a watch:
    catches values that polling would miss."""
    seen: list[int] = []
    stop = threading.Event()
    start = _deployment(env)["metadata"]["resourceVersion"]

    def follow() -> None:
        w = watch.Watch()
        for event in w.stream(
            env.apps.list_namespaced_deployment,
            env.namespace,
            field_selector=f"metadata.name={DEPLOYMENT}",
            resource_version=start,
            timeout_seconds=120,
        ):
            seen.append(event["object"].spec.replicas)
            if stop.is_set():
                w.stop()

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        time.sleep(1)  # let the watch deliver the last writes
        stop.set()
        # One last event (any write) ends the stream; the status controller's is enough.
        env.apps.patch_namespaced_deployment(
            DEPLOYMENT,
            env.namespace,
            {"metadata": {"annotations": {"test/stop": str(time.time())}}},
        )
        thread.join(10)


def _pool(env: PoolDriver, replicas: int, external: bool) -> dict[str, Any]:
    doc = env.example("zero-capacity.yaml")
    doc["spec"]["prefect"]["replicas"] = replicas
    doc["spec"]["prefect"]["replicasManagedExternally"] = external
    return doc


def _scale(env: PoolDriver, replicas: int) -> None:
    env.kubectl("scale", "-n", env.namespace, f"deploy/{DEPLOYMENT}", f"--replicas={replicas}")


def _worker_status(env: PoolDriver, ready: int) -> None:
    def reached() -> bool:
        pool = env.pool(POOL) or {}
        cond = env.condition(POOL, "WorkerReady") or {}
        return (pool.get("status") or {}).get("readyPrefectWorkers") == ready and (
            cond.get("message") == f"{ready}/{ready} Prefect workers ready"
        )

    eventually(reached, 60, f"status: {ready}/{ready} Prefect workers ready")


def _holds(env: PoolDriver, replicas: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert _deployment(env)["spec"]["replicas"] == replicas
        time.sleep(0.5)


def test_external_replicas_are_left_to_kubectl_scale_and_an_hpa(env: PoolDriver) -> None:
    env.apply(_pool(env, 2, external=False))
    env.wait_condition(POOL, "Ready", "True")
    assert _owners(env) == [naming.FIELD_MANAGER]

    # The hand-over: the operator stops sending replicas without the count dropping
    # to the Deployment's default of 1 on the way.
    with _replica_history(env) as history:
        env.apply(_pool(env, 2, external=True))
        eventually(lambda: _owners(env) == [naming.HANDOVER_FIELD_MANAGER], 30, "the hand-over")
        time.sleep(2 * RESYNC)
    assert set(history) <= {2}, history
    assert _deployment(env)["spec"]["replicas"] == 2

    _scale(env, 3)
    assert _owners(env) == ["kubectl (scale)"]
    _holds(env, 3, 3 * RESYNC + 1)
    _worker_status(env, 3)
    env.wait_condition(POOL, "Ready", "True")

    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "workers"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": DEPLOYMENT},
            "minReplicas": 4,
            "maxReplicas": 6,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": 80},
                    },
                }
            ],
        },
    }
    env.apply(hpa)
    # Below its minimum, the HPA controller scales up without metrics (no
    # metrics-server here); it syncs every 15 s.
    eventually(lambda: _deployment(env)["spec"]["replicas"] == 4, 60, "the HPA to scale to 4")
    assert _owners(env) == ["kube-controller-manager (scale)"]
    _holds(env, 4, 3 * RESYNC + 1)
    _worker_status(env, 4)
    assert _owners(env) == ["kube-controller-manager (scale)"]
    assert not [e for e in env.events(POOL) if e.reason == "ReplicasOverridden"]


def test_new_pool_with_external_replicas_starts_at_prefect_replicas(env: PoolDriver) -> None:
    env.apply(_pool(env, 2, external=True))
    env.wait_condition(POOL, "Ready", "True")
    eventually(lambda: _owners(env) == [naming.HANDOVER_FIELD_MANAGER], 30, "the hand-over")
    assert _deployment(env)["spec"]["replicas"] == 2
    _scale(env, 0)
    _holds(env, 0, 2 * RESYNC)
    assert env.condition(POOL, "WorkerReady")["reason"] == "ScaledToZero"


def _overrides(env: PoolDriver) -> list[client.CoreV1Event]:
    return [e for e in env.events(POOL) if e.reason == "ReplicasOverridden"]


def test_scaling_without_the_switch_is_reverted_once_with_an_event_never_in_a_loop(
    env: PoolDriver,
) -> None:
    env.apply(_pool(env, 1, external=False))
    env.wait_condition(POOL, "Ready", "True")

    _scale(env, 3)
    eventually(lambda: _deployment(env)["spec"]["replicas"] == 1, 30, "the revert")
    [event] = eventually(lambda: _overrides(env), 10, "the ReplicasOverridden Event")
    assert event.type == "Warning"
    assert f"kubectl (scale) scaled Deployment {DEPLOYMENT} to 3" in event.message
    assert "spec.prefect.replicasManagedExternally: true" in event.message
    time.sleep(2 * RESYNC)
    assert len(_overrides(env)) == 1  # one change, one restore, one Event
    assert _owners(env) == [naming.FIELD_MANAGER]

    # An adversary that puts 3 back whenever it sees anything else, for 15 s.
    scale = {"spec": {"replicas": 3}}
    window = 15.0
    with _replica_history(env) as history:
        deadline = time.monotonic() + window
        while time.monotonic() < deadline:
            if env.apps.read_namespaced_deployment(DEPLOYMENT, env.namespace).spec.replicas != 3:
                env.apps.patch_namespaced_deployment_scale(
                    DEPLOYMENT, env.namespace, scale, field_manager="adversary"
                )
            time.sleep(0.3)
    restores = sum(1 for before, after in pairwise(history) if before != 1 and after == 1)
    # Restored at once twice more (the kubectl scale above was the first of three), then
    # held for 10 s: at most one more. Without a backoff it would be one per 0.3 s.
    assert 1 <= restores <= 4, history
    contested = env.wait_condition(POOL, "WorkerReady", "False", "ReplicasContested", timeout=15)
    assert "adversary (scale)" in contested["message"]
    assert "replicasManagedExternally: true" in contested["message"]
    # One Event per restore (one more may have come since the watch ended).
    assert 1 + restores <= len(_overrides(env)) <= 2 + restores
    ready = env.condition(POOL, "Ready") or {}
    assert ready["status"] == "False" and "contested" in ready["message"]

    # Handing them over ends the contest at once, and the count stays as it is.
    env.apply(_pool(env, 1, external=True))
    env.wait_condition(POOL, "Ready", "True", timeout=30)
    _holds(env, _deployment(env)["spec"]["replicas"], 2 * RESYNC)
