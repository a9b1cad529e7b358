"""Why pods do not run, in the pool's status: the containers' own reasons (pure)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from prefect_raypool_operator.observe import Found, observe_status
from prefect_raypool_operator.owned import PREFECT_WORKER_DEPLOYMENT, RAY_CLUSTER
from prefect_raypool_operator.plan import plan
from prefect_raypool_operator.podstatus import pod_failure

pytestmark = pytest.mark.unit

POOL = {
    "apiVersion": "prefectray.io/v1alpha1",
    "kind": "PrefectRayPool",
    "metadata": {"name": "p", "namespace": "ns", "uid": "u1", "generation": 1},
    "spec": {"prefect": {"apiUrl": "http://prefect:4200/api"}},
}
READY_CLUSTER = {"status": {"state": "ready", "readyWorkerReplicas": 1}}
NOT_READY_DEPLOYMENT = {"metadata": {"generation": 1}, "status": {"observedGeneration": 1}}


def _pod(name: str, component: str, **container: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"prefectray.io/component": component}},
        "status": {"containerStatuses": [{"name": component, **container}]},
    }


CRASHING = _pod(
    "p-prefect-worker-1",
    "prefect-worker",
    state={"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting"}},
    lastState={"terminated": {"exitCode": 127, "message": "sh: 1: exec: prefect: not found\n"}},
)


def _status(pods: list[dict[str, Any]], cluster: dict[str, Any] | None = READY_CLUSTER) -> Any:
    live = {PREFECT_WORKER_DEPLOYMENT: NOT_READY_DEPLOYMENT}
    if cluster:
        live[RAY_CLUSTER] = cluster
    return observe_status(plan(POOL), Found(live=live, pods=pods), {})


def _condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == kind)


def test_a_crashing_prefect_worker_names_its_reason_and_last_words() -> None:
    status = _status([CRASHING])
    worker = _condition(status, "WorkerReady")
    assert (worker["status"], worker["reason"]) == ("False", "CrashLoopBackOff")
    assert "p-prefect-worker-1" in worker["message"]
    assert "code 127: sh: 1: exec: prefect: not found" in worker["message"]
    assert status["phase"] == "Degraded"
    assert "prefect: not found" in _condition(status, "Ready")["message"]


def test_ready_quotes_the_containers_reason_before_a_bare_readiness_count() -> None:
    """A sidecar that crashes also keeps the head pod (so the cluster) unready; Ready
    must name the crash, the root cause."""
    head_not_ready = {"status": {"state": "", "conditions": [
        {"type": "HeadPodReady", "status": "False", "message": "containers with unready status"}
    ]}}  # fmt: skip
    status = _status([CRASHING], cluster=head_not_ready)
    assert "prefect: not found" in _condition(status, "Ready")["message"]


def test_an_image_that_cannot_be_found_fails_the_ray_cluster_condition() -> None:
    head = _pod(
        "p-head-x",
        "ray-head",
        state={"waiting": {"reason": "ErrImageNeverPull", "message": 'image "nope:1" not present'}},
    )
    status = _status([head], cluster={"status": {"state": ""}})
    ray = _condition(status, "RayClusterReady")
    assert (ray["reason"], status["phase"]) == ("ErrImageNeverPull", "Degraded")
    assert 'image "nope:1" not present' in ray["message"]


def test_oom_killed_and_unschedulable_are_named() -> None:
    oom = _pod("w", "ray-worker", lastState={"terminated": {"reason": "OOMKilled"}})
    assert pod_failure([oom], lambda name: True).reason == "OOMKilled"  # type: ignore[union-attr]
    pending = {
        "metadata": {"name": "w2"},
        "status": {
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/1 nodes are available: 1 Insufficient cpu.",
                }
            ]
        },
    }
    found = pod_failure([pending], lambda name: True)
    assert (
        found is not None
        and found.reason == "Unschedulable"
        and "Insufficient cpu" in found.message
    )


NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def _oom_once(finished: str, state: dict[str, Any]) -> dict[str, Any]:
    last = {"terminated": {"reason": "OOMKilled", "exitCode": 137, "finishedAt": finished}}
    return _pod("p-worker-x", "ray-worker", state=state, lastState=last)


RUNNING = {"running": {"startedAt": "2026-01-01T10:00:00Z"}}


@pytest.mark.parametrize(
    ("finished", "state", "counts"),
    [
        ("2026-01-01T11:55:00Z", RUNNING, True),  # five minutes ago: still news
        ("2026-01-01T11:00:00Z", RUNNING, False),  # an hour ago, and running since
        ("2026-01-01T11:00:00Z", {"waiting": {"reason": "CrashLoopBackOff"}}, True),
        ("2026-01-01T11:00:00Z", {"waiting": {"reason": "ContainerCreating"}}, True),
    ],
)
def test_an_oom_killed_restart_counts_while_current_or_recent(
    finished: str, state: dict[str, Any], counts: bool
) -> None:
    found = pod_failure([_oom_once(finished, state)], lambda name: True, NOW)
    assert (found is not None and found.reason == "OOMKilled") is counts


def test_one_oom_killed_restart_does_not_leave_the_pool_degraded_for_ever() -> None:
    """A Ray worker killed once, an hour ago, and running since: a cluster not ready
    for another reason is not blamed on it."""
    stale = _oom_once("2026-01-01T11:00:00Z", RUNNING)
    live = {PREFECT_WORKER_DEPLOYMENT: NOT_READY_DEPLOYMENT, RAY_CLUSTER: {"status": {"state": ""}}}
    status = observe_status(plan(POOL), Found(live=live, pods=[stale], now=NOW), {})
    assert _condition(status, "RayClusterReady")["reason"] != "OOMKilled"
    recent = _oom_once("2026-01-01T11:58:00Z", RUNNING)
    status = observe_status(plan(POOL), Found(live=live, pods=[recent], now=NOW), {})
    assert _condition(status, "RayClusterReady")["reason"] == "OOMKilled"


def test_starting_containers_are_not_failures() -> None:
    starting = _pod("w", "ray-worker", state={"waiting": {"reason": "ContainerCreating"}})
    assert pod_failure([starting], lambda name: True) is None
    status = _status([starting])
    assert _condition(status, "WorkerReady")["reason"] == "WorkersNotReady"


def test_a_long_message_keeps_its_end_on_one_line() -> None:
    noisy = _pod(
        "w",
        "prefect-worker",
        state={"waiting": {"reason": "CrashLoopBackOff", "message": "x"}},
        lastState={"terminated": {"exitCode": 1, "message": "line\n" * 500 + "the real error"}},
    )
    found = pod_failure([noisy], lambda name: True)
    assert found is not None and found.message.endswith("the real error")
    assert "\n" not in found.message and len(found.message) < 500
