"""Pure status logic: observations in, the pool's status and its transitions out."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from prefect_raypool_operator import naming

READY = "Ready"
RAY_CLUSTER_READY = "RayClusterReady"
WORKER_READY = "WorkerReady"
WORK_POOL_READY = "WorkPoolReady"
CONDITION_TYPES = (READY, RAY_CLUSTER_READY, WORKER_READY, WORK_POOL_READY)


@dataclass(frozen=True)
class Check:
    """One condition's verdict."""

    ok: bool | None  # None: not known yet
    reason: str
    message: str = ""


@dataclass(frozen=True)
class Observed:
    name: str
    namespace: str
    generation: int | None
    work_pool: str
    blocking: Check | None = None  # a problem that stopped the reconcile before applying
    blocking_permanent: bool = False
    ray_cluster: Check | None = None
    ready_worker_replicas: int | None = None
    worker: Check | None = None
    pool: Check | None = None
    ready_prefect_workers: int | None = None


def ray_cluster_check(live: dict[str, Any] | None) -> Check:
    """RayClusterReady from KubeRay's own status: state and conditions."""
    if live is None:
        return Check(False, "RayClusterMissing", "the RayCluster does not exist yet")
    status = live.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    failure = conditions.get("ReplicaFailure")
    if failure and failure.get("status") == "True":
        return Check(False, "ReplicaFailure", failure.get("message") or "KubeRay ReplicaFailure")
    provisioned = conditions.get("RayClusterProvisioned", {}).get("status") == "True"
    head_ready = conditions.get("HeadPodReady", {}).get("status") == "True"
    if status.get("state") == "ready" or (provisioned and head_ready):
        return Check(True, "RayClusterReady", "KubeRay reports the cluster ready")
    if not head_ready:
        message = conditions.get("HeadPodReady", {}).get("message") or "head pod not ready"
        return Check(False, "HeadPodNotReady", message)
    return Check(False, "RayClusterProvisioning", "KubeRay is starting the worker pods")


def deployment_check(live: dict[str, Any] | None, desired_replicas: int) -> Check:
    if live is None:
        return Check(False, "DeploymentMissing", "the worker Deployment does not exist yet")
    status = live.get("status") or {}
    ready = status.get("readyReplicas") or 0
    if desired_replicas == 0:
        return Check(True, "ScaledToZero", "prefect.replicas is 0")
    current = (status.get("observedGeneration") or 0) >= (
        live.get("metadata", {}).get("generation") or 0
    )
    updated = status.get("updatedReplicas") or 0
    if current and ready >= desired_replicas and updated >= desired_replicas:
        return Check(True, "WorkersReady", f"{ready}/{desired_replicas} Prefect workers ready")
    return Check(False, "WorkersNotReady", f"{ready}/{desired_replicas} Prefect workers ready")


def sidecar_check(head_pod: dict[str, Any] | None) -> Check:
    if head_pod is None:
        return Check(False, "HeadPodMissing", "the Ray head pod does not exist yet")
    for status in (head_pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == naming.PREFECT_WORKER_CONTAINER:
            if status.get("ready"):
                return Check(True, "SidecarReady", "the Prefect worker sidecar is ready")
            return Check(False, "SidecarNotReady", "the Prefect worker sidecar is not ready")
    return Check(False, "SidecarMissing", "the head pod has no Prefect worker container yet")


def _condition(
    kind: str, check: Check | None, generation: int | None, old: dict[str, Any], now: str
) -> dict[str, Any]:
    if check is None:
        check = Check(None, "Pending", "not checked yet")
    status = {True: "True", False: "False", None: "Unknown"}[check.ok]
    changed = old.get("status") != status
    return {
        "type": kind,
        "status": status,
        "reason": check.reason,
        "message": check.message,
        "lastTransitionTime": now if changed else old.get("lastTransitionTime", now),
        "observedGeneration": generation,
    }


def build_status(
    obs: Observed, previous: dict[str, Any] | None, now: datetime | None = None
) -> dict[str, Any]:
    stamp = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    old = {c.get("type"): c for c in (previous or {}).get("conditions") or []}
    parts = {
        RAY_CLUSTER_READY: obs.ray_cluster,
        WORKER_READY: obs.worker,
        WORK_POOL_READY: obs.pool,
    }
    if obs.blocking is not None:
        overall = Check(False, obs.blocking.reason, obs.blocking.message)
    else:
        failing = [(k, c) for k, c in parts.items() if c is None or not c.ok]
        if failing:
            kind, check = failing[0]
            overall = Check(False, f"{kind}False", check.message if check else "pending")
        else:
            overall = Check(True, "Ready", "the Ray cluster and the Prefect worker are ready")
    conditions = [_condition(READY, overall, obs.generation, old.get(READY, {}), stamp)]
    conditions += [
        _condition(kind, check, obs.generation, old.get(kind, {}), stamp)
        for kind, check in parts.items()
    ]
    return {
        "observedGeneration": obs.generation,
        "phase": phase(obs, overall),
        "conditions": conditions,
        "rayCluster": naming.ray_cluster(obs.name),
        "headService": naming.head_service_fqdn(obs.name, obs.namespace),
        "dashboardURL": naming.dashboard_url(obs.name, obs.namespace),
        "readyWorkerReplicas": obs.ready_worker_replicas,
        "readyPrefectWorkers": obs.ready_prefect_workers,
        "workPool": obs.work_pool,
    }


def phase(obs: Observed, overall: Check) -> str:
    if obs.blocking is not None:
        return "Failed" if obs.blocking_permanent else "Pending"
    if overall.ok:
        return "Ready"
    if obs.ray_cluster is not None and obs.ray_cluster.ok:
        return "Degraded"
    return "Provisioning"


@dataclass(frozen=True)
class Transition:
    """A condition that changed status: one Kubernetes Event each."""

    type: str
    status: str
    reason: str
    message: str

    @property
    def warning(self) -> bool:
        return self.status == "False"


def transitions(previous: dict[str, Any] | None, current: dict[str, Any]) -> list[Transition]:
    old = {c.get("type"): c for c in (previous or {}).get("conditions") or []}
    changes = []
    for cond in current.get("conditions", []):
        before = old.get(cond["type"], {})
        if before.get("status") != cond["status"] or (
            cond["status"] == "False" and before.get("reason") != cond["reason"]
        ):
            changes.append(
                Transition(cond["type"], cond["status"], cond["reason"], cond["message"])
            )
    return changes
