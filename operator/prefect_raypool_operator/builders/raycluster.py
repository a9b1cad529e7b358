"""The KubeRay `ray.io/v1` RayCluster of a pool."""

from __future__ import annotations

from prefect_raypool_operator import kinds, naming
from prefect_raypool_operator.builders.common import (
    Obj,
    object_metadata,
    pod_metadata,
    pod_settings,
    ray_auth_env,
    ray_image,
    resources,
)
from prefect_raypool_operator.builders.prefect_worker import build_prefect_sidecar_container
from prefect_raypool_operator.spec import Placement, PrefectRayPoolSpec, WorkerGroup

COMPONENT = "ray-cluster"
HEAD_PORTS = [
    {"name": "gcs", "containerPort": naming.GCS_PORT},
    {"name": "dashboard", "containerPort": naming.DASHBOARD_PORT},
    {"name": "client", "containerPort": naming.CLIENT_PORT},
]


def _head_template(pool_name: str, spec: PrefectRayPoolSpec) -> Obj:
    head: Obj = {
        "name": naming.HEAD_CONTAINER,
        "image": ray_image(spec),
        "env": ray_auth_env(pool_name, spec),
        "ports": HEAD_PORTS,
        "resources": resources(spec.ray.head.resources),
    }
    pod_spec: Obj = {**pod_settings(spec), "containers": [head]}
    if spec.placement == Placement.HEAD_SIDECAR:
        # The Ray container stays container 0; both share the raylet's /tmp/ray.
        mount = {"name": naming.RAY_TMP_VOLUME, "mountPath": naming.RAY_TMP_DIR}
        head["volumeMounts"] = [mount]
        pod_spec["containers"].append(build_prefect_sidecar_container(pool_name, spec))
        pod_spec["volumes"] = [{"name": naming.RAY_TMP_VOLUME, "emptyDir": {}}]
    return {"metadata": pod_metadata(pool_name, spec, "ray-head"), "spec": pod_spec}


def _ray_worker_group(pool_name: str, spec: PrefectRayPoolSpec, group: WorkerGroup) -> Obj:
    container: Obj = {
        "name": naming.RAY_WORKER_CONTAINER,
        "image": ray_image(spec),
        "env": ray_auth_env(pool_name, spec),
        "resources": resources(group.resources),
    }
    return {
        "groupName": group.name,
        "replicas": group.replicas,
        "minReplicas": group.minReplicas,
        "maxReplicas": group.maxReplicas if group.maxReplicas is not None else group.replicas,
        "rayStartParams": dict(group.rayStartParams),  # KubeRay requires it, even empty
        "template": {
            "metadata": pod_metadata(pool_name, spec, "ray-worker"),
            "spec": {**pod_settings(spec), "containers": [container]},
        },
    }


def build_raycluster(pool_name: str, namespace: str, spec: PrefectRayPoolSpec) -> Obj:
    cluster_spec: Obj = {
        "rayVersion": spec.ray.version,
        "enableInTreeAutoscaling": spec.ray.autoscaling.enabled,
        "headGroupSpec": {
            "rayStartParams": {"dashboard-host": "0.0.0.0", **spec.ray.head.rayStartParams},
            "template": _head_template(pool_name, spec),
        },
        "workerGroupSpecs": [_ray_worker_group(pool_name, spec, g) for g in spec.ray.workerGroups],
    }
    if spec.ray.autoscaling.enabled:
        cluster_spec["autoscalerOptions"] = {
            "idleTimeoutSeconds": spec.ray.autoscaling.idleTimeoutSeconds,
            "env": ray_auth_env(pool_name, spec),
        }
    return {
        "apiVersion": kinds.RAY_CLUSTER.api_version,
        "kind": kinds.RAY_CLUSTER.kind,
        "metadata": object_metadata(naming.ray_cluster(pool_name), namespace, pool_name, COMPONENT),
        "spec": cluster_spec,
    }
