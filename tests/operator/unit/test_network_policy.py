"""The pool's NetworkPolicy, built pure: which pods it selects and admits, on which
ports, and none when the spec switches it off (cluster/test_network_policy.py: the
real API server admits it)."""

from __future__ import annotations

from typing import Any

import pytest

from prefect_raypool_operator import naming
from prefect_raypool_operator.builders import build_manifests, build_network_policy
from prefect_raypool_operator.builders.common import pod_metadata
from prefect_raypool_operator.refusals import parse_pool

Obj = dict[str, Any]


def _pool(**spec: Any) -> Obj:
    return {
        "apiVersion": "prefectray.io/v1alpha1",
        "kind": "PrefectRayPool",
        "metadata": {"name": "guarded", "namespace": "team"},
        "spec": {"prefect": {"apiUrl": "http://prefect:4200/api"}, **spec},
    }


def _matches(selector: Obj, labels: dict[str, str]) -> bool:
    return selector["matchLabels"].items() <= labels.items()


@pytest.mark.unit
def test_the_pools_pods_admit_each_other_on_every_port_and_the_operator_on_three() -> None:
    name, namespace, spec = parse_pool(_pool(placement="ZeroCapacityNode"))
    policy = build_network_policy(name, namespace, "raypool-system")
    rule_pool, rule_operator = policy["spec"]["ingress"]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    # The policy's pod selector picks every pod of the pool (the Ray workers' raylets
    # take connections too), and no pod of another pool.
    labels = {c: pod_metadata(name, spec, c)["labels"] for c in ("ray-head", "ray-worker")}
    worker = pod_metadata(name, spec, "prefect-worker")["labels"]
    for pod_labels in (*labels.values(), worker):
        assert _matches(policy["spec"]["podSelector"], pod_labels)
    other = pod_metadata("other", spec, "ray-worker")["labels"]
    assert not _matches(policy["spec"]["podSelector"], other)
    # Every pod of the pool reaches the head, on every port (raylet, object manager...).
    [peer] = rule_pool["from"]
    assert "ports" not in rule_pool and "namespaceSelector" not in peer
    for pod_labels in (*labels.values(), worker):
        assert _matches(peer["podSelector"], pod_labels)
    assert not _matches(peer["podSelector"], pod_metadata("other", spec, "ray-worker")["labels"])
    # The operator's pods, in the operator's namespace only, on GCS, client, dashboard.
    [operator] = rule_operator["from"]
    assert operator["namespaceSelector"] == {
        "matchLabels": {"kubernetes.io/metadata.name": "raypool-system"}
    }
    assert operator["podSelector"] == {"matchLabels": {"prefectray.io/component": "operator"}}
    assert {p["port"] for p in rule_operator["ports"]} == {6379, 10001, 8265}


@pytest.mark.unit
def test_outside_a_cluster_the_operator_rule_is_left_out_and_off_means_none() -> None:
    name, namespace, spec = parse_pool(_pool())
    [rule] = build_network_policy(name, namespace, None)["spec"]["ingress"]
    assert rule["from"][0]["podSelector"]["matchLabels"] == {naming.POOL_LABEL: name}
    name, namespace, spec = parse_pool(_pool(networkPolicy={"enabled": False}))
    assert "NetworkPolicy" not in [m["kind"] for m in build_manifests(name, namespace, spec)]


@pytest.mark.unit
def test_kuberay_reads_an_ephemeral_pools_dashboards_only_from_its_namespace() -> None:
    """KubeRay reads each RayJob's status from its head's dashboard: an Ephemeral pool's
    policy admits KubeRay's pods there, on that port only; a warm pool's does not."""
    name, namespace, spec = parse_pool(_pool(placement="Ephemeral"))
    manifests = build_manifests(name, namespace, spec, "raypool-system", kuberay_namespace="ray")
    [policy] = [m for m in manifests if m["kind"] == "NetworkPolicy"]
    _, _, rule_kuberay = policy["spec"]["ingress"]
    [kuberay] = rule_kuberay["from"]
    assert kuberay["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "ray"}}
    assert kuberay["podSelector"] == {
        "matchLabels": {"app.kubernetes.io/component": "kuberay-operator"}
    }
    assert rule_kuberay["ports"] == [{"protocol": "TCP", "port": 8265}]
    # A warm pool's RayCluster: KubeRay never reads its dashboard, so no rule.
    name, namespace, spec = parse_pool(_pool(placement="ZeroCapacityNode"))
    manifests = build_manifests(name, namespace, spec, "raypool-system", kuberay_namespace="ray")
    [policy] = [m for m in manifests if m["kind"] == "NetworkPolicy"]
    assert len(policy["spec"]["ingress"]) == 2
    # KubeRay's namespace unknown: no rule either.
    name, namespace, spec = parse_pool(_pool(placement="Ephemeral"))
    [policy] = [m for m in build_manifests(name, namespace, spec) if m["kind"] == "NetworkPolicy"]
    assert len(policy["spec"]["ingress"]) == 1
