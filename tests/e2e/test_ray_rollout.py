"""A change KubeRay does not roll (the Ray image) while a flow run is in flight, on a
real node: the pool drains its Prefect workers, replaces the Ray pods, starts the
workers again; the run in flight ends COMPLETED exactly once and the next run lands on
the new Ray pods (spec.ray.updateStrategy: DrainThenReplace, the default). Then an
image that cannot be pulled is rolled back, and a run that waited completes."""

from __future__ import annotations

import time

import pytest

from testbed.pooldriver import FLOW_IMAGE, PoolDriver
from testbed.realstack import RealStack
from tests.e2e.test_worker_drain import _completed_once, _patch, _pool, _running_on, _start

pytestmark = pytest.mark.e2e

RAY_PODS = "ray.io/is-ray-node=yes"


@pytest.mark.timeout(2400)
def test_a_ray_image_change_waits_for_the_flow_run_in_flight(
    real_stack: RealStack, pools: PoolDriver
) -> None:
    # The same image under a second name: a real image change for the pods, and no
    # registry to pull from.
    node = real_stack.control_plane.real_node
    assert node is not None
    renamed = f"{FLOW_IMAGE.rsplit(':', 1)[0]}:rollout"
    library = "docker.io/library/"  # how containerd names an image without a registry
    node.ctr("images", "tag", "--force", library + FLOW_IMAGE, library + renamed)

    pools.apply(_pool("ro", pools.prefect_api_url))
    pools.wait_ready("ro")
    old_pods = {p.metadata.name for p in pools.pods(RAY_PODS)}
    first = _start(pools, "ro")
    worker = _running_on(pools, first)

    t0 = time.monotonic()
    _patch(pools, "ro", {"spec": {"ray": {"image": renamed}}})
    pools.wait_condition("ro", "RayPodsUpToDate", "False", "RayRolloutDraining", timeout=60)
    # While the run goes on, its Ray pods stay: the workers drain first.
    with pools.prefect() as c:
        assert c.read_flow_run(first).state.type.value == "RUNNING"
    assert old_pods <= {p.metadata.name for p in pools.pods(RAY_PODS)}

    _completed_once(pools, "ro", first)
    done = pools.wait_condition("ro", "RayPodsUpToDate", "True", timeout=600)
    print(f"rollout done {time.monotonic() - t0:.0f}s after the image change: {done['message']}")
    pools.wait_ready("ro", timeout=300)
    new_pods = pools.pods(RAY_PODS)
    assert not old_pods & {p.metadata.name for p in new_pods}
    assert {p.spec.containers[0].image for p in new_pods} == {renamed}
    assert worker not in {
        p.metadata.name for p in pools.pods("prefectray.io/component=prefect-worker")
    }

    # The pool takes flow runs again, on the new pods.
    second = _start(pools, "ro", 20)
    _completed_once(pools, "ro", second, 20)
    reasons = [e.reason for e in pools.events("ro")]
    for step in ("RayRolloutDraining", "RayRolloutReplacing", "RayPodsUpToDate"):
        assert step in reasons, reasons

    # The same pool (one pool start less): a change that cannot come up is rolled back.
    _an_image_that_cannot_be_pulled_is_rolled_back(pools, "ro")


def _an_image_that_cannot_be_pulled_is_rolled_back(pools: PoolDriver, name: str) -> None:
    """A typo in the image: the new head never starts (ErrImagePull, no registry here).
    Past progressDeadlineSeconds the pool goes back to the image it ran, and a flow run
    submitted meanwhile, waiting in the work pool, completes on it."""
    image = {p.spec.containers[0].image for p in pools.pods(RAY_PODS)}
    t0 = time.monotonic()
    typo = f"{FLOW_IMAGE.rsplit(':', 1)[0]}:no-such-tag"
    strategy = {"progressDeadlineSeconds": 30}
    _patch(pools, name, {"spec": {"ray": {"image": typo, "updateStrategy": strategy}}})
    pools.wait_condition(name, "RayPodsUpToDate", "False", "RayRolloutReplacing", timeout=120)
    waiting = _start(pools, name, 20)  # no worker takes it until the pool is whole
    cond = pools.wait_condition(
        name, "RayPodsUpToDate", "False", "RayRolloutRolledBack", timeout=600
    )
    print(f"rolled back {time.monotonic() - t0:.0f}s after the change: {cond['message']}")
    pulled = ("ErrImagePull", "ImagePullBackOff")
    assert "ray.image" in cond["message"], cond["message"]
    assert any(reason in cond["message"] for reason in pulled), cond["message"]
    pools.wait_ready(name, timeout=300)
    assert {p.spec.containers[0].image for p in pools.pods(RAY_PODS)} == image
    _completed_once(pools, name, waiting, 20)
    print(f"the waiting flow run completed {time.monotonic() - t0:.0f}s after the change")
