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

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    StrictBool,
    StrictFloat,
    StrictInt,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from prefect_raypool_kuberay.contract import DEFAULT_RAY_VERSION
from prefect_raypool_kuberay.policy import POLICY_ENV
from prefect_raypool_operator import syntax

DNS_LABEL = syntax.DNS_LABEL
INT32_MAX = syntax.INT32_MAX


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


def _check(pattern: str, message: str) -> AfterValidator:
    """The pydantic twin of a CEL `matches()` rule or a pattern, with its message."""

    def check(value: str) -> str:
        if not syntax.matches(pattern, value):
            raise ValueError(message)
        return value

    return AfterValidator(check)


def _pattern(pattern: str) -> dict[str, Any]:
    """A pattern for the CRD only; pydantic checks it through `_check`, whose message
    says what is expected (not the regular expression)."""
    return {"pattern": pattern}


def _not_negative(value: int | str) -> int | str:
    if (value < 0) if isinstance(value, int) else value.startswith("-"):
        raise ValueError(NOT_NEGATIVE["message"])
    return value


def _cpu(value: Any) -> int | str:
    """int-or-string: an integer, or a string matching the quantity syntax."""
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value <= INT32_MAX:
            raise ValueError(f"must be 0 to {INT32_MAX}, or {QUANTITY_HELP}")
        return value
    if isinstance(value, str) and syntax.matches(syntax.QUANTITY, value):
        return _not_negative(value)
    raise ValueError(f"must be {QUANTITY_HELP}")


def _map_rules(key_pattern: str, key_message: str, max_key: int) -> dict[str, Any]:
    """A CEL rule over a map's keys (the CRD has no pattern for keys)."""
    rule = (
        f"self.all(k, k.size() <= {max_key} && k.matches(r'{key_pattern}') && "
        f"k.indexOf('/') <= {syntax.PREFIX_MAX})"
    )
    return {"maxProperties": 64, **cel_rules(cel(rule, key_message))}


def _keys_match(pattern: str, message: str, max_key: int) -> AfterValidator:
    def check(value: dict[str, str]) -> dict[str, str]:
        bad = [
            k
            for k in value
            if len(k) > max_key or not syntax.matches(pattern, k) or k.find("/") > syntax.PREFIX_MAX
        ]
        if bad:
            raise ValueError(f"{message} (not {bad[0]!r})")
        if len(value) > 64:
            raise ValueError("at most 64 entries")
        return value

    return AfterValidator(check)


NOT_NEGATIVE = cel(
    "type(self) != string || !self.startsWith('-')",
    "must not be negative: a Kubernetes quantity such as 500m, 2 or 1.5Gi",
)
QUANTITY_HELP = "a Kubernetes quantity such as 500m, 2 or 1.5Gi"
# A CPU count: an integer (2) or a Kubernetes quantity string ("500m").
CPU = Annotated[
    int | str,
    PlainValidator(_cpu),
    WithJsonSchema(
        {
            "x-kubernetes-int-or-string": True,
            "pattern": syntax.QUANTITY,
            "minimum": 0,
            "maximum": INT32_MAX,
            **cel_rules(NOT_NEGATIVE),
        }
    ),
    Field(description="CPU as an integer or a Kubernetes quantity such as '500m'."),
]
Memory = Annotated[
    str,
    Field(
        max_length=64,
        description="Memory quantity such as '2Gi'.",
        json_schema_extra={**_pattern(syntax.QUANTITY), **cel_rules(NOT_NEGATIVE)},
    ),
    _check(syntax.QUANTITY, f"must be {QUANTITY_HELP}"),
    AfterValidator(_not_negative),
]
Int32 = Annotated[StrictInt, Field(ge=0, le=INT32_MAX)]
Image = Annotated[
    str,
    Field(min_length=1, max_length=512, json_schema_extra=_pattern(syntax.IMAGE)),
    _check(
        syntax.IMAGE,
        "must be an image reference: [registry[:port]/]lowercase/path[:tag][@digest]",
    ),
]
SUBDOMAIN_HELP = (
    "must be a DNS-1123 subdomain: lowercase letters, digits, '-' and '.', "
    "starting and ending alphanumeric"
)
Subdomain = Annotated[
    str,
    Field(min_length=1, max_length=253, json_schema_extra=_pattern(syntax.DNS_SUBDOMAIN)),
    _check(syntax.DNS_SUBDOMAIN, SUBDOMAIN_HELP),
]
QUALIFIED_KEYS = (
    "keys must be qualified names: an optional DNS-subdomain prefix and '/', then "
    "at most 63 letters, digits, '-', '_' or '.', starting and ending alphanumeric"
)
# Maps keyed by qualified names (labels, annotations, node selectors): the same key
# rule at the API server (CEL) and offline.
_QUALIFIED_KEY_RULES = (
    Field(
        json_schema_extra=_map_rules(
            syntax.QUALIFIED_NAME, QUALIFIED_KEYS, syntax.QUALIFIED_NAME_MAX
        )
    ),
    _keys_match(syntax.QUALIFIED_NAME, QUALIFIED_KEYS, syntax.QUALIFIED_NAME_MAX),
)
QualifiedNameMap = Annotated[dict[str, str], *_QUALIFIED_KEY_RULES]
LabelValue = Annotated[
    str,
    Field(max_length=63, json_schema_extra=_pattern(syntax.LABEL_VALUE)),
    _check(
        syntax.LABEL_VALUE,
        "must be a label value: empty or letters, digits, '-', '_' or '.', "
        "starting and ending alphanumeric",
    ),
]
LabelMap = Annotated[dict[str, LabelValue], *_QUALIFIED_KEY_RULES]
RayStartParams = Annotated[
    dict[str, Annotated[str, Field(max_length=1024, pattern=syntax.ONE_LINE)]],
    Field(
        json_schema_extra=_map_rules(
            syntax.RAY_START_PARAM,
            "keys are `ray start` flags without the dashes, such as num-cpus",
            63,
        )
    ),
    _keys_match(
        syntax.RAY_START_PARAM,
        "keys are `ray start` flags without the dashes, such as num-cpus",
        63,
    ),
]


class Placement(StrEnum):
    """Where the flow's driver (the Prefect worker and its flow runs) lives."""

    ZERO_CAPACITY_NODE = "ZeroCapacityNode"
    HEAD_SIDECAR = "HeadSidecar"
    EPHEMERAL = "Ephemeral"


class DrainTimeoutPolicy(StrEnum):
    """What a replaced Prefect worker does with flow runs still running at its drain
    timeout."""

    CRASH = "Crash"
    RESCHEDULE = "Reschedule"


class WorkerDrain(_Model):
    """How a Prefect worker pod that is being replaced (a rollout, a deleted pod, a
    placement switch) ends: it takes no new flow runs and lets its running ones finish."""

    timeoutSeconds: Int32 = Field(
        default=3600,
        description="How long a replaced worker waits for its running flow runs to finish; "
        "its pod's terminationGracePeriodSeconds follows it.",
    )
    onTimeout: DrainTimeoutPolicy = Field(
        default=DrainTimeoutPolicy.CRASH,
        description="Flow runs still running at the timeout: Crash (stopped and marked "
        "Crashed, so the user's retries or automations apply) or Reschedule (stopped and "
        "set back to Scheduled, so a new worker runs them again from the start).",
    )


class RayAuthMode(StrEnum):
    TOKEN = "token"
    DISABLED = "disabled"


class KeyRef(_Model):
    name: Subdomain
    key: str = Field(min_length=1, max_length=253, pattern=syntax.CONFIG_KEY)


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
    gpu: Int32 = Field(default=0, description="GPUs (nvidia.com/gpu) per pod.")


class WorkerResources(Resources):
    """Resources of the Prefect worker container; requests equal limits."""

    cpu: CPU = "500m"
    memory: Memory = "1Gi"


class HeadSpec(_Model):
    resources: Resources = Field(
        default_factory=Resources, description="Resources of the Ray head container."
    )
    rayStartParams: RayStartParams = Field(
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
    replicas: Int32 = Field(default=1, description="Ray worker pods to start with.")
    minReplicas: Int32 = Field(default=0, description="Lower bound for the autoscaler.")
    maxReplicas: Int32 | None = Field(
        default=None, description="Upper bound for the autoscaler; defaults to replicas."
    )
    podsPerFlowRun: Int32 = Field(
        default=1,
        description=(
            "With the autoscaler on: Ray worker pods this group is raised to per flow run "
            "that is due, pending or running in the work pool, within minReplicas and "
            "maxReplicas, ahead of Ray's own demand; 0 leaves the group to the autoscaler."
        ),
    )
    resources: Resources = Field(default_factory=Resources, description="Resources per pod.")
    rayStartParams: RayStartParams = Field(
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


class AutoscalerResources(_Model):
    """The autoscaler container's resources; requests equal limits. Both required: no
    defaults, so the API server fills in nothing and KubeRay's own apply when unset."""

    cpu: CPU
    memory: Memory


class Autoscaling(_Model):
    enabled: StrictBool = Field(default=False, description="Run KubeRay's in-tree Ray autoscaler.")
    idleTimeoutSeconds: Int32 = Field(
        default=60, description="Seconds before an idle worker is removed."
    )
    resources: AutoscalerResources | None = Field(
        default=None,
        description=(
            "Resources of the autoscaler container in the head pod; unset: KubeRay's "
            "(500m CPU, 512Mi)."
        ),
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
    cpu: StrictFloat = Field(
        default=1, ge=0, le=INT32_MAX, description="CPUs each Ray task requests by default."
    )
    gpu: Int32 = Field(default=0, description="GPUs each Ray task requests by default.")


class RayUpdateType(StrEnum):
    DRAIN_THEN_REPLACE = "DrainThenReplace"
    ON_DELETE = "OnDelete"


class RayUpdateStrategy(_Model):
    type: RayUpdateType = Field(
        default=RayUpdateType.DRAIN_THEN_REPLACE,
        description="DrainThenReplace: Ray pods that run an older spec (image, version, "
        "head settings), which KubeRay does not restart, are replaced once the "
        "Prefect workers have drained (their flow runs finish; new ones wait meanwhile). "
        "OnDelete: they are only reported (RayPodsOutdated) until someone deletes them.",
    )
    progressDeadlineSeconds: StrictInt = Field(
        default=600,
        ge=30,
        le=INT32_MAX,
        description="DrainThenReplace: how long the new Ray head may take to become ready "
        "after the old pods were replaced; past it the RayCluster goes back to the spec "
        "it ran before the change (status.rayRollback) and the Prefect workers resume "
        "on it, until the spec changes again.",
    )


def _default_worker_groups() -> list[WorkerGroup]:
    return [WorkerGroup(name="workers")]


class RaySpec(_Model):
    version: str = Field(
        default=DEFAULT_RAY_VERSION,
        pattern=r"^[0-9]+\.[0-9]+\.[0-9]+$",
        description="Ray version (KubeRay rayVersion); images must carry this version.",
    )
    image: Image | None = Field(
        default=None,
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

    @field_validator("workerGroups")
    @classmethod
    def _unique_groups(cls, groups: list[WorkerGroup]) -> list[WorkerGroup]:
        # The twin of the list-map key: the API server refuses a duplicate name.
        seen: set[str] = set()
        for i, group in enumerate(groups):
            if group.name in seen:
                raise ValueError(f"[{i}]: Duplicate value: name {group.name!r} is used twice")
            seen.add(group.name)
        return groups

    autoscaling: Autoscaling = Field(default_factory=Autoscaling, description="Ray autoscaler.")
    auth: RayAuth = Field(default_factory=RayAuth, description="Ray token authentication.")
    taskResources: TaskResources = Field(
        default_factory=TaskResources,
        description="Default Ray resources per Prefect task (PREFECT_RAYPOOL_TASK_* env).",
    )
    updateStrategy: RayUpdateStrategy = Field(
        default_factory=RayUpdateStrategy,
        description="How Ray pods made from an older spec are replaced.",
    )


ONE_SOURCE = "set exactly one of secretKeyRef or configMapKeyRef"
ONE_VALUE = "set exactly one of value (a literal) or valueFrom (a Secret or ConfigMap key)"


class EnvVarSource(_Model):
    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            cel("has(self.secretKeyRef) != has(self.configMapKeyRef)", ONE_SOURCE)
        )
    )

    secretKeyRef: SecretKeyRef | None = None
    configMapKeyRef: ConfigMapKeyRef | None = None

    @model_validator(mode="after")
    def _one_source(self) -> EnvVarSource:
        if (self.secretKeyRef is None) == (self.configMapKeyRef is None):
            raise ValueError(ONE_SOURCE)
        return self


class EnvVar(_Model):
    model_config = ConfigDict(
        json_schema_extra=cel_rules(cel("has(self.value) != has(self.valueFrom)", ONE_VALUE))
    )

    name: str = Field(
        pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$", max_length=253, description="Variable name."
    )
    value: str | None = Field(default=None, description="A literal value (not for secrets).")
    valueFrom: EnvVarSource | None = Field(
        default=None, description="A Secret or ConfigMap key, for anything secret."
    )

    @model_validator(mode="after")
    def _one_value(self) -> EnvVar:
        if (self.value is None) == (self.valueFrom is None):
            raise ValueError(ONE_VALUE)
        return self


PrefectName = Annotated[
    str,
    Field(min_length=1, max_length=100, json_schema_extra=_pattern(syntax.PREFECT_NAME)),
    _check(syntax.PREFECT_NAME, "must not contain whitespace or any of / % & < > # ? \\"),
]


class WorkPool(_Model):
    name: PrefectName | None = Field(
        default=None, description="Prefect work pool name; defaults to the pool's name."
    )
    concurrencyLimit: Int32 | None = Field(
        default=None, description="Work pool concurrency limit, kept in line by the operator."
    )


OneLine = Annotated[str, Field(max_length=1024, pattern=syntax.ONE_LINE)]


class ResultStorage(_Model):
    persistByDefault: StrictBool = Field(
        default=False, description="PREFECT_RESULTS_PERSIST_BY_DEFAULT."
    )
    storageBlock: OneLine | None = Field(
        default=None, description="PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK, e.g. 's3-bucket/results'."
    )
    localStoragePath: OneLine | None = Field(
        default=None, description="PREFECT_RESULTS_LOCAL_STORAGE_PATH."
    )


#: Set by the operator on every Prefect worker, from the fields named here.
OPERATOR_ENV = {
    "PREFECT_API_URL": "prefect.apiUrl",
    "PREFECT_API_KEY": "prefect.apiKey",
    "RAY_ADDRESS": "the pool's head service",
    "RAY_AUTH_MODE": "ray.auth.mode",
    "RAY_AUTH_TOKEN": "ray.auth.secretKeyRef",
    "PREFECT_RAYPOOL_TASK_NUM_CPUS": "ray.taskResources.cpu",
    "PREFECT_RAYPOOL_TASK_NUM_GPUS": "ray.taskResources.gpu",
    "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "prefect.resultStorage.persistByDefault",
    "PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK": "prefect.resultStorage.storageBlock",
    "PREFECT_RESULTS_LOCAL_STORAGE_PATH": "prefect.resultStorage.localStoragePath",
    POLICY_ENV: "jobVariables",
}
OPERATOR_ENV_MESSAGE = (
    "names the operator sets (PREFECT_API_URL, PREFECT_API_KEY, RAY_ADDRESS, RAY_AUTH_*, "
    f"PREFECT_RAYPOOL_TASK_*, PREFECT_RESULTS_*, {POLICY_ENV}) come from their spec fields: "
    "remove them from env"
)


class PrefectSpec(_Model):
    apiUrl: str = Field(
        max_length=2048,
        description="PREFECT_API_URL the worker and operator use.",
        json_schema_extra={
            **_pattern(syntax.URL_SHAPE),
            **cel_rules(cel(syntax.URL_RULE, syntax.URL_MESSAGE)),
        },
    )

    @field_validator("env")
    @classmethod
    def _env_names(cls, env: list[EnvVar]) -> list[EnvVar]:
        seen: set[str] = set()
        for i, var in enumerate(env):
            if var.name in OPERATOR_ENV:
                raise ValueError(
                    f"[{i}]: {var.name} is set from spec.{OPERATOR_ENV[var.name]}: remove it"
                )
            if var.name in seen:
                raise ValueError(f"[{i}]: Duplicate value: name {var.name!r} is used twice")
            seen.add(var.name)
        return env

    @field_validator("apiUrl")
    @classmethod
    def _url(cls, value: str) -> str:
        problem = syntax.url_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    apiKey: SecretReference | None = Field(
        default=None, description="PREFECT_API_KEY, by Secret reference only (never a literal)."
    )
    workPool: WorkPool = Field(default_factory=WorkPool, description="The Prefect work pool.")
    workQueues: list[PrefectName] = Field(
        default_factory=list,
        max_length=64,
        description="Work queues the worker polls (all when empty).",
    )
    image: Image | None = Field(
        default=None,
        description="Worker image (needs prefect and ray); defaults to the Ray image.",
    )
    replicas: Int32 = Field(default=1, description="Prefect worker pods (ZeroCapacityNode).")
    replicasManagedExternally: StrictBool = Field(
        default=False,
        description="Leave the worker Deployment's replicas to an HPA or `kubectl scale`: "
        "the operator stops setting them, and prefect.replicas is only the count a new "
        "Deployment starts with (ZeroCapacityNode).",
    )
    resources: WorkerResources = Field(
        default_factory=WorkerResources,
        description="Resources of the Prefect worker container.",
    )
    env: list[EnvVar] = Field(
        default_factory=list,
        max_length=128,
        description="Extra worker env vars.",
        json_schema_extra={
            # Server-side apply refuses a Deployment whose env repeats a name.
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["name"],
            **cel_rules(
                cel(f"self.all(e, !(e.name in {list(OPERATOR_ENV)}))", OPERATOR_ENV_MESSAGE)
            ),
        },
    )
    resultStorage: ResultStorage = Field(
        default_factory=ResultStorage, description="Where flow results go."
    )
    drain: WorkerDrain = Field(
        default_factory=WorkerDrain,
        description="How a replaced Prefect worker lets its running flow runs finish "
        "(ZeroCapacityNode, HeadSidecar).",
    )


TOLERATION_EXISTS = "operator Exists matches any value: remove value"
TOLERATION_KEY = "an empty key matches every taint only with operator Exists: set key"
TOLERATION_SECONDS = "tolerationSeconds applies to effect NoExecute only: set that effect"


class Toleration(_Model):
    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            cel(
                "!has(self.operator) || self.operator != 'Exists' || "
                "!has(self.value) || self.value == ''",
                TOLERATION_EXISTS,
            ),
            cel(
                "(has(self.key) && self.key != '') || "
                "(has(self.operator) && self.operator == 'Exists')",
                TOLERATION_KEY,
            ),
            cel(
                "!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
                TOLERATION_SECONDS,
            ),
        )
    )

    key: str | None = Field(
        default=None, max_length=syntax.QUALIFIED_NAME_MAX, pattern=syntax.QUALIFIED_NAME
    )
    operator: Literal["Exists", "Equal"] | None = None
    value: LabelValue | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    tolerationSeconds: StrictInt | None = None

    @model_validator(mode="after")
    def _kubernetes_rules(self) -> Toleration:
        if self.operator == "Exists" and self.value:
            raise ValueError(TOLERATION_EXISTS)
        if not self.key and self.operator != "Exists":
            raise ValueError(TOLERATION_KEY)
        if self.tolerationSeconds is not None and self.effect != "NoExecute":
            raise ValueError(TOLERATION_SECONDS)
        return self


class LocalObjectReference(_Model):
    name: Subdomain


class PodSettings(_Model):
    nodeSelector: LabelMap = Field(
        default_factory=dict, description="Node labels every pod must match."
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, description="Tolerations of every pod (Kubernetes shape)."
    )
    serviceAccountName: Subdomain | None = Field(
        default=None, description="Service account of every pod."
    )
    imagePullSecrets: list[LocalObjectReference] = Field(
        default_factory=list, max_length=16, description="Secrets for pulling the images."
    )
    labels: LabelMap = Field(default_factory=dict, description="Added to every pod.")
    annotations: QualifiedNameMap = Field(default_factory=dict, description="Added to every pod.")


ImageRepository = Annotated[
    str,
    Field(min_length=1, max_length=512, json_schema_extra=_pattern(syntax.IMAGE_REPOSITORY)),
    _check(
        syntax.IMAGE_REPOSITORY,
        "must be an image repository without tag or digest ([registry[:port]/]path), or a "
        "registry path ending in '/'",
    ),
]


class JobVariables(_Model):
    """Ephemeral: how far a deployment's (or a flow run's) job variables reach into its
    RayJob. Every bound defaults to the pool's own values; the `kuberay` worker checks
    each final RayJob against them and fails a run that exceeds one, creating nothing.
    The namespace, the Ray pods' service account and the Secrets are always the pool's."""

    imageRepositories: list[ImageRepository] = Field(
        default_factory=list,
        max_length=32,
        description="Images deployments may use besides spec.ray.image's repository (any "
        "tag or digest of it): 'registry.example/team/flows' allows that repository, "
        "'registry.example/team/' every repository under that path.",
    )
    maxWorkerReplicas: Int32 | None = Field(
        default=None,
        description="Most Ray worker pods a run may ask for; defaults to the first worker "
        "group's maxReplicas, else replicas.",
    )
    maxCpu: CPU | None = Field(
        default=None,
        description="Most CPU per Ray pod; defaults to the largest of the head's and the "
        "worker groups'.",
    )
    maxMemory: Memory | None = Field(
        default=None,
        description="Most memory per Ray pod; defaults to the largest of the head's and "
        "the worker groups'.",
    )
    maxGpu: Int32 | None = Field(
        default=None,
        description="Most GPUs (nvidia.com/gpu) per Ray pod; defaults to the largest of the "
        "head's and the worker groups'.",
    )
    nodeSelector: Annotated[
        dict[str, Annotated[list[LabelValue], Field(min_length=1, max_length=64)]],
        *_QUALIFIED_KEY_RULES,
    ] = Field(
        default_factory=dict,
        description="Node labels deployments may select, each with its allowed values, "
        "besides spec.pod.nodeSelector's own.",
    )
    tolerations: list[Toleration] = Field(
        default_factory=list,
        max_length=32,
        description="Tolerations deployments may add, besides spec.pod.tolerations.",
    )


class NetworkPolicySpec(_Model):
    enabled: bool = Field(
        default=True,
        description="A NetworkPolicy `<pool>-ray-head`: the Ray head accepts only the pool's "
        "own pods and (GCS, client, dashboard ports) the operator's.",
    )


class DisruptionBudgetSpec(_Model):
    """PodDisruptionBudgets for the pods whose eviction fails flow runs: the Ray head
    (every run's driver connects to it) and the Prefect worker pods (each runs its flow
    runs' drivers). A node drain (`kubectl drain`, a cluster autoscaler, a node
    upgrade) waits for them instead of killing the runs; a pod deleted outright, or a
    node lost, is not covered by any PodDisruptionBudget."""

    enabled: bool = Field(
        default=True,
        description="PodDisruptionBudgets `<pool>-ray-head` (the head pod: never evicted) "
        "and, for ZeroCapacityNode, `<pool>-prefect-worker`. Off: none, and the operator "
        "deletes those it made.",
    )
    maxUnavailable: int = Field(
        default=0,
        ge=0,
        description="How many Prefect worker pods evictions may take down at once (0: none; "
        "their flow runs end first, or a drain waits). The head is one pod: never evicted "
        "while enabled.",
    )


class IdleSpec(_Model):
    """Scale to zero, head included, while the work pool has nothing to run; wake when
    a flow run is scheduled (idle.py)."""

    suspendAfterSeconds: Int32 = Field(
        default=0,
        description="0 (the default): never. Otherwise, after this long with no flow run "
        "scheduled (within wakeAheadSeconds), pending, running, paused or cancelling in "
        "the work pool, the Prefect workers stop and the RayCluster is suspended: no Ray "
        "pod is left, head included. A flow run scheduled wakes the pool.",
    )
    wakeAheadSeconds: Int32 = Field(
        default=300,
        description="A flow run scheduled this close to now counts as waiting: the pool "
        "wakes (or stays awake) ahead of it, so a nightly run finds its cluster warm.",
    )
    minAwakeSeconds: Int32 = Field(
        default=300,
        description="After waking, the pool stays awake at least this long, so bursty "
        "arrivals do not suspend and wake it over and over.",
    )


_IDLE_OFF = (
    "!has(self.idle) || !has(self.idle.suspendAfterSeconds) || self.idle.suspendAfterSeconds == 0"
)
IDLE_PLACEMENT = (
    "idle.suspendAfterSeconds is for ZeroCapacityNode pools (a HeadSidecar head runs the "
    "Prefect worker, an Ephemeral pool has no cluster between runs): set it to 0 or use "
    "ZeroCapacityNode"
)
IDLE_EXTERNAL_REPLICAS = (
    "idle.suspendAfterSeconds stops the Prefect workers, which replicasManagedExternally "
    "leaves to someone else: set one of them to 0/false"
)

EXTERNAL_REPLICAS_SIDECAR = (
    "HeadSidecar has no worker Deployment to scale: remove replicasManagedExternally "
    "or use ZeroCapacityNode"
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
                "self.placement != 'HeadSidecar' || !has(self.prefect.replicasManagedExternally) "
                "|| !self.prefect.replicasManagedExternally",
                EXTERNAL_REPLICAS_SIDECAR,
                ".prefect.replicasManagedExternally",
            ),
            cel(
                "self.ray.taskResources.gpu == 0 || "
                "self.ray.workerGroups.exists(g, g.resources.gpu >= self.ray.taskResources.gpu)",
                "ray.taskResources.gpu asks for more GPUs than any worker group has: "
                "add a worker group with resources.gpu at least that large",
                ".ray.taskResources.gpu",
            ),
            cel(
                f"{_IDLE_OFF} || self.placement == 'ZeroCapacityNode'",
                IDLE_PLACEMENT,
                ".idle.suspendAfterSeconds",
            ),
            cel(
                f"{_IDLE_OFF} || !has(self.prefect.replicasManagedExternally) || "
                "!self.prefect.replicasManagedExternally",
                IDLE_EXTERNAL_REPLICAS,
                ".idle.suspendAfterSeconds",
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
    disruptionBudget: DisruptionBudgetSpec = Field(
        default_factory=DisruptionBudgetSpec,
        description="Which of the pool's pods a voluntary eviction (a node drain) may take.",
    )
    idle: IdleSpec = Field(
        default_factory=IdleSpec,
        description="Scale to zero while idle, wake on a scheduled flow run (off by default).",
    )
    jobVariables: JobVariables = Field(
        default_factory=JobVariables,
        description="Ephemeral: what deployments' job variables may change in each flow "
        "run's RayJob; by default nothing beyond the pool's own values.",
    )

    @model_validator(mode="after")
    def _cross_field(self) -> PrefectRayPoolSpec:
        if self.placement == Placement.HEAD_SIDECAR and self.prefect.replicas > 1:
            raise ValueError("HeadSidecar runs one Prefect worker: set prefect.replicas to 1")
        if self.placement == Placement.HEAD_SIDECAR and self.prefect.replicasManagedExternally:
            raise ValueError(f"prefect.replicasManagedExternally: {EXTERNAL_REPLICAS_SIDECAR}")
        gpu = self.ray.taskResources.gpu
        if gpu and not any(g.resources.gpu >= gpu for g in self.ray.workerGroups):
            raise ValueError("ray.taskResources.gpu asks for more GPUs than any worker group has")
        if self.idle.suspendAfterSeconds and self.placement != Placement.ZERO_CAPACITY_NODE:
            raise ValueError(IDLE_PLACEMENT)
        if self.idle.suspendAfterSeconds and self.prefect.replicasManagedExternally:
            raise ValueError(IDLE_EXTERNAL_REPLICAS)
        return self


class Phase(StrEnum):
    """The pool's phase, the status's one-word summary."""

    PENDING = "Pending"  # waiting on something outside the spec (a Secret, KubeRay)
    PROVISIONING = "Provisioning"
    READY = "Ready"
    DEGRADED = "Degraded"  # Ray is up but the Prefect side is not, or a container cannot run
    FAILED = "Failed"  # only a spec change helps
    SUSPENDED = "Suspended"  # idle: no pod running, woken by a scheduled flow run


class Condition(_Model):
    type: str
    status: str = Field(pattern=r"^(True|False|Unknown)$")
    reason: str = ""
    message: str = ""
    lastTransitionTime: str | None = None
    observedGeneration: int | None = None


def _kept_as_is(schema: dict[str, Any]) -> None:
    """A free-form object in the CRD (crd.py drops pydantic's additionalProperties)."""
    schema.update({"type": "object", "x-kubernetes-preserve-unknown-fields": True})


class RayRollout(_Model):
    step: str | None = Field(default=None, description="Draining or Replacing.")
    since: str | None = Field(default=None, description="When the rollout began.")
    fields: list[str] = Field(default_factory=list, description="The spec fields that changed.")
    workersPaused: bool | None = Field(
        default=None, description="The Prefect workers are stopped (0 replicas) meanwhile."
    )
    replacingSince: str | None = Field(
        default=None, description="When the first Ray pod was replaced (the deadline's start)."
    )
    rolledBack: bool | None = Field(
        default=None, description="The new head was not ready in time: back to the old spec."
    )
    previous: dict[str, Any] | None = Field(
        default=None,
        description="The RayCluster's templates before the change, to go back to.",
        json_schema_extra=_kept_as_is,
    )


class RayRollback(_Model):
    failedSpec: str | None = Field(
        default=None, description="Digests of the Ray spec whose head never became ready."
    )
    fields: list[str] = Field(default_factory=list, description="The spec fields it changed.")
    at: str | None = Field(default=None, description="When the pool went back.")
    reason: str | None = Field(default=None, description="What the new pods showed.")
    templates: dict[str, Any] | None = Field(
        default=None,
        description="The RayCluster templates in use again, until the spec changes.",
        json_schema_extra=_kept_as_is,
    )


class IdleStatus(_Model):
    state: str | None = Field(default=None, description="Awake, Suspending or Suspended.")
    since: str | None = Field(default=None, description="When it entered that state.")
    lastDemand: str | None = Field(
        default=None, description="When the work pool last had a flow run to run."
    )
    awakeSince: str | None = Field(default=None, description="When the pool last woke.")


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
    flowRunClusters: int | None = Field(
        default=None,
        description="Ephemeral: the flow-run clusters (RayJobs) the kuberay worker made "
        "that exist now.",
    )
    rayRollout: RayRollout | None = Field(
        default=None,
        description="The replacement of outdated Ray pods under way "
        "(spec.ray.updateStrategy), if any.",
    )
    idle: IdleStatus | None = Field(
        default=None, description="Scale to zero (spec.idle): where the pool stands."
    )
    rayRollback: RayRollback | None = Field(
        default=None,
        description="Set when a Ray spec change was rolled back (its new head never became "
        "ready): the RayCluster runs the spec of before, until the spec changes again.",
    )


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
