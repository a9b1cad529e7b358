"""Plan, the pure first step of a reconcile: a pool's body in, what it should own out.

No I/O: the same body always gives the same plan. A pool the spec alone refuses gets
a plan with a refusal and nothing to apply. The plan is the whole desired state: the
owned objects, the token Secret and the Prefect work pool; apply (reconcile.py) adds
only what the cluster knows (whether a Secret exists, the API key's value) and a new
token's random value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

import kopf

from prefect_raypool_operator import naming
from prefect_raypool_operator.builders import build_manifests, ephemeral
from prefect_raypool_operator.builders.common import ray_token_ref
from prefect_raypool_operator.builders.prefect_worker import POD_NAME_ENV, prefect_worker_env
from prefect_raypool_operator.builders.ray_token import build_ray_token_secret
from prefect_raypool_operator.config import CONFIG
from prefect_raypool_operator.owned import Owned, owned_of
from prefect_raypool_operator.port import (
    KUBERAY_WORK_POOL_TYPE,
    WORK_POOL_TYPE,
    DesiredWorkPool,
    Owner,
)
from prefect_raypool_operator.refusals import (
    Problem,
    Refused,
    parse_pool,
    secret_refs,
    spec_problems,
)
from prefect_raypool_operator.spec import (
    EnvVar,
    KeyRef,
    Placement,
    PrefectRayPoolSpec,
    RayAuthMode,
)

Obj = dict[str, Any]


@dataclass(frozen=True)
class Plan:
    body: Obj  # the pool as last seen: owner of everything below
    pool_name: str
    namespace: str
    generation: int | None
    work_pool_name: str
    spec: PrefectRayPoolSpec | None = None  # None when refused
    refusal: Problem | None = None
    # Owned kind -> its desired object, owner reference set, in apply order. A kind
    # missing here is deleted when it exists (HeadSidecar has no worker Deployment).
    desired: dict[Owned, Obj] = field(default_factory=dict)
    secret_refs: list[tuple[str, KeyRef]] = field(default_factory=list)
    # `<pool>-ray-token`, owner reference set, without its token: created if missing,
    # never overwritten. None when the spec names a token or wants none.
    ray_token_secret: Obj | None = None
    # The Secret key of the cluster's Ray token (the user's or the operator's): its
    # digest goes on every pod template. None without token auth.
    ray_token: KeyRef | None = None
    work_pool: DesiredWorkPool | None = None  # None when refused

    @property
    def uid(self) -> str:
        """The pool's uid: what its objects' owner references name."""
        return str(self.body["metadata"].get("uid") or "")

    @property
    def sidecar(self) -> bool:
        """The Prefect worker runs in the Ray head pod (not in its own Deployment)."""
        return self.spec is not None and self.spec.placement == Placement.HEAD_SIDECAR

    @property
    def ephemeral(self) -> bool:
        """No RayCluster of the pool's own: a `kuberay` worker, one RayJob per flow run."""
        return self.spec is not None and self.spec.placement == Placement.EPHEMERAL


def with_worker_env(
    pool_name: str, spec: PrefectRayPoolSpec, worker_env: tuple[tuple[str, str], ...]
) -> PrefectRayPoolSpec:
    """The operator's env for every warm pool's Prefect worker (chart value
    prefectWorkerEnv) ahead of the pool's spec.prefect.env. A name the pool or the
    operator already sets keeps that value (one name twice: the apply is refused)."""
    if not worker_env or spec.placement == Placement.EPHEMERAL:
        return spec
    taken = {e["name"] for e in prefect_worker_env(pool_name, spec)} | {POD_NAME_ENV}
    added = [EnvVar(name=name, value=value) for name, value in worker_env if name not in taken]
    prefect = spec.prefect.model_copy(update={"env": [*added, *spec.prefect.env]})
    return spec.model_copy(update={"prefect": prefect})


def plan(
    body: Obj,
    operator_namespace: str | None = CONFIG.operator_namespace,
    worker_cluster_role: str = CONFIG.kuberay_worker_cluster_role,
    kuberay_namespace: str | None = CONFIG.kuberay_namespace,
    worker_env: tuple[tuple[str, str], ...] = CONFIG.prefect_worker_env,
) -> Plan:
    meta = body["metadata"]
    pool_name, namespace = meta["name"], meta["namespace"]
    generation = meta.get("generation")
    try:
        _, _, spec = parse_pool(body)
    except Refused as refused:
        return Plan(body, pool_name, namespace, generation, pool_name, refusal=refused.problem)
    work_pool_name = naming.work_pool_name(pool_name, spec)
    problems = spec_problems(spec, pool_name)
    if problems:
        return Plan(body, pool_name, namespace, generation, work_pool_name, spec, problems[0])
    spec = with_worker_env(pool_name, spec, worker_env)
    owner = kopf.Body(cast(Any, body))
    desired = {}
    manifests = build_manifests(
        pool_name, namespace, spec, operator_namespace, worker_cluster_role, kuberay_namespace
    )
    for manifest in manifests:
        kopf.adopt(manifest, owner=owner)
        desired[owned_of(manifest, pool_name)] = manifest
    ray_token_secret, ray_token = None, None
    # Not for Ephemeral pools: each flow run's cluster gets a token of its own from
    # KubeRay (rayClusterSpec.authOptions), so no run's token opens another's cluster.
    if spec.placement != Placement.EPHEMERAL and spec.ray.auth.mode == RayAuthMode.TOKEN:
        ray_token = ray_token_ref(pool_name, spec)
        if not spec.ray.auth.secretKeyRef:
            ray_token_secret = build_ray_token_secret(pool_name, namespace)
            kopf.adopt(ray_token_secret, owner=owner)
    return Plan(
        body,
        pool_name,
        namespace,
        generation,
        work_pool_name,
        spec,
        desired=desired,
        secret_refs=secret_refs(spec),
        ray_token_secret=ray_token_secret,
        ray_token=ray_token,
        work_pool=_desired_work_pool(body, namespace, work_pool_name, spec),
    )


def _desired_work_pool(
    body: Obj, namespace: str, name: str, spec: PrefectRayPoolSpec
) -> DesiredWorkPool:
    """The work pool the pool's Prefect worker polls: an Ephemeral pool's is of the
    `kuberay` type, with the base job template its RayJobs are made from."""
    prefect, meta = spec.prefect, body["metadata"]
    is_ephemeral = spec.placement == Placement.EPHEMERAL
    return DesiredWorkPool(
        api_url=prefect.apiUrl,
        name=name,
        type=KUBERAY_WORK_POOL_TYPE if is_ephemeral else WORK_POOL_TYPE,
        concurrency_limit=prefect.workPool.concurrencyLimit,
        base_job_template=ephemeral.base_job_template(namespace, spec) if is_ephemeral else None,
        api_key_ref=prefect.apiKey.secretKeyRef if prefect.apiKey else None,
        owner=Owner(meta["namespace"], meta["name"], meta["uid"]),
    )
