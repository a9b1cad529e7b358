"""Running pods against the spec, on the real control plane with the real KubeRay:
a Ray token Secret restored with the same token restarts nothing, one with a new token
drains the Prefect workers, then restarts the Ray pods that hold the old one; a change
KubeRay does not roll into running pods is replaced after the Prefect workers drained
(DrainThenReplace), or named in `RayPodsUpToDate` until someone replaces them
(OnDelete)."""

from __future__ import annotations

import time

import pytest
from kubernetes import client

from prefect_raypool_operator import naming
from testbed.pooldriver import PoolDriver
from testbed.waiting import eventually

pytestmark = pytest.mark.controlplane

POOL_PODS = f"{naming.POOL_LABEL}=analytics"
RESYNC = 3  # seconds: the session operator's resync interval (conftest.py)


def _pods(env: PoolDriver) -> dict[str, str]:
    """uid -> creationTimestamp of the pool's pods that are not going away."""
    pods = env.core.list_namespaced_pod(env.namespace, label_selector=POOL_PODS).items
    return {
        p.metadata.uid: p.metadata.creation_timestamp.strftime("%Y-%m-%dT%H:%M:%SZ")
        for p in pods
        if not p.metadata.deletion_timestamp
    }


def _reasons(env: PoolDriver) -> list[str]:
    """The pool's Event reasons in the order they were written (etcd's revisions: the
    timestamps have whole seconds only)."""
    events = sorted(env.events("analytics"), key=lambda e: int(e.metadata.resource_version))
    return [e.reason for e in events]


def _settled_pods(env: PoolDriver) -> dict[str, str]:
    """The pool's pods once the same for 3 s (a first reconcile may still roll one)."""
    seen: list[dict[str, str]] = []

    def settled() -> dict[str, str] | None:
        seen.append(_pods(env))
        return seen[-1] if len(seen) > 10 and seen[-1] == seen[-11] else None

    return dict(eventually(settled, 60, "the pool's pods settled"))


def test_a_ray_token_secret_restored_with_the_same_token_restarts_nothing(
    env: PoolDriver,
) -> None:
    """A GitOps prune and re-create, a backup restored: a Secret made anew, newer than
    every pod, with the token they hold. Compared by content: nothing restarts."""
    env.apply(env.example("zero-capacity.yaml"))
    env.wait_condition("analytics", "Ready", "True")
    env.wait_condition("analytics", "RayPodsUpToDate", "True")
    before = _settled_pods(env)
    time.sleep(1.1)  # creationTimestamps have whole seconds: the Secret is newer
    old = env.core.read_namespaced_secret("analytics-ray-token", env.namespace)
    restored = client.V1Secret(
        metadata=client.V1ObjectMeta(name=old.metadata.name, labels=old.metadata.labels),
        data=old.data,
        type=old.type,
    )
    env.core.delete_namespaced_secret("analytics-ray-token", env.namespace)
    # At once (a Secret has no finalizer: the delete is done when it answers), before
    # the operator's next check could make a new token.
    made = env.core.create_namespaced_secret(env.namespace, restored)
    assert made.metadata.creation_timestamp > max(
        p.metadata.creation_timestamp
        for p in env.core.list_namespaced_pod(env.namespace, label_selector=POOL_PODS).items
    )
    # Two resyncs: the operator has read the restored Secret, and restarted nothing.
    time.sleep(2 * RESYNC + 2)
    assert _pods(env) == before
    assert env.condition("analytics", "RayPodsUpToDate")["status"] == "True"
    assert not [r for r in _reasons(env) if r.startswith("RayToken")]


def test_a_replaced_ray_token_drains_the_prefect_workers_then_restarts_the_ray_pods(
    env: PoolDriver,
) -> None:
    env.apply(env.example("zero-capacity.yaml"))
    env.wait_condition("analytics", "Ready", "True")
    env.wait_condition("analytics", "RayPodsUpToDate", "True")
    before = _pods(env)
    assert len(before) >= 2  # the head and the Prefect worker at least
    old_token = env.core.read_namespaced_secret("analytics-ray-token", env.namespace)

    env.core.delete_namespaced_secret("analytics-ray-token", env.namespace)

    def new_token() -> object:
        secret = env.core.list_namespaced_secret(
            env.namespace, field_selector="metadata.name=analytics-ray-token"
        ).items
        return secret and secret[0].metadata.uid != old_token.metadata.uid and secret[0]

    token = eventually(new_token, 60, "a new Ray token Secret")
    made = token.metadata.creation_timestamp.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert token.data["token"] != old_token.data["token"]
    # The Prefect workers drain first, then the Ray pods restart: an Event each.
    eventually(
        lambda: {"RayTokenReplacedDraining", "RayTokenReplacedRestarting"} <= set(_reasons(env)),
        120,
        "RayTokenReplacedDraining and RayTokenReplacedRestarting Events",
    )
    reasons = _reasons(env)
    assert reasons.index("RayTokenReplacedDraining") < reasons.index("RayTokenReplacedRestarting")
    # Every pod was replaced by one made after the new token, and the pool is whole again.
    eventually(
        lambda: (
            (now := _pods(env))
            and not (now.keys() & before.keys())
            and len(now) >= len(before)
            and all(t >= made for t in now.values())
        ),
        120,
        "new pods made after the new token",
    )
    env.wait_condition("analytics", "Ready", "True", timeout=120)
    env.wait_condition("analytics", "RayPodsUpToDate", "True")


def test_a_change_kuberay_does_not_roll_is_named_until_the_pods_are_replaced(
    env: PoolDriver,
) -> None:
    doc = env.example("zero-capacity.yaml")
    doc["spec"]["ray"]["updateStrategy"] = {"type": "OnDelete"}
    env.apply(doc)
    env.wait_condition("analytics", "Ready", "True")
    env.wait_condition("analytics", "RayPodsUpToDate", "True")

    doc["spec"]["ray"]["head"]["resources"]["cpu"] = "600m"
    env.apply(doc)
    cond = env.wait_condition("analytics", "RayPodsUpToDate", "False", "RayPodsOutdated")
    assert "(ray.head)" in cond["message"] and "kubectl delete pod" in cond["message"]
    assert env.condition("analytics", "Ready")["status"] == "True"  # the old pods still serve
    events = env.wait_events(
        "analytics",
        lambda es: any(e.reason == "RayPodsOutdated" for e in es),
        "a RayPodsOutdated Event",
    )
    warnings = [e for e in events if e.reason == "RayPodsOutdated"]
    assert len(warnings) == 1 and warnings[0].type == "Warning"

    # What the message says to run.
    selector = cond["message"].split(" -l ")[1]
    env.core.delete_collection_namespaced_pod(env.namespace, label_selector=selector)
    env.wait_condition("analytics", "RayPodsUpToDate", "True", timeout=120)


def test_a_change_kuberay_does_not_roll_is_replaced_after_the_workers_drain(
    env: PoolDriver,
) -> None:
    """DrainThenReplace, the default: the worker Deployment goes to 0; the Ray pods are
    replaced only once no worker pod is left; the workers come back. (Flow runs in
    flight: tests/e2e/test_ray_rollout.py.)"""
    doc = env.example("zero-capacity.yaml")
    env.apply(doc)
    env.wait_condition("analytics", "Ready", "True")
    before = _pods(env)

    doc["spec"]["ray"]["head"]["resources"]["cpu"] = "600m"
    env.apply(doc)
    # kwok deletes pods at once, so each step may last a single reconcile: its Event
    # tells it (the order is rayrollout's, unit-tested).
    events = env.wait_events(
        "analytics",
        lambda es: (
            {"RayRolloutDraining", "RayRolloutReplacing"} <= {e.reason for e in es}
            and any("drained first" in e.message for e in es if e.reason == "RayPodsUpToDate")
        ),
        "the rollout's Events: draining, replacing, done",
        timeout=180,
    )
    draining = next(e for e in events if e.reason == "RayRolloutDraining")
    assert "(ray.head)" in draining.message, draining.message
    env.wait_condition("analytics", "Ready", "True", timeout=120)
    workers = env.apps.read_namespaced_deployment("analytics-prefect-worker", env.namespace)
    assert workers.spec.replicas == doc["spec"]["prefect"].get("replicas", 1)
    assert not set(before) & set(_pods(env)), "every pod of the pool was made anew"


def test_a_ray_token_of_your_own_changed_in_place_is_rolled_the_same_way(
    env: PoolDriver,
) -> None:
    """ray.auth.secretKeyRef: the user's Secret given a new value (no new Secret, no
    new creationTimestamp): its content's digest tells the pods holding the old one."""
    env.core.create_namespaced_secret(
        env.namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="my-ray-token"), string_data={"token": "one"}
        ),
    )
    doc = env.example("zero-capacity.yaml")
    doc["spec"]["ray"]["auth"] = {
        "mode": "token",
        "secretKeyRef": {"name": "my-ray-token", "key": "token"},
    }
    env.apply(doc)
    env.wait_condition("analytics", "Ready", "True")
    env.wait_condition("analytics", "RayPodsUpToDate", "True")
    before = _pods(env)
    # Restored as it was (written anew, same value): nothing restarts.
    env.core.patch_namespaced_secret(
        "my-ray-token", env.namespace, {"metadata": {"labels": {"restored": "yes"}}}
    )
    time.sleep(2 * RESYNC + 2)
    assert _pods(env) == before
    assert not [r for r in _reasons(env) if r.startswith("RayToken")]

    env.core.patch_namespaced_secret(
        "my-ray-token", env.namespace, {"stringData": {"token": "two"}}
    )
    eventually(
        lambda: {"RayTokenReplacedDraining", "RayTokenReplacedRestarting"} <= set(_reasons(env)),
        120,
        "RayTokenReplacedDraining and RayTokenReplacedRestarting Events",
    )
    eventually(
        lambda: (now := _pods(env)) and not (now.keys() & before.keys()),
        120,
        "every pod made anew",
    )
    env.wait_condition("analytics", "Ready", "True", timeout=120)
    env.wait_condition("analytics", "RayPodsUpToDate", "True")


def test_a_new_head_that_never_becomes_ready_is_rolled_back(env: PoolDriver) -> None:
    """A head too big for any node stays Pending: past progressDeadlineSeconds the
    RayCluster goes back to the templates of before, the pool runs and takes flow runs
    on them, and says so; the next change of the Ray spec is rolled out again."""
    doc = env.example("zero-capacity.yaml")
    doc["spec"]["ray"]["updateStrategy"] = {"progressDeadlineSeconds": 30}
    env.apply(doc)
    env.wait_condition("analytics", "Ready", "True")
    env.wait_condition("analytics", "RayPodsUpToDate", "True")
    cpu = doc["spec"]["ray"]["head"]["resources"]["cpu"]

    doc["spec"]["ray"]["head"]["resources"]["cpu"] = "1000"  # no node has that
    env.apply(doc)
    cond = env.wait_condition(
        "analytics", "RayPodsUpToDate", "False", "RayRolloutRolledBack", timeout=240
    )
    assert "ray.head" in cond["message"] and "Unschedulable" in cond["message"], cond["message"]
    env.wait_condition("analytics", "Ready", "True", timeout=120)
    cluster = env.custom.get_namespaced_custom_object(
        "ray.io", "v1", env.namespace, "rayclusters", "analytics"
    )
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["resources"]["requests"]["cpu"] == cpu  # the spec of before, applied
    workers = env.apps.read_namespaced_deployment("analytics-prefect-worker", env.namespace)
    assert workers.spec.replicas == doc["spec"]["prefect"].get("replicas", 1)
    status = (env.pool("analytics") or {})["status"]
    assert status["rayRollback"]["fields"] == ["ray.head"] and not status.get("rayRollout")
    reasons = _reasons(env)
    assert "RayRolloutRollingBack" in reasons and "RayRolloutRolledBack" in reasons

    doc["spec"]["ray"]["head"]["resources"]["cpu"] = "600m"  # fixed: rolled out
    env.apply(doc)
    env.wait_condition("analytics", "RayPodsUpToDate", "True", timeout=240)
    assert not (env.pool("analytics") or {})["status"].get("rayRollback")
