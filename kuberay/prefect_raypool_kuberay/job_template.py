"""The `kuberay` work pool's base job template: the job configuration and its variables.

Follows Prefect's Kubernetes worker: `job_configuration` holds a full RayJob manifest
with `{{ placeholders }}`, `variables` is the schema users fill per pool or deployment.
Editing `job_configuration.rayjob_manifest` in the pool's template is the full override.

No Prefect here (pydantic only): the operator, whose image has no Prefect, gives each
Ephemeral pool's work pool this template (`base_job_template()`). worker.py's Prefect
classes inherit the fields declared here.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from prefect_raypool_kuberay.contract import (
    CONTAINER_SECURITY,
    DEFAULT_IMAGE,
    DEFAULT_RAY_VERSION,
    GPU_RESOURCE,
    POD_SECURITY,
    SHM_MOUNT,
    SHM_VOLUME,
)


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
        # Ray auth is the cluster's (rayClusterSpec.authOptions): KubeRay sets
        # RAY_AUTH_MODE and the token on each container.
        "env": [],
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
            # A token per flow run: KubeRay makes it (a Secret the cluster owns), hands it
            # to every pod and the submitter, and sends it when it reads the job's status.
            "authOptions": {"mode": "token"},
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


#: The job configuration's fields that every Prefect worker has (BaseJobConfiguration's).
PREFECT_JOB_FIELDS = ("command", "env", "labels", "name")


class RayJobFields(BaseModel):
    """What the worker needs for one flow run beyond Prefect's own job fields, after
    the template is filled in (worker.KubeRayJobConfiguration)."""

    namespace: str = Field(default="default")
    rayjob_manifest: dict[str, Any] = Field(
        default_factory=lambda: RAYJOB_MANIFEST,
        json_schema_extra={"template": RAYJOB_MANIFEST},
    )
    api_key_secret_name: str | None = Field(default=None)
    api_key_secret_key: str = Field(default="key")
    watch_interval_seconds: float = Field(default=5.0)
    pod_schedule_timeout_seconds: float = Field(default=300.0)
    cluster_start_timeout_seconds: float = Field(default=600.0)


class PrefectVariables(BaseModel):
    """The variables every Prefect worker has, as prefect.workers.base.BaseVariables
    declares them (tests/kuberay/test_pure.py holds the two equal)."""

    name: str | None = Field(
        default=None,
        description="Name given to infrastructure created by a worker.",
    )
    env: dict[str, str | None] = Field(
        default_factory=dict,
        title="Environment Variables",
        description="Environment variables to set when starting a flow run.",
    )
    labels: dict[str, str] = Field(
        default_factory=dict,
        description="Labels applied to infrastructure created by a worker.",
    )
    command: str | None = Field(
        default=None,
        description=(
            "The command to use when starting a flow run. "
            "In most cases, this should be left blank and the command "
            "will be automatically generated by the worker."
        ),
    )


class RayJobVariables(BaseModel):
    """The `kuberay` worker's variables beyond Prefect's own (worker.KubeRayVariables)."""

    # The schema's description (Prefect shows it), the same in every subclass.
    model_config = ConfigDict(
        json_schema_extra={
            "description": "The variables users set on the work pool or per deployment "
            "(`job_variables`)."
        }
    )

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
    cluster_start_timeout_seconds: float = Field(
        default=600.0,
        gt=0,
        description=(
            "How long after the RayJob is created its Ray head pod may not exist yet "
            "(a quota or an admission webhook refusing it) before the flow run crashes."
        ),
    )


class TemplateVariables(RayJobVariables, PrefectVariables):
    """All the variables, Prefect's first (pydantic lists the last base's fields
    first), as worker.KubeRayVariables has them."""


def base_job_template() -> dict[str, Any]:
    """What `KubeRayWorker.get_default_base_job_template()` returns, built the way
    Prefect builds it, without Prefect; a new one each call, the caller's to change."""
    fields = RayJobFields.model_json_schema()["properties"]
    job_configuration = {name: _placeholder(name) for name in PREFECT_JOB_FIELDS} | {
        name: field.get("template") or _placeholder(name) for name, field in fields.items()
    }
    # Prefect's BaseVariables.model_json_schema: no title, no additionalProperties.
    variables = TemplateVariables.model_json_schema(ref_template="#/definitions/{model}")
    for key in ("title", "additionalProperties"):
        variables.pop(key, None)
    return copy.deepcopy({"job_configuration": job_configuration, "variables": variables})
