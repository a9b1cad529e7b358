"""The pool's NetworkPolicy, admitted by the real API server with the selectors that
match the pool's pods, deleted when the spec switches it off (unit/test_network_policy.py:
the policy built pure)."""

from __future__ import annotations

import pytest
from kubernetes import client

from prefect_raypool_operator import naming
from testbed.cluster import get_or_none
from testbed.pooldriver import PoolDriver
from testbed.waiting import eventually


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
    assert policy.spec.pod_selector.match_labels == {naming.POOL_LABEL: name}
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
