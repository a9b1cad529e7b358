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
from prefect_raypool_operator.idle import Decision
from prefect_raypool_operator.owned import PREFECT_WORKER_DEPLOYMENT, RAY_CLUSTER, Owned
from prefect_raypool_operator.plan import Plan
from prefect_raypool_operator.podstatus import pod_failure
from prefect_raypool_operator.rayrollout import DRAINING, REPORTED_ONLY, Outdated, Step, paused
from prefect_raypool_operator.rayscaleup import Raise
from prefect_raypool_operator.refusals import Problem
from prefect_raypool_operator.replicas import Override
from prefect_raypool_operator.spec import PrefectSpec, RayUpdateType
from prefect_raypool_operator.status import (
    SUSPENDED,
    SUSPENDING,
    Check,
    Observed,
    build_status,
)

Obj = dict[str, Any]


@dataclass(frozen=True)
class TokenRoll:
    """A replaced Ray token's way through the pool (reconcile._roll_token): the step,
    the Prefect worker pods draining, the Ray pods holding the old token."""

    step: str  # the RayPodsUpToDate reason
    prefect_workers: list[str]
    ray_pods: list[str]


@dataclass
class Found:
    """What the apply step saw: the inputs of `observe_status`."""

    refusal: Problem | None = None  # what only the cluster knows stopped the pool
    live: dict[Owned, Obj] = field(default_factory=dict)  # owned kind -> live object
    pods: list[Obj] = field(default_factory=list)  # the pool's pods
    work_pool: Check | None = None
    created: list[str] = field(default_factory=list)  # "Kind/name" made by this apply
    # Pods holding a Ray token the pool's Secret no longer has, and what is done.
    token_roll: TokenRoll | None = None
    overrides: list[Override] = field(default_factory=list)  # another manager's, restored
    contested: str | None = None  # the worker Deployment's replicas are fought over
    flow_run_clusters: int | None = None  # an Ephemeral pool's RayJobs
    rollout: Step | None = None  # the replacement of outdated Ray pods (rayrollout.py)
    rollback: Obj | None = None  # a Ray spec change gone back on (rayrollback.py)
    idle: Decision | None = None  # suspending or waking an idle pool (idle.py)
    scaled_up: Raise | None = None  # worker groups raised for the queue (rayscaleup.py)
    ray_cluster: Obj | None = None  # the RayCluster applied: the spec's, or the rollback's
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
        if found.rollout and paused(found.rollout.rollout):
            prefect_worker = Check(
                False,
                "PausedForRayRollout",
                "the Prefect workers are stopped while Ray pods that run an older spec are "
                "replaced (spec.ray.updateStrategy); new flow runs wait in the work pool",
            )
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
    idle_state = found.idle.state if found.idle else None
    idle_check = idle_checks(desired, idle_state)
    if idle_check is not None:  # stopped on purpose: not a failure of the pods
        prefect_failure = None
        prefect_worker = Check(False, idle_check.reason, idle_check.message)
        if idle_check.reason == SUSPENDED:
            ray_failure, ray = None, Check(False, SUSPENDED, idle_check.message)
    status = build_status(
        _observed(
            desired,
            ray_cluster=ray_failure or ray,
            ready_ray_workers=((cluster or {}).get("status") or {}).get("readyWorkerReplicas"),
            prefect_worker=prefect_failure or prefect_worker,
            pods_failing=bool(ray_failure or prefect_failure),
            work_pool=found.work_pool,
            ready_prefect_workers=ready_prefect,
            ray_pods=ray_pods_check(desired, found),
            idle=idle_check,
            idle_state=idle_state,
        ),
        previous,
    )
    status["rayRollout"] = found.rollout.rollout if found.rollout else None
    status["rayRollback"] = found.rollback
    return status


def idle_checks(desired: Plan, state: Obj | None) -> Check | None:
    """Ready's verdict while the pool is suspending or suspended on purpose (idle.py)."""
    step = (state or {}).get("state")
    if step not in (SUSPENDING, SUSPENDED) or desired.spec is None:
        return None
    after = desired.spec.idle.suspendAfterSeconds
    idle = (
        f"no flow run wanted a worker in work pool {desired.work_pool_name} since "
        f"{(state or {}).get('lastDemand')} (spec.idle.suspendAfterSeconds: {after})"
    )
    wake = (
        "a flow run scheduled (or due within spec.idle.wakeAheadSeconds: "
        f"{desired.spec.idle.wakeAheadSeconds}) wakes it"
    )
    if step == SUSPENDING:
        return Check(
            False,
            SUSPENDING,
            f"{idle}: the Prefect workers are stopping (a run taken at the last moment "
            f"finishes first), then the Ray cluster is suspended; {wake}",
        )
    return Check(
        False,
        SUSPENDED,
        f"{idle}: the Ray cluster is suspended (no Ray pod, head included) and the Prefect "
        f"workers are stopped; {wake}",
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


def outdated_pods(cluster: Obj | None, pods: list[Obj]) -> Outdated:
    """The running Ray pods made from another spec than the RayCluster manifest's."""
    if cluster is None:
        return Outdated()
    templates = {"head": _digests(cluster["spec"]["headGroupSpec"]["template"])}
    for group in cluster["spec"]["workerGroupSpecs"]:
        templates[f"worker/{group['groupName']}"] = _digests(group["template"])
    fields: set[str] = set()
    head: list[str] = []
    workers: list[str] = []
    for pod in pods:
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
            (head if role == "head" else workers).append(meta.get("name", "?"))
    return Outdated(sorted(head), sorted(workers), sorted(fields))


def ray_pods_check(desired: Plan, found: Found) -> Check:
    """RayPodsUpToDate: whether every running Ray pod was made from the current spec.

    KubeRay never restarts running pods for a template change, so until they are
    replaced the cluster runs the old image, version or resources: say which fields,
    and what the pool does about it (rayrollout.py).
    """
    if found.token_roll is not None:
        return token_roll_check(desired, found.token_roll)
    if RAY_CLUSTER not in desired.desired:
        return Check(None, "Pending", "no RayCluster planned")
    rollout = found.rollout.rollout if found.rollout else None
    changed = ", ".join((rollout or {}).get("fields") or [])
    deadline = desired.spec.ray.updateStrategy.progressDeadlineSeconds if desired.spec else 0
    if rollout and rollout.get("step") == DRAINING:
        return Check(
            False,
            "RayRolloutDraining",
            f"Ray pods run an older spec ({changed}): the Prefect workers are stopping "
            "first; their flow runs finish (spec.prefect.drain), new ones wait in the work "
            "pool until the Ray pods are replaced",
        )
    if rollout and rollout.get("rolledBack"):
        return Check(
            False,
            "RayRolloutRollingBack",
            f"the new Ray head ({changed}) was not ready {deadline} s after its pods were "
            f"replaced ({(found.rollback or {}).get('reason', '?')}): going back to the Ray "
            "spec of before the change"
            + (", then the Prefect workers start again" if rollout.get("workersPaused") else ""),
        )
    if rollout and desired.sidecar:
        return Check(
            False,
            "RayRolloutReplacing",
            f"replacing the Ray pods that run an older spec ({changed}): the head first, "
            "whose Prefect worker drains its flow runs (spec.prefect.drain; new ones wait in "
            "the work pool), then the Ray worker pods; KubeRay makes them anew from the "
            f"current spec (if the new head is not ready within {deadline} s of the old "
            "one's end, the pool goes back to the spec of before: "
            "spec.ray.updateStrategy.progressDeadlineSeconds)",
        )
    if rollout:
        return Check(
            False,
            "RayRolloutReplacing",
            f"replacing the Ray pods that run an older spec ({changed}); KubeRay makes them "
            "anew from the current one"
            + (", then the Prefect workers start again" if rollout.get("workersPaused") else "")
            + f" (if the new head is not ready within {deadline} s, the pool goes back to "
            "the spec of before: spec.ray.updateStrategy.progressDeadlineSeconds)",
        )
    outdated = outdated_pods(found.ray_cluster, found.pods)
    if found.rollback and not outdated:
        fields = ", ".join(found.rollback.get("fields") or [])
        return Check(
            False,
            "RayRolloutRolledBack",
            f"the change of {fields} was rolled back at {found.rollback.get('at')}: its new "
            f"Ray head was not ready {deadline} s after its pods were replaced "
            f"({found.rollback.get('reason')}); the pool runs and takes flow runs on the Ray "
            f"spec of before. Fix {fields} (kubectl describe pod and the Events say more); "
            "the next change of the Ray spec is rolled out again",
        )
    if not outdated:
        done = found.rollout.finished_after if found.rollout else None
        return Check(
            True,
            "RayPodsUpToDate",
            "every Ray pod runs the current spec"
            + (f" (replaced in {done:.0f} s, flow runs drained first)" if done is not None else ""),
        )
    count = len(outdated.head) + len(outdated.workers)
    spec = desired.spec
    why = "spec.ray.updateStrategy is OnDelete"
    if not set(outdated.fields) - REPORTED_ONLY:
        why = "a change of spec.pod alone is not rolled out (it goes with the next one)"
    elif spec is not None and spec.ray.updateStrategy.type == RayUpdateType.DRAIN_THEN_REPLACE:
        why = (
            "the Prefect worker replicas are managed externally, so the pool cannot "
            "pause them first"
        )
    return Check(
        False,
        "RayPodsOutdated",
        f"{count} Ray pods run an older spec ({', '.join(outdated.fields)}): KubeRay does "
        f"not restart running pods, and {why}: restart them when no flow run is running "
        "(those running fail): "
        f"kubectl delete pod -n {desired.namespace} -l "
        f"{naming.POOL_LABEL}={desired.pool_name},ray.io/is-ray-node=yes",
    )


def token_roll_check(desired: Plan, roll: TokenRoll) -> Check:
    """What happens to the pods that hold a replaced Ray token, in words."""
    secret = desired.ray_token.name if desired.ray_token else "?"
    changed = f"the Ray token in Secret {secret} changed"
    ray = f"{len(roll.ray_pods)} Ray pods"
    if roll.step == "RayTokenReplacedDraining":
        message = (
            f"{changed}: {len(roll.prefect_workers)} Prefect worker pods holding the old one "
            "drain (they take no new flow run and stop once theirs have ended; new ones "
            f"start with the new token and wait for a new head); then the {ray} holding it "
            f"restart: {', '.join(roll.prefect_workers)}"
        )
    elif roll.step == "RayTokenReplacedRestarting":
        message = (
            f"{changed} and no Prefect worker holds the old one any more: restarting the "
            f"{ray} holding it, so that every pod holds the new one"
        )
    else:
        message = (
            f"{changed}; the head pod, which runs the Prefect worker and its flow runs, is not "
            f"restarted for it: {ray} hold the old token and a Ray pod started now cannot "
            "join them: restart them when no flow run is running (those running fail): "
            f"kubectl delete pod -n {desired.namespace} -l "
            f"{naming.POOL_LABEL}={desired.pool_name},ray.io/is-ray-node=yes"
        )
    return Check(False, roll.step, message)


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
    """Seconds since the RayCluster's spec last changed, while KubeRay has provably not
    reconciled it since; None when it has, when it may have, or when no time is known.

    The honest signal of a KubeRay that is not running: its CRD stays, the stale status
    stays, and only the generation it last saw falls behind. But KubeRay writes its
    status only when a field it compares changed (utils.InconsistentRayClusterStatus:
    state, conditions, endpoints, worker replica counts), not for observedGeneration
    alone: after a change of pod labels, image or resources a running KubeRay leaves
    the status, and the generation in it, as they were. So a lagging generation says
    KubeRay did not act only where its reconcile must have written: a RayCluster it
    never reported on, or worker replica counts in its status that the spec no longer
    gives (`_kuberay_would_write`). When the spec changed is the newest managedFields
    time outside the status subresource (a spec change is written by some manager;
    KubeRay writes only status), else creationTimestamp.
    """
    meta = live.get("metadata") or {}
    generation = meta.get("generation")
    seen = (live.get("status") or {}).get("observedGeneration") or 0
    if not isinstance(generation, int) or seen >= generation or not _kuberay_would_write(live):
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


def _kuberay_would_write(live: Obj) -> bool:
    """Whether a KubeRay reconcile of the live spec must change the live status: none
    yet, or other desired/min/max worker counts than KubeRay computes from the spec
    (utils.CalculateDesiredReplicas and its kin; a count of 0 is omitted in KubeRay's
    status)."""
    status = live.get("status") or {}
    if not status.get("observedGeneration"):
        return True
    desired = minimum = maximum = 0
    for group in (live.get("spec") or {}).get("workerGroupSpecs") or []:
        if group.get("suspend"):
            continue
        hosts = group.get("numOfHosts") or 1
        low, high = group.get("minReplicas") or 0, group.get("maxReplicas")
        high = 2**31 - 1 if high is None else high
        replicas = group.get("replicas")
        replicas = low if replicas is None else replicas
        desired += (high if low > high else min(max(replicas, low), high)) * hosts
        minimum += low * hosts
        maximum += high * hosts
    return (desired, minimum, min(maximum, 2**31 - 1)) != (
        status.get("desiredWorkerReplicas") or 0,
        status.get("minWorkerReplicas") or 0,
        status.get("maxWorkerReplicas") or 0,
    )


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
    containers = {c.get("name") for c in (head_pod.get("spec") or {}).get("containers") or []}
    if containers and naming.PREFECT_WORKER_CONTAINER not in containers:
        # Made before spec.placement became HeadSidecar: KubeRay does not restart a
        # running head for a template change, so no worker polls the work pool.
        meta = head_pod.get("metadata") or {}
        name, namespace = meta.get("name"), meta.get("namespace")
        return Check(
            False,
            "SidecarMissing",
            f"the head pod {name} has no Prefect worker container: it was made before "
            "spec.placement became HeadSidecar, and KubeRay adds the container only to a "
            "new head pod; until then no new flow run starts. With "
            "spec.ray.updateStrategy DrainThenReplace (the default) the pool replaces it "
            "once the flow runs of the earlier Prefect workers have ended (RayPodsUpToDate "
            "tells); with OnDelete, delete it then (those on this head's Ray cluster fail "
            f"otherwise): kubectl delete pod -n {namespace} {name}",
        )
    for status in (head_pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == naming.PREFECT_WORKER_CONTAINER:
            if status.get("ready"):
                return Check(True, "SidecarReady", "the Prefect worker sidecar is ready")
            return Check(False, "SidecarNotReady", "the Prefect worker sidecar is not ready")
    return Check(False, "SidecarNotReady", "the Prefect worker sidecar has not started yet")
