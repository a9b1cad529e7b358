"""The pool's NetworkPolicy: built pure, admitted by the real API server with the
selectors that match the pool's pods, deleted when the spec switches it off."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from prefect_raypool_operator import naming
from prefect_raypool_operator.builders import build_manifests, build_network_policy
from prefect_raypool_operator.builders.common import pod_metadata
from prefect_raypool_operator.refusals import parse_pool
from testbed.cluster import get_or_none
from testbed.pooldriver import PoolDriver
from testbed.waiting import eventually

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
def test_the_head_admits_the_pools_pods_on_every_port_and_the_operator_on_three() -> None:
    name, namespace, spec = parse_pool(_pool(placement="ZeroCapacityNode"))
    policy = build_network_policy(name, namespace, "raypool-system")
    rule_pool, rule_operator = policy["spec"]["ingress"]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    # The policy's pod selector picks the head pod and no other pod of the pool.
    labels = {c: pod_metadata(name, spec, c)["labels"] for c in ("ray-head", "ray-worker")}
    worker = pod_metadata(name, spec, "prefect-worker")["labels"]
    assert _matches(policy["spec"]["podSelector"], labels["ray-head"])
    assert not _matches(policy["spec"]["podSelector"], labels["ray-worker"])
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


def _policy(env: PoolDriver, name: str) -> client.V1NetworkPolicy | None:
    api = client.NetworkingV1Api(env.api)
    return get_or_none(
        api.read_namespaced_network_policy, naming.network_policy(name), env.namespace
    )


@pytest.mark.controlplane
def test_network_policy_is_admitted_and_switching_it_off_deletes_it(env: PoolDriver) -> None:
    doc = env.example("zero-capacity.yaml")
    name = doc["metadata"]["name"]
    env.apply(doc)
    policy = eventually(lambda: _policy(env, name), what="the pool's NetworkPolicy")
    assert policy.metadata.owner_references[0].name == name
    assert policy.spec.pod_selector.match_labels == naming.selector(name, "ray-head")
    assert policy.spec.ingress[0]._from[0].pod_selector.match_labels == {naming.POOL_LABEL: name}
    # The real head pod KubeRay made is the one the policy selects.
    head = env.head_pod(name)
    assert policy.spec.pod_selector.match_labels.items() <= head.metadata.labels.items()

    doc["spec"]["networkPolicy"] = {"enabled": False}
    env.apply(doc)
    eventually(lambda: _policy(env, name) is None, what="the NetworkPolicy deleted")
    env.wait_condition(name, "Ready", "True")  # the rest of the pool is untouched

    doc["spec"]["networkPolicy"] = {"enabled": True}
    env.apply(doc)
    eventually(lambda: _policy(env, name), what="the NetworkPolicy back")
