"""Pure builders: a PrefectRayPool spec in, Kubernetes manifests out. No I/O here."""

from __future__ import annotations

from typing import Any

from prefect_raypool_operator import naming
from prefect_raypool_operator.builders.disruption import build_disruption_budgets
from prefect_raypool_operator.builders.ephemeral import build_ephemeral
from prefect_raypool_operator.builders.networkpolicy import build_network_policy
from prefect_raypool_operator.builders.prefect_worker import build_prefect_worker_deployment
from prefect_raypool_operator.builders.raycluster import build_raycluster
from prefect_raypool_operator.spec import Placement, PrefectRayPoolSpec

Manifest = dict[str, Any]


def build_manifests(
    pool_name: str,
    namespace: str,
    spec: PrefectRayPoolSpec,
    operator_namespace: str | None = None,
    worker_cluster_role: str = naming.KUBERAY_WORKER_CLUSTER_ROLE,
    kuberay_namespace: str | None = None,
) -> list[Manifest]:
    """Every object a pool owns, in apply order (the RayCluster first).

    `operator_namespace`: where the operator's pods run, admitted by the NetworkPolicy;
    `worker_cluster_role`: the `kuberay` worker's ClusterRole, which the operator chart
    installs and an Ephemeral pool binds; `kuberay_namespace`: where KubeRay's operator
    runs, admitted to an Ephemeral pool's dashboards (it reads RayJob statuses there).
    """
    if spec.placement == Placement.EPHEMERAL:
        # No cluster of the pool's own: each flow run's RayJob makes one, whose pods
        # carry the pool's label (the worker adds it), so the same policy guards them.
        manifests = build_ephemeral(pool_name, namespace, spec, worker_cluster_role)
    else:
        manifests = [build_raycluster(pool_name, namespace, spec)]
    if spec.placement == Placement.ZERO_CAPACITY_NODE:
        manifests.append(build_prefect_worker_deployment(pool_name, namespace, spec))
    if spec.networkPolicy.enabled:
        # Only RayJobs have KubeRay read the dashboard: a warm pool's stays closed to it.
        ephemeral = spec.placement == Placement.EPHEMERAL
        manifests.append(
            build_network_policy(
                pool_name, namespace, operator_namespace, kuberay_namespace if ephemeral else None
            )
        )
    manifests += build_disruption_budgets(pool_name, namespace, spec)
    return manifests


__all__ = [
    "Manifest",
    "build_disruption_budgets",
    "build_manifests",
    "build_network_policy",
    "build_prefect_worker_deployment",
    "build_raycluster",
]
