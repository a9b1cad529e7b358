"""Which flow runs the operator marks Crashed (orphans.py): only active runs of this
pool's worker pods, whose pod is gone or whose worker container restarted since the
run started, and only when two sweeps agree."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from prefect_raypool.drain_worker import infrastructure_pid, parse_infrastructure_pid
from prefect_raypool_operator.orphans import (
    GONE,
    RESTARTED,
    ActiveRun,
    active_run,
    confirm,
    crash_message,
    draining,
    orphans,
    pod_of,
)

pytestmark = pytest.mark.unit
POOL = "etl"
WORKER = "etl-prefect-worker-7c9d5-abcde"
HEAD = "etl-head-x2k9p"
STARTED = datetime(2026, 1, 1, 0, 10, tzinfo=UTC)


def _run(run_id: str, pod: str | None, state: str = "RUNNING") -> ActiveRun:
    pid = f"{pod}:4242" if pod else None
    return ActiveRun(run_id, f"run-{run_id}", state, pid, STARTED)


def _pod(name: str, worker_started: str | None = "2026-01-01T00:00:00Z", **meta: Any) -> dict:
    statuses = []
    if worker_started:
        state = {"running": {"startedAt": worker_started}}
        statuses = [{"name": "prefect-worker", "state": state}]
    return {"metadata": {"name": name, **meta}, "status": {"containerStatuses": statuses}}


def test_the_worker_and_the_operator_agree_on_the_pod_in_infrastructure_pid() -> None:
    assert pod_of(infrastructure_pid(WORKER, 17)) == WORKER
    assert parse_infrastructure_pid(infrastructure_pid(WORKER, 17)) == (WORKER, 17)
    for other in (None, "", "4242", "host:", ":12", "a:b"):  # plain process workers, junk
        assert pod_of(other) is None
        assert parse_infrastructure_pid(other) is None


def test_a_run_whose_pod_is_gone_is_an_orphan_in_either_placement() -> None:
    runs = [_run("a", WORKER), _run("b", HEAD)]
    assert [(o.run.id, o.pod, o.why) for o in orphans(runs, [], POOL)] == [
        ("a", WORKER, GONE),
        ("b", HEAD, GONE),
    ]


def test_a_run_whose_pod_exists_is_never_an_orphan() -> None:
    runs = [_run("a", WORKER), _run("b", HEAD, "CANCELLING")]
    assert orphans(runs, [_pod(WORKER), _pod(HEAD)], POOL) == []
    # being deleted (draining) is still existing; a worker not running yet is no proof
    assert orphans(runs[:1], [_pod(WORKER, deletionTimestamp="x")], POOL) == []
    assert orphans(runs[:1], [_pod(WORKER, worker_started=None)], POOL) == []


def test_a_worker_container_started_after_the_run_means_the_run_died() -> None:
    restarted = _pod(WORKER, worker_started="2026-01-01T00:15:00Z")
    [orphan] = orphans([_run("a", WORKER)], [restarted], POOL)
    assert orphan.why == RESTARTED
    assert f"container of pod {WORKER} restarted" in crash_message(orphan)


@pytest.mark.parametrize("state", ["SCHEDULED", "PENDING", "COMPLETED", "CRASHED", "PAUSED"])
def test_only_running_and_cancelling_runs_are_looked_at(state: str) -> None:
    assert orphans([_run("a", WORKER, state)], [], POOL) == []


def test_runs_of_other_workers_on_the_work_pool_are_left_alone() -> None:
    runs = [
        _run("laptop", "laptop"),  # someone's own drain worker elsewhere
        _run("other", "other-prefect-worker-7c9d5-abcde"),  # another pool's pod name
        ActiveRun("plain", "p", "RUNNING", "4242", STARTED),  # `prefect worker start`
        ActiveRun("none", "p", "RUNNING", None, STARTED),
    ]
    assert orphans(runs, [], POOL) == []


def test_two_sweeps_in_a_row_must_agree() -> None:
    first = orphans([_run("a", WORKER), _run("b", HEAD)], [], POOL)
    crash, suspects = confirm(first, set())
    assert (crash, suspects) == ([], {"a", "b"})
    second = orphans([_run("a", WORKER)], [_pod(HEAD)], POOL)  # b finished meanwhile
    crash, suspects = confirm(second, suspects)
    assert [o.run.id for o in crash] == ["a"]
    assert confirm([], suspects) == ([], set())  # gone from the list: forgotten


def test_prefect_json_is_read_defensively() -> None:
    raw = {
        "id": "r1",
        "name": "brave-otter",
        "state": {"type": "RUNNING"},
        "infrastructure_pid": f"{WORKER}:7",
        "start_time": "2026-01-01T00:10:00.123456Z",
    }
    run = active_run(raw)
    assert run == ActiveRun("r1", "brave-otter", "RUNNING", f"{WORKER}:7", run.start_time)
    assert run.start_time is not None and run.start_time > STARTED
    assert active_run({"state": {}}) is None
    assert active_run({"id": "r", "state": None, "start_time": "junk"}) is not None


def test_pods_being_deleted_with_a_running_worker_are_draining() -> None:
    pods = [
        _pod(WORKER, deletionTimestamp="2026-01-01T00:00:00Z"),
        _pod("etl-prefect-worker-7c9d5-zzzzz"),  # not being deleted
        _pod("etl-prefect-worker-7c9d5-yyyyy", worker_started=None, deletionTimestamp="x"),
        _pod("etl-worker-cpu-abcde", deletionTimestamp="x"),  # a Ray worker pod
    ]
    assert draining(pods, POOL) == [WORKER]
