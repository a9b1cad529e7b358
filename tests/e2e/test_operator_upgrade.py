"""Upgrading the operator (the chart, to a new image tag) leaves every pool's objects
untouched: the new pods stand by, the old leader releases its Lease on SIGTERM, the
new leader resumes the pools and finds nothing to change.

The new tag is the same image tagged twice in the node's containerd: what changes is
the Deployment's pod template, so Kubernetes rolls every operator pod, as a real
upgrade does.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from testbed import REPO
from testbed.images import OPERATOR_IMAGE, full_name
from testbed.pooldriver import PoolDriver, pool_manifest
from testbed.realstack import (
    OPERATOR_FULLNAME,
    OPERATOR_NAMESPACE,
    OPERATOR_RELEASE,
    RealStack,
    operator_pods,
)
from testbed.waiting import eventually

pytestmark = pytest.mark.e2e
UPGRADE_TAG = "upgrade-test"
MANAGED = "app.kubernetes.io/managed-by=prefect-raypool-operator"
# Kinds the operator makes for a pool; those without a status must keep their
# resourceVersion too (a no-op server-side apply does not bump it).
WITH_STATUS = ("rayclusters.ray.io", "deployments.apps")
WITHOUT_STATUS = ("secrets", "networkpolicies.networking.k8s.io", "serviceaccounts")
RESYNC = 30  # the chart's resyncSeconds: the new leader re-applies every pool by then


def _snapshot(stack: RealStack, namespace: str, pool_uid: str) -> dict[str, Any]:
    """Every object the pool owns: uid, resourceVersion, generation, spec (or data)."""
    found: dict[str, Any] = {}
    for kind in (*WITH_STATUS, *WITHOUT_STATUS):
        listed = json.loads(stack.kubectl("get", kind, "-n", namespace, "-o", "json"))
        for obj in listed["items"]:
            meta = obj["metadata"]
            if not any(o["uid"] == pool_uid for o in meta.get("ownerReferences", [])):
                continue
            found[f"{kind}/{meta['name']}"] = {
                "uid": meta["uid"],
                "generation": meta.get("generation"),
                "spec": obj.get("spec", obj.get("data")),
                **({} if kind in WITH_STATUS else {"resourceVersion": meta["resourceVersion"]}),
            }
    return found


def _lease_holder(stack: RealStack) -> str:
    lease = json.loads(
        stack.kubectl("get", "lease", OPERATOR_FULLNAME, "-n", OPERATOR_NAMESPACE, "-o", "json")
    )
    return str(lease["spec"].get("holderIdentity") or "")


def test_upgrading_the_operator_leaves_every_pools_objects_untouched(
    real_stack: RealStack, pools: PoolDriver
) -> None:
    manifest = pool_manifest("steady", real_stack.prefect.api_url, "ZeroCapacityNode")
    # Room on the 2-CPU node for a third operator pod during the roll-out (maxSurge 1).
    manifest["spec"]["ray"]["workerGroups"][0]["replicas"] = 0
    pools.apply(manifest)
    pool = pools.wait_ready("steady")
    uid, generation = pool["metadata"]["uid"], pool["metadata"]["generation"]
    before = _snapshot(real_stack, pools.namespace, uid)
    assert {k.split("/")[0] for k in before} >= {"rayclusters.ray.io", "deployments.apps"}
    old_pods = {p["metadata"]["name"] for p in operator_pods(real_stack)}
    assert _lease_holder(real_stack).split("_")[0] in old_pods

    node = real_stack.control_plane.real_node
    assert node is not None
    repo = OPERATOR_IMAGE.rsplit(":", 1)[0]
    node.ctr(
        "images", "tag", "--force", full_name(OPERATOR_IMAGE), full_name(f"{repo}:{UPGRADE_TAG}")
    )
    started = time.monotonic()
    real_stack.helm(
        "upgrade", OPERATOR_RELEASE, str(REPO / "charts" / "prefect-raypool-operator"),
        "--namespace", OPERATOR_NAMESPACE, "--reuse-values",
        "--set", f"image.tag={UPGRADE_TAG}", "--wait", "--timeout", "5m",
    )  # fmt: skip

    def new_leader() -> str | None:
        pods = operator_pods(real_stack)
        names = {p["metadata"]["name"] for p in pods}
        upgraded = all(
            p["spec"]["containers"][0]["image"].endswith(f":{UPGRADE_TAG}") for p in pods
        )
        holder = _lease_holder(real_stack).split("_")[0]
        return holder if upgraded and not names & old_pods and holder in names else None

    holder = eventually(new_leader, timeout=300, interval=1, what="a new operator pod leading")
    print(f"\nupgrade: {holder} leads {time.monotonic() - started:.0f} s after helm upgrade")
    time.sleep(RESYNC + 10)  # its resume of the pool and one resync have run
    after = _snapshot(real_stack, pools.namespace, uid)
    assert after == before
    pool = pools.pool("steady") or {}
    assert pool["metadata"]["generation"] == generation
    assert pools.condition("steady", "Ready").get("status") == "True"
    logs = real_stack.kubectl("logs", "-n", OPERATOR_NAMESPACE, holder)
    assert "Leading as" in logs and "Traceback" not in logs, logs[-4000:]
