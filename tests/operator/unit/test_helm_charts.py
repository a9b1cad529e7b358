"""The Helm charts render what the operator needs (`helm template`, no cluster)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from prefect_raypool_kuberay.contract import WORKER_RULES
from prefect_raypool_operator.refusals import parse_pool
from testbed.binaries import Binaries

pytestmark = pytest.mark.unit
CHARTS = Path(__file__).resolve().parents[3] / "charts"
HELM = Binaries.from_cache().helm


def _template(chart: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    if not HELM.exists():
        pytest.skip(f"helm not built yet at {HELM} (make binaries builds it)")
    out = subprocess.run(
        [
            str(HELM),
            "template",
            "rel",
            str(CHARTS / chart),
            "--namespace",
            "ops",
            "--kube-version",
            "1.34.4",
            *args,
        ],
        capture_output=True,
        text=True,
    )
    if check:
        assert out.returncode == 0, out.stderr
    return out


def _docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def _operator(*args: str) -> list[dict[str, Any]]:
    return _docs(_template("prefect-raypool-operator", "--include-crds", *args).stdout)


def test_operator_chart_all_namespaces() -> None:
    docs = _operator()
    kinds = sorted(d["kind"] for d in docs)
    assert kinds.count("CustomResourceDefinition") == 1
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][:3] == ["python", "-m", "prefect_raypool_operator"]
    assert "--all-namespaces" in container["command"]
    assert "--liveness=http://0.0.0.0:8080/healthz" in container["command"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    roles = [d for d in docs if d["kind"] == "ClusterRole"]
    rules = [r for role in roles for r in role["rules"]]

    def allowed(group: str, resource: str, verb: str) -> bool:
        return any(
            group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"]
            for r in rules
        )

    for group, resource, verb in [
        ("prefectray.io", "prefectraypools", "watch"),
        ("prefectray.io", "prefectraypools/status", "patch"),
        ("ray.io", "rayclusters", "patch"),
        ("apps", "deployments", "delete"),
        ("", "secrets", "create"),
        ("", "events", "create"),
        ("", "pods", "list"),
        ("", "pods", "watch"),
        ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
    ]:
        assert allowed(group, resource, verb), (group, resource, verb)


def test_operator_chart_scoped_to_namespaces() -> None:
    docs = _operator("--set", "watchNamespaces={team-a,team-b}")
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    command = deployment["spec"]["template"]["spec"]["containers"][0]["command"]
    assert "--namespace=team-a" in command and "--namespace=team-b" in command
    assert "--all-namespaces" not in command
    roles = {d["metadata"]["namespace"]: d["metadata"]["name"] for d in docs if d["kind"] == "Role"}
    # A Role in each watched namespace, and the election's in the release namespace.
    assert roles == {
        "team-a": "rel-prefect-raypool-operator",
        "team-b": "rel-prefect-raypool-operator",
        "ops": "rel-prefect-raypool-operator-leader-election",
    }
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "ClusterRole"] == [
        "rel-prefect-raypool-operator-kuberay-worker",
        "rel-prefect-raypool-operator-discovery",
    ]


def _operator_rules(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The operator's own rules: every Role and ClusterRole but the worker's."""
    return [
        rule
        for d in docs
        if d["kind"] in ("Role", "ClusterRole") and not d["metadata"]["name"].endswith("-worker")
        for rule in d["rules"]
    ]


@pytest.mark.parametrize("scope", [(), ("--set", "watchNamespaces={team-a}")])
def test_the_chart_ships_the_kuberay_workers_rights_and_the_operator_may_only_bind_them(
    scope: tuple[str, ...],
) -> None:
    """The worker's ClusterRole is its contract's WORKER_RULES, verbatim (they cannot
    drift); the operator may bind that role by name and holds none of its rights beyond
    listing RayJobs (the pool's count): no Role of its own to write, no RayJob to make."""
    docs = _operator(*scope)
    [worker] = [
        d for d in docs if d["metadata"]["name"] == "rel-prefect-raypool-operator-kuberay-worker"
    ]
    assert worker["kind"] == "ClusterRole" and worker["rules"] == WORKER_RULES
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    env = {
        e["name"]: e.get("value")
        for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["RAYPOOL_KUBERAY_WORKER_CLUSTER_ROLE"] == worker["metadata"]["name"]
    rules = _operator_rules(docs)
    binds = [r for r in rules if "bind" in r["verbs"] or "escalate" in r["verbs"]]
    assert binds == [
        {
            "apiGroups": ["rbac.authorization.k8s.io"],
            "resources": ["clusterroles"],
            "verbs": ["bind"],
            "resourceNames": [worker["metadata"]["name"]],
        }
    ]
    held = {
        (g, res, v)
        for r in rules
        for g in r["apiGroups"]
        for res in r["resources"]
        for v in r["verbs"]
    }
    assert ("ray.io", "rayjobs", "list") in held
    for dropped in [
        ("ray.io", "rayjobs", "create"),
        ("ray.io", "rayjobs", "get"),
        ("ray.io", "rayjobs", "delete"),
        ("", "pods/log", "get"),
        ("rbac.authorization.k8s.io", "roles", "create"),
        ("rbac.authorization.k8s.io", "roles", "patch"),
    ]:
        assert dropped not in held, dropped


def test_pool_chart_renders_a_valid_pool() -> None:
    out = _template(
        "prefect-raypool",
        "--set",
        "spec.prefect.apiUrl=http://prefect.svc:4200/api",
        "--set",
        "spec.placement=HeadSidecar",
    )
    [doc] = _docs(out.stdout)
    name, namespace, pool = parse_pool(doc)
    assert (name, namespace) == ("rel", "ops")
    assert pool.placement == "HeadSidecar" and pool.prefect.apiUrl == "http://prefect.svc:4200/api"


def test_pool_chart_requires_the_prefect_api_url() -> None:
    out = _template("prefect-raypool", check=False)
    assert out.returncode != 0 and "spec.prefect.apiUrl is required" in out.stderr


def test_operator_chart_grants_only_the_verbs_the_operator_uses() -> None:
    for scope in ((), ("--set", "watchNamespaces={team-a}")):
        rules = [
            rule
            for doc in _operator(*scope)
            if doc["kind"] in ("ClusterRole", "Role")
            for rule in doc["rules"]
        ]
        verbs = {
            (group, resource): set(rule["verbs"])
            for rule in rules
            for group in rule["apiGroups"]
            for resource in rule["resources"]
        }
        # update only on the election's Lease (a replace carries the resourceVersion).
        lease = ("coordination.k8s.io", "leases")
        assert verbs.pop(lease) == {"get", "create", "update"}
        assert all("update" not in v for (_, r), v in verbs.items() if "/" not in r), verbs
        assert verbs[("", "secrets")] == {"get", "create"}
        assert verbs[("prefectray.io", "prefectraypools/finalizers")] == {"update"}
        assert verbs[("networking.k8s.io", "networkpolicies")] >= {"create", "patch", "delete"}
        # kopf reads namespaces only to follow the watched ones.
        assert (("", "namespaces") in verbs) == bool(scope)


@pytest.mark.parametrize(
    ("chart", "values", "named"),
    [
        ("prefect-raypool-operator", ["watchNamespace={a}"], "'watchNamespace' not allowed"),
        ("prefect-raypool-operator", ["watchNamespaces={team-*}"], "/watchNamespaces/0"),
        ("prefect-raypool-operator", ["workers=0"], "/workers"),
        ("prefect-raypool-operator", ["image.pullPolicy=Sometimes"], "/image/pullPolicy"),
        ("prefect-raypool-operator", ["prefectApiAllowlist=http://a"], "/prefectApiAllowlist"),
        (
            "prefect-raypool-operator",
            ["leaderElection.retryPeriod=0"],
            "/leaderElection/retryPeriod",
        ),
        (
            "prefect-raypool-operator",
            ["leaderElection.enabled=false"],
            "needs leaderElection.enabled",
        ),
        ("prefect-raypool-operator", ["replicaCount=-1"], "/replicaCount"),
        ("prefect-raypool", ["spec.prefect.apiUrl=prefect:4200"], "/spec/prefect/apiUrl"),
        ("prefect-raypool", ["spec.placment=HeadSidecar"], "'placment' not allowed"),
        ("prefect-raypool", ["name=Bad_Name"], "/name"),
        ("prefect-raypool", ["spec.networkPolicy.enabled=maybe"], "/spec/networkPolicy/enabled"),
    ],
)
def test_bad_values_are_refused_with_the_key_named(
    chart: str, values: list[str], named: str
) -> None:
    args = [a for v in values for a in ("--set", v)]
    if chart == "prefect-raypool" and not any("apiUrl" in v for v in values):
        args += ["--set", "spec.prefect.apiUrl=http://prefect:4200/api"]
    out = _template(chart, *args, check=False)
    assert out.returncode != 0 and named in out.stderr, out.stderr


def test_good_values_pass_the_schemas() -> None:
    _operator("--set", "prefectApiAllowlist={http://prefect.svc:4200/api}")
    _template(
        "prefect-raypool",
        "--set",
        "spec.prefect.apiUrl=http://prefect:4200/api",
        "--set",
        "spec.networkPolicy.enabled=false",
    )


def test_pool_chart_schema_knows_every_spec_field() -> None:
    """The pool chart's schema lists the spec's top-level fields: spec.py is their source."""
    import json

    from prefect_raypool_operator.spec import PrefectRayPoolSpec

    schema = json.loads((CHARTS / "prefect-raypool" / "values.schema.json").read_text())
    assert set(schema["properties"]["spec"]["properties"]) == set(PrefectRayPoolSpec.model_fields)


def test_operator_pods_carry_what_the_pools_network_policies_admit() -> None:
    """The label and namespace the NetworkPolicy builder admits are the chart's own."""
    from prefect_raypool_operator import naming

    deployment = next(d for d in _operator() if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]
    assert naming.OPERATOR_POD_LABELS.items() <= pod["metadata"]["labels"].items()
    env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
    namespace = env["RAYPOOL_OPERATOR_NAMESPACE"]["valueFrom"]
    assert namespace == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    # KubeRay's namespace, for Ephemeral pools' dashboards: none unless the installer names it.
    assert env["RAYPOOL_KUBERAY_NAMESPACE"]["value"] == ""
    named = _deployment("--set", "kuberayNamespace=kuberay-system")["spec"]["template"]
    env = {e["name"]: e for e in named["spec"]["containers"][0]["env"]}
    assert env["RAYPOOL_KUBERAY_NAMESPACE"]["value"] == "kuberay-system"


def _deployment(*args: str) -> dict[str, Any]:
    return next(d for d in _operator(*args) if d["kind"] == "Deployment")


def test_operator_chart_runs_two_replicas_that_elect_a_leader() -> None:
    docs = _operator()
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    # A new pod is Ready (standing by) before an old one goes: never no operator at all.
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    pod = spec["template"]["spec"]
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["RAYPOOL_LEADER_ELECTION"]["value"] == "true"
    assert env["RAYPOOL_LEADER_ELECTION_NAME"]["value"] == "rel-prefect-raypool-operator"
    timings = ("LEASE_DURATION", "RENEW_DEADLINE", "RETRY_PERIOD")
    assert [env[f"RAYPOOL_{k}"]["value"] for k in timings] == ["15", "10", "2"]
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    # The Lease's namespace is the release's: the pod's own namespace.
    assert (
        env["RAYPOOL_OPERATOR_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"]
        == "metadata.namespace"
    )
    [term] = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert (
        term["podAffinityTerm"]["labelSelector"]["matchLabels"] == spec["selector"]["matchLabels"]
    )
    [pdb] = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": spec["selector"]}
    [role] = [d for d in docs if d["kind"] == "Role"]
    assert role["metadata"]["namespace"] == "ops"
    assert role["rules"] == [
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "verbs": ["get", "create", "update"],
        }
    ]


def test_operator_chart_single_replica_without_election_recreates() -> None:
    docs = _operator("--set", "replicaCount=1", "--set", "leaderElection.enabled=false")
    spec = next(d for d in docs if d["kind"] == "Deployment")["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    assert "affinity" not in spec["template"]["spec"]
    env = {e["name"]: e for e in spec["template"]["spec"]["containers"][0]["env"]}
    assert env["RAYPOOL_LEADER_ELECTION"]["value"] == "false"
    assert "RAYPOOL_LEADER_ELECTION_NAME" not in env
    kinds = {d["kind"] for d in docs}
    assert "PodDisruptionBudget" not in kinds and "Role" not in kinds


def test_prefect_worker_env_reaches_the_operator_as_json() -> None:
    from prefect_raypool_operator.config import _worker_env

    env = {e["name"]: e for e in _deployment()["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert _worker_env(env["RAYPOOL_PREFECT_WORKER_ENV"]["value"]) == ()
    named = _deployment("--set", "prefectWorkerEnv.HTTPS_PROXY=http://proxy:3128")
    env = {e["name"]: e for e in named["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert _worker_env(env["RAYPOOL_PREFECT_WORKER_ENV"]["value"]) == (
        ("HTTPS_PROXY", "http://proxy:3128"),
    )
