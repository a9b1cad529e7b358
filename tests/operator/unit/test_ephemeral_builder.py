"""An Ephemeral pool's objects and work pool template, from the spec alone."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from prefect_raypool_kuberay.policy import POLICY_ENV, JobPolicy, check
from prefect_raypool_kuberay.worker import KubeRayWorker
from prefect_raypool_operator.builders import build_manifests
from prefect_raypool_operator.builders.ephemeral import (
    base_job_template,
    job_policy,
    template_defaults,
)
from prefect_raypool_operator.owned import ROLE_BINDING
from prefect_raypool_operator.spec import PrefectRayPoolSpec

pytestmark = pytest.mark.unit
NS = "flows"


def _spec(**extra: Any) -> PrefectRayPoolSpec:
    return PrefectRayPoolSpec.model_validate(
        {
            "placement": "Ephemeral",
            "ray": {
                "image": "registry.example/flows:2.60.0-1",
                "head": {
                    "resources": {"cpu": "1500m", "memory": "3Gi"},
                    "rayStartParams": {"num-cpus": "0"},
                },
                "workerGroups": [
                    {
                        "name": "big",
                        "replicas": 3,
                        "resources": {"cpu": 2, "memory": "4Gi", "gpu": 1},
                        "rayStartParams": {"object-store-memory": "1000000000"},
                    },
                    {"name": "ignored", "replicas": 9},
                ],
            },
            "prefect": {
                "apiUrl": "http://prefect:4200/api",
                "apiKey": {"secretKeyRef": {"name": "prefect-key", "key": "api-key"}},
                "workQueues": ["etl"],
                "env": [
                    {"name": "MODE", "value": "fast"},
                    {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "t", "key": "k"}}},
                ],
            },
            "pod": {
                "serviceAccountName": "ray-pods",
                "nodeSelector": {"pool": "gpu"},
                "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
            },
            **extra,
        }
    )


def _by_kind(spec: PrefectRayPoolSpec) -> dict[str, dict[str, Any]]:
    return {m["kind"]: m for m in build_manifests("nightly", NS, spec)}


def test_the_work_pool_template_is_the_workers_own_with_the_pools_defaults() -> None:
    """The operator imports no Prefect, yet gives the work pool exactly the template
    Prefect gets from the worker class, only the variables' defaults set."""
    expected = KubeRayWorker.get_default_base_job_template()
    for name, value in template_defaults(NS, _spec()).items():
        expected["variables"]["properties"][name]["default"] = value
    assert base_job_template(NS, _spec()) == expected


def test_an_ephemeral_pool_owns_a_worker_its_account_and_no_ray_cluster() -> None:
    objects = _by_kind(_spec())
    # No Role of its own: the operator binds the chart's worker ClusterRole. The
    # NetworkPolicy guards the flow runs' clusters (their pods carry the pool's label).
    assert list(objects) == ["ServiceAccount", "RoleBinding", "Deployment", "NetworkPolicy"]
    for obj in objects.values():
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == (
            "prefect-raypool-operator"
        )
        assert obj["metadata"]["namespace"] == NS


def test_the_worker_is_bound_to_the_charts_cluster_role_in_its_namespace_only() -> None:
    binding = _by_kind(_spec())["RoleBinding"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "prefect-raypool-kuberay-worker",  # an operator run without the chart
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "nightly-kuberay-worker", "namespace": NS}
    ]
    # The chart's release names the role (RAYPOOL_KUBERAY_WORKER_CLUSTER_ROLE).
    [named] = [
        m
        for m in build_manifests("nightly", NS, _spec(), None, "ops-kuberay-worker")
        if m["kind"] == "RoleBinding"
    ]
    assert named["roleRef"]["name"] == "ops-kuberay-worker"


def test_a_binding_to_another_role_is_made_anew_not_updated() -> None:
    """roleRef is immutable: a pool's binding from before the chart's ClusterRole (to
    a Role of its own) is deleted first, or every apply would be refused."""
    desired = _by_kind(_spec())["RoleBinding"]
    old = {
        **desired,
        "roleRef": {**desired["roleRef"], "kind": "Role", "name": "nightly-kuberay-worker"},
    }
    assert ROLE_BINDING.replace(desired, old)
    assert not ROLE_BINDING.replace(desired, desired)


def test_the_worker_polls_the_work_pool_as_kuberay_under_its_own_account() -> None:
    deployment = _by_kind(_spec())["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "nightly-kuberay-worker"  # not the Ray pods' account
    [container] = pod["containers"]
    assert container["command"] == [
        *("prefect", "worker", "start", "--pool", "nightly", "--type", "kuberay"),
        *("--work-queue", "etl"),
        "--with-healthcheck",
    ]
    # Ready only once the worker type has loaded and serves Prefect's health endpoint.
    assert container["ports"] == [{"name": "health", "containerPort": 8080}]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "health"}
    assert container["image"] == "registry.example/flows:2.60.0-1"
    env = {e["name"]: e for e in container["env"]}
    assert env["PREFECT_API_URL"]["value"] == "http://prefect:4200/api"
    assert env["PREFECT_API_KEY"] == {
        "name": "PREFECT_API_KEY",
        "valueFrom": {"secretKeyRef": {"name": "prefect-key", "key": "api-key"}},
    }
    assert container["securityContext"]["allowPrivilegeEscalation"] is False


def test_the_work_pool_template_defaults_come_from_the_spec() -> None:
    template = base_job_template(NS, _spec())
    defaults = {k: v.get("default") for k, v in template["variables"]["properties"].items()}
    assert (
        defaults
        | {
            "image": "registry.example/flows:2.60.0-1",
            "namespace": NS,
            "service_account_name": "ray-pods",
            "ray_version": "2.60.0",
            "head_cpu": "1500m",
            "head_memory": "3Gi",
            "worker_cpu": "2",
            "worker_memory": "4Gi",
            "worker_replicas": 3,  # the first worker group's
            "head_gpu": 0,
            "worker_gpu": 1,
            "head_ray_start_params": {"num-cpus": "0"},
            "worker_ray_start_params": {"object-store-memory": "1000000000"},
            "node_selector": {"pool": "gpu"},
            "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "env": {"MODE": "fast"},  # a Secret reference has no place here
            "api_key_secret_name": "prefect-key",
            "api_key_secret_key": "api-key",
        }
        == defaults
    )
    # The job configuration (the RayJob manifest) is the worker's, untouched.
    workers = KubeRayWorker.get_default_base_job_template()
    assert template["job_configuration"] == workers["job_configuration"]
    assert "api-key" not in str(template["job_configuration"])


def test_without_an_api_key_the_template_names_no_secret() -> None:
    spec = _spec()
    spec.prefect.apiKey = None
    properties = base_job_template(NS, spec)["variables"]["properties"]
    assert properties["api_key_secret_name"]["default"] is None


def test_the_job_policy_defaults_to_the_pools_own_values() -> None:
    policy = job_policy("nightly", NS, _spec())
    assert policy == JobPolicy(
        namespace=NS,
        service_account_name="ray-pods",
        secret_env={"PREFECT_API_KEY": ("prefect-key", "api-key"), "TOKEN": ("t", "k")},
        image_repositories=("registry.example/flows",),
        max_worker_replicas=3,  # the first worker group's, as the template's default
        max_cpu="2",  # the largest pod: head 1500m, groups 2 and 1
        max_memory="4Gi",
        max_gpu=1,
        node_selector={"pool": ("gpu",)},
        tolerations=({"key": "gpu", "operator": "Exists", "effect": "NoSchedule"},),
        ray_auth_mode="token",  # spec.ray.auth.mode's default
        pod_labels={"prefectray.io/pool": "nightly"},
    )


def test_spec_job_variables_widen_the_bounds() -> None:
    bounds = {
        "imageRepositories": ["registry.example/team-a/", "registry.example/flows"],
        "maxWorkerReplicas": 10,
        "maxCpu": "8",
        "maxMemory": "32Gi",
        "maxGpu": 4,
        "nodeSelector": {"pool": ["cpu"], "zone": ["a", "b"]},
        "tolerations": [{"key": "spot", "operator": "Exists"}],
    }
    policy = job_policy("nightly", NS, _spec(jobVariables=bounds))
    assert policy.image_repositories == ("registry.example/flows", "registry.example/team-a/")
    assert (policy.max_worker_replicas, policy.max_cpu, policy.max_memory, policy.max_gpu) == (
        10,
        "8",
        "32Gi",
        4,
    )
    assert policy.node_selector == {"pool": ("cpu", "gpu"), "zone": ("a", "b")}
    assert {"key": "spot", "operator": "Exists"} in policy.tolerations


def test_the_worker_gets_the_policy_in_its_env() -> None:
    [container] = _by_kind(_spec())["Deployment"]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert JobPolicy.from_json(env[POLICY_ENV]["value"]) == job_policy("nightly", NS, _spec())


def test_the_pools_own_template_passes_its_policy_and_a_bigger_run_does_not() -> None:
    """The work pool's defaults, filled in as Prefect fills them, make a RayJob the
    pool's own bounds allow; one variable above them is refused."""
    from prefect.utilities.templating import apply_values

    from prefect_raypool_kuberay.rayjob import build_rayjob
    from prefect_raypool_kuberay.worker import KubeRayJobConfiguration

    template = base_job_template(NS, _spec())
    defaults = {k: v.get("default") for k, v in template["variables"]["properties"].items()}

    policy = job_policy("nightly", NS, _spec())

    def rayjob(**variables: Any) -> dict[str, Any]:
        # As the worker builds it (worker.py `run`).
        values = {k: v for k, v in {**defaults, **variables}.items() if v is not None}
        cfg = KubeRayJobConfiguration(**apply_values(template["job_configuration"], values))
        return build_rayjob(
            manifest=cfg.rayjob_manifest,
            name="run-abcde",
            namespace=cfg.namespace,
            command="prefect flow-run execute",
            env=cfg.env,
            labels={},
            api_key_secret=(cfg.api_key_secret_name or "", cfg.api_key_secret_key),
            secret_env=policy.secret_env,
            pod_labels=policy.pod_labels,
            ray_auth_mode=policy.ray_auth_mode,
        )

    assert check(rayjob(), policy) == []
    assert check(rayjob(worker_replicas=4), policy) == [
        "job variable worker_replicas=4 is above the pool's maximum 3 "
        "(spec.jobVariables.maxWorkerReplicas)"
    ]
    # Every pod of the run's cluster, the submitter included, carries the pool's label
    # (its NetworkPolicy selects them); the cluster takes a token of its own (KubeRay
    # makes it and sets RAY_AUTH_* on each container), whatever the run's env says.
    job = rayjob(env={"RAY_AUTH_MODE": "disabled", "RAY_AUTH_TOKEN": "guess"})
    assert check(job, policy) == []
    assert job["spec"]["rayClusterSpec"]["authOptions"] == {"mode": "token"}
    for pod in _pod_templates(job["spec"]):
        assert pod["metadata"]["labels"]["prefectray.io/pool"] == "nightly"
        [c] = pod["spec"]["containers"]
        assert not {e["name"] for e in c["env"]} & {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"}, c

    # A template edited to turn auth off, or a container that brings its own token, is
    # refused with the field named.
    off = rayjob()
    off["spec"]["rayClusterSpec"]["authOptions"] = {"mode": "disabled"}
    assert check(off, policy) == [
        "RayJob rayClusterSpec.authOptions.mode='disabled' is not the pool's Ray auth mode "
        "'token' (spec.ray.auth.mode): remove the override"
    ]
    own = rayjob()
    head = own["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    head["env"].append({"name": "RAY_AUTH_TOKEN", "value": "known"})
    assert any("sets RAY_AUTH_TOKEN" in r and "ray-head" in r for r in check(own, policy))

    # A pool with auth off says so on every container (a token file in the image would
    # turn it on).
    disabled = replace(policy, ray_auth_mode="disabled")
    job = rayjob()
    job = build_rayjob(
        manifest=job, name="run-abcde", namespace=NS, command="x", env={}, labels={},
        api_key_secret=None, ray_auth_mode="disabled",
    )  # fmt: skip
    assert check(job, disabled) == []
    for pod in _pod_templates(job["spec"]):
        [c] = pod["spec"]["containers"]
        assert {"name": "RAY_AUTH_MODE", "value": "disabled"} in c["env"]


def _pod_templates(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """A RayJob's pod templates: head, worker groups, submitter."""
    return [
        spec["rayClusterSpec"]["headGroupSpec"]["template"],
        *(g["template"] for g in spec["rayClusterSpec"]["workerGroupSpecs"]),
        spec["submitterPodTemplate"],
    ]
