"""A namespace deleted with its pools in it: each pool's work pool is released and the
namespace goes away (the operator's finalizer must not hold it)."""

from __future__ import annotations

import uuid
from dataclasses import replace

import httpx
import pytest
from kubernetes import client

from testbed.cluster import get_or_none
from testbed.pooldriver import PoolDriver
from testbed.waiting import eventually

pytestmark = pytest.mark.controlplane


def test_deleting_the_namespace_releases_the_work_pool_and_lets_it_go(env: PoolDriver) -> None:
    ns = f"t-gone-{uuid.uuid4().hex[:6]}"  # the operator watches t-*
    env.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    eventually(
        lambda: get_or_none(env.core.read_namespaced_service_account, "default", ns),
        what="the namespace's default service account",
    )
    other = replace(env, namespace=ns)
    doc = other.example("zero-capacity.yaml")
    work_pool = f"gone-{ns}"
    doc["spec"]["prefect"]["workPool"]["name"] = work_pool
    other.apply(doc)
    other.wait_condition("analytics", "Ready", "True")
    url = f"{env.prefect_api_url}/work_pools/{work_pool}"
    assert httpx.get(url, timeout=10).status_code == 200

    env.core.delete_namespace(ns)
    eventually(
        lambda: get_or_none(lambda name, _: env.core.read_namespace(name), ns, ns) is None,
        120,
        "the namespace to go away",
        interval=1,
    )
    assert httpx.get(url, timeout=10).status_code == 404  # created by the operator: deleted
