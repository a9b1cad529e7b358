"""idle.next_state: an idle pool suspends only once nothing can run on it, and wakes
on the first waiting flow run."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from prefect_raypool_operator.idle import AWAKE, SUSPENDED, SUSPENDING, next_state

pytestmark = pytest.mark.unit

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def step(current, demand=0, workers=0, now=T0, after=60, min_awake=0):  # type: ignore[no-untyped-def]
    return next_state(
        current,
        suspend_after=after,
        min_awake=min_awake,
        demand=demand,
        worker_pods=workers,
        now=now,
    )


def test_idle_long_enough_stops_the_workers_then_suspends_the_cluster() -> None:
    first = step(None, workers=1)
    assert first.state is not None and first.state["state"] == AWAKE
    assert not first.stop_workers and not first.suspend_cluster
    assert step(first.state, workers=1, now=at(59)).state["state"] == AWAKE  # type: ignore[index]
    suspending = step(first.state, workers=1, now=at(60))
    assert suspending.state is not None and suspending.state["state"] == SUSPENDING
    assert suspending.stop_workers and not suspending.suspend_cluster
    # A worker pod still there (draining a run taken at the last moment): wait.
    still = step(suspending.state, workers=1, now=at(70))
    assert still.stop_workers and not still.suspend_cluster
    suspended = step(suspending.state, workers=0, now=at(75))
    assert suspended.state is not None and suspended.state["state"] == SUSPENDED
    assert suspended.stop_workers and suspended.suspend_cluster and not suspended.woke
    again = step(suspended.state, now=at(500))
    assert again.suspend_cluster and again.state == suspended.state


def test_a_waiting_flow_run_wakes_it_at_once_and_keeps_it_awake() -> None:
    suspended = {"state": SUSPENDED, "since": "x", "lastDemand": "2026-01-01T00:00:00Z"}
    woke = step(suspended, demand=2, now=at(600))
    assert woke.woke and woke.demand == 2 and not woke.stop_workers and not woke.suspend_cluster
    assert woke.state is not None and woke.state["state"] == AWAKE
    assert woke.state["lastDemand"] == woke.state["awakeSince"] == "2026-01-01T00:10:00Z"
    # Demand while Suspending (a run scheduled as the workers stopped): back, too.
    suspending = {**suspended, "state": SUSPENDING}
    assert step(suspending, demand=1, workers=1, now=at(600)).woke
    # Running runs keep an awake pool awake however long they run.
    awake = woke.state
    for minute in range(1, 60):
        decision = step(awake, demand=1, now=at(600 + 60 * minute))
        assert decision.state is not None and decision.state["state"] == AWAKE
        awake = decision.state
    assert step(awake, now=at(600 + 60 * 59 + 59)).state["state"] == AWAKE  # type: ignore[index]


def test_min_awake_keeps_bursty_arrivals_from_flapping() -> None:
    woke = step({"state": SUSPENDED, "since": "x"}, demand=1, now=T0, min_awake=300)
    assert woke.state is not None
    # Idle for suspendAfterSeconds (60), but awake for less than 300 s: stays.
    assert step(woke.state, now=at(120), min_awake=300).state["state"] == AWAKE  # type: ignore[index]
    late = step(woke.state, now=at(300), min_awake=300)
    assert late.state is not None and late.state["state"] == SUSPENDING


def test_an_unknown_queue_changes_nothing() -> None:
    """Prefect down: never suspended on a guess, nor woken only to suspend again."""
    awake = {"state": AWAKE, "since": "x", "lastDemand": "2026-01-01T00:00:00Z"}
    decision = step(awake, demand=None, now=at(3600))
    assert decision.state is not None and decision.state["state"] == AWAKE
    assert not decision.stop_workers
    suspended = {**awake, "state": SUSPENDED}
    decision = step(suspended, demand=None, now=at(3600))
    assert decision.suspend_cluster and not decision.woke
    suspending = {**awake, "state": SUSPENDING}
    decision = step(suspending, demand=None, workers=0, now=at(3600))
    assert decision.state is not None and decision.state["state"] == SUSPENDING


def test_turned_off_wakes_a_suspended_pool() -> None:
    off = step({"state": SUSPENDED, "since": "x"}, after=0)
    assert off.woke and off.state is None and not off.suspend_cluster and not off.stop_workers
    assert not step(None, after=0).woke
