"""Pieces shared by the RayCluster and worker builders: env, resources, pod settings."""

from __future__ import annotations

from typing import Any

from prefect_raypool_operator import naming
from prefect_raypool_operator.spec import (
    PrefectRayPoolSpec,
    RayAuthMode,
    Resources,
    SecretKeyRef,
)

Obj = dict[str, Any]


def ray_image(pool: PrefectRayPoolSpec) -> str:
    return pool.ray.image or f"rayproject/ray:{pool.ray.version}-py311"


def worker_image(pool: PrefectRayPoolSpec) -> str:
    return pool.prefect.image or ray_image(pool)


def secret_env(name: str, ref: SecretKeyRef) -> Obj:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}


def ray_token_ref(pool_name: str, pool: PrefectRayPoolSpec) -> SecretKeyRef:
    """The Secret holding the cluster's Ray token: the user's, or the one the operator makes."""
    return pool.ray.auth.secretKeyRef or SecretKeyRef(
        name=naming.ray_token_secret(pool_name), key=naming.RAY_TOKEN_KEY
    )


def ray_auth_env(pool_name: str, pool: PrefectRayPoolSpec) -> list[Obj]:
    """RAY_AUTH_MODE always (never left to the machine's history), the token when on."""
    env: list[Obj] = [{"name": "RAY_AUTH_MODE", "value": pool.ray.auth.mode.value}]
    if pool.ray.auth.mode == RayAuthMode.TOKEN:
        env.append(secret_env("RAY_AUTH_TOKEN", ray_token_ref(pool_name, pool)))
    return env


def resources(res: Resources) -> Obj:
    amounts: Obj = {"cpu": str(res.cpu), "memory": res.memory}
    if res.gpu:
        amounts["nvidia.com/gpu"] = str(res.gpu)
    return {"requests": dict(amounts), "limits": dict(amounts)}


def pod_metadata(pool_name: str, pool: PrefectRayPoolSpec, component: str) -> Obj:
    meta: Obj = {"labels": {**pool.pod.labels, **naming.labels(pool_name, component)}}
    if pool.pod.annotations:
        meta["annotations"] = dict(pool.pod.annotations)
    return meta


def pod_settings(pool: PrefectRayPoolSpec) -> Obj:
    """The user's pod-level settings, only those that are set."""
    settings: Obj = {}
    if pool.pod.serviceAccountName:
        settings["serviceAccountName"] = pool.pod.serviceAccountName
    if pool.pod.nodeSelector:
        settings["nodeSelector"] = dict(pool.pod.nodeSelector)
    if pool.pod.tolerations:
        settings["tolerations"] = [t.model_dump(exclude_none=True) for t in pool.pod.tolerations]
    if pool.pod.imagePullSecrets:
        settings["imagePullSecrets"] = [s.model_dump() for s in pool.pod.imagePullSecrets]
    return settings


def object_metadata(name: str, namespace: str, pool_name: str, component: str) -> Obj:
    return {
        "name": name,
        "namespace": namespace,
        "labels": naming.labels(pool_name, component),
    }
