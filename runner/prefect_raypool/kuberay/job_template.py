"""The `kuberay` work pool's base job template: the job configuration and its variables.

Follows Prefect's Kubernetes worker: `job_configuration` holds a full RayJob manifest
with `{{ placeholders }}`, `variables` is the schema users fill per pool or deployment.
Editing `job_configuration.rayjob_manifest` in the pool's template is the full override.
"""

from __future__ import annotations

import importlib.metadata
from typing import Any

from prefect.workers.base import BaseJobConfiguration, BaseVariables
from pydantic import Field

#: The image pools run by default (the operator's naming.DEFAULT_IMAGE, without kopf).
DEFAULT_IMAGE = f"prefect-raypool-ray:{importlib.metadata.version('prefect-raypool')}"
DEFAULT_RAY_VERSION = "2.60.0"
GPU_RESOURCE = "nvidia.com/gpu"

#: Restricted Pod Security Standard, as the operator's builders set it.
POD_SECURITY: dict[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "runAsGroup": 100,
    "fsGroup": 100,
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY: dict[str, Any] = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "runAsNonRoot": True,
    "seccompProfile": {"type": "RuntimeDefault"},
}
#: Ray's object store lives in /dev/shm, which a container gets only 64 MiB of.
SHM_VOLUME: dict[str, Any] = {"name": "dshm", "emptyDir": {"medium": "Memory"}}
SHM_MOUNT: dict[str, Any] = {"name": "dshm", "mountPath": "/dev/shm"}


def _placeholder(variable: str) -> str:
    return "{{ " + variable + " }}"


def _resources(cpu: str, memory: str, gpu: str) -> dict[str, Any]:
    amounts = {
        "cpu": _placeholder(cpu),
        "memory": _placeholder(memory),
        # 0 is a valid amount: the pod then asks for no GPU.
        GPU_RESOURCE: _placeholder(gpu),
    }
    return {"requests": dict(amounts), "limits": dict(amounts)}


def _container(name: str, cpu: str, memory: str, gpu: str) -> dict[str, Any]:
    # The worker adds the flow run's env (the API key as a secretKeyRef); KubeRay adds
    # RAY_ADDRESS and the ports.
    return {
        "name": name,
        "image": "{{ image }}",
        "imagePullPolicy": "{{ image_pull_policy }}",
        # Never left to the machine's history (a token file turns auth on): the
        # cluster lives for one flow run and is reached only by its own pods.
        "env": [{"name": "RAY_AUTH_MODE", "value": "disabled"}],
        "resources": _resources(cpu, memory, gpu),
        "volumeMounts": [dict(SHM_MOUNT)],
        "securityContext": dict(CONTAINER_SECURITY),
        # A failed container's last log lines become its termination message.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def _pod_spec(container: dict[str, Any]) -> dict[str, Any]:
    return {
        "serviceAccountName": "{{ service_account_name }}",
        "securityContext": dict(POD_SECURITY),
        "containers": [container],
        "volumes": [dict(SHM_VOLUME)],
        "nodeSelector": "{{ node_selector }}",
        "tolerations": "{{ tolerations }}",
    }


#: The pod that runs `ray job submit` and then follows the driver's logs (KubeRay adds
#: the command). KubeRay's default asks for half a CPU and sets no security context;
#: this one is restricted-PSS and asks for what a log follower needs, bursting to a
#: CPU for the `ray` CLI's start.
SUBMITTER_POD: dict[str, Any] = {
    "spec": {
        "restartPolicy": "Never",
        "serviceAccountName": "{{ service_account_name }}",
        "securityContext": dict(POD_SECURITY),
        "containers": [
            {
                "name": "ray-job-submitter",
                "image": "{{ image }}",
                "imagePullPolicy": "{{ image_pull_policy }}",
                "resources": {
                    "requests": {"cpu": "100m", "memory": "256Mi"},
                    "limits": {"cpu": "1", "memory": "1Gi"},
                },
                "securityContext": dict(CONTAINER_SECURITY),
                "terminationMessagePolicy": "FallbackToLogsOnError",
            }
        ],
    }
}


#: The RayJob every flow run gets. The worker sets name, namespace, labels, the
#: entrypoint (the flow run's command) and env; everything else is templated here.
RAYJOB_MANIFEST: dict[str, Any] = {
    "apiVersion": "ray.io/v1",
    "kind": "RayJob",
    "metadata": {"namespace": "{{ namespace }}", "labels": "{{ labels }}"},
    "spec": {
        # The submitter pod runs `ray job submit`: the flow run is the Ray job's driver,
        # on the head, where RAY_ADDRESS is set, so RayTaskRunner() needs no address.
        "submissionMode": "K8sJobMode",
        "entrypoint": "{{ command }}",
        "shutdownAfterJobFinishes": True,
        "ttlSecondsAfterFinished": "{{ ttl_seconds_after_finished }}",
        "activeDeadlineSeconds": "{{ active_deadline_seconds }}",
        # Prefect retries flow runs; Ray must not run the same flow run twice.
        "backoffLimit": 0,
        "submitterConfig": {"backoffLimit": 0},
        "submitterPodTemplate": SUBMITTER_POD,
        "rayClusterSpec": {
            "rayVersion": "{{ ray_version }}",
            "headGroupSpec": {
                # The worker adds dashboard-host 0.0.0.0 for the submitter.
                "rayStartParams": "{{ head_ray_start_params }}",
                "template": {
                    "spec": _pod_spec(_container("ray-head", "head_cpu", "head_memory", "head_gpu"))
                },
            },
            "workerGroupSpecs": [
                {
                    "groupName": "workers",
                    "replicas": "{{ worker_replicas }}",
                    "minReplicas": "{{ worker_replicas }}",
                    "maxReplicas": "{{ worker_replicas }}",
                    "rayStartParams": "{{ worker_ray_start_params }}",
                    "template": {
                        "spec": _pod_spec(
                            _container("ray-worker", "worker_cpu", "worker_memory", "worker_gpu")
                        )
                    },
                }
            ],
        },
    },
}


class KubeRayJobConfiguration(BaseJobConfiguration):
    """What the worker needs for one flow run, after the template is filled in."""

    namespace: str = Field(default="default")
    rayjob_manifest: dict[str, Any] = Field(
        default_factory=lambda: RAYJOB_MANIFEST,
        json_schema_extra={"template": RAYJOB_MANIFEST},
    )
    api_key_secret_name: str | None = Field(default=None)
    api_key_secret_key: str = Field(default="key")
    watch_interval_seconds: float = Field(default=5.0)
    pod_schedule_timeout_seconds: float = Field(default=300.0)


class KubeRayVariables(BaseVariables):
    """The variables users set on the work pool or per deployment (`job_variables`)."""

    image: str = Field(
        default=DEFAULT_IMAGE,
        description="The image of every Ray pod; the flow's code must be in it.",
        examples=["registry.example/flows:1.0"],
    )
    image_pull_policy: str = Field(
        default="IfNotPresent",
        description="The pods' imagePullPolicy.",
        json_schema_extra={"enum": ["IfNotPresent", "Always", "Never"]},
    )
    namespace: str = Field(default="default", description="Where the RayJob is created.")
    service_account_name: str | None = Field(
        default=None, description="The service account of the Ray pods."
    )
    ray_version: str = Field(default=DEFAULT_RAY_VERSION, description="Ray in the image.")
    head_cpu: str = Field(default="1", description="CPU of the head (the driver runs there).")
    head_memory: str = Field(default="2Gi", description="Memory of the head.")
    worker_cpu: str = Field(default="1", description="CPU of each Ray worker pod.")
    worker_memory: str = Field(default="2Gi", description="Memory of each Ray worker pod.")
    worker_replicas: int = Field(default=1, ge=0, description="Ray worker pods.")
    head_gpu: int = Field(default=0, ge=0, description="GPUs (nvidia.com/gpu) of the head.")
    worker_gpu: int = Field(
        default=0, ge=0, description="GPUs (nvidia.com/gpu) of each Ray worker pod."
    )
    head_ray_start_params: dict[str, str] = Field(
        default_factory=dict,
        description="Extra `ray start` flags of the head (KubeRay rayStartParams).",
        examples=[{"num-cpus": "0"}],
    )
    worker_ray_start_params: dict[str, str] = Field(
        default_factory=dict,
        description="Extra `ray start` flags of each Ray worker (KubeRay rayStartParams).",
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="nodeSelector of every Ray pod."
    )
    tolerations: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Tolerations of every Ray pod (Kubernetes Toleration objects).",
    )
    active_deadline_seconds: int | None = Field(
        default=None,
        gt=0,
        description="KubeRay fails the RayJob (and the flow run crashes) past this.",
    )
    ttl_seconds_after_finished: int = Field(
        default=60,
        ge=0,
        description="Seconds the finished cluster is kept before KubeRay deletes it.",
    )
    api_key_secret_name: str | None = Field(
        default=None,
        description=(
            "Secret holding the Prefect API key, handed to the pods as a secretKeyRef; "
            "the key itself never appears in the RayJob."
        ),
    )
    api_key_secret_key: str = Field(default="key", description="The key in that Secret.")
    watch_interval_seconds: float = Field(
        default=5.0, gt=0, description="How often the worker checks the RayJob and its pods."
    )
    pod_schedule_timeout_seconds: float = Field(
        default=300.0,
        ge=0,
        description=(
            "How long a Ray pod may wait for a node (a cluster autoscaler adding one) "
            "before the flow run crashes as Unschedulable."
        ),
    )


def base_job_template() -> dict[str, Any]:
    from prefect_raypool.kuberay.worker import KubeRayWorker

    return KubeRayWorker.get_default_base_job_template()
