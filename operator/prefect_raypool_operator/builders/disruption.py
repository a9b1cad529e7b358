"""The PodDisruptionBudgets of a pool: evictions (node drains) must not kill flow runs.

The head: `minAvailable: 1` (an integer minAvailable needs no scale subresource, which
a RayCluster has not; `maxUnavailable` would leave the budget unsynced). In HeadSidecar
the Prefect worker is in the head pod, so this one budget covers it. ZeroCapacityNode:
the Prefect worker pods, `maxUnavailable` from the spec (their Deployment has a scale).
Ray worker pods get none: tasks lost with one are retried by Ray (README).
"""

from __future__ import annotations

from prefect_raypool_operator import naming
from prefect_raypool_operator.builders.common import Obj, object_metadata
from prefect_raypool_operator.builders.prefect_worker import COMPONENT as PREFECT_WORKER
from prefect_raypool_operator.builders.raycluster import HEAD_COMPONENT
from prefect_raypool_operator.spec import Placement, PrefectRayPoolSpec

COMPONENT = "disruption-budget"


def build_disruption_budgets(pool_name: str, namespace: str, spec: PrefectRayPoolSpec) -> list[Obj]:
    """None for an Ephemeral pool (its RayJobs' clusters are the kuberay worker's) or
    when spec.disruptionBudget.enabled is false."""
    if not spec.disruptionBudget.enabled or spec.placement == Placement.EPHEMERAL:
        return []
    budgets = [
        _budget(
            naming.head_disruption_budget(pool_name),
            namespace,
            pool_name,
            HEAD_COMPONENT,
            {"minAvailable": 1},
        )
    ]
    if spec.placement == Placement.ZERO_CAPACITY_NODE:
        budgets.append(
            _budget(
                naming.worker_disruption_budget(pool_name),
                namespace,
                pool_name,
                PREFECT_WORKER,
                {"maxUnavailable": spec.disruptionBudget.maxUnavailable},
            )
        )
    return budgets


def _budget(name: str, namespace: str, pool_name: str, pods: str, limit: Obj) -> Obj:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": object_metadata(name, namespace, pool_name, COMPONENT),
        "spec": {
            **limit,
            "selector": {"matchLabels": naming.selector(pool_name, pods)},
            # A pod that never became ready (crash-looping, unschedulable) holds no flow
            # run: a drain may evict it, or it would block the node for ever.
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }
