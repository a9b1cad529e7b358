"""Reads from the watches (watchcache.py): what the pod index keeps and gives back."""

from __future__ import annotations

import asyncio

import kopf
import pytest

from prefect_raypool_operator import naming, watchcache

pytestmark = pytest.mark.unit


def pod(name: str, pool: str | None) -> kopf.Body:
    labels = {naming.MANAGED_BY_LABEL: naming.MANAGED_BY}
    if pool:
        labels[naming.POOL_LABEL] = pool
    raw = {
        "metadata": {"name": name, "labels": labels, "managedFields": [{"manager": "kubelet"}]},
        "status": {"phase": "Running"},
    }
    return kopf.Body(raw)


def test_pods_are_indexed_by_their_pool_without_managed_fields() -> None:
    body = pod("a-head", "a")
    [(key, kept)] = asyncio.run(
        watchcache.index_pods_by_pool("ns", body.metadata.labels, body)
    ).items()
    assert key == ("ns", "a")
    assert kept["metadata"]["name"] == "a-head" and "managedFields" not in kept["metadata"]
    assert kept["status"] == {"phase": "Running"}
    assert "managedFields" in body["metadata"]  # the watch's own object is left alone


def test_a_pod_without_a_pool_label_is_not_indexed() -> None:
    body = pod("stray", None)
    assert asyncio.run(watchcache.index_pods_by_pool("ns", body.metadata.labels, body)) is None


def test_reads_give_every_pod_of_a_pool_and_none_of_another() -> None:
    index = {("ns", "a"): [{"n": 1}, {"n": 2}], ("ns", "b"): [{"n": 3}]}
    reads = watchcache.Reads({watchcache.POD_INDEX: index})
    assert reads.pods("ns", "a") == [{"n": 1}, {"n": 2}]
    assert reads.pods("other", "a") == []
