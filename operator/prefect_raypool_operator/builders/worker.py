"""The Prefect worker: a Deployment of zero-capacity Ray nodes, or a head-pod sidecar."""

from __future__ import annotations

from prefect_raypool_operator import naming
from prefect_raypool_operator.builders import entrypoint
from prefect_raypool_operator.builders.common import (
    Obj,
    object_metadata,
    pod_metadata,
    pod_settings,
    ray_auth_env,
    resources,
    secret_env,
    worker_image,
)
from prefect_raypool_operator.spec import PrefectRayPoolSpec

COMPONENT = "prefect-worker"
RAYLET_SOCKET = f"{naming.RAY_TMP_DIR}/session_latest/sockets/raylet"


def prefect_env(pool_name: str, pool: PrefectRayPoolSpec, ray_address: str) -> list[Obj]:
    """Env of a Prefect worker container. Secrets are referenced, never copied."""
    prefect = pool.prefect
    env: list[Obj] = [{"name": "PREFECT_API_URL", "value": prefect.apiUrl}]
    if prefect.apiKey:
        env.append(secret_env("PREFECT_API_KEY", prefect.apiKey.secretKeyRef))
    env.append({"name": "RAY_ADDRESS", "value": ray_address})
    env += ray_auth_env(pool_name, pool)
    env += [
        {"name": "PREFECT_RAYPOOL_TASK_NUM_CPUS", "value": str(pool.ray.taskResources.cpu)},
        {"name": "PREFECT_RAYPOOL_TASK_NUM_GPUS", "value": str(pool.ray.taskResources.gpu)},
    ]
    results = prefect.resultStorage
    env.append(
        {
            "name": "PREFECT_RESULTS_PERSIST_BY_DEFAULT",
            "value": "true" if results.persistByDefault else "false",
        }
    )
    if results.storageBlock:
        env.append({"name": "PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK", "value": results.storageBlock})
    if results.localStoragePath:
        env.append(
            {"name": "PREFECT_RESULTS_LOCAL_STORAGE_PATH", "value": results.localStoragePath}
        )
    env += [e.model_dump(exclude_none=True) for e in prefect.env]
    return env


def _worker_command(pool_name: str, pool: PrefectRayPoolSpec) -> list[str]:
    return entrypoint.prefect_worker_command(
        naming.work_pool(pool_name, pool), pool.prefect.workQueues
    )


def build_sidecar_container(pool_name: str, pool: PrefectRayPoolSpec) -> Obj:
    """The Prefect worker container that HeadSidecar adds after the Ray head container."""
    return {
        "name": naming.PREFECT_WORKER_CONTAINER,
        "image": worker_image(pool),
        "command": ["/bin/sh", "-c", entrypoint.sidecar_script(_worker_command(pool_name, pool))],
        # KubeRay sets RAY_ADDRESS on container 0 only; the head's GCS is local here.
        "env": prefect_env(pool_name, pool, f"127.0.0.1:{naming.GCS_PORT}"),
        "resources": resources(pool.prefect.resources),
        "volumeMounts": [{"name": naming.RAY_TMP_VOLUME, "mountPath": naming.RAY_TMP_DIR}],
    }


def build_worker_deployment(pool_name: str, namespace: str, pool: PrefectRayPoolSpec) -> Obj:
    """ZeroCapacityNode: Prefect process workers that are also Ray nodes with 0 CPU/GPU."""
    script = entrypoint.zero_capacity_script(
        naming.head_address(pool_name), _worker_command(pool_name, pool)
    )
    container: Obj = {
        "name": naming.PREFECT_WORKER_CONTAINER,
        "image": worker_image(pool),
        "command": ["/bin/sh", "-c", script],
        # The flow runs are subprocesses of this worker: they attach to the local raylet.
        "env": prefect_env(pool_name, pool, "auto"),
        "resources": resources(pool.prefect.resources),
        "readinessProbe": {
            "exec": {"command": ["test", "-S", RAYLET_SOCKET]},
            "periodSeconds": 5,
        },
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": object_metadata(
            naming.worker_deployment(pool_name), namespace, pool_name, COMPONENT
        ),
        "spec": {
            "replicas": pool.prefect.replicas,
            "selector": {"matchLabels": naming.selector(pool_name, COMPONENT)},
            "template": {
                "metadata": pod_metadata(pool_name, pool, COMPONENT),
                "spec": {
                    **pod_settings(pool),
                    "terminationGracePeriodSeconds": 60,
                    "containers": [container],
                },
            },
        },
    }
