"""Pure: the observations of one reconcile in, the pool's status and its transitions out.

The status is built through `PrefectRayPoolStatus`, the model that generates the
CRD's status schema, so what the operator writes is what the CRD declares.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from prefect_raypool_operator import naming
from prefect_raypool_operator.spec import Condition, IdleStatus, Phase, PrefectRayPoolStatus

READY = "Ready"
RAY_CLUSTER_READY = "RayClusterReady"
PREFECT_WORKER_READY = "WorkerReady"
WORK_POOL_READY = "WorkPoolReady"
RAY_PODS_UP_TO_DATE = "RayPodsUpToDate"  # informs; not part of Ready
#: Reasons of a pool idle on purpose (idle.py): Normal Events, not Warnings.
SUSPENDING, SUSPENDED = "Suspending", "Suspended"


@dataclass(frozen=True)
class Check:
    """One condition's verdict."""

    ok: bool | None  # None: not known yet
    reason: str
    message: str = ""
    #: A container's own reason (podstatus.py): the root cause, so Ready quotes it first.
    from_pod: bool = False


@dataclass(frozen=True)
class Observed:
    """What one reconcile found, condition by condition."""

    pool_name: str
    namespace: str
    generation: int | None
    work_pool_name: str
    blocking: Check | None = None  # a problem that stopped the reconcile before applying
    blocking_permanent: bool = False
    ray_cluster: Check | None = None
    ready_ray_workers: int | None = None
    prefect_worker: Check | None = None
    work_pool: Check | None = None
    ready_prefect_workers: int | None = None
    pods_failing: bool = False  # a container cannot run (podstatus.py)
    ray_pods: Check | None = None  # running Ray pods against the current spec
    ephemeral: bool = False  # no RayCluster of its own: RayClusterReady does not apply
    flow_run_clusters: int | None = None  # RayJobs of an Ephemeral pool
    idle: Check | None = None  # suspending or suspended while idle (idle.py): Ready says so
    idle_state: dict[str, Any] | None = None  # status.idle


def _condition(
    kind: str, check: Check | None, generation: int | None, old: dict[str, Any], now: str
) -> Condition:
    if check is None:
        check = Check(None, "Pending", "not checked yet")
    status = {True: "True", False: "False", None: "Unknown"}[check.ok]
    changed = old.get("status") != status
    return Condition(
        type=kind,
        status=status,
        reason=check.reason,
        message=check.message,
        lastTransitionTime=now if changed else old.get("lastTransitionTime", now),
        observedGeneration=generation,
    )


def build_status(
    obs: Observed, previous: dict[str, Any] | None, now: datetime | None = None
) -> dict[str, Any]:
    stamp = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    old = {c.get("type"): c for c in (previous or {}).get("conditions") or []}
    parts = {
        RAY_CLUSTER_READY: obs.ray_cluster,
        PREFECT_WORKER_READY: obs.prefect_worker,
        WORK_POOL_READY: obs.work_pool,
    }
    if obs.ephemeral:
        del parts[RAY_CLUSTER_READY]
    if obs.blocking is not None:
        overall = Check(False, obs.blocking.reason, obs.blocking.message)
    else:
        failing = [(k, c) for k, c in parts.items() if c is None or not c.ok]
        failing.sort(key=lambda part: not (part[1] and part[1].from_pod))  # stable
        if obs.idle is not None:
            overall = obs.idle
        elif failing:
            kind, check = failing[0]
            overall = Check(False, f"{kind}False", check.message if check else "pending")
        else:
            overall = Check(
                True,
                "Ready",
                "the kuberay worker and the work pool are ready"
                if obs.ephemeral
                else "the Ray cluster and the Prefect worker are ready",
            )
    conditions = [_condition(READY, overall, obs.generation, old.get(READY, {}), stamp)]
    conditions += [
        _condition(kind, check, obs.generation, old.get(kind, {}), stamp)
        for kind, check in parts.items()
    ]
    if obs.blocking is None and obs.ray_pods is not None:
        conditions.append(
            _condition(
                RAY_PODS_UP_TO_DATE,
                obs.ray_pods,
                obs.generation,
                old.get(RAY_PODS_UP_TO_DATE, {}),
                stamp,
            )
        )
    own_cluster = not obs.ephemeral
    status = PrefectRayPoolStatus(
        observedGeneration=obs.generation,
        phase=phase(obs, overall),
        conditions=conditions,
        rayCluster=naming.ray_cluster(obs.pool_name) if own_cluster else None,
        headService=naming.head_service_fqdn(obs.pool_name, obs.namespace) if own_cluster else None,
        dashboardURL=naming.dashboard_url(obs.pool_name, obs.namespace) if own_cluster else None,
        readyWorkerReplicas=obs.ready_ray_workers,
        readyPrefectWorkers=obs.ready_prefect_workers,
        workPool=obs.work_pool_name,
        flowRunClusters=obs.flow_run_clusters,
        idle=IdleStatus.model_validate(obs.idle_state) if obs.idle_state else None,
    )
    return status.model_dump(mode="json")


def phase(obs: Observed, overall: Check) -> Phase:
    if obs.blocking is not None:
        return Phase.FAILED if obs.blocking_permanent else Phase.PENDING
    if obs.idle is not None and obs.idle.reason == SUSPENDED:
        return Phase.SUSPENDED
    if overall.ok:
        return Phase.READY
    if obs.pods_failing or (obs.ray_cluster is not None and obs.ray_cluster.ok):
        return Phase.DEGRADED
    return Phase.PROVISIONING


@dataclass(frozen=True)
class Transition:
    """A condition that changed status: one Kubernetes Event each."""

    type: str
    status: str
    reason: str
    message: str

    @property
    def warning(self) -> bool:
        return self.status == "False" and self.reason not in (SUSPENDING, SUSPENDED)


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
