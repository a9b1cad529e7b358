"""The Prefect worker: a Deployment of zero-capacity Ray nodes, or a head-pod sidecar."""

from __future__ import annotations

from prefect_raypool_kuberay.contract import SHM_MOUNT, SHM_VOLUME
from prefect_raypool_operator import kinds, naming
from prefect_raypool_operator.builders import entrypoint
from prefect_raypool_operator.builders.common import (
    Obj,
    hardened,
    object_metadata,
    pod_metadata,
    pod_settings,
    prefect_worker_image,
    ray_auth_env,
    resources,
    secret_env,
)
from prefect_raypool_operator.spec import EnvVar, PrefectRayPoolSpec

COMPONENT = "prefect-worker"


def prefect_worker_env(pool_name: str, spec: PrefectRayPoolSpec) -> list[Obj]:
    """Env of a Prefect worker container. Secrets are referenced, never copied."""
    prefect = spec.prefect
    env: list[Obj] = [{"name": "PREFECT_API_URL", "value": prefect.apiUrl}]
    if prefect.apiKey:
        env.append(secret_env("PREFECT_API_KEY", prefect.apiKey.secretKeyRef))
    # The head's GCS, in both placements: Ray attaches a driver to the raylet of the
    # node with the driver's own address (a zero-capacity node has no address file for
    # "auto", and 127.0.0.1 in a sidecar matches no node).
    env.append({"name": "RAY_ADDRESS", "value": naming.head_address(pool_name)})
    env += ray_auth_env(pool_name, spec)
    env += [
        {"name": "PREFECT_RAYPOOL_TASK_NUM_CPUS", "value": str(spec.ray.taskResources.cpu)},
        {"name": "PREFECT_RAYPOOL_TASK_NUM_GPUS", "value": str(spec.ray.taskResources.gpu)},
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
    env += [user_env(e) for e in prefect.env]
    return env


def user_env(var: EnvVar) -> Obj:
    """One of the user's env vars, with only what is set (Kubernetes refuses a
    `valueFrom` beside a `value`, and an empty `valueFrom`)."""
    source = var.valueFrom
    if source is None:
        return {"name": var.name, "value": var.value or ""}
    if source.secretKeyRef is not None:
        return secret_env(var.name, source.secretKeyRef)
    assert source.configMapKeyRef is not None  # the spec holds exactly one
    ref = source.configMapKeyRef
    return {"name": var.name, "valueFrom": {"configMapKeyRef": {"name": ref.name, "key": ref.key}}}


#: Beyond the drain timeout: stopping the flow runs still going, marking them, Ray's stop.
DRAIN_MARGIN_SECONDS = 60
POD_NAME_ENV = "RAYPOOL_POD_NAME"  # drain_worker.py: its name, and its runs' infrastructure_pid


def termination_grace_seconds(spec: PrefectRayPoolSpec) -> int:
    """A worker pod's grace period: its drain timeout, then the margin."""
    return spec.prefect.drain.timeoutSeconds + DRAIN_MARGIN_SECONDS


def _prefect_worker_command(pool_name: str, spec: PrefectRayPoolSpec) -> list[str]:
    drain = spec.prefect.drain
    return entrypoint.draining_worker_command(
        naming.work_pool_name(pool_name, spec),
        spec.prefect.workQueues,
        drain.timeoutSeconds,
        drain.onTimeout.value,
    )


def _pod_name_env() -> Obj:
    return {"name": POD_NAME_ENV, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}


def build_prefect_sidecar_container(pool_name: str, spec: PrefectRayPoolSpec) -> Obj:
    """The Prefect worker container that HeadSidecar adds after the Ray head container."""
    return hardened(
        {
            "name": naming.PREFECT_WORKER_CONTAINER,
            "image": prefect_worker_image(spec),
            "command": entrypoint.shell_command(
                entrypoint.sidecar_script(_prefect_worker_command(pool_name, spec))
            ),
            # KubeRay sets RAY_ADDRESS on container 0 only.
            "env": [*prefect_worker_env(pool_name, spec), _pod_name_env()],
            "resources": resources(spec.prefect.resources),
            "volumeMounts": [{"name": naming.RAY_TMP_VOLUME, "mountPath": naming.RAY_TMP_DIR}],
        }
    )


def build_prefect_worker_deployment(
    pool_name: str, namespace: str, spec: PrefectRayPoolSpec
) -> Obj:
    """ZeroCapacityNode: Prefect process workers that are also Ray nodes with 0 CPU/GPU."""
    script = entrypoint.zero_capacity_script(
        naming.head_address(pool_name), _prefect_worker_command(pool_name, spec)
    )
    container = hardened(
        {
            "name": naming.PREFECT_WORKER_CONTAINER,
            "image": prefect_worker_image(spec),
            "command": entrypoint.shell_command(script),
            # The flow runs are subprocesses of this worker, attached to its raylet.
            "env": [*prefect_worker_env(pool_name, spec), _pod_name_env()],
            "resources": resources(spec.prefect.resources),
            # This node's raylet keeps an object store too.
            "volumeMounts": [SHM_MOUNT],
            "readinessProbe": {
                "exec": {"command": entrypoint.zero_capacity_readiness()},
                "periodSeconds": 5,
            },
        }
    )
    metadata = object_metadata(
        naming.prefect_worker_deployment(pool_name), namespace, pool_name, COMPONENT
    )
    if spec.prefect.replicasManagedExternally:
        # Read by owned.py: replicas are applied only to create the Deployment.
        metadata["annotations"] = {naming.EXTERNAL_REPLICAS_ANNOTATION: "true"}
    return {
        "apiVersion": kinds.DEPLOYMENT.api_version,
        "kind": kinds.DEPLOYMENT.kind,
        "metadata": metadata,
        "spec": {
            "replicas": spec.prefect.replicas,
            "selector": {"matchLabels": naming.selector(pool_name, COMPONENT)},
            # A new pod first; the old one is stopped once it is ready, and drains.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0},
            },
            "template": {
                "metadata": pod_metadata(pool_name, spec, COMPONENT),
                "spec": {
                    **pod_settings(spec),
                    "terminationGracePeriodSeconds": termination_grace_seconds(spec),
                    "containers": [container],
                    "volumes": [SHM_VOLUME],
                },
            },
        },
    }
