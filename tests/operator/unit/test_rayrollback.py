"""rayrollback: which templates a pool goes back to, and for how long."""

from __future__ import annotations

import copy
from datetime import UTC, datetime

import pytest

from prefect_raypool_operator.builders.rollout import SPEC_DIGESTS
from prefect_raypool_operator.rayrollback import (
    applied,
    current,
    rolled_back,
    templates,
    worker_image,
)

pytestmark = pytest.mark.unit


def _cluster(head_digest: str, worker_digest: str = "w1", image: str = "ray:1") -> dict:
    def template(digest: str) -> dict:
        return {
            "metadata": {"annotations": {SPEC_DIGESTS: digest}},
            "spec": {"containers": [{"name": "ray-head", "image": image}]},
        }

    return {
        "metadata": {"name": "p"},
        "spec": {
            "rayVersion": "2.60.0",
            "enableInTreeAutoscaling": True,
            "headGroupSpec": {"template": template(head_digest)},
            "workerGroupSpecs": [{"groupName": "workers", "template": template(worker_digest)}],
        },
    }


OLD, NEW = _cluster("h1", image="ray:1"), _cluster("h2", image="ray:missing")
T = datetime(2026, 1, 1, tzinfo=UTC)


def test_the_live_templates_are_kept_only_when_they_differ_from_the_desired() -> None:
    kept = templates(OLD, NEW)
    assert kept is not None and set(kept) == {"rayVersion", "headGroupSpec", "workerGroupSpecs"}
    assert kept["headGroupSpec"]["template"]["spec"]["containers"][0]["image"] == "ray:1"
    # Server defaults in the live object do not make it differ: the digests decide.
    live = copy.deepcopy(NEW)
    live["spec"]["headGroupSpec"]["template"]["spec"]["dnsPolicy"] = "ClusterFirst"
    assert templates(live, NEW) is None
    assert templates(None, NEW) is None  # a first apply: nothing ran before


def test_a_rollback_holds_while_the_spec_builds_the_failed_templates() -> None:
    back = rolled_back(NEW, templates(OLD, NEW) or {}, ["ray.image"], "ErrImagePull", T)
    assert back["at"] == "2026-01-01T00:00:00Z" and back["fields"] == ["ray.image"]
    assert current(back, NEW) is back
    # What is applied: the old templates; what the spec says of the rest stays.
    manifest = applied(NEW, back)
    assert manifest["spec"]["headGroupSpec"] == OLD["spec"]["headGroupSpec"]
    assert manifest["spec"]["enableInTreeAutoscaling"] is True
    assert (
        NEW["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"] == "ray:missing"
    )
    # Any other Ray spec ends it: rolled out anew.
    assert current(back, _cluster("h3")) is None
    assert current(back, _cluster("h2", worker_digest="w2")) is None
    assert current(None, NEW) is None


def test_the_prefect_worker_goes_back_to_the_old_ray_image() -> None:
    """A ZeroCapacityNode worker joins the cluster as a Ray node: it runs the head's."""
    back = rolled_back(NEW, templates(OLD, NEW) or {}, ["ray.image"], "ErrImagePull", T)
    assert worker_image(back) == "ray:1"
    assert worker_image({"templates": {}}) is None
