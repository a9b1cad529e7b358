"""Scale to zero on a real node, one pool start: an idle pool ends with no pod at all,
head included; a burst of flow runs scheduled for later, inside wakeAheadSeconds, wakes
it once and ahead of their due time; while they run (longer than suspendAfterSeconds)
the pool stays Awake; each run COMPLETES once, every task once; then it suspends again.
Prints the wake's figures (scheduled -> pool awake -> ready -> first task -> done)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.states import Scheduled

from testbed.pooldriver import FINAL, PoolDriver
from testbed.waiting import eventually
from tests.e2e.test_worker_drain import _completed_once, _pool

pytestmark = pytest.mark.e2e

SUSPEND_AFTER = 20
#: The runs are due this long after they are scheduled: inside wakeAheadSeconds, and
#: longer than the cluster's cold start (about 35 s to Ready on the test node).
DUE_IN = 60
BURST = 3
#: Per run: 3 x 32 tasks of 0.5 s on 2 Ray CPUs, well over SUSPEND_AFTER of running.
TASKS = 32
#: The reasons of an idle pool's condition transitions (Ready's and others').
IDLE_REASONS = ("Suspending", "Suspended")


def _reasons(pools: PoolDriver, name: str) -> dict[str, int]:
    """How many of the pool's Events have each reason (kopf posts one object each).
    Of the idle transitions only Ready's count: one per suspension."""
    counts: dict[str, int] = {}
    for e in pools.events(name):
        if e.reason in IDLE_REASONS and not e.message.startswith("Ready="):
            continue
        counts[e.reason] = counts.get(e.reason, 0) + (e.count or 1)
    return counts


def _idle_state(pools: PoolDriver, name: str) -> str | None:
    return (((pools.pool(name) or {}).get("status") or {}).get("idle") or {}).get("state")


def _watch(pools: PoolDriver, name: str, run_ids: list[Any], t0: float) -> dict[str, Any]:
    """Until every run is final, once a second: the idle states the pool was in, and
    when (after t0) it was Ready and a first task of the runs was done."""
    seen: dict[str, Any] = {"states": set()}
    deadline = time.monotonic() + 900
    ids = FlowRunFilter(id=FlowRunFilterId(any_=run_ids))
    while True:
        now = time.monotonic() - t0
        seen["states"].add(_idle_state(pools, name))
        if pools.condition(name, "Ready").get("status") == "True":
            seen.setdefault("ready", now)
        with pools.prefect() as c:
            runs = c.read_flow_runs(flow_run_filter=ids)
            if "task" not in seen:
                tasks = c.read_task_runs(flow_run_filter=ids, limit=200)
                if any(t.state and t.state.type.value == "COMPLETED" for t in tasks):
                    seen["task"] = now
        if len(runs) == len(run_ids) and all(r.state.type.value in FINAL for r in runs):
            seen["done"], seen["runs"] = now, runs
            return seen
        assert time.monotonic() < deadline, [r.state for r in runs]
        time.sleep(1)


@pytest.mark.timeout(1500)
def test_a_suspended_pool_wakes_ahead_of_a_burst_and_runs_it_through(pools: PoolDriver) -> None:
    manifest = _pool("zz", pools.prefect_api_url)
    manifest["spec"]["idle"] = {
        "suspendAfterSeconds": SUSPEND_AFTER,
        "wakeAheadSeconds": DUE_IN + 20,
        "minAwakeSeconds": 0,
    }
    pools.apply(manifest)
    # Idle from the first look: it may suspend before its first start is over.
    pools.wait_condition("zz", "Ready", "False", "Suspended", timeout=600)
    eventually(
        lambda: not pools.pods("prefectray.io/pool=zz"), 180, "no pod of the pool, head included"
    )
    before = _reasons(pools, "zz")
    assert not before.get("Waking") and before.get("Suspended") == 1, before

    # A burst, due in DUE_IN s: inside wakeAheadSeconds, so the pool wakes now.
    due = datetime.now(UTC) + timedelta(seconds=DUE_IN)
    t0 = time.monotonic()
    run_ids = [
        pools.run_deployment(
            "zz",
            "count_to.py:count_to",
            "count-to",
            {"highest_number": TASKS},
            state=Scheduled(scheduled_time=due),
        )
        for _ in range(BURST)
    ]
    pools.wait_events(
        "zz", lambda es: any(e.reason == "Waking" for e in es), "a Waking Event", timeout=60
    )
    woke = time.monotonic() - t0
    assert woke < DUE_IN  # seen before the runs are due, so it came before too
    (waking,) = [e for e in pools.events("zz") if e.reason == "Waking"]
    assert f"{BURST} flow runs want a worker" in waking.message, waking.message

    seen = _watch(pools, "zz", run_ids, t0)
    for run_id in run_ids:
        _completed_once(pools, "zz", run_id, TASKS)
    # Only running runs wanted a worker from the last start on, for longer than
    # suspendAfterSeconds, and the pool stayed Awake all along: never Suspending.
    runs = seen["runs"]
    alone = max(r.end_time for r in runs) - max(r.start_time for r in runs)
    assert alone.total_seconds() > SUSPEND_AFTER, alone
    assert seen["states"] == {"Awake"}, seen["states"]
    during = _reasons(pools, "zz")
    assert during.get("Waking") == 1, during  # one wake for the burst
    assert all(during.get(r, 0) == before.get(r, 0) for r in IDLE_REASONS), (before, during)
    print(
        f"wake ahead on the real node ({BURST} runs due {DUE_IN} s after they were "
        f"scheduled): Waking {woke:.1f}s after scheduling ({DUE_IN - woke:.1f}s before due), "
        f"Ready after {seen['ready']:.1f}s, first task done {seen['task'] - DUE_IN:+.1f}s "
        f"from due, all COMPLETED {seen['done'] - DUE_IN:+.1f}s from due; only running "
        f"runs for {alone.total_seconds():.1f}s (> suspendAfterSeconds {SUSPEND_AFTER}), "
        "pool Awake throughout"
    )

    # Idle again: it suspends once more, and only once.
    pools.wait_condition("zz", "Ready", "False", "Suspended", timeout=300)
    after = pools.wait_events(
        "zz", lambda _: _reasons(pools, "zz").get("Suspended") == 2, "a second Suspended Event"
    )
    assert sum(e.reason == "Waking" for e in after) == 1
    eventually(lambda: not pools.pods("prefectray.io/pool=zz"), 180, "no pod left again")
    assert _reasons(pools, "zz").get("Suspended") == 2
