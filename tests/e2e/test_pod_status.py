"""The pool's status tells the truth about its pods, and its pods pass `restricted`."""

from __future__ import annotations

import pytest

from testbed.images import image_ref
from testbed.pooldriver import PoolDriver, pool_manifest
from testbed.waiting import eventually

pytestmark = pytest.mark.e2e


def _failing(pools: PoolDriver, name: str, kind: str, reasons: set[str]) -> dict[str, str]:
    def check() -> dict[str, str]:
        cond = pools.condition(name, kind)
        return cond if cond.get("reason") in reasons else {}

    return dict(eventually(check, 240, f"{name} {kind} with one of {reasons}", interval=2))


def test_an_image_without_prefect_is_degraded_with_the_containers_own_words(
    pools: PoolDriver,
) -> None:
    # The operator's image has Python but neither Prefect nor Ray.
    manifest = pool_manifest("noprefect", pools.prefect_api_url, "HeadSidecar")
    manifest["spec"]["ray"]["workerGroups"][0]["replicas"] = 0
    manifest["spec"]["prefect"]["image"] = image_ref("operator")
    pools.apply(manifest)
    cond = _failing(pools, "noprefect", "WorkerReady", {"CrashLoopBackOff", "Error"})
    # The worker is `python -m prefect_raypool.drain_worker`: the image has Python only.
    missing = "No module named 'prefect'"
    assert "prefect-worker" in cond["message"] and missing in cond["message"]
    pool = pools.pool("noprefect") or {}
    assert pool["status"]["phase"] == "Degraded"
    ready = pools.condition("noprefect", "Ready")
    assert ready["status"] == "False" and missing in ready["message"]
    warnings = "involvedObject.name=noprefect,type=Warning"
    events = pools.kubectl(
        "get", "events", "-n", pools.namespace, "-o", "name", "--field-selector", warnings
    )
    assert events.strip(), "no Warning Event for the failing worker"


def test_an_image_that_cannot_be_found_names_the_pull_error(pools: PoolDriver) -> None:
    manifest = pool_manifest("noimage", pools.prefect_api_url, "ZeroCapacityNode")
    manifest["spec"]["ray"]["image"] = "prefect-raypool-nowhere:0.0.1"
    pools.apply(manifest)
    reasons = {"ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull"}
    cond = _failing(pools, "noimage", "RayClusterReady", reasons)
    assert "prefect-raypool-nowhere:0.0.1" in cond["message"]
    assert (pools.pool("noimage") or {})["status"]["phase"] == "Degraded"


def test_pods_run_in_a_namespace_enforcing_the_restricted_standard(pools: PoolDriver) -> None:
    pools.kubectl(
        "label", "namespace", pools.namespace,
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/enforce-version=latest",
    )  # fmt: skip
    pools.apply(pool_manifest("strict", pools.prefect_api_url, "ZeroCapacityNode"))
    pools.wait_ready("strict")
    pods = pools.pods("prefectray.io/pool=strict")
    assert {p.metadata.labels["prefectray.io/component"] for p in pods} == {
        "ray-head", "ray-worker", "prefect-worker",
    }  # fmt: skip
    assert all(p.status.phase == "Running" for p in pods)
