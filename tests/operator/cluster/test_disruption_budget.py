"""The pool's PodDisruptionBudgets on the real API server: an eviction (what a node
drain does) of the Ray head or of a Prefect worker pod is refused while a budget says
so, allowed as `maxUnavailable` allows, and the budgets go when the spec turns them off
(unit/test_disruption_budget.py: the budgets built pure)."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from prefect_raypool_operator import naming
from testbed.cluster import get_or_none
from testbed.pooldriver import PoolDriver
from testbed.waiting import eventually


def _budget(env: PoolDriver, name: str) -> client.V1PodDisruptionBudget | None:
    api = client.PolicyV1Api(env.api)
    return get_or_none(api.read_namespaced_pod_disruption_budget, name, env.namespace)


def _evict(env: PoolDriver, pod: Any) -> int:
    """The API server's answer to an eviction of `pod`: 201 evicted, 429 refused."""
    eviction = client.V1Eviction(
        metadata=client.V1ObjectMeta(name=pod.metadata.name, namespace=env.namespace)
    )
    try:
        client.CoreV1Api(env.api).create_namespaced_pod_eviction(
            pod.metadata.name, env.namespace, eviction
        )
    except client.ApiException as e:
        assert e.status == 429 and "disruption budget" in str(e.body), e
        return 429
    return 201


def _allowed(env: PoolDriver, name: str, count: int) -> client.V1PodDisruptionBudget | None:
    """The budget once the disruption controller has counted its pods."""
    budget = _budget(env, name)
    if budget is None or budget.status is None:
        return None
    synced = (budget.status.observed_generation or 0) >= budget.metadata.generation
    return budget if synced and budget.status.disruptions_allowed == count else None


@pytest.mark.controlplane
def test_evictions_of_the_head_and_workers_are_refused_until_the_budgets_go(
    env: PoolDriver,
) -> None:
    doc = env.example("zero-capacity.yaml")
    name = doc["metadata"]["name"]
    env.apply(doc)
    env.wait_condition(name, "Ready", "True", timeout=180)
    head_budget = naming.head_disruption_budget(name)
    worker_budget = naming.worker_disruption_budget(name)
    for budget_name in (head_budget, worker_budget):
        budget = eventually(lambda n=budget_name: _allowed(env, n, 0), 60, f"{budget_name} synced")
        assert budget.metadata.owner_references[0].name == name
        assert budget.status.current_healthy >= 1
    head = env.head_pod(name)
    worker_pods = f"{naming.POOL_LABEL}={name},{naming.COMPONENT_LABEL}=prefect-worker"
    [worker] = env.pods(worker_pods)
    assert _evict(env, head) == 429
    assert _evict(env, worker) == 429

    # maxUnavailable: 1 lets a drain take one worker pod; the head stays protected.
    doc["spec"]["disruptionBudget"] = {"maxUnavailable": 1}
    env.apply(doc)
    eventually(lambda: _allowed(env, worker_budget, 1), 60, "one worker pod may go")
    assert _evict(env, head) == 429
    assert _evict(env, worker) == 201

    # Off: both budgets deleted, the head may be evicted (KubeRay makes a new one).
    doc["spec"]["disruptionBudget"] = {"enabled": False}
    env.apply(doc)
    for budget_name in (head_budget, worker_budget):
        eventually(lambda n=budget_name: _budget(env, n) is None, 60, f"{budget_name} deleted")
    head = env.head_pod(name)
    assert _evict(env, head) == 201
    env.wait_condition(name, "Ready", "True", timeout=180)
