"""One level-triggered reconcile of a PrefectRayPool: observe, check, apply, report.

Called the same way from every trigger (create, update, resume, the resync timer,
an owned object changing or vanishing). Order matters for "nothing half-created":
all checks that can refuse the pool run before the first object is written.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any

import kopf
import pydantic
from kubernetes import client

from prefect_raypool_operator import kube, naming
from prefect_raypool_operator.builders import build_manifests
from prefect_raypool_operator.preflight import Problem, spec_problems
from prefect_raypool_operator.render import format_validation_error
from prefect_raypool_operator.settings import CONFIG
from prefect_raypool_operator.spec import (
    KeyRef,
    Placement,
    PrefectRayPoolSpec,
    RayAuthMode,
    name_problem,
)
from prefect_raypool_operator.status import (
    Check,
    Observed,
    Transition,
    build_status,
    deployment_check,
    ray_cluster_check,
    sidecar_check,
    transitions,
)
from prefect_raypool_operator.watchcache import Reads
from prefect_raypool_operator.workpool import ensure_work_pool

Obj = dict[str, Any]


@dataclass
class Outcome:
    status: Obj
    transitions: list[Transition]
    problem: Problem | None = None  # why the pool is not fully reconciled
    created: list[str] = field(default_factory=list)
    # (kind, namespace, name) -> metadata.generation of each owned object we saw
    generations: dict[tuple[str, str, str], int | None] = field(default_factory=dict)


def parse(body: Obj) -> tuple[PrefectRayPoolSpec | None, Problem | None]:
    name = body["metadata"]["name"]
    bad_name = name_problem(name)
    if bad_name:
        return None, Problem("InvalidName", f"metadata.name {name!r}: {bad_name}", True)
    try:
        return PrefectRayPoolSpec.model_validate(body.get("spec") or {}), None
    except pydantic.ValidationError as exc:
        return None, Problem("InvalidSpec", format_validation_error(exc), True)


class SecretReads:
    """Referenced Secret keys, each read at most once per reconcile (the Prefect API
    key is checked for existence first and used for the work pool after)."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self._api, self._namespace = api, namespace
        self._values: dict[tuple[str, str], str | None] = {}

    def get(self, ref: KeyRef) -> str | None:
        key = (ref.name, ref.key)
        if key not in self._values:
            self._values[key] = kube.read_secret_key(self._api, ref, self._namespace)
        return self._values[key]


def cluster_problems(
    api: client.ApiClient, namespace: str, pool: PrefectRayPoolSpec, secrets: SecretReads
) -> list[Problem]:
    """What only the cluster knows: referenced Secrets exist, KubeRay is installed."""
    problems = []
    refs = []
    if pool.prefect.apiKey:
        refs.append(("spec.prefect.apiKey", pool.prefect.apiKey.secretKeyRef))
    if pool.ray.auth.mode == RayAuthMode.TOKEN and pool.ray.auth.secretKeyRef:
        refs.append(("spec.ray.auth.secretKeyRef", pool.ray.auth.secretKeyRef))
    for i, env in enumerate(pool.prefect.env):
        if env.valueFrom and env.valueFrom.secretKeyRef:
            refs.append((f"spec.prefect.env[{i}]", env.valueFrom.secretKeyRef))
    for where, ref in refs:
        if secrets.get(ref) is None:
            problems.append(
                Problem(
                    "SecretNotFound",
                    f"{where}: Secret {ref.name!r} with key {ref.key!r} not found in "
                    f"namespace {namespace!r}: create it (the pool waits for it)",
                    permanent=False,
                )
            )
    if not kube.kuberay_installed(api, namespace):
        problems.append(
            Problem(
                "KubeRayNotInstalled",
                "the API server does not serve ray.io/v1 RayCluster: install the KubeRay "
                "operator (v1.5) and its CRDs; the pool waits for it",
                permanent=False,
            )
        )
    return problems


def keep_autoscaled_replicas(desired: Obj, live: Obj | None) -> Obj:
    """With the autoscaler on, the live worker-group replicas are its call, not ours."""
    if live is None or not desired["spec"].get("enableInTreeAutoscaling"):
        return desired
    live_groups = {g.get("groupName"): g for g in live.get("spec", {}).get("workerGroupSpecs", [])}
    for group in desired["spec"]["workerGroupSpecs"]:
        current = live_groups.get(group["groupName"], {}).get("replicas")
        if current is not None:
            group["replicas"] = max(group["minReplicas"], min(group["maxReplicas"], current))
    return desired


def reconcile(
    api: client.ApiClient, body: Obj, reads: Reads, previous: Obj, repair: bool = True
) -> Outcome:
    """Reconcile one pool against its `previous` status. `repair=False` only observes
    objects that exist (an owned object's status changed); a missing one is created."""
    meta = body["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    pool, problem = parse(body)
    secrets = SecretReads(api, namespace)
    if pool is not None:
        problems = spec_problems(pool) or cluster_problems(api, namespace, pool, secrets)
        problem = problems[0] if problems else None
    work_pool = naming.work_pool(name, pool) if pool else name
    base = Observed(name, namespace, meta.get("generation"), work_pool)
    if pool is None or problem is not None:
        assert problem is not None
        status = build_status(_blocked(base, problem), previous)
        return Outcome(status, transitions(previous, status), problem)

    created = []
    if repair and pool.ray.auth.mode == RayAuthMode.TOKEN and not pool.ray.auth.secretKeyRef:
        if kube.ensure_token_secret(api, body, name, namespace):
            created.append(f"Secret/{naming.ray_token_secret(name)}")
    live_cluster = reads.raycluster(namespace, name)
    live_deployment = reads.deployment(namespace, name)
    applied: dict[tuple[str, str, str], int | None] = {}
    for manifest in build_manifests(name, namespace, pool):
        kopf.adopt(manifest, owner=kube.as_body(body))
        was_created = False
        if manifest["kind"] == "RayCluster":
            if repair or live_cluster is None:
                desired = keep_autoscaled_replicas(manifest, live_cluster)
                live_cluster, was_created = kube.apply(api, desired)
            live = live_cluster
        else:
            if repair or live_deployment is None:
                live_deployment, was_created = kube.apply(api, manifest)
            live = live_deployment
        if was_created:
            created.append(f"{manifest['kind']}/{manifest['metadata']['name']}")
        key = (manifest["kind"], namespace, manifest["metadata"]["name"])
        applied[key] = live["metadata"].get("generation")
    if pool.placement != Placement.ZERO_CAPACITY_NODE and live_deployment is not None:
        kube.delete_deployment(api, name, namespace)

    cluster_check = ray_cluster_check(live_cluster)
    ready_workers = ((live_cluster or {}).get("status") or {}).get("readyWorkerReplicas")
    if pool.placement == Placement.ZERO_CAPACITY_NODE:
        worker = deployment_check(live_deployment, pool.prefect.replicas)
        ready_prefect = ((live_deployment or {}).get("status") or {}).get("readyReplicas") or 0
    else:
        worker = sidecar_check(kube.read_head_pod(api, name, namespace))
        ready_prefect = 1 if worker.ok else 0
    pool_check = _work_pool(secrets, pool, work_pool)
    obs = Observed(
        name,
        namespace,
        meta.get("generation"),
        work_pool,
        ray_cluster=cluster_check,
        ready_worker_replicas=ready_workers,
        worker=worker,
        pool=pool_check,
        ready_prefect_workers=ready_prefect,
    )
    status = build_status(obs, previous)
    retry = None
    if pool_check.ok is False:
        retry = Problem(pool_check.reason, pool_check.message, permanent=False)
    return Outcome(status, transitions(previous, status), retry, created, applied)


def _blocked(base: Observed, problem: Problem) -> Observed:
    return Observed(
        base.name,
        base.namespace,
        base.generation,
        base.work_pool,
        blocking=Check(False, problem.reason, problem.message),
        blocking_permanent=problem.permanent,
    )


# Successful work-pool checks, by what they checked: child-object events reconcile
# often, the Prefect API need not be asked more than once per resync interval.
_pool_checked: dict[tuple[str, str, int | None, str], float] = {}


def _work_pool(secrets: SecretReads, pool: PrefectRayPoolSpec, work_pool: str) -> Check:
    api_key = secrets.get(pool.prefect.apiKey.secretKeyRef) if pool.prefect.apiKey else None
    url = CONFIG.operator_prefect_url(pool.prefect.apiUrl)
    limit = pool.prefect.workPool.concurrencyLimit
    key = (url, work_pool, limit, hashlib.sha256((api_key or "").encode()).hexdigest())
    if time.monotonic() - _pool_checked.get(key, -1e9) < 0.9 * CONFIG.resync_seconds:
        return Check(True, "WorkPoolInSync", f"work pool {work_pool!r} matches the spec")
    check = ensure_work_pool(url, work_pool, limit, api_key=api_key, timeout=CONFIG.prefect_timeout)
    if check.ok:
        _pool_checked[key] = time.monotonic()
    else:
        _pool_checked.pop(key, None)
    return check
