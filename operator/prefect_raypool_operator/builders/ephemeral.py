"""Ephemeral: a `kuberay` Prefect worker that gives each flow run its own RayJob.

No RayCluster of the pool's own: the worker creates one RayJob (a Ray cluster for the
flow run) in the pool's namespace, from the work pool's base job template, whose
defaults come from the pool's Ray spec (`base_job_template`). The worker runs as its
own ServiceAccount, bound in the pool's namespace only (a RoleBinding) to the
ClusterRole the operator chart ships with exactly the calls the worker makes (its
contract's WORKER_RULES). A binding, not a Role of its own: to write a Role the
operator would have to hold every right in it (RBAC's escalation check) in every
namespace, while binding needs only `bind` on that one ClusterRole. The template
itself is the worker's own (prefect_raypool_kuberay.job_template), which imports no
Prefect.

The pool's bounds on job variables (`job_policy`, from spec.jobVariables) reach the
worker as JSON in an environment variable of its Deployment: a change rolls the worker,
so none runs with a stale policy; no object more to own, watch or grant; and only who
may edit the Deployment in this namespace can change it, where anyone who may write the
work pool in Prefect can edit its template.
"""

from __future__ import annotations

from prefect_raypool_kuberay.contract import WORKER_TYPE
from prefect_raypool_kuberay.job_template import base_job_template as default_template
from prefect_raypool_kuberay.policy import POLICY_ENV, JobPolicy, image_repository, quantity
from prefect_raypool_operator import kinds, naming
from prefect_raypool_operator.builders import entrypoint
from prefect_raypool_operator.builders.common import (
    Obj,
    hardened,
    object_metadata,
    pod_metadata,
    pod_settings,
    prefect_worker_image,
    ray_image,
    resources,
    secret_env,
)
from prefect_raypool_operator.builders.prefect_worker import COMPONENT as WORKER_COMPONENT
from prefect_raypool_operator.builders.prefect_worker import user_env
from prefect_raypool_operator.spec import PrefectRayPoolSpec

COMPONENT = "kuberay-worker"  # its ServiceAccount and RoleBinding


#: Prefect's worker webserver (PREFECT_WORKER_WEBSERVER_PORT's default).
HEALTH_PORT = 8080


def health_probes() -> Obj:
    """Ready once the worker serves /health; restarted when it stops polling (Prefect
    answers 503 after 30 poll intervals without a poll). The start-up probe allows a
    slow import of Prefect on a small CPU limit."""
    check = {"httpGet": {"path": "/health", "port": "health"}}
    return {
        "startupProbe": {**check, "periodSeconds": 5, "failureThreshold": 60},
        "readinessProbe": {**check, "periodSeconds": 10, "failureThreshold": 3},
        "livenessProbe": {**check, "periodSeconds": 30, "failureThreshold": 3},
    }


def _largest(amounts: list[int | str]) -> str:
    return str(max(amounts, key=lambda a: quantity(a)))


def job_policy(pool_name: str, namespace: str, spec: PrefectRayPoolSpec) -> JobPolicy:
    """spec.jobVariables with every default filled in from the pool's own values; the
    Ray auth mode and the pool's label for every flow run's pods."""
    bounds = spec.jobVariables
    first = spec.ray.workerGroups[0]
    pods = [spec.ray.head.resources] + [g.resources for g in spec.ray.workerGroups]
    secrets = {
        e.name: (e.valueFrom.secretKeyRef.name, e.valueFrom.secretKeyRef.key)
        for e in spec.prefect.env
        if e.valueFrom is not None and e.valueFrom.secretKeyRef is not None
    }
    if spec.prefect.apiKey:
        ref = spec.prefect.apiKey.secretKeyRef
        secrets["PREFECT_API_KEY"] = (ref.name, ref.key)
    node_selector: dict[str, list[str]] = {k: list(v) for k, v in bounds.nodeSelector.items()}
    for key, value in spec.pod.nodeSelector.items():
        node_selector.setdefault(key, [])
        if value not in node_selector[key]:
            node_selector[key].append(value)
    tolerations = [t.model_dump(exclude_none=True) for t in spec.pod.tolerations]
    tolerations += [
        t
        for t in (t.model_dump(exclude_none=True) for t in bounds.tolerations)
        if t not in tolerations
    ]
    pool_repository = image_repository(ray_image(spec))
    return JobPolicy(
        namespace=namespace,
        service_account_name=spec.pod.serviceAccountName,
        secret_env=secrets,
        image_repositories=(
            pool_repository,
            *[r for r in bounds.imageRepositories if r != pool_repository],
        ),
        max_worker_replicas=(
            bounds.maxWorkerReplicas
            if bounds.maxWorkerReplicas is not None
            else max(first.replicas, first.maxReplicas or 0)
        ),
        max_cpu=str(bounds.maxCpu)
        if bounds.maxCpu is not None
        else _largest([p.cpu for p in pods]),
        max_memory=bounds.maxMemory or _largest([p.memory for p in pods]),
        max_gpu=bounds.maxGpu if bounds.maxGpu is not None else max(p.gpu for p in pods),
        node_selector={k: tuple(v) for k, v in node_selector.items()},
        tolerations=tuple(tolerations),
        ray_auth_mode=spec.ray.auth.mode.value,
        pod_labels={naming.POOL_LABEL: pool_name},
    )


def worker_env(pool_name: str, namespace: str, spec: PrefectRayPoolSpec) -> list[Obj]:
    """The worker's own env: where Prefect is, the API key by reference, the pool's
    bounds on job variables, the user's."""
    env: list[Obj] = [{"name": "PREFECT_API_URL", "value": spec.prefect.apiUrl}]
    if spec.prefect.apiKey:
        env.append(secret_env("PREFECT_API_KEY", spec.prefect.apiKey.secretKeyRef))
    env.append({"name": POLICY_ENV, "value": job_policy(pool_name, namespace, spec).to_json()})
    return env + [user_env(e) for e in spec.prefect.env]


def build_kuberay_worker_deployment(
    pool_name: str, namespace: str, spec: PrefectRayPoolSpec
) -> Obj:
    """The `kuberay` worker: polls the work pool, one RayJob per flow run."""
    command = entrypoint.prefect_worker_command(
        naming.work_pool_name(pool_name, spec), spec.prefect.workQueues, WORKER_TYPE
    )
    container = hardened(
        {
            "name": naming.PREFECT_WORKER_CONTAINER,
            "image": prefect_worker_image(spec),
            # Prefect's health endpoint: up once the worker type has loaded, failing
            # when the worker stops polling its work pool.
            "command": [*command, "--with-healthcheck"],
            "env": worker_env(pool_name, namespace, spec),
            "resources": resources(spec.prefect.resources),
            "ports": [{"name": "health", "containerPort": HEALTH_PORT}],
            **health_probes(),
        }
    )
    # The other placements' component: a Deployment's selector cannot change, and
    # switching a pool to Ephemeral keeps (updates) its worker Deployment.
    metadata = object_metadata(
        naming.prefect_worker_deployment(pool_name), namespace, pool_name, WORKER_COMPONENT
    )
    if spec.prefect.replicasManagedExternally:
        metadata["annotations"] = {naming.EXTERNAL_REPLICAS_ANNOTATION: "true"}
    settings = pod_settings(spec)
    # The worker's own account (the binding's); spec.pod.serviceAccountName is the Ray pods'.
    settings["serviceAccountName"] = naming.kuberay_worker(pool_name)
    return {
        "apiVersion": kinds.DEPLOYMENT.api_version,
        "kind": kinds.DEPLOYMENT.kind,
        "metadata": metadata,
        "spec": {
            "replicas": spec.prefect.replicas,
            "selector": {"matchLabels": naming.selector(pool_name, WORKER_COMPONENT)},
            "template": {
                "metadata": pod_metadata(pool_name, spec, WORKER_COMPONENT),
                "spec": {**settings, "containers": [container]},
            },
        },
    }


def build_service_account(pool_name: str, namespace: str) -> Obj:
    return {
        "apiVersion": kinds.SERVICE_ACCOUNT.api_version,
        "kind": kinds.SERVICE_ACCOUNT.kind,
        "metadata": object_metadata(
            naming.kuberay_worker(pool_name), namespace, pool_name, COMPONENT
        ),
        # The worker talks to the API server; the Ray pods use their own account.
        "automountServiceAccountToken": True,
    }


def build_role_binding(
    pool_name: str, namespace: str, cluster_role: str = naming.KUBERAY_WORKER_CLUSTER_ROLE
) -> Obj:
    """The worker's account bound to the chart's worker ClusterRole, here only."""
    name = naming.kuberay_worker(pool_name)
    return {
        "apiVersion": kinds.ROLE_BINDING.api_version,
        "kind": kinds.ROLE_BINDING.kind,
        "metadata": object_metadata(name, namespace, pool_name, COMPONENT),
        "roleRef": {
            "apiGroup": kinds.CLUSTER_ROLE.group,
            "kind": kinds.CLUSTER_ROLE.kind,
            "name": cluster_role,
        },
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
    }


def build_ephemeral(
    pool_name: str,
    namespace: str,
    spec: PrefectRayPoolSpec,
    cluster_role: str = naming.KUBERAY_WORKER_CLUSTER_ROLE,
) -> list[Obj]:
    """In apply order: the account and its rights before the worker that uses them."""
    return [
        build_service_account(pool_name, namespace),
        build_role_binding(pool_name, namespace, cluster_role),
        build_kuberay_worker_deployment(pool_name, namespace, spec),
    ]


def template_defaults(namespace: str, spec: PrefectRayPoolSpec) -> Obj:
    """The work pool's variable defaults, from the pool's spec."""
    head = spec.ray.head.resources
    group = spec.ray.workerGroups[0]
    defaults: Obj = {
        "image": ray_image(spec),
        "namespace": namespace,
        "service_account_name": spec.pod.serviceAccountName,
        "ray_version": spec.ray.version,
        "head_cpu": str(head.cpu),
        "head_memory": head.memory,
        "worker_cpu": str(group.resources.cpu),
        "worker_memory": group.resources.memory,
        "worker_replicas": group.replicas,
        "head_gpu": head.gpu,
        "worker_gpu": group.resources.gpu,
        "head_ray_start_params": dict(spec.ray.head.rayStartParams),
        "worker_ray_start_params": dict(group.rayStartParams),
        "node_selector": dict(spec.pod.nodeSelector),
        "tolerations": [t.model_dump(exclude_none=True) for t in spec.pod.tolerations],
        # Plain values only: a Secret or ConfigMap reference has no place in `env`.
        "env": {e.name: e.value or "" for e in spec.prefect.env if e.valueFrom is None},
    }
    if spec.prefect.apiKey:
        defaults["api_key_secret_name"] = spec.prefect.apiKey.secretKeyRef.name
        defaults["api_key_secret_key"] = spec.prefect.apiKey.secretKeyRef.key
    return defaults


def base_job_template(namespace: str, spec: PrefectRayPoolSpec) -> Obj:
    """The `kuberay` worker's default template with the pool's defaults filled in."""
    template = default_template()
    properties = template["variables"]["properties"]
    for name, value in template_defaults(namespace, spec).items():
        properties[name]["default"] = value
    return template
