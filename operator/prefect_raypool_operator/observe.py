"""Observe, the pure last step of a reconcile: what apply found in, the status out.

Like KubeRay's calculateStatus: each condition is read from the live objects'
own status (KubeRay's for the RayCluster, the Deployment controller's for the
Prefect workers), never from what was just applied.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from prefect_raypool_operator import naming
from prefect_raypool_operator.builders.rollout import SPEC_DIGESTS, outdated_fields
from prefect_raypool_operator.config import CONFIG
from prefect_raypool_operator.owned import PREFECT_WORKER_DEPLOYMENT, RAY_CLUSTER, Owned
from prefect_raypool_operator.plan import Plan
from prefect_raypool_operator.podstatus import pod_failure
from prefect_raypool_operator.refusals import Problem
from prefect_raypool_operator.replicas import Override
from prefect_raypool_operator.spec import PrefectSpec
from prefect_raypool_operator.status import Check, Observed, build_status

Obj = dict[str, Any]


@dataclass
class Found:
    """What the apply step saw: the inputs of `observe_status`."""

    refusal: Problem | None = None  # what only the cluster knows stopped the pool
    live: dict[Owned, Obj] = field(default_factory=dict)  # owned kind -> live object
    pods: list[Obj] = field(default_factory=list)  # the pool's pods
    work_pool: Check | None = None
    created: list[str] = field(default_factory=list)  # "Kind/name" made by this apply
    # Pods deleted because they hold a Ray token the pool's Secret no longer has.
    token_restarted: list[str] = field(default_factory=list)
    overrides: list[Override] = field(default_factory=list)  # another manager's, restored
    contested: str | None = None  # the worker Deployment's replicas are fought over
    flow_run_clusters: int | None = None  # an Ephemeral pool's RayJobs
    crashed: list[str] = field(default_factory=list)  # orphaned flow runs marked Crashed
    draining: list[str] = field(default_factory=list)  # worker pods newly seen draining
    now: datetime | None = None  # when it was seen (None: the clock's now)


def observe_status(desired: Plan, found: Found, previous: Obj) -> Obj:
    """The pool's status after this reconcile; `previous` keeps transition times."""
    refusal = desired.refusal or found.refusal
    if desired.spec is None or refusal is not None:
        assert refusal is not None
        blocked = _observed(
            desired,
            blocking=Check(False, refusal.reason, refusal.message),
            blocking_permanent=refusal.permanent,
        )
        return build_status(blocked, previous)
    cluster = found.live.get(RAY_CLUSTER)
    if desired.sidecar:
        prefect_worker = prefect_sidecar_check(_head_pod(found.pods))
        ready_prefect = 1 if prefect_worker.ok else 0
    else:
        deployment = found.live.get(PREFECT_WORKER_DEPLOYMENT)
        prefect_worker = prefect_worker_deployment_check(
            deployment, desired_workers(desired.spec.prefect, deployment)
        )
        if found.contested:
            prefect_worker = Check(False, "ReplicasContested", found.contested)
        ready_prefect = ((deployment or {}).get("status") or {}).get("readyReplicas") or 0
    if desired.ephemeral:
        # No cluster of its own: Ready is the kuberay worker and the work pool.
        worker = prefect_failure_or(found, prefect_worker)
        return build_status(
            _observed(
                desired,
                ephemeral=True,
                prefect_worker=worker,
                pods_failing=worker is not prefect_worker,
                work_pool=found.work_pool,
                ready_prefect_workers=ready_prefect,
                flow_run_clusters=found.flow_run_clusters,
            ),
            previous,
        )
    ray = ray_cluster_check(cluster, found.now)
    # Where pods cannot run, their containers' own reasons replace the bare counts.
    ray_failure = None if ray.ok else pod_failure(found.pods, _is_ray_container, found.now)
    prefect_failure = (
        None if prefect_worker.ok else pod_failure(found.pods, _is_prefect_container, found.now)
    )
    return build_status(
        _observed(
            desired,
            ray_cluster=ray_failure or ray,
            ready_ray_workers=((cluster or {}).get("status") or {}).get("readyWorkerReplicas"),
            prefect_worker=prefect_failure or prefect_worker,
            pods_failing=bool(ray_failure or prefect_failure),
            work_pool=found.work_pool,
            ready_prefect_workers=ready_prefect,
            ray_pods=ray_pods_check(desired, found),
        ),
        previous,
    )


def prefect_failure_or(found: Found, check: Check) -> Check:
    """A failing worker container's own reason, else `check`."""
    failure = None if check.ok else pod_failure(found.pods, _is_prefect_container, found.now)
    return failure or check


def _observed(desired: Plan, **found: Any) -> Observed:
    """The observations of this reconcile, for the pool `desired` is the plan of."""
    return Observed(
        desired.pool_name, desired.namespace, desired.generation, desired.work_pool_name, **found
    )


def ray_pods_check(desired: Plan, found: Found) -> Check:
    """RayPodsUpToDate: whether every running Ray pod was made from the current spec.

    KubeRay never restarts running pods for a template change, so until they are
    replaced the cluster runs the old image, version or resources: say which fields.
    """
    if found.token_restarted:
        return Check(
            False,
            "RayTokenReplaced",
            f"the Ray token Secret {naming.ray_token_secret(desired.pool_name)} was made anew; "
            f"restarting {len(found.token_restarted)} pods so that all hold the new token",
        )
    cluster = desired.desired.get(RAY_CLUSTER)
    if cluster is None:
        return Check(None, "Pending", "no RayCluster planned")
    templates = {"head": _digests(cluster["spec"]["headGroupSpec"]["template"])}
    for group in cluster["spec"]["workerGroupSpecs"]:
        templates[f"worker/{group['groupName']}"] = _digests(group["template"])
    fields: set[str] = set()
    pods = []
    for pod in found.pods:
        meta = pod.get("metadata") or {}
        labels = meta.get("labels") or {}
        role = labels.get("ray.io/node-type")
        if role == "worker":
            role = f"worker/{labels.get('ray.io/group')}"
        if role not in templates or meta.get("deletionTimestamp"):
            continue
        stale = outdated_fields((meta.get("annotations") or {}).get(SPEC_DIGESTS), templates[role])
        if stale:
            fields.update(stale)
            pods.append(meta.get("name", "?"))
    if not pods:
        return Check(True, "RayPodsUpToDate", "every Ray pod runs the current spec")
    return Check(
        False,
        "RayPodsOutdated",
        f"{len(pods)} Ray pods run an older spec ({', '.join(sorted(fields))}): KubeRay does "
        "not restart running pods; restart them to apply it (the flow runs on them fail): "
        f"kubectl delete pod -n {desired.namespace} -l "
        f"{naming.POOL_LABEL}={desired.pool_name},ray.io/is-ray-node=yes",
    )


def _digests(template: Obj) -> str | None:
    return ((template.get("metadata") or {}).get("annotations") or {}).get(SPEC_DIGESTS)


def _head_pod(pods: list[Obj]) -> Obj | None:
    for pod in pods:
        if pod.get("metadata", {}).get("labels", {}).get("ray.io/node-type") == "head":
            return pod
    return None


def _is_ray_container(name: str) -> bool:
    return name != naming.PREFECT_WORKER_CONTAINER


def _is_prefect_container(name: str) -> bool:
    return name == naming.PREFECT_WORKER_CONTAINER


def ray_cluster_check(
    live: Obj | None, now: datetime | None = None, grace: float | None = None
) -> Check:
    """RayClusterReady from KubeRay's own status: state and conditions, once KubeRay
    has caught up with the RayCluster's current generation."""
    if live is None:
        return Check(False, "RayClusterMissing", "the RayCluster does not exist yet")
    status = live.get("status") or {}
    silent = kuberay_silent_for(live, now or datetime.now(UTC))
    grace = CONFIG.kuberay_grace_seconds if grace is None else grace
    if silent is not None and silent > grace:
        meta = live.get("metadata") or {}
        return Check(
            False,
            "KubeRayNotReconciling",
            f"KubeRay has not acted on RayCluster {meta.get('name')} generation "
            f"{meta.get('generation')} for {silent:.0f}s (its status is of generation "
            f"{status.get('observedGeneration') or 'none'}): the KubeRay operator is not "
            "running, cannot reconcile it, or is behind (with hundreds of RayClusters, "
            "raise its reconcileConcurrency, default 1); check its pod and its log",
        )
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


def kuberay_silent_for(live: Obj, now: datetime) -> float | None:
    """Seconds since the RayCluster's spec last changed, while KubeRay has not yet
    reported on that generation (status.observedGeneration, which KubeRay sets on
    every reconcile); None when it has, or when no time is known.

    The honest signal of a KubeRay that is not running: its CRD stays, the stale status
    stays, and only the generation it last saw falls behind. When the spec changed is
    the newest managedFields time outside the status subresource (a spec change is
    written by some manager; KubeRay writes only status), else creationTimestamp.
    """
    meta = live.get("metadata") or {}
    generation = meta.get("generation")
    seen = (live.get("status") or {}).get("observedGeneration") or 0
    if not isinstance(generation, int) or seen >= generation:
        return None
    times = [
        entry["time"]
        for entry in meta.get("managedFields") or []
        if entry.get("subresource") != "status" and entry.get("time")
    ]
    since = max(times, default=meta.get("creationTimestamp"))
    if not since:
        return None
    changed = datetime.strptime(since, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    return max(0.0, (now - changed).total_seconds())


def desired_workers(prefect: PrefectSpec, live: Obj | None) -> int:
    """The worker count to be ready: the Deployment's own when an HPA or kubectl scale
    sets it (spec.prefect.replicasManagedExternally)."""
    if prefect.replicasManagedExternally and live is not None:
        replicas = (live.get("spec") or {}).get("replicas")
        return replicas if isinstance(replicas, int) else prefect.replicas
    return prefect.replicas


def prefect_worker_deployment_check(live: Obj | None, desired_replicas: int) -> Check:
    if live is None:
        return Check(False, "DeploymentMissing", "the worker Deployment does not exist yet")
    status = live.get("status") or {}
    ready = status.get("readyReplicas") or 0
    if desired_replicas == 0:
        return Check(True, "ScaledToZero", "the worker Deployment is scaled to 0")
    current = (status.get("observedGeneration") or 0) >= (
        live.get("metadata", {}).get("generation") or 0
    )
    updated = status.get("updatedReplicas") or 0
    if current and ready >= desired_replicas and updated >= desired_replicas:
        return Check(True, "WorkersReady", f"{ready}/{desired_replicas} Prefect workers ready")
    return Check(False, "WorkersNotReady", f"{ready}/{desired_replicas} Prefect workers ready")


def prefect_sidecar_check(head_pod: Obj | None) -> Check:
    if head_pod is None:
        return Check(False, "HeadPodMissing", "the Ray head pod does not exist yet")
    for status in (head_pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == naming.PREFECT_WORKER_CONTAINER:
            if status.get("ready"):
                return Check(True, "SidecarReady", "the Prefect worker sidecar is ready")
            return Check(False, "SidecarNotReady", "the Prefect worker sidecar is not ready")
    return Check(False, "SidecarMissing", "the head pod has no Prefect worker container yet")
