"""Pure, standard library only: what a flow run's final RayJob may hold, by the pool's word.

A deployment author sets job variables; the pool author decides how far they reach. The
operator resolves a pool's `spec.jobVariables` (every bound defaulting to the pool's own
values) into a `JobPolicy` and hands it to the worker as JSON in the environment
variable POLICY_ENV of the worker's Deployment: Kubernetes, not Prefect, is where it
lives, because anyone who may write the work pool in Prefect can edit its base job
template. The worker checks the RayJob it is about to create (`check`: after the
template, the job variables and the worker's own additions) and creates nothing when a
refusal comes back. The operator imports this module too, so the JSON's shape is said
once.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from prefect_raypool_kuberay.contract import GPU_RESOURCE
from prefect_raypool_kuberay.rayjob import RAY_AUTH_ENV

Obj = dict[str, Any]

#: The worker's environment variable holding the policy (JSON); unset: no bounds beyond
#: the template (a worker started by hand).
POLICY_ENV = "PREFECT_RAYPOOL_JOB_POLICY"
#: Where the pool author sets the bounds (operator spec.py's PrefectRayPoolSpec).
SPEC = "spec.jobVariables"

#: Job variables a deployment or flow run may not set: the pool's, where named.
POOL_ONLY = {
    "namespace": "the pool's namespace",
    "service_account_name": "spec.pod.serviceAccountName",
    "api_key_secret_name": "spec.prefect.apiKey",
    "api_key_secret_key": "spec.prefect.apiKey",
}

_SUFFIXES = {
    "": Fraction(1),
    "m": Fraction(1, 1000),
    **{s: Fraction(1000**i) for i, s in enumerate("kMGTPE", start=1)},
    **{f"{s}i": Fraction(1024**i) for i, s in enumerate("KMGTPE", start=1)},
}
_QUANTITY = re.compile(
    r"([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(?:[eE]([+-]?[0-9]+))?(m|[kMGTPE]i?|Ki)?"
)


class PolicyError(ValueError):
    """The policy's JSON (POLICY_ENV) is unusable."""


def quantity(value: Any) -> Fraction:
    """A Kubernetes quantity ("500m", "2", 1.5, "4Gi", "1e3") as an exact number."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a Kubernetes quantity")
    if isinstance(value, int | float):
        return Fraction(value)
    match = _QUANTITY.fullmatch(str(value).strip())
    if not match:
        raise ValueError(f"{value!r} is not a Kubernetes quantity")
    number, exponent, suffix = match.groups()
    if exponent and suffix:  # "1e3Mi" is no quantity
        raise ValueError(f"{value!r} is not a Kubernetes quantity")
    return Fraction(number) * Fraction(10) ** int(exponent or 0) * _SUFFIXES[suffix or ""]


def image_repository(image: str) -> str:
    """The image without its digest and tag: `host:5000/team/flows:1@sha256:..` to
    `host:5000/team/flows`."""
    image = image.split("@", 1)[0]
    head, _, last = image.rpartition("/")
    if ":" in last:
        last = last.split(":", 1)[0]
    return f"{head}/{last}" if head else last


def image_allowed(image: str, repositories: tuple[str, ...]) -> bool:
    """An entry ending in '/' allows every repository under that path; any other entry
    is one repository, at any tag or digest."""
    repo = image_repository(image)
    return any(repo.startswith(r) if r.endswith("/") else repo == r for r in repositories)


def _toleration_key(t: Mapping[str, Any]) -> str:
    """Tolerations compared as Kubernetes reads them: unset and empty alike, Equal
    the default operator."""
    kept = {k: v for k, v in t.items() if v not in (None, "")}
    if kept.get("operator") == "Equal":
        del kept["operator"]
    return json.dumps(kept, sort_keys=True)


@dataclass(frozen=True)
class JobPolicy:
    """The resolved bounds, as the operator writes them (every default filled in)."""

    namespace: str
    service_account_name: str | None
    #: env name -> (Secret, key): the Secrets the pool hands to flow runs, by reference.
    secret_env: dict[str, tuple[str, str]] = field(default_factory=dict)
    #: The pool's image repository first; see image_allowed.
    image_repositories: tuple[str, ...] = ()
    max_worker_replicas: int = 0
    max_cpu: str = "0"
    max_memory: str = "0"
    max_gpu: int = 0
    #: node label -> the values a pod may select.
    node_selector: dict[str, tuple[str, ...]] = field(default_factory=dict)
    tolerations: tuple[Obj, ...] = ()
    #: rayClusterSpec.authOptions.mode of every run's cluster ("token": KubeRay makes a
    #: token per cluster, so a flow run's cluster is reached only by its own pods).
    ray_auth_mode: str = "token"
    #: Labels on every pod of the run's cluster: the pool's, which its NetworkPolicy
    #: selects and admits.
    pod_labels: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(
            {
                "namespace": self.namespace,
                "serviceAccountName": self.service_account_name,
                "secretEnv": {
                    k: {"name": n, "key": key} for k, (n, key) in sorted(self.secret_env.items())
                },
                "imageRepositories": list(self.image_repositories),
                "maxWorkerReplicas": self.max_worker_replicas,
                "maxCpu": self.max_cpu,
                "maxMemory": self.max_memory,
                "maxGpu": self.max_gpu,
                "nodeSelector": {k: list(v) for k, v in sorted(self.node_selector.items())},
                "tolerations": list(self.tolerations),
                "rayAuthMode": self.ray_auth_mode,
                "podLabels": dict(sorted(self.pod_labels.items())),
            },
            sort_keys=True,
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> JobPolicy:
        try:
            raw = json.loads(text)
            policy = cls(
                namespace=str(raw["namespace"]),
                service_account_name=raw.get("serviceAccountName"),
                secret_env={
                    k: (str(v["name"]), str(v["key"]))
                    for k, v in (raw.get("secretEnv") or {}).items()
                },
                image_repositories=tuple(str(r) for r in raw["imageRepositories"]),
                max_worker_replicas=int(raw["maxWorkerReplicas"]),
                max_cpu=str(raw["maxCpu"]),
                max_memory=str(raw["maxMemory"]),
                max_gpu=int(raw["maxGpu"]),
                node_selector={
                    str(k): tuple(str(x) for x in v)
                    for k, v in (raw.get("nodeSelector") or {}).items()
                },
                tolerations=tuple(dict(t) for t in raw.get("tolerations") or ()),
                ray_auth_mode=str(raw.get("rayAuthMode") or "token"),
                pod_labels={str(k): str(v) for k, v in (raw.get("podLabels") or {}).items()},
            )
            quantity(policy.max_cpu), quantity(policy.max_memory)
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise PolicyError(
                f"{POLICY_ENV} is not a job-variable policy ({type(e).__name__}: {e}); the "
                "operator writes it from the pool's spec.jobVariables: unset it or fix the JSON"
            ) from None
        return policy


# ---- the pods of a RayJob ---------------------------------------------------------------


@dataclass(frozen=True)
class _Pod:
    where: str  # a path in the RayJob, for messages
    spec: Obj
    prefix: str | None  # the job variables' prefix (head_, worker_) where they fill it
    templated: bool  # the template's own pod: `image`, `service_account_name` fill it


def _pods(job: Obj) -> Iterator[_Pod]:
    spec = job.get("spec") or {}
    cluster = spec.get("rayClusterSpec") or {}
    head = ((cluster.get("headGroupSpec") or {}).get("template") or {}).get("spec")
    if isinstance(head, dict):
        yield _Pod("rayClusterSpec.headGroupSpec", head, "head", True)
    for i, group in enumerate(cluster.get("workerGroupSpecs") or []):
        pod = ((group or {}).get("template") or {}).get("spec")
        if isinstance(pod, dict):
            yield _Pod(
                f"rayClusterSpec.workerGroupSpecs[{i}]", pod, "worker" if i == 0 else None, i == 0
            )
    submitter = (spec.get("submitterPodTemplate") or {}).get("spec")
    if isinstance(submitter, dict):
        yield _Pod("submitterPodTemplate", submitter, None, True)


def _containers(pod: Obj) -> list[Obj]:
    return [
        c
        for key in ("initContainers", "containers")
        for c in pod.get(key) or []
        if isinstance(c, dict)
    ]


def _subject(pod: _Pod, variable: str | None, path: str, value: Any) -> str:
    """`job variable head_cpu='4'` where a variable fills the field, else its path."""
    if variable:
        return f"job variable {variable}={value!r}"
    return f"RayJob {pod.where}.{path}={value!r}"


# ---- the checks ---------------------------------------------------------------------------


def _namespace(job: Obj, policy: JobPolicy) -> Iterator[str]:
    ns = (job.get("metadata") or {}).get("namespace")
    if ns != policy.namespace:
        yield (
            f"RayJob namespace {ns!r} is not the pool's namespace {policy.namespace!r}: "
            "flow runs of this pool run in its namespace only"
        )


def _service_account(pod: _Pod, policy: JobPolicy) -> Iterator[str]:
    allowed = {policy.service_account_name} if policy.service_account_name else {None, "default"}
    for key in ("serviceAccountName", "serviceAccount"):
        name = pod.spec.get(key)
        if name not in allowed and not (key == "serviceAccount" and name is None):
            var = "service_account_name" if key == "serviceAccountName" and pod.templated else None
            yield (
                f"{_subject(pod, var, key, name)} is not the pool's service account "
                f"{policy.service_account_name or 'default'!r} (spec.pod.serviceAccountName): "
                "the Ray pods' account is the pool's"
            )


def _secrets(pod: _Pod, policy: JobPolicy) -> Iterator[str]:
    allowed = set(policy.secret_env.values())
    names = ", ".join(f"{n}/{k}" for n, k in sorted(allowed)) or "none"
    why = (
        f"the pool hands flow runs only its own Secrets ({names}; "
        "spec.prefect.apiKey, spec.prefect.env)"
    )
    for c in _containers(pod.spec):
        for e in c.get("env") or []:
            ref = ((e or {}).get("valueFrom") or {}).get("secretKeyRef")
            if ref and (ref.get("name"), ref.get("key")) not in allowed:
                yield (
                    f"RayJob {pod.where} container {c.get('name')!r} env {e.get('name')!r} "
                    f"references Secret {ref.get('name')!r} key {ref.get('key')!r}: {why}"
                )
        for e in c.get("envFrom") or []:
            if (e or {}).get("secretRef"):
                yield (
                    f"RayJob {pod.where} container {c.get('name')!r} envFrom takes all of "
                    f"Secret {e['secretRef'].get('name')!r}: {why}"
                )
    for v in pod.spec.get("volumes") or []:
        v = v or {}
        sources = [v.get("secret")] + [
            s.get("secret") for s in ((v.get("projected") or {}).get("sources") or []) if s
        ]
        for s in filter(None, sources):
            name = s.get("secretName") or s.get("name")
            yield f"RayJob {pod.where} volume {v.get('name')!r} mounts Secret {name!r}: {why}"


def _ray_auth(job: Obj, policy: JobPolicy) -> Iterator[str]:
    """The pool's Ray auth, and no container that sets its own."""
    cluster = (job.get("spec") or {}).get("rayClusterSpec") or {}
    mode = (cluster.get("authOptions") or {}).get("mode")
    if mode != policy.ray_auth_mode:
        yield (
            f"RayJob rayClusterSpec.authOptions.mode={mode!r} is not the pool's Ray auth "
            f"mode {policy.ray_auth_mode!r} (spec.ray.auth.mode): remove the override"
        )
    for pod in _pods(job):
        for c in _containers(pod.spec):
            for e in c.get("env") or []:
                if (e or {}).get("name") in RAY_AUTH_ENV and (
                    policy.ray_auth_mode == "token" or "valueFrom" in e
                ):
                    yield (
                        f"RayJob {pod.where} container {c.get('name')!r} sets {e['name']}: "
                        "Ray auth is the cluster's (spec.ray.auth.mode), not a container's; "
                        "remove it"
                    )


def _images(pod: _Pod, policy: JobPolicy) -> Iterator[str]:
    allowed = ", ".join(policy.image_repositories)
    first = (pod.spec.get("containers") or [None])[0]
    for c in _containers(pod.spec):
        image = c.get("image")
        if isinstance(image, str) and image_allowed(image, policy.image_repositories):
            continue
        var = "image" if pod.templated and c is first else None
        path = f"containers[{c.get('name')}].image"
        yield (
            f"{_subject(pod, var, path, image)} is not in an "
            f"image repository the pool allows ({allowed}; {SPEC}.imageRepositories)"
        )


_RESOURCES = {"cpu": "maxCpu", "memory": "maxMemory", GPU_RESOURCE: "maxGpu"}
_UNBOUNDED_OK = {"ephemeral-storage"}


def _pod_amounts(pod: _Pod) -> tuple[dict[str, Fraction], list[str]]:
    """Per resource, what the pod may use at most: its containers' limits (requests
    where a limit is missing) summed, init containers counted at their largest."""
    problems: list[str] = []
    sums: dict[str, Fraction] = {}
    init_max: dict[str, Fraction] = {}
    for key in ("containers", "initContainers"):
        for c in pod.spec.get(key) or []:
            res = (c or {}).get("resources") or {}
            limits, requests = res.get("limits") or {}, res.get("requests") or {}
            for name in {*limits, *requests}:
                if name not in _RESOURCES and name not in _UNBOUNDED_OK:
                    problems.append(
                        f"RayJob {pod.where} container {c.get('name')!r} asks for {name!r}, "
                        "a resource the pool does not bound: only cpu, memory and "
                        f"{GPU_RESOURCE} are allowed"
                    )
                    continue
                try:
                    amount = max(quantity(limits.get(name, 0)), quantity(requests.get(name, 0)))
                except ValueError as e:
                    problems.append(f"RayJob {pod.where} container {c.get('name')!r}: {e}")
                    continue
                if key == "containers":
                    sums[name] = sums.get(name, Fraction(0)) + amount
                else:
                    init_max[name] = max(init_max.get(name, Fraction(0)), amount)
            for name in ("cpu", "memory"):
                if name not in limits:
                    problems.append(
                        f"RayJob {pod.where} container {c.get('name')!r} has no {name} limit: "
                        f"the pool bounds every pod ({SPEC}.max{name.capitalize()})"
                    )
    return {
        k: max(sums.get(k, Fraction(0)), init_max.get(k, Fraction(0))) for k in {*sums, *init_max}
    }, problems


def _resources(pod: _Pod, policy: JobPolicy, floor: Mapping[str, Fraction]) -> Iterator[str]:
    amounts, problems = _pod_amounts(pod)
    yield from problems
    bounds = {
        "cpu": (quantity(policy.max_cpu), policy.max_cpu),
        "memory": (quantity(policy.max_memory), policy.max_memory),
        GPU_RESOURCE: (Fraction(policy.max_gpu), policy.max_gpu),
    }
    short = {"cpu": "cpu", "memory": "memory", GPU_RESOURCE: "gpu"}
    for name, (bound, shown) in bounds.items():
        amount = amounts.get(name, Fraction(0))
        if amount <= max(bound, floor.get(name, Fraction(0))):
            continue
        var = f"{pod.prefix}_{short[name]}" if pod.prefix else None
        value = _shown(amount, name)
        yield (
            f"{_subject(pod, var, f'resources.{name}', value)} is above the pool's maximum "
            f"{shown} per pod ({SPEC}.{_RESOURCES[name]})"
        )


def _shown(amount: Fraction, name: str) -> str | int:
    """An amount as Kubernetes would spell it."""
    if name == GPU_RESOURCE:
        return int(amount)
    if name == "cpu":
        return str(int(amount)) if amount.denominator == 1 else f"{int(amount * 1000)}m"
    for suffix in ("Gi", "Mi", "Ki"):
        unit = _SUFFIXES[suffix]
        if amount >= unit and (amount / unit).denominator == 1:
            return f"{int(amount / unit)}{suffix}"
    return str(int(amount))


def _replicas(job: Obj, policy: JobPolicy) -> Iterator[str]:
    groups = ((job.get("spec") or {}).get("rayClusterSpec") or {}).get("workerGroupSpecs") or []
    total = 0
    for i, g in enumerate(groups):
        counts = [
            g.get(k) for k in ("replicas", "minReplicas", "maxReplicas") if g.get(k) is not None
        ]
        if not all(isinstance(n, int) and not isinstance(n, bool) for n in counts):
            yield f"RayJob rayClusterSpec.workerGroupSpecs[{i}] replicas are not integers: {counts}"
            continue
        total += max(counts, default=0)
    if total > policy.max_worker_replicas:
        subject = (
            f"job variable worker_replicas={total}"
            if len(groups) == 1
            else f"RayJob worker replicas (all {len(groups)} groups, at most)={total}"
        )
        yield (
            f"{subject} is above the pool's maximum {policy.max_worker_replicas} "
            f"({SPEC}.maxWorkerReplicas)"
        )


def _placement(pod: _Pod, policy: JobPolicy) -> Iterator[str]:
    var = "node_selector" if pod.prefix else None
    for key, value in sorted((pod.spec.get("nodeSelector") or {}).items()):
        if value not in policy.node_selector.get(key, ()):
            allowed = policy.node_selector.get(key)
            bound = (
                f"allowed values {list(allowed)}"
                if allowed
                else "a node label the pool does not allow"
            )
            yield (
                f"{_subject(pod, var, 'nodeSelector', {key: value})}: {key}={value} is not "
                f"allowed ({bound}; {SPEC}.nodeSelector, spec.pod.nodeSelector)"
            )
    if pod.spec.get("nodeName"):
        yield (
            f"RayJob {pod.where}.nodeName={pod.spec['nodeName']!r} is not allowed: pods "
            "are placed by the scheduler, not by name"
        )
    if ((pod.spec.get("affinity") or {}).get("nodeAffinity")) is not None:
        yield (
            f"RayJob {pod.where}.affinity.nodeAffinity is not allowed: pods choose nodes "
            f"only by node_selector ({SPEC}.nodeSelector)"
        )
    allowed_tolerations = {_toleration_key(t) for t in policy.tolerations}
    var = "tolerations" if pod.prefix else None
    for t in pod.spec.get("tolerations") or []:
        if not isinstance(t, dict) or _toleration_key(t) not in allowed_tolerations:
            yield (
                f"{_subject(pod, var, 'tolerations', t)} is not a toleration the pool allows "
                f"({SPEC}.tolerations, spec.pod.tolerations)"
            )


#: What the template's own submitter pod asks for (job_template.SUBMITTER_POD's limits):
#: a pool whose Ray pods are smaller must still be able to submit.
SUBMITTER_FLOOR = {"cpu": Fraction(1), "memory": quantity("1Gi")}


def check(job: Obj, policy: JobPolicy) -> list[str]:
    """Every reason the pool refuses this RayJob, each naming the variable (or the
    manifest's field) and the bound; empty when it may be created."""
    refusals = [*_namespace(job, policy), *_replicas(job, policy), *_ray_auth(job, policy)]
    for pod in _pods(job):
        floor = SUBMITTER_FLOOR if pod.where == "submitterPodTemplate" else {}
        for found in (
            _images(pod, policy),
            _resources(pod, policy, floor),
            _placement(pod, policy),
            _service_account(pod, policy),
            _secrets(pod, policy),
        ):
            refusals += [r for r in found if r not in refusals]
    return refusals


def pool_only_overrides(set_here: Mapping[str, Any], pool_values: Mapping[str, Any]) -> list[str]:
    """Job variables a deployment or flow run set that only the pool may: each one that
    differs from the pool's value, named with where the pool sets it."""
    return [
        f"job variable {name}={set_here[name]!r} is refused: {name} comes from the pool "
        f"({where}, now {pool_values.get(name)!r}), not from a deployment or flow run; "
        "remove it from job_variables"
        for name, where in POOL_ONLY.items()
        if name in set_here and set_here[name] != pool_values.get(name)
    ]
