"""The KubeRay `ray.io/v1` RayCluster of a pool."""

from __future__ import annotations

from prefect_raypool_operator import naming
from prefect_raypool_operator.builders.common import (
    Obj,
    object_metadata,
    pod_metadata,
    pod_settings,
    ray_auth_env,
    ray_image,
    resources,
)
from prefect_raypool_operator.builders.worker import build_sidecar_container
from prefect_raypool_operator.spec import Placement, PrefectRayPoolSpec, WorkerGroup

COMPONENT = "ray-cluster"
HEAD_PORTS = [
    {"name": "gcs", "containerPort": naming.GCS_PORT},
    {"name": "dashboard", "containerPort": naming.DASHBOARD_PORT},
    {"name": "client", "containerPort": naming.CLIENT_PORT},
]


def _head_template(pool_name: str, pool: PrefectRayPoolSpec) -> Obj:
    head: Obj = {
        "name": naming.HEAD_CONTAINER,
        "image": ray_image(pool),
        "env": ray_auth_env(pool_name, pool),
        "ports": HEAD_PORTS,
        "resources": resources(pool.ray.head.resources),
    }
    spec: Obj = {**pod_settings(pool), "containers": [head]}
    if pool.placement == Placement.HEAD_SIDECAR:
        # The Ray container stays container 0; both share the raylet's /tmp/ray.
        mount = {"name": naming.RAY_TMP_VOLUME, "mountPath": naming.RAY_TMP_DIR}
        head["volumeMounts"] = [mount]
        spec["containers"].append(build_sidecar_container(pool_name, pool))
        spec["volumes"] = [{"name": naming.RAY_TMP_VOLUME, "emptyDir": {}}]
    return {"metadata": pod_metadata(pool_name, pool, "ray-head"), "spec": spec}


def _worker_group(pool_name: str, pool: PrefectRayPoolSpec, group: WorkerGroup) -> Obj:
    container: Obj = {
        "name": naming.RAY_WORKER_CONTAINER,
        "image": ray_image(pool),
        "env": ray_auth_env(pool_name, pool),
        "resources": resources(group.resources),
    }
    return {
        "groupName": group.name,
        "replicas": group.replicas,
        "minReplicas": group.minReplicas,
        "maxReplicas": group.maxReplicas if group.maxReplicas is not None else group.replicas,
        "rayStartParams": dict(group.rayStartParams),  # KubeRay requires it, even empty
        "template": {
            "metadata": pod_metadata(pool_name, pool, "ray-worker"),
            "spec": {**pod_settings(pool), "containers": [container]},
        },
    }


def build_raycluster(pool_name: str, namespace: str, pool: PrefectRayPoolSpec) -> Obj:
    spec: Obj = {
        "rayVersion": pool.ray.version,
        "enableInTreeAutoscaling": pool.ray.autoscaling.enabled,
        "headGroupSpec": {
            "rayStartParams": {"dashboard-host": "0.0.0.0", **pool.ray.head.rayStartParams},
            "template": _head_template(pool_name, pool),
        },
        "workerGroupSpecs": [_worker_group(pool_name, pool, g) for g in pool.ray.workerGroups],
    }
    if pool.ray.autoscaling.enabled:
        spec["autoscalerOptions"] = {
            "idleTimeoutSeconds": pool.ray.autoscaling.idleTimeoutSeconds,
            "env": ray_auth_env(pool_name, pool),
        }
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": object_metadata(naming.ray_cluster(pool_name), namespace, pool_name, COMPONENT),
        "spec": spec,
    }
