"""The KubeRay `ray.io/v1` RayCluster of a pool."""

from __future__ import annotations

from prefect_raypool_kuberay.contract import CONTAINER_SECURITY, SHM_MOUNT, SHM_VOLUME
from prefect_raypool_operator import kinds, naming
from prefect_raypool_operator.builders import entrypoint
from prefect_raypool_operator.builders.common import (
    Obj,
    hardened,
    object_metadata,
    pod_metadata,
    pod_settings,
    ray_auth_env,
    ray_image,
    resources,
)
from prefect_raypool_operator.builders.prefect_worker import (
    build_prefect_sidecar_container,
    termination_grace_seconds,
)
from prefect_raypool_operator.builders.rollout import (
    SPEC_DIGESTS,
    digests,
    head_inputs,
    worker_inputs,
)
from prefect_raypool_operator.spec import Placement, PrefectRayPoolSpec, WorkerGroup

COMPONENT = "ray-cluster"
#: What idle Ray worker processes of a pool import before a flow run's Ray job takes
#: them over (runner/prefect_raypool/warm.py). An image without it only logs the failure.
PRELOAD_MODULES = "prefect_raypool.preload"


def _ray_node_env(pool_name: str, spec: PrefectRayPoolSpec) -> list[Obj]:
    return [
        *ray_auth_env(pool_name, spec),
        {"name": "RAY_preload_python_modules", "value": PRELOAD_MODULES},
    ]


HEAD_COMPONENT = "ray-head"  # the head pod's component label
HEAD_PORTS = [
    {"name": "gcs", "containerPort": naming.GCS_PORT},
    {"name": "dashboard", "containerPort": naming.DASHBOARD_PORT},
    {"name": "client", "containerPort": naming.CLIENT_PORT},
]


def _head_template(pool_name: str, spec: PrefectRayPoolSpec) -> Obj:
    head: Obj = {
        "name": naming.HEAD_CONTAINER,
        "image": ray_image(spec),
        "env": _ray_node_env(pool_name, spec),
        "ports": HEAD_PORTS,
        "resources": resources(spec.ray.head.resources),
        "volumeMounts": [SHM_MOUNT],
    }
    pod_spec: Obj = {**pod_settings(spec), "containers": [head], "volumes": [SHM_VOLUME]}
    if spec.placement == Placement.HEAD_SIDECAR:
        # The Ray container stays container 0; both share the raylet's /tmp/ray.
        mount = {"name": naming.RAY_TMP_VOLUME, "mountPath": naming.RAY_TMP_DIR}
        head["volumeMounts"].append(mount)
        pod_spec["containers"].append(build_prefect_sidecar_container(pool_name, spec))
        pod_spec["volumes"].append({"name": naming.RAY_TMP_VOLUME, "emptyDir": {}})
        # Ray finds the node a driver attaches to among the processes it can see: the
        # sidecar must see the head container's raylet.
        pod_spec["shareProcessNamespace"] = True
        # The worker drains its flow runs; Ray stays up until it is done (preStop).
        head["lifecycle"] = {"preStop": {"exec": {"command": entrypoint.head_prestop()}}}
        pod_spec["terminationGracePeriodSeconds"] = termination_grace_seconds(spec)
    pod_spec["containers"][0] = hardened(head)
    metadata = pod_metadata(pool_name, spec, HEAD_COMPONENT)
    metadata.setdefault("annotations", {})[SPEC_DIGESTS] = digests(head_inputs(spec))
    return {"metadata": metadata, "spec": pod_spec}


def _ray_worker_group(pool_name: str, spec: PrefectRayPoolSpec, group: WorkerGroup) -> Obj:
    container = hardened(
        {
            "name": naming.RAY_WORKER_CONTAINER,
            "image": ray_image(spec),
            "env": _ray_node_env(pool_name, spec),
            "resources": resources(group.resources),
            "volumeMounts": [SHM_MOUNT],
        }
    )
    metadata = pod_metadata(pool_name, spec, "ray-worker")
    metadata.setdefault("annotations", {})[SPEC_DIGESTS] = digests(worker_inputs(spec, group))
    return {
        "groupName": group.name,
        "replicas": group.replicas,
        "minReplicas": group.minReplicas,
        "maxReplicas": group.maxReplicas if group.maxReplicas is not None else group.replicas,
        "rayStartParams": dict(group.rayStartParams),  # KubeRay requires it, even empty
        "template": {
            "metadata": metadata,
            "spec": {**pod_settings(spec), "containers": [container], "volumes": [SHM_VOLUME]},
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
            "securityContext": dict(CONTAINER_SECURITY),
        }
        if spec.ray.autoscaling.resources is not None:
            amounts = spec.ray.autoscaling.resources.model_dump(mode="json")
            amounts["cpu"] = str(amounts["cpu"])
            cluster_spec["autoscalerOptions"]["resources"] = {
                "requests": dict(amounts),
                "limits": dict(amounts),
            }
    return {
        "apiVersion": kinds.RAY_CLUSTER.api_version,
        "kind": kinds.RAY_CLUSTER.kind,
        "metadata": object_metadata(naming.ray_cluster(pool_name), namespace, pool_name, COMPONENT),
        "spec": cluster_spec,
    }
