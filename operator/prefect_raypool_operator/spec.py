"""The PrefectRayPool spec and status as pydantic models: the single source of truth.

These models validate input in the operator, generate the CRD's OpenAPI schema
(`crd.py`) and the field table in docs/operator.md (`fieldtable.py`). Cross-field
rules are written twice on purpose, side by side: as a CEL rule the API server
enforces at `kubectl apply` (the `x-kubernetes-validations` extra) and as a
pydantic validator that enforces the same rule for `raypool render`.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, model_validator

DEFAULT_RAY_VERSION = "2.60.0"
DNS_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
QUANTITY = r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"

# A CPU count: an integer (2) or a Kubernetes quantity string ("500m").
CPU = Annotated[
    int | str,
    WithJsonSchema({"x-kubernetes-int-or-string": True}),
    Field(description="CPU as an integer or a Kubernetes quantity such as '500m'."),
]
Memory = Annotated[str, Field(pattern=QUANTITY, description="Memory quantity such as '2Gi'.")]


def cel(rule: str, message: str, field_path: str | None = None) -> dict[str, str]:
    """One `x-kubernetes-validations` entry."""
    entry = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    return entry


def cel_rules(*rules: dict[str, str]) -> dict[str, Any]:
    return {"x-kubernetes-validations": list(rules)}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Placement(StrEnum):
    """Where the flow's driver (the Prefect worker and its flow runs) lives."""

    ZERO_CAPACITY_NODE = "ZeroCapacityNode"
    HEAD_SIDECAR = "HeadSidecar"
    EPHEMERAL = "Ephemeral"


class RayAuthMode(StrEnum):
    TOKEN = "token"
    DISABLED = "disabled"


class KeyRef(_Model):
    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", max_length=253)
    key: str = Field(min_length=1)


class SecretKeyRef(KeyRef):
    """A key of a Secret in the pool's namespace. Its value never enters the spec."""


class ConfigMapKeyRef(KeyRef):
    """A key of a ConfigMap in the pool's namespace."""


class SecretReference(_Model):
    secretKeyRef: SecretKeyRef = Field(description="The Secret and key holding the value.")


class Resources(_Model):
    """Container resources; requests equal limits."""

    cpu: CPU = 1
    memory: Memory = "2Gi"
    gpu: int = Field(default=0, ge=0, description="GPUs (nvidia.com/gpu) per pod.")


class WorkerResources(Resources):
    """Resources of the Prefect worker container; requests equal limits."""

    cpu: CPU = "500m"
    memory: Memory = "1Gi"


class HeadSpec(_Model):
    resources: Resources = Field(
        default_factory=Resources, description="Resources of the Ray head container."
    )
    rayStartParams: dict[str, str] = Field(
        default_factory=dict,
        description="Extra `ray start` flags for the head (KubeRay rayStartParams).",
    )


class WorkerGroup(_Model):
    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            cel(
                "!has(self.maxReplicas) || self.minReplicas <= self.maxReplicas",
                "minReplicas must not exceed maxReplicas",
                ".minReplicas",
            ),
            cel(
                "self.replicas >= self.minReplicas",
                "replicas must be at least minReplicas",
                ".replicas",
            ),
            cel(
                "!has(self.maxReplicas) || self.replicas <= self.maxReplicas",
                "replicas must not exceed maxReplicas",
                ".replicas",
            ),
        )
    )

    name: str = Field(
        pattern=DNS_LABEL, max_length=15, description="Worker group name (a DNS label)."
    )
    replicas: int = Field(default=1, ge=0, description="Ray worker pods to start with.")
    minReplicas: int = Field(default=0, ge=0, description="Lower bound for the autoscaler.")
    maxReplicas: int | None = Field(
        default=None, ge=0, description="Upper bound for the autoscaler; defaults to replicas."
    )
    resources: Resources = Field(default_factory=Resources, description="Resources per pod.")
    rayStartParams: dict[str, str] = Field(
        default_factory=dict, description="Extra `ray start` flags for this group."
    )

    @model_validator(mode="after")
    def _bounds(self) -> WorkerGroup:
        if self.maxReplicas is not None and self.minReplicas > self.maxReplicas:
            raise ValueError("minReplicas must not exceed maxReplicas")
        if self.replicas < self.minReplicas:
            raise ValueError("replicas must be at least minReplicas")
        if self.maxReplicas is not None and self.replicas > self.maxReplicas:
            raise ValueError("replicas must not exceed maxReplicas")
        return self


class Autoscaling(_Model):
    enabled: bool = Field(default=False, description="Run KubeRay's in-tree Ray autoscaler.")
    idleTimeoutSeconds: int = Field(
        default=60, ge=0, description="Seconds before an idle worker is removed."
    )


class RayAuth(_Model):
    mode: RayAuthMode = Field(
        default=RayAuthMode.TOKEN,
        description="Ray token authentication; set as RAY_AUTH_MODE on every pod.",
    )
    secretKeyRef: SecretKeyRef | None = Field(
        default=None,
        description="The cluster's token. When absent and mode is token, the operator "
        "creates a Secret `<pool>-ray-token` owned by the pool.",
    )


class TaskResources(_Model):
    cpu: float = Field(default=1, ge=0, description="CPUs each Ray task requests by default.")
    gpu: int = Field(default=0, ge=0, description="GPUs each Ray task requests by default.")


def _default_worker_groups() -> list[WorkerGroup]:
    return [WorkerGroup(name="workers")]


class RaySpec(_Model):
    version: str = Field(
        default=DEFAULT_RAY_VERSION,
        pattern=r"^[0-9]+\.[0-9]+\.[0-9]+$",
        description="Ray version (KubeRay rayVersion); images must carry this version.",
    )
    image: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "Image of the Ray pods and (unless prefect.image) the Prefect worker; defaults to "
            "prefect-raypool-ray:<operator version> (Ray, Prefect and prefect-raypool). "
            "Flow images are built FROM it."
        ),
    )
    head: HeadSpec = Field(default_factory=HeadSpec, description="The Ray head.")
    workerGroups: list[WorkerGroup] = Field(
        default_factory=_default_worker_groups,
        max_length=16,
        description="Ray worker groups.",
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["name"],
            # Complete (CEL rules see a default as is, before nested defaulting).
            "default": [{"name": "workers", "replicas": 1, "minReplicas": 0}],
        },
    )
    autoscaling: Autoscaling = Field(default_factory=Autoscaling, description="Ray autoscaler.")
    auth: RayAuth = Field(default_factory=RayAuth, description="Ray token authentication.")
    taskResources: TaskResources = Field(
        default_factory=TaskResources,
        description="Default Ray resources per Prefect task (PREFECT_RAYPOOL_TASK_* env).",
    )


class EnvVarSource(_Model):
    secretKeyRef: SecretKeyRef | None = None
    configMapKeyRef: ConfigMapKeyRef | None = None


class EnvVar(_Model):
    name: str = Field(pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$", description="Variable name.")
    value: str | None = Field(default=None, description="A literal value (not for secrets).")
    valueFrom: EnvVarSource | None = Field(
        default=None, description="A Secret or ConfigMap key, for anything secret."
    )


class WorkPool(_Model):
    name: str | None = Field(
        default=None,
        min_length=1,
        description="Prefect work pool name; defaults to the pool's name.",
    )
    concurrencyLimit: int | None = Field(
        default=None, ge=0, description="Work pool concurrency limit, kept in line by the operator."
    )


class ResultStorage(_Model):
    persistByDefault: bool = Field(default=False, description="PREFECT_RESULTS_PERSIST_BY_DEFAULT.")
    storageBlock: str | None = Field(
        default=None, description="PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK, e.g. 's3-bucket/results'."
    )
    localStoragePath: str | None = Field(
        default=None, description="PREFECT_RESULTS_LOCAL_STORAGE_PATH."
    )


class PrefectSpec(_Model):
    apiUrl: str = Field(
        pattern=r"^https?://.+", description="PREFECT_API_URL the worker and operator use."
    )
    apiKey: SecretReference | None = Field(
        default=None, description="PREFECT_API_KEY, by Secret reference only (never a literal)."
    )
    workPool: WorkPool = Field(default_factory=WorkPool, description="The Prefect work pool.")
    workQueues: list[str] = Field(
        default_factory=list, description="Work queues the worker polls (all when empty)."
    )
    image: str | None = Field(
        default=None,
        min_length=1,
        description="Worker image (needs prefect and ray); defaults to the Ray image.",
    )
    replicas: int = Field(default=1, ge=0, description="Prefect worker pods (ZeroCapacityNode).")
    resources: WorkerResources = Field(
        default_factory=WorkerResources,
        description="Resources of the Prefect worker container.",
    )
    env: list[EnvVar] = Field(default_factory=list, description="Extra worker env vars.")
    resultStorage: ResultStorage = Field(
        default_factory=ResultStorage, description="Where flow results go."
    )


class Toleration(_Model):
    key: str | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    tolerationSeconds: int | None = None


class LocalObjectReference(_Model):
    name: str


class PodSettings(_Model):
    nodeSelector: dict[str, str] = Field(
        default_factory=dict, description="Node labels every pod must match."
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, description="Tolerations of every pod (Kubernetes shape)."
    )
    serviceAccountName: str | None = Field(
        default=None, description="Service account of every pod."
    )
    imagePullSecrets: list[LocalObjectReference] = Field(
        default_factory=list, description="Secrets for pulling the images."
    )
    labels: dict[str, str] = Field(default_factory=dict, description="Added to every pod.")
    annotations: dict[str, str] = Field(default_factory=dict, description="Added to every pod.")


class NetworkPolicySpec(_Model):
    enabled: bool = Field(
        default=True,
        description="A NetworkPolicy `<pool>-ray-head`: the Ray head accepts only the pool's "
        "own pods and (GCS, client, dashboard ports) the operator's.",
    )


class PrefectRayPoolSpec(_Model):
    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            cel(
                "self.placement != 'HeadSidecar' || self.prefect.replicas <= 1",
                "HeadSidecar runs one Prefect worker beside the one Ray head: "
                "set prefect.replicas to 1 or use ZeroCapacityNode",
                ".prefect.replicas",
            ),
            cel(
                "self.ray.taskResources.gpu == 0 || "
                "self.ray.workerGroups.exists(g, g.resources.gpu >= self.ray.taskResources.gpu)",
                "ray.taskResources.gpu asks for more GPUs than any worker group has: "
                "add a worker group with resources.gpu at least that large",
                ".ray.taskResources.gpu",
            ),
        )
    )

    placement: Placement = Field(
        default=Placement.ZERO_CAPACITY_NODE,
        description="Where the driver runs: ZeroCapacityNode, HeadSidecar or Ephemeral.",
    )
    ray: RaySpec = Field(default_factory=RaySpec, description="The KubeRay RayCluster.")
    prefect: PrefectSpec = Field(description="The Prefect worker and work pool.")
    pod: PodSettings = Field(
        default_factory=PodSettings, description="Settings applied to every generated pod."
    )
    networkPolicy: NetworkPolicySpec = Field(
        default_factory=NetworkPolicySpec, description="Who may reach the Ray head."
    )

    @model_validator(mode="after")
    def _cross_field(self) -> PrefectRayPoolSpec:
        if self.placement == Placement.HEAD_SIDECAR and self.prefect.replicas > 1:
            raise ValueError("HeadSidecar runs one Prefect worker: set prefect.replicas to 1")
        gpu = self.ray.taskResources.gpu
        if gpu and not any(g.resources.gpu >= gpu for g in self.ray.workerGroups):
            raise ValueError("ray.taskResources.gpu asks for more GPUs than any worker group has")
        return self


class Phase(StrEnum):
    """The pool's phase, the status's one-word summary."""

    PENDING = "Pending"  # waiting on something outside the spec (a Secret, KubeRay)
    PROVISIONING = "Provisioning"
    READY = "Ready"
    DEGRADED = "Degraded"  # Ray is up but the Prefect side is not, or a container cannot run
    FAILED = "Failed"  # only a spec change helps


class Condition(_Model):
    type: str
    status: str = Field(pattern=r"^(True|False|Unknown)$")
    reason: str = ""
    message: str = ""
    lastTransitionTime: str | None = None
    observedGeneration: int | None = None


class PrefectRayPoolStatus(_Model):
    observedGeneration: int | None = None
    # A plain string in the CRD: an enum there would change the published schema.
    phase: Annotated[Phase, WithJsonSchema({"type": "string"})] | None = Field(
        default=None, description="Pending, Provisioning, Ready, Degraded, Failed."
    )
    conditions: list[Condition] = Field(default_factory=list)
    rayCluster: str | None = None
    headService: str | None = None
    dashboardURL: str | None = None
    readyWorkerReplicas: int | None = None
    readyPrefectWorkers: int | None = None
    workPool: str | None = None


NAME_MAX = 40
NAME_RULE = cel(
    f"self.metadata.name.size() <= {NAME_MAX} && self.metadata.name.matches('{DNS_LABEL}')",
    f"metadata.name must be a DNS-1035 label of at most {NAME_MAX} characters "
    "(lowercase letters, digits and '-', starting with a letter): it names the RayCluster, "
    "its '<name>-head-svc' service and the worker Deployment",
)


def name_problem(name: str) -> str | None:
    """The same rule as NAME_RULE, for `raypool render` and the operator."""
    if len(name) > NAME_MAX or not re.match(DNS_LABEL, name):
        return NAME_RULE["message"]
    return None
