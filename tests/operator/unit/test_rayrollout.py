"""rayrollout.next_step: outdated Ray pods are replaced only once no flow run can die."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from prefect_raypool_operator.rayrollout import (
    DRAINING,
    REPLACING,
    Outdated,
    automatic,
    next_step,
    paused,
)
from prefect_raypool_operator.spec import Placement

pytestmark = pytest.mark.unit

T0 = datetime(2026, 1, 1, tzinfo=UTC)
STALE = Outdated(head=["p-head"], workers=["p-w1"], fields=["ray.image"])
ZCN, SIDECAR = Placement.ZERO_CAPACITY_NODE, Placement.HEAD_SIDECAR


OLD = {"rayVersion": "2.60.0", "headGroupSpec": {"template": {"spec": {}}}}


def step(  # type: ignore[no-untyped-def]
    current,
    outdated=STALE,
    placement=ZCN,
    workers=1,
    ready=True,
    now=T0,
    enabled=True,
    terminating=0,
):
    return next_step(
        current,
        outdated,
        placement=placement,
        enabled=enabled,
        prefect_worker_pods=workers,
        cluster_ready=ready,
        now=now,
        previous=OLD,
        deadline_seconds=60,
        terminating=terminating,
    )


def test_zero_capacity_pools_drain_their_workers_before_any_ray_pod_goes() -> None:
    first = step(None)
    assert first.rollout is not None and first.rollout["step"] == DRAINING
    assert first.pause_workers and paused(first.rollout) and first.delete == []
    # Worker pods still draining: nothing deleted, still paused.
    waiting = step(first.rollout, workers=2, now=T0 + timedelta(seconds=30))
    assert waiting.delete == [] and waiting.pause_workers
    # None left: every outdated Ray pod goes at once, the workers stay stopped.
    replacing = step(first.rollout, workers=0, now=T0 + timedelta(seconds=60))
    assert replacing.rollout is not None and replacing.rollout["step"] == REPLACING
    assert replacing.delete == ["p-head", "p-w1"] and replacing.pause_workers
    # New pods not ready yet: wait, paused.
    starting = step(replacing.rollout, outdated=Outdated(), workers=0, ready=False)
    assert starting.delete == [] and starting.pause_workers and starting.rollout is not None
    # Ready: done, the workers come back, and how long it took is told.
    done = step(replacing.rollout, Outdated(), workers=0, now=T0 + timedelta(seconds=95))
    assert done.rollout is None and not done.pause_workers and done.finished_after == 95


def test_a_pool_without_running_workers_replaces_at_once() -> None:
    first = step(None, workers=0)
    assert first.rollout is not None and first.rollout["step"] == REPLACING
    assert first.delete == ["p-head", "p-w1"]


def test_head_sidecar_pools_replace_the_head_first_its_deletion_is_the_drain() -> None:
    first = step(None, placement=SIDECAR, workers=0)
    assert first.delete == ["p-head"] and not first.pause_workers
    # The new head runs; the old Ray worker pods go next.
    second = step(first.rollout, Outdated(workers=["p-w1"], fields=["ray.image"]), SIDECAR, 0)
    assert second.delete == ["p-w1"]
    assert step(second.rollout, Outdated(), SIDECAR, 0).rollout is None


def test_fields_accumulate_and_a_hand_deletion_ends_it() -> None:
    first = step(None)
    more = step(first.rollout, Outdated(head=["p-head"], fields=["ray.version"]), workers=0)
    assert more.rollout is not None
    assert more.rollout["fields"] == ["ray.image", "ray.version"]
    # Someone deleted the pods by hand while the workers drained: done once ready.
    assert step(first.rollout, Outdated(), workers=0).rollout is None


@pytest.mark.parametrize("placement", [Placement.EPHEMERAL, ZCN])
def test_nothing_happens_when_off_or_ephemeral(placement: Placement) -> None:
    enabled = placement == Placement.EPHEMERAL
    off = step(None, placement=placement, enabled=enabled)
    assert off.rollout is None and off.delete == [] and not off.pause_workers
    # Turned off mid-rollout: the workers come back.
    assert not step(
        {"step": DRAINING, "since": "x", "workersPaused": True}, enabled=False
    ).pause_workers


def test_pools_roll_by_themselves_unless_worker_replicas_are_managed_externally() -> None:
    """Externally managed replicas leave no count to set to 0: only reported. A
    HeadSidecar head drains the Prefect worker in it when deleted: rolled."""
    assert automatic(True, ZCN, external_replicas=False)
    assert automatic(True, SIDECAR, external_replicas=False)
    assert not automatic(True, ZCN, external_replicas=True)
    assert not automatic(False, ZCN, external_replicas=False)
    assert not automatic(False, SIDECAR, external_replicas=False)


def test_a_head_sidecar_head_draining_holds_the_rest_and_the_deadline() -> None:
    """The head's deletion is the drain: its Ray worker pods stay (the runs' tasks run
    there) and the rollback deadline does not start until the old head is gone."""
    first = step(None, placement=SIDECAR, workers=0)
    assert first.delete == ["p-head"]
    # The old head terminating (draining an hour-long run): nothing else goes.
    draining = Outdated(workers=["p-w1"], fields=["ray.image"])
    held = step(first.rollout, draining, SIDECAR, 0, ready=False, now=T0, terminating=1)
    assert held.delete == []
    late = T0 + timedelta(hours=1)
    waiting = step(first.rollout, Outdated(), SIDECAR, 0, ready=False, now=late, terminating=1)
    assert waiting.roll_back_to is None and waiting.rollout is not None
    assert waiting.rollout["replacingSince"] == "2026-01-01T01:00:00Z"
    # Gone: the Ray worker pods of the old head go next.
    after = step(waiting.rollout, draining, SIDECAR, 0, ready=True, now=late)
    assert after.delete == ["p-w1"]


def test_worker_pods_left_from_before_a_switch_to_head_sidecar_drain_first() -> None:
    """Their runs use the old head's cluster: it waits for them, with nothing to pause."""
    first = step(None, placement=SIDECAR, workers=1)
    assert first.rollout is not None and first.rollout["step"] == DRAINING
    assert first.delete == [] and not first.pause_workers
    gone = step(first.rollout, placement=SIDECAR, workers=0)
    assert gone.delete == ["p-head"]


def test_a_change_of_spec_pod_alone_is_reported_not_rolled() -> None:
    """A pod label is no reason to stop taking flow runs; with another field it goes."""
    labels_only = Outdated(head=["p-head"], fields=["pod"])
    assert step(None, labels_only).rollout is None
    both = Outdated(head=["p-head"], fields=["pod", "ray.image"])
    rolling = step(None, both)
    assert rolling.rollout is not None and rolling.rollout["fields"] == ["pod", "ray.image"]


def test_a_new_head_not_ready_by_the_deadline_goes_back_to_the_old_templates() -> None:
    first = step(None, workers=0, now=T0)
    assert first.rollout is not None and first.rollout["previous"] == OLD
    assert first.rollout["replacingSince"] == "2026-01-01T00:00:00Z"
    # Not ready yet, within the deadline: wait, paused.
    waiting = step(
        first.rollout, Outdated(), workers=0, ready=False, now=T0 + timedelta(seconds=60)
    )
    assert waiting.roll_back_to is None and waiting.pause_workers
    # Past it: back to the old templates, once; the deadline starts again.
    late = T0 + timedelta(seconds=61)
    back = step(waiting.rollout, Outdated(), workers=0, ready=False, now=late)
    assert back.roll_back_to == OLD and back.pause_workers
    assert back.rollout is not None and back.rollout["rolledBack"]
    assert (
        back.rollout["previous"] is None
        and back.rollout["replacingSince"] == "2026-01-01T00:01:01Z"
    )
    # The failed pods are now the outdated ones: replaced by the old spec's, then done.
    failed = Outdated(head=["p-head-new"], fields=["ray.image"])
    again = step(back.rollout, failed, workers=0, ready=False, now=late)
    assert again.delete == ["p-head-new"] and again.roll_back_to is None
    never = step(again.rollout, Outdated(), workers=0, ready=False, now=late + timedelta(hours=1))
    assert never.roll_back_to is None, "a rollback is not rolled back"
    done = step(again.rollout, Outdated(), workers=0, ready=True, now=late + timedelta(seconds=30))
    assert done.rollout is None and not done.pause_workers


def test_without_the_templates_of_before_it_keeps_waiting() -> None:
    """Started after the RayCluster already had the new spec (a token roll went
    first, say): nothing to go back to; the status says the head is not ready."""
    first = next_step(
        None, STALE, placement=ZCN, enabled=True, prefect_worker_pods=0,
        cluster_ready=False, now=T0, previous=None, deadline_seconds=60,
    )  # fmt: skip
    assert first.rollout is not None
    late = next_step(
        first.rollout, Outdated(), placement=ZCN, enabled=True, prefect_worker_pods=0,
        cluster_ready=False, now=T0 + timedelta(hours=1), previous=None, deadline_seconds=60,
    )  # fmt: skip
    assert late.roll_back_to is None and late.pause_workers


def test_draining_time_does_not_count_against_the_deadline() -> None:
    """A long flow run drains for hours; the deadline starts when pods are replaced."""
    first = step(None, workers=1, now=T0)
    assert first.rollout is not None and "replacingSince" not in first.rollout
    later = T0 + timedelta(hours=3)
    replacing = step(first.rollout, workers=0, now=later)
    assert replacing.rollout is not None and replacing.delete == ["p-head", "p-w1"]
    assert replacing.rollout["replacingSince"] == "2026-01-01T03:00:00Z"
    starting = step(replacing.rollout, Outdated(), workers=0, ready=False, now=later)
    assert starting.roll_back_to is None
