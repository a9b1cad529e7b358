"""The pool's bounds on job variables, checked on the final RayJob (policy.py)."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import pytest

from prefect_raypool_kuberay.policy import (
    JobPolicy,
    PolicyError,
    check,
    image_allowed,
    image_repository,
    pool_only_overrides,
    quantity,
)
from prefect_raypool_kuberay.rayjob import build_rayjob
from tests.kuberay.templates import configuration

pytestmark = pytest.mark.unit

GPU_TOLERATION = {"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}
POLICY = JobPolicy(
    namespace="team-a",
    service_account_name="ray-pods",
    secret_env={"PREFECT_API_KEY": ("prefect-api", "key")},
    image_repositories=("registry.example/flows", "registry.example/team-a/"),
    max_worker_replicas=4,
    max_cpu="2",
    max_memory="4Gi",
    max_gpu=1,
    node_selector={"pool": ("gpu", "cpu")},
    tolerations=(GPU_TOLERATION,),
)
#: The pool's own values: always allowed.
POOL = {
    "image": "registry.example/flows:1",
    "namespace": "team-a",
    "service_account_name": "ray-pods",
    "api_key_secret_name": "prefect-api",
    "worker_replicas": 4,
    "head_cpu": "2",
    "worker_memory": "4Gi",
    "worker_gpu": 1,
    "node_selector": {"pool": "gpu"},
    "tolerations": [GPU_TOLERATION],
}


def _job(**variables: Any) -> dict[str, Any]:
    cfg = configuration(**{**POOL, **variables})
    secret = cfg.api_key_secret_name
    return build_rayjob(
        manifest=cfg.rayjob_manifest,
        name="flow-abcde",
        namespace=cfg.namespace,
        command="prefect flow-run execute",
        env={"PREFECT_API_URL": "http://prefect:4200/api"},
        labels={"prefect.io/flow-run-id": "1234"},
        api_key_secret=(secret, cfg.api_key_secret_key) if secret else None,
    )


def test_the_pools_own_values_and_smaller_ones_pass() -> None:
    assert check(_job(), POLICY) == []
    smaller = _job(
        image="registry.example/team-a/etl@sha256:" + "a" * 64,
        worker_replicas=0,
        head_cpu="500m",
        worker_memory="1.5Gi",
        worker_gpu=0,
        node_selector={"pool": "cpu"},
        tolerations=[{**GPU_TOLERATION, "operator": "Exists", "value": None}],
    )
    assert check(smaller, POLICY) == []


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        (
            {"worker_replicas": 50},
            "job variable worker_replicas=50 is above the pool's maximum 4 "
            "(spec.jobVariables.maxWorkerReplicas)",
        ),
        (
            {"head_cpu": "2500m"},
            "job variable head_cpu='2500m' is above the pool's maximum 2 per pod "
            "(spec.jobVariables.maxCpu)",
        ),
        (
            {"worker_memory": "64Gi"},
            "job variable worker_memory='64Gi' is above the pool's maximum 4Gi per pod "
            "(spec.jobVariables.maxMemory)",
        ),
        (
            {"head_gpu": 8},
            "job variable head_gpu=8 is above the pool's maximum 1 per pod "
            "(spec.jobVariables.maxGpu)",
        ),
        (
            {"image": "evil.example/flows:1"},
            "job variable image='evil.example/flows:1' is not in an image repository the "
            "pool allows (registry.example/flows, registry.example/team-a/; "
            "spec.jobVariables.imageRepositories)",
        ),
        (
            {"node_selector": {"node-role.kubernetes.io/control-plane": ""}},
            "job variable node_selector={'node-role.kubernetes.io/control-plane': ''}: "
            "node-role.kubernetes.io/control-plane= is not allowed (a node label the pool "
            "does not allow; spec.jobVariables.nodeSelector, spec.pod.nodeSelector)",
        ),
        (
            {"tolerations": [{"operator": "Exists"}]},
            "job variable tolerations={'operator': 'Exists'} is not a toleration the pool "
            "allows (spec.jobVariables.tolerations, spec.pod.tolerations)",
        ),
        (
            {"service_account_name": "nightly-kuberay-worker"},
            "job variable service_account_name='nightly-kuberay-worker' is not the pool's "
            "service account 'ray-pods' (spec.pod.serviceAccountName): the Ray pods' "
            "account is the pool's",
        ),
        (
            {"namespace": "kube-system"},
            "RayJob namespace 'kube-system' is not the pool's namespace 'team-a': flow runs "
            "of this pool run in its namespace only",
        ),
    ],
)
def test_each_escalation_is_refused_naming_the_variable_and_the_bound(
    variables: dict[str, Any], expected: str
) -> None:
    assert expected in check(_job(**variables), POLICY)


def test_a_node_label_the_pool_allows_but_not_that_value() -> None:
    [refusal] = check(_job(node_selector={"pool": "control-plane"}), POLICY)
    assert "pool=control-plane is not allowed (allowed values ['gpu', 'cpu']" in refusal


def test_any_other_secret_is_refused() -> None:
    refusals = check(_job(api_key_secret_name="kube-root-token"), POLICY)
    assert any(
        "references Secret 'kube-root-token' key 'key': the pool hands flow runs only its "
        "own Secrets (prefect-api/key;" in r
        for r in refusals
    ), refusals


def test_a_rewritten_template_is_bounded_too() -> None:
    """Anyone who may write the work pool in Prefect can edit its template: the check
    reads the final RayJob, not the variables."""
    job = _job()
    cluster = job["spec"]["rayClusterSpec"]
    head = cluster["headGroupSpec"]["template"]["spec"]
    head["nodeName"] = "control-plane-1"
    head["affinity"] = {"nodeAffinity": {}}
    head["volumes"].append({"name": "t", "secret": {"secretName": "worker-token"}})
    head["containers"].append(
        {
            "name": "sidecar",
            "image": "registry.example/flows:1",
            "envFrom": [{"secretRef": {"name": "db"}}],
            "resources": {"limits": {"cpu": "1", "memory": "1Gi", "amd.com/gpu": 1}},
        }
    )
    extra = {**cluster["workerGroupSpecs"][0], "groupName": "more", "replicas": 1}
    cluster["workerGroupSpecs"].append(extra)
    job["spec"]["submitterPodTemplate"]["spec"]["serviceAccountName"] = "default"
    text = "\n".join(check(job, POLICY))
    for expected in [
        "rayClusterSpec.headGroupSpec.nodeName='control-plane-1' is not allowed",
        "rayClusterSpec.headGroupSpec.affinity.nodeAffinity is not allowed",
        "volume 't' mounts Secret 'worker-token'",
        "envFrom takes all of Secret 'db'",
        "asks for 'amd.com/gpu', a resource the pool does not bound",
        # The sidecar's CPU counts: 2 + 1 per pod.
        "job variable head_cpu='3' is above the pool's maximum 2",
        "RayJob worker replicas (all 2 groups, at most)=8 is above the pool's maximum 4",
        "service_account_name='default' is not the pool's service account 'ray-pods'",
    ]:
        assert expected in text


def test_a_container_without_limits_is_refused() -> None:
    job = _job()
    pod = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]
    pod["containers"][0]["resources"] = {"requests": {"cpu": "1", "memory": "1Gi"}}
    assert any("has no cpu limit" in r for r in check(job, POLICY))


def test_the_submitter_may_keep_its_own_size_in_a_small_pool() -> None:
    small = JobPolicy(**{**POLICY.__dict__, "max_cpu": "500m", "max_memory": "512Mi"})
    assert check(_job(head_cpu="500m", head_memory="512Mi", worker_cpu="500m",
                      worker_memory="512Mi"), small) == []  # fmt: skip


def test_a_pool_without_service_account_allows_only_the_default() -> None:
    policy = JobPolicy(**{**POLICY.__dict__, "service_account_name": None})
    assert check(_job(service_account_name=None), policy) == []
    assert check(_job(service_account_name="default"), policy) == []
    assert check(_job(service_account_name="admin"), policy)


def test_the_policy_round_trips_through_json_and_refuses_garbage() -> None:
    assert JobPolicy.from_json(POLICY.to_json()) == POLICY
    with pytest.raises(PolicyError, match="PREFECT_RAYPOOL_JOB_POLICY is not a job-variable"):
        JobPolicy.from_json('{"namespace": "x"}')
    with pytest.raises(PolicyError, match="not a Kubernetes quantity"):
        JobPolicy.from_json(POLICY.to_json().replace('"maxCpu":"2"', '"maxCpu":"lots"'))


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("500m", Fraction(1, 2)),
        ("2", Fraction(2)),
        (1.5, Fraction(3, 2)),
        ("1.5Gi", Fraction(3 * 2**29)),
        ("1e3", Fraction(1000)),
        ("1E", Fraction(10**18)),
        ("128974848", Fraction(128974848)),
        ("129M", Fraction(129 * 10**6)),
        ("123Mi", Fraction(123 * 2**20)),
    ],
)
def test_quantities(text: Any, value: Fraction) -> None:
    assert quantity(text) == value


@pytest.mark.parametrize("text", ["", "lots", "1Gb", "1e3Mi", True])
def test_not_quantities(text: Any) -> None:
    with pytest.raises(ValueError, match="not a Kubernetes quantity"):
        quantity(text)


@pytest.mark.parametrize(
    ("image", "repo"),
    [
        ("flows", "flows"),
        ("flows:1", "flows"),
        ("host:5000/team/flows:1", "host:5000/team/flows"),
        ("host:5000/team/flows", "host:5000/team/flows"),
        ("team/flows@sha256:" + "a" * 64, "team/flows"),
    ],
)
def test_image_repository(image: str, repo: str) -> None:
    assert image_repository(image) == repo


def test_a_path_entry_is_not_a_string_prefix() -> None:
    allowed = ("registry.example/team-a/", "registry.example/flows")
    assert image_allowed("registry.example/team-a/x/y:1", allowed)
    assert not image_allowed("registry.example/team-abc/x:1", allowed)
    assert not image_allowed("registry.example/flows-evil:1", allowed)
    assert image_allowed("registry.example/flows@sha256:" + "b" * 64, allowed)


def test_pool_only_variables_set_per_deployment_are_refused() -> None:
    pool = {"namespace": "team-a", "service_account_name": "ray-pods"}
    refusals = pool_only_overrides(
        {"namespace": "team-a", "service_account_name": "worker", "image": "x"}, pool
    )
    assert refusals == [
        "job variable service_account_name='worker' is refused: service_account_name comes "
        "from the pool (spec.pod.serviceAccountName, now 'ray-pods'), not from a deployment "
        "or flow run; remove it from job_variables"
    ]
