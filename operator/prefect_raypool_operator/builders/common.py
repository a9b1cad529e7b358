"""Pieces shared by the RayCluster and worker builders: env, resources, pod settings.

The restricted securityContext and the /dev/shm volume are the `kuberay` worker's too
(its RayJobs' pods): prefect_raypool_kuberay.contract holds them.
"""

from __future__ import annotations

from typing import Any

from prefect_raypool_kuberay.contract import CONTAINER_SECURITY, GPU_RESOURCE, POD_SECURITY
from prefect_raypool_operator import naming
from prefect_raypool_operator.spec import (
    PrefectRayPoolSpec,
    RayAuthMode,
    Resources,
    SecretKeyRef,
)

Obj = dict[str, Any]


def hardened(container: Obj) -> Obj:
    """The container with the restricted securityContext and, when it fails, its last
    log lines as the termination message (the pool's status quotes them)."""
    return {
        **container,
        "securityContext": dict(CONTAINER_SECURITY),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def ray_image(spec: PrefectRayPoolSpec) -> str:
    return spec.ray.image or naming.DEFAULT_IMAGE


def prefect_worker_image(spec: PrefectRayPoolSpec) -> str:
    return spec.prefect.image or ray_image(spec)


def secret_env(name: str, ref: SecretKeyRef) -> Obj:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}


def ray_token_ref(pool_name: str, spec: PrefectRayPoolSpec) -> SecretKeyRef:
    """The Secret holding the cluster's Ray token: the user's, or the one the operator makes."""
    return spec.ray.auth.secretKeyRef or SecretKeyRef(
        name=naming.ray_token_secret(pool_name), key=naming.RAY_TOKEN_KEY
    )


def ray_auth_env(pool_name: str, spec: PrefectRayPoolSpec) -> list[Obj]:
    """RAY_AUTH_MODE always (never left to the machine's history), the token when on."""
    env: list[Obj] = [{"name": "RAY_AUTH_MODE", "value": spec.ray.auth.mode.value}]
    if spec.ray.auth.mode == RayAuthMode.TOKEN:
        env.append(secret_env("RAY_AUTH_TOKEN", ray_token_ref(pool_name, spec)))
    return env


def resources(res: Resources) -> Obj:
    amounts: Obj = {"cpu": str(res.cpu), "memory": res.memory}
    if res.gpu:
        amounts[GPU_RESOURCE] = str(res.gpu)
    return {"requests": dict(amounts), "limits": dict(amounts)}


def pod_metadata(pool_name: str, spec: PrefectRayPoolSpec, component: str) -> Obj:
    meta: Obj = {"labels": {**spec.pod.labels, **naming.labels(pool_name, component)}}
    if spec.pod.annotations:
        meta["annotations"] = dict(spec.pod.annotations)
    return meta


def pod_settings(spec: PrefectRayPoolSpec) -> Obj:
    """The user's pod-level settings, only those that are set."""
    settings: Obj = {"securityContext": dict(POD_SECURITY)}
    if spec.pod.serviceAccountName:
        settings["serviceAccountName"] = spec.pod.serviceAccountName
    if spec.pod.nodeSelector:
        settings["nodeSelector"] = dict(spec.pod.nodeSelector)
    if spec.pod.tolerations:
        settings["tolerations"] = [t.model_dump(exclude_none=True) for t in spec.pod.tolerations]
    if spec.pod.imagePullSecrets:
        settings["imagePullSecrets"] = [s.model_dump() for s in spec.pod.imagePullSecrets]
    return settings


def object_metadata(name: str, namespace: str, pool_name: str, component: str) -> Obj:
    return {
        "name": name,
        "namespace": namespace,
        "labels": naming.labels(pool_name, component),
    }
