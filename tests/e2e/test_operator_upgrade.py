"""Upgrading the operator (the chart, to a new image tag) leaves every pool's objects
untouched: the new pods stand by, the old leader releases its Lease on SIGTERM, the
new leader resumes the pools and finds nothing to change. An upgrade that does change
the Prefect workers' pod template (a new chart value that reaches it) rolls them: the
flow run in flight on the old worker pod ends COMPLETED once, the old pod drains.

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
from tests.e2e.test_worker_drain import (
    WORKERS,
    _completed_once,
    _draining,
    _pool,
    _running_on,
    _start,
)

pytestmark = pytest.mark.e2e
UPGRADE_TAG = "upgrade-test"
WORKER_TEMPLATE_TAG = "upgrade-worker-template"  # another tag: whichever test runs first
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

    started = time.monotonic()
    _upgrade(real_stack, UPGRADE_TAG)

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


def _upgrade(stack: RealStack, tag: str, *values: str) -> float:
    """`helm upgrade` to the operator image under a new tag (the same image tagged again
    in the node's containerd); the seconds it took."""
    node = stack.control_plane.real_node
    assert node is not None
    repo = OPERATOR_IMAGE.rsplit(":", 1)[0]
    node.ctr("images", "tag", "--force", full_name(OPERATOR_IMAGE), full_name(f"{repo}:{tag}"))
    started = time.monotonic()
    stack.helm(
        "upgrade", OPERATOR_RELEASE, str(REPO / "charts" / "prefect-raypool-operator"),
        "--namespace", OPERATOR_NAMESPACE, "--reuse-values",
        "--set", f"image.tag={tag}", *values, "--wait", "--timeout", "5m",
    )  # fmt: skip
    return time.monotonic() - started


@pytest.mark.timeout(2400)
def test_an_upgrade_that_changes_the_workers_template_drains_the_flow_run_in_flight(
    real_stack: RealStack, pools: PoolDriver
) -> None:
    pools.apply(_pool("uw", real_stack.prefect.api_url))
    pools.wait_ready("uw")
    ray_pods = {p.metadata.name for p in pools.pods("ray.io/is-ray-node=yes")}
    run_id = _start(pools, "uw")
    old = _running_on(pools, run_id)

    # A new version and a Prefect client setting for every pool's workers: what a
    # platform team's upgrade does. The new leader applies the new template.
    setting = "PREFECT_CLIENT_MAX_RETRIES"
    t0 = time.monotonic()
    took = _upgrade(
        real_stack, WORKER_TEMPLATE_TAG, "--set-string", f"prefectWorkerEnv.{setting}=6"
    )
    print(f"\nhelm upgrade done in {took:.0f} s")
    _draining(pools, old, timeout=300)
    print(f"pod {old} draining {time.monotonic() - t0:.0f}s after helm upgrade began")
    with pools.prefect() as c:
        assert c.read_flow_run(run_id).state.type.value == "RUNNING"
    new = [p for p in pools.pods(WORKERS) if p.metadata.name != old]
    assert new and all(setting in {e.name for e in p.spec.containers[0].env} for p in new), (
        "the new worker pod lacks the chart's prefectWorkerEnv"
    )
    pools.wait_events(
        "uw",
        lambda events: any(e.reason == "WorkerDraining" and old in e.message for e in events),
        "a WorkerDraining Event",
        timeout=90,
    )

    _completed_once(pools, "uw", run_id)
    print(f"flow run in flight COMPLETED {time.monotonic() - t0:.0f}s after helm upgrade began")
    eventually(
        lambda: old not in {p.metadata.name for p in pools.pods(WORKERS)},
        120,
        "the drained pod gone",
        interval=2,
    )
    # The Ray pods were not touched: the worker's env is not theirs.
    assert ray_pods <= {p.metadata.name for p in pools.pods("ray.io/is-ray-node=yes")}
    # The new worker takes the next run.
    second = _start(pools, "uw", 20)
    assert _running_on(pools, second) != old
    _completed_once(pools, "uw", second, 20)
